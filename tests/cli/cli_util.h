/* Helpers shared by the end-to-end CLI suites: a per-test temporary
 * directory and running `qdistill` as a subprocess with its output
 * captured. */
#ifndef QD_TEST_CLI_UTIL_H
#define QD_TEST_CLI_UTIL_H

#include <stddef.h>

/* The current test's temporary directory (make_tmp). */
extern char g_tmp[256];

const char *builddir(void);   /* QD_TEST_BUILDDIR */
const char *srcdir(void);     /* QD_TEST_SRCDIR */
void make_tmp(void);          /* a fresh /tmp/qd_cli_XXXXXX into g_tmp */
void rm_tmp(void);            /* remove it */

/* Whole file as a NUL-terminated malloc'd string ("" when unreadable);
 * slurp_n also gives the length. */
char *slurp(const char *path);
char *slurp_n(const char *path, size_t *len);

/* Run `qdistill ARGS` (a shell fragment) from the source tree with
 * stdin closed and stdout/stderr captured into *out / *err (malloc'd; NULL
 * to discard). Returns the exit status, or 128 + signal. QD_CLI_WRAPPER
 * (the `valgrind` test setup) is put in front of the command. */
int qd(char **out, char **err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

void write_file(const char *path, const void *data, size_t len);
int exists(const char *dir, const char *name);

#endif
