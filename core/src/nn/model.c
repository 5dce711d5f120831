/*
 * Models: a DAG of named layers built from YAML, run forward in list order
 * and backward in reverse. Because inputs must name earlier layers, list
 * order is a topological order and cycles cannot be written.
 *
 * Buffers: one output buffer per layer (flatten shares its input's), one
 * gradient buffer per layer (allocated at the first backward), sized for the
 * largest batch seen so far.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn_internal.h"

typedef struct type_entry {
    const char *name;
    const nn_layer_vt *vt;
    int n_in;
} type_entry;

static const type_entry type_table[] = {
    {"conv2d", &nn_conv2d_vt, 1},       {"maxpool2d", &nn_maxpool2d_vt, 1},
    {"avgpool2d", &nn_avgpool2d_vt, 1}, {"linear", &nn_linear_vt, 1},
    {"relu", &nn_relu_vt, 1},           {"tanh", &nn_tanh_vt, 1},
    {"sigmoid", &nn_sigmoid_vt, 1},     {"flatten", &nn_flatten_vt, 1},
    {"add", &nn_add_vt, 2},             {"mix", &nn_mix_vt, 2},
    {"dropout", &nn_dropout_vt, 1},     {"quantum", &nn_quantum_vt, 1},
};
#define N_TYPE_ENTRIES (sizeof type_table / sizeof type_table[0])

/* The name that refers to the model's input data in input/inputs. */
#define DATA_NAME "input"

struct qd_model {
    size_t n_layers;
    nn_layer *layers;
    nn_shape in_shape;
    size_t classes;
    size_t n_params;
    size_t n_blocks;
    qd_param_block *blocks;
    int training;
    int pieces;                /* qd_pieces_mode */
    qd_rng rng;
    volatile int *stop;        /* opts.stop_flag */
    double **out;              /* per layer; aliases point into producers,
                                  NULL inside a fused block */
    double **own;              /* per layer owned output storage */
    double **grad;             /* per layer output gradients */
    size_t *own_cap, *grad_cap;   /* their capacities in samples */
    unsigned char *mark, *needs, *gvalid;
    unsigned char *fuse_head;  /* conv2d heading a conv->relu->maxpool block */
    unsigned char *fused_run;  /* ... that the last forward ran fused */
};

/* ---- construction ---- */

static const type_entry *find_type(const char *name)
{
    for (size_t i = 0; name && i < N_TYPE_ENTRIES; i++)
        if (strcmp(type_table[i].name, name) == 0)
            return &type_table[i];
    return NULL;
}

static int find_layer(const qd_model *m, size_t upto, const char *name)
{
    for (size_t i = 0; i < upto; i++)
        if (strcmp(m->layers[i].name, name) == 0)
            return (int)i;
    return -2;
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

/* Every key of the layer mapping must be in its schema. */
static int check_keys(const nn_layer *l, qd_error *err)
{
    const char *names[32];
    size_t n_names = 0;
    for (const qd_param *p = l->schema; p->name && n_names < 32; p++)
        names[n_names++] = p->name;
    for (size_t k = 0; k < qd_node_len(l->node); k++) {
        const char *key = qd_node_key_at(l->node, k);
        int ok = 0;
        for (size_t j = 0; j < n_names && !ok; j++)
            ok = strcmp(names[j], key) == 0;
        if (ok)
            continue;
        const char *sug = qd_suggest(key, names, n_names);
        const qd_node *at = qd_node_key_node_at(l->node, k);
        if (sug)
            return qd_node_error(at, err, QD_ERR_INVALID,
                                 "layer '%s' (%s): unknown key '%s' (did you "
                                 "mean '%s'?)", l->name, l->type, key, sug);
        return qd_node_error(at, err, QD_ERR_INVALID,
                             "layer '%s' (%s): unknown key '%s'", l->name,
                             l->type, key);
    }
    return QD_OK;
}

/* Resolve a producer name to an index (< i), -1 for the data. */
static int resolve_input(qd_model *m, size_t i, const qd_node *n,
                         int *src, qd_error *err)
{
    nn_layer *l = &m->layers[i];
    const char *name = qd_node_str(n);
    if (!name)
        return qd_node_error(n, err, QD_ERR_INVALID,
                             "layer '%s' (%s): an input must be a layer name",
                             l->name, l->type);
    if (strcmp(name, DATA_NAME) == 0) {
        *src = -1;
        return QD_OK;
    }
    int at = find_layer(m, i, name);
    if (at >= 0) {
        *src = at;
        return QD_OK;
    }
    if (strcmp(name, l->name) == 0)
        return qd_node_error(n, err, QD_ERR_INVALID,
                             "layer '%s' (%s): a layer cannot read itself",
                             l->name, l->type);
    /* a later layer of that name? (its name may be implicit) */
    for (size_t j = i + 1; j < m->n_layers; j++)
        if (m->layers[j].name && strcmp(m->layers[j].name, name) == 0)
            return qd_node_error(n, err, QD_ERR_INVALID,
                                 "layer '%s' (%s): input '%s' comes later in "
                                 "the list; inputs must be earlier layers",
                                 l->name, l->type, name);
    return qd_node_error(n, err, QD_ERR_INVALID,
                         "layer '%s' (%s): unknown input '%s' (not an "
                         "earlier layer, nor '" DATA_NAME "')",
                         l->name, l->type, name);
}

static int name_layer(qd_model *m, size_t i, const qd_node *item,
                      const char *type, qd_error *err)
{
    nn_layer *l = &m->layers[i];
    const qd_node *nn = qd_node_get(item, "name");
    char buf[96];
    const char *name;
    if (nn) {
        name = qd_node_str(nn);
        if (!name || !*name)
            return qd_node_error(nn, err, QD_ERR_INVALID,
                                 "layer %zu: 'name' must be a non-empty "
                                 "string", i);
        if (strcmp(name, DATA_NAME) == 0)
            return qd_node_error(nn, err, QD_ERR_INVALID,
                                 "layer %zu: the name '" DATA_NAME "' is "
                                 "reserved for the model's input data", i);
    } else {
        snprintf(buf, sizeof buf, "%s%zu", type, i);
        name = buf;
    }
    l->name = dup_str(name);
    if (!l->name)
        return QD_ERR_NOMEM;
    return QD_OK;
}

static int setup_layer(qd_model *m, size_t i, const qd_node *item,
                       const nn_build *b, qd_error *err)
{
    nn_layer *l = &m->layers[i];
    const type_entry *t = find_type(l->type);
    l->vt = t->vt;
    l->schema = qd_layer_schema(l->type);
    l->node = item;
    l->training = &m->training;
    l->pieces = &m->pieces;
    l->rng = &m->rng;
    int rc;
    if ((rc = check_keys(l, err)))
        return rc;
    if (find_layer(m, i, l->name) >= 0)
        return nn_layer_error(l, "name", err, QD_ERR_INVALID,
                              "duplicate layer name '%s'", l->name);
    l->n_in = t->n_in;
    if (t->n_in == 2) {
        const qd_node *ins = qd_node_get(item, "inputs");
        if (!ins)
            return nn_layer_error(l, NULL, err, QD_ERR_INVALID,
                                  "missing required key 'inputs' ([a, b])");
        if (qd_node_kind(ins) != QD_NODE_SEQ || qd_node_len(ins) != 2)
            return nn_layer_error(l, "inputs", err, QD_ERR_INVALID,
                                  "'inputs' must be a list of two layer "
                                  "names");
        for (int j = 0; j < 2; j++)
            if ((rc = resolve_input(m, i, qd_node_at(ins, (size_t)j),
                                    &l->in[j], err)))
                return rc;
    } else {
        const qd_node *in = qd_node_get(item, "input");
        if (in) {
            if ((rc = resolve_input(m, i, in, &l->in[0], err)))
                return rc;
        } else {
            l->in[0] = (int)i - 1;   /* the previous layer; -1 = data */
        }
    }
    for (int j = 0; j < l->n_in; j++) {
        int src = l->in[j];
        l->in_shape[j] = src < 0 ? m->in_shape : m->layers[src].out;
        l->in_name[j] = src < 0 ? DATA_NAME : m->layers[src].name;
    }
    if ((rc = l->vt->setup(l, b, err)))
        return rc;
    l->param_offset = m->n_params;
    m->n_params += l->n_params;
    return QD_OK;
}

static void model_free_buffers(qd_model *m)
{
    for (size_t i = 0; i < m->n_layers; i++) {
        if (m->own)
            free(m->own[i]);
        if (m->grad)
            free(m->grad[i]);
    }
    free(m->own);
    free(m->out);
    free(m->grad);
    free(m->own_cap);
    free(m->grad_cap);
    m->own = m->out = m->grad = NULL;
    m->own_cap = m->grad_cap = NULL;
}

void qd_model_destroy(qd_model *m)
{
    if (!m)
        return;
    model_free_buffers(m);
    for (size_t i = 0; i < m->n_layers; i++) {
        nn_layer *l = &m->layers[i];
        if (l->vt && l->vt->destroy)
            l->vt->destroy(l);
        free(l->name);
    }
    free(m->layers);
    free(m->blocks);
    free(m->mark);
    free(m->needs);
    free(m->gvalid);
    free(m->fuse_head);
    free(m->fused_run);
    free(m);
}

/* conv2d -> relu -> maxpool2d chains whose intermediate outputs nobody
 * else reads run as one fused block (conv2d.c). */
static void find_fusions(qd_model *m)
{
    size_t *readers = calloc(m->n_layers, sizeof *readers);
    if (!readers)
        return;   /* fusion is an optimisation: run unfused */
    for (size_t i = 0; i < m->n_layers; i++)
        for (int j = 0; j < m->layers[i].n_in; j++)
            if (m->layers[i].in[j] >= 0)
                readers[m->layers[i].in[j]]++;
    for (size_t i = 0; i + 2 < m->n_layers; i++) {
        const nn_layer *c = &m->layers[i], *r = &m->layers[i + 1],
                       *p = &m->layers[i + 2];
        m->fuse_head[i] = c->vt == &nn_conv2d_vt && r->vt == &nn_relu_vt &&
                          p->vt == &nn_maxpool2d_vt && r->in[0] == (int)i &&
                          p->in[0] == (int)i + 1 && readers[i] == 1 &&
                          readers[i + 1] == 1;
    }
    free(readers);
}

int qd_model_create(const qd_node *model_section, const qd_registry *reg,
                    const qd_model_opts *opts, qd_model **out, qd_error *err)
{
    if (!out)
        return qd_error_set(err, QD_ERR_INVALID, "model: out is NULL");
    *out = NULL;
    if (!opts)
        return qd_error_set(err, QD_ERR_INVALID, "model: opts is NULL");
    if (!opts->channels || !opts->height || !opts->width || !opts->classes)
        return qd_error_set(err, QD_ERR_INVALID,
                            "model: input shape %zu x %zu x %zu and %zu "
                            "classes must all be >= 1", opts->channels,
                            opts->height, opts->width, opts->classes);
    if (qd_node_kind(model_section) != QD_NODE_MAP)
        return model_section
                   ? qd_node_error(model_section, err, QD_ERR_INVALID,
                                   "model: expected a mapping with 'layers'")
                   : qd_error_set(err, QD_ERR_INVALID,
                                  "model: no model section");
    const qd_node *layers = qd_node_get(model_section, "layers");
    if (!layers)
        return qd_node_error(model_section, err, QD_ERR_INVALID,
                             "model: missing 'layers' (a list of layers)");
    if (qd_node_kind(layers) != QD_NODE_SEQ || qd_node_len(layers) == 0)
        return qd_node_error(layers, err, QD_ERR_INVALID,
                             "model: 'layers' must be a non-empty list");

    qd_model *m = calloc(1, sizeof *m);
    if (!m)
        return qd_error_set(err, QD_ERR_NOMEM, "model: out of memory");
    m->n_layers = qd_node_len(layers);
    m->layers = calloc(m->n_layers, sizeof *m->layers);
    m->mark = calloc(m->n_layers, 1);
    m->needs = calloc(m->n_layers, 1);
    m->gvalid = calloc(m->n_layers, 1);
    m->fuse_head = calloc(m->n_layers, 1);
    m->fused_run = calloc(m->n_layers, 1);
    m->out = calloc(m->n_layers, sizeof *m->out);
    m->own = calloc(m->n_layers, sizeof *m->own);
    m->grad = calloc(m->n_layers, sizeof *m->grad);
    m->own_cap = calloc(m->n_layers, sizeof *m->own_cap);
    m->grad_cap = calloc(m->n_layers, sizeof *m->grad_cap);
    if (!m->layers || !m->mark || !m->needs || !m->gvalid || !m->fuse_head ||
        !m->fused_run || !m->out || !m->own || !m->grad || !m->own_cap ||
        !m->grad_cap) {
        qd_model_destroy(m);
        return qd_error_set(err, QD_ERR_NOMEM, "model: out of memory");
    }
    m->in_shape = (nn_shape){opts->channels, opts->height, opts->width};
    m->classes = opts->classes;
    m->stop = opts->stop_flag;
    qd_rng_derive(&m->rng, opts->seed, "model.dropout");
    nn_build b = {reg, opts};
    int rc = QD_OK;

    /* names first, so a reference to a later layer can be reported as such */
    for (size_t i = 0; i < m->n_layers && !rc; i++) {
        const qd_node *item = qd_node_at(layers, i);
        if (qd_node_kind(item) != QD_NODE_MAP) {
            rc = qd_node_error(item, err, QD_ERR_INVALID,
                               "layer %zu: expected a mapping with 'type'",
                               i);
            break;
        }
        const qd_node *tn = qd_node_get(item, "type");
        const char *type = qd_node_str(tn);
        if (!tn) {
            rc = qd_node_error(item, err, QD_ERR_INVALID,
                               "layer %zu: missing 'type'", i);
        } else if (!find_type(type)) {
            const char *cands[N_TYPE_ENTRIES];
            for (size_t k = 0; k < N_TYPE_ENTRIES; k++)
                cands[k] = type_table[k].name;
            const char *sug = type ? qd_suggest(type, cands,
                                                N_TYPE_ENTRIES) : NULL;
            rc = qd_node_error(tn, err, QD_ERR_INVALID,
                               "layer %zu: unknown type '%s'%s%s%s", i,
                               type ? type : "?", sug ? " (did you mean '" : "",
                               sug ? sug : "", sug ? "'?)" : "");
        } else {
            m->layers[i].type = find_type(type)->name;
            rc = name_layer(m, i, item, type, err);
        }
    }
    for (size_t i = 0; i < m->n_layers && !rc; i++)
        rc = setup_layer(m, i, qd_node_at(layers, i), &b, err);
    if (!rc) {
        const nn_layer *last = &m->layers[m->n_layers - 1];
        size_t n_out = nn_shape_size(last->out);
        if (n_out != m->classes)
            rc = qd_node_error(last->node, err, QD_ERR_INVALID,
                               "model: the last layer '%s' (%s) is the "
                               "output and gives %zu values per sample, but "
                               "the data set has %zu classes", last->name,
                               last->type, n_out, m->classes);
    }
    if (!rc) {
        for (size_t i = 0; i < m->n_layers; i++)
            m->n_blocks += m->layers[i].n_blocks;
        m->blocks = calloc(m->n_blocks ? m->n_blocks : 1, sizeof *m->blocks);
        if (!m->blocks)
            rc = qd_error_set(err, QD_ERR_NOMEM, "model: out of memory");
        size_t k = 0;
        for (size_t i = 0; !rc && i < m->n_layers; i++)
            for (size_t j = 0; j < m->layers[i].n_blocks; j++) {
                m->blocks[k] = m->layers[i].blocks[j];
                m->blocks[k].offset += m->layers[i].param_offset;
                k++;
            }
    }
    if (rc) {
        qd_model_destroy(m);
        return rc;
    }
    find_fusions(m);
    *out = m;
    return QD_OK;
}

/* ---- queries ---- */

size_t qd_model_n_params(const qd_model *m)
{
    return m ? m->n_params : 0;
}

size_t qd_model_input_size(const qd_model *m)
{
    return m ? nn_shape_size(m->in_shape) : 0;
}

size_t qd_model_n_classes(const qd_model *m)
{
    return m ? m->classes : 0;
}

size_t qd_model_n_blocks(const qd_model *m)
{
    return m ? m->n_blocks : 0;
}

const qd_param_block *qd_model_block(const qd_model *m, size_t i)
{
    return m && i < m->n_blocks ? &m->blocks[i] : NULL;
}

volatile int *nn_model_stop_flag(const qd_model *m)
{
    return m ? m->stop : NULL;
}

void qd_model_set_training(qd_model *m, int on)
{
    if (m)
        m->training = on != 0;
}

int qd_model_has_pieces(const qd_model *m)
{
    for (size_t i = 0; m && i < m->n_layers; i++)
        if (nn_is_piecewise(&m->layers[i]))
            return 1;
    return 0;
}

int qd_model_set_pieces(qd_model *m, int mode, qd_error *err)
{
    if (!m)
        return qd_error_set(err, QD_ERR_INVALID,
                            "model set_pieces: model is NULL");
    if (mode != QD_PIECES_LIVE && mode != QD_PIECES_RECORD &&
        mode != QD_PIECES_REPLAY)
        return qd_error_set(err, QD_ERR_INVALID,
                            "model set_pieces: unknown mode %d (expected "
                            "QD_PIECES_LIVE 0, RECORD 1 or REPLAY 2)", mode);
    if (mode == QD_PIECES_RECORD)
        for (size_t i = 0; i < m->n_layers; i++)
            m->layers[i].rec_batch = 0;
    if (mode == QD_PIECES_REPLAY && qd_model_has_pieces(m)) {
        int any = 0;
        for (size_t i = 0; i < m->n_layers; i++)
            any |= m->layers[i].rec_batch != 0;
        if (!any)
            return qd_error_set(err, QD_ERR_INVALID,
                                "model set_pieces: nothing to replay (run a "
                                "forward in QD_PIECES_RECORD mode first)");
    }
    m->pieces = mode;
    return QD_OK;
}

size_t qd_model_n_layers(const qd_model *m)
{
    return m ? m->n_layers : 0;
}

const char *qd_model_layer_name(const qd_model *m, size_t i)
{
    return m && i < m->n_layers ? m->layers[i].name : NULL;
}

size_t qd_model_layer_size(const qd_model *m, const char *layer)
{
    if (!m || !layer)
        return 0;
    int i = find_layer(m, m->n_layers, layer);
    return i < 0 ? 0 : nn_shape_size(m->layers[i].out);
}

void qd_model_quantum_stats(const qd_model *m, qd_sim_stats *out)
{
    if (!out)
        return;
    out->executions = out->shots = 0;
    for (size_t i = 0; m && i < m->n_layers; i++)
        if (m->layers[i].vt == &nn_quantum_vt)
            nn_quantum_stats(&m->layers[i], out);
}

int qd_model_init_params(qd_model *m, qd_rng *rng, double *params,
                         qd_error *err)
{
    if (!m || !rng || (!params && m->n_params))
        return qd_error_set(err, QD_ERR_INVALID,
                            "model init: model, rng and params are required");
    for (size_t i = 0; i < m->n_layers; i++) {
        nn_layer *l = &m->layers[i];
        if (l->vt->init) {   /* even without parameters: see quantum */
            int rc = l->vt->init(l, rng, params + l->param_offset, err);
            if (rc)
                return rc;
        }
    }
    return QD_OK;
}

/* ---- running ---- */

/* Grow buffer i of a per-layer set (outputs or gradients) to batch
 * samples. Buffers are allocated when first written, so the activations a
 * fused block keeps in scratch never take memory. */
static int ensure_buf(qd_model *m, double **bufs, size_t *caps, size_t i,
                      size_t batch, qd_error *err)
{
    if (caps[i] >= batch && bufs[i])
        return QD_OK;
    free(bufs[i]);
    bufs[i] = malloc(batch * nn_shape_size(m->layers[i].out) * sizeof(double));
    caps[i] = bufs[i] ? batch : 0;
    if (!bufs[i])
        return qd_error_set(err, QD_ERR_NOMEM,
                            "model: out of memory for layer '%s' at a batch "
                            "of %zu", m->layers[i].name, batch);
    return QD_OK;
}

static const double *input_ptr(const qd_model *m, const double *x, int src)
{
    return src < 0 ? x : m->out[src];
}

/* REPLAY: layer l (piecewise) must hold pieces recorded for this batch. */
static int check_replay(const nn_layer *l, size_t batch, qd_error *err)
{
    if (l->rec_batch == batch)
        return QD_OK;
    if (l->rec_batch == 0)
        return qd_error_set(err, QD_ERR_INVALID,
                            "frozen pieces: layer '%s' (%s) has no recorded "
                            "pieces to replay (the QD_PIECES_RECORD forward "
                            "did not run it)", l->name, l->type);
    return qd_error_set(err, QD_ERR_INVALID,
                        "frozen pieces: layer '%s' (%s) recorded its pieces "
                        "for a batch of %zu, but this call has %zu", l->name,
                        l->type, l->rec_batch, batch);
}

/* Run the layers the output of `target` depends on. */
static int run_forward(qd_model *m, const double *params, size_t batch,
                       const double *x, size_t target, qd_error *err)
{
    int rc;
    memset(m->mark, 0, m->n_layers);
    memset(m->fused_run, 0, m->n_layers);
    m->mark[target] = 1;
    for (size_t i = target + 1; i-- > 0;) {
        if (!m->mark[i])
            continue;
        for (int j = 0; j < m->layers[i].n_in; j++)
            if (m->layers[i].in[j] >= 0)
                m->mark[m->layers[i].in[j]] = 1;
    }
    for (size_t i = 0; i <= target; i++) {
        nn_layer *l = &m->layers[i];
        if (!m->mark[i])
            continue;
        const double *in[NN_MAX_IN] = {NULL, NULL};
        for (int j = 0; j < l->n_in; j++)
            in[j] = input_ptr(m, x, l->in[j]);
        if (l->vt->alias) {
            m->out[i] = (double *)in[0];
            continue;
        }
        if (m->fuse_head[i] && target >= i + 2) {
            /* conv -> relu -> maxpool: only the pooled output is stored;
             * the pool layer holds the block's pieces */
            if (m->pieces == QD_PIECES_REPLAY &&
                (rc = check_replay(&m->layers[i + 2], batch, err)))
                return rc;
            if ((rc = ensure_buf(m, m->own, m->own_cap, i + 2, batch, err)))
                return rc;
            m->out[i] = m->out[i + 1] = NULL;
            m->out[i + 2] = m->own[i + 2];
            rc = nn_conv_relu_pool_forward(l, &m->layers[i + 2],
                                           params + l->param_offset, batch,
                                           in[0], m->out[i + 2], err);
            if (rc)
                return rc;
            if (m->pieces == QD_PIECES_RECORD)
                m->layers[i + 2].rec_batch = batch;
            m->fused_run[i] = 1;
            i += 2;
            continue;
        }
        const int piecewise = m->pieces != QD_PIECES_LIVE &&
                              nn_is_piecewise(l);
        if (piecewise && m->pieces == QD_PIECES_REPLAY &&
            (rc = check_replay(l, batch, err)))
            return rc;
        if ((rc = ensure_buf(m, m->own, m->own_cap, i, batch, err)))
            return rc;
        m->out[i] = m->own[i];
        rc = l->vt->forward(l, params + l->param_offset, batch, in, m->out[i],
                            err);
        if (rc)
            return rc;
        if (piecewise && m->pieces == QD_PIECES_RECORD)
            l->rec_batch = batch;
    }
    return QD_OK;
}

static int check_call(const qd_model *m, const double *params, size_t batch,
                      const double *x, const char *what, qd_error *err)
{
    if (!m)
        return qd_error_set(err, QD_ERR_INVALID, "%s: model is NULL", what);
    if (!params && m->n_params)
        return qd_error_set(err, QD_ERR_INVALID, "%s: params is NULL", what);
    if (!x)
        return qd_error_set(err, QD_ERR_INVALID, "%s: input is NULL", what);
    if (batch == 0 || batch > (size_t)1 << 30)
        return qd_error_set(err, QD_ERR_INVALID,
                            "%s: batch size %zu out of range [1, 2^30]", what,
                            batch);
    return QD_OK;
}

int qd_model_forward(qd_model *m, const double *params, size_t batch,
                     const double *x, double *logits, qd_error *err)
{
    int rc = check_call(m, params, batch, x, "model forward", err);
    if (rc)
        return rc;
    if (!logits)
        return qd_error_set(err, QD_ERR_INVALID,
                            "model forward: logits is NULL");
    size_t last = m->n_layers - 1;
    if ((rc = run_forward(m, params, batch, x, last, err)))
        return rc;
    memcpy(logits, m->out[last], batch * m->classes * sizeof *logits);
    return QD_OK;
}

int qd_model_forward_to(qd_model *m, const double *params, size_t batch,
                        const double *x, const char *layer, double *out,
                        qd_error *err)
{
    int rc = check_call(m, params, batch, x, "model forward_to", err);
    if (rc)
        return rc;
    int i = layer ? find_layer(m, m->n_layers, layer) : -2;
    if (i < 0)
        return qd_error_set(err, QD_ERR_INVALID,
                            "model forward_to: no layer named '%s'",
                            layer ? layer : "(null)");
    if (!out)
        return qd_error_set(err, QD_ERR_INVALID,
                            "model forward_to: out is NULL");
    if ((rc = run_forward(m, params, batch, x, (size_t)i, err)))
        return rc;
    memcpy(out, m->out[i],
           batch * nn_shape_size(m->layers[i].out) * sizeof *out);
    return QD_OK;
}

static int all_finite(const double *v, size_t n)
{
    int ok = 1;
    for (size_t i = 0; i < n; i++)
        ok &= isfinite(v[i]);
    return ok;
}

/* The loss is not finite: name the first layer whose parameters or output
 * are not finite. */
static int explain_nonfinite(const qd_model *m, const double *params,
                             size_t batch, const double *x, qd_error *err)
{
    if (!all_finite(x, batch * nn_shape_size(m->in_shape)))
        return qd_error_set(err, QD_ERR_NUMERIC,
                            "non-finite loss: the input batch holds "
                            "non-finite values");
    for (size_t i = 0; i < m->n_layers; i++) {
        const nn_layer *l = &m->layers[i];
        for (size_t k = 0; k < l->n_blocks; k++)
            if (!all_finite(params + l->param_offset + l->blocks[k].offset,
                            l->blocks[k].count))
                return qd_error_set(err, QD_ERR_NUMERIC,
                                    "non-finite loss: parameters '%s' of "
                                    "layer '%s' (%s) are not finite",
                                    l->blocks[k].what, l->name, l->type);
        if (m->mark[i] && m->out[i] &&
            !all_finite(m->out[i], batch * nn_shape_size(l->out)))
            return qd_error_set(err, QD_ERR_NUMERIC,
                                "non-finite loss: the output of layer '%s' "
                                "(%s) is not finite (its inputs are)",
                                l->name, l->type);
    }
    return qd_error_set(err, QD_ERR_NUMERIC,
                        "non-finite loss with finite logits");
}

/* Mean softmax cross-entropy; g = dloss/dlogits. */
static double softmax_xent(const double *z, const int32_t *y, size_t batch,
                           size_t C, double *g)
{
    double total = 0.0;
    const double inv_b = 1.0 / (double)batch;
    for (size_t b = 0; b < batch; b++) {
        const double *row = z + b * C;
        double mx = row[0];
        for (size_t k = 1; k < C; k++)
            mx = row[k] > mx ? row[k] : mx;
        double s = 0.0;
        for (size_t k = 0; k < C; k++)
            s += exp(row[k] - mx);
        total += mx + log(s) - row[y[b]];
        if (g) {
            double *gr = g + b * C;
            for (size_t k = 0; k < C; k++)
                gr[k] = exp(row[k] - mx) / s * inv_b;
            gr[y[b]] -= inv_b;
        }
    }
    return total * inv_b;
}

/* Back-propagate from m->grad[top] (dL/d(output of layer top), already
 * written) through the layers the last run_forward(..., top) ran. */
static int run_backward(qd_model *m, const double *params, size_t batch,
                        const double *x, size_t top, double *g_params,
                        double *g_x, qd_error *err)
{
    const size_t n = m->n_layers;
    /* needs[i]: some gradient the caller asked for depends on layer i */
    for (size_t i = 0; i < n; i++) {
        const nn_layer *l = &m->layers[i];
        int need = g_params && l->n_params;
        for (int j = 0; j < l->n_in; j++)
            need |= l->in[j] < 0 ? g_x != NULL : m->needs[l->in[j]];
        m->needs[i] = (unsigned char)need;
    }
    memset(m->gvalid, 0, n);
    int x_valid = 0;
    m->gvalid[top] = 1;    /* grad[top] holds dL/d(its output) */
    for (size_t i = top + 1; i-- > 0;) {
        /* the pool layer closing a fused block handles all three layers */
        const int fused = i >= 2 && m->fused_run[i - 2];
        nn_layer *l = &m->layers[i];
        nn_layer *src_l = fused ? &m->layers[i - 2] : l;   /* has inputs */
        double *g_p = g_params && src_l->n_params
                          ? g_params + src_l->param_offset
                          : NULL;
        if (!m->gvalid[i] || !m->needs[i]) {
            if (g_p)   /* no path to the loss: zero gradient */
                memset(g_p, 0, src_l->n_params * sizeof *g_p);
            if (fused)
                i -= 2;
            continue;
        }
        double *g_in[NN_MAX_IN] = {NULL, NULL};
        const double *in[NN_MAX_IN] = {NULL, NULL};
        int acc[NN_MAX_IN] = {0, 0};
        for (int j = 0; j < src_l->n_in; j++) {
            int src = src_l->in[j];
            in[j] = input_ptr(m, x, src);
            int need = src < 0 ? g_x != NULL : m->needs[src];
            if (!need)
                continue;
            if (src >= 0) {
                int rc = ensure_buf(m, m->grad, m->grad_cap, (size_t)src,
                                    batch, err);
                if (rc)
                    return rc;
            }
            g_in[j] = src < 0 ? g_x : m->grad[src];
            acc[j] = src < 0 ? x_valid : m->gvalid[src];
            if (j == 1 && src == src_l->in[0] && g_in[0])
                acc[1] = 1;   /* [a, a]: input 0 has just written it */
        }
        int rc = QD_OK;
        if (fused) {
            rc = nn_conv_relu_pool_backward(src_l, l,
                                            params + src_l->param_offset,
                                            batch, in[0], m->grad[i], g_p,
                                            g_in[0], acc[0], err);
        } else if (l->vt->alias) {
            if (g_in[0]) {
                size_t cnt = batch * nn_shape_size(l->out);
                const double *g = m->grad[i];
                if (acc[0])
                    for (size_t k = 0; k < cnt; k++)
                        g_in[0][k] += g[k];
                else
                    memcpy(g_in[0], g, cnt * sizeof *g);
            }
        } else {
            rc = l->vt->backward(l, params + l->param_offset, batch, in,
                                 m->out[i], m->grad[i], g_p, g_in, acc, err);
        }
        if (rc)
            return rc;
        for (int j = 0; j < src_l->n_in; j++) {
            if (!g_in[j])
                continue;
            if (src_l->in[j] < 0)
                x_valid = 1;
            else
                m->gvalid[src_l->in[j]] = 1;
        }
        if (fused)
            i -= 2;
    }
    if (g_x && !x_valid)
        memset(g_x, 0, batch * nn_shape_size(m->in_shape) * sizeof *g_x);
    return QD_OK;
}

int qd_model_loss_grad(qd_model *m, const double *params, size_t batch,
                       const double *x, const int32_t *labels, double *loss,
                       double *g_params, double *g_x, double *logits,
                       qd_error *err)
{
    int rc = check_call(m, params, batch, x, "model loss", err);
    if (rc)
        return rc;
    if (!labels)
        return qd_error_set(err, QD_ERR_INVALID, "model loss: labels is NULL");
    for (size_t b = 0; b < batch; b++)
        if (labels[b] < 0 || (size_t)labels[b] >= m->classes)
            return qd_error_set(err, QD_ERR_INVALID,
                                "model loss: label %d of sample %zu is "
                                "outside [0, %zu)", (int)labels[b], b,
                                m->classes);
    const size_t last = m->n_layers - 1;
    if ((rc = run_forward(m, params, batch, x, last, err)))
        return rc;
    const int want_grad = g_params || g_x;
    if (want_grad && (rc = ensure_buf(m, m->grad, m->grad_cap, last, batch,
                                      err)))
        return rc;
    const double *z = m->out[last];
    double L = softmax_xent(z, labels, batch, m->classes,
                            want_grad ? m->grad[last] : NULL);
    if (logits)
        memcpy(logits, z, batch * m->classes * sizeof *logits);
    if (loss)
        *loss = L;
    if (!isfinite(L))
        return explain_nonfinite(m, params, batch, x, err);
    if (want_grad)
        return run_backward(m, params, batch, x, last, g_params, g_x, err);
    return QD_OK;
}

int qd_model_backward_from(qd_model *m, const double *params, size_t batch,
                           const double *x, const char *layer,
                           const double *g_out, double *g_x, qd_error *err)
{
    int rc = check_call(m, params, batch, x, "model backward_from", err);
    if (rc)
        return rc;
    int i = layer ? find_layer(m, m->n_layers, layer) : -2;
    if (i < 0)
        return qd_error_set(err, QD_ERR_INVALID,
                            "model backward_from: no layer named '%s'",
                            layer ? layer : "(null)");
    if (!g_out || !g_x)
        return qd_error_set(err, QD_ERR_INVALID,
                            "model backward_from: %s is NULL",
                            g_out ? "g_x" : "g_out");
    /* The forward is recomputed: layer backwards read state their own
     * forward of the same batch left (quantum: encoded inputs and
     * observable matrices; maxpool: argmaxes), which any call in between
     * may have overwritten. */
    if ((rc = run_forward(m, params, batch, x, (size_t)i, err)) ||
        (rc = ensure_buf(m, m->grad, m->grad_cap, (size_t)i, batch, err)))
        return rc;
    memcpy(m->grad[i], g_out,
           batch * nn_shape_size(m->layers[i].out) * sizeof *g_out);
    return run_backward(m, params, batch, x, (size_t)i, NULL, g_x, err);
}

/* ---- description ---- */

typedef struct sbuf {
    char *s;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_add(sbuf *b, const char *fmt, ...) QD_PRINTF(2, 3);
static void sb_add(sbuf *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL,
                          b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if (b->s && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = (b->cap ? b->cap * 2 : 1024) + (size_t)n;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->oom = 1;
            return;
        }
        b->s = s;
        b->cap = cap;
    }
}

static void shape_text(nn_shape s, char *buf, size_t n)
{
    if (s.h == 1 && s.w == 1)
        snprintf(buf, n, "%zu", s.c);
    else
        snprintf(buf, n, "%zu x %zu x %zu", s.c, s.h, s.w);
}

char *qd_model_describe(const qd_model *m)
{
    if (!m)
        return NULL;
    sbuf b = {0};
    char shp[64];
    shape_text(m->in_shape, shp, sizeof shp);
    sb_add(&b, "%-12s %-10s %-14s %-16s %10s\n", "layer", "type", "output",
           "reads", "params");
    sb_add(&b, "%-12s %-10s %-14s %-16s %10s\n", DATA_NAME, "data", shp, "",
           "");
    for (size_t i = 0; i < m->n_layers; i++) {
        const nn_layer *l = &m->layers[i];
        char reads[160];
        if (l->n_in == 2)
            snprintf(reads, sizeof reads, "%s, %s", l->in_name[0],
                     l->in_name[1]);
        else
            snprintf(reads, sizeof reads, "%s", l->in_name[0]);
        shape_text(l->out, shp, sizeof shp);
        sb_add(&b, "%-12s %-10s %-14s %-16s %10zu\n", l->name, l->type, shp,
               reads, l->n_params);
    }
    sb_add(&b, "%-12s %-10s %-14s %-16s %10zu\n", "total", "", "", "",
           m->n_params);
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    return b.s;
}

char *qd_model_describe_circuits(const qd_model *m)
{
    if (!m)
        return NULL;
    sbuf b = {0};
    sb_add(&b, "%s", "");
    for (size_t i = 0; i < m->n_layers; i++) {
        const nn_layer *l = &m->layers[i];
        if (l->vt != &nn_quantum_vt)
            continue;
        char *c = nn_quantum_describe(l);
        sb_add(&b, "layer '%s' (quantum):\n%s", l->name, c ? c : "?\n");
        free(c);
    }
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    return b.s;
}
