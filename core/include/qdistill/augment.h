/*
 * qdistill/augment.h — differentiable siamese augmentation (DSA, Zhao & Bilen
 * 2021) for batches of C×H×W double images.
 *
 * Every op is linear in the images once its random parameters are drawn, so
 * the backward pass is the exact transpose of the forward map. The parameters
 * are a deterministic function of the seed passed to each call (one draw per
 * call, shared by every image of the batch): calling apply with the same seed
 * on the real and on the synthetic batch of a class gives both the same
 * transform, and backward with that seed differentiates exactly that
 * transform.
 *
 * An object keeps scratch space: one call at a time per qd_augment (the
 * gathers use OpenMP internally).
 *
 * Ops and their parameters (DSA's ParamDiffAug defaults):
 *   crop    translate by up to ±12.5% of H and W (integer pixels), zero padding
 *   flip    horizontal flip with probability 0.5
 *   scale   independent x/y factors in [1/1.2, 1.2] of the sampling grid
 *           (affine grid, bilinear sampling, zero outside)
 *   rotate  angle in ±15° (affine grid, bilinear sampling, zero outside)
 *   cutout  zero a rectangle of half the height and width at a random
 *           centre, clipped to the image (DSA's rand_cutout)
 *   color   brightness x + U(-0.5,0.5), saturation (x − mean_c)·U(0,2) + mean_c,
 *           contrast (x − mean)·U(0.5,1.5) + mean, in that order (DSA's
 *           rand_brightness, rand_saturation, rand_contrast); the brightness
 *           offset makes color affine, its backward is the linear part.
 */
#ifndef QDISTILL_AUGMENT_H
#define QDISTILL_AUGMENT_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qd_augment qd_augment;

/* strategy: '_'-separated ops from crop, flip, scale, rotate, color, cutout (e.g.
 * "color_crop_flip_scale_rotate"), or "none". mode 'S' (one op drawn per
 * call, as DSA) or 'M' (all ops in order). */
QD_EXPORT int qd_augment_create(const char *strategy, char mode, size_t channels,
                                size_t height, size_t width, qd_augment **out,
                                qd_error *err);
QD_EXPORT void qd_augment_destroy(qd_augment *a);

/* DSA's ParamDiffAug; qd_augment_create uses qd_augment_params_default. */
typedef struct qd_augment_params {
    double prob_flip;        /* 0.5: probability of the horizontal flip */
    double ratio_scale;      /* 1.2: scale factors in [1/ratio, ratio], >= 1 */
    double ratio_rotate;     /* 15: angle in [-ratio, ratio] degrees */
    double ratio_crop_pad;   /* 0.125: shift up to int(extent*ratio+0.5) px */
    double ratio_cutout;     /* 0.5: cutout square of int(extent*ratio+0.5) */
    double brightness;       /* 1.0: offset (U(0,1) - 0.5) * brightness */
    double saturation;       /* 2.0: factor U(0,1) * saturation */
    double contrast;         /* 0.5: factor U(0,1) + contrast */
} qd_augment_params;

QD_EXPORT void qd_augment_params_default(qd_augment_params *p);
/* qd_augment_create with explicit parameters (p NULL = the defaults). */
QD_EXPORT int qd_augment_create_ex(const char *strategy, char mode,
                                   const qd_augment_params *p, size_t channels,
                                   size_t height, size_t width, qd_augment **out,
                                   qd_error *err);

/* One drawn op of a call, for logs and tests. v by op:
 *   crop   v[0], v[1] = row and column shift: y[i][j] = x[i+v0][j+v1]
 *   flip   v[0] = 1 flipped, 0 not
 *   scale  v[0], v[1] = factors along width (x) and height (y)
 *   rotate v[0] = angle in radians
 *   color  v[0..2] = brightness offset, saturation and contrast factors
 *   cutout v[0], v[1] = centre row and column of the zeroed square */
typedef struct qd_augment_step {
    const char *op;
    double v[3];
} qd_augment_step;

/* The ops qd_augment_apply(a, seed, ...) runs, in order: writes up to max
 * steps, returns how many there are (0 for "none"). */
QD_EXPORT size_t qd_augment_plan(qd_augment *a, uint64_t seed,
                                 qd_augment_step *steps, size_t max);

/* 1 when the strategy is "none" (apply copies, backward copies). */
QD_EXPORT int qd_augment_is_identity(const qd_augment *a);

/* Siamese: the transform is a deterministic function of seed (one draw per
 * call, shared by every image of the batch), so the real and the synthetic
 * batch of a class get the same transform when called with the same seed.
 * x and y must not overlap. */
QD_EXPORT int qd_augment_apply(qd_augment *a, uint64_t seed, size_t batch,
                               const double *x, double *y, qd_error *err);

/* g_x = J^T g_y for the transform qd_augment_apply(seed) applied (overwrites
 * g_x). g_y and g_x must not overlap. */
QD_EXPORT int qd_augment_backward(qd_augment *a, uint64_t seed, size_t batch,
                                  const double *g_y, double *g_x, qd_error *err);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_AUGMENT_H */
