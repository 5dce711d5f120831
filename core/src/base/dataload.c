/* From a `dataset:` section to the train / validation / test sets: create
 * the plugin instance, load both splits, sanity-check what the plugin
 * returned, then apply the core keys validation, subset and test_subset. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/dataload.h"

/* ------------------------------------------------------------------------
 * Stratified selection
 * ---------------------------------------------------------------------- */

int qd_data_stratified_mask(const qd_dataset *d, size_t n, qd_rng *rng,
                            unsigned char *mask, qd_error *err)
{
    size_t total = d->n;
    if (n > total)
        return qd_error_set(err, QD_ERR_INVALID,
                            "cannot choose %zu of %zu samples", n, total);
    /* qd_rng_shuffle draws 32-bit bounds, and count * n below must not
     * overflow 64 bits: both hold for anything that fits in memory. */
    if (total > UINT32_MAX)
        return qd_error_set(err, QD_ERR_INVALID,
                            "data set of %zu samples is too large to subsample", total);
    if (d->classes == 0)
        return qd_error_set(err, QD_ERR_INVALID, "data set has no classes");
    size_t C = d->classes;
    size_t *count = calloc(C, sizeof *count);
    size_t *quota = calloc(C, sizeof *quota);
    uint64_t *rem = calloc(C, sizeof *rem);
    unsigned char *bumped = calloc(C, 1);
    size_t *order = malloc((total ? total : 1) * sizeof *order);
    int rc = QD_OK;
    if (!count || !quota || !rem || !bumped || !order) {
        rc = qd_error_set(err, QD_ERR_NOMEM, "out of memory choosing %zu of %zu samples",
                          n, total);
        goto out;
    }
    for (size_t i = 0; i < total; ++i) {
        int32_t l = d->labels[i];
        if (l < 0 || (size_t)l >= C) {
            rc = qd_error_set(err, QD_ERR_INVALID,
                              "sample %zu has label %d outside 0..%zu", i, (int)l, C - 1);
            goto out;
        }
        count[l]++;
    }
    /* Largest-remainder quotas: floor(count_c * n / total) each, then the
     * few samples left over go to the classes with the largest remainders
     * (ties to the lower class). The remainders sum to (left over) * total,
     * each below total, so enough classes have a positive remainder and no
     * quota exceeds its class count. */
    size_t assigned = 0;
    for (size_t c = 0; c < C && total > 0; ++c) {
        uint64_t p = (uint64_t)count[c] * (uint64_t)n;
        quota[c] = (size_t)(p / total);
        rem[c] = p % total;
        assigned += quota[c];
    }
    for (size_t left = n - assigned; left > 0; --left) {
        size_t best = C;
        for (size_t c = 0; c < C; ++c)
            if (!bumped[c] && rem[c] > 0 && (best == C || rem[c] > rem[best]))
                best = c;
        if (best == C) {
            rc = qd_error_set(err, QD_ERR_INTERNAL, "stratified quotas do not add up");
            goto out;
        }
        bumped[best] = 1;
        quota[best]++;
    }
    /* Within each class, members are taken in a uniformly shuffled order. */
    for (size_t i = 0; i < total; ++i)
        order[i] = i;
    qd_rng_shuffle(rng, order, total);
    memset(mask, 0, total);
    for (size_t i = 0; i < total; ++i) {
        size_t c = (size_t)d->labels[order[i]];
        if (quota[c] > 0) {
            quota[c]--;
            mask[order[i]] = 1;
        }
    }
out:
    free(count);
    free(quota);
    free(rem);
    free(bumped);
    free(order);
    return rc;
}

int qd_data_compact(qd_dataset *d, const unsigned char *mask, qd_error *err)
{
    size_t per = qd_dataset_sample_size(d);
    size_t k = 0;
    for (size_t i = 0; i < d->n; ++i) {
        if (!mask[i])
            continue;
        if (k != i) {   /* k < i: source and destination never overlap */
            memcpy(d->images + k * per, d->images + i * per, per * sizeof(double));
            d->labels[k] = d->labels[i];
        }
        k++;
    }
    d->n = k;
    /* Shrinking cannot fail in practice; if realloc refuses, the larger
     * block stays valid, so only a failure to shrink is tolerated. */
    double *im = realloc(d->images, (k ? k * per : 1) * sizeof(double));
    int32_t *lb = realloc(d->labels, (k ? k : 1) * sizeof(int32_t));
    if (im)
        d->images = im;
    if (lb)
        d->labels = lb;
    (void)err;
    return QD_OK;
}

/* ------------------------------------------------------------------------
 * Core keys
 * ---------------------------------------------------------------------- */

/* Read a core count key: absent/null -> 0 (off); a non-negative integer; or
 * a fraction in (0, 1) of `of` samples (rounded to nearest). */
static int read_count(const qd_node *section, const char *key, size_t of,
                      size_t *out, qd_error *err)
{
    *out = 0;
    const qd_node *n = qd_node_get(section, key);
    if (!n || qd_node_kind(n) == QD_NODE_NULL)
        return QD_OK;
    long long v;
    qd_error tmp;
    if (qd_node_as_int(n, &v, &tmp) == QD_OK) {
        if (v < 0)
            return qd_node_error(n, err, QD_ERR_INVALID,
                                 "dataset.%s must be >= 0, got %lld", key, v);
        *out = (size_t)v;
        return QD_OK;
    }
    double f;
    if (qd_node_as_double(n, &f, &tmp) == QD_OK) {
        if (f > 0.0 && f < 1.0) {
            /* 0 would mean "off" (for subset: keep everything), so a
             * fraction too small to select anything is an error */
            *out = (size_t)llround(f * (double)of);
            if (*out == 0)
                return qd_node_error(n, err, QD_ERR_INVALID,
                                     "dataset.%s = %s selects no sample of %zu", key,
                                     qd_node_str(n), of);
            return QD_OK;
        }
        /* a whole number written as a float ("1e3", "500.0") is a count */
        if (f >= 0.0 && f < 9007199254740992.0 && f == floor(f)) {
            *out = (size_t)f;
            return QD_OK;
        }
        return qd_node_error(n, err, QD_ERR_INVALID,
                             "dataset.%s must be a sample count or a fraction in (0, 1), "
                             "got %s", key, qd_node_str(n));
    }
    return qd_node_error(n, err, QD_ERR_INVALID,
                         "dataset.%s must be a sample count or a fraction in (0, 1)",
                         key);
}

/* Choose n stratified samples of d with the stream (seed, name). Without
 * `held`, d keeps only the chosen samples (subset); with `held`, the chosen
 * samples move to `held` and d keeps the rest (validation split). */
static int choose(qd_dataset *d, size_t n, uint64_t seed, const char *stream,
                  qd_dataset *held, qd_error *err)
{
    unsigned char *mask = malloc(d->n ? d->n : 1);
    if (!mask)
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    qd_rng rng;
    qd_rng_derive(&rng, seed, stream);
    int rc = qd_data_stratified_mask(d, n, &rng, mask, err);
    if (rc == QD_OK && held) {
        /* Copy the chosen samples out, then drop them from d. */
        size_t *idx = malloc((n ? n : 1) * sizeof *idx);
        if (!idx) {
            rc = qd_error_set(err, QD_ERR_NOMEM, "out of memory");
        } else {
            size_t k = 0;
            for (size_t i = 0; i < d->n; ++i)
                if (mask[i])
                    idx[k++] = i;
            rc = qd_dataset_select(d, idx, k, held, err);
            free(idx);
            for (size_t i = 0; i < d->n; ++i)
                mask[i] = !mask[i];
        }
    }
    if (rc == QD_OK)
        rc = qd_data_compact(d, mask, err);
    free(mask);
    return rc;
}

/* ------------------------------------------------------------------------
 * Checking what the plugin returned
 * ---------------------------------------------------------------------- */

static int check_split(const qd_dataset *d, const char *what, qd_error *err)
{
    size_t per = qd_dataset_sample_size(d);
    if (per == 0 || d->classes == 0)
        return qd_error_set(err, QD_ERR_PLUGIN,
                            "%s set has an empty shape (%zux%zux%zu, %zu classes)",
                            what, d->channels, d->height, d->width, d->classes);
    if (d->n == 0)
        return qd_error_set(err, QD_ERR_PLUGIN, "%s set is empty", what);
    if (!d->images || !d->labels)
        return qd_error_set(err, QD_ERR_PLUGIN, "%s set has no storage", what);
    for (size_t i = 0; i < d->n; ++i)
        if (d->labels[i] < 0 || (size_t)d->labels[i] >= d->classes)
            return qd_error_set(err, QD_ERR_PLUGIN,
                                "%s sample %zu has label %d outside 0..%zu", what, i,
                                (int)d->labels[i], d->classes - 1);
    size_t m = d->n * per;
    for (size_t j = 0; j < m; ++j)
        if (!isfinite(d->images[j]))
            return qd_error_set(err, QD_ERR_NUMERIC,
                                "%s sample %zu has a non-finite value", what, j / per);
    return QD_OK;
}

/* ------------------------------------------------------------------------
 * qd_data_load
 * ---------------------------------------------------------------------- */

void qd_data_bundle_free(qd_data_bundle *b)
{
    if (!b)
        return;
    qd_dataset_free(&b->train);
    qd_dataset_free(&b->val);
    qd_dataset_free(&b->test);
    memset(b, 0, sizeof *b);
}

int qd_data_load(const qd_registry *reg, const qd_node *section,
                 const qd_instance_opts *opts, qd_data_bundle *out, qd_error *err)
{
    memset(out, 0, sizeof *out);
    if (!reg || !section)
        return qd_error_set(err, QD_ERR_INVALID, "qd_data_load: no registry or section");
    if (qd_node_kind(section) != QD_NODE_MAP)
        return qd_node_error(section, err, QD_ERR_INVALID,
                             "the dataset section must be a mapping");

    qd_instance_opts o = {0};
    if (opts)
        o = *opts;
    if (!o.stream)
        o.stream = "dataset";

    qd_instance *inst = NULL;
    int rc = qd_instance_create(reg, QD_KIND_DATASET, section, &o, &inst, err);
    if (rc)
        return rc;
    const qd_dataset_vt *vt = qd_instance_vtable(inst);
    void *self = qd_instance_self(inst);
    const char *pname = qd_instance_desc(inst)->name;
    snprintf(out->name, sizeof out->name, "%s", pname);

    if ((rc = vt->load(self, QD_SPLIT_TRAIN, &out->train)) != QD_OK) {
        rc = qd_instance_error(inst, rc, err);
        goto fail;
    }
    if ((rc = vt->load(self, QD_SPLIT_TEST, &out->test)) != QD_OK) {
        rc = qd_instance_error(inst, rc, err);
        goto fail;
    }
    if ((rc = check_split(&out->train, "training", err)) ||
        (rc = check_split(&out->test, "test", err))) {
        qd_error_prefix(err, "dataset '%s'", pname);
        goto fail;
    }
    if (out->train.channels != out->test.channels || out->train.height != out->test.height ||
        out->train.width != out->test.width || out->train.classes != out->test.classes) {
        rc = qd_error_set(err, QD_ERR_PLUGIN,
                          "dataset '%s': training set is %zux%zux%zu with %zu classes but "
                          "test set is %zux%zux%zu with %zu classes", pname,
                          out->train.channels, out->train.height, out->train.width,
                          out->train.classes, out->test.channels, out->test.height,
                          out->test.width, out->test.classes);
        goto fail;
    }
    size_t n_train = out->train.n, n_test = out->test.n;

    /* validation first, so the held-out set does not depend on `subset` */
    size_t n_val, n_sub, n_tsub;
    if ((rc = read_count(section, "validation", out->train.n, &n_val, err)))
        goto fail;
    if (n_val > 0) {
        if (n_val >= out->train.n) {
            rc = qd_node_error(qd_node_get(section, "validation"), err, QD_ERR_INVALID,
                               "dataset.validation = %zu leaves no training samples "
                               "(the training set has %zu)", n_val, out->train.n);
            goto fail;
        }
        if ((rc = choose(&out->train, n_val, o.seed, "dataset.validation", &out->val, err)))
            goto fail;
    }
    if ((rc = read_count(section, "subset", out->train.n, &n_sub, err)))
        goto fail;
    if (n_sub > 0 && n_sub != out->train.n) {
        if (n_sub > out->train.n) {
            rc = qd_node_error(qd_node_get(section, "subset"), err, QD_ERR_INVALID,
                               "dataset.subset = %zu exceeds the %zu training samples%s",
                               n_sub, out->train.n,
                               n_val ? " left after the validation split" : "");
            goto fail;
        }
        if ((rc = choose(&out->train, n_sub, o.seed, "dataset.subset", NULL, err)))
            goto fail;
    }
    if ((rc = read_count(section, "test_subset", out->test.n, &n_tsub, err)))
        goto fail;
    if (n_tsub > 0 && n_tsub != out->test.n) {
        if (n_tsub > out->test.n) {
            rc = qd_node_error(qd_node_get(section, "test_subset"), err, QD_ERR_INVALID,
                               "dataset.test_subset = %zu exceeds the %zu test samples",
                               n_tsub, out->test.n);
            goto fail;
        }
        /* fixed seed: the same test samples for every seed of a sweep */
        if ((rc = choose(&out->test, n_tsub, 0, "dataset.test_subset", NULL, err)))
            goto fail;
    }

    snprintf(out->train.name, sizeof out->train.name, "%s/train", pname);
    snprintf(out->test.name, sizeof out->test.name, "%s/test", pname);
    if (out->val.n)
        snprintf(out->val.name, sizeof out->val.name, "%s/val", pname);

    /* "train 100 of 54000" when subset shrank what validation left */
    char from_train[64] = "", from_test[64] = "";
    if (out->train.n != n_train - out->val.n)
        snprintf(from_train, sizeof from_train, " of %zu", n_train - out->val.n);
    if (out->test.n != n_test)
        snprintf(from_test, sizeof from_test, " of %zu", n_test);
    snprintf(out->summary, sizeof out->summary,
             "%s: train %zu%s, val %zu, test %zu%s (%zux%zux%zu, %zu classes)", pname,
             out->train.n, from_train, out->val.n, out->test.n, from_test,
             out->train.channels, out->train.height, out->train.width, out->train.classes);
    qd_instance_destroy(inst);
    return QD_OK;

fail:
    qd_instance_destroy(inst);
    qd_data_bundle_free(out);
    return rc;
}
