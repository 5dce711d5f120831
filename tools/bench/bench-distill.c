/* bench-distill: seconds per outer iteration of the performance_matching
 * distiller on MNIST-shaped random data (1x28x28, 10 classes, real batch
 * 1024), for the quantum LeNet and the classical LeNet.
 *
 *   bench-distill [--model FILE]... [--reps N] [--warmup N] [--threads N]
 *                 [--n-train N] [--case random|fixed|all] [--breakdown]
 *
 * Cases (the speed targets):
 *   random  model_init random, 10 steps x 3 epochs x 1 image/class
 *           (100 images, 30 inner updates)             target <= 0.15 s
 *   fixed   model_init fixed, 1 step x 3 epochs (10 images, 3 updates)
 *                                                      target <= 0.05 s
 * Prints the median and min over --reps timed iterations after --warmup
 * untimed ones, and the peak RSS. --breakdown also times the phases of an
 * iteration (init, unroll forward, outer batch, unroll backward) through
 * the core API. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "qd_buildconf.h"
#include "qdistill/config.h"
#include "qdistill/distill.h"
#include "qdistill/experiment.h"
#include "qdistill/registry.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;   /* Linux: KiB */
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int die(const char *what, const qd_error *e)
{
    fprintf(stderr, "bench-distill: %s: %s\n", what, e->msg);
    return 1;
}

typedef struct bench_case {
    const char *name;
    const char *cfg;
    double target;
} bench_case;

static const bench_case cases[] = {
    {"random", "{plugin: performance_matching, model_init: random, steps: 10, "
               "epochs: 3, images_per_class: 1, batch_size: 1024}", 0.15},
    {"fixed", "{plugin: performance_matching, model_init: fixed, steps: 1, "
              "epochs: 3, images_per_class: 1, batch_size: 1024}", 0.05},
};

static int run_case(const qd_registry *reg, qd_model *m, const double *w0,
                    const qd_dataset *tr, const bench_case *bc, int reps,
                    int warmup, int threads, const char *model_name)
{
    qd_error e = {0};
    qd_config *cfg = NULL;
    if (qd_config_load_string(bc->cfg, strlen(bc->cfg), "<bench>", NULL, &cfg,
                              &e))
        return die("config", &e);
    qd_instance_opts o = {0};
    o.seed = 1;
    o.stream = "distill";
    o.threads = threads;
    qd_instance *inst = NULL;
    if (qd_instance_create(reg, QD_KIND_DISTILLER, qd_config_root(cfg), &o,
                           &inst, &e)) {
        qd_config_destroy(cfg);
        return die("distiller", &e);
    }
    const qd_distiller_vt *vt = qd_instance_vtable(inst);
    void *self = qd_instance_self(inst);
    qd_rng rng, irng;
    qd_rng_derive(&rng, 1, "distill");
    qd_rng_derive(&irng, 1, "model.init");
    qd_distill_ctx ctx = {0};
    ctx.struct_size = sizeof ctx;
    ctx.model = m;
    ctx.train = tr;
    ctx.init_params = w0;
    ctx.n_params = qd_model_n_params(m);
    ctx.rng = &rng;
    ctx.init_rng = &irng;
    ctx.threads = threads;
    int rc = vt->start(self, &ctx);
    double *t = calloc((size_t)reps, sizeof *t);
    qd_distill_metrics mt = {0};
    for (int it = 0; rc == QD_OK && it < warmup + reps; it++) {
        double t0 = now();
        rc = vt->iterate(self, &ctx, (uint64_t)it, &mt);
        if (it >= warmup)
            t[it - warmup] = now() - t0;
    }
    if (rc) {
        qd_instance_error(inst, rc, &e);
        free(t);
        qd_instance_destroy(inst);
        qd_config_destroy(cfg);
        return die("iterate", &e);
    }
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    double med = reps % 2 ? t[reps / 2] : 0.5 * (t[reps / 2 - 1] + t[reps / 2]);
    printf("%-16s %-7s median %.4f s  min %.4f s  (target %.2f s%s)  "
           "loss %.4f  peak RSS %.0f MB\n", model_name, bc->name, med, t[0],
           bc->target, med <= bc->target ? "" : ", MISSED", mt.loss,
           peak_rss_mb());
    fflush(stdout);
    free(t);
    qd_instance_destroy(inst);
    qd_config_destroy(cfg);
    return 0;
}

/* Where one outer iteration goes: the same work as the plugin's iterate,
 * phase by phase, through the core API (median over reps, wall seconds). */
static int breakdown(qd_model *m, const double *w0, const qd_dataset *tr,
                     size_t steps, size_t epochs, int random_init, int reps,
                     const char *model_name)
{
    const size_t n = qd_model_n_params(m), in = 784, per = 10, B = 1024;
    const size_t T = steps * epochs;
    qd_error e = {0};
    qd_unroll *u = NULL;
    if (qd_unroll_create(m, T, per, &u, &e))
        return die("unroll", &e);
    double *xs = malloc(steps * per * in * sizeof *xs);
    double *gxs = calloc(steps * per * in, sizeof *gxs);
    double *w = malloc(n * sizeof *w), *gw = malloc(n * sizeof *gw);
    double *lrs = malloc(T * sizeof *lrs), *glr = calloc(T, sizeof *glr);
    int32_t *ys = malloc(steps * per * sizeof *ys);
    qd_rng rng;
    qd_rng_seed(&rng, 5, 1);
    for (size_t i = 0; i < steps * per * in; i++)
        xs[i] = qd_rng_normal(&rng);
    for (size_t i = 0; i < steps * per; i++)
        ys[i] = (int32_t)(i % 10);
    for (size_t t = 0; t < T; t++)
        lrs[t] = 0.02;
    memcpy(w, w0, n * sizeof *w);
    double *ph[4];
    for (int k = 0; k < 4; k++)
        ph[k] = calloc((size_t)reps + 1, sizeof(double));
    for (int r = 0; r <= reps; r++) {   /* r = 0 is the warm-up */
        double t0 = now();
        if (random_init && qd_model_init_params(m, &rng, w, &e))
            return die("init", &e);
        double t1 = now();
        const double *wT;
        if (qd_unroll_forward(u, w, steps, per, xs, ys, lrs, &wT, &e))
            return die("forward", &e);
        double t2 = now(), L;
        if (qd_model_loss_grad(m, wT, B, tr->images, tr->labels, &L, gw, NULL,
                               NULL, &e))
            return die("outer", &e);
        double t3 = now();
        if (qd_unroll_backward(u, gw, gxs, glr, NULL, 0.0, &e))
            return die("backward", &e);
        double t4 = now();
        ph[0][r] = t1 - t0;
        ph[1][r] = t2 - t1;
        ph[2][r] = t3 - t2;
        ph[3][r] = t4 - t3;
    }
    static const char *const names[4] = {"init", "unroll fwd", "outer 1024",
                                          "unroll bwd"};
    printf("  breakdown %s, %zu steps x %zu epochs (median s):", model_name,
           steps, epochs);
    for (int k = 0; k < 4; k++) {
        qsort(ph[k] + 1, (size_t)reps, sizeof(double), cmp_double);
        printf("  %s %.4f", names[k], ph[k][1 + reps / 2]);
        free(ph[k]);
    }
    printf("\n");
    qd_unroll_destroy(u);
    free(xs);
    free(gxs);
    free(w);
    free(gw);
    free(lrs);
    free(glr);
    free(ys);
    return 0;
}

int main(int argc, char **argv)
{
    const char *models[8];
    int n_models = 0, reps = 10, warmup = 2, threads = 2;
    size_t n_train = 8192;
    const char *which = "all";
    int do_breakdown = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--breakdown")) {
            do_breakdown = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "bench-distill: %s needs a value\n", a);
            return 2;
        }
        if (!strcmp(a, "--model") && n_models < 8)
            models[n_models++] = v;
        else if (!strcmp(a, "--reps"))
            reps = atoi(v);
        else if (!strcmp(a, "--warmup"))
            warmup = atoi(v);
        else if (!strcmp(a, "--threads"))
            threads = atoi(v);
        else if (!strcmp(a, "--n-train"))
            n_train = (size_t)atol(v);
        else if (!strcmp(a, "--case"))
            which = v;
        else {
            fprintf(stderr, "usage: bench-distill [--model FILE]... [--reps N] "
                            "[--warmup N] [--threads N] [--n-train N] "
                            "[--case random|fixed|all] [--breakdown]\n");
            return 2;
        }
        i++;
    }
    if (reps < 1 || warmup < 0 || threads < 1 || n_train < 1024) {
        fprintf(stderr, "bench-distill: need reps >= 1, warmup >= 0, "
                        "threads >= 1, n-train >= 1024\n");
        return 2;
    }
    if (!n_models) {
        models[n_models++] = QD_SOURCE_ROOT "/experiments/models/quantum-lenet.yaml";
        models[n_models++] = QD_SOURCE_ROOT "/experiments/models/lenet.yaml";
    }
    qd_set_threads(threads);
    qd_error e = {0};
    qd_registry *reg = NULL;
    char *problems = NULL;
    if (qd_registry_create(&reg, &e) ||
        qd_registry_load_default(reg, NULL, 0, &problems, &e))
        return die("plugins", &e);
    free(problems);

    /* MNIST-shaped random data: N(0, 1) pixels, balanced labels */
    qd_dataset tr;
    if (qd_dataset_alloc(&tr, n_train, 1, 28, 28, 10, &e))
        return die("data", &e);
    qd_rng rng;
    qd_rng_seed(&rng, 42, 1);
    for (size_t i = 0; i < n_train * 784; i++)
        tr.images[i] = qd_rng_normal(&rng);
    for (size_t i = 0; i < n_train; i++)
        tr.labels[i] = (int32_t)(i % 10);
    printf("bench-distill: %d threads, %zu training images, %d warm-up + %d "
           "timed iterations; RSS with data %.0f MB\n", threads, n_train,
           warmup, reps, peak_rss_mb());

    int status = 0;
    for (int k = 0; k < n_models && !status; k++) {
        qd_config *mc = NULL;
        if (qd_config_load(models[k], NULL, &mc, &e))
            return die(models[k], &e);
        qd_model_opts mo = {0};
        mo.channels = 1;
        mo.height = 28;
        mo.width = 28;
        mo.classes = 10;
        mo.seed = 1;
        mo.threads = threads;
        qd_model *m = NULL;
        if (qd_model_create(qd_config_root(mc), reg, &mo, &m, &e))
            return die(models[k], &e);
        const size_t n = qd_model_n_params(m);
        double *w0 = malloc(n * sizeof *w0);
        qd_rng ir;
        qd_rng_seed(&ir, 3, 1);
        if (!w0 || qd_model_init_params(m, &ir, w0, &e))
            return die("init", &e);
        const char *base = strrchr(models[k], '/');
        base = base ? base + 1 : models[k];
        printf("%s: %zu parameters\n", base, n);
        for (size_t c = 0; c < sizeof cases / sizeof cases[0] && !status; c++)
            if (!strcmp(which, "all") || !strcmp(which, cases[c].name)) {
                status = run_case(reg, m, w0, &tr, &cases[c], reps, warmup,
                                  threads, base);
                if (!status && do_breakdown)
                    status = c == 0 ? breakdown(m, w0, &tr, 10, 3, 1, reps, base)
                                    : breakdown(m, w0, &tr, 1, 3, 0, reps, base);
            }
        free(w0);
        qd_model_destroy(m);
        qd_config_destroy(mc);
    }
    qd_dataset_free(&tr);
    qd_registry_destroy(reg);
    return status;
}
