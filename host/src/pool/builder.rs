//! `PoolBuilder`: a pool's settings, checked by `build()`.

use std::path::PathBuf;
use std::time::Duration;

use crossbeam_channel::Sender;

use super::{Event, Initializer, Pool, PoolConfig, PoolError, StartMethod};

/// Builds a [`Pool`].
#[derive(Debug, Clone, Default)]
pub struct PoolBuilder {
    pub(super) cfg: PoolConfig,
    pub(super) events: Option<Sender<Event>>,
}

impl PoolBuilder {
    /// How many worker processes to keep (default: the number of CPUs;
    /// `build()` refuses 0).
    pub fn workers(mut self, n: usize) -> Self {
        self.cfg.workers = n;
        self
    }
    /// Adds a plugin file every worker loads.
    pub fn plugin(mut self, path: impl Into<PathBuf>) -> Self {
        self.cfg.plugins.push(path.into());
        self
    }
    /// How workers are created (default [`StartMethod::Forkserver`]).
    pub fn start_method(mut self, m: StartMethod) -> Self {
        self.cfg.start_method = m;
        self
    }
    /// The executable started as the zygote (forkserver) or as each worker
    /// (spawn). It must call [`crate::run_if_helper`] first thing in `main`;
    /// `billiard-host` does. Default: `$BILLIARD_HOST_EXE`, else a
    /// `billiard-host` beside (or one directory above) the current
    /// executable, else on `PATH`.
    pub fn worker_exe(mut self, path: impl Into<PathBuf>) -> Self {
        self.cfg.worker_exe = Some(path.into());
        self
    }
    /// Jobs in flight per worker (default 1: work goes to idle workers only).
    pub fn prefetch(mut self, n: usize) -> Self {
        self.cfg.prefetch = n;
        self
    }
    /// A worker exits, and is replaced, after `n` jobs (billiard's
    /// `maxtasksperchild`).
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.cfg.max_tasks_per_child = Some(n);
        self
    }
    /// Recycle a worker once its private memory grew by more than `bytes`.
    pub fn max_memory_per_child(mut self, bytes: u64) -> Self {
        self.cfg.max_memory_per_child = Some(bytes);
        self
    }
    /// Hard cap on each worker's address space (RLIMIT_AS).
    pub fn address_space_limit(mut self, bytes: u64) -> Self {
        self.cfg.address_space_limit = Some(bytes);
        self
    }
    /// The default soft time limit of every job: after `d` the task's
    /// `TaskContext` asks it to stop, and a task that checks ends
    /// `soft_time_limit`.
    pub fn soft_time_limit(mut self, d: Duration) -> Self {
        self.cfg.soft_time_limit = Some(d);
        self
    }
    /// The default hard time limit of every job: after `d` its worker is
    /// killed and replaced and the job ends `time_limit`.
    pub fn time_limit(mut self, d: Duration) -> Self {
        self.cfg.time_limit = Some(d);
        self
    }
    /// A task every new worker runs once before taking jobs.
    pub fn initializer(mut self, plugin: &str, task: &str, args_json: &str) -> Self {
        self.cfg.initializer = Some(Initializer {
            plugin: plugin.into(),
            task: task.into(),
            args_json: args_json.into(),
        });
        self
    }
    /// The largest frame accepted from or sent to a worker, in bytes (default
    /// 1 GiB); a job whose arguments do not fit ends `bad_args`, one whose
    /// result or stream item does not fit ends `task_error` naming both
    /// sizes (decided in the worker, which carries on).
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.cfg.max_frame = bytes;
        self
    }
    /// JSON results of tasks that return `Vec<u8>` come back as
    /// `{"$bytes": "<base64>"}` instead of arrays of numbers (bincode results
    /// are raw bytes either way). What `run --bytes base64` sets.
    pub fn bytes_base64(mut self, on: bool) -> Self {
        self.cfg.bytes_base64 = on;
        self
    }
    /// Arguments and results of at least this many bytes go through a
    /// shared-memory arena per worker instead of its socket (default
    /// 64 KiB); `None` sends everything through the socket.
    pub fn shm_threshold(mut self, bytes: Option<usize>) -> Self {
        self.cfg.shm_threshold = bytes;
        self
    }
    /// How many jobs an `imap` (and the other lazy maps) keeps in flight
    /// before it waits for results to be read (default 4096).
    pub fn imap_window(mut self, jobs: usize) -> Self {
        self.cfg.imap_window = jobs;
        self
    }
    /// How long the zygote may take to load the plugins (at start and on
    /// every `restart`) before the load is given up (default 60 s).
    pub fn load_timeout(mut self, d: Duration) -> Self {
        self.cfg.load_timeout = d;
        self
    }
    /// Sandbox the workers (`billiard_host::sandbox`): checked at `build()`,
    /// where a protection this kernel cannot give is an error naming it.
    pub fn sandbox(mut self, sandbox: crate::sandbox::Sandbox) -> Self {
        self.cfg.sandbox = sandbox;
        self
    }
    /// Stop forking after `failures` workers died at start within `window`.
    pub fn restart_limit(mut self, failures: u32, window: Duration) -> Self {
        self.cfg.max_start_failures = failures;
        self.cfg.restart_window = window;
        self
    }
    /// Retries failed jobs as `policy` says, by default: a failure of a
    /// kind it lists (`policy.on`), or one whose task asks for a retry
    /// ([`crate::Directive::Retry`], which may also set its own cap), runs
    /// again after the policy's delay, at most `max_retries` times, as a
    /// new attempt with its own time limits. A task's registered retry
    /// options (`#[task(autoretry_for = ..., max_retries = ...)]`,
    /// [`crate::TaskOptions`]) override `policy` for its jobs, as on a
    /// Celery worker; without this call they are not used (a pool retries
    /// only when asked to). The caller gets only the final
    /// outcome, and its [`Attempts`](super::Attempts) (`RawResult::attempts`,
    /// `RawStream::next_with_attempts`). Waiting retries hold no worker and
    /// no thread; `join` waits for them, `terminate` ends them
    /// `terminated`. A job's own policy (`JobOptions::retry_policy`,
    /// `RawStream::retry_policy`) comes first. `terminated` is never
    /// retried; nor is a job of a streaming task once it emitted items.
    pub fn retry_policy(mut self, policy: crate::retry::RetryPolicy) -> Self {
        self.cfg.retry = Some(policy);
        self
    }
    /// Receive [`Event`]s (worker up/down, job start/finish) on `tx`.
    pub fn events(mut self, tx: Sender<Event>) -> Self {
        self.events = Some(tx);
        self
    }
    /// Takes the event channel out (the cases runner puts its own in and
    /// passes every event on).
    #[cfg(feature = "cases")]
    pub(crate) fn take_events(&mut self) -> Option<Sender<Event>> {
        self.events.take()
    }
    /// Replaces everything set so far with `cfg`.
    pub fn config(mut self, cfg: PoolConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// Starts the pool: checks the configuration, starts the zygote (or
    /// forks it), waits until the plugins are loaded and starts the workers.
    /// Fails with a [`PoolError`] if any of that does not work.
    pub fn build(self) -> Result<Pool, PoolError> {
        Pool::start(self.cfg, self.events)
    }
}
