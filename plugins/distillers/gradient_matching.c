/* Distiller plugin `gradient_matching`: dataset condensation with gradient
 * matching (Zhao, Mopuri & Bilen 2021, "Dataset Condensation with Gradient
 * Matching", DC), optionally with differentiable siamese augmentation (Zhao
 * & Bilen 2021, DSA).
 *
 * Learned: images_per_class synthetic images per class (labels fixed,
 * class-major); no step sizes, so the host evaluates the set with the
 * evaluate section's training recipe (n_lrs = 0). One outer iteration, as
 * DC's main loop body:
 *   w = a fresh random initialisation (model_init: random) or the fixed one;
 *   repeat outer_loops times:
 *     for every class c: a real batch of class c (batch_real images drawn
 *       without replacement) and the class's synthetic images, augmented
 *       with one seed per class when `augment` is set; the matching loss
 *       D(grad_w CE(syn), grad_w CE(real)) and its image gradient
 *       (qd_grad_match_loss: second-order term by qd_fd_second_order);
 *     one SGD step (lr_img, momentum) on all synthetic images;
 *     unless it was the last outer loop: inner_loops epochs of plain SGD
 *       (lr_net) on w over the synthetic set, batches of batch_train,
 *       augmented when `augment` is set.
 * The reported loss is DC's loss_avg: D summed over classes and outer loops,
 * divided by classes x outer_loops.
 *
 * outer_loops / inner_loops 0 take DC's get_loops(ipc): 1/1 at 1 image per
 * class, 10/50 at 10, 20/25 at 20, 30/20 at 30, 40/15 at 40, 50/10 at 50;
 * other counts use outer = min(ipc, 50) and the inner count of the nearest
 * tabulated ipc.
 *
 * Everything stateful that is not a host stream (the images, the momentum
 * buffer and step count of the image optimiser) is in save(), so a restored
 * instance continues bit-for-bit; every random draw (real batches,
 * augmentation seeds, inner-training order) comes from ctx->rng and every
 * initialisation from ctx->init_rng, which the host checkpoints. Dropout is
 * switched off: the finite-difference second-order term needs a
 * deterministic loss. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/augment.h"
#include "qdistill/distill.h"
#include "qdistill/grad_match.h"
#include "qdistill/train.h"

#define STATE_MAGIC 0x51474d31u   /* "QGM1" */

typedef struct gm {
    const qd_host *host;
    /* configuration */
    size_t ipc, outer, inner, batch_real, batch_train;
    uint64_t iterations;
    int init_real, init_random, distance;
    double lr_img, momentum, lr_net, fd_eps;
    char *augment;
    char aug_mode;
    /* shapes (start) */
    int started, broken;
    size_t classes, channels, height, width, in_size, n_syn, n_img;
    size_t n_params, n_train, max_class;
    size_t *cls_idx, *cls_off, *cls_cnt;   /* training indices by class */
    /* learned state */
    double *images;
    int32_t *labels;
    qd_sgd sgd;
    /* scratch */
    qd_grad_match *gm;
    qd_augment *aug;
    size_t *pick, *order;
    double *w, *grad, *g_w, *xr, *xb, *xa;
    int32_t *yr, *yb;
} gm;

/* ---- lifecycle ---- */

static void free_state(gm *p)
{
    free(p->cls_idx);
    free(p->cls_off);
    free(p->cls_cnt);
    free(p->images);
    free(p->labels);
    qd_sgd_free(&p->sgd);
    qd_grad_match_destroy(p->gm);
    qd_augment_destroy(p->aug);
    free(p->pick);
    free(p->order);
    free(p->w);
    free(p->grad);
    free(p->g_w);
    free(p->xr);
    free(p->xb);
    free(p->xa);
    free(p->yr);
    free(p->yb);
    p->cls_idx = p->cls_off = p->cls_cnt = p->pick = p->order = NULL;
    p->images = p->w = p->grad = p->g_w = p->xr = p->xb = p->xa = NULL;
    p->labels = p->yr = p->yb = NULL;
    p->gm = NULL;
    p->aug = NULL;
    p->started = 0;
}

static void destroy(void *self)
{
    gm *p = self;
    if (!p)
        return;
    free_state(p);
    free(p->augment);
    free(p);
}

static const qd_node *cfg_node(const qd_host *h, const char *key)
{
    return qd_node_get(h->config, key);
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

static int get_real(const qd_host *h, const char *key, double lo, int lo_open,
                    double hi, int hi_open, double *out)
{
    double v = h->get_double(h, key);
    int ok = isfinite(v) && (lo_open ? v > lo : v >= lo) &&
             (hi_open ? v < hi : v <= hi);
    if (!ok)
        return h->node_error(h, cfg_node(h, key), QD_ERR_INVALID,
                             "'%s' must be in %c%g, %g%c, got %g", key,
                             lo_open ? '(' : '[', lo, hi, hi_open ? ')' : ']',
                             v);
    *out = v;
    return QD_OK;
}

/* DC's get_loops, extended to every ipc (see the file comment). */
static void default_loops(size_t ipc, size_t *outer, size_t *inner)
{
    static const size_t tab_ipc[] = {1, 10, 20, 30, 40, 50};
    static const size_t tab_out[] = {1, 10, 20, 30, 40, 50};
    static const size_t tab_in[] = {1, 50, 25, 20, 15, 10};
    size_t best = 0;
    for (size_t k = 1; k < 6; k++) {
        size_t d = ipc > tab_ipc[k] ? ipc - tab_ipc[k] : tab_ipc[k] - ipc;
        size_t db = ipc > tab_ipc[best] ? ipc - tab_ipc[best]
                                        : tab_ipc[best] - ipc;
        if (d < db)
            best = k;
    }
    if (ipc == tab_ipc[best]) {
        *outer = tab_out[best];
        *inner = tab_in[best];
        return;
    }
    *outer = ipc < 50 ? ipc : 50;
    /* between 1 and 10 the nearest tabulated entry with training is 10 */
    *inner = best == 0 ? tab_in[1] : tab_in[best];
}

static int create(const qd_host *h, void **self)
{
    *self = NULL;
    gm *p = calloc(1, sizeof *p);
    if (!p)
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    p->host = h;
    int rc;
    size_t iters = 0, outer = 0, inner = 0;
    if ((rc = get_count(h, "images_per_class", 1, 100000, &p->ipc)) ||
        (rc = get_count(h, "iterations", 1, 1LL << 40, &iters)) ||
        (rc = get_count(h, "outer_loops", 0, 100000, &outer)) ||
        (rc = get_count(h, "inner_loops", 0, 100000, &inner)) ||
        (rc = get_count(h, "batch_real", 1, 1 << 24, &p->batch_real)) ||
        (rc = get_count(h, "batch_train", 1, 1 << 24, &p->batch_train)) ||
        (rc = get_real(h, "lr_img", 0.0, 1, 1e6, 0, &p->lr_img)) ||
        (rc = get_real(h, "momentum", 0.0, 0, 1.0, 1, &p->momentum)) ||
        (rc = get_real(h, "lr_net", 0.0, 1, 1e6, 0, &p->lr_net)) ||
        (rc = get_real(h, "fd_eps", 0.0, 1, 0.1, 1, &p->fd_eps)))
        goto fail;
    p->iterations = iters;
    size_t d_outer, d_inner;
    default_loops(p->ipc, &d_outer, &d_inner);
    p->outer = outer ? outer : d_outer;
    p->inner = inner ? inner : d_inner;
    p->init_real = strcmp(h->get_string(h, "init"), "real") == 0;
    p->init_random = strcmp(h->get_string(h, "model_init"), "random") == 0;
    const char *dist = h->get_string(h, "distance");
    p->distance = strcmp(dist, "mse") == 0      ? QD_GM_MSE
                  : strcmp(dist, "cosine") == 0 ? QD_GM_COSINE
                                                : QD_GM_LAYERWISE;
    p->aug_mode = strcmp(h->get_string(h, "augment_mode"), "all") == 0 ? 'M'
                                                                        : 'S';
    const char *strategy = h->get_string(h, "augment");
    /* Validate the strategy now, so a typo fails before any data loads. */
    qd_augment *probe = NULL;
    qd_error e = {0};
    if (qd_augment_create(strategy, p->aug_mode, 1, 2, 2, &probe, &e)) {
        rc = h->node_error(h, cfg_node(h, "augment"), QD_ERR_INVALID,
                           "'augment': %s", e.msg);
        goto fail;
    }
    qd_augment_destroy(probe);
    p->augment = malloc(strlen(strategy) + 1);
    if (!p->augment) {
        rc = h->error(h, QD_ERR_NOMEM, "out of memory");
        goto fail;
    }
    strcpy(p->augment, strategy);
    if (p->outer * p->inner > 100000000) {
        rc = h->node_error(h, cfg_node(h, "inner_loops"), QD_ERR_INVALID,
                           "outer_loops x inner_loops = %zu x %zu is too "
                           "many per iteration (limit 1e8)", p->outer,
                           p->inner);
        goto fail;
    }
    *self = p;
    return QD_OK;
fail:
    destroy(p);
    return rc;
}

/* ---- start ---- */

static int oom(const gm *p)
{
    return p->host->error(p->host, QD_ERR_NOMEM, "out of memory");
}

/* k distinct training images of class c (all of them when the class has no
 * more than k), drawn from ctx->rng, into x / y; returns the count. */
static size_t class_batch(gm *p, const qd_distill_ctx *ctx, size_t c,
                          size_t k, double *x, int32_t *y)
{
    const size_t cnt = p->cls_cnt[c];
    const size_t *idx = p->cls_idx + p->cls_off[c];
    if (k > cnt)
        k = cnt;
    memcpy(p->pick, idx, cnt * sizeof *p->pick);
    for (size_t i = 0; i < k; i++) {   /* partial Fisher-Yates */
        size_t j = i + qd_rng_bounded(ctx->rng, (uint32_t)(cnt - i));
        size_t t = p->pick[i];
        p->pick[i] = p->pick[j];
        p->pick[j] = t;
        memcpy(x + i * p->in_size, ctx->train->images + p->pick[i] * p->in_size,
               p->in_size * sizeof *x);
        if (y)
            y[i] = (int32_t)c;
    }
    return k;
}

static int start(void *self, const qd_distill_ctx *ctx)
{
    gm *p = self;
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
    if (p->n_params == 0)
        return h->error(h, QD_ERR_INVALID,
                        "start: the model has no trainable parameters, so "
                        "there are no gradients to match");
    p->channels = d->channels;
    p->height = d->height;
    p->width = d->width;
    p->n_train = d->n;
    p->n_syn = p->classes * p->ipc;
    p->n_img = p->n_syn * p->in_size;

    p->cls_idx = malloc(d->n * sizeof *p->cls_idx);
    p->cls_off = calloc(p->classes, sizeof *p->cls_off);
    p->cls_cnt = calloc(p->classes, sizeof *p->cls_cnt);
    if (!p->cls_idx || !p->cls_off || !p->cls_cnt) {
        free_state(p);
        return oom(p);
    }
    for (size_t i = 0; i < d->n; i++) {
        if (d->labels[i] < 0 || (size_t)d->labels[i] >= p->classes) {
            free_state(p);
            return h->error(h, QD_ERR_INVALID, "start: training label %d of "
                            "image %zu is not a class of %zu", d->labels[i],
                            i, p->classes);
        }
        p->cls_cnt[d->labels[i]]++;
    }
    p->max_class = 0;
    for (size_t c = 0, off = 0; c < p->classes; c++) {
        if (p->cls_cnt[c] == 0) {
            free_state(p);
            return h->error(h, QD_ERR_INVALID,
                            "start: gradient matching needs training images "
                            "of every class; class %zu has none", c);
        }
        p->cls_off[c] = off;
        off += p->cls_cnt[c];
        p->max_class = p->cls_cnt[c] > p->max_class ? p->cls_cnt[c]
                                                    : p->max_class;
    }
    {
        size_t *fill = calloc(p->classes, sizeof *fill);
        if (!fill) {
            free_state(p);
            return oom(p);
        }
        for (size_t i = 0; i < d->n; i++) {
            size_t c = (size_t)d->labels[i];
            p->cls_idx[p->cls_off[c] + fill[c]++] = i;
        }
        free(fill);
    }
    const size_t br = p->batch_real < p->max_class ? p->batch_real
                                                   : p->max_class;
    const size_t bt = p->batch_train < p->n_syn ? p->batch_train : p->n_syn;
    p->images = malloc(p->n_img * sizeof *p->images);
    p->labels = malloc(p->n_syn * sizeof *p->labels);
    p->pick = malloc(p->max_class * sizeof *p->pick);
    p->order = malloc(p->n_syn * sizeof *p->order);
    p->w = malloc(p->n_params * sizeof *p->w);
    p->grad = malloc(p->n_img * sizeof *p->grad);
    p->g_w = malloc(p->n_params * sizeof *p->g_w);
    p->xr = malloc(br * p->in_size * sizeof *p->xr);
    p->yr = malloc(br * sizeof *p->yr);
    p->xb = malloc(bt * p->in_size * sizeof *p->xb);
    p->xa = malloc(bt * p->in_size * sizeof *p->xa);
    p->yb = malloc(bt * sizeof *p->yb);
    if (!p->images || !p->labels || !p->pick || !p->order || !p->w ||
        !p->grad || !p->g_w || !p->xr || !p->yr || !p->xb || !p->xa ||
        !p->yb) {
        free_state(p);
        return oom(p);
    }
    qd_error e;
    if (qd_sgd_init(&p->sgd, p->n_img, p->momentum, 0.0, &e) ||
        qd_grad_match_create(m, p->distance, &p->gm, &e) ||
        qd_augment_create(p->augment, p->aug_mode, p->channels, p->height,
                          p->width, &p->aug, &e)) {
        free_state(p);
        return h->error(h, e.code, "start: %s", e.msg);
    }
    for (size_t c = 0; c < p->classes; c++)
        for (size_t i = 0; i < p->ipc; i++)
            p->labels[c * p->ipc + i] = (int32_t)c;
    if (p->init_real) {
        /* distinct real images of each class (with repeats only when the
         * class has fewer than images_per_class) */
        for (size_t c = 0; c < p->classes; c++) {
            double *dst = p->images + c * p->ipc * p->in_size;
            size_t got = 0;
            while (got < p->ipc)
                got += class_batch(p, ctx, c, p->ipc - got,
                                   dst + got * p->in_size, NULL);
        }
    } else {
        for (size_t i = 0; i < p->n_img; i++)
            p->images[i] = qd_rng_normal(ctx->rng);
    }
    size_t lw = 0;
    for (size_t b = 0; b < qd_model_n_blocks(m); b++)
        lw += qd_grad_match_block_rows(p->gm, b) > 0;
    h->log(h, QD_LOG_INFO,
           "%zu images per class, %zu outer x %zu inner loops per iteration, "
           "distance %s (%zu of %zu parameter blocks matched), augment %s",
           p->ipc, p->outer, p->inner, h->get_string(h, "distance"),
           p->distance == QD_GM_LAYERWISE ? lw : qd_model_n_blocks(m),
           qd_model_n_blocks(m), p->augment);
    p->started = 1;
    return QD_OK;
}

static uint64_t n_iterations(void *self)
{
    const gm *p = self;
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

static uint64_t draw_seed(const qd_distill_ctx *ctx)
{
    uint64_t hi = qd_rng_u32(ctx->rng);
    return (hi << 32) | qd_rng_u32(ctx->rng);
}

/* inner_loops epochs of plain SGD on w over the synthetic set (DC trains
 * the network between outer loops, with augmentation under DSA). */
static int train_net(gm *p, const qd_distill_ctx *ctx, uint64_t it)
{
    const qd_host *h = p->host;
    qd_model *m = ctx->model;
    const int aug_on = !qd_augment_is_identity(p->aug);
    const size_t bt = p->batch_train < p->n_syn ? p->batch_train : p->n_syn;
    qd_error e;
    int rc;
    for (size_t ep = 0; ep < p->inner; ep++) {
        for (size_t i = 0; i < p->n_syn; i++)
            p->order[i] = i;
        qd_rng_shuffle(ctx->rng, p->order, p->n_syn);
        for (size_t at = 0; at < p->n_syn; at += bt) {
            const size_t bs = p->n_syn - at < bt ? p->n_syn - at : bt;
            for (size_t b = 0; b < bs; b++) {
                memcpy(p->xb + b * p->in_size,
                       p->images + p->order[at + b] * p->in_size,
                       p->in_size * sizeof *p->xb);
                p->yb[b] = p->labels[p->order[at + b]];
            }
            const double *x = p->xb;
            if (aug_on) {
                if ((rc = qd_augment_apply(p->aug, draw_seed(ctx), bs, p->xb,
                                           p->xa, &e)))
                    return h->error(h, rc, "iteration %llu: %s",
                                    (unsigned long long)it, e.msg);
                x = p->xa;
            }
            double loss;
            if ((rc = qd_model_loss_grad(m, p->w, bs, x, p->yb, &loss, p->g_w,
                                         NULL, NULL, &e)))
                return h->error(h, rc, "iteration %llu: training the network "
                                "on the synthetic set: %s",
                                (unsigned long long)it, e.msg);
            if (!isfinite(loss) || !all_finite(p->g_w, p->n_params))
                return h->error(h, QD_ERR_NUMERIC,
                                "iteration %llu: training the network on the "
                                "synthetic set diverged (loss %g); try a "
                                "smaller lr_net", (unsigned long long)it,
                                loss);
            for (size_t k = 0; k < p->n_params; k++)
                p->w[k] -= p->lr_net * p->g_w[k];
        }
    }
    return QD_OK;
}

static int iterate(void *self, const qd_distill_ctx *ctx, uint64_t it,
                   qd_distill_metrics *mt)
{
    gm *p = self;
    const qd_host *h = p->host;
    if (!p->started || p->broken)
        return h->error(h, QD_ERR_INVALID, p->broken
                        ? "iterate: the state is incomplete after a failed "
                          "restore or a non-finite update"
                        : "iterate called before start");
    if (!ctx || !ctx->model || !ctx->train || ctx->train->n != p->n_train ||
        qd_model_n_params(ctx->model) != p->n_params)
        return h->error(h, QD_ERR_INVALID,
                        "iterate: the context differs from the one given to "
                        "start");
    qd_model *m = ctx->model;
    qd_error e;
    int rc;
    qd_model_set_training(m, 0);

    if (p->init_random) {
        if ((rc = qd_model_init_params(m, ctx->init_rng, p->w, &e)))
            return h->error(h, rc, "iteration %llu: %s",
                            (unsigned long long)it, e.msg);
    } else {
        memcpy(p->w, ctx->init_params, p->n_params * sizeof *p->w);
    }
    const int aug_on = !qd_augment_is_identity(p->aug);
    double loss_sum = 0.0, loss_first = 0.0, gnorm_sum = 0.0, real_ce = 0.0;
    for (size_t ol = 0; ol < p->outer; ol++) {
        double ce_sum = 0.0;
        for (size_t c = 0; c < p->classes; c++) {
            const size_t nr = class_batch(p, ctx, c, p->batch_real, p->xr,
                                          p->yr);
            const uint64_t seed = aug_on ? draw_seed(ctx) : 0;
            const size_t off = c * p->ipc;
            double D, ce;
            rc = qd_grad_match_target(p->gm, p->w, nr, p->xr, p->yr,
                                      p->aug, seed, &ce, &e);
            if (!rc)
                rc = qd_grad_match_loss(p->gm, p->w, p->ipc,
                                        p->images + off * p->in_size,
                                        p->labels + off, p->aug, seed,
                                        p->fd_eps, &D,
                                        p->grad + off * p->in_size, &e);
            if (rc)
                return h->error(h, rc, "iteration %llu, outer loop %zu, class "
                                "%zu: %s%s", (unsigned long long)it, ol, c,
                                e.msg, rc == QD_ERR_NUMERIC
                                ? " (the synthetic images or the network "
                                  "have diverged: try a smaller lr_img or "
                                  "lr_net)" : "");
            loss_sum += D;
            ce_sum += ce;
            if (ol == 0)
                loss_first += D;
        }
        real_ce = ce_sum / (double)p->classes;
        double gn = 0.0;
        for (size_t i = 0; i < p->n_img; i++)
            gn += p->grad[i] * p->grad[i];
        gnorm_sum += sqrt(gn);
        qd_sgd_step(&p->sgd, p->images, p->grad, p->lr_img);
        if (!all_finite(p->images, p->n_img)) {
            p->broken = 1;
            return h->error(h, QD_ERR_NUMERIC,
                            "iteration %llu, outer loop %zu: the image "
                            "update made the synthetic set non-finite; try "
                            "a smaller lr_img", (unsigned long long)it, ol);
        }
        if (ol + 1 == p->outer)
            break;
        if ((rc = train_net(p, ctx, it)))
            return rc;
    }
    if (mt) {
        double ss = 0.0;
        for (size_t i = 0; i < p->n_img; i++)
            ss += p->images[i] * p->images[i];
        mt->loss = loss_sum / (double)(p->classes * p->outer);
        mt->lr_mean = mt->lr_min = mt->lr_max = NAN;   /* none learned */
        mt->extra[0] = loss_first / (double)p->classes;
        mt->extra[1] = gnorm_sum / (double)p->outer;
        mt->extra[2] = real_ce;
        mt->extra[3] = sqrt(ss / (double)p->n_img);
    }
    return QD_OK;
}

/* ---- result, save, restore ---- */

static int result(void *self, qd_synset *out)
{
    gm *p = self;
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

#define N_FP 5

/* Layout: magic, shape fingerprint, images, SGD step count, momentum
 * buffer (when momentum > 0). */
static int save(void *self, qd_blob *b)
{
    gm *p = self;
    const qd_host *h = p->host;
    if (!p->started)
        return h->error(h, QD_ERR_INVALID, "save called before start");
    const uint64_t fp[N_FP] = {p->n_syn, p->in_size, p->n_train, p->n_params,
                               p->sgd.velocity != NULL};
    qd_blob_put_u32(b, STATE_MAGIC);
    qd_blob_put_u64_array(b, fp, N_FP);
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
    gm *p = self;
    const qd_host *h = p->host;
    if (!p->started)
        return h->error(h, QD_ERR_INVALID, "restore called before start");
    qd_blob_reader r;
    qd_blob_reader_init(&r, data, len);
    qd_error e;
    uint32_t magic;
    uint64_t fp[N_FP], steps;
    if (qd_blob_get_u32(&r, &magic, &e))
        return h->error(h, QD_ERR_FORMAT, "restore: %s", e.msg);
    if (magic != STATE_MAGIC)
        return h->error(h, QD_ERR_FORMAT,
                        "restore: not a gradient_matching state");
    if (qd_blob_get_u64_array(&r, fp, N_FP, &e))
        return h->error(h, QD_ERR_FORMAT, "restore: %s", e.msg);
    const uint64_t want[N_FP] = {p->n_syn, p->in_size, p->n_train,
                                 p->n_params, p->sgd.velocity != NULL};
    static const char *const names[N_FP] = {
        "synthetic images", "input size", "training images", "parameters",
        "momentum buffers (0 = momentum 0)"};
    for (int i = 0; i < N_FP; i++)
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
    if (!all_finite(p->images, p->n_img) ||
        (p->sgd.velocity && !all_finite(p->sgd.velocity, p->n_img)))
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
    {"init", QD_PARAM_ENUM, 0, "real", 0, 0, "noise|real", 0, NULL,
     "initial images: real = random training images of each class (as DSA, "
     "DM, MTT), noise = N(0,1) in normalised pixel space (DC's default)"},
    {"model_init", QD_PARAM_ENUM, 0, "random", 0, 0, "random|fixed", 0, NULL,
     "random: a fresh initialisation every iteration (DC); fixed: the run's "
     "one initialisation every iteration"},
    INT_P("iterations", "1000", 1, "outer iterations (DC: 1000)"),
    INT_P("outer_loops", "0", 0,
          "image updates per iteration, each followed by network training; "
          "0 = DC's get_loops(images_per_class) (1 at 1, 10 at 10, ...)"),
    INT_P("inner_loops", "0", 0,
          "epochs of network training on the synthetic set between image "
          "updates; 0 = DC's get_loops (1 at 1, 50 at 10, ...)"),
    INT_P("batch_real", "256", 1,
          "real images per class per matching step (all of the class when "
          "it has fewer)"),
    INT_P("batch_train", "256", 1,
          "minibatch of the network training on the synthetic set"),
    DBL_P("lr_img", MIN_, "0.1", 0, 0,
          "SGD learning rate of the synthetic images (DC: 0.1)"),
    DBL_P("momentum", MIN_ | MAX_, "0.5", 0, 1,
          "SGD momentum of the synthetic images, in [0, 1) (DC: 0.5)"),
    DBL_P("lr_net", MIN_, "0.01", 0, 0,
          "SGD learning rate of the network trained on the synthetic set "
          "between outer loops (DC: 0.01)"),
    {"distance", QD_PARAM_ENUM, 0, "layerwise", 0, 0, "layerwise|mse|cosine",
     0, NULL,
     "gradient distance: layerwise = DC's per-output-row 1 - cos summed "
     "over weight blocks; mse = squared L2; cosine = 1 - cos of the whole "
     "gradient"},
    {"augment", QD_PARAM_STRING, 0, "none", 0, 0, NULL, 0, NULL,
     "differentiable siamese augmentation: '_'-joined ops from crop, flip, "
     "scale, rotate, color, cutout (DSA: color_crop_cutout_flip_scale_"
     "rotate), or none"},
    {"augment_mode", QD_PARAM_ENUM, 0, "single", 0, 0, "single|all", 0, NULL,
     "single: one op drawn per batch (DSA's 'S'); all: every op in order"},
    DBL_P("fd_eps", MIN_ | MAX_, "1e-6", 0, 0.1,
          "relative finite-difference step of the second-order term (1e-6: "
          "on hybrid quantum models its O(eps^2) error is ~1e-7 there, ~1e-5 "
          "at 1e-5)"),
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
    .extra_names = {"loss_first_outer", "grad_norm", "real_ce", "image_rms"},
};

static const qd_plugin_desc desc = QD_PLUGIN_DESC_INIT(
    QD_KIND_DISTILLER, "gradient_matching", "1.0.0",
    "dataset condensation by gradient matching (Zhao et al. 2021): per-class "
    "matching of parameter gradients on real and synthetic batches, with "
    "optional differentiable siamese augmentation",
    params, &vtable);

static const qd_plugin_desc *const descs[] = {&desc, NULL};

QD_PLUGIN_EXPORT const qd_plugin_desc *const *qd_plugin_entry(void)
{
    return descs;
}
