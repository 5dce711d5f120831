/*
 * qdistill/plugin.h — the plugin ABI. This header is the reference for
 * plugin authors (see docs/plugin-authoring.md for a walk-through).
 *
 * A plugin file is a shared object that exports exactly one symbol,
 *
 *     QD_PLUGIN_EXPORT const qd_plugin_desc *const *qd_plugin_entry(void);
 *
 * returning a NULL-terminated array of descriptors (one file may carry several
 * plugins). Build it with hidden visibility so nothing else leaks:
 *
 *     cc -shared -fPIC -fvisibility=hidden $(pkg-config --cflags qdistill-plugin) \
 *        my_plugin.c -o my_plugin.so
 *
 * Stability rules:
 *   - every struct here starts with its size (struct_size) and fields are only
 *     ever appended; the host accepts any struct at least as large as the
 *     ABI 1.0 layout and reads only the fields it knows;
 *   - QD_ABI_MAJOR changes only when an existing field changes meaning; the
 *     host refuses plugins built for another major.
 *
 * Instances: every kind's vtable starts with create/destroy. create() reads
 * its configuration through the qd_host it is given (already validated
 * against the descriptor's parameter schema), keeps the host pointer if it
 * wants to log or draw random numbers later, and must not do heavy work
 * (`qdistill validate` creates every instance of a manifest). Errors are
 * reported with host->error() and a non-zero qd_status return; a plugin never
 * calls exit() or abort() on bad input.
 *
 * Plugins may also call any function declared in the public qdistill headers
 * (circuit building, node reading, RNG): they are exported by libqdistill,
 * which the host process has loaded (link with `pkg-config --libs
 * qdistill-plugin` to resolve them at link time instead).
 */
#ifndef QDISTILL_PLUGIN_H
#define QDISTILL_PLUGIN_H

#include <stdarg.h>
#include "common.h"
#include "config.h"
#include "rng.h"
#include "circuit.h"
#include "data.h"
#include "log.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QD_ABI_MAJOR 1
#define QD_ABI_MINOR 0
#define QD_ABI_VERSION ((uint32_t)((QD_ABI_MAJOR << 16) | QD_ABI_MINOR))
#define QD_ABI_MAJOR_OF(v) ((uint32_t)(v) >> 16)

#define QD_PLUGIN_ENTRY_SYMBOL "qd_plugin_entry"
#define QD_PLUGIN_EXPORT QD_EXPORT

typedef enum qd_kind {
    QD_KIND_ENCODER = 1,
    QD_KIND_ANSATZ = 2,
    QD_KIND_OBSERVABLE = 3,
    QD_KIND_SIMULATOR = 4,
    QD_KIND_DISTILLER = 5,
    QD_KIND_DATASET = 6,
    QD_KIND_COUNT_          /* one past the last kind; may grow */
} qd_kind;

/* ------------------------------------------------------------------------
 * Parameter schema
 * ---------------------------------------------------------------------- */

typedef enum qd_param_type {
    QD_PARAM_BOOL = 1,
    QD_PARAM_INT = 2,
    QD_PARAM_DOUBLE = 3,
    QD_PARAM_STRING = 4,
    QD_PARAM_ENUM = 5,      /* one of `choices` ("a|b|c") */
    QD_PARAM_LIST = 6,      /* sequence of `elem` (scalars, or MAP with `fields`) */
    QD_PARAM_MATRIX = 7,    /* sequence of equal-length sequences of numbers;
                               entries may be complex: "1+2j", "-0.5j" */
    QD_PARAM_MAP = 8        /* nested mapping validated against `fields` */
} qd_param_type;

/* Flags. */
#define QD_PARAM_REQUIRED  0x1u   /* must be given (no default) */
#define QD_PARAM_HAS_MIN   0x2u   /* value (or list length for LIST) >= min */
#define QD_PARAM_HAS_MAX   0x4u   /* value (or list length for LIST) <= max */
#define QD_PARAM_INT_OR_STRING 0x8u /* INT that also accepts one of `choices` */

typedef struct qd_param {
    const char *name;         /* NULL terminates a schema array */
    uint32_t type;            /* qd_param_type */
    uint32_t flags;
    const char *def;          /* default as YAML text ("0.02", "true", "[]"),
                                 NULL = no default */
    double min, max;          /* bounds, see flags */
    const char *choices;      /* ENUM: "fixed|random" */
    uint32_t elem;            /* LIST: element type */
    const struct qd_param *fields; /* MAP, or LIST of MAP: nested schema */
    const char *doc;          /* one line */
} qd_param;

/* ------------------------------------------------------------------------
 * Host API handed to create(): the instance's configuration and services.
 * ---------------------------------------------------------------------- */

typedef struct qd_host qd_host;
struct qd_host {
    uint32_t abi_version;
    uint32_t struct_size;

    /* The instance's configuration section (a mapping, never NULL) after
     * validation and defaults. The getters below read its keys; reading a
     * key not in the schema is a programming error reported via error(). */
    const qd_node *config;
    int (*get_bool)(const qd_host *h, const char *key);
    long long (*get_int)(const qd_host *h, const char *key);
    double (*get_double)(const qd_host *h, const char *key);
    const char *(*get_string)(const qd_host *h, const char *key); /* STRING, ENUM */
    const qd_node *(*get_node)(const qd_host *h, const char *key); /* LIST, MATRIX, MAP */
    int (*has)(const qd_host *h, const char *key);  /* given explicitly? */

    /* Logging to the run log / stderr, prefixed with the plugin name. */
    void (*log)(const qd_host *h, int level, const char *fmt, ...) QD_PRINTF(3, 4);
    /* Record an error (the host prefixes the plugin's name); returns code. */
    int (*error)(const qd_host *h, int code, const char *fmt, ...) QD_PRINTF(3, 4);
    /* The same, located at a config node: "file:line:col: message". */
    int (*node_error)(const qd_host *h, const qd_node *n, int code,
                      const char *fmt, ...) QD_PRINTF(4, 5);

    /* The instance's own random stream (derived from the manifest seed and
     * the instance's place in the manifest). */
    qd_rng *(*rng)(const qd_host *h);

    /* Threads the run may use (OpenMP is already set to this). */
    int threads;

    /* Resolve a path relative to the manifest that configured the instance
     * (returns a malloc'd string). */
    char *(*resolve_path)(const qd_host *h, const char *path);

    /* Cooperative cancellation: non-zero once SIGINT/SIGTERM arrived. */
    int (*should_stop)(const qd_host *h);

    void *internal;           /* host-private */
};

/* ------------------------------------------------------------------------
 * Kind vtables. Each starts with struct_size, create and destroy.
 * ---------------------------------------------------------------------- */

#define QD_VT_HEADER                                                  \
    uint32_t struct_size;                                             \
    int (*create)(const qd_host *host, void **self);                  \
    void (*destroy)(void *self)

/* Encoder: maps n_features classical features per sample to the circuit's
 * per-sample input vector and appends the ops that consume it. */
typedef struct qd_encoder_vt {
    QD_VT_HEADER;
    /* Append ops to c (c->n_wires set by the caller). Inputs this encoder
     * produces start at index c->n_inputs; build grows c->n_inputs. Fails
     * with a clear message when n_features does not fit the wires. */
    int (*build)(void *self, size_t n_features, qd_circuit *c);
    /* inputs[b * n_in + k] for the batch; n_in = inputs this encoder added.
     * x is batch x n_features. */
    int (*encode)(void *self, size_t batch, const double *x, double *inputs);
    /* Chain dL/d(inputs) back to dL/dx (overwrite g_x). */
    int (*encode_backward)(void *self, size_t batch, const double *x,
                           const double *g_inputs, double *g_x);
} qd_encoder_vt;

/* Ansatz: appends trainable ops. */
typedef struct qd_ansatz_vt {
    QD_VT_HEADER;
    /* Append ops; weights this ansatz uses start at c->n_weights. */
    int (*build)(void *self, qd_circuit *c);
    /* Initialise its n weights (as added by build) from rng. */
    int (*init_weights)(void *self, qd_rng *rng, size_t n, double *w);
} qd_ansatz_vt;

/* Observable: a set of measured outputs, each a sum of k-local Hermitian
 * terms whose matrices depend on the observable's own parameters. */
typedef struct qd_observable_vt {
    QD_VT_HEADER;
    /* Describe outputs and terms for a circuit of n_wires (spec is
     * caller-owned; fill it, freed with qd_obs_spec_free). */
    int (*build)(void *self, uint32_t n_wires, qd_obs_spec *spec);
    /* Number of real parameters (0 for a fixed observable). */
    size_t (*n_params)(void *self);
    /* Initialise the n_params() parameters from rng. Called at every fresh
     * initialisation even when n_params() is 0: a fixed observable draws its
     * fixed matrices here (params may then be NULL), so fixed and trainable
     * variants consume the same rng stream. */
    int (*init_params)(void *self, qd_rng *rng, double *params);
    /* Term matrices (spec->matrix_len complex entries) from params. */
    int (*matrices)(void *self, const double *params, double complex *mats);
    /* Given G_t = dL/dH_t for every term, in the convention
     *     dL = Re sum_ij conj(G_t[i][j]) dH_t[i][j],
     * ADD dL/dparams into g_params. For expectation terms the simulator
     * supplies G_t = sum_b g_b rho_b (rho_b the reduced density matrix of
     * sample b on the term's wires), since d Tr(rho H) = Tr(rho dH). */
    int (*matrices_backward)(void *self, const double *params,
                             const double complex *g_mats, double *g_params);
} qd_observable_vt;

/* One batched circuit execution request. */
typedef struct qd_sim_job {
    uint32_t struct_size;
    const qd_circuit *circuit;
    const qd_obs_spec *obs;
    const double complex *obs_mats;  /* obs->matrix_len entries */
    size_t batch;
    const double *inputs;            /* batch x circuit->n_inputs */
    const double *weights;           /* circuit->n_weights */
} qd_sim_job;

typedef struct qd_sim_stats {
    uint64_t executions;   /* circuit executions (one per sample per
                              forward; gradient methods add theirs) */
    uint64_t shots;        /* shots drawn (0 for exact expectations) */
} qd_sim_stats;

typedef struct qd_simulator_vt {
    QD_VT_HEADER;
    /* expect[b * n_outputs + o] */
    int (*forward)(void *self, const qd_sim_job *job, double *expect);
    /* Given g_expect = dL/d(expect) (batch x n_outputs) write (overwrite):
     *   g_weights [n_weights]            dL/dweights (summed over the batch),
     *   g_inputs  [batch x n_inputs]     dL/dinputs,
     *   g_mats    [obs->matrix_len]      G_t = dL/dH_t in the observable's
     *                                    convention: sum_b g[b][out_t] rho_b,
     *                                    rho_b the reduced density matrix of
     *                                    sample b on the term's wires (its
     *                                    row-major 2^k x 2^k layout matches the
     *                                    term matrix).
     * Any of the three may be NULL when not needed. */
    int (*backward)(void *self, const qd_sim_job *job, const double *g_expect,
                    double *g_weights, double *g_inputs, double complex *g_mats);
    void (*stats)(void *self, qd_sim_stats *out);
} qd_simulator_vt;

/* Dataset: loads one split into a caller-owned qd_dataset. */
typedef struct qd_dataset_vt {
    QD_VT_HEADER;
    int (*load)(void *self, qd_split split, qd_dataset *out);
} qd_dataset_vt;

/* Distiller: see qdistill/distill.h for the context and result types. */
struct qd_distill_ctx;
struct qd_synset;
struct qd_blob;
typedef struct qd_distill_metrics {
    double loss;           /* outer loss of this iteration */
    double lr_mean, lr_min, lr_max;   /* learned step sizes, when any */
    double extra[4];       /* distiller-specific columns (named in vtable) */
} qd_distill_metrics;

typedef struct qd_distiller_vt {
    QD_VT_HEADER;
    /* Prepare: allocate and initialise the synthetic set. */
    int (*start)(void *self, const struct qd_distill_ctx *ctx);
    /* Total outer iterations the configuration asks for. */
    uint64_t (*n_iterations)(void *self);
    /* One outer iteration. */
    int (*iterate)(void *self, const struct qd_distill_ctx *ctx, uint64_t it,
                   qd_distill_metrics *m);
    /* Current synthetic set (copied into caller-owned out). */
    int (*result)(void *self, struct qd_synset *out);
    /* Serialise / restore the complete state (for checkpoints). */
    int (*save)(void *self, struct qd_blob *out);
    int (*restore)(void *self, const void *data, size_t len);
    const char *extra_names[4];    /* names of qd_distill_metrics.extra */
} qd_distiller_vt;

/* ------------------------------------------------------------------------
 * Descriptor
 * ---------------------------------------------------------------------- */

typedef struct qd_plugin_desc {
    uint32_t abi_version;     /* QD_ABI_VERSION */
    uint32_t struct_size;     /* sizeof(qd_plugin_desc) */
    uint32_t kind;            /* qd_kind */
    const char *name;         /* unique per kind, [a-z0-9_]+ */
    const char *version;      /* "1.0.0" */
    const char *summary;      /* one line */
    const qd_param *params;   /* NULL-name terminated, may be NULL */
    const void *vtable;       /* the kind's qd_*_vt, starting with struct_size */
} qd_plugin_desc;

typedef const qd_plugin_desc *const *(*qd_plugin_entry_fn)(void);

/* Convenience for plugin sources. */
#define QD_PLUGIN_DESC_INIT(kind_, name_, version_, summary_, params_, vt_) \
    { QD_ABI_VERSION, sizeof(qd_plugin_desc), (kind_), (name_), (version_), \
      (summary_), (params_), (vt_) }

/* Name of a kind ("encoder", ...), NULL when unknown. */
QD_EXPORT const char *qd_kind_name(int kind);
/* Kind from its name, 0 when unknown. */
QD_EXPORT int qd_kind_from_name(const char *name);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_PLUGIN_H */
