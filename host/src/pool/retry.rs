//! Retries in the local pool (issue 23 item 2): a job whose failure its
//! [`RetryPolicy`] retries runs again after the policy's delay, as a new
//! attempt, and its caller receives only the final outcome, with the
//! earlier failures beside it ([`Attempts`]).
//!
//! How it fits the pool without a thread per waiting retry, and without the
//! supervisor knowing about policies:
//!
//! - Outcomes are taken where they leave the pool: a job's `ResultSlot`
//!   ([`SlotRetry`], consulted by `ResultSlot::fill`) and a stream's
//!   `ChunkSender` ([`StreamRetry`], consulted by `ChunkSender::send`). A
//!   failure the policy retries is not delivered: a new dispatch of the same
//!   arguments (a fresh job id, `attempt` + 1, the same time limits, so each
//!   attempt gets its own) goes to the waiting room instead.
//! - The waiting room ([`Retries`]) is one per pool: a heap of due times
//!   the supervisor's event loop includes in its poll timeout and empties
//!   into its queue (`take_due`). A pool that is closed still runs the
//!   retries it holds (`join` waits for them); a terminated one ends them
//!   `terminated`; one that is dropped or dies ends them as it ends every
//!   queued job. A job with an id always gets an answer.
//! - A chunk of a stream comes back whole; its failed items that are
//!   retried are cut out of it (the rest go on at once, as pieces of the
//!   chunk) and each runs again as a job of its own. An ordered stream
//!   waits for the retried item, as for any slow one.
//! - `terminate_job` finds a job by its first id in whatever attempt it is:
//!   waiting (ended at once) or running (killed as usual).
//! - A job of a streaming task that emitted items is not retried: its items
//!   went out, and a retry would send them again.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use billiard_plugin_api::{codec, Codec, Status};
use serde::Serialize;

use super::config::Limits;
use super::job::{
    ChunkBody, ChunkResult, ChunkSender, Dispatch, JobId, Outcome, Reply, ResultSlot,
};
use crate::error::{ErrorKind, TaskError};
use crate::retry::{Decision, RetryPolicy};

/// How many of a job's earlier failures are kept (the latest ones);
/// [`Attempts::count`] counts them all.
pub const MAX_KEPT_FAILURES: usize = 16;

/// The longest message kept of an earlier failure, in bytes: what a task
/// said when it failed is kept for diagnosis, not a plugin's megabytes
/// times every retry (the final failure's message is kept whole).
pub const MAX_KEPT_MESSAGE: usize = 4096;

/// The attempts of a job that was retried: how many ran, and how the
/// earlier ones failed. A job that ran once has none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Attempts {
    /// Attempts made, the final one included (at least 2).
    pub count: u32,
    /// How the attempts before the final one failed, oldest first (at most
    /// the latest [`MAX_KEPT_FAILURES`]).
    pub failures: Vec<TaskError>,
}

/// How one job is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    policy: RetryPolicy,
    /// `max_retries` caps the retries a task asks for too (a caller's own
    /// policy); otherwise a task's `Directive::Retry` may raise it for its
    /// decision, as Celery's `retry(max_retries=...)` does.
    strict: bool,
}

impl Rule {
    /// A pool's default policy (a task's directive may raise the cap).
    pub(crate) fn default_of(policy: RetryPolicy) -> Arc<Rule> {
        Arc::new(Rule {
            policy,
            strict: false,
        })
    }

    /// A caller's policy for its own jobs: `max_retries` is a hard cap.
    pub(crate) fn exactly(policy: RetryPolicy) -> Arc<Rule> {
        Arc::new(Rule {
            policy,
            strict: true,
        })
    }

    /// A caller's own policy (task options are not consulted).
    pub(crate) fn is_strict(&self) -> bool {
        self.strict
    }

    /// The rule for a job of a task registered with `options`: under a
    /// pool's default, the task's retry options over it (as a Celery
    /// worker's defaults and a task's options combine); a caller's own
    /// policy stands as it is.
    pub(crate) fn for_task(self: &Arc<Self>, options: &crate::TaskOptions) -> Arc<Rule> {
        if self.strict {
            return self.clone();
        }
        let policy = options.retry_policy(&self.policy);
        if policy == self.policy {
            return self.clone();
        }
        Arc::new(Rule {
            policy,
            strict: false,
        })
    }

    /// The delay before retrying after `e`, the outcome of the attempt that
    /// followed `done` retries; `None`: `e` is final. A job ended on
    /// request (`terminated`) is never retried, whatever the policy lists.
    fn decide(&self, e: &TaskError, done: u32) -> Option<Duration> {
        if e.kind == ErrorKind::Terminated {
            return None;
        }
        match self.policy.decide(e, done) {
            Decision::Retry(_)
                if self.strict && self.policy.max_retries.is_some_and(|m| done >= m) =>
            {
                None
            }
            // A countdown from a plugin is bounded like every duration from
            // outside: the deadline must fit the clock.
            Decision::Retry(d) => Some(d.min(crate::bounds::MAX_DURATION)),
            Decision::Final { .. } => None,
        }
    }
}

/// What a job is apart from its reply: what a retry sends again.
#[derive(Clone)]
struct Spec {
    plugin: u16,
    task: u32,
    gen: u64,
    codec: Codec,
    payload: Arc<Vec<u8>>,
    limits: Limits,
}

impl Spec {
    /// True when a new attempt may be sent: its limits are in range (a job
    /// whose own limits were refused at submission ends with that refusal,
    /// never retried past the check).
    fn sendable(&self) -> bool {
        self.limits.check().is_ok()
    }

    fn of(d: &Dispatch) -> Spec {
        Spec {
            plugin: d.plugin,
            task: d.task,
            gen: d.gen,
            codec: d.codec,
            payload: d.payload.clone(),
            limits: d.limits,
        }
    }

    /// Retry number `retries` of the job, as job `id`.
    fn dispatch(&self, id: JobId, reply: Reply, retries: u32) -> Dispatch {
        Dispatch {
            first_job: id,
            count: 1,
            plugin: self.plugin,
            task: self.task,
            gen: self.gen,
            codec: self.codec,
            payload: self.payload.clone(),
            limits: self.limits,
            reply,
            // What the task sees as `ctx.attempt()`: 1 for the first retry.
            attempt: retries,
            retries,
            cancelled: false,
            delivered: 0,
        }
    }
}

/// Retries so far and the latest failures of one job.
#[derive(Default)]
struct Track {
    retries: u32,
    failures: VecDeque<TaskError>,
}

impl Track {
    fn record(&mut self, e: &TaskError) {
        self.retries = self.retries.saturating_add(1);
        if self.failures.len() == MAX_KEPT_FAILURES {
            self.failures.pop_front();
        }
        let mut e = e.clone();
        if e.message.len() > MAX_KEPT_MESSAGE {
            let mut cut = MAX_KEPT_MESSAGE;
            while !e.message.is_char_boundary(cut) {
                cut = cut.saturating_sub(1);
            }
            let all = e.message.len();
            e.message.truncate(cut);
            e.message.push_str(&format!("... ({all} bytes in all)"));
        }
        self.failures.push_back(e);
    }

    fn attempts(&self) -> Option<Attempts> {
        (self.retries > 0).then(|| Attempts {
            count: self.retries.saturating_add(1),
            failures: self.failures.iter().cloned().collect(),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The pool's waiting room: attempts waiting for their delay, and which
/// attempt each retried job is at. Shared by the pool (which makes the
/// interceptors), the interceptors (which fill it) and the supervisor
/// (which empties it into its queue). No lock of it is held while a
/// dispatch is failed, so an outcome it sends may come back here.
pub(crate) struct Retries {
    state: Mutex<Waiting>,
    /// Wakes the supervisor when a retry is put in from another thread.
    waker: OnceLock<Arc<mio::Waker>>,
    /// The pool's job numbers (every attempt gets its own).
    next_job: Arc<AtomicU64>,
}

#[derive(Default)]
struct Waiting {
    /// Due times of the waiting attempts, by attempt id (an entry whose
    /// attempt was cancelled is skipped when it comes up).
    due: BinaryHeap<Reverse<(Instant, u64)>>,
    /// The waiting attempts by id: the job's first id and the dispatch.
    jobs: HashMap<u64, (JobId, Dispatch)>,
    /// Jobs retried and not finished: first id → current attempt's id.
    current: HashMap<JobId, JobId>,
    /// The pool is going away: no more retries.
    closed: bool,
    /// Retries scheduled over the pool's life.
    scheduled: u64,
}

impl Retries {
    pub(crate) fn new(next_job: Arc<AtomicU64>) -> Arc<Retries> {
        Arc::new(Retries {
            state: Mutex::default(),
            waker: OnceLock::new(),
            next_job,
        })
    }

    pub(crate) fn set_waker(&self, waker: Arc<mio::Waker>) {
        let _ = self.waker.set(waker);
    }

    fn next_id(&self) -> JobId {
        JobId(self.next_job.fetch_add(1, Ordering::Relaxed))
    }

    /// Puts `d`, the next attempt of job `original`, in the waiting room
    /// for `delay`; gives it back once the pool is going away.
    fn schedule(&self, original: JobId, d: Dispatch, delay: Duration) -> Result<(), Dispatch> {
        {
            let mut w = lock(&self.state);
            if w.closed {
                return Err(d);
            }
            let at = crate::bounds::saturating_deadline(Instant::now(), delay);
            let id = d.first_job;
            w.due.push(Reverse((at, id.0)));
            w.jobs.insert(id.0, (original, d));
            w.current.insert(original, id);
            w.scheduled = w.scheduled.saturating_add(1);
        }
        if let Some(waker) = self.waker.get() {
            let _ = waker.wake();
        }
        Ok(())
    }

    /// No more retries (the pool stopped forking): attempts already waiting
    /// still come out of `take_due`, and then fail as the pool says.
    pub(crate) fn stop(&self) {
        lock(&self.state).closed = true;
    }

    /// Job `original` has its final outcome.
    fn settle(&self, original: JobId) {
        lock(&self.state).current.remove(&original);
    }

    /// The supervisor's poll timeout with the next retry's due time in it.
    pub(crate) fn poll_timeout(&self, timeout: Option<Duration>) -> Option<Duration> {
        let next = lock(&self.state)
            .due
            .peek()
            .map(|Reverse((at, _))| at.saturating_duration_since(Instant::now()));
        match (timeout, next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The attempts whose delay is over, oldest due first.
    pub(crate) fn take_due(&self) -> Vec<Dispatch> {
        let now = Instant::now();
        let mut w = lock(&self.state);
        let mut out = Vec::new();
        while let Some(&Reverse((at, id))) = w.due.peek() {
            if at > now {
                break;
            }
            w.due.pop();
            if let Some((_, d)) = w.jobs.remove(&id) {
                out.push(d);
            }
        }
        out
    }

    /// No attempt is waiting (a closed pool may finish).
    pub(crate) fn is_idle(&self) -> bool {
        lock(&self.state).jobs.is_empty()
    }

    /// Attempts waiting, and retries scheduled over the pool's life.
    pub(crate) fn counts(&self) -> (u64, u64) {
        let w = lock(&self.state);
        (w.jobs.len() as u64, w.scheduled)
    }

    /// The id of the attempt job `job` (its first id, or any attempt's) is
    /// at now: itself unless it is being retried.
    pub(crate) fn current(&self, job: JobId) -> JobId {
        lock(&self.state).current.get(&job).copied().unwrap_or(job)
    }

    /// Ends job `job` if its next attempt is waiting (`terminated`); false
    /// when it is not waiting (running, queued, finished or unknown).
    pub(crate) fn cancel(&self, job: JobId) -> bool {
        let taken = {
            let mut w = lock(&self.state);
            let attempt = w.current.get(&job).copied().unwrap_or(job);
            w.jobs.remove(&attempt.0)
        };
        let Some((original, mut d)) = taken else {
            return false;
        };
        let n = d.retries;
        d.fail_rest(|_| {
            TaskError::new(
                ErrorKind::Terminated,
                format!(
                    "job {} was terminated on request while it waited for its retry (attempt {})",
                    original.0,
                    n.saturating_add(1)
                ),
            )
        });
        true
    }

    /// The pool is going away: every waiting attempt ends now (with
    /// `terminated` saying `why`, else as a dropped job ends), and later
    /// failures are final.
    pub(crate) fn close(&self, why: Option<&str>) {
        let taken: Vec<(JobId, Dispatch)> = {
            let mut w = lock(&self.state);
            w.closed = true;
            w.due.clear();
            w.jobs.drain().map(|(_, v)| v).collect()
        };
        for (original, mut d) in taken {
            match why {
                Some(why) => d.fail_rest(|_| {
                    TaskError::new(
                        ErrorKind::Terminated,
                        format!("{why} while job {} waited for its retry", original.0),
                    )
                }),
                None => drop(d),
            }
        }
    }
}

/// The retry side of one job's `ResultSlot` (`apply*`): consulted by
/// `ResultSlot::fill` before the outcome is stored.
pub(crate) struct SlotRetry {
    retries: Weak<Retries>,
    rule: Arc<Rule>,
    spec: Spec,
    /// The job's first id (the caller's handle).
    original: JobId,
    /// The slot itself, for the next attempt's reply.
    slot: Weak<ResultSlot>,
    track: Mutex<Track>,
}

impl SlotRetry {
    /// The retry side of job `d`, whose reply is `slot`.
    pub(crate) fn new(
        retries: &Arc<Retries>,
        rule: Arc<Rule>,
        d: &Dispatch,
        slot: &Arc<ResultSlot>,
    ) -> SlotRetry {
        SlotRetry {
            retries: Arc::downgrade(retries),
            rule,
            spec: Spec::of(d),
            original: d.first_job,
            slot: Arc::downgrade(slot),
            track: Mutex::default(),
        }
    }

    /// True when `outcome` is a failure that is retried: the slot stays
    /// empty and the next attempt waits for its delay. Otherwise the
    /// outcome is final.
    pub(crate) fn intercept(&self, outcome: &Outcome) -> bool {
        let mut t = lock(&self.track);
        let retried = t.retries > 0;
        if let (Err(e), true) = (outcome, self.spec.sendable()) {
            if let Some(delay) = self.rule.decide(e, t.retries) {
                if let (Some(retries), Some(slot)) = (self.retries.upgrade(), self.slot.upgrade()) {
                    let n = t.retries.saturating_add(1);
                    let id = retries.next_id();
                    let d = self.spec.dispatch(id, Reply::Slot(slot), n);
                    match retries.schedule(self.original, d, delay) {
                        Ok(()) => {
                            tracing::debug!(
                                "job {} failed ({}); retry {n} in {delay:?} as job {}",
                                self.original.0,
                                e.kind,
                                id.0
                            );
                            t.record(e);
                            return true;
                        }
                        Err(mut d) => {
                            // Not sent: it has no outcome to give.
                            d.delivered = d.count;
                        }
                    }
                }
            }
        }
        drop(t);
        if retried {
            if let Some(retries) = self.retries.upgrade() {
                retries.settle(self.original);
            }
        }
        false
    }

    /// The job's attempts, once it was retried.
    pub(crate) fn attempts(&self) -> Option<Attempts> {
        lock(&self.track).attempts()
    }
}

/// The final outcome of a stream item that was retried, with its
/// attempts (`ChunkBody::Retried`).
pub struct Retried {
    pub(crate) outcome: Outcome,
    pub(crate) attempts: Attempts,
}

/// The retry side of a stream's `ChunkSender` (`imap*`, `map*`, `run`):
/// consulted by `ChunkSender::send` for every chunk of outcomes.
pub(crate) struct StreamRetry {
    retries: Weak<Retries>,
    /// The stream's rule, before each task's options (see `Rule::for_task`).
    rule: Arc<Rule>,
    state: Mutex<StreamState>,
}

#[derive(Default)]
struct StreamState {
    /// Chunks sent and not wholly answered, by first index.
    chunks: BTreeMap<u64, Chunk>,
    /// Items being retried, by index.
    items: HashMap<u64, Item>,
    /// Items whose job emitted stream items (never retried).
    emitted: HashSet<u64>,
}

struct Chunk {
    count: u32,
    left: u32,
    first_job: JobId,
    spec: Spec,
    rule: Arc<Rule>,
}

struct Item {
    original: JobId,
    spec: Spec,
    rule: Arc<Rule>,
    track: Track,
}

impl StreamRetry {
    pub(crate) fn new(retries: &Arc<Retries>, rule: Arc<Rule>) -> Arc<StreamRetry> {
        Arc::new(StreamRetry {
            retries: Arc::downgrade(retries),
            rule,
            state: Mutex::default(),
        })
    }

    /// The stream's rule (before each task's options).
    pub(crate) fn rule(&self) -> &Arc<Rule> {
        &self.rule
    }

    /// Keeps what it takes to run again the items of `d`, a chunk whose
    /// items are numbered from `first_index` and retried by `rule`.
    pub(crate) fn register(&self, first_index: u64, d: &Dispatch, rule: Arc<Rule>) {
        lock(&self.state).chunks.insert(
            first_index,
            Chunk {
                count: d.count,
                left: d.count,
                first_job: d.first_job,
                spec: Spec::of(d),
                rule,
            },
        );
    }

    /// The pieces of `chunk` to deliver now: all of it, or what is left
    /// once the failed items that are retried are cut out; for an item that
    /// was retried, its final outcome with its attempts (or nothing while
    /// it is retried again).
    pub(crate) fn route(&self, chunk: ChunkResult, tx: &ChunkSender) -> Vec<ChunkResult> {
        let first = chunk.first_index;
        match &chunk.body {
            ChunkBody::Items(_) => {
                lock(&self.state).emitted.insert(first);
                return vec![chunk];
            }
            ChunkBody::Progress(..) | ChunkBody::Retried(_) => return vec![chunk],
            _ if chunk.count == 0 => return vec![chunk],
            _ => {}
        }
        let mut st = lock(&self.state);
        if chunk.count == 1 && st.items.contains_key(&first) {
            return self.next_attempt(&mut st, chunk, tx);
        }
        let Some((&key, entry)) = st.chunks.range_mut(..=first).next_back() else {
            return vec![chunk];
        };
        let offset = first.saturating_sub(key);
        if offset >= u64::from(entry.count) {
            return vec![chunk];
        }
        entry.left = entry.left.saturating_sub(chunk.count);
        let (first_job, spec, whole) = (entry.first_job, entry.spec.clone(), entry.count);
        let rule = entry.rule.clone();
        if entry.left == 0 {
            st.chunks.remove(&key);
        }
        if !st.emitted.is_empty() {
            for i in 0..u64::from(chunk.count) {
                if st.emitted.remove(&first.saturating_add(i)) {
                    // Its items went out: its failure is final.
                    return vec![chunk];
                }
            }
        }
        if let ChunkBody::Records(buf) = &chunk.body {
            // Cut only a well-formed batch (the supervisor sends no other).
            let mut n = 0u32;
            let mut whole = true;
            for rec in codec::result_records(buf) {
                whole &= rec.is_some();
                n = n.saturating_add(1);
            }
            if !whole || n != chunk.count {
                return vec![chunk];
            }
        }
        let failed = failed_items(&chunk.body, chunk.count);
        if failed.is_empty() || !spec.sendable() {
            return vec![chunk];
        }
        let Some(retries) = self.retries.upgrade() else {
            return vec![chunk];
        };
        let args: Vec<&[u8]> = if whole == 1 {
            vec![spec.payload.as_slice()]
        } else {
            codec::records(&spec.payload).map_while(|r| r).collect()
        };
        let mut cut = Vec::new();
        for (k, e) in failed {
            let Some(delay) = rule.decide(&e, 0) else {
                continue;
            };
            let index = first.saturating_add(u64::from(k));
            let at = index.saturating_sub(key);
            let Some(a) = usize::try_from(at).ok().and_then(|i| args.get(i)) else {
                continue;
            };
            let item_spec = Spec {
                payload: Arc::new(a.to_vec()),
                ..spec.clone()
            };
            let original = JobId(first_job.0.saturating_add(at));
            let id = retries.next_id();
            let d = item_spec.dispatch(id, reply(tx, index), 1);
            match retries.schedule(original, d, delay) {
                Ok(()) => {
                    tracing::debug!(
                        "stream item {index} (job {}) failed ({}); retry 1 in {delay:?} as job {}",
                        original.0,
                        e.kind,
                        id.0
                    );
                    let mut track = Track::default();
                    track.record(&e);
                    st.items.insert(
                        index,
                        Item {
                            original,
                            spec: item_spec,
                            rule: rule.clone(),
                            track,
                        },
                    );
                    cut.push(k);
                }
                Err(mut d) => d.delivered = d.count,
            }
        }
        drop(st);
        if cut.is_empty() {
            return vec![chunk];
        }
        split(chunk, &cut)
    }

    /// The outcome of a retry of the item at `chunk.first_index`.
    fn next_attempt(
        &self,
        st: &mut StreamState,
        chunk: ChunkResult,
        tx: &ChunkSender,
    ) -> Vec<ChunkResult> {
        let index = chunk.first_index;
        let outcome = match chunk.body {
            ChunkBody::One(o) => o,
            ChunkBody::Failed(e) => Err(e),
            ChunkBody::Records(buf) => match codec::result_records(&buf).next().flatten() {
                Some((status, bytes)) => match Status::from_u8(status) {
                    Some(s) => crate::plugin::outcome(s, bytes.to_vec()),
                    None => Err(TaskError::new(
                        ErrorKind::WorkerLost,
                        format!("unknown status {status}"),
                    )),
                },
                None => Err(TaskError::new(
                    ErrorKind::WorkerLost,
                    "the worker returned a truncated batch result",
                )),
            },
            other => {
                return vec![ChunkResult {
                    first_index: index,
                    count: chunk.count,
                    body: other,
                }]
            }
        };
        let emitted = st.emitted.remove(&index);
        let retries = self.retries.upgrade();
        if let (Err(e), Some(retries), false) = (&outcome, &retries, emitted) {
            if let Some(item) = st.items.get_mut(&index) {
                if let Some(delay) = item.rule.decide(e, item.track.retries) {
                    let n = item.track.retries.saturating_add(1);
                    let id = retries.next_id();
                    let d = item.spec.dispatch(id, reply(tx, index), n);
                    match retries.schedule(item.original, d, delay) {
                        Ok(()) => {
                            tracing::debug!(
                                "stream item {index} (job {}) failed ({}); retry {n} in {delay:?} as job {}",
                                item.original.0,
                                e.kind,
                                id.0
                            );
                            item.track.record(e);
                            return Vec::new();
                        }
                        Err(mut d) => d.delivered = d.count,
                    }
                }
            }
        }
        let Some(item) = st.items.remove(&index) else {
            return Vec::new();
        };
        if let Some(retries) = retries {
            retries.settle(item.original);
        }
        vec![ChunkResult {
            first_index: index,
            count: 1,
            body: ChunkBody::Retried(Box::new(Retried {
                outcome,
                attempts: item.track.attempts().unwrap_or_default(),
            })),
        }]
    }
}

/// The reply of a retry of item `index`: the stream of `tx`, through a
/// sender that routes its outcome here again.
fn reply(tx: &ChunkSender, index: u64) -> Reply {
    Reply::Stream {
        tx: tx.clone(),
        first_index: index,
    }
}

/// The items of a chunk's outcomes that failed: their offset in the chunk
/// and their error (a task's `Failure` detail decoded, so its directive
/// counts).
fn failed_items(body: &ChunkBody, count: u32) -> Vec<(u32, TaskError)> {
    match body {
        ChunkBody::One(Err(e)) => vec![(0, e.clone())],
        ChunkBody::Failed(e) => (0..count).map(|k| (k, e.clone())).collect(),
        ChunkBody::Records(buf) => {
            let mut out = Vec::new();
            for (k, rec) in (0..count).zip(codec::result_records(buf)) {
                let Some((status, bytes)) = rec else { break };
                match Status::from_u8(status) {
                    Some(Status::Ok) => {}
                    Some(s) => {
                        if let Err(e) = crate::plugin::outcome(s, bytes.to_vec()) {
                            out.push((k, e));
                        }
                    }
                    None => out.push((
                        k,
                        TaskError::new(ErrorKind::WorkerLost, format!("unknown status {status}")),
                    )),
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

/// `chunk` without the items at offsets `cut` (ascending): the runs
/// between them, each as a chunk of its own.
fn split(chunk: ChunkResult, cut: &[u32]) -> Vec<ChunkResult> {
    let count = chunk.count;
    // Byte ranges of each record, for cutting a batch result.
    let bounds: Vec<(usize, usize)> = match &chunk.body {
        ChunkBody::Records(buf) => {
            let mut at = 0usize;
            let mut v = Vec::new();
            for rec in codec::result_records(buf) {
                let Some((_, bytes)) = rec else { break };
                let end = at.saturating_add(5).saturating_add(bytes.len());
                v.push((at, end));
                at = end;
            }
            v
        }
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    let mut start = 0u32;
    let ends = cut.iter().copied().chain(std::iter::once(count));
    for stop in ends {
        if stop > start {
            let body = match &chunk.body {
                ChunkBody::Failed(e) => Some(ChunkBody::Failed(e.clone())),
                ChunkBody::Records(buf) => {
                    let a = bounds.get(start as usize).map(|b| b.0);
                    let last = (stop as usize).saturating_sub(1);
                    let b = bounds.get(last).map(|b| b.1);
                    match (a, b) {
                        (Some(a), Some(b)) => buf.get(a..b).map(|r| ChunkBody::Records(r.to_vec())),
                        _ => None,
                    }
                }
                _ => None,
            };
            if let Some(body) = body {
                out.push(ChunkResult {
                    first_index: chunk.first_index.saturating_add(u64::from(start)),
                    count: stop.saturating_sub(start),
                    body,
                });
            }
        }
        start = stop.saturating_add(1);
    }
    out
}

/// A policy's durations in range ([`crate::bounds::MAX_DURATION`]), else
/// the error naming the setting (what `PoolBuilder::build` refuses).
pub(crate) fn check_policy(p: &RetryPolicy) -> Result<(), String> {
    use crate::bounds::check_duration;
    let mut each = vec![("retry_policy's delay", p.delay)];
    if let Some(b) = p.backoff {
        each.push(("retry_policy's backoff factor", b.factor));
        each.push(("retry_policy's backoff max", b.max));
    }
    for (what, d) in each {
        check_duration(what, d).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Which policy a job or a stream follows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Choice {
    /// The pool's default ([`crate::PoolBuilder::retry_policy`]), if any.
    #[default]
    Pool,
    /// Never retried.
    Off,
    /// This policy, `max_retries` a hard cap.
    Exactly(RetryPolicy),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Directive, FailureDetail};

    fn records(items: &[(Status, &[u8])]) -> Vec<u8> {
        let mut buf = Vec::new();
        for (st, b) in items {
            buf.push(*st as u8);
            buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
            buf.extend_from_slice(b);
        }
        buf
    }

    fn policy(max: u32) -> RetryPolicy {
        RetryPolicy {
            on: vec![ErrorKind::Panic],
            max_retries: Some(max),
            delay: Duration::from_millis(5),
            backoff: None,
        }
    }

    fn asks(max_retries: Option<u32>) -> TaskError {
        TaskError::new(ErrorKind::TaskError, "again").with_detail(FailureDetail {
            exception: None,
            directive: Some(Directive::Retry {
                countdown: Some(Duration::from_secs(u64::MAX)),
                max_retries,
            }),
        })
    }

    #[test]
    fn k23_a_callers_cap_is_hard_a_pools_default_is_celerys() {
        let panic = TaskError::new(ErrorKind::Panic, "boom");
        let strict = Rule::exactly(policy(2));
        assert_eq!(strict.decide(&panic, 0), Some(Duration::from_millis(5)));
        assert_eq!(strict.decide(&panic, 2), None);
        // A task asking for more retries than the caller allows gets none.
        assert_eq!(strict.decide(&asks(Some(10)), 2), None);
        // Its own lower cap counts.
        assert_eq!(strict.decide(&asks(Some(1)), 1), None);
        // A pool's default lets the task raise the cap (Celery's
        // retry(max_retries=...)); a countdown past the bound is bounded.
        let default = Rule::default_of(policy(2));
        assert_eq!(
            default.decide(&asks(Some(10)), 5),
            Some(crate::bounds::MAX_DURATION)
        );
        // Kinds not listed, and `terminated` whatever is listed, are final.
        assert_eq!(
            default.decide(&TaskError::new(ErrorKind::BadArgs, "x"), 0),
            None
        );
        let all = Rule::exactly(RetryPolicy {
            on: ErrorKind::ALL.to_vec(),
            ..policy(5)
        });
        assert_eq!(
            all.decide(&TaskError::new(ErrorKind::Terminated, "x"), 0),
            None
        );
    }

    #[test]
    fn k23_attempts_keep_the_latest_failures() {
        let mut t = Track::default();
        assert_eq!(t.attempts(), None);
        for i in 0..40 {
            t.record(&TaskError::new(ErrorKind::Panic, format!("{i}")));
        }
        let a = t.attempts().unwrap();
        assert_eq!(a.count, 41);
        assert_eq!(a.failures.len(), MAX_KEPT_FAILURES);
        assert_eq!(a.failures[0].message, "24");
        assert_eq!(a.failures[MAX_KEPT_FAILURES - 1].message, "39");
        // A huge message is cut (on a character boundary), saying so.
        let mut t = Track::default();
        let huge = "é".repeat(MAX_KEPT_MESSAGE);
        t.record(&TaskError::new(ErrorKind::TaskError, huge.clone()));
        let kept = &t.attempts().unwrap().failures[0].message;
        assert!(kept.len() < MAX_KEPT_MESSAGE + 40, "{}", kept.len());
        assert!(kept.starts_with("éé"));
        assert!(
            kept.ends_with(&format!("... ({} bytes in all)", huge.len())),
            "{kept}"
        );
    }

    #[test]
    fn k23_a_chunk_without_its_retried_items_keeps_the_rest_in_order() {
        let buf = records(&[
            (Status::Ok, b"1"),
            (Status::Panic, b"boom"),
            (Status::Ok, b"333"),
            (Status::Ok, b"4"),
            (Status::TaskError, b"bad"),
        ]);
        let chunk = ChunkResult {
            first_index: 10,
            count: 5,
            body: ChunkBody::Records(buf),
        };
        let failed: Vec<(u32, ErrorKind)> = failed_items(&chunk.body, 5)
            .into_iter()
            .map(|(k, e)| (k, e.kind))
            .collect();
        assert_eq!(failed, [(1, ErrorKind::Panic), (4, ErrorKind::TaskError)]);
        let pieces = split(chunk, &[1, 4]);
        let got: Vec<(u64, u32, Vec<u8>)> = pieces
            .into_iter()
            .map(|p| match p.body {
                ChunkBody::Records(b) => (p.first_index, p.count, b),
                _ => panic!("records expected"),
            })
            .collect();
        assert_eq!(
            got,
            [
                (10, 1, records(&[(Status::Ok, b"1")])),
                (12, 2, records(&[(Status::Ok, b"333"), (Status::Ok, b"4")])),
            ]
        );
        // A chunk that failed whole keeps its other items' failure.
        let whole = ChunkResult {
            first_index: 0,
            count: 4,
            body: ChunkBody::Failed(TaskError::new(ErrorKind::WorkerLost, "gone")),
        };
        let pieces = split(whole, &[0, 2]);
        let got: Vec<(u64, u32)> = pieces.iter().map(|p| (p.first_index, p.count)).collect();
        assert_eq!(got, [(1, 1), (3, 1)]);
    }
}
