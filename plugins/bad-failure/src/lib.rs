//! `bad-failure`: a plugin whose `call` and `call_batch` are written by hand
//! (no glue) to return `task_error` outputs that a well-behaved plugin never
//! writes: the failure-detail prefix followed by garbage, by a class path or
//! a countdown the host refuses, or by a well-formed detail. The host must
//! read each as a plain `task_error`, except the well-formed one, and that
//! one only when the plugin declares the encoding
//! (`BILLIARD_BAD_FAILURE_UNDECLARED=1` in the loading process's
//! environment makes it declare none). Every call of task `i` writes
//! output `i`, whatever its arguments. Never load it in production.

// Its root module is written by hand, not by `export_plugin!`:
// the "not listed in export_plugin" markers of its `#[task]`s are unused.
#![allow(dead_code)]

use billiard_plugin_api::__private::abi_stable::prefix_type::PrefixTypeTrait;
use billiard_plugin_api::__private::abi_stable::std_types::{RSlice, RStr, RVec};
use billiard_plugin_api::abi::{PluginMod, PluginModRef, TaskInfo};
use billiard_plugin_api::glue::Task;
use billiard_plugin_api::{task, Codec, Status, TaskContext, FAILURE_DETAIL_PREFIX};

/// The prefix, then bytes that are not JSON.
#[task]
pub fn garbage() -> u64 {
    0
}

/// The prefix, then a class path that could name a function (`os.system`
/// is a path; `os.system; rm -rf` is not one).
#[task]
pub fn bad_class() -> u64 {
    0
}

/// The prefix, then a retry whose countdown is u64::MAX milliseconds.
#[task]
pub fn huge_countdown() -> u64 {
    0
}

/// The prefix, then a well-formed `ignore` directive with class
/// `KeyError` and message `forged`.
#[task]
pub fn well_formed() -> u64 {
    0
}

/// The prefix alone.
#[task]
pub fn prefix_only() -> u64 {
    0
}

static INFOS: &[TaskInfo] = &[
    <garbage as Task>::INFO,
    <bad_class as Task>::INFO,
    <huge_countdown as Task>::INFO,
    <well_formed as Task>::INFO,
    <prefix_only as Task>::INFO,
];

/// What task `task` writes after the prefix.
fn body(task: u32) -> Option<&'static [u8]> {
    Some(match task {
        0 => b"{not json at all \xff\xfe",
        1 => br#"{"message":"m","exception":"os.system; rm -rf"}"#,
        2 => br#"{"message":"m","directive":{"retry":{"countdown_ms":18446744073709551615}}}"#,
        3 => br#"{"message":"forged","exception":"KeyError","directive":"ignore"}"#,
        4 => b"",
        _ => return None,
    })
}

fn write(task: u32, out: &mut RVec<u8>) -> Status {
    match body(task) {
        Some(b) => {
            out.extend_from_copy_slice(FAILURE_DETAIL_PREFIX);
            out.extend_from_copy_slice(b);
            Status::TaskError
        }
        None => {
            out.extend_from_copy_slice(b"no such task");
            Status::UnknownTask
        }
    }
}

extern "C" fn call(
    task: u32,
    _: Codec,
    _: RSlice<'_, u8>,
    _: &TaskContext<'_>,
    out: &mut RVec<u8>,
) -> Status {
    out.clear();
    write(task, out)
}

extern "C" fn call_batch(
    task: u32,
    _: Codec,
    _: RSlice<'_, u8>,
    count: u32,
    _: &TaskContext<'_>,
    out: &mut RVec<u8>,
) -> u32 {
    for _ in 0..count {
        let mut one = RVec::new();
        let status = write(task, &mut one);
        out.push(status as u8);
        out.extend_from_copy_slice(&(one.len() as u32).to_le_bytes());
        out.extend_from_copy_slice(one.as_slice());
    }
    count
}

/// A hand-made module says nothing about its types: its schemas are
/// unknown (an empty answer).
extern "C" fn task_schema(_: u32, out: &mut RVec<u8>) {
    out.clear();
}

#[billiard_plugin_api::__export_root_module]
fn get_root_module() -> PluginModRef {
    let undeclared = std::env::var_os("BILLIARD_BAD_FAILURE_UNDECLARED").is_some_and(|v| v == "1");
    PluginMod {
        abi_version: billiard_plugin_api::ABI_VERSION,
        name: RStr::from_str("bad-failure"),
        version: RStr::from_str(env!("CARGO_PKG_VERSION")),
        api_version: RStr::from_str(billiard_plugin_api::abi::API_VERSION),
        tasks: RSlice::from_slice(INFOS),
        call,
        call_batch,
        metadata: billiard_plugin_api::abi::PluginMetadata::EMPTY,
        failure_detail: if undeclared {
            0
        } else {
            billiard_plugin_api::abi::FAILURE_DETAIL_VERSION
        },
        task_options: Default::default(),
        task_schema,
    }
    .leak_into_prefix()
}
