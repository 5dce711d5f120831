/* qdistill sweep: one `qdistill run` per point of a grid of overrides.
 *
 * Every grid point is validated before any job starts. Each job is an
 * ordinary run directory SWEEP_DIR/<name>, made by a `qdistill run`
 * subprocess (posix_spawn of /proc/self/exe), so a crashing job cannot take
 * the others down and resuming is the run directory's own business.
 *
 * Locks (flock; they follow the open file, so the jobs inherit them):
 *   SWEEP_DIR/.lock       a local sweep holds it exclusively for its
 *                         lifetime, so a second sweep into the same
 *                         directory waits while jobs of a killed one are
 *                         still running; `--task` processes (Slurm array
 *                         tasks, many at once) hold it shared;
 *   SWEEP_DIR/.meta.lock  held exclusively, briefly, around checking and
 *                         writing sweep.yaml, which concurrent tasks and
 *                         submissions may all try to create;
 *   logs/<job>.lock       a --task holds it while it runs its job, so a
 *                         re-submitted array never runs a point twice at once.
 *
 * --slurm writes SWEEP_DIR/slurm/sweep.sbatch, a job array with one task per
 * unfinished grid point, and submits it (slurm.c). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "grid.h"
#include "qdistill/fsutil.h"
#include "qdistill/log.h"
#include "qdistill/progress.h"
#include "slurm.h"

extern char **environ;

enum { JOB_PENDING, JOB_RUNNING, JOB_DONE, JOB_SKIPPED, JOB_FAILED, JOB_STOPPED };

typedef struct job {
    char *name;
    char *dir;
    char *log;
    char **ovr;    /* fixed overrides, then one per grid key */
    size_t n_ovr;
    int threads;   /* the manifest's `threads` (0 = unset) */
    int state;
    int status;    /* wait status of a finished subprocess */
    pid_t pid;
    int signalled; /* we asked it to stop */
    struct timespec t0;
} job;

typedef struct sweep {
    char *manifest;   /* absolute path */
    char **fixed;
    size_t n_fixed;
    grid g;
    job *jobs;
    size_t n_jobs;
    size_t lo, hi;    /* the jobs this process runs: all, or one (--task) */
    int task;         /* --task: shared locks, a lock per job */
    char *dir;
} sweep;

static void sweep_free(sweep *s)
{
    for (size_t i = 0; i < s->n_jobs; ++i) {
        for (size_t k = 0; k < s->jobs[i].n_ovr; ++k)
            free(s->jobs[i].ovr[k]);
        free(s->jobs[i].ovr);
        free(s->jobs[i].name);
        free(s->jobs[i].dir);
        free(s->jobs[i].log);
    }
    free(s->jobs);
    grid_free(&s->g);
    free(s->manifest);
    free(s->dir);
}

static char *path_join(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", a, b);
    return p;
}

static int file_exists(const char *dir, const char *name)
{
    char *p = path_join(dir, name);
    struct stat st;
    int r = p && stat(p, &st) == 0;
    free(p);
    return r;
}

/* ---- the job list ---------------------------------------------------- */

/* Order overrides by their key path only ("distill" before "distill.x";
 * the value never decides). */
static int cmp_override_key(const void *a, const void *b)
{
    const char *x = *(char *const *)a, *y = *(char *const *)b;
    size_t lx = strcspn(x, "="), ly = strcspn(y, "=");
    int c = strncmp(x, y, lx < ly ? lx : ly);
    return c ? c : (lx > ly) - (lx < ly);
}

static int make_jobs(sweep *s)
{
    size_t n = 1;
    for (size_t k = 0; k < s->g.n; ++k) {
        if (s->g.keys[k].n && n > SIZE_MAX / s->g.keys[k].n / 2)
            return -1;
        n *= s->g.keys[k].n;
    }
    if (n > 100000) {
        fprintf(stderr, "qdistill sweep: the grid has %zu points; that is not a sweep to start "
                        "by accident (limit 100000)\n", n);
        return -1;
    }
    s->jobs = calloc(n, sizeof *s->jobs);
    if (!s->jobs)
        return -1;
    s->n_jobs = n;
    size_t *idx = calloc(s->g.n + 1, sizeof *idx);
    const char **keys = calloc(s->g.n + 1, sizeof *keys), **vals = calloc(s->g.n + 1, sizeof *vals);
    const char **names = calloc(s->g.n + 1, sizeof *names);
    int rc = idx && keys && vals && names ? 0 : -1;
    for (size_t j = 0; j < n && rc == 0; ++j) {
        job *jb = &s->jobs[j];
        jb->ovr = calloc(s->n_fixed + s->g.n, sizeof *jb->ovr);
        if (!jb->ovr) {
            rc = -1;
            break;
        }
        for (size_t k = 0; k < s->n_fixed; ++k)
            if (!(jb->ovr[jb->n_ovr++] = strdup(s->fixed[k])))
                rc = -1;
        for (size_t k = 0; k < s->g.n; ++k) {
            keys[k] = s->g.keys[k].key;
            vals[k] = s->g.keys[k].vals[idx[k]];
            names[k] = grid_label(&s->g.keys[k], idx[k]);
            char *o = malloc(strlen(keys[k]) + strlen(vals[k]) + 2);
            if (!o) {
                rc = -1;
                break;
            }
            sprintf(o, "%s=%s", keys[k], vals[k]);
            jb->ovr[jb->n_ovr++] = o;
        }
        /* parents before children whatever their origin: a whole section
         * (distill={...}) must not wipe a nested key (distill.x=...) given
         * on the command line or in the grid */
        qsort(jb->ovr, jb->n_ovr, sizeof *jb->ovr, cmp_override_key);
        jb->name = grid_job_name(keys, names, s->g.n);
        if (!jb->name)
            rc = -1;
        /* odometer: the last key varies fastest */
        for (size_t k = s->g.n; k-- > 0;) {
            if (++idx[k] < s->g.keys[k].n)
                break;
            idx[k] = 0;
        }
    }
    free(idx);
    free(keys);
    free(vals);
    free(names);
    return rc;
}

/* Validate every grid point; print each distinct problem once. */
static int validate_jobs(cli *c, sweep *s, char **name_out)
{
    char **msgs = NULL;
    size_t n_msgs = 0, bad_jobs = 0;
    for (size_t j = 0; j < s->n_jobs; ++j) {
        job *jb = &s->jobs[j];
        for (size_t i = 0; i < j; ++i)
            if (strcmp(s->jobs[i].name, jb->name) == 0) {
                fprintf(stderr, "qdistill sweep: jobs '%s' and '%s' get the same directory name "
                                "'%s'; make the values differ in letters or digits\n",
                        s->jobs[i].ovr[s->n_fixed], jb->ovr[s->n_fixed], jb->name);
                ++bad_jobs;
            }
        qd_error err;
        qd_error_clear(&err);
        qd_manifest *m = NULL;
        char *first = NULL;
        if (qd_manifest_load(s->manifest, (const char *const *)jb->ovr, jb->n_ovr, &m, &err) !=
            QD_OK) {
            first = strdup(err.msg);
            char **nm = realloc(msgs, (n_msgs + 1) * sizeof *nm);
            if (nm && first) {
                msgs = nm;
                int seen = 0;
                for (size_t i = 0; i < n_msgs; ++i)
                    seen |= strcmp(msgs[i], first) == 0;
                if (!seen) {
                    fprintf(stderr, "%s  [job %s]\n", first, jb->name);
                    msgs[n_msgs++] = first;
                    first = NULL;
                }
            } else if (nm) {
                msgs = nm;
            }
            free(first);
            ++bad_jobs;
            continue;
        }
        qd_diags d = {0};
        if (qd_manifest_validate(m, c->reg, &d) > 0) {
            ++bad_jobs;
            for (size_t i = 0; i < d.n; ++i) {
                int seen = 0;
                for (size_t k = 0; k < n_msgs; ++k)
                    seen |= strcmp(msgs[k], d.msgs[i]) == 0;
                char **nm = seen ? NULL : realloc(msgs, (n_msgs + 1) * sizeof *nm);
                if (nm) {
                    msgs = nm;
                    if ((msgs[n_msgs] = strdup(d.msgs[i]))) {
                        fprintf(stderr, "%s  [job %s]\n", d.msgs[i], jb->name);
                        ++n_msgs;
                    }
                }
            }
        } else {
            jb->threads = qd_manifest_threads(m);
            if (name_out && !*name_out)
                *name_out = strdup(qd_manifest_name(m));
        }
        qd_diags_free(&d);
        qd_manifest_destroy(m);
    }
    for (size_t i = 0; i < n_msgs; ++i)
        free(msgs[i]);
    free(msgs);
    if (bad_jobs) {
        fprintf(stderr, "qdistill sweep: %zu of %zu grid point%s invalid; nothing was started\n",
                bad_jobs, s->n_jobs, s->n_jobs == 1 ? " is" : "s are");
        return EXIT_USAGE;
    }
    return EXIT_OK;
}

/* ---- sweep.yaml ------------------------------------------------------ */

static void yaml_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; ++s) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\x%02x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

static void yaml_list(FILE *f, char *const *v, size_t n)
{
    fputc('[', f);
    for (size_t i = 0; i < n; ++i) {
        if (i)
            fputs(", ", f);
        yaml_str(f, v[i]);
    }
    fputc(']', f);
}

static int write_sweep_yaml(const sweep *s, qd_error *err)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    fputs("# qdistill sweep: one run directory per grid point (see docs/sweeps.md).\n"
          "# Re-running the same sweep into this directory skips finished jobs and\n"
          "# resumes interrupted ones; a different sweep is refused.\n",
          f);
    fputs("manifest: ", f);
    yaml_str(f, s->manifest);
    fputs("\noverrides: ", f);
    yaml_list(f, s->fixed, s->n_fixed);
    fputs("\ngrid:", f);
    if (s->g.n == 0)
        fputs(" {}", f);
    for (size_t k = 0; k < s->g.n; ++k) {
        fputs("\n  ", f);
        yaml_str(f, s->g.keys[k].key);
        fputs(": ", f);
        yaml_list(f, s->g.keys[k].vals, s->g.keys[k].n);
    }
    fputs("\njobs:\n", f);
    for (size_t j = 0; j < s->n_jobs; ++j) {
        fputs("  - name: ", f);
        yaml_str(f, s->jobs[j].name);
        fputs("\n    overrides: ", f);
        yaml_list(f, s->jobs[j].ovr, s->jobs[j].n_ovr);
        fputc('\n', f);
    }
    if (fclose(f) != 0) {
        free(text);
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    }
    char *path = path_join(s->dir, "sweep.yaml");
    int rc = path ? qd_write_atomic(path, text, len, err)
                  : qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    free(path);
    free(text);
    return rc;
}

/* Same strings, in any order. */
static int same_set(const qd_node *seq, char *const *v, size_t n)
{
    if (qd_node_kind(seq) != QD_NODE_SEQ || qd_node_len(seq) != n)
        return 0;
    for (size_t i = 0; i < n; ++i) {
        int found = 0;
        for (size_t k = 0; k < n && !found; ++k)
            found = qd_node_str(qd_node_at(seq, k)) &&
                    strcmp(qd_node_str(qd_node_at(seq, k)), v[i]) == 0;
        if (!found)
            return 0;
    }
    return 1;
}

/* A directory that already holds sweep.yaml must hold this sweep: the same
 * manifest, the same fixed overrides and the same grid (orders aside).
 * *existed tells whether there was one (it then stays as first written, so
 * that its job order, which tables follow, does not change). */
static int check_same_sweep(const sweep *s, int *existed)
{
    char *path = path_join(s->dir, "sweep.yaml");
    struct stat st;
    *existed = 0;
    if (!path || stat(path, &st) != 0) {
        free(path);
        return EXIT_OK;
    }
    *existed = 1;
    qd_config *cfg = NULL;
    qd_error err;
    if (qd_config_load(path, NULL, &cfg, &err) != QD_OK) {
        fprintf(stderr, "qdistill sweep: %s\n", err.msg);
        free(path);
        return EXIT_USAGE;
    }
    const qd_node *r = qd_config_root(cfg), *g = qd_node_get(r, "grid");
    const char *m = qd_node_str(qd_node_get(r, "manifest"));
    const char *why = NULL;
    if (!m || strcmp(m, s->manifest) != 0)
        why = "another manifest";
    else if (!same_set(qd_node_get(r, "overrides"), s->fixed, s->n_fixed))
        why = "other fixed overrides";
    else if (qd_node_len(g) != s->g.n)
        why = "another grid";
    for (size_t k = 0; !why && k < s->g.n; ++k)
        if (!same_set(qd_node_get(g, s->g.keys[k].key), s->g.keys[k].vals, s->g.keys[k].n))
            why = "another grid";
    if (why) {
        fprintf(stderr,
                "qdistill sweep: %s holds a different sweep (%s; see its sweep.yaml); "
                "refusing to mix them — choose another --out directory\n",
                s->dir, why);
    }
    qd_config_destroy(cfg);
    free(path);
    return why ? EXIT_USAGE : EXIT_OK;
}

/* ---- running --------------------------------------------------------- */

static double elapsed(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + 1e-9 * (double)(t.tv_nsec - t0->tv_nsec);
}

static int spawn_job(cli *c, const sweep *s, job *jb, int threads)
{
    char tbuf[16];
    snprintf(tbuf, sizeof tbuf, "%d", threads);
    size_t max = 16 + 2 * c->n_plugin_paths + jb->n_ovr;
    char **argv = calloc(max, sizeof *argv);
    if (!argv)
        return -1;
    size_t a = 0;
    argv[a++] = "qdistill";
    for (size_t i = 0; i < c->n_plugin_paths; ++i) {
        argv[a++] = "--plugin-path";
        argv[a++] = (char *)c->plugin_paths[i];
    }
    if (c->quiet)
        argv[a++] = "--quiet";
    if (c->verbose)
        argv[a++] = "--verbose";
    argv[a++] = "run";
    argv[a++] = s->manifest;
    for (size_t i = 0; i < jb->n_ovr; ++i)
        argv[a++] = jb->ovr[i];
    argv[a++] = "--out";
    argv[a++] = jb->dir;
    argv[a++] = "--threads";
    argv[a++] = tbuf;
    argv[a] = NULL;

    /* a header line per attempt, then the job's own stdout and stderr */
    FILE *lf = fopen(jb->log, "a");
    if (lf) {
        time_t now = time(NULL);
        struct tm tm;
        char ts[32];
        strftime(ts, sizeof ts, "%Y-%m-%d %H:%M:%S", gmtime_r(&now, &tm));
        fprintf(lf, "== %s UTC: qdistill", ts);
        for (size_t i = 1; i < a; ++i)
            fprintf(lf, " %s", argv[i]);
        fputc('\n', lf);
        fclose(lf);
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, jb->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    /* the job must not inherit our signal dispositions' side effects: reset
     * SIGINT/SIGTERM to default so `run` installs its own handler */
    posix_spawnattr_t at;
    posix_spawnattr_init(&at);
    sigset_t def;
    sigemptyset(&def);
    sigaddset(&def, SIGINT);
    sigaddset(&def, SIGTERM);
    posix_spawnattr_setsigdefault(&at, &def);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGDEF);
    int rc = posix_spawn(&jb->pid, "/proc/self/exe", &fa, &at, argv, environ);
    posix_spawnattr_destroy(&at);
    posix_spawn_file_actions_destroy(&fa);
    free(argv);
    if (rc != 0) {
        fprintf(stderr, "qdistill sweep: cannot start job %s: %s\n", jb->name, strerror(rc));
        return -1;
    }
    clock_gettime(CLOCK_MONOTONIC, &jb->t0);
    return 0;
}

static void stop_running(sweep *s, int sig)
{
    for (size_t j = 0; j < s->n_jobs; ++j)
        if (s->jobs[j].state == JOB_RUNNING && !s->jobs[j].signalled) {
            kill(s->jobs[j].pid, sig);
            s->jobs[j].signalled = 1;
        }
}

/* flock path with op (LOCK_EX or LOCK_SH), waiting (and saying so) while
 * someone else holds it. inherit: the jobs keep it (no O_CLOEXEC). Returns
 * the fd, or -1 (message printed; also when stopped while waiting). */
static int lock_file(const char *path, int op, const char *busy, volatile int *stop, int inherit)
{
    int fd = open(path, O_RDWR | O_CREAT | (inherit ? 0 : O_CLOEXEC), 0644);
    if (fd < 0) {
        fprintf(stderr, "qdistill sweep: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (flock(fd, op | LOCK_NB) != 0) {
        if (errno != EWOULDBLOCK) {
            fprintf(stderr, "qdistill sweep: cannot lock %s: %s\n", path, strerror(errno));
            close(fd);
            return -1;
        }
        if (busy)
            qd_log(QD_LOG_INFO, "%s; waiting for it", busy);
        while (flock(fd, op) != 0) {
            if (errno != EINTR || (stop && *stop)) {
                close(fd);
                return -1;
            }
        }
    }
    return fd;
}

/* SWEEP_DIR/.lock: exclusive for a local sweep, shared for --task (see the
 * top of the file). */
static int take_lock(const char *dir, int shared, volatile int *stop)
{
    char *path = path_join(dir, ".lock");
    if (!path)
        return -1;
    char busy[4200];
    snprintf(busy, sizeof busy,
             shared ? "%s is in use by a local sweep (qdistill sweep without --task)"
                    : "%s is in use by another sweep, by the jobs of a killed one, or by "
                      "Slurm array tasks",
             dir);
    int fd = lock_file(path, shared ? LOCK_SH : LOCK_EX, busy, stop, 1);
    free(path);
    return fd;
}

/* CPUs this process may use: a Slurm task's allocation, else the affinity
 * mask (taskset, cgroup cpusets), else the online count. */
static int available_cpus(int task)
{
    const char *e = task ? getenv("SLURM_CPUS_PER_TASK") : NULL;
    if (e && atoi(e) > 0)
        return atoi(e);
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* --task: logs/<job>.lock for the job's lifetime (inherited by the run). */
static int lock_job(const sweep *s, const job *jb, volatile int *stop)
{
    char *logs = path_join(s->dir, "logs");
    char *name = malloc(strlen(jb->name) + 6);
    char *path = logs && name ? (sprintf(name, "%s.lock", jb->name), path_join(logs, name)) : NULL;
    int fd = -1;
    if (path) {
        char busy[600];
        snprintf(busy, sizeof busy, "job %s is being run by another process", jb->name);
        fd = lock_file(path, LOCK_EX, busy, stop, 1);
    }
    free(logs);
    free(name);
    free(path);
    return fd;
}

static void progress_note(qd_progress *prog, size_t running, size_t failed)
{
    if (failed)
        qd_progress_set_note(prog, "%zu running, %zu failed", running, failed);
    else
        qd_progress_set_note(prog, "%zu running", running);
}

static int run_jobs(cli *c, sweep *s, int par, int fail_fast)
{
    int per_job = available_cpus(s->task) / par;
    if (per_job < 1)
        per_job = 1;
    size_t next = s->lo, running = 0, failed = 0, finished = 0, n = s->hi - s->lo;
    int stopping = 0, job_lock = -1;
    qd_progress_opts po = {.unit = "job", .line_every_s = 30};
    qd_progress *prog = qd_progress_begin("sweep", n, 0, &po);
    progress_note(prog, 0, 0);
    for (;;) {
        while (!stopping && running < (size_t)par && next < s->hi) {
            job *jb = &s->jobs[next++];
            if (file_exists(jb->dir, "result.json")) {
                jb->state = JOB_SKIPPED;
                qd_log(QD_LOG_INFO, "[%zu/%zu] %s: finished before, skipped", next, s->n_jobs,
                       jb->name);
                qd_progress_skip(prog, 1);
                ++finished;
                continue;
            }
            if (s->task) {
                /* another task may be on this point (a re-submitted array):
                 * wait for it, then look again */
                if ((job_lock = lock_job(s, jb, c->stop_flag)) < 0) {
                    jb->state = c->stop_flag && *c->stop_flag ? JOB_STOPPED : JOB_FAILED;
                    failed += jb->state == JOB_FAILED;
                    break;
                }
                if (file_exists(jb->dir, "result.json")) {
                    jb->state = JOB_SKIPPED;
                    qd_log(QD_LOG_INFO, "[%zu/%zu] %s: finished by another process, skipped",
                           next, s->n_jobs, jb->name);
                    qd_progress_skip(prog, 1);
                    ++finished;
                    continue;
                }
            }
            int t = jb->threads > 0 && jb->threads < per_job ? jb->threads : per_job;
            if (spawn_job(c, s, jb, t) != 0) {
                jb->state = JOB_FAILED;
                ++failed;
                ++finished;
                qd_progress_update(prog, finished);
                if (fail_fast)
                    stopping = 1;
                continue;
            }
            jb->state = JOB_RUNNING;
            ++running;
            qd_log(QD_LOG_INFO, "[%zu/%zu] %s: started (%d thread%s, log %s)", next, s->n_jobs,
                   jb->name, t, t == 1 ? "" : "s", jb->log);
        }
        progress_note(prog, running, failed);
        qd_progress_tick(prog);
        if (running == 0)
            break;
        int st;
        /* poll, so that the progress line keeps its clock and ETA moving */
        pid_t p = waitpid(-1, &st, WNOHANG);
        if (p == 0 || (p < 0 && errno == EINTR)) {
            if (c->stop_flag && *c->stop_flag && !stopping) {
                /* jobs checkpoint and stop on SIGTERM; re-running resumes */
                qd_log(QD_LOG_WARN, "interrupted: stopping the running jobs");
                stopping = 1;
                stop_running(s, SIGTERM);
            }
            struct timespec ts = {0, 200 * 1000 * 1000};
            nanosleep(&ts, NULL);
            continue;
        }
        if (p < 0) {
            fprintf(stderr, "qdistill sweep: waitpid: %s\n", strerror(errno));
            break;
        }
        job *jb = NULL;
        for (size_t j = s->lo; j < s->hi && !jb; ++j)
            if (s->jobs[j].state == JOB_RUNNING && s->jobs[j].pid == p)
                jb = &s->jobs[j];
        if (!jb)
            continue;
        --running;
        ++finished;
        jb->status = st;
        size_t idx = (size_t)(jb - s->jobs) + 1;
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
            jb->state = JOB_DONE;
            qd_log(QD_LOG_INFO, "[%zu/%zu] %s: done in %.1f s", idx, s->n_jobs, jb->name,
                   elapsed(&jb->t0));
        } else if (jb->signalled) {
            jb->state = JOB_STOPPED;
            --finished;
            qd_log(QD_LOG_INFO, "[%zu/%zu] %s: stopped", idx, s->n_jobs, jb->name);
        } else {
            jb->state = JOB_FAILED;
            ++failed;
            qd_log(QD_LOG_WARN, "[%zu/%zu] %s: failed (see %s)", idx, s->n_jobs, jb->name,
                   jb->log);
            if (fail_fast && !stopping) {
                qd_log(QD_LOG_WARN, "--fail-fast: stopping the other jobs");
                stopping = 1;
                stop_running(s, SIGTERM);
            }
        }
        progress_note(prog, running, failed);
        qd_progress_update(prog, finished);
    }
    qd_progress_end(prog);
    if (job_lock >= 0)
        close(job_lock);
    return (int)failed;
}

static const char *const state_names[] = {"not started", "running", "done",
                                          "skipped (finished before)", "failed", "stopped"};

static void summary(const sweep *s)
{
    if (s->task) {
        const job *jb = &s->jobs[s->lo];
        printf("sweep %s: task %zu (grid point %zu of %zu) %s: %s", s->dir, s->lo, s->lo + 1,
               s->n_jobs, jb->name, state_names[jb->state]);
        if (jb->state == JOB_FAILED && WIFEXITED(jb->status))
            printf(" (exit %d)", WEXITSTATUS(jb->status));
        else if (jb->state == JOB_FAILED && WIFSIGNALED(jb->status))
            printf(" (signal %d)", WTERMSIG(jb->status));
        printf(", log %s\n", jb->log);
        return;
    }
    size_t cnt[JOB_STOPPED + 1] = {0};
    for (size_t j = 0; j < s->n_jobs; ++j)
        ++cnt[s->jobs[j].state];
    size_t not_run = cnt[JOB_PENDING] + cnt[JOB_STOPPED];
    printf("sweep %s: %zu job%s: %zu done, %zu skipped (finished before), %zu failed", s->dir,
           s->n_jobs, s->n_jobs == 1 ? "" : "s", cnt[JOB_DONE], cnt[JOB_SKIPPED],
           cnt[JOB_FAILED]);
    if (not_run)
        printf(", %zu not finished (re-run the sweep to resume)", not_run);
    printf("\n");
    for (size_t j = 0; j < s->n_jobs; ++j) {
        const job *jb = &s->jobs[j];
        if (jb->state != JOB_FAILED)
            continue;
        if (WIFEXITED(jb->status))
            printf("failed: %s (exit %d), log %s\n", jb->name, WEXITSTATUS(jb->status), jb->log);
        else if (WIFSIGNALED(jb->status))
            printf("failed: %s (signal %d), log %s\n", jb->name, WTERMSIG(jb->status), jb->log);
        else
            printf("failed: %s (not started), log %s\n", jb->name, jb->log);
    }
}

static char *default_dir(const char *name)
{
    time_t now = time(NULL);
    struct tm tm;
    char ts[32];
    strftime(ts, sizeof ts, "%Y%m%d-%H%M%S", gmtime_r(&now, &tm));
    size_t n = strlen(name) + strlen(ts) + 16;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "sweeps/%s/%s", name, ts);
    return p;
}

static int usage(void)
{
    fprintf(stderr,
            "usage: qdistill sweep MANIFEST [key=v1,v2 | key=range(a,b[,step]) | key=value ...]\n"
            "           [--out DIR] [-j N] [--fail-fast] [--dry-run]\n"
            "       qdistill sweep MANIFEST ... --slurm [--partition P] [--time T] [--cpus C]\n"
            "           [--mem M] [--sbatch-arg ARG]... [-j N] [--out DIR] [--dry-run]\n"
            "       qdistill sweep MANIFEST ... --out DIR --task I\n");
    return EXIT_USAGE;
}

/* A number argument from lo to hi; -1 (message printed) otherwise. */
static long num_arg(const char *opt, const char *v, long lo, long hi)
{
    char *end;
    errno = 0;
    long x = v && *v ? strtol(v, &end, 10) : 0;
    if (!v || !*v || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "qdistill sweep: %s wants a whole number from %ld to %ld, not '%s'\n", opt,
                lo, hi, v ? v : "");
        return -1;
    }
    return x;
}

/* The value of an option given as "--opt V" or "--opt=V"; NULL when argv[*i]
 * is not opt. A missing value is reported and gives "". */
static const char *opt_value(const char *opt, int argc, char **argv, int *i)
{
    size_t n = strlen(opt);
    const char *a = argv[*i];
    if (strncmp(a, opt, n) != 0)
        return NULL;
    if (a[n] == '=')
        return a + n + 1;
    if (a[n] != '\0')
        return NULL;
    if (*i + 1 < argc)
        return argv[++*i];
    fprintf(stderr, "qdistill sweep: %s needs a value\n", opt);
    return "";
}

/* sweep.yaml under SWEEP_DIR/.meta.lock: concurrent tasks and submissions
 * may all find it missing; one writes it, the others then check it. */
static int sweep_yaml(const sweep *s, volatile int *stop)
{
    char *path = path_join(s->dir, ".meta.lock");
    int fd = path ? lock_file(path, LOCK_EX, NULL, stop, 0) : -1;
    free(path);
    if (fd < 0)
        return EXIT_RUN_FAILED;
    int existed, rc = check_same_sweep(s, &existed);
    qd_error err;
    if (rc == EXIT_OK && !existed && write_sweep_yaml(s, &err) != QD_OK) {
        fprintf(stderr, "qdistill sweep: %s\n", err.msg);
        rc = EXIT_RUN_FAILED;
    }
    close(fd);
    return rc;
}

static int append_dirs(char **out, size_t *len, const char *list)
{
    char *dup = strdup(list), *save = NULL;
    if (!dup)
        return -1;
    for (char *d = strtok_r(dup, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        char *abs = realpath(d, NULL);
        const char *use = abs ? abs : d;
        char *nb = realloc(*out, *len + strlen(use) + 2);
        if (!nb) {
            free(abs);
            free(dup);
            return -1;
        }
        *out = nb;
        *len += (size_t)sprintf(nb + *len, "%s%s", *len ? ":" : "", use);
        free(abs);
    }
    free(dup);
    return 0;
}

/* The effective plugin search path (--plugin-path, then the environment's),
 * every directory absolute, for the array tasks; NULL when there is none
 * (the tasks then search the build tree and the installed directory, as
 * this binary does). */
static char *task_plugin_path(const cli *c)
{
    char *out = NULL;
    size_t len = 0;
    const char *env = getenv("QDISTILL_PLUGIN_PATH");
    for (size_t i = 0; i < c->n_plugin_paths; ++i)
        if (append_dirs(&out, &len, c->plugin_paths[i]) != 0)
            return free(out), NULL;
    if (env && append_dirs(&out, &len, env) != 0)
        return free(out), NULL;
    return out;
}

/* Write the job array for the unfinished points and submit it (unless
 * dry_run). */
static int submit_slurm(cli *c, const sweep *s, const char *name, const slurm_opts *so,
                        char *const *ovr, size_t n_ovr, int dry_run)
{
    int rc = EXIT_RUN_FAILED;
    size_t *todo = calloc(s->n_jobs + 1, sizeof *todo), n_todo = 0;
    const char **args = calloc(n_ovr + 8, sizeof *args);
    char *exe = realpath("/proc/self/exe", NULL), *cwd = getcwd(NULL, 0);
    char *plugins = task_plugin_path(c), *script = NULL, *job_id = NULL;
    if (!todo || !args || !exe || !cwd) {
        fprintf(stderr, "qdistill sweep: %s\n", !exe || !cwd ? strerror(errno) : "out of memory");
        goto out;
    }
    for (size_t j = 0; j < s->n_jobs; ++j)
        if (!file_exists(s->jobs[j].dir, "result.json"))
            todo[n_todo++] = j;
    if (n_todo == 0) {
        printf("sweep %s: all %zu jobs finished; nothing to submit\n", s->dir, s->n_jobs);
        rc = EXIT_OK;
        goto out;
    }
    size_t na = 0;
    if (c->quiet)
        args[na++] = "--quiet";
    if (c->verbose)
        args[na++] = "--verbose";
    args[na++] = "sweep";
    args[na++] = s->manifest;
    for (size_t i = 0; i < n_ovr; ++i)
        args[na++] = ovr[i];
    slurm_job sj = {.dir = s->dir, .name = name, .exe = exe, .workdir = cwd,
                    .plugin_path = plugins, .args = args, .n_args = na, .tasks = todo,
                    .n_tasks = n_todo};
    qd_error err;
    if (slurm_write_script(&sj, so, &script, &err) != QD_OK) {
        fprintf(stderr, "qdistill sweep: %s\n", err.msg);
        rc = err.code == QD_ERR_INVALID ? EXIT_USAGE : EXIT_RUN_FAILED;
        goto out;
    }
    if (dry_run) {
        printf("sweep %s: %zu of %zu jobs to run; job array written (not submitted): %s\n",
               s->dir, n_todo, s->n_jobs, script);
        rc = EXIT_OK;
        goto out;
    }
    char msg[4096];
    if (slurm_submit(script, &job_id, msg, sizeof msg) != 0) {
        fprintf(stderr, "qdistill sweep: %s\n", msg);
        goto out;
    }
    /* a record of the submissions, for squeue/sacct/scancel */
    char *jl = path_join(s->dir, "slurm/jobs.txt");
    FILE *f = jl ? fopen(jl, "a") : NULL;
    if (f) {
        fprintf(f, "%s %zu\n", job_id, n_todo);
        fclose(f);
    }
    free(jl);
    printf("submitted batch job %s: %zu array task%s for %zu of %zu jobs; script %s, output "
           "%s/slurm/task-<index>.out\n",
           job_id, n_todo, n_todo == 1 ? "" : "s", n_todo, s->n_jobs, script, s->dir);
    rc = EXIT_OK;
out:
    free(todo);
    free(args);
    free(exe);
    free(cwd);
    free(plugins);
    free(script);
    free(job_id);
    return rc;
}

int cmd_sweep(cli *c, int argc, char **argv)
{
    char **args = calloc((size_t)argc + 1, sizeof *args), **pos = calloc((size_t)argc + 1, sizeof *pos),
         **ovr = calloc((size_t)argc + 1, sizeof *ovr);
    const char **extra = calloc((size_t)argc + 1, sizeof *extra);
    sweep s = {0};
    const char *out = NULL, *v;
    int par = 1, par_given = 0, fail_fast = 0, dry_run = 0, rc = EXIT_USAGE, lock = -1;
    int slurm = 0, slurm_only = 0;
    long task = -1;
    slurm_opts so = {.cpus = 1};
    char *name = NULL, **msgs = NULL;
    size_t n_msgs = 0;
    qd_config *cfg = NULL;
    if (!args || !pos || !ovr || !extra) {
        rc = EXIT_RUN_FAILED;
        goto done;
    }
    int nargs = 0;
    for (int i = 1; i < argc; ++i) {
        const char *a = argv[i];
        if ((v = opt_value("--out", argc, argv, &i))) {
            if (!*v)
                goto done;
            out = v;
        } else if ((v = opt_value("--jobs", argc, argv, &i)) ||
                   (strcmp(a, "-j") == 0 && (v = i + 1 < argc ? argv[++i] : "")) ||
                   (strncmp(a, "-j", 2) == 0 && a[2] && (v = a + 2))) {
            long x = num_arg("-j", v, 1, 1024);
            if (x < 0)
                goto done;
            par = (int)x;
            par_given = 1;
        } else if (strcmp(a, "--fail-fast") == 0) {
            fail_fast = 1;
        } else if (strcmp(a, "--dry-run") == 0) {
            dry_run = 1;
        } else if (strcmp(a, "--slurm") == 0) {
            slurm = 1;
        } else if ((v = opt_value("--partition", argc, argv, &i))) {
            so.partition = v;
            slurm_only = 1;
        } else if ((v = opt_value("--time", argc, argv, &i))) {
            so.time = v;
            slurm_only = 1;
        } else if ((v = opt_value("--mem", argc, argv, &i))) {
            so.mem = v;
            slurm_only = 1;
        } else if ((v = opt_value("--cpus", argc, argv, &i))) {
            long x = num_arg("--cpus", v, 1, 4096);
            if (x < 0)
                goto done;
            so.cpus = (int)x;
            slurm_only = 1;
        } else if ((v = opt_value("--sbatch-arg", argc, argv, &i))) {
            extra[so.n_extra++] = v;
            slurm_only = 1;
        } else if ((v = opt_value("--task", argc, argv, &i))) {
            if ((task = num_arg("--task", v, 0, 99999)) < 0)
                goto done;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "qdistill sweep: unknown option '%s'\n", a);
            usage();
            goto done;
        } else {
            args[nargs++] = argv[i];
        }
    }
    so.extra = extra;
    if (slurm_only && !slurm) {
        fprintf(stderr, "qdistill sweep: --partition, --time, --cpus, --mem and --sbatch-arg "
                        "go with --slurm\n");
        goto done;
    }
    if (slurm && (task >= 0 || fail_fast)) {
        fprintf(stderr, "qdistill sweep: --slurm cannot go with %s\n",
                task >= 0 ? "--task (the array tasks use it)"
                          : "--fail-fast (array tasks are independent; cancel with scancel)");
        goto done;
    }
    if (task >= 0 && (par_given || fail_fast || !out)) {
        fprintf(stderr, "qdistill sweep: --task runs one grid point into an existing sweep: it "
                        "needs --out DIR, and -j / --fail-fast do not apply\n");
        goto done;
    }
    char smsg[600];
    if (slurm && slurm_check_opts(&so, smsg, sizeof smsg) != 0) {
        fprintf(stderr, "qdistill sweep: %s\n", smsg);
        goto done;
    }
    if (slurm && par_given)
        so.max_running = par;   /* -j N: at most N array tasks at once */
    size_t npos, novr;
    cli_split_overrides(nargs, args, pos, &npos, ovr, &novr);
    if (npos != 1) {
        usage();
        goto done;
    }
    if ((rc = cli_registry(c)) != EXIT_OK)
        goto done;
    rc = EXIT_USAGE;
    s.manifest = realpath(pos[0], NULL);
    if (!s.manifest) {
        fprintf(stderr, "qdistill sweep: %s: %s\n", pos[0], strerror(errno));
        goto done;
    }

    /* the manifest's own grid (read from the file as written) */
    qd_error err;
    if (qd_config_load(s.manifest, NULL, &cfg, &err) != QD_OK) {
        fprintf(stderr, "%s\n", err.msg);
        goto done;
    }
    grid_from_manifest(qd_node_get(qd_config_root(cfg), "sweep"), &s.g, &msgs, &n_msgs);
    for (size_t i = 0; i < n_msgs; ++i)
        fprintf(stderr, "%s\n", msgs[i]);
    size_t n_err = n_msgs;

    /* command-line keys: lists add to / replace the manifest's grid, plain
     * values are fixed overrides (and pin a key the manifest sweeps) */
    s.fixed = calloc(novr + 1, sizeof *s.fixed);
    if (!s.fixed) {
        rc = EXIT_RUN_FAILED;
        goto done;
    }
    for (size_t i = 0; i < novr; ++i) {
        char *path = NULL, *value = NULL;
        if (qd_override_parse(ovr[i], &path, &value, &err) != QD_OK) {
            fprintf(stderr, "<command line>: '%s': %s\n", ovr[i], err.msg);
            ++n_err;
            continue;
        }
        for (size_t k = 0; k < i; ++k) {
            const char *eq = strchr(ovr[k], '=');
            if (eq && (size_t)(eq - ovr[k]) == strlen(path) && strncmp(ovr[k], path, strlen(path)) == 0) {
                fprintf(stderr, "<command line>: '%s' is given twice\n", path);
                ++n_err;
            }
        }
        if (grid_is_list(value)) {
            char **vals = NULL;
            size_t n = 0;
            char msg[600];
            if (grid_expand(value, &vals, &n, msg, sizeof msg) != 0) {
                fprintf(stderr, "<command line>: %s: %s\n", path, msg);
                ++n_err;
                for (size_t k = 0; k < n; ++k)
                    free(vals[k]);
                free(vals);
            } else if (grid_set(&s.g, path, vals, n) != 0) {
                rc = EXIT_RUN_FAILED;
            }
        } else {
            grid_remove(&s.g, path);
            s.fixed[s.n_fixed++] = ovr[i];
        }
        free(path);
        free(value);
    }
    if (n_err) {
        fprintf(stderr, "qdistill sweep: %zu error%s in the grid; nothing was started\n", n_err,
                n_err == 1 ? "" : "s");
        goto done;
    }
    grid_sort(&s.g);
    if (make_jobs(&s) != 0) {
        rc = EXIT_USAGE;
        goto done;
    }
    s.lo = 0;
    s.hi = s.n_jobs;
    if (task >= 0) {
        if ((size_t)task >= s.n_jobs) {
            fprintf(stderr, "qdistill sweep: --task %ld: the grid has %zu point%s (0 to %zu)\n",
                    task, s.n_jobs, s.n_jobs == 1 ? "" : "s", s.n_jobs - 1);
            goto done;
        }
        s.task = 1;
        s.lo = (size_t)task;
        s.hi = s.lo + 1;
    }
    if ((rc = validate_jobs(c, &s, &name)) != EXIT_OK)
        goto done;
    if (dry_run && !slurm) {
        /* every point validated: list the jobs, start nothing */
        for (size_t j = s.lo; j < s.hi; ++j)
            printf("%s\n", s.jobs[j].name);
        goto done;
    }

    rc = EXIT_RUN_FAILED;
    s.dir = out ? strdup(out) : default_dir(name ? name : "sweep");
    if (!s.dir)
        goto done;
    char *logs = path_join(s.dir, "logs");
    int mk = logs ? qd_mkdir_p(logs, &err) : qd_error_set(&err, QD_ERR_NOMEM, "out of memory");
    free(logs);
    if (mk != QD_OK) {
        fprintf(stderr, "qdistill sweep: %s\n", err.msg);
        goto done;
    }
    if (slurm) {
        /* the tasks run elsewhere: every path they see is absolute */
        char *abs = realpath(s.dir, NULL);
        if (!abs) {
            fprintf(stderr, "qdistill sweep: %s: %s\n", s.dir, strerror(errno));
            goto done;
        }
        free(s.dir);
        s.dir = abs;
    }
    for (size_t j = 0; j < s.n_jobs; ++j) {
        logs = path_join(s.dir, "logs");
        char *lname = malloc(strlen(s.jobs[j].name) + 5);
        if (!logs || !lname) {
            free(logs);
            free(lname);
            goto done;
        }
        sprintf(lname, "%s.log", s.jobs[j].name);
        s.jobs[j].dir = path_join(s.dir, s.jobs[j].name);
        s.jobs[j].log = path_join(logs, lname);
        free(logs);
        free(lname);
        if (!s.jobs[j].dir || !s.jobs[j].log)
            goto done;
    }
    if (slurm) {
        if ((rc = sweep_yaml(&s, c->stop_flag)) == EXIT_OK)
            rc = submit_slurm(c, &s, name ? name : "sweep", &so, ovr, novr, dry_run);
        goto done;
    }
    if ((lock = take_lock(s.dir, s.task, c->stop_flag)) < 0)
        goto done;
    if ((rc = sweep_yaml(&s, c->stop_flag)) != EXIT_OK)
        goto done;
    if (s.task)
        qd_log(QD_LOG_INFO, "sweep %s: task %zu (grid point %zu of %zu): %s", s.dir, s.lo,
               s.lo + 1, s.n_jobs, s.jobs[s.lo].name);
    else
        qd_log(QD_LOG_INFO, "sweep %s: %zu job%s, %d at a time", s.dir, s.n_jobs,
               s.n_jobs == 1 ? "" : "s", par);
    int failed = run_jobs(c, &s, par, fail_fast);
    summary(&s);
    int unfinished = 0;
    for (size_t j = s.lo; j < s.hi; ++j)
        unfinished |= s.jobs[j].state != JOB_DONE && s.jobs[j].state != JOB_SKIPPED;
    rc = failed || unfinished ? EXIT_RUN_FAILED : EXIT_OK;
done:
    if (lock >= 0)
        close(lock);
    for (size_t i = 0; msgs && i < n_msgs; ++i)
        free(msgs[i]);
    free(msgs);
    qd_config_destroy(cfg);
    free(name);
    free(s.fixed);   /* the strings belong to argv */
    s.fixed = NULL;
    s.n_fixed = 0;
    sweep_free(&s);
    free(args);
    free(pos);
    free(ovr);
    free(extra);
    return rc;
}
