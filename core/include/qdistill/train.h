/*
 * qdistill/train.h — optimisers over flat parameter vectors, and plain
 * mini-batch training / evaluation of a model on a data set.
 *
 * The optimisers are small value objects (init / step / free) so that
 * distillers can reuse them on any flat vector (synthetic images, learning
 * rates). Their update rules are PyTorch's (torch.optim.SGD with dampening 0
 * and nesterov off; torch.optim.Adam, L2 weight decay added to the gradient).
 */
#ifndef QDISTILL_TRAIN_H
#define QDISTILL_TRAIN_H

#include "common.h"
#include "config.h"
#include "data.h"
#include "model.h"
#include "rng.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- optimisers ---- */

typedef struct qd_sgd {
    size_t n;
    double momentum;         /* 0 = plain SGD */
    double weight_decay;     /* L2: grad += weight_decay * params */
    double *velocity;        /* n entries when momentum > 0 */
    uint64_t steps;
} qd_sgd;

QD_EXPORT int qd_sgd_init(qd_sgd *o, size_t n, double momentum,
                          double weight_decay, qd_error *err);
/* params -= lr * (momentum buffer of grad + weight_decay * params). */
QD_EXPORT void qd_sgd_step(qd_sgd *o, double *params, const double *grad,
                           double lr);
QD_EXPORT void qd_sgd_reset(qd_sgd *o);
QD_EXPORT void qd_sgd_free(qd_sgd *o);

typedef struct qd_adam {
    size_t n;
    double beta1, beta2, eps;
    double weight_decay;
    uint64_t t;              /* steps taken (bias correction) */
    double *m, *v;           /* first and second moments, n entries each */
} qd_adam;

/* PyTorch defaults: beta1 0.9, beta2 0.999, eps 1e-8. */
QD_EXPORT int qd_adam_init(qd_adam *o, size_t n, double beta1, double beta2,
                           double eps, double weight_decay, qd_error *err);
QD_EXPORT void qd_adam_step(qd_adam *o, double *params, const double *grad,
                            double lr);
QD_EXPORT void qd_adam_reset(qd_adam *o);   /* zero moments, t = 0 */
QD_EXPORT void qd_adam_free(qd_adam *o);

/* Scale grad so its Euclidean norm is at most max_norm (as
 * torch.nn.utils.clip_grad_norm_); returns the norm before clipping.
 * max_norm <= 0 only measures. */
QD_EXPORT double qd_clip_grad_norm(double *grad, size_t n, double max_norm);

/* ---- training ---- */

typedef enum qd_optimizer_kind {
    QD_OPT_SGD = 0,
    QD_OPT_ADAM = 1
} qd_optimizer_kind;

/* The `train` section. Keys the node lacks take the defaults of
 * qd_train_schema() (manifest.h): optimizer sgd, lr 0.01, momentum 0.9,
 * weight_decay 0, epochs 10, batch_size 64, lr_decay_every 0 (off),
 * lr_decay_factor 0.5, clip_grad 0 (off), eval_batch_size 1000,
 * save_trajectory false. */
typedef struct qd_train_config {
    int optimizer;               /* qd_optimizer_kind */
    double lr;
    double momentum;             /* sgd: momentum; adam: beta1 */
    double weight_decay;
    size_t epochs, batch_size;
    size_t lr_decay_every;       /* epochs; lr *= factor every that many */
    double lr_decay_factor;
    double clip_grad;            /* global gradient norm bound, 0 = off */
    size_t eval_batch_size;
    int save_trajectory;         /* record the parameters at the start and
                                    after every epoch (an expert trajectory
                                    for trajectory matching) into
                                    qd_train_result.trajectory */
} qd_train_config;

QD_EXPORT void qd_train_config_default(qd_train_config *c);
/* Read a `train` mapping (NULL = all defaults); values are range-checked
 * with "file:line:col" messages. Keys it does not know are ignored (the
 * manifest validator reports them). */
QD_EXPORT int qd_train_config_read(const qd_node *train, qd_train_config *c,
                                   qd_error *err);

/* Progress report: after every batch (end_of_epoch = 0; loss and acc of
 * that batch) and after every epoch (end_of_epoch = 1; loss and acc are the
 * epoch's training means, test_acc the test accuracy or NaN without a test
 * set). Return non-zero to stop training (qd_train then returns
 * QD_ERR_INTERRUPTED). */
typedef struct qd_train_progress {
    size_t epoch, epochs;        /* epoch counts from 0 */
    size_t batch, n_batches;     /* batch counts from 0 */
    double loss, acc;
    double test_acc;
    double lr;
    int end_of_epoch;
} qd_train_progress;

typedef int (*qd_train_progress_fn)(const qd_train_progress *p, void *user);

typedef struct qd_train_result {
    size_t epochs_done;
    double final_train_loss;     /* mean loss over the last epoch */
    double final_train_acc;      /* training accuracy over the last epoch
                                    (running, as the batches went by) */
    double *test_acc;            /* per epoch (malloc'd, epochs entries;
                                    NULL without a test set) */
    double *trajectory;          /* cfg->save_trajectory: (epochs_done + 1)
                                    x n_params, row e = the parameters after
                                    e epochs (row 0 the initial ones);
                                    malloc'd, else NULL */
} qd_train_result;

QD_EXPORT void qd_train_result_free(qd_train_result *r);

/* Mini-batch training of params in place (PyTorch DataLoader order: shuffle
 * with rng every epoch, last partial batch kept). Dropout is on while
 * training and off for evaluation. Fails with QD_ERR_NUMERIC naming the
 * parameter block (layer) when a loss or gradient goes non-finite, and with
 * QD_ERR_INTERRUPTED when the model's stop flag is raised or progress asks
 * to stop. test, progress and res may be NULL. */
QD_EXPORT int qd_train_run(qd_model *m, double *params,
                           const qd_dataset *train, const qd_dataset *test,
                           const qd_train_config *cfg, qd_rng *rng,
                           qd_train_progress_fn progress, void *user,
                           qd_train_result *res, qd_error *err);

/* The same, configured by a `train` mapping (see qd_train_config_read). */
QD_EXPORT int qd_train(qd_model *m, double *params, const qd_dataset *train,
                       const qd_dataset *test, const qd_node *train_cfg,
                       qd_rng *rng, qd_train_progress_fn progress, void *user,
                       qd_train_result *res, qd_error *err);

/* Fraction of set classified correctly (argmax of the logits), evaluated in
 * batches of batch_size (0 = 1000). */
QD_EXPORT int qd_model_accuracy(qd_model *m, const double *params,
                                const qd_dataset *set, size_t batch_size,
                                double *acc, qd_error *err);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_TRAIN_H */
