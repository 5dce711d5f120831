/* qdistill validate: load, override, validate, print the resolved manifest. */
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"

int cmd_validate(cli *c, int argc, char **argv)
{
    char *pos[64], *ovr[64];
    size_t npos, novr;
    if (argc > 64) {
        fprintf(stderr, "qdistill validate: too many arguments\n");
        return EXIT_USAGE;
    }
    cli_split_overrides(argc - 1, argv + 1, pos, &npos, ovr, &novr);
    if (npos != 1) {
        fprintf(stderr, "usage: qdistill validate MANIFEST [key=value ...]\n");
        return EXIT_USAGE;
    }
    qd_manifest *m;
    int rc = cli_manifest(c, pos[0], ovr, novr, &m);
    if (rc)
        return rc;
    char *yaml = qd_manifest_to_yaml(m);
    if (yaml)
        fputs(yaml, stdout);
    free(yaml);
    qd_manifest_destroy(m);
    return EXIT_OK;
}
