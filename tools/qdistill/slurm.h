/* Slurm job arrays for qdistill sweep: the batch script (one array task per
 * grid point, each running `qdistill sweep ... --task $SLURM_ARRAY_TASK_ID`)
 * and its submission with sbatch. */
#ifndef QDISTILL_CLI_SLURM_H
#define QDISTILL_CLI_SLURM_H

#include <stddef.h>

#include "qdistill/common.h"

typedef struct slurm_opts {
    const char *partition;     /* NULL: the cluster's default */
    const char *time;          /* NULL: the partition's default */
    const char *mem;           /* NULL: the cluster's default */
    int cpus;                  /* per task (>= 1); also OMP_NUM_THREADS */
    int max_running;           /* array throttle "%N"; 0 = none */
    const char *const *extra;  /* further "#SBATCH" arguments, verbatim */
    size_t n_extra;
} slurm_opts;

typedef struct slurm_job {
    const char *dir;           /* the sweep directory (absolute) */
    const char *name;          /* the job's name in the queue */
    const char *exe;           /* qdistill (absolute) */
    const char *workdir;       /* where the tasks start (absolute) */
    const char *plugin_path;   /* QDISTILL_PLUGIN_PATH for the tasks; NULL: not set */
    const char *const *args;   /* qdistill arguments before --out/--task */
    size_t n_args;
    const size_t *tasks;       /* grid points to run, ascending */
    size_t n_tasks;
} slurm_job;

/* Reject option values that would break the script (empty, newlines,
 * quotes...); msg says which. Returns 0 when fine. */
int slurm_check_opts(const slurm_opts *o, char *msg, size_t msg_len);

/* "0-3,5,7-9" (ranges of consecutive indices), "%N" appended when
 * max_running > 0. malloc'd. */
char *slurm_array_spec(const size_t *idx, size_t n, int max_running);

/* POSIX-shell single-quoted form of s. malloc'd. */
char *slurm_shell_quote(const char *s);

/* Write DIR/slurm/sweep.sbatch atomically; *path is malloc'd. */
int slurm_write_script(const slurm_job *j, const slurm_opts *o, char **path, qd_error *err);

/* Run `sbatch --parsable SCRIPT`. Returns 0 with the job id in *job_id
 * (malloc'd); otherwise -1 with what went wrong (sbatch missing, its exit
 * status and its stderr) in msg. */
int slurm_submit(const char *script, char **job_id, char *msg, size_t msg_len);

#endif
