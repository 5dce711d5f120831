/*
 * qdistill/npy.h — NumPy .npy files (format 1.0), readable by numpy.load as
 * is: the distilled images, labels and learning rates of a run.
 *
 * Supported: dtypes '<f8' (double), '<i4' (int32), '<i8' (int64), '|u1'
 * (uint8, '<u1' accepted on read); C order; 0..8 dimensions. Writes are atomic
 * (qdistill/fsutil.h). The reader is defensive (it is fuzzed): it checks the
 * magic, version (1.0, and 2.0 whose only difference is a 4-byte header
 * length), header length, the header dict's syntax (exactly the keys
 * 'descr', 'fortran_order', 'shape'), the dtype, and that the data holds
 * exactly prod(shape) elements — truncated or oversized files are
 * QD_ERR_FORMAT. Nothing is allocated beyond what the file itself holds.
 */
#ifndef QDISTILL_NPY_H
#define QDISTILL_NPY_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QD_NPY_MAX_DIMS 8

typedef enum qd_npy_dtype {
    QD_NPY_F8 = 0,   /* double  '<f8' */
    QD_NPY_I4 = 1,   /* int32_t '<i4' */
    QD_NPY_I8 = 2,   /* int64_t '<i8' */
    QD_NPY_U1 = 3    /* uint8_t '|u1' */
} qd_npy_dtype;

/* Bytes per element (0 for an unknown dtype) and the descr string. */
QD_EXPORT size_t qd_npy_dtype_size(qd_npy_dtype t);
QD_EXPORT const char *qd_npy_dtype_descr(qd_npy_dtype t);

/* Write data (prod(shape) elements of dtype, native byte order, C order). */
QD_EXPORT int qd_npy_write(const char *path, qd_npy_dtype dtype,
                           const size_t *shape, size_t ndim, const void *data,
                           qd_error *err);

typedef struct qd_npy {
    qd_npy_dtype dtype;
    size_t ndim;
    size_t shape[QD_NPY_MAX_DIMS];
    size_t count;      /* prod(shape) */
    void *data;        /* count elements, native byte order; malloc'd */
} qd_npy;

/* Read and validate a .npy file / buffer into out (free with qd_npy_free). */
QD_EXPORT int qd_npy_read(const char *path, qd_npy *out, qd_error *err);
QD_EXPORT int qd_npy_parse(const void *buf, size_t len, qd_npy *out,
                           qd_error *err);
QD_EXPORT void qd_npy_free(qd_npy *a);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_NPY_H */
