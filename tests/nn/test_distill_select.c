/* The selection baselines `random_subset`, `herding` and `kcenter`
 * (plugins/distillers/selection.c): each selection against a brute-force
 * reference of its greedy rule, in embeddings computed here in closed form
 * from the parameters; random subsets are class-balanced, uniform and
 * seeded; herding and kcenter beat random subsets on held-out data of a
 * problem with outliers; save/restore; configuration errors. */
#include "distill_test_util.h"
#include "qdistill/train.h"

TestSuite(distill_select, .fini = dt_teardown, .timeout = 120);

/* ---- data: K Gaussian classes in D = 1 x 2 x 3 dims ----
 * class means m_k ~ N(0, sep^2); a sample is m_k + sd N(0, 1), or with
 * probability p_out an outlier m_k + out_sd N(0, 1). Labels cycle. */
enum { D = 6, K = 3 };

static void make_data(qd_dataset *d, size_t n, double sep, double sd,
                      double p_out, double out_sd, uint64_t seed,
                      uint64_t mseed)
{
    qd_error err = {0};
    cr_assert_eq(qd_dataset_alloc(d, n, 1, 2, 3, K, &err), QD_OK, "%s",
                 err.msg);
    qd_rng mr, rng;
    qd_rng_seed(&mr, mseed, 1);
    qd_rng_seed(&rng, seed, 2);
    double *mu = dt_normal(&mr, K * D, sep);
    for (size_t i = 0; i < n; i++) {
        size_t k = (i * 7 + 3) % K;
        d->labels[i] = (int32_t)k;
        double s = qd_rng_uniform(&rng) < p_out ? out_sd : sd;
        for (size_t j = 0; j < D; j++)
            d->images[i * D + j] = mu[k * D + j] + s * qd_rng_normal(&rng);
    }
    free(mu);
}

/* emb: linear D -> 4, act: tanh, head: linear 4 -> K */
#define EMB_YAML                                                            \
    "layers:\n  - {name: emb, type: linear, out: 4}\n"                      \
    "  - {name: act, type: tanh}\n  - {name: head, type: linear, out: 3}\n"
enum { EMB = 4 };

/* Offset of a parameter block (layer, what). */
static size_t block_at(const qd_model *m, const char *layer, const char *what)
{
    for (size_t i = 0; i < qd_model_n_blocks(m); i++) {
        const qd_param_block *b = qd_model_block(m, i);
        if (strcmp(b->layer, layer) == 0 && strcmp(b->what, what) == 0)
            return b->offset;
    }
    cr_assert_fail("no block %s.%s", layer, what);
    return 0;
}

typedef enum { SPACE_INPUT, SPACE_EMB, SPACE_ACT, SPACE_LOGITS } space;

/* The embedding of x, written from the formulas: the emb layer We x + be,
 * act = tanh of it, the logits Wh tanh(We x + be) + bh, or x itself.
 * Returns its size. */
static size_t ref_embed(const qd_model *m, const double *w, space sp,
                        const double *x, double *e)
{
    if (sp == SPACE_INPUT) {
        memcpy(e, x, D * sizeof *e);
        return D;
    }
    const double *We = w + block_at(m, "emb", "weight");
    const double *be = w + block_at(m, "emb", "bias");
    double h[EMB];
    for (size_t o = 0; o < EMB; o++) {
        h[o] = be[o];
        for (size_t j = 0; j < D; j++)
            h[o] += We[o * D + j] * x[j];
    }
    if (sp == SPACE_EMB || sp == SPACE_ACT) {
        for (size_t o = 0; o < EMB; o++)
            e[o] = sp == SPACE_ACT ? tanh(h[o]) : h[o];
        return EMB;
    }
    const double *Wh = w + block_at(m, "head", "weight");
    const double *bh = w + block_at(m, "head", "bias");
    for (size_t k = 0; k < K; k++) {
        e[k] = bh[k];
        for (size_t o = 0; o < EMB; o++)
            e[k] += Wh[k * EMB + o] * tanh(h[o]);
    }
    return K;
}

/* Candidates of class c (training order) and their reference embeddings. */
static size_t class_rows(const qd_dataset *tr, const qd_model *m,
                         const double *w, space sp, size_t c, size_t *idx,
                         double *E, size_t *dim)
{
    size_t n = 0;
    *dim = sp == SPACE_INPUT ? D : sp == SPACE_LOGITS ? K : EMB;
    for (size_t i = 0; i < tr->n; i++)
        if ((size_t)tr->labels[i] == c) {
            *dim = ref_embed(m, w, sp, tr->images + i * D, E + n * D);
            idx[n++] = i;
        }
    /* rows were written with stride D; compact them to stride dim */
    for (size_t i = 0; i < n; i++)
        memmove(E + i * *dim, E + i * D, *dim * sizeof *E);
    return n;
}

static double dist(const double *a, const double *b, size_t dim)
{
    double s = 0.0;
    for (size_t j = 0; j < dim; j++)
        s += (a[j] - b[j]) * (a[j] - b[j]);
    return sqrt(s);
}

static void mean_of(const double *E, const size_t *rows, size_t n, size_t dim,
                    double *mu)
{
    memset(mu, 0, dim * sizeof *mu);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < dim; j++)
            mu[j] += E[(rows ? rows[i] : i) * dim + j] / (double)n;
}

/* Brute-force herding: pick t is the unchosen point that makes the mean of
 * the chosen points plus it closest to the class mean. */
static void ref_herding(const double *E, size_t n, size_t dim, size_t k,
                        size_t *out)
{
    double mu[16], m[16];
    mean_of(E, NULL, n, dim, mu);
    int *taken = calloc(n, sizeof *taken);
    for (size_t t = 0; t < k; t++) {
        size_t best = n;
        double bv = INFINITY;
        for (size_t i = 0; i < n; i++) {
            if (taken[i])
                continue;
            for (size_t j = 0; j < dim; j++) {
                double s = E[i * dim + j];
                for (size_t u = 0; u < t; u++)
                    s += E[out[u] * dim + j];
                m[j] = s / (double)(t + 1);
            }
            double v = dist(m, mu, dim);
            if (v < bv) {
                bv = v;
                best = i;
            }
        }
        taken[best] = 1;
        out[t] = best;
    }
    free(taken);
}

/* Covering radius of the points `sel` (k of them) over all n rows. */
static double radius_of(const double *E, size_t n, size_t dim,
                        const size_t *sel, size_t k)
{
    double r = 0.0;
    for (size_t i = 0; i < n; i++) {
        double m = INFINITY;
        for (size_t t = 0; t < k; t++) {
            double q = dist(E + i * dim, E + sel[t] * dim, dim);
            m = q < m ? q : m;
        }
        r = m > r ? m : r;
    }
    return r;
}

/* Brute-force greedy k-center: the point closest to the mean, then the
 * point whose nearest chosen point is farthest. */
static void ref_kcenter(const double *E, size_t n, size_t dim, size_t k,
                        size_t *out)
{
    double mu[16];
    mean_of(E, NULL, n, dim, mu);
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (dist(E + i * dim, mu, dim) < dist(E + best * dim, mu, dim))
            best = i;
    out[0] = best;
    for (size_t t = 1; t < k; t++) {
        double bv = -1.0;
        for (size_t i = 0; i < n; i++) {
            double m = INFINITY;
            int chosen = 0;
            for (size_t u = 0; u < t; u++) {
                chosen |= out[u] == i;
                double q = dist(E + i * dim, E + out[u] * dim, dim);
                m = q < m ? q : m;
            }
            if (!chosen && m > bv) {
                bv = m;
                best = i;
            }
        }
        out[t] = best;
    }
}

/* ---- running a selection ---- */

static int try_select(const char *yaml, qd_model *m, const double *w0,
                      const qd_dataset *tr, uint64_t seed, qd_synset *s,
                      qd_distill_metrics *mt, char *msg, size_t cap)
{
    dt_dist d;
    dt_dist_make(&d, yaml);
    dt_ctx c;
    dt_ctx_make(&c, m, tr, w0, seed);
    int rc = d.vt->start(d.self, &c.ctx);
    if (!rc) {
        cr_expect_eq(d.vt->n_iterations(d.self), 1u);
        rc = d.vt->iterate(d.self, &c.ctx, 0, mt);
    }
    if (!rc)
        rc = d.vt->result(d.self, s);
    if (rc && msg)
        snprintf(msg, cap, "%.*s", (int)cap - 1, dt_dist_msg(&d, rc));
    dt_dist_free(&d);
    return rc;
}

static void select_set(const char *yaml, qd_model *m, const double *w0,
                       const qd_dataset *tr, uint64_t seed, qd_synset *s,
                       qd_distill_metrics *mt)
{
    char msg[512] = "";
    qd_distill_metrics scratch;
    int rc = try_select(yaml, m, w0, tr, seed, s, mt ? mt : &scratch, msg,
                        sizeof msg);
    cr_assert_eq(rc, QD_OK, "%s: %s", yaml, msg);
    cr_assert_eq(s->steps, 1u);
    cr_assert_eq(s->n_lrs, 0u);
    cr_assert_eq(s->classes, (size_t)K);
}

/* Slot j of the set is the training image idx. */
static int is_image(const qd_synset *s, size_t j, const qd_dataset *tr,
                    size_t idx)
{
    return memcmp(s->images + j * D, tr->images + idx * D,
                  D * sizeof(double)) == 0;
}

/* The set equals the reference picks of a greedy rule in space sp, per
 * class in order; returns the reference mean gap and covering radius
 * (averaged over classes) of the picks. */
static void check_against(const qd_synset *s, const qd_dataset *tr,
                          const qd_model *m, const double *w, space sp,
                          size_t ipc, int kc, double *gap, double *rad)
{
    size_t *idx = malloc(tr->n * sizeof *idx), pick[16];
    double *E = malloc(tr->n * D * sizeof *E), mu[16], ms[16];
    *gap = *rad = 0.0;
    for (size_t c = 0; c < K; c++) {
        size_t dim, n = class_rows(tr, m, w, sp, c, idx, E, &dim);
        if (kc)
            ref_kcenter(E, n, dim, ipc, pick);
        else
            ref_herding(E, n, dim, ipc, pick);
        for (size_t k = 0; k < ipc; k++) {
            cr_expect_eq(s->labels[c * ipc + k], (int32_t)c);
            cr_expect(is_image(s, c * ipc + k, tr, idx[pick[k]]),
                      "%s space %d: class %zu pick %zu is not training "
                      "image %zu", kc ? "kcenter" : "herding", (int)sp, c, k,
                      idx[pick[k]]);
        }
        mean_of(E, NULL, n, dim, mu);
        mean_of(E, pick, ipc, dim, ms);
        *gap += dist(ms, mu, dim) / K;
        *rad += radius_of(E, n, dim, pick, ipc) / K;
    }
    free(idx);
    free(E);
}

static int close_to(double a, double b)
{
    return fabs(a - b) <= 1e-10 * (1.0 + fabs(b));
}

/* ---- the greedy rules ---- */

Test(distill_select, herding_matches_brute_force)
{
    dt_model t;
    dt_model_make(&t, EMB_YAML, 1, 2, 3, K, 3);
    qd_dataset tr;
    make_data(&tr, 120, 1.0, 1.0, 0.0, 0.0, 4, 5);
    static const struct { const char *yaml; space sp; size_t dim; } cases[] = {
        {"{plugin: herding, images_per_class: 6, embedding: emb}", SPACE_EMB,
         EMB},
        {"{plugin: herding, images_per_class: 4, embedding: head}",
         SPACE_LOGITS, K},
        /* auto: the layer before the output layer */
        {"{plugin: herding, images_per_class: 3}", SPACE_ACT, EMB},
        {"{plugin: herding, images_per_class: 5, embedding: input}",
         SPACE_INPUT, D},
    };
    for (size_t i = 0; i < 4; i++) {
        qd_synset s;
        qd_distill_metrics mt;
        select_set(cases[i].yaml, t.m, t.w, &tr, 7, &s, &mt);
        size_t ipc = s.per_step / K;
        double gap, rad;
        check_against(&s, &tr, t.m, t.w, cases[i].sp, ipc, 0, &gap, &rad);
        cr_expect(close_to(mt.loss, gap), "%s: loss %.15g vs %.15g",
                  cases[i].yaml, mt.loss, gap);
        cr_expect(close_to(mt.extra[0], gap));
        cr_expect(close_to(mt.extra[1], rad), "radius %.15g vs %.15g",
                  mt.extra[1], rad);
        cr_expect_eq(mt.extra[2], 120.0);
        cr_expect_eq(mt.extra[3], (double)cases[i].dim);
        qd_synset_free(&s);
    }
    qd_dataset_free(&tr);
    dt_model_free(&t);
}

Test(distill_select, kcenter_matches_brute_force_and_covers_better)
{
    dt_model t;
    dt_model_make(&t, EMB_YAML, 1, 2, 3, K, 6);
    qd_dataset tr;
    make_data(&tr, 150, 1.0, 1.0, 0.0, 0.0, 8, 9);
    enum { IPC = 5 };
    qd_synset s;
    qd_distill_metrics mt;
    select_set("{plugin: kcenter, images_per_class: 5, embedding: emb}", t.m,
               t.w, &tr, 7, &s, &mt);
    double gap, rad;
    check_against(&s, &tr, t.m, t.w, SPACE_EMB, IPC, 1, &gap, &rad);
    cr_expect(close_to(mt.loss, rad), "loss %.15g vs radius %.15g", mt.loss,
              rad);
    cr_expect(close_to(mt.extra[1], rad));
    cr_expect(close_to(mt.extra[0], gap));

    /* its covering radius is below that of random subsets of the same size
     * in the same embedding: below their mean, and below nearly every one
     * (greedy k-center is a 2-approximation of the optimum, so a lucky
     * random draw may rarely cover better) */
    size_t *idx = malloc(tr.n * sizeof *idx);
    double *E = malloc(tr.n * D * sizeof *E);
    qd_rng rng;
    qd_rng_seed(&rng, 99, 3);
    enum { REPS = 100 };
    double mean_r = 0.0;
    int better = 0;
    for (int rep = 0; rep < REPS; rep++) {
        double r = 0.0;
        for (size_t c = 0; c < K; c++) {
            size_t dim, n = class_rows(&tr, t.m, t.w, SPACE_EMB, c, idx, E,
                                       &dim);
            size_t pick[IPC], all[64];
            for (size_t i = 0; i < n; i++)
                all[i] = i;
            for (size_t k = 0; k < IPC; k++) {
                size_t j = k + qd_rng_bounded(&rng, (uint32_t)(n - k));
                size_t u = all[k];
                all[k] = all[j];
                all[j] = u;
                pick[k] = all[k];
            }
            r += radius_of(E, n, dim, pick, IPC) / K;
        }
        mean_r += r / REPS;
        better += r < rad;
    }
    cr_log_info("covering radius: k-center %.4f, random subsets %.4f on "
                "average, %d of %d below k-center", rad, mean_r, better, REPS);
    cr_expect(rad < 0.85 * mean_r, "k-center radius %.4f vs random %.4f",
              rad, mean_r);
    cr_expect(better <= REPS / 20, "%d of %d random subsets cover better",
              better, REPS);
    free(idx);
    free(E);
    qd_synset_free(&s);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}

/* embed_model: trained trains the fixed initialisation with qd_train_run
 * (defaults, embed_epochs, embed_lr, shuffles from the distiller's stream)
 * and selects in the trained embedding. */
Test(distill_select, trained_embedding)
{
    dt_model t;
    dt_model_make(&t, EMB_YAML, 1, 2, 3, K, 10);
    qd_dataset tr;
    make_data(&tr, 90, 1.0, 1.0, 0.0, 0.0, 11, 12);
    qd_synset s;
    select_set("{plugin: kcenter, images_per_class: 3, embedding: emb, "
               "embed_model: trained, embed_epochs: 2, embed_lr: 0.05}",
               t.m, t.w, &tr, 13, &s, NULL);
    /* the reference training: the same stream as the distiller's */
    dt_ctx c;
    dt_ctx_make(&c, t.m, &tr, t.w, 13);
    double *w = malloc(t.n * sizeof *w);
    memcpy(w, t.w, t.n * sizeof *w);
    qd_train_config cfg;
    qd_train_config_default(&cfg);
    cfg.epochs = 2;
    cfg.lr = 0.05;
    qd_error err = {0};
    cr_assert_eq(qd_train_run(t.m, w, &tr, NULL, &cfg, &c.rng, NULL, NULL,
                              NULL, &err), QD_OK, "%s", err.msg);
    cr_assert(dt_rel(w, t.w, t.n) > 1e-3, "training did not move");
    double gap, rad;
    check_against(&s, &tr, t.m, w, SPACE_EMB, 3, 1, &gap, &rad);
    free(w);
    qd_synset_free(&s);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}

/* max_per_class embeds a sample of each class: the reported candidates are
 * capped, picks stay distinct images of their class, and it is seeded. */
Test(distill_select, max_per_class_samples_candidates)
{
    dt_model t;
    dt_model_make(&t, EMB_YAML, 1, 2, 3, K, 1);
    qd_dataset tr;
    make_data(&tr, 150, 1.0, 1.0, 0.0, 0.0, 2, 3);
    const char *y = "{plugin: herding, images_per_class: 4, embedding: emb, "
                    "max_per_class: 10}";
    qd_synset a, b, c;
    qd_distill_metrics mt;
    select_set(y, t.m, t.w, &tr, 1, &a, &mt);
    cr_expect_eq(mt.extra[2], 30.0);
    select_set(y, t.m, t.w, &tr, 1, &b, NULL);
    cr_expect(memcmp(a.images, b.images, 12 * D * sizeof(double)) == 0);
    int differ = 0;
    for (uint64_t seed = 2; seed < 6 && !differ; seed++) {
        select_set(y, t.m, t.w, &tr, seed, &c, NULL);
        differ = memcmp(a.images, c.images, 12 * D * sizeof(double)) != 0;
        qd_synset_free(&c);
    }
    cr_expect(differ, "the candidate sample does not depend on the seed");
    for (size_t j = 0; j < 12; j++) {
        size_t hits = 0;
        for (size_t i = 0; i < tr.n; i++)
            hits += (size_t)tr.labels[i] == j / 4 && is_image(&a, j, &tr, i);
        cr_expect_eq(hits, 1u, "slot %zu", j);
        for (size_t k = 0; k < j; k++)
            cr_expect(memcmp(a.images + j * D, a.images + k * D,
                             D * sizeof(double)) != 0, "slots %zu, %zu", k, j);
    }
    qd_synset_free(&a);
    qd_synset_free(&b);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}

/* ---- random subsets ---- */

Test(distill_select, random_subset_is_balanced_seeded_and_uniform)
{
    dt_model t;
    dt_model_make(&t, EMB_YAML, 1, 2, 3, K, 1);
    qd_dataset tr;
    make_data(&tr, 90, 1.0, 1.0, 0.0, 0.0, 2, 3);   /* 30 per class */
    const char *y = "{plugin: random_subset, images_per_class: 5}";
    size_t hist[90] = {0};
    qd_synset first;
    enum { RUNS = 600 };
    for (uint64_t seed = 0; seed < RUNS; seed++) {
        qd_synset s;
        qd_distill_metrics mt;
        select_set(y, t.m, t.w, &tr, seed, &s, &mt);
        cr_assert_eq(s.per_step, 15u);
        for (size_t j = 0; j < 15; j++) {
            cr_assert_eq(s.labels[j], (int32_t)(j / 5));
            size_t found = tr.n;
            for (size_t i = 0; i < tr.n && found == tr.n; i++)
                if (is_image(&s, j, &tr, i))
                    found = i;
            cr_assert(found < tr.n && (size_t)tr.labels[found] == j / 5,
                      "slot %zu is not an image of class %zu", j, j / 5);
            hist[found]++;
            for (size_t k = j / 5 * 5; k < j; k++)
                cr_assert(memcmp(s.images + j * D, s.images + k * D,
                                 D * sizeof(double)) != 0,
                          "seed %llu: slots %zu and %zu repeat an image",
                          (unsigned long long)seed, k, j);
        }
        if (seed == 0) {
            /* loss: the mean gap in input space, from the formulas */
            double gap = 0.0, mu[D], ms[D];
            for (size_t c = 0; c < K; c++) {
                double *E = malloc(tr.n * D * sizeof *E);
                size_t *idx = malloc(tr.n * sizeof *idx), dim;
                size_t n = class_rows(&tr, t.m, t.w, SPACE_INPUT, c, idx, E,
                                      &dim);
                mean_of(E, NULL, n, D, mu);
                mean_of(s.images + c * 5 * D, NULL, 5, D, ms);
                gap += dist(ms, mu, D) / K;
                free(E);
                free(idx);
            }
            cr_expect(close_to(mt.loss, gap), "loss %g vs %g", mt.loss, gap);
            cr_expect_eq(mt.extra[3], (double)D);
            first = s;
            qd_synset same;
            select_set(y, t.m, t.w, &tr, 0, &same, NULL);
            cr_expect(memcmp(same.images, first.images,
                             15 * D * sizeof(double)) == 0,
                      "the same seed gave another subset");
            qd_synset_free(&same);
        } else {
            if (seed == 1)
                cr_expect(memcmp(s.images, first.images,
                                 15 * D * sizeof(double)) != 0,
                          "seeds 0 and 1 gave the same subset");
            qd_synset_free(&s);
        }
    }
    qd_synset_free(&first);
    /* uniform: each image is drawn 600 * 5 / 30 = 100 times in expectation
     * (sd ~ 9); a rule favouring some images fails these bounds */
    for (size_t i = 0; i < tr.n; i++)
        cr_expect(hist[i] >= 60 && hist[i] <= 140, "image %zu drawn %zu "
                  "times in %d runs (expected 100)", i, hist[i], RUNS);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}

/* ---- held-out accuracy ----
 * Gaussian classes where 35% of the samples are far outliers (sd 6 instead
 * of 0.7): a random image per class is often an outlier and misplaces the
 * decision boundary, while herding and k-center (the point closest to the
 * class mean first) pick typical images. A softmax regression trained on
 * each set (full-batch gradient descent from zero) is scored on held-out
 * data of the same law, over several data seeds. */

static double train_score(qd_model *m, const qd_synset *s, const qd_dataset *te)
{
    const size_t n = qd_model_n_params(m), B = qd_synset_count(s);
    double *w = calloc(n, sizeof *w), *g = malloc(n * sizeof *g), acc;
    qd_error err = {0};
    for (int it = 0; it < 200; it++) {
        cr_assert_eq(qd_model_loss_grad(m, w, B, s->images, s->labels, NULL, g,
                                        NULL, NULL, &err), QD_OK, "%s",
                     err.msg);
        for (size_t i = 0; i < n; i++)
            w[i] -= 0.5 * g[i];
    }
    cr_assert_eq(qd_model_accuracy(m, w, te, 0, &acc, &err), QD_OK, "%s",
                 err.msg);
    free(w);
    free(g);
    return acc;
}

Test(distill_select, selections_beat_random_subsets_with_outliers)
{
    dt_model lin;
    dt_model_make(&lin, "layers:\n  - {type: linear, out: 3}\n", 1, 2, 3, K,
                  1);
    enum { SEEDS = 6, DRAWS = 8 };
    double acc_h = 0, acc_h3 = 0, acc_k = 0, acc_r = 0, acc_r3 = 0;
    for (uint64_t ds = 0; ds < SEEDS; ds++) {
        qd_dataset tr, te;
        make_data(&tr, 300, 1.5, 0.7, 0.35, 6.0, 100 + ds, 200 + ds);
        make_data(&te, 600, 1.5, 0.7, 0.35, 6.0, 300 + ds, 200 + ds);
        qd_synset s;
        select_set("{plugin: herding, images_per_class: 1, embedding: input}",
                   lin.m, lin.w, &tr, ds, &s, NULL);
        acc_h += train_score(lin.m, &s, &te) / SEEDS;
        qd_synset_free(&s);
        select_set("{plugin: herding, images_per_class: 3, embedding: input}",
                   lin.m, lin.w, &tr, ds, &s, NULL);
        acc_h3 += train_score(lin.m, &s, &te) / SEEDS;
        qd_synset_free(&s);
        select_set("{plugin: kcenter, images_per_class: 1, embedding: input}",
                   lin.m, lin.w, &tr, ds, &s, NULL);
        acc_k += train_score(lin.m, &s, &te) / SEEDS;
        qd_synset_free(&s);
        for (uint64_t r = 0; r < DRAWS; r++) {
            select_set("{plugin: random_subset, images_per_class: 1}", lin.m,
                       lin.w, &tr, 1000 * ds + r, &s, NULL);
            acc_r += train_score(lin.m, &s, &te) / (SEEDS * DRAWS);
            qd_synset_free(&s);
            select_set("{plugin: random_subset, images_per_class: 3}", lin.m,
                       lin.w, &tr, 1000 * ds + r, &s, NULL);
            acc_r3 += train_score(lin.m, &s, &te) / (SEEDS * DRAWS);
            qd_synset_free(&s);
        }
        qd_dataset_free(&tr);
        qd_dataset_free(&te);
    }
    cr_log_info("held-out accuracy: 1/class herding %.3f kcenter %.3f random "
                "%.3f; 3/class herding %.3f random %.3f", acc_h, acc_k, acc_r,
                acc_h3, acc_r3);
    cr_expect(acc_h >= acc_r + 0.02, "herding %.3f vs random %.3f", acc_h,
              acc_r);
    cr_expect(acc_k >= acc_r + 0.02, "kcenter %.3f vs random %.3f", acc_k,
              acc_r);
    cr_expect(acc_h3 >= acc_r3, "herding %.3f vs random %.3f (3/class)",
              acc_h3, acc_r3);
    dt_model_free(&lin);
}

/* ---- save / restore ---- */

#define SR_CFG                                                              \
    "{plugin: kcenter, images_per_class: 3, embedding: emb, "               \
    "embed_model: trained, max_per_class: 12}"

Test(distill_select, save_restore)
{
    dt_model t;
    dt_model_make(&t, EMB_YAML, 1, 2, 3, K, 2);
    qd_dataset tr;
    make_data(&tr, 90, 1.0, 1.0, 0.0, 0.0, 5, 6);
    qd_synset ref;
    select_set(SR_CFG, t.m, t.w, &tr, 21, &ref, NULL);
    const size_t nx = 9 * D;

    /* saved before the selection (a run killed during it): the restored
     * instance, given the host's stream back, selects the same set */
    dt_dist d;
    dt_dist_make(&d, SR_CFG);
    dt_ctx c;
    dt_ctx_make(&c, t.m, &tr, t.w, 21);
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
    qd_blob b0;
    qd_blob_init(&b0);
    cr_assert_eq(d.vt->save(d.self, &b0), QD_OK);
    qd_synset none;
    cr_expect_neq(d.vt->result(d.self, &none), QD_OK,
                  "a result before the selection");
    qd_rng r0 = c.rng;
    dt_dist_free(&d);
    dt_dist_make(&d, SR_CFG);
    dt_ctx_make(&c, t.m, &tr, t.w, 21);
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
    c.rng = r0;
    cr_assert_eq(d.vt->restore(d.self, b0.data, b0.len), QD_OK);
    qd_distill_metrics mt;
    int rc = d.vt->iterate(d.self, &c.ctx, 0, &mt);
    cr_assert_eq(rc, QD_OK, "%s", dt_dist_msg(&d, rc));
    qd_synset s;
    cr_assert_eq(d.vt->result(d.self, &s), QD_OK);
    cr_expect(memcmp(s.images, ref.images, nx * sizeof(double)) == 0);
    qd_synset_free(&s);
    cr_expect_neq(d.vt->iterate(d.self, &c.ctx, 0, &mt), QD_OK,
                  "a second selection");

    /* saved after: a fresh instance restores the set without selecting */
    qd_blob b1;
    qd_blob_init(&b1);
    cr_assert_eq(d.vt->save(d.self, &b1), QD_OK);
    dt_dist_free(&d);
    dt_dist_make(&d, SR_CFG);
    dt_ctx_make(&c, t.m, &tr, t.w, 77);   /* another stream: not used */
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
    rc = d.vt->restore(d.self, b1.data, b1.len);
    cr_assert_eq(rc, QD_OK, "%s", dt_dist_msg(&d, rc));
    cr_assert_eq(d.vt->result(d.self, &s), QD_OK);
    cr_expect(memcmp(s.images, ref.images, nx * sizeof(double)) == 0);
    cr_expect(memcmp(s.labels, ref.labels, 9 * sizeof(int32_t)) == 0);
    qd_synset_free(&s);
    dt_dist_free(&d);

    /* truncated, or another method's state: refused, and nothing half-set
     * is used afterwards */
    dt_dist_make(&d, SR_CFG);
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
    cr_expect_eq(d.vt->restore(d.self, b1.data, b1.len - 5), QD_ERR_FORMAT);
    cr_expect_neq(d.vt->result(d.self, &s), QD_OK);
    cr_expect_neq(d.vt->iterate(d.self, &c.ctx, 0, NULL), QD_OK);
    dt_dist_free(&d);
    dt_dist_make(&d, "{plugin: herding, images_per_class: 3, embedding: emb}");
    cr_assert_eq(d.vt->start(d.self, &c.ctx), QD_OK);
    cr_expect_eq(d.vt->restore(d.self, b1.data, b1.len), QD_ERR_FORMAT);
    cr_expect(strstr(dt_dist_msg(&d, QD_ERR_FORMAT), "herding"), "%s",
              dt_dist_msg(&d, QD_ERR_FORMAT));
    dt_dist_free(&d);
    qd_blob_free(&b0);
    qd_blob_free(&b1);
    qd_synset_free(&ref);
    qd_dataset_free(&tr);
    dt_model_free(&t);
}

/* ---- configuration ---- */

static void expect_create_error(const char *yaml, const char *key)
{
    dt_dist d;
    qd_error err = {0};
    cr_expect_neq(dt_dist_try(&d, yaml, &err), QD_OK, "%s accepted", yaml);
    cr_expect(strstr(err.msg, key), "%s: '%s' not named in: %s", yaml, key,
              err.msg);
}

static void expect_start_error(dt_model *t, const qd_dataset *tr,
                               const char *yaml, const char *want1,
                               const char *want2)
{
    dt_dist d;
    dt_dist_make(&d, yaml);
    dt_ctx c;
    dt_ctx_make(&c, t->m, tr, t->w, 1);
    int rc = d.vt->start(d.self, &c.ctx);
    cr_expect_neq(rc, QD_OK, "%s started", yaml);
    const char *msg = dt_dist_msg(&d, rc);
    cr_expect(strstr(msg, want1) && strstr(msg, want2), "%s: %s", yaml, msg);
    dt_dist_free(&d);
}

Test(distill_select, bad_config_names_the_key)
{
    expect_create_error("{plugin: random_subset, images_per_class: 0}",
                        "images_per_class");
    expect_create_error("{plugin: herding, embed_epochs: 0}", "embed_epochs");
    expect_create_error("{plugin: kcenter, embed_lr: 0}", "embed_lr");
    expect_create_error("{plugin: kcenter, images_per_class: 5, "
                        "max_per_class: 3}", "max_per_class");
    expect_create_error("{plugin: herding, embed_model: pretrained}",
                        "embed_model");
    expect_create_error("{plugin: herding, embedding: input, "
                        "embed_model: trained}", "embed_model");
    expect_create_error("{plugin: herding, embeding: f2}", "embedding");
    expect_create_error("{plugin: random_subset, embedding: f2}", "embedding");

    dt_model t;
    dt_model_make(&t, EMB_YAML, 1, 2, 3, K, 1);
    qd_dataset tr;
    make_data(&tr, 30, 1.0, 1.0, 0.0, 0.0, 1, 1);   /* 10 per class */
    /* an unknown layer: the key, the name, and the valid names */
    expect_start_error(&t, &tr, "{plugin: kcenter, embedding: f2}",
                       "embedding", "input (6), emb (4), act (4), head (3)");
    expect_start_error(&t, &tr, "{plugin: herding, images_per_class: 11}",
                       "images_per_class", "only 10");
    expect_start_error(&t, &tr, "{plugin: random_subset, "
                       "images_per_class: 11}", "images_per_class", "only 10");
    qd_dataset_free(&tr);
    dt_model_free(&t);
}
