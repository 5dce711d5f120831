/*
 * qdistill/csv.h — the per-iteration metrics log of a run (metrics.csv).
 *
 * One header row of column names, then one row per iteration. Numbers are
 * written with full precision (%.17g, so a double reads back bit-exact;
 * NaN/Inf as nan/inf/-inf — a diverging run stays visible) and integers
 * exactly. Every row is appended with a single write() followed by fsync():
 * once qd_csv_commit_row() returns, the row survives a crash. A row whose
 * write fails (disk full) is cut off again, so the file never ends in half a
 * row written by this process; a half row left by a killed process is
 * dropped when the file is reopened.
 *
 * Resume: qd_csv_truncate_rows() rewrites the file atomically keeping the
 * header and the first N rows, so the log matches the checkpoint it resumes
 * from; call it before qd_csv_open() (an open qd_csv keeps writing to the
 * file it opened).
 */
#ifndef QDISTILL_CSV_H
#define QDISTILL_CSV_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qd_csv qd_csv;

/* Open path for appending. A missing or empty file is created (atomically)
 * with the header; an existing file must have exactly these columns
 * (QD_ERR_FORMAT otherwise). Column names: non-empty, no ',', '"', CR/LF. */
QD_EXPORT int qd_csv_open(const char *path, const char *const *columns,
                          size_t ncols, qd_csv **out, qd_error *err);
/* Close (rows are already durable). NULL is fine. */
QD_EXPORT void qd_csv_close(qd_csv *csv);

QD_EXPORT size_t qd_csv_ncols(const qd_csv *csv);
/* Index of a column, or -1. */
QD_EXPORT long qd_csv_column(const qd_csv *csv, const char *name);
/* Complete rows in the file (existing ones plus those appended). */
QD_EXPORT size_t qd_csv_rows(const qd_csv *csv);

/* Build a row cell by cell (unset cells stay empty), then commit it. */
QD_EXPORT int qd_csv_set_f64(qd_csv *csv, size_t col, double v);
QD_EXPORT int qd_csv_set_i64(qd_csv *csv, size_t col, int64_t v);
QD_EXPORT int qd_csv_commit_row(qd_csv *csv, qd_error *err);
/* Convenience: a whole row of doubles (n must equal the column count). */
QD_EXPORT int qd_csv_row(qd_csv *csv, const double *values, size_t n,
                         qd_error *err);

/* Rewrite path atomically with its header and first keep_rows rows.
 * QD_ERR_FORMAT when it holds fewer complete rows. */
QD_EXPORT int qd_csv_truncate_rows(const char *path, size_t keep_rows,
                                   qd_error *err);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_CSV_H */
