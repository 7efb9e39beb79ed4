/*
 * A billiard-host plugin in C: the example of README's "Write a plugin in
 * C". Build it with `make` (libc_example.so), then:
 *
 *     billiard-host inspect libc_example.so
 *     billiard-host run libc_example.so square --args '[7]'
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "billiard_plugin.h"

/* Parses a JSON array of integers (`[1, -2, 3]`) into `out` (at most
 * `max`); returns how many, or -1 when `args` is anything else. A real
 * plugin would use a JSON library (cJSON, jansson, yyjson, ...). */
static int parse_ints(const uint8_t *args, size_t len, long long *out, int max) {
    char buf[256];
    if (len >= sizeof buf) return -1;
    memcpy(buf, args, len);
    buf[len] = '\0';
    char *p = buf;
    while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') p++;
    if (*p++ != '[') return -1;
    int n = 0;
    for (;;) {
        while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') p++;
        if (*p == ']' && n == 0) { p++; break; }
        if (n == max) return -1;
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno != 0 || *end == '.' || *end == 'e' || *end == 'E') return -1;
        out[n++] = v;
        p = end;
        while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') p++;
        if (*p == ',') { p++; continue; }
        if (*p == ']') { p++; break; }
        return -1;
    }
    while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') p++;
    return *p == '\0' ? n : -1;
}

/* Writes a message (or any text) through the host's writer. */
static void say(billiard_write_fn write, void *out, const char *text) {
    write(out, text, strlen(text));
}

static void write_int(billiard_write_fn write, void *out, long long v) {
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%lld", v);
    write(out, buf, (size_t)n);
}

enum { SQUARE, ADD, DIVIDE, COUNT, WAIT_FOR_STOP, HANG, CRASH, N_TASKS };

static int32_t call(uint32_t task, const uint8_t *args, size_t args_len,
                    const billiard_ctx *ctx, billiard_write_fn write, void *out) {
    long long v[2];
    switch (task) {
    case SQUARE:
        if (parse_ints(args, args_len, v, 1) != 1) {
            say(write, out, "square takes one integer, as [x]");
            return BILLIARD_BAD_ARGS;
        }
        write_int(write, out, v[0] * v[0]);
        return BILLIARD_OK;
    case ADD:
        if (parse_ints(args, args_len, v, 2) != 2) {
            say(write, out, "add takes two integers, as [a, b]");
            return BILLIARD_BAD_ARGS;
        }
        write_int(write, out, v[0] + v[1]);
        return BILLIARD_OK;
    case DIVIDE:
        if (parse_ints(args, args_len, v, 2) != 2) {
            say(write, out, "divide takes two integers, as [a, b]");
            return BILLIARD_BAD_ARGS;
        }
        if (v[1] == 0) {
            say(write, out, "division by zero");
            return BILLIARD_TASK_ERROR;
        }
        write_int(write, out, v[0] / v[1]);
        return BILLIARD_OK;
    case COUNT: {
        /* A streaming task: emits 0, 1, ..., n-1, returns n. */
        if (parse_ints(args, args_len, v, 1) != 1 || v[0] < 0) {
            say(write, out, "count takes one integer n >= 0, as [n]");
            return BILLIARD_BAD_ARGS;
        }
        for (long long i = 0; i < v[0]; i++) {
            char buf[32];
            int n = snprintf(buf, sizeof buf, "%lld", i);
            int32_t st = billiard_emit(ctx, buf, (size_t)n);
            if (st != BILLIARD_OK) return st;
            billiard_progress(ctx, (uint64_t)i + 1, (uint64_t)v[0]);
        }
        write_int(write, out, v[0]);
        return BILLIARD_OK;
    }
    case WAIT_FOR_STOP: {
        /* Works until the host asks it to stop (soft time limit, cancel). */
        struct timespec tick = {0, 1000000}; /* 1 ms */
        uint64_t n = 0;
        while (!billiard_stop_requested(ctx)) {
            nanosleep(&tick, NULL);
            billiard_progress(ctx, ++n, 0);
        }
        say(write, out, "stopped as asked");
        return billiard_stop_status(ctx);
    }
    case HANG: {
        /* Never looks at the stop flag: only a hard time limit ends it. */
        struct timespec tick = {0, 10000000};
        for (;;) nanosleep(&tick, NULL);
    }
    case CRASH: {
        /* A segfault: costs this worker, never the pool. */
        volatile int *nowhere = NULL;
        *nowhere = 1;
        return BILLIARD_OK;
    }
    default:
        say(write, out, "no such task");
        return BILLIARD_UNKNOWN_TASK;
    }
}

static const billiard_arg x_arg[] = {{"x", "int"}};
static const billiard_arg ab_args[] = {{"a", "int"}, {"b", "int"}};
static const billiard_arg n_arg[] = {{"n", "int"}};

static const billiard_task tasks[N_TASKS] = {
    [SQUARE] = {"square", "x * x", x_arg, 1, 0, "int", NULL},
    [ADD] = {"add", "a + b", ab_args, 2, 0, "int", NULL},
    [DIVIDE] = {"divide", "a / b; a task_error for b = 0", ab_args, 2, 0, "int", NULL},
    [COUNT] = {"count", "Streams 0, 1, ..., n-1; returns n.", n_arg, 1,
               BILLIARD_TASK_STREAMING, "int", "int"},
    [WAIT_FOR_STOP] = {"wait_for_stop", "Polls the stop flag until the host raises it.",
                       NULL, 0, 0, "null", NULL},
    [HANG] = {"hang", "Never returns and never looks at the stop flag.", NULL, 0, 0,
              "null", NULL},
    [CRASH] = {"crash", "Dereferences NULL (SIGSEGV).", NULL, 0, 0, "null", NULL},
};

const billiard_plugin_desc billiard_plugin = {
    BILLIARD_PLUGIN_HEADER,
    "c_example",
    "0.1.0",
    tasks,
    N_TASKS,
    sizeof(billiard_task),
    call,
    "An example billiard plugin written in C.",
};
