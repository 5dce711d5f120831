/* PCG32 (XSH-RR 64/32) after O'Neill's reference pcg32_*_r functions, plus
 * the variates the framework draws. */
#include <math.h>
#include <string.h>

#include "qdistill/rng.h"

#define PCG_MULT 6364136223846793005ULL

static inline void step(qd_rng *r)
{
    r->state = r->state * PCG_MULT + r->inc;
}

void qd_rng_seed(qd_rng *r, uint64_t initstate, uint64_t initseq)
{
    memset(r, 0, sizeof *r);
    r->state = 0U;
    r->inc = (initseq << 1u) | 1u;
    step(r);
    r->state += initstate;
    step(r);
}

uint32_t qd_rng_u32(qd_rng *r)
{
    uint64_t old = r->state;
    step(r);
    uint32_t xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
    uint32_t rot = (uint32_t)(old >> 59u);
    return (xorshifted >> rot) | (xorshifted << ((-rot) & 31));
}

uint32_t qd_rng_bounded(qd_rng *r, uint32_t bound)
{
    /* Reject the low 2^32 mod bound values so every residue is equally
     * likely (the reference pcg32_boundedrand_r). */
    uint32_t threshold = -bound % bound;
    for (;;) {
        uint32_t v = qd_rng_u32(r);
        if (v >= threshold)
            return v % bound;
    }
}

double qd_rng_uniform(qd_rng *r)
{
    uint64_t hi = qd_rng_u32(r) >> 5;   /* 27 bits */
    uint64_t lo = qd_rng_u32(r) >> 6;   /* 26 bits */
    return (double)(hi * 67108864ULL + lo) * (1.0 / 9007199254740992.0);
}

double qd_rng_normal(qd_rng *r)
{
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    double u, v, s;
    do {
        u = 2.0 * qd_rng_uniform(r) - 1.0;
        v = 2.0 * qd_rng_uniform(r) - 1.0;
        s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    double f = sqrt(-2.0 * log(s) / s);
    r->spare = v * f;
    r->has_spare = 1;
    return u * f;
}

/* 64-bit FNV-1a then splitmix64: a stable hash of the component name. */
static uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void qd_rng_derive(qd_rng *r, uint64_t seed, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const unsigned char *p = (const unsigned char *)(name ? name : ""); *p; ++p) {
        h ^= *p;
        h *= 0x100000001b3ULL;
    }
    /* Different names select different sequences (increments), and the
     * state is mixed as well so that streams do not start correlated. */
    qd_rng_seed(r, mix64(seed ^ mix64(h)), mix64(h + seed));
}

void qd_rng_shuffle(qd_rng *r, size_t *idx, size_t n)
{
    for (size_t i = n; i > 1; --i) {
        size_t j = qd_rng_bounded(r, (uint32_t)i);
        size_t t = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = t;
    }
}
