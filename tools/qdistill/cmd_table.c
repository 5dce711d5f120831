/* qdistill table: results of many run directories as one table.
 *
 * Rows and columns are configurations read from each run's resolved
 * manifest.yaml; a cell aggregates (mean ± sample std) a result.json value
 * over the runs that share its configuration, typically the seeds of a
 * sweep. This is how the tables of docs/results.md are made. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "qdistill/config.h"
#include "qdistill/evaluate.h"
#include "qdistill/json.h"
#include "results.h"

typedef struct cell {
    double *v;
    size_t n;
    double run_std;   /* the one run's own <value>_std (NAN when none) */
} cell;

typedef enum { FMT_TEXT, FMT_MARKDOWN, FMT_CSV } fmt;

/* Several runs: mean ± std over them. One run whose result carries
 * <value>_std (e.g. distilled.test_acc_std, over its evaluation models):
 * its value ± that std, so a single run's spread is not shown as 0. */
static void cell_text(char *buf, size_t len, const cell *c, int pct, size_t all)
{
    if (c->n == 1 && !isnan(c->run_std)) {
        double m = c->v[0], sd = c->run_std;
        int w = pct ? snprintf(buf, len, "%.2f ± %.2f", 100 * m, 100 * sd)
                    : snprintf(buf, len, "%.4g ± %.2g", m, sd);
        if (all > 1 && w > 0 && (size_t)w < len)
            snprintf(buf + w, len - (size_t)w, " (n=1)");
        return;
    }
    results_cell_text(buf, len, c->v, c->n, pct, all);
}

static void csv_field(const char *s)
{
    if (!strpbrk(s, ",\"\n")) {
        fputs(s, stdout);
        return;
    }
    putchar('"');
    for (; *s; ++s) {
        if (*s == '"')
            putchar('"');
        putchar(*s);
    }
    putchar('"');
}

/* Display width in characters (UTF-8: count non-continuation bytes). */
static size_t width(const char *s)
{
    size_t w = 0;
    for (; *s; ++s)
        w += ((unsigned char)*s & 0xC0) != 0x80;
    return w;
}

static int usage(void)
{
    fprintf(stderr, "usage: qdistill table SWEEP_DIR|RUN_DIR... [--rows KEYS] [--cols KEYS] "
                    "[--value PATH] [--format text|markdown|csv]\n");
    return EXIT_USAGE;
}

int cmd_table(cli *c, int argc, char **argv)
{
    (void)c;
    const char *rows_arg = NULL, *cols_arg = NULL, *value = "distilled.test_acc";
    fmt format = FMT_TEXT;
    strv paths = {0}, runs = {0}, grid_keys = {0}, rk = {0}, ck = {0}, rlab = {0}, clab = {0};
    cell *cells = NULL;
    int rc = EXIT_USAGE;
    for (int i = 1; i < argc; ++i) {
        const char *a = argv[i];
        const char **dst = strcmp(a, "--rows") == 0    ? &rows_arg
                           : strcmp(a, "--cols") == 0  ? &cols_arg
                           : strcmp(a, "--value") == 0 ? &value
                                                       : NULL;
        if (dst) {
            if (i + 1 >= argc)
                goto bad;
            *dst = argv[++i];
        } else if (strcmp(a, "--format") == 0 && i + 1 < argc) {
            const char *f = argv[++i];
            if (strcmp(f, "text") == 0)
                format = FMT_TEXT;
            else if (strcmp(f, "markdown") == 0 || strcmp(f, "md") == 0)
                format = FMT_MARKDOWN;
            else if (strcmp(f, "csv") == 0)
                format = FMT_CSV;
            else {
                fprintf(stderr, "qdistill table: unknown format '%s' (text, markdown, csv)\n", f);
                goto out;
            }
        } else if (a[0] == '-') {
            fprintf(stderr, "qdistill table: unknown option '%s'\n", a);
            goto bad;
        } else if (strv_push(&paths, strdup(a)) != 0) {
            goto out;
        }
    }
    if (paths.n == 0)
        goto bad;
    for (size_t i = 0; i < paths.n; ++i)
        if (results_collect(paths.v[i], &runs, &grid_keys, "qdistill table") != 0)
            goto out;
    if ((rows_arg && results_split_keys(rows_arg, &rk, "qdistill table")) ||
        (cols_arg && results_split_keys(cols_arg, &ck, "qdistill table")))
        goto out;
    if (!rows_arg) {
        /* default rows: what the sweeps varied, except seeds and the columns */
        for (size_t i = 0; i < grid_keys.n; ++i)
            if (strcmp(grid_keys.v[i], "seed") != 0 && strv_find(&ck, grid_keys.v[i]) == (size_t)-1)
                strv_push(&rk, strdup(grid_keys.v[i]));
    }

    /* read every run: its configuration and value */
    size_t *ri = calloc(runs.n + 1, sizeof *ri), *ci = calloc(runs.n + 1, sizeof *ci);
    double *val = calloc(runs.n + 1, sizeof *val), *vstd = calloc(runs.n + 1, sizeof *vstd);
    int *ok = calloc(runs.n + 1, sizeof *ok);
    char *std_path = join2(value, "", "_std");
    rc = EXIT_RUN_FAILED;
    if (!ri || !ci || !val || !vstd || !ok || !std_path)
        goto free_run;
    size_t used = 0;
    for (size_t r = 0; r < runs.n; ++r) {
        qd_error err;
        char *mp = join2(runs.v[r], "/", "manifest.yaml");
        char *jp = join2(runs.v[r], "/", "result.json");
        qd_config *cfg = NULL;
        qd_json_value *json = NULL;
        if (!mp || !jp) {
            free(mp);
            free(jp);
            goto free_run;
        }
        if (qd_config_load(mp, NULL, &cfg, &err) != QD_OK) {
            fprintf(stderr, "qdistill table: skipped %s: %s\n", runs.v[r], err.msg);
        } else if (!has_file(runs.v[r], "result.json")) {
            fprintf(stderr, "qdistill table: skipped %s: no result.json (not finished)\n",
                    runs.v[r]);
        } else if (qd_json_read_file(jp, &json, &err) != QD_OK ||
                   qd_json_get_number(json, value, &val[r], &err) != QD_OK) {
            fprintf(stderr, "qdistill table: skipped %s: %s\n", runs.v[r], err.msg);
        } else {
            if (qd_json_get_number(json, std_path, &vstd[r], NULL) != QD_OK)
                vstd[r] = NAN;
            char *rl = results_label(qd_config_root(cfg), runs.v[r], &rk),
                 *cl = results_label(qd_config_root(cfg), runs.v[r], &ck);
            if (!rl || !cl) {
                free(rl);
                free(cl);
            } else {
                if ((ri[r] = strv_find(&rlab, rl)) == (size_t)-1) {
                    ri[r] = rlab.n;
                    strv_push(&rlab, rl);
                } else {
                    free(rl);
                }
                if ((ci[r] = strv_find(&clab, cl)) == (size_t)-1) {
                    ci[r] = clab.n;
                    strv_push(&clab, cl);
                } else {
                    free(cl);
                }
                ok[r] = 1;
                ++used;
            }
        }
        qd_json_value_free(json);
        qd_config_destroy(cfg);
        free(mp);
        free(jp);
    }
    if (used == 0) {
        fprintf(stderr, "qdistill table: no run has %s\n", value);
        goto free_run;
    }
    cells = calloc(rlab.n * clab.n, sizeof *cells);
    if (!cells)
        goto free_run;
    for (size_t r = 0; r < runs.n; ++r) {
        if (!ok[r])
            continue;
        cell *x = &cells[ri[r] * clab.n + ci[r]];
        double *nv = realloc(x->v, (x->n + 1) * sizeof *nv);
        if (!nv)
            goto free_run;
        x->v = nv;
        x->run_std = x->n == 0 ? vstd[r] : NAN;
        x->v[x->n++] = val[r];
    }
    size_t all = 0;
    for (size_t i = 0; i < rlab.n * clab.n; ++i)
        all = cells[i].n > all ? cells[i].n : all;
    int pct = results_is_acc(value);

    if (format == FMT_CSV) {
        for (size_t k = 0; k < rk.n; ++k)
            csv_field(rk.v[k]), putchar(',');
        for (size_t k = 0; k < ck.n; ++k)
            csv_field(ck.v[k]), putchar(',');
        printf("n,mean,std\n");
        for (size_t i = 0; i < rlab.n; ++i)
            for (size_t j = 0; j < clab.n; ++j) {
                const cell *x = &cells[i * clab.n + j];
                if (!x->n)
                    continue;
                const char *labs[2] = {rlab.v[i], clab.v[j]};
                size_t nk[2] = {rk.n, ck.n};
                for (int t = 0; t < 2; ++t) {
                    const char *p = labs[t];
                    for (size_t k = 0; k < nk[t]; ++k) {
                        size_t len = strcspn(p, RESULTS_SEP);
                        char *f = strndup(p, len);
                        csv_field(f ? f : "");
                        free(f);
                        putchar(',');
                        p += len + (p[len] != '\0');
                    }
                }
                double m, s;
                qd_mean_std(x->v, x->n, &m, &s);
                printf("%zu,%.17g,%.17g\n", x->n, m, s);
            }
        rc = EXIT_OK;
        goto free_run;
    }

    /* text and markdown: header, then one line per row configuration */
    size_t ncol = 1 + clab.n;
    char **t = calloc((rlab.n + 1) * ncol, sizeof *t);
    if (!t)
        goto free_run;
    char *rhead = strdup("");
    for (size_t k = 0; k < rk.n && rhead; ++k) {
        char *x = join2(rhead, k ? ", " : "", rk.v[k]);
        free(rhead);
        rhead = x;
    }
    t[0] = rhead;
    for (size_t j = 0; j < clab.n; ++j) {
        if (ck.n == 0) {
            t[1 + j] = strdup(value);
        } else {
            char *keys = strdup("");
            for (size_t k = 0; k < ck.n && keys; ++k) {
                char *x = join2(keys, k ? "," : "", ck.v[k]);
                free(keys);
                keys = x;
            }
            char *l = results_shown(clab.v[j]);
            t[1 + j] = keys && l ? join2(keys, "=", l) : NULL;
            free(keys);
            free(l);
        }
    }
    for (size_t i = 0; i < rlab.n; ++i) {
        t[(i + 1) * ncol] = *rlab.v[i] ? results_shown(rlab.v[i]) : strdup("all");
        for (size_t j = 0; j < clab.n; ++j) {
            char buf[128];
            cell_text(buf, sizeof buf, &cells[i * clab.n + j], pct, all);
            t[(i + 1) * ncol + 1 + j] = strdup(buf);
        }
    }
    int oom = 0;
    for (size_t i = 0; i < (rlab.n + 1) * ncol; ++i)
        oom |= !t[i];
    if (!oom) {
        size_t *w = calloc(ncol, sizeof *w);
        for (size_t i = 0; w && i <= rlab.n; ++i)
            for (size_t j = 0; j < ncol; ++j)
                if (width(t[i * ncol + j]) > w[j])
                    w[j] = width(t[i * ncol + j]);
        for (size_t i = 0; w && i <= rlab.n; ++i) {
            for (size_t j = 0; j < ncol; ++j) {
                const char *s = t[i * ncol + j];
                size_t pad = w[j] - width(s);
                if (format == FMT_MARKDOWN)
                    printf("| %s%*s ", s, (int)pad, "");
                else if (j == 0)
                    printf("%s%*s", s, (int)pad, "");
                else   /* numbers right-aligned */
                    printf("  %*s%s", (int)pad, "", s);
            }
            printf(format == FMT_MARKDOWN ? "|\n" : "\n");
            if (i == 0 && format == FMT_MARKDOWN) {
                printf("|---");
                for (size_t j = 1; j < ncol; ++j)
                    printf("|---:");
                printf("|\n");
            }
        }
        rc = w ? EXIT_OK : EXIT_RUN_FAILED;
        free(w);
    }
    for (size_t i = 0; i < (rlab.n + 1) * ncol; ++i)
        free(t[i]);
    free(t);
free_run:
    free(ri);
    free(ci);
    free(val);
    free(vstd);
    free(std_path);
    free(ok);
    goto out;
bad:
    usage();
    rc = EXIT_USAGE;
out:
    if (cells)
        for (size_t i = 0; i < rlab.n * clab.n; ++i)
            free(cells[i].v);
    free(cells);
    strv_free(&paths);
    strv_free(&runs);
    strv_free(&grid_keys);
    strv_free(&rk);
    strv_free(&ck);
    strv_free(&rlab);
    strv_free(&clab);
    return rc;
}
