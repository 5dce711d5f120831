/* Plugin instances: schema validation, the host API handed to create(), and
 * error capture. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/log.h"
#include "qdistill/manifest.h"
#include "qdistill/run.h"
#include "qdistill/registry.h"
#include "qdistill/schema.h"

/* A parsed default for a non-scalar parameter ("[0.5, 0.5]"). */
typedef struct parsed_default {
    const char *key;
    qd_config *cfg;
} parsed_default;

struct qd_instance {
    const qd_plugin_desc *desc;
    void *self;
    qd_host host;
    qd_rng rng;
    char *base_dir;
    volatile int *stop;
    char prefix[160];            /* "observable 'hermitian'" */
    qd_error err;                /* last error recorded by the plugin */
    int has_err;
    parsed_default *defaults;
    size_t n_defaults;
};

static qd_instance *of(const qd_host *h)
{
    return (qd_instance *)h->internal;
}

static const qd_param *param_of(qd_instance *in, const char *key)
{
    return in->desc->params ? qd_schema_find(in->desc->params, key) : NULL;
}

static void record(qd_instance *in, int code, const char *msg)
{
    in->has_err = 1;
    in->err.code = code;
    size_t n = strlen(msg);
    if (n >= sizeof in->err.msg)
        n = sizeof in->err.msg - 1;   /* truncate long messages, keep one line */
    memcpy(in->err.msg, msg, n);
    in->err.msg[n] = '\0';
}

/* A getter asked for a key the schema lacks: a plugin bug, reported once. */
static void bad_key(qd_instance *in, const char *key, const char *getter)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s: %s('%s') reads a key its schema does not declare",
             in->prefix, getter, key);
    if (!in->has_err)
        record(in, QD_ERR_INTERNAL, msg);
    qd_log(QD_LOG_ERROR, "%s", msg);
}

/* The value node for key: given explicitly, or the schema default parsed as
 * YAML (kept for the instance's lifetime). NULL when neither exists. */
static const qd_node *value_node(qd_instance *in, const char *key, const char *getter)
{
    const qd_param *p = param_of(in, key);
    if (!p) {
        bad_key(in, key, getter);
        return NULL;
    }
    const qd_node *n = qd_node_get(in->host.config, key);
    if (n)
        return n;
    if (!p->def)
        return NULL;
    for (size_t i = 0; i < in->n_defaults; ++i)
        if (strcmp(in->defaults[i].key, key) == 0)
            return qd_config_root(in->defaults[i].cfg);
    qd_config *cfg = NULL;
    char name[200];
    snprintf(name, sizeof name, "<default of %s.%s>", in->desc->name, key);
    if (qd_config_load_string(p->def, strlen(p->def), name, NULL, &cfg, NULL) != QD_OK)
        return NULL;
    parsed_default *d = realloc(in->defaults, (in->n_defaults + 1) * sizeof *d);
    if (!d) {
        qd_config_destroy(cfg);
        return NULL;
    }
    in->defaults = d;
    d[in->n_defaults].key = p->name;
    d[in->n_defaults].cfg = cfg;
    in->n_defaults++;
    return qd_config_root(cfg);
}

static int h_get_bool(const qd_host *h, const char *key)
{
    int v = 0;
    qd_node_as_bool(value_node(of(h), key, "get_bool"), &v, NULL);
    return v;
}

static long long h_get_int(const qd_host *h, const char *key)
{
    long long v = 0;
    qd_node_as_int(value_node(of(h), key, "get_int"), &v, NULL);
    return v;
}

static double h_get_double(const qd_host *h, const char *key)
{
    double v = 0.0;
    qd_node_as_double(value_node(of(h), key, "get_double"), &v, NULL);
    return v;
}

static const char *h_get_string(const qd_host *h, const char *key)
{
    return qd_node_str(value_node(of(h), key, "get_string"));
}

static const qd_node *h_get_node(const qd_host *h, const char *key)
{
    return value_node(of(h), key, "get_node");
}

static int h_has(const qd_host *h, const char *key)
{
    return qd_node_get(h->config, key) != NULL;
}

static void h_log(const qd_host *h, int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    qd_logv(level, of(h)->prefix, fmt, ap);
    va_end(ap);
}

static int h_error(const qd_host *h, int code, const char *fmt, ...)
{
    qd_instance *in = of(h);
    char body[QD_ERROR_MSG_MAX], msg[QD_ERROR_MSG_MAX + 200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    snprintf(msg, sizeof msg, "%s: %s", in->prefix, body);
    record(in, code ? code : QD_ERR_PLUGIN, msg);
    return code;
}

static int h_node_error(const qd_host *h, const qd_node *n, int code, const char *fmt, ...)
{
    qd_instance *in = of(h);
    char body[QD_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    qd_error e;
    qd_node_error(n ? n : h->config, &e, code, "%s: %s", in->prefix, body);
    record(in, code ? code : QD_ERR_PLUGIN, e.msg);
    return code;
}

static qd_rng *h_rng(const qd_host *h)
{
    return &of(h)->rng;
}

static char *h_resolve_path(const qd_host *h, const char *path)
{
    qd_instance *in = of(h);
    if (!path)
        return NULL;
    if (path[0] == '/' || !in->base_dir || !in->base_dir[0])
        return strdup(path);
    size_t len = strlen(in->base_dir) + strlen(path) + 2;
    char *s = malloc(len);
    if (s)
        snprintf(s, len, "%s/%s", in->base_dir, path);
    return s;
}

static int h_should_stop(const qd_host *h)
{
    volatile int *s = of(h)->stop;
    return s ? *s : 0;
}

/* Keys the core handles for a kind besides `plugin`: the names of the core
 * schema of that kind's section (dataset, distill), so they are declared in
 * one place. keys has room for max entries plus the NULL terminator. */
static void core_keys(int kind, const char **keys, size_t max)
{
    size_t n = 0;
    keys[n++] = "plugin";
    const qd_param *core = kind == QD_KIND_DATASET     ? qd_dataset_core_schema()
                           : kind == QD_KIND_DISTILLER ? qd_distill_core_schema()
                                                       : NULL;
    for (; core && core->name && n < max; ++core)
        keys[n++] = core->name;
    keys[n] = NULL;
}

int qd_instance_create(const qd_registry *reg, int kind, const qd_node *section,
                       const qd_instance_opts *opts, qd_instance **out, qd_error *err)
{
    *out = NULL;
    const char *kn = qd_kind_name(kind);
    if (!kn)
        return qd_error_set(err, QD_ERR_INVALID, "unknown plugin kind %d", kind);
    if (!section || qd_node_kind(section) != QD_NODE_MAP)
        return qd_node_error(section, err, QD_ERR_MANIFEST,
                             "%s section must be a mapping with a 'plugin' key", kn);
    const qd_node *pn = qd_node_get(section, "plugin");
    const char *name = qd_node_str(pn);
    if (!name)
        return qd_node_error(pn ? pn : section, err, QD_ERR_MANIFEST,
                             "%s section needs 'plugin: NAME'", kn);
    const qd_plugin_desc *d = qd_registry_find(reg, kind, name);
    if (!d) {
        char *names = qd_registry_names(reg, kind);
        qd_node_error(pn, err, QD_ERR_MANIFEST, "unknown %s plugin '%s' (available: %s)%s", kn,
                      name, names && names[0] ? names : "none", qd_registry_problem_note(reg));
        free(names);
        return QD_ERR_MANIFEST;
    }
    char what[160];
    snprintf(what, sizeof what, "%s '%s'", kn, d->name);
    if (d->params) {
        qd_diags diags = {0};
        const char *keys[33];
        core_keys(kind, keys, 32);
        if (qd_schema_validate(d->params, section, keys, what, &diags) > 0) {
            char *all = qd_diags_join(&diags);
            qd_error_set(err, QD_ERR_MANIFEST, "%s", all ? all : "invalid configuration");
            free(all);
            qd_diags_free(&diags);
            return QD_ERR_MANIFEST;
        }
        qd_diags_free(&diags);
    }

    qd_instance *in = calloc(1, sizeof *in);
    if (!in)
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory creating %s", what);
    in->desc = d;
    snprintf(in->prefix, sizeof in->prefix, "%s", what);
    qd_instance_opts o = {0};
    if (opts)
        o = *opts;
    qd_rng_derive(&in->rng, o.seed, o.stream ? o.stream : kn);
    in->base_dir = o.base_dir ? strdup(o.base_dir) : NULL;
    in->stop = o.stop_flag;
    qd_host *h = &in->host;
    h->abi_version = QD_ABI_VERSION;
    h->struct_size = sizeof *h;
    h->config = section;
    h->get_bool = h_get_bool;
    h->get_int = h_get_int;
    h->get_double = h_get_double;
    h->get_string = h_get_string;
    h->get_node = h_get_node;
    h->has = h_has;
    h->log = h_log;
    h->error = h_error;
    h->node_error = h_node_error;
    h->rng = h_rng;
    h->threads = o.threads;
    h->resolve_path = h_resolve_path;
    h->should_stop = h_should_stop;
    h->internal = in;

    const struct { uint32_t size; int (*create)(const qd_host *, void **); } *vt = d->vtable;
    int rc = vt->create(h, &in->self);
    if (rc != QD_OK || !in->self) {
        if (rc == QD_OK) {
            /* a plugin bug: name the file it came from */
            const char *origin = NULL, *o;
            for (size_t i = 0; i < qd_registry_count(reg) && !origin; ++i)
                if (qd_registry_at(reg, i, &o) == d)
                    origin = o;
            in->self = NULL;
            qd_instance_destroy(in);
            return qd_error_set(err, QD_ERR_PLUGIN,
                                "%s (%s): create() reported success but made no instance "
                                "(a bug in the plugin)", what, origin ? origin : "built in");
        }
        qd_instance_error(in, rc, err);
        if (!in->has_err)
            qd_error_set(err, rc, "%s: create failed (%s) without a message", what, qd_status_name(rc));
        if (in->self)
            qd_instance_destroy(in);
        else {
            in->self = NULL;
            qd_instance_destroy(in);
        }
        return rc;
    }
    *out = in;
    return QD_OK;
}

void qd_instance_destroy(qd_instance *in)
{
    if (!in)
        return;
    if (in->self) {
        const struct { uint32_t size; void *create; void (*destroy)(void *); } *vt = in->desc->vtable;
        vt->destroy(in->self);
    }
    for (size_t i = 0; i < in->n_defaults; ++i)
        qd_config_destroy(in->defaults[i].cfg);
    free(in->defaults);
    free(in->base_dir);
    free(in);
}

void *qd_instance_self(const qd_instance *in) { return in ? in->self : NULL; }
const void *qd_instance_vtable(const qd_instance *in) { return in ? in->desc->vtable : NULL; }
const qd_plugin_desc *qd_instance_desc(const qd_instance *in) { return in ? in->desc : NULL; }
const qd_host *qd_instance_host(const qd_instance *in) { return in ? &in->host : NULL; }

int qd_instance_error(const qd_instance *in, int rc, qd_error *err)
{
    if (!in)
        return qd_error_set(err, rc ? rc : QD_ERR_INTERNAL, "no plugin instance");
    if (in->has_err) {
        if (err) {
            err->code = in->err.code ? in->err.code : rc;
            memcpy(err->msg, in->err.msg, sizeof err->msg);
        }
        return in->err.code ? in->err.code : rc;
    }
    return qd_error_set(err, rc ? rc : QD_ERR_PLUGIN, "%s failed (%s) without a message",
                        in->prefix, qd_status_name(rc ? rc : QD_ERR_PLUGIN));
}
