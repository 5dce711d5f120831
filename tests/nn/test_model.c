/*
 * Models as YAML DAGs: wiring, shape inference and its errors, describe,
 * forward_to, the shipped LeNet files, and the whole-LeNet gradient check.
 */
#include "nn_test_util.h"

static int build_err(const char *yaml, size_t c, size_t h, size_t w,
                     size_t classes, qd_error *err)
{
    qd_model_opts o = t_opts(c, h, w, classes);
    tmodel t;
    int rc = t_build_text(&t, yaml, &o, 1, err);
    t_free(&t);
    return rc;
}

#define EXPECT_ERR(yaml, c, h, w, classes, needle)                            \
    do {                                                                      \
        qd_error e_ = {0};                                                    \
        cr_expect_neq(build_err(yaml, c, h, w, classes, &e_), QD_OK,          \
                      "expected an error containing \"%s\"", needle);         \
        cr_expect(strstr(e_.msg, needle) != NULL,                             \
                  "message \"%s\" lacks \"%s\"", e_.msg, needle);             \
    } while (0)

Test(model, shape_errors_name_the_layer)
{
    const char *yaml =
        "layers:\n"
        "  - {name: c1, type: conv2d, out_channels: 6, kernel: 5}\n"
        "  - {type: maxpool2d, kernel: 2}\n"
        "  - {name: c2, type: conv2d, out_channels: 16, kernel: 5}\n"
        "  - {type: linear, out: 10}\n";
    /* 10 x 10 -> conv 6 x 6 -> pool 3 x 3: too small for c2 */
    EXPECT_ERR(yaml, 1, 10, 10, 10,
               "layer 'c2' (conv2d): input has 6 channels x 3 x 3, smaller "
               "than kernel 5");
    EXPECT_ERR("layers: [{name: p, type: maxpool2d, kernel: 4}]", 2, 3, 8, 10,
               "layer 'p' (maxpool2d): input has 2 channels x 3 x 8, smaller "
               "than kernel 4");
    /* the error points at the layer in the file */
    qd_error e = {0};
    build_err(yaml, 1, 10, 10, 10, &e);
    cr_expect(strncmp(e.msg, "<test>:4:", 9) == 0, "location: %s", e.msg);
}

Test(model, output_width_must_equal_classes)
{
    EXPECT_ERR("layers: [{name: fc, type: linear, out: 7}]", 1, 4, 4, 10,
               "the last layer 'fc' (linear) is the output and gives 7 "
               "values per sample, but the data set has 10 classes");
}

Test(model, wiring_errors)
{
    EXPECT_ERR("layers:\n  - {type: relu, input: nope}\n", 1, 1, 4, 4,
               "unknown input 'nope'");
    /* naming a later layer: a cycle cannot be written */
    EXPECT_ERR("layers:\n  - {name: a, type: relu, input: b}\n"
               "  - {name: b, type: relu, input: a}\n", 1, 1, 4, 4,
               "input 'b' comes later in the list");
    EXPECT_ERR("layers:\n  - {name: a, type: relu, input: a}\n", 1, 1, 4, 4,
               "cannot read itself");
    EXPECT_ERR("layers:\n  - {name: a, type: relu}\n  - {name: a, type: "
               "tanh}\n", 1, 1, 4, 4, "duplicate layer name 'a'");
    EXPECT_ERR("layers:\n  - {name: input, type: relu}\n", 1, 1, 4, 4,
               "reserved");
    EXPECT_ERR("layers:\n  - {type: add, inputs: [input]}\n", 1, 1, 4, 4,
               "'inputs' must be a list of two layer names");
    EXPECT_ERR("layers:\n  - {type: mix}\n", 1, 1, 4, 4,
               "missing required key 'inputs'");
    EXPECT_ERR("layers:\n  - {type: rleu}\n", 1, 1, 4, 4,
               "unknown type 'rleu' (did you mean 'relu'?)");
    EXPECT_ERR("layers:\n  - {type: linear, out: 4, biass: false}\n", 1, 1, 4,
               4, "unknown key 'biass' (did you mean 'bias'?)");
    EXPECT_ERR("layers:\n  - {type: linear}\n", 1, 1, 4, 4,
               "missing required key 'out'");
    EXPECT_ERR("layers:\n  - {type: linear, out: 0}\n", 1, 1, 4, 4,
               "'out' must be >= 1");
    EXPECT_ERR("layers:\n  - {type: linear, out: four}\n", 1, 1, 4, 4,
               "'out' must be an integer");
    EXPECT_ERR("layers:\n  - {type: conv2d, out_channels: 4, kernel: 1, "
               "padding: wide}\n", 1, 1, 1, 4, "padding 'wide'");
    EXPECT_ERR("layers: []\n", 1, 1, 4, 4, "non-empty list");
    EXPECT_ERR("nolayers: 1\n", 1, 1, 4, 4, "missing 'layers'");
}

Test(model, explicit_inputs_build_a_dag)
{
    /* x -> a = tanh(x); b = relu(x) (reads the data, not a); c = a + b */
    const char *yaml =
        "layers:\n"
        "  - {name: a, type: tanh}\n"
        "  - {name: b, type: relu, input: input}\n"
        "  - {name: c, type: add, inputs: [a, b]}\n";
    qd_model_opts o = t_opts(1, 1, 3, 3);
    tmodel t;
    qd_error err = {0};
    cr_assert_eq(t_build_text(&t, yaml, &o, 1, &err), QD_OK, "%s", err.msg);
    double x[3] = {-0.5, 0.2, 1.5}, z[3];
    cr_assert_eq(qd_model_forward(t.m, t.params, 1, x, z, &err), QD_OK);
    for (int i = 0; i < 3; i++)
        cr_expect_float_eq(z[i], tanh(x[i]) + (x[i] > 0 ? x[i] : 0), 1e-15);
    /* a layer whose output nobody reads gets a zero gradient */
    t_free(&t);
    const char *dead =
        "layers:\n"
        "  - {name: unused, type: linear, out: 2}\n"
        "  - {name: out, type: linear, out: 3, input: input}\n";
    cr_assert_eq(t_build_text(&t, dead, &o, 1, &err), QD_OK, "%s", err.msg);
    double g[8 + 12];
    for (size_t i = 0; i < t.n_params; i++)
        g[i] = 123.0;
    int32_t y[1] = {2};
    double L;
    cr_assert_eq(qd_model_loss_grad(t.m, t.params, 1, x, y, &L, g, NULL, NULL,
                                    &err), QD_OK, "%s", err.msg);
    for (size_t i = 0; i < 8; i++)
        cr_expect_eq(g[i], 0.0);
    cr_expect_neq(g[8], 0.0);
    t_free(&t);
}

Test(model, default_names_and_describe)
{
    qd_model_opts o = t_opts(1, 28, 28, 10);
    tmodel t;
    t_build_file(&t, "experiments/models/lenet.yaml", &o, 1);
    /* 156 + 2416 + 48120 + 10164 + 850 */
    cr_expect_eq(t.n_params, 61706);
    cr_expect_eq(qd_model_input_size(t.m), 784);
    cr_expect_eq(qd_model_n_classes(t.m), 10);
    cr_expect_eq(qd_model_layer_size(t.m, "conv1"), 6 * 28 * 28);
    cr_expect_eq(qd_model_layer_size(t.m, "pool2"), 400);
    cr_expect_eq(qd_model_layer_size(t.m, "flat"), 400);
    cr_expect_eq(qd_model_layer_size(t.m, "nope"), 0);
    cr_expect_eq(qd_model_n_blocks(t.m), 10);
    const qd_param_block *b = qd_model_block(t.m, 1);
    cr_expect_str_eq(b->layer, "conv1");
    cr_expect_str_eq(b->what, "bias");
    cr_expect_eq(b->offset, 150);
    cr_expect_eq(b->count, 6);
    char *d = qd_model_describe(t.m);
    cr_assert(d);
    cr_expect(strstr(d, "conv1") && strstr(d, "6 x 28 x 28") &&
              strstr(d, "16 x 5 x 5") && strstr(d, "61706"), "%s", d);
    free(d);
    t_free(&t);
    const char *yaml = "layers: [{type: relu}, {type: linear, out: 2}]";
    o = t_opts(1, 2, 2, 2);
    qd_error err = {0};
    cr_assert_eq(t_build_text(&t, yaml, &o, 1, &err), QD_OK, "%s", err.msg);
    cr_expect_eq(qd_model_layer_size(t.m, "relu0"), 4);
    cr_expect_eq(qd_model_layer_size(t.m, "linear1"), 2);
    t_free(&t);
}

Test(model, lenet_serves_cifar_shapes)
{
    qd_model_opts o = t_opts(3, 32, 32, 10);
    tmodel t;
    t_build_file(&t, "experiments/models/lenet.yaml", &o, 1);
    cr_expect_eq(qd_model_layer_size(t.m, "conv1"), 6 * 28 * 28);
    cr_expect_eq(t.n_params, 61706 + 300);
    t_free(&t);
}

Test(model, forward_to_matches_forward)
{
    qd_model_opts o = t_opts(1, 28, 28, 10);
    tmodel t;
    t_build_file(&t, "experiments/models/lenet.yaml", &o, 3);
    double *x = malloc(3 * 784 * sizeof *x);
    qd_rng rng;
    qd_rng_seed(&rng, 1, 1);
    t_fill_normal(&rng, x, 3 * 784, 1.0);
    double z[30], z2[30], p[3 * 400], f[3 * 400];
    qd_error err = {0};
    cr_assert_eq(qd_model_forward(t.m, t.params, 3, x, z, &err), QD_OK);
    cr_assert_eq(qd_model_forward_to(t.m, t.params, 3, x, "fc3", z2, &err),
                 QD_OK);
    for (int i = 0; i < 30; i++)
        cr_expect_eq(z[i], z2[i]);
    cr_assert_eq(qd_model_forward_to(t.m, t.params, 3, x, "pool2", p, &err),
                 QD_OK);
    cr_assert_eq(qd_model_forward_to(t.m, t.params, 3, x, "flat", f, &err),
                 QD_OK);
    for (int i = 0; i < 1200; i++)
        cr_expect_eq(p[i], f[i]);
    cr_expect_neq(qd_model_forward_to(t.m, t.params, 3, x, "zzz", f, &err),
                  QD_OK);
    cr_expect(strstr(err.msg, "zzz"));
    /* a larger batch after a smaller one regrows the buffers */
    double *x8 = malloc(8 * 784 * sizeof *x8), z8[80];
    t_fill_normal(&rng, x8, 8 * 784, 1.0);
    memcpy(x8 + 5 * 784, x, 3 * 784 * sizeof *x);
    cr_assert_eq(qd_model_forward(t.m, t.params, 8, x8, z8, &err), QD_OK);
    for (int i = 0; i < 30; i++)
        cr_expect_float_eq(z8[50 + i], z[i], 1e-12);
    free(x);
    free(x8);
    t_free(&t);
}

Test(model, bad_calls_are_rejected)
{
    qd_model_opts o = t_opts(1, 1, 4, 4);
    tmodel t;
    qd_error err = {0};
    cr_assert_eq(t_build_text(&t, "layers: [{type: linear, out: 4}]", &o, 1,
                              &err), QD_OK);
    double x[4] = {0}, z[4];
    int32_t y[1] = {4};
    double L;
    cr_expect_eq(qd_model_forward(t.m, t.params, 0, x, z, &err),
                 QD_ERR_INVALID);
    cr_expect_eq(qd_model_loss_grad(t.m, t.params, 1, x, y, &L, NULL, NULL,
                                    NULL, &err), QD_ERR_INVALID);
    cr_expect(strstr(err.msg, "label 4"), "%s", err.msg);
    /* a non-finite parameter is named, not silently propagated */
    t.params[2] = NAN;
    y[0] = 1;
    cr_expect_eq(qd_model_loss_grad(t.m, t.params, 1, x, y, &L, NULL, NULL,
                                    NULL, &err), QD_ERR_NUMERIC);
    cr_expect(strstr(err.msg, "'weight' of layer 'linear0'"), "%s", err.msg);
    t.params[2] = 0.5;
    x[1] = NAN;
    cr_expect_eq(qd_model_loss_grad(t.m, t.params, 1, x, y, &L, NULL, NULL,
                                    NULL, &err), QD_ERR_NUMERIC);
    cr_expect(strstr(err.msg, "input batch"), "%s", err.msg);
    qd_model_opts bad = t_opts(0, 1, 4, 4);
    qd_model *m = NULL;
    cr_expect_eq(qd_model_create(qd_config_root(t.cfg), t.reg, &bad, &m,
                                 &err), QD_ERR_INVALID);
    cr_expect_null(m);
    t_free(&t);
}

Test(model, softmax_cross_entropy_closed_form)
{
    /* a single linear layer with zero weights and bias b: logits = b */
    qd_model_opts o = t_opts(1, 1, 2, 3);
    tmodel t;
    qd_error err = {0};
    cr_assert_eq(t_build_text(&t, "layers: [{type: linear, out: 3, init: "
                              "zeros}]", &o, 1, &err), QD_OK);
    double *b = t.params + 6;
    b[0] = 1000.0, b[1] = 1001.0, b[2] = 998.0;   /* needs log-sum-exp */
    double x[4] = {0.3, -0.2, 0.1, 0.4}, g[9];
    int32_t y[2] = {0, 1};
    double L;
    cr_assert_eq(qd_model_loss_grad(t.m, t.params, 2, x, y, &L, g, NULL, NULL,
                                    &err), QD_OK, "%s", err.msg);
    double lse = 1001.0 + log(exp(-1.0) + 1.0 + exp(-3.0));
    double want = ((lse - 1000.0) + (lse - 1001.0)) / 2.0;
    cr_expect_float_eq(L, want, 1e-12, "%.17g vs %.17g", L, want);
    /* d/db_k = mean over the batch of softmax_k - onehot_k */
    for (int k = 0; k < 3; k++) {
        double s = exp(b[k] - lse);
        double want_g = (2 * s - (k == 0) - (k == 1)) / 2.0;
        cr_expect_float_eq(g[6 + k], want_g, 1e-14);
    }
    t_free(&t);
}

Test(model, whole_lenet_gradient_check)
{
    qd_model_opts o = t_opts(1, 28, 28, 10);
    tmodel t;
    t_build_file(&t, "experiments/models/lenet.yaml", &o, 5);
    double *x = malloc(2 * 784 * sizeof *x);
    qd_rng rng;
    qd_rng_seed(&rng, 3, 3);
    t_fill_normal(&rng, x, 2 * 784, 1.0);
    int32_t y[2] = {3, 8};
    double worst = t_gradcheck(&t, 2, x, y, 25, 60, 1e-5, 1e-6);
    cr_log_info("LeNet worst block error %.3g", worst);
    free(x);
    t_free(&t);
}
