/*
 * The quantum LeNet (experiments/models/quantum-lenet.yaml) with the real
 * plugins: parameter count, the whole-model gradient check (every block and
 * the input image), every parameter really training, the fixed-observable
 * ablation, and a short training run.
 */
#include "nn_test_util.h"
#include "qdistill/train.h"

#define QLENET "experiments/models/quantum-lenet.yaml"

static const qd_param_block *find_block(const qd_model *m, const char *layer,
                                        const char *what)
{
    for (size_t k = 0; k < qd_model_n_blocks(m); k++) {
        const qd_param_block *b = qd_model_block(m, k);
        if (strcmp(b->layer, layer) == 0 && strcmp(b->what, what) == 0)
            return b;
    }
    return NULL;
}

Test(quantum_lenet, parameter_count_and_blocks_on_mnist)
{
    qd_model_opts o = t_opts(1, 28, 28, 10);
    tmodel t;
    t_build_file(&t, QLENET, &o, 1);
    /* trunk 156 + 2416 + 48120 + 7744; circuit 3 layers x 6 wires x 3
     * angles = 54; six 2x2 Hermitians x 4 = 24; qhead 70; rhead 650;
     * alpha 1 */
    cr_expect_eq(t.n_params, 59235);
    const qd_param_block *c = find_block(t.m, "q", "circuit");
    const qd_param_block *h = find_block(t.m, "q", "observable");
    const qd_param_block *a = find_block(t.m, "mix", "alpha");
    cr_assert(c && h && a);
    cr_expect_eq(c->count, 54);
    cr_expect_eq(h->count, 24);
    cr_expect_eq(h->offset, c->offset + 54);
    cr_expect_eq(t.params[a->offset], 0.5);
    cr_expect_eq(qd_model_layer_size(t.m, "f2"), 64);
    cr_expect_eq(qd_model_layer_size(t.m, "q"), 6);
    char *d = qd_model_describe(t.m);
    cr_expect(strstr(d, "59235") && strstr(d, "quantum") &&
              strstr(d, "qhead, rhead"), "%s", d);
    free(d);
    char *circ = qd_model_describe_circuits(t.m);
    cr_expect(circ && strstr(circ, "layer 'q'"), "%s", circ ? circ : "");
    free(circ);
    t_free(&t);
}

Test(quantum_lenet, whole_model_gradient_check)
{
    qd_model_opts o = t_opts(1, 28, 28, 10);
    tmodel t;
    t_build_file(&t, QLENET, &o, 2);
    double *x = malloc(2 * 784 * sizeof *x);
    qd_rng rng;
    qd_rng_seed(&rng, 4, 4);
    t_fill_normal(&rng, x, 2 * 784, 1.0);
    int32_t y[2] = {1, 6};
    double worst = t_gradcheck(&t, 2, x, y, 25, 60, 1e-5, 1e-6);
    cr_log_info("quantum LeNet worst block error %.3g", worst);
    free(x);
    t_free(&t);
}

/* A learnable toy set: class k lights a 6 x 6 patch at a class-specific
 * place, plus noise. */
static void toy_set(qd_dataset *d, size_t n, uint64_t seed)
{
    qd_error err = {0};
    cr_assert_eq(qd_dataset_alloc(d, n, 1, 28, 28, 10, &err), QD_OK);
    qd_rng rng;
    qd_rng_seed(&rng, seed, 2);
    for (size_t i = 0; i < n; i++) {
        int32_t k = (int32_t)(i % 10);
        d->labels[i] = k;
        double *img = d->images + i * 784;
        for (size_t p = 0; p < 784; p++)
            img[p] = -0.4 + 0.3 * qd_rng_normal(&rng);
        size_t y0 = 2 + 12 * (size_t)(k / 5), x0 = 1 + 5 * (size_t)(k % 5);
        for (size_t yy = y0; yy < y0 + 6; yy++)
            for (size_t xx = x0; xx < x0 + 6 && xx < 28; xx++)
                img[yy * 28 + xx] += 2.0;
    }
}

Test(quantum_lenet, every_block_gets_gradient_and_moves)
{
    qd_model_opts o = t_opts(1, 28, 28, 10);
    tmodel t;
    t_build_file(&t, QLENET, &o, 3);
    qd_dataset d;
    toy_set(&d, 20, 1);
    double *g = malloc(t.n_params * sizeof *g);
    double L;
    qd_error err = {0};
    cr_assert_eq(qd_model_loss_grad(t.m, t.params, 20, d.images, d.labels,
                                    &L, g, NULL, NULL, &err), QD_OK, "%s",
                 err.msg);
    for (size_t k = 0; k < qd_model_n_blocks(t.m); k++) {
        const qd_param_block *b = qd_model_block(t.m, k);
        double n2 = 0;
        for (size_t i = 0; i < b->count; i++)
            n2 += g[b->offset + i] * g[b->offset + i];
        cr_expect(n2 > 0, "block %s.%s has a zero gradient", b->layer,
                  b->what);
    }
    double *before = malloc(t.n_params * sizeof *before);
    memcpy(before, t.params, t.n_params * sizeof *before);
    qd_train_config cfg;
    qd_train_config_default(&cfg);
    cfg.optimizer = QD_OPT_SGD;
    cfg.lr = 0.05;
    cfg.batch_size = 20;
    cfg.epochs = 1;
    qd_rng rng;
    qd_rng_seed(&rng, 1, 1);
    qd_train_result res;
    cr_assert_eq(qd_train_run(t.m, t.params, &d, NULL, &cfg, &rng, NULL, NULL,
                              &res, &err), QD_OK, "%s", err.msg);
    for (size_t k = 0; k < qd_model_n_blocks(t.m); k++) {
        const qd_param_block *b = qd_model_block(t.m, k);
        size_t changed = 0;
        for (size_t i = 0; i < b->count; i++)
            changed += t.params[b->offset + i] != before[b->offset + i];
        cr_expect(changed > 0, "block %s.%s did not change", b->layer,
                  b->what);
        /* circuit angles and Hermitian entries: every single one */
        if (strcmp(b->layer, "q") == 0)
            cr_expect_eq(changed, b->count, "%s.%s: %zu of %zu changed",
                         b->layer, b->what, changed, b->count);
    }
    free(before);
    free(g);
    qd_train_result_free(&res);
    qd_dataset_free(&d);
    t_free(&t);
}

Test(quantum_lenet, fixed_observable_ablation_keeps_the_matrices)
{
    /* same file with observable.trainable = false, spliced in as YAML */
    const char *src = getenv("QD_TEST_SRCDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", src, QLENET);
    FILE *f = fopen(path, "r");
    cr_assert(f);
    char text[8192];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    char *at = strstr(text, "trainable: true}");
    cr_assert(at, "the model file should say trainable: true");
    char fixed[8300];
    snprintf(fixed, sizeof fixed, "%.*strainable: false}%s",
             (int)(at - text), text, at + strlen("trainable: true}"));
    qd_model_opts o = t_opts(1, 28, 28, 10);
    tmodel tt, tf;
    t_build_file(&tt, QLENET, &o, 9);
    qd_error err = {0};
    cr_assert_eq(t_build_text(&tf, fixed, &o, 9, &err), QD_OK, "%s", err.msg);
    cr_expect_eq(tf.n_params, tt.n_params - 24);
    cr_expect_null(find_block(tf.m, "q", "observable"));
    double *x = malloc(3 * 784 * sizeof *x), zt[30], zf[30];
    qd_rng rng;
    qd_rng_seed(&rng, 4, 5);
    t_fill_normal(&rng, x, 3 * 784, 1.0);
    cr_assert_eq(qd_model_forward(tt.m, tt.params, 3, x, zt, &err), QD_OK);
    cr_assert_eq(qd_model_forward(tf.m, tf.params, 3, x, zf, &err), QD_OK);
    for (int i = 0; i < 30; i++)
        cr_expect_float_eq(zt[i], zf[i], 1e-12, "logit %d", i);
    /* and its gradients still check out */
    int32_t y[2] = {0, 9};
    t_gradcheck(&tf, 2, x, y, 25, 60, 1e-5, 1e-6);
    free(x);
    t_free(&tt);
    t_free(&tf);
}

Test(quantum_lenet, quantum_stats_count_executions)
{
    qd_model_opts o = t_opts(1, 28, 28, 10);
    tmodel t;
    t_build_file(&t, QLENET, &o, 1);
    qd_sim_stats s0, s1;
    qd_model_quantum_stats(t.m, &s0);
    double *x = calloc(5 * 784, sizeof *x), z[50];
    for (size_t i = 0; i < 5 * 784; i++)
        x[i] = (double)(i % 17) / 17.0;
    qd_error err = {0};
    cr_assert_eq(qd_model_forward(t.m, t.params, 5, x, z, &err), QD_OK);
    qd_model_quantum_stats(t.m, &s1);
    cr_expect_eq(s1.executions - s0.executions, 5);
    cr_expect_eq(s1.shots, 0);
    free(x);
    t_free(&t);
}

typedef struct epoch_log {
    double loss[16];
    size_t n;
} epoch_log;

static int log_epochs(const qd_train_progress *p, void *user)
{
    epoch_log *l = user;
    if (p->end_of_epoch && l->n < 16)
        l->loss[l->n++] = p->loss;
    return 0;
}

Test(quantum_lenet, short_training_run_learns)
{
    qd_model_opts o = t_opts(1, 28, 28, 10);
    tmodel t;
    t_build_file(&t, QLENET, &o, 4);
    qd_dataset train, test;
    toy_set(&train, 200, 11);
    toy_set(&test, 100, 12);
    const char *yaml = "optimizer: adam\nlr: 0.003\nepochs: 6\n"
                       "batch_size: 20\neval_batch_size: 50\n";
    qd_config *cfg = NULL;
    qd_error err = {0};
    cr_assert_eq(qd_config_load_string(yaml, strlen(yaml), "<train>", NULL,
                                       &cfg, &err), QD_OK);
    double *before = malloc(t.n_params * sizeof *before);
    memcpy(before, t.params, t.n_params * sizeof *before);
    qd_rng rng;
    qd_rng_seed(&rng, 2, 2);
    epoch_log log = {.n = 0};
    qd_train_result res;
    cr_assert_eq(qd_train(t.m, t.params, &train, &test, qd_config_root(cfg),
                          &rng, log_epochs, &log, &res, &err), QD_OK, "%s",
                 err.msg);
    cr_assert_eq(log.n, 6);
    cr_assert_eq(res.epochs_done, 6);
    cr_log_info("epoch losses %.3f -> %.3f, test accuracy %.2f",
                log.loss[0], log.loss[5], res.test_acc[5]);
    cr_expect(log.loss[5] < 0.5 * log.loss[0], "loss %.3f -> %.3f",
              log.loss[0], log.loss[5]);
    cr_expect_float_eq(res.final_train_loss, log.loss[5], 1e-15);
    cr_expect(res.test_acc[5] > 0.5, "test accuracy %.2f", res.test_acc[5]);
    double acc;
    cr_assert_eq(qd_model_accuracy(t.m, t.params, &test, 30, &acc, &err),
                 QD_OK);
    cr_expect_float_eq(acc, res.test_acc[5], 1e-15);
    for (size_t k = 0; k < qd_model_n_blocks(t.m); k++) {
        const qd_param_block *b = qd_model_block(t.m, k);
        double diff = 0;
        for (size_t i = 0; i < b->count; i++)
            diff += fabs(t.params[b->offset + i] - before[b->offset + i]);
        cr_expect(diff > 0, "block %s.%s did not train", b->layer, b->what);
    }
    free(before);
    qd_train_result_free(&res);
    qd_config_destroy(cfg);
    qd_dataset_free(&train);
    qd_dataset_free(&test);
    t_free(&t);
}
