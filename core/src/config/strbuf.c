/* A growable string for building messages and emitted YAML. An allocation
 * failure is sticky: later appends are ignored and take() returns NULL, so
 * callers check once at the end. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_internal.h"

static int reserve(qd_strbuf *b, size_t extra)
{
    if (b->failed)
        return -1;
    if (extra > SIZE_MAX / 2 - b->len - 1) {
        b->failed = 1;
        return -1;
    }
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    char *s = realloc(b->s, cap);
    if (!s) {
        b->failed = 1;
        return -1;
    }
    b->s = s;
    b->cap = cap;
    return 0;
}

void qd__sb_add(qd_strbuf *b, const char *s, size_t n)
{
    if (reserve(b, n))
        return;
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

void qd__sb_puts(qd_strbuf *b, const char *s)
{
    qd__sb_add(b, s, strlen(s));
}

void qd__sb_printf(qd_strbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || reserve(b, (size_t)n)) {
        if (n < 0)
            b->failed = 1;
        va_end(ap2);
        return;
    }
    vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    b->len += (size_t)n;
}

void qd__sb_indent(qd_strbuf *b, int n)
{
    if (n <= 0 || reserve(b, (size_t)n))
        return;
    memset(b->s + b->len, ' ', (size_t)n);
    b->len += (size_t)n;
    b->s[b->len] = '\0';
}

char *qd__sb_take(qd_strbuf *b)
{
    if (b->failed) {
        free(b->s);
        memset(b, 0, sizeof *b);
        return NULL;
    }
    char *s = b->s ? b->s : calloc(1, 1);
    memset(b, 0, sizeof *b);
    return s;
}
