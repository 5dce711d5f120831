/* Frozen pieces (qd_model_set_pieces) and the second-order products that
 * use them, on ReLU / max-pool models, against an independent reference.
 *
 * Reference: every model here is "one piecewise-linear hidden layer, then a
 * linear classifier",
 *     h_j = mask_j * (sum_t w[pi_t] x[xi_t] + w[bias_j]),   z = W2 h + b2,
 * with mean cross-entropy: an MLP (flatten -> linear -> relu -> linear), a
 * fused conv2d -> relu -> maxpool2d block (direct-convolution and im2col
 * paths) and an unfused conv2d -> maxpool2d -> relu. The taps (pi, xi) of a
 * unit are the linear row (MLP) or the conv patch at the window's argmax.
 * The reference finds the pieces itself (naive convolution, first maximum
 * in scan order, sign after the bias) and has the loss, gradients, and the
 * Hessian-vector and mixed products of the frozen function in closed form
 * (derived by hand, no model code). Test points are built to sit on kinks:
 * a pre-activation 1e-9 from zero and, for the convolutions, a window
 * whose two largest entries differ by 1e-9, so w +- e v certainly crosses.
 */
#include "distill_test_util.h"

TestSuite(pieces, .fini = dt_teardown, .timeout = 120);

enum { FZ_MLP, FZ_CONV_RELU_POOL, FZ_CONV_POOL_RELU };

typedef struct fz_net {
    int kind;
    size_t cin, H, W, D;       /* input: cin x H x W = D values */
    size_t co, k, pad, ho, wo; /* convolution (pool: 2 x 2, stride 2) */
    size_t ph, pw;
    size_t hid, K;             /* hidden units per sample, classes */
    size_t n1, n;              /* first-layer parameters, all parameters */
    size_t taps;               /* most taps of a unit */
    dt_model t;
} fz_net;

/* The frozen pieces of a batch: per hidden unit, the conv output position
 * (row-major in the channel's plane; unused for the MLP) and the mask. */
typedef struct fz_pieces {
    size_t *pos;
    unsigned char *mask;
} fz_pieces;

static void fz_make(fz_net *f, int kind, size_t cin, size_t H, size_t W,
                    size_t width, size_t k, size_t pad, size_t K,
                    uint64_t seed)
{
    memset(f, 0, sizeof *f);
    f->kind = kind;
    f->cin = cin;
    f->H = H;
    f->W = W;
    f->D = cin * H * W;
    f->K = K;
    char yaml[512];
    if (kind == FZ_MLP) {
        f->hid = width;
        f->n1 = width * f->D + width;
        f->taps = f->D;
        snprintf(yaml, sizeof yaml,
                 "layers:\n  - {type: flatten}\n"
                 "  - {type: linear, out: %zu}\n  - {name: r, type: relu}\n"
                 "  - {type: linear, out: %zu}\n", width, K);
    } else {
        f->co = width;
        f->k = k;
        f->pad = pad;
        f->ho = H + 2 * pad - k + 1;
        f->wo = W + 2 * pad - k + 1;
        f->ph = f->ho / 2;
        f->pw = f->wo / 2;
        f->hid = width * f->ph * f->pw;
        f->taps = cin * k * k;
        f->n1 = width * f->taps + width;
        const char *mid = kind == FZ_CONV_RELU_POOL
                              ? "  - {name: r, type: relu}\n"
                                "  - {name: p, type: maxpool2d, kernel: 2}\n"
                              : "  - {name: p, type: maxpool2d, kernel: 2}\n"
                                "  - {name: r, type: relu}\n";
        snprintf(yaml, sizeof yaml,
                 "layers:\n  - {name: c, type: conv2d, out_channels: %zu, "
                 "kernel: %zu, padding: \"%zu\"}\n%s"
                 "  - {type: flatten}\n  - {type: linear, out: %zu}\n",
                 width, k, pad, mid, K);
    }
    f->n = f->n1 + K * f->hid + K;
    dt_model_make(&f->t, yaml, cin, H, W, K, seed);
    cr_assert_eq(f->t.n, f->n, "parameter count %zu, expected %zu", f->t.n,
                 f->n);
}

static void fz_free(fz_net *f)
{
    dt_model_free(&f->t);
}

static void pieces_alloc(const fz_net *f, size_t B, fz_pieces *p)
{
    p->pos = calloc(B * f->hid, sizeof *p->pos);
    p->mask = calloc(B * f->hid, 1);
}

static void pieces_free(fz_pieces *p)
{
    free(p->pos);
    free(p->mask);
}

/* Taps of hidden unit j at conv position pos: the unit's pre-activation is
 * sum_t w[pi[t]] x[xi[t]] + w[*bi]. Returns the number of taps. */
static size_t fz_taps(const fz_net *f, size_t j, size_t pos, size_t *pi,
                      size_t *xi, size_t *bi)
{
    size_t nt = 0;
    if (f->kind == FZ_MLP) {
        for (size_t i = 0; i < f->D; i++) {
            pi[nt] = j * f->D + i;
            xi[nt++] = i;
        }
        *bi = f->hid * f->D + j;
        return nt;
    }
    const size_t c = j / (f->ph * f->pw), oy = pos / f->wo, ox = pos % f->wo;
    for (size_t ci = 0; ci < f->cin; ci++)
        for (size_t ky = 0; ky < f->k; ky++)
            for (size_t kx = 0; kx < f->k; kx++) {
                long iy = (long)(oy + ky) - (long)f->pad;
                long ix = (long)(ox + kx) - (long)f->pad;
                if (iy < 0 || ix < 0 || iy >= (long)f->H || ix >= (long)f->W)
                    continue;
                pi[nt] = c * f->taps + (ci * f->k + ky) * f->k + kx;
                xi[nt++] = (ci * f->H + (size_t)iy) * f->W + (size_t)ix;
            }
    *bi = f->co * f->taps + c;
    return nt;
}

/* sum_t a[pi[t]] x[xi[t]] (+ a[bi] when with_bias). */
static double fz_dot(const fz_net *f, const double *a, const double *x,
                     size_t j, size_t pos, int with_bias)
{
    size_t pi[256], xi[256], bi;
    cr_assert(f->taps <= 256);
    size_t nt = fz_taps(f, j, pos, pi, xi, &bi);
    double s = 0.0;
    for (size_t t = 0; t < nt; t++)
        s += a[pi[t]] * x[xi[t]];
    return with_bias ? s + a[bi] : s;
}

/* Conv position of entry d (scan order) of pooled unit j's window. */
static size_t fz_window_pos(const fz_net *f, size_t j, size_t d)
{
    const size_t q = j % (f->ph * f->pw), py = q / f->pw, px = q % f->pw;
    return (2 * py + d / 2) * f->wo + 2 * px + d % 2;
}

/* The pieces of the live model at (w, X): MLP masks; for the convolutions
 * the first maximum of each window in scan order (the bias is constant over
 * a window) and the sign of maximum + bias. */
static void fz_find_pieces(const fz_net *f, const double *w, size_t B,
                           const double *X, fz_pieces *p)
{
    for (size_t b = 0; b < B; b++)
        for (size_t j = 0; j < f->hid; j++) {
            const double *x = X + b * f->D;
            size_t pos = 0;
            if (f->kind != FZ_MLP) {
                double m = -INFINITY;
                for (size_t d = 0; d < 4; d++) {
                    size_t ps = fz_window_pos(f, j, d);
                    double v = fz_dot(f, w, x, j, ps, 0);
                    if (v > m) {
                        m = v;
                        pos = ps;
                    }
                }
            }
            p->pos[b * f->hid + j] = pos;
            p->mask[b * f->hid + j] = fz_dot(f, w, x, j, pos, 1) > 0.0;
        }
}

static int pieces_equal(const fz_net *f, size_t B, const fz_pieces *a,
                        const fz_pieces *b)
{
    for (size_t i = 0; i < B * f->hid; i++)
        if (a->mask[i] != b->mask[i] || (a->mask[i] && a->pos[i] != b->pos[i]))
            return 0;
    return 1;
}

/* The frozen function at w with pieces p: returns the mean cross-entropy;
 * logits (B x K), gradients g (n) and gx (B x D), and along v the products
 * hv = H v and xv = d/dx (v . g); every output may be NULL.
 *
 * Per sample, with r = (softmax(z) - e_y) / B, A = diag(p) - p p^T,
 * dh = dh/dw . v (h with the weights replaced by v, bias included),
 * u = dz . v = V2 h + W2 dh + c2, dr = A u / B, s = W2^T r,
 * q = W2^T dr + V2^T r:
 *   g:   W2 += r h^T, b2 += r, unit j: w[pi] += mask s_j x[xi], bias += s_j
 *   gx:  x[xi] += mask s_j w[pi]
 *   hv:  W2 += dr h^T + r dh^T, b2 += dr, unit j: q_j x[xi], q_j (bias)
 *   xv:  x[xi] += mask (q_j w[pi] + s_j v[pi])
 * (masked units contribute nothing). */
static double fz_eval(const fz_net *f, const double *w, size_t B,
                      const double *X, const int32_t *Y, const fz_pieces *p,
                      const double *v, double *logits, double *g, double *gx,
                      double *hv, double *xv)
{
    const size_t hid = f->hid, K = f->K, D = f->D;
    const double *W2 = w + f->n1, *b2 = W2 + K * hid;
    const double *V2 = v ? v + f->n1 : NULL, *c2 = v ? V2 + K * hid : NULL;
    double *h = calloc(hid, sizeof *h), *dh = calloc(hid, sizeof *dh);
    double *s = calloc(hid, sizeof *s), *q = calloc(hid, sizeof *q);
    double z[16], pr[16], r[16], u[16], dr[16];
    cr_assert(K <= 16);
    size_t pi[256], xi[256], bi;
    if (g)
        memset(g, 0, f->n * sizeof *g);
    if (hv)
        memset(hv, 0, f->n * sizeof *hv);
    if (gx)
        memset(gx, 0, B * D * sizeof *gx);
    if (xv)
        memset(xv, 0, B * D * sizeof *xv);
    double L = 0.0;
    for (size_t b = 0; b < B; b++) {
        const double *x = X + b * D;
        const size_t *pos = p->pos + b * hid;
        const unsigned char *mk = p->mask + b * hid;
        for (size_t j = 0; j < hid; j++) {
            h[j] = mk[j] ? fz_dot(f, w, x, j, pos[j], 1) : 0.0;
            dh[j] = mk[j] && v ? fz_dot(f, v, x, j, pos[j], 1) : 0.0;
        }
        double mx = -INFINITY;
        for (size_t c = 0; c < K; c++) {
            z[c] = b2[c];
            for (size_t j = 0; j < hid; j++)
                z[c] += W2[c * hid + j] * h[j];
            mx = z[c] > mx ? z[c] : mx;
        }
        double se = 0.0;
        for (size_t c = 0; c < K; c++)
            se += (pr[c] = exp(z[c] - mx));
        for (size_t c = 0; c < K; c++) {
            pr[c] /= se;
            r[c] = (pr[c] - (c == (size_t)Y[b])) / (double)B;
        }
        L -= log(pr[Y[b]]);
        if (logits)
            memcpy(logits + b * K, z, K * sizeof *z);
        double pu = 0.0;
        for (size_t c = 0; v && c < K; c++) {
            u[c] = c2[c];
            for (size_t j = 0; j < hid; j++)
                u[c] += V2[c * hid + j] * h[j] + W2[c * hid + j] * dh[j];
            pu += pr[c] * u[c];
        }
        for (size_t c = 0; v && c < K; c++)
            dr[c] = (pr[c] * u[c] - pr[c] * pu) / (double)B;
        for (size_t j = 0; j < hid; j++) {
            s[j] = q[j] = 0.0;
            for (size_t c = 0; c < K; c++) {
                s[j] += W2[c * hid + j] * r[c];
                if (v)
                    q[j] += W2[c * hid + j] * dr[c] + V2[c * hid + j] * r[c];
            }
        }
        for (size_t c = 0; c < K; c++) {
            for (size_t j = 0; j < hid; j++) {
                if (g)
                    g[f->n1 + c * hid + j] += r[c] * h[j];
                if (hv)
                    hv[f->n1 + c * hid + j] += dr[c] * h[j] + r[c] * dh[j];
            }
            if (g)
                g[f->n1 + K * hid + c] += r[c];
            if (hv)
                hv[f->n1 + K * hid + c] += dr[c];
        }
        for (size_t j = 0; j < hid; j++) {
            if (!mk[j])
                continue;
            size_t nt = fz_taps(f, j, pos[j], pi, xi, &bi);
            for (size_t t = 0; t < nt; t++) {
                if (g)
                    g[pi[t]] += s[j] * x[xi[t]];
                if (hv)
                    hv[pi[t]] += q[j] * x[xi[t]];
                if (gx)
                    gx[b * D + xi[t]] += s[j] * w[pi[t]];
                if (xv)
                    xv[b * D + xi[t]] += q[j] * w[pi[t]] + s[j] * v[pi[t]];
            }
            if (g)
                g[bi] += s[j];
            if (hv)
                hv[bi] += q[j];
        }
    }
    free(h);
    free(dh);
    free(s);
    free(q);
    return L / (double)B;
}

/* ---- kinks ---- */

/* Shift unit j's bias so that its pre-activation on sample x is +1e-9:
 * the ReLU sits on its kink. */
static void put_relu_kink(const fz_net *f, double *w, const double *x,
                          size_t j)
{
    fz_pieces p;
    pieces_alloc(f, 1, &p);
    fz_find_pieces(f, w, 1, x, &p);
    size_t pi[256], xi[256], bi;
    fz_taps(f, j, p.pos[j], pi, xi, &bi);
    w[bi] = -fz_dot(f, w, x, j, p.pos[j], 0) + 1e-9;
    pieces_free(&p);
}

/* In channel 0 on sample x, find a window and move the channel's filter
 * so that its two largest entries differ by 1e-9 (a max-pool argmax about
 * to switch), then set the bias so that the ReLU there is clearly on.
 * Returns the pooled unit. */
static size_t put_argmax_tie(const fz_net *f, double *w, const double *x)
{
    const size_t T = f->taps, plane = f->ph * f->pw;
    double *w0 = malloc(f->n * sizeof *w0);
    memcpy(w0, w, f->n * sizeof *w0);
    for (size_t j = 0; j < plane; j++) {
        memcpy(w, w0, f->n * sizeof *w);
        /* the two largest entries a1 > a2 and their patches' difference */
        double val[4];
        size_t ord[4] = {0, 1, 2, 3};
        for (size_t d = 0; d < 4; d++)
            val[d] = fz_dot(f, w, x, j, fz_window_pos(f, j, d), 0);
        for (size_t a = 0; a < 4; a++)
            for (size_t b = a + 1; b < 4; b++)
                if (val[ord[b]] > val[ord[a]]) {
                    size_t tmp = ord[a];
                    ord[a] = ord[b];
                    ord[b] = tmp;
                }
        double delta[256] = {0}, e1[256], nd = 0.0, wd = 0.0;
        for (size_t t = 0; t < T; t++) {   /* delta = P(a1) - P(a2) */
            memset(e1, 0, T * sizeof *e1);
            e1[t] = 1.0;
            delta[t] = fz_dot(f, e1, x, 0, fz_window_pos(f, j, ord[0]), 0) -
                       fz_dot(f, e1, x, 0, fz_window_pos(f, j, ord[1]), 0);
            nd += delta[t] * delta[t];
            wd += w[t] * delta[t];
        }
        if (nd < 1e-6)
            continue;
        for (size_t t = 0; t < T; t++)
            w[t] -= (wd - 1e-9) / nd * delta[t];
        for (size_t d = 0; d < 4; d++)
            val[d] = fz_dot(f, w, x, j, fz_window_pos(f, j, d), 0);
        double gap = val[ord[0]] - val[ord[1]];
        if (!(gap > 0.5e-9 && gap < 2e-9 && val[ord[0]] > val[ord[2]] + 1e-3 &&
              val[ord[0]] > val[ord[3]] + 1e-3))
            continue;
        w[f->co * T] = 0.5 - val[ord[0]];   /* channel 0's bias */
        free(w0);
        return j;
    }
    free(w0);
    cr_assert_fail("no window could be turned into an argmax tie");
    return 0;
}

/* ---- the cases ---- */

typedef struct fz_case {
    const char *name;
    int kind;
    size_t cin, H, W, width, k, pad;
} fz_case;

static const fz_case cases[] = {
    {"mlp", FZ_MLP, 1, 2, 3, 5, 0, 0},
    /* 16 x 16 output: the direct convolution inside the fused block */
    {"fused direct", FZ_CONV_RELU_POOL, 1, 16, 16, 2, 3, 1},
    {"fused im2col", FZ_CONV_RELU_POOL, 2, 6, 6, 3, 3, 0},
    {"conv pool relu", FZ_CONV_POOL_RELU, 2, 7, 7, 2, 3, 0},
};
#define N_CASES (sizeof cases / sizeof cases[0])
enum { NB = 3, NK = 3 };

static void make_case(const fz_case *c, fz_net *f, uint64_t seed)
{
    fz_make(f, c->kind, c->cin, c->H, c->W, c->width, c->k, c->pad, NK, seed);
}

/* The model's live loss and gradients equal the reference with the pieces
 * it finds (else nothing below would mean anything). */
static void check_live_matches_reference(fz_net *f, const char *name,
                                         const double *w, const double *X,
                                         const int32_t *Y)
{
    fz_pieces p;
    pieces_alloc(f, NB, &p);
    fz_find_pieces(f, w, NB, X, &p);
    double *g1 = malloc(f->n * sizeof *g1), *g2 = malloc(f->n * sizeof *g2);
    double *x1 = malloc(NB * f->D * sizeof *x1);
    double *x2 = malloc(NB * f->D * sizeof *x2), L1, L2;
    qd_error err = {0};
    cr_assert_eq(qd_model_loss_grad(f->t.m, w, NB, X, Y, &L1, g1, x1, NULL,
                                    &err), QD_OK, "%s", err.msg);
    L2 = fz_eval(f, w, NB, X, Y, &p, NULL, NULL, g2, x2, NULL, NULL);
    cr_assert(fabs(L1 - L2) < 1e-12, "%s: loss %.17g vs reference %.17g",
              name, L1, L2);
    cr_assert(dt_rel(g1, g2, f->n) < 1e-12, "%s: gradient vs reference %.3g",
              name, dt_rel(g1, g2, f->n));
    cr_assert(dt_rel(x1, x2, NB * f->D) < 1e-12,
              "%s: input gradient vs reference %.3g", name,
              dt_rel(x1, x2, NB * f->D));
    free(g1);
    free(g2);
    free(x1);
    free(x2);
    pieces_free(&p);
}

/* At points on kinks, live central differences spike, and
 * qd_fd_second_order (frozen pieces) matches the frozen closed form. */
Test(pieces, second_order_through_kinks_matches_closed_form)
{
    for (size_t ci = 0; ci < N_CASES; ci++) {
        const fz_case *c = &cases[ci];
        fz_net f;
        make_case(c, &f, 40 + ci);
        qd_rng rng;
        qd_rng_seed(&rng, 41 + ci, 3);
        double *X = dt_normal(&rng, NB * f.D, 1.0);
        double *v = dt_normal(&rng, f.n, 1.0);
        int32_t Y[NB] = {0, 2, 1};
        double *w = f.t.w;
        /* kinks on sample 0: a ReLU at zero in the last unit of the last
         * channel, and for the convolutions an argmax about to switch */
        put_relu_kink(&f, w, X, f.hid - 1);
        if (c->kind != FZ_MLP)
            put_argmax_tie(&f, w, X);
        check_live_matches_reference(&f, c->name, w, X, Y);

        fz_pieces p;
        pieces_alloc(&f, NB, &p);
        fz_find_pieces(&f, w, NB, X, &p);
        const size_t n = f.n, nx = NB * f.D;
        double *hr = malloc(n * sizeof *hr), *xr = malloc(nx * sizeof *xr);
        fz_eval(&f, w, NB, X, Y, &p, v, NULL, NULL, NULL, hr, xr);

        /* live central differences, as qd_fd_second_order did before */
        const double e = 1e-5 * (1.0 + dt_norm(w, n)) / dt_norm(v, n);
        double *wp = malloc(n * sizeof *wp), *gp = malloc(n * sizeof *gp);
        double *gm = malloc(n * sizeof *gm), *hl = malloc(n * sizeof *hl);
        qd_error err = {0};
        for (size_t i = 0; i < n; i++)
            wp[i] = w[i] + e * v[i];
        cr_assert_eq(qd_model_loss_grad(f.t.m, wp, NB, X, Y, NULL, gp, NULL,
                                        NULL, &err), QD_OK, "%s", err.msg);
        for (size_t i = 0; i < n; i++)
            wp[i] = w[i] - e * v[i];
        cr_assert_eq(qd_model_loss_grad(f.t.m, wp, NB, X, Y, NULL, gm, NULL,
                                        NULL, &err), QD_OK, "%s", err.msg);
        for (size_t i = 0; i < n; i++)
            hl[i] = (gp[i] - gm[i]) / (2 * e);
        double e_live = dt_rel(hl, hr, n);

        double *hv = malloc(n * sizeof *hv), *xv = malloc(nx * sizeof *xv);
        cr_assert_eq(qd_fd_second_order(f.t.m, w, NB, X, Y, v, 0.0, hv, xv,
                                        &err), QD_OK, "%s", err.msg);
        double e_hv = dt_rel(hv, hr, n), e_xv = dt_rel(xv, xr, nx);
        cr_log_info("%s: %zu params; |Hv| %.3g; live FD rel err %.3g, frozen "
                    "FD hv %.3g xv %.3g", c->name, n, dt_norm(hr, n), e_live,
                    e_hv, e_xv);
        cr_expect(e_live > 1e-2, "%s: the live differences should spike at "
                  "the kinks (rel err %.3g): the test point is not on a kink",
                  c->name, e_live);
        cr_expect(e_hv < 1e-6, "%s: frozen hv relative error %.3g", c->name,
                  e_hv);
        cr_expect(e_xv < 1e-6, "%s: frozen xv relative error %.3g", c->name,
                  e_xv);
        cr_expect(dt_norm(hr, n) > 1e-3 && dt_norm(xr, nx) > 1e-3);
        /* hv alone, and the model is back in live mode (a replay would
         * refuse another batch size) */
        cr_assert_eq(qd_fd_second_order(f.t.m, w, NB, X, Y, v, 0.0, hv, NULL,
                                        &err), QD_OK, "%s", err.msg);
        cr_expect(dt_rel(hv, hr, n) < 1e-6);
        cr_expect_eq(qd_model_loss_grad(f.t.m, w, 1, X, Y, NULL, gp, NULL,
                                        NULL, &err), QD_OK, "%s", err.msg);
        free(X);
        free(v);
        free(hr);
        free(xr);
        free(wp);
        free(gp);
        free(gm);
        free(hl);
        free(hv);
        free(xv);
        pieces_free(&p);
        fz_free(&f);
    }
}

/* RECORD computes like LIVE; REPLAY at the recorded point equals LIVE
 * bit for bit, and elsewhere is the frozen function (not the live one). */
Test(pieces, replay_is_the_frozen_function)
{
    for (size_t ci = 0; ci < N_CASES; ci++) {
        const fz_case *c = &cases[ci];
        fz_net f;
        make_case(c, &f, 50 + ci);
        qd_rng rng;
        qd_rng_seed(&rng, 51 + ci, 3);
        double *X = dt_normal(&rng, NB * f.D, 1.0);
        int32_t Y[NB] = {1, 0, 2};
        const size_t n = f.n, nx = NB * f.D;
        double *w = f.t.w, *w2 = malloc(n * sizeof *w2);
        for (size_t i = 0; i < n; i++)
            w2[i] = w[i] + 0.3 * qd_rng_normal(&rng);
        qd_model *m = f.t.m;
        qd_error err = {0};
        double z0[NB * NK], z1[NB * NK], z2[NB * NK], zr[NB * NK], L0, L1,
            L2;
        double *g0 = malloc(n * sizeof *g0), *g1 = malloc(n * sizeof *g1);
        double *x0 = malloc(nx * sizeof *x0), *x1 = malloc(nx * sizeof *x1);
        cr_assert_eq(qd_model_loss_grad(m, w, NB, X, Y, &L0, g0, x0, z0, &err),
                     QD_OK, "%s", err.msg);
        cr_assert_eq(qd_model_set_pieces(m, QD_PIECES_RECORD, &err), QD_OK,
                     "%s", err.msg);
        cr_assert_eq(qd_model_forward(m, w, NB, X, z1, &err), QD_OK, "%s",
                     err.msg);
        cr_expect(memcmp(z0, z1, sizeof z0) == 0, "%s: RECORD != LIVE",
                  c->name);
        cr_assert_eq(qd_model_set_pieces(m, QD_PIECES_REPLAY, &err), QD_OK,
                     "%s", err.msg);
        cr_assert_eq(qd_model_loss_grad(m, w, NB, X, Y, &L1, g1, x1, z2,
                                        &err), QD_OK, "%s", err.msg);
        cr_expect(memcmp(z0, z2, sizeof z0) == 0 && L0 == L1,
                  "%s: REPLAY at the recorded point != LIVE", c->name);
        cr_expect(dt_rel(g1, g0, n) < 1e-15 && dt_rel(x1, x0, nx) < 1e-15,
                  "%s: REPLAY gradients at the recorded point: %.3g %.3g",
                  c->name, dt_rel(g1, g0, n), dt_rel(x1, x0, nx));

        /* far away: the frozen reference with the pieces found at w */
        fz_pieces p, p2;
        pieces_alloc(&f, NB, &p);
        pieces_alloc(&f, NB, &p2);
        fz_find_pieces(&f, w, NB, X, &p);
        fz_find_pieces(&f, w2, NB, X, &p2);
        cr_assert(!pieces_equal(&f, NB, &p, &p2),
                  "%s: the far point has the same pieces", c->name);
        double *gr = malloc(n * sizeof *gr), *xr = malloc(nx * sizeof *xr);
        cr_assert_eq(qd_model_loss_grad(m, w2, NB, X, Y, &L1, g1, x1, z1,
                                        &err), QD_OK, "%s", err.msg);
        L2 = fz_eval(&f, w2, NB, X, Y, &p, NULL, zr, gr, xr, NULL, NULL);
        cr_expect(fabs(L1 - L2) < 1e-12 && dt_rel(z1, zr, NB * NK) < 1e-12,
                  "%s: replayed loss %.17g vs frozen reference %.17g",
                  c->name, L1, L2);
        cr_expect(dt_rel(g1, gr, n) < 1e-12 && dt_rel(x1, xr, nx) < 1e-12,
                  "%s: replayed gradients vs frozen reference: %.3g %.3g",
                  c->name, dt_rel(g1, gr, n), dt_rel(x1, xr, nx));
        /* and live there is a different function */
        cr_assert_eq(qd_model_set_pieces(m, QD_PIECES_LIVE, &err), QD_OK);
        cr_assert_eq(qd_model_loss_grad(m, w2, NB, X, Y, &L2, g0, NULL, z2,
                                        &err), QD_OK, "%s", err.msg);
        cr_expect(dt_rel(g0, g1, n) > 1e-6, "%s: live equals replayed",
                  c->name);
        free(X);
        free(w2);
        free(g0);
        free(g1);
        free(x0);
        free(x1);
        free(gr);
        free(xr);
        pieces_free(&p);
        pieces_free(&p2);
        fz_free(&f);
    }
}

/* Misuse is reported; failures inside qd_fd_second_order leave LIVE. */
Test(pieces, replay_errors)
{
    fz_net f;
    make_case(&cases[1], &f, 60);   /* fused */
    qd_model *m = f.t.m;
    qd_rng rng;
    qd_rng_seed(&rng, 61, 3);
    double *X = dt_normal(&rng, NB * f.D, 1.0);
    int32_t Y[NB] = {1, 0, 2};
    /* big enough for the relu's output (conv size) */
    double z[NB * NK], *out = malloc(NB * f.co * f.ho * f.wo * sizeof *out);
    qd_error err = {0};
    cr_expect_eq(qd_model_has_pieces(m), 1);
    cr_expect_eq(qd_model_set_pieces(m, 3, &err), QD_ERR_INVALID);
    cr_expect(strstr(err.msg, "unknown mode"), "%s", err.msg);
    cr_expect_eq(qd_model_set_pieces(NULL, 0, &err), QD_ERR_INVALID);
    cr_expect_eq(qd_model_set_pieces(m, QD_PIECES_REPLAY, &err),
                 QD_ERR_INVALID, "replay with nothing recorded");
    cr_expect(strstr(err.msg, "RECORD"), "%s", err.msg);

    cr_assert_eq(qd_model_set_pieces(m, QD_PIECES_RECORD, &err), QD_OK);
    cr_assert_eq(qd_model_forward(m, f.t.w, NB, X, z, &err), QD_OK, "%s",
                 err.msg);
    cr_assert_eq(qd_model_set_pieces(m, QD_PIECES_REPLAY, &err), QD_OK);
    cr_expect_eq(qd_model_forward(m, f.t.w, 2, X, z, &err), QD_ERR_INVALID,
                 "a batch of 2 replaying a record of 3");
    cr_expect(strstr(err.msg, "batch of 3") && strstr(err.msg, "has 2"),
              "%s", err.msg);
    /* the relu inside the fused block recorded nothing of its own */
    cr_expect_eq(qd_model_forward_to(m, f.t.w, NB, X, "r", out, &err),
                 QD_ERR_INVALID);
    cr_expect(strstr(err.msg, "'r'") && strstr(err.msg, "no recorded"), "%s",
              err.msg);
    /* still replaying the record: the recorded batch works */
    cr_expect_eq(qd_model_forward(m, f.t.w, NB, X, z, &err), QD_OK, "%s",
                 err.msg);
    cr_expect_eq(qd_model_forward_to(m, f.t.w, NB, X, "p", out, &err), QD_OK,
                 "%s", err.msg);
    cr_assert_eq(qd_model_set_pieces(m, QD_PIECES_LIVE, &err), QD_OK);
    cr_expect_eq(qd_model_forward(m, f.t.w, 2, X, z, &err), QD_OK, "%s",
                 err.msg);

    /* qd_fd_second_order fails at its RECORD forward (a bad label): the
     * model is LIVE afterwards. In RECORD the batch-2 forward would record
     * and the switch to REPLAY succeed; in REPLAY the forward would fail. */
    double *v = dt_normal(&rng, f.n, 1.0), *hv = malloc(f.n * sizeof *hv);
    Y[1] = NK;
    cr_expect_eq(qd_fd_second_order(m, f.t.w, NB, X, Y, v, 0.0, hv, NULL,
                                     &err), QD_ERR_INVALID);
    cr_expect(strstr(err.msg, "recording") && strstr(err.msg, "label"), "%s",
              err.msg);
    Y[1] = 0;
    cr_expect_eq(qd_model_forward(m, f.t.w, 2, X, z, &err), QD_OK, "%s",
                 err.msg);
    cr_expect_eq(qd_model_set_pieces(m, QD_PIECES_REPLAY, &err),
                 QD_ERR_INVALID, "the forward after the failure recorded");
    /* a successful call leaves LIVE too */
    cr_expect_eq(qd_fd_second_order(m, f.t.w, NB, X, Y, v, 0.0, hv, NULL,
                                    &err), QD_OK, "%s", err.msg);
    cr_expect_eq(qd_model_forward(m, f.t.w, 2, X, z, &err), QD_OK, "%s",
                 err.msg);
    cr_assert_eq(qd_model_set_pieces(m, QD_PIECES_LIVE, &err), QD_OK);

    /* a model without relu / maxpool2d: the modes change nothing */
    dt_model s;
    dt_model_make(&s, "layers:\n  - {type: flatten}\n  - {type: tanh}\n"
                      "  - {type: linear, out: 3}\n", 1, 2, 2, 3, 62);
    cr_expect_eq(qd_model_has_pieces(s.m), 0);
    cr_expect_eq(qd_model_set_pieces(s.m, QD_PIECES_REPLAY, &err), QD_OK,
                 "%s", err.msg);
    cr_expect_eq(qd_model_forward(s.m, s.w, 2, X, z, &err), QD_OK, "%s",
                 err.msg);
    dt_model_free(&s);
    free(X);
    free(out);
    free(v);
    free(hv);
    fz_free(&f);
}

/* The meta-gradient of performance matching through a LeNet-style fused
 * block with a ReLU kink at w_0 on the first synthetic image, against
 * exact reverse mode with the reference's closed forms (pieces found at
 * every w_t). Live differences would blow up the step-0 product. */
Test(pieces, meta_gradient_through_kinks_vs_exact_reverse_mode)
{
    enum { STEPS = 1, PER = 4, T = 3, BO = 12 };
    for (size_t ci = 1; ci < N_CASES; ci++) {
        const fz_case *c = &cases[ci];
        fz_net f;
        make_case(c, &f, 70 + ci);
        const size_t n = f.n, D = f.D;
        qd_rng rng;
        qd_rng_seed(&rng, 71 + ci, 3);
        double *xs = dt_normal(&rng, PER * D, 1.0);
        double *Xo = dt_normal(&rng, BO * D, 1.0);
        int32_t ys[PER] = {0, 1, 2, 0}, Yo[BO];
        for (int i = 0; i < BO; i++)
            Yo[i] = i % NK;
        const double lrs[T] = {0.4, 0.3, 0.5};
        double *w0 = f.t.w;
        put_relu_kink(&f, w0, xs, f.hid - 1);
        put_argmax_tie(&f, w0, xs);

        /* qd_unroll */
        qd_unroll *u = NULL;
        qd_error err = {0};
        cr_assert_eq(qd_unroll_create(f.t.m, T, PER, &u, &err), QD_OK, "%s",
                     err.msg);
        const double *wT;
        cr_assert_eq(qd_unroll_forward(u, w0, STEPS, PER, xs, ys, lrs, &wT,
                                       &err), QD_OK, "%s", err.msg);
        double *gT = malloc(n * sizeof *gT), L1, L2;
        cr_assert_eq(qd_model_loss_grad(f.t.m, wT, BO, Xo, Yo, &L1, gT, NULL,
                                        NULL, &err), QD_OK, "%s", err.msg);
        double *gx = calloc(PER * D, sizeof *gx), gl[T] = {0};
        cr_assert_eq(qd_unroll_backward(u, gT, gx, gl, NULL, 0.0, &err),
                     QD_OK, "%s", err.msg);
        qd_unroll_destroy(u);

        /* exact reverse mode on the reference */
        double *W = malloc((T + 1) * n * sizeof *W);
        double *G = malloc(T * n * sizeof *G), *g = malloc(n * sizeof *g);
        double *hv = malloc(n * sizeof *hv), *xv = malloc(PER * D * sizeof *xv);
        double *ex = calloc(PER * D, sizeof *ex), el[T];
        fz_pieces p, po;
        pieces_alloc(&f, PER, &p);
        pieces_alloc(&f, BO, &po);
        memcpy(W, w0, n * sizeof *W);
        for (size_t t = 0; t < T; t++) {
            fz_find_pieces(&f, W + t * n, PER, xs, &p);
            fz_eval(&f, W + t * n, PER, xs, ys, &p, NULL, NULL, G + t * n,
                    NULL, NULL, NULL);
            for (size_t i = 0; i < n; i++)
                W[(t + 1) * n + i] = W[t * n + i] - lrs[t] * G[t * n + i];
        }
        fz_find_pieces(&f, W + T * n, BO, Xo, &po);
        L2 = fz_eval(&f, W + T * n, BO, Xo, Yo, &po, NULL, NULL, g, NULL, NULL,
                     NULL);
        for (size_t t = T; t-- > 0;) {
            double d = 0.0;
            for (size_t i = 0; i < n; i++)
                d += g[i] * G[t * n + i];
            el[t] = -d;
            fz_find_pieces(&f, W + t * n, PER, xs, &p);
            fz_eval(&f, W + t * n, PER, xs, ys, &p, g, NULL, NULL, NULL, hv,
                    xv);
            for (size_t i = 0; i < PER * D; i++)
                ex[i] -= lrs[t] * xv[i];
            for (size_t i = 0; i < n; i++)
                g[i] -= lrs[t] * hv[i];
        }
        double e_x = dt_rel(gx, ex, PER * D), e_l = dt_rel(gl, el, T);
        cr_log_info("%s: outer loss %.6f; meta-gradient rel err images %.3g, "
                    "lrs %.3g", c->name, L1, e_x, e_l);
        cr_expect(fabs(L1 - L2) < 1e-12, "%.17g vs %.17g", L1, L2);
        cr_expect(e_x < 1e-6, "%s images: %.3g", c->name, e_x);
        cr_expect(e_l < 1e-6, "%s step sizes: %.3g", c->name, e_l);
        cr_expect(dt_norm(ex, PER * D) > 1e-4 && dt_norm(el, T) > 1e-4);
        free(xs);
        free(Xo);
        free(gT);
        free(gx);
        free(W);
        free(G);
        free(g);
        free(hv);
        free(xv);
        free(ex);
        pieces_free(&p);
        pieces_free(&po);
        fz_free(&f);
    }
}
