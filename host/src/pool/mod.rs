//! The process pool: `Pool` and its builder, the billiard-style API.
//!
//! ```no_run
//! use billiard_host::Pool;
//! let pool = Pool::builder().workers(2).plugin("target/release/libbilliard_math.so").build()?;
//! let y: u64 = pool.apply("math", "square", (3u64,))?;
//! assert_eq!(y, 9);
//! let ys: Vec<u64> = pool.map("math", "square", 0..100u64, 10)?;
//! pool.join()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod async_io;
pub(crate) mod config;
pub(crate) mod events;
pub(crate) mod items;
pub(crate) mod job;
pub(crate) mod retry;
mod stats;
mod stream;
mod streaming;
mod supervisor;
pub(crate) mod worker_exe;

use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use billiard_plugin_api::{codec, Codec};
use crossbeam_channel::Sender;
use serde::{de::DeserializeOwned, Serialize};

pub use async_io::{CancelOnDrop, ImapStream, RawAsyncStream};
pub use config::{Initializer, Limits, PoolConfig, StartMethod};
pub use events::Event;
pub use items::{ItemBatch, News, ProgressHook};
pub use job::{JobId, Outcome, WorkerId};
pub use retry::Attempts;
pub use stats::Stats;
pub use stream::{Imap, JobHead, JobSource, RawJob, RawStream};
pub use streaming::{ItemStream, Streamed};
pub use supervisor::Generation;

use crate::error::{ErrorKind, TaskError};
use crate::plugin::PluginInfo;
use crate::sys::{self, Scoreboard};
use job::{Dispatch, Reply, ResultSlot};
use supervisor::{Cmd, Supervisor};

/// Why a pool could not be built or an operation could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The plugins could not be loaded (or the zygote that loads them failed
    /// to start); the error names the file and the reason.
    #[error("{0}")]
    PluginLoad(TaskError),
    /// The configuration cannot work (no workers, too many, a sandbox this
    /// kernel cannot give, a worker executable that does not answer, ...).
    #[error("invalid pool configuration: {0}")]
    Config(String),
    /// A system call needed to start the pool failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done (`socketpair`, `cannot create the scoreboard`, ...).
        what: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The pool's supervisor thread has ended (the pool was closed and
    /// drained, or terminated), so nothing can be sent to it.
    #[error("the pool's supervisor is gone")]
    Gone,
    /// The supervisor thread panicked (a bug), with this message; the pool
    /// is unusable: every later call fails naming it.
    #[error("{}", supervisor_panicked(.0))]
    SupervisorPanicked(String),
}

/// What a dead pool says, in every error and outcome: the panic's message
/// and what it means for the caller.
fn supervisor_panicked(msg: &str) -> String {
    format!(
        "the pool's supervisor thread panicked ({msg}); the pool is unusable and must be rebuilt"
    )
}

/// The environment variable that, in debug builds only, panics the
/// supervisor when the job with this number (1 = the first) is submitted:
/// the test hook that lets end-to-end tests (the CLI, the Celery worker)
/// see what a dead pool does. Release builds never read it.
#[doc(hidden)]
pub const TEST_PANIC_ENV: &str = "BILLIARD_HOST_TEST_PANIC_SUPERVISOR_AT_JOB";

/// Builds a [`Pool`].
#[derive(Debug, Clone, Default)]
pub struct PoolBuilder {
    cfg: PoolConfig,
    events: Option<Sender<Event>>,
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
    /// outcome, and its [`Attempts`] (`RawResult::attempts`,
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

/// A pool of worker processes running plugin tasks.
pub struct Pool {
    tx: Sender<Cmd>,
    waker: Arc<mio::Waker>,
    thread: Option<JoinHandle<()>>,
    callback_thread: Option<JoinHandle<()>>,
    /// The generation of plugins the newest zygote loaded (a rolling
    /// restart replaces it once the new files are loaded).
    live: supervisor::LiveGeneration,
    next_job: Arc<AtomicU64>,
    closed: AtomicBool,
    cfg: PoolConfig,
    /// The panic message, set by the supervisor thread as it dies.
    death: Arc<OnceLock<String>>,
    /// The job number at which the test hook panics the supervisor
    /// ([`TEST_PANIC_ENV`]); taken when it fires.
    test_panic_at: std::sync::Mutex<Option<u64>>,
    /// Attempts waiting to be retried (shared with the supervisor).
    retries: Arc<retry::Retries>,
    /// The pool's default retry rule (`PoolConfig::retry`).
    default_retry: Option<Arc<retry::Rule>>,
}

/// A task resolved to the indices the ABI uses, in the plugin generation
/// it was resolved against. A reload (`Pool::restart`) may reorder, add or
/// remove tasks: the supervisor maps each job onto the generation of the
/// worker that runs it by name, so a cached `TaskRef` never runs another
/// task, and a task gone after the reload ends `unknown_task`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRef {
    /// The plugin's index in the generation's plugins.
    pub plugin: u16,
    /// The task's index in that plugin's tasks.
    pub task: u32,
    /// The generation the indices refer to; 0: raw indices, taken as they
    /// are by whatever generation runs the job.
    pub gen: u64,
}

impl TaskRef {
    /// Raw indices, not tied to a generation (for tools that speak the ABI
    /// directly).
    pub fn raw(plugin: u16, task: u32) -> TaskRef {
        TaskRef {
            plugin,
            task,
            gen: 0,
        }
    }
}

const SCOREBOARD_SLOTS: usize = 1024;

/// The most workers a pool has (at `build()` and after `grow`): every
/// worker, and its replacement while it leaves, holds a scoreboard slot.
pub(crate) const MAX_WORKERS: usize = SCOREBOARD_SLOTS / 2;

impl Pool {
    /// A [`PoolBuilder`] with the default configuration.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    fn start(cfg: PoolConfig, events: Option<Sender<Event>>) -> Result<Pool, PoolError> {
        cfg.check().map_err(PoolError::Config)?;
        if cfg.workers == 0 {
            return Err(PoolError::Config("workers must be at least 1".into()));
        }
        if cfg.workers > MAX_WORKERS {
            return Err(PoolError::Config(format!("at most {MAX_WORKERS} workers")));
        }
        if cfg.plugins.is_empty() {
            return Err(PoolError::Config("no plugin given".into()));
        }
        if cfg.plugins.len() > u16::MAX as usize {
            return Err(PoolError::Config("too many plugins".into()));
        }
        if !cfg.sandbox.is_none() {
            if cfg.start_method == StartMethod::Fork && cfg.sandbox.isolate {
                return Err(PoolError::Config(
                    "sandbox: the fork start method shares the host's memory (its environment, its secrets) with the workers; use forkserver or spawn".into(),
                ));
            }
            cfg.sandbox
                .check()
                .map_err(|e| PoolError::Config(e.to_string()))?;
        }
        let io = |what| move |source| PoolError::Io { what, source };
        // One page per worker, made when it is forked (C3).
        let board = Scoreboard::new(SCOREBOARD_SLOTS);
        if cfg.start_method != StartMethod::Fork {
            // A missing or unusable zygote executable is a setting to fix,
            // said before anything starts (the handshake checks the rest).
            let (exe, source) =
                worker_exe::resolve(cfg.worker_exe.as_ref()).map_err(PoolError::Config)?;
            worker_exe::precheck(&exe, source).map_err(PoolError::Config)?;
        }
        let forked = if cfg.start_method == StartMethod::Fork {
            Some(fork_zygote(&cfg)?)
        } else {
            None
        };

        let (tx, rx) = crossbeam_channel::unbounded();
        let (cb_tx, cb_rx) = crossbeam_channel::unbounded::<supervisor::CallbackJob>();
        let callback_thread = std::thread::Builder::new()
            .name("billiard-callbacks".into())
            .spawn(move || {
                for job in cb_rx {
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                        tracing::error!("a result callback panicked; the pool carries on");
                    }
                }
            })
            .map_err(io("cannot start the callback thread"))?;
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let live = supervisor::LiveGeneration::default();
        let sup_live = live.clone();
        let sup_cfg = cfg.clone();
        let sink = events::EventSink::new(events);
        let death = Arc::new(OnceLock::new());
        let sup_death = death.clone();
        let next_job = Arc::new(AtomicU64::new(1));
        let retries = retry::Retries::new(next_job.clone());
        let sup_retries = retries.clone();
        // The supervisor thread starts the zygote itself: the zygote dies
        // with the thread that started it (PR_SET_PDEATHSIG), and that
        // thread lives exactly as long as the pool.
        let thread = std::thread::Builder::new()
            .name("billiard-supervisor".into())
            .spawn(move || {
                // The supervisor lives out here, not in the closure that
                // may panic, so that after a panic it can still be dropped
                // deliberately: once the panic is recorded (check_alive,
                // every later call) and named for every job it held.
                let mut held: Option<Supervisor> = None;
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let (sup, waker) = match Supervisor::new(
                        sup_cfg,
                        rx,
                        board,
                        cb_tx,
                        sink,
                        sup_live,
                        sup_retries,
                    ) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = ready_tx.send(Err(PoolError::PluginLoad(TaskError::new(
                                ErrorKind::PluginLoad,
                                format!("cannot start the supervisor: {e}"),
                            ))));
                            return;
                        }
                    };
                    let sup = held.insert(sup);
                    match sup.start_zygote(forked) {
                        Ok(plugins) => {
                            let _ = ready_tx.send(Ok((plugins, waker)));
                            sup.run();
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                }));
                if let Err(payload) = ran {
                    let msg = panic_message(&*payload);
                    let _ = sup_death.set(msg.clone());
                    tracing::error!(
                        "{}; its pending jobs end with this error",
                        supervisor_panicked(&msg)
                    );
                    // A start that panicked still gets its answer.
                    let _ = ready_tx.try_send(Err(PoolError::SupervisorPanicked(msg.clone())));
                    job::lose_dropped_jobs_because(supervisor_panicked(&msg));
                }
                // Kills the workers and zygotes and ends every job still
                // held (queued, in flight, in the command channel); a second
                // panic there (a broken state) must not hide the first.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(held)));
            })
            .map_err(io("cannot start the supervisor thread"))?;
        let (plugins, waker) = match ready_rx.recv() {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(PoolError::SupervisorPanicked(
                    death.get().cloned().unwrap_or_else(|| "no message".into()),
                ));
            }
        };
        // Jobs name plugins by name: two of one name could never be told
        // apart (the same file given twice, or two builds of one plugin).
        if let Some((a, b)) = duplicate_plugin(&plugins) {
            let _ = tx.send(Cmd::Terminate);
            let _ = waker.wake();
            let _ = thread.join();
            let _ = callback_thread.join();
            return Err(PoolError::Config(format!(
                "the plugin name `{}` is loaded twice ({} and {}); give each plugin once",
                plugins[a].name,
                cfg.plugins[a].display(),
                cfg.plugins[b].display()
            )));
        }
        retries.set_waker(waker.clone());
        let default_retry = cfg.retry.clone().map(retry::Rule::default_of);
        Ok(Pool {
            tx,
            waker,
            thread: Some(thread),
            callback_thread: Some(callback_thread),
            live,
            next_job,
            closed: AtomicBool::new(false),
            cfg,
            death,
            test_panic_at: std::sync::Mutex::new(test_panic_at()),
            retries,
            default_retry,
        })
    }

    /// `Ok` while the pool's supervisor thread runs (also while a closed
    /// pool drains); once it has died, the error that names why
    /// ([`PoolError::SupervisorPanicked`] with the panic message), and
    /// [`PoolError::Gone`] once it has ended after [`Pool::close`] and the
    /// drain, or [`Pool::terminate_now`]. A service that feeds the pool
    /// (the Celery worker) asks this before taking more work, so a dead
    /// pool never keeps consuming.
    pub fn check_alive(&self) -> Result<(), PoolError> {
        if let Some(msg) = self.death.get() {
            return Err(PoolError::SupervisorPanicked(msg.clone()));
        }
        match &self.thread {
            Some(t) if !t.is_finished() => Ok(()),
            // Finished: a panic records its message before the thread ends,
            // so look again (the thread may have ended since the first look).
            _ => match self.death.get() {
                Some(msg) => Err(PoolError::SupervisorPanicked(msg.clone())),
                None => Err(PoolError::Gone),
            },
        }
    }

    /// Panics the supervisor thread with `msg`: the test hook that proves a
    /// dead supervisor is reported ([`Pool::check_alive`], every call, every
    /// pending job). Never call it otherwise: the pool becomes unusable.
    #[doc(hidden)]
    pub fn __test_panic_supervisor(&self, msg: &str) -> Result<(), TaskError> {
        self.send(Cmd::TestPanic(msg.to_string()))
    }

    /// Why calls fail once the supervisor cannot be reached: its panic if
    /// it died, else "the pool has shut down".
    fn unreachable(&self) -> TaskError {
        match self.death.get() {
            Some(msg) => TaskError::new(ErrorKind::Terminated, supervisor_panicked(msg)),
            None => gone(),
        }
    }

    /// The plugins of the live generation (what the newest zygote loaded;
    /// after a rolling restart, the reloaded files), in the order given to
    /// the builder.
    pub fn plugins(&self) -> Arc<Vec<PluginInfo>> {
        self.generation().plugins
    }

    /// The live plugin generation and its number (1 at start, one more per
    /// successful reload or zygote replacement).
    pub fn generation(&self) -> supervisor::Generation {
        self.live
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// The configuration the pool was built with.
    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    /// Resolves `plugin` (its name; may be empty when only one plugin is
    /// loaded) and `task`.
    pub fn task_ref(&self, plugin: &str, task: &str) -> Result<TaskRef, TaskError> {
        let live = self.generation();
        let (plugin, task) = crate::plugin::resolve_in_plugin(&live.plugins, plugin, task)?;
        Ok(TaskRef {
            plugin: plugin as u16,
            task,
            gen: live.gen,
        })
    }

    /// Finds a task by name in whichever plugin has it; `plugin.task` picks
    /// a plugin explicitly. Ambiguous names are an error; an unknown one
    /// says the closest known name ([`crate::resolve_task`]).
    pub fn find_task(&self, name: &str) -> Result<TaskRef, TaskError> {
        let live = self.generation();
        let (plugin, task) = crate::plugin::resolve_task(&live.plugins, name)?;
        Ok(TaskRef {
            plugin: plugin as u16,
            task,
            gen: live.gen,
        })
    }

    fn send(&self, cmd: Cmd) -> Result<(), TaskError> {
        let unsent = match self.death.get() {
            Some(_) => Err(cmd),
            None => self.tx.send(cmd).map_err(|e| e.0),
        };
        if let Err(cmd) = unsent {
            let err = self.unreachable();
            if let Cmd::Submit(ds) = cmd {
                fail_unsent(ds, &err);
            }
            return Err(err);
        }
        self.waker.wake().map_err(|e| {
            TaskError::new(
                ErrorKind::Terminated,
                format!("cannot wake the supervisor: {e}"),
            )
        })
    }

    /// Hands `ds` to the supervisor. Every job gets exactly one outcome
    /// through its own reply, also when this fails: the error returned is
    /// then also every job's outcome (callers do not report them again).
    pub(crate) fn submit(&self, ds: Vec<Dispatch>) -> Result<(), TaskError> {
        if self.closed.load(Ordering::Acquire) {
            let err = TaskError::new(
                ErrorKind::Terminated,
                "the pool is closed; no new jobs are accepted",
            );
            fail_unsent(ds, &err);
            return Err(err);
        }
        if let Err(err) = self.maybe_test_panic(&ds) {
            fail_unsent(ds, &err);
            return Err(err);
        }
        // Every job from the library passes here: a limit out of range
        // ends its own job (`bad_args`), never reaches the timers.
        let ds: Vec<Dispatch> = ds
            .into_iter()
            .filter_map(|mut d| match d.limits.check() {
                Ok(()) => Some(d),
                Err(e) => {
                    d.fail_rest(|_| e.clone());
                    None
                }
            })
            .collect();
        if ds.is_empty() {
            return Ok(());
        }
        self.send(Cmd::Submit(ds))
    }

    /// The [`TEST_PANIC_ENV`] hook: panics the supervisor (once) just
    /// before the submission that holds the job of that number.
    fn maybe_test_panic(&self, ds: &[Dispatch]) -> Result<(), TaskError> {
        let mut at = self.test_panic_at.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = *at {
            if ds.iter().any(|d| d.contains(JobId(n))) {
                *at = None;
                drop(at);
                return self.send(Cmd::TestPanic(format!("test hook: {TEST_PANIC_ENV}={n}")));
            }
        }
        Ok(())
    }

    pub(crate) fn job_ids(&self, n: u32) -> JobId {
        JobId(self.next_job.fetch_add(n as u64, Ordering::Relaxed))
    }

    fn encode_args<A: Serialize>(args: &A) -> Result<Vec<u8>, TaskError> {
        codec::encode(Codec::Bincode, args).map_err(|e| {
            TaskError::new(
                ErrorKind::BadArgs,
                format!("cannot encode the arguments: {e}"),
            )
        })
    }

    /// Submits one job with encoded arguments; the building block of the
    /// typed `apply*` methods and of the CLI.
    pub fn apply_raw(
        &self,
        target: TaskRef,
        codec: Codec,
        args: Vec<u8>,
        limits: Limits,
    ) -> Result<RawResult, TaskError> {
        self.apply_raw_with(target, codec, args, limits, None)
    }

    /// Like [`Pool::apply_raw`], and `then` runs with the outcome on the
    /// pool's callback thread as soon as it is known (no thread per job).
    /// `then` is not run if the pool shuts down before the job is done
    /// (the handle still reports `terminated`).
    pub fn apply_raw_then(
        &self,
        target: TaskRef,
        codec: Codec,
        args: Vec<u8>,
        limits: Limits,
        then: impl FnOnce(&Outcome) + Send + 'static,
    ) -> Result<RawResult, TaskError> {
        self.apply_raw_with(target, codec, args, limits, Some(Box::new(then)))
    }

    /// Like [`Pool::apply_raw_then`] (`then` optional), with this job's own
    /// retry policy (`None`: never retried), in place of the pool's
    /// ([`PoolBuilder::retry_policy`]): `max_retries` then caps the retries
    /// a task asks for too.
    pub fn apply_raw_retrying(
        &self,
        target: TaskRef,
        codec: Codec,
        args: Vec<u8>,
        limits: Limits,
        retry: Option<crate::retry::RetryPolicy>,
        then: Option<job::Callback>,
    ) -> Result<RawResult, TaskError> {
        let choice = match retry {
            Some(p) => retry::Choice::Exactly(p),
            None => retry::Choice::Off,
        };
        self.apply_raw_choice(target, codec, args, limits, then, &choice)
    }

    fn apply_raw_with(
        &self,
        target: TaskRef,
        codec: Codec,
        args: Vec<u8>,
        limits: Limits,
        callback: Option<job::Callback>,
    ) -> Result<RawResult, TaskError> {
        self.apply_raw_choice(target, codec, args, limits, callback, &retry::Choice::Pool)
    }

    /// The retry rule of a job (or a stream's jobs) that chose `choice`.
    pub(crate) fn retry_rule(&self, choice: &retry::Choice) -> Option<Arc<retry::Rule>> {
        match choice {
            retry::Choice::Pool => self.default_retry.clone(),
            retry::Choice::Off => None,
            retry::Choice::Exactly(p) => Some(retry::Rule::exactly(p.clone())),
        }
    }

    /// `rule` for a job of `target`: under the pool's default, with the
    /// task's registered retry options over it (`TaskSpec::options`).
    fn task_rule(&self, target: TaskRef, rule: &Arc<retry::Rule>) -> Arc<retry::Rule> {
        if rule.is_strict() {
            return rule.clone();
        }
        let live = self.generation();
        if target.gen != 0 && target.gen != live.gen {
            // Resolved against another generation: its indices may not be
            // this one's (the job itself is mapped by name when it runs).
            return rule.clone();
        }
        let spec = live
            .plugins
            .get(usize::from(target.plugin))
            .and_then(|p| p.tasks.get(usize::try_from(target.task).ok()?));
        match spec {
            Some(spec) => rule.for_task(&spec.options),
            None => rule.clone(),
        }
    }

    /// The retries of a stream's jobs that chose `choice`.
    pub(crate) fn stream_retry(&self, choice: &retry::Choice) -> Option<Arc<retry::StreamRetry>> {
        self.retry_rule(choice)
            .map(|rule| retry::StreamRetry::new(&self.retries, rule))
    }

    fn apply_raw_choice(
        &self,
        target: TaskRef,
        codec: Codec,
        args: Vec<u8>,
        limits: Limits,
        callback: Option<job::Callback>,
        choice: &retry::Choice,
    ) -> Result<RawResult, TaskError> {
        let id = self.job_ids(1);
        let slot = ResultSlot::new(callback);
        let d = Dispatch {
            first_job: id,
            count: 1,
            plugin: target.plugin,
            task: target.task,
            gen: target.gen,
            codec,
            payload: Arc::new(args),
            limits,
            reply: Reply::Slot(slot.clone()),
            attempt: 0,
            retries: 0,
            cancelled: false,
            delivered: 0,
        };
        if let retry::Choice::Exactly(p) = choice {
            // A job's own policy is checked as its limits are: out of
            // range, the job ends `bad_args` naming the setting.
            if let Err(e) = retry::check_policy(p) {
                let mut d = d;
                d.fail_rest(|_| TaskError::new(ErrorKind::BadArgs, e.clone()));
                return Ok(RawResult {
                    id,
                    slot,
                    waker_key: None,
                });
            }
        }
        if let Some(rule) = self.retry_rule(choice) {
            let rule = self.task_rule(target, &rule);
            slot.set_retry(retry::SlotRetry::new(&self.retries, rule, &d, &slot));
        }
        self.submit(vec![d])?;
        Ok(RawResult {
            id,
            slot,
            waker_key: None,
        })
    }

    /// Runs a task and waits for its result. `args` is a tuple, one element
    /// per task argument: `(3u64,)`.
    pub fn apply<A: Serialize, R: DeserializeOwned + 'static>(
        &self,
        plugin: &str,
        task: &str,
        args: A,
    ) -> Result<R, TaskError> {
        self.apply_async(plugin, task, args)?.get()
    }

    /// Submits a task; the handle gives its result later.
    pub fn apply_async<A: Serialize, R: DeserializeOwned + 'static>(
        &self,
        plugin: &str,
        task: &str,
        args: A,
    ) -> Result<AsyncResult<R>, TaskError> {
        self.apply_async_with(plugin, task, args, JobOptions::default())
    }

    /// `apply_async` with per-job limits and callbacks.
    pub fn apply_async_with<A: Serialize, R: DeserializeOwned + 'static>(
        &self,
        plugin: &str,
        task: &str,
        args: A,
        opts: JobOptions<R>,
    ) -> Result<AsyncResult<R>, TaskError> {
        let target = self.task_ref(plugin, task)?;
        let bytes = Self::encode_args(&args)?;
        let typed = Arc::new(Typed::new::<A, R>(self, target));
        let JobOptions {
            limits,
            on_success,
            on_error,
            retry,
        } = opts;
        let callback: Option<job::Callback> = if on_success.is_none() && on_error.is_none() {
            None
        } else {
            let typed = typed.clone();
            Some(Box::new(move |outcome: &Outcome| {
                match typed.decode::<R>(outcome.clone()) {
                    Ok(v) => {
                        if let Some(f) = on_success {
                            f(v)
                        }
                    }
                    Err(e) => {
                        if let Some(f) = on_error {
                            f(e)
                        }
                    }
                }
            }))
        };
        let raw = self.apply_raw_choice(target, Codec::Bincode, bytes, limits, callback, &retry)?;
        Ok(AsyncResult {
            raw,
            typed,
            _r: PhantomData,
        })
    }

    /// Applies a one-argument task to every item; results in input order.
    /// Fails with the first failed item's error. `chunksize` items travel
    /// per message (and run in one FFI call).
    pub fn map<A: Serialize, R: DeserializeOwned>(
        &self,
        plugin: &str,
        task: &str,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<Vec<R>, TaskError> {
        self.imap(plugin, task, items, chunksize)?.collect()
    }

    /// Like `map`, but each item is the whole argument tuple.
    pub fn starmap<A: Serialize, R: DeserializeOwned>(
        &self,
        plugin: &str,
        task: &str,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<Vec<R>, TaskError> {
        let target = self.task_ref(plugin, task)?;
        let typed = Typed::new::<A, R>(self, target);
        Imap::new(
            self.typed_stream(target, items, |a| a, true, chunksize),
            typed,
        )
        .collect()
    }

    /// Starts a `map` in the background; `MapResult::get` waits for it.
    pub fn map_async<A: Serialize, R: DeserializeOwned>(
        &self,
        plugin: &str,
        task: &str,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<MapResult<R>, TaskError> {
        let target = self.task_ref(plugin, task)?;
        let typed = Typed::new::<(A,), R>(self, target);
        let (tx, rx) = crossbeam_channel::unbounded();
        let tx = job::ChunkSender::new(tx).with_retry(self.stream_retry(&retry::Choice::Pool));
        let chunksize = chunksize.clamp(1, config::MAX_CHUNKSIZE);
        // A chunk stays within the frame limit: the item that would take it
        // past starts the next one (a big item fails alone, as in streams).
        let room = self.cfg.max_frame.saturating_sub(crate::ipc::RUN_HEADER);
        let mut ds = Vec::new();
        let mut n = 0u64;
        let mut items = items.into_iter();
        let mut carried: Option<Vec<u8>> = None;
        loop {
            let mut payload = Vec::new();
            let mut args: Vec<Vec<u8>> = carried.take().into_iter().collect();
            let mut size: usize = args.iter().map(|a| a.len().saturating_add(4)).sum();
            while args.len() < chunksize {
                let Some(item) = items.next() else { break };
                let a = Self::encode_args(&(item,))?;
                let grown = size.saturating_add(a.len()).saturating_add(4);
                if !args.is_empty() && grown > room {
                    carried = Some(a);
                    break;
                }
                size = grown;
                args.push(a);
            }
            if args.is_empty() {
                break;
            }
            // At most MAX_CHUNKSIZE (2^20) items: fits.
            let count = u32::try_from(args.len()).unwrap_or(u32::MAX);
            if count == 1 {
                payload = args.pop().unwrap_or_default();
            } else {
                for a in &args {
                    codec::push_record(&mut payload, a);
                }
            }
            ds.push(self.chunk_dispatch(
                target,
                Codec::Bincode,
                Limits::default(),
                payload,
                count,
                &tx,
                n,
            ));
            n += count as u64;
        }
        self.submit(ds)?;
        Ok(MapResult {
            rx,
            n,
            typed,
            _r: PhantomData,
        })
    }

    /// A dispatch of `count` jobs of one task (`payload`: the raw arguments
    /// when `count == 1`, else argument records) whose outcomes go to a
    /// stream as items `first_index..`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn chunk_dispatch(
        &self,
        target: TaskRef,
        codec: Codec,
        limits: Limits,
        payload: Vec<u8>,
        count: u32,
        tx: &job::ChunkSender,
        first_index: u64,
    ) -> Dispatch {
        let d = Dispatch {
            first_job: self.job_ids(count),
            count,
            plugin: target.plugin,
            task: target.task,
            gen: target.gen,
            codec,
            payload: Arc::new(payload),
            limits,
            reply: Reply::Stream {
                tx: tx.clone(),
                first_index,
            },
            attempt: 0,
            retries: 0,
            cancelled: false,
            delivered: 0,
        };
        if let Some(r) = tx.retry() {
            r.register(first_index, &d, self.task_rule(target, r.rule()));
        }
        d
    }

    /// A typed stream over `items`, each encoded with `wrap` into the
    /// argument tuple.
    fn typed_stream<'p, A: Serialize + 'p, T: Serialize>(
        &'p self,
        target: TaskRef,
        items: impl IntoIterator<Item = A> + 'p,
        wrap: impl Fn(A) -> T + 'p,
        ordered: bool,
        chunksize: usize,
    ) -> RawStream<'p> {
        let mut it = items.into_iter();
        let next = move |buf: &mut Vec<u8>| {
            let item = it.next()?;
            Some(
                codec::encode_into(Codec::Bincode, &wrap(item), buf).map_err(|e| {
                    TaskError::new(
                        ErrorKind::BadArgs,
                        format!("cannot encode the arguments: {e}"),
                    )
                }),
            )
        };
        RawStream::typed(
            self,
            target,
            Box::new(next),
            ordered,
            chunksize,
            self.cfg.imap_window.max(1),
        )
    }

    /// Lazily applies a one-argument task to every item, yielding results in
    /// input order. At most `imap_window` jobs are in flight: a huge input
    /// is consumed as results are, so memory stays flat.
    pub fn imap<'p, A: Serialize + 'p, R: DeserializeOwned>(
        &'p self,
        plugin: &str,
        task: &str,
        items: impl IntoIterator<Item = A> + 'p,
        chunksize: usize,
    ) -> Result<Imap<'p, R>, TaskError> {
        let target = self.task_ref(plugin, task)?;
        let typed = Typed::new::<(A,), R>(self, target);
        Ok(Imap::new(
            self.typed_stream(target, items, |a| (a,), true, chunksize),
            typed,
        ))
    }

    /// Like `imap`, in completion order.
    pub fn imap_unordered<'p, A: Serialize + 'p, R: DeserializeOwned>(
        &'p self,
        plugin: &str,
        task: &str,
        items: impl IntoIterator<Item = A> + 'p,
        chunksize: usize,
    ) -> Result<Imap<'p, R>, TaskError> {
        let target = self.task_ref(plugin, task)?;
        let typed = Typed::new::<(A,), R>(self, target);
        Ok(Imap::new(
            self.typed_stream(target, items, |a| (a,), false, chunksize),
            typed,
        ))
    }

    /// The general streaming form: each item is a job (any task, any codec,
    /// its own limits) or an error that stands as that item's outcome.
    /// Yields `(index, outcome)`, in input order when `ordered`.
    pub fn imap_raw<'p>(
        &'p self,
        jobs: impl Iterator<Item = Result<RawJob, TaskError>> + 'p,
        ordered: bool,
        chunksize: usize,
    ) -> RawStream<'p> {
        RawStream::new(
            self,
            Box::new(jobs),
            ordered,
            chunksize.max(1),
            self.cfg.imap_window.max(1),
        )
    }

    /// Like [`Pool::imap_raw`], from a [`JobSource`] that writes each job's
    /// arguments straight into the chunk being built (no buffer per job).
    pub fn imap_source<'p>(
        &'p self,
        jobs: impl JobSource + 'p,
        ordered: bool,
        chunksize: usize,
    ) -> RawStream<'p> {
        RawStream::from_source(
            self,
            Box::new(jobs),
            ordered,
            chunksize.max(1),
            self.cfg.imap_window.max(1),
        )
    }

    /// Cancels a job: a queued one is dropped, a running one has its worker
    /// killed and replaced, one waiting for its retry is not run again
    /// (`id` is the job's first id; any attempt's id works too). Either way
    /// it ends with exactly one `terminated` outcome. Returns false if the
    /// job is unknown or already finished.
    pub fn terminate_job(&self, id: JobId) -> Result<bool, TaskError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Cmd::TerminateJob(id, tx))?;
        rx.recv().map_err(|_| self.unreachable())
    }

    /// Adds `n` workers, never past 512 in all (those beyond are not
    /// started); `n` over 512 is refused (`bad_args`).
    pub fn grow(&self, n: usize) -> Result<(), TaskError> {
        if n > MAX_WORKERS {
            return Err(TaskError::new(
                ErrorKind::BadArgs,
                format!("grow({n}): a pool has at most {MAX_WORKERS} workers"),
            ));
        }
        self.send(Cmd::Grow(n))
    }

    /// Removes `n` workers (never below one): idle ones go at once, busy
    /// ones after their current job.
    pub fn shrink(&self, n: usize) -> Result<(), TaskError> {
        self.send(Cmd::Shrink(n))
    }

    /// Rolling restart: reloads the plugin files in a new zygote and
    /// replaces every worker after its current job (hot reload). Returns
    /// once the new files are loaded and jobs submitted from then on run on
    /// them; the pool keeps serving with the current workers meanwhile.
    /// If the reload fails (a file is missing or not a plugin, its
    /// constructor dies or takes longer than the load timeout) the current
    /// generation keeps serving and the error says why (`plugin_load`).
    pub fn restart(&self) -> Result<(), TaskError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Cmd::Restart(Some(tx)))?;
        rx.recv().map_err(|_| self.unreachable())?
    }

    /// Starts a rolling restart and returns at once (see [`Pool::restart`]);
    /// the outcome is logged.
    pub fn restart_in_background(&self) -> Result<(), TaskError> {
        self.send(Cmd::Restart(None))
    }

    /// A snapshot of the pool's counters; an error once the pool has shut
    /// down.
    pub fn stats(&self) -> Result<Stats, TaskError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Cmd::Stats(tx))?;
        rx.recv().map_err(|_| self.unreachable())
    }

    /// No new jobs; the ones submitted still run. `join` waits for them.
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.send(Cmd::Close);
        }
    }

    /// Closes the pool, waits for every job to finish and for every worker
    /// to exit.
    pub fn join(mut self) -> Result<(), PoolError> {
        self.close();
        self.wait_threads()
    }

    /// Stops now: workers are killed, unfinished jobs end `terminated`.
    pub fn terminate(mut self) -> Result<(), PoolError> {
        self.closed.store(true, Ordering::Release);
        let _ = self.send(Cmd::Terminate);
        self.wait_threads()
    }

    /// Like [`Pool::terminate`], through a shared reference (e.g. from a
    /// signal-handling thread while another thread consumes a stream):
    /// workers are killed and every unfinished job ends `terminated`, its
    /// outcome delivered as usual. No new jobs are accepted; `join` or drop
    /// the pool afterwards to wait for the supervisor.
    pub fn terminate_now(&self) {
        self.closed.store(true, Ordering::Release);
        let _ = self.send(Cmd::Terminate);
    }

    fn wait_threads(&mut self) -> Result<(), PoolError> {
        let mut res = Ok(());
        if let Some(t) = self.thread.take() {
            let joined = t.join();
            if let Some(msg) = self.death.get() {
                res = Err(PoolError::SupervisorPanicked(msg.clone()));
            } else if let Err(payload) = joined {
                res = Err(PoolError::SupervisorPanicked(panic_message(&*payload)));
            }
        }
        if let Some(t) = self.callback_thread.take() {
            let _ = t.join();
        }
        res
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.closed.store(true, Ordering::Release);
            let _ = self.send(Cmd::Terminate);
            let _ = self.wait_threads();
        }
    }
}

/// The indices of the first two plugins that share a name, if any.
fn duplicate_plugin(plugins: &[PluginInfo]) -> Option<(usize, usize)> {
    plugins.iter().enumerate().find_map(|(b, p)| {
        plugins[..b]
            .iter()
            .position(|q| q.name == p.name)
            .map(|a| (a, b))
    })
}

/// Ends the jobs of `ds`, which never reached the supervisor, with `err`
/// (not with "dropped when the pool shut down", which is not why).
fn fail_unsent(ds: Vec<Dispatch>, err: &TaskError) {
    for mut d in ds {
        d.fail_rest(|job| {
            TaskError::new(err.kind, format!("job {job} was not run: {}", err.message))
        });
    }
}

/// The text of a panic's payload (`panic!` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// [`TEST_PANIC_ENV`] in debug builds.
fn test_panic_at() -> Option<u64> {
    if !cfg!(debug_assertions) {
        return None;
    }
    std::env::var(TEST_PANIC_ENV).ok()?.trim().parse().ok()
}

fn gone() -> TaskError {
    TaskError::new(ErrorKind::Terminated, "the pool has shut down")
}

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
    on_success: Option<Box<dyn FnOnce(R) + Send>>,
    on_error: Option<Box<dyn FnOnce(TaskError) + Send>>,
    retry: retry::Choice,
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
    /// This job's soft time limit (see [`PoolBuilder::soft_time_limit`]).
    pub fn soft_time_limit(mut self, d: Duration) -> Self {
        self.limits.soft = Some(d);
        self
    }
    /// This job's hard time limit (see [`PoolBuilder::time_limit`]).
    pub fn time_limit(mut self, d: Duration) -> Self {
        self.limits.hard = Some(d);
        self
    }
    /// Retries this job as `policy` says instead of by the pool's default
    /// (see [`PoolBuilder::retry_policy`]); here `max_retries` is a hard
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
    id: JobId,
    slot: Arc<ResultSlot>,
    /// This handle's waker registration in the slot, once polled.
    waker_key: Option<u64>,
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
    raw: RawResult,
    /// The task's and the caller's types, for errors that name them.
    pub(crate) typed: Arc<Typed>,
    _r: PhantomData<fn() -> R>,
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
    rx: crossbeam_channel::Receiver<job::ChunkResult>,
    n: u64,
    typed: Typed,
    _r: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> MapResult<R> {
    /// Waits for every item; the first failure (in input order) wins.
    pub fn get(self) -> Result<Vec<R>, TaskError> {
        stream::collect_chunks(&self.rx, self.n, gone, &self.typed)
    }
}

/// Forks the zygote straight from this process (the `fork` start method).
fn fork_zygote(cfg: &PoolConfig) -> Result<(std::os::fd::OwnedFd, i32), PoolError> {
    use std::os::fd::AsRawFd;
    let io = |what| move |source| PoolError::Io { what, source };
    let (ours, theirs) = sys::seqpacket_pair().map_err(io("socketpair"))?;
    let (_out_r, out_w) = sys::pipe().map_err(io("pipe"))?;
    match sys::fork_single_threaded().map_err(|e| PoolError::Config(e.to_string()))? {
        sys::Forked::Child => {
            // The zygote: a copy of this (single-threaded) process, in a
            // session of its own (no terminal for its workers, C2).
            if sys::setup_worker_process(
                &[theirs.as_raw_fd()],
                out_w.as_raw_fd(),
                sys::Lead::Session,
            )
            .is_err()
                || sys::die_with_parent_by(sys::ZYGOTE_DEATH_SIGNAL).is_err()
            {
                sys::exit_now(1);
            }
            let Ok(ctl) = sys::inherited_fd(3) else {
                sys::exit_now(1)
            };
            std::mem::forget((ours, theirs, out_w));
            crate::zygote::run(
                ctl,
                cfg.plugins.clone(),
                crate::zygote::Birth::Fork,
                cfg.sandbox.clone(),
            )
        }
        sys::Forked::Parent { child } => Ok((ours, child)),
    }
}
