/* The circuit IR: gate tables, building with validation, gate matrices and
 * their angle derivatives, and a readable listing. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/circuit.h"

/* Largest register a state preparation may address: 2^30 amplitudes is
 * already 16 GiB of state; beyond that the input vector length overflows
 * 32-bit input indices. */
#define QD_STATE_PREP_MAX_WIRES 30u

typedef struct gate_info {
    const char *name;   /* PennyLane's name */
    int n_angles;
    int n_wires;        /* 1, 2; 0 = all wires; -1 = given by the caller */
} gate_info;

static const gate_info gate_table[QD_GATE_COUNT_] = {
    [QD_GATE_I] = {"Identity", 0, 1},
    [QD_GATE_X] = {"PauliX", 0, 1},
    [QD_GATE_Y] = {"PauliY", 0, 1},
    [QD_GATE_Z] = {"PauliZ", 0, 1},
    [QD_GATE_H] = {"Hadamard", 0, 1},
    [QD_GATE_S] = {"S", 0, 1},
    [QD_GATE_T] = {"T", 0, 1},
    [QD_GATE_RX] = {"RX", 1, 1},
    [QD_GATE_RY] = {"RY", 1, 1},
    [QD_GATE_RZ] = {"RZ", 1, 1},
    [QD_GATE_ROT] = {"Rot", 3, 1},
    [QD_GATE_PHASE] = {"PhaseShift", 1, 1},
    [QD_GATE_CNOT] = {"CNOT", 0, 2},
    [QD_GATE_CZ] = {"CZ", 0, 2},
    [QD_GATE_CRX] = {"CRX", 1, 2},
    [QD_GATE_CRY] = {"CRY", 1, 2},
    [QD_GATE_CRZ] = {"CRZ", 1, 2},
    [QD_GATE_SWAP] = {"SWAP", 0, 2},
    [QD_GATE_UNITARY] = {"QubitUnitary", 0, -1},
    [QD_GATE_STATE_PREP] = {"StatePrep", 0, 0},
    [QD_GATE_BARRIER] = {"Barrier", 0, 0},
};

static int gate_valid(int g) { return g >= 0 && g < QD_GATE_COUNT_; }

int qd_gate_n_angles(qd_gate g)
{
    return gate_valid((int)g) ? gate_table[g].n_angles : -1;
}

/* 1 or 2 for fixed-arity gates, 0 for ops on all wires (state prep,
 * barrier), -1 for QubitUnitary (1 or 2, given to qd_circuit_add_unitary)
 * and for an unknown gate. */
int qd_gate_n_wires(qd_gate g)
{
    return gate_valid((int)g) ? gate_table[g].n_wires : -1;
}

const char *qd_gate_name(qd_gate g)
{
    return gate_valid((int)g) ? gate_table[g].name : "?";
}

void qd_circuit_init(qd_circuit *c, uint32_t n_wires)
{
    memset(c, 0, sizeof *c);
    c->n_wires = n_wires;
}

void qd_circuit_free(qd_circuit *c)
{
    if (!c)
        return;
    free(c->ops);
    free(c->matrices);
    uint32_t n = c->n_wires;
    memset(c, 0, sizeof *c);
    c->n_wires = n;
}

qd_angle qd_angle_const(double value)
{
    return (qd_angle){QD_SRC_CONST, 0, 0.0, value};
}

qd_angle qd_angle_weight(uint32_t index)
{
    return (qd_angle){QD_SRC_WEIGHT, index, 1.0, 0.0};
}

qd_angle qd_angle_input(uint32_t index, double scale)
{
    return (qd_angle){QD_SRC_INPUT, index, scale, 0.0};
}

/* ---- building ---- */

static qd_op *push_op(qd_circuit *c, qd_error *err)
{
    if (c->n_ops == c->cap_ops) {
        size_t cap = c->cap_ops ? 2 * c->cap_ops : 16;
        qd_op *ops = realloc(c->ops, cap * sizeof *ops);
        if (!ops) {
            qd_error_set(err, QD_ERR_NOMEM, "circuit: out of memory (%zu ops)",
                         cap);
            return NULL;
        }
        c->ops = ops;
        c->cap_ops = cap;
    }
    qd_op *op = &c->ops[c->n_ops];
    memset(op, 0, sizeof *op);
    return op;
}

static int check_wires(const qd_circuit *c, const char *what, uint32_t n,
                       const uint32_t *wires, qd_error *err)
{
    if (n > 0 && !wires)
        return qd_error_set(err, QD_ERR_INVALID,
                            "circuit: %s needs %u wire(s), got none", what, n);
    for (uint32_t i = 0; i < n; i++) {
        if (wires[i] >= c->n_wires)
            return qd_error_set(err, QD_ERR_INVALID,
                                "circuit: %s wire %u out of range (circuit has "
                                "%u wires: 0..%u)",
                                what, wires[i], c->n_wires,
                                c->n_wires ? c->n_wires - 1 : 0);
        for (uint32_t j = 0; j < i; j++)
            if (wires[j] == wires[i])
                return qd_error_set(err, QD_ERR_INVALID,
                                    "circuit: %s wire %u repeated (a gate's "
                                    "wires must be distinct)",
                                    what, wires[i]);
    }
    return QD_OK;
}

int qd_circuit_add(qd_circuit *c, qd_gate g, const uint32_t *wires,
                   const qd_angle *angles, qd_error *err)
{
    if (!c)
        return qd_error_set(err, QD_ERR_INVALID, "circuit: NULL circuit");
    if (!gate_valid((int)g))
        return qd_error_set(err, QD_ERR_INVALID, "circuit: unknown gate %d",
                            (int)g);
    const gate_info *gi = &gate_table[g];
    if (g == QD_GATE_UNITARY)
        return qd_error_set(err, QD_ERR_INVALID,
                            "circuit: QubitUnitary is added with "
                            "qd_circuit_add_unitary (it needs its matrix)");
    if (g == QD_GATE_STATE_PREP)
        return qd_error_set(err, QD_ERR_INVALID,
                            "circuit: StatePrep is added with "
                            "qd_circuit_add_state_prep");
    if (g == QD_GATE_BARRIER)
        return qd_circuit_add_barrier(c, err);
    int rc = check_wires(c, gi->name, (uint32_t)gi->n_wires, wires, err);
    if (rc)
        return rc;
    if (gi->n_angles > 0 && !angles)
        return qd_error_set(err, QD_ERR_INVALID,
                            "circuit: %s needs %d angle(s), got none", gi->name,
                            gi->n_angles);
    uint32_t need_w = c->n_weights, need_x = c->n_inputs;
    for (int k = 0; k < gi->n_angles; k++) {
        const qd_angle *a = &angles[k];
        if (!isfinite(a->scale) || !isfinite(a->offset))
            return qd_error_set(err, QD_ERR_INVALID,
                                "circuit: %s angle %d has a non-finite "
                                "scale or offset",
                                gi->name, k);
        if (a->src == QD_SRC_WEIGHT) {
            if (a->index == UINT32_MAX)
                return qd_error_set(err, QD_ERR_INVALID,
                                    "circuit: %s weight index too large",
                                    gi->name);
            if (a->index + 1 > need_w)
                need_w = a->index + 1;
        } else if (a->src == QD_SRC_INPUT) {
            if (a->index == UINT32_MAX)
                return qd_error_set(err, QD_ERR_INVALID,
                                    "circuit: %s input index too large",
                                    gi->name);
            if (a->index + 1 > need_x)
                need_x = a->index + 1;
        } else if (a->src != QD_SRC_CONST) {
            return qd_error_set(err, QD_ERR_INVALID,
                                "circuit: %s angle %d has unknown source %u",
                                gi->name, k, a->src);
        }
    }
    qd_op *op = push_op(c, err);
    if (!op)
        return QD_ERR_NOMEM;
    op->gate = (uint32_t)g;
    op->n_wires = (uint32_t)gi->n_wires;
    for (int i = 0; i < gi->n_wires; i++)
        op->wires[i] = wires[i];
    op->n_angles = (uint32_t)gi->n_angles;
    for (int k = 0; k < gi->n_angles; k++) {
        op->angle[k] = angles[k];
        if (angles[k].src == QD_SRC_CONST) {
            op->angle[k].index = 0;
            op->angle[k].scale = 0.0;
        }
    }
    c->n_ops++;
    c->n_weights = need_w;
    c->n_inputs = need_x;
    return QD_OK;
}

int qd_circuit_add_unitary(qd_circuit *c, uint32_t n_wires,
                           const uint32_t *wires, const double complex *m,
                           qd_error *err)
{
    if (!c)
        return qd_error_set(err, QD_ERR_INVALID, "circuit: NULL circuit");
    if (n_wires != 1 && n_wires != 2)
        return qd_error_set(err, QD_ERR_INVALID,
                            "circuit: QubitUnitary acts on 1 or 2 wires, "
                            "got %u",
                            n_wires);
    int rc = check_wires(c, "QubitUnitary", n_wires, wires, err);
    if (rc)
        return rc;
    if (!m)
        return qd_error_set(err, QD_ERR_INVALID,
                            "circuit: QubitUnitary without a matrix");
    size_t d = (size_t)1 << n_wires;
    for (size_t i = 0; i < d * d; i++)
        if (!isfinite(creal(m[i])) || !isfinite(cimag(m[i])))
            return qd_error_set(err, QD_ERR_INVALID,
                                "circuit: QubitUnitary entry (%zu, %zu) is "
                                "not finite",
                                i / d, i % d);
    /* U U^dagger = I to 1e-10 (max abs deviation). */
    double dev = 0.0;
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < d; j++) {
            double complex s = 0;
            for (size_t k = 0; k < d; k++)
                s += m[i * d + k] * conj(m[j * d + k]);
            double e = cabs(s - (i == j ? 1.0 : 0.0));
            if (e > dev)
                dev = e;
        }
    if (dev > 1e-10)
        return qd_error_set(err, QD_ERR_INVALID,
                            "circuit: QubitUnitary matrix is not unitary "
                            "(max |U U^dagger - I| = %.3g > 1e-10)",
                            dev);
    if (c->n_matrices + d * d > c->cap_matrices) {
        size_t cap = c->cap_matrices ? 2 * c->cap_matrices : 64;
        while (cap < c->n_matrices + d * d)
            cap *= 2;
        double complex *mm = realloc(c->matrices, cap * sizeof *mm);
        if (!mm)
            return qd_error_set(err, QD_ERR_NOMEM, "circuit: out of memory");
        c->matrices = mm;
        c->cap_matrices = cap;
    }
    qd_op *op = push_op(c, err);
    if (!op)
        return QD_ERR_NOMEM;
    memcpy(c->matrices + c->n_matrices, m, d * d * sizeof *m);
    op->gate = QD_GATE_UNITARY;
    op->n_wires = n_wires;
    for (uint32_t i = 0; i < n_wires; i++)
        op->wires[i] = wires[i];
    op->data = c->n_matrices;
    c->n_matrices += d * d;
    c->n_ops++;
    return QD_OK;
}

int qd_circuit_add_state_prep(qd_circuit *c, uint32_t first_input,
                              qd_error *err)
{
    if (!c)
        return qd_error_set(err, QD_ERR_INVALID, "circuit: NULL circuit");
    if (c->n_ops != 0)
        return qd_error_set(err, QD_ERR_INVALID,
                            "circuit: StatePrep must be the first op (the "
                            "circuit already has %zu)",
                            c->n_ops);
    if (c->n_wires == 0 || c->n_wires > QD_STATE_PREP_MAX_WIRES)
        return qd_error_set(err, QD_ERR_INVALID,
                            "circuit: StatePrep needs 1..%u wires, circuit "
                            "has %u",
                            QD_STATE_PREP_MAX_WIRES, c->n_wires);
    uint64_t dim = (uint64_t)1 << c->n_wires;
    if ((uint64_t)first_input + dim > UINT32_MAX)
        return qd_error_set(err, QD_ERR_INVALID,
                            "circuit: StatePrep inputs %u..%llu exceed the "
                            "input index range",
                            first_input,
                            (unsigned long long)(first_input + dim - 1));
    qd_op *op = push_op(c, err);
    if (!op)
        return QD_ERR_NOMEM;
    op->gate = QD_GATE_STATE_PREP;
    op->n_wires = c->n_wires;
    op->data = first_input;
    c->n_ops++;
    if (first_input + dim > c->n_inputs)
        c->n_inputs = (uint32_t)(first_input + dim);
    return QD_OK;
}

int qd_circuit_add_barrier(qd_circuit *c, qd_error *err)
{
    if (!c)
        return qd_error_set(err, QD_ERR_INVALID, "circuit: NULL circuit");
    qd_op *op = push_op(c, err);
    if (!op)
        return QD_ERR_NOMEM;
    op->gate = QD_GATE_BARRIER;
    c->n_ops++;
    c->n_layers++;
    return QD_OK;
}

/* ---- angles and matrices ---- */

void qd_op_angles(const qd_op *op, const double *weights, const double *inputs,
                  double *theta)
{
    for (uint32_t k = 0; k < op->n_angles; k++) {
        const qd_angle *a = &op->angle[k];
        double v = a->offset;
        if (a->src == QD_SRC_WEIGHT)
            v += a->scale * weights[a->index];
        else if (a->src == QD_SRC_INPUT)
            v += a->scale * inputs[a->index];
        theta[k] = v;
    }
}

/* 2x2 helpers, row-major. */
static void mat2_set(double complex *m, double complex a, double complex b,
                     double complex c, double complex d)
{
    m[0] = a;
    m[1] = b;
    m[2] = c;
    m[3] = d;
}

static void mat2_mul(const double complex *a, const double complex *b,
                     double complex *out)
{
    double complex r[4] = {
        a[0] * b[0] + a[1] * b[2], a[0] * b[1] + a[1] * b[3],
        a[2] * b[0] + a[3] * b[2], a[2] * b[1] + a[3] * b[3],
    };
    memcpy(out, r, sizeof r);
}

/* Single-qubit rotation R(t) and dR/dt for RX/RY/RZ/PhaseShift. */
static void rot1(qd_gate g, double t, double complex *m, double complex *dm)
{
    double c = cos(0.5 * t), s = sin(0.5 * t);
    switch (g) {
    case QD_GATE_RX:
        mat2_set(m, c, -I * s, -I * s, c);
        if (dm)
            mat2_set(dm, -0.5 * s, -0.5 * I * c, -0.5 * I * c, -0.5 * s);
        break;
    case QD_GATE_RY:
        mat2_set(m, c, -s, s, c);
        if (dm)
            mat2_set(dm, -0.5 * s, -0.5 * c, 0.5 * c, -0.5 * s);
        break;
    case QD_GATE_RZ: {
        double complex em = CMPLX(c, -s), ep = CMPLX(c, s);
        mat2_set(m, em, 0, 0, ep);
        if (dm)
            mat2_set(dm, -0.5 * I * em, 0, 0, 0.5 * I * ep);
        break;
    }
    case QD_GATE_PHASE: {
        double complex e = CMPLX(cos(t), sin(t));
        mat2_set(m, 1, 0, 0, e);
        if (dm)
            mat2_set(dm, 0, 0, 0, I * e);
        break;
    }
    default:
        break;
    }
}

/* Embed 2x2 u as the controlled block of a 4x4 (control = wires[0], MSB). */
static void controlled(const double complex *u, double complex *m, int ident)
{
    memset(m, 0, 16 * sizeof *m);
    if (ident) {
        m[0] = 1;
        m[5] = 1;
    }
    m[10] = u[0];
    m[11] = u[1];
    m[14] = u[2];
    m[15] = u[3];
}

void qd_op_matrix(const qd_circuit *c, const qd_op *op, const double *theta,
                  double complex *m, double complex *dm)
{
    const double h = 0.70710678118654752440;
    qd_gate g = (qd_gate)op->gate;
    switch (g) {
    case QD_GATE_I: mat2_set(m, 1, 0, 0, 1); break;
    case QD_GATE_X: mat2_set(m, 0, 1, 1, 0); break;
    case QD_GATE_Y: mat2_set(m, 0, -I, I, 0); break;
    case QD_GATE_Z: mat2_set(m, 1, 0, 0, -1); break;
    case QD_GATE_H: mat2_set(m, h, h, h, -h); break;
    case QD_GATE_S: mat2_set(m, 1, 0, 0, I); break;
    case QD_GATE_T: mat2_set(m, 1, 0, 0, CMPLX(h, h)); break;
    case QD_GATE_RX:
    case QD_GATE_RY:
    case QD_GATE_RZ:
    case QD_GATE_PHASE:
        rot1(g, theta[0], m, dm);
        break;
    case QD_GATE_ROT: {
        /* RZ(omega) RY(theta) RZ(phi); each derivative replaces one factor. */
        double complex zp[4], dzp[4], y[4], dy[4], zo[4], dzo[4], t[4];
        rot1(QD_GATE_RZ, theta[0], zp, dzp);
        rot1(QD_GATE_RY, theta[1], y, dy);
        rot1(QD_GATE_RZ, theta[2], zo, dzo);
        mat2_mul(y, zp, t);
        mat2_mul(zo, t, m);
        if (dm) {
            mat2_mul(y, dzp, t);
            mat2_mul(zo, t, dm);
            mat2_mul(dy, zp, t);
            mat2_mul(zo, t, dm + 4);
            mat2_mul(y, zp, t);
            mat2_mul(dzo, t, dm + 8);
        }
        break;
    }
    case QD_GATE_CNOT: {
        const double complex x[4] = {0, 1, 1, 0};
        controlled(x, m, 1);
        break;
    }
    case QD_GATE_CZ: {
        const double complex z[4] = {1, 0, 0, -1};
        controlled(z, m, 1);
        break;
    }
    case QD_GATE_CRX:
    case QD_GATE_CRY:
    case QD_GATE_CRZ: {
        double complex u[4], du[4];
        qd_gate base = g == QD_GATE_CRX   ? QD_GATE_RX
                       : g == QD_GATE_CRY ? QD_GATE_RY
                                          : QD_GATE_RZ;
        rot1(base, theta[0], u, du);
        controlled(u, m, 1);
        if (dm)
            controlled(du, dm, 0);
        break;
    }
    case QD_GATE_SWAP:
        memset(m, 0, 16 * sizeof *m);
        m[0] = 1;
        m[6] = 1;
        m[9] = 1;
        m[15] = 1;
        break;
    case QD_GATE_UNITARY: {
        size_t d = (size_t)1 << op->n_wires;
        memcpy(m, c->matrices + op->data, d * d * sizeof *m);
        break;
    }
    default:
        /* StatePrep and Barrier have no gate matrix: nothing is written. */
        break;
    }
}

/* ---- listing ---- */

typedef struct sbuf {
    char *s;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) QD_PRINTF(2, 3);
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = b->cap - b->len;
        int n = vsnprintf(b->s ? b->s + b->len : NULL, room, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if ((size_t)n < room) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + (size_t)n + 1)
            cap *= 2;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->oom = 1;
            return;
        }
        b->s = s;
        b->cap = cap;
    }
}

static void sb_angle(sbuf *b, const qd_angle *a)
{
    if (a->src == QD_SRC_CONST || a->scale == 0.0) {
        sb_printf(b, "%.6g", a->offset);
        return;
    }
    if (a->offset != 0.0)
        sb_printf(b, "%.6g + ", a->offset);
    if (a->scale == -1.0)
        sb_printf(b, "-");
    else if (a->scale != 1.0)
        sb_printf(b, "%.6g*", a->scale);
    sb_printf(b, "%s[%u]", a->src == QD_SRC_WEIGHT ? "w" : "x", a->index);
}

char *qd_circuit_describe(const qd_circuit *c)
{
    sbuf b = {0};
    sb_printf(&b, "%s", "");
    for (size_t i = 0; c && i < c->n_ops; i++) {
        const qd_op *op = &c->ops[i];
        sb_printf(&b, "%3zu  %s", i, qd_gate_name((qd_gate)op->gate));
        if (op->gate == QD_GATE_STATE_PREP) {
            size_t dim = (size_t)1 << op->n_wires;
            sb_printf(&b, "(x[%zu..%zu])  wires [0..%u]\n", op->data,
                      op->data + dim - 1, op->n_wires - 1);
            continue;
        }
        if (op->gate == QD_GATE_BARRIER) {
            sb_printf(&b, "\n");
            continue;
        }
        if (op->gate == QD_GATE_UNITARY)
            sb_printf(&b, "(%ux%u)", 1u << op->n_wires, 1u << op->n_wires);
        if (op->n_angles > 0) {
            sb_printf(&b, "(");
            for (uint32_t k = 0; k < op->n_angles; k++) {
                if (k)
                    sb_printf(&b, ", ");
                sb_angle(&b, &op->angle[k]);
            }
            sb_printf(&b, ")");
        }
        sb_printf(&b, "  wires [");
        for (uint32_t w = 0; w < op->n_wires; w++)
            sb_printf(&b, w ? ", %u" : "%u", op->wires[w]);
        sb_printf(&b, "]\n");
    }
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    return b.s;
}

/* ---- observables ---- */

void qd_obs_spec_free(qd_obs_spec *s)
{
    if (!s)
        return;
    free(s->terms);
    memset(s, 0, sizeof *s);
}
