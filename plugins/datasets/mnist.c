/* Dataset plugin `mnist`: MNIST and Fashion-MNIST from their IDX files, raw
 * or gzipped (zlib's gzread reads both).
 *
 * Files are untrusted input: every header field is checked before anything
 * is allocated from it. A raw file's payload size is checked against the
 * file size up front; a gzip stream has no trustworthy size, so its payload
 * is read incrementally into a buffer that only grows as data actually
 * arrives, under a hard cap. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "qdistill/plugin.h"

#define IDX_MAGIC_IMAGES 0x00000803u   /* unsigned byte, 3 dimensions */
#define IDX_MAGIC_LABELS 0x00000801u   /* unsigned byte, 1 dimension */
#define MNIST_CLASSES 10
/* Limits against hostile headers; generous for any MNIST-like set
 * (MNIST-8M has 8.1e6 images; 2^30 pixel bytes become 8 GiB of doubles). */
#define MAX_SAMPLES (1u << 24)
#define MAX_SIDE 4096u
#define MAX_PIXEL_BYTES ((uint64_t)1 << 30)
#define GZ_FIRST_CHUNK ((size_t)1 << 22)
#define GZ_READ_CHUNK ((size_t)1 << 24)

enum { TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS, N_FILES };
static const char *const file_keys[N_FILES] = {
    "train_images", "train_labels", "test_images", "test_labels"};
static const char *const file_what[N_FILES] = {
    "training images", "training labels", "test images", "test labels"};

typedef struct mnist {
    const qd_host *host;
    char *dir;                 /* resolved `path` */
    char *names[N_FILES];      /* file names as configured */
    double mean, std;
} mnist;

/* An open IDX file. */
typedef struct idx {
    gzFile gz;
    char *path;                /* the file actually opened */
    off_t size;                /* on-disk size */
    int direct;                /* 1: raw file, 0: gzip stream */
} idx;

static void idx_close(idx *f)
{
    if (f->gz)
        gzclose_r(f->gz);
    free(f->path);
    memset(f, 0, sizeof *f);
}

/* dir/name (name alone when absolute), minus `strip` trailing characters,
 * with room for a ".gz" suffix. */
static char *join(const char *dir, const char *name, size_t strip)
{
    size_t dl = name[0] == '/' ? 0 : strlen(dir), nl = strlen(name) - strip;
    char *s = malloc(dl + nl + 5);   /* '/' + ".gz" + NUL */
    if (!s)
        return NULL;
    memcpy(s, dir, dl);
    if (dl)
        s[dl++] = '/';
    memcpy(s + dl, name, nl);
    s[dl + nl] = '\0';
    return s;
}

/* Open `name` in the data directory, or its gzipped / raw twin:
 * "x" tries "x" then "x.gz"; "x.gz" tries "x.gz" then "x". */
static int idx_open(mnist *m, int which, idx *f)
{
    memset(f, 0, sizeof *f);
    const char *name = m->names[which];
    size_t nl = strlen(name);
    int gz_name = nl > 3 && strcmp(name + nl - 3, ".gz") == 0;
    char *cand[2] = {join(m->dir, name, 0), join(m->dir, name, gz_name ? 3 : 0)};
    if (!cand[0] || !cand[1]) {
        free(cand[0]);
        free(cand[1]);
        return m->host->error(m->host, QD_ERR_NOMEM, "out of memory");
    }
    if (!gz_name)
        strcat(cand[1], ".gz");
    int rc = QD_OK;
    for (int i = 0; i < 2; ++i) {
        int fd = open(cand[i], O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            if (errno == ENOENT)
                continue;
            rc = m->host->error(m->host, QD_ERR_IO, "cannot open the %s '%s': %s",
                                file_what[which], cand[i], strerror(errno));
            goto out;
        }
        struct stat st;
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
            close(fd);
            rc = m->host->error(m->host, QD_ERR_IO, "the %s '%s' is not a regular file",
                                file_what[which], cand[i]);
            goto out;
        }
        f->gz = gzdopen(fd, "rb");
        if (!f->gz) {
            close(fd);
            rc = m->host->error(m->host, QD_ERR_NOMEM, "out of memory opening '%s'", cand[i]);
            goto out;
        }
        gzbuffer(f->gz, 1u << 17);
        f->path = cand[i];
        cand[i] = NULL;
        f->size = st.st_size;
        goto out;
    }
    struct stat dst;
    if (stat(m->dir, &dst) != 0 || !S_ISDIR(dst.st_mode))
        rc = m->host->error(m->host, QD_ERR_IO,
                            "%s not found: the data directory '%s' (key 'path') does not "
                            "exist; tried '%s' and '%s'", file_what[which], m->dir,
                            cand[0], cand[1]);
    else
        rc = m->host->error(m->host, QD_ERR_IO,
                        "%s not found (set by '%s'): tried '%s' and '%s'",
                        file_what[which], file_keys[which], cand[0], cand[1]);
out:
    free(cand[0]);
    free(cand[1]);
    return rc;
}

/* gzread into buf until len bytes or the end; returns the count, or -1 on a
 * decompression / read error (message via gz_problem). */
static long long gz_read_full(gzFile gz, unsigned char *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        size_t want = len - got;
        if (want > GZ_READ_CHUNK)
            want = GZ_READ_CHUNK;
        int r = gzread(gz, buf + got, (unsigned)want);
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (long long)got;
}

/* Report a gzread failure: a system read error (QD_ERR_IO) or corrupt
 * compressed data (QD_ERR_FORMAT). */
static int gz_problem(mnist *m, const idx *f)
{
    int errnum = Z_OK;
    const char *zmsg = gzerror(f->gz, &errnum);
    if (errnum == Z_ERRNO)
        return m->host->error(m->host, QD_ERR_IO, "read error in '%s': %s", f->path,
                              strerror(errno));
    return m->host->error(m->host, QD_ERR_FORMAT, "'%s': corrupt gzip data (%s)", f->path,
                          zmsg && *zmsg ? zmsg : "unknown zlib error");
}

/* A short read of a gzip stream ends either cleanly (the file really is too
 * short) or with zlib's "unexpected end of file" (the .gz was cut off). */
static const char *gz_cut_note(const idx *f)
{
    int errnum = Z_OK;
    gzerror(f->gz, &errnum);
    return (!f->direct && errnum == Z_BUF_ERROR) ? " (the gzip stream is cut off)" : "";
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Read and check a header: magic, then ndim 32-bit big-endian sizes. */
static int read_header(mnist *m, idx *f, uint32_t magic, int ndim, uint32_t *dims)
{
    unsigned char h[16];
    size_t len = 4 + 4 * (size_t)ndim;
    long long got = gz_read_full(f->gz, h, len);
    if (got < 0)
        return gz_problem(m, f);
    f->direct = gzdirect(f->gz);
    if ((size_t)got < len)
        return m->host->error(m->host, QD_ERR_FORMAT,
                              "'%s': truncated header: expected %zu bytes, got %lld%s",
                              f->path, len, got, gz_cut_note(f));
    uint32_t found = be32(h);
    if (found != magic)
        return m->host->error(m->host, QD_ERR_FORMAT,
                              "'%s': bad magic number 0x%08x, expected 0x%08x (IDX %s)%s",
                              f->path, found, magic,
                              magic == IDX_MAGIC_IMAGES ? "images: unsigned bytes, 3 dimensions"
                                                        : "labels: unsigned bytes, 1 dimension",
                              (found & 0xffff0000u) == 0x1f8b0000u
                                  ? "; the file looks gzipped twice" : "");
    for (int i = 0; i < ndim; ++i)
        dims[i] = be32(h + 4 + 4 * i);
    return QD_OK;
}

/* Count (up to a bound) the bytes left after the payload, to report them;
 * a corrupt tail or bad CRC surfaces here as a gzread error. */
static int check_end(mnist *m, idx *f, uint64_t payload, const char *what)
{
    unsigned char buf[4096];
    uint64_t extra = 0;
    for (;;) {
        int r = gzread(f->gz, buf, sizeof buf);
        if (r < 0)
            return gz_problem(m, f);
        if (r == 0)
            break;
        extra += (uint64_t)r;
        if (extra >= ((uint64_t)1 << 20))
            break;
    }
    if (extra)
        return m->host->error(m->host, QD_ERR_FORMAT,
                              "'%s': %s%llu unexpected bytes after the %llu bytes of %s "
                              "(the file is larger than its header says)",
                              f->path, extra >= ((uint64_t)1 << 20) ? "at least " : "",
                              (unsigned long long)extra, (unsigned long long)payload, what);
    return QD_OK;
}

/* Read exactly `len` payload bytes (header already consumed) and make sure
 * nothing follows. Raw files are checked against their size first; gzip
 * streams grow the buffer only as decompressed data arrives. */
static int read_payload(mnist *m, idx *f, size_t header, size_t len, const char *what,
                        unsigned char **out)
{
    *out = NULL;
    if (f->direct) {
        uint64_t have = f->size > (off_t)header ? (uint64_t)(f->size - (off_t)header) : 0;
        if (have < len)
            return m->host->error(m->host, QD_ERR_FORMAT,
                                  "'%s': truncated: expected %zu bytes of %s after the "
                                  "%zu-byte header, got %llu", f->path, len, what, header,
                                  (unsigned long long)have);
        if (have > len)
            return m->host->error(m->host, QD_ERR_FORMAT,
                                  "'%s': %llu unexpected bytes after the %zu bytes of %s "
                                  "(the file is larger than its header says)", f->path,
                                  (unsigned long long)(have - len), len, what);
    }
    size_t cap = f->direct ? len : (len < GZ_FIRST_CHUNK ? len : GZ_FIRST_CHUNK);
    unsigned char *buf = malloc(cap ? cap : 1);
    if (!buf)
        return m->host->error(m->host, QD_ERR_NOMEM, "out of memory reading '%s'", f->path);
    size_t got = 0;
    while (got < len) {
        if (got == cap) {
            size_t nc = cap > len / 2 ? len : 2 * cap;
            unsigned char *nb = realloc(buf, nc);
            if (!nb) {
                free(buf);
                return m->host->error(m->host, QD_ERR_NOMEM, "out of memory reading '%s'",
                                      f->path);
            }
            buf = nb;
            cap = nc;
        }
        size_t want = cap - got;
        long long r = gz_read_full(f->gz, buf + got, want);
        if (r < 0) {
            free(buf);
            return gz_problem(m, f);
        }
        got += (size_t)r;
        if ((size_t)r < want)   /* end of data */
            break;
    }
    if (got < len) {
        const char *note = gz_cut_note(f);
        free(buf);
        return m->host->error(m->host, QD_ERR_FORMAT,
                              "'%s': truncated: expected %zu bytes of %s after the %zu-byte "
                              "header, got %zu%s", f->path, len, what, header, got, note);
    }
    int rc = check_end(m, f, len, what);
    if (rc) {
        free(buf);
        return rc;
    }
    *out = buf;
    return QD_OK;
}

static int load(void *self, qd_split split, qd_dataset *out)
{
    mnist *m = self;
    const qd_host *h = m->host;
    memset(out, 0, sizeof *out);
    int fi = split == QD_SPLIT_TRAIN ? TRAIN_IMAGES : TEST_IMAGES;
    int fl = split == QD_SPLIT_TRAIN ? TRAIN_LABELS : TEST_LABELS;
    if (split != QD_SPLIT_TRAIN && split != QD_SPLIT_TEST)
        return h->error(h, QD_ERR_INVALID, "unknown split %d", (int)split);

    idx im = {0}, lb = {0};
    unsigned char *pix = NULL, *lab = NULL;
    uint32_t d[3] = {0, 0, 0}, nl = 0;
    int rc;
    if ((rc = idx_open(m, fi, &im)) || (rc = idx_open(m, fl, &lb)))
        goto out;
    if ((rc = read_header(m, &im, IDX_MAGIC_IMAGES, 3, d)) ||
        (rc = read_header(m, &lb, IDX_MAGIC_LABELS, 1, &nl)))
        goto out;

    /* Header sanity before any allocation sized by it. */
    if (d[0] == 0 || d[0] > MAX_SAMPLES) {
        rc = h->error(h, QD_ERR_FORMAT, "'%s': header claims %u images (expected 1..%u)",
                      im.path, d[0], MAX_SAMPLES);
        goto out;
    }
    if (d[1] == 0 || d[2] == 0 || d[1] > MAX_SIDE || d[2] > MAX_SIDE) {
        rc = h->error(h, QD_ERR_FORMAT,
                      "'%s': header claims images of %ux%u pixels (each side must be 1..%u)",
                      im.path, d[1], d[2], MAX_SIDE);
        goto out;
    }
    uint64_t pixels = (uint64_t)d[0] * d[1] * d[2];
    if (pixels > MAX_PIXEL_BYTES) {
        rc = h->error(h, QD_ERR_FORMAT,
                      "'%s': header claims %u images of %ux%u = %llu pixel bytes, above the "
                      "%llu-byte limit", im.path, d[0], d[1], d[2],
                      (unsigned long long)pixels, (unsigned long long)MAX_PIXEL_BYTES);
        goto out;
    }
    if (nl != d[0]) {
        rc = h->error(h, QD_ERR_FORMAT, "'%s' holds %u images but '%s' holds %u labels",
                      im.path, d[0], lb.path, nl);
        goto out;
    }

    /* Labels first: small, and a bad label file fails before the big read. */
    if ((rc = read_payload(m, &lb, 8, nl, "labels", &lab)))
        goto out;
    for (uint32_t i = 0; i < nl; ++i)
        if (lab[i] >= MNIST_CLASSES) {
            rc = h->error(h, QD_ERR_FORMAT, "'%s': label %u of sample %u is outside 0..%d",
                          lb.path, lab[i], i, MNIST_CLASSES - 1);
            goto out;
        }
    if ((rc = read_payload(m, &im, 16, (size_t)pixels, "pixels", &pix)))
        goto out;

    qd_error e;
    if (qd_dataset_alloc(out, d[0], 1, d[1], d[2], MNIST_CLASSES, &e) != QD_OK) {
        rc = h->error(h, e.code, "%s", e.msg);
        goto out;
    }
    /* x' = (v/255 - mean)/std through a 256-entry table: one pass, and every
     * occurrence of a byte value maps to the identical double. */
    double lut[256];
    for (int v = 0; v < 256; ++v)
        lut[v] = ((double)v / 255.0 - m->mean) / m->std;
    /* Parallel only to spread the first-touch page faults of the big
     * output block; the result does not depend on the thread count. */
    long long np = (long long)pixels;
    int nt = h->threads > 0 ? h->threads : 1;
#pragma omp parallel for schedule(static) num_threads(nt) if (np > (1 << 20))
    for (long long j = 0; j < np; ++j)
        out->images[j] = lut[pix[j]];
    for (uint32_t i = 0; i < nl; ++i)
        out->labels[i] = lab[i];
    snprintf(out->name, sizeof out->name, "mnist/%s", split == QD_SPLIT_TRAIN ? "train" : "test");
    h->log(h, QD_LOG_DEBUG, "loaded %u %s samples of %ux%u from '%s'", d[0],
           split == QD_SPLIT_TRAIN ? "training" : "test", d[1], d[2], im.path);
out:
    free(pix);
    free(lab);
    idx_close(&im);
    idx_close(&lb);
    return rc;
}

static void destroy(void *self)
{
    mnist *m = self;
    if (!m)
        return;
    free(m->dir);
    for (int i = 0; i < N_FILES; ++i)
        free(m->names[i]);
    free(m);
}

static int create(const qd_host *h, void **self)
{
    *self = NULL;
    mnist *m = calloc(1, sizeof *m);
    if (!m)
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    m->host = h;
    int rc = QD_OK;
    const char *path = h->get_string(h, "path");
    if (!path || !*path) {
        rc = h->node_error(h, qd_node_get(h->config, "path"), QD_ERR_INVALID,
                           "'path' must name the directory holding the IDX files");
        goto fail;
    }
    m->dir = h->resolve_path ? h->resolve_path(h, path) : strdup(path);
    for (int i = 0; i < N_FILES && m->dir; ++i) {
        const char *n = h->get_string(h, file_keys[i]);
        if (!n || !*n) {
            rc = h->node_error(h, qd_node_get(h->config, file_keys[i]), QD_ERR_INVALID,
                               "'%s' must be a file name", file_keys[i]);
            goto fail;
        }
        if (!(m->names[i] = strdup(n))) {
            rc = h->error(h, QD_ERR_NOMEM, "out of memory");
            goto fail;
        }
    }
    if (!m->dir) {
        rc = h->error(h, QD_ERR_NOMEM, "out of memory");
        goto fail;
    }
    m->mean = h->get_double(h, "mean");
    m->std = h->get_double(h, "std");
    if (!isfinite(m->mean)) {
        rc = h->node_error(h, qd_node_get(h->config, "mean"), QD_ERR_INVALID,
                           "'mean' must be a finite number");
        goto fail;
    }
    if (!(m->std > 0.0 && isfinite(m->std))) {
        rc = h->node_error(h, qd_node_get(h->config, "std"), QD_ERR_INVALID,
                           "'std' must be a finite number > 0, got %g", m->std);
        goto fail;
    }
    *self = m;
    return QD_OK;
fail:
    destroy(m);
    return rc;
}

static const qd_param params[] = {
    {"path", QD_PARAM_STRING, QD_PARAM_REQUIRED, NULL, 0, 0, NULL, 0, NULL,
     "directory holding the four IDX files (relative to the manifest)"},
    {"train_images", QD_PARAM_STRING, 0, "train-images-idx3-ubyte", 0, 0, NULL, 0, NULL,
     "training images file (the .gz twin is tried too)"},
    {"train_labels", QD_PARAM_STRING, 0, "train-labels-idx1-ubyte", 0, 0, NULL, 0, NULL,
     "training labels file (the .gz twin is tried too)"},
    {"test_images", QD_PARAM_STRING, 0, "t10k-images-idx3-ubyte", 0, 0, NULL, 0, NULL,
     "test images file (the .gz twin is tried too)"},
    {"test_labels", QD_PARAM_STRING, 0, "t10k-labels-idx1-ubyte", 0, 0, NULL, 0, NULL,
     "test labels file (the .gz twin is tried too)"},
    {"mean", QD_PARAM_DOUBLE, 0, "0.1307", 0, 0, NULL, 0, NULL,
     "normalisation x' = (x/255 - mean)/std (Fashion-MNIST: 0.2860)"},
    {"std", QD_PARAM_DOUBLE, QD_PARAM_HAS_MIN, "0.3081", 1e-12, 0, NULL, 0, NULL,
     "normalisation x' = (x/255 - mean)/std (Fashion-MNIST: 0.3530)"},
    {NULL, 0, 0, NULL, 0, 0, NULL, 0, NULL, NULL},
};

static const qd_dataset_vt vtable = {
    .struct_size = sizeof(qd_dataset_vt),
    .create = create,
    .destroy = destroy,
    .load = load,
};

static const qd_plugin_desc desc = QD_PLUGIN_DESC_INIT(
    QD_KIND_DATASET, "mnist", "1.0.0",
    "MNIST / Fashion-MNIST from IDX files (raw or .gz), 1x28x28, 10 classes",
    params, &vtable);

static const qd_plugin_desc *const descs[] = {&desc, NULL};

QD_PLUGIN_EXPORT const qd_plugin_desc *const *qd_plugin_entry(void)
{
    return descs;
}
