//! Loading a plugin `.so` and calling its tasks in the current process.
//!
//! Loading goes through `lib_header_from_path(..).init_root_module()`, not
//! `RootModule::load_from_file`, because the latter caches one module per
//! root-module type per process: a second plugin would silently be the
//! first one again.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;

use abi_stable::library::{lib_header_from_path, LibraryError};
use abi_stable::std_types::{RSlice, RVec};
use billiard_plugin_api::abi::PluginModRef;
use billiard_plugin_api::{codec, Codec, Status, TaskContext, ABI_VERSION};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{ErrorKind, TaskError};

/// Why a plugin file could not be loaded. Always names the file.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq, Serialize, Deserialize)]
#[error("cannot load plugin {path}: {reason}")]
pub struct PluginLoadError {
    pub path: PathBuf,
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
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
}

/// A task as a plugin describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub name: String,
    pub doc: String,
    pub args: Vec<ArgSpec>,
    #[serde(rename = "returns")]
    pub ret: String,
    pub takes_context: bool,
}

impl TaskSpec {
    /// `name(a: A, b: B) -> R`
    pub fn signature(&self) -> String {
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| format!("{}: {}", a.name, a.ty))
            .collect();
        format!("{}({}) -> {}", self.name, args.join(", "), self.ret)
    }
}

/// What a plugin is: an owned copy of its root module's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    pub path: PathBuf,
    pub name: String,
    pub version: String,
    pub abi_version: u32,
    pub api_version: String,
    pub tasks: Vec<TaskSpec>,
}

impl PluginInfo {
    pub fn task_index(&self, name: &str) -> Option<u32> {
        self.tasks
            .iter()
            .position(|t| t.name == name)
            .map(|i| i as u32)
    }
}

/// A loaded plugin. Cheap to clone; the library stays mapped for the life
/// of the process (abi_stable never unloads, which keeps every `'static`
/// string the plugin handed out valid).
#[derive(Clone)]
pub struct Plugin {
    module: PluginModRef,
    info: std::sync::Arc<PluginInfo>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("info", &self.info).finish()
    }
}

const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const ET_DYN: u16 = 3;

/// Checks the file before handing it to the dynamic loader, so that the
/// common mistakes get a precise message.
fn precheck(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => format!("cannot read it: {e}"),
    })?;
    if meta.is_dir() {
        return Err("it is a directory, not a plugin file (pass the .so inside target/)".into());
    }
    let mut header = [0u8; 18];
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    let n = f
        .read(&mut header)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if n < 18 || header[..4] != ELF_MAGIC {
        return Err("not an ELF shared object (a plugin is the .so a cdylib crate builds)".into());
    }
    // e_type, in the byte order e_ident[EI_DATA] names.
    let e_type = if header[5] == 2 {
        u16::from_be_bytes([header[16], header[17]])
    } else {
        u16::from_le_bytes([header[16], header[17]])
    };
    if e_type != ET_DYN {
        return Err(format!("an ELF file but not a shared object (e_type {e_type}); build the plugin as crate-type = [\"cdylib\"]"));
    }
    Ok(())
}

fn explain(err: LibraryError) -> String {
    match err {
        LibraryError::OpenError { err, .. } => format!("the dynamic loader refused it: {err}"),
        LibraryError::GetSymbolError { .. } => {
            "not a billiard plugin: it exports no billiard root module (was it built with billiard-plugin-api's export_plugin!?)".into()
        }
        LibraryError::InvalidAbiHeader(h) => format!(
            "not a compatible billiard plugin: it was built with an incompatible abi_stable (header {h:?})"
        ),
        LibraryError::IncompatibleVersionNumber { library_name, expected_version, actual_version } => format!(
            "built against an incompatible billiard-plugin-api ({library_name} {actual_version}, this host needs a version compatible with {expected_version}); rebuild the plugin against this host's plugin-api"
        ),
        LibraryError::AbiInstability(e) => format!(
            "built against an incompatible billiard-plugin-api: the ABI layout differs; rebuild the plugin against this host's plugin-api.\nlayout check: {}",
            first_lines(&e.to_string(), 12)
        ),
        LibraryError::RootModule { err, .. } => format!("the plugin's module initializer failed: {err}"),
        other => format!("{other}"),
    }
}

fn first_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().take(n).collect();
    let mut out = lines.join("\n");
    if s.lines().count() > n {
        out.push_str("\n...");
    }
    out
}

impl Plugin {
    /// Loads a plugin file, checking that it is a billiard plugin with a
    /// compatible layout and ABI version.
    pub fn load(path: impl AsRef<Path>) -> Result<Plugin, PluginLoadError> {
        let path = path.as_ref();
        let fail = |reason: String| PluginLoadError {
            path: path.to_path_buf(),
            reason,
        };
        precheck(path).map_err(fail)?;
        // A relative path without a slash would make dlopen search the
        // library path instead of opening this file.
        let abs =
            std::path::absolute(path).map_err(|e| fail(format!("cannot resolve the path: {e}")))?;
        let header = lib_header_from_path(&abs).map_err(|e| fail(explain(e)))?;
        let module = header
            .init_root_module::<PluginModRef>()
            .map_err(|e| fail(explain(e)))?;
        let abi_version = module.abi_version();
        if abi_version != ABI_VERSION {
            return Err(fail(format!(
                "built for billiard plugin ABI version {abi_version}, this host speaks version {ABI_VERSION}; rebuild the plugin against this host's plugin-api"
            )));
        }
        let tasks = module
            .tasks()
            .iter()
            .map(|t| TaskSpec {
                name: t.name.to_string(),
                doc: t.doc.to_string(),
                args: t
                    .args
                    .iter()
                    .map(|a| ArgSpec {
                        name: a.name.to_string(),
                        ty: a.ty.to_string(),
                    })
                    .collect(),
                ret: t.ret.to_string(),
                takes_context: t.takes_context,
            })
            .collect();
        let info = PluginInfo {
            path: abs,
            name: module.name().to_string(),
            version: module.version().to_string(),
            abi_version,
            api_version: module.api_version().to_string(),
            tasks,
        };
        Ok(Plugin {
            module,
            info: std::sync::Arc::new(info),
        })
    }

    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

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
        (self.module.call())(task, codec, RSlice::from_slice(args), ctx, out)
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
        (self.module.call_batch())(task, codec, RSlice::from_slice(records), count, ctx, out)
    }

    /// Calls a task in this process with typed arguments (a tuple, one
    /// element per argument) and decodes its typed result.
    pub fn call<A: Serialize, R: DeserializeOwned>(
        &self,
        task: &str,
        args: A,
    ) -> Result<R, TaskError> {
        let index = self.task_index(task)?;
        let bytes = codec::encode(Codec::Bincode, &args).map_err(|e| {
            TaskError::new(
                ErrorKind::BadArgs,
                format!("could not encode the arguments: {e}"),
            )
        })?;
        let out = self.call_encoded(index, Codec::Bincode, &bytes)?;
        codec::decode(Codec::Bincode, &out).map_err(|e| {
            TaskError::new(
                ErrorKind::TaskError,
                format!("could not decode the result of `{task}` as the requested type: {e}"),
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
        let ctx = TaskContext::new(0, 0, &stop);
        let mut out = RVec::new();
        let status = self.call_raw(index, codec, args, &ctx, &mut out);
        outcome(status, out.into_vec())
    }
}

/// The `unknown_task` error, listing what the plugin does have.
pub fn unknown_task(info: &PluginInfo, name: &str) -> TaskError {
    let names: Vec<&str> = info.tasks.iter().map(|t| t.name.as_str()).collect();
    TaskError::new(
        ErrorKind::UnknownTask,
        format!(
            "plugin `{}` has no task `{name}` (it has: {})",
            info.name,
            names.join(", ")
        ),
    )
}

/// Turns a status and its output buffer into the job's outcome.
pub fn outcome(status: Status, out: Vec<u8>) -> Result<Vec<u8>, TaskError> {
    match ErrorKind::from_status(status) {
        None => Ok(out),
        Some(kind) => Err(TaskError::new(
            kind,
            String::from_utf8_lossy(&out).into_owned(),
        )),
    }
}
