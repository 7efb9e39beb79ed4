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
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use billiard_plugin_api::Codec;
use serde::Serialize;

use super::config::Limits;
use super::job::{Dispatch, JobId, Outcome, Reply, ResultSlot};
use crate::error::{ErrorKind, TaskError};
use crate::retry::{Decision, RetryPolicy};

mod stream;
pub(crate) use stream::StreamRetry;

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
    /// the latest `MAX_KEPT_FAILURES`, 16).
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
            cancel_items: Vec::new(),
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
    fn schedule(&self, original: JobId, d: Dispatch, delay: Duration) -> Result<(), Box<Dispatch>> {
        {
            let mut w = lock(&self.state);
            if w.closed {
                return Err(Box::new(d));
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
}
