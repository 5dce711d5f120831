/* Typed, bounds-checked binary serialisation (see qdistill/blob.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/blob.h"
#include "io_internal.h"

enum tag {
    TAG_U32 = 0x01,
    TAG_U64 = 0x02,
    TAG_I64 = 0x03,
    TAG_F64 = 0x04,
    TAG_U32A = 0x11,
    TAG_I32A = 0x12,
    TAG_U64A = 0x13,
    TAG_I64A = 0x14,
    TAG_F64A = 0x15,
    TAG_STR = 0x21,
    TAG_NULLSTR = 0x22,
    TAG_BYTES = 0x23,
    TAG_RNG = 0x31,
};

static const char *tag_name(int t)
{
    switch (t) {
    case TAG_U32: return "u32";
    case TAG_U64: return "u64";
    case TAG_I64: return "i64";
    case TAG_F64: return "f64";
    case TAG_U32A: return "u32 array";
    case TAG_I32A: return "i32 array";
    case TAG_U64A: return "u64 array";
    case TAG_I64A: return "i64 array";
    case TAG_F64A: return "f64 array";
    case TAG_STR: case TAG_NULLSTR: return "string";
    case TAG_BYTES: return "bytes";
    case TAG_RNG: return "rng state";
    default: return "unknown item";
    }
}

/* ------------------------------------------------------------------------
 * Writing
 * ---------------------------------------------------------------------- */

void qd_blob_init(qd_blob *b)
{
    memset(b, 0, sizeof *b);
}

void qd_blob_free(qd_blob *b)
{
    if (b) {
        free(b->data);
        memset(b, 0, sizeof *b);
    }
}

void qd_blob_clear(qd_blob *b)
{
    b->len = 0;
    b->failed = 0;
}

/* Make room for n more bytes; returns the write position or NULL. */
static uint8_t *grow(qd_blob *b, size_t n)
{
    if (b->failed)
        return NULL;
    if (n > SIZE_MAX - b->len) {
        b->failed = 1;
        return NULL;
    }
    size_t need = b->len + n;
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < need)
            cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        uint8_t *d = realloc(b->data, cap);
        if (!d) {
            b->failed = 1;
            return NULL;
        }
        b->data = d;
        b->cap = cap;
    }
    uint8_t *p = b->data + b->len;
    b->len = need;
    return p;
}

int qd_blob_append(qd_blob *b, const void *data, size_t len)
{
    uint8_t *p = grow(b, len);
    if (!p)
        return QD_ERR_NOMEM;
    if (len)
        memcpy(p, data, len);
    return QD_OK;
}

static int put_scalar(qd_blob *b, int tag, uint64_t bits, int width)
{
    uint8_t *p = grow(b, 1 + (size_t)width);
    if (!p)
        return QD_ERR_NOMEM;
    p[0] = (uint8_t)tag;
    if (width == 4)
        qd_io_put_le32(p + 1, (uint32_t)bits);
    else
        qd_io_put_le64(p + 1, bits);
    return QD_OK;
}

static uint64_t f64_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static double bits_f64(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

int qd_blob_put_u32(qd_blob *b, uint32_t v) { return put_scalar(b, TAG_U32, v, 4); }
int qd_blob_put_u64(qd_blob *b, uint64_t v) { return put_scalar(b, TAG_U64, v, 8); }
int qd_blob_put_i64(qd_blob *b, int64_t v) { return put_scalar(b, TAG_I64, (uint64_t)v, 8); }
int qd_blob_put_f64(qd_blob *b, double v) { return put_scalar(b, TAG_F64, f64_bits(v), 8); }

/* Tag + u64 count + n elements of `width` bytes; elements fetched by get(). */
static uint8_t *put_header(qd_blob *b, int tag, size_t n, size_t width)
{
    if (width && n > (SIZE_MAX - 9) / width) {
        b->failed = 1;
        return NULL;
    }
    uint8_t *p = grow(b, 9 + n * width);
    if (!p)
        return NULL;
    p[0] = (uint8_t)tag;
    qd_io_put_le64(p + 1, (uint64_t)n);
    return p + 9;
}

#define PUT_ARRAY(fn, T, tag, width, conv)                                   \
    int fn(qd_blob *b, const T *v, size_t n)                                 \
    {                                                                        \
        uint8_t *p = put_header(b, tag, n, width);                           \
        if (!p)                                                              \
            return QD_ERR_NOMEM;                                             \
        for (size_t i = 0; i < n; i++, p += width) {                         \
            if (width == 4)                                                  \
                qd_io_put_le32(p, (uint32_t)conv(v[i]));                     \
            else                                                             \
                qd_io_put_le64(p, (uint64_t)conv(v[i]));                     \
        }                                                                    \
        return QD_OK;                                                        \
    }
#define ID(x) (x)
PUT_ARRAY(qd_blob_put_u32_array, uint32_t, TAG_U32A, 4, ID)
PUT_ARRAY(qd_blob_put_i32_array, int32_t, TAG_I32A, 4, ID)
PUT_ARRAY(qd_blob_put_u64_array, uint64_t, TAG_U64A, 8, ID)
PUT_ARRAY(qd_blob_put_i64_array, int64_t, TAG_I64A, 8, ID)
PUT_ARRAY(qd_blob_put_f64_array, double, TAG_F64A, 8, f64_bits)

int qd_blob_put_bytes(qd_blob *b, const void *data, size_t n)
{
    uint8_t *p = put_header(b, TAG_BYTES, n, 1);
    if (!p)
        return QD_ERR_NOMEM;
    if (n)
        memcpy(p, data, n);
    return QD_OK;
}

int qd_blob_put_str(qd_blob *b, const char *s)
{
    if (!s) {
        uint8_t *p = grow(b, 1);
        if (!p)
            return QD_ERR_NOMEM;
        p[0] = TAG_NULLSTR;
        return QD_OK;
    }
    size_t n = strlen(s);
    uint8_t *p = put_header(b, TAG_STR, n, 1);
    if (!p)
        return QD_ERR_NOMEM;
    memcpy(p, s, n);
    return QD_OK;
}

int qd_blob_put_rng(qd_blob *b, const qd_rng *rng)
{
    uint8_t *p = grow(b, 1 + 8 + 8 + 8 + 1);
    if (!p)
        return QD_ERR_NOMEM;
    p[0] = TAG_RNG;
    qd_io_put_le64(p + 1, rng->state);
    qd_io_put_le64(p + 9, rng->inc);
    qd_io_put_le64(p + 17, f64_bits(rng->spare));
    p[25] = rng->has_spare ? 1 : 0;
    return QD_OK;
}

/* ------------------------------------------------------------------------
 * Reading
 * ---------------------------------------------------------------------- */

void qd_blob_reader_init(qd_blob_reader *r, const void *data, size_t len)
{
    r->data = data;
    r->len = data ? len : 0;
    r->pos = 0;
}

static size_t left(const qd_blob_reader *r)
{
    return r->len - r->pos;
}

/* Check the tag at the cursor and that `need` bytes follow it; on success
 * the cursor is past the tag. */
static int expect(qd_blob_reader *r, int tag, size_t need, qd_error *err)
{
    if (left(r) < 1)
        return qd_error_set(err, QD_ERR_FORMAT,
                            "blob truncated at offset %zu: expected %s, found end",
                            r->pos, tag_name(tag));
    int t = r->data[r->pos];
    if (t != tag && !(tag == TAG_STR && t == TAG_NULLSTR))
        return qd_error_set(err, QD_ERR_FORMAT,
                            "blob corrupt at offset %zu: expected %s, found %s (tag 0x%02x)",
                            r->pos, tag_name(tag), tag_name(t), (unsigned)t);
    if (t == TAG_NULLSTR)
        need = 0;
    if (left(r) - 1 < need)
        return qd_error_set(err, QD_ERR_FORMAT,
                            "blob truncated at offset %zu: %s needs %zu bytes, %zu left",
                            r->pos, tag_name(tag), need, left(r) - 1);
    r->pos++;
    return QD_OK;
}

static int get_scalar(qd_blob_reader *r, int tag, int width, uint64_t *out,
                      qd_error *err)
{
    int rc = expect(r, tag, (size_t)width, err);
    if (rc)
        return rc;
    const uint8_t *p = r->data + r->pos;
    *out = width == 4 ? qd_io_get_le32(p) : qd_io_get_le64(p);
    r->pos += (size_t)width;
    return QD_OK;
}

int qd_blob_get_u32(qd_blob_reader *r, uint32_t *v, qd_error *err)
{
    uint64_t u;
    int rc = get_scalar(r, TAG_U32, 4, &u, err);
    if (!rc)
        *v = (uint32_t)u;
    return rc;
}

int qd_blob_get_u64(qd_blob_reader *r, uint64_t *v, qd_error *err)
{
    return get_scalar(r, TAG_U64, 8, v, err);
}

int qd_blob_get_i64(qd_blob_reader *r, int64_t *v, qd_error *err)
{
    uint64_t u;
    int rc = get_scalar(r, TAG_I64, 8, &u, err);
    if (!rc)
        *v = (int64_t)u;
    return rc;
}

int qd_blob_get_f64(qd_blob_reader *r, double *v, qd_error *err)
{
    uint64_t u;
    int rc = get_scalar(r, TAG_F64, 8, &u, err);
    if (!rc)
        *v = bits_f64(u);
    return rc;
}

/* Read tag + count of an array item, checking the payload fits. The cursor
 * ends on the first element. */
static int get_count(qd_blob_reader *r, int tag, size_t width, size_t *n,
                     qd_error *err)
{
    size_t start = r->pos;
    int rc = expect(r, tag, 8, err);
    if (rc)
        return rc;
    if (r->data[start] == TAG_NULLSTR) {
        *n = 0;
        return QD_OK;
    }
    uint64_t cnt = qd_io_get_le64(r->data + r->pos);
    size_t room = left(r) - 8;
    if (cnt > room / (width ? width : 1)) {
        r->pos = start;
        return qd_error_set(err, QD_ERR_FORMAT,
                            "blob corrupt at offset %zu: %s of %llu elements "
                            "but only %zu bytes left",
                            start, tag_name(tag), (unsigned long long)cnt, room);
    }
    r->pos += 8;
    *n = (size_t)cnt;
    return QD_OK;
}

static void decode(const uint8_t *p, size_t n, size_t width, int is_f64,
                   void *out)
{
    for (size_t i = 0; i < n; i++, p += width) {
        if (width == 4) {
            uint32_t u = qd_io_get_le32(p);
            memcpy((uint8_t *)out + i * 4, &u, 4);
        } else {
            uint64_t u = qd_io_get_le64(p);
            if (is_f64) {
                double d = bits_f64(u);
                memcpy((uint8_t *)out + i * 8, &d, 8);
            } else {
                memcpy((uint8_t *)out + i * 8, &u, 8);
            }
        }
    }
}

static int get_array(qd_blob_reader *r, int tag, size_t width, void *out,
                     size_t n, qd_error *err)
{
    size_t start = r->pos, cnt = 0;
    int rc = get_count(r, tag, width, &cnt, err);
    if (rc)
        return rc;
    if (cnt != n) {
        r->pos = start;
        return qd_error_set(err, QD_ERR_FORMAT,
                            "blob mismatch at offset %zu: %s has %zu elements, "
                            "expected %zu", start, tag_name(tag), cnt, n);
    }
    decode(r->data + r->pos, n, width, tag == TAG_F64A, out);
    r->pos += n * width;
    return QD_OK;
}

static int get_array_alloc(qd_blob_reader *r, int tag, size_t width,
                           void **out, size_t *n, qd_error *err)
{
    *out = NULL;
    *n = 0;
    size_t start = r->pos, cnt = 0;
    int rc = get_count(r, tag, width, &cnt, err);
    if (rc)
        return rc;
    if (cnt) {
        *out = malloc(cnt * width); /* bounded by the blob's length */
        if (!*out) {
            r->pos = start;
            return qd_error_set(err, QD_ERR_NOMEM, "blob: out of memory");
        }
        decode(r->data + r->pos, cnt, width, tag == TAG_F64A, *out);
    }
    r->pos += cnt * width;
    *n = cnt;
    return QD_OK;
}

int qd_blob_get_u32_array(qd_blob_reader *r, uint32_t *v, size_t n, qd_error *err)
{
    return get_array(r, TAG_U32A, 4, v, n, err);
}
int qd_blob_get_i32_array(qd_blob_reader *r, int32_t *v, size_t n, qd_error *err)
{
    return get_array(r, TAG_I32A, 4, v, n, err);
}
int qd_blob_get_u64_array(qd_blob_reader *r, uint64_t *v, size_t n, qd_error *err)
{
    return get_array(r, TAG_U64A, 8, v, n, err);
}
int qd_blob_get_i64_array(qd_blob_reader *r, int64_t *v, size_t n, qd_error *err)
{
    return get_array(r, TAG_I64A, 8, v, n, err);
}
int qd_blob_get_f64_array(qd_blob_reader *r, double *v, size_t n, qd_error *err)
{
    return get_array(r, TAG_F64A, 8, v, n, err);
}
int qd_blob_get_f64_array_alloc(qd_blob_reader *r, double **v, size_t *n,
                                qd_error *err)
{
    void *p;
    int rc = get_array_alloc(r, TAG_F64A, 8, &p, n, err);
    *v = p;
    return rc;
}
int qd_blob_get_i32_array_alloc(qd_blob_reader *r, int32_t **v, size_t *n,
                                qd_error *err)
{
    void *p;
    int rc = get_array_alloc(r, TAG_I32A, 4, &p, n, err);
    *v = p;
    return rc;
}

int qd_blob_get_bytes(qd_blob_reader *r, const void **p, size_t *n, qd_error *err)
{
    size_t cnt = 0;
    int rc = get_count(r, TAG_BYTES, 1, &cnt, err);
    if (rc)
        return rc;
    *p = r->data + r->pos;
    *n = cnt;
    r->pos += cnt;
    return QD_OK;
}

int qd_blob_get_str(qd_blob_reader *r, char **s, qd_error *err)
{
    *s = NULL;
    size_t start = r->pos, cnt = 0;
    int is_null = left(r) >= 1 && r->data[r->pos] == TAG_NULLSTR;
    int rc = get_count(r, TAG_STR, 1, &cnt, err);
    if (rc || is_null)
        return rc;
    const uint8_t *p = r->data + r->pos;
    if (memchr(p, 0, cnt)) {
        r->pos = start;
        return qd_error_set(err, QD_ERR_FORMAT,
                            "blob corrupt at offset %zu: string holds a NUL byte",
                            start);
    }
    char *out = malloc(cnt + 1);
    if (!out) {
        r->pos = start;
        return qd_error_set(err, QD_ERR_NOMEM, "blob: out of memory");
    }
    memcpy(out, p, cnt);
    out[cnt] = '\0';
    r->pos += cnt;
    *s = out;
    return QD_OK;
}

int qd_blob_get_rng(qd_blob_reader *r, qd_rng *rng, qd_error *err)
{
    size_t start = r->pos;
    int rc = expect(r, TAG_RNG, 25, err);
    if (rc)
        return rc;
    const uint8_t *p = r->data + r->pos;
    uint64_t inc = qd_io_get_le64(p + 8);
    double spare = bits_f64(qd_io_get_le64(p + 16));
    int has = p[24];
    if (!(inc & 1u) || has > 1 || (has && !isfinite(spare))) {
        r->pos = start;
        return qd_error_set(err, QD_ERR_FORMAT,
                            "blob corrupt at offset %zu: invalid rng state", start);
    }
    memset(rng, 0, sizeof *rng);
    rng->state = qd_io_get_le64(p);
    rng->inc = inc;
    rng->spare = spare; /* kept bit-exact even when unused */
    rng->has_spare = has;
    r->pos += 25;
    return QD_OK;
}

int qd_blob_reader_end(const qd_blob_reader *r, qd_error *err)
{
    if (r->pos != r->len)
        return qd_error_set(err, QD_ERR_FORMAT,
                            "blob has %zu unread bytes at offset %zu", left(r),
                            r->pos);
    return QD_OK;
}
