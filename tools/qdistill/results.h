/* Reading the results of run directories, shared by qdistill table and
 * qdistill report: finding the runs under a path (a run, a sweep, a
 * directory of runs), labelling a run by the values of some manifest keys,
 * and the "mean ± std" text of a group of runs. */
#ifndef QDISTILL_CLI_RESULTS_H
#define QDISTILL_CLI_RESULTS_H

#include <stddef.h>

#include "qdistill/config.h"

/* A growable list of malloc'd strings. */
typedef struct strv {
    char **v;
    size_t n;
} strv;

/* Append x (taking ownership; NULL = out of memory). 0 or -1. */
int strv_push(strv *s, char *x);
void strv_free(strv *s);
/* Index of x, or (size_t)-1. */
size_t strv_find(const strv *s, const char *x);

/* a + sep + b, malloc'd (NULL when out of memory). */
char *join2(const char *a, const char *sep, const char *b);
/* True when dir/name exists. */
int has_file(const char *dir, const char *name);

/* The run directories under path, appended to runs: path itself (it holds a
 * manifest.yaml), the jobs of its sweep.yaml in sweep order, or its
 * subdirectories that hold a manifest.yaml, sorted. A sweep's grid keys are
 * appended to grid_keys (each once). Problems are printed to stderr prefixed
 * with `who` ("qdistill table"). 0 or -1. */
int results_collect(const char *path, strv *runs, strv *grid_keys, const char *who);

/* Split "a,b,c" into keys (appended). 0, or -1 with a message. */
int results_split_keys(const char *text, strv *out, const char *who);

/* The configuration of a run for keys: the values of the keys in its
 * manifest tree (a mapping or list as one-line YAML), else in the run
 * directory's overrides.txt (dir may be NULL), else "-", joined by
 * RESULTS_SEP, a byte no manifest value holds. malloc'd. overrides.txt is
 * where `model.file=PATH` is found: the include replaced the mapping, so the
 * resolved manifest holds no such key. */
#define RESULTS_SEP "\x1f"
char *results_label(const qd_node *root, const char *dir, const strv *keys);
/* A label for display: RESULTS_SEP becomes ", ". malloc'd. */
char *results_shown(const char *label);

/* "mean ± std" of n values (sample std): accuracies (pct) as percentages
 * with 2 decimals, others with 4 significant digits; " (n=K)" is appended
 * when n < all (a cell with fewer runs than the fullest); "-" when n = 0. */
void results_cell_text(char *buf, size_t len, const double *v, size_t n, int pct, size_t all);

/* True when a dotted result path names an accuracy (its last component
 * contains "acc"): shown as a percentage. */
int results_is_acc(const char *path);

#endif
