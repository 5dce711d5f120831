/*
 * Direct convolution for stride-1 layers with few input taps (a first
 * layer: C_in * k * k small), where im2col + GEMM is at its worst: the GEMM
 * has only C_in * k * k rows to contract over, and the column matrix is
 * k * k times the image. Here each output row is computed in blocks of 32
 * columns held in four 8-wide vector accumulators (GCC vector extensions;
 * the library's AVX-512 / AVX2 clones make them one register each), so the
 * multiply-adds run from registers with no copies. Backward uses the same
 * blocking for the weight gradient (dot products) and for the input
 * gradient (a correlation with the zero-padded output gradient).
 */
#include <string.h>

#include "nn_internal.h"

#if NN_HAVE_DIRECT_CONV

/* ISO C mode turns off multiply-add contraction; these kernels are made of
 * multiply-adds, and the AVX2 / AVX-512 clones have FMA instructions. */
#pragma GCC optimize("fp-contract=fast")

typedef double v8d __attribute__((vector_size(64)));

#define DB 32   /* output columns per block: four v8d */

/* Unaligned load. A macro, not a function: passing or returning 64-byte
 * vectors across calls is ABI-dependent (-Wpsabi) in baseline builds. */
#define ld(p)                                                                 \
    __extension__({                                                           \
        v8d v_;                                                               \
        memcpy(&v_, (p), sizeof v_);                                          \
        v_;                                                                   \
    })

static double hsum(const v8d *v)
{
    double s = 0.0;
    for (int i = 0; i < 8; i++)
        s += (*v)[i];
    return s;
}

static size_t round_up(size_t n, size_t m)
{
    return (n + m - 1) / m * m;
}

void nn_direct_geom_init(nn_direct_geom *g, size_t cin, size_t h, size_t w,
                         size_t co, size_t k, size_t pad)
{
    memset(g, 0, sizeof *g);
    g->cin = cin, g->h = h, g->w = w, g->co = co, g->k = k, g->pad = pad;
    g->ho = h + 2 * pad - k + 1;
    g->wo = w + 2 * pad - k + 1;
    /* padded input: rows h + 2 pad, row length covering whole blocks */
    g->hp = h + 2 * pad;
    g->wp = round_up(g->wo, DB) + k - 1;
    if (g->wp < w + 2 * pad)
        g->wp = w + 2 * pad;
    /* output gradient with blocked rows (zero tail) for the weights */
    g->gs = round_up(g->wo, DB);
    /* output gradient padded by k-1 on every side for the input */
    g->gqh = g->ho + 2 * (k - 1);
    g->gqw = round_up(w, DB) + pad + k - 1;
    if (g->gqw < g->wo + 2 * (k - 1))
        g->gqw = g->wo + 2 * (k - 1);
}

size_t nn_direct_scratch(const nn_direct_geom *g)
{
    /* + slack: a tap group of weight_grad may read KB - 1 past a plane */
    return g->cin * g->hp * g->wp + 8 + g->co * g->ho * g->gs +
           g->co * g->gqh * g->gqw;
}

/* xpad = x with `pad` zeros around each plane, rows wp long. */
static void pad_input(const nn_direct_geom *g, const double *x, double *xp)
{
    memset(xp, 0, g->cin * g->hp * g->wp * sizeof *xp);
    for (size_t c = 0; c < g->cin; c++)
        for (size_t y = 0; y < g->h; y++)
            memcpy(xp + (c * g->hp + y + g->pad) * g->wp + g->pad,
                   x + (c * g->h + y) * g->w, g->w * sizeof *x);
}

/* Output channels are taken three at a time (12 accumulators) so each
 * loaded input vector serves three multiply-adds. */
#define CB 3
NN_VECTOR_CLONES
static void forward_rows(const nn_direct_geom *g, const double *W,
                         const double *bias, const double *xp, double *out)
{
    const size_t k = g->k, wo = g->wo, kk = g->cin * k * k;
    for (size_t c0 = 0; c0 < g->co; c0 += CB) {
        const size_t nc = g->co - c0 < CB ? g->co - c0 : CB;
        for (size_t oy = 0; oy < g->ho; oy++)
            for (size_t x0 = 0; x0 < wo; x0 += DB) {
                v8d a[CB][4];
                for (size_t j = 0; j < CB; j++) {
                    const double b0 =
                        bias && j < nc ? bias[c0 + j] : 0.0;
                    for (int q = 0; q < 4; q++)
                        a[j][q] = (v8d){0} + b0;
                }
                for (size_t ci = 0; ci < g->cin; ci++)
                    for (size_t ky = 0; ky < k; ky++) {
                        const double *xr =
                            xp + (ci * g->hp + oy + ky) * g->wp + x0;
                        /* rows of the CB channels' weights for this tap
                         * row; a missing channel reuses channel c0 and is
                         * discarded */
                        const double *wr[CB];
                        for (size_t j = 0; j < CB; j++)
                            wr[j] = W + (c0 + (j < nc ? j : 0)) * kk +
                                    (ci * k + ky) * k;
                        for (size_t kx = 0; kx < k; kx++) {
                            const v8d x0v = ld(xr + kx), x1v = ld(xr + kx + 8);
                            const v8d x2v = ld(xr + kx + 16);
                            const v8d x3v = ld(xr + kx + 24);
#pragma GCC unroll 3
                            for (size_t j = 0; j < CB; j++) {
                                const double w = wr[j][kx];
                                a[j][0] += w * x0v;
                                a[j][1] += w * x1v;
                                a[j][2] += w * x2v;
                                a[j][3] += w * x3v;
                            }
                        }
                    }
                size_t n = wo - x0 < DB ? wo - x0 : DB;
                for (size_t j = 0; j < nc; j++) {
                    double blk[DB];
                    memcpy(blk, a[j], sizeof blk);
                    memcpy(out + ((c0 + j) * g->ho + oy) * wo + x0, blk,
                           n * sizeof *blk);
                }
            }
    }
}

void nn_direct_forward(const nn_direct_geom *g, const double *W,
                       const double *bias, const double *x, double *out,
                       double *scratch)
{
    pad_input(g, x, scratch);
    forward_rows(g, W, bias, scratch, out);
}

/* gw[c][ci][ky][kx] += sum_{oy, ox} gb[c][oy][ox] * xp[ci][oy+ky][ox+kx],
 * gb holding rows of gs columns with zeros past wo. Taps are taken five at
 * a time (20 accumulators) so each loaded gradient vector serves five
 * multiply-adds; a group reaching past k computes throw-away sums from the
 * scratch slack. */
#define KB 5
NN_VECTOR_CLONES
static void weight_grad(const nn_direct_geom *g, const double *xp,
                        const double *gb, double *gw)
{
    const size_t k = g->k, nb = g->gs / DB;
    for (size_t c = 0; c < g->co; c++)
        for (size_t ci = 0; ci < g->cin; ci++)
            for (size_t ky = 0; ky < k; ky++)
                for (size_t kx0 = 0; kx0 < k; kx0 += KB) {
                    v8d s[KB][4];
                    memset(s, 0, sizeof s);
                    for (size_t oy = 0; oy < g->ho; oy++) {
                        const double *gr = gb + (c * g->ho + oy) * g->gs;
                        const double *xr =
                            xp + (ci * g->hp + oy + ky) * g->wp + kx0;
                        for (size_t b = 0; b < nb; b++) {
                            const double *gq = gr + b * DB, *xq = xr + b * DB;
                            const v8d g0 = ld(gq), g1 = ld(gq + 8);
                            const v8d g2 = ld(gq + 16), g3 = ld(gq + 24);
#pragma GCC unroll 5
                            for (size_t t = 0; t < KB; t++) {
                                s[t][0] += g0 * ld(xq + t);
                                s[t][1] += g1 * ld(xq + t + 8);
                                s[t][2] += g2 * ld(xq + t + 16);
                                s[t][3] += g3 * ld(xq + t + 24);
                            }
                        }
                    }
                    double *w = gw + ((c * g->cin + ci) * k + ky) * k;
                    for (size_t t = 0; t < KB && kx0 + t < k; t++) {
                        const v8d u = (s[t][0] + s[t][1]) + (s[t][2] + s[t][3]);
                        w[kx0 + t] += hsum(&u);
                    }
                }
}

/* gx[ci][iy][ix] (+)= sum W[c][ci][ky][kx] * gq[c][iy+p-ky+k-1][ix+p-kx+k-1]
 * with gq the output gradient padded by k-1 zeros on every side. */
NN_VECTOR_CLONES
static void input_grad(const nn_direct_geom *g, const double *W,
                       const double *gq, double *gx, int add)
{
    const size_t k = g->k, p = g->pad, w = g->w;
    for (size_t ci = 0; ci < g->cin; ci++)
        for (size_t iy = 0; iy < g->h; iy++)
            for (size_t x0 = 0; x0 < w; x0 += DB) {
                v8d a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
                for (size_t c = 0; c < g->co; c++)
                    for (size_t ky = 0; ky < k; ky++) {
                        const double *gr =
                            gq + (c * g->gqh + iy + p + k - 1 - ky) * g->gqw +
                            x0 + p + k - 1;
                        const double *wr = W + ((c * g->cin + ci) * k + ky) * k;
                        for (size_t kx = 0; kx < k; kx++) {
                            const double wv = wr[kx];
                            a0 += wv * ld(gr - kx);
                            a1 += wv * ld(gr - kx + 8);
                            a2 += wv * ld(gr - kx + 16);
                            a3 += wv * ld(gr - kx + 24);
                        }
                    }
                double blk[DB];
                memcpy(blk, &a0, sizeof a0);
                memcpy(blk + 8, &a1, sizeof a1);
                memcpy(blk + 16, &a2, sizeof a2);
                memcpy(blk + 24, &a3, sizeof a3);
                double *d = gx + (ci * g->h + iy) * w + x0;
                size_t n = w - x0 < DB ? w - x0 : DB;
                if (add)
                    for (size_t j = 0; j < n; j++)
                        d[j] += blk[j];
                else
                    memcpy(d, blk, n * sizeof *blk);
            }
}

void nn_direct_backward(const nn_direct_geom *g, const double *W,
                        const double *x, const double *go, double *gw,
                        double *gx, int add, double *scratch)
{
    double *xp = scratch;
    double *gb = xp + g->cin * g->hp * g->wp + 8;
    double *gq = gb + g->co * g->ho * g->gs;
    const size_t k = g->k;
    if (gw) {
        pad_input(g, x, xp);
        memset(gb, 0, g->co * g->ho * g->gs * sizeof *gb);
        for (size_t r = 0; r < g->co * g->ho; r++)
            memcpy(gb + r * g->gs, go + r * g->wo, g->wo * sizeof *go);
        weight_grad(g, xp, gb, gw);
    }
    if (gx) {
        memset(gq, 0, g->co * g->gqh * g->gqw * sizeof *gq);
        for (size_t c = 0; c < g->co; c++)
            for (size_t oy = 0; oy < g->ho; oy++)
                memcpy(gq + (c * g->gqh + oy + k - 1) * g->gqw + k - 1,
                       go + (c * g->ho + oy) * g->wo, g->wo * sizeof *go);
        input_grad(g, W, gq, gx, add);
    }
}

#else
/* keeps the translation unit non-empty */
typedef int nn_direct_conv_unavailable;
#endif /* NN_HAVE_DIRECT_CONV */
