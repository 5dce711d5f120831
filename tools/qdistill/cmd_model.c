/* qdistill describe-model / describe-circuit: what a manifest builds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "qdistill/experiment.h"

/* Parse "--input CxHxW" and "--classes K"; leave the rest in pos/ovr. */
static int open_for_describe(cli *c, int argc, char **argv, const char *usage,
                             qd_manifest **m, qd_experiment *x)
{
    char *args[128], *pos[128], *ovr[128];
    int nargs = 0;
    qd_experiment_opts o = {.load_data = 1, .stop = c->stop_flag};
    for (int i = 1; i < argc; ++i) {
        if (strcmp(argv[i], "--input") == 0 && i + 1 < argc) {
            if (sscanf(argv[++i], "%zux%zux%zu", &o.channels, &o.height, &o.width) != 3 ||
                !o.channels || !o.height || !o.width) {
                fprintf(stderr, "--input wants CxHxW, e.g. 1x28x28\n");
                return EXIT_USAGE;
            }
            o.load_data = 0;
        } else if (strcmp(argv[i], "--classes") == 0 && i + 1 < argc) {
            o.classes = strtoul(argv[++i], NULL, 10);
        } else if (nargs < 128) {
            args[nargs++] = argv[i];
        }
    }
    if (!o.load_data && !o.classes)
        o.classes = 10;
    size_t npos, novr;
    cli_split_overrides(nargs, args, pos, &npos, ovr, &novr);
    if (npos != 1) {
        fprintf(stderr, "usage: qdistill %s MANIFEST [key=value ...] [--input CxHxW] [--classes K]\n",
                usage);
        return EXIT_USAGE;
    }
    int rc = cli_manifest(c, pos[0], ovr, novr, m);
    if (rc)
        return rc;
    qd_error err;
    if (qd_experiment_open(x, *m, c->reg, &o, &err) != QD_OK) {
        fprintf(stderr, "%s\n", err.msg);
        qd_manifest_destroy(*m);
        return err.code == QD_ERR_MANIFEST || err.code == QD_ERR_INVALID ? EXIT_USAGE
                                                                        : EXIT_RUN_FAILED;
    }
    return EXIT_OK;
}

int cmd_describe_model(cli *c, int argc, char **argv)
{
    qd_manifest *m;
    qd_experiment x;
    int rc = open_for_describe(c, argc, argv, "describe-model", &m, &x);
    if (rc)
        return rc;
    char *s = qd_model_describe(x.model);
    if (s)
        fputs(s, stdout);
    free(s);
    qd_experiment_close(&x);
    qd_manifest_destroy(m);
    return EXIT_OK;
}

int cmd_describe_circuit(cli *c, int argc, char **argv)
{
    qd_manifest *m;
    qd_experiment x;
    int rc = open_for_describe(c, argc, argv, "describe-circuit", &m, &x);
    if (rc)
        return rc;
    char *s = qd_model_describe_circuits(x.model);
    if (s && *s)
        fputs(s, stdout);
    else
        printf("the model has no quantum layer\n");
    free(s);
    qd_experiment_close(&x);
    qd_manifest_destroy(m);
    return EXIT_OK;
}
