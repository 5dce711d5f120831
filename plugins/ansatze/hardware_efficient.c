/* Ansatz `hardware_efficient`: layer l applies RY(w[l][i][0]) then
 * RZ(w[l][i][1]) on every wire i, then a CZ ladder (i, i+1) for i < n-1 (no
 * wrap-around: nearest neighbours on a line, as on most devices); then a
 * barrier. Weight layout w[(l*n + i)*2 + k], shape (L, n, 2). */
#include <stdlib.h>

#include "ansatz_common.h"

static const qd_param params[] = {
    QD_ANSATZ_COMMON_PARAMS,
    {NULL, 0, 0, NULL, 0, 0, NULL, 0, NULL, NULL},
};

typedef struct hea {
    qd_ansatz_common a;
} hea;

static int hea_create(const qd_host *h, void **self)
{
    hea *s = calloc(1, sizeof *s);
    if (!s)
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    qd_ansatz_common_read(&s->a, h);
    *self = s;
    return QD_OK;
}

static void hea_destroy(void *self) { free(self); }

static int hea_build(void *self, qd_circuit *c)
{
    hea *s = self;
    uint32_t n = c->n_wires;
    if (n == 0)
        return s->a.host->error(s->a.host, QD_ERR_INVALID,
                                "circuit has no wires");
    size_t L = (size_t)s->a.layers;
    uint32_t w0 = c->n_weights;
    for (size_t l = 0; l < L; l++) {
        for (uint32_t i = 0; i < n; i++) {
            uint32_t base = w0 + (uint32_t)((l * n + i) * 2);
            qd_angle ty = qd_angle_weight(base), tz = qd_angle_weight(base + 1);
            int rc = qd_ansatz_add(&s->a, c, QD_GATE_RY, i, 0, &ty);
            if (!rc)
                rc = qd_ansatz_add(&s->a, c, QD_GATE_RZ, i, 0, &tz);
            if (rc)
                return rc;
        }
        for (uint32_t i = 0; i + 1 < n; i++) {
            int rc = qd_ansatz_add(&s->a, c, QD_GATE_CZ, i, i + 1, NULL);
            if (rc)
                return rc;
        }
        int rc = qd_ansatz_barrier(&s->a, c);
        if (rc)
            return rc;
    }
    return qd_ansatz_finish(&s->a, c, n, w0, L * n * 2);
}

static int hea_init_weights(void *self, qd_rng *rng, size_t n, double *w)
{
    hea *s = self;
    return qd_ansatz_init_weights(&s->a, rng, n, w, 2);
}

static const qd_ansatz_vt vt = {
    sizeof(qd_ansatz_vt), hea_create, hea_destroy, hea_build, hea_init_weights,
};

static const qd_plugin_desc desc = QD_PLUGIN_DESC_INIT(
    QD_KIND_ANSATZ, "hardware_efficient", "1.0.0",
    "hardware-efficient layers: RY and RZ on every wire, then a CZ ladder",
    params, &vt);

static const qd_plugin_desc *const descs[] = {&desc, NULL};

QD_PLUGIN_EXPORT const qd_plugin_desc *const *qd_plugin_entry(void)
{
    return descs;
}
