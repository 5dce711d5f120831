/* Helpers for the data suites (see data_util.h). */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "data_util.h"
#include "qdistill/config.h"

char dt_dir[512];
qd_registry *dt_reg;

void dt_setup(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(dt_dir, sizeof dt_dir, "%s/qd_data_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    cr_assert(mkdtemp(dt_dir), "mkdtemp failed");
    qd_error err;
    cr_assert_eq(qd_registry_create(&dt_reg, &err), QD_OK, "%s", err.msg);
    const char *pp = getenv("QDISTILL_PLUGIN_PATH");
    cr_assert(pp && *pp, "QDISTILL_PLUGIN_PATH not set");
    cr_assert_eq(qd_registry_load_dir(dt_reg, pp, NULL, &err), QD_OK, "%s", err.msg);
    cr_assert(qd_registry_find(dt_reg, QD_KIND_DATASET, "mnist"), "no mnist plugin under %s", pp);
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

void dt_teardown(void)
{
    if (dt_dir[0])
        nftw(dt_dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    dt_dir[0] = '\0';
    qd_registry_destroy(dt_reg);
    dt_reg = NULL;
}

const char *dt_path(const char *name)
{
    static char buf[4][1024];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dt_dir, name);
    return buf[k];
}

void dt_write(const char *name, const void *data, size_t n)
{
    FILE *f = fopen(dt_path(name), "wb");
    cr_assert(f, "cannot write %s", name);
    cr_assert_eq(fwrite(data, 1, n, f), n);
    cr_assert_eq(fclose(f), 0);
}

void dt_write_gz(const char *name, const void *data, size_t n)
{
    gzFile gz = gzopen(dt_path(name), "wb");
    cr_assert(gz, "cannot write %s", name);
    if (n)
        cr_assert_eq(gzwrite(gz, data, (unsigned)n), (int)n);
    cr_assert_eq(gzclose(gz), Z_OK);
}

unsigned char *dt_gzip(const void *data, size_t n, size_t *out_len)
{
    dt_write_gz(".dt_gzip_tmp", data, n);
    FILE *f = fopen(dt_path(".dt_gzip_tmp"), "rb");
    cr_assert(f);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)len);
    cr_assert(b);
    cr_assert_eq(fread(b, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    unlink(dt_path(".dt_gzip_tmp"));
    *out_len = (size_t)len;
    return b;
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

unsigned char *dt_idx_images(uint32_t magic, uint32_t n, uint32_t rows, uint32_t cols,
                             const unsigned char *pix, size_t pix_len, size_t *len)
{
    unsigned char *b = malloc(16 + pix_len + 1);
    cr_assert(b);
    put32(b, magic);
    put32(b + 4, n);
    put32(b + 8, rows);
    put32(b + 12, cols);
    if (pix_len)
        memcpy(b + 16, pix, pix_len);
    *len = 16 + pix_len;
    return b;
}

unsigned char *dt_idx_labels(uint32_t magic, uint32_t n, const unsigned char *lab,
                             size_t lab_len, size_t *len)
{
    unsigned char *b = malloc(8 + lab_len + 1);
    cr_assert(b);
    put32(b, magic);
    put32(b + 4, n);
    if (lab_len)
        memcpy(b + 8, lab, lab_len);
    *len = 8 + lab_len;
    return b;
}

int dt_load(const char *yaml, qd_split split, qd_dataset *out, qd_error *err)
{
    memset(out, 0, sizeof *out);
    qd_config *cfg = NULL;
    int rc = qd_config_load_string(yaml, strlen(yaml), "section.yaml", NULL, &cfg, err);
    cr_assert_eq(rc, QD_OK, "bad test YAML: %s", err->msg);
    qd_instance_opts o = {.seed = 1, .stream = "dataset", .threads = 1, .base_dir = dt_dir};
    qd_instance *inst = NULL;
    rc = qd_instance_create(dt_reg, QD_KIND_DATASET, qd_config_root(cfg), &o, &inst, err);
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

int dt_bundle(const char *yaml, uint64_t seed, qd_data_bundle *b, qd_error *err)
{
    qd_config *cfg = NULL;
    int rc = qd_config_load_string(yaml, strlen(yaml), "manifest.yaml", NULL, &cfg, err);
    cr_assert_eq(rc, QD_OK, "bad test YAML: %s", err->msg);
    qd_instance_opts o = {.seed = seed, .stream = "dataset", .threads = 1, .base_dir = dt_dir};
    rc = qd_data_load(dt_reg, qd_config_root(cfg), &o, b, err);
    qd_config_destroy(cfg);
    return rc;
}

void dt_expect_error(int rc, const qd_error *err, int code, const char *n1, const char *n2,
                     const char *n3)
{
    cr_expect_eq(rc, code, "status %s (%d), expected %s: %s", qd_status_name(rc), rc,
                 qd_status_name(code), err->msg);
    cr_expect_eq(err->code, code, "err->code %d, expected %d", err->code, code);
    const char *needles[3] = {n1, n2, n3};
    for (int i = 0; i < 3; ++i)
        if (needles[i])
            cr_expect(strstr(err->msg, needles[i]), "'%s' missing from: %s", needles[i],
                      err->msg);
    cr_expect(strchr(err->msg, '\n') == NULL, "message must be one line: %s", err->msg);
}

double dt_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
