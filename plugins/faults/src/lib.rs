//! `faults`: tasks that misbehave on purpose, to test how the pool survives
//! them. Never load this plugin in production.

use std::time::{Duration, Instant};

use billiard_plugin_api::{export_plugin, task, Failure, TaskContext};

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

/// Appends a line to `path` and returns how many lines it has now: the
/// number of runs of a task that counts its runs there.
fn count_run(path: &str) -> Result<u32, Failure> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Failure::new(format!("cannot open {path}: {e}")))?;
    writeln!(f, "run").map_err(|e| Failure::new(format!("cannot write {path}: {e}")))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::new(format!("cannot read {path}: {e}")))?;
    Ok(u32::try_from(text.lines().count()).unwrap_or(u32::MAX))
}

/// Counts its runs in `path` (one line each); asks for a retry in 100 ms
/// (`Failure::retry`) while it has run at most `fail_times` times, then
/// returns the number of runs.
#[task]
pub fn flaky(path: String, fail_times: u32) -> Result<u32, Failure> {
    let runs = count_run(&path)?;
    if runs <= fail_times {
        return Err(Failure::retry()
            .reason(format!(
                "run {runs}: failing until run {}",
                fail_times.saturating_add(1)
            ))
            .countdown(Duration::from_millis(100)));
    }
    Ok(runs)
}

/// [`flaky`] with the retry's countdown (ms) and its own `max_retries`
/// cap (`None`: the task's or the worker's).
#[task]
pub fn flaky_with(
    path: String,
    fail_times: u32,
    countdown_ms: u64,
    max_retries: Option<u32>,
) -> Result<u32, Failure> {
    let runs = count_run(&path)?;
    if runs <= fail_times {
        let f = Failure::retry()
            .reason(format!(
                "run {runs}: failing until run {}",
                fail_times.saturating_add(1)
            ))
            .countdown(Duration::from_millis(countdown_ms));
        return Err(match max_retries {
            Some(n) => f.max_retries(n),
            None => f,
        });
    }
    Ok(runs)
}

/// Rejects its message (`Failure::reject(requeue)`), every time.
#[task]
pub fn reject(requeue: bool) -> Result<u64, Failure> {
    Err(Failure::reject(requeue).reason(format!("rejected (requeue: {requeue})")))
}

/// Counts its runs in `path`; rejects its message with requeue on the
/// first run, returns the number of runs after.
#[task]
pub fn reject_once(path: String) -> Result<u32, Failure> {
    match count_run(&path)? {
        1 => Err(Failure::reject(true).reason("rejected on the first run")),
        runs => Ok(runs),
    }
}

/// Ignores its message (`Failure::ignore()`): nothing is stored.
#[task]
pub fn ignore() -> Result<u64, Failure> {
    Err(Failure::ignore())
}

/// Fails with `message` raised as Python class `class` (`ValueError`,
/// `myapp.errors.Expected`); a name that is not a class path is refused
/// and named in the message.
#[task]
pub fn raise_as(class: String, message: String) -> Result<u64, Failure> {
    Err(Failure::new(message).raise_as(&class))
}

/// Returns `x`, at most 10 a second per worker (`rate_limit = "10/s"`).
#[task(rate_limit = "10/s")]
pub fn rate_limited(x: u64) -> u64 {
    x
}

/// Counts its runs in `path`; fails with a plain `task_error` while it has
/// run at most `fail_times` times, then returns the number of runs. Its
/// registration options retry that failure (and a panic) by themselves:
/// at most 2 retries, backoff 100 ms doubling up to 1 s, no jitter.
#[task(
    rate_limit = "600/m",
    autoretry_for = "task_error,panic",
    max_retries = 2,
    retry_backoff = "100ms",
    retry_backoff_max = "1s",
    retry_jitter = false,
    default_retry_delay = "100ms"
)]
pub fn autoretried(path: String, fail_times: u32) -> Result<u32, String> {
    let runs = count_run(&path).map_err(|e| e.to_string())?;
    if runs <= fail_times {
        return Err(format!(
            "run {runs}: failing until run {}",
            fail_times.saturating_add(1)
        ));
    }
    Ok(runs)
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
        context_info, pid, square, flaky, flaky_with, reject, reject_once, ignore, raise_as,
        rate_limited, autoretried,
    ]
);
