/*
 * qdistill/schema.h — validating configuration sections against parameter
 * schemas (qd_param arrays, see plugin.h), collecting every problem in one
 * pass.
 */
#ifndef QDISTILL_SCHEMA_H
#define QDISTILL_SCHEMA_H

#include "plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A list of diagnostics, each one line "file:line:col: message". */
typedef struct qd_diags {
    size_t n, cap;
    char **msgs;
} qd_diags;

QD_EXPORT void qd_diags_add(qd_diags *d, const qd_node *at, const char *fmt,
                            ...) QD_PRINTF(3, 4);
QD_EXPORT void qd_diags_add_raw(qd_diags *d, const char *msg);
QD_EXPORT void qd_diags_free(qd_diags *d);
/* All messages joined by '\n' (malloc'd). */
QD_EXPORT char *qd_diags_join(const qd_diags *d);

/* Validate mapping `section` against `schema`. `extra_keys` (NULL-terminated,
 * may be NULL) are keys the caller handles itself (e.g. "plugin"). Unknown
 * keys get a "did you mean 'x'?" suggestion (edit distance); wrong types,
 * out-of-range values, bad enum values and missing required keys are each
 * reported. `what` names the section in messages ("observable 'hermitian'").
 * Returns the number of problems added. */
QD_EXPORT size_t qd_schema_validate(const qd_param *schema,
                                    const qd_node *section,
                                    const char *const *extra_keys,
                                    const char *what, qd_diags *diags);

/* Find a parameter by name (NULL when absent). */
QD_EXPORT const qd_param *qd_schema_find(const qd_param *schema,
                                         const char *name);

/* Nearest of `candidates` to `word` by edit distance, or NULL when nothing is
 * close (distance > max(2, len/3)). */
QD_EXPORT const char *qd_suggest(const char *word,
                                 const char *const *candidates, size_t n);

/* Parse a MATRIX node into a malloc'd row-major complex array.
 * Entries: numbers or strings "a+bj", "bj", "-0.5-1e-3j". */
QD_EXPORT int qd_node_as_matrix(const qd_node *n, size_t *rows, size_t *cols,
                                double complex **out, qd_error *err);

/* Human-readable type of a parameter ("int in [1, 64]", "enum fixed|random",
 * "list of double", ...) for `qdistill describe` and docs (malloc'd). */
QD_EXPORT char *qd_param_type_text(const qd_param *p);

/* The schema as a Markdown table (key | type | default | description), one
 * row per parameter; the fields of a MAP (or LIST of MAP) parameter follow
 * it as `parent.key` (`parent[].key`) rows. Used to generate
 * docs/manifest.md (malloc'd). */
QD_EXPORT char *qd_schema_markdown(const qd_param *schema);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_SCHEMA_H */
