/* The code paths the fuzz harnesses drive, shared with the regression
 * suite (tests/core/test_fuzz_regressions.c) so that a crash input found by
 * libFuzzer is replayed through exactly the same calls in the normal test
 * build.
 *
 * Each fz_* function takes untrusted bytes and returns the qd_status of the
 * operation under test (QD_OK or a clean error), or FZ_BUG when the library
 * broke one of its own promises (an error without a message, an emitted YAML
 * that does not load back, an npy whose count disagrees with its shape). The
 * harnesses trap on FZ_BUG; the regression suite fails on it. */
#ifndef QD_TEST_FUZZ_TARGETS_H
#define QD_TEST_FUZZ_TARGETS_H

#include <stddef.h>
#include <stdint.h>

#define FZ_BUG (-1)

/* One-time setup: scratch directory (under $TMPDIR, removed at exit), the
 * registry of the real plugins (QDISTILL_PLUGIN_PATH, else the build tree's
 * plugins/), quiet logging. Returns 0, or -1 with a message on stderr. */
int fz_init(void);
/* The scratch directory made by fz_init. */
const char *fz_dir(void);

/* Manifest file: load, validate against the registry, emit YAML, reload. */
int fz_manifest(const uint8_t *data, size_t size);
/* Overrides (one per line, at most 16) on a loaded manifest:
 * qd_override_parse + qd_config_set, emit, reload; then the same overrides
 * through qd_manifest_load + validate. */
int fz_override(const uint8_t *data, size_t size);
/* qd_npy_parse on the bytes. */
int fz_npy(const uint8_t *data, size_t size);
/* `mnist` dataset plugin, the bytes as the image file. mode 0: raw file;
 * 1: the raw bytes in a file named *.gz (zlib sees them); 2: the bytes
 * gzip-compressed into *.gz (the IDX parser behind zlib sees them). The
 * label file is made to match the image header's count. */
int fz_mnist(const uint8_t *data, size_t size, int mode);
/* `cifar10` dataset plugin, the bytes as a batch file (records chosen so
 * that a whole number of records is a valid size); both splits. */
int fz_cifar10(const uint8_t *data, size_t size);

/* What harness fuzz_<name> does with one input: the dispatch the
 * regression suite replays files through. "mnist": the first byte picks the
 * mode (even: 0, odd: 1), the rest is the file; "mnist_gz": mode 2. Returns
 * FZ_BUG for an unknown name too. */
int fz_run(const char *harness, const uint8_t *data, size_t size);

#endif
