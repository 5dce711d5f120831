/* Manifests: loading with overrides, the quantum-section merge, validation
 * of every section against the core, layer and plugin schemas (with small
 * fake plugins registered in-process), defaults, and the resolved YAML. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qdistill/manifest.h"
#include "qdistill/model.h"

/* ------------------------------------------------------------------------
 * Fake plugins: schemas matter here, the callbacks are never called.
 * ---------------------------------------------------------------------- */

static void never(void)
{
    abort();
}
#define NEVER(vt, field) .field = (__typeof__(((vt *)0)->field))(void (*)(void))never
#define END {NULL, 0, 0, NULL, 0, 0, NULL, 0, NULL, NULL}

static const qd_param mnist_params[] = {
    {"path", QD_PARAM_STRING, QD_PARAM_REQUIRED, NULL, 0, 0, NULL, 0, NULL, "data directory"},
    {"normalize", QD_PARAM_BOOL, 0, "true", 0, 0, NULL, 0, NULL, "standardise"},
    END};
static const qd_param synthetic_params[] = {
    {"classes", QD_PARAM_INT, QD_PARAM_HAS_MIN, "10", 2, 0, NULL, 0, NULL, "classes"}, END};
static const qd_param amplitude_params[] = {
    {"pad", QD_PARAM_BOOL, 0, "false", 0, 0, NULL, 0, NULL, "zero-pad"}, END};
static const qd_param sel_params[] = {
    {"layers", QD_PARAM_INT, QD_PARAM_HAS_MIN, "3", 1, 0, NULL, 0, NULL, "layers"}, END};
static const qd_param hermitian_params[] = {
    {"trainable", QD_PARAM_BOOL, 0, "true", 0, 0, NULL, 0, NULL, "learn H"},
    {"matrix", QD_PARAM_MATRIX, 0, "[[1, 0], [0, -1]]", 0, 0, NULL, 0, NULL, "initial H"},
    END};
static const qd_param sv_params[] = {
    {"gradient", QD_PARAM_ENUM, 0, "adjoint", 0, 0, "adjoint|parameter_shift", 0, NULL, "method"},
    END};
static const qd_param pm_params[] = {
    {"steps", QD_PARAM_INT, QD_PARAM_HAS_MIN, "10", 1, 0, NULL, 0, NULL, "inner steps"},
    {"lr_init", QD_PARAM_DOUBLE, QD_PARAM_HAS_MIN, "0.01", 0, 0, NULL, 0, NULL, "step size"},
    END};
/* a buggy plugin: its default does not fit its own type */
static const qd_param buggy_params[] = {
    {"n", QD_PARAM_INT, 0, "many", 0, 0, NULL, 0, NULL, "count"}, END};

static const qd_dataset_vt ds_vt = {sizeof ds_vt, NEVER(qd_dataset_vt, create),
                                    NEVER(qd_dataset_vt, destroy), NEVER(qd_dataset_vt, load)};
static const qd_encoder_vt enc_vt = {sizeof enc_vt, NEVER(qd_encoder_vt, create),
                                     NEVER(qd_encoder_vt, destroy), NEVER(qd_encoder_vt, build),
                                     NEVER(qd_encoder_vt, encode),
                                     NEVER(qd_encoder_vt, encode_backward)};
static const qd_ansatz_vt ans_vt = {sizeof ans_vt, NEVER(qd_ansatz_vt, create),
                                    NEVER(qd_ansatz_vt, destroy), NEVER(qd_ansatz_vt, build),
                                    NEVER(qd_ansatz_vt, init_weights)};
static const qd_observable_vt obs_vt = {
    sizeof obs_vt, NEVER(qd_observable_vt, create), NEVER(qd_observable_vt, destroy),
    NEVER(qd_observable_vt, build), NEVER(qd_observable_vt, n_params),
    NEVER(qd_observable_vt, init_params), NEVER(qd_observable_vt, matrices),
    NEVER(qd_observable_vt, matrices_backward)};
static const qd_simulator_vt sim_vt = {
    sizeof sim_vt, NEVER(qd_simulator_vt, create), NEVER(qd_simulator_vt, destroy),
    NEVER(qd_simulator_vt, forward), NEVER(qd_simulator_vt, backward),
    NEVER(qd_simulator_vt, stats)};
static const qd_distiller_vt dist_vt = {
    sizeof dist_vt, NEVER(qd_distiller_vt, create), NEVER(qd_distiller_vt, destroy),
    NEVER(qd_distiller_vt, start), NEVER(qd_distiller_vt, n_iterations),
    NEVER(qd_distiller_vt, iterate), NEVER(qd_distiller_vt, result),
    NEVER(qd_distiller_vt, save), NEVER(qd_distiller_vt, restore), {NULL, NULL, NULL, NULL}};

static const qd_plugin_desc fakes[] = {
    QD_PLUGIN_DESC_INIT(QD_KIND_DATASET, "mnist", "1.0.0", "fake", mnist_params, &ds_vt),
    QD_PLUGIN_DESC_INIT(QD_KIND_DATASET, "cifar10", "1.0.0", "fake", mnist_params, &ds_vt),
    QD_PLUGIN_DESC_INIT(QD_KIND_DATASET, "synthetic", "1.0.0", "fake", synthetic_params, &ds_vt),
    QD_PLUGIN_DESC_INIT(QD_KIND_ENCODER, "amplitude", "1.0.0", "fake", amplitude_params,
                        &enc_vt),
    QD_PLUGIN_DESC_INIT(QD_KIND_ANSATZ, "strongly_entangling", "1.0.0", "fake", sel_params,
                        &ans_vt),
    QD_PLUGIN_DESC_INIT(QD_KIND_OBSERVABLE, "hermitian", "1.0.0", "fake", hermitian_params,
                        &obs_vt),
    QD_PLUGIN_DESC_INIT(QD_KIND_OBSERVABLE, "pauli_z", "1.0.0", "fake", NULL, &obs_vt),
    QD_PLUGIN_DESC_INIT(QD_KIND_SIMULATOR, "statevector", "1.0.0", "fake", sv_params, &sim_vt),
    QD_PLUGIN_DESC_INIT(QD_KIND_DISTILLER, "performance_matching", "1.0.0", "fake", pm_params,
                        &dist_vt),
    QD_PLUGIN_DESC_INIT(QD_KIND_DISTILLER, "buggy", "1.0.0", "fake", buggy_params, &dist_vt),
};

static qd_registry *reg;

static void setup(void)
{
    qd_error e;
    cr_assert_eq(qd_registry_create(&reg, &e), QD_OK);
    for (size_t i = 0; i < sizeof fakes / sizeof fakes[0]; i++)
        cr_assert_eq(qd_registry_add(reg, &fakes[i], "test", &e), QD_OK, "%s", e.msg);
}

static char tmpdir[64];

/* runs after the suite's setup; the suite's teardown removes the directory */
static void setup_tmp(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/qd_man_XXXXXX");
    cr_assert(mkdtemp(tmpdir));
}

static void teardown(void)
{
    qd_registry_destroy(reg);
    reg = NULL;
    if (tmpdir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
        cr_expect_eq(system(cmd), 0);
        tmpdir[0] = '\0';
    }
}

/* ------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------- */

static const char *src_path(const char *rel)
{
    static char buf[4096];
    const char *root = getenv("QD_TEST_SRCDIR");
    cr_assert(root, "QD_TEST_SRCDIR not set");
    snprintf(buf, sizeof buf, "%s/tests/core/manifests/%s", root, rel);
    return buf;
}

static const char *write_tmp(const char *name, const char *text)
{
    static char path[4][512];
    static int k;
    char *p = path[k++ & 3];
    snprintf(p, 512, "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "w");
    cr_assert(f, "cannot write %s", p);
    fputs(text, f);
    fclose(f);
    return p;
}

static qd_manifest *load(const char *path, const char *const *ovr, size_t n)
{
    qd_manifest *m = NULL;
    qd_error e;
    qd_error_clear(&e);
    cr_assert_eq(qd_manifest_load(path, ovr, n, &m, &e), QD_OK, "%s", e.msg);
    cr_assert_not_null(m);
    return m;
}

static void expect_diag(const qd_diags *d, const char *msg)
{
    for (size_t i = 0; i < d->n; i++)
        if (strcmp(d->msgs[i], msg) == 0)
            return;
    char *all = qd_diags_join(d);
    cr_expect(0, "missing diagnostic:\n  %s\namong:\n%s", msg, all);
    free(all);
}

static void expect_no_diags(const qd_diags *d, size_t n)
{
    char *all = qd_diags_join(d);
    cr_expect_eq(n, 0, "unexpected problems:\n%s", all);
    cr_expect_eq(d->n, n);
    free(all);
}

/* The quantum layer of manifests/models/qnet.yaml. */
static const qd_node *qlayer(const qd_manifest *m)
{
    const qd_node *q = qd_node_path(qd_manifest_root(m), "model.layers.q");
    cr_assert_not_null(q);
    return q;
}

/* A manifest in tmpdir made of the quantum.yaml model plus `body`. */
static const char *tmp_manifest(const char *body)
{
    char text[8192];
    snprintf(text, sizeof text, "name: t\nmodel: {file: %s}\n%s", src_path("models/qnet.yaml"),
             body);
    return write_tmp("m.yaml", text);
}

static size_t validate_text(const char *body, const char *const *ovr, size_t n,
                            qd_manifest **out, qd_diags *d)
{
    memset(d, 0, sizeof *d);
    *out = load(tmp_manifest(body), ovr, n);
    size_t k = qd_manifest_validate(*out, reg, d);
    cr_expect_eq(k, d->n, "count %zu vs %zu messages", k, d->n);
    return k;
}

/* ------------------------------------------------------------------------
 * The good manifest
 * ---------------------------------------------------------------------- */

TestSuite(manifest, .init = setup, .fini = teardown);

Test(manifest, loads_validates_and_merges)
{
    char path[4096];
    snprintf(path, sizeof path, "%s", src_path("quantum.yaml"));
    qd_manifest *m = load(path, NULL, 0);
    cr_expect_str_eq(qd_manifest_path(m), path);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", src_path(""));
    dir[strlen(dir) - 1] = '\0';  /* drop the trailing '/' */
    cr_expect_str_eq(qd_manifest_dir(m), dir);
    cr_expect_str_eq(qd_manifest_name(m), "qtest");
    cr_expect_eq(qd_manifest_seed(m), 7);
    cr_expect_eq(qd_manifest_threads(m), 0);

    /* the top-level observable section wins over the layer's own keys */
    const qd_node *obs = qd_node_get(qlayer(m), "observable");
    cr_expect_str_eq(qd_node_str(qd_node_get(obs, "plugin")), "hermitian");
    const qd_node *tr = qd_node_get(obs, "trainable");
    cr_expect_str_eq(qd_node_str(tr), "false");
    cr_expect_str_eq(qd_node_file(tr), path, "located in the manifest, not the model file");
    cr_expect_eq(qd_node_line(tr), 8);
    cr_expect_eq(qd_node_col(tr), 25);
    cr_expect_not_null(qd_node_get(obs, "matrix"), "keys the manifest does not set stay");

    qd_diags d = {0};
    size_t n = qd_manifest_validate(m, reg, &d);
    expect_no_diags(&d, n);

    /* defaults are filled in, located "<default>" */
    const qd_node *root = qd_manifest_root(m);
    const qd_node *lr = qd_node_path(root, "train.lr");
    cr_expect_str_eq(qd_node_str(lr), "0.01");
    cr_expect_str_eq(qd_node_file(lr), "<default>");
    cr_expect_str_eq(qd_node_str(qd_node_path(root, "evaluate.init")), "random", "given");
    cr_expect_str_eq(qd_node_str(qd_node_path(root, "evaluate.batch_size")), "1000");
    cr_expect_eq(qd_node_len(qd_node_path(root, "evaluate.lr_grid")), 8);
    cr_expect_str_eq(qd_node_str(qd_node_path(root, "dataset.validation")), "0");
    cr_expect_str_eq(qd_node_str(qd_node_path(root, "model.layers.fc.bias")), "true");
    cr_expect_str_eq(qd_node_str(qd_node_path(root, "model.layers.fc.init")), "pytorch");
    /* plugin sections keep only what was given: host->has() must not see
     * defaults as given keys */
    cr_expect_null(qd_node_path(root, "dataset.normalize"));
    cr_expect_null(qd_node_path(root, "distill.lr_init"));
    cr_expect_null(qd_node_path(root, "distill.checkpoint_every"));
    cr_expect_null(qd_node_path(root, "model.layers.q.simulator.gradient"));
    cr_expect_null(qd_node_path(root, "model.layers.q.encoder.pad"));
    cr_expect_str_eq(qd_node_str(qd_node_path(root, "seed")), "7");
    cr_expect_str_eq(qd_node_str(qd_node_path(root, "threads")), "0");
    cr_expect_eq(qd_manifest_section(m, "train"), qd_node_get(root, "train"));
    cr_expect_null(qd_manifest_section(m, "nope"));

    /* validating again changes nothing */
    qd_diags d2 = {0};
    char *y1 = qd_manifest_to_yaml(m);
    cr_expect_eq(qd_manifest_validate(m, reg, &d2), 0);
    char *y2 = qd_manifest_to_yaml(m);
    cr_expect_str_eq(y1, y2);
    free(y1);
    free(y2);
    qd_diags_free(&d);
    qd_diags_free(&d2);
    qd_manifest_destroy(m);
}

Test(manifest, resolved_yaml_reloads_to_the_same_manifest, .init = setup_tmp)
{
    qd_manifest *m = load(src_path("quantum.yaml"), NULL, 0);
    qd_diags d = {0};
    cr_assert_eq(qd_manifest_validate(m, reg, &d), 0);
    char *y = qd_manifest_to_yaml(m);
    cr_assert_not_null(y);
    const char *p = write_tmp("resolved.yaml", y);
    qd_manifest *m2 = load(p, NULL, 0);
    qd_diags d2 = {0};
    size_t n = qd_manifest_validate(m2, reg, &d2);
    expect_no_diags(&d2, n);
    char *y2 = qd_manifest_to_yaml(m2);
    cr_expect_str_eq(y2, y, "resolving is idempotent");
    /* the resolved text is self-contained: no includes left */
    cr_expect_null(strstr(y, "file:"), "%s", y);
    cr_expect(strstr(y, "      observable:\n        plugin: hermitian\n        trainable: false\n"),
              "%s", y);
    /* plugin defaults are listed as comments */
    cr_expect(strstr(y, "      simulator:\n        plugin: statevector\n"
                        "        # gradient: adjoint  (default)\n"),
              "%s", y);
    cr_expect(strstr(y, "distill:\n  plugin: performance_matching\n  steps: 5\n"
                        "  # lr_init: 0.01  (default)\n  # checkpoint_every: 100  (default)\n"),
              "%s", y);
    cr_expect(strstr(y, "dataset:\n  plugin: mnist\n  path: data/mnist\n  subset: 200\n"
                        "  test_subset: 0\n  validation: 0\n  # normalize: true  (default)\n"),
              "%s", y);
    free(y);
    free(y2);
    qd_diags_free(&d);
    qd_diags_free(&d2);
    qd_manifest_destroy(m);
    qd_manifest_destroy(m2);
}

/* ------------------------------------------------------------------------
 * Overrides
 * ---------------------------------------------------------------------- */

Test(manifest, overrides_are_applied_before_merging)
{
    const char *ovr[] = {"observable.trainable=true", "seed=11", "train.lr=0.05",
                         "model.layers.q.ansatz.layers=5", "distill.steps=[3]"};
    qd_manifest *m = load(src_path("quantum.yaml"), ovr, 5);
    const qd_node *tr = qd_node_path(qlayer(m), "observable.trainable");
    cr_expect_str_eq(qd_node_str(tr), "true");
    cr_expect_str_eq(qd_node_file(tr), "<command line>");
    cr_expect_eq(qd_node_line(tr), 1);
    cr_expect_eq(qd_manifest_seed(m), 11);
    cr_expect_str_eq(qd_node_str(qd_node_path(qlayer(m), "ansatz.layers")), "5");
    qd_diags d = {0};
    cr_expect_eq(qd_manifest_validate(m, reg, &d), 1);
    expect_diag(&d, "<command line>:5:1: 'steps' in distiller 'performance_matching': expected "
                    "an integer, got a sequence");
    qd_diags_free(&d);
    qd_manifest_destroy(m);
}

Test(manifest, override_of_unknown_key_is_located_on_the_command_line)
{
    const char *ovr[] = {"train.epochs=3", "train.lrr=0.1", "observable.trainabel=false",
                         "bogus.x=1"};
    qd_manifest *m = load(src_path("quantum.yaml"), ovr, 4);
    qd_diags d = {0};
    cr_expect_eq(qd_manifest_validate(m, reg, &d), 3);
    expect_diag(&d, "<command line>:2:1: unknown key 'lrr' in train (did you mean 'lr'?)");
    expect_diag(&d, "<command line>:3:1: unknown key 'trainabel' in observable 'hermitian' of "
                    "layer 'q' (did you mean 'trainable'?)");
    expect_diag(&d, "<command line>:4:1: unknown top-level key 'bogus' (valid keys: name, seed, "
                    "threads, dataset, model, encoder, ansatz, observable, simulator, train, "
                    "distill, evaluate, sweep)");
    qd_diags_free(&d);
    qd_manifest_destroy(m);
}

Test(manifest, malformed_overrides_fail_to_load)
{
    struct {
        const char *ovr, *msg;
    } cases[] = {
        {"train.lr", "<command line>:2:1: override 'train.lr' has no '=' (write key.path=value, "
                     "e.g. train.lr=0.05)"},
        {"=3", "<command line>:2:1: override '=3' has an empty key path (write key.path=value)"},
        {"a..b=1", "<command line>:2:1: override 'a..b=1': the key path has an empty component "
                   "(write a.b.c)"},
        {".a=1", "<command line>:2:1: override '.a=1': the key path has an empty component "
                 "(write a.b.c)"},
        {"a b=1", "<command line>:2:1: override 'a b=1': the key path contains a space"},
        {"a[0]=1", "<command line>:2:1: override 'a[0]=1': '[' cannot appear in a key path "
                   "(write a.b.0.c or a.layers.NAME.c)"},
        {"name.x=1", "<command line>:2:1: cannot set 'name.x': 'name' holds the value 'qtest'"},
        {"train.lr=[1", "<command line>:2:1: bad value '[1' for 'train.lr': "},
        {"model.layers.zz.x=1", "<command line>:2:1: cannot set 'model.layers.zz.x': no item "
                                "'zz' in 'model.layers' (it has 4 items, indices 0-3; named "
                                "flat, fc, q, head)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *ovr[] = {"seed=2", cases[i].ovr};
        qd_manifest *m = (qd_manifest *)1;
        qd_error e;
        int rc = qd_manifest_load(src_path("quantum.yaml"), ovr, 2, &m, &e);
        cr_expect_neq(rc, QD_OK, "%s", cases[i].ovr);
        cr_expect_null(m);
        cr_expect(strncmp(e.msg, cases[i].msg, strlen(cases[i].msg)) == 0, "%s:\n got  %s\n want %s",
                  cases[i].ovr, e.msg, cases[i].msg);
    }
}

Test(manifest, override_parse)
{
    char *p, *v;
    qd_error e;
    cr_assert_eq(qd_override_parse("a.b=c=d", &p, &v, &e), QD_OK);
    cr_expect_str_eq(p, "a.b");
    cr_expect_str_eq(v, "c=d", "the value is everything after the first '='");
    free(p);
    free(v);
    cr_assert_eq(qd_override_parse("model.layers.c1.padding=", &p, &v, &e), QD_OK);
    cr_expect_str_eq(p, "model.layers.c1.padding");
    cr_expect_str_eq(v, "");
    free(p);
    free(v);
    cr_expect_eq(qd_override_parse("abc", &p, &v, &e), QD_ERR_INVALID);
    cr_expect_null(p);
    cr_expect_null(v);
    cr_expect_eq(qd_override_parse("a.=1", &p, &v, &e), QD_ERR_INVALID);
    cr_expect_eq(qd_override_parse("a\x01=1", &p, &v, &e), QD_ERR_INVALID);
    cr_expect_eq(qd_override_parse("caf\xe9=1", &p, &v, &e), QD_ERR_INVALID);
    cr_expect_str_eq(e.msg, "override 'caf\xe9=1' is not valid UTF-8 text");
    cr_expect_eq(qd_override_parse(NULL, &p, &v, &e), QD_ERR_INVALID);
}

/* ------------------------------------------------------------------------
 * The quantum-section merge
 * ---------------------------------------------------------------------- */

Test(manifest, another_plugin_replaces_the_layer_section, .init = setup_tmp)
{
    qd_diags d;
    qd_manifest *m;
    size_t n = validate_text("observable: {plugin: pauli_z}\n"
                             "ansatz: {layers: 4}\n"
                             "simulator: {plugin: statevector, gradient: parameter_shift}\n",
                             NULL, 0, &m, &d);
    expect_no_diags(&d, n);
    const qd_node *obs = qd_node_get(qlayer(m), "observable");
    cr_expect_eq(qd_node_len(obs), 1, "the hermitian keys are gone");
    cr_expect_str_eq(qd_node_str(qd_node_get(obs, "plugin")), "pauli_z");
    const qd_node *ans = qd_node_get(qlayer(m), "ansatz");
    cr_expect_str_eq(qd_node_str(qd_node_get(ans, "plugin")), "strongly_entangling");
    cr_expect_str_eq(qd_node_str(qd_node_get(ans, "layers")), "4");
    cr_expect_str_eq(qd_node_str(qd_node_path(qlayer(m), "simulator.gradient")),
                     "parameter_shift");
    /* the top-level sections themselves are untouched */
    cr_expect_eq(qd_node_len(qd_manifest_section(m, "ansatz")), 1);
    qd_diags_free(&d);
    qd_manifest_destroy(m);
}

Test(manifest, merge_reaches_every_quantum_layer, .init = setup_tmp)
{
    const char *p = write_tmp("two.yaml",
                              "name: two\n"
                              "observable: {trainable: false}\n"
                              "encoder: {plugin: amplitude, pad: true}\n"
                              "model:\n"
                              "  layers:\n"
                              "    - {type: flatten}\n"
                              "    - type: quantum\n"
                              "      name: qa\n"
                              "      wires: 2\n"
                              "      ansatz: {plugin: strongly_entangling}\n"
                              "      observable: {plugin: hermitian}\n"
                              "      simulator: {plugin: statevector}\n"
                              "    - type: quantum\n"
                              "      name: qb\n"
                              "      wires: 2\n"
                              "      encoder:\n"
                              "      ansatz: {plugin: strongly_entangling}\n"
                              "      observable: {plugin: hermitian, trainable: true}\n"
                              "      simulator: {plugin: statevector}\n");
    qd_manifest *m = load(p, NULL, 0);
    const qd_node *root = qd_manifest_root(m);
    const char *layers[] = {"qa", "qb"};
    for (int i = 0; i < 2; i++) {
        char path[128];
        snprintf(path, sizeof path, "model.layers.%s.observable.trainable", layers[i]);
        cr_expect_str_eq(qd_node_str(qd_node_path(root, path)), "false", "%s", path);
        snprintf(path, sizeof path, "model.layers.%s.encoder.pad", layers[i]);
        cr_expect_str_eq(qd_node_str(qd_node_path(root, path)), "true", "%s", path);
    }
    /* the non-quantum layer got nothing */
    cr_expect_null(qd_node_path(root, "model.layers.0.observable"));
    qd_diags d = {0};
    size_t n = qd_manifest_validate(m, reg, &d);
    expect_no_diags(&d, n);
    qd_diags_free(&d);
    qd_manifest_destroy(m);
}

Test(manifest, absent_sections_stay_absent, .init = setup_tmp)
{
    const char *p = write_tmp("sections.yaml", "name: s\ntrain:\nmodel: {layers: [{type: "
                                               "flatten}, {type: linear, out: 2}]}\n");
    qd_manifest *m = load(p, NULL, 0);
    qd_diags d = {0};
    size_t n = qd_manifest_validate(m, reg, &d);
    expect_no_diags(&d, n);
    cr_expect_null(qd_manifest_section(m, "evaluate"));
    cr_expect_null(qd_manifest_section(m, "distill"));
    const qd_node *train = qd_manifest_section(m, "train");
    cr_expect_eq(qd_node_kind(train), QD_NODE_MAP, "an empty section gets its defaults");
    cr_expect_str_eq(qd_node_str(qd_node_get(train, "optimizer")), "sgd");
    cr_expect_eq(qd_node_len(train), 11);
    qd_diags_free(&d);
    qd_manifest_destroy(m);
}

Test(manifest, quantum_section_without_quantum_layer, .init = setup_tmp)
{
    const char *p = write_tmp("classic.yaml", "name: c\n"
                                              "observable: {trainable: false}\n"
                                              "model: {layers: [{type: flatten}, "
                                              "{type: linear, out: 10}]}\n");
    qd_manifest *m = load(p, NULL, 0);
    qd_diags d = {0};
    cr_expect_eq(qd_manifest_validate(m, reg, &d), 1);
    char want[700];
    snprintf(want, sizeof want,
             "%s:2:1: the top-level 'observable' section has no effect: the model has no "
             "quantum layer",
             p);
    expect_diag(&d, want);
    qd_diags_free(&d);
    qd_manifest_destroy(m);
}

/* A distillation whose validation or baseline needs a validation split it
 * does not have is refused before it starts, not after hours of distilling. */
Test(manifest, distillation_needing_a_validation_split, .init = setup_tmp)
{
    const char *base = "name: v\n"
                       "dataset: {plugin: synthetic}\n"
                       "model: {layers: [{type: flatten}, {type: linear, out: 10}]}\n"
                       "distill: {plugin: performance_matching, validate_every: 50}\n";
    const char *p = write_tmp("noval.yaml", base);
    qd_manifest *m = load(p, NULL, 0);
    qd_diags d = {0};
    cr_expect_eq(qd_manifest_validate(m, reg, &d), 2);
    char want[800];
    snprintf(want, sizeof want,
             "%s:4:57: 'validate_every' in distill needs a validation split: set "
             "dataset.validation (e.g. 5000)", p);
    expect_diag(&d, want);
    snprintf(want, sizeof want,
             "%s:4:1: the evaluation's random-subset baseline (evaluate.baselines, default "
             "true) tunes its learning rate on a validation split, and dataset.validation is "
             "0: set it (e.g. 5000) or evaluate.baselines: false", p);
    expect_diag(&d, want);
    qd_diags_free(&d);
    qd_manifest_destroy(m);

    /* an explicit 0 is pointed at; baselines off and no validate_every: fine */
    const char *ov[] = {"dataset.validation=0", "distill.validate_every=0"};
    m = load(p, ov, 2);
    d = (qd_diags){0};
    cr_expect_eq(qd_manifest_validate(m, reg, &d), 1);
    expect_diag(&d, "<command line>:1:1: the evaluation's random-subset baseline "
                    "(evaluate.baselines, default true) tunes its learning rate on a "
                    "validation split, and dataset.validation is 0: set it (e.g. 5000) or "
                    "evaluate.baselines: false");
    qd_diags_free(&d);
    qd_manifest_destroy(m);
    const char *off[] = {"distill.validate_every=0", "evaluate.baselines=false"};
    m = load(p, off, 2);
    d = (qd_diags){0};
    size_t n = qd_manifest_validate(m, reg, &d);
    expect_no_diags(&d, n);
    qd_diags_free(&d);
    qd_manifest_destroy(m);
    const char *split[] = {"dataset.validation=0.1"};
    m = load(p, split, 1);
    d = (qd_diags){0};
    n = qd_manifest_validate(m, reg, &d);
    expect_no_diags(&d, n);
    qd_diags_free(&d);
    qd_manifest_destroy(m);
}

/* ------------------------------------------------------------------------
 * Validation problems
 * ---------------------------------------------------------------------- */

Test(manifest, unknown_plugins_are_named_with_suggestions, .init = setup_tmp)
{
    qd_diags d;
    qd_manifest *m;
    size_t n = validate_text("dataset: {plugin: mnsit, path: x, validation: 10}\n"
                             "distill: {plugin: performance_matchin}\n"
                             "simulator: {plugin: qiskit}\n",
                             NULL, 0, &m, &d);
    cr_expect_eq(n, 3);
    const char *p = qd_manifest_path(m);
    char want[3][900];
    snprintf(want[0], sizeof want[0],
             "%s:3:19: unknown dataset plugin 'mnsit' (did you mean 'mnist'? available: mnist, "
             "cifar10, synthetic)",
             p);
    snprintf(want[1], sizeof want[1],
             "%s:4:19: unknown distiller plugin 'performance_matchin' (did you mean "
             "'performance_matching'? available: performance_matching, buggy)",
             p);
    snprintf(want[2], sizeof want[2],
             "%s:5:21: unknown simulator plugin 'qiskit' of layer 'q' (available: statevector)",
             p);
    for (int i = 0; i < 3; i++)
        expect_diag(&d, want[i]);
    qd_diags_free(&d);
    qd_manifest_destroy(m);
}

Test(manifest, all_problems_in_one_pass, .init = setup_tmp)
{
    qd_diags d;
    qd_manifest *m;
    const char *ovr[] = {"evaluate.init=fixd"};
    size_t n = validate_text("seed: -1\n"                                  /* 3 */
                             "threads: two\n"                              /* 4 */
                             "traim: {}\n"                                 /* 5 */
                             "dataset: {plugin: mnist, pth: x, subset: 2.5}\n" /* 6 */
                             "train: {lr: 0, epochs: 0, optimizer: rmsprop, momentum: x}\n"
                             "evaluate: {lr_grid: [0.1, fast], baselines: maybe}\n"
                             "observable: {trainable: 'no', matrix: [[1, 0], [0]]}\n"
                             "distill: {steps: 5}\n",
                             ovr, 1, &m, &d);
    const char *p = qd_manifest_path(m);
    char buf[1200];
#define WANT(fmt, ...)                                                                        \
    do {                                                                                      \
        snprintf(buf, sizeof buf, fmt, __VA_ARGS__);                                          \
        expect_diag(&d, buf);                                                                 \
    } while (0)
    WANT("%s:3:7: 'seed': -1 is out of range (must be >= 0)", p);
    WANT("%s:4:10: 'threads': expected an integer, got 'two'", p);
    WANT("%s:5:1: unknown top-level key 'traim' (did you mean 'train'?)", p);
    WANT("%s:6:26: unknown key 'pth' in dataset 'mnist' (did you mean 'path'?)", p);
    WANT("%s:6:10: missing required key 'path' in dataset 'mnist'", p);
    WANT("%s:6:42: 'subset' in dataset 'mnist': 2.5 is neither a sample count nor a fraction in "
         "(0, 1)",
         p);
    WANT("%s:7:13: 'lr' in train: 0 is out of range (must be > 0)", p);
    WANT("%s:7:24: 'epochs' in train: 0 is out of range (must be >= 1)", p);
    WANT("%s:7:38: 'optimizer' in train: bad value 'rmsprop' (expected one of: sgd, adam)", p);
    WANT("%s:7:57: 'momentum' in train: expected a number, got 'x'", p);
    WANT("%s:8:27: 'lr_grid' in evaluate, item 1: expected a number, got 'fast'", p);
    WANT("%s:8:45: 'baselines' in evaluate: expected true or false, got 'maybe'", p);
    WANT("%s", "<command line>:1:1: 'init' in evaluate: bad value 'fixd' (expected one of: "
               "fixed, random; did you mean 'fixed'?)");
    WANT("%s:9:25: 'trainable' in observable 'hermitian' of layer 'q': expected true or false, "
         "got 'no' (YAML 1.2 booleans are only true and false)",
         p);
    WANT("%s:9:48: 'matrix' in observable 'hermitian' of layer 'q': ragged matrix: row 2 has 1 "
         "entry but row 1 has 2",
         p);
    WANT("%s:10:10: missing required key 'plugin' in the distill section (available distiller "
         "plugins: performance_matching, buggy)",
         p);
#undef WANT
    cr_expect_eq(n, 16, "%zu problems", n);
    qd_diags_free(&d);
    qd_manifest_destroy(m);
}

Test(manifest, model_and_layer_problems, .init = setup_tmp)
{
    const char *p = write_tmp("layers.yaml",
                              "name: l\n"
                              "model:\n"
                              "  layers:\n"
                              "    - {type: conv, name: c1}\n"
                              "    - {name: x}\n"
                              "    - {type: linear, name: c1, out: 0, bias: sometimes}\n"
                              "    - 7\n"
                              "    - type: quantum\n"
                              "      name: q\n"
                              "      wires: 2\n"
                              "      encoder: {plugin: amplitude}\n"
                              "      ansatz: {layers: 2}\n"
                              "      observable:\n"
                              "  depth: 3\n");
    qd_manifest *m = load(p, NULL, 0);
    qd_diags d = {0};
    size_t n = qd_manifest_validate(m, reg, &d);
    char buf[1200];
#define WANT(fmt)                                                                             \
    do {                                                                                      \
        snprintf(buf, sizeof buf, fmt, p);                                                    \
        expect_diag(&d, buf);                                                                 \
    } while (0)
    WANT("%s:4:14: unknown layer type 'conv' in layer 'c1' (did you mean 'conv2d'? types: "
         "conv2d, maxpool2d, avgpool2d, linear, relu, tanh, sigmoid, flatten, add, mix, "
         "dropout, quantum)");
    WANT("%s:5:7: missing required key 'type' in layer 'x' (types: conv2d, maxpool2d, "
         "avgpool2d, linear, relu, tanh, sigmoid, flatten, add, mix, dropout, quantum)");
    WANT("%s:6:28: duplicate layer name 'c1' (also used at line 4, column 26)");
    WANT("%s:6:37: 'out' in layer 'c1': 0 is out of range (must be in [1, 16777216])");
    WANT("%s:6:46: 'bias' in layer 'c1': expected true or false, got 'sometimes'");
    WANT("%s:7:7: 'layers' in model, item 3: expected a mapping (key: value pairs), got '7'");
    WANT("%s:12:15: missing required key 'plugin' in the ansatz section of layer 'q' "
         "(available ansatz plugins: strongly_entangling)");
    WANT("%s:8:7: missing required key 'simulator' in layer 'q'");
    WANT("%s:14:3: unknown key 'depth' in model (valid keys: layers, name)");
#undef WANT
    /* the null observable section: plugin missing, located at the empty value */
    int found = 0;
    for (size_t i = 0; i < d.n; i++)
        found += strstr(d.msgs[i], "missing required key 'plugin' in the observable section of "
                                   "layer 'q'") != NULL;
    cr_expect_eq(found, 1);
    cr_expect_eq(n, 10, "%zu problems", n);
    qd_diags_free(&d);
    qd_manifest_destroy(m);
}

Test(manifest, bad_sections, .init = setup_tmp)
{
    const char *p = write_tmp("bad.yaml", "seed: 1\n"
                                          "model: [1]\n"
                                          "dataset: mnist\n"
                                          "train: fast\n"
                                          "distill:\n");
    qd_manifest *m = load(p, NULL, 0);
    qd_diags d = {0};
    size_t n = qd_manifest_validate(m, reg, &d);
    char buf[1200];
#define WANT(fmt)                                                                             \
    do {                                                                                      \
        snprintf(buf, sizeof buf, fmt, p);                                                    \
        expect_diag(&d, buf);                                                                 \
    } while (0)
    WANT("%s:1:1: missing required top-level key 'name'");
    WANT("%s:2:8: 'model': expected a mapping (key: value pairs), got a sequence");
    WANT("%s:3:10: 'dataset': expected a mapping (key: value pairs), got 'mnist'");
    WANT("%s:4:8: 'train': expected a mapping (key: value pairs), got 'fast'");
#undef WANT
    cr_expect_eq(n, 5, "%zu", n);
    qd_diags_free(&d);
    qd_manifest_destroy(m);
}

Test(manifest, buggy_plugin_default_is_reported, .init = setup_tmp)
{
    qd_diags d;
    qd_manifest *m;
    size_t n = validate_text("distill: {plugin: buggy}\nevaluate: {baselines: false}\n", NULL,
                             0, &m, &d);
    cr_expect_eq(n, 1);
    expect_diag(&d, "<default>: 'n' in distiller 'buggy': expected an integer, got 'many'");
    qd_diags_free(&d);
    qd_manifest_destroy(m);
}

Test(manifest, dataset_counts_accept_fractions, .init = setup_tmp)
{
    qd_diags d;
    qd_manifest *m;
    size_t n = validate_text("dataset: {plugin: synthetic, subset: 0.5, validation: 1000, "
                             "test_subset: 0}\n",
                             NULL, 0, &m, &d);
    expect_no_diags(&d, n);
    qd_diags_free(&d);
    qd_manifest_destroy(m);
    n = validate_text("dataset: {plugin: synthetic, subset: -3, validation: 1.0, "
                      "test_subset: x}\n",
                      NULL, 0, &m, &d);
    cr_expect_eq(n, 3);
    qd_diags_free(&d);
    qd_manifest_destroy(m);
}

Test(manifest, load_errors_carry_positions, .init = setup_tmp)
{
    qd_manifest *m = (qd_manifest *)1;
    qd_error e;
    const char *p = write_tmp("syntax.yaml", "name: x\nmodel: {layers: [\n");
    cr_expect_eq(qd_manifest_load(p, NULL, 0, &m, &e), QD_ERR_MANIFEST);
    cr_expect_null(m);
    char want[700];
    snprintf(want, sizeof want, "%s:3:1: did not find expected node content", p);
    cr_expect(strncmp(e.msg, want, strlen(want)) == 0, "%s", e.msg);
    p = write_tmp("empty.yaml", "\n");
    cr_expect_eq(qd_manifest_load(p, NULL, 0, &m, &e), QD_ERR_MANIFEST);
    snprintf(want, sizeof want, "%s:1:1: manifest is empty", p);
    cr_expect_str_eq(e.msg, want);
}

/* ------------------------------------------------------------------------
 * Core schemas
 * ---------------------------------------------------------------------- */

static const char *def_of(const qd_param *s, const char *key)
{
    const qd_param *p = qd_schema_find(s, key);
    cr_assert_not_null(p, "%s", key);
    return p->def;
}

Test(manifest, core_schemas)
{
    const qd_param *top = qd_manifest_top_schema();
    cr_expect(qd_schema_find(top, "name")->flags & QD_PARAM_REQUIRED);
    cr_expect_str_eq(def_of(top, "seed"), "1");
    cr_expect_str_eq(def_of(top, "threads"), "0");
    const char *sections[] = {"dataset", "model", "encoder", "ansatz", "observable",
                              "simulator", "train", "distill", "evaluate", "sweep"};
    for (size_t i = 0; i < 10; i++)
        cr_expect_eq(qd_schema_find(top, sections[i])->type, QD_PARAM_MAP, "%s", sections[i]);
    const qd_param *tr = qd_train_schema();
    cr_expect_str_eq(def_of(tr, "optimizer"), "sgd");
    cr_expect_str_eq(qd_schema_find(tr, "optimizer")->choices, "sgd|adam");
    cr_expect_str_eq(def_of(tr, "lr"), "0.01");
    cr_expect_str_eq(def_of(tr, "momentum"), "0.9");
    cr_expect_str_eq(def_of(tr, "epochs"), "10");
    cr_expect_str_eq(def_of(tr, "batch_size"), "64");
    cr_expect_str_eq(def_of(tr, "lr_decay_factor"), "0.5");
    cr_expect_str_eq(def_of(tr, "eval_batch_size"), "1000");
    const qd_param *ev = qd_evaluate_schema();
    cr_expect_str_eq(def_of(ev, "models"), "10");
    cr_expect_str_eq(def_of(ev, "init"), "fixed");
    cr_expect_str_eq(def_of(ev, "baselines"), "true");
    cr_expect_str_eq(def_of(ev, "lr_grid"), "[0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3]");
    const qd_param *ds = qd_dataset_core_schema();
    cr_expect_str_eq(def_of(ds, "subset"), "0");
    cr_expect_str_eq(def_of(ds, "validation"), "0");
    cr_expect_not_null(qd_schema_find(ds, "test_subset"));
    /* every default parses and fits its own parameter */
    const qd_param *all[] = {top, tr, ev, ds};
    for (size_t s = 0; s < 4; s++)
        for (const qd_param *p = all[s]; p->name; p++) {
            if (!p->def)
                continue;
            char text[256];
            snprintf(text, sizeof text, "%s: %s\n", p->name, p->def);
            qd_config *c;
            qd_error e;
            cr_assert_eq(qd_config_load_string(text, strlen(text), "def", NULL, &c, &e), QD_OK);
            qd_param one[2] = {*p, END};
            qd_diags d = {0};
            cr_expect_eq(qd_schema_validate(one, qd_config_root(c), NULL, "x", &d), 0, "%s",
                         p->name);
            qd_diags_free(&d);
            qd_config_destroy(c);
        }
    char *md = qd_schema_markdown(tr);
    cr_expect(strstr(md, "| `optimizer` | enum sgd\\|adam | `sgd` | optimizer |\n"), "%s", md);
    free(md);
}
