/* Typed reading of scalars under the YAML 1.2 core schema, and complex
 * numbers for matrix entries. Quoted scalars are strings: "3" is never an
 * integer, so a value's type is visible in the file. */
#include <errno.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_internal.h"

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

int qd__text_is_null(const char *s)
{
    return !*s || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 ||
           strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0;
}

int qd__text_is_bool(const char *s, int *out)
{
    if (strcmp(s, "true") == 0 || strcmp(s, "True") == 0 || strcmp(s, "TRUE") == 0) {
        *out = 1;
        return 0;
    }
    if (strcmp(s, "false") == 0 || strcmp(s, "False") == 0 || strcmp(s, "FALSE") == 0) {
        *out = 0;
        return 0;
    }
    return -1;
}

/* Accumulate digits of `base` from s (all of s must be digits). */
static int accumulate(const char *s, unsigned base, unsigned long long limit,
                      unsigned long long *out, int *overflow)
{
    unsigned long long v = 0;
    if (!*s)
        return -1;
    for (; *s; s++) {
        unsigned d;
        char c = *s;
        if (is_digit(c))
            d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a') + 10;
        else if (c >= 'A' && c <= 'F')
            d = (unsigned)(c - 'A') + 10;
        else
            return -1;
        if (d >= base)
            return -1;
        if (v > (limit - d) / base)
            *overflow = 1;
        else
            v = v * base + d;
    }
    *out = v;
    return 0;
}

int qd__text_to_int(const char *s, long long *out, int *overflow)
{
    *overflow = 0;
    unsigned long long v;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'o')) {
        if (accumulate(s + 2, s[1] == 'x' ? 16 : 8, (unsigned long long)LLONG_MAX, &v,
                       overflow))
            return -1;
        if (*overflow)
            return -1;
        *out = (long long)v;
        return 0;
    }
    int neg = s[0] == '-';
    if (s[0] == '-' || s[0] == '+')
        s++;
    for (const char *p = s; *p; p++)
        if (!is_digit(*p))
            return -1;
    unsigned long long limit = neg ? (unsigned long long)LLONG_MAX + 1u
                                   : (unsigned long long)LLONG_MAX;
    if (accumulate(s, 10, limit, &v, overflow) || *overflow)
        return -1;
    *out = neg ? (v == (unsigned long long)LLONG_MAX + 1u ? LLONG_MIN : -(long long)v)
               : (long long)v;
    return 0;
}

/* Length of the longest YAML 1.2 float/decimal literal at the start of s
 * ([-+]? (.digits | digits(.digits?)?) ([eE][-+]?digits)?), 0 if none. */
static size_t float_prefix(const char *s)
{
    size_t i = 0, digits = 0;
    if (s[i] == '-' || s[i] == '+')
        i++;
    while (is_digit(s[i]))
        i++, digits++;
    if (s[i] == '.') {
        i++;
        while (is_digit(s[i]))
            i++, digits++;
    }
    if (!digits)
        return 0;
    if (s[i] == 'e' || s[i] == 'E') {
        size_t j = i + 1;
        if (s[j] == '-' || s[j] == '+')
            j++;
        if (is_digit(s[j])) {
            while (is_digit(s[j]))
                j++;
            i = j;
        }
    }
    return i;
}

/* strtod on [s, s+len) in the C locale's notation whatever the process
 * locale is: the '.' is swapped for the locale's decimal point. */
static double c_strtod(const char *s, size_t len, int *overflow)
{
    char small[128];
    char *buf = len < sizeof small ? small : malloc(len + 1);
    if (!buf) {
        *overflow = 1;
        return 0.0;
    }
    memcpy(buf, s, len);
    buf[len] = '\0';
    const char *dp = localeconv()->decimal_point;
    char *dot = strchr(buf, '.');
    if (dot && dp && dp[0] && dp[0] != '.' && !dp[1])
        *dot = dp[0];
    errno = 0;
    double v = strtod(buf, NULL);
    if (errno == ERANGE && isinf(v))
        *overflow = 1;
    if (buf != small)
        free(buf);
    return v;
}

int qd__text_to_double(const char *s, double *out, int *overflow)
{
    *overflow = 0;
    long long iv;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'o')) {
        if (qd__text_to_int(s, &iv, overflow))
            return -1;
        *out = (double)iv;
        return 0;
    }
    const char *t = s;
    int neg = 0;
    if (*t == '-' || *t == '+')
        neg = *t++ == '-';
    if (strcmp(t, ".inf") == 0 || strcmp(t, ".Inf") == 0 || strcmp(t, ".INF") == 0) {
        *out = neg ? -INFINITY : INFINITY;
        return 0;
    }
    if (strcmp(s, ".nan") == 0 || strcmp(s, ".NaN") == 0 || strcmp(s, ".NAN") == 0) {
        *out = NAN;
        return 0;
    }
    size_t n = float_prefix(s);
    if (!n || s[n])
        return -1;
    double v = c_strtod(s, n, overflow);
    if (*overflow)
        return -1;
    *out = v;
    return 0;
}

/* ------------------------------------------------------------------------
 * Node conversions
 * ---------------------------------------------------------------------- */

/* Conversions write a location-free message body into msg on failure, so
 * that the public functions and schema validation can frame it. */

static int type_msg(const qd_node *n, char *msg, size_t size, const char *expected)
{
    char d[QD_QUOTE_MAX];
    snprintf(msg, size, "expected %s, got %s", expected, qd__describe(n, d));
    return -1;
}

/* A quoted scalar whose text would have been accepted without the quotes. */
static int quoted_msg(const qd_node *n, char *msg, size_t size, const char *expected)
{
    char q[QD_QUOTE_MAX];
    snprintf(msg, size,
             "expected %s, got the quoted string '%s' (quoted values are strings; remove "
             "the quotes)",
             expected, qd__quote(n->str, q));
    return -1;
}

int qd__conv_bool(const qd_node *n, int *out, char *msg, size_t size)
{
    const char *what = "true or false";
    if (!n || n->type != QD_NODE_SCALAR)
        return type_msg(n, msg, size, what);
    int v;
    if (qd__text_is_bool(n->str, &v) == 0) {
        if (n->is_str)
            return quoted_msg(n, msg, size, what);
        *out = v;
        return 0;
    }
    static const char *const yaml11[] = {"yes", "no", "on", "off", "y", "n", "Yes",
                                         "No", "On", "Off", "YES", "NO", "ON", "OFF"};
    for (size_t i = 0; i < sizeof yaml11 / sizeof yaml11[0]; i++)
        if (strcmp(n->str, yaml11[i]) == 0) {
            snprintf(msg, size,
                     "expected true or false, got '%s' (YAML 1.2 booleans are only true "
                     "and false)",
                     n->str);
            return -1;
        }
    return type_msg(n, msg, size, what);
}

int qd__conv_int(const qd_node *n, long long *out, char *msg, size_t size)
{
    const char *what = "an integer";
    if (!n || n->type != QD_NODE_SCALAR)
        return type_msg(n, msg, size, what);
    long long v;
    int overflow;
    char q[QD_QUOTE_MAX];
    if (qd__text_to_int(n->str, &v, &overflow) == 0) {
        if (n->is_str)
            return quoted_msg(n, msg, size, what);
        *out = v;
        return 0;
    }
    if (overflow) {
        snprintf(msg, size, "integer '%s' is out of range (at most %lld in magnitude)",
                 qd__quote(n->str, q), LLONG_MAX);
        return -1;
    }
    double d;
    if (!n->is_str && qd__text_to_double(n->str, &d, &overflow) == 0) {
        snprintf(msg, size,
                 "expected an integer, got '%s' (a number with a fraction or exponent)",
                 qd__quote(n->str, q));
        return -1;
    }
    return type_msg(n, msg, size, what);
}

int qd__conv_double(const qd_node *n, double *out, char *msg, size_t size)
{
    const char *what = "a number";
    if (!n || n->type != QD_NODE_SCALAR)
        return type_msg(n, msg, size, what);
    double v;
    int overflow;
    if (qd__text_to_double(n->str, &v, &overflow) == 0) {
        if (n->is_str)
            return quoted_msg(n, msg, size, what);
        *out = v;
        return 0;
    }
    if (overflow) {
        char q[QD_QUOTE_MAX];
        snprintf(msg, size, "number '%s' is out of range for a double", qd__quote(n->str, q));
        return -1;
    }
    return type_msg(n, msg, size, what);
}

int qd_node_as_bool(const qd_node *n, int *out, qd_error *err)
{
    char msg[512];
    int v;
    if (qd__conv_bool(n, &v, msg, sizeof msg))
        return qd_node_error(n, err, QD_ERR_INVALID, "%s", msg);
    if (out)
        *out = v;
    return QD_OK;
}

int qd_node_as_int(const qd_node *n, long long *out, qd_error *err)
{
    char msg[512];
    long long v;
    if (qd__conv_int(n, &v, msg, sizeof msg))
        return qd_node_error(n, err, QD_ERR_INVALID, "%s", msg);
    if (out)
        *out = v;
    return QD_OK;
}

int qd_node_as_double(const qd_node *n, double *out, qd_error *err)
{
    char msg[512];
    double v;
    if (qd__conv_double(n, &v, msg, sizeof msg))
        return qd_node_error(n, err, QD_ERR_INVALID, "%s", msg);
    if (out)
        *out = v;
    return QD_OK;
}

/* ------------------------------------------------------------------------
 * Complex numbers: "3", "-0.5", "2j", "-j", "1+2j", "1.5e-3 - 0.5j"
 * ---------------------------------------------------------------------- */

static const char *skip_ws(const char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    return s;
}

/* An unsigned-or-signed real literal followed by optional 'j'. On success
 * advances *ps and sets *imag. A bare sign or nothing before 'j' means 1. */
static int term(const char **ps, int allow_sign, double *v, int *imag)
{
    const char *s = *ps;
    double sign = 1.0;
    if (allow_sign && (*s == '-' || *s == '+')) {
        sign = *s == '-' ? -1.0 : 1.0;
        s = skip_ws(s + 1);
    }
    size_t n = float_prefix(s);
    if (n && (s[0] == '-' || s[0] == '+'))
        return -1;  /* "- -1" */
    int overflow = 0;
    double mag = 1.0;
    if (n) {
        mag = c_strtod(s, n, &overflow);
        if (overflow)
            return -1;
        s += n;
    }
    *imag = 0;
    if (*s == 'j' || *s == 'J') {
        *imag = 1;
        s++;
    } else if (!n) {
        return -1;
    }
    *v = sign * mag;
    *ps = s;
    return 0;
}

int qd__parse_complex(const char *s, double *re, double *im)
{
    s = skip_ws(s);
    double a, b;
    int ia, ib;
    if (term(&s, 1, &a, &ia))
        return -1;
    s = skip_ws(s);
    if (!*s) {
        *re = ia ? 0.0 : a;
        *im = ia ? a : 0.0;
        return 0;
    }
    if (ia || (*s != '+' && *s != '-'))
        return -1;
    if (term(&s, 1, &b, &ib) || !ib)
        return -1;
    s = skip_ws(s);
    if (*s)
        return -1;
    *re = a;
    *im = b;
    return 0;
}
