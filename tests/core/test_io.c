/* Run-directory I/O: atomic writes (with injected and real disk-full),
 * blobs, checkpoints, .npy (checked with numpy itself), PNG grids (read back
 * with libpng), metrics CSV and JSON (checked with Python's json module). */
#define _GNU_SOURCE /* mkdtemp, setenv, nftw */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "qdistill/blob.h"
#include "qdistill/ckpt.h"
#include "qdistill/csv.h"
#include "qdistill/fsutil.h"
#include "qdistill/json.h"
#include "qdistill/npy.h"
#include "qdistill/png_grid.h"
#include "qdistill/rng.h"

/* ------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------- */

static char g_dir[256];

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static void setup_dir(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/qd_test_io_XXXXXX");
    cr_assert_not_null(mkdtemp(g_dir), "mkdtemp: %s", strerror(errno));
    qd_io_set_fail_after(-1);
    qd_io_set_write_chunk(0);
}

static void teardown_dir(void)
{
    char mnt[300];
    snprintf(mnt, sizeof mnt, "%s/mnt", g_dir);
    umount(mnt); /* in case a tmpfs test stopped early; fails harmlessly */
    qd_io_set_fail_after(-1);
    qd_io_set_write_chunk(0);
    nftw(g_dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* g_dir + "/" + name, in a static rotating buffer. */
static const char *P(const char *name)
{
    static char bufs[8][1024];
    static int k;
    char *b = bufs[k++ & 7];
    snprintf(b, 1024, "%s/%s", g_dir, name);
    return b;
}

static char *slurp(const char *path, size_t *len)
{
    if (len)
        *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    size_t got = fread(b, 1, (size_t)n, f);
    fclose(f);
    b[got] = '\0';
    if (len)
        *len = got;
    return b;
}

static void spit(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "fopen %s", path);
    cr_assert_eq(fwrite(data, 1, len, f), len);
    fclose(f);
}

/* Number of ".qdtmp." files in a directory (leftover temporaries). */
static int count_temps(const char *dir)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strstr(de->d_name, ".qdtmp."))
            n++;
    closedir(d);
    return n;
}

static int have_python_numpy(void)
{
    if (access("/usr/bin/python3", X_OK) != 0)
        return 0;
    return system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0;
}

/* Run python code with argv[1] = path; returns its exit status. */
static int run_python(const char *code, const char *path)
{
    const char *script = P("check.py");
    spit(script, code, strlen(code));
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' '%s'", script, path);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

TestSuite(io, .init = setup_dir, .fini = teardown_dir);

/* ------------------------------------------------------------------------
 * Atomic writes
 * ---------------------------------------------------------------------- */

Test(io, atomic_write_creates_and_replaces)
{
    qd_error err = {0};
    const char *p = P("a.txt");
    cr_assert_eq(qd_write_atomic(p, "hello", 5, &err), QD_OK, "%s", err.msg);
    size_t n;
    char *s = slurp(p, &n);
    cr_assert_eq(n, 5);
    cr_assert_str_eq(s, "hello");
    free(s);
    cr_assert_eq(qd_write_atomic(p, "bye", 3, &err), QD_OK, "%s", err.msg);
    s = slurp(p, &n);
    cr_assert_str_eq(s, "bye");
    free(s);
    cr_assert_eq(qd_write_atomic(p, NULL, 0, &err), QD_OK, "%s", err.msg);
    s = slurp(p, &n);
    cr_assert_eq(n, 0);
    free(s);
    cr_assert_eq(count_temps(g_dir), 0);
}

Test(io, atomic_write_unicode_and_spaces)
{
    qd_error err = {0};
    char dir[512], file[600];
    snprintf(dir, sizeof dir, "%s/dir with spaces/ünïcødé 测试/run 1", g_dir);
    cr_assert_eq(qd_mkdir_p(dir, &err), QD_OK, "%s", err.msg);
    snprintf(file, sizeof file, "%s/résumé ✓ ñ.json", dir);
    cr_assert_eq(qd_write_atomic(file, "{}", 2, &err), QD_OK, "%s", err.msg);
    char *s = slurp(file, NULL);
    cr_assert_not_null(s, "file with a non-ASCII name not found");
    cr_assert_str_eq(s, "{}");
    free(s);
    cr_assert_eq(count_temps(dir), 0);
    /* every other writer goes through the same path handling */
    snprintf(file, sizeof file, "%s/ä ö.npy", dir);
    const size_t shape[1] = {2};
    const double v[2] = {1, 2};
    cr_assert_eq(qd_npy_write(file, QD_NPY_F8, shape, 1, v, &err), QD_OK, "%s",
                 err.msg);
    qd_npy a;
    cr_assert_eq(qd_npy_read(file, &a, &err), QD_OK, "%s", err.msg);
    qd_npy_free(&a);
}

Test(io, injected_disk_full_keeps_old_file)
{
    qd_error err = {0};
    const char *p = P("result.json");
    cr_assert_eq(qd_write_atomic(p, "old content", 11, &err), QD_OK);
    char big[5000];
    memset(big, 'x', sizeof big);
    const long long budgets[] = {0, 1, 10, 4096, 4999};
    for (size_t k = 0; k < sizeof budgets / sizeof budgets[0]; k++) {
        qd_io_set_fail_after(budgets[k]);
        qd_error_clear(&err);
        int rc = qd_write_atomic(p, big, sizeof big, &err);
        qd_io_set_fail_after(-1);
        cr_assert_eq(rc, QD_ERR_IO, "budget %lld: rc %d", budgets[k], rc);
        cr_assert_eq(err.code, QD_ERR_IO);
        cr_assert(strstr(err.msg, p) != NULL, "message does not name the path: %s",
                  err.msg);
        cr_assert(strstr(err.msg, strerror(ENOSPC)) != NULL,
                  "message lacks strerror: %s", err.msg);
        char *s = slurp(p, NULL);
        cr_assert_str_eq(s, "old content", "budget %lld: old file damaged",
                         budgets[k]);
        free(s);
        cr_assert_eq(count_temps(g_dir), 0, "temp file left behind");
    }
    /* exactly enough budget succeeds */
    qd_io_set_fail_after((long long)sizeof big);
    cr_assert_eq(qd_write_atomic(p, big, sizeof big, &err), QD_OK, "%s", err.msg);
    qd_io_set_fail_after(-1);
}

/* No .init here: the hooks must not have been touched in this process
 * (Criterion runs every test in a fresh process) so that the first write
 * reads QD_IO_FAIL_AFTER from the environment. */
Test(io_env, env_var_injects_failure)
{
    char dir[] = "/tmp/qd_test_io_env_XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char p[64];
    snprintf(p, sizeof p, "%s/env.txt", dir);
    setenv("QD_IO_FAIL_AFTER", "3", 1);
    qd_error err = {0};
    int rc = qd_write_atomic(p, "0123456789", 10, &err);
    int exists = access(p, F_OK) == 0, temps = count_temps(dir);
    qd_io_set_fail_after(-1);
    int rc2 = qd_write_atomic(p, "0123456789", 10, &err);
    unlink(p);
    rmdir(dir);
    cr_assert_eq(rc, QD_ERR_IO, "QD_IO_FAIL_AFTER=3 did not make the write fail");
    cr_assert(!exists && temps == 0);
    cr_assert_eq(rc2, QD_OK, "%s", err.msg);
}

Test(io, short_writes_are_completed)
{
    qd_error err = {0};
    size_t n = 200000;
    unsigned char *d = malloc(n);
    for (size_t i = 0; i < n; i++)
        d[i] = (unsigned char)(i * 131 + 7);
    qd_io_set_write_chunk(7);
    cr_assert_eq(qd_write_atomic(P("chunked.bin"), d, n, &err), QD_OK, "%s", err.msg);
    qd_atomic_file *f;
    cr_assert_eq(qd_atomic_open(P("chunked2.bin"), &f, &err), QD_OK);
    for (size_t off = 0; off < n; off += 1000)
        cr_assert_eq(qd_atomic_write(f, d + off, n - off < 1000 ? n - off : 1000, &err),
                     QD_OK);
    cr_assert_eq(qd_atomic_commit(f, &err), QD_OK, "%s", err.msg);
    qd_io_set_write_chunk(0);
    size_t got;
    char *s = slurp(P("chunked.bin"), &got);
    cr_assert_eq(got, n);
    cr_assert(memcmp(s, d, n) == 0);
    free(s);
    s = slurp(P("chunked2.bin"), &got);
    cr_assert_eq(got, n);
    cr_assert(memcmp(s, d, n) == 0);
    free(s);
    free(d);
}

Test(io, streaming_commit_abort_and_failure)
{
    qd_error err = {0};
    const char *p = P("stream.txt");
    cr_assert_eq(qd_write_atomic(p, "v1", 2, &err), QD_OK);

    /* abort: nothing changes */
    qd_atomic_file *f;
    cr_assert_eq(qd_atomic_open(p, &f, &err), QD_OK);
    cr_assert_eq(qd_atomic_write(f, "garbage", 7, &err), QD_OK);
    qd_atomic_abort(f);
    char *s = slurp(p, NULL);
    cr_assert_str_eq(s, "v1");
    free(s);
    cr_assert_eq(count_temps(g_dir), 0);

    /* while open, the target still shows the old content */
    cr_assert_eq(qd_atomic_open(p, &f, &err), QD_OK);
    for (int i = 0; i < 30000; i++)
        cr_assert_eq(qd_atomic_printf(f, &err, "line %d\n", i), QD_OK);
    s = slurp(p, NULL);
    cr_assert_str_eq(s, "v1", "partial output visible before commit");
    free(s);
    cr_assert_eq(count_temps(g_dir), 1);
    cr_assert_eq(qd_atomic_commit(f, &err), QD_OK, "%s", err.msg);
    size_t n;
    s = slurp(p, &n);
    cr_assert(strncmp(s, "line 0\nline 1\n", 14) == 0);
    cr_assert(strstr(s, "line 29999\n") == s + n - 11);
    free(s);

    /* a failure in the middle of a large stream */
    qd_io_set_fail_after(100000);
    cr_assert_eq(qd_atomic_open(p, &f, &err), QD_OK);
    int rc = QD_OK;
    for (int i = 0; i < 30000 && rc == QD_OK; i++)
        rc = qd_atomic_printf(f, &err, "other %d\n", i);
    cr_assert_eq(rc, QD_ERR_IO, "write past the budget did not fail");
    cr_assert_eq(qd_atomic_commit(f, &err), QD_ERR_IO);
    qd_io_set_fail_after(-1);
    char *t = slurp(p, &n);
    cr_assert(strncmp(t, "line 0\n", 7) == 0, "old file damaged");
    free(t);
    cr_assert_eq(count_temps(g_dir), 0);
}

Test(io, rename_and_open_failures)
{
    qd_error err = {0};
    /* target is a directory: rename fails, temp removed */
    cr_assert_eq(qd_mkdir_p(P("adir"), &err), QD_OK);
    cr_assert_eq(qd_write_atomic(P("adir"), "x", 1, &err), QD_ERR_IO);
    cr_assert(strstr(err.msg, "adir") != NULL, "%s", err.msg);
    cr_assert_eq(count_temps(g_dir), 0);
    /* missing directory */
    cr_assert_eq(qd_write_atomic(P("nope/x.txt"), "x", 1, &err), QD_ERR_IO);
    cr_assert(strstr(err.msg, "nope/x.txt") != NULL, "%s", err.msg);
    cr_assert(strstr(err.msg, strerror(ENOENT)) != NULL, "%s", err.msg);
    /* bad paths */
    cr_assert_eq(qd_write_atomic("", "x", 1, &err), QD_ERR_INVALID);
    cr_assert_eq(qd_write_atomic(P("dir/"), "x", 1, &err), QD_ERR_INVALID);
}

Test(io, mkdir_p)
{
    qd_error err = {0};
    char d[600];
    snprintf(d, sizeof d, "%s/a/b//c/d/", g_dir);
    cr_assert_eq(qd_mkdir_p(d, &err), QD_OK, "%s", err.msg);
    struct stat st;
    cr_assert_eq(stat(P("a/b/c/d"), &st), 0);
    cr_assert(S_ISDIR(st.st_mode));
    cr_assert_eq(qd_mkdir_p(d, &err), QD_OK, "existing directory: %s", err.msg);
    cr_assert_eq(qd_write_atomic(P("a/file"), "x", 1, &err), QD_OK);
    cr_assert_eq(qd_mkdir_p(P("a/file/sub"), &err), QD_ERR_IO);
    cr_assert(strstr(err.msg, "a/file") != NULL, "%s", err.msg);
}

Test(io, read_file_limit)
{
    qd_error err = {0};
    spit(P("f"), "0123456789", 10);
    void *d;
    size_t n;
    cr_assert_eq(qd_read_file(P("f"), 10, &d, &n, &err), QD_OK);
    cr_assert_eq(n, 10);
    cr_assert_eq(((char *)d)[10], '\0');
    free(d);
    cr_assert_eq(qd_read_file(P("f"), 9, &d, &n, &err), QD_ERR_FORMAT);
    cr_assert_null(d);
    cr_assert_eq(qd_read_file(P("missing"), 0, &d, &n, &err), QD_ERR_IO);
    cr_assert_eq(qd_read_file(g_dir, 0, &d, &n, &err), QD_ERR_IO);
}

Test(io, stale_temps_of_dead_processes_removed)
{
    qd_error err = {0};
    pid_t child = fork();
    if (child == 0)
        _exit(0);
    waitpid(child, NULL, 0); /* now a pid with no process */
    char name[256];
    snprintf(name, sizeof name, ".metrics.csv.qdtmp.%ld.3", (long)child);
    spit(P(name), "x", 1);
    snprintf(name, sizeof name, ".result.json.qdtmp.%ld.0", (long)getpid());
    spit(P(name), "x", 1);                      /* ours: in use, kept */
    spit(P("result.json"), "x", 1);             /* a real file, kept */
    spit(P(".hidden.qdtmp.notapid.1"), "x", 1); /* not our pattern, kept */
    size_t removed = 99;
    cr_assert_eq(qd_io_remove_stale_temps(g_dir, &removed, &err), QD_OK, "%s",
                 err.msg);
    cr_assert_eq(removed, 1);
    cr_assert_eq(count_temps(g_dir), 2);
    cr_assert_eq(access(P("result.json"), F_OK), 0);
}

Test(io, real_full_tmpfs, .timeout = 60)
{
    qd_error err = {0}, csv_err = {0};
    const char *mnt = P("mnt");
    cr_assert_eq(qd_mkdir_p(mnt, &err), QD_OK);
    if (geteuid() != 0 || mount("tmpfs", mnt, "tmpfs", 0, "size=64k") != 0)
        cr_skip_test("cannot mount a tmpfs here (%s)", strerror(errno));
    /* collect results first, assert after unmounting */
    char file[600], csvp[600], filler[600];
    snprintf(file, sizeof file, "%s/ckpt.bin", mnt);
    snprintf(csvp, sizeof csvp, "%s/metrics.csv", mnt);
    snprintf(filler, sizeof filler, "%s/filler", mnt);
    int ok_old = qd_write_atomic(file, "previous checkpoint", 19, &err) == QD_OK;
    size_t n = 1 << 20;
    char *big = calloc(1, n);
    int rc_big = qd_write_atomic(file, big, n, &err);
    free(big);
    char *old = slurp(file, NULL);
    int temps = count_temps(mnt);

    /* a CSV log on a disk that fills up: appends fail cleanly */
    qd_csv *csv = NULL;
    const char *cols[] = {"iteration", "loss"};
    int ok_csv = qd_csv_open(csvp, cols, 2, &csv, &csv_err) == QD_OK;
    FILE *f = fopen(filler, "wb");
    char page[4096] = {0};
    while (f && fwrite(page, 1, sizeof page, f) == sizeof page && fflush(f) == 0)
        ;
    if (f)
        fclose(f);
    size_t committed = 0;
    int rc_row = QD_OK;
    for (int i = 0; ok_csv && i < 100000 && rc_row == QD_OK; i++) {
        const double r[2] = {i, 1.0 / (i + 3)};
        rc_row = qd_csv_row(csv, r, 2, &csv_err);
        committed += rc_row == QD_OK;
    }
    qd_csv_close(csv);
    size_t csv_len = 0;
    char *csv_text = slurp(csvp, &csv_len);
    size_t lines = 0;
    for (size_t i = 0; csv_text && i < csv_len; i++)
        lines += csv_text[i] == '\n';
    int ends_clean = csv_text && csv_len && csv_text[csv_len - 1] == '\n';
    umount(mnt);

    cr_assert(ok_old);
    cr_assert_eq(rc_big, QD_ERR_IO);
    cr_assert(strstr(err.msg, "ckpt.bin") && strstr(err.msg, strerror(ENOSPC)), "%s",
              err.msg);
    cr_assert_str_eq(old, "previous checkpoint");
    cr_assert_eq(temps, 0);
    cr_assert(ok_csv, "%s", csv_err.msg);
    cr_assert_eq(rc_row, QD_ERR_IO, "the full disk never refused a row");
    cr_assert(committed > 0);
    cr_assert(ends_clean, "CSV ends in a half row");
    cr_assert_eq(lines, committed + 1);
    free(old);
    free(csv_text);
}

/* ------------------------------------------------------------------------
 * Blob
 * ---------------------------------------------------------------------- */

static void fill_blob(qd_blob *b, qd_rng *rng)
{
    const uint32_t u32a[3] = {0, 1, 0xFFFFFFFFu};
    const int32_t i32a[2] = {-5, 2147483647};
    const uint64_t u64a[2] = {UINT64_MAX, 42};
    const int64_t i64a[2] = {INT64_MIN, -1};
    const double f64a[4] = {0.1, -0.0, 1e-310, NAN};
    qd_blob_put_u32(b, 0xDEADBEEFu);
    qd_blob_put_u64(b, 0x0123456789ABCDEFull);
    qd_blob_put_i64(b, -1234567890123ll);
    qd_blob_put_f64(b, 1.0 / 3.0);
    qd_blob_put_u32_array(b, u32a, 3);
    qd_blob_put_i32_array(b, i32a, 2);
    qd_blob_put_u64_array(b, u64a, 2);
    qd_blob_put_i64_array(b, i64a, 2);
    qd_blob_put_f64_array(b, f64a, 4);
    qd_blob_put_f64_array(b, NULL, 0);
    qd_blob_put_str(b, "ünïcødé");
    qd_blob_put_str(b, NULL);
    qd_blob_put_bytes(b, "\0\1\2", 3);
    qd_blob_put_rng(b, rng);
}

/* Reads what fill_blob wrote; returns the first error or QD_OK. */
static int read_blob(const void *data, size_t len, const qd_rng *expect_rng,
                     qd_error *err)
{
    qd_blob_reader r;
    qd_blob_reader_init(&r, data, len);
    uint32_t u32;
    uint64_t u64;
    int64_t i64;
    double f64;
    uint32_t u32a[3];
    int32_t i32a[2];
    uint64_t u64a[2];
    int64_t i64a[2];
    double f64a[4];
    int rc;
#define TRY(x)              \
    if ((rc = (x)) != QD_OK) \
        return rc
    TRY(qd_blob_get_u32(&r, &u32, err));
    cr_assert_eq(u32, 0xDEADBEEFu);
    TRY(qd_blob_get_u64(&r, &u64, err));
    cr_assert_eq(u64, 0x0123456789ABCDEFull);
    TRY(qd_blob_get_i64(&r, &i64, err));
    cr_assert_eq(i64, -1234567890123ll);
    TRY(qd_blob_get_f64(&r, &f64, err));
    cr_assert(f64 == 1.0 / 3.0);
    TRY(qd_blob_get_u32_array(&r, u32a, 3, err));
    cr_assert(u32a[0] == 0 && u32a[1] == 1 && u32a[2] == 0xFFFFFFFFu);
    int32_t *i32p;
    size_t n;
    TRY(qd_blob_get_i32_array_alloc(&r, &i32p, &n, err));
    cr_assert(n == 2 && i32p[0] == -5 && i32p[1] == 2147483647);
    memcpy(i32a, i32p, sizeof i32a);
    free(i32p);
    TRY(qd_blob_get_u64_array(&r, u64a, 2, err));
    cr_assert(u64a[0] == UINT64_MAX && u64a[1] == 42);
    TRY(qd_blob_get_i64_array(&r, i64a, 2, err));
    cr_assert(i64a[0] == INT64_MIN && i64a[1] == -1);
    TRY(qd_blob_get_f64_array(&r, f64a, 4, err));
    cr_assert(f64a[0] == 0.1 && f64a[1] == 0.0 && signbit(f64a[1]) &&
              f64a[2] == 1e-310 && isnan(f64a[3]));
    double *empty = (double *)1;
    TRY(qd_blob_get_f64_array_alloc(&r, &empty, &n, err));
    cr_assert(n == 0 && empty == NULL);
    char *s;
    TRY(qd_blob_get_str(&r, &s, err));
    cr_assert_str_eq(s, "ünïcødé");
    free(s);
    TRY(qd_blob_get_str(&r, &s, err));
    cr_assert_null(s);
    const void *bp;
    TRY(qd_blob_get_bytes(&r, &bp, &n, err));
    cr_assert(n == 3 && memcmp(bp, "\0\1\2", 3) == 0);
    qd_rng rng;
    TRY(qd_blob_get_rng(&r, &rng, err));
    cr_assert(memcmp(&rng, expect_rng, sizeof rng) == 0);
    TRY(qd_blob_reader_end(&r, err));
#undef TRY
    return QD_OK;
}

Test(io, blob_roundtrip_every_type)
{
    qd_rng rng;
    qd_rng_seed(&rng, 42, 7);
    (void)qd_rng_normal(&rng); /* leaves a cached spare in the state */
    cr_assert(rng.has_spare);
    qd_blob b;
    qd_blob_init(&b);
    fill_blob(&b, &rng);
    cr_assert(!b.failed);
    qd_error err = {0};
    cr_assert_eq(read_blob(b.data, b.len, &rng, &err), QD_OK, "%s", err.msg);

    /* the restored generator continues the very same stream */
    qd_blob_reader r;
    qd_blob_reader_init(&r, b.data, b.len);
    qd_rng copy;
    size_t off = b.len - 26; /* the rng item is last: tag + 25 bytes */
    qd_blob_reader_init(&r, b.data + off, 26);
    cr_assert_eq(qd_blob_get_rng(&r, &copy, &err), QD_OK, "%s", err.msg);
    for (int i = 0; i < 100; i++)
        cr_assert(qd_rng_normal(&copy) == qd_rng_normal(&rng));
    qd_blob_free(&b);
}

Test(io, blob_little_endian_layout)
{
    /* the encoding is fixed, not the host's memory image */
    qd_blob b;
    qd_blob_init(&b);
    qd_blob_put_u32(&b, 0x01020304u);
    qd_blob_put_f64(&b, 1.0); /* 0x3FF0000000000000 */
    const uint8_t want[] = {0x01, 0x04, 0x03, 0x02, 0x01, 0x04, 0, 0, 0, 0, 0, 0, 0xF0,
                            0x3F};
    cr_assert_eq(b.len, sizeof want);
    cr_assert(memcmp(b.data, want, sizeof want) == 0);
    qd_blob_free(&b);
}

Test(io, blob_truncated_or_corrupt_is_format_error)
{
    qd_rng rng;
    qd_rng_seed(&rng, 1, 2);
    qd_blob b;
    qd_blob_init(&b);
    fill_blob(&b, &rng);
    qd_error err = {0};
    /* every proper prefix fails cleanly (ASan would catch an overread:
     * each prefix is copied to an exactly-sized heap block) */
    for (size_t len = 0; len < b.len; len++) {
        void *cut = malloc(len ? len : 1);
        memcpy(cut, b.data, len);
        qd_error_clear(&err);
        int rc = read_blob(cut, len, &rng, &err);
        cr_assert_eq(rc, QD_ERR_FORMAT, "prefix %zu: rc %d", len, rc);
        cr_assert(err.msg[0] != '\0');
        free(cut);
    }
    /* type mismatch */
    qd_blob_reader r;
    qd_blob_reader_init(&r, b.data, b.len);
    double d;
    cr_assert_eq(qd_blob_get_f64(&r, &d, &err), QD_ERR_FORMAT);
    cr_assert(strstr(err.msg, "expected f64, found u32"), "%s", err.msg);
    cr_assert_eq(r.pos, 0, "a failed read must not move the cursor");
    qd_blob_free(&b);

    /* an array header claiming 2^60 elements: error, no huge allocation */
    uint8_t evil[9 + 16] = {0x15};
    evil[8] = 0x10; /* count = 2^60 little-endian */
    qd_blob_reader_init(&r, evil, sizeof evil);
    double *arr;
    size_t n;
    cr_assert_eq(qd_blob_get_f64_array_alloc(&r, &arr, &n, &err), QD_ERR_FORMAT);
    cr_assert_null(arr);
    /* wrong element count */
    qd_blob_init(&b);
    const double two[2] = {1, 2};
    qd_blob_put_f64_array(&b, two, 2);
    qd_blob_reader_init(&r, b.data, b.len);
    double three[3];
    cr_assert_eq(qd_blob_get_f64_array(&r, three, 3, &err), QD_ERR_FORMAT);
    cr_assert(strstr(err.msg, "has 2 elements, expected 3"), "%s", err.msg);
    /* trailing bytes */
    qd_blob_reader_init(&r, b.data, b.len);
    cr_assert_eq(qd_blob_reader_end(&r, &err), QD_ERR_FORMAT);
    qd_blob_free(&b);
    /* impossible rng state (even increment) */
    qd_blob_init(&b);
    qd_rng bad = {1, 2, 0, 0, 0};
    qd_blob_put_rng(&b, &bad);
    qd_blob_reader_init(&r, b.data, b.len);
    cr_assert_eq(qd_blob_get_rng(&r, &rng, &err), QD_ERR_FORMAT);
    qd_blob_free(&b);
}

/* ------------------------------------------------------------------------
 * Checkpoints
 * ---------------------------------------------------------------------- */

static void write_ckpt(const char *path, const char *distiller_payload)
{
    qd_error err = {0};
    qd_ckpt_writer *w;
    cr_assert_eq(qd_ckpt_writer_create(&w, &err), QD_OK);
    qd_blob b;
    qd_blob_init(&b);
    qd_blob_put_u64(&b, 17);
    qd_blob_put_str(&b, distiller_payload);
    cr_assert_eq(qd_ckpt_writer_add(w, "meta", "iteration=17", 12, &err), QD_OK);
    cr_assert_eq(qd_ckpt_writer_add_blob(w, "distiller", &b, &err), QD_OK);
    cr_assert_eq(qd_ckpt_writer_add(w, "empty", NULL, 0, &err), QD_OK);
    cr_assert_eq(qd_ckpt_writer_add(w, "meta", "x", 1, &err), QD_ERR_INVALID);
    cr_assert_eq(qd_ckpt_writer_add(w, "", "x", 1, &err), QD_ERR_INVALID);
    cr_assert_eq(qd_ckpt_writer_commit(w, path, &err), QD_OK, "%s", err.msg);
    qd_ckpt_writer_destroy(w);
    qd_blob_free(&b);
}

Test(io, ckpt_roundtrip)
{
    qd_error err = {0};
    const char *p = P("ckpt.bin");
    write_ckpt(p, "state");
    qd_ckpt *c;
    cr_assert_eq(qd_ckpt_read(p, &c, &err), QD_OK, "%s", err.msg);
    cr_assert_eq(qd_ckpt_count(c), 3);
    cr_assert_str_eq(qd_ckpt_name(c, 0), "meta");
    cr_assert_str_eq(qd_ckpt_name(c, 1), "distiller");
    cr_assert_str_eq(qd_ckpt_name(c, 2), "empty");
    cr_assert_null(qd_ckpt_name(c, 3));
    const void *d;
    size_t n;
    cr_assert_eq(qd_ckpt_section(c, "meta", &d, &n, &err), QD_OK);
    cr_assert(n == 12 && memcmp(d, "iteration=17", 12) == 0);
    cr_assert_eq(qd_ckpt_section(c, "empty", &d, &n, &err), QD_OK);
    cr_assert_eq(n, 0);
    cr_assert_eq(qd_ckpt_section(c, "distiller", &d, &n, &err), QD_OK);
    qd_blob_reader r;
    qd_blob_reader_init(&r, d, n);
    uint64_t it;
    char *s;
    cr_assert_eq(qd_blob_get_u64(&r, &it, &err), QD_OK);
    cr_assert_eq(qd_blob_get_str(&r, &s, &err), QD_OK);
    cr_assert_eq(it, 17);
    cr_assert_str_eq(s, "state");
    free(s);
    cr_assert(qd_ckpt_has(c, "meta") && !qd_ckpt_has(c, "model"));
    cr_assert_eq(qd_ckpt_section(c, "model", &d, &n, &err), QD_ERR_FORMAT);
    char want[700];
    snprintf(want, sizeof want, "checkpoint '%s': no section 'model'", p);
    cr_assert_str_eq(err.msg, want);
    qd_ckpt_destroy(c);

    /* layout: magic, version, count, total length, flags, header CRC */
    size_t len;
    unsigned char *raw = (unsigned char *)slurp(p, &len);
    cr_assert(memcmp(raw, "QDCKPT\0\1", 8) == 0);
    cr_assert_eq(raw[8], 1);
    cr_assert_eq(raw[12], 3);
    cr_assert_eq((size_t)raw[16] | (size_t)raw[17] << 8, len);
    uint32_t crc = (uint32_t)crc32(0, raw, 28);
    cr_assert_eq((uint32_t)raw[28] | (uint32_t)raw[29] << 8 |
                     (uint32_t)raw[30] << 16 | (uint32_t)raw[31] << 24, crc);
    free(raw);
}

Test(io, ckpt_every_flipped_byte_and_every_truncation_detected)
{
    qd_error err = {0};
    const char *p = P("ckpt.bin");
    write_ckpt(p, "some distiller state");
    size_t len;
    unsigned char *raw = (unsigned char *)slurp(p, &len);
    qd_ckpt *c;
    for (size_t i = 0; i < len; i++) {
        for (int bit = 0; bit < 8; bit += 3) {
            raw[i] ^= (unsigned char)(1u << bit);
            int rc = qd_ckpt_parse(raw, len, "x", &c, &err);
            raw[i] ^= (unsigned char)(1u << bit);
            cr_assert_eq(rc, QD_ERR_FORMAT, "flip of byte %zu bit %d not detected",
                         i, bit);
            cr_assert_null(c);
        }
    }
    for (size_t cut = 0; cut < len; cut++) {
        cr_assert_eq(qd_ckpt_parse(raw, cut, "x", &c, &err), QD_ERR_FORMAT,
                     "truncation to %zu bytes not detected", cut);
    }
    cr_assert_eq(qd_ckpt_parse(raw, len, "x", &c, &err), QD_OK, "%s", err.msg);
    qd_ckpt_destroy(c);
    free(raw);
}

Test(io, ckpt_error_messages)
{
    qd_error err = {0};
    const char *p = P("ckpt.bin");
    write_ckpt(p, "abcdefgh");
    size_t len;
    unsigned char *raw = (unsigned char *)slurp(p, &len);
    /* corrupt the last payload byte of 'distiller' (the section before
     * 'empty', whose record is 16 + 5 bytes at the end) */
    size_t pos = len - 21 - 1;
    raw[pos] ^= 0x40;
    spit(p, raw, len);
    qd_ckpt *c;
    cr_assert_eq(qd_ckpt_read(p, &c, &err), QD_ERR_FORMAT);
    char want[700];
    snprintf(want, sizeof want, "checkpoint '%s': section 'distiller' CRC mismatch", p);
    cr_assert_str_eq(err.msg, want);
    raw[pos] ^= 0x40;

    spit(p, raw, len - 3);
    cr_assert_eq(qd_ckpt_read(p, &c, &err), QD_ERR_FORMAT);
    cr_assert(strstr(err.msg, "truncated"), "%s", err.msg);

    /* a future version, with a consistent header CRC */
    raw[8] = 2;
    uint32_t crc = (uint32_t)crc32(0, raw, 28);
    for (int i = 0; i < 4; i++)
        raw[28 + i] = (unsigned char)(crc >> (8 * i));
    spit(p, raw, len);
    cr_assert_eq(qd_ckpt_read(p, &c, &err), QD_ERR_FORMAT);
    cr_assert(strstr(err.msg, "unsupported format version 2"), "%s", err.msg);

    spit(p, "PK\3\4 not a checkpoint at all", 29);
    cr_assert_eq(qd_ckpt_read(p, &c, &err), QD_ERR_FORMAT);
    cr_assert(strstr(err.msg, "bad magic"), "%s", err.msg);
    cr_assert_eq(qd_ckpt_read(P("missing"), &c, &err), QD_ERR_IO);
    free(raw);
}

Test(io, ckpt_failed_write_keeps_previous)
{
    qd_error err = {0};
    const char *p = P("ckpt.bin");
    write_ckpt(p, "generation 1");
    qd_ckpt_writer *w;
    qd_ckpt_writer_create(&w, &err);
    char big[10000] = {0};
    qd_ckpt_writer_add(w, "distiller", big, sizeof big, &err);
    qd_io_set_fail_after(5000);
    cr_assert_eq(qd_ckpt_writer_commit(w, p, &err), QD_ERR_IO);
    qd_io_set_fail_after(-1);
    cr_assert(strstr(err.msg, "checkpoint"), "%s", err.msg);
    qd_ckpt_writer_destroy(w);
    qd_ckpt *c;
    cr_assert_eq(qd_ckpt_read(p, &c, &err), QD_OK, "previous checkpoint lost: %s",
                 err.msg);
    const void *d;
    size_t n;
    qd_ckpt_section(c, "distiller", &d, &n, &err);
    cr_assert(memmem(d, n, "generation 1", 12) != NULL);
    qd_ckpt_destroy(c);
    cr_assert_eq(count_temps(g_dir), 0);
}

/* ------------------------------------------------------------------------
 * .npy
 * ---------------------------------------------------------------------- */

/* Values numpy recomputes independently in the check script. */
static void npy_values(qd_npy_dtype t, size_t n, void *out)
{
    for (size_t i = 0; i < n; i++) {
        switch (t) {
        case QD_NPY_F8: ((double *)out)[i] = (double)i * 0.1 - 2.5; break;
        case QD_NPY_I4: ((int32_t *)out)[i] = (int32_t)i * 7 - 50; break;
        case QD_NPY_I8: ((int64_t *)out)[i] = ((int64_t)i << 33) - 5; break;
        case QD_NPY_U1: ((uint8_t *)out)[i] = (uint8_t)((i * 37) % 256); break;
        }
    }
}

Test(io, npy_header_layout)
{
    qd_error err = {0};
    const size_t shape[3] = {2, 3, 4};
    double v[24];
    npy_values(QD_NPY_F8, 24, v);
    cr_assert_eq(qd_npy_write(P("a.npy"), QD_NPY_F8, shape, 3, v, &err), QD_OK, "%s",
                 err.msg);
    size_t len;
    unsigned char *raw = (unsigned char *)slurp(P("a.npy"), &len);
    cr_assert(memcmp(raw, "\x93NUMPY\x01\x00", 8) == 0);
    size_t hlen = raw[8] | (size_t)raw[9] << 8;
    cr_assert_eq((10 + hlen) % 64, 0, "header not 64-byte aligned");
    cr_assert_eq(raw[10 + hlen - 1], '\n');
    const char *dict = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3, 4), }";
    cr_assert(strncmp((char *)raw + 10, dict, strlen(dict)) == 0, "%.*s", (int)hlen,
              raw + 10);
    cr_assert_eq(len, 10 + hlen + 24 * 8);
    double first;
    memcpy(&first, raw + 10 + hlen, 8);
    cr_assert(first == -2.5);
    free(raw);
}

Test(io, npy_roundtrip_all_dtypes_and_ranks)
{
    qd_error err = {0};
    const size_t shapes[][8] = {{0}, {5}, {2, 3}, {1, 2, 1, 2, 1, 2, 1, 3}, {0, 4}};
    const size_t ndims[] = {0, 1, 2, 8, 2};
    for (int t = 0; t < 4; t++) {
        for (size_t s = 0; s < 5; s++) {
            size_t n = 1;
            for (size_t d = 0; d < ndims[s]; d++)
                n *= shapes[s][d];
            unsigned char buf[8 * 64];
            npy_values((qd_npy_dtype)t, n, buf);
            cr_assert_eq(qd_npy_write(P("r.npy"), (qd_npy_dtype)t, shapes[s], ndims[s],
                                      buf, &err), QD_OK, "%s", err.msg);
            qd_npy a;
            cr_assert_eq(qd_npy_read(P("r.npy"), &a, &err), QD_OK, "%s", err.msg);
            cr_assert_eq((int)a.dtype, t);
            cr_assert_eq(a.ndim, ndims[s]);
            cr_assert_eq(a.count, n);
            for (size_t d = 0; d < ndims[s]; d++)
                cr_assert_eq(a.shape[d], shapes[s][d]);
            cr_assert(memcmp(a.data, buf, n * qd_npy_dtype_size((qd_npy_dtype)t)) == 0);
            qd_npy_free(&a);
        }
    }
    const size_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    const double one = 1;
    cr_assert_eq(qd_npy_write(P("r.npy"), QD_NPY_F8, nine, 9, &one, &err),
                 QD_ERR_INVALID);
    cr_assert_eq(access(P("r.npy"), F_OK), 0);
}

Test(io, npy_files_load_in_numpy)
{
    if (!have_python_numpy())
        cr_skip_test("/usr/bin/python3 with numpy not available");
    qd_error err = {0};
    static const struct {
        qd_npy_dtype t;
        size_t ndim;
        size_t shape[8];
    } cases[] = {
        {QD_NPY_F8, 3, {2, 3, 4}}, {QD_NPY_I4, 1, {5}},   {QD_NPY_I8, 2, {2, 2}},
        {QD_NPY_U1, 3, {3, 1, 2}}, {QD_NPY_F8, 0, {0}},   {QD_NPY_F8, 8, {1, 2, 1, 2, 1, 2, 1, 3}},
        {QD_NPY_I4, 2, {0, 3}},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        size_t n = 1;
        for (size_t d = 0; d < cases[k].ndim; d++)
            n *= cases[k].shape[d];
        unsigned char buf[8 * 64];
        npy_values(cases[k].t, n, buf);
        char name[32];
        snprintf(name, sizeof name, "c%zu.npy", k);
        cr_assert_eq(qd_npy_write(P(name), cases[k].t, cases[k].shape, cases[k].ndim,
                                  buf, &err), QD_OK, "%s", err.msg);
    }
    const char *py =
        "import sys, numpy as np\n"
        "d = sys.argv[1]\n"
        "vals = {'f8': lambda i: i * 0.1 - 2.5, 'i4': lambda i: i * 7 - 50,\n"
        "        'i8': lambda i: (i << 33) - 5, 'u1': lambda i: (i * 37) % 256}\n"
        "types = {'f8': np.float64, 'i4': np.int32, 'i8': np.int64, 'u1': np.uint8}\n"
        "cases = [('f8', (2, 3, 4)), ('i4', (5,)), ('i8', (2, 2)), ('u1', (3, 1, 2)),\n"
        "         ('f8', ()), ('f8', (1, 2, 1, 2, 1, 2, 1, 3)), ('i4', (0, 3))]\n"
        "for k, (kind, shape) in enumerate(cases):\n"
        "    a = np.load('%s/c%d.npy' % (d, k))\n"
        "    assert a.dtype == types[kind], (k, a.dtype)\n"
        "    assert a.shape == shape, (k, a.shape)\n"
        "    assert a.flags['C_CONTIGUOUS']\n"
        "    n = int(np.prod(shape))\n"
        "    assert a.ravel().tolist() == [vals[kind](i) for i in range(n)], k\n"
        "print('numpy ok')\n";
    cr_assert_eq(run_python(py, g_dir), 0, "numpy rejected or misread our .npy files");
}

Test(io, npy_reads_numpy_written_files)
{
    if (!have_python_numpy())
        cr_skip_test("/usr/bin/python3 with numpy not available");
    const char *py =
        "import sys, numpy as np\n"
        "d = sys.argv[1]\n"
        "np.save(d + '/n1.npy', np.arange(12, dtype='<f8').reshape(3, 4) * 0.25)\n"
        "np.save(d + '/n2.npy', np.array([1, -2, 3], dtype='<i4'))\n"
        "np.save(d + '/n3.npy', np.array(7, dtype='<i8'))\n"
        "np.save(d + '/n4.npy', np.arange(256, dtype='u1'))\n"
        "np.save(d + '/n5.npy', np.asfortranarray(np.ones((2, 3))))\n"
        "np.save(d + '/n6.npy', np.ones(3, dtype='>f8'))\n"
        "np.save(d + '/n7.npy', np.ones(3, dtype='<f4'))\n"
        "np.save(d + '/n8.npy', np.zeros((0,)))\n";
    cr_assert_eq(run_python(py, g_dir), 0);
    qd_error err = {0};
    qd_npy a;
    cr_assert_eq(qd_npy_read(P("n1.npy"), &a, &err), QD_OK, "%s", err.msg);
    cr_assert(a.dtype == QD_NPY_F8 && a.ndim == 2 && a.shape[0] == 3 && a.shape[1] == 4);
    for (size_t i = 0; i < 12; i++)
        cr_assert(((double *)a.data)[i] == 0.25 * (double)i);
    qd_npy_free(&a);
    cr_assert_eq(qd_npy_read(P("n2.npy"), &a, &err), QD_OK, "%s", err.msg);
    cr_assert(a.dtype == QD_NPY_I4 && a.count == 3 && ((int32_t *)a.data)[1] == -2);
    qd_npy_free(&a);
    cr_assert_eq(qd_npy_read(P("n3.npy"), &a, &err), QD_OK, "%s", err.msg);
    cr_assert(a.dtype == QD_NPY_I8 && a.ndim == 0 && a.count == 1 &&
              ((int64_t *)a.data)[0] == 7);
    qd_npy_free(&a);
    cr_assert_eq(qd_npy_read(P("n4.npy"), &a, &err), QD_OK, "%s", err.msg);
    cr_assert(a.dtype == QD_NPY_U1 && a.count == 256 && ((uint8_t *)a.data)[200] == 200);
    qd_npy_free(&a);
    cr_assert_eq(qd_npy_read(P("n5.npy"), &a, &err), QD_ERR_UNSUPPORTED);
    cr_assert(strstr(err.msg, "Fortran"), "%s", err.msg);
    cr_assert_eq(qd_npy_read(P("n6.npy"), &a, &err), QD_ERR_UNSUPPORTED);
    cr_assert(strstr(err.msg, ">f8"), "%s", err.msg);
    cr_assert_eq(qd_npy_read(P("n7.npy"), &a, &err), QD_ERR_UNSUPPORTED);
    cr_assert_eq(qd_npy_read(P("n8.npy"), &a, &err), QD_OK, "%s", err.msg);
    cr_assert(a.ndim == 1 && a.shape[0] == 0 && a.count == 0);
    qd_npy_free(&a);
}

/* A .npy image with the given header text (padded like numpy) and data. */
static unsigned char *make_npy(const char *dict, int major, size_t data_len,
                               size_t *len)
{
    size_t pre = major == 1 ? 10 : 12;
    size_t dl = strlen(dict);
    size_t hlen = (pre + dl + 1 + 63) / 64 * 64 - pre;
    *len = pre + hlen + data_len;
    unsigned char *b = calloc(1, *len);
    memcpy(b, "\x93NUMPY", 6);
    b[6] = (unsigned char)major;
    b[7] = 0;
    if (major == 1) {
        b[8] = (unsigned char)hlen;
        b[9] = (unsigned char)(hlen >> 8);
    } else {
        for (int i = 0; i < 4; i++)
            b[8 + i] = (unsigned char)(hlen >> (8 * i));
    }
    memset(b + pre, ' ', hlen);
    memcpy(b + pre, dict, dl);
    b[pre + hlen - 1] = '\n';
    return b;
}

Test(io, npy_malformed_headers)
{
    static const struct {
        const char *dict;
        size_t data;
        int major;
        int rc;
        const char *msg;
    } cases[] = {
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", 48, 1, QD_OK, ""},
        {"{\"descr\": \"<i4\", \"shape\": (3,), \"fortran_order\": False}", 12, 1, QD_OK, ""},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", 16, 2, QD_OK, ""},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (), }", 8, 1, QD_OK, ""},
        {"{'descr': '<f8', 'fortran_order': False}", 8, 1, QD_ERR_FORMAT, "missing 'shape'"},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (1,), 'foo': 1}", 8, 1,
         QD_ERR_FORMAT, "unexpected key"},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (3)}", 24, 1, QD_ERR_FORMAT,
         "needs (n,)"},
        {"{'descr': '<f8', 'descr': '<f8', 'fortran_order': False, 'shape': (1,)}", 8, 1,
         QD_ERR_FORMAT, "duplicate"},
        {"{'descr': '<f8', 'fortran_order': True, 'shape': (1,)}", 8, 1,
         QD_ERR_UNSUPPORTED, "Fortran"},
        {"{'descr': '<f8, 'fortran_order': False, 'shape': (1,)}", 8, 1,
         QD_ERR_UNSUPPORTED, "'<f8, '"},
        {"{'descr': '<f8}", 8, 1, QD_ERR_FORMAT, "unterminated"},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (1,)", 8, 1, QD_ERR_FORMAT,
         "expected ',' or '}'"},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999999999999999,)}",
         8, 1, QD_ERR_FORMAT, "bad dimension"},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296, 16)}",
         8, 1, QD_ERR_FORMAT, "too large"},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (-1,)}", 8, 1, QD_ERR_FORMAT,
         ""},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (2,,)}", 16, 1, QD_ERR_FORMAT,
         ""},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (,)}", 16, 1, QD_ERR_FORMAT,
         ""},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1)}", 8, 1,
         QD_ERR_UNSUPPORTED, "dimensions"},
        {"{'descr': '<c16', 'fortran_order': False, 'shape': (1,)}", 16, 1,
         QD_ERR_UNSUPPORTED, "'<c16'"},
        {"{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (1,)}", 8, 1,
         QD_ERR_UNSUPPORTED, "structured"},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (1,)} x", 8, 1, QD_ERR_FORMAT,
         "junk"},
        {"{'descr': '<f8', 'fortran_order': 0, 'shape': (1,)}", 8, 1, QD_ERR_FORMAT,
         "not a bool"},
        {"", 0, 1, QD_ERR_FORMAT, "not a dict"},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", 47, 1,
         QD_ERR_FORMAT, "truncated"},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", 49, 1,
         QD_ERR_FORMAT, "trailing"},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", 48, 3,
         QD_ERR_UNSUPPORTED, "version 3.0"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        size_t len;
        unsigned char *b = make_npy(cases[k].dict, cases[k].major, cases[k].data, &len);
        qd_npy a;
        qd_error err = {0};
        int rc = qd_npy_parse(b, len, &a, &err);
        cr_assert_eq(rc, cases[k].rc, "case %zu (%s): rc %d, %s", k, cases[k].dict, rc,
                     err.msg);
        cr_assert(strstr(err.msg, cases[k].msg), "case %zu: message '%s' lacks '%s'", k,
                  err.msg, cases[k].msg);
        if (rc == QD_OK)
            qd_npy_free(&a);
        else
            cr_assert_null(a.data);
        free(b);
    }
    /* header length pointing past the end, bad magic, tiny files */
    size_t len;
    unsigned char *b = make_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1,)}",
                                1, 8, &len);
    qd_npy a;
    qd_error err = {0};
    b[9] = 0xff;
    cr_assert_eq(qd_npy_parse(b, len, &a, &err), QD_ERR_FORMAT);
    cr_assert(strstr(err.msg, "exceeds"), "%s", err.msg);
    b[9] = 0;
    b[1] = 'X';
    cr_assert_eq(qd_npy_parse(b, len, &a, &err), QD_ERR_FORMAT);
    b[1] = 'N';
    for (size_t cut = 0; cut < len; cut++) {
        unsigned char *c = malloc(cut ? cut : 1);
        memcpy(c, b, cut);
        cr_assert_neq(qd_npy_parse(c, cut, &a, &err), QD_OK, "prefix %zu accepted", cut);
        free(c);
    }
    cr_assert_eq(qd_npy_parse(b, len, &a, &err), QD_OK, "%s", err.msg);
    qd_npy_free(&a);
    free(b);
}

/* ------------------------------------------------------------------------
 * PNG grid
 * ---------------------------------------------------------------------- */

/* Decode a PNG with libpng; returns rows of 8-bit samples (caller frees). */
static unsigned char *read_png(const char *path, unsigned *w, unsigned *h,
                               int *channels)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "png %s missing", path);
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png)))
        cr_assert_fail("libpng could not decode %s", path);
    png_init_io(png, f);
    png_read_png(png, info, PNG_TRANSFORM_IDENTITY, NULL);
    *w = png_get_image_width(png, info);
    *h = png_get_image_height(png, info);
    cr_assert_eq(png_get_bit_depth(png, info), 8);
    int ct = png_get_color_type(png, info);
    *channels = ct == PNG_COLOR_TYPE_GRAY ? 1 : ct == PNG_COLOR_TYPE_RGB ? 3 : -1;
    png_bytepp rows = png_get_rows(png, info);
    size_t stride = (size_t)*w * (size_t)(*channels > 0 ? *channels : 1);
    unsigned char *out = malloc(stride * *h);
    for (unsigned y = 0; y < *h; y++)
        memcpy(out + y * stride, rows[y], stride);
    png_destroy_read_struct(&png, &info, NULL);
    fclose(f);
    return out;
}

Test(io, png_grid_grey_per_image_upscaled)
{
    /* 5 images of 3x4 in a 2x3 grid, upscale 2. Image i holds a_i + b_i*k
     * with k in 0..255 and both 0 and 255 present, so per-image min-max
     * scaling must give exactly k. */
    enum { N = 5, H = 3, W = 4 };
    double img[N * H * W];
    int k_of[N][H * W];
    for (int i = 0; i < N; i++) {
        double a = -1.0 - i, b = 0.01 * (i + 1);
        for (int j = 0; j < H * W; j++) {
            int k = j == 0 ? 0 : j == 1 ? 255 : (i * 53 + j * 17) % 256;
            k_of[i][j] = k;
            img[i * H * W + j] = a + b * k;
        }
    }
    qd_error err = {0};
    const char *p = P("grid.png");
    cr_assert_eq(qd_png_write_grid(p, img, N, 1, H, W, 2, 3, QD_PNG_SCALE_PER_IMAGE, 2,
                                   &err), QD_OK, "%s", err.msg);
    unsigned w, h;
    int ch;
    unsigned char *px = read_png(p, &w, &h, &ch);
    cr_assert_eq(ch, 1);
    cr_assert_eq(w, 3 * (2 * W + 1) - 1);
    cr_assert_eq(h, 2 * (2 * H + 1) - 1);
    for (unsigned y = 0; y < h; y++) {
        for (unsigned x = 0; x < w; x++) {
            unsigned r = y / (2 * H + 1), ty = y % (2 * H + 1);
            unsigned c = x / (2 * W + 1), tx = x % (2 * W + 1);
            unsigned i = r * 3 + c;
            int want;
            if (ty == 2 * H || tx == 2 * W || i >= N)
                want = QD_PNG_GAP_VALUE;
            else
                want = k_of[i][(ty / 2) * W + tx / 2];
            cr_assert_eq(px[y * w + x], want, "pixel (%u,%u): %d, want %d", x, y,
                         px[y * w + x], want);
        }
    }
    free(px);
    cr_assert_eq(count_temps(g_dir), 0);
}

Test(io, png_grid_rgb_global_scale)
{
    /* 2 RGB images 2x2 side by side; one min..max over both images */
    enum { N = 2, C = 3, H = 2, W = 2 };
    double img[N * C * H * W];
    int k_of[N * C * H * W];
    for (int j = 0; j < N * C * H * W; j++) {
        int k = j == 5 ? 0 : j == 17 ? 255 : (j * 29 + 3) % 250 + 2;
        k_of[j] = k;
        img[j] = 3.0 + 0.5 * k;
    }
    qd_error err = {0};
    const char *p = P("rgb.png");
    cr_assert_eq(qd_png_write_grid(p, img, N, C, H, W, 1, 2, QD_PNG_SCALE_GLOBAL, 1, &err),
                 QD_OK, "%s", err.msg);
    unsigned w, h;
    int ch;
    unsigned char *px = read_png(p, &w, &h, &ch);
    cr_assert_eq(ch, 3);
    cr_assert_eq(w, 5);
    cr_assert_eq(h, 2);
    for (unsigned y = 0; y < h; y++)
        for (unsigned x = 0; x < w; x++)
            for (int c = 0; c < C; c++) {
                int want = x == 2 ? QD_PNG_GAP_VALUE
                                  : k_of[((x / 3) * C + c) * H * W + y * W + x % 3];
                cr_assert_eq(px[(y * w + x) * 3 + c], want, "(%u,%u,%d)", x, y, c);
            }
    free(px);
    /* per-image scaling of the same set differs: image 0 lacks 255 */
    cr_assert_eq(qd_png_write_grid(p, img, N, C, H, W, 1, 2, QD_PNG_SCALE_PER_IMAGE, 1,
                                   &err), QD_OK);
    px = read_png(p, &w, &h, &ch);
    int maxv = 0;
    for (unsigned y = 0; y < h; y++)
        for (unsigned x = 0; x < 2; x++)
            for (int c = 0; c < 3; c++)
                if (px[(y * w + x) * 3 + c] > maxv)
                    maxv = px[(y * w + x) * 3 + c];
    cr_assert_eq(maxv, 255);
    free(px);
}

Test(io, png_grid_rejects_bad_input)
{
    qd_error err = {0};
    double img[8] = {0, 1, 2, 3, 4, NAN, 6, 7};
    const char *p = P("bad.png");
    cr_assert_eq(qd_png_write_grid(p, img, 2, 1, 2, 2, 1, 2, QD_PNG_SCALE_GLOBAL, 1, &err),
                 QD_ERR_NUMERIC);
    cr_assert(strstr(err.msg, "image 1"), "%s", err.msg);
    cr_assert_neq(access(p, F_OK), 0, "a file was written despite the error");
    img[5] = 5;
    cr_assert_eq(qd_png_write_grid(p, img, 2, 2, 2, 1, 1, 2, QD_PNG_SCALE_GLOBAL, 1, &err),
                 QD_ERR_INVALID);
    cr_assert_eq(qd_png_write_grid(p, img, 2, 1, 2, 2, 1, 1, QD_PNG_SCALE_GLOBAL, 1, &err),
                 QD_ERR_INVALID);
    cr_assert_eq(qd_png_write_grid(p, img, 2, 1, 2, 2, 0, 2, QD_PNG_SCALE_GLOBAL, 1, &err),
                 QD_ERR_INVALID);
    /* a constant image is black, not NaN-scaled */
    double flat[4] = {0.3, 0.3, 0.3, 0.3};
    cr_assert_eq(qd_png_write_grid(p, flat, 1, 1, 2, 2, 1, 1, QD_PNG_SCALE_PER_IMAGE, 1,
                                   &err), QD_OK, "%s", err.msg);
    unsigned w, h;
    int ch;
    unsigned char *px = read_png(p, &w, &h, &ch);
    cr_assert(w == 2 && h == 2 && px[0] == 0 && px[3] == 0);
    free(px);
    /* injected disk-full: no file, no temp */
    qd_io_set_fail_after(10);
    cr_assert_eq(qd_png_write_grid(P("full.png"), flat, 1, 1, 2, 2, 1, 1,
                                   QD_PNG_SCALE_PER_IMAGE, 1, &err), QD_ERR_IO);
    qd_io_set_fail_after(-1);
    cr_assert_neq(access(P("full.png"), F_OK), 0);
    cr_assert_eq(count_temps(g_dir), 0);
}

/* ------------------------------------------------------------------------
 * CSV
 * ---------------------------------------------------------------------- */

static const char *const k_cols[] = {"iteration", "loss", "lr_mean"};

Test(io, csv_rows_full_precision)
{
    qd_error err = {0};
    const char *p = P("metrics.csv");
    qd_csv *csv;
    cr_assert_eq(qd_csv_open(p, k_cols, 3, &csv, &err), QD_OK, "%s", err.msg);
    cr_assert_eq(qd_csv_rows(csv), 0);
    cr_assert_eq(qd_csv_column(csv, "loss"), 1);
    cr_assert_eq(qd_csv_column(csv, "nope"), -1);
    qd_csv_set_i64(csv, 0, 0);
    qd_csv_set_f64(csv, 1, 0.1);
    qd_csv_set_f64(csv, 2, 1.0 / 3.0);
    cr_assert_eq(qd_csv_commit_row(csv, &err), QD_OK, "%s", err.msg);
    qd_csv_set_i64(csv, 0, 9007199254740993LL); /* not representable as double */
    qd_csv_set_f64(csv, 1, NAN);
    cr_assert_eq(qd_csv_commit_row(csv, &err), QD_OK); /* lr_mean left empty */
    const double row[3] = {2, INFINITY, -INFINITY};
    cr_assert_eq(qd_csv_row(csv, row, 3, &err), QD_OK);
    cr_assert_eq(qd_csv_row(csv, row, 2, &err), QD_ERR_INVALID);
    cr_assert_eq(qd_csv_rows(csv), 3);
    qd_csv_close(csv);
    char *s = slurp(p, NULL);
    cr_assert_str_eq(s, "iteration,loss,lr_mean\n"
                        "0,0.10000000000000001,0.33333333333333331\n"
                        "9007199254740993,nan,\n"
                        "2,inf,-inf\n");
    /* %.17g reads back bit-exact */
    cr_assert(strtod("0.33333333333333331", NULL) == 1.0 / 3.0);
    free(s);
}

Test(io, csv_reopen_append_and_header_check)
{
    qd_error err = {0};
    const char *p = P("metrics.csv");
    qd_csv *csv;
    const double r[3] = {1, 2, 3};
    cr_assert_eq(qd_csv_open(p, k_cols, 3, &csv, &err), QD_OK);
    qd_csv_row(csv, r, 3, &err);
    qd_csv_close(csv);
    cr_assert_eq(qd_csv_open(p, k_cols, 3, &csv, &err), QD_OK, "%s", err.msg);
    cr_assert_eq(qd_csv_rows(csv), 1);
    cr_assert_eq(qd_csv_row(csv, r, 3, &err), QD_OK);
    qd_csv_close(csv);
    char *s = slurp(p, NULL);
    cr_assert_str_eq(s, "iteration,loss,lr_mean\n1,2,3\n1,2,3\n");
    free(s);
    const char *other[] = {"iteration", "loss"};
    cr_assert_eq(qd_csv_open(p, other, 2, &csv, &err), QD_ERR_FORMAT);
    cr_assert(strstr(err.msg, "iteration,loss,lr_mean") && strstr(err.msg, p), "%s",
              err.msg);
    const char *bad[] = {"a,b"};
    cr_assert_eq(qd_csv_open(P("x.csv"), bad, 1, &csv, &err), QD_ERR_INVALID);
    const char *dup[] = {"a", "a"};
    cr_assert_eq(qd_csv_open(P("x.csv"), dup, 2, &csv, &err), QD_ERR_INVALID);
}

Test(io, csv_partial_row_from_killed_writer_dropped)
{
    qd_error err = {0};
    const char *p = P("metrics.csv");
    const char *text = "iteration,loss,lr_mean\n1,2,3\n4,5,6\n7,8";
    spit(p, text, strlen(text));
    qd_csv *csv;
    cr_assert_eq(qd_csv_open(p, k_cols, 3, &csv, &err), QD_OK, "%s", err.msg);
    cr_assert_eq(qd_csv_rows(csv), 2);
    const double r[3] = {7, 8, 9};
    cr_assert_eq(qd_csv_row(csv, r, 3, &err), QD_OK);
    qd_csv_close(csv);
    char *s = slurp(p, NULL);
    cr_assert_str_eq(s, "iteration,loss,lr_mean\n1,2,3\n4,5,6\n7,8,9\n");
    free(s);
}

Test(io, csv_truncate_rows_for_resume)
{
    qd_error err = {0};
    const char *p = P("metrics.csv");
    qd_csv *csv;
    cr_assert_eq(qd_csv_open(p, k_cols, 3, &csv, &err), QD_OK);
    for (int i = 0; i < 5; i++) {
        const double r[3] = {i, i * 0.5, 1};
        qd_csv_row(csv, r, 3, &err);
    }
    qd_csv_close(csv);
    cr_assert_eq(qd_csv_truncate_rows(p, 2, &err), QD_OK, "%s", err.msg);
    char *s = slurp(p, NULL);
    cr_assert_str_eq(s, "iteration,loss,lr_mean\n0,0,1\n1,0.5,1\n");
    free(s);
    cr_assert_eq(qd_csv_truncate_rows(p, 3, &err), QD_ERR_FORMAT);
    cr_assert(strstr(err.msg, "holds 2 complete rows"), "%s", err.msg);
    cr_assert_eq(qd_csv_truncate_rows(p, 0, &err), QD_OK);
    s = slurp(p, NULL);
    cr_assert_str_eq(s, "iteration,loss,lr_mean\n");
    free(s);
    cr_assert_eq(qd_csv_open(p, k_cols, 3, &csv, &err), QD_OK);
    cr_assert_eq(qd_csv_rows(csv), 0);
    qd_csv_close(csv);
    cr_assert_eq(count_temps(g_dir), 0);
}

Test(io, csv_failed_append_leaves_no_half_row)
{
    qd_error err = {0};
    const char *p = P("metrics.csv");
    qd_csv *csv;
    cr_assert_eq(qd_csv_open(p, k_cols, 3, &csv, &err), QD_OK);
    const double r[3] = {1, 0.1, 2};
    cr_assert_eq(qd_csv_row(csv, r, 3, &err), QD_OK);
    qd_io_set_fail_after(5); /* the next row dies after 5 bytes */
    cr_assert_eq(qd_csv_row(csv, r, 3, &err), QD_ERR_IO);
    qd_io_set_fail_after(-1);
    cr_assert(strstr(err.msg, p), "%s", err.msg);
    char *s = slurp(p, NULL);
    cr_assert_str_eq(s, "iteration,loss,lr_mean\n1,0.10000000000000001,2\n");
    free(s);
    cr_assert_eq(qd_csv_rows(csv), 1);
    /* the log goes on after the disk frees up */
    cr_assert_eq(qd_csv_row(csv, r, 3, &err), QD_OK, "%s", err.msg);
    cr_assert_eq(qd_csv_rows(csv), 2);
    qd_csv_close(csv);
}

/* ------------------------------------------------------------------------
 * JSON
 * ---------------------------------------------------------------------- */

static const char *k_name = "run \"\xce\xb1\"\n\t\\ \x01\x1f/ \xe2\x9c\x93";

static qd_json *sample_doc(void)
{
    qd_json *j;
    qd_error err;
    cr_assert_eq(qd_json_create(&j, &err), QD_OK);
    qd_json_begin_object(j);
    qd_json_key(j, "name");
    qd_json_string(j, k_name);
    qd_json_key(j, "distilled");
    qd_json_begin_object(j);
    qd_json_key(j, "test_acc");
    qd_json_number(j, 0.8125);
    qd_json_key(j, "loss");
    qd_json_number(j, NAN);
    qd_json_key(j, "inf");
    qd_json_number(j, -INFINITY);
    qd_json_key(j, "neg0");
    qd_json_number(j, -0.0);
    qd_json_key(j, "tiny");
    qd_json_number(j, 5e-324);
    qd_json_key(j, "third");
    qd_json_number(j, 1.0 / 3.0);
    qd_json_end_object(j);
    qd_json_key(j, "runs");
    qd_json_begin_array(j);
    qd_json_begin_object(j);
    qd_json_key(j, "seed");
    qd_json_int(j, 1);
    qd_json_key(j, "acc");
    qd_json_number(j, 0.5);
    qd_json_end_object(j);
    qd_json_begin_object(j);
    qd_json_key(j, "seed");
    qd_json_uint(j, UINT64_MAX);
    qd_json_key(j, "acc");
    qd_json_number(j, 0.25);
    qd_json_end_object(j);
    qd_json_end_array(j);
    qd_json_key(j, "ok");
    qd_json_bool(j, 1);
    qd_json_key(j, "none");
    qd_json_null(j);
    qd_json_key(j, "empty");
    qd_json_begin_array(j);
    qd_json_end_array(j);
    qd_json_key(j, "eobj");
    qd_json_begin_object(j);
    qd_json_end_object(j);
    qd_json_key(j, "bad");
    qd_json_string(j, "a\xff" "b");
    qd_json_key(j, "i64min");
    qd_json_int(j, INT64_MIN);
    qd_json_end_object(j);
    return j;
}

static const char *k_doc =
    "{\n"
    "  \"name\": \"run \\\"\xce\xb1\\\"\\n\\t\\\\ \\u0001\\u001f/ \xe2\x9c\x93\",\n"
    "  \"distilled\": {\n"
    "    \"test_acc\": 0.8125,\n"
    "    \"loss\": null,\n"
    "    \"inf\": null,\n"
    "    \"neg0\": -0,\n"
    "    \"tiny\": 4.9406564584124654e-324,\n"
    "    \"third\": 0.33333333333333331\n"
    "  },\n"
    "  \"runs\": [\n"
    "    {\n"
    "      \"seed\": 1,\n"
    "      \"acc\": 0.5\n"
    "    },\n"
    "    {\n"
    "      \"seed\": 18446744073709551615,\n"
    "      \"acc\": 0.25\n"
    "    }\n"
    "  ],\n"
    "  \"ok\": true,\n"
    "  \"none\": null,\n"
    "  \"empty\": [],\n"
    "  \"eobj\": {},\n"
    "  \"bad\": \"a\\ufffdb\",\n"
    "  \"i64min\": -9223372036854775808\n"
    "}\n";

Test(io, json_emitter_exact_output)
{
    qd_json *j = sample_doc();
    qd_error err = {0};
    const char *text;
    size_t len;
    cr_assert_eq(qd_json_finish(j, &text, &len, &err), QD_OK, "%s", err.msg);
    cr_assert_str_eq(text, k_doc);
    cr_assert_eq(len, strlen(k_doc));
    /* finish is idempotent */
    cr_assert_eq(qd_json_finish(j, &text, &len, &err), QD_OK);
    cr_assert_eq(len, strlen(k_doc));
    cr_assert_eq(qd_json_write_file(j, P("result.json"), &err), QD_OK, "%s", err.msg);
    qd_json_destroy(j);
    char *s = slurp(P("result.json"), NULL);
    cr_assert_str_eq(s, k_doc);
    free(s);
}

Test(io, json_output_parses_in_python)
{
    if (access("/usr/bin/python3", X_OK) != 0)
        cr_skip_test("/usr/bin/python3 not available");
    qd_json *j = sample_doc();
    qd_error err = {0};
    cr_assert_eq(qd_json_write_file(j, P("result.json"), &err), QD_OK);
    qd_json_destroy(j);
    const char *py =
        "import sys, json\n"
        "d = json.load(open(sys.argv[1], encoding='utf-8'))\n"
        "assert d['name'] == 'run \"\\u03b1\"\\n\\t\\\\ \\x01\\x1f/ \\u2713', repr(d['name'])\n"
        "assert d['distilled']['third'] == 1 / 3\n"
        "assert d['distilled']['tiny'] == 5e-324\n"
        "assert d['distilled']['loss'] is None and d['distilled']['inf'] is None\n"
        "assert d['runs'][1]['seed'] == 2 ** 64 - 1 and d['i64min'] == -2 ** 63\n"
        "assert d['bad'] == 'a\\ufffdb' and d['ok'] is True and d['empty'] == []\n";
    cr_assert_eq(run_python(py, P("result.json")), 0, "python's json disagrees");
}

Test(io, json_reader_paths)
{
    qd_json_value *v;
    qd_error err = {0};
    cr_assert_eq(qd_json_parse(k_doc, strlen(k_doc), &v, &err), QD_OK, "%s", err.msg);
    double d;
    cr_assert_eq(qd_json_get_number(v, "distilled.test_acc", &d, &err), QD_OK);
    cr_assert(d == 0.8125);
    cr_assert_eq(qd_json_get_number(v, "distilled.third", &d, &err), QD_OK);
    cr_assert(d == 1.0 / 3.0, "%.17g", d);
    cr_assert_eq(qd_json_get_number(v, "distilled.tiny", &d, &err), QD_OK);
    cr_assert(d == 5e-324);
    cr_assert_eq(qd_json_get_number(v, "runs.1.acc", &d, &err), QD_OK);
    cr_assert(d == 0.25);
    cr_assert_eq(qd_json_get_number(v, "distilled.loss", &d, &err), QD_ERR_NUMERIC);
    cr_assert_eq(qd_json_get_number(v, "distilled.nope", &d, &err), QD_ERR_INVALID);
    cr_assert(strstr(err.msg, "distilled.nope"), "%s", err.msg);
    cr_assert_eq(qd_json_get_number(v, "name", &d, &err), QD_ERR_INVALID);
    cr_assert_null(qd_json_get(v, "runs.2.acc"));
    cr_assert_null(qd_json_get(v, "runs.x"));
    cr_assert_null(qd_json_get(v, "runs.1.acc.deeper"));
    const char *s;
    cr_assert_eq(qd_json_get_string(v, "name", &s, &err), QD_OK);
    cr_assert_str_eq(s, k_name);
    cr_assert_eq(qd_json_get_string(v, "bad", &s, &err), QD_OK);
    cr_assert_str_eq(s, "a\xef\xbf\xbd" "b");
    cr_assert_eq(qd_json_type_of(qd_json_get(v, "ok")), QD_JSON_BOOL);
    cr_assert(qd_json_as_bool(qd_json_get(v, "ok")));
    cr_assert_eq(qd_json_size(qd_json_get(v, "runs")), 2);
    cr_assert_eq(qd_json_size(qd_json_get(v, "eobj")), 0);
    cr_assert_str_eq(qd_json_key_at(v, 1), "distilled");
    cr_assert_eq(qd_json_type_of(qd_json_get(v, "none")), QD_JSON_NULL);
    qd_json_value_free(v);

    /* escapes, duplicates (last wins), whitespace */
    const char *t = " {\"s\": \"\\u00e9\\ud83d\\ude00\\/\\b\\u0000x\", \"k\": 1, \"k\": 2}\r\n";
    cr_assert_eq(qd_json_parse(t, strlen(t), &v, &err), QD_OK, "%s", err.msg);
    size_t n;
    s = qd_json_as_string(qd_json_get(v, "s"), &n);
    cr_assert_eq(n, 10);
    cr_assert(memcmp(s, "\xc3\xa9\xf0\x9f\x98\x80/\b\0x", 10) == 0);
    cr_assert(qd_json_as_number(qd_json_get(v, "k")) == 2);
    qd_json_value_free(v);

    cr_assert_eq(qd_json_read_file(P("missing.json"), &v, &err), QD_ERR_IO);
}

Test(io, json_reader_rejects_invalid)
{
    static const struct {
        const char *text;
        const char *msg;
    } bad[] = {
        {"", "end of input"},
        {"{\"a\": 1,}", "expected a string key"},
        {"[1, 2,]", "unexpected character"},
        {"// c\n{}", "unexpected character"},
        {"{\"a\" 1}", "expected ':'"},
        {"{\"a\": 1", "expected ',' or '}'"},
        {"\"abc", "unterminated"},
        {"\"a\x01\"", "control character"},
        {"\"\\x\"", "bad escape"},
        {"\"\\ud800\"", "unpaired surrogate"},
        {"\"\\udc00\"", "unpaired surrogate"},
        {"\"\\u12\"", "truncated \\u escape"},
        {"\"\\u12zz\"", "hex digit"},
        {"\"\xff\"", "UTF-8"},
        {"\"\xc0\xaf\"", "UTF-8"},
        {"\"\xed\xa0\x80\"", "UTF-8"},
        {"01", "trailing"},
        {"1.", "digits must follow '.'"},
        {".5", "unexpected character"},
        {"+1", "unexpected character"},
        {"1e", "exponent"},
        {"NaN", "unexpected character"},
        {"nul", "unknown literal"},
        {"1e400", "out of range"},
        {"{} {}", "trailing"},
        {"[1]\n  x", "2:3"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        qd_json_value *v = (qd_json_value *)1;
        qd_error err = {0};
        int rc = qd_json_parse(bad[k].text, strlen(bad[k].text), &v, &err);
        cr_assert_eq(rc, QD_ERR_FORMAT, "case %zu '%s' accepted", k, bad[k].text);
        cr_assert_null(v);
        cr_assert(strstr(err.msg, bad[k].msg), "case %zu: '%s' lacks '%s'", k, err.msg,
                  bad[k].msg);
    }
}

Test(io, json_nesting_limit)
{
    qd_error err = {0};
    qd_json_value *v;
    char buf[2 * QD_JSON_MAX_DEPTH + 2];
    for (int d = QD_JSON_MAX_DEPTH; d <= QD_JSON_MAX_DEPTH + 1; d++) {
        memset(buf, '[', (size_t)d);
        memset(buf + d, ']', (size_t)d);
        int rc = qd_json_parse(buf, 2 * (size_t)d, &v, &err);
        if (d == QD_JSON_MAX_DEPTH) {
            cr_assert_eq(rc, QD_OK, "depth %d: %s", d, err.msg);
            qd_json_value_free(v);
        } else {
            cr_assert_eq(rc, QD_ERR_FORMAT);
            cr_assert(strstr(err.msg, "nesting too deep"), "%s", err.msg);
        }
    }
    /* a million open brackets: rejected without exhausting the stack */
    size_t n = 1000000;
    char *deep = malloc(n);
    memset(deep, '[', n);
    cr_assert_eq(qd_json_parse(deep, n, &v, &err), QD_ERR_FORMAT);
    free(deep);
}

Test(io, json_emitter_misuse_reported)
{
    qd_error err = {0};
    qd_json *j;
    qd_json_create(&j, &err);
    qd_json_begin_object(j);
    qd_json_number(j, 1);
    qd_json_end_object(j);
    cr_assert_eq(qd_json_finish(j, NULL, NULL, &err), QD_ERR_INTERNAL);
    cr_assert(strstr(err.msg, "without a key"), "%s", err.msg);
    qd_json_destroy(j);

    qd_json_create(&j, &err);
    qd_json_begin_array(j);
    cr_assert_eq(qd_json_finish(j, NULL, NULL, &err), QD_ERR_INTERNAL);
    cr_assert(strstr(err.msg, "incomplete"), "%s", err.msg);
    qd_json_end_object(j);
    cr_assert_eq(qd_json_finish(j, NULL, NULL, &err), QD_ERR_INTERNAL);
    cr_assert(strstr(err.msg, "end_object"), "%s", err.msg);
    cr_assert_eq(qd_json_write_file(j, P("x.json"), &err), QD_ERR_INTERNAL);
    cr_assert_neq(access(P("x.json"), F_OK), 0);
    qd_json_destroy(j);

    qd_json_create(&j, &err);
    for (int i = 0; i <= QD_JSON_MAX_DEPTH; i++)
        qd_json_begin_array(j);
    cr_assert_eq(qd_json_finish(j, NULL, NULL, &err), QD_ERR_INTERNAL);
    cr_assert(strstr(err.msg, "nesting"), "%s", err.msg);
    qd_json_destroy(j);
}

/* ------------------------------------------------------------------------
 * Mutation smoke test of the three parsers (libFuzzer goes further; under
 * ASan this catches any out-of-bounds read on corrupted input).
 * ---------------------------------------------------------------------- */

Test(io, parsers_survive_random_mutations, .timeout = 60)
{
    qd_error err = {0};
    qd_rng rng;
    qd_rng_seed(&rng, 2024, 1);
    /* seeds */
    const size_t shape[2] = {3, 2};
    const double v[6] = {1, 2, 3, 4, 5, 6};
    qd_npy_write(P("s.npy"), QD_NPY_F8, shape, 2, v, &err);
    write_ckpt(P("s.ckpt"), "payload");
    size_t nlen, clen, jlen = strlen(k_doc);
    unsigned char *npy = (unsigned char *)slurp(P("s.npy"), &nlen);
    unsigned char *ck = (unsigned char *)slurp(P("s.ckpt"), &clen);
    int accepted[3] = {0, 0, 0};
    for (int it = 0; it < 3000; it++) {
        for (int which = 0; which < 3; which++) {
            const unsigned char *src = which == 0 ? npy : which == 1 ? ck
                                                    : (const unsigned char *)k_doc;
            size_t len = which == 0 ? nlen : which == 1 ? clen : jlen;
            unsigned char *m = malloc(len);
            memcpy(m, src, len);
            int edits = 1 + (int)qd_rng_bounded(&rng, 4);
            for (int e = 0; e < edits; e++) {
                size_t at = qd_rng_bounded(&rng, (uint32_t)len);
                switch (qd_rng_bounded(&rng, 3)) {
                case 0: m[at] ^= (unsigned char)(1u << qd_rng_bounded(&rng, 8)); break;
                case 1: m[at] = (unsigned char)qd_rng_u32(&rng); break;
                case 2: len = at; break; /* truncate */
                }
                if (len == 0)
                    break;
            }
            int rc;
            if (which == 0) {
                qd_npy a;
                rc = qd_npy_parse(m, len, &a, &err);
                if (!rc)
                    qd_npy_free(&a);
            } else if (which == 1) {
                qd_ckpt *c;
                rc = qd_ckpt_parse(m, len, "m", &c, &err);
                if (!rc)
                    qd_ckpt_destroy(c);
            } else {
                qd_json_value *jv;
                rc = qd_json_parse((const char *)m, len, &jv, &err);
                if (!rc)
                    qd_json_value_free(jv);
            }
            size_t orig = which == 0 ? nlen : which == 1 ? clen : jlen;
            int changed = len != orig || memcmp(m, src, len) != 0;
            accepted[which] += rc == QD_OK && changed;
            free(m);
        }
    }
    /* checkpoints are fully CRC-protected: no mutant may pass */
    cr_assert_eq(accepted[1], 0, "%d corrupted checkpoints accepted", accepted[1]);
    free(npy);
    free(ck);
}
