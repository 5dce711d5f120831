/*
 * maxpool2d / avgpool2d over k x k windows (no padding, stride default k).
 * Max pooling remembers the position of each window's maximum (the first one
 * in scan order on ties) so backward routes the gradient there. With frozen
 * pieces (model.h) it also keeps a recorded copy of those positions, and a
 * replayed forward gathers at the recorded positions instead of searching.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "nn_internal.h"

typedef struct pool_st {
    size_t k, stride;
    int32_t *argmax;       /* batch x out_size plane offsets (maxpool) */
    size_t argmax_cap;
    int32_t *rec;          /* recorded argmax (frozen pieces) */
    size_t rec_cap;
} pool_st;

static int pool_setup(nn_layer *l, const nn_build *b, qd_error *err)
{
    (void)b;
    pool_st *s = calloc(1, sizeof *s);
    if (!s)
        return QD_ERR_NOMEM;
    l->st = s;
    long long v;
    int rc;
    if ((rc = nn_cfg_int(l, "kernel", &v, err)))
        return rc;
    s->k = (size_t)v;
    s->stride = s->k;
    if (qd_node_get(l->node, "stride")) {
        if ((rc = nn_cfg_int(l, "stride", &v, err)))
            return rc;
        s->stride = (size_t)v;
    }
    const nn_shape in = l->in_shape[0];
    if (in.h < s->k || in.w < s->k)
        return nn_layer_error(l, NULL, err, QD_ERR_INVALID,
                              "input has %zu channels x %zu x %zu, smaller "
                              "than kernel %zu", in.c, in.h, in.w, s->k);
    if ((size_t)in.h * in.w * in.c > INT32_MAX)
        return nn_layer_error(l, NULL, err, QD_ERR_INVALID,
                              "input of %zu values per sample is too large",
                              nn_shape_size(in));
    l->out.c = in.c;
    l->out.h = (in.h - s->k) / s->stride + 1;
    l->out.w = (in.w - s->k) / s->stride + 1;
    return QD_OK;
}

static int maxpool_forward(nn_layer *l, const double *p, size_t batch,
                           const double *const *in, double *out,
                           qd_error *err)
{
    (void)p;
    pool_st *s = l->st;
    const nn_shape is = l->in_shape[0], os = l->out;
    const size_t out_sz = nn_shape_size(os), n = batch * out_sz;
    const double *x = in[0];
    if (*l->pieces == QD_PIECES_REPLAY) {   /* the model checked the batch */
        const int32_t *ap = nn_pool_replay(l, n);
        if (!ap)
            return nn_layer_rt_error(l, err, QD_ERR_NOMEM,
                                     "out of memory, or no pieces recorded "
                                     "for a batch of %zu", batch);
        const size_t in_sz = nn_shape_size(is);
#pragma omp parallel for schedule(static) if (n > NN_OMP_MIN)
        for (size_t b = 0; b < batch; b++)
            for (size_t i = 0; i < out_sz; i++)
                out[b * out_sz + i] = x[b * in_sz + (size_t)ap[b * out_sz + i]];
        return QD_OK;
    }
    if (!nn_pool_argmax(l, n))
        return nn_layer_rt_error(l, err, QD_ERR_NOMEM, "out of memory");
    const size_t planes = batch * is.c, k = s->k, st = s->stride;
#pragma omp parallel for schedule(static) if (n > NN_OMP_MIN / 4)
    for (size_t pl = 0; pl < planes; pl++) {
        const size_t b = pl / is.c, c = pl % is.c;
        const double *xp = x + pl * is.h * is.w;
        double *op = out + pl * os.h * os.w;
        int32_t *ap = s->argmax + pl * os.h * os.w;
        const int32_t base = (int32_t)(c * is.h * is.w);
        (void)b;
        for (size_t oy = 0; oy < os.h; oy++)
            for (size_t ox = 0; ox < os.w; ox++) {
                size_t best = oy * st * is.w + ox * st;
                double m = xp[best];
                for (size_t dy = 0; dy < k; dy++)
                    for (size_t dx = 0; dx < k; dx++) {
                        size_t at = (oy * st + dy) * is.w + ox * st + dx;
                        if (xp[at] > m) {
                            m = xp[at];
                            best = at;
                        }
                    }
                op[oy * os.w + ox] = m;
                ap[oy * os.w + ox] = base + (int32_t)best;
            }
    }
    if (*l->pieces == QD_PIECES_RECORD && nn_pool_record(l, n))
        return nn_layer_rt_error(l, err, QD_ERR_NOMEM, "out of memory");
    return QD_OK;
}

static int maxpool_backward(nn_layer *l, const double *p, size_t batch,
                            const double *const *in, const double *out,
                            const double *g_out, double *g_p,
                            double *const *g_in, const int *acc,
                            qd_error *err)
{
    (void)p, (void)in, (void)out, (void)g_p, (void)err;
    pool_st *s = l->st;
    double *gx = g_in[0];
    if (!gx)
        return QD_OK;
    const size_t in_sz = nn_shape_size(l->in_shape[0]);
    const size_t out_sz = nn_shape_size(l->out);
#pragma omp parallel for schedule(static) if (batch * in_sz > NN_OMP_MIN)
    for (size_t b = 0; b < batch; b++) {
        double *gb = gx + b * in_sz;
        if (!acc[0])
            memset(gb, 0, in_sz * sizeof *gb);
        const int32_t *ap = s->argmax + b * out_sz;
        const double *go = g_out + b * out_sz;
        for (size_t i = 0; i < out_sz; i++)
            gb[ap[i]] += go[i];
    }
    return QD_OK;
}

static int avgpool_forward(nn_layer *l, const double *p, size_t batch,
                           const double *const *in, double *out,
                           qd_error *err)
{
    (void)p, (void)err;
    pool_st *s = l->st;
    const nn_shape is = l->in_shape[0], os = l->out;
    const double *x = in[0];
    const size_t planes = batch * is.c, k = s->k, st = s->stride;
    const double inv = 1.0 / (double)(k * k);
#pragma omp parallel for schedule(static) \
    if (planes * os.h * os.w > NN_OMP_MIN / 4)
    for (size_t pl = 0; pl < planes; pl++) {
        const double *xp = x + pl * is.h * is.w;
        double *op = out + pl * os.h * os.w;
        for (size_t oy = 0; oy < os.h; oy++)
            for (size_t ox = 0; ox < os.w; ox++) {
                double sum = 0.0;
                for (size_t dy = 0; dy < k; dy++)
                    for (size_t dx = 0; dx < k; dx++)
                        sum += xp[(oy * st + dy) * is.w + ox * st + dx];
                op[oy * os.w + ox] = sum * inv;
            }
    }
    return QD_OK;
}

static int avgpool_backward(nn_layer *l, const double *p, size_t batch,
                            const double *const *in, const double *out,
                            const double *g_out, double *g_p,
                            double *const *g_in, const int *acc,
                            qd_error *err)
{
    (void)p, (void)in, (void)out, (void)g_p, (void)err;
    pool_st *s = l->st;
    double *gx = g_in[0];
    if (!gx)
        return QD_OK;
    const nn_shape is = l->in_shape[0], os = l->out;
    const size_t planes = batch * is.c, k = s->k, st = s->stride;
    const double inv = 1.0 / (double)(k * k);
#pragma omp parallel for schedule(static) \
    if (planes * is.h * is.w > NN_OMP_MIN)
    for (size_t pl = 0; pl < planes; pl++) {
        double *gp = gx + pl * is.h * is.w;
        const double *go = g_out + pl * os.h * os.w;
        if (!acc[0])
            memset(gp, 0, is.h * is.w * sizeof *gp);
        for (size_t oy = 0; oy < os.h; oy++)
            for (size_t ox = 0; ox < os.w; ox++) {
                double g = go[oy * os.w + ox] * inv;
                for (size_t dy = 0; dy < k; dy++)
                    for (size_t dx = 0; dx < k; dx++)
                        gp[(oy * st + dy) * is.w + ox * st + dx] += g;
            }
    }
    return QD_OK;
}

int32_t *nn_pool_argmax(nn_layer *l, size_t n)
{
    pool_st *s = l->st;
    if (n > s->argmax_cap) {
        free(s->argmax);
        s->argmax = malloc(n * sizeof *s->argmax);
        s->argmax_cap = s->argmax ? n : 0;
    }
    return s->argmax;
}

int nn_pool_record(nn_layer *l, size_t n)
{
    pool_st *s = l->st;
    if (n > s->rec_cap) {
        free(s->rec);
        s->rec = malloc(n * sizeof *s->rec);
        s->rec_cap = s->rec ? n : 0;
        if (!s->rec)
            return QD_ERR_NOMEM;
    }
    memcpy(s->rec, s->argmax, n * sizeof *s->rec);
    return QD_OK;
}

int32_t *nn_pool_replay(nn_layer *l, size_t n)
{
    pool_st *s = l->st;
    int32_t *a = nn_pool_argmax(l, n);
    if (a && n <= s->rec_cap)
        memcpy(a, s->rec, n * sizeof *a);
    return a && n <= s->rec_cap ? a : NULL;
}

void nn_pool_geometry(const nn_layer *l, size_t *k, size_t *stride)
{
    const pool_st *s = l->st;
    *k = s->k;
    *stride = s->stride;
}

static void pool_destroy(nn_layer *l)
{
    pool_st *s = l->st;
    if (s) {
        free(s->argmax);
        free(s->rec);
    }
    free(s);
}

const nn_layer_vt nn_maxpool2d_vt = {
    pool_setup, NULL, maxpool_forward, maxpool_backward, pool_destroy, 0,
};

const nn_layer_vt nn_avgpool2d_vt = {
    pool_setup, NULL, avgpool_forward, avgpool_backward, pool_destroy, 0,
};
