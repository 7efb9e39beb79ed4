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

mod apply;
mod async_io;
mod builder;
mod callbacks;
pub(crate) mod config;
pub(crate) mod events;
mod handles;
pub(crate) mod items;
pub(crate) mod job;
pub(crate) mod retry;
mod stats;
mod stream;
mod streaming;
mod supervisor;
pub(crate) mod worker_exe;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use billiard_plugin_api::{codec, Codec};
use crossbeam_channel::Sender;
use serde::{de::DeserializeOwned, Serialize};

pub use async_io::{CancelOnDrop, ImapStream, RawAsyncStream};
pub use builder::PoolBuilder;
pub use config::{Initializer, Limits, PoolConfig, StartMethod};
pub use events::Event;
pub(crate) use handles::{decode_outcome, decode_outcome_bytes, Typed};
pub use handles::{AsyncResult, JobOptions, MapResult, RawResult};
pub use items::{ItemBatch, News, ProgressHook};
pub use job::{JobId, Outcome, WorkerId};
pub use retry::Attempts;
pub use stats::Stats;
pub use stream::{FedStream, Imap, JobHead, JobSource, RawJob, RawStream};
pub use streaming::{ItemStream, Streamed};
pub use supervisor::Generation;

use crate::error::{ErrorKind, TaskError};
use crate::plugin::PluginInfo;
use crate::sys::{self, Scoreboard};
use job::Dispatch;
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

/// A pool of worker processes running plugin tasks.
pub struct Pool {
    tx: Sender<Cmd>,
    waker: Arc<mio::Waker>,
    /// Whether a wake-up for commands is pending (`supervisor::WakeFlag`).
    wake_flag: supervisor::WakeFlag,
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
        let (cb_tx, cb_rx) = callbacks::queue();
        let callback_thread = std::thread::Builder::new()
            .name("billiard-callbacks".into())
            .spawn(move || cb_rx.run())
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
        let wake_flag = supervisor::WakeFlag::default();
        let sup_wake_flag = wake_flag.clone();
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
                        (rx, sup_wake_flag),
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
            wake_flag,
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
        if !self.wake_flag.raise() {
            // A wake-up is pending: the supervisor drains this command too.
            return Ok(());
        }
        self.waker.wake().map_err(|e| {
            // Not pending after all: the next command tries again.
            self.wake_flag.lower();
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

    /// [`Pool::imap_source`] whose input is read on a thread of `scope`,
    /// so the stream never waits for the input while results wait: on a
    /// quiet pipe, the results of the jobs sent so far come out while the
    /// next line is awaited (a [`RawStream`] would sit on them inside
    /// `next`). Chunks are cut short where `jobs` says its input is quiet
    /// ([`JobSource::poll_job`]); the window is the pool's `imap_window`,
    /// and an ordered stream holds at most 16 windows of items behind a
    /// slow one. The feeder thread starts with the first `next` and ends
    /// when the input does, or, once the stream is dropped, when `jobs`
    /// next returns.
    pub fn imap_fed<'scope, 'env>(
        &'env self,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        jobs: impl JobSource + Send + 'env,
        ordered: bool,
        chunksize: usize,
    ) -> FedStream<'scope, 'env> {
        FedStream::new(
            self,
            scope,
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
