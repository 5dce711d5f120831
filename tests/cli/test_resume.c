/* Crash safety of `qdistill run`: a run SIGKILLed at random points and
 * re-run, interrupted by SIGINT/SIGTERM, or hitting a full disk while
 * checkpointing, finishes with exactly the result of an uninterrupted run
 * (bit-identical numbers, synthetic set and metrics, timings aside). */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "qdistill/blob.h"
#include "qdistill/ckpt.h"
#include "qdistill/json.h"
#include "qdistill/rng.h"

#include "cli_util.h"

/* ---- the CLI as a child process, its stderr read through a pipe ---- */

typedef struct child {
    pid_t pid;
    int fd;           /* read end of the child's stderr */
    char *text;       /* stderr read so far */
    size_t len, cap;
} child;

#define MAX_ARGS 24

/* Start `qdistill run tests/cli/manifests/tiny-distill.yaml OVR... --out dir`
 * in the source tree; env_kv ("K=V") is added to the environment if set. */
static void spawn(child *c, const char *dir, const char *const *ovr, size_t n_ovr,
                  const char *env_kv)
{
    int p[2];
    cr_assert_eq(pipe(p), 0);
    char exe[600];
    snprintf(exe, sizeof exe, "%s/qdistill", builddir());
    const char *argv[MAX_ARGS];
    size_t k = 0;
    argv[k++] = exe;
    argv[k++] = "run";
    argv[k++] = "tests/cli/manifests/tiny-distill.yaml";
    for (size_t i = 0; i < n_ovr && k < MAX_ARGS - 4; ++i)
        argv[k++] = ovr[i];
    argv[k++] = "--out";
    argv[k++] = dir;
    argv[k] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 0);
        dup2(devnull, 1);
        dup2(p[1], 2);
        close(p[0]);
        close(p[1]);
        if (chdir(srcdir()) != 0)
            _exit(126);
        if (env_kv) {
            /* "K=V": split into setenv's two arguments */
            char kv[256];
            snprintf(kv, sizeof kv, "%s", env_kv);
            char *eq = strchr(kv, '=');
            if (eq) {
                *eq = '\0';
                setenv(kv, eq + 1, 1);
            }
        }
        execv(exe, (char *const *)argv);
        _exit(127);
    }
    close(p[1]);
    memset(c, 0, sizeof *c);
    c->pid = pid;
    c->fd = p[0];
    c->cap = 4096;
    c->text = calloc(c->cap, 1);
    cr_assert(c->text);
}

/* Read what is available (waiting up to ms); 0 at EOF. */
static int pump(child *c, int ms)
{
    struct pollfd pf = {.fd = c->fd, .events = POLLIN};
    int r = poll(&pf, 1, ms);
    if (r <= 0)
        return 1;
    char buf[4096];
    ssize_t n = read(c->fd, buf, sizeof buf);
    if (n <= 0)
        return n < 0 && errno == EINTR;
    if (c->len + (size_t)n + 1 > c->cap) {
        while (c->len + (size_t)n + 1 > c->cap)
            c->cap *= 2;
        c->text = realloc(c->text, c->cap);
        cr_assert(c->text);
    }
    memcpy(c->text + c->len, buf, (size_t)n);
    c->len += (size_t)n;
    c->text[c->len] = '\0';
    return 1;
}

/* Wait until stderr contains one of the needles (NULL-terminated list);
 * returns its index, -1 at EOF or after 60 s. */
static int wait_for(child *c, const char *const *needles)
{
    for (int t = 0; t < 6000; ++t) {
        for (int i = 0; needles[i]; ++i)
            if (strstr(c->text, needles[i]))
                return i;
        if (!pump(c, 10))
            break;
    }
    for (int i = 0; needles[i]; ++i)
        if (strstr(c->text, needles[i]))
            return i;
    return -1;
}

/* Drain stderr and reap; returns the exit code, or 128+signal. */
static int finish(child *c)
{
    while (pump(c, 1000))
        ;
    close(c->fd);
    int st;
    while (waitpid(c->pid, &st, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

static void child_free(child *c)
{
    free(c->text);
    c->text = NULL;
}

static void sleep_ms(double ms)
{
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = 0};
    ts.tv_nsec = (long)((ms - 1000.0 * (double)ts.tv_sec) * 1e6);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return 1e3 * (double)ts.tv_sec + 1e-6 * (double)ts.tv_nsec;
}

/* A whole run, uninterrupted; asserts success. With t_distill/t_eval set,
 * measures how long its phases took (ms, as seen on stderr), so kill
 * points can be drawn inside them whatever the machine's speed. */
static void run_timed(const char *dir, const char *const *ovr, size_t n_ovr, double *t_distill,
                      double *t_eval)
{
    child c;
    spawn(&c, dir, ovr, n_ovr, NULL);
    if (t_distill) {
        const char *const d[] = {"distilling: ", NULL}, *const e[] = {"evaluating: ", NULL};
        cr_assert_geq(wait_for(&c, d), 0, "%s", c.text);
        double t0 = now_ms();
        cr_assert_geq(wait_for(&c, e), 0, "%s", c.text);
        double t1 = now_ms();
        while (pump(&c, 1000))
            ;
        *t_distill = t1 - t0;
        *t_eval = now_ms() - t1;
    }
    int rc = finish(&c);
    cr_assert_eq(rc, 0, "run into %s failed (%d): %s", dir, rc, c.text);
    child_free(&c);
}

static void run_to_end(const char *dir, const char *const *ovr, size_t n_ovr)
{
    run_timed(dir, ovr, n_ovr, NULL, NULL);
}

/* ---- comparing two run directories ---- */

/* Every field equal (numbers bit for bit) except wall-clock and memory. */
static void json_equal(const qd_json_value *a, const qd_json_value *b, const char *path)
{
    cr_assert_eq(qd_json_type_of(a), qd_json_type_of(b), "%s: types differ", path);
    char sub[512];
    switch (qd_json_type_of(a)) {
    case QD_JSON_NULL:
        break;
    case QD_JSON_BOOL:
        cr_expect_eq(qd_json_as_bool(a), qd_json_as_bool(b), "%s differs", path);
        break;
    case QD_JSON_NUMBER: {
        double x = qd_json_as_number(a), y = qd_json_as_number(b);
        cr_expect(memcmp(&x, &y, sizeof x) == 0, "%s: %.17g vs %.17g", path, x, y);
        break;
    }
    case QD_JSON_STRING:
        cr_expect_str_eq(qd_json_as_string(a, NULL), qd_json_as_string(b, NULL), "%s differs",
                         path);
        break;
    case QD_JSON_ARRAY:
        cr_assert_eq(qd_json_size(a), qd_json_size(b), "%s: lengths differ", path);
        for (size_t i = 0; i < qd_json_size(a); ++i) {
            snprintf(sub, sizeof sub, "%s[%zu]", path, i);
            json_equal(qd_json_at(a, i), qd_json_at(b, i), sub);
        }
        break;
    case QD_JSON_OBJECT:
        cr_assert_eq(qd_json_size(a), qd_json_size(b), "%s: key counts differ", path);
        for (size_t i = 0; i < qd_json_size(a); ++i) {
            const char *k = qd_json_key_at(a, i);
            if (strcmp(k, "time") == 0 || strcmp(k, "peak_rss_mb") == 0)
                continue;
            const qd_json_value *bv = qd_json_member(b, k);
            cr_assert(bv, "%s.%s missing", path, k);
            snprintf(sub, sizeof sub, "%s.%s", path, k);
            json_equal(qd_json_at(a, i), bv, sub);
        }
        break;
    }
}

/* metrics.csv without its `seconds` column. */
static char *csv_without_seconds(const char *path)
{
    char *t = slurp(path);
    cr_assert(t, "cannot read %s", path);
    char *out = calloc(strlen(t) + 1, 1);
    cr_assert(out);
    long skip = -1;
    size_t o = 0;
    int header = 1;
    for (char *save = NULL, *line = strtok_r(t, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        long col = 0;
        for (char *s2 = NULL, *f = strtok_r(line, ",", &s2); f; f = strtok_r(NULL, ",", &s2), ++col) {
            if (header && strcmp(f, "seconds") == 0)
                skip = col;
            if (col == skip)
                continue;
            o += (size_t)sprintf(out + o, "%s,", f);
        }
        out[o++] = '\n';
        cr_assert(!header || skip >= 0, "%s has no seconds column", path);
        header = 0;
    }
    free(t);
    return out;
}

static void same_run(const char *a, const char *b)
{
    char pa[600], pb[600];
    snprintf(pa, sizeof pa, "%s/result.json", a);
    snprintf(pb, sizeof pb, "%s/result.json", b);
    qd_json_value *va = NULL, *vb = NULL;
    cr_assert_eq(qd_json_read_file(pa, &va, NULL), 0, "cannot read %s", pa);
    cr_assert_eq(qd_json_read_file(pb, &vb, NULL), 0, "cannot read %s", pb);
    /* the fields the comparison is about are there */
    const char *keys[] = {"distilled.test_acc", "baselines.random_subset.test_acc",
                          "baselines.untrained.test_acc", "distiller.iterations",
                          "distiller.best_iteration", "distiller.learned_lrs"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; ++i)
        cr_assert(qd_json_get(va, keys[i]), "result.json lacks %s", keys[i]);
    json_equal(va, vb, "result");
    qd_json_value_free(va);
    qd_json_value_free(vb);

    size_t la, lb;
    snprintf(pa, sizeof pa, "%s/synthetic_images.npy", a);
    snprintf(pb, sizeof pb, "%s/synthetic_images.npy", b);
    char *ia = slurp_n(pa, &la), *ib = slurp_n(pb, &lb);
    cr_assert(ia && ib);
    cr_expect(la == lb && memcmp(ia, ib, la) == 0, "synthetic_images.npy differ");
    free(ia);
    free(ib);

    snprintf(pa, sizeof pa, "%s/metrics.csv", a);
    snprintf(pb, sizeof pb, "%s/metrics.csv", b);
    char *ca = csv_without_seconds(pa), *cb = csv_without_seconds(pb);
    cr_expect(strcmp(ca, cb) == 0, "metrics.csv rows differ:\n--- %s\n%.2000s\n--- %s\n%.2000s", pa,
              ca, pb, cb);
    free(ca);
    free(cb);
}

/* The outer iteration a run directory's checkpoint holds. */
static uint64_t ckpt_iteration(const char *dir, uint32_t *phase)
{
    char p[600];
    snprintf(p, sizeof p, "%s/checkpoint.qdc", dir);
    qd_ckpt *ck = NULL;
    qd_error err;
    cr_assert_eq(qd_ckpt_read(p, &ck, &err), 0, "checkpoint unreadable: %s", err.msg);
    const void *data;
    size_t len;
    cr_assert_eq(qd_ckpt_section(ck, "run", &data, &len, &err), 0);
    qd_blob_reader r;
    qd_blob_reader_init(&r, data, len);
    uint64_t it = 0;
    cr_assert_eq(qd_blob_get_u32(&r, phase, &err), 0);
    cr_assert_eq(qd_blob_get_u64(&r, &it, &err), 0);
    qd_ckpt_destroy(ck);
    return it;
}

/* ---- tests ---- */

/* a few seconds of distillation; a large test set makes evaluating each of
 * the 12 models take a while, so kills can land inside evaluation */
static const char *const long_run[] = {"distill.iterations=700", "distill.checkpoint_every=5",
                                       "evaluate.models=12", "dataset.test_size=5000"};
#define N_LONG (sizeof long_run / sizeof *long_run)

Test(resume, sigkill_at_random_points_gives_the_uninterrupted_result, .timeout = 240)
{
    make_tmp();
    char a[400], b[400];
    snprintf(a, sizeof a, "%s/A", g_tmp);
    snprintf(b, sizeof b, "%s/B", g_tmp);
    double t_distill, t_eval;
    run_timed(a, long_run, N_LONG, &t_distill, &t_eval);
    cr_assert_gt(t_eval, 20.0, "evaluation took only %.1f ms", t_eval);

    qd_rng rng;
    qd_rng_seed(&rng, 20261124, 7);
    const char *const distilling[] = {"distilling: ", "resuming distillation at", NULL};
    const char *const evaluating[] = {"evaluating: ", NULL};
    int kills_distill = 0, kills_eval = 0, resumed = 0;
    /* kills while distilling: each after a random 0..1/6 of the phase */
    for (int attempt = 0; attempt < 8 && kills_distill < 4; ++attempt) {
        child c;
        spawn(&c, b, long_run, N_LONG, NULL);
        int at = wait_for(&c, distilling);
        cr_assert(at >= 0, "no distillation started: %s", c.text);
        resumed += at == 1;
        double ms = t_distill / 6.0 * qd_rng_uniform(&rng);
        sleep_ms(ms);
        kill(c.pid, SIGKILL);
        int rc = finish(&c);
        cr_assert_eq(rc, 128 + SIGKILL, "the run ended before the kill at +%.0f ms (%d): %s", ms,
                     rc, c.text);
        cr_assert(!exists(b, "result.json"));
        if (!strstr(c.text, "evaluating: "))
            kills_distill++;
        child_free(&c);
    }
    cr_expect_geq(kills_distill, 3, "only %d kills landed in distillation", kills_distill);
    cr_expect_geq(resumed, 1, "no run resumed from a checkpoint");
    /* kills while evaluating (12 models, a checkpoint after each) */
    for (int attempt = 0; attempt < 2; ++attempt) {
        child c;
        spawn(&c, b, long_run, N_LONG, NULL);
        cr_assert_geq(wait_for(&c, evaluating), 0, "no evaluation started: %s", c.text);
        sleep_ms(t_eval / 8.0 * qd_rng_uniform(&rng));
        kill(c.pid, SIGKILL);
        int rc = finish(&c);
        cr_assert_eq(rc, 128 + SIGKILL, "the run ended before the kill in evaluation: %s", c.text);
        cr_assert(!exists(b, "result.json"), "killed during evaluation, yet result.json exists");
        uint32_t phase;
        ckpt_iteration(b, &phase);
        cr_assert_eq(phase, 1, "the checkpoint is not in the evaluation phase");
        kills_eval++;
        child_free(&c);
    }
    cr_expect_geq(kills_eval, 1);
    run_to_end(b, long_run, N_LONG);
    same_run(a, b);
    rm_tmp();
}

static const char *const short_run[] = {"distill.iterations=150", "distill.checkpoint_every=5",
                                        "evaluate.models=12", "dataset.test_size=5000"};
#define N_SHORT (sizeof short_run / sizeof *short_run)

/* SIGINT/SIGTERM: exit 1 with a message saying a checkpoint was written
 * and how to resume; the checkpoint is there and the re-run completes. */
static void interrupt_once(const char *dir, int sig, const char *const *when, double delay_ms)
{
    child c;
    spawn(&c, dir, short_run, N_SHORT, NULL);
    cr_assert_geq(wait_for(&c, when), 0, "%s never appeared: %s", when[0], c.text);
    sleep_ms(delay_ms);
    kill(c.pid, sig);
    int rc = finish(&c);
    cr_expect_eq(rc, 1, "signal %d: exit %d: %s", sig, rc, c.text);
    cr_expect(strstr(c.text, "checkpoint written"), "%s", c.text);
    cr_expect(strstr(c.text, "run the same command again to resume"), "%s", c.text);
    cr_expect(exists(dir, "checkpoint.qdc"));
    cr_expect(!exists(dir, "result.json"));
    child_free(&c);
}

Test(resume, sigint_and_sigterm_checkpoint_and_resume_exactly, .timeout = 120)
{
    make_tmp();
    char a[400], b[400];
    snprintf(a, sizeof a, "%s/A", g_tmp);
    snprintf(b, sizeof b, "%s/B", g_tmp);
    double t_distill, t_eval;
    run_timed(a, short_run, N_SHORT, &t_distill, &t_eval);
    const char *const distilling[] = {"distilling: ", "resuming distillation at", NULL};
    const char *const evaluating[] = {"distilled set, model 2/12", NULL};
    /* delays are fractions of the measured time, small enough to land in
     * distillation when the load on a shared machine changes between the
     * timed run and these: the second one scales with what is left */
    interrupt_once(b, SIGINT, distilling, t_distill / 8);
    uint32_t phase;
    uint64_t it1 = ckpt_iteration(b, &phase);
    cr_assert(phase == 0 && it1 > 0 && it1 < 150, "SIGINT checkpoint: phase %u iteration %llu",
              phase, (unsigned long long)it1);
    interrupt_once(b, SIGTERM, distilling, t_distill * (double)(150 - it1) / 150.0 / 8);
    uint64_t it2 = ckpt_iteration(b, &phase);
    cr_expect(phase == 0 && it2 > it1, "SIGTERM checkpoint: iteration %llu after %llu",
              (unsigned long long)it2, (unsigned long long)it1);
    interrupt_once(b, SIGTERM, evaluating, 0);
    ckpt_iteration(b, &phase);
    cr_expect_eq(phase, 1, "interrupted during evaluation: phase %u", phase);
    run_to_end(b, short_run, N_SHORT);
    same_run(a, b);
    rm_tmp();
}

/* A full disk while checkpointing: exit 1 naming the file, the previous
 * checkpoint intact, and a re-run without the fault finishes exactly. */
Test(resume, disk_full_keeps_the_previous_checkpoint, .timeout = 120)
{
    make_tmp();
    char a[400], b[400];
    snprintf(a, sizeof a, "%s/A", g_tmp);
    snprintf(b, sizeof b, "%s/B", g_tmp);
    run_to_end(a, short_run, N_SHORT);
    /* ~20 kB: the manifest, the first checkpoint (~15 kB) and a few CSV
     * rows fit; the second checkpoint does not */
    child c;
    spawn(&c, b, short_run, N_SHORT, "QD_IO_FAIL_AFTER=20000");
    int rc = finish(&c);
    cr_expect_eq(rc, 1, "exit %d: %s", rc, c.text);
    char want[600];
    snprintf(want, sizeof want, "%s/checkpoint.qdc", b);
    cr_expect(strstr(c.text, want), "the message names the checkpoint: %s", c.text);
    cr_expect(strstr(c.text, "No space left on device"), "%s", c.text);
    child_free(&c);
    uint32_t phase;
    uint64_t it = ckpt_iteration(b, &phase);
    cr_expect(phase == 0 && it >= 5 && it < 150, "kept checkpoint: phase %u iteration %llu", phase,
              (unsigned long long)it);
    cr_expect(!exists(b, "result.json"));
    run_to_end(b, short_run, N_SHORT);
    same_run(a, b);
    rm_tmp();
}
