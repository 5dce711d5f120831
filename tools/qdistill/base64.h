/* Base64 (RFC 4648, standard alphabet, '=' padding): PNG files inlined in
 * the report as data: URIs. */
#ifndef QDISTILL_CLI_BASE64_H
#define QDISTILL_CLI_BASE64_H

#include <stddef.h>

#include "sbuf.h"

void base64_encode(sbuf *b, const void *data, size_t len);

#endif
