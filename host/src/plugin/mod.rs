//! Loading a plugin `.so` and calling its tasks in the current process.
//!
//! Two kinds of plugin share one [`Plugin`] type: a Rust plugin built with
//! billiard-plugin-api (an abi_stable root module, `stable.rs`) and a C
//! plugin exporting a `billiard_plugin` descriptor
//! (`plugin-api-c/include/billiard_plugin.h`, `c_abi.rs`). The file's
//! exported symbols pick the kind at load; a private enum holds it, so a
//! call is one match, no vtable.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;

use abi_stable::std_types::RVec;
use billiard_plugin_api::{codec, Codec, Status, TaskContext};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

mod c_abi;
mod stable;

use crate::error::{ErrorKind, TaskError};
use crate::task_options::TaskOptions;
use crate::task_schema::TaskSchema;

/// Why a plugin file could not be loaded. Always names the file.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq, Serialize, Deserialize)]
#[error("cannot load plugin {path}: {reason}")]
pub struct PluginLoadError {
    /// The plugin file.
    pub path: PathBuf,
    /// Why it could not be loaded (not a shared object, no root module,
    /// ABI mismatch, ...).
    pub reason: String,
}

impl From<PluginLoadError> for TaskError {
    fn from(e: PluginLoadError) -> Self {
        TaskError::new(ErrorKind::PluginLoad, e.to_string())
    }
}

/// One positional argument of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgSpec {
    /// The parameter's name in the task function.
    pub name: String,
    /// The parameter's Rust type as written in the source (`type` in JSON).
    #[serde(rename = "type")]
    pub ty: String,
}

/// A task as a plugin describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The task's name (its function's name).
    pub name: String,
    /// The task function's doc comment (empty without one).
    pub doc: String,
    /// The positional arguments a job passes, in order (a `&TaskContext` or
    /// `&Emitter<T>` parameter is not one of them).
    pub args: Vec<ArgSpec>,
    /// The return type as written in the source (`returns` in JSON; `()`
    /// when there is none).
    #[serde(rename = "returns")]
    pub ret: String,
    /// The task takes a `&TaskContext`.
    pub takes_context: bool,
    /// The task takes an `&Emitter<T>`: it sends items while it runs.
    pub streaming: bool,
    /// The item type of a streaming task (`null` otherwise).
    pub item: Option<String>,
    /// The task's registration options (`#[task(rate_limit = "100/m",
    /// ...)]`); `{}` when it has none, and for plugins built before
    /// options existed.
    #[serde(default)]
    pub options: TaskOptions,
    /// JSON Schemas of its argument array and its result, derived by
    /// `#[task]` from the task's types (issue 28 item 9); `None` (`null`)
    /// for a plugin built before schemas existed: unknown, not "anything".
    /// Filled only by [`Plugin::load_with_schemas`] (what `inspect`
    /// shows): [`Plugin::load`], and so a pool, leaves it `None` (building
    /// them cost every pool's start its first result's time, issue 26).
    #[serde(default)]
    pub schema: Option<TaskSchema>,
}

impl TaskSpec {
    /// `name(a: A, b: B) -> R`; a default as Python writes it (`z: i64 =
    /// 3`) and a variadic tail starred (`*rest: Vec<i64>`).
    pub fn signature(&self) -> String {
        let last = self.args.len().saturating_sub(1);
        let args: Vec<String> = self
            .args
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let star = if self.options.varargs && i == last {
                    "*"
                } else {
                    ""
                };
                match self.options.defaults.get(&a.name) {
                    Some(d) => {
                        let d = match d {
                            serde_json::Value::Null => "None".to_string(),
                            serde_json::Value::Bool(true) => "True".to_string(),
                            serde_json::Value::Bool(false) => "False".to_string(),
                            d => d.to_string(),
                        };
                        format!("{star}{}: {} = {d}", a.name, a.ty)
                    }
                    None => format!("{star}{}: {}", a.name, a.ty),
                }
            })
            .collect();
        format!("{}({}) -> {}", self.name, args.join(", "), self.ret)
    }

    /// The argument tuple's type, spelled like `std::any::type_name` spells
    /// a caller's: `(u64,)`, `(i64, i64)`, `()`.
    pub(crate) fn takes(&self) -> String {
        let types: Vec<&str> = self.args.iter().map(|a| a.ty.as_str()).collect();
        match types.as_slice() {
            [one] => format!("({one},)"),
            _ => format!("({})", types.join(", ")),
        }
    }
}

/// A `bad_args` error from a task's argument decoding (the codec's words:
/// trailing bytes, an unexpected end) reworded to say what the task takes
/// and what a typed caller gave, by type name (issue 28, item 6). Other
/// errors pass unchanged.
pub(crate) fn explain_bad_args(
    e: TaskError,
    signature: &str,
    takes: &str,
    given: &str,
) -> TaskError {
    // A plugin's message in its own words (`expected no arguments`) stays.
    let codec_words = ["bincode", "UnexpectedEnd", "trailing bytes"];
    if e.kind != ErrorKind::BadArgs || !codec_words.iter().any(|w| e.message.contains(w)) {
        return e;
    }
    let how = if e.message.contains("trailing bytes") {
        // bincode cannot tell "too many" from "of a larger type".
        "more or larger values than it takes"
    } else if e.message.contains("UnexpectedEnd") {
        "fewer or smaller values than it takes"
    } else {
        "values of other types than it takes"
    };
    TaskError::new(
        ErrorKind::BadArgs,
        format!("`{signature}` takes arguments `{takes}`, was given `{given}`: {how}"),
    )
}

/// What a plugin is: an owned copy of its root module's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    /// The plugin file, as an absolute path.
    pub path: PathBuf,
    /// The plugin's name (the `name:` of its `export_plugin!`); jobs name
    /// the plugin by it.
    pub name: String,
    /// The plugin's version (by default its crate's version).
    pub version: String,
    /// What kind of plugin it is: a Rust one or a C one (`"rust"`, `"c"`;
    /// `"rust"` when absent, as from a host before C plugins).
    #[serde(default)]
    pub kind: PluginKind,
    /// The plugin ABI version it was built for: for a Rust plugin always
    /// this host's [`ABI_VERSION`](billiard_plugin_api::ABI_VERSION), for a
    /// C plugin always [`C_ABI_VERSION`] (another is refused).
    pub abi_version: u32,
    /// The version of `billiard-plugin-api` it was built with (for a C
    /// plugin: `billiard_plugin.h` and its ABI version).
    pub api_version: String,
    /// Its tasks, in the order of the plugin's `tasks: [...]` (a task's index
    /// is its position here).
    pub tasks: Vec<TaskSpec>,
    /// What the plugin says about itself; `None` for a plugin built against
    /// a `plugin-api` older than the metadata field (the field is absent
    /// from its root module).
    #[serde(default)]
    pub metadata: Option<PluginMeta>,
}

/// The ABI version of the C plugin interface this host speaks
/// (`BILLIARD_C_ABI_VERSION` in `billiard_plugin.h`).
pub const C_ABI_VERSION: u32 = c_abi::C_ABI_VERSION;

/// The two kinds of plugin a pool runs side by side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// Built with `billiard-plugin-api` (`export_plugin!`): takes bincode
    /// (typed calls) and JSON.
    #[default]
    Rust,
    /// Exports a `billiard_plugin` descriptor (`billiard_plugin.h`): any
    /// language with a C ABI. Speaks JSON only.
    C,
}

impl PluginKind {
    /// `"rust"` or `"c"`, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Rust => "rust",
            PluginKind::C => "c",
        }
    }

    /// Whether a plugin of this kind takes arguments (and gives results)
    /// in `codec`. A C plugin speaks JSON only: a typed call (bincode) to
    /// it is refused by name as `bad_args`, never decoded as garbage.
    pub fn speaks(self, codec: Codec) -> bool {
        match self {
            PluginKind::Rust => true,
            PluginKind::C => codec == Codec::Json,
        }
    }
}

/// A plugin's description, authors, homepage, repository and license (its
/// `Cargo.toml`'s); unset ones are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginMeta {
    /// `description` from the plugin's `Cargo.toml`.
    pub description: Option<String>,
    /// `authors` from the plugin's `Cargo.toml` (empty when unset).
    pub authors: Vec<String>,
    /// `homepage` from the plugin's `Cargo.toml`.
    pub homepage: Option<String>,
    /// `repository` from the plugin's `Cargo.toml`.
    pub repository: Option<String>,
    /// `license` from the plugin's `Cargo.toml`.
    pub license: Option<String>,
}

impl PluginInfo {
    /// The index the ABI calls task `name` by; `None` if there is no such
    /// task.
    pub fn task_index(&self, name: &str) -> Option<u32> {
        self.tasks
            .iter()
            .position(|t| t.name == name)
            .map(|i| i as u32)
    }
}

/// A loaded plugin, Rust or C. Cheap to clone; the library stays mapped
/// for the life of the process (libraries are never unloaded, which keeps
/// every `'static` string the plugin handed out valid).
#[derive(Clone)]
pub struct Plugin {
    backend: Backend,
    info: std::sync::Arc<PluginInfo>,
}

/// One call (or one chunk) as a backend takes it: the task's index, the
/// codec, the input (the arguments, or a chunk's argument records) and the
/// job's context.
#[derive(Clone, Copy)]
struct Request<'a> {
    task: u32,
    codec: Codec,
    input: &'a [u8],
    ctx: &'a TaskContext<'a>,
}

/// How a plugin's tasks are called: one of two, chosen at load by the
/// symbol the file exports.
#[derive(Clone)]
enum Backend {
    Stable(stable::StablePlugin),
    C(c_abi::CPlugin),
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("info", &self.info).finish()
    }
}

const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const ET_DYN: u16 = 3;
const PT_LOAD: u32 = 1;
/// `e_phnum` value meaning "too many program headers to count here".
const PN_XNUM: u16 = 0xffff;

/// Checks the file before handing it to the dynamic loader, so that the
/// common mistakes get a precise message, and so that a truncated file
/// cannot crash the process (the loader maps the file's segments; touching
/// a page past the end of the file raises SIGBUS).
fn precheck(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => format!("cannot read it: {e}"),
    })?;
    if meta.is_dir() {
        return Err("it is a directory, not a plugin file (pass the .so inside target/)".into());
    }
    if !meta.is_file() {
        return Err("not a regular file (a plugin is the .so a cdylib crate builds)".into());
    }
    let not_elf = || "not an ELF shared object (a plugin is the .so a cdylib crate builds)";
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    let mut header = Vec::with_capacity(64);
    (&mut f)
        .take(64)
        .read_to_end(&mut header)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if header.len() < 18 || header[..4] != ELF_MAGIC {
        return Err(not_elf().into());
    }
    let elf = Elf {
        is64: header[4] == 2,
        big_endian: header[5] == 2,
    };
    let e_type = elf.u16(&header, 16);
    if e_type != ET_DYN {
        return Err(format!("an ELF file but not a shared object (e_type {e_type}); build the plugin as crate-type = [\"cdylib\"]"));
    }
    if header.len() < elf.header_len() {
        return Err(format!(
            "the file is truncated ({} bytes, shorter than an ELF header)",
            header.len()
        ));
    }
    check_segments(&mut f, &header, elf, meta.len())
}

/// The class and byte order of an ELF file, to read its header fields.
#[derive(Clone, Copy)]
struct Elf {
    is64: bool,
    big_endian: bool,
}

impl Elf {
    fn header_len(self) -> usize {
        if self.is64 {
            64
        } else {
            52
        }
    }

    fn u16(self, b: &[u8], at: usize) -> u16 {
        let v = [b[at], b[at + 1]];
        if self.big_endian {
            u16::from_be_bytes(v)
        } else {
            u16::from_le_bytes(v)
        }
    }

    fn u32(self, b: &[u8], at: usize) -> u32 {
        let v = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if self.big_endian {
            u32::from_be_bytes(v)
        } else {
            u32::from_le_bytes(v)
        }
    }

    /// A file offset or size: 8 bytes in ELF64, 4 in ELF32.
    fn word(self, b: &[u8], at: usize) -> u64 {
        if !self.is64 {
            return u64::from(self.u32(b, at));
        }
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[at..at + 8]);
        if self.big_endian {
            u64::from_be_bytes(v)
        } else {
            u64::from_le_bytes(v)
        }
    }
}

/// Checks that the program header table and every loadable segment lie
/// within the file's `len` bytes.
fn check_segments(f: &mut std::fs::File, header: &[u8], elf: Elf, len: u64) -> Result<(), String> {
    use std::io::{Seek, SeekFrom};
    let (phoff, phentsize, phnum) = if elf.is64 {
        (
            elf.word(header, 32),
            elf.u16(header, 54),
            elf.u16(header, 56),
        )
    } else {
        (
            elf.word(header, 28),
            elf.u16(header, 42),
            elf.u16(header, 44),
        )
    };
    // (p_offset, p_filesz) positions within one program header entry.
    let (off_at, filesz_at, min_entry) = if elf.is64 { (8, 32, 56) } else { (4, 16, 32) };
    if phnum == PN_XNUM || phnum == 0 {
        // Unusual layouts: leave them to the loader.
        return Ok(());
    }
    if usize::from(phentsize) < min_entry {
        return Err(format!(
            "a malformed ELF file (program header entries of {phentsize} bytes)"
        ));
    }
    let table_len = u64::from(phentsize) * u64::from(phnum);
    let truncated = |what: &str, end: u64| {
        format!("the file is truncated or corrupt: it has {len} bytes but {what} reaches byte {end} (was it being rebuilt?)")
    };
    let table_end = phoff.saturating_add(table_len);
    if table_end > len {
        return Err(truncated("its program header table", table_end));
    }
    let mut table = vec![0u8; table_len as usize];
    f.seek(SeekFrom::Start(phoff))
        .and_then(|_| f.read_exact(&mut table))
        .map_err(|e| format!("cannot read it: {e}"))?;
    for entry in table.chunks_exact(usize::from(phentsize)) {
        if elf.u32(entry, 0) != PT_LOAD {
            continue;
        }
        let end = elf
            .word(entry, off_at)
            .saturating_add(elf.word(entry, filesz_at));
        if end > len {
            return Err(truncated("a loadable segment", end));
        }
    }
    Ok(())
}

impl Plugin {
    /// Loads a plugin file, Rust or C, checking that it is a billiard
    /// plugin with a compatible layout and ABI version. Its tasks'
    /// schemas ([`TaskSpec::schema`]) are not asked for: see
    /// [`Plugin::load_with_schemas`].
    pub fn load(path: impl AsRef<Path>) -> Result<Plugin, PluginLoadError> {
        Plugin::load_opts(path.as_ref(), false)
    }

    /// [`Plugin::load`], and each task's JSON Schemas too
    /// ([`TaskSpec::schema`], what `inspect` shows).
    pub fn load_with_schemas(path: impl AsRef<Path>) -> Result<Plugin, PluginLoadError> {
        Plugin::load_opts(path.as_ref(), true)
    }

    fn load_opts(path: &Path, schemas: bool) -> Result<Plugin, PluginLoadError> {
        let fail = |reason: String| PluginLoadError {
            path: path.to_path_buf(),
            reason,
        };
        precheck(path).map_err(fail)?;
        // A relative path without a slash would make dlopen search the
        // library path instead of opening this file.
        let abs =
            std::path::absolute(path).map_err(|e| fail(format!("cannot resolve the path: {e}")))?;
        // A C plugin's descriptor symbol picks the C backend; anything else
        // goes to abi_stable, whose refusal names both symbols.
        let (backend, info) = match c_abi::find(&abs) {
            Some(desc) => {
                let (p, info) = c_abi::load(&abs, desc).map_err(fail)?;
                (Backend::C(p), info)
            }
            None => {
                let (p, info) = stable::load(&abs, schemas).map_err(fail)?;
                (Backend::Stable(p), info)
            }
        };
        if let Some(reason) = duplicate_task(&info.tasks) {
            return Err(fail(reason));
        }
        Ok(Plugin {
            backend,
            info: std::sync::Arc::new(info),
        })
    }

    /// What the plugin is: its name, version and tasks.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// Resolves a task name to the index the ABI calls it by.
    pub fn task_index(&self, name: &str) -> Result<u32, TaskError> {
        self.info
            .task_index(name)
            .ok_or_else(|| unknown_task(&self.info, name))
    }

    /// Calls task `task` once with encoded arguments; `out` receives the
    /// encoded result or the error message.
    pub fn call_raw(
        &self,
        task: u32,
        codec: Codec,
        args: &[u8],
        ctx: &TaskContext<'_>,
        out: &mut RVec<u8>,
    ) -> Status {
        let call = Request {
            task,
            codec,
            input: args,
            ctx,
        };
        match &self.backend {
            Backend::Stable(p) => p.call(&call, out),
            Backend::C(p) => p.call(&self.info, &call, out),
        }
    }

    /// Whether the plugin's `task_error` output may carry a `Failure`'s
    /// detail (it declares the encoding this host reads; a C plugin never
    /// does).
    pub fn writes_failure_detail(&self) -> bool {
        match &self.backend {
            Backend::Stable(p) => p.failure_detail,
            Backend::C(_) => false,
        }
    }

    /// Which kind of plugin this is.
    pub fn kind(&self) -> PluginKind {
        self.info.kind
    }

    /// Makes sure the output of a call (`count` 1: `status` and `out`) or of
    /// a batch (`out`'s result records from `start` on) from a plugin that
    /// does not declare the failure-detail encoding reads as text, as it
    /// always did: a `task_error` that starts like the encoding (only a
    /// broken or hostile plugin writes such bytes; a Rust plugin's text is
    /// UTF-8, which never starts with 0xFF) is replaced by its lossy text,
    /// the message the host made of it before the encoding existed.
    pub(crate) fn plain_errors(
        &self,
        status: Status,
        count: u32,
        out: &mut RVec<u8>,
        start: usize,
    ) {
        use billiard_plugin_api::FAILURE_DETAIL_PREFIX;
        if self.writes_failure_detail() {
            return;
        }
        let looks_encoded = |b: &[u8]| b.starts_with(&FAILURE_DETAIL_PREFIX[..1]);
        if count == 1 {
            let body = out.as_slice().get(start..).unwrap_or_default();
            if status == Status::TaskError && looks_encoded(body) {
                let text = String::from_utf8_lossy(body).into_owned();
                out.truncate(start);
                out.extend_from_copy_slice(text.as_bytes());
            }
            return;
        }
        let body = out.as_slice().get(start..).unwrap_or_default();
        let suspect = codec::result_records(body)
            .any(|r| r.is_some_and(|(st, b)| st == Status::TaskError as u8 && looks_encoded(b)));
        if !suspect {
            return;
        }
        let mut rebuilt: Vec<u8> = Vec::with_capacity(body.len());
        let mut used = 0usize;
        for rec in codec::result_records(body) {
            let Some((st, b)) = rec else { break };
            used = used.saturating_add(5).saturating_add(b.len());
            let text;
            let b = if st == Status::TaskError as u8 && looks_encoded(b) {
                text = String::from_utf8_lossy(b).into_owned();
                text.as_bytes()
            } else {
                b
            };
            rebuilt.push(st);
            rebuilt.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
            rebuilt.extend_from_slice(b);
        }
        // A malformed tail stays as it was: the supervisor reports it.
        rebuilt.extend_from_slice(body.get(used..).unwrap_or_default());
        out.truncate(start);
        out.extend_from_copy_slice(&rebuilt);
    }

    /// Calls task `task` over `count` argument records (see
    /// `billiard_plugin_api::abi::BatchFn`), appending result records to `out`.
    pub fn call_batch_raw(
        &self,
        task: u32,
        codec: Codec,
        records: &[u8],
        count: u32,
        ctx: &TaskContext<'_>,
        out: &mut RVec<u8>,
    ) -> u32 {
        let call = Request {
            task,
            codec,
            input: records,
            ctx,
        };
        match &self.backend {
            Backend::Stable(p) => p.call_batch(&call, count, out),
            Backend::C(p) => p.call_batch(&self.info, &call, count, out),
        }
    }

    /// Calls a task in this process with typed arguments (a tuple, one
    /// element per argument) and decodes its typed result (through bincode
    /// for a Rust plugin, JSON for a C one).
    pub fn call<A: Serialize, R: DeserializeOwned>(
        &self,
        task: &str,
        args: A,
    ) -> Result<R, TaskError> {
        let index = self.task_index(task)?;
        // A C plugin speaks JSON: the typed call goes through it.
        let wire = if self.info.kind.speaks(Codec::Bincode) {
            Codec::Bincode
        } else {
            Codec::Json
        };
        let bytes = codec::encode(wire, &args).map_err(|e| {
            TaskError::new(
                ErrorKind::BadArgs,
                format!("could not encode the arguments: {e}"),
            )
        })?;
        let spec = self.info.tasks.get(index as usize);
        let out = self
            .call_encoded(index, wire, &bytes)
            .map_err(|e| match spec {
                Some(spec) => explain_bad_args(
                    e,
                    &spec.signature(),
                    &spec.takes(),
                    std::any::type_name::<A>(),
                ),
                None => e,
            })?;
        // A result that does not decode is the caller's error (it asked for
        // another type than the task returns), not the task's (issue 28).
        codec::decode(wire, &out).map_err(|_| {
            let returns = spec.map_or("?", |t| t.ret.as_str());
            TaskError::new(
                ErrorKind::BadArgs,
                format!(
                    "the result was asked for as `{}`, but `{task}` returns `{returns}`",
                    std::any::type_name::<R>()
                ),
            )
        })
    }

    /// Calls a task in this process with a JSON array of arguments.
    pub fn call_json(&self, task: &str, args: &str) -> Result<serde_json::Value, TaskError> {
        let index = self.task_index(task)?;
        let out = self.call_encoded(index, Codec::Json, args.as_bytes())?;
        serde_json::from_slice(&out).map_err(|e| {
            TaskError::new(
                ErrorKind::TaskError,
                format!("the plugin returned invalid JSON: {e}"),
            )
        })
    }

    fn call_encoded(&self, index: u32, codec: Codec, args: &[u8]) -> Result<Vec<u8>, TaskError> {
        let stop = AtomicU32::new(0);
        // This host reads a `Failure`'s class and directive.
        let flags = AtomicU32::new(billiard_plugin_api::HOST_FLAG_FAILURE_DETAIL);
        let ctx = TaskContext::with_host(
            0,
            0,
            &stop,
            &flags,
            billiard_plugin_api::noop_host_services(),
            std::ptr::null(),
        );
        let mut out = RVec::new();
        let status = self.call_raw(index, codec, args, &ctx, &mut out);
        self.plain_errors(status, 1, &mut out, 0);
        outcome(status, out.into_vec())
    }
}

/// The refusal of a plugin built for ABI version `found` by a host of
/// version `speaks`, naming both: `abi` is the interface's name in the
/// plugin's words and in the host's (`("C plugin ABI", "C plugin ABI ")`),
/// `against` what to rebuild it against.
fn version_refusal(found: u32, speaks: u32, abi: (&str, &str), against: &str) -> String {
    let advice = if found > speaks {
        format!("the plugin is newer than this host: run it with a newer billiard-host, or rebuild it against this host's {against}")
    } else {
        format!("rebuild the plugin against this host's {against}")
    };
    format!(
        "built for billiard {} version {found}, this host speaks {}version {speaks}; {advice}",
        abi.0, abi.1
    )
}

/// Two tasks of one name: the second could never be called.
fn duplicate_task(tasks: &[TaskSpec]) -> Option<String> {
    let mut seen = std::collections::HashMap::new();
    for (i, t) in tasks.iter().enumerate() {
        if let Some(first) = seen.insert(t.name.as_str(), i) {
            return Some(format!(
                "it exports two tasks named `{}` (tasks {} and {} of its list); \
                 the second could never be called: give each task its own name",
                t.name,
                first + 1,
                i + 1
            ));
        }
    }
    // Two tasks registering one Celery name: the second could never be
    // sent to (issue 29 item 1).
    let mut celery = std::collections::HashMap::new();
    for t in tasks {
        if let Some(n) = t.options.name.as_deref() {
            if let Some(first) = celery.insert(n, t.name.as_str()) {
                return Some(format!(
                    "its tasks `{first}` and `{}` both register the Celery name `{n}`; \
                     the second could never be called: give each its own name",
                    t.name
                ));
            }
        }
    }
    None
}

/// The `unknown_task` error, listing what the plugin does have (and the
/// closest name, when one is close enough to be what was meant).
pub fn unknown_task(info: &PluginInfo, name: &str) -> TaskError {
    let names: Vec<&str> = info.tasks.iter().map(|t| t.name.as_str()).collect();
    TaskError::new(
        ErrorKind::UnknownTask,
        format!(
            "plugin `{}` has no task `{name}`{} (it has: {})",
            info.name,
            did_you_mean(name, names.iter().copied()),
            names.join(", ")
        ),
    )
}

/// The name in `known` closest to `name` (Damerau-Levenshtein distance,
/// ignoring case), if it is close enough to be a typo of it: at most a
/// third of the longer name's characters differ (at least one may, from
/// three characters on). Ties
/// go to the earlier name. `None` when no name is that near: an unrelated
/// name is never suggested.
pub fn closest_name<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let wanted = name.to_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    for k in known {
        let d = strsim::damerau_levenshtein(&wanted, &k.to_lowercase());
        let longer = wanted.chars().count().max(k.chars().count());
        // Names of one or two characters are all near each other: only
        // their case may differ.
        let allowed = if longer < 3 { 0 } else { (longer / 3).max(1) };
        if d <= allowed && best.is_none_or(|(b, _)| d < b) {
            best = Some((d, k));
        }
    }
    best.map(|(_, k)| k)
}

/// `: did you mean `NAME`?` for the [`closest_name`], or nothing.
fn did_you_mean<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    match closest_name(name, known) {
        Some(k) => format!(": did you mean `{k}`?"),
        None => String::new(),
    }
}

/// Resolves `plugin` (its name; may be empty when only one plugin is
/// loaded) and `task` among `plugins`: their indexes.
pub fn resolve_in_plugin(
    plugins: &[PluginInfo],
    plugin: &str,
    task: &str,
) -> Result<(usize, u32), TaskError> {
    let (pi, p) = if plugin.is_empty() && plugins.len() == 1 {
        (0, &plugins[0])
    } else {
        plugins
            .iter()
            .enumerate()
            .find(|(_, p)| p.name == plugin)
            .ok_or_else(|| {
                let names: Vec<&str> = plugins.iter().map(|p| p.name.as_str()).collect();
                TaskError::new(
                    ErrorKind::UnknownTask,
                    format!(
                        "no plugin named `{plugin}` is loaded{} (loaded: {})",
                        did_you_mean(plugin, names.iter().copied()),
                        names.join(", ")
                    ),
                )
            })?
    };
    let task = p.task_index(task).ok_or_else(|| unknown_task(p, task))?;
    Ok((pi, task))
}

/// Finds a task by name among `plugins` (the pool's, in its order) in
/// whichever plugin has it; `plugin.task` picks a plugin explicitly.
/// Returns the plugin's and the task's index. Ambiguous names are an
/// error; an unknown one lists the tasks and says the closest name
/// ([`closest_name`]: a unique bare name or a `plugin.task`).
pub fn resolve_task(plugins: &[PluginInfo], name: &str) -> Result<(usize, u32), TaskError> {
    // A Celery name a task registered (`#[task(name = "proj.tasks.add")]`)
    // first, before any `plugin.task` splitting (issue 29 item 1); the
    // first plugin of the pool's order wins when two register it.
    for (pi, p) in plugins.iter().enumerate() {
        if let Some(ti) = p
            .tasks
            .iter()
            .position(|t| t.options.name.as_deref() == Some(name))
        {
            if let Ok(ti) = u32::try_from(ti) {
                return Ok((pi, ti));
            }
        }
    }
    if let Some((plugin, task)) = name.split_once('.') {
        if plugins.iter().any(|p| p.name == plugin) {
            return resolve_in_plugin(plugins, plugin, task);
        }
    }
    let hits: Vec<(usize, u32)> = plugins
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.task_index(name).map(|t| (i, t)))
        .collect();
    match hits.as_slice() {
        [hit] => Ok(*hit),
        [] => {
            let all: Vec<String> = plugins
                .iter()
                .flat_map(|p| {
                    p.tasks
                        .iter()
                        .map(move |t| format!("{}.{}", p.name, t.name))
                })
                .collect();
            // A `plugin.task` is near a `plugin.task`; a bare name near a
            // bare one, which two plugins sharing it suggests qualified
            // (the bare name would be ambiguous).
            let hint = if name.contains('.') {
                did_you_mean(name, all.iter().map(String::as_str))
            } else {
                let bare = plugins
                    .iter()
                    .flat_map(|p| p.tasks.iter().map(|t| t.name.as_str()));
                match closest_name(name, bare) {
                    None => String::new(),
                    Some(t) => {
                        let owners: Vec<String> = plugins
                            .iter()
                            .filter(|p| p.task_index(t).is_some())
                            .map(|p| format!("`{}.{t}`", p.name))
                            .collect();
                        match owners.len() {
                            1 => format!(": did you mean `{t}`?"),
                            _ => format!(": did you mean {}?", owners.join(" or ")),
                        }
                    }
                }
            };
            Err(TaskError::new(
                ErrorKind::UnknownTask,
                format!(
                    "no task `{name}` in the loaded plugins{hint} (tasks: {})",
                    all.join(", ")
                ),
            ))
        }
        _ => {
            let names: Vec<String> = hits
                .iter()
                .map(|(p, _)| format!("{}.{name}", plugins[*p].name))
                .collect();
            Err(TaskError::new(
                ErrorKind::UnknownTask,
                format!(
                    "task `{name}` is ambiguous; name one of: {}",
                    names.join(", ")
                ),
            ))
        }
    }
}

/// Turns a status and its output buffer into the job's outcome: a
/// `task_error` carrying a `Failure`'s detail decodes into
/// [`TaskError::detail`] (see [`TaskError::from_plugin_output`]).
pub fn outcome(status: Status, out: Vec<u8>) -> Result<Vec<u8>, TaskError> {
    match ErrorKind::from_status(status) {
        None => Ok(out),
        Some(kind) => Err(TaskError::from_plugin_output(kind, &out)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, celery: Option<&str>) -> TaskSpec {
        TaskSpec {
            name: name.into(),
            doc: String::new(),
            args: Vec::new(),
            ret: "()".into(),
            takes_context: false,
            streaming: false,
            item: None,
            options: TaskOptions {
                name: celery.map(str::to_string),
                ..TaskOptions::default()
            },
            schema: None,
        }
    }

    #[test]
    fn a_celery_name_registered_twice_is_refused_and_resolves_first() {
        let both = [spec("add", Some("proj.add")), spec("sum", Some("proj.add"))];
        let why = duplicate_task(&both).unwrap_or_default();
        assert!(
            why.contains("both register the Celery name `proj.add`"),
            "{why}"
        );
        assert!(duplicate_task(&[spec("add", Some("proj.add")), spec("sum", None)]).is_none());
        // A dotted Celery name resolves before `plugin.task` splitting,
        // even when its first part is a plugin's name.
        let info = |tasks: Vec<TaskSpec>| PluginInfo {
            path: std::path::PathBuf::from("/x.so"),
            name: "proj".into(),
            version: "0".into(),
            kind: PluginKind::Rust,
            abi_version: 2,
            api_version: "0".into(),
            tasks,
            metadata: None,
        };
        let plugins = [info(vec![
            spec("mul", None),
            spec("add", Some("proj.tasks.add")),
        ])];
        assert_eq!(resolve_task(&plugins, "proj.tasks.add").ok(), Some((0, 1)));
        assert_eq!(resolve_task(&plugins, "proj.mul").ok(), Some((0, 0)));
        assert!(resolve_task(&plugins, "proj.tasks.mul").is_err());
    }
}
