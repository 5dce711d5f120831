/*
 * Optimisers (against closed forms), the train config reader, and the
 * training loop's contract: progress, learning-rate decay, stopping,
 * non-finite detection, determinism, accuracy.
 */
#include "nn_test_util.h"
#include "qdistill/manifest.h"
#include "qdistill/train.h"

Test(optim, sgd_plain_and_momentum)
{
    qd_sgd o;
    qd_error err = {0};
    cr_assert_eq(qd_sgd_init(&o, 2, 0.0, 0.1, &err), QD_OK);
    double p[2] = {1.0, -2.0}, g[2] = {0.5, 0.25};
    qd_sgd_step(&o, p, g, 0.1);
    cr_expect_float_eq(p[0], 1.0 - 0.1 * (0.5 + 0.1 * 1.0), 1e-15);
    cr_expect_float_eq(p[1], -2.0 - 0.1 * (0.25 - 0.1 * 2.0), 1e-15);
    qd_sgd_free(&o);
    /* momentum 0.9, constant gradient 1: velocity 1, 1.9, 2.71 */
    cr_assert_eq(qd_sgd_init(&o, 1, 0.9, 0.0, &err), QD_OK);
    double q = 0.0, one = 1.0;
    qd_sgd_step(&o, &q, &one, 0.1);
    cr_expect_float_eq(q, -0.1, 1e-15);
    qd_sgd_step(&o, &q, &one, 0.1);
    cr_expect_float_eq(q, -0.1 - 0.19, 1e-15);
    qd_sgd_step(&o, &q, &one, 0.1);
    cr_expect_float_eq(q, -0.1 - 0.19 - 0.271, 1e-15);
    qd_sgd_reset(&o);
    q = 0.0;
    qd_sgd_step(&o, &q, &one, 0.1);
    cr_expect_float_eq(q, -0.1, 1e-15);
    qd_sgd_free(&o);
    cr_expect_eq(qd_sgd_init(&o, 1, 1.0, 0.0, &err), QD_ERR_INVALID);
}

Test(optim, adam_closed_forms)
{
    qd_adam o;
    qd_error err = {0};
    cr_assert_eq(qd_adam_init(&o, 3, 0.9, 0.999, 1e-8, 0.0, &err), QD_OK);
    /* with a constant gradient the bias-corrected moments are g and g^2,
     * so every step is lr * g / (|g| + eps) */
    double p[3] = {0, 0, 0}, g[3] = {2.0, -0.5, 1e-3};
    for (int s = 1; s <= 5; s++) {
        qd_adam_step(&o, p, g, 0.01);
        for (int i = 0; i < 3; i++)
            cr_expect_float_eq(p[i], -s * 0.01 * g[i] / (fabs(g[i]) + 1e-8),
                               1e-13, "step %d entry %d", s, i);
    }
    cr_expect_eq(o.t, 5);
    qd_adam_reset(&o);
    cr_expect_eq(o.t, 0);
    cr_expect_eq(o.m[0], 0.0);
    qd_adam_free(&o);
    /* a gradient that flips sign: m = (1-b1) g1 + ... worked by hand */
    cr_assert_eq(qd_adam_init(&o, 1, 0.9, 0.999, 1e-8, 0.0, &err), QD_OK);
    double x = 0.0, g1 = 1.0, g2 = -1.0;
    qd_adam_step(&o, &x, &g1, 0.1);   /* x = -0.1 (up to eps) */
    qd_adam_step(&o, &x, &g2, 0.1);
    double m = 0.9 * 0.1 * 1.0 + 0.1 * -1.0;         /* -0.01 */
    double v = 0.999 * 0.001 + 0.001;                 /* 0.001999 */
    double mh = m / (1 - 0.81), vh = v / (1 - 0.999 * 0.999);
    double want = -0.1 * 1.0 / (1.0 + 1e-8) - 0.1 * mh / (sqrt(vh) + 1e-8);
    cr_expect_float_eq(x, want, 1e-14, "%.17g vs %.17g", x, want);
    qd_adam_free(&o);
    /* weight decay enters the gradient (L2, as torch.optim.Adam) */
    cr_assert_eq(qd_adam_init(&o, 1, 0.9, 0.999, 1e-8, 0.5, &err), QD_OK);
    double w = 2.0, zero = 0.0;
    qd_adam_step(&o, &w, &zero, 0.1);   /* g = 0.5 * 2 = 1 -> step 0.1 */
    cr_expect_float_eq(w, 2.0 - 0.1 / (1.0 + 1e-8), 1e-14);
    qd_adam_free(&o);
}

Test(optim, clip_grad_norm)
{
    double g[2] = {3.0, 4.0};
    cr_expect_float_eq(qd_clip_grad_norm(g, 2, 0.0), 5.0, 1e-15);
    cr_expect_eq(g[0], 3.0);
    cr_expect_float_eq(qd_clip_grad_norm(g, 2, 10.0), 5.0, 1e-15);
    cr_expect_eq(g[1], 4.0);
    cr_expect_float_eq(qd_clip_grad_norm(g, 2, 1.0), 5.0, 1e-15);
    cr_expect_float_eq(hypot(g[0], g[1]), 1.0, 1e-6);
    cr_expect_float_eq(g[0] / g[1], 0.75, 1e-15);
}

static qd_config *yaml_cfg(const char *text)
{
    qd_config *c = NULL;
    qd_error err = {0};
    cr_assert_eq(qd_config_load_string(text, strlen(text), "<train>", NULL,
                                       &c, &err), QD_OK, "%s", err.msg);
    return c;
}

Test(train_config, defaults_values_and_errors)
{
    qd_train_config c;
    qd_error err = {0};
    cr_assert_eq(qd_train_config_read(NULL, &c, &err), QD_OK);
    /* the defaults are those of the manifest's train schema */
    const qd_param *sch = qd_train_schema();
    cr_expect_str_eq(qd_schema_find(sch, "optimizer")->def,
                     c.optimizer == QD_OPT_SGD ? "sgd" : "adam");
    cr_expect_eq(c.lr, strtod(qd_schema_find(sch, "lr")->def, NULL));
    cr_expect_eq(c.momentum,
                 strtod(qd_schema_find(sch, "momentum")->def, NULL));
    cr_expect_eq(c.epochs,
                 strtoul(qd_schema_find(sch, "epochs")->def, NULL, 10));
    cr_expect_eq(c.batch_size,
                 strtoul(qd_schema_find(sch, "batch_size")->def, NULL, 10));
    cr_expect_eq(c.lr_decay_factor,
                 strtod(qd_schema_find(sch, "lr_decay_factor")->def, NULL));
    cr_expect_eq(c.eval_batch_size,
                 strtoul(qd_schema_find(sch, "eval_batch_size")->def, NULL,
                         10));
    qd_config *y = yaml_cfg("optimizer: sgd\nlr: 0.5\nmomentum: 0.5\n"
                            "weight_decay: 1e-4\nepochs: 3\nbatch_size: 8\n"
                            "lr_decay_every: 2\nlr_decay_factor: 0.3\n"
                            "clip_grad: 5\neval_batch_size: 100\n");
    cr_assert_eq(qd_train_config_read(qd_config_root(y), &c, &err), QD_OK,
                 "%s", err.msg);
    cr_expect_eq(c.optimizer, QD_OPT_SGD);
    cr_expect_eq(c.lr, 0.5);
    cr_expect_eq(c.momentum, 0.5);
    cr_expect_eq(c.weight_decay, 1e-4);
    cr_expect_eq(c.epochs, 3);
    cr_expect_eq(c.batch_size, 8);
    cr_expect_eq(c.lr_decay_every, 2);
    cr_expect_eq(c.lr_decay_factor, 0.3);
    cr_expect_eq(c.clip_grad, 5.0);
    cr_expect_eq(c.eval_batch_size, 100);
    qd_config_destroy(y);
    const char *bad[][2] = {
        {"optimizer: rmsprop\n", "<train>:1:12: train.optimizer 'rmsprop'"},
        {"lr: 1\nbatch_size: 0\n", "<train>:2:13: train.batch_size = 0"},
        {"momentum: 1.5\n", "<train>:1:11: train.momentum = 1.5"},
        {"lr: fast\n", "<train>:1:5:"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        y = yaml_cfg(bad[i][0]);
        cr_expect_neq(qd_train_config_read(qd_config_root(y), &c, &err),
                      QD_OK);
        cr_expect(strncmp(err.msg, bad[i][1], strlen(bad[i][1])) == 0,
                  "'%s' gave '%s'", bad[i][0], err.msg);
        qd_config_destroy(y);
    }
}

/* Softmax regression on 4 linearly separable Gaussian blobs. */
static void blobs(qd_dataset *d, size_t n, uint64_t seed)
{
    qd_error err = {0};
    cr_assert_eq(qd_dataset_alloc(d, n, 1, 1, 2, 4, &err), QD_OK);
    qd_rng rng;
    qd_rng_seed(&rng, seed, 1);
    const double cx[4] = {2, -2, 0, 0}, cy[4] = {0, 0, 2, -2};
    for (size_t i = 0; i < n; i++) {
        int32_t k = (int32_t)(i % 4);
        d->labels[i] = k;
        d->images[2 * i] = cx[k] + 0.5 * qd_rng_normal(&rng);
        d->images[2 * i + 1] = cy[k] + 0.5 * qd_rng_normal(&rng);
    }
}

typedef struct record {
    size_t batches, epochs;
    double lr[8], loss[8];
    int stop_after;   /* stop at this batch callback (0 = never) */
} record;

static int recorder(const qd_train_progress *p, void *user)
{
    record *r = user;
    if (p->end_of_epoch) {
        cr_expect_eq(p->batch, p->n_batches);
        if (r->epochs < 8) {
            r->lr[r->epochs] = p->lr;
            r->loss[r->epochs] = p->loss;
        }
        r->epochs++;
        return 0;
    }
    r->batches++;
    return r->stop_after && (int)r->batches >= r->stop_after;
}

static void linear_model(tmodel *t)
{
    qd_model_opts o = t_opts(1, 1, 2, 4);
    qd_error err = {0};
    cr_assert_eq(t_build_text(t, "layers: [{type: linear, out: 4}]", &o, 5,
                              &err), QD_OK, "%s", err.msg);
}

Test(train, sgd_learns_with_decay_and_progress)
{
    tmodel t;
    linear_model(&t);
    qd_dataset tr, te;
    blobs(&tr, 103, 1);   /* 103 = 12 batches of 8 + 7: last batch kept */
    blobs(&te, 200, 2);
    qd_train_config c;
    qd_train_config_default(&c);
    c.optimizer = QD_OPT_SGD;
    c.lr = 0.2;
    c.momentum = 0.5;
    c.epochs = 4;
    c.batch_size = 8;
    c.lr_decay_every = 2;
    c.lr_decay_factor = 0.5;
    qd_rng rng;
    qd_rng_seed(&rng, 1, 2);
    record r = {0};
    qd_train_result res;
    qd_error err = {0};
    double acc0;
    cr_assert_eq(qd_model_accuracy(t.m, t.params, &te, 0, &acc0, &err), QD_OK);
    cr_assert_eq(qd_train_run(t.m, t.params, &tr, &te, &c, &rng, recorder, &r,
                              &res, &err), QD_OK, "%s", err.msg);
    cr_expect_eq(r.batches, 4 * 13);
    cr_expect_eq(r.epochs, 4);
    cr_expect_eq(r.lr[0], 0.2);
    cr_expect_eq(r.lr[1], 0.2);
    cr_expect_eq(r.lr[2], 0.1);
    cr_expect_eq(r.lr[3], 0.1);
    cr_expect(r.loss[3] < r.loss[0], "loss %g -> %g", r.loss[0], r.loss[3]);
    cr_expect(res.test_acc[3] > 0.95, "accuracy %g (before %g)",
              res.test_acc[3], acc0);
    cr_expect_eq(res.final_train_loss, r.loss[3]);
    qd_train_result_free(&res);
    qd_dataset_free(&tr);
    qd_dataset_free(&te);
    t_free(&t);
}

Test(train, runs_are_deterministic)
{
    double *p[2];
    for (int k = 0; k < 2; k++) {
        tmodel t;
        linear_model(&t);
        qd_dataset tr;
        blobs(&tr, 50, 3);
        qd_train_config c;
        qd_train_config_default(&c);
        c.epochs = 2;
        c.batch_size = 7;
        c.clip_grad = 0.1;
        qd_rng rng;
        qd_rng_seed(&rng, 9, 9);
        qd_error err = {0};
        cr_assert_eq(qd_train_run(t.m, t.params, &tr, NULL, &c, &rng, NULL,
                                  NULL, NULL, &err), QD_OK, "%s", err.msg);
        p[k] = malloc(t.n_params * sizeof(double));
        memcpy(p[k], t.params, t.n_params * sizeof(double));
        qd_dataset_free(&tr);
        t_free(&t);
    }
    for (size_t i = 0; i < 12; i++)
        cr_expect_eq(p[0][i], p[1][i]);
    free(p[0]);
    free(p[1]);
}

Test(train, stopping_and_errors)
{
    tmodel t;
    linear_model(&t);
    qd_dataset tr, wrong;
    blobs(&tr, 40, 1);
    qd_error err = {0};
    cr_assert_eq(qd_dataset_alloc(&wrong, 4, 1, 1, 3, 4, &err), QD_OK);
    qd_train_config c;
    qd_train_config_default(&c);
    c.batch_size = 4;
    c.epochs = 3;
    qd_rng rng;
    qd_rng_seed(&rng, 1, 1);
    record r = {.stop_after = 3};
    qd_train_result res;
    cr_expect_eq(qd_train_run(t.m, t.params, &tr, NULL, &c, &rng, recorder,
                              &r, &res, &err), QD_ERR_INTERRUPTED);
    cr_expect_eq(r.batches, 3);
    cr_expect_eq(res.epochs_done, 0);
    qd_train_result_free(&res);
    /* the data must match the model */
    cr_expect_eq(qd_train_run(t.m, t.params, &wrong, NULL, &c, &rng, NULL,
                              NULL, NULL, &err), QD_ERR_INVALID);
    cr_expect(strstr(err.msg, "model takes 2"), "%s", err.msg);
    /* non-finite parameters: the loss is refused, naming the block */
    t.params[5] = INFINITY;
    cr_expect_eq(qd_train_run(t.m, t.params, &tr, NULL, &c, &rng, NULL, NULL,
                              NULL, &err), QD_ERR_NUMERIC);
    cr_expect(strstr(err.msg, "'weight' of layer 'linear0'"), "%s", err.msg);
    qd_dataset_free(&tr);
    qd_dataset_free(&wrong);
    t_free(&t);
}

Test(train, stop_flag_interrupts)
{
    volatile int stop = 1;
    qd_model_opts o = t_opts(1, 1, 2, 4);
    o.stop_flag = &stop;
    tmodel t;
    qd_error err = {0};
    cr_assert_eq(t_build_text(&t, "layers: [{type: linear, out: 4}]", &o, 5,
                              &err), QD_OK);
    qd_dataset tr;
    blobs(&tr, 16, 1);
    qd_train_config c;
    qd_train_config_default(&c);
    c.batch_size = 4;
    qd_rng rng;
    qd_rng_seed(&rng, 1, 1);
    record r = {0};
    cr_expect_eq(qd_train_run(t.m, t.params, &tr, NULL, &c, &rng, recorder,
                              &r, NULL, &err), QD_ERR_INTERRUPTED);
    cr_expect_eq(r.batches, 1);
    qd_dataset_free(&tr);
    t_free(&t);
}

Test(train, accuracy_is_argmax_agreement)
{
    /* weights = identity, bias 0: predicted class = argmax of the input */
    qd_model_opts o = t_opts(1, 1, 3, 3);
    tmodel t;
    qd_error err = {0};
    cr_assert_eq(t_build_text(&t, "layers: [{type: linear, out: 3, init: "
                              "zeros}]", &o, 5, &err), QD_OK);
    t.params[0] = t.params[4] = t.params[8] = 1.0;
    qd_dataset d;
    cr_assert_eq(qd_dataset_alloc(&d, 7, 1, 1, 3, 3, &err), QD_OK);
    qd_rng rng;
    qd_rng_seed(&rng, 3, 3);
    size_t want = 0;
    for (size_t i = 0; i < 7; i++) {
        size_t best = 0;
        for (size_t k = 0; k < 3; k++) {
            d.images[3 * i + k] = qd_rng_normal(&rng);
            if (d.images[3 * i + k] > d.images[3 * i + best])
                best = k;
        }
        d.labels[i] = (int32_t)(i % 3);
        want += best == i % 3;
    }
    double acc;
    for (size_t bs = 1; bs <= 8; bs += 3) {
        cr_assert_eq(qd_model_accuracy(t.m, t.params, &d, bs, &acc, &err),
                     QD_OK);
        cr_expect_float_eq(acc, (double)want / 7.0, 1e-15, "batch %zu", bs);
    }
    qd_dataset_free(&d);
    t_free(&t);
}
