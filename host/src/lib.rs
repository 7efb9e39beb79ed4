//! # billiard-host
//!
//! A process pool that runs task plugins (`.so` files built with
//! `billiard-plugin-api`) in forked worker processes. See `README.md` for a
//! tour and `ARCHITECTURE.md` for the invariants.

pub mod error;
pub mod plugin;

pub use error::{ErrorKind, TaskError};
pub use plugin::{Plugin, PluginInfo, PluginLoadError, TaskSpec};
