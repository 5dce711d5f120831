/*
 * qdistill/ckpt.h — checkpoint files: named binary sections in one container,
 * written atomically and verified on read.
 *
 * Layout (little-endian):
 *   0   magic     "QDCKPT\0\1"
 *   8   u32       format version (QD_CKPT_VERSION)
 *   12  u32       number of sections
 *   16  u64       total file length in bytes
 *   24  u32       flags, reserved (must be 0)
 *   28  u32       CRC32 of bytes 0..27
 *   32  sections, each: u32 name length (1..255), u32 CRC32, u64 data length,
 *       name bytes, data bytes. The CRC (zlib crc32) covers the two lengths,
 *       the name and the data, so any flipped bit in a section is caught.
 *
 * A checkpoint is published with qd_write_atomic semantics, so a reader sees
 * the previous complete checkpoint or the new complete one. Every byte of
 * the file is covered by a CRC or a length check. Reading checks
 * magic, version, header CRC, total length (truncation), every section's
 * bounds and CRC, and unique names; errors read e.g.
 *   "checkpoint 'run/ckpt.bin': section 'distiller' CRC mismatch".
 */
#ifndef QDISTILL_CKPT_H
#define QDISTILL_CKPT_H

#include "blob.h"
#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QD_CKPT_MAGIC "QDCKPT\0\1"
#define QD_CKPT_VERSION 1u
#define QD_CKPT_NAME_MAX 255

typedef struct qd_ckpt_writer qd_ckpt_writer;

QD_EXPORT int qd_ckpt_writer_create(qd_ckpt_writer **out, qd_error *err);
/* Add a section (data is copied). Names: 1..255 bytes, no NUL, unique. */
QD_EXPORT int qd_ckpt_writer_add(qd_ckpt_writer *w, const char *name,
                                 const void *data, size_t len, qd_error *err);
QD_EXPORT int qd_ckpt_writer_add_blob(qd_ckpt_writer *w, const char *name,
                                      const qd_blob *b, qd_error *err);
/* Write the checkpoint to path atomically. The writer stays valid (it can be
 * committed again, e.g. to a second file) until destroyed. */
QD_EXPORT int qd_ckpt_writer_commit(qd_ckpt_writer *w, const char *path,
                                    qd_error *err);
QD_EXPORT void qd_ckpt_writer_destroy(qd_ckpt_writer *w);

typedef struct qd_ckpt qd_ckpt;

/* Read and verify a checkpoint file. */
QD_EXPORT int qd_ckpt_read(const char *path, qd_ckpt **out, qd_error *err);
/* Verify a checkpoint held in memory (copied); label names it in errors. */
QD_EXPORT int qd_ckpt_parse(const void *data, size_t len, const char *label,
                            qd_ckpt **out, qd_error *err);
QD_EXPORT void qd_ckpt_destroy(qd_ckpt *c);

QD_EXPORT size_t qd_ckpt_count(const qd_ckpt *c);
QD_EXPORT const char *qd_ckpt_name(const qd_ckpt *c, size_t i);
QD_EXPORT int qd_ckpt_has(const qd_ckpt *c, const char *name);
/* Data of a section (a view valid until qd_ckpt_destroy); QD_ERR_FORMAT
 * "checkpoint 'x': no section 'y'" when absent. */
QD_EXPORT int qd_ckpt_section(const qd_ckpt *c, const char *name,
                              const void **data, size_t *len, qd_error *err);

#ifdef __cplusplus
}
#endif
#endif /* QDISTILL_CKPT_H */
