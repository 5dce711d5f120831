/*
 * bench-model: time LeNet and the quantum LeNet on a batch of MNIST-shaped
 * random images: forward, forward + backward to the parameters, and forward
 * + backward to the parameters and the input (what distillation needs), at
 * 1 and 2 threads; the quantum LeNet split into its classical part and its
 * quantum layer (timed alone as a one-layer model on the 64 features).
 *
 *   bench-model [--batch N] [--reps R] [--threads 1,2] [--models DIR]
 *               [--blas-core auto|keep]
 *
 * Prints the best of R repetitions (after one warm-up) in seconds per batch,
 * and the peak resident set size.
 *
 * OpenBLAS 0.3.21 does not recognise recent AMD EPYC (Zen 4/5) and falls
 * back to its Haswell (AVX2) kernels, about 3x slower on these GEMM shapes.
 * Its kernel choice is made from OPENBLAS_CORETYPE when the library loads,
 * so with --blas-core auto (the default) the program re-executes itself
 * with OPENBLAS_CORETYPE=SkylakeX when the CPU has AVX-512 (F, DQ, BW, VL)
 * and the variable is unset. `keep` measures whatever OpenBLAS picked.
 */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "qd_buildconf.h"
#include "qdistill/config.h"
#include "qdistill/model.h"
#include "qdistill/registry.h"

/* OpenBLAS's own controls (not in cblas.h of every vendor). */
void openblas_set_num_threads(int n);
char *openblas_get_corename(void);

/* Re-run with OPENBLAS_CORETYPE=SkylakeX on AVX-512 machines (see above). */
static void pick_blas_core(char **argv)
{
    if (getenv("OPENBLAS_CORETYPE"))
        return;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") ||
        !__builtin_cpu_supports("avx512dq") ||
        !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl"))
        return;
    if (setenv("OPENBLAS_CORETYPE", "SkylakeX", 1) != 0)
        return;
    execv("/proc/self/exe", argv);
    /* exec failed: carry on with the kernels already loaded */
    unsetenv("OPENBLAS_CORETYPE");
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static long peak_rss_mib(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_maxrss / 1024;
}

typedef struct bench {
    qd_model *m;
    double *params, *g, *gx, *x;
    int32_t *y;
    size_t batch;
} bench;

enum { T_FWD, T_BWD_P, T_BWD_PX, T_N };

static int run_once(bench *b, int what, qd_error *err)
{
    double loss;
    switch (what) {
    case T_FWD:
        return qd_model_loss_grad(b->m, b->params, b->batch, b->x, b->y,
                                  &loss, NULL, NULL, NULL, err);
    case T_BWD_P:
        return qd_model_loss_grad(b->m, b->params, b->batch, b->x, b->y,
                                  &loss, b->g, NULL, NULL, err);
    default:
        return qd_model_loss_grad(b->m, b->params, b->batch, b->x, b->y,
                                  &loss, b->g, b->gx, NULL, err);
    }
}

/* Best wall time of reps runs, and the CPU time (all threads) of that run:
 * on a machine shared with other work the wall time of a run that was never
 * preempted is the honest number, and CPU time shows how close we came. */
static int time_all(bench *b, int reps, double best[T_N], double cpu[T_N],
                    qd_error *err)
{
    for (int w = 0; w < T_N; w++) {
        int rc = run_once(b, w, err);   /* warm-up: buffers, caches */
        if (rc)
            return rc;
        best[w] = 1e30;
        for (int r = 0; r < reps; r++) {
            double c0 = cpu_now(), t0 = now();
            if ((rc = run_once(b, w, err)))
                return rc;
            double dt = now() - t0, dc = cpu_now() - c0;
            if (dt < best[w]) {
                best[w] = dt;
                cpu[w] = dc;
            }
        }
    }
    return QD_OK;
}

static int setup(bench *b, const qd_node *section, const qd_registry *reg,
                 size_t c, size_t h, size_t w, size_t classes, size_t batch,
                 qd_error *err)
{
    memset(b, 0, sizeof *b);
    qd_model_opts o;
    memset(&o, 0, sizeof o);
    o.channels = c, o.height = h, o.width = w, o.classes = classes;
    o.seed = 1;
    o.threads = omp_get_max_threads();
    int rc = qd_model_create(section, reg, &o, &b->m, err);
    if (rc)
        return rc;
    size_t P = qd_model_n_params(b->m), S = c * h * w;
    b->batch = batch;
    b->params = malloc(P * sizeof *b->params);
    b->g = malloc(P * sizeof *b->g);
    b->gx = malloc(batch * S * sizeof *b->gx);
    b->x = malloc(batch * S * sizeof *b->x);
    b->y = malloc(batch * sizeof *b->y);
    if (!b->params || !b->g || !b->gx || !b->x || !b->y)
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    qd_rng rng;
    qd_rng_seed(&rng, 42, 1);
    if ((rc = qd_model_init_params(b->m, &rng, b->params, err)))
        return rc;
    /* roughly MNIST-normalised pixel statistics */
    for (size_t i = 0; i < batch * S; i++)
        b->x[i] = -0.42 + 1.0 * qd_rng_normal(&rng);
    for (size_t i = 0; i < batch; i++)
        b->y[i] = (int32_t)qd_rng_bounded(&rng, (uint32_t)classes);
    return QD_OK;
}

static void teardown(bench *b)
{
    qd_model_destroy(b->m);
    free(b->params);
    free(b->g);
    free(b->gx);
    free(b->x);
    free(b->y);
}

/* A one-layer model holding the quantum layer `q` of a model file. */
static int quantum_only(const qd_node *root, qd_config **out, qd_error *err)
{
    const qd_node *q = qd_node_path(root, "layers.q");
    if (!q)
        return qd_error_set(err, QD_ERR_INVALID, "no layer 'q' in the model");
    char *y = qd_config_to_yaml(q);
    if (!y)
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    size_t n = strlen(y), cap = 2 * n + 64, len = 0;
    char *text = malloc(cap);
    if (!text) {
        free(y);
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    }
    len += (size_t)snprintf(text, cap, "layers:\n  - ");
    for (size_t i = 0; i < n; i++) {
        text[len++] = y[i];
        if (y[i] == '\n' && i + 1 < n) {
            memcpy(text + len, "    ", 4);
            len += 4;
        }
    }
    text[len] = '\0';
    free(y);
    int rc = qd_config_load_string(text, len, "<quantum layer>", NULL, out,
                                   err);
    free(text);
    return rc;
}

static void row(const char *what, int threads, const double t[T_N],
                const double c[T_N])
{
    printf("| %-22s | %d | %7.4f (%7.4f) | %7.4f (%7.4f) | %7.4f (%7.4f) |\n",
           what, threads, t[T_FWD], c[T_FWD], t[T_BWD_P], c[T_BWD_P],
           t[T_BWD_PX], c[T_BWD_PX]);
}

int main(int argc, char **argv)
{
    size_t batch = 1024;
    int reps = 5;
    const char *threads = "1,2";
    const char *dir = QD_SOURCE_ROOT "/experiments/models";
    int auto_core = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--batch") && i + 1 < argc)
            batch = (size_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = argv[++i];
        else if (!strcmp(argv[i], "--models") && i + 1 < argc)
            dir = argv[++i];
        else if (!strcmp(argv[i], "--blas-core") && i + 1 < argc)
            auto_core = !strcmp(argv[++i], "auto");
        else {
            fprintf(stderr, "usage: bench-model [--batch N] [--reps R] "
                            "[--threads 1,2] [--models DIR] "
                            "[--blas-core auto|keep]\n");
            return 2;
        }
    }
    if (auto_core)
        pick_blas_core(argv);
    if (batch == 0 || reps < 1) {
        fprintf(stderr, "bench-model: batch and reps must be >= 1\n");
        return 2;
    }
    qd_error err = {0};
    qd_registry *reg = NULL;
    char *problems = NULL;
    if (qd_registry_create(&reg, &err) ||
        qd_registry_load_default(reg, NULL, 0, &problems, &err)) {
        fprintf(stderr, "bench-model: %s\n", err.msg);
        return 1;
    }
    free(problems);
    char p_lenet[4096], p_qlenet[4096];
    snprintf(p_lenet, sizeof p_lenet, "%s/lenet.yaml", dir);
    snprintf(p_qlenet, sizeof p_qlenet, "%s/quantum-lenet.yaml", dir);
    qd_config *c_lenet = NULL, *c_qlenet = NULL, *c_q = NULL;
    if (qd_config_load(p_lenet, NULL, &c_lenet, &err) ||
        qd_config_load(p_qlenet, NULL, &c_qlenet, &err) ||
        quantum_only(qd_config_root(c_qlenet), &c_q, &err)) {
        fprintf(stderr, "bench-model: %s\n", err.msg);
        return 1;
    }
    printf("batch %zu MNIST-shaped images (1 x 28 x 28), best of %d, "
           "seconds per batch (CPU seconds of all threads in parentheses);\n"
           "OpenBLAS kernels: %s\n\n", batch, reps,
           openblas_get_corename());
    printf("| %-22s | T | %-17s | %-17s | %-17s |\n", "model",
           "forward", "fwd+bwd params", "fwd+bwd params+x");
    printf("|%s|---|%s|%s|%s|\n", "------------------------",
           "-------------------", "-------------------",
           "-------------------");
    int rc = 0;
    for (const char *t = threads; *t && !rc;) {
        int nt = atoi(t);
        if (nt < 1)
            nt = 1;
        omp_set_num_threads(nt);
        openblas_set_num_threads(nt);
        bench b;
        double tl[T_N], tq[T_N], tqq[T_N], tc[T_N];
        double cl[T_N], cq[T_N], cqq[T_N], cc[T_N];
        rc = setup(&b, qd_config_root(c_lenet), reg, 1, 28, 28, 10, batch,
                   &err) ||
             time_all(&b, reps, tl, cl, &err);
        teardown(&b);
        if (!rc) {
            rc = setup(&b, qd_config_root(c_qlenet), reg, 1, 28, 28, 10,
                       batch, &err) ||
                 time_all(&b, reps, tq, cq, &err);
            teardown(&b);
        }
        if (!rc) {
            /* the quantum layer alone: 64 features in, 6 expectations out */
            rc = setup(&b, qd_config_root(c_q), reg, 64, 1, 1, 6, batch,
                       &err) ||
                 time_all(&b, reps, tqq, cqq, &err);
            teardown(&b);
        }
        if (rc)
            break;
        for (int w = 0; w < T_N; w++) {
            tc[w] = tq[w] - tqq[w];
            cc[w] = cq[w] - cqq[w];
        }
        row("LeNet", nt, tl, cl);
        row("quantum LeNet", nt, tq, cq);
        row("  classical part", nt, tc, cc);
        row("  quantum layer alone", nt, tqq, cqq);
        while (*t && *t != ',')
            t++;
        if (*t == ',')
            t++;
    }
    if (rc) {
        fprintf(stderr, "bench-model: %s\n", err.msg);
        return 1;
    }
    printf("\npeak RSS %ld MiB\n", peak_rss_mib());
    qd_config_destroy(c_q);
    qd_config_destroy(c_lenet);
    qd_config_destroy(c_qlenet);
    qd_registry_destroy(reg);
    return 0;
}
