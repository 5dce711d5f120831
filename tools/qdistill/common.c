/* Helpers shared by the qdistill commands. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "qdistill/log.h"

int cli_registry(cli *c)
{
    if (c->reg)
        return EXIT_OK;
    qd_error err;
    if (qd_registry_create(&c->reg, &err) != QD_OK) {
        fprintf(stderr, "qdistill: %s\n", err.msg);
        return EXIT_RUN_FAILED;
    }
    char *problems = NULL;
    if (qd_registry_load_default(c->reg, c->plugin_paths, c->n_plugin_paths, &problems, &err) !=
        QD_OK) {
        fprintf(stderr, "qdistill: %s\n", err.msg);
        free(problems);
        return EXIT_USAGE;
    }
    if (problems) {
        /* One line per file that failed to load; the rest still work. */
        for (char *line = strtok(problems, "\n"); line; line = strtok(NULL, "\n"))
            qd_log(QD_LOG_WARN, "plugin not loaded: %s", line);
        free(problems);
    }
    return EXIT_OK;
}

int cli_manifest(cli *c, const char *path, char *const *overrides, size_t n, qd_manifest **out)
{
    *out = NULL;
    qd_error err;
    qd_error_clear(&err);
    int rc = cli_registry(c);
    if (rc)
        return rc;
    qd_manifest *m = NULL;
    if (qd_manifest_load(path, (const char *const *)overrides, n, &m, &err) != QD_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return EXIT_USAGE;
    }
    qd_diags diags = {0};
    if (qd_manifest_validate(m, c->reg, &diags) > 0) {
        for (size_t i = 0; i < diags.n; ++i)
            fprintf(stderr, "%s\n", diags.msgs[i]);
        fprintf(stderr, "%s: %zu error%s\n", path, diags.n, diags.n == 1 ? "" : "s");
        qd_diags_free(&diags);
        qd_manifest_destroy(m);
        return EXIT_USAGE;
    }
    qd_diags_free(&diags);
    *out = m;
    return EXIT_OK;
}

void cli_split_overrides(int argc, char **argv, char **pos, size_t *n_pos, char **ovr,
                         size_t *n_ovr)
{
    *n_pos = *n_ovr = 0;
    for (int i = 0; i < argc; ++i) {
        /* key=value where key has no '/' (so paths containing '=' after a
         * slash stay positional) */
        const char *eq = strchr(argv[i], '=');
        const char *slash = strchr(argv[i], '/');
        if (argv[i][0] != '-' && eq && eq != argv[i] && (!slash || slash > eq))
            ovr[(*n_ovr)++] = argv[i];
        else
            pos[(*n_pos)++] = argv[i];
    }
}
