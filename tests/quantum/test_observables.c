/* Observable plugins: pauli_z, Pauli words against explicit Kronecker
 * products, and the Hermitian observable (Hermiticity, exact
 * matrices_backward vs finite differences, validation errors located at
 * file:line:col, trainable/fixed equivalence). */
#include "qplug_util.h"

TestSuite(observables, .fini = qp_teardown);

typedef struct obs {
    qp_inst q;
    const qd_observable_vt *vt;
} obs;

static obs obs_make(const char *yaml)
{
    obs o;
    o.q = qp_make(QD_KIND_OBSERVABLE, yaml);
    o.vt = o.q.vt;
    return o;
}

static void pauli_mat(char p, qp_c *m)
{
    qp_c id[4] = {1, 0, 0, 1}, x[4] = {0, 1, 1, 0}, y[4] = {0, -I, I, 0},
         z[4] = {1, 0, 0, -1};
    memcpy(m, p == 'X' ? x : p == 'Y' ? y : p == 'Z' ? z : id, sizeof id);
}

/* Kronecker product A (a x a) (x) B (b x b). */
static void kron(size_t a, const qp_c *A, size_t b, const qp_c *B, qp_c *out)
{
    for (size_t i = 0; i < a; i++)
        for (size_t j = 0; j < a; j++)
            for (size_t k = 0; k < b; k++)
                for (size_t l = 0; l < b; l++)
                    out[(i * b + k) * (a * b) + j * b + l] = A[i * a + j] * B[k * b + l];
}

Test(observables, pauli_z_terms)
{
    obs o = obs_make("plugin: pauli_z\n");
    qd_obs_spec spec = {0};
    cr_assert_eq(o.vt->build(o.q.self, 3, &spec), QD_OK);
    cr_expect_eq(spec.n_outputs, 3);
    cr_expect_eq(o.vt->n_params(o.q.self), 0);
    qp_c m[12];
    cr_assert_eq(o.vt->matrices(o.q.self, NULL, m), QD_OK);
    for (uint32_t t = 0; t < 3; t++) {
        cr_expect_eq(spec.terms[t].wires[0], t);
        cr_expect_eq(spec.terms[t].output, t);
        const qp_c *z = m + spec.terms[t].matrix;
        cr_expect(z[0] == 1 && z[1] == 0 && z[2] == 0 && z[3] == -1);
    }
    qd_obs_spec_free(&spec);
    qp_free(&o.q);

    o = obs_make("plugin: pauli_z\nwires: [2, 0]\n");
    cr_assert_eq(o.vt->build(o.q.self, 3, &spec), QD_OK);
    cr_expect_eq(spec.n_outputs, 2);
    cr_expect_eq(spec.terms[0].wires[0], 2);
    cr_expect_eq(spec.terms[1].wires[0], 0);
    qd_obs_spec_free(&spec);
    int rc = o.vt->build(o.q.self, 2, &spec);
    cr_expect_eq(rc, QD_ERR_INVALID);
    cr_expect(strstr(qp_msg(&o.q, rc), "test.yaml:2:9"), "%s", qp_msg(&o.q, rc));
    qp_free(&o.q);
}

Test(observables, pauli_words_are_kron_products)
{
    obs o = obs_make("plugin: pauli\nterms:\n"
                     "  - {word: \"Z0 Z1\"}\n"
                     "  - {word: \"X2\", coeff: -0.5}\n"
                     "  - {word: \"Y0 Z3 X1\", coeff: 2}\n"
                     "  - {word: \"I\", coeff: 0.25, output: 1}\n");
    qd_obs_spec spec = {0};
    cr_assert_eq(o.vt->build(o.q.self, 4, &spec), QD_OK, "%s", qp_msg(&o.q, 1));
    cr_assert_eq(spec.n_terms, 4);
    cr_expect_eq(spec.n_outputs, 3);
    cr_expect_eq(o.vt->n_params(o.q.self), 0);
    qp_c *m = malloc(spec.matrix_len * sizeof *m);
    cr_assert_eq(o.vt->matrices(o.q.self, NULL, m), QD_OK);

    /* Term matrices: kron of the factors in the written order. */
    qp_c a[4], b[4], c[4], ab[16], abc[64];
    pauli_mat('Z', a);
    pauli_mat('Z', b);
    kron(2, a, 2, b, ab);
    for (int i = 0; i < 16; i++)
        cr_expect(cabs(m[spec.terms[0].matrix + i] - ab[i]) == 0, "Z0 Z1 [%d]", i);
    pauli_mat('X', a);
    for (int i = 0; i < 4; i++)
        cr_expect(cabs(m[spec.terms[1].matrix + i] + 0.5 * a[i]) == 0);
    pauli_mat('Y', a);
    pauli_mat('Z', b);
    pauli_mat('X', c);
    kron(2, a, 2, b, ab);
    kron(4, ab, 2, c, abc);
    const qd_obs_term *t2 = &spec.terms[2];
    cr_expect(t2->n_wires == 3 && t2->wires[0] == 0 && t2->wires[1] == 3 &&
              t2->wires[2] == 1);
    for (int i = 0; i < 64; i++)
        cr_expect(cabs(m[t2->matrix + i] - 2.0 * abc[i]) == 0, "Y0 Z3 X1 [%d]", i);
    cr_expect_eq(spec.terms[3].output, 1);
    cr_expect_eq(spec.terms[1].output, 1);
    cr_expect(m[spec.terms[3].matrix] == 0.25 && m[spec.terms[3].matrix + 3] == 0.25);

    /* And in the full space: the term on its wires equals the product of
     * single-wire operators Y_0 Z_3 X_1 on 4 wires (order-free). */
    size_t D = 16;
    qp_c *F = malloc(D * D * sizeof *F), *P = malloc(D * D * sizeof *P),
         *T = malloc(D * D * sizeof *T), *S = malloc(D * D * sizeof *S);
    qp_full(4, 3, t2->wires, m + t2->matrix, F);
    for (size_t i = 0; i < D * D; i++)
        P[i] = (i / D == i % D) ? 2.0 : 0.0;
    const char fac[3] = {'Y', 'Z', 'X'};
    const uint32_t fw[3] = {0, 3, 1};
    for (int f = 0; f < 3; f++) {
        pauli_mat(fac[f], a);
        qp_full(4, 1, &fw[f], a, S);
        qp_matmul(D, P, S, T);
        memcpy(P, T, D * D * sizeof *T);
    }
    for (size_t i = 0; i < D * D; i++)
        cr_expect(cabs(F[i] - P[i]) < 1e-15, "full [%zu]", i);
    free(F);
    free(P);
    free(T);
    free(S);
    free(m);
    qd_obs_spec_free(&spec);
    qp_free(&o.q);
}

Test(observables, pauli_errors)
{
    struct {
        const char *yaml, *want;
    } bad[] = {
        {"plugin: pauli\nterms:\n  - {word: \"Z0 Z0\"}\n", "test.yaml:3:"},
        {"plugin: pauli\nterms:\n  - {word: \"Q1\"}\n", "not I, X, Y or Z"},
        {"plugin: pauli\nterms:\n  - {word: \"Z\"}\n", "needs a wire index"},
        {"plugin: pauli\nterms:\n  - {word: \"Z0\", output: 2}\n", "output 0 has no term"},
        {"plugin: pauli\nterms:\n  - {word: \"Z0X1\"}\n", "separated by spaces"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        qp_inst q;
        qd_error err = {0};
        int rc = qp_try(QD_KIND_OBSERVABLE, "test.yaml", bad[i].yaml, 1, &q, &err);
        cr_expect_neq(rc, QD_OK, "case %zu", i);
        cr_expect(strstr(err.msg, bad[i].want), "case %zu: %s", i, err.msg);
    }
    /* A wire beyond the circuit: located at the word. */
    obs o = obs_make("plugin: pauli\nterms:\n  - {word: \"X5\"}\n");
    qd_obs_spec spec = {0};
    int rc = o.vt->build(o.q.self, 3, &spec);
    cr_expect_eq(rc, QD_ERR_INVALID);
    cr_expect(strstr(qp_msg(&o.q, rc), "test.yaml:3:") &&
                  strstr(qp_msg(&o.q, rc), "wire 5"),
              "%s", qp_msg(&o.q, rc));
    qp_free(&o.q);
}

/* Re sum conj(G) H(p) for all terms. */
static double functional(const qp_c *G, const qp_c *H, size_t len)
{
    double s = 0;
    for (size_t i = 0; i < len; i++)
        s += creal(conj(G[i]) * H[i]);
    return s;
}

static void check_backward(obs *o, uint32_t n_wires, double scale)
{
    qd_obs_spec spec = {0};
    cr_assert_eq(o->vt->build(o->q.self, n_wires, &spec), QD_OK, "%s", qp_msg(&o->q, 1));
    size_t np = o->vt->n_params(o->q.self), len = spec.matrix_len;
    cr_assert(np > 0);
    double *p = malloc(np * sizeof *p), *gp = calloc(np, sizeof *gp);
    qp_c *H = malloc(len * sizeof *H), *G = malloc(len * sizeof *G);
    qd_rng rng;
    qd_rng_seed(&rng, 5, 6);
    cr_assert_eq(o->vt->init_params(o->q.self, &rng, p), QD_OK);
    for (size_t i = 0; i < np; i++)
        p[i] *= scale;
    for (size_t i = 0; i < len; i++)
        G[i] = CMPLX(qd_rng_normal(&rng), qd_rng_normal(&rng));
    cr_assert_eq(o->vt->matrices(o->q.self, p, H), QD_OK);
    /* Hermitian. */
    for (uint32_t t = 0; t < spec.n_terms; t++) {
        size_t d = (size_t)1 << spec.terms[t].n_wires;
        const qp_c *h = H + spec.terms[t].matrix;
        for (size_t i = 0; i < d; i++)
            for (size_t j = 0; j < d; j++)
                cr_expect(cabs(h[i * d + j] - conj(h[j * d + i])) < 1e-15);
    }
    cr_assert_eq(o->vt->matrices_backward(o->q.self, p, G, gp), QD_OK);
    /* Relative step: rounding stays ~1e-16 |L| / h for large parameters. */
    const double h = 1e-6 * fmax(1.0, scale);
    double err = 0, mag = 0;
    for (size_t i = 0; i < np; i++) {
        double k = p[i];
        p[i] = k + h;
        o->vt->matrices(o->q.self, p, H);
        double Lp = functional(G, H, len);
        p[i] = k - h;
        o->vt->matrices(o->q.self, p, H);
        double Lm = functional(G, H, len);
        p[i] = k;
        double fd = (Lp - Lm) / (2 * h);
        err = fmax(err, fabs(fd - gp[i]));
        mag = fmax(mag, fabs(fd));
    }
    cr_expect(mag > 1e-3, "gradient magnitude %g", mag);
    cr_expect(err <= 1e-8 * mag, "max |g - fd| %.3g (|g| %.3g)", err, mag);
    /* backward ADDS into g_params */
    double *gp2 = malloc(np * sizeof *gp2);
    for (size_t i = 0; i < np; i++)
        gp2[i] = 1.0;
    o->vt->matrices_backward(o->q.self, p, G, gp2);
    for (size_t i = 0; i < np; i++)
        cr_expect_float_eq(gp2[i], gp[i] + 1.0, 1e-14);
    free(gp2);
    free(p);
    free(gp);
    free(H);
    free(G);
    qd_obs_spec_free(&spec);
}

Test(observables, hermitian_backward_vs_fd)
{
    obs o = obs_make("plugin: hermitian\n");
    check_backward(&o, 3, 1.0);
    qp_free(&o.q);
    o = obs_make("plugin: hermitian\nwires: [[0, 2], [1], [3, 1, 0]]\n");
    check_backward(&o, 4, 1.0);
    qp_free(&o.q);
    /* The smooth norm bound: small and large norms, and near zero. */
    double scales[] = {1.0, 40.0, 1e-5};
    for (int i = 0; i < 3; i++) {
        o = obs_make("plugin: hermitian\nwires: [[0, 1], [2]]\nmax_norm: 1.5\n");
        check_backward(&o, 3, scales[i]);
        qp_free(&o.q);
    }
    o = obs_make("plugin: pauli\ntrainable: true\nterms:\n  - {word: \"X0 Y1\", coeff: 0.3}\n"
                 "  - {word: \"Z1\", coeff: -2, output: 0}\n");
    check_backward(&o, 2, 1.0);
    qp_free(&o.q);
}

Test(observables, hermitian_max_norm_bounds_frobenius)
{
    obs o = obs_make("plugin: hermitian\nwires: [[0, 1]]\nmax_norm: 2\n");
    qd_obs_spec spec = {0};
    cr_assert_eq(o.vt->build(o.q.self, 2, &spec), QD_OK);
    double scales[] = {0.3, 1.0, 100.0};
    for (int v = 0; v < 3; v++) {
        double p[16];
        qp_c H[16];
        for (int i = 0; i < 16; i++)
            p[i] = scales[v] * (i % 3 - 1);
        /* |A|_F from the layout: diagonal once, off-diagonal pairs twice. */
        double r2 = 0;
        for (int i = 0; i < 16; i++)
            r2 += (i < 4 ? 1.0 : 2.0) * p[i] * p[i];
        double want = 2.0 * tanh(sqrt(r2) / 2.0);
        cr_assert_eq(o.vt->matrices(o.q.self, p, H), QD_OK);
        double f = 0;
        for (int i = 0; i < 16; i++)
            f += creal(H[i] * conj(H[i]));
        cr_expect(fabs(sqrt(f) - want) < 1e-13 && sqrt(f) <= 2.0, "|H|_F = %.17g, want %.17g",
                  sqrt(f), want);
    }
    qd_obs_spec_free(&spec);
    qp_free(&o.q);
}

Test(observables, hermitian_trainable_false_same_matrices)
{
    const char *cfg[2] = {"plugin: hermitian\nwires: [[0], [1, 2]]\n",
                          "plugin: hermitian\nwires: [[0], [1, 2]]\ntrainable: false\n"};
    qp_c *mats[2];
    size_t len = 0;
    for (int v = 0; v < 2; v++) {
        obs o = obs_make(cfg[v]);
        qd_obs_spec spec = {0};
        cr_assert_eq(o.vt->build(o.q.self, 3, &spec), QD_OK);
        len = spec.matrix_len;
        cr_expect_eq(o.vt->n_params(o.q.self), v == 0 ? 4 + 16 : 0);
        mats[v] = malloc(len * sizeof **mats);
        double p[20];
        if (v == 1) {
            /* A fixed random observable draws in init_params. */
            int rc = o.vt->matrices(o.q.self, NULL, mats[v]);
            cr_expect_eq(rc, QD_ERR_INVALID);
            cr_expect(strstr(qp_msg(&o.q, rc), "init_params"), "%s", qp_msg(&o.q, rc));
        }
        qd_rng rng;
        qd_rng_seed(&rng, 99, 3);
        cr_assert_eq(o.vt->init_params(o.q.self, &rng, v == 0 ? p : NULL), QD_OK);
        cr_assert_eq(o.vt->matrices(o.q.self, v == 0 ? p : NULL, mats[v]), QD_OK);
        if (v == 1) {
            /* The fixed variant has nothing to train. */
            double g = 7;
            cr_expect_eq(o.vt->matrices_backward(o.q.self, NULL, mats[v], &g), QD_OK);
            cr_expect_eq(g, 7);
        }
        qd_obs_spec_free(&spec);
        qp_free(&o.q);
    }
    for (size_t i = 0; i < len; i++)
        cr_expect(mats[0][i] == mats[1][i], "entry %zu", i);
    double nz = 0;
    for (size_t i = 0; i < len; i++)
        nz += cabs(mats[0][i]);
    cr_expect(nz > 1, "random matrices are not trivial");
    free(mats[0]);
    free(mats[1]);
}

Test(observables, hermitian_explicit_matrix)
{
    obs o = obs_make("plugin: hermitian\nmatrix: [[1, \"2-1j\"], [\"2+1j\", -3]]\n"
                     "trainable: false\n");
    qd_obs_spec spec = {0};
    cr_assert_eq(o.vt->build(o.q.self, 2, &spec), QD_OK);
    qp_c m[8];
    cr_assert_eq(o.vt->matrices(o.q.self, NULL, m), QD_OK);
    qp_c want[4] = {1, CMPLX(2, -1), CMPLX(2, 1), -3};
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < 4; i++)
            cr_expect(cabs(m[t * 4 + i] - want[i]) < 1e-15, "term %d [%d]", t, i);
    qd_obs_spec_free(&spec);
    qp_free(&o.q);

    o = obs_make("plugin: hermitian\ninit: pauli_z\nwires: [[0, 1]]\n");
    cr_assert_eq(o.vt->build(o.q.self, 2, &spec), QD_OK);
    double p[16];
    qp_c z[16];
    cr_assert_eq(o.vt->init_params(o.q.self, NULL, p), QD_OK);
    cr_assert_eq(o.vt->matrices(o.q.self, p, z), QD_OK);
    for (int i = 0; i < 16; i++)
        cr_expect(z[i] == (i % 5 == 0 ? (i == 5 || i == 10 ? -1 : 1) : 0), "[%d]", i);
    qd_obs_spec_free(&spec);
    qp_free(&o.q);
}

Test(observables, hermitian_validation_errors)
{
    struct {
        const char *yaml, *want;
    } bad[] = {
        {"plugin: hermitian\nmatrix:\n  - [1, 2]\n  - [3, 1]\n", "h.yaml:3:3"},
        {"plugin: hermitian\nmatrix: [[1, 0, 0], [0, 1, 0], [0, 0, 1]]\n", "2^k x 2^k"},
        {"plugin: hermitian\nmatrix: [[1, 0], [0, 1], [1, 1]]\n", "square"},
        {"plugin: hermitian\ninit: matrix\n", "needs a `matrix`"},
        {"plugin: hermitian\nwires: [[0, 0]]\n", "appears twice"},
        {"plugin: hermitian\nmatrix: [[1, \"1j\"], [\"1j\", 1]]\n", "not Hermitian"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        qp_inst q;
        qd_error err = {0};
        int rc = qp_try(QD_KIND_OBSERVABLE, "h.yaml", bad[i].yaml, 1, &q, &err);
        cr_expect_neq(rc, QD_OK, "case %zu", i);
        cr_expect(strstr(err.msg, bad[i].want), "case %zu: %s", i, err.msg);
        /* Every validation message is located. */
        cr_expect(strstr(err.msg, "h.yaml:"), "case %zu: %s", i, err.msg);
    }
    /* A 4x4 matrix with the default 1-wire terms. */
    obs o = obs_make("plugin: hermitian\nmatrix: [[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]\n");
    qd_obs_spec spec = {0};
    int rc = o.vt->build(o.q.self, 3, &spec);
    cr_expect_eq(rc, QD_ERR_INVALID);
    cr_expect(strstr(qp_msg(&o.q, rc), "test.yaml:2:9") &&
                  strstr(qp_msg(&o.q, rc), "set `wires`"),
              "%s", qp_msg(&o.q, rc));
    qp_free(&o.q);
}
