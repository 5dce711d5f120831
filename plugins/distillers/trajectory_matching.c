/* Distiller plugin `trajectory_matching`: dataset distillation by matching
 * training trajectories (Cazenavette et al. 2022, "Dataset Distillation by
 * Matching Training Trajectories", MTT).
 *
 * Experts. Trajectories of full-data training: the parameters at the start
 * and after every epoch (qd_train_config.save_trajectory). Either loaded
 * from expert_dir (trajectory*.npy files written by `qdistill train` with
 * train.save_trajectory: true), or trained in start(): expert i starts from
 * a fresh initialisation drawn from ctx->init_rng and shuffles the real
 * training set with a stream seeded from ctx->rng; its trajectory is written
 * to <run_dir>/experts/trajectory_<i>.npy as soon as it is trained, and a
 * resumed run reuses the files instead of training again. The draws happen
 * whether an expert is trained or loaded, so both paths leave the streams
 * in the same state; a loaded file must start from the initialisation the
 * run would have drawn (so files of another seed or model are refused).
 * The default expert recipe is MTT's (plain SGD, lr 0.01, batch 256, no
 * momentum), not the train section's (momentum 0.9, batch 64): the student
 * takes plain SGD steps, and on MNIST with the quantum LeNet the 2-epoch
 * displacement of a momentum expert is mostly SGD noise: 10 steps on real
 * images at any constant step size leave >= 0.96 of the squared distance
 * at every start epoch (MTT's recipe: 0.82 at epoch 0, 0.93 at epoch 1), so
 * there is little for the images to learn.
 *
 * Learned: classes x images_per_class images (labels fixed, class-major)
 * and one student step size lr. One outer iteration:
 *   1. draw an expert e (uniform) and a start epoch s in [0, max_start_epoch)
 *      (uniform, as MTT's randint); w_start = traj_e[s], w_target =
 *      traj_e[s + expert_steps];
 *   2. N = syn_steps student steps w <- w - lr grad l(batch_t; w) from
 *      w_start, batch_t = batch_syn synthetic images: consecutive chunks of
 *      a permutation drawn from ctx->rng, redrawn when fewer than batch_syn
 *      remain (every step is a full batch); batch_syn = all uses the whole
 *      set in order at every step and draws nothing;
 *   3. loss = |w_N - w_target|^2 / |w_start - w_target|^2;
 *   4. the exact meta-gradient w.r.t. the images and lr through all N steps
 *      (qd_unroll_backward: reverse mode, second-order products by central
 *      differences), the per-step image gradients scattered back to the
 *      images they came from, the N step-size gradients summed (one lr);
 *   5. clipping: the image gradient to global norm clip_grad, the step-size
 *      gradient to magnitude clip_grad_lr; then SGD with momentum (0.5, as
 *      MTT) on the images (lr_img) and on the step size (lr_lr); the step
 *      size is then kept >= syn_lr_min.
 *
 * Why clip (MTT does not): the unrolled student sits near the edge of
 * stability, and on MNIST with the quantum LeNet about one iteration in a
 * hundred has an exploding meta-gradient (image-gradient norms 0.14 - 1.2
 * against a median of 0.004 - 0.006; step-size gradients 60 - 1300 against
 * a median of 3 - 5). Unclipped, one such spike moved pixels by 0.4 and
 * drove the step size to its floor, where the student no longer moves and
 * the run never recovers. The defaults (lr_img 1000, MTT's value for
 * unwhitened images, with clip_grad 0.01 and clip_grad_lr 10) are set for
 * MNIST-sized images; they clip 20% and 2% of iterations there.
 *
 * Evaluation. MTT evaluates by training a fresh network on the synthetic
 * set with the learned step size, to convergence (1000 epochs). The result
 * therefore carries learned step sizes: one step holding every image and
 * eval_updates (default 300) full-batch updates, all at the learned lr, so
 * the host's replay is that training. Replaying only the matched span
 * (syn_steps updates per expert_steps epochs, 30 by default) leaves a
 * fresh quantum LeNet at ~20% on MNIST; 300 updates at the learned lr reach
 * training loss ~0.03, and as many as the evaluate recipe's default 300
 * epochs of full batches. The experts start from fresh initialisations, so
 * the set is marked for random initialisation.
 *
 * Everything stateful (images, lr, both momentum buffers) is in save(); the
 * checkpoint also records a hash of the expert trajectories, so it is only
 * restored against the same experts. The host checkpoints ctx->rng and
 * ctx->init_rng. Dropout is switched off while matching: the finite
 * differences need a deterministic loss. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qdistill/distill.h"
#include "qdistill/fsutil.h"
#include "qdistill/npy.h"
#include "qdistill/train.h"

#define STATE_MAGIC 0x51544d31u   /* "QTM1" */

typedef struct tmatch {
    const qd_host *host;
    /* configuration */
    size_t ipc, n_experts_cfg, expert_epochs, syn_steps, expert_steps;
    size_t max_start, batch_cfg, eval_updates, expert_batch;
    int init_real;
    double lr_img, lr_lr, syn_lr_init, syn_lr_min, momentum, fd_eps;
    double clip_grad, clip_grad_lr;
    double expert_lr, expert_momentum, expert_wd;
    char *expert_dir;               /* resolved; NULL: train the experts */
    uint64_t iterations;
    /* shapes (start) */
    int started, broken;
    size_t classes, channels, height, width, in_size, n_syn, n_img;
    size_t n_params, n_train, batch;
    /* experts: n_exp trajectories of rows[e] x n_params in one array */
    size_t n_exp, *rows, *row0;
    double *traj;
    uint64_t traj_hash;
    /* learned state */
    double *images, syn_lr;
    int32_t *labels;
    qd_sgd opt_img, opt_lr;
    /* scratch */
    qd_unroll *unroll;
    size_t *perm, *src;             /* src: image of every per-step slot */
    double *xs, *g_xs, *g_img, *lrs, *g_lrs, *g_T;
    int32_t *ys;
} tmatch;

/* ---- lifecycle ---- */

static void free_state(tmatch *p)
{
    free(p->rows);
    free(p->row0);
    free(p->traj);
    free(p->images);
    free(p->labels);
    qd_sgd_free(&p->opt_img);
    qd_sgd_free(&p->opt_lr);
    qd_unroll_destroy(p->unroll);
    free(p->perm);
    free(p->src);
    free(p->xs);
    free(p->g_xs);
    free(p->g_img);
    free(p->lrs);
    free(p->g_lrs);
    free(p->g_T);
    free(p->ys);
    p->rows = p->row0 = p->perm = p->src = NULL;
    p->traj = p->images = p->xs = p->g_xs = p->g_img = NULL;
    p->lrs = p->g_lrs = p->g_T = NULL;
    p->labels = p->ys = NULL;
    p->unroll = NULL;
    p->n_exp = 0;
    p->started = 0;
}

static void destroy(void *self)
{
    tmatch *p = self;
    if (!p)
        return;
    free_state(p);
    free(p->expert_dir);
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

/* A finite double > lo (or >= lo when closed), below hi when hi > lo. */
static int get_num(const qd_host *h, const char *key, double lo, int closed,
                   double hi, double *out)
{
    double v = h->get_double(h, key);
    int ok = isfinite(v) && (closed ? v >= lo : v > lo) && (hi <= lo || v < hi);
    if (!ok) {
        char fmt[96];
        if (hi > lo)
            snprintf(fmt, sizeof fmt, "'%%s' must be in %c%g, %g), got %%g",
                     closed ? '[' : '(', lo, hi);
        else
            snprintf(fmt, sizeof fmt, "'%%s' must be a finite number %s %g, "
                     "got %%g", closed ? ">=" : ">", lo);
        return bad(h, key, fmt, v);
    }
    *out = v;
    return QD_OK;
}

static int create(const qd_host *h, void **self)
{
    *self = NULL;
    tmatch *p = calloc(1, sizeof *p);
    if (!p)
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    p->host = h;
    int rc;
    size_t iters = 0;
    if ((rc = get_count(h, "images_per_class", 1, 100000, &p->ipc)) ||
        (rc = get_count(h, "experts", 1, 100000, &p->n_experts_cfg)) ||
        (rc = get_count(h, "expert_epochs", 1, 1000000, &p->expert_epochs)) ||
        (rc = get_count(h, "expert_batch_size", 1, 1 << 24,
                        &p->expert_batch)) ||
        (rc = get_count(h, "syn_steps", 1, 100000, &p->syn_steps)) ||
        (rc = get_count(h, "expert_steps", 1, 1000000, &p->expert_steps)) ||
        (rc = get_count(h, "max_start_epoch", 1, 1000000, &p->max_start)) ||
        (rc = get_count(h, "batch_syn", 0, 1 << 24, &p->batch_cfg)) ||
        (rc = get_count(h, "eval_updates", 1, 10000000,
                        &p->eval_updates)) ||
        (rc = get_count(h, "iterations", 1, 1LL << 40, &iters)) ||
        (rc = get_num(h, "lr_img", 0.0, 0, 0.0, &p->lr_img)) ||
        (rc = get_num(h, "lr_lr", 0.0, 1, 0.0, &p->lr_lr)) ||
        (rc = get_num(h, "syn_lr_min", 0.0, 1, 0.0, &p->syn_lr_min)) ||
        (rc = get_num(h, "momentum", 0.0, 1, 1.0, &p->momentum)) ||
        (rc = get_num(h, "fd_eps", 0.0, 0, 0.1, &p->fd_eps)) ||
        (rc = get_num(h, "clip_grad", 0.0, 1, 0.0, &p->clip_grad)) ||
        (rc = get_num(h, "clip_grad_lr", 0.0, 1, 0.0, &p->clip_grad_lr)) ||
        (rc = get_num(h, "expert_lr", 0.0, 0, 0.0, &p->expert_lr)) ||
        (rc = get_num(h, "expert_momentum", 0.0, 1, 1.0,
                      &p->expert_momentum)) ||
        (rc = get_num(h, "expert_weight_decay", 0.0, 1, 0.0, &p->expert_wd)))
        goto fail;
    p->iterations = iters;
    p->init_real = strcmp(h->get_string(h, "init"), "real") == 0;
    p->syn_lr_init = h->get_double(h, "syn_lr_init");
    rc = QD_ERR_INVALID;
    if (!(p->syn_lr_init > p->syn_lr_min && isfinite(p->syn_lr_init))) {
        h->node_error(h, cfg_node(h, "syn_lr_init"), QD_ERR_INVALID,
                      "'syn_lr_init' (%g) must be a finite number > "
                      "syn_lr_min (%g)", p->syn_lr_init, p->syn_lr_min);
        goto fail;
    }
    if (h->has(h, "expert_dir")) {
        const char *d = h->get_string(h, "expert_dir");
        if (!d || !*d) {
            h->node_error(h, cfg_node(h, "expert_dir"), QD_ERR_INVALID,
                          "'expert_dir' must name a directory");
            goto fail;
        }
        if (!(p->expert_dir = h->resolve_path(h, d))) {
            rc = h->error(h, QD_ERR_NOMEM, "out of memory");
            goto fail;
        }
    } else if (p->expert_epochs < p->max_start - 1 + p->expert_steps) {
        h->node_error(h, cfg_node(h, "expert_epochs"), QD_ERR_INVALID,
                      "'expert_epochs' (%zu) must be >= max_start_epoch - 1 "
                      "+ expert_steps = %zu: the last start epoch's target "
                      "lies beyond the trajectory", p->expert_epochs,
                      p->max_start - 1 + p->expert_steps);
        goto fail;
    }
    *self = p;
    return QD_OK;
fail:
    destroy(p);
    return rc;
}

/* ---- experts ---- */

static int oom(const tmatch *p)
{
    return p->host->error(p->host, QD_ERR_NOMEM, "out of memory");
}

static int all_finite(const double *v, size_t n)
{
    int ok = 1;
    for (size_t i = 0; i < n; i++)
        ok &= isfinite(v[i]) != 0;
    return ok;
}

/* Rows an expert must have: the last start epoch plus the matched span. */
static size_t rows_needed(const tmatch *p)
{
    return p->max_start + p->expert_steps;
}

/* Append an expert of `rows` rows (copied from data) to the set. */
static int add_expert(tmatch *p, const double *data, size_t rows)
{
    const size_t P = p->n_params, at = p->n_exp ? p->row0[p->n_exp - 1] +
                                                  p->rows[p->n_exp - 1] : 0;
    size_t *r = realloc(p->rows, (p->n_exp + 1) * sizeof *r);
    if (!r)
        return oom(p);
    p->rows = r;
    size_t *r0 = realloc(p->row0, (p->n_exp + 1) * sizeof *r0);
    if (!r0)
        return oom(p);
    p->row0 = r0;
    if (at + rows > SIZE_MAX / sizeof(double) / P)
        return oom(p);
    double *t = realloc(p->traj, (at + rows) * P * sizeof *t);
    if (!t)
        return oom(p);
    p->traj = t;
    memcpy(t + at * P, data, rows * P * sizeof *t);
    p->rows[p->n_exp] = rows;
    p->row0[p->n_exp] = at;
    p->n_exp++;
    return QD_OK;
}

/* Read and check one trajectory file (rows x n_params, finite). */
static int read_traj(tmatch *p, const char *path, size_t want_rows, qd_npy *a)
{
    const qd_host *h = p->host;
    qd_error e = {0};
    if (qd_npy_read(path, a, &e))
        return h->error(h, e.code ? e.code : QD_ERR_FORMAT,
                        "expert trajectory %s: %s", path, e.msg);
    int rc = QD_OK;
    if (a->dtype != QD_NPY_F8 || a->ndim != 2)
        rc = h->error(h, QD_ERR_FORMAT, "expert trajectory %s: expected a 2-d "
                      "float64 array (epochs+1 x parameters), got %zu-d '%s'",
                      path, a->ndim, qd_npy_dtype_descr(a->dtype));
    else if (a->shape[1] != p->n_params)
        rc = h->error(h, QD_ERR_FORMAT, "expert trajectory %s: rows of %zu "
                      "parameters; the model has %zu (another model?)", path,
                      a->shape[1], p->n_params);
    else if (want_rows ? a->shape[0] != want_rows
                       : a->shape[0] < rows_needed(p))
        rc = h->error(h, QD_ERR_FORMAT, "expert trajectory %s: %zu rows "
                      "(epochs + 1); %s %zu (max_start_epoch - 1 + "
                      "expert_steps + 1)", path, a->shape[0],
                      want_rows ? "expert_epochs + 1 =" : "matching needs >=",
                      want_rows ? want_rows : rows_needed(p));
    else if (!all_finite(a->data, a->count))
        rc = h->error(h, QD_ERR_FORMAT, "expert trajectory %s: holds "
                      "non-finite values", path);
    if (rc)
        qd_npy_free(a);
    return rc;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* trajectory*.npy of expert_dir, in name order. */
static int load_expert_dir(tmatch *p)
{
    const qd_host *h = p->host;
    DIR *d = opendir(p->expert_dir);
    if (!d)
        return h->node_error(h, cfg_node(h, "expert_dir"), QD_ERR_IO,
                             "expert_dir '%s': %s", p->expert_dir,
                             strerror(errno));
    char **names = NULL;
    size_t n = 0;
    int rc = QD_OK;
    struct dirent *de;
    while (!rc && (de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 14 || strncmp(de->d_name, "trajectory", 10) != 0 ||
            strcmp(de->d_name + len - 4, ".npy") != 0)
            continue;
        char **nn = realloc(names, (n + 1) * sizeof *nn);
        if (!nn || !(nn[n] = strdup(de->d_name))) {
            if (nn)
                names = nn;
            rc = oom(p);
            break;
        }
        names = nn;
        n++;
    }
    closedir(d);
    if (!rc && n == 0)
        rc = h->node_error(h, cfg_node(h, "expert_dir"), QD_ERR_INVALID,
                           "expert_dir '%s' holds no trajectory*.npy files "
                           "(write them with `qdistill train` and "
                           "train.save_trajectory: true)", p->expert_dir);
    if (!rc)
        qsort(names, n, sizeof *names, name_cmp);
    for (size_t i = 0; !rc && i < n; i++) {
        size_t len = strlen(p->expert_dir) + strlen(names[i]) + 2;
        char *path = malloc(len);
        if (!path) {
            rc = oom(p);
            break;
        }
        snprintf(path, len, "%s/%s", p->expert_dir, names[i]);
        qd_npy a;
        if (!(rc = read_traj(p, path, 0, &a))) {
            rc = add_expert(p, a.data, a.shape[0]);
            qd_npy_free(&a);
        }
        free(path);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    if (!rc)
        h->log(h, QD_LOG_INFO, "%zu expert trajectories from %s", p->n_exp,
               p->expert_dir);
    if (!rc && h->has(h, "experts") && p->n_experts_cfg != p->n_exp)
        h->log(h, QD_LOG_WARN, "'experts: %zu' is ignored: expert_dir "
               "supplies %zu trajectories", p->n_experts_cfg, p->n_exp);
    return rc;
}

typedef struct expert_progress {
    const qd_host *h;
    size_t expert, experts;
} expert_progress;

static int expert_progress_fn(const qd_train_progress *pr, void *user)
{
    const expert_progress *ep = user;
    if (pr->end_of_epoch)
        ep->h->log(ep->h, QD_LOG_INFO, "expert %zu/%zu: epoch %zu/%zu  loss "
                   "%.4f  train acc %.4f", ep->expert + 1, ep->experts,
                   pr->epoch + 1, pr->epochs, pr->loss, pr->acc);
    return ep->h->should_stop ? ep->h->should_stop(ep->h) : 0;
}

static const char *ctx_run_dir(const qd_distill_ctx *ctx)
{
    if (ctx->struct_size < offsetof(qd_distill_ctx, run_dir) +
                               sizeof ctx->run_dir)
        return NULL;
    return ctx->run_dir;
}

/* Train (or reuse from <run_dir>/experts) n_experts_cfg experts. */
static int train_experts(tmatch *p, const qd_distill_ctx *ctx)
{
    const qd_host *h = p->host;
    const size_t P = p->n_params, R = p->expert_epochs + 1;
    const char *run_dir = ctx_run_dir(ctx);
    char *dir = NULL;
    qd_error e = {0};
    int rc = QD_OK;
    if (run_dir) {
        size_t len = strlen(run_dir) + 9;
        if (!(dir = malloc(len)))
            return oom(p);
        snprintf(dir, len, "%s/experts", run_dir);
        if (qd_mkdir_p(dir, &e)) {
            free(dir);
            return h->error(h, e.code, "experts: %s", e.msg);
        }
    } else {
        h->log(h, QD_LOG_INFO, "no run directory: the %zu expert "
               "trajectories are kept in memory only", p->n_experts_cfg);
    }
    qd_train_config cfg;
    qd_train_config_default(&cfg);
    cfg.optimizer = QD_OPT_SGD;
    cfg.lr = p->expert_lr;
    cfg.momentum = p->expert_momentum;
    cfg.weight_decay = p->expert_wd;
    cfg.epochs = p->expert_epochs;
    cfg.batch_size = p->expert_batch;
    cfg.save_trajectory = 1;
    double *w0 = malloc(P * sizeof *w0);
    char *path = dir ? malloc(strlen(dir) + 40) : NULL;
    if (!w0 || (dir && !path))
        rc = oom(p);
    double secs = 0.0;
    size_t trained = 0;
    for (size_t i = 0; !rc && i < p->n_experts_cfg; i++) {
        /* drawn whether trained or loaded: the streams end up the same */
        if ((rc = qd_model_init_params(ctx->model, ctx->init_rng, w0, &e))) {
            rc = h->error(h, rc, "expert %zu: %s", i, e.msg);
            break;
        }
        uint64_t s_hi = qd_rng_u32(ctx->rng), s_lo = qd_rng_u32(ctx->rng);
        qd_rng shuf;
        qd_rng_seed(&shuf, s_hi << 32 | s_lo, 0x7472616aULL + i);
        if (path) {
            snprintf(path, strlen(dir) + 40, "%s/trajectory_%zu.npy", dir,
                     i);
            FILE *f = fopen(path, "rb");
            if (f) {
                fclose(f);
                qd_npy a;
                if ((rc = read_traj(p, path, R, &a)))
                    break;
                if (memcmp(a.data, w0, P * sizeof *w0) != 0) {
                    qd_npy_free(&a);
                    rc = h->error(h, QD_ERR_FORMAT, "expert trajectory %s "
                                  "does not start from the initialisation "
                                  "this run draws for expert %zu (another "
                                  "seed or model?); delete it to retrain",
                                  path, i);
                    break;
                }
                rc = add_expert(p, a.data, R);
                qd_npy_free(&a);
                h->log(h, QD_LOG_INFO, "expert %zu/%zu: reusing %s", i + 1,
                       p->n_experts_cfg, path);
                continue;
            }
        }
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        expert_progress ep = {h, i, p->n_experts_cfg};
        qd_train_result res;
        rc = qd_train_run(ctx->model, w0, ctx->train, NULL, &cfg, &shuf,
                          expert_progress_fn, &ep, &res, &e);
        qd_model_set_training(ctx->model, 0);
        if (!rc && (res.epochs_done != p->expert_epochs || !res.trajectory))
            rc = qd_error_set(&e, QD_ERR_INTERNAL, "the trajectory is "
                              "incomplete (%zu epochs)", res.epochs_done);
        if (rc) {
            qd_train_result_free(&res);
            rc = h->error(h, rc, "training expert %zu: %s%s", i, e.msg,
                          rc == QD_ERR_INTERRUPTED && dir
                              ? "; the experts trained so far are saved and "
                                "reused when the run is resumed"
                              : "");
            break;
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        secs += (double)(t1.tv_sec - t0.tv_sec) +
                1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        trained++;
        if (path) {
            const size_t shape[2] = {R, P};
            if ((rc = qd_npy_write(path, QD_NPY_F8, shape, 2, res.trajectory,
                                   &e))) {
                qd_train_result_free(&res);
                rc = h->error(h, rc, "saving expert %zu: %s", i, e.msg);
                break;
            }
        }
        rc = add_expert(p, res.trajectory, R);
        h->log(h, QD_LOG_INFO, "expert %zu/%zu trained: final train loss "
               "%.4f, acc %.4f%s%s", i + 1, p->n_experts_cfg,
               res.final_train_loss, res.final_train_acc,
               path ? ", saved to " : "", path ? path : "");
        qd_train_result_free(&res);
    }
    if (!rc && trained)
        h->log(h, QD_LOG_INFO, "trained %zu experts x %zu epochs in %.1f s",
               trained, p->expert_epochs, secs);
    free(w0);
    free(path);
    free(dir);
    return rc;
}

/* FNV-1a over the trajectories' bytes: a checkpoint names its experts. */
static uint64_t hash_bytes(const void *data, size_t len, uint64_t h)
{
    const unsigned char *c = data;
    for (size_t i = 0; i < len; i++) {
        h ^= c[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* ---- start ---- */

/* Real images of each class: ipc distinct draws per class when the class
 * has that many, else with replacement. */
static int init_real_images(tmatch *p, const qd_distill_ctx *ctx)
{
    const qd_dataset *d = ctx->train;
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
        for (size_t k = 0; k < p->ipc; k++) {
            size_t pick;
            if (cnt >= p->ipc) {   /* partial Fisher-Yates: distinct */
                size_t j = k + qd_rng_bounded(ctx->rng, (uint32_t)(cnt - k));
                size_t t = idx[k];
                idx[k] = idx[j];
                idx[j] = t;
                pick = idx[k];
            } else {
                pick = idx[qd_rng_bounded(ctx->rng, (uint32_t)cnt)];
            }
            memcpy(p->images + (c * p->ipc + k) * p->in_size,
                   d->images + pick * p->in_size,
                   p->in_size * sizeof *p->images);
        }
    }
    free(idx);
    return QD_OK;
}

static int start(void *self, const qd_distill_ctx *ctx)
{
    tmatch *p = self;
    const qd_host *h = p->host;
    free_state(p);
    p->broken = 0;
    int crc = qd_distill_check_ctx(h, ctx, offsetof(qd_distill_ctx, run_dir), 0);
    if (crc)
        return crc;
    const qd_dataset *d = ctx->train;
    qd_model *m = ctx->model;
    p->n_params = qd_model_n_params(m);
    p->in_size = qd_model_input_size(m);
    p->classes = qd_model_n_classes(m);
    if (p->n_params == 0)
        return h->error(h, QD_ERR_INVALID, "start: %zu training images and "
                        "%zu parameters: nothing this distiller can match",
                        d->n, p->n_params);
    p->channels = d->channels;
    p->height = d->height;
    p->width = d->width;
    p->n_train = d->n;
    p->n_syn = p->classes * p->ipc;
    p->n_img = p->n_syn * p->in_size;
    p->batch = p->batch_cfg ? p->batch_cfg : p->n_syn;
    if (p->batch > p->n_syn)
        return h->node_error(h, cfg_node(h, "batch_syn"), QD_ERR_INVALID,
                             "'batch_syn' (%zu) exceeds the %zu synthetic "
                             "images (classes x images_per_class)", p->batch,
                             p->n_syn);

    const int full = p->batch == p->n_syn;
    const size_t N = p->syn_steps;
    qd_error e = {0};
    p->images = malloc(p->n_img * sizeof *p->images);
    p->labels = malloc(p->n_syn * sizeof *p->labels);
    p->perm = malloc(p->n_syn * sizeof *p->perm);
    p->g_img = malloc(p->n_img * sizeof *p->g_img);
    p->lrs = malloc(N * sizeof *p->lrs);
    p->g_lrs = malloc(N * sizeof *p->g_lrs);
    p->g_T = malloc(p->n_params * sizeof *p->g_T);
    if (!full) {   /* per-step copies of the chosen images */
        p->xs = malloc(N * p->batch * p->in_size * sizeof *p->xs);
        p->g_xs = malloc(N * p->batch * p->in_size * sizeof *p->g_xs);
        p->ys = malloc(N * p->batch * sizeof *p->ys);
        p->src = malloc(N * p->batch * sizeof *p->src);
    }
    if (!p->images || !p->labels || !p->perm || !p->g_img || !p->lrs ||
        !p->g_lrs || !p->g_T ||
        (!full && (!p->xs || !p->g_xs || !p->ys || !p->src))) {
        free_state(p);
        return oom(p);
    }
    if (qd_sgd_init(&p->opt_img, p->n_img, p->momentum, 0.0, &e) ||
        qd_sgd_init(&p->opt_lr, 1, p->momentum, 0.0, &e) ||
        qd_unroll_create(m, N, p->batch, &p->unroll, &e)) {
        free_state(p);
        return h->error(h, e.code, "start: %s", e.msg);
    }
    for (size_t c = 0; c < p->classes; c++)
        for (size_t i = 0; i < p->ipc; i++)
            p->labels[c * p->ipc + i] = (int32_t)c;

    int rc = p->expert_dir ? load_expert_dir(p) : train_experts(p, ctx);
    if (rc) {
        free_state(p);
        return rc;
    }
    p->traj_hash = 0xcbf29ce484222325ULL;
    for (size_t x = 0; x < p->n_exp; x++) {
        uint64_t r = p->rows[x];
        p->traj_hash = hash_bytes(&r, sizeof r, p->traj_hash);
    }
    p->traj_hash = hash_bytes(p->traj, (p->row0[p->n_exp - 1] +
                                        p->rows[p->n_exp - 1]) *
                                           p->n_params * sizeof *p->traj,
                              p->traj_hash);

    if (p->init_real) {
        if ((rc = init_real_images(p, ctx))) {
            free_state(p);
            return rc;
        }
    } else {
        for (size_t i = 0; i < p->n_img; i++)
            p->images[i] = qd_rng_normal(ctx->rng);
    }
    p->syn_lr = p->syn_lr_init;
    p->started = 1;
    return QD_OK;
}

static uint64_t n_iterations(void *self)
{
    const tmatch *p = self;
    return p->iterations;
}

/* ---- one outer iteration ---- */

/* Step t's images: consecutive batch-sized chunks of a permutation,
 * redrawn when fewer than a batch remain. Fills xs, ys and src (the image
 * every copied slot came from). */
static void student_batches(tmatch *p, qd_rng *rng)
{
    size_t *src = p->src;
    const size_t N = p->syn_steps, b = p->batch, S = p->in_size;
    size_t pos = p->n_syn;
    for (size_t t = 0; t < N; t++) {
        if (pos + b > p->n_syn) {
            for (size_t i = 0; i < p->n_syn; i++)
                p->perm[i] = i;
            qd_rng_shuffle(rng, p->perm, p->n_syn);
            pos = 0;
        }
        for (size_t j = 0; j < b; j++) {
            size_t k = p->perm[pos + j];
            src[t * b + j] = k;
            memcpy(p->xs + (t * b + j) * S, p->images + k * S,
                   S * sizeof *p->xs);
            p->ys[t * b + j] = p->labels[k];
        }
        pos += b;
    }
}

static int iterate(void *self, const qd_distill_ctx *ctx, uint64_t it,
                   qd_distill_metrics *mt)
{
    tmatch *p = self;
    const qd_host *h = p->host;
    if (!p->started || p->broken)
        return h->error(h, QD_ERR_INVALID, p->broken
                        ? "iterate: the state is incomplete after a failed "
                          "restore"
                        : "iterate called before start");
    if (!ctx || !ctx->model || !ctx->rng ||
        qd_model_n_params(ctx->model) != p->n_params)
        return h->error(h, QD_ERR_INVALID,
                        "iterate: the context differs from the one given to "
                        "start");
    qd_model *m = ctx->model;
    const size_t P = p->n_params, N = p->syn_steps, b = p->batch;
    const int full = b == p->n_syn;
    const unsigned long long itn = (unsigned long long)it;
    qd_error e = {0};
    int rc;
    qd_model_set_training(m, 0);

    const size_t ex = qd_rng_bounded(ctx->rng, (uint32_t)p->n_exp);
    const size_t s0 = qd_rng_bounded(ctx->rng, (uint32_t)p->max_start);
    const double *w_start = p->traj + (p->row0[ex] + s0) * P;
    const double *w_target = w_start + p->expert_steps * P;
    if (!full)
        student_batches(p, ctx->rng);
    for (size_t t = 0; t < N; t++)
        p->lrs[t] = p->syn_lr;

    const double *wN;
    rc = full ? qd_unroll_forward(p->unroll, w_start, 1, p->n_syn, p->images,
                                  p->labels, p->lrs, &wN, &e)
              : qd_unroll_forward(p->unroll, w_start, N, b, p->xs, p->ys,
                                  p->lrs, &wN, &e);
    if (rc)
        return rc == QD_ERR_NUMERIC
                   ? h->error(h, rc, "iteration %llu: the student steps on "
                              "the synthetic set diverged (not finite): %s; "
                              "try a smaller syn_lr_init or lr_lr", itn,
                              e.msg)
                   : h->error(h, rc, "iteration %llu: %s", itn, e.msg);
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < P; i++) {
        double a = wN[i] - w_target[i], c = w_start[i] - w_target[i];
        num += a * a;
        den += c * c;
    }
    if (!(den > 0.0) || !isfinite(den))
        return h->error(h, QD_ERR_NUMERIC, "iteration %llu: expert %zu does "
                        "not move between epochs %zu and %zu (|w_start - "
                        "w_target|^2 = %g): the matching loss is undefined",
                        itn, ex, s0, s0 + p->expert_steps, den);
    const double loss = num / den;
    if (!isfinite(loss))
        return h->error(h, QD_ERR_NUMERIC, "iteration %llu: the matching "
                        "loss is not finite (%g); the student diverged, try "
                        "a smaller syn_lr_init or lr_lr", itn, loss);
    for (size_t i = 0; i < P; i++)
        p->g_T[i] = 2.0 * (wN[i] - w_target[i]) / den;

    double *gx = full ? p->g_img : p->g_xs;
    memset(gx, 0, (full ? p->n_img : N * b * p->in_size) * sizeof *gx);
    memset(p->g_lrs, 0, N * sizeof *p->g_lrs);
    if ((rc = qd_unroll_backward(p->unroll, p->g_T, gx, p->g_lrs, NULL,
                                 p->fd_eps, &e)))
        return h->error(h, rc, "iteration %llu: meta-gradient: %s", itn,
                        e.msg);
    if (!full) {   /* scatter the per-step gradients back to their images */
        const size_t S = p->in_size;
        memset(p->g_img, 0, p->n_img * sizeof *p->g_img);
        for (size_t k = 0; k < N * b; k++) {
            double *dst = p->g_img + p->src[k] * S;
            const double *g = p->g_xs + k * S;
            for (size_t j = 0; j < S; j++)
                dst[j] += g[j];
        }
    }
    double g_lr = 0.0;
    for (size_t t = 0; t < N; t++)
        g_lr += p->g_lrs[t];
    const double g_lr_raw = g_lr;
    if (!all_finite(p->g_img, p->n_img) || !isfinite(g_lr))
        return h->error(h, QD_ERR_NUMERIC,
                        "iteration %llu: the meta-gradient is not finite "
                        "(%s); the synthetic set was not updated", itn,
                        isfinite(g_lr) ? "images" : "step size");

    const double gnorm = qd_clip_grad_norm(p->g_img, p->n_img, p->clip_grad);
    qd_clip_grad_norm(&g_lr, 1, p->clip_grad_lr);
    const double lr_used = p->syn_lr;
    qd_sgd_step(&p->opt_img, p->images, p->g_img, p->lr_img);
    qd_sgd_step(&p->opt_lr, &p->syn_lr, &g_lr, p->lr_lr);
    if (!all_finite(p->images, p->n_img) || !isfinite(p->syn_lr)) {
        p->broken = 1;
        return h->error(h, QD_ERR_NUMERIC,
                        "iteration %llu: the SGD step made the synthetic set "
                        "non-finite (try a smaller lr_img or lr_lr)", itn);
    }
    if (p->syn_lr < p->syn_lr_min)
        p->syn_lr = p->syn_lr_min;

    if (mt) {
        double ss = 0.0;
        for (size_t i = 0; i < p->n_img; i++)
            ss += p->images[i] * p->images[i];
        mt->loss = loss;
        mt->lr_mean = mt->lr_min = mt->lr_max = lr_used;
        mt->extra[0] = gnorm;
        mt->extra[1] = g_lr_raw;
        mt->extra[2] = (double)s0;
        mt->extra[3] = sqrt(ss / (double)p->n_img);
    }
    return QD_OK;
}

/* ---- result, save, restore ---- */

static int result(void *self, qd_synset *out)
{
    tmatch *p = self;
    const qd_host *h = p->host;
    if (!p->started)
        return h->error(h, QD_ERR_INVALID, "result requested before start");
    qd_error e;
    if (qd_synset_alloc(out, 1, p->eval_updates, p->n_syn, p->channels,
                        p->height, p->width, p->classes, p->eval_updates, &e))
        return h->error(h, e.code, "result: %s", e.msg);
    memcpy(out->images, p->images, p->n_img * sizeof *out->images);
    memcpy(out->labels, p->labels, p->n_syn * sizeof *out->labels);
    for (size_t t = 0; t < p->eval_updates; t++)
        out->lrs[t] = p->syn_lr;
    out->init_mode = QD_INIT_RANDOM;
    return QD_OK;
}

#define N_FP 7

static void fingerprint(const tmatch *p, uint64_t fp[N_FP])
{
    fp[0] = p->n_syn;
    fp[1] = p->in_size;
    fp[2] = p->n_params;
    fp[3] = p->syn_steps;
    fp[4] = p->batch;
    fp[5] = p->n_exp;
    fp[6] = p->traj_hash;
}

/* Layout: magic, fingerprint, images, lr, then per optimiser its step
 * count and (momentum > 0) velocity. */
static int save(void *self, qd_blob *b)
{
    tmatch *p = self;
    const qd_host *h = p->host;
    if (!p->started)
        return h->error(h, QD_ERR_INVALID, "save called before start");
    uint64_t fp[N_FP];
    fingerprint(p, fp);
    qd_blob_put_u32(b, STATE_MAGIC);
    qd_blob_put_u64_array(b, fp, N_FP);
    qd_blob_put_f64_array(b, p->images, p->n_img);
    qd_blob_put_f64(b, p->syn_lr);
    qd_blob_put_u64(b, p->opt_img.steps);
    if (p->opt_img.velocity)
        qd_blob_put_f64_array(b, p->opt_img.velocity, p->n_img);
    qd_blob_put_u64(b, p->opt_lr.steps);
    if (p->opt_lr.velocity)
        qd_blob_put_f64(b, p->opt_lr.velocity[0]);
    if (b->failed)
        return h->error(h, QD_ERR_NOMEM, "save: out of memory");
    return QD_OK;
}

static int restore(void *self, const void *data, size_t len)
{
    tmatch *p = self;
    const qd_host *h = p->host;
    if (!p->started)
        return h->error(h, QD_ERR_INVALID, "restore called before start");
    qd_blob_reader r;
    qd_blob_reader_init(&r, data, len);
    qd_error e;
    uint32_t magic;
    uint64_t fp[N_FP], want[N_FP], si, sl;
    double lr, vl = 0.0;
    if (qd_blob_get_u32(&r, &magic, &e))
        return h->error(h, QD_ERR_FORMAT, "restore: %s", e.msg);
    if (magic != STATE_MAGIC)
        return h->error(h, QD_ERR_FORMAT,
                        "restore: not a trajectory_matching state");
    if (qd_blob_get_u64_array(&r, fp, N_FP, &e))
        return h->error(h, QD_ERR_FORMAT, "restore: %s", e.msg);
    fingerprint(p, want);
    static const char *const names[N_FP] = {
        "synthetic images", "input size", "parameters", "student steps",
        "images per student step", "experts", "expert-trajectory hash"};
    for (int i = 0; i < N_FP; i++)
        if (fp[i] != want[i])
            return h->error(h, QD_ERR_FORMAT,
                            "restore: the checkpoint has %s %llu, this run "
                            "%llu%s", names[i], (unsigned long long)fp[i],
                            (unsigned long long)want[i],
                            i == N_FP - 1 ? " (the expert trajectories "
                                            "changed since it was written)"
                                          : "");
    /* From here on a failure leaves a half-written state: mark it. */
    p->broken = 1;
    if (qd_blob_get_f64_array(&r, p->images, p->n_img, &e) ||
        qd_blob_get_f64(&r, &lr, &e) || qd_blob_get_u64(&r, &si, &e) ||
        (p->opt_img.velocity &&
         qd_blob_get_f64_array(&r, p->opt_img.velocity, p->n_img, &e)) ||
        qd_blob_get_u64(&r, &sl, &e) ||
        (p->opt_lr.velocity && qd_blob_get_f64(&r, &vl, &e)) ||
        qd_blob_reader_end(&r, &e))
        return h->error(h, QD_ERR_FORMAT, "restore: %s", e.msg);
    if (!all_finite(p->images, p->n_img) || !isfinite(lr) ||
        lr < p->syn_lr_min)
        return h->error(h, QD_ERR_FORMAT, "restore: the checkpointed "
                        "synthetic set or step size is not valid");
    p->syn_lr = lr;
    p->opt_img.steps = si;
    p->opt_lr.steps = sl;
    if (p->opt_lr.velocity)
        p->opt_lr.velocity[0] = vl;
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
     "initial images: real = random training images of each class (MTT), "
     "noise = N(0,1) in normalised pixel space"},
    INT_P("iterations", "5000", 1, "outer iterations"),
    INT_P("syn_steps", "10", 1,
          "student steps N on synthetic minibatches per iteration"),
    INT_P("expert_steps", "2", 1,
          "expert epochs M the N student steps are matched to"),
    INT_P("max_start_epoch", "5", 1,
          "start epochs are drawn uniformly from 0 .. max_start_epoch - 1"),
    INT_P("batch_syn", "0", 0,
          "synthetic images per student step (0 = all; a permutation is cut "
          "into full batches)"),
    DBL_P("lr_img", MIN_, "1000", 0, 0,
          "SGD learning rate of the images (> 0)"),
    DBL_P("lr_lr", MIN_, "1e-5", 0, 0,
          "SGD learning rate of the student step size (0 = fixed)"),
    DBL_P("syn_lr_init", MIN_, "0.01", 0, 0,
          "initial student step size (> syn_lr_min)"),
    DBL_P("syn_lr_min", MIN_, "1e-6", 0, 0,
          "the learned step size is kept >= this after every update"),
    DBL_P("momentum", MIN_ | MAX_, "0.5", 0, 1,
          "SGD momentum of images and step size, in [0, 1)"),
    DBL_P("clip_grad", MIN_, "0.01", 0, 0,
          "global-norm clipping of the images' meta-gradient, 0 = off"),
    DBL_P("clip_grad_lr", MIN_, "10", 0, 0,
          "clipping of the step size's meta-gradient (magnitude), 0 = off"),
    INT_P("experts", "5", 1,
          "expert trajectories trained on the real training set (when no "
          "expert_dir)"),
    INT_P("expert_epochs", "10", 1,
          "epochs of each expert (>= max_start_epoch - 1 + expert_steps)"),
    DBL_P("expert_lr", MIN_, "0.01", 0, 0, "experts' SGD learning rate"),
    DBL_P("expert_momentum", MIN_ | MAX_, "0", 0, 1,
          "experts' SGD momentum, in [0, 1)"),
    DBL_P("expert_weight_decay", MIN_, "0", 0, 0, "experts' L2 penalty"),
    INT_P("expert_batch_size", "256", 1, "experts' mini-batch size"),
    {"expert_dir", QD_PARAM_STRING, 0, NULL, 0, 0, NULL, 0, NULL,
     "directory of trajectory*.npy from `qdistill train` runs with "
     "train.save_trajectory: true (relative to the manifest); when given, "
     "no experts are trained"},
    INT_P("eval_updates", "300", 1,
          "full-batch updates at the learned step size with which "
          "evaluation trains a fresh model on the set"),
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
    .extra_names = {"grad_norm", "lr_grad", "start_epoch", "image_rms"},
};

static const qd_plugin_desc desc = QD_PLUGIN_DESC_INIT(
    QD_KIND_DISTILLER, "trajectory_matching", "1.0.0",
    "dataset distillation by matching training trajectories (Cazenavette "
    "et al. 2022): student steps on synthetic images matched to expert "
    "epochs, learned step size",
    params, &vtable);

static const qd_plugin_desc *const descs[] = {&desc, NULL};

QD_PLUGIN_EXPORT const qd_plugin_desc *const *qd_plugin_entry(void)
{
    return descs;
}
