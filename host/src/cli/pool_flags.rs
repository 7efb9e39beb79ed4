//! The pool flags `run`, `check` and `worker` share: one [`PoolFlags`],
//! flattened into each (nextest's `TestRunnerOpts`, wasmtime's
//! `RunCommon`), and [`PoolFlags::apply`] onto a [`PoolBuilder`]. What
//! differs per command is set where the command declares it (`mut_arg`:
//! `worker`'s `-c/--concurrency`, `check`'s help and its 30s load
//! timeout) or when it builds (`check`'s 60s time limit).
//!
//! Every flag here is in the clap group [`POOL_GROUP`], which `run
//! --broker` conflicts with: the flags that set up local workers are
//! refused there (give them to `billiard-host worker`).

use std::path::PathBuf;
use std::time::Duration;

use billiard_host::sandbox::{Profile, Sandbox};
use billiard_host::{PoolBuilder, StartMethod};

use super::values::{parse_duration, parse_positive_u64, parse_size, parse_workers};

/// The clap group of the flags that set up local workers (see the module
/// docs); `run` adds its own local-only flags to it.
pub(crate) const POOL_GROUP: &str = "pool";

#[derive(clap::Args, Debug, Clone)]
#[group(id = "pool")]
pub(crate) struct PoolFlags {
    /// Worker processes (1 to 512; default: the number of CPUs, 1 for --args).
    #[arg(short, long, value_name = "N", value_parser = parse_workers, group = POOL_GROUP)]
    pub workers: Option<usize>,
    /// Replace a worker after it ran N jobs.
    #[arg(long, value_name = "N", value_parser = parse_positive_u64, group = POOL_GROUP)]
    pub max_tasks_per_child: Option<u64>,
    /// Replace a worker once its memory grew by more than SIZE (e.g. 200MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, group = POOL_GROUP)]
    pub max_memory_per_child: Option<u64>,
    /// Cap each worker's address space (RLIMIT_AS) at SIZE (e.g. 2GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, group = POOL_GROUP)]
    pub address_space_limit: Option<u64>,
    /// Ask a task to stop after this long (e.g. 500ms); it ends `soft_time_limit`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub soft_time_limit: Option<Duration>,
    /// Kill a task's worker after this long (e.g. 2s); the job ends `time_limit`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub time_limit: Option<Duration>,
    /// How workers are created.
    #[arg(long, value_name = "METHOD", default_value_t = StartMethod::Forkserver, group = POOL_GROUP)]
    pub start_method: StartMethod,
    /// Give up loading the plugins (at start, or on a SIGHUP reload, which
    /// then keeps the current workers) after this long (default 60s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, group = POOL_GROUP)]
    pub load_timeout: Option<Duration>,
    #[command(flatten)]
    pub sandbox: SandboxFlags,
}

impl PoolFlags {
    /// Sets what these flags set on `b` (the worker count only when given:
    /// each command has its own default).
    pub(crate) fn apply(&self, mut b: PoolBuilder) -> PoolBuilder {
        b = b.start_method(self.start_method);
        if let Some(n) = self.workers {
            b = b.workers(n);
        }
        if let Some(n) = self.max_tasks_per_child {
            b = b.max_tasks_per_child(n);
        }
        if let Some(n) = self.max_memory_per_child {
            b = b.max_memory_per_child(n);
        }
        if let Some(n) = self.address_space_limit {
            b = b.address_space_limit(n);
        }
        if let Some(d) = self.soft_time_limit {
            b = b.soft_time_limit(d);
        }
        if let Some(d) = self.time_limit {
            b = b.time_limit(d);
        }
        if let Some(d) = self.load_timeout {
            b = b.load_timeout(d);
        }
        self.sandbox.apply(b)
    }
}

/// The sandbox flags (issue 15); they map onto one
/// [`billiard_host::sandbox::Sandbox`].
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Sandbox (docs/security.md)")]
#[group(skip)]
pub(crate) struct SandboxFlags {
    /// Sandbox the workers: `none` (default); `standard`: own PID
    /// namespace, seccomp filter, no capabilities, no_new_privs, scrubbed
    /// environment, process and file limits; `strict`: standard plus no
    /// network and a read-only filesystem. A protection this kernel cannot
    /// give is an error (exit 2), never skipped.
    #[arg(long, value_name = "PROFILE", default_value_t = Profile::None, group = POOL_GROUP)]
    pub sandbox: Profile,
    /// No network for the workers (a fresh network namespace).
    #[arg(long, group = POOL_GROUP)]
    pub no_network: bool,
    /// Make the filesystem read-only but DIR (an absolute path;
    /// repeatable). `strict` with none: nothing is writable.
    #[arg(long, value_name = "DIR", group = POOL_GROUP)]
    pub allow_write: Vec<PathBuf>,
    /// Run the workers as USER (name or uid); the host must be root.
    #[arg(long, value_name = "USER", group = POOL_GROUP)]
    pub user: Option<String>,
    /// Pass VAR through the scrubbed environment (repeatable).
    #[arg(long, value_name = "VAR", group = POOL_GROUP)]
    pub keep_env: Vec<String>,
    /// Processes per worker, itself and its tasks' children (standard and
    /// strict: 300, the smallest the kernel enforces).
    #[arg(long, value_name = "N", group = POOL_GROUP)]
    pub max_procs: Option<u64>,
    /// RLIMIT_NOFILE of the workers (standard and strict: 1024).
    #[arg(long, value_name = "N", group = POOL_GROUP)]
    pub max_open_files: Option<u64>,
    /// RLIMIT_FSIZE of the workers, e.g. 100MiB (standard and strict: 1GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, group = POOL_GROUP)]
    pub max_file_size: Option<u64>,
}

impl SandboxFlags {
    /// The policy these flags ask for.
    pub(crate) fn policy(&self) -> Sandbox {
        let mut s = Sandbox::profile(self.sandbox);
        if self.no_network {
            s = s.no_network();
        }
        for d in &self.allow_write {
            s = s.allow_write(d.clone());
        }
        if let Some(u) = &self.user {
            s = s.user(u.clone());
        }
        for v in &self.keep_env {
            s = s.keep_env(v.clone());
        }
        if let Some(n) = self.max_procs {
            s.limits.max_procs = Some(n);
        }
        if let Some(n) = self.max_open_files {
            s.limits.max_open_files = Some(n);
        }
        if let Some(n) = self.max_file_size {
            s.limits.max_file_size = Some(n);
        }
        s
    }

    /// Adds the policy to a pool builder.
    pub(crate) fn apply(&self, b: billiard_host::PoolBuilder) -> billiard_host::PoolBuilder {
        b.sandbox(self.policy())
    }
}
