/* Encoder `iqp`: PennyLane's IQPEmbedding. Per repeat: H and RZ(x_k) on
 * wire k, then MultiRZ(x_j x_k) = exp(-i x_j x_k Z_j Z_k / 2) for each pair
 * of the pattern. The IR has no MultiRZ, so each one is CNOT(j,k) RZ(x_j x_k)
 * on k CNOT(j,k), which is the same unitary. Products are circuit inputs the
 * encoder computes, so the simulator stays linear in its inputs and
 * encode_backward chains through the products:
 *     g_x_k = g_in[k] + sum_{pairs (j,k) or (k,j)} g_in[pair] x_j. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/plugin.h"

static const qd_param params[] = {
    {"repeats", QD_PARAM_INT, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "1", 1, 1000,
     NULL, 0, NULL, "how often the H-RZ-ZZ block is repeated (n_repeats)"},
    {"pattern", QD_PARAM_ENUM, 0, "all", 0, 0, "all|linear|ring", 0, NULL,
     "ZZ pairs: all j<k (PennyLane default), linear (k, k+1), or ring "
     "(linear plus (m-1, 0))"},
    {NULL, 0, 0, NULL, 0, 0, NULL, 0, NULL, NULL},
};

typedef struct iqp {
    const qd_host *host;
    long long repeats;
    int pattern;            /* 0 all, 1 linear, 2 ring */
    size_t n_features;
    size_t n_pairs;
    uint32_t (*pairs)[2];   /* feature indices (== wires) of each product */
    int built;
} iqp;

static int iqp_create(const qd_host *h, void **self)
{
    iqp *q = calloc(1, sizeof *q);
    if (!q)
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    q->host = h;
    q->repeats = h->get_int(h, "repeats");
    const char *p = h->get_string(h, "pattern");
    q->pattern = !p || strcmp(p, "all") == 0 ? 0 : strcmp(p, "linear") == 0 ? 1 : 2;
    *self = q;
    return QD_OK;
}

static void iqp_destroy(void *self)
{
    iqp *q = self;
    if (q)
        free(q->pairs);
    free(q);
}

static int add(iqp *q, qd_circuit *c, qd_gate g, uint32_t w0, uint32_t w1,
               const qd_angle *th)
{
    uint32_t w[2] = {w0, w1};
    qd_error err = {0};
    int rc = qd_circuit_add(c, g, w, th, &err);
    return rc ? q->host->error(q->host, rc, "%s", err.msg) : QD_OK;
}

static int iqp_build(void *self, size_t n_features, qd_circuit *c)
{
    iqp *q = self;
    const qd_host *h = q->host;
    if (n_features == 0)
        return h->error(h, QD_ERR_INVALID, "IQP embedding of 0 features");
    if (n_features > c->n_wires)
        return h->error(h, QD_ERR_INVALID,
                        "IQP embedding: %zu features need %zu wires, the "
                        "circuit has %u (one feature per wire)",
                        n_features, n_features, c->n_wires);
    size_t m = n_features;
    size_t cap = m * (m - 1) / 2 + 1;
    uint32_t (*pairs)[2] = malloc(cap * sizeof *pairs);
    if (!pairs)
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    size_t np = 0;
    if (q->pattern == 0) {
        for (uint32_t j = 0; j < m; j++)
            for (uint32_t k = j + 1; k < m; k++) {
                pairs[np][0] = j;
                pairs[np++][1] = k;
            }
    } else {
        for (uint32_t k = 0; k + 1 < m; k++) {
            pairs[np][0] = k;
            pairs[np++][1] = k + 1;
        }
        if (q->pattern == 2 && m > 2) {
            pairs[np][0] = (uint32_t)m - 1;
            pairs[np++][1] = 0;
        }
    }
    free(q->pairs);
    q->pairs = pairs;
    q->n_pairs = np;
    q->n_features = m;

    uint32_t first = c->n_inputs;
    for (long long r = 0; r < q->repeats; r++) {
        for (uint32_t k = 0; k < m; k++) {
            qd_angle th = qd_angle_input(first + k, 1.0);
            int rc = add(q, c, QD_GATE_H, k, 0, NULL);
            if (!rc)
                rc = add(q, c, QD_GATE_RZ, k, 0, &th);
            if (rc)
                return rc;
        }
        for (size_t p = 0; p < np; p++) {
            uint32_t j = pairs[p][0], k = pairs[p][1];
            qd_angle th = qd_angle_input(first + (uint32_t)(m + p), 1.0);
            int rc = add(q, c, QD_GATE_CNOT, j, k, NULL);
            if (!rc)
                rc = add(q, c, QD_GATE_RZ, k, 0, &th);
            if (!rc)
                rc = add(q, c, QD_GATE_CNOT, j, k, NULL);
            if (rc)
                return rc;
        }
    }
    /* Inputs are consumed even when a pattern leaves some unused. */
    if (c->n_inputs < first + m + np)
        c->n_inputs = first + (uint32_t)(m + np);
    q->built = 1;
    return QD_OK;
}

static int iqp_encode(void *self, size_t batch, const double *x, double *inputs)
{
    iqp *q = self;
    if (!q->built)
        return q->host->error(q->host, QD_ERR_INVALID,
                              "encode called before build");
    size_t m = q->n_features, n_in = m + q->n_pairs;
    for (size_t b = 0; b < batch; b++) {
        const double *xb = x + b * m;
        double *in = inputs + b * n_in;
        for (size_t k = 0; k < m; k++) {
            if (!isfinite(xb[k]))
                return q->host->error(q->host, QD_ERR_NUMERIC,
                                      "IQP embedding of sample %zu: feature "
                                      "%zu is not finite",
                                      b, k);
            in[k] = xb[k];
        }
        for (size_t p = 0; p < q->n_pairs; p++)
            in[m + p] = xb[q->pairs[p][0]] * xb[q->pairs[p][1]];
    }
    return QD_OK;
}

static int iqp_encode_backward(void *self, size_t batch, const double *x,
                               const double *g_inputs, double *g_x)
{
    iqp *q = self;
    if (!q->built)
        return q->host->error(q->host, QD_ERR_INVALID,
                              "encode_backward called before build");
    size_t m = q->n_features, n_in = m + q->n_pairs;
    for (size_t b = 0; b < batch; b++) {
        const double *xb = x + b * m;
        const double *g = g_inputs + b * n_in;
        double *gx = g_x + b * m;
        memcpy(gx, g, m * sizeof *gx);
        for (size_t p = 0; p < q->n_pairs; p++) {
            uint32_t j = q->pairs[p][0], k = q->pairs[p][1];
            gx[j] += g[m + p] * xb[k];
            gx[k] += g[m + p] * xb[j];
        }
    }
    return QD_OK;
}

static const qd_encoder_vt vt = {
    sizeof(qd_encoder_vt), iqp_create, iqp_destroy,
    iqp_build, iqp_encode, iqp_encode_backward,
};

static const qd_plugin_desc desc = QD_PLUGIN_DESC_INIT(
    QD_KIND_ENCODER, "iqp", "1.0.0",
    "IQP embedding: H, RZ(x_k) and ZZ(x_j x_k) interactions, repeated",
    params, &vt);

static const qd_plugin_desc *const descs[] = {&desc, NULL};

QD_PLUGIN_EXPORT const qd_plugin_desc *const *qd_plugin_entry(void)
{
    return descs;
}
