/*
 * qdistill/png_grid.h — a PNG picture of a set of images laid out as a grid
 * (the distilled set: one row per inner step, one column per class).
 *
 * Tiles are h*upscale x w*upscale pixels, separated by 1-pixel gaps of grey
 * QD_PNG_GAP_VALUE; cells beyond the n-th image are filled with that grey too.
 * Image i goes to row i / cols, column i % cols. Channels: 1 (8-bit grey) or
 * 3 (8-bit RGB). Values map linearly to 0..255 by min-max scaling, per image
 * or over the whole set; a constant image (max == min) is drawn black. A NaN
 * or infinite value is an error (QD_ERR_NUMERIC), never a silent pixel.
 * The file is written atomically (qdistill/fsutil.h).
 */
#ifndef QDISTILL_PNG_GRID_H
#define QDISTILL_PNG_GRID_H

#include "blob.h"
#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QD_PNG_GAP_VALUE 128

typedef enum qd_png_scale {
    QD_PNG_SCALE_PER_IMAGE = 0,   /* each image stretched to its own min..max */
    QD_PNG_SCALE_GLOBAL = 1       /* one min..max over all images */
} qd_png_scale;

/* images: n images, NCHW doubles; n <= rows * cols; upscale >= 1 (0 means 1). */
QD_EXPORT int qd_png_write_grid(const char *path, const double *images,
                                size_t n, size_t c, size_t h, size_t w,
                                size_t rows, size_t cols, qd_png_scale scale,
                                unsigned upscale, qd_error *err);

/* The same picture encoded into memory (appended to out). */
QD_EXPORT int qd_png_encode_grid(qd_blob *out, const double *images, size_t n,
                                 size_t c, size_t h, size_t w, size_t rows,
                                 size_t cols, qd_png_scale scale,
                                 unsigned upscale, qd_error *err);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_PNG_GRID_H */
