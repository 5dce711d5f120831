/* Run directories: create, recognise the same experiment, refuse another. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "qdistill/config.h"
#include "qdistill/fsutil.h"
#include "qdistill/log.h"
#include "qdistill/rundir.h"

char *qd_rundir_default_path(const char *name)
{
    char ts[32];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(ts, sizeof ts, "%Y%m%d-%H%M%S", &tm);
    size_t len = strlen(name) + strlen(ts) + 16;
    char *p = malloc(len);
    if (p)
        snprintf(p, len, "runs/%s/%s", name, ts);
    return p;
}

char *qd_rundir_file(const qd_rundir *rd, const char *name)
{
    size_t len = strlen(rd->path) + strlen(name) + 2;
    char *p = malloc(len);
    if (p)
        snprintf(p, len, "%s/%s", rd->path, name);
    return p;
}

/* overrides.txt: what was given on the command line, one per line. */
static int write_overrides(const qd_rundir *rd, const char *const *overrides, size_t n,
                           qd_error *err)
{
    size_t len = 1;
    for (size_t i = 0; i < n; ++i)
        len += strlen(overrides[i]) + 1;
    char *txt = malloc(len);
    if (!txt)
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    txt[0] = '\0';
    for (size_t i = 0; i < n; ++i) {
        strcat(txt, overrides[i]);
        strcat(txt, "\n");
    }
    char *opath = qd_rundir_file(rd, "overrides.txt");
    int rc = opath ? qd_write_atomic(opath, txt, strlen(txt), err)
                   : qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    free(opath);
    free(txt);
    return rc;
}

/* ---- naming how two resolved manifests differ ---- */

static void node_text(const qd_node *n, char *buf, size_t cap)
{
    if (!n)
        snprintf(buf, cap, "absent");
    else if (qd_node_kind(n) == QD_NODE_SCALAR)
        snprintf(buf, cap, "'%.80s'", qd_node_str(n));
    else if (qd_node_kind(n) == QD_NODE_SEQ)
        snprintf(buf, cap, "a list of %zu", qd_node_len(n));
    else if (qd_node_kind(n) == QD_NODE_MAP)
        snprintf(buf, cap, "a mapping");
    else
        snprintf(buf, cap, "null");
}

/* The first place (this run's key order) where trees a and b differ: its
 * dotted path in path[cap] and the two nodes there (NULL: absent). */
static int first_diff(const qd_node *a, const qd_node *b, char *path, size_t cap,
                      const qd_node **da, const qd_node **db)
{
    *da = a;
    *db = b;
    if (!a || !b || qd_node_kind(a) != qd_node_kind(b))
        return 1;
    size_t at = strlen(path), na = qd_node_len(a), nb = qd_node_len(b);
    switch (qd_node_kind(a)) {
    case QD_NODE_SCALAR:
        return strcmp(qd_node_str(a), qd_node_str(b)) != 0;
    case QD_NODE_SEQ:
        for (size_t i = 0; i < na && i < nb; ++i) {
            snprintf(path + at, cap - at, "%s%zu", at ? "." : "", i);
            if (first_diff(qd_node_at(a, i), qd_node_at(b, i), path, cap, da, db))
                return 1;
        }
        path[at] = '\0';
        *da = a;
        *db = b;
        return na != nb;
    case QD_NODE_MAP:
        for (size_t i = 0; i < na + nb; ++i) {
            /* a's keys, then the keys only b has */
            const char *k = i < na ? qd_node_key_at(a, i) : qd_node_key_at(b, i - na);
            if (i >= na && qd_node_get(a, k))
                continue;
            snprintf(path + at, cap - at, "%s%s", at ? "." : "", k);
            if (first_diff(qd_node_get(a, k), qd_node_get(b, k), path, cap, da, db))
                return 1;
        }
        path[at] = '\0';
        return 0;
    default:
        return 0;
    }
}

/* "KEY is X in its manifest.yaml, Y here", or "" when the texts differ in
 * form only (or the old one does not parse). */
static void describe_difference(const char *old_yaml, size_t old_len, const char *new_yaml,
                                const char *where, char *out, size_t cap)
{
    out[0] = '\0';
    qd_config *a = NULL, *b = NULL;
    if (qd_config_load_string(new_yaml, strlen(new_yaml), where, NULL, &a, NULL) == QD_OK &&
        qd_config_load_string(old_yaml, old_len, where, NULL, &b, NULL) == QD_OK) {
        char path[512] = "", ta[100], tb[100];
        const qd_node *da, *db;
        if (first_diff(qd_config_root(a), qd_config_root(b), path, sizeof path, &da, &db)) {
            node_text(da, ta, sizeof ta);
            node_text(db, tb, sizeof tb);
            snprintf(out, cap, ": '%s' is %s in its manifest.yaml, %s here", path, tb, ta);
        }
    }
    qd_config_destroy(a);
    qd_config_destroy(b);
}

int qd_rundir_open(qd_rundir *rd, const char *path, const char *manifest_yaml,
                   const char *const *overrides, size_t n_overrides, qd_error *err)
{
    memset(rd, 0, sizeof *rd);
    rd->path = strdup(path);
    if (!rd->path)
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    int rc = qd_mkdir_p(path, err);
    if (rc) {
        qd_rundir_close(rd);
        return rc;
    }
    char *mpath = qd_rundir_file(rd, "manifest.yaml");
    void *old = NULL;
    size_t old_len = 0;
    struct stat st;
    if (stat(mpath, &st) == 0) {
        rc = qd_read_file(mpath, 64u << 20, &old, &old_len, err);
        if (rc) {
            free(mpath);
            qd_rundir_close(rd);
            return rc;
        }
        if (old_len != strlen(manifest_yaml) || memcmp(old, manifest_yaml, old_len) != 0) {
            char diff[400];
            describe_difference(old, old_len, manifest_yaml, mpath, diff, sizeof diff);
            free(old);
            free(mpath);
            qd_error_set(err, QD_ERR_INVALID,
                         "%s already holds a different experiment (its manifest.yaml differs%s); "
                         "refusing to overwrite it — choose another --out directory",
                         path, diff);
            qd_rundir_close(rd);
            return QD_ERR_INVALID;
        }
        free(old);
        rd->resumed = 1;
    } else {
        /* Refuse a non-empty directory that is not a run directory either. */
        char *probe = qd_rundir_file(rd, "result.json");
        int foreign = stat(probe, &st) == 0;
        free(probe);
        if (foreign) {
            free(mpath);
            qd_rundir_close(rd);
            return qd_error_set(err, QD_ERR_INVALID,
                                "%s holds results but no manifest.yaml; refusing to overwrite it",
                                path);
        }
        /* overrides.txt first: manifest.yaml marks the directory as this
         * experiment's, so once it exists everything else must too */
        rc = write_overrides(rd, overrides, n_overrides, err);
        if (!rc)
            rc = qd_write_atomic(mpath, manifest_yaml, strlen(manifest_yaml), err);
        if (rc) {
            free(mpath);
            qd_rundir_close(rd);
            return rc;
        }
    }
    free(mpath);

    size_t removed = 0;
    qd_io_remove_stale_temps(path, &removed, NULL);

    char *lpath = qd_rundir_file(rd, "log.txt");
    rd->log = fopen(lpath, "a");
    if (!rd->log) {
        qd_error_set(err, QD_ERR_IO, "%s: cannot open for appending: %s", lpath, strerror(errno));
        free(lpath);
        qd_rundir_close(rd);
        return QD_ERR_IO;
    }
    free(lpath);
    qd_log_set_file(rd->log);
    qd_log(QD_LOG_INFO, "%s run directory %s", rd->resumed ? "resuming" : "created", path);
    if (removed)
        qd_log(QD_LOG_INFO, "removed %zu temporary file(s) left by a killed run", removed);
    return QD_OK;
}

void qd_rundir_close(qd_rundir *rd)
{
    if (!rd)
        return;
    if (rd->log) {
        qd_log_set_file(NULL);
        fclose(rd->log);
    }
    free(rd->path);
    memset(rd, 0, sizeof *rd);
}
