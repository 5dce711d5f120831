/* Simulator `density_matrix`: exact mixed-state simulation with noise.
 *
 * State: rho, a complex 2^n x 2^n matrix per sample (row-major), batched over
 * samples with OpenMP. rho is treated as a vector on 2n bits: row bit of wire
 * w at position 2n-1-w, column bit at n-1-w (wire 0 most significant, as in
 * circuit.h). A gate U gives U rho U^dagger (U on the row bits, conj(U) on the
 * column bits); a single-wire channel is its 4x4 superoperator on the
 * (row bit, column bit) pair of its wire.
 *
 * Noise channels (PennyLane conventions, p in [0, 1]):
 *   depolarizing       rho -> (1-p) rho + p/3 (X rho X + Y rho Y + Z rho Z)
 *   amplitude_damping  K0 = [[1,0],[0,sqrt(1-p)]], K1 = [[0,sqrt(p)],[0,0]]
 *   phase_damping      K0 = [[1,0],[0,sqrt(1-p)]], K1 = [[0,0],[0,sqrt(p)]]
 *   bit_flip           rho -> (1-p) rho + p X rho X
 * `after: gate` applies the channel after every gate on each wire the gate
 * touched (the state preparation is ideal); `after: layer` applies it on
 * every wire at each BARRIER. `wires` restricts a channel to those wires.
 * `readout_error` p is a symmetric bit flip on each measured wire applied to
 * the reduced density matrix before the observable: E = Tr(M(rho_red) H).
 * M is self-adjoint, so this equals Tr(rho_red M(H)); the simulator measures
 * M(H) and hands the observable G = sum_b g_b M(rho_red,b).
 *
 * Gradients (diff_method):
 *   adjoint          exact. The observable is back-propagated in the
 *                    Heisenberg picture through the adjoint channels
 *                    (sigma <- K^dagger sigma K summed over Kraus operators;
 *                    channels are linear so this is exact with noise), and
 *                    dL/dtheta = 2 Re Tr(sigma dU U^dagger rho') at each gate.
 *                    States are recomputed from sqrt(m) checkpoints
 *                    (m = gates + channels), so memory is O(sqrt(m)) density
 *                    matrices per thread. Counts 1 execution per sample.
 *   parameter_shift  exact for RX/RY/RZ/Rot/PhaseShift angles (two-term rule,
 *                    shifts of +-pi/2, valid with noise since the channels do
 *                    not depend on the angle); controlled rotations are
 *                    refused. State-preparation amplitudes a enter rho as
 *                    a a^T, so L is quadratic in a and the polarisation
 *                    identity dL/da_k = (L(a + e_k) - L(a - e_k)) / 2 is
 *                    exact. 2 executions per shifted angle or amplitude.
 *   finite_diff      central differences of step fd_step on every weight and
 *                    input (approximate; 2 executions per parameter).
 * The reduced density matrices for G come from the forward state in every
 * method. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/plugin.h"

/* glibc defines CMPLX only for GCC; clang gets the equivalent builtin. */
#ifndef CMPLX
#define CMPLX(x, y) __builtin_complex((double)(x), (double)(y))
#endif

typedef double complex cplx;

/* A 2^12 x 2^12 density matrix is already 256 MiB, and backward keeps about
 * 2 sqrt(m) of them per thread. */
#define DM_MAX_WIRES 12u

static const qd_param noise_fields[] = {
    {"channel", QD_PARAM_ENUM, QD_PARAM_REQUIRED, NULL, 0, 0,
     "depolarizing|amplitude_damping|phase_damping|bit_flip", 0, NULL,
     "single-qubit noise channel (PennyLane conventions)"},
    {"p", QD_PARAM_DOUBLE, QD_PARAM_REQUIRED | QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX,
     NULL, 0, 1, NULL, 0, NULL,
     "channel strength: depolarizing/bit-flip probability or damping gamma"},
    {"after", QD_PARAM_ENUM, 0, "gate", 0, 0, "gate|layer", 0, NULL,
     "gate: after every gate on each wire it touched; layer: on every wire at "
     "each barrier"},
    {"wires", QD_PARAM_LIST, 0, "[]", 0, 0, NULL, QD_PARAM_INT, NULL,
     "restrict the channel to these wires ([] = all)"},
    {NULL, 0, 0, NULL, 0, 0, NULL, 0, NULL, NULL},
};

static const qd_param params[] = {
    {"noise", QD_PARAM_LIST, 0, "[]", 0, 0, NULL, QD_PARAM_MAP, noise_fields,
     "noise channels: list of {channel, p, after, wires}, applied in order"},
    {"readout_error", QD_PARAM_DOUBLE, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "0",
     0, 1, NULL, 0, NULL,
     "symmetric bit-flip probability on each measured wire: E = "
     "Tr(M(rho_red) H)"},
    {"diff_method", QD_PARAM_ENUM, 0, "adjoint", 0, 0,
     "adjoint|parameter_shift|finite_diff", 0, NULL,
     "adjoint: exact Heisenberg back-propagation through the channels; "
     "parameter_shift: exact two-term rule (RX/RY/RZ/Rot/PhaseShift); "
     "finite_diff: central differences"},
    {"fd_step", QD_PARAM_DOUBLE, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "1e-6",
     1e-12, 1, NULL, 0, NULL, "step h of diff_method: finite_diff"},
    {NULL, 0, 0, NULL, 0, 0, NULL, 0, NULL, NULL},
};

enum { CH_DEPOL, CH_AMP, CH_PHASE, CH_BITFLIP };
enum { DIFF_ADJOINT, DIFF_SHIFT, DIFF_FD };

typedef struct noise {
    int channel;
    double p;
    int after_layer;
    size_t n_wires;             /* 0 = all wires */
    uint32_t *wires;
    char where[160];
    cplx S[16], Sa[16];         /* superoperator and its adjoint */
    int real;                   /* both are real (every channel here) */
    double Sr[16], Sar[16];
} noise;

typedef struct dm {
    const qd_host *host;
    size_t n_noise;
    noise *noise;
    double readout;
    int diff;
    double fd_step;
    uint64_t executions;
} dm;

/* ------------------------------------------------------------------------
 * Channels
 * ---------------------------------------------------------------------- */

/* Superoperator of the channel with Kraus operators K (nk 2x2, row-major):
 * S[(i,j),(k,l)] = sum K_ik conj(K_jl) maps vec(rho) -> vec(sum K rho K^+);
 * Sa[(i,j),(k,l)] = sum conj(K_ki) K_lj is the adjoint sum K^+ s K. */
static void superop(const cplx *K, int nk, cplx *S, cplx *Sa)
{
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            for (int k = 0; k < 2; k++)
                for (int l = 0; l < 2; l++) {
                    cplx s = 0, sa = 0;
                    for (int q = 0; q < nk; q++) {
                        const cplx *A = K + 4 * q;
                        s += A[2 * i + k] * conj(A[2 * j + l]);
                        sa += conj(A[2 * k + i]) * A[2 * l + j];
                    }
                    S[(2 * i + j) * 4 + 2 * k + l] = s;
                    Sa[(2 * i + j) * 4 + 2 * k + l] = sa;
                }
}

static void channel_superop(noise *ns)
{
    double p = ns->p;
    cplx K[16] = {0};
    int nk = 0;
    switch (ns->channel) {
    case CH_DEPOL: {
        double a = sqrt(1.0 - p), b = sqrt(p / 3.0);
        cplx k[16] = {a, 0, 0, a,  0, b, b, 0,  0, -I * b, I * b, 0,  b, 0, 0, -b};
        memcpy(K, k, sizeof k);
        nk = 4;
        break;
    }
    case CH_AMP: {
        cplx k[8] = {1, 0, 0, sqrt(1.0 - p),  0, sqrt(p), 0, 0};
        memcpy(K, k, sizeof k);
        nk = 2;
        break;
    }
    case CH_PHASE: {
        cplx k[8] = {1, 0, 0, sqrt(1.0 - p),  0, 0, 0, sqrt(p)};
        memcpy(K, k, sizeof k);
        nk = 2;
        break;
    }
    default: {
        double a = sqrt(1.0 - p), b = sqrt(p);
        cplx k[8] = {a, 0, 0, a,  0, b, b, 0};
        memcpy(K, k, sizeof k);
        nk = 2;
        break;
    }
    }
    superop(K, nk, ns->S, ns->Sa);
    ns->real = 1;
    for (int i = 0; i < 16; i++) {
        ns->real &= cimag(ns->S[i]) == 0 && cimag(ns->Sa[i]) == 0;
        ns->Sr[i] = creal(ns->S[i]);
        ns->Sar[i] = creal(ns->Sa[i]);
    }
}

/* ------------------------------------------------------------------------
 * Configuration
 * ---------------------------------------------------------------------- */

static void dm_destroy(void *self)
{
    dm *s = self;
    if (s) {
        for (size_t i = 0; i < s->n_noise; i++)
            free(s->noise[i].wires);
        free(s->noise);
    }
    free(s);
}

static int read_noise(const qd_host *h, const qd_node *it, size_t i, noise *ns)
{
    snprintf(ns->where, sizeof ns->where, "%s:%d:%d",
             qd_node_file(it) ? qd_node_file(it) : "<config>",
             qd_node_line(it), qd_node_col(it));
    const qd_node *cn = qd_node_get(it, "channel");
    const char *ch = qd_node_str(cn);
    if (!ch)
        return h->node_error(h, it, QD_ERR_INVALID,
                             "noise[%zu] needs a channel", i);
    if (strcmp(ch, "depolarizing") == 0)
        ns->channel = CH_DEPOL;
    else if (strcmp(ch, "amplitude_damping") == 0)
        ns->channel = CH_AMP;
    else if (strcmp(ch, "phase_damping") == 0)
        ns->channel = CH_PHASE;
    else if (strcmp(ch, "bit_flip") == 0)
        ns->channel = CH_BITFLIP;
    else
        return h->node_error(h, cn, QD_ERR_INVALID,
                             "noise[%zu]: unknown channel '%s' (depolarizing, "
                             "amplitude_damping, phase_damping, bit_flip)",
                             i, ch);
    const qd_node *pn = qd_node_get(it, "p");
    if (!pn || qd_node_as_double(pn, &ns->p, NULL) || !(ns->p >= 0.0) ||
        !(ns->p <= 1.0))
        return h->node_error(h, pn ? pn : it, QD_ERR_INVALID,
                             "noise[%zu] needs p in [0, 1]", i);
    const qd_node *an = qd_node_get(it, "after");
    const char *after = an ? qd_node_str(an) : "gate";
    if (!after || (strcmp(after, "gate") && strcmp(after, "layer")))
        return h->node_error(h, an, QD_ERR_INVALID,
                             "noise[%zu].after must be gate or layer", i);
    ns->after_layer = strcmp(after, "layer") == 0;
    const qd_node *wn = qd_node_get(it, "wires");
    size_t nw = qd_node_len(wn);
    if (nw) {
        ns->wires = calloc(nw, sizeof *ns->wires);
        if (!ns->wires)
            return h->error(h, QD_ERR_NOMEM, "out of memory");
        ns->n_wires = nw;
        for (size_t j = 0; j < nw; j++) {
            long long v;
            const qd_node *w = qd_node_at(wn, j);
            if (qd_node_as_int(w, &v, NULL) || v < 0 || v > 1000000)
                return h->node_error(h, w, QD_ERR_INVALID,
                                     "noise[%zu].wires[%zu] must be a wire "
                                     "index >= 0",
                                     i, j);
            ns->wires[j] = (uint32_t)v;
        }
    }
    channel_superop(ns);
    return QD_OK;
}

static int dm_create(const qd_host *h, void **self)
{
    dm *s = calloc(1, sizeof *s);
    if (!s)
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    s->host = h;
    s->readout = h->get_double(h, "readout_error");
    s->fd_step = h->get_double(h, "fd_step");
    const char *d = h->get_string(h, "diff_method");
    s->diff = !d || strcmp(d, "adjoint") == 0 ? DIFF_ADJOINT
              : strcmp(d, "parameter_shift") == 0 ? DIFF_SHIFT
                                                  : DIFF_FD;
    const qd_node *nn = h->get_node(h, "noise");
    size_t n = qd_node_len(nn);
    if (n) {
        s->noise = calloc(n, sizeof *s->noise);
        if (!s->noise) {
            dm_destroy(s);
            return h->error(h, QD_ERR_NOMEM, "out of memory");
        }
        s->n_noise = n;
        for (size_t i = 0; i < n; i++) {
            int rc = read_noise(h, qd_node_at(nn, i), i, &s->noise[i]);
            if (rc) {
                dm_destroy(s);
                return rc;
            }
        }
    }
    if (!(s->readout >= 0.0 && s->readout <= 1.0) || !(s->fd_step > 0.0)) {
        dm_destroy(s);
        return h->error(h, QD_ERR_INVALID,
                        "readout_error must be in [0, 1] and fd_step > 0");
    }
    *self = s;
    return QD_OK;
}

/* ------------------------------------------------------------------------
 * The program: the circuit's gates interleaved with the noise channels.
 * ---------------------------------------------------------------------- */

enum { ST_GATE, ST_CHAN };

typedef struct step {
    uint32_t kind;
    uint32_t op;      /* ST_GATE: op index */
    uint32_t wire;    /* ST_CHAN */
    uint32_t chan;    /* ST_CHAN: noise index */
} step;

typedef struct prog {
    const qd_circuit *c;
    const qd_obs_spec *obs;
    uint32_t n;
    size_t D, len;            /* D = 2^n, len = D^2 */
    size_t n_steps, cap;
    step *steps;
    int has_prep;
    size_t prep_input;
    cplx *hmats;              /* term matrices with the readout map applied */
    size_t *spread;           /* per term, d row offsets of its local index */
    size_t *spread_off;
    size_t max_d;
} prog;

static void prog_free(prog *pg)
{
    free(pg->steps);
    free(pg->hmats);
    free(pg->spread);
    free(pg->spread_off);
    memset(pg, 0, sizeof *pg);
}

static int push_step(prog *pg, step st)
{
    if (pg->n_steps == pg->cap) {
        size_t cap = pg->cap ? 2 * pg->cap : 64;
        step *s = realloc(pg->steps, cap * sizeof *s);
        if (!s)
            return QD_ERR_NOMEM;
        pg->steps = s;
        pg->cap = cap;
    }
    pg->steps[pg->n_steps++] = st;
    return QD_OK;
}

static int on_wire(const noise *ns, uint32_t w)
{
    if (!ns->n_wires)
        return 1;
    for (size_t i = 0; i < ns->n_wires; i++)
        if (ns->wires[i] == w)
            return 1;
    return 0;
}

/* Readout map M on a d x d matrix of k wires: on each wire,
 * X -> (1-p) X + p X_f X X_f. */
static void readout_map(cplx *X, uint32_t k, double p, cplx *tmp)
{
    size_t d = (size_t)1 << k;
    for (uint32_t f = 0; f < k; f++) {
        size_t bf = (size_t)1 << (k - 1 - f);
        for (size_t i = 0; i < d; i++)
            for (size_t j = 0; j < d; j++)
                tmp[i * d + j] = (1.0 - p) * X[i * d + j] +
                                 p * X[(i ^ bf) * d + (j ^ bf)];
        memcpy(X, tmp, d * d * sizeof *X);
    }
}

static int gate_shiftable(uint32_t g)
{
    return g == QD_GATE_RX || g == QD_GATE_RY || g == QD_GATE_RZ ||
           g == QD_GATE_ROT || g == QD_GATE_PHASE;
}

/* Validate the job up front and compile the program. */
static int prog_build(dm *s, const qd_sim_job *job, int for_grad_w,
                      int for_grad_x, prog *pg)
{
    const qd_host *h = s->host;
    memset(pg, 0, sizeof *pg);
    if (!job || job->struct_size < sizeof(qd_sim_job) || !job->circuit ||
        !job->obs)
        return h->error(h, QD_ERR_INVALID,
                        "job needs a circuit and an observable spec");
    const qd_circuit *c = job->circuit;
    const qd_obs_spec *obs = job->obs;
    if (c->n_wires == 0 || c->n_wires > DM_MAX_WIRES)
        return h->error(h, QD_ERR_INVALID,
                        "density_matrix simulates 1..%u wires, the circuit has "
                        "%u (a 2^n x 2^n matrix per sample)",
                        DM_MAX_WIRES, c->n_wires);
    if (job->batch > 0 && c->n_inputs > 0 && !job->inputs)
        return h->error(h, QD_ERR_INVALID,
                        "the circuit reads %u inputs per sample but job.inputs "
                        "is NULL",
                        c->n_inputs);
    if (c->n_weights > 0 && !job->weights)
        return h->error(h, QD_ERR_INVALID,
                        "the circuit reads %u weights but job.weights is NULL",
                        c->n_weights);
    uint32_t n = c->n_wires;
    pg->c = c;
    pg->obs = obs;
    pg->n = n;
    pg->D = (size_t)1 << n;
    pg->len = pg->D * pg->D;
    for (size_t i = 0; i < s->n_noise; i++)
        for (size_t j = 0; j < s->noise[i].n_wires; j++)
            if (s->noise[i].wires[j] >= n)
                return h->error(h, QD_ERR_INVALID,
                                "%s: noise[%zu] names wire %u, the circuit has "
                                "%u wires",
                                s->noise[i].where, i, s->noise[i].wires[j], n);
    int rc = QD_OK;
    for (size_t i = 0; i < c->n_ops && !rc; i++) {
        const qd_op *op = &c->ops[i];
        if (op->gate >= QD_GATE_COUNT_) {
            rc = h->error(h, QD_ERR_INVALID, "op %zu: unknown gate %u", i,
                          op->gate);
            break;
        }
        if (op->gate == QD_GATE_STATE_PREP) {
            if (i != 0 || op->n_wires != n ||
                op->data + pg->D > (size_t)c->n_inputs)
                rc = h->error(h, QD_ERR_INVALID,
                              "op %zu: state preparation must be the first op "
                              "and read 2^%u inputs within the %u given",
                              i, n, c->n_inputs);
            pg->has_prep = 1;
            pg->prep_input = op->data;
            continue;
        }
        if (op->gate == QD_GATE_BARRIER) {
            for (size_t q = 0; q < s->n_noise && !rc; q++)
                if (s->noise[q].after_layer)
                    for (uint32_t w = 0; w < n && !rc; w++)
                        if (on_wire(&s->noise[q], w))
                            rc = push_step(pg, (step){ST_CHAN, 0, w,
                                                      (uint32_t)q});
            continue;
        }
        if (op->n_wires < 1 || op->n_wires > 2 || op->wires[0] >= n ||
            (op->n_wires == 2 &&
             (op->wires[1] >= n || op->wires[1] == op->wires[0]))) {
            rc = h->error(h, QD_ERR_INVALID,
                          "op %zu (%s): bad wires for a %u-wire circuit", i,
                          qd_gate_name((qd_gate)op->gate), n);
            break;
        }
        int want_angles = op->gate == QD_GATE_UNITARY
                              ? 0
                              : qd_gate_n_angles((qd_gate)op->gate);
        size_t dd = (size_t)1 << (2 * op->n_wires);
        if ((int)op->n_angles != want_angles ||
            (op->gate == QD_GATE_UNITARY &&
             (!c->matrices || op->data + dd > c->n_matrices)) ||
            (op->gate != QD_GATE_UNITARY &&
             qd_gate_n_wires((qd_gate)op->gate) != (int)op->n_wires)) {
            rc = h->error(h, QD_ERR_INVALID,
                          "op %zu (%s): malformed (angles, wires or matrix)",
                          i, qd_gate_name((qd_gate)op->gate));
            break;
        }
        for (uint32_t k = 0; k < op->n_angles && !rc; k++) {
            const qd_angle *a = &op->angle[k];
            if ((a->src == QD_SRC_WEIGHT && a->index >= c->n_weights) ||
                (a->src == QD_SRC_INPUT && a->index >= c->n_inputs))
                rc = h->error(h, QD_ERR_INVALID,
                              "op %zu (%s): angle %u reads %s %u out of range",
                              i, qd_gate_name((qd_gate)op->gate), k,
                              a->src == QD_SRC_WEIGHT ? "weight" : "input",
                              a->index);
            int need = (a->src == QD_SRC_WEIGHT && for_grad_w) ||
                       (a->src == QD_SRC_INPUT && for_grad_x);
            if (!rc && need && s->diff == DIFF_SHIFT &&
                !gate_shiftable(op->gate))
                rc = h->error(h, QD_ERR_UNSUPPORTED,
                              "diff_method parameter_shift: op %zu (%s) has no "
                              "two-term shift rule (use adjoint or "
                              "finite_diff)",
                              i, qd_gate_name((qd_gate)op->gate));
        }
        if (!rc)
            rc = push_step(pg, (step){ST_GATE, (uint32_t)i, 0, 0});
        for (size_t q = 0; q < s->n_noise && !rc; q++)
            if (!s->noise[q].after_layer)
                for (uint32_t w = 0; w < op->n_wires && !rc; w++)
                    if (on_wire(&s->noise[q], op->wires[w]))
                        rc = push_step(pg, (step){ST_CHAN, 0, op->wires[w],
                                                  (uint32_t)q});
    }
    if (rc == QD_ERR_NOMEM)
        h->error(h, rc, "out of memory");
    if (rc) {
        prog_free(pg);
        return rc;
    }

    /* Observable terms. */
    if (obs->n_terms > 0 && (!job->obs_mats || !obs->terms)) {
        prog_free(pg);
        return h->error(h, QD_ERR_INVALID, "job.obs_mats is NULL");
    }
    size_t n_spread = 0;
    for (uint32_t t = 0; t < obs->n_terms; t++) {
        const qd_obs_term *tm = &obs->terms[t];
        uint32_t k = tm->n_wires;
        int bad = k < 1 || k > QD_OBS_MAX_WIRES || k > n ||
                  tm->output >= obs->n_outputs ||
                  tm->matrix + ((size_t)1 << (2 * k)) > obs->matrix_len;
        for (uint32_t a = 0; a < k && !bad; a++) {
            bad = tm->wires[a] >= n;
            for (uint32_t b = 0; b < a && !bad; b++)
                bad = tm->wires[a] == tm->wires[b];
        }
        if (bad) {
            prog_free(pg);
            return h->error(h, QD_ERR_INVALID,
                            "observable term %u is malformed for a %u-wire "
                            "circuit (wires, output or matrix offset)",
                            t, n);
        }
        n_spread += (size_t)1 << k;
        if (((size_t)1 << k) > pg->max_d)
            pg->max_d = (size_t)1 << k;
    }
    pg->hmats = malloc((obs->matrix_len ? obs->matrix_len : 1) * sizeof *pg->hmats);
    pg->spread = malloc((n_spread ? n_spread : 1) * sizeof *pg->spread);
    pg->spread_off = malloc((obs->n_terms ? obs->n_terms : 1) * sizeof *pg->spread_off);
    cplx *tmp = malloc(((size_t)1 << (2 * QD_OBS_MAX_WIRES)) * sizeof *tmp);
    if (!pg->hmats || !pg->spread || !pg->spread_off || !tmp) {
        free(tmp);
        prog_free(pg);
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    }
    size_t so = 0;
    for (uint32_t t = 0; t < obs->n_terms; t++) {
        const qd_obs_term *tm = &obs->terms[t];
        uint32_t k = tm->n_wires;
        size_t d = (size_t)1 << k;
        const cplx *H = job->obs_mats + tm->matrix;
        cplx *Hp = pg->hmats + tm->matrix;
        for (size_t i = 0; i < d; i++)
            for (size_t j = 0; j < d; j++) {
                cplx v = H[i * d + j];
                if (!isfinite(creal(v)) || !isfinite(cimag(v)) ||
                    cabs(v - conj(H[j * d + i])) > 1e-8 * (1.0 + cabs(v))) {
                    free(tmp);
                    prog_free(pg);
                    return h->error(h, QD_ERR_INVALID,
                                    "observable term %u: matrix entry (%zu, "
                                    "%zu) is not finite or the matrix is not "
                                    "Hermitian",
                                    t, i, j);
                }
                Hp[i * d + j] = v;
            }
        if (s->readout > 0)
            readout_map(Hp, k, s->readout, tmp);
        pg->spread_off[t] = so;
        for (size_t i = 0; i < d; i++) {
            size_t off = 0;
            for (uint32_t f = 0; f < k; f++)
                if ((i >> (k - 1 - f)) & 1u)
                    off |= (size_t)1 << (n - 1 - tm->wires[f]);
            pg->spread[so + i] = off;
        }
        so += d;
    }
    free(tmp);
    return QD_OK;
}

/* ------------------------------------------------------------------------
 * Kernels on a 2n-bit vector (the density matrix, or sigma).
 * ---------------------------------------------------------------------- */

/* Complex products written out: C's `*` on complex operands calls the
 * NaN-recovering libgcc routine (Annex G) unless -fcx-limited-range, which
 * costs several times the arithmetic in these inner loops. */
static inline cplx cmul(cplx a, cplx b)
{
    double ar = creal(a), ai = cimag(a), br = creal(b), bi = cimag(b);
    return CMPLX(ar * br - ai * bi, ar * bi + ai * br);
}

/* conj(a) * b */
static inline cplx cmulc(cplx a, cplx b)
{
    double ar = creal(a), ai = cimag(a), br = creal(b), bi = cimag(b);
    return CMPLX(ar * br + ai * bi, ar * bi - ai * br);
}

static inline size_t ins0(size_t k, unsigned p)
{
    size_t low = ((size_t)1 << p) - 1;
    return ((k & ~low) << 1) | (k & low);
}

static void apply1(cplx *v, size_t len, unsigned p, const cplx *m)
{
    size_t bit = (size_t)1 << p;
    for (size_t k = 0; k < len / 2; k++) {
        size_t i0 = ins0(k, p), i1 = i0 | bit;
        cplx a = v[i0], b = v[i1];
        v[i0] = cmul(m[0], a) + cmul(m[1], b);
        v[i1] = cmul(m[2], a) + cmul(m[3], b);
    }
}

/* 4x4 m on bits (p_hi, p_lo): local index (bit p_hi) * 2 + (bit p_lo). */
static void apply2(cplx *v, size_t len, unsigned p_hi, unsigned p_lo,
                   const cplx *m)
{
    unsigned lo = p_hi < p_lo ? p_hi : p_lo, hi = p_hi < p_lo ? p_lo : p_hi;
    size_t bh = (size_t)1 << p_hi, bl = (size_t)1 << p_lo;
    for (size_t k = 0; k < len / 4; k++) {
        size_t i0 = ins0(ins0(k, lo), hi);
        size_t idx[4] = {i0, i0 | bl, i0 | bh, i0 | bh | bl};
        cplx a[4] = {v[idx[0]], v[idx[1]], v[idx[2]], v[idx[3]]};
        for (int r = 0; r < 4; r++)
            v[idx[r]] = cmul(m[4 * r], a[0]) + cmul(m[4 * r + 1], a[1]) +
                        cmul(m[4 * r + 2], a[2]) + cmul(m[4 * r + 3], a[3]);
    }
}

/* apply2 for a real 4x4 m (the channels' superoperators): half the flops,
 * and zero entries skipped. */
static void apply2_real(cplx *v, size_t len, unsigned p_hi, unsigned p_lo,
                        const double *m)
{
    unsigned lo = p_hi < p_lo ? p_hi : p_lo, hi = p_hi < p_lo ? p_lo : p_hi;
    size_t bh = (size_t)1 << p_hi, bl = (size_t)1 << p_lo;
    for (size_t k = 0; k < len / 4; k++) {
        size_t i0 = ins0(ins0(k, lo), hi);
        size_t idx[4] = {i0, i0 | bl, i0 | bh, i0 | bh | bl};
        cplx a[4] = {v[idx[0]], v[idx[1]], v[idx[2]], v[idx[3]]};
        for (int r = 0; r < 4; r++) {
            double re = 0.0, im = 0.0;
            for (int c = 0; c < 4; c++) {
                double w = m[4 * r + c];
                if (w != 0.0) {
                    re += w * creal(a[c]);
                    im += w * cimag(a[c]);
                }
            }
            v[idx[r]] = CMPLX(re, im);
        }
    }
}

/* Tr(sigma A rho) with A local on the row bits of the op's wires, using
 * sigma's Hermiticity: sum_rc conj(sigma_rc) (A rho)_rc. */
static cplx tr_sig_a_rho(const cplx *sig, const cplx *rho, size_t len,
                         uint32_t nw, unsigned p_hi, unsigned p_lo,
                         const cplx *A)
{
    cplx acc = 0;
    if (nw == 1) {
        size_t bit = (size_t)1 << p_hi;
        for (size_t k = 0; k < len / 2; k++) {
            size_t i0 = ins0(k, p_hi), i1 = i0 | bit;
            cplx a = rho[i0], b = rho[i1];
            acc += cmulc(sig[i0], cmul(A[0], a) + cmul(A[1], b)) +
                   cmulc(sig[i1], cmul(A[2], a) + cmul(A[3], b));
        }
        return acc;
    }
    unsigned lo = p_hi < p_lo ? p_hi : p_lo, hi = p_hi < p_lo ? p_lo : p_hi;
    size_t bh = (size_t)1 << p_hi, bl = (size_t)1 << p_lo;
    for (size_t k = 0; k < len / 4; k++) {
        size_t i0 = ins0(ins0(k, lo), hi);
        size_t idx[4] = {i0, i0 | bl, i0 | bh, i0 | bh | bl};
        cplx a[4] = {rho[idx[0]], rho[idx[1]], rho[idx[2]], rho[idx[3]]};
        for (int r = 0; r < 4; r++)
            acc += cmulc(sig[idx[r]],
                         cmul(A[4 * r], a[0]) + cmul(A[4 * r + 1], a[1]) +
                             cmul(A[4 * r + 2], a[2]) + cmul(A[4 * r + 3], a[3]));
    }
    return acc;
}

static inline unsigned rowbit(const prog *pg, uint32_t w)
{
    return 2 * pg->n - 1 - w;
}
static inline unsigned colbit(const prog *pg, uint32_t w)
{
    return pg->n - 1 - w;
}

/* A monomial matrix (one non-zero per row: diagonal and permutation gates
 * such as RZ, CZ, CNOT, X, SWAP) is applied without the dense product:
 * out[r] = coef[r] a[perm[r]], skipping rows that stay as they are. Returns
 * 0 when m is not monomial. */
static int monomial(const cplx *m, size_t d, int *perm, cplx *coef)
{
    for (size_t r = 0; r < d; r++) {
        int col = -1;
        for (size_t c = 0; c < d; c++)
            if (m[r * d + c] != 0) {
                if (col >= 0)
                    return 0;
                col = (int)c;
            }
        if (col < 0)
            return 0;
        perm[r] = col;
        coef[r] = m[r * d + col];
    }
    return 1;
}

static void apply_mono(cplx *v, size_t len, uint32_t nb, unsigned p_hi,
                       unsigned p_lo, const int *perm, const cplx *coef)
{
    int keep[4], one[4];
    size_t d = (size_t)1 << nb;
    for (size_t r = 0; r < d; r++) {
        one[r] = coef[r] == 1;
        keep[r] = one[r] && perm[r] == (int)r;
    }
    if (nb == 1) {
        size_t bit = (size_t)1 << p_hi;
        for (size_t k = 0; k < len / 2; k++) {
            size_t idx[2];
            idx[0] = ins0(k, p_hi);
            idx[1] = idx[0] | bit;
            cplx a[2] = {v[idx[0]], v[idx[1]]};
            for (int r = 0; r < 2; r++)
                if (!keep[r])
                    v[idx[r]] = one[r] ? a[perm[r]] : cmul(coef[r], a[perm[r]]);
        }
        return;
    }
    unsigned lo = p_hi < p_lo ? p_hi : p_lo, hi = p_hi < p_lo ? p_lo : p_hi;
    size_t bh = (size_t)1 << p_hi, bl = (size_t)1 << p_lo;
    for (size_t k = 0; k < len / 4; k++) {
        size_t i0 = ins0(ins0(k, lo), hi);
        size_t idx[4] = {i0, i0 | bl, i0 | bh, i0 | bh | bl};
        cplx a[4] = {v[idx[0]], v[idx[1]], v[idx[2]], v[idx[3]]};
        for (int r = 0; r < 4; r++)
            if (!keep[r])
                v[idx[r]] = one[r] ? a[perm[r]] : cmul(coef[r], a[perm[r]]);
    }
}

/* U rho U^+ (adjoint = 0) or U^+ sigma U (adjoint = 1). */
static void apply_gate(const prog *pg, const qd_op *op, const cplx *U,
                       cplx *v, int adjoint)
{
    size_t d = (size_t)1 << op->n_wires;
    cplx L[16], R[16];
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < d; j++) {
            if (!adjoint) {
                L[i * d + j] = U[i * d + j];          /* U on rows */
                R[i * d + j] = conj(U[i * d + j]);    /* conj(U) on columns */
            } else {
                L[i * d + j] = conj(U[j * d + i]);    /* U^+ on rows */
                R[i * d + j] = U[j * d + i];          /* U^T on columns */
            }
        }
    int perm[4];
    cplx coef[4];
    unsigned r0 = rowbit(pg, op->wires[0]), c0 = colbit(pg, op->wires[0]);
    unsigned r1 = op->n_wires == 2 ? rowbit(pg, op->wires[1]) : 0;
    unsigned c1 = op->n_wires == 2 ? colbit(pg, op->wires[1]) : 0;
    if (monomial(L, d, perm, coef)) {
        apply_mono(v, pg->len, op->n_wires, r0, r1, perm, coef);
        monomial(R, d, perm, coef);   /* same pattern, conjugated */
        apply_mono(v, pg->len, op->n_wires, c0, c1, perm, coef);
        return;
    }
    if (op->n_wires == 1) {
        apply1(v, pg->len, r0, L);
        apply1(v, pg->len, c0, R);
    } else {
        apply2(v, pg->len, rowbit(pg, op->wires[0]), rowbit(pg, op->wires[1]), L);
        apply2(v, pg->len, colbit(pg, op->wires[0]), colbit(pg, op->wires[1]), R);
    }
}

/* An angle override for parameter-shift executions. */
typedef struct shift {
    size_t step;
    uint32_t k;
    double delta;
} shift;

typedef struct sample {
    const prog *pg;
    const dm *s;
    const double *w;        /* weights */
    const double *x;        /* this sample's inputs */
    const double *amp;      /* state-prep amplitudes (NULL: from x) */
    const shift *ov;
} sample;

static void gate_matrix(const sample *sm, size_t st, cplx *U, cplx *dU)
{
    const qd_op *op = &sm->pg->c->ops[sm->pg->steps[st].op];
    double theta[QD_OP_MAX_ANGLES];
    qd_op_angles(op, sm->w, sm->x, theta);
    if (sm->ov && sm->ov->step == st)
        theta[sm->ov->k] += sm->ov->delta;
    qd_op_matrix(sm->pg->c, op, theta, U, dU);
}

static void apply_step(const sample *sm, size_t st, cplx *v, int adjoint)
{
    const prog *pg = sm->pg;
    const step *sp = &pg->steps[st];
    if (sp->kind == ST_CHAN) {
        const noise *ns = &sm->s->noise[sp->chan];
        unsigned rb = rowbit(pg, sp->wire), cb = colbit(pg, sp->wire);
        if (ns->real)
            apply2_real(v, pg->len, rb, cb, adjoint ? ns->Sar : ns->Sr);
        else
            apply2(v, pg->len, rb, cb, adjoint ? ns->Sa : ns->S);
        return;
    }
    const qd_op *op = &pg->c->ops[sp->op];
    if (op->gate == QD_GATE_I)
        return;
    cplx U[16];
    gate_matrix(sm, st, U, NULL);
    apply_gate(pg, op, U, v, adjoint);
}

static void init_state(const sample *sm, cplx *rho)
{
    const prog *pg = sm->pg;
    if (!pg->has_prep) {
        memset(rho, 0, pg->len * sizeof *rho);
        rho[0] = 1;
        return;
    }
    const double *a = sm->amp ? sm->amp : sm->x + pg->prep_input;
    for (size_t r = 0; r < pg->D; r++)
        for (size_t c = 0; c < pg->D; c++)
            rho[r * pg->D + c] = a[r] * a[c];
}

/* Reduced density matrix of term t (d x d) from rho. */
static void reduce(const prog *pg, const cplx *rho, uint32_t t, cplx *out)
{
    const qd_obs_term *tm = &pg->obs->terms[t];
    uint32_t k = tm->n_wires;
    size_t d = (size_t)1 << k;
    const size_t *sp = pg->spread + pg->spread_off[t];
    unsigned pos[QD_OBS_MAX_WIRES];
    for (uint32_t f = 0; f < k; f++)
        pos[f] = pg->n - 1 - tm->wires[f];
    /* insert zeros in ascending bit order */
    for (uint32_t a = 1; a < k; a++)
        for (uint32_t b = a; b > 0 && pos[b - 1] > pos[b]; b--) {
            unsigned x = pos[b];
            pos[b] = pos[b - 1];
            pos[b - 1] = x;
        }
    memset(out, 0, d * d * sizeof *out);
    size_t ne = pg->D >> k;
    for (size_t q = 0; q < ne; q++) {
        size_t e = q;
        for (uint32_t f = 0; f < k; f++)
            e = ins0(e, pos[f]);
        for (size_t i = 0; i < d; i++) {
            const cplx *row = rho + (e | sp[i]) * pg->D;
            for (size_t j = 0; j < d; j++)
                out[i * d + j] += row[e | sp[j]];
        }
    }
}

/* sigma += coef * (H_t embedded on all wires). */
static void embed_add(const prog *pg, cplx *sig, uint32_t t, double coef)
{
    const qd_obs_term *tm = &pg->obs->terms[t];
    uint32_t k = tm->n_wires;
    size_t d = (size_t)1 << k;
    const size_t *sp = pg->spread + pg->spread_off[t];
    const cplx *H = pg->hmats + tm->matrix;
    unsigned pos[QD_OBS_MAX_WIRES];
    for (uint32_t f = 0; f < k; f++)
        pos[f] = pg->n - 1 - tm->wires[f];
    for (uint32_t a = 1; a < k; a++)
        for (uint32_t b = a; b > 0 && pos[b - 1] > pos[b]; b--) {
            unsigned x = pos[b];
            pos[b] = pos[b - 1];
            pos[b - 1] = x;
        }
    size_t ne = pg->D >> k;
    for (size_t q = 0; q < ne; q++) {
        size_t e = q;
        for (uint32_t f = 0; f < k; f++)
            e = ins0(e, pos[f]);
        for (size_t i = 0; i < d; i++) {
            cplx *row = sig + (e | sp[i]) * pg->D;
            for (size_t j = 0; j < d; j++)
                row[e | sp[j]] += coef * H[i * d + j];
        }
    }
}

/* Expectations of every output from the final state; red is scratch of
 * max_d^2. Returns 0, or -1 when a value is not finite. */
static int expectations(const prog *pg, const cplx *rho, cplx *red, double *E)
{
    const qd_obs_spec *obs = pg->obs;
    for (uint32_t o = 0; o < obs->n_outputs; o++)
        E[o] = 0.0;
    for (uint32_t t = 0; t < obs->n_terms; t++) {
        const qd_obs_term *tm = &obs->terms[t];
        size_t d = (size_t)1 << tm->n_wires;
        reduce(pg, rho, t, red);
        const cplx *H = pg->hmats + tm->matrix;
        double e = 0.0;
        for (size_t i = 0; i < d; i++)
            for (size_t j = 0; j < d; j++)
                e += creal(cmul(red[i * d + j], H[j * d + i]));
        E[tm->output] += e;
    }
    for (uint32_t o = 0; o < obs->n_outputs; o++)
        if (!isfinite(E[o]))
            return -1;
    return 0;
}

static void run(const sample *sm, cplx *rho)
{
    init_state(sm, rho);
    for (size_t st = 0; st < sm->pg->n_steps; st++)
        apply_step(sm, st, rho, 0);
}

/* L = sum_o g_o E_o of one execution; returns -1 on a non-finite value. */
static int run_loss(const sample *sm, cplx *rho, cplx *red, double *E,
                    const double *g, double *L)
{
    run(sm, rho);
    if (expectations(sm->pg, rho, red, E))
        return -1;
    double s = 0.0;
    for (uint32_t o = 0; o < sm->pg->obs->n_outputs; o++)
        s += g[o] * E[o];
    *L = s;
    return 0;
}

/* G contribution of one sample: gm[t] += g[out_t] M(rho_red,t). */
static void add_gmats(const prog *pg, const dm *s, const cplx *rho,
                      const double *g, cplx *red, cplx *tmp, cplx *gm)
{
    const qd_obs_spec *obs = pg->obs;
    for (uint32_t t = 0; t < obs->n_terms; t++) {
        const qd_obs_term *tm = &obs->terms[t];
        size_t d = (size_t)1 << tm->n_wires;
        reduce(pg, rho, t, red);
        if (s->readout > 0)
            readout_map(red, tm->n_wires, s->readout, tmp);
        double c = g[tm->output];
        for (size_t e = 0; e < d * d; e++)
            gm[tm->matrix + e] += c * red[e];
    }
}

/* ------------------------------------------------------------------------
 * forward
 * ---------------------------------------------------------------------- */

static int report_numeric(dm *s, size_t b)
{
    return s->host->error(s->host, QD_ERR_NUMERIC,
                          "sample %zu: an expectation value is not finite "
                          "(check the inputs, weights and observable)",
                          b);
}

static int dm_forward(void *self, const qd_sim_job *job, double *expect)
{
    dm *s = self;
    prog pg;
    int rc = prog_build(s, job, 0, 0, &pg);
    if (rc)
        return rc;
    size_t B = job->batch;
    uint32_t no = job->obs->n_outputs;
    uint32_t nin = job->circuit->n_inputs;
    int nomem = 0;
    long bad = -1;
#pragma omp parallel
    {
        cplx *rho = malloc(pg.len * sizeof *rho);
        cplx *red = malloc((pg.max_d * pg.max_d + 1) * sizeof *red);
        if (!rho || !red) {
#pragma omp atomic write
            nomem = 1;
        }
#pragma omp for schedule(static)
        for (size_t b = 0; b < B; b++) {
            if (!rho || !red)
                continue;
            sample sm = {&pg, s, job->weights,
                         job->inputs ? job->inputs + b * nin : NULL, NULL, NULL};
            run(&sm, rho);
            if (expectations(&pg, rho, red, expect + b * no)) {
#pragma omp critical(dm_bad)
                if (bad < 0 || (long)b < bad)
                    bad = (long)b;
            }
        }
        free(rho);
        free(red);
    }
    size_t D = pg.D;
    prog_free(&pg);
    if (nomem)
        return s->host->error(s->host, QD_ERR_NOMEM,
                              "out of memory for a %zu x %zu density matrix",
                              D, D);
    if (bad >= 0)
        return report_numeric(s, (size_t)bad);
    s->executions += B;
    return QD_OK;
}

/* ------------------------------------------------------------------------
 * backward
 * ---------------------------------------------------------------------- */

typedef struct bwd_out {
    double *gw;          /* this sample's dL/dweights, or NULL */
    double *gx;          /* this sample's dL/dinputs, or NULL */
    cplx *gm;            /* this sample's G contributions, or NULL */
} bwd_out;

/* Per-thread scratch. */
typedef struct scratch {
    cplx *rho, *sig, *red, *tmp;
    cplx **ck, **seg;
    size_t n_ck, K;
    double *E, *wcopy, *xcopy, *amp;
} scratch;

static void scratch_free(scratch *w)
{
    if (w->ck)
        for (size_t i = 0; i < w->n_ck; i++)
            free(w->ck[i]);
    if (w->seg)
        for (size_t i = 0; i <= w->K; i++)
            free(w->seg[i]);
    free(w->ck);
    free(w->seg);
    free(w->rho);
    free(w->sig);
    free(w->red);
    free(w->tmp);
    free(w->E);
    free(w->wcopy);
    free(w->xcopy);
    free(w->amp);
    memset(w, 0, sizeof *w);
}

static int scratch_alloc(scratch *w, const prog *pg, int diff)
{
    memset(w, 0, sizeof *w);
    size_t md2 = pg->max_d * pg->max_d + 1;
    size_t nw = pg->c->n_weights + 1, nx = pg->c->n_inputs + 1;
    w->rho = malloc(pg->len * sizeof *w->rho);
    w->red = malloc(md2 * sizeof *w->red);
    w->tmp = malloc(md2 * sizeof *w->tmp);
    w->E = malloc((pg->obs->n_outputs + 1) * sizeof *w->E);
    w->wcopy = malloc(nw * sizeof *w->wcopy);
    w->xcopy = malloc(nx * sizeof *w->xcopy);
    w->amp = malloc(pg->D * sizeof *w->amp);
    if (!w->rho || !w->red || !w->tmp || !w->E || !w->wcopy || !w->xcopy ||
        !w->amp)
        return -1;
    if (diff != DIFF_ADJOINT)
        return 0;
    size_t m = pg->n_steps;
    size_t K = 1;
    while (K * K < m)
        K++;
    w->K = K;
    w->n_ck = m ? (m + K - 1) / K : 0;
    w->sig = malloc(pg->len * sizeof *w->sig);
    w->ck = calloc(w->n_ck + 1, sizeof *w->ck);
    w->seg = calloc(K + 1, sizeof *w->seg);
    if (!w->sig || !w->ck || !w->seg)
        return -1;
    for (size_t i = 0; i < w->n_ck; i++)
        if (!(w->ck[i] = malloc(pg->len * sizeof **w->ck)))
            return -1;
    for (size_t i = 0; i <= K; i++)
        if (!(w->seg[i] = malloc(pg->len * sizeof **w->seg)))
            return -1;
    return 0;
}

static void chain(const qd_angle *a, double dth, bwd_out *o)
{
    if (a->src == QD_SRC_WEIGHT && o->gw)
        o->gw[a->index] += a->scale * dth;
    else if (a->src == QD_SRC_INPUT && o->gx)
        o->gx[a->index] += a->scale * dth;
}

static int wants(const qd_angle *a, const bwd_out *o)
{
    return (a->src == QD_SRC_WEIGHT && o->gw) || (a->src == QD_SRC_INPUT && o->gx);
}

/* Adjoint differentiation of one sample. Returns executions, or -1 when a
 * value is not finite. */
static long back_adjoint(const sample *sm, const double *g, scratch *w,
                         bwd_out *o)
{
    const prog *pg = sm->pg;
    size_t m = pg->n_steps, K = w->K;
    cplx *rho = w->rho;
    init_state(sm, rho);
    for (size_t st = 0; st < m; st++) {
        if (st % K == 0)
            memcpy(w->ck[st / K], rho, pg->len * sizeof *rho);
        apply_step(sm, st, rho, 0);
    }
    if (expectations(pg, rho, w->red, w->E))
        return -1;
    if (o->gm)
        add_gmats(pg, sm->s, rho, g, w->red, w->tmp, o->gm);
    if (!o->gw && !o->gx)
        return 1;
    cplx *sig = w->sig;
    memset(sig, 0, pg->len * sizeof *sig);
    for (uint32_t t = 0; t < pg->obs->n_terms; t++) {
        double c = g[pg->obs->terms[t].output];
        if (c != 0.0)
            embed_add(pg, sig, t, c);
    }
    for (size_t j = w->n_ck; j-- > 0;) {
        size_t start = j * K, end = start + K < m ? start + K : m;
        memcpy(w->seg[0], w->ck[j], pg->len * sizeof *rho);
        for (size_t st = start; st < end; st++) {
            memcpy(w->seg[st - start + 1], w->seg[st - start],
                   pg->len * sizeof *rho);
            apply_step(sm, st, w->seg[st - start + 1], 0);
        }
        for (size_t st = end; st-- > start;) {
            const step *sp = &pg->steps[st];
            if (sp->kind == ST_GATE) {
                const qd_op *op = &pg->c->ops[sp->op];
                int any = 0;
                for (uint32_t k = 0; k < op->n_angles; k++)
                    any |= wants(&op->angle[k], o);
                if (any) {
                    cplx U[16], dU[3 * 16];
                    gate_matrix(sm, st, U, dU);
                    size_t d = (size_t)1 << op->n_wires;
                    const cplx *after = w->seg[st - start + 1];
                    unsigned ph = rowbit(pg, op->wires[0]);
                    unsigned pl = op->n_wires == 2 ? rowbit(pg, op->wires[1]) : 0;
                    for (uint32_t k = 0; k < op->n_angles; k++) {
                        if (!wants(&op->angle[k], o))
                            continue;
                        /* A = dU_k U^+ acts on the state after the gate. */
                        cplx A[16];
                        const cplx *D = dU + k * d * d;
                        for (size_t r = 0; r < d; r++)
                            for (size_t c = 0; c < d; c++) {
                                cplx v = 0;
                                for (size_t q = 0; q < d; q++)
                                    v += D[r * d + q] * conj(U[c * d + q]);
                                A[r * d + c] = v;
                            }
                        cplx tr = tr_sig_a_rho(sig, after, pg->len,
                                               op->n_wires, ph, pl, A);
                        chain(&op->angle[k], 2.0 * creal(tr), o);
                    }
                }
            }
            apply_step(sm, st, sig, 1);
        }
    }
    if (pg->has_prep && o->gx) {
        /* rho_0 = a a^T: dL/da = 2 Re(sigma_0 a). */
        const double *a = sm->amp ? sm->amp : sm->x + pg->prep_input;
        double *ga = o->gx + pg->prep_input;
        for (size_t r = 0; r < pg->D; r++) {
            double v = 0.0;
            const cplx *row = sig + r * pg->D;
            for (size_t c = 0; c < pg->D; c++)
                v += creal(row[c]) * a[c];
            ga[r] += 2.0 * v;
        }
    }
    return 1;
}

/* Parameter-shift (and polarisation for amplitudes) for one sample. */
static long back_shift(const sample *sm0, const double *g, scratch *w,
                       bwd_out *o)
{
    const prog *pg = sm0->pg;
    long execs = 0;
    if (o->gm) {
        run(sm0, w->rho);
        if (expectations(pg, w->rho, w->red, w->E))
            return -1;
        add_gmats(pg, sm0->s, w->rho, g, w->red, w->tmp, o->gm);
        execs++;
    }
    const double half_pi = 1.57079632679489661923;
    for (size_t st = 0; st < pg->n_steps; st++) {
        const step *sp = &pg->steps[st];
        if (sp->kind != ST_GATE)
            continue;
        const qd_op *op = &pg->c->ops[sp->op];
        for (uint32_t k = 0; k < op->n_angles; k++) {
            if (!wants(&op->angle[k], o))
                continue;
            shift sp_p = {st, k, half_pi}, sp_m = {st, k, -half_pi};
            sample sm = *sm0;
            double Lp, Lm;
            sm.ov = &sp_p;
            if (run_loss(&sm, w->rho, w->red, w->E, g, &Lp))
                return -1;
            sm.ov = &sp_m;
            if (run_loss(&sm, w->rho, w->red, w->E, g, &Lm))
                return -1;
            execs += 2;
            chain(&op->angle[k], 0.5 * (Lp - Lm), o);
        }
    }
    if (pg->has_prep && o->gx) {
        const double *a = sm0->x + pg->prep_input;
        memcpy(w->amp, a, pg->D * sizeof *w->amp);
        sample sm = *sm0;
        sm.amp = w->amp;
        for (size_t r = 0; r < pg->D; r++) {
            double Lp, Lm;
            w->amp[r] = a[r] + 1.0;
            if (run_loss(&sm, w->rho, w->red, w->E, g, &Lp))
                return -1;
            w->amp[r] = a[r] - 1.0;
            if (run_loss(&sm, w->rho, w->red, w->E, g, &Lm))
                return -1;
            w->amp[r] = a[r];
            execs += 2;
            o->gx[pg->prep_input + r] += 0.5 * (Lp - Lm);
        }
    }
    return execs;
}

/* Central finite differences on every weight and input of one sample. */
static long back_fd(const sample *sm0, const double *g, scratch *w,
                    bwd_out *o, double h)
{
    const prog *pg = sm0->pg;
    long execs = 0;
    if (o->gm) {
        run(sm0, w->rho);
        if (expectations(pg, w->rho, w->red, w->E))
            return -1;
        add_gmats(pg, sm0->s, w->rho, g, w->red, w->tmp, o->gm);
        execs++;
    }
    sample sm = *sm0;
    uint32_t nw = pg->c->n_weights, nx = pg->c->n_inputs;
    if (o->gw && nw) {
        memcpy(w->wcopy, sm0->w, nw * sizeof *w->wcopy);
        sm.w = w->wcopy;
        for (uint32_t j = 0; j < nw; j++) {
            double Lp, Lm, v = sm0->w[j];
            w->wcopy[j] = v + h;
            if (run_loss(&sm, w->rho, w->red, w->E, g, &Lp))
                return -1;
            w->wcopy[j] = v - h;
            if (run_loss(&sm, w->rho, w->red, w->E, g, &Lm))
                return -1;
            w->wcopy[j] = v;
            execs += 2;
            o->gw[j] += (Lp - Lm) / (2.0 * h);
        }
        sm.w = sm0->w;
    }
    if (o->gx && nx) {
        memcpy(w->xcopy, sm0->x, nx * sizeof *w->xcopy);
        sm.x = w->xcopy;
        for (uint32_t j = 0; j < nx; j++) {
            double Lp, Lm, v = sm0->x[j];
            w->xcopy[j] = v + h;
            if (run_loss(&sm, w->rho, w->red, w->E, g, &Lp))
                return -1;
            w->xcopy[j] = v - h;
            if (run_loss(&sm, w->rho, w->red, w->E, g, &Lm))
                return -1;
            w->xcopy[j] = v;
            execs += 2;
            o->gx[j] += (Lp - Lm) / (2.0 * h);
        }
    }
    return execs;
}

static int dm_backward(void *self, const qd_sim_job *job, const double *g_expect,
                       double *g_weights, double *g_inputs, cplx *g_mats)
{
    dm *s = self;
    if (!g_expect && job && job->batch > 0)
        return s->host->error(s->host, QD_ERR_INVALID, "g_expect is NULL");
    prog pg;
    int rc = prog_build(s, job, g_weights != NULL, g_inputs != NULL, &pg);
    if (rc)
        return rc;
    size_t B = job->batch;
    uint32_t no = job->obs->n_outputs;
    uint32_t nw = job->circuit->n_weights, nin = job->circuit->n_inputs;
    size_t ml = job->obs->matrix_len;
    for (size_t i = 0; i < B * no; i++)
        if (!isfinite(g_expect[i])) {
            prog_free(&pg);
            return s->host->error(s->host, QD_ERR_NUMERIC,
                                  "g_expect[%zu] is not finite", i);
        }
    /* Per-sample weight and G buffers, summed in sample order afterwards so
     * the result does not depend on the thread count. */
    double *gw_all = g_weights && nw ? calloc(B * nw + 1, sizeof *gw_all) : NULL;
    cplx *gm_all = g_mats && ml ? calloc(B * ml + 1, sizeof *gm_all) : NULL;
    if ((g_weights && nw && !gw_all) || (g_mats && ml && !gm_all)) {
        free(gw_all);
        free(gm_all);
        prog_free(&pg);
        return s->host->error(s->host, QD_ERR_NOMEM, "out of memory");
    }
    if (g_inputs)
        memset(g_inputs, 0, B * nin * sizeof *g_inputs);
    int nomem = 0;
    long bad = -1;
    uint64_t execs = 0;
#pragma omp parallel reduction(+ : execs)
    {
        scratch w;
        int ok = scratch_alloc(&w, &pg, s->diff) == 0;
        if (!ok) {
#pragma omp atomic write
            nomem = 1;
        }
#pragma omp for schedule(static)
        for (size_t b = 0; b < B; b++) {
            if (!ok)
                continue;
            sample sm = {&pg, s, job->weights,
                         job->inputs ? job->inputs + b * nin : NULL, NULL, NULL};
            bwd_out o = {gw_all ? gw_all + b * nw : NULL,
                         g_inputs && nin ? g_inputs + b * nin : NULL,
                         gm_all ? gm_all + b * ml : NULL};
            const double *g = g_expect + b * no;
            long e = s->diff == DIFF_ADJOINT ? back_adjoint(&sm, g, &w, &o)
                     : s->diff == DIFF_SHIFT ? back_shift(&sm, g, &w, &o)
                                             : back_fd(&sm, g, &w, &o, s->fd_step);
            if (e < 0) {
#pragma omp critical(dm_bad)
                if (bad < 0 || (long)b < bad)
                    bad = (long)b;
            } else {
                execs += (uint64_t)e;
            }
        }
        scratch_free(&w);
    }
    prog_free(&pg);
    if (!nomem && bad < 0) {
        if (g_weights) {
            memset(g_weights, 0, nw * sizeof *g_weights);
            for (size_t b = 0; b < B; b++)
                for (uint32_t j = 0; j < nw; j++)
                    g_weights[j] += gw_all[b * nw + j];
        }
        if (g_mats) {
            memset(g_mats, 0, ml * sizeof *g_mats);
            for (size_t b = 0; b < B; b++)
                for (size_t e = 0; e < ml; e++)
                    g_mats[e] += gm_all[b * ml + e];
        }
    }
    free(gw_all);
    free(gm_all);
    if (nomem)
        return s->host->error(s->host, QD_ERR_NOMEM,
                              "out of memory for the density matrices of "
                              "backward (%u wires)",
                              job->circuit->n_wires);
    if (bad >= 0)
        return report_numeric(s, (size_t)bad);
    s->executions += execs;
    return QD_OK;
}

static void dm_stats(void *self, qd_sim_stats *out)
{
    dm *s = self;
    out->executions = s->executions;
    out->shots = 0;
}

static const qd_simulator_vt vt = {
    sizeof(qd_simulator_vt), dm_create, dm_destroy,
    dm_forward, dm_backward, dm_stats,
};

static const qd_plugin_desc desc = QD_PLUGIN_DESC_INIT(
    QD_KIND_SIMULATOR, "density_matrix", "1.0.0",
    "density-matrix simulator with noise channels and readout error; exact "
    "adjoint gradients via Heisenberg back-propagation through the channels",
    params, &vt);

static const qd_plugin_desc *const descs[] = {&desc, NULL};

QD_PLUGIN_EXPORT const qd_plugin_desc *const *qd_plugin_entry(void)
{
    return descs;
}
