//! # billiard-plugin-api
//!
//! The only billiard crate a task plugin depends on (`billiard-host new
//! NAME` writes such a crate). A plugin is a `cdylib` crate that writes its
//! tasks as ordinary functions:
//!
//! ```ignore
//! use billiard_plugin_api::{task, export_plugin};
//!
//! /// Squares a number.
//! #[task]
//! fn square(x: u64) -> u64 { x * x }
//!
//! export_plugin!(name: "math", tasks: [square]);
//! ```
//!
//! The [`task`] attribute generates the glue that decodes the positional
//! arguments (bincode from programs, a JSON array from people), catches
//! panics before they can reach the FFI boundary and encodes the result;
//! [`export_plugin!`] exports the layout-checked [`abi::PluginMod`] root
//! module that the host loads.
//!
//! A task may take a [`TaskContext`] (`ctx: &TaskContext` as any argument) to
//! learn its job id, to poll for a soft time limit or cancellation and to
//! report progress (`ctx.progress(done, total)`), and may return `T` or
//! `Result<T, E>` where `E: Display` becomes a `task_error`; a [`Failure`]
//! error (or any `E: Into<Failure>`) also names the Python exception class a
//! Celery caller catches and may ask for a retry, a reject or an ignore
//! ([`Failure::retry`], [`Failure::reject`], [`Failure::ignore`]). A task that takes
//! `out: &Emitter<T>` is a *streaming* task: it sends items with
//! `out.emit(value)` while it runs, before its final result.
//!
//! ## Registration options
//!
//! `#[task(...)]` takes Celery's per-task options, checked at compile time;
//! `inspect` shows them and the worker applies them (a task's options
//! override the worker's flags):
//!
//! ```
//! use billiard_plugin_api::{task, Failure};
//!
//! /// At most 100 a minute per worker; a `task_error` or a panic is retried
//! /// up to 5 times, 1 s, 2 s, 4 s ... apart (at most 10 min), no jitter.
//! #[task(
//!     rate_limit = "100/m",
//!     autoretry_for = "task_error,panic",
//!     max_retries = 5,
//!     retry_backoff = "1s",
//!     retry_backoff_max = "10m",
//!     retry_jitter = false,
//!     default_retry_delay = "3m"
//! )]
//! fn sync(account: u64) -> Result<u64, Failure> {
//!     Ok(account)
//! }
//! ```
//!
//! A rate that is not Celery's `N`, `N/s`, `N/m` or `N/h`, a duration
//! humantime does not read, an unknown failure kind or option does not
//! compile:
//!
//! ```compile_fail
//! #[billiard_plugin_api::task(rate_limit = "100/day")]
//! fn t() -> u64 { 0 }
//! ```
//!
//! ```compile_fail
//! #[billiard_plugin_api::task(autoretry_for = "task_error,oops")]
//! fn t() -> u64 { 0 }
//! ```
//!
//! ```compile_fail
//! #[billiard_plugin_api::task(retry_backoff = "soon")]
//! fn t() -> u64 { 0 }
//! ```
//!
//! ```compile_fail
//! #[billiard_plugin_api::task(priority = 3)]
//! fn t() -> u64 { 0 }
//! ```
//!
//! Celery names and Python's parameters (issue 29) are checked the same
//! way: a name with a space, a default of an argument the task does not
//! have, a defaulted argument before a required one (Python's rule) and
//! `varargs` without a last `Vec<T>` do not compile:
//!
//! ```
//! #[billiard_plugin_api::task(name = "proj.tasks.add3", defaults(z = 3, w = -1.5))]
//! fn add3(x: i64, y: i64, z: i64, w: f64, label: Option<String>) -> f64 { 0.0 }
//! #[billiard_plugin_api::task(varargs)]
//! fn total(first: i64, rest: Vec<i64>) -> i64 { first }
//! ```
//!
//! ```compile_fail
//! #[billiard_plugin_api::task(name = "proj tasks add")]
//! fn t() -> u64 { 0 }
//! ```
//!
//! ```compile_fail
//! #[billiard_plugin_api::task(defaults(q = 3))]
//! fn t(x: u64) -> u64 { x }
//! ```
//!
//! ```compile_fail
//! #[billiard_plugin_api::task(defaults(x = 3))]
//! fn t(x: u64, y: u64) -> u64 { x }
//! ```
//!
//! ```compile_fail
//! #[billiard_plugin_api::task(varargs)]
//! fn t(x: u64, y: u64) -> u64 { x }
//! ```

#![warn(missing_docs)]

pub mod abi;
pub mod codec;
mod context;
mod failure;
#[doc(hidden)]
pub mod glue;
#[doc(hidden)]
pub mod schema;

pub use abi::{Codec, Status, ABI_VERSION};
#[doc(hidden)]
pub use billiard_plugin_api_macros::__export_root_module;
#[doc(hidden)]
pub use billiard_plugin_api_macros::__listed_in_export_plugin;
pub use billiard_plugin_api_macros::task;
pub use context::{
    noop_host_services, Emitter, HostServices, HostServicesRef, StopReason, Stopped, TaskContext,
    HOST_FLAG_BYTES_BASE64, HOST_FLAG_FAILURE_DETAIL, HOST_FLAG_PROGRESS_DUE,
};
pub use failure::{
    check_class_name, Directive, Failure, InvalidClassName, RaiseAs, FAILURE_DETAIL_PREFIX,
    PYTHON_BUILTIN_EXCEPTIONS,
};

/// Re-exports the generated code relies on, so a plugin crate needs no other
/// dependency than this one.
#[doc(hidden)]
pub mod __private {
    pub use abi_stable;
    pub use schemars;
    pub use serde;
    pub use serde_bytes;
    pub use serde_json;
}

/// serde, as this crate uses it. For `#[derive(Serialize, Deserialize)]` on
/// a plugin's own argument and result types, add
/// `serde = { version = "1", features = ["derive"] }` to the plugin's
/// `Cargo.toml` (cargo unifies it with this one: one serde 1.x, one
/// `Serialize` trait); deriving through this re-export instead needs
/// `#[serde(crate = "billiard_plugin_api::serde")]` on each type.
pub use serde;
pub use serde_bytes;

/// schemars, as this crate uses it: `#[task]` exports a JSON Schema of each
/// task's arguments (the JSON array a job line or a Celery message carries)
/// and of its result, which `billiard-host inspect --json` prints, so a
/// producer in any language can validate a job before sending it. Standard
/// types have schemas already; a plugin's own argument and result types
/// derive one beside serde's traits, through this re-export:
///
/// ```
/// use billiard_plugin_api::serde::{Deserialize, Serialize};
/// use billiard_plugin_api::{task, JsonSchema};
///
/// #[derive(Serialize, Deserialize, JsonSchema)]
/// #[serde(crate = "billiard_plugin_api::serde")]
/// #[schemars(crate = "billiard_plugin_api::schemars")]
/// pub struct Point {
///     pub x: f64,
///     pub y: f64,
/// }
///
/// /// The point's distance from the origin.
/// #[task]
/// pub fn norm(p: Point) -> f64 {
///     p.x.hypot(p.y)
/// }
/// ```
///
/// A type without `JsonSchema` still works as an argument: the task's
/// argument schema is then unknown (`null` in `inspect --json`), never a
/// compile error. The schema follows serde's attributes (`rename`,
/// `default`, `tag`, ...), so it describes the JSON the task reads.
pub use schemars;
/// Derives a JSON Schema for a plugin's own argument or result type (see
/// [`schemars`](mod@schemars)); add
/// `#[schemars(crate = "billiard_plugin_api::schemars")]` to the type, or
/// depend on `schemars = "1"` yourself.
pub use schemars::JsonSchema;
