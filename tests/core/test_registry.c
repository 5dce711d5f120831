/* The plugin loader: good plugins load and run; every kind of bad plugin
 * file is rejected with one line naming the file and the reason. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qdistill/config.h"
#include "qdistill/registry.h"

static char *fixture(int variant)
{
    static char path[4096];
    const char *b = getenv("QD_TEST_BUILDDIR");
    cr_assert(b, "QD_TEST_BUILDDIR not set");
    snprintf(path, sizeof path, "%s/tests/core/fx_plugin_%d.so", b, variant);
    return path;
}

static qd_registry *reg_new(void)
{
    qd_registry *r;
    qd_error err;
    cr_assert_eq(qd_registry_create(&r, &err), QD_OK);
    return r;
}

static void expect_reject(int variant, const char *why)
{
    qd_registry *r = reg_new();
    qd_error err;
    qd_error_clear(&err);
    const char *p = fixture(variant);
    int rc = qd_registry_load_file(r, p, &err);
    cr_expect_eq(rc, QD_ERR_PLUGIN, "variant %d: rc %d (%s)", variant, rc, err.msg);
    cr_expect(strstr(err.msg, p) == err.msg, "message must start with the file: %s", err.msg);
    cr_expect(strstr(err.msg, why) != NULL, "variant %d: '%s' not in '%s'", variant, why, err.msg);
    cr_expect(strchr(err.msg, '\n') == NULL, "one line: %s", err.msg);
    cr_expect_eq(qd_registry_count(r), 0);
    qd_registry_destroy(r);
}

Test(registry, rejects_other_abi_major) { expect_reject(1, "ABI 2.0"); }
Test(registry, rejects_small_descriptor) { expect_reject(2, "descriptor is 8 bytes"); }
Test(registry, rejects_missing_callback) { expect_reject(3, "'load'"); }
Test(registry, rejects_duplicate_names) { expect_reject(4, "duplicate dataset plugin 'fx_tiny'"); }
Test(registry, rejects_missing_entry) { expect_reject(5, "no 'qd_plugin_entry' symbol"); }
Test(registry, rejects_null_list) { expect_reject(6, "returned NULL"); }

Test(registry, rejects_non_elf_and_missing_files)
{
    char dir[] = "/tmp/qd_reg_XXXXXX";
    cr_assert(mkdtemp(dir));
    char path[4200];
    snprintf(path, sizeof path, "%s/not a plugin é.so", dir);
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fputs("#!/bin/sh\necho this is text\n", f);
    fclose(f);
    qd_registry *r = reg_new();
    qd_error err;
    cr_expect_eq(qd_registry_load_file(r, path, &err), QD_ERR_PLUGIN);
    cr_expect(strstr(err.msg, path) == err.msg, "%s", err.msg);
    cr_expect(strstr(err.msg, "cannot load plugin"), "%s", err.msg);

    char missing[4300];
    snprintf(missing, sizeof missing, "%s/absent.so", dir);
    cr_expect_eq(qd_registry_load_file(r, missing, &err), QD_ERR_PLUGIN);
    cr_expect(strstr(err.msg, "file not found"), "%s", err.msg);

    /* load_dir: the bad file is a reported problem, not a failure */
    char *problems = NULL;
    cr_expect_eq(qd_registry_load_dir(r, dir, &problems, &err), QD_OK);
    cr_assert(problems);
    cr_expect(strstr(problems, "not a plugin é.so"), "%s", problems);
    free(problems);
    qd_registry_destroy(r);
    unlink(path);
    rmdir(dir);
}

/* Loaded configs are kept until the end of the test: instances point into them. */
static qd_config *g_cfgs[16];
static int g_ncfg;

static void free_cfgs(void)
{
    while (g_ncfg > 0)
        qd_config_destroy(g_cfgs[--g_ncfg]);
}

static qd_instance *make(qd_registry *r, const char *yaml, qd_error *err, int *rc)
{
    qd_config *cfg;
    cr_assert_eq(qd_config_load_string(yaml, strlen(yaml), "test.yaml", NULL, &cfg, err), QD_OK,
                 "%s", err->msg);
    qd_instance_opts o = {.seed = 1, .stream = "dataset", .threads = 1};
    qd_instance *in = NULL;
    *rc = qd_instance_create(r, QD_KIND_DATASET, qd_config_root(cfg), &o, &in, err);
    cr_assert(g_ncfg < 16);
    g_cfgs[g_ncfg++] = cfg;
    return in;
}

Test(registry, good_plugin_loads_runs_and_reports_errors)
{
    qd_registry *r = reg_new();
    qd_error err;
    cr_assert_eq(qd_registry_load_file(r, fixture(0), &err), QD_OK, "%s", err.msg);
    cr_assert_eq(qd_registry_count(r), 1);
    const qd_plugin_desc *d = qd_registry_find(r, QD_KIND_DATASET, "fx_tiny");
    cr_assert(d);
    cr_expect_null(qd_registry_find(r, QD_KIND_ENCODER, "fx_tiny"));

    /* loading the same file again is a duplicate */
    cr_expect_eq(qd_registry_load_file(r, fixture(0), &err), QD_ERR_PLUGIN);
    cr_expect(strstr(err.msg, "duplicate"), "%s", err.msg);

    int rc;
    qd_instance *in = make(r, "plugin: fx_tiny\nn: 3\n", &err, &rc);
    cr_assert_eq(rc, QD_OK, "%s", err.msg);
    const qd_dataset_vt *vt = qd_instance_vtable(in);
    qd_dataset ds;
    cr_assert_eq(vt->load(qd_instance_self(in), QD_SPLIT_TEST, &ds), QD_OK);
    cr_expect_eq(ds.n, 3);
    cr_expect_eq(ds.images[4], 101.0);
    qd_dataset_free(&ds);
    qd_instance_destroy(in);

    /* defaults apply */
    in = make(r, "plugin: fx_tiny\n", &err, &rc);
    cr_assert_eq(rc, QD_OK, "%s", err.msg);
    cr_expect_eq(qd_instance_host(in)->get_int(qd_instance_host(in), "n"), 4);
    qd_instance_destroy(in);

    /* create() reporting an error: the message names the plugin */
    in = make(r, "plugin: fx_tiny\nfail: true\n", &err, &rc);
    cr_expect_eq(rc, QD_ERR_INVALID);
    cr_expect_null(in);
    cr_expect(strstr(err.msg, "dataset 'fx_tiny': asked to fail"), "%s", err.msg);

    /* create() succeeding without an instance is a plugin error */
    in = make(r, "plugin: fx_tiny\nnull_self: true\n", &err, &rc);
    cr_expect_eq(rc, QD_ERR_PLUGIN);
    cr_expect_null(in);
    cr_expect(strstr(err.msg, "fx_tiny"), "%s", err.msg);

    /* schema errors are located */
    in = make(r, "plugin: fx_tiny\nn: 0\n", &err, &rc);
    cr_expect_eq(rc, QD_ERR_MANIFEST);
    cr_expect(strstr(err.msg, "test.yaml:2:4:"), "%s", err.msg);
    in = make(r, "plugin: fx_tiny\nnn: 3\n", &err, &rc);
    cr_expect_eq(rc, QD_ERR_MANIFEST);
    cr_expect(strstr(err.msg, "test.yaml:2:1:") && strstr(err.msg, "'n'"), "%s", err.msg);

    /* unknown plugin lists the available ones */
    in = make(r, "plugin: fx_tinyy\n", &err, &rc);
    cr_expect_eq(rc, QD_ERR_MANIFEST);
    cr_expect(strstr(err.msg, "test.yaml:1:9:") && strstr(err.msg, "fx_tiny"), "%s", err.msg);
    free_cfgs();
    qd_registry_destroy(r);
}

Test(registry, search_path_and_shadowing)
{
    /* the build tree's plugins are found without any configuration */
    qd_registry *r = reg_new();
    qd_error err;
    char *problems = NULL;
    cr_assert_eq(qd_registry_load_default(r, NULL, 0, &problems, &err), QD_OK);
    cr_expect(qd_registry_count(r) > 0, "no plugins found in the build tree");
    free(problems);
    qd_registry_destroy(r);

    /* an explicit --plugin-path that does not exist is an error */
    r = reg_new();
    const char *bad[] = {"/nonexistent/qd"};
    cr_expect_eq(qd_registry_load_default(r, bad, 1, NULL, &err), QD_ERR_IO);
    cr_expect(strstr(err.msg, "/nonexistent/qd"), "%s", err.msg);
    qd_registry_destroy(r);
}

Test(registry, kind_names_round_trip)
{
    for (int k = 1; k < QD_KIND_COUNT_; ++k)
        cr_expect_eq(qd_kind_from_name(qd_kind_name(k)), k);
    cr_expect_eq(qd_kind_from_name("ansatze"), QD_KIND_ANSATZ);
    cr_expect_eq(qd_kind_from_name("nope"), 0);
    cr_expect_null(qd_kind_name(0));
}
