/*
 * Second-order products by central differences of first-order gradients.
 *
 *   hv = H_ww v                 ~ (g_w(w + e v) - g_w(w - e v)) / 2e
 *   xv = d/dx (v . grad_w loss) ~ (g_x(w + e v) - g_x(w - e v)) / 2e
 *
 * (the second line because d/dx (v . g_w) = d/dx d/de loss(w + e v) =
 * d/de g_x(w + e v) at e = 0). Both come from the same two gradient
 * evaluations, so a reverse step through one inner update costs two
 * backward passes whatever the model, and plugins only need first order.
 *
 * Step size. e = eps_rel * (1 + |w|) / |v| makes the perturbation e v a
 * fixed *relative* change of the parameter vector, |e v| = eps_rel (1 + |w|),
 * whatever the scale of v (meta-gradients range over many decades). With
 * unit roundoff u = 1.1e-16 the central difference has
 *     truncation error  ~ (eps_rel)^2 * |third derivative| (relative),
 *     round-off error   ~ u / eps_rel  (cancellation in g(w+) - g(w-)),
 * minimised near eps_rel ~ u^(1/3) ~ 5e-6, where both are ~u^(2/3) ~ 2e-11.
 * The default 1e-5 sits at that optimum, rounded up slightly because
 * gradients are themselves sums with O(u * terms) error. The measured
 * error-versus-eps_rel curve for softmax regression against its closed-form
 * Hessian is in tests/nn/test_distill_exact.c (min ~1e-10 near 1e-5; O(e^2)
 * to the right, O(u/e) to the left).
 *
 * Frozen pieces. With ReLU or max pooling the loss is only piecewise smooth:
 * whenever w +- e v moves a pre-activation across zero or switches a
 * max-pool argmax, the gradient jumps by O(1) and the quotient by O(1/e),
 * whatever e (a smaller e makes a crossing rarer but its error larger). In
 * a real LeNet distillation this made the meta-gradient norm jump from 0.009
 * to 17 between iterations. Double backward in automatic differentiation
 * (what performance matching was published with) differentiates the smooth
 * function whose pieces (ReLU masks, argmaxes) are frozen at w. So does this
 * code: one forward at (w, x) records the pieces (QD_PIECES_RECORD), both
 * gradients replay them (QD_PIECES_REPLAY), and the model goes back to LIVE
 * on every path out. On the frozen function the error analysis above holds.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "distill_internal.h"

double fd2_norm(const double *v, size_t n)
{
    /* one plain pass; the scaled two-pass version only when the sum of
     * squares overflowed or underflowed (tiny meta-gradients) */
    double s0 = 0.0;
    for (size_t i = 0; i < n; i++)
        s0 += v[i] * v[i];
    if (isfinite(s0) && s0 > 1e-280)
        return sqrt(s0);
    double mx = 0.0;
    for (size_t i = 0; i < n; i++) {
        double a = fabs(v[i]);
        if (a > mx || a != a)
            mx = a;
    }
    if (mx == 0.0 || !isfinite(mx))
        return mx;
    double s = 0.0, inv = 1.0 / mx;
    for (size_t i = 0; i < n; i++) {
        double t = v[i] * inv;
        s += t * t;
    }
    return mx * sqrt(s);
}

int fd2_reserve(fd2_scratch *s, size_t n_params, size_t n_x, qd_error *err)
{
    if (n_params > s->n_cap) {
        double *w = malloc(n_params * sizeof *w);
        double *g = malloc(n_params * sizeof *g);
        if (!w || !g) {
            free(w);
            free(g);
            return qd_error_set(err, QD_ERR_NOMEM,
                                "second order: out of memory for %zu "
                                "parameters", n_params);
        }
        free(s->w);
        free(s->g);
        s->w = w;
        s->g = g;
        s->n_cap = n_params;
    }
    if (n_x > s->gx_cap) {
        double *gx = malloc(n_x * sizeof *gx);
        if (!gx)
            return qd_error_set(err, QD_ERR_NOMEM,
                                "second order: out of memory for %zu input "
                                "values", n_x);
        free(s->gx);
        s->gx = gx;
        s->gx_cap = n_x;
    }
    return QD_OK;
}

void fd2_free(fd2_scratch *s)
{
    free(s->w);
    free(s->g);
    free(s->gx);
    memset(s, 0, sizeof *s);
}

int fd2_eval(qd_model *m, fd2_scratch *s, const double *w, size_t batch,
             const double *x, const int32_t *y, const double *v,
             double eps_rel, double *hv, double *xv, qd_error *err)
{
    const size_t n = qd_model_n_params(m);
    const size_t nx = batch * qd_model_input_size(m);
    if (eps_rel == 0.0)
        eps_rel = FD2_DEFAULT_EPS_REL;
    if (!(eps_rel > 0.0 && eps_rel < 1.0))
        return qd_error_set(err, QD_ERR_INVALID,
                            "second order: eps_rel must be in (0, 1), got %g",
                            eps_rel);
    double nv = fd2_norm(v, n);
    if (!isfinite(nv))
        return qd_error_set(err, QD_ERR_NUMERIC,
                            "second order: the direction v is not finite");
    if (nv == 0.0) {   /* a zero direction has zero products, exactly */
        if (hv)
            memset(hv, 0, n * sizeof *hv);
        if (xv)
            memset(xv, 0, nx * sizeof *xv);
        return QD_OK;
    }
    double nw = fd2_norm(w, n);
    if (!isfinite(nw))
        return qd_error_set(err, QD_ERR_NUMERIC,
                            "second order: the parameters w are not finite");
    const double e = eps_rel * (1.0 + nw) / nv;
    int rc;

    /* Record the pieces at w (a forward only: no gradient asked for). */
    const int frozen = qd_model_has_pieces(m);
    if (frozen) {
        if ((rc = qd_model_set_pieces(m, QD_PIECES_RECORD, err)) ||
            (rc = qd_model_loss_grad(m, w, batch, x, y, NULL, NULL, NULL,
                                     NULL, err)) ||
            (rc = qd_model_set_pieces(m, QD_PIECES_REPLAY, err))) {
            qd_model_set_pieces(m, QD_PIECES_LIVE, NULL);
            return qd_error_prefix(err, "second order at w (recording the "
                                   "ReLU/max-pool pieces)");
        }
    }
    /* Plus side straight into the outputs, minus side into scratch. */
    for (size_t i = 0; i < n; i++)
        s->w[i] = w[i] + e * v[i];
    rc = qd_model_loss_grad(m, s->w, batch, x, y, NULL, hv, xv, NULL, err);
    if (rc) {
        if (frozen)
            qd_model_set_pieces(m, QD_PIECES_LIVE, NULL);
        return qd_error_prefix(err, "second order at w + e v");
    }
    for (size_t i = 0; i < n; i++)
        s->w[i] = w[i] - e * v[i];
    rc = qd_model_loss_grad(m, s->w, batch, x, y, NULL, hv ? s->g : NULL,
                            xv ? s->gx : NULL, NULL, err);
    if (frozen)
        qd_model_set_pieces(m, QD_PIECES_LIVE, NULL);
    if (rc)
        return qd_error_prefix(err, "second order at w - e v");

    const double inv = 0.5 / e;
    if (hv)
        for (size_t i = 0; i < n; i++)
            hv[i] = (hv[i] - s->g[i]) * inv;
    if (xv)
        for (size_t i = 0; i < nx; i++)
            xv[i] = (xv[i] - s->gx[i]) * inv;
    return QD_OK;
}

QD_EXPORT int qd_fd_second_order(qd_model *m, const double *w, size_t batch,
                                 const double *x, const int32_t *y,
                                 const double *v, double eps_rel, double *hv,
                                 double *xv, qd_error *err)
{
    if (!m || !x || !y || !v || (!w && qd_model_n_params(m)))
        return qd_error_set(err, QD_ERR_INVALID,
                            "second order: NULL model, parameters, input, "
                            "labels or direction");
    if (batch == 0)
        return qd_error_set(err, QD_ERR_INVALID,
                            "second order: batch must be >= 1");
    if (!hv && !xv)
        return QD_OK;
    /* One-off calls allocate; the unroll keeps its scratch across calls. */
    fd2_scratch s = {0};
    int rc = fd2_reserve(&s, qd_model_n_params(m),
                         batch * qd_model_input_size(m), err);
    if (!rc)
        rc = fd2_eval(m, &s, w, batch, x, y, v, eps_rel, hv, xv, err);
    fd2_free(&s);
    return rc;
}
