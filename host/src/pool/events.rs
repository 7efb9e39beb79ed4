//! Observability: an optional stream of pool events.

use std::time::Duration;

use super::job::{JobId, WorkerId};

/// Something that happened in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    WorkerUp {
        worker: WorkerId,
        pid: i32,
    },
    /// `reason` says how it ended ("exited with code 0", "killed by signal 11 (SIGSEGV)", ...).
    WorkerDown {
        worker: WorkerId,
        pid: i32,
        reason: String,
    },
    /// A job (or a chunk of `count` jobs starting at `job`) was handed to a worker.
    JobStarted {
        job: JobId,
        worker: WorkerId,
        count: u32,
    },
    JobFinished {
        job: JobId,
        worker: WorkerId,
        count: u32,
        elapsed: Duration,
    },
    /// A running job reported progress (`ctx.progress(done, total)`;
    /// coalesced by its worker to about one per 50 ms, plus completion).
    JobProgress {
        job: JobId,
        done: u64,
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
