//! `hostile`: tasks that fight their host on purpose — they signal their
//! parent, close the worker's socket, flood its output pipes, leave signal
//! state behind and fork children that try to escape. The regression tests
//! of the adversarial report (`B1`..`B16`) drive them. Never load this
//! plugin in production.

use std::time::{Duration, Instant};

use billiard_plugin_api::{export_plugin, task, TaskContext};

/// Sleeps `ms` milliseconds, returns `ms`.
#[task]
pub fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Busy-waits `ms` milliseconds, polling the context: stops with
/// `soft_time_limit` once a soft limit arrives.
#[task]
pub fn coop(ms: u64, ctx: &TaskContext) -> u64 {
    let end = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < end {
        ctx.checkpoint();
        std::hint::spin_loop();
    }
    ms
}

/// Returns its argument (a float), e.g. to produce a non-finite result.
#[task]
pub fn echo_f64(x: f64) -> f64 {
    x
}

/// The parent of the worker process (the zygote).
#[task]
pub fn ppid() -> i32 {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() }
}

/// Sends `sig` to the worker's parent (the zygote), returns the kill() result.
#[task]
pub fn kill_parent(sig: i32) -> i32 {
    // SAFETY: kill has no memory-safety preconditions; hurting the parent is
    // the point of the task.
    unsafe { libc::kill(libc::getppid(), sig) }
}

/// Sends `sig` to `pid`, returns the kill() result.
#[task]
pub fn kill_pid(pid: i32, sig: i32) -> i32 {
    // SAFETY: as above.
    unsafe { libc::kill(pid, sig) }
}

// HOSTILE-TASKS: add new tasks above this line and list them in export_plugin!.

export_plugin!(
    name: "hostile",
    tasks: [nap, coop, echo_f64, ppid, kill_parent, kill_pid],
);
