/* Reading a run's metrics.csv (see metrics.h). */
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "qdistill/fsutil.h"

/* Larger than any real run's log (the paper's 400 epochs make 4 MiB). */
#define METRICS_MAX_BYTES (512u << 20)

void metrics_free(metrics *m)
{
    for (size_t i = 0; i < m->ncols; ++i)
        free(m->names[i]);
    free(m->names);
    free(m->data);
    memset(m, 0, sizeof *m);
}

long metrics_column(const metrics *m, const char *name)
{
    for (size_t i = 0; i < m->ncols; ++i)
        if (strcmp(m->names[i], name) == 0)
            return (long)i;
    return -1;
}

/* One cell of [p, end): a number, empty or nan (NaN), or an error. */
static int parse_cell(const char *p, const char *end, double *out)
{
    if (p == end) {
        *out = NAN;
        return 0;
    }
    char buf[64];
    size_t n = (size_t)(end - p);
    if (n >= sizeof buf)
        return -1;
    memcpy(buf, p, n);
    buf[n] = '\0';
    char *e;
    *out = strtod(buf, &e);
    return *e == '\0' ? 0 : -1;
}

int metrics_read(const char *path, metrics *m, qd_error *err)
{
    memset(m, 0, sizeof *m);
    void *raw = NULL;
    size_t len = 0;
    int rc = qd_read_file(path, METRICS_MAX_BYTES, &raw, &len, err);
    if (rc != QD_OK)
        return rc;
    const char *text = raw, *end = text + len;
    const char *nl = memchr(text, '\n', len);
    if (!nl) {
        free(raw);
        return qd_error_set(err, QD_ERR_FORMAT, "%s: no header line", path);
    }
    /* header */
    for (const char *p = text; p <= nl;) {
        const char *q = p;
        while (q < nl && *q != ',')
            ++q;
        const char *e = q > p && q[-1] == '\r' ? q - 1 : q;
        char **nn = realloc(m->names, (m->ncols + 1) * sizeof *nn);
        char *name = nn ? strndup(p, (size_t)(e - p)) : NULL;
        if (nn)
            m->names = nn;
        if (!name) {
            free(raw);
            metrics_free(m);
            return qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", path);
        }
        m->names[m->ncols++] = name;
        p = q + 1;
    }
    /* rows: count complete lines first so the table is allocated once */
    size_t lines = 0;
    for (const char *p = nl + 1; p < end; ++p)
        lines += *p == '\n';
    m->data = malloc((lines ? lines : 1) * m->ncols * sizeof *m->data);
    if (!m->data) {
        free(raw);
        metrics_free(m);
        return qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", path);
    }
    size_t line_no = 1;
    for (const char *p = nl + 1; p < end && m->rows < lines;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        ++line_no;
        if (eol == p || (eol == p + 1 && *p == '\r')) {   /* blank line */
            p = eol + 1;
            continue;
        }
        double *row = m->data + m->rows * m->ncols;
        size_t col = 0;
        const char *c = p;
        int bad = 0;
        while (!bad) {
            const char *q = c;
            while (q < eol && *q != ',')
                ++q;
            const char *e = q > c && q[-1] == '\r' ? q - 1 : q;
            if (col == m->ncols || parse_cell(c, e, &row[col]) != 0)
                bad = 1;
            ++col;
            if (q == eol)
                break;
            c = q + 1;
        }
        if (bad || col != m->ncols) {
            free(raw);
            metrics_free(m);
            return qd_error_set(err, QD_ERR_FORMAT,
                                "%s:%zu: expected %zu numbers separated by commas", path,
                                line_no, m->ncols);
        }
        ++m->rows;
        p = eol + 1;
    }
    free(raw);
    return QD_OK;
}
