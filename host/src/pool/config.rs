//! Pool configuration: what `Pool::builder()` sets and the CLI flags map to.

use std::path::PathBuf;
use std::time::Duration;

/// How workers are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum StartMethod {
    /// A single-threaded zygote, started by exec, preloads the plugins and
    /// forks workers copy-on-write (default; safe in multithreaded hosts).
    #[default]
    Forkserver,
    /// The zygote is a fork of the host itself (workers see the host's
    /// memory as it was at `build()`); refused when the host has threads.
    Fork,
    /// Every worker is a fresh exec of the worker executable that loads the
    /// plugins itself: slowest, shares nothing.
    Spawn,
}

impl std::fmt::Display for StartMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StartMethod::Forkserver => "forkserver",
            StartMethod::Fork => "fork",
            StartMethod::Spawn => "spawn",
        })
    }
}

/// A task run once in every new worker before it takes jobs (billiard's
/// `initializer`). Arguments are a JSON array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initializer {
    /// The name of the plugin that has the task (a loaded plugin's name, not
    /// its path).
    pub plugin: String,
    /// The task's name in that plugin.
    pub task: String,
    /// The task's arguments, a JSON array such as `[1, "x"]`.
    pub args_json: String,
}

/// Everything that shapes a pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// How many worker processes the pool keeps (default: the number of
    /// CPUs).
    pub workers: usize,
    /// The plugin files (`.so`) every worker loads, in order.
    pub plugins: Vec<PathBuf>,
    /// How workers are created (default [`StartMethod::Forkserver`]).
    pub start_method: StartMethod,
    /// The executable started as zygote / spawned worker (must call
    /// `billiard_host::run_if_helper()` first thing); when `None`: this
    /// program if its `main` calls that hook, else a `billiard-host` (see
    /// `Pool::builder().worker_exe`).
    pub worker_exe: Option<PathBuf>,
    /// Jobs in flight per worker (1: only idle workers get work).
    pub prefetch: usize,
    /// A worker exits, and is replaced, after this many jobs; `None`: never.
    pub max_tasks_per_child: Option<u64>,
    /// Recycle a worker after a job once its private (anonymous) memory grew
    /// by more than this many bytes since it started.
    pub max_memory_per_child: Option<u64>,
    /// Hard address-space cap per worker (RLIMIT_AS), bytes.
    pub address_space_limit: Option<u64>,
    /// A job running longer than this is asked to stop (its `TaskContext`
    /// says so); a task that checks ends `soft_time_limit`. `None`: no soft
    /// limit. A job's own limit ([`Limits`]) comes first.
    pub soft_time_limit: Option<Duration>,
    /// A job running longer than this has its worker killed (and replaced);
    /// the job ends `time_limit`. `None`: no hard limit.
    pub time_limit: Option<Duration>,
    /// A task every new worker runs once before it takes jobs.
    pub initializer: Option<Initializer>,
    /// Largest frame accepted from a worker, bytes.
    pub max_frame: usize,
    /// Payloads (arguments or results) of at least this many bytes travel
    /// through the worker's shared-memory arena instead of its socket
    /// (`crate::shm`); `None`: never.
    pub shm_threshold: Option<usize>,
    /// JSON results of byte-typed tasks come back as `{"$bytes": "<base64>"}`
    /// instead of arrays of numbers (`run --bytes base64`).
    pub bytes_base64: bool,
    /// Jobs an `imap` keeps in flight before it waits for results.
    pub imap_window: usize,
    /// At most this many workers may die at start within `restart_window`
    /// before the pool stops forking and fails pending jobs.
    pub max_start_failures: u32,
    /// The window of [`PoolConfig::max_start_failures`].
    pub restart_window: Duration,
    /// How long a zygote may take to load the plugins (their constructors
    /// run then) before the start, or a reload, is given up.
    pub load_timeout: Duration,
    /// What workers (and the zygote that loads the plugins) may do
    /// (`crate::sandbox`); `none` by default.
    pub sandbox: crate::sandbox::Sandbox,
    /// How failed jobs are retried by default (`None`: never; a job's or a
    /// stream's own policy comes first). See `PoolBuilder::retry_policy`.
    pub retry: Option<crate::retry::RetryPolicy>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            plugins: Vec::new(),
            start_method: StartMethod::default(),
            worker_exe: None,
            prefetch: 1,
            max_tasks_per_child: None,
            max_memory_per_child: None,
            address_space_limit: None,
            soft_time_limit: None,
            time_limit: None,
            initializer: None,
            max_frame: crate::ipc::DEFAULT_MAX_FRAME,
            shm_threshold: Some(crate::shm::DEFAULT_THRESHOLD),
            bytes_base64: false,
            imap_window: 4096,
            max_start_failures: 10,
            restart_window: Duration::from_secs(10),
            load_timeout: Duration::from_secs(60),
            sandbox: crate::sandbox::Sandbox::default(),
            retry: None,
        }
    }
}

/// See [`PoolConfig::MAX_CHUNKSIZE`].
pub(crate) const MAX_CHUNKSIZE: usize = PoolConfig::MAX_CHUNKSIZE;

impl PoolConfig {
    /// The smallest frame limit a pool accepts ([`PoolConfig::max_frame`]):
    /// every frame header and a small job's arguments fit.
    pub const MIN_MAX_FRAME: usize = 4096;
    /// The largest frame limit: a frame's length travels as 32 bits.
    pub const MAX_MAX_FRAME: usize = u32::MAX as usize;
    /// The most jobs one chunk holds (`map`'s `chunksize`, `run
    /// --chunksize`): a chunk's job count travels as 32 bits and it runs in
    /// one frame and one call; the library takes a larger `chunksize` as
    /// this many, the CLI refuses it.
    pub const MAX_CHUNKSIZE: usize = 1 << 20;

    /// Every duration, size and count of the configuration in its range;
    /// else the error names the setting and the bound (what
    /// `PoolBuilder::build` returns as `PoolError::Config`). Durations are
    /// bounded by [`crate::bounds::MAX_DURATION`], so every deadline the
    /// supervisor computes from them fits the clock.
    pub fn check(&self) -> Result<(), String> {
        use crate::bounds::check_duration;
        let positive = |what: &str, d: Duration| -> Result<(), String> {
            if d.is_zero() {
                return Err(format!("{what}: must be longer than 0"));
            }
            check_duration(what, d).map(drop).map_err(|e| e.to_string())
        };
        if let Some(d) = self.soft_time_limit {
            positive("soft_time_limit", d)?;
        }
        if let Some(d) = self.time_limit {
            positive("time_limit", d)?;
        }
        positive("load_timeout", self.load_timeout)?;
        if let Some(p) = &self.retry {
            crate::pool::retry::check_policy(p)?;
        }
        positive("restart_limit's window", self.restart_window)?;
        if self.max_tasks_per_child == Some(0) {
            return Err("max_tasks_per_child: must be at least 1".into());
        }
        if self.max_memory_per_child == Some(0) {
            return Err("max_memory_per_child: must be more than 0 bytes".into());
        }
        if self.address_space_limit == Some(0) {
            return Err("address_space_limit: must be more than 0 bytes".into());
        }
        if !(Self::MIN_MAX_FRAME..=Self::MAX_MAX_FRAME).contains(&self.max_frame) {
            return Err(format!(
                "max_frame: {} bytes is outside {}..={} bytes",
                self.max_frame,
                Self::MIN_MAX_FRAME,
                Self::MAX_MAX_FRAME
            ));
        }
        Ok(())
    }
}

/// Per-job overrides of the pool's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// This job's soft time limit (see [`PoolConfig::soft_time_limit`]);
    /// `None`: the pool's.
    pub soft: Option<Duration>,
    /// This job's hard time limit (see [`PoolConfig::time_limit`]); `None`:
    /// the pool's.
    pub hard: Option<Duration>,
}

impl Limits {
    /// Parses one limit as job files write it (`"500ms"`, `"2s"`: humantime)
    /// for the field `field` of a job line or a golden case. 0 is refused:
    /// a job that may not run at all is a mistake, not a limit. The error
    /// names the field.
    pub fn parse_field(s: &str, field: &str) -> Result<Duration, String> {
        let d = humantime::parse_duration(s)
            .map_err(|e| format!("\"{field}\": {e} (e.g. \"500ms\", \"2s\")"))?;
        if d.is_zero() {
            return Err(format!(
                "\"{field}\": must be longer than 0 (e.g. \"500ms\", \"2s\")"
            ));
        }
        crate::bounds::check_duration(&format!("\"{field}\""), d).map_err(|e| e.to_string())
    }

    /// Both limits at most [`crate::bounds::MAX_DURATION`] (what a job's
    /// own limits from the library must satisfy; job lines and cases are
    /// checked as they are parsed, [`Limits::parse_field`]): else the
    /// job's `bad_args` error, naming the limit.
    pub fn check(&self) -> Result<(), crate::TaskError> {
        for (d, what) in [(self.soft, "soft_time_limit"), (self.hard, "time_limit")] {
            if let Some(d) = d {
                crate::bounds::check_duration(what, d)
                    .map_err(|e| crate::TaskError::new(crate::ErrorKind::BadArgs, e.to_string()))?;
            }
        }
        Ok(())
    }

    /// These limits, falling back to the pool's where unset.
    pub fn or(self, cfg: &PoolConfig) -> Limits {
        Limits {
            soft: self.soft.or(cfg.soft_time_limit),
            hard: self.hard.or(cfg.time_limit),
        }
    }
}
