//! Jobs as the supervisor sees them, and how their outcomes reach callers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use billiard_plugin_api::{codec, Codec};

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
    /// The job's latest `ctx.progress` report.
    pub progress: super::items::ProgressCell,
    /// How a failure of the job is retried (`pool/retry.rs`); unset: never.
    retry: std::sync::OnceLock<super::retry::SlotRetry>,
}

struct SlotState {
    outcome: Option<Outcome>,
    callback: Option<Callback>,
    /// The tasks polling this slot as a future, by registration key (one
    /// per handle: a handle dropped while pending removes its own).
    wakers: Vec<(u64, Waker)>,
    next_key: u64,
    /// Threads blocked in [`ResultSlot::wait`]: `fill` notifies the
    /// condition variable only then (a notify is a syscall, paid per job
    /// by the supervisor otherwise: most slots are never waited on).
    waiting: u32,
}

impl ResultSlot {
    pub fn new(callback: Option<Callback>) -> Arc<ResultSlot> {
        Arc::new(ResultSlot {
            state: Mutex::new(SlotState {
                outcome: None,
                callback,
                wakers: Vec::new(),
                next_key: 1,
                waiting: 0,
            }),
            cv: Condvar::new(),
            progress: Default::default(),
            retry: std::sync::OnceLock::new(),
        })
    }

    /// Retries the job's failures as `r` says (set before it is submitted).
    pub(crate) fn set_retry(&self, r: super::retry::SlotRetry) {
        let _ = self.retry.set(r);
    }

    /// The job's attempts, once it was retried.
    pub fn attempts(&self) -> Option<super::retry::Attempts> {
        self.retry.get().and_then(|r| r.attempts())
    }

    /// Stores the outcome (the first one wins) and hands back the callback
    /// to run, if any.
    pub fn fill(&self, outcome: Outcome) -> Option<(Callback, Outcome)> {
        // A failure its policy retries is not the job's outcome: the next
        // attempt fills the slot (pool/retry.rs).
        if let Some(r) = self.retry.get() {
            if !self.is_ready() && r.intercept(&outcome) {
                return None;
            }
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.outcome.is_some() {
            return None;
        }
        let cb = st.callback.take().map(|cb| (cb, outcome.clone()));
        st.outcome = Some(outcome);
        let wakers = std::mem::take(&mut st.wakers);
        let waiting = st.waiting > 0;
        drop(st);
        if waiting {
            self.cv.notify_all();
        }
        for (_, w) in wakers {
            w.wake();
        }
        cb
    }

    /// The outcome (a copy) if known; else registers `cx`'s waker under
    /// `key` (assigned on the first pending poll) to be woken by `fill`.
    pub fn poll_outcome(&self, cx: &mut Context<'_>, key: &mut Option<u64>) -> Poll<Outcome> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = &st.outcome {
            return Poll::Ready(o.clone());
        }
        let k = match *key {
            Some(k) => k,
            None => {
                let k = st.next_key;
                st.next_key += 1;
                *key = Some(k);
                k
            }
        };
        match st.wakers.iter_mut().find(|(wk, _)| *wk == k) {
            Some((_, w)) if w.will_wake(cx.waker()) => {}
            Some((_, w)) => *w = cx.waker().clone(),
            None => st.wakers.push((k, cx.waker().clone())),
        }
        Poll::Pending
    }

    /// A handle that polled this slot went away: its waker is dropped now,
    /// not when the job ends.
    pub fn forget_waker(&self, key: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.wakers.retain(|(k, _)| *k != key);
    }

    /// Wakers registered and not yet woken (for tests).
    pub fn pending_wakers(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .wakers
            .len()
    }

    pub fn is_ready(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .outcome
            .is_some()
    }

    /// Waits for the outcome (up to `timeout`) and returns a copy. A
    /// timeout past what the clock can represent (`Duration::MAX`, the
    /// usual "no timeout") waits without one.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<Outcome> {
        let deadline = timeout.and_then(|t| crate::bounds::deadline(Instant::now(), t));
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(o) = &st.outcome {
                return Some(o.clone());
            }
            // Counted while blocked, under the lock `fill` takes.
            st.waiting = st.waiting.saturating_add(1);
            match deadline {
                None => st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        st.waiting = st.waiting.saturating_sub(1);
                        return None;
                    }
                    st = self
                        .cv
                        .wait_timeout(st, d.saturating_duration_since(now))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
            st.waiting = st.waiting.saturating_sub(1);
        }
    }
}

/// The sending side of a stream's results: a channel, and the waker of a
/// task polling the stream as a `futures_core::Stream` (armed only then, so
/// a blocking consumer pays one atomic load per chunk).
#[derive(Clone)]
pub struct ChunkSender {
    tx: crossbeam_channel::Sender<ChunkResult>,
    wake: Arc<WakeCell>,
    /// How the stream's failed items are retried (`pool/retry.rs`).
    retry: Option<Arc<super::retry::StreamRetry>>,
}

/// One task's waker, set by a pending `poll_next` and taken by the next
/// send.
#[derive(Default)]
pub struct WakeCell {
    armed: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl WakeCell {
    /// Registers the waker to wake at the next send.
    pub fn register(&self, waker: &Waker) {
        let mut w = self.waker.lock().unwrap_or_else(|e| e.into_inner());
        match &*w {
            Some(old) if old.will_wake(waker) => {}
            _ => *w = Some(waker.clone()),
        }
        self.armed.store(true, Ordering::SeqCst);
    }

    fn wake(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            let w = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(w) = w {
                w.wake();
            }
        }
    }
}

impl ChunkSender {
    pub fn new(tx: crossbeam_channel::Sender<ChunkResult>) -> ChunkSender {
        ChunkSender {
            tx,
            wake: Arc::default(),
            retry: None,
        }
    }

    /// This sender with its stream's retries (`None`: never retried).
    pub(crate) fn with_retry(mut self, retry: Option<Arc<super::retry::StreamRetry>>) -> Self {
        self.retry = retry;
        self
    }

    /// The stream's retries, if it has any.
    pub(crate) fn retry(&self) -> Option<&Arc<super::retry::StreamRetry>> {
        self.retry.as_ref()
    }

    /// Sends a chunk's outcomes and wakes a task waiting for them. With
    /// retries, failed items that are retried are held back (the rest of
    /// the chunk goes on in pieces) and a retried item's final outcome
    /// comes with its attempts.
    pub fn send(
        &self,
        chunk: ChunkResult,
    ) -> Result<(), crossbeam_channel::SendError<ChunkResult>> {
        let r = match &self.retry {
            None => self.tx.send(chunk),
            Some(retry) => {
                let mut r = Ok(());
                for piece in retry.route(chunk, self) {
                    if let Err(e) = self.tx.send(piece) {
                        r = Err(e);
                    }
                }
                r
            }
        };
        self.wake.wake();
        r
    }

    pub fn wake_cell(&self) -> &WakeCell {
        &self.wake
    }
}

/// Where the outcomes of a dispatch go.
#[derive(Clone)]
pub enum Reply {
    /// One job, one slot.
    Slot(Arc<ResultSlot>),
    /// A stream (map / imap): the whole dispatch's outcomes are sent as one
    /// [`ChunkResult`], items numbered from `first_index`.
    Stream { tx: ChunkSender, first_index: u64 },
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
    /// Stream items the job at `first_index` emitted (`count` is 0: they
    /// are not its outcome, which follows them).
    Items(super::items::ItemBatch),
    /// The job at `first_index` reported progress `(done, total)` (`count`
    /// is 0).
    Progress(u64, u64),
    /// The final outcome of an item that was retried, with its attempts
    /// (`count` 1; `pool/retry.rs`).
    Retried(Box<super::retry::Retried>),
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
    /// What the task sees as `ctx.attempt()`: the retries before this
    /// attempt, plus the times the pool resent it after a worker died
    /// before starting it.
    pub attempt: u32,
    /// Retries of the job before this attempt (`pool/retry.rs`).
    pub retries: u32,
    /// Set by `terminate_job` on a job already sent: deliver `terminated`
    /// instead of its result.
    pub cancelled: bool,
    /// Items whose outcome went out (always a prefix: 0..delivered).
    pub delivered: u32,
    /// Items of a chunk (by index) that `terminate_job` ended while it
    /// ran: each ends as `terminated` whatever it returns (boxed: nearly
    /// always none, and a dispatch stays small).
    pub cancel_items: Vec<u32>,
}

thread_local! {
    /// Why the pool died, set on the supervisor thread when it panicked:
    /// every dispatch dropped on that thread from then on (its queue, its
    /// in-flight jobs, the commands still in its channel) ends naming the
    /// panic instead of "dropped when the pool shut down".
    static LOST_BECAUSE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Makes every dispatch dropped on this thread from now on end with
/// "job N was lost: `why`" (see [`LOST_BECAUSE`]).
pub(crate) fn lose_dropped_jobs_because(why: String) {
    let _ = LOST_BECAUSE.try_with(|c| *c.borrow_mut() = Some(why));
}

impl Drop for Dispatch {
    /// The last line of "exactly one outcome": a dispatch dropped before
    /// all its outcomes went out (a command still in the channel when the
    /// supervisor stopped, a queue dropped at shutdown) reports the rest as
    /// `terminated`, so no caller ever waits forever.
    fn drop(&mut self) {
        let lost = LOST_BECAUSE.try_with(|c| c.borrow().clone()).ok().flatten();
        self.fail_rest(|job| {
            TaskError::new(
                crate::error::ErrorKind::Terminated,
                match &lost {
                    Some(why) => format!("job {job} was lost: {why}"),
                    None => format!("job {job} was dropped when the pool shut down"),
                },
            )
        });
    }
}

impl Dispatch {
    /// The jobs of a stream chunk as single-job dispatches (items numbered as
    /// in the chunk); `None` if the chunk cannot be split (a slot reply, or
    /// records that do not parse: then it goes out whole and fails whole).
    pub fn split_items(&mut self) -> Option<Vec<Dispatch>> {
        let d = self;
        let Reply::Stream { tx, first_index } = &d.reply else {
            return None;
        };
        let records: Option<Vec<&[u8]>> = codec::records(&d.payload).collect();
        let records = records?;
        if records.len() != d.count as usize {
            return None;
        }
        let items = records
            .into_iter()
            .enumerate()
            .map(|(i, args)| Dispatch {
                first_job: JobId(d.first_job.0 + i as u64),
                count: 1,
                plugin: d.plugin,
                task: d.task,
                gen: d.gen,
                codec: d.codec,
                payload: Arc::new(args.to_vec()),
                limits: d.limits,
                reply: Reply::Stream {
                    tx: tx.clone(),
                    first_index: first_index + i as u64,
                },
                attempt: d.attempt,
                retries: d.retries,
                cancelled: d.cancelled,
                delivered: 0,
                cancel_items: Vec::new(),
            })
            .collect();
        // The items carry every outcome now.
        d.delivered = d.count;
        Some(items)
    }

    /// Item `i` ends as `terminated` whatever it returns.
    pub fn item_cancelled(&self, i: u32) -> bool {
        self.cancelled || self.cancel_items.contains(&i)
    }

    /// Item `i` of the chunk is to end as `terminated`.
    pub fn cancel_item(&mut self, i: u32) {
        self.cancel_items.push(i);
    }

    /// Splits off the items `at..` of a chunk as a dispatch of their own
    /// (numbered as in the chunk; one item: its raw arguments), leaving
    /// `..at` here. `None` if it cannot be split (nothing past `at`, a slot
    /// reply, or records that do not parse): then it stays whole.
    pub fn split_off(&mut self, at: u32) -> Option<Dispatch> {
        if at <= self.delivered || at >= self.count {
            return None;
        }
        let Reply::Stream { tx, first_index } = &self.reply else {
            return None;
        };
        let records: Option<Vec<&[u8]>> = codec::records(&self.payload).collect();
        let records = records.filter(|r| r.len() == self.count as usize)?;
        let payload = |items: &[&[u8]]| match items {
            [one] => one.to_vec(),
            many => {
                let mut p = Vec::new();
                for r in many {
                    codec::push_record(&mut p, r);
                }
                p
            }
        };
        let (head, tail) = records.split_at(at as usize);
        let (head, tail) = (payload(head), payload(tail));
        let n = self.count - at;
        let rest = Dispatch {
            first_job: JobId(self.first_job.0.saturating_add(u64::from(at))),
            count: n,
            plugin: self.plugin,
            task: self.task,
            gen: self.gen,
            codec: self.codec,
            payload: Arc::new(tail),
            limits: self.limits,
            reply: Reply::Stream {
                tx: tx.clone(),
                first_index: first_index.saturating_add(u64::from(at)),
            },
            attempt: self.attempt,
            retries: self.retries,
            cancelled: self.cancelled,
            delivered: 0,
            cancel_items: self
                .cancel_items
                .iter()
                .filter_map(|&i| i.checked_sub(at))
                .collect(),
        };
        self.cancel_items.retain(|&i| i < at);
        self.count = at;
        self.payload = Arc::new(head);
        Some(rest)
    }

    /// Ends every item whose outcome has not gone out with `err(job
    /// number)`: a slot is filled (its callback dropped, not run: the pool
    /// is going away), a stream gets the rest of the chunk as one failure.
    pub fn fail_rest(&mut self, err: impl Fn(u64) -> TaskError) {
        if self.delivered >= self.count {
            return;
        }
        let i = self.delivered;
        let job = self.first_job.0.saturating_add(u64::from(i));
        self.delivered = self.count;
        match &self.reply {
            Reply::Slot(slot) => {
                let _ = slot.fill(Err(err(job)));
            }
            Reply::Stream { tx, first_index } => {
                let _ = tx.send(ChunkResult {
                    first_index: first_index.saturating_add(u64::from(i)),
                    count: self.count - i,
                    body: ChunkBody::Failed(err(job)),
                });
            }
        }
    }

    pub fn contains(&self, job: JobId) -> bool {
        job.0 >= self.first_job.0 && job.0 < self.first_job.0 + self.count as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use billiard_plugin_api::codec::push_record;

    fn chunk(reply: Reply, records: &[&[u8]], count: u32) -> Dispatch {
        let mut payload = Vec::new();
        for r in records {
            push_record(&mut payload, r);
        }
        Dispatch {
            first_job: JobId(10),
            count,
            plugin: 1,
            task: 2,
            gen: 4,
            codec: Codec::Json,
            payload: Arc::new(payload),
            limits: Limits::default(),
            reply,
            attempt: 1,
            retries: 2,
            cancelled: false,
            delivered: 0,
            cancel_items: Vec::new(),
        }
    }

    fn stream() -> Reply {
        let (tx, _rx) = crossbeam_channel::unbounded();
        Reply::Stream {
            tx: ChunkSender::new(tx),
            first_index: 100,
        }
    }

    #[test]
    fn a_stream_chunk_splits_into_its_items_numbered_as_in_the_chunk() {
        let mut d = chunk(stream(), &[b"1", b"22", b"333"], 3);
        let items = d.split_items().expect("a stream chunk splits");
        // The items carry every outcome now.
        assert_eq!(d.delivered, 3);
        assert_eq!(items.len(), 3);
        for (i, it) in items.iter().enumerate() {
            assert_eq!(it.first_job, JobId(10 + i as u64));
            assert_eq!(it.count, 1);
            assert_eq!(
                (it.plugin, it.task, it.gen, it.attempt, it.retries),
                (1, 2, 4, 1, 2)
            );
            assert_eq!(it.payload.len(), i + 1);
            assert_eq!(it.delivered, 0);
            let Reply::Stream { first_index, .. } = &it.reply else {
                panic!("item {i} is not a stream item");
            };
            assert_eq!(*first_index, 100 + i as u64);
        }
        // Records that do not match the count, or a slot: not split.
        assert!(chunk(stream(), &[b"1", b"22"], 3).split_items().is_none());
        let slot = Reply::Slot(ResultSlot::new(None));
        assert!(chunk(slot, &[b"1", b"2"], 2).split_items().is_none());
    }

    #[test]
    fn a_chunk_splits_off_its_tail_numbered_as_in_the_chunk() {
        let mut d = chunk(stream(), &[b"1", b"22", b"333", b"4444"], 4);
        d.cancel_item(0);
        d.cancel_item(3);
        let mut tail = d.split_off(2).expect("a stream chunk splits");
        assert_eq!((d.count, d.cancel_items.clone()), (2, vec![0]));
        assert_eq!((tail.first_job, tail.count), (JobId(12), 2));
        assert_eq!(tail.cancel_items, vec![1]);
        let recs: Vec<_> = codec::records(&tail.payload).flatten().collect();
        assert_eq!(recs, [&b"333"[..], b"4444"]);
        let Reply::Stream { first_index, .. } = &tail.reply else {
            panic!("not a stream");
        };
        assert_eq!(*first_index, 102);
        // What stays is its own items (one: its raw arguments).
        let recs: Vec<_> = codec::records(&d.payload).flatten().collect();
        assert_eq!(recs, [&b"1"[..], b"22"]);
        let last = tail.split_off(1).expect("splits");
        assert_eq!(tail.payload.as_slice(), b"333");
        assert_eq!((last.first_job, last.count), (JobId(13), 1));
        assert_eq!(last.payload.as_slice(), b"4444");
        // Nothing past the end, nothing delivered cut off.
        assert!(tail.split_off(1).is_none());
        d.delivered = 1;
        assert!(d.split_off(1).is_none());
        // The dispatches are dropped undelivered: they end as terminated.
    }
}
