/*
 * qdistill/blob.h — a growable binary buffer for serialising state
 * (distiller save()/restore(), checkpoint sections).
 *
 * Encoding: a sequence of typed items, all little-endian whatever the host.
 * Every item starts with a one-byte tag; arrays, strings and byte strings
 * carry a u64 element count. Reading checks the tag, the count and the bytes
 * left before touching memory, so a truncated, corrupt or mismatched blob
 * yields QD_ERR_FORMAT with the offset — never a read past the end, never an
 * allocation larger than the blob itself.
 *
 * Writing: put functions return QD_OK or QD_ERR_NOMEM; a failure is also
 * remembered (b->failed), so a save() can issue many puts and check once.
 */
#ifndef QDISTILL_BLOB_H
#define QDISTILL_BLOB_H

#include "common.h"
#include "rng.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qd_blob {
    uint8_t *data;
    size_t len, cap;
    int failed;            /* a put ran out of memory */
} qd_blob;

QD_EXPORT void qd_blob_init(qd_blob *b);
QD_EXPORT void qd_blob_free(qd_blob *b);
QD_EXPORT void qd_blob_clear(qd_blob *b);   /* len = 0, keeps capacity */
/* Append raw, untagged bytes (for containers built on top of a blob). */
QD_EXPORT int qd_blob_append(qd_blob *b, const void *data, size_t len);

QD_EXPORT int qd_blob_put_u32(qd_blob *b, uint32_t v);
QD_EXPORT int qd_blob_put_u64(qd_blob *b, uint64_t v);
QD_EXPORT int qd_blob_put_i64(qd_blob *b, int64_t v);
QD_EXPORT int qd_blob_put_f64(qd_blob *b, double v);   /* bit exact */
QD_EXPORT int qd_blob_put_u32_array(qd_blob *b, const uint32_t *v, size_t n);
QD_EXPORT int qd_blob_put_i32_array(qd_blob *b, const int32_t *v, size_t n);
QD_EXPORT int qd_blob_put_u64_array(qd_blob *b, const uint64_t *v, size_t n);
QD_EXPORT int qd_blob_put_i64_array(qd_blob *b, const int64_t *v, size_t n);
QD_EXPORT int qd_blob_put_f64_array(qd_blob *b, const double *v, size_t n);
QD_EXPORT int qd_blob_put_str(qd_blob *b, const char *s);      /* NULL ok */
QD_EXPORT int qd_blob_put_bytes(qd_blob *b, const void *p, size_t n);
QD_EXPORT int qd_blob_put_rng(qd_blob *b, const qd_rng *rng);

/* A read cursor over someone else's bytes (nothing is copied). */
typedef struct qd_blob_reader {
    const uint8_t *data;
    size_t len, pos;
} qd_blob_reader;

QD_EXPORT void qd_blob_reader_init(qd_blob_reader *r, const void *data,
                                   size_t len);

QD_EXPORT int qd_blob_get_u32(qd_blob_reader *r, uint32_t *v, qd_error *err);
QD_EXPORT int qd_blob_get_u64(qd_blob_reader *r, uint64_t *v, qd_error *err);
QD_EXPORT int qd_blob_get_i64(qd_blob_reader *r, int64_t *v, qd_error *err);
QD_EXPORT int qd_blob_get_f64(qd_blob_reader *r, double *v, qd_error *err);

/* Arrays of a known length: the stored count must equal n. */
QD_EXPORT int qd_blob_get_u32_array(qd_blob_reader *r, uint32_t *v, size_t n,
                                    qd_error *err);
QD_EXPORT int qd_blob_get_i32_array(qd_blob_reader *r, int32_t *v, size_t n,
                                    qd_error *err);
QD_EXPORT int qd_blob_get_u64_array(qd_blob_reader *r, uint64_t *v, size_t n,
                                    qd_error *err);
QD_EXPORT int qd_blob_get_i64_array(qd_blob_reader *r, int64_t *v, size_t n,
                                    qd_error *err);
QD_EXPORT int qd_blob_get_f64_array(qd_blob_reader *r, double *v, size_t n,
                                    qd_error *err);
/* Arrays of a length read from the blob: *v is malloc'd (NULL when *n is 0). */
QD_EXPORT int qd_blob_get_f64_array_alloc(qd_blob_reader *r, double **v,
                                          size_t *n, qd_error *err);
QD_EXPORT int qd_blob_get_i32_array_alloc(qd_blob_reader *r, int32_t **v,
                                          size_t *n, qd_error *err);

/* String: malloc'd, NUL-terminated (embedded NULs are QD_ERR_FORMAT). A NULL
 * string written by put_str reads back as NULL. */
QD_EXPORT int qd_blob_get_str(qd_blob_reader *r, char **s, qd_error *err);
/* Byte string: a view into the reader's memory, valid while it is. */
QD_EXPORT int qd_blob_get_bytes(qd_blob_reader *r, const void **p, size_t *n,
                                qd_error *err);
/* Generator state; rejects impossible states (even increment, ...). */
QD_EXPORT int qd_blob_get_rng(qd_blob_reader *r, qd_rng *rng, qd_error *err);

/* QD_ERR_FORMAT unless every byte has been consumed (trailing garbage means
 * the writer and reader disagree about the layout). */
QD_EXPORT int qd_blob_reader_end(const qd_blob_reader *r, qd_error *err);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_BLOB_H */
