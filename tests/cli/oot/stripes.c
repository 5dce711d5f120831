/* An out-of-tree dataset plugin, built by the tests with nothing but the
 * installed headers and `pkg-config --cflags qdistill-plugin`:
 *
 *   cc -shared -fPIC -fvisibility=hidden \
 *      $(pkg-config --cflags qdistill-plugin) stripes.c -o stripes.so
 *
 * It generates images of horizontal (class 0) or vertical (class 1) stripes
 * with noise: a problem any model learns in a few steps. */
#include <stdlib.h>

#include <qdistill/plugin.h>

typedef struct stripes {
    const qd_host *host;
    long long size, n_train, n_test;
    double noise;
} stripes;

static int stripes_create(const qd_host *h, void **self)
{
    stripes *s = calloc(1, sizeof *s);
    if (!s)
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    s->host = h;
    s->size = h->get_int(h, "size");
    s->n_train = h->get_int(h, "train_size");
    s->n_test = h->get_int(h, "test_size");
    s->noise = h->get_double(h, "noise");
    *self = s;
    return QD_OK;
}

static void stripes_destroy(void *self)
{
    free(self);
}

static int stripes_load(void *self, qd_split split, qd_dataset *out)
{
    stripes *s = self;
    size_t n = (size_t)(split == QD_SPLIT_TRAIN ? s->n_train : s->n_test);
    size_t w = (size_t)s->size;
    qd_error err;
    if (qd_dataset_alloc(out, n, 1, w, w, 2, &err) != QD_OK)
        return s->host->error(s->host, err.code, "%s", err.msg);
    qd_rng *rng = s->host->rng(s->host);
    for (size_t i = 0; i < n; ++i) {
        int label = (int)qd_rng_bounded(rng, 2);
        out->labels[i] = label;
        for (size_t y = 0; y < w; ++y)
            for (size_t x = 0; x < w; ++x) {
                size_t k = label ? x : y;
                double v = (k % 2) ? 1.0 : -1.0;
                out->images[i * w * w + y * w + x] = v + s->noise * qd_rng_normal(rng);
            }
    }
    s->host->log(s->host, QD_LOG_INFO, "stripes: generated %zu %s images of %zux%zu", n,
                 split == QD_SPLIT_TRAIN ? "training" : "test", w, w);
    return QD_OK;
}

static const qd_param stripes_params[] = {
    {.name = "size", .type = QD_PARAM_INT, .def = "12", .flags = QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX,
     .min = 4, .max = 64, .doc = "image side in pixels"},
    {.name = "train_size", .type = QD_PARAM_INT, .def = "200", .flags = QD_PARAM_HAS_MIN, .min = 2,
     .doc = "training images"},
    {.name = "test_size", .type = QD_PARAM_INT, .def = "100", .flags = QD_PARAM_HAS_MIN, .min = 2,
     .doc = "test images"},
    {.name = "noise", .type = QD_PARAM_DOUBLE, .def = "0.3", .flags = QD_PARAM_HAS_MIN, .min = 0,
     .doc = "standard deviation of the pixel noise"},
    {0},
};

static const qd_dataset_vt stripes_vt = {
    .struct_size = sizeof(qd_dataset_vt),
    .create = stripes_create,
    .destroy = stripes_destroy,
    .load = stripes_load,
};

static const qd_plugin_desc stripes_desc =
    QD_PLUGIN_DESC_INIT(QD_KIND_DATASET, "stripes", "1.0.0",
                        "horizontal vs vertical stripes (out-of-tree example)", stripes_params,
                        &stripes_vt);

QD_PLUGIN_EXPORT const qd_plugin_desc *const *qd_plugin_entry(void)
{
    static const qd_plugin_desc *const list[] = {&stripes_desc, NULL};
    return list;
}
