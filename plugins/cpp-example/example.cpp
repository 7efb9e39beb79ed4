// A billiard-host plugin in C++: the header is C, the tasks are C++.
// Build it with `make` (libcpp_example.so).
//
// The one rule C++ adds: no exception may leave `call` (one crossing an
// extern "C" function ends the worker with std::terminate). `call` below
// wraps every task in try/catch: an exception a task throws is the job's
// `panic` outcome with its what() text, and the worker lives on.
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "billiard_plugin.h"

namespace {

// The output of a task: its result (JSON) or its error message.
struct Out {
    billiard_write_fn write;
    void *out;
    void operator()(const std::string &s) const { write(out, s.data(), s.size()); }
};

struct BadArgs : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A JSON array of numbers (`[1, 2.5]`); BadArgs for anything else. A real
// plugin would use a JSON library (nlohmann/json, simdjson, RapidJSON).
std::vector<double> numbers(const uint8_t *args, size_t len, const char *usage) {
    std::string s(reinterpret_cast<const char *>(args), len);
    std::vector<double> v;
    size_t i = s.find_first_not_of(" \t\r\n");
    if (i == std::string::npos || s[i] != '[') throw BadArgs(usage);
    ++i;
    for (;;) {
        i = s.find_first_not_of(" \t\r\n", i);
        if (i == std::string::npos) throw BadArgs(usage);
        if (s[i] == ']' && v.empty()) { ++i; break; }
        const char *start = s.c_str() + i;
        char *end = nullptr;
        double d = std::strtod(start, &end);
        if (end == start) throw BadArgs(usage);
        v.push_back(d);
        i += static_cast<size_t>(end - start);
        i = s.find_first_not_of(" \t\r\n", i);
        if (i == std::string::npos) throw BadArgs(usage);
        if (s[i] == ',') { ++i; continue; }
        if (s[i] == ']') { ++i; break; }
        throw BadArgs(usage);
    }
    if (s.find_first_not_of(" \t\r\n", i) != std::string::npos) throw BadArgs(usage);
    return v;
}

std::string number(double d) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", d);
    return buf;
}

enum Task : uint32_t { SQUARE, MEAN, THROW, WAIT_FOR_STOP, HANG, CRASH, N_TASKS };

int32_t run(uint32_t task, const uint8_t *args, size_t len, const billiard_ctx *ctx,
            const Out &out) {
    switch (task) {
    case SQUARE: {
        auto v = numbers(args, len, "square takes one number, as [x]");
        if (v.size() != 1) throw BadArgs("square takes one number, as [x]");
        out(number(v[0] * v[0]));
        return BILLIARD_OK;
    }
    case MEAN: {
        // `[[1, 2]]`: the one argument is a list (this parser is flat, so
        // the outer brackets are taken off by hand).
        const char *usage = "mean takes one list of numbers, as [[1, 2, 3]]";
        std::string s(reinterpret_cast<const char *>(args), len);
        size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
        if (a == std::string::npos || b <= a || s[a] != '[' || s[b] != ']') throw BadArgs(usage);
        auto inner = numbers(reinterpret_cast<const uint8_t *>(s.data()) + a + 1, b - a - 1, usage);
        if (inner.empty()) {
            out("mean of an empty list");
            return BILLIARD_TASK_ERROR;
        }
        double sum = 0;
        for (double x : inner) sum += x;
        out(number(sum / static_cast<double>(inner.size())));
        return BILLIARD_OK;
    }
    case THROW:
        // Caught in `call`: the job's outcome is `panic`, the worker lives.
        throw std::runtime_error("thrown from C++");
    case WAIT_FOR_STOP: {
        uint64_t n = 0;
        while (!billiard_stop_requested(ctx)) {
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
            billiard_progress(ctx, ++n, 0);
        }
        out("stopped as asked");
        return billiard_stop_status(ctx);
    }
    case HANG:
        for (;;) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    case CRASH: {
        volatile int *nowhere = nullptr;
        *nowhere = 1;
        return BILLIARD_OK;
    }
    default:
        out("no such task");
        return BILLIARD_UNKNOWN_TASK;
    }
}

// The boundary: nothing thrown gets past it.
int32_t call(uint32_t task, const uint8_t *args, size_t len, const billiard_ctx *ctx,
             billiard_write_fn write, void *out_handle) {
    Out out{write, out_handle};
    try {
        return run(task, args, len, ctx, out);
    } catch (const BadArgs &e) {
        out(e.what());
        return BILLIARD_BAD_ARGS;
    } catch (const std::exception &e) {
        out(std::string("C++ exception: ") + e.what());
        return BILLIARD_PANIC;
    } catch (...) {
        out("C++ exception of an unknown type");
        return BILLIARD_PANIC;
    }
}

const billiard_arg x_arg[] = {{"x", "float"}};
const billiard_arg xs_arg[] = {{"xs", "list[float]"}};

const billiard_task tasks[N_TASKS] = {
    {"square", "x * x", x_arg, 1, 0, "float", nullptr},
    {"mean", "The mean of a list of numbers; a task_error for an empty one.", xs_arg, 1, 0,
     "float", nullptr},
    {"throw_error", "Throws std::runtime_error (caught at the boundary: panic).", nullptr, 0,
     0, "null", nullptr},
    {"wait_for_stop", "Polls the stop flag until the host raises it.", nullptr, 0, 0, "null",
     nullptr},
    {"hang", "Never returns and never looks at the stop flag.", nullptr, 0, 0, "null", nullptr},
    {"crash", "Dereferences a null pointer (SIGSEGV).", nullptr, 0, 0, "null", nullptr},
};

}  // namespace

extern "C" {
extern const billiard_plugin_desc billiard_plugin;
const billiard_plugin_desc billiard_plugin = {
    BILLIARD_PLUGIN_HEADER,
    "cpp_example",
    "0.1.0",
    tasks,
    N_TASKS,
    sizeof(billiard_task),
    call,
    "An example billiard plugin written in C++.",
};
}
