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

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_LOG_H */
