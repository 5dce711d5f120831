/*
 * conv2d: im2col + GEMM, one GEMM per image with the batch split across
 * OpenMP threads (BLAS runs single-threaded inside the parallel region).
 * Per-image GEMMs write NCHW output in place, so no transposes are needed,
 * and each image's column matrix stays in cache between im2col and GEMM
 * (measured faster than one GEMM over several images). 1x1 stride-1
 * unpadded convolutions use the input as the column matrix; stride-1
 * layers with few taps use the direct convolution of conv_direct.c.
 *
 * Also here: conv2d -> relu -> maxpool2d fused into one pass per image.
 *
 * Weight layout (PyTorch): out_channels x in_channels x k x k, then bias.
 */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn_internal.h"

typedef struct conv_st {
    size_t cout, k, stride, pad;
    int bias;
    nn_init init;
    size_t K, HWo;         /* rows of the column matrix, output pixels */
    int direct;            /* 1x1, stride 1, no padding: cols = input */
    int use_direct;        /* direct convolution (conv_direct.c) */
    nn_direct_geom dg;
    double *ws;            /* per-thread scratch */
    size_t ws_cap;
    double *acc;           /* per-chunk gradient slots */
    size_t acc_cap;
} conv_st;

/* Padding "N" or "fit:N" (the smallest padding giving an N x N output). */
static int parse_padding(nn_layer *l, conv_st *s, qd_error *err)
{
    const char *txt = nn_cfg_str(l, "padding");
    const nn_shape in = l->in_shape[0];
    char *end = NULL;
    if (txt && strncmp(txt, "fit:", 4) == 0) {
        long n = strtol(txt + 4, &end, 10);
        if (end == txt + 4 || *end || n < 1 || n > 65536)
            return nn_layer_error(l, "padding", err, QD_ERR_INVALID,
                                  "padding '%s': expected fit:N with N in "
                                  "[1, 65536]", txt);
        for (size_t p = 0; p <= s->k + (size_t)n * s->stride; p++) {
            if (in.h + 2 * p < s->k || in.w + 2 * p < s->k)
                continue;
            size_t ho = (in.h + 2 * p - s->k) / s->stride + 1;
            size_t wo = (in.w + 2 * p - s->k) / s->stride + 1;
            if (ho == (size_t)n && wo == (size_t)n) {
                s->pad = p;
                return QD_OK;
            }
            if (ho > (size_t)n && wo > (size_t)n)
                break;
        }
        return nn_layer_error(l, "padding", err, QD_ERR_INVALID,
                              "padding fit:%ld: no padding turns the %zu x "
                              "%zu input into a %ld x %ld output with kernel "
                              "%zu, stride %zu", n, in.h, in.w, n, n, s->k,
                              s->stride);
    }
    long p = txt ? strtol(txt, &end, 10) : -1;
    if (!txt || end == txt || *end || p < 0 || p > 1024)
        return nn_layer_error(l, "padding", err, QD_ERR_INVALID,
                              "padding '%s': expected an integer in [0, 1024]"
                              " or fit:N", txt ? txt : "?");
    s->pad = (size_t)p;
    return QD_OK;
}

static int conv_setup(nn_layer *l, const nn_build *b, qd_error *err)
{
    (void)b;
    conv_st *s = calloc(1, sizeof *s);
    if (!s)
        return QD_ERR_NOMEM;
    l->st = s;
    long long v;
    int rc;
    if ((rc = nn_cfg_int(l, "out_channels", &v, err)))
        return rc;
    s->cout = (size_t)v;
    if ((rc = nn_cfg_int(l, "kernel", &v, err)))
        return rc;
    s->k = (size_t)v;
    if ((rc = nn_cfg_int(l, "stride", &v, err)))
        return rc;
    s->stride = (size_t)v;
    if ((rc = nn_cfg_bool(l, "bias", &s->bias, err)) ||
        (rc = nn_cfg_init(l, &s->init, err)) ||
        (rc = parse_padding(l, s, err)))
        return rc;
    const nn_shape in = l->in_shape[0];
    if (in.h + 2 * s->pad < s->k || in.w + 2 * s->pad < s->k) {
        if (s->pad)
            return nn_layer_error(l, NULL, err, QD_ERR_INVALID,
                                  "input has %zu channels x %zu x %zu, "
                                  "smaller than kernel %zu even with "
                                  "padding %zu", in.c, in.h, in.w, s->k,
                                  s->pad);
        return nn_layer_error(l, NULL, err, QD_ERR_INVALID,
                              "input has %zu channels x %zu x %zu, smaller "
                              "than kernel %zu", in.c, in.h, in.w, s->k);
    }
    l->out.c = s->cout;
    l->out.h = (in.h + 2 * s->pad - s->k) / s->stride + 1;
    l->out.w = (in.w + 2 * s->pad - s->k) / s->stride + 1;
    s->K = in.c * s->k * s->k;
    s->HWo = l->out.h * l->out.w;
    s->direct = s->k == 1 && s->stride == 1 && s->pad == 0;
    /* few taps and wide rows: im2col + GEMM is at its worst there */
    s->use_direct = NN_HAVE_DIRECT_CONV && !s->direct && s->stride == 1 &&
                    s->K <= 64 && l->out.w >= 16;
    if (s->use_direct)
        nn_direct_geom_init(&s->dg, in.c, in.h, in.w, s->cout, s->k, s->pad);
    nn_add_block(l, "weight", s->cout * s->K);
    if (s->bias)
        nn_add_block(l, "bias", s->cout);
    return QD_OK;
}

static int conv_init(nn_layer *l, qd_rng *rng, double *p, qd_error *err)
{
    (void)err;
    conv_st *s = l->st;
    nn_init_fill(s->init, rng, s->K, s->cout * s->k * s->k, p,
                 s->cout * s->K, p + s->cout * s->K, s->bias ? s->cout : 0);
    return QD_OK;
}

/* Valid output range [lo, hi) of a tap: 0 <= o*st + t - p < n. */
static void tap_range(size_t t, size_t p, size_t st, size_t n, size_t no,
                      size_t *lo, size_t *hi)
{
    size_t l = t >= p ? 0 : (p - t + st - 1) / st;
    size_t h = (n + p - t + st - 1) / st;
    if (h > no)
        h = no;
    if (l > h)
        l = h;
    *lo = l;
    *hi = h;
}

/* cols[(c, ky, kx)][oy * Wo + ox] = x[c][oy*s + ky - p][ox*s + kx - p]
 * (0 outside). Bounds are worked out per tap, not per row, and a tap whose
 * rows are whole (stride 1, no clipping) is a plain 2-D block copy. */
NN_VECTOR_CLONES
static void im2col(const conv_st *s, nn_shape in, size_t Ho, size_t Wo,
                   const double *x, double *cols)
{
    const size_t k = s->k, st = s->stride, p = s->pad, H = in.h, W = in.w;
    const size_t HWo = Ho * Wo;
    for (size_t ky = 0; ky < k; ky++) {
        size_t oy_lo, oy_hi;
        tap_range(ky, p, st, H, Ho, &oy_lo, &oy_hi);
        for (size_t kx = 0; kx < k; kx++) {
            size_t lo, hi;
            tap_range(kx, p, st, W, Wo, &lo, &hi);
            for (size_t c = 0; c < in.c; c++) {
                double *row = cols + ((c * k + ky) * k + kx) * HWo;
                memset(row, 0, oy_lo * Wo * sizeof *row);
                memset(row + oy_hi * Wo, 0, (Ho - oy_hi) * Wo * sizeof *row);
                /* input row of oy_lo; columns are indexed ox*st + kx - p,
                 * non-negative for ox >= lo */
                const double *src = x + (c * H + oy_lo * st + ky - p) * W;
                double *d = row + oy_lo * Wo;
                if (st == 1 && lo == 0 && hi == Wo) {
                    const double *s0 = src + kx - p;
                    for (size_t oy = oy_lo; oy < oy_hi; oy++) {
                        for (size_t ox = 0; ox < Wo; ox++)
                            d[ox] = s0[ox];
                        d += Wo;
                        s0 += W;
                    }
                    continue;
                }
                for (size_t oy = oy_lo; oy < oy_hi; oy++) {
                    for (size_t ox = 0; ox < lo; ox++)
                        d[ox] = 0.0;
                    for (size_t ox = lo; ox < hi; ox++)
                        d[ox] = src[ox * st + kx - p];
                    for (size_t ox = hi; ox < Wo; ox++)
                        d[ox] = 0.0;
                    d += Wo;
                    src += st * W;
                }
            }
        }
    }
}

/* The adjoint of im2col: g_x += scatter(g_cols). */
NN_VECTOR_CLONES
static void col2im_add(const conv_st *s, nn_shape in, size_t Ho, size_t Wo,
                       const double *gcols, double *gx)
{
    const size_t k = s->k, st = s->stride, p = s->pad, H = in.h, W = in.w;
    const size_t HWo = Ho * Wo;
    for (size_t ky = 0; ky < k; ky++) {
        size_t oy_lo, oy_hi;
        tap_range(ky, p, st, H, Ho, &oy_lo, &oy_hi);
        for (size_t kx = 0; kx < k; kx++) {
            size_t lo, hi;
            tap_range(kx, p, st, W, Wo, &lo, &hi);
            for (size_t c = 0; c < in.c; c++) {
                const double *g = gcols + ((c * k + ky) * k + kx) * HWo +
                                  oy_lo * Wo;
                double *d = gx + (c * H + oy_lo * st + ky - p) * W;
                if (st == 1) {
                    for (size_t oy = oy_lo; oy < oy_hi; oy++) {
                        double *d0 = d + kx - p + lo;
                        const double *g0 = g + lo;
                        for (size_t ox = 0; ox < hi - lo; ox++)
                            d0[ox] += g0[ox];
                        d += W;
                        g += Wo;
                    }
                    continue;
                }
                for (size_t oy = oy_lo; oy < oy_hi; oy++) {
                    for (size_t ox = lo; ox < hi; ox++)
                        d[ox * st + kx - p] += g[ox];
                    d += st * W;
                    g += Wo;
                }
            }
        }
    }
}

/* ---- one image at a time: the building blocks of both loops ---- */

/* out_b = W * cols(x_b) + bias, Co x HWo. */
static void image_forward(const conv_st *s, nn_shape is, nn_shape os,
                          const double *W, const double *bias,
                          const double *xb, double *cols, double *ob)
{
    const size_t K = s->K, HWo = s->HWo, Co = s->cout;
#if NN_HAVE_DIRECT_CONV
    if (s->use_direct) {
        nn_direct_forward(&s->dg, W, bias, xb, ob, cols);
        return;
    }
#endif
    const double *src = xb;
    if (!s->direct) {
        im2col(s, is, os.h, os.w, xb, cols);
        src = cols;
    }
    double beta = 0.0;
    if (bias) {
        for (size_t c = 0; c < Co; c++)
            for (size_t j = 0; j < HWo; j++)
                ob[c * HWo + j] = bias[c];
        beta = 1.0;
    }
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)Co, (int)HWo,
                (int)K, 1.0, W, (int)K, src, (int)HWo, beta, ob, (int)HWo);
}

/* Images are handed to threads in fixed chunks of CHUNK, dynamically (a
 * thread preempted by another process does not hold the others up). Each
 * chunk accumulates its parameter gradient in its own slot and the slots
 * are summed in chunk order, so the result depends neither on the thread
 * count nor on which thread ran which chunk. */
#define CHUNK 16

static size_t n_chunks(size_t batch)
{
    return (batch + CHUNK - 1) / CHUNK;
}

/* A slot: the weight gradient accumulated transposed, K x Co (cols * g^T:
 * M = K, N = Co suits BLAS better than g * cols^T for few channels), then
 * the bias gradient (Co). */
static size_t slot_size(const conv_st *s)
{
    return s->K * s->cout + s->cout;
}

/* Per-thread scratch of one image: the column matrix, or what the direct
 * convolution needs. */
static size_t ncols(const conv_st *s)
{
#if NN_HAVE_DIRECT_CONV
    if (s->use_direct)
        return nn_direct_scratch(&s->dg);
#endif
    return s->direct ? 0 : s->K * s->HWo;
}

/* want_p: accumulate the weight gradient into gwT (transposed; natural
 * layout for the direct convolution), and the bias gradient into gb unless
 * the caller sums it itself (want_p == 2). */
static void image_backward(const conv_st *s, nn_shape is, nn_shape os,
                           const double *W, const double *xb,
                           const double *go, int want_p, double *gxb,
                           int add, double *cols, double *gcols,
                           double *gwT, double *gb)
{
    const size_t K = s->K, HWo = s->HWo, Co = s->cout;
    const size_t in_sz = nn_shape_size(is);
#if NN_HAVE_DIRECT_CONV
    if (s->use_direct) {
        nn_direct_backward(&s->dg, W, xb, go, want_p ? gwT : NULL, gxb, add,
                           cols);
        for (size_t c = 0; want_p == 1 && c < Co; c++) {
            double sum = 0.0;
            for (size_t j = 0; j < HWo; j++)
                sum += go[c * HWo + j];
            gb[c] += sum;
        }
        return;
    }
#endif
    if (want_p) {
        const double *src = xb;
        if (!s->direct) {
            im2col(s, is, os.h, os.w, xb, cols);
            src = cols;
        }
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)K, (int)Co,
                    (int)HWo, 1.0, src, (int)HWo, go, (int)HWo, 1.0, gwT,
                    (int)Co);
        for (size_t c = 0; want_p == 1 && c < Co; c++) {
            double sum = 0.0;
            for (size_t j = 0; j < HWo; j++)
                sum += go[c * HWo + j];
            gb[c] += sum;
        }
    }
    if (!gxb)
        return;
    if (s->direct) {
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)K,
                    (int)HWo, (int)Co, 1.0, W, (int)K, go, (int)HWo,
                    add ? 1.0 : 0.0, gxb, (int)HWo);
        return;
    }
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)K, (int)HWo,
                (int)Co, 1.0, W, (int)K, go, (int)HWo, 0.0, gcols,
                (int)HWo);
    if (!add)
        memset(gxb, 0, in_sz * sizeof *gxb);
    col2im_add(s, is, os.h, os.w, gcols, gxb);
}

/* Sum the chunk slots into g_p (weight Co x K, then bias) in chunk order. */
static void reduce_grads(const conv_st *s, size_t chunks, double *g_p)
{
    const size_t K = s->K, Co = s->cout, slot = slot_size(s);
    memset(g_p, 0, (Co * K + (s->bias ? Co : 0)) * sizeof *g_p);
    for (size_t ch = 0; ch < chunks; ch++) {
        const double *gwT = s->acc + ch * slot, *gb = gwT + K * Co;
        if (s->use_direct)   /* natural layout */
            for (size_t i = 0; i < Co * K; i++)
                g_p[i] += gwT[i];
        else
            for (size_t c = 0; c < Co; c++)
                for (size_t k = 0; k < K; k++)
                    g_p[c * K + k] += gwT[k * Co + c];
        if (s->bias)
            for (size_t c = 0; c < Co; c++)
                g_p[Co * K + c] += gb[c];
    }
}

static int par_worth(size_t batch, const conv_st *s)
{
    return batch > 1 && batch * s->cout * s->K * s->HWo >= NN_OMP_MIN_WORK;
}

/* Per-thread scratch (extra doubles per thread) and chunk slots. */
static int reserve_bwd(conv_st *s, size_t batch, size_t per, int want_p)
{
    const size_t nt = (size_t)omp_get_max_threads();
    if (nn_reserve(&s->ws, &s->ws_cap, nt * per))
        return QD_ERR_NOMEM;
    if (want_p &&
        nn_reserve(&s->acc, &s->acc_cap, n_chunks(batch) * slot_size(s)))
        return QD_ERR_NOMEM;
    return QD_OK;
}

static int conv_forward(nn_layer *l, const double *p, size_t batch,
                        const double *const *in, double *out, qd_error *err)
{
    conv_st *s = l->st;
    const nn_shape is = l->in_shape[0], os = l->out;
    const size_t in_sz = nn_shape_size(is), out_sz = nn_shape_size(os);
    const double *W = p, *bias = s->bias ? p + s->cout * s->K : NULL;
    const int nt = omp_get_max_threads();
    const size_t per = s->direct ? 0 : s->K * s->HWo;
    if (nn_reserve(&s->ws, &s->ws_cap, (size_t)nt * per))
        return nn_layer_rt_error(l, err, QD_ERR_NOMEM, "out of memory");
    const double *x = in[0];
#pragma omp parallel num_threads(nt) if (par_worth(batch, s))
    {
        double *cols = s->ws + (size_t)omp_get_thread_num() * per;
#pragma omp for schedule(dynamic, CHUNK)
        for (size_t b = 0; b < batch; b++)
            image_forward(s, is, os, W, bias, x + b * in_sz, cols,
                          out + b * out_sz);
    }
    return QD_OK;
}

static int conv_backward(nn_layer *l, const double *p, size_t batch,
                         const double *const *in, const double *out,
                         const double *g_out, double *g_p,
                         double *const *g_in, const int *acc, qd_error *err)
{
    (void)out;
    conv_st *s = l->st;
    const nn_shape is = l->in_shape[0], os = l->out;
    const size_t in_sz = nn_shape_size(is), out_sz = nn_shape_size(os);
    double *gx = g_in[0];
    const int add = acc[0];
    const size_t per = 2 * ncols(s), slot = slot_size(s);
    const size_t chunks = n_chunks(batch);
    if (reserve_bwd(s, batch, per, g_p != NULL))
        return nn_layer_rt_error(l, err, QD_ERR_NOMEM, "out of memory");
    const double *x = in[0];
#pragma omp parallel num_threads(omp_get_max_threads()) \
    if (par_worth(batch, s))
    {
        double *cols = s->ws + (size_t)omp_get_thread_num() * per;
        double *gcols = cols + ncols(s);
#pragma omp for schedule(dynamic, 1)
        for (size_t ch = 0; ch < chunks; ch++) {
            double *gwT = g_p ? s->acc + ch * slot : NULL;
            double *gb = g_p ? gwT + s->K * s->cout : NULL;
            if (g_p)
                memset(gwT, 0, slot * sizeof *gwT);
            size_t end = (ch + 1) * CHUNK < batch ? (ch + 1) * CHUNK : batch;
            for (size_t b = ch * CHUNK; b < end; b++)
                image_backward(s, is, os, p, x + b * in_sz,
                               g_out + b * out_sz, g_p != NULL,
                               gx ? gx + b * in_sz : NULL, add, cols, gcols,
                               gwT, gb);
        }
    }
    if (g_p)
        reduce_grads(s, chunks, g_p);
    return QD_OK;
}

/* ---- conv2d -> relu -> maxpool2d, fused ----
 *
 * Per image, the convolution output stays in per-thread scratch and only
 * the pooled output reaches memory, with the position of each window's
 * maximum, or -1 where the ReLU clips it (relu and max commute, and a
 * clipped maximum passes no gradient). Backward rebuilds the convolution's
 * output gradient from those positions in scratch. This removes every full
 * pass over the largest activations of a LeNet-style trunk.
 *
 * Frozen pieces (model.h): those positions are all the block's pieces (a
 * clipped window outputs 0 and passes no gradient wherever its maximum is).
 * RECORD keeps a copy in the pool layer; REPLAY puts it back for backward
 * and outputs conv[position] + bias, or 0 where recorded clipped. */

/* REPLAY forward: gather at the recorded positions. */
static int conv_relu_pool_replay(nn_layer *conv, nn_layer *pool,
                                 const double *p, size_t batch,
                                 const double *x, double *out, qd_error *err)
{
    conv_st *s = conv->st;
    const nn_shape is = conv->in_shape[0], os = conv->out;
    const size_t in_sz = nn_shape_size(is), p_sz = nn_shape_size(pool->out);
    const size_t HWo = s->HWo, Co = s->cout, plane = p_sz / Co;
    const int32_t *arg = nn_pool_replay(pool, batch * p_sz);
    const double *W = p, *bias = s->bias ? p + Co * s->K : NULL;
    const int nt = omp_get_max_threads();
    const size_t ncol = s->direct ? 0 : s->K * HWo, per = ncol + Co * HWo;
    if (!arg)
        return nn_layer_rt_error(conv, err, QD_ERR_NOMEM,
                                 "out of memory, or no pieces recorded for a "
                                 "batch of %zu", batch);
    if (nn_reserve(&s->ws, &s->ws_cap, (size_t)nt * per))
        return nn_layer_rt_error(conv, err, QD_ERR_NOMEM, "out of memory");
#pragma omp parallel num_threads(nt) if (par_worth(batch, s))
    {
        double *cols = s->ws + (size_t)omp_get_thread_num() * per;
        double *co = cols + ncol;
#pragma omp for schedule(dynamic, CHUNK)
        for (size_t b = 0; b < batch; b++) {
            image_forward(s, is, os, W, NULL, x + b * in_sz, cols, co);
            for (size_t c = 0; c < Co; c++) {
                const int32_t *ac = arg + b * p_sz + c * plane;
                double *oc = out + b * p_sz + c * plane;
                const double bc = bias ? bias[c] : 0.0;
                for (size_t j = 0; j < plane; j++)
                    oc[j] = ac[j] >= 0 ? co[ac[j]] + bc : 0.0;
            }
        }
    }
    return QD_OK;
}

int nn_conv_relu_pool_forward(nn_layer *conv, nn_layer *pool,
                              const double *p, size_t batch, const double *x,
                              double *out, qd_error *err)
{
    if (*pool->pieces == QD_PIECES_REPLAY)
        return conv_relu_pool_replay(conv, pool, p, batch, x, out, err);
    conv_st *s = conv->st;
    const nn_shape is = conv->in_shape[0], os = conv->out, ps = pool->out;
    const size_t in_sz = nn_shape_size(is), p_sz = nn_shape_size(ps);
    const size_t HWo = s->HWo, Co = s->cout;
    size_t k, st;
    nn_pool_geometry(pool, &k, &st);
    int32_t *arg = nn_pool_argmax(pool, batch * p_sz);
    const double *W = p, *bias = s->bias ? p + Co * s->K : NULL;
    const int nt = omp_get_max_threads();
    const size_t ncol = s->direct ? 0 : s->K * HWo, per = ncol + Co * HWo;
    if (!arg || nn_reserve(&s->ws, &s->ws_cap, (size_t)nt * per))
        return nn_layer_rt_error(conv, err, QD_ERR_NOMEM, "out of memory");
#pragma omp parallel num_threads(nt) if (par_worth(batch, s))
    {
        double *cols = s->ws + (size_t)omp_get_thread_num() * per;
        double *co = cols + ncol;
#pragma omp for schedule(dynamic, CHUNK)
        for (size_t b = 0; b < batch; b++) {
            /* the bias is constant over a window: added after the max */
            image_forward(s, is, os, W, NULL, x + b * in_sz, cols, co);
            double *ob = out + b * p_sz;
            int32_t *ab = arg + b * p_sz;
            for (size_t c = 0; c < Co; c++) {
                const double *pl = co + c * HWo;
                const double bc = bias ? bias[c] : 0.0;
                double *oc = ob + c * ps.h * ps.w;
                int32_t *ac = ab + c * ps.h * ps.w;
                for (size_t oy = 0; oy < ps.h; oy++) {
                    const double *r0 = pl + oy * st * os.w;
                    for (size_t ox = 0; ox < ps.w; ox++) {
                        size_t best = ox * st;
                        double m = r0[best];
                        if (k == 2) {
                            /* LeNet's 2 x 2 windows, branch-free (the
                             * comparisons are unpredictable); ties keep the
                             * first in scan order like the generic loop */
                            const double *r1 = r0 + os.w;
                            const size_t x0 = ox * st;
                            const double a = r0[x0], bb = r0[x0 + 1];
                            const double c2 = r1[x0], d = r1[x0 + 1];
                            const double m1 = bb > a ? bb : a;    /* maxsd */
                            const double m2 = d > c2 ? d : c2;
                            const size_t i1 = x0 + (size_t)(bb > a);
                            const size_t i2 = os.w + x0 + (size_t)(d > c2);
                            m = m2 > m1 ? m2 : m1;
                            best = i1 + (i2 - i1) * (size_t)(m2 > m1);
                        } else {
                            for (size_t dy = 0; dy < k; dy++) {
                                const double *r = r0 + dy * os.w + ox * st;
                                for (size_t dx = 0; dx < k; dx++)
                                    if (r[dx] > m) {
                                        m = r[dx];
                                        best = dy * os.w + ox * st + dx;
                                    }
                            }
                        }
                        m += bc;
                        /* relu; a clipped window records -1 (no gradient),
                         * written without a branch */
                        const int32_t keep = m > 0.0;
                        oc[oy * ps.w + ox] = m > 0.0 ? m : 0.0;
                        ac[oy * ps.w + ox] =
                            (int32_t)(c * HWo + oy * st * os.w + best) |
                            (keep - 1);
                    }
                }
            }
        }
    }
    if (*pool->pieces == QD_PIECES_RECORD &&
        nn_pool_record(pool, batch * p_sz))
        return nn_layer_rt_error(conv, err, QD_ERR_NOMEM, "out of memory");
    return QD_OK;
}

/* Backward rebuilds each image's convolution output gradient in scratch
 * from the pooled gradient (zero but at each window's unclipped maximum) and
 * runs the dense per-image GEMMs on it. (Working from the maxima alone needs
 * fewer multiply-adds but loses to BLAS: the loops are k wide.) */
int nn_conv_relu_pool_backward(nn_layer *conv, nn_layer *pool,
                               const double *p, size_t batch,
                               const double *x, const double *g_pool,
                               double *g_p, double *gx, int add,
                               qd_error *err)
{
    conv_st *s = conv->st;
    const nn_shape is = conv->in_shape[0], os = conv->out;
    const size_t in_sz = nn_shape_size(is), p_sz = nn_shape_size(pool->out);
    const size_t HWo = s->HWo, Co = s->cout, plane = p_sz / Co;
    const int32_t *arg = nn_pool_argmax(pool, batch * p_sz);
    /* per thread: cols, gcols, and the conv output gradient */
    const size_t per = 2 * ncols(s) + Co * HWo, slot = slot_size(s);
    const size_t chunks = n_chunks(batch);
    if (!arg || reserve_bwd(s, batch, per, 1))
        return nn_layer_rt_error(conv, err, QD_ERR_NOMEM, "out of memory");
#pragma omp parallel num_threads(omp_get_max_threads()) \
    if (par_worth(batch, s))
    {
        double *cols = s->ws + (size_t)omp_get_thread_num() * per;
        double *gcols = cols + ncols(s), *gco = gcols + ncols(s);
#pragma omp for schedule(dynamic, 1)
        for (size_t ch = 0; ch < chunks; ch++) {
            double *gwT = s->acc + ch * slot, *gbias = gwT + s->K * Co;
            memset(gwT, 0, slot * sizeof *gwT);
            size_t end = (ch + 1) * CHUNK < batch ? (ch + 1) * CHUNK : batch;
            for (size_t b = ch * CHUNK; b < end; b++) {
                memset(gco, 0, Co * HWo * sizeof *gco);
                const int32_t *ab = arg + b * p_sz;
                const double *gb = g_pool + b * p_sz;
                for (size_t c = 0; c < Co; c++) {
                    double bsum = 0.0;   /* the bias gradient, on the way */
                    for (size_t j = c * plane; j < (c + 1) * plane; j++)
                        if (ab[j] >= 0) {
                            gco[ab[j]] += gb[j];
                            bsum += gb[j];
                        }
                    gbias[c] += bsum;
                }
                image_backward(s, is, os, p, x + b * in_sz, gco,
                               g_p ? 2 : 0, gx ? gx + b * in_sz : NULL, add,
                               cols, gcols, gwT, gbias);
            }
        }
    }
    if (g_p)
        reduce_grads(s, chunks, g_p);
    return QD_OK;
}

static void conv_destroy(nn_layer *l)
{
    conv_st *s = l->st;
    if (s) {
        free(s->ws);
        free(s->acc);
    }
    free(s);
}

const nn_layer_vt nn_conv2d_vt = {
    conv_setup, conv_init, conv_forward, conv_backward, conv_destroy, 0,
};
