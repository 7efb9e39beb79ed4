//! Jobs as the supervisor sees them, and how their outcomes reach callers.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use billiard_plugin_api::Codec;

use super::config::Limits;
use crate::error::TaskError;

/// Identifies one job within a pool. Jobs of one chunk have consecutive ids.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct JobId(pub u64);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job#{}", self.0)
    }
}

/// Identifies one worker process over the life of a pool.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct WorkerId(pub u64);

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "worker#{}", self.0)
    }
}

/// A job's result: the encoded value, or why there is none.
pub type Outcome = Result<Vec<u8>, TaskError>;

/// Runs with a job's outcome, on the pool's callback thread.
pub type Callback = Box<dyn FnOnce(&Outcome) + Send>;

/// Where one job's outcome goes (an `AsyncResult`), filled exactly once.
pub struct ResultSlot {
    state: Mutex<SlotState>,
    cv: Condvar,
}

struct SlotState {
    outcome: Option<Outcome>,
    callback: Option<Callback>,
}

impl ResultSlot {
    pub fn new(callback: Option<Callback>) -> Arc<ResultSlot> {
        Arc::new(ResultSlot {
            state: Mutex::new(SlotState {
                outcome: None,
                callback,
            }),
            cv: Condvar::new(),
        })
    }

    /// Stores the outcome (the first one wins) and hands back the callback
    /// to run, if any.
    pub fn fill(&self, outcome: Outcome) -> Option<(Callback, Outcome)> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.outcome.is_some() {
            return None;
        }
        let cb = st.callback.take().map(|cb| (cb, outcome.clone()));
        st.outcome = Some(outcome);
        drop(st);
        self.cv.notify_all();
        cb
    }

    pub fn is_ready(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .outcome
            .is_some()
    }

    /// Waits for the outcome (up to `timeout`) and returns a copy.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<Outcome> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(o) = &st.outcome {
                return Some(o.clone());
            }
            match deadline {
                None => st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    st = self
                        .cv
                        .wait_timeout(st, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}

/// Where the outcomes of a dispatch go.
#[derive(Clone)]
pub enum Reply {
    /// One job, one slot.
    Slot(Arc<ResultSlot>),
    /// A stream (map / imap): the whole dispatch's outcomes are sent as one
    /// [`ChunkResult`], items numbered from `first_index`.
    Stream {
        tx: crossbeam_channel::Sender<ChunkResult>,
        first_index: u64,
    },
}

/// The outcomes of a chunk of consecutive stream items, delivered at once
/// so a chunk of a thousand tiny jobs costs one channel message, not a
/// thousand.
pub struct ChunkResult {
    pub first_index: u64,
    pub count: u32,
    pub body: ChunkBody,
}

pub enum ChunkBody {
    /// A single item's outcome.
    One(Outcome),
    /// `count` batch result records `[u8 status][u32 len][bytes]`, as the
    /// worker wrote them.
    Records(Vec<u8>),
    /// Every item failed the same way.
    Failed(TaskError),
}

/// The unit the supervisor sends to a worker: one job or a chunk of jobs
/// of the same task.
pub struct Dispatch {
    pub first_job: JobId,
    pub count: u32,
    pub plugin: u16,
    pub task: u32,
    /// The plugin generation `plugin`/`task` index (0: raw indices); the
    /// supervisor maps them onto the generation of the worker it picks.
    pub gen: u64,
    pub codec: Codec,
    /// The encoded arguments (count == 1) or argument records (count > 1).
    pub payload: Arc<Vec<u8>>,
    pub limits: Limits,
    pub reply: Reply,
    pub attempt: u32,
    /// Set by `terminate_job` on a job already sent: deliver `terminated`
    /// instead of its result.
    pub cancelled: bool,
    /// Items whose outcome went out (always a prefix: 0..delivered).
    pub delivered: u32,
}

impl Drop for Dispatch {
    /// The last line of "exactly one outcome": a dispatch dropped before
    /// all its outcomes went out (a command still in the channel when the
    /// supervisor stopped, a queue dropped at shutdown) reports the rest as
    /// `terminated`, so no caller ever waits forever.
    fn drop(&mut self) {
        for i in self.delivered..self.count {
            let err = TaskError::new(
                crate::error::ErrorKind::Terminated,
                format!(
                    "job {} was dropped when the pool shut down",
                    self.first_job.0 + i as u64
                ),
            );
            match &self.reply {
                Reply::Slot(slot) => {
                    // The callback is dropped, not run: the pool is going away.
                    let _ = slot.fill(Err(err));
                }
                Reply::Stream { tx, first_index } => {
                    let first_index = first_index + i as u64;
                    let count = self.count - i;
                    let _ = tx.send(ChunkResult {
                        first_index,
                        count,
                        body: ChunkBody::Failed(err),
                    });
                    return;
                }
            }
        }
    }
}

impl Dispatch {
    /// The stream index of the first item (0 for slot replies).
    pub fn reply_first_index(&self) -> u64 {
        match &self.reply {
            Reply::Stream { first_index, .. } => *first_index,
            Reply::Slot(_) => 0,
        }
    }

    pub fn contains(&self, job: JobId) -> bool {
        job.0 >= self.first_job.0 && job.0 < self.first_job.0 + self.count as u64
    }
}
