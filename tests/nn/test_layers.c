/*
 * Layers one at a time: a model made of the layer under test alone (its
 * output is the "logits", classes = its output size) so that
 * qd_model_loss_grad exercises exactly that layer's forward and backward.
 * Forward values are compared with naive reference code written here;
 * parameter and input gradients with central finite differences.
 */
#include "nn_test_util.h"

#define H_FD 1e-5
#define TOL 1e-6

static void random_labels(qd_rng *rng, int32_t *y, size_t n, size_t classes)
{
    for (size_t i = 0; i < n; i++)
        y[i] = (int32_t)qd_rng_bounded(rng, (uint32_t)classes);
}

/* ---- conv2d ---- */

typedef struct conv_case {
    size_t cin, h, w, cout, k, stride, pad;
    const char *padding;   /* YAML text of the padding key */
    int bias;
} conv_case;

static void naive_conv(const conv_case *c, size_t batch, const double *x,
                       const double *wgt, const double *bias, double *out,
                       size_t ho, size_t wo)
{
    for (size_t b = 0; b < batch; b++)
        for (size_t co = 0; co < c->cout; co++)
            for (size_t oy = 0; oy < ho; oy++)
                for (size_t ox = 0; ox < wo; ox++) {
                    double s = bias ? bias[co] : 0.0;
                    for (size_t ci = 0; ci < c->cin; ci++)
                        for (size_t ky = 0; ky < c->k; ky++)
                            for (size_t kx = 0; kx < c->k; kx++) {
                                long iy = (long)(oy * c->stride + ky) -
                                          (long)c->pad;
                                long ix = (long)(ox * c->stride + kx) -
                                          (long)c->pad;
                                if (iy < 0 || ix < 0 || iy >= (long)c->h ||
                                    ix >= (long)c->w)
                                    continue;
                                s += wgt[((co * c->cin + ci) * c->k + ky) *
                                             c->k + kx] *
                                     x[((b * c->cin + ci) * c->h +
                                        (size_t)iy) * c->w + (size_t)ix];
                            }
                    out[((b * c->cout + co) * ho + oy) * wo + ox] = s;
                }
}

static const conv_case conv_cases[] = {
    {2, 7, 6, 3, 3, 1, 1, "1", 1},
    {3, 9, 8, 2, 3, 2, 0, "0", 1},
    {1, 8, 8, 4, 2, 2, 1, "1", 0},
    {2, 6, 5, 3, 1, 1, 0, "0", 1},          /* 1x1: the direct path */
    {1, 28, 28, 2, 5, 1, 2, "\"fit:28\"", 1},
    {3, 32, 32, 2, 5, 1, 0, "\"fit:28\"", 1},
    {2, 5, 7, 2, 3, 3, 2, "2", 1},          /* stride > 1 with padding */
};

static void run_conv_case(const conv_case *c, int check_grads)
{
    char yaml[512];
    snprintf(yaml, sizeof yaml,
             "layers:\n  - {name: c, type: conv2d, out_channels: %zu, "
             "kernel: %zu, stride: %zu, padding: %s, bias: %s}\n",
             c->cout, c->k, c->stride, c->padding, c->bias ? "true" : "false");
    size_t ho = (c->h + 2 * c->pad - c->k) / c->stride + 1;
    size_t wo = (c->w + 2 * c->pad - c->k) / c->stride + 1;
    size_t classes = c->cout * ho * wo;
    qd_model_opts o = t_opts(c->cin, c->h, c->w, classes);
    tmodel t;
    qd_error err = {0};
    cr_assert_eq(t_build_text(&t, yaml, &o, 11, &err), QD_OK, "%s", err.msg);
    size_t nw = c->cout * c->cin * c->k * c->k;
    cr_assert_eq(t.n_params, nw + (c->bias ? c->cout : 0));
    const size_t batch = 3, n = batch * c->cin * c->h * c->w;
    double *x = malloc(n * sizeof *x);
    double *got = malloc(batch * classes * sizeof *got);
    double *want = malloc(batch * classes * sizeof *want);
    qd_rng rng;
    qd_rng_seed(&rng, 5, 5);
    t_fill_normal(&rng, x, n, 1.0);
    cr_assert_eq(qd_model_forward(t.m, t.params, batch, x, got, &err), QD_OK,
                 "%s", err.msg);
    naive_conv(c, batch, x, t.params, c->bias ? t.params + nw : NULL, want,
               ho, wo);
    for (size_t i = 0; i < batch * classes; i++)
        cr_assert_float_eq(got[i], want[i], 1e-12, "conv %zux%zu s%zu p%zu: "
                           "output %zu: %g vs naive %g", c->k, c->k,
                           c->stride, c->pad, i, got[i], want[i]);
    if (check_grads) {
        int32_t y[3];
        random_labels(&rng, y, batch, classes);
        t_gradcheck(&t, batch, x, y, 60, 80, H_FD, TOL);
    }
    free(x);
    free(got);
    free(want);
    t_free(&t);
}

Test(conv2d, forward_matches_naive_convolution)
{
    for (size_t i = 0; i < sizeof conv_cases / sizeof conv_cases[0]; i++)
        run_conv_case(&conv_cases[i], 0);
}

Test(conv2d, gradients_match_finite_differences)
{
    for (size_t i = 0; i < sizeof conv_cases / sizeof conv_cases[0]; i++)
        run_conv_case(&conv_cases[i], 1);
}

Test(conv2d, random_shapes_forward_and_gradients)
{
    qd_rng rng;
    qd_rng_seed(&rng, 2024, 7);
    for (int n = 0; n < 8; n++) {
        conv_case c;
        c.cin = 1 + qd_rng_bounded(&rng, 3);
        c.k = 1 + qd_rng_bounded(&rng, 4);
        c.pad = qd_rng_bounded(&rng, 3);
        c.stride = 1 + qd_rng_bounded(&rng, 3);
        c.h = c.k + qd_rng_bounded(&rng, 6);
        c.w = c.k + qd_rng_bounded(&rng, 6);
        c.cout = 1 + qd_rng_bounded(&rng, 3);
        c.bias = (int)qd_rng_bounded(&rng, 2);
        char pad[32];
        snprintf(pad, sizeof pad, "%zu", c.pad);
        c.padding = pad;
        cr_log_info("conv %zu@%zux%zu from %zu x %zu x %zu, stride %zu, "
                    "padding %zu, bias %d", c.cout, c.k, c.k, c.cin, c.h,
                    c.w, c.stride, c.pad, c.bias);
        run_conv_case(&c, 1);
    }
}

Test(conv2d, fit_padding_that_cannot_fit_is_an_error)
{
    /* 28 + 2p - 5 + 1 is even for every p: no padding gives 27 x 27 */
    const char *yaml = "layers:\n  - {name: c, type: conv2d, out_channels: "
                       "1, kernel: 5, padding: \"fit:27\"}\n";
    qd_model_opts o = t_opts(1, 28, 28, 10);
    tmodel t;
    qd_error err = {0};
    cr_assert_neq(t_build_text(&t, yaml, &o, 1, &err), QD_OK);
    cr_expect(strstr(err.msg, "layer 'c' (conv2d)") &&
              strstr(err.msg, "fit:27"), "message: %s", err.msg);
    t_free(&t);
}

/* ---- pooling ---- */

static void run_pool(const char *type, size_t k, size_t stride, size_t c,
                     size_t h, size_t w)
{
    char yaml[256];
    snprintf(yaml, sizeof yaml,
             "layers:\n  - {name: p, type: %s, kernel: %zu, stride: %zu}\n",
             type, k, stride);
    size_t ho = (h - k) / stride + 1, wo = (w - k) / stride + 1;
    size_t classes = c * ho * wo;
    qd_model_opts o = t_opts(c, h, w, classes);
    tmodel t;
    qd_error err = {0};
    cr_assert_eq(t_build_text(&t, yaml, &o, 1, &err), QD_OK, "%s", err.msg);
    const size_t batch = 2, n = batch * c * h * w;
    double *x = malloc(n * sizeof *x);
    double *got = malloc(batch * classes * sizeof *got);
    qd_rng rng;
    qd_rng_seed(&rng, 8, 8);
    /* distinct values on a grid 1e-3 apart: no ties, and the 1e-6 finite
     * difference steps never reorder a window */
    size_t *perm = malloc(n * sizeof *perm);
    for (size_t i = 0; i < n; i++)
        perm[i] = i;
    qd_rng_shuffle(&rng, perm, n);
    for (size_t i = 0; i < n; i++)
        x[i] = ((double)perm[i] - (double)n / 2) * 1e-3;
    free(perm);
    cr_assert_eq(qd_model_forward(t.m, t.params, batch, x, got, &err), QD_OK,
                 "%s", err.msg);
    int is_max = strcmp(type, "maxpool2d") == 0;
    for (size_t pl = 0; pl < batch * c; pl++)
        for (size_t oy = 0; oy < ho; oy++)
            for (size_t ox = 0; ox < wo; ox++) {
                double m = -INFINITY, s = 0.0;
                for (size_t dy = 0; dy < k; dy++)
                    for (size_t dx = 0; dx < k; dx++) {
                        double v = x[(pl * h + oy * stride + dy) * w +
                                     ox * stride + dx];
                        m = v > m ? v : m;
                        s += v;
                    }
                double want = is_max ? m : s / (double)(k * k);
                cr_assert_float_eq(got[(pl * ho + oy) * wo + ox], want,
                                   1e-14, "%s k%zu s%zu", type, k, stride);
            }
    int32_t y[2];
    random_labels(&rng, y, batch, classes);
    t_gradcheck(&t, batch, x, y, 0, 200, H_FD, TOL);
    free(x);
    free(got);
    t_free(&t);
}

Test(pool, maxpool_forward_and_gradient)
{
    run_pool("maxpool2d", 2, 2, 3, 6, 7);
    run_pool("maxpool2d", 3, 2, 2, 7, 7);   /* overlapping windows */
    run_pool("maxpool2d", 2, 1, 1, 4, 5);
}

Test(pool, avgpool_forward_and_gradient)
{
    run_pool("avgpool2d", 2, 2, 3, 6, 7);
    run_pool("avgpool2d", 3, 2, 2, 7, 7);
}

Test(pool, stride_defaults_to_kernel)
{
    qd_model_opts o = t_opts(1, 8, 8, 16);
    tmodel t;
    qd_error err = {0};
    cr_assert_eq(t_build_text(&t, "layers: [{type: maxpool2d, kernel: 2}]",
                              &o, 1, &err), QD_OK, "%s", err.msg);
    cr_expect_eq(qd_model_layer_size(t.m, "maxpool2d0"), 16);
    t_free(&t);
}

/* ---- conv2d -> relu -> maxpool2d runs as one fused block ---- */

static void run_fused(size_t cin, size_t h, size_t w, size_t cout, size_t k,
                      size_t stride, size_t pad, size_t pk, size_t ps)
{
    char yaml[512];
    snprintf(yaml, sizeof yaml,
             "layers:\n"
             "  - {name: c, type: conv2d, out_channels: %zu, kernel: %zu, "
             "stride: %zu, padding: %zu}\n"
             "  - {name: r, type: relu}\n"
             "  - {name: p, type: maxpool2d, kernel: %zu, stride: %zu}\n",
             cout, k, stride, pad, pk, ps);
    size_t ho = (h + 2 * pad - k) / stride + 1, wo = (w + 2 * pad - k) / stride + 1;
    size_t po = (ho - pk) / ps + 1, pw = (wo - pk) / ps + 1;
    size_t classes = cout * po * pw;
    qd_model_opts o = t_opts(cin, h, w, classes);
    tmodel t;
    qd_error err = {0};
    cr_assert_eq(t_build_text(&t, yaml, &o, 13, &err), QD_OK, "%s", err.msg);
    const size_t batch = 3, n = batch * cin * h * w;
    double *x = malloc(n * sizeof *x);
    double *r = malloc(batch * cout * ho * wo * sizeof *r);
    double *got = malloc(batch * classes * sizeof *got);
    qd_rng rng;
    qd_rng_seed(&rng, 21, 21);
    t_fill_normal(&rng, x, n, 1.0);
    /* the fused pooled output equals max-pooling the unfused relu output */
    cr_assert_eq(qd_model_forward_to(t.m, t.params, batch, x, "r", r, &err),
                 QD_OK, "%s", err.msg);
    cr_assert_eq(qd_model_forward(t.m, t.params, batch, x, got, &err), QD_OK);
    for (size_t pl = 0; pl < batch * cout; pl++)
        for (size_t oy = 0; oy < po; oy++)
            for (size_t ox = 0; ox < pw; ox++) {
                double m = -INFINITY;
                for (size_t dy = 0; dy < pk; dy++)
                    for (size_t dx = 0; dx < pk; dx++)
                        m = fmax(m, r[(pl * ho + oy * ps + dy) * wo +
                                      ox * ps + dx]);
                cr_assert_float_eq(got[(pl * po + oy) * pw + ox], m, 1e-14);
            }
    int32_t y[3];
    random_labels(&rng, y, batch, classes);
    t_gradcheck(&t, batch, x, y, 60, 100, H_FD, TOL);
    free(x);
    free(r);
    free(got);
    t_free(&t);
}

Test(conv2d, fused_conv_relu_maxpool)
{
    run_fused(1, 12, 12, 3, 5, 1, 2, 2, 2);
    run_fused(2, 9, 8, 2, 3, 1, 1, 3, 2);   /* overlapping windows */
    run_fused(2, 11, 9, 3, 3, 2, 1, 2, 1);
}

/* ---- linear ---- */

Test(linear, forward_and_gradient)
{
    const char *yaml = "layers:\n  - {name: f, type: linear, out: 5}\n";
    qd_model_opts o = t_opts(2, 3, 2, 5);   /* flattens 12 inputs */
    tmodel t;
    qd_error err = {0};
    cr_assert_eq(t_build_text(&t, yaml, &o, 3, &err), QD_OK, "%s", err.msg);
    cr_assert_eq(t.n_params, 5 * 12 + 5);
    const size_t batch = 4;
    double x[4 * 12], got[4 * 5];
    qd_rng rng;
    qd_rng_seed(&rng, 2, 2);
    t_fill_normal(&rng, x, 48, 1.0);
    cr_assert_eq(qd_model_forward(t.m, t.params, batch, x, got, &err), QD_OK);
    for (size_t b = 0; b < batch; b++)
        for (size_t o2 = 0; o2 < 5; o2++) {
            double s = t.params[60 + o2];
            for (size_t i = 0; i < 12; i++)
                s += t.params[o2 * 12 + i] * x[b * 12 + i];
            cr_assert_float_eq(got[b * 5 + o2], s, 1e-13);
        }
    int32_t y[4] = {0, 4, 2, 2};
    t_gradcheck(&t, batch, x, y, 100, 100, H_FD, TOL);
    t_free(&t);
}

Test(linear, without_bias)
{
    qd_model_opts o = t_opts(1, 1, 6, 3);
    tmodel t;
    qd_error err = {0};
    cr_assert_eq(t_build_text(&t, "layers: [{type: linear, out: 3, bias: "
                              "false}]", &o, 3, &err), QD_OK, "%s", err.msg);
    cr_expect_eq(t.n_params, 18);
    cr_expect_eq(qd_model_n_blocks(t.m), 1);
    t_free(&t);
}

/* ---- activations ---- */

static void run_activation(const char *type, double (*f)(double))
{
    char yaml[128];
    snprintf(yaml, sizeof yaml, "layers: [{type: %s}]", type);
    qd_model_opts o = t_opts(2, 3, 3, 18);
    tmodel t;
    qd_error err = {0};
    cr_assert_eq(t_build_text(&t, yaml, &o, 3, &err), QD_OK, "%s", err.msg);
    double x[2 * 18], got[2 * 18];
    qd_rng rng;
    qd_rng_seed(&rng, 4, 4);
    t_fill_normal(&rng, x, 36, 1.5);
    cr_assert_eq(qd_model_forward(t.m, t.params, 2, x, got, &err), QD_OK);
    for (size_t i = 0; i < 36; i++)
        cr_assert_float_eq(got[i], f(x[i]), 1e-14, "%s(%g)", type, x[i]);
    int32_t y[2] = {3, 17};
    t_gradcheck(&t, 2, x, y, 0, 36, H_FD, TOL);
    t_free(&t);
}

static double ref_relu(double v) { return v > 0 ? v : 0; }
static double ref_sigmoid(double v) { return 1.0 / (1.0 + exp(-v)); }

Test(activation, relu_tanh_sigmoid)
{
    run_activation("relu", ref_relu);
    run_activation("tanh", tanh);
    run_activation("sigmoid", ref_sigmoid);
}

/* ---- add, mix, flatten ---- */

Test(combine, add_and_mix_forward_and_gradients)
{
    const char *yaml =
        "layers:\n"
        "  - {name: a, type: tanh}\n"
        "  - {name: b, type: sigmoid, input: input}\n"
        "  - {name: s, type: add, inputs: [a, b]}\n"
        "  - {name: fa, type: flatten, input: a}\n"
        "  - {name: m, type: mix, inputs: [s, fa], alpha: 0.3}\n";
    qd_model_opts o = t_opts(1, 2, 4, 8);
    tmodel t;
    qd_error err = {0};
    cr_assert_eq(t_build_text(&t, yaml, &o, 3, &err), QD_OK, "%s", err.msg);
    cr_assert_eq(t.n_params, 1);
    cr_expect_float_eq(t.params[0], 0.3, 1e-15);
    t.params[0] = 0.37;
    double x[3 * 8], got[3 * 8];
    qd_rng rng;
    qd_rng_seed(&rng, 6, 6);
    t_fill_normal(&rng, x, 24, 1.0);
    cr_assert_eq(qd_model_forward(t.m, t.params, 3, x, got, &err), QD_OK);
    for (size_t i = 0; i < 24; i++) {
        double a = tanh(x[i]), b = ref_sigmoid(x[i]);
        cr_assert_float_eq(got[i], 0.37 * (a + b) + 0.63 * a, 1e-14);
    }
    int32_t y[3] = {1, 5, 7};
    t_gradcheck(&t, 3, x, y, 1, 24, H_FD, TOL);
    t_free(&t);
}

Test(combine, same_input_twice_and_fixed_alpha)
{
    /* mix of [input, input] with a frozen alpha: output = x, d/dx = 1, and
     * the two contributions to the same gradient buffer must add up */
    const char *yaml =
        "layers:\n"
        "  - {name: m, type: mix, inputs: [input, input], alpha: 0.25, "
        "trainable: false}\n"
        "  - {name: s, type: add, inputs: [m, m]}\n";
    qd_model_opts o = t_opts(1, 1, 5, 5);
    tmodel t;
    qd_error err = {0};
    cr_assert_eq(t_build_text(&t, yaml, &o, 3, &err), QD_OK, "%s", err.msg);
    cr_assert_eq(t.n_params, 0);
    double x[2 * 5], got[2 * 5];
    qd_rng rng;
    qd_rng_seed(&rng, 6, 7);
    t_fill_normal(&rng, x, 10, 1.0);
    cr_assert_eq(qd_model_forward(t.m, t.params, 2, x, got, &err), QD_OK);
    for (size_t i = 0; i < 10; i++)
        cr_assert_float_eq(got[i], 2.0 * x[i], 1e-14);
    int32_t y[2] = {0, 3};
    t_gradcheck(&t, 2, x, y, 0, 10, H_FD, TOL);
    t_free(&t);
}

Test(combine, mismatched_sizes_name_both_inputs)
{
    const char *yaml =
        "layers:\n"
        "  - {name: a, type: linear, out: 4}\n"
        "  - {name: b, type: linear, out: 3, input: input}\n"
        "  - {name: s, type: add, inputs: [a, b]}\n";
    qd_model_opts o = t_opts(1, 1, 5, 4);
    tmodel t;
    qd_error err = {0};
    cr_assert_eq(t_build_text(&t, yaml, &o, 3, &err), QD_ERR_INVALID);
    cr_expect(strstr(err.msg, "layer 's' (add)") && strstr(err.msg, "'a'") &&
              strstr(err.msg, "'b'"), "message: %s", err.msg);
    t_free(&t);
}

/* ---- dropout ---- */

Test(dropout, identity_in_evaluation_masks_in_training)
{
    const char *yaml = "layers: [{name: d, type: dropout, rate: 0.5}]";
    qd_model_opts o = t_opts(1, 10, 10, 100);
    tmodel t;
    qd_error err = {0};
    cr_assert_eq(t_build_text(&t, yaml, &o, 3, &err), QD_OK, "%s", err.msg);
    double x[200], got[200], gx[200];
    qd_rng rng;
    qd_rng_seed(&rng, 9, 9);
    for (size_t i = 0; i < 200; i++)
        x[i] = 0.5 + qd_rng_uniform(&rng);   /* non-zero */
    cr_assert_eq(qd_model_forward(t.m, t.params, 2, x, got, &err), QD_OK);
    for (size_t i = 0; i < 200; i++)
        cr_assert_eq(got[i], x[i]);
    qd_model_set_training(t.m, 1);
    int32_t y[2] = {4, 60};
    double L;
    cr_assert_eq(qd_model_loss_grad(t.m, t.params, 2, x, y, &L, NULL, gx, got,
                                    &err), QD_OK, "%s", err.msg);
    size_t zeros = 0;
    for (size_t b = 0; b < 2; b++) {
        /* softmax cross-entropy gradient of the returned logits, by hand */
        double mx = -INFINITY, s = 0.0;
        for (size_t k = 0; k < 100; k++)
            mx = fmax(mx, got[b * 100 + k]);
        for (size_t k = 0; k < 100; k++)
            s += exp(got[b * 100 + k] - mx);
        for (size_t k = 0; k < 100; k++) {
            size_t i = b * 100 + k;
            double gl = (exp(got[i] - mx) / s - (k == (size_t)y[b])) / 2.0;
            if (got[i] == 0.0) {
                zeros++;
                cr_assert_eq(gx[i], 0.0);
            } else {
                cr_assert_float_eq(got[i], 2.0 * x[i], 1e-15);
                cr_assert_float_eq(gx[i], 2.0 * gl, 1e-15);
            }
        }
    }
    cr_expect(zeros > 60 && zeros < 140, "dropped %zu of 200", zeros);
    t_free(&t);
}

/* ---- the input gradient is optional ---- */

Test(layers, parameter_gradients_do_not_depend_on_input_gradient_request)
{
    const char *yaml =
        "layers:\n"
        "  - {type: conv2d, out_channels: 3, kernel: 3, padding: 1}\n"
        "  - {type: relu}\n"
        "  - {type: maxpool2d, kernel: 2}\n"
        "  - {type: linear, out: 4}\n";
    qd_model_opts o = t_opts(2, 6, 6, 4);
    tmodel t;
    qd_error err = {0};
    cr_assert_eq(t_build_text(&t, yaml, &o, 3, &err), QD_OK, "%s", err.msg);
    double x[3 * 72], gx[3 * 72];
    qd_rng rng;
    qd_rng_seed(&rng, 1, 2);
    t_fill_normal(&rng, x, 216, 1.0);
    int32_t y[3] = {0, 1, 3};
    double *g1 = malloc(t.n_params * sizeof *g1);
    double *g2 = malloc(t.n_params * sizeof *g2);
    double L1, L2;
    cr_assert_eq(qd_model_loss_grad(t.m, t.params, 3, x, y, &L1, g1, NULL,
                                    NULL, &err), QD_OK);
    cr_assert_eq(qd_model_loss_grad(t.m, t.params, 3, x, y, &L2, g2, gx, NULL,
                                    &err), QD_OK);
    cr_assert_eq(L1, L2);
    for (size_t i = 0; i < t.n_params; i++)
        cr_assert_eq(g1[i], g2[i]);
    /* and the input gradient alone matches finite differences */
    double L3;
    cr_assert_eq(qd_model_loss_grad(t.m, t.params, 3, x, y, &L3, NULL, gx,
                                    NULL, &err), QD_OK);
    for (size_t i = 0; i < 216; i += 7) {
        double fd = t_fd(&t, t.params, 3, x, y, x, i, H_FD);
        cr_assert_float_eq(gx[i], fd, 1e-8, "x[%zu]: %g vs %g", i, gx[i], fd);
    }
    free(g1);
    free(g2);
    t_free(&t);
}

/* ---- initialisers ---- */

static void init_stats(const char *init, size_t fan_in, double *mx,
                       double *sd, double *bias_abs)
{
    char yaml[160];
    snprintf(yaml, sizeof yaml, "layers: [{type: linear, out: 200, init: %s}]",
             init);
    qd_model_opts o = t_opts(1, 1, fan_in, 200);
    tmodel t;
    qd_error err = {0};
    cr_assert_eq(t_build_text(&t, yaml, &o, 17, &err), QD_OK, "%s", err.msg);
    size_t nw = 200 * fan_in;
    double m = 0, s2 = 0;
    *mx = 0;
    for (size_t i = 0; i < nw; i++) {
        *mx = fmax(*mx, fabs(t.params[i]));
        m += t.params[i];
        s2 += t.params[i] * t.params[i];
    }
    m /= (double)nw;
    *sd = sqrt(s2 / (double)nw - m * m);
    *bias_abs = 0;
    for (size_t i = nw; i < nw + 200; i++)
        *bias_abs = fmax(*bias_abs, fabs(t.params[i]));
    t_free(&t);
}

Test(init, pytorch_default_and_others)
{
    const size_t fi = 100;
    double mx, sd, bmax;
    /* pytorch: U(+-1/sqrt(fan_in)) for weight and bias: sd = bound/sqrt(3) */
    init_stats("pytorch", fi, &mx, &sd, &bmax);
    cr_expect(mx <= 0.1 && mx > 0.099, "max %g", mx);
    cr_expect(fabs(sd - 0.1 / sqrt(3.0)) < 0.002, "sd %g", sd);
    cr_expect(bmax <= 0.1 && bmax > 0.09, "bias max %g", bmax);
    init_stats("xavier_normal", fi, &mx, &sd, &bmax);
    cr_expect(fabs(sd - sqrt(2.0 / 300.0)) < 0.002, "sd %g", sd);
    cr_expect_eq(bmax, 0.0);
    init_stats("xavier_uniform", fi, &mx, &sd, &bmax);
    cr_expect(mx <= sqrt(6.0 / 300.0), "max %g", mx);
    cr_expect(fabs(sd - sqrt(2.0 / 300.0)) < 0.002, "sd %g", sd);
    init_stats("kaiming_normal", fi, &mx, &sd, &bmax);
    cr_expect(fabs(sd - sqrt(2.0 / 100.0)) < 0.003, "sd %g", sd);
    init_stats("kaiming_uniform", fi, &mx, &sd, &bmax);
    cr_expect(mx <= sqrt(6.0 / 100.0) && mx > 0.24, "max %g", mx);
    init_stats("zeros", fi, &mx, &sd, &bmax);
    cr_expect_eq(mx, 0.0);
}

Test(init, same_seed_same_parameters_fixed_order)
{
    const char *yaml = "layers:\n  - {type: conv2d, out_channels: 2, "
                       "kernel: 3}\n  - {type: linear, out: 3}\n";
    qd_model_opts o = t_opts(1, 5, 5, 3);
    tmodel a, b;
    qd_error err = {0};
    cr_assert_eq(t_build_text(&a, yaml, &o, 42, &err), QD_OK, "%s", err.msg);
    cr_assert_eq(t_build_text(&b, yaml, &o, 42, &err), QD_OK, "%s", err.msg);
    for (size_t i = 0; i < a.n_params; i++)
        cr_assert_eq(a.params[i], b.params[i]);
    /* layer order, weight then bias: the first 18 draws are conv weights */
    qd_rng rng;
    qd_rng_seed(&rng, 42, 1);
    double bound = 1.0 / 3.0;   /* fan_in 9 */
    for (size_t i = 0; i < 18; i++) {
        double want = bound * (2.0 * qd_rng_uniform(&rng) - 1.0);
        cr_assert_float_eq(a.params[i], want, 1e-15);
    }
    t_free(&a);
    t_free(&b);
}
