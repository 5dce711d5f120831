/* Ansatz `strongly_entangling`: PennyLane's StronglyEntanglingLayers.
 * Layer l: Rot(w[l][i][0], w[l][i][1], w[l][i][2]) on every wire i, then,
 * when n > 1, an entangler (CNOT by default) on (i, (i + r_l) mod n) for
 * i = 0..n-1 with r_l = (l mod (n-1)) + 1 unless `ranges` gives r_l; then a
 * barrier. Weight layout w[(l*n + i)*3 + k], PennyLane's (L, n, 3). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ansatz_common.h"

static const qd_param params[] = {
    QD_ANSATZ_COMMON_PARAMS,
    {"ranges", QD_PARAM_LIST, 0, NULL, 0, 0, NULL, QD_PARAM_INT, NULL,
     "entangler range r_l per layer, each in [1, n-1] (unset = PennyLane's "
     "(l mod (n-1)) + 1; when given without layers, L = its length)"},
    {"entangler", QD_PARAM_ENUM, 0, "CNOT", 0, 0, "CNOT|CZ", 0, NULL,
     "two-qubit gate of the ring (PennyLane's imprimitive)"},
    {NULL, 0, 0, NULL, 0, 0, NULL, 0, NULL, NULL},
};

typedef struct sel {
    qd_ansatz_common a;
    qd_gate entangler;
    size_t n_ranges;
    long long *ranges;     /* NULL = PennyLane's default rule */
    char (*where)[160];    /* "file:line:col" of each ranges item */
} sel;

static void sel_destroy(void *self)
{
    sel *s = self;
    if (s) {
        free(s->ranges);
        free(s->where);
    }
    free(s);
}

static int sel_create(const qd_host *h, void **self)
{
    sel *s = calloc(1, sizeof *s);
    if (!s)
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    qd_ansatz_common_read(&s->a, h);
    const char *e = h->get_string(h, "entangler");
    s->entangler = e && strcmp(e, "CZ") == 0 ? QD_GATE_CZ : QD_GATE_CNOT;
    if (h->has(h, "ranges")) {
        const qd_node *rn = h->get_node(h, "ranges");
        size_t n = qd_node_len(rn);
        if (qd_node_kind(rn) != QD_NODE_SEQ || n == 0) {
            sel_destroy(s);
            return h->node_error(h, rn, QD_ERR_INVALID,
                                 "ranges must be a non-empty list of ints");
        }
        s->ranges = calloc(n, sizeof *s->ranges);
        s->where = calloc(n, sizeof *s->where);
        if (!s->ranges || !s->where) {
            sel_destroy(s);
            return h->error(h, QD_ERR_NOMEM, "out of memory");
        }
        s->n_ranges = n;
        for (size_t i = 0; i < n; i++) {
            const qd_node *it = qd_node_at(rn, i);
            qd_error err = {0};
            if (qd_node_as_int(it, &s->ranges[i], &err)) {
                sel_destroy(s);
                return h->node_error(h, it, QD_ERR_INVALID,
                                     "ranges[%zu] must be an int", i);
            }
            snprintf(s->where[i], sizeof s->where[i], "%s:%d:%d",
                     qd_node_file(it) ? qd_node_file(it) : "<config>",
                     qd_node_line(it), qd_node_col(it));
        }
        if (!h->has(h, "layers"))
            s->a.layers = (long long)n;
        else if ((size_t)s->a.layers != n) {
            long long layers = s->a.layers;
            sel_destroy(s);
            return h->node_error(h, rn, QD_ERR_INVALID,
                                 "ranges has %zu entries but layers = %lld "
                                 "(one range per layer)",
                                 n, layers);
        }
    }
    *self = s;
    return QD_OK;
}

static int sel_build(void *self, qd_circuit *c)
{
    sel *s = self;
    const qd_host *h = s->a.host;
    uint32_t n = c->n_wires;
    if (n == 0)
        return h->error(h, QD_ERR_INVALID, "circuit has no wires");
    for (size_t l = 0; l < s->n_ranges; l++) {
        if (n == 1)
            return h->error(h, QD_ERR_INVALID,
                            "%s: ranges[%zu] = %lld: a 1-wire circuit has no "
                            "entanglers, drop ranges",
                            s->where[l], l, s->ranges[l]);
        if (s->ranges[l] < 1 || s->ranges[l] > (long long)n - 1)
            return h->error(h, QD_ERR_INVALID,
                            "%s: ranges[%zu] = %lld is out of range: must be "
                            "in [1, %u] for %u wires",
                            s->where[l], l, s->ranges[l], n - 1, n);
    }
    size_t L = (size_t)s->a.layers;
    uint32_t w0 = c->n_weights;
    for (size_t l = 0; l < L; l++) {
        for (uint32_t i = 0; i < n; i++) {
            uint32_t base = w0 + (uint32_t)((l * n + i) * 3);
            qd_angle th[3] = {qd_angle_weight(base), qd_angle_weight(base + 1),
                              qd_angle_weight(base + 2)};
            int rc = qd_ansatz_add(&s->a, c, QD_GATE_ROT, i, 0, th);
            if (rc)
                return rc;
        }
        if (n > 1) {
            uint32_t r = s->ranges ? (uint32_t)s->ranges[l]
                                   : (uint32_t)(l % (n - 1)) + 1;
            for (uint32_t i = 0; i < n; i++) {
                int rc = qd_ansatz_add(&s->a, c, s->entangler, i, (i + r) % n,
                                       NULL);
                if (rc)
                    return rc;
            }
        }
        int rc = qd_ansatz_barrier(&s->a, c);
        if (rc)
            return rc;
    }
    return qd_ansatz_finish(&s->a, c, n, w0, L * n * 3);
}

static int sel_init_weights(void *self, qd_rng *rng, size_t n, double *w)
{
    sel *s = self;
    return qd_ansatz_init_weights(&s->a, rng, n, w, 3);
}

static const qd_ansatz_vt vt = {
    sizeof(qd_ansatz_vt), sel_create, sel_destroy, sel_build, sel_init_weights,
};

static const qd_plugin_desc desc = QD_PLUGIN_DESC_INIT(
    QD_KIND_ANSATZ, "strongly_entangling", "1.0.0",
    "PennyLane StronglyEntanglingLayers: Rot on every wire, then a CNOT ring "
    "with range (l mod (n-1)) + 1",
    params, &vt);

static const qd_plugin_desc *const descs[] = {&desc, NULL};

QD_PLUGIN_EXPORT const qd_plugin_desc *const *qd_plugin_entry(void)
{
    return descs;
}
