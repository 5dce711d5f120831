/* The `performance_matching` distiller plugin and qd_synset: configuration
 * checks, the meta-gradient as the plugin applies it, bit-for-bit
 * save/restore, numerical-failure reporting, the chance-level warning, and
 * distillation of a small synthetic problem that must beat a random real
 * subset of the same size. */
#include "distill_test_util.h"
#include "qdistill/train.h"

/* log.h and plugin.h both define qd_log_level; the test only needs this. */
QD_EXPORT void qd_log_set_file(FILE *f);

TestSuite(distill_pm, .fini = dt_teardown, .timeout = 120);

/* ---- data ---- */

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

/* ---- synset ---- */

Test(distill_pm, synset_alloc_copy_free)
{
    qd_synset s, t;
    qd_error err = {0};
    cr_assert_eq(qd_synset_alloc(&s, 2, 3, 4, 1, 2, 2, 4, 6, &err), QD_OK,
                 "%s", err.msg);
    cr_expect_eq(qd_synset_count(&s), 8u);
    for (size_t i = 0; i < 8 * 4; i++)
        s.images[i] = (double)i;
    for (size_t i = 0; i < 8; i++)
        s.labels[i] = (int32_t)(i % 4);
    for (size_t i = 0; i < 6; i++)
        s.lrs[i] = 0.1 * (double)i;
    s.init_mode = QD_INIT_RANDOM;
    cr_assert_eq(qd_synset_copy(&s, &t, &err), QD_OK, "%s", err.msg);
    cr_expect_neq(t.images, s.images);
    cr_expect(memcmp(t.images, s.images, 32 * sizeof(double)) == 0);
    cr_expect(memcmp(t.labels, s.labels, 8 * sizeof(int32_t)) == 0);
    cr_expect(memcmp(t.lrs, s.lrs, 6 * sizeof(double)) == 0);
    cr_expect_eq(t.init_mode, QD_INIT_RANDOM);
    cr_expect_eq(t.epochs, 3u);
    qd_synset_free(&s);
    cr_expect_null(s.images);
    qd_synset_free(&t);
    /* n_lrs must be 0 or steps * epochs; zero sizes are rejected */
    cr_expect_eq(qd_synset_alloc(&s, 2, 3, 4, 1, 2, 2, 4, 5, &err),
                 QD_ERR_INVALID);
    cr_expect(strstr(err.msg, "steps * epochs"), "%s", err.msg);
    cr_expect_eq(qd_synset_alloc(&s, 2, 3, 0, 1, 2, 2, 4, 0, &err),
                 QD_ERR_INVALID);
    cr_expect_eq(qd_synset_alloc(&s, (size_t)1 << 40, 1, (size_t)1 << 40, 1,
                                 1, 1, 2, 0, &err), QD_ERR_INVALID);
}

/* ---- configuration ---- */

Test(distill_pm, config_errors_name_the_key)
{
    dt_dist d;
    qd_error err = {0};
    cr_expect_neq(dt_dist_try(&d, "{plugin: performance_matching, lr_min: 0.1, "
                                  "lr_init: 0.05}", &err), QD_OK);
    cr_expect(strstr(err.msg, "lr_init"), "%s", err.msg);
    cr_expect_neq(dt_dist_try(&d, "{plugin: performance_matching, lr_min: 0.1, "
                                  "lr_max: 0.1}", &err), QD_OK);
    cr_expect(strstr(err.msg, "lr_max"), "%s", err.msg);
    cr_expect_neq(dt_dist_try(&d, "{plugin: performance_matching, steps: 0}",
                              &err), QD_OK);
    cr_expect(strstr(err.msg, "steps"), "%s", err.msg);
    cr_expect_neq(dt_dist_try(&d, "{plugin: performance_matching, "
                                  "decay_factor: 0}", &err), QD_OK);
    cr_expect(strstr(err.msg, "decay_factor"), "%s", err.msg);
    cr_expect_neq(dt_dist_try(&d, "{plugin: performance_matching, stpes: 3}",
                              &err), QD_OK);
    cr_expect(strstr(err.msg, "steps"), "a suggestion: %s", err.msg);
}

#define MLP_YAML                                                            \
    "layers:\n  - {type: linear, out: 8}\n  - {type: tanh}\n"                \
    "  - {type: linear, out: 3}\n"

Test(distill_pm, iteration_count_and_shapes)
{
    dt_model t;
    dt_model_make(&t, MLP_YAML, 1, 2, 3, 3, 1);
    qd_dataset tr;
    make_data(&tr, 1000, 1, 2, 3, 3, 0.5, 1, 2);
    dt_dist d;
    dt_dist_make(&d, "{plugin: performance_matching, outer_epochs: 2.5, "
                     "batch_size: 300, steps: 2, epochs: 3, "
                     "images_per_class: 2, init: real}");
    dt_ctx c;
    dt_ctx_make(&c, t.m, &tr, t.w, 3);
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK, "%s",
                 dt_dist_msg(&d, QD_ERR_INVALID));
    /* ceil(1000 / 300) = 4 batches per epoch, ceil(2.5 * 4) = 10 */
    cr_expect_eq(d.vt->n_iterations(d.self), 10u);
    qd_synset s;
    cr_assert_eq(d.vt->result(d.self, &s), QD_OK);
    cr_expect_eq(s.steps, 2u);
    cr_expect_eq(s.epochs, 3u);
    cr_expect_eq(s.per_step, 6u);
    cr_expect_eq(s.n_lrs, 6u);
    for (size_t t2 = 0; t2 < 6; t2++)
        cr_expect(fabs(s.lrs[t2] - 0.02) < 1e-15, "lr %g", s.lrs[t2]);
    /* labels class-major; init: real copies training images of the class */
    for (size_t i = 0; i < 12; i++) {
        cr_expect_eq(s.labels[i], (int32_t)((i % 6) / 2));
        int found = 0;
        for (size_t j = 0; j < tr.n && !found; j++)
            found = tr.labels[j] == s.labels[i] &&
                    memcmp(tr.images + j * 6, s.images + i * 6,
                           6 * sizeof(double)) == 0;
        cr_expect(found, "synthetic image %zu is not a real image of its "
                  "class", i);
    }
    qd_synset_free(&s);
    dt_dist_free(&d);
    dt_dist_make(&d, "{plugin: performance_matching, iterations: 7}");
    cr_expect_eq(d.vt->n_iterations(d.self), 7u);
    dt_dist_free(&d);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}

/* ---- the meta-gradient as applied ----
 * Softmax regression with fixed init and one batch = the whole training
 * set: the plugin's outer loss and gradient norm must equal the closed-form
 * reverse mode (images, and step sizes through softplus), and its first Adam
 * step must move every coordinate against the sign of that gradient. */
Test(distill_pm, plugin_meta_gradient_matches_closed_form)
{
    enum { D = 6, K = 4 };
    dt_model t;
    dt_model_make(&t, "layers:\n  - {type: linear, out: 4}\n", 1, 2, 3, K, 4);
    qd_dataset tr;
    make_data(&tr, 40, 1, 2, 3, K, 1.0, 5, 6);
    dt_dist d;
    dt_dist_make(&d, "{plugin: performance_matching, steps: 2, epochs: 2, "
                     "images_per_class: 1, batch_size: 40, lr_init: 0.5, "
                     "lr: 0.001, iterations: 1}");
    dt_ctx c;
    dt_ctx_make(&c, t.m, &tr, t.w, 4);
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
    qd_synset s0, s1;
    cr_assert_eq(d.vt->result(d.self, &s0), QD_OK);
    qd_distill_metrics mt;
    int rc = d.vt->iterate(d.self, &c.ctx, 0, &mt);
    cr_assert_eq(rc, QD_OK, "%s", dt_dist_msg(&d, rc));
    cr_assert_eq(d.vt->result(d.self, &s1), QD_OK);

    const size_t nx = 2 * K * D, T = 4;
    double gx[2 * K * D], gl[4];
    double L = sm_meta_exact(t.w, D, K, 2, K, T, s0.images, s0.labels, s0.lrs,
                             tr.n, tr.images, tr.labels, gx, gl);
    /* d lr / d raw = sigmoid(raw) = 1 - exp(-lr) for lr = softplus(raw) */
    double ss = dt_norm(gx, nx) * dt_norm(gx, nx);
    for (size_t i = 0; i < T; i++) {
        gl[i] *= 1.0 - exp(-s0.lrs[i]);
        ss += gl[i] * gl[i];
    }
    cr_expect(fabs(mt.loss - L) < 1e-12, "loss %.17g vs %.17g", mt.loss, L);
    cr_expect(fabs(mt.extra[0] - sqrt(ss)) < 1e-7 * sqrt(ss),
              "gradient norm %.12g vs %.12g", mt.extra[0], sqrt(ss));
    cr_expect(fabs(mt.lr_mean - 0.5) < 1e-14);
    cr_expect(fabs(mt.extra[2] - 0.001) < 1e-18, "outer lr %g", mt.extra[2]);
    size_t checked = 0;
    for (size_t i = 0; i < nx; i++) {
        if (fabs(gx[i]) < 1e-5)
            continue;
        double dx = s1.images[i] - s0.images[i];
        cr_expect(dx * gx[i] < 0.0 && fabs(fabs(dx) - 0.001) < 1e-5,
                  "image value %zu moved by %g, gradient %g", i, dx, gx[i]);
        checked++;
    }
    cr_expect(checked > nx / 2);
    for (size_t i = 0; i < T; i++)
        cr_expect((s1.lrs[i] - s0.lrs[i]) * gl[i] < 0.0, "lr %zu", i);
    qd_synset_free(&s0);
    qd_synset_free(&s1);
    dt_dist_free(&d);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}

/* ---- save / restore ---- */

typedef struct run_out {
    qd_synset s;
    qd_distill_metrics mt[16];
} run_out;

#define SR_CFG                                                              \
    "{plugin: performance_matching, steps: 2, epochs: 2, "                  \
    "images_per_class: 1, init: real, model_init: random, "                 \
    "models_per_iteration: 2, batch_size: 64, lr: 0.05, decay_epochs: 1, "  \
    "lr_min: 0.001, lr_max: 1.0, clip_grad: 0.5, iterations: 12}"

/* it0..it1-1 on an instance, optionally saved at `cut` and continued in a
 * new instance restored from the blob and the rng snapshots. */
static void sr_run(dt_model *t, const qd_dataset *tr, uint64_t cut,
                   run_out *o)
{
    dt_dist d;
    dt_dist_make(&d, SR_CFG);
    dt_ctx c;
    dt_ctx_make(&c, t->m, tr, t->w, 9);
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
    const uint64_t n = d.vt->n_iterations(d.self);
    for (uint64_t it = 0; it < n; it++) {
        if (it == cut) {
            qd_blob b;
            qd_blob_init(&b);
            cr_assert_eq(d.vt->save(d.self, &b), QD_OK);
            qd_rng r = c.rng, ri = c.init_rng;
            dt_dist_free(&d);
            /* a fresh instance, started on a fresh context (start draws
             * from the streams), then the host puts the streams back */
            dt_dist_make(&d, SR_CFG);
            dt_ctx_make(&c, t->m, tr, t->w, 9);
            cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
            c.rng = r;
            c.init_rng = ri;
            int rc = d.vt->restore(d.self, b.data, b.len);
            cr_assert_eq(rc, QD_OK, "%s", dt_dist_msg(&d, rc));
            /* a truncated blob is refused with a message */
            dt_dist d2;
            dt_dist_make(&d2, SR_CFG);
            cr_assert_eq(d2.vt->start(d2.self, &c.ctx), QD_OK);
            c.rng = r;
            c.init_rng = ri;
            rc = d2.vt->restore(d2.self, b.data, b.len - 3);
            cr_expect_eq(rc, QD_ERR_FORMAT);
            cr_expect_neq(d2.vt->iterate(d2.self, &c.ctx, it, NULL), QD_OK,
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

Test(distill_pm, save_restore_is_bit_for_bit)
{
    dt_model t;
    dt_model_make(&t, MLP_YAML, 1, 2, 3, 3, 2);
    qd_dataset tr;
    make_data(&tr, 150, 1, 2, 3, 3, 1.0, 7, 8);   /* 3 batches per epoch */
    run_out a, b, c2;
    sr_run(&t, &tr, UINT64_MAX, &a);
    sr_run(&t, &tr, 5, &b);    /* mid-epoch */
    sr_run(&t, &tr, 9, &c2);   /* at an epoch boundary */
    const size_t nx = qd_synset_count(&a.s) * 6;
    cr_expect(memcmp(a.s.images, b.s.images, nx * sizeof(double)) == 0,
              "images differ after restore at 5");
    cr_expect(memcmp(a.s.lrs, b.s.lrs, 4 * sizeof(double)) == 0);
    cr_expect(memcmp(a.s.images, c2.s.images, nx * sizeof(double)) == 0,
              "images differ after restore at 9");
    cr_expect(memcmp(a.s.lrs, c2.s.lrs, 4 * sizeof(double)) == 0);
    for (int i = 0; i < 12; i++) {
        cr_expect(memcmp(&a.mt[i], &b.mt[i], sizeof a.mt[i]) == 0,
                  "metrics of iteration %d differ", i);
        cr_expect(memcmp(&a.mt[i], &c2.mt[i], sizeof a.mt[i]) == 0);
    }
    /* bounded parametrisation: lrs stay inside (lr_min, lr_max) */
    for (int i = 0; i < 4; i++)
        cr_expect(a.s.lrs[i] > 0.001 && a.s.lrs[i] < 1.0, "lr %g",
                  a.s.lrs[i]);
    /* and the run did move them */
    cr_expect(fabs(a.s.lrs[0] - 0.02) > 1e-4, "lr %g", a.s.lrs[0]);
    qd_synset_free(&a.s);
    qd_synset_free(&b.s);
    qd_synset_free(&c2.s);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}

/* ---- numerical failures ---- */

Test(distill_pm, divergence_is_a_numeric_error)
{
    dt_model t;   /* two linear layers: logits grow like lr^2, overflow */
    dt_model_make(&t, "layers:\n  - {type: linear, out: 5}\n"
                      "  - {type: linear, out: 3}\n", 1, 2, 3, 3, 3);
    qd_dataset tr;
    make_data(&tr, 60, 1, 2, 3, 3, 1.0, 1, 1);
    dt_dist d;
    dt_dist_make(&d, "{plugin: performance_matching, lr_init: 1e200, "
                     "batch_size: 60, iterations: 3}");
    dt_ctx c;
    dt_ctx_make(&c, t.m, &tr, t.w, 3);
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
    int rc = d.vt->iterate(d.self, &c.ctx, 0, NULL);
    cr_expect_eq(rc, QD_ERR_NUMERIC, "rc %d: %s", rc, dt_dist_msg(&d, rc));
    const char *msg = dt_dist_msg(&d, rc);
    cr_expect(strstr(msg, "not finite") && strstr(msg, "iteration 0"), "%s",
              msg);
    dt_dist_free(&d);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}

/* Zero weights give uniform predictions; tiny step sizes and Adam lr keep
 * them there: the plugin must say so after 50 iterations at chance. */
Test(distill_pm, chance_level_is_logged)
{
    dt_model t;
    dt_model_make(&t, "layers:\n  - {type: linear, out: 3, init: zeros}\n",
                  1, 2, 3, 3, 3);
    qd_dataset tr;
    make_data(&tr, 30, 1, 2, 3, 3, 1.0, 1, 1);
    dt_dist d;
    dt_dist_make(&d, "{plugin: performance_matching, lr_init: 1e-9, "
                     "lr: 1e-12, batch_size: 30, iterations: 60}");
    dt_ctx c;
    dt_ctx_make(&c, t.m, &tr, t.w, 3);
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
    FILE *lf = tmpfile();
    cr_assert(lf);
    qd_log_set_file(lf);
    qd_distill_metrics mt;
    for (uint64_t it = 0; it < 60; it++) {
        cr_assert_eq(d.vt->iterate(d.self, &c.ctx, it, &mt), QD_OK);
        cr_assert(fabs(mt.loss - log(3.0)) < 1e-3);
    }
    qd_log_set_file(NULL);
    rewind(lf);
    char buf[4096] = {0};
    size_t got = fread(buf, 1, sizeof buf - 1, lf);
    fclose(lf);
    cr_expect(got > 0 && strstr(buf, "chance level"), "log: '%s'", buf);
    cr_expect(strstr(buf, "50 consecutive"), "log: '%s'", buf);
    char *second = strstr(buf, "chance level");
    cr_expect(second && !strstr(second + 1, "chance level"),
              "warned more than once in one run at chance");
    dt_dist_free(&d);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}

/* ---- it learns ---- */

/* Accuracy on `te` after replaying T updates on step batches from w0. */
static double replay_acc(qd_model *m, const double *w0, size_t steps,
                         size_t per, size_t T, const double *xs,
                         const int32_t *ys, const double *lrs,
                         const qd_dataset *te)
{
    const size_t n = qd_model_n_params(m), in = qd_model_input_size(m);
    double *w = malloc(n * sizeof *w), *g = malloc(n * sizeof *g), acc;
    memcpy(w, w0, n * sizeof *w);
    qd_error err = {0};
    for (size_t t = 0; t < T; t++) {
        size_t s = t % steps;
        cr_assert_eq(qd_model_loss_grad(m, w, per, xs + s * per * in,
                                        ys + s * per, NULL, g, NULL, NULL,
                                        &err), QD_OK, "%s", err.msg);
        for (size_t i = 0; i < n; i++)
            w[i] -= lrs[t] * g[i];
    }
    cr_assert_eq(qd_model_accuracy(m, w, te, 0, &acc, &err), QD_OK, "%s",
                 err.msg);
    free(w);
    free(g);
    return acc;
}

/* The `synthetic` dataset (5 classes of noisy 6x6 blob images), an MLP, 2
 * steps x 2 epochs x 1 image per class (10 images, 4 updates). The outer
 * loss must fall, and the distilled set with its learned step sizes must
 * beat random real subsets of the same size trained with the best of a
 * grid of fixed step sizes, on the test split. */
Test(distill_pm, distills_synthetic_problem)
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
    dt_dist d;
    dt_dist_make(&d, "{plugin: performance_matching, steps: 2, epochs: 2, "
                     "batch_size: 200, lr: 0.02, iterations: 300, "
                     "decay_epochs: 50}");
    dt_ctx c;
    dt_ctx_make(&c, t.m, &tr, t.w, 12);
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
    enum { N_IT = 300 };
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
    double acc_d = replay_acc(t.m, t.w, 2, 5, 4, s.images, s.labels, s.lrs,
                              &te);
    /* baselines: 10 random real subsets (one image per class per step) */
    qd_rng rng;
    qd_rng_seed(&rng, 77, 1);
    const double grid[] = {0.03, 0.1, 0.3, 1.0, 3.0};
    double best = 0.0;
    double *xs = malloc(10 * 36 * sizeof *xs);
    for (size_t gi = 0; gi < 5; gi++) {
        double lrs[4] = {grid[gi], grid[gi], grid[gi], grid[gi]}, mean = 0.0;
        qd_rng r = rng;   /* the same subsets for every step size */
        for (int rep = 0; rep < 10; rep++) {
            for (size_t k = 0; k < 10; k++) {   /* class k % 5, as labels */
                size_t j;
                do
                    j = qd_rng_bounded(&r, (uint32_t)tr.n);
                while ((size_t)tr.labels[j] != (size_t)s.labels[k]);
                memcpy(xs + k * 36, tr.images + j * 36, 36 * sizeof *xs);
            }
            mean += replay_acc(t.m, t.w, 2, 5, 4, xs, s.labels, lrs, &te) / 10;
        }
        best = mean > best ? mean : best;
    }
    cr_log_info("outer loss %.3f -> %.3f; test accuracy distilled %.3f, best "
                "random real subset %.3f; lrs %.3f %.3f %.3f %.3f", first,
                last, acc_d, best, s.lrs[0], s.lrs[1], s.lrs[2], s.lrs[3]);
    cr_expect(last < 0.7 * first, "outer loss %.3f -> %.3f", first, last);
    cr_expect(acc_d > best + 0.05, "distilled %.3f vs real subsets %.3f",
              acc_d, best);
    free(xs);
    qd_synset_free(&s);
    dt_dist_free(&d);
    dt_model_free(&t);
    qd_dataset_free(&tr);
    qd_dataset_free(&te);
    qd_instance_destroy(di);
    qd_config_destroy(dcfg);
}
