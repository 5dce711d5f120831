/* Shared state and helpers of the qdistill command-line tool. */
#ifndef QDISTILL_CLI_H
#define QDISTILL_CLI_H

#include <stddef.h>

#include "qdistill/manifest.h"
#include "qdistill/registry.h"

/* Exit codes: the contract scripts rely on. */
enum { EXIT_OK = 0, EXIT_RUN_FAILED = 1, EXIT_USAGE = 2 };

typedef struct cli {
    const char *plugin_paths[16];
    size_t n_plugin_paths;
    int verbose;
    int quiet;
    qd_registry *reg;
    volatile int *stop_flag;
} cli;

/* Load plugins along the search order; problems are warnings unless
 * --verbose... they are always printed, since a plugin that failed to load
 * may be the one the manifest needs. Returns an exit code. */
int cli_registry(cli *c);

/* Load, override and validate a manifest, printing every problem to stderr.
 * Returns EXIT_OK or EXIT_USAGE. */
int cli_manifest(cli *c, const char *path, char *const *overrides, size_t n,
                 qd_manifest **out);

/* Split argv into positional arguments and key=value overrides. */
void cli_split_overrides(int argc, char **argv, char **pos, size_t *n_pos,
                         char **ovr, size_t *n_ovr);

int cmd_plugins(cli *c, int argc, char **argv);
int cmd_describe(cli *c, int argc, char **argv);
int cmd_validate(cli *c, int argc, char **argv);
int cmd_run(cli *c, int argc, char **argv);
int cmd_train(cli *c, int argc, char **argv);
int cmd_evaluate(cli *c, int argc, char **argv);
int cmd_sweep(cli *c, int argc, char **argv);
int cmd_table(cli *c, int argc, char **argv);
int cmd_report(cli *c, int argc, char **argv);
int cmd_describe_model(cli *c, int argc, char **argv);
int cmd_describe_circuit(cli *c, int argc, char **argv);
int cmd_docs(cli *c, int argc, char **argv);

#endif
