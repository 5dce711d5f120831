/* In-memory data sets: allocation, selection and stratified splits. */
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

int qd_dataset_split(const qd_dataset *src, size_t n_held, qd_rng *rng,
                     qd_dataset *rest, qd_dataset *held, qd_error *err)
{
    if (n_held > src->n)
        return qd_error_set(err, QD_ERR_INVALID,
                            "cannot hold out %zu of %zu samples", n_held, src->n);
    size_t *order = malloc((src->n ? src->n : 1) * sizeof *order);
    size_t *counts = calloc(src->classes, sizeof *counts);
    size_t *quota = calloc(src->classes, sizeof *quota);
    unsigned char *take = calloc(src->n ? src->n : 1, 1);
    size_t *hi = malloc((n_held ? n_held : 1) * sizeof *hi);
    size_t *ri = malloc((src->n - n_held ? src->n - n_held : 1) * sizeof *ri);
    int rc = QD_OK;
    if (!order || !counts || !quota || !take || !hi || !ri) {
        rc = qd_error_set(err, QD_ERR_NOMEM, "out of memory splitting %zu samples", src->n);
        goto out;
    }
    for (size_t i = 0; i < src->n; ++i) {
        order[i] = i;
        if ((size_t)src->labels[i] < src->classes)
            counts[src->labels[i]]++;
    }
    qd_rng_shuffle(rng, order, src->n);
    /* Class-stratified quotas (largest remainder), then fill in shuffled
     * order; leftovers (rounding) come from the front of the shuffle. */
    size_t assigned = 0;
    for (size_t c = 0; c < src->classes; ++c) {
        quota[c] = src->n ? counts[c] * n_held / src->n : 0;
        assigned += quota[c];
    }
    size_t k = 0;
    for (size_t i = 0; i < src->n && k < assigned; ++i) {
        size_t c = (size_t)src->labels[order[i]];
        if (c < src->classes && quota[c] > 0) {
            quota[c]--;
            take[order[i]] = 1;
            k++;
        }
    }
    for (size_t i = 0; i < src->n && k < n_held; ++i)
        if (!take[order[i]]) {
            take[order[i]] = 1;
            k++;
        }
    size_t nh = 0, nr = 0;
    for (size_t i = 0; i < src->n; ++i) {
        if (take[i])
            hi[nh++] = i;
        else
            ri[nr++] = i;
    }
    if ((rc = qd_dataset_select(src, hi, nh, held, err)))
        goto out;
    if ((rc = qd_dataset_select(src, ri, nr, rest, err))) {
        qd_dataset_free(held);
        goto out;
    }
out:
    free(order);
    free(counts);
    free(quota);
    free(take);
    free(hi);
    free(ri);
    return rc;
}
