/* The run engine: distillation (checkpointed, best-by-validation), the
 * evaluation protocol, and the run directory's outputs. */
#define _XOPEN_SOURCE 700   /* realpath */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include "qdistill/ckpt.h"
#include "qdistill/csv.h"
#include "qdistill/evaluate.h"
#include "qdistill/experiment.h"
#include "qdistill/fsutil.h"
#include "qdistill/json.h"
#include "qdistill/log.h"
#include "qdistill/npy.h"
#include "qdistill/png_grid.h"
#include "qdistill/progress.h"
#include "qdistill/run.h"
#include "qdistill/schema.h"
#include "qdistill/train.h"
#include "run_internal.h"

static const qd_param distill_core[] = {
    {.name = "checkpoint_every", .type = QD_PARAM_INT, .def = "100", .flags = QD_PARAM_HAS_MIN,
     .min = 1, .doc = "write a checkpoint every this many outer iterations (and on SIGINT/SIGTERM)"},
    {.name = "validate_every", .type = QD_PARAM_INT, .def = "0", .flags = QD_PARAM_HAS_MIN,
     .min = 0,
     .doc = "score the current set on the validation split every this many iterations "
            "(0 = only at the end); needs dataset.validation > 0"},
    {.name = "validate_models", .type = QD_PARAM_INT, .def = "1", .flags = QD_PARAM_HAS_MIN,
     .min = 1, .doc = "models trained per validation (random init: averaged)"},
    {.name = "keep_best", .type = QD_PARAM_BOOL, .def = "true",
     .doc = "return the set with the best validation accuracy, not the last one"},
    {0},
};

const qd_param *qd_distill_core_schema(void)
{
    return distill_core;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double qd_run_peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

/* ---- typed reads of validated core sections ---- */

int qd_run_key_int(const qd_node *sec, const char *key, long long def, long long *out,
                   qd_error *err)
{
    const qd_node *n = qd_node_get(sec, key);
    if (!n) {
        *out = def;
        return QD_OK;
    }
    return qd_node_as_int(n, out, err);
}

int qd_run_key_double(const qd_node *sec, const char *key, double def, double *out, qd_error *err)
{
    const qd_node *n = qd_node_get(sec, key);
    if (!n) {
        *out = def;
        return QD_OK;
    }
    return qd_node_as_double(n, out, err);
}

int qd_run_key_bool(const qd_node *sec, const char *key, int def, int *out, qd_error *err)
{
    const qd_node *n = qd_node_get(sec, key);
    if (!n) {
        *out = def;
        return QD_OK;
    }
    return qd_node_as_bool(n, out, err);
}

const char *qd_run_key_str(const qd_node *sec, const char *key, const char *def)
{
    const char *s = qd_node_str(qd_node_get(sec, key));
    return s ? s : def;
}

/* Defaults of the core sections come from their schemas (the single source
 * the manifest validation and docs/manifest.md use too); a section the
 * manifest leaves out entirely is read through these. */
static const char *core_def(const qd_param *schema, const char *key)
{
    const qd_param *p = qd_schema_find(schema, key);
    return p && p->def ? p->def : "";
}

static long long def_int(const qd_param *schema, const char *key)
{
    return strtoll(core_def(schema, key), NULL, 10);
}

static int def_bool(const qd_param *schema, const char *key)
{
    return strcmp(core_def(schema, key), "true") == 0;
}

/* ---- synthetic set (de)serialisation for checkpoints ---- */

int qd_run_put_synset(qd_blob *b, const qd_synset *s)
{
    size_t isz = s->channels * s->height * s->width;
    uint64_t hdr[9] = {s->steps, s->epochs, s->per_step, s->channels, s->height,
                       s->width, s->classes, s->n_lrs, (uint64_t)s->init_mode};
    qd_blob_put_u64_array(b, hdr, 9);
    qd_blob_put_f64_array(b, s->images, qd_synset_count(s) * isz);
    qd_blob_put_i32_array(b, s->labels, qd_synset_count(s));
    qd_blob_put_f64_array(b, s->lrs, s->n_lrs);
    return b->failed ? QD_ERR_NOMEM : QD_OK;
}

int qd_run_get_synset(qd_blob_reader *r, qd_synset *s, qd_error *err)
{
    uint64_t h[9];
    int rc = qd_blob_get_u64_array(r, h, 9, err);
    if (rc)
        return rc;
    if (h[0] == 0 || h[2] == 0 || h[3] * h[4] * h[5] == 0 || h[0] > (1u << 20) ||
        h[2] > (1u << 20) || h[7] > (1u << 24))
        return qd_error_set(err, QD_ERR_FORMAT, "checkpoint: implausible synthetic set header");
    if ((rc = qd_synset_alloc(s, h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], err)))
        return rc;
    s->init_mode = (int)h[8];
    size_t isz = s->channels * s->height * s->width;
    if ((rc = qd_blob_get_f64_array(r, s->images, qd_synset_count(s) * isz, err)) ||
        (rc = qd_blob_get_i32_array(r, s->labels, qd_synset_count(s), err)) ||
        (rc = qd_blob_get_f64_array(r, s->lrs, s->n_lrs, err))) {
        qd_synset_free(s);
        return rc;
    }
    return QD_OK;
}

/* ---- the state of a run, as checkpointed ---- */

enum { PHASE_DISTILL = 0, PHASE_EVALUATE = 1, PHASE_DONE = 2 };

typedef struct run_state {
    uint32_t phase;
    uint64_t iteration;        /* next outer iteration */
    uint64_t csv_rows;
    double best_val;           /* -1: none yet */
    uint64_t best_iteration;
    double distill_seconds;    /* accumulated over resumes */
    double evaluate_seconds;
    uint64_t distill_executions;
    int has_best, has_final;
    qd_synset best, final;
    /* evaluation progress */
    uint64_t eval_done_distilled, eval_done_subset, eval_done_untrained;
    double *acc_distilled, *acc_subset, *acc_untrained;
    double tuned_lr, tuned_val;
    int tuned;
    /* the constant lr of a distilled set without learned step sizes */
    double set_lr, set_val;
    int set_tuned;
    uint64_t exec_distilled_training;   /* executions of one evaluation training */
} run_state;

static void state_free(run_state *s)
{
    if (s->has_best)
        qd_synset_free(&s->best);
    if (s->has_final)
        qd_synset_free(&s->final);
    free(s->acc_distilled);
    free(s->acc_subset);
    free(s->acc_untrained);
    memset(s, 0, sizeof *s);
}

typedef struct run_ctx {
    const qd_manifest *m;
    qd_rundir *rd;
    qd_experiment x;
    double *init_params;
    size_t n_params;
    qd_instance *dist;
    const qd_distiller_vt *dvt;
    qd_distill_ctx dctx;
    qd_rng init_rng;
    size_t n_models;           /* evaluate.models */
    volatile int *stop;
    char *ckpt_path;
    /* `qdistill evaluate`: the set comes from the run directory's files and
     * its progress is checkpointed under the resolved manifest (with the
     * evaluate overrides), so a checkpoint of other settings is not resumed */
    const char *eval_key;
    const qd_eval_opts *eval;  /* the evaluate section's recipe (validation
                                  scoring trains the way evaluation does) */
} run_ctx;

static int save_checkpoint(run_ctx *c, run_state *s, qd_error *err)
{
    qd_ckpt_writer *w = NULL;
    int rc = qd_ckpt_writer_create(&w, err);
    if (rc)
        return rc;
    qd_blob meta;
    qd_blob_init(&meta);
    qd_blob_put_u32(&meta, s->phase);
    qd_blob_put_u64(&meta, s->iteration);
    qd_blob_put_u64(&meta, s->csv_rows);
    qd_blob_put_f64(&meta, s->best_val);
    qd_blob_put_u64(&meta, s->best_iteration);
    qd_blob_put_f64(&meta, s->distill_seconds);
    qd_blob_put_f64(&meta, s->evaluate_seconds);
    qd_blob_put_u64(&meta, s->distill_executions);
    qd_blob_put_u32(&meta, (uint32_t)s->has_best);
    qd_blob_put_u32(&meta, (uint32_t)s->has_final);
    if (s->has_best)
        qd_run_put_synset(&meta, &s->best);
    if (s->has_final)
        qd_run_put_synset(&meta, &s->final);
    qd_blob_put_u64(&meta, s->eval_done_distilled);
    qd_blob_put_u64(&meta, s->eval_done_subset);
    qd_blob_put_u64(&meta, s->eval_done_untrained);
    qd_blob_put_u64(&meta, c->n_models);
    qd_blob_put_f64_array(&meta, s->acc_distilled, c->n_models);
    qd_blob_put_f64_array(&meta, s->acc_subset, c->n_models);
    qd_blob_put_f64_array(&meta, s->acc_untrained, c->n_models);
    qd_blob_put_u32(&meta, (uint32_t)s->tuned);
    qd_blob_put_f64(&meta, s->tuned_lr);
    qd_blob_put_f64(&meta, s->tuned_val);
    qd_blob_put_u64(&meta, s->exec_distilled_training);
    /* appended last: checkpoints without it still restore */
    qd_blob_put_u32(&meta, (uint32_t)s->set_tuned);
    qd_blob_put_f64(&meta, s->set_lr);
    qd_blob_put_f64(&meta, s->set_val);
    if (meta.failed)
        rc = qd_error_set(err, QD_ERR_NOMEM, "out of memory writing the checkpoint");
    if (!rc)
        rc = qd_ckpt_writer_add_blob(w, "run", &meta, err);
    qd_blob_free(&meta);
    if (!rc && c->eval_key)
        rc = qd_ckpt_writer_add(w, "evaluation", c->eval_key, strlen(c->eval_key), err);
    if (!rc && c->dist && s->phase == PHASE_DISTILL) {
        /* the plugin's own state, and the two streams the host owns */
        qd_blob d, g;
        qd_blob_init(&d);
        qd_blob_init(&g);
        rc = c->dvt->save(qd_instance_self(c->dist), &d);
        if (rc)
            rc = qd_instance_error(c->dist, rc, err);
        qd_blob_put_rng(&g, c->dctx.rng);
        qd_blob_put_rng(&g, &c->init_rng);
        if (!rc && (d.failed || g.failed))
            rc = qd_error_set(err, QD_ERR_NOMEM, "out of memory writing the checkpoint");
        if (!rc)
            rc = qd_ckpt_writer_add_blob(w, "distiller", &d, err);
        if (!rc)
            rc = qd_ckpt_writer_add_blob(w, "rng", &g, err);
        qd_blob_free(&d);
        qd_blob_free(&g);
    }
    if (!rc)
        rc = qd_ckpt_writer_commit(w, c->ckpt_path, err);
    qd_ckpt_writer_destroy(w);
    return rc;
}

/* Returns 1 when a checkpoint was loaded, 0 when there is none, <0 on error
 * (err set). The distiller section is restored only in the distill phase. */
static int load_checkpoint(run_ctx *c, run_state *s, qd_error *err)
{
    FILE *f = fopen(c->ckpt_path, "rb");
    if (!f)
        return 0;
    fclose(f);
    qd_ckpt *ck = NULL;
    if (qd_ckpt_read(c->ckpt_path, &ck, err) != QD_OK)
        return -1;
    const void *data;
    size_t len;
    if (c->eval_key) {
        /* progress of an evaluation with other settings: start afresh */
        if (!qd_ckpt_has(ck, "evaluation") ||
            qd_ckpt_section(ck, "evaluation", &data, &len, err) != QD_OK ||
            len != strlen(c->eval_key) || memcmp(data, c->eval_key, len) != 0) {
            qd_log(QD_LOG_INFO, "%s: written for other evaluation settings; starting afresh",
                   c->ckpt_path);
            qd_ckpt_destroy(ck);
            return 0;
        }
    }
    int rc = qd_ckpt_section(ck, "run", &data, &len, err);
    qd_blob_reader r;
    uint32_t u;
    uint64_t nm = 0;
    if (!rc) {
        qd_blob_reader_init(&r, data, len);
        rc = qd_blob_get_u32(&r, &s->phase, err);
    }
    if (!rc) rc = qd_blob_get_u64(&r, &s->iteration, err);
    if (!rc) rc = qd_blob_get_u64(&r, &s->csv_rows, err);
    if (!rc) rc = qd_blob_get_f64(&r, &s->best_val, err);
    if (!rc) rc = qd_blob_get_u64(&r, &s->best_iteration, err);
    if (!rc) rc = qd_blob_get_f64(&r, &s->distill_seconds, err);
    if (!rc) rc = qd_blob_get_f64(&r, &s->evaluate_seconds, err);
    if (!rc) rc = qd_blob_get_u64(&r, &s->distill_executions, err);
    if (!rc) { rc = qd_blob_get_u32(&r, &u, err); s->has_best = (int)u; }
    if (!rc) { rc = qd_blob_get_u32(&r, &u, err); s->has_final = (int)u; }
    if (!rc && s->has_best && (rc = qd_run_get_synset(&r, &s->best, err)))
        s->has_best = 0;
    if (!rc && s->has_final && (rc = qd_run_get_synset(&r, &s->final, err)))
        s->has_final = 0;
    if (!rc) rc = qd_blob_get_u64(&r, &s->eval_done_distilled, err);
    if (!rc) rc = qd_blob_get_u64(&r, &s->eval_done_subset, err);
    if (!rc) rc = qd_blob_get_u64(&r, &s->eval_done_untrained, err);
    if (!rc) rc = qd_blob_get_u64(&r, &nm, err);
    if (!rc && nm != c->n_models)
        rc = qd_error_set(err, QD_ERR_FORMAT, "checkpoint: written for %llu evaluation models, "
                          "the manifest asks for %zu", (unsigned long long)nm, c->n_models);
    if (!rc) rc = qd_blob_get_f64_array(&r, s->acc_distilled, c->n_models, err);
    if (!rc) rc = qd_blob_get_f64_array(&r, s->acc_subset, c->n_models, err);
    if (!rc) rc = qd_blob_get_f64_array(&r, s->acc_untrained, c->n_models, err);
    if (!rc) { rc = qd_blob_get_u32(&r, &u, err); s->tuned = (int)u; }
    if (!rc) rc = qd_blob_get_f64(&r, &s->tuned_lr, err);
    if (!rc) rc = qd_blob_get_f64(&r, &s->tuned_val, err);
    if (!rc) rc = qd_blob_get_u64(&r, &s->exec_distilled_training, err);
    if (!rc && r.pos < r.len) {
        rc = qd_blob_get_u32(&r, &u, err);
        s->set_tuned = (int)u;
        if (!rc) rc = qd_blob_get_f64(&r, &s->set_lr, err);
        if (!rc) rc = qd_blob_get_f64(&r, &s->set_val, err);
    }
    if (!rc && s->phase == PHASE_DISTILL && c->dist) {
        rc = qd_ckpt_section(ck, "distiller", &data, &len, err);
        if (!rc) {
            rc = c->dvt->restore(qd_instance_self(c->dist), data, len);
            if (rc)
                rc = qd_instance_error(c->dist, rc, err);
        }
        if (!rc)
            rc = qd_ckpt_section(ck, "rng", &data, &len, err);
        if (!rc) {
            qd_blob_reader g;
            qd_blob_reader_init(&g, data, len);
            rc = qd_blob_get_rng(&g, c->dctx.rng, err);
            if (!rc)
                rc = qd_blob_get_rng(&g, &c->init_rng, err);
        }
    }
    qd_ckpt_destroy(ck);
    return rc ? -1 : 1;
}

/* ---- phases ---- */

static int val_score(run_ctx *c, const qd_synset *s, size_t models, double *acc, qd_error *err)
{
    const qd_dataset *val = &c->x.data.val;
    /* no stop flag: a training cut short here would be scored (as a failure)
     * and checkpointed; the flag is honoured at the end of the iteration */
    qd_eval_opts o = *c->eval;
    o.models = models;
    o.init_mode = s->init_mode;
    o.stop = NULL;
    /* a set without learned step sizes is scored at its best lr of the
     * grid, as it will be evaluated (validation models' index range) */
    if (s->n_lrs == 0) {
        double lr;
        return qd_eval_tune_set_lr(c->x.model, s, val, &o, 200000, models, &lr, acc, err);
    }
    double *w = malloc(c->n_params * sizeof *w);
    if (!w)
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    double sum = 0.0;
    int rc = QD_OK;
    for (size_t i = 0; i < models && !rc; ++i) {
        double a = 0.0;
        /* validation models use their own index range: never the scored ones */
        rc = qd_eval_init(c->x.model, &o, 200000 + i, w, err);
        if (!rc) {
            qd_error e2;
            if (qd_eval_train(c->x.model, s, &o, 0.01, w, &e2) == QD_OK)
                rc = qd_model_accuracy(c->x.model, w, val, o.batch_size, &a, err);
        }
        sum += a;
    }
    free(w);
    *acc = sum / (double)models;
    return rc;
}

static const char *const csv_base_cols[] = {"iteration", "epoch", "loss", "lr_mean", "lr_min",
                                            "lr_max", "val_acc", "seconds"};

static int phase_distill(run_ctx *c, run_state *s, qd_error *err)
{
    const qd_node *sec = qd_manifest_section(c->m, "distill");
    long long ckpt_every, val_every, val_models;
    int keep_best;
    int rc;
    const qd_param *ds = qd_distill_core_schema();
    if ((rc = qd_run_key_int(sec, "checkpoint_every", def_int(ds, "checkpoint_every"),
                             &ckpt_every, err)) ||
        (rc = qd_run_key_int(sec, "validate_every", def_int(ds, "validate_every"), &val_every,
                             err)) ||
        (rc = qd_run_key_int(sec, "validate_models", def_int(ds, "validate_models"),
                             &val_models, err)) ||
        (rc = qd_run_key_bool(sec, "keep_best", def_bool(ds, "keep_best"), &keep_best, err)))
        return rc;
    int have_val = c->x.data.val.n > 0;
    if (val_every > 0 && !have_val)
        return qd_node_error(qd_node_get(sec, "validate_every"), err, QD_ERR_MANIFEST,
                             "validate_every needs a validation split: set dataset.validation");
    uint64_t n_iter = c->dvt->n_iterations(qd_instance_self(c->dist));
    /* the epoch column: iterations x real batch / training set, when the
     * distiller declares a real batch size */
    long long batch = 0;
    const qd_host *dh = qd_instance_host(c->dist);
    if (qd_instance_desc(c->dist)->params &&
        qd_schema_find(qd_instance_desc(c->dist)->params, "batch_size"))
        batch = dh->get_int(dh, "batch_size");
    double per_epoch = batch > 0 ? (double)c->x.data.train.n / (double)batch : 0.0;

    /* metrics.csv: fixed columns, then the distiller's named extras */
    const char *cols[16];
    size_t ncols = 0, n_extra = 0;
    for (size_t i = 0; i < sizeof csv_base_cols / sizeof *csv_base_cols; ++i)
        cols[ncols++] = csv_base_cols[i];
    for (size_t i = 0; i < 4; ++i)
        if (c->dvt->extra_names[i]) {
            cols[ncols++] = c->dvt->extra_names[i];
            n_extra = i + 1;
        }
    char *csv_path = qd_rundir_file(c->rd, "metrics.csv");
    qd_csv *csv = NULL;
    if (c->rd->resumed) {
        /* drop rows written after the checkpoint we resume from */
        FILE *f = fopen(csv_path, "r");
        if (f) {
            fclose(f);
            if ((rc = qd_csv_truncate_rows(csv_path, s->csv_rows, err))) {
                free(csv_path);
                return rc;
            }
        }
    }
    rc = qd_csv_open(csv_path, cols, ncols, &csv, err);
    free(csv_path);
    if (rc)
        return rc;

    if (s->iteration > 0)
        qd_log(QD_LOG_INFO, "resuming distillation at iteration %llu of %llu",
               (unsigned long long)s->iteration, (unsigned long long)n_iter);
    else
        qd_log(QD_LOG_INFO, "distilling: %llu outer iterations with %s",
               (unsigned long long)n_iter, qd_instance_desc(c->dist)->name);
    double t_phase = now_s(), t_log = now_s();
    qd_sim_stats st0;
    qd_model_quantum_stats(c->x.model, &st0);
    uint64_t last_ckpt = s->iteration;
    qd_progress *prog = qd_progress_begin("distill", n_iter, s->iteration, NULL);
    if (s->has_best)
        qd_progress_set_eval(prog, "best val acc", s->best_val);
    for (uint64_t it = s->iteration; it < n_iter; ++it) {
        double t0 = now_s();
        qd_distill_metrics met;
        memset(&met, 0, sizeof met);
        rc = c->dvt->iterate(qd_instance_self(c->dist), &c->dctx, it, &met);
        /* what a numerical failure leaves behind (last_ckpt 0: nothing yet) */
        char kept[96];
        if (last_ckpt)
            snprintf(kept, sizeof kept, "the last good checkpoint, iteration %llu, is kept",
                     (unsigned long long)last_ckpt);
        else
            snprintf(kept, sizeof kept, "no checkpoint was written yet");
        if (rc) {
            rc = qd_instance_error(c->dist, rc, err);
            if (rc == QD_ERR_NUMERIC)
                qd_error_prefix(err, "iteration %llu (%s)", (unsigned long long)it, kept);
            break;
        }
        if (!isfinite(met.loss)) {
            rc = qd_error_set(err, QD_ERR_NUMERIC, "outer loss is %g at iteration %llu; stopping "
                              "(%s)", met.loss, (unsigned long long)it, kept);
            break;
        }
        double val = NAN;
        int last = it + 1 == n_iter;
        if (have_val && ((val_every > 0 && (it + 1) % (uint64_t)val_every == 0) || last)) {
            qd_synset cur;
            if ((rc = c->dvt->result(qd_instance_self(c->dist), &cur))) {
                rc = qd_instance_error(c->dist, rc, err);
                break;
            }
            rc = val_score(c, &cur, (size_t)val_models, &val, err);
            if (!rc && val > s->best_val) {
                if (s->has_best)
                    qd_synset_free(&s->best);
                s->best = cur;
                s->has_best = 1;
                s->best_val = val;
                s->best_iteration = it + 1;
            } else {
                qd_synset_free(&cur);
            }
            if (rc)
                break;
        }
        double row[16];
        size_t k = 0;
        row[k++] = (double)(it + 1);
        row[k++] = per_epoch > 0 ? (double)(it + 1) / per_epoch : NAN;
        row[k++] = met.loss;
        row[k++] = met.lr_mean;
        row[k++] = met.lr_min;
        row[k++] = met.lr_max;
        row[k++] = val;
        row[k++] = now_s() - t0;
        for (size_t i = 0; i < n_extra; ++i)
            row[k++] = met.extra[i];
        if ((rc = qd_csv_row(csv, row, k, err)))
            break;
        s->csv_rows++;
        s->iteration = it + 1;
        qd_progress_set_loss(prog, met.loss);
        if (!isnan(val))
            qd_progress_set_eval(prog, "val acc", val);
        qd_progress_update(prog, s->iteration);
        /* the details behind the progress line, for --verbose and log.txt */
        if (now_s() - t_log > 10.0 || last || it == 0) {
            t_log = now_s();
            if (isnan(val))
                qd_log(QD_LOG_DEBUG, "iteration %llu/%llu  loss %.4f  lr %.4g [%.4g, %.4g]",
                       (unsigned long long)(it + 1), (unsigned long long)n_iter, met.loss,
                       met.lr_mean, met.lr_min, met.lr_max);
            else
                qd_log(QD_LOG_DEBUG, "iteration %llu/%llu  loss %.4f  lr %.4g  val acc %.4f "
                       "(best %.4f at %llu)", (unsigned long long)(it + 1),
                       (unsigned long long)n_iter, met.loss, met.lr_mean, val, s->best_val,
                       (unsigned long long)s->best_iteration);
        }
        int stop = c->stop && *c->stop;
        if (stop || last || (it + 1) % (uint64_t)ckpt_every == 0) {
            qd_sim_stats st;
            qd_model_quantum_stats(c->x.model, &st);
            s->distill_executions += st.executions - st0.executions;
            st0 = st;
            s->distill_seconds += now_s() - t_phase;
            t_phase = now_s();
            if (last) {
                qd_synset fin;
                if ((rc = c->dvt->result(qd_instance_self(c->dist), &fin))) {
                    rc = qd_instance_error(c->dist, rc, err);
                    break;
                }
                if (keep_best && s->has_best) {
                    qd_synset_free(&fin);
                    rc = qd_synset_copy(&s->best, &s->final, err);
                    qd_log(QD_LOG_INFO, "keeping the best set: iteration %llu, validation "
                           "accuracy %.4f", (unsigned long long)s->best_iteration, s->best_val);
                } else {
                    s->final = fin;
                }
                if (rc)
                    break;
                s->has_final = 1;
                s->phase = PHASE_EVALUATE;
            }
            if ((rc = save_checkpoint(c, s, err)))
                break;
            last_ckpt = s->iteration;
            if (stop && !last) {
                rc = qd_error_set(err, QD_ERR_INTERRUPTED,
                                  "interrupted at iteration %llu; checkpoint written, run the "
                                  "same command again to resume",
                                  (unsigned long long)s->iteration);
                break;
            }
        }
    }
    qd_progress_end(prog);
    qd_csv_close(csv);
    return rc;
}

/* synthetic.json: what the .npy arrays do not say — the step structure and
 * the initialisation the set was distilled for — and the directory the
 * manifest's relative paths resolve from, so `qdistill evaluate` can rebuild
 * the set and its experiment from the run directory alone. */
static int write_synset_meta(run_ctx *c, const qd_synset *s, qd_error *err)
{
    qd_json *j;
    int rc = qd_json_create(&j, err);
    if (rc)
        return rc;
    char *mdir = realpath(qd_manifest_dir(c->m), NULL);
    qd_json_begin_object(j);
    qd_json_key(j, "images");
    qd_json_uint(j, qd_synset_count(s));
    qd_json_key(j, "steps");
    qd_json_uint(j, s->steps);
    qd_json_key(j, "epochs");
    qd_json_uint(j, s->epochs);
    qd_json_key(j, "per_step");
    qd_json_uint(j, s->per_step);
    qd_json_key(j, "classes");
    qd_json_uint(j, s->classes);
    qd_json_key(j, "learned_lrs");
    qd_json_uint(j, s->n_lrs);
    qd_json_key(j, "init");
    qd_json_string(j, s->init_mode == QD_INIT_RANDOM ? "random" : "fixed");
    qd_json_key(j, "manifest_dir");
    qd_json_string(j, mdir ? mdir : qd_manifest_dir(c->m));
    qd_json_end_object(j);
    free(mdir);
    char *p = qd_rundir_file(c->rd, "synthetic.json");
    rc = qd_json_write_file(j, p, err);
    free(p);
    qd_json_destroy(j);
    return rc;
}

static int write_synset_files(run_ctx *c, const qd_synset *s, qd_error *err)
{
    size_t n = qd_synset_count(s);
    size_t shape[4] = {n, s->channels, s->height, s->width};
    char *p = qd_rundir_file(c->rd, "synthetic_images.npy");
    int rc = qd_npy_write(p, QD_NPY_F8, shape, 4, s->images, err);
    free(p);
    if (rc)
        return rc;
    p = qd_rundir_file(c->rd, "synthetic_labels.npy");
    rc = qd_npy_write(p, QD_NPY_I4, shape, 1, s->labels, err);
    free(p);
    if (rc)
        return rc;
    size_t lshape[1] = {s->n_lrs};
    p = qd_rundir_file(c->rd, "synthetic_lrs.npy");
    double dummy = 0.0;
    rc = qd_npy_write(p, QD_NPY_F8, lshape, 1, s->n_lrs ? (const void *)s->lrs : &dummy, err);
    free(p);
    if (rc)
        return rc;
    if ((rc = write_synset_meta(c, s, err)))
        return rc;
    /* one row per inner step, one column per image of the step (class-major) */
    unsigned up = s->height < 32 ? 4 : 3;
    p = qd_rundir_file(c->rd, "images.png");
    rc = qd_png_write_grid(p, s->images, n, s->channels, s->height, s->width, s->steps,
                           s->per_step, QD_PNG_SCALE_PER_IMAGE, up, err);
    free(p);
    return rc;
}

static int phase_evaluate(run_ctx *c, run_state *s, qd_eval_opts *o, int baselines,
                          qd_error *err)
{
    const qd_synset *syn = &s->final;
    double *w = malloc(c->n_params * sizeof *w);
    if (!w)
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    int rc = QD_OK;
    double t0 = now_s();
    size_t n_untrained = o->init_mode == QD_INIT_FIXED ? 1 : c->n_models;
    qd_log(QD_LOG_INFO, "evaluating: %zu models on %zu synthetic images, init %s", c->n_models,
           qd_synset_count(syn), o->init_mode == QD_INIT_FIXED ? "fixed" : "random");
    qd_progress_opts po = {.unit = "model"};
    qd_progress *prog = qd_progress_begin("evaluate", (uint64_t)c->n_models * (baselines ? 2 : 1),
                                          s->eval_done_distilled + s->eval_done_subset, &po);
    qd_progress_set_note(prog, s->eval_done_distilled < c->n_models ? "distilled set"
                                                                    : "random subset");
    /* untrained baseline */
    for (size_t i = s->eval_done_untrained; i < n_untrained && !rc; ++i) {
        if (!(rc = qd_eval_init(c->x.model, o, i, w, err)))
            rc = qd_model_accuracy(c->x.model, w, &c->x.data.test, o->batch_size,
                                   &s->acc_untrained[i], err);
        if (!rc)
            s->eval_done_untrained = i + 1;
    }
    /* a set without learned step sizes trains at a constant lr tuned on
     * the validation split (its own index range), like the baseline */
    if (!rc && syn->n_lrs == 0 && !s->set_tuned && s->eval_done_distilled < c->n_models) {
        qd_eval_opts to = *o;
        to.stop = NULL;
        rc = qd_eval_tune_set_lr(c->x.model, syn, &c->x.data.val, &to, 300000,
                                 o->tune_models, &s->set_lr, &s->set_val, err);
        if (!rc) {
            s->set_tuned = 1;
            qd_log(QD_LOG_INFO, "distilled set: lr %g (validation accuracy %.4f)", s->set_lr,
                   s->set_val);
        }
    }
    /* the distilled set */
    for (size_t i = s->eval_done_distilled; i < c->n_models && !rc; ++i) {
        qd_sim_stats a, b;
        qd_model_quantum_stats(c->x.model, &a);
        int diverged = 0;
        if (!(rc = qd_eval_init(c->x.model, o, i, w, err))) {
            if (syn->n_lrs == 0) {
                /* a constant lr picked on one tuning model may diverge on
                 * another init: scored as a failure, as the random-subset
                 * baseline is under the same rule (learned steps that
                 * diverge stay an error: they are the set's own) */
                qd_error e2;
                int tr = qd_eval_train(c->x.model, syn, o, s->set_lr, w, &e2);
                if (tr == QD_ERR_INTERRUPTED) {
                    rc = tr;
                } else if (tr != QD_OK) {
                    diverged = 1;
                    s->acc_distilled[i] = 0.0;
                    qd_log(QD_LOG_WARN, "distilled set, model %zu/%zu: training at lr %g "
                           "failed (%s); scored 0", i + 1, c->n_models, s->set_lr, e2.msg);
                }
            } else {
                rc = qd_eval_train(c->x.model, syn, o, 0.0, w, err);
            }
        }
        qd_model_quantum_stats(c->x.model, &b);
        if (i == 0)
            s->exec_distilled_training = b.executions - a.executions;
        if (!rc && !diverged)
            rc = qd_model_accuracy(c->x.model, w, &c->x.data.test, o->batch_size,
                                   &s->acc_distilled[i], err);
        if (!rc) {
            s->eval_done_distilled = i + 1;
            s->evaluate_seconds += now_s() - t0;
            t0 = now_s();
            rc = save_checkpoint(c, s, err);
            qd_log(QD_LOG_INFO, "  distilled set, model %zu/%zu: test accuracy %.4f", i + 1,
                   c->n_models, s->acc_distilled[i]);
            qd_progress_set_eval(prog, "test acc", s->acc_distilled[i]);
            if (i + 1 == c->n_models)
                qd_progress_set_note(prog, baselines ? "random subset" : NULL);
            qd_progress_update(prog, s->eval_done_distilled + s->eval_done_subset);
        }
        if (!rc && c->stop && *c->stop)
            rc = QD_ERR_INTERRUPTED;
    }
    /* random real subset of the same size, lr tuned on validation */
    if (!rc && baselines) {
        if (!s->tuned) {
            if (c->x.data.val.n == 0) {
                rc = qd_error_set(err, QD_ERR_MANIFEST,
                                  "the random-subset baseline tunes its learning rate on a "
                                  "validation split: set dataset.validation (e.g. 5000), or "
                                  "evaluate.baselines: false");
            } else {
                /* tuning scores a failed training as zero, so it must not be
                 * cut short by the stop flag (which is honoured right after) */
                qd_eval_opts to = *o;
                to.stop = NULL;
                rc = qd_eval_tune_lr(c->x.model, syn, &c->x.data.train, &c->x.data.val, &to,
                                     &s->tuned_lr, &s->tuned_val, err);
                if (!rc) {
                    s->tuned = 1;
                    qd_log(QD_LOG_INFO, "random-subset baseline: lr %g (validation accuracy %.4f)",
                           s->tuned_lr, s->tuned_val);
                }
            }
        }
        for (size_t i = s->eval_done_subset; i < c->n_models && !rc; ++i) {
            qd_synset sub;
            if ((rc = qd_eval_real_subset(syn, &c->x.data.train, o, i, s->tuned_lr, &sub, err)))
                break;
            if (!(rc = qd_eval_init(c->x.model, o, i, w, err))) {
                qd_error e2;
                int tr = qd_eval_train(c->x.model, &sub, o, s->tuned_lr, w, &e2);
                if (tr == QD_OK)
                    rc = qd_model_accuracy(c->x.model, w, &c->x.data.test, o->batch_size,
                                           &s->acc_subset[i], err);
                else if (tr == QD_ERR_INTERRUPTED)
                    rc = tr;                  /* not a result: redone on resume */
                else
                    s->acc_subset[i] = 0.0;   /* diverged: scored as a failure */
            }
            qd_synset_free(&sub);
            if (!rc) {
                s->eval_done_subset = i + 1;
                s->evaluate_seconds += now_s() - t0;
                t0 = now_s();
                rc = save_checkpoint(c, s, err);
                qd_progress_set_eval(prog, "subset acc", s->acc_subset[i]);
                qd_progress_update(prog, s->eval_done_distilled + s->eval_done_subset);
            }
            if (!rc && c->stop && *c->stop)
                rc = QD_ERR_INTERRUPTED;
        }
    }
    s->evaluate_seconds += now_s() - t0;
    free(w);
    qd_progress_end(prog);
    if (rc == QD_ERR_INTERRUPTED) {
        /* every finished model is in the checkpoint; one cut short is redone */
        int r2 = save_checkpoint(c, s, err);
        if (r2)
            return r2;
        rc = qd_error_set(err, QD_ERR_INTERRUPTED,
                          "interrupted during evaluation (%llu of %zu models on the set, %llu of "
                          "%zu baseline models done); checkpoint written, run the same command "
                          "again to resume",
                          (unsigned long long)s->eval_done_distilled, c->n_models,
                          (unsigned long long)s->eval_done_subset, baselines ? c->n_models : 0);
    }
    return rc;
}

static void json_stats(qd_json *j, const char *key, const double *v, size_t n)
{
    double mean, std;
    qd_mean_std(v, n, &mean, &std);
    qd_json_key(j, key);
    qd_json_begin_object(j);
    qd_json_key(j, "test_acc");
    qd_json_number(j, mean);
    qd_json_key(j, "test_acc_std");
    qd_json_number(j, std);
    qd_json_key(j, "models");
    qd_json_uint(j, n);
    qd_json_key(j, "test_accs");
    qd_json_begin_array(j);
    for (size_t i = 0; i < n; ++i)
        qd_json_number(j, v[i]);
    qd_json_end_array(j);
    qd_json_end_object(j);
}

static void json_common(qd_json *j, run_ctx *c)
{
    qd_json_key(j, "name");
    qd_json_string(j, qd_manifest_name(c->m));
    qd_json_key(j, "seed");
    qd_json_uint(j, c->x.seed);
    qd_json_key(j, "threads");
    qd_json_int(j, c->x.threads);
    qd_json_key(j, "dataset");
    qd_json_begin_object(j);
    qd_json_key(j, "plugin");
    qd_json_string(j, c->x.data.name);
    qd_json_key(j, "train");
    qd_json_uint(j, c->x.data.train.n);
    qd_json_key(j, "validation");
    qd_json_uint(j, c->x.data.val.n);
    qd_json_key(j, "test");
    qd_json_uint(j, c->x.data.test.n);
    qd_json_end_object(j);
    qd_json_key(j, "model");
    qd_json_begin_object(j);
    qd_json_key(j, "params");
    qd_json_uint(j, c->n_params);
    qd_json_end_object(j);
}

/* The report of an evaluation (result.json of a run, evaluation*.json of
 * `qdistill evaluate`): what is known of the distillation only when it ran
 * in this run engine's state (iterations, best set, its cost). */
static int write_distill_result(run_ctx *c, run_state *s, const qd_eval_opts *o, int baselines,
                                const char *name, qd_error *err)
{
    int distilled_here = c->eval_key == NULL;
    qd_json *j;
    int rc = qd_json_create(&j, err);
    if (rc)
        return rc;
    const qd_synset *syn = &s->final;
    size_t n_untrained = o->init_mode == QD_INIT_FIXED ? 1 : c->n_models;
    qd_json_begin_object(j);
    json_common(j, c);
    qd_json_key(j, "distiller");
    qd_json_begin_object(j);
    qd_json_key(j, "plugin");
    qd_json_string(j, c->dist ? qd_instance_desc(c->dist)->name
                              : qd_run_key_str(qd_manifest_section(c->m, "distill"), "plugin",
                                               NULL));
    if (distilled_here) {
        qd_json_key(j, "iterations");
        qd_json_uint(j, s->iteration);
    }
    qd_json_key(j, "images");
    qd_json_uint(j, qd_synset_count(syn));
    qd_json_key(j, "steps");
    qd_json_uint(j, syn->steps);
    qd_json_key(j, "epochs");
    qd_json_uint(j, syn->epochs);
    qd_json_key(j, "init");
    qd_json_string(j, syn->init_mode == QD_INIT_FIXED ? "fixed" : "random");
    qd_json_key(j, "evaluate_init");
    qd_json_string(j, o->init_mode == QD_INIT_FIXED ? "fixed" : "random");
    if (distilled_here) {
        qd_json_key(j, "best_iteration");
        if (s->has_best)
            qd_json_uint(j, s->best_iteration);
        else
            qd_json_null(j);
        qd_json_key(j, "best_val_acc");
        if (s->has_best)
            qd_json_number(j, s->best_val);
        else
            qd_json_null(j);
    } else {
        qd_json_key(j, "source");
        qd_json_string(j, "synthetic_images.npy");
    }
    qd_json_key(j, "learned_lrs");
    qd_json_begin_array(j);
    for (size_t t = 0; t < syn->n_lrs; ++t)
        qd_json_number(j, syn->lrs[t]);
    qd_json_end_array(j);
    qd_json_end_object(j);

    json_stats(j, "distilled", s->acc_distilled, c->n_models);
    if (s->set_tuned) {
        qd_json_key(j, "distilled_lr");
        qd_json_number(j, s->set_lr);
        qd_json_key(j, "distilled_lr_val_acc");
        qd_json_number(j, s->set_val);
    }
    qd_json_key(j, "baselines");
    qd_json_begin_object(j);
    json_stats(j, "untrained", s->acc_untrained, n_untrained);
    if (baselines && s->tuned) {
        json_stats(j, "random_subset", s->acc_subset, c->n_models);
        qd_json_key(j, "random_subset_lr");
        qd_json_number(j, s->tuned_lr);
        qd_json_key(j, "random_subset_val_acc");
        qd_json_number(j, s->tuned_val);
    }
    /* the full-data row, from a `qdistill train` result when named */
    const char *full = qd_run_key_str(qd_manifest_section(c->m, "evaluate"), "full_data", NULL);
    if (full && *full) {
        char path[4096];
        if (full[0] == '/')
            snprintf(path, sizeof path, "%s", full);
        else
            snprintf(path, sizeof path, "%s/%s", qd_manifest_dir(c->m), full);
        qd_json_value *fv = NULL;
        double acc;
        if (qd_json_read_file(path, &fv, NULL) == QD_OK &&
            qd_json_get_number(fv, "train.test_acc", &acc, NULL) == QD_OK) {
            qd_json_key(j, "full_data");
            qd_json_begin_object(j);
            qd_json_key(j, "test_acc");
            qd_json_number(j, acc);
            qd_json_key(j, "source");
            qd_json_string(j, full);
            qd_json_end_object(j);
        } else {
            qd_log(QD_LOG_WARN, "evaluate.full_data: cannot read train.test_acc from %s", path);
        }
        qd_json_value_free(fv);
    }
    qd_json_end_object(j);

    /* Quantum cost: executions counted by the simulators while training one
     * evaluation model on the distilled set, against one epoch of the full
     * training set at the same per-sample, per-step cost. */
    size_t steps_done = syn->n_lrs ? syn->n_lrs * syn->per_step
                                   : qd_synset_count(syn) * (o->recipe_epochs ? o->recipe_epochs : 1);
    double per_sample_step = steps_done ? (double)s->exec_distilled_training / (double)steps_done : 0;
    qd_json_key(j, "quantum");
    qd_json_begin_object(j);
    qd_json_key(j, "executions_training_on_distilled");
    qd_json_uint(j, s->exec_distilled_training);
    qd_json_key(j, "executions_per_sample_step");
    qd_json_number(j, per_sample_step);
    qd_json_key(j, "executions_full_data_epoch");
    qd_json_number(j, per_sample_step * (double)(c->x.data.train.n + c->x.data.val.n));
    if (distilled_here) {
        qd_json_key(j, "executions_distillation");
        qd_json_uint(j, s->distill_executions);
    }
    qd_json_end_object(j);

    qd_json_key(j, "time");
    qd_json_begin_object(j);
    if (distilled_here) {
        qd_json_key(j, "distill_s");
        qd_json_number(j, s->distill_seconds);
    }
    qd_json_key(j, "evaluate_s");
    qd_json_number(j, s->evaluate_seconds);
    if (distilled_here) {
        qd_json_key(j, "seconds_per_iteration");
        qd_json_number(j, s->iteration ? s->distill_seconds / (double)s->iteration : NAN);
    }
    qd_json_end_object(j);
    qd_json_key(j, "peak_rss_mb");
    qd_json_number(j, qd_run_peak_rss_mb());
    qd_json_end_object(j);
    char *p = qd_rundir_file(c->rd, name);
    rc = p ? qd_json_write_file(j, p, err) : qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    free(p);
    qd_json_destroy(j);
    return rc;
}

typedef struct train_watch {
    run_ctx *c;
    qd_progress *prog;   /* begun at the first batch, when the total is known */
} train_watch;

static int train_progress(const qd_train_progress *p, void *user)
{
    train_watch *tw = user;
    run_ctx *c = tw->c;
    if (!tw->prog) {
        qd_progress_opts po = {.unit = "batch"};
        tw->prog = qd_progress_begin("train", (uint64_t)p->epochs * p->n_batches,
                                     (uint64_t)p->epoch * p->n_batches, &po);
    }
    qd_progress_set_loss(tw->prog, p->loss);
    if (p->end_of_epoch && !isnan(p->test_acc))
        qd_progress_set_eval(tw->prog, "test acc", p->test_acc);
    qd_progress_set_note(tw->prog, "epoch %zu/%zu", p->epoch + 1, p->epochs);
    qd_progress_update(tw->prog, (uint64_t)p->epoch * p->n_batches +
                                     (p->end_of_epoch ? p->n_batches : p->batch + 1));
    if (p->end_of_epoch)
        qd_log(QD_LOG_INFO, "epoch %zu/%zu  loss %.4f  train acc %.4f  test acc %.4f  lr %.4g",
               p->epoch + 1, p->epochs, p->loss, p->acc, p->test_acc, p->lr);
    return c->stop && *c->stop;
}

static int phase_train(run_ctx *c, qd_error *err)
{
    const qd_node *sec = qd_manifest_section(c->m, "train");
    qd_rng rng;
    qd_rng_derive(&rng, c->x.seed, "train.shuffle");
    qd_train_result res;
    memset(&res, 0, sizeof res);
    double t0 = now_s();
    qd_sim_stats a, b;
    qd_model_quantum_stats(c->x.model, &a);
    qd_log(QD_LOG_INFO, "training on %zu images", c->x.data.train.n);
    train_watch tw = {c, NULL};
    int rc = qd_train(c->x.model, c->init_params, &c->x.data.train, &c->x.data.test, sec, &rng,
                      train_progress, &tw, &res, err);
    qd_progress_end(tw.prog);
    qd_model_quantum_stats(c->x.model, &b);
    double secs = now_s() - t0;
    if (rc) {
        qd_train_result_free(&res);
        if (rc == QD_ERR_INTERRUPTED)
            qd_error_set(err, rc, "training interrupted (full-data training restarts from "
                         "scratch when re-run)");
        return rc;
    }
    if (res.trajectory) {   /* train.save_trajectory: an expert for trajectory matching */
        const size_t shape[2] = {res.epochs_done + 1, c->n_params};
        char *tp = qd_rundir_file(c->rd, "trajectory.npy");
        rc = tp ? qd_npy_write(tp, QD_NPY_F8, shape, 2, res.trajectory, err)
                : qd_error_set(err, QD_ERR_NOMEM, "out of memory");
        free(tp);
        if (rc) {
            qd_train_result_free(&res);
            return rc;
        }
        qd_log(QD_LOG_INFO, "expert trajectory: trajectory.npy (%zu x %zu)", shape[0], shape[1]);
    }
    qd_json *j;
    if ((rc = qd_json_create(&j, err))) {
        qd_train_result_free(&res);
        return rc;
    }
    qd_json_begin_object(j);
    json_common(j, c);
    qd_json_key(j, "train");
    qd_json_begin_object(j);
    qd_json_key(j, "epochs");
    qd_json_uint(j, res.epochs_done);
    qd_json_key(j, "test_acc");
    qd_json_number(j, res.test_acc && res.epochs_done ? res.test_acc[res.epochs_done - 1] : NAN);
    qd_json_key(j, "test_acc_per_epoch");
    qd_json_begin_array(j);
    for (size_t e = 0; res.test_acc && e < res.epochs_done; ++e)
        qd_json_number(j, res.test_acc[e]);
    qd_json_end_array(j);
    qd_json_key(j, "final_train_loss");
    qd_json_number(j, res.final_train_loss);
    qd_json_key(j, "final_train_acc");
    qd_json_number(j, res.final_train_acc);
    qd_json_key(j, "seconds");
    qd_json_number(j, secs);
    qd_json_end_object(j);
    qd_json_key(j, "quantum");
    qd_json_begin_object(j);
    qd_json_key(j, "executions_training");
    qd_json_uint(j, b.executions - a.executions);
    qd_json_end_object(j);
    qd_json_key(j, "peak_rss_mb");
    qd_json_number(j, qd_run_peak_rss_mb());
    qd_json_end_object(j);
    char *p = qd_rundir_file(c->rd, "result.json");
    rc = qd_json_write_file(j, p, err);
    free(p);
    qd_json_destroy(j);
    qd_log(QD_LOG_INFO, "full-data training: test accuracy %.4f after %zu epochs (%.1f s)",
           res.test_acc && res.epochs_done ? res.test_acc[res.epochs_done - 1] : NAN,
           res.epochs_done, secs);
    qd_train_result_free(&res);
    return rc;
}

static int read_eval_opts(run_ctx *c, qd_eval_opts *o, int *baselines, double **grid,
                          qd_error *err)
{
    const qd_node *sec = qd_manifest_section(c->m, "evaluate");
    long long models, batch, tune, repochs, rbatch;
    int rc;
    const qd_param *es = qd_evaluate_schema();
    if ((rc = qd_run_key_int(sec, "models", def_int(es, "models"), &models, err)) ||
        (rc = qd_run_key_int(sec, "batch_size", def_int(es, "batch_size"), &batch, err)) ||
        (rc = qd_run_key_int(sec, "tune_models", def_int(es, "tune_models"), &tune, err)) ||
        (rc = qd_run_key_int(sec, "recipe_epochs", def_int(es, "recipe_epochs"), &repochs,
                             err)) ||
        (rc = qd_run_key_int(sec, "recipe_batch", def_int(es, "recipe_batch"), &rbatch, err)) ||
        (rc = qd_run_key_bool(sec, "baselines", def_bool(es, "baselines"), baselines, err)))
        return rc;
    /* lr_grid: the manifest's list, else the schema's default list */
    qd_config *gdef = NULL;
    const qd_node *g = qd_node_get(sec, "lr_grid");
    if (!g) {
        const char *t = core_def(es, "lr_grid");
        if ((rc = qd_config_load_string(t, strlen(t), "<default lr_grid>", NULL, &gdef, err)))
            return rc;
        g = qd_config_root(gdef);
    }
    size_t ng = qd_node_len(g);
    *grid = malloc((ng ? ng : 1) * sizeof **grid);
    if (!*grid) {
        qd_config_destroy(gdef);
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < ng && !rc; ++i)
        rc = qd_node_as_double(qd_node_at(g, i), &(*grid)[i], err);
    qd_config_destroy(gdef);
    if (rc)
        return rc;
    memset(o, 0, sizeof *o);
    o->models = (size_t)models;
    o->init_params = c->init_params;
    o->seed = c->x.seed;
    o->batch_size = (size_t)batch;
    o->lr_grid = *grid;
    o->n_lr_grid = ng;
    o->tune_models = (size_t)tune;
    o->recipe_epochs = (size_t)repochs;
    o->recipe_batch = (size_t)rbatch;
    o->stop = c->stop;
    const char *init = qd_run_key_str(sec, "init", core_def(es, "init"));
    o->init_mode = strcmp(init, "random") == 0 ? QD_INIT_RANDOM : QD_INIT_FIXED;
    c->n_models = (size_t)models;
    return QD_OK;
}

/* What `run` and `evaluate` share: the experiment (data, model), the fixed
 * initialisation, the evaluation options and the state's score arrays. */
static int ctx_open(run_ctx *c, const qd_manifest *m, const qd_registry *reg, qd_rundir *rd,
                    const qd_run_opts *opts, qd_error *err)
{
    c->m = m;
    c->rd = rd;
    c->stop = opts ? opts->stop : NULL;
    qd_experiment_opts xo = {.load_data = 1, .threads = opts ? opts->threads : 0, .stop = c->stop};
    int rc = qd_experiment_open(&c->x, m, reg, &xo, err);
    if (rc)
        return rc;
    c->n_params = qd_model_n_params(c->x.model);
    c->init_params = malloc(c->n_params * sizeof *c->init_params);
    if (!c->init_params)
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    /* the fixed initialisation: one stream, shared by every phase */
    qd_rng irng;
    qd_rng_derive(&irng, c->x.seed, "model.init");
    if ((rc = qd_model_init_params(c->x.model, &irng, c->init_params, err)))
        return rc;
    return QD_OK;
}

static int state_alloc_scores(run_ctx *c, run_state *s, qd_error *err)
{
    s->acc_distilled = calloc(c->n_models, sizeof(double));
    s->acc_subset = calloc(c->n_models, sizeof(double));
    s->acc_untrained = calloc(c->n_models, sizeof(double));
    if (!s->acc_distilled || !s->acc_subset || !s->acc_untrained)
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    return QD_OK;
}

static void ctx_close(run_ctx *c)
{
    qd_instance_destroy(c->dist);
    free(c->init_params);
    free(c->ckpt_path);
    qd_experiment_close(&c->x);
}

/* The one evaluation path of `run` and `evaluate`: the protocol on
 * s->final (resumable, a checkpoint after every model), then the report
 * (when name is set) and a summary in the log. */
static int evaluate_and_report(run_ctx *c, run_state *s, qd_eval_opts *eo, int baselines,
                               const char *name, qd_error *err)
{
    int rc;
    if (s->phase == PHASE_EVALUATE) {
        if ((rc = phase_evaluate(c, s, eo, baselines, err)))
            return rc;
        s->phase = PHASE_DONE;
        if ((rc = save_checkpoint(c, s, err)))
            return rc;
    }
    if (name && (rc = write_distill_result(c, s, eo, baselines, name, err)))
        return rc;
    double md, sd, ms, ss;
    qd_mean_std(s->acc_distilled, c->n_models, &md, &sd);
    qd_mean_std(s->acc_subset, c->n_models, &ms, &ss);
    qd_log(QD_LOG_INFO, "distilled: test accuracy %.2f%% ± %.2f (%zu models)", 100 * md, 100 * sd,
           c->n_models);
    if (baselines && s->tuned)
        qd_log(QD_LOG_INFO, "random real subset of the same size: %.2f%% ± %.2f", 100 * ms,
               100 * ss);
    return QD_OK;
}

int qd_run_execute(const qd_manifest *m, const qd_registry *reg, qd_rundir *rd,
                   const qd_run_opts *opts, qd_error *err)
{
    run_ctx c;
    memset(&c, 0, sizeof c);
    run_state s;
    memset(&s, 0, sizeof s);
    s.best_val = -1.0;
    double *grid = NULL;
    int rc;
    const qd_node *dsec = qd_manifest_section(m, "distill");
    const qd_node *tsec = qd_manifest_section(m, "train");
    int train_only = opts && opts->train_only;
    if (train_only && !tsec)
        return qd_error_set(err, QD_ERR_MANIFEST, "%s: the manifest has no 'train' section",
                            qd_manifest_path(m));
    if (!dsec && !tsec)
        return qd_error_set(err, QD_ERR_MANIFEST,
                            "%s: nothing to run: the manifest has neither 'distill' nor 'train'",
                            qd_manifest_path(m));

    if ((rc = ctx_open(&c, m, reg, rd, opts, err)))
        goto out;
    c.ckpt_path = qd_rundir_file(rd, "checkpoint.qdc");
    if (!c.ckpt_path) {
        rc = qd_error_set(err, QD_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (!dsec || train_only) {
        rc = phase_train(&c, err);
        goto out;
    }

    qd_eval_opts eo;
    int baselines = 1;
    if ((rc = read_eval_opts(&c, &eo, &baselines, &grid, err)) ||
        (rc = state_alloc_scores(&c, &s, err)))
        goto out;
    c.eval = &eo;

    qd_instance_opts io = {.seed = c.x.seed, .stream = "distill", .threads = c.x.threads,
                           .base_dir = qd_manifest_dir(m), .stop_flag = c.stop};
    if ((rc = qd_instance_create(reg, QD_KIND_DISTILLER, dsec, &io, &c.dist, err)))
        goto out;
    c.dvt = qd_instance_vtable(c.dist);
    qd_rng_derive(&c.init_rng, c.x.seed, "distill.init");
    c.dctx.struct_size = sizeof c.dctx;
    c.dctx.model = c.x.model;
    c.dctx.train = &c.x.data.train;
    c.dctx.val = &c.x.data.val;
    c.dctx.init_params = c.init_params;
    c.dctx.n_params = c.n_params;
    c.dctx.rng = qd_instance_host(c.dist)->rng(qd_instance_host(c.dist));
    c.dctx.init_rng = &c.init_rng;
    c.dctx.threads = c.x.threads;
    c.dctx.run_dir = rd->path;
    if ((rc = c.dvt->start(qd_instance_self(c.dist), &c.dctx))) {
        rc = qd_instance_error(c.dist, rc, err);
        goto out;
    }
    int loaded = rd->resumed ? load_checkpoint(&c, &s, err) : 0;
    if (loaded < 0) {
        rc = err->code ? err->code : QD_ERR_FORMAT;
        qd_error_prefix(err, "cannot resume %s", rd->path);
        goto out;
    }
    if (s.phase == PHASE_DISTILL && (rc = phase_distill(&c, &s, err)))
        goto out;
    /* a finished run re-run: its result stands as written */
    int fresh = s.phase == PHASE_EVALUATE;
    if (fresh && (rc = write_synset_files(&c, &s.final, err)))
        goto out;
    char *rpath = qd_rundir_file(rd, "result.json");
    struct stat st;
    int have = !fresh && loaded > 0 && rpath && stat(rpath, &st) == 0;
    free(rpath);
    rc = evaluate_and_report(&c, &s, &eo, baselines, have ? NULL : "result.json", err);
out:
    state_free(&s);
    free(grid);
    ctx_close(&c);
    return rc;
}

/* ---- `qdistill evaluate`: the set of a run directory, evaluated again ---- */

static int read_npy(const qd_rundir *rd, const char *name, qd_npy_dtype dtype, size_t ndim,
                    qd_npy *a, qd_error *err)
{
    char *p = qd_rundir_file(rd, name);
    if (!p)
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    struct stat st;
    int rc;
    if (stat(p, &st) != 0) {
        rc = qd_error_set(err, QD_ERR_IO, "%s: no such file: %s holds no distilled set (has "
                          "its distillation finished?)", p, rd->path);
    } else if ((rc = qd_npy_read(p, a, err)) == QD_OK &&
               (a->dtype != dtype || a->ndim != ndim)) {
        rc = qd_error_set(err, QD_ERR_FORMAT, "%s: expected a %zu-d '%s' array, found a %zu-d "
                          "'%s' one", p, ndim, qd_npy_dtype_descr(dtype), a->ndim,
                          qd_npy_dtype_descr(a->dtype));
        qd_npy_free(a);
    }   /* qd_npy_read's own errors already name the file */
    free(p);
    return rc;
}

/* A size_t field of synthetic.json (absent file: def). */
static int meta_uint(const qd_json_value *v, const char *key, size_t def, size_t *out,
                     const char *path, qd_error *err)
{
    if (!v) {
        *out = def;
        return QD_OK;
    }
    double d;
    if (qd_json_get_number(v, key, &d, NULL) != QD_OK || !(d >= 0) || d > 1e12 ||
        d != floor(d))
        return qd_error_set(err, QD_ERR_FORMAT, "%s: '%s' is missing or not a count", path, key);
    *out = (size_t)d;
    return QD_OK;
}

/* The synthetic set from synthetic_{images,labels,lrs}.npy, its step
 * structure and init mode from synthetic.json (or, in run directories
 * written before it existed, the resolved manifest's distill section),
 * checked against the experiment's input shape and classes. */
static int load_synset_files(run_ctx *c, qd_synset *out, qd_error *err)
{
    qd_npy im = {0}, lb = {0}, lr = {0};
    qd_json_value *meta = NULL;
    char *mpath = qd_rundir_file(c->rd, "synthetic.json");
    char *ipath = qd_rundir_file(c->rd, "synthetic_images.npy");
    char *lpath = qd_rundir_file(c->rd, "synthetic_labels.npy");
    char *rpath = qd_rundir_file(c->rd, "synthetic_lrs.npy");
    int rc = QD_OK;
    struct stat st;
    if (!mpath || !ipath || !lpath || !rpath) {
        rc = qd_error_set(err, QD_ERR_NOMEM, "out of memory");
        goto out;
    }
    if ((rc = read_npy(c->rd, "synthetic_images.npy", QD_NPY_F8, 4, &im, err)) ||
        (rc = read_npy(c->rd, "synthetic_labels.npy", QD_NPY_I4, 1, &lb, err)) ||
        (rc = read_npy(c->rd, "synthetic_lrs.npy", QD_NPY_F8, 1, &lr, err)))
        goto out;
    if (stat(mpath, &st) == 0 && (rc = qd_json_read_file(mpath, &meta, err))) {
        qd_error_prefix(err, "%s", mpath);
        goto out;
    }
    size_t n = im.shape[0];
    if (n == 0 || im.shape[1] != c->x.channels || im.shape[2] != c->x.height ||
        im.shape[3] != c->x.width) {
        rc = qd_error_set(err, QD_ERR_FORMAT, "%s: shape (%zu, %zu, %zu, %zu) does not fit the "
                          "model's input (N, %zu, %zu, %zu)", ipath, im.shape[0], im.shape[1],
                          im.shape[2], im.shape[3], c->x.channels, c->x.height, c->x.width);
        goto out;
    }
    if (lb.shape[0] != n) {
        rc = qd_error_set(err, QD_ERR_FORMAT, "%s: %zu labels for %zu images (%s)", lpath,
                          lb.shape[0], n, ipath);
        goto out;
    }
    const qd_node *dsec = qd_manifest_section(c->m, "distill");
    long long dsteps = 1;
    if ((rc = qd_run_key_int(dsec, "steps", 1, &dsteps, err)))
        goto out;
    size_t steps = 0, epochs = 0, per_step = 0, classes = 0;
    if ((rc = meta_uint(meta, "steps", dsteps > 0 ? (size_t)dsteps : 1, &steps, mpath, err)) ||
        (rc = meta_uint(meta, "per_step", steps ? n / steps : 0, &per_step, mpath, err)) ||
        (rc = meta_uint(meta, "epochs", steps ? lr.count / steps : 0, &epochs, mpath, err)) ||
        (rc = meta_uint(meta, "classes", c->x.classes, &classes, mpath, err)))
        goto out;
    if (steps == 0 || steps * per_step != n ||
        (lr.count && (epochs == 0 || lr.count != steps * epochs))) {
        rc = qd_error_set(err, QD_ERR_FORMAT, "%s: %zu images and %zu learning rates do not "
                          "make %zu steps of %zu images over %zu epochs (%s)", ipath, n, lr.count,
                          steps, per_step, epochs, meta ? mpath : "distill.steps");
        goto out;
    }
    if (classes != c->x.classes) {
        rc = qd_error_set(err, QD_ERR_FORMAT, "%s: a set of %zu classes, the data set has %zu",
                          mpath, classes, c->x.classes);
        goto out;
    }
    const int32_t *labels = lb.data;
    for (size_t i = 0; i < n; ++i)
        if (labels[i] < 0 || (size_t)labels[i] >= classes) {
            rc = qd_error_set(err, QD_ERR_FORMAT, "%s: label %zu is %d, outside 0..%zu", lpath,
                              i, (int)labels[i], classes - 1);
            goto out;
        }
    const double *x = im.data, *l = lr.data;
    for (size_t i = 0; i < im.count; ++i)
        if (!isfinite(x[i])) {
            rc = qd_error_set(err, QD_ERR_NUMERIC, "%s: element %zu is %g", ipath, i, x[i]);
            goto out;
        }
    for (size_t i = 0; i < lr.count; ++i)
        if (!isfinite(l[i])) {
            rc = qd_error_set(err, QD_ERR_NUMERIC, "%s: element %zu is %g", rpath, i, l[i]);
            goto out;
        }
    /* the init mode the set was distilled for */
    const char *init = NULL;
    if (meta && qd_json_get_string(meta, "init", &init, NULL) != QD_OK) {
        rc = qd_error_set(err, QD_ERR_FORMAT, "%s: 'init' is missing", mpath);
        goto out;
    }
    if (!init)
        init = qd_run_key_str(dsec, "model_init", "fixed");
    if (strcmp(init, "fixed") != 0 && strcmp(init, "random") != 0) {
        rc = qd_error_set(err, QD_ERR_FORMAT, "%s: init '%s' is neither fixed nor random",
                          meta ? mpath : "distill.model_init", init);
        goto out;
    }
    if ((rc = qd_synset_alloc(out, steps, epochs, per_step, c->x.channels, c->x.height,
                              c->x.width, classes, lr.count, err)))
        goto out;
    out->init_mode = strcmp(init, "random") == 0 ? QD_INIT_RANDOM : QD_INIT_FIXED;
    memcpy(out->images, x, im.count * sizeof *x);
    memcpy(out->labels, labels, n * sizeof *labels);
    if (lr.count)
        memcpy(out->lrs, l, lr.count * sizeof *l);
out:
    qd_npy_free(&im);
    qd_npy_free(&lb);
    qd_npy_free(&lr);
    qd_json_value_free(meta);
    free(mpath);
    free(ipath);
    free(lpath);
    free(rpath);
    return rc;
}

int qd_run_evaluate(const qd_manifest *m, const qd_registry *reg, qd_rundir *rd,
                    const char *name, const qd_run_opts *opts, qd_error *err)
{
    run_ctx c;
    memset(&c, 0, sizeof c);
    run_state s;
    memset(&s, 0, sizeof s);
    s.best_val = -1.0;
    double *grid = NULL;
    char *key = NULL;
    qd_synset set;
    memset(&set, 0, sizeof set);
    int have_set = 0, rc;
    size_t nl = name ? strlen(name) : 0;
    if (nl < 6 || strcmp(name + nl - 5, ".json") != 0 || strchr(name, '/'))
        return qd_error_set(err, QD_ERR_INVALID, "evaluation output '%s': expected a file name "
                            "ending in .json", name ? name : "(null)");
    if (!qd_manifest_section(m, "distill"))
        return qd_error_set(err, QD_ERR_MANIFEST, "%s: not a distillation run (the manifest has "
                            "no 'distill' section)", qd_manifest_path(m));
    if ((rc = ctx_open(&c, m, reg, rd, opts, err)))
        goto out;
    /* progress goes to <name>.qdc, next to the output, removed when done */
    char ck[512];
    snprintf(ck, sizeof ck, "%.*s.qdc", (int)(nl - 5), name);
    c.ckpt_path = qd_rundir_file(rd, ck);
    key = qd_manifest_to_yaml(m);
    c.eval_key = key;
    if (!c.ckpt_path || !key) {
        rc = qd_error_set(err, QD_ERR_NOMEM, "out of memory");
        goto out;
    }
    qd_eval_opts eo;
    int baselines = 1;
    if ((rc = read_eval_opts(&c, &eo, &baselines, &grid, err)) ||
        (rc = state_alloc_scores(&c, &s, err)) || (rc = load_synset_files(&c, &set, err)))
        goto out;
    have_set = 1;
    int loaded = load_checkpoint(&c, &s, err);
    if (loaded < 0) {
        rc = err->code ? err->code : QD_ERR_FORMAT;
        qd_error_prefix(err, "cannot resume the evaluation from %s", c.ckpt_path);
        goto out;
    }
    if (loaded == 0) {
        s.phase = PHASE_EVALUATE;
    } else {
        qd_log(QD_LOG_INFO, "resuming the evaluation from %s", c.ckpt_path);
        if (s.has_final)
            qd_synset_free(&s.final);
        if (s.has_best)
            qd_synset_free(&s.best);
        s.has_final = s.has_best = 0;
    }
    /* the set under evaluation is the one in the files */
    s.final = set;
    s.has_final = 1;
    have_set = 0;
    if ((rc = evaluate_and_report(&c, &s, &eo, baselines, name, err)))
        goto out;
    if (remove(c.ckpt_path) != 0)
        qd_log(QD_LOG_WARN, "cannot remove %s", c.ckpt_path);
out:
    if (have_set)
        qd_synset_free(&set);
    state_free(&s);
    free(grid);
    free(key);
    ctx_close(&c);
    return rc;
}
