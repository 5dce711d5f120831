/* Private helpers shared by the files of core/src/io. */
#ifndef QD_IO_INTERNAL_H
#define QD_IO_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* write() all of buf to fd, retrying on EINTR and short writes, honouring
 * the failure-injection hooks. Returns 0 or an errno value. */
int qd_io_write_all(int fd, const void *buf, size_t len);

/* Format a double with %.17g, independent of LC_NUMERIC (',' -> '.').
 * Returns the length written (buf must hold at least 32 bytes). */
int qd_io_fmt_double(char *buf, size_t cap, double v);

/* Length (1..4) of the valid UTF-8 sequence starting at p, or 0 when the
 * bytes there are not valid UTF-8 (overlong forms, surrogates, > U+10FFFF
 * and truncated sequences included). left > 0. */
static inline size_t qd_io_utf8_len(const unsigned char *p, size_t left)
{
    unsigned c = p[0];
    if (c < 0x80)
        return 1;
    size_t n;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;   /* no overlong */
        else if (c == 0xED)
            hi = 0x9F;   /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;   /* <= U+10FFFF */
    } else
        return 0;
    if (left < n || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF)
            return 0;
    return n;
}

/* Little-endian stores/loads, independent of the host byte order. */
static inline void qd_io_put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline void qd_io_put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint32_t qd_io_get_le32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static inline uint64_t qd_io_get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

#endif
