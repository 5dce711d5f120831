/* The evaluation protocol: train fresh models on a set, score them, and the
 * real-subset baseline with its learning rate tuned on validation data. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/dataload.h"
#include "qdistill/evaluate.h"
#include "qdistill/train.h"

void qd_mean_std(const double *v, size_t n, double *mean, double *std)
{
    double s = 0.0;
    for (size_t i = 0; i < n; ++i)
        s += v[i];
    double mu = n ? s / (double)n : NAN;
    double q = 0.0;
    for (size_t i = 0; i < n; ++i)
        q += (v[i] - mu) * (v[i] - mu);
    if (mean)
        *mean = mu;
    if (std)
        *std = n > 1 ? sqrt(q / (double)(n - 1)) : 0.0;
}

int qd_eval_init(qd_model *m, const qd_eval_opts *o, size_t i, double *params, qd_error *err)
{
    size_t n = qd_model_n_params(m);
    if (o->init_mode == QD_INIT_FIXED) {
        memcpy(params, o->init_params, n * sizeof *params);
        return QD_OK;
    }
    char stream[64];
    snprintf(stream, sizeof stream, "evaluate.init.%zu", i);
    qd_rng rng;
    qd_rng_derive(&rng, o->seed, stream);
    return qd_model_init_params(m, &rng, params, err);
}

/* Name the first parameter block that training made non-finite. */
static int check_finite(const qd_model *m, const double *p, const char *what, qd_error *err)
{
    for (size_t k = 0; k < qd_model_n_blocks(m); ++k) {
        const qd_param_block *b = qd_model_block(m, k);
        for (size_t i = 0; i < b->count; ++i)
            if (!isfinite(p[b->offset + i]))
                return qd_error_set(err, QD_ERR_NUMERIC,
                                    "%s: '%s' of layer '%s' (entry %zu) became %g; the learning "
                                    "rate is too large", what, b->what, b->layer, i,
                                    p[b->offset + i]);
    }
    return QD_OK;
}

/* Minibatch SGD over the whole set, fixed shuffles from a dedicated stream. */
static int train_recipe(qd_model *m, const qd_synset *s, const qd_eval_opts *o, double lr,
                        double *params, qd_error *err)
{
    size_t n = qd_synset_count(s), np = qd_model_n_params(m), isz = qd_model_input_size(m);
    size_t bs = o->recipe_batch && o->recipe_batch < n ? o->recipe_batch : n;
    double *g = malloc(np * sizeof *g);
    double *xb = malloc(bs * isz * sizeof *xb);
    int32_t *yb = malloc(bs * sizeof *yb);
    size_t *order = malloc(n * sizeof *order);
    int rc = QD_OK;
    if (!g || !xb || !yb || !order) {
        rc = qd_error_set(err, QD_ERR_NOMEM, "out of memory training on the synthetic set");
        goto out;
    }
    qd_rng rng;
    qd_rng_derive(&rng, o->seed, "evaluate.recipe");
    for (size_t e = 0; e < (o->recipe_epochs ? o->recipe_epochs : 1); ++e) {
        for (size_t i = 0; i < n; ++i)
            order[i] = i;
        qd_rng_shuffle(&rng, order, n);
        for (size_t at = 0; at + bs <= n; at += bs) {
            for (size_t j = 0; j < bs; ++j) {
                memcpy(xb + j * isz, s->images + order[at + j] * isz, isz * sizeof *xb);
                yb[j] = s->labels[order[at + j]];
            }
            double loss;
            if ((rc = qd_model_loss_grad(m, params, bs, xb, yb, &loss, g, NULL, NULL, err)))
                goto out;
            for (size_t k = 0; k < np; ++k)
                params[k] -= lr * g[k];
            if (o->stop && *o->stop) {
                rc = qd_error_set(err, QD_ERR_INTERRUPTED, "interrupted");
                goto out;
            }
        }
    }
    rc = check_finite(m, params, "training on the synthetic set", err);
out:
    free(g);
    free(xb);
    free(yb);
    free(order);
    return rc;
}

int qd_eval_train(qd_model *m, const qd_synset *s, const qd_eval_opts *o, double lr,
                  double *params, qd_error *err)
{
    if (s->n_lrs == 0)
        return train_recipe(m, s, o, lr, params, err);
    size_t np = qd_model_n_params(m), isz = qd_model_input_size(m);
    double *g = malloc(np * sizeof *g);
    if (!g)
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    int rc = QD_OK;
    for (size_t t = 0; t < s->n_lrs; ++t) {
        size_t step = t % s->steps;
        double loss;
        rc = qd_model_loss_grad(m, params, s->per_step, s->images + step * s->per_step * isz,
                                s->labels + step * s->per_step, &loss, g, NULL, NULL, err);
        if (rc)
            break;
        for (size_t k = 0; k < np; ++k)
            params[k] -= s->lrs[t] * g[k];
    }
    free(g);
    return rc ? rc : check_finite(m, params, "replaying the learned steps", err);
}

int qd_eval_real_subset(const qd_synset *s, const qd_dataset *train, const qd_eval_opts *o,
                        size_t i, double lr, qd_synset *out, qd_error *err)
{
    size_t n = qd_synset_count(s), isz = s->channels * s->height * s->width;
    int rc = qd_synset_alloc(out, s->steps, s->epochs, s->per_step, s->channels, s->height,
                             s->width, s->classes, s->n_lrs, err);
    if (rc)
        return rc;
    char stream[64];
    snprintf(stream, sizeof stream, "evaluate.subset.%zu", i);
    qd_rng rng;
    qd_rng_derive(&rng, o->seed, stream);
    /* Same label layout as the synthetic set: for every slot, a random real
     * image of that slot's class. */
    size_t *by_class_n = calloc(s->classes, sizeof *by_class_n);
    size_t **by_class = calloc(s->classes, sizeof *by_class);
    if (!by_class_n || !by_class) {
        rc = qd_error_set(err, QD_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t k = 0; k < train->n; ++k)
        if ((size_t)train->labels[k] < s->classes)
            by_class_n[train->labels[k]]++;
    for (size_t c = 0; c < s->classes; ++c) {
        by_class[c] = malloc((by_class_n[c] ? by_class_n[c] : 1) * sizeof **by_class);
        if (!by_class[c]) {
            rc = qd_error_set(err, QD_ERR_NOMEM, "out of memory");
            goto out;
        }
        by_class_n[c] = 0;
    }
    for (size_t k = 0; k < train->n; ++k)
        if ((size_t)train->labels[k] < s->classes) {
            size_t c = (size_t)train->labels[k];
            by_class[c][by_class_n[c]++] = k;
        }
    for (size_t c = 0; c < s->classes; ++c)
        qd_rng_shuffle(&rng, by_class[c], by_class_n[c]);
    size_t *used = calloc(s->classes, sizeof *used);
    if (!used) {
        rc = qd_error_set(err, QD_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t j = 0; j < n; ++j) {
        size_t c = (size_t)s->labels[j];
        if (c >= s->classes || by_class_n[c] == 0) {
            free(used);
            rc = qd_error_set(err, QD_ERR_INVALID, "the training set has no image of class %zu", c);
            goto out;
        }
        size_t k = by_class[c][used[c]++ % by_class_n[c]];
        memcpy(out->images + j * isz, train->images + k * isz, isz * sizeof(double));
        out->labels[j] = s->labels[j];
    }
    free(used);
    for (size_t t = 0; t < out->n_lrs; ++t)
        out->lrs[t] = lr;
    out->init_mode = s->init_mode;
out:
    if (by_class)
        for (size_t c = 0; c < s->classes; ++c)
            free(by_class[c]);
    free(by_class);
    free(by_class_n);
    if (rc)
        qd_synset_free(out);
    return rc;
}

int qd_eval_tune_lr(qd_model *m, const qd_synset *s, const qd_dataset *train,
                    const qd_dataset *val, const qd_eval_opts *o, double *best_lr,
                    double *best_val_acc, qd_error *err)
{
    if (!val || val->n == 0)
        return qd_error_set(err, QD_ERR_INVALID,
                            "tuning the baseline's learning rate needs a validation split "
                            "(dataset.validation > 0)");
    if (o->n_lr_grid == 0)
        return qd_error_set(err, QD_ERR_INVALID, "evaluate.lr_grid is empty");
    size_t np = qd_model_n_params(m);
    double *w = malloc(np * sizeof *w);
    if (!w)
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    size_t tm = o->tune_models ? o->tune_models : 1;
    double best = -1.0, blr = o->lr_grid[0];
    int rc = QD_OK;
    for (size_t g = 0; g < o->n_lr_grid && !rc; ++g) {
        double sum = 0.0;
        for (size_t i = 0; i < tm && !rc; ++i) {
            qd_synset sub;
            /* tuning draws subsets/inits from indices past the evaluation
             * models, so the chosen lr is not fitted to the scored subsets */
            size_t idx = 100000 + i;
            if ((rc = qd_eval_real_subset(s, train, o, idx, o->lr_grid[g], &sub, err)))
                break;
            double acc = 0.0;
            rc = qd_eval_init(m, o, idx, w, err);
            if (!rc) {
                qd_error e2;
                /* a diverging candidate scores zero rather than failing */
                if (qd_eval_train(m, &sub, o, o->lr_grid[g], w, &e2) == QD_OK)
                    rc = qd_model_accuracy(m, w, val, o->batch_size, &acc, err);
            }
            qd_synset_free(&sub);
            sum += acc;
        }
        double mean = sum / (double)tm;
        if (!rc && mean > best) {
            best = mean;
            blr = o->lr_grid[g];
        }
    }
    free(w);
    if (rc)
        return rc;
    *best_lr = blr;
    if (best_val_acc)
        *best_val_acc = best;
    return QD_OK;
}

int qd_eval_tune_set_lr(qd_model *m, const qd_synset *s, const qd_dataset *val,
                        const qd_eval_opts *o, size_t first, size_t models,
                        double *best_lr, double *best_val_acc, qd_error *err)
{
    if (s->n_lrs != 0)
        return qd_error_set(err, QD_ERR_INVALID,
                            "the set replays its learned step sizes: there is no lr to tune");
    if (!val || val->n == 0)
        return qd_error_set(err, QD_ERR_INVALID,
                            "a set without learned step sizes is trained at a constant lr "
                            "tuned on a validation split: set dataset.validation (e.g. 5000)");
    if (o->n_lr_grid == 0)
        return qd_error_set(err, QD_ERR_INVALID, "evaluate.lr_grid is empty");
    size_t np = qd_model_n_params(m);
    double *w = malloc(np * sizeof *w);
    if (!w)
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    size_t tm = models ? models : 1;
    double best = -1.0, blr = o->lr_grid[0];
    int rc = QD_OK;
    for (size_t g = 0; g < o->n_lr_grid && !rc; ++g) {
        double sum = 0.0;
        for (size_t i = 0; i < tm && !rc; ++i) {
            double acc = 0.0;
            rc = qd_eval_init(m, o, first + i, w, err);
            if (!rc) {
                qd_error e2;
                /* a diverging candidate scores zero rather than failing */
                if (qd_eval_train(m, s, o, o->lr_grid[g], w, &e2) == QD_OK)
                    rc = qd_model_accuracy(m, w, val, o->batch_size, &acc, err);
            }
            sum += acc;
        }
        double mean = sum / (double)tm;
        if (!rc && mean > best) {
            best = mean;
            blr = o->lr_grid[g];
        }
    }
    free(w);
    if (rc)
        return rc;
    *best_lr = blr;
    if (best_val_acc)
        *best_val_acc = best;
    return QD_OK;
}
