/* Error records and status names. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "qdistill/common.h"
#include "qd_buildconf.h"

const char *qd_status_name(int code)
{
    static const char *const names[] = {
        "ok", "invalid", "io", "format", "nomem", "plugin",
        "numeric", "interrupted", "unsupported", "manifest", "internal",
    };
    if (code >= 0 && (size_t)code < sizeof names / sizeof names[0])
        return names[code];
    return "unknown";
}

int qd_error_set(qd_error *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

int qd_error_prefix(qd_error *err, const char *fmt, ...)
{
    if (!err)
        return QD_ERR_INTERNAL;
    char old[QD_ERROR_MSG_MAX];
    memcpy(old, err->msg, sizeof old);
    old[sizeof old - 1] = '\0';
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    size_t len = n < 0 ? 0 : (size_t)n;
    if (len + 2 < sizeof err->msg) {
        /* append ": " + old message, truncated to fit */
        err->msg[len++] = ':';
        err->msg[len++] = ' ';
        size_t room = sizeof err->msg - len - 1;
        size_t ol = strlen(old);
        if (ol > room)
            ol = room;
        memcpy(err->msg + len, old, ol);
        err->msg[len + ol] = '\0';
    }
    return err->code;
}

void qd_error_clear(qd_error *err)
{
    if (err) {
        err->code = QD_OK;
        err->msg[0] = '\0';
    }
}

const char *qd_version(void)
{
    return QD_VERSION;
}
