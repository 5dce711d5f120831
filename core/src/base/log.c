/* Process-wide logging: a human stream (stderr) that may carry a status
 * line at the bottom, and the run's log file. One lock orders all output,
 * so lines from OpenMP threads and the progress line never interleave. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "qdistill/log.h"

static int g_level = 2;
static FILE *g_file;
static FILE *g_stream;          /* NULL: stderr */
static int g_tty = -1;          /* -1: not asked yet */
static char g_status[1024];
static int g_status_shown;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

/* "\r" + clear to end of line: wipes the status line in place */
#define CLEAR_LINE "\r\033[K"

void qd_log_set_level(int level) { g_level = level; }
int qd_log_get_level(void) { return g_level; }

void qd_log_set_file(FILE *f)
{
    pthread_mutex_lock(&g_lock);
    g_file = f;
    pthread_mutex_unlock(&g_lock);
}

static FILE *stream(void)
{
    return g_stream ? g_stream : stderr;
}

/* under g_lock */
static int is_tty(void)
{
    if (g_tty < 0) {
        int fd = fileno(stream());
        g_tty = fd >= 0 && isatty(fd);
    }
    return g_tty;
}

void qd_log_set_stream(FILE *f, int tty)
{
    pthread_mutex_lock(&g_lock);
    g_stream = f;
    g_tty = tty < 0 ? -1 : tty != 0;
    g_status[0] = '\0';
    g_status_shown = 0;
    pthread_mutex_unlock(&g_lock);
}

int qd_log_is_tty(void)
{
    pthread_mutex_lock(&g_lock);
    int t = is_tty();
    pthread_mutex_unlock(&g_lock);
    return t;
}

int qd_log_columns(void)
{
    pthread_mutex_lock(&g_lock);
    int fd = fileno(stream()), cols = 0;
    pthread_mutex_unlock(&g_lock);
    struct winsize ws;
    if (fd >= 0 && ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        cols = ws.ws_col;
    if (cols <= 0) {
        const char *e = getenv("COLUMNS");
        cols = e ? atoi(e) : 0;
    }
    return cols > 0 ? cols : 80;
}

/* Write a finished line to the stream (under g_lock), around the status
 * line: clear it, print, redraw it. One fwrite so the terminal sees it at
 * once. */
static void stream_line(const char *line)
{
    FILE *f = stream();
    if (is_tty() && g_status_shown) {
        char buf[4096];
        int n = snprintf(buf, sizeof buf, CLEAR_LINE "%s\n%s", line, g_status);
        fwrite(buf, 1, n < 0 ? 0 : (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1, f);
    } else {
        fputs(line, f);
        fputc('\n', f);
    }
    fflush(f);
}

static void file_line(const char *tag, const char *line)
{
    char ts[32];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    fprintf(g_file, "%s %-7s %s\n", ts, tag, line);
    fflush(g_file);
}

static void emit(int where, int level, const char *prefix, const char *fmt, va_list ap)
{
    static const char *const tags[] = {"error", "warning", "info", "debug"};
    const char *tag = tags[level < 0 ? 0 : level > 3 ? 3 : level];
    char msg[2048], line[2200];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t len = strlen(msg);
    while (len && msg[len - 1] == '\n')
        msg[--len] = '\0';
    snprintf(line, sizeof line, "%s%s%s", prefix ? prefix : "", prefix ? ": " : "", msg);
    pthread_mutex_lock(&g_lock);
    if ((where & QD_LOG_TO_STREAM) && level <= g_level) {
        if (level <= 1) {
            char tagged[2300];
            snprintf(tagged, sizeof tagged, "%s: %s", tag, line);
            stream_line(tagged);
        } else {
            stream_line(line);
        }
    }
    if ((where & QD_LOG_TO_FILE) && g_file)
        file_line(tag, line);
    pthread_mutex_unlock(&g_lock);
}

void qd_logv(int level, const char *prefix, const char *fmt, va_list ap)
{
    emit(QD_LOG_TO_STREAM | QD_LOG_TO_FILE, level, prefix, fmt, ap);
}

void qd_log(int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emit(QD_LOG_TO_STREAM | QD_LOG_TO_FILE, level, NULL, fmt, ap);
    va_end(ap);
}

void qd_log_to(int where, int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emit(where, level, NULL, fmt, ap);
    va_end(ap);
}

void qd_log_status(const char *line)
{
    pthread_mutex_lock(&g_lock);
    if (is_tty()) {
        FILE *f = stream();
        if (line) {
            /* a status line never contains a newline: it would scroll and
             * the next \r could not reach the part above */
            size_t n = strcspn(line, "\n");
            if (n >= sizeof g_status)
                n = sizeof g_status - 1;
            memcpy(g_status, line, n);
            g_status[n] = '\0';
            fputs(CLEAR_LINE, f);
            fputs(g_status, f);
            g_status_shown = 1;
        } else if (g_status_shown) {
            fputs(CLEAR_LINE, f);
            g_status[0] = '\0';
            g_status_shown = 0;
        }
        fflush(f);
    }
    pthread_mutex_unlock(&g_lock);
}
