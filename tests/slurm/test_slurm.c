/* qdistill sweep --slurm and --task.
 *
 * Without a cluster: the job-array script (its #SBATCH lines, and that its
 * tasks, run by hand, fill the sweep), --task's locking, the errors, and
 * sbatch missing or failing (stand-in sbatch scripts on PATH).
 *
 * With a cluster: a one-node Slurm cluster on localhost, started here in a
 * temporary directory (munged with its own key and socket, slurmctld and
 * slurmd in the foreground with a generated slurm.conf on free ports, no
 * systemd, no cgroups), a 4-task sweep submitted with `qdistill sweep
 * --slurm`, waited for, and its table checked against the result.json
 * files. The daemons are stopped however the test ends (fini, and
 * PR_SET_PDEATHSIG should the test process die). Needs Debian's slurm-wlm
 * and munge, and root (slurmd starts jobs as their user); without them the
 * test fails saying so. QD_SLURM_KEEP=1 keeps the cluster directory. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli_util.h"
#include "qdistill/json.h"

#define TINY "tests/cli/manifests/tiny-distill.yaml"
#define GRID "seed=1,2 distill.images_per_class=1,2 distill.iterations=20"

static const char *const JOBS4[] = {
    "distill.images_per_class=1,seed=1", "distill.images_per_class=1,seed=2",
    "distill.images_per_class=2,seed=1", "distill.images_per_class=2,seed=2"};

static size_t count(const char *s, const char *what)
{
    size_t n = 0;
    for (const char *p = s; (p = strstr(p, what)); p += strlen(what))
        ++n;
    return n;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void sleep_s(double s)
{
    struct timespec t = {(time_t)s, (long)((s - floor(s)) * 1e9)};
    nanosleep(&t, NULL);
}

/* Run a shell command; stdout and stderr together into *out (may be NULL). */
static int sh(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int sh(char **out, const char *fmt, ...)
{
    char cmd[8192], full[8400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    snprintf(full, sizeof full, "( %s ) 2>&1", cmd);
    FILE *p = popen(full, "r");
    cr_assert(p, "popen: %s", strerror(errno));
    char *buf = NULL, chunk[4096];
    size_t len = 0, r;
    buf = calloc(1, 1);
    while ((r = fread(chunk, 1, sizeof chunk, p)) > 0) {
        buf = realloc(buf, len + r + 1);
        memcpy(buf + len, chunk, r);
        len += r;
        buf[len] = '\0';
    }
    int st = pclose(p);
    if (out)
        *out = buf;
    else
        free(buf);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static double result_value(const char *dir, const char *job, const char *path)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/%s/result.json", dir, job);
    qd_json_value *v = NULL;
    qd_error err;
    cr_assert_eq(qd_json_read_file(p, &v, &err), QD_OK, "%s", err.msg);
    double x;
    cr_assert_eq(qd_json_get_number(v, path, &x, &err), QD_OK, "%s", err.msg);
    qd_json_value_free(v);
    return x;
}

/* `qdistill table` of a finished 4-job sweep, against the result.json
 * files: mean and sample std of two seeds per images_per_class. */
static void check_table(const char *sw)
{
    double acc[4];
    for (int j = 0; j < 4; ++j)
        acc[j] = result_value(sw, JOBS4[j], "distilled.test_acc");
    char want[2][64];
    for (int r = 0; r < 2; ++r) {
        double a = acc[2 * r], b = acc[2 * r + 1];
        snprintf(want[r], sizeof want[r], "%.2f ± %.2f", 100 * (a + b) / 2,
                 100 * fabs(a - b) / sqrt(2.0));
    }
    char *out, *err;
    int rc = qd(&out, &err, "table %s", sw);
    cr_assert_eq(rc, 0, "%s", err);
    char *l1 = strstr(out, "\n1 "), *l2 = strstr(out, "\n2 ");
    cr_expect(strncmp(out, "distill.images_per_class", 24) == 0, "%s", out);
    cr_expect(l1 && strstr(l1, want[0]) && l2 && strstr(l2, want[1]) && l1 < l2,
              "%s\nwant rows 1: %s, 2: %s", out, want[0], want[1]);
    free(out);
    free(err);
}

/* ---- without a cluster ------------------------------------------------ */

Test(slurm, script_lines_and_its_tasks_run_by_hand, .timeout = 120)
{
    make_tmp();
    char sw[400], *out, *err;
    snprintf(sw, sizeof sw, "%s/sw", g_tmp);
    int rc = qd(&out, &err,
                "sweep " TINY " " GRID " --out %s --slurm --cpus 2 --partition p1 --time 0:05:00 "
                "--mem 1G --sbatch-arg=--account=acme -j 3 --dry-run",
                sw);
    cr_assert_eq(rc, 0, "%s%s", out, err);
    cr_expect(strstr(out, "4 of 4 jobs to run; job array written (not submitted)"), "%s", out);
    free(out);
    free(err);
    char path[600];
    snprintf(path, sizeof path, "%s/slurm/sweep.sbatch", sw);
    char *s = slurp(path);
    const char *lines[] = {"#!/bin/bash\n",
                           "\n#SBATCH --job-name=qd-tiny-distill\n",
                           "\n#SBATCH --array=0-3%3\n",
                           "\n#SBATCH --ntasks=1\n",
                           "\n#SBATCH --cpus-per-task=2\n",
                           "\n#SBATCH --open-mode=append\n",
                           "\n#SBATCH --partition=p1\n",
                           "\n#SBATCH --time=0:05:00\n",
                           "\n#SBATCH --mem=1G\n",
                           "\n#SBATCH --account=acme\n",
                           "\nexport OMP_NUM_THREADS=\"${SLURM_CPUS_PER_TASK:-2}\"\n"};
    for (size_t i = 0; i < sizeof lines / sizeof *lines; ++i)
        cr_expect(strstr(s, lines[i]), "missing %s in:\n%s", lines[i], s);
    /* absolute paths everywhere: the tasks start elsewhere */
    char want[1200];
    snprintf(want, sizeof want, "\n#SBATCH --output=%s/slurm/task-%%a.out\n", sw);
    cr_expect(strstr(s, want), "missing %s in:\n%s", want, s);
    char *pp = realpath(getenv("QDISTILL_PLUGIN_PATH"), NULL);
    cr_assert(pp);
    snprintf(want, sizeof want, "\nexport QDISTILL_PLUGIN_PATH='%s'\n", pp);
    cr_expect(strstr(s, want), "missing %s in:\n%s", want, s);
    free(pp);
    snprintf(want, sizeof want, "\nexec '%s/qdistill' 'sweep' '%s/" TINY
                                "' 'seed=1,2' 'distill.images_per_class=1,2' "
                                "'distill.iterations=20' --out '%s' --task \"$SLURM_ARRAY_TASK_ID\"\n",
             builddir(), srcdir(), sw);
    cr_expect(strstr(s, want), "missing %s in:\n%s", want, s);
    free(s);

    /* the script is what Slurm runs: run its four tasks at once by hand */
    char *txt;
    rc = sh(&txt, "cd / && for i in 0 1 2 3; do SLURM_ARRAY_TASK_ID=$i SLURM_CPUS_PER_TASK=1 "
                  "bash '%s' > '%s'/task-$i.txt 2>&1 & done; wait",
            path, g_tmp);
    cr_assert_eq(rc, 0, "%s", txt);
    free(txt);
    for (int i = 0; i < 4; ++i) {
        char tp[600];
        snprintf(tp, sizeof tp, "%s/task-%d.txt", g_tmp, i);
        char *t = slurp(tp);
        snprintf(want, sizeof want, "task %d (grid point %d of 4) %s: done", i, i + 1, JOBS4[i]);
        cr_expect(strstr(t, want), "task %d: %s", i, t);
        free(t);
        cr_expect(exists(sw, JOBS4[i]), "%s", JOBS4[i]);
    }
    check_table(sw);

    /* resubmitting covers only what is unfinished */
    snprintf(path, sizeof path, "%s/%s/result.json", sw, JOBS4[2]);
    cr_assert_eq(unlink(path), 0);
    rc = qd(&out, &err, "sweep " TINY " " GRID " --out %s --slurm -j 3 --dry-run", sw);
    cr_assert_eq(rc, 0, "%s", err);
    cr_expect(strstr(out, "1 of 4 jobs to run"), "%s", out);
    free(out);
    free(err);
    snprintf(path, sizeof path, "%s/slurm/sweep.sbatch", sw);
    s = slurp(path);
    cr_expect(strstr(s, "\n#SBATCH --array=2%3\n"), "%s", s);
    cr_expect(!strstr(s, "--partition"), "options are not remembered: %s", s);
    free(s);
    rc = qd(&out, &err, "sweep " TINY " " GRID " --out %s --task 2", sw);
    cr_expect_eq(rc, 0, "%s%s", out, err);
    free(out);
    free(err);
    rc = qd(&out, &err, "sweep " TINY " " GRID " --out %s --slurm --dry-run", sw);
    cr_expect_eq(rc, 0, "%s", err);
    cr_expect(strstr(out, "all 4 jobs finished; nothing to submit"), "%s", out);
    free(out);
    free(err);
    rm_tmp();
}

/* Two processes on the same point (a re-submitted array): one runs it, the
 * other waits for the job's lock and then finds it finished. */
Test(slurm, two_tasks_on_one_point_run_it_once, .timeout = 60)
{
    make_tmp();
    char sw[400], *txt;
    snprintf(sw, sizeof sw, "%s/sw", g_tmp);
    int rc = sh(&txt, "cd '%s' && for k in a b; do '%s/qdistill' sweep " TINY " " GRID
                      " --out '%s' --task 1 > '%s'/$k.txt 2>&1 & done; wait",
                srcdir(), builddir(), sw, g_tmp);
    cr_assert_eq(rc, 0, "%s", txt);
    free(txt);
    char pa[600], pb[600];
    snprintf(pa, sizeof pa, "%s/a.txt", g_tmp);
    snprintf(pb, sizeof pb, "%s/b.txt", g_tmp);
    char *a = slurp(pa), *b = slurp(pb);
    cr_expect_eq(count(a, ": started (") + count(b, ": started ("), 1, "%s\n---\n%s", a, b);
    /* both end well: one done, one skipped */
    cr_expect_eq(count(a, ": done, log ") + count(b, ": done, log "), 1, "%s\n---\n%s", a, b);
    cr_expect_eq(count(a, ": skipped (finished before), log ") +
                     count(b, ": skipped (finished before), log "),
                 1, "%s\n---\n%s", a, b);
    free(a);
    free(b);
    char lp[800];
    snprintf(lp, sizeof lp, "%s/logs/%s.log", sw, JOBS4[1]);
    char *log = slurp(lp);
    cr_expect_eq(count(log, "== "), 1, "one attempt: %s", log);
    free(log);
    cr_expect(!exists(sw, JOBS4[0]) && !exists(sw, JOBS4[2]), "only point 1 ran");
    rm_tmp();
}

Test(slurm, usage_errors_exit_2)
{
    make_tmp();
    const char *cases[][2] = {
        {"--task 0", "needs --out DIR"},
        {"--out %s/sw --task 4", "--task 4: the grid has 4 points (0 to 3)"},
        {"--out %s/sw --task x", "--task wants a whole number"},
        {"--out %s/sw --task 0 -j 2", "-j / --fail-fast do not apply"},
        {"--slurm --task 0 --out %s/sw", "--slurm cannot go with --task"},
        {"--slurm --fail-fast", "--slurm cannot go with --fail-fast"},
        {"--partition p1", "go with --slurm"},
        {"--slurm --partition 'a b' --out %s/sw", "--partition 'a b' contains white space"},
        {"--slurm --cpus 0", "--cpus wants a whole number from 1"},
        {"--slurm --sbatch-arg account", "--sbatch-arg 'account': want one sbatch option"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; ++i) {
        char opts[600];
        snprintf(opts, sizeof opts, cases[i][0], g_tmp);
        char *out, *err;
        int rc = qd(&out, &err, "sweep " TINY " " GRID " %s", opts);
        cr_expect_eq(rc, 2, "%s: exit %d: %s", opts, rc, err);
        cr_expect(strstr(err, cases[i][1]), "%s: %s", opts, err);
        free(out);
        free(err);
    }
    rm_tmp();
}

/* sbatch missing, failing, and succeeding: stand-ins on PATH */
Test(slurm, sbatch_missing_failing_and_submitting)
{
    make_tmp();
    char sw[400], bin[400], path[600], *out, *err;
    snprintf(sw, sizeof sw, "%s/sw", g_tmp);
    snprintf(bin, sizeof bin, "%s/bin", g_tmp);
    cr_assert_eq(mkdir(bin, 0755), 0);
    const char *old = getenv("PATH");
    char *saved = strdup(old ? old : "/usr/bin:/bin");

    setenv("PATH", bin, 1);   /* empty: no sbatch */
    int rc = qd(&out, &err, "sweep " TINY " " GRID " --out %s --slurm", sw);
    cr_expect_eq(rc, 1, "%s", err);
    cr_expect(strstr(err, "sbatch was not found on PATH"), "%s", err);
    snprintf(path, sizeof path, "%s/slurm/sweep.sbatch", sw);
    cr_expect(strstr(err, path), "names the script to submit by hand: %s", err);
    cr_expect(exists(sw, "slurm/sweep.sbatch") && exists(sw, "sweep.yaml"));
    free(out);
    free(err);

    char fake[600];
    snprintf(fake, sizeof fake, "%s/sbatch", bin);
    const char *failing = "#!/bin/sh\necho 'sbatch: error: Batch job submission failed: "
                          "Invalid account' >&2\nexit 1\n";
    write_file(fake, failing, strlen(failing));
    chmod(fake, 0755);
    rc = qd(&out, &err, "sweep " TINY " " GRID " --out %s --slurm", sw);
    cr_expect_eq(rc, 1, "%s", err);
    cr_expect(strstr(err, "sbatch failed (exit 1): sbatch: error: Batch job submission failed: "
                          "Invalid account"),
              "%s", err);
    free(out);
    free(err);

    char ok[1200];
    snprintf(ok, sizeof ok, "#!/bin/sh\necho \"$@\" > '%s/args'\necho '4242;cluster'\n", g_tmp);
    write_file(fake, ok, strlen(ok));
    chmod(fake, 0755);
    rc = qd(&out, &err, "sweep " TINY " " GRID " --out %s --slurm", sw);
    cr_expect_eq(rc, 0, "%s", err);
    cr_expect(strstr(out, "submitted batch job 4242: 4 array tasks for 4 of 4 jobs"), "%s", out);
    free(out);
    free(err);
    snprintf(fake, sizeof fake, "%s/args", g_tmp);
    char *args = slurp(fake);
    snprintf(ok, sizeof ok, "--parsable %s/slurm/sweep.sbatch\n", sw);
    cr_expect_str_eq(args, ok);
    free(args);
    snprintf(fake, sizeof fake, "%s/slurm/jobs.txt", sw);
    char *jobs = slurp(fake);
    cr_expect_str_eq(jobs, "4242 4\n");
    free(jobs);

    setenv("PATH", saved, 1);
    free(saved);
    rm_tmp();
}

/* ---- a one-node cluster ---------------------------------------------- */

typedef struct cluster {
    char dir[256];
    char conf[320];
    pid_t munged, ctld, slurmd;
} cluster;

static cluster g_c;

static int find_tool(const char *name, char *buf, size_t n)
{
    const char *path = getenv("PATH");
    char dirs[4096];
    snprintf(dirs, sizeof dirs, "%s:/usr/sbin:/sbin:/usr/local/sbin", path ? path : "/usr/bin");
    char *save = NULL;
    for (char *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        snprintf(buf, n, "%s/%s", d, name);
        if (access(buf, X_OK) == 0)
            return 1;
    }
    return 0;
}

static pid_t start_daemon(char *const argv[], const char *log)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        /* should this test process die, the daemon goes too */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        int in = open("/dev/null", O_RDONLY), out = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(in, 0);
        dup2(out, 1);
        dup2(out, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

static void stop_daemon(pid_t *pid)
{
    if (*pid <= 0)
        return;
    kill(*pid, SIGTERM);
    for (int i = 0; i < 100; ++i) {
        if (waitpid(*pid, NULL, WNOHANG) == *pid) {
            *pid = 0;
            return;
        }
        sleep_s(0.05);
    }
    kill(*pid, SIGKILL);
    waitpid(*pid, NULL, 0);
    *pid = 0;
}

static int alive(pid_t pid)
{
    return pid > 0 && waitpid(pid, NULL, WNOHANG) == 0;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* The end of a log file, for failure messages. */
static char *tail_of(const char *name)
{
    char p[600];
    snprintf(p, sizeof p, "%s/%s", g_c.dir, name);
    size_t len;
    char *s = slurp_n(p, &len);
    if (len > 1500)
        memmove(s, s + len - 1500, 1501);
    return s;
}

static void cluster_diag(char *buf, size_t n)
{
    char *a = tail_of("slurmctld.log"), *b = tail_of("slurmd.log"), *c = tail_of("munged.log"),
         *d = tail_of("daemons.out");
    snprintf(buf, n, "--- slurmctld.log\n%s\n--- slurmd.log\n%s\n--- munged.log\n%s\n--- "
                     "daemon output\n%s",
             a, b, c, d);
    free(a);
    free(b);
    free(c);
    free(d);
}

static void cluster_down(void)
{
    if (!g_c.dir[0])
        return;
    if (alive(g_c.ctld)) {
        /* nothing of ours may outlive the test: cancel, wait for the steps */
        sh(NULL, "scancel --quiet -p debug");
        for (int i = 0; i < 40; ++i) {
            char *q;
            sh(&q, "squeue -h -p debug");
            int empty = q[0] == '\0';
            free(q);
            if (empty)
                break;
            sleep_s(0.25);
        }
    }
    stop_daemon(&g_c.slurmd);
    stop_daemon(&g_c.ctld);
    stop_daemon(&g_c.munged);
    if (!getenv("QD_SLURM_KEEP"))
        sh(NULL, "rm -rf '%s'", g_c.dir);
    g_c.dir[0] = '\0';
}

static void cluster_up(void)
{
    static const char *const tools[] = {"slurmctld", "slurmd", "sbatch", "squeue", "sinfo",
                                        "scontrol", "scancel", "munged", "mungekey"};
    char exe[9][512];
    for (size_t i = 0; i < 9; ++i)
        if (!find_tool(tools[i], exe[i], sizeof exe[i]))
            cr_assert_fail("'%s' not found: this suite runs a one-node Slurm cluster and needs "
                           "Debian's slurm-wlm and munge packages (apt-get install slurm-wlm "
                           "munge; tools/setup.sh installs them)",
                           tools[i]);
    if (geteuid() != 0)
        cr_assert_fail("the Slurm suite must run as root: slurmd starts jobs as their user");

    memset(&g_c, 0, sizeof g_c);
    snprintf(g_c.dir, sizeof g_c.dir, "/tmp/qd_slurm_XXXXXX");
    cr_assert(mkdtemp(g_c.dir));
    char p[600], out[600];
    snprintf(out, sizeof out, "%s/daemons.out", g_c.dir);
    /* munge: its own key and socket, nothing under /etc or /run */
    const char *subdirs[] = {"munge", "state", "spool"};
    for (size_t i = 0; i < 3; ++i) {
        snprintf(p, sizeof p, "%s/%s", g_c.dir, subdirs[i]);
        cr_assert_eq(mkdir(p, 0700), 0);
    }
    char *o;
    int rc = sh(&o, "'%s' --create --bits=1024 --force --keyfile='%s/munge/munge.key'", exe[8],
                g_c.dir);
    cr_assert_eq(rc, 0, "mungekey: %s", o);
    free(o);
    char a_sock[600], a_key[600], a_log[600], a_pid[600], a_seed[600];
    snprintf(a_sock, sizeof a_sock, "--socket=%s/munge/munge.socket", g_c.dir);
    snprintf(a_key, sizeof a_key, "--key-file=%s/munge/munge.key", g_c.dir);
    snprintf(a_log, sizeof a_log, "--log-file=%s/munged.log", g_c.dir);
    snprintf(a_pid, sizeof a_pid, "--pid-file=%s/munge/munged.pid", g_c.dir);
    snprintf(a_seed, sizeof a_seed, "--seed-file=%s/munge/munged.seed", g_c.dir);
    char *margv[] = {exe[7], "--foreground", "--force", a_sock, a_key, a_log, a_pid, a_seed, NULL};
    g_c.munged = start_daemon(margv, out);
    snprintf(p, sizeof p, "%s/munge/munge.socket", g_c.dir);
    struct stat st;
    for (int i = 0; i < 100 && stat(p, &st) != 0 && alive(g_c.munged); ++i)
        sleep_s(0.05);
    char diag[8000];
    if (stat(p, &st) != 0) {
        cluster_diag(diag, sizeof diag);
        cr_assert_fail("munged did not start:\n%s", diag);
    }

    /* slurm.conf: localhost only, free ports, state in the temp dir */
    struct passwd *pw = getpwuid(geteuid());
    int ctld_port = free_port(), d_port = free_port();
    while (d_port == ctld_port)
        d_port = free_port();
    snprintf(g_c.conf, sizeof g_c.conf, "%s/slurm.conf", g_c.dir);
    FILE *f = fopen(g_c.conf, "w");
    cr_assert(f);
    fprintf(f,
            "ClusterName=qdtest\n"
            "SlurmctldHost=localhost\n"
            "SlurmctldPort=%d\n"
            "SlurmdPort=%d\n"
            "AuthType=auth/munge\n"
            "CredType=cred/munge\n"
            "AuthInfo=socket=%s/munge/munge.socket\n"
            "SlurmUser=%s\n"
            "SlurmdUser=%s\n"
            "StateSaveLocation=%s/state\n"
            "SlurmdSpoolDir=%s/spool\n"
            "SlurmctldPidFile=%s/slurmctld.pid\n"
            "SlurmdPidFile=%s/slurmd.pid\n"
            "SlurmctldLogFile=%s/slurmctld.log\n"
            "SlurmdLogFile=%s/slurmd.log\n"
            "ProctrackType=proctrack/linuxproc\n"
            "TaskPlugin=task/none\n"
            "SelectType=select/cons_tres\n"
            "SelectTypeParameters=CR_CPU\n"
            "MpiDefault=none\n"
            "SwitchType=switch/none\n"
            "ReturnToService=2\n"
            "SchedulerType=sched/backfill\n"
            "JobAcctGatherType=jobacct_gather/none\n"
            "AccountingStorageType=accounting_storage/none\n"
            "JobCompType=jobcomp/none\n"
            "MailProg=/bin/true\n"
            "SlurmdParameters=config_overrides\n"
            "NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN\n"
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP\n",
            ctld_port, d_port, g_c.dir, pw->pw_name, pw->pw_name, g_c.dir, g_c.dir, g_c.dir,
            g_c.dir, g_c.dir, g_c.dir);
    fclose(f);
    setenv("SLURM_CONF", g_c.conf, 1);   /* for sbatch, squeue, sinfo, ... and qdistill */
    char *cargv[] = {exe[0], "-D", "-f", g_c.conf, NULL};
    g_c.ctld = start_daemon(cargv, out);
    char *dargv[] = {exe[1], "-D", "-N", "localhost", "-f", g_c.conf, NULL};
    g_c.slurmd = start_daemon(dargv, out);

    /* up when the node is idle */
    double t0 = now_s();
    for (;;) {
        char *s;
        sh(&s, "sinfo -h -N -o %%t");
        int idle = strncmp(s, "idle", 4) == 0;
        free(s);
        if (idle)
            break;
        if (now_s() - t0 > 40 || !alive(g_c.ctld) || !alive(g_c.slurmd)) {
            cluster_diag(diag, sizeof diag);
            cr_assert_fail("the one-node cluster did not come up in %.0f s (slurmctld %s, "
                           "slurmd %s):\n%s",
                           now_s() - t0, alive(g_c.ctld) ? "running" : "exited",
                           alive(g_c.slurmd) ? "running" : "exited", diag);
        }
        sleep_s(0.25);
    }
}

Test(slurm, one_node_cluster_runs_a_4_task_sweep, .init = cluster_up, .fini = cluster_down,
     .timeout = 150)
{
    make_tmp();
    char sw[400], *out, *err;
    snprintf(sw, sizeof sw, "%s/sw", g_tmp);
    double t0 = now_s();
    int rc = qd(&out, &err, "sweep " TINY " " GRID " --out %s --slurm --cpus 1 --time 5", sw);
    cr_assert_eq(rc, 0, "%s%s", out, err);
    const char *at = strstr(out, "submitted batch job ");
    cr_assert(at, "%s", out);
    long id = strtol(at + 20, NULL, 10);
    cr_assert_gt(id, 0, "%s", out);
    cr_expect(strstr(out, ": 4 array tasks for 4 of 4 jobs"), "%s", out);
    free(out);
    free(err);

    /* wait until the array left the queue */
    char diag[8000];
    for (;;) {
        char *q;
        sh(&q, "squeue -h -j %ld -o '%%i %%t'", id);
        int gone = q[0] == '\0' || strstr(q, "Invalid job id");
        if (!gone && now_s() - t0 > 100) {
            cluster_diag(diag, sizeof diag);
            cr_assert_fail("the array is still queued after %.0f s:\n%s\n%s", now_s() - t0, q,
                           diag);
        }
        free(q);
        if (gone)
            break;
        sleep_s(0.5);
    }
    /* every array task completed, as Slurm saw it */
    char *info;
    sh(&info, "scontrol -o show job %ld", id);
    cr_expect_eq(count(info, "JobState=COMPLETED"), 4, "%s", info);
    cr_expect_eq(count(info, "ExitCode=0:0"), 4, "%s", info);
    free(info);
    for (int i = 0; i < 4; ++i) {
        char name[600];
        snprintf(name, sizeof name, "%s/result.json", JOBS4[i]);
        cr_expect(exists(sw, name), "no %s", name);
        snprintf(name, sizeof name, "%s/slurm/task-%d.out", sw, i);
        char *t = slurp(name), want[600];
        snprintf(want, sizeof want, "task %d (grid point %d of 4) %s: done", i, i + 1, JOBS4[i]);
        cr_expect(strstr(t, want), "task %d output: %s", i, t);
        free(t);
    }
    check_table(sw);

    /* resubmitting a finished sweep submits nothing; a bad partition is
     * sbatch's error, shown */
    rc = qd(&out, &err, "sweep " TINY " " GRID " --out %s --slurm", sw);
    cr_expect_eq(rc, 0, "%s", err);
    cr_expect(strstr(out, "all 4 jobs finished; nothing to submit"), "%s", out);
    free(out);
    free(err);
    snprintf(sw, sizeof sw, "%s/sw2", g_tmp);
    rc = qd(&out, &err, "sweep " TINY " " GRID " --out %s --slurm --partition nosuch", sw);
    cr_expect_eq(rc, 1, "%s", err);
    cr_expect(strstr(err, "sbatch failed (exit 1): ") && strstr(err, "Invalid partition"), "%s",
              err);
    free(out);
    free(err);
    cr_log_info("slurm: sweep submitted and finished in %.1f s", now_s() - t0);
    rm_tmp();
}
