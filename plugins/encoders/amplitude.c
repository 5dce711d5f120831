/* Encoder `amplitude`: PennyLane's AmplitudeEmbedding. The (padded,
 * normalised) feature vector becomes the 2^n amplitudes of a state
 * preparation on all n wires. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/plugin.h"

static const qd_param params[] = {
    {"pad_with", QD_PARAM_DOUBLE, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, NULL,
     -1e6, 1e6, NULL, 0, NULL,
     "value appended after the features when n_features < 2^n (no default: "
     "unset means the features must fill 2^n exactly)"},
    {"normalize", QD_PARAM_BOOL, 0, "true", 0, 0, NULL, 0, NULL,
     "divide by the L2 norm (backward goes through it); false = inputs must "
     "already have unit norm (checked to 1e-8)"},
    {"eps", QD_PARAM_DOUBLE, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "1e-12", 0,
     1, NULL, 0, NULL,
     "a padded vector with L2 norm below eps is an error (QD_ERR_NUMERIC), "
     "never a NaN"},
    {NULL, 0, 0, NULL, 0, 0, NULL, 0, NULL, NULL},
};

typedef struct amp {
    const qd_host *host;
    int has_pad;
    double pad;
    int normalize;
    double eps;
    size_t n_features;   /* set by build */
    size_t dim;          /* 2^n, set by build */
} amp;

static int amp_create(const qd_host *h, void **self)
{
    amp *a = calloc(1, sizeof *a);
    if (!a)
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    a->host = h;
    a->has_pad = h->has(h, "pad_with");
    a->pad = a->has_pad ? h->get_double(h, "pad_with") : 0.0;
    a->normalize = h->get_bool(h, "normalize");
    a->eps = h->get_double(h, "eps");
    if (!isfinite(a->pad)) {
        free(a);
        return h->node_error(h, h->get_node(h, "pad_with"), QD_ERR_INVALID,
                             "pad_with must be finite");
    }
    *self = a;
    return QD_OK;
}

static void amp_destroy(void *self) { free(self); }

static int amp_build(void *self, size_t n_features, qd_circuit *c)
{
    amp *a = self;
    const qd_host *h = a->host;
    if (c->n_wires == 0 || c->n_wires > 30)
        return h->error(h, QD_ERR_INVALID,
                        "amplitude embedding needs 1..30 wires, circuit has %u",
                        c->n_wires);
    size_t dim = (size_t)1 << c->n_wires;
    if (n_features == 0)
        return h->error(h, QD_ERR_INVALID, "amplitude embedding of 0 features");
    if (n_features > dim)
        return h->error(h, QD_ERR_INVALID,
                        "amplitude embedding: %zu features do not fit 2^%u = "
                        "%zu amplitudes (use more wires or fewer features)",
                        n_features, c->n_wires, dim);
    if (n_features < dim && !a->has_pad)
        return h->error(h, QD_ERR_INVALID,
                        "amplitude embedding: 2^n mismatch: %zu features for "
                        "2^%u = %zu amplitudes (set pad_with to pad)",
                        n_features, c->n_wires, dim);
    qd_error err = {0};
    int rc = qd_circuit_add_state_prep(c, c->n_inputs, &err);
    if (rc)
        return h->error(h, rc, "%s", err.msg);
    a->n_features = n_features;
    a->dim = dim;
    return QD_OK;
}

/* Padded vector of sample b into v[dim]; returns its L2 norm. */
static double padded(const amp *a, const double *xb, double *v)
{
    memcpy(v, xb, a->n_features * sizeof *v);
    for (size_t k = a->n_features; k < a->dim; k++)
        v[k] = a->pad;
    double s = 0.0;
    for (size_t k = 0; k < a->dim; k++)
        s += v[k] * v[k];
    return sqrt(s);
}

/* The shared checks of encode and encode_backward. */
static int check_sample(const amp *a, size_t b, const double *xb, double norm)
{
    const qd_host *h = a->host;
    for (size_t k = 0; k < a->n_features; k++)
        if (!isfinite(xb[k]))
            return h->error(h, QD_ERR_NUMERIC,
                            "amplitude embedding of sample %zu: feature %zu is "
                            "not finite",
                            b, k);
    if (a->normalize) {
        if (!(norm >= a->eps) || norm == 0.0)
            return h->error(h, QD_ERR_NUMERIC,
                            "amplitude embedding of sample %zu: feature vector "
                            "has zero norm (|x| = %.3g < eps = %.3g)",
                            b, norm, a->eps);
    } else if (fabs(norm - 1.0) > 1e-8) {
        return h->error(h, QD_ERR_NUMERIC,
                        "amplitude embedding of sample %zu: normalize is false "
                        "but the (padded) feature vector has norm %.12g, not 1 "
                        "(to 1e-8)",
                        b, norm);
    }
    return QD_OK;
}

static int amp_encode(void *self, size_t batch, const double *x, double *inputs)
{
    amp *a = self;
    if (a->dim == 0)
        return a->host->error(a->host, QD_ERR_INVALID,
                              "encode called before build");
    for (size_t b = 0; b < batch; b++) {
        const double *xb = x + b * a->n_features;
        double *u = inputs + b * a->dim;
        double norm = padded(a, xb, u);
        int rc = check_sample(a, b, xb, norm);
        if (rc)
            return rc;
        if (a->normalize)
            for (size_t k = 0; k < a->dim; k++)
                u[k] /= norm;
    }
    return QD_OK;
}

/* u = v/|v|:  du/dv = (I - u u^T)/|v|, so g_v = (g_u - u (u . g_u))/|v|.
 * Padding entries are constants: only the first n_features of g_v reach x. */
static int amp_encode_backward(void *self, size_t batch, const double *x,
                               const double *g_inputs, double *g_x)
{
    amp *a = self;
    if (a->dim == 0)
        return a->host->error(a->host, QD_ERR_INVALID,
                              "encode_backward called before build");
    double *u = malloc(a->dim * sizeof *u);
    if (!u)
        return a->host->error(a->host, QD_ERR_NOMEM, "out of memory");
    for (size_t b = 0; b < batch; b++) {
        const double *xb = x + b * a->n_features;
        const double *gu = g_inputs + b * a->dim;
        double *gx = g_x + b * a->n_features;
        double norm = padded(a, xb, u);
        int rc = check_sample(a, b, xb, norm);
        if (rc) {
            free(u);
            return rc;
        }
        if (!a->normalize) {
            memcpy(gx, gu, a->n_features * sizeof *gx);
            continue;
        }
        double dot = 0.0;
        for (size_t k = 0; k < a->dim; k++) {
            u[k] /= norm;
            dot += u[k] * gu[k];
        }
        for (size_t k = 0; k < a->n_features; k++)
            gx[k] = (gu[k] - u[k] * dot) / norm;
    }
    free(u);
    return QD_OK;
}

static const qd_encoder_vt vt = {
    sizeof(qd_encoder_vt), amp_create, amp_destroy,
    amp_build, amp_encode, amp_encode_backward,
};

static const qd_plugin_desc desc = QD_PLUGIN_DESC_INIT(
    QD_KIND_ENCODER, "amplitude", "1.0.0",
    "amplitude embedding: (padded, L2-normalised) features as the 2^n "
    "amplitudes of a state preparation",
    params, &vt);

static const qd_plugin_desc *const descs[] = {&desc, NULL};

QD_PLUGIN_EXPORT const qd_plugin_desc *const *qd_plugin_entry(void)
{
    return descs;
}
