/* Run directories: create, recognise the same experiment, refuse another. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

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
            free(old);
            free(mpath);
            qd_error_set(err, QD_ERR_INVALID,
                         "%s already holds a different experiment (its manifest.yaml differs); "
                         "refusing to overwrite it — choose another --out directory",
                         path);
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
