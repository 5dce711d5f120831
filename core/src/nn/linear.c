/*
 * linear: y = x W^T + b on the flattened input, one GEMM for the batch
 * (BLAS threads). Weight layout (PyTorch): out x in, then bias.
 */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "nn_internal.h"

typedef struct linear_st {
    size_t n_in, n_out;
    int bias;
    nn_init init;
} linear_st;

static int linear_setup(nn_layer *l, const nn_build *b, qd_error *err)
{
    (void)b;
    linear_st *s = calloc(1, sizeof *s);
    if (!s)
        return QD_ERR_NOMEM;
    l->st = s;
    long long v;
    int rc;
    if ((rc = nn_cfg_int(l, "out", &v, err)) ||
        (rc = nn_cfg_bool(l, "bias", &s->bias, err)) ||
        (rc = nn_cfg_init(l, &s->init, err)))
        return rc;
    s->n_out = (size_t)v;
    s->n_in = nn_shape_size(l->in_shape[0]);
    l->out = (nn_shape){s->n_out, 1, 1};
    nn_add_block(l, "weight", s->n_out * s->n_in);
    if (s->bias)
        nn_add_block(l, "bias", s->n_out);
    return QD_OK;
}

static int linear_init(nn_layer *l, qd_rng *rng, double *p, qd_error *err)
{
    (void)err;
    linear_st *s = l->st;
    nn_init_fill(s->init, rng, s->n_in, s->n_out, p, s->n_out * s->n_in,
                 p + s->n_out * s->n_in, s->bias ? s->n_out : 0);
    return QD_OK;
}

static int linear_forward(nn_layer *l, const double *p, size_t batch,
                          const double *const *in, double *out,
                          qd_error *err)
{
    (void)err;
    linear_st *s = l->st;
    const size_t NI = s->n_in, NO = s->n_out;
    double beta = 0.0;
    if (s->bias) {
        const double *bias = p + NO * NI;
        for (size_t b = 0; b < batch; b++)
            memcpy(out + b * NO, bias, NO * sizeof *out);
        beta = 1.0;
    }
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)batch, (int)NO,
                (int)NI, 1.0, in[0], (int)NI, p, (int)NI, beta, out, (int)NO);
    return QD_OK;
}

static int linear_backward(nn_layer *l, const double *p, size_t batch,
                           const double *const *in, const double *out,
                           const double *g_out, double *g_p,
                           double *const *g_in, const int *acc,
                           qd_error *err)
{
    (void)out, (void)err;
    linear_st *s = l->st;
    const size_t NI = s->n_in, NO = s->n_out;
    if (g_p) {
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)NO, (int)NI,
                    (int)batch, 1.0, g_out, (int)NO, in[0], (int)NI, 0.0, g_p,
                    (int)NI);
        if (s->bias) {
            double *gb = g_p + NO * NI;
            memset(gb, 0, NO * sizeof *gb);
            for (size_t b = 0; b < batch; b++)
                for (size_t o = 0; o < NO; o++)
                    gb[o] += g_out[b * NO + o];
        }
    }
    if (g_in[0])
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)batch,
                    (int)NI, (int)NO, 1.0, g_out, (int)NO, p, (int)NI,
                    acc[0] ? 1.0 : 0.0, g_in[0], (int)NI);
    return QD_OK;
}

static void linear_destroy(nn_layer *l)
{
    free(l->st);
}

const nn_layer_vt nn_linear_vt = {
    linear_setup, linear_init, linear_forward, linear_backward,
    linear_destroy, 0,
};
