//! The Rust plugin kind: an abi_stable root module (`PluginMod`) exported
//! by `export_plugin!` of billiard-plugin-api.
//!
//! Loading goes through `lib_header_from_path(..).init_root_module()`, not
//! `RootModule::load_from_file`, because the latter caches one module per
//! root-module type per process: a second plugin would silently be the
//! first one again.

use std::path::Path;

use abi_stable::library::{lib_header_from_path, LibraryError, RootModuleError};
use abi_stable::std_types::{RSlice, RVec};
use billiard_plugin_api::abi::PluginModRef;
use billiard_plugin_api::{Status, ABI_VERSION};

use super::{ArgSpec, PluginInfo, PluginKind, PluginMeta, Request, TaskSpec};
use crate::task_options::TaskOptions;
use crate::task_schema::TaskSchema;

/// A loaded Rust plugin: its root module.
#[derive(Clone)]
pub(super) struct StablePlugin {
    module: PluginModRef,
    /// The plugin declares the failure-detail encoding this host reads
    /// (`PluginMod::failure_detail`); without it, its errors are text.
    pub(super) failure_detail: bool,
}

impl PluginMeta {
    pub(super) fn from_abi(m: &billiard_plugin_api::abi::PluginMetadata) -> PluginMeta {
        let text = |s: &abi_stable::std_types::RStr<'_>| {
            let s = s.as_str().trim();
            (!s.is_empty()).then(|| s.to_string())
        };
        PluginMeta {
            description: text(&m.description),
            authors: m
                .authors
                .as_str()
                .split(':')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(String::from)
                .collect(),
            homepage: text(&m.homepage),
            repository: text(&m.repository),
            license: text(&m.license),
        }
    }
}

/// Loads the root module of the library at `abs` (an absolute path) and
/// describes it; the task table is not yet checked for duplicates. The
/// tasks' JSON Schemas are asked for only with `schemas` (schemars builds
/// them in the plugin: a pool's every start paid for them, and only
/// `inspect` shows them).
pub(super) fn load(abs: &Path, schemas: bool) -> Result<(StablePlugin, PluginInfo), String> {
    let header = lib_header_from_path(abs).map_err(explain)?;
    // Checked against the ABI 2 prefix, so that plugins built before a
    // field was appended load too; read through the full layout.
    let module: PluginModRef = header
        .init_root_module::<billiard_plugin_api::abi::prefix::PluginModRef>()
        .map_err(explain)?
        .upgrade();
    let abi_version = module.abi_version();
    if abi_version != ABI_VERSION {
        return Err(super::version_refusal(
            abi_version,
            ABI_VERSION,
            ("plugin ABI", ""),
            "plugin-api",
        ));
    }
    // Appended after the ABI 2 prefix: absent (None) in older plugins.
    let metadata = module.metadata().as_ref().map(PluginMeta::from_abi);
    let failure_detail =
        module.failure_detail() == Some(billiard_plugin_api::abi::FAILURE_DETAIL_VERSION);
    let options = module.task_options();
    // An empty list (a hand-made module): no task has options.
    if let Some(o) = &options {
        if !o.is_empty() && o.len() != module.tasks().len() {
            return Err(format!(
                "its task options list {} entries for its {} tasks (a broken export_plugin!)",
                o.len(),
                module.tasks().len()
            ));
        }
    }
    let mut tasks = module
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
            streaming: t.streaming,
            item: t.streaming.then(|| t.item.to_string()),
            options: TaskOptions::default(),
            schema: None,
        })
        .collect::<Vec<TaskSpec>>();
    // Appended too: absent in older plugins (their schemas stay None).
    if let Some(schema_of) = module.task_schema().filter(|_| schemas) {
        let mut text = RVec::new();
        for (i, t) in tasks.iter_mut().enumerate() {
            let Ok(i) = u32::try_from(i) else { break };
            // A plugin that cannot say, or says nonsense, has none
            // (a schema only describes; nothing runs on it).
            schema_of(i, &mut text);
            t.schema = TaskSchema::from_plugin(text.as_slice());
            text.clear();
        }
    }
    if let Some(o) = options {
        for (t, text) in tasks.iter_mut().zip(o.iter()) {
            t.options = TaskOptions::from_plugin(text.as_str())
                .map_err(|e| format!("task `{}`: {e}", t.name))?;
        }
    }
    let info = PluginInfo {
        path: abs.to_path_buf(),
        name: module.name().to_string(),
        version: module.version().to_string(),
        kind: PluginKind::Rust,
        abi_version,
        api_version: module.api_version().to_string(),
        tasks,
        metadata,
    };
    Ok((
        StablePlugin {
            module,
            failure_detail,
        },
        info,
    ))
}

impl StablePlugin {
    /// One call by task index; see `Plugin::call_raw`.
    #[inline]
    pub(super) fn call(&self, c: &Request<'_>, out: &mut RVec<u8>) -> Status {
        (self.module.call())(c.task, c.codec, RSlice::from_slice(c.input), c.ctx, out)
    }

    /// One batch; see `Plugin::call_batch_raw`.
    #[inline]
    pub(super) fn call_batch(&self, c: &Request<'_>, count: u32, out: &mut RVec<u8>) -> u32 {
        let records = RSlice::from_slice(c.input);
        (self.module.call_batch())(c.task, c.codec, records, count, c.ctx, out)
    }
}

fn explain(err: LibraryError) -> String {
    match err {
        LibraryError::OpenError { err, .. } => format!("the dynamic loader refused it: {err}"),
        LibraryError::GetSymbolError { .. } => {
            format!(
                "not a billiard plugin: it exports no billiard root module (was it built with billiard-plugin-api's export_plugin!?) and no `{}` descriptor (a C plugin's, see plugin-api-c/include/billiard_plugin.h)",
                super::c_abi::SYMBOL
            )
        }
        LibraryError::InvalidAbiHeader(h) => format!(
            "not a compatible billiard plugin: it was built with an incompatible abi_stable (header {h:?})"
        ),
        LibraryError::IncompatibleVersionNumber { library_name, expected_version, actual_version } => format!(
            "built against an incompatible billiard-plugin-api ({library_name} {actual_version}, this host needs a version compatible with {expected_version}); rebuild the plugin against this host's plugin-api"
        ),
        LibraryError::AbiInstability(e) => {
            // The report is long: its head, and the error itself.
            let text = e.to_string();
            let errors: Vec<&str> = text
                .lines()
                .skip_while(|l| !l.trim_start().starts_with("Error:"))
                .take(6)
                .collect();
            format!(
                "built against an incompatible billiard-plugin-api: the ABI layout differs; rebuild the plugin against this host's plugin-api.\nlayout check: {}{}",
                first_lines(&text, 12),
                if errors.is_empty() {
                    String::new()
                } else {
                    format!("\n{}", errors.join("\n"))
                }
            )
        }
        LibraryError::RootModule { err: RootModuleError::Unwound, .. } => {
            "the plugin's module initializer panicked".into()
        }
        // abi_stable's text is wrapped in newlines.
        LibraryError::RootModule { err, .. } => format!(
            "the plugin's module initializer failed: {}",
            err.to_string().trim()
        ),
        other => other.to_string().trim().to_string(),
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
