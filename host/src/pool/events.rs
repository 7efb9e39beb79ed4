//! Observability: an optional stream of pool events.

use std::time::Duration;

use super::job::{JobId, WorkerId};

/// Something that happened in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A worker process started and is ready for jobs.
    WorkerUp {
        /// The pool's id for the worker.
        worker: WorkerId,
        /// Its process id.
        pid: i32,
    },
    /// `reason` says how it ended ("exited with code 0", "killed by signal 11 (SIGSEGV)", ...).
    WorkerDown {
        /// The pool's id for the worker.
        worker: WorkerId,
        /// Its process id.
        pid: i32,
        /// How it ended.
        reason: String,
    },
    /// A job (or a chunk of `count` jobs starting at `job`) was handed to a worker.
    JobStarted {
        /// The job's id (the first of the chunk).
        job: JobId,
        /// The worker that runs it.
        worker: WorkerId,
        /// How many consecutive jobs the chunk holds (1 for a single job).
        count: u32,
    },
    /// A job (or a chunk of `count` jobs starting at `job`) finished in its
    /// worker; its outcome is on the way to the caller.
    JobFinished {
        /// The job's id (the first of the chunk).
        job: JobId,
        /// The worker that ran it.
        worker: WorkerId,
        /// How many consecutive jobs the chunk held.
        count: u32,
        /// How long the worker took, from the job's start to its outcome.
        elapsed: Duration,
    },
    /// A running job reported progress (`ctx.progress(done, total)`;
    /// coalesced by its worker to about one per 50 ms, plus completion).
    JobProgress {
        /// The job's id.
        job: JobId,
        /// The work done so far, in the task's own units.
        done: u64,
        /// The total work, in the same units (0 if the task does not know).
        total: u64,
    },
}

/// Where the supervisor sends events; a no-op unless someone subscribed.
#[derive(Clone, Default)]
pub struct EventSink(Option<crossbeam_channel::Sender<Event>>);

impl EventSink {
    pub fn new(tx: Option<crossbeam_channel::Sender<Event>>) -> Self {
        EventSink(tx)
    }

    pub fn emit(&self, e: Event) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(e);
        }
    }
}
