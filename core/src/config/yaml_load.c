/*
 * YAML text -> configuration tree, driven by libyaml's event parser.
 *
 * The tree is built with an explicit stack, so nesting costs heap, not C
 * stack, and the depth limit is checked before a collection is opened: a
 * 10k-deep input fails at level max_depth+1 instead of exhausting anything.
 *
 * Hostile input is bounded by:
 *   - max_bytes: checked before reading a file or parsing a string;
 *   - max_depth: nesting of collections, counted across includes and
 *     aliases;
 *   - max_nodes: nodes created, including the copies that aliases expand to.
 *     An alias is expanded by copying the anchored subtree; its size is known
 *     before copying, so a "billion laughs" document fails at the first alias
 *     that would cross the budget, without allocating it;
 *   - includes: depth limit and a cycle check on canonical paths.
 *
 * Semantics beyond plain YAML:
 *   - `<<` merge keys (YAML 1.1 convention): `<<: *base` or `<<: [*a, *b]`
 *     adds the keys of the merged mappings that the mapping does not set;
 *   - `file:` includes: a mapping with the key `file` is replaced by the named
 *     file's top-level mapping (path relative to the including file), with
 *     the sibling keys merged over it (recursively for nested mappings).
 */
#define _XOPEN_SOURCE 700 /* realpath */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "config_internal.h"

#define TAG_PREFIX "tag:yaml.org,2002:"
#define MAX_INCLUDE_CHAIN 65

/* State shared by a file and everything it includes. */
typedef struct load_ctx {
    qd_config *cfg;
    size_t n_nodes;                     /* created so far, against max_nodes */
    int include_depth;                  /* 0 for the top file */
    const char *chain[MAX_INCLUDE_CHAIN];  /* display names, top file first */
    char *real[MAX_INCLUDE_CHAIN];      /* canonical paths (NULL for strings) */
} load_ctx;

typedef struct frame {
    qd_node *node;
    qd_node *key;         /* pending key of a mapping */
    char *anchor;         /* anchor of this collection (owned) */
    qd_keyidx ix;         /* key index once the mapping grows large */
    int has_merge;        /* a `<<` key was seen */
} frame;

/* Anchors: name -> completed node, open addressing. */
typedef struct anchors {
    char **names;
    qd_node **nodes;
    size_t n, cap_items;
    size_t *slots;
    size_t cap;
} anchors;

typedef struct doc {
    load_ctx *ctx;
    const qd_parse_opts *opts;
    const unsigned char *text;
    size_t len;
    frame *st;
    size_t depth, cap;
    anchors an;
    qd_node *root;
    int n_docs;
    qd_error *err;
} doc;

static int load_file(load_ctx *ctx, const char *path, const qd_node *at, int depth_base,
                     qd_node **out, qd_error *err);

/* ------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------- */

/* libyaml marks are 0-based; messages are 1-based (and clamped to int). */
static int line_of(yaml_mark_t m)
{
    return (int)(m.line > 100000000 ? 100000000 : m.line) + 1;
}

static int col_of(yaml_mark_t m)
{
    return (int)(m.column > 100000000 ? 100000000 : m.column) + 1;
}

/* An error located in the document being parsed. */
static int doc_error(doc *d, int line, int col, int code, const char *fmt, ...)
    QD_PRINTF(5, 6);
static int doc_error(doc *d, int line, int col, int code, const char *fmt, ...)
{
    char body[QD_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    if (d->opts->name)
        return qd_error_set(d->err, code, "%s:%d:%d: %s", d->opts->name, line, col, body);
    /* a bare value (command-line override): name the column only */
    if (line > 1)
        return qd_error_set(d->err, code, "%s at line %d, column %d", body, line, col);
    return qd_error_set(d->err, code, "%s at column %d", body, col);
}

/* An error located at an event. */
static int ev_error(doc *d, const yaml_event_t *ev, const char *fmt, ...) QD_PRINTF(3, 4);
static int ev_error(doc *d, const yaml_event_t *ev, const char *fmt, ...)
{
    char body[QD_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    return doc_error(d, line_of(ev->start_mark), col_of(ev->start_mark), QD_ERR_MANIFEST, "%s",
                     body);
}

static int nomem(doc *d)
{
    return qd_error_set(d->err, QD_ERR_NOMEM, "%s: out of memory while loading",
                        d->opts->name ? d->opts->name : "value");
}

static qd_node *new_node(doc *d, int type, yaml_mark_t m, int *rc)
{
    const qd_config_limits *lim = &d->ctx->cfg->limits;
    if (++d->ctx->n_nodes > lim->max_nodes) {
        *rc = doc_error(d, line_of(m), col_of(m), QD_ERR_MANIFEST,
                        "the document has more than %zu nodes (limit max_nodes)",
                        lim->max_nodes);
        return NULL;
    }
    qd_node *n = qd__node_new(d->ctx->cfg, type, d->opts->name, line_of(m), col_of(m));
    if (!n)
        *rc = nomem(d);
    return n;
}

/* Position of a byte offset of the raw text (reader errors carry only the
 * offset): 1-based line, and column counted in characters like libyaml. */
static void offset_pos(const doc *d, size_t off, int *line, int *col)
{
    long l = 1, c = 1;
    if (off > d->len)
        off = d->len;
    for (size_t i = 0; i < off; i++) {
        unsigned char ch = d->text[i];
        if (ch == '\n' || (ch == '\r' && (i + 1 >= d->len || d->text[i + 1] != '\n'))) {
            l++;
            c = 1;
        } else if ((ch & 0xC0) != 0x80 && ch != '\r') {
            c++;
        }
    }
    *line = l > 100000000 ? 100000000 : (int)l;
    *col = c > 100000000 ? 100000000 : (int)c;
}

static int parser_error(doc *d, const yaml_parser_t *p)
{
    if (p->error == YAML_MEMORY_ERROR)
        return nomem(d);
    if (p->error == YAML_READER_ERROR) {
        int line, col;
        offset_pos(d, p->problem_offset, &line, &col);
        const char *prob = p->problem ? p->problem : "unreadable input";
        if (strstr(prob, "control characters")) {
            if (p->problem_value == 0)
                return doc_error(d, line, col, QD_ERR_MANIFEST,
                                 "NUL byte in the input (this is a binary file, not YAML "
                                 "text)");
            return doc_error(d, line, col, QD_ERR_MANIFEST,
                             "control character 0x%02X is not allowed (is this a binary "
                             "file?)",
                             (unsigned)p->problem_value & 0xFFu);
        }
        if (strstr(prob, "UTF-8") || strstr(prob, "UTF-16"))
            return doc_error(d, line, col, QD_ERR_MANIFEST,
                             "invalid text encoding: %s (byte 0x%02X); the file must be "
                             "UTF-8",
                             prob, (unsigned)p->problem_value & 0xFFu);
        return doc_error(d, line, col, QD_ERR_MANIFEST, "%s", prob);
    }
    int line = line_of(p->problem_mark), col = col_of(p->problem_mark);
    const char *prob = p->problem ? p->problem : "syntax error";
    const char *hint = "";
    size_t idx = p->problem_mark.index;
    /* libyaml marks count characters; for the usual ASCII indentation the
     * character index is the byte index */
    if (idx < d->len && d->text[idx] == '\t')
        hint = "; tabs cannot be used for indentation, use spaces";
    if (!d->opts->name)  /* a one-line value: positions would not help */
        return qd_error_set(d->err, QD_ERR_MANIFEST, "%s%s%s%s%s", prob,
                            p->context ? " (" : "", p->context ? p->context : "",
                            p->context ? ")" : "", hint);
    if (p->context)
        return doc_error(d, line, col, QD_ERR_MANIFEST, "%s (%s at line %d, column %d)%s",
                         prob, p->context, line_of(p->context_mark),
                         col_of(p->context_mark), hint);
    return doc_error(d, line, col, QD_ERR_MANIFEST, "%s%s", prob, hint);
}

/* ------------------------------------------------------------------------
 * Anchors
 * ---------------------------------------------------------------------- */

static size_t hash_name(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return (size_t)(h ^ (h >> 31));
}

static long anchor_find(const anchors *a, const char *name)
{
    if (!a->cap)
        return -1;
    size_t h = hash_name(name) & (a->cap - 1);
    while (a->slots[h]) {
        size_t i = a->slots[h] - 1;
        if (strcmp(a->names[i], name) == 0)
            return (long)i;
        h = (h + 1) & (a->cap - 1);
    }
    return -1;
}

static int anchor_slot(anchors *a, size_t i)
{
    size_t h = hash_name(a->names[i]) & (a->cap - 1);
    while (a->slots[h])
        h = (h + 1) & (a->cap - 1);
    a->slots[h] = i + 1;
    return 0;
}

/* Define (or redefine: YAML lets a later anchor reuse a name) name -> node. */
static int anchor_set(anchors *a, const char *name, qd_node *node)
{
    long i = anchor_find(a, name);
    if (i >= 0) {
        a->nodes[i] = node;
        return 0;
    }
    if (a->n == a->cap_items) {
        size_t c = a->cap_items ? 2 * a->cap_items : 16;
        char **nm = realloc(a->names, c * sizeof *nm);
        if (!nm)
            return -1;
        a->names = nm;
        qd_node **nd = realloc(a->nodes, c * sizeof *nd);
        if (!nd)
            return -1;
        a->nodes = nd;
        a->cap_items = c;
    }
    if (2 * (a->n + 1) > a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 32;
        size_t *slots = calloc(cap, sizeof *slots);
        if (!slots)
            return -1;
        free(a->slots);
        a->slots = slots;
        a->cap = cap;
        for (size_t k = 0; k < a->n; k++)
            anchor_slot(a, k);
    }
    a->names[a->n] = strdup(name);
    if (!a->names[a->n])
        return -1;
    a->nodes[a->n] = node;
    anchor_slot(a, a->n);
    a->n++;
    return 0;
}

static void anchors_free(anchors *a)
{
    for (size_t i = 0; i < a->n; i++)
        free(a->names[i]);
    free(a->names);
    free(a->nodes);
    free(a->slots);
    memset(a, 0, sizeof *a);
}

/* ------------------------------------------------------------------------
 * Tree building
 * ---------------------------------------------------------------------- */

/* Nesting level a new collection would have. */
static int level_next(const doc *d)
{
    return d->opts->depth_base + (int)d->depth + 1;
}

static int key_expected(const doc *d)
{
    return d->depth > 0 && d->st[d->depth - 1].node->type == QD_NODE_MAP &&
           !d->st[d->depth - 1].key;
}

/* Attach a finished node to the open collection (or make it the root). */
static int attach(doc *d, qd_node *node)
{
    if (d->depth == 0) {
        d->root = node;
        return 0;
    }
    frame *f = &d->st[d->depth - 1];
    if (f->node->type == QD_NODE_SEQ)
        return qd__seq_push(f->node, node) ? nomem(d) : 0;
    if (!f->key) {
        char q[QD_QUOTE_MAX];
        if (node->type != QD_NODE_SCALAR)
            return doc_error(d, node->line, node->col, QD_ERR_MANIFEST,
                             "a mapping key must be a plain value, not %s",
                             node->type == QD_NODE_NULL ? "an empty value"
                             : node->type == QD_NODE_SEQ ? "a sequence" : "a mapping");
        if (!node->str[0])
            return doc_error(d, node->line, node->col, QD_ERR_MANIFEST, "empty mapping key");
        long prev = qd__keyidx_find(&f->ix, f->node, node->str);
        if (prev >= 0) {
            const qd_node *k0 = f->node->keys[prev];
            return doc_error(d, node->line, node->col, QD_ERR_MANIFEST,
                             "duplicate key '%s' (first defined at line %d, column %d)",
                             qd__quote(node->str, q), k0->line, k0->col);
        }
        if (node->style == QD_STYLE_PLAIN && strcmp(node->str, "<<") == 0)
            f->has_merge = 1;
        f->key = node;
        return 0;
    }
    if (qd__map_push(f->node, f->key, node))
        return nomem(d);
    f->key = NULL;
    /* a hash index once the mapping is large enough for scans to matter */
    if (f->node->len == 16 ? qd__keyidx_build(&f->ix, f->node)
        : f->node->len > 16 ? qd__keyidx_add(&f->ix, f->node, f->node->len - 1) : 0)
        return nomem(d);
    return 0;
}

/* Apply `<<` merge keys of mapping f->node. */
static int apply_merge_keys(doc *d, frame *f)
{
    qd_node *m = f->node;
    /* collect and remove the `<<` pairs first, keeping their values */
    qd_node *srcs[64];
    size_t n_src = 0;
    for (size_t i = 0; i < m->len;) {
        qd_node *k = m->keys[i];
        if (k->style != QD_STYLE_PLAIN || strcmp(k->str, "<<") != 0) {
            i++;
            continue;
        }
        qd_node *v = m->items[i];
        qd_node *one[1] = {v};
        qd_node **list = v->type == QD_NODE_SEQ ? v->items : one;
        size_t nl = v->type == QD_NODE_SEQ ? v->len : 1;
        for (size_t j = 0; j < nl; j++) {
            if (list[j]->type != QD_NODE_MAP)
                return doc_error(d, list[j]->line, list[j]->col, QD_ERR_MANIFEST,
                                 "the merge key '<<' takes a mapping or a list of "
                                 "mappings (usually aliases like *defaults)");
            if (n_src == sizeof srcs / sizeof srcs[0])
                return doc_error(d, k->line, k->col, QD_ERR_MANIFEST,
                                 "more than %zu mappings merged with '<<'",
                                 sizeof srcs / sizeof srcs[0]);
            srcs[n_src++] = list[j];
        }
        qd__map_remove(m, i);
    }
    /* earlier sources win over later ones, explicit keys over all */
    qd_keyidx ix = {0};
    if (qd__keyidx_build(&ix, m))
        return nomem(d);
    int rc = 0;
    for (size_t s = 0; s < n_src && !rc; s++) {
        for (size_t j = 0; j < srcs[s]->len && !rc; j++) {
            if (qd__keyidx_find(&ix, m, srcs[s]->keys[j]->str) >= 0)
                continue;
            if (qd__map_push(m, srcs[s]->keys[j], srcs[s]->items[j]) ||
                qd__keyidx_add(&ix, m, m->len - 1))
                rc = nomem(d);
        }
    }
    qd__keyidx_free(&ix);
    return rc;
}

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    size_t n = (size_t)(slash - path);
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, path, n);
        s[n] = '\0';
    }
    return s;
}

static char *join_path(const char *dir, const char *rel)
{
    if (rel[0] == '/' || !dir || !dir[0] || strcmp(dir, ".") == 0)
        return strdup(rel);
    size_t a = strlen(dir), b = strlen(rel);
    char *s = malloc(a + b + 2);
    if (s) {
        memcpy(s, dir, a);
        s[a] = '/';
        memcpy(s + a + 1, rel, b + 1);
    }
    return s;
}

/* "cannot include 'rel': <reason> (looked for 'path')" for a file realpath
 * could not find. Quoted: the name may hold newlines, and messages are one
 * line (found by fuzzing). */
static void no_include(char *buf, size_t size, const char *rel, const char *path, int e)
{
    char q[QD_QUOTE_MAX], qpath[QD_QUOTE_MAX];
    int other = strcmp(path, rel) != 0;
    snprintf(buf, size, "cannot include '%s': %s%s%s%s", qd__quote(rel, q), strerror(e),
             other ? " (looked for '" : "", other ? qd__quote(path, qpath) : "",
             other ? "')" : "");
}

/* Resolve a `file:` include in mapping m (the frame just closed, at nesting
 * level `level`). On success *out is the merged mapping. */
static int apply_include(doc *d, qd_node *m, long fi, int level, qd_node **out)
{
    load_ctx *ctx = d->ctx;
    qd_node *fv = m->items[fi];
    if (fv->type != QD_NODE_SCALAR || !fv->str[0]) {
        char ds[QD_QUOTE_MAX];
        return doc_error(d, fv->line, fv->col, QD_ERR_MANIFEST,
                         "'file' names a YAML file to include; got %s", qd__describe(fv, ds));
    }
    if (ctx->include_depth + 1 > ctx->cfg->limits.max_include_depth ||
        ctx->include_depth + 1 >= MAX_INCLUDE_CHAIN)
        return doc_error(d, fv->line, fv->col, QD_ERR_MANIFEST,
                         "includes are nested more than %d levels deep",
                         ctx->cfg->limits.max_include_depth);
    char *path = join_path(d->opts->base_dir, fv->str);
    if (!path)
        return nomem(d);
    char *real = realpath(path, NULL);
    if (!real) {
        char msg[QD_ERROR_MSG_MAX];
        no_include(msg, sizeof msg, fv->str, path, errno);
        int rc = doc_error(d, fv->line, fv->col, QD_ERR_IO, "%s", msg);
        free(path);
        return rc;
    }
    for (int i = 0; i <= ctx->include_depth; i++) {
        if (!ctx->real[i] || strcmp(ctx->real[i], real) != 0)
            continue;
        qd_strbuf chain = {0};
        for (int j = i; j <= ctx->include_depth; j++) {
            qd__sb_puts(&chain, ctx->chain[j]);
            qd__sb_puts(&chain, " -> ");
        }
        qd__sb_puts(&chain, path);
        char *c = qd__sb_take(&chain);
        int rc = doc_error(d, fv->line, fv->col, QD_ERR_MANIFEST, "include cycle: %s",
                           c ? c : path);
        free(c);
        free(real);
        free(path);
        return rc;
    }
    ctx->include_depth++;
    ctx->chain[ctx->include_depth] = path;
    ctx->real[ctx->include_depth] = real;
    qd_node *inc = NULL;
    int rc = load_file(ctx, path, fv, level - 1, &inc, d->err);
    ctx->real[ctx->include_depth] = NULL;
    ctx->chain[ctx->include_depth] = NULL;
    ctx->include_depth--;
    if (rc) {
        /* say where the failing file was included from (I/O errors are
         * already located there) */
        if (d->err && d->opts->name && rc != QD_ERR_IO) {
            size_t len = strlen(d->err->msg);
            snprintf(d->err->msg + len, sizeof d->err->msg - len, " (included from %s:%d:%d)",
                     d->opts->name, fv->line, fv->col);
        }
        free(real);
        free(path);
        return rc;
    }
    free(real);
    free(path);
    qd__map_remove(m, (size_t)fi);
    if (qd__map_merge(inc, m))
        return nomem(d);
    if (level - 1 + qd__node_height(inc) > ctx->cfg->limits.max_depth)
        return doc_error(d, m->line, m->col, QD_ERR_MANIFEST,
                         "nesting is deeper than %d levels (limit max_depth)",
                         ctx->cfg->limits.max_depth);
    *out = inc;
    return 0;
}

static int push_frame(doc *d, qd_node *node, const unsigned char *anchor)
{
    if (d->depth == d->cap) {
        size_t cap = d->cap ? 2 * d->cap : 16;
        frame *st = realloc(d->st, cap * sizeof *st);
        if (!st)
            return nomem(d);
        d->st = st;
        d->cap = cap;
    }
    frame *f = &d->st[d->depth];
    memset(f, 0, sizeof *f);
    f->node = node;
    if (anchor && !(f->anchor = strdup((const char *)anchor)))
        return nomem(d);
    d->depth++;
    return 0;
}

/* Close the innermost collection: merge keys, includes, anchor, attach. */
static int pop_frame(doc *d)
{
    frame f = d->st[--d->depth];
    int rc = 0;
    qd_node *node = f.node;
    if (node->type == QD_NODE_MAP) {
        if (f.has_merge)
            rc = apply_merge_keys(d, &f);
        long fi;
        if (!rc && d->opts->includes && (fi = qd__map_find(node, "file")) >= 0)
            rc = apply_include(d, node, fi, level_next(d), &node);
    }
    if (!rc && f.anchor && anchor_set(&d->an, f.anchor, node))
        rc = nomem(d);
    if (!rc)
        rc = attach(d, node);
    free(f.anchor);
    qd__keyidx_free(&f.ix);
    return rc;
}

/* Check an explicit tag; sets *force_str / *force_null for scalars. */
static int check_tag(doc *d, const yaml_event_t *ev, const unsigned char *tag, int scalar,
                     int *force_str, int *force_null)
{
    if (!tag)
        return 0;
    const char *t = (const char *)tag;
    if (strcmp(t, "!") == 0) {
        *force_str = scalar;
        return 0;
    }
    size_t pl = strlen(TAG_PREFIX);
    if (strncmp(t, TAG_PREFIX, pl) == 0) {
        const char *s = t + pl;
        if (scalar) {
            if (strcmp(s, "str") == 0) {
                *force_str = 1;
                return 0;
            }
            if (strcmp(s, "null") == 0) {
                *force_null = 1;
                return 0;
            }
            if (strcmp(s, "int") == 0 || strcmp(s, "float") == 0 || strcmp(s, "bool") == 0)
                return 0;
        } else if (strcmp(s, "seq") == 0 || strcmp(s, "map") == 0) {
            return 0;
        }
    }
    char q[QD_QUOTE_MAX];
    return ev_error(d, ev, "unsupported YAML tag '%s'%s", qd__quote(t, q),
                    scalar ? " (only !!str, !!int, !!float, !!bool and !!null are understood)"
                           : " (only !!seq and !!map are understood)");
}

static int on_scalar(doc *d, const yaml_event_t *ev)
{
    int rc = 0, force_str = 0, force_null = 0;
    if ((rc = check_tag(d, ev, ev->data.scalar.tag, 1, &force_str, &force_null)))
        return rc;
    const char *v = (const char *)ev->data.scalar.value;
    size_t len = ev->data.scalar.length;
    if (memchr(v, '\0', len))
        return ev_error(d, ev, "a value contains a NUL character (\\0)");
    int style;
    switch (ev->data.scalar.style) {
    case YAML_SINGLE_QUOTED_SCALAR_STYLE: style = QD_STYLE_SINGLE; break;
    case YAML_DOUBLE_QUOTED_SCALAR_STYLE: style = QD_STYLE_DOUBLE; break;
    case YAML_LITERAL_SCALAR_STYLE: style = QD_STYLE_LITERAL; break;
    case YAML_FOLDED_SCALAR_STYLE: style = QD_STYLE_FOLDED; break;
    default: style = QD_STYLE_PLAIN; break;
    }
    int is_key = key_expected(d);
    int type = QD_NODE_SCALAR;
    if (!is_key && (force_null || (style == QD_STYLE_PLAIN && !force_str && qd__text_is_null(v))))
        type = QD_NODE_NULL;
    qd_node *n = new_node(d, type, ev->start_mark, &rc);
    if (!n)
        return rc;
    n->style = (uint8_t)style;
    n->is_str = style != QD_STYLE_PLAIN || force_str;
    if (qd__node_set_str(n, v, len))
        return nomem(d);
    if (ev->data.scalar.anchor && anchor_set(&d->an, (const char *)ev->data.scalar.anchor, n))
        return nomem(d);
    return attach(d, n);
}

static int on_alias(doc *d, const yaml_event_t *ev)
{
    const char *name = (const char *)ev->data.alias.anchor;
    long i = anchor_find(&d->an, name);
    char q[QD_QUOTE_MAX];
    if (i < 0)
        return ev_error(d, ev,
                        "unknown alias '*%s' (an anchor '&%s' must be defined before it, "
                        "and not around it)",
                        qd__quote(name, q), q);
    const qd_node *src = d->an.nodes[i];
    const qd_config_limits *lim = &d->ctx->cfg->limits;
    size_t w = qd__node_weight(src);
    if (w > lim->max_nodes - (d->ctx->n_nodes < lim->max_nodes ? d->ctx->n_nodes
                                                                  : lim->max_nodes))
        return doc_error(d, line_of(ev->start_mark), col_of(ev->start_mark),
                         QD_ERR_MANIFEST,
                         "alias '*%s' would expand the document beyond %zu nodes (limit "
                         "max_nodes; is this an alias bomb?)",
                         qd__quote(name, q), lim->max_nodes);
    if (d->opts->depth_base + (int)d->depth + qd__node_height(src) > lim->max_depth)
        return doc_error(d, line_of(ev->start_mark), col_of(ev->start_mark),
                         QD_ERR_MANIFEST,
                         "alias '*%s' nests the document deeper than %d levels (limit "
                         "max_depth)",
                         qd__quote(name, q), lim->max_depth);
    qd_node *n = qd__node_copy(d->ctx->cfg, src);
    if (!n)
        return nomem(d);
    d->ctx->n_nodes += w;
    /* the copy's root is located where it is used; its insides stay where
     * they were written */
    n->file = d->opts->name;
    n->line = line_of(ev->start_mark);
    n->col = col_of(ev->start_mark);
    return attach(d, n);
}

static int on_start(doc *d, const yaml_event_t *ev, int type)
{
    int rc = 0, force_str = 0, force_null = 0;
    const unsigned char *tag = type == QD_NODE_SEQ ? ev->data.sequence_start.tag
                                                   : ev->data.mapping_start.tag;
    const unsigned char *anchor = type == QD_NODE_SEQ ? ev->data.sequence_start.anchor
                                                      : ev->data.mapping_start.anchor;
    if ((rc = check_tag(d, ev, tag, 0, &force_str, &force_null)))
        return rc;
    if (key_expected(d))
        return ev_error(d, ev, "a mapping key must be a plain value, not %s",
                        type == QD_NODE_SEQ ? "a sequence" : "a mapping");
    int max = d->ctx->cfg->limits.max_depth;
    if (level_next(d) > max)
        return doc_error(d, line_of(ev->start_mark), col_of(ev->start_mark),
                         QD_ERR_MANIFEST, "nesting is deeper than %d levels (limit max_depth)",
                         max);
    qd_node *n = new_node(d, type, ev->start_mark, &rc);
    if (!n)
        return rc;
    n->flow = type == QD_NODE_SEQ
                  ? ev->data.sequence_start.style == YAML_FLOW_SEQUENCE_STYLE
                  : ev->data.mapping_start.style == YAML_FLOW_MAPPING_STYLE;
    return push_frame(d, n, anchor);
}

static int on_event(doc *d, const yaml_event_t *ev)
{
    switch (ev->type) {
    case YAML_DOCUMENT_START_EVENT:
        if (d->n_docs++ > 0)
            return ev_error(d, ev,
                            "a second YAML document ('---') in one file; a manifest is one "
                            "document");
        return 0;
    case YAML_SCALAR_EVENT:
        return on_scalar(d, ev);
    case YAML_ALIAS_EVENT:
        return on_alias(d, ev);
    case YAML_SEQUENCE_START_EVENT:
        return on_start(d, ev, QD_NODE_SEQ);
    case YAML_MAPPING_START_EVENT:
        return on_start(d, ev, QD_NODE_MAP);
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
        return d->depth ? pop_frame(d) : 0;
    default:
        return 0;
    }
}

static int parse_text(load_ctx *ctx, const char *text, size_t len, const qd_parse_opts *o,
                      qd_node **out, qd_error *err)
{
    doc d = {0};
    d.ctx = ctx;
    d.opts = o;
    d.text = (const unsigned char *)text;
    d.len = len;
    d.err = err;
    *out = NULL;
    if (len > ctx->cfg->limits.max_bytes)
        return doc_error(&d, 1, 1, QD_ERR_MANIFEST,
                         "input is %zu bytes, more than the limit of %zu bytes", len,
                         ctx->cfg->limits.max_bytes);

    yaml_parser_t p;
    if (!yaml_parser_initialize(&p))
        return nomem(&d);
    yaml_parser_set_input_string(&p, d.text, len);
    /* UTF-8 only: libyaml would otherwise decode a UTF-16 BOM file, whose
     * byte offsets the file:line:col locations here cannot follow */
    yaml_parser_set_encoding(&p, YAML_UTF8_ENCODING);
    int rc = 0;
    for (;;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev)) {
            rc = parser_error(&d, &p);
            break;
        }
        rc = on_event(&d, &ev);
        yaml_event_type_t t = ev.type;
        yaml_event_delete(&ev);
        if (rc || t == YAML_STREAM_END_EVENT)
            break;
    }
    yaml_parser_delete(&p);
    while (d.depth > 0) {
        frame *f = &d.st[--d.depth];
        free(f->anchor);
        qd__keyidx_free(&f->ix);
    }
    free(d.st);
    anchors_free(&d.an);
    if (rc)
        return rc;

    qd_node *root = d.root;
    if (o->want_map) {
        if (!root || root->type == QD_NODE_NULL)
            return doc_error(&d, 1, 1, QD_ERR_MANIFEST, "%s",
                             ctx->include_depth > 0 ? "included file is empty"
                                                    : "manifest is empty");
        if (root->type != QD_NODE_MAP)
            return doc_error(&d, root->line, root->col, QD_ERR_MANIFEST,
                             "the top level must be a mapping (key: value lines), not %s",
                             root->type == QD_NODE_SEQ ? "a sequence" : "a single value");
    } else if (!root) {
        if (!(root = new_node(&d, QD_NODE_NULL, (yaml_mark_t){0, 0, 0}, &rc)))
            return rc;
        if (qd__node_set_str(root, "", 0))
            return nomem(&d);
    }
    *out = root;
    return 0;
}

/* Read a whole regular file of at most max_bytes. */
static int read_file(const char *path, size_t max, char **text, size_t *len, qd_error *err)
{
    *text = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return qd_error_set(err, QD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return qd_error_set(err, QD_ERR_IO, "%s: cannot read: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return qd_error_set(err, QD_ERR_IO, "%s: not a regular file", path);
    }
    if ((uintmax_t)st.st_size > (uintmax_t)max) {
        close(fd);
        return qd_error_set(err, QD_ERR_MANIFEST,
                            "%s:1:1: file is %jd bytes, more than the limit of %zu bytes",
                            path, (intmax_t)st.st_size, max);
    }
    size_t cap = (size_t)st.st_size + 1, n = 0;
    char *buf = malloc(cap + 1);
    if (!buf) {
        close(fd);
        return qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory reading the file", path);
    }
    for (;;) {
        if (n == cap) {
            /* the file grew while we read it */
            if (cap > max) {
                free(buf);
                close(fd);
                return qd_error_set(err, QD_ERR_MANIFEST,
                                    "%s:1:1: file is more than the limit of %zu bytes", path,
                                    max);
            }
            size_t nc = cap * 2 > max + 1 ? max + 1 : cap * 2;
            char *nb = realloc(buf, nc + 1);
            if (!nb) {
                free(buf);
                close(fd);
                return qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory reading the file",
                                    path);
            }
            buf = nb;
            cap = nc;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            free(buf);
            close(fd);
            return qd_error_set(err, QD_ERR_IO, "%s: cannot read: %s", path, strerror(e));
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    if (n > max) {
        free(buf);
        return qd_error_set(err, QD_ERR_MANIFEST,
                            "%s:1:1: file is more than the limit of %zu bytes", path, max);
    }
    buf[n] = '\0';
    *text = buf;
    *len = n;
    return 0;
}

static int load_file(load_ctx *ctx, const char *path, const qd_node *at, int depth_base,
                     qd_node **out, qd_error *err)
{
    *out = NULL;
    char *text = NULL;
    size_t len = 0;
    int rc = read_file(path, ctx->cfg->limits.max_bytes, &text, &len, err);
    if (rc) {
        if (at && rc == QD_ERR_IO) {
            /* an unreadable include is located at its `file:` value */
            char where[512];
            qd__node_where(at, where, sizeof where);
            qd_error_prefix(err, "%scannot include", where);
        }
        return rc;
    }
    char *dir = dir_of(path);
    const char *name = qd__intern(ctx->cfg, path);
    if (!dir || !name) {
        free(dir);
        free(text);
        return qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", path);
    }
    qd_parse_opts o = {name, dir, 1, 1, depth_base};
    rc = parse_text(ctx, text, len, &o, out, err);
    free(dir);
    free(text);
    return rc;
}

/* ------------------------------------------------------------------------
 * Entry points
 * ---------------------------------------------------------------------- */

int qd__parse_value(qd_config *cfg, const char *text, size_t len, const qd_parse_opts *opts,
                    qd_node **out, qd_error *err)
{
    load_ctx ctx = {0};
    ctx.cfg = cfg;
    ctx.chain[0] = opts->name ? opts->name : "<value>";
    return parse_text(&ctx, text ? text : "", text ? len : 0, opts, out, err);
}

/* A file as the top of a load context (depth_base: the nesting it starts
 * at). For an include named `rel`, a path realpath cannot resolve is
 * reported as an include; a top-level manifest leaves that to read_file. */
static int load_top(qd_config *cfg, const char *path, const char *rel, int depth_base,
                    qd_node **out, qd_error *err)
{
    load_ctx ctx = {0};
    ctx.cfg = cfg;
    ctx.chain[0] = path;
    ctx.real[0] = realpath(path, NULL);
    int rc;
    if (!ctx.real[0] && rel) {
        char msg[QD_ERROR_MSG_MAX];
        no_include(msg, sizeof msg, rel, path, errno);
        rc = qd_error_set(err, QD_ERR_IO, "%s", msg);
    } else {
        rc = load_file(&ctx, path, NULL, depth_base, out, err);
    }
    free(ctx.real[0]);
    return rc;
}

int qd__load_include(qd_config *cfg, const char *from, const char *rel, int depth_base,
                     qd_node **out, qd_error *err)
{
    *out = NULL;
    char *dir = dir_of(from ? from : "");
    char *path = dir ? join_path(dir, rel) : NULL;
    free(dir);
    if (!path)
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    int rc = load_top(cfg, path, rel, depth_base, out, err);
    free(path);
    return rc;
}

int qd_config_load(const char *path, const qd_config_limits *limits, qd_config **out,
                   qd_error *err)
{
    if (!out)
        return qd_error_set(err, QD_ERR_INVALID, "qd_config_load: out is NULL");
    *out = NULL;
    if (!path || !*path)
        return qd_error_set(err, QD_ERR_INVALID, "qd_config_load: no path given");
    qd_config *cfg = qd__config_new(limits);
    if (!cfg)
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    qd_node *root = NULL;
    int rc = load_top(cfg, path, NULL, 0, &root, err);
    if (rc) {
        qd_config_destroy(cfg);
        return rc;
    }
    cfg->root = root;
    *out = cfg;
    return QD_OK;
}

int qd_config_load_string(const char *text, size_t len, const char *name,
                          const qd_config_limits *limits, qd_config **out, qd_error *err)
{
    if (!out)
        return qd_error_set(err, QD_ERR_INVALID, "qd_config_load_string: out is NULL");
    *out = NULL;
    if (!text && len)
        return qd_error_set(err, QD_ERR_INVALID, "qd_config_load_string: text is NULL");
    qd_config *cfg = qd__config_new(limits);
    if (!cfg)
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    const char *nm = qd__intern(cfg, name && *name ? name : "<string>");
    char *dir = nm ? dir_of(nm) : NULL;
    if (!nm || !dir) {
        free(dir);
        qd_config_destroy(cfg);
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    }
    load_ctx ctx = {0};
    ctx.cfg = cfg;
    ctx.chain[0] = nm;
    qd_parse_opts o = {nm, dir, 1, 0, 0};
    qd_node *root = NULL;
    int rc = parse_text(&ctx, text ? text : "", text ? len : 0, &o, &root, err);
    free(dir);
    if (rc) {
        qd_config_destroy(cfg);
        return rc;
    }
    cfg->root = root;
    *out = cfg;
    return QD_OK;
}
