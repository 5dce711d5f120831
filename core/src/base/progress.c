/* Progress of a long loop: a status line on a terminal, plain periodic
 * lines elsewhere (see progress.h). Output goes through log.c, which keeps
 * log lines and the status line from garbling each other. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qdistill/log.h"
#include "qdistill/progress.h"

struct qd_progress {
    char label[64], unit[16];
    uint64_t total, done;
    uint64_t base;            /* done when the rate started counting */
    double t0;                /* start of the rate */
    double last_line, last_draw;
    uint64_t next_mark;       /* plain: the done count that prints next */
    int any_line;             /* a plain line was printed */
    int stale;                /* changed since the last plain line */
    int tty;
    int show;                 /* the terminal gets progress (info level) */
    int ended;
    double loss;
    char eval_name[32];
    double eval;
    int has_eval;
    char note[160];
    qd_progress_opts o;
};

static double mono_now(void *user)
{
    (void)user;
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double now(const qd_progress *p)
{
    return p->o.clock(p->o.clock_user);
}

/* ---- formatting ---- */

char *qd_progress_fmt_duration(char *buf, size_t n, double s)
{
    if (!(s >= 0) || !isfinite(s)) {
        snprintf(buf, n, "--");
        return buf;
    }
    /* round to the unit shown, so 59.6 s reads "1m00s", not "59s" or "0m60s" */
    unsigned long long t = (unsigned long long)llround(s);
    if (t < 60)
        snprintf(buf, n, "%llus", t);
    else if (t < 3600)
        snprintf(buf, n, "%llum%02llus", t / 60, t % 60);
    else if ((t = (unsigned long long)llround(s / 60)) < 24 * 60)
        snprintf(buf, n, "%lluh%02llum", t / 60, t % 60);
    else if ((t = (unsigned long long)llround(s / 3600)) < 100 * 24)
        snprintf(buf, n, "%llud%02lluh", t / 24, t % 24);
    else
        snprintf(buf, n, ">99d");
    return buf;
}

char *qd_progress_fmt_rate(char *buf, size_t n, double per_s, const char *unit)
{
    unit = unit && *unit ? unit : "it";
    if (!(per_s > 0) || !isfinite(per_s)) {
        snprintf(buf, n, "-- %s/s", unit);
        return buf;
    }
    double v = per_s;
    const char *per = "s";
    if (v < 1) {
        v *= 60;
        per = "min";
        if (v < 1) {
            v *= 60;
            per = "h";
        }
    }
    /* three significant digits: enough to read, steady enough not to flicker */
    snprintf(buf, n, v >= 100 ? "%.0f %s/%s" : v >= 10 ? "%.1f %s/%s" : "%.2f %s/%s", v, unit,
             per);
    return buf;
}

char *qd_progress_fmt_bar(char *buf, size_t n, int width, double frac)
{
    if (n == 0)
        return buf;
    if (width < 2 || (size_t)width >= n) {
        buf[0] = '\0';
        return buf;
    }
    int inner = width - 2;
    if (!(frac > 0))
        frac = 0;
    if (frac > 1)
        frac = 1;
    int fill = (int)floor(frac * inner + 1e-9);
    buf[0] = '[';
    for (int i = 0; i < inner; ++i)
        buf[1 + i] = i < fill ? '#' : '.';
    buf[width - 1] = ']';
    buf[width] = '\0';
    return buf;
}

/* Append to buf at *len (bounded). */
static void add(char *buf, size_t n, size_t *len, const char *fmt, ...) QD_PRINTF(4, 5);
static void add(char *buf, size_t n, size_t *len, const char *fmt, ...)
{
    if (*len + 1 >= n)
        return;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(buf + *len, n - *len, fmt, ap);
    va_end(ap);
    if (k > 0)
        *len = *len + (size_t)k < n ? *len + (size_t)k : n - 1;
}

static double fraction(const qd_progress *p)
{
    return p->total ? (double)p->done / (double)p->total : 1.0;
}

static double rate(const qd_progress *p, double t)
{
    double dt = t - p->t0;
    return p->done > p->base && dt > 0 ? (double)(p->done - p->base) / dt : 0.0;
}

char *qd_progress_format(const qd_progress *p, int tty, char *buf, size_t n)
{
    if (!n)
        return buf;
    buf[0] = '\0';
    if (!p)
        return buf;
    double t = now(p), r = rate(p, t);
    int finished = p->done >= p->total;
    char rs[48], ds[32], es[32];
    qd_progress_fmt_rate(rs, sizeof rs, r, p->unit);
    qd_progress_fmt_duration(es, sizeof es, t - p->t0);
    qd_progress_fmt_duration(ds, sizeof ds,
                             r > 0 ? (double)(p->total - (finished ? p->total : p->done)) / r
                                   : NAN);
    int pct = (int)floor(100.0 * fraction(p) + 1e-9);
    /* the fields after the bar, in both forms */
    char tail[512];
    size_t tl = 0;
    /* the terminal form is terse: it must fit a line next to a bar */
    const char *sep = tty ? "  " : ", ", *sep1 = tty ? " " : ", ";
    add(tail, sizeof tail, &tl, "%s", rs);
    if (!finished)
        add(tail, sizeof tail, &tl, "%sETA %s", sep1, ds);
    else if (tty)
        add(tail, sizeof tail, &tl, "%sin %s", sep1, es);   /* the plain form starts with it */
    if (isfinite(p->loss))
        add(tail, sizeof tail, &tl, "%sloss %.4f", sep, p->loss);
    if (p->has_eval)
        add(tail, sizeof tail, &tl, "%s%s %.4f", sep, p->eval_name, p->eval);
    if (p->note[0])
        add(tail, sizeof tail, &tl, "%s%s", sep, p->note);
    if (p->ended && !finished)
        add(tail, sizeof tail, &tl, "%sstopped", sep);

    size_t len = 0;
    if (!tty) {
        add(buf, n, &len, "%s: %llu/%llu (%d%%) in %s, %s", p->label,
            (unsigned long long)p->done, (unsigned long long)p->total, pct, es, tail);
        return buf;
    }
    char counts[96];
    snprintf(counts, sizeof counts, "%llu/%llu %d%%", (unsigned long long)p->done,
             (unsigned long long)p->total, pct);
    int cols = p->o.columns > 0 ? p->o.columns : qd_log_columns();
    /* the last column stays free: writing into it wraps on some terminals,
     * and a wrapped status line can no longer be redrawn with \r */
    int room = cols - 1;
    int fixed = (int)(strlen(p->label) + 1 + strlen(counts) + 1 + strlen(tail));
    int bw = room - fixed - 1;   /* a space after the bar */
    if (bw > 32)
        bw = 32;
    char bar[40];
    if (bw >= 10)
        qd_progress_fmt_bar(bar, sizeof bar, bw, fraction(p));
    else
        bar[0] = '\0';   /* too narrow: the numbers matter more */
    add(buf, n, &len, "%s %s%s%s %s", p->label, bar, bar[0] ? " " : "", counts, tail);
    if (room > 0 && (size_t)room < n && len > (size_t)room)
        buf[room] = '\0';
    return buf;
}

/* ---- state ---- */

qd_progress *qd_progress_begin(const char *label, uint64_t total, uint64_t done,
                               const qd_progress_opts *opts)
{
    qd_progress *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    if (opts)
        p->o = *opts;
    if (!p->o.clock)
        p->o.clock = mono_now;
    if (!(p->o.line_every_s > 0))
        p->o.line_every_s = 10.0;
    if (!(p->o.line_every_frac > 0))
        p->o.line_every_frac = 0.1;
    if (!(p->o.redraw_every_s > 0))
        p->o.redraw_every_s = 0.1;
    /* QDISTILL_PROGRESS_REDRAW_S: another redraw period (0 = every update),
     * for slow terminals and for tests whose runs finish in milliseconds */
    const char *env = getenv("QDISTILL_PROGRESS_REDRAW_S");
    if (env && *env) {
        char *end;
        double v = strtod(env, &end);
        if (*end == '\0' && v >= 0 && v < 3600)
            p->o.redraw_every_s = v;
    }
    snprintf(p->label, sizeof p->label, "%s", label ? label : "progress");
    snprintf(p->unit, sizeof p->unit, "%s", p->o.unit && *p->o.unit ? p->o.unit : "it");
    p->o.unit = NULL;
    p->total = total;
    p->done = p->base = done < total ? done : total;
    p->loss = NAN;
    p->tty = p->o.mode == QD_PROGRESS_TTY ? 1 : p->o.mode == QD_PROGRESS_PLAIN ? 0
                                                                              : qd_log_is_tty();
    p->show = qd_log_get_level() >= QD_LOG_INFO;
    p->t0 = now(p);
    p->last_line = p->last_draw = p->t0;
    p->next_mark = p->done;   /* the first step of work prints */
    if (p->tty && p->show) {
        char line[1024];
        qd_log_status(qd_progress_format(p, 1, line, sizeof line));
    }
    return p;
}

void qd_progress_set_loss(qd_progress *p, double loss)
{
    if (p) {
        p->loss = loss;
        p->stale = 1;
    }
}

void qd_progress_set_eval(qd_progress *p, const char *name, double value)
{
    if (p) {
        snprintf(p->eval_name, sizeof p->eval_name, "%s", name ? name : "eval");
        p->eval = value;
        p->has_eval = isfinite(value);
        p->stale = 1;
    }
}

void qd_progress_set_note(qd_progress *p, const char *fmt, ...)
{
    if (!p)
        return;
    char note[sizeof p->note] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(note, sizeof note, fmt, ap);
        va_end(ap);
    }
    if (strcmp(note, p->note) != 0) {   /* the same note again is no news */
        memcpy(p->note, note, sizeof note);
        p->stale = 1;
    }
}

static void plain_line(qd_progress *p, double t, int where)
{
    char line[1024];
    qd_progress_format(p, 0, line, sizeof line);
    qd_log_to(where, QD_LOG_INFO, "%s", line);
    p->last_line = t;
    p->any_line = 1;
    p->stale = 0;
    uint64_t step = (uint64_t)ceil(p->o.line_every_frac * (double)p->total);
    if (step < 1)
        step = 1;
    p->next_mark = p->done >= p->total ? UINT64_MAX : (p->done / step + 1) * step;
}

/* Print what is due: the status line (terminal), plain lines (log file,
 * and the stream when it is not a terminal). */
static void emit(qd_progress *p, int progressed)
{
    double t = now(p);
    if (p->stale && ((progressed && (!p->any_line || p->done >= p->next_mark)) ||
                     t - p->last_line >= p->o.line_every_s))
        plain_line(p, t, p->tty ? QD_LOG_TO_FILE : QD_LOG_TO_STREAM | QD_LOG_TO_FILE);
    if (p->tty && p->show &&
        (t - p->last_draw >= p->o.redraw_every_s || p->done >= p->total)) {
        char line[1024];
        qd_log_status(qd_progress_format(p, 1, line, sizeof line));
        p->last_draw = t;
    }
}

void qd_progress_update(qd_progress *p, uint64_t done)
{
    if (!p)
        return;
    if (done > p->total)
        done = p->total;
    int progressed = done != p->done;
    if (progressed)
        p->stale = 1;
    p->done = done;
    emit(p, progressed);
}

void qd_progress_skip(qd_progress *p, uint64_t n)
{
    if (!p)
        return;
    if (n > p->total - p->done)
        n = p->total - p->done;
    p->done += n;
    p->base += n;
    if (n)
        p->stale = 1;
    emit(p, n > 0);
}

void qd_progress_tick(qd_progress *p)
{
    if (p)
        emit(p, 0);
}

void qd_progress_end(qd_progress *p)
{
    if (!p)
        return;
    p->ended = 1;
    if (p->tty && p->show)
        qd_log_status(NULL);
    /* a closing line: the terminal never saw a plain one; the file (and a
     * plain stream) only when something changed since the last */
    int where = (p->tty || p->stale ? QD_LOG_TO_STREAM : 0) | (p->stale || p->done < p->total
                                                                   ? QD_LOG_TO_FILE : 0);
    if (p->done < p->total && !p->tty)
        where |= QD_LOG_TO_STREAM;
    if (where)
        plain_line(p, now(p), where);
    free(p);
}
