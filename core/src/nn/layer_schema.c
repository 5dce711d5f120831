/*
 * Layer types and their configuration schemas.
 *
 * Every schema lists every key a layer of that type accepts, including the
 * keys common to all layers (type, name, input/inputs), so a layer mapping
 * validates with qd_schema_validate(schema, layer, NULL, ...) alone. The model
 * builder reads the same schemas for defaults, so a model loaded straight
 * from YAML (without manifest validation) behaves identically.
 */
#include <string.h>

#include "qdistill/model.h"

#define LAYER_TYPES                                                         \
    "conv2d|maxpool2d|avgpool2d|linear|relu|tanh|sigmoid|flatten|add|mix|"  \
    "dropout|quantum"

#define INITS                                                               \
    "pytorch|xavier_normal|xavier_uniform|kaiming_normal|kaiming_uniform|"  \
    "zeros"

#define P_TYPE                                                              \
    {"type", QD_PARAM_ENUM, QD_PARAM_REQUIRED, NULL, 0, 0, LAYER_TYPES, 0,  \
     NULL, "layer type"}
#define P_NAME                                                              \
    {"name", QD_PARAM_STRING, 0, NULL, 0, 0, NULL, 0, NULL,                 \
     "layer name (default <type><index>, index from 0)"}
#define P_INPUT                                                             \
    {"input", QD_PARAM_STRING, 0, NULL, 0, 0, NULL, 0, NULL,                \
     "name of an earlier layer to read (default: the previous layer)"}
#define P_INPUTS2                                                           \
    {"inputs", QD_PARAM_LIST, QD_PARAM_REQUIRED | QD_PARAM_HAS_MIN |        \
     QD_PARAM_HAS_MAX, NULL, 2, 2, NULL, QD_PARAM_STRING, NULL,             \
     "names of the two earlier layers [a, b] to combine"}
#define P_INIT                                                              \
    {"init", QD_PARAM_ENUM, 0, "pytorch", 0, 0, INITS, 0, NULL,             \
     "initialiser: pytorch = U(+-1/sqrt(fan_in)) for weight and bias"}
#define P_BIAS                                                              \
    {"bias", QD_PARAM_BOOL, 0, "true", 0, 0, NULL, 0, NULL,                 \
     "learn an additive bias"}
#define P_END {NULL, 0, 0, NULL, 0, 0, NULL, 0, NULL, NULL}

static const qd_param conv2d_schema[] = {
    P_TYPE, P_NAME, P_INPUT,
    {"out_channels", QD_PARAM_INT, QD_PARAM_REQUIRED | QD_PARAM_HAS_MIN |
     QD_PARAM_HAS_MAX, NULL, 1, 65536, NULL, 0, NULL, "output channels"},
    {"kernel", QD_PARAM_INT, QD_PARAM_REQUIRED | QD_PARAM_HAS_MIN |
     QD_PARAM_HAS_MAX, NULL, 1, 1024, NULL, 0, NULL, "square kernel size"},
    {"stride", QD_PARAM_INT, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "1", 1,
     1024, NULL, 0, NULL, "stride"},
    {"padding", QD_PARAM_STRING, 0, "0", 0, 0, NULL, 0, NULL,
     "zero padding: an int >= 0, or fit:N = the padding that makes the "
     "output N x N"},
    P_BIAS, P_INIT, P_END};

static const qd_param pool_schema[] = {
    P_TYPE, P_NAME, P_INPUT,
    {"kernel", QD_PARAM_INT, QD_PARAM_REQUIRED | QD_PARAM_HAS_MIN |
     QD_PARAM_HAS_MAX, NULL, 1, 1024, NULL, 0, NULL, "square window size"},
    {"stride", QD_PARAM_INT, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, NULL, 1,
     1024, NULL, 0, NULL, "stride (default: kernel)"},
    P_END};

static const qd_param linear_schema[] = {
    P_TYPE, P_NAME, P_INPUT,
    {"out", QD_PARAM_INT, QD_PARAM_REQUIRED | QD_PARAM_HAS_MIN |
     QD_PARAM_HAS_MAX, NULL, 1, 1 << 24, NULL, 0, NULL, "output features"},
    P_BIAS, P_INIT, P_END};

static const qd_param plain_schema[] = {P_TYPE, P_NAME, P_INPUT, P_END};

static const qd_param add_schema[] = {P_TYPE, P_NAME, P_INPUTS2, P_END};

static const qd_param mix_schema[] = {
    P_TYPE, P_NAME, P_INPUTS2,
    {"alpha", QD_PARAM_DOUBLE, 0, "0.5", 0, 0, NULL, 0, NULL,
     "initial weight of the first input: alpha*a + (1-alpha)*b"},
    {"trainable", QD_PARAM_BOOL, 0, "true", 0, 0, NULL, 0, NULL,
     "learn alpha (false: alpha stays at its initial value)"},
    P_END};

static const qd_param dropout_schema[] = {
    P_TYPE, P_NAME, P_INPUT,
    {"rate", QD_PARAM_DOUBLE, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "0", 0,
     0.99, NULL, 0, NULL,
     "probability of zeroing an activation while training (0 = identity)"},
    P_END};

static const qd_param quantum_schema[] = {
    P_TYPE, P_NAME, P_INPUT,
    {"wires", QD_PARAM_INT, QD_PARAM_REQUIRED | QD_PARAM_HAS_MIN |
     QD_PARAM_HAS_MAX, NULL, 1, 24, NULL, 0, NULL, "qubits of the circuit"},
    {"encoder", QD_PARAM_MAP, QD_PARAM_REQUIRED, NULL, 0, 0, NULL, 0, NULL,
     "encoder plugin section {plugin: NAME, ...}"},
    {"ansatz", QD_PARAM_MAP, QD_PARAM_REQUIRED, NULL, 0, 0, NULL, 0, NULL,
     "ansatz plugin section {plugin: NAME, ...}"},
    {"observable", QD_PARAM_MAP, QD_PARAM_REQUIRED, NULL, 0, 0, NULL, 0, NULL,
     "observable plugin section {plugin: NAME, ...}"},
    {"simulator", QD_PARAM_MAP, QD_PARAM_REQUIRED, NULL, 0, 0, NULL, 0, NULL,
     "simulator plugin section {plugin: NAME, ...}"},
    P_END};

typedef struct layer_type_info {
    const char *name;
    const qd_param *schema;
    const char *doc;
} layer_type_info;

static const layer_type_info types[] = {
    {"conv2d", conv2d_schema,
     "2-D convolution (im2col + GEMM), weight out x in x k x k and bias"},
    {"maxpool2d", pool_schema, "max pooling over k x k windows"},
    {"avgpool2d", pool_schema, "average pooling over k x k windows"},
    {"linear", linear_schema,
     "fully connected: y = W x + b on the flattened input"},
    {"relu", plain_schema, "max(x, 0)"},
    {"tanh", plain_schema, "hyperbolic tangent"},
    {"sigmoid", plain_schema, "logistic function 1/(1+exp(-x))"},
    {"flatten", plain_schema, "reshape C x H x W into one feature vector "
     "(row-major, as PyTorch)"},
    {"add", add_schema, "elementwise sum a + b of two equally shaped inputs"},
    {"mix", mix_schema,
     "alpha*a + (1-alpha)*b with a (trainable) scalar alpha"},
    {"dropout", dropout_schema,
     "zero activations with probability rate while training, scale the "
     "rest by 1/(1-rate)"},
    {"quantum", quantum_schema,
     "parametric quantum circuit: encoder + ansatz measured by an "
     "observable on a simulator"},
};

#define N_TYPES (sizeof types / sizeof types[0])

QD_EXPORT size_t qd_layer_type_count(void)
{
    return N_TYPES;
}

QD_EXPORT const char *qd_layer_type_name(size_t i)
{
    return i < N_TYPES ? types[i].name : NULL;
}

static const layer_type_info *find_type(const char *type)
{
    if (!type)
        return NULL;
    for (size_t i = 0; i < N_TYPES; i++)
        if (strcmp(types[i].name, type) == 0)
            return &types[i];
    return NULL;
}

QD_EXPORT const qd_param *qd_layer_schema(const char *type)
{
    const layer_type_info *t = find_type(type);
    return t ? t->schema : NULL;
}

QD_EXPORT const char *qd_layer_type_doc(const char *type)
{
    const layer_type_info *t = find_type(type);
    return t ? t->doc : NULL;
}
