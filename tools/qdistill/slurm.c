/* Slurm job arrays for qdistill sweep (see slurm.h). */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qdistill/fsutil.h"
#include "slurm.h"

extern char **environ;

/* A value that goes on a "#SBATCH --key=value" line: Slurm reads those lines
 * itself, without a shell, so quoting cannot protect anything there. */
static const char *bad_sbatch_value(const char *v)
{
    if (!*v)
        return "is empty";
    for (const char *p = v; *p; ++p) {
        if (*p == '\n' || *p == '\r')
            return "contains a line break";
        if (isspace((unsigned char)*p))
            return "contains white space";
        if (*p == '"' || *p == '\'' || *p == '\\')
            return "contains a quote or backslash";
    }
    return NULL;
}

int slurm_check_opts(const slurm_opts *o, char *msg, size_t msg_len)
{
    const char *names[] = {"--partition", "--time", "--mem"};
    const char *vals[] = {o->partition, o->time, o->mem};
    for (size_t i = 0; i < 3; ++i) {
        const char *why = vals[i] ? bad_sbatch_value(vals[i]) : NULL;
        if (why) {
            snprintf(msg, msg_len, "%s '%s' %s", names[i], vals[i], why);
            return -1;
        }
    }
    for (size_t i = 0; i < o->n_extra; ++i)
        if (!*o->extra[i] || strpbrk(o->extra[i], "\r\n") || o->extra[i][0] != '-') {
            snprintf(msg, msg_len, "--sbatch-arg '%s': want one sbatch option on one line, "
                                   "such as --account=NAME", o->extra[i]);
            return -1;
        }
    if (o->cpus < 1) {
        snprintf(msg, msg_len, "--cpus must be at least 1");
        return -1;
    }
    return 0;
}

char *slurm_array_spec(const size_t *idx, size_t n, int max_running)
{
    size_t cap = 32 + n * 44;
    char *s = malloc(cap);
    if (!s)
        return NULL;
    size_t len = 0;
    s[0] = '\0';
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j + 1 < n && idx[j + 1] == idx[j] + 1)
            ++j;
        len += (size_t)snprintf(s + len, cap - len, "%s%zu", i ? "," : "", idx[i]);
        if (j > i)
            len += (size_t)snprintf(s + len, cap - len, "-%zu", idx[j]);
        i = j + 1;
    }
    if (max_running > 0)
        snprintf(s + len, cap - len, "%%%d", max_running);
    return s;
}

char *slurm_shell_quote(const char *s)
{
    size_t n = 3;
    for (const char *p = s; *p; ++p)
        n += *p == '\'' ? 4 : 1;
    char *q = malloc(n);
    if (!q)
        return NULL;
    char *o = q;
    *o++ = '\'';
    for (const char *p = s; *p; ++p) {
        if (*p == '\'') {
            memcpy(o, "'\\''", 4);   /* close, escaped quote, reopen */
            o += 4;
        } else {
            *o++ = *p;
        }
    }
    *o++ = '\'';
    *o = '\0';
    return q;
}

static void put_quoted(FILE *f, const char *s, int *oom)
{
    char *q = slurm_shell_quote(s);
    if (q)
        fputs(q, f);
    else
        *oom = 1;
    free(q);
}

int slurm_write_script(const slurm_job *j, const slurm_opts *o, char **path, qd_error *err)
{
    *path = NULL;
    const char *why = bad_sbatch_value(j->dir);
    if (!why && strchr(j->dir, '%'))
        why = "contains '%' (a Slurm file name pattern)";
    if (why)
        return qd_error_set(err, QD_ERR_INVALID,
                            "the sweep directory %s %s, which an #SBATCH --output line cannot "
                            "carry; choose another --out",
                            j->dir, why);
    char *spec = slurm_array_spec(j->tasks, j->n_tasks, o->max_running);
    char *text = NULL;
    size_t len = 0;
    FILE *f = spec ? open_memstream(&text, &len) : NULL;
    if (!f) {
        free(spec);
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    }
    int oom = 0;
    char jname[64];
    size_t k = 0;
    for (const char *p = "qd-"; *p; ++p)
        jname[k++] = *p;
    for (const char *p = j->name; *p && k + 1 < sizeof jname; ++p)
        jname[k++] = isalnum((unsigned char)*p) || *p == '.' || *p == '_' || *p == '-' ? *p : '_';
    jname[k] = '\0';

    fprintf(f, "#!/bin/bash\n"
               "# Written by `qdistill sweep --slurm` (see docs/scaling.md): one array task per\n"
               "# grid point of the sweep in %s,\n"
               "# which must be on a file system every node sees. A task whose point has\n"
               "# finished skips it, so submitting this script again resumes the sweep.\n",
            j->dir);
    fprintf(f, "#SBATCH --job-name=%s\n", jname);
    fprintf(f, "#SBATCH --array=%s\n", spec);
    fprintf(f, "#SBATCH --ntasks=1\n");
    fprintf(f, "#SBATCH --cpus-per-task=%d\n", o->cpus);
    fprintf(f, "#SBATCH --output=%s/slurm/task-%%a.out\n", j->dir);
    fprintf(f, "#SBATCH --open-mode=append\n");
    if (o->partition)
        fprintf(f, "#SBATCH --partition=%s\n", o->partition);
    if (o->time)
        fprintf(f, "#SBATCH --time=%s\n", o->time);
    if (o->mem)
        fprintf(f, "#SBATCH --mem=%s\n", o->mem);
    for (size_t i = 0; i < o->n_extra; ++i)
        fprintf(f, "#SBATCH %s\n", o->extra[i]);
    fputs("\n", f);
    if (j->plugin_path && *j->plugin_path) {
        fputs("export QDISTILL_PLUGIN_PATH=", f);
        put_quoted(f, j->plugin_path, &oom);
        fputs("\n", f);
    } else {
        fputs("# plugins: qdistill's own search (its build tree, the installed directory)\n", f);
    }
    /* the threads of one task: what Slurm granted it */
    fprintf(f, "export OMP_NUM_THREADS=\"${SLURM_CPUS_PER_TASK:-%d}\"\n", o->cpus);
    fputs("cd ", f);
    put_quoted(f, j->workdir, &oom);
    fputs(" || exit 1\n", f);
    fputs("echo \"== $(date -u '+%Y-%m-%d %H:%M:%S') UTC: array task "
          "$SLURM_ARRAY_TASK_ID (job $SLURM_ARRAY_JOB_ID) on $(hostname)\"\n", f);
    fputs("exec ", f);
    put_quoted(f, j->exe, &oom);
    for (size_t i = 0; i < j->n_args; ++i) {
        fputc(' ', f);
        put_quoted(f, j->args[i], &oom);
    }
    fputs(" --out ", f);
    put_quoted(f, j->dir, &oom);
    fputs(" --task \"$SLURM_ARRAY_TASK_ID\"\n", f);
    free(spec);
    if (fclose(f) != 0 || oom) {
        free(text);
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    }
    size_t plen = strlen(j->dir) + 32;
    char *p = malloc(plen);
    int rc = QD_OK;
    if (!p) {
        rc = qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    } else {
        snprintf(p, plen, "%s/slurm", j->dir);
        rc = qd_mkdir_p(p, err);
        snprintf(p, plen, "%s/slurm/sweep.sbatch", j->dir);
        if (!rc)
            rc = qd_write_atomic(p, text, len, err);
    }
    free(text);
    if (rc)
        free(p);
    else
        *path = p;
    return rc;
}

/* Append what fd has to *buf (NUL-terminated); 0 at EOF. */
static int drain(int fd, char **buf, size_t *len)
{
    char tmp[4096];
    ssize_t r = read(fd, tmp, sizeof tmp);
    if (r <= 0)
        return r < 0 && errno == EINTR ? 1 : 0;
    char *nb = realloc(*buf, *len + (size_t)r + 1);
    if (!nb)
        return 0;
    memcpy(nb + *len, tmp, (size_t)r);
    *len += (size_t)r;
    nb[*len] = '\0';
    *buf = nb;
    return 1;
}

static void trim(char *s)
{
    size_t n = s ? strlen(s) : 0;
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
}

/* sbatch on PATH, looked up here rather than left to posix_spawnp, whose
 * "not found" some environments report only as the child's exit 127. */
static char *find_sbatch(void)
{
    const char *path = getenv("PATH");
    char *dup = strdup(path && *path ? path : "/usr/bin:/bin"), *save = NULL;
    if (!dup)
        return NULL;
    for (char *d = strtok_r(dup, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        size_t n = strlen(d) + 8;
        char *f = malloc(n);
        if (!f)
            break;
        snprintf(f, n, "%s/sbatch", *d ? d : ".");
        if (access(f, X_OK) == 0) {
            free(dup);
            return f;
        }
        free(f);
    }
    free(dup);
    return NULL;
}

int slurm_submit(const char *script, char **job_id, char *msg, size_t msg_len)
{
    *job_id = NULL;
    char *exe = find_sbatch();
    if (!exe) {
        snprintf(msg, msg_len, "sbatch was not found on PATH: is this a Slurm login node "
                               "(Debian: apt-get install slurm-client)? The script is "
                               "written; submit it there with: sbatch %s", script);
        return -1;
    }
    int out[2] = {-1, -1}, errp[2] = {-1, -1};
    if (pipe2(out, O_CLOEXEC) != 0 || pipe2(errp, O_CLOEXEC) != 0) {
        snprintf(msg, msg_len, "cannot run sbatch: pipe: %s", strerror(errno));
        if (out[0] >= 0) {
            close(out[0]);
            close(out[1]);
        }
        free(exe);
        return -1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, errp[1], 2);
    char *argv[] = {"sbatch", "--parsable", (char *)script, NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, exe, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    close(errp[1]);
    if (rc != 0) {
        close(out[0]);
        close(errp[0]);
        snprintf(msg, msg_len, "cannot run %s: %s", exe, strerror(rc));
        free(exe);
        return -1;
    }
    free(exe);
    char *so = NULL, *se = NULL;
    size_t lo = 0, le = 0;
    struct pollfd pf[2] = {{out[0], POLLIN, 0}, {errp[0], POLLIN, 0}};
    int open_fds = 2;
    while (open_fds > 0) {
        if (poll(pf, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (int i = 0; i < 2; ++i)
            if (pf[i].fd >= 0 && (pf[i].revents & (POLLIN | POLLHUP | POLLERR))) {
                if (!drain(pf[i].fd, i ? &se : &so, i ? &le : &lo)) {
                    close(pf[i].fd);
                    pf[i].fd = -1;
                    --open_fds;
                }
            }
    }
    for (int i = 0; i < 2; ++i)
        if (pf[i].fd >= 0)
            close(pf[i].fd);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    trim(so);
    trim(se);
    int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    /* --parsable: "jobid" or "jobid;cluster" */
    size_t idl = so ? strspn(so, "0123456789") : 0;
    if (ok && idl > 0 && (so[idl] == '\0' || so[idl] == ';')) {
        so[idl] = '\0';
        *job_id = so;
        free(se);
        return 0;
    }
    if (ok)
        snprintf(msg, msg_len, "sbatch printed no job id (stdout: '%s'; stderr: '%s')",
                 so ? so : "", se ? se : "");
    else if (WIFEXITED(st))
        snprintf(msg, msg_len, "sbatch failed (exit %d): %s", WEXITSTATUS(st),
                 se && *se ? se : so && *so ? so : "(no message)");
    else
        snprintf(msg, msg_len, "sbatch was killed by signal %d", WTERMSIG(st));
    free(so);
    free(se);
    return -1;
}
