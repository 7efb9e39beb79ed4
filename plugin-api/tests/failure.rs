//! `Failure` through the glue `#[task]` generates, in this process: the
//! detail encoding only for a host that asks for it, the exact `Display`
//! text for every other error type, `E: Into<Failure>` picked up, a stop
//! still winning, the batch path, and the registration options' JSON.

// The tasks are driven here directly, never listed in an `export_plugin!`:
// their "not listed in export_plugin" markers are unused on purpose.
#![allow(dead_code)]

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use billiard_plugin_api::__private::abi_stable::std_types::RVec;
use billiard_plugin_api::glue::Task;
use billiard_plugin_api::{
    codec, noop_host_services, task, Codec, Failure, RaiseAs, Status, StopReason, TaskContext,
    FAILURE_DETAIL_PREFIX, HOST_FLAG_FAILURE_DETAIL,
};

#[task]
fn classed(n: u32) -> Result<u32, Failure> {
    if n == 0 {
        return Err(Failure::new("zero").raise_as("ValueError"));
    }
    Ok(n)
}

#[task]
fn plain_failure() -> Result<u32, Failure> {
    Err(Failure::new("just text"))
}

#[task]
fn retried() -> Result<u32, Failure> {
    Err(Failure::retry()
        .reason("later")
        .countdown(Duration::from_millis(250))
        .max_retries(4))
}

/// An app's own error that knows its Python class.
#[derive(Debug)]
enum AppError {
    Missing(String),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Missing(k) => write!(f, "no key {k}"),
        }
    }
}

impl From<AppError> for Failure {
    fn from(e: AppError) -> Failure {
        Failure::new(&e).raise_as("KeyError")
    }
}

#[task]
fn app_error(key: String) -> Result<u32, AppError> {
    Err(AppError::Missing(key))
}

#[task]
fn parsed(text: String) -> Result<i64, Failure> {
    text.parse::<i64>().raise_as("ValueError")
}

#[task]
fn stopped(ctx: &TaskContext) -> Result<u32, Failure> {
    ctx.check()?;
    Err(Failure::retry())
}

#[task(
    rate_limit = "100/m",
    max_retries = 3,
    autoretry_for = "task_error, panic, task_error"
)]
fn with_options() -> u32 {
    1
}

#[task(retry_backoff = true, retry_jitter = false)]
fn backoff_true() -> u32 {
    1
}

/// Runs `T` once with `flags` raised and the stop flag at `stop`.
fn run<T: Task>(args: &str, flags: u32, stop: u32) -> (Status, Vec<u8>) {
    let stop = AtomicU32::new(stop);
    let flags = AtomicU32::new(flags);
    let ctx = TaskContext::with_host(1, 0, &stop, &flags, noop_host_services(), std::ptr::null());
    let mut out = RVec::new();
    let status = T::RUN(Codec::Json, args.as_bytes(), &ctx, &mut out);
    (status, out.into_vec())
}

/// The JSON after the prefix.
fn detail(out: &[u8]) -> serde_json::Value {
    let json = out
        .strip_prefix(FAILURE_DETAIL_PREFIX)
        .unwrap_or_else(|| panic!("no prefix: {:?}", String::from_utf8_lossy(out)));
    serde_json::from_slice(json).expect("JSON")
}

#[test]
fn the_detail_only_for_a_host_that_reads_it() {
    let (status, out) = run::<classed>("[0]", 0, 0);
    assert_eq!((status, out.as_slice()), (Status::TaskError, &b"zero"[..]));
    let (status, out) = run::<classed>("[0]", HOST_FLAG_FAILURE_DETAIL, 0);
    assert_eq!(status, Status::TaskError);
    assert_eq!(
        detail(&out),
        serde_json::json!({"message": "zero", "exception": "ValueError"})
    );
    let (status, out) = run::<classed>("[3]", HOST_FLAG_FAILURE_DETAIL, 0);
    assert_eq!((status, out.as_slice()), (Status::Ok, &b"3"[..]));
    // Nothing beyond the message: text, flag or not.
    let (_, out) = run::<plain_failure>("[]", HOST_FLAG_FAILURE_DETAIL, 0);
    assert_eq!(out, b"just text");
    let (_, out) = run::<retried>("[]", HOST_FLAG_FAILURE_DETAIL, 0);
    assert_eq!(
        detail(&out),
        serde_json::json!({"message": "later",
            "directive": {"retry": {"countdown_ms": 250, "max_retries": 4}}})
    );
}

#[test]
fn errors_that_convert_into_a_failure_carry_their_class() {
    let (status, out) = run::<app_error>(r#"["k"]"#, HOST_FLAG_FAILURE_DETAIL, 0);
    assert_eq!(status, Status::TaskError);
    assert_eq!(
        detail(&out),
        serde_json::json!({"message": "no key k", "exception": "KeyError"})
    );
    // Without the flag: exactly its Display text, as before Failure.
    let (_, out) = run::<app_error>(r#"["k"]"#, 0, 0);
    assert_eq!(out, b"no key k");
    let (_, out) = run::<parsed>(r#"["x"]"#, HOST_FLAG_FAILURE_DETAIL, 0);
    assert_eq!(detail(&out)["exception"], "ValueError");
    assert_eq!(detail(&out)["message"], "invalid digit found in string");
}

#[test]
fn a_stop_wins_over_what_the_task_asks() {
    let (status, out) = run::<stopped>(
        "[]",
        HOST_FLAG_FAILURE_DETAIL,
        StopReason::SoftTimeLimit.as_flag(),
    );
    assert_eq!(
        status,
        Status::SoftTimeLimit,
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(!out.starts_with(FAILURE_DETAIL_PREFIX));
}

#[test]
fn the_batch_path_writes_the_detail_per_item() {
    let mut args = Vec::new();
    for n in [0u32, 5, 0] {
        codec::push_record(&mut args, format!("[{n}]").as_bytes());
    }
    let stop = AtomicU32::new(0);
    let flags = AtomicU32::new(HOST_FLAG_FAILURE_DETAIL);
    let ctx = TaskContext::with_host(1, 0, &stop, &flags, noop_host_services(), std::ptr::null());
    let mut out = RVec::new();
    let run_batch = <classed as Task>::RUN_BATCH.expect("a batch run");
    assert_eq!(run_batch(Codec::Json, &args, 3, &ctx, &mut out), 3);
    let items: Vec<(u8, Vec<u8>)> = codec::result_records(out.as_slice())
        .map(|r| {
            let (s, b) = r.expect("a record");
            (s, b.to_vec())
        })
        .collect();
    assert_eq!(items[1], (Status::Ok as u8, b"5".to_vec()));
    for i in [0, 2] {
        assert_eq!(items[i].0, Status::TaskError as u8);
        assert_eq!(detail(&items[i].1)["exception"], "ValueError");
    }
}

#[test]
fn registration_options_are_a_json_object() {
    assert_eq!(<classed as Task>::OPTIONS, "{}");
    let v: serde_json::Value = serde_json::from_str(<with_options as Task>::OPTIONS).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"rate_limit": "100/m", "max_retries": 3,
            "autoretry_for": ["task_error", "panic"]})
    );
    let v: serde_json::Value = serde_json::from_str(<backoff_true as Task>::OPTIONS).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"retry_backoff": "1s", "retry_jitter": false})
    );
}
