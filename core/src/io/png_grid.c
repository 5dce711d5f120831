/* PNG grid of images: rasterise into memory, encode with libpng through a
 * memory write callback, publish with qd_write_atomic. */
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/fsutil.h"
#include "qdistill/png_grid.h"

#define MAX_SIDE 100000u                 /* pixels per side */
#define MAX_RASTER ((size_t)1 << 30)     /* bytes of raw image */

typedef struct enc_ctx {
    qd_blob *out;
    char msg[256];
} enc_ctx;

static void on_error(png_structp png, png_const_charp msg)
{
    enc_ctx *ctx = png_get_error_ptr(png);
    snprintf(ctx->msg, sizeof ctx->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void on_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg; /* warnings do not affect the output we produce */
}

static void on_write(png_structp png, png_bytep data, png_size_t len)
{
    enc_ctx *ctx = png_get_error_ptr(png);
    if (qd_blob_append(ctx->out, data, len) != QD_OK)
        png_error(png, "out of memory");
}

static void on_flush(png_structp png)
{
    (void)png;
}

/* Encode an 8-bit grey/RGB raster. Kept free of locals that change after
 * setjmp, so the longjmp error path is well defined. */
static int encode(qd_blob *out, png_bytep *rows, png_uint_32 width,
                  png_uint_32 height, int channels, qd_error *err)
{
    enc_ctx ctx = {out, {0}};
    size_t start = out->len;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &ctx,
                                              on_error, on_warning);
    if (!png)
        return qd_error_set(err, QD_ERR_NOMEM, "png: cannot create encoder");
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        return qd_error_set(err, QD_ERR_NOMEM, "png: cannot create encoder");
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        out->len = start;
        out->failed = 0;
        return qd_error_set(err, QD_ERR_INTERNAL, "png: encoding failed: %s",
                            ctx.msg);
    }
    png_set_write_fn(png, NULL, on_write, on_flush);
    png_set_IHDR(png, info, width, height, 8,
                 channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    png_set_compression_level(png, 6);
    png_set_rows(png, info, rows);
    png_write_png(png, info, PNG_TRANSFORM_IDENTITY, NULL);
    png_destroy_write_struct(&png, &info);
    return QD_OK;
}

static uint8_t to_byte(double x, double lo, double hi)
{
    if (!(hi > lo))
        return 0;
    double v = (x - lo) / (hi - lo) * 255.0;
    v = floor(v + 0.5);
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

int qd_png_encode_grid(qd_blob *out, const double *images, size_t n, size_t c,
                       size_t h, size_t w, size_t rows, size_t cols,
                       qd_png_scale scale, unsigned upscale, qd_error *err)
{
    size_t s = upscale ? upscale : 1;
    if (c != 1 && c != 3)
        return qd_error_set(err, QD_ERR_INVALID,
                            "png grid: %zu channels (need 1 or 3)", c);
    if (!h || !w || !rows || !cols)
        return qd_error_set(err, QD_ERR_INVALID,
                            "png grid: empty geometry (h=%zu w=%zu rows=%zu cols=%zu)",
                            h, w, rows, cols);
    if (scale != QD_PNG_SCALE_PER_IMAGE && scale != QD_PNG_SCALE_GLOBAL)
        return qd_error_set(err, QD_ERR_INVALID, "png grid: unknown scale mode %d",
                            (int)scale);
    if (rows > MAX_SIDE || cols > MAX_SIDE || n > rows * cols)
        return qd_error_set(err, QD_ERR_INVALID,
                            "png grid: %zu images do not fit %zu x %zu cells", n,
                            rows, cols);
    if (n && !images)
        return qd_error_set(err, QD_ERR_INVALID, "png grid: no image data");
    if (s > MAX_SIDE || h > MAX_SIDE / s || w > MAX_SIDE / s)
        return qd_error_set(err, QD_ERR_INVALID, "png grid: tiles too large");
    size_t th = h * s, tw = w * s;
    if (cols > (MAX_SIDE + 1) / (tw + 1) || rows > (MAX_SIDE + 1) / (th + 1))
        return qd_error_set(err, QD_ERR_INVALID,
                            "png grid: picture wider than %u pixels", MAX_SIDE);
    size_t W = cols * (tw + 1) - 1, H = rows * (th + 1) - 1;
    if (W * H > MAX_RASTER / c)
        return qd_error_set(err, QD_ERR_INVALID, "png grid: picture too large");

    size_t per = c * h * w;
    double glo = INFINITY, ghi = -INFINITY;
    for (size_t i = 0; i < n * per; i++) {
        double x = images[i];
        if (!isfinite(x))
            return qd_error_set(err, QD_ERR_NUMERIC,
                                "png grid: image %zu holds a non-finite value (%g)",
                                i / per, x);
        if (x < glo)
            glo = x;
        if (x > ghi)
            ghi = x;
    }

    size_t stride = W * c;
    uint8_t *raster = malloc(stride * H);
    png_bytep *rowp = malloc(H * sizeof *rowp);
    if (!raster || !rowp) {
        free(raster);
        free(rowp);
        return qd_error_set(err, QD_ERR_NOMEM, "png grid: out of memory");
    }
    memset(raster, QD_PNG_GAP_VALUE, stride * H);
    for (size_t i = 0; i < n; i++) {
        const double *img = images + i * per;
        double lo = glo, hi = ghi;
        if (scale == QD_PNG_SCALE_PER_IMAGE) {
            lo = INFINITY;
            hi = -INFINITY;
            for (size_t k = 0; k < per; k++) {
                if (img[k] < lo)
                    lo = img[k];
                if (img[k] > hi)
                    hi = img[k];
            }
        }
        size_t y0 = (i / cols) * (th + 1), x0 = (i % cols) * (tw + 1);
        for (size_t y = 0; y < th; y++) {
            uint8_t *row = raster + (y0 + y) * stride + x0 * c;
            for (size_t x = 0; x < tw; x++)
                for (size_t ch = 0; ch < c; ch++)
                    row[x * c + ch] =
                        to_byte(img[(ch * h + y / s) * w + x / s], lo, hi);
        }
    }
    for (size_t y = 0; y < H; y++)
        rowp[y] = raster + y * stride;
    int rc = encode(out, rowp, (png_uint_32)W, (png_uint_32)H, (int)c, err);
    free(rowp);
    free(raster);
    return rc;
}

int qd_png_write_grid(const char *path, const double *images, size_t n,
                      size_t c, size_t h, size_t w, size_t rows, size_t cols,
                      qd_png_scale scale, unsigned upscale, qd_error *err)
{
    qd_blob b;
    qd_blob_init(&b);
    int rc = qd_png_encode_grid(&b, images, n, c, h, w, rows, cols, scale,
                                upscale, err);
    if (!rc)
        rc = qd_write_atomic(path, b.data, b.len, err);
    else
        qd_error_prefix(err, "'%s'", path);
    qd_blob_free(&b);
    return rc;
}
