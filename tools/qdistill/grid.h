/* Sweep grids: value lists ("a,b", "range(1,6)"), the manifest's `sweep:`
 * section, and job names. Shared by qdistill sweep and its tests' reading. */
#ifndef QDISTILL_CLI_GRID_H
#define QDISTILL_CLI_GRID_H

#include <stddef.h>

#include "qdistill/config.h"

/* One swept key and its values (YAML text, in the order given). A value
 * given as a mapping in a manifest's sweep section (a whole section, e.g.
 * `distill: [{plugin: a, ...}, {plugin: b, ...}]`) is its flow-style YAML
 * text; its label (the mapping's `plugin`, else "v<i>") names directories.
 * labels is NULL, or labels[i] is NULL, when a value names itself. */
typedef struct grid_key {
    char *key;
    char **vals;
    size_t n;
    char **labels;
} grid_key;

/* The text naming value i of k in job directory names. */
static inline const char *grid_label(const grid_key *k, size_t i)
{
    return k->labels && k->labels[i] ? k->labels[i] : k->vals[i];
}

typedef struct grid {
    grid_key *keys;
    size_t n;
} grid;

void grid_free(grid *g);

/* Expand a value list: top-level commas separate items (commas inside
 * [], {}, () or quotes do not), an item "range(stop)", "range(start, stop)"
 * or "range(start, stop, step)" expands like Python's. Appends to *vals.
 * Returns 0, or -1 with a message in msg. */
int grid_expand(const char *text, char ***vals, size_t *n, char *msg, size_t msg_len);

/* True when a command-line value is a list (a top-level comma or a range). */
int grid_is_list(const char *text);

/* Set key to the values (replacing an existing entry of the same key). Takes
 * ownership of vals. Returns 0, or -1 when out of memory. */
int grid_set(grid *g, const char *key, char **vals, size_t n);
/* Remove key; returns 1 when it was there. */
int grid_remove(grid *g, const char *key);
/* Sort the keys (job names and the job order follow this order). */
void grid_sort(grid *g);

/* Read the `sweep:` section of a manifest tree (NULL: nothing) into g,
 * appending one "file:line:col: message" per problem to the malloc'd
 * message list. Returns the number of problems. */
size_t grid_from_manifest(const qd_node *sweep, grid *g, char ***msgs, size_t *n_msgs);

/* A directory name for "k1=v1,k2=v2" (characters outside [A-Za-z0-9._+=,-]
 * become '_'; over-long names are cut and suffixed with a hash). malloc'd. */
char *grid_job_name(const char *const *keys, const char *const *vals, size_t n);

#endif
