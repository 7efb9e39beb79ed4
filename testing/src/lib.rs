//! # billiard-testing
//!
//! A test harness for billiard-host task plugins. Add it to a plugin crate
//! as a dev-dependency and write ordinary `#[test]`s:
//!
//! ```ignore
//! use std::time::Duration;
//!
//! #[test]
//! fn square() {
//!     let h = billiard_testing::plugin!(); // builds this crate's .so, once
//!
//!     // In this process, through billiard_host::Plugin:
//!     assert_eq!(h.call("square", (3u64,)).expect_ok::<u64>(), 9);
//!     h.call("square", ("three",)).expect_bad_args();
//!
//!     // In a real pool of worker processes, with limits:
//!     let pool = h.pool();
//!     pool.call("square", (3u64,)).expect_value(9u64);
//!     pool.time_limit(Duration::from_millis(100))
//!         .call("slow", (60_000u64,))
//!         .expect_time_limit();
//!
//!     // The same inputs give the same outcomes in both places:
//!     let _: Vec<Result<u64, _>> = pool.assert_same("square", (0..100u64).map(|x| (x,)));
//! }
//! ```
//!
//! ## What it does
//!
//! - [`plugin!`] builds the calling crate's `cdylib` with cargo (`$CARGO`,
//!   the cargo running the test) once per test process, with the test's
//!   profile (`cargo test --release` builds a release plugin), into the
//!   target directory (`$CARGO_TARGET_DIR`, else the `target_directory`
//!   of `cargo metadata`). [`Harness::from_path`] takes an already-built
//!   `.so` instead.
//! - [`Harness::call`] calls a task in the test process with typed
//!   arguments (a tuple, one element per argument) and gives a [`Call`],
//!   whose `expect_*` methods assert the outcome by error kind and, on
//!   failure, panic with what was expected and what happened (kind and
//!   message, or the value).
//! - [`Harness::pool`] starts a real [`billiard_host::Pool`] with the
//!   plugin; its calls run in worker processes, where crashes
//!   (`worker_lost`) and hard time limits (`time_limit`) can be tested
//!   without taking the test down.
//! - [`TestPool::assert_same`] runs many inputs both ways and asserts the
//!   outcomes agree; it fits property tests (see the plugin template's
//!   tests in `examples/plugin-template/tests/`).
//!
//! ## The `billiard-host` executable
//!
//! A pool starts the `billiard-host` executable as its zygote (the process
//! that loads the plugins and forks the workers). The harness finds it, in
//! this order:
//!
//! 1. `$BILLIARD_HOST_EXE`, if set;
//! 2. by building it with `cargo build -p billiard-host` (the test's
//!    profile and target directory) when the plugin's workspace has the
//!    `billiard-host` package (a plugin inside the billiard-host
//!    repository), or else the workspace this crate was taken from (a
//!    plugin elsewhere that depends on `billiard-testing` by path);
//! 3. a `billiard-host` on `PATH` (`cargo install --path host`).
//!
//! A build (step 2) is announced on stderr, with the time it took after
//! it (`billiard-testing: billiard-host ready in 41.2s: ...`): the first
//! one compiles the host and takes a minute or two.
//!
//! In-process calls need none of this.
//!
//! ## In process or in the pool?
//!
//! In-process calls are fast and show the task's own panics and errors,
//! but they run in the test process: a task that crashes, aborts or never
//! returns takes the test with it. Test those in the pool.
//! `worker_lost` and `time_limit` only exist there.

#![warn(missing_docs)]

mod call;
mod cargo;
mod pool;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use billiard_host::{cases, Codec, Plugin, PluginInfo, PluginLoadError, Pool, PoolBuilder};
use serde::Serialize;

pub use billiard_host::{ErrorKind, Limits, TaskError};
pub use call::{Call, Place};
pub use pool::{Job, Pending, TestPool};

/// The harness of the crate this macro is used in: builds the crate's
/// `cdylib` (once per test process), loads it and returns a
/// `&'static Harness`. Use it in the tests of a plugin crate.
///
/// Panics, with cargo's output, if the plugin does not build or load.
#[macro_export]
macro_rules! plugin {
    () => {
        $crate::Harness::for_crate(
            ::core::env!("CARGO_MANIFEST_DIR"),
            ::core::env!("CARGO_PKG_NAME"),
        )
    };
}

/// The number of workers of [`Harness::pool`].
pub const DEFAULT_WORKERS: usize = 2;

/// A plugin under test: its `.so` loaded in this process, and what is
/// needed to start pools with it.
pub struct Harness {
    path: PathBuf,
    plugin: Plugin,
    /// The plugin crate's directory, when the harness built it (the
    /// billiard-host executable may be built in its workspace).
    manifest_dir: Option<PathBuf>,
    shared: OnceLock<TestPool>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("path", &self.path)
            .field("plugin", &self.plugin.name())
            .finish()
    }
}

impl Harness {
    /// Builds package `package` (whose `Cargo.toml` is in `manifest_dir`)
    /// and loads its `.so`, once per process; what [`plugin!`] expands to.
    ///
    /// Panics if the crate does not build or its plugin does not load.
    #[track_caller]
    pub fn for_crate(manifest_dir: impl AsRef<Path>, package: &str) -> &'static Harness {
        let dir = manifest_dir.as_ref().to_path_buf();
        let key = format!("harness:{}:{package}", dir.display());
        let built = cargo::once(key, || -> Result<&'static Harness, String> {
            let path = cargo::build_plugin(&dir, package)?;
            let mut h = Harness::try_from_path(&path).map_err(|e| e.to_string())?;
            h.manifest_dir = Some(dir.clone());
            Ok(Box::leak(Box::new(h)))
        });
        match built {
            Ok(h) => h,
            Err(e) => panic!("billiard-testing: {e}"),
        }
    }

    /// Loads an already-built plugin file. Panics with the load error.
    #[track_caller]
    pub fn from_path(path: impl AsRef<Path>) -> Harness {
        match Harness::try_from_path(path) {
            Ok(h) => h,
            Err(e) => panic!("billiard-testing: {e}"),
        }
    }

    /// Loads an already-built plugin file.
    pub fn try_from_path(path: impl AsRef<Path>) -> Result<Harness, PluginLoadError> {
        let plugin = Plugin::load(path.as_ref())?;
        Ok(Harness {
            path: plugin.info().path.clone(),
            plugin,
            manifest_dir: None,
            shared: OnceLock::new(),
        })
    }

    /// The plugin file (absolute).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The plugin's name, version and tasks.
    pub fn info(&self) -> &PluginInfo {
        self.plugin.info()
    }

    /// The plugin's name (from `export_plugin!`).
    pub fn name(&self) -> &str {
        self.plugin.name()
    }

    /// The plugin as loaded in this process.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    fn returns(&self, task: &str) -> Option<String> {
        self.info()
            .tasks
            .iter()
            .find(|t| t.name == task)
            .map(|t| t.ret.clone())
    }

    fn local(
        &self,
        task: &str,
        shown: String,
        codec: Codec,
        args: Result<Vec<u8>, TaskError>,
        soft: Option<Duration>,
    ) -> Call {
        let outcome = args.and_then(|a| pool::call_local(&self.plugin, task, codec, &a, soft));
        Call {
            plugin: self.name().to_string(),
            task: task.to_string(),
            args: shown,
            place: Place::InProcess,
            codec,
            returns: self.returns(task),
            outcome,
        }
    }

    /// Calls `task` in this process with `args` (a tuple, one element per
    /// argument: `(3u64,)`; `()` for none), encoded as bincode like
    /// `Pool::apply` does (as JSON for a C plugin, which speaks only that).
    pub fn call<A: Serialize>(&self, task: &str, args: A) -> Call {
        let wire = pool::typed_codec(&self.plugin);
        self.local(
            task,
            call::show_args(&args),
            wire,
            pool::encode_args(wire, &args),
            None,
        )
    }

    /// Calls `task` in this process with a JSON array of arguments, like
    /// the CLI; the result is JSON.
    pub fn call_json(&self, task: &str, args: serde_json::Value) -> Call {
        self.local(
            task,
            call::show_args(&args),
            Codec::Json,
            pool::encode_json_args(&args),
            None,
        )
    }

    /// An in-process call with a soft time limit: after `d` the task's
    /// `TaskContext` asks it to stop (`ctx.check()?` / `ctx.checkpoint()`),
    /// and it ends `soft_time_limit`. (A hard limit needs the pool.)
    pub fn soft_time_limit(&self, d: Duration) -> Local<'_> {
        Local { h: self, soft: d }
    }

    /// The `billiard-host` executable pools start as their zygote (see the
    /// crate docs for where it comes from). Panics if there is none.
    #[track_caller]
    pub fn worker_exe(&self) -> PathBuf {
        match cargo::worker_exe(self.manifest_dir.as_deref()) {
            Ok(p) => p,
            Err(e) => panic!("billiard-testing: {e}"),
        }
    }

    /// A pool builder with this plugin and the worker executable set, and
    /// [`DEFAULT_WORKERS`] workers; add limits and build it with
    /// [`Harness::pool_with`].
    pub fn pool_builder(&self) -> PoolBuilder {
        Pool::builder()
            .workers(DEFAULT_WORKERS)
            .plugin(&self.path)
            .worker_exe(self.worker_exe())
    }

    /// Starts a pool of [`DEFAULT_WORKERS`] workers with this plugin.
    #[track_caller]
    pub fn pool(&self) -> TestPool {
        self.pool_with(|b| b)
    }

    /// Starts a pool configured by `f`:
    /// `h.pool_with(|b| b.workers(4).time_limit(Duration::from_secs(5)))`.
    #[track_caller]
    pub fn pool_with(&self, f: impl FnOnce(PoolBuilder) -> PoolBuilder) -> TestPool {
        match f(self.pool_builder()).build() {
            Ok(pool) => TestPool {
                pool,
                plugin: self.plugin.clone(),
            },
            Err(e) => panic!(
                "billiard-testing: cannot start a pool with {}: {e}",
                self.path.display()
            ),
        }
    }

    /// Runs a golden cases file (the format of `billiard-host check
    /// --cases`; see [`billiard_host::cases`]) in a new pool of this
    /// plugin ([`Harness::pool_builder`]) and returns every result. Panics
    /// if the file cannot be read or has invalid lines (each is listed),
    /// or if the pool does not start.
    #[track_caller]
    pub fn run_cases(&self, path: impl AsRef<Path>) -> cases::Report {
        let path = path.as_ref();
        let list = match cases::read_file(path) {
            Ok(list) => list,
            Err(cases::ReadError::Invalid { errors, path }) => {
                let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
                panic!(
                    "billiard-testing: {} invalid case line(s) in {}:\n{}",
                    errors.len(),
                    path.display(),
                    lines.join("\n")
                )
            }
            Err(e) => panic!("billiard-testing: {e}"),
        };
        match cases::run(self.pool_builder(), &list) {
            Ok(report) => report,
            Err(e) => panic!(
                "billiard-testing: cannot start a pool with {}: {e}",
                self.path.display()
            ),
        }
    }

    /// Runs a golden cases file like [`Harness::run_cases`] and panics
    /// unless every case passes, with each failure's place and the diff of
    /// what it expected (`-`) and got (`+`):
    ///
    /// ```ignore
    /// #[test]
    /// fn golden_cases_pass() {
    ///     billiard_testing::plugin!().assert_cases("cases.jsonl");
    /// }
    /// ```
    #[track_caller]
    pub fn assert_cases(&self, path: impl AsRef<Path>) -> cases::Report {
        let path = path.as_ref();
        let report = self.run_cases(path);
        if !report.all_passed() {
            let mut text = String::new();
            for r in report.failures() {
                text.push_str(&format!(
                    "\nFAIL {}\n  - expected + got\n",
                    r.heading(Some(path))
                ));
                for line in r.diff() {
                    text.push_str(&format!("  {line}\n"));
                }
            }
            panic!("billiard-testing: {}\n{text}", report.summary());
        }
        report
    }

    /// One pool shared by every caller of this harness (started on first
    /// use, default settings). Saves starting a pool per test or per
    /// property-test case; use [`Harness::pool_with`] for a pool with
    /// limits of its own.
    #[track_caller]
    pub fn shared_pool(&self) -> &TestPool {
        self.shared.get_or_init(|| self.pool())
    }

    /// [`TestPool::assert_same`] on the [shared pool](Harness::shared_pool).
    #[track_caller]
    pub fn assert_same_in_pool<A, R>(
        &self,
        task: &str,
        inputs: impl IntoIterator<Item = A>,
    ) -> Vec<Result<R, TaskError>>
    where
        A: Serialize,
        R: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        self.shared_pool().assert_same(task, inputs)
    }
}

/// An in-process call with a soft time limit (see
/// [`Harness::soft_time_limit`]).
#[derive(Clone, Copy)]
pub struct Local<'h> {
    h: &'h Harness,
    soft: Duration,
}

impl Local<'_> {
    /// Calls `task` in this process with `args` (a tuple, as for
    /// [`Harness::call`]) under the soft time limit.
    pub fn call<A: Serialize>(self, task: &str, args: A) -> Call {
        let wire = pool::typed_codec(&self.h.plugin);
        self.h.local(
            task,
            call::show_args(&args),
            wire,
            pool::encode_args(wire, &args),
            Some(self.soft),
        )
    }

    /// Calls `task` in this process with a JSON array of arguments under the
    /// soft time limit; the result is JSON.
    pub fn call_json(self, task: &str, args: serde_json::Value) -> Call {
        self.h.local(
            task,
            call::show_args(&args),
            Codec::Json,
            pool::encode_json_args(&args),
            Some(self.soft),
        )
    }
}
