/*
 * Internal interface between the model (a DAG of layers, model.c) and the
 * layer implementations (one file per family).
 *
 * Activations are NCHW double batches. A layer's output buffer and the
 * gradient buffer of that output are owned by the model; layers keep only
 * their own scratch (argmax indices, masks, encoded circuit inputs, ...).
 *
 * Gradient convention for backward():
 *   - g_p (the layer's parameter block, NULL when the caller does not want
 *     parameter gradients) is overwritten;
 *   - g_in[j] (NULL when input j needs no gradient) is overwritten when
 *     acc[j] == 0 and added to when acc[j] == 1, because a layer output read
 *     by several layers (a residual fork) sums their contributions. Input 0
 *     is fully handled before input 1, so g_in[0] == g_in[1] works with
 *     acc[1] = 1.
 */
#ifndef QD_NN_INTERNAL_H
#define QD_NN_INTERNAL_H

#include <stdint.h>

#include "qdistill/model.h"

typedef struct nn_shape {
    size_t c, h, w;      /* a feature vector is c x 1 x 1 */
} nn_shape;

static inline size_t nn_shape_size(nn_shape s)
{
    return s.c * s.h * s.w;
}

typedef struct nn_layer nn_layer;

/* What setup() gets besides the layer itself. */
typedef struct nn_build {
    const qd_registry *reg;
    const qd_model_opts *opts;
} nn_build;

typedef struct nn_layer_vt {
    /* Read the layer's keys, check and infer the output shape (l->out) from
     * l->in_shape, set l->n_params and the parameter blocks. */
    int (*setup)(nn_layer *l, const nn_build *b, qd_error *err);
    /* Initialise the layer's n_params parameters at p. */
    int (*init)(nn_layer *l, qd_rng *rng, double *p, qd_error *err);
    int (*forward)(nn_layer *l, const double *p, size_t batch,
                   const double *const *in, double *out, qd_error *err);
    int (*backward)(nn_layer *l, const double *p, size_t batch,
                    const double *const *in, const double *out,
                    const double *g_out, double *g_p, double *const *g_in,
                    const int *acc, qd_error *err);
    void (*destroy)(nn_layer *l);
    /* Output shares the input's buffer (flatten): forward/backward unused. */
    int alias;
} nn_layer_vt;

#define NN_MAX_IN 2
#define NN_MAX_BLOCKS 2

struct nn_layer {
    char *name;
    const char *type;
    const nn_layer_vt *vt;
    const qd_node *node;            /* the layer's mapping, for messages */
    const qd_param *schema;
    int n_in;
    int in[NN_MAX_IN];              /* producer layer index, -1 = data */
    const char *in_name[NN_MAX_IN]; /* producer names, for messages */
    nn_shape in_shape[NN_MAX_IN];
    nn_shape out;
    size_t n_params, param_offset;
    size_t n_blocks;
    qd_param_block blocks[NN_MAX_BLOCKS];   /* offsets relative to layer */
    const int *training;            /* the model's mode flag */
    const int *pieces;              /* the model's QD_PIECES_* mode */
    size_t rec_batch;               /* batch of the recorded pieces (relu,
                                       maxpool2d), 0: none; set by the model */
    qd_rng *rng;                    /* the model's stream (dropout) */
    void *st;                       /* type-specific state */
};

/* ---- layer config reading: explicit value, else the schema default ---- */

int nn_cfg_int(const nn_layer *l, const char *key, long long *out,
               qd_error *err);
int nn_cfg_double(const nn_layer *l, const char *key, double *out,
                  qd_error *err);
int nn_cfg_bool(const nn_layer *l, const char *key, int *out, qd_error *err);
/* Scalar text (explicit or default); NULL when absent without a default. */
const char *nn_cfg_str(const nn_layer *l, const char *key);
/* "file:line:col: layer 'name' (type): message" at the key's node (or the
 * layer's mapping when key is NULL or absent). */
int nn_layer_error(const nn_layer *l, const char *key, qd_error *err,
                   int code, const char *fmt, ...) QD_PRINTF(5, 6);
/* "layer 'name' (type): message" without a location (runtime errors). */
int nn_layer_rt_error(const nn_layer *l, qd_error *err, int code,
                      const char *fmt, ...) QD_PRINTF(4, 5);

/* Register a parameter block (offset relative to the layer's params). */
void nn_add_block(nn_layer *l, const char *what, size_t count);

/* ---- initialisers ---- */

typedef enum nn_init {
    NN_INIT_PYTORCH = 0,
    NN_INIT_XAVIER_NORMAL,
    NN_INIT_XAVIER_UNIFORM,
    NN_INIT_KAIMING_NORMAL,
    NN_INIT_KAIMING_UNIFORM,
    NN_INIT_ZEROS
} nn_init;

int nn_cfg_init(const nn_layer *l, nn_init *out, qd_error *err);
/* Fill weight (n_w entries) then bias (n_b, may be 0) in that order. */
void nn_init_fill(nn_init kind, qd_rng *rng, size_t fan_in, size_t fan_out,
                  double *w, size_t n_w, double *b, size_t n_b);

/* ---- small helpers ---- */

/* Grow a scratch buffer to at least n doubles (contents not kept). */
int nn_reserve(double **buf, size_t *cap, size_t n);

/* Threads are woken only for enough work to hide the wake-up (which grows
 * to milliseconds when the cores are shared): elementwise loops above this
 * many entries, GEMM loops above NN_OMP_MIN_WORK multiply-adds. */
#define NN_OMP_MIN 32768
#define NN_OMP_MIN_WORK ((size_t)1 << 21)

/* Copy-bound kernels (im2col and friends) get AVX2 / AVX-512 clones picked
 * at load time: the library is built for baseline x86-64, where they would
 * move 16 bytes per instruction. */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define NN_VECTOR_CLONES \
    __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define NN_VECTOR_CLONES
#endif

/* ---- direct convolution for stride-1 layers with few taps ---- */

#if defined(__GNUC__)
#define NN_HAVE_DIRECT_CONV 1   /* needs GCC/Clang vector extensions */
#else
#define NN_HAVE_DIRECT_CONV 0
#endif

typedef struct nn_direct_geom {
    size_t cin, h, w, co, k, pad, ho, wo;
    size_t hp, wp;      /* zero-padded input planes */
    size_t gs;          /* row length of the blocked output gradient */
    size_t gqh, gqw;    /* output gradient padded by k-1 on every side */
} nn_direct_geom;

void nn_direct_geom_init(nn_direct_geom *g, size_t cin, size_t h, size_t w,
                         size_t co, size_t k, size_t pad);
/* Scratch doubles one image needs (per thread). */
size_t nn_direct_scratch(const nn_direct_geom *g);
/* out (co x ho x wo) = W * x + bias for one image. */
void nn_direct_forward(const nn_direct_geom *g, const double *W,
                       const double *bias, const double *x, double *out,
                       double *scratch);
/* For one image with output gradient go: gw += dL/dW (natural layout; NULL
 * to skip), gx (+)= dL/dx (NULL to skip; add: accumulate). */
void nn_direct_backward(const nn_direct_geom *g, const double *W,
                        const double *x, const double *go, double *gw,
                        double *gx, int add, double *scratch);

/* ---- layer type tables (one per file) ---- */

extern const nn_layer_vt nn_conv2d_vt;
extern const nn_layer_vt nn_maxpool2d_vt;
extern const nn_layer_vt nn_avgpool2d_vt;
extern const nn_layer_vt nn_linear_vt;
extern const nn_layer_vt nn_relu_vt;
extern const nn_layer_vt nn_tanh_vt;
extern const nn_layer_vt nn_sigmoid_vt;
extern const nn_layer_vt nn_flatten_vt;
extern const nn_layer_vt nn_add_vt;
extern const nn_layer_vt nn_mix_vt;
extern const nn_layer_vt nn_dropout_vt;
extern const nn_layer_vt nn_quantum_vt;

/* Max-pooling internals shared with the fused conv block: the argmax
 * buffer (grown to n entries; NULL when out of memory) and the window. */
int32_t *nn_pool_argmax(nn_layer *l, size_t n);
void nn_pool_geometry(const nn_layer *l, size_t *k, size_t *stride);
/* Frozen pieces (model.h, QD_PIECES_*): nn_pool_record keeps a copy of the
 * first n argmax entries the forward just wrote (QD_ERR_NOMEM on failure);
 * nn_pool_replay copies n recorded entries back into the argmax buffer,
 * which backward reads, and returns it (NULL when out of memory or fewer
 * were recorded). So backward needs no change for either mode. */
int nn_pool_record(nn_layer *l, size_t n);
int32_t *nn_pool_replay(nn_layer *l, size_t n);

/* conv2d -> relu -> maxpool2d in one pass per image (conv2d.c); out / g_pool
 * are the pool layer's output / output gradient, gx the conv input gradient
 * (NULL: not needed; add: accumulate into it). */
int nn_conv_relu_pool_forward(nn_layer *conv, nn_layer *pool,
                              const double *p, size_t batch, const double *x,
                              double *out, qd_error *err);
int nn_conv_relu_pool_backward(nn_layer *conv, nn_layer *pool,
                               const double *p, size_t batch,
                               const double *x, const double *g_pool,
                               double *g_p, double *gx, int add,
                               qd_error *err);

/* Layers whose forward picks a linear piece (relu masks, max-pool argmaxes):
 * the ones QD_PIECES_RECORD / QD_PIECES_REPLAY act on. */
static inline int nn_is_piecewise(const nn_layer *l)
{
    return l->vt == &nn_relu_vt || l->vt == &nn_maxpool2d_vt;
}

/* The stop flag the model was created with (may be NULL). */
volatile int *nn_model_stop_flag(const qd_model *m);

/* Quantum layer hooks used by the model. */
void nn_quantum_stats(const nn_layer *l, qd_sim_stats *acc);
char *nn_quantum_describe(const nn_layer *l);

#endif /* QD_NN_INTERNAL_H */
