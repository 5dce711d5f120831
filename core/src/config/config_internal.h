/*
 * Private structures of the configuration tree, shared by the files of
 * core/src/config. Nothing here is exported from libqdistill.
 */
#ifndef QD_CONFIG_INTERNAL_H
#define QD_CONFIG_INTERNAL_H

#include <stdarg.h>
#include <stdbool.h>

#include "qdistill/config.h"
#include "qdistill/schema.h"

/* Scalar styles as written (kept so that an emitted tree re-loads alike). */
enum {
    QD_STYLE_PLAIN = 0,
    QD_STYLE_SINGLE = 1,
    QD_STYLE_DOUBLE = 2,
    QD_STYLE_LITERAL = 3,
    QD_STYLE_FOLDED = 4
};

/* Recursion over trees is bounded by the tree depth, which loading keeps at
 * or below the configured max_depth; this caps what a caller may configure so
 * that no walk can exhaust the C stack. */
#define QD_CONFIG_DEPTH_CAP 512

struct qd_node {
    uint8_t type;        /* qd_node_type */
    uint8_t style;       /* QD_STYLE_* (scalars) */
    uint8_t is_str;      /* quoted or tagged !!str: never a bool/number/null */
    uint8_t flow;        /* collection written in flow style (informative) */
    int line, col;       /* 1-based; 0 for synthetic nodes without a line */
    const char *file;    /* interned in the owning qd_config */
    char *str;           /* scalar/null source text, NUL-terminated */
    size_t len, cap;     /* items (sequence) or pairs (mapping) */
    qd_node **items;     /* sequence items / mapping values */
    qd_node **keys;      /* mapping keys (scalar nodes) */
};

#define QD_NODE_CHUNK 256
typedef struct qd_node_chunk {
    struct qd_node_chunk *next;
    size_t used;
    qd_node nodes[QD_NODE_CHUNK];
} qd_node_chunk;

struct qd_config {
    qd_node *root;
    qd_node_chunk *chunks;
    char **files;        /* interned file names / origins */
    size_t n_files, cap_files;
    qd_config_limits limits;
};

/* ---- growable strings (strbuf.c) ---- */

typedef struct qd_strbuf {
    char *s;
    size_t len, cap;
    int failed;          /* an allocation failed: the text is incomplete */
} qd_strbuf;
void qd__sb_add(qd_strbuf *b, const char *s, size_t n);
void qd__sb_puts(qd_strbuf *b, const char *s);
void qd__sb_printf(qd_strbuf *b, const char *fmt, ...) QD_PRINTF(2, 3);
void qd__sb_indent(qd_strbuf *b, int n);
/* The text (malloc'd, caller frees) or NULL when an allocation failed. */
char *qd__sb_take(qd_strbuf *b);

/* ---- node storage (node.c) ---- */

qd_config *qd__config_new(const qd_config_limits *limits);
void qd__limits_resolve(const qd_config_limits *in, qd_config_limits *out);
/* Intern a file name; NULL on allocation failure. */
const char *qd__intern(qd_config *cfg, const char *name);
/* A fresh node of `type` at (file, line, col); NULL on allocation failure. */
qd_node *qd__node_new(qd_config *cfg, int type, const char *file, int line,
                      int col);
/* Set a scalar's text (copied, len bytes). Returns 0 or -1 (no memory). */
int qd__node_set_str(qd_node *n, const char *s, size_t len);
/* Append an item to a sequence / a pair to a mapping. 0 or -1. */
int qd__seq_push(qd_node *seq, qd_node *item);
int qd__map_push(qd_node *map, qd_node *key, qd_node *value);
/* Remove pair i of a mapping, keeping the order of the others. */
void qd__map_remove(qd_node *map, size_t i);
/* Index of key in a mapping, or -1. */
long qd__map_find(const qd_node *map, const char *key);
/* Deep copy of src (from any config) into cfg; NULL on allocation failure.
 * Recursion is bounded by the depth of src. */
qd_node *qd__node_copy(qd_config *cfg, const qd_node *src);
/* Give a whole subtree one location (file interned in its config). */
void qd__relocate(qd_node *n, const char *file, int line, int col);
/* Nodes in the subtree (keys included) and its height (a scalar has 0, a
 * collection 1 + the height of its tallest child). */
size_t qd__node_weight(const qd_node *n);
int qd__node_height(const qd_node *n);
/* Open-addressing index of a mapping's keys (slots hold pair index + 1), so
 * that duplicate checks and merges of large mappings stay linear. A zeroed
 * index falls back to a linear scan in find. */
typedef struct qd_keyidx {
    size_t *slots;
    size_t cap, n;
} qd_keyidx;
int qd__keyidx_build(qd_keyidx *ix, const qd_node *map);
int qd__keyidx_add(qd_keyidx *ix, const qd_node *map, size_t i);
long qd__keyidx_find(const qd_keyidx *ix, const qd_node *map, const char *key);
void qd__keyidx_free(qd_keyidx *ix);
/* Merge mapping src over mapping dst in place: keys of src win; where both
 * values are mappings they merge recursively. src must belong to the same
 * config; its nodes end up in dst, so src itself must not be used in the
 * tree afterwards (it is left intact, because it may still be the target of
 * an anchor that a later alias copies). 0 or -1. */
int qd__map_merge(qd_node *dst, qd_node *src);
/* "file:line:col: " prefix for n (empty for NULL or unlocated nodes). */
void qd__node_where(const qd_node *n, char *buf, size_t size);
/* Quote user text for a message: at most ~60 characters, control characters
 * escaped; buf must hold QD_QUOTE_MAX bytes. Returns buf. */
#define QD_QUOTE_MAX 96
const char *qd__quote(const char *s, char *buf);
/* Short description of a non-scalar node: "a sequence", "a mapping",
 * "nothing (an empty value)" or the quoted scalar text. */
const char *qd__describe(const qd_node *n, char *buf);

/* ---- loading (yaml_load.c) ---- */

/* Parse YAML text into cfg as one value: the root of a file, a default or an
 * override value. name must be interned in cfg. For positions, line_base and
 * col_base shift the marks (used to locate override values); pass 0, 0
 * otherwise. With `includes`, `file:` mappings are resolved relative to
 * base_dir. want_map: the value must be a non-empty mapping (file roots).
 * depth_base is the nesting depth at which the value will be inserted.
 * On success *out is the value (a NULL-kind node for empty text). */
typedef struct qd_parse_opts {
    const char *name;
    const char *base_dir;
    int includes;
    int want_map;
    int depth_base;
} qd_parse_opts;
int qd__parse_value(qd_config *cfg, const char *text, size_t len,
                    const qd_parse_opts *opts, qd_node **out, qd_error *err);
/* The top-level mapping of the file rel (relative to the directory of the
 * file `from`; NULL: the working directory), with its own includes, nested
 * from level depth_base: what `a.file=rel` puts at `a`. */
int qd__load_include(qd_config *cfg, const char *from, const char *rel, int depth_base,
                     qd_node **out, qd_error *err);

/* ---- emitting (emit.c) ---- */

/* qd_config_to_yaml with a hook called after the keys of every non-empty
 * mapping (at the indentation of its keys), e.g. to add comment lines. */
typedef void (*qd__emit_hook)(qd_strbuf *b, const qd_node *map, int indent, void *ctx);
char *qd__to_yaml_hook(const qd_node *n, qd__emit_hook hook, void *ctx);

/* ---- scalars (scalar.c) ---- */

/* Parse a real or complex number ("1", "-0.5", "1e-3", "2j", "1+2j",
 * "-0.5-1e-3j"); 0 on success. */
int qd__parse_complex(const char *s, double *re, double *im);
/* YAML 1.2 core-schema recognisers on raw text; 0 on success. */
int qd__text_to_int(const char *s, long long *out, int *overflow);
int qd__text_to_double(const char *s, double *out, int *overflow);
int qd__text_is_bool(const char *s, int *out);
int qd__text_is_null(const char *s);
/* Node conversions with a location-free message in msg on failure (-1). */
int qd__conv_bool(const qd_node *n, int *out, char *msg, size_t size);
int qd__conv_int(const qd_node *n, long long *out, char *msg, size_t size);
int qd__conv_double(const qd_node *n, double *out, char *msg, size_t size);
/* Matrix parsing; on failure msg holds the problem and *bad the node. */
int qd__matrix(const qd_node *n, size_t *rows, size_t *cols, double complex **out,
               const qd_node **bad, char *msg, size_t size);

/* ---- schemas (schema.c) ---- */

/* Check one value against its parameter (as qd_schema_validate does for
 * each key); returns the number of problems added. */
size_t qd__check_param(const qd_param *p, const qd_node *v, const char *what, qd_diags *d);

#endif /* QD_CONFIG_INTERNAL_H */
