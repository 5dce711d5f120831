/* Helpers shared inside core/src/run. */
#ifndef QD_RUN_INTERNAL_H
#define QD_RUN_INTERNAL_H

#include "qdistill/blob.h"
#include "qdistill/config.h"
#include "qdistill/distill.h"

/* Typed reads of a validated section; an absent key yields def. */
int qd_run_key_int(const qd_node *sec, const char *key, long long def, long long *out,
                   qd_error *err);
int qd_run_key_double(const qd_node *sec, const char *key, double def, double *out,
                      qd_error *err);
int qd_run_key_bool(const qd_node *sec, const char *key, int def, int *out, qd_error *err);
const char *qd_run_key_str(const qd_node *sec, const char *key, const char *def);

int qd_run_put_synset(qd_blob *b, const qd_synset *s);
int qd_run_get_synset(qd_blob_reader *r, qd_synset *s, qd_error *err);
double qd_run_peak_rss_mb(void);

#endif
