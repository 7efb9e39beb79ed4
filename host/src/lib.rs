//! # billiard-host
//!
//! A process pool that runs task plugins (`.so` files built with
//! `billiard-plugin-api`) in forked worker processes. See `README.md` for a
//! tour and `ARCHITECTURE.md` for the invariants.
//!
//! A program that embeds [`Pool`] with the default `forkserver` start
//! method needs the `billiard-host` executable (it is exec'd as the
//! zygote); see [`PoolBuilder::worker_exe`].

pub mod celery;
pub mod error;
pub mod ipc;
pub mod metrics;
pub mod plugin;
pub mod pool;
mod process;
pub mod sys;
mod worker;
mod zygote;

pub use billiard_plugin_api::Codec;
pub use error::{ErrorKind, TaskError};
pub use plugin::{Plugin, PluginInfo, PluginLoadError, TaskSpec};
pub use pool::{
    AsyncResult, Event, Imap, JobId, JobOptions, Limits, MapResult, Outcome, Pool, PoolBuilder,
    PoolConfig, PoolError, RawJob, RawResult, RawStream, StartMethod, Stats, TaskRef, WorkerId,
};
pub use process::Process;
pub use zygote::run_if_helper;
