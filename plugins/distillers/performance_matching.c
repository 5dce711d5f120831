/* Distiller plugin `performance_matching`: dataset distillation by
 * performance matching (Wang et al. 2018, "Dataset Distillation"), as used
 * by Phalak, Li & Ghosh (2025) on a quantum LeNet.
 *
 * Learned: `steps` synthetic batches of classes x images_per_class images
 * (labels fixed, class-major) and T = steps * epochs inner step sizes. One
 * outer iteration:
 *   1. w_0 = the fixed initialisation, or models_per_iteration fresh ones;
 *   2. unroll w_{t+1} = w_t - lr_t grad l(x_{t mod steps}; w_t), t < T;
 *   3. outer loss = cross-entropy of w_T on a batch of real images;
 *   4. meta-gradient w.r.t. images and step sizes through all T updates
 *      (qd_unroll_backward: exact reverse mode, second-order products by
 *      central differences), averaged over the models;
 *   5. optional global-norm clipping, then one Adam step on [images; raw lrs].
 *
 * Step sizes are parametrised so they stay in range whatever Adam does:
 *   lr = lr_min + softplus(raw)                          (lr_max == 0)
 *   lr = lr_min + (lr_max - lr_min) * sigmoid(raw)       (lr_max  > 0)
 * so a learned lr is always > lr_min >= 0.
 *
 * Real batches follow epochs over the training set: the set is reshuffled
 * (ctx->rng) at the start of every epoch and cut into ceil(n / batch_size)
 * batches, the last one partial, as a PyTorch DataLoader does. The Adam lr
 * is lr * decay_factor^floor(epoch / decay_epochs) with the fractional epoch
 * it / ceil(n / batch_size).
 *
 * Everything stateful (images, raw lrs, Adam moments and step count, the
 * epoch permutation, the chance-level counter) is in save(), so a restored
 * instance continues bit-for-bit; the host checkpoints ctx->rng and
 * ctx->init_rng itself. Dropout is switched off while distilling: the
 * finite-difference second-order terms need a deterministic loss. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/distill.h"
#include "qdistill/train.h"

#define STATE_MAGIC 0x51504d31u   /* "QPM1" */
#define CHANCE_TOL 1e-3
#define CHANCE_RUN 50
#define ADAM_EPS 1e-8

typedef struct pm {
    const qd_host *host;
    /* configuration */
    size_t ipc, steps, epochs, models;
    int init_real, init_random;
    double lr_init, lr, beta1, beta2, outer_epochs, decay_epochs;
    double decay_factor, lr_min, lr_max, clip_grad, fd_eps;
    size_t batch_size;
    uint64_t iterations;            /* 0: from outer_epochs */
    /* shapes (start) */
    int started, broken;
    size_t classes, channels, height, width, in_size, per_step, T;
    size_t n_img, n_opt, n_params, n_train, batch, per_epoch;
    uint64_t n_iter;
    /* learned state: params = [images; raw lrs] */
    double *params, *grad;
    int32_t *labels;
    qd_adam adam;
    size_t *perm;                   /* epoch order of the training set */
    int64_t perm_epoch;             /* epoch perm was shuffled for, -1 none */
    uint64_t chance_run;            /* consecutive iterations at chance */
    /* scratch */
    qd_unroll *unroll;
    double *lrs, *g_lrs, *w0, *g_w, *xb, *logits;
    int32_t *yb;
} pm;

/* ---- step-size parametrisation ---- */

static double softplus(double r)
{
    return r > 30.0 ? r : log1p(exp(r));
}

static double sigmoid(double r)
{
    if (r >= 0.0)
        return 1.0 / (1.0 + exp(-r));
    double e = exp(r);
    return e / (1.0 + e);
}

static double lr_of(const pm *p, double raw)
{
    if (p->lr_max > 0.0)
        return p->lr_min + (p->lr_max - p->lr_min) * sigmoid(raw);
    return p->lr_min + softplus(raw);
}

/* d lr / d raw */
static double dlr_of(const pm *p, double raw)
{
    double s = sigmoid(raw);
    if (p->lr_max > 0.0)
        return (p->lr_max - p->lr_min) * s * (1.0 - s);
    return s;
}

static double raw_of(const pm *p, double lr)
{
    if (p->lr_max > 0.0) {
        double q = (lr - p->lr_min) / (p->lr_max - p->lr_min);
        return log(q / (1.0 - q));
    }
    double d = lr - p->lr_min;
    return d > 30.0 ? d : log(expm1(d));
}

/* ---- lifecycle ---- */

static void free_state(pm *p)
{
    free(p->params);
    free(p->grad);
    free(p->labels);
    qd_adam_free(&p->adam);
    free(p->perm);
    qd_unroll_destroy(p->unroll);
    free(p->lrs);
    free(p->g_lrs);
    free(p->w0);
    free(p->g_w);
    free(p->xb);
    free(p->logits);
    free(p->yb);
    p->params = p->grad = p->lrs = p->g_lrs = p->w0 = p->g_w = p->xb = NULL;
    p->logits = NULL;
    p->labels = p->yb = NULL;
    p->perm = NULL;
    p->unroll = NULL;
    p->started = 0;
}

static void destroy(void *self)
{
    pm *p = self;
    if (!p)
        return;
    free_state(p);
    free(p);
}

static const qd_node *cfg_node(const qd_host *h, const char *key)
{
    return qd_node_get(h->config, key);
}

static int bad(const qd_host *h, const char *key, const char *fmt, double v)
{
    return h->node_error(h, cfg_node(h, key), QD_ERR_INVALID, fmt, key, v);
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
    pm *p = calloc(1, sizeof *p);
    if (!p)
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    p->host = h;
    p->perm_epoch = -1;
    int rc;
    size_t iters = 0;
    if ((rc = get_count(h, "images_per_class", 1, 100000, &p->ipc)) ||
        (rc = get_count(h, "steps", 1, 100000, &p->steps)) ||
        (rc = get_count(h, "epochs", 1, 100000, &p->epochs)) ||
        (rc = get_count(h, "models_per_iteration", 1, 100000, &p->models)) ||
        (rc = get_count(h, "batch_size", 1, 1 << 24, &p->batch_size)) ||
        (rc = get_count(h, "iterations", 0, 1LL << 40, &iters)))
        goto fail;
    p->iterations = iters;
    p->init_real = strcmp(h->get_string(h, "init"), "real") == 0;
    p->init_random = strcmp(h->get_string(h, "model_init"), "random") == 0;
    p->lr_init = h->get_double(h, "lr_init");
    p->lr = h->get_double(h, "lr");
    p->beta1 = h->get_double(h, "beta1");
    p->beta2 = h->get_double(h, "beta2");
    p->outer_epochs = h->get_double(h, "outer_epochs");
    p->decay_epochs = h->get_double(h, "decay_epochs");
    p->decay_factor = h->get_double(h, "decay_factor");
    p->lr_min = h->get_double(h, "lr_min");
    p->lr_max = h->get_double(h, "lr_max");
    p->clip_grad = h->get_double(h, "clip_grad");
    p->fd_eps = h->get_double(h, "fd_eps");

    rc = QD_ERR_INVALID;
    if (!(p->lr > 0.0 && isfinite(p->lr))) {
        bad(h, "lr", "'%s' must be a finite number > 0, got %g", p->lr);
        goto fail;
    }
    if (!(p->beta1 >= 0.0 && p->beta1 < 1.0)) {
        bad(h, "beta1", "'%s' must be in [0, 1), got %g", p->beta1);
        goto fail;
    }
    if (!(p->beta2 >= 0.0 && p->beta2 < 1.0)) {
        bad(h, "beta2", "'%s' must be in [0, 1), got %g", p->beta2);
        goto fail;
    }
    if (!(p->outer_epochs > 0.0 && p->outer_epochs <= 1e9)) {
        bad(h, "outer_epochs", "'%s' must be in (0, 1e9], got %g",
            p->outer_epochs);
        goto fail;
    }
    if (!(p->decay_epochs > 0.0 && isfinite(p->decay_epochs))) {
        bad(h, "decay_epochs", "'%s' must be a finite number > 0, got %g",
            p->decay_epochs);
        goto fail;
    }
    if (!(p->decay_factor > 0.0 && p->decay_factor <= 1.0)) {
        bad(h, "decay_factor", "'%s' must be in (0, 1], got %g",
            p->decay_factor);
        goto fail;
    }
    if (!(p->lr_min >= 0.0 && isfinite(p->lr_min))) {
        bad(h, "lr_min", "'%s' must be a finite number >= 0, got %g",
            p->lr_min);
        goto fail;
    }
    if (!(p->lr_max >= 0.0 && isfinite(p->lr_max)) ||
        (p->lr_max > 0.0 && p->lr_max <= p->lr_min)) {
        bad(h, "lr_max", "'%s' must be 0 (unbounded) or a finite number "
            "> lr_min, got %g", p->lr_max);
        goto fail;
    }
    if (!(p->lr_init > p->lr_min && isfinite(p->lr_init)) ||
        (p->lr_max > 0.0 && !(p->lr_init < p->lr_max))) {
        h->node_error(h, cfg_node(h, "lr_init"), QD_ERR_INVALID,
                      "'lr_init' (%g) must lie strictly inside the step-size "
                      "range (lr_min, lr_max) = (%g, %s)", p->lr_init,
                      p->lr_min, p->lr_max > 0.0 ? "lr_max" : "inf");
        goto fail;
    }
    if (!(p->clip_grad >= 0.0 && isfinite(p->clip_grad))) {
        bad(h, "clip_grad", "'%s' must be a finite number >= 0, got %g",
            p->clip_grad);
        goto fail;
    }
    if (!(p->fd_eps > 0.0 && p->fd_eps < 1e-1)) {
        bad(h, "fd_eps", "'%s' must be in (0, 0.1), got %g", p->fd_eps);
        goto fail;
    }
    if (p->steps * p->epochs > 1000000) {
        h->error(h, QD_ERR_INVALID,
                 "steps x epochs = %zu inner updates is too many (limit 1e6)",
                 p->steps * p->epochs);
        goto fail;
    }
    *self = p;
    return QD_OK;
fail:
    destroy(p);
    return rc;
}

/* ---- start ---- */

static int oom(const pm *p)
{
    return p->host->error(p->host, QD_ERR_NOMEM, "out of memory");
}

/* Real images of each class: steps * ipc distinct draws per class when the
 * class has that many, else with replacement. */
static int init_real_images(pm *p, const qd_distill_ctx *ctx)
{
    const qd_dataset *d = ctx->train;
    const size_t need = p->steps * p->ipc;
    size_t *idx = malloc(d->n * sizeof *idx);
    if (!idx)
        return oom(p);
    for (size_t c = 0; c < p->classes; c++) {
        size_t cnt = 0;
        for (size_t i = 0; i < d->n; i++)
            if ((size_t)d->labels[i] == c)
                idx[cnt++] = i;
        if (cnt == 0) {
            free(idx);
            return p->host->error(p->host, QD_ERR_INVALID,
                                  "init: real needs training images of every "
                                  "class; class %zu has none", c);
        }
        for (size_t k = 0; k < need; k++) {
            size_t pick;
            if (cnt >= need) {   /* partial Fisher-Yates: distinct images */
                size_t j = k + qd_rng_bounded(ctx->rng, (uint32_t)(cnt - k));
                size_t t = idx[k];
                idx[k] = idx[j];
                idx[j] = t;
                pick = idx[k];
            } else {
                pick = idx[qd_rng_bounded(ctx->rng, (uint32_t)cnt)];
            }
            size_t s = k / p->ipc, i = k % p->ipc;
            size_t slot = s * p->per_step + c * p->ipc + i;
            memcpy(p->params + slot * p->in_size,
                   d->images + pick * p->in_size,
                   p->in_size * sizeof *p->params);
        }
    }
    free(idx);
    return QD_OK;
}

static int start(void *self, const qd_distill_ctx *ctx)
{
    pm *p = self;
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
    p->channels = d->channels;
    p->height = d->height;
    p->width = d->width;
    p->per_step = p->classes * p->ipc;
    p->T = p->steps * p->epochs;
    p->n_img = p->steps * p->per_step * p->in_size;
    p->n_opt = p->n_img + p->T;
    p->n_train = d->n;
    p->batch = p->batch_size < d->n ? p->batch_size : d->n;
    if (p->batch < p->batch_size)
        h->log(h, QD_LOG_WARN, "batch_size %zu exceeds the %zu training "
               "images; using batches of %zu", p->batch_size, d->n, p->batch);
    p->per_epoch = (d->n + p->batch - 1) / p->batch;
    if (p->iterations > 0) {
        p->n_iter = p->iterations;
    } else {
        double it = ceil(p->outer_epochs * (double)p->per_epoch);
        p->n_iter = it > 1e15 ? (uint64_t)1e15 : (uint64_t)it;
        if (p->n_iter == 0)
            p->n_iter = 1;
    }

    qd_error e;
    p->params = malloc(p->n_opt * sizeof *p->params);
    p->grad = malloc(p->n_opt * sizeof *p->grad);
    p->labels = malloc(p->steps * p->per_step * sizeof *p->labels);
    p->perm = malloc(d->n * sizeof *p->perm);
    p->lrs = malloc(p->T * sizeof *p->lrs);
    p->g_lrs = malloc(p->T * sizeof *p->g_lrs);
    p->w0 = malloc(p->n_params * sizeof *p->w0);
    p->g_w = malloc(p->n_params * sizeof *p->g_w);
    p->xb = malloc(p->batch * p->in_size * sizeof *p->xb);
    p->yb = malloc(p->batch * sizeof *p->yb);
    p->logits = malloc(p->batch * p->classes * sizeof *p->logits);
    if (!p->params || !p->grad || !p->labels || !p->perm || !p->lrs ||
        !p->g_lrs || !p->w0 || !p->g_w || !p->xb || !p->yb || !p->logits) {
        free_state(p);
        return oom(p);
    }
    if (qd_adam_init(&p->adam, p->n_opt, p->beta1, p->beta2, ADAM_EPS, 0.0,
                     &e) ||
        qd_unroll_create(m, p->T, p->per_step, &p->unroll, &e)) {
        free_state(p);
        return h->error(h, e.code, "start: %s", e.msg);
    }
    for (size_t s = 0; s < p->steps; s++)
        for (size_t c = 0; c < p->classes; c++)
            for (size_t i = 0; i < p->ipc; i++)
                p->labels[s * p->per_step + c * p->ipc + i] = (int32_t)c;
    for (size_t i = 0; i < d->n; i++)
        p->perm[i] = i;
    p->perm_epoch = -1;
    p->chance_run = 0;

    int rc;
    if (p->init_real) {
        if ((rc = init_real_images(p, ctx))) {
            free_state(p);
            return rc;
        }
    } else {
        for (size_t i = 0; i < p->n_img; i++)
            p->params[i] = qd_rng_normal(ctx->rng);
    }
    const double raw0 = raw_of(p, p->lr_init);
    for (size_t t = 0; t < p->T; t++)
        p->params[p->n_img + t] = raw0;
    p->started = 1;
    return QD_OK;
}

static uint64_t n_iterations(void *self)
{
    const pm *p = self;
    return p->started ? p->n_iter : p->iterations;
}

/* ---- one outer iteration ---- */

static int all_finite(const double *v, size_t n)
{
    int ok = 1;
    for (size_t i = 0; i < n; i++)
        ok &= isfinite(v[i]) != 0;
    return ok;
}

/* The real batch of iteration `it` into xb/yb; returns its size. */
static size_t real_batch(pm *p, const qd_distill_ctx *ctx, uint64_t it)
{
    const qd_dataset *d = ctx->train;
    int64_t epoch = (int64_t)(it / p->per_epoch);
    if (epoch != p->perm_epoch) {
        qd_rng_shuffle(ctx->rng, p->perm, p->n_train);
        p->perm_epoch = epoch;
    }
    size_t pos = (size_t)(it % p->per_epoch) * p->batch;
    size_t bs = p->n_train - pos < p->batch ? p->n_train - pos : p->batch;
    for (size_t b = 0; b < bs; b++) {
        size_t j = p->perm[pos + b];
        memcpy(p->xb + b * p->in_size, d->images + j * p->in_size,
               p->in_size * sizeof *p->xb);
        p->yb[b] = d->labels[j];
    }
    return bs;
}

static double outer_lr(const pm *p, uint64_t it)
{
    double epoch = (double)it / (double)p->per_epoch;
    double k = floor(epoch / p->decay_epochs + 1e-12);
    return p->lr * pow(p->decay_factor, k);
}

static int iterate(void *self, const qd_distill_ctx *ctx, uint64_t it,
                   qd_distill_metrics *mt)
{
    pm *p = self;
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
    qd_model *m = ctx->model;
    qd_error e;
    int rc;
    qd_model_set_training(m, 0);

    const size_t bs = real_batch(p, ctx, it);
    const double *raw = p->params + p->n_img;
    for (size_t t = 0; t < p->T; t++)
        p->lrs[t] = lr_of(p, raw[t]);
    memset(p->grad, 0, p->n_img * sizeof *p->grad);
    memset(p->g_lrs, 0, p->T * sizeof *p->g_lrs);

    double loss_sum = 0.0, acc_sum = 0.0;
    for (size_t k = 0; k < p->models; k++) {
        const double *w0 = ctx->init_params;
        if (p->init_random) {
            if ((rc = qd_model_init_params(m, ctx->init_rng, p->w0, &e)))
                return h->error(h, rc, "iteration %llu: %s",
                                (unsigned long long)it, e.msg);
            w0 = p->w0;
        }
        const double *wT;
        if ((rc = qd_unroll_forward(p->unroll, w0, p->steps, p->per_step,
                                    p->params, p->labels, p->lrs, &wT, &e)))
            return rc == QD_ERR_NUMERIC
                       ? h->error(h, rc, "iteration %llu: the inner training "
                                  "on the synthetic set diverged (not "
                                  "finite): %s; try a smaller lr_init or an "
                                  "upper bound lr_max",
                                  (unsigned long long)it, e.msg)
                       : h->error(h, rc, "iteration %llu: %s",
                                  (unsigned long long)it, e.msg);
        double loss;
        rc = qd_model_loss_grad(m, wT, bs, p->xb, p->yb, &loss, p->g_w, NULL,
                                p->logits, &e);
        if (rc == QD_OK && !isfinite(loss))
            rc = qd_error_set(&e, QD_ERR_NUMERIC, "loss is %g", loss);
        if (rc)
            return h->error(h, rc == QD_ERR_NUMERIC ? QD_ERR_NUMERIC : rc,
                            "iteration %llu: the outer loss (real batch on "
                            "the trained model w_T) is not finite: %s; the "
                            "learned step sizes or images have diverged "
                            "(try a smaller lr or lr_init, lr_max, or "
                            "clip_grad)", (unsigned long long)it, e.msg);
        size_t right = 0;
        for (size_t b = 0; b < bs; b++) {
            const double *z = p->logits + b * p->classes;
            size_t best = 0;
            for (size_t c = 1; c < p->classes; c++)
                if (z[c] > z[best])
                    best = c;
            right += best == (size_t)p->yb[b];
        }
        loss_sum += loss;
        acc_sum += (double)right / (double)bs;
        if ((rc = qd_unroll_backward(p->unroll, p->g_w, p->grad, p->g_lrs,
                                     NULL, p->fd_eps, &e)))
            return h->error(h, rc, "iteration %llu: meta-gradient: %s",
                            (unsigned long long)it, e.msg);
    }
    const double inv = 1.0 / (double)p->models;
    for (size_t i = 0; i < p->n_img; i++)
        p->grad[i] *= inv;
    for (size_t t = 0; t < p->T; t++)
        p->grad[p->n_img + t] = p->g_lrs[t] * inv * dlr_of(p, raw[t]);
    if (!all_finite(p->grad, p->n_opt))
        return h->error(h, QD_ERR_NUMERIC,
                        "iteration %llu: the meta-gradient is not finite "
                        "(%s); the synthetic set was not updated",
                        (unsigned long long)it,
                        all_finite(p->grad, p->n_img) ? "step sizes"
                                                      : "images");

    const double gnorm = qd_clip_grad_norm(p->grad, p->n_opt, p->clip_grad);
    const double alr = outer_lr(p, it);
    qd_adam_step(&p->adam, p->params, p->grad, alr);
    if (!all_finite(p->params, p->n_opt)) {
        p->broken = 1;
        return h->error(h, QD_ERR_NUMERIC,
                        "iteration %llu: the Adam step made the synthetic set "
                        "non-finite", (unsigned long long)it);
    }

    const double loss = loss_sum * inv;
    if (fabs(loss - log((double)p->classes)) < CHANCE_TOL) {
        if (++p->chance_run == CHANCE_RUN)
            h->log(h, QD_LOG_WARN,
                   "iteration %llu: the outer loss has sat at chance level "
                   "ln(%zu) = %.4f for %d consecutive iterations: the "
                   "trained model predicts uniformly (step sizes collapsed "
                   "or images saturated); consider init: real, a smaller lr, "
                   "lr_min > 0 or clip_grad", (unsigned long long)it,
                   p->classes, log((double)p->classes), CHANCE_RUN);
    } else {
        p->chance_run = 0;
    }

    if (mt) {
        double lo = p->lrs[0], hi = p->lrs[0], sum = 0.0;
        for (size_t t = 0; t < p->T; t++) {
            lo = p->lrs[t] < lo ? p->lrs[t] : lo;
            hi = p->lrs[t] > hi ? p->lrs[t] : hi;
            sum += p->lrs[t];
        }
        double ss = 0.0;
        for (size_t i = 0; i < p->n_img; i++)
            ss += p->params[i] * p->params[i];
        mt->loss = loss;
        mt->lr_mean = sum / (double)p->T;
        mt->lr_min = lo;
        mt->lr_max = hi;
        mt->extra[0] = gnorm;
        mt->extra[1] = acc_sum * inv;
        mt->extra[2] = alr;
        mt->extra[3] = sqrt(ss / (double)p->n_img);
    }
    return QD_OK;
}

/* ---- result, save, restore ---- */

static int result(void *self, qd_synset *out)
{
    pm *p = self;
    const qd_host *h = p->host;
    if (!p->started)
        return h->error(h, QD_ERR_INVALID, "result requested before start");
    qd_error e;
    if (qd_synset_alloc(out, p->steps, p->epochs, p->per_step, p->channels,
                        p->height, p->width, p->classes, p->T, &e))
        return h->error(h, e.code, "result: %s", e.msg);
    memcpy(out->images, p->params, p->n_img * sizeof *out->images);
    memcpy(out->labels, p->labels,
           p->steps * p->per_step * sizeof *out->labels);
    for (size_t t = 0; t < p->T; t++)
        out->lrs[t] = lr_of(p, p->params[p->n_img + t]);
    out->init_mode = p->init_random ? QD_INIT_RANDOM : QD_INIT_FIXED;
    return QD_OK;
}

/* Layout: magic, shape fingerprint (6 x u64), params, Adam t/m/v, epoch of
 * the permutation and the permutation, chance counter. */
static int save(void *self, qd_blob *b)
{
    pm *p = self;
    const qd_host *h = p->host;
    if (!p->started)
        return h->error(h, QD_ERR_INVALID, "save called before start");
    const uint64_t fp[6] = {p->steps, p->per_step, p->in_size, p->T,
                            p->n_train, p->n_params};
    qd_blob_put_u32(b, STATE_MAGIC);
    qd_blob_put_u64_array(b, fp, 6);
    qd_blob_put_f64_array(b, p->params, p->n_opt);
    qd_blob_put_u64(b, p->adam.t);
    qd_blob_put_f64_array(b, p->adam.m, p->n_opt);
    qd_blob_put_f64_array(b, p->adam.v, p->n_opt);
    qd_blob_put_i64(b, p->perm_epoch);
    for (size_t i = 0; i < p->n_train; i++)   /* size_t may not be 64-bit */
        qd_blob_put_u32(b, (uint32_t)p->perm[i]);
    qd_blob_put_u64(b, p->chance_run);
    if (b->failed)
        return h->error(h, QD_ERR_NOMEM, "save: out of memory");
    return QD_OK;
}

static int restore(void *self, const void *data, size_t len)
{
    pm *p = self;
    const qd_host *h = p->host;
    if (!p->started)
        return h->error(h, QD_ERR_INVALID, "restore called before start");
    qd_blob_reader r;
    qd_blob_reader_init(&r, data, len);
    qd_error e;
    uint32_t magic;
    uint64_t fp[6], t, chance;
    int64_t pe;
    if (qd_blob_get_u32(&r, &magic, &e))
        return h->error(h, QD_ERR_FORMAT, "restore: %s", e.msg);
    if (magic != STATE_MAGIC)
        return h->error(h, QD_ERR_FORMAT,
                        "restore: not a performance_matching state");
    if (qd_blob_get_u64_array(&r, fp, 6, &e))
        return h->error(h, QD_ERR_FORMAT, "restore: %s", e.msg);
    const uint64_t want[6] = {p->steps, p->per_step, p->in_size, p->T,
                              p->n_train, p->n_params};
    static const char *const names[6] = {"steps", "images per step",
                                         "input size", "inner updates",
                                         "training images", "parameters"};
    for (int i = 0; i < 6; i++)
        if (fp[i] != want[i])
            return h->error(h, QD_ERR_FORMAT,
                            "restore: the checkpoint has %llu %s, this "
                            "configuration %llu",
                            (unsigned long long)fp[i], names[i],
                            (unsigned long long)want[i]);
    /* From here on a failure leaves a half-written state: mark it. */
    p->broken = 1;
    if (qd_blob_get_f64_array(&r, p->params, p->n_opt, &e) ||
        qd_blob_get_u64(&r, &t, &e) ||
        qd_blob_get_f64_array(&r, p->adam.m, p->n_opt, &e) ||
        qd_blob_get_f64_array(&r, p->adam.v, p->n_opt, &e) ||
        qd_blob_get_i64(&r, &pe, &e))
        return h->error(h, QD_ERR_FORMAT, "restore: %s", e.msg);
    for (size_t i = 0; i < p->n_train; i++) {
        uint32_t v;
        if (qd_blob_get_u32(&r, &v, &e))
            return h->error(h, QD_ERR_FORMAT, "restore: %s", e.msg);
        if (v >= p->n_train)
            return h->error(h, QD_ERR_FORMAT,
                            "restore: permutation entry %zu is out of range",
                            i);
        p->perm[i] = v;
    }
    if (qd_blob_get_u64(&r, &chance, &e) || qd_blob_reader_end(&r, &e))
        return h->error(h, QD_ERR_FORMAT, "restore: %s", e.msg);
    if (!all_finite(p->params, p->n_opt))
        return h->error(h, QD_ERR_FORMAT,
                        "restore: the checkpointed synthetic set is not "
                        "finite");
    p->adam.t = t;
    p->perm_epoch = pe;
    p->chance_run = chance;
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
    INT_P("images_per_class", "1", 1,
          "synthetic images per class in each step"),
    INT_P("steps", "10", 1,
          "distinct synthetic batches (each classes x images_per_class)"),
    INT_P("epochs", "3", 1,
          "passes over the steps: T = steps x epochs inner updates"),
    {"init", QD_PARAM_ENUM, 0, "noise", 0, 0, "noise|real", 0, NULL,
     "initial images: noise = N(0,1) in normalised pixel space, real = "
     "random training images of each class"},
    {"model_init", QD_PARAM_ENUM, 0, "fixed", 0, 0, "fixed|random", 0, NULL,
     "fixed: the run's one initialisation every iteration; random: "
     "models_per_iteration fresh initialisations per iteration"},
    INT_P("models_per_iteration", "1", 1,
          "fresh initialisations averaged per iteration (model_init: random)"),
    DBL_P("lr_init", MIN_, "0.02", 0, 0,
          "initial inner step size (strictly inside (lr_min, lr_max))"),
    INT_P("batch_size", "1024", 1,
          "real images per outer iteration (the outer loss batch)"),
    DBL_P("lr", MIN_, "0.01", 0, 0, "Adam learning rate (> 0)"),
    DBL_P("beta1", MIN_ | MAX_, "0.5", 0, 1, "Adam beta1, in [0, 1)"),
    DBL_P("beta2", MIN_ | MAX_, "0.999", 0, 1, "Adam beta2, in [0, 1)"),
    DBL_P("outer_epochs", MIN_, "400", 0, 0,
          "passes over the real training set the schedule lasts: "
          "ceil(outer_epochs x ceil(n_train / batch_size)) iterations"),
    INT_P("iterations", "0", 0,
          "outer iterations; > 0 overrides outer_epochs"),
    DBL_P("decay_epochs", MIN_, "40", 0, 0,
          "multiply the Adam lr by decay_factor every this many epochs of "
          "the real set"),
    DBL_P("decay_factor", MIN_ | MAX_, "0.5", 0, 1,
          "Adam lr decay factor, in (0, 1]"),
    DBL_P("lr_min", MIN_, "0", 0, 0,
          "lower bound of the learned step sizes (>= 0; lr = lr_min + "
          "softplus(raw) when lr_max is 0)"),
    DBL_P("lr_max", MIN_, "0", 0, 0,
          "upper bound of the learned step sizes, 0 = unbounded (lr = "
          "lr_min + (lr_max - lr_min) sigmoid(raw) when > 0)"),
    DBL_P("clip_grad", MIN_, "0", 0, 0,
          "global-norm clipping of the meta-gradient over images and raw "
          "step sizes, 0 = off"),
    DBL_P("fd_eps", MIN_ | MAX_, "1e-5", 0, 0.1,
          "relative finite-difference step of the second-order terms"),
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
    .extra_names = {"grad_norm", "batch_acc", "outer_lr", "image_rms"},
};

static const qd_plugin_desc desc = QD_PLUGIN_DESC_INIT(
    QD_KIND_DISTILLER, "performance_matching", "1.0.0",
    "dataset distillation by performance matching (Wang et al. 2018): "
    "learned images and inner step sizes through the unrolled training",
    params, &vtable);

static const qd_plugin_desc *const descs[] = {&desc, NULL};

QD_PLUGIN_EXPORT const qd_plugin_desc *const *qd_plugin_entry(void)
{
    return descs;
}
