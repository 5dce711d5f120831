/* Observable `hermitian`: one k-local Hermitian matrix per output; by default
 * a 2x2 Hermitian on each wire (the paper's trainable observable).
 *
 * Parametrisation: a term on k wires (d = 2^k) has d^2 = 4^k real
 * parameters, laid out as the d diagonal entries, then for each i < j in
 * row-major order Re A_ij, Im A_ij; A_ji = conj(A_ij). The map params -> A is
 * linear, so matrices_backward is exact: with dL = Re sum conj(G) dA,
 *     dL/dA_ii = Re G_ii, dL/dRe A_ij = Re(G_ij + G_ji),
 *     dL/dIm A_ij = Im(G_ij - G_ji).
 *
 * max_norm > 0 bounds the Frobenius norm smoothly: H = A * m tanh(r/m) / r,
 * r = |A|_F, m = max_norm, so |H|_F < m, H ~ A for r << m, and the map stays
 * differentiable everywhere (including r = 0, via its series). A projection
 * would need a hook after each optimiser step, which observables do not have.
 *
 * trainable: false keeps exactly the same matrices (drawn from the same rng
 * in init_params) but exposes no parameters: the paper's fixed-Hermitian
 * ablation differs from the trainable run in that key only. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/plugin.h"

/* glibc defines CMPLX only for GCC; clang gets the equivalent builtin. */
#ifndef CMPLX
#define CMPLX(x, y) __builtin_complex((double)(x), (double)(y))
#endif
#include "qdistill/schema.h"

static const qd_param params[] = {
    /* elem 0: a list of lists, whose items the plugin checks itself. */
    {"wires", QD_PARAM_LIST, 0, "[]", 0, 0, NULL, 0, NULL,
     "wires of each term, a list of lists ([[0], [1, 2]]); one output per "
     "term; [] = each wire alone"},
    {"trainable", QD_PARAM_BOOL, 0, "true", 0, 0, NULL, 0, NULL,
     "true = 4^k real parameters per term; false = the same matrices, fixed "
     "(no parameters)"},
    {"init", QD_PARAM_ENUM, 0, "random", 0, 0, "random|pauli_z|matrix", 0,
     NULL,
     "random: H = (A + A^dagger)/2, A complex Gaussian (std init_scale per "
     "entry); pauli_z: Z on each wire of the term; matrix: `matrix`"},
    {"init_scale", QD_PARAM_DOUBLE, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "1",
     0, 1e6, NULL, 0, NULL,
     "init: random draws A_ij = init_scale (N + iN)/sqrt(2)"},
    {"matrix", QD_PARAM_MATRIX, 0, NULL, 0, 0, NULL, 0, NULL,
     "explicit 2^k x 2^k Hermitian (to 1e-10) used for every term; implies "
     "init: matrix"},
    {"max_norm", QD_PARAM_DOUBLE, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "0", 0,
     1e12, NULL, 0, NULL,
     "0 = off; m > 0: H = A m tanh(|A|_F/m)/|A|_F, a smooth bound |H|_F < m"},
    {NULL, 0, 0, NULL, 0, 0, NULL, 0, NULL, NULL},
};

enum { INIT_RANDOM, INIT_PAULI_Z, INIT_MATRIX };

typedef struct hterm {
    uint32_t k;
    uint32_t wires[QD_OBS_MAX_WIRES];
    size_t poff;                      /* offset in the parameter vector */
    size_t moff;                      /* offset in the matrix buffer */
    char where[160];                  /* "file:line:col" of its wires */
} hterm;

typedef struct herm {
    const qd_host *host;
    int trainable, init;
    double init_scale, max_norm;
    /* Configured wire lists (0 = default each wire alone). */
    size_t n_given;
    hterm *given;
    /* Explicit matrix. */
    double complex *mat;
    uint32_t mat_k;
    char mat_where[160];
    /* After build. */
    size_t n_terms;
    hterm *terms;
    size_t n_par, matrix_len;
    double *fixed;                    /* the parameters of a fixed observable */
    int has_fixed;
} herm;

static void where_of(const qd_node *n, char *buf, size_t len)
{
    snprintf(buf, len, "%s:%d:%d", qd_node_file(n) ? qd_node_file(n) : "<config>",
             qd_node_line(n), qd_node_col(n));
}

static void herm_destroy(void *self)
{
    herm *h = self;
    if (h) {
        free(h->given);
        free(h->mat);
        free(h->terms);
        free(h->fixed);
    }
    free(h);
}

/* Read the wire list of one term (a list of ints, or a bare int). */
static int read_term(const qd_host *host, const qd_node *it, size_t i, hterm *t)
{
    where_of(it, t->where, sizeof t->where);
    size_t n = qd_node_kind(it) == QD_NODE_SEQ ? qd_node_len(it) : 1;
    if (qd_node_kind(it) != QD_NODE_SEQ && qd_node_kind(it) != QD_NODE_SCALAR)
        n = 0;
    if (n == 0 || n > QD_OBS_MAX_WIRES)
        return host->node_error(host, it, QD_ERR_INVALID,
                                "wires[%zu] must list 1..%d distinct wires", i,
                                QD_OBS_MAX_WIRES);
    t->k = (uint32_t)n;
    for (size_t j = 0; j < n; j++) {
        const qd_node *w = qd_node_kind(it) == QD_NODE_SEQ ? qd_node_at(it, j) : it;
        long long v;
        if (qd_node_as_int(w, &v, NULL) || v < 0 || v > 1000000)
            return host->node_error(host, w, QD_ERR_INVALID,
                                    "wires[%zu][%zu] must be a wire index >= 0",
                                    i, j);
        for (size_t q = 0; q < j; q++)
            if (t->wires[q] == (uint32_t)v)
                return host->node_error(host, w, QD_ERR_INVALID,
                                        "wires[%zu]: wire %lld appears twice",
                                        i, v);
        t->wires[j] = (uint32_t)v;
    }
    return QD_OK;
}

static int read_matrix(herm *hm, const qd_host *h, const qd_node *mn)
{
    size_t rows = 0, cols = 0;
    double complex *m = NULL;
    qd_error err = {0};
    if (qd_node_as_matrix(mn, &rows, &cols, &m, &err))
        return h->node_error(h, mn, QD_ERR_INVALID, "matrix: %s", err.msg);
    uint32_t k = 0;
    while (k <= QD_OBS_MAX_WIRES && ((size_t)1 << k) < rows)
        k++;
    int rc = QD_OK;
    if (rows != cols)
        rc = h->node_error(h, mn, QD_ERR_INVALID,
                           "matrix must be square, got %zu x %zu", rows, cols);
    else if (k == 0 || k > QD_OBS_MAX_WIRES || ((size_t)1 << k) != rows)
        rc = h->node_error(h, mn, QD_ERR_INVALID,
                           "matrix must be 2^k x 2^k with 1 <= k <= %d, got "
                           "%zu x %zu",
                           QD_OBS_MAX_WIRES, rows, cols);
    for (size_t e = 0; !rc && e < rows * cols; e++)
        if (!isfinite(creal(m[e])) || !isfinite(cimag(m[e])))
            rc = h->node_error(h, mn, QD_ERR_INVALID,
                               "matrix entry (%zu, %zu) is not finite",
                               e / cols, e % cols);
    if (!rc) {
        double dev = 0.0;
        size_t wi = 0, wj = 0;
        for (size_t i = 0; i < rows; i++)
            for (size_t j = 0; j < rows; j++) {
                double e = cabs(m[i * rows + j] - conj(m[j * rows + i]));
                if (e > dev) {
                    dev = e;
                    wi = i;
                    wj = j;
                }
            }
        if (dev > 1e-10)
            rc = h->node_error(h, mn, QD_ERR_INVALID,
                               "matrix is not Hermitian: |H[%zu][%zu] - "
                               "conj(H[%zu][%zu])| = %.3g > 1e-10",
                               wi, wj, wj, wi, dev);
    }
    if (rc) {
        free(m);
        return rc;
    }
    hm->mat = m;
    hm->mat_k = k;
    where_of(mn, hm->mat_where, sizeof hm->mat_where);
    return QD_OK;
}

static int herm_create(const qd_host *h, void **self)
{
    herm *hm = calloc(1, sizeof *hm);
    if (!hm)
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    hm->host = h;
    hm->trainable = h->get_bool(h, "trainable");
    hm->init_scale = h->get_double(h, "init_scale");
    hm->max_norm = h->get_double(h, "max_norm");
    const char *in = h->get_string(h, "init");
    hm->init = !in || strcmp(in, "random") == 0 ? INIT_RANDOM
               : strcmp(in, "pauli_z") == 0     ? INIT_PAULI_Z
                                                : INIT_MATRIX;
    int rc = QD_OK;
    if (h->has(h, "matrix")) {
        if (h->has(h, "init") && hm->init != INIT_MATRIX)
            rc = h->node_error(h, h->get_node(h, "init"), QD_ERR_INVALID,
                               "init is '%s' but a matrix is given (drop one, "
                               "or set init: matrix)",
                               in);
        else {
            hm->init = INIT_MATRIX;
            rc = read_matrix(hm, h, h->get_node(h, "matrix"));
        }
    } else if (hm->init == INIT_MATRIX) {
        rc = h->node_error(h, h->get_node(h, "init"), QD_ERR_INVALID,
                           "init: matrix needs a `matrix` key");
    }
    const qd_node *wn = h->get_node(h, "wires");
    size_t n = qd_node_len(wn);
    if (!rc && n) {
        hm->given = calloc(n, sizeof *hm->given);
        if (!hm->given)
            rc = h->error(h, QD_ERR_NOMEM, "out of memory");
        for (size_t i = 0; !rc && i < n; i++)
            rc = read_term(h, qd_node_at(wn, i), i, &hm->given[i]);
        hm->n_given = n;
    }
    if (rc) {
        herm_destroy(hm);
        return rc;
    }
    *self = hm;
    return QD_OK;
}

static int herm_build(void *self, uint32_t n_wires, qd_obs_spec *spec)
{
    herm *hm = self;
    const qd_host *h = hm->host;
    if (n_wires == 0)
        return h->error(h, QD_ERR_INVALID, "circuit has no wires to measure");
    size_t n = hm->n_given ? hm->n_given : n_wires;
    hterm *terms = calloc(n, sizeof *terms);
    qd_obs_term *ot = calloc(n, sizeof *ot);
    if (!terms || !ot) {
        free(terms);
        free(ot);
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    }
    size_t off = 0;
    int rc = QD_OK;
    for (size_t i = 0; i < n && !rc; i++) {
        hterm *t = &terms[i];
        if (hm->n_given) {
            *t = hm->given[i];
            for (uint32_t j = 0; j < t->k && !rc; j++)
                if (t->wires[j] >= n_wires)
                    rc = h->error(h, QD_ERR_INVALID,
                                  "%s: wires[%zu] includes wire %u, the "
                                  "circuit has %u wires",
                                  t->where, i, t->wires[j], n_wires);
        } else {
            t->k = 1;
            t->wires[0] = (uint32_t)i;
            snprintf(t->where, sizeof t->where, "default wires");
        }
        if (!rc && hm->init == INIT_MATRIX && t->k != hm->mat_k)
            rc = h->error(h, QD_ERR_INVALID,
                          "%s: the matrix is %ux%u (k = %u wires) but term %zu "
                          "acts on %u wire(s) (set `wires` to match)",
                          hm->mat_where, 1u << hm->mat_k, 1u << hm->mat_k,
                          hm->mat_k, i, t->k);
        t->poff = t->moff = off;
        off += (size_t)1 << (2 * t->k);
        ot[i].output = (uint32_t)i;
        ot[i].n_wires = t->k;
        memcpy(ot[i].wires, t->wires, t->k * sizeof *t->wires);
        ot[i].matrix = t->moff;
    }
    double *fixed = rc ? NULL : malloc((off ? off : 1) * sizeof *fixed);
    if (!rc && !fixed)
        rc = h->error(h, QD_ERR_NOMEM, "out of memory");
    if (rc) {
        free(terms);
        free(ot);
        free(fixed);
        return rc;
    }
    free(hm->terms);
    free(hm->fixed);
    hm->terms = terms;
    hm->n_terms = n;
    hm->n_par = hm->matrix_len = off;
    hm->fixed = fixed;
    hm->has_fixed = 0;
    spec->n_outputs = (uint32_t)n;
    spec->n_terms = (uint32_t)n;
    spec->terms = ot;
    spec->matrix_len = off;
    return QD_OK;
}

static size_t herm_n_params(void *self)
{
    herm *hm = self;
    return hm->trainable ? hm->n_par : 0;
}

/* Hermitian matrix -> its parameters (upper triangle; the lower is its
 * conjugate). */
static void to_params(const double complex *H, size_t d, double *p)
{
    for (size_t i = 0; i < d; i++)
        p[i] = creal(H[i * d + i]);
    size_t q = d;
    for (size_t i = 0; i < d; i++)
        for (size_t j = i + 1; j < d; j++) {
            p[q++] = creal(H[i * d + j]);
            p[q++] = cimag(H[i * d + j]);
        }
}

static void from_params(const double *p, size_t d, double complex *A)
{
    for (size_t i = 0; i < d; i++)
        A[i * d + i] = p[i];
    size_t q = d;
    for (size_t i = 0; i < d; i++)
        for (size_t j = i + 1; j < d; j++) {
            A[i * d + j] = CMPLX(p[q], p[q + 1]);
            A[j * d + i] = CMPLX(p[q], -p[q + 1]);
            q += 2;
        }
}

/* Write the initial parameters of every term into dst, drawing from rng for
 * init: random (rng is unused, and may be NULL, otherwise). */
static int fill_params(herm *hm, qd_rng *rng, double *dst)
{
    size_t dmax = (size_t)1 << QD_OBS_MAX_WIRES;
    double complex *A = malloc(dmax * dmax * sizeof *A);
    double complex *H = malloc(dmax * dmax * sizeof *H);
    if (!A || !H) {
        free(A);
        free(H);
        return hm->host->error(hm->host, QD_ERR_NOMEM, "out of memory");
    }
    for (size_t t = 0; t < hm->n_terms; t++) {
        const hterm *tm = &hm->terms[t];
        size_t d = (size_t)1 << tm->k;
        if (hm->init == INIT_RANDOM) {
            const double s = hm->init_scale * 0.70710678118654752440;
            for (size_t e = 0; e < d * d; e++) {
                double re = qd_rng_normal(rng);
                double im = qd_rng_normal(rng);
                A[e] = CMPLX(s * re, s * im);
            }
            for (size_t i = 0; i < d; i++)
                for (size_t j = 0; j < d; j++)
                    H[i * d + j] = 0.5 * (A[i * d + j] + conj(A[j * d + i]));
        } else if (hm->init == INIT_PAULI_Z) {
            memset(H, 0, d * d * sizeof *H);
            for (size_t i = 0; i < d; i++)
                H[i * d + i] = (__builtin_popcountll(i) & 1) ? -1.0 : 1.0;
        } else {
            memcpy(H, hm->mat, d * d * sizeof *H);
        }
        to_params(H, d, dst + tm->poff);
    }
    free(A);
    free(H);
    return QD_OK;
}

static int herm_init_params(void *self, qd_rng *rng, double *params)
{
    herm *hm = self;
    const qd_host *h = hm->host;
    if (!hm->terms)
        return h->error(h, QD_ERR_INVALID, "init_params called before build");
    if (hm->init == INIT_RANDOM && !rng)
        return h->error(h, QD_ERR_INVALID, "init_params needs an rng");
    /* Both modes draw the same numbers; only where they land differs. */
    int rc = fill_params(hm, rng, hm->trainable ? params : hm->fixed);
    if (!rc && !hm->trainable)
        hm->has_fixed = 1;
    return rc;
}

/* g(r) = m tanh(r/m)/r and g'(r)/r, with their series near r = 0. */
static void squash(double r, double m, double *g, double *gp_over_r)
{
    double x = r / m;
    if (x < 1e-3) {
        double x2 = x * x;
        *g = 1.0 - x2 / 3.0 + 2.0 * x2 * x2 / 15.0;
        *gp_over_r = (-2.0 / 3.0 + 8.0 * x2 / 15.0) / (m * m);
        return;
    }
    double th = tanh(x), sech2 = 1.0 - th * th;
    *g = th / x;
    *gp_over_r = (sech2 - th / x) / (r * r);
}

static double frob(const double complex *A, size_t d)
{
    double s = 0.0;
    for (size_t e = 0; e < d * d; e++)
        s += creal(A[e]) * creal(A[e]) + cimag(A[e]) * cimag(A[e]);
    return sqrt(s);
}

static const double *source(herm *hm, const double *params)
{
    const qd_host *h = hm->host;
    if (!hm->terms) {
        h->error(h, QD_ERR_INVALID, "called before build");
        return NULL;
    }
    if (hm->trainable)
        return params;
    if (hm->init != INIT_RANDOM && !hm->has_fixed) {
        /* Deterministic inits need no rng: fill them on first use. */
        if (fill_params(hm, NULL, hm->fixed))
            return NULL;
        hm->has_fixed = 1;
    }
    if (!hm->has_fixed) {
        h->error(h, QD_ERR_INVALID,
                 "fixed random Hermitian: init_params must run before "
                 "matrices (it draws the fixed matrices from the rng)");
        return NULL;
    }
    return hm->fixed;
}

static int herm_matrices(void *self, const double *params, double complex *mats)
{
    herm *hm = self;
    const double *p = source(hm, params);
    if (!p)
        return QD_ERR_INVALID;
    for (size_t t = 0; t < hm->n_terms; t++) {
        const hterm *tm = &hm->terms[t];
        size_t d = (size_t)1 << tm->k;
        double complex *A = mats + tm->moff;
        for (size_t e = 0; e < d * d; e++)
            if (!isfinite(p[tm->poff + e]))
                return hm->host->error(hm->host, QD_ERR_NUMERIC,
                                       "parameter %zu of term %zu is not "
                                       "finite",
                                       e, t);
        from_params(p + tm->poff, d, A);
        if (hm->max_norm > 0) {
            double g, gp;
            squash(frob(A, d), hm->max_norm, &g, &gp);
            for (size_t e = 0; e < d * d; e++)
                A[e] *= g;
        }
    }
    return QD_OK;
}

static int herm_matrices_backward(void *self, const double *params,
                                  const double complex *g_mats,
                                  double *g_params)
{
    herm *hm = self;
    if (!hm->trainable)
        return QD_OK;
    if (!hm->terms)
        return hm->host->error(hm->host, QD_ERR_INVALID,
                               "matrices_backward called before build");
    size_t dmax = (size_t)1 << QD_OBS_MAX_WIRES;
    double complex *A = malloc(dmax * dmax * sizeof *A);
    double complex *GA = malloc(dmax * dmax * sizeof *GA);
    if (!A || !GA) {
        free(A);
        free(GA);
        return hm->host->error(hm->host, QD_ERR_NOMEM, "out of memory");
    }
    for (size_t t = 0; t < hm->n_terms; t++) {
        const hterm *tm = &hm->terms[t];
        size_t d = (size_t)1 << tm->k;
        const double complex *G = g_mats + tm->moff;
        if (hm->max_norm > 0) {
            /* H = g(r) A:  G_A = g G + (g'(r)/r) Re<G, A> A. */
            from_params(params + tm->poff, d, A);
            double g, gpr, ga = 0.0;
            squash(frob(A, d), hm->max_norm, &g, &gpr);
            for (size_t e = 0; e < d * d; e++)
                ga += creal(conj(G[e]) * A[e]);
            for (size_t e = 0; e < d * d; e++)
                GA[e] = g * G[e] + gpr * ga * A[e];
            G = GA;
        }
        double *gp = g_params + tm->poff;
        for (size_t i = 0; i < d; i++)
            gp[i] += creal(G[i * d + i]);
        size_t q = d;
        for (size_t i = 0; i < d; i++)
            for (size_t j = i + 1; j < d; j++) {
                gp[q++] += creal(G[i * d + j]) + creal(G[j * d + i]);
                gp[q++] += cimag(G[i * d + j]) - cimag(G[j * d + i]);
            }
    }
    free(A);
    free(GA);
    return QD_OK;
}

static const qd_observable_vt vt = {
    sizeof(qd_observable_vt), herm_create, herm_destroy, herm_build,
    herm_n_params, herm_init_params, herm_matrices, herm_matrices_backward,
};

static const qd_plugin_desc desc = QD_PLUGIN_DESC_INIT(
    QD_KIND_OBSERVABLE, "hermitian", "1.0.0",
    "one k-local Hermitian per output (default: 2x2 on each wire), trainable "
    "or fixed",
    params, &vt);

static const qd_plugin_desc *const descs[] = {&desc, NULL};

QD_PLUGIN_EXPORT const qd_plugin_desc *const *qd_plugin_entry(void)
{
    return descs;
}
