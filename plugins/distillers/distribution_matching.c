/* Distiller plugin `distribution_matching`: dataset condensation by
 * distribution matching (Zhao & Bilen 2023, "Dataset Condensation with
 * Distribution Matching").
 *
 * Learned: classes x images_per_class synthetic images (labels fixed,
 * class-major); no step sizes (n_lrs = 0: the host evaluates the set with
 * the evaluate section's recipe). One outer iteration:
 *   1. w = a fresh random initialisation (model_init: random, as DM) or the
 *      run's fixed one;
 *   2. for every class c: a real batch of batch_real images of c, drawn
 *      without replacement; with augmentation, one transform drawn from the
 *      class's seed is applied to the real batch and to c's synthetic images
 *      alike (siamese);
 *   3. embeddings e(x) = output of the `embedding` layer under w; the loss
 *      L = sum_c || mean_real_c e - mean_syn_c e ||^2;
 *   4. dL/d(synthetic images) = J^T g with g = -2 (mean_real_c - mean_syn_c)
 *      / images_per_class per synthetic embedding, back through the network
 *      (qd_model_backward_from) and the augmentation (its transpose);
 *   5. one SGD step with momentum on the images.
 * The network's parameters are never trained: DM needs only first-order
 * input gradients, so one iteration costs one forward of classes x
 * batch_real real images and a forward and backward of the synthetic set.
 *
 * Choosing the embedding: DM takes the features the classifier reads. The
 * default `auto` is the layer listed just before the output layer (LeNet:
 * relu4, 84 features; the quantum LeNet: mix, 10 values). On the quantum
 * LeNet, `embedding: f2` matches the 64 classical features before the
 * circuit (no circuit executions while distilling) and `embedding: q` the
 * 6 measured expectations (every image passes through the circuit). Any
 * layer name of the model is accepted; start() lists them when the name is
 * unknown (`qdistill describe-model` prints them with their sizes).
 *
 * Schedule: DM runs 20000 iterations; the default here is 2000. One
 * iteration costs about the same at 1 and 10 images per class (the
 * classes x batch_real real images dominate: ~0.1 s on one core on MNIST
 * with the quantum LeNet), and on that problem validation accuracy gains
 * about 1 point from iteration 500 to 1000, so 2000 keeps a run to minutes
 * and leaves little on the table; raise `iterations` for final numbers.
 *
 * Everything stateful (images, momentum buffer and step count) is in save();
 * the real batches are drawn from a sorted class list each time, so they
 * depend on ctx->rng alone, which the host checkpoints with ctx->init_rng.
 * Dropout is switched off: the gradient is that of the function the forward
 * computed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/augment.h"
#include "qdistill/distill.h"
#include "qdistill/train.h"

#define STATE_MAGIC 0x51444d31u   /* "QDM1" */
#define AUTO_EMBEDDING "auto"

typedef struct dm {
    const qd_host *host;
    /* configuration */
    size_t ipc, batch_real;
    uint64_t iterations;
    double lr_img, momentum;
    int init_real, init_random;
    char *embedding_cfg;          /* as configured ("auto" or a name) */
    char *augment_cfg;            /* strategy, "none" = off */
    char aug_mode;                /* 'S' or 'M' */
    /* shapes (start) */
    int started, broken;
    size_t classes, channels, height, width, in_size, n_syn, n_img;
    size_t n_params, n_train, emb, bmax;
    char *embedding;              /* resolved layer name */
    /* learned state */
    double *images;
    int32_t *labels;
    qd_sgd sgd;
    /* data: training indices grouped by class */
    size_t *cls_idx, *cls_off, *pool;
    /* scratch */
    qd_augment *aug;              /* NULL: no augmentation */
    uint64_t *seeds;              /* per class, this iteration */
    double *w, *xr, *xr_aug, *er, *xs_aug, *es, *g_es, *g_xs_aug, *grad;
    double *mean_real, *mean_syn;
} dm;

/* ---- lifecycle ---- */

static void free_state(dm *p)
{
    free(p->images);
    free(p->labels);
    qd_sgd_free(&p->sgd);
    free(p->cls_idx);
    free(p->cls_off);
    free(p->pool);
    qd_augment_destroy(p->aug);
    free(p->seeds);
    free(p->w);
    free(p->xr);
    free(p->xr_aug);
    free(p->er);
    free(p->xs_aug);
    free(p->es);
    free(p->g_es);
    free(p->g_xs_aug);
    free(p->grad);
    free(p->mean_real);
    free(p->mean_syn);
    free(p->embedding);
    p->images = p->w = p->xr = p->xr_aug = p->er = p->xs_aug = p->es = NULL;
    p->g_es = p->g_xs_aug = p->grad = p->mean_real = p->mean_syn = NULL;
    p->labels = NULL;
    p->cls_idx = p->cls_off = p->pool = NULL;
    p->aug = NULL;
    p->seeds = NULL;
    p->embedding = NULL;
    p->started = 0;
}

static void destroy(void *self)
{
    dm *p = self;
    if (!p)
        return;
    free_state(p);
    free(p->embedding_cfg);
    free(p->augment_cfg);
    free(p);
}

static const qd_node *cfg_node(const qd_host *h, const char *key)
{
    return qd_node_get(h->config, key);
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

static int get_count(const qd_host *h, const char *key, long long lo,
                     long long hi, size_t *out)
{
    long long v = h->get_int(h, key);
    if (v < lo || v > hi)
        return h->node_error(h, cfg_node(h, key), QD_ERR_INVALID,
                             "'%s' must be in %lld..%lld, got %lld", key, lo,
                             hi, v);
    *out = (size_t)v;
    return QD_OK;
}

static int create(const qd_host *h, void **self)
{
    *self = NULL;
    dm *p = calloc(1, sizeof *p);
    if (!p)
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    p->host = h;
    int rc;
    size_t iters = 0;
    if ((rc = get_count(h, "images_per_class", 1, 100000, &p->ipc)) ||
        (rc = get_count(h, "batch_real", 1, 1 << 24, &p->batch_real)) ||
        (rc = get_count(h, "iterations", 1, 1LL << 40, &iters)))
        goto fail;
    p->iterations = iters;
    p->init_real = strcmp(h->get_string(h, "init"), "real") == 0;
    p->init_random = strcmp(h->get_string(h, "model_init"), "random") == 0;
    p->lr_img = h->get_double(h, "lr_img");
    p->momentum = h->get_double(h, "momentum");
    /* single = DSA's 'S', all = 'M' (the same names as gradient_matching) */
    p->aug_mode = strcmp(h->get_string(h, "augment_mode"), "all") == 0 ? 'M' : 'S';

    rc = QD_ERR_INVALID;
    if (!(p->lr_img > 0.0 && isfinite(p->lr_img))) {
        h->node_error(h, cfg_node(h, "lr_img"), QD_ERR_INVALID,
                      "'lr_img' must be a finite number > 0, got %g",
                      p->lr_img);
        goto fail;
    }
    if (!(p->momentum >= 0.0 && p->momentum < 1.0)) {
        h->node_error(h, cfg_node(h, "momentum"), QD_ERR_INVALID,
                      "'momentum' must be in [0, 1), got %g", p->momentum);
        goto fail;
    }
    const char *emb = h->get_string(h, "embedding");
    if (!emb || !*emb) {
        h->node_error(h, cfg_node(h, "embedding"), QD_ERR_INVALID,
                      "'embedding' must name a layer of the model (or be "
                      "'" AUTO_EMBEDDING "')");
        goto fail;
    }
    /* the strategy is checked now (on a stand-in shape: ops do not depend
     * on it), so a typo fails at validation, not after loading the data */
    const char *strat = h->get_string(h, "augment");
    qd_augment *probe = NULL;
    qd_error e;
    if (qd_augment_create(strat, p->aug_mode, 1, 8, 8, &probe, &e)) {
        h->node_error(h, cfg_node(h, "augment"), QD_ERR_INVALID,
                      "'augment': %s", e.msg);
        goto fail;
    }
    qd_augment_destroy(probe);
    p->embedding_cfg = dup_str(emb);
    p->augment_cfg = dup_str(strat);
    if (!p->embedding_cfg || !p->augment_cfg) {
        rc = h->error(h, QD_ERR_NOMEM, "out of memory");
        goto fail;
    }
    *self = p;
    return QD_OK;
fail:
    destroy(p);
    return rc;
}

/* ---- start ---- */

static int oom(const dm *p)
{
    return p->host->error(p->host, QD_ERR_NOMEM, "out of memory");
}

/* The embedding layer: the configured name, or the layer before the output
 * for "auto". An unknown name is reported at the key with the valid ones. */
static int resolve_embedding(dm *p, const qd_model *m)
{
    const qd_host *h = p->host;
    const size_t n = qd_model_n_layers(m);
    const char *name = p->embedding_cfg;
    if (strcmp(name, AUTO_EMBEDDING) == 0)
        name = qd_model_layer_name(m, n >= 2 ? n - 2 : 0);
    if (name && qd_model_layer_size(m, name) > 0) {
        p->embedding = dup_str(name);
        p->emb = qd_model_layer_size(m, name);
        return p->embedding ? QD_OK : oom(p);
    }
    size_t cap = 64, len = 0;
    for (size_t i = 0; i < n; i++)
        cap += strlen(qd_model_layer_name(m, i)) + 32;
    char *list = malloc(cap);
    if (!list)
        return oom(p);
    list[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        const char *ln = qd_model_layer_name(m, i);
        len += (size_t)snprintf(list + len, cap - len, "%s%s (%zu)",
                                i ? ", " : "", ln, qd_model_layer_size(m, ln));
    }
    int rc = h->node_error(h, cfg_node(h, "embedding"), QD_ERR_INVALID,
                           "'embedding': the model has no layer '%s'; valid "
                           "layers (output size): %s", name, list);
    free(list);
    return rc;
}

/* Training indices grouped by class (cls_idx[cls_off[c] .. cls_off[c+1]),
 * ascending within a class. */
static int group_classes(dm *p, const qd_dataset *d)
{
    p->cls_off = calloc(p->classes + 1, sizeof *p->cls_off);
    p->cls_idx = malloc(d->n * sizeof *p->cls_idx);
    if (!p->cls_off || !p->cls_idx)
        return oom(p);
    for (size_t i = 0; i < d->n; i++) {
        if (d->labels[i] < 0 || (size_t)d->labels[i] >= p->classes)
            return p->host->error(p->host, QD_ERR_INVALID,
                                  "start: training label %d of image %zu is "
                                  "outside [0, %zu)", (int)d->labels[i], i,
                                  p->classes);
        p->cls_off[d->labels[i] + 1]++;
    }
    size_t most = 0;
    for (size_t c = 0; c < p->classes; c++) {
        if (p->cls_off[c + 1] == 0)
            return p->host->error(p->host, QD_ERR_INVALID,
                                  "start: distribution matching needs "
                                  "training images of every class; class "
                                  "%zu has none", c);
        most = p->cls_off[c + 1] > most ? p->cls_off[c + 1] : most;
        p->cls_off[c + 1] += p->cls_off[c];
    }
    size_t *fill = malloc(p->classes * sizeof *fill);
    if (!fill)
        return oom(p);
    memcpy(fill, p->cls_off, p->classes * sizeof *fill);
    for (size_t i = 0; i < d->n; i++)
        p->cls_idx[fill[d->labels[i]]++] = i;
    free(fill);
    p->bmax = p->batch_real < most ? p->batch_real : most;
    p->pool = malloc(most * sizeof *p->pool);
    return p->pool ? QD_OK : oom(p);
}

/* k distinct random members of class c into pool[0..k) (partial
 * Fisher-Yates over the sorted class list, so the draw depends on the rng
 * alone); returns k = min(want, class size). */
static size_t draw_class(dm *p, qd_rng *rng, size_t c, size_t want)
{
    const size_t cnt = p->cls_off[c + 1] - p->cls_off[c];
    const size_t k = want < cnt ? want : cnt;
    memcpy(p->pool, p->cls_idx + p->cls_off[c], cnt * sizeof *p->pool);
    for (size_t i = 0; i < k; i++) {
        size_t j = i + qd_rng_bounded(rng, (uint32_t)(cnt - i));
        size_t t = p->pool[i];
        p->pool[i] = p->pool[j];
        p->pool[j] = t;
    }
    return k;
}

static int start(void *self, const qd_distill_ctx *ctx)
{
    dm *p = self;
    const qd_host *h = p->host;
    free_state(p);
    p->broken = 0;
    int crc = qd_distill_check_ctx(h, ctx, sizeof(qd_distill_ctx), !p->init_random);
    if (crc)
        return crc;
    const qd_dataset *d = ctx->train;
    qd_model *m = ctx->model;
    p->n_params = qd_model_n_params(m);
    p->in_size = qd_model_input_size(m);
    p->classes = qd_model_n_classes(m);
    int rc;
    if ((rc = resolve_embedding(p, m)) || (rc = group_classes(p, d))) {
        free_state(p);
        return rc;
    }
    if (p->bmax < p->batch_real)
        h->log(h, QD_LOG_WARN, "batch_real %zu exceeds the %zu training "
               "images of the largest class; real batches are whole classes",
               p->batch_real, p->bmax);
    p->channels = d->channels;
    p->height = d->height;
    p->width = d->width;
    p->n_train = d->n;
    p->n_syn = p->classes * p->ipc;
    p->n_img = p->n_syn * p->in_size;

    qd_error e;
    const size_t in = p->in_size, emb = p->emb;
    p->images = malloc(p->n_img * sizeof *p->images);
    p->labels = malloc(p->n_syn * sizeof *p->labels);
    p->seeds = malloc(p->classes * sizeof *p->seeds);
    p->w = malloc((p->n_params ? p->n_params : 1) * sizeof *p->w);
    p->xr = malloc(p->bmax * in * sizeof *p->xr);
    p->xr_aug = malloc(p->bmax * in * sizeof *p->xr_aug);
    p->er = malloc(p->bmax * emb * sizeof *p->er);
    p->xs_aug = malloc(p->n_img * sizeof *p->xs_aug);
    p->es = malloc(p->n_syn * emb * sizeof *p->es);
    p->g_es = malloc(p->n_syn * emb * sizeof *p->g_es);
    p->g_xs_aug = malloc(p->n_img * sizeof *p->g_xs_aug);
    p->grad = malloc(p->n_img * sizeof *p->grad);
    p->mean_real = malloc(p->classes * emb * sizeof *p->mean_real);
    p->mean_syn = malloc(p->classes * emb * sizeof *p->mean_syn);
    if (!p->images || !p->labels || !p->seeds || !p->w || !p->xr ||
        !p->xr_aug || !p->er || !p->xs_aug || !p->es || !p->g_es ||
        !p->g_xs_aug || !p->grad || !p->mean_real || !p->mean_syn) {
        free_state(p);
        return oom(p);
    }
    if (qd_sgd_init(&p->sgd, p->n_img, p->momentum, 0.0, &e)) {
        free_state(p);
        return h->error(h, e.code, "start: %s", e.msg);
    }
    if (strcmp(p->augment_cfg, "none") != 0) {
        if (qd_augment_create(p->augment_cfg, p->aug_mode, p->channels,
                              p->height, p->width, &p->aug, &e)) {
            free_state(p);
            return h->node_error(h, cfg_node(h, "augment"), e.code,
                                 "'augment': %s", e.msg);
        }
    }
    for (size_t c = 0; c < p->classes; c++)
        for (size_t i = 0; i < p->ipc; i++)
            p->labels[c * p->ipc + i] = (int32_t)c;
    if (p->init_real) {
        /* distinct images of the class when it has enough, else repeats */
        for (size_t c = 0; c < p->classes; c++)
            for (size_t got = 0; got < p->ipc;) {
                size_t k = draw_class(p, ctx->rng, c, p->ipc - got);
                for (size_t i = 0; i < k; i++, got++)
                    memcpy(p->images + (c * p->ipc + got) * in,
                           d->images + p->pool[i] * in, in * sizeof(double));
            }
    } else {
        for (size_t i = 0; i < p->n_img; i++)
            p->images[i] = qd_rng_normal(ctx->rng);
    }
    p->started = 1;
    return QD_OK;
}

static uint64_t n_iterations(void *self)
{
    const dm *p = self;
    return p->iterations;
}

/* ---- one outer iteration ---- */

static int all_finite(const double *v, size_t n)
{
    int ok = 1;
    for (size_t i = 0; i < n; i++)
        ok &= isfinite(v[i]) != 0;
    return ok;
}

/* Column means of a rows x cols block. */
static void col_mean(const double *a, size_t rows, size_t cols, double *mean)
{
    memset(mean, 0, cols * sizeof *mean);
    for (size_t r = 0; r < rows; r++)
        for (size_t j = 0; j < cols; j++)
            mean[j] += a[r * cols + j];
    const double inv = 1.0 / (double)rows;
    for (size_t j = 0; j < cols; j++)
        mean[j] *= inv;
}

static int iterate(void *self, const qd_distill_ctx *ctx, uint64_t it,
                   qd_distill_metrics *mt)
{
    dm *p = self;
    const qd_host *h = p->host;
    if (!p->started || p->broken)
        return h->error(h, QD_ERR_INVALID, p->broken
                        ? "iterate: the state is incomplete after a failed "
                          "restore"
                        : "iterate called before start");
    if (!ctx || !ctx->model || !ctx->train || ctx->train->n != p->n_train)
        return h->error(h, QD_ERR_INVALID,
                        "iterate: the context differs from the one given to "
                        "start");
    const unsigned long long itn = (unsigned long long)it;
    qd_model *m = ctx->model;
    const qd_dataset *d = ctx->train;
    const size_t in = p->in_size, emb = p->emb, ipc = p->ipc;
    qd_error e;
    int rc;
    qd_model_set_training(m, 0);

    const double *w = ctx->init_params;
    if (p->init_random) {
        if ((rc = qd_model_init_params(m, ctx->init_rng, p->w, &e)))
            return h->error(h, rc, "iteration %llu: %s", itn, e.msg);
        w = p->w;
    }
    /* one augmentation seed per class, shared by its real and synthetic
     * batches (drawn even without augmentation: the real batches then do
     * not depend on the augment setting) */
    for (size_t c = 0; c < p->classes; c++) {
        uint64_t hi = qd_rng_u32(ctx->rng);
        p->seeds[c] = hi << 32 | qd_rng_u32(ctx->rng);
    }

    /* real: mean embedding per class */
    for (size_t c = 0; c < p->classes; c++) {
        const size_t k = draw_class(p, ctx->rng, c, p->batch_real);
        for (size_t i = 0; i < k; i++)
            memcpy(p->xr + i * in, d->images + p->pool[i] * in,
                   in * sizeof *p->xr);
        const double *x = p->xr;
        if (p->aug) {
            if ((rc = qd_augment_apply(p->aug, p->seeds[c], k, p->xr,
                                       p->xr_aug, &e)))
                return h->error(h, rc, "iteration %llu: %s", itn, e.msg);
            x = p->xr_aug;
        }
        if ((rc = qd_model_forward_to(m, w, k, x, p->embedding, p->er, &e)))
            return h->error(h, rc, "iteration %llu: real embedding: %s", itn,
                            e.msg);
        col_mean(p->er, k, emb, p->mean_real + c * emb);
    }

    /* synthetic: embeddings of the whole set in one batch */
    const double *xs = p->images;
    if (p->aug) {
        for (size_t c = 0; c < p->classes; c++)
            if ((rc = qd_augment_apply(p->aug, p->seeds[c], ipc,
                                       p->images + c * ipc * in,
                                       p->xs_aug + c * ipc * in, &e)))
                return h->error(h, rc, "iteration %llu: %s", itn, e.msg);
        xs = p->xs_aug;
    }
    if ((rc = qd_model_forward_to(m, w, p->n_syn, xs, p->embedding, p->es,
                                  &e)))
        return h->error(h, rc, "iteration %llu: synthetic embedding: %s", itn,
                        e.msg);
    double loss = 0.0, real_ss = 0.0;
    for (size_t c = 0; c < p->classes; c++) {
        const double *mr = p->mean_real + c * emb;
        double *ms = p->mean_syn + c * emb;
        col_mean(p->es + c * ipc * emb, ipc, emb, ms);
        for (size_t j = 0; j < emb; j++) {
            const double diff = mr[j] - ms[j];
            loss += diff * diff;
            real_ss += mr[j] * mr[j];
            /* dL/d(e_i) = -2 (mr - ms) / ipc for each image i of class c */
            const double g = -2.0 * diff / (double)ipc;
            for (size_t i = 0; i < ipc; i++)
                p->g_es[(c * ipc + i) * emb + j] = g;
        }
    }
    if (!isfinite(loss)) {
        if (!all_finite(p->mean_real, p->classes * emb))
            return h->error(h, QD_ERR_NUMERIC,
                            "iteration %llu: the embeddings of real images "
                            "at layer '%s' are not finite", itn,
                            p->embedding);
        return h->error(h, QD_ERR_NUMERIC,
                        "iteration %llu: the distribution-matching loss is "
                        "not finite (%g): the synthetic embeddings at layer "
                        "'%s' %s; the images have diverged (try a smaller "
                        "lr_img)", itn, loss, p->embedding,
                        all_finite(p->es, p->n_syn * emb)
                            ? "are too large" : "are not finite");
    }

    double *g_x = p->aug ? p->g_xs_aug : p->grad;
    if ((rc = qd_model_backward_from(m, w, p->n_syn, xs, p->embedding,
                                     p->g_es, g_x, &e)))
        return h->error(h, rc, "iteration %llu: image gradient: %s", itn,
                        e.msg);
    if (p->aug)
        for (size_t c = 0; c < p->classes; c++)
            if ((rc = qd_augment_backward(p->aug, p->seeds[c], ipc,
                                          p->g_xs_aug + c * ipc * in,
                                          p->grad + c * ipc * in, &e)))
                return h->error(h, rc, "iteration %llu: %s", itn, e.msg);
    if (!all_finite(p->grad, p->n_img))
        return h->error(h, QD_ERR_NUMERIC,
                        "iteration %llu: the image gradient is not finite "
                        "(loss %g); the synthetic set was not updated", itn,
                        loss);
    const double gnorm = qd_clip_grad_norm(p->grad, p->n_img, 0.0);
    qd_sgd_step(&p->sgd, p->images, p->grad, p->lr_img);
    if (!all_finite(p->images, p->n_img)) {
        p->broken = 1;
        return h->error(h, QD_ERR_NUMERIC,
                        "iteration %llu: the SGD step made the synthetic set "
                        "non-finite (try a smaller lr_img)", itn);
    }

    if (mt) {
        double ss = 0.0;
        for (size_t i = 0; i < p->n_img; i++)
            ss += p->images[i] * p->images[i];
        mt->loss = loss;
        mt->lr_mean = mt->lr_min = mt->lr_max = NAN;   /* none learned */
        mt->extra[0] = gnorm;
        mt->extra[1] = real_ss > 0.0 ? sqrt(loss / real_ss) : NAN;
        mt->extra[2] = sqrt(real_ss);
        mt->extra[3] = sqrt(ss / (double)p->n_img);
    }
    return QD_OK;
}

/* ---- result, save, restore ---- */

static int result(void *self, qd_synset *out)
{
    dm *p = self;
    const qd_host *h = p->host;
    if (!p->started)
        return h->error(h, QD_ERR_INVALID, "result requested before start");
    qd_error e;
    if (qd_synset_alloc(out, 1, 1, p->n_syn, p->channels, p->height, p->width,
                        p->classes, 0, &e))
        return h->error(h, e.code, "result: %s", e.msg);
    memcpy(out->images, p->images, p->n_img * sizeof *out->images);
    memcpy(out->labels, p->labels, p->n_syn * sizeof *out->labels);
    out->init_mode = p->init_random ? QD_INIT_RANDOM : QD_INIT_FIXED;
    return QD_OK;
}

/* Layout: magic, shape fingerprint (5 x u64), images, SGD step count and
 * momentum buffer (when momentum > 0). */
static int save(void *self, qd_blob *b)
{
    dm *p = self;
    const qd_host *h = p->host;
    if (!p->started)
        return h->error(h, QD_ERR_INVALID, "save called before start");
    const uint64_t fp[5] = {p->n_syn, p->in_size, p->n_train, p->n_params,
                            p->emb};
    qd_blob_put_u32(b, STATE_MAGIC);
    qd_blob_put_u64_array(b, fp, 5);
    qd_blob_put_f64_array(b, p->images, p->n_img);
    qd_blob_put_u64(b, p->sgd.steps);
    if (p->sgd.velocity)
        qd_blob_put_f64_array(b, p->sgd.velocity, p->n_img);
    if (b->failed)
        return h->error(h, QD_ERR_NOMEM, "save: out of memory");
    return QD_OK;
}

static int restore(void *self, const void *data, size_t len)
{
    dm *p = self;
    const qd_host *h = p->host;
    if (!p->started)
        return h->error(h, QD_ERR_INVALID, "restore called before start");
    qd_blob_reader r;
    qd_blob_reader_init(&r, data, len);
    qd_error e;
    uint32_t magic;
    uint64_t fp[5], steps;
    if (qd_blob_get_u32(&r, &magic, &e))
        return h->error(h, QD_ERR_FORMAT, "restore: %s", e.msg);
    if (magic != STATE_MAGIC)
        return h->error(h, QD_ERR_FORMAT,
                        "restore: not a distribution_matching state");
    if (qd_blob_get_u64_array(&r, fp, 5, &e))
        return h->error(h, QD_ERR_FORMAT, "restore: %s", e.msg);
    const uint64_t want[5] = {p->n_syn, p->in_size, p->n_train, p->n_params,
                              p->emb};
    static const char *const names[5] = {"synthetic images", "input size",
                                         "training images", "parameters",
                                         "embedding size"};
    for (int i = 0; i < 5; i++)
        if (fp[i] != want[i])
            return h->error(h, QD_ERR_FORMAT,
                            "restore: the checkpoint has %llu %s, this "
                            "configuration %llu",
                            (unsigned long long)fp[i], names[i],
                            (unsigned long long)want[i]);
    /* From here on a failure leaves a half-written state: mark it. */
    p->broken = 1;
    if (qd_blob_get_f64_array(&r, p->images, p->n_img, &e) ||
        qd_blob_get_u64(&r, &steps, &e) ||
        (p->sgd.velocity &&
         qd_blob_get_f64_array(&r, p->sgd.velocity, p->n_img, &e)) ||
        qd_blob_reader_end(&r, &e))
        return h->error(h, QD_ERR_FORMAT, "restore: %s", e.msg);
    if (!all_finite(p->images, p->n_img))
        return h->error(h, QD_ERR_FORMAT,
                        "restore: the checkpointed synthetic set is not "
                        "finite");
    p->sgd.steps = steps;
    p->broken = 0;
    return QD_OK;
}

/* ---- descriptor ---- */

#define INT_P(name, def, lo, doc)                                           \
    {name, QD_PARAM_INT, QD_PARAM_HAS_MIN, def, lo, 0, NULL, 0, NULL, doc}
#define DBL_P(name, flags, def, lo, hi, doc)                                \
    {name, QD_PARAM_DOUBLE, flags, def, lo, hi, NULL, 0, NULL, doc}
#define MIN_ QD_PARAM_HAS_MIN
#define MAX_ QD_PARAM_HAS_MAX

static const qd_param params[] = {
    INT_P("images_per_class", "1", 1, "synthetic images per class"),
    INT_P("iterations", "2000", 1,
          "outer iterations (DM publishes 20000; 2000 is a few minutes on "
          "MNIST with the quantum LeNet, where the gain flattens)"),
    INT_P("batch_real", "256", 1,
          "real images per class per iteration (drawn without replacement; "
          "capped at the class size)"),
    {"embedding", QD_PARAM_STRING, 0, AUTO_EMBEDDING, 0, 0, NULL, 0, NULL,
     "layer whose output is the embedding; auto = the layer listed before "
     "the output layer; quantum LeNet: f2 = the 64 features before the "
     "circuit, q = the 6 quantum expectations"},
    {"init", QD_PARAM_ENUM, 0, "real", 0, 0, "noise|real", 0, NULL,
     "initial images: real = random training images of each class (as DM), "
     "noise = N(0,1) in normalised pixel space"},
    {"model_init", QD_PARAM_ENUM, 0, "random", 0, 0, "fixed|random", 0, NULL,
     "random: a fresh network every iteration (as DM); fixed: the run's "
     "one initialisation every iteration"},
    DBL_P("lr_img", MIN_, "1.0", 0, 0,
          "SGD learning rate of the synthetic images (DM: 1.0)"),
    DBL_P("momentum", MIN_ | MAX_, "0.5", 0, 1,
          "SGD momentum of the images, in [0, 1) (DM: 0.5)"),
    {"augment", QD_PARAM_STRING, 0, "none", 0, 0, NULL, 0, NULL,
     "differentiable siamese augmentation: none, or ops from crop, flip, "
     "scale, rotate, color, cutout joined by '_' (DM: "
     "color_crop_cutout_flip_scale_rotate)"},
    {"augment_mode", QD_PARAM_ENUM, 0, "single", 0, 0, "single|all", 0, NULL,
     "single: one op of the strategy drawn per class and iteration (DSA's "
     "'S', its default); all: every op in order"},
    {NULL, 0, 0, NULL, 0, 0, NULL, 0, NULL, NULL},
};

static const qd_distiller_vt vtable = {
    .struct_size = sizeof(qd_distiller_vt),
    .create = create,
    .destroy = destroy,
    .start = start,
    .n_iterations = n_iterations,
    .iterate = iterate,
    .result = result,
    .save = save,
    .restore = restore,
    .extra_names = {"grad_norm", "rel_dist", "real_emb_norm", "image_rms"},
};

static const qd_plugin_desc desc = QD_PLUGIN_DESC_INIT(
    QD_KIND_DISTILLER, "distribution_matching", "1.0.0",
    "dataset condensation by distribution matching (Zhao & Bilen 2023): "
    "per-class mean embeddings of real and synthetic images matched under "
    "random networks",
    params, &vtable);

static const qd_plugin_desc *const descs[] = {&desc, NULL};

QD_PLUGIN_EXPORT const qd_plugin_desc *const *qd_plugin_entry(void)
{
    return descs;
}
