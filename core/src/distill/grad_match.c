/*
 * grad_match.c — the gradient-matching objective and its image gradient,
 * see qdistill/grad_match.h.
 *
 * The image gradient needs d/dx_syn of D(g_syn(x_syn)): by the chain rule
 * v . d g_syn / dx_syn with v = dD/dg_syn, which is the mixed second
 * derivative d/dx (v . grad_w CE) that qd_fd_second_order computes from two
 * first-order gradients at w +- e v. So one matching step costs, per class,
 * one gradient on the real batch and four passes on the (small) synthetic
 * batch, whatever the model.
 */
#include "qdistill/grad_match.h"
#include "qdistill/distill.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A contiguous range of the parameter vector the layerwise distance splits
 * into `rows` equal rows. */
typedef struct gm_seg {
    size_t offset, count, rows;
} gm_seg;

struct qd_grad_match {
    qd_model *m;
    int distance;
    size_t n_params, in_size;
    size_t n_blocks;
    size_t *block_rows;        /* per parameter block, 0 = left out */
    gm_seg *segs;
    size_t n_segs;
    double *g_real, *g_syn, *v;
    int has_target;
    double *xa, *xv;           /* augmented batch, its second-order product */
    size_t x_cap;              /* images the two buffers hold */
};

static int is_one_dim(const qd_param_block *b)
{
    return strcmp(b->what, "bias") == 0 || strcmp(b->what, "alpha") == 0;
}

/* Output rows of weight block i: the size of the same layer's bias block,
 * else the layer's output size when it divides the block, else 1. */
static size_t weight_rows(const qd_model *m, size_t i)
{
    const qd_param_block *b = qd_model_block(m, i);
    const size_t nb = qd_model_n_blocks(m);
    for (size_t j = 0; j < nb; j++) {
        const qd_param_block *o = qd_model_block(m, j);
        if (j != i && strcmp(o->layer, b->layer) == 0 &&
            strcmp(o->what, "bias") == 0 && o->count > 0 &&
            b->count % o->count == 0)
            return o->count;
    }
    size_t out = qd_model_layer_size(m, b->layer);
    if (out > 0 && b->count % out == 0)
        return out;
    return 1;
}

int qd_grad_match_create(qd_model *m, int distance, qd_grad_match **out,
                         qd_error *err)
{
    if (!out || !m)
        return qd_error_set(err, QD_ERR_INVALID, "grad_match: NULL argument");
    *out = NULL;
    if (distance != QD_GM_LAYERWISE && distance != QD_GM_MSE &&
        distance != QD_GM_COSINE)
        return qd_error_set(err, QD_ERR_INVALID,
                            "grad_match: unknown distance %d (layerwise, mse "
                            "or cosine)", distance);
    qd_grad_match *g = calloc(1, sizeof *g);
    if (!g)
        return qd_error_set(err, QD_ERR_NOMEM, "grad_match: out of memory");
    g->m = m;
    g->distance = distance;
    g->n_params = qd_model_n_params(m);
    g->in_size = qd_model_input_size(m);
    g->n_blocks = qd_model_n_blocks(m);
    g->block_rows = calloc(g->n_blocks ? g->n_blocks : 1, sizeof *g->block_rows);
    g->segs = calloc(g->n_blocks ? g->n_blocks : 1, sizeof *g->segs);
    g->g_real = calloc(g->n_params ? g->n_params : 1, sizeof *g->g_real);
    g->g_syn = calloc(g->n_params ? g->n_params : 1, sizeof *g->g_syn);
    g->v = calloc(g->n_params ? g->n_params : 1, sizeof *g->v);
    if (!g->block_rows || !g->segs || !g->g_real || !g->g_syn || !g->v) {
        qd_grad_match_destroy(g);
        return qd_error_set(err, QD_ERR_NOMEM, "grad_match: out of memory");
    }
    for (size_t i = 0; i < g->n_blocks; i++) {
        const qd_param_block *b = qd_model_block(m, i);
        size_t rows = 0;
        if (b->count == 0 || is_one_dim(b))
            rows = 0;
        else if (strcmp(b->what, "weight") == 0)
            rows = weight_rows(m, i);
        else
            rows = 1;   /* circuit, observable: the whole block */
        g->block_rows[i] = rows;
        if (rows > 0)
            g->segs[g->n_segs++] = (gm_seg){b->offset, b->count, rows};
    }
    *out = g;
    return QD_OK;
}

void qd_grad_match_destroy(qd_grad_match *g)
{
    if (!g)
        return;
    free(g->block_rows);
    free(g->segs);
    free(g->g_real);
    free(g->g_syn);
    free(g->v);
    free(g->xa);
    free(g->xv);
    free(g);
}

size_t qd_grad_match_block_rows(const qd_grad_match *g, size_t i)
{
    return g && i < g->n_blocks ? g->block_rows[i] : 0;
}

/* 1 - <a, b> / (|a||b| + eps) over n entries; its gradient in a into d. */
static double cos_dist(const double *a, const double *b, size_t n, double *d)
{
    double s = 0.0, aa = 0.0, bb = 0.0;
    for (size_t i = 0; i < n; i++) {
        s += a[i] * b[i];
        aa += a[i] * a[i];
        bb += b[i] * b[i];
    }
    const double na = sqrt(aa), nb = sqrt(bb), N = na * nb + QD_GM_COS_EPS;
    if (d) {
        /* d/da: -b / N + s |b| a / (|a| N^2); at a = 0 the second term's
         * limit direction is undefined and its size 0, so it is dropped */
        const double c2 = na > 0.0 ? s * nb / (na * N * N) : 0.0;
        for (size_t i = 0; i < n; i++)
            d[i] = -b[i] / N + c2 * a[i];
    }
    return 1.0 - s / N;
}

double qd_grad_match_distance(const qd_grad_match *g, const double *a,
                              const double *b, double *d_a)
{
    const size_t n = g->n_params;
    double D = 0.0;
    switch (g->distance) {
    case QD_GM_MSE:
        for (size_t i = 0; i < n; i++) {
            double r = a[i] - b[i];
            D += r * r;
            if (d_a)
                d_a[i] = 2.0 * r;
        }
        return D;
    case QD_GM_COSINE:
        return cos_dist(a, b, n, d_a);
    default:
        if (d_a)
            memset(d_a, 0, n * sizeof *d_a);   /* left-out blocks: 0 */
        for (size_t k = 0; k < g->n_segs; k++) {
            const gm_seg *s = &g->segs[k];
            const size_t cols = s->count / s->rows;
            for (size_t r = 0; r < s->rows; r++) {
                size_t o = s->offset + r * cols;
                D += cos_dist(a + o, b + o, cols, d_a ? d_a + o : NULL);
            }
        }
        return D;
    }
}

static int reserve_x(qd_grad_match *g, size_t n, qd_error *err)
{
    if (n <= g->x_cap)
        return QD_OK;
    double *a = malloc(n * g->in_size * sizeof *a);
    double *b = malloc(n * g->in_size * sizeof *b);
    if (!a || !b) {
        free(a);
        free(b);
        return qd_error_set(err, QD_ERR_NOMEM,
                            "grad_match: out of memory for a batch of %zu", n);
    }
    free(g->xa);
    free(g->xv);
    g->xa = a;
    g->xv = b;
    g->x_cap = n;
    return QD_OK;
}

static int all_finite(const double *v, size_t n)
{
    int ok = 1;
    for (size_t i = 0; i < n; i++)
        ok &= isfinite(v[i]) != 0;
    return ok;
}

/* x or its augmented copy (in g->xa). */
static int augmented(qd_grad_match *g, qd_augment *aug, uint64_t seed,
                     size_t n, const double *x, const double **out,
                     qd_error *err)
{
    if (!aug || qd_augment_is_identity(aug)) {
        *out = x;
        return QD_OK;
    }
    int rc = reserve_x(g, n, err);
    if (!rc)
        rc = qd_augment_apply(aug, seed, n, x, g->xa, err);
    *out = g->xa;
    return rc;
}

int qd_grad_match_target(qd_grad_match *g, const double *w, size_t n,
                         const double *x, const int32_t *y, qd_augment *aug,
                         uint64_t seed, double *loss, qd_error *err)
{
    if (!g || !w || !x || !y || n == 0)
        return qd_error_set(err, QD_ERR_INVALID,
                            "grad_match target: NULL argument or empty batch");
    g->has_target = 0;
    const double *xr;
    double l;
    int rc = augmented(g, aug, seed, n, x, &xr, err);
    if (rc == QD_OK)
        rc = qd_model_loss_grad(g->m, w, n, xr, y, &l, g->g_real, NULL, NULL,
                                err);
    if (rc)
        return qd_error_prefix(err, "gradient of the real batch");
    if (!isfinite(l) || !all_finite(g->g_real, g->n_params))
        return qd_error_set(err, QD_ERR_NUMERIC,
                            "gradient of the real batch is not finite (loss "
                            "%g)", l);
    if (loss)
        *loss = l;
    g->has_target = 1;
    return QD_OK;
}

int qd_grad_match_loss(qd_grad_match *g, const double *w, size_t n,
                       const double *x, const int32_t *y, qd_augment *aug,
                       uint64_t seed, double eps_rel, double *dist,
                       double *g_x, qd_error *err)
{
    if (!g || !w || !x || !y || !dist || n == 0)
        return qd_error_set(err, QD_ERR_INVALID,
                            "grad_match loss: NULL argument or empty batch");
    if (!g->has_target)
        return qd_error_set(err, QD_ERR_INVALID,
                            "grad_match loss: no target gradient was set");
    const double *xs;
    int rc = augmented(g, aug, seed, n, x, &xs, err);
    if (rc == QD_OK)
        rc = qd_model_loss_grad(g->m, w, n, xs, y, NULL, g->g_syn, NULL, NULL,
                                err);
    if (rc)
        return qd_error_prefix(err, "gradient of the synthetic batch");
    if (!all_finite(g->g_syn, g->n_params))
        return qd_error_set(err, QD_ERR_NUMERIC,
                            "gradient of the synthetic batch is not finite");
    const double D = qd_grad_match_distance(g, g->g_syn, g->g_real,
                                            g_x ? g->v : NULL);
    if (!isfinite(D))
        return qd_error_set(err, QD_ERR_NUMERIC,
                            "matching loss is not finite (%g)", D);
    *dist = D;
    if (!g_x)
        return QD_OK;
    if ((rc = reserve_x(g, n, err)))
        return rc;
    const int aug_on = aug && !qd_augment_is_identity(aug);
    /* xs may be g->xa; xv is separate, so the product can go to the output
     * directly when there is no augmentation to transpose. */
    double *xv = aug_on ? g->xv : g_x;
    if ((rc = qd_fd_second_order(g->m, w, n, xs, y, g->v, eps_rel, NULL, xv,
                                 err)))
        return qd_error_prefix(err, "image gradient of the matching loss");
    if (aug_on && (rc = qd_augment_backward(aug, seed, n, xv, g_x, err)))
        return rc;
    if (!all_finite(g_x, n * g->in_size))
        return qd_error_set(err, QD_ERR_NUMERIC,
                            "image gradient of the matching loss is not "
                            "finite");
    return QD_OK;
}
