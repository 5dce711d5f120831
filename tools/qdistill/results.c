/* Reading the results of run directories (see results.h). */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qdistill/evaluate.h"
#include "qdistill/fsutil.h"
#include "results.h"

int strv_push(strv *s, char *x)
{
    if (!x)
        return -1;
    char **nv = realloc(s->v, (s->n + 1) * sizeof *nv);
    if (!nv) {
        free(x);
        return -1;
    }
    nv[s->n++] = x;
    s->v = nv;
    return 0;
}

void strv_free(strv *s)
{
    for (size_t i = 0; i < s->n; ++i)
        free(s->v[i]);
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

size_t strv_find(const strv *s, const char *x)
{
    for (size_t i = 0; i < s->n; ++i)
        if (strcmp(s->v[i], x) == 0)
            return i;
    return (size_t)-1;
}

char *join2(const char *a, const char *sep, const char *b)
{
    size_t n = strlen(a) + strlen(sep) + strlen(b) + 1;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s%s%s", a, sep, b);
    return p;
}

int has_file(const char *dir, const char *name)
{
    char *p = join2(dir, "/", name);
    struct stat st;
    int r = p && stat(p, &st) == 0;
    free(p);
    return r;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int results_collect(const char *path, strv *runs, strv *grid_keys, const char *who)
{
    if (has_file(path, "manifest.yaml"))
        return strv_push(runs, strdup(path));
    if (has_file(path, "sweep.yaml")) {
        char *sy = join2(path, "/", "sweep.yaml");
        qd_config *cfg = NULL;
        qd_error err;
        if (!sy || qd_config_load(sy, NULL, &cfg, &err) != QD_OK) {
            fprintf(stderr, "%s: %s\n", who, sy ? err.msg : "out of memory");
            free(sy);
            return -1;
        }
        free(sy);
        const qd_node *r = qd_config_root(cfg), *jobs = qd_node_get(r, "jobs"),
                      *grid = qd_node_get(r, "grid");
        for (size_t i = 0; i < qd_node_len(grid); ++i)
            if (strv_find(grid_keys, qd_node_key_at(grid, i)) == (size_t)-1)
                strv_push(grid_keys, strdup(qd_node_key_at(grid, i)));
        for (size_t i = 0; i < qd_node_len(jobs); ++i) {
            const char *name = qd_node_str(qd_node_get(qd_node_at(jobs, i), "name"));
            if (name && strv_push(runs, join2(path, "/", name)) != 0) {
                qd_config_destroy(cfg);
                return -1;
            }
        }
        qd_config_destroy(cfg);
        return 0;
    }
    DIR *d = opendir(path);
    if (!d) {
        fprintf(stderr, "%s: %s: not a run directory, a sweep or a directory of runs\n", who,
                path);
        return -1;
    }
    strv found = {0};
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') {
            char *sub = join2(path, "/", e->d_name);
            if (sub && has_file(sub, "manifest.yaml"))
                strv_push(&found, sub);
            else
                free(sub);
        }
    closedir(d);
    if (found.n == 0) {
        fprintf(stderr, "%s: %s holds no run directories\n", who, path);
        free(found.v);
        return -1;
    }
    qsort(found.v, found.n, sizeof *found.v, cmp_str);
    for (size_t i = 0; i < found.n; ++i)
        strv_push(runs, found.v[i]);
    free(found.v);
    return 0;
}

int results_split_keys(const char *text, strv *out, const char *who)
{
    const char *p = text;
    while (*p) {
        const char *q = strchr(p, ',');
        size_t len = q ? (size_t)(q - p) : strlen(p);
        if (len == 0) {
            fprintf(stderr, "%s: empty key in '%s'\n", who, text);
            return -1;
        }
        if (strv_push(out, strndup(p, len)) != 0)
            return -1;
        p += len + (q ? 1 : 0);
    }
    return 0;
}

/* The value the run's overrides.txt ("KEY=VALUE" lines) gives key, the
 * last line winning; malloc'd, NULL when none. */
static char *override_value(const char *dir, const char *key)
{
    char *path = dir ? join2(dir, "/", "overrides.txt") : NULL;
    void *data = NULL;
    size_t len = 0;
    int ok = path && qd_read_file(path, 1 << 20, &data, &len, NULL) == QD_OK;
    free(path);
    if (!ok)
        return NULL;
    char *found = NULL;
    size_t kl = strlen(key);
    for (char *line = data; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        if (strncmp(line, key, kl) == 0 && line[kl] == '=') {
            free(found);
            found = strdup(line + kl + 1);
        }
        line = nl ? nl + 1 : NULL;
    }
    free(data);
    return found;
}

char *results_label(const qd_node *root, const char *dir, const strv *keys)
{
    char *s = strdup("");
    for (size_t k = 0; k < keys->n && s; ++k) {
        const qd_node *n = qd_node_path(root, keys->v[k]);
        char *v;
        if (!n) {
            v = override_value(dir, keys->v[k]);
            if (!v)
                v = strdup("-");
        } else if (qd_node_kind(n) == QD_NODE_SCALAR) {
            v = strdup(qd_node_str(n));
        } else {
            v = qd_config_to_yaml(n);
            for (char *c = v; c && *c; ++c)
                if (*c == '\n')
                    *c = ' ';
        }
        char *t = v ? join2(s, k ? RESULTS_SEP : "", v) : NULL;
        free(v);
        free(s);
        s = t;
    }
    return s;
}

char *results_shown(const char *l)
{
    char *s = malloc(2 * strlen(l) + 1), *p = s;
    for (; s && *l; ++l)
        if (*l == RESULTS_SEP[0])
            *p++ = ',', *p++ = ' ';
        else
            *p++ = *l;
    if (s)
        *p = '\0';
    return s;
}

void results_cell_text(char *buf, size_t len, const double *v, size_t n, int pct, size_t all)
{
    if (n == 0) {
        snprintf(buf, len, "-");
        return;
    }
    double m, s;
    qd_mean_std(v, n, &m, &s);
    int w = pct ? snprintf(buf, len, "%.2f ± %.2f", 100 * m, 100 * s)
                : snprintf(buf, len, "%.4g ± %.2g", m, s);
    if (n < all && w > 0 && (size_t)w < len)
        snprintf(buf + w, len - (size_t)w, " (n=%zu)", n);
}

int results_is_acc(const char *path)
{
    const char *last = strrchr(path, '.');
    return strstr(last ? last + 1 : path, "acc") != NULL;
}
