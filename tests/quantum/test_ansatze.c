/* Ansatz plugins: op lists against PennyLane's rules (computed here
 * independently), ranges validation, weight initialisers, and the end-to-end
 * gradient of every ansatz x observable through the statevector simulator
 * (adjoint vs parameter-shift vs central finite differences). */
#include "qplug_util.h"

TestSuite(ansatze, .fini = qp_teardown);

typedef struct ans {
    qp_inst q;
    const qd_ansatz_vt *vt;
} ans;

static ans ans_make(const char *yaml)
{
    ans a;
    a.q = qp_make(QD_KIND_ANSATZ, yaml);
    a.vt = a.q.vt;
    return a;
}

/* Check StronglyEntanglingLayers' op list for n wires, L layers, ranges r
 * (NULL = PennyLane's default), entangler gate ent. */
static void check_sel(const qd_circuit *c, uint32_t n, uint32_t L,
                      const int *ranges, int ent, uint32_t w0)
{
    size_t i = 0, n_ent = 0;
    for (uint32_t l = 0; l < L; l++) {
        for (uint32_t q = 0; q < n; q++, i++) {
            cr_assert(i < c->n_ops);
            const qd_op *op = &c->ops[i];
            cr_expect_eq(op->gate, QD_GATE_ROT, "layer %u op %zu", l, i);
            cr_expect_eq(op->wires[0], q);
            for (uint32_t k = 0; k < 3; k++) {
                cr_expect_eq(op->angle[k].src, QD_SRC_WEIGHT);
                cr_expect_eq(op->angle[k].index, w0 + (l * n + q) * 3 + k);
                cr_expect_float_eq(op->angle[k].scale, 1.0, 0);
                cr_expect_float_eq(op->angle[k].offset, 0.0, 0);
            }
        }
        if (n > 1) {
            /* PennyLane: r = l mod (n-1) + 1, target (i + r) mod n. */
            uint32_t r = ranges ? (uint32_t)ranges[l] : l % (n - 1) + 1;
            for (uint32_t q = 0; q < n; q++, i++) {
                cr_assert(i < c->n_ops);
                const qd_op *op = &c->ops[i];
                cr_expect_eq(op->gate, (uint32_t)ent);
                cr_expect_eq(op->wires[0], q, "layer %u entangler %u control", l, q);
                cr_expect_eq(op->wires[1], (q + r) % n, "layer %u entangler %u target", l, q);
                n_ent++;
            }
        }
        cr_assert(i < c->n_ops);
        cr_expect_eq(c->ops[i++].gate, QD_GATE_BARRIER);
    }
    cr_expect_eq(i, c->n_ops);
    cr_expect_eq(n_ent, n > 1 ? (size_t)L * n : 0);
    cr_expect_eq(c->n_weights, w0 + L * n * 3);
    cr_expect_eq(c->n_layers, L);
}

Test(ansatze, strongly_entangling_matches_pennylane_rule)
{
    uint32_t ns[] = {1, 2, 4, 6}, Ls[] = {1, 2, 3, 7};
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 4; b++) {
            char yaml[80];
            snprintf(yaml, sizeof yaml, "plugin: strongly_entangling\nlayers: %u\n", Ls[b]);
            ans s = ans_make(yaml);
            qd_circuit c;
            qd_circuit_init(&c, ns[a]);
            cr_assert_eq(s.vt->build(s.q.self, &c), QD_OK, "%s", qp_msg(&s.q, 1));
            check_sel(&c, ns[a], Ls[b], NULL, QD_GATE_CNOT, 0);
            qd_circuit_free(&c);
            qp_free(&s.q);
        }
    /* n = 4, L = 5: ranges 1, 2, 3, 1, 2 — spelt out. */
    ans s = ans_make("plugin: strongly_entangling\nlayers: 5\n");
    qd_circuit c;
    qd_circuit_init(&c, 4);
    cr_assert_eq(s.vt->build(s.q.self, &c), QD_OK);
    int expect[5] = {1, 2, 3, 1, 2};
    check_sel(&c, 4, 5, expect, QD_GATE_CNOT, 0);
    qd_circuit_free(&c);
    qp_free(&s.q);
}

Test(ansatze, strongly_entangling_custom_ranges_and_offset)
{
    ans s = ans_make("plugin: strongly_entangling\nranges: [3, 1, 2]\nentangler: CZ\n");
    qd_circuit c;
    qd_circuit_init(&c, 5);
    /* Something already uses weights 0..9: ours start at 10. */
    qd_angle th = qd_angle_weight(9);
    uint32_t w = 0;
    cr_assert_eq(qd_circuit_add(&c, QD_GATE_RX, &w, &th, NULL), QD_OK);
    cr_assert_eq(s.vt->build(s.q.self, &c), QD_OK, "%s", qp_msg(&s.q, 1));
    qd_circuit sub = c;
    sub.ops = c.ops + 1;
    sub.n_ops = c.n_ops - 1;
    int r[3] = {3, 1, 2};
    check_sel(&sub, 5, 3, r, QD_GATE_CZ, 10);
    double wts[45];
    qd_rng rng;
    qd_rng_seed(&rng, 1, 2);
    cr_expect_eq(s.vt->init_weights(s.q.self, &rng, 45, wts), QD_OK);
    qd_circuit_free(&c);
    qp_free(&s.q);
}

Test(ansatze, strongly_entangling_bad_ranges)
{
    /* Out of range for 4 wires: located at the offending item. */
    ans s = ans_make("plugin: strongly_entangling\nranges: [1,\n  4]\n");
    qd_circuit c;
    qd_circuit_init(&c, 4);
    int rc = s.vt->build(s.q.self, &c);
    cr_expect_eq(rc, QD_ERR_INVALID);
    const char *m = qp_msg(&s.q, rc);
    cr_expect(strstr(m, "test.yaml:3:3") && strstr(m, "ranges[1] = 4") &&
                  strstr(m, "[1, 3]"),
              "%s", m);
    qp_free(&s.q);
    qd_circuit_free(&c);

    s = ans_make("plugin: strongly_entangling\nranges: [0]\n");
    qd_circuit_init(&c, 3);
    cr_expect_eq(s.vt->build(s.q.self, &c), QD_ERR_INVALID);
    qp_free(&s.q);
    qd_circuit_free(&c);

    s = ans_make("plugin: strongly_entangling\nranges: [1]\n");
    qd_circuit_init(&c, 1);
    rc = s.vt->build(s.q.self, &c);
    cr_expect_eq(rc, QD_ERR_INVALID);
    cr_expect(strstr(qp_msg(&s.q, rc), "1-wire"), "%s", qp_msg(&s.q, rc));
    qp_free(&s.q);
    qd_circuit_free(&c);

    /* One range per layer. */
    qp_inst q;
    qd_error err = {0};
    rc = qp_try(QD_KIND_ANSATZ, "r.yaml",
                "plugin: strongly_entangling\nlayers: 3\nranges: [1, 2]\n", 1, &q, &err);
    cr_expect_neq(rc, QD_OK);
    cr_expect(strstr(err.msg, "r.yaml:3:") && strstr(err.msg, "layers = 3"), "%s",
              err.msg);
}

Test(ansatze, basic_entangler_rules)
{
    uint32_t ns[] = {1, 2, 3, 5};
    for (int a = 0; a < 4; a++) {
        uint32_t n = ns[a], L = 2;
        ans s = ans_make("plugin: basic_entangler\nlayers: 2\nrotation: Z\n");
        qd_circuit c;
        qd_circuit_init(&c, n);
        cr_assert_eq(s.vt->build(s.q.self, &c), QD_OK);
        /* PennyLane: n = 1 no CNOT, n = 2 exactly one, n > 2 the ring. */
        uint32_t per = n == 1 ? 0 : n == 2 ? 1 : n;
        size_t i = 0;
        for (uint32_t l = 0; l < L; l++) {
            for (uint32_t q = 0; q < n; q++, i++) {
                cr_expect_eq(c.ops[i].gate, QD_GATE_RZ);
                cr_expect_eq(c.ops[i].wires[0], q);
                cr_expect_eq(c.ops[i].angle[0].index, l * n + q);
            }
            for (uint32_t q = 0; q < per; q++, i++) {
                cr_expect_eq(c.ops[i].gate, QD_GATE_CNOT, "n %u layer %u", n, l);
                cr_expect_eq(c.ops[i].wires[0], q);
                cr_expect_eq(c.ops[i].wires[1], (q + 1) % n);
            }
            cr_expect_eq(c.ops[i++].gate, QD_GATE_BARRIER);
        }
        cr_expect_eq(i, c.n_ops, "n %u", n);
        cr_expect_eq(c.n_weights, L * n);
        qd_circuit_free(&c);
        qp_free(&s.q);
    }
}

Test(ansatze, hardware_efficient_rules)
{
    ans s = ans_make("plugin: hardware_efficient\nlayers: 3\n");
    qd_circuit c;
    qd_circuit_init(&c, 4);
    cr_assert_eq(s.vt->build(s.q.self, &c), QD_OK);
    size_t i = 0;
    for (uint32_t l = 0; l < 3; l++) {
        for (uint32_t q = 0; q < 4; q++) {
            cr_expect_eq(c.ops[i].gate, QD_GATE_RY);
            cr_expect_eq(c.ops[i].wires[0], q);
            cr_expect_eq(c.ops[i++].angle[0].index, (l * 4 + q) * 2);
            cr_expect_eq(c.ops[i].gate, QD_GATE_RZ);
            cr_expect_eq(c.ops[i++].angle[0].index, (l * 4 + q) * 2 + 1);
        }
        for (uint32_t q = 0; q + 1 < 4; q++, i++) {
            cr_expect_eq(c.ops[i].gate, QD_GATE_CZ);
            cr_expect_eq(c.ops[i].wires[0], q);
            cr_expect_eq(c.ops[i].wires[1], q + 1);
        }
        cr_expect_eq(c.ops[i++].gate, QD_GATE_BARRIER);
    }
    cr_expect_eq(i, c.n_ops);
    cr_expect_eq(c.n_weights, 24);
    qd_circuit_free(&c);
    qp_free(&s.q);
}

Test(ansatze, init_weights)
{
    const char *inits[] = {"uniform", "normal", "xavier", "zeros"};
    enum { N = 4, L = 50, NW = L * N * 3 };
    static double w[NW], w2[NW];
    for (int v = 0; v < 4; v++) {
        char yaml[160];
        snprintf(yaml, sizeof yaml,
                 "plugin: strongly_entangling\nlayers: %d\ninit: %s\ninit_std: 0.3\n", L,
                 inits[v]);
        ans s = ans_make(yaml);
        qd_circuit c;
        qd_circuit_init(&c, N);
        qd_rng rng;
        qd_rng_seed(&rng, 42, 1);
        cr_expect_eq(s.vt->init_weights(s.q.self, &rng, NW, w), QD_ERR_INVALID,
                     "before build");
        cr_assert_eq(s.vt->build(s.q.self, &c), QD_OK);
        cr_expect_eq(s.vt->init_weights(s.q.self, &rng, NW - 1, w), QD_ERR_INVALID);
        qd_rng_seed(&rng, 42, 1);
        cr_assert_eq(s.vt->init_weights(s.q.self, &rng, NW, w), QD_OK);
        qd_rng_seed(&rng, 42, 1);
        cr_assert_eq(s.vt->init_weights(s.q.self, &rng, NW, w2), QD_OK);
        double mn = 1e9, mx = -1e9, m1 = 0, m2 = 0;
        for (int i = 0; i < NW; i++) {
            cr_expect_eq(w[i], w2[i], "same seed, same weights");
            mn = fmin(mn, w[i]);
            mx = fmax(mx, w[i]);
            m1 += w[i] / NW;
            m2 += w[i] * w[i] / NW;
        }
        double sd = sqrt(m2 - m1 * m1);
        if (v == 0) {
            cr_expect(mn >= 0 && mx < 2 * QP_PI && mx > 5.5 && mn < 0.8, "[%g, %g]", mn, mx);
        } else if (v == 1) {
            cr_expect(fabs(sd - 0.3) < 0.03 && fabs(m1) < 0.05, "mean %g sd %g", m1, sd);
        } else if (v == 2) {
            /* torch xavier_uniform_ on (L, n, 3): fan_in 12, fan_out 150 */
            double a = sqrt(6.0 / (12 + 150));
            cr_expect(mn >= -a && mx <= a && mx > 0.8 * a && mn < -0.8 * a, "[%g, %g] a %g",
                      mn, mx, a);
        } else {
            cr_expect(mn == 0 && mx == 0);
        }
        qd_circuit_free(&c);
        qp_free(&s.q);
    }
}

/* ---- end-to-end: angle encoder + ansatz + observable through statevector ---- */

typedef struct e2e {
    qd_circuit c;
    qd_obs_spec spec;
    const qd_observable_vt *ovt;
    void *obs;
    size_t n_obs;
} e2e;

/* L = sum_{b,o} g_bo E_bo(weights, inputs, observable params). */
static double loss(qp_inst *sim, e2e *m, size_t B, const double *w, const double *x,
                   const double *op, const double *g)
{
    const qd_simulator_vt *svt = sim->vt;
    qp_c *mats = malloc(m->spec.matrix_len * sizeof *mats);
    double *E = malloc(B * m->spec.n_outputs * sizeof *E);
    cr_assert_eq(m->ovt->matrices(m->obs, op, mats), QD_OK);
    qd_sim_job job = {sizeof job, &m->c, &m->spec, mats, B, x, w};
    cr_assert_eq(svt->forward(sim->self, &job, E), QD_OK, "%s", qp_msg(sim, 1));
    double L = 0;
    for (size_t i = 0; i < B * m->spec.n_outputs; i++)
        L += g[i] * E[i];
    free(mats);
    free(E);
    return L;
}

static double maxrel(const double *a, const double *b, size_t n)
{
    double e = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs(a[i] - b[i]));
        s = fmax(s, fabs(b[i]));
    }
    return s > 0 ? e / s : e;
}

Test(ansatze, end_to_end_gradients_through_statevector, .timeout = 120)
{
    const char *ansatze[] = {
        "plugin: strongly_entangling\nlayers: 2\n",
        "plugin: basic_entangler\nlayers: 2\nrotation: Y\n",
        "plugin: hardware_efficient\nlayers: 2\n",
    };
    const char *observables[] = {
        "plugin: pauli_z\n",
        "plugin: pauli\ntrainable: true\nterms:\n"
        "  - {word: \"Z0 Z1\", coeff: 0.5}\n  - {word: \"X2\", coeff: -1.5, output: 0}\n"
        "  - {word: \"Y0 X1 Z2\", coeff: 0.7, output: 1}\n",
        "plugin: hermitian\n",
        "plugin: hermitian\nwires: [[0, 2], [1]]\ninit_scale: 0.8\n",
        "plugin: hermitian\ntrainable: false\n",
    };
    const char *diff[] = {"adjoint", "parameter_shift"};
    for (int ai = 0; ai < 3; ai++)
        for (int oi = 0; oi < 5; oi++) {
            const uint32_t n = 3;
            const size_t B = 2;
            ans a = ans_make(ansatze[ai]);
            qp_inst enc = qp_make(QD_KIND_ENCODER, "plugin: angle\nrotation: X\n");
            qp_inst ob = qp_make(QD_KIND_OBSERVABLE, observables[oi]);
            e2e m = {0};
            m.ovt = ob.vt;
            m.obs = ob.self;
            qd_circuit_init(&m.c, n);
            const qd_encoder_vt *evt = enc.vt;
            cr_assert_eq(evt->build(enc.self, 3, &m.c), QD_OK);
            cr_assert_eq(a.vt->build(a.q.self, &m.c), QD_OK);
            cr_assert_eq(m.ovt->build(m.obs, n, &m.spec), QD_OK, "%s", qp_msg(&ob, 1));
            size_t nw = m.c.n_weights, nx = m.c.n_inputs, no = m.spec.n_outputs;
            m.n_obs = m.ovt->n_params(m.obs);
            double *w = malloc(nw * sizeof *w), *x = malloc(B * nx * sizeof *x);
            double *op = malloc((m.n_obs + 1) * sizeof *op);
            double *g = malloc(B * no * sizeof *g);
            qd_rng rng;
            qd_rng_seed(&rng, 11, (uint64_t)(ai * 7 + oi));
            cr_assert_eq(a.vt->init_weights(a.q.self, &rng, nw, w), QD_OK);
            cr_assert_eq(m.ovt->init_params(m.obs, &rng, op), QD_OK);
            double feat[6];
            for (size_t i = 0; i < B * 3; i++)
                feat[i] = 2 * qd_rng_uniform(&rng) - 1;
            cr_assert_eq(evt->encode(enc.self, B, feat, x), QD_OK);
            for (size_t i = 0; i < B * no; i++)
                g[i] = 2 * qd_rng_uniform(&rng) - 1;

            /* Central differences (h = 1e-5: truncation ~1e-11). */
            const double h = 1e-5;
            qp_inst fsim = qp_make(QD_KIND_SIMULATOR, "plugin: statevector\n");
            double *fw = malloc(nw * sizeof *fw), *fx = malloc(B * nx * sizeof *fx);
            double *fo = malloc((m.n_obs + 1) * sizeof *fo);
            for (size_t j = 0; j < nw; j++) {
                double k = w[j];
                w[j] = k + h;
                double Lp = loss(&fsim, &m, B, w, x, op, g);
                w[j] = k - h;
                double Lm = loss(&fsim, &m, B, w, x, op, g);
                w[j] = k;
                fw[j] = (Lp - Lm) / (2 * h);
            }
            for (size_t j = 0; j < B * nx; j++) {
                double k = x[j];
                x[j] = k + h;
                double Lp = loss(&fsim, &m, B, w, x, op, g);
                x[j] = k - h;
                double Lm = loss(&fsim, &m, B, w, x, op, g);
                x[j] = k;
                fx[j] = (Lp - Lm) / (2 * h);
            }
            for (size_t j = 0; j < m.n_obs; j++) {
                double k = op[j];
                op[j] = k + h;
                double Lp = loss(&fsim, &m, B, w, x, op, g);
                op[j] = k - h;
                double Lm = loss(&fsim, &m, B, w, x, op, g);
                op[j] = k;
                fo[j] = (Lp - Lm) / (2 * h);
            }
            qp_free(&fsim);

            for (int di = 0; di < 2; di++) {
                char yaml[80];
                snprintf(yaml, sizeof yaml, "plugin: statevector\ndiff_method: %s\n", diff[di]);
                qp_inst sim = qp_make(QD_KIND_SIMULATOR, yaml);
                const qd_simulator_vt *svt = sim.vt;
                qp_c *mats = malloc(m.spec.matrix_len * sizeof *mats);
                qp_c *gm = malloc(m.spec.matrix_len * sizeof *gm);
                double *gw = malloc(nw * sizeof *gw), *gx = malloc(B * nx * sizeof *gx);
                double *go = calloc(m.n_obs + 1, sizeof *go);
                cr_assert_eq(m.ovt->matrices(m.obs, op, mats), QD_OK);
                qd_sim_job job = {sizeof job, &m.c, &m.spec, mats, B, x, w};
                cr_assert_eq(svt->backward(sim.self, &job, g, gw, gx, gm), QD_OK, "%s",
                             qp_msg(&sim, 1));
                cr_assert_eq(m.ovt->matrices_backward(m.obs, op, gm, go), QD_OK);
                double ew = maxrel(gw, fw, nw), ex = maxrel(gx, fx, B * nx);
                double eo = m.n_obs ? maxrel(go, fo, m.n_obs) : 0;
                cr_log_info("ansatz %d obs %d %s: rel err weights %.2e inputs %.2e obs %.2e", ai,
                            oi, diff[di], ew, ex, eo);
                cr_expect(ew <= 1e-8 && ex <= 1e-8 && eo <= 1e-8,
                          "ansatz %d obs %d %s: rel err weights %.2e inputs %.2e obs %.2e",
                          ai, oi, diff[di], ew, ex, eo);
                free(mats);
                free(gm);
                free(gw);
                free(gx);
                free(go);
                qp_free(&sim);
            }
            free(w);
            free(x);
            free(op);
            free(g);
            free(fw);
            free(fx);
            free(fo);
            qd_obs_spec_free(&m.spec);
            qd_circuit_free(&m.c);
            qp_free(&a.q);
            qp_free(&enc);
            qp_free(&ob);
        }
}
