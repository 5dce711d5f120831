/* Atomic file replacement (temp file + fsync + rename + directory fsync),
 * mkdir -p, whole-file reads and the failure-injection hooks the reliability
 * tests use. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "qdistill/fsutil.h"
#include "io_internal.h"

#define TMP_MARK ".qdtmp."
#define BUF_CAP ((size_t)64 * 1024)
#define BASE_KEEP 160 /* bytes of the target's name kept in the temp name */

/* ------------------------------------------------------------------------
 * Failure injection
 * ---------------------------------------------------------------------- */

static atomic_llong g_fail_budget = -1; /* bytes left before ENOSPC; <0 off */
static atomic_size_t g_write_chunk = 0; /* max bytes per write(); 0 = off */
static pthread_once_t g_env_once = PTHREAD_ONCE_INIT;

static void read_env_hooks(void)
{
    const char *s = getenv("QD_IO_FAIL_AFTER");
    if (s && *s) {
        char *end;
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (!errno && *end == '\0')
            atomic_store(&g_fail_budget, v < 0 ? -1 : v);
    }
    s = getenv("QD_IO_WRITE_CHUNK");
    if (s && *s) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (!errno && *end == '\0')
            atomic_store(&g_write_chunk, (size_t)v);
    }
}

void qd_io_set_fail_after(long long bytes)
{
    pthread_once(&g_env_once, read_env_hooks);
    atomic_store(&g_fail_budget, bytes < 0 ? -1 : bytes);
}

void qd_io_set_write_chunk(size_t chunk)
{
    pthread_once(&g_env_once, read_env_hooks);
    atomic_store(&g_write_chunk, chunk);
}

/* How many of `want` bytes may be written before the injected disk-full. */
static size_t take_budget(size_t want)
{
    long long cur = atomic_load(&g_fail_budget);
    for (;;) {
        if (cur < 0)
            return want;
        size_t grant = (unsigned long long)cur < want ? (size_t)cur : want;
        if (atomic_compare_exchange_weak(&g_fail_budget, &cur,
                                         cur - (long long)grant))
            return grant;
    }
}

int qd_io_write_all(int fd, const void *buf, size_t len)
{
    pthread_once(&g_env_once, read_env_hooks);
    const unsigned char *p = buf;
    size_t allowed = take_budget(len);
    size_t chunk = atomic_load(&g_write_chunk);
    while (len > 0) {
        if (allowed == 0)
            return ENOSPC; /* injected: behave like a full disk */
        size_t n = len < allowed ? len : allowed;
        if (chunk && n > chunk)
            n = chunk;
        if (n > (size_t)SSIZE_MAX)
            n = (size_t)SSIZE_MAX;
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (w == 0)
            return EIO; /* write() making no progress: treat as an error */
        p += w;
        len -= (size_t)w;
        allowed -= (size_t)w;
    }
    return 0;
}

int qd_io_fmt_double(char *buf, size_t cap, double v)
{
    int n = snprintf(buf, cap, "%.17g", v);
    for (int i = 0; i < n && (size_t)i < cap; i++)
        if (buf[i] == ',')
            buf[i] = '.';
    return n;
}

/* ------------------------------------------------------------------------
 * Path helpers
 * ---------------------------------------------------------------------- */

/* Split path into a malloc'd directory ("." when none) and a pointer to the
 * last component. NULL on allocation failure. */
static char *dir_of(const char *path, const char **base)
{
    const char *slash = strrchr(path, '/');
    if (!slash) {
        *base = path;
        return strdup(".");
    }
    *base = slash + 1;
    size_t n = (size_t)(slash - path);
    if (n == 0)
        n = 1; /* "/name": the directory is "/" */
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, path, n);
        d[n] = '\0';
    }
    return d;
}

static int fsync_dir_errno(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    int rc = 0;
    if (fsync(fd) != 0 && errno != EINVAL && errno != ENOTSUP)
        rc = errno; /* EINVAL/ENOTSUP: the fs cannot sync directories */
    close(fd);
    return rc;
}

int qd_fsync_dir(const char *dir, qd_error *err)
{
    int e = fsync_dir_errno(dir);
    if (e)
        return qd_error_set(err, QD_ERR_IO, "cannot sync directory '%s': %s",
                            dir, strerror(e));
    return QD_OK;
}

/* ------------------------------------------------------------------------
 * Streaming atomic file
 * ---------------------------------------------------------------------- */

struct qd_atomic_file {
    int fd;
    int err_no;          /* first error; the handle is dead once non-zero */
    char *path;
    char *dir;
    char *tmp;
    unsigned char *buf;
    size_t buf_len;
};

static atomic_uint g_tmp_seq = 0;

int qd_atomic_open(const char *path, qd_atomic_file **out, qd_error *err)
{
    *out = NULL;
    if (!path || !*path)
        return qd_error_set(err, QD_ERR_INVALID, "atomic write: empty path");
    size_t plen = strlen(path);
    if (path[plen - 1] == '/')
        return qd_error_set(err, QD_ERR_INVALID,
                            "atomic write: '%s' names a directory", path);
    qd_atomic_file *f = calloc(1, sizeof *f);
    const char *base = NULL;
    if (f) {
        f->fd = -1;
        f->path = strdup(path);
        f->dir = dir_of(path, &base);
        f->buf = malloc(BUF_CAP);
        f->tmp = malloc(plen + 64);
    }
    if (!f || !f->path || !f->dir || !f->buf || !f->tmp) {
        qd_atomic_abort(f);
        return qd_error_set(err, QD_ERR_NOMEM, "atomic write '%s': out of memory",
                            path);
    }
    size_t dlen = (size_t)(base - path); /* includes the trailing '/' */
    size_t blen = strlen(base);
    if (blen > BASE_KEEP)
        blen = BASE_KEEP; /* keep the temp name under NAME_MAX */
    for (int attempt = 0; attempt < 1000; attempt++) {
        unsigned seq = atomic_fetch_add(&g_tmp_seq, 1u);
        snprintf(f->tmp, plen + 64, "%.*s.%.*s" TMP_MARK "%ld.%u", (int)dlen, path,
                 (int)blen, base, (long)getpid(), seq);
        f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (f->fd >= 0 || errno != EEXIST)
            break;
    }
    if (f->fd < 0) {
        int e = errno;
        qd_atomic_abort(f);
        return qd_error_set(err, QD_ERR_IO,
                            "cannot create temporary file for '%s': %s", path,
                            strerror(e));
    }
    *out = f;
    return QD_OK;
}

static int flush_buf(qd_atomic_file *f)
{
    if (f->err_no)
        return f->err_no;
    if (f->buf_len) {
        int e = qd_io_write_all(f->fd, f->buf, f->buf_len);
        f->buf_len = 0;
        if (e)
            f->err_no = e;
    }
    return f->err_no;
}

static int write_error(qd_atomic_file *f, qd_error *err)
{
    return qd_error_set(err, QD_ERR_IO, "cannot write '%s': %s", f->path,
                        strerror(f->err_no));
}

int qd_atomic_write(qd_atomic_file *f, const void *data, size_t len,
                    qd_error *err)
{
    if (!f)
        return qd_error_set(err, QD_ERR_INVALID, "atomic write: NULL handle");
    if (f->err_no)
        return write_error(f, err);
    if (len == 0)
        return QD_OK;
    if (f->buf_len + len <= BUF_CAP) {
        memcpy(f->buf + f->buf_len, data, len);
        f->buf_len += len;
        return QD_OK;
    }
    if (flush_buf(f))
        return write_error(f, err);
    if (len >= BUF_CAP) {
        int e = qd_io_write_all(f->fd, data, len);
        if (e) {
            f->err_no = e;
            return write_error(f, err);
        }
        return QD_OK;
    }
    memcpy(f->buf, data, len);
    f->buf_len = len;
    return QD_OK;
}

int qd_atomic_printf(qd_atomic_file *f, qd_error *err, const char *fmt, ...)
{
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return qd_error_set(err, QD_ERR_INVALID, "atomic write: bad format");
    if ((size_t)n < sizeof small)
        return qd_atomic_write(f, small, (size_t)n, err);
    char *big = malloc((size_t)n + 1);
    if (!big)
        return qd_error_set(err, QD_ERR_NOMEM, "atomic write: out of memory");
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = qd_atomic_write(f, big, (size_t)n, err);
    free(big);
    return rc;
}

void qd_atomic_abort(qd_atomic_file *f)
{
    if (!f)
        return;
    if (f->fd >= 0) {
        close(f->fd);
        unlink(f->tmp);
    }
    free(f->path);
    free(f->dir);
    free(f->tmp);
    free(f->buf);
    free(f);
}

int qd_atomic_commit(qd_atomic_file *f, qd_error *err)
{
    if (!f)
        return qd_error_set(err, QD_ERR_INVALID, "atomic write: NULL handle");
    int rc = QD_OK;
    const char *what = "write";
    if (flush_buf(f) == 0) {
        what = "sync";
        if (fsync(f->fd) != 0)
            f->err_no = errno;
    }
    if (!f->err_no) {
        what = "close";
        int fd = f->fd;
        f->fd = -1;
        if (close(fd) != 0) {
            f->err_no = errno;
            unlink(f->tmp);
        }
    }
    if (!f->err_no) {
        what = "rename into place";
        if (rename(f->tmp, f->path) != 0) {
            f->err_no = errno;
            unlink(f->tmp);
        } else {
            int e = fsync_dir_errno(f->dir);
            if (e)
                rc = qd_error_set(err, QD_ERR_IO,
                                  "'%s' written but directory '%s' not synced: %s",
                                  f->path, f->dir, strerror(e));
        }
    }
    if (f->err_no)
        rc = qd_error_set(err, QD_ERR_IO, "cannot %s '%s': %s", what, f->path,
                          strerror(f->err_no));
    qd_atomic_abort(f); /* fd is -1 when done: only frees */
    return rc;
}

int qd_write_atomic(const char *path, const void *data, size_t len,
                    qd_error *err)
{
    qd_atomic_file *f;
    int rc = qd_atomic_open(path, &f, err);
    if (rc)
        return rc;
    /* bypass the buffer: one write loop over the caller's memory */
    int e = qd_io_write_all(f->fd, data, len);
    if (e)
        f->err_no = e;
    return qd_atomic_commit(f, err);
}

/* ------------------------------------------------------------------------
 * Directories and reads
 * ---------------------------------------------------------------------- */

int qd_mkdir_p(const char *path, qd_error *err)
{
    if (!path || !*path)
        return qd_error_set(err, QD_ERR_INVALID, "mkdir: empty path");
    char *p = strdup(path);
    if (!p)
        return qd_error_set(err, QD_ERR_NOMEM, "mkdir '%s': out of memory",
                            path);
    int rc = QD_OK;
    size_t n = strlen(p);
    /* walk every prefix ending before a '/' and then the whole path */
    for (size_t i = 1; i <= n && rc == QD_OK; i++) {
        if (i < n && p[i] != '/')
            continue;
        if (i < n && p[i - 1] == '/')
            continue; /* repeated slash */
        char save = p[i];
        p[i] = '\0';
        if (mkdir(p, 0777) == 0) {
            const char *b;
            char *parent = dir_of(p, &b);
            int e = parent ? fsync_dir_errno(parent) : ENOMEM;
            if (e)
                rc = qd_error_set(err, QD_ERR_IO, "mkdir '%s': sync of '%s': %s",
                                  path, parent ? parent : "?", strerror(e));
            free(parent);
        } else {
            int e = errno;
            struct stat st;
            if (e != EEXIST || stat(p, &st) != 0 || !S_ISDIR(st.st_mode))
                rc = qd_error_set(err, QD_ERR_IO, "cannot create directory '%s': %s",
                                  p, e == EEXIST ? "exists and is not a directory"
                                                 : strerror(e));
        }
        p[i] = save;
    }
    free(p);
    return rc;
}

int qd_read_file(const char *path, size_t max_len, void **data, size_t *len,
                 qd_error *err)
{
    *data = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return qd_error_set(err, QD_ERR_IO, "cannot open '%s': %s", path,
                            strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return qd_error_set(err, QD_ERR_IO, "cannot stat '%s': %s", path,
                            strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return qd_error_set(err, QD_ERR_IO, "'%s' is not a regular file", path);
    }
    if (st.st_size < 0 || (unsigned long long)st.st_size >= SIZE_MAX ||
        (max_len && (unsigned long long)st.st_size > max_len)) {
        close(fd);
        return qd_error_set(err, QD_ERR_FORMAT,
                            "'%s' is too large (%lld bytes, limit %zu)", path,
                            (long long)st.st_size, max_len);
    }
    size_t size = (size_t)st.st_size;
    unsigned char *buf = malloc(size + 1);
    if (!buf) {
        close(fd);
        return qd_error_set(err, QD_ERR_NOMEM, "cannot read '%s': out of memory",
                            path);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            free(buf);
            close(fd);
            return qd_error_set(err, QD_ERR_IO, "cannot read '%s': %s", path,
                                strerror(e));
        }
        if (r == 0)
            break; /* file shrank under us: return what is there */
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    *data = buf;
    *len = got;
    return QD_OK;
}

/* ".<name>.qdtmp.<pid>.<seq>" -> pid, or -1 when the name is not ours. */
static long temp_owner(const char *name)
{
    if (name[0] != '.')
        return -1;
    const char *m = NULL, *s = name;
    while ((s = strstr(s, TMP_MARK)) != NULL) {
        m = s;
        s++;
    }
    if (!m)
        return -1;
    const char *p = m + strlen(TMP_MARK);
    char *end;
    errno = 0;
    long pid = strtol(p, &end, 10);
    if (errno || end == p || *end != '.' || pid <= 0)
        return -1;
    const char *q = end + 1;
    if (!*q)
        return -1;
    for (; *q; q++)
        if (*q < '0' || *q > '9')
            return -1;
    return pid;
}

int qd_io_remove_stale_temps(const char *dir, size_t *removed, qd_error *err)
{
    if (removed)
        *removed = 0;
    DIR *d = opendir(dir);
    if (!d)
        return qd_error_set(err, QD_ERR_IO, "cannot open directory '%s': %s", dir,
                            strerror(errno));
    size_t dlen = strlen(dir);
    int rc = QD_OK;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        long pid = temp_owner(de->d_name);
        if (pid < 0 || pid == (long)getpid())
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue; /* owner alive (or not ours to judge) */
        size_t n = dlen + strlen(de->d_name) + 2;
        char *full = malloc(n);
        if (!full) {
            rc = qd_error_set(err, QD_ERR_NOMEM, "out of memory");
            break;
        }
        snprintf(full, n, "%s/%s", dir, de->d_name);
        if (unlink(full) == 0) {
            if (removed)
                (*removed)++;
        } else if (errno != ENOENT) {
            rc = qd_error_set(err, QD_ERR_IO, "cannot remove '%s': %s", full,
                              strerror(errno));
        }
        free(full);
    }
    closedir(d);
    return rc;
}
