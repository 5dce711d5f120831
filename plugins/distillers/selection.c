/* Distiller plugins `random_subset`, `herding` and `kcenter`: coreset
 * selection baselines, run through the same engine (and so reported in the
 * same tables) as the learned distillers.
 *
 * Each picks images_per_class real training images per class; the set has
 * one step of classes x images_per_class images (class-major, in selection
 * order within a class) and no learned step sizes, so the host evaluates it
 * with the evaluate section's training recipe. A selection is made once:
 * n_iterations() is 1 and iterate() does the whole selection.
 *
 *   random_subset  images drawn uniformly without replacement per class
 *                  (ctx->rng); measured in input (pixel) space.
 *   herding        Welling (2009), as in the DC benchmark: per class, the
 *                  greedy choice t (t = 0, 1, ...) is the unselected x that
 *                  minimises || (t+1) mu - sum(selected) - x ||, i.e. keeps
 *                  the running mean of the selected embeddings closest to
 *                  the class mean mu.
 *   kcenter        Sener & Savarese (2018): per class, greedy k-center: start
 *                  from the point closest to the class mean, then add the
 *                  point farthest from the selected ones.
 * Ties go to the candidate of lowest training-set index.
 *
 * The embedding of herding and kcenter is the output of the model layer
 * `embedding` (`auto`, as distribution_matching: the layer listed before
 * the output layer; `input` = raw pixels)
 * under the fixed initialisation (`embed_model: init`) or under it trained
 * on the real training set for embed_epochs with qd_train_run
 * (`embed_model: trained`). max_per_class caps the candidates embedded per
 * class (a uniform sample, ctx->rng, drawn after the training). Embeddings
 * are computed one class at a time in chunks, so memory is one class's
 * embedding matrix.
 *
 * Reported (every method, in its own space): loss = the method's objective
 * (herding and random_subset: the mean gap, kcenter: the covering radius),
 * and the extra columns mean_gap = ||mean(selected) - mean(class)||,
 * cover_radius = max over candidates of the distance to the nearest
 * selected point (both averaged over classes), candidates (total), dim.
 *
 * State: the done flag, the chosen indices and their images, so a restored
 * instance returns the same set without a training set at hand. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qdistill/distill.h"
#include "qdistill/train.h"

#define STATE_MAGIC 0x51534c31u   /* "QSL1" */
#define EMBED_CHUNK 256           /* images per forward pass */
/* Largest per-class embedding matrix (doubles; 1 GiB): beyond it the user
 * should sample candidates (max_per_class) or pick a smaller layer. */
#define EMBED_MAX ((size_t)1 << 27)
#define INPUT_LAYER "input"       /* the model's reserved name for its data */
#define AUTO_LAYER "auto"

enum { SEL_RANDOM = 0, SEL_HERDING = 1, SEL_KCENTER = 2 };
static const char *const method_name[] = {"random_subset", "herding",
                                          "kcenter"};

enum { ST_LOSS, ST_GAP, ST_RADIUS, ST_CAND, ST_DIM, ST_N };

typedef struct sel {
    const qd_host *host;
    int method;
    /* configuration */
    size_t ipc, embed_epochs, max_per_class;
    double embed_lr;
    char *layer_cfg;              /* as configured */
    char *layer;                  /* resolved (start); INPUT_LAYER: pixels */
    int trained;
    /* shapes (start) */
    int started, done, broken;
    size_t classes, channels, height, width, in_size, per_step, n_train;
    size_t n_params;
    /* the selection */
    uint32_t *chosen;             /* per_step training indices, class-major */
    double *images;               /* per_step x in_size */
    double stats[ST_N];
} sel;

/* ---- lifecycle ---- */

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    return d ? memcpy(d, s, n) : NULL;
}

static void free_state(sel *p)
{
    free(p->chosen);
    free(p->images);
    free(p->layer);
    p->chosen = NULL;
    p->images = NULL;
    p->layer = NULL;
    p->started = p->done = 0;
}

static void destroy(void *self)
{
    sel *p = self;
    if (!p)
        return;
    free_state(p);
    free(p->layer_cfg);
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

static int create_as(const qd_host *h, void **self, int method)
{
    *self = NULL;
    sel *p = calloc(1, sizeof *p);
    if (!p)
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    p->host = h;
    p->method = method;
    int rc;
    if ((rc = get_count(h, "images_per_class", 1, 1000000, &p->ipc)))
        goto fail;
    if (method == SEL_RANDOM) {
        *self = p;
        return QD_OK;
    }
    if ((rc = get_count(h, "embed_epochs", 1, 100000, &p->embed_epochs)) ||
        (rc = get_count(h, "max_per_class", 0, 1LL << 31, &p->max_per_class)))
        goto fail;
    rc = QD_ERR_INVALID;
    if (p->max_per_class > 0 && p->max_per_class < p->ipc) {
        h->node_error(h, cfg_node(h, "max_per_class"), QD_ERR_INVALID,
                      "'max_per_class' (%zu) must be 0 (all) or at least "
                      "images_per_class (%zu)", p->max_per_class, p->ipc);
        goto fail;
    }
    p->embed_lr = h->get_double(h, "embed_lr");
    if (!(p->embed_lr > 0.0 && isfinite(p->embed_lr))) {
        h->node_error(h, cfg_node(h, "embed_lr"), QD_ERR_INVALID,
                      "'embed_lr' must be a finite number > 0, got %g",
                      p->embed_lr);
        goto fail;
    }
    p->trained = strcmp(h->get_string(h, "embed_model"), "trained") == 0;
    const char *l = h->get_string(h, "embedding");
    if (!l || !l[0]) {
        h->node_error(h, cfg_node(h, "embedding"), QD_ERR_INVALID,
                      "'embedding' must name a layer of the model ('"
                      AUTO_LAYER "': the layer before the output; '"
                      INPUT_LAYER "': raw pixels)");
        goto fail;
    }
    if (!(p->layer_cfg = dup_str(l))) {
        rc = h->error(h, QD_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (p->trained && strcmp(l, INPUT_LAYER) == 0) {
        h->node_error(h, cfg_node(h, "embed_model"), QD_ERR_INVALID,
                      "'embed_model: trained' has no effect with "
                      "'embedding: " INPUT_LAYER "' (raw pixels); use "
                      "embed_model: init or name a model layer");
        goto fail;
    }
    *self = p;
    return QD_OK;
fail:
    destroy(p);
    return rc;
}

static int create_random(const qd_host *h, void **self)
{
    return create_as(h, self, SEL_RANDOM);
}

static int create_herding(const qd_host *h, void **self)
{
    return create_as(h, self, SEL_HERDING);
}

static int create_kcenter(const qd_host *h, void **self)
{
    return create_as(h, self, SEL_KCENTER);
}

/* ---- start ---- */

static int oom(const sel *p)
{
    return p->host->error(p->host, QD_ERR_NOMEM, "out of memory");
}

static int uses_model(const sel *p)
{
    return p->method != SEL_RANDOM && strcmp(p->layer_cfg, INPUT_LAYER) != 0;
}

/* The embedding layer: the configured name, or the layer before the output
 * for "auto". An unknown name is reported at the key with the valid ones. */
static int resolve_layer(sel *p, const qd_model *m)
{
    const qd_host *h = p->host;
    const size_t n = qd_model_n_layers(m);
    const char *name = p->layer_cfg;
    if (strcmp(name, AUTO_LAYER) == 0)
        name = qd_model_layer_name(m, n >= 2 ? n - 2 : 0);
    if (name && qd_model_layer_size(m, name) > 0)
        return (p->layer = dup_str(name)) ? QD_OK : oom(p);
    size_t cap = 64, len = 0;
    for (size_t i = 0; i < n; i++)
        cap += strlen(qd_model_layer_name(m, i)) + 32;
    char *list = malloc(cap);
    if (!list)
        return oom(p);
    len = (size_t)snprintf(list, cap, INPUT_LAYER " (%zu)", p->in_size);
    for (size_t i = 0; i < n; i++) {
        const char *ln = qd_model_layer_name(m, i);
        len += (size_t)snprintf(list + len, cap - len, ", %s (%zu)", ln,
                                qd_model_layer_size(m, ln));
    }
    int rc = h->node_error(h, cfg_node(h, "embedding"), QD_ERR_INVALID,
                           "'embedding': the model has no layer '%s'; valid "
                           "layers (output size): %s", name ? name : "?",
                           list);
    free(list);
    return rc;
}

static int start(void *self, const qd_distill_ctx *ctx)
{
    sel *p = self;
    const qd_host *h = p->host;
    free_state(p);
    p->broken = 0;
    /* fields up to `threads` are all this plugin reads */
    if (!ctx || ctx->struct_size < offsetof(qd_distill_ctx, threads) +
                                       sizeof ctx->threads ||
        !ctx->train || !ctx->rng)
        return h->error(h, QD_ERR_INVALID,
                        "start: the context lacks the training set or the "
                        "random stream");
    const qd_dataset *d = ctx->train;
    if (d->n == 0 || d->classes == 0 || !d->images || !d->labels)
        return h->error(h, QD_ERR_INVALID, "start: the training set is empty");
    if (d->n > UINT32_MAX)
        return h->error(h, QD_ERR_INVALID, "start: %zu training images is "
                        "more than this distiller indexes", d->n);
    p->classes = d->classes;
    p->channels = d->channels;
    p->height = d->height;
    p->width = d->width;
    p->in_size = qd_dataset_sample_size(d);
    p->n_train = d->n;
    p->per_step = p->classes * p->ipc;
    if (p->method != SEL_RANDOM && !uses_model(p)) {
        if (!(p->layer = dup_str(INPUT_LAYER)))
            return oom(p);
    } else if (p->method != SEL_RANDOM) {
        qd_model *m = ctx->model;
        if (!m)
            return h->error(h, QD_ERR_INVALID, "start: the context has no "
                            "model to embed with");
        if (qd_model_input_size(m) != p->in_size)
            return h->error(h, QD_ERR_INVALID,
                            "start: the model takes inputs of %zu values, the "
                            "training images have %zu",
                            qd_model_input_size(m), p->in_size);
        int rc = resolve_layer(p, m);
        if (rc)
            return rc;
        p->n_params = qd_model_n_params(m);
        if (!ctx->init_params || ctx->n_params != p->n_params) {
            free_state(p);
            return h->error(h, QD_ERR_INVALID,
                            "start: embedding through the model needs the "
                            "fixed initialisation (%zu parameters, got %zu)",
                            p->n_params, ctx->init_params ? ctx->n_params : 0);
        }
    }
    /* every class needs images_per_class distinct images */
    size_t *cnt = calloc(p->classes, sizeof *cnt);
    if (!cnt)
        return oom(p);
    for (size_t i = 0; i < d->n; i++) {
        if (d->labels[i] < 0 || (size_t)d->labels[i] >= p->classes) {
            free(cnt);
            return h->error(h, QD_ERR_INVALID, "start: training label %zu is "
                            "%d, outside 0..%zu", i, (int)d->labels[i],
                            p->classes - 1);
        }
        cnt[d->labels[i]]++;
    }
    for (size_t c = 0; c < p->classes; c++)
        if (cnt[c] < p->ipc) {
            size_t have = cnt[c];
            free(cnt);
            return h->node_error(h, cfg_node(h, "images_per_class"),
                                 QD_ERR_INVALID,
                                 "'images_per_class' is %zu but class %zu has "
                                 "only %zu training images (a selection "
                                 "picks distinct images)", p->ipc, c, have);
        }
    free(cnt);
    p->chosen = malloc(p->per_step * sizeof *p->chosen);
    p->images = malloc(p->per_step * p->in_size * sizeof *p->images);
    if (!p->chosen || !p->images) {
        free_state(p);
        return oom(p);
    }
    memset(p->stats, 0, sizeof p->stats);
    p->started = 1;
    return QD_OK;
}

static uint64_t n_iterations(void *self)
{
    (void)self;
    return 1;
}

/* ---- geometry (rows of E: n x dim) ---- */

static double sqdist(const double *a, const double *b, size_t dim)
{
    double s = 0.0;
    for (size_t j = 0; j < dim; j++) {
        double t = a[j] - b[j];
        s += t * t;
    }
    return s;
}

static void row_mean(const double *E, size_t n, size_t dim, double *mu)
{
    memset(mu, 0, dim * sizeof *mu);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < dim; j++)
            mu[j] += E[i * dim + j];
    for (size_t j = 0; j < dim; j++)
        mu[j] /= (double)n;
}

/* dist[i] = ||E_i - v||^2 for every row (independent rows: the result does
 * not depend on the thread count). */
static void dists_to(const double *E, size_t n, size_t dim, const double *v,
                     double *dist)
{
    const long long nn = (long long)n;
#pragma omp parallel for schedule(static) if (n * dim > 32768)
    for (long long i = 0; i < nn; i++)
        dist[i] = sqdist(E + (size_t)i * dim, v, dim);
}

/* Herding: k picks (local indices) into out. Distances by direct
 * differences: n*dim per pick is small next to the embedding, and it keeps
 * the comparison free of the cancellation of |a|^2 - 2ab + |b|^2. */
static void herd(const double *E, size_t n, size_t dim, size_t k,
                 const double *mu, double *S, double *target, double *dist,
                 unsigned char *used, size_t *out)
{
    memset(S, 0, dim * sizeof *S);
    memset(used, 0, n);
    for (size_t t = 0; t < k; t++) {
        for (size_t j = 0; j < dim; j++)
            target[j] = (double)(t + 1) * mu[j] - S[j];
        dists_to(E, n, dim, target, dist);
        size_t best = n;
        for (size_t i = 0; i < n; i++)
            if (!used[i] && (best == n || dist[i] < dist[best]))
                best = i;
        used[best] = 1;
        for (size_t j = 0; j < dim; j++)
            S[j] += E[best * dim + j];
        out[t] = best;
    }
}

/* Greedy k-center from the point closest to the class mean. */
static void kcenter(const double *E, size_t n, size_t dim, size_t k,
                    const double *mu, double *mind, double *dist,
                    unsigned char *used, size_t *out)
{
    memset(used, 0, n);
    dists_to(E, n, dim, mu, dist);
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (dist[i] < dist[best])
            best = i;
    for (size_t i = 0; i < n; i++)
        mind[i] = INFINITY;
    for (size_t t = 0;; t++) {
        used[best] = 1;
        out[t] = best;
        dists_to(E, n, dim, E + best * dim, dist);
        for (size_t i = 0; i < n; i++)
            mind[i] = dist[i] < mind[i] ? dist[i] : mind[i];
        if (t + 1 == k)
            break;
        best = n;
        for (size_t i = 0; i < n; i++)
            if (!used[i] && (best == n || mind[i] > mind[best]))
                best = i;
    }
}

/* ||mean(selected) - mu|| and the covering radius of the selection. */
static void measure(const double *E, size_t n, size_t dim, const size_t *s,
                    size_t k, const double *mu, double *tmp, double *gap,
                    double *radius)
{
    memset(tmp, 0, dim * sizeof *tmp);
    for (size_t t = 0; t < k; t++)
        for (size_t j = 0; j < dim; j++)
            tmp[j] += E[s[t] * dim + j];
    double g = 0.0;
    for (size_t j = 0; j < dim; j++) {
        double u = tmp[j] / (double)k - mu[j];
        g += u * u;
    }
    double r = 0.0;
    for (size_t i = 0; i < n; i++) {
        double m = INFINITY;
        for (size_t t = 0; t < k; t++) {
            double q = sqdist(E + i * dim, E + s[t] * dim, dim);
            m = q < m ? q : m;
        }
        r = m > r ? m : r;
    }
    *gap = sqrt(g);
    *radius = sqrt(r);
}

/* ---- the selection ---- */

typedef struct work {
    size_t *by_class, *start;     /* training indices grouped by class */
    size_t *cand, *pick;
    double *E, *xb, *mu, *v1, *v2, *mind, *dist, *w;
    unsigned char *used;
} work;

static void work_free(work *w)
{
    free(w->by_class);
    free(w->start);
    free(w->cand);
    free(w->pick);
    free(w->E);
    free(w->xb);
    free(w->mu);
    free(w->v1);
    free(w->v2);
    free(w->mind);
    free(w->dist);
    free(w->w);
    free(w->used);
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return (x > y) - (x < y);
}

/* Embeddings of training images idx[0..n) into E (n x dim). */
static int embed(sel *p, const qd_distill_ctx *ctx, const double *params,
                 const size_t *idx, size_t n, size_t dim, work *w)
{
    const qd_host *h = p->host;
    const qd_dataset *d = ctx->train;
    const size_t S = p->in_size;
    const int raw = !uses_model(p);
    for (size_t at = 0; at < n; at += EMBED_CHUNK) {
        size_t cnt = n - at < EMBED_CHUNK ? n - at : EMBED_CHUNK;
        double *out = w->E + at * dim;
        if (raw) {
            for (size_t j = 0; j < cnt; j++)
                memcpy(out + j * dim, d->images + idx[at + j] * S,
                       S * sizeof *out);
            continue;
        }
        for (size_t j = 0; j < cnt; j++)
            memcpy(w->xb + j * S, d->images + idx[at + j] * S,
                   S * sizeof *w->xb);
        qd_error e;
        int rc = qd_model_forward_to(ctx->model, params, cnt, w->xb,
                                     p->layer, out, &e);
        if (rc)
            return h->error(h, rc, "embedding: %s", e.msg);
        for (size_t j = 0; j < cnt * dim; j++)
            if (!isfinite(out[j]))
                return h->error(h, QD_ERR_NUMERIC,
                                "embedding: training image %zu embeds to a "
                                "non-finite value (%g) in '%s'",
                                idx[at + j / dim], out[j], p->layer);
        if (h->should_stop(h))
            return h->error(h, QD_ERR_INTERRUPTED,
                            "embedding: interrupted");
    }
    return QD_OK;
}

/* The embedding model: the fixed initialisation, trained on the real set
 * when asked (shuffles from ctx->rng). */
static int embed_params(sel *p, const qd_distill_ctx *ctx, double *w)
{
    const qd_host *h = p->host;
    memcpy(w, ctx->init_params, p->n_params * sizeof *w);
    if (!p->trained)
        return QD_OK;
    qd_train_config cfg;
    qd_train_config_default(&cfg);
    cfg.epochs = p->embed_epochs;
    cfg.lr = p->embed_lr;
    qd_train_result res;
    qd_error e;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = qd_train_run(ctx->model, w, ctx->train, NULL, &cfg, ctx->rng,
                          NULL, NULL, &res, &e);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (rc) {
        qd_train_result_free(&res);
        return h->error(h, rc, "embed_model: trained: %s%s", e.msg,
                        rc == QD_ERR_NUMERIC ? " (try a smaller embed_lr)"
                                             : "");
    }
    h->log(h, QD_LOG_INFO, "embedding model trained for %zu epoch(s) on %zu "
           "images (lr %g): training loss %.4f, accuracy %.4f, %.1f s",
           p->embed_epochs, p->n_train, p->embed_lr, res.final_train_loss,
           res.final_train_acc,
           (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec -
                                                             t0.tv_nsec));
    qd_train_result_free(&res);
    return QD_OK;
}

static int iterate(void *self, const qd_distill_ctx *ctx, uint64_t it,
                   qd_distill_metrics *mt)
{
    sel *p = self;
    const qd_host *h = p->host;
    if (!p->started || p->broken)
        return h->error(h, QD_ERR_INVALID, p->broken
                        ? "iterate: the state is incomplete after a failed "
                          "restore"
                        : "iterate called before start");
    if (p->done || it != 0)
        return h->error(h, QD_ERR_INVALID,
                        "iterate: a selection is made once (iteration 0), "
                        "got iteration %llu%s", (unsigned long long)it,
                        p->done ? " after it was made" : "");
    if (!ctx || !ctx->train || ctx->train->n != p->n_train || !ctx->rng ||
        (uses_model(p) && (!ctx->model || !ctx->init_params)))
        return h->error(h, QD_ERR_INVALID,
                        "iterate: the context differs from the one given to "
                        "start");
    const qd_dataset *d = ctx->train;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = QD_OK;
    work w;
    memset(&w, 0, sizeof w);
    size_t dim = p->in_size;
    if (uses_model(p)) {
        qd_error e;
        qd_model_set_training(ctx->model, 0);
        if ((rc = qd_model_set_pieces(ctx->model, QD_PIECES_LIVE, &e)))
            return h->error(h, rc, "iterate: %s", e.msg);
        dim = qd_model_layer_size(ctx->model, p->layer);
        if (!(w.w = malloc(p->n_params * sizeof *w.w)))
            return oom(p);
        if ((rc = embed_params(p, ctx, w.w))) {
            work_free(&w);
            return rc;
        }
    }

    /* training indices grouped by class, in training-set order */
    w.by_class = malloc(d->n * sizeof *w.by_class);
    w.start = calloc(p->classes + 1, sizeof *w.start);
    size_t most = 0;
    if (w.by_class && w.start) {
        for (size_t i = 0; i < d->n; i++)
            w.start[d->labels[i] + 1]++;
        for (size_t c = 0; c < p->classes; c++) {
            size_t nc = w.start[c + 1];
            most = nc > most ? nc : most;
            w.start[c + 1] += w.start[c];
        }
        size_t *fill = calloc(p->classes, sizeof *fill);
        if (fill) {
            for (size_t i = 0; i < d->n; i++) {
                size_t c = (size_t)d->labels[i];
                w.by_class[w.start[c] + fill[c]++] = i;
            }
            free(fill);
        } else {
            free(w.by_class);
            w.by_class = NULL;
        }
    }
    size_t cap = p->max_per_class && p->max_per_class < most
                     ? p->max_per_class : most;
    if (cap * dim > EMBED_MAX) {
        work_free(&w);
        return h->error(h, QD_ERR_INVALID,
                        "a class of %zu candidates x %zu embedding values "
                        "exceeds the %zu-value limit of one class's "
                        "embedding matrix: set max_per_class (at most %zu) "
                        "or choose a smaller 'embedding' layer",
                        cap, dim, EMBED_MAX, EMBED_MAX / dim);
    }
    w.cand = malloc(most * sizeof *w.cand);
    w.pick = malloc(p->ipc * sizeof *w.pick);
    w.E = malloc(cap * dim * sizeof *w.E);
    w.xb = malloc(EMBED_CHUNK * p->in_size * sizeof *w.xb);
    w.mu = malloc(dim * sizeof *w.mu);
    w.v1 = malloc(dim * sizeof *w.v1);
    w.v2 = malloc(dim * sizeof *w.v2);
    w.mind = malloc(cap * sizeof *w.mind);
    w.dist = malloc(cap * sizeof *w.dist);
    w.used = malloc(cap);
    if (!w.by_class || !w.start || !w.cand || !w.pick || !w.E || !w.xb ||
        !w.mu || !w.v1 || !w.v2 || !w.mind || !w.dist || !w.used) {
        work_free(&w);
        return oom(p);
    }

    double gap_sum = 0.0, rad_sum = 0.0;
    size_t n_cand = 0;
    for (size_t c = 0; c < p->classes && !rc; c++) {
        const size_t nc = w.start[c + 1] - w.start[c];
        memcpy(w.cand, w.by_class + w.start[c], nc * sizeof *w.cand);
        size_t n = nc;
        if (p->method == SEL_RANDOM) {
            /* partial Fisher-Yates: ipc distinct images, in draw order */
            for (size_t k = 0; k < p->ipc; k++) {
                size_t j = k + qd_rng_bounded(ctx->rng, (uint32_t)(nc - k));
                size_t t = w.cand[k];
                w.cand[k] = w.cand[j];
                w.cand[j] = t;
                w.pick[k] = k;
            }
        } else if (p->max_per_class && p->max_per_class < nc) {
            n = p->max_per_class;
            for (size_t k = 0; k < n; k++) {
                size_t j = k + qd_rng_bounded(ctx->rng, (uint32_t)(nc - k));
                size_t t = w.cand[k];
                w.cand[k] = w.cand[j];
                w.cand[j] = t;
            }
            /* canonical order: ties go to the lowest training index */
            qsort(w.cand, n, sizeof *w.cand, cmp_size);
        }
        if ((rc = embed(p, ctx, w.w, w.cand, n, dim, &w)))
            break;
        row_mean(w.E, n, dim, w.mu);
        if (p->method == SEL_HERDING)
            herd(w.E, n, dim, p->ipc, w.mu, w.v1, w.v2, w.dist, w.used,
                 w.pick);
        else if (p->method == SEL_KCENTER)
            kcenter(w.E, n, dim, p->ipc, w.mu, w.mind, w.dist, w.used, w.pick);
        double gap, radius;
        measure(w.E, n, dim, w.pick, p->ipc, w.mu, w.v1, &gap, &radius);
        gap_sum += gap;
        rad_sum += radius;
        n_cand += n;
        for (size_t k = 0; k < p->ipc; k++) {
            size_t slot = c * p->ipc + k, src = w.cand[w.pick[k]];
            p->chosen[slot] = (uint32_t)src;
            memcpy(p->images + slot * p->in_size, d->images + src * p->in_size,
                   p->in_size * sizeof *p->images);
        }
    }
    work_free(&w);
    if (rc)
        return rc;
    const double inv = 1.0 / (double)p->classes;
    p->stats[ST_GAP] = gap_sum * inv;
    p->stats[ST_RADIUS] = rad_sum * inv;
    p->stats[ST_LOSS] = p->method == SEL_KCENTER ? p->stats[ST_RADIUS]
                                                 : p->stats[ST_GAP];
    p->stats[ST_CAND] = (double)n_cand;
    p->stats[ST_DIM] = (double)dim;
    p->done = 1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    h->log(h, QD_LOG_INFO, "%s: %zu images per class from %zu candidates in "
           "%s space (%zu values): mean gap %.4g, covering radius %.4g, "
           "%.2f s", method_name[p->method], p->ipc, n_cand,
           p->method == SEL_RANDOM ? INPUT_LAYER : p->layer,
           dim, p->stats[ST_GAP], p->stats[ST_RADIUS],
           (double)(t1.tv_sec - t0.tv_sec) +
               1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    if (mt) {
        mt->loss = p->stats[ST_LOSS];
        mt->extra[0] = p->stats[ST_GAP];
        mt->extra[1] = p->stats[ST_RADIUS];
        mt->extra[2] = p->stats[ST_CAND];
        mt->extra[3] = p->stats[ST_DIM];
    }
    return QD_OK;
}

/* ---- result, save, restore ---- */

static int result(void *self, qd_synset *out)
{
    sel *p = self;
    const qd_host *h = p->host;
    if (!p->started || !p->done || p->broken)
        return h->error(h, QD_ERR_INVALID,
                        "result requested before the selection was made "
                        "(iterate)");
    qd_error e;
    if (qd_synset_alloc(out, 1, 1, p->per_step, p->channels, p->height,
                        p->width, p->classes, 0, &e))
        return h->error(h, e.code, "result: %s", e.msg);
    memcpy(out->images, p->images,
           p->per_step * p->in_size * sizeof *out->images);
    for (size_t i = 0; i < p->per_step; i++)
        out->labels[i] = (int32_t)(i / p->ipc);
    /* a selection is not tied to an initialisation; fixed keeps the
     * engine's validation scoring deterministic */
    out->init_mode = QD_INIT_FIXED;
    return QD_OK;
}

/* Layout: magic, method, shape fingerprint (4 x u64), done; when done the
 * chosen indices, their images and the statistics. */
static int save(void *self, qd_blob *b)
{
    sel *p = self;
    const qd_host *h = p->host;
    if (!p->started || p->broken)
        return h->error(h, QD_ERR_INVALID, "save called before start");
    const uint64_t fp[4] = {p->per_step, p->in_size, p->n_train, p->classes};
    qd_blob_put_u32(b, STATE_MAGIC);
    qd_blob_put_u32(b, (uint32_t)p->method);
    qd_blob_put_u64_array(b, fp, 4);
    qd_blob_put_u32(b, (uint32_t)p->done);
    if (p->done) {
        qd_blob_put_u32_array(b, p->chosen, p->per_step);
        qd_blob_put_f64_array(b, p->images, p->per_step * p->in_size);
        qd_blob_put_f64_array(b, p->stats, ST_N);
    }
    if (b->failed)
        return h->error(h, QD_ERR_NOMEM, "save: out of memory");
    return QD_OK;
}

static int restore(void *self, const void *data, size_t len)
{
    sel *p = self;
    const qd_host *h = p->host;
    if (!p->started)
        return h->error(h, QD_ERR_INVALID, "restore called before start");
    qd_blob_reader r;
    qd_blob_reader_init(&r, data, len);
    qd_error e;
    uint32_t magic, method, done;
    uint64_t fp[4];
    if (qd_blob_get_u32(&r, &magic, &e) || qd_blob_get_u32(&r, &method, &e))
        return h->error(h, QD_ERR_FORMAT, "restore: %s", e.msg);
    if (magic != STATE_MAGIC || method != (uint32_t)p->method)
        return h->error(h, QD_ERR_FORMAT, "restore: not a %s state",
                        method_name[p->method]);
    if (qd_blob_get_u64_array(&r, fp, 4, &e) ||
        qd_blob_get_u32(&r, &done, &e))
        return h->error(h, QD_ERR_FORMAT, "restore: %s", e.msg);
    const uint64_t want[4] = {p->per_step, p->in_size, p->n_train,
                              p->classes};
    static const char *const names[4] = {"selected images", "input size",
                                         "training images", "classes"};
    for (int i = 0; i < 4; i++)
        if (fp[i] != want[i])
            return h->error(h, QD_ERR_FORMAT,
                            "restore: the checkpoint has %llu %s, this "
                            "configuration %llu", (unsigned long long)fp[i],
                            names[i], (unsigned long long)want[i]);
    if (done > 1)
        return h->error(h, QD_ERR_FORMAT, "restore: corrupt done flag");
    /* from here on a failure leaves a half-written state: mark it */
    p->broken = 1;
    if (done) {
        if (qd_blob_get_u32_array(&r, p->chosen, p->per_step, &e) ||
            qd_blob_get_f64_array(&r, p->images, p->per_step * p->in_size,
                                  &e) ||
            qd_blob_get_f64_array(&r, p->stats, ST_N, &e))
            return h->error(h, QD_ERR_FORMAT, "restore: %s", e.msg);
        for (size_t i = 0; i < p->per_step; i++)
            if (p->chosen[i] >= p->n_train)
                return h->error(h, QD_ERR_FORMAT, "restore: selected index "
                                "%zu is out of range", i);
        for (size_t i = 0; i < p->per_step * p->in_size; i++)
            if (!isfinite(p->images[i]))
                return h->error(h, QD_ERR_FORMAT, "restore: the "
                                "checkpointed images are not finite");
    }
    if (qd_blob_reader_end(&r, &e))
        return h->error(h, QD_ERR_FORMAT, "restore: %s", e.msg);
    p->done = (int)done;
    p->broken = 0;
    return QD_OK;
}

/* ---- descriptors ---- */

#define IPC_P                                                               \
    {"images_per_class", QD_PARAM_INT, QD_PARAM_HAS_MIN, "1", 1, 0, NULL, 0, \
     NULL, "real images selected per class (distinct)"}
#define END_P {NULL, 0, 0, NULL, 0, 0, NULL, 0, NULL, NULL}

static const qd_param random_params[] = {IPC_P, END_P};

static const qd_param embed_params_schema[] = {
    IPC_P,
    {"embedding", QD_PARAM_STRING, 0, AUTO_LAYER, 0, 0, NULL, 0, NULL,
     "layer whose output is the embedding; auto = the layer listed before "
     "the output layer; input = raw pixels; quantum LeNet: f2 = the 64 "
     "features before the circuit, q = the 6 quantum expectations"},
    {"embed_model", QD_PARAM_ENUM, 0, "init", 0, 0, "init|trained", 0, NULL,
     "init: embed with the fixed initialisation; trained: first train it on "
     "the real training set for embed_epochs"},
    {"embed_epochs", QD_PARAM_INT, QD_PARAM_HAS_MIN, "1", 1, 0, NULL, 0, NULL,
     "epochs of training for embed_model: trained (SGD, momentum 0.9, "
     "batch 64)"},
    {"embed_lr", QD_PARAM_DOUBLE, QD_PARAM_HAS_MIN, "0.01", 0, 0, NULL, 0,
     NULL, "learning rate of that training (> 0)"},
    {"max_per_class", QD_PARAM_INT, QD_PARAM_HAS_MIN, "0", 0, 0, NULL, 0, NULL,
     "candidates embedded per class, a uniform sample (0 = all; else >= "
     "images_per_class)"},
    END_P,
};

#define VTABLE(name_, create_)                                              \
    static const qd_distiller_vt name_ = {                                  \
        .struct_size = sizeof(qd_distiller_vt),                             \
        .create = create_,                                                  \
        .destroy = destroy,                                                 \
        .start = start,                                                     \
        .n_iterations = n_iterations,                                       \
        .iterate = iterate,                                                 \
        .result = result,                                                   \
        .save = save,                                                       \
        .restore = restore,                                                 \
        .extra_names = {"mean_gap", "cover_radius", "candidates", "dim"},  \
    }

VTABLE(random_vt, create_random);
VTABLE(herding_vt, create_herding);
VTABLE(kcenter_vt, create_kcenter);

static const qd_plugin_desc random_desc = QD_PLUGIN_DESC_INIT(
    QD_KIND_DISTILLER, "random_subset", "1.0.0",
    "selection baseline: images_per_class real images drawn uniformly per "
    "class", random_params, &random_vt);

static const qd_plugin_desc herding_desc = QD_PLUGIN_DESC_INIT(
    QD_KIND_DISTILLER, "herding", "1.0.0",
    "selection baseline: herding (Welling 2009), greedy class-mean matching "
    "in an embedding", embed_params_schema, &herding_vt);

static const qd_plugin_desc kcenter_desc = QD_PLUGIN_DESC_INIT(
    QD_KIND_DISTILLER, "kcenter", "1.0.0",
    "selection baseline: greedy k-center (Sener & Savarese 2018) per class "
    "in an embedding", embed_params_schema, &kcenter_vt);

static const qd_plugin_desc *const descs[] = {&random_desc, &herding_desc,
                                              &kcenter_desc, NULL};

QD_PLUGIN_EXPORT const qd_plugin_desc *const *qd_plugin_entry(void)
{
    return descs;
}
