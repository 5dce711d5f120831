/* Observable `pauli_z`: output o = <Z> on wire wires[o] (all wires in order
 * by default). Fixed: no parameters. */
#include <stdio.h>
#include <stdlib.h>

#include "qdistill/plugin.h"

static const qd_param params[] = {
    {"wires", QD_PARAM_LIST, 0, "[]", 0, 0, NULL, QD_PARAM_INT, NULL,
     "measured wires, one output each, in order ([] = every wire 0..n-1)"},
    {NULL, 0, 0, NULL, 0, 0, NULL, 0, NULL, NULL},
};

typedef struct pz {
    const qd_host *host;
    size_t n_given;
    long long *given;
    char (*where)[160];
    uint32_t n_terms;    /* set by build */
} pz;

static void pz_destroy(void *self)
{
    pz *p = self;
    if (p) {
        free(p->given);
        free(p->where);
    }
    free(p);
}

static int pz_create(const qd_host *h, void **self)
{
    pz *p = calloc(1, sizeof *p);
    if (!p)
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    p->host = h;
    const qd_node *wn = h->get_node(h, "wires");
    size_t n = qd_node_len(wn);
    if (n) {
        p->given = calloc(n, sizeof *p->given);
        p->where = calloc(n, sizeof *p->where);
        if (!p->given || !p->where) {
            pz_destroy(p);
            return h->error(h, QD_ERR_NOMEM, "out of memory");
        }
        for (size_t i = 0; i < n; i++) {
            const qd_node *it = qd_node_at(wn, i);
            if (qd_node_as_int(it, &p->given[i], NULL) || p->given[i] < 0) {
                pz_destroy(p);
                return h->node_error(h, it, QD_ERR_INVALID,
                                     "wires[%zu] must be a wire index >= 0", i);
            }
            snprintf(p->where[i], sizeof p->where[i], "%s:%d:%d",
                     qd_node_file(it) ? qd_node_file(it) : "<config>",
                     qd_node_line(it), qd_node_col(it));
        }
        p->n_given = n;
    }
    *self = p;
    return QD_OK;
}

static int pz_build(void *self, uint32_t n_wires, qd_obs_spec *spec)
{
    pz *p = self;
    const qd_host *h = p->host;
    uint32_t n = p->n_given ? (uint32_t)p->n_given : n_wires;
    if (n == 0)
        return h->error(h, QD_ERR_INVALID, "circuit has no wires to measure");
    for (size_t i = 0; i < p->n_given; i++)
        if (p->given[i] >= (long long)n_wires)
            return h->error(h, QD_ERR_INVALID,
                            "%s: wires[%zu] = %lld is out of range (the "
                            "circuit has %u wires)",
                            p->where[i], i, p->given[i], n_wires);
    qd_obs_term *t = calloc(n, sizeof *t);
    if (!t)
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    for (uint32_t o = 0; o < n; o++) {
        t[o].output = o;
        t[o].n_wires = 1;
        t[o].wires[0] = p->n_given ? (uint32_t)p->given[o] : o;
        t[o].matrix = (size_t)o * 4;
    }
    spec->n_outputs = n;
    spec->n_terms = n;
    spec->terms = t;
    spec->matrix_len = (size_t)n * 4;
    p->n_terms = n;
    return QD_OK;
}

static size_t pz_n_params(void *self)
{
    (void)self;
    return 0;
}

static int pz_init_params(void *self, qd_rng *rng, double *params)
{
    (void)self;
    (void)rng;
    (void)params;
    return QD_OK;
}

static int pz_matrices(void *self, const double *params, double complex *mats)
{
    pz *p = self;
    (void)params;
    if (!p->n_terms)
        return p->host->error(p->host, QD_ERR_INVALID,
                              "matrices called before build");
    for (uint32_t t = 0; t < p->n_terms; t++) {
        double complex *m = mats + (size_t)t * 4;
        m[0] = 1;
        m[1] = 0;
        m[2] = 0;
        m[3] = -1;
    }
    return QD_OK;
}

static int pz_matrices_backward(void *self, const double *params,
                                const double complex *g_mats, double *g_params)
{
    /* No parameters: nothing to add. */
    (void)self;
    (void)params;
    (void)g_mats;
    (void)g_params;
    return QD_OK;
}

static const qd_observable_vt vt = {
    sizeof(qd_observable_vt), pz_create, pz_destroy, pz_build,
    pz_n_params, pz_init_params, pz_matrices, pz_matrices_backward,
};

static const qd_plugin_desc desc = QD_PLUGIN_DESC_INIT(
    QD_KIND_OBSERVABLE, "pauli_z", "1.0.0",
    "<Z> on each wire (or on the listed wires), one output each; fixed",
    params, &vt);

static const qd_plugin_desc *const descs[] = {&desc, NULL};

QD_PLUGIN_EXPORT const qd_plugin_desc *const *qd_plugin_entry(void)
{
    return descs;
}
