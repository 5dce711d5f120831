/* Helpers shared by the layer implementations: config reading with schema
 * defaults, located error messages, initialisers, scratch buffers. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn_internal.h"

static const qd_param *schema_param(const qd_param *s, const char *key)
{
    for (; s && s->name; s++)
        if (strcmp(s->name, key) == 0)
            return s;
    return NULL;
}

int nn_layer_error(const nn_layer *l, const char *key, qd_error *err,
                   int code, const char *fmt, ...)
{
    char msg[QD_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const qd_node *at = key ? qd_node_get(l->node, key) : NULL;
    if (!at)
        at = l->node;
    if (!at)
        return qd_error_set(err, code, "layer '%s' (%s): %s", l->name,
                            l->type, msg);
    return qd_node_error(at, err, code, "layer '%s' (%s): %s", l->name,
                         l->type, msg);
}

int nn_layer_rt_error(const nn_layer *l, qd_error *err, int code,
                      const char *fmt, ...)
{
    char msg[QD_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return qd_error_set(err, code, "layer '%s' (%s): %s", l->name, l->type,
                        msg);
}

/* The schema entry of key; a missing one is a bug in this library. */
static const qd_param *need_param(const nn_layer *l, const char *key,
                                  qd_error *err)
{
    const qd_param *p = schema_param(l->schema, key);
    if (!p)
        nn_layer_rt_error(l, err, QD_ERR_INTERNAL,
                          "reads key '%s' its schema does not declare", key);
    return p;
}

static int check_bounds(const nn_layer *l, const qd_param *p, double v,
                        qd_error *err)
{
    if ((p->flags & QD_PARAM_HAS_MIN) && v < p->min)
        return nn_layer_error(l, p->name, err, QD_ERR_INVALID,
                              "'%s' must be >= %g, got %g", p->name, p->min,
                              v);
    if ((p->flags & QD_PARAM_HAS_MAX) && v > p->max)
        return nn_layer_error(l, p->name, err, QD_ERR_INVALID,
                              "'%s' must be <= %g, got %g", p->name, p->max,
                              v);
    return QD_OK;
}

static int missing(const nn_layer *l, const char *key, qd_error *err)
{
    return nn_layer_error(l, NULL, err, QD_ERR_INVALID,
                          "missing required key '%s'", key);
}

int nn_cfg_int(const nn_layer *l, const char *key, long long *out,
               qd_error *err)
{
    const qd_param *p = need_param(l, key, err);
    if (!p)
        return QD_ERR_INTERNAL;
    const qd_node *n = qd_node_get(l->node, key);
    if (n) {
        if (qd_node_as_int(n, out, NULL) != QD_OK)
            return nn_layer_error(l, key, err, QD_ERR_INVALID,
                                  "'%s' must be an integer, got '%s'", key,
                                  qd_node_str(n) ? qd_node_str(n) : "?");
    } else if (p->def) {
        *out = strtoll(p->def, NULL, 10);
    } else {
        return missing(l, key, err);
    }
    return check_bounds(l, p, (double)*out, err);
}

int nn_cfg_double(const nn_layer *l, const char *key, double *out,
                  qd_error *err)
{
    const qd_param *p = need_param(l, key, err);
    if (!p)
        return QD_ERR_INTERNAL;
    const qd_node *n = qd_node_get(l->node, key);
    if (n) {
        if (qd_node_as_double(n, out, NULL) != QD_OK || !isfinite(*out))
            return nn_layer_error(l, key, err, QD_ERR_INVALID,
                                  "'%s' must be a finite number, got '%s'",
                                  key, qd_node_str(n) ? qd_node_str(n) : "?");
    } else if (p->def) {
        *out = strtod(p->def, NULL);
    } else {
        return missing(l, key, err);
    }
    return check_bounds(l, p, *out, err);
}

int nn_cfg_bool(const nn_layer *l, const char *key, int *out, qd_error *err)
{
    const qd_param *p = need_param(l, key, err);
    if (!p)
        return QD_ERR_INTERNAL;
    const qd_node *n = qd_node_get(l->node, key);
    if (n) {
        if (qd_node_as_bool(n, out, NULL) != QD_OK)
            return nn_layer_error(l, key, err, QD_ERR_INVALID,
                                  "'%s' must be true or false, got '%s'", key,
                                  qd_node_str(n) ? qd_node_str(n) : "?");
    } else if (p->def) {
        *out = strcmp(p->def, "true") == 0;
    } else {
        return missing(l, key, err);
    }
    return QD_OK;
}

const char *nn_cfg_str(const nn_layer *l, const char *key)
{
    const qd_node *n = qd_node_get(l->node, key);
    if (n)
        return qd_node_str(n);
    const qd_param *p = schema_param(l->schema, key);
    return p ? p->def : NULL;
}

void nn_add_block(nn_layer *l, const char *what, size_t count)
{
    size_t off = 0;
    for (size_t i = 0; i < l->n_blocks; i++)
        off += l->blocks[i].count;
    qd_param_block *b = &l->blocks[l->n_blocks++];
    b->layer = l->name;
    b->what = what;
    b->offset = off;
    b->count = count;
    l->n_params = off + count;
}

int nn_cfg_init(const nn_layer *l, nn_init *out, qd_error *err)
{
    static const char *const names[] = {
        "pytorch", "xavier_normal", "xavier_uniform", "kaiming_normal",
        "kaiming_uniform", "zeros",
    };
    const char *s = nn_cfg_str(l, "init");
    for (size_t i = 0; s && i < sizeof names / sizeof names[0]; i++)
        if (strcmp(s, names[i]) == 0) {
            *out = (nn_init)i;
            return QD_OK;
        }
    return nn_layer_error(l, "init", err, QD_ERR_INVALID,
                          "unknown init '%s' (one of pytorch, xavier_normal, "
                          "xavier_uniform, kaiming_normal, kaiming_uniform, "
                          "zeros)", s ? s : "?");
}

static void fill_uniform(qd_rng *rng, double a, double *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = a * (2.0 * qd_rng_uniform(rng) - 1.0);
}

static void fill_normal(qd_rng *rng, double sd, double *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = sd * qd_rng_normal(rng);
}

void nn_init_fill(nn_init kind, qd_rng *rng, size_t fan_in, size_t fan_out,
                  double *w, size_t n_w, double *b, size_t n_b)
{
    double fi = (double)fan_in, fo = (double)fan_out;
    switch (kind) {
    case NN_INIT_PYTORCH:
        /* kaiming_uniform(a = sqrt(5)) reduces to U(+-1/sqrt(fan_in)); the
         * bias uses the same bound (torch.nn.Linear/Conv2d reset_parameters) */
        fill_uniform(rng, 1.0 / sqrt(fi), w, n_w);
        fill_uniform(rng, 1.0 / sqrt(fi), b, n_b);
        return;
    case NN_INIT_XAVIER_NORMAL:
        fill_normal(rng, sqrt(2.0 / (fi + fo)), w, n_w);
        break;
    case NN_INIT_XAVIER_UNIFORM:
        fill_uniform(rng, sqrt(6.0 / (fi + fo)), w, n_w);
        break;
    case NN_INIT_KAIMING_NORMAL:
        fill_normal(rng, sqrt(2.0 / fi), w, n_w);
        break;
    case NN_INIT_KAIMING_UNIFORM:
        fill_uniform(rng, sqrt(6.0 / fi), w, n_w);
        break;
    case NN_INIT_ZEROS:
        memset(w, 0, n_w * sizeof *w);
        break;
    }
    /* all but the pytorch scheme start biases at zero */
    if (n_b)
        memset(b, 0, n_b * sizeof *b);
}

int nn_reserve(double **buf, size_t *cap, size_t n)
{
    if (n <= *cap && *buf)
        return QD_OK;
    free(*buf);
    *buf = malloc((n ? n : 1) * sizeof **buf);
    if (!*buf) {
        *cap = 0;
        return QD_ERR_NOMEM;
    }
    *cap = n;
    return QD_OK;
}
