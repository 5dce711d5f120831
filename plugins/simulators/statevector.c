/*
 * statevector — state-vector simulator plugin.
 *
 * Forward: expectations of Hermitian terms, exact or sampled with shots.
 * Backward: adjoint differentiation (default), parameter-shift or central
 * finite differences, for weights, per-sample inputs (gate angles and
 * state-prep amplitudes) and the observables' matrices (the reduced density
 * matrices, so trainable Hermitians train under adjoint too).
 *
 * Two routes execute a circuit:
 *   gates  every sample's state is evolved gate by gate (OpenMP over the
 *          batch, or over the amplitudes of one gate for large registers);
 *   dense  when no gate reads an input, all samples share one circuit
 *          unitary U: it is built once (2^n x 2^n) and applied to the whole
 *          batch as a matrix product; the adjoint sweep then runs on the 2^n
 *          column states of U with X = sum_b phi_b a_b^T as co-state.
 *
 * Numerics are deterministic for a given thread count and, by construction,
 * independent of it: every reduction over amplitudes is split into a number
 * of chunks that depends only on the register size, and batch sums run over
 * per-sample partials in sample order.
 *
 * Memory: at most three state vectors per worker thread (state, co-state or
 * shifted copy).
 */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/plugin.h"

typedef double complex cplx;

#define SV_ALWAYS_INLINE static inline __attribute__((always_inline))

/* Largest register: 2^30 amplitudes are 16 GiB per state vector. */
#define SV_MAX_WIRES 30u
/* Work (amplitudes x block width) below which a gate is not split over
 * threads: the fork/join would cost more than the gate. */
#define SV_PAR_MIN_WORK ((size_t)1 << 13)
/* Loop length from which reductions are split into SV_RED_CHUNKS partial
 * sums; a function of the loop length only, so results do not depend on the
 * thread count. */
#define SV_RED_MIN ((size_t)1 << 14)
#define SV_RED_CHUNKS 64
/* Samples per block of per-sample partials (weights gradient, density
 * matrices) before the ordered reduction. */
#define SV_BLOCK 256
/* Samples per block of the dense route's batch matrices. */
#define SV_DENSE_BLOCK 2048
/* Largest register for the dense route (U has 4^n entries). */
#define SV_DENSE_MAX_WIRES 10u

enum { DIFF_ADJOINT = 0, DIFF_PSHIFT = 1, DIFF_FD = 2 };
enum { ROUTE_AUTO = 0, ROUTE_GATES = 1, ROUTE_DENSE = 2 };

typedef struct sv {
    const qd_host *host;
    int diff;
    int route;
    long long shots;
    double fd_step;
    qd_sim_stats stats;
} sv;

/* ------------------------------------------------------------------------
 * Complex helpers (written out: C's `*` on complex numbers goes through the
 * NaN-safe libgcc routine unless -fcx-limited-range).
 * ---------------------------------------------------------------------- */

SV_ALWAYS_INLINE cplx cmul(cplx a, cplx b)
{
    double ar = creal(a), ai = cimag(a), br = creal(b), bi = cimag(b);
    return CMPLX(ar * br - ai * bi, ar * bi + ai * br);
}

/* conj(a) * b */
SV_ALWAYS_INLINE cplx cmulc(cplx a, cplx b)
{
    double ar = creal(a), ai = cimag(a), br = creal(b), bi = cimag(b);
    return CMPLX(ar * br + ai * bi, ar * bi - ai * br);
}

/* Insert a zero bit at position p of k. */
SV_ALWAYS_INLINE size_t ins0(size_t k, unsigned p)
{
    size_t low = k & (((size_t)1 << p) - 1);
    return ((k >> p) << (p + 1)) | low;
}

static void adj2(cplx *m)
{
    cplx t = m[1];
    m[0] = conj(m[0]);
    m[3] = conj(m[3]);
    m[1] = conj(m[2]);
    m[2] = conj(t);
}

static void adj4(cplx *m)
{
    cplx t[16];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++)
            t[i * 4 + j] = conj(m[j * 4 + i]);
    memcpy(m, t, sizeof t);
}

/* ------------------------------------------------------------------------
 * Kernels. A "state" here is 2^n rows of W complex entries: W = 1 for one
 * sample, W = 2^n for the dense route's matrices (row i = amplitude i of all
 * column states). Each kernel is a range function over its loop index so
 * the drivers can split it over threads.
 * ---------------------------------------------------------------------- */

typedef struct kern {
    cplx *s;                /* rows updated in place */
    cplx *l;                /* co-state rows (fused adjoint step) */
    const cplx *x;          /* source rows (term application) */
    size_t W;
    unsigned pa, pb;        /* bit of wires[0], wires[1] */
    unsigned plo, phi;      /* the two bits sorted */
    cplx m[16];
    /* terms */
    const size_t *off;
    const unsigned *pos;
    unsigned kw;
    size_t d;
    const cplx *h;
    double coef;
} kern;

typedef void (*range_fn)(const kern *K, size_t lo, size_t hi, double *acc);

SV_ALWAYS_INLINE size_t quad_base(const kern *K, size_t k)
{
    return ins0(ins0(k, K->plo), K->phi);
}

/* general 2x2 on bit pa */
SV_ALWAYS_INLINE void g1_body(const kern *K, size_t lo, size_t hi, size_t W)
{
    cplx *s = K->s;
    const unsigned p = K->pa;
    const size_t st = (size_t)1 << p;
    const cplx m0 = K->m[0], m1 = K->m[1], m2 = K->m[2], m3 = K->m[3];
    for (size_t k = lo; k < hi; k++) {
        size_t i0 = ins0(k, p);
        cplx *a = s + i0 * W, *b = s + (i0 | st) * W;
        for (size_t w = 0; w < W; w++) {
            cplx x = a[w], y = b[w];
            a[w] = cmul(m0, x) + cmul(m1, y);
            b[w] = cmul(m2, x) + cmul(m3, y);
        }
    }
}

/* diagonal 2x2 on bit pa */
SV_ALWAYS_INLINE void d1_body(const kern *K, size_t lo, size_t hi, size_t W)
{
    cplx *s = K->s;
    const unsigned p = K->pa;
    const size_t st = (size_t)1 << p;
    const cplx m0 = K->m[0], m3 = K->m[3];
    for (size_t k = lo; k < hi; k++) {
        size_t i0 = ins0(k, p);
        cplx *a = s + i0 * W, *b = s + (i0 | st) * W;
        for (size_t w = 0; w < W; w++) {
            a[w] = cmul(m0, a[w]);
            b[w] = cmul(m3, b[w]);
        }
    }
}

/* Pauli X on bit pa */
SV_ALWAYS_INLINE void x1_body(const kern *K, size_t lo, size_t hi, size_t W)
{
    cplx *s = K->s;
    const unsigned p = K->pa;
    const size_t st = (size_t)1 << p;
    for (size_t k = lo; k < hi; k++) {
        size_t i0 = ins0(k, p);
        cplx *a = s + i0 * W, *b = s + (i0 | st) * W;
        for (size_t w = 0; w < W; w++) {
            cplx t = a[w];
            a[w] = b[w];
            b[w] = t;
        }
    }
}

/* 2x2 block m[0..3] on target pb where control pa is set */
SV_ALWAYS_INLINE void c2_body(const kern *K, size_t lo, size_t hi, size_t W)
{
    cplx *s = K->s;
    const size_t ca = (size_t)1 << K->pa, tb = (size_t)1 << K->pb;
    const cplx m0 = K->m[0], m1 = K->m[1], m2 = K->m[2], m3 = K->m[3];
    for (size_t k = lo; k < hi; k++) {
        size_t i0 = quad_base(K, k) | ca;
        cplx *a = s + i0 * W, *b = s + (i0 | tb) * W;
        for (size_t w = 0; w < W; w++) {
            cplx x = a[w], y = b[w];
            a[w] = cmul(m0, x) + cmul(m1, y);
            b[w] = cmul(m2, x) + cmul(m3, y);
        }
    }
}

SV_ALWAYS_INLINE void cn_body(const kern *K, size_t lo, size_t hi, size_t W)
{
    cplx *s = K->s;
    const size_t ca = (size_t)1 << K->pa, tb = (size_t)1 << K->pb;
    for (size_t k = lo; k < hi; k++) {
        size_t i0 = quad_base(K, k) | ca;
        cplx *a = s + i0 * W, *b = s + (i0 | tb) * W;
        for (size_t w = 0; w < W; w++) {
            cplx t = a[w];
            a[w] = b[w];
            b[w] = t;
        }
    }
}

SV_ALWAYS_INLINE void cz_body(const kern *K, size_t lo, size_t hi, size_t W)
{
    cplx *s = K->s;
    const size_t both = ((size_t)1 << K->pa) | ((size_t)1 << K->pb);
    for (size_t k = lo; k < hi; k++) {
        cplx *a = s + (quad_base(K, k) | both) * W;
        for (size_t w = 0; w < W; w++)
            a[w] = -a[w];
    }
}

SV_ALWAYS_INLINE void sw_body(const kern *K, size_t lo, size_t hi, size_t W)
{
    cplx *s = K->s;
    const size_t ba = (size_t)1 << K->pa, bb = (size_t)1 << K->pb;
    for (size_t k = lo; k < hi; k++) {
        size_t i0 = quad_base(K, k);
        cplx *a = s + (i0 | ba) * W, *b = s + (i0 | bb) * W;
        for (size_t w = 0; w < W; w++) {
            cplx t = a[w];
            a[w] = b[w];
            b[w] = t;
        }
    }
}

/* general 4x4 on (pa, pb), basis |wires[0] wires[1]> */
SV_ALWAYS_INLINE void g2_body(const kern *K, size_t lo, size_t hi, size_t W)
{
    cplx *s = K->s;
    const size_t ba = (size_t)1 << K->pa, bb = (size_t)1 << K->pb;
    const cplx *m = K->m;
    for (size_t k = lo; k < hi; k++) {
        size_t i0 = quad_base(K, k);
        cplx *r[4] = {s + i0 * W, s + (i0 | bb) * W, s + (i0 | ba) * W,
                      s + (i0 | ba | bb) * W};
        for (size_t w = 0; w < W; w++) {
            cplx v[4] = {r[0][w], r[1][w], r[2][w], r[3][w]};
            for (int i = 0; i < 4; i++)
                r[i][w] = cmul(m[4 * i], v[0]) + cmul(m[4 * i + 1], v[1]) +
                          cmul(m[4 * i + 2], v[2]) + cmul(m[4 * i + 3], v[3]);
        }
    }
}

/*
 * Fused adjoint step for a parametrised gate on a pair of rows (a, b):
 *   psi <- M psi, lam <- M lam   (M = G^dagger)
 * and the cross matrix C[r][c] = sum conj(lam_old_r) psi_new_c is
 * accumulated (acc: 8 doubles), from which every angle's contribution
 * Re sum_rc dG[r][c] C[r][c] follows outside the loop.
 */
SV_ALWAYS_INLINE void fused_pair(cplx *pa_, cplx *pb_, cplx *la, cplx *lb,
                                 size_t W, cplx m0, cplx m1, cplx m2, cplx m3,
                                 cplx *c00, cplx *c01, cplx *c10, cplx *c11)
{
    for (size_t w = 0; w < W; w++) {
        cplx x = pa_[w], y = pb_[w];
        cplx u = cmul(m0, x) + cmul(m1, y);
        cplx v = cmul(m2, x) + cmul(m3, y);
        pa_[w] = u;
        pb_[w] = v;
        cplx l0 = la[w], l1 = lb[w];
        *c00 += cmulc(l0, u);
        *c01 += cmulc(l0, v);
        *c10 += cmulc(l1, u);
        *c11 += cmulc(l1, v);
        la[w] = cmul(m0, l0) + cmul(m1, l1);
        lb[w] = cmul(m2, l0) + cmul(m3, l1);
    }
}

SV_ALWAYS_INLINE void f1_body(const kern *K, size_t lo, size_t hi, double *acc,
                              size_t W)
{
    cplx c00 = 0, c01 = 0, c10 = 0, c11 = 0;
    const unsigned p = K->pa;
    const size_t st = (size_t)1 << p;
    for (size_t k = lo; k < hi; k++) {
        size_t i0 = ins0(k, p), i1 = i0 | st;
        fused_pair(K->s + i0 * W, K->s + i1 * W, K->l + i0 * W, K->l + i1 * W,
                   W, K->m[0], K->m[1], K->m[2], K->m[3], &c00, &c01, &c10,
                   &c11);
    }
    acc[0] += creal(c00); acc[1] += cimag(c00);
    acc[2] += creal(c01); acc[3] += cimag(c01);
    acc[4] += creal(c10); acc[5] += cimag(c10);
    acc[6] += creal(c11); acc[7] += cimag(c11);
}

SV_ALWAYS_INLINE void fc_body(const kern *K, size_t lo, size_t hi, double *acc,
                              size_t W)
{
    cplx c00 = 0, c01 = 0, c10 = 0, c11 = 0;
    const size_t ca = (size_t)1 << K->pa, tb = (size_t)1 << K->pb;
    for (size_t k = lo; k < hi; k++) {
        size_t i0 = quad_base(K, k) | ca, i1 = i0 | tb;
        fused_pair(K->s + i0 * W, K->s + i1 * W, K->l + i0 * W, K->l + i1 * W,
                   W, K->m[0], K->m[1], K->m[2], K->m[3], &c00, &c01, &c10,
                   &c11);
    }
    acc[0] += creal(c00); acc[1] += cimag(c00);
    acc[2] += creal(c01); acc[3] += cimag(c01);
    acc[4] += creal(c10); acc[5] += cimag(c10);
    acc[6] += creal(c11); acc[7] += cimag(c11);
}

/* Range functions: specialise W = 1 (one sample) so its inner loop
 * disappears. */
#define SV_RANGE(name)                                                      \
    static void name##_range(const kern *K, size_t lo, size_t hi,           \
                             double *acc)                                   \
    {                                                                       \
        (void)acc;                                                          \
        if (K->W == 1)                                                      \
            name##_body(K, lo, hi, 1);                                      \
        else                                                                \
            name##_body(K, lo, hi, K->W);                                   \
    }
SV_RANGE(g1)
SV_RANGE(d1)
SV_RANGE(x1)
SV_RANGE(c2)
SV_RANGE(cn)
SV_RANGE(cz)
SV_RANGE(sw)
SV_RANGE(g2)

#define SV_RANGE_ACC(name)                                                  \
    static void name##_range(const kern *K, size_t lo, size_t hi,           \
                             double *acc)                                   \
    {                                                                       \
        if (K->W == 1)                                                      \
            name##_body(K, lo, hi, acc, 1);                                 \
        else                                                                \
            name##_body(K, lo, hi, acc, K->W);                              \
    }
SV_RANGE_ACC(f1)
SV_RANGE_ACC(fc)

/* Base index of rest index r for a term (zeros inserted at its bits). */
SV_ALWAYS_INLINE size_t term_base(const kern *K, size_t r)
{
    for (unsigned j = 0; j < K->kw; j++)
        r = ins0(r, K->pos[j]);
    return r;
}

/* s += coef * (H (x) I) x  for one term (W = 1). */
static void ta_range(const kern *K, size_t lo, size_t hi, double *acc)
{
    (void)acc;
    const size_t d = K->d;
    cplx v[64];
    for (size_t r = lo; r < hi; r++) {
        size_t base = term_base(K, r);
        for (size_t i = 0; i < d; i++)
            v[i] = K->x[base + K->off[i]];
        for (size_t i = 0; i < d; i++) {
            cplx y = 0;
            const cplx *hr = K->h + i * d;
            for (size_t j = 0; j < d; j++)
                y += cmul(hr[j], v[j]);
            K->s[base + K->off[i]] += K->coef * y;
        }
    }
}

/* acc (2 d^2 doubles) += rho[i][j] = sum_rest x_i conj(x_j) (W = 1). */
static void rho_range(const kern *K, size_t lo, size_t hi, double *acc)
{
    const size_t d = K->d;
    cplx v[64];
    for (size_t r = lo; r < hi; r++) {
        size_t base = term_base(K, r);
        for (size_t i = 0; i < d; i++)
            v[i] = K->x[base + K->off[i]];
        for (size_t i = 0; i < d; i++)
            for (size_t j = 0; j < d; j++) {
                cplx p = cmulc(v[j], v[i]);
                acc[2 * (i * d + j)] += creal(p);
                acc[2 * (i * d + j) + 1] += cimag(p);
            }
    }
}

/* ---- drivers ---- */

static void par_run(range_fn fn, const kern *K, size_t total, size_t work,
                    int par)
{
    if (par && work >= SV_PAR_MIN_WORK && total >= 2 &&
        omp_get_max_threads() > 1) {
#pragma omp parallel
        {
            size_t t = (size_t)omp_get_thread_num();
            size_t nt = (size_t)omp_get_num_threads();
            fn(K, total * t / nt, total * (t + 1) / nt, NULL);
        }
    } else {
        fn(K, 0, total, NULL);
    }
}

/* acc[0..nacc) += sum over the loop, in a fixed chunking (see SV_RED_MIN). */
static int par_reduce(range_fn fn, const kern *K, size_t total, size_t work,
                      int par, size_t nacc, double *acc)
{
    if (total < SV_RED_MIN) {
        fn(K, 0, total, acc);
        return QD_OK;
    }
    const size_t nch = SV_RED_CHUNKS;
    double *part = calloc(nch * nacc, sizeof *part);
    if (!part)
        return QD_ERR_NOMEM;
    int go_par = par && work >= SV_PAR_MIN_WORK && omp_get_max_threads() > 1;
#pragma omp parallel for schedule(static) if (go_par)
    for (size_t c = 0; c < nch; c++)
        fn(K, total * c / nch, total * (c + 1) / nch, part + c * nacc);
    for (size_t c = 0; c < nch; c++)
        for (size_t i = 0; i < nacc; i++)
            acc[i] += part[c * nacc + i];
    free(part);
    return QD_OK;
}

/* ------------------------------------------------------------------------
 * Gates
 * ---------------------------------------------------------------------- */

static int gate_is_diag1(uint32_t g)
{
    return g == QD_GATE_Z || g == QD_GATE_S || g == QD_GATE_T ||
           g == QD_GATE_RZ || g == QD_GATE_PHASE;
}

static int gate_has_matrix(uint32_t g)
{
    return g != QD_GATE_BARRIER && g != QD_GATE_STATE_PREP && g != QD_GATE_I;
}

static void kern_wires(kern *K, const qd_op *op, unsigned n)
{
    K->pa = n - 1 - op->wires[0];
    if (op->n_wires == 2) {
        K->pb = n - 1 - op->wires[1];
        K->plo = K->pa < K->pb ? K->pa : K->pb;
        K->phi = K->pa < K->pb ? K->pb : K->pa;
    }
}

/* Apply op's gate (adj: its adjoint) to s (2^n rows of W). */
static void apply_gate(const qd_circuit *c, const qd_op *op,
                       const double *theta, cplx *s, unsigned n, size_t W,
                       int adj, int par)
{
    uint32_t g = op->gate;
    if (!gate_has_matrix(g))
        return;
    kern K = {0};
    K.s = s;
    K.W = W;
    kern_wires(&K, op, n);
    size_t dim = (size_t)1 << n;
    cplx m[16];
    qd_op_matrix(c, op, theta, m, NULL);
    if (op->n_wires == 1) {
        if (adj)
            adj2(m);
        memcpy(K.m, m, 4 * sizeof *m);
        range_fn fn = g == QD_GATE_X ? x1_range
                      : gate_is_diag1(g) ? d1_range
                                         : g1_range;
        par_run(fn, &K, dim / 2, dim * W, par);
        return;
    }
    switch (g) {
    case QD_GATE_CNOT:
        par_run(cn_range, &K, dim / 4, dim * W / 2, par);
        break;
    case QD_GATE_CZ:
        par_run(cz_range, &K, dim / 4, dim * W / 4, par);
        break;
    case QD_GATE_SWAP:
        par_run(sw_range, &K, dim / 4, dim * W / 2, par);
        break;
    case QD_GATE_CRX:
    case QD_GATE_CRY:
    case QD_GATE_CRZ: {
        cplx b[4] = {m[10], m[11], m[14], m[15]};
        if (adj)
            adj2(b);
        memcpy(K.m, b, sizeof b);
        par_run(c2_range, &K, dim / 4, dim * W / 2, par);
        break;
    }
    default:
        if (adj)
            adj4(m);
        memcpy(K.m, m, sizeof m);
        par_run(g2_range, &K, dim / 4, dim * W, par);
        break;
    }
}

/* Reverse a parametrised gate on (psi, lam) and write, for each angle a,
 * grad[a] = 2 Re <lam_k| dG/dtheta_a |psi_(k-1)>. */
static int sweep_gate(const qd_circuit *c, const qd_op *op,
                      const double *theta, cplx *psi, cplx *lam, unsigned n,
                      size_t W, int par, double *grad)
{
    kern K = {0};
    K.s = psi;
    K.l = lam;
    K.W = W;
    kern_wires(&K, op, n);
    size_t dim = (size_t)1 << n;
    cplx m[16], dm[3 * 16], d[3][4];
    qd_op_matrix(c, op, theta, m, dm);
    double acc[8] = {0};
    int rc;
    if (op->n_wires == 1) {
        adj2(m);
        memcpy(K.m, m, 4 * sizeof *m);
        for (uint32_t a = 0; a < op->n_angles; a++)
            memcpy(d[a], dm + 4 * a, 4 * sizeof *m);
        rc = par_reduce(f1_range, &K, dim / 2, dim * W, par, 8, acc);
    } else {
        cplx b[4] = {m[10], m[11], m[14], m[15]};
        adj2(b);
        memcpy(K.m, b, sizeof b);
        for (uint32_t a = 0; a < op->n_angles; a++) {
            const cplx *x = dm + 16 * a;
            d[a][0] = x[10];
            d[a][1] = x[11];
            d[a][2] = x[14];
            d[a][3] = x[15];
        }
        rc = par_reduce(fc_range, &K, dim / 4, dim * W / 2, par, 8, acc);
    }
    if (rc)
        return rc;
    cplx C[4] = {CMPLX(acc[0], acc[1]), CMPLX(acc[2], acc[3]),
                 CMPLX(acc[4], acc[5]), CMPLX(acc[6], acc[7])};
    for (uint32_t a = 0; a < op->n_angles; a++) {
        double v = 0;
        for (int i = 0; i < 4; i++)
            v += creal(cmul(d[a][i], C[i]));
        grad[a] = 2.0 * v;
    }
    return QD_OK;
}

/* ------------------------------------------------------------------------
 * Small Hermitian eigen-decomposition (cyclic complex Jacobi) for sampling
 * a term in its eigenbasis. a (d x d, row-major) is destroyed; v receives
 * the eigenvectors as columns.
 * ---------------------------------------------------------------------- */

static int herm_eig(cplx *a, size_t d, double *w, cplx *v)
{
    for (size_t i = 0; i < d * d; i++)
        v[i] = (i / d == i % d) ? 1.0 : 0.0;
    double norm = 0;
    for (size_t i = 0; i < d * d; i++)
        norm += creal(a[i]) * creal(a[i]) + cimag(a[i]) * cimag(a[i]);
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0;
        for (size_t p = 0; p < d; p++)
            for (size_t q = p + 1; q < d; q++)
                off += creal(a[p * d + q]) * creal(a[p * d + q]) +
                       cimag(a[p * d + q]) * cimag(a[p * d + q]);
        if (off <= 1e-30 * norm || off == 0)
            break;
        for (size_t p = 0; p < d; p++)
            for (size_t q = p + 1; q < d; q++) {
                cplx apq = a[p * d + q];
                double r = cabs(apq);
                if (r == 0)
                    continue;
                cplx e = apq / r;
                double app = creal(a[p * d + p]), aqq = creal(a[q * d + q]);
                double th = 0.5 * atan2(2 * r, aqq - app);
                double cs = cos(th), sn = sin(th);
                /* R = diag(1, conj e) [[c, s], [-s, c]] */
                cplx rpp = cs, rpq = sn, rqp = -sn * conj(e), rqq = cs * conj(e);
                for (size_t i = 0; i < d; i++) { /* A <- A R */
                    cplx x = a[i * d + p], y = a[i * d + q];
                    a[i * d + p] = x * rpp + y * rqp;
                    a[i * d + q] = x * rpq + y * rqq;
                }
                for (size_t j = 0; j < d; j++) { /* A <- R^dagger A */
                    cplx x = a[p * d + j], y = a[q * d + j];
                    a[p * d + j] = conj(rpp) * x + conj(rqp) * y;
                    a[q * d + j] = conj(rpq) * x + conj(rqq) * y;
                }
                for (size_t i = 0; i < d; i++) { /* V <- V R */
                    cplx x = v[i * d + p], y = v[i * d + q];
                    v[i * d + p] = x * rpp + y * rqp;
                    v[i * d + q] = x * rpq + y * rqq;
                }
                a[p * d + q] = 0;
                a[q * d + p] = 0;
            }
    }
    for (size_t i = 0; i < d; i++)
        w[i] = creal(a[i * d + i]);
    return QD_OK;
}

/* ------------------------------------------------------------------------
 * Per-call context
 * ---------------------------------------------------------------------- */

typedef struct term_ctx {
    unsigned k, out;
    size_t d;
    size_t off[64];                 /* offset of term basis state i */
    unsigned pos[QD_OBS_MAX_WIRES]; /* term bits, ascending */
    const cplx *h;
    size_t mat;                     /* offset in obs matrices / g_mats */
    size_t rho_at;                  /* offset in a per-sample rho block */
    double *eval;                   /* shots: eigenvalues (d) */
    cplx *evec;                     /* shots: eigenvectors (d x d columns) */
} term_ctx;

typedef struct jctx {
    sv *S;
    const qd_sim_job *job;
    const qd_circuit *c;
    unsigned n;
    size_t dim;
    size_t n_in, n_w, n_out;
    size_t first;                   /* first op after a state prep */
    int prep;
    size_t prep_off;
    int reads_inputs;               /* some gate angle reads an input */
    size_t n_terms;
    term_ctx *terms;
    size_t rho_len;                 /* complex entries of all terms' rho */
    size_t d_max;
    long long shots;
    uint64_t shot_seed;
    int dense;
    int bpar;                       /* parallel over the batch */
    int nthreads;
} jctx;

/* per-thread scratch */
typedef struct worker {
    cplx *psi, *aux;               /* state, co-state or shifted copy */
    cplx *rho;                      /* d_max^2 */
    double *racc;                   /* 2 d_max^2 */
    double *e;                      /* n_out */
    double *e2;                     /* n_out */
} worker;

/* An angle override for shift rules: op `op`, angle `comp` += delta. */
typedef struct shift {
    size_t op;
    uint32_t comp;
    double delta;
} shift;

static const shift no_shift = {SIZE_MAX, 0, 0.0};

static int sv_err(const jctx *jc, int code, const char *fmt, ...)
    QD_PRINTF(3, 4);
static int sv_err(const jctx *jc, int code, const char *fmt, ...)
{
    char msg[QD_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return jc->S->host->error(jc->S->host, code, "%s", msg);
}

static void jctx_free(jctx *jc)
{
    if (jc->terms)
        for (size_t t = 0; t < jc->n_terms; t++) {
            free(jc->terms[t].eval);
            free(jc->terms[t].evec);
        }
    free(jc->terms);
    jc->terms = NULL;
}

static int finite_vec(const double *x, size_t n, size_t *bad)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) {
            *bad = i;
            return 0;
        }
    return 1;
}

/* Validate the job and precompute the terms. */
static int jctx_init(jctx *jc, sv *S, const qd_sim_job *job, int backward)
{
    memset(jc, 0, sizeof *jc);
    jc->S = S;
    jc->job = job;
    if (!job || job->struct_size < sizeof(qd_sim_job))
        return sv_err(jc, QD_ERR_INVALID, "job is NULL or too small "
                                          "(struct_size)");
    const qd_circuit *c = job->circuit;
    const qd_obs_spec *o = job->obs;
    if (!c || !o)
        return sv_err(jc, QD_ERR_INVALID, "job without %s",
                      !c ? "circuit" : "observable spec");
    jc->c = c;
    if (c->n_wires < 1 || c->n_wires > SV_MAX_WIRES)
        return sv_err(jc, QD_ERR_INVALID,
                      "circuit has %u wires; this simulator supports 1..%u",
                      c->n_wires, SV_MAX_WIRES);
    jc->n = c->n_wires;
    jc->dim = (size_t)1 << jc->n;
    jc->n_in = c->n_inputs;
    jc->n_w = c->n_weights;
    jc->n_out = o->n_outputs;
    if (job->batch > 0 && jc->n_in > 0 && !job->inputs)
        return sv_err(jc, QD_ERR_INVALID,
                      "circuit reads %zu inputs per sample but job->inputs "
                      "is NULL", jc->n_in);
    if (jc->n_w > 0 && !job->weights)
        return sv_err(jc, QD_ERR_INVALID,
                      "circuit has %zu weights but job->weights is NULL",
                      jc->n_w);
    if (o->n_terms > 0 && (!o->terms || (o->matrix_len > 0 && !job->obs_mats)))
        return sv_err(jc, QD_ERR_INVALID,
                      "observable spec without terms or matrices");
    for (size_t i = 0; i < c->n_ops; i++) {
        const qd_op *op = &c->ops[i];
        if (op->gate >= QD_GATE_COUNT_)
            return sv_err(jc, QD_ERR_INVALID, "op %zu: unknown gate %u", i,
                          op->gate);
        if (op->gate == QD_GATE_STATE_PREP) {
            if (i != 0)
                return sv_err(jc, QD_ERR_INVALID,
                              "op %zu: StatePrep must be the first op", i);
            if (op->data + jc->dim > jc->n_in)
                return sv_err(jc, QD_ERR_INVALID,
                              "StatePrep reads inputs %zu..%zu but the "
                              "circuit has %zu inputs",
                              op->data, op->data + jc->dim - 1, jc->n_in);
            jc->prep = 1;
            jc->prep_off = op->data;
            jc->first = 1;
            continue;
        }
        if (op->gate == QD_GATE_BARRIER)
            continue;
        if (op->n_wires < 1 || op->n_wires > 2)
            return sv_err(jc, QD_ERR_INVALID, "op %zu (%s): %u wires", i,
                          qd_gate_name((qd_gate)op->gate), op->n_wires);
        for (uint32_t w = 0; w < op->n_wires; w++)
            if (op->wires[w] >= jc->n)
                return sv_err(jc, QD_ERR_INVALID,
                              "op %zu (%s): wire %u out of range (0..%u)", i,
                              qd_gate_name((qd_gate)op->gate), op->wires[w],
                              jc->n - 1);
        if (op->n_wires == 2 && op->wires[0] == op->wires[1])
            return sv_err(jc, QD_ERR_INVALID, "op %zu (%s): repeated wire %u",
                          i, qd_gate_name((qd_gate)op->gate), op->wires[0]);
        if (op->gate == QD_GATE_UNITARY &&
            op->data + ((size_t)1 << (2 * op->n_wires)) > c->n_matrices)
            return sv_err(jc, QD_ERR_INVALID,
                          "op %zu: QubitUnitary matrix out of range", i);
        if ((int)op->n_angles != qd_gate_n_angles((qd_gate)op->gate))
            return sv_err(jc, QD_ERR_INVALID, "op %zu (%s): %u angles", i,
                          qd_gate_name((qd_gate)op->gate), op->n_angles);
        for (uint32_t a = 0; a < op->n_angles; a++) {
            const qd_angle *an = &op->angle[a];
            if (an->src == QD_SRC_INPUT) {
                jc->reads_inputs = 1;
                if (an->index >= jc->n_in)
                    return sv_err(jc, QD_ERR_INVALID,
                                  "op %zu: input index %u out of range", i,
                                  an->index);
            } else if (an->src == QD_SRC_WEIGHT && an->index >= jc->n_w) {
                return sv_err(jc, QD_ERR_INVALID,
                              "op %zu: weight index %u out of range", i,
                              an->index);
            }
        }
    }
    size_t bad;
    if (jc->n_w && !finite_vec(job->weights, jc->n_w, &bad))
        return sv_err(jc, QD_ERR_NUMERIC, "weight %zu is not finite", bad);
    if (job->batch && jc->n_in &&
        !finite_vec(job->inputs, job->batch * jc->n_in, &bad))
        return sv_err(jc, QD_ERR_NUMERIC,
                      "input %zu of sample %zu is not finite", bad % jc->n_in,
                      bad / jc->n_in);

    jc->n_terms = o->n_terms;
    jc->terms = calloc(o->n_terms ? o->n_terms : 1, sizeof *jc->terms);
    if (!jc->terms)
        return sv_err(jc, QD_ERR_NOMEM, "out of memory");
    jc->shots = backward && S->diff == DIFF_ADJOINT ? 0 : S->shots;
    for (size_t t = 0; t < o->n_terms; t++) {
        const qd_obs_term *ot = &o->terms[t];
        term_ctx *tc = &jc->terms[t];
        if (ot->n_wires < 1 || ot->n_wires > QD_OBS_MAX_WIRES ||
            ot->n_wires > jc->n)
            return sv_err(jc, QD_ERR_INVALID,
                          "term %zu acts on %u wires (circuit has %u, max %d)",
                          t, ot->n_wires, jc->n, QD_OBS_MAX_WIRES);
        if (ot->output >= jc->n_out)
            return sv_err(jc, QD_ERR_INVALID,
                          "term %zu feeds output %u of %zu", t, ot->output,
                          jc->n_out);
        tc->k = ot->n_wires;
        tc->out = ot->output;
        tc->d = (size_t)1 << tc->k;
        if (ot->matrix + tc->d * tc->d > o->matrix_len)
            return sv_err(jc, QD_ERR_INVALID,
                          "term %zu: matrix at %zu (+%zu) outside the "
                          "%zu entries", t, ot->matrix, tc->d * tc->d,
                          o->matrix_len);
        for (unsigned j = 0; j < tc->k; j++) {
            if (ot->wires[j] >= jc->n)
                return sv_err(jc, QD_ERR_INVALID,
                              "term %zu: wire %u out of range (0..%u)", t,
                              ot->wires[j], jc->n - 1);
            for (unsigned i = 0; i < j; i++)
                if (ot->wires[i] == ot->wires[j])
                    return sv_err(jc, QD_ERR_INVALID,
                                  "term %zu: repeated wire %u", t,
                                  ot->wires[j]);
        }
        for (size_t i = 0; i < tc->d; i++) {
            size_t off = 0;
            for (unsigned j = 0; j < tc->k; j++)
                if ((i >> (tc->k - 1 - j)) & 1)
                    off |= (size_t)1 << (jc->n - 1 - ot->wires[j]);
            tc->off[i] = off;
        }
        for (unsigned j = 0; j < tc->k; j++)
            tc->pos[j] = jc->n - 1 - ot->wires[j];
        for (unsigned j = 1; j < tc->k; j++) /* insertion sort */
            for (unsigned i = j; i > 0 && tc->pos[i - 1] > tc->pos[i]; i--) {
                unsigned x = tc->pos[i];
                tc->pos[i] = tc->pos[i - 1];
                tc->pos[i - 1] = x;
            }
        tc->mat = ot->matrix;
        tc->h = job->obs_mats + ot->matrix;
        tc->rho_at = jc->rho_len;
        jc->rho_len += tc->d * tc->d;
        if (tc->d > jc->d_max)
            jc->d_max = tc->d;
        /* Hermitian, finite */
        double scale = 0, dev = 0;
        for (size_t i = 0; i < tc->d * tc->d; i++) {
            if (!isfinite(creal(tc->h[i])) || !isfinite(cimag(tc->h[i])))
                return sv_err(jc, QD_ERR_NUMERIC,
                              "term %zu: matrix entry %zu is not finite", t, i);
            double a = cabs(tc->h[i]);
            if (a > scale)
                scale = a;
        }
        for (size_t i = 0; i < tc->d; i++)
            for (size_t j = 0; j < tc->d; j++) {
                double e = cabs(tc->h[i * tc->d + j] - conj(tc->h[j * tc->d + i]));
                if (e > dev)
                    dev = e;
            }
        if (dev > 1e-10 * (scale > 1 ? scale : 1))
            return sv_err(jc, QD_ERR_INVALID,
                          "term %zu: matrix is not Hermitian (max |H - "
                          "H^dagger| = %.3g)", t, dev);
        if (jc->shots > 0) {
            tc->eval = malloc(tc->d * sizeof *tc->eval);
            tc->evec = malloc(tc->d * tc->d * sizeof *tc->evec);
            cplx *a = malloc(tc->d * tc->d * sizeof *a);
            if (!tc->eval || !tc->evec || !a) {
                free(a);
                return sv_err(jc, QD_ERR_NOMEM, "out of memory");
            }
            /* Hermitian part, so tiny asymmetries do not bias sampling */
            for (size_t i = 0; i < tc->d; i++)
                for (size_t j = 0; j < tc->d; j++)
                    a[i * tc->d + j] = 0.5 * (tc->h[i * tc->d + j] +
                                              conj(tc->h[j * tc->d + i]));
            herm_eig(a, tc->d, tc->eval, tc->evec);
            free(a);
            /* check H v = lambda v */
            double res = 0;
            for (size_t m = 0; m < tc->d; m++)
                for (size_t i = 0; i < tc->d; i++) {
                    cplx y = 0;
                    for (size_t j = 0; j < tc->d; j++)
                        y += tc->h[i * tc->d + j] * tc->evec[j * tc->d + m];
                    double e = cabs(y - tc->eval[m] * tc->evec[i * tc->d + m]);
                    if (e > res)
                        res = e;
                }
            if (res > 1e-9 * (scale > 1 ? scale : 1))
                return sv_err(jc, QD_ERR_NUMERIC,
                              "term %zu: eigen-decomposition did not converge "
                              "(residual %.3g)", t, res);
        }
    }
    if (jc->d_max == 0)
        jc->d_max = 1;
    if (jc->shots > 0) {
        qd_rng *r = S->host->rng(S->host);
        jc->shot_seed = ((uint64_t)qd_rng_u32(r) << 32) | qd_rng_u32(r);
    }
    jc->nthreads = omp_get_max_threads();
    if (jc->nthreads < 1)
        jc->nthreads = 1;

    /* Route. The dense route needs one unitary for the whole batch: no
     * gate may read an input. auto: dense when the batch is large enough
     * that one U (4^n entries) beats B gate-by-gate runs (see
     * docs/performance.md, "Simulator"). */
    int dense_ok = !jc->reads_inputs && jc->n <= SV_DENSE_MAX_WIRES;
    if (S->route == ROUTE_DENSE) {
        if (!dense_ok)
            return sv_err(jc, QD_ERR_UNSUPPORTED,
                          "method dense needs a circuit whose gates read no "
                          "inputs (only a StatePrep may) and at most %u "
                          "wires; use method: gates or auto",
                          SV_DENSE_MAX_WIRES);
        jc->dense = 1;
    } else if (S->route == ROUTE_AUTO) {
        jc->dense = dense_ok && jc->n <= 8 && job->batch * 8 >= jc->dim;
    }
    /* Batch-parallel unless one sample is big enough to split its gates. */
    jc->bpar = jc->nthreads > 1 && job->batch > 1 &&
               (jc->n <= 12 || job->batch >= (size_t)(4 * jc->nthreads)) &&
               jc->n <= 20;
    return QD_OK;
}

static void worker_free(worker *w)
{
    free(w->psi);
    free(w->aux);
    free(w->rho);
    free(w->racc);
    free(w->e);
    free(w->e2);
    memset(w, 0, sizeof *w);
}

static int workers_alloc(const jctx *jc, int n_states, worker **out, int *nw)
{
    int n = jc->bpar ? jc->nthreads : 1;
    worker *ws = calloc((size_t)n, sizeof *ws);
    if (!ws)
        return QD_ERR_NOMEM;
    size_t dm2 = jc->d_max * jc->d_max;
    for (int i = 0; i < n; i++) {
        worker *w = &ws[i];
        w->psi = n_states > 0 ? malloc(jc->dim * sizeof(cplx)) : NULL;
        w->aux = n_states > 1 ? malloc(jc->dim * sizeof(cplx)) : NULL;
        w->rho = malloc(dm2 * sizeof(cplx));
        w->racc = malloc(2 * dm2 * sizeof(double));
        w->e = malloc((jc->n_out + 1) * sizeof(double));
        w->e2 = malloc((jc->n_out + 1) * sizeof(double));
        if ((n_states > 0 && !w->psi) || (n_states > 1 && !w->aux) ||
            !w->rho || !w->racc || !w->e ||
            !w->e2) {
            for (int j = 0; j <= i; j++)
                worker_free(&ws[j]);
            free(ws);
            return QD_ERR_NOMEM;
        }
    }
    *out = ws;
    *nw = n;
    return QD_OK;
}

static void workers_free(worker *ws, int n)
{
    if (!ws)
        return;
    for (int i = 0; i < n; i++)
        worker_free(&ws[i]);
    free(ws);
}

/* ------------------------------------------------------------------------
 * Per-sample building blocks
 * ---------------------------------------------------------------------- */

static const double *sample_inputs(const jctx *jc, size_t b)
{
    return jc->n_in ? jc->job->inputs + b * jc->n_in : NULL;
}

static void init_state(const jctx *jc, size_t b, cplx *psi)
{
    if (jc->prep) {
        const double *a = sample_inputs(jc, b) + jc->prep_off;
        for (size_t i = 0; i < jc->dim; i++)
            psi[i] = a[i];
    } else {
        memset(psi, 0, jc->dim * sizeof *psi);
        psi[0] = 1;
    }
}

static void op_theta(const jctx *jc, size_t k, const double *x, shift sh,
                     double *theta)
{
    const qd_op *op = &jc->c->ops[k];
    qd_op_angles(op, jc->job->weights, x, theta);
    if (sh.op == k)
        theta[sh.comp] += sh.delta;
}

/* Apply ops [from, to) to rows s. */
static void run_ops(const jctx *jc, size_t from, size_t to, const double *x,
                    shift sh, cplx *s, size_t W, int par)
{
    double theta[QD_OP_MAX_ANGLES];
    for (size_t k = from; k < to; k++) {
        const qd_op *op = &jc->c->ops[k];
        if (!gate_has_matrix(op->gate))
            continue;
        op_theta(jc, k, x, sh, theta);
        apply_gate(jc->c, op, theta, s, jc->n, W, 0, par);
    }
}

static kern term_kern(const jctx *jc, const term_ctx *tc)
{
    (void)jc;
    kern K = {0};
    K.W = 1;
    K.off = tc->off;
    K.pos = tc->pos;
    K.kw = tc->k;
    K.d = tc->d;
    K.h = tc->h;
    return K;
}

/* Reduced density matrix of psi on term t, into rho (d x d). */
static int term_rho(const jctx *jc, const term_ctx *tc, const cplx *psi,
                    worker *w, int par, cplx *rho)
{
    kern K = term_kern(jc, tc);
    K.x = psi;
    size_t n2 = 2 * tc->d * tc->d;
    memset(w->racc, 0, n2 * sizeof *w->racc);
    size_t rest = jc->dim >> tc->k;
    int rc = par_reduce(rho_range, &K, rest, jc->dim * tc->d, par, n2, w->racc);
    if (rc)
        return rc;
    for (size_t i = 0; i < tc->d * tc->d; i++)
        rho[i] = CMPLX(w->racc[2 * i], w->racc[2 * i + 1]);
    return QD_OK;
}

/* Sample the term's eigenvalues with the Born probabilities of rho. */
static double sample_term(const term_ctx *tc, const cplx *rho, long long shots,
                          qd_rng *rng)
{
    size_t d = tc->d;
    double p[64], tr = 0;
    for (size_t m = 0; m < d; m++) {
        cplx s = 0; /* v_m^dagger rho v_m */
        for (size_t i = 0; i < d; i++) {
            cplx y = 0;
            for (size_t j = 0; j < d; j++)
                y += rho[i * d + j] * tc->evec[j * d + m];
            s += conj(tc->evec[i * d + m]) * y;
        }
        p[m] = creal(s) > 0 ? creal(s) : 0;
        tr += p[m];
    }
    if (tr <= 0)
        return 0;
    double cum[64], acc = 0;
    for (size_t m = 0; m < d; m++) {
        acc += p[m] / tr;
        cum[m] = acc;
    }
    double sum = 0;
    for (long long s = 0; s < shots; s++) {
        double u = qd_rng_uniform(rng);
        size_t m = 0;
        while (m + 1 < d && u >= cum[m])
            m++;
        sum += tc->eval[m];
    }
    /* scaled by Tr(rho) so that the estimate is unbiased for Tr(rho H) even
     * when the prepared state is not normalised */
    return tr * sum / (double)shots;
}

/* Expectations of all outputs for state psi into e[n_out]; optionally
 * store the exact rho of every term at rho_out + rho_at. */
static int measure(const jctx *jc, const cplx *psi, worker *w, int par,
                   qd_rng *rng, double *e, cplx *rho_out)
{
    memset(e, 0, jc->n_out * sizeof *e);
    for (size_t t = 0; t < jc->n_terms; t++) {
        const term_ctx *tc = &jc->terms[t];
        int rc = term_rho(jc, tc, psi, w, par, w->rho);
        if (rc)
            return rc;
        if (rho_out)
            memcpy(rho_out + tc->rho_at, w->rho,
                   tc->d * tc->d * sizeof *w->rho);
        double v;
        if (rng && jc->shots > 0) {
            v = sample_term(tc, w->rho, jc->shots, rng);
        } else {
            v = 0; /* Re Tr(rho H) = Re sum_ij rho_ij H_ji */
            for (size_t i = 0; i < tc->d; i++)
                for (size_t j = 0; j < tc->d; j++)
                    v += creal(cmul(w->rho[i * tc->d + j], tc->h[j * tc->d + i]));
        }
        e[tc->out] += v;
    }
    return QD_OK;
}

/* lam = sum_t g[out_t] (H_t (x) I) psi */
static void costate(const jctx *jc, const cplx *psi, const double *g, cplx *lam,
                    int par)
{
    memset(lam, 0, jc->dim * sizeof *lam);
    for (size_t t = 0; t < jc->n_terms; t++) {
        const term_ctx *tc = &jc->terms[t];
        double coef = g[tc->out];
        if (coef == 0)
            continue;
        kern K = term_kern(jc, tc);
        K.x = psi;
        K.s = lam;
        K.coef = coef;
        par_run(ta_range, &K, jc->dim >> tc->k, jc->dim * tc->d, par);
    }
}

static void sample_rng(const jctx *jc, size_t b, qd_rng *r)
{
    qd_rng_seed(r, jc->shot_seed, (uint64_t)b);
}

/* Which angles of op k need a gradient. Returns the count. */
static int needed_angles(const jctx *jc, size_t k, int want_w, int want_x,
                         int need[QD_OP_MAX_ANGLES])
{
    const qd_op *op = &jc->c->ops[k];
    int cnt = 0;
    for (uint32_t a = 0; a < QD_OP_MAX_ANGLES; a++) {
        need[a] = 0;
        if (a >= op->n_angles || op->angle[a].scale == 0.0)
            continue;
        if ((op->angle[a].src == QD_SRC_WEIGHT && want_w) ||
            (op->angle[a].src == QD_SRC_INPUT && want_x)) {
            need[a] = 1;
            cnt++;
        }
    }
    return cnt;
}

static void add_angle_grad(const qd_angle *an, double g, double *gw, double *gx)
{
    if (an->src == QD_SRC_WEIGHT)
        gw[an->index] += an->scale * g;
    else if (an->src == QD_SRC_INPUT)
        gx[an->index] += an->scale * g;
}

/* Shift rules (see plugin docs): two-term for single-qubit rotations
 * (eigenvalues of the generator +-1/2), four-term for the controlled ones
 * (generator eigenvalues 0, +-1/2). */
typedef struct rule {
    int n;
    double shift[4], coef[4];
} rule;

static rule shift_rule(const sv *S, uint32_t gate)
{
    rule r;
    if (S->diff == DIFF_FD) {
        double h = S->fd_step;
        r.n = 2;
        r.shift[0] = h;
        r.coef[0] = 0.5 / h;
        r.shift[1] = -h;
        r.coef[1] = -0.5 / h;
        return r;
    }
    const double hp = 1.57079632679489661923; /* pi / 2 */
    if (gate == QD_GATE_CRX || gate == QD_GATE_CRY || gate == QD_GATE_CRZ) {
        const double cp = (sqrt(2.0) + 1) / (4 * sqrt(2.0));
        const double cm = (sqrt(2.0) - 1) / (4 * sqrt(2.0));
        r.n = 4;
        r.shift[0] = hp;      r.coef[0] = cp;
        r.shift[1] = -hp;     r.coef[1] = -cp;
        r.shift[2] = 3 * hp;  r.coef[2] = -cm;
        r.shift[3] = -3 * hp; r.coef[3] = cm;
    } else {
        r.n = 2;
        r.shift[0] = hp;  r.coef[0] = 0.5;
        r.shift[1] = -hp; r.coef[1] = -0.5;
    }
    return r;
}

static double dot_out(const jctx *jc, const double *g, const double *e)
{
    double s = 0;
    for (size_t o = 0; o < jc->n_out; o++)
        s += g[o] * e[o];
    return s;
}

/* ------------------------------------------------------------------------
 * Gates route
 * ---------------------------------------------------------------------- */

/* Forward of one sample into e (n_out). */
static int gates_forward_sample(const jctx *jc, size_t b, worker *w, int par,
                                double *e)
{
    const double *x = sample_inputs(jc, b);
    init_state(jc, b, w->psi);
    run_ops(jc, jc->first, jc->c->n_ops, x, no_shift, w->psi, 1, par);
    qd_rng r;
    if (jc->shots > 0)
        sample_rng(jc, b, &r);
    return measure(jc, w->psi, w, par, jc->shots > 0 ? &r : NULL, e, NULL);
}

/* Adjoint gradient of one sample. gw_b: n_w partials (or NULL), gx_b: row of
 * g_inputs (or NULL), rho_b: per-term rho block (or NULL). */
static int adjoint_sample(const jctx *jc, size_t b, const double *g, worker *w,
                          int par, double *gw_b, double *gx_b, cplx *rho_b)
{
    const double *x = sample_inputs(jc, b);
    cplx *psi = w->psi, *lam = w->aux;
    int want_w = gw_b != NULL, want_x = gx_b != NULL;
    init_state(jc, b, psi);
    run_ops(jc, jc->first, jc->c->n_ops, x, no_shift, psi, 1, par);
    if (rho_b)
        for (size_t t = 0; t < jc->n_terms; t++) {
            int rc = term_rho(jc, &jc->terms[t], psi, w, par,
                              rho_b + jc->terms[t].rho_at);
            if (rc)
                return rc;
        }
    if (!want_w && !want_x)
        return QD_OK;
    costate(jc, psi, g, lam, par);
    /* earliest op that still needs the sweep */
    size_t stop = jc->c->n_ops;
    int need[QD_OP_MAX_ANGLES];
    if (want_x && jc->prep)
        stop = jc->first;
    else
        for (size_t k = jc->first; k < jc->c->n_ops; k++)
            if (needed_angles(jc, k, want_w, want_x, need)) {
                stop = k;
                break;
            }
    double theta[QD_OP_MAX_ANGLES], grad[QD_OP_MAX_ANGLES];
    for (size_t k = jc->c->n_ops; k-- > stop;) {
        const qd_op *op = &jc->c->ops[k];
        if (!gate_has_matrix(op->gate))
            continue;
        op_theta(jc, k, x, no_shift, theta);
        if (needed_angles(jc, k, want_w, want_x, need)) {
            int rc = sweep_gate(jc->c, op, theta, psi, lam, jc->n, 1, par, grad);
            if (rc)
                return rc;
            for (uint32_t a = 0; a < op->n_angles; a++)
                if (need[a])
                    add_angle_grad(&op->angle[a], grad[a], gw_b, gx_b);
        } else {
            apply_gate(jc->c, op, theta, psi, jc->n, 1, 1, par);
            apply_gate(jc->c, op, theta, lam, jc->n, 1, 1, par);
        }
    }
    if (want_x && jc->prep)
        for (size_t i = 0; i < jc->dim; i++)
            gx_b[jc->prep_off + i] += 2.0 * creal(lam[i]);
    return QD_OK;
}

/* Shift-rule (parameter-shift or finite-difference) gradient of one sample.
 * Returns the executions it ran in *execs. */
static int shift_sample(const jctx *jc, size_t b, const double *g, worker *w,
                        int par, double *gw_b, double *gx_b, cplx *rho_b,
                        uint64_t *execs)
{
    const sv *S = jc->S;
    const double *x = sample_inputs(jc, b);
    cplx *psi = w->psi, *tmp = w->aux;
    int want_w = gw_b != NULL, want_x = gx_b != NULL;
    qd_rng r;
    qd_rng *rp = NULL;
    if (jc->shots > 0) {
        sample_rng(jc, b, &r);
        rp = &r;
    }
    uint64_t ex = 0;
    init_state(jc, b, psi);
    double theta[QD_OP_MAX_ANGLES];
    int need[QD_OP_MAX_ANGLES];
    for (size_t k = jc->first; k < jc->c->n_ops; k++) {
        const qd_op *op = &jc->c->ops[k];
        if (!gate_has_matrix(op->gate))
            continue;
        if (needed_angles(jc, k, want_w, want_x, need)) {
            rule ru = shift_rule(S, op->gate);
            for (uint32_t a = 0; a < op->n_angles; a++) {
                if (!need[a])
                    continue;
                double d = 0;
                for (int s = 0; s < ru.n; s++) {
                    shift sh = {k, a, ru.shift[s]};
                    memcpy(tmp, psi, jc->dim * sizeof *psi);
                    run_ops(jc, k, jc->c->n_ops, x, sh, tmp, 1, par);
                    int rc = measure(jc, tmp, w, par, rp, w->e, NULL);
                    if (rc)
                        return rc;
                    d += ru.coef[s] * dot_out(jc, g, w->e);
                    ex++;
                }
                add_angle_grad(&op->angle[a], d, gw_b, gx_b);
            }
        }
        op_theta(jc, k, x, no_shift, theta);
        apply_gate(jc->c, op, theta, psi, jc->n, 1, 0, par);
    }
    /* psi is the final state now */
    if (rho_b)
        for (size_t t = 0; t < jc->n_terms; t++) {
            int rc = term_rho(jc, &jc->terms[t], psi, w, par,
                              rho_b + jc->terms[t].rho_at);
            if (rc)
                return rc;
        }
    if (want_x && jc->prep) {
        double *ga = gx_b + jc->prep_off;
        if (S->diff == DIFF_FD) {
            /* central differences of the raw amplitudes, really run */
            const double h = S->fd_step;
            const double *a = x + jc->prep_off;
            for (size_t i = 0; i < jc->dim; i++) {
                double d = 0;
                for (int s = 0; s < 2; s++) {
                    for (size_t j = 0; j < jc->dim; j++)
                        tmp[j] = a[j];
                    tmp[i] += s == 0 ? h : -h;
                    run_ops(jc, jc->first, jc->c->n_ops, x, no_shift, tmp, 1,
                            par);
                    int rc = measure(jc, tmp, w, par, rp, w->e, NULL);
                    if (rc)
                        return rc;
                    d += (s == 0 ? 0.5 : -0.5) / h * dot_out(jc, g, w->e);
                    ex++;
                }
                ga[i] += d;
            }
        } else {
            /* No shift rule exists for amplitudes: computed exactly by one
             * adjoint sweep (2 Re lambda_0); the caller charges the 2 * 2^n
             * executions a hardware estimate would need. */
            cplx *lam = tmp;
            costate(jc, psi, g, lam, par);
            for (size_t k = jc->c->n_ops; k-- > jc->first;) {
                const qd_op *op = &jc->c->ops[k];
                if (!gate_has_matrix(op->gate))
                    continue;
                op_theta(jc, k, x, no_shift, theta);
                apply_gate(jc->c, op, theta, lam, jc->n, 1, 1, par);
            }
            for (size_t i = 0; i < jc->dim; i++)
                ga[i] += 2.0 * creal(lam[i]);
        }
    }
    *execs = ex;
    return QD_OK;
}

/* ------------------------------------------------------------------------
 * Dense route: U for the whole batch.
 * ---------------------------------------------------------------------- */

typedef struct dense {
    size_t D;
    cplx *U;            /* D x D, row i = amplitude i of the column states */
    double *Ur, *Ui;    /* real and imaginary parts */
    double *Pr, *Pi;    /* block x D: prepared-and-evolved states (rows) */
    double *A;          /* block x D prepared states when there is no prep */
} dense;

static void dense_free(dense *dn)
{
    free(dn->U);
    free(dn->Ur);
    free(dn->Ui);
    free(dn->Pr);
    free(dn->Pi);
    free(dn->A);
    memset(dn, 0, sizeof *dn);
}

static int dense_alloc(const jctx *jc, dense *dn)
{
    memset(dn, 0, sizeof *dn);
    size_t D = jc->dim;
    size_t blk = jc->job->batch < SV_DENSE_BLOCK ? jc->job->batch : SV_DENSE_BLOCK;
    if (blk == 0)
        blk = 1;
    dn->D = D;
    dn->U = malloc(D * D * sizeof *dn->U);
    dn->Ur = malloc(D * D * sizeof *dn->Ur);
    dn->Ui = malloc(D * D * sizeof *dn->Ui);
    dn->Pr = malloc(blk * D * sizeof *dn->Pr);
    dn->Pi = malloc(blk * D * sizeof *dn->Pi);
    if (!jc->prep)
        dn->A = calloc(blk * D, sizeof *dn->A);
    if (!dn->U || !dn->Ur || !dn->Ui || !dn->Pr || !dn->Pi ||
        (!jc->prep && !dn->A)) {
        dense_free(dn);
        return QD_ERR_NOMEM;
    }
    if (!jc->prep)
        for (size_t b = 0; b < blk; b++)
            dn->A[b * D] = 1.0;
    return QD_OK;
}

/* U = G_K ... G_first (with an optional angle shift). */
static void dense_build(const jctx *jc, dense *dn, shift sh)
{
    size_t D = dn->D;
    memset(dn->U, 0, D * D * sizeof *dn->U);
    for (size_t i = 0; i < D; i++)
        dn->U[i * D + i] = 1;
    run_ops(jc, jc->first, jc->c->n_ops, NULL, sh, dn->U, D, 1);
    for (size_t i = 0; i < D * D; i++) {
        dn->Ur[i] = creal(dn->U[i]);
        dn->Ui[i] = cimag(dn->U[i]);
    }
}

/* Prepared states of samples [b0, b0 + nb) as rows: pointer and stride. */
static const double *dense_A(const jctx *jc, const dense *dn, size_t b0,
                             size_t *lda)
{
    if (jc->prep) {
        *lda = jc->n_in;
        return jc->job->inputs + b0 * jc->n_in + jc->prep_off;
    }
    *lda = dn->D;
    return dn->A;
}

/* Rows Pr + i Pi = A U^T for samples [b0, b0 + nb): two real products. */
static void dense_states(const jctx *jc, dense *dn, size_t b0, size_t nb)
{
    size_t D = dn->D, lda;
    const double *A = dense_A(jc, dn, b0, &lda);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nb, (int)D,
                (int)D, 1.0, A, (int)lda, dn->Ur, (int)D, 0.0, dn->Pr, (int)D);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nb, (int)D,
                (int)D, 1.0, A, (int)lda, dn->Ui, (int)D, 0.0, dn->Pi, (int)D);
}

static void dense_row(const dense *dn, size_t r, cplx *psi)
{
    const double *pr = dn->Pr + r * dn->D, *pi = dn->Pi + r * dn->D;
    for (size_t i = 0; i < dn->D; i++)
        psi[i] = CMPLX(pr[i], pi[i]);
}

/* Parallel loop over samples of a block with first-error propagation. */
#define SV_BATCH_LOOP(jc, nb, ws, BODY)                                      \
    do {                                                                     \
        int err_ = QD_OK;                                                    \
        const int bpar_ = (jc)->bpar;                                        \
        _Pragma("omp parallel for schedule(dynamic, 4) if (bpar_)")          \
        for (size_t r_ = 0; r_ < (nb); r_++) {                               \
            int seen_;                                                       \
            _Pragma("omp atomic read") seen_ = err_;                         \
            if (seen_)                                                       \
                continue;                                                    \
            worker *w_ = &(ws)[bpar_ ? omp_get_thread_num() : 0];            \
            int rc_ = QD_OK;                                                 \
            BODY;                                                            \
            if (rc_) {                                                       \
                _Pragma("omp atomic write") err_ = rc_;                      \
            }                                                                \
        }                                                                    \
        if (err_)                                                            \
            rc = err_;                                                       \
    } while (0)

/* expect rows [b0, b0+nb) from the dense states of the block. */
static int dense_measure_block(const jctx *jc, const dense *dn, worker *ws,
                               size_t b0, size_t nb, double *expect)
{
    int rc = QD_OK;
    SV_BATCH_LOOP(jc, nb, ws, {
        size_t b = b0 + r_;
        dense_row(dn, r_, w_->psi);
        qd_rng rr;
        if (jc->shots > 0)
            sample_rng(jc, b, &rr);
        rc_ = measure(jc, w_->psi, w_, 0, jc->shots > 0 ? &rr : NULL,
                      expect + b * jc->n_out, NULL);
    });
    return rc;
}

/* ------------------------------------------------------------------------
 * Forward
 * ---------------------------------------------------------------------- */

static void charge(sv *S, const jctx *jc, uint64_t execs)
{
    S->stats.executions += execs;
    if (jc->shots > 0)
        S->stats.shots += execs * (uint64_t)jc->shots * jc->n_terms;
}

static int check_finite_out(const jctx *jc, const double *v, size_t n,
                            const char *what)
{
    size_t bad;
    if (!finite_vec(v, n, &bad))
        return sv_err(jc, QD_ERR_NUMERIC, "%s %zu is not finite", what, bad);
    return QD_OK;
}

static int sv_forward(void *self, const qd_sim_job *job, double *expect)
{
    sv *S = self;
    jctx jc;
    int rc = jctx_init(&jc, S, job, 0);
    if (rc) {
        jctx_free(&jc);
        return rc;
    }
    size_t B = job->batch;
    if (B > 0 && !expect) {
        jctx_free(&jc);
        return sv_err(&jc, QD_ERR_INVALID, "forward: expect is NULL");
    }
    worker *ws = NULL;
    int nw = 0;
    dense dn = {0};
    if (B == 0)
        goto done;
    rc = workers_alloc(&jc, 1, &ws, &nw);
    if (rc) {
        rc = sv_err(&jc, rc, "out of memory for %d state vector(s) of 2^%u "
                             "amplitudes", jc.bpar ? jc.nthreads : 1, jc.n);
        goto done;
    }
    if (jc.dense) {
        rc = dense_alloc(&jc, &dn);
        if (rc) {
            rc = sv_err(&jc, rc, "out of memory for the dense route");
            goto done;
        }
        dense_build(&jc, &dn, no_shift);
        for (size_t b0 = 0; b0 < B && !rc; b0 += SV_DENSE_BLOCK) {
            size_t nb = B - b0 < SV_DENSE_BLOCK ? B - b0 : SV_DENSE_BLOCK;
            dense_states(&jc, &dn, b0, nb);
            rc = dense_measure_block(&jc, &dn, ws, b0, nb, expect);
        }
    } else {
        int par = !jc.bpar;
        SV_BATCH_LOOP(&jc, B, ws, {
            rc_ = gates_forward_sample(&jc, r_, w_, par,
                                       expect + r_ * jc.n_out);
        });
    }
    if (rc) {
        rc = sv_err(&jc, rc, "forward failed: %s", qd_status_name(rc));
        goto done;
    }
    charge(S, &jc, B);
    rc = check_finite_out(&jc, expect, B * jc.n_out, "expectation");
done:
    dense_free(&dn);
    workers_free(ws, nw);
    jctx_free(&jc);
    return rc;
}

/* ------------------------------------------------------------------------
 * Backward
 * ---------------------------------------------------------------------- */

/* g_mats[term matrix] += sum over the block of g[b][out_t] rho_b,t, in
 * sample order. */
static void add_gmats(const jctx *jc, const double *g, size_t b0, size_t nb,
                      const cplx *rhobuf, cplx *gm)
{
    for (size_t r = 0; r < nb; r++) {
        const double *gb = g + (b0 + r) * jc->n_out;
        const cplx *rb = rhobuf + r * jc->rho_len;
        for (size_t t = 0; t < jc->n_terms; t++) {
            const term_ctx *tc = &jc->terms[t];
            double c = gb[tc->out];
            if (c == 0)
                continue;
            for (size_t i = 0; i < tc->d * tc->d; i++)
                gm[tc->mat + i] += c * rb[tc->rho_at + i];
        }
    }
}

/* Executions a shift-rule method charges per sample for what it does not
 * run: amplitude gradients under parameter-shift (2 per amplitude, as
 * central differences on hardware would), and the reduced density matrices
 * (3^k local Pauli settings per term, as tomography would). */
static uint64_t shift_extra_execs(const jctx *jc, int want_x, int want_m)
{
    uint64_t e = 0;
    if (want_x && jc->prep && jc->S->diff == DIFF_PSHIFT)
        e += 2 * (uint64_t)jc->dim;
    if (want_m)
        for (size_t t = 0; t < jc->n_terms; t++) {
            uint64_t p = 1;
            for (unsigned j = 0; j < jc->terms[t].k; j++)
                p *= 3;
            e += p;
        }
    return e;
}

static int gates_backward(const jctx *jc, const double *g, double *gw,
                          double *gx, cplx *gm, uint64_t *execs)
{
    sv *S = jc->S;
    size_t B = jc->job->batch;
    int want_w = gw && jc->n_w, want_x = gx && jc->n_in, want_m = gm && jc->rho_len;
    worker *ws = NULL;
    int nw = 0;
    int rc = workers_alloc(jc, 2, &ws, &nw);
    if (rc)
        return sv_err(jc, rc, "out of memory for %d x 2 state vectors of 2^%u "
                              "amplitudes", jc->bpar ? jc->nthreads : 1, jc->n);
    size_t blk = B < SV_BLOCK ? B : SV_BLOCK;
    double *gwbuf = want_w ? calloc(blk * jc->n_w, sizeof *gwbuf) : NULL;
    cplx *rhobuf = want_m ? malloc(blk * jc->rho_len * sizeof *rhobuf) : NULL;
    uint64_t *ex = calloc(blk, sizeof *ex);
    if ((want_w && !gwbuf) || (want_m && !rhobuf) || !ex) {
        rc = sv_err(jc, QD_ERR_NOMEM, "out of memory");
        goto out;
    }
    int par = !jc->bpar;
    uint64_t total = 0;
    for (size_t b0 = 0; b0 < B && !rc; b0 += blk) {
        size_t nb = B - b0 < blk ? B - b0 : blk;
        if (want_w)
            memset(gwbuf, 0, nb * jc->n_w * sizeof *gwbuf);
        SV_BATCH_LOOP(jc, nb, ws, {
            size_t b = b0 + r_;
            double *gwb = want_w ? gwbuf + r_ * jc->n_w : NULL;
            double *gxb = want_x ? gx + b * jc->n_in : NULL;
            cplx *rb = want_m ? rhobuf + r_ * jc->rho_len : NULL;
            const double *gb = g + b * jc->n_out;
            if (S->diff == DIFF_ADJOINT) {
                rc_ = adjoint_sample(jc, b, gb, w_, par, gwb, gxb, rb);
                ex[r_] = 1;
            } else {
                rc_ = shift_sample(jc, b, gb, w_, par, gwb, gxb, rb, &ex[r_]);
            }
        });
        if (rc)
            break;
        for (size_t r = 0; r < nb; r++) {
            if (want_w)
                for (size_t i = 0; i < jc->n_w; i++)
                    gw[i] += gwbuf[r * jc->n_w + i];
            total += ex[r];
        }
        if (want_m)
            add_gmats(jc, g, b0, nb, rhobuf, gm);
    }
    *execs = total;
out:
    free(gwbuf);
    free(rhobuf);
    free(ex);
    workers_free(ws, nw);
    return rc;
}

static int dense_backward(const jctx *jc, const double *g, double *gw,
                          double *gx, cplx *gm, uint64_t *execs)
{
    sv *S = jc->S;
    size_t B = jc->job->batch, D = jc->dim;
    int want_w = gw && jc->n_w, want_x = gx && jc->n_in && jc->prep,
        want_m = gm && jc->rho_len;
    int adjoint = S->diff == DIFF_ADJOINT;
    int need_phi = (want_w && adjoint) || (want_x && S->diff != DIFF_FD);
    size_t blk = B < SV_DENSE_BLOCK ? B : SV_DENSE_BLOCK;
    worker *ws = NULL;
    int nw = 0;
    dense dn = {0};
    double *Phr = NULL, *Phi = NULL, *Xr = NULL, *Xi = NULL, *eb = NULL;
    cplx *rhobuf = NULL, *Xc = NULL;
    uint64_t total = 0;
    int rc = workers_alloc(jc, 2, &ws, &nw);
    if (!rc)
        rc = dense_alloc(jc, &dn);
    if (rc)
        return sv_err(jc, rc, "out of memory for the dense route");
    if (need_phi) {
        Phr = malloc(blk * D * sizeof *Phr);
        Phi = malloc(blk * D * sizeof *Phi);
    }
    if (want_w && adjoint) {
        Xr = calloc(D * D, sizeof *Xr);
        Xi = calloc(D * D, sizeof *Xi);
        Xc = malloc(D * D * sizeof *Xc);
    }
    if (want_m)
        rhobuf = malloc(blk * jc->rho_len * sizeof *rhobuf);
    if (!adjoint)
        eb = malloc(blk * (jc->n_out + 1) * sizeof *eb);
    if ((need_phi && (!Phr || !Phi)) || (want_w && adjoint && (!Xr || !Xi || !Xc)) ||
        (want_m && !rhobuf) || (!adjoint && !eb)) {
        rc = sv_err(jc, QD_ERR_NOMEM, "out of memory for the dense route");
        goto out;
    }

    /* Pass 1 over the batch with the unshifted U: density matrices,
     * co-states phi_b, amplitude gradients and X = sum_b phi_b a_b^T. */
    dense_build(jc, &dn, no_shift);
    int pass1 = want_m || need_phi || (want_x && S->diff == DIFF_FD);
    for (size_t b0 = 0; pass1 && b0 < B && !rc; b0 += blk) {
        size_t nb = B - b0 < blk ? B - b0 : blk;
        dense_states(jc, &dn, b0, nb);
        SV_BATCH_LOOP(jc, nb, ws, {
            size_t b = b0 + r_;
            const double *gb = g + b * jc->n_out;
            dense_row(&dn, r_, w_->psi);
            if (want_m)
                for (size_t t = 0; t < jc->n_terms && !rc_; t++)
                    rc_ = term_rho(jc, &jc->terms[t], w_->psi, w_, 0,
                                   rhobuf + r_ * jc->rho_len +
                                       jc->terms[t].rho_at);
            if (need_phi) {
                costate(jc, w_->psi, gb, w_->aux, 0);
                for (size_t i = 0; i < D; i++) {
                    Phr[r_ * D + i] = creal(w_->aux[i]);
                    Phi[r_ * D + i] = cimag(w_->aux[i]);
                }
            }
            if (want_x && S->diff == DIFF_FD && !rc_) {
                /* psi(a +- h e_i) = psi +- h U e_i: the perturbed runs */
                const double h = S->fd_step;
                qd_rng rr;
                if (jc->shots > 0)
                    sample_rng(jc, b, &rr);
                double *ga = gx + b * jc->n_in + jc->prep_off;
                for (size_t i = 0; i < D && !rc_; i++) {
                    double d = 0;
                    for (int s = 0; s < 2 && !rc_; s++) {
                        double sg = s == 0 ? h : -h;
                        for (size_t j = 0; j < D; j++)
                            w_->aux[j] = w_->psi[j] + sg * dn.U[j * D + i];
                        rc_ = measure(jc, w_->aux, w_, 0,
                                      jc->shots > 0 ? &rr : NULL, w_->e, NULL);
                        d += (s == 0 ? 0.5 : -0.5) / h * dot_out(jc, gb, w_->e);
                    }
                    ga[i] = d;
                }
            }
        });
        if (rc)
            break;
        if (want_m)
            add_gmats(jc, g, b0, nb, rhobuf, gm);
        if (want_x && S->diff != DIFF_FD) {
            /* dL/da = 2 Re(U^dagger phi) = 2 (Phr Ur + Phi Ui) row-wise */
            double *C = gx + b0 * jc->n_in + jc->prep_off;
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nb,
                        (int)D, (int)D, 2.0, Phr, (int)D, dn.Ur, (int)D, 0.0,
                        C, (int)jc->n_in);
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nb,
                        (int)D, (int)D, 2.0, Phi, (int)D, dn.Ui, (int)D, 1.0,
                        C, (int)jc->n_in);
        }
        if (want_w && adjoint) {
            size_t lda;
            const double *A = dense_A(jc, &dn, b0, &lda);
            cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)D,
                        (int)D, (int)nb, 1.0, Phr, (int)D, A, (int)lda, 1.0, Xr,
                        (int)D);
            cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)D,
                        (int)D, (int)nb, 1.0, Phi, (int)D, A, (int)lda, 1.0, Xi,
                        (int)D);
        }
    }
    if (rc)
        goto out;

    if (want_w && adjoint) {
        /* Adjoint sweep on the column states of U with X as co-state:
         * dL/dtheta_k = 2 Re sum_j <X_j^(k)| dG_k |U_j^(k-1)>. */
        for (size_t i = 0; i < D * D; i++)
            Xc[i] = CMPLX(Xr[i], Xi[i]);
        double theta[QD_OP_MAX_ANGLES], grad[QD_OP_MAX_ANGLES];
        int need[QD_OP_MAX_ANGLES];
        int par = D * D >= SV_PAR_MIN_WORK;
        for (size_t k = jc->c->n_ops; k-- > jc->first;) {
            const qd_op *op = &jc->c->ops[k];
            if (!gate_has_matrix(op->gate))
                continue;
            op_theta(jc, k, NULL, no_shift, theta);
            if (needed_angles(jc, k, 1, 0, need)) {
                rc = sweep_gate(jc->c, op, theta, dn.U, Xc, jc->n, D, par, grad);
                if (rc) {
                    rc = sv_err(jc, rc, "out of memory");
                    goto out;
                }
                for (uint32_t a = 0; a < op->n_angles; a++)
                    if (need[a])
                        add_angle_grad(&op->angle[a], grad[a], gw, NULL);
            } else {
                apply_gate(jc->c, op, theta, dn.U, jc->n, D, 1, par);
                apply_gate(jc->c, op, theta, Xc, jc->n, D, 1, par);
            }
        }
    } else if (want_w) {
        /* Shift rules for the weights: one shifted U serves the batch. */
        int need[QD_OP_MAX_ANGLES];
        for (size_t k = jc->first; k < jc->c->n_ops && !rc; k++) {
            const qd_op *op = &jc->c->ops[k];
            if (!gate_has_matrix(op->gate) || !needed_angles(jc, k, 1, 0, need))
                continue;
            rule ru = shift_rule(S, op->gate);
            for (uint32_t a = 0; a < op->n_angles && !rc; a++) {
                if (!need[a])
                    continue;
                double d = 0;
                for (int s = 0; s < ru.n && !rc; s++) {
                    shift sh = {k, a, ru.shift[s]};
                    dense_build(jc, &dn, sh);
                    double tot = 0;
                    for (size_t b0 = 0; b0 < B && !rc; b0 += blk) {
                        size_t nb = B - b0 < blk ? B - b0 : blk;
                        dense_states(jc, &dn, b0, nb);
                        /* sample streams continue per sample: the shot
                         * sequence of sample b is its own */
                        SV_BATCH_LOOP(jc, nb, ws, {
                            size_t b = b0 + r_;
                            dense_row(&dn, r_, w_->psi);
                            qd_rng rr;
                            if (jc->shots > 0)
                                qd_rng_seed(&rr, jc->shot_seed ^
                                                     (0x9e3779b97f4a7c15ull *
                                                      (k * 4 + a + 1) + (uint64_t)s),
                                            (uint64_t)b);
                            rc_ = measure(jc, w_->psi, w_, 0,
                                          jc->shots > 0 ? &rr : NULL, w_->e,
                                          NULL);
                            eb[r_] = dot_out(jc, g + b * jc->n_out, w_->e);
                        });
                        for (size_t r = 0; r < nb; r++)
                            tot += eb[r];
                    }
                    d += ru.coef[s] * tot;
                    total += B;
                }
                add_angle_grad(&op->angle[a], d, gw, NULL);
            }
        }
        if (rc)
            goto out;
    }
    if (adjoint) {
        total = B; /* one backward sweep per sample */
    } else {
        if (want_x && S->diff == DIFF_FD)
            total += B * 2 * (uint64_t)D;
        total += B * shift_extra_execs(jc, want_x, want_m);
    }
    *execs = total;
out:
    free(Phr);
    free(Phi);
    free(Xr);
    free(Xi);
    free(Xc);
    free(rhobuf);
    free(eb);
    dense_free(&dn);
    workers_free(ws, nw);
    return rc;
}

static int sv_backward(void *self, const qd_sim_job *job, const double *g_expect,
                       double *g_weights, double *g_inputs,
                       double complex *g_mats)
{
    sv *S = self;
    jctx jc;
    int rc = jctx_init(&jc, S, job, 1);
    if (rc) {
        jctx_free(&jc);
        return rc;
    }
    size_t B = job->batch;
    if (g_weights)
        memset(g_weights, 0, jc.n_w * sizeof *g_weights);
    if (g_inputs)
        memset(g_inputs, 0, B * jc.n_in * sizeof *g_inputs);
    if (g_mats)
        memset(g_mats, 0, job->obs->matrix_len * sizeof *g_mats);
    if (B == 0 || (!g_weights && !g_inputs && !g_mats))
        goto done;
    if (!g_expect) {
        rc = sv_err(&jc, QD_ERR_INVALID, "backward: g_expect is NULL");
        goto done;
    }
    size_t bad;
    if (!finite_vec(g_expect, B * jc.n_out, &bad)) {
        rc = sv_err(&jc, QD_ERR_NUMERIC,
                    "g_expect[%zu][%zu] is not finite", bad / jc.n_out,
                    bad % jc.n_out);
        goto done;
    }
    uint64_t execs = 0;
    if (jc.dense) {
        rc = dense_backward(&jc, g_expect, g_weights, g_inputs, g_mats, &execs);
    } else {
        rc = gates_backward(&jc, g_expect, g_weights, g_inputs, g_mats, &execs);
        if (!rc && S->diff != DIFF_ADJOINT)
            execs += B * shift_extra_execs(&jc, g_inputs && jc.n_in,
                                           g_mats && jc.rho_len);
    }
    if (rc)
        goto done;
    charge(S, &jc, execs);
    if (g_weights)
        rc = check_finite_out(&jc, g_weights, jc.n_w, "weight gradient");
    if (!rc && g_inputs)
        rc = check_finite_out(&jc, g_inputs, B * jc.n_in, "input gradient");
done:
    jctx_free(&jc);
    return rc;
}

/* ------------------------------------------------------------------------
 * Instance
 * ---------------------------------------------------------------------- */

static int sv_create(const qd_host *h, void **self)
{
    const char *dm = h->get_string(h, "diff_method");
    const char *me = h->get_string(h, "method");
    long long shots = h->get_int(h, "shots");
    double fd = h->get_double(h, "fd_step");
    const qd_node *cfg = h->config;
    int diff;
    if (dm && strcmp(dm, "adjoint") == 0)
        diff = DIFF_ADJOINT;
    else if (dm && strcmp(dm, "parameter_shift") == 0)
        diff = DIFF_PSHIFT;
    else if (dm && strcmp(dm, "finite_diff") == 0)
        diff = DIFF_FD;
    else
        return h->error(h, QD_ERR_INVALID,
                        "diff_method '%s': expected adjoint, parameter_shift "
                        "or finite_diff", dm ? dm : "(null)");
    int route;
    if (!me || strcmp(me, "auto") == 0)
        route = ROUTE_AUTO;
    else if (strcmp(me, "gates") == 0)
        route = ROUTE_GATES;
    else if (strcmp(me, "dense") == 0)
        route = ROUTE_DENSE;
    else
        return h->error(h, QD_ERR_INVALID,
                        "method '%s': expected auto, gates or dense", me);
    if (shots < 0)
        return h->node_error(h, qd_node_get(cfg, "shots"), QD_ERR_INVALID,
                             "shots must be >= 0 (0 = exact expectations), "
                             "got %lld", shots);
    if (diff == DIFF_ADJOINT && shots > 0)
        return h->node_error(h, qd_node_get(cfg, "shots"), QD_ERR_INVALID,
                             "diff_method adjoint needs exact expectations: "
                             "with shots: %lld use diff_method "
                             "parameter_shift or finite_diff (or shots: 0)",
                             shots);
    if (!(fd > 0) || !isfinite(fd))
        return h->node_error(h, qd_node_get(cfg, "fd_step"), QD_ERR_INVALID,
                             "fd_step must be a positive finite number, got %g",
                             fd);
    if (diff == DIFF_FD && shots > 0 && fd < 1e-2)
        h->log(h, QD_LOG_WARN,
               "finite_diff with shots: fd_step %g is far below the shot "
               "noise; gradients will be dominated by noise (try ~0.1)", fd);
    sv *S = calloc(1, sizeof *S);
    if (!S)
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    S->host = h;
    S->diff = diff;
    S->route = route;
    S->shots = shots;
    S->fd_step = fd;
    *self = S;
    return QD_OK;
}

static void sv_destroy(void *self)
{
    free(self);
}

static void sv_stats(void *self, qd_sim_stats *out)
{
    const sv *S = self;
    if (out)
        *out = S->stats;
}

static const qd_param sv_params[] = {
    {"diff_method", QD_PARAM_ENUM, 0, "adjoint", 0, 0,
     "adjoint|parameter_shift|finite_diff", 0, NULL,
     "gradient method; adjoint needs shots: 0"},
    {"shots", QD_PARAM_INT, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "0", 0, 1e12,
     NULL, 0, NULL,
     "shots per measured term and execution; 0 = exact expectations"},
    {"fd_step", QD_PARAM_DOUBLE, 0, "1e-6", 0, 0, NULL, 0, NULL,
     "finite_diff central-difference step (1e-6: truncation ~1e-13, "
     "rounding ~1e-10; use ~0.1 with shots)"},
    {"method", QD_PARAM_ENUM, 0, "auto", 0, 0, "auto|gates|dense", 0, NULL,
     "gates: gate by gate per sample; dense: one 2^n x 2^n unitary for the "
     "batch (gates may not read inputs); auto: dense for n <= 8 and "
     "batch >= 2^n / 8"},
    {NULL, 0, 0, NULL, 0, 0, NULL, 0, NULL, NULL},
};

static const qd_simulator_vt sv_vt = {
    .struct_size = sizeof(qd_simulator_vt),
    .create = sv_create,
    .destroy = sv_destroy,
    .forward = sv_forward,
    .backward = sv_backward,
    .stats = sv_stats,
};

static const qd_plugin_desc sv_desc = QD_PLUGIN_DESC_INIT(
    QD_KIND_SIMULATOR, "statevector", "1.0.0",
    "state-vector simulator: exact or shot expectations; adjoint, "
    "parameter-shift (amplitude inputs: exact, charged 2 per amplitude) or "
    "finite-difference gradients; trainable Hermitians under adjoint",
    sv_params, &sv_vt);

static const qd_plugin_desc *const sv_all[] = {&sv_desc, NULL};

QD_PLUGIN_EXPORT const qd_plugin_desc *const *qd_plugin_entry(void)
{
    return sv_all;
}
