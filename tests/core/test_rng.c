/* PCG32 against the reference implementation's published output, and the
 * statistical sanity of the derived variates. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "qdistill/rng.h"

Test(rng, reference_vectors)
{
    /* pcg32-demo output for pcg32_srandom_r(&rng, 42u, 54u). */
    static const uint32_t expect[] = {0xa15c02b7, 0x7b47f409, 0xba1d3330,
                                      0x83d2f293, 0xbfa4784b, 0xcbed606e};
    qd_rng r;
    qd_rng_seed(&r, 42u, 54u);
    for (size_t i = 0; i < 6; ++i)
        cr_expect_eq(qd_rng_u32(&r), expect[i], "output %zu", i);
}

Test(rng, bounded_reference)
{
    static const uint32_t expect[] = {3, 3, 2, 1, 1, 4};
    qd_rng r;
    qd_rng_seed(&r, 42u, 54u);
    for (size_t i = 0; i < 6; ++i)
        cr_expect_eq(qd_rng_bounded(&r, 6), expect[i], "bounded(6) draw %zu", i);
}

Test(rng, bounded_is_unbiased_for_awkward_bound)
{
    /* bound = 3 * 2^30: a plain modulo would make the low third twice as
     * likely as the top; rejection makes the three thirds equal. */
    qd_rng r;
    qd_rng_seed(&r, 7, 11);
    const uint32_t bound = 3u << 30;
    long cnt[3] = {0};
    const int n = 300000;
    for (int i = 0; i < n; ++i)
        cnt[qd_rng_bounded(&r, bound) / (1u << 30)]++;
    for (int k = 0; k < 3; ++k)
        cr_expect(fabs(cnt[k] / (double)n - 1.0 / 3) < 0.005, "third %d: %ld", k, cnt[k]);
}

Test(rng, uniform_has_53_bits_in_unit_interval)
{
    qd_rng r;
    qd_rng_seed(&r, 1, 2);
    double mean = 0;
    int fine = 0;
    for (int i = 0; i < 100000; ++i) {
        double u = qd_rng_uniform(&r);
        cr_assert(u >= 0.0 && u < 1.0);
        mean += u;
        /* more than 32 bits of resolution: some draws are not multiples of 2^-32 */
        if (fmod(u * 4294967296.0, 1.0) != 0.0)
            fine++;
    }
    cr_expect(fabs(mean / 100000 - 0.5) < 0.005);
    cr_expect(fine > 90000);
}

Test(rng, normal_moments_and_spare_in_state)
{
    qd_rng r;
    qd_rng_seed(&r, 3, 4);
    double s1 = 0, s2 = 0, s4 = 0;
    const int n = 200000;
    for (int i = 0; i < n; ++i) {
        double z = qd_rng_normal(&r);
        s1 += z;
        s2 += z * z;
        s4 += z * z * z * z;
    }
    cr_expect(fabs(s1 / n) < 0.01);
    cr_expect(fabs(s2 / n - 1.0) < 0.015);
    cr_expect(fabs(s4 / n - 3.0) < 0.08);

    /* A copy taken between the two halves of a pair continues identically:
     * the cached spare lives in the struct (checkpointable). */
    qd_rng a;
    qd_rng_seed(&a, 5, 6);
    (void)qd_rng_normal(&a);
    cr_assert(a.has_spare);
    qd_rng b;
    memcpy(&b, &a, sizeof b);
    for (int i = 0; i < 5; ++i)
        cr_expect_eq(qd_rng_normal(&a), qd_rng_normal(&b));
}

Test(rng, derived_streams_are_stable_and_distinct)
{
    qd_rng a, b, c;
    qd_rng_derive(&a, 1, "model.init");
    qd_rng_derive(&b, 1, "model.init");
    qd_rng_derive(&c, 1, "distill");
    int same = 1, diff = 0;
    for (int i = 0; i < 16; ++i) {
        uint32_t x = qd_rng_u32(&a), y = qd_rng_u32(&b), z = qd_rng_u32(&c);
        same &= x == y;
        diff += x != z;
    }
    cr_expect(same);
    cr_expect(diff >= 15);
    qd_rng d;
    qd_rng_derive(&d, 2, "model.init");
    qd_rng_derive(&a, 1, "model.init");
    cr_expect_neq(qd_rng_u32(&a), qd_rng_u32(&d), "seed must change the stream");
}

Test(rng, shuffle_is_a_permutation)
{
    qd_rng r;
    qd_rng_seed(&r, 9, 9);
    size_t idx[100];
    for (size_t i = 0; i < 100; ++i)
        idx[i] = i;
    qd_rng_shuffle(&r, idx, 100);
    int seen[100] = {0}, moved = 0;
    for (size_t i = 0; i < 100; ++i) {
        seen[idx[i]]++;
        moved += idx[i] != i;
    }
    for (size_t i = 0; i < 100; ++i)
        cr_expect_eq(seen[i], 1);
    cr_expect(moved > 80);
}
