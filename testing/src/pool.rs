//! [`TestPool`]: a real `billiard_host::Pool` over the plugin under test,
//! with calls that return [`Call`]s and the in-process/pool agreement check.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use abi_stable::std_types::RVec;
use billiard_host::{
    Codec, ErrorKind, JobId, Limits, Plugin, Pool, RawJob, RawResult, TaskError, TaskRef,
};
use billiard_plugin_api::{codec, StopReason, TaskContext};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::call::{show_args, Call, Place};

/// The codec a typed call (a tuple of arguments) to `plugin` travels in:
/// bincode, as `Pool::apply` sends, for a Rust plugin; JSON for a C plugin,
/// which speaks nothing else (the typed call works through it).
pub(crate) fn typed_codec(plugin: &Plugin) -> Codec {
    if plugin.kind().speaks(Codec::Bincode) {
        Codec::Bincode
    } else {
        Codec::Json
    }
}

/// Encoded arguments, or the `bad_args` error encoding them gave.
pub(crate) fn encode_args<A: Serialize>(codec: Codec, args: &A) -> Result<Vec<u8>, TaskError> {
    codec::encode(codec, args).map_err(|e| {
        TaskError::new(
            ErrorKind::BadArgs,
            format!("cannot encode the arguments: {e}"),
        )
    })
}

/// A JSON argument array as bytes, or `bad_args` if `args` is not an array.
pub(crate) fn encode_json_args(args: &serde_json::Value) -> Result<Vec<u8>, TaskError> {
    if !args.is_array() {
        return Err(TaskError::new(
            ErrorKind::BadArgs,
            format!("the arguments must be a JSON array, not {args}"),
        ));
    }
    serde_json::to_vec(args).map_err(|e| TaskError::new(ErrorKind::BadArgs, e.to_string()))
}

/// Calls `task` of `plugin` in this process. With `soft`, a timer raises
/// the task's stop flag after that long, as a worker does at a soft time
/// limit (a task that polls its `TaskContext` then ends `soft_time_limit`).
pub(crate) fn call_local(
    plugin: &Plugin,
    task: &str,
    codec: Codec,
    args: &[u8],
    soft: Option<Duration>,
) -> Result<Vec<u8>, TaskError> {
    let index = plugin.task_index(task)?;
    let stop = AtomicU32::new(0);
    let ctx = TaskContext::new(0, 0, &stop);
    let mut out = RVec::new();
    let status = match soft {
        None => plugin.call_raw(index, codec, args, &ctx, &mut out),
        Some(limit) => std::thread::scope(|s| {
            let (done, wait) = std::sync::mpsc::channel::<()>();
            let stop = &stop;
            s.spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(limit) {
                    stop.store(StopReason::SoftTimeLimit.as_flag(), Ordering::SeqCst);
                }
            });
            let status = plugin.call_raw(index, codec, args, &ctx, &mut out);
            drop(done);
            status
        }),
    };
    billiard_host::outcome(status, out.into_vec())
}

/// Strips what may legitimately differ between two runs of the same
/// failing call: a backtrace appended to a panic message.
fn comparable(message: &str) -> &str {
    message.split("\nbacktrace:").next().unwrap_or(message)
}

/// A real pool of worker processes (started by the `billiard-host`
/// zygote) with the plugin under test loaded. Made by
/// [`crate::Harness::pool`] / [`crate::Harness::pool_with`]; dropping it
/// terminates its workers.
pub struct TestPool {
    pub(crate) pool: Pool,
    pub(crate) plugin: Plugin,
}

impl TestPool {
    /// The underlying pool, for anything the harness does not wrap.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    fn name(&self) -> &str {
        self.plugin.name()
    }

    fn returns(&self, task: &str) -> Option<String> {
        let info = self.plugin.info();
        info.tasks
            .iter()
            .find(|t| t.name == task)
            .map(|t| t.ret.clone())
    }

    fn target(&self, task: &str) -> Result<TaskRef, TaskError> {
        self.pool.task_ref("", task)
    }

    /// Per-job limits for the next call: `pool.time_limit(d).call(..)`.
    pub fn limits(&self, limits: Limits) -> Job<'_> {
        Job { pool: self, limits }
    }

    /// A hard time limit for the next call: the worker is killed after `d`
    /// and the job ends `time_limit`.
    pub fn time_limit(&self, d: Duration) -> Job<'_> {
        self.limits(Limits::default()).time_limit(d)
    }

    /// A soft time limit for the next call: after `d` the task is asked to
    /// stop; a task that polls its `TaskContext` ends `soft_time_limit`.
    pub fn soft_time_limit(&self, d: Duration) -> Job<'_> {
        self.limits(Limits::default()).soft_time_limit(d)
    }

    /// Runs `task` with `args` (a tuple, one element per argument: `(3u64,)`)
    /// in a worker, with the pool's limits; waits for the outcome.
    pub fn call<A: Serialize>(&self, task: &str, args: A) -> Call {
        self.limits(Limits::default()).call(task, args)
    }

    /// Runs `task` with a JSON array of arguments (`json!([3])`), the way the
    /// CLI does; the result is JSON too.
    pub fn call_json(&self, task: &str, args: serde_json::Value) -> Call {
        self.limits(Limits::default()).call_json(task, args)
    }

    /// Submits a job without waiting, e.g. to terminate it.
    pub fn submit<A: Serialize>(&self, task: &str, args: A) -> Pending<'_> {
        self.limits(Limits::default()).submit(task, args)
    }

    /// Runs every input (an argument tuple each) in this process and in the
    /// pool, and asserts that both give the same outcome: equal results
    /// (the same bytes, or values equal as `R`), or errors of the same kind
    /// and message. Returns the outcomes decoded as `R`, in input order, for
    /// further checks.
    ///
    /// The in-process runs happen in the test process: keep tasks that
    /// crash, abort or hang out of the inputs (test those with `call` and
    /// `expect_worker_lost` / `expect_time_limit`).
    #[track_caller]
    pub fn assert_same<A, R>(
        &self,
        task: &str,
        inputs: impl IntoIterator<Item = A>,
    ) -> Vec<Result<R, TaskError>>
    where
        A: Serialize,
        R: DeserializeOwned + PartialEq + Debug,
    {
        self.assert_same_chunked(task, inputs, 1)
    }

    /// [`TestPool::assert_same`], sending `chunksize` inputs per message to
    /// a worker (they run in one batch call, the path `map` takes).
    #[track_caller]
    pub fn assert_same_chunked<A, R>(
        &self,
        task: &str,
        inputs: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Vec<Result<R, TaskError>>
    where
        A: Serialize,
        R: DeserializeOwned + PartialEq + Debug,
    {
        let wire = typed_codec(&self.plugin);
        let inputs: Vec<(String, Result<Vec<u8>, TaskError>)> = inputs
            .into_iter()
            .map(|a| (show_args(&a), encode_args(wire, &a)))
            .collect();
        let local: Vec<Result<Vec<u8>, TaskError>> = inputs
            .iter()
            .map(|(_, args)| match args {
                Ok(bytes) => call_local(&self.plugin, task, wire, bytes, None),
                Err(e) => Err(e.clone()),
            })
            .collect();
        let target = self.target(task);
        let jobs = inputs.iter().map(|(_, args)| {
            let target = target.clone()?;
            let args = args.clone()?;
            Ok(RawJob::new(target, wire, args))
        });
        let mut remote: Vec<Option<Result<Vec<u8>, TaskError>>> = vec![None; inputs.len()];
        for (i, outcome) in self.pool.imap_raw(jobs, true, chunksize.max(1)) {
            if let Some(slot) = remote.get_mut(i as usize) {
                *slot = Some(outcome);
            }
        }

        let decode = |o: &Result<Vec<u8>, TaskError>| -> Result<R, TaskError> {
            let bytes = o.as_ref().map_err(Clone::clone)?;
            codec::decode(wire, bytes).map_err(|e| {
                TaskError::new(
                    ErrorKind::TaskError,
                    format!(
                        "the result does not decode as `{}`: {e}",
                        std::any::type_name::<R>()
                    ),
                )
            })
        };
        let show = |o: &Result<Vec<u8>, TaskError>| match decode(o) {
            Ok(v) => format!("ok {v:?}"),
            Err(e) => format!("{}: {}", e.kind, e.message),
        };
        let mut disagreements = Vec::new();
        for (i, ((args, _), here)) in inputs.iter().zip(&local).enumerate() {
            let there = remote[i].clone().unwrap_or_else(|| {
                Err(TaskError::new(
                    ErrorKind::Terminated,
                    "the pool gave no outcome for this input",
                ))
            });
            let same = match (here, &there) {
                (Ok(a), Ok(b)) => {
                    a == b || matches!((decode(here), decode(&there)), (Ok(x), Ok(y)) if x == y)
                }
                (Err(a), Err(b)) => {
                    a.kind == b.kind && comparable(&a.message) == comparable(&b.message)
                }
                _ => false,
            };
            if !same {
                disagreements.push(format!(
                    "  input #{i}: {task}({})\n    in process:  {}\n    in the pool: {}",
                    crate::call::truncate(args, 200),
                    show(here),
                    show(&there)
                ));
            }
        }
        if !disagreements.is_empty() {
            let n = disagreements.len();
            disagreements.truncate(10);
            let more = if n > 10 {
                format!("\n  ... and {} more", n - 10)
            } else {
                String::new()
            };
            panic!(
                "billiard-testing: {}.{task}: {n} of {} inputs gave different outcomes in process and in the pool:\n{}{more}",
                self.name(),
                inputs.len(),
                disagreements.join("\n")
            );
        }
        local.iter().map(decode).collect()
    }

    /// Closes the pool and waits for its workers to exit.
    pub fn join(self) {
        if let Err(e) = self.pool.join() {
            panic!("billiard-testing: the pool did not shut down cleanly: {e}");
        }
    }
}

/// One call to come, with per-job limits (see [`TestPool::time_limit`]).
#[derive(Clone, Copy)]
pub struct Job<'p> {
    pool: &'p TestPool,
    limits: Limits,
}

impl<'p> Job<'p> {
    /// Sets this call's hard time limit: after `d` the worker is killed and
    /// the job ends `time_limit`.
    pub fn time_limit(mut self, d: Duration) -> Self {
        self.limits.hard = Some(d);
        self
    }

    /// Sets this call's soft time limit: after `d` the task is asked to stop;
    /// a task that polls its `TaskContext` ends `soft_time_limit`.
    pub fn soft_time_limit(mut self, d: Duration) -> Self {
        self.limits.soft = Some(d);
        self
    }

    /// Runs `task` with `args` (a tuple, one element per argument) in a
    /// worker with these limits; waits for the outcome.
    pub fn call<A: Serialize>(self, task: &str, args: A) -> Call {
        self.submit(task, args).wait()
    }

    /// Runs `task` with a JSON array of arguments in a worker with these
    /// limits; the result is JSON.
    pub fn call_json(self, task: &str, args: serde_json::Value) -> Call {
        self.start(task, show_args(&args), Codec::Json, encode_json_args(&args))
            .wait()
    }

    /// Submits the job; [`Pending::wait`] gives its outcome.
    pub fn submit<A: Serialize>(self, task: &str, args: A) -> Pending<'p> {
        let wire = typed_codec(&self.pool.plugin);
        self.start(task, show_args(&args), wire, encode_args(wire, &args))
    }

    fn start(
        self,
        task: &str,
        shown: String,
        codec: Codec,
        args: Result<Vec<u8>, TaskError>,
    ) -> Pending<'p> {
        let handle = self
            .pool
            .target(task)
            .and_then(|target| self.pool.pool.apply_raw(target, codec, args?, self.limits));
        Pending {
            pool: self.pool,
            call: Call {
                plugin: self.pool.name().to_string(),
                task: task.to_string(),
                args: shown,
                place: Place::Pool,
                codec,
                returns: self.pool.returns(task),
                outcome: Ok(Vec::new()),
            },
            handle,
        }
    }
}

/// A job submitted to a [`TestPool`] and not yet waited for.
pub struct Pending<'p> {
    pool: &'p TestPool,
    call: Call,
    handle: Result<RawResult, TaskError>,
}

impl Pending<'_> {
    /// The job's id (`None` if it could not be submitted).
    pub fn id(&self) -> Option<JobId> {
        self.handle.as_ref().ok().map(RawResult::id)
    }

    /// Cancels the job ([`Pool::terminate_job`]): it ends `terminated`
    /// unless it had already finished. Returns whether it was cancelled.
    pub fn terminate(&self) -> bool {
        match &self.handle {
            Ok(h) => self.pool.pool.terminate_job(h.id()).unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Waits for the outcome.
    pub fn wait(self) -> Call {
        let mut call = self.call;
        call.outcome = match self.handle {
            Ok(h) => h.get(),
            Err(e) => Err(e),
        };
        call
    }
}
