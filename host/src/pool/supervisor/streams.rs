//! Streams: the items a streaming task emits, on to the job's consumer,
//! and the workers not read while their consumer catches up (each
//! worker's [`Gate`](super::super::items::Gate) counts its item bytes on
//! the way).

use super::super::items::ItemBatch;
use super::super::job::{ChunkBody, ChunkResult, Reply, WorkerId};
use super::workers::Worker;

/// What became of a worker's items frame.
pub(super) enum Items {
    /// Forwarded (or dropped: a cancelled job, a job with no stream).
    Taken,
    /// Forwarded, and the consumer is behind: stop reading the worker.
    Pause,
    /// Items of a job it was not running: a protocol error.
    NotRunning,
}

/// The workers not read while their stream's consumer catches up.
#[derive(Default)]
pub(super) struct Streams {
    paused: Vec<WorkerId>,
}

impl Streams {
    pub fn is_paused(&self, wid: WorkerId) -> bool {
        self.paused.contains(&wid)
    }

    /// Stream items of the job `w` runs: on to the job's consumer as one
    /// batch.
    pub fn items(&mut self, w: &mut Worker, job: u64, count: u32, records: Vec<u8>) -> Items {
        let Some(d) = w.inflight.front() else {
            return Items::NotRunning;
        };
        if d.first_job.0 != job || d.count != 1 {
            return Items::NotRunning;
        }
        if d.cancelled {
            // Terminated on request: nothing more of it is delivered.
            return Items::Taken;
        }
        match &d.reply {
            Reply::Stream { tx, first_index } => {
                let credit = w.gate.take(records.len());
                let _ = tx.send(ChunkResult {
                    first_index: *first_index,
                    count: 0,
                    body: ChunkBody::Items(ItemBatch::new(count, d.codec, records, Some(credit))),
                });
            }
            // A single job's handle has nowhere to put items: they are
            // dropped (`apply_stream` runs as a stream).
            Reply::Slot(_) => return Items::Taken,
        }
        if w.gate.should_pause() {
            self.paused.push(w.id);
            return Items::Pause;
        }
        Items::Taken
    }

    /// The worker is read to its end now (it died): not paused any more.
    pub fn unpause(&mut self, w: &Worker) {
        self.paused.retain(|p| *p != w.id);
        w.gate.unpause();
    }

    /// The paused workers whose consumers caught up (or that are gone):
    /// taken off the list; the ones still there are read on.
    pub fn caught_up(&mut self, is_paused: impl Fn(WorkerId) -> Option<bool>) -> Vec<WorkerId> {
        let mut ready = Vec::new();
        self.paused.retain(|wid| match is_paused(*wid) {
            Some(true) => true,
            Some(false) => {
                ready.push(*wid);
                false
            }
            None => false,
        });
        ready
    }
}
