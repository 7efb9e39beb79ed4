//! `faults`: tasks that misbehave on purpose, to test how the pool survives
//! them. Never load this plugin in production.

use std::time::{Duration, Instant};

use billiard_plugin_api::{export_plugin, task, TaskContext};

/// Panics with the given message (the worker survives: `panic`).
#[task]
pub fn panic(message: String) -> u64 {
    panic!("{message}")
}

/// Returns `Err(message)` (`task_error`).
#[task]
pub fn fail(message: String) -> Result<u64, String> {
    Err(message)
}

/// Kills its own worker with SIGSEGV (`worker_lost`).
#[task]
pub fn segfault() -> u64 {
    // SAFETY: raise() is always safe to call; it delivers SIGSEGV with the
    // default action, which ends the process. That is the point of the task.
    unsafe {
        libc::raise(libc::SIGSEGV);
    }
    0
}

/// Calls abort() (SIGABRT, `worker_lost`).
#[task]
pub fn abort() -> u64 {
    std::process::abort()
}

/// Exits the worker process with `code` without unwinding (`worker_lost`).
#[task]
pub fn exit(code: i32) -> u64 {
    // SAFETY: _exit ends the process at once; no Rust invariant outlives it.
    unsafe { libc::_exit(code) }
}

/// Sleeps `ms` milliseconds, returns `ms`.
#[task]
pub fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Busy-loops on the monotonic clock for `ms` milliseconds, ignoring any
/// request to stop (only a hard time limit ends it early). Returns `ms`.
#[task]
pub fn spin_ms(ms: u64) -> u64 {
    spin_until(Instant::now() + Duration::from_millis(ms), || false);
    ms
}

/// Busy-loops for `seconds` (a float, like the benchmarks' `spin(s)`).
#[task]
pub fn spin(seconds: f64) -> f64 {
    spin_until(
        Instant::now() + Duration::from_secs_f64(seconds.max(0.0)),
        || false,
    );
    seconds
}

/// Busy-loops for `ms` milliseconds but polls the context: stops at the
/// checkpoint once a soft time limit or cancellation arrives (`soft_time_limit`).
#[task]
pub fn cooperative_spin(ms: u64, ctx: &TaskContext) -> u64 {
    spin_until(Instant::now() + Duration::from_millis(ms), || {
        ctx.checkpoint();
        false
    });
    ms
}

/// Like `cooperative_spin`, but returns `Err` from `ctx.check()` (the
/// `Result` style of stopping).
#[task]
pub fn cooperative_spin_result(
    ms: u64,
    ctx: &TaskContext,
) -> Result<u64, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < deadline {
        ctx.check()?;
        std::hint::spin_loop();
    }
    Ok(ms)
}

/// Sleeps up to `ms` but wakes to stop when asked (a cooperative sleeper).
#[task]
pub fn cooperative_sleep(ms: u64, ctx: &TaskContext) -> Result<u64, billiard_plugin_api::Stopped> {
    let deadline = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < deadline {
        ctx.check()?;
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(ms)
}

/// Allocates `mb` MiB, touches every page and keeps it for the life of the
/// worker. Returns the total leaked so far, in MiB.
#[task]
pub fn leak_mb(mb: u64) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LEAKED: AtomicU64 = AtomicU64::new(0);
    let mut v = vec![0u8; (mb as usize) << 20];
    for i in (0..v.len()).step_by(4096) {
        v[i] = 1;
    }
    std::mem::forget(v);
    LEAKED.fetch_add(mb, Ordering::Relaxed) + mb
}

/// Writes garbage to every file descriptor the worker has open (its IPC
/// socket included), then returns the number of fds written to.
#[task]
pub fn garbage_fds() -> u64 {
    let garbage = [0xffu8; 64];
    let mut n = 0;
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        // SAFETY: writing a stack buffer to an fd number; a closed or
        // read-only fd just makes write() fail with an error code.
        let r = unsafe { libc::write(fd, garbage.as_ptr().cast(), garbage.len()) };
        if r > 0 {
            n += 1;
        }
    }
    n
}

/// Writes `message` to the worker's stderr and returns its length (shows up
/// in the "last lines" of a lost worker).
#[task]
pub fn log(message: String) -> u64 {
    eprintln!("{message}");
    message.len() as u64
}

/// Starts a `sleep` grandchild that lives `seconds`, then busy-loops for
/// `spin_ms`. Returns the grandchild's pid (a hard time limit must kill it too).
#[task]
pub fn spawn_sleeper(seconds: u64, spin_ms: u64) -> Result<u32, String> {
    let child = std::process::Command::new("sleep")
        .arg(seconds.to_string())
        .spawn()
        .map_err(|e| format!("could not start sleep: {e}"))?;
    let pid = child.id();
    std::mem::forget(child);
    spin_until(Instant::now() + Duration::from_millis(spin_ms), || false);
    Ok(pid)
}

/// The job id and attempt the context reports.
#[task]
pub fn context_info(ctx: &TaskContext) -> (u64, u32) {
    (ctx.job_id(), ctx.attempt())
}

/// The worker's pid (to tell workers apart in tests).
#[task]
pub fn pid() -> u32 {
    std::process::id()
}

/// Busy loop `square` for benchmarks: returns x*x (same as math.square).
#[task]
pub fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn spin_until(deadline: Instant, mut stop: impl FnMut() -> bool) {
    while Instant::now() < deadline {
        if stop() {
            return;
        }
        std::hint::spin_loop();
    }
}

export_plugin!(
    name: "faults",
    tasks: [
        panic, fail, segfault, abort, exit, sleep_ms, spin_ms, spin, cooperative_spin,
        cooperative_spin_result, cooperative_sleep, leak_mb, garbage_fds, log, spawn_sleeper,
        context_info, pid, square,
    ]
);
