/* Sweep grids: value lists, ranges, the manifest's `sweep:` section, names. */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grid.h"
#include "qdistill/manifest.h"

/* More values than this in one key is a typo (range(1,1000000)), not a plan. */
#define GRID_MAX_VALUES 10000

void grid_free(grid *g)
{
    for (size_t i = 0; i < g->n; ++i) {
        free(g->keys[i].key);
        for (size_t j = 0; j < g->keys[i].n; ++j) {
            free(g->keys[i].vals[j]);
            if (g->keys[i].labels)
                free(g->keys[i].labels[j]);
        }
        free(g->keys[i].vals);
        free(g->keys[i].labels);
    }
    free(g->keys);
    g->keys = NULL;
    g->n = 0;
}

static char *strndup_trim(const char *s, size_t len)
{
    while (len && isspace((unsigned char)*s))
        ++s, --len;
    while (len && isspace((unsigned char)s[len - 1]))
        --len;
    char *r = malloc(len + 1);
    if (r) {
        memcpy(r, s, len);
        r[len] = '\0';
    }
    return r;
}

static int push(char ***vals, size_t *n, char *v)
{
    if (!v)
        return -1;
    char **nv = realloc(*vals, (*n + 1) * sizeof *nv);
    if (!nv) {
        free(v);
        return -1;
    }
    nv[(*n)++] = v;
    *vals = nv;
    return 0;
}

/* Offsets of the top-level commas of text, or -1 when brackets/quotes do not
 * balance. Calls fn(start, len) for each item. */
static int split_top(const char *text, int (*fn)(void *, const char *, size_t), void *ctx)
{
    int depth = 0;
    char quote = 0;
    const char *start = text;
    for (const char *p = text;; ++p) {
        char ch = *p;
        if (quote) {
            if (ch == '\0')
                return -1;
            if (ch == '\\' && quote == '"' && p[1])
                ++p;
            else if (ch == quote)
                quote = 0;
            continue;
        }
        if (ch == '\'' || ch == '"') {
            quote = ch;
        } else if (ch == '[' || ch == '{' || ch == '(') {
            ++depth;
        } else if (ch == ']' || ch == '}' || ch == ')') {
            if (--depth < 0)
                return -1;
        } else if ((ch == ',' && depth == 0) || ch == '\0') {
            if (ch == '\0' && depth != 0)
                return -1;
            int rc = fn(ctx, start, (size_t)(p - start));
            if (rc)
                return rc;
            if (ch == '\0')
                return 0;
            start = p + 1;
        }
    }
}

typedef struct expand_ctx {
    char ***vals;
    size_t *n;
    char *msg;
    size_t msg_len;
    const char *text;
} expand_ctx;

static int fail(expand_ctx *x, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->msg, x->msg_len, fmt, ap);
    va_end(ap);
    return -2;
}

static int parse_ll(const char *s, size_t len, long long *out)
{
    char buf[64];
    while (len && isspace((unsigned char)*s))
        ++s, --len;
    while (len && isspace((unsigned char)s[len - 1]))
        --len;
    if (len == 0 || len >= sizeof buf)
        return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *end;
    errno = 0;
    long long v = strtoll(buf, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

static int expand_range(expand_ctx *x, const char *item, size_t len)
{
    /* item is "range(...)" */
    const char *in = item + 6;
    size_t in_len = len - 7;
    long long a[3];
    int na = 0;
    size_t s = 0;
    for (size_t i = 0; i <= in_len; ++i) {
        if (i == in_len || in[i] == ',') {
            if (na == 3 || parse_ll(in + s, i - s, &a[na]) != 0)
                return fail(x, "'%.*s': range takes 1 to 3 integers: range(stop), "
                               "range(start, stop) or range(start, stop, step)",
                            (int)len, item);
            ++na;
            s = i + 1;
        }
    }
    long long start = na >= 2 ? a[0] : 0, stop = na >= 2 ? a[1] : a[0], step = na == 3 ? a[2] : 1;
    if (step == 0)
        return fail(x, "'%.*s': the step of a range must not be 0", (int)len, item);
    size_t count = 0;
    for (long long v = start; step > 0 ? v < stop : v > stop; v += step) {
        if (++count > GRID_MAX_VALUES)
            return fail(x, "'%.*s': more than %d values", (int)len, item, GRID_MAX_VALUES);
        char buf[32];
        snprintf(buf, sizeof buf, "%lld", v);
        if (push(x->vals, x->n, strdup(buf)))
            return fail(x, "out of memory");
        if ((step > 0 && v > INT64_MAX - step) || (step < 0 && v < INT64_MIN - step))
            break;
    }
    if (count == 0)
        return fail(x, "'%.*s' is empty", (int)len, item);
    return 0;
}

static int expand_item(void *ctx, const char *item, size_t len)
{
    expand_ctx *x = ctx;
    while (len && isspace((unsigned char)*item))
        ++item, --len;
    while (len && isspace((unsigned char)item[len - 1]))
        --len;
    if (len == 0)
        return fail(x, "'%s': empty value in the list", x->text);
    if (len > 7 && strncmp(item, "range(", 6) == 0 && item[len - 1] == ')')
        return expand_range(x, item, len);
    if (*x->n >= GRID_MAX_VALUES)
        return fail(x, "'%s': more than %d values", x->text, GRID_MAX_VALUES);
    if (push(x->vals, x->n, strndup_trim(item, len)))
        return fail(x, "out of memory");
    return 0;
}

int grid_expand(const char *text, char ***vals, size_t *n, char *msg, size_t msg_len)
{
    expand_ctx x = {vals, n, msg, msg_len, text};
    int rc = split_top(text, expand_item, &x);
    if (rc == -1)
        snprintf(msg, msg_len, "'%s': unbalanced brackets or quotes", text);
    if (rc)
        return -1;
    /* the same value twice would be the same job twice */
    for (size_t i = 0; i < *n; ++i)
        for (size_t j = i + 1; j < *n; ++j)
            if (strcmp((*vals)[i], (*vals)[j]) == 0) {
                snprintf(msg, msg_len, "'%s': value '%s' is listed twice", text, (*vals)[i]);
                return -1;
            }
    return 0;
}

static int count_item(void *ctx, const char *item, size_t len)
{
    (void)item;
    (void)len;
    ++*(size_t *)ctx;
    return 0;
}

int grid_is_list(const char *text)
{
    size_t items = 0;
    if (split_top(text, count_item, &items) == 0 && items > 1)
        return 1;
    size_t len = strlen(text);
    return len > 7 && strncmp(text, "range(", 6) == 0 && text[len - 1] == ')';
}

int grid_remove(grid *g, const char *key)
{
    for (size_t i = 0; i < g->n; ++i)
        if (strcmp(g->keys[i].key, key) == 0) {
            grid_key *k = &g->keys[i];
            free(k->key);
            for (size_t j = 0; j < k->n; ++j)
                free(k->vals[j]);
            free(k->vals);
            memmove(k, k + 1, (g->n - i - 1) * sizeof *g->keys);
            --g->n;
            return 1;
        }
    return 0;
}

int grid_set(grid *g, const char *key, char **vals, size_t n)
{
    grid_remove(g, key);
    grid_key *nk = realloc(g->keys, (g->n + 1) * sizeof *nk);
    char *k = strdup(key);
    if (!nk || !k) {
        free(k);
        if (nk)
            g->keys = nk;
        for (size_t j = 0; j < n; ++j)
            free(vals[j]);
        free(vals);
        return -1;
    }
    g->keys = nk;
    g->keys[g->n++] = (grid_key){k, vals, n, NULL};
    return 0;
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp(((const grid_key *)a)->key, ((const grid_key *)b)->key);
}

void grid_sort(grid *g)
{
    if (g->n > 1)
        qsort(g->keys, g->n, sizeof *g->keys, cmp_key);
}

/* Flow-style YAML text of a node: scalars plain unless they hold characters
 * that would change the flow structure (then double-quoted). */
static void flow_scalar(FILE *f, const char *v)
{
    int quote = *v == '\0' || isspace((unsigned char)v[0]) ||
                isspace((unsigned char)v[strlen(v) - 1]) || strpbrk(v, ",:{}[]#&*!|>'\"%@`");
    if (!quote) {
        fputs(v, f);
        return;
    }
    fputc('"', f);
    for (; *v; ++v) {
        if (*v == '"' || *v == '\\')
            fputc('\\', f);
        fputc(*v, f);
    }
    fputc('"', f);
}

static void flow(FILE *f, const qd_node *n)
{
    switch (qd_node_kind(n)) {
    case QD_NODE_SCALAR:
        flow_scalar(f, qd_node_str(n));
        break;
    case QD_NODE_SEQ:
        fputc('[', f);
        for (size_t i = 0; i < qd_node_len(n); ++i) {
            fputs(i ? ", " : "", f);
            flow(f, qd_node_at(n, i));
        }
        fputc(']', f);
        break;
    case QD_NODE_MAP:
        fputc('{', f);
        for (size_t i = 0; i < qd_node_len(n); ++i) {
            fputs(i ? ", " : "", f);
            flow_scalar(f, qd_node_key_at(n, i));
            fputs(": ", f);
            flow(f, qd_node_at(n, i));
        }
        fputc('}', f);
        break;
    default:
        fputs("null", f);
        break;
    }
}

static void labels_free(char **labels, size_t n)
{
    if (labels)
        for (size_t j = 0; j < n; ++j)
            free(labels[j]);
    free(labels);
}

static char *flow_text(const qd_node *n)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return NULL;
    flow(f, n);
    if (fclose(f) != 0) {
        free(text);
        return NULL;
    }
    return text;
}

static void add_msg(char ***msgs, size_t *n, const qd_node *at, const char *fmt, ...)
    QD_PRINTF(4, 5);

static void add_msg(char ***msgs, size_t *n, const qd_node *at, const char *fmt, ...)
{
    char text[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    qd_error err;
    qd_node_error(at, &err, QD_ERR_INVALID, "%s", text);
    push(msgs, n, strdup(err.msg));
}

size_t grid_from_manifest(const qd_node *sweep, grid *g, char ***msgs, size_t *n_msgs)
{
    size_t before = *n_msgs;
    if (!sweep || qd_node_kind(sweep) == QD_NODE_NULL)
        return 0;
    if (qd_node_kind(sweep) != QD_NODE_MAP) {
        add_msg(msgs, n_msgs, sweep, "sweep: expected a mapping {grid: {key: [values]}}");
        return *n_msgs - before;
    }
    for (size_t i = 0; i < qd_node_len(sweep); ++i)
        if (strcmp(qd_node_key_at(sweep, i), "grid") != 0)
            add_msg(msgs, n_msgs, qd_node_key_node_at(sweep, i),
                    "sweep: unknown key '%s' (the section holds `grid`)", qd_node_key_at(sweep, i));
    const qd_node *gn = qd_node_get(sweep, "grid");
    if (!gn)
        return *n_msgs - before;
    if (qd_node_kind(gn) != QD_NODE_MAP) {
        add_msg(msgs, n_msgs, gn,
                "sweep.grid: expected a mapping of keys to value lists, e.g. "
                "{seed: [1, 2, 3], observable.trainable: [true, false]}");
        return *n_msgs - before;
    }
    for (size_t i = 0; i < qd_node_len(gn); ++i) {
        const char *key = qd_node_key_at(gn, i);
        const qd_node *kn = qd_node_key_node_at(gn, i), *vn = qd_node_at(gn, i);
        /* the key must be an override path */
        char *probe = malloc(strlen(key) + 3), *p = NULL, *v = NULL;
        qd_error err;
        if (!probe)
            return *n_msgs - before + 1;
        sprintf(probe, "%s=x", key);
        int bad = qd_override_parse(probe, &p, &v, &err) != QD_OK;
        free(probe);
        free(p);
        free(v);
        if (bad) {
            add_msg(msgs, n_msgs, kn, "sweep.grid: '%s' is not a key path: %s", key, err.msg);
            continue;
        }
        char **vals = NULL, **labels = NULL;
        size_t n = 0;
        char msg[600];
        int ok = 1;
        if (qd_node_kind(vn) == QD_NODE_SCALAR) {
            if (grid_expand(qd_node_str(vn), &vals, &n, msg, sizeof msg) != 0) {
                add_msg(msgs, n_msgs, vn, "sweep.grid.%s: %s", key, msg);
                ok = 0;
            }
        } else if (qd_node_kind(vn) == QD_NODE_SEQ && qd_node_len(vn) > 0) {
            for (size_t j = 0; j < qd_node_len(vn) && ok; ++j) {
                const qd_node *item = qd_node_at(vn, j);
                if (qd_node_kind(item) == QD_NODE_MAP) {
                    /* a whole section per value, named by its plugin */
                    const qd_node *pl = qd_node_get(item, "plugin");
                    char lab[128];
                    if (pl && qd_node_kind(pl) == QD_NODE_SCALAR)
                        snprintf(lab, sizeof lab, "%s", qd_node_str(pl));
                    else
                        snprintf(lab, sizeof lab, "v%zu", j + 1);
                    for (size_t a = 0; a < n; ++a)
                        if (labels && labels[a] && strcmp(labels[a], lab) == 0) {
                            snprintf(lab + strlen(lab), sizeof lab - strlen(lab), "-%zu", j + 1);
                            break;
                        }
                    /* earlier scalar values name themselves (NULL labels) */
                    char **nl = labels ? realloc(labels, (n + 1) * sizeof *nl)
                                       : calloc(n + 1, sizeof *nl);
                    if (!nl || push(&vals, &n, flow_text(item)) != 0) {
                        if (nl)
                            labels = nl;
                        add_msg(msgs, n_msgs, item, "out of memory");
                        ok = 0;
                        break;
                    }
                    labels = nl;
                    labels[n - 1] = strdup(lab);
                    for (size_t a = 0; a + 1 < n; ++a)
                        if (strcmp(vals[a], vals[n - 1]) == 0) {
                            add_msg(msgs, n_msgs, item, "sweep.grid.%s: value %zu is listed twice",
                                    key, j + 1);
                            ok = 0;
                        }
                } else if (qd_node_kind(item) != QD_NODE_SCALAR) {
                    add_msg(msgs, n_msgs, item,
                            "sweep.grid.%s: each value must be a scalar or a mapping (a whole "
                            "section, named by its plugin)", key);
                    ok = 0;
                } else {
                    size_t had = n;
                    if (grid_expand(qd_node_str(item), &vals, &n, msg, sizeof msg) != 0) {
                        add_msg(msgs, n_msgs, item, "sweep.grid.%s: %s", key, msg);
                        ok = 0;
                    }
                    if (labels && n > had) {   /* scalars name themselves */
                        char **nl = realloc(labels, n * sizeof *nl);
                        if (!nl) {
                            add_msg(msgs, n_msgs, item, "out of memory");
                            labels_free(labels, had);
                            labels = NULL;
                            ok = 0;
                            break;
                        }
                        labels = nl;
                        for (size_t a = had; a < n; ++a)
                            labels[a] = NULL;
                    }
                    for (size_t a = 0; ok && a < had; ++a)
                        for (size_t b = had; ok && b < n; ++b)
                            if (strcmp(vals[a], vals[b]) == 0) {
                                add_msg(msgs, n_msgs, item,
                                        "sweep.grid.%s: value '%s' is listed twice", key, vals[b]);
                                ok = 0;
                            }
                }
            }
        } else {
            add_msg(msgs, n_msgs, vn,
                    "sweep.grid.%s: expected a non-empty list of values or a string such as "
                    "\"range(1, 4)\"", key);
            ok = 0;
        }
        if (ok) {
            if (grid_set(g, key, vals, n) != 0) {
                add_msg(msgs, n_msgs, vn, "out of memory");
                labels_free(labels, n);
            } else {
                g->keys[g->n - 1].labels = labels;
            }
        } else {
            for (size_t j = 0; j < n; ++j)
                free(vals[j]);
            free(vals);
            labels_free(labels, n);
        }
    }
    return *n_msgs - before;
}

char *grid_job_name(const char *const *keys, const char *const *vals, size_t n)
{
    size_t len = 1;
    for (size_t i = 0; i < n; ++i)
        len += strlen(keys[i]) + strlen(vals[i]) + 2;
    char *s = malloc(len < 32 ? 32 : len);
    if (!s)
        return NULL;
    char *p = s;
    for (size_t i = 0; i < n; ++i)
        p += sprintf(p, "%s%s=%s", i ? "," : "", keys[i], vals[i]);
    if (n == 0)
        strcpy(s, "default");
    /* FNV-1a of the unsanitised name: distinct names stay distinct when cut */
    uint64_t h = 1469598103934665603ull;
    for (const char *q = s; *q; ++q)
        h = (h ^ (unsigned char)*q) * 1099511628211ull;
    for (char *q = s; *q; ++q)
        if (!(isalnum((unsigned char)*q) || strchr("._+=,-", *q)))
            *q = '_';
    if (strlen(s) > 200)
        sprintf(s + 183, "~%016llx", (unsigned long long)h);
    return s;
}
