//! Runtime support for the code that `#[task]` and `export_plugin!`
//! generate. Everything a task does runs inside [`run`], which guarantees
//! that no panic unwinds out of the plugin's `extern "C"` entries.

use std::cell::{Cell, RefCell};
use std::fmt::Display;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use abi_stable::std_types::{RSlice, RVec};
use serde::{de::DeserializeOwned, Serialize};

use crate::abi::{Status, TaskInfo};
use crate::context::{EmitUnwind, StopReason, StopUnwind};
use crate::{codec, Codec, Failure, TaskContext, HOST_FLAG_FAILURE_DETAIL};

/// The signature of the per-task function `#[task]` generates. It appends
/// its output (encoded result or message) to `out`.
pub type RunFn = fn(Codec, &[u8], &TaskContext<'_>, &mut RVec<u8>) -> Status;

/// What `#[task]` generates for each task, gathered by `export_plugin!`.
pub trait Task {
    const INFO: TaskInfo;
    const RUN: RunFn;
    /// The task over a whole chunk in one loop ([`run_batch`]); `None`:
    /// item by item through `RUN` (streaming tasks).
    const RUN_BATCH: Option<BatchRunFn> = None;
    /// The task's registration options as a JSON object (`#[task(...)]`;
    /// see `abi::PluginMod::task_options`).
    const OPTIONS: &'static str = "{}";
    /// The JSON Schemas of its arguments and result (see
    /// `abi::PluginMod::task_schema`).
    const SCHEMA: crate::schema::SchemaFn = crate::schema::no_schema;
}

/// The signature of the per-task batch function `#[task]` generates: runs
/// `count` argument records, appending one result record each to `out`;
/// returns how many it appended.
pub type BatchRunFn = fn(Codec, &[u8], u32, &TaskContext<'_>, &mut RVec<u8>) -> u32;

thread_local! {
    /// The output buffer [`run_batch`] reuses from chunk to chunk.
    static BATCH_OUT: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// What [`run`] does for one call, over a whole chunk in one loop: the
/// panic hook, the in-task flag and the base64 setting are looked at once
/// per chunk, and the results are encoded into a plain `Vec` (no call
/// through the `RVec` vtable per write) copied into `out` once at the end.
/// Each item still runs behind its own `catch_unwind`: a panic costs only
/// its item, and the items after it run.
pub fn run_batch<R: Serialize>(
    info: &TaskInfo,
    codec: Codec,
    records: &[u8],
    count: u32,
    ctx: &TaskContext<'_>,
    out: &mut RVec<u8>,
    body: impl Fn(&[u8], &TaskContext<'_>) -> Result<R, Fail>,
) -> u32 {
    install_panic_hook();
    let was_in_task = IN_TASK.with(|f| f.replace(true));
    let base64 = codec == Codec::Json && ctx.host_flag(crate::HOST_FLAG_BYTES_BASE64);
    let mut buf = BATCH_OUT.with(std::cell::Cell::take);
    buf.clear();
    let mut done = 0u32;
    for rec in codec::records(records).take(count as usize) {
        let Some(rec) = rec else { break };
        let header = buf.len();
        buf.extend_from_slice(&[0u8; 5]);
        let status = match ctx.stop_requested() {
            Some(reason) => {
                write_msg(&mut buf, "not started: the batch was stopped");
                stop_status(reason)
            }
            None => {
                let item_ctx = ctx.for_batch_item(done as u64);
                // As in `run`: no message left over from an earlier item.
                LAST_PANIC.with(|p| p.borrow_mut().take());
                let result = catch_unwind(AssertUnwindSafe(|| {
                    let value = body(rec, &item_ctx)?;
                    codec::with_base64_bytes(base64, || codec::encode_into(codec, &value, &mut buf))
                        .map_err(|e| Fail::User(format!("could not encode the result: {e}")))
                }));
                conclude(info, &item_ctx, result, &mut buf, header + 5)
            }
        };
        let len = (buf.len() - header - 5) as u32;
        buf[header] = status as u8;
        buf[header + 1..header + 5].copy_from_slice(&len.to_le_bytes());
        done += 1;
    }
    IN_TASK.with(|f| f.set(was_in_task));
    // `RVec::extend_from_slice` pushes byte by byte; this is one memcpy.
    out.extend_from_copy_slice(&buf);
    // A buffer grown by a chunk of big results is not kept.
    if buf.capacity() <= 1 << 20 {
        BATCH_OUT.with(|b| b.set(buf));
    }
    done
}

/// Why a task call did not produce a value.
pub enum Fail {
    BadArgs(String),
    User(String),
    /// A [`Failure`]: its message, and its class and directive when the
    /// host reads them.
    Failure(Failure),
}

/// The `Err` of a task's `Result`, on its way to a [`Fail`]: the
/// generated code calls `(&ErrSlot(..)).to_fail()`, which method
/// resolution takes from [`ViaFailure`] when `E: Into<Failure>` and from
/// [`ViaDisplay`] (one auto-reference further) for any other `E: Display`
/// ("autoref specialization"), so a plain error's text is exactly its
/// `Display`, as before `Failure` existed.
pub struct ErrSlot<E>(pub Cell<Option<E>>);

impl<E> ErrSlot<E> {
    /// Holds `e` for [`ViaFailure::to_fail`] / [`ViaDisplay::to_fail`].
    pub fn new(e: E) -> ErrSlot<E> {
        ErrSlot(Cell::new(Some(e)))
    }
}

/// See [`ErrSlot`]: errors that convert into a [`Failure`].
pub trait ViaFailure {
    fn to_fail(&self) -> Fail;
}

impl<E: Into<Failure>> ViaFailure for ErrSlot<E> {
    fn to_fail(&self) -> Fail {
        match self.0.take() {
            Some(e) => Fail::Failure(e.into()),
            None => Fail::User(String::new()),
        }
    }
}

/// See [`ErrSlot`]: any other error, by its `Display` text.
pub trait ViaDisplay {
    fn to_fail(&self) -> Fail;
}

impl<E: Display> ViaDisplay for &ErrSlot<E> {
    fn to_fail(&self) -> Fail {
        match self.0.take() {
            Some(e) => Fail::User(e.to_string()),
            None => Fail::User(String::new()),
        }
    }
}

thread_local! {
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
    /// The last panic inside a task on this thread: (payload text, text
    /// with location and optional backtrace).
    static LAST_PANIC: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

/// Installs (once per plugin) a panic hook that records the message and
/// location of a panic inside a task instead of printing it; panics outside
/// tasks go to the previous hook.
fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_TASK.with(Cell::get) {
                previous(info);
                return;
            }
            let msg = payload_text(info.payload());
            let mut text = match info.location() {
                Some(loc) => format!("{msg} (at {}:{}:{})", loc.file(), loc.line(), loc.column()),
                None => msg.to_string(),
            };
            if backtrace_wanted() {
                let bt = std::backtrace::Backtrace::force_capture();
                text.push_str(&format!("\nbacktrace:\n{bt}"));
            }
            LAST_PANIC.with(|p| *p.borrow_mut() = Some((msg.to_string(), text)));
        }));
    });
}

/// The message of a panic payload (`panic!` makes a `&str` or a `String`).
fn payload_text(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "Box<dyn Any>"
    }
}

/// Only `BILLIARD_BACKTRACE=1` (or `full`) adds a backtrace to a panic
/// result: `RUST_BACKTRACE`, often set for the host's own sake, would put
/// kilobytes of frames into every result line.
fn backtrace_wanted() -> bool {
    matches!(
        std::env::var("BILLIARD_BACKTRACE").as_deref(),
        Ok("1") | Ok("full")
    )
}

fn stop_status(reason: StopReason) -> Status {
    match reason {
        StopReason::SoftTimeLimit => Status::SoftTimeLimit,
        StopReason::Cancelled => Status::Terminated,
    }
}

fn write_msg(out: &mut impl OutBuf, msg: impl Display) {
    let _ = write!(out, "{msg}");
}

/// Where the glue writes a result or a message: the host's `RVec` (one
/// call) or the batch loop's own `Vec` (see [`run_batch`]).
pub trait OutBuf: Write {
    /// Bytes written so far.
    fn len(&self) -> usize;
    /// Whether nothing has been written yet.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Drops what was written after the first `len` bytes (a result that
    /// failed half-way through encoding).
    fn truncate(&mut self, len: usize);
}

impl OutBuf for RVec<u8> {
    fn len(&self) -> usize {
        self.as_slice().len()
    }
    fn truncate(&mut self, len: usize) {
        RVec::truncate(self, len)
    }
}

impl OutBuf for Vec<u8> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn truncate(&mut self, len: usize) {
        Vec::truncate(self, len)
    }
}

/// Runs one task call: decode, call, encode, all behind `catch_unwind`.
/// Appends the output to `out` and returns the status.
pub fn run<R: Serialize>(
    info: &TaskInfo,
    codec: Codec,
    ctx: &TaskContext<'_>,
    out: &mut RVec<u8>,
    body: impl FnOnce() -> Result<R, Fail>,
) -> Status {
    install_panic_hook();
    let start = out.len();
    // A message left over from an earlier call must not be reported for an
    // unwind that did not go through the hook.
    LAST_PANIC.with(|p| p.borrow_mut().take());
    // Restored afterwards rather than cleared: a task may run another
    // task's glue, and its own later panics must still be recorded.
    let was_in_task = IN_TASK.with(|f| f.replace(true));
    let result = catch_unwind(AssertUnwindSafe(|| {
        let value = body()?;
        let base64 = codec == Codec::Json && ctx.host_flag(crate::HOST_FLAG_BYTES_BASE64);
        codec::with_base64_bytes(base64, || codec::encode_into(codec, &value, &mut *out))
            .map_err(|e| Fail::User(format!("could not encode the result: {e}")))
    }));
    IN_TASK.with(|f| f.set(was_in_task));
    conclude(info, ctx, result, out, start)
}

/// The status of a call that ended with `result`, its message written to
/// `out` (truncated back to `start` first) when it did not succeed.
fn conclude(
    info: &TaskInfo,
    ctx: &TaskContext<'_>,
    result: std::thread::Result<Result<(), Fail>>,
    out: &mut impl OutBuf,
    start: usize,
) -> Status {
    match result {
        Ok(Ok(())) => Status::Ok,
        Ok(Err(fail)) => {
            out.truncate(start);
            match fail {
                Fail::BadArgs(msg) => {
                    // A wrong count says "expects N arguments, got M" itself.
                    let sig = match msg.starts_with("expects ") {
                        true => format!("`{}`", call_shape(info)),
                        false => signature(info),
                    };
                    write_msg(out, format_args!("bad arguments for task {sig}: {msg}"));
                    Status::BadArgs
                }
                Fail::User(msg) => match ctx.stop_requested() {
                    // The task gave up because it was asked to stop.
                    Some(reason) => {
                        write_msg(out, format_args!("task `{}` stopped: {msg}", info.name));
                        stop_status(reason)
                    }
                    None => {
                        write_msg(out, msg);
                        Status::TaskError
                    }
                },
                Fail::Failure(f) => match ctx.stop_requested() {
                    // A stop wins over what the task asked for, as for
                    // any other error it gives up with.
                    Some(reason) => {
                        let msg = f.message();
                        write_msg(out, format_args!("task `{}` stopped: {msg}", info.name));
                        stop_status(reason)
                    }
                    None => {
                        // The detail only for a host that reads it (an
                        // older one would show the encoding as text).
                        if f.has_detail() && ctx.host_flag(HOST_FLAG_FAILURE_DETAIL) {
                            if f.encode_into(out).is_err() {
                                out.truncate(start);
                                write_msg(out, f.message());
                            }
                        } else {
                            write_msg(out, f.message());
                        }
                        Status::TaskError
                    }
                },
            }
        }
        Err(payload) => {
            out.truncate(start);
            if let Some(StopUnwind(reason)) = payload.downcast_ref::<StopUnwind>() {
                let what = match reason {
                    StopReason::SoftTimeLimit => "soft time limit exceeded",
                    StopReason::Cancelled => "job cancelled",
                };
                write_msg(out, format_args!("task `{}` stopped: {what}", info.name));
                return stop_status(*reason);
            }
            if let Some(EmitUnwind(msg)) = payload.downcast_ref::<EmitUnwind>() {
                write_msg(out, format_args!("task `{}`: {msg}", info.name));
                return Status::TaskError;
            }
            // The recorded text belongs to this unwind only if the payloads
            // agree: `resume_unwind` skips the hook, so what was recorded may
            // be a panic the task caught itself.
            let payload_msg = payload_text(&*payload);
            let msg = match LAST_PANIC.with(|p| p.borrow_mut().take()) {
                Some((recorded, text)) if recorded == payload_msg => text,
                _ => payload_msg.to_string(),
            };
            write_msg(out, format_args!("task `{}` panicked: {msg}", info.name));
            // Dropping the payload runs plugin code that could panic again;
            // contain that too.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            Status::Panic
        }
    }
}

/// `name(a: A, b: B) -> R`, for messages.
pub fn signature(info: &TaskInfo) -> String {
    let n = info.args.len();
    format!(
        "`{}` (expects {n} argument{})",
        call_shape(info),
        if n == 1 { "" } else { "s" }
    )
}

/// `name(a: i64, b: i64)`
fn call_shape(info: &TaskInfo) -> String {
    let args: Vec<String> = info
        .args
        .iter()
        .map(|a| format!("{}: {}", a.name, a.ty))
        .collect();
    format!("{}({})", info.name, args.join(", "))
}

/// Decodes the argument tuple; a failure is a `bad_args` outcome.
pub fn decode_args<T: DeserializeOwned>(codec: Codec, args: &[u8]) -> Result<T, Fail> {
    codec::decode(codec, args).map_err(|e| Fail::BadArgs(e.0))
}

/// [`decode_args`] for a task with defaults (`#[task(defaults(...))]`, a
/// trailing `Option<T>`, a `varargs` tail): a JSON array that stops short
/// is completed from `defaults` (each parameter's default as JSON text,
/// `None` when it has none) when every missing parameter has one, as a
/// Python call leaves them out (`run --args '[1, 2]'` of `add3(x, y,
/// z=3)`). The Celery worker binds calls before they get here (keywords
/// too); this is for the callers that pass a plain array.
pub fn decode_args_defaulted<T: DeserializeOwned>(
    codec: Codec,
    args: &[u8],
    defaults: &[Option<&str>],
) -> Result<T, Fail> {
    if codec == Codec::Json {
        if let Ok(mut v) = serde_json::from_slice::<Vec<serde_json::Value>>(args) {
            if let Some(missing) = defaults.get(v.len()..).filter(|m| !m.is_empty()) {
                let filled: Option<Vec<serde_json::Value>> = missing
                    .iter()
                    .map(|d| d.and_then(|t| serde_json::from_str(t).ok()))
                    .collect();
                if let Some(filled) = filled {
                    v.extend(filled);
                    if let Ok(bytes) = serde_json::to_vec(&v) {
                        return decode_args(codec, &bytes);
                    }
                }
            }
        }
    }
    decode_args(codec, args)
}

pub fn decode_no_args(codec: Codec, args: &[u8]) -> Result<(), Fail> {
    codec::decode_no_args(codec, args).map_err(|e| Fail::BadArgs(e.0))
}

/// The result of a task that returns `Result<T, E>`.
pub fn from_result<T, E: Display>(r: Result<T, E>) -> Result<T, Fail> {
    r.map_err(|e| Fail::User(e.to_string()))
}

/// The `call` entry of a plugin: dispatches to the task's run function.
pub fn call(
    runs: &[RunFn],
    infos: &[TaskInfo],
    task: u32,
    codec: Codec,
    args: RSlice<'_, u8>,
    ctx: &TaskContext<'_>,
    out: &mut RVec<u8>,
) -> Status {
    out.clear();
    call_one(runs, infos, task, codec, args.as_slice(), ctx, out)
}

fn call_one(
    runs: &[RunFn],
    infos: &[TaskInfo],
    task: u32,
    codec: Codec,
    args: &[u8],
    ctx: &TaskContext<'_>,
    out: &mut RVec<u8>,
) -> Status {
    match runs.get(task as usize) {
        Some(run) => {
            // `run` already catches task panics; this outer guard covers the
            // glue itself so nothing can unwind into the host.
            let start = out.len();
            match catch_unwind(AssertUnwindSafe(|| run(codec, args, ctx, out))) {
                Ok(status) => status,
                Err(_) => {
                    out.truncate(start);
                    write_msg(out, "internal error in the plugin glue (panic)");
                    Status::Panic
                }
            }
        }
        None => {
            write_msg(
                out,
                format_args!("no task with index {task} (the plugin has {})", infos.len()),
            );
            Status::UnknownTask
        }
    }
}

/// The `call_batch` entry: runs `count` records, appending one result record
/// each. Stops early (reporting the rest as stopped) once the host raises the
/// stop flag.
#[allow(clippy::too_many_arguments)]
pub fn call_batch(
    runs: &[RunFn],
    infos: &[TaskInfo],
    task: u32,
    codec: Codec,
    args: RSlice<'_, u8>,
    count: u32,
    ctx: &TaskContext<'_>,
    out: &mut RVec<u8>,
) -> u32 {
    call_batch_with(runs, &[], infos, task, codec, args, count, ctx, out)
}

/// [`call_batch`] that runs a task's whole chunk through its
/// [`Task::RUN_BATCH`] when it has one (`batch_runs`, by task index):
/// what `export_plugin!` uses.
#[allow(clippy::too_many_arguments)]
pub fn call_batch_with(
    runs: &[RunFn],
    batch_runs: &[Option<BatchRunFn>],
    infos: &[TaskInfo],
    task: u32,
    codec: Codec,
    args: RSlice<'_, u8>,
    count: u32,
    ctx: &TaskContext<'_>,
    out: &mut RVec<u8>,
) -> u32 {
    if let Some(Some(batch)) = batch_runs.get(task as usize) {
        let start = out.len();
        // `run_batch` catches the task's panics; this guard covers the glue.
        return match catch_unwind(AssertUnwindSafe(|| {
            batch(codec, args.as_slice(), count, ctx, out)
        })) {
            Ok(done) => done,
            Err(_) => {
                out.truncate(start);
                0
            }
        };
    }
    let mut done = 0u32;
    let streaming = infos.get(task as usize).is_some_and(|i| i.streaming);
    for rec in codec::records(args.as_slice()).take(count as usize) {
        let Some(rec) = rec else { break };
        let header = out.len();
        out.extend_from_copy_slice(&[0u8; 5]);
        let item_ctx = ctx.for_batch_item(done as u64);
        let status = match ctx.stop_requested() {
            Some(reason) => {
                write_msg(out, "not started: the batch was stopped");
                stop_status(reason)
            }
            None if streaming => {
                write_msg(out, "a streaming task cannot run in a batch");
                Status::TaskError
            }
            None => call_one(runs, infos, task, codec, rec, &item_ctx, out),
        };
        let len = (out.len() - header - 5) as u32;
        out[header] = status as u8;
        out[header + 1..header + 5].copy_from_slice(&len.to_le_bytes());
        done += 1;
    }
    done
}

/// Defines the plugin's root module. One line per plugin:
///
/// ```ignore
/// billiard_plugin_api::export_plugin!(name: "math", tasks: [square, add]);
/// ```
///
/// The version defaults to the plugin crate's `CARGO_PKG_VERSION`; pass
/// `version: "1.2.3"` to override it.
#[macro_export]
macro_rules! export_plugin {
    (name: $name:expr, tasks: [$($task:path),* $(,)?] $(,)?) => {
        $crate::export_plugin!(name: $name, version: env!("CARGO_PKG_VERSION"), tasks: [$($task),*]);
    };
    (name: $name:expr, version: $version:expr, tasks: [$($task:path),* $(,)?] $(,)?) => {
        $crate::export_plugin!(@abi $crate::ABI_VERSION, name: $name, version: $version, tasks: [$($task),*]);
    };
    (@abi $abi:expr, name: $name:expr, version: $version:expr, tasks: [$($task:path),* $(,)?] $(,)?) => {
        #[doc(hidden)]
        mod __billiard_plugin_export {
            #[allow(unused_imports)]
            use super::*;
            use $crate::__private::abi_stable::std_types::{RSlice, RStr, RVec};
            use $crate::glue::{RunFn, Task};
            use $crate::abi::{TaskInfo, PluginMod, PluginModRef};

            static INFOS: &[TaskInfo] = &[$(<$task as Task>::INFO),*];
            static RUNS: &[RunFn] = &[$(<$task as Task>::RUN),*];
            static BATCH_RUNS: &[Option<$crate::glue::BatchRunFn>] = &[$(<$task as Task>::RUN_BATCH),*];
            static OPTIONS: &[RStr<'static>] = &[$(RStr::from_str(<$task as Task>::OPTIONS)),*];
            static SCHEMAS: &[$crate::schema::SchemaFn] = &[$(<$task as Task>::SCHEMA),*];

            extern "C" fn task_schema(task: u32, out: &mut RVec<u8>) {
                $crate::schema::task_schema(SCHEMAS, task, out)
            }

            extern "C" fn call(
                task: u32,
                codec: $crate::Codec,
                args: RSlice<'_, u8>,
                ctx: &$crate::TaskContext<'_>,
                out: &mut RVec<u8>,
            ) -> $crate::Status {
                $crate::glue::call(RUNS, INFOS, task, codec, args, ctx, out)
            }

            extern "C" fn call_batch(
                task: u32,
                codec: $crate::Codec,
                args: RSlice<'_, u8>,
                count: u32,
                ctx: &$crate::TaskContext<'_>,
                out: &mut RVec<u8>,
            ) -> u32 {
                $crate::glue::call_batch_with(RUNS, BATCH_RUNS, INFOS, task, codec, args, count, ctx, out)
            }

            #[$crate::__export_root_module]
            fn get_root_module() -> PluginModRef {
                use $crate::__private::abi_stable::prefix_type::PrefixTypeTrait;
                // Names each task's `..._is_a_task_not_listed_in_export_plugin`
                // marker: a `#[task]` missing here leaves its marker unused,
                // and rustc warns naming it (see `#[task]`).
                $crate::__listed_in_export_plugin!($($task),*);
                PluginMod {
                    abi_version: $abi,
                    name: RStr::from_str($name),
                    version: RStr::from_str($version),
                    api_version: RStr::from_str($crate::abi::API_VERSION),
                    tasks: RSlice::from_slice(INFOS),
                    call,
                    call_batch,
                    // The plugin crate's own Cargo.toml (this expands there).
                    metadata: $crate::abi::PluginMetadata {
                        description: RStr::from_str(env!("CARGO_PKG_DESCRIPTION")),
                        authors: RStr::from_str(env!("CARGO_PKG_AUTHORS")),
                        homepage: RStr::from_str(env!("CARGO_PKG_HOMEPAGE")),
                        repository: RStr::from_str(env!("CARGO_PKG_REPOSITORY")),
                        license: RStr::from_str(env!("CARGO_PKG_LICENSE")),
                    },
                    failure_detail: $crate::abi::FAILURE_DETAIL_VERSION,
                    task_options: RSlice::from_slice(OPTIONS),
                    task_schema,
                }
                .leak_into_prefix()
            }
        }
    };
}
