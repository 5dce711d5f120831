/*
 * qdistill/grad_match.h — the gradient-matching objective of dataset
 * condensation (Zhao, Mopuri & Bilen 2021) and its gradient with respect to
 * the synthetic images.
 *
 * For one class: g_real = grad_w CE(A_s(x_real); w) (the target, constant in
 * the images), g_syn = grad_w CE(A_s(x_syn); w), and the matching loss
 * D(g_syn, g_real). A_s is an optional siamese augmentation with seed s
 * (qdistill/augment.h), applied to both batches with the same seed. The
 * image gradient is
 *     dD/dx_syn = A_s^T  d/dx (v . grad_w CE)(A_s x_syn),  v = dD/dg_syn,
 * the second factor by qd_fd_second_order (central differences of
 * first-order gradients with the ReLU / max-pool pieces frozen), so any
 * model with a first-order backward can be matched.
 *
 * Distances (their match_loss):
 *   layerwise  sum over parameter blocks of sum over output rows of
 *              1 - <a_r, b_r> / (|a_r| |b_r| + 1e-6)  (their `distance_wb`).
 *              conv2d / linear weights: one row per output channel / unit
 *              (the row count is the layer's bias block size; a weight
 *              block without bias takes the layer's output size when that
 *              divides it, else is one row); quantum `circuit` and
 *              `observable` blocks: one row each; one-dimensional blocks
 *              (bias, mix alpha) contribute 0, as 1-D tensors do there.
 *   mse        |g_syn - g_real|^2 over the whole parameter vector.
 *   cosine     1 - <g_syn, g_real> / (|g_syn| |g_real| + 1e-6), whole vector.
 */
#ifndef QDISTILL_GRAD_MATCH_H
#define QDISTILL_GRAD_MATCH_H

#include "augment.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qd_gm_distance {
    QD_GM_LAYERWISE = 0,
    QD_GM_MSE = 1,
    QD_GM_COSINE = 2
} qd_gm_distance;

/* The 1e-6 the cosine denominators carry (as the reference code). */
#define QD_GM_COS_EPS 1e-6

typedef struct qd_grad_match qd_grad_match;

/* Workspace for matching on model m (borrowed, must outlive the object). */
QD_EXPORT int qd_grad_match_create(qd_model *m, int distance,
                                   qd_grad_match **out, qd_error *err);
QD_EXPORT void qd_grad_match_destroy(qd_grad_match *g);

/* Set the target g_real = grad_w CE(A_seed(x); w) of a batch of n real
 * images (aug NULL or identity: no augmentation). Also returns the batch's
 * CE in *loss (may be NULL). */
QD_EXPORT int qd_grad_match_target(qd_grad_match *g, const double *w, size_t n,
                                   const double *x, const int32_t *y,
                                   qd_augment *aug, uint64_t seed,
                                   double *loss, qd_error *err);

/* Matching loss D(grad_w CE(A_seed(x); w), target) of n synthetic images in
 * *dist, and dD/dx (n x input size, overwritten) when g_x is non-NULL.
 * eps_rel: finite-difference step of qd_fd_second_order (0 = its default).
 * Fails with QD_ERR_NUMERIC when the loss or the gradient is not finite. */
QD_EXPORT int qd_grad_match_loss(qd_grad_match *g, const double *w, size_t n,
                                 const double *x, const int32_t *y,
                                 qd_augment *aug, uint64_t seed, double eps_rel,
                                 double *dist, double *g_x, qd_error *err);

/* D(a, b) between two gradient vectors in the model's parameter layout, and
 * dD/da into d_a (may be NULL). */
QD_EXPORT double qd_grad_match_distance(const qd_grad_match *g, const double *a,
                                        const double *b, double *d_a);

/* Rows the layerwise distance splits parameter block i into (0: the block
 * is left out). */
QD_EXPORT size_t qd_grad_match_block_rows(const qd_grad_match *g, size_t i);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_GRAD_MATCH_H */
