/*
 * qdistill/json.h — result.json: a small emitter and a small defensive reader.
 *
 * Emitter: calls append tokens to an in-memory document (pretty-printed,
 * 2-space indent). Strings are escaped per RFC 8259 (", \, all control
 * characters); valid UTF-8 passes through unchanged, an invalid byte becomes
 * U+FFFD so the output is always valid JSON. Numbers use %.17g (round-trip
 * exact); NaN and ±Inf, which JSON cannot express, are written as null.
 * Structural misuse (a value without a key inside an object, unbalanced
 * end_*) is remembered and reported by qd_json_finish(). qd_json_write_file()
 * publishes atomically (qdistill/fsutil.h).
 *
 * Reader: strict RFC 8259 (no comments, no trailing commas), UTF-8 checked,
 * nesting limited to QD_JSON_MAX_DEPTH so hostile input cannot exhaust the
 * stack, numbers must fit a double. Values are looked up by dotted paths:
 * "distilled.test_acc", "runs.0.seed" (a numeric component indexes an
 * array). With duplicate keys the last one wins, as in Python.
 */
#ifndef QDISTILL_JSON_H
#define QDISTILL_JSON_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QD_JSON_MAX_DEPTH 64

/* ------------------------------------------------------------------------
 * Emitter
 * ---------------------------------------------------------------------- */

typedef struct qd_json qd_json;

QD_EXPORT int qd_json_create(qd_json **out, qd_error *err);
QD_EXPORT void qd_json_destroy(qd_json *j);

QD_EXPORT void qd_json_begin_object(qd_json *j);
QD_EXPORT void qd_json_end_object(qd_json *j);
QD_EXPORT void qd_json_begin_array(qd_json *j);
QD_EXPORT void qd_json_end_array(qd_json *j);
QD_EXPORT void qd_json_key(qd_json *j, const char *key);
QD_EXPORT void qd_json_string(qd_json *j, const char *s);   /* NULL -> null */
QD_EXPORT void qd_json_number(qd_json *j, double v);        /* NaN/Inf -> null */
QD_EXPORT void qd_json_int(qd_json *j, int64_t v);
QD_EXPORT void qd_json_uint(qd_json *j, uint64_t v);
QD_EXPORT void qd_json_bool(qd_json *j, int v);
QD_EXPORT void qd_json_null(qd_json *j);

/* Check the document is complete and well formed; *text (may be NULL) then
 * points at it (NUL-terminated, owned by j, ends in '\n'). */
QD_EXPORT int qd_json_finish(qd_json *j, const char **text, size_t *len,
                             qd_error *err);
/* finish + atomic write to path. */
QD_EXPORT int qd_json_write_file(qd_json *j, const char *path, qd_error *err);

/* ------------------------------------------------------------------------
 * Reader
 * ---------------------------------------------------------------------- */

typedef enum qd_json_type {
    QD_JSON_NULL = 0,
    QD_JSON_BOOL,
    QD_JSON_NUMBER,
    QD_JSON_STRING,
    QD_JSON_ARRAY,
    QD_JSON_OBJECT
} qd_json_type;

typedef struct qd_json_value qd_json_value;

QD_EXPORT int qd_json_parse(const char *text, size_t len, qd_json_value **out,
                            qd_error *err);
/* Parse a file (at most 64 MiB); errors name path:line:col. */
QD_EXPORT int qd_json_read_file(const char *path, qd_json_value **out,
                                qd_error *err);
QD_EXPORT void qd_json_value_free(qd_json_value *v);

QD_EXPORT qd_json_type qd_json_type_of(const qd_json_value *v);
QD_EXPORT double qd_json_as_number(const qd_json_value *v);  /* NaN if not */
QD_EXPORT int qd_json_as_bool(const qd_json_value *v);       /* 0 if not */
/* NUL-terminated UTF-8 (NULL if not a string); *len (may be NULL) gets the
 * byte length, which can exceed strlen() when the string holds \u0000. */
QD_EXPORT const char *qd_json_as_string(const qd_json_value *v, size_t *len);
/* Elements of an array or members of an object (0 otherwise). */
QD_EXPORT size_t qd_json_size(const qd_json_value *v);
QD_EXPORT const qd_json_value *qd_json_at(const qd_json_value *v, size_t i);
QD_EXPORT const char *qd_json_key_at(const qd_json_value *v, size_t i);
QD_EXPORT const qd_json_value *qd_json_member(const qd_json_value *v,
                                              const char *key);
/* Follow a dotted path; NULL when any step is missing. */
QD_EXPORT const qd_json_value *qd_json_get(const qd_json_value *root,
                                           const char *path);
/* Typed lookups with messages: QD_ERR_INVALID when the path is missing or
 * of another type; a null where a number is wanted (NaN/Inf when written)
 * is QD_ERR_NUMERIC. */
QD_EXPORT int qd_json_get_number(const qd_json_value *root, const char *path,
                                 double *out, qd_error *err);
QD_EXPORT int qd_json_get_string(const qd_json_value *root, const char *path,
                                 const char **out, qd_error *err);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_JSON_H */
