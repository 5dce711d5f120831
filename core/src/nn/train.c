/* Mini-batch training and accuracy evaluation. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn_internal.h"
#include "qdistill/manifest.h"
#include "qdistill/train.h"

/* The default of a key of the `train` schema (manifest_schema.c), so that
 * a section read here and one filled in by manifest validation agree. */
static double schema_default(const char *key, double fallback)
{
    for (const qd_param *p = qd_train_schema(); p && p->name; p++)
        if (strcmp(p->name, key) == 0 && p->def)
            return strtod(p->def, NULL);
    return fallback;
}

void qd_train_config_default(qd_train_config *c)
{
    memset(c, 0, sizeof *c);
    const qd_param *opt = qd_schema_find(qd_train_schema(), "optimizer");
    c->optimizer = opt && opt->def && strcmp(opt->def, "adam") == 0
                       ? QD_OPT_ADAM
                       : QD_OPT_SGD;
    c->lr = schema_default("lr", 0.01);
    c->momentum = schema_default("momentum", 0.9);
    c->weight_decay = schema_default("weight_decay", 0.0);
    c->epochs = (size_t)schema_default("epochs", 10);
    c->batch_size = (size_t)schema_default("batch_size", 64);
    c->lr_decay_every = (size_t)schema_default("lr_decay_every", 0);
    c->lr_decay_factor = schema_default("lr_decay_factor", 0.5);
    c->clip_grad = schema_default("clip_grad", 0.0);
    c->eval_batch_size = (size_t)schema_default("eval_batch_size", 1000);
    const qd_param *st = qd_schema_find(qd_train_schema(), "save_trajectory");
    c->save_trajectory = st && st->def && strcmp(st->def, "true") == 0;
}

/* key in [lo, hi] (hi_open: < hi); absent keys keep *out. */
static int read_num(const qd_node *sec, const char *key, double lo, double hi,
                    int hi_open, double *out, qd_error *err)
{
    const qd_node *n = qd_node_get(sec, key);
    if (!n)
        return QD_OK;
    double v;
    int rc = qd_node_as_double(n, &v, err);
    if (rc)
        return rc;
    if (!isfinite(v) || v < lo || (hi_open ? v >= hi : v > hi))
        return qd_node_error(n, err, QD_ERR_INVALID,
                             "train.%s = %g: must be in [%g, %g%s", key, v,
                             lo, hi, hi_open ? ")" : "]");
    *out = v;
    return QD_OK;
}

static int read_count(const qd_node *sec, const char *key, long long lo,
                      size_t *out, qd_error *err)
{
    const qd_node *n = qd_node_get(sec, key);
    if (!n)
        return QD_OK;
    long long v;
    int rc = qd_node_as_int(n, &v, err);
    if (rc)
        return rc;
    if (v < lo || v > (1LL << 40))
        return qd_node_error(n, err, QD_ERR_INVALID,
                             "train.%s = %lld: must be >= %lld", key, v, lo);
    *out = (size_t)v;
    return QD_OK;
}

int qd_train_config_read(const qd_node *sec, qd_train_config *c,
                         qd_error *err)
{
    qd_train_config_default(c);
    if (!sec)
        return QD_OK;
    if (qd_node_kind(sec) != QD_NODE_MAP)
        return qd_node_error(sec, err, QD_ERR_INVALID,
                             "train: expected a mapping");
    const qd_node *opt = qd_node_get(sec, "optimizer");
    if (opt) {
        const char *s = qd_node_str(opt);
        if (s && strcmp(s, "sgd") == 0)
            c->optimizer = QD_OPT_SGD;
        else if (s && strcmp(s, "adam") == 0)
            c->optimizer = QD_OPT_ADAM;
        else
            return qd_node_error(opt, err, QD_ERR_INVALID,
                                 "train.optimizer '%s': expected sgd or adam",
                                 s ? s : "?");
    }
    int rc;
    if ((rc = read_num(sec, "lr", 0.0, 1e6, 0, &c->lr, err)) ||
        (rc = read_num(sec, "momentum", 0.0, 1.0, 1, &c->momentum, err)) ||
        (rc = read_num(sec, "weight_decay", 0.0, 1e6, 0, &c->weight_decay,
                       err)) ||
        (rc = read_count(sec, "epochs", 1, &c->epochs, err)) ||
        (rc = read_count(sec, "batch_size", 1, &c->batch_size, err)) ||
        (rc = read_count(sec, "lr_decay_every", 0, &c->lr_decay_every,
                         err)) ||
        (rc = read_num(sec, "lr_decay_factor", 0.0, 1.0, 0,
                       &c->lr_decay_factor, err)) ||
        (rc = read_num(sec, "clip_grad", 0.0, INFINITY, 1, &c->clip_grad,
                       err)) ||
        (rc = read_count(sec, "eval_batch_size", 1, &c->eval_batch_size,
                         err)))
        return rc;
    const qd_node *st = qd_node_get(sec, "save_trajectory");
    if (st && (rc = qd_node_as_bool(st, &c->save_trajectory, err)))
        return rc;
    return QD_OK;
}

void qd_train_result_free(qd_train_result *r)
{
    if (!r)
        return;
    free(r->test_acc);
    free(r->trajectory);
    memset(r, 0, sizeof *r);
}

static int check_set(const qd_model *m, const qd_dataset *d, const char *what,
                     qd_error *err)
{
    if (!d || !d->images || !d->labels || d->n == 0)
        return qd_error_set(err, QD_ERR_INVALID, "%s set is empty", what);
    if (qd_dataset_sample_size(d) != qd_model_input_size(m))
        return qd_error_set(err, QD_ERR_INVALID,
                            "%s set '%s' has samples of %zu x %zu x %zu = "
                            "%zu values; the model takes %zu", what, d->name,
                            d->channels, d->height, d->width,
                            qd_dataset_sample_size(d),
                            qd_model_input_size(m));
    if (d->classes > qd_model_n_classes(m))
        return qd_error_set(err, QD_ERR_INVALID,
                            "%s set '%s' has %zu classes; the model outputs "
                            "%zu", what, d->name, d->classes,
                            qd_model_n_classes(m));
    return QD_OK;
}

static size_t count_correct(const double *logits, const int32_t *y,
                            size_t batch, size_t C)
{
    size_t ok = 0;
    for (size_t b = 0; b < batch; b++) {
        const double *z = logits + b * C;
        size_t best = 0;
        for (size_t k = 1; k < C; k++)
            if (z[k] > z[best])
                best = k;
        ok += (int32_t)best == y[b];
    }
    return ok;
}

/* Non-finite logits would make argmax pick class 0 and the accuracy a
 * made-up number: refuse them, naming the parameter block that is not
 * finite when there is one. */
static int check_logits(const qd_model *m, const double *params,
                        const double *logits, size_t cnt, size_t at,
                        qd_error *err)
{
    const size_t C = qd_model_n_classes(m);
    size_t bad = cnt * C;
    for (size_t i = 0; i < cnt * C && bad == cnt * C; i++)
        if (!isfinite(logits[i]))
            bad = i;
    if (bad == cnt * C)
        return QD_OK;
    for (size_t k = 0; k < qd_model_n_blocks(m); k++) {
        const qd_param_block *b = qd_model_block(m, k);
        for (size_t i = 0; i < b->count; i++)
            if (!isfinite(params[b->offset + i]))
                return qd_error_set(err, QD_ERR_NUMERIC,
                                    "accuracy: the logits of sample %zu are "
                                    "not finite: '%s' of layer '%s' (entry "
                                    "%zu) is %g", at + bad / C, b->what,
                                    b->layer, i, params[b->offset + i]);
    }
    return qd_error_set(err, QD_ERR_NUMERIC,
                        "accuracy: the logits of sample %zu are not finite "
                        "(with finite parameters)", at + bad / C);
}

int qd_model_accuracy(qd_model *m, const double *params,
                      const qd_dataset *set, size_t batch_size, double *acc,
                      qd_error *err)
{
    if (!m || !acc)
        return qd_error_set(err, QD_ERR_INVALID,
                            "accuracy: model and acc are required");
    int rc = check_set(m, set, "evaluation", err);
    if (rc)
        return rc;
    const size_t C = qd_model_n_classes(m), S = qd_dataset_sample_size(set);
    if (batch_size == 0)
        batch_size = 1000;
    if (batch_size > set->n)
        batch_size = set->n;
    double *logits = malloc(batch_size * C * sizeof *logits);
    if (!logits)
        return qd_error_set(err, QD_ERR_NOMEM, "accuracy: out of memory");
    size_t ok = 0;
    for (size_t at = 0; at < set->n && !rc; at += batch_size) {
        size_t cnt = set->n - at < batch_size ? set->n - at : batch_size;
        rc = qd_model_forward(m, params, cnt, set->images + at * S, logits,
                              err);
        if (!rc)
            rc = check_logits(m, params, logits, cnt, at, err);
        if (!rc)
            ok += count_correct(logits, set->labels + at, cnt, C);
    }
    free(logits);
    if (!rc)
        *acc = (double)ok / (double)set->n;
    return rc;
}

/* Name the first parameter block whose gradient is not finite. */
static int check_grad(const qd_model *m, const double *g, size_t epoch,
                      size_t batch, qd_error *err)
{
    for (size_t k = 0; k < qd_model_n_blocks(m); k++) {
        const qd_param_block *b = qd_model_block(m, k);
        for (size_t i = 0; i < b->count; i++)
            if (!isfinite(g[b->offset + i]))
                return qd_error_set(err, QD_ERR_NUMERIC,
                                    "train: non-finite gradient of '%s' in "
                                    "layer '%s' (entry %zu) at epoch %zu, "
                                    "batch %zu", b->what, b->layer, i,
                                    epoch + 1, batch + 1);
    }
    return QD_OK;
}

typedef struct train_bufs {
    size_t *idx;
    double *x, *grad, *logits;
    int32_t *y;
} train_bufs;

static void free_bufs(train_bufs *b)
{
    free(b->idx);
    free(b->x);
    free(b->grad);
    free(b->logits);
    free(b->y);
}

int qd_train_run(qd_model *m, double *params, const qd_dataset *train,
                 const qd_dataset *test, const qd_train_config *cfg,
                 qd_rng *rng, qd_train_progress_fn progress, void *user,
                 qd_train_result *res, qd_error *err)
{
    if (res)
        memset(res, 0, sizeof *res);
    if (!m || !params || !cfg || !rng)
        return qd_error_set(err, QD_ERR_INVALID,
                            "train: model, params, config and rng are "
                            "required");
    int rc = check_set(m, train, "training", err);
    if (!rc && test)
        rc = check_set(m, test, "test", err);
    if (rc)
        return rc;
    if (cfg->epochs == 0 || cfg->batch_size == 0 || !(cfg->lr > 0.0))
        return qd_error_set(err, QD_ERR_INVALID,
                            "train: epochs, batch_size and lr must be > 0");
    const size_t n = train->n, S = qd_dataset_sample_size(train);
    const size_t C = qd_model_n_classes(m), P = qd_model_n_params(m);
    const size_t bs = cfg->batch_size < n ? cfg->batch_size : n;
    const size_t n_batches = (n + bs - 1) / bs;
    volatile int *stop = nn_model_stop_flag(m);

    train_bufs B = {0};
    B.idx = malloc(n * sizeof *B.idx);
    B.x = malloc(bs * S * sizeof *B.x);
    B.y = malloc(bs * sizeof *B.y);
    B.grad = malloc((P ? P : 1) * sizeof *B.grad);
    B.logits = malloc(bs * C * sizeof *B.logits);
    double *test_acc = test ? malloc(cfg->epochs * sizeof *test_acc) : NULL;
    /* (epochs + 1) x P; only a result can hand it back */
    double *traj = NULL;
    int traj_oom = 0;
    if (cfg->save_trajectory && res) {
        traj_oom = cfg->epochs >= SIZE_MAX / sizeof *traj / (P ? P : 1) ||
                   !(traj = malloc((cfg->epochs + 1) * (P ? P : 1) *
                                   sizeof *traj));
        if (traj)
            memcpy(traj, params, P * sizeof *traj);
    }
    qd_sgd sgd = {0};
    qd_adam adam = {0};
    if (traj_oom)
        rc = qd_error_set(err, QD_ERR_NOMEM,
                          "train: out of memory for the trajectory of %zu "
                          "epochs x %zu parameters", cfg->epochs, P);
    else if (!B.idx || !B.x || !B.y || !B.grad || !B.logits ||
             (test && !test_acc))
        rc = qd_error_set(err, QD_ERR_NOMEM, "train: out of memory");
    else if (cfg->optimizer == QD_OPT_SGD)
        rc = qd_sgd_init(&sgd, P, cfg->momentum, cfg->weight_decay, err);
    else
        rc = qd_adam_init(&adam, P, cfg->momentum, 0.999, 1e-8,
                          cfg->weight_decay, err);
    for (size_t i = 0; !rc && i < n; i++)
        B.idx[i] = i;

    double epoch_loss = NAN, epoch_acc = NAN;
    size_t epoch = 0;
    for (; !rc && epoch < cfg->epochs; epoch++) {
        double lr = cfg->lr;
        if (cfg->lr_decay_every)
            lr *= pow(cfg->lr_decay_factor,
                      (double)(epoch / cfg->lr_decay_every));
        qd_rng_shuffle(rng, B.idx, n);
        qd_model_set_training(m, 1);
        double loss_sum = 0.0;
        size_t correct = 0;
        for (size_t k = 0; !rc && k < n_batches; k++) {
            size_t at = k * bs, cnt = n - at < bs ? n - at : bs;
            for (size_t j = 0; j < cnt; j++) {
                size_t src = B.idx[at + j];
                memcpy(B.x + j * S, train->images + src * S, S * sizeof *B.x);
                B.y[j] = train->labels[src];
            }
            double loss;
            rc = qd_model_loss_grad(m, params, cnt, B.x, B.y, &loss, B.grad,
                                    NULL, B.logits, err);
            if (rc) {
                qd_error_prefix(err, "train: epoch %zu, batch %zu",
                                epoch + 1, k + 1);
                break;
            }
            if ((rc = check_grad(m, B.grad, epoch, k, err)))
                break;
            if (cfg->clip_grad > 0.0)
                qd_clip_grad_norm(B.grad, P, cfg->clip_grad);
            if (cfg->optimizer == QD_OPT_SGD)
                qd_sgd_step(&sgd, params, B.grad, lr);
            else
                qd_adam_step(&adam, params, B.grad, lr);
            size_t ok = count_correct(B.logits, B.y, cnt, C);
            loss_sum += loss * (double)cnt;
            correct += ok;
            if (progress) {
                qd_train_progress p = {epoch, cfg->epochs, k, n_batches,
                                       loss, (double)ok / (double)cnt, NAN,
                                       lr, 0};
                if (progress(&p, user))
                    rc = qd_error_set(err, QD_ERR_INTERRUPTED,
                                      "train: stopped at epoch %zu, batch "
                                      "%zu", epoch + 1, k + 1);
            }
            if (!rc && stop && *stop)
                rc = qd_error_set(err, QD_ERR_INTERRUPTED,
                                  "train: interrupted at epoch %zu, batch "
                                  "%zu", epoch + 1, k + 1);
        }
        qd_model_set_training(m, 0);
        if (rc)
            break;
        if (traj)
            memcpy(traj + (epoch + 1) * P, params, P * sizeof *traj);
        epoch_loss = loss_sum / (double)n;
        epoch_acc = (double)correct / (double)n;
        double tacc = NAN;
        if (test) {
            rc = qd_model_accuracy(m, params, test, cfg->eval_batch_size,
                                   &tacc, err);
            if (rc)
                break;
            test_acc[epoch] = tacc;
        }
        if (progress) {
            qd_train_progress p = {epoch, cfg->epochs, n_batches, n_batches,
                                   epoch_loss, epoch_acc, tacc, lr, 1};
            if (progress(&p, user) && epoch + 1 < cfg->epochs) {
                epoch++;
                rc = qd_error_set(err, QD_ERR_INTERRUPTED,
                                  "train: stopped after epoch %zu", epoch);
                break;
            }
        }
    }
    if (res) {
        res->epochs_done = epoch;
        res->final_train_loss = epoch_loss;
        res->final_train_acc = epoch_acc;
        res->test_acc = test_acc;
        test_acc = NULL;
        res->trajectory = traj;
        traj = NULL;
    }
    free(test_acc);
    free(traj);
    free_bufs(&B);
    qd_sgd_free(&sgd);
    qd_adam_free(&adam);
    return rc;
}

int qd_train(qd_model *m, double *params, const qd_dataset *train,
             const qd_dataset *test, const qd_node *train_cfg, qd_rng *rng,
             qd_train_progress_fn progress, void *user, qd_train_result *res,
             qd_error *err)
{
    qd_train_config cfg;
    int rc = qd_train_config_read(train_cfg, &cfg, err);
    if (rc)
        return rc;
    return qd_train_run(m, params, train, test, &cfg, rng, progress, user,
                        res, err);
}
