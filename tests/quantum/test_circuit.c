/* The circuit IR: gate tables, validation when building, gate matrices
 * against matrices written out independently here, derivative matrices
 * against central differences, and the listing format. */
#include <complex.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/circuit.h"

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

typedef double complex cplx;

static void mm2(const cplx *a, const cplx *b, cplx *o)
{
    cplx r[4];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            r[i * 2 + j] = a[i * 2] * b[j] + a[i * 2 + 1] * b[2 + j];
    memcpy(o, r, sizeof r);
}

/* Independent reference matrices, written from the definitions. */
static void ref_rx(double t, cplx *m)
{
    double c = cos(t / 2), s = sin(t / 2);
    m[0] = c; m[1] = -I * s; m[2] = -I * s; m[3] = c;
}
static void ref_ry(double t, cplx *m)
{
    double c = cos(t / 2), s = sin(t / 2);
    m[0] = c; m[1] = -s; m[2] = s; m[3] = c;
}
static void ref_rz(double t, cplx *m)
{
    m[0] = cexp(-I * t / 2); m[1] = 0; m[2] = 0; m[3] = cexp(I * t / 2);
}

static void ref_gate(qd_gate g, const double *t, cplx *m)
{
    const double h = 1 / sqrt(2.0);
    memset(m, 0, 16 * sizeof *m);
    cplx u[4];
    switch (g) {
    case QD_GATE_I: m[0] = 1; m[3] = 1; break;
    case QD_GATE_X: m[1] = 1; m[2] = 1; break;
    case QD_GATE_Y: m[1] = -I; m[2] = I; break;
    case QD_GATE_Z: m[0] = 1; m[3] = -1; break;
    case QD_GATE_H: m[0] = h; m[1] = h; m[2] = h; m[3] = -h; break;
    case QD_GATE_S: m[0] = 1; m[3] = I; break;
    case QD_GATE_T: m[0] = 1; m[3] = cexp(I * M_PI / 4); break;
    case QD_GATE_RX: ref_rx(t[0], m); break;
    case QD_GATE_RY: ref_ry(t[0], m); break;
    case QD_GATE_RZ: ref_rz(t[0], m); break;
    case QD_GATE_PHASE: m[0] = 1; m[3] = cexp(I * t[0]); break;
    case QD_GATE_ROT: {
        cplx a[4], b[4], c[4];
        ref_rz(t[0], a); ref_ry(t[1], b); ref_rz(t[2], c);
        mm2(b, a, u);
        mm2(c, u, m);
        break;
    }
    case QD_GATE_CNOT: m[0] = 1; m[5] = 1; m[11] = 1; m[14] = 1; break;
    case QD_GATE_CZ: m[0] = 1; m[5] = 1; m[10] = 1; m[15] = -1; break;
    case QD_GATE_SWAP: m[0] = 1; m[6] = 1; m[9] = 1; m[15] = 1; break;
    case QD_GATE_CRX: case QD_GATE_CRY: case QD_GATE_CRZ:
        if (g == QD_GATE_CRX) ref_rx(t[0], u);
        else if (g == QD_GATE_CRY) ref_ry(t[0], u);
        else ref_rz(t[0], u);
        m[0] = 1; m[5] = 1;
        m[10] = u[0]; m[11] = u[1]; m[14] = u[2]; m[15] = u[3];
        break;
    default: break;
    }
}

static qd_op make_op(qd_gate g)
{
    qd_op op;
    memset(&op, 0, sizeof op);
    op.gate = g;
    op.n_wires = (uint32_t)qd_gate_n_wires(g);
    op.wires[0] = 0;
    op.wires[1] = 1;
    op.n_angles = (uint32_t)qd_gate_n_angles(g);
    return op;
}

Test(circuit, tables)
{
    cr_expect_eq(qd_gate_n_angles(QD_GATE_ROT), 3);
    cr_expect_eq(qd_gate_n_angles(QD_GATE_CRY), 1);
    cr_expect_eq(qd_gate_n_angles(QD_GATE_CNOT), 0);
    cr_expect_eq(qd_gate_n_wires(QD_GATE_RX), 1);
    cr_expect_eq(qd_gate_n_wires(QD_GATE_SWAP), 2);
    cr_expect_eq(qd_gate_n_wires(QD_GATE_STATE_PREP), 0);
    cr_expect_eq(qd_gate_n_wires(QD_GATE_UNITARY), -1);
    cr_expect_eq(qd_gate_n_wires((qd_gate)999), -1);
    cr_expect_str_eq(qd_gate_name(QD_GATE_ROT), "Rot");
    cr_expect_str_eq(qd_gate_name(QD_GATE_PHASE), "PhaseShift");
    cr_expect_str_eq(qd_gate_name((qd_gate)999), "?");
    for (int g = 0; g < QD_GATE_COUNT_; g++)
        cr_expect(qd_gate_name((qd_gate)g)[0] != '?', "gate %d unnamed", g);
}

Test(circuit, matrices_match_definitions)
{
    const double th[3] = {0.37, -1.21, 2.05};
    for (int g = 0; g < QD_GATE_UNITARY; g++) {
        qd_op op = make_op((qd_gate)g);
        cplx m[16], r[16];
        memset(m, 0, sizeof m);
        qd_op_matrix(NULL, &op, th, m, NULL);
        ref_gate((qd_gate)g, th, r);
        int d = op.n_wires == 2 ? 4 : 2;
        for (int i = 0; i < d * d; i++)
            cr_expect(cabs(m[i] - r[i]) < 1e-15, "%s entry %d: %g%+gi vs %g%+gi",
                      qd_gate_name((qd_gate)g), i, creal(m[i]), cimag(m[i]),
                      creal(r[i]), cimag(r[i]));
    }
}

Test(circuit, derivative_matrices)
{
    const double th[3] = {0.81, 2.3, -0.44};
    const double h = 1e-6;
    for (int g = 0; g < QD_GATE_UNITARY; g++) {
        int na = qd_gate_n_angles((qd_gate)g);
        if (na == 0)
            continue;
        qd_op op = make_op((qd_gate)g);
        cplx m[16], dm[48];
        qd_op_matrix(NULL, &op, th, m, dm);
        int d = op.n_wires == 2 ? 4 : 2;
        for (int a = 0; a < na; a++) {
            double tp[3], tm[3];
            memcpy(tp, th, sizeof tp);
            memcpy(tm, th, sizeof tm);
            tp[a] += h;
            tm[a] -= h;
            cplx rp[16], rm[16];
            ref_gate((qd_gate)g, tp, rp);
            ref_gate((qd_gate)g, tm, rm);
            for (int i = 0; i < d * d; i++) {
                cplx fd = (rp[i] - rm[i]) / (2 * h);
                cr_expect(cabs(dm[a * d * d + i] - fd) < 1e-9,
                          "%s d/dangle%d entry %d", qd_gate_name((qd_gate)g), a, i);
            }
        }
    }
}

Test(circuit, add_validates)
{
    qd_circuit c;
    qd_circuit_init(&c, 3);
    qd_error err;
    uint32_t w2[2] = {0, 2};
    qd_angle a = qd_angle_weight(4);
    cr_assert_eq(qd_circuit_add(&c, QD_GATE_RX, w2, &a, &err), QD_OK);
    cr_expect_eq(c.n_weights, 5);
    qd_angle x = qd_angle_input(7, 0.5);
    cr_assert_eq(qd_circuit_add(&c, QD_GATE_CRZ, w2, &x, &err), QD_OK);
    cr_expect_eq(c.n_inputs, 8);
    cr_expect_eq(c.n_ops, 2);

    uint32_t bad[2] = {3, 0};
    cr_expect_eq(qd_circuit_add(&c, QD_GATE_H, bad, NULL, &err), QD_ERR_INVALID);
    cr_expect(strstr(err.msg, "out of range"), "%s", err.msg);
    uint32_t rep[2] = {1, 1};
    cr_expect_eq(qd_circuit_add(&c, QD_GATE_CNOT, rep, NULL, &err), QD_ERR_INVALID);
    cr_expect(strstr(err.msg, "repeated"), "%s", err.msg);
    cr_expect_eq(qd_circuit_add(&c, QD_GATE_RY, w2, NULL, &err), QD_ERR_INVALID);
    cr_expect(strstr(err.msg, "angle"), "%s", err.msg);
    qd_angle nan_a = qd_angle_const(NAN);
    cr_expect_eq(qd_circuit_add(&c, QD_GATE_RY, w2, &nan_a, &err), QD_ERR_INVALID);
    qd_angle bad_src = {7, 0, 1, 0};
    cr_expect_eq(qd_circuit_add(&c, QD_GATE_RY, w2, &bad_src, &err), QD_ERR_INVALID);
    cr_expect_eq(qd_circuit_add(&c, (qd_gate)999, w2, NULL, &err), QD_ERR_INVALID);
    cr_expect_eq(qd_circuit_add(&c, QD_GATE_UNITARY, w2, NULL, &err), QD_ERR_INVALID);
    cr_expect_eq(qd_circuit_add(&c, QD_GATE_STATE_PREP, w2, NULL, &err), QD_ERR_INVALID);
    cr_expect_eq(c.n_ops, 2, "failed adds must not append");

    /* state prep only first */
    cr_expect_eq(qd_circuit_add_state_prep(&c, 0, &err), QD_ERR_INVALID);
    cr_expect(strstr(err.msg, "first"), "%s", err.msg);
    cr_assert_eq(qd_circuit_add(&c, QD_GATE_BARRIER, NULL, NULL, &err), QD_OK);
    cr_expect_eq(c.n_layers, 1);
    qd_circuit_free(&c);

    qd_circuit_init(&c, 3);
    cr_assert_eq(qd_circuit_add_state_prep(&c, 2, &err), QD_OK);
    cr_expect_eq(c.n_inputs, 10);
    cr_expect_eq(c.ops[0].n_wires, 3);
    qd_circuit_free(&c);
}

Test(circuit, unitary_checked)
{
    qd_circuit c;
    qd_circuit_init(&c, 2);
    qd_error err;
    const double h = 1 / sqrt(2.0);
    cplx had[4] = {h, h, h, -h};
    uint32_t w[2] = {1, 0};
    cr_assert_eq(qd_circuit_add_unitary(&c, 1, w, had, &err), QD_OK);
    cplx notu[4] = {1, 1, 0, 1};
    cr_expect_eq(qd_circuit_add_unitary(&c, 1, w, notu, &err), QD_ERR_INVALID);
    cr_expect(strstr(err.msg, "not unitary"), "%s", err.msg);
    cplx cz[16] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, -1};
    cr_assert_eq(qd_circuit_add_unitary(&c, 2, w, cz, &err), QD_OK);
    cr_expect_eq(qd_circuit_add_unitary(&c, 3, w, cz, &err), QD_ERR_INVALID);
    cr_expect_eq(c.n_matrices, 20);
    cplx m[16];
    qd_op_matrix(&c, &c.ops[1], NULL, m, NULL);
    for (int i = 0; i < 16; i++)
        cr_expect(m[i] == cz[i]);
    qd_op_matrix(&c, &c.ops[0], NULL, m, NULL);
    for (int i = 0; i < 4; i++)
        cr_expect(m[i] == had[i]);
    qd_circuit_free(&c);
}

Test(circuit, angles_resolve)
{
    qd_op op = make_op(QD_GATE_ROT);
    op.angle[0] = qd_angle_weight(1);
    op.angle[1] = qd_angle_input(2, -0.5);
    op.angle[1].offset = 0.25;
    op.angle[2] = qd_angle_const(1.5);
    const double w[2] = {9, 3}, x[3] = {0, 0, 4};
    double t[3];
    qd_op_angles(&op, w, x, t);
    cr_expect_eq(t[0], 3.0);
    cr_expect_eq(t[1], 0.25 - 2.0);
    cr_expect_eq(t[2], 1.5);
}

Test(circuit, describe)
{
    qd_circuit c;
    qd_circuit_init(&c, 6);
    qd_error err;
    cr_assert_eq(qd_circuit_add_state_prep(&c, 0, &err), QD_OK);
    qd_angle r[3] = {qd_angle_weight(0), qd_angle_weight(1), qd_angle_weight(2)};
    uint32_t w[2] = {0, 4};
    cr_assert_eq(qd_circuit_add(&c, QD_GATE_ROT, w, r, &err), QD_OK);
    qd_angle x = qd_angle_input(3, 0.5);
    cr_assert_eq(qd_circuit_add(&c, QD_GATE_RX, w, &x, &err), QD_OK);
    cr_assert_eq(qd_circuit_add(&c, QD_GATE_CNOT, w, NULL, &err), QD_OK);
    cr_assert_eq(qd_circuit_add_barrier(&c, &err), QD_OK);
    char *s = qd_circuit_describe(&c);
    cr_assert(s);
    cr_expect_str_eq(s, "  0  StatePrep(x[0..63])  wires [0..5]\n"
                        "  1  Rot(w[0], w[1], w[2])  wires [0]\n"
                        "  2  RX(0.5*x[3])  wires [0]\n"
                        "  3  CNOT  wires [0, 4]\n"
                        "  4  Barrier\n");
    free(s);
    qd_circuit_free(&c);
    cr_expect_eq(c.n_ops, 0);
    cr_expect_eq(c.n_wires, 6);
}

Test(circuit, obs_spec_free)
{
    qd_obs_spec s = {2, 1, calloc(1, sizeof(qd_obs_term)), 4};
    qd_obs_spec_free(&s);
    cr_expect_null(s.terms);
    cr_expect_eq(s.n_terms, 0);
    qd_obs_spec_free(NULL);
}
