/* Differentiable siamese augmentation (qdistill/augment.h): backward is the
 * exact adjoint of forward for every op and mode, identity settings leave
 * images unchanged, shifts / flips / cutouts / colour match their closed
 * forms, bilinear sampling reproduces bilinear functions exactly, the
 * transform is a function of the seed only, and bad strategies are refused
 * with a clear message. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/augment.h"
#include "qdistill/rng.h"

TestSuite(augment, .timeout = 60);

static double *randv(size_t n, uint64_t seed)
{
    qd_rng r;
    qd_rng_seed(&r, seed, 3);
    double *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++)
        v[i] = qd_rng_normal(&r);
    return v;
}

static double dot(const double *a, const double *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static qd_augment *make(const char *strategy, char mode, size_t C, size_t H,
                        size_t W, const qd_augment_params *p)
{
    qd_augment *a = NULL;
    qd_error err = {0};
    cr_assert_eq(qd_augment_create_ex(strategy, mode, p, C, H, W, &a, &err),
                 QD_OK, "%s: %s", strategy, err.msg);
    return a;
}

/* ---- adjoint ---- */

static void check_adjoint(const char *strategy, char mode, size_t B, size_t C,
                          size_t H, size_t W)
{
    const size_t n = B * C * H * W;
    qd_augment *a = make(strategy, mode, C, H, W, NULL);
    qd_error err = {0};
    double *y = malloc(n * sizeof *y), *y0 = malloc(n * sizeof *y0);
    double *z = calloc(n, sizeof *z), *gx = malloc(n * sizeof *gx);
    int moved = 0;
    for (uint64_t seed = 0; seed < 24; seed++) {
        double *x = randv(n, 100 + seed), *g = randv(n, 200 + seed);
        cr_assert_eq(qd_augment_apply(a, seed, B, x, y, &err), QD_OK, "%s",
                     err.msg);
        /* colour's brightness is an offset: the linear part is A(x) - A(0) */
        cr_assert_eq(qd_augment_apply(a, seed, B, z, y0, &err), QD_OK);
        qd_augment_step st[8];
        size_t ns = qd_augment_plan(a, seed, st, 8);
        int affine = 0;
        for (size_t k = 0; k < ns && k < 8; k++)
            affine |= strcmp(st[k].op, "color") == 0;
        for (size_t i = 0; i < n; i++) {
            if (!affine)
                cr_assert_eq(y0[i], 0.0, "%s: A(0) != 0 without colour",
                             strategy);
            y[i] -= y0[i];
        }
        cr_assert_eq(qd_augment_backward(a, seed, B, g, gx, &err), QD_OK,
                     "%s", err.msg);
        double lhs = dot(y, g, n), rhs = dot(x, gx, n);
        double scale = sqrt(dot(y, y, n) * dot(g, g, n)) + 1.0;
        cr_expect(fabs(lhs - rhs) <= 1e-12 * scale,
                  "%s mode %c seed %llu: <Jx,g> = %.17g, <x,J^T g> = %.17g",
                  strategy, mode, (unsigned long long)seed, lhs, rhs);
        for (size_t i = 0; i < n && !moved; i++)
            moved = fabs(y[i] - x[i]) > 1e-9;
        free(x);
        free(g);
    }
    if (strcmp(strategy, "none") != 0)
        cr_expect(moved, "%s mode %c never changed the images", strategy, mode);
    free(y);
    free(y0);
    free(z);
    free(gx);
    qd_augment_destroy(a);
}

Test(augment, backward_is_the_adjoint_of_forward)
{
    static const char *const strategies[] = {
        "crop", "flip", "scale", "rotate", "color", "cutout",
        "color_crop_flip_scale_rotate", "rotate_scale_cutout_crop_color_flip",
        "flip_flip", "none"};
    for (size_t s = 0; s < sizeof strategies / sizeof *strategies; s++)
        for (int m = 0; m < 2; m++) {
            check_adjoint(strategies[s], m ? 'M' : 'S', 2, 3, 7, 9);
            check_adjoint(strategies[s], m ? 'M' : 'S', 3, 1, 8, 8);
        }
}

/* ---- identities ---- */

static void expect_identity(const char *strategy, const qd_augment_params *p,
                            double tol)
{
    enum { B = 2, C = 3, H = 6, W = 7, N = B * C * H * W };
    qd_augment *a = make(strategy, 'M', C, H, W, p);
    double *x = randv(N, 7), y[N], g[N];
    qd_error err = {0};
    for (uint64_t seed = 0; seed < 10; seed++) {
        cr_assert_eq(qd_augment_apply(a, seed, B, x, y, &err), QD_OK);
        cr_assert_eq(qd_augment_backward(a, seed, B, x, g, &err), QD_OK);
        for (size_t i = 0; i < N; i++) {
            cr_expect(fabs(y[i] - x[i]) <= tol, "%s: y[%zu] %.17g vs %.17g",
                      strategy, i, y[i], x[i]);
            cr_expect(fabs(g[i] - x[i]) <= tol, "%s backward", strategy);
        }
    }
    free(x);
    qd_augment_destroy(a);
}

Test(augment, identity_settings_leave_images_unchanged)
{
    qd_augment_params p;
    qd_augment_params_default(&p);
    p.ratio_rotate = 0.0;
    expect_identity("rotate", &p, 1e-13);
    qd_augment_params_default(&p);
    p.ratio_scale = 1.0;
    expect_identity("scale", &p, 1e-13);
    qd_augment_params_default(&p);
    p.prob_flip = 0.0;
    expect_identity("flip", &p, 0.0);
    qd_augment_params_default(&p);
    p.ratio_crop_pad = 0.0;
    expect_identity("crop", &p, 0.0);
    qd_augment_params_default(&p);
    p.ratio_cutout = 0.0;
    expect_identity("cutout", &p, 0.0);
    p.ratio_rotate = 0.0;
    p.ratio_scale = 1.0;
    p.prob_flip = 0.0;
    p.ratio_crop_pad = 0.0;
    expect_identity("rotate_scale_flip_crop_cutout", &p, 1e-13);
    expect_identity("none", NULL, 0.0);
}

Test(augment, flip_mirrors_and_twice_is_identity)
{
    enum { C = 2, H = 3, W = 5, N = C * H * W };
    qd_augment_params p;
    qd_augment_params_default(&p);
    p.prob_flip = 1.0;
    qd_augment *a = make("flip", 'S', C, H, W, &p);
    double *x = randv(N, 3), y[N], z[N];
    qd_error err = {0};
    cr_assert_eq(qd_augment_apply(a, 1, 1, x, y, &err), QD_OK);
    for (size_t c = 0; c < C; c++)
        for (size_t i = 0; i < H; i++)
            for (size_t j = 0; j < W; j++)
                cr_expect_eq(y[(c * H + i) * W + j],
                             x[(c * H + i) * W + (W - 1 - j)]);
    cr_assert_eq(qd_augment_apply(a, 2, 1, y, z, &err), QD_OK);
    cr_expect(memcmp(z, x, sizeof z) == 0, "flip twice is not the identity");
    qd_augment_destroy(a);
    /* "flip_flip" in mode M: both flips happen with p = 1 */
    a = make("flip_flip", 'M', C, H, W, &p);
    cr_assert_eq(qd_augment_apply(a, 9, 1, x, y, &err), QD_OK);
    cr_expect(memcmp(y, x, sizeof y) == 0);
    qd_augment_destroy(a);
    free(x);
}

/* ---- determinism and siamese use ---- */

Test(augment, transform_is_a_function_of_the_seed)
{
    enum { B = 3, C = 3, H = 8, W = 8, D = C * H * W, N = B * D };
    qd_augment *a = make("color_crop_flip_scale_rotate", 'M', C, H, W, NULL);
    qd_augment *b = make("color_crop_flip_scale_rotate", 'M', C, H, W, NULL);
    double *x = randv(N, 5), y1[N], y2[N], y3[N], one[D];
    qd_error err = {0};
    cr_assert_eq(qd_augment_apply(a, 42, B, x, y1, &err), QD_OK);
    cr_assert_eq(qd_augment_apply(a, 7, B, x, y3, &err), QD_OK);  /* in between */
    cr_assert_eq(qd_augment_apply(b, 42, B, x, y2, &err), QD_OK);
    cr_expect(memcmp(y1, y2, sizeof y1) == 0, "same seed, different output");
    cr_expect(memcmp(y1, y3, sizeof y1) != 0, "seeds 42 and 7 agree");
    /* one transform for the whole batch: image i alone gives the same */
    for (size_t i = 0; i < B; i++) {
        cr_assert_eq(qd_augment_apply(b, 42, 1, x + i * D, one, &err), QD_OK);
        cr_expect(memcmp(one, y1 + i * D, sizeof one) == 0,
                  "image %zu transformed differently inside the batch", i);
    }
    /* different seeds give different draws (plans) across many seeds */
    qd_augment_step s1[5], s2[5];
    size_t differ = 0;
    for (uint64_t s = 0; s < 50; s++) {
        cr_assert_eq(qd_augment_plan(a, s, s1, 5), 5u);
        cr_assert_eq(qd_augment_plan(a, s + 1000, s2, 5), 5u);
        differ += memcmp(s1[3].v, s2[3].v, sizeof s1[3].v) != 0;
    }
    cr_expect(differ == 50, "scale factors repeated across seeds");
    free(x);
    qd_augment_destroy(a);
    qd_augment_destroy(b);
}

Test(augment, single_mode_draws_one_op_and_covers_all)
{
    qd_augment *a = make("crop_flip_scale_rotate_color_cutout", 'S', 1, 6, 6,
                         NULL);
    static const char *const ops[] = {"crop",  "flip",  "scale",
                                      "rotate", "color", "cutout"};
    int seen[6] = {0};
    for (uint64_t s = 0; s < 300; s++) {
        qd_augment_step st[4];
        cr_assert_eq(qd_augment_plan(a, s, st, 4), 1u);
        for (int k = 0; k < 6; k++)
            seen[k] += strcmp(st[0].op, ops[k]) == 0;
    }
    for (int k = 0; k < 6; k++)
        cr_expect(seen[k] > 20 && seen[k] < 90, "op %s drawn %d of 300",
                  ops[k], seen[k]);
    qd_augment_destroy(a);
    a = make("rotate_crop_color", 'M', 1, 6, 6, NULL);
    qd_augment_step st[4];
    cr_assert_eq(qd_augment_plan(a, 3, st, 4), 3u);
    cr_expect_str_eq(st[0].op, "rotate");
    cr_expect_str_eq(st[1].op, "crop");
    cr_expect_str_eq(st[2].op, "color");
    qd_augment_destroy(a);
}

/* ---- closed forms ---- */

Test(augment, crop_is_a_zero_padded_shift)
{
    enum { C = 2, H = 8, W = 8, N = C * H * W };
    qd_augment *a = make("crop", 'S', C, H, W, NULL);
    double *x = randv(N, 9), y[N];
    qd_error err = {0};
    int nonzero = 0, extreme = 0;
    for (uint64_t s = 0; s < 40; s++) {
        qd_augment_step st;
        cr_assert_eq(qd_augment_plan(a, s, &st, 1), 1u);
        long di = (long)st.v[0], dj = (long)st.v[1];
        /* int(8 * 0.125 + 0.5) = 1 pixel at most */
        cr_expect(labs(di) <= 1 && labs(dj) <= 1, "shift %ld %ld", di, dj);
        nonzero += di != 0 && dj != 0;
        extreme += di == 1 || dj == -1;
        cr_assert_eq(qd_augment_apply(a, s, 1, x, y, &err), QD_OK);
        for (long c = 0; c < C; c++)
            for (long i = 0; i < H; i++)
                for (long j = 0; j < W; j++) {
                    long si = i + di, sj = j + dj;
                    double want = si >= 0 && si < H && sj >= 0 && sj < W
                                      ? x[(c * H + si) * W + sj]
                                      : 0.0;
                    cr_expect_eq(y[(c * H + i) * W + j], want);
                }
    }
    cr_expect(nonzero > 0 && extreme > 0);
    free(x);
    qd_augment_destroy(a);
}

/* f(row, col) = 1 + 2 r + 3 c + 0.5 r c: bilinear interpolation reproduces
 * it exactly, nearest or linear-in-one-axis sampling would not. */
static double bil(double r, double c) { return 1.0 + 2.0 * r + 3.0 * c + 0.5 * r * c; }

Test(augment, scale_samples_bilinearly_with_zero_padding)
{
    enum { H = 7, W = 9 };
    double x[H * W], y[H * W];
    for (int i = 0; i < H; i++)
        for (int j = 0; j < W; j++)
            x[i * W + j] = bil(i, j);
    qd_augment *a = make("scale", 'S', 1, H, W, NULL);
    qd_error err = {0};
    const double cy = (H - 1) / 2.0, cx = (W - 1) / 2.0;
    size_t inside = 0, edge = 0;
    for (uint64_t s = 0; s < 20; s++) {
        qd_augment_step st;
        cr_assert_eq(qd_augment_plan(a, s, &st, 1), 1u);
        double sx = st.v[0], sy = st.v[1];
        cr_expect(sx >= 1 / 1.2 && sx <= 1.2 && sy >= 1 / 1.2 && sy <= 1.2);
        cr_assert_eq(qd_augment_apply(a, s, 1, x, y, &err), QD_OK);
        for (int i = 0; i < H; i++)
            for (int j = 0; j < W; j++) {
                double py = cy + sy * (i - cy), px = cx + sx * (j - cx);
                double got = y[i * W + j];
                if (py >= 0 && py <= H - 1 && px >= 0 && px <= W - 1) {
                    cr_expect(fabs(got - bil(py, px)) < 1e-12,
                              "(%d,%d) %.15g vs %.15g", i, j, got, bil(py, px));
                    inside++;
                } else if (i == (int)cy && j == 0 && px > -1.0 && px < 0.0) {
                    /* only the tap at column 0 is inside, weight 1 + px */
                    cr_expect(fabs(got - (1.0 + px) * bil(cy, 0)) < 1e-12,
                              "edge %.15g vs %.15g", got,
                              (1.0 + px) * bil(cy, 0));
                    edge++;
                } else if (py <= -1 || py >= H || px <= -1 || px >= W) {
                    cr_expect_eq(got, 0.0, "fully outside must be 0");
                }
            }
    }
    cr_expect(inside > 500 && edge > 0, "inside %zu edge %zu", inside, edge);
    qd_augment_destroy(a);
}

Test(augment, rotate_samples_bilinearly)
{
    enum { S = 9 };
    double x[S * S], y[S * S];
    for (int i = 0; i < S; i++)
        for (int j = 0; j < S; j++)
            x[i * S + j] = bil(i, j);
    qd_augment *a = make("rotate", 'S', 1, S, S, NULL);
    qd_error err = {0};
    const double c0 = (S - 1) / 2.0;
    size_t checked = 0;
    for (uint64_t s = 0; s < 20; s++) {
        qd_augment_step st;
        cr_assert_eq(qd_augment_plan(a, s, &st, 1), 1u);
        double th = st.v[0];
        cr_expect(fabs(th) <= 15.0 / 180.0 * 3.14159265358979 + 1e-12);
        cr_assert_eq(qd_augment_apply(a, s, 1, x, y, &err), QD_OK);
        for (int i = 0; i < S; i++)
            for (int j = 0; j < S; j++) {
                /* source = centre + R(th) (p - centre), x along columns */
                double px = c0 + cos(th) * (j - c0) - sin(th) * (i - c0);
                double py = c0 + sin(th) * (j - c0) + cos(th) * (i - c0);
                if (py >= 0 && py <= S - 1 && px >= 0 && px <= S - 1) {
                    cr_expect(fabs(y[i * S + j] - bil(py, px)) < 1e-12);
                    checked++;
                }
            }
    }
    cr_expect(checked > 1000);
    qd_augment_destroy(a);
}

Test(augment, cutout_zeroes_one_square)
{
    enum { H = 8, W = 6 };
    double *x = randv(H * W, 1), y[H * W];
    qd_augment *a = make("cutout", 'S', 1, H, W, NULL);
    qd_error err = {0};
    for (uint64_t s = 0; s < 20; s++) {
        qd_augment_step st;
        cr_assert_eq(qd_augment_plan(a, s, &st, 1), 1u);
        long ci = (long)st.v[0], cj = (long)st.v[1];
        cr_assert_eq(qd_augment_apply(a, s, 1, x, y, &err), QD_OK);
        for (long i = 0; i < H; i++)
            for (long j = 0; j < W; j++) {
                /* square of 4 x 3 starting at centre - size / 2 */
                int in = i >= ci - 2 && i < ci + 2 && j >= cj - 1 && j < cj + 2;
                cr_expect_eq(y[i * W + j], in ? 0.0 : x[i * W + j]);
            }
    }
    free(x);
    qd_augment_destroy(a);
}

Test(augment, color_matches_brightness_saturation_contrast)
{
    enum { C = 3, H = 2, W = 3, P = H * W, N = C * P };
    double *x = randv(N, 4), y[N], want[N];
    qd_augment *a = make("color", 'M', C, H, W, NULL);
    qd_error err = {0};
    for (uint64_t s = 0; s < 10; s++) {
        qd_augment_step st;
        cr_assert_eq(qd_augment_plan(a, s, &st, 1), 1u);
        double b = st.v[0], sat = st.v[1], con = st.v[2];
        cr_expect(b >= -0.5 && b <= 0.5 && sat >= 0 && sat <= 2 &&
                  con >= 0.5 && con <= 1.5);
        for (size_t i = 0; i < N; i++)
            want[i] = x[i] + b;
        for (size_t p = 0; p < P; p++) {
            double m = (want[p] + want[P + p] + want[2 * P + p]) / 3.0;
            for (size_t c = 0; c < C; c++)
                want[c * P + p] = (want[c * P + p] - m) * sat + m;
        }
        double m = 0.0;
        for (size_t i = 0; i < N; i++)
            m += want[i] / N;
        for (size_t i = 0; i < N; i++)
            want[i] = (want[i] - m) * con + m;
        cr_assert_eq(qd_augment_apply(a, s, 1, x, y, &err), QD_OK);
        for (size_t i = 0; i < N; i++)
            cr_expect(fabs(y[i] - want[i]) < 1e-13);
    }
    free(x);
    qd_augment_destroy(a);
}

/* ---- errors ---- */

Test(augment, bad_strategies_are_refused_clearly)
{
    qd_augment *a = (qd_augment *)1;
    qd_error err = {0};
    struct { const char *s; const char *want; } bad[] = {
        {"", "empty strategy"},
        {"crop__flip", "empty op"},
        {"crop_", "empty op"},
        {"_crop", "empty op"},
        {"blur", "unknown op \"blur\""},
        {"crop_Flip", "unknown op \"Flip\""},
        {"none_crop", "unknown op \"none\""},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cr_expect_eq(qd_augment_create(bad[i].s, 'S', 1, 4, 4, &a, &err),
                     QD_ERR_INVALID, "'%s' accepted", bad[i].s);
        cr_expect(strstr(err.msg, bad[i].want), "'%s': %s", bad[i].s, err.msg);
        cr_expect_null(a);
    }
    cr_expect_eq(qd_augment_create(NULL, 'S', 1, 4, 4, &a, &err), QD_ERR_INVALID);
    cr_expect_eq(qd_augment_create("crop", 'X', 1, 4, 4, &a, &err),
                 QD_ERR_INVALID);
    cr_expect(strstr(err.msg, "mode"), "%s", err.msg);
    cr_expect_eq(qd_augment_create("crop", 'S', 1, 0, 4, &a, &err),
                 QD_ERR_INVALID);
    cr_expect(strstr(err.msg, "zero"), "%s", err.msg);
    qd_augment_params p;
    qd_augment_params_default(&p);
    p.ratio_scale = 0.5;
    cr_expect_eq(qd_augment_create_ex("scale", 'S', &p, 1, 4, 4, &a, &err),
                 QD_ERR_INVALID);
    cr_expect(strstr(err.msg, "ratio_scale"), "%s", err.msg);
    p.ratio_scale = NAN;
    cr_expect_eq(qd_augment_create_ex("scale", 'S', &p, 1, 4, 4, &a, &err),
                 QD_ERR_INVALID);
    qd_augment_params_default(&p);
    p.prob_flip = 1.5;
    cr_expect_eq(qd_augment_create_ex("flip", 'S', &p, 1, 4, 4, &a, &err),
                 QD_ERR_INVALID);
    cr_expect(strstr(err.msg, "prob_flip"), "%s", err.msg);
    /* a valid one with every op, and NULL arguments to apply */
    cr_assert_eq(qd_augment_create("color_crop_cutout_flip_scale_rotate", 'M',
                                   1, 4, 4, &a, &err), QD_OK, "%s", err.msg);
    double x[16] = {0};
    cr_expect_eq(qd_augment_apply(a, 1, 1, NULL, x, &err), QD_ERR_INVALID);
    cr_expect_eq(qd_augment_backward(a, 1, 1, x, NULL, &err), QD_ERR_INVALID);
    qd_augment_destroy(a);
}
