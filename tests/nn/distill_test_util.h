/* Helpers of the distillation suites: models from YAML text, distiller
 * instances through the registry, a distillation context, and closed forms
 * for softmax regression (logits z = W x + b, mean cross-entropy) written
 * from the formulas, independently of the model code. */
#ifndef QD_DISTILL_TEST_UTIL_H
#define QD_DISTILL_TEST_UTIL_H

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/config.h"
#include "qdistill/distill.h"
#include "qdistill/registry.h"
#include "qdistill/rng.h"

static qd_registry *dt_reg_;

static inline qd_registry *dt_registry(void)
{
    if (!dt_reg_) {
        qd_error err = {0};
        cr_assert_eq(qd_registry_create(&dt_reg_, &err), QD_OK, "%s",
                     err.msg);
        const char *dir = getenv("QDISTILL_PLUGIN_PATH");
        cr_assert(dir, "QDISTILL_PLUGIN_PATH is not set");
        char *problems = NULL;
        cr_assert_eq(qd_registry_load_dir(dt_reg_, dir, &problems, &err),
                     QD_OK, "%s", err.msg);
        free(problems);
    }
    return dt_reg_;
}

static inline void dt_teardown(void)
{
    qd_registry_destroy(dt_reg_);
    dt_reg_ = NULL;
}

/* ---- models ---- */

typedef struct dt_model {
    qd_config *cfg;
    qd_model *m;
    double *w;           /* initial parameters */
    size_t n;
} dt_model;

static inline void dt_model_make(dt_model *t, const char *yaml, size_t c,
                                 size_t h, size_t w, size_t classes,
                                 uint64_t seed)
{
    memset(t, 0, sizeof *t);
    qd_error err = {0};
    cr_assert_eq(qd_config_load_string(yaml, strlen(yaml), "<test model>",
                                       NULL, &t->cfg, &err), QD_OK, "%s",
                 err.msg);
    qd_model_opts o;
    memset(&o, 0, sizeof o);
    o.channels = c;
    o.height = h;
    o.width = w;
    o.classes = classes;
    o.seed = seed;
    o.threads = 2;
    cr_assert_eq(qd_model_create(qd_config_root(t->cfg), dt_registry(), &o,
                                 &t->m, &err), QD_OK, "%s", err.msg);
    t->n = qd_model_n_params(t->m);
    t->w = calloc(t->n, sizeof *t->w);
    qd_rng rng;
    qd_rng_seed(&rng, seed, 11);
    cr_assert_eq(qd_model_init_params(t->m, &rng, t->w, &err), QD_OK, "%s",
                 err.msg);
}

static inline void dt_model_free(dt_model *t)
{
    qd_model_destroy(t->m);
    qd_config_destroy(t->cfg);
    free(t->w);
    memset(t, 0, sizeof *t);
}

static inline double *dt_normal(qd_rng *rng, size_t n, double sd)
{
    double *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++)
        v[i] = sd * qd_rng_normal(rng);
    return v;
}

/* Norm-wise relative error ||a - b|| / ||b||. */
static inline double dt_rel(const double *a, const double *b, size_t n)
{
    double d = 0.0, nb = 0.0;
    for (size_t i = 0; i < n; i++) {
        d += (a[i] - b[i]) * (a[i] - b[i]);
        nb += b[i] * b[i];
    }
    return sqrt(d) / (nb > 0.0 ? sqrt(nb) : 1.0);
}

static inline double dt_norm(const double *a, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * a[i];
    return sqrt(s);
}

/* ---- distiller instances ---- */

typedef struct dt_dist {
    qd_config *cfg;
    qd_instance *inst;
    void *self;
    const qd_distiller_vt *vt;
} dt_dist;

/* Create from a YAML mapping {plugin: ..., key: value}. */
static inline int dt_dist_try(dt_dist *d, const char *yaml, qd_error *err)
{
    memset(d, 0, sizeof *d);
    int rc = qd_config_load_string(yaml, strlen(yaml), "<test distill>", NULL,
                                   &d->cfg, err);
    cr_assert_eq(rc, QD_OK, "%s", err->msg);
    qd_instance_opts o;
    memset(&o, 0, sizeof o);
    o.seed = 5;
    o.stream = "distill";
    o.threads = 2;
    rc = qd_instance_create(dt_registry(), QD_KIND_DISTILLER,
                            qd_config_root(d->cfg), &o, &d->inst, err);
    if (rc) {
        qd_config_destroy(d->cfg);
        d->cfg = NULL;
        return rc;
    }
    d->self = qd_instance_self(d->inst);
    d->vt = qd_instance_vtable(d->inst);
    return QD_OK;
}

static inline void dt_dist_make(dt_dist *d, const char *yaml)
{
    qd_error err = {0};
    cr_assert_eq(dt_dist_try(d, yaml, &err), QD_OK, "%s", err.msg);
}

static inline void dt_dist_free(dt_dist *d)
{
    qd_instance_destroy(d->inst);
    qd_config_destroy(d->cfg);
    memset(d, 0, sizeof *d);
}

/* The instance's last recorded error message. */
static inline const char *dt_dist_msg(const dt_dist *d, int rc)
{
    static qd_error e;
    qd_instance_error(d->inst, rc, &e);
    return e.msg;
}

/* A context with its own rng streams. */
typedef struct dt_ctx {
    qd_distill_ctx ctx;
    qd_rng rng, init_rng;
} dt_ctx;

static inline void dt_ctx_make(dt_ctx *c, qd_model *m, const qd_dataset *train,
                               const double *init_params, uint64_t seed)
{
    memset(c, 0, sizeof *c);
    qd_rng_derive(&c->rng, seed, "distill");
    qd_rng_derive(&c->init_rng, seed, "distill.init");
    c->ctx.struct_size = sizeof c->ctx;
    c->ctx.model = m;
    c->ctx.train = train;
    c->ctx.init_params = init_params;
    c->ctx.n_params = qd_model_n_params(m);
    c->ctx.rng = &c->rng;
    c->ctx.init_rng = &c->init_rng;
    c->ctx.threads = 2;
}

/* ---- softmax regression, closed forms ----
 * Parameters: W (K x D, row-major, as the linear layer) then b (K).
 * p = softmax(W x + b); A = diag(p) - p p^T. */

static inline void sm_probs(const double *w, size_t D, size_t K,
                            const double *x, double *p)
{
    double mx = -INFINITY;
    for (size_t k = 0; k < K; k++) {
        double z = w[K * D + k];
        for (size_t j = 0; j < D; j++)
            z += w[k * D + j] * x[j];
        p[k] = z;
        mx = z > mx ? z : mx;
    }
    double s = 0.0;
    for (size_t k = 0; k < K; k++)
        s += (p[k] = exp(p[k] - mx));
    for (size_t k = 0; k < K; k++)
        p[k] /= s;
}

/* Mean CE and its gradient g (K*D + K). */
static inline double sm_loss_grad(const double *w, size_t D, size_t K,
                                  size_t B, const double *X, const int32_t *Y,
                                  double *g)
{
    double p[64], L = 0.0;
    if (g)
        memset(g, 0, (K * D + K) * sizeof *g);
    for (size_t b = 0; b < B; b++) {
        const double *x = X + b * D;
        sm_probs(w, D, K, x, p);
        L -= log(p[Y[b]]);
        if (!g)
            continue;
        for (size_t k = 0; k < K; k++) {
            double r = (p[k] - (k == (size_t)Y[b])) / (double)B;
            for (size_t j = 0; j < D; j++)
                g[k * D + j] += r * x[j];
            g[K * D + k] += r;
        }
    }
    return L / (double)B;
}

/* u = V [x; 1] for a direction v in parameter layout. */
static inline void sm_dir(const double *v, size_t D, size_t K, const double *x,
                          double *u)
{
    for (size_t k = 0; k < K; k++) {
        u[k] = v[K * D + k];
        for (size_t j = 0; j < D; j++)
            u[k] += v[k * D + j] * x[j];
    }
}

/* hv = H v with H = (1/B) sum_b A_b (x) [x;1][x;1]^T, and
 * xv_b = (1/B) (W^T A_b u_b + V_W^T (p_b - e_{y_b})), u_b = V [x_b; 1]:
 * the derivative in x_b of v . grad_w L. Either output may be NULL. */
static inline void sm_second(const double *w, size_t D, size_t K, size_t B,
                             const double *X, const int32_t *Y,
                             const double *v, double *hv, double *xv)
{
    double p[64], u[64], au[64];
    if (hv)
        memset(hv, 0, (K * D + K) * sizeof *hv);
    for (size_t b = 0; b < B; b++) {
        const double *x = X + b * D;
        sm_probs(w, D, K, x, p);
        sm_dir(v, D, K, x, u);
        double pu = 0.0;
        for (size_t k = 0; k < K; k++)
            pu += p[k] * u[k];
        for (size_t k = 0; k < K; k++)
            au[k] = p[k] * u[k] - p[k] * pu;    /* A u */
        if (hv)
            for (size_t k = 0; k < K; k++) {
                for (size_t j = 0; j < D; j++)
                    hv[k * D + j] += au[k] * x[j] / (double)B;
                hv[K * D + k] += au[k] / (double)B;
            }
        if (xv)
            for (size_t j = 0; j < D; j++) {
                double s = 0.0;
                for (size_t k = 0; k < K; k++)
                    s += w[k * D + j] * au[k] +
                         v[k * D + j] * (p[k] - (k == (size_t)Y[b]));
                xv[b * D + j] = s / (double)B;
            }
    }
}

/* The exact meta-gradient of L(w_T) = CE on (Xo, Yo) after T inner steps
 * on xs (steps batches of `per` images), by reverse mode with the closed
 * forms above. Writes the outer loss, g_xs (steps*per*D), g_lrs (T). */
static inline double sm_meta_exact(const double *w0, size_t D, size_t K,
                                   size_t steps, size_t per, size_t T,
                                   const double *xs, const int32_t *ys,
                                   const double *lrs, size_t Bo,
                                   const double *Xo, const int32_t *Yo,
                                   double *g_xs, double *g_lrs)
{
    const size_t n = K * D + K;
    double *W = malloc((T + 1) * n * sizeof *W);
    double *G = malloc(T * n * sizeof *G);
    double *g = malloc(n * sizeof *g), *hv = malloc(n * sizeof *hv);
    double *xv = malloc(per * D * sizeof *xv);
    memcpy(W, w0, n * sizeof *W);
    for (size_t t = 0; t < T; t++) {
        size_t s = t % steps;
        sm_loss_grad(W + t * n, D, K, per, xs + s * per * D, ys + s * per,
                     G + t * n);
        for (size_t i = 0; i < n; i++)
            W[(t + 1) * n + i] = W[t * n + i] - lrs[t] * G[t * n + i];
    }
    double L = sm_loss_grad(W + T * n, D, K, Bo, Xo, Yo, g);
    memset(g_xs, 0, steps * per * D * sizeof *g_xs);
    for (size_t t = T; t-- > 0;) {
        size_t s = t % steps;
        double d = 0.0;
        for (size_t i = 0; i < n; i++)
            d += g[i] * G[t * n + i];
        g_lrs[t] = -d;
        sm_second(W + t * n, D, K, per, xs + s * per * D, ys + s * per, g, hv,
                  xv);
        for (size_t i = 0; i < per * D; i++)
            g_xs[s * per * D + i] -= lrs[t] * xv[i];
        for (size_t i = 0; i < n; i++)
            g[i] -= lrs[t] * hv[i];
    }
    free(W);
    free(G);
    free(g);
    free(hv);
    free(xv);
    return L;
}

#endif /* QD_DISTILL_TEST_UTIL_H */
