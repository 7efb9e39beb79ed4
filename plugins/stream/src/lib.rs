//! Streaming tasks and progress reports, for the tests and the benchmark.

use billiard_plugin_api::{export_plugin, task, Emitter, TaskContext};

/// Emits 0, 1, ..., n-1; returns n.
#[task]
pub fn count(n: u64, out: &Emitter<u64>) -> u64 {
    for i in 0..n {
        out.emit(i);
    }
    n
}

/// Emits `n` strings of `size` bytes each: item `i` is `i` in decimal,
/// padded with dots.
#[task]
pub fn blobs(n: u64, size: u64, out: &Emitter<String>) -> u64 {
    let mut s = String::with_capacity(size as usize);
    for i in 0..n {
        s.clear();
        s.push_str(&i.to_string());
        while (s.len() as u64) < size {
            s.push('.');
        }
        out.emit(&s);
    }
    n
}

/// Emits each line of `text`; returns the number of lines.
#[task]
pub fn lines(text: String, out: &Emitter<String>) -> u64 {
    let mut n = 0;
    for line in text.lines() {
        out.emit(line.to_string());
        n += 1;
    }
    n
}

/// Emits `n` items, then fails with a task error.
#[task]
pub fn count_then_fail(n: u64, out: &Emitter<u64>) -> Result<u64, String> {
    for i in 0..n {
        out.emit(i);
    }
    Err(format!("failed after {n} items"))
}

/// Emits 0, 1, 2, ... until the job is stopped (it never returns on its own).
#[task]
pub fn count_forever(ctx: &TaskContext, out: &Emitter<u64>) -> u64 {
    let mut i = 0u64;
    loop {
        ctx.checkpoint();
        out.emit(i);
        i += 1;
    }
}

/// Emits `n` items, then waits (checking for a stop) without emitting more.
#[task]
pub fn count_then_wait(ctx: &TaskContext, n: u64, out: &Emitter<u64>) -> u64 {
    for i in 0..n {
        out.emit(i);
    }
    loop {
        ctx.checkpoint();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Reports progress `i + 1` of `n` on every one of `n` iterations of a
/// small xorshift loop (`spin` rounds each); returns the final state.
#[task]
pub fn progress_loop(ctx: &TaskContext, n: u64, spin: u64) -> u64 {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..n {
        for _ in 0..spin {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        ctx.progress(i + 1, n);
    }
    x
}

/// The same loop as `progress_loop` without the progress calls (the
/// benchmark's baseline).
#[task]
pub fn plain_loop(n: u64, spin: u64) -> u64 {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..n {
        for _ in 0..spin {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        std::hint::black_box(i);
    }
    x
}

/// Reports progress 1..=n of n, sleeping `ms` milliseconds between steps.
#[task]
pub fn slow_progress(ctx: &TaskContext, n: u64, ms: u64) -> u64 {
    for i in 0..n {
        std::thread::sleep(std::time::Duration::from_millis(ms));
        ctx.progress(i + 1, n);
    }
    n
}

/// Reports progress 1 of 2, then waits (checking for a stop) until `path`
/// exists, then reports 2 of 2 and returns `n`.
#[task]
pub fn progress_until_file(ctx: &TaskContext, path: String, n: u64) -> u64 {
    ctx.progress(1, 2);
    while !std::path::Path::new(&path).exists() {
        ctx.checkpoint();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    ctx.progress(2, 2);
    n
}

/// Waits (checking for a stop) until `path` exists, then returns 1: a task
/// that is running for as long as a test needs, without reporting anything.
#[task]
pub fn wait_for_file(ctx: &TaskContext, path: String) -> u64 {
    while !std::path::Path::new(&path).exists() {
        ctx.checkpoint();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    1
}

export_plugin!(
    name: "stream",
    tasks: [
        count,
        blobs,
        lines,
        count_then_fail,
        count_forever,
        count_then_wait,
        progress_loop,
        plain_loop,
        slow_progress,
        progress_until_file,
        wait_for_file,
    ]
);
