//! Dispatch and delivery: a job's RUN frame on its way to a worker, and
//! its outcomes on their way to the caller (a result slot or a stream),
//! counted in the pool's stats. Outcomes never wait for a caller:
//! callbacks go to the callback thread.

use billiard_plugin_api::{codec, Status};

use super::super::callbacks::{CallbackJob, CallbackSender};
use super::super::config::PoolConfig;
use super::super::job::{ChunkBody, ChunkResult, Dispatch, Outcome, Reply};
use super::super::stats::Stats;
use super::conn::OutItem;
use crate::error::{ErrorKind, TaskError};
use crate::ipc;

/// The RUN frame of `d`, or why it cannot be sent (over the frame limit).
pub(super) struct RunFrame {
    h: ipc::RunHeader,
    header: Vec<u8>,
}

pub(super) fn run_frame(d: &Dispatch, cfg: &PoolConfig) -> Result<RunFrame, TaskError> {
    let h = ipc::RunHeader {
        job: d.first_job.0,
        plugin: d.plugin,
        task: d.task,
        codec: d.codec,
        attempt: d.attempt,
        count: d.count,
    };
    if d.payload.len() + ipc::RUN_HEADER > cfg.max_frame {
        let msg = format!(
            "the arguments take {} bytes, over the pool's frame limit of {} bytes",
            d.payload.len(),
            cfg.max_frame
        );
        return Err(TaskError::new(ErrorKind::BadArgs, msg));
    }
    let header = ipc::encode_run(&h, d.payload.len()).map_err(|e| {
        TaskError::new(
            ErrorKind::BadArgs,
            format!("arguments too large to send: {e}"),
        )
    })?;
    Ok(RunFrame {
        h,
        header: header.to_vec(),
    })
}

impl RunFrame {
    /// The frame to queue: with `d`'s arguments, or naming where they are
    /// in the worker's arena (`at`).
    pub fn item(self, d: &Dispatch, at: Option<ipc::ShmRef>) -> OutItem {
        match at {
            Some(at) => OutItem::frame(ipc::encode_run_shm(&self.h, at).to_vec()),
            None => OutItem::with_payload(self.header, d.payload.clone()),
        }
    }
}

/// Whether `d` may be queued to a worker that has not said READY yet: only
/// a job without a time limit (soft or hard), whose clock would otherwise
/// run during the worker's start-up.
pub(super) fn may_wait_for_ready(d: &Dispatch, cfg: &PoolConfig) -> bool {
    let limits = d.limits.or(cfg);
    limits.soft.is_none() && limits.hard.is_none()
}

/// Where outcomes go, and their count.
pub(super) struct Delivery {
    pub stats: Stats,
    callbacks: CallbackSender,
    /// Callbacks of this turn of the event loop, handed to the callback
    /// thread together ([`Delivery::flush_callbacks`]).
    pending: Vec<CallbackJob>,
}

impl Delivery {
    pub fn new(callbacks: CallbackSender) -> Delivery {
        Delivery {
            stats: Stats::default(),
            callbacks,
            pending: Vec::new(),
        }
    }

    /// Hands the callbacks queued since the last call to the callback
    /// thread (one wake-up of it, if it sleeps).
    pub fn flush_callbacks(&mut self) {
        self.callbacks.send_all(&mut self.pending);
    }

    /// Whether `payload` is a well-formed piece of chunk `d`: the `n`
    /// result records of its items `at..at + n`, which follow the ones
    /// delivered.
    pub fn valid_piece(d: &Dispatch, at: u32, n: u32, payload: &[u8]) -> bool {
        let mut seen = 0u32;
        for rec in codec::result_records(payload) {
            if rec
                .and_then(|(status, _)| Status::from_u8(status))
                .is_none()
            {
                return false;
            }
            seen = seen.saturating_add(1);
        }
        seen == n && at == d.delivered && n > 0 && at.checked_add(n).is_some_and(|e| e <= d.count)
    }

    /// A worker's DONE for `d`: its one outcome (a single job), or a piece
    /// of a chunk ([`Delivery::valid_piece`], checked by the caller).
    pub fn done(&mut self, d: &mut Dispatch, at: u32, n: u32, status: u8, payload: Vec<u8>) {
        if d.count == 1 {
            let outcome = match Status::from_u8(status) {
                Some(status) => crate::plugin::outcome(status, payload),
                None => Err(TaskError::new(
                    ErrorKind::WorkerLost,
                    format!("the worker reported an unknown status {status}"),
                )),
            };
            self.deliver(d, 0, outcome);
            return;
        }
        let mut ok = 0u32;
        let mut failed: Vec<ErrorKind> = Vec::new();
        for rec in codec::result_records(&payload) {
            match rec.and_then(|(status, _)| Status::from_u8(status)) {
                Some(Status::Ok) => ok += 1,
                Some(status) => failed.extend(ErrorKind::from_status(status)),
                None => {}
            }
        }
        let cancelled = (at..at + n).any(|i| d.item_cancelled(i));
        match &d.reply {
            Reply::Stream { tx, first_index } if !cancelled => {
                self.stats.succeeded += u64::from(ok);
                for kind in failed {
                    *self.stats.failed.entry(kind).or_default() += 1;
                }
                let _ = tx.send(ChunkResult {
                    first_index: first_index + u64::from(at),
                    count: n,
                    body: ChunkBody::Records(payload),
                });
                d.delivered = at + n;
            }
            _ => {
                // Item by item: a slot per item (not produced by the API),
                // or items ended on request among them.
                for (i, r) in (at..).zip(codec::result_records(&payload)) {
                    let o = match r.and_then(|(st, b)| Some((Status::from_u8(st)?, b))) {
                        Some((st, b)) => crate::plugin::outcome(st, b.to_vec()),
                        None => Err(TaskError::new(
                            ErrorKind::WorkerLost,
                            "malformed batch result",
                        )),
                    };
                    self.deliver(d, i, o);
                }
            }
        }
    }

    /// Sends item `i` of a dispatch its outcome (or `terminated` if it was
    /// cancelled meanwhile) and counts it.
    pub fn deliver(&mut self, d: &mut Dispatch, i: u32, outcome: Outcome) {
        let outcome = if d.item_cancelled(i) {
            Err(TaskError::new(
                ErrorKind::Terminated,
                format!("job {} was terminated on request", d.first_job.0 + i as u64),
            ))
        } else {
            outcome
        };
        match &outcome {
            Ok(_) => self.stats.succeeded += 1,
            Err(e) => *self.stats.failed.entry(e.kind).or_default() += 1,
        }
        self.send_outcome(d, i, outcome);
    }

    fn send_outcome(&mut self, d: &mut Dispatch, i: u32, outcome: Outcome) {
        d.delivered = d.delivered.max(i + 1);
        match &d.reply {
            Reply::Slot(slot) => {
                if let Some((cb, outcome)) = slot.fill(outcome) {
                    self.pending.push(Box::new(move || cb(&outcome)));
                }
            }
            Reply::Stream { tx, first_index } => {
                let _ = tx.send(ChunkResult {
                    first_index: first_index + i as u64,
                    count: 1,
                    body: ChunkBody::One(outcome),
                });
            }
        }
    }

    /// Every item of `d` fails with `err`: one message for a stream chunk.
    pub fn fail_dispatch(&mut self, mut d: Dispatch, err: TaskError) {
        let remaining = d.count - d.delivered;
        *self.stats.failed.entry(err.kind).or_default() += remaining as u64;
        match &d.reply {
            Reply::Stream { tx, first_index } => {
                let first_index = first_index + d.delivered as u64;
                let _ = tx.send(ChunkResult {
                    first_index,
                    count: remaining,
                    body: ChunkBody::Failed(err),
                });
                d.delivered = d.count;
            }
            Reply::Slot(_) => {
                for i in d.delivered..d.count {
                    self.send_outcome(&mut d, i, Err(err.clone()));
                }
            }
        }
    }

    /// A progress report of item `i` of the running dispatch `d`.
    pub fn progress(&mut self, d: &Dispatch, i: u32, done: u64, total: u64) {
        match &d.reply {
            Reply::Slot(slot) => {
                if let Some(hook) = slot.progress.set(done, total) {
                    self.pending.push(Box::new(move || hook(done, total)));
                }
            }
            Reply::Stream { tx, first_index } => {
                let _ = tx.send(ChunkResult {
                    first_index: first_index + u64::from(i),
                    count: 0,
                    body: ChunkBody::Progress(done, total),
                });
            }
        }
    }
}

impl Drop for Delivery {
    /// What is queued still runs: the supervisor's last turn (a shutdown
    /// that ends every job) hands its callbacks over here.
    fn drop(&mut self) {
        self.flush_callbacks();
    }
}
