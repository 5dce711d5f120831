/*
 * bench-sim — throughput of the statevector simulator plugin.
 *
 * For each register size: time per 1-qubit gate (RX, dense 2x2), per CNOT,
 * per expectation (<Z> of one wire), forward and adjoint gradient of L
 * strongly entangling layers, each also as a ratio to a memory-bandwidth
 * reference measured in the same run (one read-modify-write pass over the
 * 2^n x 16 bytes of a state, same threads). Then the batched figure of the
 * quantum LeNet head: n = 6, B = 1024, state prep of 64 amplitudes, 3
 * strongly entangling layers, a trainable 2x2 Hermitian per wire, forward +
 * backward (weights, Hermitians, inputs), on both routes. Timings are the
 * minimum over repetitions (the machine may be shared).
 *
 *   bench-sim [--max-qubits N] [--threads T] [--crossover]
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "qdistill/config.h"
#include "qdistill/registry.h"

typedef double complex cplx;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct sim {
    qd_config *cfg;
    qd_instance *inst;
    const qd_simulator_vt *vt;
    void *self;
} sim;

static qd_registry *g_reg;

/* The machine may be shared: say how busy it was. */
static void print_load(const char *when)
{
    FILE *f = fopen("/proc/loadavg", "r");
    char buf[128] = "";
    if (f) {
        if (!fgets(buf, sizeof buf, f))
            buf[0] = '\0';
        fclose(f);
    }
    buf[strcspn(buf, "\n")] = '\0';
    printf("load average (%s): %s\n", when, buf[0] ? buf : "n/a");
}
static int g_threads = 2;

static void die(const char *what, const char *msg)
{
    fprintf(stderr, "bench-sim: %s: %s\n", what, msg);
    exit(1);
}

static sim sim_new(const char *yaml)
{
    sim s = {0};
    qd_error err;
    if (qd_config_load_string(yaml, strlen(yaml), "bench", NULL, &s.cfg, &err))
        die("config", err.msg);
    qd_instance_opts o = {1, "bench.simulator", g_threads, NULL, NULL};
    if (qd_instance_create(g_reg, QD_KIND_SIMULATOR, qd_config_root(s.cfg), &o,
                           &s.inst, &err))
        die("simulator", err.msg);
    s.vt = qd_instance_vtable(s.inst);
    s.self = qd_instance_self(s.inst);
    return s;
}

static void sim_free(sim *s)
{
    qd_instance_destroy(s->inst);
    qd_config_destroy(s->cfg);
}

static void check(const sim *s, int rc, const char *what)
{
    if (rc) {
        qd_error err;
        qd_instance_error(s->inst, rc, &err);
        die(what, err.msg);
    }
}

/* ---- observables ---- */

typedef struct obs {
    qd_obs_spec spec;
    cplx *mats;
} obs;

static void obs_z(obs *o, unsigned n_terms)
{
    memset(o, 0, sizeof *o);
    o->spec.n_outputs = n_terms ? n_terms : 1;
    o->spec.n_terms = n_terms;
    o->spec.terms = calloc(n_terms + 1, sizeof *o->spec.terms);
    o->mats = calloc(4 * (n_terms + 1), sizeof *o->mats);
    for (unsigned t = 0; t < n_terms; t++) {
        o->spec.terms[t].output = t;
        o->spec.terms[t].n_wires = 1;
        o->spec.terms[t].wires[0] = t;
        o->spec.terms[t].matrix = 4 * t;
        o->mats[4 * t] = 1;
        o->mats[4 * t + 3] = -1;
    }
    o->spec.matrix_len = 4 * n_terms;
}

static void obs_free(obs *o)
{
    qd_obs_spec_free(&o->spec);
    free(o->mats);
}

/* ---- circuits ---- */

static void add(qd_circuit *c, qd_gate g, uint32_t a, uint32_t b, const qd_angle *an)
{
    uint32_t w[2] = {a, b};
    qd_error err;
    if (qd_circuit_add(c, g, w, an, &err))
        die("circuit", err.msg);
}

/* L strongly entangling layers: Rot on every wire, then CNOT i -> i + r
 * with r = (l mod (n-1)) + 1 (PennyLane's default range). */
static void sel_layers(qd_circuit *c, unsigned L)
{
    unsigned n = c->n_wires;
    for (unsigned l = 0; l < L; l++) {
        for (unsigned q = 0; q < n; q++) {
            uint32_t base = c->n_weights;
            qd_angle a[3] = {qd_angle_weight(base), qd_angle_weight(base + 1),
                             qd_angle_weight(base + 2)};
            add(c, QD_GATE_ROT, q, 0, a);
        }
        if (n > 1) {
            unsigned r = (l % (n - 1)) + 1;
            for (unsigned q = 0; q < n; q++)
                add(c, QD_GATE_CNOT, q, (q + r) % n, NULL);
        }
        qd_error err;
        qd_circuit_add_barrier(c, &err);
    }
}

/* ---- timing ---- */

/* Minimum time of fn over repetitions: at least min_reps, and until
 * min_total seconds have been spent. */
typedef struct bench_fn {
    const sim *s;
    const qd_sim_job *job;
    double *out;
    const double *g;
    double *gw, *gx;
    cplx *gm;
    int backward;
} bench_fn;

static double run_once(const bench_fn *b)
{
    double t0 = now();
    int rc = b->backward
                 ? b->s->vt->backward(b->s->self, b->job, b->g, b->gw, b->gx, b->gm)
                 : b->s->vt->forward(b->s->self, b->job, b->out);
    double t = now() - t0;
    check(b->s, rc, b->backward ? "backward" : "forward");
    return t;
}

static double time_min(const bench_fn *b, int min_reps, double min_total)
{
    double best = 1e300, spent = 0;
    for (int r = 0; r < min_reps || spent < min_total; r++) {
        double t = run_once(b);
        spent += t;
        if (t < best)
            best = t;
        if (r > 1000)
            break;
    }
    return best;
}

static double time_forward(const sim *s, const qd_circuit *c, const obs *o,
                           size_t B, const double *x, const double *w,
                           double min_total)
{
    double *e = calloc(B * (o->spec.n_outputs + 1), sizeof *e);
    qd_sim_job job = {sizeof job, c, &o->spec, o->mats, B, x, w};
    bench_fn b = {s, &job, e, NULL, NULL, NULL, NULL, 0};
    double t = time_min(&b, 2, min_total);
    free(e);
    return t;
}

static double time_backward(const sim *s, const qd_circuit *c, const obs *o,
                            size_t B, const double *x, const double *w,
                            int want_x, int want_m, double min_total)
{
    double *g = malloc(B * o->spec.n_outputs * sizeof *g);
    for (size_t i = 0; i < B * o->spec.n_outputs; i++)
        g[i] = 1.0 / (double)(1 + i % 7);
    double *gw = calloc(c->n_weights + 1, sizeof *gw);
    double *gx = want_x ? calloc(B * c->n_inputs + 1, sizeof *gx) : NULL;
    cplx *gm = want_m ? calloc(o->spec.matrix_len + 1, sizeof *gm) : NULL;
    qd_sim_job job = {sizeof job, c, &o->spec, o->mats, B, x, w};
    bench_fn b = {s, &job, NULL, g, gw, gx, gm, 1};
    double t = time_min(&b, 2, min_total);
    free(g);
    free(gw);
    free(gx);
    free(gm);
    return t;
}

static double *weights_for(const qd_circuit *c)
{
    double *w = malloc((c->n_weights + 1) * sizeof *w);
    for (uint32_t i = 0; i < c->n_weights; i++)
        w[i] = 0.1 + 0.37 * (double)(i % 17);
    return w;
}

/* One timed call of forward, backward, or forward then backward of the
 * same job (the backward then starts from the forward's final state). */
enum { T_FWD, T_BWD, T_PAIR };

static double once(const sim *s, const qd_circuit *c, const obs *o,
                   const double *w, int what, double *gw)
{
    double e[64], g[64];
    for (int i = 0; i < 64; i++)
        g[i] = 1.0;
    qd_sim_job job = {sizeof job, c, &o->spec, o->mats, 1, NULL, w};
    double t0 = now();
    if (what != T_BWD)
        check(s, s->vt->forward(s->self, &job, e), "forward");
    if (what != T_FWD)
        check(s, s->vt->backward(s->self, &job, g, gw, NULL, NULL), "backward");
    return now() - t0;
}

/* One read-modify-write pass over a buffer of 2^n amplitudes. */
static double bw_once(double *v, size_t D)
{
    double t0 = now();
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < 2 * D; i++)
        v[i] = v[i] * 0.999999;
    return now() - t0;
}

static void per_size(const sim *s, unsigned n)
{
    size_t D = (size_t)1 << n;
    /* gates per timed circuit: enough work to drown the per-call costs */
    size_t G = ((size_t)1 << 24) / D;
    if (G < (size_t)n)
        G = n;
    if (G > 2000)
        G = 2000;
    obs oz, on;
    obs_z(&oz, 1);
    obs_z(&on, n);
    /* top: every gate on wires 0/1 (the highest bits: one full pass per
     * gate); mix: cycling over all wires (cache-blocked runs) */
    enum { C0, RX, RXM, CX, CXM, SEL, NC };
    qd_circuit c[NC];
    for (int i = 0; i < NC; i++)
        qd_circuit_init(&c[i], n);
    qd_angle a = qd_angle_const(0.3);
    for (size_t k = 0; k < G; k++) {
        add(&c[RX], QD_GATE_RX, 0, 0, &a);
        add(&c[CX], QD_GATE_CNOT, (uint32_t)(k % 2), (uint32_t)((k + 1) % 2), NULL);
        add(&c[RXM], QD_GATE_RX, (uint32_t)(k % n), 0, &a);
        add(&c[CXM], QD_GATE_CNOT, (uint32_t)(k % n), (uint32_t)((k + 1) % n), NULL);
    }
    sel_layers(&c[SEL], 2);
    double *w = weights_for(&c[SEL]);
    double *gw = calloc(c[SEL].n_weights + 1, sizeof *gw);
    double *v = malloc(2 * D * sizeof *v);
    if (!v || !gw)
        die("bench", "out of memory");
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < 2 * D; i++)
        v[i] = 1.0;

    /* rounds: every quantity once per round, minimum over rounds, so that
     * all of them see the same (possibly shared) machine */
    enum { BW, T0, TRX, TRXM, TCX, TCXM, TE, TF, TP, TB, NT };
    double best[NT];
    for (int i = 0; i < NT; i++)
        best[i] = 1e300;
    double budget = n >= 22 ? 0 : n >= 20 ? 3.0 : 1.0, spent = 0;
    int min_rounds = 3;
    for (int r = 0; r < min_rounds || spent < budget; r++) {
        double t[NT];
        double t_start = now();
        /* warm pass first: the gates run on a warm state, so must the
         * reference (at n <= 20 the state fits in the last-level cache) */
        (void)bw_once(v, D);
        t[BW] = bw_once(v, D);
        t[T0] = once(s, &c[C0], &oz, NULL, T_FWD, NULL);
        t[TRX] = once(s, &c[RX], &oz, NULL, T_FWD, NULL);
        t[TRXM] = once(s, &c[RXM], &oz, NULL, T_FWD, NULL);
        t[TCX] = once(s, &c[CX], &oz, NULL, T_FWD, NULL);
        t[TCXM] = once(s, &c[CXM], &oz, NULL, T_FWD, NULL);
        t[TE] = once(s, &c[C0], &on, NULL, T_FWD, NULL);
        t[TF] = once(s, &c[SEL], &oz, w, T_FWD, gw);
        t[TP] = once(s, &c[SEL], &oz, w, T_PAIR, gw);
        t[TB] = once(s, &c[SEL], &oz, w, T_BWD, gw);
        for (int i = 0; i < NT; i++)
            if (t[i] < best[i])
                best[i] = t[i];
        spent += now() - t_start;
        if (r > 2000)
            break;
    }
    double bw = best[BW], t0 = best[T0], g = (double)G;
    double t_rx = (best[TRX] - t0) / g, t_rxm = (best[TRXM] - t0) / g;
    double t_cx = (best[TCX] - t0) / g, t_cxm = (best[TCXM] - t0) / g;
    double te = (best[TE] - t0) / (double)(n - 1);
    double tf = best[TF];
    printf("%3u %9.3g  %9.3g %5.2f %5.2f  %9.3g %5.2f %5.2f  %9.3g %5.2f  %9.3g %5.2f %5.2f\n",
           n, bw, t_rx, t_rx / bw, t_rxm / bw, t_cx, t_cx / bw, t_cxm / bw, te, te / bw,
           tf, (best[TP] - tf) / tf, best[TB] / tf);
    fflush(stdout);
    free(v);
    free(w);
    free(gw);
    for (int i = 0; i < NC; i++)
        qd_circuit_free(&c[i]);
    obs_free(&oz);
    obs_free(&on);
}

/* The quantum LeNet head: amplitude embedding of 64 features on 6 qubits,
 * 3 strongly entangling layers, a 2x2 Hermitian per wire. */
static void batched(const char *route, unsigned n, size_t B, unsigned L)
{
    char yaml[128];
    snprintf(yaml, sizeof yaml, "plugin: statevector\nmethod: %s\n", route);
    sim s = sim_new(yaml);
    size_t D = (size_t)1 << n;
    qd_circuit c;
    qd_error err;
    qd_circuit_init(&c, n);
    if (qd_circuit_add_state_prep(&c, 0, &err))
        die("circuit", err.msg);
    sel_layers(&c, L);
    double *w = weights_for(&c);
    double *x = malloc(B * D * sizeof *x);
    for (size_t b = 0; b < B; b++) {
        double nn = 0;
        for (size_t i = 0; i < D; i++) {
            x[b * D + i] = sin(0.7 * (double)(b + 1) + 1.3 * (double)i);
            nn += x[b * D + i] * x[b * D + i];
        }
        for (size_t i = 0; i < D; i++)
            x[b * D + i] /= sqrt(nn);
    }
    obs o;
    obs_z(&o, n);
    for (unsigned t = 0; t < n; t++) { /* a general Hermitian per wire */
        o.mats[4 * t] = 0.3;
        o.mats[4 * t + 1] = 0.5 - 0.2 * I;
        o.mats[4 * t + 2] = 0.5 + 0.2 * I;
        o.mats[4 * t + 3] = -0.7;
    }
    /* forward, then forward + backward of the same job (the usual
     * sequence in training), alternating; minimum over rounds */
    double tf = time_forward(&s, &c, &o, B, x, w, 0.0);
    double tp = 1e300;
    {
        double *e = calloc(B * n, sizeof *e), *g = malloc(B * n * sizeof *g);
        double *gw = calloc(c.n_weights + 1, sizeof *gw), *gx = calloc(B * D, sizeof *gx);
        cplx *gm = calloc(o.spec.matrix_len, sizeof *gm);
        for (size_t i = 0; i < B * n; i++)
            g[i] = 1.0 / (double)(1 + i % 7);
        qd_sim_job job = {sizeof job, &c, &o.spec, o.mats, B, x, w};
        double spent = 0;
        for (int r = 0; r < 5 || spent < 1.0; r++) {
            double t0 = now();
            check(&s, s.vt->forward(s.self, &job, e), "forward");
            double t1 = now();
            check(&s, s.vt->backward(s.self, &job, g, gw, gx, gm), "backward");
            double t2 = now();
            if (t1 - t0 < tf)
                tf = t1 - t0;
            if (t2 - t0 < tp)
                tp = t2 - t0;
            spent += t2 - t0;
            if (r > 5000)
                break;
        }
        free(e);
        free(g);
        free(gw);
        free(gx);
        free(gm);
    }
    printf("n=%u B=%zu L=%u method=%-5s  forward %8.3f ms  backward %8.3f ms  "
           "forward+backward %8.3f ms\n",
           n, B, L, route, 1e3 * tf, 1e3 * (tp - tf), 1e3 * tp);
    fflush(stdout);
    free(w);
    free(x);
    obs_free(&o);
    qd_circuit_free(&c);
    sim_free(&s);
}

/* Gate-by-gate vs dense forward+backward over batch sizes, to place the
 * `auto` switch. */
static void crossover(void)
{
    printf("\ncrossover (forward+backward ms, 3 layers, state prep):\n");
    printf("  n     B     gates     dense\n");
    for (unsigned n = 3; n <= 8; n++) {
        for (size_t B = 1; B <= 4096; B *= 4) {
            double t[2];
            for (int r = 0; r < 2; r++) {
                sim s = sim_new(r ? "plugin: statevector\nmethod: dense\n"
                                  : "plugin: statevector\nmethod: gates\n");
                size_t D = (size_t)1 << n;
                qd_circuit c;
                qd_error err;
                qd_circuit_init(&c, n);
                qd_circuit_add_state_prep(&c, 0, &err);
                sel_layers(&c, 3);
                double *w = weights_for(&c);
                double *x = malloc(B * D * sizeof *x);
                for (size_t i = 0; i < B * D; i++)
                    x[i] = 1.0 / sqrt((double)D);
                obs o;
                obs_z(&o, n);
                t[r] = time_forward(&s, &c, &o, B, x, w, 0.15) +
                       time_backward(&s, &c, &o, B, x, w, 1, 1, 0.15);
                free(w);
                free(x);
                obs_free(&o);
                qd_circuit_free(&c);
                sim_free(&s);
            }
            printf("%3u %5zu %9.3f %9.3f%s\n", n, B, 1e3 * t[0], 1e3 * t[1],
                   t[1] < t[0] ? "  dense" : "");
        }
    }
}

int main(int argc, char **argv)
{
    unsigned max_q = 24;
    int cross = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--max-qubits") && i + 1 < argc)
            max_q = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            g_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--crossover"))
            cross = 1;
        else {
            fprintf(stderr, "usage: bench-sim [--max-qubits N] [--threads T] "
                            "[--crossover]\n");
            return 2;
        }
    }
    if (g_threads < 1 || max_q < 6 || max_q > 30) {
        fprintf(stderr, "bench-sim: --threads >= 1, --max-qubits in 6..30\n");
        return 2;
    }
    omp_set_num_threads(g_threads);
    qd_error err;
    if (qd_registry_create(&g_reg, &err))
        die("registry", err.msg);
    char *problems = NULL;
    if (qd_registry_load_default(g_reg, NULL, 0, &problems, &err))
        die("plugins", err.msg);
    free(problems);
    if (!qd_registry_find(g_reg, QD_KIND_SIMULATOR, "statevector"))
        die("plugins", "statevector simulator not found (set QDISTILL_PLUGIN_PATH)");

    print_load("start");
    printf("bench-sim: statevector, %d thread(s); seconds per operation and ratios "
           "to one read-modify-write pass over the state (bw).\n"
           "  RX, CNOT: on the top wires (a full pass per gate) and /mix: cycling over "
           "all wires (cache-blocked runs).\n"
           "  adjoint: gradient of all weights of 2 strongly entangling layers, as a "
           "multiple of the forward,\n"
           "  after a forward of the same job (/fwd) and cold (cold).\n",
           g_threads);
    printf("  n        bw         RX   /bw  /mix       CNOT   /bw  /mix     expect   /bw"
           "    forward  /fwd  cold\n");
    sim s = sim_new("plugin: statevector\nmethod: gates\n");
    static const unsigned sizes[] = {6, 12, 16, 20, 22, 24};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
        if (sizes[i] <= max_q)
            per_size(&s, sizes[i]);
    sim_free(&s);

    printf("\nbatched (quantum LeNet head):\n");
    batched("auto", 6, 1024, 3);
    batched("dense", 6, 1024, 3);
    batched("gates", 6, 1024, 3);
    if (cross)
        crossover();

    print_load("end");
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("\npeak RSS: %.1f MiB\n", (double)ru.ru_maxrss / 1024.0);
    qd_registry_destroy(g_reg);
    return 0;
}
