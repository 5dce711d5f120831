/* Encoder `angle`: PennyLane's AngleEmbedding. Feature k drives one rotation
 * on wire k; inputs are the scaled features, so the gate angle is
 * scale * x_k and the backward is g_x = scale * g_inputs. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/plugin.h"

static const qd_param params[] = {
    {"rotation", QD_PARAM_ENUM, 0, "X", 0, 0, "X|Y|Z", 0, NULL,
     "rotation axis: RX, RY or RZ of feature k on wire k (PennyLane default X)"},
    {"scale", QD_PARAM_DOUBLE, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "1", -1e6,
     1e6, NULL, 0, NULL, "angle = scale * x_k"},
    {NULL, 0, 0, NULL, 0, 0, NULL, 0, NULL, NULL},
};

typedef struct angle_enc {
    const qd_host *host;
    qd_gate gate;
    double scale;
    size_t n_features;
    int built;
} angle_enc;

static int angle_create(const qd_host *h, void **self)
{
    angle_enc *a = calloc(1, sizeof *a);
    if (!a)
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    a->host = h;
    const char *r = h->get_string(h, "rotation");
    a->gate = !r || strcmp(r, "X") == 0 ? QD_GATE_RX
              : strcmp(r, "Y") == 0     ? QD_GATE_RY
                                        : QD_GATE_RZ;
    a->scale = h->get_double(h, "scale");
    if (!isfinite(a->scale)) {
        free(a);
        return h->node_error(h, h->get_node(h, "scale"), QD_ERR_INVALID,
                             "scale must be finite");
    }
    *self = a;
    return QD_OK;
}

static void angle_destroy(void *self) { free(self); }

static int angle_build(void *self, size_t n_features, qd_circuit *c)
{
    angle_enc *a = self;
    const qd_host *h = a->host;
    if (n_features == 0)
        return h->error(h, QD_ERR_INVALID, "angle embedding of 0 features");
    if (n_features > c->n_wires)
        return h->error(h, QD_ERR_INVALID,
                        "angle embedding: %zu features need %zu wires, the "
                        "circuit has %u (one feature per wire)",
                        n_features, n_features, c->n_wires);
    uint32_t first = c->n_inputs;
    for (uint32_t k = 0; k < n_features; k++) {
        qd_angle th = qd_angle_input(first + k, 1.0);
        qd_error err = {0};
        int rc = qd_circuit_add(c, a->gate, &k, &th, &err);
        if (rc)
            return h->error(h, rc, "%s", err.msg);
    }
    a->n_features = n_features;
    a->built = 1;
    return QD_OK;
}

static int angle_encode(void *self, size_t batch, const double *x,
                        double *inputs)
{
    angle_enc *a = self;
    if (!a->built)
        return a->host->error(a->host, QD_ERR_INVALID,
                              "encode called before build");
    size_t n = a->n_features;
    for (size_t i = 0; i < batch * n; i++) {
        if (!isfinite(x[i]))
            return a->host->error(a->host, QD_ERR_NUMERIC,
                                  "angle embedding of sample %zu: feature %zu "
                                  "is not finite",
                                  i / n, i % n);
        inputs[i] = a->scale * x[i];
    }
    return QD_OK;
}

static int angle_encode_backward(void *self, size_t batch, const double *x,
                                 const double *g_inputs, double *g_x)
{
    angle_enc *a = self;
    (void)x;
    if (!a->built)
        return a->host->error(a->host, QD_ERR_INVALID,
                              "encode_backward called before build");
    for (size_t i = 0; i < batch * a->n_features; i++)
        g_x[i] = a->scale * g_inputs[i];
    return QD_OK;
}

static const qd_encoder_vt vt = {
    sizeof(qd_encoder_vt), angle_create, angle_destroy,
    angle_build, angle_encode, angle_encode_backward,
};

static const qd_plugin_desc desc = QD_PLUGIN_DESC_INIT(
    QD_KIND_ENCODER, "angle", "1.0.0",
    "angle embedding: feature k as the angle of RX/RY/RZ on wire k",
    params, &vt);

static const qd_plugin_desc *const descs[] = {&desc, NULL};

QD_PLUGIN_EXPORT const qd_plugin_desc *const *qd_plugin_entry(void)
{
    return descs;
}
