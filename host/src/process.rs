//! `Process`: one task call in a fresh, isolated process (billiard's
//! `Process`), with the pool's limits and the pool's crash reports.
//!
//! ```no_run
//! use billiard_host::Process;
//! use std::time::Duration;
//! let mut p = Process::new("target/release/libbilliard_math.so", "square", (7u64,))
//!     .time_limit(Duration::from_secs(5));
//! p.start()?;
//! println!("running in pid {:?}", p.pid());
//! let y: u64 = p.join_value()?;
//! assert_eq!(y, 49);
//! # Ok::<(), billiard_host::TaskError>(())
//! ```
//!
//! A `Process` is a private one-worker pool that lives exactly as long as
//! its call: `start` starts a zygote that loads the plugin files afresh
//! and forks the one worker that runs the call (`max_tasks_per_child` 1;
//! the pool is closed at once, so no second worker is ever forked), and
//! `join` waits for the outcome and then for the zygote and the worker to
//! be reaped. So every guarantee of the pool holds for one call as it does
//! for many: the limits are enforced by the supervisor thread in this
//! process (a hard limit is a SIGKILL of the worker's process group, which
//! a task cannot ignore), the outcome is one of the pool's (`worker_lost`
//! with the signal and the dying output lines, `time_limit`, ...) with the
//! same messages, and whatever the task started (in its group, in a new
//! session, double-forked) is killed when the worker ends, by the zygote,
//! its subreaper. Nothing is kept between calls.
//!
//! Dropping a `Process` that is still running kills it (and reaps it,
//! within the pool's bounds).

use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use billiard_plugin_api::{codec, Codec};
use crossbeam_channel::Receiver;
use serde::{de::DeserializeOwned, Serialize};

use crate::error::{ErrorKind, TaskError};
use crate::pool::{
    decode_outcome, Event, Limits, Outcome, Pool, PoolBuilder, PoolConfig, PoolError, RawResult,
    StartMethod,
};

/// One task call in a process of its own; see the module docs.
pub struct Process {
    /// The pool the call runs in, before the settings that make it one
    /// call's (one worker, one job).
    builder: PoolBuilder,
    /// `NAME` or `PLUGIN.NAME`, looked up in the plugins the process loads.
    task: String,
    codec: Codec,
    /// The encoded arguments, or why they could not be encoded.
    args: Result<Vec<u8>, TaskError>,
    limits: Limits,
    running: Option<Running>,
    /// Known once the call is over (and the process reaped), or when it
    /// could not be started.
    outcome: Option<Outcome>,
    /// The worker's pid (0: none yet); kept after the process ended.
    pid: AtomicI32,
}

struct Running {
    pool: Pool,
    result: RawResult,
    events: Receiver<Event>,
}

impl Process {
    /// A call of `task` in the plugin file `plugin`, with `args` (a tuple,
    /// one element per task argument: `(3u64,)`) encoded as bincode. Nothing
    /// runs until [`Process::start`] (or `join`).
    pub fn new<A: Serialize>(plugin: impl Into<PathBuf>, task: &str, args: A) -> Process {
        let args = codec::encode(Codec::Bincode, &args).map_err(|e| {
            TaskError::new(
                ErrorKind::BadArgs,
                format!("cannot encode the arguments: {e}"),
            )
        });
        Process::build(plugin.into(), task, Codec::Bincode, args)
    }

    /// Like [`Process::new`] with arguments already encoded with `codec`
    /// (a JSON array for [`Codec::Json`]).
    pub fn raw(plugin: impl Into<PathBuf>, task: &str, codec: Codec, args: Vec<u8>) -> Process {
        Process::build(plugin.into(), task, codec, Ok(args))
    }

    /// A call with every setting of a pool configuration (its plugin files,
    /// limits, start method, worker executable, sandbox...). `task` is
    /// `NAME`, or `PLUGIN.NAME` when several plugins have it (as in
    /// [`Pool::find_task`]). The settings that shape a pool of many
    /// workers do not apply: it has one worker, which runs one job.
    pub fn with_config(cfg: PoolConfig, task: &str, codec: Codec, args: Vec<u8>) -> Process {
        Process::with_builder(Pool::builder().config(cfg), task, codec, args)
    }

    /// [`Process::with_config`] with the settings of a [`PoolBuilder`].
    pub fn with_builder(builder: PoolBuilder, task: &str, codec: Codec, args: Vec<u8>) -> Process {
        Process {
            builder,
            task: task.to_string(),
            codec,
            args: Ok(args),
            limits: Limits::default(),
            running: None,
            outcome: None,
            pid: AtomicI32::new(0),
        }
    }

    fn build(plugin: PathBuf, task: &str, codec: Codec, args: Result<Vec<u8>, TaskError>) -> Self {
        let mut p = Process::with_builder(Pool::builder().plugin(plugin), task, codec, Vec::new());
        p.args = args;
        p
    }

    /// Loads another plugin file in the process (the task may then be
    /// named `PLUGIN.NAME`).
    pub fn plugin(mut self, path: impl Into<PathBuf>) -> Self {
        self.builder = std::mem::take(&mut self.builder).plugin(path);
        self
    }
    /// Ask the task to stop after `d` (it ends `soft_time_limit` if it
    /// polls its context).
    pub fn soft_time_limit(mut self, d: Duration) -> Self {
        self.limits.soft = Some(d);
        self
    }
    /// Kill the process after `d`; the call ends `time_limit`.
    pub fn time_limit(mut self, d: Duration) -> Self {
        self.limits.hard = Some(d);
        self
    }
    /// Both limits at once (unset ones fall back to the configuration's).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
    /// Caps the process's address space (RLIMIT_AS): an allocation past
    /// it fails inside the process, which ends `worker_lost` naming the
    /// cap.
    pub fn address_space_limit(mut self, bytes: u64) -> Self {
        self.builder = std::mem::take(&mut self.builder).address_space_limit(bytes);
        self
    }
    /// How long loading the plugin files may take (default 60 s).
    pub fn load_timeout(mut self, d: Duration) -> Self {
        self.builder = std::mem::take(&mut self.builder).load_timeout(d);
        self
    }
    /// The executable started as the zygote (see
    /// [`crate::PoolBuilder::worker_exe`]).
    pub fn worker_exe(mut self, path: impl Into<PathBuf>) -> Self {
        self.builder = std::mem::take(&mut self.builder).worker_exe(path);
        self
    }
    /// How the process is made (default `forkserver`: exec of the zygote,
    /// which forks the worker; `spawn` also execs the worker).
    pub fn start_method(mut self, m: StartMethod) -> Self {
        self.builder = std::mem::take(&mut self.builder).start_method(m);
        self
    }
    /// Runs the call in a sandbox ([`crate::sandbox`]), as a pool's workers:
    /// checked at `start` (a protection the kernel cannot give is a
    /// `plugin_load` error naming it).
    pub fn sandbox(mut self, sandbox: crate::sandbox::Sandbox) -> Self {
        self.builder = std::mem::take(&mut self.builder).sandbox(sandbox);
        self
    }
    /// Any other pool setting, e.g. `p.configure(|b| b.initializer(..))`.
    pub fn configure(mut self, f: impl FnOnce(PoolBuilder) -> PoolBuilder) -> Self {
        self.builder = f(std::mem::take(&mut self.builder));
        self
    }

    /// Starts the process: loads the plugin files in a fresh zygote, forks
    /// the worker and hands it the call. Returns once the worker runs (its
    /// pid is known) or the call is over. An error (the plugin cannot be
    /// loaded, no such task, the process cannot be started) is also the
    /// call's outcome. Starting twice is a no-op.
    pub fn start(&mut self) -> Result<(), TaskError> {
        if self.running.is_some() {
            return Ok(());
        }
        if let Some(o) = &self.outcome {
            return o.as_ref().map(|_| ()).map_err(Clone::clone);
        }
        match self.launch() {
            Ok(r) => {
                self.running = Some(r);
                self.await_worker();
                Ok(())
            }
            Err(e) => {
                self.outcome = Some(Err(e.clone()));
                Err(e)
            }
        }
    }

    fn launch(&mut self) -> Result<Running, TaskError> {
        let args = self.args.clone()?;
        let (tx, events) = crossbeam_channel::unbounded();
        let pool = self
            .builder
            .clone()
            .workers(1)
            .prefetch(1)
            .max_tasks_per_child(1)
            .events(tx)
            .build()
            .map_err(start_error)?;
        let target = pool.find_task(&self.task)?;
        let result = pool.apply_raw(target, self.codec, args, self.limits)?;
        // No job will follow: the pool forks no worker after this one.
        pool.close();
        Ok(Running {
            pool,
            result,
            events,
        })
    }

    /// Waits until the worker is up (its pid known) or the call is over;
    /// bounded by the load timeout.
    fn await_worker(&self) {
        let Some(r) = &self.running else { return };
        let deadline =
            crate::bounds::saturating_deadline(Instant::now(), r.pool.config().load_timeout);
        while self.pid.load(Ordering::Acquire) == 0 && !r.result.ready() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            // A short slice: the outcome may come without a WorkerUp (the
            // worker could not be forked).
            match r.events.recv_timeout(left.min(Duration::from_millis(20))) {
                Ok(e) => self.note(e),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn note(&self, e: Event) {
        if let Event::WorkerUp { pid, .. } = e {
            self.pid.store(pid, Ordering::Release);
        }
    }

    /// The pid of the process running the call (once started; still given
    /// after it ended). A worker that died before it began the call is
    /// replaced, as in the pool: then this is the replacement's pid.
    pub fn pid(&self) -> Option<i32> {
        if let Some(r) = &self.running {
            while let Ok(e) = r.events.try_recv() {
                self.note(e);
            }
        }
        match self.pid.load(Ordering::Acquire) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// True between `start` and the end of the call.
    pub fn is_running(&self) -> bool {
        self.running.as_ref().is_some_and(|r| !r.result.ready())
    }

    /// The outcome, if the call is over (without waiting).
    pub fn outcome(&self) -> Option<Outcome> {
        if let Some(o) = &self.outcome {
            return Some(o.clone());
        }
        let r = self.running.as_ref()?;
        r.result.ready().then(|| r.result.get())
    }

    /// Waits for the call to end (starting it if needed) and for the
    /// process to be reaped; returns the outcome.
    pub fn join(&mut self) -> Outcome {
        if self.running.is_none() && self.outcome.is_none() {
            let _ = self.start();
        }
        if let Some(r) = &self.running {
            r.result.wait();
        }
        self.finish()
    }

    /// Like [`Process::join`], waiting at most `d` for the call to end;
    /// `None` if it is still running (it goes on: join again or `kill`).
    pub fn join_timeout(&mut self, d: Duration) -> Option<Outcome> {
        if self.running.is_none() && self.outcome.is_none() {
            let _ = self.start();
        }
        if let Some(r) = &self.running {
            if !r.result.wait_timeout(d) {
                return None;
            }
        }
        Some(self.finish())
    }

    /// Joins and decodes a bincode result (a process made with
    /// [`Process::new`]) into the caller's type.
    pub fn join_value<R: DeserializeOwned>(&mut self) -> Result<R, TaskError> {
        decode_outcome(self.join())
    }

    /// Kills the process (SIGKILL to it and everything it started) and
    /// reaps it. A call still running ends `terminated`; one already over
    /// keeps its outcome. Returns the outcome.
    pub fn kill(&mut self) -> Outcome {
        if let Some(r) = self.running.take() {
            let was_done = r.result.ready();
            r.pool.terminate_now();
            let _ = r.pool.join();
            let outcome = r.result.get();
            self.drain(&r.events);
            self.outcome = Some(match outcome {
                Err(e) if e.kind == ErrorKind::Terminated && !was_done => Err(TaskError::new(
                    ErrorKind::Terminated,
                    match self.pid() {
                        Some(pid) => format!("the process (pid {pid}) was killed on request"),
                        None => "the process was killed on request".to_string(),
                    },
                )),
                o => o,
            });
        } else if self.outcome.is_none() {
            self.outcome = Some(Err(TaskError::new(
                ErrorKind::Terminated,
                "the process was killed before it started",
            )));
        }
        self.outcome.clone().unwrap_or_else(|| Err(gone()))
    }

    /// The call is over: tear the pool down (reaping the zygote and the
    /// worker) and keep the outcome.
    fn finish(&mut self) -> Outcome {
        if let Some(r) = self.running.take() {
            let outcome = r.result.get();
            // Closed at start: the supervisor ends once the job is out.
            let _ = r.pool.join();
            self.drain(&r.events);
            self.outcome = Some(outcome);
        }
        self.outcome.clone().unwrap_or_else(|| Err(gone()))
    }

    fn drain(&self, events: &Receiver<Event>) {
        while let Ok(e) = events.try_recv() {
            self.note(e);
        }
    }
}

impl Drop for Process {
    /// A process still running is killed and reaped (the pool's `Drop`).
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.pool.terminate_now();
            drop(r.pool);
        }
    }
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("pool", &self.builder)
            .field("task", &self.task)
            .field("pid", &self.pid())
            .field("running", &self.is_running())
            .finish()
    }
}

fn gone() -> TaskError {
    TaskError::new(ErrorKind::Terminated, "the process has gone")
}

/// A pool that could not be built, as the call's outcome.
fn start_error(e: PoolError) -> TaskError {
    match e {
        PoolError::PluginLoad(e) => e,
        PoolError::Config(msg) => TaskError::new(ErrorKind::PluginLoad, msg),
        other => TaskError::new(
            ErrorKind::WorkerLost,
            format!("the process could not be started: {other}; the task had NOT started"),
        ),
    }
}
