/* Dataset plugin `synthetic`: a small generated classification set for tests
 * and demos, needing no files.
 *
 * Each class has a prototype image: a sum of `blobs` Gaussian bumps per
 * channel (random centres, widths and signed amplitudes), scaled to unit RMS.
 * A sample is its class prototype, translated by a random integer offset of
 * at most `shift` pixels (zero fill), plus noise * N(0, 1) per pixel.
 *
 * Determinism: create() draws one 64-bit seed from the instance's stream;
 * prototypes, training and test samples then come from three streams
 * derived from it, so the splits do not depend on the order they are loaded
 * in, and the same seed always gives the same set. Labels are balanced
 * (counts differ by at most one) and shuffled. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/plugin.h"

#define MAX_VALUES ((size_t)1 << 28)   /* doubles per split (2 GiB) */

typedef struct synth {
    const qd_host *host;
    uint64_t seed;
    size_t classes, n_train, n_test, channels, height, width, blobs, shift;
    double noise;
    double *proto;             /* classes x channels x height x width, lazily */
} synth;

static int make_prototypes(synth *s)
{
    size_t per = s->channels * s->height * s->width, hw = s->height * s->width;
    s->proto = calloc(s->classes * per, sizeof *s->proto);
    if (!s->proto)
        return s->host->error(s->host, QD_ERR_NOMEM, "out of memory");
    qd_rng rng;
    qd_rng_derive(&rng, s->seed, "synthetic.prototypes");
    double side = (double)(s->height < s->width ? s->height : s->width);
    for (size_t c = 0; c < s->classes; ++c) {
        double *p = s->proto + c * per;
        for (size_t ch = 0; ch < s->channels; ++ch) {
            double *img = p + ch * hw;
            for (size_t b = 0; b < s->blobs; ++b) {
                double amp = (qd_rng_uniform(&rng) < 0.5 ? -1.0 : 1.0) *
                             (0.5 + 0.5 * qd_rng_uniform(&rng));
                double cy = qd_rng_uniform(&rng) * (double)(s->height - 1);
                double cx = qd_rng_uniform(&rng) * (double)(s->width - 1);
                double sig = (0.08 + 0.17 * qd_rng_uniform(&rng)) * side;
                if (sig < 0.5)
                    sig = 0.5;
                double k = -0.5 / (sig * sig);
                for (size_t y = 0; y < s->height; ++y)
                    for (size_t x = 0; x < s->width; ++x) {
                        double dy = (double)y - cy, dx = (double)x - cx;
                        img[y * s->width + x] += amp * exp(k * (dy * dy + dx * dx));
                    }
            }
        }
        /* unit RMS, so `noise` is a signal-to-noise knob independent of size */
        double ss = 0.0;
        for (size_t j = 0; j < per; ++j)
            ss += p[j] * p[j];
        double rms = sqrt(ss / (double)per);
        if (rms > 0.0)
            for (size_t j = 0; j < per; ++j)
                p[j] /= rms;
    }
    return QD_OK;
}

static int load(void *self, qd_split split, qd_dataset *out)
{
    synth *s = self;
    const qd_host *h = s->host;
    memset(out, 0, sizeof *out);
    if (split != QD_SPLIT_TRAIN && split != QD_SPLIT_TEST)
        return h->error(h, QD_ERR_INVALID, "unknown split %d", (int)split);
    int rc;
    if (!s->proto && (rc = make_prototypes(s)))
        return rc;
    size_t n = split == QD_SPLIT_TRAIN ? s->n_train : s->n_test;
    qd_error e;
    if (qd_dataset_alloc(out, n, s->channels, s->height, s->width, s->classes, &e) != QD_OK)
        return h->error(h, e.code, "%s", e.msg);
    size_t *lab = malloc(n * sizeof *lab);
    if (!lab) {
        qd_dataset_free(out);
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    }
    qd_rng rng;
    qd_rng_derive(&rng, s->seed, split == QD_SPLIT_TRAIN ? "synthetic.train" : "synthetic.test");
    for (size_t i = 0; i < n; ++i)
        lab[i] = i % s->classes;
    qd_rng_shuffle(&rng, lab, n);
    size_t per = s->channels * s->height * s->width, hw = s->height * s->width;
    long sh = (long)s->shift, H = (long)s->height, W = (long)s->width;
    for (size_t i = 0; i < n; ++i) {
        out->labels[i] = (int32_t)lab[i];
        const double *p = s->proto + lab[i] * per;
        double *x = out->images + i * per;
        long oy = 0, ox = 0;
        if (sh > 0) {
            oy = (long)qd_rng_bounded(&rng, (uint32_t)(2 * sh + 1)) - sh;
            ox = (long)qd_rng_bounded(&rng, (uint32_t)(2 * sh + 1)) - sh;
        }
        for (size_t ch = 0; ch < s->channels; ++ch)
            for (long y = 0; y < H; ++y)
                for (long xx = 0; xx < W; ++xx) {
                    long sy = y - oy, sx = xx - ox;
                    double v = (sy >= 0 && sy < H && sx >= 0 && sx < W)
                                   ? p[ch * hw + (size_t)(sy * W + sx)] : 0.0;
                    x[ch * hw + (size_t)(y * W + xx)] = v + s->noise * qd_rng_normal(&rng);
                }
    }
    free(lab);
    snprintf(out->name, sizeof out->name, "synthetic/%s",
             split == QD_SPLIT_TRAIN ? "train" : "test");
    return QD_OK;
}

static void destroy(void *self)
{
    synth *s = self;
    if (s)
        free(s->proto);
    free(s);
}

/* Read an integer key and check its range (the schema checks it too; this
 * keeps the plugin safe under a host that does not). */
static int get_size(const qd_host *h, const char *key, long long lo, long long hi, size_t *out)
{
    long long v = h->get_int(h, key);
    if (v < lo || v > hi)
        return h->node_error(h, qd_node_get(h->config, key), QD_ERR_INVALID,
                             "'%s' must be in %lld..%lld, got %lld", key, lo, hi, v);
    *out = (size_t)v;
    return QD_OK;
}

static int create(const qd_host *h, void **self)
{
    *self = NULL;
    synth *s = calloc(1, sizeof *s);
    if (!s)
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    s->host = h;
    int rc;
    if ((rc = get_size(h, "classes", 2, 1000, &s->classes)) ||
        (rc = get_size(h, "train_size", 1, 10000000, &s->n_train)) ||
        (rc = get_size(h, "test_size", 1, 10000000, &s->n_test)) ||
        (rc = get_size(h, "channels", 1, 64, &s->channels)) ||
        (rc = get_size(h, "height", 1, 1024, &s->height)) ||
        (rc = get_size(h, "width", 1, 1024, &s->width)) ||
        (rc = get_size(h, "blobs", 1, 64, &s->blobs)) ||
        (rc = get_size(h, "shift", 0, 64, &s->shift)))
        goto fail;
    s->noise = h->get_double(h, "noise");
    if (!(s->noise >= 0.0 && isfinite(s->noise))) {
        rc = h->node_error(h, qd_node_get(h->config, "noise"), QD_ERR_INVALID,
                           "'noise' must be a finite number >= 0");
        goto fail;
    }
    size_t per = s->channels * s->height * s->width;
    size_t big = s->n_train > s->n_test ? s->n_train : s->n_test;
    if (per > MAX_VALUES / big) {
        rc = h->error(h, QD_ERR_INVALID,
                      "%zu samples of %zux%zux%zu exceed the %zu-value limit per split",
                      big, s->channels, s->height, s->width, MAX_VALUES);
        goto fail;
    }
    /* Both halves of the 64-bit seed come from the instance's stream. */
    qd_rng *r = h->rng(h);
    s->seed = (uint64_t)qd_rng_u32(r) << 32;
    s->seed |= qd_rng_u32(r);
    *self = s;
    return QD_OK;
fail:
    destroy(s);
    return rc;
}

static const qd_param params[] = {
    {"classes", QD_PARAM_INT, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "10", 2, 1000, NULL, 0,
     NULL, "number of classes"},
    {"train_size", QD_PARAM_INT, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "1000", 1, 1e7, NULL, 0,
     NULL, "training samples (balanced over classes)"},
    {"test_size", QD_PARAM_INT, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "500", 1, 1e7, NULL, 0,
     NULL, "test samples (balanced over classes)"},
    {"channels", QD_PARAM_INT, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "1", 1, 64, NULL, 0, NULL,
     "image channels"},
    {"height", QD_PARAM_INT, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "28", 1, 1024, NULL, 0, NULL,
     "image height"},
    {"width", QD_PARAM_INT, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "28", 1, 1024, NULL, 0, NULL,
     "image width"},
    {"noise", QD_PARAM_DOUBLE, QD_PARAM_HAS_MIN, "0.5", 0, 0, NULL, 0, NULL,
     "standard deviation of the per-pixel Gaussian noise (prototypes have unit RMS)"},
    {"blobs", QD_PARAM_INT, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "3", 1, 64, NULL, 0, NULL,
     "Gaussian blobs per channel of each class prototype"},
    {"shift", QD_PARAM_INT, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "0", 0, 64, NULL, 0, NULL,
     "largest random translation of a sample, in pixels (0: none)"},
    {NULL, 0, 0, NULL, 0, 0, NULL, 0, NULL, NULL},
};

static const qd_dataset_vt vtable = {
    .struct_size = sizeof(qd_dataset_vt),
    .create = create,
    .destroy = destroy,
    .load = load,
};

static const qd_plugin_desc desc = QD_PLUGIN_DESC_INIT(
    QD_KIND_DATASET, "synthetic", "1.0.0",
    "generated classes: Gaussian-blob prototypes plus noise (for tests and demos)",
    params, &vtable);

static const qd_plugin_desc *const descs[] = {&desc, NULL};

QD_PLUGIN_EXPORT const qd_plugin_desc *const *qd_plugin_entry(void)
{
    return descs;
}
