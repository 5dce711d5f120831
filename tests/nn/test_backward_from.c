/*
 * qd_model_backward_from: the input gradient of a scalar function of a named
 * layer's output, checked against central finite differences of
 *     f(x) = r . forward_to(x, layer)
 * (r a fixed random direction, so dF/dx = J^T r) on a LeNet-like and a
 * quantum-LeNet-like model, at layers of every depth: a plain convolution, a
 * ReLU inside a fusable conv -> relu -> maxpool chain, the fused block's
 * pool, the flatten alias, the features before the circuit, the quantum
 * expectations, an add, the mix, and the logits; and on the paper's quantum
 * LeNet file at its 64 pre-circuit features and 6 expectations.
 */
#include "nn_test_util.h"

TestSuite(backward_from, .timeout = 120);

/* f(x) = r . forward_to(x, layer). */
static double f_at(tmodel *t, size_t batch, const double *x,
                   const char *layer, const double *r, double *out)
{
    qd_error err = {0};
    cr_assert_eq(qd_model_forward_to(t->m, t->params, batch, x, layer, out,
                                     &err), QD_OK, "%s", err.msg);
    const size_t n = batch * qd_model_layer_size(t->m, layer);
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += r[i] * out[i];
    return s;
}

/* Fourth-order central difference of f along x[i]; halve the step until two
 * successive stencils agree (a stencil straddling a ReLU or max-pool kink is
 * wrong, see t_fd). */
static double fd_x(tmodel *t, size_t batch, double *x, size_t i,
                   const char *layer, const double *r, double *out, double h)
{
    double prev = NAN;
    for (int k = 0; k < 6; k++, h *= 0.5) {
        const double keep = x[i], off[4] = {2 * h, h, -h, -2 * h};
        double l[4];
        for (int j = 0; j < 4; j++) {
            x[i] = keep + off[j];
            l[j] = f_at(t, batch, x, layer, r, out);
        }
        x[i] = keep;
        double cur = (8.0 * (l[1] - l[2]) - (l[0] - l[3])) / (12.0 * h);
        if (k > 0 && fabs(cur - prev) <= 1e-7 * fmax(fabs(cur), fabs(prev)) +
                                             1e-10)
            return cur;
        prev = cur;
    }
    return prev;
}

/* backward_from at `layer` against finite differences on up to max_x
 * coordinates of x (evenly spread); returns the norm-wise relative error. */
static double check_layer(tmodel *t, size_t batch, double *x,
                          const char *layer, size_t max_x, double h)
{
    const size_t in = qd_model_input_size(t->m), N = batch * in;
    const size_t no = batch * qd_model_layer_size(t->m, layer);
    cr_assert(no > 0, "no layer '%s'", layer);
    qd_rng rng;
    qd_rng_seed(&rng, 99, no);
    double *r = malloc(no * sizeof *r), *out = malloc(no * sizeof *out);
    double *gx = malloc(N * sizeof *gx);
    t_fill_normal(&rng, r, no, 1.0);
    for (size_t i = 0; i < N; i++)
        gx[i] = 1e300;   /* must be overwritten */
    qd_error err = {0};
    cr_assert_eq(qd_model_backward_from(t->m, t->params, batch, x, layer, r,
                                        gx, &err), QD_OK, "%s", err.msg);
    const size_t n = max_x < N ? max_x : N, stride = N / n;
    double *a = malloc(n * sizeof *a), *f = malloc(n * sizeof *f);
    for (size_t k = 0; k < n; k++) {
        size_t i = (k * stride + k / 3) % N;
        a[k] = gx[i];
        f[k] = fd_x(t, batch, x, i, layer, r, out, h);
    }
    double e = t_rel_err(a, f, n, 1e-3);
    double gn = 0.0;
    for (size_t k = 0; k < n; k++)
        gn += a[k] * a[k];
    cr_log_info("layer %-6s (%zu outputs): rel err %.2e over %zu coords, "
                "|g| %.3g", layer, no / batch, e, n, sqrt(gn));
    cr_expect(gn > 1e-12, "layer '%s': the checked gradient is all zero",
              layer);
    free(r);
    free(out);
    free(gx);
    free(a);
    free(f);
    return e;
}

/* LeNet-like: conv1 (not fused when it is the target), the fusable chain
 * conv2 -> relu2 -> pool2, flatten, and an add reading the same producer
 * twice and a residual fork. */
#define LENET_SMALL                                                         \
    "layers:\n"                                                             \
    "  - {name: conv1, type: conv2d, out_channels: 3, kernel: 3, "          \
    "padding: 1}\n"                                                         \
    "  - {name: relu1, type: relu}\n"                                       \
    "  - {name: pool1, type: maxpool2d, kernel: 2}\n"                       \
    "  - {name: conv2, type: conv2d, out_channels: 4, kernel: 3}\n"         \
    "  - {name: relu2, type: relu}\n"                                       \
    "  - {name: pool2, type: maxpool2d, kernel: 2}\n"                       \
    "  - {name: flat, type: flatten}\n"                                     \
    "  - {name: fc1, type: linear, out: 12}\n"                              \
    "  - {name: t1, type: tanh}\n"                                          \
    "  - {name: fc2, type: linear, out: 12, input: flat}\n"                 \
    "  - {name: sum, type: add, inputs: [t1, fc2]}\n"                       \
    "  - {name: twice, type: add, inputs: [sum, sum]}\n"                    \
    "  - {name: relu4, type: relu}\n"                                       \
    "  - {name: fc3, type: linear, out: 4}\n"

Test(backward_from, lenet_like_every_depth)
{
    omp_set_num_threads(1);
    qd_model_opts o = t_opts(2, 10, 10, 4);
    tmodel t;
    qd_error err = {0};
    cr_assert_eq(t_build_text(&t, LENET_SMALL, &o, 3, &err), QD_OK, "%s",
                 err.msg);
    double x[2 * 200];
    qd_rng rng;
    qd_rng_seed(&rng, 5, 5);
    t_fill_normal(&rng, x, 400, 1.0);
    const char *layers[] = {"conv1", "relu1", "pool1", "conv2", "relu2",
                            "pool2", "flat",  "fc1",   "sum",   "twice",
                            "relu4", "fc3"};
    for (size_t k = 0; k < sizeof layers / sizeof *layers; k++) {
        double e = check_layer(&t, 2, x, layers[k], 60, 1e-4);
        cr_expect(e < 1e-6, "layer '%s': relative error %.3g", layers[k], e);
    }
    t_free(&t);
}

/* Quantum-LeNet-like: trunk -> f2 (8 features) -> amplitude embedding on 3
 * qubits -> strongly entangling layers -> trainable Hermitians (3
 * expectations) -> qhead; f2 -> rhead -> relu: the residual fork; mix. */
#define QLENET_SMALL                                                        \
    "layers:\n"                                                             \
    "  - {name: conv1, type: conv2d, out_channels: 3, kernel: 3, "          \
    "padding: 1}\n"                                                         \
    "  - {name: relu1, type: relu}\n"                                       \
    "  - {name: pool1, type: maxpool2d, kernel: 2}\n"                       \
    "  - {name: flat, type: flatten}\n"                                     \
    "  - {name: fc1, type: linear, out: 10}\n"                              \
    "  - {name: relu3, type: relu}\n"                                       \
    "  - {name: f2, type: linear, out: 8}\n"                                \
    "  - name: q\n"                                                         \
    "    type: quantum\n"                                                   \
    "    wires: 3\n"                                                        \
    "    encoder: {plugin: amplitude}\n"                                    \
    "    ansatz: {plugin: strongly_entangling, layers: 2}\n"                \
    "    observable: {plugin: hermitian, trainable: true}\n"                \
    "    simulator: {plugin: statevector}\n"                                \
    "  - {name: qhead, type: linear, out: 3}\n"                             \
    "  - {name: rhead, type: linear, out: 3, input: f2}\n"                  \
    "  - {name: rrelu, type: relu}\n"                                       \
    "  - {name: mix, type: mix, inputs: [qhead, rrelu], alpha: 0.3, "       \
    "trainable: true}\n"                                                    \
    "  - {name: fc_out, type: linear, out: 3}\n"

Test(backward_from, quantum_lenet_like_every_depth)
{
    omp_set_num_threads(1);
    qd_model_opts o = t_opts(1, 8, 8, 3);
    tmodel t;
    qd_error err = {0};
    cr_assert_eq(t_build_text(&t, QLENET_SMALL, &o, 4, &err), QD_OK, "%s",
                 err.msg);
    double x[3 * 64];
    qd_rng rng;
    qd_rng_seed(&rng, 6, 6);
    t_fill_normal(&rng, x, 192, 1.0);
    const char *layers[] = {"pool1", "relu3", "f2",    "q",
                            "qhead", "rrelu", "mix",   "fc_out"};
    for (size_t k = 0; k < sizeof layers / sizeof *layers; k++) {
        double e = check_layer(&t, 3, x, layers[k], 64, 1e-4);
        cr_expect(e < 1e-6, "layer '%s': relative error %.3g", layers[k], e);
    }
    t_free(&t);
}

/* The paper's model file on MNIST shapes: the 64 features before the
 * circuit and the 6 quantum expectations. */
Test(backward_from, quantum_lenet_file_embeddings)
{
    omp_set_num_threads(1);
    qd_model_opts o = t_opts(1, 28, 28, 10);
    tmodel t;
    t_build_file(&t, "experiments/models/quantum-lenet.yaml", &o, 2);
    double *x = malloc(2 * 784 * sizeof *x);
    qd_rng rng;
    qd_rng_seed(&rng, 8, 8);
    t_fill_normal(&rng, x, 2 * 784, 1.0);
    cr_expect_eq(qd_model_layer_size(t.m, "f2"), 64u);
    cr_expect_eq(qd_model_layer_size(t.m, "q"), 6u);
    double e = check_layer(&t, 2, x, "f2", 40, 1e-4);
    cr_expect(e < 1e-6, "f2: relative error %.3g", e);
    e = check_layer(&t, 2, x, "q", 40, 1e-4);
    cr_expect(e < 1e-6, "q: relative error %.3g", e);
    free(x);
    t_free(&t);
}

/* At the logits with g_out = dCE/dlogits it is the input gradient of the
 * cross-entropy, computed here from the softmax formula; and calls in
 * between (another batch, another layer) do not disturb it, since the
 * forward is recomputed. */
Test(backward_from, logits_give_the_loss_input_gradient)
{
    qd_model_opts o = t_opts(1, 8, 8, 3);
    tmodel t;
    qd_error err = {0};
    cr_assert_eq(t_build_text(&t, QLENET_SMALL, &o, 9, &err), QD_OK, "%s",
                 err.msg);
    enum { B = 4, IN = 64, K = 3 };
    double x[B * IN], x2[2 * IN], z[B * K], g[B * K], gx[B * IN],
        gl[B * IN], tmp[2 * 8];
    int32_t y[B] = {0, 2, 1, 2};
    qd_rng rng;
    qd_rng_seed(&rng, 10, 10);
    t_fill_normal(&rng, x, B * IN, 1.0);
    t_fill_normal(&rng, x2, 2 * IN, 1.0);
    cr_assert_eq(qd_model_forward(t.m, t.params, B, x, z, &err), QD_OK);
    for (size_t b = 0; b < B; b++) {
        double mx = fmax(z[b * K], fmax(z[b * K + 1], z[b * K + 2])), s = 0;
        for (size_t k = 0; k < K; k++)
            s += exp(z[b * K + k] - mx);
        for (size_t k = 0; k < K; k++)
            g[b * K + k] = (exp(z[b * K + k] - mx) / s -
                            (k == (size_t)y[b])) / B;
    }
    cr_assert_eq(qd_model_forward_to(t.m, t.params, 2, x2, "f2", tmp, &err),
                 QD_OK);
    cr_assert_eq(qd_model_backward_from(t.m, t.params, B, x, "fc_out", g, gx,
                                        &err), QD_OK, "%s", err.msg);
    double L;
    cr_assert_eq(qd_model_loss_grad(t.m, t.params, B, x, y, &L, NULL, gl,
                                    NULL, &err), QD_OK);
    double e = t_rel_err(gx, gl, B * IN, 1e-12);
    cr_expect(e < 1e-12, "relative difference %.3g", e);
    t_free(&t);
}

Test(backward_from, bad_calls_are_rejected)
{
    qd_model_opts o = t_opts(2, 10, 10, 4);
    tmodel t;
    qd_error err = {0};
    cr_assert_eq(t_build_text(&t, LENET_SMALL, &o, 3, &err), QD_OK, "%s",
                 err.msg);
    double x[200] = {0}, g[12] = {0}, gx[200];
    cr_expect_eq(qd_model_backward_from(t.m, t.params, 1, x, "fc9", g, gx,
                                        &err), QD_ERR_INVALID);
    cr_expect(strstr(err.msg, "fc9"), "%s", err.msg);
    cr_expect_eq(qd_model_backward_from(t.m, t.params, 1, x, NULL, g, gx,
                                        &err), QD_ERR_INVALID);
    cr_expect_eq(qd_model_backward_from(t.m, t.params, 1, x, "fc1", NULL, gx,
                                        &err), QD_ERR_INVALID);
    cr_expect(strstr(err.msg, "g_out"), "%s", err.msg);
    cr_expect_eq(qd_model_backward_from(t.m, t.params, 1, x, "fc1", g, NULL,
                                        &err), QD_ERR_INVALID);
    cr_expect_eq(qd_model_backward_from(t.m, t.params, 0, x, "fc1", g, gx,
                                        &err), QD_ERR_INVALID);
    cr_expect_eq(qd_model_backward_from(NULL, t.params, 1, x, "fc1", g, gx,
                                        &err), QD_ERR_INVALID);
    /* the layer list */
    cr_expect_eq(qd_model_n_layers(t.m), 14u);
    cr_expect_str_eq(qd_model_layer_name(t.m, 0), "conv1");
    cr_expect_str_eq(qd_model_layer_name(t.m, 13), "fc3");
    cr_expect_null(qd_model_layer_name(t.m, 14));
    t_free(&t);
}
