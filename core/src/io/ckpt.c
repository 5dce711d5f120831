/* Checkpoint container: named sections with per-section CRC32 (zlib),
 * published atomically (see qdistill/ckpt.h for the layout). */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "qdistill/ckpt.h"
#include "qdistill/fsutil.h"
#include "io_internal.h"

#define HEADER_LEN 32u
#define SECTION_HDR 16u

/* ------------------------------------------------------------------------
 * Writer
 * ---------------------------------------------------------------------- */

struct qd_ckpt_writer {
    qd_blob records;      /* section records, back to back */
    char **names;
    size_t n, cap;
};

int qd_ckpt_writer_create(qd_ckpt_writer **out, qd_error *err)
{
    *out = calloc(1, sizeof **out);
    if (!*out)
        return qd_error_set(err, QD_ERR_NOMEM, "checkpoint: out of memory");
    qd_blob_init(&(*out)->records);
    return QD_OK;
}

void qd_ckpt_writer_destroy(qd_ckpt_writer *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n; i++)
        free(w->names[i]);
    free(w->names);
    qd_blob_free(&w->records);
    free(w);
}

static uint32_t section_crc(const uint8_t lens[12], const char *name,
                            size_t name_len, const void *data, size_t len)
{
    uLong crc = crc32_z(0L, Z_NULL, 0);
    crc = crc32_z(crc, lens, 12);
    crc = crc32_z(crc, (const Bytef *)name, name_len);
    if (len)
        crc = crc32_z(crc, data, len);
    return (uint32_t)crc;
}

int qd_ckpt_writer_add(qd_ckpt_writer *w, const char *name, const void *data,
                       size_t len, qd_error *err)
{
    size_t nl = name ? strlen(name) : 0;
    if (nl == 0 || nl > QD_CKPT_NAME_MAX)
        return qd_error_set(err, QD_ERR_INVALID,
                            "checkpoint: section name must have 1..%d bytes",
                            QD_CKPT_NAME_MAX);
    if (len && !data)
        return qd_error_set(err, QD_ERR_INVALID,
                            "checkpoint: section '%s' has no data", name);
    for (size_t i = 0; i < w->n; i++)
        if (strcmp(w->names[i], name) == 0)
            return qd_error_set(err, QD_ERR_INVALID,
                                "checkpoint: duplicate section '%s'", name);
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 8;
        char **nn = realloc(w->names, cap * sizeof *nn);
        if (!nn)
            return qd_error_set(err, QD_ERR_NOMEM, "checkpoint: out of memory");
        w->names = nn;
        w->cap = cap;
    }
    char *copy = strdup(name);
    if (!copy)
        return qd_error_set(err, QD_ERR_NOMEM, "checkpoint: out of memory");
    uint8_t hdr[SECTION_HDR];
    uint8_t lens[12];
    qd_io_put_le32(lens, (uint32_t)nl);
    qd_io_put_le64(lens + 4, (uint64_t)len);
    qd_io_put_le32(hdr, (uint32_t)nl);
    qd_io_put_le32(hdr + 4, section_crc(lens, name, nl, data, len));
    qd_io_put_le64(hdr + 8, (uint64_t)len);
    size_t before = w->records.len;
    qd_blob_append(&w->records, hdr, sizeof hdr);
    qd_blob_append(&w->records, name, nl);
    qd_blob_append(&w->records, data, len);
    if (w->records.failed) {
        w->records.failed = 0;
        w->records.len = before;
        free(copy);
        return qd_error_set(err, QD_ERR_NOMEM,
                            "checkpoint: out of memory adding section '%s'", name);
    }
    w->names[w->n++] = copy;
    return QD_OK;
}

int qd_ckpt_writer_add_blob(qd_ckpt_writer *w, const char *name,
                            const qd_blob *b, qd_error *err)
{
    if (b->failed)
        return qd_error_set(err, QD_ERR_NOMEM,
                            "checkpoint: section '%s' was not fully serialised "
                            "(out of memory)", name);
    return qd_ckpt_writer_add(w, name, b->data, b->len, err);
}

int qd_ckpt_writer_commit(qd_ckpt_writer *w, const char *path, qd_error *err)
{
    uint8_t hdr[HEADER_LEN];
    memcpy(hdr, QD_CKPT_MAGIC, 8);
    qd_io_put_le32(hdr + 8, QD_CKPT_VERSION);
    qd_io_put_le32(hdr + 12, (uint32_t)w->n);
    qd_io_put_le64(hdr + 16, (uint64_t)HEADER_LEN + w->records.len);
    qd_io_put_le32(hdr + 24, 0);
    qd_io_put_le32(hdr + 28, (uint32_t)crc32_z(crc32_z(0L, Z_NULL, 0), hdr, 28));
    qd_atomic_file *f;
    int rc = qd_atomic_open(path, &f, err);
    if (rc)
        return qd_error_prefix(err, "checkpoint '%s'", path);
    if (qd_atomic_write(f, hdr, sizeof hdr, err) ||
        qd_atomic_write(f, w->records.data, w->records.len, err)) {
        qd_atomic_abort(f);
        return qd_error_prefix(err, "checkpoint '%s'", path);
    }
    if (qd_atomic_commit(f, err))
        return qd_error_prefix(err, "checkpoint '%s'", path);
    return QD_OK;
}

/* ------------------------------------------------------------------------
 * Reader
 * ---------------------------------------------------------------------- */

typedef struct section {
    char *name;            /* NUL-terminated copy */
    const uint8_t *data;   /* into buf */
    size_t len;
} section;

struct qd_ckpt {
    char *label;           /* path, for messages */
    uint8_t *buf;
    section *sec;
    size_t n;
};

void qd_ckpt_destroy(qd_ckpt *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++)
        free(c->sec[i].name);
    free(c->sec);
    free(c->buf);
    free(c->label);
    free(c);
}

/* Takes ownership of buf (freed on failure too). */
static int parse_owned(uint8_t *buf, size_t len, const char *label,
                       qd_ckpt **out, qd_error *err)
{
    *out = NULL;
    int rc = QD_OK;
    qd_ckpt *c = calloc(1, sizeof *c);
    if (!c) {
        free(buf);
        return qd_error_set(err, QD_ERR_NOMEM, "checkpoint '%s': out of memory",
                            label);
    }
    c->buf = buf;
    c->label = strdup(label);
    if (!c->label) {
        qd_ckpt_destroy(c);
        return qd_error_set(err, QD_ERR_NOMEM, "checkpoint '%s': out of memory",
                            label);
    }
#define FAIL(code, ...)                                             \
    do {                                                            \
        rc = qd_error_set(err, code, __VA_ARGS__);                  \
        goto fail;                                                  \
    } while (0)
    if (len < 8 || memcmp(buf, QD_CKPT_MAGIC, 8) != 0)
        FAIL(QD_ERR_FORMAT, "checkpoint '%s': not a checkpoint (bad magic)", label);
    if (len < HEADER_LEN)
        FAIL(QD_ERR_FORMAT, "checkpoint '%s': truncated header (%zu bytes)", label,
             len);
    uint32_t version = qd_io_get_le32(buf + 8);
    if (version != QD_CKPT_VERSION)
        FAIL(QD_ERR_FORMAT,
             "checkpoint '%s': unsupported format version %u (this build reads %u)",
             label, version, QD_CKPT_VERSION);
    uint32_t hcrc = (uint32_t)crc32_z(crc32_z(0L, Z_NULL, 0), buf, 28);
    if (hcrc != qd_io_get_le32(buf + 28))
        FAIL(QD_ERR_FORMAT, "checkpoint '%s': header CRC mismatch", label);
    if (qd_io_get_le32(buf + 24) != 0)
        FAIL(QD_ERR_FORMAT, "checkpoint '%s': unknown flags 0x%x", label,
             qd_io_get_le32(buf + 24));
    uint32_t nsec = qd_io_get_le32(buf + 12);
    uint64_t total = qd_io_get_le64(buf + 16);
    if (total != (uint64_t)len)
        FAIL(QD_ERR_FORMAT,
             "checkpoint '%s': %s (header says %llu bytes, file has %zu)", label,
             total > (uint64_t)len ? "truncated" : "trailing bytes",
             (unsigned long long)total, len);
    if (nsec > (len - HEADER_LEN) / (SECTION_HDR + 1))
        FAIL(QD_ERR_FORMAT, "checkpoint '%s': impossible section count %u", label,
             nsec);
    c->sec = calloc(nsec ? nsec : 1, sizeof *c->sec);
    if (!c->sec)
        FAIL(QD_ERR_NOMEM, "checkpoint '%s': out of memory", label);
    size_t pos = HEADER_LEN;
    for (uint32_t i = 0; i < nsec; i++) {
        if (len - pos < SECTION_HDR)
            FAIL(QD_ERR_FORMAT, "checkpoint '%s': section %u header truncated",
                 label, i);
        uint32_t nl = qd_io_get_le32(buf + pos);
        uint32_t crc = qd_io_get_le32(buf + pos + 4);
        uint64_t dl = qd_io_get_le64(buf + pos + 8);
        size_t room = len - pos - SECTION_HDR;
        if (nl == 0 || nl > QD_CKPT_NAME_MAX || nl > room)
            FAIL(QD_ERR_FORMAT, "checkpoint '%s': section %u has a bad name length %u",
                 label, i, nl);
        const char *nm = (const char *)buf + pos + SECTION_HDR;
        if (memchr(nm, 0, nl))
            FAIL(QD_ERR_FORMAT, "checkpoint '%s': section %u name holds a NUL byte",
                 label, i);
        char *name = malloc(nl + 1);
        if (!name)
            FAIL(QD_ERR_NOMEM, "checkpoint '%s': out of memory", label);
        memcpy(name, nm, nl);
        name[nl] = '\0';
        c->sec[i].name = name;
        c->n = i + 1;
        if (dl > room - nl)
            FAIL(QD_ERR_FORMAT,
                 "checkpoint '%s': section '%s' truncated (%llu bytes declared, %zu left)",
                 label, name, (unsigned long long)dl, room - nl);
        const uint8_t *data = buf + pos + SECTION_HDR + nl;
        uint8_t lens[12]; /* the CRC covers the lengths as the writer laid them */
        qd_io_put_le32(lens, nl);
        qd_io_put_le64(lens + 4, dl);
        if (section_crc(lens, name, nl, data, (size_t)dl) != crc)
            FAIL(QD_ERR_FORMAT, "checkpoint '%s': section '%s' CRC mismatch", label,
                 name);
        for (uint32_t j = 0; j < i; j++)
            if (strcmp(c->sec[j].name, name) == 0)
                FAIL(QD_ERR_FORMAT, "checkpoint '%s': duplicate section '%s'",
                     label, name);
        c->sec[i].data = data;
        c->sec[i].len = (size_t)dl;
        pos += SECTION_HDR + nl + (size_t)dl;
    }
    if (pos != len)
        FAIL(QD_ERR_FORMAT, "checkpoint '%s': %zu unaccounted bytes after the last "
                            "section", label, len - pos);
#undef FAIL
    *out = c;
    return QD_OK;
fail:
    qd_ckpt_destroy(c);
    return rc;
}

int qd_ckpt_parse(const void *data, size_t len, const char *label,
                  qd_ckpt **out, qd_error *err)
{
    *out = NULL;
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return qd_error_set(err, QD_ERR_NOMEM, "checkpoint '%s': out of memory",
                            label ? label : "<memory>");
    if (len)
        memcpy(copy, data, len);
    return parse_owned(copy, len, label ? label : "<memory>", out, err);
}

int qd_ckpt_read(const char *path, qd_ckpt **out, qd_error *err)
{
    *out = NULL;
    void *buf;
    size_t len;
    int rc = qd_read_file(path, 0, &buf, &len, err);
    if (rc)
        return qd_error_prefix(err, "checkpoint");
    return parse_owned(buf, len, path, out, err);
}

size_t qd_ckpt_count(const qd_ckpt *c)
{
    return c->n;
}

const char *qd_ckpt_name(const qd_ckpt *c, size_t i)
{
    return i < c->n ? c->sec[i].name : NULL;
}

int qd_ckpt_has(const qd_ckpt *c, const char *name)
{
    for (size_t i = 0; i < c->n; i++)
        if (strcmp(c->sec[i].name, name) == 0)
            return 1;
    return 0;
}

int qd_ckpt_section(const qd_ckpt *c, const char *name, const void **data,
                    size_t *len, qd_error *err)
{
    for (size_t i = 0; i < c->n; i++) {
        if (strcmp(c->sec[i].name, name) == 0) {
            *data = c->sec[i].data;
            *len = c->sec[i].len;
            return QD_OK;
        }
    }
    *data = NULL;
    *len = 0;
    return qd_error_set(err, QD_ERR_FORMAT, "checkpoint '%s': no section '%s'",
                        c->label, name);
}
