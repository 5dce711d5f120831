/* A growable text buffer for building documents in memory (the HTML
 * report). Out of memory is sticky: later appends do nothing and sbuf_ok()
 * says so once, at the end, instead of at every call. */
#ifndef QDISTILL_CLI_SBUF_H
#define QDISTILL_CLI_SBUF_H

#include <stddef.h>

typedef struct sbuf {
    char *s;      /* NUL-terminated once anything was appended */
    size_t len;
    size_t cap;
    int oom;
} sbuf;

void sbuf_putn(sbuf *b, const char *s, size_t n);
void sbuf_put(sbuf *b, const char *s);
void sbuf_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* 1 when every append succeeded. */
int sbuf_ok(const sbuf *b);
void sbuf_free(sbuf *b);

#endif
