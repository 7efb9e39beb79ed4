//! The plugin library API in this process: `Plugin::load` on good and bad
//! files, several plugins side by side, and in-process calls (`call`,
//! `call_json`, and the raw `call_raw` / `call_batch_raw` entries) of the
//! example plugins' tasks, checking values and error kinds.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicU32;

use abi_stable::std_types::RVec;
use billiard_host::{ErrorKind, Plugin, PluginLoadError, TaskError};
use billiard_plugin_api::{codec, Codec, Status, StopReason, TaskContext};
use common::{fnv1a, plugin};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

fn load(name: &str) -> Plugin {
    Plugin::load(plugin(name)).unwrap_or_else(|e| panic!("{e}"))
}

/// Asserts a call failed with `kind` and a message containing `needle`.
#[track_caller]
fn assert_fails<T: std::fmt::Debug>(r: Result<T, TaskError>, kind: ErrorKind, needle: &str) {
    match r {
        Ok(v) => panic!("expected {kind}, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.kind, kind, "{e}");
            assert!(e.message.contains(needle), "expected {needle:?} in: {e}");
        }
    }
}

// ------------------------------------------------------------- loading --

/// Loads `file` expecting a refusal whose reason contains every `reason`.
#[track_caller]
fn assert_load_fails(file: &Path, reasons: &[&str]) -> PluginLoadError {
    let err = Plugin::load(file).expect_err("the load should fail");
    assert_eq!(err.path, file, "the error names the file as given");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("cannot load plugin {}: ", file.display())),
        "{text}"
    );
    for reason in reasons {
        assert!(
            err.reason.contains(reason),
            "expected {reason:?} in: {text}"
        );
    }
    let task_error = TaskError::from(err.clone());
    assert_eq!(task_error.kind, ErrorKind::PluginLoad);
    assert_eq!(task_error.message, text);
    err
}

#[test]
fn load_refuses_what_is_not_a_loadable_plugin() {
    let missing = plugin("math").with_file_name("libno_such_plugin.so");
    assert_load_fails(&missing, &["no such file"]);
    assert_load_fails(&common::artifact_dir(), &["it is a directory"]);
    assert_load_fails(
        &common::workspace_root().join("Cargo.toml"),
        &["not an ELF shared object"],
    );
    assert_load_fails(&common::bin(), &["the dynamic loader refused it"]);
    assert_load_fails(
        &plugin("abi-layout-mismatch"),
        &[
            "built against an incompatible billiard-plugin-api",
            "layout",
        ],
    );
    assert_load_fails(
        &plugin("abi-version-mismatch"),
        &[
            "ABI version 999",
            &format!(
                "this host speaks version {}",
                billiard_plugin_api::ABI_VERSION
            ),
        ],
    );
    assert_load_fails(&plugin("init-panic"), &["module initializer panicked"]);
}

#[test]
fn load_refuses_a_system_library() {
    let Some(libm) = common::system_library() else {
        eprintln!("skipped: no system libm.so.6 found through ldconfig -p or the usual paths");
        return;
    };
    assert_load_fails(&libm, &["not a billiard plugin"]);
}

#[test]
fn load_refuses_an_empty_file_and_a_truncated_elf() {
    let dir = std::env::temp_dir().join(format!("billiard-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.so");
    std::fs::write(&empty, b"").unwrap();
    assert_load_fails(&empty, &["not an ELF shared object"]);
    let truncated = dir.join("truncated.so");
    let bytes = std::fs::read(plugin("math")).unwrap();
    std::fs::write(&truncated, &bytes[..4096]).unwrap();
    // The loader would map segments past the end of the file: SIGBUS.
    assert_load_fails(
        &truncated,
        &[
            "the file is truncated or corrupt",
            "a loadable segment reaches byte",
        ],
    );
    // Cut inside the program header table.
    std::fs::write(&truncated, &bytes[..100]).unwrap();
    assert_load_fails(&truncated, &["its program header table reaches byte"]);
    // Cut inside the ELF header.
    std::fs::write(&truncated, &bytes[..40]).unwrap();
    assert_load_fails(&truncated, &["shorter than an ELF header"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_failed_load_does_not_spoil_later_loads() {
    assert!(Plugin::load(plugin("abi-version-mismatch")).is_err());
    assert!(Plugin::load(plugin("abi-layout-mismatch")).is_err());
    let math = load("math");
    assert_eq!(math.call::<_, u64>("square", (5u64,)), Ok(25));
}

#[test]
fn two_plugins_in_one_process_stay_distinct() {
    // abi_stable's `RootModule::load_from_file` would cache the first module
    // of the root-module type and hand it out for the second file too.
    let math = load("math");
    let bytes = load("bytes");
    assert_eq!(math.name(), "math");
    assert_eq!(bytes.name(), "bytes");
    assert_ne!(math.info().tasks, bytes.info().tasks);
    assert_eq!(math.call::<_, u64>("square", (7u64,)), Ok(49));
    assert_eq!(bytes.call::<_, u64>("len", (vec![1u8, 2, 3],)), Ok(3));
    assert_fails(
        bytes.call::<_, u64>("square", (7u64,)),
        ErrorKind::UnknownTask,
        "plugin `bytes` has no task `square`",
    );
    // Loading again gives the same plugin, still distinct from the other.
    let math2 = load("math");
    assert_eq!(math2.info(), math.info());
    assert_eq!(math2.call_json("fib", "[10]"), Ok(json!(55)));
    let faults = load("faults");
    assert_eq!(faults.name(), "faults");
    assert_eq!(faults.call::<_, u64>("square", (9u64,)), Ok(81));
}

#[test]
fn info_matches_the_plugin() {
    let math = load("math");
    let info = math.info();
    assert_eq!(info.path, plugin("math"));
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.abi_version, billiard_plugin_api::ABI_VERSION);
    assert_eq!(info.api_version, billiard_plugin_api::abi::API_VERSION);
    assert_eq!(info.task_index("fib"), Some(3));
    assert_eq!(info.task_index("nope"), None);
    assert_eq!(
        info.tasks[1].signature(),
        "add(a: i64, b: i64) -> Result<i64, String>"
    );
    assert_eq!(math.task_index("square"), Ok(0));
    assert_fails(
        math.task_index("nope"),
        ErrorKind::UnknownTask,
        "(it has: square, add, sum, fib, transform, version)",
    );
}

// ---------------------------------------------------------------- math --

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Shape {
    Circle { radius: f64 },
    Rect { w: f64, h: f64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    id: u32,
    name: String,
    shape: Shape,
    note: Option<String>,
    tags: BTreeMap<String, i32>,
}

#[test]
fn math_typed_calls() {
    let math = load("math");
    assert_eq!(math.call::<_, u64>("square", (12u64,)), Ok(144));
    assert_eq!(
        math.call::<_, u64>("square", (u64::MAX,)),
        Ok(1),
        "wrapping"
    );
    assert_eq!(math.call::<_, i64>("add", (2i64, -5i64)), Ok(-3));
    assert_fails(
        math.call::<_, i64>("add", (i64::MAX, 1i64)),
        ErrorKind::TaskError,
        "9223372036854775807 + 1 overflows i64",
    );
    assert_eq!(
        math.call::<_, f64>("sum", (vec![0.5f64, 1.5, 2.0],)),
        Ok(4.0)
    );
    assert_eq!(math.call::<_, f64>("sum", (Vec::<f64>::new(),)), Ok(0.0));
    let fibs: Vec<u64> = (0..10u32)
        .map(|n| math.call("fib", (n,)).unwrap())
        .collect();
    assert_eq!(fibs, [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]);
    assert_eq!(
        math.call::<_, u64>("fib", (93u32,)),
        Ok(12200160415121876738)
    );
    assert_fails(
        math.call::<_, u64>("fib", (94u32,)),
        ErrorKind::TaskError,
        "fib(94) does not fit in u64",
    );
    assert_eq!(
        math.call::<_, String>("version", ()),
        Ok(env!("CARGO_PKG_VERSION").to_string())
    );

    let item = Item {
        id: 21,
        name: "box".into(),
        shape: Shape::Rect { w: 2.0, h: 3.0 },
        note: None,
        tags: BTreeMap::from([("x".to_string(), 1)]),
    };
    let out: Item = math.call("transform", (item, 2.0f64)).unwrap();
    assert_eq!(
        out,
        Item {
            id: 42,
            name: "BOX".into(),
            shape: Shape::Rect { w: 4.0, h: 6.0 },
            note: None,
            tags: BTreeMap::from([("area".to_string(), 24), ("x".to_string(), 1)]),
        }
    );
}

#[test]
fn math_json_calls() {
    let math = load("math");
    assert_eq!(math.call_json("square", "[3]"), Ok(json!(9)));
    assert_eq!(math.call_json("add", "[40, 2]"), Ok(json!(42)));
    assert_eq!(math.call_json("sum", "[[1, 2.5]]"), Ok(json!(3.5)));
    assert_eq!(math.call_json("fib", "[20]"), Ok(json!(6765)));
    assert_eq!(
        math.call_json("version", "[]"),
        Ok(json!(env!("CARGO_PKG_VERSION")))
    );
    let out = math
        .call_json(
            "transform",
            r#"[{"id": 1, "name": "disc", "shape": {"circle": {"radius": 1.0}},
                 "note": "n", "tags": {}}, 3]"#,
        )
        .unwrap();
    assert_eq!(
        out,
        json!({"id": 2, "name": "DISC", "shape": {"circle": {"radius": 3.0}},
               "note": "n", "tags": {"area": 28}})
    );
    assert_fails(
        math.call_json("add", &format!("[{}, 1]", i64::MAX)),
        ErrorKind::TaskError,
        "overflows i64",
    );
}

#[test]
fn math_bad_args_and_unknown_tasks() {
    let math = load("math");
    let add_sig = "bad arguments for task `add(a: i64, b: i64)`";
    assert_fails(
        math.call_json("add", "[1]"),
        ErrorKind::BadArgs,
        "bad arguments for task `add(a: i64, b: i64)`: expects 2 arguments, got 1",
    );
    assert_fails(
        math.call_json("add", "[1]"),
        ErrorKind::BadArgs,
        "invalid length 1",
    );
    assert_fails(
        math.call_json("add", r#"[1, "2"]"#),
        ErrorKind::BadArgs,
        "invalid type: string \"2\", expected i64",
    );
    assert_fails(
        math.call_json("add", "[1, 2, 3]"),
        ErrorKind::BadArgs,
        "bad arguments for task `add(a: i64, b: i64)`: expects 2 arguments, got 3",
    );
    assert_fails(math.call_json("add", "[1, 2"), ErrorKind::BadArgs, "EOF");
    assert_fails(math.call_json("add", "{}"), ErrorKind::BadArgs, add_sig);
    assert_fails(
        math.call_json("version", "[1]"),
        ErrorKind::BadArgs,
        "`version()` (expects 0 arguments)",
    );
    assert_fails(
        math.call_json("transform", r#"[{"id": 1}, 2]"#),
        ErrorKind::BadArgs,
        "`transform(item: Item, factor: f64)`",
    );
    assert_fails(
        math.call_json("transform", r#"[{"id": 1}, 2]"#),
        ErrorKind::BadArgs,
        "missing field",
    );

    // Typed calls with the wrong types say what the task takes and what
    // it was given, by type name (issue 28, item 6).
    assert_fails(
        math.call::<_, i64>("add", (1i64,)),
        ErrorKind::BadArgs,
        "`add(a: i64, b: i64) -> Result<i64, String>` takes arguments `(i64, i64)`, was given `(i64,)`",
    );
    assert_fails(
        math.call::<_, i64>("add", (1i64, 2i64, 3i64)),
        ErrorKind::BadArgs,
        "was given `(i64, i64, i64)`: more or larger values than it takes",
    );
    assert_fails(
        math.call::<_, u64>("square", ("x",)),
        ErrorKind::BadArgs,
        "`square(x: u64) -> u64` takes arguments `(u64,)`, was given `(&str,)`",
    );
    assert_fails(
        math.call::<_, String>("version", (1u8,)),
        ErrorKind::BadArgs,
        "expected no arguments",
    );
    // A result of another type than asked for: the caller's mistake
    // (issue 28, item 6), not the task's.
    assert_fails(
        math.call::<_, String>("square", (3u64,)),
        ErrorKind::BadArgs,
        "the result was asked for as `alloc::string::String`, but `square` returns `u64`",
    );

    assert_fails(
        math.call_json("cube", "[3]"),
        ErrorKind::UnknownTask,
        "plugin `math` has no task `cube` (it has: square, add, sum, fib, transform, version)",
    );
    assert_fails(
        math.call::<_, u64>("", (3u64,)),
        ErrorKind::UnknownTask,
        "no task ``",
    );
}

// --------------------------------------------------------------- bytes --

#[test]
fn bytes_typed_calls() {
    let bytes = load("bytes");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(bytes.call::<_, u64>("len", (data.clone(),)), Ok(100_000));
    assert_eq!(bytes.call::<_, u64>("len", (Vec::<u8>::new(),)), Ok(0));
    assert_eq!(
        bytes.call::<_, u64>("checksum", (data.clone(),)),
        Ok(fnv1a(&data))
    );
    // Known FNV-1a 64 vectors.
    assert_eq!(
        bytes.call::<_, u64>("checksum", (Vec::<u8>::new(),)),
        Ok(0xcbf29ce484222325)
    );
    assert_eq!(
        bytes.call::<_, u64>("checksum", (b"a".to_vec(),)),
        Ok(0xaf63dc4c8601ec8c)
    );
    let echoed: serde_bytes::ByteBuf = bytes
        .call("echo", (serde_bytes::Bytes::new(&data),))
        .unwrap();
    assert_eq!(echoed.into_vec(), data);
    let echoed: Vec<u8> = bytes.call("echo", (data.clone(),)).unwrap();
    assert_eq!(echoed, data);
    assert_eq!(
        bytes.call::<_, Vec<u8>>("make", (3u64, 0xabu8)),
        Ok(vec![0xab; 3])
    );
    assert_eq!(bytes.call::<_, Vec<u8>>("make", (0u64, 1u8)), Ok(vec![]));
}

#[test]
fn bytes_json_calls() {
    let bytes = load("bytes");
    assert_eq!(bytes.call_json("len", "[[1, 2, 3]]"), Ok(json!(3)));
    assert_eq!(
        bytes.call_json("checksum", "[[97]]"),
        Ok(json!(0xaf63dc4c8601ec8c_u64))
    );
    assert_eq!(
        bytes.call_json("echo", "[[0, 255, 7]]"),
        Ok(json!([0, 255, 7]))
    );
    assert_eq!(bytes.call_json("make", "[2, 9]"), Ok(json!([9, 9])));
    assert_fails(
        bytes.call_json("echo", "[[256]]"),
        ErrorKind::BadArgs,
        "`echo(data: Vec<u8>)`",
    );
    // serde_bytes also takes a string as a byte string.
    assert_eq!(
        bytes.call_json("echo", r#"["abc"]"#),
        Ok(json!([97, 98, 99]))
    );
    assert_fails(
        bytes.call_json("echo", "[{}]"),
        ErrorKind::BadArgs,
        "`echo(data: Vec<u8>)`",
    );
    assert_fails(
        bytes.call_json("make", "[2, 256]"),
        ErrorKind::BadArgs,
        "`make(n: u64, fill: u8)`",
    );
}

#[test]
fn bytes_travel_compactly_through_the_abi() {
    let bytes = load("bytes");
    let data = vec![5u8; 10_000];
    let args = codec::encode(Codec::Bincode, &(serde_bytes::Bytes::new(&data),)).unwrap();
    assert!(args.len() <= data.len() + 3);
    let stop = AtomicU32::new(0);
    let ctx = TaskContext::new(0, 0, &stop);
    let mut out = RVec::new();
    let echo = bytes.task_index("echo").unwrap();
    assert_eq!(
        bytes.call_raw(echo, Codec::Bincode, &args, &ctx, &mut out),
        Status::Ok
    );
    assert_eq!(out.as_slice(), args.as_slice(), "same wire form back");
}

// -------------------------------------------------------------- faults --

#[test]
fn faults_panic_is_caught_with_message_and_location() {
    let faults = load("faults");
    let err = faults.call::<_, u64>("panic", ("oh no",)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Panic);
    assert!(
        err.message.starts_with("task `panic` panicked: oh no (at "),
        "{err}"
    );
    assert!(err.message.contains("plugins/faults/src/lib.rs:"), "{err}");
    // The plugin (and this process) carry on.
    assert_eq!(faults.call_json("square", "[4]"), Ok(json!(16)));
    let err = faults.call_json("panic", r#"["again"]"#).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Panic);
    assert!(err.message.contains("again"), "{err}");
}

#[test]
fn faults_fail_is_a_task_error() {
    let faults = load("faults");
    assert_eq!(
        faults.call::<_, u64>("fail", ("nope",)),
        Err(TaskError::new(ErrorKind::TaskError, "nope"))
    );
    assert_eq!(
        faults.call_json("fail", r#"["it broke"]"#),
        Err(TaskError::new(ErrorKind::TaskError, "it broke"))
    );
}

#[test]
fn faults_timing_tasks_return_their_argument() {
    let faults = load("faults");
    assert_eq!(faults.call::<_, u64>("sleep_ms", (2u64,)), Ok(2));
    assert_eq!(faults.call::<_, u64>("spin_ms", (2u64,)), Ok(2));
    assert_eq!(faults.call::<_, f64>("spin", (0.002f64,)), Ok(0.002));
    assert_eq!(faults.call::<_, f64>("spin", (-1.0f64,)), Ok(-1.0));
    assert_eq!(faults.call_json("sleep_ms", "[1]"), Ok(json!(1)));
}

#[test]
fn faults_cooperative_tasks_finish_when_not_stopped() {
    let faults = load("faults");
    for task in [
        "cooperative_spin",
        "cooperative_spin_result",
        "cooperative_sleep",
    ] {
        assert_eq!(faults.call::<_, u64>(task, (3u64,)), Ok(3), "{task}");
        assert_eq!(faults.call_json(task, "[1]"), Ok(json!(1)), "{task}");
    }
}

/// Calls task `name` of `plugin` through the raw entry with the stop flag
/// already raised for `reason`.
fn call_stopped(plugin: &Plugin, name: &str, args: &str, reason: StopReason) -> (Status, String) {
    let stop = AtomicU32::new(reason.as_flag());
    let ctx = TaskContext::new(5, 0, &stop);
    let mut out = RVec::new();
    let index = plugin.task_index(name).unwrap();
    let status = plugin.call_raw(index, Codec::Json, args.as_bytes(), &ctx, &mut out);
    (status, String::from_utf8(out.into_vec()).unwrap())
}

#[test]
fn faults_cooperative_tasks_stop_when_asked() {
    // With the flag raised before the call, each task stops at its first
    // poll; the long durations are never waited for.
    let faults = load("faults");
    for task in [
        "cooperative_spin",
        "cooperative_spin_result",
        "cooperative_sleep",
    ] {
        let (status, msg) = call_stopped(&faults, task, "[600000]", StopReason::SoftTimeLimit);
        assert_eq!(status, Status::SoftTimeLimit, "{task}: {msg}");
        assert_eq!(
            msg,
            format!("task `{task}` stopped: soft time limit exceeded")
        );
        let (status, msg) = call_stopped(&faults, task, "[600000]", StopReason::Cancelled);
        assert_eq!(status, Status::Terminated, "{task}: {msg}");
        assert_eq!(msg, format!("task `{task}` stopped: job cancelled"));
    }
    // A task that does not poll ignores the flag and returns its value.
    let (status, msg) = call_stopped(&faults, "spin_ms", "[1]", StopReason::SoftTimeLimit);
    assert_eq!((status, msg.as_str()), (Status::Ok, "1"));
}

#[test]
fn faults_leak_log_context_pid_square() {
    let faults = load("faults");
    let first: u64 = faults.call("leak_mb", (1u64,)).unwrap();
    let second: u64 = faults.call("leak_mb", (1u64,)).unwrap();
    assert!(first >= 1, "{first}");
    assert_eq!(second, first + 1, "the total leaked so far");
    assert_eq!(faults.call::<_, u64>("leak_mb", (0u64,)), Ok(second));

    assert_eq!(
        faults.call::<_, u64>("log", ("faults.log from the plugins test",)),
        Ok(32)
    );

    // `Plugin::call` runs with job id 0, attempt 0.
    assert_eq!(faults.call::<_, (u64, u32)>("context_info", ()), Ok((0, 0)));
    assert_eq!(faults.call_json("context_info", "[]"), Ok(json!([0, 0])));
    let stop = AtomicU32::new(0);
    let ctx = TaskContext::new(1234, 2, &stop);
    let mut out = RVec::new();
    let index = faults.task_index("context_info").unwrap();
    assert_eq!(
        faults.call_raw(index, Codec::Json, b"[]", &ctx, &mut out),
        Status::Ok
    );
    assert_eq!(out.as_slice(), b"[1234,2]");

    assert_eq!(faults.call::<_, u32>("pid", ()), Ok(std::process::id()));
    assert_eq!(faults.call::<_, u64>("square", (11u64,)), Ok(121));
    assert_eq!(
        faults.call::<_, u64>("square", (1u64 << 32,)),
        Ok(0),
        "wrapping"
    );
}

// --------------------------------------------------------- raw entries --

#[test]
fn call_raw_with_an_out_of_range_index_is_unknown_task() {
    let math = load("math");
    let stop = AtomicU32::new(0);
    let ctx = TaskContext::new(0, 0, &stop);
    let mut out = RVec::new();
    let status = math.call_raw(6, Codec::Json, b"[]", &ctx, &mut out);
    assert_eq!(status, Status::UnknownTask);
    assert_eq!(out.as_slice(), b"no task with index 6 (the plugin has 6)");
}

/// Runs a JSON batch through the plugin's `call_batch` entry.
fn batch(plugin: &Plugin, task: &str, items: &[&str], stop: &AtomicU32) -> Vec<(Status, Value)> {
    let mut records = Vec::new();
    for item in items {
        codec::push_record(&mut records, item.as_bytes());
    }
    let ctx = TaskContext::new(10, 0, stop);
    let mut out = RVec::new();
    let index = plugin.task_index(task).unwrap();
    let n = plugin.call_batch_raw(
        index,
        Codec::Json,
        &records,
        items.len() as u32,
        &ctx,
        &mut out,
    );
    assert_eq!(n as usize, items.len());
    codec::result_records(out.as_slice())
        .map(|r| {
            let (status, bytes) = r.unwrap();
            let status = Status::from_u8(status).unwrap();
            let value = match status {
                Status::Ok => serde_json::from_slice(bytes).unwrap(),
                _ => Value::String(String::from_utf8(bytes.to_vec()).unwrap()),
            };
            (status, value)
        })
        .collect()
}

#[test]
fn call_batch_through_the_plugin() {
    let math = load("math");
    let stop = AtomicU32::new(0);
    let results = batch(
        &math,
        "add",
        &["[1, 2]", "[1]", &format!("[{}, 1]", i64::MAX), "[5, 5]"],
        &stop,
    );
    assert_eq!(results[0], (Status::Ok, json!(3)));
    assert_eq!(results[1].0, Status::BadArgs);
    assert_eq!(results[2].0, Status::TaskError);
    assert_eq!(results[3], (Status::Ok, json!(10)));

    let faults = load("faults");
    let results = batch(&faults, "context_info", &["[]", "[]", "[]"], &stop);
    let ids: Vec<Value> = results.into_iter().map(|r| r.1).collect();
    assert_eq!(ids, [json!([10, 0]), json!([11, 0]), json!([12, 0])]);

    let results = batch(&faults, "panic", &[r#"["first"]"#, r#"["second"]"#], &stop);
    for (i, (status, msg)) in results.iter().enumerate() {
        assert_eq!(*status, Status::Panic);
        let expected = ["first", "second"][i];
        assert!(msg.as_str().unwrap().contains(expected), "{msg}");
    }

    let stopped = AtomicU32::new(StopReason::Cancelled.as_flag());
    let results = batch(&math, "square", &["[1]", "[2]"], &stopped);
    for r in results {
        assert_eq!(
            r,
            (
                Status::Terminated,
                json!("not started: the batch was stopped")
            )
        );
    }
}
