/*
 * qdistill/log.h — the process-wide log: stderr (human) and, during a run,
 * the run directory's log file. Progress and logs go to stderr; results go
 * to stdout.
 */
#ifndef QDISTILL_LOG_H
#define QDISTILL_LOG_H

#include <stdarg.h>
#include <stdio.h>
#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qd_log_level {
    QD_LOG_ERROR = 0, QD_LOG_WARN = 1, QD_LOG_INFO = 2, QD_LOG_DEBUG = 3
} qd_log_level;

QD_EXPORT void qd_log_set_level(int level);       /* default 2 (info) */
QD_EXPORT int qd_log_get_level(void);
/* Also append every line (all levels up to debug) to f; NULL stops. */
QD_EXPORT void qd_log_set_file(FILE *f);
QD_EXPORT void qd_log(int level, const char *fmt, ...) QD_PRINTF(2, 3);
QD_EXPORT void qd_logv(int level, const char *prefix, const char *fmt, va_list ap);

/* The human stream: stderr unless set (tests use a memory stream). tty is
 * whether it is a terminal; -1 asks isatty(). */
QD_EXPORT void qd_log_set_stream(FILE *f, int tty);
QD_EXPORT int qd_log_is_tty(void);
/* Width of the terminal (TIOCGWINSZ, else $COLUMNS, else 80). */
QD_EXPORT int qd_log_columns(void);

/* The status line: one line kept at the bottom of a terminal (progress).
 * Every log line clears it, is printed, and redraws it, so the two never
 * garble each other. NULL removes it. Nothing happens when the stream is
 * not a terminal; the log file never sees it. */
QD_EXPORT void qd_log_status(const char *line);

/* A line to some of the destinations only: QD_LOG_TO_STREAM (subject to the
 * level) and/or QD_LOG_TO_FILE. Progress uses it to keep plain lines in the
 * log file while a terminal shows a status line instead. */
enum { QD_LOG_TO_STREAM = 1, QD_LOG_TO_FILE = 2 };
QD_EXPORT void qd_log_to(int where, int level, const char *fmt, ...) QD_PRINTF(3, 4);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_LOG_H */
