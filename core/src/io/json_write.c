/* JSON emitter (see qdistill/json.h): pretty-printed, always valid output,
 * misuse reported once at finish. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/blob.h"
#include "qdistill/fsutil.h"
#include "qdistill/json.h"
#include "io_internal.h"

typedef struct level {
    char kind;        /* '{' or '[' */
    size_t count;     /* values emitted at this level */
    int have_key;     /* object: a key is waiting for its value */
} level;

struct qd_json {
    qd_blob buf;
    level stack[QD_JSON_MAX_DEPTH];
    size_t depth;
    int done;         /* the top-level value is complete */
    char misuse[160]; /* first structural error, "" if none */
};

int qd_json_create(qd_json **out, qd_error *err)
{
    *out = calloc(1, sizeof **out);
    if (!*out)
        return qd_error_set(err, QD_ERR_NOMEM, "json: out of memory");
    qd_blob_init(&(*out)->buf);
    return QD_OK;
}

void qd_json_destroy(qd_json *j)
{
    if (j) {
        qd_blob_free(&j->buf);
        free(j);
    }
}

static void misuse(qd_json *j, const char *what)
{
    if (!j->misuse[0])
        snprintf(j->misuse, sizeof j->misuse, "json emitter misuse: %s", what);
}

static void put(qd_json *j, const char *s, size_t n)
{
    qd_blob_append(&j->buf, s, n);
}

static void puts_(qd_json *j, const char *s)
{
    put(j, s, strlen(s));
}

static void newline_indent(qd_json *j, size_t depth)
{
    put(j, "\n", 1);
    for (size_t i = 0; i < depth; i++)
        put(j, "  ", 2);
}

/* Everything that precedes a value: separators and checks. Returns 0 when
 * the value must not be emitted. */
static int before_value(qd_json *j)
{
    if (j->misuse[0])
        return 0;
    if (j->depth == 0) {
        if (j->done) {
            misuse(j, "a second top-level value");
            return 0;
        }
        return 1;
    }
    level *l = &j->stack[j->depth - 1];
    if (l->kind == '{') {
        if (!l->have_key) {
            misuse(j, "a value inside an object without a key");
            return 0;
        }
        l->have_key = 0;
        return 1; /* the key already wrote the separator */
    }
    if (l->count++)
        put(j, ",", 1);
    newline_indent(j, j->depth);
    return 1;
}

static void after_value(qd_json *j)
{
    if (j->depth == 0)
        j->done = 1;
}

static void put_escaped(qd_json *j, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t left = strlen(s);
    put(j, "\"", 1);
    while (left) {
        unsigned c = *p;
        const char *esc = NULL;
        char u[7];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        default:
            if (c < 0x20) {
                u[0] = '\\'; u[1] = 'u'; u[2] = '0'; u[3] = '0';
                u[4] = hex[c >> 4]; u[5] = hex[c & 15]; u[6] = '\0';
                esc = u;
            }
        }
        if (esc) {
            puts_(j, esc);
            p++;
            left--;
            continue;
        }
        size_t n = qd_io_utf8_len(p, left);
        if (n == 0) {
            puts_(j, "\\ufffd"); /* invalid byte: keep the output valid */
            p++;
            left--;
        } else {
            put(j, (const char *)p, n);
            p += n;
            left -= n;
        }
    }
    put(j, "\"", 1);
}

static void open_level(qd_json *j, char kind)
{
    if (!before_value(j))
        return;
    if (j->depth == QD_JSON_MAX_DEPTH) {
        misuse(j, "nesting deeper than QD_JSON_MAX_DEPTH");
        return;
    }
    put(j, &kind, 1);
    j->stack[j->depth++] = (level){kind, 0, 0};
}

static void close_level(qd_json *j, char kind)
{
    if (j->misuse[0])
        return;
    if (j->depth == 0 || j->stack[j->depth - 1].kind != kind) {
        misuse(j, kind == '{' ? "end_object without a matching begin_object"
                              : "end_array without a matching begin_array");
        return;
    }
    level *l = &j->stack[j->depth - 1];
    if (l->have_key) {
        misuse(j, "a key without a value");
        return;
    }
    j->depth--;
    if (l->count)
        newline_indent(j, j->depth);
    put(j, kind == '{' ? "}" : "]", 1);
    after_value(j);
}

void qd_json_begin_object(qd_json *j) { open_level(j, '{'); }
void qd_json_end_object(qd_json *j) { close_level(j, '{'); }
void qd_json_begin_array(qd_json *j) { open_level(j, '['); }
void qd_json_end_array(qd_json *j) { close_level(j, '['); }

void qd_json_key(qd_json *j, const char *key)
{
    if (j->misuse[0])
        return;
    if (j->depth == 0 || j->stack[j->depth - 1].kind != '{') {
        misuse(j, "a key outside an object");
        return;
    }
    level *l = &j->stack[j->depth - 1];
    if (l->have_key) {
        misuse(j, "two keys in a row");
        return;
    }
    if (!key) {
        misuse(j, "a NULL key");
        return;
    }
    if (l->count++)
        put(j, ",", 1);
    newline_indent(j, j->depth);
    put_escaped(j, key);
    put(j, ": ", 2);
    l->have_key = 1;
}

static void scalar(qd_json *j, const char *text)
{
    if (!before_value(j))
        return;
    puts_(j, text);
    after_value(j);
}

void qd_json_string(qd_json *j, const char *s)
{
    if (!s) {
        scalar(j, "null");
        return;
    }
    if (!before_value(j))
        return;
    put_escaped(j, s);
    after_value(j);
}

void qd_json_number(qd_json *j, double v)
{
    char b[40];
    if (!isfinite(v)) {
        scalar(j, "null");
        return;
    }
    qd_io_fmt_double(b, sizeof b, v);
    scalar(j, b);
}

void qd_json_int(qd_json *j, int64_t v)
{
    char b[32];
    snprintf(b, sizeof b, "%" PRId64, v);
    scalar(j, b);
}

void qd_json_uint(qd_json *j, uint64_t v)
{
    char b[32];
    snprintf(b, sizeof b, "%" PRIu64, v);
    scalar(j, b);
}

void qd_json_bool(qd_json *j, int v) { scalar(j, v ? "true" : "false"); }
void qd_json_null(qd_json *j) { scalar(j, "null"); }

int qd_json_finish(qd_json *j, const char **text, size_t *len, qd_error *err)
{
    if (j->misuse[0])
        return qd_error_set(err, QD_ERR_INTERNAL, "%s", j->misuse);
    if (!j->done || j->depth)
        return qd_error_set(err, QD_ERR_INTERNAL,
                            "json emitter misuse: document incomplete (%zu open "
                            "levels)", j->depth);
    /* terminate once: '\n' then a NUL not counted in len */
    if (j->buf.len == 0 || j->buf.data[j->buf.len - 1] != '\0') {
        qd_blob_append(&j->buf, "\n", 2);
    }
    if (j->buf.failed)
        return qd_error_set(err, QD_ERR_NOMEM, "json: out of memory");
    if (text)
        *text = (const char *)j->buf.data;
    if (len)
        *len = j->buf.len - 1;
    return QD_OK;
}

int qd_json_write_file(qd_json *j, const char *path, qd_error *err)
{
    const char *text;
    size_t len;
    int rc = qd_json_finish(j, &text, &len, err);
    if (rc)
        return qd_error_prefix(err, "'%s'", path);
    return qd_write_atomic(path, text, len, err);
}
