/* SVG charts for the HTML report (see svg.h). Coordinates are printed with
 * one decimal: a tenth of a pixel is below what a screen shows and keeps
 * plots of long runs small. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "html.h"
#include "svg.h"

/* Layout (pixels): the plot area, the margins for ticks and labels, and the
 * legend below the plot. */
enum { WIDTH = 760, ML = 74, MR = 24, MT = 40, PH = 300, MB = 54, LEGEND_ROW = 18 };
#define PW (WIDTH - ML - MR)
#define CHAR_W 6.6   /* average width of a 12px sans-serif character */

static const char *const COLORS[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                     "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
#define N_COLORS (sizeof COLORS / sizeof COLORS[0])
/* Past the palette, series are told apart by dashes as well. */
static const char *const DASHES[] = {"", "6 3", "2 2", "8 3 2 3"};
#define N_DASHES (sizeof DASHES / sizeof DASHES[0])

static const char *color(size_t i)
{
    return COLORS[i % N_COLORS];
}

static const char *dash(size_t i)
{
    return DASHES[(i / N_COLORS) % N_DASHES];
}

typedef struct axis {
    double lo, hi, step;
    int log;
} axis;

double svg_nice_step(double range, int target)
{
    double raw = range / target;
    double mag = pow(10, floor(log10(raw)));
    double f = raw / mag;
    return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

void svg_tick_label(char *buf, size_t len, double v, double step)
{
    step = fabs(step);
    if (fabs(v) < step * 1e-9)
        v = 0;   /* no "-0" and no 1e-17 from accumulated steps */
    /* millions from a step of 0.1M ("1.5M"), thousands only in whole k */
    double scale = step >= 1e5 ? 1e6 : step >= 1e3 ? 1e3 : 1;
    const char *suffix = scale == 1e6 ? "M" : scale == 1e3 ? "k" : "";
    double s = step / scale;
    int dec = s >= 1 ? 0 : (int)ceil(-log10(s) - 1e-9);
    if (v == 0)
        snprintf(buf, len, "0");
    else if (dec > 8 || step == 0)
        snprintf(buf, len, "%.3g", v);
    else
        snprintf(buf, len, "%.*f%s", dec, v / scale, suffix);
}

/* min_step: 1 for counts, so that no tick falls between two integers. */
static void axis_linear(axis *a, double lo, double hi, double min_step)
{
    if (!(lo <= hi)) {   /* no data */
        lo = 0;
        hi = 1;
    }
    if (hi == lo) {
        double d = fabs(lo) * 0.1;
        lo -= d ? d : 1;
        hi += d ? d : 1;
    }
    a->log = 0;
    a->step = fmax(svg_nice_step(hi - lo, 5), min_step);
    a->lo = floor(lo / a->step + 1e-9) * a->step;
    a->hi = ceil(hi / a->step - 1e-9) * a->step;
    if (a->hi <= a->lo)
        a->hi = a->lo + a->step;
}

static void axis_log(axis *a, double lo, double hi)
{
    if (!(lo > 0 && hi >= lo)) {
        lo = 1;
        hi = 10;
    }
    a->log = 1;
    a->step = 0;
    a->lo = pow(10, floor(log10(lo) + 1e-9));
    a->hi = pow(10, ceil(log10(hi) - 1e-9));
    if (a->hi <= a->lo)
        a->hi = a->lo * 10;
}

/* Position along the axis in [0, 1]. */
static double frac(const axis *a, double v)
{
    return a->log ? (log10(v) - log10(a->lo)) / (log10(a->hi) - log10(a->lo))
                  : (v - a->lo) / (a->hi - a->lo);
}

static double px(const axis *a, double v)
{
    return ML + frac(a, v) * PW;
}

static double py(const axis *a, double v)
{
    return MT + (1 - frac(a, v)) * PH;
}

/* Tick values of an axis into t (at most max); returns the count. */
static size_t ticks(const axis *a, double *t, size_t max)
{
    size_t n = 0;
    if (a->log) {
        int e0 = (int)lround(log10(a->lo)), e1 = (int)lround(log10(a->hi));
        static const double M[] = {1, 2, 5};
        size_t nm = e1 - e0 > 3 ? 1 : 3;   /* many decades: powers of ten only */
        for (int e = e0; e <= e1; ++e)
            for (size_t m = 0; m < nm && n < max; ++m) {
                double v = M[m] * pow(10, e);
                if (v <= a->hi * (1 + 1e-9))
                    t[n++] = v;
            }
        return n;
    }
    long k = lround((a->hi - a->lo) / a->step);
    for (long i = 0; i <= k && n < max; ++i)
        t[n++] = a->lo + (double)i * a->step;
    return n;
}

static void tick_text(char *buf, size_t len, const axis *a, double v)
{
    if (a->log)
        snprintf(buf, len, "%g", v);
    else
        svg_tick_label(buf, len, v, a->step);
}

static void open_svg(sbuf *b, const char *id, const char *title, int height, size_t n_series)
{
    sbuf_printf(b,
                "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"plot\" id=\"%s\" width=\"%d\" "
                "height=\"%d\" viewBox=\"0 0 %d %d\" role=\"img\" data-series=\"%zu\" "
                "aria-label=\"",
                id, WIDTH, height, WIDTH, height, n_series);
    html_escape(b, title);
    sbuf_printf(b, "\" font-family=\"sans-serif\" font-size=\"12\">\n"
                   "<rect width=\"%d\" height=\"%d\" fill=\"#fff\"/>\n"
                   "<text class=\"title\" x=\"%d\" y=\"22\" text-anchor=\"middle\" "
                   "font-size=\"14\" font-weight=\"bold\">",
                WIDTH, height, WIDTH / 2);
    html_escape(b, title);
    sbuf_put(b, "</text>\n");
}

/* Grid lines, tick labels and axis labels. xa NULL: the caller labels x. */
static void draw_axes(sbuf *b, const axis *xa, const axis *ya, const char *xlabel,
                      const char *ylabel)
{
    double t[64];
    char lab[64];
    sbuf_put(b, "<g class=\"axes\">\n");
    size_t n = ticks(ya, t, 64);
    for (size_t i = 0; i < n; ++i) {
        double y = py(ya, t[i]);
        tick_text(lab, sizeof lab, ya, t[i]);
        sbuf_printf(b,
                    "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>"
                    "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n",
                    ML, y, ML + PW, y, ML - 6, y + 4, lab);
    }
    if (xa) {
        n = ticks(xa, t, 64);
        for (size_t i = 0; i < n; ++i) {
            double x = px(xa, t[i]);
            tick_text(lab, sizeof lab, xa, t[i]);
            sbuf_printf(b,
                        "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#e4e4e4\"/>"
                        "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%s</text>\n",
                        x, MT, x, MT + PH, x, MT + PH + 16, lab);
        }
    }
    sbuf_printf(b, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" "
                   "stroke=\"#444\"/>\n",
                ML, MT, PW, PH);
    if (xlabel) {
        sbuf_printf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">", ML + PW / 2,
                    MT + PH + 38);
        html_escape(b, xlabel);
        sbuf_put(b, "</text>\n");
    }
    sbuf_printf(b, "<text transform=\"translate(16 %d) rotate(-90)\" text-anchor=\"middle\">",
                MT + PH / 2);
    html_escape(b, ylabel);
    sbuf_put(b, "</text>\n</g>\n");
}

/* Legend text, cut to max characters (UTF-8 aware) with an ellipsis. */
static void put_cut(sbuf *b, const char *s, size_t max)
{
    size_t chars = 0, i = 0;
    for (; s[i]; ++i)
        if (((unsigned char)s[i] & 0xC0) != 0x80 && ++chars > max)
            break;
    html_escape_n(b, s, i);
    if (s[i])
        sbuf_put(b, "\xE2\x80\xA6");
}

static size_t text_chars(const char *s)
{
    size_t n = 0;
    for (; *s; ++s)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* Legend layout: as many columns as the longest name allows (1 to 4). */
static size_t legend_cols(const char *const *names, size_t n, size_t *max_chars)
{
    size_t longest = 1;
    for (size_t i = 0; i < n; ++i)
        if (text_chars(names[i]) > longest)
            longest = text_chars(names[i]);
    size_t cols = (size_t)(PW / (longest * CHAR_W + 40));
    cols = cols < 1 ? 1 : cols > 4 ? 4 : cols;
    if (cols > n)
        cols = n ? n : 1;
    *max_chars = (size_t)((PW / (double)cols - 40) / CHAR_W);
    return cols;
}

static int legend_height(const char *const *names, size_t n)
{
    size_t mc, cols = legend_cols(names, n, &mc);
    return n ? (int)((n + cols - 1) / cols) * LEGEND_ROW + 8 : 0;
}

/* Legend entry i is drawn in colour col[i] with dashes dsh[i] (NULL: the
 * i-th colour, solid past the palette rules). */
static void draw_legend(sbuf *b, const char *const *names, size_t n, int y0, int bars,
                        const char *const *col, const char *const *dsh)
{
    size_t mc, cols = legend_cols(names, n, &mc);
    double cw = PW / (double)cols;
    sbuf_put(b, "<g class=\"legend\">\n");
    for (size_t i = 0; i < n; ++i) {
        double x = ML + (double)(i % cols) * cw;
        double y = y0 + (double)(i / cols) * LEGEND_ROW + 12;
        if (bars)
            sbuf_printf(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"14\" height=\"10\" fill=\"%s\"/>",
                        x + 4, y - 9, col ? col[i] : color(i));
        else
            sbuf_printf(b,
                        "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                        "stroke-width=\"2\" stroke-dasharray=\"%s\"/>",
                        x, y - 4, x + 24, y - 4, col ? col[i] : color(i), dsh ? dsh[i] : dash(i));
        sbuf_printf(b, "<text x=\"%.1f\" y=\"%.1f\">", x + 30, y);
        put_cut(b, names[i], mc);
        sbuf_put(b, "</text>\n");
    }
    sbuf_put(b, "</g>\n");
}

static int point_ok(const svg_plot *p, double x, double y)
{
    return isfinite(x) && isfinite(y) && (!p->log_x || x > 0);
}

static void error_bar(sbuf *b, double x, double y1, double y2, const char *col)
{
    sbuf_printf(b,
                "<path d=\"M%.1f %.1fV%.1fM%.1f %.1fh8M%.1f %.1fh8\" stroke=\"%s\" "
                "fill=\"none\"/>\n",
                x, y1, y2, x - 4, y1, x - 4, y2, col);
}

void svg_line_plot(sbuf *b, const svg_plot *p)
{
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
    size_t finite = 0;
    for (size_t s = 0; s < p->n_series; ++s) {
        const svg_series *sr = &p->series[s];
        for (size_t i = 0; i < sr->n; ++i) {
            double x = sr->x[i], y = sr->y[i];
            if (!point_ok(p, x, y))
                continue;
            double e = sr->err && isfinite(sr->err[i]) ? fabs(sr->err[i]) : 0;
            xlo = fmin(xlo, x), xhi = fmax(xhi, x);
            ylo = fmin(ylo, y - e), yhi = fmax(yhi, y + e);
            ++finite;
        }
    }
    axis ax, ay;
    int marked = 0;   /* dots at the ends would sit on the frame: leave room */
    for (size_t s = 0; s < p->n_series; ++s)
        marked |= p->series[s].markers;
    if (p->log_x) {
        axis_log(&ax, xlo, xhi);
    } else {
        double pad = marked && xhi > xlo ? 0.04 * (xhi - xlo) : 0;
        /* ...but not below zero when the data are not (iterations, counts) */
        axis_linear(&ax, xlo >= 0 ? fmax(0, xlo - pad) : xlo - pad, xhi + pad,
                    p->integer_x ? 1 : 0);
    }
    axis_linear(&ay, ylo, yhi, 0);

    const char **names = calloc(3 * (p->n_series + 1), sizeof *names);
    if (!names) {
        b->oom = 1;
        return;
    }
    const char **cols = names + p->n_series + 1, **dashes = cols + p->n_series + 1;
    for (size_t s = 0; s < p->n_series; ++s) {
        const svg_series *sr = &p->series[s];
        names[s] = sr->name ? sr->name : "";
        cols[s] = sr->color > 0 ? color((size_t)sr->color - 1) : color(s);
        dashes[s] = sr->dashed ? "6 4" : sr->color > 0 ? "" : dash(s);
    }
    int lh = legend_height(names, p->n_series);
    open_svg(b, p->id, p->title, MT + PH + MB + lh, p->n_series);
    draw_axes(b, &ax, &ay, p->xlabel, p->ylabel);
    if (finite == 0)
        sbuf_printf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" fill=\"#888\">no data "
                       "points</text>\n",
                    ML + PW / 2, MT + PH / 2);
    for (size_t s = 0; s < p->n_series; ++s) {
        const svg_series *sr = &p->series[s];
        const char *col = cols[s];
        sbuf_put(b, "<g class=\"series\" data-name=\"");
        html_escape(b, names[s]);
        sbuf_put(b, "\">\n");
        size_t np = 0;
        for (size_t i = 0; i < sr->n; ++i)
            np += point_ok(p, sr->x[i], sr->y[i]);
        if (np >= 2) {
            sbuf_printf(b, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" "
                           "stroke-dasharray=\"%s\" points=\"", col, dashes[s]);
            for (size_t i = 0; i < sr->n; ++i)
                if (point_ok(p, sr->x[i], sr->y[i]))
                    sbuf_printf(b, "%.1f,%.1f ", px(&ax, sr->x[i]), py(&ay, sr->y[i]));
            sbuf_put(b, "\"/>\n");
        }
        for (size_t i = 0; i < sr->n; ++i) {
            if (!point_ok(p, sr->x[i], sr->y[i]))
                continue;
            double x = px(&ax, sr->x[i]), y = py(&ay, sr->y[i]);
            if (sr->err && isfinite(sr->err[i]) && sr->err[i] != 0)
                error_bar(b, x, py(&ay, sr->y[i] - fabs(sr->err[i])),
                          py(&ay, sr->y[i] + fabs(sr->err[i])), col);
            if (sr->markers || np == 1)
                sbuf_printf(b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", x, y,
                            col);
        }
        sbuf_put(b, "</g>\n");
    }
    draw_legend(b, names, p->n_series, MT + PH + MB, 0, cols, dashes);
    sbuf_put(b, "</svg>\n");
    free(names);
}

void svg_bar_chart(sbuf *b, const svg_bars *p)
{
    double lo = 0, hi = 0;
    size_t nb = p->n_groups * p->n_names;
    for (size_t i = 0; i < nb; ++i) {
        if (!isfinite(p->mean[i]))
            continue;
        double e = p->err && isfinite(p->err[i]) ? fabs(p->err[i]) : 0;
        lo = fmin(lo, p->mean[i] - e);
        hi = fmax(hi, p->mean[i] + e);
    }
    axis ay;
    axis_linear(&ay, lo, hi, 0);
    int lh = legend_height(p->names, p->n_names);
    open_svg(b, p->id, p->title, MT + PH + MB + lh, p->n_names);
    draw_axes(b, NULL, &ay, NULL, p->ylabel);
    double gw = p->n_groups ? PW / (double)p->n_groups : PW;
    double bw = fmin(56, gw * 0.7 / (double)(p->n_names ? p->n_names : 1));
    double y0 = py(&ay, 0);
    for (size_t j = 0; j < p->n_names; ++j) {
        sbuf_put(b, "<g class=\"series\" data-name=\"");
        html_escape(b, p->names[j]);
        sbuf_put(b, "\">\n");
        for (size_t g = 0; g < p->n_groups; ++g) {
            double m = p->mean[g * p->n_names + j];
            if (!isfinite(m))
                continue;
            double e = p->err && isfinite(p->err[g * p->n_names + j])
                           ? fabs(p->err[g * p->n_names + j])
                           : 0;
            double x = ML + g * gw + (gw - bw * (double)p->n_names) / 2 + bw * (double)j;
            double ym = py(&ay, m);
            sbuf_printf(b,
                        "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
                        "fill=\"%s\"/>\n",
                        x + 1, fmin(ym, y0), bw - 2, fabs(y0 - ym), color(j));
            if (e > 0)
                error_bar(b, x + bw / 2, py(&ay, m - e), py(&ay, m + e), "#222");
            sbuf_printf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" "
                           "font-size=\"11\">%.*f</text>\n",
                        x + bw / 2, py(&ay, m + (m >= 0 ? e : 0)) - 5, p->decimals, m);
        }
        sbuf_put(b, "</g>\n");
    }
    /* category labels under the axis, cut to the group's width */
    size_t max_chars = (size_t)fmax(4, gw / CHAR_W);
    for (size_t g = 0; g < p->n_groups; ++g) {
        sbuf_printf(b, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">",
                    ML + (g + 0.5) * gw, MT + PH + 18);
        put_cut(b, p->groups[g], max_chars);
        sbuf_put(b, "</text>\n");
    }
    draw_legend(b, p->names, p->n_names, MT + PH + MB, 1, NULL, NULL);
    sbuf_put(b, "</svg>\n");
}
