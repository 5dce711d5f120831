/*
 * Internal interface of core/src/distill: the finite-difference kernel with
 * caller-owned scratch, so hot loops (the unroll backward) allocate nothing
 * per call.
 */
#ifndef QD_DISTILL_INTERNAL_H
#define QD_DISTILL_INTERNAL_H

#include "qdistill/distill.h"

/* The default relative step of qd_fd_second_order (see second_order.c). */
#define FD2_DEFAULT_EPS_REL 1e-5

/* Scratch for fd2_eval: grown on demand, never shrunk. */
typedef struct fd2_scratch {
    double *w;        /* w +- e v           (n_params) */
    double *g;        /* gradient at w - e v (n_params) */
    double *gx;       /* input gradient at w - e v (batch x input_size) */
    size_t n_cap, gx_cap;
} fd2_scratch;

int fd2_reserve(fd2_scratch *s, size_t n_params, size_t n_x, qd_error *err);
void fd2_free(fd2_scratch *s);

/* qd_fd_second_order with explicit scratch (already reserved for n_params
 * and batch * input_size). */
int fd2_eval(qd_model *m, fd2_scratch *s, const double *w, size_t batch,
             const double *x, const int32_t *y, const double *v,
             double eps_rel, double *hv, double *xv, qd_error *err);

/* Euclidean norm, accumulated in a fixed order (deterministic). */
double fd2_norm(const double *v, size_t n);

#endif /* QD_DISTILL_INTERNAL_H */
