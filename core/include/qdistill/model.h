/*
 * qdistill/model.h — models: DAGs of named layers built from YAML.
 *
 * A model owns its structure and scratch space; its parameters are a flat
 * double vector owned by the caller, so that distillers can hold many
 * parameter vectors (unrolled inner steps, w ± eps v) for one model.
 * Gradients come back as flat vectors in the same layout.
 *
 * A model is not thread-safe: one call at a time per qd_model (layers use
 * OpenMP/BLAS threads internally).
 */
#ifndef QDISTILL_MODEL_H
#define QDISTILL_MODEL_H

#include "common.h"
#include "config.h"
#include "plugin.h"
#include "registry.h"
#include "rng.h"
#include "schema.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qd_model qd_model;

/* Layer types and their schemas (used by manifest validation and docs). */
QD_EXPORT size_t qd_layer_type_count(void);
QD_EXPORT const char *qd_layer_type_name(size_t i);
QD_EXPORT const qd_param *qd_layer_schema(const char *type);  /* NULL: unknown */
QD_EXPORT const char *qd_layer_type_doc(const char *type);

typedef struct qd_model_opts {
    size_t channels, height, width;   /* input shape */
    size_t classes;
    uint64_t seed;                    /* manifest seed (plugin streams) */
    int threads;
    const char *base_dir;             /* manifest directory */
    volatile int *stop_flag;
} qd_model_opts;

/* Build from a validated `model` section ({layers: [...]}). Quantum layers
 * instantiate their encoder/ansatz/observable/simulator from the registry. */
QD_EXPORT int qd_model_create(const qd_node *model_section,
                              const qd_registry *reg,
                              const qd_model_opts *opts, qd_model **out,
                              qd_error *err);
QD_EXPORT void qd_model_destroy(qd_model *m);

QD_EXPORT size_t qd_model_n_params(const qd_model *m);
QD_EXPORT size_t qd_model_input_size(const qd_model *m);   /* C*H*W */
QD_EXPORT size_t qd_model_n_classes(const qd_model *m);

/* Fresh initial parameters from rng (each layer's initialiser). */
QD_EXPORT int qd_model_init_params(qd_model *m, qd_rng *rng, double *params,
                                   qd_error *err);

/* Training mode (off after create): dropout layers with rate > 0 drop
 * activations only while it is on, drawing from the model's own stream
 * (derived from opts.seed, "model.dropout"). */
QD_EXPORT void qd_model_set_training(qd_model *m, int on);

/* Frozen pieces, for second-order finite differences on piecewise-linear
 * networks. ReLU and max pooling make the loss only piecewise smooth: a
 * central difference of gradients at w +- e v that straddles a ReLU kink or
 * a max-pool argmax switch jumps by O(1), so the quotient is off by O(1/e),
 * and shrinking e does not help (the chance falls like e, the error grows
 * like 1/e). Automatic differentiation's Hessian-vector product (double
 * backward) is the Hessian of the smooth function whose pieces are frozen at
 * the point; these modes let finite differences compute exactly that:
 *   QD_PIECES_LIVE    normal: every forward picks its pieces from its input.
 *   QD_PIECES_RECORD  computes exactly like LIVE, and every forward also
 *                     records, for its batch, the active pieces of each
 *                     relu (mask) and maxpool2d (argmax; in a fused
 *                     conv2d -> relu -> maxpool2d block the argmax and the
 *                     ReLU sign there) it runs. A later forward overwrites.
 *   QD_PIECES_REPLAY  forwards and backwards use the recorded pieces:
 *                     relu(x) = mask * x, maxpool(x) = x[argmax] (a smooth
 *                     function near the recorded point, equal to the live
 *                     model there). A call must have the recorded batch size
 *                     and run only recorded relu/maxpool2d layers, else it
 *                     fails with QD_ERR_INVALID.
 * Smooth layers (tanh, sigmoid, avgpool2d, linear, conv2d, quantum) behave
 * alike in all modes; dropout is not frozen (keep training mode off).
 * Switching to RECORD forgets earlier records; switching to REPLAY fails
 * when the model has relu/maxpool2d layers and none was recorded since. The
 * mode stays until changed (create: LIVE). */
typedef enum qd_pieces_mode {
    QD_PIECES_LIVE = 0,
    QD_PIECES_RECORD = 1,
    QD_PIECES_REPLAY = 2
} qd_pieces_mode;
QD_EXPORT int qd_model_set_pieces(qd_model *m, int mode, qd_error *err);
/* 1 when the model has relu or maxpool2d layers (the modes matter). */
QD_EXPORT int qd_model_has_pieces(const qd_model *m);

/* logits[b * classes + k]. */
QD_EXPORT int qd_model_forward(qd_model *m, const double *params, size_t batch,
                               const double *x, double *logits, qd_error *err);

/* Mean cross-entropy over the batch, and its gradients: g_params (n_params,
 * overwritten) and g_x (batch x input_size, overwritten); either may be NULL.
 * logits may be NULL. */
QD_EXPORT int qd_model_loss_grad(qd_model *m, const double *params,
                                 size_t batch, const double *x,
                                 const int32_t *labels, double *loss,
                                 double *g_params, double *g_x,
                                 double *logits, qd_error *err);

/* Output of a named layer (e.g. the 64 features before the circuit) for a
 * batch; out has batch x qd_model_layer_size(m, name) entries. */
QD_EXPORT size_t qd_model_layer_size(const qd_model *m, const char *layer);
QD_EXPORT int qd_model_forward_to(qd_model *m, const double *params,
                                  size_t batch, const double *x,
                                  const char *layer, double *out,
                                  qd_error *err);

/* Input gradient of a function of a named layer's output: given g_out =
 * dL/d(output of `layer`) (batch x qd_model_layer_size(m, layer)), write
 * g_x = dL/dx (batch x input_size, overwritten) by back-propagating through
 * the layers `layer` depends on (residual forks and add/mix inputs summed;
 * quantum layers through their simulator's input gradient). Parameters get
 * no gradient. The forward part is recomputed (the cost of one
 * qd_model_forward_to), so the call needs nothing from an earlier one; with
 * dropout in training mode the recomputed masks are fresh draws, so keep
 * training mode off for a gradient of a preceding forward_to's output. The
 * pieces mode applies as to forward_to. */
QD_EXPORT int qd_model_backward_from(qd_model *m, const double *params,
                                     size_t batch, const double *x,
                                     const char *layer, const double *g_out,
                                     double *g_x, qd_error *err);

/* Layers in list order (their names are what forward_to / backward_from
 * take), e.g. to list the valid names in a message; NULL past the end. */
QD_EXPORT size_t qd_model_n_layers(const qd_model *m);
QD_EXPORT const char *qd_model_layer_name(const qd_model *m, size_t i);

/* Parameter blocks, for reporting, bounds and clipping. */
typedef struct qd_param_block {
    const char *layer;      /* layer name */
    const char *what;       /* "weight", "bias", "alpha", "circuit", "observable" */
    size_t offset, count;
} qd_param_block;
QD_EXPORT size_t qd_model_n_blocks(const qd_model *m);
QD_EXPORT const qd_param_block *qd_model_block(const qd_model *m, size_t i);

/* Quantum cost so far: summed over the model's quantum layers. */
QD_EXPORT void qd_model_quantum_stats(const qd_model *m, qd_sim_stats *out);

/* Layer table: name, type, output shape, parameter count (malloc'd text). */
QD_EXPORT char *qd_model_describe(const qd_model *m);
/* Circuits of the quantum layers, as qd_circuit_describe prints them. */
QD_EXPORT char *qd_model_describe_circuits(const qd_model *m);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_MODEL_H */
