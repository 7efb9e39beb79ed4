/*
 * limits: what this machine's kernel and hardware allow for the shape of
 * each benchmark workload (W1..W10), measured with plain C processes, so
 * that billiard-host's figures can be read as a fraction of a floor rather
 * than against a guess.
 *
 * The bench (`bench/src/external.rs`) compiles this with `cc -O2` and runs
 * it; it prints one JSON line per figure:
 *   {"impl": "c-limit", "workload": "W3", "metric": "...", "value": median,
 *    "unit": "...", "n": per-run count, "min", "max", "runs", "samples",
 *    "note": "..."}
 *
 *   limits [--runs N] [--scale F] [--only W1,W3,...]
 *
 * --scale multiplies every iteration count (at least a small minimum), so
 * `--scale 0.01` is a plumbing check of a second or two, not a measurement.
 *
 * Every figure is a floor: the least work the workload's shape needs (a
 * fork, a round trip through a socket, a copy of the payload), with no
 * serialization, no bookkeeping and no scheduling policy. W3's round trip
 * is measured three ways, because the floor depends on where the two
 * processes run: both pinned to one CPU, pinned to two different CPUs,
 * and unpinned. A pool's caller and worker are separate processes the
 * scheduler spreads over the CPUs, so the cross-CPU figure is W3's floor.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define MIB (1024 * 1024)
#define MAX_RUNS 64

static int g_runs = 3;
static double g_scale = 1.0;
static const char *g_only = NULL;
static pid_t g_main_pid;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static long scaled(long n, long min) {
    double v = (double)n * g_scale;
    long r = (long)v;
    return r < min ? min : r;
}

static void die(const char *what) {
    fprintf(stderr, "limits: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int selected(const char *w) {
    if (!g_only) return 1;
    const char *p = g_only;
    size_t n = strlen(w);
    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && strncasecmp(p, w, n) == 0) return 1;
        if (!end) break;
        p = end + 1;
    }
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of a sorted array (the bench's rule). */
static double pctl(const double *sorted, long n, double q) {
    long k = (long)(q / 100.0 * (double)n + 0.5) - 1;
    if (k < 0) k = 0;
    if (k >= n) k = n - 1;
    return sorted[k];
}

/* One JSON line: value = median of the per-run samples (NAN = none). */
static void emit(const char *w, const char *metric, const char *unit, long n,
                 const double *samples, int runs, const char *note) {
    double s[MAX_RUNS];
    int k = 0;
    for (int i = 0; i < runs; i++)
        if (samples[i] == samples[i]) s[k++] = samples[i];
    qsort(s, (size_t)k, sizeof(double), cmp_double);
    printf("{\"impl\": \"c-limit\", \"workload\": \"%s\", \"metric\": \"%s\", ", w, metric);
    if (k == 0)
        printf("\"value\": null, \"min\": null, \"max\": null, ");
    else {
        double med = k % 2 ? s[k / 2] : (s[k / 2 - 1] + s[k / 2]) / 2.0;
        printf("\"value\": %.9g, \"min\": %.9g, \"max\": %.9g, ", med, s[0], s[k - 1]);
    }
    printf("\"unit\": \"%s\", \"n\": %ld, \"runs\": %d, \"samples\": [", unit, n, runs);
    for (int i = 0; i < runs; i++) {
        if (i) printf(", ");
        if (samples[i] == samples[i])
            printf("%.9g", samples[i]);
        else
            printf("null");
    }
    printf("], \"note\": \"%s\"}\n", note);
    fflush(stdout);
}

static void read_full(int fd, void *buf, size_t len) {
    char *p = buf;
    while (len > 0) {
        ssize_t r = read(fd, p, len);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            if (r < 0) die("read");
            /* The peer closed: a worker's cue to leave; the parent's error. */
            if (getpid() != g_main_pid) _exit(0);
            fprintf(stderr, "limits: a child closed its end early\n");
            exit(1);
        }
        p += r;
        len -= (size_t)r;
    }
}

static void write_full(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t r = write(fd, p, len);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) die("write");
        p += r;
        len -= (size_t)r;
    }
}

static void wait_child(pid_t pid) {
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) die("waitpid");
}

/* ---- CPU placement ---------------------------------------------------- */

static cpu_set_t g_all_cpus;
static int g_cpu_a = -1, g_cpu_b = -1;

static void pin(int cpu) {
    if (cpu < 0) {
        sched_setaffinity(0, sizeof g_all_cpus, &g_all_cpus);
        return;
    }
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) die("sched_setaffinity");
}

/* A worker that answers each 16-byte message {x, 0} with {x, x*x}. */
static void square_worker(int fd, int cpu) {
    pin(cpu);
    uint64_t m[2];
    for (;;) {
        read_full(fd, m, sizeof m);
        m[1] = m[0] * m[0];
        write_full(fd, m, sizeof m);
    }
}

static pid_t spawn_square_worker(int *parent_fd, int cpu) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) die("socketpair");
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        close(sv[0]);
        square_worker(sv[1], cpu);
    }
    close(sv[1]);
    *parent_fd = sv[0];
    return pid;
}

/* ---- W3: one 16-byte round trip at a time ----------------------------- */

static void pingpong(const char *name, int cpu_parent, int cpu_child, const char *note) {
    long iters = scaled(20000, 200);
    double p50[MAX_RUNS], p99[MAX_RUNS], rate[MAX_RUNS];
    double *lat = malloc((size_t)iters * sizeof(double));
    if (!lat) die("malloc");
    for (int r = 0; r < g_runs; r++) {
        int fd;
        pid_t pid = spawn_square_worker(&fd, cpu_child);
        pin(cpu_parent);
        uint64_t m[2] = {3, 0};
        for (int i = 0; i < 100; i++) {
            write_full(fd, m, sizeof m);
            read_full(fd, m, sizeof m);
        }
        double t0 = now_s();
        for (long i = 0; i < iters; i++) {
            double a = now_s();
            m[0] = (uint64_t)i;
            write_full(fd, m, sizeof m);
            read_full(fd, m, sizeof m);
            if (m[1] != (uint64_t)i * (uint64_t)i) {
                fprintf(stderr, "limits: wrong answer\n");
                exit(1);
            }
            lat[i] = (now_s() - a) * 1e6;
        }
        double wall = now_s() - t0;
        pin(-1);
        close(fd);
        wait_child(pid);
        qsort(lat, (size_t)iters, sizeof(double), cmp_double);
        p50[r] = pctl(lat, iters, 50);
        p99[r] = pctl(lat, iters, 99);
        rate[r] = (double)iters / wall;
    }
    free(lat);
    char m[128];
    snprintf(m, sizeof m, "pingpong16_socketpair_%s_p50", name);
    emit("W3", m, "us", iters, p50, g_runs, note);
    snprintf(m, sizeof m, "pingpong16_socketpair_%s_p99", name);
    emit("W3", m, "us", iters, p99, g_runs, note);
    snprintf(m, sizeof m, "pingpong16_socketpair_%s_rate", name);
    emit("W3", m, "round trips/s", iters, rate, g_runs, note);
}

static void w3(void) {
    pingpong("same_cpu", g_cpu_a, g_cpu_a, "both processes pinned to one CPU");
    if (g_cpu_b >= 0)
        pingpong("cross_cpu", g_cpu_a, g_cpu_b,
                 "the two processes pinned to two different CPUs: the floor of a pool's round trip");
    pingpong("unpinned", -1, -1, "placement left to the scheduler (moves between the two figures above)");
}

/* ---- W1 / W2: tiny tasks over 2 workers ------------------------------- */

/* `depth` messages of `batch` 16-byte items in flight per worker; returns
 * items per second. */
static double tiny_tasks(long items, int depth, int batch) {
    int fd[2];
    pid_t pid[2];
    size_t len = (size_t)batch * 16;
    uint64_t *buf = malloc(len);
    if (!buf) die("malloc");
    /* The batched worker answers a whole batch with one write. */
    for (int w = 0; w < 2; w++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) die("socketpair");
        pid[w] = fork();
        if (pid[w] < 0) die("fork");
        if (pid[w] == 0) {
            close(sv[0]);
            for (;;) {
                read_full(sv[1], buf, len);
                for (int i = 0; i < batch; i++) buf[2 * i + 1] = buf[2 * i] * buf[2 * i];
                write_full(sv[1], buf, len);
            }
        }
        close(sv[1]);
        fd[w] = sv[0];
    }
    long msgs = items / batch, sent = 0, done = 0;
    uint64_t sum = 0;
    double t0 = now_s();
    for (int w = 0; w < 2; w++)
        for (int d = 0; d < depth && sent < msgs; d++, sent++) {
            for (int i = 0; i < batch; i++) buf[2 * i] = (uint64_t)(sent * batch + i);
            write_full(fd[w], buf, len);
        }
    struct pollfd pfd[2] = {{fd[0], POLLIN, 0}, {fd[1], POLLIN, 0}};
    while (done < msgs) {
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR) continue;
            die("poll");
        }
        for (int w = 0; w < 2; w++) {
            if (!(pfd[w].revents & POLLIN)) continue;
            read_full(fd[w], buf, len);
            sum += buf[2 * batch - 1];
            done++;
            if (sent < msgs) {
                for (int i = 0; i < batch; i++) buf[2 * i] = (uint64_t)(sent * batch + i);
                write_full(fd[w], buf, len);
                sent++;
            }
        }
    }
    double wall = now_s() - t0;
    /* Close both before reaping: the second worker holds a copy of the
     * first one's socket (it was forked after it). */
    for (int w = 0; w < 2; w++) close(fd[w]);
    for (int w = 0; w < 2; w++) wait_child(pid[w]);
    free(buf);
    if (sum == 0 && msgs > 1) fprintf(stderr, "limits: no results\n");
    return (double)(msgs * batch) / wall;
}

static void w1(void) {
    long n = scaled(100000, 200);
    double s[MAX_RUNS];
    for (int r = 0; r < g_runs; r++) s[r] = tiny_tasks(n, 1, 1);
    emit("W1", "tiny_tasks_2workers_depth1", "tasks/s", n, s, g_runs,
         "16-byte request/answer over a socketpair per worker, one in flight each (W1's imap chunksize 1)");
    for (int r = 0; r < g_runs; r++) s[r] = tiny_tasks(n, 16, 1);
    emit("W1", "tiny_tasks_2workers_depth16", "tasks/s", n, s, g_runs,
         "the same with 16 in flight per worker (what prefetching could reach)");
}

static void w2(void) {
    long n = scaled(1000000, 4000);
    double s[MAX_RUNS];
    for (int r = 0; r < g_runs; r++) s[r] = tiny_tasks(n, 1, 1000);
    emit("W2", "batch1000x16B_roundtrip_msgs", "tasks/s", n, s, g_runs,
         "1000 16-byte items per write and per answer, one batch in flight per worker (W2's chunksize 1000)");
}

/* ---- W4: CPU-bound efficiency ----------------------------------------- */

static void spin(double secs) {
    double end = now_s() + secs;
    while (now_s() < end) {
    }
}

static void w4(void) {
    long tasks = scaled(40, 4) & ~1L;
    double eff[MAX_RUNS];
    for (int r = 0; r < g_runs; r++) {
        double t0 = now_s();
        pid_t pid[2];
        for (int w = 0; w < 2; w++) {
            pid[w] = fork();
            if (pid[w] < 0) die("fork");
            if (pid[w] == 0) {
                for (long i = 0; i < tasks / 2; i++) spin(0.05);
                _exit(0);
            }
        }
        for (int w = 0; w < 2; w++) wait_child(pid[w]);
        eff[r] = ((double)tasks * 0.05 / 2.0) / (now_s() - t0);
    }
    emit("W4", "cpu_efficiency_2procs_40x50ms", "ratio", tasks, eff, g_runs,
         "two forked processes each busy-loop half of the 50 ms tasks; (tasks x 0.05 / 2) / wall");
}

/* ---- W5: 1 MiB payloads ----------------------------------------------- */

static void set_bufs(int fd, int bytes) {
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
}

/* Sends `count` MiB to a child; echo: the child sends each back. MB/s per
 * direction. */
static double bulk(long count, int echo, int sockbuf) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) die("socketpair");
    if (sockbuf) {
        set_bufs(sv[0], sockbuf);
        set_bufs(sv[1], sockbuf);
    }
    char *buf = malloc(MIB);
    if (!buf) die("malloc");
    for (int i = 0; i < MIB; i++) buf[i] = (char)(i * 7);
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        close(sv[0]);
        uint64_t total = 0;
        for (long i = 0; i < count; i++) {
            read_full(sv[1], buf, MIB);
            total += (unsigned char)buf[MIB - 1];
            if (echo) write_full(sv[1], buf, MIB);
        }
        write_full(sv[1], &total, sizeof total);
        _exit(0);
    }
    close(sv[1]);
    double t0 = now_s();
    for (long i = 0; i < count; i++) {
        write_full(sv[0], buf, MIB);
        if (echo) read_full(sv[0], buf, MIB);
    }
    uint64_t total;
    read_full(sv[0], &total, sizeof total);
    double wall = now_s() - t0;
    close(sv[0]);
    wait_child(pid);
    free(buf);
    return (double)count * MIB / 1e6 / wall;
}

static void w5(void) {
    long n = scaled(500, 5);
    double s[MAX_RUNS];
    for (int r = 0; r < g_runs; r++) s[r] = bulk(n, 0, 0);
    emit("W5", "bulk1MiB_socketpair_default_buf", "MB/s", n, s, g_runs,
         "1 MiB writes to a child that reads them (W5 arg_only's one copy through the kernel)");
    for (int r = 0; r < g_runs; r++) s[r] = bulk(n, 1, 4 * MIB);
    emit("W5", "echo1MiB_socketpair_4MiB_buf", "MB/s", n, s, g_runs,
         "1 MiB sent and echoed back, one at a time, 4 MiB socket buffers; MB/s per direction (W5 round_trip)");
    /* The copy itself: any path that moves a payload copies it at least once. */
    long copies = scaled(2000, 20);
    char *a = malloc(MIB), *b = malloc(MIB);
    if (!a || !b) die("malloc");
    memset(a, 1, MIB);
    memset(b, 2, MIB);
    for (int r = 0; r < g_runs; r++) {
        double t0 = now_s();
        for (long i = 0; i < copies; i++) {
            memcpy(i % 2 ? a : b, i % 2 ? b : a, MIB);
            __asm__ volatile("" ::"r"(a), "r"(b) : "memory");
        }
        s[r] = (double)copies * MIB / 1e6 / (now_s() - t0);
    }
    free(a);
    free(b);
    emit("W5", "memcpy_1MiB", "MB/s", copies, s, g_runs, "memcpy of a 1 MiB buffer in one process");
}

/* ---- W6: a fresh process per task -------------------------------------- */

static void w6(void) {
    long n = scaled(2000, 20);
    double s[MAX_RUNS], lat[MAX_RUNS];
    for (int r = 0; r < g_runs; r++) {
        int p[2];
        if (pipe(p) != 0) die("pipe");
        long started = 0, done = 0;
        uint64_t sum = 0;
        double t0 = now_s();
        while (done < n) {
            while (started < n && started - done < 2) {
                pid_t pid = fork();
                if (pid < 0) die("fork");
                if (pid == 0) {
                    uint64_t v = (uint64_t)started * (uint64_t)started;
                    write_full(p[1], &v, sizeof v);
                    _exit(0);
                }
                started++;
            }
            uint64_t v;
            read_full(p[0], &v, sizeof v);
            sum += v;
            int st;
            while (waitpid(-1, &st, 0) < 0)
                if (errno != EINTR) die("waitpid");
            done++;
        }
        s[r] = (double)n / (now_s() - t0);
        close(p[0]);
        close(p[1]);
        (void)sum;
    }
    emit("W6", "fresh_fork_per_task_2slots", "tasks/s", n, s, g_runs,
         "fork a child per task, 2 at a time; the child writes x*x to a pipe and exits; parent reaps");
    long iters = scaled(200, 10);
    double *l = malloc((size_t)iters * sizeof(double));
    if (!l) die("malloc");
    for (int r = 0; r < g_runs; r++) {
        for (long i = 0; i < iters; i++) {
            double a = now_s();
            pid_t pid = fork();
            if (pid < 0) die("fork");
            if (pid == 0) _exit(0);
            wait_child(pid);
            l[i] = (now_s() - a) * 1e6;
        }
        qsort(l, (size_t)iters, sizeof(double), cmp_double);
        lat[r] = pctl(l, iters, 50);
    }
    free(l);
    emit("W6", "fork_exit_wait_small_p50", "us", iters, lat, g_runs, "fork, _exit(0), waitpid");
}

/* ---- W7 / W10: detecting a dead worker -------------------------------- */

/* A child blocked on a pipe; on a byte it does `how` (0 segv, 1 exit(1),
 * 2 keeps waiting: the parent SIGKILLs it). Microseconds from the trigger to
 * waitpid returning. */
static double death_latency(int how) {
    int go[2], ready[2];
    if (pipe(go) != 0 || pipe(ready) != 0) die("pipe");
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        signal(SIGSEGV, SIG_DFL);
        char c = 'r';
        write_full(ready[1], &c, 1);
        read_full(go[0], &c, 1);
        if (how == 0) kill(getpid(), SIGSEGV);
        if (how == 1) _exit(1);
        pause();
        _exit(0);
    }
    char c;
    read_full(ready[0], &c, 1);
    double t0 = now_s();
    if (how == 2)
        kill(pid, SIGKILL);
    else
        write_full(go[1], &c, 1);
    wait_child(pid);
    double us = (now_s() - t0) * 1e6;
    close(go[0]);
    close(go[1]);
    close(ready[0]);
    close(ready[1]);
    return us;
}

static void death_figure(const char *w, const char *metric, int how, const char *note) {
    long iters = scaled(50, 3);
    double s[MAX_RUNS], *l = malloc((size_t)iters * sizeof(double));
    if (!l) die("malloc");
    for (int r = 0; r < g_runs; r++) {
        for (long i = 0; i < iters; i++) l[i] = death_latency(how);
        qsort(l, (size_t)iters, sizeof(double), cmp_double);
        s[r] = pctl(l, iters, 50);
    }
    free(l);
    emit(w, metric, "us", iters, s, g_runs, note);
}

static void w7(void) {
    death_figure("W7", "crash_segv_detect_p50", 0,
                 "a byte to a blocked child that then raises SIGSEGV, until waitpid returns");
    death_figure("W7", "crash_exit1_detect_p50", 1,
                 "a byte to a blocked child that then calls _exit(1), until waitpid returns");
}

static void w10(void) {
    long iters = scaled(5, 2);
    double s[MAX_RUNS];
    for (int r = 0; r < g_runs; r++) {
        double worst = 0;
        for (long i = 0; i < iters; i++) {
            double a = now_s();
            struct timespec ts = {0, 200 * 1000 * 1000};
            while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
            }
            double over = (now_s() - a - 0.2) * 1e6;
            if (over > worst) worst = over;
        }
        s[r] = worst;
    }
    emit("W10", "timer_200ms_overshoot_max", "us", iters, s, g_runs,
         "how late a 200 ms sleep wakes (worst of n)");
    death_figure("W10", "sigkill_to_reaped_p50", 2, "kill(SIGKILL) of a blocked child until waitpid returns");
}

/* ---- W8: a pool's whole life, and starting a process -------------------- */

static void w8(void) {
    long iters = scaled(50, 3);
    double mean[MAX_RUNS], spawn[MAX_RUNS];
    double *l = malloc((size_t)iters * sizeof(double));
    if (!l) die("malloc");
    for (int r = 0; r < g_runs; r++) {
        double total = 0;
        for (long i = 0; i < iters; i++) {
            double a = now_s();
            int fd[2];
            pid_t pid[2];
            for (int w = 0; w < 2; w++) pid[w] = spawn_square_worker(&fd[w], -1);
            uint64_t m[2] = {3, 0};
            write_full(fd[0], m, sizeof m);
            read_full(fd[0], m, sizeof m);
            for (int w = 0; w < 2; w++) close(fd[w]);
            for (int w = 0; w < 2; w++) wait_child(pid[w]);
            total += (now_s() - a) * 1e6;
            if (m[1] != 9) fprintf(stderr, "limits: wrong answer\n");
        }
        mean[r] = total / (double)iters;
        for (long i = 0; i < iters; i++) {
            double a = now_s();
            pid_t pid;
            char *argv[] = {"true", NULL};
            if (posix_spawn(&pid, "/bin/true", NULL, NULL, argv, environ) != 0) die("posix_spawn");
            wait_child(pid);
            l[i] = (now_s() - a) * 1e6;
        }
        qsort(l, (size_t)iters, sizeof(double), cmp_double);
        spawn[r] = pctl(l, iters, 50);
    }
    free(l);
    emit("W8", "pool2_start_apply_join_mean", "us", iters, mean, g_runs,
         "fork 2 workers with a socketpair each, one round trip, close, reap both");
    emit("W8", "posix_spawn_true_wait_p50", "us", iters, spawn, g_runs,
         "posix_spawn(/bin/true) and waitpid: starting any executable at all");
}

/* ---- W9: the memory of an idle forked child ------------------------------ */

static long smaps_field(const char *text, const char *key) {
    const char *p = strstr(text, key);
    return p ? strtol(p + strlen(key), NULL, 10) : -1;
}

static void w9(void) {
    double rss[MAX_RUNS], pss[MAX_RUNS], uss[MAX_RUNS];
    for (int r = 0; r < g_runs; r++) {
        int go[2], ready[2];
        if (pipe(go) != 0 || pipe(ready) != 0) die("pipe");
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) {
            char c = 'r';
            write_full(ready[1], &c, 1);
            read_full(go[0], &c, 1);
            _exit(0);
        }
        char c = 'g';
        read_full(ready[0], &c, 1);
        char path[64], text[4096] = {0};
        snprintf(path, sizeof path, "/proc/%d/smaps_rollup", (int)pid);
        FILE *f = fopen(path, "r");
        size_t got = f ? fread(text, 1, sizeof text - 1, f) : 0;
        if (f) fclose(f);
        text[got] = 0;
        rss[r] = got ? (double)smaps_field(text, "\nRss:") : NAN;
        pss[r] = got ? (double)smaps_field(text, "\nPss:") : NAN;
        uss[r] = got ? (double)(smaps_field(text, "\nPrivate_Clean:") +
                                smaps_field(text, "\nPrivate_Dirty:"))
                     : NAN;
        write_full(go[1], &c, 1);
        wait_child(pid);
        close(go[0]);
        close(go[1]);
        close(ready[0]);
        close(ready[1]);
    }
    const char *note = "a forked child of this small C program, blocked in read; /proc/PID/smaps_rollup";
    emit("W9", "idle_forked_child_rss", "KiB", 1, rss, g_runs, note);
    emit("W9", "idle_forked_child_pss", "KiB", 1, pss, g_runs, note);
    emit("W9", "idle_forked_child_uss", "KiB", 1, uss, g_runs, note);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc)
            g_runs = atoi(argv[++i]);
        else if (strcmp(argv[i], "--scale") == 0 && i + 1 < argc)
            g_scale = atof(argv[++i]);
        else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc)
            g_only = argv[++i];
        else {
            fprintf(stderr, "usage: limits [--runs N (1..%d)] [--scale F (0..10]] [--only W1,W3,...]\n",
                    MAX_RUNS);
            return 2;
        }
    }
    if (g_runs < 1 || g_runs > MAX_RUNS || !(g_scale > 0 && g_scale <= 10)) {
        fprintf(stderr, "limits: --runs must be 1..%d and --scale in (0, 10]\n", MAX_RUNS);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    g_main_pid = getpid();
    if (sched_getaffinity(0, sizeof g_all_cpus, &g_all_cpus) != 0) die("sched_getaffinity");
    for (int c = 0; c < CPU_SETSIZE; c++) {
        if (!CPU_ISSET(c, &g_all_cpus)) continue;
        if (g_cpu_a < 0)
            g_cpu_a = c;
        else if (g_cpu_b < 0)
            g_cpu_b = c;
    }
    struct {
        const char *w;
        void (*f)(void);
    } all[] = {{"W1", w1}, {"W2", w2}, {"W3", w3}, {"W4", w4}, {"W5", w5},
               {"W6", w6}, {"W7", w7}, {"W8", w8}, {"W9", w9}, {"W10", w10}};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (!selected(all[i].w)) continue;
        fprintf(stderr, "[limits] %s\n", all[i].w);
        all[i].f();
    }
    return 0;
}
