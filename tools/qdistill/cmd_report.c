/* qdistill report: one self-contained HTML page for a run directory or a
 * sweep directory.
 *
 * Everything the page shows is inlined — SVG plots drawn by svg.c, the
 * distilled image grids as base64 data: URIs — and a Content-Security-Policy
 * forbids any network access, so the file can be mailed, archived or opened
 * offline. A missing piece (a job still running, a run without images.png,
 * an unreadable metrics.csv) is said in the page where it would have been,
 * never an error: a report of a half-finished sweep is useful. The page
 * holds no timestamp, so the same directory gives the same bytes. */
#define _GNU_SOURCE
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"
#include "cli.h"
#include "html.h"
#include "metrics.h"
#include "qdistill/config.h"
#include "qdistill/evaluate.h"
#include "qdistill/fsutil.h"
#include "qdistill/json.h"
#include "results.h"
#include "sbuf.h"
#include "svg.h"

#define WHO "qdistill report"

/* Loss curves are averaged over windows so that at most this many points are
 * drawn per run (the paper's schedule logs 21600 iterations). */
#define MAX_CURVE_POINTS 600
#define MAX_PNG_BYTES (64u << 20)
#define MAX_TEXT_BYTES (16u << 20)

typedef struct run {
    char *dir;
    char *name;            /* job name in a sweep, the manifest's name otherwise */
    qd_config *cfg;        /* manifest.yaml, NULL when unreadable */
    qd_json_value *res;    /* result.json, NULL when absent or unreadable */
    char *problem;         /* why cfg or res is missing, for the page */
    size_t group;          /* index into report.groups; (size_t)-1: none */
} run;

typedef struct report {
    const char *dir;
    int sweep;             /* dir holds sweep.yaml */
    qd_config *sweep_cfg;
    strv paths, grid_keys, cfg_keys, groups;
    run *runs;
    size_t n;
    sbuf out;
} report;

/* ---- small helpers ----------------------------------------------------- */

static double res_num(const run *r, const char *path)
{
    return r->res ? qd_json_as_number(qd_json_get(r->res, path)) : NAN;
}

static int any_res(const report *rp, const char *path)
{
    for (size_t i = 0; i < rp->n; ++i)
        if (isfinite(res_num(&rp->runs[i], path)))
            return 1;
    return 0;
}

/* The last component of a path without trailing slashes (cmd_report strips
 * them from the directory it is given). */
static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s && s[1] ? s + 1 : path;
}

/* 1234567 -> "1,234,567"; non-integers and huge values with %.4g. */
static void fmt_count(char *buf, size_t len, double v)
{
    if (!isfinite(v)) {
        snprintf(buf, len, "-");
        return;
    }
    if (v != floor(v) || fabs(v) >= 1e18) {
        snprintf(buf, len, "%.4g", v);
        return;
    }
    char digits[32];
    int n = snprintf(digits, sizeof digits, "%.0f", fabs(v));
    size_t o = 0;
    if (v < 0 && o + 1 < len)
        buf[o++] = '-';
    for (int i = 0; i < n && o + 2 < len; ++i) {
        buf[o++] = digits[i];
        if ((n - i - 1) % 3 == 0 && i + 1 < n)
            buf[o++] = ',';
    }
    buf[o < len ? o : len - 1] = '\0';
}

static void fmt_duration(char *buf, size_t len, double s)
{
    if (!isfinite(s))
        snprintf(buf, len, "-");
    else if (s < 1)
        snprintf(buf, len, "%.3f s", s);
    else if (s < 60)
        snprintf(buf, len, "%.1f s", s);
    else if (s < 3600)
        snprintf(buf, len, "%d min %02d s", (int)(s / 60), (int)fmod(s, 60));
    else
        snprintf(buf, len, "%d h %02d min", (int)(s / 3600), (int)fmod(s / 60, 60));
}

static void fmt_mb(char *buf, size_t len, double mb)
{
    if (!isfinite(mb))
        snprintf(buf, len, "-");
    else if (mb >= 1024)
        snprintf(buf, len, "%.2f GB", mb / 1024);
    else
        snprintf(buf, len, mb >= 10 ? "%.0f MB" : "%.1f MB", mb);
}

static void put_note(report *rp, const char *cls, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A sentence in the page (escaped), e.g. what is missing and why. */
static void put_note(report *rp, const char *cls, const char *fmt, ...)
{
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    sbuf_printf(&rp->out, "<p class=\"%s\">", cls);
    html_escape(&rp->out, buf);
    sbuf_put(&rp->out, "</p>\n");
}

/* A text file in <pre> (escaped), or a note that it is missing. */
static void put_file_pre(report *rp, const char *dir, const char *name, const char *id)
{
    char *p = join2(dir, "/", name);
    void *data = NULL;
    size_t len = 0;
    qd_error err;
    if (!p || qd_read_file(p, MAX_TEXT_BYTES, &data, &len, &err) != QD_OK) {
        put_note(rp, "missing", "%s: %s", name, p ? err.msg : "out of memory");
    } else {
        sbuf_printf(&rp->out, "<pre id=\"%s\">", id);
        html_escape_n(&rp->out, data, len);
        sbuf_put(&rp->out, "</pre>\n");
    }
    free(data);
    free(p);
}

/* ---- loading ----------------------------------------------------------- */

static void run_free(run *r)
{
    free(r->dir);
    free(r->name);
    free(r->problem);
    qd_config_destroy(r->cfg);
    qd_json_value_free(r->res);
}

static void set_problem(run *r, const char *msg)
{
    if (!r->problem)
        r->problem = strdup(msg);
}

static int load(report *rp)
{
    if (results_collect(rp->dir, &rp->paths, &rp->grid_keys, WHO) != 0)
        return -1;
    rp->sweep = has_file(rp->dir, "sweep.yaml") && !has_file(rp->dir, "manifest.yaml");
    if (rp->sweep) {
        char *p = join2(rp->dir, "/", "sweep.yaml");
        qd_error err;
        if (!p || qd_config_load(p, NULL, &rp->sweep_cfg, &err) != QD_OK) {
            fprintf(stderr, WHO ": %s\n", p ? err.msg : "out of memory");
            free(p);
            return -1;
        }
        free(p);
    }
    /* configurations: the grid keys except the seed */
    for (size_t k = 0; k < rp->grid_keys.n; ++k)
        if (strcmp(rp->grid_keys.v[k], "seed") != 0 &&
            strv_push(&rp->cfg_keys, strdup(rp->grid_keys.v[k])) != 0)
            return -1;
    rp->runs = calloc(rp->paths.n + 1, sizeof *rp->runs);
    if (!rp->runs)
        return -1;
    rp->n = rp->paths.n;
    for (size_t i = 0; i < rp->n; ++i) {
        run *r = &rp->runs[i];
        r->group = (size_t)-1;
        r->dir = strdup(rp->paths.v[i]);
        if (!r->dir)
            return -1;
        qd_error err;
        char *mp = join2(r->dir, "/", "manifest.yaml"), *jp = join2(r->dir, "/", "result.json");
        if (!mp || !jp) {
            free(mp);
            free(jp);
            return -1;
        }
        if (!has_file(r->dir, "manifest.yaml"))
            set_problem(r, "not started (no manifest.yaml)");
        else if (qd_config_load(mp, NULL, &r->cfg, &err) != QD_OK)
            set_problem(r, err.msg);
        if (r->cfg && !has_file(r->dir, "result.json"))
            set_problem(r, "not finished (no result.json)");
        else if (r->cfg && qd_json_read_file(jp, &r->res, &err) != QD_OK)
            set_problem(r, err.msg);
        free(mp);
        free(jp);
        const char *mname = r->cfg ? qd_node_str(qd_node_get(qd_config_root(r->cfg), "name")) : NULL;
        /* one run: its manifest's name; many: their directories, which are
         * unique where names need not be */
        r->name = strdup(rp->n > 1 || !mname ? base_name(r->dir) : mname);
        if (!r->name)
            return -1;
        /* the row of the results table this run belongs to */
        char *lab = NULL;
        if (!r->cfg)
            continue;
        if (rp->sweep)
            lab = results_label(qd_config_root(r->cfg), r->dir, &rp->cfg_keys);
        else
            lab = strdup(r->name);
        if (!lab)
            return -1;
        if ((r->group = strv_find(&rp->groups, lab)) == (size_t)-1) {
            r->group = rp->groups.n;
            if (strv_push(&rp->groups, lab) != 0)
                return -1;
        } else {
            free(lab);
        }
    }
    return 0;
}

static void report_free(report *rp)
{
    for (size_t i = 0; i < rp->n; ++i)
        run_free(&rp->runs[i]);
    free(rp->runs);
    qd_config_destroy(rp->sweep_cfg);
    strv_free(&rp->paths);
    strv_free(&rp->grid_keys);
    strv_free(&rp->cfg_keys);
    strv_free(&rp->groups);
    sbuf_free(&rp->out);
}

/* The display text of a configuration label ("all" for the empty one). */
static char *group_text(const report *rp, size_t g)
{
    if (!*rp->groups.v[g])
        return strdup("all runs");
    if (!rp->sweep)
        return strdup(rp->groups.v[g]);
    /* "key=value, key=value" */
    sbuf b = {0};
    const char *p = rp->groups.v[g];
    for (size_t k = 0; k < rp->cfg_keys.n; ++k) {
        size_t len = strcspn(p, RESULTS_SEP);
        sbuf_printf(&b, "%s%s=%.*s", k ? ", " : "", rp->cfg_keys.v[k], (int)len, p);
        p += len + (p[len] != '\0');
    }
    if (!b.s || !sbuf_ok(&b)) {
        sbuf_free(&b);
        return NULL;
    }
    return b.s;
}

/* Values of path over the finished runs of group g (NaN skipped). */
static size_t group_values(const report *rp, size_t g, const char *path, double *v)
{
    size_t n = 0;
    for (size_t i = 0; i < rp->n; ++i)
        if (rp->runs[i].group == g) {
            double x = res_num(&rp->runs[i], path);
            if (isfinite(x))
                v[n++] = x;
        }
    return n;
}

static size_t group_runs(const report *rp, size_t g)
{
    size_t n = 0;
    for (size_t i = 0; i < rp->n; ++i)
        n += rp->runs[i].group == g && rp->runs[i].res;
    return n;
}

/* ---- sections ---------------------------------------------------------- */

static void put_header(report *rp)
{
    sbuf *b = &rp->out;
    const char *title = rp->n == 1 ? rp->runs[0].name : base_name(rp->dir);
    sbuf_put(b, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
                "img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\n"
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    sbuf_printf(b, "<meta name=\"generator\" content=\"qdistill %s\">\n<title>qdistill report: ",
                qd_version());
    html_escape(b, title);
    sbuf_put(b,
             "</title>\n<style>\n"
             "body{font-family:sans-serif;margin:24px auto;max-width:1100px;padding:0 16px;"
             "color:#222;line-height:1.4}\n"
             "h1{font-size:1.6em;margin-bottom:4px}h2{border-bottom:1px solid #ccc;"
             "padding-bottom:4px;margin-top:36px}\n"
             "table{border-collapse:collapse;margin:8px 0 16px}th,td{border:1px solid #ccc;"
             "padding:4px 8px;text-align:right}\n"
             "td{white-space:nowrap}.scroll{overflow-x:auto;max-width:100%}\n"
             "th:first-child,td:first-child{text-align:left}thead th{background:#f3f3f3}\n"
             "pre{background:#f7f7f7;border:1px solid #ddd;padding:8px;overflow:auto;"
             "max-height:480px;font-size:12px}\n"
             "svg.plot{display:block;max-width:100%;height:auto;margin:8px 0 20px}\n"
             "figure{display:inline-block;max-width:100%;margin:8px 16px 16px 0;"
             "vertical-align:top}figcaption{font-size:12px;color:#555;"
             "overflow-wrap:anywhere}\n"
             "img.grid{image-rendering:pixelated;border:1px solid #ccc;max-width:100%;height:auto}\n"
             ".missing{color:#a15c00;background:#fff6e6;border-left:4px solid #e0a030;"
             "padding:4px 8px}\n.meta{color:#555}nav a{margin-right:12px}\n"
             "</style>\n</head>\n<body>\n<h1>qdistill report: ");
    html_escape(b, title);
    sbuf_put(b, "</h1>\n<p class=\"meta\">");
    sbuf_put(b, rp->sweep ? "Sweep directory " : rp->n > 1 ? "Directory of runs " : "Run directory ");
    sbuf_put(b, "<code>");
    html_escape(b, rp->dir);
    size_t done = 0;
    for (size_t i = 0; i < rp->n; ++i)
        done += rp->runs[i].res != NULL;
    sbuf_printf(b, "</code>: %zu run%s, %zu finished. Generated by qdistill %s.</p>\n", rp->n,
                rp->n == 1 ? "" : "s", done, qd_version());
    sbuf_put(b, "<nav><a href=\"#results\">Results</a><a href=\"#curves\">Curves</a>");
    if (rp->sweep)
        sbuf_put(b, "<a href=\"#ablations\">Ablations</a>");
    sbuf_put(b, "<a href=\"#images\">Distilled images</a><a href=\"#quantum-cost\">Quantum "
                "cost</a><a href=\"#resources\">Time and memory</a><a href=\"#manifest\">"
                "Manifest</a></nav>\n");
    for (size_t i = 0; i < rp->n; ++i)
        if (rp->runs[i].problem)
            put_note(rp, "missing", "%s: %s", rp->runs[i].name, rp->runs[i].problem);
}

typedef struct column {
    const char *path, *head;
} column;

static const column RESULT_COLS[] = {
    {"distilled.test_acc", "distilled set: test accuracy (%)"},
    {"baselines.random_subset.test_acc", "random real subset (%)"},
    {"baselines.untrained.test_acc", "untrained (%)"},
    {"distiller.best_val_acc", "best validation accuracy (%)"},
    {"train.test_acc", "full-data training: test accuracy (%)"},
    {"distiller.images", "images"},
    {"distiller.iterations", "iterations"},
    {"train.epochs", "epochs"},
};
#define N_RESULT_COLS (sizeof RESULT_COLS / sizeof RESULT_COLS[0])

/* One cell: mean ± std over the runs of a group (the value alone for one
 * run, or for a count every run agrees on). */
static void put_cell(report *rp, const double *v, size_t n, int pct, size_t all)
{
    char buf[128];
    double m, s;
    if (n >= 1)
        qd_mean_std(v, n, &m, &s);
    if (n == 1 || (n > 1 && !pct && s == 0)) {
        if (pct)
            snprintf(buf, sizeof buf, "%.2f", 100 * m);
        else
            snprintf(buf, sizeof buf, "%.6g", m);
        if (n < all) {
            size_t w = strlen(buf);
            snprintf(buf + w, sizeof buf - w, " (n=%zu)", n);
        }
    } else {
        results_cell_text(buf, sizeof buf, v, n, pct, all);
    }
    sbuf_put(&rp->out, "<td>");
    html_escape(&rp->out, buf);
    sbuf_put(&rp->out, "</td>");
}

static void put_results(report *rp)
{
    sbuf *b = &rp->out;
    sbuf_put(b, "<section id=\"results\">\n<h2>Results</h2>\n");
    int cols[N_RESULT_COLS], ncols = 0;
    for (size_t c = 0; c < N_RESULT_COLS; ++c)
        ncols += cols[c] = any_res(rp, RESULT_COLS[c].path);
    if (ncols == 0 || rp->groups.n == 0) {
        put_note(rp, "missing", "No finished run: there is no result.json to show yet.");
        sbuf_put(b, "</section>\n");
        return;
    }
    if (rp->sweep)
        put_note(rp, "meta", "One row per configuration (the grid keys other than seed); each "
                             "cell is the mean ± sample standard deviation over its runs.");
    double *v = calloc(rp->n + 1, sizeof *v);
    if (!v) {
        b->oom = 1;
        return;
    }
    size_t all = 0;
    for (size_t g = 0; g < rp->groups.n; ++g)
        all = group_runs(rp, g) > all ? group_runs(rp, g) : all;
    sbuf_put(b, "<div class=\"scroll\"><table id=\"results-table\">\n<thead><tr><th>");
    if (!rp->sweep)
        sbuf_put(b, "run");
    for (size_t k = 0; k < rp->cfg_keys.n; ++k) {
        sbuf_put(b, k ? ", " : "");
        html_escape(b, rp->cfg_keys.v[k]);
    }
    if (rp->sweep && rp->cfg_keys.n == 0)
        sbuf_put(b, "configuration");
    sbuf_put(b, "</th><th>runs</th>");
    for (size_t c = 0; c < N_RESULT_COLS; ++c)
        if (cols[c]) {
            sbuf_put(b, "<th>");
            html_escape(b, RESULT_COLS[c].head);
            sbuf_put(b, "</th>");
        }
    sbuf_put(b, "</tr></thead>\n<tbody>\n");
    for (size_t g = 0; g < rp->groups.n; ++g) {
        char *t = group_text(rp, g);
        sbuf_put(b, "<tr class=\"config\"><td>");
        html_escape(b, t ? t : "?");
        free(t);
        sbuf_printf(b, "</td><td>%zu</td>", group_runs(rp, g));
        for (size_t c = 0; c < N_RESULT_COLS; ++c)
            if (cols[c]) {
                size_t n = group_values(rp, g, RESULT_COLS[c].path, v);
                put_cell(rp, v, n, results_is_acc(RESULT_COLS[c].path), all);
            }
        sbuf_put(b, "</tr>\n");
    }
    sbuf_put(b, "</tbody>\n</table></div>\n</section>\n");
    free(v);
}

/* Window means of (x, y) so at most max points remain; NaN y are left out of
 * a window's mean (a window of only NaN gives NaN, which the plot skips). */
static size_t downsample(const double *x, const double *y, size_t n, size_t max, double *ox,
                         double *oy, size_t *window)
{
    size_t w = n > max ? (n + max - 1) / max : 1, m = 0;
    *window = w;
    for (size_t i = 0; i < n; i += w, ++m) {
        double sx = 0, sy = 0;
        size_t cx = 0, cy = 0;
        for (size_t j = i; j < n && j < i + w; ++j) {
            sx += x[j], ++cx;
            if (isfinite(y[j]))
                sy += y[j], ++cy;
        }
        ox[m] = sx / (double)cx;
        oy[m] = cy ? sy / (double)cy : NAN;
    }
    return m;
}

typedef struct curve {
    double *x, *y;
    size_t n;
} curve;

static void curves_free(curve *c, size_t n)
{
    for (size_t i = 0; c && i < n; ++i) {
        free(c[i].x);
        free(c[i].y);
    }
    free(c);
}

static void plot_curves(report *rp, const char *id, const char *title, const char *ylabel,
                        const char *xlabel, curve *c, const run *const *who, size_t n, int markers,
                        int integer_x)
{
    svg_series *s = calloc(n + 1, sizeof *s);
    if (!s) {
        rp->out.oom = 1;
        return;
    }
    for (size_t i = 0; i < n; ++i)
        s[i] = (svg_series){.name = who[i]->name, .x = c[i].x, .y = c[i].y, .n = c[i].n,
                            .markers = markers};
    svg_plot p = {.id = id, .title = title, .xlabel = xlabel, .ylabel = ylabel, .series = s,
                  .n_series = n, .integer_x = integer_x};
    svg_line_plot(&rp->out, &p);
    free(s);
}

static void put_curves(report *rp)
{
    sbuf *b = &rp->out;
    sbuf_put(b, "<section id=\"curves\">\n<h2>Curves</h2>\n");
    curve *loss = calloc(rp->n + 1, sizeof *loss), *acc = calloc(rp->n + 1, sizeof *acc);
    const run **who = calloc(rp->n + 1, sizeof *who);
    size_t n = 0, window = 1, max_acc_points = 0;
    if (!loss || !acc || !who)
        goto oom;
    for (size_t i = 0; i < rp->n; ++i) {
        run *r = &rp->runs[i];
        if (!has_file(r->dir, "metrics.csv"))
            continue;
        char *p = join2(r->dir, "/", "metrics.csv");
        metrics m;
        qd_error err;
        if (!p)
            goto oom;
        int rc = metrics_read(p, &m, &err);
        free(p);
        if (rc != QD_OK) {
            put_note(rp, "missing", "%s: metrics.csv not shown: %s", r->name, err.msg);
            continue;
        }
        long ci = metrics_column(&m, "iteration"), cl = metrics_column(&m, "loss"),
             cv = metrics_column(&m, "val_acc");
        if (cl < 0 || m.rows == 0) {
            put_note(rp, "missing", "%s: metrics.csv has %s", r->name,
                     cl < 0 ? "no loss column" : "no rows yet");
            metrics_free(&m);
            continue;
        }
        double *x = malloc(m.rows * sizeof *x), *y = malloc(m.rows * sizeof *y);
        loss[n].x = malloc(m.rows * sizeof *x);
        loss[n].y = malloc(m.rows * sizeof *y);
        acc[n].x = malloc(m.rows * sizeof *x);
        acc[n].y = malloc(m.rows * sizeof *y);
        if (!x || !y || !loss[n].x || !loss[n].y || !acc[n].x || !acc[n].y) {
            free(x);
            free(y);
            metrics_free(&m);
            ++n;   /* so its arrays are freed */
            goto oom;
        }
        for (size_t k = 0; k < m.rows; ++k) {
            x[k] = ci >= 0 ? m.data[k * m.ncols + (size_t)ci] : (double)(k + 1);
            y[k] = m.data[k * m.ncols + (size_t)cl];
        }
        size_t w;
        loss[n].n = downsample(x, y, m.rows, MAX_CURVE_POINTS, loss[n].x, loss[n].y, &w);
        window = w > window ? w : window;
        for (size_t k = 0; cv >= 0 && k < m.rows; ++k) {
            double a = m.data[k * m.ncols + (size_t)cv];
            if (isfinite(a)) {
                acc[n].x[acc[n].n] = x[k];
                acc[n].y[acc[n].n++] = 100 * a;
            }
        }
        max_acc_points = acc[n].n > max_acc_points ? acc[n].n : max_acc_points;
        who[n++] = r;
        free(x);
        free(y);
        metrics_free(&m);
    }
    if (n) {
        char title[128];
        if (window > 1)
            snprintf(title, sizeof title, "Outer loss (mean over windows of %zu iterations)",
                     window);
        else
            snprintf(title, sizeof title, "Outer loss");
        plot_curves(rp, "plot-loss", title, "loss", "iteration", loss, who, n, 0, 1);
        if (max_acc_points)
            plot_curves(rp, "plot-val-acc", "Validation accuracy of the distilled set",
                        "validation accuracy (%)", "iteration", acc, who, n,
                        max_acc_points <= 60, 1);
        else
            put_note(rp, "missing", "No validation accuracy yet: every val_acc in metrics.csv "
                                    "is nan (distill.validate_every not reached).");
    }
    /* qdistill train runs: test accuracy per epoch from result.json */
    size_t nt = 0;
    curve *tc = calloc(rp->n + 1, sizeof *tc);
    const run **tw = calloc(rp->n + 1, sizeof *tw);
    if (!tc || !tw) {
        free(tc);
        free(tw);
        goto oom;
    }
    for (size_t i = 0; i < rp->n; ++i) {
        const qd_json_value *a =
            rp->runs[i].res ? qd_json_get(rp->runs[i].res, "train.test_acc_per_epoch") : NULL;
        size_t len = qd_json_size(a);
        if (qd_json_type_of(a) != QD_JSON_ARRAY || len == 0)
            continue;
        tc[nt].x = malloc(len * sizeof(double));
        tc[nt].y = malloc(len * sizeof(double));
        tw[nt] = &rp->runs[i];
        if (!tc[nt].x || !tc[nt].y) {
            ++nt;
            break;
        }
        for (size_t k = 0; k < len; ++k) {
            tc[nt].x[k] = (double)(k + 1);
            tc[nt].y[k] = 100 * qd_json_as_number(qd_json_at(a, k));
        }
        tc[nt++].n = len;
    }
    if (nt)
        plot_curves(rp, "plot-train-acc", "Full-data training: test accuracy per epoch",
                    "test accuracy (%)", "epoch", tc, tw, nt, 1, 1);
    curves_free(tc, nt);
    free(tw);
    if (!n && !nt)
        put_note(rp, "missing", "No metrics.csv in %s: nothing to plot yet.",
                 rp->n == 1 ? "the run directory" : "any run directory");
    goto out;
oom:
    b->oom = 1;
out:
    curves_free(loss, n);
    curves_free(acc, n);
    free(who);
    sbuf_put(b, "</section>\n");
}

/* The grid node of key in sweep.yaml, when the sweep varies it. */
static int grid_varies(const report *rp, const char *key)
{
    const qd_node *g = qd_node_get(qd_config_root(rp->sweep_cfg), "grid");
    return qd_node_len(qd_node_get(g, key)) >= 2;
}

/* Configurations over the grid keys other than seed and `except`: labels in
 * out (display text), index per run in idx ((size_t)-1: not finished). */
static int sub_groups(const report *rp, const char *except, strv *out, size_t *idx)
{
    strv keys = {0};
    for (size_t k = 0; k < rp->cfg_keys.n; ++k)
        if (strcmp(rp->cfg_keys.v[k], except) != 0 &&
            strv_push(&keys, strdup(rp->cfg_keys.v[k])) != 0) {
            strv_free(&keys);
            return -1;
        }
    int rc = 0;
    for (size_t i = 0; i < rp->n && rc == 0; ++i) {
        idx[i] = (size_t)-1;
        if (!rp->runs[i].res || !rp->runs[i].cfg)
            continue;
        char *lab = results_label(qd_config_root(rp->runs[i].cfg), rp->runs[i].dir, &keys);
        char *text = NULL;
        if (lab && keys.n == 0) {
            text = strdup("");
        } else if (lab) {
            sbuf t = {0};
            const char *p = lab;
            for (size_t k = 0; k < keys.n; ++k) {
                size_t len = strcspn(p, RESULTS_SEP);
                sbuf_printf(&t, "%s%s=%.*s", k ? ", " : "", keys.v[k], (int)len, p);
                p += len + (p[len] != '\0');
            }
            text = sbuf_ok(&t) ? t.s : (sbuf_free(&t), NULL);
        }
        free(lab);
        if (!text) {
            rc = -1;
            break;
        }
        if ((idx[i] = strv_find(out, text)) == (size_t)-1) {
            idx[i] = out->n;
            rc = strv_push(out, text);
        } else {
            free(text);
        }
    }
    strv_free(&keys);
    return rc;
}

static const char *BUDGET_KEY = "distill.images_per_class";

/* The number of distilled images of a run: result.json's distiller.images,
 * else images_per_class × classes (synthetic.json). */
static double run_budget(const run *r)
{
    double v = res_num(r, "distiller.images");
    if (isfinite(v))
        return v;
    long long ipc = 0;
    qd_error err;
    if (!r->cfg ||
        qd_node_as_int(qd_node_path(qd_config_root(r->cfg), BUDGET_KEY), &ipc, &err) != QD_OK)
        return NAN;
    char *p = join2(r->dir, "/", "synthetic.json");
    qd_json_value *s = NULL;
    double classes = NAN;
    if (p && qd_json_read_file(p, &s, &err) == QD_OK)
        classes = qd_json_as_number(qd_json_get(s, "classes"));
    qd_json_value_free(s);
    free(p);
    return (double)ipc * classes;
}

/* Distilled accuracy (and the random-subset baseline) against the number of
 * distilled images, one line per configuration of the other grid keys. */
static void put_budget_plot(report *rp)
{
    strv subs = {0};
    size_t ns = 0;
    size_t *idx = calloc(rp->n + 1, sizeof *idx);
    double *bud = calloc(rp->n + 1, sizeof *bud), *tmp = calloc(rp->n + 1, sizeof *tmp);
    double *xs = NULL, *ys = NULL, *es = NULL;
    svg_series *ser = NULL;
    char **names = NULL;
    if (!idx || !bud || !tmp || sub_groups(rp, BUDGET_KEY, &subs, idx) != 0)
        goto oom;
    /* the distinct budgets, ascending */
    double *bv = NULL;
    size_t nb = 0;
    for (size_t i = 0; i < rp->n; ++i) {
        bud[i] = idx[i] == (size_t)-1 ? NAN : run_budget(&rp->runs[i]);
        if (!isfinite(bud[i]))
            continue;
        size_t k = 0;
        while (k < nb && bv[k] != bud[i])
            ++k;
        if (k == nb) {
            double *nbv = realloc(bv, (nb + 1) * sizeof *nbv);
            if (!nbv) {
                free(bv);
                goto oom;
            }
            bv = nbv;
            size_t at = nb++;
            while (at > 0 && bv[at - 1] > bud[i]) {
                bv[at] = bv[at - 1];
                --at;
            }
            bv[at] = bud[i];
        }
    }
    if (nb < 2) {
        put_note(rp, "missing", "Accuracy against image budget: fewer than two image budgets "
                                "have finished runs yet.");
        free(bv);
        goto out;
    }
    /* series: for each configuration, distilled and (if any) random subset */
    static const char *const WHAT[2] = {"distilled.test_acc", "baselines.random_subset.test_acc"};
    static const char *const WHAT_NAME[2] = {"distilled", "random real subset"};
    int has_base = any_res(rp, WHAT[1]);
    ns = subs.n * (has_base ? 2 : 1);
    xs = calloc(ns * nb + 1, sizeof *xs);
    ys = calloc(ns * nb + 1, sizeof *ys);
    es = calloc(ns * nb + 1, sizeof *es);
    ser = calloc(ns + 1, sizeof *ser);
    names = calloc(ns + 1, sizeof *names);
    if (!xs || !ys || !es || !ser || !names) {
        free(bv);
        goto oom;
    }
    size_t s = 0;
    for (int w = 0; w < (has_base ? 2 : 1); ++w)
        for (size_t g = 0; g < subs.n; ++g, ++s) {
            for (size_t k = 0; k < nb; ++k) {
                size_t n = 0;
                for (size_t i = 0; i < rp->n; ++i) {
                    double v = res_num(&rp->runs[i], WHAT[w]);
                    if (idx[i] == g && bud[i] == bv[k] && isfinite(v))
                        tmp[n++] = 100 * v;
                }
                double m = NAN, sd = NAN;
                if (n)
                    qd_mean_std(tmp, n, &m, &sd);
                xs[s * nb + k] = bv[k];
                ys[s * nb + k] = m;
                es[s * nb + k] = n > 1 ? sd : NAN;
            }
            sbuf nm = {0};
            sbuf_put(&nm, WHAT_NAME[w]);
            if (*subs.v[g])
                sbuf_printf(&nm, " (%s)", subs.v[g]);
            names[s] = sbuf_ok(&nm) ? nm.s : (sbuf_free(&nm), NULL);
            if (!names[s]) {
                free(bv);
                goto oom;
            }
            /* a configuration's baseline: its colour, dashed */
            ser[s] = (svg_series){.name = names[s], .x = xs + s * nb, .y = ys + s * nb,
                                  .err = es + s * nb, .n = nb, .markers = 1,
                                  .color = (int)(g + 1), .dashed = w == 1};
        }
    svg_plot p = {.id = "plot-budget", .title = "Test accuracy against image budget",
                  .xlabel = "distilled images (images per class × classes)",
                  .ylabel = "test accuracy (%)", .integer_x = 1, .log_x = bv[0] > 0 && bv[nb - 1] / bv[0] >= 20,
                  .series = ser, .n_series = ns};
    svg_line_plot(&rp->out, &p);
    put_note(rp, "meta", "Mean ± sample standard deviation over seeds (error bars).");
    free(bv);
    goto out;
oom:
    rp->out.oom = 1;
out:
    for (size_t i = 0; names && i < ns; ++i)
        free(names[i]);
    free(names);
    free(ser);
    free(xs);
    free(ys);
    free(es);
    free(idx);
    free(bud);
    free(tmp);
    strv_free(&subs);
}

/* Trainable against fixed Hermitian: bars of the distilled accuracy per
 * value of the key, grouped by the configuration of the other grid keys. */
static void put_trainable_bars(report *rp, const char *key)
{
    strv subs = {0}, vals = {0}, names = {0};
    size_t *idx = calloc(rp->n + 1, sizeof *idx), *vi = calloc(rp->n + 1, sizeof *vi);
    double *tmp = calloc(rp->n + 1, sizeof *tmp), *mean = NULL, *err = NULL;
    if (!idx || !vi || !tmp || sub_groups(rp, key, &subs, idx) != 0)
        goto oom;
    for (size_t i = 0; i < rp->n; ++i) {
        vi[i] = (size_t)-1;
        if (idx[i] == (size_t)-1)
            continue;
        const char *v = qd_node_str(qd_node_path(qd_config_root(rp->runs[i].cfg), key));
        v = v ? v : "-";
        if ((vi[i] = strv_find(&vals, v)) == (size_t)-1) {
            vi[i] = vals.n;
            char *shown = strcmp(v, "true") == 0    ? strdup("trainable Hermitian")
                          : strcmp(v, "false") == 0 ? strdup("fixed Hermitian")
                                                    : join2(key, "=", v);
            if (strv_push(&vals, strdup(v)) != 0 || strv_push(&names, shown) != 0)
                goto oom;
        }
    }
    if (vals.n < 2) {
        put_note(rp, "missing", "Trainable against fixed Hermitian: runs of only one value of "
                                "%s have finished yet.", key);
        goto out;
    }
    mean = calloc(subs.n * vals.n, sizeof *mean);
    err = calloc(subs.n * vals.n, sizeof *err);
    if (!mean || !err)
        goto oom;
    for (size_t g = 0; g < subs.n; ++g)
        for (size_t j = 0; j < vals.n; ++j) {
            size_t n = 0;
            for (size_t i = 0; i < rp->n; ++i) {
                double v = res_num(&rp->runs[i], "distilled.test_acc");
                if (idx[i] == g && vi[i] == j && isfinite(v))
                    tmp[n++] = 100 * v;
            }
            double m = NAN, sd = NAN;
            if (n)
                qd_mean_std(tmp, n, &m, &sd);
            mean[g * vals.n + j] = m;
            err[g * vals.n + j] = n > 1 ? sd : NAN;
        }
    const char **groups = calloc(subs.n + 1, sizeof *groups);
    if (!groups)
        goto oom;
    for (size_t g = 0; g < subs.n; ++g)
        groups[g] = *subs.v[g] ? subs.v[g] : "all runs";
    svg_bars bars = {.id = "plot-trainable", .title = "Distilled test accuracy: trainable vs "
                                                      "fixed Hermitian",
                     .ylabel = "test accuracy (%)", .groups = groups, .n_groups = subs.n,
                     .names = (const char *const *)names.v, .n_names = names.n, .mean = mean,
                     .err = err, .decimals = 1};
    svg_bar_chart(&rp->out, &bars);
    free(groups);
    put_note(rp, "meta", "Bars: mean over seeds; error bars: sample standard deviation.");
    goto out;
oom:
    rp->out.oom = 1;
out:
    free(idx);
    free(vi);
    free(tmp);
    free(mean);
    free(err);
    strv_free(&subs);
    strv_free(&vals);
    strv_free(&names);
}

static void put_ablations(report *rp)
{
    if (!rp->sweep)
        return;
    sbuf_put(&rp->out, "<section id=\"ablations\">\n<h2>Ablations</h2>\n");
    if (grid_varies(rp, BUDGET_KEY))
        put_budget_plot(rp);
    else
        put_note(rp, "meta", "The sweep does not vary %s: no accuracy-against-budget plot.",
                 BUDGET_KEY);
    const char *tkey = NULL;
    for (size_t k = 0; k < rp->cfg_keys.n; ++k) {
        const char *key = rp->cfg_keys.v[k];
        size_t len = strlen(key), tl = strlen("observable.trainable");
        if (len >= tl && strcmp(key + len - tl, "observable.trainable") == 0 &&
            (len == tl || key[len - tl - 1] == '.') && grid_varies(rp, key))
            tkey = key;
    }
    if (tkey)
        put_trainable_bars(rp, tkey);
    else
        put_note(rp, "meta", "The sweep does not vary observable.trainable: no trainable vs "
                             "fixed Hermitian chart.");
    sbuf_put(&rp->out, "</section>\n");
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_images(report *rp)
{
    sbuf *b = &rp->out;
    static const unsigned char SIG[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    sbuf_put(b, "<section id=\"images\">\n<h2>Distilled images</h2>\n");
    for (size_t i = 0; i < rp->n; ++i) {
        const run *r = &rp->runs[i];
        if (!has_file(r->dir, "images.png")) {
            if (r->res && isfinite(res_num(r, "train.test_acc")))
                put_note(rp, "meta", "%s: a full-data training run, no distilled images.",
                         r->name);
            else
                put_note(rp, "missing", "%s: no images.png yet (written when distillation "
                                        "finishes).", r->name);
            continue;
        }
        char *p = join2(r->dir, "/", "images.png");
        void *data = NULL;
        size_t len = 0;
        qd_error err;
        if (!p || qd_read_file(p, MAX_PNG_BYTES, &data, &len, &err) != QD_OK) {
            put_note(rp, "missing", "%s: images.png: %s", r->name, p ? err.msg : "out of memory");
            free(p);
            continue;
        }
        free(p);
        const unsigned char *d = data;
        /* an image the browser would show broken is stated instead */
        if (len < 24 || memcmp(d, SIG, 8) != 0 || memcmp(d + 12, "IHDR", 4) != 0 ||
            be32(d + 16) == 0 || be32(d + 20) == 0) {
            put_note(rp, "missing", "%s: images.png is not a PNG file.", r->name);
            free(data);
            continue;
        }
        uint32_t w = be32(d + 16), h = be32(d + 20);
        /* small grids are scaled up by a whole factor, pixels kept sharp;
         * smaller for many runs, so that their grids sit side by side */
        uint32_t target = rp->n > 1 ? 300 : 600, scale = w >= target ? 1 : target / w;
        scale = scale > 8 ? 8 : scale;
        double images = res_num(r, "distiller.images");
        /* the figure as wide as its image, so the caption wraps under it */
        sbuf_printf(b, "<figure style=\"width:%lupx\"><img class=\"grid\" width=\"%lu\" "
                       "height=\"%lu\" alt=\"",
                    (unsigned long)w * scale, (unsigned long)w * scale,
                    (unsigned long)h * scale);
        html_escape(b, r->name);
        sbuf_put(b, ": distilled images\" src=\"data:image/png;base64,");
        base64_encode(b, data, len);
        sbuf_put(b, "\"><figcaption>");
        html_escape(b, r->name);
        if (isfinite(images))
            sbuf_printf(b, ": %.0f images", images);
        sbuf_printf(b, " (%lu × %lu pixels)</figcaption></figure>\n", (unsigned long)w,
                    (unsigned long)h);
        free(data);
    }
    sbuf_put(b, "</section>\n");
}

typedef struct qcol {
    const char *path, *head;
} qcol;

static const qcol QCOLS[] = {
    {"quantum.executions_training_on_distilled", "training on the distilled set"},
    {"quantum.executions_full_data_epoch", "one epoch of the full training set"},
    {"quantum.executions_per_sample_step", "per sample and step"},
    {"quantum.executions_distillation", "the whole distillation"},
    {"quantum.executions_training", "full-data training (all epochs)"},
};
#define N_QCOLS (sizeof QCOLS / sizeof QCOLS[0])

static double group_mean(const report *rp, size_t g, const char *path, double *tmp)
{
    size_t n = group_values(rp, g, path, tmp);
    double m = NAN, s;
    if (n)
        qd_mean_std(tmp, n, &m, &s);
    return m;
}

static void put_quantum(report *rp)
{
    sbuf *b = &rp->out;
    sbuf_put(b, "<section id=\"quantum-cost\">\n<h2>Quantum cost</h2>\n");
    int cols[N_QCOLS], ncols = 0, nonzero = 0;
    for (size_t c = 0; c < N_QCOLS; ++c) {
        ncols += cols[c] = any_res(rp, QCOLS[c].path);
        for (size_t i = 0; i < rp->n; ++i)
            nonzero |= res_num(&rp->runs[i], QCOLS[c].path) > 0;
    }
    int ratio = cols[0] && cols[1], per_epoch = cols[4] && any_res(rp, "train.epochs");
    double *tmp = calloc(rp->n + 1, sizeof *tmp);
    if (!tmp) {
        b->oom = 1;
        return;
    }
    if (ncols == 0) {
        put_note(rp, "missing", "No circuit execution counts: no finished run has a quantum "
                                "section in result.json.");
    } else if (!nonzero) {
        put_note(rp, "meta", "No circuit executions: the model has no quantum layer.");
    } else {
        put_note(rp, "meta", "Circuit executions (one simulated circuit run for one sample, "
                             "forward or gradient), from result.json%s",
                 ratio ? ": training a model on the distilled set against one epoch over "
                         "the full training set."
                       : ".");
        sbuf_put(b, "<div class=\"scroll\"><table id=\"quantum-table\">\n<thead><tr><th>");
        sbuf_put(b, rp->sweep ? "configuration" : "run");
        sbuf_put(b, "</th>");
        for (size_t c = 0; c < N_QCOLS; ++c)
            if (cols[c]) {
                sbuf_put(b, "<th>");
                html_escape(b, QCOLS[c].head);
                sbuf_put(b, "</th>");
            }
        if (ratio)
            sbuf_put(b, "<th>full epoch ÷ distilled</th>");
        if (per_epoch)
            sbuf_put(b, "<th>full-data training, per epoch</th>");
        sbuf_put(b, "</tr></thead>\n<tbody>\n");
        for (size_t g = 0; g < rp->groups.n; ++g) {
            if (!group_runs(rp, g))
                continue;
            char *t = group_text(rp, g), buf[64];
            sbuf_put(b, "<tr><td>");
            html_escape(b, t ? t : "?");
            free(t);
            sbuf_put(b, "</td>");
            for (size_t c = 0; c < N_QCOLS; ++c)
                if (cols[c]) {
                    fmt_count(buf, sizeof buf, group_mean(rp, g, QCOLS[c].path, tmp));
                    sbuf_printf(b, "<td>%s</td>", buf);
                }
            if (ratio) {
                double d = group_mean(rp, g, QCOLS[0].path, tmp),
                       f = group_mean(rp, g, QCOLS[1].path, tmp);
                if (d > 0 && isfinite(f))
                    sbuf_printf(b, "<td>%.4g×</td>", f / d);
                else
                    sbuf_put(b, "<td>-</td>");
            }
            if (per_epoch) {
                fmt_count(buf, sizeof buf,
                          group_mean(rp, g, QCOLS[4].path, tmp) /
                              group_mean(rp, g, "train.epochs", tmp));
                sbuf_printf(b, "<td>%s</td>", buf);
            }
            sbuf_put(b, "</tr>\n");
        }
        sbuf_put(b, "</tbody>\n</table></div>\n");
    }
    free(tmp);
    sbuf_put(b, "</section>\n");
}

static void put_resources(report *rp)
{
    sbuf *b = &rp->out;
    static const qcol TCOLS[] = {
        {"time.distill_s", "distillation"},
        {"time.evaluate_s", "evaluation"},
        {"time.seconds_per_iteration", "per iteration"},
        {"train.seconds", "full-data training"},
    };
    size_t nt = sizeof TCOLS / sizeof TCOLS[0];
    sbuf_put(b, "<section id=\"resources\">\n<h2>Wall time and memory</h2>\n");
    int cols[4], any = 0;
    for (size_t c = 0; c < nt; ++c)
        any |= cols[c] = any_res(rp, TCOLS[c].path);
    int mem = any_res(rp, "peak_rss_mb");
    if (!any && !mem) {
        put_note(rp, "missing", "No finished run: wall times and peak memory are written to "
                                "result.json at the end of a run.");
        sbuf_put(b, "</section>\n");
        return;
    }
    sbuf_put(b, "<div class=\"scroll\"><table id=\"resources-table\">\n<thead><tr><th>run</th><th>threads</th>");
    for (size_t c = 0; c < nt; ++c)
        if (cols[c])
            sbuf_printf(b, "<th>%s</th>", TCOLS[c].head);
    if (mem)
        sbuf_put(b, "<th>peak memory</th>");
    sbuf_put(b, "</tr></thead>\n<tbody>\n");
    double total[4] = {0};
    char buf[64];
    for (size_t i = 0; i < rp->n; ++i) {
        const run *r = &rp->runs[i];
        if (!r->res)
            continue;
        sbuf_put(b, "<tr><td>");
        html_escape(b, r->name);
        fmt_count(buf, sizeof buf, res_num(r, "threads"));
        sbuf_printf(b, "</td><td>%s</td>", buf);
        for (size_t c = 0; c < nt; ++c)
            if (cols[c]) {
                double v = res_num(r, TCOLS[c].path);
                total[c] += isfinite(v) ? v : 0;
                fmt_duration(buf, sizeof buf, v);
                sbuf_printf(b, "<td>%s</td>", buf);
            }
        if (mem) {
            fmt_mb(buf, sizeof buf, res_num(r, "peak_rss_mb"));
            sbuf_printf(b, "<td>%s</td>", buf);
        }
        sbuf_put(b, "</tr>\n");
    }
    if (rp->n > 1) {
        sbuf_put(b, "<tr><td><b>total</b></td><td></td>");
        for (size_t c = 0; c < nt; ++c)
            if (cols[c]) {
                fmt_duration(buf, sizeof buf, c == 2 ? NAN : total[c]);
                sbuf_printf(b, "<td>%s</td>", buf);
            }
        if (mem)
            sbuf_put(b, "<td></td>");
        sbuf_put(b, "</tr>\n");
    }
    sbuf_put(b, "</tbody>\n</table></div>\n</section>\n");
}

static void put_manifest(report *rp)
{
    sbuf *b = &rp->out;
    sbuf_put(b, "<section id=\"manifest\">\n<h2>Manifest</h2>\n");
    if (rp->sweep) {
        put_note(rp, "meta", "sweep.yaml: the manifest, fixed overrides, grid and jobs.");
        put_file_pre(rp, rp->dir, "sweep.yaml", "sweep-yaml");
    }
    const run *first = NULL;
    for (size_t i = 0; i < rp->n && !first; ++i)
        if (rp->runs[i].cfg)
            first = &rp->runs[i];
    if (!first) {
        put_note(rp, "missing", "No run has a readable manifest.yaml yet.");
    } else {
        if (rp->n > 1)
            put_note(rp, "meta", "The resolved manifest of %s (the other runs differ in %s).",
                     first->name, rp->sweep ? "their grid values" : "their own manifests");
        else
            put_note(rp, "meta", "The resolved manifest (defaults written out as comments).");
        char *ovr = join2(first->dir, "/", "overrides.txt");
        void *data = NULL;
        size_t len = 0;
        qd_error err;
        if (ovr && qd_read_file(ovr, MAX_TEXT_BYTES, &data, &len, &err) == QD_OK && len) {
            sbuf_put(b, "<p class=\"meta\">Command-line overrides:</p>\n<pre id=\"overrides\">");
            html_escape_n(b, data, len);
            sbuf_put(b, "</pre>\n");
        }
        free(data);
        free(ovr);
        put_file_pre(rp, first->dir, "manifest.yaml", "manifest-yaml");
    }
    sbuf_put(b, "</section>\n");
}

/* After load, every <img> is checked: one that did not decode is marked
 * data-broken and counted on <body>, so a headless browser's DOM dump shows
 * it (the report has no other script). */
static void put_footer(report *rp)
{
    sbuf_put(&rp->out,
             "<script>\n"
             "window.addEventListener('load', function () {\n"
             "  var broken = 0;\n"
             "  document.querySelectorAll('img').forEach(function (img) {\n"
             "    if (!img.complete || img.naturalWidth === 0) {\n"
             "      img.setAttribute('data-broken', '1');\n"
             "      broken++;\n"
             "    }\n"
             "  });\n"
             "  document.body.setAttribute('data-images-broken', String(broken));\n"
             "  document.body.setAttribute('data-images-checked', 'yes');\n"
             "});\n"
             "</script>\n</body>\n</html>\n");
}

int cmd_report(cli *c, int argc, char **argv)
{
    (void)c;
    const char *dir = NULL, *out = NULL;
    for (int i = 1; i < argc; ++i) {
        if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) {
            out = argv[++i];
        } else if (strncmp(argv[i], "--out=", 6) == 0) {
            out = argv[i] + 6;
        } else if (argv[i][0] == '-' || dir) {
            fprintf(stderr, "%s: unexpected argument '%s'\nusage: qdistill report DIR "
                            "[--out FILE]\n", WHO, argv[i]);
            return EXIT_USAGE;
        } else {
            dir = argv[i];
        }
    }
    if (!dir || (out && !*out)) {
        fprintf(stderr, "usage: qdistill report DIR [--out FILE]\n");
        return EXIT_USAGE;
    }
    /* "runs/x/" and "runs/x" name the same directory and the same report */
    char *d = strdup(dir), *def = NULL;
    if (!d)
        return EXIT_RUN_FAILED;
    for (size_t n = strlen(d); n > 1 && d[n - 1] == '/'; --n)
        d[n - 1] = '\0';
    dir = d;
    report rp = {.dir = dir};
    int rc = EXIT_RUN_FAILED;
    if (load(&rp) != 0) {
        rc = rp.paths.n ? EXIT_RUN_FAILED : EXIT_USAGE;
        goto done;
    }
    put_header(&rp);
    put_results(&rp);
    put_curves(&rp);
    put_ablations(&rp);
    put_images(&rp);
    put_quantum(&rp);
    put_resources(&rp);
    put_manifest(&rp);
    put_footer(&rp);
    if (!sbuf_ok(&rp.out)) {
        fprintf(stderr, "%s: out of memory\n", WHO);
        goto done;
    }
    if (!out)
        out = def = join2(dir, "/", "report.html");
    qd_error err;
    if (!out || qd_write_atomic(out, rp.out.s, rp.out.len, &err) != QD_OK) {
        fprintf(stderr, "%s: %s\n", WHO, out ? err.msg : "out of memory");
        goto done;
    }
    printf("%s (%zu bytes)\n", out, rp.out.len);
    rc = EXIT_OK;
done:
    free(def);
    free(d);
    report_free(&rp);
    return rc;
}
