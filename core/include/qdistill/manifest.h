/*
 * qdistill/manifest.h — experiment manifests: load, override, validate.
 *
 * Top-level keys (all optional except name):
 *
 *   name, seed, threads,
 *   dataset:    {plugin: NAME, <plugin params>, <core dataset keys>}
 *   model:      {file: models/x.yaml} or {layers: [...]}
 *   encoder, ansatz, observable, simulator:
 *               {plugin: NAME, <plugin params>} — merged over the sections of
 *               every `quantum` layer of the model (manifest keys win; a
 *               different `plugin` replaces the layer's section whole), so
 *               `observable.trainable=false` is a one-key ablation.
 *   train:      full-data training (qdistill train)
 *   distill:    {plugin: NAME, ...}
 *   evaluate:   evaluation protocol
 *
 * A mapping holding `file: PATH` is replaced by that file's mapping (path
 * relative to the including file), with the sibling keys merged over it.
 *
 * Overrides "a.b.c=value" are applied after loading and before merging and
 * validation; an override naming a key that no schema knows is reported like
 * any unknown key, located at "<command line>:N:1" (N = override position).
 */
#ifndef QDISTILL_MANIFEST_H
#define QDISTILL_MANIFEST_H

#include "config.h"
#include "registry.h"
#include "schema.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qd_manifest qd_manifest;

/* Parse a manifest file, apply overrides and merge the quantum sections.
 * Syntax errors and malformed overrides fail here (exit code 2 material);
 * schema problems are found by qd_manifest_validate. */
QD_EXPORT int qd_manifest_load(const char *path, const char *const *overrides,
                               size_t n_overrides, qd_manifest **out,
                               qd_error *err);
QD_EXPORT void qd_manifest_destroy(qd_manifest *m);

/* Check every section against its schema (plugin sections against the
 * plugin's schema, model layers against the layer schemas, core sections
 * against the core schemas) and fill in defaults: those of the core sections
 * and layers are written into the tree (located "<default>"); plugin
 * sections keep only what was written, since host->has() must tell a given
 * key from a default. Appends all problems to diags and returns their
 * number. */
QD_EXPORT size_t qd_manifest_validate(qd_manifest *m, const qd_registry *reg,
                                      qd_diags *diags);

QD_EXPORT const qd_node *qd_manifest_root(const qd_manifest *m);
QD_EXPORT const char *qd_manifest_path(const qd_manifest *m);
/* Directory of the manifest file (relative paths in it resolve from here). */
QD_EXPORT const char *qd_manifest_dir(const qd_manifest *m);
QD_EXPORT const char *qd_manifest_name(const qd_manifest *m);
QD_EXPORT uint64_t qd_manifest_seed(const qd_manifest *m);
QD_EXPORT int qd_manifest_threads(const qd_manifest *m);   /* 0 = all cores */
QD_EXPORT const qd_node *qd_manifest_section(const qd_manifest *m,
                                             const char *key);
/* The resolved manifest as YAML (after overrides, merging, defaults; the
 * defaults of plugin sections appear as comments). Loading it again gives
 * the same configuration. */
QD_EXPORT char *qd_manifest_to_yaml(const qd_manifest *m);

/* Split "a.b=c" into a malloc'd path and value (QD_ERR_INVALID when there is
 * no '=' or the path is empty or malformed). */
QD_EXPORT int qd_override_parse(const char *text, char **path, char **value,
                                qd_error *err);

/* Core schemas (also used to generate docs/manifest.md). */
QD_EXPORT const qd_param *qd_manifest_top_schema(void);
QD_EXPORT const qd_param *qd_dataset_core_schema(void);
QD_EXPORT const qd_param *qd_train_schema(void);
QD_EXPORT const qd_param *qd_evaluate_schema(void);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_MANIFEST_H */
