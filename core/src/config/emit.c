/* qd_config_to_yaml: block-style YAML that loads back to the same tree.
 * Plain scalars stay plain when that is unambiguous; strings that were
 * quoted (or need quoting) are written double-quoted with escapes, so a
 * quoted "3" stays a string after a round trip. */
#include <stdlib.h>
#include <string.h>

#include "config_internal.h"

/* Can s be written as a plain scalar in block context and read back as the
 * same text? Conservative: anything doubtful is quoted. */
static int plain_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0)
        return 0;
    unsigned char c0 = (unsigned char)s[0];
    if (strchr("?:-", c0)) {
        if (n == 1 || s[1] == ' ')
            return 0;
    } else if (strchr(",[]{}#&*!|>'\"%@` ", c0)) {
        return 0;
    }
    if (strncmp(s, "---", 3) == 0 || strncmp(s, "...", 3) == 0)
        return 0;
    if (s[n - 1] == ' ' || s[n - 1] == ':')
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7F)
            return 0;
        if (strchr(",[]{}", c))
            return 0;
        if (c == ':' && s[i + 1] == ' ')
            return 0;
        if (c == '#' && i > 0 && s[i - 1] == ' ')
            return 0;
        if (c < 0x80)
            continue;
        /* multi-byte UTF-8: NEL, LS, PS and BOM would read back as line
         * breaks or vanish, and anything malformed cannot be written plain */
        size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
        if (!len || c > 0xF4)
            return 0;
        for (size_t k = 1; k < len; k++)
            if (((unsigned char)s[i + k] & 0xC0) != 0x80)
                return 0;
        unsigned char c1 = (unsigned char)s[i + 1], c2 = len > 2 ? (unsigned char)s[i + 2] : 0;
        if ((c == 0xC2 && c1 <= 0x9F) || (c == 0xE2 && c1 == 0x80 && (c2 == 0xA8 || c2 == 0xA9)) ||
            (c == 0xEF && c1 == 0xBB && c2 == 0xBF))
            return 0;
        i += len - 1;
    }
    return 1;
}

static void emit_quoted(qd_strbuf *b, const char *s)
{
    qd__sb_add(b, "\"", 1);
    for (size_t i = 0; s[i]; i++) {
        unsigned char c = (unsigned char)s[i];
        unsigned char c1 = c ? (unsigned char)s[i + 1] : 0;
        switch (c) {
        case '"': qd__sb_add(b, "\\\"", 2); continue;
        case '\\': qd__sb_add(b, "\\\\", 2); continue;
        case '\n': qd__sb_add(b, "\\n", 2); continue;
        case '\t': qd__sb_add(b, "\\t", 2); continue;
        case '\r': qd__sb_add(b, "\\r", 2); continue;
        default: break;
        }
        if (c < 0x20 || c == 0x7F) {
            qd__sb_printf(b, "\\x%02X", c);
        } else if (c == 0xC2 && c1 >= 0x80 && c1 <= 0x9F) {
            qd__sb_printf(b, "\\x%02X", c1);  /* C1 control: U+0080..U+009F */
            i++;
        } else if (c == 0xE2 && c1 == 0x80 &&
                   ((unsigned char)s[i + 2] == 0xA8 || (unsigned char)s[i + 2] == 0xA9)) {
            qd__sb_add(b, (unsigned char)s[i + 2] == 0xA8 ? "\\L" : "\\P", 2);
            i += 2;
        } else if (c == 0xEF && c1 == 0xBB && (unsigned char)s[i + 2] == 0xBF) {
            qd__sb_add(b, "\\uFEFF", 6);
            i += 2;
        } else {
            qd__sb_add(b, (const char *)&s[i], 1);
        }
    }
    qd__sb_add(b, "\"", 1);
}

/* Write a mapping key. YAML limits implicit keys to 1024 characters, so a
 * longer one is written as an explicit key ("? key" then ": value" on the
 * next line at the same indentation). */
static void emit_key(qd_strbuf *b, const char *k, int indent)
{
    qd_strbuf kb = {0};
    /* a plain `<<` would read back as a merge key */
    if (plain_ok(k) && strcmp(k, "<<") != 0)
        qd__sb_puts(&kb, k);
    else
        emit_quoted(&kb, k);
    char *t = qd__sb_take(&kb);
    if (!t) {
        b->failed = 1;
        return;
    }
    if (strlen(t) < 1000) {
        qd__sb_puts(b, t);
    } else {
        qd__sb_puts(b, "? ");
        qd__sb_puts(b, t);
        qd__sb_puts(b, "\n");
        qd__sb_indent(b, indent);
    }
    free(t);
}

static void emit_scalar(qd_strbuf *b, const qd_node *n)
{
    if (n->type == QD_NODE_NULL)
        qd__sb_puts(b, "null");
    else if (!n->is_str && plain_ok(n->str))
        qd__sb_puts(b, n->str);
    else
        emit_quoted(b, n->str);
}

/* Sequences of scalars (and of such sequences) that fit on a line are
 * written in flow style: "lr_grid: [0.001, 0.01]", "matrix: [[1, 0], [0, -1]]".
 * Returns the flow text's length, or -1 when n cannot or should not be
 * written that way. A plain scalar in flow style must also avoid ':' (it
 * could read as a key) - such items force block style. */
#define FLOW_MAX 72
static long flow_len(const qd_node *n, int depth)
{
    if (n->type == QD_NODE_NULL)
        return 4;
    if (n->type == QD_NODE_SCALAR) {
        if (n->is_str || !plain_ok(n->str) || strchr(n->str, ':'))
            return -1;  /* quoted text could be long or escaped: keep it simple */
        /* in flow context "?x" reads as an explicit key; "-" is only safe
         * before a number */
        char c0 = n->str[0], c1 = n->str[1];
        if (c0 == '?' || (c0 == '-' && !((c1 >= '0' && c1 <= '9') || c1 == '.')))
            return -1;
        size_t len = strlen(n->str);
        return len > FLOW_MAX ? -1 : (long)len;
    }
    if (n->type != QD_NODE_SEQ || depth > 3)
        return -1;
    long total = 2;
    for (size_t i = 0; i < n->len; i++) {
        long l = flow_len(n->items[i], depth + 1);
        if (l < 0)
            return -1;
        total += l + (i ? 2 : 0);
        if (total > FLOW_MAX)
            return -1;
    }
    return total;
}

static void emit_flow(qd_strbuf *b, const qd_node *n)
{
    if (n->type != QD_NODE_SEQ) {
        emit_scalar(b, n);
        return;
    }
    qd__sb_puts(b, "[");
    for (size_t i = 0; i < n->len; i++) {
        if (i)
            qd__sb_puts(b, ", ");
        emit_flow(b, n->items[i]);
    }
    qd__sb_puts(b, "]");
}

static int is_block(const qd_node *n)
{
    return (n->type == QD_NODE_MAP || n->type == QD_NODE_SEQ) && n->len > 0 &&
           !(n->type == QD_NODE_SEQ && flow_len(n, 0) >= 0);
}

static void emit_inline(qd_strbuf *b, const qd_node *n)
{
    if (n->type == QD_NODE_MAP)
        qd__sb_puts(b, "{}");
    else
        emit_flow(b, n);
}

typedef struct emitter {
    qd_strbuf *b;
    qd__emit_hook hook;
    void *ctx;
} emitter;

static void emit_seq(emitter *e, const qd_node *n, int indent, int first_inline);

/* A non-empty mapping at `indent`; with first_inline the first key goes on
 * the current line (after "- "). */
static void emit_map(emitter *e, const qd_node *n, int indent, int first_inline)
{
    qd_strbuf *b = e->b;
    for (size_t i = 0; i < n->len; i++) {
        if (i > 0 || !first_inline)
            qd__sb_indent(b, indent);
        emit_key(b, n->keys[i]->str, indent);
        const qd_node *v = n->items[i];
        if (!is_block(v)) {
            qd__sb_puts(b, ": ");
            emit_inline(b, v);
            qd__sb_puts(b, "\n");
        } else if (v->type == QD_NODE_MAP) {
            qd__sb_puts(b, ":\n");
            emit_map(e, v, indent + 2, 0);
        } else {
            qd__sb_puts(b, ":\n");
            emit_seq(e, v, indent + 2, 0);
        }
    }
    if (e->hook)
        e->hook(b, n, indent, e->ctx);
}

static void emit_seq(emitter *e, const qd_node *n, int indent, int first_inline)
{
    qd_strbuf *b = e->b;
    for (size_t i = 0; i < n->len; i++) {
        if (i > 0 || !first_inline)
            qd__sb_indent(b, indent);
        const qd_node *v = n->items[i];
        if (!is_block(v)) {
            qd__sb_puts(b, "- ");
            emit_inline(b, v);
            qd__sb_puts(b, "\n");
        } else if (v->type == QD_NODE_MAP) {
            qd__sb_puts(b, "- ");
            emit_map(e, v, indent + 2, 1);
        } else {
            qd__sb_puts(b, "- ");
            emit_seq(e, v, indent + 2, 1);
        }
    }
}

char *qd__to_yaml_hook(const qd_node *n, qd__emit_hook hook, void *ctx)
{
    qd_strbuf b = {0};
    emitter e = {&b, hook, ctx};
    if (!n) {
        qd__sb_puts(&b, "null\n");
    } else if (n->type == QD_NODE_MAP && n->len) {
        emit_map(&e, n, 0, 0);
    } else if (n->type == QD_NODE_SEQ && n->len) {
        emit_seq(&e, n, 0, 0);
    } else {
        emit_inline(&b, n);
        qd__sb_puts(&b, "\n");
    }
    return qd__sb_take(&b);
}

char *qd_config_to_yaml(const qd_node *n)
{
    return qd__to_yaml_hook(n, NULL, NULL);
}
