/* Escaping text for HTML and SVG (both are markup, the same five characters
 * matter in text and in quoted attribute values). */
#ifndef QDISTILL_CLI_HTML_H
#define QDISTILL_CLI_HTML_H

#include <stddef.h>

#include "sbuf.h"

/* Append s with & < > " ' replaced by entities. Other bytes pass through:
 * the report is UTF-8, and run files are written by us as UTF-8; a NUL or
 * another control character other than tab/newline becomes U+FFFD so a
 * hostile file cannot smuggle markup-breaking bytes into the page. */
void html_escape_n(sbuf *b, const char *s, size_t n);
void html_escape(sbuf *b, const char *s);

#endif
