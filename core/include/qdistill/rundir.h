/*
 * qdistill/rundir.h — run directories.
 *
 * A run directory holds: manifest.yaml (the resolved manifest), overrides.txt
 * (one override per line, as given), log.txt (appended), and whatever the
 * run's phases write (metrics.csv, result.json, synthetic *.npy, images.png,
 * checkpoint.qdc). Every file except the log is written atomically.
 *
 * Opening an existing directory resumes it when its manifest.yaml is the
 * same experiment, and refuses (QD_ERR_INVALID) when it holds a different
 * one: a run never overwrites another experiment's results.
 */
#ifndef QDISTILL_RUNDIR_H
#define QDISTILL_RUNDIR_H

#include <stdio.h>
#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qd_rundir {
    char *path;
    int resumed;      /* 1 when the directory already held this experiment */
    FILE *log;        /* log.txt, attached to qd_log while open */
} qd_rundir;

/* Default location: runs/<name>/<UTC timestamp YYYYmmdd-HHMMSS>. */
QD_EXPORT char *qd_rundir_default_path(const char *name);

/* Create or resume `path` for the resolved manifest text `manifest_yaml`. */
QD_EXPORT int qd_rundir_open(qd_rundir *rd, const char *path,
                             const char *manifest_yaml,
                             const char *const *overrides, size_t n_overrides,
                             qd_error *err);
QD_EXPORT void qd_rundir_close(qd_rundir *rd);

/* path/name in a malloc'd string. */
QD_EXPORT char *qd_rundir_file(const qd_rundir *rd, const char *name);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_RUNDIR_H */
