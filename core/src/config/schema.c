/* Validation of configuration sections against qd_param schemas. Every
 * problem is collected (not just the first), each located at the node it is
 * about: unknown keys at the key, bad values at the value, missing keys at
 * the mapping that lacks them. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_internal.h"

/* Past this many messages only a note is kept: a garbage file must not
 * produce megabytes of diagnostics. */
#define QD_DIAGS_MAX 500

/* ------------------------------------------------------------------------
 * Diagnostics
 * ---------------------------------------------------------------------- */

void qd_diags_add_raw(qd_diags *d, const char *msg)
{
    if (!d || !msg || d->n > QD_DIAGS_MAX)
        return;
    if (d->n == QD_DIAGS_MAX)
        msg = "(further problems are not shown)";
    if (d->n == d->cap) {
        size_t cap = d->cap ? 2 * d->cap : 8;
        char **m = realloc(d->msgs, cap * sizeof *m);
        if (!m)
            return;
        d->msgs = m;
        d->cap = cap;
    }
    char *s = strdup(msg);
    if (s)
        d->msgs[d->n++] = s;
}

void qd_diags_add(qd_diags *d, const qd_node *at, const char *fmt, ...)
{
    if (!d)
        return;
    char where[512], body[QD_ERROR_MSG_MAX], msg[QD_ERROR_MSG_MAX + 512];
    qd__node_where(at, where, sizeof where);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    snprintf(msg, sizeof msg, "%s%s", where, body);
    qd_diags_add_raw(d, msg);
}

void qd_diags_free(qd_diags *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->n; i++)
        free(d->msgs[i]);
    free(d->msgs);
    memset(d, 0, sizeof *d);
}

char *qd_diags_join(const qd_diags *d)
{
    qd_strbuf b = {0};
    for (size_t i = 0; d && i < d->n; i++) {
        if (i)
            qd__sb_add(&b, "\n", 1);
        qd__sb_puts(&b, d->msgs[i]);
    }
    return qd__sb_take(&b);
}

/* ------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------- */

const qd_param *qd_schema_find(const qd_param *schema, const char *name)
{
    for (const qd_param *p = schema; p && p->name && name; p++)
        if (strcmp(p->name, name) == 0)
            return p;
    return NULL;
}

/* Numbers in messages and docs: integers without a fraction. */
static const char *fmt_num(double v, char *buf, size_t size)
{
    if (v == floor(v) && fabs(v) < 1e15)
        snprintf(buf, size, "%.0f", v);
    else
        snprintf(buf, size, "%g", v);
    return buf;
}

/* Is s one of "a|b|c"? */
static int in_choices(const char *choices, const char *s)
{
    if (!choices || !s)
        return 0;
    size_t n = strlen(s);
    for (const char *c = choices;;) {
        const char *bar = strchr(c, '|');
        size_t len = bar ? (size_t)(bar - c) : strlen(c);
        if (len == n && strncmp(c, s, n) == 0)
            return 1;
        if (!bar)
            return 0;
        c = bar + 1;
    }
}

/* Suggestion among "a|b|c" (written into buf) or NULL. */
static const char *suggest_choice(const char *choices, const char *word, char *buf,
                                  size_t size)
{
    if (!choices || !word)
        return NULL;
    const char *cands[64];
    char copy[1024];
    snprintf(copy, sizeof copy, "%s", choices);
    size_t n = 0;
    for (char *c = copy; c && n < 64;) {
        char *bar = strchr(c, '|');
        if (bar)
            *bar = '\0';
        cands[n++] = c;
        c = bar ? bar + 1 : NULL;
    }
    const char *s = qd_suggest(word, cands, n);
    if (!s)
        return NULL;
    snprintf(buf, size, "%s", s);
    return buf;
}

/* "a|b|c" -> "a, b, c" */
static const char *choices_list(const char *choices, char *buf, size_t size)
{
    size_t o = 0;
    for (const char *c = choices ? choices : ""; *c && o + 3 < size; c++) {
        if (*c == '|') {
            buf[o++] = ',';
            buf[o++] = ' ';
        } else {
            buf[o++] = *c;
        }
    }
    buf[o] = '\0';
    return buf;
}

/* Label of a key in a section: "'lr' in train", or "'seed'" at top level. */
static void label(char *buf, size_t size, const char *key, const char *what)
{
    char q[QD_QUOTE_MAX];
    qd__quote(key, q);
    if (what && *what)
        snprintf(buf, size, "'%s' in %s", q, what);
    else
        snprintf(buf, size, "'%s'", q);
}

/* Name of a nested section: "train.sub", "observable 'x'.sub" reads badly,
 * so sections with spaces in their names nest as "'sub' in observable 'x'".
 * idx >= 0 appends a list index. */
static void subwhat(char *buf, size_t size, const char *what, const char *key, long idx)
{
    char q[QD_QUOTE_MAX], ix[32] = "";
    qd__quote(key, q);
    if (idx >= 0)
        snprintf(ix, sizeof ix, "[%ld]", idx);
    if (!what || !*what)
        snprintf(buf, size, "%s%s", q, ix);
    else if (strpbrk(what, " '"))
        snprintf(buf, size, "'%s'%s in %s", q, ix, what);
    else
        snprintf(buf, size, "%s.%s%s", what, q, ix);
}

/* ------------------------------------------------------------------------
 * Validation
 * ---------------------------------------------------------------------- */

static size_t check_section(const qd_param *schema, const qd_node *sec,
                            const char *const *extra, const char *what, qd_diags *d,
                            int depth);

static size_t range_check(const qd_param *p, double v, const qd_node *n, const char *lab,
                          qd_diags *d)
{
    int lo = (p->flags & QD_PARAM_HAS_MIN) && v < p->min;
    int hi = (p->flags & QD_PARAM_HAS_MAX) && v > p->max;
    if (!lo && !hi)
        return 0;
    char a[64], b[64], q[QD_QUOTE_MAX];
    qd__quote(n->str, q);
    if ((p->flags & QD_PARAM_HAS_MIN) && (p->flags & QD_PARAM_HAS_MAX))
        qd_diags_add(d, n, "%s: %s is out of range (must be in [%s, %s])", lab, q,
                     fmt_num(p->min, a, sizeof a), fmt_num(p->max, b, sizeof b));
    else if (lo)
        qd_diags_add(d, n, "%s: %s is out of range (must be >= %s)", lab, q,
                     fmt_num(p->min, a, sizeof a));
    else
        qd_diags_add(d, n, "%s: %s is out of range (must be <= %s)", lab, q,
                     fmt_num(p->max, b, sizeof b));
    return 1;
}

/* Check value v of parameter p. lab names it in messages ("'lr' in train");
 * sub names it as a section, for nested mappings. */
static size_t check_value(const qd_param *p, uint32_t type, const qd_node *v, const char *lab,
                          const char *sub, qd_diags *d, int depth)
{
    char msg[512], ds[QD_QUOTE_MAX], q[QD_QUOTE_MAX];
    if (depth > QD_CONFIG_DEPTH_CAP)
        return 0;
    if (v->type == QD_NODE_NULL && type != QD_PARAM_MAP) {
        char *tt = NULL;
        if (type == p->type)
            tt = qd_param_type_text(p);
        qd_diags_add(d, v, "%s: missing value (expected %s)", lab,
                     tt ? tt : type == QD_PARAM_BOOL ? "true or false"
                             : type == QD_PARAM_INT ? "an integer"
                             : type == QD_PARAM_DOUBLE ? "a number" : "a value");
        free(tt);
        return 1;
    }
    switch (type) {
    case QD_PARAM_BOOL: {
        int b;
        if (qd__conv_bool(v, &b, msg, sizeof msg)) {
            qd_diags_add(d, v, "%s: %s", lab, msg);
            return 1;
        }
        return 0;
    }
    case QD_PARAM_INT: {
        long long i;
        if (qd__conv_int(v, &i, msg, sizeof msg)) {
            if ((p->flags & QD_PARAM_INT_OR_STRING) && v->type == QD_NODE_SCALAR) {
                if (in_choices(p->choices, v->str))
                    return 0;
                char cl[512], sg[128];
                const char *s = suggest_choice(p->choices, v->str, sg, sizeof sg);
                qd_diags_add(d, v, "%s: expected an integer or one of: %s; got %s%s%s%s", lab,
                             choices_list(p->choices, cl, sizeof cl), qd__describe(v, ds),
                             s ? " (did you mean '" : "", s ? s : "", s ? "'?)" : "");
                return 1;
            }
            qd_diags_add(d, v, "%s: %s", lab, msg);
            return 1;
        }
        return type == p->type ? range_check(p, (double)i, v, lab, d) : 0;
    }
    case QD_PARAM_DOUBLE: {
        double x;
        if (qd__conv_double(v, &x, msg, sizeof msg)) {
            qd_diags_add(d, v, "%s: %s", lab, msg);
            return 1;
        }
        if (isnan(x)) {
            qd_diags_add(d, v, "%s: NaN is not a valid value", lab);
            return 1;
        }
        return type == p->type ? range_check(p, x, v, lab, d) : 0;
    }
    case QD_PARAM_STRING:
        if (v->type != QD_NODE_SCALAR) {
            qd_diags_add(d, v, "%s: expected a string, got %s", lab, qd__describe(v, ds));
            return 1;
        }
        return 0;
    case QD_PARAM_ENUM: {
        char cl[512], sg[128];
        if (v->type != QD_NODE_SCALAR) {
            qd_diags_add(d, v, "%s: expected one of: %s; got %s", lab,
                         choices_list(p->choices, cl, sizeof cl), qd__describe(v, ds));
            return 1;
        }
        if (in_choices(p->choices, v->str))
            return 0;
        const char *s = suggest_choice(p->choices, v->str, sg, sizeof sg);
        qd_diags_add(d, v, "%s: bad value '%s' (expected one of: %s%s%s%s)", lab,
                     qd__quote(v->str, q), choices_list(p->choices, cl, sizeof cl),
                     s ? "; did you mean '" : "", s ? s : "", s ? "'?" : "");
        return 1;
    }
    case QD_PARAM_LIST: {
        if (v->type != QD_NODE_SEQ) {
            qd_diags_add(d, v, "%s: expected a list (e.g. [a, b]), got %s", lab,
                         qd__describe(v, ds));
            return 1;
        }
        size_t count = 0;
        if (type == p->type) {
            int lo = (p->flags & QD_PARAM_HAS_MIN) && (double)v->len < p->min;
            int hi = (p->flags & QD_PARAM_HAS_MAX) && (double)v->len > p->max;
            char a[64], b[64];
            if ((lo || hi) && (p->flags & QD_PARAM_HAS_MIN) && (p->flags & QD_PARAM_HAS_MAX) &&
                p->min == p->max) {
                qd_diags_add(d, v, "%s: needs exactly %s item%s, got %zu", lab,
                             fmt_num(p->min, a, sizeof a), p->min == 1 ? "" : "s", v->len);
                count++;
            } else if (lo) {
                qd_diags_add(d, v, "%s: needs at least %s item%s, got %zu", lab,
                             fmt_num(p->min, a, sizeof a), p->min == 1 ? "" : "s", v->len);
                count++;
            } else if (hi) {
                qd_diags_add(d, v, "%s: takes at most %s item%s, got %zu", lab,
                             fmt_num(p->max, b, sizeof b), p->max == 1 ? "" : "s", v->len);
                count++;
            }
        }
        uint32_t et = type == p->type ? p->elem : 0;
        if (!et)
            return count;  /* a list of lists: elements are not described */
        for (size_t i = 0; i < v->len; i++) {
            char elab[600], esub[700];
            snprintf(elab, sizeof elab, "%s, item %zu", lab, i);
            if (strpbrk(sub, " '"))
                snprintf(esub, sizeof esub, "item %zu of %s", i, sub);
            else
                snprintf(esub, sizeof esub, "%s[%zu]", sub, i);
            count += check_value(p, et, v->items[i], elab, esub, d, depth + 1);
        }
        return count;
    }
    case QD_PARAM_MATRIX: {
        size_t r, c;
        double complex *m = NULL;
        const qd_node *bad = NULL;
        if (qd__matrix(v, &r, &c, &m, &bad, msg, sizeof msg)) {
            qd_diags_add(d, bad ? bad : v, "%s: %s", lab, msg);
            return 1;
        }
        free(m);
        return 0;
    }
    case QD_PARAM_MAP:
        if (v->type != QD_NODE_MAP && v->type != QD_NODE_NULL) {
            qd_diags_add(d, v, "%s: expected a mapping (key: value pairs), got %s", lab,
                         qd__describe(v, ds));
            return 1;
        }
        return p->fields ? check_section(p->fields, v, NULL, sub, d, depth + 1) : 0;
    default:
        qd_diags_add(d, v, "%s: the schema declares an unknown type %u (a plugin bug)", lab,
                     (unsigned)type);
        return 1;
    }
}

static int is_extra(const char *const *extra, const char *k)
{
    for (size_t i = 0; extra && extra[i]; i++)
        if (strcmp(extra[i], k) == 0)
            return 1;
    return 0;
}

static size_t unknown_key(const qd_param *schema, const char *const *extra,
                          const qd_node *keynode, const char *what, qd_diags *d)
{
    const char *cands[256];
    size_t n = 0;
    for (const qd_param *p = schema; p && p->name && n < 256; p++)
        cands[n++] = p->name;
    size_t n_params = n;
    for (size_t i = 0; extra && extra[i] && n < 256; i++)
        cands[n++] = extra[i];
    char q[QD_QUOTE_MAX], in[600];
    qd__quote(keynode->str, q);
    if (what && *what)
        snprintf(in, sizeof in, "unknown key '%s' in %s", q, what);
    else
        snprintf(in, sizeof in, "unknown top-level key '%s'", q);
    const char *s = qd_suggest(keynode->str, cands, n);
    if (s) {
        qd_diags_add(d, keynode, "%s (did you mean '%s'?)", in, s);
        return 1;
    }
    if (n_params == 0) {
        qd_diags_add(d, keynode, "%s (it takes no parameters%s)", in,
                     n > 0 ? " besides the core keys" : "");
        return 1;
    }
    qd_strbuf b = {0};
    for (size_t i = 0; i < n; i++)
        qd__sb_printf(&b, "%s%s", i ? ", " : "", cands[i]);
    char *list = qd__sb_take(&b);
    qd_diags_add(d, keynode, "%s (valid keys: %s)", in, list ? list : "?");
    free(list);
    return 1;
}

static size_t check_section(const qd_param *schema, const qd_node *sec,
                            const char *const *extra, const char *what, qd_diags *d, int depth)
{
    size_t count = 0;
    if (depth > QD_CONFIG_DEPTH_CAP)
        return 0;
    if (sec && sec->type != QD_NODE_MAP && sec->type != QD_NODE_NULL) {
        char ds[QD_QUOTE_MAX];
        qd_diags_add(d, sec, "%s%s must be a mapping (key: value pairs), got %s",
                     what && *what ? "" : "the top level", what ? what : "",
                     qd__describe(sec, ds));
        return 1;
    }
    size_t len = sec && sec->type == QD_NODE_MAP ? sec->len : 0;
    for (size_t i = 0; i < len; i++) {
        const qd_node *k = sec->keys[i];
        if (is_extra(extra, k->str))
            continue;
        const qd_param *p = qd_schema_find(schema, k->str);
        if (!p) {
            count += unknown_key(schema, extra, k, what, d);
            continue;
        }
        char lab[600], sub[600];
        label(lab, sizeof lab, p->name, what);
        subwhat(sub, sizeof sub, what, p->name, -1);
        count += check_value(p, p->type, sec->items[i], lab, sub, d, depth);
    }
    for (const qd_param *p = schema; p && p->name; p++) {
        if (!(p->flags & QD_PARAM_REQUIRED) || qd__map_find(sec, p->name) >= 0)
            continue;
        if (what && *what)
            qd_diags_add(d, sec, "missing required key '%s' in %s", p->name, what);
        else
            qd_diags_add(d, sec, "missing required top-level key '%s'", p->name);
        count++;
    }
    return count;
}

size_t qd__check_param(const qd_param *p, const qd_node *v, const char *what, qd_diags *d)
{
    char lab[600], sub[600];
    label(lab, sizeof lab, p->name, what);
    subwhat(sub, sizeof sub, what, p->name, -1);
    return check_value(p, p->type, v, lab, sub, d, 0);
}

size_t qd_schema_validate(const qd_param *schema, const qd_node *section,
                          const char *const *extra_keys, const char *what, qd_diags *diags)
{
    return check_section(schema, section, extra_keys, what, diags, 0);
}

/* ------------------------------------------------------------------------
 * Type text and Markdown
 * ---------------------------------------------------------------------- */

static const char *scalar_type_name(uint32_t t)
{
    switch (t) {
    case QD_PARAM_BOOL: return "bool";
    case QD_PARAM_INT: return "int";
    case QD_PARAM_DOUBLE: return "double";
    case QD_PARAM_STRING: return "string";
    case QD_PARAM_ENUM: return "enum";
    case QD_PARAM_LIST: return "list";
    case QD_PARAM_MATRIX: return "matrix (complex)";
    case QD_PARAM_MAP: return "mapping";
    default: return "unknown";
    }
}

char *qd_param_type_text(const qd_param *p)
{
    if (!p)
        return NULL;
    qd_strbuf b = {0};
    char a[64], c[64];
    int has_min = (p->flags & QD_PARAM_HAS_MIN) != 0, has_max = (p->flags & QD_PARAM_HAS_MAX) != 0;
    switch (p->type) {
    case QD_PARAM_INT:
    case QD_PARAM_DOUBLE:
        qd__sb_puts(&b, scalar_type_name(p->type));
        if (has_min && has_max)
            qd__sb_printf(&b, " in [%s, %s]", fmt_num(p->min, a, sizeof a),
                          fmt_num(p->max, c, sizeof c));
        else if (has_min)
            qd__sb_printf(&b, " >= %s", fmt_num(p->min, a, sizeof a));
        else if (has_max)
            qd__sb_printf(&b, " <= %s", fmt_num(p->max, c, sizeof c));
        if (p->type == QD_PARAM_INT && (p->flags & QD_PARAM_INT_OR_STRING) && p->choices)
            qd__sb_printf(&b, " or %s", p->choices);
        break;
    case QD_PARAM_ENUM:
        qd__sb_printf(&b, "enum %s", p->choices ? p->choices : "");
        break;
    case QD_PARAM_LIST:
        if (p->elem == QD_PARAM_MAP)
            qd__sb_puts(&b, "list of mappings");
        else if (p->elem == QD_PARAM_ENUM)
            qd__sb_printf(&b, "list of %s", p->choices ? p->choices : "enum");
        else if (p->elem)
            qd__sb_printf(&b, "list of %s", scalar_type_name(p->elem));
        else
            qd__sb_puts(&b, "list");
        if (has_min && has_max && p->min == p->max)
            qd__sb_printf(&b, " (%s item%s)", fmt_num(p->min, a, sizeof a),
                          p->min == 1 ? "" : "s");
        else if (has_min && has_max)
            qd__sb_printf(&b, " (%s-%s items)", fmt_num(p->min, a, sizeof a),
                          fmt_num(p->max, c, sizeof c));
        else if (has_min)
            qd__sb_printf(&b, " (at least %s)", fmt_num(p->min, a, sizeof a));
        else if (has_max)
            qd__sb_printf(&b, " (at most %s)", fmt_num(p->max, c, sizeof c));
        break;
    default:
        qd__sb_puts(&b, scalar_type_name(p->type));
        break;
    }
    return qd__sb_take(&b);
}

/* A table cell: '|' escaped, line breaks flattened. */
static void cell(qd_strbuf *b, const char *s)
{
    for (; s && *s; s++) {
        if (*s == '|')
            qd__sb_puts(b, "\\|");
        else if (*s == '\n' || *s == '\r')
            qd__sb_puts(b, " ");
        else
            qd__sb_add(b, s, 1);
    }
}

static void md_rows(qd_strbuf *b, const qd_param *schema, const char *prefix, int depth)
{
    if (depth > 8)
        return;
    for (const qd_param *p = schema; p && p->name; p++) {
        qd__sb_puts(b, "| `");
        cell(b, prefix);
        cell(b, p->name);
        qd__sb_puts(b, "` | ");
        char *t = qd_param_type_text(p);
        cell(b, t ? t : "?");
        free(t);
        qd__sb_puts(b, " | ");
        if (p->def) {
            qd__sb_puts(b, "`");
            cell(b, p->def);
            qd__sb_puts(b, "`");
        } else if (p->flags & QD_PARAM_REQUIRED) {
            qd__sb_puts(b, "*required*");
        }
        qd__sb_puts(b, " | ");
        cell(b, p->doc);
        qd__sb_puts(b, " |\n");
        if (p->fields && (p->type == QD_PARAM_MAP ||
                          (p->type == QD_PARAM_LIST && p->elem == QD_PARAM_MAP))) {
            qd_strbuf pre = {0};
            qd__sb_printf(&pre, "%s%s%s", prefix, p->name, p->type == QD_PARAM_MAP ? "." : "[].");
            char *np = qd__sb_take(&pre);
            if (np)
                md_rows(b, p->fields, np, depth + 1);
            else
                b->failed = 1;
            free(np);
        }
    }
}

char *qd_schema_markdown(const qd_param *schema)
{
    qd_strbuf b = {0};
    if (!schema || !schema->name) {
        qd__sb_puts(&b, "*(no parameters)*\n");
        return qd__sb_take(&b);
    }
    qd__sb_puts(&b, "| key | type | default | description |\n"
                    "|-----|------|---------|-------------|\n");
    md_rows(&b, schema, "", 0);
    return qd__sb_take(&b);
}
