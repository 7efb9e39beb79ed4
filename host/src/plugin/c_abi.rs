//! The C plugin kind: a shared object exporting `billiard_plugin`, a
//! `billiard_plugin_desc` (`plugin-api-c/include/billiard_plugin.h`, whose
//! evolution rules are `plugin-api-c/EVOLUTION.md`).
//!
//! Nothing a C plugin hands over is trusted before it is checked: the
//! descriptor, its task table and every string are read through
//! [`sys::read_own_memory`] (a bad pointer is a refusal naming the field,
//! not a crash of the loader), counts and sizes are bounded, and every
//! string is copied into the owned [`PluginInfo`] at load.
//!
//! A call hands the plugin a `billiard_ctx` (job id, attempt, the stop
//! flag, `progress`/`emit` trampolines into the call's [`TaskContext`]) and
//! a writer, `write(out, data, len)`, whose `out` is a token naming the
//! call, never an address: a write, progress report or item with a token
//! whose call has returned finds no call and is refused (`CALLS`).

use std::ffi::{c_char, c_void};
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::RwLock;

use abi_stable::std_types::{RSlice, RVec};
use billiard_plugin_api::{Codec, Status, TaskContext};

use super::{ArgSpec, PluginInfo, PluginKind, PluginMeta, Request, TaskSpec};
use crate::sys;
use crate::task_options::TaskOptions;

/// `BILLIARD_C_ABI_VERSION`.
pub(super) const C_ABI_VERSION: u32 = 1;
/// `BILLIARD_PLUGIN_SYMBOL`.
pub(super) const SYMBOL: &str = "billiard_plugin";

/// Bounds on what a descriptor may claim (beyond them it is refused).
const MAX_TASKS: u32 = 4096;
const MAX_ARGS: u32 = 256;
/// The longest name, type or version string; a doc may be longer.
const MAX_NAME: usize = 1024;
const MAX_DOC: usize = 64 * 1024;
/// The most a call may write (result or message); past it `write`
/// refuses and the call is a `task_error` saying so.
const MAX_OUTPUT: usize = 1 << 30;

/// `BILLIARD_TASK_STREAMING`.
const TASK_STREAMING: u32 = 1;

/// `billiard_arg`.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawArg {
    name: *const c_char,
    ty: *const c_char,
}

/// `billiard_task` (ABI 1).
#[repr(C)]
#[derive(Clone, Copy)]
struct RawTask {
    name: *const c_char,
    doc: *const c_char,
    args: *const RawArg,
    n_args: u32,
    flags: u32,
    returns: *const c_char,
    item: *const c_char,
}

/// `billiard_ctx` (ABI 1).
#[repr(C)]
struct RawCtx {
    size: u32,
    attempt: u32,
    job_id: u64,
    stop: *const AtomicU32,
    progress: extern "C" fn(host: *mut c_void, done: u64, total: u64),
    emit: extern "C" fn(host: *mut c_void, item: *const c_void, len: usize) -> i32,
    host: *mut c_void,
}

/// `billiard_write_fn`.
type WriteFn = extern "C" fn(out: *mut c_void, data: *const c_void, len: usize) -> i32;
/// `billiard_call_fn`.
type CallFn = unsafe extern "C" fn(
    task: u32,
    args: *const u8,
    args_len: usize,
    ctx: *const RawCtx,
    write: WriteFn,
    out: *mut c_void,
) -> i32;

/// `billiard_plugin_desc` (ABI 1, with every field appended so far).
#[repr(C)]
#[derive(Clone, Copy)]
struct RawDesc {
    abi_version: u32,
    size: u32,
    name: *const c_char,
    version: *const c_char,
    tasks: *const RawTask,
    n_tasks: u32,
    task_size: u32,
    call: Option<CallFn>,
    // ---- the ABI 1 prefix ends here (PREFIX_SIZE) ----
    description: *const c_char,
}

/// Every C plugin's descriptor has at least these bytes.
const PREFIX_SIZE: usize = std::mem::offset_of!(RawDesc, description);

/// A loaded C plugin: its call entry (the library is never unloaded).
#[derive(Clone)]
pub(super) struct CPlugin {
    call: CallFn,
}

/// The address of the `billiard_plugin` descriptor, if the library at
/// `abs` exports one (the library stays loaded either way: the Rust
/// backend opens it again, and a library is never unloaded).
pub(super) fn find(abs: &Path) -> Option<usize> {
    // SAFETY: opening a library runs its constructors, as loading any
    // plugin does (the pool loads plugins only in its zygote or workers;
    // `inspect` in a child process).
    let lib = unsafe { libloading::Library::new(abs) }.ok()?;
    // SAFETY: the symbol is only taken as an address here; nothing is
    // read through it until `load` checks it.
    let addr = unsafe { lib.get::<*const c_void>(b"billiard_plugin\0") }
        .ok()
        .map(|s| *s as usize);
    // Never unloaded (a second dlopen by abi_stable would otherwise run
    // the constructors again after a dlclose here).
    std::mem::forget(lib);
    addr.filter(|a| *a != 0)
}

/// Reads a `T` of plain data at `addr`, or says which field is bad.
fn read<T: Copy>(addr: usize, len: usize, what: &str) -> Result<T, String> {
    let mut buf = vec![0u8; std::mem::size_of::<T>()];
    let len = len.min(buf.len());
    if !sys::read_own_memory(addr, &mut buf[..len]) {
        return Err(format!(
            "{what} points at unreadable memory (address {addr:#x})"
        ));
    }
    // SAFETY: `buf` holds size_of::<T>() bytes (the unread tail zeroed);
    // every `T` used here is `repr(C)` plain data (integers, raw pointers,
    // an Option of a fn pointer) for which all-zero and any bytes a C
    // compiler wrote for the same struct are valid values.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

/// Reads a NUL-terminated UTF-8 string of at most `max` bytes at `ptr`;
/// `None` for a null pointer.
fn read_str(ptr: *const c_char, max: usize, what: &str) -> Result<Option<String>, String> {
    if ptr.is_null() {
        return Ok(None);
    }
    let page = usize::try_from(sys::page_size()).unwrap_or(4096).max(64);
    let mut bytes: Vec<u8> = Vec::new();
    let mut at = ptr as usize;
    loop {
        // One page at a time: a string ending before an unmapped page
        // reads in full.
        let to_page_end = page.saturating_sub(at % page).max(1);
        let mut chunk = vec![0u8; to_page_end.min(256)];
        if !sys::read_own_memory(at, &mut chunk) {
            return Err(format!(
                "{what} points at unreadable memory (address {:#x})",
                ptr as usize
            ));
        }
        if let Some(end) = chunk.iter().position(|b| *b == 0) {
            bytes.extend_from_slice(&chunk[..end]);
            break;
        }
        bytes.extend_from_slice(&chunk);
        if bytes.len() > max {
            return Err(format!(
                "{what} is longer than {max} bytes (or not NUL-terminated)"
            ));
        }
        at = at
            .checked_add(chunk.len())
            .ok_or_else(|| format!("{what} runs past the end of memory"))?;
    }
    if bytes.len() > max {
        return Err(format!("{what} is longer than {max} bytes"));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| format!("{what} is not UTF-8 text"))
}

/// A name a job can use: non-empty, printable ASCII without spaces.
fn check_name(name: &str, what: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "{what} `{}` has the character {c:?}; use letters, digits, `_`, `-` and `.`",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// Checks and copies the descriptor at `desc` (from [`find`]).
pub(super) fn load(abs: &Path, desc: usize) -> Result<(CPlugin, PluginInfo), String> {
    // The version and size first: a descriptor of another version may
    // have any layout after them.
    let head: [u32; 2] = read(desc, 8, "the `billiard_plugin` symbol")?;
    let [abi_version, size] = head;
    if abi_version != C_ABI_VERSION {
        return Err(super::version_refusal(
            abi_version,
            C_ABI_VERSION,
            ("C plugin ABI", "C plugin ABI "),
            "billiard_plugin.h",
        ));
    }
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size < PREFIX_SIZE {
        return Err(format!(
            "its billiard_plugin descriptor says it is {size} bytes, shorter than the {PREFIX_SIZE} of C plugin ABI version {C_ABI_VERSION}; set `size` to sizeof(billiard_plugin_desc)"
        ));
    }
    // Fields past the plugin's `size` are absent (zero: none).
    let d: RawDesc = read(desc, size, "the `billiard_plugin` descriptor")?;
    let name =
        read_str(d.name, MAX_NAME, "the plugin's `name`")?.ok_or("the plugin's `name` is NULL")?;
    check_name(&name, "the plugin's `name`")?;
    let version = read_str(d.version, MAX_NAME, "the plugin's `version`")?.unwrap_or_default();
    let description = read_str(d.description, MAX_DOC, "the plugin's `description`")?
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let call = d.call.ok_or("its descriptor's `call` is NULL")?;
    if d.n_tasks > MAX_TASKS {
        return Err(format!(
            "its descriptor lists {} tasks, more than the {MAX_TASKS} a plugin may have",
            d.n_tasks
        ));
    }
    let task_size = usize::try_from(d.task_size).unwrap_or(usize::MAX);
    let task_prefix = std::mem::size_of::<RawTask>();
    if d.n_tasks > 0 && task_size < task_prefix {
        return Err(format!(
            "its descriptor's `task_size` is {task_size}, less than the {task_prefix} bytes of a billiard_task of C plugin ABI version {C_ABI_VERSION}; set it to sizeof(billiard_task)"
        ));
    }
    let mut tasks = Vec::new();
    for i in 0..d.n_tasks as usize {
        let at = i
            .checked_mul(task_size)
            .and_then(|off| (d.tasks as usize).checked_add(off))
            .ok_or("its task table runs past the end of memory")?;
        let n = i.saturating_add(1);
        let t: RawTask = read(
            at,
            task_prefix,
            &format!("the entry of task {n} in its task table"),
        )?;
        let tname = read_str(t.name, MAX_NAME, &format!("the name of task {n}"))?
            .ok_or_else(|| format!("the name of task {n} is NULL"))?;
        check_name(&tname, &format!("the name of task {n}"))?;
        if t.n_args > MAX_ARGS {
            return Err(format!(
                "task `{tname}` has {} arguments, more than {MAX_ARGS}",
                t.n_args
            ));
        }
        let mut args = Vec::new();
        for j in 0..t.n_args as usize {
            let at = j
                .checked_mul(std::mem::size_of::<RawArg>())
                .and_then(|off| (t.args as usize).checked_add(off))
                .ok_or("an argument table runs past the end of memory")?;
            let m = j.saturating_add(1);
            let what = format!("argument {m} of task `{tname}`");
            let a: RawArg = read(at, std::mem::size_of::<RawArg>(), &what)?;
            let aname = read_str(a.name, MAX_NAME, &format!("the name of {what}"))?
                .unwrap_or_else(|| format!("arg{m}"));
            let ty = read_str(a.ty, MAX_NAME, &format!("the type of {what}"))?
                .unwrap_or_else(|| "any".to_string());
            args.push(ArgSpec { name: aname, ty });
        }
        let streaming = t.flags & TASK_STREAMING != 0;
        let item = if streaming {
            Some(
                read_str(
                    t.item,
                    MAX_NAME,
                    &format!("the item type of task `{tname}`"),
                )?
                .unwrap_or_else(|| "any".to_string()),
            )
        } else {
            None
        };
        tasks.push(TaskSpec {
            doc: read_str(t.doc, MAX_DOC, &format!("the doc of task `{tname}`"))?
                .unwrap_or_default(),
            ret: read_str(
                t.returns,
                MAX_NAME,
                &format!("the return type of task `{tname}`"),
            )?
            .unwrap_or_else(|| "any".to_string()),
            name: tname,
            args,
            takes_context: true,
            streaming,
            item,
            options: TaskOptions::default(),
            schema: None,
        });
    }
    let info = PluginInfo {
        path: abs.to_path_buf(),
        name,
        version,
        kind: PluginKind::C,
        abi_version,
        api_version: format!("billiard_plugin.h {C_ABI_VERSION}"),
        tasks,
        metadata: description.map(|d| PluginMeta {
            description: Some(d),
            ..PluginMeta::default()
        }),
    };
    Ok((CPlugin { call }, info))
}

/// A call in progress: where its writer appends, and the context its
/// `progress`/`emit` trampolines serve. Valid while it is in `CALLS`.
struct Call {
    token: u64,
    out: *mut RVec<u8>,
    /// Serializes writes to `out` (a plugin may write from several threads).
    out_lock: std::sync::Mutex<()>,
    ctx: *const TaskContext<'static>,
    /// Why a write or an item was refused, for the call's error.
    refused: std::sync::Mutex<Option<String>>,
}

// SAFETY: `out` and `ctx` are dereferenced only under `CALLS`'s read lock
// while the call is listed; the call removes itself under the write lock
// before its `out` and `ctx` go away. `out` is written under `out_lock`.
unsafe impl Send for Call {}
// SAFETY: as above.
unsafe impl Sync for Call {}

/// The calls in progress in this process (one in a worker; several when
/// threads call a plugin in-process).
static CALLS: RwLock<Vec<Call>> = RwLock::new(Vec::new());
/// Tokens (never 0, never reused within a process).
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// Runs `f` on the call named by `token`; `None` when it has returned.
fn with_call<R>(token: *mut c_void, f: impl FnOnce(&Call) -> R) -> Option<R> {
    let calls = CALLS.read().unwrap_or_else(|e| e.into_inner());
    let call = calls.iter().find(|c| c.token == token as u64)?;
    Some(f(call))
}

fn refuse(call: &Call, why: String) {
    let mut r = call.refused.lock().unwrap_or_else(|e| e.into_inner());
    r.get_or_insert(why);
}

extern "C" fn host_write(out: *mut c_void, data: *const c_void, len: usize) -> i32 {
    let wrote = with_call(out, |call| {
        if len == 0 {
            return 0;
        }
        if data.is_null() {
            refuse(call, "the plugin called write with a NULL pointer".into());
            return -1;
        }
        let _w = call.out_lock.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the call is listed (see `Call`), so `out` is its live
        // buffer, and `_w` makes this the only access to it.
        let buf = unsafe { &mut *call.out };
        if buf.len().saturating_add(len) > MAX_OUTPUT {
            drop(_w);
            refuse(
                call,
                format!("the output is over the host's limit of {MAX_OUTPUT} bytes"),
            );
            return -1;
        }
        // SAFETY: the plugin hands `len` bytes of its own at `data`, as
        // the header's contract says; a lie is a crash of this worker, as
        // any bad pointer in the plugin's own code would be.
        let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) };
        buf.extend_from_slice(bytes);
        0
    });
    // A call that has returned: dropped (its output is gone).
    wrote.unwrap_or(-1)
}

extern "C" fn host_progress(host: *mut c_void, done: u64, total: u64) {
    let _ = with_call(host, |call| {
        // SAFETY: as in `host_write`: the call is listed, its ctx alive.
        let ctx = unsafe { &*call.ctx };
        ctx.progress(done, total);
    });
}

extern "C" fn host_emit(host: *mut c_void, item: *const c_void, len: usize) -> i32 {
    let status = with_call(host, |call| {
        if item.is_null() && len > 0 {
            refuse(
                call,
                "the plugin emitted an item from a NULL pointer".into(),
            );
            return Status::TaskError;
        }
        let bytes: &[u8] = if len == 0 {
            &[]
        } else {
            // SAFETY: as in `host_write`.
            unsafe { std::slice::from_raw_parts(item.cast::<u8>(), len) }
        };
        // A consumer decodes items as JSON: one that is not is refused
        // here, naming it, rather than failing there.
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            refuse(
                call,
                format!("the plugin emitted an item that is not JSON: {e}"),
            );
            return Status::TaskError;
        }
        // SAFETY: as in `host_progress`.
        let ctx = unsafe { &*call.ctx };
        let (services, data) = ctx.host();
        (services.emit())(data, RSlice::from_slice(bytes))
    });
    // A call that has returned: its items go nowhere.
    status.unwrap_or(Status::TaskError) as i32
}

/// Lists a call (or a chunk of them) in `CALLS`: its writer appends to
/// `out`, its `progress`/`emit` go to `ctx`. Returns its token.
fn register(out: &mut RVec<u8>, ctx: &TaskContext<'_>) -> u64 {
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    // SAFETY (lifetime): the 'static is a lie the listing keeps true: the
    // caller unregisters before `ctx` and `out` can go away.
    let ctx = (ctx as *const TaskContext<'_>).cast::<TaskContext<'static>>();
    CALLS.write().unwrap_or_else(|e| e.into_inner()).push(Call {
        token,
        out: out as *mut RVec<u8>,
        out_lock: std::sync::Mutex::new(()),
        ctx,
        refused: std::sync::Mutex::new(None),
    });
    token
}

/// Ends a listing: from here on the token's writes and services refuse.
fn unregister(token: u64) {
    let mut calls = CALLS.write().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = calls.iter().position(|c| c.token == token) {
        calls.swap_remove(i);
    }
}

/// Why a write or item of the listed call was refused, if one was (taken).
fn take_refused(token: u64) -> Option<String> {
    let calls = CALLS.read().unwrap_or_else(|e| e.into_inner());
    let call = calls.iter().find(|c| c.token == token)?;
    let mut r = call.refused.lock().unwrap_or_else(|e| e.into_inner());
    r.take()
}

impl CPlugin {
    /// Why a call cannot be made at all (another codec, no such task): the
    /// status and message, before any plugin code runs.
    fn refuse(info: &PluginInfo, task: u32, codec: Codec) -> Option<(Status, String)> {
        let task_name = info.tasks.get(task as usize).map(|t| t.name.as_str());
        if codec != Codec::Json {
            return Some((
                Status::BadArgs,
                format!(
                    "`{}.{}` is a task of a C plugin, which takes JSON only: \
                     call it with JSON arguments (apply_raw with Codec::Json, the CLI, \
                     Celery), not through a typed call such as Pool::apply",
                    info.name,
                    task_name.unwrap_or("?")
                ),
            ));
        }
        if task_name.is_none() {
            return Some((
                Status::UnknownTask,
                format!("plugin `{}` has no task #{task}", info.name),
            ));
        }
        None
    }

    /// One call; appends the result (JSON) or the message to `out`.
    pub(super) fn call(&self, info: &PluginInfo, c: &Request<'_>, out: &mut RVec<u8>) -> Status {
        let Request {
            task,
            codec,
            input: args,
            ctx,
        } = *c;
        if let Some((status, why)) = Self::refuse(info, task, codec) {
            out.extend_from_slice(why.as_bytes());
            return status;
        }
        let token = register(out, ctx);
        let status = self.invoke(info, task, args, ctx, ctx.job_id(), token, out);
        unregister(token);
        status
    }

    /// Runs the plugin's `call` for one job of the listed call `token`
    /// (item job id `job_id`), appending to `out`, and checks what it
    /// returned: a status it defines, JSON on success, UTF-8 otherwise.
    #[allow(clippy::too_many_arguments)]
    fn invoke(
        &self,
        info: &PluginInfo,
        task: u32,
        args: &[u8],
        ctx: &TaskContext<'_>,
        job_id: u64,
        token: u64,
        out: &mut RVec<u8>,
    ) -> Status {
        let start = out.len();
        let task_name = info
            .tasks
            .get(task as usize)
            .map_or("?", |t| t.name.as_str());
        let raw = RawCtx {
            size: std::mem::size_of::<RawCtx>() as u32,
            attempt: ctx.attempt(),
            job_id,
            stop: ctx.stop_flag() as *const AtomicU32,
            progress: host_progress,
            emit: host_emit,
            host: token as *mut c_void,
        };
        // SAFETY: `call` is the plugin's entry, checked non-null at load,
        // with the signature billiard_plugin.h declares; `args` and `raw`
        // outlive the call; `host_write` accepts any `out` (a token), and
        // `token` is listed, so its writes land in `out`.
        let code = unsafe {
            (self.call)(
                task,
                args.as_ptr(),
                args.len(),
                &raw,
                host_write,
                token as *mut c_void,
            )
        };
        let replace = |out: &mut RVec<u8>, text: String| {
            out.truncate(start);
            out.extend_from_slice(text.as_bytes());
        };
        let status = match u8::try_from(code).ok().and_then(Status::from_u8) {
            Some(s) => s,
            None => {
                let said = String::from_utf8_lossy(out.as_slice().get(start..).unwrap_or_default())
                    .into_owned();
                let sep = if said.is_empty() { "" } else { ": " };
                replace(
                    out,
                    format!(
                        "`{}.{task_name}` returned status {code}, which billiard_plugin.h does not define{sep}{said}",
                        info.name
                    ),
                );
                return Status::TaskError;
            }
        };
        if let Some(why) = take_refused(token) {
            // A refused write or item: the call's output is incomplete.
            replace(out, format!("`{}.{task_name}`: {why}", info.name));
            return if status == Status::Ok {
                Status::TaskError
            } else {
                status
            };
        }
        let body = out.as_slice().get(start..).unwrap_or_default();
        if status == Status::Ok {
            if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
                replace(
                    out,
                    format!(
                        "`{}.{task_name}` returned a result that is not JSON ({e}): {shown:?}",
                        info.name
                    ),
                );
                return Status::TaskError;
            }
        } else if std::str::from_utf8(body).is_err() {
            // The message of an error is text.
            let text = String::from_utf8_lossy(body).into_owned();
            replace(out, text);
        }
        status
    }

    /// A chunk of `count` argument records (see
    /// `billiard_plugin_api::abi::BatchFn`): one plugin call per record,
    /// item `i` with job id `ctx.job_id() + i`, listed once for the chunk.
    pub(super) fn call_batch(
        &self,
        info: &PluginInfo,
        c: &Request<'_>,
        count: u32,
        out: &mut RVec<u8>,
    ) -> u32 {
        let Request {
            task,
            codec,
            input: records,
            ctx,
        } = *c;
        let refused = Self::refuse(info, task, codec);
        let token = match refused {
            Some(_) => None,
            None => Some(register(out, ctx)),
        };
        let mut done = 0u32;
        for (i, rec) in billiard_plugin_api::codec::records(records)
            .take(count as usize)
            .enumerate()
        {
            let Some(args) = rec else { break };
            let at = out.len();
            out.extend_from_slice(&[0u8; 5]);
            let status = match (&refused, token) {
                (Some((status, why)), _) => {
                    out.extend_from_slice(why.as_bytes());
                    *status
                }
                (None, Some(token)) => {
                    let job = ctx.job_id().wrapping_add(i as u64);
                    self.invoke(info, task, args, ctx, job, token, out)
                }
                (None, None) => Status::TaskError,
            };
            let len = out.len().saturating_sub(at).saturating_sub(5);
            let Ok(len) = u32::try_from(len) else { break };
            if let Some(rec) = out.as_mut_slice().get_mut(at..at.saturating_add(5)) {
                rec[0] = status as u8;
                rec[1..].copy_from_slice(&len.to_le_bytes());
            }
            done = done.saturating_add(1);
        }
        if let Some(token) = token {
            unregister(token);
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_read_without_trusting_their_pointers() {
        let s = std::ffi::CString::new("square").unwrap_or_default();
        assert_eq!(
            read_str(s.as_ptr(), 64, "x"),
            Ok(Some("square".to_string()))
        );
        assert_eq!(read_str(std::ptr::null(), 64, "x"), Ok(None));
        let bad = read_str(16 as *const c_char, 64, "the name").unwrap_err();
        assert!(
            bad.contains("the name points at unreadable memory"),
            "{bad}"
        );
        let long = std::ffi::CString::new("a".repeat(700)).unwrap_or_default();
        let why = read_str(long.as_ptr(), 512, "the doc").unwrap_err();
        assert!(why.contains("longer than 512 bytes"), "{why}");
        let not_utf8 = [0xffu8, 0xfe, 0];
        let why = read_str(not_utf8.as_ptr().cast(), 64, "the name").unwrap_err();
        assert!(why.contains("not UTF-8"), "{why}");
        // A struct past the plugin's size reads as zeros.
        let head: [u32; 4] = [1, 2, 3, 4];
        let got: [u32; 4] = read(head.as_ptr() as usize, 8, "x").unwrap_or_default();
        assert_eq!(got, [1, 2, 0, 0]);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("c_example-1.x", "n").is_ok());
        assert!(check_name("", "the name").unwrap_err().contains("is empty"));
        let why = check_name("a b", "the name").unwrap_err();
        assert!(why.contains("has the character ' '"), "{why}");
    }
}
