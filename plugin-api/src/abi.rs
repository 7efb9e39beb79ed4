//! The binary interface between the host and a plugin.
//!
//! Everything here is `#[repr(C)]` and derives `StableAbi`, so abi_stable
//! checks at load time that the host and the plugin agree on every field of
//! every type reachable from the root module. [`ABI_VERSION`] is checked on
//! top of that for changes in *meaning* that keep the layout.

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    sabi_types::VersionStrings,
    std_types::{RSlice, RStr, RVec},
    StableAbi,
};

use crate::TaskContext;

/// Version of the calling convention (frame layouts, status meanings).
/// Bumped on any change a layout check cannot see.
///
/// 2: `TaskContext` carries the host's services (`HostServicesRef`, a prefix
/// type: progress, stream items) and a flag word; `TaskInfo` says whether a
/// task streams and the type of its items.
pub const ABI_VERSION: u32 = 2;

/// How the argument and result buffers are encoded.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// bincode 2 (`config::standard()`) of the argument tuple / the result.
    Bincode = 0,
    /// A JSON array of the arguments / the JSON result.
    Json = 1,
}

/// The outcome of one call, as the plugin reports it. On `Ok` the output
/// buffer holds the encoded result; otherwise a UTF-8 message.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// The task returned; the output holds its encoded result.
    Ok = 0,
    /// The task panicked; the output holds the panic message (the glue
    /// catches the unwind before it reaches the FFI boundary).
    Panic = 1,
    /// The task returned `Err(e)`; the output holds `e`'s `Display` text.
    TaskError = 2,
    /// The arguments did not decode as the task's parameter types (or their
    /// count was wrong); the output says what was expected.
    BadArgs = 3,
    /// The plugin has no task with the requested index.
    UnknownTask = 4,
    /// The task stopped because the host raised the soft-time-limit stop
    /// flag ([`StopReason::SoftTimeLimit`](crate::StopReason::SoftTimeLimit)).
    SoftTimeLimit = 5,
    /// The task stopped because the job was cancelled
    /// ([`StopReason::Cancelled`](crate::StopReason::Cancelled)).
    Terminated = 6,
}

impl Status {
    /// The stable name of the error kind (the contract's `kind` strings).
    pub fn kind(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Panic => "panic",
            Status::TaskError => "task_error",
            Status::BadArgs => "bad_args",
            Status::UnknownTask => "unknown_task",
            Status::SoftTimeLimit => "soft_time_limit",
            Status::Terminated => "terminated",
        }
    }

    /// Decodes a status byte from a batch output buffer.
    pub fn from_u8(b: u8) -> Option<Status> {
        Some(match b {
            0 => Status::Ok,
            1 => Status::Panic,
            2 => Status::TaskError,
            3 => Status::BadArgs,
            4 => Status::UnknownTask,
            5 => Status::SoftTimeLimit,
            6 => Status::Terminated,
            _ => return None,
        })
    }
}

/// One positional argument of a task, for `inspect` and error messages.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct ArgInfo {
    /// The parameter's name in the task function (`argN`, counting from 0,
    /// when the pattern is not a plain identifier).
    pub name: RStr<'static>,
    /// The parameter's type as written in the source, e.g. `Vec<u64>`.
    pub ty: RStr<'static>,
}

/// Static description of one task.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct TaskInfo {
    /// The task's name: the name of its function, which is what jobs ask for.
    pub name: RStr<'static>,
    /// The function's doc comment, one trimmed line per `///` line (empty
    /// without one).
    pub doc: RStr<'static>,
    /// The positional arguments a job passes, in order. A `&TaskContext` or
    /// `&Emitter<T>` parameter is supplied by the host and not listed.
    pub args: RSlice<'static, ArgInfo>,
    /// The return type as written in the source (`()` when there is none;
    /// a `Result<T, E>` is shown whole).
    pub ret: RStr<'static>,
    /// The task takes a `&TaskContext` (shown by `inspect`; the host passes
    /// a context to every call either way).
    pub takes_context: bool,
    /// The task takes an `&Emitter<T>`: it sends items while it runs
    /// (through `HostServices::emit`) and must be run one call at a time,
    /// never through `call_batch`.
    pub streaming: bool,
    /// The item type `T` of a streaming task (empty otherwise), for `inspect`.
    pub item: RStr<'static>,
}

/// Calls task `task` once. `out` is cleared by the callee and receives the
/// encoded result (status `Ok`) or an error message.
pub type CallFn = extern "C" fn(
    task: u32,
    codec: Codec,
    args: RSlice<'_, u8>,
    ctx: &TaskContext<'_>,
    out: &mut RVec<u8>,
) -> Status;

/// Calls task `task` over a chunk of argument sets in one FFI call.
///
/// `args` holds `count` records `[u32 LE length][bytes]`. For each record, in
/// order, the callee appends `[u8 status][u32 LE length][bytes]` to `out`
/// (not cleared). Item `i` runs with job id `ctx.job_id() + i`. Returns the
/// number of records it appended (always `count` unless `args` is malformed,
/// in which case the remaining items are missing and the host reports them).
pub type BatchFn = extern "C" fn(
    task: u32,
    codec: Codec,
    args: RSlice<'_, u8>,
    count: u32,
    ctx: &TaskContext<'_>,
    out: &mut RVec<u8>,
) -> u32;

/// What a plugin says about itself, for `billiard-host inspect`: its
/// `Cargo.toml`'s `description`, `authors` (`:`-separated, as cargo gives
/// them), `homepage`, `repository` and `license`, each empty when unset.
/// [`export_plugin!`](crate::export_plugin) fills it in from cargo's
/// `CARGO_PKG_*` variables.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct PluginMetadata {
    /// `package.description`.
    pub description: RStr<'static>,
    /// `package.authors`, joined with `:`.
    pub authors: RStr<'static>,
    /// `package.homepage`.
    pub homepage: RStr<'static>,
    /// `package.repository`.
    pub repository: RStr<'static>,
    /// `package.license` (an SPDX expression).
    pub license: RStr<'static>,
}

impl PluginMetadata {
    /// No metadata (every field empty).
    pub const EMPTY: PluginMetadata = PluginMetadata {
        description: RStr::from_str(""),
        authors: RStr::from_str(""),
        homepage: RStr::from_str(""),
        repository: RStr::from_str(""),
        license: RStr::from_str(""),
    };
}

/// The root module a plugin exports (through [`export_plugin!`](crate::export_plugin)).
///
/// A prefix type: the fields up to `call_batch` (`last_prefix_field`) are
/// the ABI 2 prefix every plugin has; fields after it were appended later
/// and a plugin built against an older `plugin-api` lacks them. Missing
/// fields are explicit: the struct-level `missing_field(panic)` covers only
/// the prefix (always present, so it never fires), and every appended field
/// carries `missing_field(option)`, so its accessor returns `None` for an
/// older plugin and the host decides what absence means. The rules for
/// changing this type are in ARCHITECTURE.md ("Changing plugin-api").
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// The [`ABI_VERSION`] the plugin was built with; the host refuses a
    /// plugin whose version differs from its own.
    pub abi_version: u32,
    /// The plugin's name (the `name:` of `export_plugin!`).
    pub name: RStr<'static>,
    /// The plugin's version (`version:` of `export_plugin!`, by default its
    /// crate's `CARGO_PKG_VERSION`).
    pub version: RStr<'static>,
    /// Version of `billiard-plugin-api` the plugin was built with.
    pub api_version: RStr<'static>,
    /// Every task of the plugin; a call names a task by its index here.
    pub tasks: RSlice<'static, TaskInfo>,
    /// See [`CallFn`] (written out because the layout derive needs it inline).
    pub call: extern "C" fn(
        task: u32,
        codec: Codec,
        args: RSlice<'_, u8>,
        ctx: &TaskContext<'_>,
        out: &mut RVec<u8>,
    ) -> Status,
    /// See [`BatchFn`].
    #[sabi(last_prefix_field)]
    pub call_batch: extern "C" fn(
        task: u32,
        codec: Codec,
        args: RSlice<'_, u8>,
        count: u32,
        ctx: &TaskContext<'_>,
        out: &mut RVec<u8>,
    ) -> u32,
    /// Appended after the ABI 2 prefix (no `ABI_VERSION` bump: a host may
    /// ignore it). `None` from a plugin built before it existed.
    #[sabi(missing_field(option))]
    pub metadata: PluginMetadata,
    /// Appended (no `ABI_VERSION` bump): the version of the failure-detail
    /// encoding the plugin's glue writes ([`FAILURE_DETAIL_VERSION`]; see
    /// [`crate::Failure`]). `None` from a plugin built before it: such a
    /// plugin's errors are plain text, whatever bytes they start with.
    #[sabi(missing_field(option))]
    pub failure_detail: u32,
    /// Appended (no `ABI_VERSION` bump): each task's registration options
    /// (`#[task(rate_limit = "100/m", ...)]`), parallel to `tasks`, each a
    /// JSON object (`{}` for none; keys the host does not know are
    /// ignored). `None` from a plugin built before it: no task has options.
    #[sabi(missing_field(option))]
    pub task_options: RSlice<'static, RStr<'static>>,
    /// Appended (no `ABI_VERSION` bump): writes task `task`'s JSON Schemas
    /// to `out` as one JSON object `{"args": <schema of the JSON argument
    /// array, or null>, "result": <schema of the JSON result, or null>}`
    /// (`null` where a type has no `JsonSchema`); nothing (an empty `out`)
    /// for an unknown task. `#[task]` derives them at build time from the task's types
    /// (`crate::schema`). `None` from a plugin built before it: its schemas
    /// are unknown.
    #[sabi(missing_field(option))]
    pub task_schema: extern "C" fn(task: u32, out: &mut RVec<u8>),
}

/// The failure-detail encoding this plugin-api writes (see
/// [`PluginMod::failure_detail`] and [`crate::FAILURE_DETAIL_PREFIX`]).
pub const FAILURE_DETAIL_VERSION: u32 = 1;

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "billiard_plugin";
    const NAME: &'static str = "billiard_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// Version of this crate, recorded in every plugin.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The root module as a host checks it when it loads a plugin: only the
/// ABI 2 prefix (every field up to `call_batch`).
///
/// abi_stable's load-time layout check accepts a plugin whose root module
/// has *more* fields than the interface it is checked against, never fewer:
/// checked against the full [`PluginMod`], a plugin built before a field
/// was appended would be refused ("too many fields"). So the host checks
/// against this prefix (old and new plugins pass) and then reads the module
/// through the full layout ([`prefix::PluginModRef::upgrade`]), whose accessors
/// for appended fields consult the plugin's own field bits and return
/// `None` for a field the plugin does not have.
pub mod prefix {
    use super::*;

    /// The ABI 2 prefix of [`super::PluginMod`]: the same fields, nothing
    /// appended. Never add fields here (see ARCHITECTURE.md).
    #[repr(C)]
    #[derive(StableAbi)]
    #[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
    #[sabi(missing_field(panic))]
    pub struct PluginMod {
        /// See [`super::PluginMod::abi_version`].
        pub abi_version: u32,
        /// See [`super::PluginMod::name`].
        pub name: RStr<'static>,
        /// See [`super::PluginMod::version`].
        pub version: RStr<'static>,
        /// See [`super::PluginMod::api_version`].
        pub api_version: RStr<'static>,
        /// See [`super::PluginMod::tasks`].
        pub tasks: RSlice<'static, TaskInfo>,
        /// See [`super::PluginMod::call`].
        pub call: extern "C" fn(
            task: u32,
            codec: Codec,
            args: RSlice<'_, u8>,
            ctx: &TaskContext<'_>,
            out: &mut RVec<u8>,
        ) -> Status,
        /// See [`super::PluginMod::call_batch`].
        #[sabi(last_prefix_field)]
        pub call_batch: extern "C" fn(
            task: u32,
            codec: Codec,
            args: RSlice<'_, u8>,
            count: u32,
            ctx: &TaskContext<'_>,
            out: &mut RVec<u8>,
        ) -> u32,
    }

    impl RootModule for PluginModRef {
        declare_root_module_statics! {PluginModRef}
        const BASE_NAME: &'static str = "billiard_plugin";
        const NAME: &'static str = "billiard_plugin";
        const VERSION_STRINGS: VersionStrings = package_version_strings!();
    }

    impl PluginModRef {
        /// The same module seen through the current layout, appended fields
        /// included (`None` where the plugin lacks them).
        pub fn upgrade(self) -> super::PluginModRef {
            // SAFETY: the module was checked (by abi_stable, against this
            // prefix) to start with exactly these fields, and every layout
            // of `PluginMod` is this prefix plus fields appended after it
            // (never moved or removed): prefix accessors read the same
            // offsets in either view. An appended field is read only when
            // the plugin's own accessibility bits (stored beside the value,
            // set by the derive in the plugin for the fields *it* has) say
            // it exists, so no read goes past the plugin's struct.
            super::PluginModRef(unsafe { self.0.cast() })
        }
    }
}

/// Test support: a root module with the same name but another layout, to
/// prove the host refuses plugins built against an incompatible ABI.
#[doc(hidden)]
pub mod incompatible_for_tests {
    use super::*;

    #[repr(C)]
    #[derive(StableAbi)]
    #[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
    #[sabi(missing_field(panic))]
    pub struct PluginMod {
        pub abi_version: u64,
        pub name: RStr<'static>,
        #[sabi(last_prefix_field)]
        pub extra: u32,
    }

    impl RootModule for PluginModRef {
        declare_root_module_statics! {PluginModRef}
        const BASE_NAME: &'static str = "billiard_plugin";
        const NAME: &'static str = "billiard_plugin";
        const VERSION_STRINGS: VersionStrings = package_version_strings!();
    }
}
