/*
 * Experiment manifests: load + command-line overrides + merging of the
 * top-level quantum sections into the model's quantum layers, validation of
 * every section against its schema, and defaults.
 *
 * Order matters and is fixed: overrides are applied to the tree as loaded,
 * then the top-level encoder/ansatz/observable/simulator sections are merged
 * into the quantum layers, so `observable.trainable=false` reaches every
 * layer; validation then sees the final tree, and every problem points at
 * the text that caused it (a merged key at its line in the manifest, an
 * override at "<command line>:N:1").
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_internal.h"
#include "qdistill/manifest.h"
#include "qdistill/model.h"
#include "qdistill/run.h"

#define DEFAULT_ORIGIN "<default>"

/* A plugin section and the schemas whose defaults it takes but does not
 * hold: the resolved YAML lists those defaults as comments. */
typedef struct annotation {
    const qd_node *map;
    const qd_param *schema, *core;
} annotation;

struct qd_manifest {
    qd_config *cfg;
    char *path;
    char *dir;
    annotation *ann;
    size_t n_ann, cap_ann;
};

static const char *const quantum_sections[] = {"encoder", "ansatz", "observable",
                                               "simulator"};
static const int quantum_kinds[] = {QD_KIND_ENCODER, QD_KIND_ANSATZ, QD_KIND_OBSERVABLE,
                                    QD_KIND_SIMULATOR};
#define N_QSECT 4

static const qd_param model_schema[] = {
    {"layers", QD_PARAM_LIST, QD_PARAM_REQUIRED | QD_PARAM_HAS_MIN, NULL, 1, 0, NULL,
     QD_PARAM_MAP, NULL, "the layers, in order: [{type: conv2d, ...}, ...]"},
    {"name", QD_PARAM_STRING, 0, NULL, 0, 0, NULL, 0, NULL, "model name"},
    {NULL, 0, 0, NULL, 0, 0, NULL, 0, NULL, NULL}};

/* ------------------------------------------------------------------------
 * Overrides
 * ---------------------------------------------------------------------- */

static int utf8_ok(const unsigned char *s)
{
    while (*s) {
        unsigned char c = *s;
        size_t len = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
                   : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        if (!len)
            return 0;
        for (size_t k = 1; k < len; k++)
            if ((s[k] & 0xC0) != 0x80)
                return 0;
        s += len;
    }
    return 1;
}

int qd_override_parse(const char *text, char **path, char **value, qd_error *err)
{
    if (path)
        *path = NULL;
    if (value)
        *value = NULL;
    if (!text || !path || !value)
        return qd_error_set(err, QD_ERR_INVALID, "qd_override_parse: NULL argument");
    char q[QD_QUOTE_MAX];
    qd__quote(text, q);
    const char *eq = strchr(text, '=');
    if (!eq)
        return qd_error_set(err, QD_ERR_INVALID,
                            "override '%s' has no '=' (write key.path=value, e.g. "
                            "train.lr=0.05)",
                            q);
    size_t plen = (size_t)(eq - text);
    if (plen == 0)
        return qd_error_set(err, QD_ERR_INVALID,
                            "override '%s' has an empty key path (write key.path=value)", q);
    if (!utf8_ok((const unsigned char *)text))
        return qd_error_set(err, QD_ERR_INVALID, "override '%s' is not valid UTF-8 text", q);
    if (plen > 1024)
        return qd_error_set(err, QD_ERR_INVALID, "override '%s': the key path is too long", q);
    for (size_t i = 0; i < plen; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c <= ' ' || c == 0x7F)
            return qd_error_set(err, QD_ERR_INVALID,
                                "override '%s': the key path contains %s", q,
                                c == ' ' ? "a space" : "a control character");
        if (c == '.' && (i == 0 || i + 1 == plen || text[i + 1] == '.'))
            return qd_error_set(err, QD_ERR_INVALID,
                                "override '%s': the key path has an empty component (write "
                                "a.b.c)",
                                q);
        if (strchr("[]{}#&*!|>'\"%@`,:", c))
            return qd_error_set(err, QD_ERR_INVALID,
                                "override '%s': '%c' cannot appear in a key path (write "
                                "a.b.0.c or a.layers.NAME.c)",
                                q, c);
    }
    *path = malloc(plen + 1);
    *value = strdup(eq + 1);
    if (!*path || !*value) {
        free(*path);
        free(*value);
        *path = *value = NULL;
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    }
    memcpy(*path, text, plen);
    (*path)[plen] = '\0';
    return QD_OK;
}

/* ------------------------------------------------------------------------
 * Quantum-section merge
 * ---------------------------------------------------------------------- */

static int is_quantum_layer(const qd_node *layer)
{
    const char *t = qd_node_str(qd_node_get(layer, "type"));
    return layer && layer->type == QD_NODE_MAP && t && strcmp(t, "quantum") == 0;
}

static const qd_node *model_layers(const qd_node *root)
{
    const qd_node *layers = qd_node_get(qd_node_get(root, "model"), "layers");
    return layers && layers->type == QD_NODE_SEQ ? layers : NULL;
}

/* Merge the top-level section S over the S section of every quantum layer:
 * keys of the top-level section win; another `plugin` replaces the layer's
 * section whole (its other keys belong to the old plugin). */
static int merge_quantum(qd_config *cfg, qd_error *err)
{
    qd_node *root = cfg->root;
    const qd_node *layers = model_layers(root);
    if (!layers)
        return QD_OK;
    for (size_t s = 0; s < N_QSECT; s++) {
        long ti = qd__map_find(root, quantum_sections[s]);
        if (ti < 0 || root->items[ti]->type != QD_NODE_MAP)
            continue;
        const qd_node *top = root->items[ti];
        for (size_t i = 0; i < layers->len; i++) {
            qd_node *layer = layers->items[i];
            if (!is_quantum_layer(layer))
                continue;
            qd_node *copy = qd__node_copy(cfg, top);
            if (!copy)
                return qd_error_set(err, QD_ERR_NOMEM, "out of memory merging sections");
            long li = qd__map_find(layer, quantum_sections[s]);
            if (li < 0) {
                qd_node *key = qd__node_copy(cfg, root->keys[ti]);
                if (!key || qd__map_push(layer, key, copy))
                    return qd_error_set(err, QD_ERR_NOMEM, "out of memory merging sections");
                continue;
            }
            qd_node *sec = layer->items[li];
            if (sec->type == QD_NODE_NULL) {
                layer->items[li] = copy;
            } else if (sec->type == QD_NODE_MAP) {
                const char *tp = qd_node_str(qd_node_get(top, "plugin"));
                const char *lp = qd_node_str(qd_node_get(sec, "plugin"));
                if (tp && lp && strcmp(tp, lp) != 0)
                    layer->items[li] = copy;
                else if (qd__map_merge(sec, copy))
                    return qd_error_set(err, QD_ERR_NOMEM, "out of memory merging sections");
            }
            /* a scalar or list section is left for validation to report */
        }
    }
    return QD_OK;
}

/* ------------------------------------------------------------------------
 * Loading
 * ---------------------------------------------------------------------- */

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

int qd_manifest_load(const char *path, const char *const *overrides, size_t n_overrides,
                     qd_manifest **out, qd_error *err)
{
    if (!out)
        return qd_error_set(err, QD_ERR_INVALID, "qd_manifest_load: out is NULL");
    *out = NULL;
    if (n_overrides && !overrides)
        return qd_error_set(err, QD_ERR_INVALID, "qd_manifest_load: overrides is NULL");
    qd_config *cfg = NULL;
    int rc = qd_config_load(path, NULL, &cfg, err);
    if (rc)
        return rc;
    for (size_t i = 0; i < n_overrides; i++) {
        char *p = NULL, *v = NULL;
        rc = qd_override_parse(overrides[i], &p, &v, err);
        if (rc) {
            qd_error_prefix(err, "<command line>:%zu:1", i + 1);
        } else {
            char origin[64];
            snprintf(origin, sizeof origin, "<command line>:%zu:1", i + 1);
            rc = qd_config_set(cfg, p, v, origin, err);
        }
        free(p);
        free(v);
        if (rc) {
            qd_config_destroy(cfg);
            return rc;
        }
    }
    if ((rc = merge_quantum(cfg, err))) {
        qd_config_destroy(cfg);
        return rc;
    }
    qd_manifest *m = calloc(1, sizeof *m);
    if (m) {
        m->cfg = cfg;
        m->path = strdup(path);
        m->dir = dir_of(path);
    }
    if (!m || !m->path || !m->dir) {
        qd_manifest_destroy(m);
        if (!m)
            qd_config_destroy(cfg);
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    }
    *out = m;
    return QD_OK;
}

void qd_manifest_destroy(qd_manifest *m)
{
    if (!m)
        return;
    qd_config_destroy(m->cfg);
    free(m->ann);
    free(m->path);
    free(m->dir);
    free(m);
}

/* ------------------------------------------------------------------------
 * Validation
 * ---------------------------------------------------------------------- */

/* Plugin names of a kind as a candidate array (malloc'd, may be empty). */
static const char **plugin_names(const qd_registry *reg, int kind, size_t *n)
{
    *n = 0;
    size_t total = reg ? qd_registry_count(reg) : 0;
    const char **names = malloc((total + 1) * sizeof *names);
    if (!names)
        return NULL;
    for (size_t i = 0; i < total; i++) {
        const qd_plugin_desc *d = qd_registry_at(reg, i, NULL);
        if (d && (int)d->kind == kind)
            names[(*n)++] = d->name;
    }
    return names;
}

/* "mnist, cifar10" or "none" (malloc'd). */
static char *available(const qd_registry *reg, int kind)
{
    char *s = reg ? qd_registry_names(reg, kind) : NULL;
    if (s && !s[0]) {
        free(s);
        s = NULL;
    }
    return s ? s : strdup("none");
}

/* A schema made of two (plugin params, then core keys), malloc'd. */
static qd_param *concat_schema(const qd_param *a, const qd_param *b)
{
    size_t na = 0, nb = 0;
    while (a && a[na].name)
        na++;
    while (b && b[nb].name)
        nb++;
    qd_param *s = calloc(na + nb + 1, sizeof *s);
    if (!s)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < na; i++)
        s[k++] = a[i];
    for (size_t i = 0; i < nb; i++)
        if (!qd_schema_find(a, b[i].name))
            s[k++] = b[i];
    return s;
}

/* Validate a plugin section of `kind` against the plugin's schema plus the
 * `core` keys (may be NULL). `section` names it ("dataset", "observable"),
 * ctx is appended in messages (" of layer 'q'"). Returns the number of
 * problems; *desc is the plugin found (or NULL). */
static size_t check_plugin_section(const qd_registry *reg, int kind, const qd_node *sec,
                                   const char *section, const char *ctx, const qd_param *core,
                                   qd_diags *d, const qd_plugin_desc **desc)
{
    *desc = NULL;
    const char *kn = qd_kind_name(kind);
    char q[QD_QUOTE_MAX], ds[QD_QUOTE_MAX];
    if (sec->type != QD_NODE_MAP && sec->type != QD_NODE_NULL) {
        qd_diags_add(d, sec, "the %s section%s must be a mapping {plugin: NAME, ...}, got %s",
                     section, ctx, qd__describe(sec, ds));
        return 1;
    }
    const qd_node *pn = qd_node_get(sec, "plugin");
    if (!pn || pn->type != QD_NODE_SCALAR) {
        char *av = available(reg, kind);
        if (!pn)
            qd_diags_add(d, sec, "missing required key 'plugin' in the %s section%s "
                         "(available %s plugins: %s)",
                         section, ctx, kn, av ? av : "?");
        else
            qd_diags_add(d, pn, "'plugin' in the %s section%s: expected a %s plugin name, "
                         "got %s (available: %s)",
                         section, ctx, kn, qd__describe(pn, ds), av ? av : "?");
        free(av);
        return 1;
    }
    const qd_plugin_desc *pd = reg ? qd_registry_find(reg, kind, pn->str) : NULL;
    if (!pd) {
        size_t n;
        const char **names = plugin_names(reg, kind, &n);
        const char *s = names ? qd_suggest(pn->str, names, n) : NULL;
        char *av = available(reg, kind);
        qd_diags_add(d, pn, "unknown %s plugin '%s'%s (%s%s%savailable: %s)%s", kn,
                     qd__quote(pn->str, q), ctx, s ? "did you mean '" : "", s ? s : "",
                     s ? "'? " : "", av ? av : "?", reg ? qd_registry_problem_note(reg) : "");
        free(av);
        free(names);
        return 1;
    }
    *desc = pd;
    char what[400];
    snprintf(what, sizeof what, "%s '%s'%s", kn, pd->name, ctx);
    static const char *const extra[] = {"plugin", NULL};
    if (!core)
        return qd_schema_validate(pd->params, sec, extra, what, d);
    qd_param *schema = concat_schema(pd->params, core);
    if (!schema) {
        qd_diags_add(d, sec, "out of memory validating %s", what);
        return 1;
    }
    size_t count = qd_schema_validate(schema, sec, extra, what, d);
    free(schema);
    return count;
}

/* subset/test_subset/validation: a count, or a fraction in (0, 1). */
static size_t check_counts(const qd_node *sec, const char *what, qd_diags *d)
{
    size_t count = 0;
    for (const qd_param *p = qd_dataset_core_schema(); p->name; p++) {
        const qd_node *v = qd_node_get(sec, p->name);
        long long i;
        double x;
        char msg[256];
        if (!v || qd__conv_int(v, &i, msg, sizeof msg) == 0 ||
            qd__conv_double(v, &x, msg, sizeof msg) != 0 || x < 0 || (x > 0 && x < 1))
            continue;  /* counts and fractions pass; type and sign errors are the schema's */
        char q[QD_QUOTE_MAX];
        qd_diags_add(d, v,
                     "'%s' in %s: %s is neither a sample count nor a fraction in (0, 1)",
                     p->name, what, qd__quote(v->str, q));
        count++;
    }
    return count;
}

/* Layer names must be unique: overrides and outputs address layers by name. */
static int cmp_name(const void *a, const void *b)
{
    const qd_node *x = *(const qd_node *const *)a, *y = *(const qd_node *const *)b;
    int c = strcmp(x->str, y->str);
    if (c)
        return c;
    return x->line != y->line ? (x->line < y->line ? -1 : 1)
                              : (x->col < y->col ? -1 : x->col > y->col);
}

static size_t check_layer_names(const qd_node *layers, qd_diags *d)
{
    const qd_node **names = malloc((layers->len + 1) * sizeof *names);
    if (!names)
        return 0;
    size_t n = 0, count = 0;
    for (size_t i = 0; i < layers->len; i++) {
        const qd_node *nm = qd_node_get(layers->items[i], "name");
        if (nm && nm->type == QD_NODE_SCALAR)
            names[n++] = nm;
    }
    qsort(names, n, sizeof *names, cmp_name);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(names[i]->str, names[i - 1]->str) != 0)
            continue;
        char q[QD_QUOTE_MAX];
        qd_diags_add(d, names[i], "duplicate layer name '%s' (also used at line %d, column %d)",
                     qd__quote(names[i]->str, q), names[i - 1]->line, names[i - 1]->col);
        count++;
    }
    free(names);
    return count;
}

static void layer_what(const qd_node *layer, size_t i, char *buf, size_t size)
{
    const char *nm = qd_node_str(qd_node_get(layer, "name"));
    char q[QD_QUOTE_MAX];
    if (nm)
        snprintf(buf, size, "layer '%s'", qd__quote(nm, q));
    else
        snprintf(buf, size, "layer %zu", i);
}

static size_t note_plugin(qd_manifest *m, const qd_node *sec, const qd_plugin_desc *pd,
                          const char *ctx, const qd_param *core, qd_diags *d);

static size_t check_model(qd_manifest *m, const qd_registry *reg, const qd_node *model,
                          qd_diags *d)
{
    size_t count = qd_schema_validate(model_schema, model, NULL, "model", d);
    const qd_node *layers = qd_node_get(model, "layers");
    if (!layers || layers->type != QD_NODE_SEQ)
        return count;
    count += check_layer_names(layers, d);
    for (size_t i = 0; i < layers->len; i++) {
        const qd_node *layer = layers->items[i];
        if (layer->type != QD_NODE_MAP)
            continue;  /* reported by the model schema */
        char what[200];
        layer_what(layer, i, what, sizeof what);
        const qd_node *tn = qd_node_get(layer, "type");
        const char *type = qd_node_str(tn);
        const qd_param *schema = type ? qd_layer_schema(type) : NULL;
        if (!schema) {
            const char *types[64];
            size_t nt = qd_layer_type_count();
            if (nt > 64)
                nt = 64;
            qd_strbuf b = {0};
            for (size_t k = 0; k < nt; k++) {
                types[k] = qd_layer_type_name(k);
                qd__sb_printf(&b, "%s%s", k ? ", " : "", types[k]);
            }
            char *list = qd__sb_take(&b);
            char q[QD_QUOTE_MAX], ds[QD_QUOTE_MAX];
            if (!tn) {
                qd_diags_add(d, layer, "missing required key 'type' in %s (types: %s)", what,
                             list ? list : "?");
            } else if (!type) {
                qd_diags_add(d, tn, "'type' in %s: expected a layer type, got %s (types: %s)",
                             what, qd__describe(tn, ds), list ? list : "?");
            } else {
                const char *s = qd_suggest(type, types, nt);
                qd_diags_add(d, tn, "unknown layer type '%s' in %s (%s%s%stypes: %s)",
                             qd__quote(type, q), what, s ? "did you mean '" : "", s ? s : "",
                             s ? "'? " : "", list ? list : "?");
            }
            free(list);
            count++;
            continue;
        }
        count += qd_schema_validate(schema, layer, NULL, what, d);
        if (strcmp(type, "quantum") != 0)
            continue;
        char ctx[220];
        snprintf(ctx, sizeof ctx, " of %s", what);
        for (size_t s = 0; s < N_QSECT; s++) {
            const qd_node *sec = qd_node_get(layer, quantum_sections[s]);
            const qd_plugin_desc *pd;
            /* the layer schema reports sections that are not mappings */
            if (sec && (sec->type == QD_NODE_MAP || sec->type == QD_NODE_NULL)) {
                count += check_plugin_section(reg, quantum_kinds[s], sec, quantum_sections[s],
                                              ctx, NULL, d, &pd);
                if (pd)
                    count += note_plugin(m, sec, pd, ctx, NULL, d);
            }
        }
    }
    return count;
}

/* ------------------------------------------------------------------------
 * Defaults
 *
 * Core sections (top level, train, evaluate, the dataset core keys) and
 * layer parameters get their defaults written into the tree, located
 * "<default>", so the resolved manifest states every value the core uses.
 * Plugin sections do not: a plugin reads its defaults through the host, and
 * host->has() tells it whether the user gave a key, which a filled-in default
 * would fake. Their defaults appear as comments in the resolved YAML, so
 * re-loading it gives the same configuration.
 * ---------------------------------------------------------------------- */

/* Add the default of every parameter of `schema` missing from mapping sec
 * (recursively into MAP and LIST-of-MAP fields). A default that does not
 * parse or does not fit its own parameter is a bug in the schema, reported. */
static size_t fill(qd_config *cfg, const qd_param *schema, qd_node *sec, const char *what,
                   qd_diags *d, int depth)
{
    size_t count = 0;
    if (!sec || sec->type != QD_NODE_MAP || depth > 16)
        return 0;
    const char *origin = qd__intern(cfg, DEFAULT_ORIGIN);
    if (!origin)
        return 0;
    for (const qd_param *p = schema; p && p->name; p++) {
        long i = qd__map_find(sec, p->name);
        if (i < 0 && p->def) {
            qd_parse_opts o = {origin, NULL, 0, 0, 0};
            qd_node *v = NULL;
            qd_error e;
            qd_error_clear(&e);
            char q[QD_QUOTE_MAX];
            if (qd__parse_value(cfg, p->def, strlen(p->def), &o, &v, &e) != QD_OK) {
                qd_diags_add(d, NULL, "%s (the default '%s' of '%s' in %s: a bug in its schema)",
                             e.msg, qd__quote(p->def, q), p->name, what ? what : "the manifest");
                count += 1;
                continue;
            }
            qd__relocate(v, origin, 0, 0);
            size_t bad = qd__check_param(p, v, what, d);
            if (bad) {
                count += bad;
                continue;
            }
            qd_node *key = qd__node_new(cfg, QD_NODE_SCALAR, origin, 0, 0);
            if (!key || qd__node_set_str(key, p->name, strlen(p->name)) ||
                qd__map_push(sec, key, v))
                return count;
            i = (long)sec->len - 1;
        }
        if (i < 0 || !p->fields)
            continue;
        qd_node *v = sec->items[i];
        char sub[400];
        snprintf(sub, sizeof sub, "%s%s%s", what ? what : "", what ? "." : "", p->name);
        if (p->type == QD_PARAM_MAP)
            count += fill(cfg, p->fields, v, sub, d, depth + 1);
        else if (p->type == QD_PARAM_LIST && p->elem == QD_PARAM_MAP && v->type == QD_NODE_SEQ)
            for (size_t k = 0; k < v->len; k++)
                count += fill(cfg, p->fields, v->items[k], sub, d, depth + 1);
    }
    return count;
}

/* A section given as null (`train:`) means "all defaults": make it an
 * empty mapping to fill. Absent sections stay absent (their absence can
 * mean something, e.g. no `distill` = plain training). */
static qd_node *section_to_fill(qd_config *cfg, qd_node *root, const char *key)
{
    long i = qd__map_find(root, key);
    if (i < 0)
        return NULL;
    qd_node *v = root->items[i];
    if (v->type == QD_NODE_NULL) {
        qd_node *m = qd__node_new(cfg, QD_NODE_MAP, v->file, v->line, v->col);
        if (m)
            root->items[i] = m;
        return m;
    }
    return v->type == QD_NODE_MAP ? v : NULL;
}

/* Check the defaults of a plugin schema (a bug there would otherwise only
 * surface when the plugin reads them) and remember the section for the
 * commented defaults of the resolved YAML. */
static size_t note_plugin(qd_manifest *m, const qd_node *sec, const qd_plugin_desc *pd,
                          const char *ctx, const qd_param *core, qd_diags *d)
{
    size_t count = 0;
    char what[400];
    snprintf(what, sizeof what, "%s '%s'%s", qd_kind_name((int)pd->kind), pd->name, ctx);
    const char *origin = qd__intern(m->cfg, DEFAULT_ORIGIN);
    for (const qd_param *p = pd->params; origin && p && p->name; p++) {
        if (!p->def || qd__map_find(sec, p->name) >= 0)
            continue;
        qd_parse_opts o = {origin, NULL, 0, 0, 0};
        qd_node *v = NULL;
        qd_error e;
        char q[QD_QUOTE_MAX];
        qd_error_clear(&e);
        if (qd__parse_value(m->cfg, p->def, strlen(p->def), &o, &v, &e) != QD_OK) {
            qd_diags_add(d, NULL, "%s (the default '%s' of '%s' in %s: a bug in its schema)",
                         e.msg, qd__quote(p->def, q), p->name, what);
            count++;
            continue;
        }
        qd__relocate(v, origin, 0, 0);
        count += qd__check_param(p, v, what, d);
    }
    if (m->n_ann == m->cap_ann) {
        size_t cap = m->cap_ann ? 2 * m->cap_ann : 8;
        annotation *a = realloc(m->ann, cap * sizeof *a);
        if (!a)
            return count;
        m->ann = a;
        m->cap_ann = cap;
    }
    m->ann[m->n_ann++] = (annotation){sec, pd->params, core};
    return count;
}

static size_t fill_defaults(qd_manifest *m, qd_diags *d)
{
    qd_config *cfg = m->cfg;
    qd_node *root = cfg->root;
    size_t count = fill(cfg, qd_manifest_top_schema(), root, NULL, d, 0);
    count += fill(cfg, qd_train_schema(), section_to_fill(cfg, root, "train"), "train", d, 0);
    count += fill(cfg, qd_evaluate_schema(), section_to_fill(cfg, root, "evaluate"), "evaluate",
                  d, 0);
    qd_node *ds = (qd_node *)qd_node_get(root, "dataset");
    if (ds && ds->type == QD_NODE_MAP && qd_node_str(qd_node_get(ds, "plugin")))
        count += fill(cfg, qd_dataset_core_schema(), ds, "dataset", d, 0);
    const qd_node *layers = model_layers(root);
    for (size_t i = 0; layers && i < layers->len; i++) {
        qd_node *layer = layers->items[i];
        const char *type = qd_node_str(qd_node_get(layer, "type"));
        const qd_param *schema = type ? qd_layer_schema(type) : NULL;
        if (!schema || layer->type != QD_NODE_MAP)
            continue;
        char what[200];
        layer_what(layer, i, what, sizeof what);
        count += fill(cfg, schema, layer, what, d, 0);
    }
    return count;
}

/* Resolved-YAML hook: after the keys of an annotated plugin section, its
 * defaults as comment lines. */
static void default_comments(qd_strbuf *b, const qd_node *map, int indent, void *ctx)
{
    const qd_manifest *m = ctx;
    for (size_t i = 0; i < m->n_ann; i++) {
        if (m->ann[i].map != map)
            continue;
        const qd_param *schemas[2] = {m->ann[i].schema, m->ann[i].core};
        for (int s = 0; s < 2; s++)
            for (const qd_param *p = schemas[s]; p && p->name; p++) {
                if (!p->def || qd__map_find(map, p->name) >= 0 ||
                    (s == 1 && qd_schema_find(schemas[0], p->name)))
                    continue;
                qd__sb_indent(b, indent);
                qd__sb_printf(b, "# %s: ", p->name);
                for (const char *c = p->def; *c; c++)
                    qd__sb_add(b, *c == '\n' || *c == '\r' ? " " : c, 1);
                qd__sb_puts(b, "  (default)\n");
            }
        return;
    }
}

/* A distillation that needs the validation split and has none would fail
 * only when it gets there, after the distilling: say so up front. Values of
 * the wrong type were reported by the schemas. */
static size_t check_validation_split(const qd_node *root, qd_diags *diags)
{
    const qd_node *distill = qd_node_get(root, "distill");
    if (!distill || distill->type != QD_NODE_MAP)
        return 0;
    const qd_node *vn = qd_node_path(root, "dataset.validation");
    double v = 0.0;
    if (vn && qd_node_as_double(vn, &v, NULL) != QD_OK)
        return 0;
    if (v > 0.0)
        return 0;
    size_t count = 0;
    const qd_node *every = qd_node_get(distill, "validate_every");
    double e = 0.0;
    if (every && qd_node_as_double(every, &e, NULL) == QD_OK && e > 0.0) {
        qd_diags_add(diags, every,
                     "'validate_every' in distill needs a validation split: set "
                     "dataset.validation (e.g. 5000)");
        count++;
    }
    const qd_node *ev = qd_node_get(root, "evaluate");
    const qd_node *bn = ev && ev->type == QD_NODE_MAP ? qd_node_get(ev, "baselines") : NULL;
    int baselines = 1;
    if (bn && qd_node_as_bool(bn, &baselines, NULL) != QD_OK)
        return count;
    if (baselines) {
        long di = qd__map_find(root, "distill");
        qd_diags_add(diags, bn ? bn : (vn ? vn : root->keys[di]),
                     "the evaluation's random-subset baseline%s tunes its learning rate on "
                     "a validation split, and dataset.validation is 0: set it (e.g. 5000) "
                     "or evaluate.baselines: false",
                     bn ? "" : " (evaluate.baselines, default true)");
        count++;
    }
    return count;
}

size_t qd_manifest_validate(qd_manifest *m, const qd_registry *reg, qd_diags *diags)
{
    if (!m || !m->cfg || !m->cfg->root) {
        qd_diags_add(diags, NULL, "no manifest to validate");
        return 1;
    }
    qd_node *root = m->cfg->root;
    m->n_ann = 0;
    size_t count = qd_schema_validate(qd_manifest_top_schema(), root, NULL, NULL, diags);

    const qd_node *sec;
    if ((sec = qd_node_get(root, "train")) && (sec->type == QD_NODE_MAP)) {
        count += qd_schema_validate(qd_train_schema(), sec, NULL, "train", diags);
        const qd_node *lr = qd_node_get(sec, "lr");
        double x;
        char msg[256], q[QD_QUOTE_MAX];
        if (lr && qd__conv_double(lr, &x, msg, sizeof msg) == 0 && !(x > 0)) {
            qd_diags_add(diags, lr, "'lr' in train: %s is out of range (must be > 0)",
                         qd__quote(lr->str, q));
            count++;
        }
    }
    if ((sec = qd_node_get(root, "evaluate")) && sec->type == QD_NODE_MAP)
        count += qd_schema_validate(qd_evaluate_schema(), sec, NULL, "evaluate", diags);

    const qd_plugin_desc *pd;
    /* sections that are not mappings were reported by the top-level check */
    if ((sec = qd_node_get(root, "dataset")) &&
        (sec->type == QD_NODE_MAP || sec->type == QD_NODE_NULL)) {
        count += check_plugin_section(reg, QD_KIND_DATASET, sec, "dataset", "",
                                      qd_dataset_core_schema(), diags, &pd);
        if (pd) {
            char what[200];
            snprintf(what, sizeof what, "dataset '%s'", pd->name);
            count += check_counts(sec, what, diags);
            count += note_plugin(m, sec, pd, "", NULL, diags);
        }
    }
    if ((sec = qd_node_get(root, "distill")) &&
        (sec->type == QD_NODE_MAP || sec->type == QD_NODE_NULL)) {
        count += check_plugin_section(reg, QD_KIND_DISTILLER, sec, "distill", "",
                                      qd_distill_core_schema(), diags, &pd);
        if (pd)
            count += note_plugin(m, sec, pd, "", qd_distill_core_schema(), diags);
    }

    const qd_node *model = qd_node_get(root, "model");
    if (model && (model->type == QD_NODE_MAP || model->type == QD_NODE_NULL))
        count += check_model(m, reg, model, diags);

    /* a top-level quantum section with no quantum layer to go to would be
     * silently ignored: say so */
    const qd_node *layers = model_layers(root);
    int has_quantum = 0;
    for (size_t i = 0; layers && i < layers->len; i++)
        has_quantum |= is_quantum_layer(layers->items[i]);
    for (size_t s = 0; layers && !has_quantum && s < N_QSECT; s++) {
        long i = qd__map_find(root, quantum_sections[s]);
        if (i >= 0 && root->items[i]->type == QD_NODE_MAP) {
            qd_diags_add(diags, root->keys[i],
                         "the top-level '%s' section has no effect: the model has no quantum "
                         "layer",
                         quantum_sections[s]);
            count++;
        }
    }

    count += check_validation_split(root, diags);
    count += fill_defaults(m, diags);
    return count;
}

/* ------------------------------------------------------------------------
 * Accessors
 * ---------------------------------------------------------------------- */

const qd_node *qd_manifest_root(const qd_manifest *m)
{
    return m ? m->cfg->root : NULL;
}

const char *qd_manifest_path(const qd_manifest *m)
{
    return m ? m->path : NULL;
}

const char *qd_manifest_dir(const qd_manifest *m)
{
    return m ? m->dir : NULL;
}

const char *qd_manifest_name(const qd_manifest *m)
{
    return m ? qd_node_str(qd_node_get(m->cfg->root, "name")) : NULL;
}

uint64_t qd_manifest_seed(const qd_manifest *m)
{
    long long v;
    char msg[256];
    const qd_node *n = m ? qd_node_get(m->cfg->root, "seed") : NULL;
    if (!n || qd__conv_int(n, &v, msg, sizeof msg) || v < 0)
        return 1;
    return (uint64_t)v;
}

int qd_manifest_threads(const qd_manifest *m)
{
    long long v;
    char msg[256];
    const qd_node *n = m ? qd_node_get(m->cfg->root, "threads") : NULL;
    if (!n || qd__conv_int(n, &v, msg, sizeof msg) || v < 0 || v > 1 << 20)
        return 0;
    return (int)v;
}

const qd_node *qd_manifest_section(const qd_manifest *m, const char *key)
{
    return m ? qd_node_get(m->cfg->root, key) : NULL;
}

char *qd_manifest_to_yaml(const qd_manifest *m)
{
    return m ? qd__to_yaml_hook(m->cfg->root, default_comments, (void *)m) : NULL;
}
