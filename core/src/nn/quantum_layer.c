/*
 * quantum: a parametric circuit as a layer. Four plugin instances share one
 * circuit IR: the encoder appends the input-dependent ops, the ansatz the
 * trainable ones, the observable says what is measured, the simulator runs
 * the batch and differentiates it.
 *
 * Parameters (flat): ansatz weights ("circuit" block), then the observable's
 * parameters ("observable" block).
 *
 *   forward : x -> encode -> inputs;  obs params -> matrices;  simulate
 *   backward: simulator backward gives dL/dweights, dL/dinputs and
 *             G_t = dL/dH_t; the observable chains G_t to its parameters and
 *             the encoder chains dL/dinputs to dL/dx.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn_internal.h"

enum { Q_ENC, Q_ANS, Q_OBS, Q_SIM, Q_N };

static const char *const q_keys[Q_N] = {"encoder", "ansatz", "observable",
                                        "simulator"};
static const int q_kinds[Q_N] = {QD_KIND_ENCODER, QD_KIND_ANSATZ,
                                 QD_KIND_OBSERVABLE, QD_KIND_SIMULATOR};

typedef struct quantum_st {
    qd_instance *inst[Q_N];
    void *self[Q_N];
    const qd_encoder_vt *enc;
    const qd_ansatz_vt *ans;
    const qd_observable_vt *obs;
    const qd_simulator_vt *sim;
    qd_circuit circ;
    qd_obs_spec spec;
    size_t n_features, n_inputs, n_weights, n_obs;
    double complex *mats, *g_mats;
    double *inputs, *g_inputs, *g_x;
    size_t inputs_cap, g_inputs_cap, g_x_cap;
} quantum_st;

/* A plugin call failed: fetch its message, name the layer. */
static int plugin_fail(const nn_layer *l, const quantum_st *s, int which,
                       int rc, const char *what, qd_error *err)
{
    rc = qd_instance_error(s->inst[which], rc, err);
    qd_error_prefix(err, "layer '%s' (quantum): %s %s", l->name,
                    q_keys[which], what);
    return rc;
}

static int quantum_setup(nn_layer *l, const nn_build *b, qd_error *err)
{
    quantum_st *s = calloc(1, sizeof *s);
    if (!s)
        return QD_ERR_NOMEM;
    l->st = s;
    long long wires;
    int rc;
    if ((rc = nn_cfg_int(l, "wires", &wires, err)))
        return rc;
    qd_circuit_init(&s->circ, (uint32_t)wires);
    if (!b->reg)
        return nn_layer_error(l, NULL, err, QD_ERR_INVALID,
                              "a quantum layer needs a plugin registry");
    for (int k = 0; k < Q_N; k++) {
        const qd_node *sec = qd_node_get(l->node, q_keys[k]);
        if (!sec)
            return nn_layer_error(l, NULL, err, QD_ERR_INVALID,
                                  "missing required key '%s'", q_keys[k]);
        if (qd_node_kind(sec) != QD_NODE_MAP)
            return nn_layer_error(l, q_keys[k], err, QD_ERR_INVALID,
                                  "'%s' must be a mapping {plugin: NAME, ...}",
                                  q_keys[k]);
        char stream[256];
        snprintf(stream, sizeof stream, "model.%s.%s", l->name, q_keys[k]);
        qd_instance_opts io = {
            .seed = b->opts->seed,
            .stream = stream,
            .threads = b->opts->threads,
            .base_dir = b->opts->base_dir,
            .stop_flag = b->opts->stop_flag,
        };
        rc = qd_instance_create(b->reg, q_kinds[k], sec, &io, &s->inst[k],
                                err);
        if (rc)
            return qd_error_prefix(err, "layer '%s' (quantum)", l->name), rc;
        s->self[k] = qd_instance_self(s->inst[k]);
    }
    s->enc = qd_instance_vtable(s->inst[Q_ENC]);
    s->ans = qd_instance_vtable(s->inst[Q_ANS]);
    s->obs = qd_instance_vtable(s->inst[Q_OBS]);
    s->sim = qd_instance_vtable(s->inst[Q_SIM]);

    s->n_features = nn_shape_size(l->in_shape[0]);
    if ((rc = s->enc->build(s->self[Q_ENC], s->n_features, &s->circ)))
        return plugin_fail(l, s, Q_ENC, rc, "build", err);
    s->n_inputs = s->circ.n_inputs;
    if ((rc = s->ans->build(s->self[Q_ANS], &s->circ)))
        return plugin_fail(l, s, Q_ANS, rc, "build", err);
    if (s->circ.n_inputs != s->n_inputs)
        return nn_layer_error(l, "ansatz", err, QD_ERR_PLUGIN,
                              "the ansatz added input-dependent angles; only "
                              "the encoder may read inputs");
    s->n_weights = s->circ.n_weights;
    if ((rc = s->obs->build(s->self[Q_OBS], (uint32_t)wires, &s->spec)))
        return plugin_fail(l, s, Q_OBS, rc, "build", err);
    if (s->spec.n_outputs == 0)
        return nn_layer_error(l, "observable", err, QD_ERR_PLUGIN,
                              "the observable measures no outputs");
    s->n_obs = s->obs->n_params(s->self[Q_OBS]);
    s->mats = calloc(s->spec.matrix_len ? s->spec.matrix_len : 1,
                     sizeof *s->mats);
    s->g_mats = calloc(s->spec.matrix_len ? s->spec.matrix_len : 1,
                       sizeof *s->g_mats);
    if (!s->mats || !s->g_mats)
        return QD_ERR_NOMEM;
    l->out = (nn_shape){s->spec.n_outputs, 1, 1};
    if (s->n_weights)
        nn_add_block(l, "circuit", s->n_weights);
    if (s->n_obs)
        nn_add_block(l, "observable", s->n_obs);
    return QD_OK;
}

static int quantum_init(nn_layer *l, qd_rng *rng, double *p, qd_error *err)
{
    quantum_st *s = l->st;
    int rc;
    if (s->n_weights &&
        (rc = s->ans->init_weights(s->self[Q_ANS], rng, s->n_weights, p)))
        return plugin_fail(l, s, Q_ANS, rc, "init_weights", err);
    /* always called: a fixed observable draws its matrices here too, so
     * trainable and fixed runs share them */
    double none[1];
    if ((rc = s->obs->init_params(s->self[Q_OBS], rng,
                                  s->n_obs ? p + s->n_weights : none)))
        return plugin_fail(l, s, Q_OBS, rc, "init_params", err);
    return QD_OK;
}

static qd_sim_job make_job(const quantum_st *s, const double *p, size_t batch)
{
    qd_sim_job job;
    memset(&job, 0, sizeof job);
    job.struct_size = sizeof job;
    job.circuit = &s->circ;
    job.obs = &s->spec;
    job.obs_mats = s->mats;
    job.batch = batch;
    job.inputs = s->inputs;
    job.weights = p;
    return job;
}

static int quantum_forward(nn_layer *l, const double *p, size_t batch,
                           const double *const *in, double *out,
                           qd_error *err)
{
    quantum_st *s = l->st;
    int rc;
    if (nn_reserve(&s->inputs, &s->inputs_cap, batch * s->n_inputs))
        return nn_layer_rt_error(l, err, QD_ERR_NOMEM, "out of memory");
    if ((rc = s->enc->encode(s->self[Q_ENC], batch, in[0], s->inputs)))
        return plugin_fail(l, s, Q_ENC, rc, "encode", err);
    const double none[1] = {0.0};
    if ((rc = s->obs->matrices(s->self[Q_OBS],
                               s->n_obs ? p + s->n_weights : none, s->mats)))
        return plugin_fail(l, s, Q_OBS, rc, "matrices", err);
    qd_sim_job job = make_job(s, p, batch);
    if ((rc = s->sim->forward(s->self[Q_SIM], &job, out)))
        return plugin_fail(l, s, Q_SIM, rc, "forward", err);
    return QD_OK;
}

/* Relies on the forward of the same batch just before (cached inputs and
 * observable matrices), which the model guarantees. */
static int quantum_backward(nn_layer *l, const double *p, size_t batch,
                            const double *const *in, const double *out,
                            const double *g_out, double *g_p,
                            double *const *g_in, const int *acc,
                            qd_error *err)
{
    (void)out;
    quantum_st *s = l->st;
    double *gx = g_in[0];
    int rc;
    if (gx && nn_reserve(&s->g_inputs, &s->g_inputs_cap, batch * s->n_inputs))
        return nn_layer_rt_error(l, err, QD_ERR_NOMEM, "out of memory");
    double *g_w = g_p && s->n_weights ? g_p : NULL;
    double complex *g_m = g_p && s->n_obs ? s->g_mats : NULL;
    if (!g_w && !g_m && !gx)
        return QD_OK;
    qd_sim_job job = make_job(s, p, batch);
    if ((rc = s->sim->backward(s->self[Q_SIM], &job, g_out, g_w,
                               gx ? s->g_inputs : NULL, g_m)))
        return plugin_fail(l, s, Q_SIM, rc, "backward", err);
    if (g_m) {
        double *g_o = g_p + s->n_weights;
        memset(g_o, 0, s->n_obs * sizeof *g_o);
        if ((rc = s->obs->matrices_backward(s->self[Q_OBS], p + s->n_weights,
                                            g_m, g_o)))
            return plugin_fail(l, s, Q_OBS, rc, "matrices_backward", err);
    }
    if (gx) {
        const size_t n = batch * s->n_features;
        double *dst = gx;
        if (acc[0]) {
            if (nn_reserve(&s->g_x, &s->g_x_cap, n))
                return nn_layer_rt_error(l, err, QD_ERR_NOMEM,
                                         "out of memory");
            dst = s->g_x;
        }
        if ((rc = s->enc->encode_backward(s->self[Q_ENC], batch, in[0],
                                          s->g_inputs, dst)))
            return plugin_fail(l, s, Q_ENC, rc, "encode_backward", err);
        if (acc[0])
            for (size_t i = 0; i < n; i++)
                gx[i] += dst[i];
    }
    return QD_OK;
}

static void quantum_destroy(nn_layer *l)
{
    quantum_st *s = l->st;
    if (!s)
        return;
    for (int k = Q_N - 1; k >= 0; k--)
        qd_instance_destroy(s->inst[k]);
    qd_circuit_free(&s->circ);
    qd_obs_spec_free(&s->spec);
    free(s->mats);
    free(s->g_mats);
    free(s->inputs);
    free(s->g_inputs);
    free(s->g_x);
    free(s);
}

void nn_quantum_stats(const nn_layer *l, qd_sim_stats *acc)
{
    const quantum_st *s = l->st;
    if (!s || !s->sim || !s->sim->stats)
        return;
    qd_sim_stats st = {0, 0};
    s->sim->stats(s->self[Q_SIM], &st);
    acc->executions += st.executions;
    acc->shots += st.shots;
}

char *nn_quantum_describe(const nn_layer *l)
{
    const quantum_st *s = l->st;
    return qd_circuit_describe(&s->circ);
}

const nn_layer_vt nn_quantum_vt = {
    quantum_setup, quantum_init, quantum_forward, quantum_backward,
    quantum_destroy, 0,
};
