/* The start() checks every distiller makes of its context, in one place. */
#include <stdint.h>

#include "qdistill/distill.h"

int qd_distill_check_ctx(const qd_host *h, const qd_distill_ctx *ctx, size_t min_size,
                         int fixed_init)
{
    if (!ctx || ctx->struct_size < min_size || !ctx->model || !ctx->train || !ctx->rng ||
        !ctx->init_rng)
        return h->error(h, QD_ERR_INVALID, "start: incomplete distillation context");
    const qd_dataset *d = ctx->train;
    size_t n_params = qd_model_n_params(ctx->model);
    size_t in_size = qd_model_input_size(ctx->model);
    size_t classes = qd_model_n_classes(ctx->model);
    if (d->n == 0 || !d->images || !d->labels)
        return h->error(h, QD_ERR_INVALID, "start: the training set is empty");
    if (qd_dataset_sample_size(d) != in_size || d->classes != classes)
        return h->error(h, QD_ERR_INVALID,
                        "start: training images are %zux%zux%zu with %zu "
                        "classes, the model expects %zu inputs and %zu "
                        "classes", d->channels, d->height, d->width,
                        d->classes, in_size, classes);
    if (fixed_init && (!ctx->init_params || ctx->n_params != n_params))
        return h->error(h, QD_ERR_INVALID,
                        "start: model_init: fixed needs the fixed "
                        "initialisation (%zu parameters, got %zu)",
                        n_params, ctx->init_params ? ctx->n_params : 0);
    if (d->n > UINT32_MAX)
        return h->error(h, QD_ERR_INVALID, "start: %zu training images is "
                        "more than this distiller indexes", d->n);
    return QD_OK;
}
