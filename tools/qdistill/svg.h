/* SVG charts drawn by our own code for the HTML report (no JavaScript, no
 * network): a line plot (optionally with markers, error bars and a
 * logarithmic x axis) and a grouped bar chart with error bars. Axes carry
 * "nice" tick values (1, 2, 5 × 10^k) and labels; points that are not
 * finite are skipped, never drawn at 0. Every series is one
 * <g class="series" data-name="..."> so a test can count them. */
#ifndef QDISTILL_CLI_SVG_H
#define QDISTILL_CLI_SVG_H

#include <stddef.h>

#include "sbuf.h"

typedef struct svg_series {
    const char *name;     /* legend text */
    const double *x, *y;  /* n points */
    const double *err;    /* NULL, or ± half-lengths of vertical error bars */
    size_t n;
    int markers;          /* a dot at each point (always for a single point) */
    int color;            /* 1 + palette index to share a colour; 0: the series' own */
    int dashed;           /* a dashed line (e.g. a baseline next to its method) */
} svg_series;

typedef struct svg_plot {
    const char *id;       /* the svg element's id */
    const char *title, *xlabel, *ylabel;
    int log_x;            /* logarithmic x axis (points with x <= 0 skipped) */
    int integer_x;        /* x is a count: tick spacing at least 1 */
    const svg_series *series;
    size_t n_series;
} svg_plot;

void svg_line_plot(sbuf *b, const svg_plot *p);

typedef struct svg_bars {
    const char *id;
    const char *title, *ylabel;
    const char *const *groups;   /* categories along x */
    size_t n_groups;
    const char *const *names;    /* bars within each group (the series, in the legend) */
    size_t n_names;
    const double *mean;          /* [group * n_names + name]; not finite: no bar */
    const double *err;           /* same layout; NULL or not finite: no error bar */
    int decimals;                /* of the value printed above each bar */
} svg_bars;

void svg_bar_chart(sbuf *b, const svg_bars *p);

/* A tick label for v on an axis with tick spacing step: as many decimals as
 * the step needs, "k"/"M" for large round values (20000 -> "20k"), never
 * "-0". Exposed for tests. */
void svg_tick_label(char *buf, size_t len, double v, double step);

/* The nice tick spacing (1, 2 or 5 × 10^k) giving about `target` intervals
 * over range > 0. */
double svg_nice_step(double range, int target);

#endif
