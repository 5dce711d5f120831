/* Ansatz `basic_entangler`: PennyLane's BasicEntanglerLayers. Layer l: one
 * rotation R(w[l][i]) on every wire i, then a CNOT ring i -> (i+1) mod n
 * (n = 2: a single CNOT(0, 1); n = 1: none); then a barrier. Weight layout
 * w[l*n + i], PennyLane's (L, n). */
#include <stdlib.h>
#include <string.h>

#include "ansatz_common.h"

static const qd_param params[] = {
    QD_ANSATZ_COMMON_PARAMS,
    {"rotation", QD_PARAM_ENUM, 0, "X", 0, 0, "X|Y|Z", 0, NULL,
     "rotation gate on every wire: RX, RY or RZ (PennyLane default X)"},
    {NULL, 0, 0, NULL, 0, 0, NULL, 0, NULL, NULL},
};

typedef struct bel {
    qd_ansatz_common a;
    qd_gate rot;
} bel;

static int bel_create(const qd_host *h, void **self)
{
    bel *s = calloc(1, sizeof *s);
    if (!s)
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    qd_ansatz_common_read(&s->a, h);
    const char *r = h->get_string(h, "rotation");
    s->rot = !r || strcmp(r, "X") == 0 ? QD_GATE_RX
             : strcmp(r, "Y") == 0     ? QD_GATE_RY
                                       : QD_GATE_RZ;
    *self = s;
    return QD_OK;
}

static void bel_destroy(void *self) { free(self); }

static int bel_build(void *self, qd_circuit *c)
{
    bel *s = self;
    uint32_t n = c->n_wires;
    if (n == 0)
        return s->a.host->error(s->a.host, QD_ERR_INVALID,
                                "circuit has no wires");
    size_t L = (size_t)s->a.layers;
    uint32_t w0 = c->n_weights;
    for (size_t l = 0; l < L; l++) {
        for (uint32_t i = 0; i < n; i++) {
            qd_angle th = qd_angle_weight(w0 + (uint32_t)(l * n + i));
            int rc = qd_ansatz_add(&s->a, c, s->rot, i, 0, &th);
            if (rc)
                return rc;
        }
        /* PennyLane: two wires get one CNOT, not a 2-ring of two. */
        uint32_t n_cnot = n == 2 ? 1 : n > 2 ? n : 0;
        for (uint32_t i = 0; i < n_cnot; i++) {
            int rc = qd_ansatz_add(&s->a, c, QD_GATE_CNOT, i, (i + 1) % n,
                                   NULL);
            if (rc)
                return rc;
        }
        int rc = qd_ansatz_barrier(&s->a, c);
        if (rc)
            return rc;
    }
    return qd_ansatz_finish(&s->a, c, n, w0, L * n);
}

static int bel_init_weights(void *self, qd_rng *rng, size_t n, double *w)
{
    bel *s = self;
    return qd_ansatz_init_weights(&s->a, rng, n, w, 1);
}

static const qd_ansatz_vt vt = {
    sizeof(qd_ansatz_vt), bel_create, bel_destroy, bel_build, bel_init_weights,
};

static const qd_plugin_desc desc = QD_PLUGIN_DESC_INIT(
    QD_KIND_ANSATZ, "basic_entangler", "1.0.0",
    "PennyLane BasicEntanglerLayers: one rotation per wire, then a CNOT ring",
    params, &vt);

static const qd_plugin_desc *const descs[] = {&desc, NULL};

QD_PLUGIN_EXPORT const qd_plugin_desc *const *qd_plugin_entry(void)
{
    return descs;
}
