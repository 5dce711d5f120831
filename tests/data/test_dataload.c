/* Core data loading (qd_data_load: validation / subset / test_subset),
 * stratified selection, and the `synthetic` dataset plugin. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data_util.h"

TestSuite(dataload, .init = dt_setup, .fini = dt_teardown);

/* ---- stratified selection on hand-made label vectors ------------------- */

static void labels_set(qd_dataset *d, const size_t *count, size_t classes)
{
    size_t n = 0;
    for (size_t c = 0; c < classes; ++c)
        n += count[c];
    qd_error err;
    cr_assert_eq(qd_dataset_alloc(d, n, 1, 1, 1, classes, &err), QD_OK);
    /* interleave classes so the positions do not give the class away */
    size_t k = 0, left[64];
    memcpy(left, count, classes * sizeof *count);
    while (k < n)
        for (size_t c = 0; c < classes; ++c)
            if (left[c]) {
                left[c]--;
                d->images[k] = (double)k;
                d->labels[k++] = (int32_t)c;
            }
}

static void chosen_per_class(const qd_dataset *d, const unsigned char *mask, size_t *out)
{
    memset(out, 0, d->classes * sizeof *out);
    for (size_t i = 0; i < d->n; ++i)
        if (mask[i])
            out[d->labels[i]]++;
}

Test(dataload, stratified_quotas_by_hand)
{
    struct { size_t classes, count[4], n, want[4]; } cases[] = {
        {3, {50, 30, 20}, 10, {5, 3, 2}},
        {3, {3, 3, 3}, 4, {2, 1, 1}},      /* equal remainders: lower class first */
        {3, {3, 3, 3}, 5, {2, 2, 1}},
        {2, {9, 1}, 5, {5, 0}},            /* shares 4.5 / 0.5: equal remainders, class 0 */
        {4, {10, 0, 5, 5}, 20, {10, 0, 5, 5}},
        {4, {10, 0, 5, 5}, 0, {0, 0, 0, 0}},
        {2, {7, 2}, 3, {2, 1}},            /* 2.33 / 0.67: remainder goes to class 1 */
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; ++k) {
        qd_dataset d;
        labels_set(&d, cases[k].count, cases[k].classes);
        unsigned char *mask = malloc(d.n);
        qd_rng rng;
        qd_rng_seed(&rng, 42, k);
        qd_error err;
        cr_assert_eq(qd_data_stratified_mask(&d, cases[k].n, &rng, mask, &err), QD_OK, "%s",
                     err.msg);
        size_t got[4];
        chosen_per_class(&d, mask, got);
        for (size_t c = 0; c < cases[k].classes; ++c)
            cr_expect_eq(got[c], cases[k].want[c], "case %zu class %zu: %zu != %zu", k, c,
                         got[c], cases[k].want[c]);
        free(mask);
        qd_dataset_free(&d);
    }
}

Test(dataload, stratified_quotas_random_properties)
{
    /* For random class counts: quotas sum to n, each within 1 of the exact
     * proportional share, and never above the class count. */
    qd_rng g;
    qd_rng_seed(&g, 7, 7);
    for (int trial = 0; trial < 200; ++trial) {
        size_t classes = 2 + qd_rng_bounded(&g, 9), count[16], total = 0;
        for (size_t c = 0; c < classes; ++c)
            total += count[c] = qd_rng_bounded(&g, 40);
        if (total == 0)
            continue;
        size_t n = qd_rng_bounded(&g, (uint32_t)total + 1);
        qd_dataset d;
        labels_set(&d, count, classes);
        unsigned char *mask = malloc(d.n);
        qd_error err;
        cr_assert_eq(qd_data_stratified_mask(&d, n, &g, mask, &err), QD_OK, "%s", err.msg);
        size_t got[16], sum = 0;
        chosen_per_class(&d, mask, got);
        for (size_t c = 0; c < classes; ++c) {
            double share = (double)count[c] * (double)n / (double)total;
            cr_expect(fabs((double)got[c] - share) < 1.0, "trial %d class %zu: %zu vs %g", trial,
                      c, got[c], share);
            cr_expect_leq(got[c], count[c]);
            sum += got[c];
        }
        cr_expect_eq(sum, n, "trial %d", trial);
        free(mask);
        qd_dataset_free(&d);
    }
}

Test(dataload, stratified_members_are_uniform)
{
    /* counts {6, 4}, n = 5 -> quotas {3, 2}: every member of either class is
     * chosen with probability 1/2. */
    size_t count[2] = {6, 4};
    qd_dataset d;
    labels_set(&d, count, 2);
    unsigned char mask[10];
    size_t hits[10] = {0};
    qd_rng rng;
    qd_rng_seed(&rng, 3, 9);
    const int trials = 20000;
    for (int t = 0; t < trials; ++t) {
        qd_error err;
        cr_assert_eq(qd_data_stratified_mask(&d, 5, &rng, mask, &err), QD_OK);
        for (int i = 0; i < 10; ++i)
            hits[i] += mask[i];
    }
    for (int i = 0; i < 10; ++i) {
        double f = (double)hits[i] / trials;   /* sd 0.0035 */
        cr_expect(fabs(f - 0.5) < 0.02, "sample %d chosen with frequency %g", i, f);
    }
    qd_dataset_free(&d);
}

Test(dataload, stratified_rejects_impossible_requests)
{
    size_t count[2] = {3, 2};
    qd_dataset d;
    labels_set(&d, count, 2);
    unsigned char mask[5];
    qd_rng rng;
    qd_rng_seed(&rng, 1, 1);
    qd_error err;
    cr_expect_eq(qd_data_stratified_mask(&d, 6, &rng, mask, &err), QD_ERR_INVALID);
    cr_expect(strstr(err.msg, "6 of 5"), "%s", err.msg);
    d.labels[2] = 2;
    cr_expect_eq(qd_data_stratified_mask(&d, 1, &rng, mask, &err), QD_ERR_INVALID);
    cr_expect(strstr(err.msg, "label 2"), "%s", err.msg);
    qd_dataset_free(&d);
}

Test(dataload, compact_keeps_order)
{
    qd_dataset d;
    qd_error err;
    cr_assert_eq(qd_dataset_alloc(&d, 6, 1, 1, 2, 3, &err), QD_OK);
    for (int i = 0; i < 6; ++i) {
        d.images[2 * i] = i;
        d.images[2 * i + 1] = -i;
        d.labels[i] = i % 3;
    }
    unsigned char mask[6] = {0, 1, 1, 0, 0, 1};
    cr_assert_eq(qd_data_compact(&d, mask, &err), QD_OK);
    cr_assert_eq(d.n, 3);
    const int keep[3] = {1, 2, 5};
    for (int k = 0; k < 3; ++k) {
        cr_expect_eq(d.images[2 * k], keep[k]);
        cr_expect_eq(d.images[2 * k + 1], -keep[k]);
        cr_expect_eq(d.labels[k], keep[k] % 3);
    }
    qd_dataset_free(&d);
}

/* ---- qd_data_load on a seed-independent IDX set ------------------------ */

/* 200 training samples of 2x2: pixels (i % 256, i / 256, label, 7); labels
 * i % 10 for i < 150, then class 0: counts {65, 15 x 9}. 60 test samples,
 * labels i % 10. With mean 0 and std 1, pixel bytes are recoverable. */
#define NTRAIN 200
#define NTEST 60

static int train_label(int i) { return i < 150 ? i % 10 : 0; }

static void write_indexed_set(void)
{
    unsigned char pix[NTRAIN * 4], lab[NTRAIN];
    for (int i = 0; i < NTRAIN; ++i) {
        lab[i] = (unsigned char)train_label(i);
        pix[4 * i] = (unsigned char)(i % 256);
        pix[4 * i + 1] = (unsigned char)(i / 256);
        pix[4 * i + 2] = lab[i];
        pix[4 * i + 3] = 7;
    }
    size_t len;
    unsigned char *b = dt_idx_images(0x803, NTRAIN, 2, 2, pix, sizeof pix, &len);
    dt_write("train-images-idx3-ubyte", b, len);
    free(b);
    b = dt_idx_labels(0x801, NTRAIN, lab, NTRAIN, &len);
    dt_write("train-labels-idx1-ubyte", b, len);
    free(b);
    for (int i = 0; i < NTEST; ++i) {
        lab[i] = (unsigned char)(i % 10);
        pix[4 * i] = (unsigned char)i;
        pix[4 * i + 1] = 0;
        pix[4 * i + 2] = lab[i];
        pix[4 * i + 3] = 7;
    }
    b = dt_idx_images(0x803, NTEST, 2, 2, pix, NTEST * 4, &len);
    dt_write_gz("t10k-images-idx3-ubyte.gz", b, len);
    free(b);
    b = dt_idx_labels(0x801, NTEST, lab, NTEST, &len);
    dt_write_gz("t10k-labels-idx1-ubyte.gz", b, len);
    free(b);
}

static const char *indexed_section(const char *extra)
{
    static char y[2048];
    snprintf(y, sizeof y, "plugin: mnist\npath: '%s'\nmean: 0\nstd: 1\n%s", dt_dir,
             extra ? extra : "");
    return y;
}

/* Original sample indices of a set built from the indexed files; checks
 * that each sample is intact (label matches, pixels consistent). */
static void indices_of(const qd_dataset *d, int *idx, int test)
{
    for (size_t s = 0; s < d->n; ++s) {
        const double *x = d->images + 4 * s;
        int i = (int)lround(x[0] * 255.0) + 256 * (int)lround(x[1] * 255.0);
        idx[s] = i;
        int want = test ? i % 10 : train_label(i);
        cr_assert_eq(d->labels[s], want, "sample %zu (index %d)", s, i);
        cr_assert_eq(lround(x[2] * 255.0), want);
        cr_assert_eq(lround(x[3] * 255.0), 7);
    }
}

static void per_class(const qd_dataset *d, size_t *count)
{
    memset(count, 0, 10 * sizeof *count);
    for (size_t i = 0; i < d->n; ++i)
        count[d->labels[i]]++;
}

Test(dataload, no_core_keys_gives_everything)
{
    write_indexed_set();
    qd_data_bundle b;
    qd_error err;
    cr_assert_eq(dt_bundle(indexed_section(NULL), 1, &b, &err), QD_OK, "%s", err.msg);
    cr_expect_eq(b.train.n, NTRAIN);
    cr_expect_eq(b.val.n, 0);
    cr_expect(b.val.images == NULL);
    cr_expect_eq(b.test.n, NTEST);
    cr_expect_str_eq(b.name, "mnist");
    cr_expect_str_eq(b.train.name, "mnist/train");
    cr_expect_str_eq(b.test.name, "mnist/test");
    cr_expect_str_eq(b.summary, "mnist: train 200, val 0, test 60 (1x2x2, 10 classes)");
    int idx[NTRAIN];
    indices_of(&b.train, idx, 0);
    for (int i = 0; i < NTRAIN; ++i)
        cr_expect_eq(idx[i], i);
    qd_data_bundle_free(&b);
}

Test(dataload, validation_subset_test_subset)
{
    write_indexed_set();
    qd_data_bundle b;
    qd_error err;
    const char *y = indexed_section("validation: 40\nsubset: 32\ntest_subset: 20\n");
    cr_assert_eq(dt_bundle(y, 5, &b, &err), QD_OK, "%s", err.msg);
    cr_assert_eq(b.val.n, 40);
    cr_assert_eq(b.train.n, 32);
    cr_assert_eq(b.test.n, 20);
    cr_expect_str_eq(b.val.name, "mnist/val");
    cr_expect_str_eq(b.summary,
                     "mnist: train 32 of 160, val 40, test 20 of 60 (1x2x2, 10 classes)");
    /* class counts: validation 40 of {65, 15 x 9} -> {13, 3 x 9}; the rest
     * {52, 12 x 9} (160), subset 32 of it -> {10.4, 2.4 x 9} -> floor
     * {10, 2 x 9} = 28, the 4 left over to the largest remainders: 0.4 each,
     * ties to the lower classes -> {11, 3, 3, 3, 2 x 6}; test 20 of 6 per
     * class -> 2 each. */
    size_t c[10];
    per_class(&b.val, c);
    cr_expect_eq(c[0], 13);
    for (int k = 1; k < 10; ++k)
        cr_expect_eq(c[k], 3, "val class %d: %zu", k, c[k]);
    per_class(&b.train, c);
    const size_t want_train[10] = {11, 3, 3, 3, 2, 2, 2, 2, 2, 2};
    for (int k = 0; k < 10; ++k)
        cr_expect_eq(c[k], want_train[k], "train class %d: %zu", k, c[k]);
    per_class(&b.test, c);
    for (int k = 0; k < 10; ++k)
        cr_expect_eq(c[k], 2, "test class %d: %zu", k, c[k]);

    /* no overlap between train and val, order kept, samples intact */
    int vi[40], ti[32], si[20];
    indices_of(&b.val, vi, 0);
    indices_of(&b.train, ti, 0);
    indices_of(&b.test, si, 1);
    unsigned char seen[NTRAIN] = {0};
    for (int k = 0; k < 40; ++k) {
        cr_expect(k == 0 || vi[k] > vi[k - 1], "val order");
        seen[vi[k]]++;
    }
    for (int k = 0; k < 32; ++k) {
        cr_expect(k == 0 || ti[k] > ti[k - 1], "train order");
        cr_expect_eq(seen[ti[k]], 0, "index %d in both train and val", ti[k]);
    }
    for (int k = 1; k < 20; ++k)
        cr_expect(si[k] > si[k - 1], "test order");
    qd_data_bundle_free(&b);
}

static void val_indices(const char *extra, uint64_t seed, int *out, size_t *n)
{
    qd_data_bundle b;
    qd_error err;
    cr_assert_eq(dt_bundle(indexed_section(extra), seed, &b, &err), QD_OK, "%s", err.msg);
    *n = b.val.n;
    indices_of(&b.val, out, 0);
    qd_data_bundle_free(&b);
}

Test(dataload, streams_determinism_and_independence)
{
    write_indexed_set();
    int a[NTRAIN], b[NTRAIN], c[NTRAIN], d[NTRAIN];
    size_t na, nb, nc, nd;
    val_indices("validation: 30\n", 11, a, &na);
    val_indices("validation: 30\n", 11, b, &nb);          /* same seed */
    val_indices("validation: 30\nsubset: 17\n", 11, c, &nc);   /* plus subset */
    val_indices("validation: 30\n", 12, d, &nd);          /* another seed */
    cr_assert(na == 30 && nb == 30 && nc == 30 && nd == 30);
    cr_expect_arr_eq(a, b, sizeof(int) * 30, "same seed, same validation set");
    cr_expect_arr_eq(a, c, sizeof(int) * 30, "validation must not depend on subset");
    cr_expect(memcmp(a, d, sizeof(int) * 30) != 0, "another seed, another validation set");

    /* test_subset: the same samples for every seed */
    qd_data_bundle x, y;
    qd_error err;
    cr_assert_eq(dt_bundle(indexed_section("test_subset: 25\n"), 1, &x, &err), QD_OK, "%s",
                 err.msg);
    cr_assert_eq(dt_bundle(indexed_section("test_subset: 25\n"), 99, &y, &err), QD_OK, "%s",
                 err.msg);
    cr_assert_eq(x.test.n, 25);
    cr_expect_arr_eq(x.test.images, y.test.images, 25 * 4 * sizeof(double));
    /* and subset depends on the seed */
    qd_data_bundle_free(&x);
    qd_data_bundle_free(&y);
    cr_assert_eq(dt_bundle(indexed_section("subset: 25\n"), 1, &x, &err), QD_OK, "%s", err.msg);
    cr_assert_eq(dt_bundle(indexed_section("subset: 25\n"), 2, &y, &err), QD_OK, "%s", err.msg);
    cr_expect(memcmp(x.train.images, y.train.images, 25 * 4 * sizeof(double)) != 0);
    qd_data_bundle_free(&x);
    qd_data_bundle_free(&y);
}

Test(dataload, fractions)
{
    write_indexed_set();
    qd_data_bundle b;
    qd_error err;
    cr_assert_eq(dt_bundle(indexed_section("validation: 0.1\nsubset: 0.5\ntest_subset: 0.25\n"),
                           3, &b, &err), QD_OK, "%s", err.msg);
    cr_expect_eq(b.val.n, 20);     /* 10 % of 200 */
    cr_expect_eq(b.train.n, 90);   /* half of the remaining 180 */
    cr_expect_eq(b.test.n, 15);
    qd_data_bundle_free(&b);
    /* whole numbers written as floats are counts */
    cr_assert_eq(dt_bundle(indexed_section("validation: 1e1\nsubset: 30.0\ntest_subset: 0\n"),
                           3, &b, &err), QD_OK, "%s", err.msg);
    cr_expect_eq(b.val.n, 10);
    cr_expect_eq(b.train.n, 30);
    cr_expect_eq(b.test.n, NTEST);
    qd_data_bundle_free(&b);
}

Test(dataload, bad_core_values)
{
    write_indexed_set();
    qd_data_bundle b;
    qd_error err;
    int rc = dt_bundle(indexed_section("validation: 200\n"), 1, &b, &err);
    dt_expect_error(rc, &err, QD_ERR_INVALID, "validation", "leaves no training samples",
                    "manifest.yaml:");
    cr_expect(b.train.n == 0 && b.train.images == NULL && b.test.images == NULL);
    rc = dt_bundle(indexed_section("validation: 50\nsubset: 151\n"), 1, &b, &err);
    dt_expect_error(rc, &err, QD_ERR_INVALID, "subset = 151", "150 training samples", NULL);
    rc = dt_bundle(indexed_section("test_subset: 61\n"), 1, &b, &err);
    dt_expect_error(rc, &err, QD_ERR_INVALID, "test_subset = 61", "60 test", NULL);
    rc = dt_bundle(indexed_section("subset: 1.5\n"), 1, &b, &err);
    cr_expect_neq(rc, QD_OK);
    cr_expect(strstr(err.msg, "subset"), "%s", err.msg);
    rc = dt_bundle(indexed_section("subset: 0.001\n"), 1, &b, &err);
    dt_expect_error(rc, &err, QD_ERR_INVALID, "subset = 0.001", "selects no sample of 200",
                    NULL);
    rc = dt_bundle(indexed_section("validation: -3\n"), 1, &b, &err);
    cr_expect_neq(rc, QD_OK);
    cr_expect(strstr(err.msg, "validation"), "%s", err.msg);
}

Test(dataload, plugin_errors_pass_through)
{
    qd_data_bundle b;
    qd_error err;
    int rc = dt_bundle(indexed_section(NULL), 1, &b, &err);   /* no files */
    dt_expect_error(rc, &err, QD_ERR_IO, "dataset 'mnist'", "train-images-idx3-ubyte", NULL);
    cr_expect(b.train.images == NULL && b.test.images == NULL);
    rc = dt_bundle("plugin: no_such_dataset\n", 1, &b, &err);
    cr_expect_neq(rc, QD_OK);
    cr_expect(strstr(err.msg, "no_such_dataset"), "%s", err.msg);
    cr_expect(strstr(err.msg, "mnist"), "lists the available plugins: %s", err.msg);
}

/* ---- the synthetic plugin ---------------------------------------------- */

static void synth(const char *extra, uint64_t seed, qd_data_bundle *b)
{
    char y[1024];
    snprintf(y, sizeof y, "plugin: synthetic\n%s", extra ? extra : "");
    qd_error err;
    cr_assert_eq(dt_bundle(y, seed, b, &err), QD_OK, "%s", err.msg);
}

Test(dataload, synthetic_defaults_and_determinism)
{
    qd_data_bundle a, b, c;
    synth(NULL, 4, &a);
    synth(NULL, 4, &b);
    synth(NULL, 5, &c);
    cr_assert_eq(a.train.n, 1000);
    cr_assert_eq(a.test.n, 500);
    cr_expect_eq(a.train.channels, 1);
    cr_expect_eq(a.train.height, 28);
    cr_expect_eq(a.train.width, 28);
    cr_expect_eq(a.train.classes, 10);
    size_t m = a.train.n * 784;
    cr_expect_arr_eq(a.train.images, b.train.images, m * sizeof(double));
    cr_expect_arr_eq(a.train.labels, b.train.labels, a.train.n * sizeof(int32_t));
    cr_expect_arr_eq(a.test.images, b.test.images, a.test.n * 784 * sizeof(double));
    cr_expect(memcmp(a.train.images, c.train.images, m * sizeof(double)) != 0);
    size_t cnt[10];
    per_class(&a.train, cnt);
    for (int k = 0; k < 10; ++k)
        cr_expect_eq(cnt[k], 100, "balanced classes");
    per_class(&a.test, cnt);
    for (int k = 0; k < 10; ++k)
        cr_expect_eq(cnt[k], 50, "balanced classes");
    /* shuffled, not periodic */
    int periodic = 1;
    for (size_t i = 0; i < 50; ++i)
        periodic &= a.train.labels[i] == (int32_t)(i % 10);
    cr_expect(!periodic);

    /* learnable: nearest class mean (from train) classifies test well */
    double *mu = calloc(10 * 784, sizeof *mu);
    for (size_t i = 0; i < a.train.n; ++i)
        for (size_t j = 0; j < 784; ++j)
            mu[a.train.labels[i] * 784 + j] += a.train.images[i * 784 + j] / 100.0;
    size_t right = 0;
    for (size_t i = 0; i < a.test.n; ++i) {
        double best = INFINITY;
        int arg = -1;
        for (int k = 0; k < 10; ++k) {
            double dd = 0;
            for (size_t j = 0; j < 784; ++j) {
                double e = a.test.images[i * 784 + j] - mu[k * 784 + j];
                dd += e * e;
            }
            if (dd < best) {
                best = dd;
                arg = k;
            }
        }
        right += arg == a.test.labels[i];
    }
    cr_log_info("synthetic nearest-mean test accuracy %.3f", (double)right / a.test.n);
    cr_expect_gt(right, 0.9 * a.test.n, "nearest-mean accuracy %zu / %zu", right, a.test.n);
    free(mu);
    qd_data_bundle_free(&a);
    qd_data_bundle_free(&b);
    qd_data_bundle_free(&c);
}

Test(dataload, synthetic_noise_and_prototypes)
{
    /* noise 0: every sample is its class prototype, of unit RMS; noise s:
     * same prototypes and labels (same seed), residual ~ s * N(0, 1). */
    const char *shape = "classes: 4\ntrain_size: 400\ntest_size: 8\nchannels: 2\n"
                        "height: 9\nwidth: 7\n";
    char y0[512], y1[512];
    snprintf(y0, sizeof y0, "%snoise: 0\n", shape);
    snprintf(y1, sizeof y1, "%snoise: 0.3\n", shape);
    qd_data_bundle a, b;
    synth(y0, 8, &a);
    synth(y1, 8, &b);
    size_t per = 2 * 9 * 7;
    cr_assert_eq(a.train.n, 400);
    cr_assert_eq(qd_dataset_sample_size(&a.train), per);
    const double *proto[4] = {0};
    for (size_t i = 0; i < a.train.n; ++i) {
        const double *x = a.train.images + i * per;
        int c = a.train.labels[i];
        if (!proto[c]) {
            proto[c] = x;
            double ss = 0;
            for (size_t j = 0; j < per; ++j)
                ss += x[j] * x[j];
            cr_expect(fabs(sqrt(ss / per) - 1.0) < 1e-12, "prototype RMS %g", sqrt(ss / per));
        } else {
            cr_expect_arr_eq(x, proto[c], per * sizeof(double), "sample %zu differs", i);
        }
    }
    for (int c = 0; c < 4; ++c)
        for (int d = c + 1; d < 4; ++d)
            cr_expect(memcmp(proto[c], proto[d], per * sizeof(double)) != 0);
    cr_assert_arr_eq(a.train.labels, b.train.labels, 400 * sizeof(int32_t));
    double s = 0, ss = 0;
    size_t m = 400 * per;
    for (size_t j = 0; j < m; ++j) {
        double r = (b.train.images[j] - a.train.images[j]) / 0.3;
        s += r;
        ss += r * r;
    }
    double mean = s / m, var = ss / m - mean * mean;   /* m = 50400: sd of var ~ 0.0063 */
    cr_expect(fabs(mean) < 0.02, "noise mean %g", mean);
    cr_expect(fabs(var - 1.0) < 0.03, "noise variance %g", var);
    qd_data_bundle_free(&a);
    qd_data_bundle_free(&b);
}

Test(dataload, synthetic_shift_translates_the_prototype)
{
    qd_data_bundle a, b;
    const char *base = "classes: 3\ntrain_size: 60\ntest_size: 3\nheight: 12\nwidth: 10\n"
                       "noise: 0\n";
    char y[512];
    snprintf(y, sizeof y, "%sshift: 0\n", base);
    synth(y, 3, &a);
    snprintf(y, sizeof y, "%sshift: 2\n", base);
    synth(y, 3, &b);
    const double *proto[3] = {0};
    for (size_t i = 0; i < a.train.n; ++i)
        proto[a.train.labels[i]] = a.train.images + i * 120;
    size_t shifted = 0;
    for (size_t i = 0; i < b.train.n; ++i) {
        const double *x = b.train.images + i * 120, *p = proto[b.train.labels[i]];
        int found = 0;
        for (int oy = -2; oy <= 2 && !found; ++oy)
            for (int ox = -2; ox <= 2 && !found; ++ox) {
                int ok = 1;
                for (int yy = 0; yy < 12 && ok; ++yy)
                    for (int xx = 0; xx < 10 && ok; ++xx) {
                        int sy = yy - oy, sx = xx - ox;
                        double v = (sy >= 0 && sy < 12 && sx >= 0 && sx < 10) ? p[sy * 10 + sx]
                                                                             : 0.0;
                        ok = x[yy * 10 + xx] == v;
                    }
                if (ok) {
                    found = 1;
                    shifted += oy != 0 || ox != 0;
                }
            }
        cr_expect(found, "sample %zu is no translate of its prototype", i);
    }
    cr_expect_gt(shifted, 30, "only %zu of 60 samples moved", shifted);
    qd_data_bundle_free(&a);
    qd_data_bundle_free(&b);
}

Test(dataload, synthetic_split_order_does_not_matter)
{
    qd_config *cfg;
    qd_error err;
    const char *y = "plugin: synthetic\ntrain_size: 30\ntest_size: 20\nheight: 5\nwidth: 5\n";
    cr_assert_eq(qd_config_load_string(y, strlen(y), "s.yaml", NULL, &cfg, &err), QD_OK);
    qd_dataset tr[2], te[2];
    for (int order = 0; order < 2; ++order) {
        qd_instance_opts o = {.seed = 6, .stream = "dataset", .threads = 1};
        qd_instance *inst;
        cr_assert_eq(qd_instance_create(dt_reg, QD_KIND_DATASET, qd_config_root(cfg), &o, &inst,
                                        &err), QD_OK, "%s", err.msg);
        const qd_dataset_vt *vt = qd_instance_vtable(inst);
        void *self = qd_instance_self(inst);
        if (order == 0) {
            cr_assert_eq(vt->load(self, QD_SPLIT_TRAIN, &tr[0]), QD_OK);
            cr_assert_eq(vt->load(self, QD_SPLIT_TEST, &te[0]), QD_OK);
        } else {
            cr_assert_eq(vt->load(self, QD_SPLIT_TEST, &te[1]), QD_OK);
            cr_assert_eq(vt->load(self, QD_SPLIT_TRAIN, &tr[1]), QD_OK);
        }
        qd_instance_destroy(inst);
    }
    cr_expect_arr_eq(tr[0].images, tr[1].images, 30 * 25 * sizeof(double));
    cr_expect_arr_eq(te[0].images, te[1].images, 20 * 25 * sizeof(double));
    cr_expect_arr_eq(te[0].labels, te[1].labels, 20 * sizeof(int32_t));
    for (int k = 0; k < 2; ++k) {
        qd_dataset_free(&tr[k]);
        qd_dataset_free(&te[k]);
    }
    qd_config_destroy(cfg);
}
