/* The `trajectory_matching` distiller plugin (MTT) and expert trajectories:
 * the recorded trajectory of qd_train_run, the meta-gradient against
 * central differences of the whole matching loss, bit-for-bit
 * save/restore, reuse of the experts a run directory holds, expert_dir
 * loading and its errors, configuration checks, `qdistill train` writing
 * trajectory.npy and a `run` that trains its experts into the run
 * directory, and distillation of a small problem that must beat random real
 * subsets of the same size. */
#include <sys/stat.h>
#include <time.h>

#include "distill_test_util.h"
#include "qdistill/manifest.h"
#include "qdistill/npy.h"
#include "qdistill/run.h"
#include "qdistill/train.h"

/* log.h and plugin.h both define qd_log_level; the test only needs this. */
QD_EXPORT void qd_log_set_file(FILE *f);

TestSuite(distill_tm, .fini = dt_teardown, .timeout = 120);

/* ---- helpers ---- */

/* n samples of K classes in D = c*h*w dims: class means m_k ~ N(0, 1),
 * samples m_k + sd N(0, 1); labels cycle. */
static void make_data(qd_dataset *d, size_t n, size_t c, size_t h, size_t w,
                      size_t K, double sd, uint64_t seed, uint64_t mseed)
{
    qd_error err = {0};
    cr_assert_eq(qd_dataset_alloc(d, n, c, h, w, K, &err), QD_OK, "%s",
                 err.msg);
    const size_t D = c * h * w;
    qd_rng mr, rng;
    qd_rng_seed(&mr, mseed, 1);
    qd_rng_seed(&rng, seed, 2);
    double *mu = dt_normal(&mr, K * D, 1.0);
    for (size_t i = 0; i < n; i++) {
        size_t k = (i * 7 + 3) % K;
        d->labels[i] = (int32_t)k;
        for (size_t j = 0; j < D; j++)
            d->images[i * D + j] = mu[k * D + j] + sd * qd_rng_normal(&rng);
    }
    free(mu);
}

static void make_tmp(char *dir, size_t len)
{
    snprintf(dir, len, "/tmp/qd_tm_XXXXXX");
    cr_assert(mkdtemp(dir));
}

static void rm_rf(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_expect_eq(system(cmd), 0);
}

static void write_bytes(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    cr_assert(f, "cannot write %s", path);
    cr_assert_eq(fwrite(data, 1, len, f), len);
    fclose(f);
}

/* An expert trajectory file's array (checked 2-d float64). */
static void read_traj(const char *path, qd_npy *a)
{
    qd_error err = {0};
    cr_assert_eq(qd_npy_read(path, a, &err), QD_OK, "%s", err.msg);
    cr_assert_eq(a->dtype, QD_NPY_F8);
    cr_assert_eq(a->ndim, 2u);
}

#define MLP_YAML                                                            \
    "layers:\n  - {type: linear, out: 5}\n  - {type: tanh}\n"                \
    "  - {type: linear, out: 3}\n"

/* ---- expert trajectories from qd_train ---- */

Test(distill_tm, train_records_the_trajectory)
{
    dt_model t;
    dt_model_make(&t, MLP_YAML, 1, 2, 3, 3, 1);
    qd_dataset tr;
    make_data(&tr, 90, 1, 2, 3, 3, 0.7, 1, 2);
    qd_error err = {0};
    qd_config *cfg;
    const char *y = "{epochs: 4, batch_size: 16, lr: 0.05, save_trajectory: "
                    "true}";
    cr_assert_eq(qd_config_load_string(y, strlen(y), "<train>", NULL, &cfg,
                                       &err), QD_OK);
    qd_train_config tc;
    cr_assert_eq(qd_train_config_read(qd_config_root(cfg), &tc, &err), QD_OK,
                 "%s", err.msg);
    cr_expect_eq(tc.save_trajectory, 1);
    const size_t P = t.n;
    double *w = malloc(P * sizeof *w);
    memcpy(w, t.w, P * sizeof *w);
    qd_rng rng;
    qd_rng_seed(&rng, 3, 4);
    qd_train_result res;
    cr_assert_eq(qd_train(t.m, w, &tr, NULL, qd_config_root(cfg), &rng, NULL,
                          NULL, &res, &err), QD_OK, "%s", err.msg);
    cr_assert_not_null(res.trajectory);
    cr_expect_eq(res.epochs_done, 4u);
    /* row 0 the initial parameters, the last row what training returned */
    cr_expect(memcmp(res.trajectory, t.w, P * sizeof *w) == 0);
    cr_expect(memcmp(res.trajectory + 4 * P, w, P * sizeof *w) == 0,
              "the last row is not the trained parameters");
    /* row 1 = an independent one-epoch training with the same stream */
    qd_train_config one = tc;
    one.epochs = 1;
    one.save_trajectory = 0;
    double *w1 = malloc(P * sizeof *w1);
    memcpy(w1, t.w, P * sizeof *w1);
    qd_rng_seed(&rng, 3, 4);
    qd_train_result r1;
    cr_assert_eq(qd_train_run(t.m, w1, &tr, NULL, &one, &rng, NULL, NULL, &r1,
                              &err), QD_OK, "%s", err.msg);
    cr_expect_null(r1.trajectory, "recorded without save_trajectory");
    cr_expect(memcmp(res.trajectory + P, w1, P * sizeof *w1) == 0,
              "row 1 is not the parameters after one epoch");
    cr_expect(dt_rel(res.trajectory + P, t.w, P) > 1e-3, "it did not move");
    qd_train_result_free(&r1);
    qd_train_result_free(&res);
    cr_expect_null(res.trajectory);
    qd_config_destroy(cfg);

    /* the default is off; a non-boolean is refused with its location */
    qd_train_config_default(&tc);
    cr_expect_eq(tc.save_trajectory, 0);
    y = "{save_trajectory: 3}";
    cr_assert_eq(qd_config_load_string(y, strlen(y), "<train>", NULL, &cfg,
                                       &err), QD_OK);
    cr_expect_neq(qd_train_config_read(qd_config_root(cfg), &tc, &err),
                  QD_OK);
    cr_expect(strstr(err.msg, "<train>:1:"), "%s", err.msg);
    qd_config_destroy(cfg);
    free(w);
    free(w1);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}

/* ---- configuration ---- */

Test(distill_tm, config_errors_name_the_key)
{
    static const struct {
        const char *yaml, *key;
    } cases[] = {
        {"{plugin: trajectory_matching, expert_epochs: 4, max_start_epoch: 4, "
         "expert_steps: 2}", "expert_epochs"},
        {"{plugin: trajectory_matching, lr_img: 0}", "lr_img"},
        {"{plugin: trajectory_matching, lr_lr: -1}", "lr_lr"},
        {"{plugin: trajectory_matching, momentum: 1}", "momentum"},
        {"{plugin: trajectory_matching, syn_lr_init: 0.001, syn_lr_min: "
         "0.01}", "syn_lr_init"},
        {"{plugin: trajectory_matching, expert_momentum: 1.5}",
         "expert_momentum"},
        {"{plugin: trajectory_matching, syn_steps: 0}", "syn_steps"},
        {"{plugin: trajectory_matching, expert_dir: ''}", "expert_dir"},
        {"{plugin: trajectory_matching, syn_step: 3}", "syn_steps"},
        {"{plugin: trajectory_matching, eval_updates: 0}", "eval_updates"},
        {"{plugin: trajectory_matching, clip_grad: -1}", "clip_grad"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        dt_dist d;
        qd_error err = {0};
        cr_expect_neq(dt_dist_try(&d, cases[i].yaml, &err), QD_OK, "%s",
                      cases[i].yaml);
        cr_expect(strstr(err.msg, cases[i].key), "%s: '%s'", cases[i].yaml,
                  err.msg);
    }
    /* batch_syn larger than the synthetic set: at start */
    dt_model t;
    dt_model_make(&t, MLP_YAML, 1, 2, 3, 3, 1);
    qd_dataset tr;
    make_data(&tr, 30, 1, 2, 3, 3, 0.7, 1, 2);
    dt_dist d;
    dt_dist_make(&d, "{plugin: trajectory_matching, images_per_class: 2, "
                     "batch_syn: 7, experts: 1, expert_epochs: 6}");
    dt_ctx c;
    dt_ctx_make(&c, t.m, &tr, t.w, 1);
    int rc = d.vt->start(d.self, &c.ctx);
    cr_expect_eq(rc, QD_ERR_INVALID);
    cr_expect(strstr(dt_dist_msg(&d, rc), "batch_syn"), "%s",
              dt_dist_msg(&d, rc));
    dt_dist_free(&d);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}

/* ---- the meta-gradient against central differences ---- */

/* The matching loss as the plugin defines it, from first-order gradients
 * only: N steps w <- w - lr grad l(batch_t; w) from w_start on the images
 * src[t*b .. t*b+b) of xs, then |w_N - w_tgt|^2 / |w_start - w_tgt|^2. */
static double match_loss(qd_model *m, const double *w_start,
                         const double *w_tgt, size_t N, size_t b,
                         const size_t *src, const double *xs,
                         const int32_t *ys, double lr)
{
    const size_t P = qd_model_n_params(m), S = qd_model_input_size(m);
    double *w = malloc(P * sizeof *w), *g = malloc(P * sizeof *g);
    double *xb = malloc(b * S * sizeof *xb);
    int32_t yb[64];
    memcpy(w, w_start, P * sizeof *w);
    qd_error err = {0};
    for (size_t t = 0; t < N; t++) {
        for (size_t j = 0; j < b; j++) {
            memcpy(xb + j * S, xs + src[t * b + j] * S, S * sizeof *xb);
            yb[j] = ys[src[t * b + j]];
        }
        cr_assert_eq(qd_model_loss_grad(m, w, b, xb, yb, NULL, g, NULL, NULL,
                                        &err), QD_OK, "%s", err.msg);
        for (size_t i = 0; i < P; i++)
            w[i] -= lr * g[i];
    }
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < P; i++) {
        num += (w[i] - w_tgt[i]) * (w[i] - w_tgt[i]);
        den += (w_start[i] - w_tgt[i]) * (w_start[i] - w_tgt[i]);
    }
    free(w);
    free(g);
    free(xb);
    return num / den;
}

/* The plugin's draws of one iteration, replayed on a copy of the stream
 * (documented order: expert, start epoch, then a permutation whenever
 * fewer than batch_syn indices remain; none when batch_syn is all). */
static void replay_draws(qd_rng r, size_t n_exp, size_t max_start, size_t N,
                         size_t b, size_t n_syn, size_t *ex, size_t *s0,
                         size_t *src)
{
    *ex = qd_rng_bounded(&r, (uint32_t)n_exp);
    *s0 = qd_rng_bounded(&r, (uint32_t)max_start);
    size_t perm[64], pos = n_syn;
    for (size_t t = 0; t < N; t++) {
        if (b == n_syn) {
            for (size_t j = 0; j < b; j++)
                src[t * b + j] = j;
            continue;
        }
        if (pos + b > n_syn) {
            for (size_t i = 0; i < n_syn; i++)
                perm[i] = i;
            qd_rng_shuffle(&r, perm, n_syn);
            pos = 0;
        }
        for (size_t j = 0; j < b; j++)
            src[t * b + j] = perm[pos + j];
        pos += b;
    }
}

/* Tanh MLP (smooth), 6 synthetic images of 6 values, 3 student steps on
 * batches of 4 (two redraws, so images recur across steps), 2 experts kept
 * in a run directory. The first SGD step from zero momentum moves the
 * images by -lr_img g and the step size by -lr_lr g_lr: both must equal
 * central differences of the whole matching loss, computed by replaying
 * the iteration with first-order gradients only. */
static void check_meta_gradient(size_t batch_syn, uint64_t seed)
{
    enum { D = 6, K = 3, IPC = 2, NS = K * IPC, N = 3 };
    dt_model t;
    dt_model_make(&t, MLP_YAML, 1, 2, 3, K, seed);
    qd_dataset tr;
    make_data(&tr, 60, 1, 2, 3, K, 0.8, seed, 2);
    char dir[64];
    make_tmp(dir, sizeof dir);
    char cfgs[512];
    snprintf(cfgs, sizeof cfgs, "{plugin: trajectory_matching, "
             "images_per_class: %d, syn_steps: %d, batch_syn: %zu, "
             "experts: 2, expert_epochs: 4, expert_steps: 2, "
             "max_start_epoch: 3, expert_lr: 0.05, expert_batch_size: 10, "
             "syn_lr_init: 0.3, lr_img: 1, lr_lr: 1e-3, momentum: 0.5, "
             "clip_grad: 0, clip_grad_lr: 0, iterations: 1}", IPC, N,
             batch_syn);
    dt_dist d;
    dt_dist_make(&d, cfgs);
    dt_ctx c;
    dt_ctx_make(&c, t.m, &tr, t.w, seed);
    c.ctx.run_dir = dir;
    int rc = d.vt->start(d.self, &c.ctx);
    cr_assert_eq(rc, QD_OK, "%s", dt_dist_msg(&d, rc));
    qd_synset s0, s1;
    cr_assert_eq(d.vt->result(d.self, &s0), QD_OK);
    const size_t b = batch_syn ? batch_syn : NS;
    size_t ex, st, src[N * NS];
    replay_draws(c.rng, 2, 3, N, b, NS, &ex, &st, src);
    qd_distill_metrics mt;
    rc = d.vt->iterate(d.self, &c.ctx, 0, &mt);
    cr_assert_eq(rc, QD_OK, "%s", dt_dist_msg(&d, rc));
    cr_assert_eq(d.vt->result(d.self, &s1), QD_OK);
    cr_expect_eq((size_t)mt.extra[2], st);

    char path[128];
    snprintf(path, sizeof path, "%s/experts/trajectory_%zu.npy", dir, ex);
    qd_npy a;
    read_traj(path, &a);
    cr_assert_eq(a.shape[0], 5u);
    cr_assert_eq(a.shape[1], t.n);
    const double *traj = a.data;
    const double *ws = traj + st * t.n, *wt = traj + (st + 2) * t.n;
    const double lr = s0.lrs[0];
    cr_expect_eq(lr, 0.3);
    double L = match_loss(t.m, ws, wt, N, b, src, s0.images, s0.labels, lr);
    cr_expect(fabs(mt.loss - L) < 1e-12 * L, "loss %.17g vs %.17g", mt.loss,
              L);

    /* gradients the plugin applied */
    double g[NS * D], fd[NS * D];
    for (size_t i = 0; i < NS * D; i++)
        g[i] = (s0.images[i] - s1.images[i]) / 1.0;
    const double g_lr = (s0.lrs[0] - s1.lrs[0]) / 1e-3;
    /* central differences of the whole loss */
    double x[NS * D];
    memcpy(x, s0.images, sizeof x);
    const double hx = 1e-6;
    for (size_t i = 0; i < NS * D; i++) {
        double v = x[i];
        x[i] = v + hx;
        double lp = match_loss(t.m, ws, wt, N, b, src, x, s0.labels, lr);
        x[i] = v - hx;
        double lm = match_loss(t.m, ws, wt, N, b, src, x, s0.labels, lr);
        x[i] = v;
        fd[i] = (lp - lm) / (2 * hx);
    }
    const double hl = 1e-7;
    double fd_lr = (match_loss(t.m, ws, wt, N, b, src, x, s0.labels, lr + hl) -
                    match_loss(t.m, ws, wt, N, b, src, x, s0.labels, lr - hl)) /
                   (2 * hl);
    double rel = dt_rel(g, fd, NS * D);
    cr_log_info("batch_syn %zu: loss %.6f, |g_img| %.3e, rel err %.2e; g_lr "
                "%.6e vs %.6e", batch_syn, L, dt_norm(fd, NS * D), rel, g_lr,
                fd_lr);
    cr_expect(dt_norm(fd, NS * D) > 1e-4, "degenerate: no image gradient");
    cr_expect(rel <= 1e-5, "image meta-gradient: relative error %.3e", rel);
    cr_expect(fabs(g_lr - fd_lr) <= 1e-5 * fabs(fd_lr),
              "step-size meta-gradient %.12e vs central differences %.12e",
              g_lr, fd_lr);
    /* the metrics are the applied gradients */
    cr_expect(fabs(mt.extra[0] - dt_norm(g, NS * D)) <
              1e-8 * dt_norm(g, NS * D));
    cr_expect(fabs(mt.extra[1] - g_lr) < 1e-8 * fabs(g_lr));

    /* the same iteration clipped: the steps are the gradients scaled to
     * norm clip_grad and magnitude clip_grad_lr (up to the 1e-6 in the
     * denominator of torch's clip_grad_norm_) */
    const double cg = 0.1 * dt_norm(g, NS * D), cl = 0.1 * fabs(g_lr);
    snprintf(cfgs, sizeof cfgs, "{plugin: trajectory_matching, "
             "images_per_class: %d, syn_steps: %d, batch_syn: %zu, "
             "experts: 2, expert_epochs: 4, expert_steps: 2, "
             "max_start_epoch: 3, expert_lr: 0.05, expert_batch_size: 10, "
             "syn_lr_init: 0.3, lr_img: 1, lr_lr: 1e-3, momentum: 0.5, "
             "clip_grad: %.17g, clip_grad_lr: %.17g, iterations: 1}", IPC, N,
             batch_syn, cg, cl);
    dt_dist_free(&d);
    dt_dist_make(&d, cfgs);
    dt_ctx_make(&c, t.m, &tr, t.w, seed);
    c.ctx.run_dir = dir;
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
    rc = d.vt->iterate(d.self, &c.ctx, 0, &mt);
    cr_assert_eq(rc, QD_OK, "%s", dt_dist_msg(&d, rc));
    qd_synset_free(&s1);
    cr_assert_eq(d.vt->result(d.self, &s1), QD_OK);
    double gc[NS * D];
    for (size_t i = 0; i < NS * D; i++)
        gc[i] = 10.0 * (s0.images[i] - s1.images[i]);
    cr_expect(dt_rel(gc, g, NS * D) < 1e-5, "clipped step: %.3e",
              dt_rel(gc, g, NS * D));
    cr_expect(fabs(10.0 * (s0.lrs[0] - s1.lrs[0]) / 1e-3 - g_lr) <
              1e-5 * fabs(g_lr), "clipped lr step");
    cr_expect(fabs(mt.extra[0] - dt_norm(g, NS * D)) <
              1e-8 * dt_norm(g, NS * D), "grad_norm is the unclipped norm");
    qd_npy_free(&a);
    qd_synset_free(&s0);
    qd_synset_free(&s1);
    dt_dist_free(&d);
    rm_rf(dir);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}

Test(distill_tm, meta_gradient_matches_central_differences_minibatches)
{
    check_meta_gradient(4, 3);
}

Test(distill_tm, meta_gradient_matches_central_differences_full_batch)
{
    check_meta_gradient(0, 4);
}

/* ---- result shape ---- */

Test(distill_tm, result_replays_the_learned_step_size)
{
    dt_model t;
    dt_model_make(&t, MLP_YAML, 1, 2, 3, 3, 1);
    qd_dataset tr;
    make_data(&tr, 30, 1, 2, 3, 3, 0.7, 1, 2);
    dt_dist d;
    dt_dist_make(&d, "{plugin: trajectory_matching, images_per_class: 2, "
                     "experts: 1, expert_epochs: 7, syn_steps: 5, "
                     "expert_steps: 3, max_start_epoch: 4, syn_lr_init: 0.02, "
                     "iterations: 9}");
    dt_ctx c;
    dt_ctx_make(&c, t.m, &tr, t.w, 1);
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
    cr_expect_eq(d.vt->n_iterations(d.self), 9u);
    qd_synset s;
    cr_assert_eq(d.vt->result(d.self, &s), QD_OK);
    /* 300 full-batch updates at lr 0.02 (the default eval_updates) */
    cr_expect_eq(s.steps, 1u);
    cr_expect_eq(s.per_step, 6u);
    cr_expect_eq(s.epochs, 300u);
    cr_expect_eq(s.n_lrs, 300u);
    for (size_t i = 0; i < 300; i++)
        cr_expect_eq(s.lrs[i], 0.02);
    cr_expect_eq(s.init_mode, QD_INIT_RANDOM);
    /* labels class-major; init: real copies training images of the class */
    for (size_t i = 0; i < 6; i++) {
        cr_expect_eq(s.labels[i], (int32_t)(i / 2));
        int found = 0;
        for (size_t j = 0; j < tr.n && !found; j++)
            found = tr.labels[j] == s.labels[i] &&
                    memcmp(tr.images + j * 6, s.images + i * 6,
                           6 * sizeof(double)) == 0;
        cr_expect(found, "image %zu is not a real image of its class", i);
    }
    qd_synset_free(&s);
    dt_dist_free(&d);
    dt_dist_make(&d, "{plugin: trajectory_matching, eval_updates: 17, "
                     "experts: 1, expert_epochs: 6}");
    dt_ctx_make(&c, t.m, &tr, t.w, 1);
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
    cr_assert_eq(d.vt->result(d.self, &s), QD_OK);
    cr_expect_eq(s.n_lrs, 17u);
    cr_expect_eq(s.per_step, 3u);
    qd_synset_free(&s);
    dt_dist_free(&d);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}

/* ---- experts in the run directory ---- */

static char *slurp_log(FILE *lf)
{
    fflush(lf);
    long n = ftell(lf);
    rewind(lf);
    char *buf = calloc((size_t)n + 1, 1);
    size_t got = fread(buf, 1, (size_t)n, lf);
    buf[got] = 0;
    return buf;
}

#define REUSE_CFG                                                           \
    "{plugin: trajectory_matching, experts: 3, expert_epochs: 5, "          \
    "expert_batch_size: 8, max_start_epoch: 3, syn_steps: 2, "              \
    "iterations: 2}"

Test(distill_tm, experts_are_saved_and_reused)
{
    dt_model t;
    dt_model_make(&t, MLP_YAML, 1, 2, 3, 3, 6);
    qd_dataset tr;
    make_data(&tr, 48, 1, 2, 3, 3, 0.7, 6, 2);
    char dir[64], path[128];
    make_tmp(dir, sizeof dir);
    FILE *lf = tmpfile();
    cr_assert(lf);
    qd_log_set_file(lf);

    /* first start trains and saves */
    dt_dist d;
    dt_dist_make(&d, REUSE_CFG);
    dt_ctx c;
    dt_ctx_make(&c, t.m, &tr, t.w, 8);
    c.ctx.run_dir = dir;
    int rc = d.vt->start(d.self, &c.ctx);
    cr_assert_eq(rc, QD_OK, "%s", dt_dist_msg(&d, rc));
    qd_distill_metrics m1[2], m2[2];
    for (uint64_t it = 0; it < 2; it++)
        cr_assert_eq(d.vt->iterate(d.self, &c.ctx, it, &m1[it]), QD_OK);
    dt_dist_free(&d);
    struct stat st1[3], st2[3];
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/experts/trajectory_%d.npy", dir, i);
        cr_assert_eq(stat(path, &st1[i]), 0, "%s missing", path);
    }
    /* expert 0 starts from the first draw of the init stream */
    qd_rng ri;
    qd_rng_derive(&ri, 8, "distill.init");
    double *w0 = malloc(t.n * sizeof *w0);
    qd_error err = {0};
    cr_assert_eq(qd_model_init_params(t.m, &ri, w0, &err), QD_OK);
    qd_npy a;
    snprintf(path, sizeof path, "%s/experts/trajectory_0.npy", dir);
    read_traj(path, &a);
    cr_expect_eq(a.shape[0], 6u);
    cr_expect(memcmp(a.data, w0, t.n * sizeof *w0) == 0);
    qd_npy_free(&a);
    char *log1 = slurp_log(lf);
    cr_expect(strstr(log1, "expert 3/3 trained"), "%s", log1);
    cr_expect(!strstr(log1, "reusing"), "%s", log1);
    free(log1);

    /* a resumed start reuses them: same files, same iterations */
    qd_log_set_file(NULL);
    fclose(lf);
    lf = tmpfile();
    cr_assert(lf);
    qd_log_set_file(lf);
    dt_dist_make(&d, REUSE_CFG);
    dt_ctx_make(&c, t.m, &tr, t.w, 8);
    c.ctx.run_dir = dir;
    rc = d.vt->start(d.self, &c.ctx);
    cr_assert_eq(rc, QD_OK, "%s", dt_dist_msg(&d, rc));
    for (uint64_t it = 0; it < 2; it++)
        cr_assert_eq(d.vt->iterate(d.self, &c.ctx, it, &m2[it]), QD_OK);
    dt_dist_free(&d);
    cr_expect(memcmp(m1, m2, sizeof m1) == 0,
              "iterations differ on reused experts");
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/experts/trajectory_%d.npy", dir, i);
        cr_assert_eq(stat(path, &st2[i]), 0);
        cr_expect(st1[i].st_ino == st2[i].st_ino &&
                  st1[i].st_mtim.tv_sec == st2[i].st_mtim.tv_sec &&
                  st1[i].st_mtim.tv_nsec == st2[i].st_mtim.tv_nsec,
                  "%s was rewritten", path);
    }
    char *log2 = slurp_log(lf);
    cr_expect(strstr(log2, "expert 3/3: reusing"), "%s", log2);
    cr_expect(!strstr(log2, "trained"), "retrained: %s", log2);
    free(log2);

    /* one missing file (a run killed while training it): only that one is
     * trained, and the outcome is the same */
    snprintf(path, sizeof path, "%s/experts/trajectory_1.npy", dir);
    cr_assert_eq(remove(path), 0);
    dt_dist_make(&d, REUSE_CFG);
    dt_ctx_make(&c, t.m, &tr, t.w, 8);
    c.ctx.run_dir = dir;
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
    for (uint64_t it = 0; it < 2; it++)
        cr_assert_eq(d.vt->iterate(d.self, &c.ctx, it, &m2[it]), QD_OK);
    dt_dist_free(&d);
    cr_expect(memcmp(m1, m2, sizeof m1) == 0);
    cr_assert_eq(stat(path, &st2[1]), 0);

    /* files of another seed are refused by name */
    dt_dist_make(&d, REUSE_CFG);
    dt_ctx_make(&c, t.m, &tr, t.w, 9);
    c.ctx.run_dir = dir;
    rc = d.vt->start(d.self, &c.ctx);
    cr_expect_eq(rc, QD_ERR_FORMAT);
    cr_expect(strstr(dt_dist_msg(&d, rc), "trajectory_0.npy") &&
              strstr(dt_dist_msg(&d, rc), "initialisation"), "%s",
              dt_dist_msg(&d, rc));
    dt_dist_free(&d);
    /* and so is a corrupt one */
    snprintf(path, sizeof path, "%s/experts/trajectory_2.npy", dir);
    write_bytes(path, "\x93NUMPY garbage", 14);
    dt_dist_make(&d, REUSE_CFG);
    dt_ctx_make(&c, t.m, &tr, t.w, 8);
    c.ctx.run_dir = dir;
    rc = d.vt->start(d.self, &c.ctx);
    cr_expect_neq(rc, QD_OK);
    cr_expect(strstr(dt_dist_msg(&d, rc), "trajectory_2.npy"), "%s",
              dt_dist_msg(&d, rc));
    dt_dist_free(&d);

    qd_log_set_file(NULL);
    fclose(lf);
    free(w0);
    rm_rf(dir);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}

/* ---- expert_dir ---- */

static void write_traj(const char *path, const double *data, size_t rows,
                       size_t P)
{
    qd_error err = {0};
    const size_t shape[2] = {rows, P};
    cr_assert_eq(qd_npy_write(path, QD_NPY_F8, shape, 2, data, &err), QD_OK,
                 "%s", err.msg);
}

/* start() with expert_dir; returns rc, message in *msg (static). */
static int start_with_dir(dt_model *t, const qd_dataset *tr, const char *dir,
                          const char **msg, qd_distill_metrics *mt)
{
    char cfg[400];
    snprintf(cfg, sizeof cfg, "{plugin: trajectory_matching, expert_dir: "
             "'%s', max_start_epoch: 2, expert_steps: 2, syn_steps: 2}", dir);
    dt_dist d;
    dt_dist_make(&d, cfg);
    dt_ctx c;
    dt_ctx_make(&c, t->m, tr, t->w, 2);
    int rc = d.vt->start(d.self, &c.ctx);
    *msg = rc ? dt_dist_msg(&d, rc) : "";
    if (!rc && mt)
        rc = d.vt->iterate(d.self, &c.ctx, 0, mt);
    dt_dist_free(&d);
    return rc;
}

Test(distill_tm, expert_dir_loads_and_reports_bad_files)
{
    dt_model t;
    dt_model_make(&t, MLP_YAML, 1, 2, 3, 3, 2);
    qd_dataset tr;
    make_data(&tr, 30, 1, 2, 3, 3, 0.7, 1, 2);
    const size_t P = t.n;
    char dir[64], path[160];
    make_tmp(dir, sizeof dir);
    const char *msg;
    /* an empty directory, a missing one */
    cr_expect_eq(start_with_dir(&t, &tr, dir, &msg, NULL), QD_ERR_INVALID);
    cr_expect(strstr(msg, dir) && strstr(msg, "no trajectory"), "%s", msg);
    snprintf(path, sizeof path, "%s/nope", dir);
    cr_expect_eq(start_with_dir(&t, &tr, path, &msg, NULL), QD_ERR_IO);
    cr_expect(strstr(msg, "nope"), "%s", msg);

    /* a qdistill-train style trajectory.npy (3 rows) and trajectory_b.npy */
    qd_rng rng;
    qd_rng_seed(&rng, 1, 1);
    double *tj = dt_normal(&rng, 5 * P, 1.0);
    snprintf(path, sizeof path, "%s/trajectory.npy", dir);
    write_traj(path, tj, 4, P);
    snprintf(path, sizeof path, "%s/trajectory_b.npy", dir);
    write_traj(path, tj + P, 4, P);
    snprintf(path, sizeof path, "%s/notes.txt", dir);
    write_bytes(path, "x", 1);
    qd_distill_metrics mt;
    FILE *lf = tmpfile();
    qd_log_set_file(lf);
    int rc = start_with_dir(&t, &tr, dir, &msg, &mt);
    qd_log_set_file(NULL);
    cr_expect_eq(rc, QD_OK, "%s", msg);
    char *log = slurp_log(lf);
    fclose(lf);
    cr_expect(strstr(log, "2 expert trajectories"), "%s", log);
    free(log);
    cr_expect(mt.extra[2] == 0.0 || mt.extra[2] == 1.0);
    cr_expect(mt.loss > 0.0 && isfinite(mt.loss));

    /* too few rows for max_start_epoch 2 + expert_steps 2: 3 < 4 */
    snprintf(path, sizeof path, "%s/trajectory_c.npy", dir);
    write_traj(path, tj, 3, P);
    cr_expect_eq(start_with_dir(&t, &tr, dir, &msg, NULL), QD_ERR_FORMAT);
    cr_expect(strstr(msg, "trajectory_c.npy") && strstr(msg, "3 rows"), "%s",
              msg);
    /* rows of another model */
    write_traj(path, tj, 4, P - 1);
    cr_expect_eq(start_with_dir(&t, &tr, dir, &msg, NULL), QD_ERR_FORMAT);
    cr_expect(strstr(msg, "trajectory_c.npy") && strstr(msg, "parameters"),
              "%s", msg);
    /* not finite */
    tj[P + 3] = NAN;
    write_traj(path, tj, 4, P);
    cr_expect_eq(start_with_dir(&t, &tr, dir, &msg, NULL), QD_ERR_FORMAT);
    cr_expect(strstr(msg, "trajectory_c.npy") && strstr(msg, "non-finite"),
              "%s", msg);
    /* corrupt: truncated */
    write_bytes(path, "\x93NUMPY\x01\x00", 8);
    cr_expect_eq(start_with_dir(&t, &tr, dir, &msg, NULL), QD_ERR_FORMAT);
    cr_expect(strstr(msg, "trajectory_c.npy"), "%s", msg);
    /* an expert that does not move: the loss is undefined, said so */
    remove(path);
    for (size_t r = 1; r < 4; r++)
        memcpy(tj + r * P, tj, P * sizeof *tj);
    snprintf(path, sizeof path, "%s/trajectory.npy", dir);
    write_traj(path, tj, 4, P);
    snprintf(path, sizeof path, "%s/trajectory_b.npy", dir);
    write_traj(path, tj, 4, P);
    rc = start_with_dir(&t, &tr, dir, &msg, &mt);
    cr_expect_eq(rc, QD_ERR_NUMERIC);
    free(tj);
    rm_rf(dir);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}

/* ---- save / restore ---- */

typedef struct run_out {
    qd_synset s;
    qd_distill_metrics mt[12];
} run_out;

#define SR_CFG                                                              \
    "{plugin: trajectory_matching, images_per_class: 3, batch_syn: 4, "     \
    "syn_steps: 3, experts: 2, expert_epochs: 5, expert_batch_size: 8, "    \
    "max_start_epoch: 3, lr_img: 10, lr_lr: 1e-3, iterations: 10}"

static void sr_run(dt_model *t, const qd_dataset *tr, const char *dir,
                   uint64_t cut, run_out *o)
{
    dt_dist d;
    dt_dist_make(&d, SR_CFG);
    dt_ctx c;
    dt_ctx_make(&c, t->m, tr, t->w, 9);
    c.ctx.run_dir = dir;
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
    const uint64_t n = d.vt->n_iterations(d.self);
    for (uint64_t it = 0; it < n; it++) {
        if (it == cut) {
            qd_blob b;
            qd_blob_init(&b);
            cr_assert_eq(d.vt->save(d.self, &b), QD_OK);
            qd_rng r = c.rng, ri = c.init_rng;
            dt_dist_free(&d);
            dt_dist_make(&d, SR_CFG);
            dt_ctx_make(&c, t->m, tr, t->w, 9);
            c.ctx.run_dir = dir;
            cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
            c.rng = r;
            c.init_rng = ri;
            int rc = d.vt->restore(d.self, b.data, b.len);
            cr_assert_eq(rc, QD_OK, "%s", dt_dist_msg(&d, rc));
            /* a truncated blob is refused, and the instance is unusable */
            dt_dist d2;
            dt_dist_make(&d2, SR_CFG);
            dt_ctx c2;
            dt_ctx_make(&c2, t->m, tr, t->w, 9);
            c2.ctx.run_dir = dir;
            cr_assert_eq(d2.vt->start(d2.self, &c2.ctx), QD_OK);
            c2.rng = r;
            c2.init_rng = ri;
            rc = d2.vt->restore(d2.self, b.data, b.len - 3);
            cr_expect_eq(rc, QD_ERR_FORMAT);
            cr_expect_neq(d2.vt->iterate(d2.self, &c2.ctx, it, NULL), QD_OK,
                          "iterate after a failed restore must fail");
            dt_dist_free(&d2);
            qd_blob_free(&b);
        }
        int rc = d.vt->iterate(d.self, &c.ctx, it, &o->mt[it]);
        cr_assert_eq(rc, QD_OK, "%s", dt_dist_msg(&d, rc));
    }
    cr_assert_eq(d.vt->result(d.self, &o->s), QD_OK);
    dt_dist_free(&d);
}

Test(distill_tm, save_restore_is_bit_for_bit)
{
    dt_model t;
    dt_model_make(&t, MLP_YAML, 1, 2, 3, 3, 2);
    qd_dataset tr;
    make_data(&tr, 40, 1, 2, 3, 3, 1.0, 7, 8);
    char dir[64];
    make_tmp(dir, sizeof dir);
    run_out a, b, c2;
    sr_run(&t, &tr, dir, UINT64_MAX, &a);
    sr_run(&t, &tr, dir, 1, &b);
    sr_run(&t, &tr, dir, 7, &c2);
    const size_t nx = qd_synset_count(&a.s) * 6;
    cr_expect(memcmp(a.s.images, b.s.images, nx * sizeof(double)) == 0,
              "images differ after restore at 1");
    cr_expect(memcmp(a.s.images, c2.s.images, nx * sizeof(double)) == 0,
              "images differ after restore at 7");
    cr_expect(memcmp(a.s.lrs, b.s.lrs, a.s.n_lrs * sizeof(double)) == 0);
    cr_expect(memcmp(a.s.lrs, c2.s.lrs, a.s.n_lrs * sizeof(double)) == 0);
    for (int i = 0; i < 10; i++) {
        cr_expect(memcmp(&a.mt[i], &b.mt[i], sizeof a.mt[i]) == 0,
                  "metrics of iteration %d differ", i);
        cr_expect(memcmp(&a.mt[i], &c2.mt[i], sizeof a.mt[i]) == 0);
    }
    /* and the run did learn its step size */
    cr_expect(a.s.lrs[0] != 0.01, "lr %g", a.s.lrs[0]);

    /* a checkpoint made with other experts is refused */
    qd_blob blob;
    qd_blob_init(&blob);
    dt_dist d;
    dt_dist_make(&d, SR_CFG);
    dt_ctx c;
    dt_ctx_make(&c, t.m, &tr, t.w, 9);
    c.ctx.run_dir = dir;
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
    cr_assert_eq(d.vt->save(d.self, &blob), QD_OK);
    dt_dist_free(&d);
    dt_dist_make(&d, SR_CFG);
    dt_ctx_make(&c, t.m, &tr, t.w, 10);   /* other seed, no run dir */
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
    int rc = d.vt->restore(d.self, blob.data, blob.len);
    cr_expect_eq(rc, QD_ERR_FORMAT);
    cr_expect(strstr(dt_dist_msg(&d, rc), "expert"), "%s",
              dt_dist_msg(&d, rc));
    dt_dist_free(&d);
    qd_blob_free(&blob);
    qd_synset_free(&a.s);
    qd_synset_free(&b.s);
    qd_synset_free(&c2.s);
    rm_rf(dir);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}

/* ---- it learns ---- */

/* Accuracy on te after T full-batch updates at lr on (xs, ys) from w0. */
static double train_acc(qd_model *m, const double *w0, size_t n,
                        const double *xs, const int32_t *ys, size_t T,
                        double lr, const qd_dataset *te)
{
    const size_t P = qd_model_n_params(m);
    double *w = malloc(P * sizeof *w), *g = malloc(P * sizeof *g), acc;
    memcpy(w, w0, P * sizeof *w);
    qd_error err = {0};
    for (size_t t = 0; t < T; t++) {
        cr_assert_eq(qd_model_loss_grad(m, w, n, xs, ys, NULL, g, NULL, NULL,
                                        &err), QD_OK, "%s", err.msg);
        for (size_t i = 0; i < P; i++)
            w[i] -= lr * g[i];
    }
    int ok = 1;
    for (size_t i = 0; i < P; i++)
        ok &= isfinite(w[i]) != 0;
    acc = 0.0;
    if (ok)
        cr_assert_eq(qd_model_accuracy(m, w, te, 0, &acc, &err), QD_OK, "%s",
                     err.msg);
    free(w);
    free(g);
    return acc;
}

/* The `synthetic` dataset (5 classes of noisy 6x6 blob images), an MLP, one
 * image per class. The matching loss must fall, and the distilled set,
 * trained with its learned step size the way evaluation does, must beat
 * random real subsets of the same size trained with the best of a grid of
 * step sizes, on fresh initialisations and the test split. */
Test(distill_tm, distills_synthetic_problem)
{
    qd_config *dcfg;
    qd_error err = {0};
    const char *dy = "{plugin: synthetic, classes: 5, train_size: 600, "
                     "test_size: 500, height: 6, width: 6, noise: 1.5}";
    cr_assert_eq(qd_config_load_string(dy, strlen(dy), "<ds>", NULL, &dcfg,
                                       &err), QD_OK);
    qd_instance_opts o = {0};
    o.seed = 3;
    o.stream = "dataset";
    o.threads = 2;
    qd_instance *di;
    cr_assert_eq(qd_instance_create(dt_registry(), QD_KIND_DATASET,
                                    qd_config_root(dcfg), &o, &di, &err),
                 QD_OK, "%s", err.msg);
    const qd_dataset_vt *dvt = qd_instance_vtable(di);
    qd_dataset tr, te;
    cr_assert_eq(dvt->load(qd_instance_self(di), QD_SPLIT_TRAIN, &tr), QD_OK);
    cr_assert_eq(dvt->load(qd_instance_self(di), QD_SPLIT_TEST, &te), QD_OK);

    dt_model t;
    dt_model_make(&t, "layers:\n  - {type: linear, out: 16}\n"
                      "  - {type: tanh}\n  - {type: linear, out: 5}\n",
                  1, 6, 6, 5, 12);
    enum { N_IT = 300 };
    dt_dist d;
    dt_dist_make(&d, "{plugin: trajectory_matching, images_per_class: 1, "
                     "experts: 4, expert_epochs: 6, expert_batch_size: 32, "
                     "expert_lr: 0.02, syn_steps: 10, expert_steps: 2, "
                     "max_start_epoch: 3, lr_img: 100, clip_grad: 0, "
                     "iterations: 300}");
    dt_ctx c;
    dt_ctx_make(&c, t.m, &tr, t.w, 12);
    int rc = d.vt->start(d.self, &c.ctx);
    cr_assert_eq(rc, QD_OK, "%s", dt_dist_msg(&d, rc));
    double first = 0.0, last = 0.0;
    for (uint64_t it = 0; it < N_IT; it++) {
        qd_distill_metrics mt;
        rc = d.vt->iterate(d.self, &c.ctx, it, &mt);
        cr_assert_eq(rc, QD_OK, "%s", dt_dist_msg(&d, rc));
        if (it < 30)
            first += mt.loss / 30;
        if (it >= N_IT - 30)
            last += mt.loss / 30;
    }
    qd_synset s;
    cr_assert_eq(d.vt->result(d.self, &s), QD_OK);
    const size_t T = s.n_lrs, n = qd_synset_count(&s);

    /* 10 fresh initialisations; random real subsets (one image per class)
     * with the best step size of a grid, the same subsets for every lr */
    qd_rng ir, sr;
    qd_rng_seed(&ir, 99, 1);
    qd_rng_seed(&sr, 77, 1);
    enum { MODELS = 10 };
    double *w0 = malloc(MODELS * t.n * sizeof *w0);
    for (int k = 0; k < MODELS; k++)
        cr_assert_eq(qd_model_init_params(t.m, &ir, w0 + k * t.n, &err),
                     QD_OK);
    double acc_d = 0.0;
    for (int k = 0; k < MODELS; k++)
        acc_d += train_acc(t.m, w0 + k * t.n, n, s.images, s.labels, T,
                           s.lrs[0], &te) / MODELS;
    const double grid[] = {0.01, 0.03, 0.1, 0.3, 1.0, 3.0};
    double best = 0.0, best_lr = 0.0;
    double *xs = malloc(n * 36 * sizeof *xs);
    for (size_t gi = 0; gi < sizeof grid / sizeof *grid; gi++) {
        qd_rng r = sr;
        double mean = 0.0;
        for (int k = 0; k < MODELS; k++) {
            for (size_t i = 0; i < n; i++) {
                size_t j;
                do
                    j = qd_rng_bounded(&r, (uint32_t)tr.n);
                while (tr.labels[j] != s.labels[i]);
                memcpy(xs + i * 36, tr.images + j * 36, 36 * sizeof *xs);
            }
            mean += train_acc(t.m, w0 + k * t.n, n, xs, s.labels, T, grid[gi],
                              &te) / MODELS;
        }
        if (mean > best) {
            best = mean;
            best_lr = grid[gi];
        }
    }
    cr_log_info("matching loss %.3f -> %.3f; %zu updates: distilled %.3f "
                "(lr %.4f), best random real subset %.3f (lr %g)", first,
                last, T, acc_d, s.lrs[0], best, best_lr);
    cr_expect(last < 0.8 * first, "matching loss %.3f -> %.3f", first, last);
    cr_expect(acc_d > best + 0.05, "distilled %.3f vs real subsets %.3f",
              acc_d, best);
    free(xs);
    free(w0);
    qd_synset_free(&s);
    dt_dist_free(&d);
    dt_model_free(&t);
    qd_dataset_free(&tr);
    qd_dataset_free(&te);
    qd_instance_destroy(di);
    qd_config_destroy(dcfg);
}

/* ---- through the run engine ---- */

/* Load, validate and execute manifest text in dir/NAME.yaml into dir/out. */
static int run_manifest(const char *dir, const char *name, const char *text,
                        const char *out, int train_only, qd_error *err)
{
    char path[256], rdp[256];
    snprintf(path, sizeof path, "%s/%s.yaml", dir, name);
    snprintf(rdp, sizeof rdp, "%s/%s", dir, out);
    write_bytes(path, text, strlen(text));
    qd_manifest *m;
    cr_assert_eq(qd_manifest_load(path, NULL, 0, &m, err), QD_OK, "%s",
                 err->msg);
    qd_diags dg = {0};
    size_t bad = qd_manifest_validate(m, dt_registry(), &dg);
    char *msgs = qd_diags_join(&dg);
    cr_assert_eq(bad, 0u, "%s", msgs);
    free(msgs);
    qd_diags_free(&dg);
    char *yaml = qd_manifest_to_yaml(m);
    qd_rundir rd;
    cr_assert_eq(qd_rundir_open(&rd, rdp, yaml, NULL, 0, err), QD_OK, "%s",
                 err->msg);
    qd_run_opts o = {.threads = 1, .train_only = train_only};
    int rc = qd_run_execute(m, dt_registry(), &rd, &o, err);
    qd_rundir_close(&rd);
    free(yaml);
    qd_manifest_destroy(m);
    return rc;
}

#define E2E_HEAD                                                            \
    "seed: 4\nthreads: 1\n"                                                 \
    "dataset: {plugin: synthetic, classes: 3, train_size: 90, "             \
    "test_size: 60, height: 4, width: 4}\n"                                 \
    "model:\n  layers:\n    - {type: flatten}\n"                            \
    "    - {type: linear, out: 6}\n    - {type: tanh}\n"                    \
    "    - {type: linear, out: 3}\n"

/* `qdistill train` with train.save_trajectory writes trajectory.npy (rows
 * = epochs + 1, ending at the trained model, which scores the accuracy the
 * result reports); a run uses it through expert_dir; a run without
 * expert_dir trains its experts into <run>/experts. */
Test(distill_tm, run_engine_writes_and_uses_trajectories)
{
    char dir[64], path[256];
    make_tmp(dir, sizeof dir);
    qd_error err = {0};
    int rc = run_manifest(dir, "train", "name: tr\n" E2E_HEAD
                          "train: {lr: 0.05, epochs: 4, batch_size: 16, "
                          "save_trajectory: true}\n", "tr", 1, &err);
    cr_assert_eq(rc, QD_OK, "%s", err.msg);
    snprintf(path, sizeof path, "%s/tr/trajectory.npy", dir);
    qd_npy a;
    read_traj(path, &a);
    cr_expect_eq(a.shape[0], 5u);
    cr_expect_eq(a.shape[1], 16u * 6 + 6 + 6 * 3 + 3);
    cr_expect(dt_rel(a.data, (double *)a.data + 4 * a.shape[1], a.shape[1]) >
              1e-3);
    qd_npy_free(&a);

    /* expert_dir: the train run's directory (relative to the manifest) */
    rc = run_manifest(dir, "fromdir", "name: fd\n" E2E_HEAD
                      "distill: {plugin: trajectory_matching, expert_dir: tr, "
                      "max_start_epoch: 2, expert_steps: 2, syn_steps: 3, "
                      "eval_updates: 7, iterations: 4}\n"
                      "evaluate: {models: 1, init: random, baselines: false}\n",
                      "fd", 0, &err);
    cr_assert_eq(rc, QD_OK, "%s", err.msg);
    snprintf(path, sizeof path, "%s/fd/synthetic_lrs.npy", dir);
    cr_assert_eq(qd_npy_read(path, &a, &err), QD_OK, "%s", err.msg);
    /* eval_updates updates, all at the learned lr */
    cr_expect(a.ndim == 1 && a.shape[0] == 7u, "%zu-d, %zu", a.ndim,
              a.shape[0]);
    const double *lrs = a.data;
    for (size_t i = 1; i < a.count; i++)
        cr_expect_eq(lrs[i], lrs[0]);
    qd_npy_free(&a);
    snprintf(path, sizeof path, "%s/fd/result.json", dir);
    struct stat st, st2;
    cr_expect_eq(stat(path, &st), 0, "no result.json");
    snprintf(path, sizeof path, "%s/fd/experts", dir);
    cr_expect_neq(stat(path, &st), 0, "experts trained despite expert_dir");

    /* experts trained into the run directory, reused by a re-run */
    const char *own = "name: own\n" E2E_HEAD
                      "distill: {plugin: trajectory_matching, experts: 2, "
                      "expert_epochs: 3, expert_batch_size: 16, "
                      "max_start_epoch: 2, expert_steps: 2, syn_steps: 3, "
                      "iterations: 4}\n"
                      "evaluate: {models: 1, init: random, baselines: false}\n";
    rc = run_manifest(dir, "own", own, "own", 0, &err);
    cr_assert_eq(rc, QD_OK, "%s", err.msg);
    snprintf(path, sizeof path, "%s/own/experts/trajectory_1.npy", dir);
    cr_assert_eq(stat(path, &st), 0, "%s missing", path);
    read_traj(path, &a);
    cr_expect_eq(a.shape[0], 4u);
    qd_npy_free(&a);
    rc = run_manifest(dir, "own", own, "own", 0, &err);
    cr_assert_eq(rc, QD_OK, "%s", err.msg);
    cr_assert_eq(stat(path, &st2), 0);
    cr_expect(st.st_ino == st2.st_ino &&
              st.st_mtim.tv_nsec == st2.st_mtim.tv_nsec,
              "the re-run retrained its experts");
    rm_rf(dir);
}
