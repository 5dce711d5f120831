/* End-to-end tests of qdistill sweep and qdistill table: grids, directory
 * names, sweep.yaml, skipping and resuming, failures, and the table's
 * numbers against an independent computation from the result.json files. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "qdistill/config.h"
#include "qdistill/json.h"

#include "cli_util.h"

#define TINY "tests/cli/manifests/tiny-distill.yaml"

static struct stat stat_of(const char *dir, const char *job, const char *file)
{
    char p[1024];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s/%s", dir, job, file);
    cr_assert_eq(stat(p, &st), 0, "missing %s", p);
    return st;
}

static int same_file(struct stat a, struct stat b)
{
    return a.st_ino == b.st_ino && a.st_mtim.tv_sec == b.st_mtim.tv_sec &&
           a.st_mtim.tv_nsec == b.st_mtim.tv_nsec;
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

/* mean and sample std, computed here rather than by the library */
static void stats2(double a, double b, double *m, double *s)
{
    *m = (a + b) / 2;
    *s = fabs(a - b) / sqrt(2.0);
}

static const char *const JOBS4[] = {
    "distill.images_per_class=1,seed=1", "distill.images_per_class=1,seed=2",
    "distill.images_per_class=2,seed=1", "distill.images_per_class=2,seed=2"};

Test(sweep, grid_runs_each_point_then_rerun_skips_all)
{
    make_tmp();
    char *out, *err;
    int rc = qd(&out, &err,
                "sweep " TINY " seed=1,2 distill.images_per_class=1,2 distill.iterations=20 "
                "--out %s/sw -j 2",
                g_tmp);
    cr_assert_eq(rc, 0, "stdout: %s\nstderr: %s", out, err);
    cr_expect(strstr(out, "4 jobs: 4 done, 0 skipped"), "%s", out);
    free(out);
    free(err);
    char sw[300];
    snprintf(sw, sizeof sw, "%s/sw", g_tmp);
    struct stat before[4];
    for (int j = 0; j < 4; ++j) {
        char d[600];
        snprintf(d, sizeof d, "%s/%s", sw, JOBS4[j]);
        cr_expect(exists(d, "result.json"), "%s", d);
        cr_expect(exists(d, "manifest.yaml"), "%s", d);
        before[j] = stat_of(sw, JOBS4[j], "result.json");
        /* the job ran with its own overrides */
        char *ovr = slurp((snprintf(d, sizeof d, "%s/%s/overrides.txt", sw, JOBS4[j]), d));
        char want[64];
        snprintf(want, sizeof want, "seed=%d", j % 2 + 1);
        cr_expect(strstr(ovr, want) && strstr(ovr, "distill.iterations=20"), "%s", ovr);
        free(ovr);
        /* its output went to the sweep's log, with -j 2 but the manifest's 1 thread */
        snprintf(d, sizeof d, "%s/logs/%s.log", sw, JOBS4[j]);
        char *log = slurp(d);
        cr_expect(strstr(log, "--threads 1"), "%s", log);
        free(log);
    }

    /* sweep.yaml records manifest, fixed overrides, grid and jobs */
    char p[600];
    snprintf(p, sizeof p, "%s/sweep.yaml", sw);
    qd_config *cfg = NULL;
    qd_error e;
    cr_assert_eq(qd_config_load(p, NULL, &cfg, &e), QD_OK, "%s", e.msg);
    const qd_node *r = qd_config_root(cfg);
    char man[600];
    snprintf(man, sizeof man, "%s/" TINY, srcdir());
    char *real = realpath(man, NULL);
    cr_assert(real);
    cr_expect_str_eq(qd_node_str(qd_node_get(r, "manifest")), real);
    free(real);
    cr_expect_str_eq(qd_node_str(qd_node_at(qd_node_get(r, "overrides"), 0)),
                     "distill.iterations=20");
    const qd_node *g = qd_node_get(r, "grid");
    cr_expect_eq(qd_node_len(g), 2);
    cr_expect_eq(qd_node_len(qd_node_get(g, "seed")), 2);
    cr_expect_eq(qd_node_len(qd_node_get(g, "distill.images_per_class")), 2);
    const qd_node *jobs = qd_node_get(r, "jobs");
    cr_assert_eq(qd_node_len(jobs), 4);
    for (size_t j = 0; j < 4; ++j)
        cr_expect_str_eq(qd_node_str(qd_node_get(qd_node_at(jobs, j), "name")), JOBS4[j]);
    qd_config_destroy(cfg);

    /* the same sweep again (values in another order): everything skipped */
    rc = qd(&out, NULL,
            "sweep " TINY " distill.images_per_class=2,1 seed=2,1 distill.iterations=20 --out %s",
            sw);
    cr_expect_eq(rc, 0);
    cr_expect(strstr(out, "4 jobs: 0 done, 4 skipped"), "%s", out);
    free(out);
    for (int j = 0; j < 4; ++j)
        cr_expect(same_file(before[j], stat_of(sw, JOBS4[j], "result.json")), "%s redone",
                  JOBS4[j]);

    /* a different sweep into the same directory is refused */
    rc = qd(NULL, &err, "sweep " TINY " seed=1,3 distill.iterations=20 --out %s", sw);
    cr_expect_eq(rc, 2);
    cr_expect(strstr(err, "holds a different sweep"), "%s", err);
    free(err);
    rc = qd(NULL, &err, "sweep " TINY " seed=1,2 distill.images_per_class=1,2 --out %s", sw);
    cr_expect_eq(rc, 2);
    cr_expect(strstr(err, "holds a different sweep"), "%s", err);
    free(err);

    /* ---- table, against the result.json files ---- */
    double acc[4];
    for (int j = 0; j < 4; ++j)
        acc[j] = result_value(sw, JOBS4[j], "distilled.test_acc");
    double m1, s1, m2, s2;
    stats2(acc[0], acc[1], &m1, &s1);
    stats2(acc[2], acc[3], &m2, &s2);
    char c1[64], c2[64];
    snprintf(c1, sizeof c1, "%.2f ± %.2f", 100 * m1, 100 * s1);
    snprintf(c2, sizeof c2, "%.2f ± %.2f", 100 * m2, 100 * s2);

    /* default rows: the grid keys except seed */
    rc = qd(&out, &err, "table %s", sw);
    cr_assert_eq(rc, 0, "%s", err);
    char *l1 = strstr(out, "\n1 "), *l2 = strstr(out, "\n2 ");
    cr_expect(strncmp(out, "distill.images_per_class", 24) == 0, "%s", out);
    cr_expect(l1 && strstr(l1, c1) && l2 && strstr(l2, c2) && l1 < l2, "%s\nwant %s / %s", out,
              c1, c2);
    free(out);
    free(err);

    rc = qd(&out, NULL, "table %s --rows distill.images_per_class --format markdown", sw);
    cr_expect_eq(rc, 0);
    char want[256];
    snprintf(want, sizeof want, "| distill.images_per_class | distilled.test_acc |");
    cr_expect(strstr(out, want), "%s", out);
    cr_expect(strstr(out, "|---|---:|"), "%s", out);
    snprintf(want, sizeof want, "| 1 ");
    cr_expect(strstr(out, want), "%s", out);
    snprintf(want, sizeof want, "| %s", c2);
    cr_expect(strstr(out, want), "%s", out);
    free(out);

    rc = qd(&out, NULL, "table %s --rows distill.images_per_class --format csv", sw);
    cr_expect_eq(rc, 0);
    cr_expect(strncmp(out, "distill.images_per_class,n,mean,std\n", 36) == 0, "%s", out);
    {
        int k1, n1, k2, n2;
        double cm1, cs1, cm2, cs2;
        int got = sscanf(out + 36, "%d,%d,%lf,%lf\n%d,%d,%lf,%lf", &k1, &n1, &cm1, &cs1, &k2,
                         &n2, &cm2, &cs2);
        cr_expect_eq(got, 8, "%s", out);
        cr_expect(k1 == 1 && n1 == 2 && k2 == 2 && n2 == 2, "%s", out);
        cr_expect(fabs(cm1 - m1) < 1e-12 && fabs(cs1 - s1) < 1e-12, "%s vs %g %g", out, m1, s1);
        cr_expect(fabs(cm2 - m2) < 1e-12 && fabs(cs2 - s2) < 1e-12, "%s vs %g %g", out, m2, s2);
    }
    free(out);

    /* rows x cols, another value: one run per cell, std 0 */
    rc = qd(&out, NULL,
            "table %s --rows seed --cols distill.images_per_class "
            "--value baselines.random_subset.test_acc --format csv",
            sw);
    cr_expect_eq(rc, 0);
    cr_expect(strncmp(out, "seed,distill.images_per_class,n,mean,std\n", 41) == 0, "%s", out);
    {
        const char *p2 = out + 41;
        /* rows in sweep order: seed 1 (ipc 1, 2), then seed 2 */
        static const int seed_of[4] = {1, 1, 2, 2}, ipc_of[4] = {1, 2, 1, 2}, job_of[4] = {0, 2, 1, 3};
        for (int k = 0; k < 4; ++k) {
            int sd, ipc, n, used = 0;
            double m, s;
            cr_assert_eq(sscanf(p2, "%d,%d,%d,%lf,%lf\n%n", &sd, &ipc, &n, &m, &s, &used), 5,
                         "%s", out);
            double want_v = result_value(sw, JOBS4[job_of[k]], "baselines.random_subset.test_acc");
            cr_expect(sd == seed_of[k] && ipc == ipc_of[k] && n == 1 && s == 0, "%s", out);
            cr_expect(fabs(m - want_v) < 1e-12, "%s: %g vs %g", out, m, want_v);
            p2 += used;
        }
    }
    free(out);

    /* a run without the value is reported and skipped; n is shown when < all */
    char from[700], to[700];
    snprintf(from, sizeof from, "%s/%s/result.json", sw, JOBS4[3]);
    snprintf(to, sizeof to, "%s/moved.json", g_tmp);
    cr_assert_eq(rename(from, to), 0);
    rc = qd(&out, &err, "table %s", sw);
    cr_expect_eq(rc, 0);
    snprintf(want, sizeof want, "%.2f ± 0.00 (n=1)", 100 * acc[2]);
    cr_expect(strstr(out, want), "%s\nwant %s", out, want);
    cr_expect(strstr(err, JOBS4[3]) && strstr(err, "no result.json"), "%s", err);
    free(out);
    free(err);
    rc = qd(NULL, &err, "table %s --value distilled.nope", sw);
    cr_expect_eq(rc, 1);
    cr_expect(strstr(err, "distilled.nope"), "%s", err);
    free(err);
    rm_tmp();
}

Test(sweep, manifest_grid_command_line_and_validation)
{
    make_tmp();
    /* tiny-distill plus a sweep section */
    char src[600], man[600];
    snprintf(src, sizeof src, "%s/" TINY, srcdir());
    snprintf(man, sizeof man, "%s/m.yaml", g_tmp);
    char *text = slurp(src);
    FILE *f = fopen(man, "w");
    cr_assert(f);
    fprintf(f, "%ssweep:\n  grid:\n    seed: \"range(1, 3)\"\n    evaluate.models: [1, 2]\n",
            text);
    fclose(f);
    char *out, *err;
    cr_expect_eq(qd(&out, &err, "sweep %s --dry-run", man), 0, "%s", err);
    cr_expect_str_eq(out, "evaluate.models=1,seed=1\nevaluate.models=1,seed=2\n"
                          "evaluate.models=2,seed=1\nevaluate.models=2,seed=2\n");
    free(out);
    free(err);
    /* command-line lists add and replace keys; a plain value pins a key */
    cr_expect_eq(qd(&out, NULL, "sweep %s 'seed=range(7,2,-3)' evaluate.models=1 "
                                "distill.steps=1,2 --dry-run", man), 0);
    cr_expect_str_eq(out, "distill.steps=1,seed=7\ndistill.steps=1,seed=4\n"
                          "distill.steps=2,seed=7\ndistill.steps=2,seed=4\n");
    free(out);

    /* a bad sweep section: every problem, located */
    size_t lines = 0;
    for (const char *p = text; *p; ++p)
        lines += *p == '\n';
    f = fopen(man, "w");
    cr_assert(f);
    fprintf(f, "%ssweep:\n  grid:\n    seed: []\n    evaluate.models: [[1], 2]\n"
               "    distill.steps: \"range(3, 3)\"\n  order: 1\n",
            text);
    fclose(f);
    cr_expect_eq(qd(NULL, &err, "sweep %s --out %s/never", man, g_tmp), 2);
    char want[700];
    snprintf(want, sizeof want, "%s:%zu:11: sweep.grid.seed: expected a non-empty list", man,
             lines + 3);
    cr_expect(strstr(err, want), "%s\nwant %s", err, want);
    snprintf(want, sizeof want, "%s:%zu:23: sweep.grid.evaluate.models: each value must be a "
                                "scalar or a mapping", man, lines + 4);
    cr_expect(strstr(err, want), "%s\nwant %s", err, want);
    snprintf(want, sizeof want, "%s:%zu:20: sweep.grid.distill.steps: 'range(3, 3)' is empty",
             man, lines + 5);
    cr_expect(strstr(err, want), "%s\nwant %s", err, want);
    snprintf(want, sizeof want, "%s:%zu:3: sweep: unknown key 'order'", man, lines + 6);
    cr_expect(strstr(err, want), "%s\nwant %s", err, want);
    cr_expect(!exists(g_tmp, "never"));
    free(err);
    free(text);
    rm_tmp();
}

/* A grid over whole sections (how experiments/compare-distillers.yaml
 * compares distillers whose keys differ): each mapping is one value, named
 * by its plugin (repeated plugins get -<position>), combined with nested
 * keys of the same section; the jobs run and land in the table by plugin. */
Test(sweep, mapping_values_swap_whole_sections)
{
    make_tmp();
    char src[600], man[600];
    snprintf(src, sizeof src, "%s/" TINY, srcdir());
    snprintf(man, sizeof man, "%s/m.yaml", g_tmp);
    char *text = slurp(src);
    FILE *f = fopen(man, "w");
    cr_assert(f);
    fprintf(f, "%ssweep:\n  grid:\n    distill:\n"
               "      - {plugin: performance_matching, steps: 1, epochs: 2, iterations: 3,\n"
               "         validate_every: 0, checkpoint_every: 10}\n"
               "      - {plugin: random_subset}\n"
               "      - {plugin: random_subset, images_per_class: 3}\n"
               "    distill.images_per_class: [1, 2]\n",
            text);
    fclose(f);
    char *out, *err;
    cr_expect_eq(qd(&out, &err, "sweep %s --dry-run", man), 0, "%s", err);
    cr_expect_str_eq(out, "distill=performance_matching,distill.images_per_class=1\n"
                          "distill=performance_matching,distill.images_per_class=2\n"
                          "distill=random_subset,distill.images_per_class=1\n"
                          "distill=random_subset,distill.images_per_class=2\n"
                          "distill=random_subset-3,distill.images_per_class=1\n"
                          "distill=random_subset-3,distill.images_per_class=2\n");
    free(out);
    free(err);
    char sw[700];
    snprintf(sw, sizeof sw, "%s/sw", g_tmp);
    cr_assert_eq(qd(NULL, &err, "sweep %s distill.images_per_class=2 --out %s -j 2", man, sw), 0,
                 "%s", err);
    free(err);
    /* the nested key applies after the section: 2 images per class each */
    char p[900];
    snprintf(p, sizeof p, "%s/distill=random_subset-3/result.json", sw);
    char *r = slurp(p);
    cr_expect(strstr(r, "\"images\": 8"), "%s", r);
    free(r);
    cr_assert_eq(qd(&out, &err, "table %s --rows distill.plugin --value distiller.images",
                    sw), 0, "%s", err);
    cr_expect(strstr(out, "performance_matching") && strstr(out, "random_subset"), "%s", out);
    free(out);
    free(err);
    free(text);
    rm_tmp();
}

/* model.file as a sweep axis: each point includes its file relative to the
 * manifest, and the table tells the points apart by the override although
 * the resolved manifests hold no `file` key. */
Test(sweep, model_files_are_a_sweep_axis)
{
    make_tmp();
    char src[600], path[700];
    snprintf(src, sizeof src, "%s/" TINY, srcdir());
    char *text = slurp(src);
    snprintf(path, sizeof path, "%s/m.yaml", g_tmp);
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fputs(text, f);
    fclose(f);
    free(text);
    snprintf(path, sizeof path, "%s/conv.yaml", g_tmp);
    cr_assert(f = fopen(path, "w"));
    fputs("layers:\n  - {name: c1, type: conv2d, out_channels: 4, kernel: 3, padding: 1}\n"
          "  - {type: relu}\n  - {type: maxpool2d, kernel: 2}\n  - {type: flatten}\n"
          "  - {name: out, type: linear, out: 4}\n", f);
    fclose(f);
    snprintf(path, sizeof path, "%s/linear.yaml", g_tmp);
    cr_assert(f = fopen(path, "w"));
    fputs("layers:\n  - {type: flatten}\n  - {name: out, type: linear, out: 4}\n", f);
    fclose(f);
    char *out, *err, sw[700];
    snprintf(sw, sizeof sw, "%s/sw", g_tmp);
    cr_assert_eq(qd(NULL, &err, "sweep %s/m.yaml model.file=conv.yaml,linear.yaml "
                                "distill.iterations=3 evaluate.models=1 --out %s -j 2",
                    g_tmp, sw), 0, "%s", err);
    free(err);
    /* parameters counted here: conv 4*(1*3*3)+4 = 40, linear 4*(4*4*4)+4 = 260;
     * flat linear 4*(8*8)+4 = 260 */
    cr_expect_eq(result_value(sw, "model.file=conv.yaml", "model.params"), 300);
    cr_expect_eq(result_value(sw, "model.file=linear.yaml", "model.params"), 260);
    cr_assert_eq(qd(&out, &err, "table %s --rows model.file --value model.params "
                                "--format csv", sw), 0, "%s", err);
    cr_expect(strstr(out, "\nconv.yaml,1,300,") && strstr(out, "\nlinear.yaml,1,260,"), "%s", out);
    free(out);
    free(err);
    rm_tmp();
}

Test(sweep, bad_grids_exit_2_before_anything_starts)
{
    make_tmp();
    static const char *const cases[][2] = {
        {"'seed=range(1,x)'", "range takes 1 to 3 integers"},
        {"'seed=range(1,5,0)'", "the step of a range must not be 0"},
        {"seed=1,,2", "empty value in the list"},
        {"seed=1,2,1", "value '1' is listed twice"},
        {"'seed=[1,2'", "bad value '[1,2' for 'seed'"},
        {"seed=1,2 distill.nope=1,2", "unknown key 'nope'"},
        /* one grid point of four is invalid: none starts */
        {"seed=1,2 distill.steps=1,-1", "distill.steps"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
        char *err;
        int rc = qd(NULL, &err, "sweep " TINY " %s --out %s/sw", cases[i][0], g_tmp);
        cr_expect_eq(rc, 2, "%s: exit %d", cases[i][0], rc);
        cr_expect(strstr(err, cases[i][1]), "%s: %s", cases[i][0], err);
        cr_expect(!exists(g_tmp, "sw"), "%s started something", cases[i][0]);
        free(err);
    }
    cr_expect_eq(qd(NULL, NULL, "sweep " TINY " seed=1,2 -j 0"), 2);
    cr_expect_eq(qd(NULL, NULL, "sweep"), 2);
    rm_tmp();
}

Test(sweep, a_failing_job_leaves_the_others_and_fail_fast_stops)
{
    make_tmp();
    char *out, *err;
    /* validation=1000 passes the schema but leaves no training data: the job
     * fails at run time */
    int rc = qd(&out, &err, "sweep " TINY " dataset.validation=1000,100 distill.iterations=10 "
                            "--out %s/sw", g_tmp);
    cr_expect_eq(rc, 1, "%s", err);
    cr_expect(strstr(out, "2 jobs: 1 done, 0 skipped (finished before), 1 failed"), "%s", out);
    char want[600];
    snprintf(want, sizeof want, "failed: dataset.validation=1000 (exit 1), log %s/sw/logs/"
                                "dataset.validation=1000.log", g_tmp);
    cr_expect(strstr(out, want), "%s\nwant %s", out, want);
    char sw[300];
    snprintf(sw, sizeof sw, "%s/sw", g_tmp);
    cr_expect(exists(sw, "dataset.validation=100/result.json"));
    char *log = slurp((snprintf(want, sizeof want, "%s/logs/dataset.validation=1000.log", sw),
                       want));
    cr_expect(strstr(log, "leaves no training samples"), "%s", log);
    free(log);
    free(out);
    free(err);

    /* --fail-fast: the first failure stops the sweep, later jobs never start */
    rc = qd(&out, NULL, "sweep " TINY " dataset.validation=1000,100 seed=1,2 "
                        "distill.iterations=10 --fail-fast --out %s/ff", g_tmp);
    cr_expect_eq(rc, 1);
    cr_expect(strstr(out, "4 jobs: 0 done, 0 skipped (finished before), 1 failed, 3 not "
                          "finished"), "%s", out);
    snprintf(sw, sizeof sw, "%s/ff", g_tmp);
    cr_expect(!exists(sw, "dataset.validation=1000,seed=2"));
    cr_expect(!exists(sw, "dataset.validation=100,seed=1"));
    free(out);
    rm_tmp();
}

Test(sweep, killed_sweep_resumes_without_redoing_finished_jobs)
{
    make_tmp();
    char sw[300], o[300];
    snprintf(sw, sizeof sw, "%s/sw", g_tmp);
    snprintf(o, sizeof o, "%s/killed.out", g_tmp);
    char exe[400];
    snprintf(exe, sizeof exe, "%s/qdistill", builddir());
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        /* its own process group, so that the kill takes the running job too,
         * as a crash of the machine would */
        setpgid(0, 0);
        if (chdir(srcdir()) != 0 || !freopen(o, "w", stdout) || !freopen(o, "a", stderr))
            _exit(127);
        execl(exe, "qdistill", "--quiet", "sweep", TINY, "seed=1,2,3", "distill.iterations=1500",
              "--out", sw, (char *)NULL);
        _exit(127);
    }
    setpgid(pid, pid);
    /* wait until job 1 is finished and job 2 has checkpointed */
    const char *j1 = "seed=1", *j2 = "seed=2", *j3 = "seed=3";
    char p1[600], p2[600];
    snprintf(p1, sizeof p1, "%s/result.json", j1);
    snprintf(p2, sizeof p2, "%s/checkpoint.qdc", j2);
    int ok = 0;
    for (int i = 0; i < 1200 && !ok; ++i) {
        ok = exists(sw, p1) && exists(sw, p2);
        if (!ok)
            nanosleep(&(struct timespec){0, 25000000}, NULL);
    }
    kill(-pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    cr_assert(ok, "the sweep did not get to job 2 in 30 s");
    char r2[600];
    snprintf(r2, sizeof r2, "%s/result.json", j2);
    int j2_done = exists(sw, r2);
    if (j2_done)
        cr_log_warn("job 2 finished before the kill; the resume path was not exercised");
    cr_expect(!exists(sw, j3), "job 3 should not have started");
    struct stat before = stat_of(sw, j1, "result.json");

    char *out, *err;
    int rc = qd(&out, &err, "sweep " TINY " seed=1,2,3 distill.iterations=1500 --out %s", sw);
    cr_expect_eq(rc, 0, "%s", err);
    cr_expect(strstr(out, j2_done ? "3 jobs: 1 done, 2 skipped" : "3 jobs: 2 done, 1 skipped"),
              "%s", out);
    cr_expect(same_file(before, stat_of(sw, j1, "result.json")), "job 1 was redone");
    cr_expect(exists(sw, r2));
    char lp[700];
    snprintf(lp, sizeof lp, "%s/%s/log.txt", sw, j2);
    char *log = slurp(lp);
    cr_expect(j2_done || strstr(log, "resuming distillation at iteration"), "%s", log);
    free(log);
    free(out);
    free(err);
    rm_tmp();
}
