/* Append-only metrics CSV with one write()+fsync() per row, and the atomic
 * truncation used on resume (see qdistill/csv.h). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qdistill/csv.h"
#include "qdistill/fsutil.h"
#include "io_internal.h"

enum { CELL_EMPTY = 0, CELL_F64, CELL_I64 };

typedef struct cell {
    int kind;
    double d;
    int64_t i;
} cell;

struct qd_csv {
    int fd;
    char *path;
    char **cols;
    size_t ncols;
    cell *cells;
    size_t rows;
    off_t size;            /* end of the last complete row */
    char *line;            /* row formatting buffer */
    size_t line_cap;
};

void qd_csv_close(qd_csv *csv)
{
    if (!csv)
        return;
    if (csv->fd >= 0)
        close(csv->fd);
    for (size_t i = 0; i < csv->ncols; i++)
        free(csv->cols[i]);
    free(csv->cols);
    free(csv->cells);
    free(csv->line);
    free(csv->path);
    free(csv);
}

/* The header line (with '\n'), malloc'd. */
static char *header_line(const char *const *cols, size_t n)
{
    size_t len = 2;
    for (size_t i = 0; i < n; i++)
        len += strlen(cols[i]) + 1;
    char *h = malloc(len);
    if (!h)
        return NULL;
    size_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(cols[i]);
        if (i)
            h[pos++] = ',';
        memcpy(h + pos, cols[i], l);
        pos += l;
    }
    h[pos++] = '\n';
    h[pos] = '\0';
    return h;
}

int qd_csv_open(const char *path, const char *const *columns, size_t ncols,
                qd_csv **out, qd_error *err)
{
    *out = NULL;
    if (!ncols || !columns)
        return qd_error_set(err, QD_ERR_INVALID, "csv '%s': no columns", path);
    for (size_t i = 0; i < ncols; i++) {
        const char *c = columns[i];
        if (!c || !*c || strpbrk(c, ",\"\r\n"))
            return qd_error_set(err, QD_ERR_INVALID,
                                "csv '%s': bad column name '%s' (empty, or holds "
                                "',', '\"' or a line break)", path, c ? c : "(null)");
        for (size_t j = 0; j < i; j++)
            if (strcmp(columns[j], c) == 0)
                return qd_error_set(err, QD_ERR_INVALID,
                                    "csv '%s': duplicate column '%s'", path, c);
    }
    qd_csv *csv = calloc(1, sizeof *csv);
    char *header = header_line(columns, ncols);
    if (!csv || !header)
        goto nomem;
    csv->fd = -1;
    csv->ncols = ncols;
    csv->path = strdup(path);
    csv->cols = calloc(ncols, sizeof *csv->cols);
    csv->cells = calloc(ncols, sizeof *csv->cells);
    if (!csv->path || !csv->cols || !csv->cells)
        goto nomem;
    for (size_t i = 0; i < ncols; i++)
        if (!(csv->cols[i] = strdup(columns[i])))
            goto nomem;

    int rc;
    size_t hlen = strlen(header);
    struct stat st;
    int exists = stat(path, &st) == 0;
    if (!exists && errno != ENOENT) {
        rc = qd_error_set(err, QD_ERR_IO, "csv '%s': %s", path, strerror(errno));
        goto fail;
    }
    if (!exists || st.st_size == 0) {
        rc = qd_write_atomic(path, header, hlen, err);
        if (rc)
            goto fail;
        csv->size = (off_t)hlen;
    } else {
        void *buf;
        size_t len;
        rc = qd_read_file(path, 0, &buf, &len, err);
        if (rc)
            goto fail;
        const char *text = buf;
        const char *nl = memchr(text, '\n', len);
        if (!nl || (size_t)(nl - text) + 1 != hlen || memcmp(text, header, hlen)) {
            size_t shown = nl ? (size_t)(nl - text) : len;
            rc = qd_error_set(err, QD_ERR_FORMAT,
                              "csv '%s' has columns '%.*s' but this run writes '%.*s'",
                              path, (int)(shown > 300 ? 300 : shown), text,
                              (int)(hlen - 1 > 300 ? 300 : hlen - 1), header);
            free(buf);
            goto fail;
        }
        size_t end = hlen, rows = 0;
        for (size_t i = hlen; i < len; i++)
            if (text[i] == '\n') {
                rows++;
                end = i + 1;
            }
        free(buf);
        csv->rows = rows;
        csv->size = (off_t)end;
        if (end != len) {
            /* a half row from a killed writer: it was never committed */
            int fd = open(path, O_WRONLY | O_CLOEXEC);
            if (fd < 0 || ftruncate(fd, (off_t)end) != 0 || fsync(fd) != 0) {
                rc = qd_error_set(err, QD_ERR_IO, "csv '%s': cannot drop partial row: %s",
                                  path, strerror(errno));
                if (fd >= 0)
                    close(fd);
                goto fail;
            }
            close(fd);
        }
    }
    csv->fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (csv->fd < 0) {
        rc = qd_error_set(err, QD_ERR_IO, "csv '%s': cannot open for appending: %s",
                          path, strerror(errno));
        goto fail;
    }
    free(header);
    *out = csv;
    return QD_OK;
nomem:
    rc = qd_error_set(err, QD_ERR_NOMEM, "csv '%s': out of memory", path);
fail:
    free(header);
    qd_csv_close(csv);
    return rc;
}

size_t qd_csv_ncols(const qd_csv *csv)
{
    return csv->ncols;
}

long qd_csv_column(const qd_csv *csv, const char *name)
{
    for (size_t i = 0; i < csv->ncols; i++)
        if (strcmp(csv->cols[i], name) == 0)
            return (long)i;
    return -1;
}

size_t qd_csv_rows(const qd_csv *csv)
{
    return csv->rows;
}

int qd_csv_set_f64(qd_csv *csv, size_t col, double v)
{
    if (col >= csv->ncols)
        return QD_ERR_INVALID;
    csv->cells[col].kind = CELL_F64;
    csv->cells[col].d = v;
    return QD_OK;
}

int qd_csv_set_i64(qd_csv *csv, size_t col, int64_t v)
{
    if (col >= csv->ncols)
        return QD_ERR_INVALID;
    csv->cells[col].kind = CELL_I64;
    csv->cells[col].i = v;
    return QD_OK;
}

int qd_csv_commit_row(qd_csv *csv, qd_error *err)
{
    size_t need = csv->ncols * 32 + 2;
    if (need > csv->line_cap) {
        char *l = realloc(csv->line, need);
        if (!l)
            return qd_error_set(err, QD_ERR_NOMEM, "csv '%s': out of memory",
                                csv->path);
        csv->line = l;
        csv->line_cap = need;
    }
    size_t pos = 0;
    for (size_t i = 0; i < csv->ncols; i++) {
        if (i)
            csv->line[pos++] = ',';
        cell *c = &csv->cells[i];
        if (c->kind == CELL_I64) {
            pos += (size_t)snprintf(csv->line + pos, 32, "%" PRId64, c->i);
        } else if (c->kind == CELL_F64) {
            const char *sp = NULL;
            if (isnan(c->d))
                sp = "nan";
            else if (isinf(c->d))
                sp = c->d > 0 ? "inf" : "-inf";
            if (sp) {
                memcpy(csv->line + pos, sp, strlen(sp));
                pos += strlen(sp);
            } else {
                pos += (size_t)qd_io_fmt_double(csv->line + pos, 32, c->d);
            }
        }
        c->kind = CELL_EMPTY;
    }
    csv->line[pos++] = '\n';
    int e = qd_io_write_all(csv->fd, csv->line, pos);
    if (!e && fsync(csv->fd) != 0)
        e = errno;
    if (e) {
        /* cut the half-written row off again so the log stays well formed */
        if (ftruncate(csv->fd, csv->size) == 0)
            (void)fsync(csv->fd);
        return qd_error_set(err, QD_ERR_IO, "cannot append to '%s': %s",
                            csv->path, strerror(e));
    }
    csv->size += (off_t)pos;
    csv->rows++;
    return QD_OK;
}

int qd_csv_row(qd_csv *csv, const double *values, size_t n, qd_error *err)
{
    if (n != csv->ncols)
        return qd_error_set(err, QD_ERR_INVALID,
                            "csv '%s': row of %zu values for %zu columns",
                            csv->path, n, csv->ncols);
    for (size_t i = 0; i < n; i++)
        qd_csv_set_f64(csv, i, values[i]);
    return qd_csv_commit_row(csv, err);
}

int qd_csv_truncate_rows(const char *path, size_t keep_rows, qd_error *err)
{
    void *buf;
    size_t len;
    int rc = qd_read_file(path, 0, &buf, &len, err);
    if (rc)
        return rc;
    const char *text = buf;
    const char *nl = memchr(text, '\n', len);
    if (!nl) {
        free(buf);
        return qd_error_set(err, QD_ERR_FORMAT, "csv '%s': no header row", path);
    }
    size_t end = (size_t)(nl - text) + 1, rows = 0;
    while (rows < keep_rows) {
        const char *next = memchr(text + end, '\n', len - end);
        if (!next)
            break;
        end = (size_t)(next - text) + 1;
        rows++;
    }
    if (rows < keep_rows) {
        free(buf);
        return qd_error_set(err, QD_ERR_FORMAT,
                            "csv '%s' holds %zu complete rows, cannot keep %zu",
                            path, rows, keep_rows);
    }
    rc = end == len ? QD_OK : qd_write_atomic(path, text, end, err);
    free(buf);
    return rc;
}
