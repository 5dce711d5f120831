/* Process-wide logging. */
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "qdistill/log.h"

static int g_level = 2;
static FILE *g_file;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

void qd_log_set_level(int level) { g_level = level; }
int qd_log_get_level(void) { return g_level; }

void qd_log_set_file(FILE *f)
{
    pthread_mutex_lock(&g_lock);
    g_file = f;
    pthread_mutex_unlock(&g_lock);
}

void qd_logv(int level, const char *prefix, const char *fmt, va_list ap)
{
    static const char *const tags[] = {"error", "warning", "info", "debug"};
    const char *tag = tags[level < 0 ? 0 : level > 3 ? 3 : level];
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t len = strlen(msg);
    while (len && msg[len - 1] == '\n')
        msg[--len] = '\0';
    pthread_mutex_lock(&g_lock);
    if (level <= g_level) {
        if (level <= 1)
            fprintf(stderr, "%s: %s%s%s\n", tag, prefix ? prefix : "", prefix ? ": " : "", msg);
        else
            fprintf(stderr, "%s%s%s\n", prefix ? prefix : "", prefix ? ": " : "", msg);
    }
    if (g_file) {
        char ts[32];
        time_t t = time(NULL);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
        fprintf(g_file, "%s %-7s %s%s%s\n", ts, tag, prefix ? prefix : "", prefix ? ": " : "", msg);
        fflush(g_file);
    }
    pthread_mutex_unlock(&g_lock);
}

void qd_log(int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    qd_logv(level, NULL, fmt, ap);
    va_end(ap);
}
