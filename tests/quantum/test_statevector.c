/*
 * The statevector simulator plugin, driven through the registry like the
 * framework drives it. Every number is checked against something computed
 * independently here: gate matrices written from their definitions and
 * embedded entry by entry into the full register (a small dense-matrix
 * reference simulator), closed forms, and central differences of the
 * forward pass.
 */
#include <complex.h>
#include <criterion/criterion.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/config.h"
#include "qdistill/registry.h"

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

typedef double complex cplx;

/* ------------------------------------------------------------------------
 * Plugin access
 * ---------------------------------------------------------------------- */

typedef struct sim {
    qd_registry *reg;
    qd_config *cfg;
    qd_instance *inst;
    const qd_simulator_vt *vt;
    void *self;
} sim;

static int sim_open(sim *s, const char *yaml, uint64_t seed, qd_error *err)
{
    memset(s, 0, sizeof *s);
    cr_assert_eq(qd_registry_create(&s->reg, err), QD_OK);
    const char *dir = getenv("QDISTILL_PLUGIN_PATH");
    cr_assert(dir, "QDISTILL_PLUGIN_PATH not set");
    char *problems = NULL;
    cr_assert_eq(qd_registry_load_dir(s->reg, dir, &problems, err), QD_OK,
                 "%s", err->msg);
    free(problems);
    cr_assert_eq(qd_config_load_string(yaml, strlen(yaml), "test.yaml", NULL,
                                       &s->cfg, err),
                 QD_OK, "%s", err->msg);
    qd_instance_opts o = {seed, "model.q.simulator", 2, NULL, NULL};
    int rc = qd_instance_create(s->reg, QD_KIND_SIMULATOR,
                                qd_config_root(s->cfg), &o, &s->inst, err);
    if (rc == QD_OK) {
        s->vt = qd_instance_vtable(s->inst);
        s->self = qd_instance_self(s->inst);
    }
    return rc;
}

static void sim_close(sim *s)
{
    qd_instance_destroy(s->inst);
    qd_config_destroy(s->cfg);
    qd_registry_destroy(s->reg);
    memset(s, 0, sizeof *s);
}

static sim sim_new(const char *yaml)
{
    sim s;
    qd_error err;
    int rc = sim_open(&s, yaml, 7, &err);
    cr_assert_eq(rc, QD_OK, "create: %s", err.msg);
    return s;
}

/* ------------------------------------------------------------------------
 * Observables and jobs
 * ---------------------------------------------------------------------- */

typedef struct obs {
    qd_obs_spec spec;
    cplx *mats;
} obs;

static void obs_add(obs *o, uint32_t out, uint32_t k, const uint32_t *wires,
                    const cplx *m)
{
    size_t d = (size_t)1 << k;
    o->spec.terms = realloc(o->spec.terms, (o->spec.n_terms + 1) * sizeof(qd_obs_term));
    qd_obs_term *t = &o->spec.terms[o->spec.n_terms++];
    memset(t, 0, sizeof *t);
    t->output = out;
    t->n_wires = k;
    memcpy(t->wires, wires, k * sizeof *wires);
    t->matrix = o->spec.matrix_len;
    o->mats = realloc(o->mats, (o->spec.matrix_len + d * d) * sizeof *o->mats);
    memcpy(o->mats + o->spec.matrix_len, m, d * d * sizeof *m);
    o->spec.matrix_len += d * d;
    if (out + 1 > o->spec.n_outputs)
        o->spec.n_outputs = out + 1;
}

static void obs_free(obs *o)
{
    qd_obs_spec_free(&o->spec);
    free(o->mats);
    memset(o, 0, sizeof *o);
}

static qd_sim_job make_job(const qd_circuit *c, const obs *o, size_t batch,
                           const double *x, const double *w)
{
    qd_sim_job j = {sizeof(qd_sim_job), c, &o->spec, o->mats, batch, x, w};
    return j;
}

/* ------------------------------------------------------------------------
 * Random numbers and matrices (PCG32 from core)
 * ---------------------------------------------------------------------- */

static double urand(qd_rng *r, double a, double b)
{
    return a + (b - a) * qd_rng_uniform(r);
}

static void rand_herm(qd_rng *r, size_t d, cplx *h)
{
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j <= i; j++) {
            if (i == j) {
                h[i * d + i] = urand(r, -1, 1);
            } else {
                cplx z = CMPLX(urand(r, -1, 1), urand(r, -1, 1));
                h[i * d + j] = z;
                h[j * d + i] = conj(z);
            }
        }
}

/* Gram-Schmidt on random complex columns */
static void rand_unitary(qd_rng *r, size_t d, cplx *u)
{
    for (size_t j = 0; j < d; j++) {
        cplx v[4];
        for (size_t i = 0; i < d; i++)
            v[i] = CMPLX(qd_rng_normal(r), qd_rng_normal(r));
        for (size_t k = 0; k < j; k++) {
            cplx p = 0;
            for (size_t i = 0; i < d; i++)
                p += conj(u[i * d + k]) * v[i];
            for (size_t i = 0; i < d; i++)
                v[i] -= p * u[i * d + k];
        }
        double nn = 0;
        for (size_t i = 0; i < d; i++)
            nn += creal(v[i] * conj(v[i]));
        for (size_t i = 0; i < d; i++)
            u[i * d + j] = v[i] / sqrt(nn);
    }
}

static void rand_unit_vec(qd_rng *r, size_t n, double *a)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        a[i] = qd_rng_normal(r);
        s += a[i] * a[i];
    }
    for (size_t i = 0; i < n; i++)
        a[i] /= sqrt(s);
}

/* ------------------------------------------------------------------------
 * Reference simulator: gate matrices from their definitions, embedded entry
 * by entry (M_full[i][j] = m[sub(i)][sub(j)] when i and j agree off the
 * gate's wires), applied as dense matrix-vector products.
 * ---------------------------------------------------------------------- */

static void mm2(const cplx *a, const cplx *b, cplx *o)
{
    cplx r[4];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            r[i * 2 + j] = a[i * 2] * b[j] + a[i * 2 + 1] * b[2 + j];
    memcpy(o, r, sizeof r);
}

static void ref_rot1(qd_gate g, double t, cplx *m)
{
    double c = cos(t / 2), s = sin(t / 2);
    if (g == QD_GATE_RX) {
        m[0] = c; m[1] = -I * s; m[2] = -I * s; m[3] = c;
    } else if (g == QD_GATE_RY) {
        m[0] = c; m[1] = -s; m[2] = s; m[3] = c;
    } else {
        m[0] = cexp(-I * t / 2); m[1] = 0; m[2] = 0; m[3] = cexp(I * t / 2);
    }
}

/* matrix of op: 2x2 or 4x4 (wires[0] most significant) */
static int ref_gate(const qd_circuit *c, const qd_op *op, const double *t, cplx *m)
{
    const double h = 1 / sqrt(2.0);
    memset(m, 0, 16 * sizeof *m);
    cplx u[4], a[4], b[4], e[4];
    switch (op->gate) {
    case QD_GATE_I: m[0] = 1; m[3] = 1; return 2;
    case QD_GATE_X: m[1] = 1; m[2] = 1; return 2;
    case QD_GATE_Y: m[1] = -I; m[2] = I; return 2;
    case QD_GATE_Z: m[0] = 1; m[3] = -1; return 2;
    case QD_GATE_H: m[0] = h; m[1] = h; m[2] = h; m[3] = -h; return 2;
    case QD_GATE_S: m[0] = 1; m[3] = I; return 2;
    case QD_GATE_T: m[0] = 1; m[3] = cexp(I * M_PI / 4); return 2;
    case QD_GATE_RX: case QD_GATE_RY: case QD_GATE_RZ:
        ref_rot1((qd_gate)op->gate, t[0], m);
        return 2;
    case QD_GATE_PHASE: m[0] = 1; m[3] = cexp(I * t[0]); return 2;
    case QD_GATE_ROT:
        ref_rot1(QD_GATE_RZ, t[0], a);
        ref_rot1(QD_GATE_RY, t[1], b);
        ref_rot1(QD_GATE_RZ, t[2], e);
        mm2(b, a, u);
        mm2(e, u, m);
        return 2;
    case QD_GATE_CNOT: m[0] = 1; m[5] = 1; m[11] = 1; m[14] = 1; return 4;
    case QD_GATE_CZ: m[0] = 1; m[5] = 1; m[10] = 1; m[15] = -1; return 4;
    case QD_GATE_SWAP: m[0] = 1; m[6] = 1; m[9] = 1; m[15] = 1; return 4;
    case QD_GATE_CRX: case QD_GATE_CRY: case QD_GATE_CRZ:
        ref_rot1(op->gate == QD_GATE_CRX ? QD_GATE_RX
                 : op->gate == QD_GATE_CRY ? QD_GATE_RY : QD_GATE_RZ, t[0], u);
        m[0] = 1; m[5] = 1;
        m[10] = u[0]; m[11] = u[1]; m[14] = u[2]; m[15] = u[3];
        return 4;
    case QD_GATE_UNITARY: {
        int d = 1 << op->n_wires;
        memcpy(m, c->matrices + op->data, (size_t)(d * d) * sizeof *m);
        return d;
    }
    default: return 0;
    }
}

static size_t sub_index(size_t i, unsigned n, unsigned k, const uint32_t *wires)
{
    size_t s = 0;
    for (unsigned t = 0; t < k; t++)
        s = (s << 1) | ((i >> (n - 1 - wires[t])) & 1);
    return s;
}

static size_t wire_mask(unsigned n, unsigned k, const uint32_t *wires)
{
    size_t m = 0;
    for (unsigned t = 0; t < k; t++)
        m |= (size_t)1 << (n - 1 - wires[t]);
    return m;
}

/* out = (m embedded on wires) psi */
static void ref_apply(unsigned n, unsigned k, const uint32_t *wires,
                      const cplx *m, const cplx *psi, cplx *out)
{
    size_t D = (size_t)1 << n, d = (size_t)1 << k, mask = wire_mask(n, k, wires);
    for (size_t i = 0; i < D; i++) {
        cplx s = 0;
        for (size_t j = 0; j < D; j++)
            if (((i ^ j) & ~mask) == 0)
                s += m[sub_index(i, n, k, wires) * d + sub_index(j, n, k, wires)] * psi[j];
        out[i] = s;
    }
}

static double ref_angle(const qd_angle *a, const double *w, const double *x)
{
    if (a->src == QD_SRC_WEIGHT)
        return a->offset + a->scale * w[a->index];
    if (a->src == QD_SRC_INPUT)
        return a->offset + a->scale * x[a->index];
    return a->offset;
}

static cplx *ref_state(const qd_circuit *c, const double *w, const double *x)
{
    unsigned n = c->n_wires;
    size_t D = (size_t)1 << n;
    cplx *psi = calloc(D, sizeof *psi), *tmp = calloc(D, sizeof *tmp);
    psi[0] = 1;
    for (size_t k = 0; k < c->n_ops; k++) {
        const qd_op *op = &c->ops[k];
        if (op->gate == QD_GATE_STATE_PREP) {
            for (size_t i = 0; i < D; i++)
                psi[i] = x[op->data + i];
            continue;
        }
        if (op->gate == QD_GATE_BARRIER)
            continue;
        double t[3];
        for (uint32_t a = 0; a < op->n_angles; a++)
            t[a] = ref_angle(&op->angle[a], w, x);
        cplx m[16];
        ref_gate(c, op, t, m);
        ref_apply(n, op->n_wires, op->wires, m, psi, tmp);
        memcpy(psi, tmp, D * sizeof *psi);
    }
    free(tmp);
    return psi;
}

static void ref_expect(const qd_circuit *c, const obs *o, const cplx *psi, double *e)
{
    unsigned n = c->n_wires;
    size_t D = (size_t)1 << n;
    cplx *tmp = calloc(D, sizeof *tmp);
    memset(e, 0, o->spec.n_outputs * sizeof *e);
    for (uint32_t t = 0; t < o->spec.n_terms; t++) {
        const qd_obs_term *tm = &o->spec.terms[t];
        ref_apply(n, tm->n_wires, tm->wires, o->mats + tm->matrix, psi, tmp);
        cplx s = 0;
        for (size_t i = 0; i < D; i++)
            s += conj(psi[i]) * tmp[i];
        e[tm->output] += creal(s);
    }
    free(tmp);
}

/* rho on wires (row-major in their order) */
static void ref_rho(unsigned n, unsigned k, const uint32_t *wires, const cplx *psi, cplx *rho)
{
    size_t D = (size_t)1 << n, d = (size_t)1 << k, mask = wire_mask(n, k, wires);
    memset(rho, 0, d * d * sizeof *rho);
    for (size_t i = 0; i < D; i++)
        for (size_t j = 0; j < D; j++)
            if (((i ^ j) & ~mask) == 0)
                rho[sub_index(i, n, k, wires) * d + sub_index(j, n, k, wires)] +=
                    psi[i] * conj(psi[j]);
}

/* ------------------------------------------------------------------------
 * Random circuits with every gate kind
 * ---------------------------------------------------------------------- */

typedef struct rc_opts {
    unsigned n;
    int prep;           /* StatePrep first */
    int input_angles;   /* gates read inputs */
    int n_ops;
} rc_opts;

/* Builds the circuit; input angles use inputs after the amplitudes. */
static void rand_circuit(qd_rng *r, rc_opts o, qd_circuit *c)
{
    qd_error err;
    qd_circuit_init(c, o.n);
    if (o.prep)
        cr_assert_eq(qd_circuit_add_state_prep(c, 0, &err), QD_OK, "%s", err.msg);
    uint32_t x0 = o.prep ? 1u << o.n : 0;
    static const qd_gate kinds[] = {
        QD_GATE_I, QD_GATE_X, QD_GATE_Y, QD_GATE_Z, QD_GATE_H, QD_GATE_S,
        QD_GATE_T, QD_GATE_RX, QD_GATE_RY, QD_GATE_RZ, QD_GATE_ROT,
        QD_GATE_PHASE, QD_GATE_CNOT, QD_GATE_CZ, QD_GATE_CRX, QD_GATE_CRY,
        QD_GATE_CRZ, QD_GATE_SWAP, QD_GATE_UNITARY, QD_GATE_UNITARY,
        QD_GATE_BARRIER, QD_GATE_ROT, QD_GATE_CRX, QD_GATE_RY};
    const size_t nk = sizeof kinds / sizeof kinds[0];
    for (int i = 0; i < o.n_ops; i++) {
        qd_gate g = kinds[i < (int)nk ? (size_t)i : qd_rng_bounded(r, (uint32_t)nk)];
        uint32_t w[2];
        w[0] = qd_rng_bounded(r, o.n);
        do
            w[1] = qd_rng_bounded(r, o.n);
        while (w[1] == w[0]);
        if (g == QD_GATE_BARRIER) {
            cr_assert_eq(qd_circuit_add_barrier(c, &err), QD_OK);
            continue;
        }
        if (g == QD_GATE_UNITARY) {
            uint32_t k = 1 + qd_rng_bounded(r, 2);
            cplx u[16];
            rand_unitary(r, (size_t)1 << k, u);
            cr_assert_eq(qd_circuit_add_unitary(c, k, w, u, &err), QD_OK, "%s", err.msg);
            continue;
        }
        qd_angle a[3];
        for (int k = 0; k < 3; k++) {
            uint32_t kind = qd_rng_bounded(r, o.input_angles ? 3 : 2);
            if (kind == 0) {
                a[k] = qd_angle_const(urand(r, -3, 3));
            } else if (kind == 1) {
                a[k] = qd_angle_weight(qd_rng_bounded(r, 6));
                a[k].scale = urand(r, 0.5, 1.5);
                a[k].offset = urand(r, -0.3, 0.3);
            } else {
                a[k] = qd_angle_input(x0 + qd_rng_bounded(r, 4), urand(r, -1.5, 1.5));
                a[k].offset = urand(r, -0.3, 0.3);
            }
        }
        cr_assert_eq(qd_circuit_add(c, g, w, a, &err), QD_OK, "%s", err.msg);
    }
}

/* inputs for B samples: normalised amplitudes, then angle inputs */
static double *rand_inputs(qd_rng *r, const qd_circuit *c, int prep, size_t B)
{
    size_t ni = c->n_inputs ? c->n_inputs : 1;
    double *x = calloc(B * ni, sizeof *x);
    size_t D = (size_t)1 << c->n_wires;
    for (size_t b = 0; b < B; b++) {
        size_t k0 = 0;
        if (prep) {
            rand_unit_vec(r, D, x + b * ni);
            k0 = D;
        }
        for (size_t k = k0; k < c->n_inputs; k++)
            x[b * ni + k] = urand(r, -2, 2);
    }
    return x;
}

static double *rand_weights(qd_rng *r, const qd_circuit *c)
{
    double *w = calloc(c->n_weights ? c->n_weights : 1, sizeof *w);
    for (uint32_t i = 0; i < c->n_weights; i++)
        w[i] = urand(r, -3, 3);
    return w;
}

/* 1- and 2-wire random Hermitian terms on 3 outputs */
static void rand_obs(qd_rng *r, unsigned n, obs *o)
{
    memset(o, 0, sizeof *o);
    for (uint32_t out = 0; out < 3; out++) {
        uint32_t w[2];
        w[0] = qd_rng_bounded(r, n);
        do
            w[1] = qd_rng_bounded(r, n);
        while (w[1] == w[0]);
        cplx h[16];
        rand_herm(r, 2, h);
        obs_add(o, out, 1, w, h);
        rand_herm(r, 4, h);
        obs_add(o, out, 2, w, h);
    }
}

static double rel_err(const double *a, const double *b, size_t n)
{
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        d += (a[i] - b[i]) * (a[i] - b[i]);
        s += b[i] * b[i];
    }
    return s > 0 ? sqrt(d / s) : sqrt(d);
}

static double rel_err_c(const cplx *a, const cplx *b, size_t n)
{
    return rel_err((const double *)a, (const double *)b, 2 * n);
}

/* ------------------------------------------------------------------------
 * Every gate, on every wire position, against its independent matrix:
 * a term on all wires with g = 1 makes backward return |psi><psi|.
 * ---------------------------------------------------------------------- */

static void check_gate_everywhere(const char *yaml)
{
    sim s = sim_new(yaml);
    qd_rng r;
    qd_rng_seed(&r, 11, 3);
    const unsigned n = 4;
    const size_t D = 16, B = 3;
    static const qd_gate one[] = {QD_GATE_I, QD_GATE_X, QD_GATE_Y, QD_GATE_Z,
                                  QD_GATE_H, QD_GATE_S, QD_GATE_T, QD_GATE_RX,
                                  QD_GATE_RY, QD_GATE_RZ, QD_GATE_ROT,
                                  QD_GATE_PHASE, QD_GATE_UNITARY};
    static const qd_gate two[] = {QD_GATE_CNOT, QD_GATE_CZ, QD_GATE_CRX,
                                  QD_GATE_CRY, QD_GATE_CRZ, QD_GATE_SWAP,
                                  QD_GATE_UNITARY};
    int checked = 0;
    for (int arity = 1; arity <= 2; arity++) {
        size_t ng = arity == 1 ? sizeof one / sizeof *one : sizeof two / sizeof *two;
        for (size_t gi = 0; gi < ng; gi++)
            for (uint32_t w0 = 0; w0 < n; w0++)
                for (uint32_t w1 = 0; w1 < (arity == 2 ? n : 1); w1++) {
                    if (arity == 2 && w1 == w0)
                        continue;
                    qd_gate g = arity == 1 ? one[gi] : two[gi];
                    qd_circuit c;
                    qd_error err;
                    qd_circuit_init(&c, n);
                    cr_assert_eq(qd_circuit_add_state_prep(&c, 0, &err), QD_OK);
                    /* local rotations make the random real state complex */
                    for (uint32_t q = 0; q < n; q++) {
                        qd_angle a[3] = {qd_angle_const(urand(&r, -3, 3)),
                                         qd_angle_const(urand(&r, -3, 3)),
                                         qd_angle_const(urand(&r, -3, 3))};
                        cr_assert_eq(qd_circuit_add(&c, QD_GATE_ROT, &q, a, &err), QD_OK);
                    }
                    uint32_t w[2] = {w0, w1};
                    if (g == QD_GATE_UNITARY) {
                        cplx u[16];
                        rand_unitary(&r, (size_t)1 << arity, u);
                        cr_assert_eq(qd_circuit_add_unitary(&c, (uint32_t)arity, w, u, &err), QD_OK);
                    } else {
                        qd_angle a[3] = {qd_angle_weight(0), qd_angle_weight(1),
                                         qd_angle_weight(2)};
                        cr_assert_eq(qd_circuit_add(&c, g, w, a, &err), QD_OK, "%s", err.msg);
                    }
                    double wt[3] = {urand(&r, -3, 3), urand(&r, -3, 3), urand(&r, -3, 3)};
                    double *x = rand_inputs(&r, &c, 1, B);
                    obs o = {0};
                    uint32_t all[4] = {0, 1, 2, 3};
                    cplx h[256];
                    rand_herm(&r, D, h);
                    obs_add(&o, 0, n, all, h);
                    qd_sim_job job = make_job(&c, &o, B, x, c.n_weights ? wt : NULL);
                    const double gexp[3] = {1.0, 0.5, -0.25};
                    cplx gm[256];
                    int rc = s.vt->backward(s.self, &job, gexp, NULL, NULL, gm);
                    qd_instance_error(s.inst, rc, &err);
                    cr_assert_eq(rc, QD_OK, "%s", err.msg);
                    cplx ref[256] = {0}, rho[256];
                    double e[3], eref;
                    for (size_t b = 0; b < B; b++) {
                        cplx *psi = ref_state(&c, wt, x + b * c.n_inputs);
                        ref_rho(n, n, all, psi, rho);
                        for (size_t i = 0; i < D * D; i++)
                            ref[i] += gexp[b] * rho[i];
                        free(psi);
                    }
                    double er = rel_err_c(gm, ref, D * D);
                    cr_expect(er < 1e-13, "%s on wires [%u, %u]: |psi><psi| rel err %.3g",
                              qd_gate_name(g), w0, w1, er);
                    /* and the forward expectation of the same term */
                    cr_assert_eq(s.vt->forward(s.self, &job, e), QD_OK);
                    cplx *psi = ref_state(&c, wt, x);
                    ref_expect(&c, &o, psi, &eref);
                    free(psi);
                    cr_expect(fabs(e[0] - eref) < 1e-13, "%s forward %g vs %g",
                              qd_gate_name(g), e[0], eref);
                    checked++;
                    obs_free(&o);
                    free(x);
                    qd_circuit_free(&c);
                }
    }
    cr_expect_eq(checked, 13 * 4 + 7 * 12);
    sim_close(&s);
}

Test(statevector, gates_match_matrices_gates_route)
{
    check_gate_everywhere("plugin: statevector\nmethod: gates\n");
}

Test(statevector, gates_match_matrices_dense_route)
{
    check_gate_everywhere("plugin: statevector\nmethod: dense\n");
}

/* The portable kernels (the plugin picks AVX2 + FMA ones when the CPU has
 * them) pass the same checks. Each Criterion test runs in its own process,
 * so the switch, read once by the plugin, affects this test only. */
Test(statevector, generic_kernels_match_matrices)
{
    setenv("QDISTILL_SV_GENERIC", "1", 1);
    check_gate_everywhere("plugin: statevector\nmethod: gates\n");
}

/* ------------------------------------------------------------------------
 * Closed forms
 * ---------------------------------------------------------------------- */

Test(statevector, ry_expectation_is_cos)
{
    sim s = sim_new("plugin: statevector\n");
    qd_circuit c;
    qd_error err;
    qd_circuit_init(&c, 2);
    uint32_t w = 1;
    qd_angle a = qd_angle_input(0, 1.0);
    cr_assert_eq(qd_circuit_add(&c, QD_GATE_RY, &w, &a, &err), QD_OK);
    obs o = {0};
    cplx z[4] = {1, 0, 0, -1};
    obs_add(&o, 0, 1, &w, z);
    const double t[7] = {0, 0.3, -1.1, M_PI / 2, 2.5, M_PI, -4};
    double e[7];
    qd_sim_job job = make_job(&c, &o, 7, t, NULL);
    cr_assert_eq(s.vt->forward(s.self, &job, e), QD_OK);
    for (int i = 0; i < 7; i++)
        cr_expect(fabs(e[i] - cos(t[i])) < 1e-15, "t=%g: %g vs %g", t[i], e[i], cos(t[i]));
    /* d<Z>/dt = -sin t */
    double g1[7] = {1, 1, 1, 1, 1, 1, 1}, gx[7];
    cr_assert_eq(s.vt->backward(s.self, &job, g1, NULL, gx, NULL), QD_OK);
    for (int i = 0; i < 7; i++)
        cr_expect(fabs(gx[i] + sin(t[i])) < 1e-15, "t=%g: %g vs %g", t[i], gx[i], -sin(t[i]));
    obs_free(&o);
    qd_circuit_free(&c);
    sim_close(&s);
}

Test(statevector, bell_correlations)
{
    sim s = sim_new("plugin: statevector\n");
    qd_circuit c;
    qd_error err;
    qd_circuit_init(&c, 3);
    uint32_t w[2] = {2, 0}; /* non-adjacent, reversed */
    cr_assert_eq(qd_circuit_add(&c, QD_GATE_H, w, NULL, &err), QD_OK);
    cr_assert_eq(qd_circuit_add(&c, QD_GATE_CNOT, w, NULL, &err), QD_OK);
    obs o = {0};
    cplx z[4] = {1, 0, 0, -1};
    cplx zz[16] = {1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 1};
    cplx xx[16] = {0, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 0};
    cplx yy[16] = {0, 0, 0, -1, 0, 0, 1, 0, 0, 1, 0, 0, -1, 0, 0, 0};
    obs_add(&o, 0, 1, &w[0], z);
    obs_add(&o, 1, 2, w, zz);
    obs_add(&o, 2, 2, w, xx);
    obs_add(&o, 3, 2, w, yy);
    uint32_t w1 = 1;
    obs_add(&o, 4, 1, &w1, z);
    double e[5];
    qd_sim_job job = make_job(&c, &o, 1, NULL, NULL);
    cr_assert_eq(s.vt->forward(s.self, &job, e), QD_OK);
    const double want[5] = {0, 1, 1, -1, 1};
    for (int i = 0; i < 5; i++)
        cr_expect(fabs(e[i] - want[i]) < 1e-15, "output %d: %g vs %g", i, e[i], want[i]);
    obs_free(&o);
    qd_circuit_free(&c);
    sim_close(&s);
}

Test(statevector, state_prep_round_trip_and_wire_order)
{
    sim s = sim_new("plugin: statevector\n");
    qd_rng r;
    qd_rng_seed(&r, 5, 5);
    qd_circuit c;
    qd_error err;
    qd_circuit_init(&c, 3);
    cr_assert_eq(qd_circuit_add_state_prep(&c, 0, &err), QD_OK);
    obs o = {0};
    uint32_t all[3] = {0, 1, 2};
    for (uint32_t k = 0; k < 8; k++) { /* projector |k><k| */
        cplx p[64] = {0};
        p[k * 8 + k] = 1;
        obs_add(&o, k, 3, all, p);
    }
    cplx z[4] = {1, 0, 0, -1};
    for (uint32_t q = 0; q < 3; q++)
        obs_add(&o, 8 + q, 1, &q, z);
    double x[2 * 8], e[2 * 11];
    rand_unit_vec(&r, 8, x);
    memset(x + 8, 0, 8 * sizeof *x);
    x[8 + 3] = 1; /* |011>: wire 0 is the most significant bit */
    qd_sim_job job = make_job(&c, &o, 2, x, NULL);
    cr_assert_eq(s.vt->forward(s.self, &job, e), QD_OK);
    for (int k = 0; k < 8; k++)
        cr_expect(fabs(e[k] - x[k] * x[k]) < 1e-15, "|a_%d|^2", k);
    cr_expect(fabs(e[11 + 8] - 1) < 1e-15 && fabs(e[11 + 9] + 1) < 1e-15 &&
                  fabs(e[11 + 10] + 1) < 1e-15,
              "<Z_q> of |011>: %g %g %g", e[19], e[20], e[21]);
    obs_free(&o);
    qd_circuit_free(&c);
    sim_close(&s);
}

/* ------------------------------------------------------------------------
 * Random circuits against the reference simulator
 * ---------------------------------------------------------------------- */

static void check_random_forward(const char *yaml, int allow_inputs)
{
    sim s = sim_new(yaml);
    for (uint64_t seed = 1; seed <= 24; seed++) {
        qd_rng r;
        qd_rng_seed(&r, seed, 17);
        rc_opts ro = {3 + (unsigned)(seed % 2), (int)(seed % 3 != 0),
                      allow_inputs && seed % 4 != 1, 40};
        qd_circuit c;
        rand_circuit(&r, ro, &c);
        const size_t B = 5;
        double *x = rand_inputs(&r, &c, ro.prep, B);
        double *w = rand_weights(&r, &c);
        obs o;
        rand_obs(&r, ro.n, &o);
        double e[5 * 3], eref[3];
        qd_sim_job job = make_job(&c, &o, B, x, w);
        qd_error err;
        int rc = s.vt->forward(s.self, &job, e);
        qd_instance_error(s.inst, rc, &err);
        cr_assert_eq(rc, QD_OK, "seed %llu: %s", (unsigned long long)seed, err.msg);
        for (size_t b = 0; b < B; b++) {
            cplx *psi = ref_state(&c, w, x + b * c.n_inputs);
            ref_expect(&c, &o, psi, eref);
            for (int k = 0; k < 3; k++)
                cr_expect(fabs(e[b * 3 + k] - eref[k]) < 1e-12,
                          "seed %llu sample %zu output %d: %.15g vs %.15g",
                          (unsigned long long)seed, b, k, e[b * 3 + k], eref[k]);
            free(psi);
        }
        obs_free(&o);
        free(x);
        free(w);
        qd_circuit_free(&c);
    }
    sim_close(&s);
}

Test(statevector, random_circuits_gates_route)
{
    check_random_forward("plugin: statevector\nmethod: gates\n", 1);
}

Test(statevector, random_circuits_dense_route)
{
    check_random_forward("plugin: statevector\nmethod: dense\n", 0);
}

/* ------------------------------------------------------------------------
 * Gradients: adjoint vs parameter-shift vs central differences of the
 * forward; dense vs gates route.
 * ---------------------------------------------------------------------- */

typedef struct grads {
    double *gw, *gx;
    cplx *gm;
} grads;

static grads run_backward(sim *s, const qd_sim_job *job, const double *g)
{
    grads G;
    const qd_circuit *c = job->circuit;
    G.gw = calloc(c->n_weights + 1, sizeof *G.gw);
    G.gx = calloc(job->batch * c->n_inputs + 1, sizeof *G.gx);
    G.gm = calloc(job->obs->matrix_len + 1, sizeof *G.gm);
    qd_error err;
    int rc = s->vt->backward(s->self, job, g, G.gw, G.gx, G.gm);
    qd_instance_error(s->inst, rc, &err);
    cr_assert_eq(rc, QD_OK, "%s", err.msg);
    return G;
}

static void grads_free(grads *G)
{
    free(G->gw);
    free(G->gx);
    free(G->gm);
}

/* L = sum_b,o g[b][o] E[b][o] through the plugin's forward */
static double loss(sim *s, const qd_sim_job *job, const double *g)
{
    size_t no = job->obs->n_outputs;
    double *e = calloc(job->batch * no, sizeof *e);
    cr_assert_eq(s->vt->forward(s->self, job, e), QD_OK);
    double L = 0;
    for (size_t i = 0; i < job->batch * no; i++)
        L += g[i] * e[i];
    free(e);
    return L;
}

static grads fd_grads(sim *s, qd_sim_job job, double *x, double *w, cplx *mats,
                      const double *g, qd_rng *r)
{
    const qd_circuit *c = job.circuit;
    const double h = 1e-5;
    grads G;
    G.gw = calloc(c->n_weights + 1, sizeof *G.gw);
    G.gx = calloc(job.batch * c->n_inputs + 1, sizeof *G.gx);
    G.gm = NULL;
    for (uint32_t i = 0; i < c->n_weights; i++) {
        double v = w[i];
        w[i] = v + h;
        double lp = loss(s, &job, g);
        w[i] = v - h;
        double lm = loss(s, &job, g);
        w[i] = v;
        G.gw[i] = (lp - lm) / (2 * h);
    }
    for (size_t i = 0; i < job.batch * c->n_inputs; i++) {
        double v = x[i];
        x[i] = v + h;
        double lp = loss(s, &job, g);
        x[i] = v - h;
        double lm = loss(s, &job, g);
        x[i] = v;
        G.gx[i] = (lp - lm) / (2 * h);
    }
    (void)mats;
    (void)r;
    return G;
}

/* directional derivative of L along a random Hermitian direction of every
 * term matrix, compared with Re sum conj(G) Delta */
static void check_mats_grad(sim *s, qd_sim_job job, cplx *mats, const cplx *gm,
                            const double *g, qd_rng *r, const char *what)
{
    const qd_obs_spec *o = job.obs;
    cplx *delta = calloc(o->matrix_len, sizeof *delta);
    for (uint32_t t = 0; t < o->n_terms; t++) {
        size_t d = (size_t)1 << o->terms[t].n_wires;
        rand_herm(r, d, delta + o->terms[t].matrix);
    }
    const double h = 1e-5;
    cplx *save = malloc(o->matrix_len * sizeof *save);
    memcpy(save, mats, o->matrix_len * sizeof *save);
    for (size_t i = 0; i < o->matrix_len; i++)
        mats[i] = save[i] + h * delta[i];
    double lp = loss(s, &job, g);
    for (size_t i = 0; i < o->matrix_len; i++)
        mats[i] = save[i] - h * delta[i];
    double lm = loss(s, &job, g);
    memcpy(mats, save, o->matrix_len * sizeof *save);
    double fd = (lp - lm) / (2 * h), an = 0;
    for (size_t i = 0; i < o->matrix_len; i++)
        an += creal(conj(gm[i]) * delta[i]);
    cr_expect(fabs(fd - an) <= 1e-8 * fmax(fabs(an), 1e-3),
              "%s: dL/dH along Delta %.12g vs finite differences %.12g", what, an, fd);
    free(save);
    free(delta);
}

static void check_gradients(void)
{
    sim adj = sim_new("plugin: statevector\ndiff_method: adjoint\nmethod: gates\n");
    sim ps = sim_new("plugin: statevector\ndiff_method: parameter_shift\nmethod: gates\n");
    sim fdm = sim_new("plugin: statevector\ndiff_method: finite_diff\nmethod: gates\n");
    sim den = sim_new("plugin: statevector\ndiff_method: adjoint\nmethod: dense\n");
    sim dps = sim_new("plugin: statevector\ndiff_method: parameter_shift\nmethod: dense\n");
    for (uint64_t seed = 1; seed <= 8; seed++) {
        qd_rng r;
        qd_rng_seed(&r, seed, 99);
        rc_opts ro = {3 + (unsigned)(seed % 2), seed != 3, seed % 2 == 0, 30};
        qd_circuit c;
        rand_circuit(&r, ro, &c);
        const size_t B = 3;
        double *x = rand_inputs(&r, &c, ro.prep, B);
        double *w = rand_weights(&r, &c);
        obs o;
        rand_obs(&r, ro.n, &o);
        double g[3 * 3];
        for (int i = 0; i < 9; i++)
            g[i] = urand(&r, -1, 1);
        qd_sim_job job = make_job(&c, &o, B, x, w);
        size_t nw = c.n_weights, nx = B * c.n_inputs, nm = o.spec.matrix_len;

        grads A = run_backward(&adj, &job, g);
        grads P = run_backward(&ps, &job, g);
        grads F = fd_grads(&adj, job, x, w, o.mats, g, &r);
        grads M = run_backward(&fdm, &job, g);
        unsigned long long sd = (unsigned long long)seed;
        cr_expect(rel_err(A.gw, F.gw, nw) < 1e-8, "seed %llu weights adjoint vs fd: %.3g", sd,
                  rel_err(A.gw, F.gw, nw));
        cr_expect(rel_err(A.gx, F.gx, nx) < 1e-8, "seed %llu inputs adjoint vs fd: %.3g", sd,
                  rel_err(A.gx, F.gx, nx));
        cr_expect(rel_err(P.gw, A.gw, nw) < 1e-10, "seed %llu weights shift vs adjoint: %.3g", sd,
                  rel_err(P.gw, A.gw, nw));
        cr_expect(rel_err(P.gx, A.gx, nx) < 1e-10, "seed %llu inputs shift vs adjoint: %.3g", sd,
                  rel_err(P.gx, A.gx, nx));
        cr_expect(rel_err_c(P.gm, A.gm, nm) < 1e-12, "seed %llu mats shift vs adjoint", sd);
        cr_expect(rel_err(M.gw, A.gw, nw) < 1e-6, "seed %llu weights finite_diff: %.3g", sd,
                  rel_err(M.gw, A.gw, nw));
        cr_expect(rel_err(M.gx, A.gx, nx) < 1e-6, "seed %llu inputs finite_diff: %.3g", sd,
                  rel_err(M.gx, A.gx, nx));
        check_mats_grad(&adj, job, o.mats, A.gm, g, &r, "adjoint");
        if (!ro.input_angles) {
            grads Dn = run_backward(&den, &job, g);
            grads Dp = run_backward(&dps, &job, g);
            cr_expect(rel_err(Dn.gw, A.gw, nw) < 1e-12, "seed %llu dense weights: %.3g", sd,
                      rel_err(Dn.gw, A.gw, nw));
            cr_expect(rel_err(Dn.gx, A.gx, nx) < 1e-12, "seed %llu dense inputs: %.3g", sd,
                      rel_err(Dn.gx, A.gx, nx));
            cr_expect(rel_err_c(Dn.gm, A.gm, nm) < 1e-12, "seed %llu dense mats", sd);
            cr_expect(rel_err(Dp.gw, A.gw, nw) < 1e-10, "seed %llu dense shift weights", sd);
            cr_expect(rel_err(Dp.gx, A.gx, nx) < 1e-10, "seed %llu dense shift inputs", sd);
            grads_free(&Dn);
            grads_free(&Dp);
        }
        grads_free(&A);
        grads_free(&P);
        grads_free(&F);
        grads_free(&M);
        obs_free(&o);
        free(x);
        free(w);
        qd_circuit_free(&c);
    }
    sim_close(&adj);
    sim_close(&ps);
    sim_close(&fdm);
    sim_close(&den);
    sim_close(&dps);
}

Test(statevector, gradients_agree)
{
    check_gradients();
}

Test(statevector, generic_kernels_gradients)
{
    setenv("QDISTILL_SV_GENERIC", "1", 1);
    check_gradients();
}

/* ------------------------------------------------------------------------
 * Shots: the sample mean converges at the 1/sqrt(shots) rate.
 * ---------------------------------------------------------------------- */

Test(statevector, shots_converge)
{
    qd_circuit c;
    qd_error err;
    qd_circuit_init(&c, 2);
    uint32_t w[2] = {0, 1};
    qd_angle a[3] = {qd_angle_const(0.7), qd_angle_const(-0.4), qd_angle_const(1.9)};
    cr_assert_eq(qd_circuit_add(&c, QD_GATE_ROT, w, a, &err), QD_OK);
    cr_assert_eq(qd_circuit_add(&c, QD_GATE_CRY, w, a, &err), QD_OK);
    obs o = {0};
    cplx h1[4] = {2.3, CMPLX(0.5, -0.2), CMPLX(0.5, 0.2), 1.2}; /* mean far from 0: a bias shows */
    cplx h2[16];
    qd_rng r;
    qd_rng_seed(&r, 3, 3);
    rand_herm(&r, 4, h2);
    for (int i = 0; i < 4; i++)
        h2[i * 5] += 3.0;
    obs_add(&o, 0, 1, &w[1], h1);
    uint32_t rw[2] = {1, 0};
    obs_add(&o, 1, 2, rw, h2);
    /* exact mean and variance per output (from the reference) */
    cplx *psi = ref_state(&c, NULL, NULL);
    double mean[2], var[2];
    ref_expect(&c, &o, psi, mean);
    {
        cplx t1[4], t2[4];
        for (int k = 0; k < 2; k++) {
            const qd_obs_term *tm = &o.spec.terms[k];
            ref_apply(2, tm->n_wires, tm->wires, o.mats + tm->matrix, psi, t1);
            ref_apply(2, tm->n_wires, tm->wires, o.mats + tm->matrix, t1, t2);
            cplx s2 = 0;
            for (int i = 0; i < 4; i++)
                s2 += conj(psi[i]) * t2[i];
            var[k] = creal(s2) - mean[k] * mean[k];
            cr_assert(var[k] > 0.01);
        }
    }
    free(psi);
    const size_t B = 400;
    double *e = calloc(B * 2, sizeof *e);
    const long long shots[3] = {16, 256, 4096};
    for (int si = 0; si < 3; si++) {
        char yaml[128];
        snprintf(yaml, sizeof yaml,
                 "plugin: statevector\ndiff_method: parameter_shift\nshots: %lld\n", shots[si]);
        sim s = sim_new(yaml);
        qd_sim_job job = make_job(&c, &o, B, NULL, NULL);
        cr_assert_eq(s.vt->forward(s.self, &job, e), QD_OK);
        for (int k = 0; k < 2; k++) {
            double ms = 0, bias = 0;
            for (size_t b = 0; b < B; b++) {
                double d = e[b * 2 + k] - mean[k];
                ms += d * d;
                bias += d;
            }
            double rms = sqrt(ms / B), want = sqrt(var[k] / (double)shots[si]);
            bias /= B;
            /* 400 samples: the RMS estimate has ~3.5% relative spread */
            cr_expect(rms > 0.8 * want && rms < 1.2 * want,
                      "shots %lld output %d: rms error %.4g, sigma/sqrt(shots) %.4g",
                      shots[si], k, rms, want);
            cr_expect(fabs(bias) < 4 * want / sqrt((double)B),
                      "shots %lld output %d: biased by %.4g", shots[si], k, bias);
        }
        qd_sim_stats st;
        s.vt->stats(s.self, &st);
        cr_expect_eq(st.executions, B);
        cr_expect_eq(st.shots, B * 2 * (uint64_t)shots[si], "shots counted per term");
        sim_close(&s);
    }
    free(e);
    obs_free(&o);
    qd_circuit_free(&c);
}

Test(statevector, shots_same_seed_same_numbers)
{
    qd_circuit c;
    qd_error err;
    qd_circuit_init(&c, 1);
    uint32_t w = 0;
    qd_angle a = qd_angle_weight(0);
    cr_assert_eq(qd_circuit_add(&c, QD_GATE_RX, &w, &a, &err), QD_OK);
    obs o = {0};
    cplx z[4] = {1, 0, 0, -1};
    obs_add(&o, 0, 1, &w, z);
    double wt = 0.9, e1[8], e2[8], e3[8];
    qd_sim_job job = make_job(&c, &o, 8, NULL, &wt);
    sim s1 = sim_new("plugin: statevector\ndiff_method: parameter_shift\nshots: 100\n");
    sim s2 = sim_new("plugin: statevector\ndiff_method: parameter_shift\nshots: 100\n");
    cr_assert_eq(s1.vt->forward(s1.self, &job, e1), QD_OK);
    cr_assert_eq(s2.vt->forward(s2.self, &job, e2), QD_OK);
    cr_assert_eq(s2.vt->forward(s2.self, &job, e3), QD_OK);
    cr_expect(memcmp(e1, e2, sizeof e1) == 0, "same seed, same stream");
    cr_expect(memcmp(e2, e3, sizeof e2) != 0, "the stream advances between calls");
    /* parameter-shift gradient with many shots lands near -sin */
    sim s3 = sim_new("plugin: statevector\ndiff_method: parameter_shift\nshots: 20000\n");
    double g[8] = {1, 0, 0, 0, 0, 0, 0, 0}, gw;
    job.batch = 1;
    cr_assert_eq(s3.vt->backward(s3.self, &job, g, &gw, NULL, NULL), QD_OK);
    /* sd of (E+ - E-)/2 with 20000 shots each: <= sqrt(2)/2/sqrt(20000) */
    cr_expect(fabs(gw + sin(wt)) < 5 * 0.0050, "gw %g vs %g", gw, -sin(wt));
    sim_close(&s1);
    sim_close(&s2);
    sim_close(&s3);
    obs_free(&o);
    qd_circuit_free(&c);
}

/* ------------------------------------------------------------------------
 * Determinism across thread counts
 * ---------------------------------------------------------------------- */

static void run_threads(const char *yaml, rc_opts ro, size_t B, uint64_t seed)
{
    qd_rng r;
    qd_rng_seed(&r, seed, 1);
    qd_circuit c;
    rand_circuit(&r, ro, &c);
    double *x = rand_inputs(&r, &c, ro.prep, B);
    double *w = rand_weights(&r, &c);
    obs o;
    rand_obs(&r, ro.n, &o);
    double *g = calloc(B * 3, sizeof *g);
    for (size_t i = 0; i < B * 3; i++)
        g[i] = urand(&r, -1, 1);
    qd_sim_job job = make_job(&c, &o, B, x, w);
    double *e[2];
    grads G[2];
    for (int t = 0; t < 2; t++) {
        omp_set_num_threads(t + 1);
        sim s = sim_new(yaml); /* same seed: same shot streams */
        e[t] = calloc(B * 3, sizeof *e[t]);
        cr_assert_eq(s.vt->forward(s.self, &job, e[t]), QD_OK);
        G[t] = run_backward(&s, &job, g);
        sim_close(&s);
    }
    omp_set_num_threads(2);
    cr_expect(memcmp(e[0], e[1], B * 3 * sizeof(double)) == 0, "%s: forward differs", yaml);
    cr_expect(memcmp(G[0].gw, G[1].gw, c.n_weights * sizeof(double)) == 0,
              "%s: weight gradient differs", yaml);
    cr_expect(memcmp(G[0].gx, G[1].gx, B * c.n_inputs * sizeof(double)) == 0,
              "%s: input gradient differs", yaml);
    cr_expect(memcmp(G[0].gm, G[1].gm, o.spec.matrix_len * sizeof(cplx)) == 0,
              "%s: matrix gradient differs", yaml);
    for (int t = 0; t < 2; t++) {
        free(e[t]);
        grads_free(&G[t]);
    }
    free(g);
    free(x);
    free(w);
    obs_free(&o);
    qd_circuit_free(&c);
}

Test(statevector, same_numbers_for_1_and_2_threads)
{
    rc_opts small = {4, 1, 1, 40};
    run_threads("plugin: statevector\nmethod: gates\n", small, 64, 1);
    rc_opts dense = {6, 1, 0, 40};
    run_threads("plugin: statevector\nmethod: dense\n", dense, 96, 2);
    rc_opts big = {17, 0, 1, 30}; /* amplitude-parallel, cache-blocked */
    run_threads("plugin: statevector\nmethod: gates\n", big, 2, 3);
    run_threads("plugin: statevector\ndiff_method: parameter_shift\nshots: 50\n", small, 16, 4);
}

/* ------------------------------------------------------------------------
 * Execution counting
 * ---------------------------------------------------------------------- */

Test(statevector, executions_counted)
{
    qd_circuit c;
    qd_error err;
    qd_circuit_init(&c, 2);
    uint32_t w[2] = {0, 1};
    qd_angle rot[3] = {qd_angle_weight(0), qd_angle_weight(1), qd_angle_weight(2)};
    qd_angle cr = qd_angle_weight(3), ry = qd_angle_input(0, 1.0), k = qd_angle_const(0.3);
    cr_assert_eq(qd_circuit_add(&c, QD_GATE_ROT, w, rot, &err), QD_OK);
    cr_assert_eq(qd_circuit_add(&c, QD_GATE_CRX, w, &cr, &err), QD_OK);
    cr_assert_eq(qd_circuit_add(&c, QD_GATE_RY, &w[1], &ry, &err), QD_OK);
    cr_assert_eq(qd_circuit_add(&c, QD_GATE_RZ, &w[1], &k, &err), QD_OK);
    obs o = {0};
    cplx z[4] = {1, 0, 0, -1};
    obs_add(&o, 0, 1, &w[1], z);
    const size_t B = 5;
    double x[5] = {0.1, 0.2, 0.3, 0.4, 0.5}, wt[4] = {0.1, 0.2, 0.3, 0.4}, e[5],
           g[5] = {1, 1, 1, 1, 1}, gw[4], gx[5];
    qd_sim_job job = make_job(&c, &o, B, x, wt);
    qd_sim_stats st;

    sim a = sim_new("plugin: statevector\n");
    cr_assert_eq(a.vt->forward(a.self, &job, e), QD_OK);
    cr_assert_eq(a.vt->backward(a.self, &job, g, gw, gx, NULL), QD_OK);
    a.vt->stats(a.self, &st);
    cr_expect_eq(st.executions, 2 * B, "adjoint: forward + one sweep per sample");
    cr_expect_eq(st.shots, 0);
    sim_close(&a);

    sim p = sim_new("plugin: statevector\ndiff_method: parameter_shift\n");
    cr_assert_eq(p.vt->backward(p.self, &job, g, gw, NULL, NULL), QD_OK);
    p.vt->stats(p.self, &st);
    cr_expect_eq(st.executions, B * (3 * 2 + 4), "weights: 3 Rot angles x 2 + CRX x 4");
    cr_assert_eq(p.vt->backward(p.self, &job, g, gw, gx, NULL), QD_OK);
    p.vt->stats(p.self, &st);
    cr_expect_eq(st.executions, B * (3 * 2 + 4) + B * (3 * 2 + 4 + 2),
                 "plus the input angle x 2");
    sim_close(&p);

    sim f = sim_new("plugin: statevector\ndiff_method: finite_diff\nshots: 10\nfd_step: 0.1\n");
    cr_assert_eq(f.vt->backward(f.self, &job, g, gw, gx, NULL), QD_OK);
    f.vt->stats(f.self, &st);
    cr_expect_eq(st.executions, B * 2 * 5, "finite differences: 2 per angle");
    cr_expect_eq(st.shots, B * 2 * 5 * 10);
    sim_close(&f);
    obs_free(&o);
    qd_circuit_free(&c);
}

/* ------------------------------------------------------------------------
 * Malformed input: clear errors, no crash, nothing silently NaN
 * ---------------------------------------------------------------------- */

Test(statevector, malformed)
{
    qd_error err;
    qd_circuit c;
    qd_circuit_init(&c, 2);
    uint32_t bad[2] = {0, 2}, rep[2] = {1, 1}, w[2] = {0, 1};
    cr_expect_eq(qd_circuit_add(&c, QD_GATE_CNOT, bad, NULL, &err), QD_ERR_INVALID);
    cr_expect(strstr(err.msg, "wire 2 out of range"), "%s", err.msg);
    cr_expect_eq(qd_circuit_add(&c, QD_GATE_SWAP, rep, NULL, &err), QD_ERR_INVALID);
    cr_expect(strstr(err.msg, "repeated"), "%s", err.msg);
    qd_angle xa = qd_angle_input(0, 1.0);
    cr_assert_eq(qd_circuit_add(&c, QD_GATE_RY, w, &xa, &err), QD_OK);

    /* adjoint + shots: refused at create, located at the key */
    sim s;
    int rc = sim_open(&s, "plugin: statevector\ndiff_method: adjoint\nshots: 100\n", 1, &err);
    cr_expect_eq(rc, QD_ERR_INVALID);
    cr_expect(strstr(err.msg, "adjoint") && strstr(err.msg, "shots"), "%s", err.msg);
    cr_expect(strstr(err.msg, "test.yaml:3:"), "located: %s", err.msg);
    sim_close(&s);
    rc = sim_open(&s, "plugin: statevector\nfd_step: 0\n", 1, &err);
    cr_expect_eq(rc, QD_ERR_INVALID, "%s", err.msg);
    sim_close(&s);
    rc = sim_open(&s, "plugin: statevector\ndiff_method: backprop\n", 1, &err);
    cr_expect_neq(rc, QD_OK);
    cr_expect(strstr(err.msg, "diff_method"), "%s", err.msg);
    sim_close(&s);

    sim v = sim_new("plugin: statevector\n");
    obs o = {0};
    cplx z[4] = {1, 0, 0, -1};
    obs_add(&o, 0, 1, w, z);
    double x[2] = {0.5, NAN}, e[2];
    qd_sim_job job = make_job(&c, &o, 1, x, NULL);
    cr_expect_eq(v.vt->forward(v.self, &job, e), QD_OK);

    job.batch = 2; /* sample 1 has a NaN input */
    rc = v.vt->forward(v.self, &job, e);
    cr_expect_eq(rc, QD_ERR_NUMERIC);
    qd_instance_error(v.inst, rc, &err);
    cr_expect(strstr(err.msg, "sample 1") && strstr(err.msg, "not finite"), "%s", err.msg);
    job.batch = 1;

    o.spec.terms[0].wires[0] = 5; /* term wire out of range */
    rc = v.vt->forward(v.self, &job, e);
    cr_expect_eq(rc, QD_ERR_INVALID);
    qd_instance_error(v.inst, rc, &err);
    cr_expect(strstr(err.msg, "out of range"), "%s", err.msg);
    o.spec.terms[0].wires[0] = 0;

    o.mats[1] = 0.5; /* not Hermitian */
    rc = v.vt->forward(v.self, &job, e);
    cr_expect_eq(rc, QD_ERR_INVALID);
    qd_instance_error(v.inst, rc, &err);
    cr_expect(strstr(err.msg, "Hermitian"), "%s", err.msg);
    o.mats[1] = 0;

    o.spec.terms[0].output = 3; /* output beyond n_outputs */
    cr_expect_eq(v.vt->forward(v.self, &job, e), QD_ERR_INVALID);
    o.spec.terms[0].output = 0;

    qd_sim_job nojob = job;
    nojob.inputs = NULL;
    cr_expect_eq(v.vt->forward(v.self, &nojob, e), QD_ERR_INVALID);
    double gnan[1] = {NAN}, gx[2];
    cr_expect_eq(v.vt->backward(v.self, &job, gnan, NULL, gx, NULL), QD_ERR_NUMERIC);
    sim_close(&v);

    /* dense needs gates that read no inputs */
    sim d = sim_new("plugin: statevector\nmethod: dense\n");
    rc = d.vt->forward(d.self, &job, e);
    cr_expect_eq(rc, QD_ERR_UNSUPPORTED);
    qd_instance_error(d.inst, rc, &err);
    cr_expect(strstr(err.msg, "dense"), "%s", err.msg);
    sim_close(&d);
    obs_free(&o);
    qd_circuit_free(&c);
}

/* ------------------------------------------------------------------------
 * backward reuses the states of the preceding forward of the same job, and
 * only of the same job
 * ---------------------------------------------------------------------- */

static void check_forward_cache(const char *yaml, rc_opts ro, size_t B)
{
    qd_rng r;
    qd_rng_seed(&r, 21, 4);
    qd_circuit c;
    rand_circuit(&r, ro, &c);
    double *x = rand_inputs(&r, &c, ro.prep, B);
    double *w = rand_weights(&r, &c);
    obs o;
    rand_obs(&r, ro.n, &o);
    double *g = calloc(B * 3, sizeof *g), *e = calloc(B * 3, sizeof *e);
    for (size_t i = 0; i < B * 3; i++)
        g[i] = urand(&r, -1, 1);
    qd_sim_job job = make_job(&c, &o, B, x, w);
    sim fresh = sim_new(yaml), s = sim_new(yaml);
    grads ref = run_backward(&fresh, &job, g);

    cr_assert_eq(s.vt->forward(s.self, &job, e), QD_OK);
    grads same = run_backward(&s, &job, g);
    size_t nw = c.n_weights, nx = B * c.n_inputs;
    cr_expect(rel_err(same.gw, ref.gw, nw) < 1e-13, "%s: cached weights grad", yaml);
    cr_expect(rel_err(same.gx, ref.gx, nx) < 1e-13, "%s: cached inputs grad", yaml);
    cr_expect(rel_err_c(same.gm, ref.gm, o.spec.matrix_len) < 1e-13, "%s: cached mats", yaml);

    /* weights, then inputs, changed in place after the forward */
    for (int what = 0; what < 2; what++) {
        cr_assert_eq(s.vt->forward(s.self, &job, e), QD_OK);
        if (what == 0)
            for (size_t i = 0; i < nw; i++)
                w[i] += 0.5;
        else
            for (size_t i = 0; i < nx; i++)
                x[i] *= 0.9;
        grads moved = run_backward(&s, &job, g);
        grads moved_ref = run_backward(&fresh, &job, g);
        const char *wh = what ? "inputs" : "weights";
        cr_expect(rel_err(moved.gw, moved_ref.gw, nw) < 1e-13, "%s: stale %s (gw)", yaml, wh);
        cr_expect(rel_err(moved.gx, moved_ref.gx, nx) < 1e-13, "%s: stale %s (gx)", yaml, wh);
        cr_expect(rel_err(moved.gw, ref.gw, nw) > 1e-6, "%s: changing %s must matter", yaml, wh);
        /* a second backward after the cached one recomputes */
        grads again = run_backward(&s, &job, g);
        cr_expect(rel_err(again.gw, moved_ref.gw, nw) < 1e-13, "%s: second backward", yaml);
        grads_free(&moved);
        grads_free(&moved_ref);
        grads_free(&again);
    }
    grads_free(&ref);
    grads_free(&same);
    sim_close(&fresh);
    sim_close(&s);
    free(g);
    free(e);
    free(x);
    free(w);
    obs_free(&o);
    qd_circuit_free(&c);
}

Test(statevector, forward_cache_only_for_the_same_job)
{
    rc_opts gates = {4, 1, 1, 30};
    check_forward_cache("plugin: statevector\nmethod: gates\n", gates, 5);
    rc_opts dense = {4, 1, 0, 30};
    check_forward_cache("plugin: statevector\nmethod: dense\n", dense, 5);
    rc_opts big = {16, 0, 1, 40}; /* blocked sweep, one sample */
    check_forward_cache("plugin: statevector\nmethod: gates\n", big, 1);
}

/* ------------------------------------------------------------------------
 * Large registers (cache-blocked execution): a 16-qubit circuit made of two
 * disconnected 4-qubit blocks, one on the top wires (full passes) and one on
 * the bottom wires (chunk-local runs), against the reference on each block;
 * gradients against central differences of the forward.
 * ---------------------------------------------------------------------- */

/* Append src's ops to dst with wires mapped and weight/input indices
 * shifted. */
static void embed(const qd_circuit *src, qd_circuit *dst, const uint32_t *map,
                  uint32_t w_off, uint32_t x_off)
{
    qd_error err;
    for (size_t k = 0; k < src->n_ops; k++) {
        const qd_op *op = &src->ops[k];
        uint32_t w[2] = {map[op->wires[0]], op->n_wires == 2 ? map[op->wires[1]] : 0};
        if (op->gate == QD_GATE_BARRIER)
            continue;
        if (op->gate == QD_GATE_UNITARY) {
            cr_assert_eq(qd_circuit_add_unitary(dst, op->n_wires, w,
                                                src->matrices + op->data, &err), QD_OK);
            continue;
        }
        qd_angle a[3];
        for (uint32_t i = 0; i < op->n_angles; i++) {
            a[i] = op->angle[i];
            if (a[i].src == QD_SRC_WEIGHT)
                a[i].index += w_off;
            else if (a[i].src == QD_SRC_INPUT)
                a[i].index += x_off;
        }
        cr_assert_eq(qd_circuit_add(dst, (qd_gate)op->gate, w, a, &err), QD_OK, "%s", err.msg);
    }
}

Test(statevector, large_register_blocks)
{
    sim s = sim_new("plugin: statevector\nmethod: gates\n");
    qd_rng r;
    qd_rng_seed(&r, 8, 8);
    rc_opts ro = {4, 0, 1, 36};
    qd_circuit a, b, big;
    rand_circuit(&r, ro, &a);
    rand_circuit(&r, ro, &b);
    const uint32_t ma[4] = {0, 1, 2, 3}, mb[4] = {15, 12, 14, 13};
    qd_circuit_init(&big, 16);
    /* interleave the two blocks' ops so runs of local and non-local gates
     * alternate */
    embed(&a, &big, ma, 0, 0);
    embed(&b, &big, mb, 6, 4);
    double wa[6], wb[6], w[12], xa[4], xb[4], x[8];
    for (int i = 0; i < 6; i++) {
        wa[i] = w[i] = urand(&r, -3, 3);
        wb[i] = w[6 + i] = urand(&r, -3, 3);
    }
    for (int i = 0; i < 4; i++) {
        xa[i] = x[i] = urand(&r, -2, 2);
        xb[i] = x[4 + i] = urand(&r, -2, 2);
    }
    obs oa, ob, o = {0};
    rand_obs(&r, 4, &oa);
    rand_obs(&r, 4, &ob);
    for (uint32_t t = 0; t < oa.spec.n_terms; t++) {
        const qd_obs_term *ta = &oa.spec.terms[t], *tb = &ob.spec.terms[t];
        uint32_t wa2[2] = {ma[ta->wires[0]], ta->n_wires == 2 ? ma[ta->wires[1]] : 0};
        uint32_t wb2[2] = {mb[tb->wires[0]], tb->n_wires == 2 ? mb[tb->wires[1]] : 0};
        obs_add(&o, ta->output, ta->n_wires, wa2, oa.mats + ta->matrix);
        obs_add(&o, 3 + tb->output, tb->n_wires, wb2, ob.mats + tb->matrix);
    }
    double e[6], ea[3], eb[3];
    qd_sim_job job = make_job(&big, &o, 1, x, w);
    cr_assert_eq(s.vt->forward(s.self, &job, e), QD_OK);
    cplx *pa = ref_state(&a, wa, xa), *pb = ref_state(&b, wb, xb);
    ref_expect(&a, &oa, pa, ea);
    ref_expect(&b, &ob, pb, eb);
    for (int k = 0; k < 3; k++) {
        cr_expect(fabs(e[k] - ea[k]) < 1e-12, "top block output %d: %.15g vs %.15g", k, e[k], ea[k]);
        cr_expect(fabs(e[3 + k] - eb[k]) < 1e-12, "bottom block output %d: %.15g vs %.15g", k,
                  e[3 + k], eb[k]);
    }
    free(pa);
    free(pb);

    /* gradients of the whole 16-qubit circuit, plus a bridge between the
     * blocks so the state is entangled across the chunk boundary */
    uint32_t br[2] = {3, 12};
    qd_angle ba = qd_angle_weight(11);
    qd_error err;
    cr_assert_eq(qd_circuit_add(&big, QD_GATE_CRY, br, &ba, &err), QD_OK);
    uint32_t br2[2] = {13, 1};
    cr_assert_eq(qd_circuit_add(&big, QD_GATE_CNOT, br2, NULL, &err), QD_OK);
    double g[6];
    for (int i = 0; i < 6; i++)
        g[i] = urand(&r, -1, 1);
    grads A = run_backward(&s, &job, g);
    grads F = fd_grads(&s, job, x, w, o.mats, g, &r);
    cr_expect(rel_err(A.gw, F.gw, 12) < 1e-8, "16 qubits, weights: %.3g", rel_err(A.gw, F.gw, 12));
    cr_expect(rel_err(A.gx, F.gx, 8) < 1e-8, "16 qubits, inputs: %.3g", rel_err(A.gx, F.gx, 8));
    check_mats_grad(&s, job, o.mats, A.gm, g, &r, "16 qubits");
    sim ps = sim_new("plugin: statevector\ndiff_method: parameter_shift\n");
    grads P = run_backward(&ps, &job, g);
    cr_expect(rel_err(P.gw, A.gw, 12) < 1e-10, "16 qubits, shift vs adjoint");
    cr_expect(rel_err_c(P.gm, A.gm, o.spec.matrix_len) < 1e-12, "16 qubits, mats");
    grads_free(&A);
    grads_free(&F);
    grads_free(&P);
    sim_close(&ps);
    obs_free(&oa);
    obs_free(&ob);
    obs_free(&o);
    qd_circuit_free(&a);
    qd_circuit_free(&b);
    qd_circuit_free(&big);
    sim_close(&s);
}

/* No ops at all: |0...0>, and backward after forward of the empty job. */
Test(statevector, empty_circuit)
{
    sim s = sim_new("plugin: statevector\n");
    qd_circuit c;
    qd_circuit_init(&c, 2);
    obs o = {0};
    cplx z[4] = {1, 0, 0, -1};
    uint32_t w = 1;
    obs_add(&o, 0, 1, &w, z);
    double e[1], g[1] = {2.0};
    cplx gm[4];
    qd_sim_job job = make_job(&c, &o, 1, NULL, NULL);
    cr_assert_eq(s.vt->forward(s.self, &job, e), QD_OK);
    cr_expect_eq(e[0], 1.0);
    cr_assert_eq(s.vt->backward(s.self, &job, g, NULL, NULL, gm), QD_OK);
    cr_expect(gm[0] == 2.0 && gm[1] == 0 && gm[2] == 0 && gm[3] == 0, "G = 2 |0><0|");
    obs_free(&o);
    qd_circuit_free(&c);
    sim_close(&s);
}
