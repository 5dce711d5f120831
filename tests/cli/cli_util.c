/* Helpers shared by the end-to-end CLI suites (see cli_util.h). */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "cli_util.h"

char g_tmp[256];

const char *builddir(void)
{
    const char *b = getenv("QD_TEST_BUILDDIR");
    cr_assert(b, "QD_TEST_BUILDDIR not set");
    return b;
}

const char *srcdir(void)
{
    const char *s = getenv("QD_TEST_SRCDIR");
    cr_assert(s, "QD_TEST_SRCDIR not set");
    return s;
}

void make_tmp(void)
{
    snprintf(g_tmp, sizeof g_tmp, "/tmp/qd_cli_XXXXXX");
    cr_assert(mkdtemp(g_tmp));
}

void rm_tmp(void)
{
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    cr_expect_eq(system(cmd), 0);
}

char *slurp_n(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (len)
            *len = 0;
        return strdup("");
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)(n > 0 ? n : 0) + 1);
    cr_assert(s);
    size_t got = n > 0 ? fread(s, 1, (size_t)n, f) : 0;
    s[got] = '\0';
    fclose(f);
    if (len)
        *len = got;
    return s;
}

char *slurp(const char *path)
{
    return slurp_n(path, NULL);
}

int qd(char **out, char **err, const char *fmt, ...)
{
    char args[4096], cmd[8192], o[300], e[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(o, sizeof o, "%s/stdout", g_tmp);
    snprintf(e, sizeof e, "%s/stderr", g_tmp);
    const char *wrap = getenv("QD_CLI_WRAPPER");
    snprintf(cmd, sizeof cmd, "cd '%s' && %s '%s/qdistill' %s </dev/null >'%s' 2>'%s'", srcdir(),
             wrap ? wrap : "", builddir(), args, o, e);
    int st = system(cmd);
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    char *so = slurp(o), *se = slurp(e);
    if (out)
        *out = so;
    else
        free(so);
    if (err)
        *err = se;
    else
        free(se);
    return code;
}

void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    cr_assert(f, "cannot write %s", path);
    cr_assert_eq(fwrite(data, 1, len, f), len);
    fclose(f);
}

int exists(const char *dir, const char *name)
{
    char p[1024];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return stat(p, &st) == 0;
}
