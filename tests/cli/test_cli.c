/* End-to-end tests of the qdistill command: exit codes, messages, run
 * directories, resuming, and a plugin built outside the tree. */
#include <dirent.h>
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qdistill/json.h"

#include "cli_util.h"

Test(cli, help_version_and_usage)
{
    make_tmp();
    char *out;
    cr_expect_eq(qd(&out, NULL, "--help"), 0);
    cr_expect(strstr(out, "describe-circuit"), "%s", out);
    free(out);
    cr_expect_eq(qd(&out, NULL, "--version"), 0);
    cr_expect(strstr(out, "qdistill 0."), "%s", out);
    free(out);
    char *err;
    cr_expect_eq(qd(NULL, &err, "frobnicate"), 2);
    cr_expect(strstr(err, "unknown command 'frobnicate'"), "%s", err);
    free(err);
    cr_expect_eq(qd(NULL, NULL, "validate"), 2);
    rm_tmp();
}

Test(cli, plugins_lists_every_kind_and_describe_shows_schema)
{
    make_tmp();
    char *out;
    cr_assert_eq(qd(&out, NULL, "plugins"), 0);
    const char *expect[] = {"encoder", "amplitude", "ansatz", "strongly_entangling",
                            "observable", "hermitian", "simulator", "statevector",
                            "density_matrix", "distiller", "performance_matching", "dataset",
                            "mnist", "cifar10", "synthetic"};
    for (size_t i = 0; i < sizeof expect / sizeof *expect; ++i)
        cr_expect(strstr(out, expect[i]), "plugins lacks %s", expect[i]);
    free(out);
    cr_assert_eq(qd(&out, NULL, "plugins --kind observable"), 0);
    cr_expect(strstr(out, "hermitian") && !strstr(out, "statevector"), "%s", out);
    free(out);
    cr_assert_eq(qd(&out, NULL, "describe hermitian"), 0);
    cr_expect(strstr(out, "trainable") && strstr(out, "bool"), "%s", out);
    free(out);
    char *err;
    cr_expect_eq(qd(NULL, &err, "describe nosuchplugin"), 2);
    free(err);
    rm_tmp();
}

Test(cli, every_shipped_manifest_validates)
{
    make_tmp();
    /* every manifest in experiments/ (model files live in experiments/models/) */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/experiments", srcdir());
    struct dirent **ents = NULL;
    int n = scandir(dir, &ents, NULL, alphasort), checked = 0;
    cr_assert(n > 0, "cannot list %s", dir);
    for (int i = 0; i < n; ++i) {
        const char *nm = ents[i]->d_name;
        size_t len = strlen(nm);
        if (len > 5 && strcmp(nm + len - 5, ".yaml") == 0) {
            char *err;
            int rc = qd(NULL, &err, "validate experiments/%s", nm);
            cr_expect_eq(rc, 0, "%s: %s", nm, err);
            free(err);
            checked++;
        }
        free(ents[i]);
    }
    free(ents);
    cr_expect(checked >= 20, "only %d manifests found in %s", checked, dir);
    /* the ablation is one key: the resolved manifests differ only in the
     * observable's `trainable` (written in the top-level section and in the
     * quantum layer it is merged into) */
    char *a, *b;
    cr_assert_eq(qd(&a, NULL, "validate experiments/mnist-qlenet-trainable.yaml name=x"), 0);
    cr_assert_eq(qd(&b, NULL, "validate experiments/mnist-qlenet-fixed.yaml name=x"), 0);
    char *sa = NULL, *sb = NULL;
    char *la = strtok_r(a, "\n", &sa), *lb = strtok_r(b, "\n", &sb);
    int differing = 0;
    while (la && lb) {
        if (strcmp(la, lb) != 0) {
            differing++;
            cr_expect(strstr(la, "trainable: true") && strstr(lb, "trainable: false"),
                      "unexpected difference: '%s' vs '%s'", la, lb);
        }
        la = strtok_r(NULL, "\n", &sa);
        lb = strtok_r(NULL, "\n", &sb);
    }
    cr_expect(!la && !lb, "the resolved manifests differ in length");
    cr_expect_eq(differing, 2);
    free(a);
    free(b);
    rm_tmp();
}

/* Each malformed manifest: exit 2, a "path:line:col: " message, no crash. */
static void expect_bad(const char *name, const void *data, size_t len, const char *needle)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", g_tmp, name);
    write_file(path, data, len);
    char *err;
    int rc = qd(NULL, &err, "validate '%s'", path);
    cr_expect_eq(rc, 2, "%s: exit %d, stderr: %s", name, rc, err);
    char prefix[600];
    snprintf(prefix, sizeof prefix, "%s:", path);
    char *at = strstr(err, prefix);
    int line = 0, col = 0;
    cr_expect(at && sscanf(at + strlen(prefix), "%d:%d:", &line, &col) == 2 && line >= 1 &&
                  col >= 1,
              "%s: no file:line:col in: %s", name, err);
    if (needle)
        cr_expect(strstr(err, needle), "%s: '%s' not in: %s", name, needle, err);
    free(err);
}

Test(cli, malformed_manifests_exit_2_with_location)
{
    make_tmp();
    const char *syntax = "name: x\ndataset: {plugin: mnist\n";
    expect_bad("syntax.yaml", syntax, strlen(syntax), NULL);
    const char *unknown = "name: x\ndataset: {plugin: synthetic, clases: 3}\n";
    expect_bad("unknown.yaml", unknown, strlen(unknown), "did you mean 'classes'");
    const char *type = "name: x\nseed: banana\n";
    expect_bad("type.yaml", type, strlen(type), "seed");
    const char *plugin = "name: x\ndataset: {plugin: mnsit}\n";
    expect_bad("plugin.yaml", plugin, strlen(plugin), "mnist");
    const char *range = "name: x\ndataset: {plugin: synthetic, classes: 0}\n";
    expect_bad("range.yaml", range, strlen(range), "classes");
    const char *bomb =
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
        "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
        "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
        "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
        "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n"
        "h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]\n"
        "i: [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]\n";
    expect_bad("bomb.yaml", bomb, strlen(bomb), NULL);
    size_t depth = 10000;
    char *deep = malloc(2 * depth + 16);
    cr_assert(deep);
    size_t k = 0;
    k += (size_t)sprintf(deep, "a: ");
    for (size_t i = 0; i < depth; ++i)
        deep[k++] = '[';
    for (size_t i = 0; i < depth; ++i)
        deep[k++] = ']';
    deep[k++] = '\n';
    expect_bad("deep.yaml", deep, k, "deep");
    free(deep);
    expect_bad("empty.yaml", "", 0, "empty");
    unsigned char garbage[512];
    for (size_t i = 0; i < sizeof garbage; ++i)
        garbage[i] = (unsigned char)((i * 2654435761u) >> 13);
    expect_bad("garbage.bin", garbage, sizeof garbage, NULL);
    const char bad_utf8[] = "name: \xff\xfe\xfa\n";
    expect_bad("utf8.yaml", bad_utf8, sizeof bad_utf8 - 1, NULL);
    /* an override of an unknown key is an error too */
    char *err;
    cr_expect_eq(qd(NULL, &err, "validate experiments/quickstart.yaml observable.trainabel=false"), 2);
    cr_expect(strstr(err, "<command line>:1:1:") && strstr(err, "trainable"), "%s", err);
    free(err);
    rm_tmp();
}

Test(cli, docs_manifest_is_generated_from_the_schemas)
{
    make_tmp();
    char *out;
    cr_assert_eq(qd(&out, NULL, "docs manifest"), 0);
    char path[512];
    snprintf(path, sizeof path, "%s/docs/manifest.md", srcdir());
    char *doc = slurp(path);
    cr_expect(strcmp(out, doc) == 0,
              "docs/manifest.md is stale: regenerate it with `build/qdistill docs manifest > "
              "docs/manifest.md`");
    free(out);
    free(doc);
    rm_tmp();
}

Test(cli, describe_model_and_circuit)
{
    make_tmp();
    char *out;
    cr_assert_eq(qd(&out, NULL, "describe-model experiments/quickstart.yaml --input 1x28x28"), 0);
    cr_expect(strstr(out, "59235"), "quantum LeNet on MNIST has 59235 parameters:\n%s", out);
    free(out);
    cr_assert_eq(qd(&out, NULL, "describe-model experiments/cifar10-qlenet-trainable.yaml "
                                "--input 3x32x32"), 0);
    cr_expect(strstr(out, "6 x 28 x 28"), "32x32 input: the first conv pads 0:\n%s", out);
    free(out);
    /* model.file swaps the model from the command line, relative to the
     * manifest (observable=null drops the section LeNet has no use for) */
    cr_assert_eq(qd(&out, NULL, "describe-model experiments/quickstart.yaml "
                                "model.file=models/lenet.yaml observable=null"), 0);
    cr_expect(strstr(out, "61706") && strstr(out, "fc3"), "LeNet has 61706 parameters:\n%s",
              out);
    free(out);
    /* the authors' reading of the residual path: ReLU head, fc 10->10 after */
    cr_assert_eq(qd(&out, NULL, "describe-model experiments/quickstart.yaml "
                                "model.file=models/quantum-lenet-relu-residual.yaml"), 0);
    cr_expect(strstr(out, "59345") && strstr(out, "rrelu") && strstr(out, "fc_out"), "%s", out);
    free(out);
    char *err;
    cr_expect_eq(qd(&out, &err, "describe-model experiments/quickstart.yaml "
                                "model.file=models/lenet.yaml"), 2);
    cr_expect(strstr(err, "the top-level 'observable' section has no effect"), "%s", err);
    free(out);
    free(err);
    cr_assert_eq(qd(&out, NULL, "describe-circuit experiments/quickstart.yaml --input 1x28x28"), 0);
    cr_expect(strstr(out, "StatePrep") && strstr(out, "Rot(") && strstr(out, "CNOT"), "%s", out);
    free(out);
    rm_tmp();
}

Test(cli, run_writes_outputs_resumes_and_refuses_another_experiment, .timeout = 300)
{
    make_tmp();
    char *out, *err;
    int rc = qd(&out, &err, "run tests/cli/manifests/tiny-distill.yaml --out '%s/run dir é'", g_tmp);
    cr_assert_eq(rc, 0, "%s", err);
    free(err);
    char dir[512];
    snprintf(dir, sizeof dir, "%s/run dir é", g_tmp);
    cr_expect(strstr(out, dir), "stdout names the run directory: %s", out);
    free(out);
    const char *files[] = {"manifest.yaml", "overrides.txt", "log.txt", "metrics.csv",
                           "result.json", "synthetic_images.npy", "synthetic_labels.npy",
                           "synthetic_lrs.npy", "images.png", "checkpoint.qdc"};
    for (size_t i = 0; i < sizeof files / sizeof *files; ++i)
        cr_expect(exists(dir, files[i]), "missing %s", files[i]);
    char path[700];
    snprintf(path, sizeof path, "%s/result.json", dir);
    qd_json_value *v = NULL;
    cr_assert_eq(qd_json_read_file(path, &v, NULL), 0);
    double acc, sub, it;
    cr_expect_eq(qd_json_get_number(v, "distilled.test_acc", &acc, NULL), 0);
    cr_expect_eq(qd_json_get_number(v, "baselines.random_subset.test_acc", &sub, NULL), 0);
    cr_expect_eq(qd_json_get_number(v, "distiller.iterations", &it, NULL), 0);
    cr_expect_eq(it, 100);
    cr_expect(acc > 0.6 && acc <= 1.0, "distilled accuracy %g (chance 0.25)", acc);
    qd_json_value_free(v);
    char *before = slurp(path);

    /* numpy reads the synthetic set as is */
    if (access("/usr/bin/python3", X_OK) == 0 &&
        system("/usr/bin/python3 -c 'import numpy' 2>/dev/null") == 0) {
        char cmd[2400];
        snprintf(cmd, sizeof cmd,
                 "/usr/bin/python3 -c \"import numpy as n; a=n.load('%s/synthetic_images.npy'); "
                 "l=n.load('%s/synthetic_labels.npy'); r=n.load('%s/synthetic_lrs.npy'); "
                 "assert a.shape==(8,1,8,8) and l.shape==(8,) and r.shape==(4,), (a.shape,l.shape,r.shape); "
                 "assert sorted(set(l.tolist()))==[0,1,2,3] and (r>0).all()\"",
                 dir, dir, dir);
        cr_expect_eq(system(cmd), 0, "numpy could not read the synthetic set");
    }

    /* re-running the finished run changes nothing */
    rc = qd(NULL, &err, "run tests/cli/manifests/tiny-distill.yaml --out '%s'", dir);
    cr_expect_eq(rc, 0, "%s", err);
    cr_expect(strstr(err, "resuming run directory"), "%s", err);
    free(err);
    char *after = slurp(path);
    cr_expect_str_eq(after, before);
    free(after);
    free(before);

    /* another experiment in the same directory is refused, nothing touched */
    rc = qd(NULL, &err, "run tests/cli/manifests/tiny-distill.yaml seed=4 --out '%s'", dir);
    cr_expect_eq(rc, 2);
    cr_expect(strstr(err, "different experiment"), "%s", err);
    free(err);
    rm_tmp();
}

Test(cli, train_runs_a_quantum_model)
{
    make_tmp();
    char *err;
    int rc = qd(NULL, &err, "train tests/cli/manifests/tiny-quantum.yaml --out '%s/t'", g_tmp);
    cr_assert_eq(rc, 0, "%s", err);
    free(err);
    char path[400];
    snprintf(path, sizeof path, "%s/t/result.json", g_tmp);
    qd_json_value *v = NULL;
    cr_assert_eq(qd_json_read_file(path, &v, NULL), 0);
    double acc, execs;
    cr_expect_eq(qd_json_get_number(v, "train.test_acc", &acc, NULL), 0);
    cr_expect_eq(qd_json_get_number(v, "quantum.executions_training", &execs, NULL), 0);
    cr_expect(acc > 0.5, "test accuracy %g", acc);
    cr_expect(execs >= 3 * 120, "circuit executions counted: %g", execs);
    qd_json_value_free(v);
    rm_tmp();
}

/* A plugin built outside the meson tree, against the installed headers and
 * pkg-config file only, loads through --plugin-path and runs. */
Test(cli, out_of_tree_plugin_builds_against_installed_pkgconfig, .timeout = 300)
{
    make_tmp();
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "meson install -C '%s' --destdir '%s/inst' --no-rebuild --quiet >'%s/install.log' 2>&1",
             builddir(), g_tmp, g_tmp);
    cr_assert_eq(system(cmd), 0, "meson install failed (see %s/install.log)", g_tmp);
    /* copy the source out of the tree first: nothing of the meson tree is used */
    snprintf(cmd, sizeof cmd,
             "set -e; mkdir -p '%s/src' '%s/plugins'; cp '%s/tests/cli/oot/stripes.c' '%s/src/'; "
             "pc=$(find '%s/inst' -name qdistill-plugin.pc | head -n1); test -n \"$pc\"; "
             "export PKG_CONFIG_PATH=$(dirname \"$pc\") PKG_CONFIG_SYSROOT_DIR='%s/inst'; "
             "cd '%s/src' && cc -shared -fPIC -fvisibility=hidden -Wall -Wextra -Werror "
             "$(pkg-config --cflags qdistill-plugin) stripes.c -o '%s/plugins/stripes.so' "
             ">'%s/cc.log' 2>&1",
             g_tmp, g_tmp, srcdir(), g_tmp, g_tmp, g_tmp, g_tmp, g_tmp, g_tmp);
    cr_assert_eq(system(cmd), 0, "building the plugin failed (see %s/cc.log)", g_tmp);

    char *out, *err;
    cr_assert_eq(qd(&out, NULL, "--plugin-path '%s/plugins' describe stripes", g_tmp), 0);
    cr_expect(strstr(out, "train_size"), "%s", out);
    free(out);
    int rc = qd(&out, &err, "--plugin-path '%s/plugins' run tests/cli/manifests/oot.yaml --out '%s/r'",
                g_tmp, g_tmp);
    cr_assert_eq(rc, 0, "%s", err);
    cr_expect(strstr(err, "stripes: generated 200 training images"), "it ran: %s", err);
    free(out);
    free(err);
    char path[400];
    snprintf(path, sizeof path, "%s/r/result.json", g_tmp);
    qd_json_value *v = NULL;
    cr_assert_eq(qd_json_read_file(path, &v, NULL), 0);
    double acc;
    cr_expect_eq(qd_json_get_number(v, "train.test_acc", &acc, NULL), 0);
    cr_expect(acc > 0.9, "stripes are easy: test accuracy %g", acc);
    qd_json_value_free(v);
    rm_tmp();
}
