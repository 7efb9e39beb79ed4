//! Streaming tasks' items and progress on their way from the supervisor to
//! the caller, with the back-pressure that keeps the host's memory flat.
//!
//! The supervisor forwards each ITEMS frame of a worker as one
//! [`ItemBatch`] and counts its bytes on the worker's [`Gate`]. Past
//! [`HIGH_WATER`] bytes not yet consumed it stops reading that worker's
//! socket: the worker's writes block, and so does the emitting task. The
//! consumer drops each batch once it has taken its items; the batch's
//! [`Credit`] gives its bytes back and, once the level is under
//! [`LOW_WATER`], wakes the supervisor to read again.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use billiard_plugin_api::{codec, Codec};

/// Item bytes of one worker in flight to the consumer past which the
/// supervisor stops reading that worker.
pub const HIGH_WATER: usize = 1 << 20;
/// ... and the level under which it reads again.
pub const LOW_WATER: usize = HIGH_WATER / 4;

/// One worker's count of item bytes handed to a consumer and not yet
/// consumed.
pub struct Gate {
    buffered: AtomicUsize,
    paused: AtomicBool,
    waker: Arc<mio::Waker>,
}

impl Gate {
    pub fn new(waker: Arc<mio::Waker>) -> Arc<Gate> {
        Arc::new(Gate {
            buffered: AtomicUsize::new(0),
            paused: AtomicBool::new(false),
            waker,
        })
    }

    /// Counts `bytes` more in flight; the returned credit gives them back.
    pub fn take(self: &Arc<Gate>, bytes: usize) -> Credit {
        self.buffered.fetch_add(bytes, Ordering::AcqRel);
        Credit {
            gate: self.clone(),
            bytes,
        }
    }

    /// Whether the supervisor should stop reading now; if so the gate is
    /// marked paused, and the credit that brings it under the low water
    /// mark wakes the supervisor.
    pub fn should_pause(&self) -> bool {
        if self.buffered.load(Ordering::Acquire) < HIGH_WATER {
            return false;
        }
        self.paused.store(true, Ordering::Release);
        // A credit returned between the load and the store saw no pause:
        // look again, so the pause is never left without a waker.
        if self.buffered.load(Ordering::Acquire) <= LOW_WATER {
            self.paused.store(false, Ordering::Release);
            return false;
        }
        true
    }

    /// True while the gate waits for its consumer.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Ends a pause without the consumer (the worker died: what it wrote
    /// is read regardless).
    pub fn unpause(&self) {
        self.paused.store(false, Ordering::Release);
    }
}

/// Bytes of one batch counted on a gate until dropped.
pub struct Credit {
    gate: Arc<Gate>,
    bytes: usize,
}

impl Drop for Credit {
    fn drop(&mut self) {
        let before = self.gate.buffered.fetch_sub(self.bytes, Ordering::AcqRel);
        let now = before.saturating_sub(self.bytes);
        if now <= LOW_WATER && self.gate.paused.swap(false, Ordering::AcqRel) {
            let _ = self.gate.waker.wake();
        }
    }
}

/// Items of one streaming job as its worker sent them: `count` records
/// `[u32 LE len][bytes]` in the job's codec.
pub struct ItemBatch {
    /// How many records `records` holds.
    pub count: u32,
    /// The codec of the job, and so of every item.
    pub codec: Codec,
    /// The records: `count` times `[u32 LE len][encoded item]`, in emission
    /// order (see [`ItemBatch::items`]).
    pub records: Vec<u8>,
    _credit: Option<Credit>,
}

impl ItemBatch {
    /// A batch of `count` records in `codec`. `credit`, when given, keeps the
    /// batch's bytes counted against its stream's buffer until the batch is
    /// dropped (the flow control that pauses a task whose items are not read).
    pub fn new(count: u32, codec: Codec, records: Vec<u8>, credit: Option<Credit>) -> ItemBatch {
        ItemBatch {
            count,
            codec,
            records,
            _credit: credit,
        }
    }

    /// The encoded items, in order (a malformed tail ends the walk).
    pub fn items(&self) -> impl Iterator<Item = &[u8]> {
        codec::records(&self.records)
            .take(self.count as usize)
            .map_while(|r| r)
    }
}

/// The latest progress of a job, and whom to tell.
#[derive(Default)]
pub struct ProgressCell {
    latest: Mutex<Option<(u64, u64)>>,
    hook: Mutex<Option<ProgressHook>>,
}

/// Runs with `(done, total)` on the pool's callback thread, at most every
/// ~50 ms per job plus each report of completion.
pub type ProgressHook = Arc<dyn Fn(u64, u64) + Send + Sync>;

impl ProgressCell {
    /// Records a report; returns the hook to run with it, if any.
    pub fn set(&self, done: u64, total: u64) -> Option<ProgressHook> {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some((done, total));
        self.hook.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn get(&self) -> Option<(u64, u64)> {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Installs the hook; it runs at once with the latest report, if any
    /// (one that arrived before the hook would otherwise go unseen).
    pub fn set_hook(&self, hook: ProgressHook) {
        *self.hook.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook.clone());
        if let Some((done, total)) = self.get() {
            hook(done, total);
        }
    }
}

/// What a running job of a stream tells before its outcome: handed to the
/// callback of [`RawStream::on_news`](super::RawStream::on_news) with the
/// job's stream index, as it arrives.
pub enum News<'a> {
    /// A batch of its stream items (in emission order).
    Items(&'a ItemBatch),
    /// Its latest progress report.
    Progress {
        /// The work done so far, in the task's own units.
        done: u64,
        /// The total work (0 if the task does not know).
        total: u64,
    },
}
