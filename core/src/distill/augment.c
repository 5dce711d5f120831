/*
 * augment.c — differentiable siamese augmentation (DSA), see
 * qdistill/augment.h.
 *
 * A call first draws a plan (the ops to run and their parameters) from a
 * PCG32 stream seeded by the call's seed, so apply and backward with one seed
 * see the same plan. Spatial ops (crop, flip, scale, rotate, cutout) are
 * gathers: output pixel p = sum_k wt[p][k] * input[src[p][k]] with at most
 * four taps (bilinear), shared by every channel and image; their transpose is
 * the matching scatter. Colour ops mix channels and pixels of one image
 * through symmetric maps (identity plus averaging projectors), so their
 * transpose is the same map in reverse order, without the brightness offset.
 */
#include "qdistill/augment.h"
#include "qdistill/rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define AUG_PI 3.14159265358979323846
#define AUG_MAX_OPS 32
#define AUG_TAPS 4
/* Stream selector of the per-call generator (any odd-making constant). */
#define AUG_STREAM 0x64736161756755ULL

enum { OP_CROP, OP_FLIP, OP_SCALE, OP_ROTATE, OP_COLOR, OP_CUTOUT, OP_COUNT };
static const char *const op_names[OP_COUNT] = {"crop",  "flip",  "scale",
                                               "rotate", "color", "cutout"};

typedef struct drawn_op {
    int kind;
    double p[3];    /* scale: sx, sy; rotate: angle; color: b, s, c */
    long ip[2];     /* crop: shift along H, W; flip: 1 = flip; cutout: centre */
} drawn_op;

struct qd_augment {
    size_t C, H, W;
    char mode;
    qd_augment_params prm;
    int n_ops;                 /* 0: "none" */
    int ops[AUG_MAX_OPS];
    drawn_op plan[AUG_MAX_OPS];
    int n_plan;
    long *src;                 /* H*W*AUG_TAPS gather sources, -1 = none */
    double *wt;                /* matching weights */
    double *tmp;               /* ping-pong buffer for chained ops */
    size_t tmp_n;
};

static int parse_strategy(qd_augment *a, const char *strategy, qd_error *err)
{
    if (!strategy || !*strategy)
        return qd_error_set(err, QD_ERR_INVALID,
                            "augment: empty strategy (use \"none\" or ops from "
                            "crop, flip, scale, rotate, color, cutout joined by '_')");
    if (strcmp(strategy, "none") == 0) {
        a->n_ops = 0;
        return QD_OK;
    }
    const char *s = strategy;
    for (;;) {
        const char *e = strchr(s, '_');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        if (len == 0)
            return qd_error_set(err, QD_ERR_INVALID,
                                "augment: strategy \"%s\" has an empty op "
                                "(stray '_')", strategy);
        int kind = -1;
        for (int k = 0; k < OP_COUNT; k++)
            if (strlen(op_names[k]) == len && strncmp(s, op_names[k], len) == 0)
                kind = k;
        if (kind < 0)
            return qd_error_set(err, QD_ERR_INVALID,
                                "augment: unknown op \"%.*s\" in strategy \"%s\" "
                                "(valid: crop, flip, scale, rotate, color, cutout, "
                                "or \"none\" alone)", (int)len, s, strategy);
        if (a->n_ops == AUG_MAX_OPS)
            return qd_error_set(err, QD_ERR_INVALID,
                                "augment: strategy \"%s\" has more than %d ops",
                                strategy, AUG_MAX_OPS);
        a->ops[a->n_ops++] = kind;
        if (!e)
            break;
        s = e + 1;
    }
    return QD_OK;
}

void qd_augment_params_default(qd_augment_params *p)
{
    /* DSA ParamDiffAug (Zhao & Bilen 2021) */
    p->prob_flip = 0.5;
    p->ratio_scale = 1.2;
    p->ratio_rotate = 15.0;
    p->ratio_crop_pad = 0.125;
    p->ratio_cutout = 0.5;
    p->brightness = 1.0;
    p->saturation = 2.0;
    p->contrast = 0.5;
}

static int check_params(const qd_augment_params *p, qd_error *err)
{
    struct { const char *name; double v, lo, hi; } r[] = {
        {"prob_flip", p->prob_flip, 0.0, 1.0},
        {"ratio_scale", p->ratio_scale, 1.0, 100.0},
        {"ratio_rotate", p->ratio_rotate, 0.0, 180.0},
        {"ratio_crop_pad", p->ratio_crop_pad, 0.0, 1.0},
        {"ratio_cutout", p->ratio_cutout, 0.0, 1.0},
        {"brightness", p->brightness, 0.0, 1e6},
        {"saturation", p->saturation, 0.0, 1e6},
        {"contrast", p->contrast, 0.0, 1e6},
    };
    for (size_t i = 0; i < sizeof r / sizeof *r; i++)
        if (!(r[i].v >= r[i].lo && r[i].v <= r[i].hi))
            return qd_error_set(err, QD_ERR_INVALID,
                                "augment: %s must be in [%g, %g], got %g",
                                r[i].name, r[i].lo, r[i].hi, r[i].v);
    return QD_OK;
}

int qd_augment_create(const char *strategy, char mode, size_t channels,
                      size_t height, size_t width, qd_augment **out, qd_error *err)
{
    return qd_augment_create_ex(strategy, mode, NULL, channels, height, width,
                                out, err);
}

int qd_augment_create_ex(const char *strategy, char mode,
                         const qd_augment_params *prm, size_t channels,
                         size_t height, size_t width, qd_augment **out,
                         qd_error *err)
{
    if (!out)
        return qd_error_set(err, QD_ERR_INVALID, "augment: out is NULL");
    *out = NULL;
    if (mode != 'S' && mode != 'M')
        return qd_error_set(err, QD_ERR_INVALID,
                            "augment: mode must be 'S' (one op per call) or 'M' "
                            "(all ops), got '%c'", mode ? mode : '0');
    if (channels == 0 || height == 0 || width == 0)
        return qd_error_set(err, QD_ERR_INVALID,
                            "augment: image shape %zux%zux%zu has a zero extent",
                            channels, height, width);
    if (height > (size_t)1 << 20 || width > (size_t)1 << 20)
        return qd_error_set(err, QD_ERR_INVALID,
                            "augment: image %zux%zu too large", height, width);
    qd_augment_params def;
    qd_augment_params_default(&def);
    if (!prm)
        prm = &def;
    int rc0 = check_params(prm, err);
    if (rc0)
        return rc0;
    qd_augment *a = calloc(1, sizeof *a);
    if (!a)
        return qd_error_set(err, QD_ERR_NOMEM, "augment: out of memory");
    a->prm = *prm;
    a->C = channels;
    a->H = height;
    a->W = width;
    a->mode = mode;
    int rc = parse_strategy(a, strategy, err);
    if (rc) {
        free(a);
        return rc;
    }
    size_t hw = height * width;
    a->src = malloc(hw * AUG_TAPS * sizeof *a->src);
    a->wt = malloc(hw * AUG_TAPS * sizeof *a->wt);
    if (!a->src || !a->wt) {
        qd_augment_destroy(a);
        return qd_error_set(err, QD_ERR_NOMEM, "augment: out of memory");
    }
    *out = a;
    return QD_OK;
}

void qd_augment_destroy(qd_augment *a)
{
    if (!a)
        return;
    free(a->src);
    free(a->wt);
    free(a->tmp);
    free(a);
}

int qd_augment_is_identity(const qd_augment *a) { return a && a->n_ops == 0; }

/* ---- drawing a plan ---------------------------------------------------- */

static long uniform_int(qd_rng *r, long lo, long hi) /* inclusive range */
{
    return lo + (long)qd_rng_bounded(r, (uint32_t)(hi - lo + 1));
}

static void draw_op(const qd_augment *a, qd_rng *r, int kind, drawn_op *d)
{
    memset(d, 0, sizeof *d);
    d->kind = kind;
    switch (kind) {
    case OP_CROP: {
        /* DSA rand_crop: shift = int(size * ratio + 0.5), translation in
         * [-shift, shift]. */
        long sh = (long)((double)a->H * a->prm.ratio_crop_pad + 0.5);
        long sw = (long)((double)a->W * a->prm.ratio_crop_pad + 0.5);
        d->ip[0] = uniform_int(r, -sh, sh);
        d->ip[1] = uniform_int(r, -sw, sw);
        break;
    }
    case OP_FLIP:
        d->ip[0] = qd_rng_uniform(r) < a->prm.prob_flip;
        break;
    case OP_SCALE: {
        /* DSA rand_scale: factor in [1/ratio, ratio] per axis. */
        double lo = 1.0 / a->prm.ratio_scale, hi = a->prm.ratio_scale;
        d->p[0] = qd_rng_uniform(r) * (hi - lo) + lo;
        d->p[1] = qd_rng_uniform(r) * (hi - lo) + lo;
        break;
    }
    case OP_ROTATE:
        d->p[0] = (qd_rng_uniform(r) - 0.5) * 2.0 * a->prm.ratio_rotate / 180.0 *
                  AUG_PI;
        break;
    case OP_COLOR:
        d->p[0] = (qd_rng_uniform(r) - 0.5) * a->prm.brightness;
        d->p[1] = qd_rng_uniform(r) * a->prm.saturation;
        d->p[2] = qd_rng_uniform(r) + a->prm.contrast;
        break;
    case OP_CUTOUT: {
        /* DSA rand_cutout: size = int(extent * ratio + 0.5), centre drawn in
         * [0, extent + (1 - size % 2)). */
        long ch = (long)((double)a->H * a->prm.ratio_cutout + 0.5);
        long cw = (long)((double)a->W * a->prm.ratio_cutout + 0.5);
        d->ip[0] = uniform_int(r, 0, (long)a->H + (1 - ch % 2) - 1);
        d->ip[1] = uniform_int(r, 0, (long)a->W + (1 - cw % 2) - 1);
        break;
    }
    }
}

static void draw_plan(qd_augment *a, uint64_t seed)
{
    qd_rng r;
    qd_rng_seed(&r, seed, AUG_STREAM);
    a->n_plan = 0;
    if (a->n_ops == 0)
        return;
    if (a->mode == 'S') {
        int k = a->ops[qd_rng_bounded(&r, (uint32_t)a->n_ops)];
        draw_op(a, &r, k, &a->plan[a->n_plan++]);
    } else {
        for (int i = 0; i < a->n_ops; i++)
            draw_op(a, &r, a->ops[i], &a->plan[a->n_plan++]);
    }
}

size_t qd_augment_plan(qd_augment *a, uint64_t seed, qd_augment_step *steps,
                       size_t max)
{
    if (!a)
        return 0;
    draw_plan(a, seed);
    for (int i = 0; i < a->n_plan && (size_t)i < max; i++) {
        const drawn_op *d = &a->plan[i];
        qd_augment_step *s = &steps[i];
        s->op = op_names[d->kind];
        s->v[0] = s->v[1] = s->v[2] = 0.0;
        switch (d->kind) {
        case OP_CROP:
        case OP_CUTOUT:
            s->v[0] = (double)d->ip[0];
            s->v[1] = (double)d->ip[1];
            break;
        case OP_FLIP:
            s->v[0] = (double)d->ip[0];
            break;
        default:
            s->v[0] = d->p[0];
            s->v[1] = d->p[1];
            s->v[2] = d->p[2];
        }
    }
    return (size_t)a->n_plan;
}

/* ---- spatial ops as gathers -------------------------------------------- */

static void map_clear(qd_augment *a)
{
    size_t n = a->H * a->W * AUG_TAPS;
    for (size_t i = 0; i < n; i++) {
        a->src[i] = -1;
        a->wt[i] = 0.0;
    }
}

/* Bilinear taps of source point (px, py) (pixel units, x along W, y along
 * H), zero outside: grid_sample(mode='bilinear', padding_mode='zeros'). */
static void bilinear_taps(const qd_augment *a, double px, double py, long *src,
                          double *wt)
{
    double fx = floor(px), fy = floor(py);
    long x0 = (long)fx, y0 = (long)fy;
    double tx = px - fx, ty = py - fy;
    const long xs[2] = {x0, x0 + 1}, ys[2] = {y0, y0 + 1};
    const double wx[2] = {1.0 - tx, tx}, wy[2] = {1.0 - ty, ty};
    int k = 0;
    for (int j = 0; j < 2; j++)
        for (int i = 0; i < 2; i++, k++) {
            if (xs[i] < 0 || xs[i] >= (long)a->W || ys[j] < 0 || ys[j] >= (long)a->H)
                continue;
            src[k] = ys[j] * (long)a->W + xs[i];
            wt[k] = wx[i] * wy[j];
        }
}

/* affine_grid + grid_sample with align_corners=True: output pixel (i, j) has
 * normalised coordinates (xn, yn) in [-1, 1]; the source point is
 * theta . (xn, yn, 1), mapped back to pixels. */
static void build_affine(qd_augment *a, const double theta[2][2])
{
    map_clear(a);
    double sw = a->W > 1 ? 2.0 / (double)(a->W - 1) : 0.0;
    double sh = a->H > 1 ? 2.0 / (double)(a->H - 1) : 0.0;
    for (size_t i = 0; i < a->H; i++)
        for (size_t j = 0; j < a->W; j++) {
            double xn = a->W > 1 ? -1.0 + sw * (double)j : 0.0;
            double yn = a->H > 1 ? -1.0 + sh * (double)i : 0.0;
            double xs = theta[0][0] * xn + theta[0][1] * yn;
            double ys = theta[1][0] * xn + theta[1][1] * yn;
            double px = (xs + 1.0) * 0.5 * (double)(a->W - 1);
            double py = (ys + 1.0) * 0.5 * (double)(a->H - 1);
            size_t p = (i * a->W + j) * AUG_TAPS;
            bilinear_taps(a, px, py, a->src + p, a->wt + p);
        }
}

static void build_map(qd_augment *a, const drawn_op *d)
{
    long H = (long)a->H, W = (long)a->W;
    switch (d->kind) {
    case OP_CROP:
        /* y[i][j] = x[i + ti][j + tj], zero outside (DSA pads by one zero
         * pixel and clamps into the pad). */
        map_clear(a);
        for (long i = 0; i < H; i++)
            for (long j = 0; j < W; j++) {
                long si = i + d->ip[0], sj = j + d->ip[1];
                if (si < 0 || si >= H || sj < 0 || sj >= W)
                    continue;
                size_t p = (size_t)(i * W + j) * AUG_TAPS;
                a->src[p] = si * W + sj;
                a->wt[p] = 1.0;
            }
        break;
    case OP_FLIP:
        map_clear(a);
        for (long i = 0; i < H; i++)
            for (long j = 0; j < W; j++) {
                size_t p = (size_t)(i * W + j) * AUG_TAPS;
                a->src[p] = i * W + (d->ip[0] ? W - 1 - j : j);
                a->wt[p] = 1.0;
            }
        break;
    case OP_SCALE: {
        const double th[2][2] = {{d->p[0], 0.0}, {0.0, d->p[1]}};
        build_affine(a, th);
        break;
    }
    case OP_ROTATE: {
        double c = cos(d->p[0]), s = sin(d->p[0]);
        const double th[2][2] = {{c, -s}, {s, c}};
        build_affine(a, th);
        break;
    }
    case OP_CUTOUT: {
        long ch = (long)((double)a->H * a->prm.ratio_cutout + 0.5);
        long cw = (long)((double)a->W * a->prm.ratio_cutout + 0.5);
        long i0 = d->ip[0] - ch / 2, j0 = d->ip[1] - cw / 2;
        map_clear(a);
        for (long i = 0; i < H; i++)
            for (long j = 0; j < W; j++) {
                if (i >= i0 && i < i0 + ch && j >= j0 && j < j0 + cw)
                    continue;
                size_t p = (size_t)(i * W + j) * AUG_TAPS;
                a->src[p] = i * W + j;
                a->wt[p] = 1.0;
            }
        break;
    }
    }
}

static void gather(const qd_augment *a, size_t planes, const double *in, double *out)
{
    size_t hw = a->H * a->W;
#pragma omp parallel for schedule(static) if (planes * hw > 65536)
    for (size_t q = 0; q < planes; q++) {
        const double *x = in + q * hw;
        double *y = out + q * hw;
        for (size_t p = 0; p < hw; p++) {
            const long *s = a->src + p * AUG_TAPS;
            const double *w = a->wt + p * AUG_TAPS;
            double v = 0.0;
            for (int k = 0; k < AUG_TAPS; k++)
                if (s[k] >= 0)
                    v += w[k] * x[s[k]];
            y[p] = v;
        }
    }
}

static void scatter(const qd_augment *a, size_t planes, const double *in, double *out)
{
    size_t hw = a->H * a->W;
#pragma omp parallel for schedule(static) if (planes * hw > 65536)
    for (size_t q = 0; q < planes; q++) {
        const double *g = in + q * hw;
        double *o = out + q * hw;
        for (size_t p = 0; p < hw; p++)
            o[p] = 0.0;
        for (size_t p = 0; p < hw; p++) {
            const long *s = a->src + p * AUG_TAPS;
            const double *w = a->wt + p * AUG_TAPS;
            for (int k = 0; k < AUG_TAPS; k++)
                if (s[k] >= 0)
                    o[s[k]] += w[k] * g[p];
        }
    }
}

/* ---- colour ------------------------------------------------------------ */

/* saturation: x <- (x - mean_c) * s + mean_c, mean over channels per pixel. */
static void saturation(const qd_augment *a, double *img, double s)
{
    size_t hw = a->H * a->W, C = a->C;
    for (size_t p = 0; p < hw; p++) {
        double m = 0.0;
        for (size_t c = 0; c < C; c++)
            m += img[c * hw + p];
        m /= (double)C;
        for (size_t c = 0; c < C; c++)
            img[c * hw + p] = (img[c * hw + p] - m) * s + m;
    }
}

/* contrast: x <- (x - mean) * c + mean, mean over the whole image. */
static void contrast(const qd_augment *a, double *img, double c)
{
    size_t n = a->C * a->H * a->W;
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        m += img[i];
    m /= (double)n;
    for (size_t i = 0; i < n; i++)
        img[i] = (img[i] - m) * c + m;
}

static void color(const qd_augment *a, const drawn_op *d, size_t batch,
                  const double *in, double *out, int transpose)
{
    size_t n = a->C * a->H * a->W;
#pragma omp parallel for schedule(static) if (batch * n > 65536)
    for (size_t b = 0; b < batch; b++) {
        const double *x = in + b * n;
        double *y = out + b * n;
        if (!transpose) {
            for (size_t i = 0; i < n; i++)
                y[i] = x[i] + d->p[0];
            saturation(a, y, d->p[1]);
            contrast(a, y, d->p[2]);
        } else {
            /* Both maps are symmetric; the transpose reverses their order
             * and drops the (constant) brightness offset. */
            memcpy(y, x, n * sizeof *y);
            contrast(a, y, d->p[2]);
            saturation(a, y, d->p[1]);
        }
    }
}

/* ---- apply / backward -------------------------------------------------- */

static int check_call(qd_augment *a, size_t batch, const void *in, void *out,
                      const char *what, qd_error *err)
{
    if (!a || !in || !out)
        return qd_error_set(err, QD_ERR_INVALID, "augment %s: NULL argument", what);
    size_t n = batch * a->C * a->H * a->W;
    if (n > a->tmp_n) {
        double *t = realloc(a->tmp, n * sizeof *t);
        if (!t)
            return qd_error_set(err, QD_ERR_NOMEM, "augment %s: out of memory", what);
        a->tmp = t;
        a->tmp_n = n;
    }
    return QD_OK;
}

static void run_op(qd_augment *a, const drawn_op *d, size_t batch,
                   const double *in, double *out, int transpose)
{
    if (d->kind == OP_COLOR) {
        color(a, d, batch, in, out, transpose);
        return;
    }
    build_map(a, d);
    if (transpose)
        scatter(a, batch * a->C, in, out);
    else
        gather(a, batch * a->C, in, out);
}

/* Chains the plan (reversed and transposed for backward) from in to out,
 * alternating between out and the scratch buffer so that the last op writes
 * out and no op reads the buffer it writes. */
static void run_plan(qd_augment *a, size_t batch, const double *in, double *out,
                     int transpose)
{
    int n = a->n_plan;
    if (n == 0) {
        memcpy(out, in, batch * a->C * a->H * a->W * sizeof *out);
        return;
    }
    const double *cur = in;
    for (int t = 0; t < n; t++) {
        const drawn_op *d = &a->plan[transpose ? n - 1 - t : t];
        double *dst = ((n - 1 - t) % 2 == 0) ? out : a->tmp;
        run_op(a, d, batch, cur, dst, transpose);
        cur = dst;
    }
}

int qd_augment_apply(qd_augment *a, uint64_t seed, size_t batch, const double *x,
                     double *y, qd_error *err)
{
    int rc = check_call(a, batch, x, y, "apply", err);
    if (rc)
        return rc;
    if (batch == 0)
        return QD_OK;
    draw_plan(a, seed);
    run_plan(a, batch, x, y, 0);
    return QD_OK;
}

int qd_augment_backward(qd_augment *a, uint64_t seed, size_t batch,
                        const double *g_y, double *g_x, qd_error *err)
{
    int rc = check_call(a, batch, g_y, g_x, "backward", err);
    if (rc)
        return rc;
    if (batch == 0)
        return QD_OK;
    draw_plan(a, seed);
    run_plan(a, batch, g_y, g_x, 1);
    return QD_OK;
}
