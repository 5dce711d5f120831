/*
 * qdistill/rng.h — PCG32 (O'Neill's pcg32, XSH-RR 64/32) and the variates
 * built on it.
 *
 * The whole generator state is this plain struct, including the cached spare
 * normal variate, so copying it (or writing it into a checkpoint) captures a
 * stream exactly: a resumed run draws the same numbers as an uninterrupted one.
 *
 * Streams: every component of a run (dataset, model init, each plugin, the
 * distiller, the evaluator) draws from its own stream, derived from the
 * manifest seed and a stable component name with qd_rng_derive(), so adding a
 * component or drawing more in one of them never shifts the others.
 */
#ifndef QDISTILL_RNG_H
#define QDISTILL_RNG_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qd_rng {
    uint64_t state;
    uint64_t inc;          /* always odd */
    double spare;          /* cached second normal variate */
    int has_spare;         /* 1 when spare is valid */
    int pad_;              /* explicit padding, keeps the layout stable */
} qd_rng;

/* pcg32_srandom_r(initstate, initseq): the reference seeding. */
QD_EXPORT void qd_rng_seed(qd_rng *rng, uint64_t initstate, uint64_t initseq);

/* Seed a stream for a named component of a run: the same (seed, name) always
 * yields the same stream, different names yield independent streams. */
QD_EXPORT void qd_rng_derive(qd_rng *rng, uint64_t seed, const char *name);

/* Next 32 uniformly distributed bits (pcg32_random_r). */
QD_EXPORT uint32_t qd_rng_u32(qd_rng *rng);

/* Uniform integer in [0, bound), unbiased (pcg32_boundedrand_r). bound > 0. */
QD_EXPORT uint32_t qd_rng_bounded(qd_rng *rng, uint32_t bound);

/* Uniform double in [0, 1) with 53 random bits. */
QD_EXPORT double qd_rng_uniform(qd_rng *rng);

/* Standard normal variate (Marsaglia polar method; the spare is cached in
 * the generator state). */
QD_EXPORT double qd_rng_normal(qd_rng *rng);

/* Fisher–Yates shuffle of idx[0..n). */
QD_EXPORT void qd_rng_shuffle(qd_rng *rng, size_t *idx, size_t n);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_RNG_H */
