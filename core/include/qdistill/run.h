/*
 * qdistill/run.h — executing an experiment into a run directory.
 *
 * Phases, each resumable from the run directory's checkpoint.qdc:
 *
 *   distill   when the manifest has `distill:` — outer iterations of the
 *             distiller plugin, metrics.csv (one row per iteration),
 *             checkpoints every `checkpoint_every` iterations (and on
 *             SIGINT/SIGTERM), the best set by validation accuracy kept;
 *             then synthetic_{images,labels,lrs}.npy, synthetic.json (step
 *             structure, init mode, manifest directory) and images.png;
 *   evaluate  the protocol of evaluate.h (distilled set and baselines);
 *   train     when the manifest has `train:` and no `distill:` — full-data
 *             training (the reference row of results tables).
 *
 * result.json is written last. Re-running on the same run directory skips
 * finished phases and continues an interrupted one from its checkpoint; with
 * the same seed and thread count the result is bit-for-bit the one an
 * uninterrupted run produces.
 */
#ifndef QDISTILL_RUN_H
#define QDISTILL_RUN_H

#include "manifest.h"
#include "rundir.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qd_run_opts {
    volatile int *stop;      /* set by SIGINT/SIGTERM: checkpoint and stop */
    int threads;             /* 0 = the manifest's */
    int train_only;          /* run the `train` phase even when the manifest
                                also distils (qdistill train) */
} qd_run_opts;

/* Returns QD_OK, QD_ERR_INTERRUPTED (checkpoint written; re-run resumes), or
 * the failure (err says what and where). */
QD_EXPORT int qd_run_execute(const qd_manifest *m, const qd_registry *reg,
                             qd_rundir *rd, const qd_run_opts *opts,
                             qd_error *err);

/* `qdistill evaluate`: evaluate the synthetic set of a distilled run
 * directory again with the evaluation protocol (the code path of `run`),
 * under m = the run's resolved manifest, possibly with other `evaluate.*`
 * settings. Reads synthetic_{images,labels,lrs}.npy (validated against the
 * model and data set) and synthetic.json (step structure, init mode), writes
 * the report to rd/name (a file name ending in .json) atomically; result.json
 * is not touched. Resumable: progress is checkpointed in rd/<name stem>.qdc
 * (used only by the same settings), removed once the report is written. */
QD_EXPORT int qd_run_evaluate(const qd_manifest *m, const qd_registry *reg,
                              qd_rundir *rd, const char *name,
                              const qd_run_opts *opts, qd_error *err);

/* Core keys of the `distill` section (besides the distiller plugin's own). */
QD_EXPORT const qd_param *qd_distill_core_schema(void);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_RUN_H */
