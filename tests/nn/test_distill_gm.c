/* Gradient matching (qdistill/grad_match.h and the `gradient_matching`
 * distiller plugin): the image gradient of the matching loss against
 * central differences of the loss recomputed here from its definition (every
 * distance; a tanh MLP, a conv/relu/maxpool net and a hybrid quantum model;
 * with and without siamese augmentation), the plugin's first image step
 * against the same reference, the loss falling, the distilled set beating
 * random real subsets of the same size under the same training recipe,
 * bit-for-bit save/restore, and configuration errors naming the key. */
#include "distill_test_util.h"
#include "qdistill/augment.h"
#include "qdistill/evaluate.h"
#include "qdistill/grad_match.h"
#include "qdistill/train.h"

TestSuite(distill_gm, .fini = dt_teardown, .timeout = 120);

/* ---- models (input 1 x 6 x 6, 3 classes) and their row layouts ---- */

#define MLP_T                                                               \
    "layers:\n  - {type: linear, out: 5}\n  - {type: tanh}\n"                \
    "  - {type: linear, out: 3}\n"
/* blocks: weight 5x36, bias, weight 3x5, bias */
static const size_t MLP_T_ROWS[] = {5, 0, 3, 0};

#define RELU_CNN                                                            \
    "layers:\n"                                                             \
    "  - {type: conv2d, out_channels: 2, kernel: 3, padding: 1}\n"          \
    "  - {type: relu}\n"                                                    \
    "  - {type: maxpool2d, kernel: 2}\n"                                    \
    "  - {type: flatten}\n"                                                 \
    "  - {type: linear, out: 3}\n"
/* blocks: conv weight 2x9, bias, linear weight 3x18, bias */
static const size_t RELU_CNN_ROWS[] = {2, 0, 3, 0};

#define QUANTUM                                                             \
    "layers:\n"                                                             \
    "  - {type: linear, out: 4}\n"                                          \
    "  - name: q\n"                                                         \
    "    type: quantum\n"                                                   \
    "    wires: 2\n"                                                        \
    "    encoder: {plugin: amplitude}\n"                                    \
    "    ansatz: {plugin: strongly_entangling, layers: 2}\n"                \
    "    observable: {plugin: hermitian, trainable: true}\n"                \
    "    simulator: {plugin: statevector}\n"                                \
    "  - {type: linear, out: 3}\n"
/* blocks: weight 4x36, bias, circuit (whole), observable (whole), weight
 * 3x2, bias */
static const size_t QUANTUM_ROWS[] = {4, 0, 1, 1, 3, 0};

enum { IN = 36, K = 3 };

/* ---- the matching loss, written out from its definition ---- */

static double cos_term(const double *a, const double *b, size_t n)
{
    double s = 0.0, aa = 0.0, bb = 0.0;
    for (size_t i = 0; i < n; i++) {
        s += a[i] * b[i];
        aa += a[i] * a[i];
        bb += b[i] * b[i];
    }
    return 1.0 - s / (sqrt(aa) * sqrt(bb) + 1e-6);
}

/* D(a, b): layerwise from the test's own row table and block list. */
static double ref_distance(qd_model *m, int distance, const size_t *rows,
                           const double *a, const double *b)
{
    const size_t n = qd_model_n_params(m);
    double D = 0.0;
    if (distance == QD_GM_MSE) {
        for (size_t i = 0; i < n; i++)
            D += (a[i] - b[i]) * (a[i] - b[i]);
        return D;
    }
    if (distance == QD_GM_COSINE)
        return cos_term(a, b, n);
    for (size_t k = 0; k < qd_model_n_blocks(m); k++) {
        const qd_param_block *bl = qd_model_block(m, k);
        if (rows[k] == 0)
            continue;
        const size_t cols = bl->count / rows[k];
        for (size_t r = 0; r < rows[k]; r++)
            D += cos_term(a + bl->offset + r * cols, b + bl->offset + r * cols,
                          cols);
    }
    return D;
}

typedef struct ref {
    qd_model *m;
    const double *w;
    int distance;
    const size_t *rows;
    qd_augment *aug;
    uint64_t seed;
    double *g_real, *g;
} ref;

static void ref_grad(ref *r, size_t n, const double *x, const int32_t *y,
                     double *g)
{
    qd_error err = {0};
    double *xa = malloc(n * IN * sizeof *xa);
    if (r->aug)
        cr_assert_eq(qd_augment_apply(r->aug, r->seed, n, x, xa, &err), QD_OK);
    else
        memcpy(xa, x, n * IN * sizeof *xa);
    cr_assert_eq(qd_model_loss_grad(r->m, r->w, n, xa, y, NULL, g, NULL, NULL,
                                    &err), QD_OK, "%s", err.msg);
    free(xa);
}

static double ref_loss(ref *r, size_t n, const double *x, const int32_t *y)
{
    ref_grad(r, n, x, y, r->g);
    return ref_distance(r->m, r->distance, r->rows, r->g, r->g_real);
}

/* Central differences of ref_loss over every pixel of x. */
static void ref_fd(ref *r, size_t n, const double *x, const int32_t *y,
                   double h, double *fd)
{
    double *xp = malloc(n * IN * sizeof *xp);
    memcpy(xp, x, n * IN * sizeof *xp);
    for (size_t i = 0; i < n * IN; i++) {
        xp[i] = x[i] + h;
        double lp = ref_loss(r, n, xp, y);
        xp[i] = x[i] - h;
        double lm = ref_loss(r, n, xp, y);
        xp[i] = x[i];
        fd[i] = (lp - lm) / (2.0 * h);
    }
    free(xp);
}

static const char *const DIST_NAMES[] = {"layerwise", "mse", "cosine"};

/* qd_grad_match on one class batch (8 real, 3 synthetic images of class 1)
 * against the reference: rows, loss and image gradient. */
static void check_core(const char *what, const char *yaml, const size_t *rows,
                       const char *augment, uint64_t seed)
{
    dt_model t;
    dt_model_make(&t, yaml, 1, 6, 6, K, seed);
    cr_assert(qd_model_n_blocks(t.m) <= 6);
    qd_rng rng;
    qd_rng_seed(&rng, seed, 5);
    enum { NR = 8, NS = 3 };
    double *xr = dt_normal(&rng, NR * IN, 1.0);
    double *xs = dt_normal(&rng, NS * IN, 1.0);
    int32_t yr[NR], ys[NS];
    for (int i = 0; i < NR; i++)
        yr[i] = 1;
    for (int i = 0; i < NS; i++)
        ys[i] = 1;
    qd_error err = {0};
    qd_augment *aug = NULL;
    if (augment)
        cr_assert_eq(qd_augment_create(augment, 'M', 1, 6, 6, &aug, &err),
                     QD_OK, "%s", err.msg);
    const size_t np = t.n;
    double *g_real = malloc(np * sizeof *g_real), *g = malloc(np * sizeof *g);
    double an[NS * IN], fd[NS * IN];
    for (int dist = 0; dist < 3; dist++) {
        qd_grad_match *gm;
        cr_assert_eq(qd_grad_match_create(t.m, dist, &gm, &err), QD_OK, "%s",
                     err.msg);
        for (size_t b = 0; b < qd_model_n_blocks(t.m); b++)
            cr_expect_eq(qd_grad_match_block_rows(gm, b), rows[b],
                         "%s: block %zu (%s %s) rows %zu, want %zu", what, b,
                         qd_model_block(t.m, b)->layer,
                         qd_model_block(t.m, b)->what,
                         qd_grad_match_block_rows(gm, b), rows[b]);
        const uint64_t aseed = 1234 + seed;
        double ce, D;
        cr_assert_eq(qd_grad_match_target(gm, t.w, NR, xr, yr, aug, aseed, &ce,
                                          &err), QD_OK, "%s", err.msg);
        /* 1e-6: the plugin's default fd_eps */
        cr_assert_eq(qd_grad_match_loss(gm, t.w, NS, xs, ys, aug, aseed, 1e-6,
                                        &D, an, &err), QD_OK, "%s", err.msg);
        ref r = {t.m, t.w, dist, rows, aug, aseed, g_real, g};
        ref_grad(&r, NR, xr, yr, g_real);
        double L = ref_loss(&r, NS, xs, ys);
        cr_expect(fabs(D - L) <= 1e-12 * fabs(L) + 1e-15,
                  "%s %s: loss %.17g vs reference %.17g", what,
                  DIST_NAMES[dist], D, L);
        ref_fd(&r, NS, xs, ys, 1e-6, fd);
        double rel = dt_rel(an, fd, NS * IN);
        cr_log_info("%s %s%s%s: loss %.6g, |grad| %.3g, rel err %.2e", what,
                    DIST_NAMES[dist], augment ? " + " : "",
                    augment ? augment : "", D, dt_norm(fd, NS * IN), rel);
        cr_expect(dt_norm(fd, NS * IN) > 1e-6, "%s: zero gradient", what);
        cr_expect(rel < 1e-5, "%s %s%s: image gradient rel err %.3g", what,
                  DIST_NAMES[dist], augment ? " augmented" : "", rel);
        qd_grad_match_destroy(gm);
    }
    qd_augment_destroy(aug);
    free(g_real);
    free(g);
    free(xr);
    free(xs);
    dt_model_free(&t);
}

Test(distill_gm, image_gradient_vs_central_differences_mlp)
{
    check_core("tanh MLP", MLP_T, MLP_T_ROWS, NULL, 1);
    check_core("tanh MLP", MLP_T, MLP_T_ROWS, "color_crop_flip_scale_rotate",
               2);
}

Test(distill_gm, image_gradient_vs_central_differences_relu_maxpool)
{
    check_core("relu/maxpool CNN", RELU_CNN, RELU_CNN_ROWS, NULL, 3);
    check_core("relu/maxpool CNN", RELU_CNN, RELU_CNN_ROWS,
               "color_crop_flip_scale_rotate", 4);
}

Test(distill_gm, image_gradient_vs_central_differences_quantum)
{
    check_core("quantum", QUANTUM, QUANTUM_ROWS, NULL, 5);
    check_core("quantum", QUANTUM, QUANTUM_ROWS, "scale_rotate_crop", 6);
}

/* ---- the plugin's image step ---- */

static void make_data(qd_dataset *d, size_t n, size_t classes, double sd,
                      uint64_t seed)
{
    qd_error err = {0};
    cr_assert_eq(qd_dataset_alloc(d, n, 1, 6, 6, classes, &err), QD_OK, "%s",
                 err.msg);
    qd_rng rng;
    qd_rng_seed(&rng, seed, 2);
    double *mu = dt_normal(&rng, classes * IN, 1.0);
    for (size_t i = 0; i < n; i++) {
        size_t k = (i * 7 + 3) % classes;
        d->labels[i] = (int32_t)k;
        for (size_t j = 0; j < IN; j++)
            d->images[i * IN + j] = mu[k * IN + j] + sd * qd_rng_normal(&rng);
    }
    free(mu);
}

/* One iteration with fixed init, no momentum, one outer loop and real
 * batches holding the whole class: the images move by exactly -lr_img
 * times the gradient, which must match central differences of the
 * reference loss per class; the reported loss is the mean over classes. */
Test(distill_gm, plugin_step_is_the_image_gradient)
{
    dt_model t;
    dt_model_make(&t, RELU_CNN, 1, 6, 6, K, 7);
    qd_dataset tr;
    make_data(&tr, 30, K, 0.7, 8);
    double *g_real = malloc(t.n * sizeof *g_real), *g = malloc(t.n * sizeof *g);
    for (int dist = 0; dist < 3; dist++) {
        char cfg[256];
        snprintf(cfg, sizeof cfg,
                 "{plugin: gradient_matching, images_per_class: 2, "
                 "model_init: fixed, init: noise, outer_loops: 1, "
                 "batch_real: 100, momentum: 0, lr_img: 1, iterations: 1, "
                 "distance: %s}", DIST_NAMES[dist]);
        dt_dist d;
        dt_dist_make(&d, cfg);
        dt_ctx c;
        dt_ctx_make(&c, t.m, &tr, t.w, 4);
        cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
        qd_synset s0, s1;
        cr_assert_eq(d.vt->result(d.self, &s0), QD_OK);
        cr_expect_eq(s0.n_lrs, 0u);
        cr_expect_eq(qd_synset_count(&s0), 6u);
        qd_distill_metrics mt;
        int rc = d.vt->iterate(d.self, &c.ctx, 0, &mt);
        cr_assert_eq(rc, QD_OK, "%s", dt_dist_msg(&d, rc));
        cr_assert_eq(d.vt->result(d.self, &s1), QD_OK);
        ref r = {t.m, t.w, dist, RELU_CNN_ROWS, NULL, 0, g_real, g};
        double Lsum = 0.0, worst = 0.0;
        for (size_t k = 0; k < K; k++) {
            /* the whole class as the real batch */
            size_t nk = 0;
            double *xk = malloc(tr.n * IN * sizeof *xk);
            int32_t *yk = malloc(tr.n * sizeof *yk);
            for (size_t i = 0; i < tr.n; i++)
                if ((size_t)tr.labels[i] == k) {
                    memcpy(xk + nk * IN, tr.images + i * IN, IN * sizeof *xk);
                    yk[nk++] = (int32_t)k;
                }
            ref_grad(&r, nk, xk, yk, g_real);
            const double *xs = s0.images + k * 2 * IN;
            Lsum += ref_loss(&r, 2, xs, s0.labels + k * 2);
            double fd[2 * IN], step[2 * IN];
            ref_fd(&r, 2, xs, s0.labels + k * 2, 1e-6, fd);
            for (size_t i = 0; i < 2 * IN; i++)
                step[i] = s0.images[k * 2 * IN + i] - s1.images[k * 2 * IN + i];
            double rel = dt_rel(step, fd, 2 * IN);
            worst = rel > worst ? rel : worst;
            free(xk);
            free(yk);
        }
        cr_log_info("plugin %s: loss %.6g, step vs FD rel err %.2e",
                    DIST_NAMES[dist], mt.loss, worst);
        cr_expect(fabs(mt.loss - Lsum / K) < 1e-12 * fabs(Lsum),
                  "%s: loss %.17g vs %.17g", DIST_NAMES[dist], mt.loss,
                  Lsum / K);
        cr_expect(worst < 1e-5, "%s: step vs gradient rel err %.3g",
                  DIST_NAMES[dist], worst);
        cr_expect(isnan(mt.lr_mean));
        qd_synset_free(&s0);
        qd_synset_free(&s1);
        dt_dist_free(&d);
    }
    free(g_real);
    free(g);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}

/* ---- it learns ---- */

static void load_synthetic(qd_dataset *tr, qd_dataset *te, qd_config **cfg,
                           qd_instance **di)
{
    qd_error err = {0};
    const char *dy = "{plugin: synthetic, classes: 5, train_size: 600, "
                     "test_size: 500, height: 6, width: 6, noise: 1.5}";
    cr_assert_eq(qd_config_load_string(dy, strlen(dy), "<ds>", NULL, cfg,
                                       &err), QD_OK);
    qd_instance_opts o = {0};
    o.seed = 3;
    o.stream = "dataset";
    o.threads = 2;
    cr_assert_eq(qd_instance_create(dt_registry(), QD_KIND_DATASET,
                                    qd_config_root(*cfg), &o, di, &err),
                 QD_OK, "%s", err.msg);
    const qd_dataset_vt *dvt = qd_instance_vtable(*di);
    cr_assert_eq(dvt->load(qd_instance_self(*di), QD_SPLIT_TRAIN, tr), QD_OK);
    cr_assert_eq(dvt->load(qd_instance_self(*di), QD_SPLIT_TEST, te), QD_OK);
}

/* Mean test accuracy of `models` random initialisations trained with the
 * evaluation recipe (full-batch SGD, 200 steps at rate lr) on s, or on a
 * class-stratified random real subset of the same size (a new one per
 * model) when real is set. */
static double recipe_acc(qd_model *m, const qd_synset *s, const qd_dataset *tr,
                         const qd_dataset *te, double lr, size_t models,
                         int real)
{
    qd_eval_opts o;
    memset(&o, 0, sizeof o);
    o.models = models;
    o.init_mode = QD_INIT_RANDOM;
    o.seed = 17;
    o.recipe_epochs = 200;
    o.recipe_batch = 0;
    qd_error err = {0};
    const size_t n = qd_model_n_params(m);
    double *w = malloc(n * sizeof *w), sum = 0.0;
    for (size_t i = 0; i < models; i++) {
        cr_assert_eq(qd_eval_init(m, &o, i, w, &err), QD_OK, "%s", err.msg);
        qd_synset sub;
        const qd_synset *use = s;
        if (real) {
            cr_assert_eq(qd_eval_real_subset(s, tr, &o, i, lr, &sub, &err),
                         QD_OK, "%s", err.msg);
            use = &sub;
        }
        cr_assert_eq(qd_eval_train(m, use, &o, lr, w, &err), QD_OK, "%s",
                     err.msg);
        double acc;
        cr_assert_eq(qd_model_accuracy(m, w, te, 0, &acc, &err), QD_OK);
        sum += acc;
        if (real)
            qd_synset_free(&sub);
    }
    free(w);
    return sum / (double)models;
}

/* The `synthetic` dataset (5 classes of noisy 6x6 blob images), a tanh MLP,
 * 2 images per class from noise, fresh random networks every iteration. The
 * matching loss must fall, and the distilled set must beat random real
 * subsets of the same size, both trained with the same recipe at the best
 * rate of a grid, on the test split. */
Test(distill_gm, distills_synthetic_problem)
{
    qd_config *dcfg;
    qd_instance *di;
    qd_dataset tr, te;
    load_synthetic(&tr, &te, &dcfg, &di);
    dt_model t;
    dt_model_make(&t, "layers:\n  - {type: linear, out: 16}\n"
                      "  - {type: tanh}\n  - {type: linear, out: 5}\n",
                  1, 6, 6, 5, 12);
    dt_dist d;
    dt_dist_make(&d, "{plugin: gradient_matching, images_per_class: 2, "
                     "init: noise, outer_loops: 2, inner_loops: 5, "
                     "batch_real: 64, lr_img: 0.1, iterations: 200}");
    dt_ctx c;
    dt_ctx_make(&c, t.m, &tr, t.w, 12);
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
    enum { N_IT = 200 };
    double first = 0.0, last = 0.0;
    for (uint64_t it = 0; it < N_IT; it++) {
        qd_distill_metrics mt;
        int rc = d.vt->iterate(d.self, &c.ctx, it, &mt);
        cr_assert_eq(rc, QD_OK, "%s", dt_dist_msg(&d, rc));
        if (it < 20)
            first += mt.loss / 20;
        if (it >= N_IT - 20)
            last += mt.loss / 20;
    }
    qd_synset s;
    cr_assert_eq(d.vt->result(d.self, &s), QD_OK);
    const double grid[] = {0.1, 0.3, 1.0, 3.0};
    double best_d = 0.0, best_r = 0.0;
    for (size_t g = 0; g < 4; g++) {
        double a = recipe_acc(t.m, &s, &tr, &te, grid[g], 8, 0);
        double b = recipe_acc(t.m, &s, &tr, &te, grid[g], 8, 1);
        cr_log_info("lr %.2f: distilled %.3f, random real %.3f", grid[g], a,
                    b);
        best_d = a > best_d ? a : best_d;
        best_r = b > best_r ? b : best_r;
    }
    cr_log_info("matching loss %.4f -> %.4f; test accuracy distilled %.3f, "
                "random real subsets %.3f", first, last, best_d, best_r);
    cr_expect(last < 0.8 * first, "matching loss %.4f -> %.4f", first, last);
    cr_expect(best_d > best_r + 0.05, "distilled %.3f vs real subsets %.3f",
              best_d, best_r);
    qd_synset_free(&s);
    dt_dist_free(&d);
    dt_model_free(&t);
    qd_dataset_free(&tr);
    qd_dataset_free(&te);
    qd_instance_destroy(di);
    qd_config_destroy(dcfg);
}

/* ---- save / restore ---- */

typedef struct run_out {
    qd_synset s;
    qd_distill_metrics mt[8];
} run_out;

#define SR_CFG                                                              \
    "{plugin: gradient_matching, images_per_class: 2, init: real, "         \
    "model_init: random, outer_loops: 2, inner_loops: 2, batch_real: 16, "  \
    "batch_train: 4, augment: color_crop_flip_scale_rotate, iterations: 8}"

static void sr_run(dt_model *t, const qd_dataset *tr, uint64_t cut,
                   run_out *o)
{
    dt_dist d;
    dt_dist_make(&d, SR_CFG);
    dt_ctx c;
    dt_ctx_make(&c, t->m, tr, t->w, 9);
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
    const uint64_t n = d.vt->n_iterations(d.self);
    cr_assert_eq(n, 8u);
    for (uint64_t it = 0; it < n; it++) {
        if (it == cut) {
            qd_blob b;
            qd_blob_init(&b);
            cr_assert_eq(d.vt->save(d.self, &b), QD_OK);
            qd_rng r = c.rng, ri = c.init_rng;
            dt_dist_free(&d);
            dt_dist_make(&d, SR_CFG);
            dt_ctx_make(&c, t->m, tr, t->w, 9);
            cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
            c.rng = r;
            c.init_rng = ri;
            int rc = d.vt->restore(d.self, b.data, b.len);
            cr_assert_eq(rc, QD_OK, "%s", dt_dist_msg(&d, rc));
            /* a truncated blob is refused, and the instance then refuses
             * to iterate */
            dt_dist d2;
            dt_dist_make(&d2, SR_CFG);
            cr_assert_eq(d2.vt->start(d2.self, &c.ctx), QD_OK);
            c.rng = r;
            c.init_rng = ri;
            rc = d2.vt->restore(d2.self, b.data, b.len - 3);
            cr_expect_eq(rc, QD_ERR_FORMAT);
            cr_expect_neq(d2.vt->iterate(d2.self, &c.ctx, it, NULL), QD_OK);
            dt_dist_free(&d2);
            qd_blob_free(&b);
        }
        int rc = d.vt->iterate(d.self, &c.ctx, it, &o->mt[it]);
        cr_assert_eq(rc, QD_OK, "%s", dt_dist_msg(&d, rc));
    }
    cr_assert_eq(d.vt->result(d.self, &o->s), QD_OK);
    dt_dist_free(&d);
}

Test(distill_gm, save_restore_is_bit_for_bit)
{
    dt_model t;
    dt_model_make(&t, RELU_CNN, 1, 6, 6, K, 2);
    qd_dataset tr;
    make_data(&tr, 60, K, 1.0, 7);
    run_out a, b, c2;
    sr_run(&t, &tr, UINT64_MAX, &a);
    sr_run(&t, &tr, 3, &b);
    sr_run(&t, &tr, 6, &c2);
    const size_t nx = qd_synset_count(&a.s) * IN;
    cr_expect(memcmp(a.s.images, b.s.images, nx * sizeof(double)) == 0,
              "images differ after restore at 3");
    cr_expect(memcmp(a.s.images, c2.s.images, nx * sizeof(double)) == 0,
              "images differ after restore at 6");
    for (int i = 0; i < 8; i++) {
        cr_expect(memcmp(&a.mt[i], &b.mt[i], sizeof a.mt[i]) == 0,
                  "metrics of iteration %d differ", i);
        cr_expect(memcmp(&a.mt[i], &c2.mt[i], sizeof a.mt[i]) == 0);
    }
    /* and the run moved the images */
    dt_dist d;
    dt_dist_make(&d, SR_CFG);
    dt_ctx c;
    dt_ctx_make(&c, t.m, &tr, t.w, 9);
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
    qd_synset s0;
    cr_assert_eq(d.vt->result(d.self, &s0), QD_OK);
    cr_expect(memcmp(s0.images, a.s.images, nx * sizeof(double)) != 0);
    qd_synset_free(&s0);
    dt_dist_free(&d);
    qd_synset_free(&a.s);
    qd_synset_free(&b.s);
    qd_synset_free(&c2.s);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}

/* ---- configuration ---- */

Test(distill_gm, config_errors_name_the_key)
{
    static const struct { const char *yaml, *key; } bad[] = {
        {"images_per_class: 0", "images_per_class"},
        {"iterations: 0", "iterations"},
        {"outer_loops: -1", "outer_loops"},
        {"batch_real: 0", "batch_real"},
        {"batch_train: 0", "batch_train"},
        {"lr_img: 0", "lr_img"},
        {"lr_net: -0.1", "lr_net"},
        {"momentum: 1", "momentum"},
        {"fd_eps: 0.5", "fd_eps"},
        {"distance: euclid", "distance"},
        {"augment: crop_blur", "augment"},
        {"augment: crop__flip", "augment"},
        {"augment_mode: S", "augment_mode"},
        {"init: zeros", "init"},
        {"model_init: sometimes", "model_init"},
        {"lr_imgs: 0.1", "lr_img"},   /* typo: a suggestion */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char yaml[256];
        snprintf(yaml, sizeof yaml, "{plugin: gradient_matching, %s}",
                 bad[i].yaml);
        dt_dist d;
        qd_error err = {0};
        cr_expect_neq(dt_dist_try(&d, yaml, &err), QD_OK, "accepted: %s",
                      bad[i].yaml);
        cr_expect(strstr(err.msg, bad[i].key), "'%s': %s", bad[i].yaml,
                  err.msg);
    }
    /* the augment message explains which op is wrong */
    dt_dist d;
    qd_error err = {0};
    cr_expect_neq(dt_dist_try(&d, "{plugin: gradient_matching, augment: "
                                  "crop_blur}", &err), QD_OK);
    cr_expect(strstr(err.msg, "blur"), "%s", err.msg);
    /* defaults: DC's loops and 1000 iterations */
    dt_dist_make(&d, "{plugin: gradient_matching, images_per_class: 10, "
                     "augment: color_crop_cutout_flip_scale_rotate}");
    cr_expect_eq(d.vt->n_iterations(d.self), 1000u);
    dt_dist_free(&d);
    /* a class without training images is refused at start */
    dt_model t;
    dt_model_make(&t, MLP_T, 1, 6, 6, K, 1);
    qd_dataset tr;
    make_data(&tr, 12, 2, 1.0, 1);   /* labels 0, 1 only */
    tr.classes = K;
    dt_dist_make(&d, "{plugin: gradient_matching}");
    dt_ctx c;
    dt_ctx_make(&c, t.m, &tr, t.w, 1);
    int rc = d.vt->start(d.self, &c.ctx);
    cr_expect_eq(rc, QD_ERR_INVALID);
    cr_expect(strstr(dt_dist_msg(&d, rc), "class 2 has none"), "%s",
              dt_dist_msg(&d, rc));
    dt_dist_free(&d);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}
