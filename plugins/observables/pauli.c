/* Observable `pauli`: each output is a sum of coefficient-weighted Pauli
 * words. A word is written sparsely, as whitespace-separated factors
 * "<P><wire>" with P in X, Y, Z (I<wire> factors are allowed and ignored),
 * e.g. "Z0 Z1", "X2", "Y0 Z3 X5"; "I" alone is the identity. Its matrix is
 * the Kronecker product of the factors in the order written (first factor =
 * most significant, as circuit.h prescribes), on at most 6 distinct wires.
 * With trainable: true the coefficients are the observable's parameters. */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/plugin.h"

static const qd_param term_fields[] = {
    {"word", QD_PARAM_STRING, QD_PARAM_REQUIRED, NULL, 0, 0, NULL, 0, NULL,
     "Pauli word: factors <P><wire> separated by spaces, P in I|X|Y|Z "
     "(\"Z0 Z1\", \"X2\"); \"I\" = identity"},
    {"coeff", QD_PARAM_DOUBLE, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, "1", -1e12,
     1e12, NULL, 0, NULL,
     "real coefficient of the word"},
    {"output", QD_PARAM_INT, QD_PARAM_HAS_MIN | QD_PARAM_HAS_MAX, NULL, 0,
     65535, NULL, 0, NULL,
     "output the term adds to (unset = the term's position in the list); "
     "every output 0..max needs a term"},
    {NULL, 0, 0, NULL, 0, 0, NULL, 0, NULL, NULL},
};

static const qd_param params[] = {
    {"terms", QD_PARAM_LIST, QD_PARAM_REQUIRED | QD_PARAM_HAS_MIN, NULL, 1, 0,
     NULL, QD_PARAM_MAP, term_fields,
     "list of {word, coeff, output}: each output is the sum of its terms"},
    {"trainable", QD_PARAM_BOOL, 0, "false", 0, 0, NULL, 0, NULL,
     "true = the coefficients are trainable parameters (initialised to coeff)"},
    {NULL, 0, 0, NULL, 0, 0, NULL, 0, NULL, NULL},
};

typedef struct pterm {
    uint32_t n;                       /* factors (0 = identity) */
    char pauli[QD_OBS_MAX_WIRES];     /* 'X', 'Y', 'Z' */
    uint32_t wires[QD_OBS_MAX_WIRES];
    double coeff;
    uint32_t output;
    char where[160];                  /* "file:line:col" of the word */
} pterm;

typedef struct pauli_obs {
    const qd_host *host;
    int trainable;
    size_t n_terms;
    pterm *terms;
    uint32_t n_outputs;
    size_t matrix_len;
    double complex *words;            /* unscaled word matrices (build) */
} pauli_obs;

static void po_destroy(void *self)
{
    pauli_obs *p = self;
    if (p) {
        free(p->terms);
        free(p->words);
    }
    free(p);
}

static void where_of(const qd_node *n, char *buf, size_t len)
{
    snprintf(buf, len, "%s:%d:%d", qd_node_file(n) ? qd_node_file(n) : "<config>",
             qd_node_line(n), qd_node_col(n));
}

/* Parse one word into t; returns 0 or writes a message into msg. */
static int parse_word(const char *s, pterm *t, char *msg, size_t len)
{
    t->n = 0;
    const char *p = s;
    while (*p) {
        while (isspace((unsigned char)*p))
            p++;
        if (!*p)
            break;
        char c = *p++;
        if (c != 'I' && c != 'X' && c != 'Y' && c != 'Z') {
            snprintf(msg, len,
                     "Pauli word \"%s\": '%c' is not I, X, Y or Z (syntax: "
                     "\"Z0 X2\")",
                     s, c);
            return -1;
        }
        if (!isdigit((unsigned char)*p)) {
            if (c == 'I' && (!*p || isspace((unsigned char)*p)))
                continue;
            snprintf(msg, len,
                     "Pauli word \"%s\": factor '%c' needs a wire index "
                     "(syntax: \"Z0 X2\")",
                     s, c);
            return -1;
        }
        unsigned long w = 0;
        while (isdigit((unsigned char)*p)) {
            w = w * 10 + (unsigned long)(*p++ - '0');
            if (w > 1000000) {
                snprintf(msg, len, "Pauli word \"%s\": wire index too large", s);
                return -1;
            }
        }
        if (*p && !isspace((unsigned char)*p)) {
            snprintf(msg, len,
                     "Pauli word \"%s\": factors are separated by spaces "
                     "(syntax: \"Z0 X2\")",
                     s);
            return -1;
        }
        if (c == 'I')
            continue;
        for (uint32_t i = 0; i < t->n; i++)
            if (t->wires[i] == w) {
                snprintf(msg, len,
                         "Pauli word \"%s\": wire %lu appears twice", s, w);
                return -1;
            }
        if (t->n == QD_OBS_MAX_WIRES) {
            snprintf(msg, len,
                     "Pauli word \"%s\": more than %d non-identity factors",
                     s, QD_OBS_MAX_WIRES);
            return -1;
        }
        t->pauli[t->n] = c;
        t->wires[t->n++] = (uint32_t)w;
    }
    return 0;
}

static int po_create(const qd_host *h, void **self)
{
    pauli_obs *p = calloc(1, sizeof *p);
    if (!p)
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    p->host = h;
    p->trainable = h->get_bool(h, "trainable");
    const qd_node *tn = h->get_node(h, "terms");
    size_t n = qd_node_len(tn);
    if (qd_node_kind(tn) != QD_NODE_SEQ || n == 0) {
        po_destroy(p);
        return h->node_error(h, tn, QD_ERR_INVALID,
                             "terms must be a non-empty list of {word, coeff, "
                             "output}");
    }
    p->terms = calloc(n, sizeof *p->terms);
    if (!p->terms) {
        po_destroy(p);
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    }
    p->n_terms = n;
    long long max_out = -1;
    for (size_t i = 0; i < n; i++) {
        const qd_node *it = qd_node_at(tn, i);
        pterm *t = &p->terms[i];
        const qd_node *wn = qd_node_get(it, "word");
        const char *word = qd_node_str(wn);
        if (!word) {
            po_destroy(p);
            return h->node_error(h, wn ? wn : it, QD_ERR_INVALID,
                                 "terms[%zu] needs a word (e.g. \"Z0 Z1\")", i);
        }
        char msg[512];
        if (parse_word(word, t, msg, sizeof msg)) {
            po_destroy(p);
            return h->node_error(h, wn, QD_ERR_INVALID, "terms[%zu]: %s", i,
                                 msg);
        }
        where_of(wn, t->where, sizeof t->where);
        t->coeff = 1.0;
        const qd_node *cn = qd_node_get(it, "coeff");
        if (cn && (qd_node_as_double(cn, &t->coeff, NULL) ||
                   !isfinite(t->coeff))) {
            po_destroy(p);
            return h->node_error(h, cn, QD_ERR_INVALID,
                                 "terms[%zu].coeff must be a finite number", i);
        }
        long long out = (long long)i;
        const qd_node *on = qd_node_get(it, "output");
        if (on && (qd_node_as_int(on, &out, NULL) || out < 0 || out > 65535)) {
            po_destroy(p);
            return h->node_error(h, on, QD_ERR_INVALID,
                                 "terms[%zu].output must be an int in "
                                 "[0, 65535]",
                                 i);
        }
        t->output = (uint32_t)out;
        if (out > max_out)
            max_out = out;
    }
    p->n_outputs = (uint32_t)(max_out + 1);
    for (uint32_t o = 0; o < p->n_outputs; o++) {
        size_t i = 0;
        while (i < n && p->terms[i].output != o)
            i++;
        if (i == n) {
            uint32_t no = p->n_outputs;
            po_destroy(p);
            return h->node_error(h, tn, QD_ERR_INVALID,
                                 "output %u has no term (outputs must be "
                                 "0..%u without gaps)",
                                 o, no - 1);
        }
    }
    *self = p;
    return QD_OK;
}

/* 2x2 Pauli matrix entry. */
static double complex pauli_entry(char c, unsigned r, unsigned s)
{
    switch (c) {
    case 'X': return r != s ? 1.0 : 0.0;
    case 'Y': return r == s ? 0.0 : (r == 0 ? -I : I);
    case 'Z': return r != s ? 0.0 : (r == 0 ? 1.0 : -1.0);
    default: return r == s ? 1.0 : 0.0;
    }
}

static int po_build(void *self, uint32_t n_wires, qd_obs_spec *spec)
{
    pauli_obs *p = self;
    const qd_host *h = p->host;
    if (n_wires == 0)
        return h->error(h, QD_ERR_INVALID, "circuit has no wires to measure");
    size_t len = 0;
    for (size_t i = 0; i < p->n_terms; i++) {
        const pterm *t = &p->terms[i];
        for (uint32_t f = 0; f < t->n; f++)
            if (t->wires[f] >= n_wires)
                return h->error(h, QD_ERR_INVALID,
                                "%s: terms[%zu] acts on wire %u, the circuit "
                                "has %u wires",
                                t->where, i, t->wires[f], n_wires);
        uint32_t k = t->n ? t->n : 1;
        len += (size_t)1 << (2 * k);
    }
    qd_obs_term *terms = calloc(p->n_terms, sizeof *terms);
    double complex *words = malloc(len * sizeof *words);
    if (!terms || !words) {
        free(terms);
        free(words);
        return h->error(h, QD_ERR_NOMEM, "out of memory");
    }
    size_t off = 0;
    for (size_t i = 0; i < p->n_terms; i++) {
        const pterm *t = &p->terms[i];
        qd_obs_term *ot = &terms[i];
        ot->output = t->output;
        ot->matrix = off;
        if (t->n == 0) {
            /* The identity: put it on wire 0 so every simulator can
             * treat it like any 1-local term. */
            ot->n_wires = 1;
            ot->wires[0] = 0;
            words[off] = 1;
            words[off + 1] = 0;
            words[off + 2] = 0;
            words[off + 3] = 1;
            off += 4;
            continue;
        }
        ot->n_wires = t->n;
        memcpy(ot->wires, t->wires, t->n * sizeof *t->wires);
        size_t d = (size_t)1 << t->n;
        for (size_t r = 0; r < d; r++)
            for (size_t s = 0; s < d; s++) {
                double complex v = 1.0;
                for (uint32_t f = 0; f < t->n; f++) {
                    unsigned sh = t->n - 1 - f;
                    v *= pauli_entry(t->pauli[f], (unsigned)(r >> sh) & 1u,
                                     (unsigned)(s >> sh) & 1u);
                }
                words[off + r * d + s] = v;
            }
        off += d * d;
    }
    free(p->words);
    p->words = words;
    p->matrix_len = len;
    spec->n_outputs = p->n_outputs;
    spec->n_terms = (uint32_t)p->n_terms;
    spec->terms = terms;
    spec->matrix_len = len;
    return QD_OK;
}

static size_t po_n_params(void *self)
{
    pauli_obs *p = self;
    return p->trainable ? p->n_terms : 0;
}

static int po_init_params(void *self, qd_rng *rng, double *params)
{
    pauli_obs *p = self;
    (void)rng;
    if (p->trainable)
        for (size_t i = 0; i < p->n_terms; i++)
            params[i] = p->terms[i].coeff;
    return QD_OK;
}

static size_t term_dim2(const pterm *t)
{
    return (size_t)1 << (2 * (t->n ? t->n : 1));
}

static int po_matrices(void *self, const double *params, double complex *mats)
{
    pauli_obs *p = self;
    if (!p->words)
        return p->host->error(p->host, QD_ERR_INVALID,
                              "matrices called before build");
    size_t off = 0;
    for (size_t i = 0; i < p->n_terms; i++) {
        double c = p->trainable ? params[i] : p->terms[i].coeff;
        if (!isfinite(c))
            return p->host->error(p->host, QD_ERR_NUMERIC,
                                  "coefficient of term %zu is not finite", i);
        size_t d2 = term_dim2(&p->terms[i]);
        for (size_t e = 0; e < d2; e++)
            mats[off + e] = c * p->words[off + e];
        off += d2;
    }
    return QD_OK;
}

/* H_t = c_t P_t, so dL/dc_t = Re sum conj(G_t) P_t. */
static int po_matrices_backward(void *self, const double *params,
                                const double complex *g_mats, double *g_params)
{
    pauli_obs *p = self;
    (void)params;
    if (!p->trainable)
        return QD_OK;
    if (!p->words)
        return p->host->error(p->host, QD_ERR_INVALID,
                              "matrices_backward called before build");
    size_t off = 0;
    for (size_t i = 0; i < p->n_terms; i++) {
        size_t d2 = term_dim2(&p->terms[i]);
        double s = 0.0;
        for (size_t e = 0; e < d2; e++)
            s += creal(conj(g_mats[off + e]) * p->words[off + e]);
        g_params[i] += s;
        off += d2;
    }
    return QD_OK;
}

static const qd_observable_vt vt = {
    sizeof(qd_observable_vt), po_create, po_destroy, po_build,
    po_n_params, po_init_params, po_matrices, po_matrices_backward,
};

static const qd_plugin_desc desc = QD_PLUGIN_DESC_INIT(
    QD_KIND_OBSERVABLE, "pauli", "1.0.0",
    "sums of coefficient-weighted Pauli words (\"Z0 Z1\"), one sum per output",
    params, &vt);

static const qd_plugin_desc *const descs[] = {&desc, NULL};

QD_PLUGIN_EXPORT const qd_plugin_desc *const *qd_plugin_entry(void)
{
    return descs;
}
