/* In-memory data sets: allocation and selection (stratified splits are in
 * dataload.c). */
#include <stdlib.h>
#include <string.h>

#include "qdistill/data.h"

int qd_dataset_alloc(qd_dataset *d, size_t n, size_t channels, size_t height,
                     size_t width, size_t classes, qd_error *err)
{
    memset(d, 0, sizeof *d);
    size_t per = channels * height * width;
    if (per == 0 || classes == 0)
        return qd_error_set(err, QD_ERR_INVALID,
                            "data set shape %zux%zux%zu with %zu classes is empty",
                            channels, height, width, classes);
    if (n > 0 && per > SIZE_MAX / sizeof(double) / n)
        return qd_error_set(err, QD_ERR_NOMEM, "data set of %zu samples is too large", n);
    d->images = calloc(n ? n * per : 1, sizeof(double));
    d->labels = calloc(n ? n : 1, sizeof(int32_t));
    if (!d->images || !d->labels) {
        qd_dataset_free(d);
        return qd_error_set(err, QD_ERR_NOMEM,
                            "out of memory allocating %zu samples of %zu values", n, per);
    }
    d->n = n;
    d->channels = channels;
    d->height = height;
    d->width = width;
    d->classes = classes;
    return QD_OK;
}

void qd_dataset_free(qd_dataset *d)
{
    if (!d)
        return;
    free(d->images);
    free(d->labels);
    memset(d, 0, sizeof *d);
}

int qd_dataset_select(const qd_dataset *src, const size_t *idx, size_t n,
                      qd_dataset *dst, qd_error *err)
{
    int rc = qd_dataset_alloc(dst, n, src->channels, src->height, src->width,
                              src->classes, err);
    if (rc)
        return rc;
    size_t per = qd_dataset_sample_size(src);
    for (size_t i = 0; i < n; ++i) {
        if (idx[i] >= src->n) {
            qd_dataset_free(dst);
            return qd_error_set(err, QD_ERR_INVALID,
                                "sample index %zu out of range (%zu samples)",
                                idx[i], src->n);
        }
        memcpy(dst->images + i * per, src->images + idx[i] * per, per * sizeof(double));
        dst->labels[i] = src->labels[idx[i]];
    }
    memcpy(dst->name, src->name, sizeof dst->name);
    return QD_OK;
}
