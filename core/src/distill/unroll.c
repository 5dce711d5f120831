/*
 * Unrolled inner training and its reverse-mode meta-gradient.
 *
 * Forward keeps every iterate w_t and every inner gradient
 * G_t = grad_w l_t(w_t) (T+1 + T parameter vectors): the backward pass needs
 * G_t for the learning-rate gradient, and recomputing it would cost a third
 * model evaluation per step. For the quantum LeNet (~60k parameters) and
 * T = 30 that is 29 MB, small next to one real batch's activations.
 *
 * Backward, for t = T-1 .. 0 with g = dL/dw_{t+1}:
 *     dL/dlr_t += -g . G_t
 *     dL/dx_t  += -lr_t * d/dx (g . grad_w l_t(w_t))
 *     dL/dw_t   =  g - lr_t * H_t g
 * where both second-order products come from the same pair of gradient
 * evaluations at w_t +- e g (see second_order.c). On ReLU / max-pool models
 * those evaluations replay the pieces of a forward at (w_t, x_t), so H_t is
 * the Hessian of the locally linear pieces, as double backward gives, and a
 * kink near w_t cannot blow the chain up; the model is back in LIVE mode
 * after each step, also on errors.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "distill_internal.h"

struct qd_unroll {
    qd_model *m;
    size_t T, batch, n, in_size;
    double *w;           /* (T+1) x n: w_0 .. w_T */
    double *g_inner;     /* T x n: G_t */
    double *lrs;         /* T: copy of the forward's step sizes */
    double *g, *hv;      /* n each: running dL/dw_t, H_t g */
    double *xv;          /* batch x in_size */
    fd2_scratch fd;
    /* forward's inputs, borrowed until backward */
    const double *xs;
    const int32_t *ys;
    size_t steps, per_step;
    int have_forward;
};

/* Keeps the size arithmetic below (T+1) * n well inside size_t. */
#define UNROLL_MAX_VALUES ((size_t)1 << 34)

QD_EXPORT int qd_unroll_create(qd_model *m, size_t T, size_t batch,
                               qd_unroll **out, qd_error *err)
{
    if (!out)
        return qd_error_set(err, QD_ERR_INVALID, "unroll create: out is NULL");
    *out = NULL;
    if (!m)
        return qd_error_set(err, QD_ERR_INVALID,
                            "unroll create: model is NULL");
    if (T == 0 || batch == 0)
        return qd_error_set(err, QD_ERR_INVALID,
                            "unroll create: T (%zu) and batch (%zu) must be "
                            ">= 1", T, batch);
    const size_t n = qd_model_n_params(m), in = qd_model_input_size(m);
    if (n == 0)
        return qd_error_set(err, QD_ERR_INVALID,
                            "unroll create: the model has no trainable "
                            "parameters, so inner training cannot change it");
    if (T + 1 > UNROLL_MAX_VALUES / n || batch > UNROLL_MAX_VALUES / in)
        return qd_error_set(err, QD_ERR_INVALID,
                            "unroll create: %zu steps of %zu parameters (or "
                            "a batch of %zu) are too large", T, n, batch);
    qd_unroll *u = calloc(1, sizeof *u);
    if (!u)
        return qd_error_set(err, QD_ERR_NOMEM, "unroll create: out of memory");
    u->m = m;
    u->T = T;
    u->batch = batch;
    u->n = n;
    u->in_size = in;
    u->w = malloc((T + 1) * n * sizeof *u->w);
    u->g_inner = malloc(T * n * sizeof *u->g_inner);
    u->lrs = malloc(T * sizeof *u->lrs);
    u->g = malloc(n * sizeof *u->g);
    u->hv = malloc(n * sizeof *u->hv);
    u->xv = malloc(batch * in * sizeof *u->xv);
    if (!u->w || !u->g_inner || !u->lrs || !u->g || !u->hv || !u->xv ||
        fd2_reserve(&u->fd, n, batch * in, err)) {
        qd_unroll_destroy(u);
        return qd_error_set(err, QD_ERR_NOMEM,
                            "unroll create: out of memory for %zu steps of "
                            "%zu parameters", T, n);
    }
    *out = u;
    return QD_OK;
}

QD_EXPORT void qd_unroll_destroy(qd_unroll *u)
{
    if (!u)
        return;
    free(u->w);
    free(u->g_inner);
    free(u->lrs);
    free(u->g);
    free(u->hv);
    free(u->xv);
    fd2_free(&u->fd);
    free(u);
}

static int all_finite(const double *v, size_t n)
{
    int ok = 1;
    for (size_t i = 0; i < n; i++)
        ok &= isfinite(v[i]) != 0;
    return ok;
}

/* Where a parameter gradient g is not finite: "'weight' of layer 'c1'
 * (entry 3) is nan", naming the first such parameter block. */
static void bad_block(const qd_model *m, const double *g, char *buf, size_t cap)
{
    for (size_t k = 0; k < qd_model_n_blocks(m); k++) {
        const qd_param_block *b = qd_model_block(m, k);
        for (size_t i = 0; i < b->count; i++)
            if (!isfinite(g[b->offset + i])) {
                snprintf(buf, cap, "'%s' of layer '%s' (entry %zu) is %g", b->what, b->layer,
                         i, g[b->offset + i]);
                return;
            }
    }
    snprintf(buf, cap, "some parameter is not finite");
}

QD_EXPORT int qd_unroll_forward(qd_unroll *u, const double *w0, size_t steps,
                                size_t per_step, const double *xs,
                                const int32_t *ys, const double *lrs,
                                const double **w_final, qd_error *err)
{
    if (!u || !w0 || !xs || !ys || !lrs)
        return qd_error_set(err, QD_ERR_INVALID,
                            "unroll forward: NULL workspace, w0, images, "
                            "labels or step sizes");
    u->have_forward = 0;
    if (steps == 0 || steps > u->T || per_step == 0 || per_step > u->batch)
        return qd_error_set(err, QD_ERR_INVALID,
                            "unroll forward: %zu steps of %zu images do not "
                            "fit the workspace (T = %zu updates, batch <= "
                            "%zu)", steps, per_step, u->T, u->batch);
    const size_t n = u->n, T = u->T;
    for (size_t t = 0; t < T; t++)
        if (!isfinite(lrs[t]))
            return qd_error_set(err, QD_ERR_NUMERIC,
                                "unroll forward: step size %zu is not "
                                "finite", t);
    memcpy(u->w, w0, n * sizeof *u->w);
    memcpy(u->lrs, lrs, T * sizeof *u->lrs);
    const size_t stride = per_step * u->in_size;
    for (size_t t = 0; t < T; t++) {
        const size_t s = t % steps;
        double *wt = u->w + t * n, *wn = wt + n, *G = u->g_inner + t * n;
        int rc = qd_model_loss_grad(u->m, wt, per_step, xs + s * stride,
                                    ys + s * per_step, NULL, G, NULL, NULL,
                                    err);
        if (rc)
            return qd_error_prefix(err, "unroll forward, inner step %zu of %zu",
                                   t + 1, T);
        if (!all_finite(G, n)) {
            char where[300];
            bad_block(u->m, G, where, sizeof where);
            return qd_error_set(err, QD_ERR_NUMERIC,
                                "unroll forward, inner step %zu of %zu: the "
                                "gradient of %s", t + 1, T, where);
        }
        const double lr = lrs[t];
        for (size_t i = 0; i < n; i++)
            wn[i] = wt[i] - lr * G[i];
    }
    u->xs = xs;
    u->ys = ys;
    u->steps = steps;
    u->per_step = per_step;
    u->have_forward = 1;
    if (w_final)
        *w_final = u->w + T * n;
    return QD_OK;
}

QD_EXPORT int qd_unroll_backward(qd_unroll *u, const double *g_T,
                                 double *g_xs, double *g_lrs, double *g_w0,
                                 double eps_rel, qd_error *err)
{
    if (!u || !g_T)
        return qd_error_set(err, QD_ERR_INVALID,
                            "unroll backward: NULL workspace or g_T");
    if (!u->have_forward)
        return qd_error_set(err, QD_ERR_INVALID,
                            "unroll backward: no successful forward to "
                            "differentiate");
    const size_t n = u->n, T = u->T, per = u->per_step;
    const size_t stride = per * u->in_size;
    if (!all_finite(g_T, n)) {
        char where[300];
        bad_block(u->m, g_T, where, sizeof where);
        return qd_error_set(err, QD_ERR_NUMERIC,
                            "unroll backward: dL/dw_T of %s", where);
    }
    memcpy(u->g, g_T, n * sizeof *u->g);
    for (size_t t = T; t-- > 0;) {
        const size_t s = t % u->steps;
        const double *wt = u->w + t * n, *G = u->g_inner + t * n;
        const double lr = u->lrs[t];
        if (g_lrs) {
            double d = 0.0;
            for (size_t i = 0; i < n; i++)
                d += u->g[i] * G[i];
            g_lrs[t] -= d;
        }
        /* The x-product is only needed when images get gradients, the
         * H-product only when an earlier step or w0 still needs g. */
        int need_h = t > 0 || g_w0 != NULL;
        double *xv = g_xs ? u->xv : NULL;
        if (!need_h && !xv)
            break;
        int rc = fd2_eval(u->m, &u->fd, wt, per, u->xs + s * stride,
                          u->ys + s * per, u->g, eps_rel,
                          need_h ? u->hv : NULL, xv, err);
        if (rc)
            return qd_error_prefix(err, "unroll backward, inner step %zu of %zu",
                                   t + 1, T);
        /* a NaN here would only surface as a non-finite meta-gradient:
         * name the layer it comes from while it is still known */
        if (need_h && !all_finite(u->hv, n)) {
            char where[300];
            bad_block(u->m, u->hv, where, sizeof where);
            return qd_error_set(err, QD_ERR_NUMERIC,
                                "unroll backward, inner step %zu of %zu: the "
                                "Hessian-vector product of %s", t + 1, T, where);
        }
        if (xv && !all_finite(xv, stride))
            return qd_error_set(err, QD_ERR_NUMERIC,
                                "unroll backward, inner step %zu of %zu: the "
                                "second-order product for the images of step "
                                "%zu is not finite", t + 1, T, s + 1);
        if (xv) {
            double *gx = g_xs + s * stride;
            for (size_t i = 0; i < stride; i++)
                gx[i] -= lr * xv[i];
        }
        if (need_h)
            for (size_t i = 0; i < n; i++)
                u->g[i] -= lr * u->hv[i];
    }
    if (g_w0)
        memcpy(g_w0, u->g, n * sizeof *g_w0);
    return QD_OK;
}
