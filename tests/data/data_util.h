/* Shared helpers for the data suites: a scratch directory, a registry
 * loaded from QDISTILL_PLUGIN_PATH, file writers (raw and gzip) and
 * one-call loading of a dataset section given as YAML text. */
#ifndef QD_TEST_DATA_UTIL_H
#define QD_TEST_DATA_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "qdistill/data.h"
#include "qdistill/dataload.h"
#include "qdistill/registry.h"

extern char dt_dir[512];        /* scratch directory of the current test */
extern qd_registry *dt_reg;     /* plugins from QDISTILL_PLUGIN_PATH */

/* Criterion .init / .fini: make (remove) the scratch dir and registry. */
void dt_setup(void);
void dt_teardown(void);

/* "<dt_dir>/<name>" in a rotating static buffer (4 live at a time). */
const char *dt_path(const char *name);

void dt_write(const char *name, const void *data, size_t n);
void dt_write_gz(const char *name, const void *data, size_t n);
/* The gzip-compressed bytes of data (malloc'd), for corrupting by hand. */
unsigned char *dt_gzip(const void *data, size_t n, size_t *out_len);

/* IDX buffers (malloc'd): header + payload. */
unsigned char *dt_idx_images(uint32_t magic, uint32_t n, uint32_t rows, uint32_t cols,
                             const unsigned char *pix, size_t pix_len, size_t *len);
unsigned char *dt_idx_labels(uint32_t magic, uint32_t n, const unsigned char *lab,
                             size_t lab_len, size_t *len);

/* Create a dataset instance from `yaml` (a mapping with `plugin:`) with
 * base_dir = dt_dir and load one split. Returns the failing status (of
 * create or of load) with its message in err. */
int dt_load(const char *yaml, qd_split split, qd_dataset *out, qd_error *err);

/* qd_data_load on `yaml` with the given seed. */
int dt_bundle(const char *yaml, uint64_t seed, qd_data_bundle *b, qd_error *err);

/* Expect rc == code and a one-line message containing every non-NULL
 * needle (a file path, a phrase). */
void dt_expect_error(int rc, const qd_error *err, int code, const char *n1, const char *n2,
                     const char *n3);

double dt_now(void);

#endif
