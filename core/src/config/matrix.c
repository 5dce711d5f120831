/* MATRIX values: a list of equal-length rows of real or complex entries,
 * e.g. [[1, "-0.5j"], ["0.5j", -1]]. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_internal.h"

static int fail(const qd_node *at, const qd_node **bad, char *msg, size_t size,
                const char *text)
{
    *bad = at;
    snprintf(msg, size, "%s", text);
    return -1;
}

int qd__matrix(const qd_node *n, size_t *rows, size_t *cols, double complex **out,
               const qd_node **bad, char *msg, size_t size)
{
    char buf[400], d[QD_QUOTE_MAX];
    *out = NULL;
    *rows = *cols = 0;
    if (!n || n->type != QD_NODE_SEQ || n->len == 0) {
        snprintf(buf, sizeof buf,
                 "expected a matrix (a list of rows such as [[1, 0], [0, -1]]), got %s",
                 n && n->type == QD_NODE_SEQ ? "an empty list" : qd__describe(n, d));
        return fail(n, bad, msg, size, buf);
    }
    size_t r = n->len, c = 0;
    for (size_t i = 0; i < r; i++) {
        const qd_node *row = n->items[i];
        if (row->type != QD_NODE_SEQ) {
            snprintf(buf, sizeof buf,
                     "matrix row %zu must be a list of entries, got %s (write rows like "
                     "[1, 0])",
                     i + 1, qd__describe(row, d));
            return fail(row, bad, msg, size, buf);
        }
        if (row->len == 0) {
            snprintf(buf, sizeof buf, "matrix row %zu is empty", i + 1);
            return fail(row, bad, msg, size, buf);
        }
        if (i == 0) {
            c = row->len;
        } else if (row->len != c) {
            snprintf(buf, sizeof buf, "ragged matrix: row %zu has %zu entr%s but row 1 has %zu",
                     i + 1, row->len, row->len == 1 ? "y" : "ies", c);
            return fail(row, bad, msg, size, buf);
        }
    }
    if (c > SIZE_MAX / sizeof(double complex) / r)
        return fail(n, bad, msg, size, "matrix is too large");
    double complex *m = malloc(r * c * sizeof *m);
    if (!m)
        return fail(n, bad, msg, size, "out of memory for the matrix");
    for (size_t i = 0; i < r; i++) {
        for (size_t j = 0; j < c; j++) {
            const qd_node *e = n->items[i]->items[j];
            double re = 0.0, im = 0.0;
            int ok = e->type == QD_NODE_SCALAR;
            if (ok) {
                int overflow;
                if (e->is_str || qd__text_to_double(e->str, &re, &overflow) != 0)
                    ok = qd__parse_complex(e->str, &re, &im) == 0;
            }
            if (!ok) {
                snprintf(buf, sizeof buf,
                         "bad matrix entry %s (row %zu, column %zu): expected a real or "
                         "complex number such as 1, -0.5, 1+2j or -0.5j",
                         qd__describe(e, d), i + 1, j + 1);
                free(m);
                return fail(e, bad, msg, size, buf);
            }
            if (!isfinite(re) || !isfinite(im)) {
                snprintf(buf, sizeof buf, "matrix entry %s (row %zu, column %zu) is not finite",
                         qd__describe(e, d), i + 1, j + 1);
                free(m);
                return fail(e, bad, msg, size, buf);
            }
            /* a complex is laid out as double[2] (C17 6.2.5); this also
             * compiles where CMPLX is missing (clang with older glibc) */
            double *z = (double *)&m[i * c + j];
            z[0] = re;
            z[1] = im;
        }
    }
    *rows = r;
    *cols = c;
    *out = m;
    return 0;
}

int qd_node_as_matrix(const qd_node *n, size_t *rows, size_t *cols, double complex **out,
                      qd_error *err)
{
    size_t r, c;
    double complex *m;
    const qd_node *bad = NULL;
    char msg[512];
    if (out)
        *out = NULL;
    if (qd__matrix(n, &r, &c, &m, &bad, msg, sizeof msg))
        return qd_node_error(bad, err, QD_ERR_INVALID, "%s", msg);
    if (rows)
        *rows = r;
    if (cols)
        *cols = c;
    if (out)
        *out = m;
    else
        free(m);
    return QD_OK;
}
