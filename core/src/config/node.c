/* Configuration tree storage and read access: nodes live in chunks owned by
 * their qd_config, so a whole tree is freed at once and pointers handed out
 * stay valid until qd_config_destroy(). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_internal.h"

/* ------------------------------------------------------------------------
 * Storage
 * ---------------------------------------------------------------------- */

void qd__limits_resolve(const qd_config_limits *in, qd_config_limits *out)
{
    qd_config_limits l = {64, 1000000, (size_t)16 << 20, 8};
    if (in) {
        if (in->max_depth > 0)
            l.max_depth = in->max_depth;
        if (in->max_nodes > 0)
            l.max_nodes = in->max_nodes;
        if (in->max_bytes > 0)
            l.max_bytes = in->max_bytes;
        if (in->max_include_depth > 0)
            l.max_include_depth = in->max_include_depth;
    }
    if (l.max_depth > QD_CONFIG_DEPTH_CAP)
        l.max_depth = QD_CONFIG_DEPTH_CAP;
    if (l.max_include_depth > 64)
        l.max_include_depth = 64;
    *out = l;
}

qd_config *qd__config_new(const qd_config_limits *limits)
{
    qd_config *cfg = calloc(1, sizeof *cfg);
    if (cfg)
        qd__limits_resolve(limits, &cfg->limits);
    return cfg;
}

void qd_config_destroy(qd_config *cfg)
{
    if (!cfg)
        return;
    qd_node_chunk *c = cfg->chunks;
    while (c) {
        for (size_t i = 0; i < c->used; i++) {
            free(c->nodes[i].str);
            free(c->nodes[i].items);
            free(c->nodes[i].keys);
        }
        qd_node_chunk *next = c->next;
        free(c);
        c = next;
    }
    for (size_t i = 0; i < cfg->n_files; i++)
        free(cfg->files[i]);
    free(cfg->files);
    free(cfg);
}

const qd_node *qd_config_root(const qd_config *cfg)
{
    return cfg ? cfg->root : NULL;
}

const char *qd__intern(qd_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->n_files; i++)
        if (cfg->files[i] == name || strcmp(cfg->files[i], name) == 0)
            return cfg->files[i];
    if (cfg->n_files == cfg->cap_files) {
        size_t cap = cfg->cap_files ? 2 * cfg->cap_files : 8;
        char **f = realloc(cfg->files, cap * sizeof *f);
        if (!f)
            return NULL;
        cfg->files = f;
        cfg->cap_files = cap;
    }
    char *s = strdup(name);
    if (!s)
        return NULL;
    cfg->files[cfg->n_files++] = s;
    return s;
}

qd_node *qd__node_new(qd_config *cfg, int type, const char *file, int line,
                      int col)
{
    qd_node_chunk *c = cfg->chunks;
    if (!c || c->used == QD_NODE_CHUNK) {
        c = malloc(sizeof *c);
        if (!c)
            return NULL;
        c->used = 0;
        c->next = cfg->chunks;
        cfg->chunks = c;
    }
    qd_node *n = &c->nodes[c->used++];
    memset(n, 0, sizeof *n);
    n->type = (uint8_t)type;
    n->file = file;
    n->line = line;
    n->col = col;
    return n;
}

int qd__node_set_str(qd_node *n, const char *s, size_t len)
{
    char *t = malloc(len + 1);
    if (!t)
        return -1;
    memcpy(t, s, len);
    t[len] = '\0';
    free(n->str);
    n->str = t;
    return 0;
}

static int grow(qd_node *n, int with_keys)
{
    if (n->len < n->cap)
        return 0;
    size_t cap = n->cap ? 2 * n->cap : 4;
    if (cap > SIZE_MAX / sizeof(qd_node *))
        return -1;
    qd_node **items = realloc(n->items, cap * sizeof *items);
    if (!items)
        return -1;
    n->items = items;
    if (with_keys) {
        qd_node **keys = realloc(n->keys, cap * sizeof *keys);
        if (!keys)
            return -1;
        n->keys = keys;
    }
    n->cap = cap;
    return 0;
}

int qd__seq_push(qd_node *seq, qd_node *item)
{
    if (grow(seq, 0))
        return -1;
    seq->items[seq->len++] = item;
    return 0;
}

int qd__map_push(qd_node *map, qd_node *key, qd_node *value)
{
    /* keys and items grow together; a failed keys realloc leaves cap
     * unchanged, so the next attempt retries both */
    if (grow(map, 1))
        return -1;
    map->keys[map->len] = key;
    map->items[map->len] = value;
    map->len++;
    return 0;
}

void qd__map_remove(qd_node *map, size_t i)
{
    if (i >= map->len)
        return;
    memmove(map->keys + i, map->keys + i + 1, (map->len - i - 1) * sizeof *map->keys);
    memmove(map->items + i, map->items + i + 1, (map->len - i - 1) * sizeof *map->items);
    map->len--;
}

long qd__map_find(const qd_node *map, const char *key)
{
    if (!map || map->type != QD_NODE_MAP || !key)
        return -1;
    for (size_t i = 0; i < map->len; i++)
        if (strcmp(map->keys[i]->str, key) == 0)
            return (long)i;
    return -1;
}

qd_node *qd__node_copy(qd_config *cfg, const qd_node *src)
{
    /* positions keep pointing at where the text was written; the file name
     * must live in the destination config */
    const char *file = src->file ? qd__intern(cfg, src->file) : NULL;
    if (src->file && !file)
        return NULL;
    qd_node *n = qd__node_new(cfg, src->type, file, src->line, src->col);
    if (!n)
        return NULL;
    n->style = src->style;
    n->is_str = src->is_str;
    n->flow = src->flow;
    if (src->str && qd__node_set_str(n, src->str, strlen(src->str)))
        return NULL;
    if (src->len) {
        /* exact size up front: copies are the bulk of alias expansion */
        n->items = malloc(src->len * sizeof *n->items);
        if (src->type == QD_NODE_MAP)
            n->keys = malloc(src->len * sizeof *n->keys);
        if (!n->items || (src->type == QD_NODE_MAP && !n->keys))
            return NULL;
        n->cap = src->len;
    }
    for (size_t i = 0; i < src->len; i++) {
        qd_node *v = qd__node_copy(cfg, src->items[i]);
        if (!v)
            return NULL;
        if (src->type == QD_NODE_MAP) {
            qd_node *k = qd__node_copy(cfg, src->keys[i]);
            if (!k || qd__map_push(n, k, v))
                return NULL;
        } else if (qd__seq_push(n, v)) {
            return NULL;
        }
    }
    return n;
}

void qd__relocate(qd_node *n, const char *file, int line, int col)
{
    n->file = file;
    n->line = line;
    n->col = col;
    for (size_t i = 0; i < n->len; i++) {
        qd__relocate(n->items[i], file, line, col);
        if (n->type == QD_NODE_MAP)
            qd__relocate(n->keys[i], file, line, col);
    }
}

size_t qd__node_weight(const qd_node *n)
{
    size_t w = 1;
    for (size_t i = 0; i < n->len; i++) {
        w += qd__node_weight(n->items[i]);
        if (n->type == QD_NODE_MAP)
            w++;
    }
    return w;
}

int qd__node_height(const qd_node *n)
{
    if (n->type != QD_NODE_SEQ && n->type != QD_NODE_MAP)
        return 0;
    int h = 0;
    for (size_t i = 0; i < n->len; i++) {
        int c = qd__node_height(n->items[i]);
        if (c > h)
            h = c;
    }
    return h + 1;
}

/* ------------------------------------------------------------------------
 * Key index: open addressing over a mapping's keys, so that merging or
 * checking large mappings for duplicates stays linear.
 * ---------------------------------------------------------------------- */

static size_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return (size_t)(h ^ (h >> 29));
}

int qd__keyidx_add(qd_keyidx *ix, const qd_node *map, size_t i)
{
    if (2 * (ix->n + 1) > ix->cap) {
        size_t cap = ix->cap ? 2 * ix->cap : 64;
        while (2 * (ix->n + 1) > cap)
            cap *= 2;
        size_t *slots = calloc(cap, sizeof *slots);
        if (!slots)
            return -1;
        for (size_t s = 0; s < ix->cap; s++) {
            if (!ix->slots[s])
                continue;
            size_t h = hash_str(map->keys[ix->slots[s] - 1]->str) & (cap - 1);
            while (slots[h])
                h = (h + 1) & (cap - 1);
            slots[h] = ix->slots[s];
        }
        free(ix->slots);
        ix->slots = slots;
        ix->cap = cap;
    }
    size_t h = hash_str(map->keys[i]->str) & (ix->cap - 1);
    while (ix->slots[h])
        h = (h + 1) & (ix->cap - 1);
    ix->slots[h] = i + 1;
    ix->n++;
    return 0;
}

long qd__keyidx_find(const qd_keyidx *ix, const qd_node *map, const char *key)
{
    if (!ix->cap)
        return qd__map_find(map, key);
    size_t h = hash_str(key) & (ix->cap - 1);
    while (ix->slots[h]) {
        size_t i = ix->slots[h] - 1;
        if (strcmp(map->keys[i]->str, key) == 0)
            return (long)i;
        h = (h + 1) & (ix->cap - 1);
    }
    return -1;
}

int qd__keyidx_build(qd_keyidx *ix, const qd_node *map)
{
    qd__keyidx_free(ix);
    for (size_t i = 0; i < map->len; i++)
        if (qd__keyidx_add(ix, map, i))
            return -1;
    return 0;
}

void qd__keyidx_free(qd_keyidx *ix)
{
    free(ix->slots);
    memset(ix, 0, sizeof *ix);
}

int qd__map_merge(qd_node *dst, qd_node *src)
{
    qd_keyidx ix = {0};
    int use_ix = dst->len + src->len > 16;
    if (use_ix && qd__keyidx_build(&ix, dst))
        return -1;
    int rc = 0;
    for (size_t i = 0; i < src->len && rc == 0; i++) {
        qd_node *k = src->keys[i], *v = src->items[i];
        long j = use_ix ? qd__keyidx_find(&ix, dst, k->str) : qd__map_find(dst, k->str);
        if (j < 0) {
            if (qd__map_push(dst, k, v) || (use_ix && qd__keyidx_add(&ix, dst, dst->len - 1)))
                rc = -1;
        } else if (dst->items[j]->type == QD_NODE_MAP && v->type == QD_NODE_MAP) {
            rc = qd__map_merge(dst->items[j], v);
        } else {
            dst->keys[j] = k;
            dst->items[j] = v;
        }
    }
    qd__keyidx_free(&ix);
    return rc;
}

/* ------------------------------------------------------------------------
 * Read access
 * ---------------------------------------------------------------------- */

qd_node_type qd_node_kind(const qd_node *n)
{
    return n ? (qd_node_type)n->type : QD_NODE_NULL;
}

size_t qd_node_len(const qd_node *n)
{
    return n && (n->type == QD_NODE_SEQ || n->type == QD_NODE_MAP) ? n->len : 0;
}

const qd_node *qd_node_at(const qd_node *n, size_t i)
{
    return n && (n->type == QD_NODE_SEQ || n->type == QD_NODE_MAP) && i < n->len
               ? n->items[i]
               : NULL;
}

const char *qd_node_key_at(const qd_node *n, size_t i)
{
    return n && n->type == QD_NODE_MAP && i < n->len ? n->keys[i]->str : NULL;
}

const qd_node *qd_node_key_node_at(const qd_node *n, size_t i)
{
    return n && n->type == QD_NODE_MAP && i < n->len ? n->keys[i] : NULL;
}

const qd_node *qd_node_get(const qd_node *n, const char *key)
{
    long i = qd__map_find(n, key);
    return i < 0 ? NULL : n->items[i];
}

const char *qd_node_str(const qd_node *n)
{
    return n && n->type == QD_NODE_SCALAR ? n->str : NULL;
}

const char *qd_node_file(const qd_node *n)
{
    return n ? n->file : NULL;
}

int qd_node_line(const qd_node *n)
{
    return n ? n->line : 0;
}

int qd_node_col(const qd_node *n)
{
    return n ? n->col : 0;
}

/* One path segment [s, s+len) applied to n. */
static const qd_node *step(const qd_node *n, const char *s, size_t len)
{
    if (n->type == QD_NODE_MAP) {
        for (size_t i = 0; i < n->len; i++) {
            const char *k = n->keys[i]->str;
            if (strncmp(k, s, len) == 0 && k[len] == '\0')
                return n->items[i];
        }
        return NULL;
    }
    if (n->type != QD_NODE_SEQ)
        return NULL;
    size_t d = 0;
    while (d < len && s[d] >= '0' && s[d] <= '9')
        d++;
    if (d == len && len <= 18) {
        size_t idx = 0;
        for (size_t i = 0; i < len; i++)
            idx = idx * 10 + (size_t)(s[i] - '0');
        return idx < n->len ? n->items[idx] : NULL;
    }
    /* a sequence of named mappings: select by `name` */
    for (size_t i = 0; i < n->len; i++) {
        const char *nm = qd_node_str(qd_node_get(n->items[i], "name"));
        if (nm && strncmp(nm, s, len) == 0 && nm[len] == '\0')
            return n->items[i];
    }
    return NULL;
}

const qd_node *qd_node_path(const qd_node *n, const char *path)
{
    if (!n || !path)
        return NULL;
    const char *s = path;
    while (*s) {
        const char *dot = strchr(s, '.');
        size_t len = dot ? (size_t)(dot - s) : strlen(s);
        if (len == 0)
            return NULL;
        n = step(n, s, len);
        if (!n)
            return NULL;
        if (!dot)
            break;
        s = dot + 1;
        if (!*s)
            return NULL;  /* trailing dot */
    }
    return n;
}

/* ------------------------------------------------------------------------
 * Messages
 * ---------------------------------------------------------------------- */

void qd__node_where(const qd_node *n, char *buf, size_t size)
{
    if (!size)
        return;
    buf[0] = '\0';
    if (!n || !n->file)
        return;
    if (n->line > 0)
        snprintf(buf, size, "%s:%d:%d: ", n->file, n->line, n->col > 0 ? n->col : 1);
    else
        snprintf(buf, size, "%s: ", n->file);
}

int qd_node_error(const qd_node *n, qd_error *err, int code, const char *fmt, ...)
{
    if (!err)
        return code;
    char where[512];
    qd__node_where(n, where, sizeof where);
    char body[QD_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    return qd_error_set(err, code, "%s%s", where, body);
}

const char *qd__quote(const char *s, char *buf)
{
    const size_t limit = 60;
    size_t o = 0;
    if (!s)
        s = "";
    for (size_t i = 0; s[i]; i++) {
        unsigned char c = (unsigned char)s[i];
        /* stop at a character boundary (or a few bytes later at most, for
         * text that is not UTF-8) */
        if (o >= limit && ((c & 0xC0) != 0x80 || o >= limit + 3)) {
            memcpy(buf + o, "...", 4);
            return buf;
        }
        if (c == '\n') {
            buf[o++] = '\\';
            buf[o++] = 'n';
        } else if (c == '\t') {
            buf[o++] = '\\';
            buf[o++] = 't';
        } else if (c < 0x20 || c == 0x7F) {
            snprintf(buf + o, 5, "\\x%02X", c);
            o += 4;
        } else {
            buf[o++] = (char)c;
        }
    }
    buf[o] = '\0';
    return buf;
}

const char *qd__describe(const qd_node *n, char *buf)
{
    if (!n || n->type == QD_NODE_NULL)
        return "nothing (an empty value)";
    if (n->type == QD_NODE_SEQ)
        return "a sequence";
    if (n->type == QD_NODE_MAP)
        return "a mapping";
    char q[QD_QUOTE_MAX];
    snprintf(buf, QD_QUOTE_MAX, "'%s'", qd__quote(n->str, q));
    return buf;
}
