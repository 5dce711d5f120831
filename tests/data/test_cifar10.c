/* The `cifar10` dataset plugin on small binary batches written here:
 * record layout, per-channel normalisation, batch order, and every kind of
 * broken file. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data_util.h"

#define REC 3073

TestSuite(cifar10, .init = dt_setup, .fini = dt_teardown);

static const double MEAN[3] = {0.4914, 0.4822, 0.4465};
static const double STD[3] = {0.2470, 0.2435, 0.2616};

/* Pixel (record r of file f, channel ch, row y, column x): a pattern that
 * differs in every coordinate and covers 0 and 255. */
static unsigned char pix(int f, int r, int ch, int y, int x)
{
    if (r == 0 && y == 0 && x == 0)
        return ch == 0 ? 0 : 255;
    return (unsigned char)((f * 131 + r * 71 + ch * 37 + y * 11 + x * 3) % 256);
}

static int label_of(int f, int r) { return (f * 3 + r * 7) % 10; }

static void write_batch(const char *name, int f, int records, int bad_label_at)
{
    unsigned char *b = malloc((size_t)records * REC);
    cr_assert(b);
    for (int r = 0; r < records; ++r) {
        unsigned char *rec = b + (size_t)r * REC;
        rec[0] = (unsigned char)(r == bad_label_at ? 10 : label_of(f, r));
        for (int ch = 0; ch < 3; ++ch)
            for (int y = 0; y < 32; ++y)
                for (int x = 0; x < 32; ++x)
                    rec[1 + ch * 1024 + y * 32 + x] = pix(f, r, ch, y, x);
    }
    dt_write(name, b, (size_t)records * REC);
    free(b);
}

static const char *section(const char *extra)
{
    static char y[2048];
    snprintf(y, sizeof y, "plugin: cifar10\npath: '%s'\n%s", dt_dir, extra ? extra : "");
    return y;
}

/* Check sample s of d against record r of file f. */
static void expect_record(const qd_dataset *d, size_t s, int f, int r, const double *mean,
                          const double *sd)
{
    cr_assert_lt(s, d->n);
    cr_expect_eq(d->labels[s], label_of(f, r), "label of sample %zu", s);
    const double *img = d->images + s * 3072;
    for (int ch = 0; ch < 3; ++ch)
        for (int y = 0; y < 32; ++y)
            for (int x = 0; x < 32; ++x) {
                double want = ((double)pix(f, r, ch, y, x) / 255.0 - mean[ch]) / sd[ch];
                double got = img[(ch * 32 + y) * 32 + x];
                if (got != want)
                    cr_assert_fail("sample %zu ch %d (%d,%d): %.17g != %.17g", s, ch, y, x, got,
                                   want);
            }
}

Test(cifar10, default_batches_in_order)
{
    char name[64];
    for (int f = 1; f <= 5; ++f) {
        snprintf(name, sizeof name, "data_batch_%d.bin", f);
        write_batch(name, f, 2, -1);
    }
    write_batch("test_batch.bin", 0, 2, -1);
    qd_dataset d;
    qd_error err;
    cr_assert_eq(dt_load(section("records: 2\n"), QD_SPLIT_TRAIN, &d, &err), QD_OK, "%s", err.msg);
    cr_assert_eq(d.n, 10);
    cr_expect_eq(d.channels, 3);
    cr_expect_eq(d.height, 32);
    cr_expect_eq(d.width, 32);
    cr_expect_eq(d.classes, 10);
    cr_expect_str_eq(d.name, "cifar10/train");
    for (int f = 1; f <= 5; ++f)
        for (int r = 0; r < 2; ++r)
            expect_record(&d, (size_t)((f - 1) * 2 + r), f, r, MEAN, STD);
    /* hand-computed: R channel 0 -> -0.4914/0.2470, G channel 255 -> 0.5178/0.2435 */
    cr_expect(fabs(d.images[0] - (-1.9894736842105263)) < 1e-13, "%.17g", d.images[0]);
    cr_expect(fabs(d.images[1024] - 2.1264887063655031) < 1e-13, "%.17g", d.images[1024]);
    qd_dataset_free(&d);
    cr_assert_eq(dt_load(section("records: 2\n"), QD_SPLIT_TEST, &d, &err), QD_OK, "%s", err.msg);
    cr_assert_eq(d.n, 2);
    expect_record(&d, 0, 0, 0, MEAN, STD);
    expect_record(&d, 1, 0, 1, MEAN, STD);
    qd_dataset_free(&d);
}

Test(cifar10, custom_batches_and_normalisation)
{
    write_batch("b.bin", 2, 3, -1);
    write_batch("a.bin", 1, 3, -1);
    write_batch("t.bin", 7, 3, -1);
    const double mean[3] = {0.5, 0.25, 0.0}, sd[3] = {0.5, 1.0, 2.0};
    const char *y = section("batches: [b.bin, a.bin]\ntest_batch: t.bin\nrecords: 3\n"
                            "mean: [0.5, 0.25, 0]\nstd: [0.5, 1.0, 2.0]\n");
    qd_dataset d;
    qd_error err;
    cr_assert_eq(dt_load(y, QD_SPLIT_TRAIN, &d, &err), QD_OK, "%s", err.msg);
    cr_assert_eq(d.n, 6);
    for (int r = 0; r < 3; ++r) {
        expect_record(&d, (size_t)r, 2, r, mean, sd);
        expect_record(&d, (size_t)(3 + r), 1, r, mean, sd);
    }
    qd_dataset_free(&d);
    cr_assert_eq(dt_load(y, QD_SPLIT_TEST, &d, &err), QD_OK, "%s", err.msg);
    expect_record(&d, 2, 7, 2, mean, sd);
    qd_dataset_free(&d);
}

static int load(const char *extra, qd_split split, qd_error *err)
{
    qd_dataset d;
    int rc = dt_load(section(extra), split, &d, err);
    if (rc == QD_OK)
        qd_dataset_free(&d);
    else
        cr_expect(d.n == 0 && d.images == NULL, "failed load must leave the set empty");
    return rc;
}

Test(cifar10, missing_file)
{
    write_batch("a.bin", 1, 2, -1);
    qd_error err;
    int rc = load("batches: [a.bin, b.bin]\nrecords: 2\n", QD_SPLIT_TRAIN, &err);
    dt_expect_error(rc, &err, QD_ERR_IO, dt_path("b.bin"), "No such file", NULL);
    rc = load("records: 2\n", QD_SPLIT_TEST, &err);
    dt_expect_error(rc, &err, QD_ERR_IO, dt_path("test_batch.bin"), NULL, NULL);
}

Test(cifar10, size_not_a_multiple_of_the_record)
{
    write_batch("t.bin", 0, 2, -1);
    cr_assert_eq(truncate(dt_path("t.bin"), 2 * REC - 100), 0);
    qd_error err;
    int rc = load("test_batch: t.bin\nrecords: 2\n", QD_SPLIT_TEST, &err);
    dt_expect_error(rc, &err, QD_ERR_FORMAT, dt_path("t.bin"), "6046 bytes",
                    "not a multiple of the 3073-byte record");
}

Test(cifar10, wrong_record_count)
{
    write_batch("t.bin", 0, 5, -1);
    qd_error err;
    /* default: 10000 records per file */
    int rc = load("test_batch: t.bin\n", QD_SPLIT_TEST, &err);
    dt_expect_error(rc, &err, QD_ERR_FORMAT, dt_path("t.bin"), "holds 5 records, expected 10000",
                    "truncated");
    rc = load("test_batch: t.bin\nrecords: 4\n", QD_SPLIT_TEST, &err);
    dt_expect_error(rc, &err, QD_ERR_FORMAT, dt_path("t.bin"), "holds 5 records, expected 4",
                    "too large");
}

Test(cifar10, label_out_of_range)
{
    write_batch("a.bin", 1, 4, -1);
    write_batch("b.bin", 2, 4, 2);
    qd_error err;
    int rc = load("batches: [a.bin, b.bin]\nrecords: 4\n", QD_SPLIT_TRAIN, &err);
    dt_expect_error(rc, &err, QD_ERR_FORMAT, dt_path("b.bin"), "label 10 of record 2", "0..9");
}

Test(cifar10, bad_configuration)
{
    qd_error err;
    cr_expect_neq(load("mean: [0.5, 0.5]\n", QD_SPLIT_TEST, &err), QD_OK);
    cr_expect(strstr(err.msg, "mean"), "%s", err.msg);
    cr_expect_neq(load("std: [0.5, 0, 0.5]\n", QD_SPLIT_TEST, &err), QD_OK);
    cr_expect(strstr(err.msg, "std"), "%s", err.msg);
    cr_expect_neq(load("batches: []\n", QD_SPLIT_TEST, &err), QD_OK);
    cr_expect(strstr(err.msg, "batches"), "%s", err.msg);
}
