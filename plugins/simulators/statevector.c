/*
 * statevector — state-vector simulator plugin.
 *
 * Forward: expectations of Hermitian terms, exact or sampled with shots
 * (each term in its eigenbasis). Backward: adjoint differentiation
 * (default), parameter-shift or central finite differences, for weights,
 * per-sample inputs (gate angles and state-prep amplitudes) and the
 * observables' matrices (the reduced density matrices, so trainable
 * Hermitians train under adjoint too). Execution counts per method are
 * documented in docs/performance.md ("Simulator").
 *
 * Two routes execute a circuit:
 *   gates  every sample's state is evolved gate by gate: OpenMP over the
 *          batch, or, for large registers, cache-blocked runs of gates over
 *          chunks of the amplitudes;
 *   dense  when no gate reads an input, all samples share one circuit
 *          unitary U: it is built once (2^n x 2^n) and applied to the whole
 *          batch as a matrix product; the adjoint sweep then runs on the 2^n
 *          column states of U with X = sum_b phi_b a_b^T as co-state.
 *
 * Numerics are deterministic for a given thread count and, by construction,
 * independent of it: every reduction is split by a partition that depends
 * only on the register or batch size, and batch sums run over per-sample
 * partials in sample order.
 *
 * Memory: at most three state vectors per worker thread (state, co-state or
 * shifted copy, and the forward's final state kept for the backward of the
 * same job). Scratch buffers live in the instance between calls; an
 * instance is not reentrant.
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
/* Work (amplitudes x block width) below which a gate, a blocked run or a
 * reduction is not split over threads. A parallel region costs a few
 * microseconds on an idle machine but up to a scheduler time slice on a
 * busy one; 2^17 amplitudes (2 MiB) of work keeps that cost small. */
#define SV_PAR_MIN_WORK ((size_t)1 << 17)
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
/* Cache blocking: chunk size (bits) and gates per blocked run. */
#define SV_CHUNK_BITS 14u
#define SV_SEG_MAX 32

enum { DIFF_ADJOINT = 0, DIFF_PSHIFT = 1, DIFF_FD = 2 };
enum { ROUTE_AUTO = 0, ROUTE_GATES = 1, ROUTE_DENSE = 2 };

/* Scratch buffers kept by the instance between calls (grow only), so a
 * training loop does not pay allocation and page faults on every call. */
enum {
    BUF_STATES, BUF_SCRATCH, BUF_WORKERS, BUF_U, BUF_UR, BUF_UI, BUF_PR,
    BUF_PI, BUF_A, BUF_PHR, BUF_PHI, BUF_XR, BUF_XI, BUF_XC, BUF_RHO, BUF_GW,
    BUF_EX, BUF_EB, BUF_FSTATES, BUF_FP_OPS, BUF_FP_MATS, BUF_FP_W,
    BUF_FP_X, BUF_TPART, BUF_RHOALL, BUF_XPART, BUF_PRE, BUF_COUNT_
};

/* What the last forward pass ran, so that the following backward pass of
 * the same job can start from its final states instead of re-simulating:
 * gates route: the states in BUF_FSTATES; dense route: U and the batch's
 * states in BUF_U.. BUF_PI. Exact copies of ops, matrices, weights and
 * inputs are compared, so a changed job is never mistaken for the cached
 * one. */
typedef struct fcache {
    int valid;
    int dense;
    const qd_circuit *c;
    size_t n_ops, n_mats, batch;
    uint32_t n_wires, n_w, n_in;
} fcache;

typedef struct sv {
    const qd_host *host;
    int diff;
    int route;
    long long shots;
    double fd_step;
    qd_sim_stats stats;
    void *buf[BUF_COUNT_];
    size_t buf_len[BUF_COUNT_];
    fcache fc;
} sv;

/* A buffer of at least `bytes` for `slot` (contents undefined), NULL when
 * out of memory. */
static void *sv_buf(sv *S, int slot, size_t bytes)
{
    if (bytes == 0)
        bytes = 16;
    if (S->buf_len[slot] < bytes) {
        free(S->buf[slot]);
        S->buf[slot] = malloc(bytes);
        S->buf_len[slot] = S->buf[slot] ? bytes : 0;
    }
    return S->buf[slot];
}

static void *sv_buf0(sv *S, int slot, size_t bytes)
{
    void *p = sv_buf(S, slot, bytes);
    if (p)
        memset(p, 0, bytes);
    return p;
}

/* ------------------------------------------------------------------------
 * Complex arithmetic. Scalar helpers are written out (C's `*` on complex
 * numbers goes through the NaN-safe libgcc routine unless
 * -fcx-limited-range); the kernels use two-lane vectors, one complex
 * number per vector: m * x = re(m) x + (-im(m), im(m)) swap(x).
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

typedef double v2d __attribute__((vector_size(16), may_alias, aligned(8)));

typedef struct vc {
    v2d r, i;   /* (re, re), (-im, im) */
} vc;

SV_ALWAYS_INLINE v2d vld(const cplx *p) { return *(const v2d *)p; }
SV_ALWAYS_INLINE void vst(cplx *p, v2d v) { *(v2d *)p = v; }
SV_ALWAYS_INLINE v2d vswap(v2d x) { return (v2d){x[1], x[0]}; }
SV_ALWAYS_INLINE vc vconst(cplx m)
{
    vc c = {{creal(m), creal(m)}, {-cimag(m), cimag(m)}};
    return c;
}
/* m x, with xs = swap(x) */
SV_ALWAYS_INLINE v2d vmul(vc m, v2d x, v2d xs) { return m.r * x + m.i * xs; }
/* fold accumulators P += l * u, Q += l * swap(u) into conj(l) u */
SV_ALWAYS_INLINE cplx vfold(v2d P, v2d Q)
{
    return CMPLX(P[0] + P[1], Q[0] - Q[1]);
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
    const cplx *m;          /* gate matrix (owned by the pgate) */
    /* terms */
    const size_t *off;
    const unsigned *pos;
    unsigned kw;
    size_t d;
    const cplx *h;
    double coef;
} kern;

typedef void (*range_fn)(const kern *K, size_t lo, size_t hi, double *acc);

/*
 * Loop over the pair index k in [lo, hi) of bit p, giving i0 (bit p clear)
 * in runs of consecutive indices, so the inner loop is a plain stride-1
 * loop without bit arithmetic.
 */
#define SV_FOR_PAIRS(lo, hi, p, i0, ...)                                     \
    do {                                                                     \
        const size_t st_ = (size_t)1 << (p);                                 \
        if (st_ == 1) { /* adjacent pairs */                                 \
            for (size_t k_ = (lo); k_ < (hi); k_++) {                        \
                const size_t i0 = 2 * k_;                                    \
                __VA_ARGS__                                                  \
            }                                                                \
            break;                                                           \
        }                                                                    \
        for (size_t k_ = (lo); k_ < (hi);) {                                 \
            size_t run_ = st_ - (k_ & (st_ - 1));                            \
            if (run_ > (hi) - k_)                                            \
                run_ = (hi) - k_;                                            \
            const size_t b_ = ins0(k_, (p));                                 \
            for (size_t j_ = 0; j_ < run_; j_++) {                           \
                const size_t i0 = b_ + j_;                                   \
                __VA_ARGS__                                                  \
            }                                                                \
            k_ += run_;                                                      \
        }                                                                    \
    } while (0)

/* The same for two bits (lo < hi): base index with both bits clear. */
#define SV_FOR_QUADS(K, lo, hi, i0, ...)                                     \
    do {                                                                     \
        const size_t st_ = (size_t)1 << (K)->plo;                            \
        for (size_t k_ = (lo); k_ < (hi);) {                                 \
            size_t run_ = st_ - (k_ & (st_ - 1));                            \
            if (run_ > (hi) - k_)                                            \
                run_ = (hi) - k_;                                            \
            const size_t b_ = ins0(ins0(k_, (K)->plo), (K)->phi);            \
            for (size_t j_ = 0; j_ < run_; j_++) {                           \
                const size_t i0 = b_ + j_;                                   \
                __VA_ARGS__                                                  \
            }                                                                \
            k_ += run_;                                                      \
        }                                                                    \
    } while (0)

/* (a, b) <- M (a, b) on W consecutive entries */
SV_ALWAYS_INLINE void pair_apply(cplx *a, cplx *b, size_t W, vc m0, vc m1,
                                 vc m2, vc m3)
{
    for (size_t w = 0; w < W; w++) {
        v2d x = vld(a + w), y = vld(b + w);
        v2d xs = vswap(x), ys = vswap(y);
        vst(a + w, vmul(m0, x, xs) + vmul(m1, y, ys));
        vst(b + w, vmul(m2, x, xs) + vmul(m3, y, ys));
    }
}

SV_ALWAYS_INLINE void swap_rows(cplx *a, cplx *b, size_t W)
{
    for (size_t w = 0; w < W; w++) {
        v2d t = vld(a + w);
        vst(a + w, vld(b + w));
        vst(b + w, t);
    }
}

/* general 2x2 on bit pa */
SV_ALWAYS_INLINE void g1_body(const kern *K, size_t lo, size_t hi, size_t W)
{
    cplx *s = K->s;
    const size_t st = (size_t)1 << K->pa;
    const vc m0 = vconst(K->m[0]), m1 = vconst(K->m[1]),
             m2 = vconst(K->m[2]), m3 = vconst(K->m[3]);
    SV_FOR_PAIRS(lo, hi, K->pa, i0,
                 { pair_apply(s + i0 * W, s + (i0 | st) * W, W, m0, m1, m2, m3); });
}

/* diagonal 2x2 on bit pa */
SV_ALWAYS_INLINE void d1_body(const kern *K, size_t lo, size_t hi, size_t W)
{
    cplx *s = K->s;
    const size_t st = (size_t)1 << K->pa;
    const vc m0 = vconst(K->m[0]), m3 = vconst(K->m[3]);
    SV_FOR_PAIRS(lo, hi, K->pa, i0, {
        cplx *a = s + i0 * W, *b = s + (i0 | st) * W;
        for (size_t w = 0; w < W; w++) {
            v2d x = vld(a + w), y = vld(b + w);
            vst(a + w, vmul(m0, x, vswap(x)));
            vst(b + w, vmul(m3, y, vswap(y)));
        }
    });
}

/* Pauli X on bit pa */
SV_ALWAYS_INLINE void x1_body(const kern *K, size_t lo, size_t hi, size_t W)
{
    cplx *s = K->s;
    const size_t st = (size_t)1 << K->pa;
    SV_FOR_PAIRS(lo, hi, K->pa, i0, { swap_rows(s + i0 * W, s + (i0 | st) * W, W); });
}

/* 2x2 block m[0..3] on target pb where control pa is set */
SV_ALWAYS_INLINE void c2_body(const kern *K, size_t lo, size_t hi, size_t W)
{
    cplx *s = K->s;
    const size_t ca = (size_t)1 << K->pa, tb = (size_t)1 << K->pb;
    const vc m0 = vconst(K->m[0]), m1 = vconst(K->m[1]),
             m2 = vconst(K->m[2]), m3 = vconst(K->m[3]);
    SV_FOR_QUADS(K, lo, hi, i0, {
        size_t i = i0 | ca;
        pair_apply(s + i * W, s + (i | tb) * W, W, m0, m1, m2, m3);
    });
}

SV_ALWAYS_INLINE void cn_body(const kern *K, size_t lo, size_t hi, size_t W)
{
    cplx *s = K->s;
    const size_t ca = (size_t)1 << K->pa, tb = (size_t)1 << K->pb;
    SV_FOR_QUADS(K, lo, hi, i0, {
        size_t i = i0 | ca;
        swap_rows(s + i * W, s + (i | tb) * W, W);
    });
}

SV_ALWAYS_INLINE void cz_body(const kern *K, size_t lo, size_t hi, size_t W)
{
    cplx *s = K->s;
    const size_t both = ((size_t)1 << K->pa) | ((size_t)1 << K->pb);
    SV_FOR_QUADS(K, lo, hi, i0, {
        cplx *a = s + (i0 | both) * W;
        for (size_t w = 0; w < W; w++)
            vst(a + w, -vld(a + w));
    });
}

SV_ALWAYS_INLINE void sw_body(const kern *K, size_t lo, size_t hi, size_t W)
{
    cplx *s = K->s;
    const size_t ba = (size_t)1 << K->pa, bb = (size_t)1 << K->pb;
    SV_FOR_QUADS(K, lo, hi, i0, { swap_rows(s + (i0 | ba) * W, s + (i0 | bb) * W, W); });
}

/* general 4x4 on (pa, pb), basis |wires[0] wires[1]> */
SV_ALWAYS_INLINE void g2_body(const kern *K, size_t lo, size_t hi, size_t W)
{
    cplx *s = K->s;
    const size_t ba = (size_t)1 << K->pa, bb = (size_t)1 << K->pb;
    vc m[16];
    for (int i = 0; i < 16; i++)
        m[i] = vconst(K->m[i]);
    SV_FOR_QUADS(K, lo, hi, i0, {
        cplx *r[4] = {s + i0 * W, s + (i0 | bb) * W, s + (i0 | ba) * W,
                      s + (i0 | ba | bb) * W};
        for (size_t w = 0; w < W; w++) {
            v2d v[4], vs[4];
            for (int j = 0; j < 4; j++) {
                v[j] = vld(r[j] + w);
                vs[j] = vswap(v[j]);
            }
            for (int i = 0; i < 4; i++)
                vst(r[i] + w, vmul(m[4 * i], v[0], vs[0]) + vmul(m[4 * i + 1], v[1], vs[1]) +
                                  vmul(m[4 * i + 2], v[2], vs[2]) +
                                  vmul(m[4 * i + 3], v[3], vs[3]));
        }
    });
}

/*
 * Fused adjoint step for a parametrised gate on a pair of rows (a, b):
 *   psi <- M psi, lam <- M lam   (M = G^dagger)
 * and the cross matrix C[r][c] = sum conj(lam_old_r) psi_new_c is
 * accumulated, from which every angle's contribution
 * Re sum_rc dG[r][c] C[r][c] follows outside the loop.
 */
typedef struct cross {
    v2d P[4], Q[4];
} cross;

SV_ALWAYS_INLINE void fused_pair(cplx *pa_, cplx *pb_, cplx *la, cplx *lb,
                                 size_t W, vc m0, vc m1, vc m2, vc m3, cross *C)
{
    for (size_t w = 0; w < W; w++) {
        v2d x = vld(pa_ + w), y = vld(pb_ + w);
        v2d xs = vswap(x), ys = vswap(y);
        v2d u = vmul(m0, x, xs) + vmul(m1, y, ys);
        v2d v = vmul(m2, x, xs) + vmul(m3, y, ys);
        vst(pa_ + w, u);
        vst(pb_ + w, v);
        v2d us = vswap(u), vs = vswap(v);
        v2d l0 = vld(la + w), l1 = vld(lb + w);
        C->P[0] += l0 * u;
        C->Q[0] += l0 * us;
        C->P[1] += l0 * v;
        C->Q[1] += l0 * vs;
        C->P[2] += l1 * u;
        C->Q[2] += l1 * us;
        C->P[3] += l1 * v;
        C->Q[3] += l1 * vs;
        v2d l0s = vswap(l0), l1s = vswap(l1);
        vst(la + w, vmul(m0, l0, l0s) + vmul(m1, l1, l1s));
        vst(lb + w, vmul(m2, l0, l0s) + vmul(m3, l1, l1s));
    }
}

SV_ALWAYS_INLINE void cross_out(const cross *C, double *acc)
{
    for (int i = 0; i < 4; i++) {
        cplx c = vfold(C->P[i], C->Q[i]);
        acc[2 * i] += creal(c);
        acc[2 * i + 1] += cimag(c);
    }
}

SV_ALWAYS_INLINE void f1_body(const kern *K, size_t lo, size_t hi, double *acc,
                              size_t W)
{
    cross C;
    memset(&C, 0, sizeof C);
    const size_t st = (size_t)1 << K->pa;
    const vc m0 = vconst(K->m[0]), m1 = vconst(K->m[1]),
             m2 = vconst(K->m[2]), m3 = vconst(K->m[3]);
    SV_FOR_PAIRS(lo, hi, K->pa, i0, {
        size_t i1 = i0 | st;
        fused_pair(K->s + i0 * W, K->s + i1 * W, K->l + i0 * W, K->l + i1 * W,
                   W, m0, m1, m2, m3, &C);
    });
    cross_out(&C, acc);
}

SV_ALWAYS_INLINE void fc_body(const kern *K, size_t lo, size_t hi, double *acc,
                              size_t W)
{
    cross C;
    memset(&C, 0, sizeof C);
    const size_t ca = (size_t)1 << K->pa, tb = (size_t)1 << K->pb;
    const vc m0 = vconst(K->m[0]), m1 = vconst(K->m[1]),
             m2 = vconst(K->m[2]), m3 = vconst(K->m[3]);
    SV_FOR_QUADS(K, lo, hi, i0, {
        size_t i = i0 | ca, i1 = i | tb;
        fused_pair(K->s + i * W, K->s + i1 * W, K->l + i * W, K->l + i1 * W,
                   W, m0, m1, m2, m3, &C);
    });
    cross_out(&C, acc);
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

/* ------------------------------------------------------------------------
 * AVX2 + FMA variants of the two hottest kernels (general 2x2 gate and the
 * fused adjoint step) for one state (W = 1) and bit p >= 1, where two
 * consecutive pairs share a 256-bit vector. Chosen at run time when the
 * CPU has AVX2 and FMA; the build stays portable. Every element goes
 * through the same fused multiply-add sequence whether it is computed in a
 * 256-bit or (at the odd end of a run) a 128-bit register, so results do
 * not depend on where a range is split.
 * ---------------------------------------------------------------------- */
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define SV_HAVE_AVX2 1
#define SV_AVX __attribute__((target("avx2,fma")))

/* QDISTILL_SV_GENERIC=1 forces the portable kernels (for tests and for
 * comparing machines). */
static int sv_cpu_avx2(void)
{
    static int cached = -1;
    if (cached < 0) {
        const char *env = getenv("QDISTILL_SV_GENERIC");
        __builtin_cpu_init();
        cached = !(env && env[0] == '1') && __builtin_cpu_supports("avx2") &&
                 __builtin_cpu_supports("fma");
    }
    return cached;
}

typedef struct vc4 {
    __m256d r, i;       /* (re x4), (-im, im, -im, im) */
} vc4;

SV_AVX static inline vc4 vc4_const(cplx m)
{
    vc4 c = {_mm256_set1_pd(creal(m)),
             _mm256_setr_pd(-cimag(m), cimag(m), -cimag(m), cimag(m))};
    return c;
}

/* a x + b y (xs, ys: re/im swapped), one fixed FMA order */
SV_AVX static inline __m256d mix4(vc4 a, __m256d x, __m256d xs, vc4 b,
                                  __m256d y, __m256d ys)
{
    __m256d t = _mm256_mul_pd(a.r, x);
    t = _mm256_fmadd_pd(a.i, xs, t);
    t = _mm256_fmadd_pd(b.r, y, t);
    return _mm256_fmadd_pd(b.i, ys, t);
}

SV_AVX static inline __m128d lo2(__m256d v) { return _mm256_castpd256_pd128(v); }

SV_AVX static inline __m128d mix2(vc4 a, __m128d x, __m128d xs, vc4 b,
                                  __m128d y, __m128d ys)
{
    __m128d t = _mm_mul_pd(lo2(a.r), x);
    t = _mm_fmadd_pd(lo2(a.i), xs, t);
    t = _mm_fmadd_pd(lo2(b.r), y, t);
    return _mm_fmadd_pd(lo2(b.i), ys, t);
}

SV_AVX static void g1_avx_range(const kern *K, size_t lo, size_t hi, double *acc)
{
    (void)acc;
    double *s = (double *)K->s;
    const unsigned p = K->pa;
    const size_t st = (size_t)1 << p;
    const vc4 m0 = vc4_const(K->m[0]), m1 = vc4_const(K->m[1]),
              m2 = vc4_const(K->m[2]), m3 = vc4_const(K->m[3]);
    for (size_t k = lo; k < hi;) {
        size_t run = st - (k & (st - 1));
        if (run > hi - k)
            run = hi - k;
        double *a = s + 2 * ins0(k, p), *b = a + 2 * st;
        size_t j = 0;
        for (; j + 2 <= run; j += 2) {
            __m256d x = _mm256_loadu_pd(a + 2 * j), y = _mm256_loadu_pd(b + 2 * j);
            __m256d xs = _mm256_permute_pd(x, 5), ys = _mm256_permute_pd(y, 5);
            _mm256_storeu_pd(a + 2 * j, mix4(m0, x, xs, m1, y, ys));
            _mm256_storeu_pd(b + 2 * j, mix4(m2, x, xs, m3, y, ys));
        }
        for (; j < run; j++) {
            __m128d x = _mm_loadu_pd(a + 2 * j), y = _mm_loadu_pd(b + 2 * j);
            __m128d xs = _mm_permute_pd(x, 1), ys = _mm_permute_pd(y, 1);
            _mm_storeu_pd(a + 2 * j, mix2(m0, x, xs, m1, y, ys));
            _mm_storeu_pd(b + 2 * j, mix2(m2, x, xs, m3, y, ys));
        }
        k += run;
    }
}

/* bit 0: a pair is one vector [x | y]; lanes compute m0 x + m1 y and
 * m2 x + m3 y with the same FMA order as mix4 */
SV_AVX static void g1_avx0_range(const kern *K, size_t lo, size_t hi, double *acc)
{
    (void)acc;
    double *s = (double *)K->s;
    const cplx *m = K->m;
    const __m256d Lr = _mm256_setr_pd(creal(m[0]), creal(m[0]), creal(m[2]), creal(m[2]));
    const __m256d Li = _mm256_setr_pd(-cimag(m[0]), cimag(m[0]), -cimag(m[2]), cimag(m[2]));
    const __m256d Rr = _mm256_setr_pd(creal(m[1]), creal(m[1]), creal(m[3]), creal(m[3]));
    const __m256d Ri = _mm256_setr_pd(-cimag(m[1]), cimag(m[1]), -cimag(m[3]), cimag(m[3]));
    for (size_t k = lo; k < hi; k++) {
        __m256d v = _mm256_loadu_pd(s + 4 * k);
        __m256d xx = _mm256_permute2f128_pd(v, v, 0x00), yy = _mm256_permute2f128_pd(v, v, 0x11);
        __m256d t = _mm256_mul_pd(Lr, xx);
        t = _mm256_fmadd_pd(Li, _mm256_permute_pd(xx, 5), t);
        t = _mm256_fmadd_pd(Rr, yy, t);
        t = _mm256_fmadd_pd(Ri, _mm256_permute_pd(yy, 5), t);
        _mm256_storeu_pd(s + 4 * k, t);
    }
}

/* rho of a 1-wire term on bit p >= 1 (see rho1_range) */
SV_AVX static void rho1_avx_range(const kern *K, size_t lo, size_t hi, double *acc)
{
    const double *x = (const double *)K->x;
    const unsigned p = K->pos[0];
    const size_t st = (size_t)1 << p;
    __m256d Paa = _mm256_setzero_pd(), Pbb = Paa, Pab = Paa, Qab = Paa;
    __m128d paa = _mm_setzero_pd(), pbb = paa, pab = paa, qab = paa;
    for (size_t k = lo; k < hi;) {
        size_t run = st - (k & (st - 1));
        if (run > hi - k)
            run = hi - k;
        const double *a = x + 2 * ins0(k, p), *b = a + 2 * st;
        size_t j = 0;
        for (; j + 2 <= run; j += 2) {
            __m256d va = _mm256_loadu_pd(a + 2 * j), vb = _mm256_loadu_pd(b + 2 * j);
            Paa = _mm256_fmadd_pd(va, va, Paa);
            Pbb = _mm256_fmadd_pd(vb, vb, Pbb);
            Pab = _mm256_fmadd_pd(va, vb, Pab);
            Qab = _mm256_fmadd_pd(vb, _mm256_permute_pd(va, 5), Qab);
        }
        for (; j < run; j++) {
            __m128d va = _mm_loadu_pd(a + 2 * j), vb = _mm_loadu_pd(b + 2 * j);
            paa = _mm_fmadd_pd(va, va, paa);
            pbb = _mm_fmadd_pd(vb, vb, pbb);
            pab = _mm_fmadd_pd(va, vb, pab);
            qab = _mm_fmadd_pd(vb, _mm_permute_pd(va, 1), qab);
        }
        k += run;
    }
    double v[4][4], w[4][2];
    _mm256_storeu_pd(v[0], Paa);
    _mm256_storeu_pd(v[1], Pbb);
    _mm256_storeu_pd(v[2], Pab);
    _mm256_storeu_pd(v[3], Qab);
    _mm_storeu_pd(w[0], paa);
    _mm_storeu_pd(w[1], pbb);
    _mm_storeu_pd(w[2], pab);
    _mm_storeu_pd(w[3], qab);
    double aa = ((v[0][0] + v[0][1]) + (v[0][2] + v[0][3])) + (w[0][0] + w[0][1]);
    double bb = ((v[1][0] + v[1][1]) + (v[1][2] + v[1][3])) + (w[1][0] + w[1][1]);
    double re = ((v[2][0] + v[2][1]) + (v[2][2] + v[2][3])) + (w[2][0] + w[2][1]);
    double im = ((v[3][0] - v[3][1]) + (v[3][2] - v[3][3])) + (w[3][0] - w[3][1]);
    acc[0] += aa;
    acc[2] += re;
    acc[3] += im;
    acc[4] += re;
    acc[5] -= im;
    acc[6] += bb;
}

SV_AVX static void f1_avx_range(const kern *K, size_t lo, size_t hi, double *acc)
{
    double *s = (double *)K->s, *l = (double *)K->l;
    const unsigned p = K->pa;
    const size_t st = (size_t)1 << p;
    const vc4 m0 = vc4_const(K->m[0]), m1 = vc4_const(K->m[1]),
              m2 = vc4_const(K->m[2]), m3 = vc4_const(K->m[3]);
    __m256d P[4], Q[4];
    __m128d p2[4], q2[4];
    for (int i = 0; i < 4; i++) {
        P[i] = Q[i] = _mm256_setzero_pd();
        p2[i] = q2[i] = _mm_setzero_pd();
    }
    for (size_t k = lo; k < hi;) {
        size_t run = st - (k & (st - 1));
        if (run > hi - k)
            run = hi - k;
        size_t off = 2 * ins0(k, p);
        double *pa = s + off, *pb = pa + 2 * st, *la = l + off, *lb = la + 2 * st;
        size_t j = 0;
        for (; j + 2 <= run; j += 2) {
            __m256d x = _mm256_loadu_pd(pa + 2 * j), y = _mm256_loadu_pd(pb + 2 * j);
            __m256d xs = _mm256_permute_pd(x, 5), ys = _mm256_permute_pd(y, 5);
            __m256d u = mix4(m0, x, xs, m1, y, ys), v = mix4(m2, x, xs, m3, y, ys);
            _mm256_storeu_pd(pa + 2 * j, u);
            _mm256_storeu_pd(pb + 2 * j, v);
            __m256d us = _mm256_permute_pd(u, 5), vs = _mm256_permute_pd(v, 5);
            __m256d l0 = _mm256_loadu_pd(la + 2 * j), l1 = _mm256_loadu_pd(lb + 2 * j);
            P[0] = _mm256_fmadd_pd(l0, u, P[0]);
            Q[0] = _mm256_fmadd_pd(l0, us, Q[0]);
            P[1] = _mm256_fmadd_pd(l0, v, P[1]);
            Q[1] = _mm256_fmadd_pd(l0, vs, Q[1]);
            P[2] = _mm256_fmadd_pd(l1, u, P[2]);
            Q[2] = _mm256_fmadd_pd(l1, us, Q[2]);
            P[3] = _mm256_fmadd_pd(l1, v, P[3]);
            Q[3] = _mm256_fmadd_pd(l1, vs, Q[3]);
            __m256d l0s = _mm256_permute_pd(l0, 5), l1s = _mm256_permute_pd(l1, 5);
            _mm256_storeu_pd(la + 2 * j, mix4(m0, l0, l0s, m1, l1, l1s));
            _mm256_storeu_pd(lb + 2 * j, mix4(m2, l0, l0s, m3, l1, l1s));
        }
        for (; j < run; j++) {
            __m128d x = _mm_loadu_pd(pa + 2 * j), y = _mm_loadu_pd(pb + 2 * j);
            __m128d xs = _mm_permute_pd(x, 1), ys = _mm_permute_pd(y, 1);
            __m128d u = mix2(m0, x, xs, m1, y, ys), v = mix2(m2, x, xs, m3, y, ys);
            _mm_storeu_pd(pa + 2 * j, u);
            _mm_storeu_pd(pb + 2 * j, v);
            __m128d us = _mm_permute_pd(u, 1), vs = _mm_permute_pd(v, 1);
            __m128d l0 = _mm_loadu_pd(la + 2 * j), l1 = _mm_loadu_pd(lb + 2 * j);
            p2[0] = _mm_fmadd_pd(l0, u, p2[0]);
            q2[0] = _mm_fmadd_pd(l0, us, q2[0]);
            p2[1] = _mm_fmadd_pd(l0, v, p2[1]);
            q2[1] = _mm_fmadd_pd(l0, vs, q2[1]);
            p2[2] = _mm_fmadd_pd(l1, u, p2[2]);
            q2[2] = _mm_fmadd_pd(l1, us, q2[2]);
            p2[3] = _mm_fmadd_pd(l1, v, p2[3]);
            q2[3] = _mm_fmadd_pd(l1, vs, q2[3]);
            __m128d l0s = _mm_permute_pd(l0, 1), l1s = _mm_permute_pd(l1, 1);
            _mm_storeu_pd(la + 2 * j, mix2(m0, l0, l0s, m1, l1, l1s));
            _mm_storeu_pd(lb + 2 * j, mix2(m2, l0, l0s, m3, l1, l1s));
        }
        k += run;
    }
    /* conj(l) u: re = sum of P lanes, im = Q[even] - Q[odd] */
    for (int i = 0; i < 4; i++) {
        double pv[4], qv[4], pw[2], qw[2];
        _mm256_storeu_pd(pv, P[i]);
        _mm256_storeu_pd(qv, Q[i]);
        _mm_storeu_pd(pw, p2[i]);
        _mm_storeu_pd(qw, q2[i]);
        acc[2 * i] += ((pv[0] + pv[1]) + (pv[2] + pv[3])) + (pw[0] + pw[1]);
        acc[2 * i + 1] += ((qv[0] - qv[1]) + (qv[2] - qv[3])) + (qw[0] - qw[1]);
    }
}
#endif

/* ---- terms (W = 1) ---- */

/* Base index of rest index r for a term (zeros inserted at its bits). */
SV_ALWAYS_INLINE size_t term_base(const kern *K, size_t r)
{
    for (unsigned j = 0; j < K->kw; j++)
        r = ins0(r, K->pos[j]);
    return r;
}

/* s += coef * (H (x) I) x for a 1-wire term: a pair loop. */
static void ta1_range(const kern *K, size_t lo, size_t hi, double *acc)
{
    (void)acc;
    const unsigned p = K->pos[0];
    const size_t st = (size_t)1 << p;
    const vc h0 = vconst(K->coef * K->h[0]), h1 = vconst(K->coef * K->h[1]),
             h2 = vconst(K->coef * K->h[2]), h3 = vconst(K->coef * K->h[3]);
    const cplx *x = K->x;
    cplx *s = K->s;
    SV_FOR_PAIRS(lo, hi, p, i0, {
        size_t i1 = i0 | st;
        v2d a = vld(x + i0), b = vld(x + i1);
        v2d as = vswap(a), bs = vswap(b);
        vst(s + i0, vld(s + i0) + vmul(h0, a, as) + vmul(h1, b, bs));
        vst(s + i1, vld(s + i1) + vmul(h2, a, as) + vmul(h3, b, bs));
    });
}

/* s += coef * (H (x) I) x for a k-wire term. */
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

/* acc += rho of a 1-wire term: [rho00, rho01 (re, im), rho11] kept as
 * 2x2 = 8 doubles, rho10 = conj(rho01). */
static void rho1_range(const kern *K, size_t lo, size_t hi, double *acc)
{
    const unsigned p = K->pos[0];
    const size_t st = (size_t)1 << p;
    const cplx *x = K->x;
    v2d Paa = {0, 0}, Pbb = {0, 0}, Pab = {0, 0}, Qab = {0, 0};
    SV_FOR_PAIRS(lo, hi, p, i0, {
        v2d a = vld(x + i0), b = vld(x + (i0 | st));
        Paa += a * a;
        Pbb += b * b;
        Pab += a * b;          /* Re a conj(b) = ar br + ai bi */
        Qab += b * vswap(a);   /* Im a conj(b) = ai br - ar bi */
    });
    double re01 = Pab[0] + Pab[1], im01 = Qab[0] - Qab[1];
    acc[0] += Paa[0] + Paa[1];
    acc[2] += re01;
    acc[3] += im01;
    acc[4] += re01;
    acc[5] -= im01;
    acc[6] += Pbb[0] + Pbb[1];
}

/* acc (2 d^2 doubles) += rho[i][j] = sum_rest x_i conj(x_j). */
static void rho_range(const kern *K, size_t lo, size_t hi, double *acc)
{
    const size_t d = K->d;
    double *loc = calloc(2 * d * d, sizeof *loc);
    double *a = loc ? loc : acc; /* local sums keep acc out of the loop */
    cplx v[64];
    for (size_t r = lo; r < hi; r++) {
        size_t base = term_base(K, r);
        for (size_t i = 0; i < d; i++)
            v[i] = K->x[base + K->off[i]];
        for (size_t i = 0; i < d; i++)
            for (size_t j = 0; j < d; j++) {
                cplx q = cmulc(v[j], v[i]);
                a[2 * (i * d + j)] += creal(q);
                a[2 * (i * d + j) + 1] += cimag(q);
            }
    }
    if (loc) {
        for (size_t i = 0; i < 2 * d * d; i++)
            acc[i] += loc[i];
        free(loc);
    }
}

/* The rho kernel for a term of k wires, lowest bit p0. */
static range_fn rho_fn(unsigned k, unsigned p0)
{
    if (k != 1)
        return rho_range;
#ifdef SV_HAVE_AVX2
    if (p0 >= 1 && sv_cpu_avx2())
        return rho1_avx_range;
#else
    (void)p0;
#endif
    return rho1_range;
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

/* A gate ready to run: its kernel, loop shape and matrix (or, for the fused
 * adjoint step, G^dagger and the derivative blocks). */
typedef struct pgate {
    range_fn fn;
    kern K;
    cplx mat[16];         /* K.m points here: a pgate is never copied */
    int quads;            /* loop over quadruples (2-wire) or pairs */
    int frac;             /* rows touched per loop index, for the work size */
    uint32_t nd;
    cplx d[3][4];         /* derivative blocks (fused) */
} pgate;

/* A run of local gates of the adjoint sweep, in reverse op order. */
typedef struct sweep_seg {
    int ng;
    pgate g[SV_SEG_MAX];          /* storage for gates prepared here */
    const pgate *gp[SV_SEG_MAX];  /* the gates to run (here or prepared) */
    size_t op[SV_SEG_MAX];
    int fused[SV_SEG_MAX];
    int need[SV_SEG_MAX][QD_OP_MAX_ANGLES];
} sweep_seg;

/* Prepare op with angles theta: plain (adj: its adjoint) or, when fused,
 * the adjoint step that also yields the cross matrix for gradients. */
static void gate_prepare(const qd_circuit *c, const qd_op *op,
                         const double *theta, unsigned n, size_t W, int adj,
                         int fused, pgate *g)
{
    memset(g, 0, sizeof *g);
    uint32_t gt = op->gate;
    g->K.W = W;
    g->K.m = g->mat;
    kern_wires(&g->K, op, n);
    cplx m[16], dm[3 * 16];
    qd_op_matrix(c, op, theta, m, fused ? dm : NULL);
    if (fused)
        adj = 1;
    if (op->n_wires == 1) {
        if (adj)
            adj2(m);
        memcpy(g->mat, m, 4 * sizeof *m);
        g->quads = 0;
        g->frac = 2;
        if (fused) {
            g->fn = f1_range;
            g->nd = op->n_angles;
            for (uint32_t a = 0; a < op->n_angles; a++)
                memcpy(g->d[a], dm + 4 * a, 4 * sizeof *m);
        } else {
            g->fn = gt == QD_GATE_X ? x1_range : gate_is_diag1(gt) ? d1_range : g1_range;
        }
#ifdef SV_HAVE_AVX2
        if (W == 1 && sv_cpu_avx2()) {
            if (g->fn == f1_range && g->K.pa >= 1)
                g->fn = f1_avx_range;
            else if (g->fn == g1_range)
                g->fn = g->K.pa >= 1 ? g1_avx_range : g1_avx0_range;
        }
#endif
        return;
    }
    g->quads = 1;
    switch (gt) {
    case QD_GATE_CNOT:
        g->fn = cn_range;
        g->frac = 2;
        break;
    case QD_GATE_CZ:
        g->fn = cz_range;
        g->frac = 1;
        break;
    case QD_GATE_SWAP:
        g->fn = sw_range;
        g->frac = 2;
        break;
    case QD_GATE_CRX:
    case QD_GATE_CRY:
    case QD_GATE_CRZ: {
        cplx b[4] = {m[10], m[11], m[14], m[15]};
        if (adj)
            adj2(b);
        memcpy(g->mat, b, sizeof b);
        g->frac = 2;
        g->fn = fused ? fc_range : c2_range;
        if (fused) {
            g->nd = op->n_angles;
            for (uint32_t a = 0; a < op->n_angles; a++) {
                const cplx *x = dm + 16 * a;
                g->d[a][0] = x[10];
                g->d[a][1] = x[11];
                g->d[a][2] = x[14];
                g->d[a][3] = x[15];
            }
        }
        break;
    }
    default:
        if (adj)
            adj4(m);
        memcpy(g->mat, m, sizeof m);
        g->fn = g2_range;
        g->frac = 4;
        break;
    }
}

static size_t pgate_total(const pgate *g, unsigned nl)
{
    return ((size_t)1 << nl) >> (g->quads ? 2 : 1);
}

/* Run a plain gate on 2^nl rows starting at s (all its bits below nl). */
static void pgate_run(const pgate *g, cplx *s, unsigned nl, int par)
{
    kern K = g->K;
    K.s = s;
    size_t total = pgate_total(g, nl);
    par_run(g->fn, &K, total, total * (size_t)g->frac * K.W, par);
}

/* Run a fused adjoint step on (psi, lam) rows, adding its cross matrix. */
static int pgate_fused(const pgate *g, cplx *psi, cplx *lam, unsigned nl,
                       int par, double *acc)
{
    kern K = g->K;
    K.s = psi;
    K.l = lam;
    size_t total = pgate_total(g, nl);
    return par_reduce(g->fn, &K, total, total * (size_t)g->frac * K.W, par, 8, acc);
}

/* grad[a] = 2 Re sum_rc d_a[r][c] C[r][c] from the cross matrix */
static void pgate_grads(const pgate *g, const double *acc, double *grad)
{
    cplx C[4] = {CMPLX(acc[0], acc[1]), CMPLX(acc[2], acc[3]),
                 CMPLX(acc[4], acc[5]), CMPLX(acc[6], acc[7])};
    for (uint32_t a = 0; a < g->nd; a++) {
        double v = 0;
        for (int i = 0; i < 4; i++)
            v += creal(cmul(g->d[a][i], C[i]));
        grad[a] = 2.0 * v;
    }
}

/* Apply op's gate (adj: its adjoint) to s (2^n rows of W). */
static void apply_gate(const qd_circuit *c, const qd_op *op,
                       const double *theta, cplx *s, unsigned n, size_t W,
                       int adj, int par)
{
    if (!gate_has_matrix(op->gate))
        return;
    pgate g;
    gate_prepare(c, op, theta, n, W, adj, 0, &g);
    pgate_run(&g, s, n, par);
}

/* Reverse a parametrised gate on (psi, lam) and write, for each angle a,
 * grad[a] = 2 Re <lam_k| dG/dtheta_a |psi_(k-1)>. */
static int sweep_gate(const qd_circuit *c, const qd_op *op,
                      const double *theta, cplx *psi, cplx *lam, unsigned n,
                      size_t W, int par, double *grad)
{
    pgate g;
    gate_prepare(c, op, theta, n, W, 1, 1, &g);
    double acc[8] = {0};
    int rc = pgate_fused(&g, psi, lam, n, par, acc);
    if (rc)
        return rc;
    pgate_grads(&g, acc, grad);
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
    struct pgate *pre;              /* gates route: PRE_N prepared variants
                                       per op whose angles read no input */
} jctx;

/* per-thread scratch */
typedef struct worker {
    cplx *psi, *aux;               /* state, co-state or shifted copy */
    cplx *rho;                      /* d_max^2 */
    double *racc;                   /* 2 d_max^2 */
    double *e;                      /* n_out */
    double *e2;                     /* n_out */
    sweep_seg *seg;                 /* blocked adjoint sweep */
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
     * that building U (4^n entries) and the batch products beat B
     * gate-by-gate runs; `bench-sim --crossover` puts the crossover at
     * B = 4^(n-2) for 3..7 qubits, with 1 and 2 threads, and finds no
     * batch up to 4096 where dense wins at 8 qubits (docs/performance.md,
     * "Simulator"). */
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
        size_t need = jc->n >= 2 ? (size_t)1 << (2 * (jc->n - 2)) : 1;
        jc->dense = dense_ok && jc->n <= 7 && job->batch >= need;
    }
    /* Batch-parallel unless one sample is big enough to split its gates. */
    jc->bpar = jc->nthreads > 1 && job->batch > 1 &&
               (jc->n <= 12 || job->batch >= (size_t)(4 * jc->nthreads)) &&
               jc->n <= 20;
    return QD_OK;
}

/* Per-thread scratch from the instance's buffers: n_states state vectors
 * per worker (at most 2: state and co-state or shifted copy). */
static int workers_alloc(const jctx *jc, int n_states, worker **out, int *nw)
{
    int n = jc->bpar ? jc->nthreads : 1;
    size_t dm2 = jc->d_max * jc->d_max;
    size_t per = sizeof(sweep_seg) + dm2 * sizeof(cplx) +
                 2 * dm2 * sizeof(double) + 2 * (jc->n_out + 1) * sizeof(double);
    worker *ws = sv_buf(jc->S, BUF_WORKERS, (size_t)n * sizeof *ws);
    cplx *st = sv_buf(jc->S, BUF_STATES,
                      (size_t)n * (size_t)n_states * jc->dim * sizeof(cplx));
    char *sc = sv_buf(jc->S, BUF_SCRATCH, (size_t)n * per);
    if (!ws || !st || !sc)
        return QD_ERR_NOMEM;
    for (int i = 0; i < n; i++) {
        worker *w = &ws[i];
        cplx *mine = st + (size_t)i * (size_t)n_states * jc->dim;
        w->psi = n_states > 0 ? mine : NULL;
        w->aux = n_states > 1 ? mine + jc->dim : NULL;
        char *p = sc + (size_t)i * per;
        w->seg = (sweep_seg *)p;
        p += sizeof(sweep_seg);
        w->rho = (cplx *)p;
        p += dm2 * sizeof(cplx);
        w->racc = (double *)p;
        p += 2 * dm2 * sizeof(double);
        w->e = (double *)p;
        w->e2 = w->e + jc->n_out + 1;
    }
    *out = ws;
    *nw = n;
    return QD_OK;
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
static void add_angle_grad(const qd_angle *an, double g, double *gw, double *gx)
{
    if (an->src == QD_SRC_WEIGHT)
        gw[an->index] += an->scale * g;
    else if (an->src == QD_SRC_INPUT)
        gx[an->index] += an->scale * g;
}

/* Gates whose angles read no input are the same for every sample of a
 * call: prepare them once (matrix, derivative blocks, kernel choice). */
enum { PRE_FWD = 0, PRE_ADJ = 1, PRE_FUSED = 2, PRE_N = 3 };

static const pgate *pre_gate(const jctx *jc, size_t k, int v)
{
    if (!jc->pre)
        return NULL;
    const pgate *g = &jc->pre[k * PRE_N + (size_t)v];
    return g->fn ? g : NULL;
}

/* For the gates route (one state per sample). With fused, also the
 * adjoint steps that yield weight gradients. Without memory it simply
 * leaves jc->pre NULL (gates are then prepared as they run). */
static void jctx_prepare(jctx *jc, int fused)
{
    size_t n_ops = jc->c->n_ops;
    pgate *pre = sv_buf(jc->S, BUF_PRE, (n_ops ? n_ops : 1) * PRE_N * sizeof *pre);
    jc->pre = NULL;
    if (!pre)
        return;
    double theta[QD_OP_MAX_ANGLES];
    for (size_t k = 0; k < n_ops; k++) {
        const qd_op *op = &jc->c->ops[k];
        pgate *g = pre + k * PRE_N;
        for (int v = 0; v < PRE_N; v++)
            g[v].fn = NULL;
        if (!gate_has_matrix(op->gate))
            continue;
        int reads_x = 0, reads_w = 0;
        for (uint32_t a = 0; a < op->n_angles; a++) {
            reads_x |= op->angle[a].src == QD_SRC_INPUT;
            reads_w |= op->angle[a].src == QD_SRC_WEIGHT && op->angle[a].scale != 0.0;
        }
        if (reads_x)
            continue;
        qd_op_angles(op, jc->job->weights, NULL, theta);
        gate_prepare(jc->c, op, theta, jc->n, 1, 0, 0, &g[PRE_FWD]);
        gate_prepare(jc->c, op, theta, jc->n, 1, 1, 0, &g[PRE_ADJ]);
        if (fused && reads_w)
            gate_prepare(jc->c, op, theta, jc->n, 1, 1, 1, &g[PRE_FUSED]);
    }
    jc->pre = pre;
}

/*
 * Cache blocking. A register of n > SV_CHUNK_BITS qubits is cut into chunks
 * of 2^SV_CHUNK_BITS amplitudes (256 KiB, cache resident). A gate whose bits
 * all lie below SV_CHUNK_BITS ("local") maps every chunk onto itself, so a
 * run of consecutive local gates is applied chunk by chunk: one pass over
 * memory and one parallel region for the whole run instead of one per
 * gate. Only gates on the top wires need a full pass of their own. The
 * blocking depends on n only (never on the thread count), and so does the
 * order of every reduction.
 */
static int op_local(const qd_op *op, unsigned n)
{
    if (!gate_has_matrix(op->gate))
        return 1;
    for (uint32_t i = 0; i < op->n_wires; i++)
        if (n - 1 - op->wires[i] >= SV_CHUNK_BITS)
            return 0;
    return 1;
}

static int is_blocked(const jctx *jc, size_t W)
{
    return W == 1 && jc->n > SV_CHUNK_BITS;
}

static size_t n_chunks(unsigned n)
{
    return (size_t)1 << (n - SV_CHUNK_BITS);
}

/* Apply gates g[0..ng) in order to every chunk of s. */
static void run_segment(const pgate *const *g, int ng, cplx *s, unsigned n, int par)
{
    size_t nch = n_chunks(n);
    int go = par && ((size_t)1 << n) >= SV_PAR_MIN_WORK && omp_get_max_threads() > 1;
#pragma omp parallel for schedule(static) if (go)
    for (size_t ch = 0; ch < nch; ch++) {
        cplx *cs = s + (ch << SV_CHUNK_BITS);
        for (int i = 0; i < ng; i++)
            pgate_run(g[i], cs, SV_CHUNK_BITS, 0);
    }
}

/* Apply ops [from, to) to rows s. */
static void run_ops(const jctx *jc, size_t from, size_t to, const double *x,
                    shift sh, cplx *s, size_t W, int par)
{
    double theta[QD_OP_MAX_ANGLES];
    const int blk = is_blocked(jc, W);
    pgate seg[SV_SEG_MAX], one;
    const pgate *sp[SV_SEG_MAX];
    int ng = 0;
    for (size_t k = from; k < to; k++) {
        const qd_op *op = &jc->c->ops[k];
        if (!gate_has_matrix(op->gate))
            continue;
        const pgate *pg = W == 1 && sh.op != k ? pre_gate(jc, k, PRE_FWD) : NULL;
        if (blk && op_local(op, jc->n)) {
            if (!pg) {
                op_theta(jc, k, x, sh, theta);
                gate_prepare(jc->c, op, theta, jc->n, 1, 0, 0, &seg[ng]);
                pg = &seg[ng];
            }
            sp[ng++] = pg;
            if (ng == SV_SEG_MAX) {
                run_segment(sp, ng, s, jc->n, par);
                ng = 0;
            }
            continue;
        }
        if (ng) {
            run_segment(sp, ng, s, jc->n, par);
            ng = 0;
        }
        if (!pg) {
            op_theta(jc, k, x, sh, theta);
            gate_prepare(jc->c, op, theta, jc->n, W, 0, 0, &one);
            pg = &one;
        }
        pgate_run(pg, s, jc->n, par);
    }
    if (ng)
        run_segment(sp, ng, s, jc->n, par);
}

/* Reverse the segment on every chunk of (psi, lam). Cross matrices are
 * summed per chunk group (a fixed partition of the chunks) and then over
 * the groups in order, and turned into gradients. */
static int sweep_flush(const jctx *jc, sweep_seg *sg, cplx *psi, cplx *lam,
                       int par, double *gw_b, double *gx_b)
{
    if (sg->ng == 0)
        return QD_OK;
    const size_t nch = n_chunks(jc->n);
    const size_t ngr = nch < SV_RED_CHUNKS ? nch : SV_RED_CHUNKS;
    const size_t ng = (size_t)sg->ng;
    double *part = calloc(ngr * ng * 8, sizeof *part);
    if (!part)
        return QD_ERR_NOMEM;
    int go = par && jc->dim >= SV_PAR_MIN_WORK && omp_get_max_threads() > 1;
#pragma omp parallel for schedule(static) if (go)
    for (size_t gi = 0; gi < ngr; gi++) {
        size_t c0 = nch * gi / ngr, c1 = nch * (gi + 1) / ngr;
        for (size_t ch = c0; ch < c1; ch++) {
            cplx *ps = psi + (ch << SV_CHUNK_BITS), *ls = lam + (ch << SV_CHUNK_BITS);
            for (size_t i = 0; i < ng; i++) {
                if (sg->fused[i]) {
                    /* chunk loops are below SV_RED_MIN: no allocation */
                    (void)pgate_fused(sg->gp[i], ps, ls, SV_CHUNK_BITS, 0,
                                      part + (gi * ng + i) * 8);
                } else {
                    pgate_run(sg->gp[i], ps, SV_CHUNK_BITS, 0);
                    pgate_run(sg->gp[i], ls, SV_CHUNK_BITS, 0);
                }
            }
        }
    }
    for (size_t i = 0; i < ng; i++) {
        if (!sg->fused[i])
            continue;
        double acc[8] = {0}, grad[QD_OP_MAX_ANGLES];
        for (size_t gi = 0; gi < ngr; gi++)
            for (int j = 0; j < 8; j++)
                acc[j] += part[(gi * ng + i) * 8 + j];
        pgate_grads(sg->gp[i], acc, grad);
        const qd_op *op = &jc->c->ops[sg->op[i]];
        for (uint32_t a = 0; a < op->n_angles; a++)
            if (sg->need[i][a])
                add_angle_grad(&op->angle[a], grad[a], gw_b, gx_b);
    }
    free(part);
    sg->ng = 0;
    return QD_OK;
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
    int rc = par_reduce(rho_fn(tc->k, tc->pos[0]), &K, rest,
                        jc->dim, par, n2, w->racc);
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
/* The rho of every term of a large register in one parallel region (the
 * chunking and summation order of term_rho, so the numbers are the same). */
static int all_rho_par(const jctx *jc, const cplx *psi, cplx *rho_all)
{
    const size_t nch = SV_RED_CHUNKS;
    size_t tot = 0, n2max = 0;
    for (size_t t = 0; t < jc->n_terms; t++) {
        size_t n2 = 2 * jc->terms[t].d * jc->terms[t].d;
        tot += n2;
        if (n2 > n2max)
            n2max = n2;
    }
    double *part = sv_buf0(jc->S, BUF_TPART, (nch * tot + n2max) * sizeof *part);
    if (!part)
        return QD_ERR_NOMEM;
    double *acc = part + nch * tot;
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < nch; c++) {
        size_t off = 0;
        for (size_t t = 0; t < jc->n_terms; t++) {
            const term_ctx *tc = &jc->terms[t];
            kern K = term_kern(jc, tc);
            K.x = psi;
            size_t rest = jc->dim >> tc->k;
            if (rest >= SV_RED_MIN)
                rho_fn(tc->k, tc->pos[0])(
                    &K, rest * c / nch, rest * (c + 1) / nch, part + c * tot + off);
            off += 2 * tc->d * tc->d;
        }
    }
    size_t off = 0;
    for (size_t t = 0; t < jc->n_terms; t++) {
        const term_ctx *tc = &jc->terms[t];
        size_t n2 = 2 * tc->d * tc->d, rest = jc->dim >> tc->k;
        memset(acc, 0, n2 * sizeof *acc);
        if (rest >= SV_RED_MIN) {
            for (size_t c = 0; c < nch; c++)
                for (size_t i = 0; i < n2; i++)
                    acc[i] += part[c * tot + off + i];
        } else {
            kern K = term_kern(jc, tc);
            K.x = psi;
            rho_fn(tc->k, tc->pos[0])(&K, 0, rest, acc);
        }
        for (size_t i = 0; i < tc->d * tc->d; i++)
            rho_all[tc->rho_at + i] = CMPLX(acc[2 * i], acc[2 * i + 1]);
        off += n2;
    }
    return QD_OK;
}

/* rho of every term into out + rho_at. */
static int terms_rho(const jctx *jc, const cplx *psi, worker *w, int par,
                     cplx *out)
{
    if (par && jc->dim >= SV_PAR_MIN_WORK && omp_get_max_threads() > 1)
        return all_rho_par(jc, psi, out);
    for (size_t t = 0; t < jc->n_terms; t++) {
        int rc = term_rho(jc, &jc->terms[t], psi, w, par, out + jc->terms[t].rho_at);
        if (rc)
            return rc;
    }
    return QD_OK;
}


/* Expectations of all outputs for state psi into e[n_out]; optionally
 * store the exact rho of every term at rho_out + rho_at. */
static int measure(const jctx *jc, const cplx *psi, worker *w, int par,
                   qd_rng *rng, double *e, cplx *rho_out)
{
    memset(e, 0, jc->n_out * sizeof *e);
    cplx *all = NULL;
    if (par && jc->dim >= SV_PAR_MIN_WORK && omp_get_max_threads() > 1) {
        all = rho_out ? rho_out
                      : sv_buf(jc->S, BUF_RHOALL, jc->rho_len * sizeof *all);
        if (!all)
            return QD_ERR_NOMEM;
        int rc = all_rho_par(jc, psi, all);
        if (rc)
            return rc;
    }
    for (size_t t = 0; t < jc->n_terms; t++) {
        const term_ctx *tc = &jc->terms[t];
        const cplx *rho;
        if (all) {
            rho = all + tc->rho_at;
        } else {
            int rc = term_rho(jc, tc, psi, w, par, w->rho);
            if (rc)
                return rc;
            if (rho_out)
                memcpy(rho_out + tc->rho_at, w->rho,
                       tc->d * tc->d * sizeof *w->rho);
            rho = w->rho;
        }
        double v;
        if (rng && jc->shots > 0) {
            v = sample_term(tc, rho, jc->shots, rng);
        } else {
            v = 0; /* Re Tr(rho H) = Re sum_ij rho_ij H_ji */
            for (size_t i = 0; i < tc->d; i++)
                for (size_t j = 0; j < tc->d; j++)
                    v += creal(cmul(rho[i * tc->d + j], tc->h[j * tc->d + i]));
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
        par_run(tc->k == 1 ? ta1_range : ta_range, &K, jc->dim >> tc->k,
                jc->dim, par);
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
                                double *e, cplx *keep)
{
    const double *x = sample_inputs(jc, b);
    cplx *psi = keep ? keep : w->psi;
    init_state(jc, b, psi);
    run_ops(jc, jc->first, jc->c->n_ops, x, no_shift, psi, 1, par);
    qd_rng r;
    if (jc->shots > 0)
        sample_rng(jc, b, &r);
    return measure(jc, psi, w, par, jc->shots > 0 ? &r : NULL, e, NULL);
}

/* Adjoint gradient of one sample. gw_b: n_w partials (or NULL), gx_b: row of
 * g_inputs (or NULL), rho_b: per-term rho block (or NULL). */
static int adjoint_sample(const jctx *jc, size_t b, const double *g, worker *w,
                          int par, double *gw_b, double *gx_b, cplx *rho_b,
                          cplx *cached)
{
    const double *x = sample_inputs(jc, b);
    cplx *psi = cached ? cached : w->psi, *lam = w->aux;
    int want_w = gw_b != NULL, want_x = gx_b != NULL;
    if (!cached) {
        init_state(jc, b, psi);
        run_ops(jc, jc->first, jc->c->n_ops, x, no_shift, psi, 1, par);
    }
    if (rho_b) {
        int rc = terms_rho(jc, psi, w, par, rho_b);
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
    const int blk = is_blocked(jc, 1);
    sweep_seg *sg = w->seg;
    sg->ng = 0;
    int rc = QD_OK;
    for (size_t k = jc->c->n_ops; k-- > stop && !rc;) {
        const qd_op *op = &jc->c->ops[k];
        if (!gate_has_matrix(op->gate))
            continue;
        int nd = needed_angles(jc, k, want_w, want_x, need);
        const pgate *pg = pre_gate(jc, k, nd ? PRE_FUSED : PRE_ADJ);
        if (blk && op_local(op, jc->n)) {
            int i = sg->ng++;
            if (!pg) {
                op_theta(jc, k, x, no_shift, theta);
                gate_prepare(jc->c, op, theta, jc->n, 1, 1, nd > 0, &sg->g[i]);
                pg = &sg->g[i];
            }
            sg->gp[i] = pg;
            sg->op[i] = k;
            sg->fused[i] = nd > 0;
            memcpy(sg->need[i], need, sizeof need);
            if (sg->ng == SV_SEG_MAX)
                rc = sweep_flush(jc, sg, psi, lam, par, gw_b, gx_b);
            continue;
        }
        rc = sweep_flush(jc, sg, psi, lam, par, gw_b, gx_b);
        if (rc)
            break;
        pgate one;
        if (!pg) {
            op_theta(jc, k, x, no_shift, theta);
            gate_prepare(jc->c, op, theta, jc->n, 1, 1, nd > 0, &one);
            pg = &one;
        }
        if (nd) {
            double acc[8] = {0};
            rc = pgate_fused(pg, psi, lam, jc->n, par, acc);
            if (!rc)
                pgate_grads(pg, acc, grad);
            for (uint32_t a = 0; a < op->n_angles && !rc; a++)
                if (need[a])
                    add_angle_grad(&op->angle[a], grad[a], gw_b, gx_b);
        } else {
            pgate_run(pg, psi, jc->n, par);
            pgate_run(pg, lam, jc->n, par);
        }
    }
    if (!rc)
        rc = sweep_flush(jc, sg, psi, lam, par, gw_b, gx_b);
    if (rc)
        return rc;
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
    if (rho_b) {
        int rc = terms_rho(jc, psi, w, par, rho_b);
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

static int dense_alloc(const jctx *jc, dense *dn)
{
    memset(dn, 0, sizeof *dn);
    sv *S = jc->S;
    size_t D = jc->dim;
    size_t blk = jc->job->batch < SV_DENSE_BLOCK ? jc->job->batch : SV_DENSE_BLOCK;
    if (blk == 0)
        blk = 1;
    dn->D = D;
    dn->U = sv_buf(S, BUF_U, D * D * sizeof *dn->U);
    dn->Ur = sv_buf(S, BUF_UR, D * D * sizeof *dn->Ur);
    dn->Ui = sv_buf(S, BUF_UI, D * D * sizeof *dn->Ui);
    dn->Pr = sv_buf(S, BUF_PR, blk * D * sizeof *dn->Pr);
    dn->Pi = sv_buf(S, BUF_PI, blk * D * sizeof *dn->Pi);
    if (!jc->prep)
        dn->A = sv_buf0(S, BUF_A, blk * D * sizeof *dn->A);
    if (!dn->U || !dn->Ur || !dn->Ui || !dn->Pr || !dn->Pi ||
        (!jc->prep && !dn->A))
        return QD_ERR_NOMEM;
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
/* Rows r0..r1 of the block starting at sample b0: Pr + i Pi = A U^T, two
 * real products. */
static void dense_states(const jctx *jc, const dense *dn, size_t b0, size_t r0,
                         size_t r1)
{
    size_t D = dn->D, lda;
    const double *A = dense_A(jc, dn, b0 + r0, &lda);
    int nb = (int)(r1 - r0);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, (int)D, (int)D,
                1.0, A, (int)lda, dn->Ur, (int)D, 0.0, dn->Pr + r0 * D, (int)D);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, (int)D, (int)D,
                1.0, A, (int)lda, dn->Ui, (int)D, 0.0, dn->Pi + r0 * D, (int)D);
}

/* The dense route splits a block of samples into groups of consecutive
 * samples, a partition that depends on the block size only. One parallel
 * region runs all groups; each group does its own small matrix products
 * (BLAS runs single-threaded inside the region) and its samples, so a
 * call has few synchronisation points, and per-group partial sums are
 * added in group order afterwards. */
#define SV_DENSE_GROUPS 16
#define SV_DENSE_GROUP_MIN 16

static size_t dense_ngroups(size_t nb)
{
    size_t g = (nb + SV_DENSE_GROUP_MIN - 1) / SV_DENSE_GROUP_MIN;
    return g < 1 ? 1 : g > SV_DENSE_GROUPS ? SV_DENSE_GROUPS : g;
}

#define SV_GROUP_LOOP(jc, nb, ws, ...)                                       \
    do {                                                                     \
        int err_ = QD_OK;                                                    \
        const size_t ng_ = dense_ngroups(nb);                                \
        const int bpar_ = (jc)->bpar;                                        \
        _Pragma("omp parallel for schedule(dynamic, 1) if (bpar_)")          \
        for (size_t gi = 0; gi < ng_; gi++) {                                \
            int seen_;                                                       \
            _Pragma("omp atomic read") seen_ = err_;                         \
            if (seen_)                                                       \
                continue;                                                    \
            const size_t r0 = (nb) * gi / ng_, r1 = (nb) * (gi + 1) / ng_;   \
            worker *w_ = &(ws)[bpar_ ? omp_get_thread_num() : 0];            \
            int rc_ = QD_OK;                                                 \
            __VA_ARGS__;                                                     \
            if (rc_) {                                                       \
                _Pragma("omp atomic write") err_ = rc_;                      \
            }                                                                \
        }                                                                    \
        if (err_)                                                            \
            rc = err_;                                                       \
    } while (0)

static void dense_row(const dense *dn, size_t r, cplx *psi)
{
    const double *pr = dn->Pr + r * dn->D, *pi = dn->Pi + r * dn->D;
    for (size_t i = 0; i < dn->D; i++)
        psi[i] = CMPLX(pr[i], pi[i]);
}

/* Loop over the samples of a block with first-error propagation: in
 * parallel over samples when jc->bpar, else serially (so that the kernels
 * may open their own parallel regions without nesting). */
#define SV_BATCH_LOOP(jc, nb, ws, ...)                                       \
    do {                                                                     \
        int err_ = QD_OK;                                                    \
        if ((jc)->bpar) {                                                    \
            _Pragma("omp parallel for schedule(dynamic, 4)")                 \
            for (size_t r_ = 0; r_ < (nb); r_++) {                           \
                int seen_;                                                   \
                _Pragma("omp atomic read") seen_ = err_;                     \
                if (seen_)                                                   \
                    continue;                                                \
                worker *w_ = &(ws)[omp_get_thread_num()];                    \
                int rc_ = QD_OK;                                             \
                __VA_ARGS__;                                                 \
                if (rc_) {                                                   \
                    _Pragma("omp atomic write") err_ = rc_;                  \
                }                                                            \
            }                                                                \
        } else {                                                             \
            for (size_t r_ = 0; r_ < (nb) && !err_; r_++) {                  \
                worker *w_ = &(ws)[0];                                       \
                int rc_ = QD_OK;                                             \
                __VA_ARGS__;                                                 \
                err_ = rc_;                                                  \
            }                                                                \
        }                                                                    \
        if (err_)                                                            \
            rc = err_;                                                       \
    } while (0)

/* expect rows [b0, b0+nb) from the dense states of the block. */
/* States and expect rows of samples [b0, b0 + nb) (one block). */
static int dense_forward_block(const jctx *jc, const dense *dn, worker *ws,
                               size_t b0, size_t nb, double *expect)
{
    int rc = QD_OK;
    SV_GROUP_LOOP(jc, nb, ws, {
        dense_states(jc, dn, b0, r0, r1);
        for (size_t r = r0; r < r1 && !rc_; r++) {
            size_t b = b0 + r;
            dense_row(dn, r, w_->psi);
            qd_rng rr;
            if (jc->shots > 0)
                sample_rng(jc, b, &rr);
            rc_ = measure(jc, w_->psi, w_, 0, jc->shots > 0 ? &rr : NULL,
                          expect + b * jc->n_out, NULL);
        }
    });
    return rc;
}

/* ------------------------------------------------------------------------
 * Forward-state cache
 * ---------------------------------------------------------------------- */

/* Keep the final states of this job? At most one extra state per thread,
 * or 16 MiB. */
static int fcache_eligible(const jctx *jc)
{
    size_t B = jc->job->batch, lim = (size_t)jc->nthreads * jc->dim;
    if (lim < ((size_t)1 << 20))
        lim = (size_t)1 << 20;
    if (jc->dense)
        return B <= SV_DENSE_BLOCK;
    return B * jc->dim <= lim;
}

/* Record the job's fingerprint (after a successful forward). */
static void fcache_store(sv *S, const jctx *jc)
{
    const qd_circuit *c = jc->c;
    const qd_sim_job *job = jc->job;
    size_t nx = job->batch * jc->n_in;
    void *ops = sv_buf(S, BUF_FP_OPS, c->n_ops * sizeof *c->ops);
    void *mats = sv_buf(S, BUF_FP_MATS, c->n_matrices * sizeof *c->matrices);
    void *w = sv_buf(S, BUF_FP_W, jc->n_w * sizeof(double));
    void *x = sv_buf(S, BUF_FP_X, nx * sizeof(double));
    S->fc.valid = 0;
    if (!ops || !mats || !w || !x)
        return;
    if (c->n_ops)
        memcpy(ops, c->ops, c->n_ops * sizeof *c->ops);
    if (c->n_matrices)
        memcpy(mats, c->matrices, c->n_matrices * sizeof *c->matrices);
    if (jc->n_w)
        memcpy(w, job->weights, jc->n_w * sizeof(double));
    if (nx)
        memcpy(x, job->inputs, nx * sizeof(double));
    fcache f = {1, jc->dense, c, c->n_ops, c->n_matrices, job->batch,
                c->n_wires, c->n_weights, c->n_inputs};
    S->fc = f;
}

static int fcache_match(const sv *S, const jctx *jc)
{
    const fcache *f = &S->fc;
    const qd_circuit *c = jc->c;
    const qd_sim_job *job = jc->job;
    if (!f->valid || f->dense != jc->dense || f->c != c || f->n_ops != c->n_ops ||
        f->n_mats != c->n_matrices || f->batch != job->batch ||
        f->n_wires != c->n_wires || f->n_w != c->n_weights ||
        f->n_in != c->n_inputs)
        return 0;
    size_t nx = job->batch * jc->n_in;
    return (!c->n_ops ||
            memcmp(S->buf[BUF_FP_OPS], c->ops, c->n_ops * sizeof *c->ops) == 0) &&
           (!c->n_matrices ||
            memcmp(S->buf[BUF_FP_MATS], c->matrices,
                   c->n_matrices * sizeof *c->matrices) == 0) &&
           (!jc->n_w ||
            memcmp(S->buf[BUF_FP_W], job->weights, jc->n_w * sizeof(double)) == 0) &&
           (!nx || memcmp(S->buf[BUF_FP_X], job->inputs, nx * sizeof(double)) == 0);
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
    S->fc.valid = 0;
    if (B == 0)
        goto done;
    int keep = fcache_eligible(&jc);
    cplx *fstates = NULL;
    if (keep && !jc.dense) {
        fstates = sv_buf(S, BUF_FSTATES, B * jc.dim * sizeof *fstates);
        keep = fstates != NULL;
    }
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
            rc = dense_forward_block(&jc, &dn, ws, b0, nb, expect);
        }
    } else {
        int par = !jc.bpar;
        jctx_prepare(&jc, 0);
        SV_BATCH_LOOP(&jc, B, ws, {
            rc_ = gates_forward_sample(&jc, r_, w_, par,
                                       expect + r_ * jc.n_out,
                                       keep ? fstates + r_ * jc.dim : NULL);
        });
    }
    if (rc) {
        rc = sv_err(&jc, rc, "forward failed: %s", qd_status_name(rc));
        goto done;
    }
    charge(S, &jc, B);
    rc = check_finite_out(&jc, expect, B * jc.n_out, "expectation");
    if (!rc && keep)
        fcache_store(S, &jc);
done:
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
    double *gwbuf = want_w ? sv_buf(S, BUF_GW, blk * jc->n_w * sizeof *gwbuf) : NULL;
    cplx *rhobuf = want_m ? sv_buf(S, BUF_RHO, blk * jc->rho_len * sizeof *rhobuf) : NULL;
    uint64_t *ex = sv_buf0(S, BUF_EX, blk * sizeof *ex);
    if ((want_w && !gwbuf) || (want_m && !rhobuf) || !ex) {
        rc = sv_err(jc, QD_ERR_NOMEM, "out of memory");
        goto out;
    }
    /* the final states of the forward pass of this very job, if kept */
    cplx *cached = S->diff == DIFF_ADJOINT && fcache_match(S, jc)
                       ? (cplx *)S->buf[BUF_FSTATES]
                       : NULL;
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
                rc_ = adjoint_sample(jc, b, gb, w_, par, gwb, gxb, rb,
                                     cached ? cached + b * jc->dim : NULL);
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
        Phr = sv_buf(S, BUF_PHR, blk * D * sizeof *Phr);
        Phi = sv_buf(S, BUF_PHI, blk * D * sizeof *Phi);
    }
    if (want_w && adjoint) {
        Xr = sv_buf0(S, BUF_XR, D * D * sizeof *Xr);
        Xi = sv_buf0(S, BUF_XI, D * D * sizeof *Xi);
        Xc = sv_buf(S, BUF_XC, D * D * sizeof *Xc);
    }
    if (want_m)
        rhobuf = sv_buf(S, BUF_RHO, blk * jc->rho_len * sizeof *rhobuf);
    if (!adjoint)
        eb = sv_buf(S, BUF_EB, blk * (jc->n_out + 1) * sizeof *eb);
    if ((need_phi && (!Phr || !Phi)) || (want_w && adjoint && (!Xr || !Xi || !Xc)) ||
        (want_m && !rhobuf) || (!adjoint && !eb)) {
        rc = sv_err(jc, QD_ERR_NOMEM, "out of memory for the dense route");
        goto out;
    }

    /* Pass 1 over the batch with the unshifted U: density matrices,
     * co-states phi_b, amplitude gradients and X = sum_b phi_b a_b^T. */
    /* U and the states of a single-block batch survive from the forward
     * pass of this very job when it was kept */
    int cached = fcache_match(S, jc);
    if (!cached)
        dense_build(jc, &dn, no_shift);
    int pass1 = want_m || need_phi || (want_x && S->diff == DIFF_FD);
    for (size_t b0 = 0; pass1 && b0 < B && !rc; b0 += blk) {
        size_t nb = B - b0 < blk ? B - b0 : blk;
        const size_t ng = dense_ngroups(nb);
        double *xpart = NULL;
        if (want_w && adjoint) {
            xpart = sv_buf(S, BUF_XPART, ng * 2 * D * D * sizeof *xpart);
            if (!xpart) {
                rc = sv_err(jc, QD_ERR_NOMEM, "out of memory for the dense route");
                break;
            }
        }
        SV_GROUP_LOOP(jc, nb, ws, {
            if (!cached)
                dense_states(jc, &dn, b0, r0, r1);
            for (size_t r = r0; r < r1 && !rc_; r++) {
                size_t b = b0 + r;
                const double *gb = g + b * jc->n_out;
                dense_row(&dn, r, w_->psi);
                if (want_m)
                    for (size_t t = 0; t < jc->n_terms && !rc_; t++)
                        rc_ = term_rho(jc, &jc->terms[t], w_->psi, w_, 0,
                                       rhobuf + r * jc->rho_len + jc->terms[t].rho_at);
                if (need_phi) {
                    costate(jc, w_->psi, gb, w_->aux, 0);
                    for (size_t i = 0; i < D; i++) {
                        Phr[r * D + i] = creal(w_->aux[i]);
                        Phi[r * D + i] = cimag(w_->aux[i]);
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
                        for (int sg = 0; sg < 2 && !rc_; sg++) {
                            double hs = sg == 0 ? h : -h;
                            for (size_t j = 0; j < D; j++)
                                w_->aux[j] = w_->psi[j] + hs * dn.U[j * D + i];
                            rc_ = measure(jc, w_->aux, w_, 0,
                                          jc->shots > 0 ? &rr : NULL, w_->e, NULL);
                            d += (sg == 0 ? 0.5 : -0.5) / h * dot_out(jc, gb, w_->e);
                        }
                        ga[i] = d;
                    }
                }
            }
            int m = (int)(r1 - r0);
            if (!rc_ && want_x && S->diff != DIFF_FD) {
                /* dL/da = 2 Re(U^dagger phi) = 2 (Phr Ur + Phi Ui) row-wise */
                double *C = gx + (b0 + r0) * jc->n_in + jc->prep_off;
                cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, (int)D,
                            (int)D, 2.0, Phr + r0 * D, (int)D, dn.Ur, (int)D, 0.0,
                            C, (int)jc->n_in);
                cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, (int)D,
                            (int)D, 2.0, Phi + r0 * D, (int)D, dn.Ui, (int)D, 1.0,
                            C, (int)jc->n_in);
            }
            if (!rc_ && xpart) {
                /* this group's part of X = sum_b phi_b a_b^T */
                size_t lda;
                const double *A = dense_A(jc, &dn, b0 + r0, &lda);
                double *xr = xpart + gi * 2 * D * D, *xi = xr + D * D;
                cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)D,
                            (int)D, m, 1.0, Phr + r0 * D, (int)D, A, (int)lda, 0.0,
                            xr, (int)D);
                cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)D,
                            (int)D, m, 1.0, Phi + r0 * D, (int)D, A, (int)lda, 0.0,
                            xi, (int)D);
            }
        });
        if (rc)
            break;
        if (want_m)
            add_gmats(jc, g, b0, nb, rhobuf, gm);
        if (xpart)
            for (size_t gi = 0; gi < ng; gi++) {
                const double *xr = xpart + gi * 2 * D * D, *xi = xr + D * D;
                for (size_t i = 0; i < D * D; i++) {
                    Xr[i] += xr[i];
                    Xi[i] += xi[i];
                }
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
                        /* sample streams are seeded per (shift, sample) */
                        SV_GROUP_LOOP(jc, nb, ws, {
                            dense_states(jc, &dn, b0, r0, r1);
                            for (size_t r = r0; r < r1 && !rc_; r++) {
                                size_t b = b0 + r;
                                dense_row(&dn, r, w_->psi);
                                qd_rng rr;
                                if (jc->shots > 0)
                                    qd_rng_seed(&rr, jc->shot_seed ^
                                                         (0x9e3779b97f4a7c15ull *
                                                          (k * 4 + a + 1) + (uint64_t)s),
                                                (uint64_t)b);
                                rc_ = measure(jc, w_->psi, w_, 0,
                                              jc->shots > 0 ? &rr : NULL, w_->e, NULL);
                                eb[r] = dot_out(jc, g + b * jc->n_out, w_->e);
                            }
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
        jctx_prepare(&jc, S->diff == DIFF_ADJOINT);
        rc = gates_backward(&jc, g_expect, g_weights, g_inputs, g_mats, &execs);
        if (!rc && S->diff != DIFF_ADJOINT)
            execs += B * shift_extra_execs(&jc, g_inputs && jc.n_in,
                                           g_mats && jc.rho_len);
    }
    /* the sweep and shift rules overwrite the kept states */
    S->fc.valid = 0;
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
    sv *S = self;
    if (!S)
        return;
    for (int i = 0; i < BUF_COUNT_; i++)
        free(S->buf[i]);
    free(S);
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
     "batch (gates may not read inputs); auto: dense when that is faster "
     "(n <= 7 and batch >= 4^(n-2))"},
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
