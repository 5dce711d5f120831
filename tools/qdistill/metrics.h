/* Reading a run's metrics.csv (written by qdistill/csv.h): the header names
 * the columns, each following line is one iteration of numbers. */
#ifndef QDISTILL_CLI_METRICS_H
#define QDISTILL_CLI_METRICS_H

#include <stddef.h>

#include "qdistill/common.h"

typedef struct metrics {
    char **names;   /* ncols column names */
    size_t ncols;
    double *data;   /* rows × ncols, row-major; empty cells and "nan" are NaN */
    size_t rows;
} metrics;

/* Read path. A last line without its newline (a row being written by a
 * running job) is ignored; any other malformed line is QD_ERR_FORMAT naming
 * path:line. */
int metrics_read(const char *path, metrics *m, qd_error *err);
/* Column index of name, or -1. */
long metrics_column(const metrics *m, const char *name);
void metrics_free(metrics *m);

#endif
