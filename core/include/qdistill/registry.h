/*
 * qdistill/registry.h — finding, loading and instantiating plugins.
 *
 * A registry holds the descriptors of every plugin file it has loaded.
 * Loading validates each descriptor (ABI major, struct sizes, required
 * callbacks, unique names per kind) and rejects a bad file with one line that
 * names the file and the reason; other files still load.
 *
 * Search order for qd_registry_load_default():
 *   1. the directories given by the caller (--plugin-path),
 *   2. QDISTILL_PLUGIN_PATH (colon-separated),
 *   3. the build tree's plugins/ directory (when running from the build tree),
 *   4. the installed $libdir/qdistill/plugins.
 * The first plugin of a (kind, name) found wins; later duplicates found in a
 * *different* search directory are shadowed (logged at debug level), while
 * duplicates within one directory or file are an error.
 */
#ifndef QDISTILL_REGISTRY_H
#define QDISTILL_REGISTRY_H

#include "plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qd_registry qd_registry;

QD_EXPORT int qd_registry_create(qd_registry **out, qd_error *err);
QD_EXPORT void qd_registry_destroy(qd_registry *reg);

/* Load one plugin file. */
QD_EXPORT int qd_registry_load_file(qd_registry *reg, const char *path,
                                    qd_error *err);
/* Load every *.so in a directory (non-recursive, sorted by name). Problems
 * with individual files are appended to `problems` (one line each, may be
 * NULL); returns an error only when the directory cannot be read. */
QD_EXPORT int qd_registry_load_dir(qd_registry *reg, const char *dir,
                                   char **problems, qd_error *err);
/* Load along the search order above. extra_dirs may be NULL. Problems are
 * collected as for load_dir (malloc'd, newline-separated, or NULL). */
QD_EXPORT int qd_registry_load_default(qd_registry *reg,
                                       const char *const *extra_dirs,
                                       size_t n_extra, char **problems,
                                       qd_error *err);
/* The files load_dir / load_default could not load, as text for the end of
 * an "unknown plugin" message: "; not loaded: FILE: reason; ..." (the first
 * three, then "; and N more"), or "" when every file loaded. Valid until the
 * next load or destroy. */
QD_EXPORT const char *qd_registry_problem_note(const qd_registry *reg);
/* Register descriptors compiled into the host itself (used by tests). */
QD_EXPORT int qd_registry_add(qd_registry *reg, const qd_plugin_desc *desc,
                              const char *origin, qd_error *err);

QD_EXPORT size_t qd_registry_count(const qd_registry *reg);
QD_EXPORT const qd_plugin_desc *qd_registry_at(const qd_registry *reg,
                                               size_t i, const char **origin);
QD_EXPORT const qd_plugin_desc *qd_registry_find(const qd_registry *reg,
                                                 int kind, const char *name);
/* Comma-separated names of the plugins of a kind (malloc'd). */
QD_EXPORT char *qd_registry_names(const qd_registry *reg, int kind);

/* Check a descriptor as the loader does; origin names it in messages. */
QD_EXPORT int qd_plugin_desc_check(const qd_plugin_desc *d, const char *origin,
                                   qd_error *err);

/* ------------------------------------------------------------------------
 * Instances
 * ---------------------------------------------------------------------- */

typedef struct qd_instance qd_instance;

typedef struct qd_instance_opts {
    uint64_t seed;            /* the manifest seed */
    const char *stream;       /* stable name of the instance's RNG stream,
                                 e.g. "model.q.ansatz" */
    int threads;
    const char *base_dir;     /* for host->resolve_path, may be NULL */
    volatile int *stop_flag;  /* may be NULL */
} qd_instance_opts;

/* Look up section's `plugin` key in the registry (unknown name: an error
 * listing the plugins of that kind), validate the section against the
 * plugin's schema (all problems, "file:line:col: ..."), then call create. */
QD_EXPORT int qd_instance_create(const qd_registry *reg, int kind,
                                 const qd_node *section,
                                 const qd_instance_opts *opts,
                                 qd_instance **out, qd_error *err);
QD_EXPORT void qd_instance_destroy(qd_instance *inst);
QD_EXPORT void *qd_instance_self(const qd_instance *inst);
QD_EXPORT const void *qd_instance_vtable(const qd_instance *inst);
QD_EXPORT const qd_plugin_desc *qd_instance_desc(const qd_instance *inst);
QD_EXPORT const qd_host *qd_instance_host(const qd_instance *inst);
/* The message a plugin recorded with host->error(), prefixed with its kind
 * and name ("simulator 'statevector': ..."); copies it into err and returns
 * its code (QD_ERR_PLUGIN when the plugin failed without recording one). */
QD_EXPORT int qd_instance_error(const qd_instance *inst, int rc, qd_error *err);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_REGISTRY_H */
