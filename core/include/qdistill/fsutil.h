/*
 * qdistill/fsutil.h — crash-safe file output for run directories.
 *
 * Guarantees (what a run directory relies on):
 *   - Atomic replacement: qd_write_atomic() and qd_atomic_file write into a
 *     temporary file in the target's own directory (".<name>.qdtmp.<pid>.<n>",
 *     created with O_EXCL), fsync it, rename() it over the target and fsync
 *     the directory. A reader, or a run killed at any instant (SIGKILL, power
 *     loss on a journalling file system), sees either the complete old file
 *     or the complete new one — never a partial file.
 *   - Failure leaves no trace: on any error (ENOSPC, EIO, EISDIR, ...) the
 *     temporary file is removed, the previous target is untouched, and the
 *     call returns QD_ERR_IO with a message naming the path and strerror().
 *   - Only a killed process can leave a temporary file behind; it is never
 *     mistaken for a target (hidden name, ".qdtmp." marker) and
 *     qd_io_remove_stale_temps() deletes those of dead processes on resume.
 *   - Paths are byte strings: spaces and non-ASCII (UTF-8) names just work.
 *
 * Test hooks: qd_io_set_fail_after(n) (or the environment variable
 * QD_IO_FAIL_AFTER=n, read at the first write) makes every write through this
 * layer fail with ENOSPC once n more bytes have been written, so tests can
 * simulate a full disk; qd_io_set_write_chunk(k) (QD_IO_WRITE_CHUNK=k) caps
 * each write() system call at k bytes, exercising the short-write path.
 */
#ifndef QDISTILL_FSUTIL_H
#define QDISTILL_FSUTIL_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Replace `path` atomically with data[0..len) (see the guarantees above). */
QD_EXPORT int qd_write_atomic(const char *path, const void *data, size_t len,
                              qd_error *err);

/* Streaming variant for large outputs: open, write any number of times,
 * then commit (publish) or abort (discard). commit and abort always consume
 * the handle; after a failed write the handle must still be committed (which
 * then fails and cleans up) or aborted. */
typedef struct qd_atomic_file qd_atomic_file;

QD_EXPORT int qd_atomic_open(const char *path, qd_atomic_file **out,
                             qd_error *err);
QD_EXPORT int qd_atomic_write(qd_atomic_file *f, const void *data, size_t len,
                              qd_error *err);
QD_EXPORT int qd_atomic_printf(qd_atomic_file *f, qd_error *err,
                               const char *fmt, ...) QD_PRINTF(3, 4);
QD_EXPORT int qd_atomic_commit(qd_atomic_file *f, qd_error *err);
QD_EXPORT void qd_atomic_abort(qd_atomic_file *f);

/* Create a directory and its missing parents (mode 0777 & ~umask); an
 * existing directory is fine, an existing non-directory is QD_ERR_IO. New
 * directories are fsync'ed into their parents. */
QD_EXPORT int qd_mkdir_p(const char *path, qd_error *err);

/* fsync a directory (makes renames/creations in it durable). */
QD_EXPORT int qd_fsync_dir(const char *dir, qd_error *err);

/* Read a whole regular file into a malloc'd buffer (NUL-terminated one byte
 * past *len, so text can be parsed in place). Files larger than max_len are
 * refused with QD_ERR_FORMAT (max_len 0 = no limit): readers of untrusted
 * files never allocate more than the file holds. */
QD_EXPORT int qd_read_file(const char *path, size_t max_len, void **data,
                           size_t *len, qd_error *err);

/* Delete the temporary files left in `dir` by killed processes (those whose
 * pid no longer exists). *removed (may be NULL) receives their number. */
QD_EXPORT int qd_io_remove_stale_temps(const char *dir, size_t *removed,
                                       qd_error *err);

/* Test hooks (process-wide). bytes < 0 disables failure injection; chunk 0
 * removes the cap. */
QD_EXPORT void qd_io_set_fail_after(long long bytes);
QD_EXPORT void qd_io_set_write_chunk(size_t chunk);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_FSUTIL_H */
