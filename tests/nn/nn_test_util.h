/* Shared helpers of the nn suites: building models from YAML text or files,
 * and finite-difference gradient checks of qd_model_loss_grad. */
#ifndef QD_NN_TEST_UTIL_H
#define QD_NN_TEST_UTIL_H

#include <criterion/criterion.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/config.h"
#include "qdistill/model.h"
#include "qdistill/registry.h"
#include "qdistill/rng.h"

/* A model and everything it came from. */
typedef struct tmodel {
    qd_config *cfg;
    qd_registry *reg;
    qd_model *m;
    double *params;
    size_t n_params;
} tmodel;

static inline qd_registry *t_registry(void)
{
    qd_registry *reg = NULL;
    qd_error err = {0};
    cr_assert_eq(qd_registry_create(&reg, &err), QD_OK, "%s", err.msg);
    const char *dir = getenv("QDISTILL_PLUGIN_PATH");
    if (dir) {
        char *problems = NULL;
        cr_assert_eq(qd_registry_load_dir(reg, dir, &problems, &err), QD_OK,
                     "%s", err.msg);
        free(problems);
    }
    return reg;
}

static inline qd_model_opts t_opts(size_t c, size_t h, size_t w,
                                   size_t classes)
{
    qd_model_opts o;
    memset(&o, 0, sizeof o);
    o.channels = c;
    o.height = h;
    o.width = w;
    o.classes = classes;
    o.seed = 7;
    o.threads = 2;
    return o;
}

/* Build from YAML text holding {layers: [...]}; returns the status and
 * leaves the message in err. On success params are initialised from seed. */
static inline int t_build_text(tmodel *t, const char *yaml,
                               const qd_model_opts *o, uint64_t seed,
                               qd_error *err)
{
    memset(t, 0, sizeof *t);
    int rc = qd_config_load_string(yaml, strlen(yaml), "<test>", NULL,
                                   &t->cfg, err);
    cr_assert_eq(rc, QD_OK, "yaml: %s", err->msg);
    t->reg = t_registry();
    rc = qd_model_create(qd_config_root(t->cfg), t->reg, o, &t->m, err);
    if (rc)
        return rc;
    t->n_params = qd_model_n_params(t->m);
    t->params = calloc(t->n_params ? t->n_params : 1, sizeof(double));
    qd_rng rng;
    qd_rng_seed(&rng, seed, 1);
    cr_assert_eq(qd_model_init_params(t->m, &rng, t->params, err), QD_OK,
                 "%s", err->msg);
    return QD_OK;
}

static inline void t_build_file(tmodel *t, const char *rel,
                                const qd_model_opts *o, uint64_t seed)
{
    memset(t, 0, sizeof *t);
    const char *src = getenv("QD_TEST_SRCDIR");
    cr_assert(src, "QD_TEST_SRCDIR is not set");
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", src, rel);
    qd_error err = {0};
    cr_assert_eq(qd_config_load(path, NULL, &t->cfg, &err), QD_OK, "%s",
                 err.msg);
    t->reg = t_registry();
    cr_assert_eq(qd_model_create(qd_config_root(t->cfg), t->reg, o, &t->m,
                                 &err), QD_OK, "%s", err.msg);
    t->n_params = qd_model_n_params(t->m);
    t->params = calloc(t->n_params ? t->n_params : 1, sizeof(double));
    qd_rng rng;
    qd_rng_seed(&rng, seed, 1);
    cr_assert_eq(qd_model_init_params(t->m, &rng, t->params, &err), QD_OK,
                 "%s", err.msg);
}

static inline void t_free(tmodel *t)
{
    qd_model_destroy(t->m);
    qd_registry_destroy(t->reg);
    qd_config_destroy(t->cfg);
    free(t->params);
    memset(t, 0, sizeof *t);
}

static inline void t_fill_normal(qd_rng *rng, double *x, size_t n, double sd)
{
    for (size_t i = 0; i < n; i++)
        x[i] = sd * qd_rng_normal(rng);
}

static inline double t_loss(tmodel *t, const double *params, size_t batch,
                            const double *x, const int32_t *y)
{
    double L = NAN;
    qd_error err = {0};
    cr_assert_eq(qd_model_loss_grad(t->m, params, batch, x, y, &L, NULL, NULL,
                                    NULL, &err), QD_OK, "%s", err.msg);
    return L;
}

/* Norm-wise relative error ||a - b|| / max(||b||, floor). */
static inline double t_rel_err(const double *a, const double *b, size_t n,
                               double floor_)
{
    double d = 0.0, nb = 0.0;
    for (size_t i = 0; i < n; i++) {
        d += (a[i] - b[i]) * (a[i] - b[i]);
        nb += b[i] * b[i];
    }
    nb = sqrt(nb);
    return sqrt(d) / (nb > floor_ ? nb : floor_);
}

/* Fourth-order central difference (error O(h^4)), so h can be large
 * enough to keep rounding noise (~1e-16 |L| / h) small. */
static inline double t_fd1(tmodel *t, double *params, size_t batch,
                           double *x, const int32_t *y, double *v, size_t i,
                           double h)
{
    double keep = v[i], l[4];
    const double off[4] = {2 * h, h, -h, -2 * h};
    for (int k = 0; k < 4; k++) {
        v[i] = keep + off[k];
        l[k] = t_loss(t, params, batch, x, y);
    }
    v[i] = keep;
    return (8.0 * (l[1] - l[2]) - (l[0] - l[3])) / (12.0 * h);
}

/* Finite-difference derivative of the loss along coordinate i of v (params
 * or x). ReLU and max-pooling make the loss piecewise smooth: a stencil that
 * straddles a kink (a unit changing sign, a window changing its maximum)
 * is wrong. Stencils h and h/2 agree closely on a smooth piece, so when they
 * disagree the step is halved until two successive ones agree. */
static inline double t_fd(tmodel *t, double *params, size_t batch, double *x,
                          const int32_t *y, double *v, size_t i, double h)
{
    double prev = t_fd1(t, params, batch, x, y, v, i, h);
    for (int k = 0; k < 5; k++) {
        h *= 0.5;
        double cur = t_fd1(t, params, batch, x, y, v, i, h);
        double scale = fmax(fabs(cur), fabs(prev));
        if (fabs(cur - prev) <= 1e-6 * scale + 1e-9)
            return cur;
        prev = cur;
    }
    return prev;
}

/* Blocks whose gradient norm is below this are judged by absolute error
 * (tol * NORM_FLOOR, i.e. 1e-9 at tol 1e-6): a gradient that is exactly
 * zero (a bias shifting all logits alike) leaves only finite-difference
 * noise, which no relative measure can judge. */
#define NORM_FLOOR 1e-3

/* Check every parameter block (up to max_per_block sampled entries each)
 * and up to max_x entries of the input gradient against central
 * differences; each comparison is norm-wise relative and must be < tol.
 * Returns the worst error seen. */
static inline double t_gradcheck(tmodel *t, size_t batch, double *x,
                                 const int32_t *y, size_t max_per_block,
                                 size_t max_x, double h, double tol)
{
    /* thousands of tiny batch-2 evaluations: waking a second thread for
     * each costs more than it saves on a shared machine (each Criterion
     * test runs in its own process, so this stays local) */
    omp_set_num_threads(1);
    const size_t P = t->n_params, N = batch * qd_model_input_size(t->m);
    double *g = malloc((P ? P : 1) * sizeof *g);
    double *gx = malloc(N * sizeof *gx);
    double *a = malloc((P > N ? P : N) * sizeof *a);
    double *f = malloc((P > N ? P : N) * sizeof *f);
    double L;
    qd_error err = {0};
    cr_assert_eq(qd_model_loss_grad(t->m, t->params, batch, x, y, &L, g, gx,
                                    NULL, &err), QD_OK, "%s", err.msg);
    qd_rng rng;
    qd_rng_seed(&rng, 99, 3);
    double worst = 0.0;
    for (size_t k = 0; k < qd_model_n_blocks(t->m); k++) {
        const qd_param_block *b = qd_model_block(t->m, k);
        size_t cnt = b->count < max_per_block ? b->count : max_per_block;
        for (size_t j = 0; j < cnt; j++) {
            size_t i = b->count <= max_per_block
                           ? j
                           : qd_rng_bounded(&rng, (uint32_t)b->count);
            a[j] = g[b->offset + i];
            f[j] = t_fd(t, t->params, batch, x, y, t->params, b->offset + i,
                        h);
        }
        double e = t_rel_err(a, f, cnt, NORM_FLOOR);
        cr_expect(e < tol, "block %s.%s: relative error %.3g (tol %.3g)",
                  b->layer, b->what, e, tol);
        worst = e > worst ? e : worst;
    }
    if (max_x) {
        size_t cnt = N < max_x ? N : max_x;
        for (size_t j = 0; j < cnt; j++) {
            size_t i = N <= max_x ? j : qd_rng_bounded(&rng, (uint32_t)N);
            a[j] = gx[i];
            f[j] = t_fd(t, t->params, batch, x, y, x, i, h);
        }
        double e = t_rel_err(a, f, cnt, NORM_FLOOR);
        cr_expect(e < tol, "input gradient: relative error %.3g (tol %.3g)",
                  e, tol);
        worst = e > worst ? e : worst;
    }
    free(g);
    free(gx);
    free(a);
    free(f);
    return worst;
}

#endif /* QD_NN_TEST_UTIL_H */
