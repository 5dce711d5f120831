/*
 * qdistill/evaluate.h — the evaluation protocol for synthetic sets.
 *
 * A synthetic set is judged by training fresh models on it and measuring
 * test accuracy, next to baselines measured with the same protocol:
 *
 *   untrained    the initial model(s), no training;
 *   distilled    N models trained on the synthetic set: replaying its
 *                learned inner steps (w <- w - lr_t grad, t = 0..T-1) when
 *                it has learned learning rates, else the `evaluate` recipe;
 *   random real  N models trained the same way on a class-stratified random
 *                subset of the real training set of the same size (a new
 *                subset per model), with one constant learning rate chosen
 *                from `lr_grid` by accuracy on the held-out validation split
 *                (never on the test set);
 *   full data    the test accuracy of a full-data training run
 *                (`qdistill train`), read from its result.json when the
 *                manifest's evaluate.full_data names one.
 *
 * `init: fixed` uses the one fixed initialisation for every model (the
 * setting the set was distilled for: then N models coincide unless training
 * is stochastic); `init: random` draws model i's initialisation from the
 * stream "evaluate.init.<i>", so results do not depend on evaluation order
 * and an interrupted evaluation resumes exactly.
 */
#ifndef QDISTILL_EVALUATE_H
#define QDISTILL_EVALUATE_H

#include "distill.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qd_eval_opts {
    size_t models;            /* N */
    int init_mode;            /* qd_init_mode */
    const double *init_params;/* the fixed initialisation */
    uint64_t seed;            /* manifest seed (per-model streams) */
    size_t batch_size;        /* test-time batch */
    const double *lr_grid;    /* candidate constant lrs for the real baseline */
    size_t n_lr_grid;
    size_t tune_models;       /* models per lr candidate when tuning */
    /* recipe for sets without learned lrs: minibatch SGD */
    size_t recipe_epochs;
    size_t recipe_batch;
    volatile int *stop;
} qd_eval_opts;

/* Initial parameters of evaluation model i (fixed or from its stream). */
QD_EXPORT int qd_eval_init(qd_model *m, const qd_eval_opts *o, size_t i,
                           double *params, qd_error *err);

/* Train params in place on a synthetic set: replay its learned steps, or the
 * recipe when it has none (lr is then the recipe's learning rate; ignored
 * otherwise). */
QD_EXPORT int qd_eval_train(qd_model *m, const qd_synset *s, const qd_eval_opts *o,
                            double lr, double *params, qd_error *err);

/* The real-subset twin of s for model i: same shape and step structure,
 * class-stratified real images drawn from the stream
 * "evaluate.subset.<i>"; lrs filled with `lr` (T entries). */
QD_EXPORT int qd_eval_real_subset(const qd_synset *s, const qd_dataset *train,
                                  const qd_eval_opts *o, size_t i, double lr,
                                  qd_synset *out, qd_error *err);

/* Pick the constant lr for the real-subset baseline by mean validation
 * accuracy over o->tune_models models per candidate. */
QD_EXPORT int qd_eval_tune_lr(qd_model *m, const qd_synset *s,
                              const qd_dataset *train, const qd_dataset *val,
                              const qd_eval_opts *o, double *best_lr,
                              double *best_val_acc, qd_error *err);

/* The constant lr a set without learned step sizes (n_lrs == 0: selection
 * and matching methods) is trained at, picked from o->lr_grid by mean
 * validation accuracy of `models` models with init indices first,
 * first + 1, ... (the same rule as the real-subset baseline, so both sides
 * of the comparison get a tuned lr). */
QD_EXPORT int qd_eval_tune_set_lr(qd_model *m, const qd_synset *s,
                                  const qd_dataset *val, const qd_eval_opts *o,
                                  size_t first, size_t models, double *best_lr,
                                  double *best_val_acc, qd_error *err);

/* Mean and (sample) standard deviation. */
QD_EXPORT void qd_mean_std(const double *v, size_t n, double *mean, double *std);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_EVALUATE_H */
