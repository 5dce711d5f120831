/* `qdistill evaluate RUN_DIR`: the synthetic set of a finished run evaluated
 * again, with the same code path as `run` (same settings: the same numbers
 * bit for bit), other evaluate.* settings, validation of the run directory's
 * files, and resuming an interrupted evaluation. */
#define _XOPEN_SOURCE 700   /* realpath */
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qdistill/json.h"
#include "qdistill/npy.h"

#include "cli_util.h"

static char g_run[400];

static qd_json_value *read_json(const char *dir, const char *name)
{
    char p[700];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    qd_json_value *v = NULL;
    qd_error e;
    cr_assert_eq(qd_json_read_file(p, &v, &e), 0, "%s: %s", p, e.msg);
    return v;
}

/* The numbers under `path` of a and b are the same, bit for bit. */
static void same_numbers(const qd_json_value *a, const qd_json_value *b, const char *path)
{
    const qd_json_value *x = qd_json_get(a, path), *y = qd_json_get(b, path);
    cr_assert(x && y, "%s missing", path);
    cr_assert_eq(qd_json_type_of(x), qd_json_type_of(y), "%s", path);
    if (qd_json_type_of(x) == QD_JSON_ARRAY) {
        cr_assert_eq(qd_json_size(x), qd_json_size(y), "%s", path);
        for (size_t i = 0; i < qd_json_size(x); ++i) {
            double u = qd_json_as_number(qd_json_at(x, i)), v = qd_json_as_number(qd_json_at(y, i));
            cr_expect(memcmp(&u, &v, sizeof u) == 0, "%s[%zu]: %.17g vs %.17g", path, i, u, v);
        }
    } else {
        double u = qd_json_as_number(x), v = qd_json_as_number(y);
        cr_expect(memcmp(&u, &v, sizeof u) == 0, "%s: %.17g vs %.17g", path, u, v);
    }
}

/* A finished tiny distillation in g_run (EXTRA: more overrides). */
static void setup_run(const char *extra)
{
    snprintf(g_tmp, sizeof g_tmp, "/tmp/qd_eval_XXXXXX");
    cr_assert(mkdtemp(g_tmp));
    snprintf(g_run, sizeof g_run, "%s/run", g_tmp);
    char *err;
    int rc = qd(NULL, &err, "run tests/cli/manifests/tiny-distill.yaml %s --out '%s'",
                extra ? extra : "", g_run);
    cr_assert_eq(rc, 0, "%s", err);
    free(err);
}

static void teardown(void)
{
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    cr_expect_eq(system(cmd), 0);
}

Test(evaluate, same_settings_reproduce_result_json_and_leave_it_alone)
{
    setup_run(NULL);
    char path[600];
    snprintf(path, sizeof path, "%s/result.json", g_run);
    char *before = slurp(path);
    char *out, *err;
    int rc = qd(&out, &err, "evaluate '%s'", g_run);
    cr_assert_eq(rc, 0, "%s", err);
    char want[600];
    snprintf(want, sizeof want, "%s/evaluation.json\n", g_run);
    cr_expect_str_eq(out, want);
    free(out);
    free(err);
    char *after = slurp(path);
    cr_expect_str_eq(after, before, "result.json changed");
    free(after);
    free(before);
    /* the set read back from the .npy files, evaluated by the same code
     * with the same settings: the numbers of result.json */
    qd_json_value *r = read_json(g_run, "result.json"), *e = read_json(g_run, "evaluation.json");
    const char *paths[] = {"distilled.test_accs", "distilled.test_acc",
                           "baselines.untrained.test_accs", "baselines.random_subset.test_accs",
                           "baselines.random_subset_lr", "distiller.learned_lrs"};
    for (size_t i = 0; i < sizeof paths / sizeof *paths; ++i)
        same_numbers(r, e, paths[i]);
    const char *init = NULL;
    cr_expect_eq(qd_json_get_string(e, "distiller.init", &init, NULL), 0);
    cr_expect_str_eq(init, "fixed");
    qd_json_value_free(r);
    qd_json_value_free(e);
    cr_expect(!exists(g_run, "evaluation.qdc"), "the evaluation checkpoint is removed when done");
    teardown();
}

Test(evaluate, other_settings_are_named_after_the_overrides)
{
    setup_run(NULL);
    char *out, *err;
    int rc = qd(&out, &err, "evaluate '%s' evaluate.models=4 evaluate.init=random", g_run);
    cr_assert_eq(rc, 0, "%s", err);
    cr_expect(strstr(out, "/evaluation-models-4_init-random.json"), "%s", out);
    free(out);
    free(err);
    qd_json_value *e = read_json(g_run, "evaluation-models-4_init-random.json");
    double n, std;
    cr_expect_eq(qd_json_get_number(e, "distilled.models", &n, NULL), 0);
    cr_expect_eq(n, 4);
    cr_expect_eq(qd_json_get_number(e, "baselines.untrained.models", &n, NULL), 0);
    cr_expect_eq(n, 4, "random init: one untrained model per evaluation model");
    /* four different random initialisations, not the fixed one four times */
    cr_expect_eq(qd_json_get_number(e, "baselines.untrained.test_acc_std", &std, NULL), 0);
    cr_expect_gt(std, 0.0);
    const char *s = NULL;
    cr_expect_eq(qd_json_get_string(e, "distiller.evaluate_init", &s, NULL), 0);
    cr_expect_str_eq(s, "random");
    qd_json_value_free(e);

    rc = qd(&out, &err, "evaluate '%s' evaluate.models=2 --name two", g_run);
    cr_expect_eq(rc, 0, "%s", err);
    cr_expect(strstr(out, "/evaluation-two.json"), "%s", out);
    free(out);
    free(err);
    cr_expect(exists(g_run, "evaluation-two.json"));

    /* anything but evaluate.* would evaluate a set distilled differently */
    rc = qd(NULL, &err, "evaluate '%s' seed=4", g_run);
    cr_expect_eq(rc, 2);
    cr_expect(strstr(err, "only evaluate.* settings"), "%s", err);
    free(err);
    rc = qd(NULL, &err, "evaluate '%s' distill.steps=1", g_run);
    cr_expect_eq(rc, 2);
    free(err);
    rc = qd(NULL, &err, "evaluate '%s' evaluate.modles=3", g_run);
    cr_expect_eq(rc, 2, "a misspelt evaluate key is a manifest error");
    cr_expect(strstr(err, "models"), "%s", err);
    free(err);
    rc = qd(NULL, &err, "evaluate '%s/nothing-here'", g_tmp);
    cr_expect_eq(rc, 2);
    cr_expect(strstr(err, "not a run directory"), "%s", err);
    free(err);
    rc = qd(NULL, &err, "evaluate '%s' --name ../x", g_run);
    cr_expect_eq(rc, 2);
    free(err);
    teardown();
}

/* Each broken file: exit 1 and a message naming it and what is wrong. */
static void expect_broken(const char *file, const char *needle)
{
    char *err;
    int rc = qd(NULL, &err, "evaluate '%s'", g_run);
    cr_expect_eq(rc, 1, "%s: exit %d: %s", file, rc, err);
    char full[700];
    snprintf(full, sizeof full, "%s/%s", g_run, file);
    cr_expect(strstr(err, full), "the message names %s: %s", full, err);
    cr_expect(strstr(err, needle), "'%s' not in: %s", needle, err);
    free(err);
    cr_expect(!exists(g_run, "evaluation.json"));
}

static void save_copy(const char *file, int restore)
{
    char cmd[1600];
    snprintf(cmd, sizeof cmd, restore ? "cp '%s/%s.bak' '%s/%s'" : "cp '%s/%s' '%s/%s.bak'",
             g_run, file, g_run, file);
    cr_assert_eq(system(cmd), 0);
}

Test(evaluate, corrupt_or_mismatched_files_are_named)
{
    setup_run(NULL);
    char p[700];
    qd_error e;
    /* missing */
    save_copy("synthetic_lrs.npy", 0);
    snprintf(p, sizeof p, "%s/synthetic_lrs.npy", g_run);
    cr_assert_eq(unlink(p), 0);
    expect_broken("synthetic_lrs.npy", "no such file");
    save_copy("synthetic_lrs.npy", 1);
    /* truncated */
    save_copy("synthetic_labels.npy", 0);
    snprintf(p, sizeof p, "%s/synthetic_labels.npy", g_run);
    cr_assert_eq(truncate(p, 140), 0);
    expect_broken("synthetic_labels.npy", "");
    /* wrong dtype */
    double dl[8] = {0};
    size_t n8[1] = {8};
    cr_assert_eq(qd_npy_write(p, QD_NPY_F8, n8, 1, dl, &e), 0);
    expect_broken("synthetic_labels.npy", "'<i4'");
    /* a label outside the data set's classes */
    int32_t lab[8] = {0, 1, 2, 3, 0, 1, 2, 9};
    cr_assert_eq(qd_npy_write(p, QD_NPY_I4, n8, 1, lab, &e), 0);
    expect_broken("synthetic_labels.npy", "label 7 is 9");
    save_copy("synthetic_labels.npy", 1);
    /* images of another input shape */
    save_copy("synthetic_images.npy", 0);
    snprintf(p, sizeof p, "%s/synthetic_images.npy", g_run);
    double im[8 * 16] = {0};
    size_t shp[4] = {8, 1, 4, 4};
    cr_assert_eq(qd_npy_write(p, QD_NPY_F8, shp, 4, im, &e), 0);
    expect_broken("synthetic_images.npy", "does not fit the model's input");
    /* a NaN pixel */
    double im8[8 * 64] = {0};
    im8[100] = NAN;
    size_t shp8[4] = {8, 1, 8, 8};
    cr_assert_eq(qd_npy_write(p, QD_NPY_F8, shp8, 4, im8, &e), 0);
    expect_broken("synthetic_images.npy", "element 100 is nan");
    save_copy("synthetic_images.npy", 1);
    /* a step structure the arrays do not have */
    save_copy("synthetic.json", 0);
    snprintf(p, sizeof p, "%s/synthetic.json", g_run);
    FILE *f = fopen(p, "w");
    cr_assert(f);
    fputs("{\"steps\": 3, \"epochs\": 2, \"per_step\": 4, \"classes\": 4, \"init\": \"fixed\"}",
          f);
    fclose(f);
    expect_broken("synthetic_images.npy", "do not make 3 steps");
    save_copy("synthetic.json", 1);
    /* everything restored: it evaluates */
    char *err;
    cr_expect_eq(qd(NULL, &err, "evaluate '%s'", g_run), 0, "%s", err);
    free(err);
    teardown();
}

/* The init mode the set was distilled for comes back from the run
 * directory: synthetic.json, or the resolved manifest without it. */
Test(evaluate, init_mode_of_the_set_is_recovered)
{
    setup_run("distill.model_init=random");
    char *err;
    cr_assert_eq(qd(NULL, &err, "evaluate '%s'", g_run), 0, "%s", err);
    free(err);
    qd_json_value *r = read_json(g_run, "result.json"), *e = read_json(g_run, "evaluation.json");
    const char *init = NULL;
    cr_expect_eq(qd_json_get_string(e, "distiller.init", &init, NULL), 0);
    cr_expect_str_eq(init, "random");
    same_numbers(r, e, "distilled.test_accs");
    qd_json_value_free(e);
    /* a run directory from before synthetic.json: from distill.model_init */
    char p[700];
    snprintf(p, sizeof p, "%s/synthetic.json", g_run);
    cr_assert_eq(unlink(p), 0);
    cr_assert_eq(qd(NULL, &err, "evaluate '%s' --name old", g_run), 0, "%s", err);
    free(err);
    e = read_json(g_run, "evaluation-old.json");
    cr_expect_eq(qd_json_get_string(e, "distiller.init", &init, NULL), 0);
    cr_expect_str_eq(init, "random");
    same_numbers(r, e, "distilled.test_accs");
    same_numbers(r, e, "baselines.random_subset.test_accs");
    qd_json_value_free(e);
    qd_json_value_free(r);
    teardown();
}

/* SIGTERM during `evaluate`: exit 1, checkpoint written; the re-run
 * finishes with the numbers of an uninterrupted evaluation. */
Test(evaluate, interrupted_evaluation_resumes_exactly)
{
    setup_run(NULL);
    char *err;
    cr_assert_eq(qd(NULL, &err, "evaluate '%s' evaluate.models=30 --name ref", g_run), 0, "%s",
                 err);
    free(err);
    /* started in the background, terminated after its second model */
    char cmd[2400], errf[400];
    snprintf(errf, sizeof errf, "%s/bg.err", g_tmp);
    snprintf(cmd, sizeof cmd,
             "cd '%s' && { '%s/qdistill' evaluate '%s' evaluate.models=30 2>'%s' & pid=$!; "
             "for i in $(seq 1 3000); do grep -q 'model 2/30' '%s' && break; sleep 0.005; done; "
             "kill -TERM $pid; wait $pid; echo $? > '%s/bg.rc'; }",
             srcdir(), builddir(), g_run, errf, errf, g_tmp);
    cr_assert_eq(system(cmd), 0);
    char rcp[400];
    snprintf(rcp, sizeof rcp, "%s/bg.rc", g_tmp);
    char *rc = slurp(rcp), *msg = slurp(errf);
    cr_expect_eq(atoi(rc), 1, "exit %s: %s", rc, msg);
    cr_expect(strstr(msg, "checkpoint written") && strstr(msg, "run the same command again"),
              "%s", msg);
    free(rc);
    free(msg);
    cr_expect(exists(g_run, "evaluation-models-30.qdc"));
    cr_expect(!exists(g_run, "evaluation-models-30.json"));
    cr_assert_eq(qd(NULL, &err, "evaluate '%s' evaluate.models=30", g_run), 0, "%s", err);
    cr_expect(strstr(err, "resuming the evaluation"), "%s", err);
    free(err);
    cr_expect(!exists(g_run, "evaluation-models-30.qdc"));
    qd_json_value *a = read_json(g_run, "evaluation-ref.json"),
                  *b = read_json(g_run, "evaluation-models-30.json");
    same_numbers(a, b, "distilled.test_accs");
    same_numbers(a, b, "baselines.untrained.test_accs");
    same_numbers(a, b, "baselines.random_subset.test_accs");
    same_numbers(a, b, "baselines.random_subset_lr");
    qd_json_value_free(a);
    qd_json_value_free(b);
    teardown();
}

/* Relative paths of the manifest resolve from the directory of the manifest
 * the run was started with (recorded in synthetic.json), not from RUN_DIR:
 * evaluate.full_data here only exists seen from tests/cli/manifests. */
Test(evaluate, relative_paths_resolve_from_the_original_manifest_directory)
{
    setup_run(NULL);
    char full[600];
    snprintf(full, sizeof full, "%s/full.json", g_tmp);
    FILE *f = fopen(full, "w");
    cr_assert(f);
    fputs("{\"train\": {\"test_acc\": 0.625}}\n", f);
    fclose(f);
    char mdir[600], rel[2048];
    cr_assert(realpath(srcdir(), mdir));
    strcat(mdir, "/tests/cli/manifests");
    /* up to / from the manifests' directory, via ../manifests, which does
     * not exist next to the run directory */
    size_t k = (size_t)snprintf(rel, sizeof rel, "../manifests/");
    for (const char *p = mdir; *p; ++p)
        if (*p == '/')
            k += (size_t)snprintf(rel + k, sizeof rel - k, "../");
    snprintf(rel + k, sizeof rel - k, "%s", full + 1);
    char *err;
    int rc = qd(NULL, &err, "evaluate '%s' evaluate.full_data='%s' --name full", g_run, rel);
    cr_assert_eq(rc, 0, "%s", err);
    free(err);
    qd_json_value *e = read_json(g_run, "evaluation-full.json");
    double acc = 0;
    cr_expect_eq(qd_json_get_number(e, "baselines.full_data.test_acc", &acc, NULL), 0,
                 "evaluate.full_data=%s not found", rel);
    cr_expect_eq(acc, 0.625);
    qd_json_value_free(e);
    /* a run directory without synthetic.json: from RUN_DIR, which does not
     * find it, unless --manifest-dir names the directory */
    char p[700];
    snprintf(p, sizeof p, "%s/synthetic.json", g_run);
    cr_assert_eq(unlink(p), 0);
    rc = qd(NULL, &err, "evaluate '%s' evaluate.full_data='%s' --name old", g_run, rel);
    cr_assert_eq(rc, 0, "%s", err);
    cr_expect(strstr(err, "no manifest_dir recorded"), "%s", err);
    free(err);
    e = read_json(g_run, "evaluation-old.json");
    cr_expect(!qd_json_get(e, "baselines.full_data"), "found from RUN_DIR?");
    qd_json_value_free(e);
    rc = qd(NULL, &err, "evaluate '%s' evaluate.full_data='%s' --name given "
            "--manifest-dir tests/cli/manifests", g_run, rel);
    cr_assert_eq(rc, 0, "%s", err);
    free(err);
    e = read_json(g_run, "evaluation-given.json");
    cr_expect_eq(qd_json_get_number(e, "baselines.full_data.test_acc", &acc, NULL), 0);
    cr_expect_eq(acc, 0.625);
    qd_json_value_free(e);
    teardown();
}

/* A set without learned step sizes (here a random real subset selected by
 * the random_subset distiller) is trained at a constant lr picked from
 * evaluate.lr_grid on the validation split, like the real-subset baseline:
 * never at a built-in constant. A grid holding only a useless lr must give
 * the untrained accuracy; a useful grid must beat it and report its pick. */
static double subset_run(const char *grid, double *lr, double *untrained)
{
    char *err;
    int rc = qd(NULL, &err,
                "run tests/cli/manifests/tiny-distill.yaml 'distill={plugin: random_subset, "
                "images_per_class: 5}' evaluate.recipe_epochs=20 'evaluate.lr_grid=%s' --out '%s'",
                grid, g_run);
    cr_assert_eq(rc, 0, "%s", err);
    free(err);
    qd_json_value *r = read_json(g_run, "result.json");
    double acc = -1;
    cr_assert_eq(qd_json_get_number(r, "distilled.test_acc", &acc, NULL), 0);
    cr_assert_eq(qd_json_get_number(r, "distilled_lr", lr, NULL), 0, "distilled_lr missing");
    cr_assert_eq(qd_json_get_number(r, "baselines.untrained.test_acc", untrained, NULL), 0);
    qd_json_value_free(r);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_run);
    cr_assert_eq(system(cmd), 0);
    return acc;
}

Test(evaluate, sets_without_learned_steps_train_at_a_tuned_lr)
{
    snprintf(g_tmp, sizeof g_tmp, "/tmp/qd_eval_XXXXXX");
    cr_assert(mkdtemp(g_tmp));
    snprintf(g_run, sizeof g_run, "%s/run", g_tmp);
    double lr, untrained;
    double useless = subset_run("[1e-9]", &lr, &untrained);
    cr_expect_eq(lr, 1e-9);
    cr_expect(fabs(useless - untrained) < 0.02, "lr 1e-9: %g vs untrained %g", useless,
              untrained);
    double tuned = subset_run("[1e-9, 0.1, 1]", &lr, &untrained);
    cr_expect(lr == 0.1 || lr == 1, "picked %g", lr);
    cr_expect(tuned > untrained + 0.2, "tuned %g vs untrained %g", tuned, untrained);
    teardown();
}

/* At a constant lr that diverges, a set without learned step sizes scores
 * its models 0 with a warning (the rule the random-subset baseline follows),
 * instead of failing the whole run after its distillation. */
Test(evaluate, diverging_tuned_lr_scores_zero_not_a_failed_run)
{
    snprintf(g_tmp, sizeof g_tmp, "/tmp/qd_eval_XXXXXX");
    cr_assert(mkdtemp(g_tmp));
    snprintf(g_run, sizeof g_run, "%s/run", g_tmp);
    char *err;
    int rc = qd(NULL, &err,
                "run tests/cli/manifests/tiny-distill.yaml 'distill={plugin: random_subset, "
                "images_per_class: 5}' evaluate.recipe_epochs=20 'evaluate.lr_grid=[1e30]' "
                "--out '%s'", g_run);
    cr_assert_eq(rc, 0, "%s", err);
    cr_expect(strstr(err, "failed") && strstr(err, "scored 0"), "%s", err);
    free(err);
    qd_json_value *r = read_json(g_run, "result.json");
    double acc = -1;
    cr_expect_eq(qd_json_get_number(r, "distilled.test_acc", &acc, NULL), 0);
    cr_expect_eq(acc, 0.0);
    qd_json_value_free(r);
    teardown();
}
