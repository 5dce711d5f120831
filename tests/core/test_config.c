/* The configuration tree: loading with positions, includes, hostile input,
 * scalar conversions, overrides, emitting, matrices, suggestions and schema
 * validation. Messages are checked verbatim where their wording is the
 * contract ("file:line:col: ..."). */
#include <criterion/criterion.h>
#include <complex.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "qdistill/config.h"
#include "qdistill/schema.h"

#ifndef CMPLX  /* missing with clang on older glibc; values here are finite */
#define CMPLX(x, y) ((double complex)((double)(x) + I * (double)(y)))
#endif

/* ------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------- */

static qd_config *load_str(const char *yaml)
{
    qd_config *c = NULL;
    qd_error e;
    qd_error_clear(&e);
    int rc = qd_config_load_string(yaml, strlen(yaml), "t.yaml", NULL, &c, &e);
    cr_assert_eq(rc, QD_OK, "load failed: %s", e.msg);
    cr_assert_not_null(c);
    return c;
}

/* Load text that must fail; returns the status, message in e. */
static int load_bad(const char *yaml, size_t len, const qd_config_limits *lim, qd_error *e)
{
    qd_config *c = (qd_config *)1;
    qd_error_clear(e);
    int rc = qd_config_load_string(yaml, len, "t.yaml", lim, &c, e);
    cr_assert_neq(rc, QD_OK, "loading should have failed:\n%.200s", yaml);
    cr_assert_null(c, "*out must be NULL on failure");
    cr_assert(strchr(e->msg, '\n') == NULL, "one line: %s", e->msg);
    return rc;
}

static void expect_msg(const qd_error *e, const char *want)
{
    cr_expect_str_eq(e->msg, want);
}

static void expect_prefix(const qd_error *e, const char *prefix)
{
    cr_expect(strncmp(e->msg, prefix, strlen(prefix)) == 0, "'%s' does not start with '%s'",
              e->msg, prefix);
}

static void expect_has(const char *s, const char *part)
{
    cr_expect(s && strstr(s, part), "'%s' not in '%s'", part, s ? s : "(null)");
}

static const char *src_path(const char *rel)
{
    static char buf[4][4096];
    static int k;
    const char *root = getenv("QD_TEST_SRCDIR");
    cr_assert(root, "QD_TEST_SRCDIR not set");
    char *b = buf[k++ & 3];
    snprintf(b, 4096, "%s/tests/core/manifests/%s", root, rel);
    return b;
}

static char tmpdir[64];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/qd_cfg_XXXXXX");
    cr_assert(mkdtemp(tmpdir));
}

static void remove_tmpdir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    cr_expect_eq(system(cmd), 0);
}

static const char *write_tmp(const char *name, const void *data, size_t len)
{
    static char path[4][512];
    static int k;
    char *p = path[k++ & 3];
    snprintf(p, 512, "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "wb");
    cr_assert(f, "cannot write %s", p);
    cr_assert_eq(fwrite(data, 1, len, f), len);
    fclose(f);
    return p;
}

static const char *write_tmp_str(const char *name, const char *text)
{
    return write_tmp(name, text, strlen(text));
}

static void expect_at(const qd_node *n, const char *file, int line, int col)
{
    cr_assert_not_null(n);
    cr_expect_str_eq(qd_node_file(n), file);
    cr_expect_eq(qd_node_line(n), line, "line %d, want %d", qd_node_line(n), line);
    cr_expect_eq(qd_node_col(n), col, "col %d, want %d", qd_node_col(n), col);
}

/* ------------------------------------------------------------------------
 * Loading and positions
 * ---------------------------------------------------------------------- */

Test(config, positions_of_nodes_and_keys)
{
    qd_config *c = load_str("name: demo\n"
                            "train:\n"
                            "  lr: 0.5\n"
                            "  grid: [1, 2,  3]\n"
                            "layers:\n"
                            "  - {type: conv2d, name: c1}\n"
                            "  - type: linear\n"
                            "    out: 10\n");
    const qd_node *r = qd_config_root(c);
    cr_assert_eq(qd_node_kind(r), QD_NODE_MAP);
    cr_expect_eq(qd_node_len(r), 3);
    cr_expect_str_eq(qd_node_key_at(r, 1), "train");
    expect_at(qd_node_key_node_at(r, 1), "t.yaml", 2, 1);
    const qd_node *train = qd_node_get(r, "train");
    expect_at(train, "t.yaml", 3, 3);
    expect_at(qd_node_key_node_at(train, 0), "t.yaml", 3, 3);
    expect_at(qd_node_get(train, "lr"), "t.yaml", 3, 7);
    const qd_node *grid = qd_node_get(train, "grid");
    cr_expect_eq(qd_node_kind(grid), QD_NODE_SEQ);
    expect_at(grid, "t.yaml", 4, 9);
    expect_at(qd_node_at(grid, 2), "t.yaml", 4, 17);
    cr_expect_str_eq(qd_node_str(qd_node_at(grid, 2)), "3");
    const qd_node *l1 = qd_node_path(r, "layers.1");
    expect_at(l1, "t.yaml", 7, 5);
    expect_at(qd_node_get(l1, "out"), "t.yaml", 8, 10);
    /* reading accessors are NULL-safe */
    cr_expect_null(qd_node_get(NULL, "x"));
    cr_expect_null(qd_node_at(grid, 3));
    cr_expect_null(qd_node_key_at(grid, 0));
    cr_expect_null(qd_node_str(train));
    cr_expect_eq(qd_node_len(qd_node_get(train, "lr")), 0);
    qd_config_destroy(c);
}

Test(config, utf8_columns_count_characters)
{
    qd_config *c = load_str("k: {é: 1, ü: x}\n");
    const qd_node *m = qd_node_get(qd_config_root(c), "k");
    expect_at(qd_node_key_node_at(m, 1), "t.yaml", 1, 11);
    expect_at(qd_node_get(m, "ü"), "t.yaml", 1, 14);
    qd_config_destroy(c);
}

Test(config, path_lookup)
{
    qd_config *c = load_str("model:\n"
                            "  layers:\n"
                            "    - {name: c1, type: conv2d, padding: 2}\n"
                            "    - {name: '7', type: relu}\n"
                            "    - {name: q, type: quantum, observable: {trainable: true}}\n"
                            "a: {b: {c: deep}}\n");
    const qd_node *r = qd_config_root(c);
    cr_expect_str_eq(qd_node_str(qd_node_path(r, "model.layers.c1.padding")), "2");
    cr_expect_str_eq(qd_node_str(qd_node_path(r, "model.layers.0.type")), "conv2d");
    /* digits index, even when an item is named like a number */
    cr_expect_str_eq(qd_node_str(qd_node_path(r, "model.layers.1.type")), "relu");
    cr_expect_str_eq(qd_node_str(qd_node_path(r, "model.layers.q.observable.trainable")), "true");
    cr_expect_str_eq(qd_node_str(qd_node_path(r, "a.b.c")), "deep");
    cr_expect_eq(qd_node_path(r, ""), r);
    cr_expect_null(qd_node_path(r, "model.layers.c9"));
    cr_expect_null(qd_node_path(r, "model.layers.3"));
    cr_expect_null(qd_node_path(r, "a..b"));
    cr_expect_null(qd_node_path(r, "a.b."));
    cr_expect_null(qd_node_path(r, ".a"));
    cr_expect_null(qd_node_path(r, "a.b.c.d"));
    cr_expect_null(qd_node_path(NULL, "a"));
    qd_config_destroy(c);
}

Test(config, nulls_and_styles)
{
    qd_config *c = load_str("a:\nb: ~\nc: null\nd: ''\ne: 'null'\nf: NULL\n");
    const qd_node *r = qd_config_root(c);
    const char *nulls[] = {"a", "b", "c", "f"};
    for (size_t i = 0; i < 4; i++) {
        cr_expect_eq(qd_node_kind(qd_node_get(r, nulls[i])), QD_NODE_NULL, "%s", nulls[i]);
        cr_expect_null(qd_node_str(qd_node_get(r, nulls[i])));
    }
    /* quoted: strings, even when empty or spelled null */
    cr_expect_eq(qd_node_kind(qd_node_get(r, "d")), QD_NODE_SCALAR);
    cr_expect_str_eq(qd_node_str(qd_node_get(r, "d")), "");
    cr_expect_str_eq(qd_node_str(qd_node_get(r, "e")), "null");
    qd_config_destroy(c);
}

Test(config, load_string_takes_any_value)
{
    qd_config *c = load_str("[0.5, 0.25]");
    cr_expect_eq(qd_node_kind(qd_config_root(c)), QD_NODE_SEQ);
    qd_config_destroy(c);
    c = load_str("0.02");
    cr_expect_str_eq(qd_node_str(qd_config_root(c)), "0.02");
    qd_config_destroy(c);
    c = load_str("");
    cr_expect_eq(qd_node_kind(qd_config_root(c)), QD_NODE_NULL);
    qd_config_destroy(c);
}

/* ------------------------------------------------------------------------
 * Scalar conversions (YAML 1.2 core schema)
 * ---------------------------------------------------------------------- */

Test(config, bools)
{
    qd_config *c = load_str("t: [true, True, TRUE]\nf: [false, False, FALSE]\n"
                            "bad: [yes, 'true', 1, [x]]\n");
    const qd_node *r = qd_config_root(c);
    qd_error e;
    for (size_t i = 0; i < 3; i++) {
        int v = -1;
        cr_expect_eq(qd_node_as_bool(qd_node_at(qd_node_get(r, "t"), i), &v, &e), QD_OK);
        cr_expect_eq(v, 1);
        cr_expect_eq(qd_node_as_bool(qd_node_at(qd_node_get(r, "f"), i), &v, &e), QD_OK);
        cr_expect_eq(v, 0);
    }
    const qd_node *bad = qd_node_get(r, "bad");
    int v = 7;
    cr_expect_eq(qd_node_as_bool(qd_node_at(bad, 0), &v, &e), QD_ERR_INVALID);
    expect_msg(&e, "t.yaml:3:7: expected true or false, got 'yes' (YAML 1.2 booleans are only "
                   "true and false)");
    cr_expect_eq(v, 7, "output untouched on failure");
    cr_expect_eq(qd_node_as_bool(qd_node_at(bad, 1), &v, &e), QD_ERR_INVALID);
    expect_msg(&e, "t.yaml:3:12: expected true or false, got the quoted string 'true' (quoted "
                   "values are strings; remove the quotes)");
    cr_expect_eq(qd_node_as_bool(qd_node_at(bad, 2), &v, &e), QD_ERR_INVALID);
    expect_msg(&e, "t.yaml:3:20: expected true or false, got '1'");
    cr_expect_eq(qd_node_as_bool(qd_node_at(bad, 3), &v, &e), QD_ERR_INVALID);
    expect_msg(&e, "t.yaml:3:23: expected true or false, got a sequence");
    cr_expect_eq(qd_node_as_bool(NULL, &v, &e), QD_ERR_INVALID);
    qd_config_destroy(c);
}

Test(config, integers)
{
    qd_config *c = load_str("ok: [0, -5, +7, 0x1F, 0o17, 007, 9223372036854775807, "
                            "-9223372036854775808]\n"
                            "bad: [3.5, '3', abc, 9223372036854775808, 1e3, 0x, 0b1, ~]\n");
    const qd_node *r = qd_config_root(c);
    const long long want[] = {0, -5, 7, 31, 15, 7, LLONG_MAX, LLONG_MIN};
    qd_error e;
    for (size_t i = 0; i < 8; i++) {
        long long v = 12345;
        cr_expect_eq(qd_node_as_int(qd_node_at(qd_node_get(r, "ok"), i), &v, &e), QD_OK,
                     "%zu: %s", i, e.msg);
        cr_expect_eq(v, want[i], "%zu: %lld", i, v);
    }
    const char *msgs[] = {
        "t.yaml:2:7: expected an integer, got '3.5' (a number with a fraction or exponent)",
        "t.yaml:2:12: expected an integer, got the quoted string '3' (quoted values are "
        "strings; remove the quotes)",
        "t.yaml:2:17: expected an integer, got 'abc'",
        "t.yaml:2:22: integer '9223372036854775808' is out of range (at most "
        "9223372036854775807 in magnitude)",
        "t.yaml:2:43: expected an integer, got '1e3' (a number with a fraction or exponent)",
        "t.yaml:2:48: expected an integer, got '0x'",
        "t.yaml:2:52: expected an integer, got '0b1'",
        "t.yaml:2:57: expected an integer, got nothing (an empty value)",
    };
    for (size_t i = 0; i < 8; i++) {
        long long v;
        cr_expect_eq(qd_node_as_int(qd_node_at(qd_node_get(r, "bad"), i), &v, &e),
                     QD_ERR_INVALID);
        expect_msg(&e, msgs[i]);
    }
    qd_config_destroy(c);
}

Test(config, doubles)
{
    qd_config *c = load_str("ok: [1e-3, -2.5, .5, 3, 0x10, .inf, -.Inf, +.INF, 1., 2E+2]\n"
                            "nan: .nan\n"
                            "bad: [abc, '1.5', 1e999, inf, nan, 1.2.3, 0x1p3]\n");
    const qd_node *r = qd_config_root(c);
    const double want[] = {1e-3, -2.5, 0.5, 3.0, 16.0, INFINITY, -INFINITY, INFINITY, 1.0, 200.0};
    qd_error e;
    for (size_t i = 0; i < 10; i++) {
        double v = -1;
        cr_expect_eq(qd_node_as_double(qd_node_at(qd_node_get(r, "ok"), i), &v, &e), QD_OK,
                     "%zu: %s", i, e.msg);
        cr_expect(v == want[i], "%zu: %g != %g", i, v, want[i]);
    }
    double v = 0;
    cr_expect_eq(qd_node_as_double(qd_node_get(r, "nan"), &v, &e), QD_OK);
    cr_expect(isnan(v));
    const qd_node *bad = qd_node_get(r, "bad");
    cr_expect_eq(qd_node_as_double(qd_node_at(bad, 0), &v, &e), QD_ERR_INVALID);
    expect_msg(&e, "t.yaml:3:7: expected a number, got 'abc'");
    cr_expect_eq(qd_node_as_double(qd_node_at(bad, 1), &v, &e), QD_ERR_INVALID);
    expect_has(e.msg, "quoted string '1.5'");
    cr_expect_eq(qd_node_as_double(qd_node_at(bad, 2), &v, &e), QD_ERR_INVALID);
    expect_msg(&e, "t.yaml:3:19: number '1e999' is out of range for a double");
    for (size_t i = 3; i < 7; i++)
        cr_expect_eq(qd_node_as_double(qd_node_at(bad, i), &v, &e), QD_ERR_INVALID, "%zu", i);
    qd_config_destroy(c);
}

/* ------------------------------------------------------------------------
 * Includes
 * ---------------------------------------------------------------------- */

Test(config, includes_relative_paths_and_sibling_merge)
{
    qd_config *c;
    qd_error e;
    const char *main_path = src_path("inc/main.yaml");
    cr_assert_eq(qd_config_load(main_path, NULL, &c, &e), QD_OK, "%s", e.msg);
    const qd_node *r = qd_config_root(c);
    const qd_node *m = qd_node_get(r, "model");
    cr_assert_eq(qd_node_kind(m), QD_NODE_MAP);
    /* common.yaml <- part.yaml <- main.yaml, the later layer winning */
    cr_expect_str_eq(qd_node_str(qd_node_get(m, "kind")), "common");
    cr_expect_str_eq(qd_node_str(qd_node_get(m, "width")), "32");
    cr_expect_str_eq(qd_node_str(qd_node_get(m, "depth")), "3");
    cr_expect_null(qd_node_get(m, "file"), "the include key is consumed");
    const qd_node *nested = qd_node_get(m, "nested");
    cr_expect_str_eq(qd_node_str(qd_node_get(nested, "a")), "1");
    cr_expect_str_eq(qd_node_str(qd_node_get(nested, "b")), "20");
    cr_expect_str_eq(qd_node_str(qd_node_get(nested, "c")), "30");
    /* positions stay with the text: the included file, or the overriding one */
    expect_has(qd_node_file(qd_node_get(m, "kind")), "inc/sub/../common.yaml");
    cr_expect_eq(qd_node_line(qd_node_get(m, "kind")), 1);
    cr_expect_eq(qd_node_col(qd_node_get(m, "kind")), 7);
    expect_has(qd_node_file(qd_node_get(m, "depth")), "inc/sub/part.yaml");
    cr_expect_eq(qd_node_line(qd_node_get(m, "depth")), 3);
    cr_expect_str_eq(qd_node_file(qd_node_get(m, "width")), main_path);
    cr_expect_eq(qd_node_line(qd_node_get(m, "width")), 4);
    cr_expect_str_eq(qd_node_str(qd_node_path(r, "other.leaf")), "true");
    qd_config_destroy(c);
}

Test(config, include_cycle)
{
    qd_config *c = (qd_config *)1;
    qd_error e;
    const char *a = src_path("inc/cycle_a.yaml");
    cr_assert_eq(qd_config_load(a, NULL, &c, &e), QD_ERR_MANIFEST);
    cr_expect_null(c);
    /* reported where cycle_b.yaml names cycle_a.yaml again */
    char want[8192];
    snprintf(want, sizeof want, "%s", src_path("inc/cycle_b.yaml"));
    strcat(want, ":2:14: include cycle: ");
    expect_prefix(&e, want);
    expect_has(e.msg, "cycle_a.yaml -> ");
    expect_has(e.msg, "cycle_b.yaml -> ");
    expect_has(e.msg, "(included from ");
}

Test(config, include_missing_file)
{
    qd_config *c;
    qd_error e;
    const char *p = src_path("inc/missing.yaml");
    cr_assert_eq(qd_config_load(p, NULL, &c, &e), QD_ERR_IO);
    char want[8192];
    snprintf(want, sizeof want, "%s:2:14: cannot include 'no_such_file.yaml': No such file or "
                                "directory (looked for '",
             p);
    expect_prefix(&e, want);
}

Test(config, include_errors, .init = make_tmpdir, .fini = remove_tmpdir)
{
    qd_config *c;
    qd_error e;
    /* self include */
    const char *self = write_tmp_str("self.yaml", "a: 1\nb: {file: self.yaml}\n");
    cr_expect_eq(qd_config_load(self, NULL, &c, &e), QD_ERR_MANIFEST);
    expect_has(e.msg, ":2:11: include cycle: ");
    /* depth limit: d0 -> d1 -> d2 with max_include_depth 1 */
    write_tmp_str("d1.yaml", "x: {file: d2.yaml}\n");
    write_tmp_str("d2.yaml", "y: 1\n");
    const char *d0 = write_tmp_str("d0.yaml", "top: {file: d1.yaml}\n");
    qd_config_limits lim = {0, 0, 0, 1};
    cr_expect_eq(qd_config_load(d0, &lim, &c, &e), QD_ERR_MANIFEST);
    expect_has(e.msg, "d1.yaml:1:11: includes are nested more than 1 levels deep");
    lim.max_include_depth = 2;
    cr_expect_eq(qd_config_load(d0, &lim, &c, &e), QD_OK, "%s", e.msg);
    qd_config_destroy(c);
    /* an included file must be a non-empty mapping */
    write_tmp_str("empty.yaml", "# nothing\n");
    const char *ie = write_tmp_str("ie.yaml", "a: {file: empty.yaml}\n");
    cr_expect_eq(qd_config_load(ie, NULL, &c, &e), QD_ERR_MANIFEST);
    expect_has(e.msg, "empty.yaml:1:1: included file is empty (included from ");
    write_tmp_str("list.yaml", "- 1\n");
    const char *il = write_tmp_str("il.yaml", "a: {file: list.yaml}\n");
    cr_expect_eq(qd_config_load(il, NULL, &c, &e), QD_ERR_MANIFEST);
    expect_has(e.msg, "list.yaml:1:1: the top level must be a mapping");
    /* `file` must be a path */
    const char *bad = write_tmp_str("badfile.yaml", "a: {file: [x]}\n");
    cr_expect_eq(qd_config_load(bad, NULL, &c, &e), QD_ERR_MANIFEST);
    expect_has(e.msg, "badfile.yaml:1:11: 'file' names a YAML file to include; got a sequence");
    /* a syntax error inside an included file is located in that file */
    write_tmp_str("syn.yaml", "a: [1\n");
    const char *is = write_tmp_str("is.yaml", "x:\n  file: syn.yaml\n");
    cr_expect_eq(qd_config_load(is, NULL, &c, &e), QD_ERR_MANIFEST);
    expect_has(e.msg, "syn.yaml:2:1: did not find expected ',' or ']'");
    expect_has(e.msg, "(included from ");
    expect_has(e.msg, "is.yaml:2:9)");
}

Test(config, include_at_top_level_and_anchors_around_includes, .init = make_tmpdir,
     .fini = remove_tmpdir)
{
    write_tmp_str("base.yaml", "name: base\nseed: 1\ntrain: {lr: 0.1, epochs: 3}\n"
                               "shared: {nested: {p: 1}}\n");
    /* a whole manifest derived from another one, and an anchor defined
     * inside an including mapping that is used after the include */
    const char *p = write_tmp_str("derived.yaml", "file: base.yaml\n"
                                                  "name: derived\n"
                                                  "train: {lr: 0.5}\n"
                                                  "shared:\n"
                                                  "  nested: &n {q: 2}\n"
                                                  "copy: *n\n");
    qd_config *c;
    qd_error e;
    cr_assert_eq(qd_config_load(p, NULL, &c, &e), QD_OK, "%s", e.msg);
    const qd_node *r = qd_config_root(c);
    cr_expect_str_eq(qd_node_key_at(r, 0), "name", "the included keys come first");
    cr_expect_str_eq(qd_node_str(qd_node_get(r, "name")), "derived");
    cr_expect_str_eq(qd_node_str(qd_node_get(r, "seed")), "1");
    cr_expect_str_eq(qd_node_str(qd_node_path(r, "train.lr")), "0.5");
    cr_expect_str_eq(qd_node_str(qd_node_path(r, "train.epochs")), "3");
    cr_expect_str_eq(qd_node_str(qd_node_path(r, "shared.nested.p")), "1");
    cr_expect_str_eq(qd_node_str(qd_node_path(r, "shared.nested.q")), "2");
    const qd_node *copy = qd_node_get(r, "copy");
    cr_expect_eq(qd_node_len(copy), 1, "the anchor still holds what was written");
    cr_expect_str_eq(qd_node_str(qd_node_get(copy, "q")), "2");
    /* no node is shared: changing one place leaves the other alone */
    cr_assert_eq(qd_config_set(c, "shared.nested.q", "3", NULL, &e), QD_OK);
    cr_expect_str_eq(qd_node_str(qd_node_get(copy, "q")), "2");
    qd_config_destroy(c);
}

/* ------------------------------------------------------------------------
 * Malformed and hostile input
 * ---------------------------------------------------------------------- */

Test(config, syntax_error_position)
{
    qd_error e;
    const char *y = "a: 1\nb:\n  c: 2\n d: 3\n";
    cr_expect_eq(load_bad(y, strlen(y), NULL, &e), QD_ERR_MANIFEST);
    expect_prefix(&e, "t.yaml:4:2: did not find expected key");
    y = "a: [1, 2\nb: 3\n";
    load_bad(y, strlen(y), NULL, &e);
    expect_prefix(&e, "t.yaml:2:2: did not find expected ',' or ']' (while parsing a flow "
                      "sequence at line 1, column 4)");
    y = "a:\n\tb: 1\n";
    load_bad(y, strlen(y), NULL, &e);
    expect_prefix(&e, "t.yaml:2:1: ");
    expect_has(e.msg, "tabs cannot be used for indentation");
}

Test(config, duplicate_keys)
{
    qd_error e;
    const char *y = "a: 1\nb:\n  x: 1\n  x: 2\n";
    load_bad(y, strlen(y), NULL, &e);
    expect_msg(&e, "t.yaml:4:3: duplicate key 'x' (first defined at line 3, column 3)");
    /* large mappings use a hash index: still caught */
    char big[8192] = "";
    for (int i = 0; i < 300; i++)
        snprintf(big + strlen(big), sizeof big - strlen(big), "k%d: %d\n", i, i);
    strcat(big, "k17: again\n");
    load_bad(big, strlen(big), NULL, &e);
    expect_msg(&e, "t.yaml:301:1: duplicate key 'k17' (first defined at line 18, column 1)");
}

Test(config, empty_and_non_mapping_files, .init = make_tmpdir, .fini = remove_tmpdir)
{
    qd_config *c;
    qd_error e;
    const char *p = write_tmp_str("empty.yaml", "");
    cr_expect_eq(qd_config_load(p, NULL, &c, &e), QD_ERR_MANIFEST);
    char want[600];
    snprintf(want, sizeof want, "%s:1:1: manifest is empty", p);
    expect_msg(&e, want);
    p = write_tmp_str("comments.yaml", "# just a comment\n\n---\n");
    cr_expect_eq(qd_config_load(p, NULL, &c, &e), QD_ERR_MANIFEST);
    snprintf(want, sizeof want, "%s:1:1: manifest is empty", p);
    expect_msg(&e, want);
    p = write_tmp_str("list.yaml", "\n- a\n- b\n");
    cr_expect_eq(qd_config_load(p, NULL, &c, &e), QD_ERR_MANIFEST);
    snprintf(want, sizeof want,
             "%s:2:1: the top level must be a mapping (key: value lines), not a sequence", p);
    expect_msg(&e, want);
    p = write_tmp_str("scalar.yaml", "hello\n");
    cr_expect_eq(qd_config_load(p, NULL, &c, &e), QD_ERR_MANIFEST);
    expect_has(e.msg, "not a single value");
    p = write_tmp_str("two.yaml", "a: 1\n---\nb: 2\n");
    cr_expect_eq(qd_config_load(p, NULL, &c, &e), QD_ERR_MANIFEST);
    snprintf(want, sizeof want, "%s:2:1: a second YAML document ('---') in one file", p);
    expect_prefix(&e, want);
    cr_expect_eq(qd_config_load("/nonexistent/x.yaml", NULL, &c, &e), QD_ERR_IO);
    expect_msg(&e, "/nonexistent/x.yaml: cannot open: No such file or directory");
    cr_expect_eq(qd_config_load(tmpdir, NULL, &c, &e), QD_ERR_IO);
    expect_has(e.msg, "not a regular file");
}

Test(config, binary_garbage_and_bad_encoding)
{
    qd_error e;
    /* a deterministic pseudo-random "binary file" */
    unsigned char junk[4096];
    uint32_t s = 12345;
    for (size_t i = 0; i < sizeof junk; i++) {
        s = s * 1103515245u + 12345u;
        junk[i] = (unsigned char)(s >> 16);
    }
    load_bad((const char *)junk, sizeof junk, NULL, &e);
    expect_prefix(&e, "t.yaml:");
    const char png[] = "\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    load_bad(png, sizeof png - 1, NULL, &e);
    expect_prefix(&e, "t.yaml:1:1: invalid text encoding: invalid leading UTF-8 octet (byte "
                      "0x89)");
    const char latin1[] = "name: caf\xe9\n";
    load_bad(latin1, sizeof latin1 - 1, NULL, &e);
    expect_prefix(&e, "t.yaml:1:10: invalid text encoding:");
    const char nul[] = "a: 1\nb: x\0y\n";
    load_bad(nul, sizeof nul - 1, NULL, &e);
    expect_msg(&e, "t.yaml:2:5: NUL byte in the input (this is a binary file, not YAML text)");
    const char ctl[] = "a: 1\nbb: \x01\n";
    load_bad(ctl, sizeof ctl - 1, NULL, &e);
    expect_msg(&e, "t.yaml:2:5: control character 0x01 is not allowed (is this a binary "
                   "file?)");
    const char esc[] = "a: \"x\\0y\"\n";
    load_bad(esc, sizeof esc - 1, NULL, &e);
    expect_msg(&e, "t.yaml:1:4: a value contains a NUL character (\\0)");
}

Test(config, unknown_alias_tags_and_complex_keys)
{
    qd_error e;
    const char *y = "a: *nope\n";
    load_bad(y, strlen(y), NULL, &e);
    expect_prefix(&e, "t.yaml:1:4: unknown alias '*nope'");
    y = "a: &x [1, *x]\n";
    load_bad(y, strlen(y), NULL, &e);
    expect_prefix(&e, "t.yaml:1:11: unknown alias '*x'");
    y = "a: !custom 3\n";
    load_bad(y, strlen(y), NULL, &e);
    expect_prefix(&e, "t.yaml:1:4: unsupported YAML tag '!custom'");
    y = "? [a, b]\n: 1\n";
    load_bad(y, strlen(y), NULL, &e);
    expect_msg(&e, "t.yaml:1:3: a mapping key must be a plain value, not a sequence");
    y = "'': 1\n";
    load_bad(y, strlen(y), NULL, &e);
    expect_msg(&e, "t.yaml:1:1: empty mapping key");
    /* the standard tags are understood */
    qd_config *c = load_str("s: !!str 12\nn: !!null ''\ni: !!int 3\n");
    const qd_node *r = qd_config_root(c);
    long long v;
    cr_expect_neq(qd_node_as_int(qd_node_get(r, "s"), &v, &e), QD_OK, "!!str is a string");
    cr_expect_eq(qd_node_kind(qd_node_get(r, "n")), QD_NODE_NULL);
    cr_expect_eq(qd_node_as_int(qd_node_get(r, "i"), &v, &e), QD_OK);
    qd_config_destroy(c);
}

Test(config, anchors_aliases_and_merge_keys)
{
    qd_config *c = load_str("base: &b {lr: 0.1, momentum: 0.9}\n"
                            "extra: &e {wd: 0.01, lr: 9}\n"
                            "train:\n"
                            "  <<: [*b, *e]\n"
                            "  lr: 0.5\n"
                            "copy: *b\n"
                            "'<<': literal\n");
    const qd_node *r = qd_config_root(c);
    const qd_node *t = qd_node_get(r, "train");
    cr_expect_eq(qd_node_len(t), 3);
    cr_expect_str_eq(qd_node_key_at(t, 0), "lr");
    cr_expect_str_eq(qd_node_str(qd_node_get(t, "lr")), "0.5", "explicit keys win");
    cr_expect_str_eq(qd_node_str(qd_node_get(t, "momentum")), "0.9");
    cr_expect_str_eq(qd_node_str(qd_node_get(t, "wd")), "0.01");
    cr_expect_null(qd_node_get(t, "<<"));
    /* an alias is located where it is used, its insides where written */
    const qd_node *copy = qd_node_get(r, "copy");
    expect_at(copy, "t.yaml", 6, 7);
    expect_at(qd_node_get(copy, "lr"), "t.yaml", 1, 15);
    cr_expect_str_eq(qd_node_str(qd_node_get(r, "<<")), "literal", "a quoted << is a key");
    qd_config_destroy(c);
    qd_error e;
    const char *y = "a: {<<: 3}\n";
    load_bad(y, strlen(y), NULL, &e);
    expect_prefix(&e, "t.yaml:1:9: the merge key '<<' takes a mapping");
}

Test(config, alias_bomb_fails_fast)
{
    /* "billion laughs": 9^9 strings if expanded */
    char y[4096] = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n";
    const char *names = "abcdefghij";
    for (int i = 1; i < 10; i++) {
        char line[256];
        char p = names[i - 1];
        snprintf(line, sizeof line, "%c: &%c [*%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c]\n",
                 names[i], names[i], p, p, p, p, p, p, p, p, p);
        strcat(y, line);
    }
    qd_error e;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    load_bad(y, strlen(y), NULL, &e);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double dt = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    expect_msg(&e, "t.yaml:7:8: alias '*f' would expand the document beyond 1000000 nodes "
                   "(limit max_nodes; is this an alias bomb?)");
    cr_expect(dt < 5.0, "took %.2f s", dt);
    /* a small budget stops it at the first expensive alias */
    qd_config_limits lim = {0, 1000, 0, 0};
    load_bad(y, strlen(y), &lim, &e);
    expect_prefix(&e, "t.yaml:4:8: alias '*c' would expand the document beyond 1000 nodes");
    /* and plain size counts too */
    load_bad("[1, 2, 3, 4, 5, 6]", 18, &(qd_config_limits){0, 5, 0, 0}, &e);
    expect_msg(&e, "t.yaml:1:14: the document has more than 5 nodes (limit max_nodes)");
}

static void expect_too_deep(const char *y, const char *where)
{
    qd_error e;
    load_bad(y, strlen(y), NULL, &e);
    char want[256];
    snprintf(want, sizeof want, "t.yaml:%s: nesting is deeper than 64 levels (limit max_depth)",
             where);
    expect_msg(&e, want);
}

Test(config, deep_nesting_is_refused_without_recursion)
{
    const size_t n = 10000;
    char *y = malloc(8 * n + 16);
    cr_assert(y);
    /* flow sequences */
    strcpy(y, "a: ");
    memset(y + 3, '[', n);
    memset(y + 3 + n, ']', n);
    y[3 + 2 * n] = '\0';
    expect_too_deep(y, "1:67");
    /* flow mappings */
    char *p = y + sprintf(y, "a: ");
    for (size_t i = 0; i < n; i++)
        p += sprintf(p, "{a: ");
    strcpy(p, "1");
    expect_too_deep(y, "1:256");
    /* block sequences, one per indentation step */
    p = y + sprintf(y, "a:\n");
    for (size_t i = 0; i < n; i++)
        p += sprintf(p, "- ");
    strcpy(p, "1\n");
    expect_too_deep(y, "2:127");
    /* a custom limit */
    qd_error e;
    load_bad("a: {b: {c: 1}}", 14, &(qd_config_limits){2, 0, 0, 0}, &e);
    expect_msg(&e, "t.yaml:1:8: nesting is deeper than 2 levels (limit max_depth)");
    /* an alias may not smuggle depth in */
    const char *al = "a: &x [[[1]]]\nb: [[*x]]\n";
    load_bad(al, strlen(al), &(qd_config_limits){4, 0, 0, 0}, &e);
    expect_prefix(&e, "t.yaml:2:6: alias '*x' nests the document deeper than 4 levels");
    free(y);
}

Test(config, size_limits, .init = make_tmpdir, .fini = remove_tmpdir)
{
    qd_error e;
    char small[200];
    memset(small, 'x', sizeof small);
    memcpy(small, "a: ", 3);
    load_bad(small, sizeof small, &(qd_config_limits){0, 0, 100, 0}, &e);
    expect_msg(&e, "t.yaml:1:1: input is 200 bytes, more than the limit of 100 bytes");
    /* the default limit is 16 MiB */
    size_t big = ((size_t)16 << 20) + 1;
    char *y = malloc(big);
    cr_assert(y);
    memset(y, 'x', big);
    memcpy(y, "a: ", 3);
    load_bad(y, big, NULL, &e);
    expect_msg(&e, "t.yaml:1:1: input is 16777217 bytes, more than the limit of 16777216 bytes");
    /* files are checked before they are read */
    const char *p = write_tmp("big.yaml", y, 5000);
    free(y);
    qd_config *c;
    cr_expect_eq(qd_config_load(p, &(qd_config_limits){0, 0, 4096, 0}, &c, &e), QD_ERR_MANIFEST);
    char want[700];
    snprintf(want, sizeof want, "%s:1:1: file is 5000 bytes, more than the limit of 4096 bytes",
             p);
    expect_msg(&e, want);
}

/* ------------------------------------------------------------------------
 * Overrides
 * ---------------------------------------------------------------------- */

Test(config, set_typed_values_and_create_paths)
{
    qd_config *c = load_str("train: {lr: 0.1}\n"
                            "model:\n"
                            "  layers:\n"
                            "    - {name: c1, padding: 1}\n"
                            "    - {name: q, observable: {plugin: hermitian}}\n"
                            "empty:\n");
    qd_error e;
    cr_assert_eq(qd_config_set(c, "train.lr", "0.5", "<command line>:1:1", &e), QD_OK, "%s",
                 e.msg);
    cr_assert_eq(qd_config_set(c, "train.grid", "[1, 2]", "<command line>:2:1", &e), QD_OK);
    cr_assert_eq(qd_config_set(c, "distill.inner.steps", "5", "<command line>:3:1", &e), QD_OK);
    cr_assert_eq(qd_config_set(c, "model.layers.c1.padding", "'2'", NULL, &e), QD_OK);
    cr_assert_eq(qd_config_set(c, "model.layers.1.observable.trainable", "false", "cli", &e),
                 QD_OK);
    cr_assert_eq(qd_config_set(c, "empty.x", "{a: 1}", "<command line>:6:1", &e), QD_OK);
    const qd_node *r = qd_config_root(c);
    double d;
    cr_expect_eq(qd_node_as_double(qd_node_path(r, "train.lr"), &d, &e), QD_OK);
    cr_expect(d == 0.5);
    const qd_node *grid = qd_node_path(r, "train.grid");
    cr_expect_eq(qd_node_kind(grid), QD_NODE_SEQ);
    cr_expect_eq(qd_node_len(grid), 2);
    expect_at(grid, "<command line>", 2, 1);
    expect_at(qd_node_at(grid, 1), "<command line>", 2, 1);
    const qd_node *distill = qd_node_get(r, "distill");
    expect_at(distill, "<command line>", 3, 1);
    expect_at(qd_node_key_node_at(r, 3), "<command line>", 3, 1);
    cr_expect_str_eq(qd_node_str(qd_node_path(distill, "inner.steps")), "5");
    /* quoting in the value is kept: '2' is a string */
    long long v;
    cr_expect_neq(qd_node_as_int(qd_node_path(r, "model.layers.c1.padding"), &v, &e), QD_OK);
    expect_prefix(&e, "<override>: expected an integer, got the quoted string '2'");
    const qd_node *tr = qd_node_path(r, "model.layers.q.observable.trainable");
    cr_expect_str_eq(qd_node_str(tr), "false");
    cr_expect_str_eq(qd_node_file(tr), "cli");
    cr_expect_str_eq(qd_node_str(qd_node_path(r, "empty.x.a")), "1");
    /* an existing key keeps its key node (and position) */
    expect_at(qd_node_key_node_at(qd_node_get(r, "train"), 0), "t.yaml", 1, 9);
    qd_config_destroy(c);
}

Test(config, set_errors)
{
    qd_config *c = load_str("a: 1\nlist: [{name: x}, {name: y}]\n");
    qd_error e;
    cr_expect_eq(qd_config_set(c, "a.b", "1", "<command line>:1:1", &e), QD_ERR_INVALID);
    expect_msg(&e, "<command line>:1:1: cannot set 'a.b': 'a' holds the value '1' (at "
                   "t.yaml:1:4), not a mapping");
    cr_expect_eq(qd_config_set(c, "list.z.k", "1", "<command line>:2:1", &e), QD_ERR_INVALID);
    expect_msg(&e, "<command line>:2:1: cannot set 'list.z.k': no item 'z' in 'list' (it has 2 "
                   "items, indices 0-1; named x, y)");
    cr_expect_eq(qd_config_set(c, "list.5", "1", "<command line>:3:1", &e), QD_ERR_INVALID);
    expect_has(e.msg, "no item '5' in 'list'");
    cr_expect_eq(qd_config_set(c, "a..b", "1", "<command line>:4:1", &e), QD_ERR_INVALID);
    expect_msg(&e, "<command line>:4:1: bad key path 'a..b': empty component (write a.b.c)");
    cr_expect_eq(qd_config_set(c, "b", "[1, 2", "<command line>:5:1", &e), QD_ERR_MANIFEST);
    expect_msg(&e, "<command line>:5:1: bad value '[1, 2' for 'b': did not find expected ',' "
                   "or ']' (while parsing a flow sequence)");
    cr_expect_eq(qd_config_set(c, "b", "x: 1\n---\ny: 2", "<command line>:6:1", &e),
                 QD_ERR_MANIFEST);
    /* failed sets leave the tree as it was */
    cr_expect_str_eq(qd_node_str(qd_node_get(qd_config_root(c), "a")), "1");
    cr_expect_null(qd_node_get(qd_config_root(c), "b"));
    qd_config_destroy(c);
}

/* `a.file=PATH` swaps a whole included mapping (e.g. the model) from the
 * command line: PATH is resolved against the manifest's directory, not the
 * working directory, the old mapping and its sibling keys go, and the new
 * nodes keep their place in PATH so later errors point into it. */
static void expect_same(const qd_node *a, const qd_node *b, const char *path, int depth);

Test(config, set_file_include)
{
    make_tmpdir();
    write_tmp_str("a.yaml", "layers: [a1, a2]\nwidth: 3\n");
    write_tmp_str("b.yaml", "kind: b\nhead: {file: c.yaml, extra: 2}\n");
    write_tmp_str("c.yaml", "n: 7\n");
    write_tmp_str("list.yaml", "- 1\n- 2\n");
    const char *mpath = write_tmp_str("m.yaml", "name: x\nmodel: {file: a.yaml, alpha: 1}\n");
    qd_config *c = NULL;
    qd_error e;
    cr_assert_eq(qd_config_load(mpath, NULL, &c, &e), QD_OK, "%s", e.msg);
    cr_assert_eq(qd_config_set(c, "model.file", "b.yaml", "<command line>:1:1", &e), QD_OK,
                 "%s", e.msg);
    const qd_node *r = qd_config_root(c);
    const qd_node *model = qd_node_get(r, "model");
    cr_expect_eq(qd_node_len(model), 2, "the old keys and the sibling alpha are gone");
    cr_expect_null(qd_node_get(model, "layers"));
    cr_expect_null(qd_node_get(model, "alpha"));
    cr_expect_str_eq(qd_node_str(qd_node_get(model, "kind")), "b");
    cr_expect_str_eq(qd_node_str(qd_node_path(r, "model.head.n")), "7");
    cr_expect_str_eq(qd_node_str(qd_node_path(r, "model.head.extra")), "2");
    char bpath[600];
    snprintf(bpath, sizeof bpath, "%s/b.yaml", tmpdir);
    expect_at(qd_node_get(model, "kind"), bpath, 1, 7);
    /* later overrides reach into the included mapping */
    cr_expect_eq(qd_config_set(c, "model.head.n", "8", NULL, &e), QD_OK, "%s", e.msg);
    cr_expect_str_eq(qd_node_str(qd_node_path(r, "model.head.n")), "8");
    /* no `file` key is left: the tree emits to YAML that loads back the same */
    char *y = qd_config_to_yaml(r);
    cr_assert_not_null(y);
    cr_expect_null(strstr(y, "file"), "%s", y);
    qd_config *back = load_str(y);
    expect_same(qd_config_root(back), r, "", 0);
    qd_config_destroy(back);
    free(y);

    /* errors name the override and leave the tree as it was */
    cr_expect_eq(qd_config_set(c, "model.file", "nope.yaml", "<command line>:2:1", &e),
                 QD_ERR_IO);
    char want[1400];
    snprintf(want, sizeof want,
             "<command line>:2:1: bad value 'nope.yaml' for 'model.file': cannot include "
             "'nope.yaml': No such file or directory (looked for '%s/nope.yaml')", tmpdir);
    expect_msg(&e, want);
    cr_expect_eq(qd_config_set(c, "model.file", "list.yaml", "<command line>:3:1", &e),
                 QD_ERR_MANIFEST);
    snprintf(want, sizeof want,
             "<command line>:3:1: bad value 'list.yaml' for 'model.file': %s/list.yaml:1:1: "
             "the top level must be a mapping (key: value lines), not a sequence", tmpdir);
    expect_msg(&e, want);
    cr_expect_eq(qd_config_set(c, "model.file", "", "<command line>:4:1", &e), QD_ERR_INVALID);
    expect_msg(&e, "<command line>:4:1: bad value for 'model.file': give the YAML file to "
                   "include");
    cr_expect_eq(qd_config_set(c, "model.file", "a\nb", "<command line>:5:1", &e),
                 QD_ERR_IO);
    expect_has(e.msg, "cannot include 'a\\nb'");   /* quoted: one line */
    cr_expect_null(strchr(e.msg, '\n'));
    cr_expect_eq(qd_config_set(c, "file", "a.yaml", "<command line>:6:1", &e), QD_ERR_INVALID);
    expect_msg(&e, "<command line>:6:1: cannot set 'file': 'file' can only end a path below "
                   "the top level (e.g. model.file=models/lenet.yaml replaces the model by "
                   "that file's mapping)");
    cr_expect_eq(qd_config_set(c, "model.file.x", "1", "<command line>:7:1", &e),
                 QD_ERR_INVALID);
    expect_has(e.msg, "cannot set 'model.file.x': 'file' can only end a path");
    cr_expect_eq(qd_config_set(c, "model", "{file: a.yaml}", "<command line>:8:1", &e),
                 QD_ERR_INVALID);
    expect_has(e.msg, "not in an override (set KEY.file=PATH instead)");
    cr_expect_str_eq(qd_node_str(qd_node_path(r, "model.kind")), "b");
    cr_expect_eq(qd_node_len(qd_node_get(r, "model")), 2);
    /* a path through a missing mapping creates it, like any override */
    cr_expect_eq(qd_config_set(c, "extra.m.file", "c.yaml", NULL, &e), QD_OK, "%s", e.msg);
    cr_expect_str_eq(qd_node_str(qd_node_path(r, "extra.m.n")), "7");
    qd_config_destroy(c);
    remove_tmpdir();
}

/* ------------------------------------------------------------------------
 * Emitting
 * ---------------------------------------------------------------------- */

/* Same shape, same text, same "is it a number" answer for every scalar. */
static void expect_same(const qd_node *a, const qd_node *b, const char *path, int depth)
{
    cr_assert(depth < 40);
    cr_assert_eq(qd_node_kind(a), qd_node_kind(b), "%s: kind", path);
    cr_assert_eq(qd_node_len(a), qd_node_len(b), "%s: length", path);
    if (qd_node_kind(a) == QD_NODE_SCALAR) {
        cr_expect_str_eq(qd_node_str(a), qd_node_str(b), "%s", path);
        double x, y;
        int ka = qd_node_as_double(a, &x, NULL), kb = qd_node_as_double(b, &y, NULL);
        cr_expect_eq(ka, kb, "%s: numeric-ness of '%s'", path, qd_node_str(a));
        int ba, bb;
        cr_expect_eq(qd_node_as_bool(a, &ba, NULL), qd_node_as_bool(b, &bb, NULL), "%s", path);
    }
    for (size_t i = 0; i < qd_node_len(a); i++) {
        char sub[2048];
        if (strlen(path) > 1000)
            path = "...";
        if (qd_node_kind(a) == QD_NODE_MAP) {
            cr_expect_str_eq(qd_node_key_at(a, i), qd_node_key_at(b, i), "%s: key %zu", path, i);
            snprintf(sub, sizeof sub, "%s.%s", path, qd_node_key_at(a, i));
        } else {
            snprintf(sub, sizeof sub, "%s.%zu", path, i);
        }
        expect_same(qd_node_at(a, i), qd_node_at(b, i), sub, depth + 1);
    }
}

Test(config, to_yaml_round_trip)
{
    const char *y =
        "name: round trip\n"
        "numbers: [1, -2.5, 1e-3, .inf, -.inf, .nan, 0x1F, 0o7, +3]\n"
        "strings: ['3', 'true', 'null', '~', '', ' lead', 'trail ', 'a: b', 'x #y', '#c',\n"
        "          '- item', '---', '...', '[x]', '{y}', 'a,b', '&a', '*b', '!t', '%p', '@q',\n"
        "          '`r', '|', '>', '?', ':', '-', 'tab\there', \"nl\\nline\", \"q\\\"uote\",\n"
        "          'back\\\\slash', \"\\x01ctl\", \"nel\\Nx\", \"ls\\Lx\", \"bom\\uFEFFx\", caf\xc3\xa9,\n"
        "          \"\\x85\", '<<', 'k: v']\n"
        "bools: [true, false, True, 'false']\n"
        "nulls: [~, null, '']\n"
        "empty_map: {}\n"
        "empty_seq: []\n"
        "'quoted key': 1\n"
        "'<<': merge-looking key\n"
        "'key: colon': 2\n"
        "'3': numeric key\n"
        "nested:\n"
        "  - [1, [2, [3, []]]]\n"
        "  - {a: {b: [{c: 1, d: [x, {e: f}]}]}}\n"
        "  - - deep\n"
        "    - {}\n"
        "block: |\n"
        "  line one\n"
        "  line two\n"
        "folded: >\n"
        "  folded\n"
        "  text\n"
        "plain: fit:4\n"
        "url: http://x.org/a#b\n";
    qd_config *a = load_str(y);
    char *out = qd_config_to_yaml(qd_config_root(a));
    cr_assert_not_null(out);
    qd_config *b = NULL;
    qd_error e;
    cr_assert_eq(qd_config_load_string(out, strlen(out), "out.yaml", NULL, &b, &e), QD_OK,
                 "%s\n--- emitted:\n%s", e.msg, out);
    expect_same(qd_config_root(a), qd_config_root(b), "", 0);
    char *again = qd_config_to_yaml(qd_config_root(b));
    cr_expect_str_eq(again, out, "emitting is a fixed point");
    /* block style, keys in source order */
    const char *head = "name: round trip\nnumbers: [1, -2.5, 1e-3, .inf, -.inf, .nan, 0x1F, "
                       "0o7, +3]\nstrings:\n  - \"3\"\n";
    cr_expect(strncmp(out, head, strlen(head)) == 0, "%s", out);
    expect_has(out, "\nnested:\n  - [1, [2, [3, []]]]\n  - a:\n      b:\n        - c: 1\n"
                    "          d:\n            - x\n            - e: f\n  - - deep\n    - {}\n");
    expect_has(out, "\nempty_map: {}\nempty_seq: []\n");
    free(out);
    free(again);
    qd_config_destroy(a);
    qd_config_destroy(b);
    /* roots that are not mappings */
    a = load_str("[]");
    out = qd_config_to_yaml(qd_config_root(a));
    cr_expect_str_eq(out, "[]\n");
    free(out);
    qd_config_destroy(a);
    out = qd_config_to_yaml(NULL);
    cr_expect_str_eq(out, "null\n");
    free(out);
}

Test(config, to_yaml_after_set_round_trips)
{
    qd_config *a = load_str("a: 1\n");
    qd_error e;
    cr_assert_eq(qd_config_set(a, "b.c", "[1, 'x y', {z: null}]", NULL, &e), QD_OK);
    char *out = qd_config_to_yaml(qd_config_root(a));
    cr_expect_str_eq(out, "a: 1\nb:\n  c:\n    - 1\n    - \"x y\"\n    - z: null\n");
    qd_config *b = load_str(out);
    expect_same(qd_config_root(a), qd_config_root(b), "", 0);
    free(out);
    qd_config_destroy(a);
    qd_config_destroy(b);
}

/* ------------------------------------------------------------------------
 * Matrices
 * ---------------------------------------------------------------------- */

Test(config, matrix_real_and_complex)
{
    qd_config *c = load_str("pauli_z: [[1, 0], [0, -1]]\n"
                            "pauli_y: [[0, '-1j'], [1j, 0]]\n"
                            "mixed: [['1+2j', -0.5j, '3', j], [-j, 1e-3-2.5e-1j, ' 2 - 1j ', .5]]\n");
    const qd_node *r = qd_config_root(c);
    size_t rows = 0, cols = 0;
    double complex *m = NULL;
    qd_error e;
    cr_assert_eq(qd_node_as_matrix(qd_node_get(r, "pauli_z"), &rows, &cols, &m, &e), QD_OK,
                 "%s", e.msg);
    cr_expect_eq(rows, 2);
    cr_expect_eq(cols, 2);
    const double complex z[] = {1, 0, 0, -1};
    for (int i = 0; i < 4; i++)
        cr_expect(m[i] == z[i], "z[%d]", i);
    free(m);
    cr_assert_eq(qd_node_as_matrix(qd_node_get(r, "pauli_y"), &rows, &cols, &m, &e), QD_OK);
    cr_expect(m[1] == CMPLX(0, -1) && m[2] == CMPLX(0, 1) && m[0] == 0 && m[3] == 0);
    free(m);
    cr_assert_eq(qd_node_as_matrix(qd_node_get(r, "mixed"), &rows, &cols, &m, &e), QD_OK, "%s",
                 e.msg);
    cr_expect_eq(rows, 2);
    cr_expect_eq(cols, 4);
    const double complex want[] = {CMPLX(1, 2),  CMPLX(0, -0.5),    CMPLX(3, 0), CMPLX(0, 1),
                                   CMPLX(0, -1), CMPLX(1e-3, -0.25), CMPLX(2, -1), CMPLX(0.5, 0)};
    for (int i = 0; i < 8; i++)
        cr_expect(m[i] == want[i], "entry %d: %g%+gj", i, creal(m[i]), cimag(m[i]));
    free(m);
    qd_config_destroy(c);
}

Test(config, matrix_errors)
{
    qd_config *c = load_str("ragged: [[1, 0], [0, 1, 2]]\n"
                            "word: [[1, abc]]\n"
                            "scalar: 3\n"
                            "empty: []\n"
                            "inf: [[.inf]]\n"
                            "badc: [['1+2i']]\n"
                            "row: [1, 2]\n"
                            "twoj: [['1j+2j']]\n");
    const qd_node *r = qd_config_root(c);
    size_t rows, cols;
    double complex *m = (double complex *)1;
    qd_error e;
    cr_expect_eq(qd_node_as_matrix(qd_node_get(r, "ragged"), &rows, &cols, &m, &e),
                 QD_ERR_INVALID);
    cr_expect_null(m);
    expect_msg(&e, "t.yaml:1:18: ragged matrix: row 2 has 3 entries but row 1 has 2");
    cr_expect_eq(qd_node_as_matrix(qd_node_get(r, "word"), &rows, &cols, &m, &e),
                 QD_ERR_INVALID);
    expect_msg(&e, "t.yaml:2:12: bad matrix entry 'abc' (row 1, column 2): expected a real or "
                   "complex number such as 1, -0.5, 1+2j or -0.5j");
    cr_expect_eq(qd_node_as_matrix(qd_node_get(r, "scalar"), &rows, &cols, &m, &e),
                 QD_ERR_INVALID);
    expect_msg(&e, "t.yaml:3:9: expected a matrix (a list of rows such as [[1, 0], [0, -1]]), "
                   "got '3'");
    cr_expect_eq(qd_node_as_matrix(qd_node_get(r, "empty"), &rows, &cols, &m, &e),
                 QD_ERR_INVALID);
    expect_has(e.msg, "got an empty list");
    cr_expect_eq(qd_node_as_matrix(qd_node_get(r, "inf"), &rows, &cols, &m, &e),
                 QD_ERR_INVALID);
    expect_msg(&e, "t.yaml:5:8: matrix entry '.inf' (row 1, column 1) is not finite");
    cr_expect_eq(qd_node_as_matrix(qd_node_get(r, "badc"), &rows, &cols, &m, &e),
                 QD_ERR_INVALID);
    cr_expect_eq(qd_node_as_matrix(qd_node_get(r, "row"), &rows, &cols, &m, &e),
                 QD_ERR_INVALID);
    expect_msg(&e, "t.yaml:7:7: matrix row 1 must be a list of entries, got '1' (write rows "
                   "like [1, 0])");
    cr_expect_eq(qd_node_as_matrix(qd_node_get(r, "twoj"), &rows, &cols, &m, &e),
                 QD_ERR_INVALID);
    qd_config_destroy(c);
}

/* ------------------------------------------------------------------------
 * Suggestions
 * ---------------------------------------------------------------------- */

Test(config, suggestions)
{
    const char *keys[] = {"trainable", "wires", "lr", "momentum", "plugin"};
    cr_expect_str_eq(qd_suggest("trainabel", keys, 5), "trainable");
    cr_expect_str_eq(qd_suggest("trainble", keys, 5), "trainable");
    cr_expect_str_eq(qd_suggest("lrr", keys, 5), "lr");
    cr_expect_str_eq(qd_suggest("LR", keys, 5), "lr");
    cr_expect_str_eq(qd_suggest("momentun", keys, 5), "momentum");
    cr_expect_str_eq(qd_suggest("plugins", keys, 5), "plugin");
    cr_expect_null(qd_suggest("x", keys, 5), "a full rewrite is no suggestion");
    cr_expect_null(qd_suggest("batch_size", keys, 5));
    cr_expect_null(qd_suggest("abcdefgh", keys, 5));
    cr_expect_null(qd_suggest(NULL, keys, 5));
    /* a huge word is rejected quickly by length */
    char *big = malloc(1 << 20);
    cr_assert(big);
    memset(big, 'a', (1 << 20) - 1);
    big[(1 << 20) - 1] = '\0';
    cr_expect_null(qd_suggest(big, keys, 5));
    free(big);
}

/* ------------------------------------------------------------------------
 * Schema validation
 * ---------------------------------------------------------------------- */

#define END {NULL, 0, 0, NULL, 0, 0, NULL, 0, NULL, NULL}

static const qd_param point_fields[] = {
    {"x", QD_PARAM_DOUBLE, QD_PARAM_REQUIRED, NULL, 0, 0, NULL, 0, NULL, "x coordinate"},
    {"label", QD_PARAM_STRING, 0, "p", 0, 0, NULL, 0, NULL, "label"},
    END};

static const qd_param test_schema[] = {
    {"trainable", QD_PARAM_BOOL, 0, "true", 0, 0, NULL, 0, NULL, "learn it"},
    {"wires", QD_PARAM_INT, QD_PARAM_REQUIRED | QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, NULL, 1, 24,
     NULL, 0, NULL, "qubits"},
    {"rate", QD_PARAM_DOUBLE, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "0.5", 0, 1, NULL, 0, NULL,
     "a probability"},
    {"scale", QD_PARAM_DOUBLE, 0, "1", 0, 0, NULL, 0, NULL, "any number"},
    {"init", QD_PARAM_ENUM, 0, "fixed", 0, 0, "fixed|random", 0, NULL, "initialisation"},
    {"name", QD_PARAM_STRING, 0, NULL, 0, 0, NULL, 0, NULL, "a | pipe"},
    {"grid", QD_PARAM_LIST, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "[1]", 1, 3, NULL,
     QD_PARAM_DOUBLE, NULL, "values"},
    {"pair", QD_PARAM_LIST, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, NULL, 2, 2, NULL,
     QD_PARAM_STRING, NULL, "two names"},
    {"modes", QD_PARAM_LIST, 0, NULL, 0, 0, "a|b", QD_PARAM_ENUM, NULL, "modes"},
    {"matrix", QD_PARAM_MATRIX, 0, "[[1, 0], [0, -1]]", 0, 0, NULL, 0, NULL, "observable"},
    {"opts", QD_PARAM_MAP, 0, NULL, 0, 0, NULL, 0, point_fields, "a point"},
    {"points", QD_PARAM_LIST, 0, NULL, 0, 0, NULL, QD_PARAM_MAP, point_fields, "points"},
    {"free", QD_PARAM_MAP, 0, NULL, 0, 0, NULL, 0, NULL, "anything"},
    {"pad", QD_PARAM_INT, QD_PARAM_HAS_MIN | QD_PARAM_INT_OR_STRING, "0", 0, 0, "auto|same", 0,
     NULL, "padding"},
    END};

static qd_config *g_cfg;

static size_t validate(const char *yaml, qd_diags *d)
{
    g_cfg = load_str(yaml);
    static const char *const extra[] = {"plugin", NULL};
    memset(d, 0, sizeof *d);
    size_t n = qd_schema_validate(test_schema, qd_config_root(g_cfg), extra, "observable 'x'", d);
    cr_expect_eq(n, d->n, "count %zu vs %zu messages", n, d->n);
    return n;
}

static void done(qd_diags *d)
{
    qd_diags_free(d);
    qd_config_destroy(g_cfg);
    g_cfg = NULL;
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

Test(schema, valid_section)
{
    qd_diags d;
    size_t n = validate("plugin: x\nwires: 4\ntrainable: false\nrate: 1\nscale: -3\n"
                        "init: random\nname: 42\ngrid: [1, 2.5, 3]\npair: [a, b]\n"
                        "modes: [a, b, a]\nmatrix: [[1, '-1j'], [1j, 2]]\n"
                        "opts: {x: 1}\npoints: [{x: 1, label: a}, {x: 2.5}]\n"
                        "free: {anything: [1, 2]}\npad: same\n",
                        &d);
    char *all = qd_diags_join(&d);
    cr_expect_eq(n, 0, "%s", all);
    free(all);
    done(&d);
    n = validate("wires: 24\npad: 3\nopts:\n", &d);
    cr_expect_eq(n, 1, "an empty MAP still needs its required fields");
    expect_diag(&d, "t.yaml:3:6: missing required key 'x' in 'opts' in observable 'x'");
    done(&d);
}

Test(schema, every_problem_in_one_pass)
{
    qd_diags d;
    size_t n = validate("wires: 0\n"                         /* 1 out of range */
                        "trainabel: true\n"                  /* 2 unknown, suggestion */
                        "rate: abc\n"                        /* 3 wrong type */
                        "init: fixd\n"                       /* 4 bad enum */
                        "scale: 3.5\n"                       /* ok */
                        "grid: [1, x]\n"                     /* 5 bad element */
                        "pair: [a]\n"                        /* 6 wrong length */
                        "matrix: [[1, 0], [0]]\n"            /* 7 ragged */
                        "opts: {x: '1', y: 2}\n"             /* 8 quoted, 9 unknown */
                        "points: [{label: q}, 3]\n"          /* 10 missing x, 11 not a map */
                        "modes: [a, c]\n"                    /* 12 bad enum item */
                        "pad: sometimes\n"                   /* 13 int-or-string */
                        "zzzzzzzzzz: 1\n"                    /* 14 unknown, no suggestion */
                        "free: 3\n"                          /* 15 not a mapping */
                        "name: [x]\n"                        /* 16 not a string */
                        "trainable:\n",                      /* 17 missing value */
                        &d);
    cr_expect_eq(n, 17, "got %zu", n);
    expect_diag(&d, "t.yaml:1:8: 'wires' in observable 'x': 0 is out of range (must be in [1, "
                    "24])");
    expect_diag(&d, "t.yaml:2:1: unknown key 'trainabel' in observable 'x' (did you mean "
                    "'trainable'?)");
    expect_diag(&d, "t.yaml:3:7: 'rate' in observable 'x': expected a number, got 'abc'");
    expect_diag(&d, "t.yaml:4:7: 'init' in observable 'x': bad value 'fixd' (expected one of: "
                    "fixed, random; did you mean 'fixed'?)");
    expect_diag(&d, "t.yaml:6:11: 'grid' in observable 'x', item 1: expected a number, got "
                    "'x'");
    expect_diag(&d, "t.yaml:7:7: 'pair' in observable 'x': needs exactly 2 items, got 1");
    expect_diag(&d, "t.yaml:8:18: 'matrix' in observable 'x': ragged matrix: row 2 has 1 "
                    "entry but row 1 has 2");
    expect_diag(&d, "t.yaml:9:11: 'x' in 'opts' in observable 'x': expected a number, got the "
                    "quoted string '1' (quoted values are strings; remove the quotes)");
    expect_diag(&d, "t.yaml:9:16: unknown key 'y' in 'opts' in observable 'x' (valid keys: x, "
                    "label)");
    expect_diag(&d, "t.yaml:10:10: missing required key 'x' in item 0 of 'points' in "
                    "observable 'x'");
    expect_diag(&d, "t.yaml:10:22: 'points' in observable 'x', item 1: expected a mapping "
                    "(key: value pairs), got '3'");
    expect_diag(&d, "t.yaml:11:12: 'modes' in observable 'x', item 1: bad value 'c' (expected "
                    "one of: a, b)");
    expect_diag(&d, "t.yaml:12:6: 'pad' in observable 'x': expected an integer or one of: "
                    "auto, same; got 'sometimes'");
    expect_diag(&d, "t.yaml:13:1: unknown key 'zzzzzzzzzz' in observable 'x' (valid keys: "
                    "trainable, wires, rate, scale, init, name, grid, pair, modes, matrix, "
                    "opts, points, free, pad, plugin)");
    expect_diag(&d, "t.yaml:14:7: 'free' in observable 'x': expected a mapping (key: value "
                    "pairs), got '3'");
    expect_diag(&d, "t.yaml:15:7: 'name' in observable 'x': expected a string, got a "
                    "sequence");
    expect_diag(&d, "t.yaml:16:11: 'trainable' in observable 'x': missing value (expected "
                    "bool)");
    done(&d);
}

Test(schema, missing_required_and_not_a_mapping)
{
    qd_diags d = {0};
    qd_config *c = load_str("train:\n  lr: 1\nlist: [1]\n");
    const qd_node *r = qd_config_root(c);
    cr_expect_eq(qd_schema_validate(test_schema, qd_node_get(r, "train"), NULL, "train", &d), 2);
    expect_diag(&d, "t.yaml:2:3: unknown key 'lr' in train (valid keys: trainable, wires, "
                    "rate, scale, init, name, grid, pair, modes, matrix, opts, points, free, "
                    "pad)");
    expect_diag(&d, "t.yaml:2:3: missing required key 'wires' in train");
    qd_diags_free(&d);
    cr_expect_eq(qd_schema_validate(test_schema, qd_node_get(r, "list"), NULL, "train", &d), 1);
    expect_diag(&d, "t.yaml:3:7: train must be a mapping (key: value pairs), got a sequence");
    qd_diags_free(&d);
    /* top level (what = NULL) */
    cr_expect_eq(qd_schema_validate(point_fields, r, NULL, NULL, &d), 3);
    expect_diag(&d, "t.yaml:1:1: unknown top-level key 'train' (valid keys: x, label)");
    expect_diag(&d, "t.yaml:1:1: missing required top-level key 'x'");
    qd_diags_free(&d);
    /* a plugin without parameters */
    static const qd_param none[] = {END};
    static const char *const extra[] = {"plugin", NULL};
    cr_expect_eq(qd_schema_validate(none, qd_node_get(r, "train"), extra, "observable 'z'", &d),
                 1);
    expect_diag(&d, "t.yaml:2:3: unknown key 'lr' in observable 'z' (it takes no parameters "
                    "besides the core keys)");
    qd_diags_free(&d);
    qd_config_destroy(c);
}

Test(schema, int_and_double_rules)
{
    qd_diags d;
    /* INT takes 3 but not 3.5 or '3'; DOUBLE takes ints; NaN is refused */
    size_t n = validate("wires: 3\nscale: 2\nrate: 0\n", &d);
    cr_expect_eq(n, 0);
    done(&d);
    n = validate("wires: 3.5\nscale: .nan\nrate: -.inf\n", &d);
    cr_expect_eq(n, 3);
    expect_diag(&d, "t.yaml:1:8: 'wires' in observable 'x': expected an integer, got '3.5' (a "
                    "number with a fraction or exponent)");
    expect_diag(&d, "t.yaml:2:8: 'scale' in observable 'x': NaN is not a valid value");
    expect_diag(&d, "t.yaml:3:7: 'rate' in observable 'x': -.inf is out of range (must be in "
                    "[0, 1])");
    done(&d);
}

Test(schema, diags_helpers)
{
    qd_diags d = {0};
    qd_config *c = load_str("a: 1\n");
    qd_diags_add(&d, qd_node_get(qd_config_root(c), "a"), "value %d is odd", 1);
    qd_diags_add(&d, NULL, "no location");
    qd_diags_add_raw(&d, "raw line");
    cr_assert_eq(d.n, 3);
    char *all = qd_diags_join(&d);
    cr_expect_str_eq(all, "t.yaml:1:4: value 1 is odd\nno location\nraw line");
    free(all);
    /* a flood of problems is capped */
    for (int i = 0; i < 2000; i++)
        qd_diags_add_raw(&d, "x");
    cr_expect_eq(d.n, 501);
    cr_expect_str_eq(d.msgs[500], "(further problems are not shown)");
    qd_diags_free(&d);
    cr_expect_eq(d.n, 0);
    cr_expect_null(d.msgs);
    qd_config_destroy(c);
}

Test(schema, find_and_type_text)
{
    cr_expect_eq(qd_schema_find(test_schema, "rate"), &test_schema[2]);
    cr_expect_null(qd_schema_find(test_schema, "nope"));
    cr_expect_null(qd_schema_find(NULL, "rate"));
    const char *want[] = {"bool",
                          "int in [1, 24]",
                          "double in [0, 1]",
                          "double",
                          "enum fixed|random",
                          "string",
                          "list of double (1-3 items)",
                          "list of string (2 items)",
                          "list of a|b",
                          "matrix (complex)",
                          "mapping",
                          "list of mappings",
                          "mapping",
                          "int >= 0 or auto|same"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        char *t = qd_param_type_text(&test_schema[i]);
        cr_expect_str_eq(t, want[i], "%s", test_schema[i].name);
        free(t);
    }
    qd_param big = {"n", QD_PARAM_INT, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, NULL, 1, 1 << 24,
                    NULL, 0, NULL, NULL};
    char *t = qd_param_type_text(&big);
    cr_expect_str_eq(t, "int in [1, 16777216]");
    free(t);
    qd_param lo = {"p", QD_PARAM_DOUBLE, QD_PARAM_HAS_MAX, NULL, 0, 0.25, NULL, 0, NULL, NULL};
    t = qd_param_type_text(&lo);
    cr_expect_str_eq(t, "double <= 0.25");
    free(t);
}

Test(schema, markdown)
{
    char *md = qd_schema_markdown(point_fields);
    cr_expect_str_eq(md, "| key | type | default | description |\n"
                         "|-----|------|---------|-------------|\n"
                         "| `x` | double | *required* | x coordinate |\n"
                         "| `label` | string | `p` | label |\n");
    free(md);
    md = qd_schema_markdown(test_schema);
    expect_has(md, "| `name` | string |  | a \\| pipe |\n");
    expect_has(md, "| `init` | enum fixed\\|random | `fixed` | initialisation |\n");
    expect_has(md, "| `opts.x` | double | *required* | x coordinate |\n");
    expect_has(md, "| `points[].label` | string | `p` | label |\n");
    expect_has(md, "| `wires` | int in [1, 24] | *required* | qubits |\n");
    free(md);
    md = qd_schema_markdown(NULL);
    cr_expect_str_eq(md, "*(no parameters)*\n");
    free(md);
}
