/* Test helpers shared by the encoder/ansatz/observable/density-matrix suites:
 * plugin instances from YAML through the registry, and a small dense
 * state-vector / density-matrix reference written from the gate definitions
 * (independent of circuit.c and of the simulator plugins). */
#ifndef QPLUG_UTIL_H
#define QPLUG_UTIL_H

#include <complex.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/config.h"
#include "qdistill/registry.h"

typedef double complex qp_c;

#define QP_PI 3.14159265358979323846

#ifndef CMPLX
#define CMPLX(x, y) __builtin_complex((double)(x), (double)(y))
#endif

/* ---- registry and instances ---- */

static qd_registry *qp_reg_;

static inline qd_registry *qp_registry(void)
{
    if (!qp_reg_) {
        qd_error err = {0};
        cr_assert_eq(qd_registry_create(&qp_reg_, &err), QD_OK, "%s", err.msg);
        const char *dir = getenv("QDISTILL_PLUGIN_PATH");
        cr_assert(dir, "QDISTILL_PLUGIN_PATH not set");
        char *problems = NULL;
        cr_assert_eq(qd_registry_load_dir(qp_reg_, dir, &problems, &err), QD_OK,
                     "%s", err.msg);
        free(problems);
    }
    return qp_reg_;
}

static inline void qp_teardown(void)
{
    qd_registry_destroy(qp_reg_);
    qp_reg_ = NULL;
}

typedef struct qp_inst {
    qd_config *cfg;
    qd_instance *inst;
    void *self;
    const void *vt;
} qp_inst;

/* Create a plugin instance of `kind` from a YAML mapping (with `plugin:`).
 * Returns the status; on failure err holds the message. `name` is the file
 * name used in locations. */
static inline int qp_try(int kind, const char *name, const char *yaml, uint64_t seed,
                  qp_inst *out, qd_error *err)
{
    memset(out, 0, sizeof *out);
    int rc = qd_config_load_string(yaml, strlen(yaml), name, NULL, &out->cfg, err);
    if (rc)
        return rc;
    qd_instance_opts opts = {0};
    opts.seed = seed;
    opts.stream = "test.quantum";
    opts.threads = 1;
    rc = qd_instance_create(qp_registry(), kind, qd_config_root(out->cfg), &opts,
                            &out->inst, err);
    if (rc) {
        qd_config_destroy(out->cfg);
        out->cfg = NULL;
        return rc;
    }
    out->self = qd_instance_self(out->inst);
    out->vt = qd_instance_vtable(out->inst);
    return QD_OK;
}

static inline qp_inst qp_make(int kind, const char *yaml)
{
    qp_inst q;
    qd_error err = {0};
    int rc = qp_try(kind, "test.yaml", yaml, 1, &q, &err);
    cr_assert_eq(rc, QD_OK, "creating from\n%s\nfailed: %s", yaml, err.msg);
    return q;
}

static inline void qp_free(qp_inst *q)
{
    qd_instance_destroy(q->inst);
    qd_config_destroy(q->cfg);
    memset(q, 0, sizeof *q);
}

/* The message a plugin recorded for a failed call. */
static inline const char *qp_msg(const qp_inst *q, int rc)
{
    static qd_error err;
    qd_instance_error(q->inst, rc, &err);
    return err.msg;
}

static inline double qp_urand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return ((*s >> 8) & 0xffffff) / 16777216.0;
}

/* ---- dense reference: gate matrices straight from their definitions ---- */

/* 2x2 or 4x4 matrix of gate g with angles th (PennyLane conventions);
 * m must hold 16 entries. Returns the number of wires. */
static inline int qp_gate(int g, const double *th, qp_c *m)
{
    const double r = 1.0 / sqrt(2.0);
    qp_c u[16];
    memset(m, 0, 16 * sizeof *m);
    switch (g) {
    case QD_GATE_I: m[0] = m[3] = 1; return 1;
    case QD_GATE_X: m[1] = m[2] = 1; return 1;
    case QD_GATE_Y: m[1] = -I; m[2] = I; return 1;
    case QD_GATE_Z: m[0] = 1; m[3] = -1; return 1;
    case QD_GATE_H: m[0] = m[1] = m[2] = r; m[3] = -r; return 1;
    case QD_GATE_S: m[0] = 1; m[3] = I; return 1;
    case QD_GATE_T: m[0] = 1; m[3] = cexp(I * QP_PI / 4); return 1;
    case QD_GATE_RX:   /* exp(-i t X / 2) */
        m[0] = m[3] = cos(th[0] / 2);
        m[1] = m[2] = -I * sin(th[0] / 2);
        return 1;
    case QD_GATE_RY:
        m[0] = m[3] = cos(th[0] / 2);
        m[1] = -sin(th[0] / 2);
        m[2] = sin(th[0] / 2);
        return 1;
    case QD_GATE_RZ:
        m[0] = cexp(-I * th[0] / 2);
        m[3] = cexp(I * th[0] / 2);
        return 1;
    case QD_GATE_PHASE: m[0] = 1; m[3] = cexp(I * th[0]); return 1;
    case QD_GATE_ROT: {
        /* RZ(omega) RY(theta) RZ(phi), PennyLane's closed form */
        double phi = th[0], t = th[1], om = th[2];
        m[0] = cexp(-I * (phi + om) / 2) * cos(t / 2);
        m[1] = -cexp(I * (phi - om) / 2) * sin(t / 2);
        m[2] = cexp(-I * (phi - om) / 2) * sin(t / 2);
        m[3] = cexp(I * (phi + om) / 2) * cos(t / 2);
        return 1;
    }
    case QD_GATE_CNOT: m[0] = m[5] = m[11] = m[14] = 1; return 2;
    case QD_GATE_CZ: m[0] = m[5] = m[10] = 1; m[15] = -1; return 2;
    case QD_GATE_SWAP: m[0] = m[6] = m[9] = m[15] = 1; return 2;
    case QD_GATE_CRX:
    case QD_GATE_CRY:
    case QD_GATE_CRZ:
        qp_gate(g == QD_GATE_CRX ? QD_GATE_RX : g == QD_GATE_CRY ? QD_GATE_RY
                                                                  : QD_GATE_RZ,
                th, u);
        memset(m, 0, 16 * sizeof *m);
        m[0] = m[5] = 1;
        m[10] = u[0];
        m[11] = u[1];
        m[14] = u[2];
        m[15] = u[3];
        return 2;
    default: return 0;
    }
}

/* Full 2^n x 2^n matrix of a k-local matrix on `wires` (wires[0] MSB). */
static inline void qp_full(int n, int k, const uint32_t *wires, const qp_c *m, qp_c *F)
{
    size_t D = (size_t)1 << n, d = (size_t)1 << k;
    for (size_t r = 0; r < D; r++)
        for (size_t c = 0; c < D; c++) {
            size_t rl = 0, cl = 0, rest_r = r, rest_c = c;
            for (int f = 0; f < k; f++) {
                size_t bit = (size_t)1 << (n - 1 - wires[f]);
                rl = (rl << 1) | ((r & bit) ? 1 : 0);
                cl = (cl << 1) | ((c & bit) ? 1 : 0);
                rest_r &= ~bit;
                rest_c &= ~bit;
            }
            F[r * D + c] = rest_r == rest_c ? m[rl * d + cl] : 0;
        }
}

/* y = F x for dense D x D F. */
static inline void qp_matvec(size_t D, const qp_c *F, const qp_c *x, qp_c *y)
{
    for (size_t r = 0; r < D; r++) {
        qp_c s = 0;
        for (size_t c = 0; c < D; c++)
            s += F[r * D + c] * x[c];
        y[r] = s;
    }
}

/* C = A B (D x D). */
static inline void qp_matmul(size_t D, const qp_c *A, const qp_c *B, qp_c *C)
{
    for (size_t i = 0; i < D; i++)
        for (size_t j = 0; j < D; j++) {
            qp_c s = 0;
            for (size_t k = 0; k < D; k++)
                s += A[i * D + k] * B[k * D + j];
            C[i * D + j] = s;
        }
}

/* Apply a gate to a state vector psi of n wires. */
static inline void qp_sv_gate(int n, qp_c *psi, int g, const uint32_t *wires,
                       const double *th)
{
    size_t D = (size_t)1 << n;
    qp_c m[16];
    int k = qp_gate(g, th, m);
    cr_assert(k > 0, "reference: no matrix for gate %d", g);
    qp_c *F = malloc(D * D * sizeof *F), *y = malloc(D * sizeof *y);
    qp_full(n, k, wires, m, F);
    qp_matvec(D, F, psi, y);
    memcpy(psi, y, D * sizeof *y);
    free(F);
    free(y);
}

/* <psi| H (k-local on wires) |psi>. */
static inline double qp_sv_expect(int n, const qp_c *psi, int k, const uint32_t *wires,
                           const qp_c *H)
{
    size_t D = (size_t)1 << n;
    qp_c *F = malloc(D * D * sizeof *F), *y = malloc(D * sizeof *y);
    qp_full(n, k, wires, H, F);
    qp_matvec(D, F, psi, y);
    qp_c s = 0;
    for (size_t i = 0; i < D; i++)
        s += conj(psi[i]) * y[i];
    free(F);
    free(y);
    return creal(s);
}

/* Run circuit c on |0..0> (or its state preparation) with the reference. */
static inline void qp_sv_run(const qd_circuit *c, const double *w, const double *x,
                      qp_c *psi)
{
    int n = (int)c->n_wires;
    size_t D = (size_t)1 << n;
    memset(psi, 0, D * sizeof *psi);
    psi[0] = 1;
    for (size_t i = 0; i < c->n_ops; i++) {
        const qd_op *op = &c->ops[i];
        if (op->gate == QD_GATE_BARRIER)
            continue;
        if (op->gate == QD_GATE_STATE_PREP) {
            for (size_t k = 0; k < D; k++)
                psi[k] = x[op->data + k];
            continue;
        }
        if (op->gate == QD_GATE_UNITARY) {
            qp_c *F = malloc(D * D * sizeof *F), *y = malloc(D * sizeof *y);
            qp_full(n, (int)op->n_wires, op->wires, c->matrices + op->data, F);
            qp_matvec(D, F, psi, y);
            memcpy(psi, y, D * sizeof *y);
            free(F);
            free(y);
            continue;
        }
        double th[3] = {0, 0, 0};
        for (uint32_t k = 0; k < op->n_angles; k++) {
            const qd_angle *a = &op->angle[k];
            th[k] = a->offset + (a->src == QD_SRC_WEIGHT ? a->scale * w[a->index]
                                 : a->src == QD_SRC_INPUT ? a->scale * x[a->index]
                                                          : 0.0);
        }
        qp_sv_gate(n, psi, (int)op->gate, op->wires, th);
    }
}

#endif
