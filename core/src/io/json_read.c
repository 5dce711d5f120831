/* Strict, bounded JSON reader (see qdistill/json.h). Recursive descent whose
 * depth is capped at QD_JSON_MAX_DEPTH; every read is checked against the
 * end of the input. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/fsutil.h"
#include "qdistill/json.h"
#include "io_internal.h"

#define MAX_FILE ((size_t)64 << 20)
#define MAX_NUMBER_LEN 400

struct qd_json_value {
    qd_json_type type;
    int boolean;
    double number;
    char *str;                 /* string value, NUL-terminated */
    size_t str_len;
    size_t n, cap;             /* array / object children */
    qd_json_value **items;
    char **keys;               /* object only */
};

typedef struct parser {
    const unsigned char *p, *start, *end;
    qd_error *err;
    int failed;            /* the qd_status of the first failure, 0 if none */
} parser;

static void fail_code(parser *ps, int code, const char *what)
{
    if (ps->failed)
        return;
    ps->failed = code;
    size_t line = 1, col = 1;
    for (const unsigned char *q = ps->start; q < ps->p && q < ps->end; q++) {
        if (*q == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    qd_error_set(ps->err, code, "json %zu:%zu: %s", line, col, what);
}

static void fail(parser *ps, const char *what)
{
    fail_code(ps, QD_ERR_FORMAT, what);
}

void qd_json_value_free(qd_json_value *v)
{
    if (!v)
        return;
    for (size_t i = 0; i < v->n; i++) {
        qd_json_value_free(v->items[i]);
        if (v->keys)
            free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->str);
    free(v);
}

static void skip_ws(parser *ps)
{
    while (ps->p < ps->end &&
           (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static qd_json_value *new_value(parser *ps, qd_json_type t)
{
    qd_json_value *v = calloc(1, sizeof *v);
    if (!v) {
        fail_code(ps, QD_ERR_NOMEM, "out of memory");
        return NULL;
    }
    v->type = t;
    return v;
}

static int hex4(parser *ps, unsigned *out)
{
    if (ps->end - ps->p < 4) {
        fail(ps, "truncated \\u escape");
        return -1;
    }
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = ps->p[i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else {
            fail(ps, "bad hex digit in \\u escape");
            return -1;
        }
        v = v * 16 + d;
    }
    ps->p += 4;
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Parse a string at ps->p (which is on the opening quote). The decoded
 * text is never longer than the encoded one, so one allocation suffices. */
static char *parse_string(parser *ps, size_t *len_out)
{
    ps->p++; /* opening quote */
    const unsigned char *q = ps->p;
    while (q < ps->end && *q != '"') {
        if (*q == '\\' && q + 1 < ps->end)
            q++;
        q++;
    }
    if (q >= ps->end) {
        fail(ps, "unterminated string");
        return NULL;
    }
    char *out = malloc((size_t)(q - ps->p) + 1);
    if (!out) {
        fail_code(ps, QD_ERR_NOMEM, "out of memory");
        return NULL;
    }
    size_t n = 0;
    while (*ps->p != '"') {
        unsigned c = *ps->p;
        if (c < 0x20) {
            fail(ps, "control character in string");
            goto bad;
        }
        if (c != '\\') {
            size_t k = qd_io_utf8_len(ps->p, (size_t)(ps->end - ps->p));
            if (!k) {
                fail(ps, "invalid UTF-8 in string");
                goto bad;
            }
            memcpy(out + n, ps->p, k);
            n += k;
            ps->p += k;
            continue;
        }
        ps->p++;
        c = *ps->p++;
        switch (c) {
        case '"': out[n++] = '"'; break;
        case '\\': out[n++] = '\\'; break;
        case '/': out[n++] = '/'; break;
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'n': out[n++] = '\n'; break;
        case 'r': out[n++] = '\r'; break;
        case 't': out[n++] = '\t'; break;
        case 'u': {
            unsigned cp;
            if (hex4(ps, &cp))
                goto bad;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u') {
                    fail(ps, "unpaired surrogate in \\u escape");
                    goto bad;
                }
                ps->p += 2;
                if (hex4(ps, &lo))
                    goto bad;
                if (lo < 0xDC00 || lo > 0xDFFF) {
                    fail(ps, "unpaired surrogate in \\u escape");
                    goto bad;
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                fail(ps, "unpaired surrogate in \\u escape");
                goto bad;
            }
            /* 6 or 12 escape bytes always cover the <= 4 bytes produced */
            n += put_utf8(out + n, cp);
            break;
        }
        default:
            ps->p--;
            fail(ps, "bad escape in string");
            goto bad;
        }
    }
    ps->p++; /* closing quote */
    out[n] = '\0';
    *len_out = n;
    return out;
bad:
    free(out);
    return NULL;
}

static qd_json_value *parse_number(parser *ps)
{
    const unsigned char *s = ps->p, *q = ps->p;
#define DIGIT(x) ((x) >= '0' && (x) <= '9')
    if (q < ps->end && *q == '-')
        q++;
    if (q >= ps->end || !DIGIT(*q)) {
        fail(ps, "bad number");
        return NULL;
    }
    if (*q == '0')
        q++;
    else
        while (q < ps->end && DIGIT(*q))
            q++;
    if (q < ps->end && *q == '.') {
        q++;
        if (q >= ps->end || !DIGIT(*q)) {
            ps->p = q;
            fail(ps, "bad number: digits must follow '.'");
            return NULL;
        }
        while (q < ps->end && DIGIT(*q))
            q++;
    }
    if (q < ps->end && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < ps->end && (*q == '+' || *q == '-'))
            q++;
        if (q >= ps->end || !DIGIT(*q)) {
            ps->p = q;
            fail(ps, "bad number: digits must follow the exponent");
            return NULL;
        }
        while (q < ps->end && DIGIT(*q))
            q++;
    }
#undef DIGIT
    size_t len = (size_t)(q - s);
    if (len > MAX_NUMBER_LEN) {
        fail(ps, "number too long");
        return NULL;
    }
    char tmp[MAX_NUMBER_LEN + 1];
    memcpy(tmp, s, len);
    tmp[len] = '\0';
    errno = 0;
    double d = strtod(tmp, NULL);
    if (!isfinite(d)) {
        fail(ps, "number out of range for a double");
        return NULL;
    }
    qd_json_value *v = new_value(ps, QD_JSON_NUMBER);
    if (v)
        v->number = d;
    ps->p = q;
    return v;
}

static int add_child(parser *ps, qd_json_value *parent, qd_json_value *child,
                     char *key)
{
    if (parent->n == parent->cap) {
        size_t cap = parent->cap ? parent->cap * 2 : 4;
        qd_json_value **items = realloc(parent->items, cap * sizeof *items);
        if (!items) {
            fail_code(ps, QD_ERR_NOMEM, "out of memory");
            return -1;
        }
        parent->items = items;
        if (parent->type == QD_JSON_OBJECT) {
            char **keys = realloc(parent->keys, cap * sizeof *keys);
            if (!keys) {
                fail_code(ps, QD_ERR_NOMEM, "out of memory");
                return -1;
            }
            parent->keys = keys;
        }
        parent->cap = cap;
    }
    parent->items[parent->n] = child;
    if (parent->type == QD_JSON_OBJECT)
        parent->keys[parent->n] = key;
    parent->n++;
    return 0;
}

static qd_json_value *parse_value(parser *ps, int depth);

static qd_json_value *parse_container(parser *ps, int depth, int is_object)
{
    char close = is_object ? '}' : ']';
    if (depth >= QD_JSON_MAX_DEPTH) {
        fail(ps, "nesting too deep");
        return NULL;
    }
    qd_json_value *v = new_value(ps, is_object ? QD_JSON_OBJECT : QD_JSON_ARRAY);
    if (!v)
        return NULL;
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        return v;
    }
    for (;;) {
        char *key = NULL;
        skip_ws(ps);
        if (is_object) {
            size_t kl;
            if (ps->p >= ps->end || *ps->p != '"') {
                fail(ps, "expected a string key");
                goto bad;
            }
            if (!(key = parse_string(ps, &kl)))
                goto bad;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') {
                free(key);
                fail(ps, "expected ':'");
                goto bad;
            }
            ps->p++;
        }
        qd_json_value *child = parse_value(ps, depth + 1);
        if (!child || add_child(ps, v, child, key)) {
            qd_json_value_free(child);
            free(key);
            goto bad;
        }
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            return v;
        }
        fail(ps, is_object ? "expected ',' or '}'" : "expected ',' or ']'");
        goto bad;
    }
bad:
    qd_json_value_free(v);
    return NULL;
}

static int literal(parser *ps, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) >= n && memcmp(ps->p, word, n) == 0) {
        ps->p += n;
        return 1;
    }
    return 0;
}

static qd_json_value *parse_value(parser *ps, int depth)
{
    skip_ws(ps);
    if (ps->p >= ps->end) {
        fail(ps, "unexpected end of input");
        return NULL;
    }
    qd_json_value *v;
    switch (*ps->p) {
    case '{':
        return parse_container(ps, depth, 1);
    case '[':
        return parse_container(ps, depth, 0);
    case '"':
        v = new_value(ps, QD_JSON_STRING);
        if (v && !(v->str = parse_string(ps, &v->str_len))) {
            free(v);
            v = NULL;
        }
        return v;
    case 't':
    case 'f':
    case 'n':
        if (literal(ps, "true") || literal(ps, "false")) {
            v = new_value(ps, QD_JSON_BOOL);
            if (v)
                v->boolean = ps->p[-4] == 't'; /* "true" vs "alse" */
            return v;
        }
        if (literal(ps, "null"))
            return new_value(ps, QD_JSON_NULL);
        fail(ps, "unknown literal");
        return NULL;
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9'))
            return parse_number(ps);
        fail(ps, "unexpected character");
        return NULL;
    }
}

int qd_json_parse(const char *text, size_t len, qd_json_value **out,
                  qd_error *err)
{
    *out = NULL;
    parser ps = {(const unsigned char *)text, (const unsigned char *)text,
                 (const unsigned char *)text + len, err, 0};
    if (!text && len)
        return qd_error_set(err, QD_ERR_INVALID, "json: no input");
    qd_json_value *v = parse_value(&ps, 0);
    if (v) {
        skip_ws(&ps);
        if (ps.p != ps.end) {
            fail(&ps, "trailing characters after the document");
            qd_json_value_free(v);
            v = NULL;
        }
    }
    if (!v)
        return ps.failed ? ps.failed : QD_ERR_INTERNAL;
    *out = v;
    return QD_OK;
}

int qd_json_read_file(const char *path, qd_json_value **out, qd_error *err)
{
    *out = NULL;
    void *buf;
    size_t len;
    int rc = qd_read_file(path, MAX_FILE, &buf, &len, err);
    if (rc)
        return rc;
    rc = qd_json_parse(buf, len, out, err);
    free(buf);
    if (rc)
        qd_error_prefix(err, "'%s'", path);
    return rc;
}

/* ------------------------------------------------------------------------
 * Access
 * ---------------------------------------------------------------------- */

qd_json_type qd_json_type_of(const qd_json_value *v)
{
    return v ? v->type : QD_JSON_NULL;
}

double qd_json_as_number(const qd_json_value *v)
{
    return v && v->type == QD_JSON_NUMBER ? v->number : NAN;
}

int qd_json_as_bool(const qd_json_value *v)
{
    return v && v->type == QD_JSON_BOOL ? v->boolean : 0;
}

const char *qd_json_as_string(const qd_json_value *v, size_t *len)
{
    if (!v || v->type != QD_JSON_STRING)
        return NULL;
    if (len)
        *len = v->str_len;
    return v->str;
}

size_t qd_json_size(const qd_json_value *v)
{
    return v && (v->type == QD_JSON_ARRAY || v->type == QD_JSON_OBJECT) ? v->n : 0;
}

const qd_json_value *qd_json_at(const qd_json_value *v, size_t i)
{
    return i < qd_json_size(v) ? v->items[i] : NULL;
}

const char *qd_json_key_at(const qd_json_value *v, size_t i)
{
    return v && v->type == QD_JSON_OBJECT && i < v->n ? v->keys[i] : NULL;
}

static const qd_json_value *member_n(const qd_json_value *v, const char *key,
                                     size_t klen)
{
    if (!v || v->type != QD_JSON_OBJECT)
        return NULL;
    for (size_t i = v->n; i-- > 0;) /* last wins */
        if (strlen(v->keys[i]) == klen && memcmp(v->keys[i], key, klen) == 0)
            return v->items[i];
    return NULL;
}

const qd_json_value *qd_json_member(const qd_json_value *v, const char *key)
{
    return member_n(v, key, strlen(key));
}

const qd_json_value *qd_json_get(const qd_json_value *root, const char *path)
{
    const qd_json_value *v = root;
    const char *s = path;
    if (!path || !*path)
        return root;
    for (;;) {
        const char *dot = strchr(s, '.');
        size_t n = dot ? (size_t)(dot - s) : strlen(s);
        if (!v)
            return NULL;
        if (v->type == QD_JSON_ARRAY) {
            size_t idx = 0;
            if (n == 0 || n > 18)
                return NULL;
            for (size_t i = 0; i < n; i++) {
                if (s[i] < '0' || s[i] > '9')
                    return NULL;
                idx = idx * 10 + (size_t)(s[i] - '0');
            }
            v = qd_json_at(v, idx);
        } else {
            v = member_n(v, s, n);
        }
        if (!dot)
            return v;
        s = dot + 1;
    }
}

int qd_json_get_number(const qd_json_value *root, const char *path,
                       double *out, qd_error *err)
{
    const qd_json_value *v = qd_json_get(root, path);
    if (!v)
        return qd_error_set(err, QD_ERR_INVALID, "json: no value at '%s'", path);
    if (v->type == QD_JSON_NULL)
        return qd_error_set(err, QD_ERR_NUMERIC,
                            "json: '%s' is null (not a finite number)", path);
    if (v->type != QD_JSON_NUMBER)
        return qd_error_set(err, QD_ERR_INVALID, "json: '%s' is not a number", path);
    *out = v->number;
    return QD_OK;
}

int qd_json_get_string(const qd_json_value *root, const char *path,
                       const char **out, qd_error *err)
{
    const qd_json_value *v = qd_json_get(root, path);
    if (!v)
        return qd_error_set(err, QD_ERR_INVALID, "json: no value at '%s'", path);
    if (v->type != QD_JSON_STRING)
        return qd_error_set(err, QD_ERR_INVALID, "json: '%s' is not a string", path);
    *out = v->str;
    return QD_OK;
}
