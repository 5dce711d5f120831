/* qdistill run: an experiment into a run directory (resumable). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "qdistill/log.h"
#include "qdistill/run.h"

static int run_or_train(cli *c, int argc, char **argv, int train_only)
{
    char *args[128], *pos[128], *ovr[128];
    int nargs = 0;
    const char *out = NULL;
    int threads = 0;
    for (int i = 1; i < argc; ++i) {
        if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) {
            out = argv[++i];
        } else if (strncmp(argv[i], "--out=", 6) == 0) {
            out = argv[i] + 6;
        } else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            threads = atoi(argv[++i]);
        } else if (nargs < 128) {
            args[nargs++] = argv[i];
        } else {
            fprintf(stderr, "qdistill run: too many arguments\n");
            return EXIT_USAGE;
        }
    }
    size_t npos, novr;
    cli_split_overrides(nargs, args, pos, &npos, ovr, &novr);
    if (npos != 1) {
        fprintf(stderr, "usage: qdistill %s MANIFEST [key=value ...] [--out DIR] [--threads N]\n",
                train_only ? "train" : "run");
        return EXIT_USAGE;
    }
    qd_manifest *m;
    int rc = cli_manifest(c, pos[0], ovr, novr, &m);
    if (rc)
        return rc;
    char *yaml = qd_manifest_to_yaml(m);
    char *dir = out ? strdup(out) : qd_rundir_default_path(qd_manifest_name(m));
    qd_rundir rd;
    qd_error err;
    qd_error_clear(&err);
    int code = EXIT_OK;
    if (!yaml || !dir) {
        fprintf(stderr, "qdistill run: out of memory\n");
        code = EXIT_RUN_FAILED;
    } else if (qd_rundir_open(&rd, dir, yaml, (const char *const *)ovr, novr, &err) != QD_OK) {
        fprintf(stderr, "qdistill %s: %s\n", train_only ? "train" : "run", err.msg);
        code = err.code == QD_ERR_INVALID ? EXIT_USAGE : EXIT_RUN_FAILED;
    } else {
        qd_run_opts o = {.stop = c->stop_flag, .threads = threads, .train_only = train_only};
        int r = qd_run_execute(m, c->reg, &rd, &o, &err);
        if (r == QD_OK) {
            /* results on stdout: where they are */
            printf("%s\n", rd.path);
        } else {
            /* the run directory's log keeps the reason too: it is what a
             * researcher reads days later, when the terminal is gone */
            qd_log_to(QD_LOG_TO_FILE, QD_LOG_ERROR, "%s failed: %s",
                      train_only ? "training" : "run", err.msg);
            fprintf(stderr, "qdistill %s: %s\n", train_only ? "train" : "run", err.msg);
            code = r == QD_ERR_MANIFEST ? EXIT_USAGE : EXIT_RUN_FAILED;
        }
        qd_rundir_close(&rd);
    }
    free(yaml);
    free(dir);
    qd_manifest_destroy(m);
    return code;
}

int cmd_run(cli *c, int argc, char **argv)
{
    return run_or_train(c, argc, argv, 0);
}

/* Full-data training of the manifest's model (its `train` section), the
 * reference row of results tables; a manifest that also distils is fine. */
int cmd_train(cli *c, int argc, char **argv)
{
    return run_or_train(c, argc, argv, 1);
}
