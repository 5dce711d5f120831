/* Escaping text for HTML and SVG (see html.h). */
#include <string.h>

#include "html.h"

void html_escape_n(sbuf *b, const char *s, size_t n)
{
    size_t run = 0;   /* bytes copied as they are, flushed in one append */
    for (size_t i = 0; i < n; ++i) {
        unsigned char c = (unsigned char)s[i];
        const char *rep = c == '&'   ? "&amp;"
                          : c == '<' ? "&lt;"
                          : c == '>' ? "&gt;"
                          : c == '"' ? "&quot;"
                          : c == '\'' ? "&#39;"
                          : (c < 0x20 && c != '\t' && c != '\n') || c == 0x7f ? "\xEF\xBF\xBD"
                                                                               : NULL;
        if (!rep) {
            ++run;
            continue;
        }
        sbuf_putn(b, s + i - run, run);
        run = 0;
        sbuf_put(b, rep);
    }
    sbuf_putn(b, s + n - run, run);
}

void html_escape(sbuf *b, const char *s)
{
    html_escape_n(b, s, strlen(s));
}
