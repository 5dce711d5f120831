/* qdistill evaluate: evaluate the synthetic set of a distilled run directory
 * again, e.g. with more models or random initialisations. */
#define _XOPEN_SOURCE 700   /* realpath */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "qdistill/json.h"
#include "qdistill/log.h"
#include "qdistill/run.h"

#define USAGE                                                                              \
    "usage: qdistill evaluate RUN_DIR [evaluate.KEY=VALUE ...] [--name NAME] [--threads N]\n" \
    "                         [--manifest-dir DIR]\n"

static int name_char_ok(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '.' || ch == '_' || ch == '-';
}

/* evaluation.json, evaluation-NAME.json, or named after the overrides:
 * evaluate.models=20 evaluate.init=random -> evaluation-models-20_init-random.json */
static int output_name(const char *name, char *const *ovr, size_t novr, char *out, size_t cap)
{
    if (name) {
        if (!*name || strlen(name) > 200 || name[0] == '.')
            return -1;
        for (const char *p = name; *p; ++p)
            if (!name_char_ok(*p))
                return -1;
        snprintf(out, cap, "evaluation-%s.json", name);
        return 0;
    }
    size_t k = (size_t)snprintf(out, cap, "evaluation");
    for (size_t i = 0; i < novr && k + 8 < cap; ++i) {
        out[k++] = i == 0 ? '-' : '_';
        for (const char *p = ovr[i] + strlen("evaluate."); *p && k + 8 < cap; ++p)
            out[k++] = *p == '=' ? '-' : name_char_ok(*p) ? *p : '-';
    }
    snprintf(out + k, cap - k, ".json");
    return 0;
}

int cmd_evaluate(cli *c, int argc, char **argv)
{
    char *args[128], *pos[128], *ovr[128];
    int nargs = 0, threads = 0;
    const char *name = NULL, *mdir_opt = NULL;
    for (int i = 1; i < argc; ++i) {
        if (strcmp(argv[i], "--manifest-dir") == 0 && i + 1 < argc) {
            mdir_opt = argv[++i];
        } else if (strcmp(argv[i], "--name") == 0 && i + 1 < argc) {
            name = argv[++i];
        } else if (strncmp(argv[i], "--name=", 7) == 0) {
            name = argv[i] + 7;
        } else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            threads = atoi(argv[++i]);
        } else if (nargs < 128) {
            args[nargs++] = argv[i];
        } else {
            fprintf(stderr, "qdistill evaluate: too many arguments\n");
            return EXIT_USAGE;
        }
    }
    size_t npos, novr;
    cli_split_overrides(nargs, args, pos, &npos, ovr, &novr);
    if (npos != 1) {
        fputs(USAGE, stderr);
        return EXIT_USAGE;
    }
    /* the set was distilled under the run's manifest: only how it is
     * evaluated may change */
    for (size_t i = 0; i < novr; ++i) {
        if (strncmp(ovr[i], "evaluate.", 9) != 0 || ovr[i][9] == '=' || !ovr[i][9]) {
            fprintf(stderr, "qdistill evaluate: '%s': only evaluate.* settings can be changed "
                    "(the set was distilled under %s/manifest.yaml)\n", ovr[i], pos[0]);
            return EXIT_USAGE;
        }
    }
    char out_name[320];
    if (output_name(name, ovr, novr, out_name, sizeof out_name) != 0) {
        fprintf(stderr, "qdistill evaluate: --name '%s': use letters, digits, '.', '_' and '-' "
                "(not first '.'), at most 200 characters\n", name);
        return EXIT_USAGE;
    }
    char *dir = realpath(pos[0], NULL);
    char mpath[4200];
    struct stat st;
    if (dir)
        snprintf(mpath, sizeof mpath, "%s/manifest.yaml", dir);
    if (!dir || stat(mpath, &st) != 0) {
        fprintf(stderr, "qdistill evaluate: %s is not a run directory (no manifest.yaml)\n",
                pos[0]);
        free(dir);
        return EXIT_USAGE;
    }
    /* --manifest-dir: for run directories without synthetic.json */
    char *mdir_abs = mdir_opt ? realpath(mdir_opt, NULL) : NULL;
    if (mdir_opt && !mdir_abs) {
        fprintf(stderr, "qdistill evaluate: --manifest-dir %s: no such directory\n", mdir_opt);
        free(dir);
        return EXIT_USAGE;
    }
    int rc = cli_registry(c);   /* before any chdir: plugin paths may be relative */
    if (rc) {
        free(dir);
        free(mdir_abs);
        return rc;
    }
    /* Relative paths in the manifest (a data set's directory, evaluate.
     * full_data) resolve from the directory of the manifest the run was
     * started with, which synthetic.json records. The manifest API resolves
     * them from the directory its file was loaded from, as spelt: loading
     * "manifest.yaml" from inside the run directory makes that "." and the
     * working directory, which is then moved to the recorded one. */
    char spath[4200];
    snprintf(spath, sizeof spath, "%s/synthetic.json", dir);
    qd_json_value *meta = NULL;
    const char *mdir = mdir_abs;
    if (!mdir && stat(spath, &st) == 0 && qd_json_read_file(spath, &meta, NULL) == QD_OK)
        qd_json_get_string(meta, "manifest_dir", &mdir, NULL);
    qd_manifest *m = NULL;
    if (chdir(dir) != 0) {
        fprintf(stderr, "qdistill evaluate: cannot enter %s\n", dir);
        rc = EXIT_RUN_FAILED;
    } else if ((rc = cli_manifest(c, "manifest.yaml", ovr, novr, &m)) != EXIT_OK) {
        fprintf(stderr, "qdistill evaluate: (in %s)\n", mpath);
    } else if (!mdir) {
        qd_log(QD_LOG_WARN, "%s: no manifest_dir recorded (a run from before synthetic.json); "
               "relative paths in manifest.yaml resolve from %s unless --manifest-dir is given",
               spath, dir);
    } else if (chdir(mdir) != 0) {
        qd_log(QD_LOG_WARN, "%s: the manifest's directory %s is gone; relative paths in "
               "manifest.yaml resolve from %s", spath, mdir, dir);
    }
    qd_json_value_free(meta);
    free(mdir_abs);
    if (rc) {
        free(dir);
        return rc;
    }

    qd_rundir rd;
    memset(&rd, 0, sizeof rd);
    rd.path = dir;
    rd.resumed = 1;
    char lpath[4200];
    snprintf(lpath, sizeof lpath, "%s/log.txt", dir);
    rd.log = fopen(lpath, "a");
    if (rd.log)
        qd_log_set_file(rd.log);
    qd_log(QD_LOG_INFO, "evaluating the synthetic set of %s again into %s", dir, out_name);
    qd_error err;
    qd_error_clear(&err);
    qd_run_opts o = {.stop = c->stop_flag, .threads = threads};
    int r = qd_run_evaluate(m, c->reg, &rd, out_name, &o, &err);
    int code = EXIT_OK;
    if (r == QD_OK) {
        printf("%s/%s\n", dir, out_name);
    } else {
        fprintf(stderr, "qdistill evaluate: %s\n", err.msg);
        code = r == QD_ERR_MANIFEST || r == QD_ERR_INVALID ? EXIT_USAGE : EXIT_RUN_FAILED;
    }
    qd_rundir_close(&rd);   /* frees dir */
    qd_manifest_destroy(m);
    return code;
}
