/* Replays the fuzzing inputs through the harnesses' own code paths
 * (tests/fuzz/fuzz_targets.c) in the normal test build:
 *   - every file under tests/fuzz/regressions/<harness>/ (crash inputs
 *     found by libFuzzer and hand-made hostile inputs) must fail with a
 *     clean error: a real status and a one-line message, no crash, no
 *     sanitizer report, no broken invariant;
 *   - valid inputs (the repository's experiment manifests, overrides, and
 *     small IDX / CIFAR-10 / .npy files built here) must load, so a harness
 *     that rejects everything cannot pass unnoticed. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "fuzz/fuzz_targets.h"
#include "qdistill/common.h"
#include "qdistill/npy.h"

static const char *const harnesses[] = {"manifest", "override", "npy",
                                        "mnist", "mnist_gz", "cifar10"};

static const char *srcdir(void)
{
    const char *s = getenv("QD_TEST_SRCDIR");
    cr_assert(s && *s, "QD_TEST_SRCDIR not set");
    return s;
}

static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    cr_assert_eq(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    cr_assert(n >= 0);
    rewind(f);
    unsigned char *b = malloc((size_t)n + 1);
    cr_assert(b);
    cr_assert_eq(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

static void setup(void)
{
    cr_assert_eq(fz_init(), 0, "fuzz setup failed (plugins under QDISTILL_PLUGIN_PATH?)");
}

TestSuite(fuzz_regressions, .init = setup);

Test(fuzz_regressions, hostile_inputs_fail_cleanly)
{
    for (size_t h = 0; h < sizeof harnesses / sizeof *harnesses; ++h) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/tests/fuzz/regressions/%s", srcdir(), harnesses[h]);
        struct dirent **ents = NULL;
        int n = scandir(dir, &ents, NULL, by_name);
        cr_assert(n >= 0, "cannot read %s", dir);
        size_t files = 0;
        for (int i = 0; i < n; ++i) {
            if (ents[i]->d_name[0] != '.') {
                char path[2048];
                snprintf(path, sizeof path, "%s/%s", dir, ents[i]->d_name);
                size_t len;
                unsigned char *b = slurp(path, &len);
                int rc = fz_run(harnesses[h], b, len);
                cr_expect(rc != FZ_BUG, "%s: broke an invariant", path);
                cr_expect(rc != QD_OK, "%s: accepted, expected a clean error", path);
                free(b);
                ++files;
            }
            free(ents[i]);
        }
        free(ents);
        cr_expect(files >= 3, "%s: only %zu inputs", dir, files);
    }
}

Test(fuzz_regressions, experiment_manifests_load)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/experiments", srcdir());
    struct dirent **ents = NULL;
    int n = scandir(dir, &ents, NULL, by_name);
    cr_assert(n >= 0, "cannot read %s", dir);
    size_t files = 0;
    for (int i = 0; i < n; ++i) {
        size_t l = strlen(ents[i]->d_name);
        if (l > 5 && strcmp(ents[i]->d_name + l - 5, ".yaml") == 0) {
            char path[2048];
            snprintf(path, sizeof path, "%s/%s", dir, ents[i]->d_name);
            size_t len;
            unsigned char *b = slurp(path, &len);
            int rc = fz_run("manifest", b, len);
            cr_expect_eq(rc, QD_OK, "%s: status %d", path, rc);
            free(b);
            ++files;
        }
        free(ents[i]);
    }
    free(ents);
    cr_expect(files >= 9, "only %zu manifests under %s", files, dir);
}

Test(fuzz_regressions, valid_overrides_apply)
{
    const char *ok[] = {
        "distill.steps=5\nobservable.trainable=false",
        "train.lr=0.05\nseed=7\nthreads=1\n",
        "model.layers.conv1.kernel=3\ndataset.subset=100",
        "evaluate.models=2",
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; ++i) {
        int rc = fz_run("override", (const uint8_t *)ok[i], strlen(ok[i]));
        cr_expect_eq(rc, QD_OK, "'%s': status %d", ok[i], rc);
    }
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

Test(fuzz_regressions, valid_idx_loads_raw_gz_and_compressed)
{
    /* [mode byte] + IDX header (2 images of 3x5) + 30 pixel bytes. */
    unsigned char buf[1 + 16 + 30];
    put32(buf + 1, 0x803);
    put32(buf + 5, 2);
    put32(buf + 9, 3);
    put32(buf + 13, 5);
    for (int i = 0; i < 30; ++i)
        buf[17 + i] = (unsigned char)(i * 8);
    buf[0] = 0;
    cr_expect_eq(fz_run("mnist", buf, sizeof buf), QD_OK, "raw IDX");
    cr_expect_eq(fz_run("mnist_gz", buf + 1, sizeof buf - 1), QD_OK, "gzipped IDX");
    /* Plain bytes named *.gz: zlib passes them through. */
    buf[0] = 1;
    cr_expect_eq(fz_run("mnist", buf, sizeof buf), QD_OK, "raw IDX named .gz");
    /* A real gzip stream behind mode 1. */
    unsigned char z[1 + 256];
    uLongf zl = sizeof z - 1;
    z_stream s = {0};
    cr_assert_eq(deflateInit2(&s, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
    s.next_in = buf + 1;
    s.avail_in = sizeof buf - 1;
    s.next_out = z + 1;
    s.avail_out = (uInt)zl;
    cr_assert_eq(deflate(&s, Z_FINISH), Z_STREAM_END);
    zl = s.total_out;
    deflateEnd(&s);
    z[0] = 1;
    cr_expect_eq(fz_run("mnist", z, 1 + zl), QD_OK, "gzip stream named .gz");
    /* And the header's count matters: one pixel fewer is an error. */
    buf[0] = 0;
    cr_expect_eq(fz_run("mnist", buf, sizeof buf - 1), QD_ERR_FORMAT, "short IDX");
}

Test(fuzz_regressions, valid_cifar_records_load)
{
    size_t n = 2 * 3073;
    unsigned char *b = calloc(n, 1);
    cr_assert(b);
    b[0] = 3;
    b[3073] = 9;
    for (size_t i = 1; i < 3073; ++i)
        b[i] = b[3073 + i] = (unsigned char)i;
    cr_expect_eq(fz_run("cifar10", b, 3073), QD_OK, "one record");
    cr_expect_eq(fz_run("cifar10", b, n), QD_OK, "two records");
    cr_expect_eq(fz_run("cifar10", b, n - 1), QD_ERR_FORMAT, "a byte short");
    free(b);
}

Test(fuzz_regressions, npy_written_by_the_writer_parses)
{
    const double v[6] = {0.5, -1.0, 2.0, 3.5, -4.25, 1e-3};
    const size_t shape[2] = {2, 3};
    char path[1100];
    snprintf(path, sizeof path, "%s/w.npy", fz_dir());
    qd_error err;
    cr_assert_eq(qd_npy_write(path, QD_NPY_F8, shape, 2, v, &err), QD_OK, "%s", err.msg);
    size_t len;
    unsigned char *b = slurp(path, &len);
    cr_expect_eq(fz_run("npy", b, len), QD_OK);
    cr_expect_neq(fz_run("npy", b, len - 1), QD_OK, "truncated by one byte");
    cr_expect_neq(fz_run("npy", b, 9), QD_OK, "header cut");
    free(b);
}
