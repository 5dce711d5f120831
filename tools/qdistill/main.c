/* qdistill — command-line entry point: global options and dispatch. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "qdistill/log.h"

static volatile int g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;   /* long commands poll this, checkpoint and stop cleanly */
}

typedef struct command {
    const char *name;
    int (*fn)(cli *, int, char **);
    const char *args;
    const char *help;
} command;

static const command commands[] = {
    {"plugins", cmd_plugins, "[--kind KIND]", "list the plugins found (kind, name, version, summary)"},
    {"describe", cmd_describe, "[KIND/]PLUGIN", "show a plugin's parameters: type, default, range, doc"},
    {"validate", cmd_validate, "MANIFEST [key=value ...]", "check a manifest; print it resolved, or every error"},
    {"run", cmd_run, "MANIFEST [key=value ...] [--out DIR]", "run an experiment into a run directory"},
    {"sweep", cmd_sweep, "MANIFEST key=v1,v2 key=range(a,b) ... [--out DIR] [-j N] [--fail-fast] [--dry-run]\n"
     "                      [--slurm [--partition P] [--time T] [--cpus C] [--mem M]] [--task I]",
     "run a grid of overrides, one run directory per point (resumable); --slurm: as a job array"},
    {"table", cmd_table, "SWEEP_DIR|RUN_DIR... [--rows KEYS] [--cols KEYS] [--value PATH] [--format text|markdown|csv]",
     "results as a table: mean ± std over the runs of each configuration"},
    {"report", cmd_report, "RUN_DIR|SWEEP_DIR [--out FILE]",
     "a self-contained HTML report (plots, images, tables), default DIR/report.html"},
    {"evaluate", cmd_evaluate, "RUN_DIR [evaluate.KEY=VALUE ...] [--name NAME] [--manifest-dir DIR]",
     "evaluate a run's synthetic set again, into RUN_DIR/evaluation[-NAME].json"},
    {"train", cmd_train, "MANIFEST [key=value ...] [--out DIR]", "full-data training (the manifest's train section)"},
    {"describe-model", cmd_describe_model, "MANIFEST [key=value ...]", "print the model's layers, shapes and parameter counts"},
    {"describe-circuit", cmd_describe_circuit, "MANIFEST [key=value ...]", "print the circuit every quantum layer builds"},
    {"docs", cmd_docs, "manifest", "print docs/manifest.md, generated from the schemas"},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f)
{
    fprintf(f,
            "usage: qdistill [--plugin-path DIR]... [--quiet|--verbose] COMMAND [ARGS]\n"
            "\n"
            "Dataset distillation for hybrid quantum neural networks.\n"
            "\n"
            "commands:\n");
    for (size_t i = 0; i < N_COMMANDS; ++i)
        fprintf(f, "  %-17s %s\n  %-17s   %s\n", commands[i].name, commands[i].args, "",
                commands[i].help);
    fprintf(f,
            "\n"
            "options:\n"
            "  --plugin-path DIR   search DIR for plugins first (repeatable)\n"
            "  --quiet             only warnings and errors on stderr (no progress)\n"
            "  --verbose           debug output on stderr\n"
            "  --help, --version\n"
            "\n"
            "Plugins are also searched in $QDISTILL_PLUGIN_PATH (colon-separated), the build tree\n"
            "and the installed plugin directory. Exit codes: 0 ok, 1 run failed, 2 usage or\n"
            "manifest error. Logs and progress go to stderr, results to stdout: on a terminal,\n"
            "progress is one updating line; otherwise a plain line every 10%% or 10 s.\n");
}

int main(int argc, char **argv)
{
    cli c = {0};
    c.stop_flag = &g_stop;
    /* Pull global options out of argv wherever they appear (before "--"). */
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    if (!rest)
        return EXIT_RUN_FAILED;
    int nrest = 0;
    for (int i = 1; i < argc; ++i) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            while (i < argc)
                rest[nrest++] = argv[i++];
            break;
        }
        if (strcmp(a, "--plugin-path") == 0 || strncmp(a, "--plugin-path=", 14) == 0) {
            const char *v = a[13] == '=' ? a + 14 : (i + 1 < argc ? argv[++i] : NULL);
            if (!v || !*v) {
                fprintf(stderr, "qdistill: --plugin-path needs a directory\n");
                free(rest);
                return EXIT_USAGE;
            }
            if (c.n_plugin_paths == sizeof c.plugin_paths / sizeof c.plugin_paths[0]) {
                fprintf(stderr, "qdistill: too many --plugin-path options\n");
                free(rest);
                return EXIT_USAGE;
            }
            c.plugin_paths[c.n_plugin_paths++] = v;
        } else if (strcmp(a, "--quiet") == 0 || strcmp(a, "-q") == 0) {
            c.quiet = 1;
        } else if (strcmp(a, "--verbose") == 0 || strcmp(a, "-v") == 0) {
            c.verbose = 1;
        } else {
            rest[nrest++] = argv[i];
        }
    }
    qd_log_set_level(c.quiet ? QD_LOG_WARN : c.verbose ? QD_LOG_DEBUG : QD_LOG_INFO);

    int rc = EXIT_USAGE;
    if (nrest == 0) {
        usage(stderr);
    } else if (strcmp(rest[0], "--help") == 0 || strcmp(rest[0], "-h") == 0 ||
               strcmp(rest[0], "help") == 0) {
        usage(stdout);
        rc = EXIT_OK;
    } else if (strcmp(rest[0], "--version") == 0 || strcmp(rest[0], "version") == 0) {
        printf("qdistill %s (plugin ABI %d.%d)\n", qd_version(), QD_ABI_MAJOR, QD_ABI_MINOR);
        rc = EXIT_OK;
    } else {
        const command *cmd = NULL;
        for (size_t i = 0; i < N_COMMANDS; ++i)
            if (strcmp(rest[0], commands[i].name) == 0)
                cmd = &commands[i];
        if (!cmd) {
            fprintf(stderr, "qdistill: unknown command '%s' (see qdistill --help)\n", rest[0]);
        } else {
            struct sigaction sa;
            memset(&sa, 0, sizeof sa);
            sa.sa_handler = on_signal;
            sigaction(SIGINT, &sa, NULL);
            sigaction(SIGTERM, &sa, NULL);
            rc = cmd->fn(&c, nrest, rest);
        }
    }
    qd_registry_destroy(c.reg);
    free(rest);
    return rc;
}
