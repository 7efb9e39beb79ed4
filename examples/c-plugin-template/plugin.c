/*
 * c_plugin_template: a billiard-host plugin in C.
 *
 * The whole interface is include/billiard_plugin.h (read its top comment).
 * This file defines the tasks, a table describing them, and the one
 * symbol the host looks for, `billiard_plugin`.
 *
 *     make                                   # lib<name>.so
 *     billiard-host inspect ./libc_plugin_template.so
 *     billiard-host check ./libc_plugin_template.so --cases cases.jsonl
 *     billiard-host run ./libc_plugin_template.so --task square --args '[7]'
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "billiard_plugin.h"

/* Parses a JSON array of integers (`[1, 2]`) into `out` (at most `max`);
 * returns how many, or -1 for anything else. For real argument types use
 * a JSON library (cJSON, jansson, yyjson, ...). */
static int parse_ints(const uint8_t *args, size_t len, long long *out, int max) {
    char buf[256];
    if (len >= sizeof buf) return -1;
    memcpy(buf, args, len);
    buf[len] = '\0';
    const char *ws = " \t\r\n";
    char *p = buf + strspn(buf, ws);
    if (*p++ != '[') return -1;
    int n = 0;
    p += strspn(p, ws);
    if (*p == ']') {
        p++;
    } else {
        for (;;) {
            if (n == max) return -1;
            char *end;
            errno = 0;
            long long v = strtoll(p, &end, 10);
            if (end == p || errno != 0 || *end == '.' || *end == 'e' || *end == 'E') return -1;
            out[n++] = v;
            p = end + strspn(end, ws);
            if (*p == ',') { p++; continue; }
            if (*p == ']') { p++; break; }
            return -1;
        }
    }
    p += strspn(p, ws);
    return *p == '\0' ? n : -1;
}

static void say(billiard_write_fn write, void *out, const char *text) {
    write(out, text, strlen(text));
}

static void write_int(billiard_write_fn write, void *out, long long v) {
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%lld", v);
    write(out, buf, (size_t)n);
}

/* x * x */
static int32_t square(const uint8_t *args, size_t len, billiard_write_fn write, void *out) {
    long long x;
    if (parse_ints(args, len, &x, 1) != 1) {
        say(write, out, "square takes one integer, as [x]");
        return BILLIARD_BAD_ARGS;
    }
    write_int(write, out, x * x);
    return BILLIARD_OK;
}

/* The primes below n; stops when the host asks (a soft time limit). */
static int32_t count_primes(const uint8_t *args, size_t len, const billiard_ctx *ctx,
                            billiard_write_fn write, void *out) {
    long long n;
    if (parse_ints(args, len, &n, 1) != 1 || n < 0) {
        say(write, out, "count_primes takes one integer n >= 0, as [n]");
        return BILLIARD_BAD_ARGS;
    }
    long long count = 0;
    for (long long i = 2; i < n; i++) {
        if ((i & 1023) == 0) {
            if (billiard_stop_requested(ctx)) {
                say(write, out, "stopped before the end");
                return billiard_stop_status(ctx);
            }
            billiard_progress(ctx, (uint64_t)i, (uint64_t)n);
        }
        int prime = 1;
        for (long long d = 2; d * d <= i; d++) {
            if (i % d == 0) { prime = 0; break; }
        }
        count += prime;
    }
    write_int(write, out, count);
    return BILLIARD_OK;
}

enum { SQUARE, COUNT_PRIMES, N_TASKS };

static int32_t call(uint32_t task, const uint8_t *args, size_t len, const billiard_ctx *ctx,
                    billiard_write_fn write, void *out) {
    switch (task) {
    case SQUARE: return square(args, len, write, out);
    case COUNT_PRIMES: return count_primes(args, len, ctx, write, out);
    default:
        say(write, out, "no such task");
        return BILLIARD_UNKNOWN_TASK;
    }
}

static const billiard_arg x_arg[] = {{"x", "int"}};
static const billiard_arg n_arg[] = {{"n", "int"}};

static const billiard_task tasks[N_TASKS] = {
    [SQUARE] = {"square", "x * x", x_arg, 1, 0, "int", NULL},
    [COUNT_PRIMES] = {"count_primes", "The number of primes below n; stops at a soft time limit.",
                      n_arg, 1, 0, "int", NULL},
};

const billiard_plugin_desc billiard_plugin = {
    BILLIARD_PLUGIN_HEADER,
    "c_plugin_template",  /* jobs name the plugin by it */
    "0.1.0",
    tasks,
    N_TASKS,
    sizeof(billiard_task),
    call,
    "A billiard-host plugin in C.",
};
