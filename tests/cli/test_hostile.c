/* Hostile inputs at the command line. Every broken data file (IDX raw and
 * .gz, CIFAR-10 binary, the .npy files `qdistill evaluate` reads), manifest,
 * plugin file and occupied run directory gives exit code 1 or 2 and exactly
 * one error line naming the file, never a crash, and leaves no partial
 * output behind; paths with spaces and non-ASCII characters work end to
 * end; and the numerical guards name the layer a NaN comes from. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "qdistill/config.h"
#include "qdistill/data.h"
#include "qdistill/json.h"
#include "qdistill/model.h"
#include "qdistill/npy.h"
#include "qdistill/rng.h"
#include "qdistill/train.h"

#include "cli_util.h"

/* ---- small helpers ---- */

/* snprintf into one of a few rotating static buffers: paths built inline. */
static const char *P(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *P(const char *fmt, ...)
{
    static char bufs[8][1024];
    static int k;
    char *b = bufs[k++ % 8];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, sizeof bufs[0], fmt, ap);
    va_end(ap);
    return b;
}

/* The same into dst[1024], for paths that must outlive a few P calls. */
static void S(char *dst, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void S(char *dst, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, 1024, fmt, ap);
    va_end(ap);
}

static void put_text(const char *path, const char *text)
{
    write_file(path, text, strlen(text));
}

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
}

/* The lines of text that contain needle: their count, and the first in
 * line[cap]. */
static int lines_with(const char *text, const char *needle, char *line, size_t cap)
{
    int n = 0;
    if (line && cap)
        line[0] = '\0';
    for (const char *s = text; *s;) {
        const char *e = strchr(s, '\n');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        char *l = strndup(s, len);
        cr_assert(l);
        if (strstr(l, needle)) {
            if (n++ == 0 && line)
                snprintf(line, cap, "%s", l);
        }
        free(l);
        s += len + (e ? 1 : 0);
    }
    return n;
}

/* The contract for a hostile input: exit code `code` (1 or 2), no crash,
 * no sanitizer / valgrind report, no warnings, and exactly one line naming
 * `file`, which says `why`. */
static void expect_one_error(const char *what, int rc, const char *err, int code,
                             const char *file, const char *why)
{
    cr_expect_eq(rc, code, "%s: exit %d, expected %d; stderr:\n%s", what, rc, code, err);
    cr_expect(!strstr(err, "Sanitizer") && !strstr(err, "runtime error") &&
                  !strstr(err, "==ERROR") && !strstr(err, "warning:"),
              "%s: unexpected report on stderr:\n%s", what, err);
    char line[2048];
    int n = lines_with(err, file, line, sizeof line);
    cr_expect_eq(n, 1, "%s: %d lines name '%s' (want exactly one error line):\n%s", what, n,
                 file, err);
    cr_expect(strstr(line, why), "%s: '%s' not in the error line: %s", what, why, line);
}

/* Names in dir (sorted, '\n'-joined) into out[cap]; "" when dir is absent. */
static void listing(const char *dir, char *out, size_t cap)
{
    out[0] = '\0';
    struct dirent **ents = NULL;
    int n = scandir(dir, &ents, NULL, alphasort);
    for (int i = 0; i < n; ++i) {
        if (strcmp(ents[i]->d_name, ".") && strcmp(ents[i]->d_name, ".."))
            snprintf(out + strlen(out), cap - strlen(out), "%s\n", ents[i]->d_name);
        free(ents[i]);
    }
    free(ents);
}

/* A run that failed before it produced anything leaves at most the run
 * directory's bookkeeping (the resolved manifest, the overrides, the log):
 * no results, no synthetic set, no checkpoint, no temporary files. */
static void expect_no_outputs(const char *what, const char *dir)
{
    char names[4096];
    listing(dir, names, sizeof names);
    cr_expect(strcmp(names, "") == 0 || strcmp(names, "log.txt\nmanifest.yaml\noverrides.txt\n") == 0,
              "%s: %s holds more than the bookkeeping:\n%s", what, dir, names);
}

/* The run directory's log.txt records why the run failed. */
static void expect_log_has(const char *what, const char *dir, const char *needle)
{
    char *log = slurp(P("%s/log.txt", dir));
    cr_assert(log, "%s: no %s/log.txt", what, dir);
    cr_expect(strstr(log, needle), "%s: '%s' not in %s/log.txt:\n%s", what, needle, dir, log);
    free(log);
}

/* ---- tiny data sets in the real file formats ---- */

/* Pixels of sample i: class i % 4 lights up its own 4x4 quadrant of an 8x8
 * image over a little noise, so a model that sees the right bytes learns. */
static uint8_t pixel(size_t i, size_t p)
{
    size_t cls = i % 4, r = p / 8, c = p % 8;
    size_t q = (r >= 4) * 2 + (c >= 4);
    uint32_t h = (uint32_t)(i * 2654435761u) ^ (uint32_t)(p * 40503u);
    return (uint8_t)((q == cls ? 200 : 20) + (h >> 27));
}

static void be32(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)(v >> 24);
    b[1] = (uint8_t)(v >> 16);
    b[2] = (uint8_t)(v >> 8);
    b[3] = (uint8_t)v;
}

/* IDX image file: magic, `claim` images of 8x8 in the header, `real` images
 * of payload, then `extra` bytes of trailing garbage. Length in *len. */
static uint8_t *idx_images(uint32_t magic, uint32_t claim, size_t real, size_t extra, size_t *len)
{
    *len = 16 + real * 64 + extra;
    uint8_t *b = malloc(*len);
    cr_assert(b);
    be32(b, magic);
    be32(b + 4, claim);
    be32(b + 8, 8);
    be32(b + 12, 8);
    for (size_t i = 0; i < real; ++i)
        for (size_t p = 0; p < 64; ++p)
            b[16 + i * 64 + p] = pixel(i, p);
    memset(b + 16 + real * 64, 'G', extra);
    return b;
}

static uint8_t *idx_labels(uint32_t claim, size_t real, size_t *len)
{
    *len = 8 + real;
    uint8_t *b = malloc(*len);
    cr_assert(b);
    be32(b, 0x00000801u);
    be32(b + 4, claim);
    for (size_t i = 0; i < real; ++i)
        b[8 + i] = (uint8_t)(i % 4);
    return b;
}

static void write_gz(const char *path, const void *data, size_t len)
{
    gzFile g = gzopen(path, "wb");
    cr_assert(g, "cannot write %s", path);
    cr_assert_eq(gzwrite(g, data, (unsigned)len), (int)len);
    cr_assert_eq(gzclose(g), Z_OK);
}

/* A good MNIST-format set in dir: 80 training and 40 test images. */
static void write_mnist(const char *dir)
{
    sh("mkdir -p '%s'", dir);
    size_t len;
    uint8_t *b = idx_images(0x803, 80, 80, 0, &len);
    write_file(P("%s/train-images-idx3-ubyte", dir), b, len);
    free(b);
    b = idx_labels(80, 80, &len);
    write_file(P("%s/train-labels-idx1-ubyte", dir), b, len);
    free(b);
    b = idx_images(0x803, 40, 40, 0, &len);
    write_file(P("%s/t10k-images-idx3-ubyte", dir), b, len);
    free(b);
    b = idx_labels(40, 40, &len);
    write_file(P("%s/t10k-labels-idx1-ubyte", dir), b, len);
    free(b);
}

/* A model small enough that `train` takes milliseconds. */
static const char *const k_linear_model =
    "model:\n"
    "  layers:\n"
    "    - {type: flatten}\n"
    "    - {name: h, type: linear, out: 8}\n"
    "    - {type: relu}\n"
    "    - {name: out, type: linear, out: 10}\n"
    "train: {optimizer: adam, lr: 0.05, epochs: 15, batch_size: 20}\n";

static void write_manifest(const char *path, const char *dataset)
{
    char text[2048];
    snprintf(text, sizeof text, "name: hostile\nseed: 1\nthreads: 1\ndataset: %s\n%s", dataset,
             k_linear_model);
    put_text(path, text);
}

/* ---- data files ---- */

/* `qdistill train` on g_tmp/m.yaml (mnist in g_tmp/data) into a fresh
 * directory; the one error line must name `file` and say `why`. */
static void mnist_case(const char *what, const char *file, const char *why)
{
    char out[1024];
    S(out, "%s/out-%s", g_tmp, what);
    char *err;
    int rc = qd(NULL, &err, "train '%s/m.yaml' --out '%s'", g_tmp, out);
    expect_one_error(what, rc, err, 1, file, why);
    free(err);
    expect_no_outputs(what, out);
}

/* Replace the training images by bytes (raw, or gzipped into the .gz twin). */
static void set_train_images(const uint8_t *b, size_t len, int gz)
{
    unlink(P("%s/data/train-images-idx3-ubyte", g_tmp));
    unlink(P("%s/data/train-images-idx3-ubyte.gz", g_tmp));
    if (gz)
        write_gz(P("%s/data/train-images-idx3-ubyte.gz", g_tmp), b, len);
    else
        write_file(P("%s/data/train-images-idx3-ubyte", g_tmp), b, len);
}

Test(hostile, idx_files_truncated_oversized_or_of_another_kind, .timeout = 120)
{
    make_tmp();
    write_mnist(P("%s/data", g_tmp));
    write_manifest(P("%s/m.yaml", g_tmp), "{plugin: mnist, path: data}");
    const char *img = "train-images-idx3-ubyte'", *img_gz = "train-images-idx3-ubyte.gz'";
    size_t len;
    uint8_t *b;

    /* the good set trains (so the failures below are the files' fault) */
    char *err;
    int rc = qd(NULL, &err, "train '%s/m.yaml' --out '%s/good'", g_tmp, g_tmp);
    cr_assert_eq(rc, 0, "%s", err);
    free(err);

    for (int gz = 0; gz <= 1; ++gz) {
        const char *f = gz ? img_gz : img;
        /* truncated: the header promises 80 images, 30 are there */
        b = idx_images(0x803, 80, 30, 0, &len);
        set_train_images(b, len, gz);
        mnist_case(gz ? "gz-truncated" : "truncated", f, "truncated");
        free(b);
        /* a gzip stream cut in the middle */
        if (gz) {
            uint8_t *whole = idx_images(0x803, 80, 80, 0, &len);
            set_train_images(whole, len, 1);
            free(whole);
            char p[1024];
    S(p, "%s/data/train-images-idx3-ubyte.gz", g_tmp);
            size_t zl;
            char *z = slurp_n(p, &zl);
            write_file(p, z, zl / 2);
            free(z);
            mnist_case("gz-cut", f, "the gzip stream is cut off");
        }
        /* trailing garbage after the promised payload */
        b = idx_images(0x803, 80, 80, 9, &len);
        set_train_images(b, len, gz);
        mnist_case(gz ? "gz-trailing" : "trailing", f, "9 unexpected bytes after");
        free(b);
        /* wrong magic: a label file's, and something that is no IDX at all */
        b = idx_images(0x801, 80, 80, 0, &len);
        set_train_images(b, len, gz);
        mnist_case(gz ? "gz-magic" : "magic", f, "bad magic number 0x00000801");
        free(b);
        b = idx_images(0x89504e47u /* "\x89PNG" */, 80, 80, 0, &len);
        set_train_images(b, len, gz);
        mnist_case(gz ? "gz-png" : "png", f, "bad magic number 0x89504e47");
        free(b);
        /* a header count far beyond anything the file holds */
        b = idx_images(0x803, 0xfffffff0u, 80, 0, &len);
        set_train_images(b, len, gz);
        mnist_case(gz ? "gz-huge" : "huge", f, "header claims 4294967280 images");
        free(b);
    }
    /* a raw file whose header count disagrees with its label file */
    b = idx_images(0x803, 1000, 80, 0, &len);
    set_train_images(b, len, 0);
    mnist_case("count-mismatch", img, "holds 1000 images but");
    free(b);
    /* both headers claim 1000 samples the files do not hold: the labels
     * are read first, and their file is the one named */
    uint8_t *l = idx_labels(1000, 80, &len);
    write_file(P("%s/data/train-labels-idx1-ubyte", g_tmp), l, len);
    free(l);
    mnist_case("counts-beyond-file", "train-labels-idx1-ubyte'", "truncated: expected 1000 bytes");
    rm_tmp();
}

/* CIFAR-10 binary batches: 1 label byte + 3072 pixel bytes per record. */
static void write_cifar(const char *path, size_t records, size_t extra, uint8_t first)
{
    size_t len = records * 3073 + extra;
    uint8_t *b = malloc(len ? len : 1);
    cr_assert(b);
    for (size_t r = 0; r < records; ++r) {
        b[r * 3073] = (uint8_t)(r % 10);
        for (size_t p = 0; p < 3072; ++p)
            b[r * 3073 + 1 + p] = (uint8_t)((r * 7 + p) % 251);
    }
    memset(b + records * 3073, 0x5a, extra);
    if (len)
        b[0] = first;
    write_file(path, b, len);
    free(b);
}

static void cifar_case(const char *what, const char *why)
{
    char out[1024];
    S(out, "%s/out-%s", g_tmp, what);
    char *err;
    int rc = qd(NULL, &err, "train '%s/c.yaml' --out '%s'", g_tmp, out);
    expect_one_error(what, rc, err, 1, "data_batch_1.bin'", why);
    free(err);
    expect_no_outputs(what, out);
}

Test(hostile, cifar10_batches_truncated_oversized_or_of_another_kind, .timeout = 120)
{
    make_tmp();
    sh("mkdir -p '%s/cdata'", g_tmp);
    char batch[1024];
    S(batch, "%s/cdata/data_batch_1.bin", g_tmp);
    write_cifar(P("%s/cdata/test_batch.bin", g_tmp), 20, 0, 0);
    put_text(P("%s/c.yaml", g_tmp),
             "name: hostile-cifar\nseed: 1\nthreads: 1\n"
             "dataset: {plugin: cifar10, path: cdata, batches: [data_batch_1.bin], records: 20}\n"
             "model: {layers: [{type: flatten}, {name: out, type: linear, out: 10}]}\n"
             "train: {optimizer: sgd, lr: 0.01, epochs: 1, batch_size: 10}\n");
    write_cifar(batch, 20, 0, 0);
    char *err;
    int rc = qd(NULL, &err, "train '%s/c.yaml' --out '%s/good'", g_tmp, g_tmp);
    cr_assert_eq(rc, 0, "the good batch must load: %s", err);
    free(err);

    write_cifar(batch, 19, 1500, 0);       /* cut inside record 20 */
    cifar_case("cut", "not a multiple of the 3073-byte record");
    write_cifar(batch, 19, 0, 0);          /* whole records, one missing */
    cifar_case("short", "holds 19 records, expected 20 (truncated");
    write_cifar(batch, 21, 0, 0);          /* one record too many */
    cifar_case("long", "holds 21 records, expected 20 (too large");
    write_cifar(batch, 20, 7, 0);          /* trailing garbage */
    cifar_case("trailing", "not a multiple of the 3073-byte record");
    /* the Python version of the data set has the right size here but starts
     * with a pickle opcode where the first label is */
    write_cifar(batch, 20, 0, 0x80);
    cifar_case("pickle", "label 128 of record 0 is outside 0..9");
    /* the downloaded archive itself instead of a batch */
    uint8_t junk[5000];
    for (size_t i = 0; i < sizeof junk; ++i)
        junk[i] = (uint8_t)(i * 31 + 7);
    write_gz(batch, junk, sizeof junk);
    cifar_case("tar-gz", "not the CIFAR-10 binary version");
    rm_tmp();
}

/* A finished (cheap) distillation whose .npy files `evaluate` reads. */
static void tiny_run(const char *dir)
{
    char *err;
    int rc = qd(NULL, &err,
                "run tests/cli/manifests/tiny-distill.yaml distill.iterations=4 "
                "distill.validate_every=0 evaluate.models=1 evaluate.baselines=false --out '%s'",
                dir);
    cr_assert_eq(rc, 0, "%s", err);
    free(err);
}

static void npy_case(const char *what, const char *run, const char *file, const char *why)
{
    char before[4096], after[4096];
    listing(run, before, sizeof before);
    char *err;
    int rc = qd(NULL, &err, "evaluate '%s' evaluate.models=2", run);
    char full[1024];
    snprintf(full, sizeof full, "%s/%s'", run, file);
    expect_one_error(what, rc, err, 1, full, why);
    free(err);
    listing(run, after, sizeof after);
    cr_expect_str_eq(after, before, "%s: evaluate left files behind", what);
}

Test(hostile, npy_files_given_to_evaluate, .timeout = 120)
{
    make_tmp();
    char run[1024];
    S(run, "%s/run", g_tmp);
    tiny_run(run);
    char im[1024];
    S(im, "%s/synthetic_images.npy", run);
    char lb[1024];
    S(lb, "%s/synthetic_labels.npy", run);
    size_t n_im, n_lb;
    char *good_im = slurp_n(im, &n_im), *good_lb = slurp_n(lb, &n_lb);
    cr_assert(n_im > 128 && n_lb > 128);

    write_file(im, good_im, n_im - 100);
    npy_case("truncated", run, "synthetic_images.npy", "data truncated");
    write_file(im, good_im, 60);   /* inside the header */
    npy_case("header-cut", run, "synthetic_images.npy", "npy:");
    char *big = malloc(n_im + 16);
    cr_assert(big);
    memcpy(big, good_im, n_im);
    memcpy(big + n_im, "trailing garbage", 16);
    write_file(im, big, n_im + 16);
    npy_case("trailing", run, "synthetic_images.npy", "trailing bytes");
    /* the header promises one image more than the data holds */
    char *shape = NULL;   /* the header is text after 10 binary bytes */
    for (size_t i = 10; i + 12 <= n_im && i < 128 && !shape; ++i)
        if (memcmp(big + i, "(8, 1, 8, 8)", 12) == 0)
            shape = big + i;
    cr_assert(shape, "unexpected header: %.100s", big + 10);
    shape[1] = '9';
    write_file(im, big, n_im);
    npy_case("count-beyond-file", run, "synthetic_images.npy", "data truncated");
    shape[1] = '8';
    /* wrong magic: another file format, and a gzipped .npy */
    memcpy(big, "\x89PNG\r\n", 6);
    write_file(im, big, n_im);
    npy_case("magic", run, "synthetic_images.npy", "bad magic");
    free(big);
    write_file(im, good_im, n_im);
    write_gz(lb, good_lb, n_lb);
    npy_case("gz", run, "synthetic_labels.npy", "bad magic");
    /* restored, it evaluates: the failures above were the files' */
    write_file(lb, good_lb, n_lb);
    char *err;
    int rc = qd(NULL, &err, "evaluate '%s' evaluate.models=2", run);
    cr_expect_eq(rc, 0, "%s", err);
    free(err);
    free(good_im);
    free(good_lb);
    rm_tmp();
}

/* ---- manifests ---- */

/* `qdistill run` on a manifest file: exit 2, one "path:line:col: " error,
 * and no run directory at all. */
static void manifest_case(const char *what, const char *path, const char *why)
{
    char out[1024];
    S(out, "%s/out-%s", g_tmp, what);
    char *err;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    int rc = qd(NULL, &err, "run '%s' --out '%s'", path, out);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double secs = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
    char prefix[1100];
    snprintf(prefix, sizeof prefix, "%s:", path);
    expect_one_error(what, rc, err, 2, prefix, why);
    char line[2048];
    lines_with(err, prefix, line, sizeof line);
    int l = 0, c = 0;
    cr_expect(sscanf(line + strlen(prefix), "%d:%d:", &l, &c) == 2 && l >= 1 && c >= 1,
              "%s: no file:line:col in: %s", what, line);
    /* fails fast, whatever the input's size (valgrind aside) */
    if (!getenv("QD_CLI_WRAPPER"))
        cr_expect(secs < 5.0, "%s: took %.1f s", what, secs);
    free(err);
    struct stat st;
    cr_expect(stat(out, &st) != 0, "%s: %s was created", what, out);
}

Test(hostile, manifests_not_utf8_empty_huge_or_deep, .timeout = 120)
{
    make_tmp();
    char p[1024];
    S(p, "%s/latin1.yaml", g_tmp);
    put_text(p, "name: caf\xe9\nseed: 1\n");
    manifest_case("latin1", p, "UTF-8");
    S(p, "%s/utf16.yaml", g_tmp);
    write_file(p, "\xff\xfen\0a\0m\0e\0:\0 \0x\0\n\0", 18);
    manifest_case("utf16", p, "UTF-8");
    S(p, "%s/empty.yaml", g_tmp);
    put_text(p, "");
    manifest_case("empty", p, "empty");
    S(p, "%s/comments.yaml", g_tmp);
    put_text(p, "# nothing but a comment\n\n");
    manifest_case("comments-only", p, "empty");

    /* 50 MB: refused from its size before anything is parsed */
    S(p, "%s/huge.yaml", g_tmp);
    FILE *f = fopen(p, "w");
    cr_assert(f);
    fputs("name: huge\nseed: 1\nkeys:\n", f);
    for (long i = 0, size = 0; size < 50L * 1024 * 1024; ++i)
        size += fprintf(f, "  k%ld: vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv\n", i);
    fclose(f);
    manifest_case("50MB", p, "more than the limit");
    unlink(p);

    /* deeply nested, in flow and in block style */
    S(p, "%s/deep-flow.yaml", g_tmp);
    size_t depth = 100000;
    char *deep = malloc(2 * depth + 32);
    cr_assert(deep);
    size_t k = (size_t)sprintf(deep, "name: x\nseed: ");
    memset(deep + k, '[', depth);
    memset(deep + k + depth, ']', depth);
    k += 2 * depth;
    deep[k++] = '\n';
    write_file(p, deep, k);
    free(deep);
    manifest_case("deep-flow", p, "nesting is deeper than");
    S(p, "%s/deep-block.yaml", g_tmp);
    f = fopen(p, "w");
    cr_assert(f);
    fputs("name: x\n", f);
    for (int i = 0; i < 1000; ++i)
        fprintf(f, "%*sk%d:\n", 2 * i, "", i);
    fprintf(f, "%*sv: 1\n", 2 * 1000, "");
    fclose(f);
    manifest_case("deep-block", p, "nesting is deeper than");
    rm_tmp();
}

/* ---- plugin files ---- */

static const char *fixture(int variant)
{
    return P("%s/tests/core/fx_plugin_%d.so", builddir(), variant);
}

static const char *const k_fx_manifest =
    "name: fx\nseed: 1\nthreads: 1\n"
    "dataset: {plugin: fx_tiny, n: 8}\n"
    "model: {layers: [{type: flatten}, {name: out, type: linear, out: 2}]}\n"
    "train: {optimizer: sgd, lr: 0.01, epochs: 1, batch_size: 4}\n";

/* A plugin directory holding just `file` (copied as `name`); train the
 * fx_tiny manifest with it. */
static int fx_train(const char *file, const char *name, const char *extra, const char *out,
                    char **err)
{
    sh("rm -rf '%s/plugins' && mkdir -p '%s/plugins' && cp '%s' '%s/plugins/%s'", g_tmp, g_tmp,
       file, g_tmp, name);
    put_text(P("%s/fx.yaml", g_tmp), k_fx_manifest);
    return qd(NULL, err, "--plugin-path '%s/plugins' train '%s/fx.yaml' %s --out '%s'", g_tmp,
              g_tmp, extra, out);
}

static void bad_plugin_case(const char *what, const char *file, const char *name,
                            const char *why)
{
    char out[1024];
    S(out, "%s/out-%s", g_tmp, what);
    char *err;
    int rc = fx_train(file, name, "", out, &err);
    /* the one error is the manifest's: the plugin it asks for is missing,
     * and the file that would have provided it is named with the reason */
    expect_one_error(what, rc, err, 2, P("plugins/%s", name), why);
    cr_expect(strstr(err, "unknown dataset plugin 'fx_tiny'"), "%s: %s", what, err);
    free(err);
    struct stat st;
    cr_expect(stat(out, &st) != 0, "%s: %s was created", what, out);
}

Test(hostile, plugin_files_broken_in_every_way, .timeout = 120)
{
    make_tmp();
    /* the good fixture runs */
    char *err;
    int rc = fx_train(fixture(0), "fx ok.so", "", P("%s/good", g_tmp), &err);
    cr_assert_eq(rc, 0, "%s", err);
    free(err);

    char text[1024];
    S(text, "%s/notelf.txt", g_tmp);
    put_text(text, "#!/bin/sh\necho I am a shell script, not a shared object\n");
    bad_plugin_case("not-elf", text, "script.so", "cannot load plugin: ");
    bad_plugin_case("exe", "/bin/true", "true.so", "cannot load plugin: ");
    bad_plugin_case("no-entry", fixture(5), "noentry.so", "no 'qd_plugin_entry' symbol");
    bad_plugin_case("wrong-abi", fixture(1), "oldabi.so", "built for plugin ABI 2.0");
    bad_plugin_case("small-desc", fixture(2), "small.so", "descriptor is 8 bytes");
    bad_plugin_case("no-callback", fixture(3), "nocb.so", "lacks the required callback 'load'");
    bad_plugin_case("null-list", fixture(6), "nulllist.so", "qd_plugin_entry() returned NULL");

    /* create() reporting an error: exit 1, the plugin's own message */
    char out[1024];
    S(out, "%s/out-fail", g_tmp);
    rc = fx_train(fixture(0), "fx.so", "dataset.fail=true", out, &err);
    expect_one_error("create-error", rc, err, 1, "dataset 'fx_tiny'", "asked to fail (fail: true)");
    free(err);
    expect_no_outputs("create-error", out);
    /* create() claiming success without an instance: the file is named */
    S(out, "%s/out-null", g_tmp);
    rc = fx_train(fixture(0), "fx.so", "dataset.null_self=true", out, &err);
    expect_one_error("create-null", rc, err, 1, "plugins/fx.so", "made no instance");
    free(err);
    expect_no_outputs("create-null", out);

    /* a broken file next to a good one is a warning only, and the run works */
    sh("cp '%s' '%s/plugins/zz-broken.so'", fixture(1), g_tmp);
    rc = qd(NULL, &err, "--plugin-path '%s/plugins' train '%s/fx.yaml' --out '%s/good2'", g_tmp,
            g_tmp, g_tmp);
    cr_expect_eq(rc, 0, "%s", err);
    cr_expect_eq(lines_with(err, "zz-broken.so", NULL, 0), 1, "%s", err);
    cr_expect(strstr(err, "warning: plugin not loaded: "), "%s", err);
    free(err);
    rm_tmp();
}

/* ---- paths ---- */

Test(hostile, paths_with_spaces_and_non_ascii_work_end_to_end, .timeout = 240)
{
    make_tmp();
    char base[1024];
    S(base, "%s/päth with spaces/ダータ", g_tmp);
    write_mnist(P("%s/dåta dir", base));
    char manifest[1024];
    S(manifest, "%s/my manifest ü.yaml", base);
    write_manifest(manifest, "{plugin: mnist, path: \"dåta dir\", validation: 20}");
    /* and a distillation in it */
    FILE *f = fopen(manifest, "a");
    cr_assert(f);
    fputs("distill: {plugin: performance_matching, images_per_class: 1, steps: 1, epochs: 1,\n"
          "          batch_size: 20, iterations: 4}\n"
          "evaluate: {models: 1, baselines: false}\n", f);
    fclose(f);
    char out[1024];
    S(out, "%s/öut dir/rün 1", base);
    char *o, *err;
    int rc = qd(&o, &err, "run '%s' --out '%s'", manifest, out);
    cr_assert_eq(rc, 0, "%s", err);
    cr_expect(strstr(o, out), "stdout names %s: %s", out, o);
    free(o);
    free(err);
    const char *files[] = {"manifest.yaml", "log.txt", "metrics.csv", "result.json",
                           "synthetic_images.npy", "synthetic_labels.npy", "images.png",
                           "checkpoint.qdc"};
    for (size_t i = 0; i < sizeof files / sizeof *files; ++i)
        cr_expect(exists(out, files[i]), "missing %s", files[i]);
    /* the run directory is evaluated again, its manifest's data found */
    rc = qd(NULL, &err, "evaluate '%s' evaluate.models=2", out);
    cr_expect_eq(rc, 0, "%s", err);
    free(err);
    cr_expect(exists(out, "evaluation-models-2.json"));
    /* and the bytes read through those paths are the right ones: a model
     * trained on them beats chance (0.25) by far */
    char tdir[1024];
    S(tdir, "%s/tråin ✓", base);
    rc = qd(NULL, &err, "train '%s' --out '%s'", manifest, tdir);
    cr_assert_eq(rc, 0, "%s", err);
    free(err);
    qd_json_value *v = NULL;
    cr_assert_eq(qd_json_read_file(P("%s/result.json", tdir), &v, NULL), 0);
    double acc = 0;
    cr_expect_eq(qd_json_get_number(v, "train.test_acc", &acc, NULL), 0);
    cr_expect(acc > 0.9, "test accuracy %g", acc);
    qd_json_value_free(v);
    rm_tmp();
}

/* ---- run directories ---- */

Test(hostile, run_directory_of_another_experiment_is_refused_untouched, .timeout = 120)
{
    make_tmp();
    char run[1024];
    S(run, "%s/run", g_tmp);
    tiny_run(run);
    const char *names[] = {"manifest.yaml", "overrides.txt", "log.txt", "metrics.csv",
                           "result.json", "synthetic_images.npy", "checkpoint.qdc"};
    enum { N = sizeof names / sizeof *names };
    char *before[N];
    size_t len_before[N];
    for (size_t i = 0; i < N; ++i)
        before[i] = slurp_n(P("%s/%s", run, names[i]), &len_before[i]);
    char list_before[4096], list_after[4096];
    listing(run, list_before, sizeof list_before);

    struct {
        const char *what, *ovr, *why;
    } cases[] = {
        {"seed", "seed=4", "'seed' is '3' in its manifest.yaml, '4' here"},
        {"layer", "model.layers.c1.out_channels=5",
         "'model.layers.0.out_channels' is '4' in its manifest.yaml, '5' here"},
        {"new-key", "distill.lr_max=2",
         "'distill.lr_max' is absent in its manifest.yaml, '2' here"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; ++c) {
        char *err;
        int rc = qd(NULL, &err,
                    "run tests/cli/manifests/tiny-distill.yaml distill.iterations=4 "
                    "distill.validate_every=0 evaluate.models=1 evaluate.baselines=false %s "
                    "--out '%s'", cases[c].ovr, run);
        expect_one_error(cases[c].what, rc, err, 2, run, "already holds a different experiment");
        cr_expect(strstr(err, cases[c].why), "%s: '%s' not in: %s", cases[c].what,
                  cases[c].why, err);
        free(err);
    }
    /* `train` into it is another experiment too */
    char *err;
    int rc = qd(NULL, &err, "train tests/cli/manifests/tiny-quantum.yaml --out '%s'", run);
    expect_one_error("train", rc, err, 2, run, "already holds a different experiment");
    free(err);
    for (size_t i = 0; i < N; ++i) {
        size_t len;
        char *now = slurp_n(P("%s/%s", run, names[i]), &len);
        cr_expect(len == len_before[i] && memcmp(now, before[i], len) == 0, "%s changed",
                  names[i]);
        free(now);
        free(before[i]);
    }
    listing(run, list_after, sizeof list_after);
    cr_expect_str_eq(list_after, list_before);

    /* results without a manifest: not a run directory, not overwritten */
    char foreign[1024];
    S(foreign, "%s/foreign", g_tmp);
    sh("mkdir -p '%s' && echo '{\"mine\": 1}' > '%s/result.json'", foreign, foreign);
    rc = qd(NULL, &err, "train tests/cli/manifests/tiny-quantum.yaml --out '%s'", foreign);
    expect_one_error("foreign", rc, err, 2, foreign, "holds results but no manifest.yaml");
    free(err);
    char *kept = slurp(P("%s/result.json", foreign));
    cr_expect_str_eq(kept, "{\"mine\": 1}\n");
    free(kept);
    rm_tmp();
}

/* ---- numerical guards ---- */

/* The NaN-injecting observable (fixtures/fx_nan_obs.c) alone in a plugin
 * directory; a manifest using it on a tiny quantum model. */
static void nan_setup(void)
{
    sh("mkdir -p '%s/nanplug' && cp '%s/tests/cli/fx_nan_obs.so' '%s/nanplug/'", g_tmp,
       builddir(), g_tmp);
    put_text(P("%s/nan.yaml", g_tmp),
             "name: nan\nseed: 5\nthreads: 1\n"
             "dataset: {plugin: synthetic, classes: 3, train_size: 120, test_size: 60,\n"
             "          height: 6, width: 6, validation: 30}\n"
             "model:\n"
             "  layers:\n"
             "    - {type: flatten}\n"
             "    - {name: f, type: linear, out: 16}\n"
             "    - {name: q, type: quantum, wires: 4,\n"
             "       encoder: {plugin: amplitude}, ansatz: {plugin: strongly_entangling, layers: 1},\n"
             "       observable: {plugin: fx_nan_z}, simulator: {plugin: statevector}}\n"
             "    - {name: qh, type: linear, out: 3}\n"
             "train: {optimizer: adam, lr: 0.01, epochs: 2, batch_size: 20}\n"
             "distill: {plugin: performance_matching, images_per_class: 1, steps: 2, epochs: 1,\n"
             "          batch_size: 30, iterations: 40, checkpoint_every: 1}\n"
             "evaluate: {models: 1, baselines: false, lr_grid: [0.1]}\n");
}

static int nan_cmd(const char *cmd, long nan_after, const char *out, char **err)
{
    return qd(NULL, err,
              "--plugin-path '%s/nanplug' %s '%s/nan.yaml' model.layers.q.observable.nan_after=%ld "
              "--out '%s'", g_tmp, cmd, g_tmp, nan_after, out);
}

Test(hostile, nan_gradient_in_training_names_the_layer, .timeout = 120)
{
    make_tmp();
    nan_setup();
    char *err;
    /* without the fault the model trains: the fixture itself is sound */
    int rc = nan_cmd("train", -1, P("%s/clean", g_tmp), &err);
    cr_assert_eq(rc, 0, "%s", err);
    free(err);
    /* the loss stays finite; the gradient check names the block */
    char out[1024];
    S(out, "%s/t", g_tmp);
    rc = nan_cmd("train", 3, out, &err);
    expect_one_error("train-nan", rc, err, 1, "non-finite gradient",
                     "non-finite gradient of 'observable' in layer 'q' (entry 0) at epoch 1, "
                     "batch 4");
    free(err);
    expect_log_has("train-nan", out, "training failed: train: non-finite gradient of 'observable'");
    expect_no_outputs("train-nan", out);
    rm_tmp();
}

Test(hostile, nan_gradient_in_distillation_names_the_layer, .timeout = 120)
{
    make_tmp();
    nan_setup();
    char *err;
    int rc = nan_cmd("run", -1, P("%s/clean", g_tmp), &err);
    cr_assert_eq(rc, 0, "%s", err);
    free(err);
    /* in the first inner step of the first iteration: nothing to keep */
    char out[1024];
    S(out, "%s/d0", g_tmp);
    rc = nan_cmd("run", 0, out, &err);
    expect_one_error("distill-nan-0", rc, err, 1, "is nan",
                     "the gradient of 'observable' of layer 'q' (entry 0) is nan");
    cr_expect(strstr(err, "iteration 0 (no checkpoint was written yet)"), "%s", err);
    free(err);
    cr_expect(!exists(out, "checkpoint.qdc") && !exists(out, "result.json") &&
              !exists(out, "synthetic_images.npy"));
    /* later (forward or second-order products, depending on where the
     * fault lands): the layer is named and the last checkpoint survives */
    for (long after = 9; after <= 30; after += after < 13 ? 2 : 17) {
        S(out, "%s/d%ld", g_tmp, after);
        rc = nan_cmd("run", after, out, &err);
        expect_one_error("distill-nan-late", rc, err, 1, "is nan",
                         "'observable' of layer 'q' (entry 0) is nan");
        cr_expect(strstr(err, "the last good checkpoint, iteration "), "%s", err);
        free(err);
        expect_log_has("distill-nan-late", out, "run failed: ");
        cr_expect(exists(out, "checkpoint.qdc") && !exists(out, "result.json"));
    }
    rm_tmp();
}

Test(hostile, diverging_training_is_named_and_clip_grad_prevents_it, .timeout = 120)
{
    make_tmp();
    char *err;
    char out[1024];
    S(out, "%s/huge-lr", g_tmp);
    int rc = qd(NULL, &err, "train tests/cli/manifests/tiny-quantum.yaml train.optimizer=sgd "
                "train.lr=1e6 --out '%s'", out);
    expect_one_error("huge-lr", rc, err, 1, "non-finite loss", "layer '");
    free(err);
    cr_expect(!exists(out, "result.json"));
    /* the same run with the gradient norm clipped finishes with finite
     * numbers: clipping bounds every SGD step */
    S(out, "%s/clipped", g_tmp);
    rc = qd(NULL, &err, "train tests/cli/manifests/tiny-quantum.yaml train.optimizer=sgd "
            "train.lr=1e6 train.clip_grad=1e-6 --out '%s'", out);
    cr_assert_eq(rc, 0, "%s", err);
    free(err);
    qd_json_value *v = NULL;
    cr_assert_eq(qd_json_read_file(P("%s/result.json", out), &v, NULL), 0);
    double acc = NAN;
    cr_expect_eq(qd_json_get_number(v, "train.test_acc", &acc, NULL), 0);
    cr_expect(acc >= 0 && acc <= 1, "%g", acc);
    qd_json_value_free(v);
    rm_tmp();
}

Test(hostile, all_zero_amplitude_embedding_is_an_error_not_nan, .timeout = 120)
{
    make_tmp();
    write_mnist(P("%s/data", g_tmp));
    /* training image 5 all black; mean 0 keeps it all zero after scaling */
    size_t len;
    uint8_t *b = idx_images(0x803, 80, 80, 0, &len);
    memset(b + 16 + 5 * 64, 0, 64);
    write_file(P("%s/data/train-images-idx3-ubyte", g_tmp), b, len);
    free(b);
    put_text(P("%s/z.yaml", g_tmp),
             "name: zero\nseed: 1\nthreads: 1\n"
             "dataset: {plugin: mnist, path: data, mean: 0, std: 1}\n"
             "model:\n"
             "  layers:\n"
             "    - {type: flatten}\n"
             "    - {name: q, type: quantum, wires: 6, encoder: {plugin: amplitude},\n"
             "       ansatz: {plugin: strongly_entangling, layers: 1},\n"
             "       observable: {plugin: pauli_z}, simulator: {plugin: statevector}}\n"
             "    - {name: out, type: linear, out: 10}\n"
             "train: {optimizer: sgd, lr: 0.01, epochs: 1, batch_size: 80}\n");
    char out[1024];
    S(out, "%s/z", g_tmp);
    char *err;
    int rc = qd(NULL, &err, "train '%s/z.yaml' --out '%s'", g_tmp, out);
    expect_one_error("zero", rc, err, 1, "zero norm", "layer 'q'");
    cr_expect(strstr(err, "amplitude embedding of sample"), "%s", err);
    free(err);
    expect_no_outputs("zero", out);
    rm_tmp();
}

/* Learned step sizes that blow the replayed training up: named, not a
 * made-up accuracy. */
Test(hostile, evaluate_with_exploding_learned_steps_names_the_layer, .timeout = 120)
{
    make_tmp();
    char run[1024];
    S(run, "%s/run", g_tmp);
    tiny_run(run);
    double lrs[4] = {1e300, 1e300, 1e300, 1e300};
    size_t shape[1] = {4};
    qd_error e;
    cr_assert_eq(qd_npy_write(P("%s/synthetic_lrs.npy", run), QD_NPY_F8, shape, 1, lrs, &e), 0,
                 "%s", e.msg);
    char *err;
    int rc = qd(NULL, &err, "evaluate '%s' evaluate.models=2", run);
    expect_one_error("exploding-steps", rc, err, 1, "not finite", "layer '");
    free(err);
    cr_expect(!exists(run, "evaluation-models-2.json"));
    rm_tmp();
}

/* The accuracy of a model with a non-finite parameter is refused: argmax
 * over NaN logits would silently pick class 0. */
Test(hostile, accuracy_refuses_non_finite_logits)
{
    qd_config *cfg;
    qd_error e;
    const char *yaml = "layers: [{type: flatten}, {name: out, type: linear, out: 3}]\n";
    cr_assert_eq(qd_config_load_string(yaml, strlen(yaml), "m.yaml", NULL, &cfg, &e), QD_OK);
    qd_model_opts o = {.channels = 1, .height = 2, .width = 2, .classes = 3, .seed = 1,
                       .threads = 1};
    qd_model *m;
    cr_assert_eq(qd_model_create(qd_config_root(cfg), NULL, &o, &m, &e), QD_OK, "%s", e.msg);
    double *w = calloc(qd_model_n_params(m), sizeof *w);
    cr_assert(w);
    qd_rng rng;
    qd_rng_seed(&rng, 1, 1);
    cr_assert_eq(qd_model_init_params(m, &rng, w, &e), QD_OK);
    qd_dataset d;
    cr_assert_eq(qd_dataset_alloc(&d, 5, 1, 2, 2, 3, &e), QD_OK);
    for (size_t i = 0; i < 20; ++i)
        d.images[i] = (double)(i % 7) - 3.0;
    for (size_t i = 0; i < 5; ++i)
        d.labels[i] = (int32_t)(i % 3);
    double acc = -1;
    cr_expect_eq(qd_model_accuracy(m, w, &d, 2, &acc, &e), QD_OK, "%s", e.msg);
    cr_expect(acc >= 0 && acc <= 1);
    w[qd_model_block(m, 0)->offset + 1] = NAN;
    acc = -1;
    cr_expect_eq(qd_model_accuracy(m, w, &d, 2, &acc, &e), QD_ERR_NUMERIC);
    cr_expect(strstr(e.msg, "logits of sample 0 are not finite") &&
                  strstr(e.msg, "of layer 'out' (entry 1) is nan"),
              "%s", e.msg);
    cr_expect_eq(acc, -1, "no accuracy is reported");
    qd_dataset_free(&d);
    free(w);
    qd_model_destroy(m);
    qd_config_destroy(cfg);
}
