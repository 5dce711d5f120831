/* Base64 encoding (see base64.h). */
#include "base64.h"

static const char ALPHABET[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void base64_encode(sbuf *b, const void *data, size_t len)
{
    const unsigned char *p = data;
    char out[4 * 256];   /* encode in chunks of 192 input bytes */
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        unsigned v = (unsigned)p[i] << 16;
        if (i + 1 < len)
            v |= (unsigned)p[i + 1] << 8;
        if (i + 2 < len)
            v |= p[i + 2];
        out[o++] = ALPHABET[v >> 18 & 63];
        out[o++] = ALPHABET[v >> 12 & 63];
        out[o++] = i + 1 < len ? ALPHABET[v >> 6 & 63] : '=';
        out[o++] = i + 2 < len ? ALPHABET[v & 63] : '=';
        if (o == sizeof out) {
            sbuf_putn(b, out, o);
            o = 0;
        }
    }
    sbuf_putn(b, out, o);
}
