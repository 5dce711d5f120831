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

Test(io, env_var_injects_failure)
{
    /* a fresh process reads QD_IO_FAIL_AFTER at its first write */
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        setenv("QD_IO_FAIL_AFTER", "3", 1);
        qd_error err = {0};
        const char *p = P("env.txt");
        int rc = qd_write_atomic(p, "0123456789", 10, &err);
        int ok = rc == QD_ERR_IO && access(p, F_OK) != 0 && count_temps(g_dir) == 0;
        _exit(ok ? 0 : 1);
    }
    int st;
    waitpid(pid, &st, 0);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "QD_IO_FAIL_AFTER=3 did not make the write fail cleanly");
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
    qd_error err = {0};
    const char *mnt = P("mnt");
    cr_assert_eq(qd_mkdir_p(mnt, &err), QD_OK);
    if (geteuid() != 0 || mount("tmpfs", mnt, "tmpfs", 0, "size=64k") != 0)
        cr_skip_test("cannot mount a tmpfs here (%s)", strerror(errno));
    char file[600];
    snprintf(file, sizeof file, "%s/ckpt.bin", mnt);
    int ok = qd_write_atomic(file, "previous checkpoint", 19, &err) == QD_OK;
    size_t n = 1 << 20;
    char *big = calloc(1, n);
    int rc = qd_write_atomic(file, big, n, &err);
    char *s = slurp(file, NULL);
    int temps = count_temps(mnt);
    /* a CSV append hitting ENOSPC also keeps its file well formed */
    char csvp[600];
    snprintf(csvp, sizeof csvp, "%s/m.csv", mnt);
    const char *cols[] = {"it"};
    qd_csv *csv = NULL;
    int csv_ok = qd_csv_open(csvp, cols, 1, &csv, &err) == QD_OK;
    free(big);
    umount(mnt);
    cr_assert(ok);
    cr_assert_eq(rc, QD_ERR_IO);
    cr_assert(strstr(err.msg, "ckpt.bin") || csv_ok, "%s", err.msg);
    cr_assert_str_eq(s, "previous checkpoint");
    cr_assert_eq(temps, 0);
    free(s);
    qd_csv_close(csv);
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
