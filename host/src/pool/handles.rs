//! What callers hold: the handles of submitted jobs (`RawResult`,
//! `AsyncResult`, `MapResult`), per-job options, and the decoding of
//! typed results.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use billiard_plugin_api::{codec, Codec};
use serde::de::DeserializeOwned;

use super::job::{self, ResultSlot};
use super::{gone, retry, stream, Attempts, JobId, Limits, Outcome, Pool, TaskRef};
use crate::error::{ErrorKind, TaskError};

/// Decodes a bincode outcome into the caller's type.
pub(crate) fn decode_outcome<R: DeserializeOwned>(o: Outcome) -> Result<R, TaskError> {
    decode_outcome_bytes(&o?)
}

/// Decodes a bincode result into the caller's type.
/// A result that does not decode is the caller's error (it asked for
/// another type than the task returns), not the task's.
pub(crate) fn decode_outcome_bytes<R: DeserializeOwned>(bytes: &[u8]) -> Result<R, TaskError> {
    codec::decode(Codec::Bincode, bytes).map_err(|_| {
        TaskError::new(
            ErrorKind::BadArgs,
            format!(
                "the result does not decode as `{}`, the type asked for",
                std::any::type_name::<R>()
            ),
        )
    })
}

/// What a typed call and its task expect, by type name: a mismatch then
/// says which types disagree instead of showing the codec's words, and a
/// result that does not decode as the caller's `R` is the caller's error
/// (`bad_args`: the caller's types do not fit the task's), not the task's
/// (issue 28, item 6).
#[derive(Debug, Clone)]
pub(crate) struct Typed {
    /// `math.square(x: u64) -> u64`; empty when the task is not known here.
    signature: String,
    /// The task's parameter types, `(u64)`.
    takes: String,
    /// The task's return type as written in its source.
    returns: String,
    /// The caller's argument tuple type.
    given: &'static str,
    /// The caller's result type.
    asked: &'static str,
}

impl Typed {
    pub(crate) fn new<A, R>(pool: &Pool, target: TaskRef) -> Typed {
        let live = pool.generation();
        let found = live.plugins.get(usize::from(target.plugin)).and_then(|p| {
            let spec = p.tasks.get(usize::try_from(target.task).ok()?)?;
            Some((p.name.as_str(), spec))
        });
        let (signature, takes, returns) = match found {
            Some((plugin, spec)) => (
                format!("{plugin}.{}", spec.signature()),
                spec.takes(),
                spec.ret.clone(),
            ),
            None => Default::default(),
        };
        Typed {
            signature,
            takes,
            returns,
            given: std::any::type_name::<A>(),
            asked: std::any::type_name::<R>(),
        }
    }

    /// Decodes an outcome as `R`, naming the types on a mismatch.
    pub(crate) fn decode<R: DeserializeOwned>(&self, o: Outcome) -> Result<R, TaskError> {
        self.decode_bytes(&o.map_err(|e| self.explain(e))?)
    }

    /// Decodes a result as `R`, naming the types on a mismatch.
    pub(crate) fn decode_bytes<R: DeserializeOwned>(&self, bytes: &[u8]) -> Result<R, TaskError> {
        codec::decode(Codec::Bincode, bytes).map_err(|_| {
            TaskError::new(
                ErrorKind::BadArgs,
                format!(
                    "the result was asked for as `{}`, but `{}` returns `{}`; \
                     ask for a type that decodes from it",
                    self.asked, self.signature, self.returns
                ),
            )
        })
    }

    /// A `bad_args` error from the task's argument decoding, reworded to
    /// say what the task takes and what it was given.
    pub(crate) fn explain(&self, e: TaskError) -> TaskError {
        if self.signature.is_empty() {
            return e;
        }
        crate::plugin::explain_bad_args(e, &self.signature, &self.takes, self.given)
    }
}

/// Per-job options for `apply_async_with`.
pub struct JobOptions<R> {
    /// Time limits for this job; unset ones fall back to the pool's.
    pub limits: Limits,
    pub(super) on_success: Option<Box<dyn FnOnce(R) + Send>>,
    pub(super) on_error: Option<Box<dyn FnOnce(TaskError) + Send>>,
    pub(super) retry: retry::Choice,
}

impl<R> Default for JobOptions<R> {
    fn default() -> Self {
        JobOptions {
            limits: Limits::default(),
            on_success: None,
            on_error: None,
            retry: retry::Choice::Pool,
        }
    }
}

impl<R> JobOptions<R> {
    /// This job's soft time limit (see [`PoolBuilder::soft_time_limit`](super::PoolBuilder::soft_time_limit)).
    pub fn soft_time_limit(mut self, d: Duration) -> Self {
        self.limits.soft = Some(d);
        self
    }
    /// This job's hard time limit (see [`PoolBuilder::time_limit`](super::PoolBuilder::time_limit)).
    pub fn time_limit(mut self, d: Duration) -> Self {
        self.limits.hard = Some(d);
        self
    }
    /// Retries this job as `policy` says instead of by the pool's default
    /// (see [`PoolBuilder::retry_policy`](super::PoolBuilder::retry_policy)); here `max_retries` is a hard
    /// cap, also on the retries the task asks for. The callbacks run once,
    /// with the final outcome. A duration past
    /// [`crate::bounds::MAX_DURATION`] ends the job `bad_args`.
    pub fn retry_policy(mut self, policy: crate::retry::RetryPolicy) -> Self {
        self.retry = retry::Choice::Exactly(policy);
        self
    }
    /// Never retries this job, whatever the pool's default.
    pub fn no_retry(mut self) -> Self {
        self.retry = retry::Choice::Off;
        self
    }
    /// Runs on the pool's callback thread with the result. A panic in it is
    /// caught and logged.
    pub fn on_success(mut self, f: impl FnOnce(R) + Send + 'static) -> Self {
        self.on_success = Some(Box::new(f));
        self
    }
    /// Runs on the pool's callback thread with the error, if the job fails.
    /// A panic in it is caught and logged.
    pub fn on_error(mut self, f: impl FnOnce(TaskError) + Send + 'static) -> Self {
        self.on_error = Some(Box::new(f));
        self
    }
}

/// The handle of a job submitted with `apply_raw`: encoded result bytes.
/// It is also a [`Future`](std::future::Future) of the outcome (see
/// [`AsyncResult`]).
pub struct RawResult {
    pub(super) id: JobId,
    pub(super) slot: Arc<ResultSlot>,
    /// This handle's waker registration in the slot, once polled.
    pub(super) waker_key: Option<u64>,
}

impl Clone for RawResult {
    fn clone(&self) -> Self {
        RawResult {
            id: self.id,
            slot: self.slot.clone(),
            waker_key: None,
        }
    }
}

impl RawResult {
    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }
    /// True once the outcome is known.
    pub fn ready(&self) -> bool {
        self.slot.is_ready()
    }
    /// Waits for the outcome.
    pub fn wait(&self) {
        self.slot.wait(None);
    }
    /// Waits up to `d`; true if the outcome is known.
    pub fn wait_timeout(&self, d: Duration) -> bool {
        self.slot.wait(Some(d)).is_some()
    }
    /// Waits for the outcome: the encoded result (in the job's codec) or
    /// why there is none (`terminated` if the pool shut down first).
    pub fn get(&self) -> Outcome {
        self.slot.wait(None).unwrap_or_else(|| Err(gone()))
    }
    /// The outcome, or `None` if it is not known within `d`.
    pub fn get_timeout(&self, d: Duration) -> Option<Outcome> {
        self.slot.wait(Some(d))
    }
    /// The latest `(done, total)` the task reported with `ctx.progress`
    /// (coalesced by its worker to about one report per 50 ms, plus
    /// completion); `None` before the first.
    pub fn progress(&self) -> Option<(u64, u64)> {
        self.slot.progress.get()
    }
    /// How many attempts the job took and how the earlier ones failed, once
    /// it was retried (`None` while it ran only once).
    pub fn attempts(&self) -> Option<Attempts> {
        self.slot.attempts()
    }
    /// Runs `hook` with each progress report of this job from now on, on
    /// the pool's callback thread (and at once with the latest one, if any).
    pub fn on_progress(&self, hook: impl Fn(u64, u64) + Send + Sync + 'static) {
        self.slot.progress.set_hook(Arc::new(hook));
    }
}

/// The handle of a job submitted with `apply_async`.
pub struct AsyncResult<R> {
    pub(super) raw: RawResult,
    /// The task's and the caller's types, for errors that name them.
    pub(crate) typed: Arc<Typed>,
    pub(super) _r: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> AsyncResult<R> {
    /// The job's id.
    pub fn id(&self) -> JobId {
        self.raw.id
    }
    /// True once the outcome is known.
    pub fn ready(&self) -> bool {
        self.raw.ready()
    }
    /// Waits for the outcome.
    pub fn wait(&self) {
        self.raw.wait()
    }
    /// Waits up to `d`; true if the outcome is known.
    pub fn wait_timeout(&self, d: Duration) -> bool {
        self.raw.wait_timeout(d)
    }
    /// Waits for and returns the result.
    pub fn get(&self) -> Result<R, TaskError> {
        self.typed.decode(self.raw.get())
    }
    /// The result, or `None` if it is not known within `d`.
    pub fn get_timeout(&self, d: Duration) -> Option<Result<R, TaskError>> {
        self.raw.get_timeout(d).map(|o| self.typed.decode(o))
    }
    /// The job's attempts once it was retried (see [`RawResult::attempts`]).
    pub fn attempts(&self) -> Option<Attempts> {
        self.raw.attempts()
    }
    /// The untyped handle underneath (encoded result bytes).
    pub fn raw(&self) -> &RawResult {
        &self.raw
    }
    /// The latest `(done, total)` the task reported (see
    /// [`RawResult::progress`]).
    pub fn progress(&self) -> Option<(u64, u64)> {
        self.raw.progress()
    }
}

/// The handle of a `map_async`.
pub struct MapResult<R> {
    pub(super) rx: crossbeam_channel::Receiver<job::ChunkResult>,
    pub(super) n: u64,
    pub(super) typed: Typed,
    pub(super) _r: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> MapResult<R> {
    /// Waits for every item; the first failure (in input order) wins.
    pub fn get(self) -> Result<Vec<R>, TaskError> {
        stream::collect_chunks(&self.rx, self.n, gone, &self.typed)
    }
}
