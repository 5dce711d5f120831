/* Helpers shared by the qdistill commands. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "qdistill/log.h"

/* Load the registry; the files that failed to load come back in *problems
 * (one line each) for the caller to report. */
static int load_registry(cli *c, char **problems)
{
    *problems = NULL;
    if (c->reg)
        return EXIT_OK;
    qd_error err;
    if (qd_registry_create(&c->reg, &err) != QD_OK) {
        fprintf(stderr, "qdistill: %s\n", err.msg);
        return EXIT_RUN_FAILED;
    }
    if (qd_registry_load_default(c->reg, c->plugin_paths, c->n_plugin_paths, problems, &err) !=
        QD_OK) {
        fprintf(stderr, "qdistill: %s\n", err.msg);
        free(*problems);
        *problems = NULL;
        return EXIT_USAGE;
    }
    return EXIT_OK;
}

/* One warning per file that failed to load (the rest still work), except
 * those an error message in diags already names; frees problems. */
static void warn_problems(char *problems, const qd_diags *diags)
{
    if (!problems)
        return;
    char *save = NULL;
    for (char *line = strtok_r(problems, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        int told = 0;
        for (size_t i = 0; diags && i < diags->n && !told; ++i)
            told = strstr(diags->msgs[i], line) != NULL;
        if (!told)
            qd_log(QD_LOG_WARN, "plugin not loaded: %s", line);
    }
    free(problems);
}

int cli_registry(cli *c)
{
    char *problems;
    int rc = load_registry(c, &problems);
    warn_problems(problems, NULL);
    return rc;
}

int cli_manifest(cli *c, const char *path, char *const *overrides, size_t n, qd_manifest **out)
{
    *out = NULL;
    qd_error err;
    qd_error_clear(&err);
    char *problems;
    int rc = load_registry(c, &problems);
    if (rc)
        return rc;
    qd_manifest *m = NULL;
    if (qd_manifest_load(path, (const char *const *)overrides, n, &m, &err) != QD_OK) {
        warn_problems(problems, NULL);
        fprintf(stderr, "%s\n", err.msg);
        return EXIT_USAGE;
    }
    qd_diags diags = {0};
    if (qd_manifest_validate(m, c->reg, &diags) > 0) {
        /* an "unknown plugin" error names the files that failed to load:
         * they are not repeated as warnings */
        warn_problems(problems, &diags);
        for (size_t i = 0; i < diags.n; ++i)
            fprintf(stderr, "%s\n", diags.msgs[i]);
        fprintf(stderr, "%s: %zu error%s\n", path, diags.n, diags.n == 1 ? "" : "s");
        qd_diags_free(&diags);
        qd_manifest_destroy(m);
        return EXIT_USAGE;
    }
    warn_problems(problems, NULL);
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
