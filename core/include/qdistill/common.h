/*
 * qdistill/common.h — status codes, error records and export macros shared by
 * the core library and every plugin.
 *
 * Conventions (the whole public API follows them):
 *   - every public symbol starts with qd_ / QD_;
 *   - functions that can fail return a qd_status (0 = QD_OK) and, when given a
 *     qd_error *, fill it with a one-line human-readable message;
 *   - objects come in create/destroy (or init/free) pairs; structs passed in
 *     by the caller are owned by the caller.
 */
#ifndef QDISTILL_COMMON_H
#define QDISTILL_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define QD_EXPORT __attribute__((visibility("default")))
#define QD_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define QD_EXPORT
#define QD_PRINTF(fmt, args)
#endif

/* Result codes. Values are part of the ABI: only ever append. */
typedef enum qd_status {
    QD_OK = 0,
    QD_ERR_INVALID = 1,     /* bad argument or configuration value */
    QD_ERR_IO = 2,          /* file could not be opened, read or written */
    QD_ERR_FORMAT = 3,      /* file content is corrupt or of the wrong kind */
    QD_ERR_NOMEM = 4,       /* allocation failed */
    QD_ERR_PLUGIN = 5,      /* plugin could not be loaded or misbehaved */
    QD_ERR_NUMERIC = 6,     /* NaN/Inf or other numerical breakdown */
    QD_ERR_INTERRUPTED = 7, /* stopped by a signal; state was saved */
    QD_ERR_UNSUPPORTED = 8, /* valid request this component cannot serve */
    QD_ERR_MANIFEST = 9,    /* manifest failed to parse or validate */
    QD_ERR_INTERNAL = 10    /* a bug: an invariant did not hold */
} qd_status;

/* Short stable name of a status ("invalid", "io", ...). Never NULL. */
QD_EXPORT const char *qd_status_name(int code);

#define QD_ERROR_MSG_MAX 1024

/* An error record: a code plus a message. Caller-owned, no heap. */
typedef struct qd_error {
    int code;                    /* a qd_status */
    char msg[QD_ERROR_MSG_MAX];  /* one line, no trailing newline */
} qd_error;

/* Record code + printf-style message in err (if err is non-NULL) and return
 * code, so that `return qd_error_set(err, QD_ERR_IO, "...")` reads naturally. */
QD_EXPORT int qd_error_set(qd_error *err, int code, const char *fmt, ...)
    QD_PRINTF(3, 4);

/* Prefix an existing message: "<prefix>: <old message>". Returns err->code. */
QD_EXPORT int qd_error_prefix(qd_error *err, const char *fmt, ...)
    QD_PRINTF(2, 3);

/* Clear an error record. */
QD_EXPORT void qd_error_clear(qd_error *err);

/* Library version, e.g. "0.1.0". */
QD_EXPORT const char *qd_version(void);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_COMMON_H */
