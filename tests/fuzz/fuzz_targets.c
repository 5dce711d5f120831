/* Fuzzed code paths (see fuzz_targets.h). */
#define _GNU_SOURCE
#include <dirent.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "fuzz_targets.h"
#include "qd_buildconf.h"
#include "qdistill/config.h"
#include "qdistill/data.h"
#include "qdistill/log.h"
#include "qdistill/manifest.h"
#include "qdistill/npy.h"
#include "qdistill/registry.h"
#include "qdistill/schema.h"

#define MAX_OVERRIDES 16
#define MAX_LABELS 65536u   /* label files are made only for small headers */

static char dir[512];
static qd_registry *reg;
static int ready;

const char *fz_dir(void) { return dir; }

static const char *in_dir(const char *name)
{
    static char buf[4][1024];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static void cleanup(void)
{
    if (dir[0])
        nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    qd_registry_destroy(reg);
    reg = NULL;
}

static int write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = n ? fwrite(data, 1, n, f) : 0;
    return (fclose(f) == 0 && w == n) ? 0 : -1;
}

static int write_gz(const char *path, const void *data, size_t n)
{
    gzFile gz = gzopen(path, "wb1");
    if (!gz)
        return -1;
    int ok = n == 0 || gzwrite(gz, data, (unsigned)n) == (int)n;
    return (gzclose(gz) == Z_OK && ok) ? 0 : -1;
}

/* Copy src into the scratch directory as name (for `file:` includes and the
 * override target's base manifest). */
static int copy_in(const char *src, const char *name)
{
    FILE *f = fopen(src, "rb");
    if (!f)
        return -1;
    char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    return write_file(in_dir(name), buf, n);
}

int fz_init(void)
{
    if (ready)
        return 0;
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/qd_fuzz_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        perror("fuzz: mkdtemp");
        dir[0] = '\0';
        return -1;
    }
    atexit(cleanup);
    qd_log_set_level(QD_LOG_ERROR);
    qd_error err;
    if (qd_registry_create(&reg, &err) != QD_OK) {
        fprintf(stderr, "fuzz: %s\n", err.msg);
        return -1;
    }
    const char *pp = getenv("QDISTILL_PLUGIN_PATH");
    if (!pp || !*pp)
        pp = QD_BUILD_PLUGIN_DIR;
    char *problems = NULL;
    if (qd_registry_load_dir(reg, pp, &problems, &err) != QD_OK ||
        !qd_registry_find(reg, QD_KIND_DATASET, "mnist") ||
        !qd_registry_find(reg, QD_KIND_DATASET, "cifar10")) {
        fprintf(stderr, "fuzz: cannot load the plugins from '%s': %s %s\n", pp, err.msg,
                problems ? problems : "");
        free(problems);
        return -1;
    }
    free(problems);
    /* Real model files, so that `model: {file: models/x.yaml}` resolves. */
    const char *src = getenv("QD_TEST_SRCDIR");
    if (!src || !*src)
        src = QD_SOURCE_ROOT;
    char path[1024];
    mkdir(in_dir("models"), 0700);
    /* every model file the shipped manifests may include */
    char mdir[1024];
    snprintf(mdir, sizeof mdir, "%s/experiments/models", src);
    DIR *md = opendir(mdir);
    if (!md) {
        fprintf(stderr, "fuzz: cannot read '%s'\n", mdir);
        return -1;
    }
    size_t copied = 0;
    for (struct dirent *e; (e = readdir(md));) {
        size_t l = strlen(e->d_name);
        if (l <= 5 || l > 200 || strcmp(e->d_name + l - 5, ".yaml") != 0)
            continue;
        char name[256], mpath[1280];
        snprintf(mpath, sizeof mpath, "%s/%s", mdir, e->d_name);
        snprintf(name, sizeof name, "models/%s", e->d_name);
        if (copy_in(mpath, name) != 0) {
            fprintf(stderr, "fuzz: cannot copy '%s'\n", mpath);
            closedir(md);
            return -1;
        }
        copied++;
    }
    closedir(md);
    if (copied < 2) {
        fprintf(stderr, "fuzz: only %zu model files in '%s'\n", copied, mdir);
        return -1;
    }
    snprintf(path, sizeof path, "%s/experiments/mnist-qlenet-trainable.yaml", src);
    if (copy_in(path, "base.yaml") != 0) {
        fprintf(stderr, "fuzz: cannot copy '%s'\n", path);
        return -1;
    }
    ready = 1;
    return 0;
}

/* A failing status must be a real code with a one-line message. */
static int clean_error(int rc, const qd_error *err)
{
    if (rc == QD_OK)
        return QD_OK;
    if (rc < 0 || rc > QD_ERR_INTERNAL || rc == QD_ERR_INTERNAL) {
        fprintf(stderr, "fuzz: status %d: %s\n", rc, err->msg);
        return FZ_BUG;
    }
    if (!err->msg[0] || strchr(err->msg, '\n')) {
        fprintf(stderr, "fuzz: status %d with a bad message '%s'\n", rc, err->msg);
        return FZ_BUG;
    }
    return rc;
}

/* Emitted YAML must load back to the tree it came from (the promise of
 * qd_config_to_yaml and qd_manifest_to_yaml): compare the plain emission
 * of the reloaded tree with that of `tree`. */
static int reloads(const char *yaml, const qd_node *tree, const char *what)
{
    if (!yaml) {
        fprintf(stderr, "fuzz: %s: emitting YAML failed\n", what);
        return FZ_BUG;
    }
    qd_config *cfg = NULL;
    qd_error err;
    int rc = qd_config_load_string(yaml, strlen(yaml), "emitted.yaml", NULL, &cfg, &err);
    if (rc != QD_OK) {
        fprintf(stderr, "fuzz: %s: the emitted YAML does not load back: %s\n---\n%s---\n",
                what, err.msg, yaml);
        return FZ_BUG;
    }
    char *want = qd_config_to_yaml(tree);
    char *again = qd_config_to_yaml(qd_config_root(cfg));
    qd_config_destroy(cfg);
    int same = want && again && strcmp(again, want) == 0;
    if (!same)
        fprintf(stderr, "fuzz: %s: the emitted YAML loads back to a different tree\n"
                "--- emitted\n%s--- tree\n%s--- reloaded\n%s---\n", what, yaml,
                want ? want : "(null)", again ? again : "(null)");
    free(want);
    free(again);
    return same ? QD_OK : FZ_BUG;
}

static int validate_and_emit(qd_manifest *m)
{
    qd_diags dg = {0};
    size_t np = qd_manifest_validate(m, reg, &dg);
    int bug = np != dg.n;
    for (size_t i = 0; i < dg.n && !bug; ++i)
        bug = !dg.msgs[i] || !dg.msgs[i][0];
    qd_diags_free(&dg);
    if (bug) {
        fprintf(stderr, "fuzz: validate returned %zu problems with bad messages\n", np);
        return FZ_BUG;
    }
    char *y = qd_manifest_to_yaml(m);
    int rc = reloads(y, qd_manifest_root(m), "manifest");
    free(y);
    if (rc != QD_OK)
        return rc;
    return np ? QD_ERR_MANIFEST : QD_OK;
}

int fz_manifest(const uint8_t *data, size_t size)
{
    if (fz_init() != 0)
        return FZ_BUG;
    const char *path = in_dir("fuzz.yaml");
    if (write_file(path, data, size) != 0)
        return QD_ERR_IO;
    qd_manifest *m = NULL;
    qd_error err;
    int rc = qd_manifest_load(path, NULL, 0, &m, &err);
    if (rc != QD_OK)
        return clean_error(rc, &err);
    rc = validate_and_emit(m);
    qd_manifest_destroy(m);
    return rc;
}

int fz_override(const uint8_t *data, size_t size)
{
    if (fz_init() != 0)
        return FZ_BUG;
    /* One override per line; NULs end a line too. */
    char *text = malloc(size + 1);
    if (!text)
        return QD_ERR_NOMEM;
    memcpy(text, data, size);
    text[size] = '\0';
    const char *ov[MAX_OVERRIDES];
    size_t n = 0;
    char *p = text;
    while (n < MAX_OVERRIDES && p < text + size) {
        ov[n++] = p;
        char *e = p + strcspn(p, "\n");
        if (e >= text + size) {
            break;
        }
        *e = '\0';
        p = e + 1;
    }

    /* The API the CLI uses underneath: parse + set on a loaded tree. */
    qd_config *cfg = NULL;
    qd_error err;
    int rc = qd_config_load(in_dir("base.yaml"), NULL, &cfg, &err);
    if (rc != QD_OK) {
        fprintf(stderr, "fuzz: base manifest: %s\n", err.msg);
        free(text);
        return FZ_BUG;
    }
    int first = QD_OK;
    for (size_t i = 0; i < n; ++i) {
        char *kp = NULL, *val = NULL;
        rc = qd_override_parse(ov[i], &kp, &val, &err);
        if (rc == QD_OK)
            rc = qd_config_set(cfg, kp, val, "<fuzz>", &err);
        free(kp);
        free(val);
        if ((rc = clean_error(rc, &err)) == FZ_BUG)
            break;
        if (first == QD_OK)
            first = rc;
    }
    if (rc != FZ_BUG) {
        char *y = qd_config_to_yaml(qd_config_root(cfg));
        rc = reloads(y, qd_config_root(cfg), "override");
        free(y);
    }
    qd_config_destroy(cfg);
    if (rc == FZ_BUG) {
        free(text);
        return FZ_BUG;
    }

    /* The whole manifest path: load with overrides, validate, emit. */
    qd_manifest *m = NULL;
    rc = qd_manifest_load(in_dir("base.yaml"), ov, n, &m, &err);
    if (rc == QD_OK) {
        rc = validate_and_emit(m);
        qd_manifest_destroy(m);
    } else {
        rc = clean_error(rc, &err);
    }
    free(text);
    if (rc == FZ_BUG)
        return FZ_BUG;
    return first != QD_OK ? first : rc;
}

int fz_npy(const uint8_t *data, size_t size)
{
    qd_npy a;
    qd_error err;
    memset(&a, 0, sizeof a);
    int rc = qd_npy_parse(data, size, &a, &err);
    if (rc != QD_OK)
        return clean_error(rc, &err);
    size_t count = 1, w = qd_npy_dtype_size(a.dtype);
    for (size_t i = 0; i < a.ndim; ++i)
        count *= a.shape[i];
    int bug = w == 0 || a.ndim > QD_NPY_MAX_DIMS || count != a.count ||
              (count && !a.data) || count * w > size;
    /* Touch every byte: ASan flags a buffer shorter than count * w. */
    unsigned sum = 0;
    for (size_t i = 0; !bug && i < count * w; ++i)
        sum += ((const unsigned char *)a.data)[i];
    qd_npy_free(&a);
    if (bug) {
        fprintf(stderr, "fuzz: npy parsed to an inconsistent array (sum %u)\n", sum);
        return FZ_BUG;
    }
    return QD_OK;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Create a dataset instance from a YAML section and load one split. */
static int load_split(const char *yaml, qd_split split, qd_dataset *out, qd_error *err)
{
    memset(out, 0, sizeof *out);
    qd_config *cfg = NULL;
    int rc = qd_config_load_string(yaml, strlen(yaml), "section.yaml", NULL, &cfg, err);
    if (rc != QD_OK) {
        fprintf(stderr, "fuzz: bad section YAML: %s\n", err->msg);
        return FZ_BUG;
    }
    qd_instance_opts o = {.seed = 1, .stream = "dataset", .threads = 1, .base_dir = dir};
    qd_instance *inst = NULL;
    rc = qd_instance_create(reg, QD_KIND_DATASET, qd_config_root(cfg), &o, &inst, err);
    if (rc == QD_OK) {
        const qd_dataset_vt *vt = qd_instance_vtable(inst);
        rc = vt->load(qd_instance_self(inst), split, out);
        if (rc != QD_OK)
            rc = qd_instance_error(inst, rc, err);
        qd_instance_destroy(inst);
    }
    qd_config_destroy(cfg);
    return rc;
}

/* A loaded dataset must be what its header said, with finite values and
 * labels in 0..classes-1. */
static int check_dataset(const qd_dataset *d, size_t n, size_t ch, size_t h, size_t w)
{
    int bug = d->n != n || d->channels != ch || d->height != h || d->width != w ||
              !d->images || !d->labels;
    size_t total = n * ch * h * w;
    for (size_t i = 0; !bug && i < total; ++i)
        bug = !(d->images[i] == d->images[i]) || d->images[i] > 1e6 || d->images[i] < -1e6;
    for (size_t i = 0; !bug && i < n; ++i)
        bug = d->labels[i] < 0 || (size_t)d->labels[i] >= d->classes;
    if (bug)
        fprintf(stderr, "fuzz: inconsistent dataset %zux%zux%zux%zu\n", d->n, d->channels,
                d->height, d->width);
    return bug ? FZ_BUG : QD_OK;
}

int fz_mnist(const uint8_t *data, size_t size, int mode)
{
    if (fz_init() != 0)
        return FZ_BUG;
    const char *img = in_dir(mode == 0 ? "img" : "img.gz");
    const char *stale = in_dir(mode == 0 ? "img.gz" : "img");
    remove(stale);   /* the plugin falls back to the twin name */
    int wr = mode == 2 ? write_gz(img, data, size) : write_file(img, data, size);
    if (wr != 0)
        return QD_ERR_IO;
    /* Labels matching the image header's count (when it is small), so the
     * fuzzer gets past the count check into the payload. The header is
     * read as the plugin sees it: through zlib, which passes plain files. */
    uint8_t head[16];
    int got = -1;
    gzFile gz = gzopen(img, "rb");
    if (gz) {
        got = gzread(gz, head, sizeof head);
        gzclose(gz);
    }
    uint32_t n = got >= 8 ? be32(head + 4) : 1;
    if (n > MAX_LABELS)
        n = 1;
    uint8_t *lab = malloc(8 + (size_t)n);
    if (!lab)
        return QD_ERR_NOMEM;
    memcpy(lab, "\0\0\x08\x01", 4);
    lab[4] = (uint8_t)(n >> 24);
    lab[5] = (uint8_t)(n >> 16);
    lab[6] = (uint8_t)(n >> 8);
    lab[7] = (uint8_t)n;
    for (uint32_t i = 0; i < n; ++i)
        lab[8 + i] = (uint8_t)(i % 10);
    wr = write_file(in_dir("lab"), lab, 8 + (size_t)n);
    free(lab);
    if (wr != 0)
        return QD_ERR_IO;

    char yaml[256];
    snprintf(yaml, sizeof yaml,
             "{plugin: mnist, path: ., train_images: %s, train_labels: lab}",
             mode == 0 ? "img" : "img.gz");
    qd_dataset d;
    qd_error err;
    int rc = load_split(yaml, QD_SPLIT_TRAIN, &d, &err);
    if (rc == FZ_BUG)
        return rc;
    if (rc != QD_OK) {
        qd_dataset_free(&d);
        return clean_error(rc, &err);
    }
    /* Success means the image header (as zlib delivers it) was honoured. */
    if (got == (int)sizeof head)
        rc = check_dataset(&d, be32(head + 4), 1, be32(head + 8), be32(head + 12));
    else
        rc = FZ_BUG;   /* loaded although the header cannot be read */
    qd_dataset_free(&d);
    return rc;
}

int fz_cifar10(const uint8_t *data, size_t size)
{
    if (fz_init() != 0)
        return FZ_BUG;
    if (write_file(in_dir("batch.bin"), data, size) != 0)
        return QD_ERR_IO;
    size_t records = size / 3073 ? size / 3073 : 1;
    if (records > 1000)
        records = 1000;
    char yaml[256];
    snprintf(yaml, sizeof yaml,
             "{plugin: cifar10, path: ., batches: [batch.bin, batch.bin], "
             "test_batch: batch.bin, records: %zu}", records);
    int first = QD_OK;
    for (int s = 0; s < 2; ++s) {
        qd_split split = s ? QD_SPLIT_TRAIN : QD_SPLIT_TEST;
        qd_dataset d;
        qd_error err;
        int rc = load_split(yaml, split, &d, &err);
        if (rc == FZ_BUG)
            return rc;
        if (rc == QD_OK)
            rc = check_dataset(&d, (s ? 2 : 1) * records, 3, 32, 32);
        else
            rc = clean_error(rc, &err);
        qd_dataset_free(&d);
        if (rc == FZ_BUG)
            return rc;
        if (first == QD_OK)
            first = rc;
    }
    return first;
}

int fz_run(const char *harness, const uint8_t *data, size_t size)
{
    if (strcmp(harness, "manifest") == 0)
        return fz_manifest(data, size);
    if (strcmp(harness, "override") == 0)
        return fz_override(data, size);
    if (strcmp(harness, "npy") == 0)
        return fz_npy(data, size);
    if (strcmp(harness, "mnist") == 0)
        return size ? fz_mnist(data + 1, size - 1, data[0] & 1) : QD_ERR_INVALID;
    if (strcmp(harness, "mnist_gz") == 0)
        return fz_mnist(data, size, 2);
    if (strcmp(harness, "cifar10") == 0)
        return fz_cifar10(data, size);
    fprintf(stderr, "fuzz: unknown harness '%s'\n", harness);
    return FZ_BUG;
}
