/*
 * The plugin's descriptor: the one symbol billiard-host looks for. It is C
 * (a Go file that //exports a function may only declare C, not define it);
 * `call` is the Go function exported in plugin.go.
 */
#include "billiard_plugin.h"
#include "_cgo_export.h"

static const billiard_arg x_arg[] = {{"x", "int"}};
static const billiard_arg ab_args[] = {{"a", "int"}, {"b", "int"}};
static const billiard_arg n_arg[] = {{"n", "int"}};
static const billiard_arg ms_arg[] = {{"ms", "int"}};

/* The order is the task indexes plugin.go switches on. */
static const billiard_task tasks[] = {
    {"square", "Returns x * x.", x_arg, 1, 0, "int", NULL},
    {"add", "Returns a + b.", ab_args, 2, 0, "int", NULL},
    {"divide", "Returns a / b (integer division); b = 0 is a task error.", ab_args, 2, 0,
     "int", NULL},
    {"count", "Streams 0, 1, ..., n-1, then returns n.", n_arg, 1, BILLIARD_TASK_STREAMING,
     "int", "int"},
    {"sum_squares", "Sums i*i for i < n on four goroutines.", n_arg, 1, 0, "int", NULL},
    {"wait_for_stop", "Polls the stop flag until the host raises it.", NULL, 0, 0, "null",
     NULL},
    {"hang", "Never returns and never looks at the stop flag.", NULL, 0, 0, "null", NULL},
    {"crash", "Dereferences a nil pointer (a Go runtime panic: the worker exits).", NULL, 0,
     0, "null", NULL},
    {"go_panic", "Panics (an unrecovered Go panic: the worker exits).", NULL, 0, 0, "null",
     NULL},
    {"leak", "Allocates n MiB and keeps it (what --max-memory-per-child recycles).", n_arg, 1,
     0, "int", NULL},
    {"nap", "Sleeps ms milliseconds (on a goroutine timer), then returns ms.", ms_arg, 1, 0,
     "int", NULL},
};

const billiard_plugin_desc billiard_plugin = {
    BILLIARD_PLUGIN_HEADER,
    "go_example",
    "0.1.0",
    tasks,
    sizeof tasks / sizeof tasks[0],
    sizeof(billiard_task),
    (billiard_call_fn)billiard_go_call,
    "A billiard-host plugin in Go (cgo, -buildmode=c-shared).",
};
