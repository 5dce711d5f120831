/* The `distribution_matching` distiller plugin: its image gradient against
 * central differences of the DM loss recomputed here from the model's
 * forward_to (with and without siamese augmentation, at the features before
 * a circuit and at the quantum expectations), the loss falling, the
 * distilled set beating random real subsets of the same size under the same
 * training recipe, bit-for-bit save/restore, and configuration errors. */
#include <omp.h>

#include "distill_test_util.h"
#include "qdistill/augment.h"
#include "qdistill/evaluate.h"
#include "qdistill/train.h"

TestSuite(distill_dm, .fini = dt_teardown, .timeout = 120);

/* ---- data ---- */

/* n samples of K classes in D = c*h*w dims: class means m_k ~ N(0, 1),
 * samples m_k + sd N(0, 1); labels cycle. */
static void make_data(qd_dataset *d, size_t n, size_t c, size_t h, size_t w,
                      size_t K, double sd, uint64_t seed)
{
    qd_error err = {0};
    cr_assert_eq(qd_dataset_alloc(d, n, c, h, w, K, &err), QD_OK, "%s",
                 err.msg);
    const size_t D = c * h * w;
    qd_rng rng;
    qd_rng_seed(&rng, seed, 2);
    double *mu = dt_normal(&rng, K * D, 1.0);
    for (size_t i = 0; i < n; i++) {
        size_t k = (i * 7 + 3) % K;
        d->labels[i] = (int32_t)k;
        for (size_t j = 0; j < D; j++)
            d->images[i * D + j] = mu[k * D + j] + sd * qd_rng_normal(&rng);
    }
    free(mu);
}

/* ---- the DM loss, written out from its definition ----
 * L(X) = sum_c || mean_{real i of c} e(A_c x_i) - mean_{j of c} e(A_c X_j) ||^2
 * with e the output of layer `emb` under w, A_c the augmentation drawn
 * from class c's seed (identity without augmentation), and the real batch
 * the whole class (batch_real >= the class size). */
typedef struct dm_ref {
    qd_model *m;
    const double *w;
    const char *emb;
    size_t E, K, ipc, in;
    qd_augment *aug;          /* NULL: none */
    uint64_t seeds[8];
    double *mean_real;        /* K x E */
} dm_ref;

static void embed_mean(dm_ref *r, size_t c, size_t n, const double *x,
                       double *mean)
{
    qd_error err = {0};
    double *xa = malloc(n * r->in * sizeof *xa);
    double *e = malloc(n * r->E * sizeof *e);
    if (r->aug)
        cr_assert_eq(qd_augment_apply(r->aug, r->seeds[c], n, x, xa, &err),
                     QD_OK, "%s", err.msg);
    else
        memcpy(xa, x, n * r->in * sizeof *xa);
    cr_assert_eq(qd_model_forward_to(r->m, r->w, n, xa, r->emb, e, &err),
                 QD_OK, "%s", err.msg);
    for (size_t j = 0; j < r->E; j++) {
        double s = 0.0;
        for (size_t i = 0; i < n; i++)
            s += e[i * r->E + j];
        mean[j] = s / (double)n;
    }
    free(xa);
    free(e);
}

static void ref_real_means(dm_ref *r, const qd_dataset *tr)
{
    r->mean_real = malloc(r->K * r->E * sizeof *r->mean_real);
    double *xc = malloc(tr->n * r->in * sizeof *xc);
    for (size_t c = 0; c < r->K; c++) {
        size_t n = 0;
        for (size_t i = 0; i < tr->n; i++)
            if ((size_t)tr->labels[i] == c)
                memcpy(xc + r->in * n++, tr->images + i * r->in,
                       r->in * sizeof *xc);
        embed_mean(r, c, n, xc, r->mean_real + c * r->E);
    }
    free(xc);
}

static double ref_loss(dm_ref *r, const double *X)
{
    double L = 0.0, ms[64];
    for (size_t c = 0; c < r->K; c++) {
        embed_mean(r, c, r->ipc, X + c * r->ipc * r->in, ms);
        for (size_t j = 0; j < r->E; j++) {
            double d = r->mean_real[c * r->E + j] - ms[j];
            L += d * d;
        }
    }
    return L;
}

/* Fourth-order central difference of ref_loss along X[i]. */
static double ref_fd(dm_ref *r, double *X, size_t i, double h)
{
    const double keep = X[i], off[4] = {2 * h, h, -h, -2 * h};
    double l[4];
    for (int k = 0; k < 4; k++) {
        X[i] = keep + off[k];
        l[k] = ref_loss(r, X);
    }
    X[i] = keep;
    return (8.0 * (l[1] - l[2]) - (l[0] - l[3])) / (12.0 * h);
}

/* A smooth quantum-LeNet-like model on 1 x 6 x 6 images, 3 classes: conv ->
 * tanh -> avgpool -> f (8 features) -> circuit on 3 qubits (q: 3
 * expectations) -> output. Smooth, so central differences need no kink
 * handling. */
#define SMOOTH_Q                                                            \
    "layers:\n"                                                             \
    "  - {name: conv, type: conv2d, out_channels: 2, kernel: 3, "           \
    "padding: 1}\n"                                                         \
    "  - {name: t1, type: tanh}\n"                                          \
    "  - {name: pool, type: avgpool2d, kernel: 2}\n"                        \
    "  - {name: flat, type: flatten}\n"                                     \
    "  - {name: f, type: linear, out: 8}\n"                                 \
    "  - name: q\n"                                                         \
    "    type: quantum\n"                                                   \
    "    wires: 3\n"                                                        \
    "    encoder: {plugin: amplitude}\n"                                    \
    "    ansatz: {plugin: strongly_entangling, layers: 1}\n"                \
    "    observable: {plugin: hermitian, trainable: true}\n"                \
    "    simulator: {plugin: statevector}\n"                                \
    "  - {name: out, type: linear, out: 3}\n"

/* One iteration of the plugin (fixed init, whole classes as real batches,
 * no momentum, lr_img = 1024 so the step is exactly -1024 * gradient up to
 * rounding) against the reference loss and its central differences over
 * every synthetic pixel. With augmentation the test draws the per-class
 * seeds as the plugin does: two u32 (high, low) per class from ctx->rng at
 * the start of the iteration. */
static void gradient_check(const char *emb, const char *augment, char mode)
{
    enum { K = 3, IPC = 2, IN = 36 };
    dt_model t;
    dt_model_make(&t, SMOOTH_Q, 1, 6, 6, K, 21);
    qd_dataset tr;
    make_data(&tr, 24, 1, 6, 6, K, 0.7, 22);
    char cfg[512];
    snprintf(cfg, sizeof cfg,
             "{plugin: distribution_matching, images_per_class: %d, "
             "batch_real: 1000, model_init: fixed, init: noise, momentum: 0, "
             "lr_img: 1024, iterations: 1, embedding: %s, augment: %s, "
             "augment_mode: %s}", IPC, emb, augment, mode == 'M' ? "all" : "single");
    dt_dist d;
    dt_dist_make(&d, cfg);
    dt_ctx c;
    dt_ctx_make(&c, t.m, &tr, t.w, 23);
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK, "%s",
                 dt_dist_msg(&d, QD_ERR_INVALID));
    qd_synset s0, s1;
    cr_assert_eq(d.vt->result(d.self, &s0), QD_OK);
    cr_expect_eq(s0.n_lrs, 0u);
    cr_expect_eq(qd_synset_count(&s0), (size_t)K * IPC);

    dm_ref r = {0};
    r.m = t.m;
    r.w = t.w;
    r.emb = emb;
    r.E = qd_model_layer_size(t.m, emb);
    r.K = K;
    r.ipc = IPC;
    r.in = IN;
    qd_error err = {0};
    if (strcmp(augment, "none") != 0) {
        cr_assert_eq(qd_augment_create(augment, mode, 1, 6, 6, &r.aug, &err),
                     QD_OK, "%s", err.msg);
        qd_rng rr = c.rng;
        for (size_t k = 0; k < K; k++) {
            uint64_t hi = qd_rng_u32(&rr);
            r.seeds[k] = hi << 32 | qd_rng_u32(&rr);
        }
    }

    qd_distill_metrics mt;
    int rc = d.vt->iterate(d.self, &c.ctx, 0, &mt);
    cr_assert_eq(rc, QD_OK, "%s", dt_dist_msg(&d, rc));
    cr_assert_eq(d.vt->result(d.self, &s1), QD_OK);

    ref_real_means(&r, &tr);
    const size_t N = K * IPC * IN;
    double *X = malloc(N * sizeof *X), *g = malloc(N * sizeof *g);
    double *f = malloc(N * sizeof *f);
    memcpy(X, s0.images, N * sizeof *X);
    const double L = ref_loss(&r, X);
    cr_expect(fabs(mt.loss - L) <= 1e-12 * L, "%s/%s: plugin loss %.17g, "
              "reference %.17g", emb, augment, mt.loss, L);
    for (size_t i = 0; i < N; i++) {
        g[i] = (s0.images[i] - s1.images[i]) / 1024.0;
        f[i] = ref_fd(&r, X, i, 1e-3);
    }
    double e = dt_rel(g, f, N);
    cr_log_info("embedding %s, augment %s (%c): loss %.4g, |grad| %.3g, "
                "relative error %.2e", emb, augment, mode, L, dt_norm(f, N),
                e);
    cr_expect(dt_norm(f, N) > 1e-6, "zero gradient");
    cr_expect(e <= 1e-6, "%s/%s: image gradient relative error %.3g", emb,
              augment, e);
    cr_expect(fabs(mt.extra[0] - dt_norm(f, N)) <= 1e-6 * dt_norm(f, N),
              "grad_norm column %.12g vs %.12g", mt.extra[0], dt_norm(f, N));
    free(X);
    free(g);
    free(f);
    free(r.mean_real);
    qd_augment_destroy(r.aug);
    qd_synset_free(&s0);
    qd_synset_free(&s1);
    dt_dist_free(&d);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}

Test(distill_dm, gradient_at_features_before_the_circuit)
{
    gradient_check("f", "none", 'S');
}

Test(distill_dm, gradient_at_quantum_expectations)
{
    gradient_check("q", "none", 'S');
}

Test(distill_dm, gradient_with_augmentation)
{
    /* all ops chained (M), and one op per class drawn (S, as DSA) */
    gradient_check("f", "color_crop_cutout_flip_scale_rotate", 'M');
    gradient_check("q", "color_crop_cutout_flip_scale_rotate", 'S');
}

/* ---- learning ---- */

static void load_synthetic(qd_dataset *tr, qd_dataset *te, size_t classes,
                           double noise)
{
    qd_config *dcfg;
    qd_error err = {0};
    char dy[256];
    snprintf(dy, sizeof dy,
             "{plugin: synthetic, classes: %zu, train_size: 600, "
             "test_size: 500, height: 8, width: 8, noise: %g, shift: 1}",
             classes, noise);
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
    cr_assert_eq(dvt->load(qd_instance_self(di), QD_SPLIT_TRAIN, tr), QD_OK);
    cr_assert_eq(dvt->load(qd_instance_self(di), QD_SPLIT_TEST, te), QD_OK);
    qd_instance_destroy(di);
    qd_config_destroy(dcfg);
}

#define CONVNET                                                             \
    "layers:\n"                                                             \
    "  - {name: conv1, type: conv2d, out_channels: 6, kernel: 3, "          \
    "padding: 1}\n"                                                         \
    "  - {name: relu1, type: relu}\n"                                       \
    "  - {name: pool1, type: maxpool2d, kernel: 2}\n"                       \
    "  - {name: flat, type: flatten}\n"                                     \
    "  - {name: fc1, type: linear, out: 32}\n"                              \
    "  - {name: relu2, type: relu}\n"                                       \
    "  - {name: fc2, type: linear, out: 5}\n"

/* Mean test accuracy of `models` fresh random initialisations trained on s
 * with the evaluation recipe (full-batch SGD, `epochs` steps, rate lr). */
static double recipe_acc(qd_model *m, const qd_synset *s, const qd_dataset *te,
                         double lr, size_t models, int subset,
                         const qd_dataset *tr)
{
    qd_eval_opts o;
    memset(&o, 0, sizeof o);
    o.models = models;
    o.init_mode = QD_INIT_RANDOM;
    o.seed = 41;
    o.recipe_epochs = 300;
    o.recipe_batch = 0;
    const size_t n = qd_model_n_params(m);
    double *w = malloc(n * sizeof *w), mean = 0.0;
    qd_error err = {0};
    for (size_t i = 0; i < models; i++) {
        qd_synset sub;
        const qd_synset *set = s;
        if (subset) {
            cr_assert_eq(qd_eval_real_subset(s, tr, &o, i, lr, &sub, &err),
                         QD_OK, "%s", err.msg);
            set = &sub;
        }
        cr_assert_eq(qd_eval_init(m, &o, i, w, &err), QD_OK, "%s", err.msg);
        cr_assert_eq(qd_eval_train(m, set, &o, lr, w, &err), QD_OK, "%s",
                     err.msg);
        double acc;
        cr_assert_eq(qd_model_accuracy(m, w, te, 0, &acc, &err), QD_OK, "%s",
                     err.msg);
        mean += acc / (double)models;
        if (subset)
            qd_synset_free(&sub);
    }
    free(w);
    return mean;
}

/* 5 classes of noisy, shifted blob images; a small ConvNet; one image per
 * class from real images. The DM loss must fall, and the distilled set
 * must beat random real subsets of the same size (a new one per model)
 * trained with the same recipe at the best rate of a grid, on the test
 * split. */
Test(distill_dm, distills_synthetic_problem)
{
    omp_set_num_threads(1);
    qd_dataset tr, te;
    load_synthetic(&tr, &te, 5, 2.0);
    dt_model t;
    dt_model_make(&t, CONVNET, 1, 8, 8, 5, 12);
    dt_dist d;
    dt_dist_make(&d, "{plugin: distribution_matching, images_per_class: 1, "
                     "batch_real: 64, iterations: 200, embedding: relu2}");
    dt_ctx c;
    dt_ctx_make(&c, t.m, &tr, t.w, 12);
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
    enum { N_IT = 200, AVG = 20 };
    double first = 0.0, last = 0.0;
    for (uint64_t it = 0; it < N_IT; it++) {
        qd_distill_metrics mt;
        int rc = d.vt->iterate(d.self, &c.ctx, it, &mt);
        cr_assert_eq(rc, QD_OK, "%s", dt_dist_msg(&d, rc));
        cr_assert(isfinite(mt.loss) && mt.loss >= 0.0);
        if (it < AVG)
            first += mt.loss / AVG;
        if (it >= N_IT - AVG)
            last += mt.loss / AVG;
    }
    qd_synset s;
    cr_assert_eq(d.vt->result(d.self, &s), QD_OK);
    const double grid[] = {0.01, 0.03, 0.1, 0.3};
    double best_d = 0.0, best_r = 0.0;
    for (size_t g = 0; g < 4; g++) {
        double a = recipe_acc(t.m, &s, &te, grid[g], 6, 0, &tr);
        double b = recipe_acc(t.m, &s, &te, grid[g], 6, 1, &tr);
        cr_log_info("lr %.2f: distilled %.3f, random real %.3f", grid[g], a,
                    b);
        best_d = a > best_d ? a : best_d;
        best_r = b > best_r ? b : best_r;
    }
    cr_log_info("DM loss %.4g -> %.4g; test accuracy distilled %.3f, random "
                "real subsets %.3f", first, last, best_d, best_r);
    cr_expect(last < 0.8 * first, "DM loss %.4g -> %.4g", first, last);
    cr_expect(best_d > best_r + 0.05, "distilled %.3f vs random real %.3f",
              best_d, best_r);
    qd_synset_free(&s);
    dt_dist_free(&d);
    dt_model_free(&t);
    qd_dataset_free(&tr);
    qd_dataset_free(&te);
}

/* ---- save / restore ---- */

typedef struct run_out {
    qd_synset s;
    qd_distill_metrics mt[12];
} run_out;

#define SR_CFG                                                              \
    "{plugin: distribution_matching, images_per_class: 2, batch_real: 5, "  \
    "init: real, lr_img: 0.5, iterations: 10, embedding: f, "               \
    "augment: color_crop_flip_scale_rotate}"

static void sr_run(dt_model *t, const qd_dataset *tr, uint64_t cut,
                   run_out *o)
{
    dt_dist d;
    dt_dist_make(&d, SR_CFG);
    dt_ctx c;
    dt_ctx_make(&c, t->m, tr, t->w, 9);
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
    const uint64_t n = d.vt->n_iterations(d.self);
    cr_assert_eq(n, 10u);
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
            /* truncated, or of another plugin: refused, and the instance
             * will not iterate on a half-restored state */
            dt_dist d2;
            dt_dist_make(&d2, SR_CFG);
            cr_assert_eq(d2.vt->start(d2.self, &c.ctx), QD_OK);
            c.rng = r;
            c.init_rng = ri;
            rc = d2.vt->restore(d2.self, b.data, b.len - 3);
            cr_expect_eq(rc, QD_ERR_FORMAT);
            cr_expect_neq(d2.vt->iterate(d2.self, &c.ctx, it, NULL), QD_OK,
                          "iterate after a failed restore must fail");
            unsigned char junk[64] = {1, 2, 3, 4};
            cr_expect_eq(d2.vt->restore(d2.self, junk, sizeof junk),
                         QD_ERR_FORMAT);
            cr_expect(strstr(dt_dist_msg(&d2, QD_ERR_FORMAT),
                             "distribution_matching"), "%s",
                      dt_dist_msg(&d2, QD_ERR_FORMAT));
            dt_dist_free(&d2);
            qd_blob_free(&b);
        }
        int rc = d.vt->iterate(d.self, &c.ctx, it, &o->mt[it]);
        cr_assert_eq(rc, QD_OK, "%s", dt_dist_msg(&d, rc));
    }
    cr_assert_eq(d.vt->result(d.self, &o->s), QD_OK);
    dt_dist_free(&d);
}

Test(distill_dm, save_restore_is_bit_for_bit)
{
    dt_model t;
    dt_model_make(&t, SMOOTH_Q, 1, 6, 6, 3, 2);
    qd_dataset tr;
    make_data(&tr, 45, 1, 6, 6, 3, 1.0, 7);
    run_out a, b, c2;
    sr_run(&t, &tr, UINT64_MAX, &a);
    sr_run(&t, &tr, 1, &b);    /* right after the momentum buffer is seeded */
    sr_run(&t, &tr, 6, &c2);
    const size_t nx = qd_synset_count(&a.s) * 36;
    cr_expect(memcmp(a.s.images, b.s.images, nx * sizeof(double)) == 0,
              "images differ after restore at 1");
    cr_expect(memcmp(a.s.images, c2.s.images, nx * sizeof(double)) == 0,
              "images differ after restore at 6");
    for (int i = 0; i < 10; i++) {
        cr_expect(memcmp(&a.mt[i], &b.mt[i], sizeof a.mt[i]) == 0,
                  "metrics of iteration %d differ", i);
        cr_expect(memcmp(&a.mt[i], &c2.mt[i], sizeof a.mt[i]) == 0,
                  "metrics of iteration %d differ", i);
    }
    /* the images did move, and init: real started from real images */
    cr_expect(a.mt[9].loss != a.mt[0].loss);
    qd_synset_free(&a.s);
    qd_synset_free(&b.s);
    qd_synset_free(&c2.s);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}

Test(distill_dm, init_real_shapes_and_embedding_default)
{
    dt_model t;
    dt_model_make(&t, SMOOTH_Q, 1, 6, 6, 3, 2);
    qd_dataset tr;
    make_data(&tr, 12, 1, 6, 6, 3, 1.0, 7);   /* 4 images per class */
    dt_dist d;
    /* 6 per class: 4 distinct, then repeats; auto = the layer before the
     * output, q here */
    dt_dist_make(&d, "{plugin: distribution_matching, images_per_class: 6, "
                     "iterations: 3}");
    cr_expect_eq(d.vt->n_iterations(d.self), 3u);
    dt_ctx c;
    dt_ctx_make(&c, t.m, &tr, t.w, 3);
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
    qd_synset s;
    cr_assert_eq(d.vt->result(d.self, &s), QD_OK);
    cr_expect_eq(s.steps, 1u);
    cr_expect_eq(s.per_step, 18u);
    cr_expect_eq(s.n_lrs, 0u);
    cr_expect_eq(s.init_mode, QD_INIT_RANDOM);
    for (size_t i = 0; i < 18; i++) {
        cr_expect_eq(s.labels[i], (int32_t)(i / 6));
        int found = 0;
        for (size_t j = 0; j < tr.n && !found; j++)
            found = tr.labels[j] == s.labels[i] &&
                    memcmp(tr.images + j * 36, s.images + i * 36,
                           36 * sizeof(double)) == 0;
        cr_expect(found, "image %zu is not a real image of its class", i);
    }
    for (size_t k = 0; k < 3; k++)   /* the first 4 of a class distinct */
        for (size_t i = 0; i < 4; i++)
            for (size_t j = 0; j < i; j++)
                cr_expect(memcmp(s.images + (k * 6 + i) * 36,
                                 s.images + (k * 6 + j) * 36,
                                 36 * sizeof(double)) != 0);
    qd_distill_metrics mt;
    cr_assert_eq(d.vt->iterate(d.self, &c.ctx, 0, &mt), QD_OK);
    cr_expect(isnan(mt.lr_mean), "no learned step sizes");
    cr_expect(mt.extra[1] >= 0.0 && mt.extra[2] > 0.0);
    qd_synset_free(&s);
    dt_dist_free(&d);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}

/* ---- errors ---- */

Test(distill_dm, config_errors_name_the_key)
{
    static const struct {
        const char *yaml, *key;
    } bad[] = {
        {"{plugin: distribution_matching, lr_img: 0}", "lr_img"},
        {"{plugin: distribution_matching, lr_img: .inf}", "lr_img"},
        {"{plugin: distribution_matching, momentum: 1}", "momentum"},
        {"{plugin: distribution_matching, batch_real: 0}", "batch_real"},
        {"{plugin: distribution_matching, images_per_class: 0}",
         "images_per_class"},
        {"{plugin: distribution_matching, iterations: 0}", "iterations"},
        {"{plugin: distribution_matching, embedding: ''}", "embedding"},
        {"{plugin: distribution_matching, augment: crop_blur}", "augment"},
        {"{plugin: distribution_matching, augment: crop_}", "augment"},
        {"{plugin: distribution_matching, augment_mode: X}", "augment_mode"},
        {"{plugin: distribution_matching, init: zeros}", "init"},
        {"{plugin: distribution_matching, model_init: none}", "model_init"},
        {"{plugin: distribution_matching, lr_imgs: 1}", "lr_img"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        dt_dist d;
        qd_error err = {0};
        cr_expect_neq(dt_dist_try(&d, bad[i].yaml, &err), QD_OK, "%s",
                      bad[i].yaml);
        cr_expect(strstr(err.msg, bad[i].key), "%s: '%s'", bad[i].yaml,
                  err.msg);
    }
}

Test(distill_dm, unknown_embedding_lists_the_layers)
{
    dt_model t;
    dt_model_make(&t, SMOOTH_Q, 1, 6, 6, 3, 2);
    qd_dataset tr;
    make_data(&tr, 12, 1, 6, 6, 3, 1.0, 7);
    dt_dist d;
    dt_dist_make(&d, "{plugin: distribution_matching,\n embedding: f3}");
    dt_ctx c;
    dt_ctx_make(&c, t.m, &tr, t.w, 3);
    int rc = d.vt->start(d.self, &c.ctx);
    cr_expect_eq(rc, QD_ERR_INVALID);
    const char *msg = dt_dist_msg(&d, rc);
    cr_expect(strstr(msg, "'embedding'") && strstr(msg, "f3"), "%s", msg);
    cr_expect(strstr(msg, "f (8)") && strstr(msg, "q (3)") &&
              strstr(msg, "conv (72)"), "valid layers listed: %s", msg);
    cr_expect(strstr(msg, ":2:"), "located at the key: %s", msg);
    cr_expect_neq(d.vt->iterate(d.self, &c.ctx, 0, NULL), QD_OK);
    dt_dist_free(&d);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}

Test(distill_dm, divergence_is_a_numeric_error)
{
    dt_model t;
    dt_model_make(&t, "layers:\n  - {name: a, type: linear, out: 4}\n"
                      "  - {type: linear, out: 3}\n", 1, 2, 3, 3, 3);
    qd_dataset tr;
    make_data(&tr, 30, 1, 2, 3, 3, 1.0, 1);
    dt_dist d;
    dt_dist_make(&d, "{plugin: distribution_matching, lr_img: 1e306, "
                     "momentum: 0, embedding: a, iterations: 5}");
    dt_ctx c;
    dt_ctx_make(&c, t.m, &tr, t.w, 3);
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
    int rc = QD_OK;
    uint64_t it = 0;
    for (; it < 5 && rc == QD_OK; it++)
        rc = d.vt->iterate(d.self, &c.ctx, it, NULL);
    cr_expect_eq(rc, QD_ERR_NUMERIC, "rc %d: %s", rc, dt_dist_msg(&d, rc));
    const char *msg = dt_dist_msg(&d, rc);
    cr_expect(strstr(msg, "not finite") || strstr(msg, "non-finite"), "%s",
              msg);
    cr_expect_neq(d.vt->iterate(d.self, &c.ctx, it, NULL), QD_OK,
                  "a broken set must not iterate on");
    dt_dist_free(&d);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}
