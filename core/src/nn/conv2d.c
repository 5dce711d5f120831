/*
 * conv2d: im2col + GEMM, one GEMM per image with the batch split across
 * OpenMP threads (BLAS runs single-threaded inside the parallel region).
 * Per-image GEMMs write NCHW output in place, so no transposes are needed,
 * and each image's column matrix stays in cache between im2col and GEMM.
 * 1x1 stride-1 unpadded convolutions use the input as the column matrix.
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
    double *ws;
    size_t ws_cap;
} conv_st;

/* Padding "N" or "fit:N" (the smallest padding giving an N x N output). */
static int parse_padding(nn_layer *l, conv_st *s, qd_error *err)
{
    const char *txt = nn_cfg_str(l, "padding");
    const nn_shape in = l->in_shape[0];
    char *end = NULL;
    if (txt && strncmp(txt, "fit:", 4) == 0) {
        long n = strtol(txt + 4, &end, 10);
        if (end == txt + 4 || *end || n < 1)
            return nn_layer_error(l, "padding", err, QD_ERR_INVALID,
                                  "padding '%s': expected fit:N with N >= 1",
                                  txt);
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

/* cols[(c, ky, kx)][oy * Wo + ox] = in[c][oy*s + ky - p][ox*s + kx - p]. */
static void im2col(const conv_st *s, nn_shape in, size_t Ho, size_t Wo,
                   const double *x, double *cols)
{
    const size_t k = s->k, st = s->stride, p = s->pad, H = in.h, W = in.w;
    for (size_t c = 0; c < in.c; c++)
        for (size_t ky = 0; ky < k; ky++)
            for (size_t kx = 0; kx < k; kx++) {
                double *row = cols + ((c * k + ky) * k + kx) * Ho * Wo;
                /* valid ox: 0 <= ox*st + kx - p < W */
                size_t lo = kx >= p ? 0 : (p - kx + st - 1) / st;
                size_t hi = (W + p - kx + st - 1) / st;
                if (hi > Wo)
                    hi = Wo;
                if (lo > hi)
                    lo = hi;
                for (size_t oy = 0; oy < Ho; oy++) {
                    double *d = row + oy * Wo;
                    size_t iy = oy * st + ky;
                    if (iy < p || iy - p >= H) {
                        memset(d, 0, Wo * sizeof *d);
                        continue;
                    }
                    /* ox >= lo keeps ox*st + kx - p non-negative */
                    const double *src = x + (c * H + iy - p) * W;
                    for (size_t ox = 0; ox < lo; ox++)
                        d[ox] = 0.0;
                    if (st == 1)
                        memcpy(d + lo, src + lo + kx - p,
                               (hi - lo) * sizeof *d);
                    else
                        for (size_t ox = lo; ox < hi; ox++)
                            d[ox] = src[ox * st + kx - p];
                    for (size_t ox = hi; ox < Wo; ox++)
                        d[ox] = 0.0;
                }
            }
}

/* The adjoint of im2col: g_x += scatter(g_cols). */
static void col2im_add(const conv_st *s, nn_shape in, size_t Ho, size_t Wo,
                       const double *gcols, double *gx)
{
    const size_t k = s->k, st = s->stride, p = s->pad, H = in.h, W = in.w;
    for (size_t c = 0; c < in.c; c++)
        for (size_t ky = 0; ky < k; ky++)
            for (size_t kx = 0; kx < k; kx++) {
                const double *row = gcols + ((c * k + ky) * k + kx) * Ho * Wo;
                size_t lo = kx >= p ? 0 : (p - kx + st - 1) / st;
                size_t hi = (W + p - kx + st - 1) / st;
                if (hi > Wo)
                    hi = Wo;
                for (size_t oy = 0; oy < Ho; oy++) {
                    size_t iy = oy * st + ky;
                    if (iy < p || iy - p >= H)
                        continue;
                    const double *g = row + oy * Wo;
                    double *d = gx + (c * H + iy - p) * W;
                    for (size_t ox = lo; ox < hi; ox++)
                        d[ox * st + kx - p] += g[ox];
                }
            }
}

static int conv_forward(nn_layer *l, const double *p, size_t batch,
                        const double *const *in, double *out, qd_error *err)
{
    conv_st *s = l->st;
    const nn_shape is = l->in_shape[0];
    const size_t in_sz = nn_shape_size(is), out_sz = nn_shape_size(l->out);
    const size_t K = s->K, HWo = s->HWo, Co = s->cout;
    const double *W = p, *bias = s->bias ? p + Co * K : NULL;
    int nt = omp_get_max_threads();
    size_t per = s->direct ? 0 : K * HWo;
    if (nn_reserve(&s->ws, &s->ws_cap, (size_t)nt * per))
        return nn_layer_rt_error(l, err, QD_ERR_NOMEM, "out of memory");
    const double *x = in[0];
#pragma omp parallel num_threads(nt)
    {
        double *cols = s->ws + (size_t)omp_get_thread_num() * per;
#pragma omp for schedule(static)
        for (size_t b = 0; b < batch; b++) {
            const double *xb = x + b * in_sz;
            double *ob = out + b * out_sz;
            const double *src = xb;
            if (!s->direct) {
                im2col(s, is, l->out.h, l->out.w, xb, cols);
                src = cols;
            }
            double beta = 0.0;
            if (bias) {
                for (size_t c = 0; c < Co; c++)
                    for (size_t j = 0; j < HWo; j++)
                        ob[c * HWo + j] = bias[c];
                beta = 1.0;
            }
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)Co,
                        (int)HWo, (int)K, 1.0, W, (int)K, src, (int)HWo,
                        beta, ob, (int)HWo);
        }
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
    const nn_shape is = l->in_shape[0];
    const size_t in_sz = nn_shape_size(is), out_sz = nn_shape_size(l->out);
    const size_t K = s->K, HWo = s->HWo, Co = s->cout;
    const double *W = p;
    double *gx = g_in[0];
    const int add = acc[0];
    const size_t ncol = s->direct ? 0 : K * HWo;
    /* per thread: [cols][gcols][gW][gb] */
    const size_t per = (g_p ? ncol + Co * K + Co : 0) + (gx ? ncol : 0);
    int nt = omp_get_max_threads();
    if (nn_reserve(&s->ws, &s->ws_cap, (size_t)nt * per))
        return nn_layer_rt_error(l, err, QD_ERR_NOMEM, "out of memory");
    const double *x = in[0];
    int used = nt;
#pragma omp parallel num_threads(nt)
    {
        double *mine = s->ws + (size_t)omp_get_thread_num() * per;
        double *cols = mine, *gw = NULL, *gb = NULL, *gcols = mine;
        if (g_p) {
            gw = cols + ncol;
            gb = gw + Co * K;
            gcols = gb + Co;
            memset(gw, 0, (Co * K + Co) * sizeof *gw);
        }
#pragma omp single
        used = omp_get_num_threads();
#pragma omp for schedule(static)
        for (size_t b = 0; b < batch; b++) {
            const double *xb = x + b * in_sz;
            const double *go = g_out + b * out_sz;
            if (g_p) {
                const double *src = xb;
                if (!s->direct) {
                    im2col(s, is, l->out.h, l->out.w, xb, cols);
                    src = cols;
                }
                cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)Co,
                            (int)K, (int)HWo, 1.0, go, (int)HWo, src,
                            (int)HWo, 1.0, gw, (int)K);
                for (size_t c = 0; c < Co; c++) {
                    double acc_b = 0.0;
                    for (size_t j = 0; j < HWo; j++)
                        acc_b += go[c * HWo + j];
                    gb[c] += acc_b;
                }
            }
            if (gx) {
                double *gxb = gx + b * in_sz;
                if (s->direct) {
                    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans,
                                (int)K, (int)HWo, (int)Co, 1.0, W, (int)K, go,
                                (int)HWo, add ? 1.0 : 0.0, gxb, (int)HWo);
                } else {
                    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans,
                                (int)K, (int)HWo, (int)Co, 1.0, W, (int)K, go,
                                (int)HWo, 0.0, gcols, (int)HWo);
                    if (!add)
                        memset(gxb, 0, in_sz * sizeof *gxb);
                    col2im_add(s, is, l->out.h, l->out.w, gcols, gxb);
                }
            }
        }
    }
    if (g_p) {
        /* fixed-order reduction: deterministic for a given thread count */
        size_t n = Co * K + (s->bias ? Co : 0);
        memset(g_p, 0, n * sizeof *g_p);
        for (int t = 0; t < used; t++) {
            const double *gw = s->ws + (size_t)t * per + ncol;
            for (size_t i = 0; i < n; i++)
                g_p[i] += gw[i];
        }
    }
    return QD_OK;
}

static void conv_destroy(nn_layer *l)
{
    conv_st *s = l->st;
    if (s)
        free(s->ws);
    free(s);
}

const nn_layer_vt nn_conv2d_vt = {
    conv_setup, conv_init, conv_forward, conv_backward, conv_destroy, 0,
};
