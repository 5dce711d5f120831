/*
 * qdistill/dataload.h — turning a manifest's `dataset:` section into the
 * train / validation / test sets a run works on.
 *
 * The section names a dataset plugin (`plugin: mnist`) plus that plugin's
 * keys, and may carry three core keys that apply to every dataset (their
 * schema is qd_dataset_core_schema(); they are applied here, after the
 * plugin has loaded both splits):
 *
 *   validation   hold out this many training samples as the validation set,
 *                class-stratified, drawn from the stream "dataset.validation"
 *                of the manifest seed. A value in (0, 1) is read as a
 *                fraction of the training set (rounded to nearest).
 *   subset       keep only this many of the remaining training samples,
 *                class-stratified, stream "dataset.subset" of the seed.
 *                A value in (0, 1) is a fraction, as above.
 *   test_subset  keep only this many test samples, class-stratified, drawn
 *                from the stream "dataset.test_subset" of the FIXED seed 0:
 *                every seed of a sweep is then scored on the same test
 *                samples, so seed-to-seed spread is not inflated by a
 *                changing test set.
 *
 * Absent or 0 means "off". The validation split is taken before `subset`,
 * so the held-out set does not depend on `subset`. Every selection keeps
 * the samples' original order.
 *
 * Stratification: the n chosen samples are spread over classes in
 * proportion to their frequencies (largest-remainder rounding, ties to the
 * lower class index), and within a class the members are picked uniformly
 * at random.
 */
#ifndef QDISTILL_DATALOAD_H
#define QDISTILL_DATALOAD_H

#include "config.h"
#include "data.h"
#include "registry.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qd_data_bundle {
    qd_dataset train;     /* after validation split and subset */
    qd_dataset val;       /* n == 0 (and no storage) when no validation */
    qd_dataset test;      /* after test_subset */
    char name[64];        /* the dataset plugin's name, e.g. "mnist" */
    /* One line, e.g. "mnist: train 54000, val 6000, test 10000
     * (1x28x28, 10 classes)". */
    char summary[256];
} qd_data_bundle;

/* Create the dataset instance for `dataset_section` (opts->stream defaults
 * to "dataset" when NULL; opts may be NULL for seed 0), load both splits,
 * check them (shape, labels in range, finite values, train and test agree)
 * and apply the core keys above. On failure *out is left empty (safe to
 * free) and err names the plugin or the offending key. */
QD_EXPORT int qd_data_load(const qd_registry *reg, const qd_node *dataset_section,
                           const qd_instance_opts *opts, qd_data_bundle *out,
                           qd_error *err);
QD_EXPORT void qd_data_bundle_free(qd_data_bundle *b);

/* Mark n samples of d, class-stratified as described above, drawn with rng:
 * mask[i] = 1 for the chosen samples and 0 for the others (mask has d->n
 * entries). Fails when n > d->n or a label is out of range. */
QD_EXPORT int qd_data_stratified_mask(const qd_dataset *d, size_t n, qd_rng *rng,
                                      unsigned char *mask, qd_error *err);

/* Keep only the samples with mask[i] != 0 (in order), compacting d in place
 * and shrinking its storage. */
QD_EXPORT int qd_data_compact(qd_dataset *d, const unsigned char *mask,
                              qd_error *err);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_DATALOAD_H */
