/* NumPy .npy writer and defensive reader (see qdistill/npy.h). The header
 * is a Python dict literal; we parse the small subset numpy emits with a
 * bounded, non-recursive scanner. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/fsutil.h"
#include "qdistill/npy.h"
#include "io_internal.h"

#define MAGIC "\x93NUMPY"
#define MAGIC_LEN 6
#define ALIGN 64
#define MAX_HEADER (1u << 20) /* far above any real header; bounds v2 files */

size_t qd_npy_dtype_size(qd_npy_dtype t)
{
    switch (t) {
    case QD_NPY_F8: return 8;
    case QD_NPY_I4: return 4;
    case QD_NPY_I8: return 8;
    case QD_NPY_U1: return 1;
    }
    return 0;
}

const char *qd_npy_dtype_descr(qd_npy_dtype t)
{
    switch (t) {
    case QD_NPY_F8: return "<f8";
    case QD_NPY_I4: return "<i4";
    case QD_NPY_I8: return "<i8";
    case QD_NPY_U1: return "|u1";
    }
    return NULL;
}

static int host_is_le(void)
{
    const uint16_t one = 1;
    uint8_t b;
    memcpy(&b, &one, 1);
    return b == 1;
}

/* Reverse the bytes of each element in place (big-endian hosts only). */
static void swap_elems(uint8_t *p, size_t count, size_t width)
{
    for (size_t i = 0; i < count; i++, p += width)
        for (size_t a = 0, b = width - 1; a < b; a++, b--) {
            uint8_t t = p[a];
            p[a] = p[b];
            p[b] = t;
        }
}

/* prod(shape) * width with overflow checks; 0 on success. */
static int total_size(const size_t *shape, size_t ndim, size_t width,
                      size_t *count, size_t *bytes)
{
    size_t c = 1;
    for (size_t i = 0; i < ndim; i++) {
        if (shape[i] && c > SIZE_MAX / shape[i])
            return -1;
        c *= shape[i];
    }
    if (width && c > SIZE_MAX / width)
        return -1;
    *count = c;
    *bytes = c * width;
    return 0;
}

/* ------------------------------------------------------------------------
 * Writer
 * ---------------------------------------------------------------------- */

int qd_npy_write(const char *path, qd_npy_dtype dtype, const size_t *shape,
                 size_t ndim, const void *data, qd_error *err)
{
    size_t width = qd_npy_dtype_size(dtype);
    if (!width)
        return qd_error_set(err, QD_ERR_INVALID, "npy '%s': unknown dtype %d",
                            path, (int)dtype);
    if (ndim > QD_NPY_MAX_DIMS)
        return qd_error_set(err, QD_ERR_INVALID,
                            "npy '%s': %zu dimensions (at most %d)", path, ndim,
                            QD_NPY_MAX_DIMS);
    size_t count, bytes;
    if (total_size(shape, ndim, width, &count, &bytes))
        return qd_error_set(err, QD_ERR_INVALID, "npy '%s': shape too large",
                            path);
    if (bytes && !data)
        return qd_error_set(err, QD_ERR_INVALID, "npy '%s': no data", path);

    char hdr[512];
    int n = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, "
                     "'shape': (", qd_npy_dtype_descr(dtype));
    for (size_t i = 0; i < ndim; i++)
        n += snprintf(hdr + n, sizeof hdr - (size_t)n, "%s%zu", i ? ", " : "",
                      shape[i]);
    n += snprintf(hdr + n, sizeof hdr - (size_t)n, "%s), }",
                  ndim == 1 ? "," : "");
    /* pad with spaces so that magic+version+len+header is a multiple of 64
     * and the header ends in '\n', as numpy does */
    size_t total = (size_t)MAGIC_LEN + 4 + (size_t)n + 1;
    size_t padded = (total + ALIGN - 1) / ALIGN * ALIGN;
    size_t hlen = padded - (MAGIC_LEN + 4);
    uint8_t pre[MAGIC_LEN + 4];
    memcpy(pre, MAGIC, MAGIC_LEN);
    pre[6] = 1;
    pre[7] = 0;
    pre[8] = (uint8_t)(hlen & 0xff);
    pre[9] = (uint8_t)(hlen >> 8);
    memset(hdr + n, ' ', hlen - (size_t)n - 1);
    hdr[hlen - 1] = '\n';

    qd_atomic_file *f;
    int rc = qd_atomic_open(path, &f, err);
    if (rc)
        return rc;
    rc = qd_atomic_write(f, pre, sizeof pre, err);
    if (!rc)
        rc = qd_atomic_write(f, hdr, hlen, err);
    if (!rc && host_is_le()) {
        rc = qd_atomic_write(f, data, bytes, err);
    } else if (!rc) {
        uint8_t tmp[4096];
        const uint8_t *src = data;
        for (size_t off = 0; off < bytes && !rc; off += sizeof tmp) {
            size_t k = bytes - off < sizeof tmp ? bytes - off : sizeof tmp;
            memcpy(tmp, src + off, k);
            swap_elems(tmp, k / width, width);
            rc = qd_atomic_write(f, tmp, k, err);
        }
    }
    if (rc) {
        qd_atomic_abort(f);
        return rc;
    }
    return qd_atomic_commit(f, err);
}

/* ------------------------------------------------------------------------
 * Header parser
 * ---------------------------------------------------------------------- */

typedef struct scan {
    const char *p, *end;
} scan;

static void skip_ws(scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' ||
                             *s->p == '\r'))
        s->p++;
}

static int eat(scan *s, char c)
{
    skip_ws(s);
    if (s->p < s->end && *s->p == c) {
        s->p++;
        return 1;
    }
    return 0;
}

/* A quoted string without escapes; *out points into the header. */
static int read_str(scan *s, const char **out, size_t *len)
{
    skip_ws(s);
    if (s->p >= s->end || (*s->p != '\'' && *s->p != '"'))
        return -1;
    char q = *s->p++;
    const char *start = s->p;
    while (s->p < s->end && *s->p != q) {
        if (*s->p == '\\' || *s->p == '\n')
            return -1;
        s->p++;
    }
    if (s->p >= s->end)
        return -1;
    *out = start;
    *len = (size_t)(s->p - start);
    s->p++;
    return 0;
}

static int read_word(scan *s, const char *w)
{
    skip_ws(s);
    size_t n = strlen(w);
    if ((size_t)(s->end - s->p) >= n && memcmp(s->p, w, n) == 0) {
        const char *after = s->p + n;
        if (after < s->end && ((*after >= 'a' && *after <= 'z') ||
                               (*after >= 'A' && *after <= 'Z') ||
                               (*after >= '0' && *after <= '9') || *after == '_'))
            return 0;
        s->p = after;
        return 1;
    }
    return 0;
}

static int read_uint(scan *s, size_t *out)
{
    skip_ws(s);
    if (s->p >= s->end || *s->p < '0' || *s->p > '9')
        return -1;
    size_t v = 0;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9') {
        size_t d = (size_t)(*s->p - '0');
        if (v > (SIZE_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
        s->p++;
    }
    if (s->p < s->end && *s->p == 'L') /* Python 2 era long suffix */
        s->p++;
    *out = v;
    return 0;
}

/* "(a, b, c)" — a 1-tuple needs its trailing comma, as in Python. */
static int read_shape(scan *s, size_t *shape, size_t *ndim, qd_error *err)
{
    if (!eat(s, '('))
        return qd_error_set(err, QD_ERR_FORMAT, "npy header: 'shape' is not a tuple");
    size_t n = 0;
    int trailing_comma = 0;
    if (eat(s, ')')) {
        *ndim = 0;
        return QD_OK;
    }
    for (;;) {
        if (n == QD_NPY_MAX_DIMS)
            return qd_error_set(err, QD_ERR_UNSUPPORTED,
                                "npy header: more than %d dimensions",
                                QD_NPY_MAX_DIMS);
        if (read_uint(s, &shape[n]))
            return qd_error_set(err, QD_ERR_FORMAT,
                                "npy header: bad dimension in 'shape'");
        n++;
        trailing_comma = eat(s, ',');
        if (eat(s, ')'))
            break;
        if (!trailing_comma)
            return qd_error_set(err, QD_ERR_FORMAT,
                                "npy header: malformed 'shape' tuple");
    }
    if (n == 1 && !trailing_comma)
        return qd_error_set(err, QD_ERR_FORMAT,
                            "npy header: 'shape' (n) is not a tuple (needs (n,))");
    *ndim = n;
    return QD_OK;
}

static int parse_descr(const char *d, size_t n, qd_npy_dtype *t, qd_error *err)
{
    static const struct {
        const char *s;
        qd_npy_dtype t;
    } known[] = {
        {"<f8", QD_NPY_F8}, {"<i4", QD_NPY_I4}, {"<i8", QD_NPY_I8},
        {"|u1", QD_NPY_U1}, {"<u1", QD_NPY_U1},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        if (strlen(known[i].s) == n && memcmp(known[i].s, d, n) == 0) {
            *t = known[i].t;
            return QD_OK;
        }
    }
    return qd_error_set(err, QD_ERR_UNSUPPORTED,
                        "npy: unsupported dtype '%.*s' (supported: <f8 <i4 <i8 |u1)",
                        (int)(n > 32 ? 32 : n), d);
}

static int parse_header(const char *h, size_t hlen, qd_npy *out, qd_error *err)
{
    scan s = {h, h + hlen};
    int have_descr = 0, have_fortran = 0, have_shape = 0;
    if (!eat(&s, '{'))
        return qd_error_set(err, QD_ERR_FORMAT, "npy header: not a dict");
    while (!eat(&s, '}')) {
        const char *key;
        size_t klen;
        if (read_str(&s, &key, &klen))
            return qd_error_set(err, QD_ERR_FORMAT, "npy header: expected a key");
        if (!eat(&s, ':'))
            return qd_error_set(err, QD_ERR_FORMAT, "npy header: expected ':'");
#define KEY_IS(lit) (klen == sizeof(lit) - 1 && memcmp(key, lit, klen) == 0)
        if (KEY_IS("descr")) {
            const char *d;
            size_t dl;
            if (have_descr++)
                return qd_error_set(err, QD_ERR_FORMAT, "npy header: duplicate 'descr'");
            skip_ws(&s);
            int quoted = s.p < s.end && (*s.p == '\'' || *s.p == '"');
            if (read_str(&s, &d, &dl))
                return quoted ? qd_error_set(err, QD_ERR_FORMAT,
                                             "npy header: unterminated string")
                              : qd_error_set(err, QD_ERR_UNSUPPORTED,
                                             "npy: structured dtypes are not supported");
            int rc = parse_descr(d, dl, &out->dtype, err);
            if (rc)
                return rc;
        } else if (KEY_IS("fortran_order")) {
            if (have_fortran++)
                return qd_error_set(err, QD_ERR_FORMAT,
                                    "npy header: duplicate 'fortran_order'");
            if (read_word(&s, "True"))
                return qd_error_set(err, QD_ERR_UNSUPPORTED,
                                    "npy: Fortran-order arrays are not supported");
            if (!read_word(&s, "False"))
                return qd_error_set(err, QD_ERR_FORMAT,
                                    "npy header: 'fortran_order' is not a bool");
        } else if (KEY_IS("shape")) {
            if (have_shape++)
                return qd_error_set(err, QD_ERR_FORMAT, "npy header: duplicate 'shape'");
            int rc = read_shape(&s, out->shape, &out->ndim, err);
            if (rc)
                return rc;
        } else {
            return qd_error_set(err, QD_ERR_FORMAT, "npy header: unexpected key '%.*s'",
                                (int)(klen > 32 ? 32 : klen), key);
        }
#undef KEY_IS
        if (!eat(&s, ',')) {
            if (!eat(&s, '}'))
                return qd_error_set(err, QD_ERR_FORMAT,
                                    "npy header: expected ',' or '}'");
            break;
        }
    }
    skip_ws(&s);
    if (s.p != s.end)
        return qd_error_set(err, QD_ERR_FORMAT, "npy header: junk after the dict");
    if (!have_descr || !have_fortran || !have_shape)
        return qd_error_set(err, QD_ERR_FORMAT,
                            "npy header: missing '%s'",
                            !have_descr ? "descr" : !have_fortran ? "fortran_order"
                                                                  : "shape");
    return QD_OK;
}

/* ------------------------------------------------------------------------
 * Reader
 * ---------------------------------------------------------------------- */

void qd_npy_free(qd_npy *a)
{
    if (a) {
        free(a->data);
        memset(a, 0, sizeof *a);
    }
}

int qd_npy_parse(const void *buf, size_t len, qd_npy *out, qd_error *err)
{
    memset(out, 0, sizeof *out);
    const uint8_t *b = buf;
    if (len < MAGIC_LEN + 4 || memcmp(b, MAGIC, MAGIC_LEN) != 0)
        return qd_error_set(err, QD_ERR_FORMAT, "not a .npy file (bad magic)");
    uint8_t major = b[6], minor = b[7];
    size_t pre, hlen;
    if (major == 1 && minor == 0) {
        pre = MAGIC_LEN + 4;
        hlen = (size_t)b[8] | (size_t)b[9] << 8;
    } else if (major == 2 && minor == 0) {
        pre = MAGIC_LEN + 6;
        if (len < pre)
            return qd_error_set(err, QD_ERR_FORMAT, "npy: truncated preamble");
        hlen = qd_io_get_le32(b + 8);
    } else {
        return qd_error_set(err, QD_ERR_UNSUPPORTED,
                            "npy: unsupported format version %u.%u", major, minor);
    }
    if (hlen > MAX_HEADER || hlen > len - pre)
        return qd_error_set(err, QD_ERR_FORMAT,
                            "npy: header length %zu exceeds the file (%zu bytes)",
                            hlen, len);
    int rc = parse_header((const char *)b + pre, hlen, out, err);
    if (rc) {
        memset(out, 0, sizeof *out);
        return rc;
    }
    size_t width = qd_npy_dtype_size(out->dtype), count, bytes;
    size_t have = len - pre - hlen;
    if (total_size(out->shape, out->ndim, width, &count, &bytes)) {
        memset(out, 0, sizeof *out);
        return qd_error_set(err, QD_ERR_FORMAT, "npy: shape too large (file holds "
                            "%zu data bytes)", have);
    }
    if (bytes != have) {
        memset(out, 0, sizeof *out);
        return qd_error_set(err, QD_ERR_FORMAT,
                            "npy: data %s: shape needs %zu bytes, file holds %zu",
                            bytes > have ? "truncated" : "has trailing bytes", bytes,
                            have);
    }
    out->count = count;
    out->data = malloc(bytes ? bytes : 1); /* bytes == what the file holds */
    if (!out->data) {
        memset(out, 0, sizeof *out);
        return qd_error_set(err, QD_ERR_NOMEM, "npy: out of memory");
    }
    memcpy(out->data, b + pre + hlen, bytes);
    if (!host_is_le() && width > 1)
        swap_elems(out->data, count, width);
    return QD_OK;
}

int qd_npy_read(const char *path, qd_npy *out, qd_error *err)
{
    memset(out, 0, sizeof *out);
    void *buf;
    size_t len;
    int rc = qd_read_file(path, 0, &buf, &len, err);
    if (rc)
        return rc;
    rc = qd_npy_parse(buf, len, out, err);
    free(buf);
    if (rc)
        qd_error_prefix(err, "'%s'", path);
    return rc;
}
