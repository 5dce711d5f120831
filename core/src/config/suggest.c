/* "Did you mean ...?": the nearest candidate by optimal-string-alignment
 * distance (Levenshtein plus adjacent transpositions, so "trainabel" is one
 * edit from "trainable"). */
#include <stdlib.h>
#include <string.h>

#include "config_internal.h"

static unsigned lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? c + 32u : c;
}

/* Distance between a[0..n) and b[0..m), or limit+1 when it exceeds limit. */
static size_t osa_distance(const char *a, size_t n, const char *b, size_t m, size_t limit)
{
    if ((n > m ? n - m : m - n) > limit)
        return limit + 1;
    size_t *rows = malloc(3 * (m + 1) * sizeof *rows);
    if (!rows)
        return limit + 1;
    size_t *pp = rows, *prev = rows + m + 1, *cur = rows + 2 * (m + 1);
    for (size_t j = 0; j <= m; j++)
        prev[j] = j;
    for (size_t i = 1; i <= n; i++) {
        cur[0] = i;
        size_t best = cur[0];
        for (size_t j = 1; j <= m; j++) {
            size_t cost = lower((unsigned char)a[i - 1]) == lower((unsigned char)b[j - 1]) ? 0 : 1;
            size_t v = prev[j] + 1;
            if (cur[j - 1] + 1 < v)
                v = cur[j - 1] + 1;
            if (prev[j - 1] + cost < v)
                v = prev[j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                pp[j - 2] + 1 < v)
                v = pp[j - 2] + 1;
            cur[j] = v;
            if (v < best)
                best = v;
        }
        if (best > limit) {
            free(rows);
            return limit + 1;
        }
        size_t *t = pp;
        pp = prev;
        prev = cur;
        cur = t;
    }
    size_t d = prev[m];
    free(rows);
    return d;
}

const char *qd_suggest(const char *word, const char *const *candidates, size_t n)
{
    if (!word || !candidates)
        return NULL;
    size_t wl = strlen(word);
    size_t limit = wl / 3 > 2 ? wl / 3 : 2;
    const char *best = NULL;
    size_t best_d = limit + 1;
    for (size_t i = 0; i < n; i++) {
        const char *c = candidates[i];
        if (!c)
            continue;
        size_t cl = strlen(c);
        size_t d = osa_distance(word, wl, c, cl, best_d - 1 < limit ? best_d - 1 : limit);
        /* replacing every character is no suggestion ("x" -> "lr") */
        if (d < best_d && d <= limit && d < (wl > cl ? wl : cl)) {
            best_d = d;
            best = c;
            if (d == 0)
                break;
        }
    }
    return best;
}
