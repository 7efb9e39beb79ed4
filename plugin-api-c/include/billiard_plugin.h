/*
 * billiard_plugin.h: write a billiard-host task plugin in C (or C++, Zig,
 * Go with cgo: anything that can export a C symbol from a shared object).
 *
 * A plugin is a shared object (`cc -shared -fPIC -o libmine.so mine.c`)
 * that defines ONE global:
 *
 *     const billiard_plugin_desc billiard_plugin = { ... };
 *
 * It says who the plugin is, lists its tasks, and names the function the
 * host calls to run one: `call(task, args, args_len, ctx, write, out)`.
 *
 *  - `task` is the task's index in your `tasks` table.
 *  - `args` is a JSON array (`[2, "x"]`), `args_len` bytes, NOT
 *    NUL-terminated. Parse it with any JSON library you like.
 *  - Send the result, as JSON text (`4`, `"hi"`, `[1,2]`, `null`), with
 *    `write(out, bytes, len)`. You may call `write` several times; the
 *    pieces are joined. Never keep `write` or `out` after `call` returns:
 *    the host refuses such writes (they return nonzero and are dropped).
 *  - Return BILLIARD_OK, or an error status with a UTF-8 message written
 *    through the same `write` (BILLIARD_BAD_ARGS: "square takes [x]").
 *  - The host never frees or sizes anything of yours, and you never free
 *    anything of the host's: no buffer crosses the boundary.
 *
 * While a task runs it may read `billiard_stop_requested(ctx)` (the host
 * asks it to stop: soft time limit or cancellation; return
 * BILLIARD_SOFT_TIME_LIMIT or BILLIARD_TERMINATED then), report progress
 * with `billiard_progress(ctx, done, total)` (cheap: call it in a hot
 * loop), and, in a task flagged BILLIARD_TASK_STREAMING, send items as it
 * goes with `billiard_emit(ctx, json, len)`.
 *
 * A task that crashes (a segfault, abort()) costs one worker process: its
 * job ends as `worker_lost`, every other job and the pool go on. A plugin
 * that starts threads when loaded (a Go c-shared library: see
 * plugins/go-example) is loaded by each worker after it starts. Tasks may
 * be run from several worker processes at once, one call at a time per
 * process; the host may also call from several threads of one process
 * (in-process harnesses), so keep tasks free of unguarded global state.
 *
 * C++: never let an exception leave `call` (an exception crossing an
 * `extern "C"` function terminates the worker); wrap your body in
 * try/catch and return BILLIARD_PANIC with e.what() (see
 * plugins/cpp-example).
 *
 * The rules for changing this header without breaking built plugins are
 * in EVOLUTION.md beside this directory. Nothing below is ever removed,
 * reordered or retyped while BILLIARD_C_ABI_VERSION stays 1.
 */
#ifndef BILLIARD_PLUGIN_H
#define BILLIARD_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The C plugin ABI version this header describes. A host refuses a plugin
 * built for any other version, naming both. */
#define BILLIARD_C_ABI_VERSION 1

/* The name of the one symbol a plugin exports. */
#define BILLIARD_PLUGIN_SYMBOL "billiard_plugin"

/* What `call` returns: one status per kind of outcome. The message of an
 * error status is the text written through `write`. Any other value is
 * reported as a task_error naming it. */
enum {
    BILLIARD_OK = 0,              /* the output is the result, as JSON */
    BILLIARD_PANIC = 1,           /* an internal failure (a caught C++ exception) */
    BILLIARD_TASK_ERROR = 2,      /* the task failed; the output says why */
    BILLIARD_BAD_ARGS = 3,        /* the arguments are not what the task takes */
    BILLIARD_UNKNOWN_TASK = 4,    /* no task of that index */
    BILLIARD_SOFT_TIME_LIMIT = 5, /* stopped: the stop flag said soft time limit */
    BILLIARD_TERMINATED = 6       /* stopped: the stop flag said cancelled */
};

/* Values of *ctx->stop. */
enum {
    BILLIARD_STOP_NONE = 0,
    BILLIARD_STOP_SOFT_TIME_LIMIT = 1,
    BILLIARD_STOP_CANCELLED = 2
};

/* Bits of billiard_task.flags. */
#define BILLIARD_TASK_STREAMING 1u /* the task sends items with billiard_emit */

/* One positional argument: its name and its type, both free text shown by
 * `billiard-host inspect` (write the JSON type you expect: "int", "str",
 * "list[float]"). */
typedef struct billiard_arg {
    const char *name;
    const char *type;
} billiard_arg;

/* One task. The host reads `task_size` bytes per entry of the table (see
 * billiard_plugin_desc), so fields appended in later versions of this
 * header are read only from plugins that have them. */
typedef struct billiard_task {
    const char *name;          /* unique within the plugin; [A-Za-z0-9_.-] */
    const char *doc;           /* one line or more; may be NULL */
    const billiard_arg *args;  /* n_args entries; may be NULL when n_args is 0 */
    uint32_t n_args;           /* at most 256 */
    uint32_t flags;            /* BILLIARD_TASK_* bits */
    const char *returns;       /* the result's type, free text; may be NULL */
    const char *item;          /* a streaming task's item type; may be NULL */
} billiard_task;

/* What a running call can know and ask. Read only the fields below
 * `size` bytes (the host's struct may be older or newer than yours);
 * the billiard_* helpers below do. */
typedef struct billiard_ctx {
    uint32_t size;                 /* sizeof the host's billiard_ctx */
    uint32_t attempt;              /* 0 for a first run, 1 for the first retry, ... */
    uint64_t job_id;               /* unique within one pool */
    const volatile uint32_t *stop; /* BILLIARD_STOP_*; the host raises it */
    /* Reports `done` of `total` units (total 0: unknown); pass ctx->host. */
    void (*progress)(void *host, uint64_t done, uint64_t total);
    /* Sends one stream item (JSON text). Returns BILLIARD_OK to go on,
     * BILLIARD_SOFT_TIME_LIMIT / BILLIARD_TERMINATED to stop (return that
     * status), anything else: the item was refused (return
     * BILLIARD_TASK_ERROR). May block while the consumer is behind. */
    int32_t (*emit)(void *host, const void *item, size_t len);
    void *host;                    /* opaque; passed back to progress and emit */
} billiard_ctx;

/* The host's output writer: appends `len` bytes to the call's output.
 * Returns 0, or nonzero when refused (the call has returned, or the
 * output is over the pool's limit). */
typedef int32_t (*billiard_write_fn)(void *out, const void *data, size_t len);

/* Runs task `task` on the JSON array `args`; see the top of this file. */
typedef int32_t (*billiard_call_fn)(uint32_t task, const uint8_t *args, size_t args_len,
                                    const billiard_ctx *ctx, billiard_write_fn write,
                                    void *out);

/* The descriptor, exported as `billiard_plugin`. Set `abi_version` to
 * BILLIARD_C_ABI_VERSION, `size` to sizeof(billiard_plugin_desc) and
 * `task_size` to sizeof(billiard_task): the host reads only what your
 * plugin has. */
typedef struct billiard_plugin_desc {
    uint32_t abi_version;       /* BILLIARD_C_ABI_VERSION */
    uint32_t size;              /* sizeof(billiard_plugin_desc) */
    const char *name;           /* jobs name the plugin by it; [A-Za-z0-9_-] */
    const char *version;        /* your plugin's version, free text */
    const billiard_task *tasks; /* n_tasks entries */
    uint32_t n_tasks;           /* at most 4096 */
    uint32_t task_size;         /* sizeof(billiard_task) */
    billiard_call_fn call;
    /* ---- ABI 1 prefix ends here: every plugin has the fields above. ----
     * Appended fields (read only when `size` covers them): */
    const char *description;    /* one line about the plugin; may be NULL */
} billiard_plugin_desc;

/* The initializer of a descriptor for this header's version. */
#define BILLIARD_PLUGIN_HEADER \
    BILLIARD_C_ABI_VERSION, sizeof(billiard_plugin_desc)

/* Whether the host asks the task to stop (BILLIARD_STOP_*, 0: no). */
static inline uint32_t billiard_stop_requested(const billiard_ctx *ctx) {
    return *ctx->stop;
}

/* The status a task that stops on request returns. */
static inline int32_t billiard_stop_status(const billiard_ctx *ctx) {
    return *ctx->stop == BILLIARD_STOP_CANCELLED ? BILLIARD_TERMINATED
                                                 : BILLIARD_SOFT_TIME_LIMIT;
}

/* Reports progress; cheap enough for every iteration of a loop. */
static inline void billiard_progress(const billiard_ctx *ctx, uint64_t done, uint64_t total) {
    ctx->progress(ctx->host, done, total);
}

/* Sends one stream item (JSON text); see billiard_ctx.emit. */
static inline int32_t billiard_emit(const billiard_ctx *ctx, const void *item, size_t len) {
    return ctx->emit(ctx->host, item, len);
}

#ifdef __cplusplus
}
#endif

#endif /* BILLIARD_PLUGIN_H */
