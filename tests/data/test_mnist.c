/* The `mnist` dataset plugin: small IDX files written here (raw and gzip)
 * load with exact values; every kind of broken file gives one clear error
 * naming the file; a hostile header cannot force a large allocation; the
 * real MNIST / Fashion-MNIST load when present. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data_util.h"

#define IMG 0x00000803u
#define LAB 0x00000801u
#define ROWS 4
#define COLS 3
#define NTR 7
#define NTE 5

TestSuite(mnist, .init = dt_setup, .fini = dt_teardown);

static unsigned char tr_pix[NTR * ROWS * COLS], te_pix[NTE * ROWS * COLS];
static unsigned char tr_lab[NTR] = {0, 9, 3, 3, 7, 1, 5};
static unsigned char te_lab[NTE] = {2, 4, 6, 8, 9};

static void make_pixels(void)
{
    for (size_t i = 0; i < sizeof tr_pix; ++i)
        tr_pix[i] = (unsigned char)((i * 37u + 11u) % 256u);
    for (size_t i = 0; i < sizeof te_pix; ++i)
        te_pix[i] = (unsigned char)((i * 101u + 3u) % 256u);
    tr_pix[0] = 0;
    tr_pix[1] = 255;
    te_pix[0] = 255;
}

/* Write the four standard files; gz_mask bit k gzips file k (order: train
 * images, train labels, test images, test labels). */
static void write_set(unsigned gz_mask)
{
    make_pixels();
    static const char *const names[4] = {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"};
    size_t len[4];
    unsigned char *b[4] = {
        dt_idx_images(IMG, NTR, ROWS, COLS, tr_pix, sizeof tr_pix, &len[0]),
        dt_idx_labels(LAB, NTR, tr_lab, sizeof tr_lab, &len[1]),
        dt_idx_images(IMG, NTE, ROWS, COLS, te_pix, sizeof te_pix, &len[2]),
        dt_idx_labels(LAB, NTE, te_lab, sizeof te_lab, &len[3]),
    };
    for (int k = 0; k < 4; ++k) {
        char gzname[128];
        snprintf(gzname, sizeof gzname, "%s.gz", names[k]);
        if (gz_mask & (1u << k))
            dt_write_gz(gzname, b[k], len[k]);
        else
            dt_write(names[k], b[k], len[k]);
        free(b[k]);
    }
}

static const char *section(const char *extra)
{
    static char y[2048];
    snprintf(y, sizeof y, "plugin: mnist\npath: '%s'\n%s", dt_dir, extra ? extra : "");
    return y;
}

static void expect_values(const qd_dataset *d, const unsigned char *pix, const unsigned char *lab,
                          size_t n, double mean, double std)
{
    cr_assert_eq(d->n, n);
    cr_expect_eq(d->channels, 1);
    cr_expect_eq(d->height, ROWS);
    cr_expect_eq(d->width, COLS);
    cr_expect_eq(d->classes, 10);
    for (size_t i = 0; i < n; ++i)
        cr_expect_eq(d->labels[i], lab[i], "label %zu", i);
    for (size_t j = 0; j < n * ROWS * COLS; ++j) {
        double want = ((double)pix[j] / 255.0 - mean) / std;
        cr_expect(d->images[j] == want, "pixel %zu: %.17g != %.17g", j, d->images[j], want);
    }
}

Test(mnist, raw_files_load_exactly)
{
    write_set(0);
    qd_dataset d;
    qd_error err;
    cr_assert_eq(dt_load(section(NULL), QD_SPLIT_TRAIN, &d, &err), QD_OK, "%s", err.msg);
    expect_values(&d, tr_pix, tr_lab, NTR, 0.1307, 0.3081);
    /* independent spot checks, decimal values worked out by hand */
    cr_expect(fabs(d.images[0] - (-0.4242129178838040)) < 1e-13, "%.17g", d.images[0]);
    cr_expect(fabs(d.images[1] - 2.8214865303472898) < 1e-13, "%.17g", d.images[1]);
    cr_expect_str_eq(d.name, "mnist/train");
    qd_dataset_free(&d);
    cr_assert_eq(dt_load(section(NULL), QD_SPLIT_TEST, &d, &err), QD_OK, "%s", err.msg);
    expect_values(&d, te_pix, te_lab, NTE, 0.1307, 0.3081);
    cr_expect_str_eq(d.name, "mnist/test");
    qd_dataset_free(&d);
}

Test(mnist, gzip_and_mixed_files_load_the_same)
{
    static const unsigned masks[] = {1, 6, 11, 15};   /* mixed, then all gzipped */
    for (size_t k = 0; k < 4; ++k) {
        dt_teardown();
        dt_setup();
        write_set(masks[k]);
        qd_dataset d;
        qd_error err;
        cr_assert_eq(dt_load(section(NULL), QD_SPLIT_TRAIN, &d, &err), QD_OK, "mask %u: %s",
                     masks[k], err.msg);
        expect_values(&d, tr_pix, tr_lab, NTR, 0.1307, 0.3081);
        qd_dataset_free(&d);
        cr_assert_eq(dt_load(section(NULL), QD_SPLIT_TEST, &d, &err), QD_OK, "%s", err.msg);
        expect_values(&d, te_pix, te_lab, NTE, 0.1307, 0.3081);
        qd_dataset_free(&d);
    }
}

Test(mnist, custom_normalisation_and_names)
{
    write_set(0);
    /* rename the training files; ask for them by a .gz name: the raw twin is found */
    cr_assert_eq(rename(dt_path("train-images-idx3-ubyte"), dt_path("imgs")), 0);
    cr_assert_eq(rename(dt_path("train-labels-idx1-ubyte"), dt_path("labs.idx")), 0);
    qd_dataset d;
    qd_error err;
    const char *y = section("train_images: imgs.gz\ntrain_labels: labs.idx\n"
                            "mean: 0.2860\nstd: 0.3530\n");
    cr_assert_eq(dt_load(y, QD_SPLIT_TRAIN, &d, &err), QD_OK, "%s", err.msg);
    expect_values(&d, tr_pix, tr_lab, NTR, 0.2860, 0.3530);
    qd_dataset_free(&d);
    /* an absolute file name ignores `path` */
    char abs[1200];
    snprintf(abs, sizeof abs, "plugin: mnist\npath: /nonexistent\ntest_images: '%s'\n"
             "test_labels: '%s'\n", dt_path("t10k-images-idx3-ubyte"),
             dt_path("t10k-labels-idx1-ubyte"));
    cr_assert_eq(dt_load(abs, QD_SPLIT_TEST, &d, &err), QD_OK, "%s", err.msg);
    expect_values(&d, te_pix, te_lab, NTE, 0.1307, 0.3081);
    qd_dataset_free(&d);
}

Test(mnist, relative_path_resolves_against_the_manifest)
{
    char sub[600];
    snprintf(sub, sizeof sub, "%s/sub", dt_dir);
    cr_assert_eq(mkdir(sub, 0700), 0);
    char saved[512];
    memcpy(saved, dt_dir, sizeof saved);
    cr_assert_lt(strlen(sub), sizeof dt_dir);
    memcpy(dt_dir, sub, strlen(sub) + 1);   /* write into sub/ */
    write_set(0);
    memcpy(dt_dir, saved, sizeof saved);
    qd_dataset d;
    qd_error err;
    cr_assert_eq(dt_load("plugin: mnist\npath: sub\n", QD_SPLIT_TEST, &d, &err), QD_OK, "%s",
                 err.msg);
    expect_values(&d, te_pix, te_lab, NTE, 0.1307, 0.3081);
    qd_dataset_free(&d);
}

/* ---- broken files ---------------------------------------------------- */

static int load_train(qd_error *err)
{
    qd_dataset d;
    int rc = dt_load(section(NULL), QD_SPLIT_TRAIN, &d, err);
    if (rc == QD_OK)
        qd_dataset_free(&d);
    else
        cr_expect(d.n == 0 && d.images == NULL, "failed load must leave the set empty");
    return rc;
}

static void replace(const char *name, const unsigned char *b, size_t len, int gz)
{
    unlink(dt_path(name));
    char gzname[128];
    snprintf(gzname, sizeof gzname, "%s.gz", name);
    unlink(dt_path(gzname));
    if (gz)
        dt_write_gz(gzname, b, len);
    else
        dt_write(name, b, len);
}

Test(mnist, missing_file_names_both_candidates)
{
    write_set(0);
    unlink(dt_path("train-labels-idx1-ubyte"));
    qd_error err;
    int rc = load_train(&err);
    dt_expect_error(rc, &err, QD_ERR_IO, dt_path("train-labels-idx1-ubyte"),
                    dt_path("train-labels-idx1-ubyte.gz"), "train_labels");
    cr_expect(strstr(err.msg, "dataset 'mnist'"), "%s", err.msg);
}

Test(mnist, missing_directory)
{
    qd_dataset d;
    qd_error err;
    int rc = dt_load("plugin: mnist\npath: /nonexistent/qd/mnist\n", QD_SPLIT_TEST, &d, &err);
    dt_expect_error(rc, &err, QD_ERR_IO, "/nonexistent/qd/mnist", "does not exist",
                    "t10k-images-idx3-ubyte");
}

Test(mnist, wrong_magic_numbers)
{
    write_set(0);
    size_t len;
    unsigned char *b = dt_idx_images(0x00000801u, NTR, ROWS, COLS, tr_pix, sizeof tr_pix, &len);
    replace("train-images-idx3-ubyte", b, len, 0);
    qd_error err;
    dt_expect_error(load_train(&err), &err, QD_ERR_FORMAT, dt_path("train-images-idx3-ubyte"),
                    "0x00000801", "expected 0x00000803");
    free(b);

    write_set(0);
    b = dt_idx_labels(0x00000803u, NTR, tr_lab, sizeof tr_lab, &len);
    replace("train-labels-idx1-ubyte", b, len, 1);
    dt_expect_error(load_train(&err), &err, QD_ERR_FORMAT,
                    dt_path("train-labels-idx1-ubyte.gz"), "0x00000803", "expected 0x00000801");
    free(b);
}

Test(mnist, gzipped_twice_is_named)
{
    write_set(0);
    size_t len, glen;
    unsigned char *b = dt_idx_images(IMG, NTR, ROWS, COLS, tr_pix, sizeof tr_pix, &len);
    unsigned char *g = dt_gzip(b, len, &glen);
    replace("train-images-idx3-ubyte", g, glen, 1);
    qd_error err;
    dt_expect_error(load_train(&err), &err, QD_ERR_FORMAT, "train-images-idx3-ubyte.gz",
                    "gzipped twice", NULL);
    free(b);
    free(g);
}

Test(mnist, truncated_header_and_pixels)
{
    for (int gz = 0; gz < 2; ++gz) {
        write_set(0);
        const char *shown = gz ? "train-images-idx3-ubyte.gz" : "train-images-idx3-ubyte";
        size_t len;
        unsigned char *b = dt_idx_images(IMG, NTR, ROWS, COLS, tr_pix, sizeof tr_pix, &len);
        replace("train-images-idx3-ubyte", b, 10, gz);
        qd_error err;
        dt_expect_error(load_train(&err), &err, QD_ERR_FORMAT, dt_path(shown),
                        "truncated header: expected 16 bytes, got 10", NULL);
        replace("train-images-idx3-ubyte", b, len - 5, gz);
        dt_expect_error(load_train(&err), &err, QD_ERR_FORMAT, dt_path(shown),
                        "expected 84 bytes of pixels", "got 79");
        free(b);
        /* labels too */
        b = dt_idx_labels(LAB, NTR, tr_lab, sizeof tr_lab, &len);
        replace("train-labels-idx1-ubyte", b, len - 1, gz);
        shown = gz ? "train-labels-idx1-ubyte.gz" : "train-labels-idx1-ubyte";
        dt_expect_error(load_train(&err), &err, QD_ERR_FORMAT, dt_path(shown),
                        "expected 7 bytes of labels", "got 6");
        free(b);
    }
}

Test(mnist, gzip_stream_cut_off)
{
    write_set(0);
    size_t len, glen;
    unsigned char *b = dt_idx_images(IMG, NTR, ROWS, COLS, tr_pix, sizeof tr_pix, &len);
    unsigned char *g = dt_gzip(b, len, &glen);
    /* drop the 8-byte trailer and a little deflate data */
    replace("train-images-idx3-ubyte", g, glen - 12, 0);
    rename(dt_path("train-images-idx3-ubyte"), dt_path("train-images-idx3-ubyte.gz"));
    qd_error err;
    int rc = load_train(&err);
    dt_expect_error(rc, &err, QD_ERR_FORMAT, dt_path("train-images-idx3-ubyte.gz"), NULL, NULL);
    cr_expect(strstr(err.msg, "cut off") || strstr(err.msg, "corrupt gzip"), "%s", err.msg);
    free(b);
    free(g);
}

Test(mnist, oversized_files_are_rejected)
{
    for (int gz = 0; gz < 2; ++gz) {
        write_set(0);
        const char *shown = gz ? "train-images-idx3-ubyte.gz" : "train-images-idx3-ubyte";
        size_t len;
        unsigned char *b = dt_idx_images(IMG, NTR, ROWS, COLS, tr_pix, sizeof tr_pix, &len);
        unsigned char *big = calloc(len + 3, 1);
        memcpy(big, b, len);
        replace("train-images-idx3-ubyte", big, len + 3, gz);
        qd_error err;
        dt_expect_error(load_train(&err), &err, QD_ERR_FORMAT, dt_path(shown),
                        "3 unexpected bytes after the 84 bytes of pixels", NULL);
        free(b);
        free(big);
    }
}

Test(mnist, count_mismatch)
{
    write_set(0);
    size_t len;
    unsigned char *b = dt_idx_labels(LAB, NTR - 1, tr_lab, NTR - 1, &len);
    replace("train-labels-idx1-ubyte", b, len, 0);
    qd_error err;
    dt_expect_error(load_train(&err), &err, QD_ERR_FORMAT, dt_path("train-images-idx3-ubyte"),
                    dt_path("train-labels-idx1-ubyte"), "7 images but");
    cr_expect(strstr(err.msg, "6 labels"), "%s", err.msg);
    free(b);
}

Test(mnist, label_out_of_range)
{
    write_set(0);
    unsigned char bad[NTR];
    memcpy(bad, tr_lab, NTR);
    bad[3] = 10;
    size_t len;
    unsigned char *b = dt_idx_labels(LAB, NTR, bad, NTR, &len);
    replace("train-labels-idx1-ubyte", b, len, 1);
    qd_error err;
    dt_expect_error(load_train(&err), &err, QD_ERR_FORMAT,
                    dt_path("train-labels-idx1-ubyte.gz"), "label 10 of sample 3", "0..9");
    free(b);
}

Test(mnist, absurd_dimensions)
{
    struct { uint32_t n, r, c; const char *msg; } cases[] = {
        {0, ROWS, COLS, "header claims 0 images"},
        {NTR, 0, COLS, "images of 0x3 pixels"},
        {NTR, ROWS, 100000, "images of 4x100000 pixels"},
        {0xffffffffu, 28, 28, "header claims 4294967295 images"},
        {1u << 24, 28, 28, "above the 1073741824-byte limit"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; ++k) {
        write_set(0);
        size_t len;
        unsigned char *b = dt_idx_images(IMG, cases[k].n, cases[k].r, cases[k].c, tr_pix,
                                         sizeof tr_pix, &len);
        replace("train-images-idx3-ubyte", b, len, (int)(k & 1));
        qd_error err;
        dt_expect_error(load_train(&err), &err, QD_ERR_FORMAT, "train-images-idx3-ubyte",
                        cases[k].msg, NULL);
        free(b);
    }
}

/* Current virtual size of this process, from /proc. */
static size_t vm_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long pages = 0;
    if (f) {
        if (fscanf(f, "%lu", &pages) != 1)
            pages = 0;
        fclose(f);
    }
    return (size_t)pages * (size_t)sysconf(_SC_PAGESIZE);
}

/* Write a hostile pair: headers claiming 1e6 images of 28x28 (784 MB of
 * pixels, 6 GB as doubles, within the header limits) and 1e6 labels (which
 * are really there), but only 84 bytes of pixels. */
static void write_hostile(int gz)
{
    size_t len;
    unsigned char *b = dt_idx_images(IMG, 1000000, 28, 28, tr_pix, sizeof tr_pix, &len);
    replace("train-images-idx3-ubyte", b, len, gz);
    free(b);
    unsigned char *lab = calloc(1000000, 1);
    cr_assert(lab);
    b = dt_idx_labels(LAB, 1000000, lab, 1000000, &len);
    replace("train-labels-idx1-ubyte", b, len, gz);
    free(b);
    free(lab);
}

Test(mnist, hostile_header_does_not_allocate_what_it_claims)
{
    /* Under an address-space limit of 256 MB above the current size, an
     * allocation sized by the header would fail with "out of memory"; the
     * plugin must find the truncation instead. */
    write_set(0);
    write_hostile(0);
    struct rlimit rl;
    rl.rlim_cur = rl.rlim_max = vm_bytes() + ((size_t)256 << 20);
    cr_assert_eq(setrlimit(RLIMIT_AS, &rl), 0);
    qd_error err;
    dt_expect_error(load_train(&err), &err, QD_ERR_FORMAT, dt_path("train-images-idx3-ubyte"),
                    "expected 784000000 bytes of pixels", "got 84");
    write_hostile(1);
    dt_expect_error(load_train(&err), &err, QD_ERR_FORMAT, dt_path("train-images-idx3-ubyte.gz"),
                    "expected 784000000 bytes of pixels", "got 84");
}

Test(mnist, corrupt_gzip)
{
    write_set(0);
    size_t len, glen;
    unsigned char *b = dt_idx_images(IMG, NTR, ROWS, COLS, tr_pix, sizeof tr_pix, &len);
    unsigned char *g = dt_gzip(b, len, &glen);
    /* wrong CRC in the trailer: the data decode, the check fails */
    g[glen - 8] ^= 0x5a;
    unlink(dt_path("train-images-idx3-ubyte"));
    dt_write("train-images-idx3-ubyte.gz", g, glen);
    qd_error err;
    dt_expect_error(load_train(&err), &err, QD_ERR_FORMAT, dt_path("train-images-idx3-ubyte.gz"),
                    "corrupt gzip data", NULL);
    /* garbage in the deflate stream */
    g[glen - 8] ^= 0x5a;
    for (size_t i = 10; i < glen - 8 && i < 30; ++i)
        g[i] = 0xff;
    dt_write("train-images-idx3-ubyte.gz", g, glen);
    dt_expect_error(load_train(&err), &err, QD_ERR_FORMAT, dt_path("train-images-idx3-ubyte.gz"),
                    "corrupt gzip data", NULL);
    free(b);
    free(g);
}

Test(mnist, bad_configuration_is_rejected)
{
    qd_dataset d;
    qd_error err;
    cr_expect_neq(dt_load(section("std: 0\n"), QD_SPLIT_TRAIN, &d, &err), QD_OK);
    cr_expect(strstr(err.msg, "std"), "%s", err.msg);
    cr_expect_neq(dt_load("plugin: mnist\n", QD_SPLIT_TRAIN, &d, &err), QD_OK);
    cr_expect(strstr(err.msg, "path"), "%s", err.msg);
}

/* ---- the real data, when present --------------------------------------- */

static void mean_std(const qd_dataset *d, double *mean, double *sd)
{
    size_t m = d->n * qd_dataset_sample_size(d);
    double s = 0.0, ss = 0.0;
    for (size_t j = 0; j < m; ++j) {
        s += d->images[j];
        ss += d->images[j] * d->images[j];
    }
    *mean = s / (double)m;
    *sd = sqrt(ss / (double)m - *mean * *mean);
}

static void check_real(const char *dir, const char *extra, double tol_mean)
{
    char y[1024];
    snprintf(y, sizeof y, "plugin: mnist\npath: '%s'\n%s", dir, extra);
    qd_data_bundle b;
    qd_error err;
    double t0 = dt_now();
    cr_assert_eq(dt_bundle(y, 1, &b, &err), QD_OK, "%s", err.msg);
    double t = dt_now() - t0;
    cr_log_info("%s: %s in %.3f s", dir, b.summary, t);
    cr_expect_eq(b.train.n, 60000);
    cr_expect_eq(b.test.n, 10000);
    cr_expect_eq(b.train.height, 28);
    cr_expect_eq(b.train.width, 28);
    double mean, sd;
    mean_std(&b.train, &mean, &sd);
    cr_expect(fabs(mean) < tol_mean, "normalised mean %g", mean);
    cr_expect(fabs(sd - 1.0) < 0.02, "normalised std %g", sd);
    size_t count[10] = {0};
    for (size_t i = 0; i < b.test.n; ++i)
        count[b.test.labels[i]]++;
    for (int c = 0; c < 10; ++c)
        cr_expect(count[c] > 800, "class %d has %zu test samples", c, count[c]);
    cr_expect(t < 3.0, "loading took %.2f s", t);
    qd_data_bundle_free(&b);
}

Test(mnist, real_mnist, .timeout = 60)
{
    const char *src = getenv("QD_TEST_SRCDIR");
    char dir[1024], probe[1100];
    snprintf(dir, sizeof dir, "%s/data/mnist", src ? src : ".");
    snprintf(probe, sizeof probe, "%s/train-images-idx3-ubyte", dir);
    if (access(probe, R_OK) != 0) {
        snprintf(probe, sizeof probe, "%s/train-images-idx3-ubyte.gz", dir);
        if (access(probe, R_OK) != 0) {
            dt_teardown();   /* .fini does not run after a skip */
            cr_skip_test("no MNIST at %s", dir);
        }
    }
    /* 0.1307 / 0.3081 are MNIST's own statistics */
    check_real(dir, "", 1e-3);
}

Test(mnist, real_fashion_mnist_gz, .timeout = 60)
{
    const char *dir = "/usr/share/datasets/fashion-mnist";
    char probe[256];
    snprintf(probe, sizeof probe, "%s/train-images-idx3-ubyte.gz", dir);
    if (access(probe, R_OK) != 0) {
        dt_teardown();   /* .fini does not run after a skip */
        cr_skip_test("no Fashion-MNIST at %s", dir);
    }
    check_real(dir, "mean: 0.2860\nstd: 0.3530\n", 1e-3);
}
