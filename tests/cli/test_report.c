/* End-to-end tests of qdistill report: the HTML report of a small run and of
 * a small sweep is well formed, has its sections, plots with the right
 * number of series and points (NaN skipped), numbers that match an
 * independent computation from the result.json files, images that decode
 * (our own base64 decoder, then libpng) to the run's images.png, escaped
 * manifest text, and pieces that are missing stated rather than broken.
 * The last test opens the reports in headless Chromium: no console message,
 * no broken image, a screenshot that is not blank and shows a plot. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <ctype.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "qdistill/json.h"

#include "cli_util.h"
#include "../../tools/qdistill/base64.h"
#include "../../tools/qdistill/html.h"
#include "../../tools/qdistill/svg.h"

#define TINY "tests/cli/manifests/tiny-report.yaml"

/* ---- helpers ------------------------------------------------------------ */

static char *path2(const char *a, const char *b)
{
    char *p = NULL;
    cr_assert(asprintf(&p, "%s/%s", a, b) > 0);
    return p;
}

static char *read_report(const char *path, size_t *len)
{
    char *s = slurp_n(path, len);
    cr_assert(*len > 0, "no report at %s", path);
    return s;
}

/* A run of the tiny manifest into DIR (extra: more qdistill arguments). */
static void make_run(const char *dir, const char *extra)
{
    char *err = NULL;
    int rc = qd(NULL, &err, "run " TINY " %s --out %s", extra, dir);
    cr_assert_eq(rc, 0, "qdistill run failed: %s", err);
    free(err);
}

static void make_sweep(const char *dir)
{
    char *err = NULL;
    int rc = qd(NULL, &err,
                "sweep " TINY " observable.trainable=true,false distill.images_per_class=1,2 "
                "seed=1,2 -j 2 --out %s",
                dir);
    cr_assert_eq(rc, 0, "qdistill sweep failed: %s", err);
    free(err);
}

static size_t count(const char *s, const char *end, const char *needle)
{
    size_t n = 0, k = strlen(needle);
    for (const char *p = s; (p = strstr(p, needle)) && p + k <= end; p += k)
        ++n;
    return n;
}

static int has(const char *s, const char *end, const char *needle)
{
    return memmem(s, (size_t)(end - s), needle, strlen(needle)) != NULL;
}

/* The text of <svg ... id="ID" ...> ... </svg>, or NULL. */
static const char *svg_by_id(const char *html, const char *id, const char **end)
{
    char key[128];
    snprintf(key, sizeof key, "id=\"%s\"", id);
    const char *at = strstr(html, key);
    if (!at)
        return NULL;
    const char *start = at;
    while (start > html && strncmp(start, "<svg", 4) != 0)
        --start;
    *end = strstr(at, "</svg>");
    cr_assert(*end, "unterminated svg %s", id);
    return start;
}

/* Occurrences of needle inside the <g class="series"> groups of an svg, and
 * the number of groups. */
static size_t in_series(const char *svg, const char *end, const char *needle, size_t *groups)
{
    size_t n = 0;
    *groups = 0;
    for (const char *g = svg; (g = strstr(g, "<g class=\"series\"")) && g < end; ++g) {
        const char *ge = strstr(g, "</g>");
        cr_assert(ge && ge < end);
        ++*groups;
        n += count(g, ge, needle);
    }
    return n;
}

/* Pairs in the points="..." of the series polylines of an svg. */
static size_t polyline_points(const char *svg, const char *end)
{
    size_t n = 0;
    for (const char *p = svg; (p = strstr(p, "points=\"")) && p < end; ++p) {
        const char *q = strchr(p + 8, '"');
        for (const char *c = p + 8; c < q; ++c)
            n += *c == ',';
    }
    return n;
}

/* ---- HTML well-formedness: every element closed in order, void elements
 * and self-closed SVG elements excepted, no raw '<' in text, every '&' an
 * entity. The report is generated to satisfy this stricter-than-HTML rule,
 * so a missing close tag or an unescaped character shows here. */

static int is_void(const char *name, size_t len)
{
    static const char *const V[] = {"meta", "img", "br", "hr", "input", "link"};
    for (size_t i = 0; i < sizeof V / sizeof V[0]; ++i)
        if (strlen(V[i]) == len && strncmp(V[i], name, len) == 0)
            return 1;
    return 0;
}

static size_t name_len(const char *p)
{
    size_t n = 0;
    while (isalnum((unsigned char)p[n]) || p[n] == '-')
        ++n;
    return n;
}

static void check_entity(const char *p, size_t off)
{
    const char *q = p + 1;
    if (*q == '#')
        ++q;
    size_t n = 0;
    while (isalnum((unsigned char)q[n]))
        ++n;
    cr_assert(n > 0 && q[n] == ';', "raw '&' at offset %zu: %.40s", off, p);
}

static void check_well_formed(const char *html, size_t len)
{
    cr_assert(strncmp(html, "<!DOCTYPE html>\n", 16) == 0, "no doctype");
    cr_assert(len > 8 && strcmp(html + len - 8, "</html>\n") == 0, "does not end in </html>");
    cr_assert_eq(strlen(html), len, "NUL byte in the report");
    const char *stack[128];
    size_t slen[128], depth = 0;
    const char *p = html + 16;
    while (*p) {
        if (*p == '&') {
            check_entity(p, (size_t)(p - html));
            ++p;
            continue;
        }
        if (*p != '<') {
            ++p;
            continue;
        }
        size_t off = (size_t)(p - html);
        if (p[1] == '/') {
            size_t n = name_len(p + 2);
            cr_assert(depth > 0, "</%.*s> closes nothing at offset %zu", (int)n, p + 2, off);
            cr_assert(n == slen[depth - 1] && strncmp(p + 2, stack[depth - 1], n) == 0,
                      "</%.*s> closes <%.*s> at offset %zu", (int)n, p + 2,
                      (int)slen[depth - 1], stack[depth - 1], off);
            --depth;
            p = strchr(p, '>');
            cr_assert(p);
            ++p;
            continue;
        }
        size_t n = name_len(p + 1);
        cr_assert(n > 0, "raw '<' in text at offset %zu: %.40s", off, p);
        const char *name = p + 1, *q = p + 1 + n;
        /* to the end of the tag; quoted values may hold '>' */
        while (*q && *q != '>') {
            if (*q == '"') {
                const char *e = strchr(q + 1, '"');
                cr_assert(e, "unterminated attribute at offset %zu", off);
                cr_assert(!memchr(q + 1, '<', (size_t)(e - q - 1)),
                          "raw '<' in an attribute at offset %zu", off);
                for (const char *a = q + 1; a < e; ++a)
                    if (*a == '&')
                        check_entity(a, (size_t)(a - html));
                q = e;
            }
            ++q;
        }
        cr_assert(*q == '>', "unterminated tag at offset %zu", off);
        int self = q[-1] == '/';
        p = q + 1;
        if (self || is_void(name, n))
            continue;
        if ((n == 6 && strncmp(name, "script", 6) == 0) ||
            (n == 5 && strncmp(name, "style", 5) == 0)) {
            char close[16];
            snprintf(close, sizeof close, "</%.*s>", (int)n, name);
            const char *e = strstr(p, close);
            cr_assert(e, "unterminated <%.*s>", (int)n, name);
            p = e + strlen(close);
            continue;
        }
        cr_assert(depth < 128, "nesting too deep");
        stack[depth] = name;
        slen[depth++] = n;
    }
    cr_assert_eq(depth, 0, "%zu unclosed elements, innermost <%.*s>", depth,
                 (int)(depth ? slen[depth - 1] : 0), depth ? stack[depth - 1] : "");
}

/* ---- base64 and PNG, independently of the tool's encoder --------------- */

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

static unsigned char *b64_decode(const char *s, size_t n, size_t *out_len)
{
    cr_assert_eq(n % 4, 0, "base64 length %zu is not a multiple of 4", n);
    unsigned char *out = malloc(n / 4 * 3 + 1);
    cr_assert(out);
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4];
        for (int k = 0; k < 4; ++k) {
            v[k] = s[i + k] == '=' ? 0 : b64_value(s[i + k]);
            cr_assert(v[k] >= 0, "bad base64 character '%c'", s[i + k]);
            cr_assert(s[i + k] != '=' || i + 4 == n, "padding inside base64");
        }
        unsigned w = (unsigned)v[0] << 18 | (unsigned)v[1] << 12 | (unsigned)v[2] << 6 |
                     (unsigned)v[3];
        out[o++] = (unsigned char)(w >> 16);
        if (s[i + 2] != '=')
            out[o++] = (unsigned char)(w >> 8);
        if (s[i + 3] != '=')
            out[o++] = (unsigned char)w;
    }
    *out_len = o;
    return out;
}

/* Decode a PNG fully with libpng; returns its width (0 on failure). */
static unsigned png_decode_width(const void *data, size_t len, unsigned *height)
{
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_memory(&img, data, len))
        return 0;
    img.format = PNG_FORMAT_RGBA;
    unsigned char *px = malloc(PNG_IMAGE_SIZE(img));
    cr_assert(px);
    int ok = png_image_finish_read(&img, NULL, px, 0, NULL);
    free(px);
    *height = img.height;
    return ok ? img.width : 0;
}

/* Every <img> of the report: a PNG data: URI decoding to one of the files
 * in want (their contents). Returns the number of images. */
static size_t check_images(const char *html, char **want, size_t *want_len, size_t n_want)
{
    static const unsigned char SIG[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    size_t n = 0;
    for (const char *p = html; (p = strstr(p, "<img ")); ++p) {
        const char *end = strchr(p, '>');
        const char *src = strstr(p, " src=\"");
        cr_assert(src && src < end, "<img> without src");
        src += 6;
        static const char PREFIX[] = "data:image/png;base64,";
        cr_assert(strncmp(src, PREFIX, sizeof PREFIX - 1) == 0, "img src is not a PNG data URI: "
                  "%.40s", src);
        const char *b = src + sizeof PREFIX - 1, *q = strchr(b, '"');
        size_t len;
        unsigned char *png = b64_decode(b, (size_t)(q - b), &len);
        cr_assert(len > 8 && memcmp(png, SIG, 8) == 0, "no PNG signature");
        unsigned h = 0, w = png_decode_width(png, len, &h);
        cr_assert(w > 0 && h > 0, "libpng cannot decode image %zu", n);
        int found = 0;
        for (size_t k = 0; k < n_want && !found; ++k)
            found = want_len[k] == len && memcmp(want[k], png, len) == 0;
        cr_assert(found, "image %zu is not one of the runs' images.png", n);
        free(png);
        ++n;
    }
    return n;
}

/* Finite values of a metrics.csv column, counted by our own reading. */
static size_t finite_in_column(const char *csv_path, const char *column)
{
    char *text = slurp(csv_path);
    char *save = NULL, *line = strtok_r(text, "\n", &save);
    cr_assert(line);
    long col = -1, k = 0;
    for (char *c = line, *tok; (tok = strsep(&c, ",")); ++k)
        if (strcmp(tok, column) == 0)
            col = k;
    cr_assert(col >= 0, "no column %s", column);
    size_t n = 0;
    while ((line = strtok_r(NULL, "\n", &save))) {
        k = 0;
        for (char *c = line, *tok; (tok = strsep(&c, ",")); ++k)
            if (k == col)
                n += isfinite(strtod(tok, NULL)) && *tok;
    }
    free(text);
    return n;
}

static double result_num(const char *dir, const char *path)
{
    char *p = path2(dir, "result.json");
    qd_json_value *v = NULL;
    qd_error err;
    cr_assert_eq(qd_json_read_file(p, &v, &err), QD_OK, "%s", err.msg);
    double x;
    cr_assert_eq(qd_json_get_number(v, path, &x, &err), QD_OK, "%s", err.msg);
    qd_json_value_free(v);
    free(p);
    return x;
}

/* 1234567 -> "1,234,567", written here independently of the tool. */
static void with_commas(char *buf, long long v)
{
    char d[32];
    int n = snprintf(d, sizeof d, "%lld", v), o = 0;
    for (int i = 0; i < n; ++i) {
        buf[o++] = d[i];
        if ((n - i - 1) % 3 == 0 && i + 1 < n)
            buf[o++] = ',';
    }
    buf[o] = '\0';
}

/* ---- tests -------------------------------------------------------------- */

TestSuite(report, .init = make_tmp, .fini = rm_tmp, .timeout = 120);

Test(report, run_has_every_section)
{
    char *run = path2(g_tmp, "run");
    make_run(run, "");
    char *out = NULL;
    cr_assert_eq(qd(&out, NULL, "report %s", run), 0);
    char *html_path = path2(run, "report.html");   /* the default output */
    cr_expect(strstr(out, html_path), "%s", out);
    free(out);
    size_t len;
    char *html = read_report(html_path, &len);
    check_well_formed(html, len);
    static const char *const IDS[] = {"id=\"results\"", "id=\"curves\"", "id=\"images\"",
                                      "id=\"quantum-cost\"", "id=\"resources\"",
                                      "id=\"manifest\"", "id=\"manifest-yaml\""};
    for (size_t i = 0; i < sizeof IDS / sizeof IDS[0]; ++i)
        cr_expect(strstr(html, IDS[i]), "missing %s", IDS[i]);
    cr_expect(!strstr(html, "id=\"ablations\""), "a single run has no ablation section");
    cr_expect(!strstr(html, "class=\"missing\""), "a finished run misses nothing");
    /* no network: a CSP that allows only inline content, no external URL */
    cr_expect(strstr(html, "default-src 'none'"));
    cr_expect(!strstr(html, "src=\"http") && !strstr(html, "href=\"http"));

    /* one series per plot; the accuracy plot has one dot per evaluated
     * iteration (nan rows of metrics.csv skipped) */
    char *csv = path2(run, "metrics.csv");
    size_t evaluated = finite_in_column(csv, "val_acc"), rows = finite_in_column(csv, "loss");
    cr_assert(evaluated >= 2 && evaluated < rows, "the fixture should skip some iterations");
    const char *end, *svg = svg_by_id(html, "plot-loss", &end);
    size_t groups;
    cr_assert(svg, "no loss plot");
    in_series(svg, end, "<polyline", &groups);
    cr_expect_eq(groups, 1);
    cr_expect_eq(polyline_points(svg, end), rows);
    svg = svg_by_id(html, "plot-val-acc", &end);
    cr_assert(svg, "no accuracy plot");
    cr_expect_eq(in_series(svg, end, "<circle", &groups), evaluated);
    cr_expect_eq(groups, 1);
    cr_expect_eq(polyline_points(svg, end), evaluated);
    cr_expect(count(svg, end, "<text") >= 6, "axes without tick labels");

    /* results and quantum cost, against result.json */
    char want[256];
    snprintf(want, sizeof want, "<td>%.2f</td>", 100 * result_num(run, "distilled.test_acc"));
    cr_expect(strstr(html, want), "results table lacks %s", want);
    char c1[64], c2[64];
    with_commas(c1, (long long)result_num(run, "quantum.executions_full_data_epoch"));
    with_commas(c2, (long long)result_num(run, "quantum.executions_training_on_distilled"));
    snprintf(want, sizeof want, "<td>%s</td><td>%s</td>", c2, c1);
    cr_expect(strstr(html, want), "quantum table lacks %s", want);
    cr_expect(strstr(html, "peak memory"));

    /* the one image is the run's images.png */
    char *png_path = path2(run, "images.png");
    size_t png_len;
    char *png = slurp_n(png_path, &png_len);
    cr_expect_eq(check_images(html, &png, &png_len, 1), 1);

    /* --out elsewhere gives the same bytes (no timestamp in the page) */
    char *other = path2(g_tmp, "other.html");
    cr_assert_eq(qd(NULL, NULL, "report %s/ --out %s", run, other), 0);
    size_t len2;
    char *html2 = read_report(other, &len2);
    cr_expect(len2 == len && memcmp(html, html2, len) == 0, "report not reproducible");
    free(html2);
    free(other);
    free(png);
    free(png_path);
    free(csv);
    free(html);
    free(html_path);
    free(run);
}

Test(report, sweep_aggregates_and_draws_ablations)
{
    char *sw = path2(g_tmp, "sw");
    make_sweep(sw);
    char *out_path = path2(g_tmp, "sweep.html");
    cr_assert_eq(qd(NULL, NULL, "report %s --out %s", sw, out_path), 0);
    size_t len;
    char *html = read_report(out_path, &len);
    check_well_formed(html, len);
    cr_expect(strstr(html, "id=\"ablations\""));
    cr_expect(strstr(html, "id=\"sweep-yaml\""), "the sweep's grid is shown");

    /* one row per configuration (seeds aggregated), mean ± sample std
     * computed here from the runs' result.json */
    cr_expect_eq(count(html, html + len, "<tr class=\"config\">"), 4);
    static const char *const IPC[2] = {"1", "2"}, *const TR[2] = {"true", "false"};
    for (int i = 0; i < 2; ++i)
        for (int t = 0; t < 2; ++t) {
            double a[2];
            for (int s = 0; s < 2; ++s) {
                char job[256];
                snprintf(job, sizeof job,
                         "%s/distill.images_per_class=%s,observable.trainable=%s,seed=%d", sw,
                         IPC[i], TR[t], s + 1);
                a[s] = 100 * result_num(job, "distilled.test_acc");
            }
            double m = (a[0] + a[1]) / 2, sd = fabs(a[0] - a[1]) / sqrt(2.0);
            char row[256];
            snprintf(row, sizeof row,
                     "<tr class=\"config\"><td>distill.images_per_class=%s, "
                     "observable.trainable=%s</td><td>2</td><td>%.2f ± %.2f</td>",
                     IPC[i], TR[t], m, sd);
            cr_expect(strstr(html, row), "missing row %s", row);
        }

    /* curves: one series per run */
    const char *end, *svg;
    size_t groups;
    static const char *const PER_RUN[] = {"plot-loss", "plot-val-acc"};
    for (int k = 0; k < 2; ++k) {
        svg = svg_by_id(html, PER_RUN[k], &end);
        cr_assert(svg, "no %s", PER_RUN[k]);
        in_series(svg, end, "<polyline", &groups);
        cr_expect_eq(groups, 8, "%s: %zu series", PER_RUN[k], groups);
        cr_expect_eq(count(svg, end, "<g class=\"legend\">"), 1);
    }
    /* budget: distilled and random subset for trainable and fixed, each
     * with one point per budget (3 and 6 images) */
    svg = svg_by_id(html, "plot-budget", &end);
    cr_assert(svg, "no accuracy-against-budget plot");
    cr_expect_eq(in_series(svg, end, "<circle", &groups), 8);
    cr_expect_eq(groups, 4);
    cr_expect(has(svg, end, "images per class × classes"));
    /* trainable vs fixed: two series of bars, one bar per budget */
    svg = svg_by_id(html, "plot-trainable", &end);
    cr_assert(svg, "no trainable vs fixed chart");
    cr_expect_eq(in_series(svg, end, "<rect", &groups), 4);
    cr_expect_eq(groups, 2);
    cr_expect(has(svg, end, "data-name=\"trainable Hermitian\"") &&
              has(svg, end, "data-name=\"fixed Hermitian\""));

    /* eight images, each one job's images.png */
    char *pngs[8];
    size_t lens[8];
    int j = 0;
    for (int i = 0; i < 2; ++i)
        for (int t = 0; t < 2; ++t)
            for (int s = 1; s <= 2; ++s, ++j) {
                char p[300];
                snprintf(p, sizeof p,
                         "%s/distill.images_per_class=%s,observable.trainable=%s,seed=%d/"
                         "images.png",
                         sw, IPC[i], TR[t], s);
                pngs[j] = slurp_n(p, &lens[j]);
                cr_assert(lens[j] > 0, "%s", p);
            }
    cr_expect_eq(check_images(html, pngs, lens, 8), 8);
    for (j = 0; j < 8; ++j)
        free(pngs[j]);
    free(html);
    free(out_path);
    free(sw);
}

Test(report, manifest_text_is_escaped)
{
    char *run = path2(g_tmp, "esc");
    make_run(run, "'name=<script>alert(\"x&y\")</script>' distill.iterations=6");
    cr_assert_eq(qd(NULL, NULL, "report %s", run), 0);
    char *p = path2(run, "report.html");
    size_t len;
    char *html = read_report(p, &len);
    check_well_formed(html, len);
    cr_expect_eq(count(html, html + len, "<script"), 1, "only the report's own script");
    cr_expect(!strstr(html, "alert(\"x&y\")"));
    const char *esc = "&lt;script&gt;alert(&quot;x&amp;y&quot;)&lt;/script&gt;";
    /* title, heading, legends, overrides and manifest all escape it */
    cr_expect(count(html, html + len, esc) >= 4, "%zu escaped copies",
              count(html, html + len, esc));
    free(html);
    free(p);
    free(run);
}

Test(report, missing_pieces_are_stated)
{
    char *run = path2(g_tmp, "run");
    make_run(run, "distill.iterations=6");
    /* an unfinished run: no result, no images; a metrics.csv with NaN and a
     * half-written last row */
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -f '%s/result.json' '%s/images.png'", run, run);
    cr_assert_eq(system(cmd), 0);
    char *csv = path2(run, "metrics.csv");
    const char *text = "iteration,loss,val_acc\n1,2.5,nan\n2,nan,nan\n3,2.0,0.5\n4,inf,nan\n"
                       "5,1.5,nan\n6,1.2";
    write_file(csv, text, strlen(text));
    cr_assert_eq(qd(NULL, NULL, "report %s", run), 0);
    char *p = path2(run, "report.html");
    size_t len;
    char *html = read_report(p, &len);
    check_well_formed(html, len);
    cr_expect(strstr(html, "not finished (no result.json)"));
    cr_expect(strstr(html, "no images.png yet"));
    cr_expect(strstr(html, "No finished run"));
    cr_expect(!strstr(html, "<img"));
    const char *end, *svg = svg_by_id(html, "plot-loss", &end);
    cr_assert(svg);
    cr_expect_eq(polyline_points(svg, end), 3, "only the finite complete rows are drawn");
    cr_expect(!has(svg, end, "nan") && !has(svg, end, "inf"), "a non-finite coordinate was written");
    svg = svg_by_id(html, "plot-val-acc", &end);
    cr_assert(svg);
    size_t groups;
    cr_expect_eq(in_series(svg, end, "<circle", &groups), 1);
    free(html);

    /* images.png that is not a PNG, a metrics.csv that is not a table */
    char *img = path2(run, "images.png");
    write_file(img, "GIF89a not a png", 16);
    write_file(csv, "iteration,loss\n1,abc\n", 21);
    cr_assert_eq(qd(NULL, NULL, "report %s", run), 0);
    html = read_report(p, &len);
    check_well_formed(html, len);
    cr_expect(strstr(html, "images.png is not a PNG file"));
    cr_expect(strstr(html, "metrics.csv not shown"));
    cr_expect(!strstr(html, "<img"));
    free(html);
    free(img);
    free(p);
    free(csv);
    free(run);
}

Test(report, usage_errors)
{
    char *err = NULL;
    cr_expect_eq(qd(NULL, &err, "report"), 2);
    cr_expect(strstr(err, "usage: qdistill report"), "%s", err);
    free(err);
    cr_expect_eq(qd(NULL, &err, "report %s/none", g_tmp), 2);
    cr_expect(strstr(err, "not a run directory"), "%s", err);
    free(err);
    cr_expect_eq(qd(NULL, &err, "report %s --bogus", g_tmp), 2);
    free(err);
    /* an output that cannot be written is a run failure, with the path */
    char *run = path2(g_tmp, "run");
    make_run(run, "distill.iterations=6");
    cr_expect_eq(qd(NULL, &err, "report %s --out %s/no/such/dir/r.html", run, g_tmp), 1);
    cr_expect(strstr(err, "no/such/dir"), "%s", err);
    free(err);
    free(run);
}

/* ---- the report's building blocks, against known answers -------------- */

static char *b64(const char *s)
{
    sbuf b = {0};
    sbuf_put(&b, "");
    base64_encode(&b, s, strlen(s));
    cr_assert(sbuf_ok(&b));
    return b.s;
}

Test(report_units, base64_rfc4648_vectors)
{
    /* RFC 4648 section 10: every padding case */
    static const char *const IN[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const OUT[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=",
                                      "Zm9vYmFy"};
    for (size_t i = 0; i < sizeof IN / sizeof IN[0]; ++i) {
        char *e = b64(IN[i]);
        cr_expect_str_eq(e, OUT[i]);
        free(e);
    }
    /* more than one internal chunk, and bytes >= 0x80 */
    unsigned char big[1000];
    for (size_t i = 0; i < sizeof big; ++i)
        big[i] = (unsigned char)(i * 37 + 11);
    sbuf b = {0};
    base64_encode(&b, big, sizeof big);
    size_t n;
    unsigned char *back = b64_decode(b.s, b.len, &n);
    cr_expect(n == sizeof big && memcmp(back, big, n) == 0);
    free(back);
    sbuf_free(&b);
}

Test(report_units, html_escape)
{
    sbuf b = {0};
    html_escape(&b, "a<b>&\"c\" 'd' \x01é\n");
    cr_assert(sbuf_ok(&b));
    cr_expect_str_eq(b.s, "a&lt;b&gt;&amp;&quot;c&quot; &#39;d&#39; \xEF\xBF\xBD\xC3\xA9\n");
    sbuf_free(&b);
}

Test(report_units, ticks)
{
    cr_expect_eq(svg_nice_step(21600, 5), 5000);
    cr_expect_eq(svg_nice_step(1.3, 5), 0.2);
    cr_expect_eq(svg_nice_step(0.7, 5), 0.1);
    cr_expect_eq(svg_nice_step(3, 5), 0.5);
    char buf[32];
    struct {
        double v, step;
        const char *want;
    } T[] = {{20000, 5000, "20k"}, {0, 5000, "0"},        {-1e-17, 0.2, "0"},
             {1.2, 0.2, "1.2"},    {0.05, 0.05, "0.05"}, {1.5e6, 5e5, "1.5M"},
             {3e6, 1e6, "3M"},     {250, 50, "250"},     {-0.5, 0.5, "-0.5"},
             {40, 10, "40"},       {4e5, 2e5, "0.4M"},   {1500, 500, "1500"}};
    for (size_t i = 0; i < sizeof T / sizeof T[0]; ++i) {
        svg_tick_label(buf, sizeof buf, T[i].v, T[i].step);
        cr_expect_str_eq(buf, T[i].want, "tick %g (step %g)", T[i].v, T[i].step);
    }
}

/* ---- headless Chromium --------------------------------------------------- */

static char *find_chromium(void)
{
    const char *env = getenv("QD_CHROMIUM");
    if (env && *env)
        return strdup(env);
    FILE *f = popen("command -v chromium 2>/dev/null", "r");
    char buf[512] = "";
    if (f) {
        if (!fgets(buf, sizeof buf, f))
            buf[0] = '\0';
        pclose(f);
    }
    buf[strcspn(buf, "\n")] = '\0';
    return buf[0] ? strdup(buf) : NULL;
}

/* Run Chromium on a page; its stderr (console messages included) into *log,
 * stdout into *out. Returns the exit status. */
static int chromium(const char *bin, const char *args, const char *page, char **out, char **log)
{
    char *cmd = NULL;
    cr_assert(asprintf(&cmd,
                       "timeout 90 '%s' --headless --no-sandbox --disable-gpu --no-first-run "
                       "--disable-background-networking --user-data-dir='%s/profile' "
                       "--enable-logging=stderr --v=0 %s 'file://%s' >'%s/chr.out' "
                       "2>'%s/chr.err' </dev/null",
                       bin, g_tmp, args, page, g_tmp, g_tmp) > 0);
    int st = system(cmd);
    free(cmd);
    char *o = path2(g_tmp, "chr.out"), *e = path2(g_tmp, "chr.err");
    *out = slurp(o);
    *log = slurp(e);
    free(o);
    free(e);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* Console messages of a page: lines Chromium logs as CONSOLE. */
static size_t console_lines(const char *log, char *first, size_t len)
{
    size_t n = 0;
    first[0] = '\0';
    for (const char *l = log; l && *l;) {
        const char *e = strchr(l, '\n');
        size_t ll = e ? (size_t)(e - l) : strlen(l);
        if (memmem(l, ll, ":CONSOLE", 8) && n++ == 0)
            snprintf(first, len, "%.*s", (int)ll, l);
        l = e ? e + 1 : NULL;
    }
    return n;
}

/* --dump-dom of a page: the body's image check must have run and found
 * every image decoded. Returns the number of broken images. */
static long dom_broken_images(const char *bin, const char *page, size_t *console)
{
    char *dom, *log, first[512];
    cr_assert_eq(chromium(bin, "--dump-dom", page, &dom, &log), 0, "chromium failed: %s", log);
    *console = console_lines(log, first, sizeof first);
    if (*console)
        cr_log_info("%s: %s", page, first);
    const char *checked = strstr(dom, "data-images-checked=\"yes\"");
    const char *b = strstr(dom, "data-images-broken=\"");
    long broken = checked && b ? strtol(b + 20, NULL, 10) : -1;
    free(dom);
    free(log);
    return broken;
}

Test(report, renders_in_headless_chromium, .timeout = 240)
{
    char *bin = find_chromium();
    if (!bin) {
        fprintf(stderr, "report/renders_in_headless_chromium: SKIPPED: chromium is not installed "
                        "(apt-get install chromium)\n");
        cr_skip_test("chromium is not installed (Debian package: chromium)");
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);

    /* the checks can fail: a page with a script error, a CSP-blocked
     * network image and an undecodable image is caught */
    char *bad = path2(g_tmp, "bad.html");
    const char *bad_html =
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><meta "
        "http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "script-src 'unsafe-inline'\"><title>bad</title></head><body>"
        "<img src=\"data:image/png;base64,iVBORw0KGgoAAAAN\">"
        "<img src=\"http://127.0.0.1:9/x.png\">"
        "<script>window.addEventListener('load', function () { var b = 0;"
        " document.querySelectorAll('img').forEach(function (i) {"
        " if (!i.complete || i.naturalWidth === 0) b++; });"
        " document.body.setAttribute('data-images-broken', String(b));"
        " document.body.setAttribute('data-images-checked', 'yes'); });"
        " notDefined();</script></body></html>\n";
    write_file(bad, bad_html, strlen(bad_html));
    size_t console;
    cr_expect_eq(dom_broken_images(bin, bad, &console), 2, "broken images not detected");
    cr_expect(console >= 2, "console errors not detected (%zu)", console);

    /* a run and a sweep: no console message, every image decoded */
    char *run = path2(g_tmp, "run"), *sw = path2(g_tmp, "sw");
    make_run(run, "");
    make_sweep(sw);
    char *rp = path2(run, "report.html"), *sp = path2(sw, "report.html");
    cr_assert_eq(qd(NULL, NULL, "report %s", run), 0);
    cr_assert_eq(qd(NULL, NULL, "report %s", sw), 0);
    cr_expect_eq(dom_broken_images(bin, rp, &console), 0);
    cr_expect_eq(console, 0, "console messages on the run's report");
    cr_expect_eq(dom_broken_images(bin, sp, &console), 0);
    cr_expect_eq(console, 0, "console messages on the sweep's report");

    /* a screenshot of the sweep's report: the requested size, not blank,
     * and the series colours of the plots are on it */
    char *shot = path2(g_tmp, "shot.png"), *arg = NULL, *o, *log, first[512];
    cr_assert(asprintf(&arg, "--screenshot='%s' --window-size=1200,2000", shot) > 0);
    cr_assert_eq(chromium(bin, arg, sp, &o, &log), 0, "chromium failed: %s", log);
    cr_expect_eq(console_lines(log, first, sizeof first), 0, "%s", first);
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    cr_assert(png_image_begin_read_from_file(&img, shot), "no screenshot PNG: %s", log);
    img.format = PNG_FORMAT_RGB;
    unsigned char *px = malloc(PNG_IMAGE_SIZE(img));
    cr_assert(px);
    cr_assert(png_image_finish_read(&img, NULL, px, 0, NULL), "%s", img.message);
    cr_expect_eq(img.width, 1200);
    cr_expect_eq(img.height, 2000);
    /* the first four colours of svg.c's palette */
    static const unsigned char PALETTE[4][3] = {
        {0x1f, 0x77, 0xb4}, {0xff, 0x7f, 0x0e}, {0x2c, 0xa0, 0x2c}, {0xd6, 0x27, 0x28}};
    size_t n = (size_t)img.width * img.height, differ = 0, series = 0;
    for (size_t i = 0; i < n; ++i) {
        const unsigned char *q = px + 3 * i;
        differ += memcmp(q, px, 3) != 0;
        for (int c = 0; c < 4; ++c)
            series += memcmp(q, PALETTE[c], 3) == 0;
    }
    cr_expect(differ > n / 50, "blank screenshot (%zu pixels differ from the first)", differ);
    cr_expect(series > 1000, "no plotted series visible (%zu pixels in series colours)", series);
    cr_log_info("screenshot: %zu of %zu pixels differ from the first, %zu in series colours",
                differ, n, series);
    free(px);

    clock_gettime(CLOCK_MONOTONIC, &t1);
    cr_log_info("chromium checks took %.1f s",
                (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    free(o);
    free(log);
    free(arg);
    free(shot);
    free(rp);
    free(sp);
    free(run);
    free(sw);
    free(bad);
    free(bin);
}
