/* Progress display: the duration, rate and bar formats against hand-worked
 * values, and the whole output (status line on a terminal, periodic plain
 * lines elsewhere, the log file, --quiet) under a fake clock into memory
 * streams. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdistill/log.h"
#include "qdistill/progress.h"

static double g_now;
static double fake_clock(void *user)
{
    (void)user;
    return g_now;
}

static char *g_buf, *g_fbuf;
static size_t g_len, g_flen;
static FILE *g_out, *g_file;

static void streams(int tty)
{
    g_now = 100.0;
    g_out = open_memstream(&g_buf, &g_len);
    g_file = open_memstream(&g_fbuf, &g_flen);
    cr_assert(g_out && g_file);
    qd_log_set_stream(g_out, tty);
    qd_log_set_file(g_file);
    qd_log_set_level(QD_LOG_INFO);
}

static void close_streams(void)
{
    qd_log_set_stream(NULL, -1);
    qd_log_set_file(NULL);
    fclose(g_out);
    fclose(g_file);
    free(g_buf);
    free(g_fbuf);
    qd_log_set_level(QD_LOG_INFO);
}

static const char *out_text(void)
{
    fflush(g_out);
    return g_buf;
}

static const char *file_text(void)
{
    fflush(g_file);
    return g_fbuf;
}

static size_t count(const char *s, const char *what)
{
    size_t n = 0;
    for (const char *p = s; (p = strstr(p, what)); p += strlen(what))
        ++n;
    return n;
}

Test(progress, durations)
{
    char b[32];
    cr_expect_str_eq(qd_progress_fmt_duration(b, sizeof b, 0), "0s");
    cr_expect_str_eq(qd_progress_fmt_duration(b, sizeof b, 42.4), "42s");
    /* rounding to the unit shown: never "60s" or "0m60s" */
    cr_expect_str_eq(qd_progress_fmt_duration(b, sizeof b, 59.6), "1m00s");
    cr_expect_str_eq(qd_progress_fmt_duration(b, sizeof b, 185), "3m05s");
    cr_expect_str_eq(qd_progress_fmt_duration(b, sizeof b, 3599.6), "1h00m");
    cr_expect_str_eq(qd_progress_fmt_duration(b, sizeof b, 3720), "1h02m");
    cr_expect_str_eq(qd_progress_fmt_duration(b, sizeof b, 25 * 3600 + 100), "1d01h");
    cr_expect_str_eq(qd_progress_fmt_duration(b, sizeof b, 1e9), ">99d");
    cr_expect_str_eq(qd_progress_fmt_duration(b, sizeof b, -1), "--");
    cr_expect_str_eq(qd_progress_fmt_duration(b, sizeof b, NAN), "--");
    cr_expect_str_eq(qd_progress_fmt_duration(b, sizeof b, INFINITY), "--");
}

Test(progress, rates)
{
    char b[48];
    cr_expect_str_eq(qd_progress_fmt_rate(b, sizeof b, 4.2, "it"), "4.20 it/s");
    cr_expect_str_eq(qd_progress_fmt_rate(b, sizeof b, 12.34, "it"), "12.3 it/s");
    cr_expect_str_eq(qd_progress_fmt_rate(b, sizeof b, 1234.5, "batch"), "1234 batch/s");
    /* slower than one a second: per minute, then per hour */
    cr_expect_str_eq(qd_progress_fmt_rate(b, sizeof b, 0.05, "job"), "3.00 job/min");
    cr_expect_str_eq(qd_progress_fmt_rate(b, sizeof b, 1.0 / 7200, "job"), "0.50 job/h");
    cr_expect_str_eq(qd_progress_fmt_rate(b, sizeof b, 0, "model"), "-- model/s");
    cr_expect_str_eq(qd_progress_fmt_rate(b, sizeof b, NAN, NULL), "-- it/s");
}

Test(progress, bars)
{
    char b[64];
    cr_expect_str_eq(qd_progress_fmt_bar(b, sizeof b, 12, 0.5), "[#####.....]");
    cr_expect_str_eq(qd_progress_fmt_bar(b, sizeof b, 12, 0), "[..........]");
    cr_expect_str_eq(qd_progress_fmt_bar(b, sizeof b, 12, 1), "[##########]");
    cr_expect_str_eq(qd_progress_fmt_bar(b, sizeof b, 12, 0.999), "[#########.]");
    cr_expect_str_eq(qd_progress_fmt_bar(b, sizeof b, 12, 1.7), "[##########]");
    cr_expect_str_eq(qd_progress_fmt_bar(b, sizeof b, 4, 0.5), "[#.]");
    cr_expect_str_eq(qd_progress_fmt_bar(b, 8, 12, 0.5), "", "a bar wider than the buffer");
}

/* 250 of 1000 iterations in 50 s: 5 it/s, 750 left = 150 s */
Test(progress, terminal_line_fields_and_bar_width)
{
    streams(1);
    qd_progress_opts o = {.columns = 100, .mode = QD_PROGRESS_TTY, .clock = fake_clock};
    qd_progress *p = qd_progress_begin("distill", 1000, 0, &o);
    cr_assert(p);
    g_now += 50;
    qd_progress_set_loss(p, 0.123456);
    qd_progress_set_eval(p, "val acc", 0.83);
    qd_progress_update(p, 250);
    char line[1024];
    qd_progress_format(p, 1, line, sizeof line);
    const char *tail = "250/1000 25% 5.00 it/s ETA 2m30s  loss 0.1235  val acc 0.8300";
    cr_assert(strstr(line, tail), "%s", line);
    /* the bar takes what the fields leave of 99 columns, capped at 32 */
    int bw = 99 - (int)strlen("distill ") - 1 - (int)strlen(tail);
    bw = bw > 32 ? 32 : bw;
    char want[1024], bar[64];
    snprintf(want, sizeof want, "distill %s %s", qd_progress_fmt_bar(bar, sizeof bar, bw, 0.25),
             tail);
    cr_expect_str_eq(line, want);
    cr_expect_leq(strlen(line), 99u);

    /* narrower: the bar shrinks; too narrow: no bar, cut to the width */
    o.columns = 84;
    qd_progress *q = qd_progress_begin("distill", 1000, 0, &o);
    g_now += 50;
    qd_progress_set_loss(q, 0.123456);
    qd_progress_set_eval(q, "val acc", 0.83);
    qd_progress_update(q, 250);
    qd_progress_format(q, 1, line, sizeof line);
    /* 83 - 8 - 1 - 61 = 13 columns of bar: 11 inside, floor(0.25 * 11) = 2 filled */
    snprintf(want, sizeof want, "distill [##.........] %s", tail);
    cr_expect_str_eq(line, want);
    qd_progress_end(q);
    o.columns = 40;
    q = qd_progress_begin("distill", 1000, 0, &o);
    g_now += 50;
    qd_progress_update(q, 250);
    qd_progress_format(q, 1, line, sizeof line);
    cr_expect(!strchr(line, '['), "no room for a bar: %s", line);
    cr_expect_eq(strlen(line), 39u, "%s", line);
    cr_expect(strncmp(line, "distill 250/1000 25% 5.00 it/s ETA 2m30s", 39) == 0, "%s", line);
    qd_progress_end(q);
    qd_progress_end(p);
    close_streams();
}

Test(progress, terminal_stream_redraws_around_log_lines)
{
    streams(1);
    qd_progress_opts o = {.columns = 100, .mode = QD_PROGRESS_TTY, .clock = fake_clock,
                          .unit = "model"};
    qd_progress *p = qd_progress_begin("evaluate", 4, 0, &o);
    const char *s = out_text();
    cr_expect(strncmp(s, "\r\033[Kevaluate [", 13) == 0, "drawn at once: %s", s);
    g_now += 30;
    qd_progress_update(p, 1);
    char status[1024];
    qd_progress_format(p, 1, status, sizeof status);
    cr_expect(strstr(status, "1/4 25% 2.00 model/min ETA 1m30s"), "%s", status);
    size_t before = strlen(out_text());
    qd_log(QD_LOG_INFO, "a log line");
    /* clear the bar, the line, the bar again */
    char want[1200];
    snprintf(want, sizeof want, "\r\033[Ka log line\n%s", status);
    cr_expect_str_eq(out_text() + before, want);
    /* redraws are limited to one per redraw_every_s (0.1 s) */
    before = strlen(out_text());
    qd_progress_set_note(p, "x");
    qd_progress_tick(p);
    cr_expect_eq(strlen(out_text()), before, "no redraw within 0.1 s");
    g_now += 0.2;
    qd_progress_tick(p);
    cr_expect_gt(strlen(out_text()), before, "a redraw after 0.1 s");
    before = strlen(out_text());
    g_now += 90;
    qd_progress_update(p, 4);
    qd_progress_end(p);
    s = out_text() + before;
    /* finished: cleared, then one plain closing line */
    const char *close = "\r\033[Kevaluate: 4/4 (100%) in 2m00s, 2.00 model/min, x\n";
    cr_expect(strlen(s) >= strlen(close) && strcmp(s + strlen(s) - strlen(close), close) == 0,
              "%s", s);
    /* the log file never sees the status line */
    const char *f = file_text();
    cr_expect(!strchr(f, '\r') && !strchr(f, '[') && !strchr(f, '\033'), "%s", f);
    cr_expect(strstr(f, "info    evaluate: 1/4 (25%) in 30s, 2.00 model/min, ETA 1m30s\n"), "%s",
              f);
    cr_expect(strstr(f, "info    a log line\n"), "%s", f);
    cr_expect(strstr(f, "evaluate: 4/4 (100%) in 2m00s"), "%s", f);
    close_streams();
}

/* Plain output: one line per `line_every_frac` of the work ... */
Test(progress, plain_lines_at_each_fraction)
{
    streams(0);
    qd_progress_opts o = {.line_every_s = 1e6, .line_every_frac = 0.25, .clock = fake_clock,
                          .mode = QD_PROGRESS_PLAIN};
    qd_progress *p = qd_progress_begin("distill", 100, 0, &o);
    for (int i = 1; i <= 100; ++i) {
        g_now += 1;
        qd_progress_set_loss(p, 1.0 / i);
        qd_progress_update(p, (uint64_t)i);
    }
    qd_progress_end(p);
    const char *s = out_text();
    cr_expect(!strchr(s, '\r'), "%s", s);
    cr_expect_eq(count(s, "\n"), 5, "%s", s);
    cr_expect(strstr(s, "distill: 1/100 (1%) in 1s, 1.00 it/s, ETA 1m39s, loss 1.0000\n"), "%s",
              s);
    cr_expect(strstr(s, "distill: 25/100 (25%) in 25s, 1.00 it/s, ETA 1m15s, loss 0.0400\n"),
              "%s", s);
    cr_expect(strstr(s, "distill: 50/100 (50%)"), "%s", s);
    cr_expect(strstr(s, "distill: 75/100 (75%)"), "%s", s);
    cr_expect(strstr(s, "distill: 100/100 (100%) in 1m40s, 1.00 it/s, loss 0.0100\n"), "%s", s);
    /* the same lines in the log file */
    cr_expect_eq(count(file_text(), "\n"), 5, "%s", file_text());
    close_streams();
}

/* ... or every `line_every_s` seconds, whichever comes first */
Test(progress, plain_lines_every_n_seconds)
{
    streams(0);
    qd_progress_opts o = {.line_every_s = 10, .line_every_frac = 1, .clock = fake_clock,
                          .mode = QD_PROGRESS_PLAIN};
    qd_progress *p = qd_progress_begin("train", 100, 0, &o);
    for (int i = 1; i <= 100; ++i) {
        g_now += 1;
        qd_progress_update(p, (uint64_t)i);
    }
    qd_progress_end(p);
    const char *s = out_text();
    /* the first step, then after 10 s each: 11, 21, ..., 91, then the end */
    cr_expect_eq(count(s, "\n"), 11, "%s", s);
    cr_expect(strstr(s, "train: 11/100 (11%) in 11s"), "%s", s);
    cr_expect(strstr(s, "train: 91/100 (91%) in 1m31s"), "%s", s);
    cr_expect(!strstr(s, "train: 12/100"), "%s", s);
    cr_expect(!strchr(s, '\r') && !strchr(s, '\033'), "%s", s);
    close_streams();
}

/* A loop stopped early says so; a resumed one counts its rate from the
 * resume; skipped work does not make it look fast. */
Test(progress, stopped_resumed_and_skipped)
{
    streams(0);
    qd_progress_opts o = {.clock = fake_clock, .mode = QD_PROGRESS_PLAIN, .unit = "job"};
    qd_progress *p = qd_progress_begin("sweep", 10, 4, &o);
    g_now += 120;
    qd_progress_update(p, 5);
    qd_progress_skip(p, 2);
    g_now += 120;
    qd_progress_update(p, 8);
    char line[512];
    qd_progress_format(p, 0, line, sizeof line);
    /* 2 jobs worked on in 240 s: 0.5 job/min = 30 job/h, 2 left: 4 min */
    cr_expect_str_eq(line, "sweep: 8/10 (80%) in 4m00s, 30.0 job/h, ETA 4m00s");
    qd_progress_set_note(p, "1 running, %d failed", 1);
    qd_progress_end(p);
    const char *s = out_text();
    cr_expect(strstr(s, "sweep: 8/10 (80%) in 4m00s, 30.0 job/h, ETA 4m00s, 1 running, "
                        "1 failed, stopped\n"),
              "%s", s);
    close_streams();
}

/* --quiet: nothing on the terminal, the log file still gets plain lines;
 * --verbose: debug lines show */
Test(progress, quiet_and_verbose)
{
    streams(1);
    qd_log_set_level(QD_LOG_WARN);
    qd_progress_opts o = {.clock = fake_clock, .mode = QD_PROGRESS_TTY, .columns = 100};
    qd_progress *p = qd_progress_begin("distill", 10, 0, &o);
    for (int i = 1; i <= 10; ++i) {
        g_now += 1;
        qd_progress_update(p, (uint64_t)i);
    }
    qd_log(QD_LOG_INFO, "an info line");
    qd_log(QD_LOG_WARN, "a warning");
    qd_progress_end(p);
    cr_expect_str_eq(out_text(), "warning: a warning\n");
    cr_expect(strstr(file_text(), "distill: 10/10 (100%)"), "%s", file_text());
    cr_expect(strstr(file_text(), "an info line"), "%s", file_text());
    close_streams();

    streams(0);
    qd_log_set_level(QD_LOG_DEBUG);
    qd_log(QD_LOG_DEBUG, "a debug line");
    cr_expect_str_eq(out_text(), "a debug line\n");
    close_streams();
}

Test(progress, null_is_harmless)
{
    qd_progress_update(NULL, 1);
    qd_progress_set_loss(NULL, 1);
    qd_progress_set_eval(NULL, "x", 1);
    qd_progress_set_note(NULL, "x");
    qd_progress_skip(NULL, 1);
    qd_progress_tick(NULL);
    qd_progress_end(NULL);
    char b[8] = "x";
    cr_expect_str_eq(qd_progress_format(NULL, 1, b, sizeof b), "");
}
