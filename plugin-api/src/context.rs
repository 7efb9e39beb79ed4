//! What a running task can know about its job and ask of the host.

use std::sync::atomic::{AtomicU32, Ordering};

use abi_stable::StableAbi;

/// Why the host asks a task to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The job's soft time limit passed.
    SoftTimeLimit,
    /// The job was cancelled.
    Cancelled,
}

impl StopReason {
    /// The value the host stores in the stop flag for this reason.
    pub const fn as_flag(self) -> u32 {
        match self {
            StopReason::SoftTimeLimit => 1,
            StopReason::Cancelled => 2,
        }
    }

    pub fn from_flag(flag: u32) -> Option<StopReason> {
        match flag {
            1 => Some(StopReason::SoftTimeLimit),
            2 => Some(StopReason::Cancelled),
            _ => None,
        }
    }
}

/// Returned by [`TaskContext::check`] when the task should stop. Return it
/// (with `?`) from a task that returns `Result`: the job then ends with the
/// `soft_time_limit` (or `terminated`) outcome rather than `task_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped(pub StopReason);

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            StopReason::SoftTimeLimit => f.write_str("soft time limit exceeded"),
            StopReason::Cancelled => f.write_str("job cancelled"),
        }
    }
}

impl std::error::Error for Stopped {}

/// Payload of the unwind started by [`TaskContext::checkpoint`]; the glue
/// recognises it and reports a stop instead of a panic.
#[doc(hidden)]
pub struct StopUnwind(pub StopReason);

/// Handed to a task that asks for it (`ctx: &TaskContext`).
#[repr(C)]
#[derive(StableAbi)]
pub struct TaskContext<'a> {
    job_id: u64,
    attempt: u32,
    stop: &'a AtomicU32,
}

impl<'a> TaskContext<'a> {
    /// Built by the host for each call; `stop` is the flag it raises (from a
    /// signal handler, so it must stay a plain atomic).
    pub fn new(job_id: u64, attempt: u32, stop: &'a AtomicU32) -> Self {
        TaskContext {
            job_id,
            attempt,
            stop,
        }
    }

    /// The id of the job being run (unique within one pool).
    pub fn job_id(&self) -> u64 {
        self.job_id
    }

    /// 0 for the first run of a job, 1 for its first retry, ...
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// A context for item `offset` of a batch.
    #[doc(hidden)]
    pub fn for_batch_item(&self, offset: u64) -> TaskContext<'a> {
        TaskContext {
            job_id: self.job_id.wrapping_add(offset),
            attempt: self.attempt,
            stop: self.stop,
        }
    }

    /// Why the host wants the task to stop, if it does. Cheap: one atomic load.
    pub fn stop_requested(&self) -> Option<StopReason> {
        StopReason::from_flag(self.stop.load(Ordering::Relaxed))
    }

    /// `Err(Stopped)` once the task should stop; use with `?` in a task that
    /// returns `Result<T, E>` where `E: From<Stopped>` (e.g. `Box<dyn Error>`,
    /// `anyhow::Error`, or `Stopped` itself).
    pub fn check(&self) -> Result<(), Stopped> {
        match self.stop_requested() {
            Some(reason) => Err(Stopped(reason)),
            None => Ok(()),
        }
    }

    /// Ends the task at once if it should stop, from any depth of the call
    /// stack, for tasks that return a plain value. Unwinds to the glue (no
    /// panic message is recorded), which reports `soft_time_limit` or
    /// `terminated`.
    pub fn checkpoint(&self) {
        if let Some(reason) = self.stop_requested() {
            std::panic::resume_unwind(Box::new(StopUnwind(reason)));
        }
    }
}
