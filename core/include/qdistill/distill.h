/*
 * qdistill/distill.h — what a distiller plugin receives and returns, and the
 * shared second-order machinery distillers build on.
 *
 * The host runs the outer loop (qd_distiller_vt.iterate once per outer
 * iteration), checkpoints the distiller's state (save/restore), logs metrics,
 * keeps the best synthetic set by validation accuracy, and evaluates the
 * result. A distiller only has to do one outer iteration well.
 */
#ifndef QDISTILL_DISTILL_H
#define QDISTILL_DISTILL_H

#include "blob.h"
#include "data.h"
#include "model.h"
#include "plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qd_init_mode {
    QD_INIT_FIXED = 0,    /* one initialisation, shared by distillation and evaluation */
    QD_INIT_RANDOM = 1    /* a fresh random initialisation each time */
} qd_init_mode;

/* Everything a distiller works with; owned by the host. */
typedef struct qd_distill_ctx {
    uint32_t struct_size;
    qd_model *model;
    const qd_dataset *train;     /* real training set (validation removed) */
    const qd_dataset *val;       /* held-out split, n == 0 when none */
    const double *init_params;   /* the fixed initialisation (stream "model.init") */
    size_t n_params;
    qd_rng *rng;                 /* the distiller's stream; the host checkpoints it */
    qd_rng *init_rng;            /* stream for fresh random initialisations */
    int threads;
    /* The run directory (NULL when there is none, e.g. in tests): where a
     * distiller keeps expensive derived files that must survive a resume
     * (trajectory matching's expert trajectories). Appended field: read it
     * only when struct_size covers it. */
    const char *run_dir;
} qd_distill_ctx;

/* A synthetic set. Images are grouped by inner step: step s holds
 * per_step images (classes x images_per_class, class-major) at
 * images + s * per_step * C*H*W. When n_lrs > 0, evaluation replays the
 * n_lrs = steps * epochs learned inner updates
 *     w <- w - lrs[t] * grad loss(step t mod steps, w);
 * when n_lrs == 0 (selection and matching methods), evaluation trains on the
 * whole set with the evaluate section's recipe. */
typedef struct qd_synset {
    size_t steps, epochs, per_step;
    size_t channels, height, width, classes;
    double *images;
    int32_t *labels;
    double *lrs;
    size_t n_lrs;
    int init_mode;               /* qd_init_mode the set was distilled for */
} qd_synset;

QD_EXPORT int qd_synset_alloc(qd_synset *s, size_t steps, size_t epochs,
                              size_t per_step, size_t channels, size_t height,
                              size_t width, size_t classes, size_t n_lrs,
                              qd_error *err);
QD_EXPORT void qd_synset_free(qd_synset *s);
QD_EXPORT int qd_synset_copy(const qd_synset *src, qd_synset *dst, qd_error *err);
static inline size_t qd_synset_count(const qd_synset *s) { return s->steps * s->per_step; }

/* The checks every distiller's start() makes, with one message each: the
 * context is complete (struct_size >= min_size, model, data, both streams),
 * the training set is non-empty and fits the model's input and classes, the
 * fixed initialisation is present when fixed_init, and the set is indexable
 * by 32 bits. Returns QD_OK or host->error()'s code. */
QD_EXPORT int qd_distill_check_ctx(const qd_host *h, const qd_distill_ctx *ctx,
                                   size_t min_size, int fixed_init);

/* ------------------------------------------------------------------------
 * Unrolled inner training and its exact meta-gradient (performance matching,
 * trajectory matching). Second-order products are central finite
 * differences of first-order gradients (see qd_fd_second_order).
 * ---------------------------------------------------------------------- */

typedef struct qd_unroll qd_unroll;

/* Workspace for T inner updates of a model with n params on batches of at
 * most `batch` images. */
QD_EXPORT int qd_unroll_create(qd_model *m, size_t T, size_t batch,
                               qd_unroll **out, qd_error *err);
QD_EXPORT void qd_unroll_destroy(qd_unroll *u);

/* Forward: w_0 = w0, w_{t+1} = w_t - lrs[t] * grad_w loss(x_t, y_t; w_t),
 * x_t = xs + (t mod steps) * per_step * input_size. Keeps every w_t and
 * inner gradient; xs and ys are borrowed (not copied) and must stay valid
 * and unchanged until qd_unroll_backward. Returns w_T (pointer into the
 * workspace). The loss must be deterministic (dropout off): the backward
 * pass re-evaluates gradients near each w_t. */
QD_EXPORT int qd_unroll_forward(qd_unroll *u, const double *w0, size_t steps,
                                size_t per_step, const double *xs,
                                const int32_t *ys, const double *lrs,
                                const double **w_final, qd_error *err);

/* Backward: given g_T = dL/dw_T, ADD dL/dxs (steps*per_step*input_size),
 * dL/dlrs (T) and write dL/dw0 (may be NULL). eps_rel sets the finite
 * difference step (0 = the default 1e-5, see qd_fd_second_order). */
QD_EXPORT int qd_unroll_backward(qd_unroll *u, const double *g_T,
                                 double *g_xs, double *g_lrs, double *g_w0,
                                 double eps_rel, qd_error *err);

/* Second-order products of loss(x, y; w) along v by central differences:
 *   hv = H_ww v                = (g_w(w + e v) - g_w(w - e v)) / 2e
 *   xv = d/dx (v . grad_w loss) = (g_x(w + e v) - g_x(w - e v)) / 2e
 * with e = eps_rel * (1 + |w|) / |v|. Either output may be NULL. On models
 * with relu / maxpool2d layers both gradients replay the pieces (ReLU masks,
 * argmaxes) of a forward at (w, x) (qd_model_set_pieces), so the products
 * are those of the locally linear model, as double backward computes them,
 * even when w +- e v crosses a kink. Leaves the model in QD_PIECES_LIVE. */
QD_EXPORT int qd_fd_second_order(qd_model *m, const double *w, size_t batch,
                                 const double *x, const int32_t *y,
                                 const double *v, double eps_rel, double *hv,
                                 double *xv, qd_error *err);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_DISTILL_H */
