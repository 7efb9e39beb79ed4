//! # billiard-host
//!
//! A process pool that runs task plugins (`.so` files built with
//! `billiard-plugin-api`) in forked worker processes. See `README.md` for a
//! tour and `ARCHITECTURE.md` for the invariants.
//!
//! A program that embeds [`Pool`] with the default `forkserver` start
//! method needs the `billiard-host` executable (it is exec'd as the
//! zygote); see [`PoolBuilder::worker_exe`].
//!
//! ## Cargo features
//!
//! All on by default; an embedding program that wants the pool alone sets
//! `default-features = false` (no clap, no Redis, no HTTP server):
//!
//! - `cli`: the `billiard-host` executable (and `clap::ValueEnum` on
//!   [`StartMethod`] and [`sandbox::Profile`]); enables the two below.
//! - `celery`: the `celery` module, a Celery worker and client over Redis;
//!   enables `metrics`.
//! - `metrics`: the `metrics` module, Prometheus metrics and the
//!   /metrics, /healthz server.
//! - `cases`: the `cases` module, the golden-case runner of `check`.

#![warn(missing_docs)]
// No arithmetic that can panic on a value from outside: `Instant +
// Duration`, `Duration * n`, `Duration - Duration`, chrono's `DateTime +
// TimeDelta` are refused here (issue 22, C1: one huge time limit panicked
// the supervisor); use `bounds::deadline`, `bounds::saturating_deadline`,
// `bounds::scaled` or the checked/saturating std forms. clippy.toml allows
// same-type integer arithmetic, which the lint would flag everywhere.
#![cfg_attr(not(test), deny(clippy::arithmetic_side_effects))]

pub mod bounds;
#[cfg(feature = "cases")]
pub mod cases;
#[cfg(feature = "celery")]
pub mod celery;
mod error;
// Not part of the API: public (and hidden from the docs) only for the frame
// fuzzer in tests/fuzz.rs, which drives the decoders directly.
#[doc(hidden)]
pub mod ipc;
#[cfg(feature = "metrics")]
pub mod metrics;
mod plugin;
mod pool;
mod process;
mod pyrepr;
mod rate;
pub mod retry;
pub mod sandbox;
pub mod service;
pub mod task_options;
pub mod task_schema;
// Not part of the API: public (hidden) for the arena fuzzing in tests/.
#[doc(hidden)]
pub mod shm;
mod sys;
mod worker;
mod zygote;

/// Not part of the API: what the `billiard-host` executable (a separate
/// crate over this library) needs beyond it. May change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::sys::{exit_now, leave_terminal, signal_name};
}

pub use billiard_plugin_api::Codec;
pub use error::{Directive, ErrorKind, ExceptionClass, FailureDetail, TaskError};
pub use plugin::{
    closest_name, outcome, resolve_task, ArgSpec, Plugin, PluginInfo, PluginKind, PluginLoadError,
    PluginMeta, TaskSpec, C_ABI_VERSION,
};
pub use pool::FedStream;
pub use pool::{
    AsyncResult, CancelOnDrop, Event, Generation, Imap, ImapStream, Initializer, JobHead, JobId,
    JobOptions, JobSource, Limits, MapResult, Outcome, Pool, PoolBuilder, PoolConfig, PoolError,
    RawAsyncStream, RawJob, RawResult, RawStream, StartMethod, Stats, TaskRef, WorkerId,
};
pub use pool::{ItemBatch, ItemStream, News, ProgressHook, Streamed};
pub use process::Process;
pub use task_options::TaskOptions;
pub use zygote::run_if_helper;
