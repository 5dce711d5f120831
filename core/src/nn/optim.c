/* Optimisers over flat vectors (PyTorch update rules) and gradient-norm
 * clipping. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/train.h"

int qd_sgd_init(qd_sgd *o, size_t n, double momentum, double weight_decay,
                qd_error *err)
{
    if (!o)
        return qd_error_set(err, QD_ERR_INVALID, "sgd: optimiser is NULL");
    memset(o, 0, sizeof *o);
    if (!(momentum >= 0.0 && momentum < 1.0) || !(weight_decay >= 0.0) ||
        !isfinite(weight_decay))
        return qd_error_set(err, QD_ERR_INVALID,
                            "sgd: momentum %g must be in [0, 1) and "
                            "weight_decay %g finite and >= 0", momentum,
                            weight_decay);
    o->n = n;
    o->momentum = momentum;
    o->weight_decay = weight_decay;
    if (momentum > 0.0) {
        o->velocity = calloc(n ? n : 1, sizeof *o->velocity);
        if (!o->velocity)
            return qd_error_set(err, QD_ERR_NOMEM, "sgd: out of memory");
    }
    return QD_OK;
}

void qd_sgd_step(qd_sgd *o, double *params, const double *grad, double lr)
{
    const size_t n = o->n;
    const double wd = o->weight_decay, mu = o->momentum;
    if (!o->velocity) {
        for (size_t i = 0; i < n; i++)
            params[i] -= lr * (grad[i] + wd * params[i]);
    } else if (o->steps == 0) {
        /* PyTorch seeds the buffer with the first gradient */
        for (size_t i = 0; i < n; i++) {
            double d = grad[i] + wd * params[i];
            o->velocity[i] = d;
            params[i] -= lr * d;
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            double d = grad[i] + wd * params[i];
            double v = mu * o->velocity[i] + d;
            o->velocity[i] = v;
            params[i] -= lr * v;
        }
    }
    o->steps++;
}

void qd_sgd_reset(qd_sgd *o)
{
    if (o->velocity)
        memset(o->velocity, 0, o->n * sizeof *o->velocity);
    o->steps = 0;
}

void qd_sgd_free(qd_sgd *o)
{
    if (!o)
        return;
    free(o->velocity);
    memset(o, 0, sizeof *o);
}

int qd_adam_init(qd_adam *o, size_t n, double beta1, double beta2, double eps,
                 double weight_decay, qd_error *err)
{
    if (!o)
        return qd_error_set(err, QD_ERR_INVALID, "adam: optimiser is NULL");
    memset(o, 0, sizeof *o);
    if (!(beta1 >= 0.0 && beta1 < 1.0) || !(beta2 >= 0.0 && beta2 < 1.0) ||
        !(eps > 0.0) || !(weight_decay >= 0.0) || !isfinite(weight_decay))
        return qd_error_set(err, QD_ERR_INVALID,
                            "adam: need beta1, beta2 in [0, 1), eps > 0, "
                            "weight_decay >= 0 (got %g, %g, %g, %g)", beta1,
                            beta2, eps, weight_decay);
    o->n = n;
    o->beta1 = beta1;
    o->beta2 = beta2;
    o->eps = eps;
    o->weight_decay = weight_decay;
    o->m = calloc(n ? n : 1, sizeof *o->m);
    o->v = calloc(n ? n : 1, sizeof *o->v);
    if (!o->m || !o->v) {
        qd_adam_free(o);
        return qd_error_set(err, QD_ERR_NOMEM, "adam: out of memory");
    }
    return QD_OK;
}

void qd_adam_step(qd_adam *o, double *params, const double *grad, double lr)
{
    const double b1 = o->beta1, b2 = o->beta2, wd = o->weight_decay;
    o->t++;
    const double c1 = 1.0 - pow(b1, (double)o->t);
    const double c2 = 1.0 - pow(b2, (double)o->t);
    const double step = lr / c1, sc2 = 1.0 / sqrt(c2);
    for (size_t i = 0; i < o->n; i++) {
        double g = grad[i] + wd * params[i];
        double m = b1 * o->m[i] + (1.0 - b1) * g;
        double v = b2 * o->v[i] + (1.0 - b2) * g * g;
        o->m[i] = m;
        o->v[i] = v;
        params[i] -= step * m / (sqrt(v) * sc2 + o->eps);
    }
}

void qd_adam_reset(qd_adam *o)
{
    memset(o->m, 0, o->n * sizeof *o->m);
    memset(o->v, 0, o->n * sizeof *o->v);
    o->t = 0;
}

void qd_adam_free(qd_adam *o)
{
    if (!o)
        return;
    free(o->m);
    free(o->v);
    memset(o, 0, sizeof *o);
}

double qd_clip_grad_norm(double *grad, size_t n, double max_norm)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += grad[i] * grad[i];
    double norm = sqrt(s);
    if (max_norm > 0.0 && norm > max_norm) {
        double f = max_norm / (norm + 1e-6);
        for (size_t i = 0; i < n; i++)
            grad[i] *= f;
    }
    return norm;
}
