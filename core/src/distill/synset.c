/*
 * Synthetic sets: allocation, release and deep copies of qd_synset.
 *
 * A synset is handed across the plugin boundary by value (result() fills a
 * caller-owned struct), so every buffer is allocated here, by libqdistill,
 * and released with qd_synset_free whoever filled it.
 */
#include <stdlib.h>
#include <string.h>

#include "qdistill/distill.h"

/* Upper bound on stored values (doubles) of one set: 2^31 (16 GiB). It only
 * guards the size arithmetic against overflow; real sets are tiny. */
#define SYNSET_MAX_VALUES ((size_t)1 << 31)

static int mul_ok(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SYNSET_MAX_VALUES / a)
        return 0;
    *out = a * b;
    return *out <= SYNSET_MAX_VALUES;
}

QD_EXPORT int qd_synset_alloc(qd_synset *s, size_t steps, size_t epochs,
                              size_t per_step, size_t channels, size_t height,
                              size_t width, size_t classes, size_t n_lrs,
                              qd_error *err)
{
    if (!s)
        return qd_error_set(err, QD_ERR_INVALID, "synset alloc: s is NULL");
    memset(s, 0, sizeof *s);
    if (!steps || !epochs || !per_step || !channels || !height || !width ||
        !classes)
        return qd_error_set(err, QD_ERR_INVALID,
                            "synset alloc: steps (%zu), epochs (%zu), "
                            "per_step (%zu), channels (%zu), height (%zu), "
                            "width (%zu) and classes (%zu) must all be >= 1",
                            steps, epochs, per_step, channels, height, width,
                            classes);
    size_t count, pix, hw, vals, T;
    if (!mul_ok(steps, per_step, &count) || !mul_ok(height, width, &hw) ||
        !mul_ok(channels, hw, &pix) || !mul_ok(count, pix, &vals) ||
        !mul_ok(steps, epochs, &T) || n_lrs > SYNSET_MAX_VALUES)
        return qd_error_set(err, QD_ERR_INVALID,
                            "synset alloc: %zu x %zu images of %zux%zux%zu "
                            "are too large", steps, per_step, channels,
                            height, width);
    if (n_lrs != 0 && n_lrs != T)
        return qd_error_set(err, QD_ERR_INVALID,
                            "synset alloc: n_lrs is %zu; it must be 0 or "
                            "steps * epochs = %zu", n_lrs, T);
    s->steps = steps;
    s->epochs = epochs;
    s->per_step = per_step;
    s->channels = channels;
    s->height = height;
    s->width = width;
    s->classes = classes;
    s->n_lrs = n_lrs;
    s->init_mode = QD_INIT_FIXED;
    s->images = calloc(vals, sizeof *s->images);
    s->labels = calloc(count, sizeof *s->labels);
    s->lrs = n_lrs ? calloc(n_lrs, sizeof *s->lrs) : NULL;
    if (!s->images || !s->labels || (n_lrs && !s->lrs)) {
        qd_synset_free(s);
        return qd_error_set(err, QD_ERR_NOMEM,
                            "synset alloc: out of memory for %zu images",
                            count);
    }
    return QD_OK;
}

QD_EXPORT void qd_synset_free(qd_synset *s)
{
    if (!s)
        return;
    free(s->images);
    free(s->labels);
    free(s->lrs);
    memset(s, 0, sizeof *s);
}

QD_EXPORT int qd_synset_copy(const qd_synset *src, qd_synset *dst,
                             qd_error *err)
{
    if (!src || !dst)
        return qd_error_set(err, QD_ERR_INVALID, "synset copy: NULL argument");
    if (src == dst)
        return qd_error_set(err, QD_ERR_INVALID,
                            "synset copy: source and destination are the "
                            "same set");
    if (!src->images || !src->labels || (src->n_lrs && !src->lrs))
        return qd_error_set(err, QD_ERR_INVALID,
                            "synset copy: the source set is not allocated");
    qd_synset tmp;
    int rc = qd_synset_alloc(&tmp, src->steps, src->epochs, src->per_step,
                             src->channels, src->height, src->width,
                             src->classes, src->n_lrs, err);
    if (rc)
        return rc;
    size_t count = qd_synset_count(src);
    size_t pix = src->channels * src->height * src->width;
    memcpy(tmp.images, src->images, count * pix * sizeof *tmp.images);
    memcpy(tmp.labels, src->labels, count * sizeof *tmp.labels);
    if (src->n_lrs)
        memcpy(tmp.lrs, src->lrs, src->n_lrs * sizeof *tmp.lrs);
    tmp.init_mode = src->init_mode;
    *dst = tmp;   /* dst is overwritten, not freed: it may be uninitialised */
    return QD_OK;
}
