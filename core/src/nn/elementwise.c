/*
 * Parameter-free and elementwise layers: relu, tanh, sigmoid, flatten, add,
 * mix (alpha*a + (1-alpha)*b with a trainable scalar), dropout.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn_internal.h"

static int same_shape_setup(nn_layer *l, const nn_build *b, qd_error *err)
{
    (void)b, (void)err;
    l->out = l->in_shape[0];
    return QD_OK;
}

/* ---- activations: backward needs only the output ---- */

#define ACTIVATION(NAME, FWD, DERIV)                                          \
    static int NAME##_forward(nn_layer *l, const double *p, size_t batch,     \
                              const double *const *in, double *out,           \
                              qd_error *err)                                  \
    {                                                                         \
        (void)p, (void)err;                                                   \
        const size_t n = batch * nn_shape_size(l->out);                       \
        const double *x = in[0];                                              \
        _Pragma("omp parallel for simd schedule(static) if (n > NN_OMP_MIN)") \
        for (size_t i = 0; i < n; i++)                                        \
            out[i] = FWD(x[i]);                                               \
        return QD_OK;                                                         \
    }                                                                         \
    static int NAME##_backward(nn_layer *l, const double *p, size_t batch,    \
                               const double *const *in, const double *y,      \
                               const double *g, double *g_p,                  \
                               double *const *g_in, const int *acc,           \
                               qd_error *err)                                 \
    {                                                                         \
        (void)p, (void)in, (void)g_p, (void)err;                              \
        double *gx = g_in[0];                                                 \
        if (!gx)                                                              \
            return QD_OK;                                                     \
        const size_t n = batch * nn_shape_size(l->out);                       \
        if (acc[0]) {                                                         \
            _Pragma("omp parallel for simd schedule(static) if (n > NN_OMP_MIN)") \
            for (size_t i = 0; i < n; i++)                                    \
                gx[i] += g[i] * (DERIV(y[i]));                                \
        } else {                                                              \
            _Pragma("omp parallel for simd schedule(static) if (n > NN_OMP_MIN)") \
            for (size_t i = 0; i < n; i++)                                    \
                gx[i] = g[i] * (DERIV(y[i]));                                 \
        }                                                                     \
        return QD_OK;                                                         \
    }                                                                         \
    const nn_layer_vt nn_##NAME##_vt = {same_shape_setup, NULL,               \
                                        NAME##_forward, NAME##_backward,      \
                                        NULL, 0};

#define RELU_F(v) ((v) > 0.0 ? (v) : 0.0)
#define RELU_D(y) ((y) > 0.0 ? 1.0 : 0.0)
#define TANH_F(v) tanh(v)
#define TANH_D(y) (1.0 - (y) * (y))
#define SIGM_F(v) (1.0 / (1.0 + exp(-(v))))
#define SIGM_D(y) ((y) * (1.0 - (y)))

ACTIVATION(tanh, TANH_F, TANH_D)
ACTIVATION(sigmoid, SIGM_F, SIGM_D)

/* ---- relu: the activation above, plus frozen pieces (model.h) ----
 * RECORD keeps the mask (1 where x > 0) of the last forward; REPLAY uses it
 * for out = mask * x and for backward, whose derivative then no longer
 * follows from the output. */

typedef struct relu_st {
    double *mask;          /* recorded 0/1 per value */
    size_t mask_cap;
} relu_st;

static int relu_setup(nn_layer *l, const nn_build *b, qd_error *err)
{
    relu_st *s = calloc(1, sizeof *s);
    if (!s)
        return QD_ERR_NOMEM;
    l->st = s;
    return same_shape_setup(l, b, err);
}

static int relu_forward(nn_layer *l, const double *p, size_t batch,
                        const double *const *in, double *out, qd_error *err)
{
    (void)p;
    relu_st *s = l->st;
    const size_t n = batch * nn_shape_size(l->out);
    const double *x = in[0];
    if (*l->pieces == QD_PIECES_LIVE) {
#pragma omp parallel for simd schedule(static) if (n > NN_OMP_MIN)
        for (size_t i = 0; i < n; i++)
            out[i] = RELU_F(x[i]);
        return QD_OK;
    }
    double *mk = s->mask;
    if (*l->pieces == QD_PIECES_REPLAY) {   /* the model checked the batch */
#pragma omp parallel for simd schedule(static) if (n > NN_OMP_MIN)
        for (size_t i = 0; i < n; i++)
            out[i] = mk[i] != 0.0 ? x[i] : 0.0;
        return QD_OK;
    }
    if (nn_reserve(&s->mask, &s->mask_cap, n))
        return nn_layer_rt_error(l, err, QD_ERR_NOMEM, "out of memory");
    mk = s->mask;
#pragma omp parallel for simd schedule(static) if (n > NN_OMP_MIN)
    for (size_t i = 0; i < n; i++) {
        mk[i] = x[i] > 0.0 ? 1.0 : 0.0;
        out[i] = RELU_F(x[i]);
    }
    return QD_OK;
}

static int relu_backward(nn_layer *l, const double *p, size_t batch,
                         const double *const *in, const double *y,
                         const double *g, double *g_p, double *const *g_in,
                         const int *acc, qd_error *err)
{
    (void)p, (void)in, (void)g_p, (void)err;
    const relu_st *s = l->st;
    double *gx = g_in[0];
    if (!gx)
        return QD_OK;
    const size_t n = batch * nn_shape_size(l->out);
    /* REPLAY: the recorded mask; otherwise y > 0 (the same thing at the
     * recorded point) */
    const double *mk = *l->pieces == QD_PIECES_REPLAY ? s->mask : NULL;
    const int add = acc[0];
    if (mk) {
#pragma omp parallel for simd schedule(static) if (n > NN_OMP_MIN)
        for (size_t i = 0; i < n; i++)
            gx[i] = (add ? gx[i] : 0.0) + g[i] * mk[i];
    } else if (add) {
#pragma omp parallel for simd schedule(static) if (n > NN_OMP_MIN)
        for (size_t i = 0; i < n; i++)
            gx[i] += g[i] * (RELU_D(y[i]));
    } else {
#pragma omp parallel for simd schedule(static) if (n > NN_OMP_MIN)
        for (size_t i = 0; i < n; i++)
            gx[i] = g[i] * (RELU_D(y[i]));
    }
    return QD_OK;
}

static void free_mask_state(nn_layer *l)
{
    relu_st *s = l->st;
    if (s)
        free(s->mask);
    free(s);
}

const nn_layer_vt nn_relu_vt = {relu_setup, NULL, relu_forward, relu_backward,
                                free_mask_state, 0};

/* ---- flatten: a view of its input (the model aliases the buffers) ---- */

static int flatten_setup(nn_layer *l, const nn_build *b, qd_error *err)
{
    (void)b, (void)err;
    l->out = (nn_shape){nn_shape_size(l->in_shape[0]), 1, 1};
    return QD_OK;
}

const nn_layer_vt nn_flatten_vt = {flatten_setup, NULL, NULL, NULL, NULL, 1};

/* ---- add and mix: two inputs of the same size ---- */

static int two_input_setup(nn_layer *l, qd_error *err)
{
    size_t na = nn_shape_size(l->in_shape[0]);
    size_t nb = nn_shape_size(l->in_shape[1]);
    if (na != nb)
        return nn_layer_error(l, "inputs", err, QD_ERR_INVALID,
                              "inputs '%s' (%zu values per sample) and '%s' "
                              "(%zu values per sample) differ in size",
                              l->in_name[0], na, l->in_name[1], nb);
    l->out = l->in_shape[0];
    return QD_OK;
}

static int add_setup(nn_layer *l, const nn_build *b, qd_error *err)
{
    (void)b;
    return two_input_setup(l, err);
}

static int add_forward(nn_layer *l, const double *p, size_t batch,
                       const double *const *in, double *out, qd_error *err)
{
    (void)p, (void)err;
    const size_t n = batch * nn_shape_size(l->out);
    const double *a = in[0], *b = in[1];
#pragma omp parallel for simd schedule(static) if (n > NN_OMP_MIN)
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
    return QD_OK;
}

/* g_in[j] (+)= scale * g, honouring acc[j]. */
static void scaled_into(double *gx, int add, double scale, const double *g,
                        size_t n)
{
    if (!gx)
        return;
    if (add) {
#pragma omp parallel for simd schedule(static) if (n > NN_OMP_MIN)
        for (size_t i = 0; i < n; i++)
            gx[i] += scale * g[i];
    } else {
#pragma omp parallel for simd schedule(static) if (n > NN_OMP_MIN)
        for (size_t i = 0; i < n; i++)
            gx[i] = scale * g[i];
    }
}

static int add_backward(nn_layer *l, const double *p, size_t batch,
                        const double *const *in, const double *out,
                        const double *g, double *g_p, double *const *g_in,
                        const int *acc, qd_error *err)
{
    (void)p, (void)in, (void)out, (void)g_p, (void)err;
    const size_t n = batch * nn_shape_size(l->out);
    scaled_into(g_in[0], acc[0], 1.0, g, n);
    scaled_into(g_in[1], acc[1], 1.0, g, n);
    return QD_OK;
}

const nn_layer_vt nn_add_vt = {add_setup, NULL, add_forward, add_backward,
                               NULL, 0};

typedef struct mix_st {
    double alpha0;
    int trainable;
} mix_st;

static int mix_setup(nn_layer *l, const nn_build *b, qd_error *err)
{
    (void)b;
    mix_st *s = calloc(1, sizeof *s);
    if (!s)
        return QD_ERR_NOMEM;
    l->st = s;
    int rc;
    if ((rc = nn_cfg_double(l, "alpha", &s->alpha0, err)) ||
        (rc = nn_cfg_bool(l, "trainable", &s->trainable, err)) ||
        (rc = two_input_setup(l, err)))
        return rc;
    if (s->trainable)
        nn_add_block(l, "alpha", 1);
    return QD_OK;
}

static int mix_init(nn_layer *l, qd_rng *rng, double *p, qd_error *err)
{
    (void)rng, (void)err;
    const mix_st *s = l->st;
    if (s->trainable)
        p[0] = s->alpha0;
    return QD_OK;
}

static double mix_alpha(const nn_layer *l, const double *p)
{
    const mix_st *s = l->st;
    return s->trainable ? p[0] : s->alpha0;
}

static int mix_forward(nn_layer *l, const double *p, size_t batch,
                       const double *const *in, double *out, qd_error *err)
{
    (void)err;
    const size_t n = batch * nn_shape_size(l->out);
    const double al = mix_alpha(l, p), be = 1.0 - al;
    const double *a = in[0], *b = in[1];
#pragma omp parallel for simd schedule(static) if (n > NN_OMP_MIN)
    for (size_t i = 0; i < n; i++)
        out[i] = al * a[i] + be * b[i];
    return QD_OK;
}

static int mix_backward(nn_layer *l, const double *p, size_t batch,
                        const double *const *in, const double *out,
                        const double *g, double *g_p, double *const *g_in,
                        const int *acc, qd_error *err)
{
    (void)out, (void)err;
    const mix_st *s = l->st;
    const size_t n = batch * nn_shape_size(l->out);
    const double al = mix_alpha(l, p);
    if (g_p && s->trainable) {
        const double *a = in[0], *b = in[1];
        double sum = 0.0;
        for (size_t i = 0; i < n; i++)
            sum += g[i] * (a[i] - b[i]);
        g_p[0] = sum;
    }
    scaled_into(g_in[0], acc[0], al, g, n);
    scaled_into(g_in[1], acc[1], 1.0 - al, g, n);
    return QD_OK;
}

static void free_state(nn_layer *l)
{
    free(l->st);
}

const nn_layer_vt nn_mix_vt = {mix_setup, mix_init, mix_forward,
                               mix_backward, free_state, 0};

/* ---- dropout: inverted dropout, active only in training mode ---- */

typedef struct dropout_st {
    double rate;
    double *mask;          /* 0 or 1/(1-rate); valid when masked */
    size_t mask_cap;
    int masked;            /* the last forward applied a mask */
} dropout_st;

static int dropout_setup(nn_layer *l, const nn_build *b, qd_error *err)
{
    (void)b;
    dropout_st *s = calloc(1, sizeof *s);
    if (!s)
        return QD_ERR_NOMEM;
    l->st = s;
    l->out = l->in_shape[0];
    return nn_cfg_double(l, "rate", &s->rate, err);
}

static int dropout_forward(nn_layer *l, const double *p, size_t batch,
                           const double *const *in, double *out,
                           qd_error *err)
{
    (void)p;
    dropout_st *s = l->st;
    const size_t n = batch * nn_shape_size(l->out);
    const double *x = in[0];
    s->masked = s->rate > 0.0 && *l->training;
    if (!s->masked) {
        memcpy(out, x, n * sizeof *out);
        return QD_OK;
    }
    if (nn_reserve(&s->mask, &s->mask_cap, n))
        return nn_layer_rt_error(l, err, QD_ERR_NOMEM, "out of memory");
    const double keep = 1.0 / (1.0 - s->rate);
    for (size_t i = 0; i < n; i++) {
        s->mask[i] = qd_rng_uniform(l->rng) < s->rate ? 0.0 : keep;
        out[i] = x[i] * s->mask[i];
    }
    return QD_OK;
}

static int dropout_backward(nn_layer *l, const double *p, size_t batch,
                            const double *const *in, const double *out,
                            const double *g, double *g_p,
                            double *const *g_in, const int *acc,
                            qd_error *err)
{
    (void)p, (void)in, (void)out, (void)g_p, (void)err;
    dropout_st *s = l->st;
    double *gx = g_in[0];
    const size_t n = batch * nn_shape_size(l->out);
    if (!gx)
        return QD_OK;
    if (!s->masked) {
        scaled_into(gx, acc[0], 1.0, g, n);
        return QD_OK;
    }
    for (size_t i = 0; i < n; i++)
        gx[i] = (acc[0] ? gx[i] : 0.0) + g[i] * s->mask[i];
    return QD_OK;
}

static void dropout_destroy(nn_layer *l)
{
    dropout_st *s = l->st;
    if (s)
        free(s->mask);
    free(s);
}

const nn_layer_vt nn_dropout_vt = {dropout_setup, NULL, dropout_forward,
                                   dropout_backward, dropout_destroy, 0};
