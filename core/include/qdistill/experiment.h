/*
 * qdistill/experiment.h — a validated manifest turned into live objects:
 * the data sets and the model, ready for training, distillation or
 * evaluation. Every command that does work (run, train, evaluate,
 * describe-model, sweep tasks) opens one.
 */
#ifndef QDISTILL_EXPERIMENT_H
#define QDISTILL_EXPERIMENT_H

#include "dataload.h"
#include "manifest.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qd_experiment {
    const qd_manifest *manifest;   /* borrowed */
    const qd_registry *reg;        /* borrowed */
    uint64_t seed;
    int threads;                   /* resolved (never 0) */
    qd_data_bundle data;           /* empty when opened without data */
    size_t channels, height, width, classes;
    qd_model *model;
    volatile int *stop;            /* SIGINT/SIGTERM flag, may be NULL */
} qd_experiment;

typedef struct qd_experiment_opts {
    int load_data;                 /* 0: only the shape (see below) */
    /* Input shape when not loading data; 0 = take it from the data. */
    size_t channels, height, width, classes;
    int threads;                   /* 0 = the manifest's `threads` */
    volatile int *stop;
} qd_experiment_opts;

/* Load data (if asked), build the model. Applies the thread count to OpenMP
 * and OpenBLAS. On failure x is left closed and err says what failed. */
QD_EXPORT int qd_experiment_open(qd_experiment *x, const qd_manifest *m,
                                 const qd_registry *reg,
                                 const qd_experiment_opts *opts, qd_error *err);
QD_EXPORT void qd_experiment_close(qd_experiment *x);

/* Set OpenMP and OpenBLAS to `threads` (0 = all online CPUs); returns the
 * number applied. */
QD_EXPORT int qd_set_threads(int threads);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_EXPERIMENT_H */
