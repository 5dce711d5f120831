/* qd_config_set: command-line overrides. The value is YAML text ("0.5",
 * "[1, 2]", "{plugin: adam}") parsed into the tree; every node it creates is
 * located at the origin, so a later schema error about it points at the
 * command line rather than at a file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_internal.h"

/* Split "NAME:LINE:COL" (or "NAME:LINE", or "NAME"). */
static void parse_origin(const char *origin, char *name, size_t size, int *line, int *col)
{
    *line = 0;
    *col = 0;
    if (!origin || !*origin)
        origin = "<override>";
    snprintf(name, size, "%s", origin);
    int nums[2] = {0, 0}, k = 0;
    for (; k < 2; k++) {
        char *colon = strrchr(name, ':');
        if (!colon || !colon[1] || strspn(colon + 1, "0123456789") != strlen(colon + 1) ||
            strlen(colon + 1) > 8)
            break;
        nums[k] = atoi(colon + 1);
        *colon = '\0';
    }
    if (k == 2) {
        *line = nums[1];
        *col = nums[0];
    } else if (k == 1) {
        *line = nums[0];
        *col = 1;
    }
}

static qd_node *new_key(qd_config *cfg, const char *s, size_t len, const char *file, int line,
                        int col)
{
    qd_node *k = qd__node_new(cfg, QD_NODE_SCALAR, file, line, col);
    if (!k || qd__node_set_str(k, s, len))
        return NULL;
    return k;
}

/* Item of a sequence selected by index or by `name`; -1 when absent. */
static long seq_select(const qd_node *seq, const char *s, size_t len)
{
    if (len > 0 && len <= 18 && strspn(s, "0123456789") >= len) {
        size_t idx = 0;
        for (size_t i = 0; i < len; i++)
            idx = idx * 10 + (size_t)(s[i] - '0');
        return idx < seq->len ? (long)idx : -1;
    }
    for (size_t i = 0; i < seq->len; i++) {
        const char *nm = qd_node_str(qd_node_get(seq->items[i], "name"));
        if (nm && strncmp(nm, s, len) == 0 && nm[len] == '\0')
            return (long)i;
    }
    return -1;
}

/* "items 0-2" or "items named c1, c2, q" for an error message. */
static void describe_items(const qd_node *seq, char *buf, size_t size)
{
    size_t named = 0;
    for (size_t i = 0; i < seq->len; i++)
        if (qd_node_str(qd_node_get(seq->items[i], "name")))
            named++;
    if (seq->len == 0) {
        snprintf(buf, size, "it is empty");
        return;
    }
    qd_strbuf b = {0};
    if (seq->len == 1)
        qd__sb_puts(&b, "it has 1 item, index 0");
    else
        qd__sb_printf(&b, "it has %zu items, indices 0-%zu", seq->len, seq->len - 1);
    if (named) {
        qd__sb_puts(&b, "; named");
        for (size_t i = 0, k = 0; i < seq->len && b.len < 240; i++) {
            const char *nm = qd_node_str(qd_node_get(seq->items[i], "name"));
            if (nm)
                qd__sb_printf(&b, "%s %s", k++ ? "," : "", nm);
        }
    }
    char *s = qd__sb_take(&b);
    snprintf(buf, size, "%s", s ? s : "");
    free(s);
}

/* Whether a parsed value holds a mapping with a `file` key anywhere. */
static int has_file_key(const qd_node *n)
{
    if (!n || (n->type != QD_NODE_MAP && n->type != QD_NODE_SEQ))
        return 0;
    for (size_t i = 0; i < n->len; i++)
        if ((n->type == QD_NODE_MAP && strcmp(n->keys[i]->str, "file") == 0) ||
            has_file_key(n->items[i]))
            return 1;
    return 0;
}

/* The value of a plain override: YAML text, located at the origin. */
static int parse_plain(qd_config *cfg, const char *value, const char *where, const char *qp,
                       const char *file, int line, int col, int depth, qd_node **out,
                       qd_error *err)
{
    qd_parse_opts po = {NULL, NULL, 0, 0, depth};
    qd_error perr;
    qd_error_clear(&perr);
    int rc = qd__parse_value(cfg, value ? value : "", value ? strlen(value) : 0, &po, out,
                             &perr);
    if (rc) {
        char qv[QD_QUOTE_MAX];
        return qd_error_set(err, rc, "%s: bad value '%s' for '%s': %s", where,
                            qd__quote(value, qv), qp, perr.msg);
    }
    if (has_file_key(*out)) {
        char qv[QD_QUOTE_MAX];
        return qd_error_set(err, QD_ERR_INVALID,
                            "%s: bad value '%s' for '%s': 'file' includes are resolved when "
                            "the manifest is read, not in an override (set KEY.file=PATH "
                            "instead)", where, qd__quote(value, qv), qp);
    }
    qd__relocate(*out, file, line, col);
    return QD_OK;
}

/* The value of `a.file=PATH`: PATH's mapping, resolved relative to the
 * manifest's directory like every path in it; its nodes keep their place in
 * that file, so schema errors point into it. */
static int parse_include(qd_config *cfg, const char *value, const char *where,
                         const char *qp, int depth, qd_node **out, qd_error *err)
{
    char qv[QD_QUOTE_MAX];
    if (!value || !value[0])
        return qd_error_set(err, QD_ERR_INVALID,
                            "%s: bad value for '%s': give the YAML file to include", where,
                            qp);
    qd_error ierr;
    qd_error_clear(&ierr);
    int rc = qd__load_include(cfg, cfg->root ? cfg->root->file : NULL, value, depth, out,
                              &ierr);
    if (rc)
        return qd_error_set(err, rc, "%s: bad value '%s' for '%s': %s", where,
                            qd__quote(value, qv), qp, ierr.msg);
    return QD_OK;
}

int qd_config_set(qd_config *cfg, const char *path, const char *value, const char *origin,
                  qd_error *err)
{
    if (!cfg || !path)
        return qd_error_set(err, QD_ERR_INVALID, "qd_config_set: no configuration or path");
    char oname[256];
    int oline, ocol;
    parse_origin(origin, oname, sizeof oname, &oline, &ocol);
    char where[300];
    if (oline > 0)
        snprintf(where, sizeof where, "%s:%d:%d", oname, oline, ocol);
    else
        snprintf(where, sizeof where, "%s", oname);
    char qp[QD_QUOTE_MAX];
    qd__quote(path, qp);

    /* check the path's shape before touching the tree */
    size_t nseg = 0;
    int include = 0;   /* the path ends in `.file`: include that file there */
    for (const char *s = path;; s++) {
        const char *dot = strchr(s, '.');
        size_t len = dot ? (size_t)(dot - s) : strlen(s);
        if (len == 0)
            return qd_error_set(err, QD_ERR_INVALID,
                                "%s: bad key path '%s': empty component (write a.b.c)", where,
                                qp);
        /* `a.file=PATH` replaces the mapping at `a` by PATH's mapping, as a
         * `file:` include would (the include is resolved here, so no `file`
         * key is left in the tree: a plain one would not emit to YAML that
         * loads back, found by fuzzing). `file` anywhere else is refused. */
        if (len == 4 && strncmp(s, "file", 4) == 0) {
            if (dot || nseg == 0)
                return qd_error_set(err, QD_ERR_INVALID,
                                    "%s: cannot set '%s': 'file' can only end a path below "
                                    "the top level (e.g. model.file=models/lenet.yaml "
                                    "replaces the model by that file's mapping)",
                                    where, qp);
            include = 1;
            break;
        }
        nseg++;
        if (!dot)
            break;
        s = dot;
    }
    if ((int)nseg > cfg->limits.max_depth)
        return qd_error_set(err, QD_ERR_INVALID,
                            "%s: key path '%s' is nested deeper than %d levels", where, qp,
                            cfg->limits.max_depth);
    if (!cfg->root || cfg->root->type != QD_NODE_MAP)
        return qd_error_set(err, QD_ERR_INVALID,
                            "%s: cannot set '%s': the configuration is not a mapping", where,
                            qp);

    const char *file = qd__intern(cfg, oname);
    if (!file)
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    qd_node *val = NULL;
    int rc = include ? parse_include(cfg, value, where, qp, (int)nseg, &val, err)
                     : parse_plain(cfg, value, where, qp, file, oline, ocol, (int)nseg, &val,
                                   err);
    if (rc)
        return rc;

    qd_node *cur = cfg->root;
    const char *s = path;
    for (size_t k = 0; k < nseg; k++) {
        const char *dot = strchr(s, '.');
        size_t len = dot ? (size_t)(dot - s) : strlen(s);
        int last = k + 1 == nseg;
        /* for messages: the path up to and including this segment, the
         * segment alone, and the path before it */
        char sofar[QD_QUOTE_MAX], seg[QD_QUOTE_MAX], before[QD_QUOTE_MAX];
        {
            char tmp[256];
            size_t upto = (size_t)(s - path) + len;
            size_t m = upto < sizeof tmp - 1 ? upto : sizeof tmp - 1;
            memcpy(tmp, path, m);
            tmp[m] = '\0';
            qd__quote(tmp, sofar);
            m = len < sizeof tmp - 1 ? len : sizeof tmp - 1;
            memcpy(tmp, s, m);
            tmp[m] = '\0';
            qd__quote(tmp, seg);
            m = s > path ? (size_t)(s - path) - 1 : 0;
            if (m > sizeof tmp - 1)
                m = sizeof tmp - 1;
            memcpy(tmp, path, m);
            tmp[m] = '\0';
            qd__quote(tmp, before);
        }
        if (cur->type == QD_NODE_MAP) {
            long i = -1;
            for (size_t j = 0; j < cur->len; j++)
                if (strncmp(cur->keys[j]->str, s, len) == 0 && cur->keys[j]->str[len] == '\0') {
                    i = (long)j;
                    break;
                }
            if (last) {
                if (i >= 0) {
                    cur->items[i] = val;
                } else {
                    qd_node *key = new_key(cfg, s, len, file, oline, ocol);
                    if (!key || qd__map_push(cur, key, val))
                        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
                }
                return QD_OK;
            }
            qd_node *child = i >= 0 ? cur->items[i] : NULL;
            if (!child || child->type == QD_NODE_NULL) {
                qd_node *m = qd__node_new(cfg, QD_NODE_MAP, file, oline, ocol);
                if (!m)
                    return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
                if (i >= 0) {
                    cur->items[i] = m;
                } else {
                    qd_node *key = new_key(cfg, s, len, file, oline, ocol);
                    if (!key || qd__map_push(cur, key, m))
                        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
                }
                child = m;
            } else if (child->type == QD_NODE_SCALAR) {
                char at[300], qv[QD_QUOTE_MAX];
                qd__node_where(child, at, sizeof at);
                size_t al = strlen(at);
                if (al >= 2)
                    at[al - 2] = '\0';  /* drop the trailing ": " */
                return qd_error_set(err, QD_ERR_INVALID,
                                    "%s: cannot set '%s': '%s' holds the value '%s'%s%s%s, not "
                                    "a mapping",
                                    where, qp, sofar, qd__quote(child->str, qv),
                                    at[0] ? " (at " : "", at, at[0] ? ")" : "");
            }
            cur = child;
        } else {
            /* a sequence: by index or by item name */
            long i = seq_select(cur, s, len);
            if (i < 0) {
                char items[300];
                describe_items(cur, items, sizeof items);
                return qd_error_set(err, QD_ERR_INVALID,
                                    "%s: cannot set '%s': no item '%s' in '%s' (%s)",
                                    where, qp, seg, before, items);
            }
            if (last) {
                cur->items[i] = val;
                return QD_OK;
            }
            qd_node *child = cur->items[i];
            if (child->type != QD_NODE_MAP && child->type != QD_NODE_SEQ) {
                char ds[QD_QUOTE_MAX];
                return qd_error_set(err, QD_ERR_INVALID,
                                    "%s: cannot set '%s': '%s' is %s, not a mapping", where, qp,
                                    sofar, qd__describe(child, ds));
            }
            cur = child;
        }
        s = dot + 1;
    }
    return qd_error_set(err, QD_ERR_INTERNAL, "qd_config_set: fell off the path");
}
