/* Exactness of the distillation machinery (core/src/distill):
 *   - qd_fd_second_order against the closed-form Hessian-vector and mixed
 *     products of softmax regression, and its error-versus-eps_rel curve;
 *   - the meta-gradient of the performance-matching outer loss (images and
 *     step sizes) from qd_unroll_backward against
 *       * exact reverse mode with closed-form Hessians (softmax regression),
 *       * nested central differences of the whole outer loss, for a tiny
 *         conv model and a tiny hybrid quantum model (amplitude encoder,
 *         strongly entangling ansatz, trainable Hermitian, statevector).
 */
#include "distill_test_util.h"

TestSuite(distill_exact, .fini = dt_teardown, .timeout = 120);

#define SM_YAML "layers:\n  - {type: flatten}\n  - {type: linear, out: 4}\n"
enum { SM_D = 6, SM_K = 4, SM_B = 5 };

/* The softmax-regression model and closed forms must agree on the loss and
 * gradient, else every comparison below would be meaningless. */
Test(distill_exact, softmax_closed_form_matches_model)
{
    dt_model t;
    dt_model_make(&t, SM_YAML, 1, 2, 3, SM_K, 3);
    cr_assert_eq(t.n, (size_t)(SM_K * SM_D + SM_K));
    qd_rng rng;
    qd_rng_seed(&rng, 1, 2);
    double *x = dt_normal(&rng, SM_B * SM_D, 1.0);
    int32_t y[SM_B] = {0, 3, 1, 2, 1};
    double g1[SM_K * SM_D + SM_K], g2[SM_K * SM_D + SM_K], L1, L2;
    qd_error err = {0};
    cr_assert_eq(qd_model_loss_grad(t.m, t.w, SM_B, x, y, &L1, g1, NULL, NULL,
                                    &err), QD_OK, "%s", err.msg);
    L2 = sm_loss_grad(t.w, SM_D, SM_K, SM_B, x, y, g2);
    cr_expect(fabs(L1 - L2) < 1e-13, "loss %.17g vs %.17g", L1, L2);
    cr_expect(dt_rel(g1, g2, t.n) < 1e-13, "gradient differs: %.3g",
              dt_rel(g1, g2, t.n));
    free(x);
    dt_model_free(&t);
}

/* Relative errors of hv and xv at one eps_rel. */
static void fd_errors(dt_model *t, const double *w, const double *x,
                      const int32_t *y, const double *v, double eps,
                      double *e_hv, double *e_xv)
{
    const size_t n = t->n;
    double hv[SM_K * SM_D + SM_K], hx[SM_K * SM_D + SM_K];
    double xv[SM_B * SM_D], xx[SM_B * SM_D];
    qd_error err = {0};
    cr_assert_eq(qd_fd_second_order(t->m, w, SM_B, x, y, v, eps, hv, xv,
                                    &err), QD_OK, "%s", err.msg);
    sm_second(w, SM_D, SM_K, SM_B, x, y, v, hx, xx);
    *e_hv = dt_rel(hv, hx, n);
    *e_xv = dt_rel(xv, xx, SM_B * SM_D);
}

/* The default step (eps_rel = 0 -> 1e-5) within 1e-7 of the closed forms,
 * for directions from unit scale down to 1e-6 (meta-gradients are small). */
Test(distill_exact, fd_second_order_vs_closed_form)
{
    dt_model t;
    dt_model_make(&t, SM_YAML, 1, 2, 3, SM_K, 3);
    qd_rng rng;
    qd_rng_seed(&rng, 4, 2);
    double *w = dt_normal(&rng, t.n, 0.7);
    double *x = dt_normal(&rng, SM_B * SM_D, 1.0);
    double *v = dt_normal(&rng, t.n, 1.0);
    int32_t y[SM_B] = {2, 0, 3, 1, 3};
    for (int scale = 0; scale <= 6; scale += 3) {
        for (size_t i = 0; i < t.n; i++)
            v[i] *= scale ? 1e-3 : 1.0;
        double eh, ex;
        fd_errors(&t, w, x, y, v, 0.0, &eh, &ex);
        cr_log_info("|v| ~ 1e-%d: hv rel err %.3g, xv rel err %.3g", scale,
                    eh, ex);
        cr_expect(eh < 1e-7, "hv relative error %.3g", eh);
        cr_expect(ex < 1e-7, "xv relative error %.3g", ex);
    }
    /* one-sided calls: only hv, only xv */
    double hv[SM_K * SM_D + SM_K], hx[SM_K * SM_D + SM_K];
    qd_error err = {0};
    cr_assert_eq(qd_fd_second_order(t.m, w, SM_B, x, y, v, 0.0, hv, NULL,
                                    &err), QD_OK, "%s", err.msg);
    sm_second(w, SM_D, SM_K, SM_B, x, y, v, hx, NULL);
    cr_expect(dt_rel(hv, hx, t.n) < 1e-7);
    /* a zero direction gives exact zeros */
    memset(v, 0, t.n * sizeof *v);
    cr_assert_eq(qd_fd_second_order(t.m, w, SM_B, x, y, v, 0.0, hv, NULL,
                                    &err), QD_OK, "%s", err.msg);
    cr_expect(dt_norm(hv, t.n) == 0.0);
    /* bad step and non-finite direction are reported */
    cr_expect_eq(qd_fd_second_order(t.m, w, SM_B, x, y, v, 2.0, hv, NULL,
                                    &err), QD_ERR_INVALID);
    v[3] = NAN;
    cr_expect_eq(qd_fd_second_order(t.m, w, SM_B, x, y, v, 0.0, hv, NULL,
                                    &err), QD_ERR_NUMERIC);
    cr_expect(strstr(err.msg, "not finite"), "%s", err.msg);
    free(w);
    free(x);
    free(v);
    dt_model_free(&t);
}

/* Error versus eps_rel (relative, norm-wise; this model, seed 4; measured
 * with gcc 12 -O3, x86-64):
 *
 *   eps_rel   hv error   xv error
 *   1e-2      8.8e-05    5.7e-05     truncation, O(eps^2)
 *   1e-3      8.8e-07    5.7e-07
 *   1e-4      8.8e-09    5.7e-09
 *   1e-5      8.8e-11    5.6e-11     <- default
 *   1e-6      8.6e-11    6.3e-11     optimum: truncation ~ round-off
 *   1e-7      1.3e-09    5.1e-10     round-off, O(u / eps)
 *   1e-8      1.0e-08    5.1e-09
 *   1e-9      1.0e-07    8.3e-08
 *
 * (regenerate with the cr_log_info lines of this test). The assertions pin
 * the shape: quadratic decrease to the right of the optimum, growth to the
 * left, and the default within a decade of the best. 1e-5 rather than the
 * optimum 1e-6 because the round-off side grows with the gradient's own
 * rounding error, larger for deep models than here, while the truncation
 * side is already far below the 1e-7 target. */
Test(distill_exact, fd_error_vs_eps_curve)
{
    dt_model t;
    dt_model_make(&t, SM_YAML, 1, 2, 3, SM_K, 3);
    qd_rng rng;
    qd_rng_seed(&rng, 4, 2);
    double *w = dt_normal(&rng, t.n, 0.7);
    double *x = dt_normal(&rng, SM_B * SM_D, 1.0);
    double *v = dt_normal(&rng, t.n, 1.0);
    int32_t y[SM_B] = {2, 0, 3, 1, 3};
    double eh[8], ex[8], best = INFINITY;
    for (int k = 0; k < 8; k++) {
        double eps = pow(10.0, -(k + 2));
        fd_errors(&t, w, x, y, v, eps, &eh[k], &ex[k]);
        cr_log_info("eps_rel 1e-%d: hv %.2g xv %.2g", k + 2, eh[k], ex[k]);
        best = eh[k] < best ? eh[k] : best;
    }
    /* truncation: 1e-2 -> 1e-3 -> 1e-4 each ~100x smaller */
    cr_expect(eh[0] / eh[1] > 50 && eh[1] / eh[2] > 50,
              "not O(eps^2): %.3g %.3g %.3g", eh[0], eh[1], eh[2]);
    /* round-off: 1e-9 much worse than 1e-5 */
    cr_expect(eh[7] > 100 * eh[3], "no round-off growth: %.3g vs %.3g", eh[7],
              eh[3]);
    cr_expect(eh[3] < 10 * best, "default 1e-5 (%.3g) far from best (%.3g)",
              eh[3], best);
    cr_expect(eh[3] < 1e-9 && ex[3] < 1e-9);
    free(w);
    free(x);
    free(v);
    dt_model_free(&t);
}

/* ---- meta-gradients ---- */

/* Meta-gradient by qd_unroll + the model's outer gradient. */
static double unroll_meta(qd_model *m, const double *w0, size_t steps,
                          size_t per, size_t T, const double *xs,
                          const int32_t *ys, const double *lrs, size_t Bo,
                          const double *Xo, const int32_t *Yo, double *g_xs,
                          double *g_lrs, double *g_w0)
{
    const size_t n = qd_model_n_params(m), in = qd_model_input_size(m);
    qd_unroll *u = NULL;
    qd_error err = {0};
    cr_assert_eq(qd_unroll_create(m, T, per, &u, &err), QD_OK, "%s",
                 err.msg);
    const double *wT;
    cr_assert_eq(qd_unroll_forward(u, w0, steps, per, xs, ys, lrs, &wT, &err),
                 QD_OK, "%s", err.msg);
    double L, *gT = malloc(n * sizeof *gT);
    cr_assert_eq(qd_model_loss_grad(m, wT, Bo, Xo, Yo, &L, gT, NULL, NULL,
                                    &err), QD_OK, "%s", err.msg);
    memset(g_xs, 0, steps * per * in * sizeof *g_xs);
    memset(g_lrs, 0, T * sizeof *g_lrs);
    cr_assert_eq(qd_unroll_backward(u, gT, g_xs, g_lrs, g_w0, 0.0, &err),
                 QD_OK, "%s", err.msg);
    free(gT);
    qd_unroll_destroy(u);
    return L;
}

/* Softmax regression, 2 steps x 2 epochs: against exact reverse mode with
 * the closed-form Hessians. */
Test(distill_exact, meta_gradient_softmax_vs_exact_reverse_mode)
{
    dt_model t;
    dt_model_make(&t, SM_YAML, 1, 2, 3, SM_K, 8);
    enum { STEPS = 2, PER = 8, T = 4, BO = 30 };
    qd_rng rng;
    qd_rng_seed(&rng, 8, 1);
    double *xs = dt_normal(&rng, STEPS * PER * SM_D, 1.0);
    double *Xo = dt_normal(&rng, BO * SM_D, 1.0);
    int32_t ys[STEPS * PER], Yo[BO];
    for (int i = 0; i < STEPS * PER; i++)
        ys[i] = (int32_t)((i / 2) % SM_K);
    for (int i = 0; i < BO; i++)
        Yo[i] = (int32_t)qd_rng_bounded(&rng, SM_K);
    const double lrs[T] = {0.8, 0.5, 1.1, 0.3};
    double gx[STEPS * PER * SM_D], gl[T], ex[STEPS * PER * SM_D], el[T];
    double L1 = unroll_meta(t.m, t.w, STEPS, PER, T, xs, ys, lrs, BO, Xo, Yo,
                            gx, gl, NULL);
    double L2 = sm_meta_exact(t.w, SM_D, SM_K, STEPS, PER, T, xs, ys, lrs, BO,
                              Xo, Yo, ex, el);
    double e_x = dt_rel(gx, ex, STEPS * PER * SM_D), e_l = dt_rel(gl, el, T);
    cr_log_info("softmax: outer loss %.6f; rel err images %.3g, lrs %.3g", L1,
                e_x, e_l);
    cr_expect(fabs(L1 - L2) < 1e-12 * fabs(L2), "%.17g vs %.17g", L1, L2);
    cr_expect(e_x < 1e-5, "images: %.3g", e_x);
    cr_expect(e_l < 1e-5, "lrs: %.3g", e_l);
    cr_expect(e_x < 1e-8 && e_l < 1e-8, "expected ~1e-10, got %.3g %.3g", e_x,
              e_l);
    /* the gradients are not trivially small (the test can fail) */
    cr_expect(dt_norm(ex, STEPS * PER * SM_D) > 1e-3 && dt_norm(el, T) > 1e-3);
    free(xs);
    free(Xo);
    dt_model_free(&t);
}

/* The whole outer loss as a function of the images and step sizes, by a
 * plain forward unroll with first-order model gradients. */
static double outer_loss(qd_model *m, const double *w0, size_t steps,
                         size_t per, size_t T, const double *xs,
                         const int32_t *ys, const double *lrs, size_t Bo,
                         const double *Xo, const int32_t *Yo)
{
    const size_t n = qd_model_n_params(m), in = qd_model_input_size(m);
    double *w = malloc(n * sizeof *w), *g = malloc(n * sizeof *g), L;
    memcpy(w, w0, n * sizeof *w);
    qd_error err = {0};
    for (size_t t = 0; t < T; t++) {
        size_t s = t % steps;
        cr_assert_eq(qd_model_loss_grad(m, w, per, xs + s * per * in,
                                        ys + s * per, NULL, g, NULL, NULL,
                                        &err), QD_OK, "%s", err.msg);
        for (size_t i = 0; i < n; i++)
            w[i] -= lrs[t] * g[i];
    }
    cr_assert_eq(qd_model_loss_grad(m, w, Bo, Xo, Yo, &L, NULL, NULL, NULL,
                                    &err), QD_OK, "%s", err.msg);
    free(w);
    free(g);
    return L;
}

/* Compare qd_unroll's meta-gradient with central differences of the whole
 * outer loss, every pixel and every step size. */
static void check_nested_fd(const char *what, dt_model *t, size_t steps,
                            size_t per, size_t T, size_t Bo, double lr0,
                            uint64_t seed)
{
    const size_t in = qd_model_input_size(t->m), K = qd_model_n_classes(t->m);
    const size_t nx = steps * per * in;
    qd_rng rng;
    qd_rng_seed(&rng, seed, 5);
    double *xs = dt_normal(&rng, nx, 1.0);
    double *Xo = dt_normal(&rng, Bo * in, 1.0);
    int32_t *ys = malloc(steps * per * sizeof *ys), *Yo = malloc(Bo * 4);
    for (size_t i = 0; i < steps * per; i++)
        ys[i] = (int32_t)(i % K);
    for (size_t i = 0; i < Bo; i++)
        Yo[i] = (int32_t)(i % K);
    double *lrs = malloc(T * sizeof *lrs);
    for (size_t i = 0; i < T; i++)
        lrs[i] = lr0 * (1.0 + 0.3 * (double)i);
    double *gx = malloc(nx * sizeof *gx), *gl = malloc(T * sizeof *gl);
    double *fx = malloc(nx * sizeof *fx), *fl = malloc(T * sizeof *fl);
    double L = unroll_meta(t->m, t->w, steps, per, T, xs, ys, lrs, Bo, Xo, Yo,
                           gx, gl, NULL);
    const double h = 1e-5;
    for (size_t i = 0; i < nx; i++) {
        double keep = xs[i];
        xs[i] = keep + h;
        double lp = outer_loss(t->m, t->w, steps, per, T, xs, ys, lrs, Bo, Xo, Yo);
        xs[i] = keep - h;
        double lm = outer_loss(t->m, t->w, steps, per, T, xs, ys, lrs, Bo, Xo, Yo);
        xs[i] = keep;
        fx[i] = (lp - lm) / (2 * h);
    }
    for (size_t i = 0; i < T; i++) {
        double keep = lrs[i];
        lrs[i] = keep + h;
        double lp = outer_loss(t->m, t->w, steps, per, T, xs, ys, lrs, Bo, Xo, Yo);
        lrs[i] = keep - h;
        double lm = outer_loss(t->m, t->w, steps, per, T, xs, ys, lrs, Bo, Xo, Yo);
        lrs[i] = keep;
        fl[i] = (lp - lm) / (2 * h);
    }
    double e_x = dt_rel(gx, fx, nx), e_l = dt_rel(gl, fl, T);
    cr_log_info("%s: %zu params, outer loss %.6f; |dL/dx| %.3g rel err %.3g; "
                "|dL/dlr| %.3g rel err %.3g", what, t->n, L, dt_norm(fx, nx),
                e_x, dt_norm(fl, T), e_l);
    cr_expect(e_x < 1e-5, "%s images: relative error %.3g", what, e_x);
    cr_expect(e_l < 1e-5, "%s step sizes: relative error %.3g", what, e_l);
    cr_expect(dt_norm(fx, nx) > 1e-4 && dt_norm(fl, T) > 1e-4,
              "%s: the meta-gradient is too small to test", what);
    free(xs);
    free(Xo);
    free(ys);
    free(Yo);
    free(lrs);
    free(gx);
    free(gl);
    free(fx);
    free(fl);
}

/* Smooth conv model (tanh, average pooling: central differences need no
 * kinks), 1 step x 3 epochs: the same images enter all three updates. */
Test(distill_exact, meta_gradient_conv_vs_nested_fd)
{
    dt_model t;
    dt_model_make(&t,
                  "layers:\n"
                  "  - {type: conv2d, out_channels: 3, kernel: 3}\n"
                  "  - {type: tanh}\n"
                  "  - {type: avgpool2d, kernel: 2}\n"
                  "  - {type: linear, out: 5}\n"
                  "  - {type: tanh}\n"
                  "  - {type: linear, out: 3}\n",
                  1, 6, 6, 3, 21);
    check_nested_fd("conv", &t, 1, 3, 3, 12, 0.5, 21);
    dt_model_free(&t);
}

/* Hybrid quantum model: linear -> amplitude embedding on 2 qubits -> 2
 * strongly entangling layers -> trainable Hermitian per wire -> linear;
 * 3 steps x 1 epoch. */
Test(distill_exact, meta_gradient_quantum_vs_nested_fd)
{
    dt_model t;
    dt_model_make(&t,
                  "layers:\n"
                  "  - {type: linear, out: 4}\n"
                  "  - name: q\n"
                  "    type: quantum\n"
                  "    wires: 2\n"
                  "    encoder: {plugin: amplitude}\n"
                  "    ansatz: {plugin: strongly_entangling, layers: 2}\n"
                  "    observable: {plugin: hermitian, trainable: true}\n"
                  "    simulator: {plugin: statevector}\n"
                  "  - {type: linear, out: 3}\n",
                  1, 3, 3, 3, 33);
    check_nested_fd("quantum", &t, 3, 3, 3, 12, 0.5, 33);
    dt_model_free(&t);
}

/* g_w0 (the gradient through all updates to the initial parameters) also
 * matches exact reverse mode: it checks the H-product chain on its own. */
Test(distill_exact, meta_gradient_w0_softmax)
{
    dt_model t;
    dt_model_make(&t, SM_YAML, 1, 2, 3, SM_K, 9);
    enum { STEPS = 1, PER = 4, T = 3, BO = 10 };
    qd_rng rng;
    qd_rng_seed(&rng, 9, 1);
    double *xs = dt_normal(&rng, STEPS * PER * SM_D, 1.0);
    double *Xo = dt_normal(&rng, BO * SM_D, 1.0);
    int32_t ys[PER] = {0, 1, 2, 3}, Yo[BO];
    for (int i = 0; i < BO; i++)
        Yo[i] = i % SM_K;
    const double lrs[T] = {0.7, 0.4, 0.9};
    double gx[PER * SM_D], gl[T], gw[SM_K * SM_D + SM_K];
    unroll_meta(t.m, t.w, STEPS, PER, T, xs, ys, lrs, BO, Xo, Yo, gx, gl, gw);
    /* exact: dL/dw0 = prod_t (I - lr_t H_t) g_T, applied in reverse */
    const size_t n = t.n;
    double W[T + 1][SM_K * SM_D + SM_K], G[SM_K * SM_D + SM_K];
    double g[SM_K * SM_D + SM_K], hv[SM_K * SM_D + SM_K];
    memcpy(W[0], t.w, n * sizeof(double));
    for (int s = 0; s < T; s++) {
        sm_loss_grad(W[s], SM_D, SM_K, PER, xs, ys, G);
        for (size_t i = 0; i < n; i++)
            W[s + 1][i] = W[s][i] - lrs[s] * G[i];
    }
    sm_loss_grad(W[T], SM_D, SM_K, BO, Xo, Yo, g);
    for (int s = T; s-- > 0;) {
        sm_second(W[s], SM_D, SM_K, PER, xs, ys, g, hv, NULL);
        for (size_t i = 0; i < n; i++)
            g[i] -= lrs[s] * hv[i];
    }
    double e = dt_rel(gw, g, n);
    cr_expect(e < 1e-8, "dL/dw0 relative error %.3g", e);
    free(xs);
    free(Xo);
    dt_model_free(&t);
}

/* Misuse is reported, not crashed on. */
Test(distill_exact, unroll_argument_checks)
{
    dt_model t;
    dt_model_make(&t, SM_YAML, 1, 2, 3, SM_K, 3);
    qd_unroll *u = NULL;
    qd_error err = {0};
    cr_expect_eq(qd_unroll_create(t.m, 0, 4, &u, &err), QD_ERR_INVALID);
    cr_expect_null(u);
    cr_assert_eq(qd_unroll_create(t.m, 2, 4, &u, &err), QD_OK, "%s", err.msg);
    double gT[SM_K * SM_D + SM_K] = {0}, gx[8 * SM_D], gl[2];
    cr_expect_eq(qd_unroll_backward(u, gT, gx, gl, NULL, 0.0, &err),
                 QD_ERR_INVALID, "backward before forward must fail");
    double xs[8 * SM_D] = {0}, lrs[2] = {0.1, NAN};
    int32_t ys[8] = {0};
    const double *wT;
    cr_expect_eq(qd_unroll_forward(u, t.w, 1, 5, xs, ys, lrs, &wT, &err),
                 QD_ERR_INVALID, "a step larger than the workspace batch");
    cr_expect_eq(qd_unroll_forward(u, t.w, 1, 4, xs, ys, lrs, &wT, &err),
                 QD_ERR_NUMERIC, "a NaN step size");
    cr_expect(strstr(err.msg, "not finite"), "%s", err.msg);
    qd_unroll_destroy(u);
    dt_model_free(&t);
}
