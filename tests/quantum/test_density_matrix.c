/* The density_matrix simulator: noiseless runs against a dense state-vector
 * reference (and the statevector plugin), channels against closed forms and
 * a dense Kraus reference, and gradients (weights, inputs incl. state-prep
 * amplitudes, observable matrices) with noise on against central finite
 * differences, for the adjoint, parameter-shift and finite-diff methods. */
#include <omp.h>

#include "qplug_util.h"

TestSuite(density_matrix, .fini = qp_teardown);

typedef struct sim {
    qp_inst q;
    const qd_simulator_vt *vt;
} sim;

static sim sim_make(const char *yaml)
{
    sim s;
    s.q = qp_make(QD_KIND_SIMULATOR, yaml);
    s.vt = s.q.vt;
    return s;
}

static double frand(unsigned *s) { return 2.0 * qp_urand(s) - 1.0; }

/* ---- random circuits and observables ---- */

/* u must hold 16 entries (qp_gate's contract); the 2x2 result is u[0..3]. */
static void random_unitary2(unsigned *s, qp_c *u)
{
    double a = 3 * frand(s), b = 3 * frand(s), c = 3 * frand(s), d = 3 * frand(s);
    double th[3] = {a, b, c};
    qp_gate(QD_GATE_ROT, th, u);
    for (int i = 0; i < 4; i++)
        u[i] *= cexp(I * d);
}

/* A random circuit on n wires. prep: start with a state preparation from
 * inputs 0..2^n-1. param: 0 = only shift-rule gates take variable angles. */
static void random_circuit(qd_circuit *c, uint32_t n, int n_gates, int prep,
                           int controlled_params, unsigned *s)
{
    qd_circuit_init(c, n);
    uint32_t nw = 0, nx = 0;
    if (prep) {
        cr_assert_eq(qd_circuit_add_state_prep(c, 0, NULL), QD_OK);
        nx = 1u << n;
    }
    static const int one[] = {QD_GATE_I, QD_GATE_X, QD_GATE_Y, QD_GATE_Z, QD_GATE_H,
                              QD_GATE_S, QD_GATE_T, QD_GATE_RX, QD_GATE_RY,
                              QD_GATE_RZ, QD_GATE_ROT, QD_GATE_PHASE};
    static const int two[] = {QD_GATE_CNOT, QD_GATE_CZ, QD_GATE_CRX, QD_GATE_CRY,
                              QD_GATE_CRZ, QD_GATE_SWAP};
    for (int gi = 0; gi < n_gates; gi++) {
        double u = qp_urand(s);
        uint32_t w[2] = {(uint32_t)(qp_urand(s) * n) % n, 0};
        if (u < 0.06) {
            cr_assert_eq(qd_circuit_add_barrier(c, NULL), QD_OK);
            continue;
        }
        if (u < 0.12) {
            qp_c m[16];
            random_unitary2(s, m);
            cr_assert_eq(qd_circuit_add_unitary(c, 1, w, m, NULL), QD_OK);
            continue;
        }
        int g;
        if (n > 1 && u < 0.45) {
            g = two[(int)(qp_urand(s) * 6) % 6];
            w[1] = (w[0] + 1 + (uint32_t)(qp_urand(s) * (n - 1)) % (n - 1)) % n;
        } else {
            g = one[(int)(qp_urand(s) * 12) % 12];
        }
        qd_angle th[3];
        int na = qd_gate_n_angles((qd_gate)g);
        int ctrl = g == QD_GATE_CRX || g == QD_GATE_CRY || g == QD_GATE_CRZ;
        for (int k = 0; k < na; k++) {
            double v = qp_urand(s);
            if (ctrl && !controlled_params)
                v = 0.9;   /* constant */
            if (v < 0.45)
                th[k] = (qd_angle){QD_SRC_WEIGHT, nw++, 0.5 + qp_urand(s), frand(s)};
            else if (v < 0.85)
                th[k] = (qd_angle){QD_SRC_INPUT, nx++, 0.5 + qp_urand(s), frand(s)};
            else
                th[k] = qd_angle_const(3 * frand(s));
        }
        cr_assert_eq(qd_circuit_add(c, (qd_gate)g, w, th, NULL), QD_OK);
    }
    /* Make sure every index up to the counters exists. */
    if (c->n_weights < nw)
        c->n_weights = nw;
    if (c->n_inputs < nx)
        c->n_inputs = nx;
}

/* Random Hermitian terms: n_terms terms of 1..kmax wires over n_out outputs. */
static qp_c *random_obs(qd_obs_spec *spec, uint32_t n, uint32_t n_terms,
                        uint32_t n_out, uint32_t kmax, unsigned *s)
{
    spec->n_outputs = n_out;
    spec->n_terms = n_terms;
    spec->terms = calloc(n_terms, sizeof *spec->terms);
    size_t len = 0;
    for (uint32_t t = 0; t < n_terms; t++) {
        qd_obs_term *tm = &spec->terms[t];
        tm->output = t % n_out;
        uint32_t k = 1 + (uint32_t)(qp_urand(s) * (kmax < n ? kmax : n)) %
                             (kmax < n ? kmax : n);
        tm->n_wires = k;
        /* k distinct wires in random order */
        uint32_t perm[16];
        for (uint32_t i = 0; i < n; i++)
            perm[i] = i;
        for (uint32_t i = 0; i < k; i++) {
            uint32_t j = i + (uint32_t)(qp_urand(s) * (n - i)) % (n - i);
            uint32_t x = perm[i];
            perm[i] = perm[j];
            perm[j] = x;
            tm->wires[i] = perm[i];
        }
        tm->matrix = len;
        len += (size_t)1 << (2 * k);
    }
    spec->matrix_len = len;
    qp_c *m = malloc(len * sizeof *m);
    for (uint32_t t = 0; t < n_terms; t++) {
        size_t d = (size_t)1 << spec->terms[t].n_wires;
        qp_c *h = m + spec->terms[t].matrix;
        for (size_t i = 0; i < d; i++)
            for (size_t j = i; j < d; j++) {
                qp_c v = i == j ? frand(s) : CMPLX(frand(s), frand(s));
                h[i * d + j] = v;
                h[j * d + i] = conj(v);
            }
    }
    return m;
}

static void fill(double *v, size_t n, unsigned *s)
{
    for (size_t i = 0; i < n; i++)
        v[i] = 2 * frand(s);
}

/* Normalised state-prep amplitudes in x[0 .. 2^n) of each sample. */
static void fill_prep(double *x, size_t B, size_t nx, uint32_t n, unsigned *s)
{
    size_t D = (size_t)1 << n;
    for (size_t b = 0; b < B; b++) {
        double nn = 0;
        for (size_t k = 0; k < D; k++) {
            x[b * nx + k] = frand(s);
            nn += x[b * nx + k] * x[b * nx + k];
        }
        for (size_t k = 0; k < D; k++)
            x[b * nx + k] /= sqrt(nn);
    }
}

static int forward(sim *sm, const qd_circuit *c, const qd_obs_spec *spec,
                   const qp_c *mats, size_t B, const double *x, const double *w,
                   double *E)
{
    qd_sim_job job = {sizeof job, c, spec, mats, B, x, w};
    return sm->vt->forward(sm->q.self, &job, E);
}

/* ---- noiseless: the dense reference and the statevector plugin ---- */

Test(density_matrix, noiseless_matches_statevector_reference)
{
    unsigned s = 12345;
    sim dm = sim_make("plugin: density_matrix\n");
    sim sv = sim_make("plugin: statevector\n");
    for (int trial = 0; trial < 16; trial++) {
        uint32_t n = 1 + (uint32_t)trial % 4;
        int prep = trial % 3 == 1;
        qd_circuit c;
        random_circuit(&c, n, 25, prep, 1, &s);
        qd_obs_spec spec = {0};
        qp_c *mats = random_obs(&spec, n, 4, 3, 3, &s);
        const size_t B = 3;
        size_t nx = c.n_inputs, nw = c.n_weights;
        double *x = calloc(B * nx + 1, sizeof *x), *w = calloc(nw + 1, sizeof *w);
        fill(x, B * nx, &s);
        if (prep)
            fill_prep(x, B, nx, n, &s);
        fill(w, nw, &s);
        double E[9], E2[9];
        cr_assert_eq(forward(&dm, &c, &spec, mats, B, x, w, E), QD_OK, "%s",
                     qp_msg(&dm.q, 1));
        cr_assert_eq(forward(&sv, &c, &spec, mats, B, x, w, E2), QD_OK, "%s",
                     qp_msg(&sv.q, 1));
        for (size_t b = 0; b < B; b++) {
            qp_c psi[16];
            qp_sv_run(&c, w, x + b * nx, psi);
            double ref[3] = {0, 0, 0};
            for (uint32_t t = 0; t < spec.n_terms; t++)
                ref[spec.terms[t].output] +=
                    qp_sv_expect((int)n, psi, (int)spec.terms[t].n_wires,
                                 spec.terms[t].wires, mats + spec.terms[t].matrix);
            for (int o = 0; o < 3; o++) {
                cr_expect(fabs(E[b * 3 + o] - ref[o]) < 1e-12,
                          "trial %d sample %zu output %d: %.15g vs reference %.15g", trial,
                          b, o, E[b * 3 + o], ref[o]);
                cr_expect(fabs(E[b * 3 + o] - E2[b * 3 + o]) < 1e-12,
                          "trial %d: density_matrix %.15g vs statevector %.15g", trial,
                          E[b * 3 + o], E2[b * 3 + o]);
            }
        }
        free(x);
        free(w);
        free(mats);
        qd_obs_spec_free(&spec);
        qd_circuit_free(&c);
    }
    qp_free(&dm.q);
    qp_free(&sv.q);
}

/* ---- closed forms ---- */

/* RY(t)|0> then `noise`, measured by Z and X: returns <Z>, <X>. */
static void one_qubit(const char *yaml, double t, double *ez, double *ex)
{
    sim dm = sim_make(yaml);
    qd_circuit c;
    qd_circuit_init(&c, 1);
    uint32_t w = 0;
    qd_angle th = qd_angle_weight(0);
    cr_assert_eq(qd_circuit_add(&c, QD_GATE_RY, &w, &th, NULL), QD_OK);
    qd_obs_term terms[2] = {{0, 1, {0}, 0}, {1, 1, {0}, 4}};
    qd_obs_spec spec = {2, 2, terms, 8};
    qp_c mats[8] = {1, 0, 0, -1, 0, 1, 1, 0};
    double E[2];
    cr_assert_eq(forward(&dm, &c, &spec, mats, 1, NULL, &t, E), QD_OK, "%s",
                 qp_msg(&dm.q, 1));
    *ez = E[0];
    *ex = E[1];
    qd_circuit_free(&c);
    qp_free(&dm.q);
}

Test(density_matrix, channels_closed_forms)
{
    double ts[] = {0.3, 1.1, 2.5};
    double ps[] = {0.0, 0.1, 0.37, 1.0};
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++) {
            double t = ts[i], p = ps[j], ez, ex;
            char y[200];
            /* depolarizing: rho -> (1-p) rho + p/3 (X.X + Y.Y + Z.Z) */
            snprintf(y, sizeof y,
                     "plugin: density_matrix\nnoise: [{channel: depolarizing, p: %.17g}]\n", p);
            one_qubit(y, t, &ez, &ex);
            cr_expect_float_eq(ez, (1 - 4 * p / 3) * cos(t), 1e-14, "depol Z t %g p %g", t, p);
            cr_expect_float_eq(ex, (1 - 4 * p / 3) * sin(t), 1e-14, "depol X");
            /* amplitude damping gamma = p */
            snprintf(y, sizeof y,
                     "plugin: density_matrix\nnoise: [{channel: amplitude_damping, p: %.17g}]\n",
                     p);
            one_qubit(y, t, &ez, &ex);
            cr_expect_float_eq(ez, 1 - 2 * (1 - p) * pow(sin(t / 2), 2), 1e-14, "amp Z");
            cr_expect_float_eq(ex, sqrt(1 - p) * sin(t), 1e-14, "amp X");
            /* phase damping */
            snprintf(y, sizeof y,
                     "plugin: density_matrix\nnoise: [{channel: phase_damping, p: %.17g}]\n", p);
            one_qubit(y, t, &ez, &ex);
            cr_expect_float_eq(ez, cos(t), 1e-14, "phase Z");
            cr_expect_float_eq(ex, sqrt(1 - p) * sin(t), 1e-14, "phase X");
            /* bit flip */
            snprintf(y, sizeof y,
                     "plugin: density_matrix\nnoise: [{channel: bit_flip, p: %.17g}]\n", p);
            one_qubit(y, t, &ez, &ex);
            cr_expect_float_eq(ez, (1 - 2 * p) * cos(t), 1e-14, "flip Z");
            cr_expect_float_eq(ex, sin(t), 1e-14, "flip X");
            /* readout error on the measured wire: <Z> -> (1-2p)<Z>, X kept
             * (a bit flip commutes with X). */
            snprintf(y, sizeof y, "plugin: density_matrix\nreadout_error: %.17g\n", p);
            one_qubit(y, t, &ez, &ex);
            cr_expect_float_eq(ez, (1 - 2 * p) * cos(t), 1e-14, "readout Z");
            cr_expect_float_eq(ex, sin(t), 1e-14, "readout X");
        }
}

/* Layer noise acts once per barrier on every wire (or the listed ones);
 * gate noise acts on both wires of a two-qubit gate. */
Test(density_matrix, noise_placement)
{
    double p = 0.2, f = 1 - 4 * p / 3, t = 0.7, u = 0.4;
    qd_circuit c;
    qd_circuit_init(&c, 2);
    uint32_t w0 = 0, w1 = 1;
    qd_angle a = qd_angle_const(t), b = qd_angle_const(u);
    qd_circuit_add(&c, QD_GATE_RY, &w0, &a, NULL);
    qd_circuit_add(&c, QD_GATE_RY, &w1, &a, NULL);
    qd_circuit_add_barrier(&c, NULL);
    qd_circuit_add(&c, QD_GATE_RY, &w0, &b, NULL);
    qd_circuit_add(&c, QD_GATE_RY, &w1, &b, NULL);
    qd_circuit_add_barrier(&c, NULL);
    qd_obs_term terms[2] = {{0, 1, {0}, 0}, {1, 1, {1}, 4}};
    qd_obs_spec spec = {2, 2, terms, 8};
    qp_c mats[8] = {1, 0, 0, -1, 1, 0, 0, -1};
    double E[2];
    sim dm = sim_make("plugin: density_matrix\nnoise:\n"
                      "  - {channel: depolarizing, p: 0.2, after: layer}\n"
                      "  - {channel: bit_flip, p: 0.1, after: layer, wires: [1]}\n");
    cr_assert_eq(forward(&dm, &c, &spec, mats, 1, NULL, NULL, E), QD_OK);
    cr_expect_float_eq(E[0], f * f * cos(t + u), 1e-14);
    /* Bit flip keeps the Bloch x component and scales z by 0.8; RY then
     * mixes them: z = 0.8 f (0.8 f cos t cos u - f sin t sin u). */
    double z1 = 0.8 * f * (0.8 * f * cos(t) * cos(u) - f * sin(t) * sin(u));
    cr_expect_float_eq(E[1], z1, 1e-14, "E1 %.17g want %.17g", E[1], z1);
    qp_free(&dm.q);
    /* after: gate, on the gates' wires: each wire sees 2 channels. */
    dm = sim_make("plugin: density_matrix\nnoise: [{channel: depolarizing, p: 0.2}]\n");
    cr_assert_eq(forward(&dm, &c, &spec, mats, 1, NULL, NULL, E), QD_OK);
    cr_expect_float_eq(E[0], f * f * cos(t + u), 1e-14);
    qp_free(&dm.q);
    qd_circuit_free(&c);

    /* CNOT on |00>: both wires get the channel once, ZZ = f^2. */
    qd_circuit_init(&c, 2);
    uint32_t cw[2] = {0, 1};
    qd_circuit_add(&c, QD_GATE_CNOT, cw, NULL, NULL);
    qd_obs_term zz = {0, 2, {0, 1}, 0};
    qd_obs_spec s2 = {1, 1, &zz, 16};
    qp_c ZZ[16] = {1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 1};
    dm = sim_make("plugin: density_matrix\nnoise: [{channel: depolarizing, p: 0.2}]\n"
                  "readout_error: 0.05\n");
    cr_assert_eq(forward(&dm, &c, &s2, ZZ, 1, NULL, NULL, E), QD_OK);
    cr_expect_float_eq(E[0], f * f * 0.9 * 0.9, 1e-14);
    qp_free(&dm.q);
    qd_circuit_free(&c);
}

/* ---- noisy forward vs a dense Kraus reference ---- */

typedef struct ref_noise {
    int ch;          /* 0 depol, 1 amp, 2 phase, 3 flip */
    double p;
    int layer;
    int wire;        /* -1 = all */
} ref_noise;

static int kraus(int ch, double p, qp_c *K)
{
    memset(K, 0, 16 * sizeof *K);
    double a = sqrt(1 - p);
    switch (ch) {
    case 0: {
        double b = sqrt(p / 3);
        qp_c k[16] = {a, 0, 0, a, 0, b, b, 0, 0, -I * b, I * b, 0, b, 0, 0, -b};
        memcpy(K, k, sizeof k);
        return 4;
    }
    case 1: K[0] = 1; K[3] = a; K[5] = sqrt(p); return 2;
    case 2: K[0] = 1; K[3] = a; K[7] = sqrt(p); return 2;
    default: K[0] = K[3] = a; K[5] = K[6] = sqrt(p); return 2;
    }
}

/* rho -> sum_k K rho K^dagger with K on wire w (dense). */
static void ref_channel(int n, qp_c *rho, const ref_noise *ns, uint32_t w)
{
    size_t D = (size_t)1 << n;
    qp_c K[16];
    int nk = kraus(ns->ch, ns->p, K);
    qp_c *F = malloc(D * D * sizeof *F), *T = malloc(D * D * sizeof *T),
         *A = calloc(D * D, sizeof *A), *Fd = malloc(D * D * sizeof *Fd);
    for (int k = 0; k < nk; k++) {
        qp_full(n, 1, &w, K + 4 * k, F);
        for (size_t i = 0; i < D; i++)
            for (size_t j = 0; j < D; j++)
                Fd[i * D + j] = conj(F[j * D + i]);
        qp_matmul(D, F, rho, T);
        qp_matmul(D, T, Fd, F);
        for (size_t i = 0; i < D * D; i++)
            A[i] += F[i];
    }
    memcpy(rho, A, D * D * sizeof *A);
    free(F);
    free(T);
    free(A);
    free(Fd);
}

static double ref_noisy(const qd_circuit *c, const double *w, const double *x,
                        const ref_noise *nz, int n_noise, double readout,
                        const qd_obs_spec *spec, const qp_c *mats, double *E)
{
    int n = (int)c->n_wires;
    size_t D = (size_t)1 << n;
    qp_c *rho = calloc(D * D, sizeof *rho), *F = malloc(D * D * sizeof *F),
         *T = malloc(D * D * sizeof *T), *Fd = malloc(D * D * sizeof *Fd);
    rho[0] = 1;
    for (size_t i = 0; i < c->n_ops; i++) {
        const qd_op *op = &c->ops[i];
        if (op->gate == QD_GATE_STATE_PREP) {
            for (size_t r = 0; r < D; r++)
                for (size_t q = 0; q < D; q++)
                    rho[r * D + q] = x[op->data + r] * x[op->data + q];
            continue;
        }
        if (op->gate == QD_GATE_BARRIER) {
            for (int k = 0; k < n_noise; k++)
                if (nz[k].layer)
                    for (uint32_t q = 0; q < (uint32_t)n; q++)
                        if (nz[k].wire < 0 || (uint32_t)nz[k].wire == q)
                            ref_channel(n, rho, &nz[k], q);
            continue;
        }
        qp_c m[16];
        int k;
        if (op->gate == QD_GATE_UNITARY) {
            k = (int)op->n_wires;
            memcpy(m, c->matrices + op->data, ((size_t)1 << (2 * k)) * sizeof *m);
        } else {
            double th[3] = {0, 0, 0};
            for (uint32_t a = 0; a < op->n_angles; a++) {
                const qd_angle *an = &op->angle[a];
                th[a] = an->offset + (an->src == QD_SRC_WEIGHT  ? an->scale * w[an->index]
                                      : an->src == QD_SRC_INPUT ? an->scale * x[an->index]
                                                                : 0.0);
            }
            k = qp_gate((int)op->gate, th, m);
        }
        qp_full(n, k, op->wires, m, F);
        for (size_t r = 0; r < D; r++)
            for (size_t q = 0; q < D; q++)
                Fd[r * D + q] = conj(F[q * D + r]);
        qp_matmul(D, F, rho, T);
        qp_matmul(D, T, Fd, rho);
        for (int q = 0; q < n_noise; q++)
            if (!nz[q].layer)
                for (int a = 0; a < k; a++)
                    if (nz[q].wire < 0 || (uint32_t)nz[q].wire == op->wires[a])
                        ref_channel(n, rho, &nz[q], op->wires[a]);
    }
    /* readout: a bit flip on each measured wire, per term */
    for (uint32_t o = 0; o < spec->n_outputs; o++)
        E[o] = 0;
    for (uint32_t t = 0; t < spec->n_terms; t++) {
        const qd_obs_term *tm = &spec->terms[t];
        qp_c *r2 = malloc(D * D * sizeof *r2);
        memcpy(r2, rho, D * D * sizeof *r2);
        ref_noise flip = {3, readout, 0, -1};
        if (readout > 0)
            for (uint32_t a = 0; a < tm->n_wires; a++)
                ref_channel(n, r2, &flip, tm->wires[a]);
        qp_full(n, (int)tm->n_wires, tm->wires, mats + tm->matrix, F);
        qp_matmul(D, r2, F, T);
        qp_c tr = 0;
        for (size_t i = 0; i < D; i++)
            tr += T[i * D + i];
        E[tm->output] += creal(tr);
        free(r2);
    }
    free(rho);
    free(F);
    free(T);
    free(Fd);
    return 0;
}

static const char *noisy_yaml =
    "plugin: density_matrix\n"
    "readout_error: 0.03\n"
    "noise:\n"
    "  - {channel: depolarizing, p: 0.05}\n"
    "  - {channel: amplitude_damping, p: 0.08, wires: [1]}\n"
    "  - {channel: phase_damping, p: 0.12, after: layer}\n"
    "  - {channel: bit_flip, p: 0.07, after: layer, wires: [0]}\n";
static const ref_noise noisy_ref[4] = {
    {0, 0.05, 0, -1}, {1, 0.08, 0, 1}, {2, 0.12, 1, -1}, {3, 0.07, 1, 0}};

Test(density_matrix, noisy_matches_kraus_reference)
{
    unsigned s = 777;
    sim dm = sim_make(noisy_yaml);
    for (int trial = 0; trial < 6; trial++) {
        uint32_t n = 2 + (uint32_t)trial % 2;
        int prep = trial % 2 == 0;
        qd_circuit c;
        random_circuit(&c, n, 18, prep, 1, &s);
        qd_obs_spec spec = {0};
        qp_c *mats = random_obs(&spec, n, 3, 2, 2, &s);
        const size_t B = 2;
        size_t nx = c.n_inputs;
        double *x = calloc(B * nx + 1, sizeof *x), *w = calloc(c.n_weights + 1, sizeof *w);
        fill(x, B * nx, &s);
        if (prep)
            fill_prep(x, B, nx, n, &s);
        fill(w, c.n_weights, &s);
        double E[4], R[2];
        cr_assert_eq(forward(&dm, &c, &spec, mats, B, x, w, E), QD_OK, "%s", qp_msg(&dm.q, 1));
        for (size_t b = 0; b < B; b++) {
            ref_noisy(&c, w, x + b * nx, noisy_ref, 4, 0.03, &spec, mats, R);
            for (int o = 0; o < 2; o++)
                cr_expect(fabs(E[b * 2 + o] - R[o]) < 1e-12, "trial %d: %.15g vs %.15g", trial,
                          E[b * 2 + o], R[o]);
        }
        free(x);
        free(w);
        free(mats);
        qd_obs_spec_free(&spec);
        qd_circuit_free(&c);
    }
    qp_free(&dm.q);
}

/* ---- gradients with noise ---- */

static double job_loss(sim *sm, const qd_circuit *c, const qd_obs_spec *spec,
                       const qp_c *mats, size_t B, const double *x, const double *w,
                       const double *g)
{
    double *E = malloc(B * spec->n_outputs * sizeof *E);
    cr_assert_eq(forward(sm, c, spec, mats, B, x, w, E), QD_OK, "%s", qp_msg(&sm->q, 1));
    double L = 0;
    for (size_t i = 0; i < B * spec->n_outputs; i++)
        L += g[i] * E[i];
    free(E);
    return L;
}

static double rel(const double *a, const double *b, size_t n)
{
    double e = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs(a[i] - b[i]));
        m = fmax(m, fabs(b[i]));
    }
    return m > 0 ? e / m : e;
}

/* dL/dH_t as the simulator reports it vs central differences along random
 * Hermitian directions: dL = Re sum conj(G) dH. */
static void check_gmats(sim *ref, const qd_circuit *c, const qd_obs_spec *spec,
                        qp_c *mats, size_t B, const double *x, const double *w,
                        const double *g, const qp_c *gm, unsigned *s, const char *what)
{
    size_t len = spec->matrix_len;
    qp_c *dir = malloc(len * sizeof *dir), *m2 = malloc(len * sizeof *m2);
    for (int rep = 0; rep < 3; rep++) {
        for (uint32_t t = 0; t < spec->n_terms; t++) {
            size_t d = (size_t)1 << spec->terms[t].n_wires;
            qp_c *h = dir + spec->terms[t].matrix;
            for (size_t i = 0; i < d; i++)
                for (size_t j = i; j < d; j++) {
                    qp_c v = i == j ? frand(s) : CMPLX(frand(s), frand(s));
                    h[i * d + j] = v;
                    h[j * d + i] = conj(v);
                }
        }
        const double h = 1e-5;
        for (size_t i = 0; i < len; i++)
            m2[i] = mats[i] + h * dir[i];
        double Lp = job_loss(ref, c, spec, m2, B, x, w, g);
        for (size_t i = 0; i < len; i++)
            m2[i] = mats[i] - h * dir[i];
        double Lm = job_loss(ref, c, spec, m2, B, x, w, g);
        double fd = (Lp - Lm) / (2 * h), an = 0;
        for (size_t i = 0; i < len; i++)
            an += creal(conj(gm[i]) * dir[i]);
        cr_log_info("%s G: rel err %.2e", what, fabs(fd - an) / fmax(1.0, fabs(fd)));
        cr_expect(fabs(fd - an) <= 1e-8 * fmax(1.0, fabs(fd)), "%s G: %.15g vs fd %.15g", what,
                  an, fd);
    }
    free(dir);
    free(m2);
}

static void gradient_case(const char *base_yaml, int prep, uint32_t n, unsigned seed)
{
    unsigned s = seed;
    qd_circuit c;
    random_circuit(&c, n, 22, prep, 0, &s);
    qd_obs_spec spec = {0};
    qp_c *mats = random_obs(&spec, n, 3, 2, 2, &s);
    const size_t B = 2;
    size_t nx = c.n_inputs, nw = c.n_weights, no = spec.n_outputs;
    double *x = calloc(B * nx + 1, sizeof *x), *w = calloc(nw + 1, sizeof *w);
    double g[4];
    fill(x, B * nx, &s);
    if (prep)
        fill_prep(x, B, nx, n, &s);
    fill(w, nw, &s);
    fill(g, B * no, &s);

    /* Central differences of the adjoint instance's forward. */
    char yaml[600];
    snprintf(yaml, sizeof yaml, "%s", base_yaml);
    sim ref = sim_make(yaml);
    const double h = 1e-5;
    double *fw = calloc(nw + 1, sizeof *fw), *fx = calloc(B * nx + 1, sizeof *fx);
    for (size_t j = 0; j < nw; j++) {
        double k = w[j];
        w[j] = k + h;
        double Lp = job_loss(&ref, &c, &spec, mats, B, x, w, g);
        w[j] = k - h;
        double Lm = job_loss(&ref, &c, &spec, mats, B, x, w, g);
        w[j] = k;
        fw[j] = (Lp - Lm) / (2 * h);
    }
    for (size_t j = 0; j < B * nx; j++) {
        double k = x[j];
        x[j] = k + h;
        double Lp = job_loss(&ref, &c, &spec, mats, B, x, w, g);
        x[j] = k - h;
        double Lm = job_loss(&ref, &c, &spec, mats, B, x, w, g);
        x[j] = k;
        fx[j] = (Lp - Lm) / (2 * h);
    }

    const char *methods[] = {"adjoint", "parameter_shift", "finite_diff"};
    double *aw = malloc((nw + 1) * sizeof *aw), *ax = malloc((B * nx + 1) * sizeof *ax);
    for (int mi = 0; mi < 3; mi++) {
        snprintf(yaml, sizeof yaml, "%sdiff_method: %s\n", base_yaml, methods[mi]);
        sim sm = sim_make(yaml);
        double *gw = malloc((nw + 1) * sizeof *gw), *gx = malloc((B * nx + 1) * sizeof *gx);
        qp_c *gm = malloc(spec.matrix_len * sizeof *gm);
        qd_sim_job job = {sizeof job, &c, &spec, mats, B, x, w};
        cr_assert_eq(sm.vt->backward(sm.q.self, &job, g, gw, gx, gm), QD_OK, "%s",
                     qp_msg(&sm.q, 1));
        /* finite_diff is itself approximate (fd_step 1e-6). */
        double tol = mi == 2 ? 1e-6 : 1e-8;
        double ew = rel(gw, fw, nw), ex = rel(gx, fx, B * nx);
        cr_log_info("%s n %u prep %d: rel err weights %.2e inputs %.2e", methods[mi], n, prep,
                    ew, ex);
        cr_expect(ew <= tol, "%s n %u prep %d: weights rel err %.3g", methods[mi], n, prep, ew);
        cr_expect(ex <= tol, "%s n %u prep %d: inputs rel err %.3g", methods[mi], n, prep, ex);
        check_gmats(&ref, &c, &spec, mats, B, x, w, g, gm, &s, methods[mi]);
        /* Adjoint and parameter-shift are both exact: they must agree far
         * below the finite-difference error. */
        if (mi == 0) {
            memcpy(aw, gw, nw * sizeof *aw);
            memcpy(ax, gx, B * nx * sizeof *ax);
        } else if (mi == 1) {
            double dw = rel(gw, aw, nw), dx = rel(gx, ax, B * nx);
            cr_log_info("parameter_shift vs adjoint: weights %.2e inputs %.2e", dw, dx);
            cr_expect(dw <= 1e-12 && dx <= 1e-12, "shift vs adjoint: %.3g %.3g", dw, dx);
        }
        qd_sim_stats st;
        sm.vt->stats(sm.q.self, &st);
        cr_expect(st.executions >= B, "executions counted (%llu)",
                  (unsigned long long)st.executions);
        if (mi == 0)
            cr_expect_eq(st.executions, B, "adjoint: one execution per sample");
        free(gw);
        free(gx);
        free(gm);
        qp_free(&sm.q);
    }
    qp_free(&ref.q);
    free(aw);
    free(ax);
    free(fw);
    free(fx);
    free(x);
    free(w);
    free(mats);
    qd_obs_spec_free(&spec);
    qd_circuit_free(&c);
}

Test(density_matrix, gradients_with_noise_vs_fd, .timeout = 120)
{
    gradient_case(noisy_yaml, 0, 3, 101);
    gradient_case(noisy_yaml, 1, 3, 202);
    gradient_case(noisy_yaml, 1, 2, 303);
    gradient_case("plugin: density_matrix\n", 0, 2, 404);
}

/* A trainable Hermitian through the noisy simulator: matrices_backward of
 * the simulator's G against central differences of its parameters. */
Test(density_matrix, hermitian_params_gradient_with_noise)
{
    unsigned s = 9;
    qd_circuit c;
    random_circuit(&c, 3, 20, 0, 0, &s);
    qp_inst ob = qp_make(QD_KIND_OBSERVABLE, "plugin: hermitian\nwires: [[0], [2, 1]]\n");
    const qd_observable_vt *ovt = ob.vt;
    qd_obs_spec spec = {0};
    cr_assert_eq(ovt->build(ob.self, 3, &spec), QD_OK);
    size_t np = ovt->n_params(ob.self);
    double *p = malloc(np * sizeof *p), *gp = calloc(np, sizeof *gp);
    qd_rng rng;
    qd_rng_seed(&rng, 3, 4);
    ovt->init_params(ob.self, &rng, p);
    const size_t B = 2;
    double *x = calloc(B * c.n_inputs + 1, sizeof *x), *w = calloc(c.n_weights + 1, sizeof *w);
    fill(x, B * c.n_inputs, &s);
    fill(w, c.n_weights, &s);
    double g[4];
    fill(g, 4, &s);
    sim dm = sim_make(noisy_yaml);
    qp_c *mats = malloc(spec.matrix_len * sizeof *mats), *gm = malloc(spec.matrix_len * sizeof *gm);
    ovt->matrices(ob.self, p, mats);
    qd_sim_job job = {sizeof job, &c, &spec, mats, B, x, w};
    cr_assert_eq(dm.vt->backward(dm.q.self, &job, g, NULL, NULL, gm), QD_OK);
    cr_assert_eq(ovt->matrices_backward(ob.self, p, gm, gp), QD_OK);
    const double h = 1e-5;
    double err = 0, mag = 0;
    for (size_t j = 0; j < np; j++) {
        double k = p[j];
        p[j] = k + h;
        ovt->matrices(ob.self, p, mats);
        double Lp = job_loss(&dm, &c, &spec, mats, B, x, w, g);
        p[j] = k - h;
        ovt->matrices(ob.self, p, mats);
        double Lm = job_loss(&dm, &c, &spec, mats, B, x, w, g);
        p[j] = k;
        double fd = (Lp - Lm) / (2 * h);
        err = fmax(err, fabs(fd - gp[j]));
        mag = fmax(mag, fabs(fd));
    }
    cr_expect(mag > 1e-2 && err <= 1e-8 * mag, "max err %.3g of %.3g", err, mag);
    free(p);
    free(gp);
    free(x);
    free(w);
    free(mats);
    free(gm);
    qd_obs_spec_free(&spec);
    qd_circuit_free(&c);
    qp_free(&ob);
    qp_free(&dm.q);
}

/* ---- contracts and errors ---- */

Test(density_matrix, deterministic_across_thread_counts)
{
    unsigned s = 55;
    qd_circuit c;
    random_circuit(&c, 3, 30, 1, 1, &s);
    qd_obs_spec spec = {0};
    qp_c *mats = random_obs(&spec, 3, 3, 2, 2, &s);
    const size_t B = 5;
    size_t nx = c.n_inputs, nw = c.n_weights;
    double *x = calloc(B * nx + 1, sizeof *x), *w = calloc(nw + 1, sizeof *w), g[10];
    fill(x, B * nx, &s);
    fill_prep(x, B, nx, 3, &s);
    fill(w, nw, &s);
    fill(g, 10, &s);
    sim dm = sim_make(noisy_yaml);
    double *gw[2], *gx[2];
    qp_c *gm[2];
    double E[2][10];
    for (int r = 0; r < 2; r++) {
        omp_set_num_threads(r + 1);
        gw[r] = malloc((nw + 1) * sizeof **gw);
        gx[r] = malloc((B * nx + 1) * sizeof **gx);
        gm[r] = malloc(spec.matrix_len * sizeof **gm);
        qd_sim_job job = {sizeof job, &c, &spec, mats, B, x, w};
        cr_assert_eq(dm.vt->forward(dm.q.self, &job, E[r]), QD_OK);
        cr_assert_eq(dm.vt->backward(dm.q.self, &job, g, gw[r], gx[r], gm[r]), QD_OK);
    }
    cr_expect(memcmp(E[0], E[1], sizeof E[0]) == 0);
    cr_expect(memcmp(gw[0], gw[1], nw * sizeof *gw[0]) == 0);
    cr_expect(memcmp(gx[0], gx[1], B * nx * sizeof *gx[0]) == 0);
    cr_expect(memcmp(gm[0], gm[1], spec.matrix_len * sizeof *gm[0]) == 0);
    for (int r = 0; r < 2; r++) {
        free(gw[r]);
        free(gx[r]);
        free(gm[r]);
    }
    free(x);
    free(w);
    free(mats);
    qd_obs_spec_free(&spec);
    qd_circuit_free(&c);
    qp_free(&dm.q);
}

Test(density_matrix, errors_and_stats)
{
    /* parameter_shift refuses controlled rotations that need a gradient. */
    qd_circuit c;
    qd_circuit_init(&c, 2);
    uint32_t cw[2] = {0, 1};
    qd_angle a = qd_angle_weight(0);
    cr_assert_eq(qd_circuit_add(&c, QD_GATE_CRY, cw, &a, NULL), QD_OK);
    qd_obs_term t = {0, 1, {1}, 0};
    qd_obs_spec spec = {1, 1, &t, 4};
    qp_c Z[4] = {1, 0, 0, -1};
    double w = 0.3, gw, g = 1, E;
    sim ps = sim_make("plugin: density_matrix\ndiff_method: parameter_shift\n");
    qd_sim_job job = {sizeof job, &c, &spec, Z, 1, NULL, &w};
    int rc = ps.vt->backward(ps.q.self, &job, &g, &gw, NULL, NULL);
    cr_expect_eq(rc, QD_ERR_UNSUPPORTED);
    cr_expect(strstr(qp_msg(&ps.q, rc), "CRY"), "%s", qp_msg(&ps.q, rc));
    /* ... but the forward and the G-only backward are fine. */
    qp_c gmz[4];
    cr_expect_eq(ps.vt->forward(ps.q.self, &job, &E), QD_OK);
    cr_expect_eq(ps.vt->backward(ps.q.self, &job, &g, NULL, NULL, gmz), QD_OK);
    qd_sim_stats st;
    ps.vt->stats(ps.q.self, &st);
    cr_expect_eq(st.executions, 2);
    cr_expect_eq(st.shots, 0);
    qp_free(&ps.q);

    /* parameter-shift execution count: RY(w) with one weight: 2 per sample. */
    qd_circuit_free(&c);
    qd_circuit_init(&c, 1);
    uint32_t w0 = 0;
    cr_assert_eq(qd_circuit_add(&c, QD_GATE_RY, &w0, &a, NULL), QD_OK);
    t.wires[0] = 0;
    ps = sim_make("plugin: density_matrix\ndiff_method: parameter_shift\n");
    job.batch = 1;
    cr_expect_eq(ps.vt->backward(ps.q.self, &job, &g, &gw, NULL, NULL), QD_OK);
    cr_expect_float_eq(gw, -sin(0.3), 1e-14);
    ps.vt->stats(ps.q.self, &st);
    cr_expect_eq(st.executions, 2);
    qp_free(&ps.q);

    /* Noise on a wire the circuit lacks: located error. */
    qp_inst q;
    qd_error err = {0};
    cr_assert_eq(qp_try(QD_KIND_SIMULATOR, "n.yaml",
                        "plugin: density_matrix\nnoise:\n  - {channel: bit_flip, p: 0.1, "
                        "wires: [3]}\n",
                        1, &q, &err),
                 QD_OK, "%s", err.msg);
    const qd_simulator_vt *vt = q.vt;
    rc = vt->forward(q.self, &job, &E);
    cr_expect_eq(rc, QD_ERR_INVALID);
    cr_expect(strstr(qp_msg(&q, rc), "n.yaml:3:5"), "%s", qp_msg(&q, rc));
    qp_free(&q);

    /* p outside [0, 1] is rejected by the schema. */
    rc = qp_try(QD_KIND_SIMULATOR, "n.yaml",
                "plugin: density_matrix\nnoise: [{channel: depolarizing, p: 1.5}]\n", 1, &q,
                &err);
    cr_expect_neq(rc, QD_OK);

    /* A NaN angle is a numeric error, not a NaN result. */
    sim dm = sim_make("plugin: density_matrix\n");
    double nanw = NAN;
    job.weights = &nanw;
    rc = dm.vt->forward(dm.q.self, &job, &E);
    cr_expect_eq(rc, QD_ERR_NUMERIC, "%s", qp_msg(&dm.q, rc));
    qp_free(&dm.q);
    qd_circuit_free(&c);
}
