/*
 * qdistill/progress.h — progress of a long loop (distillation iterations,
 * evaluation models, training batches, sweep jobs).
 *
 * On a terminal (qd_log_is_tty) it is one status line, redrawn in place:
 *
 *   distill [########..........]  250/1000  25%  4.20 it/s  ETA 2m58s  loss 0.1234  val acc 0.8300
 *
 * Otherwise, and always in the run's log file, it is plain lines, one when
 * another `line_every_frac` of the work is done or `line_every_s` seconds
 * have passed, whichever comes first (so a CI log gets a bounded number of
 * readable lines, never a carriage return):
 *
 *   distill: 250/1000 (25%) in 59s, 4.20 it/s, ETA 2m58s, loss 0.1234, val acc 0.8300
 *
 * Below the info level (--quiet) nothing reaches the terminal. The rate and
 * ETA count only the work done since qd_progress_begin (a resumed run or
 * skipped sweep jobs do not make it look fast).
 */
#ifndef QDISTILL_PROGRESS_H
#define QDISTILL_PROGRESS_H

#include <stddef.h>
#include <stdint.h>
#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qd_progress qd_progress;

enum { QD_PROGRESS_AUTO = 0, QD_PROGRESS_TTY = 1, QD_PROGRESS_PLAIN = 2 };

/* Seconds on a monotonic clock; tests pass a fake one. */
typedef double (*qd_progress_clock_fn)(void *user);

typedef struct qd_progress_opts {
    const char *unit;          /* of the rate: "it", "model", "job"... (default "it") */
    double line_every_s;       /* plain lines: at least this often (default 10) */
    double line_every_frac;    /* ... and at every such fraction done (default 0.1) */
    double redraw_every_s;     /* status line: at most this often (default 0.1) */
    int columns;               /* terminal width; 0 = qd_log_columns() */
    int mode;                  /* QD_PROGRESS_AUTO (qd_log_is_tty()), _TTY or _PLAIN */
    qd_progress_clock_fn clock;   /* NULL = CLOCK_MONOTONIC */
    void *clock_user;
} qd_progress_opts;

/* Start: `done` of `total` already done (a resumed loop). opts may be NULL.
 * Returns NULL only when out of memory; every function accepts NULL. */
QD_EXPORT qd_progress *qd_progress_begin(const char *label, uint64_t total, uint64_t done,
                                         const qd_progress_opts *opts);

/* Values shown with the next line (they do not print by themselves):
 * the current loss (NaN hides it), the last evaluation (name and value),
 * a free note (e.g. "2 running, 1 failed"; NULL clears it). */
QD_EXPORT void qd_progress_set_loss(qd_progress *p, double loss);
QD_EXPORT void qd_progress_set_eval(qd_progress *p, const char *name, double value);
QD_EXPORT void qd_progress_set_note(qd_progress *p, const char *fmt, ...) QD_PRINTF(2, 3);

/* Work done so far (absolute); prints when due. */
QD_EXPORT void qd_progress_update(qd_progress *p, uint64_t done);
/* n more done without being worked on here (skipped): they count as done
 * but not towards the rate. */
QD_EXPORT void qd_progress_skip(qd_progress *p, uint64_t n);
/* Time passed without progress: refresh the status line / print when due. */
QD_EXPORT void qd_progress_tick(qd_progress *p);
/* Finish: remove the status line and print a closing plain line (also
 * when stopped early: it then says how far it got). Frees p. */
QD_EXPORT void qd_progress_end(qd_progress *p);

/* ---- formatting, exposed for tests ---- */

/* A duration: "42s", "3m05s", "1h02m", "2d03h"; "--" when negative or not
 * finite. Returns buf. */
QD_EXPORT char *qd_progress_fmt_duration(char *buf, size_t n, double seconds);
/* A rate in the unit that makes the number at least 1: "4.20 it/s",
 * "3.00 it/min", "2.00 it/h"; "-- it/s" when zero or unknown. */
QD_EXPORT char *qd_progress_fmt_rate(char *buf, size_t n, double per_second, const char *unit);
/* "[####......]": width characters in all (brackets included), the filled
 * part floor(frac * (width - 2)). */
QD_EXPORT char *qd_progress_fmt_bar(char *buf, size_t n, int width, double frac);
/* The current line: tty = the status line (fits in columns - 1), else the
 * plain line. */
QD_EXPORT char *qd_progress_format(const qd_progress *p, int tty, char *buf, size_t n);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_PROGRESS_H */
