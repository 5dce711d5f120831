/* Encoder plugins: amplitude (round trip through a simulator, backward
 * through the normalisation vs finite differences, error paths), angle and
 * iqp (circuit vs PennyLane's definition, backward vs finite differences). */
#include "qplug_util.h"

TestSuite(encoders, .fini = qp_teardown);

typedef struct enc {
    qp_inst q;
    const qd_encoder_vt *vt;
} enc;

static enc enc_make(const char *yaml)
{
    enc e;
    e.q = qp_make(QD_KIND_ENCODER, yaml);
    e.vt = e.q.vt;
    return e;
}

static double frand(unsigned *s) { return 2.0 * qp_urand(s) - 1.0; }

/* ---- amplitude ---- */

/* Run the encoded state through the density_matrix simulator with an
 * observable |u><u| (u = expected state): the fidelity must be 1, and the
 * diagonal observable diag(k) gives sum_k k |u_k|^2. */
Test(encoders, amplitude_round_trip_padded)
{
    enc e = enc_make("plugin: amplitude\npad_with: 0.25\n");
    qd_circuit c;
    qd_circuit_init(&c, 3);
    cr_assert_eq(e.vt->build(e.q.self, 5, &c), QD_OK, "%s", qp_msg(&e.q, 1));
    cr_assert_eq(c.n_ops, 1);
    cr_assert_eq(c.ops[0].gate, QD_GATE_STATE_PREP);
    cr_assert_eq(c.n_inputs, 8);
    double x[2][5] = {{0.3, -1.2, 0.5, 2.0, -0.7}, {1, 0, 0, 0, 0}};
    double in[16];
    cr_assert_eq(e.vt->encode(e.q.self, 2, &x[0][0], in), QD_OK);
    for (int b = 0; b < 2; b++) {
        double v[8], s = 0;
        for (int k = 0; k < 8; k++) {
            v[k] = k < 5 ? x[b][k] : 0.25;
            s += v[k] * v[k];
        }
        for (int k = 0; k < 8; k++)
            cr_expect_float_eq(in[b * 8 + k], v[k] / sqrt(s), 1e-15,
                               "sample %d amp %d", b, k);
        /* Through the reference statevector: psi == u. */
        qp_c psi[8];
        qp_sv_run(&c, NULL, in + b * 8, psi);
        for (int k = 0; k < 8; k++)
            cr_expect_float_eq(creal(psi[k]), v[k] / sqrt(s), 1e-15);
    }

    /* Through the simulator plugin: fidelity with |u> is 1. */
    qp_inst sim = qp_make(QD_KIND_SIMULATOR, "plugin: density_matrix\n");
    const qd_simulator_vt *svt = sim.vt;
    for (int b = 0; b < 2; b++) {
        qd_obs_term t = {0, 3, {0, 1, 2}, 0};
        qd_obs_spec spec = {1, 1, &t, 64};
        qp_c P[64];
        for (int i = 0; i < 8; i++)
            for (int j = 0; j < 8; j++)
                P[i * 8 + j] = in[b * 8 + i] * in[b * 8 + j];
        qd_sim_job job = {sizeof job, &c, &spec, P, 1, in + b * 8, NULL};
        double E;
        cr_assert_eq(svt->forward(sim.self, &job, &E), QD_OK, "%s", qp_msg(&sim, 1));
        cr_expect_float_eq(E, 1.0, 1e-13, "fidelity %.17g", E);
    }
    qp_free(&sim);
    qd_circuit_free(&c);
    qp_free(&e.q);
}

/* L(x) = sum_k c_k u_k(x); encode_backward(c) against central differences. */
Test(encoders, amplitude_backward_vs_fd)
{
    const char *cfgs[] = {"plugin: amplitude\npad_with: 0.4\n",
                          "plugin: amplitude\n"};
    size_t nf[] = {6, 8};
    for (int v = 0; v < 2; v++) {
        enc e = enc_make(cfgs[v]);
        qd_circuit c;
        qd_circuit_init(&c, 3);
        cr_assert_eq(e.vt->build(e.q.self, nf[v], &c), QD_OK);
        unsigned seed = 7 + (unsigned)v;
        enum { B = 3 };
        double x[B * 8], cc[B * 8], gx[B * 8], in[B * 8];
        for (size_t i = 0; i < B * nf[v]; i++)
            x[i] = frand(&seed);
        for (size_t i = 0; i < B * 8; i++)
            cc[i] = frand(&seed);
        cr_assert_eq(e.vt->encode_backward(e.q.self, B, x, cc, gx), QD_OK);
        const double h = 1e-6;
        double maxerr = 0, maxg = 0;
        for (size_t i = 0; i < B * nf[v]; i++) {
            double keep = x[i], Lp = 0, Lm = 0;
            size_t b = i / nf[v];
            x[i] = keep + h;
            cr_assert_eq(e.vt->encode(e.q.self, B, x, in), QD_OK);
            for (int k = 0; k < 8; k++)
                Lp += cc[b * 8 + k] * in[b * 8 + k];
            x[i] = keep - h;
            cr_assert_eq(e.vt->encode(e.q.self, B, x, in), QD_OK);
            for (int k = 0; k < 8; k++)
                Lm += cc[b * 8 + k] * in[b * 8 + k];
            x[i] = keep;
            double fd = (Lp - Lm) / (2 * h);
            maxerr = fmax(maxerr, fabs(fd - gx[i]));
            maxg = fmax(maxg, fabs(fd));
        }
        cr_expect(maxg > 0.1, "gradient should not vanish (%g)", maxg);
        cr_expect(maxerr <= 1e-8 * maxg, "config %d: max |g - fd| = %.3g (|g| %.3g)",
                  v, maxerr, maxg);
        qd_circuit_free(&c);
        qp_free(&e.q);
    }
}

Test(encoders, amplitude_zero_vector_is_an_error_not_nan)
{
    enc e = enc_make("plugin: amplitude\n");
    qd_circuit c;
    qd_circuit_init(&c, 2);
    cr_assert_eq(e.vt->build(e.q.self, 4, &c), QD_OK);
    double x[8] = {1, 2, 3, 4, 0, 0, 0, 0};
    double in[8] = {0}, gx[8], g[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    int rc = e.vt->encode(e.q.self, 2, x, in);
    cr_expect_eq(rc, QD_ERR_NUMERIC);
    const char *m = qp_msg(&e.q, rc);
    cr_expect(strstr(m, "amplitude embedding of sample 1: feature vector has "
                        "zero norm"),
              "%s", m);
    for (int i = 0; i < 8; i++)
        cr_expect(!isnan(in[i]));
    cr_expect_eq(e.vt->encode_backward(e.q.self, 2, x, g, gx), QD_ERR_NUMERIC);
    /* A norm below eps counts as zero too. */
    double tiny[4] = {1e-14, 0, 0, 0};
    cr_expect_eq(e.vt->encode(e.q.self, 1, tiny, in), QD_ERR_NUMERIC);
    qd_circuit_free(&c);
    qp_free(&e.q);
}

Test(encoders, amplitude_size_mismatch_errors)
{
    enc e = enc_make("plugin: amplitude\n");
    qd_circuit c;
    qd_circuit_init(&c, 3);
    int rc = e.vt->build(e.q.self, 5, &c);
    cr_expect_eq(rc, QD_ERR_INVALID);
    const char *m = qp_msg(&e.q, rc);
    cr_expect(strstr(m, "2^n mismatch") && strstr(m, "5 features") && strstr(m, "8"),
              "%s", m);
    qp_free(&e.q);

    e = enc_make("plugin: amplitude\npad_with: 0\n");
    rc = e.vt->build(e.q.self, 9, &c);
    cr_expect_eq(rc, QD_ERR_INVALID);
    m = qp_msg(&e.q, rc);
    cr_expect(strstr(m, "9 features") && strstr(m, "8 amplitudes"), "%s", m);
    cr_expect_eq(c.n_ops, 0);
    qp_free(&e.q);
    qd_circuit_free(&c);
}

Test(encoders, amplitude_unnormalised_inputs_checked)
{
    enc e = enc_make("plugin: amplitude\nnormalize: false\n");
    qd_circuit c;
    qd_circuit_init(&c, 1);
    cr_assert_eq(e.vt->build(e.q.self, 2, &c), QD_OK);
    double ok[2] = {0.6, 0.8}, bad[2] = {0.6, 0.81}, in[2], gx[2];
    double g[2] = {0.5, -2};
    cr_expect_eq(e.vt->encode(e.q.self, 1, ok, in), QD_OK);
    cr_expect_float_eq(in[1], 0.8, 0);
    cr_expect_eq(e.vt->encode_backward(e.q.self, 1, ok, g, gx), QD_OK);
    cr_expect_float_eq(gx[0], 0.5, 0);
    cr_expect_float_eq(gx[1], -2, 0);
    int rc = e.vt->encode(e.q.self, 1, bad, in);
    cr_expect_eq(rc, QD_ERR_NUMERIC);
    cr_expect(strstr(qp_msg(&e.q, rc), "norm"), "%s", qp_msg(&e.q, rc));
    qd_circuit_free(&c);
    qp_free(&e.q);
}

/* ---- angle ---- */

Test(encoders, angle_ops_and_backward)
{
    enc e = enc_make("plugin: angle\nrotation: Y\nscale: 0.5\n");
    qd_circuit c;
    qd_circuit_init(&c, 4);
    cr_assert_eq(e.vt->build(e.q.self, 3, &c), QD_OK);
    cr_assert_eq(c.n_ops, 3);
    cr_assert_eq(c.n_inputs, 3);
    for (uint32_t k = 0; k < 3; k++) {
        cr_expect_eq(c.ops[k].gate, QD_GATE_RY);
        cr_expect_eq(c.ops[k].wires[0], k);
        cr_expect_eq(c.ops[k].angle[0].src, QD_SRC_INPUT);
        cr_expect_eq(c.ops[k].angle[0].index, k);
    }
    double x[6] = {1, 2, 3, -1, -2, -3}, in[6], g[6] = {1, 2, 3, 4, 5, 6}, gx[6];
    cr_assert_eq(e.vt->encode(e.q.self, 2, x, in), QD_OK);
    for (int i = 0; i < 6; i++)
        cr_expect_float_eq(in[i], 0.5 * x[i], 0);
    /* The state: RY(x/2) on each wire; <Z_k> = cos(angle). */
    qp_c psi[16];
    qp_sv_run(&c, NULL, in, psi);
    qp_c Z[4] = {1, 0, 0, -1};
    for (uint32_t k = 0; k < 3; k++)
        cr_expect_float_eq(qp_sv_expect(4, psi, 1, &k, Z), cos(0.5 * x[k]), 1e-14);
    cr_assert_eq(e.vt->encode_backward(e.q.self, 2, x, g, gx), QD_OK);
    for (int i = 0; i < 6; i++)
        cr_expect_float_eq(gx[i], 0.5 * g[i], 0);
    qp_free(&e.q);

    e = enc_make("plugin: angle\n");
    int rc = e.vt->build(e.q.self, 5, &c);
    cr_expect_eq(rc, QD_ERR_INVALID);
    cr_expect(strstr(qp_msg(&e.q, rc), "5 features"), "%s", qp_msg(&e.q, rc));
    qp_free(&e.q);
    qd_circuit_free(&c);
}

/* ---- iqp ---- */

/* PennyLane's IQPEmbedding, straight from its definition: per repeat,
 * H and RZ(x_k) on each wire, then MultiRZ(x_j x_k) = diag(exp(-i t/2 z_j z_k))
 * on every pair j < k. */
static void iqp_reference(int n, const double *x, int repeats, qp_c *psi)
{
    size_t D = (size_t)1 << n;
    memset(psi, 0, D * sizeof *psi);
    psi[0] = 1;
    for (int r = 0; r < repeats; r++) {
        for (uint32_t k = 0; k < (uint32_t)n; k++) {
            qp_sv_gate(n, psi, QD_GATE_H, &k, NULL);
            qp_sv_gate(n, psi, QD_GATE_RZ, &k, &x[k]);
        }
        for (int j = 0; j < n; j++)
            for (int k = j + 1; k < n; k++)
                for (size_t z = 0; z < D; z++) {
                    int sj = (z >> (n - 1 - j)) & 1 ? -1 : 1;
                    int sk = (z >> (n - 1 - k)) & 1 ? -1 : 1;
                    psi[z] *= cexp(-I * 0.5 * x[j] * x[k] * sj * sk);
                }
    }
}

Test(encoders, iqp_matches_pennylane_definition)
{
    for (int repeats = 1; repeats <= 2; repeats++) {
        char yaml[64];
        snprintf(yaml, sizeof yaml, "plugin: iqp\nrepeats: %d\n", repeats);
        enc e = enc_make(yaml);
        qd_circuit c;
        qd_circuit_init(&c, 3);
        cr_assert_eq(e.vt->build(e.q.self, 3, &c), QD_OK);
        cr_expect_eq(c.n_inputs, 6);
        double x[3] = {0.7, -1.3, 0.4}, in[6];
        cr_assert_eq(e.vt->encode(e.q.self, 1, x, in), QD_OK);
        qp_c psi[8], ref[8];
        qp_sv_run(&c, NULL, in, psi);
        iqp_reference(3, x, repeats, ref);
        for (int k = 0; k < 8; k++)
            cr_expect(cabs(psi[k] - ref[k]) < 1e-13, "repeats %d amp %d: %g%+gi vs %g%+gi",
                      repeats, k, creal(psi[k]), cimag(psi[k]), creal(ref[k]),
                      cimag(ref[k]));
        qd_circuit_free(&c);
        qp_free(&e.q);
    }
}

Test(encoders, iqp_backward_vs_fd)
{
    enc e = enc_make("plugin: iqp\npattern: ring\n");
    qd_circuit c;
    qd_circuit_init(&c, 4);
    cr_assert_eq(e.vt->build(e.q.self, 4, &c), QD_OK);
    enum { B = 2, M = 4, NIN = 8 };   /* 4 features + 4 ring pairs */
    cr_assert_eq(c.n_inputs, NIN);
    unsigned s = 3;
    double x[B * M], g[B * NIN], gx[B * M], in[B * NIN];
    for (int i = 0; i < B * M; i++)
        x[i] = frand(&s);
    for (int i = 0; i < B * NIN; i++)
        g[i] = frand(&s);
    cr_assert_eq(e.vt->encode_backward(e.q.self, B, x, g, gx), QD_OK);
    const double h = 1e-6;
    for (int i = 0; i < B * M; i++) {
        double keep = x[i], Lp = 0, Lm = 0;
        x[i] = keep + h;
        e.vt->encode(e.q.self, B, x, in);
        for (int k = 0; k < B * NIN; k++)
            Lp += g[k] * in[k];
        x[i] = keep - h;
        e.vt->encode(e.q.self, B, x, in);
        for (int k = 0; k < B * NIN; k++)
            Lm += g[k] * in[k];
        x[i] = keep;
        cr_expect_float_eq(gx[i], (Lp - Lm) / (2 * h), 1e-9, "x[%d]", i);
    }
    qd_circuit_free(&c);
    qp_free(&e.q);
}
