/*
 * qdistill/data.h — in-memory image classification sets.
 *
 * Images are double precision, NCHW, already normalised by the dataset plugin
 * (e.g. MNIST (x/255 - 0.1307) / 0.3081). Labels are 0..classes-1.
 */
#ifndef QDISTILL_DATA_H
#define QDISTILL_DATA_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qd_split {
    QD_SPLIT_TRAIN = 0,
    QD_SPLIT_TEST = 1
} qd_split;

typedef struct qd_dataset {
    size_t n;          /* samples */
    size_t channels, height, width;
    size_t classes;
    double *images;    /* n * channels * height * width */
    int32_t *labels;   /* n */
    char name[64];     /* e.g. "mnist/train" */
} qd_dataset;

/* Size of one sample in doubles. */
static inline size_t qd_dataset_sample_size(const qd_dataset *d)
{
    return d->channels * d->height * d->width;
}

/* Allocate storage for n samples of the given shape (zeroed). */
QD_EXPORT int qd_dataset_alloc(qd_dataset *d, size_t n, size_t channels,
                               size_t height, size_t width, size_t classes,
                               qd_error *err);
QD_EXPORT void qd_dataset_free(qd_dataset *d);

/* Copy the samples idx[0..n) of src into a new set dst. */
QD_EXPORT int qd_dataset_select(const qd_dataset *src, const size_t *idx,
                                size_t n, qd_dataset *dst, qd_error *err);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_DATA_H */
