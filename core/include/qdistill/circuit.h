/*
 * qdistill/circuit.h — the circuit IR shared by encoders, ansätze,
 * observables and simulators.
 *
 * A circuit on n wires is an ordered list of ops. Every gate angle is
 *
 *     theta = offset + scale * src[index]
 *
 * where src is nothing (a constant: scale = 0), the layer's trainable weight
 * vector, or the per-sample input vector produced by the encoder. Encoders
 * append input-dependent ops, ansätze append weight-dependent ops, simulators
 * execute the list. The same structure serves a whole batch: weights are
 * shared, inputs differ per sample.
 *
 * Wire order follows PennyLane: wire 0 is the most significant bit of a basis
 * index, |b0 b1 ... b(n-1)> = index sum_w b_w 2^(n-1-w). A k-wire matrix acts
 * on its wires in the order listed (wires[0] most significant).
 *
 * Gate conventions (all as in PennyLane):
 *   RX(t) = exp(-i t X/2), RY, RZ likewise; PhaseShift(t) = diag(1, e^{it});
 *   Rot(phi, theta, omega) = RZ(omega) RY(theta) RZ(phi);
 *   CRX/CRY/CRZ: control wires[0], target wires[1]; CNOT likewise.
 *   S = diag(1, i), T = diag(1, e^{i pi/4}).
 */
#ifndef QDISTILL_CIRCUIT_H
#define QDISTILL_CIRCUIT_H

#include <complex.h>
#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qd_gate {
    QD_GATE_I = 0,
    QD_GATE_X, QD_GATE_Y, QD_GATE_Z, QD_GATE_H, QD_GATE_S, QD_GATE_T,
    QD_GATE_RX, QD_GATE_RY, QD_GATE_RZ,
    QD_GATE_ROT,          /* 3 angles: phi, theta, omega */
    QD_GATE_PHASE,        /* PhaseShift */
    QD_GATE_CNOT, QD_GATE_CZ,
    QD_GATE_CRX, QD_GATE_CRY, QD_GATE_CRZ,
    QD_GATE_SWAP,
    QD_GATE_UNITARY,      /* dense 2x2 or 4x4 matrix on 1 or 2 wires */
    QD_GATE_STATE_PREP,   /* prepare sum_k a_k |k> from real inputs; first op */
    QD_GATE_BARRIER,      /* no-op marking the end of an ansatz/encoder layer
                             (noise models may act "after each layer") */
    QD_GATE_COUNT_
} qd_gate;

typedef enum qd_angle_src {
    QD_SRC_CONST = 0,     /* theta = offset */
    QD_SRC_WEIGHT = 1,    /* theta = offset + scale * weights[index] */
    QD_SRC_INPUT = 2      /* theta = offset + scale * inputs[index] */
} qd_angle_src;

typedef struct qd_angle {
    uint32_t src;         /* qd_angle_src */
    uint32_t index;
    double scale;
    double offset;
} qd_angle;

#define QD_OP_MAX_ANGLES 3

typedef struct qd_op {
    uint32_t gate;                    /* qd_gate */
    uint32_t n_wires;                 /* 0 (barrier), 1, 2, or n (state prep) */
    uint32_t wires[2];
    uint32_t n_angles;
    qd_angle angle[QD_OP_MAX_ANGLES];
    /* QD_GATE_UNITARY: offset into qd_circuit.matrices (row-major 2^k x 2^k).
     * QD_GATE_STATE_PREP: first input index of the 2^n real amplitudes. */
    size_t data;
} qd_op;

typedef struct qd_circuit {
    uint32_t n_wires;
    uint32_t n_weights;   /* length of the trainable weight vector */
    uint32_t n_inputs;    /* per-sample input length (encoder output) */
    uint32_t n_layers;    /* number of BARRIER ops, informational */
    size_t n_ops, cap_ops;
    qd_op *ops;
    size_t n_matrices, cap_matrices;   /* complex entries */
    double complex *matrices;
} qd_circuit;

/* Number of angles each gate takes, and its arity (0 = all wires). */
QD_EXPORT int qd_gate_n_angles(qd_gate g);
QD_EXPORT int qd_gate_n_wires(qd_gate g);
QD_EXPORT const char *qd_gate_name(qd_gate g);

QD_EXPORT void qd_circuit_init(qd_circuit *c, uint32_t n_wires);
QD_EXPORT void qd_circuit_free(qd_circuit *c);

/* Angle constructors. */
QD_EXPORT qd_angle qd_angle_const(double value);
QD_EXPORT qd_angle qd_angle_weight(uint32_t index);
QD_EXPORT qd_angle qd_angle_input(uint32_t index, double scale);

/* Append a gate. wires/angles must match the gate's arity; weight and input
 * indices grow n_weights/n_inputs as needed. Returns QD_OK or QD_ERR_INVALID
 * with a message (wire out of range, repeated wire, wrong arity). */
QD_EXPORT int qd_circuit_add(qd_circuit *c, qd_gate g, const uint32_t *wires,
                             const qd_angle *angles, qd_error *err);
/* Append a dense unitary on 1 or 2 wires (row-major, copied; checked
 * unitary to 1e-10). */
QD_EXPORT int qd_circuit_add_unitary(qd_circuit *c, uint32_t n_wires,
                                     const uint32_t *wires,
                                     const double complex *m, qd_error *err);
/* Append a state preparation from inputs[first_input .. first_input + 2^n).
 * Must be the first op. */
QD_EXPORT int qd_circuit_add_state_prep(qd_circuit *c, uint32_t first_input,
                                        qd_error *err);
QD_EXPORT int qd_circuit_add_barrier(qd_circuit *c, qd_error *err);

/* The 2x2 / 4x4 matrix of op given resolved angles (row-major, written to m).
 * For parametrised gates also dm[k] = d(matrix)/d(angle k) when dm non-NULL
 * (dm holds n_angles consecutive matrices). Used by simulators and tests. */
QD_EXPORT void qd_op_matrix(const qd_circuit *c, const qd_op *op,
                            const double *theta, double complex *m,
                            double complex *dm);

/* Resolve the angles of op for one sample. */
QD_EXPORT void qd_op_angles(const qd_op *op, const double *weights,
                            const double *inputs, double *theta);

/* Human-readable listing, one op per line, into a malloc'd string. */
QD_EXPORT char *qd_circuit_describe(const qd_circuit *c);

/* ---- observables ---- */

#define QD_OBS_MAX_WIRES 6

/* One measured term: a Hermitian matrix on k wires that adds its expectation
 * to output `output`. The matrix lives in the observable's matrix buffer at
 * `matrix` (complex entries, row-major 2^k x 2^k). */
typedef struct qd_obs_term {
    uint32_t output;
    uint32_t n_wires;
    uint32_t wires[QD_OBS_MAX_WIRES];
    size_t matrix;
} qd_obs_term;

typedef struct qd_obs_spec {
    uint32_t n_outputs;
    uint32_t n_terms;
    qd_obs_term *terms;
    size_t matrix_len;     /* total complex entries of all term matrices */
} qd_obs_spec;

QD_EXPORT void qd_obs_spec_free(qd_obs_spec *s);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_CIRCUIT_H */
