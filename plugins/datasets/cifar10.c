/* Dataset plugin `cifar10`: the CIFAR-10 "binary version" (data_batch_1.bin
 * ... data_batch_5.bin, test_batch.bin). Each record is one label byte and
 * 3072 pixel bytes, channel-major (1024 R, 1024 G, 1024 B, rows of 32), which
 * is already NCHW. Every file's size is checked against the expected record
 * count before anything is allocated. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qdistill/plugin.h"

#define CIFAR_SIDE 32
#define CIFAR_CH 3
#define CIFAR_PIXELS (CIFAR_CH * CIFAR_SIDE * CIFAR_SIDE)   /* 3072 */
#define CIFAR_RECORD (1 + CIFAR_PIXELS)                      /* 3073 */
#define CIFAR_CLASSES 10
#define MAX_RECORDS 1000000   /* per file; keeps records * 3073 far from overflow */
#define MAX_FILES 64

typedef struct cifar {
    const qd_host *host;
    char *dir;
    char **train;              /* train batch file names */
    size_t n_train;
    char *test;
    size_t records;            /* records per file */
    double mean[CIFAR_CH], std[CIFAR_CH];
} cifar;

/* dir/name, or name alone when absolute. */
static char *join(const char *dir, const char *name)
{
    if (name[0] == '/')
        return strdup(name);
    size_t len = strlen(dir) + strlen(name) + 2;
    char *s = malloc(len);
    if (s)
        snprintf(s, len, "%s/%s", dir, name);
    return s;
}

/* Open every file of the split and check its size; on success files[i] and
 * paths[i] are open/allocated for i < n. */
static int open_all(cifar *c, char **names, size_t n, FILE **files, char **paths)
{
    const qd_host *h = c->host;
    for (size_t i = 0; i < n; ++i) {
        if (!(paths[i] = join(c->dir, names[i])))
            return h->error(h, QD_ERR_NOMEM, "out of memory");
        files[i] = fopen(paths[i], "rb");
        if (!files[i]) {
            struct stat dst;
            if (errno == ENOENT && (stat(c->dir, &dst) != 0 || !S_ISDIR(dst.st_mode)))
                return h->error(h, QD_ERR_IO,
                                "cannot open '%s': the data directory '%s' (key 'path') "
                                "does not exist", paths[i], c->dir);
            return h->error(h, QD_ERR_IO, "cannot open '%s': %s", paths[i], strerror(errno));
        }
        struct stat st;
        if (fstat(fileno(files[i]), &st) != 0 || !S_ISREG(st.st_mode))
            return h->error(h, QD_ERR_IO, "'%s' is not a regular file", paths[i]);
        unsigned long long size = (unsigned long long)st.st_size;
        unsigned long long want = (unsigned long long)c->records * CIFAR_RECORD;
        if (size % CIFAR_RECORD != 0)
            return h->error(h, QD_ERR_FORMAT,
                            "'%s': size %llu bytes is not a multiple of the %d-byte record "
                            "(truncated, or not the CIFAR-10 binary version)",
                            paths[i], size, CIFAR_RECORD);
        if (size != want)
            return h->error(h, QD_ERR_FORMAT,
                            "'%s': holds %llu records, expected %zu (%s; key 'records')",
                            paths[i], size / CIFAR_RECORD, c->records,
                            size < want ? "truncated" : "too large");
    }
    return QD_OK;
}

static int load(void *self, qd_split split, qd_dataset *out)
{
    cifar *c = self;
    const qd_host *h = c->host;
    memset(out, 0, sizeof *out);
    if (split != QD_SPLIT_TRAIN && split != QD_SPLIT_TEST)
        return h->error(h, QD_ERR_INVALID, "unknown split %d", (int)split);
    char **names = split == QD_SPLIT_TRAIN ? c->train : &c->test;
    size_t nf = split == QD_SPLIT_TRAIN ? c->n_train : 1;
    FILE *files[MAX_FILES] = {0};
    char *paths[MAX_FILES] = {0};
    unsigned char *buf = NULL;
    int rc = open_all(c, names, nf, files, paths);
    if (rc)
        goto out;

    qd_error e;
    if (qd_dataset_alloc(out, nf * c->records, CIFAR_CH, CIFAR_SIDE, CIFAR_SIDE,
                         CIFAR_CLASSES, &e) != QD_OK) {
        rc = h->error(h, e.code, "%s", e.msg);
        goto out;
    }
    size_t bytes = c->records * CIFAR_RECORD;
    if (!(buf = malloc(bytes))) {
        rc = h->error(h, QD_ERR_NOMEM, "out of memory reading '%s'", paths[0]);
        goto out;
    }
    /* Per-channel table: x' = (v/255 - mean_c)/std_c. */
    double lut[CIFAR_CH][256];
    for (int ch = 0; ch < CIFAR_CH; ++ch)
        for (int v = 0; v < 256; ++v)
            lut[ch][v] = ((double)v / 255.0 - c->mean[ch]) / c->std[ch];
    size_t s = 0;
    for (size_t f = 0; f < nf; ++f) {
        size_t got = fread(buf, 1, bytes, files[f]);
        if (got != bytes) {
            rc = ferror(files[f])
                     ? h->error(h, QD_ERR_IO, "read error in '%s': %s", paths[f], strerror(errno))
                     : h->error(h, QD_ERR_FORMAT, "'%s': truncated while reading: expected "
                                "%zu bytes, got %zu", paths[f], bytes, got);
            goto out;
        }
        for (size_t r = 0; r < c->records; ++r)
            if (buf[r * CIFAR_RECORD] >= CIFAR_CLASSES) {
                rc = h->error(h, QD_ERR_FORMAT, "'%s': label %u of record %zu is outside 0..%d",
                              paths[f], buf[r * CIFAR_RECORD], r, CIFAR_CLASSES - 1);
                goto out;
            }
        /* Parallel only to spread the first-touch page faults of the big
         * output block; the result does not depend on the thread count. */
        long long nr = (long long)c->records;
        int nt = h->threads > 0 ? h->threads : 1;
#pragma omp parallel for schedule(static) num_threads(nt) if (nr > 256)
        for (long long r = 0; r < nr; ++r) {
            const unsigned char *rec = buf + (size_t)r * CIFAR_RECORD;
            out->labels[s + (size_t)r] = rec[0];
            double *dst = out->images + (s + (size_t)r) * CIFAR_PIXELS;
            for (int ch = 0; ch < CIFAR_CH; ++ch) {
                const unsigned char *src = rec + 1 + ch * CIFAR_SIDE * CIFAR_SIDE;
                for (int j = 0; j < CIFAR_SIDE * CIFAR_SIDE; ++j)
                    dst[ch * CIFAR_SIDE * CIFAR_SIDE + j] = lut[ch][src[j]];
            }
        }
        s += c->records;
    }
    snprintf(out->name, sizeof out->name, "cifar10/%s", split == QD_SPLIT_TRAIN ? "train" : "test");
out:
    if (rc)
        qd_dataset_free(out);
    free(buf);
    for (size_t f = 0; f < nf; ++f) {
        if (files[f])
            fclose(files[f]);
        free(paths[f]);
    }
    return rc;
}

static void destroy(void *self)
{
    cifar *c = self;
    if (!c)
        return;
    for (size_t i = 0; i < c->n_train; ++i)
        free(c->train[i]);
    free(c->train);
    free(c->test);
    free(c->dir);
    free(c);
}

/* Read a list of exactly 3 numbers (mean/std per channel). */
static int read_triple(const qd_host *h, const char *key, double *v, int positive)
{
    const qd_node *n = h->get_node(h, key);
    if (qd_node_kind(n) != QD_NODE_SEQ || qd_node_len(n) != CIFAR_CH)
        return h->node_error(h, n, QD_ERR_INVALID, "'%s' must be a list of 3 numbers (R, G, B)",
                             key);
    for (size_t i = 0; i < CIFAR_CH; ++i) {
        qd_error e;
        const qd_node *x = qd_node_at(n, i);
        if (qd_node_as_double(x, &v[i], &e) != QD_OK || !isfinite(v[i]))
            return h->node_error(h, x, QD_ERR_INVALID, "'%s' entry %zu must be a finite number",
                                 key, i);
        if (positive && !(v[i] > 0.0))
            return h->node_error(h, x, QD_ERR_INVALID, "'%s' entry %zu must be > 0, got %g",
                                 key, i, v[i]);
    }
    return QD_OK;
}

static int create(const qd_host *h, void **self)
{
    *self = NULL;
    cifar *c = calloc(1, sizeof *c);
    if (!c)
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    c->host = h;
    int rc = QD_OK;
    const char *path = h->get_string(h, "path");
    if (!path || !*path) {
        rc = h->node_error(h, qd_node_get(h->config, "path"), QD_ERR_INVALID,
                           "'path' must name the directory holding the .bin batches");
        goto fail;
    }
    const char *test = h->get_string(h, "test_batch");
    if (!test || !*test) {
        rc = h->node_error(h, qd_node_get(h->config, "test_batch"), QD_ERR_INVALID,
                           "'test_batch' must be a file name");
        goto fail;
    }
    c->dir = h->resolve_path ? h->resolve_path(h, path) : strdup(path);
    c->test = strdup(test);
    if (!c->dir || !c->test) {
        rc = h->error(h, QD_ERR_NOMEM, "out of memory");
        goto fail;
    }
    const qd_node *b = h->get_node(h, "batches");
    size_t nb = qd_node_len(b);
    if (qd_node_kind(b) != QD_NODE_SEQ || nb == 0 || nb > MAX_FILES) {
        rc = h->node_error(h, b, QD_ERR_INVALID,
                           "'batches' must be a list of 1..%d training batch file names",
                           MAX_FILES);
        goto fail;
    }
    if (!(c->train = calloc(nb, sizeof *c->train))) {
        rc = h->error(h, QD_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < nb; ++i) {
        const char *s = qd_node_str(qd_node_at(b, i));
        if (!s || !*s) {
            rc = h->node_error(h, qd_node_at(b, i), QD_ERR_INVALID,
                               "'batches' entry %zu must be a file name", i);
            goto fail;
        }
        if (!(c->train[i] = strdup(s))) {
            rc = h->error(h, QD_ERR_NOMEM, "out of memory");
            goto fail;
        }
        c->n_train = i + 1;
    }
    long long rec = h->get_int(h, "records");
    if (rec < 1 || rec > MAX_RECORDS) {
        rc = h->node_error(h, qd_node_get(h->config, "records"), QD_ERR_INVALID,
                           "'records' must be in 1..%d, got %lld", MAX_RECORDS, rec);
        goto fail;
    }
    c->records = (size_t)rec;
    if ((rc = read_triple(h, "mean", c->mean, 0)) || (rc = read_triple(h, "std", c->std, 1)))
        goto fail;
    *self = c;
    return QD_OK;
fail:
    destroy(c);
    return rc;
}

static const qd_param params[] = {
    {"path", QD_PARAM_STRING, QD_PARAM_REQUIRED, NULL, 0, 0, NULL, 0, NULL,
     "directory holding the .bin batches (relative to the manifest)"},
    {"batches", QD_PARAM_LIST, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX,
     "[data_batch_1.bin, data_batch_2.bin, data_batch_3.bin, data_batch_4.bin, "
     "data_batch_5.bin]", 1, MAX_FILES, NULL, QD_PARAM_STRING, NULL,
     "training batch files, in order"},
    {"test_batch", QD_PARAM_STRING, 0, "test_batch.bin", 0, 0, NULL, 0, NULL,
     "test batch file"},
    {"records", QD_PARAM_INT, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "10000", 1, MAX_RECORDS,
     NULL, 0, NULL, "records every batch file must hold (each 1 + 3072 bytes)"},
    {"mean", QD_PARAM_LIST, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "[0.4914, 0.4822, 0.4465]",
     3, 3, NULL, QD_PARAM_DOUBLE, NULL, "per-channel mean (R, G, B): x' = (x/255 - mean)/std"},
    {"std", QD_PARAM_LIST, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "[0.2470, 0.2435, 0.2616]",
     3, 3, NULL, QD_PARAM_DOUBLE, NULL, "per-channel standard deviation (R, G, B)"},
    {NULL, 0, 0, NULL, 0, 0, NULL, 0, NULL, NULL},
};

static const qd_dataset_vt vtable = {
    .struct_size = sizeof(qd_dataset_vt),
    .create = create,
    .destroy = destroy,
    .load = load,
};

static const qd_plugin_desc desc = QD_PLUGIN_DESC_INIT(
    QD_KIND_DATASET, "cifar10", "1.0.0",
    "CIFAR-10 binary batches (.bin), 3x32x32, 10 classes", params, &vtable);

static const qd_plugin_desc *const descs[] = {&desc, NULL};

QD_PLUGIN_EXPORT const qd_plugin_desc *const *qd_plugin_entry(void)
{
    return descs;
}
