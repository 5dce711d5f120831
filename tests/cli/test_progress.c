/* Progress display end to end: qdistill with stderr a pipe (plain periodic
 * lines, never a carriage return) and under a pseudo-terminal (one status
 * line redrawn in place), --quiet and --verbose, and the run's log.txt,
 * which keeps plain lines whatever stderr is. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pty.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli_util.h"

#define TINY "tests/cli/manifests/tiny-distill.yaml"

static size_t count(const char *s, const char *what)
{
    size_t n = 0;
    for (const char *p = s; (p = strstr(p, what)); p += strlen(what))
        ++n;
    return n;
}

static void append(char **buf, size_t *len, const char *data, size_t n)
{
    char *nb = realloc(*buf, *len + n + 1);
    cr_assert(nb);
    memcpy(nb + *len, data, n);
    *len += n;
    nb[*len] = '\0';
    *buf = nb;
}

/* Run qdistill ARGV (NULL-terminated, without the program) from the source
 * tree. pty: stdout and stderr are a pseudo-terminal of `cols` columns;
 * otherwise stderr is a pipe and stdout goes to /dev/null. Returns the exit
 * status; *text is what the terminal or the pipe received. */
static int run_captured(int pty, int cols, char **text, const char *const *args)
{
    const char *argv[64];
    char exe[600];
    snprintf(exe, sizeof exe, "%s/qdistill", builddir());
    size_t n = 0;
    argv[n++] = exe;
    for (size_t i = 0; args[i]; ++i)
        argv[n++] = args[i];
    argv[n] = NULL;
    int fd;
    pid_t pid;
    if (pty) {
        struct winsize ws = {.ws_row = 40, .ws_col = (unsigned short)cols};
        pid = forkpty(&fd, NULL, NULL, &ws);
    } else {
        int p[2];
        cr_assert_eq(pipe(p), 0);
        pid = fork();
        if (pid == 0) {
            dup2(p[1], 2);
            int nul = open("/dev/null", O_WRONLY);
            dup2(nul, 1);
            close(p[0]);
        }
        close(p[1]);
        fd = p[0];
    }
    cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        if (chdir(srcdir()) != 0)
            _exit(126);
        unsetenv("COLUMNS");   /* the pty's size is the truth */
        execv(exe, (char *const *)argv);
        _exit(127);
    }
    char *buf = NULL, chunk[4096];
    size_t len = 0;
    append(&buf, &len, "", 0);
    for (;;) {
        ssize_t r = read(fd, chunk, sizeof chunk);
        if (r > 0)
            append(&buf, &len, chunk, (size_t)r);
        else if (r < 0 && errno == EINTR)
            continue;
        else
            break;   /* EOF, or EIO once the pty's other side is closed */
    }
    close(fd);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    *text = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static char *run_log(const char *dir)
{
    char p[600];
    snprintf(p, sizeof p, "%s/log.txt", dir);
    return slurp(p);
}

Test(progress_cli, pipe_gets_plain_periodic_lines)
{
    make_tmp();
    char out[400];
    snprintf(out, sizeof out, "%s/run", g_tmp);
    const char *args[] = {"run", TINY, "distill.iterations=100", "--out", out, NULL};
    char *text;
    int rc = run_captured(0, 0, &text, args);
    cr_assert_eq(rc, 0, "%s", text);
    cr_expect(!strchr(text, '\r') && !strchr(text, '\033'), "a pipe got terminal codes: %s",
              text);
    /* one line per 10% (or per 10 s): at least the tenths, and bounded */
    size_t lines = count(text, "\ndistill: ");
    cr_expect(lines >= 10 && lines <= 13, "%zu distill lines: %s", lines, text);
    for (int pct = 10; pct <= 100; pct += 10) {
        char want[64];
        snprintf(want, sizeof want, "\ndistill: %d/100 (%d%%) in ", pct, pct);
        cr_expect(strstr(text, want), "missing '%s': %s", want + 1, text);
    }
    cr_expect(strstr(text, "it/s, ETA "), "%s", text);
    cr_expect(strstr(text, ", loss "), "%s", text);
    cr_expect(strstr(text, ", val acc "), "%s", text);
    cr_expect(strstr(text, "\nevaluate: 6/6 (100%)"), "%s", text);
    /* the plain lines also land in log.txt */
    char *log = run_log(out);
    cr_expect(strstr(log, "info    distill: 100/100 (100%)"), "%s", log);
    cr_expect(!strchr(log, '\r') && !strchr(log, '\033'), "%s", log);
    free(log);
    free(text);
    rm_tmp();
}

Test(progress_cli, terminal_gets_one_status_line_redrawn)
{
    make_tmp();
    char out[400];
    snprintf(out, sizeof out, "%s/run", g_tmp);
    const char *args[] = {"run", TINY, "distill.iterations=200", "--out", out, NULL};
    char *text;
    /* the tiny run takes milliseconds: redraw on every update, not 10/s */
    setenv("QDISTILL_PROGRESS_REDRAW_S", "0", 1);
    int rc = run_captured(1, 120, &text, args);
    unsetenv("QDISTILL_PROGRESS_REDRAW_S");
    cr_assert_eq(rc, 0, "%s", text);
    /* redraws in place: carriage return + clear to end of line, a bar */
    size_t redraws = count(text, "\r\033[Kdistill [");
    cr_expect_geq(redraws, 3, "%zu status redraws: %s", redraws, text);
    cr_expect(strstr(text, "\r\033[Kevaluate ["), "%s", text);
    cr_expect(strstr(text, "/200 "), "%s", text);
    cr_expect(strstr(text, " it/s "), "%s", text);
    /* log lines are printed above the status line, which comes back */
    cr_expect(strstr(text, "\r\033[Kkeeping the best set"), "%s", text);
    /* the end: the status line cleared and one plain closing line */
    cr_expect(strstr(text, "\r\033[Kdistill: 200/200 (100%)"), "%s", text);
    /* no status line is wider than the terminal */
    for (const char *p = text; (p = strstr(p, "\r\033[K")); p += 4) {
        size_t w = strcspn(p + 4, "\r\n");
        cr_expect_leq(w, 119u, "a %zu-column status line: %.*s", w, (int)w, p + 4);
    }
    /* log.txt keeps plain lines */
    char *log = run_log(out);
    cr_expect(strstr(log, "info    distill: 20/200 (10%)"), "%s", log);
    cr_expect(!strchr(log, '\r') && !strchr(log, '\033') && !strstr(log, "[#"), "%s", log);
    free(log);
    free(text);
    rm_tmp();
}

Test(progress_cli, quiet_shows_no_progress)
{
    make_tmp();
    char out[400];
    snprintf(out, sizeof out, "%s/run", g_tmp);
    for (int pty = 0; pty <= 1; ++pty) {
        char dir[500];
        snprintf(dir, sizeof dir, "%s%d", out, pty);
        const char *args[] = {"--quiet", "run", TINY, "distill.iterations=50", "--out", dir, NULL};
        char *text;
        int rc = run_captured(pty, 120, &text, args);
        cr_assert_eq(rc, 0, "%s", text);
        if (pty) {
            /* only the result (the run directory on stdout) */
            char want[600];
            snprintf(want, sizeof want, "%s\r\n", dir);
            cr_expect_str_eq(text, want);
        } else {
            cr_expect_str_eq(text, "", "stderr of a quiet run");
        }
        free(text);
        /* the log file still has the whole story */
        char *log = run_log(dir);
        cr_expect(strstr(log, "distill: 50/50 (100%)"), "%s", log);
        free(log);
    }
    rm_tmp();
}

Test(progress_cli, verbose_adds_debug_lines)
{
    make_tmp();
    char out[400];
    snprintf(out, sizeof out, "%s/run", g_tmp);
    const char *args[] = {"--verbose", "run", TINY, "distill.iterations=30", "--out", out, NULL};
    char *text;
    int rc = run_captured(0, 0, &text, args);
    cr_assert_eq(rc, 0, "%s", text);
    /* the per-iteration details (learning rates) behind the progress line */
    cr_expect(strstr(text, "\niteration 1/30  loss "), "%s", text);
    cr_expect(strstr(text, "\ndistill: 30/30 (100%)"), "%s", text);
    free(text);
    rm_tmp();
}

Test(progress_cli, train_and_sweep_report_progress)
{
    make_tmp();
    char out[400];
    snprintf(out, sizeof out, "%s/train", g_tmp);
    const char *targs[] = {"train", TINY, "train={epochs: 2, lr: 0.1, batch_size: 50}", "--out",
                           out, NULL};
    char *text;
    int rc = run_captured(0, 0, &text, targs);
    cr_assert_eq(rc, 0, "%s", text);
    /* 300 training images in batches of 50: 6 batches an epoch */
    cr_expect(strstr(text, "\ntrain: 12/12 (100%)"), "%s", text);
    cr_expect(strstr(text, "batch/s"), "%s", text);
    cr_expect(strstr(text, "test acc "), "%s", text);
    free(text);

    snprintf(out, sizeof out, "%s/sweep", g_tmp);
    const char *sargs[] = {"sweep", TINY, "seed=1,2,3", "distill.iterations=10", "-j", "2",
                           "--out", out, NULL};
    rc = run_captured(0, 0, &text, sargs);
    cr_assert_eq(rc, 0, "%s", text);
    cr_expect(strstr(text, "\nsweep: 3/3 (100%) in "), "%s", text);
    cr_expect(strstr(text, " job/"), "%s", text);
    cr_expect(strstr(text, "running"), "%s", text);
    free(text);
    /* a re-run skips everything: done, but no rate to speak of */
    rc = run_captured(0, 0, &text, sargs);
    cr_assert_eq(rc, 0, "%s", text);
    cr_expect(strstr(text, "\nsweep: 3/3 (100%) in 0s, -- job/s"), "%s", text);
    free(text);
    rm_tmp();
}
