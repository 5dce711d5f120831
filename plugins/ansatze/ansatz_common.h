/* Shared pieces of the ansatz plugins: the `layers`/`init` schema entries and
 * the weight initialisers. Header-only (static), so every plugin stays one
 * self-contained shared module. */
#ifndef QD_ANSATZ_COMMON_H
#define QD_ANSATZ_COMMON_H

#include <math.h>
#include <string.h>

#include "qdistill/plugin.h"

#define QD_ANSATZ_COMMON_PARAMS                                               \
    {"layers", QD_PARAM_INT, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "1", 1,      \
     10000, NULL, 0, NULL, "number of layers L"},                             \
    {"init", QD_PARAM_ENUM, 0, "uniform", 0, 0, "uniform|normal|xavier|zeros", \
     0, NULL,                                                                 \
     "weight init: uniform = U[0, 2pi); normal = N(0, init_std^2); xavier = " \
     "torch xavier_uniform_ on PennyLane's weight shape (L, n[, k]): "        \
     "U[-a, a], a = sqrt(6/(fan_in + fan_out)); zeros"},                      \
    {"init_std", QD_PARAM_DOUBLE, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "0.1", \
     0, 100, NULL, 0, NULL, "standard deviation of init: normal"}

enum { QD_INIT_UNIFORM, QD_INIT_NORMAL, QD_INIT_XAVIER, QD_INIT_ZEROS };

typedef struct qd_ansatz_common {
    const qd_host *host;
    long long layers;
    int init;
    double init_std;
    /* Set by build. */
    uint32_t n_wires;
    size_t n_weights;
    int built;
} qd_ansatz_common;

static inline void qd_ansatz_common_read(qd_ansatz_common *a, const qd_host *h)
{
    a->host = h;
    a->layers = h->get_int(h, "layers");
    const char *s = h->get_string(h, "init");
    a->init = !s || strcmp(s, "uniform") == 0 ? QD_INIT_UNIFORM
              : strcmp(s, "normal") == 0      ? QD_INIT_NORMAL
              : strcmp(s, "xavier") == 0      ? QD_INIT_XAVIER
                                              : QD_INIT_ZEROS;
    a->init_std = h->get_double(h, "init_std");
}

/* Draw the n weights of an ansatz whose PennyLane weight tensor has shape
 * (L, n_wires, per_wire). fan_in/fan_out follow torch's rule for a tensor of
 * that shape: fan_in = n_wires * per_wire, fan_out = L * per_wire. */
static inline int qd_ansatz_init_weights(const qd_ansatz_common *a, qd_rng *rng,
                                         size_t n, double *w, size_t per_wire)
{
    const qd_host *h = a->host;
    if (!a->built)
        return h->error(h, QD_ERR_INVALID, "init_weights called before build");
    if (n != a->n_weights)
        return h->error(h, QD_ERR_INVALID,
                        "init_weights: asked for %zu weights, the ansatz has "
                        "%zu (L = %lld layers x %u wires x %zu)",
                        n, a->n_weights, a->layers, a->n_wires, per_wire);
    const double two_pi = 6.283185307179586476925;
    double fan_in = (double)a->n_wires * (double)per_wire;
    double fan_out = (double)a->layers * (double)per_wire;
    double bound = sqrt(6.0 / (fan_in + fan_out));
    for (size_t i = 0; i < n; i++) {
        switch (a->init) {
        case QD_INIT_UNIFORM: w[i] = two_pi * qd_rng_uniform(rng); break;
        case QD_INIT_NORMAL: w[i] = a->init_std * qd_rng_normal(rng); break;
        case QD_INIT_XAVIER:
            w[i] = bound * (2.0 * qd_rng_uniform(rng) - 1.0);
            break;
        default: w[i] = 0.0; break;
        }
    }
    return QD_OK;
}

/* Append one gate, turning a circuit error into a host error. */
static inline int qd_ansatz_add(const qd_ansatz_common *a, qd_circuit *c,
                                qd_gate g, uint32_t w0, uint32_t w1,
                                const qd_angle *th)
{
    uint32_t w[2] = {w0, w1};
    qd_error err = {0};
    int rc = qd_circuit_add(c, g, w, th, &err);
    return rc ? a->host->error(a->host, rc, "%s", err.msg) : QD_OK;
}

/* Record what build() appended: n wires, `count` weights starting at w0
 * (the circuit's weight vector grows to cover them). */
static inline int qd_ansatz_finish(qd_ansatz_common *a, qd_circuit *c, uint32_t n,
                                   uint32_t w0, size_t count)
{
    a->n_wires = n;
    a->n_weights = count;
    if (c->n_weights < w0 + count)
        c->n_weights = w0 + (uint32_t)count;
    a->built = 1;
    return QD_OK;
}

static inline int qd_ansatz_barrier(const qd_ansatz_common *a, qd_circuit *c)
{
    qd_error err = {0};
    int rc = qd_circuit_add_barrier(c, &err);
    return rc ? a->host->error(a->host, rc, "%s", err.msg) : QD_OK;
}

#endif
