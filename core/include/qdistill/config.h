/*
 * qdistill/config.h — the configuration tree a manifest is loaded into.
 *
 * A node is a scalar (kept as its source text), a sequence or a mapping, and
 * remembers where it came from (file, line, column; 1-based) so that every
 * error about a value can point at it. Trees are immutable once loaded, except
 * through qd_config_set() which applies command-line overrides.
 *
 * Nodes are owned by the qd_config that holds them; pointers stay valid until
 * qd_config_destroy().
 */
#ifndef QDISTILL_CONFIG_H
#define QDISTILL_CONFIG_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qd_node_type {
    QD_NODE_NULL = 0,   /* YAML null / empty value */
    QD_NODE_SCALAR = 1,
    QD_NODE_SEQ = 2,
    QD_NODE_MAP = 3
} qd_node_type;

typedef struct qd_node qd_node;
typedef struct qd_config qd_config;

/* ---- reading nodes (all accept NULL and then return 0/NULL) ---- */

QD_EXPORT qd_node_type qd_node_kind(const qd_node *n);
/* Number of items of a sequence or pairs of a mapping; 0 otherwise. */
QD_EXPORT size_t qd_node_len(const qd_node *n);
/* i-th item of a sequence, or i-th value of a mapping. */
QD_EXPORT const qd_node *qd_node_at(const qd_node *n, size_t i);
/* i-th key of a mapping (as text), NULL otherwise. */
QD_EXPORT const char *qd_node_key_at(const qd_node *n, size_t i);
/* Where the i-th key of a mapping was written (for "unknown key" errors). */
QD_EXPORT const qd_node *qd_node_key_node_at(const qd_node *n, size_t i);
/* Value for key in a mapping, NULL when absent. */
QD_EXPORT const qd_node *qd_node_get(const qd_node *n, const char *key);
/* Follow a dotted path ("observable.trainable", "layers.0.kernel", and a
 * sequence of named mappings may be indexed by the item's `name`). */
QD_EXPORT const qd_node *qd_node_path(const qd_node *n, const char *path);
/* Source text of a scalar, NULL otherwise. */
QD_EXPORT const char *qd_node_str(const qd_node *n);
QD_EXPORT const char *qd_node_file(const qd_node *n);
QD_EXPORT int qd_node_line(const qd_node *n);
QD_EXPORT int qd_node_col(const qd_node *n);

/* Typed conversion of a scalar with YAML 1.2 core-schema rules
 * (true/false, decimal/hex integers, floats incl. .inf/.nan).
 * Return QD_OK or QD_ERR_INVALID with a message "file:line:col: ..." in err. */
QD_EXPORT int qd_node_as_bool(const qd_node *n, int *out, qd_error *err);
QD_EXPORT int qd_node_as_int(const qd_node *n, long long *out, qd_error *err);
QD_EXPORT int qd_node_as_double(const qd_node *n, double *out, qd_error *err);

/* Format "file:line:col: " + message into err for node n. Returns code. */
QD_EXPORT int qd_node_error(const qd_node *n, qd_error *err, int code,
                            const char *fmt, ...) QD_PRINTF(4, 5);

/* ---- loading ---- */

typedef struct qd_config_limits {
    int max_depth;          /* nesting depth, default 64 */
    size_t max_nodes;       /* nodes after alias expansion, default 1e6 */
    size_t max_bytes;       /* input file size, default 16 MiB */
    int max_include_depth;  /* nested `file:` includes, default 8 */
} qd_config_limits;

/* Load a YAML file (and its `file:` includes, resolved relative to the file
 * that names them; sibling keys override the included mapping) into a tree.
 * limits may be NULL for the defaults. On failure returns a status, leaves
 * *out NULL and puts "file:line:col: message" in err. */
QD_EXPORT int qd_config_load(const char *path, const qd_config_limits *limits,
                             qd_config **out, qd_error *err);
/* The same, from a string; `name` is used as the file name in messages and
 * its directory resolves `file:` includes. Unlike a file, the text may hold
 * any single YAML value (scalar, sequence, mapping; an empty text gives a
 * null root), so it also parses defaults such as "[0.5, 0.5]". */
QD_EXPORT int qd_config_load_string(const char *text, size_t len,
                                    const char *name,
                                    const qd_config_limits *limits,
                                    qd_config **out, qd_error *err);
QD_EXPORT void qd_config_destroy(qd_config *cfg);
QD_EXPORT const qd_node *qd_config_root(const qd_config *cfg);

/* Set the value at a dotted path, creating mappings on the way. Used for
 * command-line overrides; the new node's location is ("<override>", 0, col)
 * unless the caller names one. value is YAML text: "0.5", "true", "[1, 2]".
 * A path ending in `.file` ("model.file") instead replaces the mapping before
 * it by the top-level mapping of the YAML file named by value, resolved
 * relative to the directory of the file the tree was loaded from; its nodes
 * keep their locations in that file. `file` elsewhere in a path, and values
 * holding a `file` key, are refused (QD_ERR_INVALID). On failure the tree is
 * unchanged. */
QD_EXPORT int qd_config_set(qd_config *cfg, const char *path, const char *value,
                            const char *origin, qd_error *err);

/* Emit the tree as YAML text (block style, keys in source order; short
 * lists of scalars inline as [a, b]) into a malloc'd string that loads back
 * to the same tree. */
QD_EXPORT char *qd_config_to_yaml(const qd_node *n);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_CONFIG_H */
