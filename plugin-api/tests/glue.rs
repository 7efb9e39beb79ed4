//! Tests of the glue `#[task]` generates and of the `call` / `call_batch`
//! entries `export_plugin!` wires up, driven directly in this process (no
//! `.so` involved): every status kind, both codecs, byte strings, zero-arg
//! tasks, the stop flag and the batch record format.

// The tasks are driven here directly, never listed in an `export_plugin!`:
// the "not listed in export_plugin" markers of its `#[task]`s are unused.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

use billiard_plugin_api::__private::abi_stable::std_types::{RSlice, RVec};
use billiard_plugin_api::abi::TaskInfo;
use billiard_plugin_api::glue::{self, RunFn, Task};
use billiard_plugin_api::{
    codec, serde_bytes, task, Codec, Status, StopReason, Stopped, TaskContext,
};

// ---------------------------------------------------------------- tasks --

/// Adds two numbers.
#[task]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// The answer.
///
/// Second paragraph of the doc.
#[task]
fn answer() -> u64 {
    42
}

/// Does nothing.
#[task]
fn noop() {}

/// The line of the `panic!` in `boom`, for the location check.
const BOOM_PANIC_LINE: u32 = line!() + 4;

#[task]
fn boom(msg: String) -> u64 {
    panic!("boom: {msg}")
}

#[task]
fn boom_any() -> u64 {
    std::panic::panic_any(42u32)
}

#[task]
fn fails(x: u32) -> Result<u32, String> {
    if x > 10 {
        Err(format!("{x} is too big"))
    } else {
        Ok(x * 2)
    }
}

#[derive(Debug)]
struct Custom {
    code: u32,
}

impl fmt::Display for Custom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "custom failure (code {})", self.code)
    }
}

#[task]
fn fails_custom(code: u32) -> Result<(), Custom> {
    Err(Custom { code })
}

/// Reverses a byte string.
#[task]
fn reverse(data: Vec<u8>) -> Vec<u8> {
    data.into_iter().rev().collect()
}

#[task]
fn make_bytes(n: u8, fill: u8) -> Result<Vec<u8>, String> {
    if n == 0 {
        return Err("n must be positive".into());
    }
    Ok(vec![fill; n as usize])
}

/// The context may be any argument; it is not part of the argument tuple.
#[task]
fn tagged(prefix: String, ctx: &TaskContext, n: u32) -> String {
    format!("{prefix}{}-{}-{n}", ctx.job_id(), ctx.attempt())
}

/// `ctx.check()?` style: returns `Err(Stopped)` once asked to stop.
#[task]
fn polite(rounds: u32, ctx: &TaskContext) -> Result<u32, Stopped> {
    for _ in 0..rounds {
        ctx.check()?;
    }
    Ok(rounds)
}

/// `ctx.check()?` into a boxed error.
#[task]
fn polite_boxed(ctx: &TaskContext) -> Result<u32, Box<dyn std::error::Error>> {
    ctx.check()?;
    Ok(1)
}

/// `ctx.checkpoint()` style, from a nested call, in a task returning a
/// plain value.
#[task]
fn checkpointed(rounds: u32, ctx: &TaskContext) -> u32 {
    fn deep(ctx: &TaskContext) {
        ctx.checkpoint();
    }
    for _ in 0..rounds {
        deep(ctx);
    }
    rounds
}

/// A one-argument `Result` alias is a result too.
#[task]
fn io_result(fail: bool) -> std::io::Result<u32> {
    if fail {
        Err(std::io::Error::other("disk on fire"))
    } else {
        Ok(1)
    }
}

/// Catches a panic of its own, then unwinds with a payload that never went
/// through the panic hook.
#[task]
fn resumes() -> u32 {
    let caught = std::panic::catch_unwind(|| panic!("inner, caught by the task"));
    assert!(caught.is_err());
    std::panic::resume_unwind(Box::new("resumed payload"))
}

/// Runs another task's glue, then panics itself.
#[task]
fn nested_then_panics() -> u32 {
    let stop = AtomicU32::new(0);
    let ctx = TaskContext::new(0, 0, &stop);
    let mut out = RVec::new();
    let status = <add as Task>::RUN(Codec::Json, b"[1, 2]", &ctx, &mut out);
    assert_eq!(status, Status::Ok);
    panic!("outer panic after a nested call")
}

/// A result JSON cannot encode (map keys must be strings).
#[task]
fn unencodable() -> BTreeMap<(u8, u8), u8> {
    BTreeMap::from([((1, 2), 3)])
}

/// The stop flag `stops_batch` raises itself, to stop a batch midway.
static BATCH_STOP: AtomicU32 = AtomicU32::new(0);

#[task]
fn stops_batch(i: u32) -> u32 {
    if i == 1 {
        BATCH_STOP.store(StopReason::Cancelled.as_flag(), Ordering::Relaxed);
    }
    i
}

// -------------------------------------------------------------- helpers --

/// The task table `export_plugin!` would build.
const INFOS: &[TaskInfo] = &[
    <add as Task>::INFO,
    <answer as Task>::INFO,
    <tagged as Task>::INFO,
];
const RUNS: &[RunFn] = &[
    <add as Task>::RUN,
    <answer as Task>::RUN,
    <tagged as Task>::RUN,
];

/// Runs one task through its generated `RUN` with a fresh context.
fn run<T: Task>(codec: Codec, args: &[u8]) -> (Status, Vec<u8>) {
    run_with_flag::<T>(codec, args, 0)
}

fn run_with_flag<T: Task>(codec: Codec, args: &[u8], flag: u32) -> (Status, Vec<u8>) {
    let stop = AtomicU32::new(flag);
    let ctx = TaskContext::new(7, 1, &stop);
    let mut out = RVec::new();
    let status = T::RUN(codec, args, &ctx, &mut out);
    (status, out.into_vec())
}

fn json<T: Task>(args: &str) -> (Status, String) {
    let (status, out) = run::<T>(Codec::Json, args.as_bytes());
    (status, String::from_utf8(out).unwrap())
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

fn records(items: &[&[u8]]) -> Vec<u8> {
    let mut buf = Vec::new();
    for item in items {
        codec::push_record(&mut buf, item);
    }
    buf
}

/// Runs `call_batch` and decodes the result records.
fn batch(
    runs: &[RunFn],
    infos: &[TaskInfo],
    task: u32,
    codec: Codec,
    args: &[u8],
    count: u32,
    stop: &AtomicU32,
) -> (u32, Vec<(Status, String)>) {
    let ctx = TaskContext::new(100, 0, stop);
    let mut out = RVec::new();
    let n = glue::call_batch(
        runs,
        infos,
        task,
        codec,
        RSlice::from_slice(args),
        count,
        &ctx,
        &mut out,
    );
    let results = codec::result_records(out.as_slice())
        .map(|r| {
            let (status, bytes) = r.expect("well-formed result records");
            (
                Status::from_u8(status).expect("a known status"),
                text(bytes),
            )
        })
        .collect();
    (n, results)
}

// ---------------------------------------------------------------- infos --

#[test]
fn task_info_describes_the_function() {
    let info = <add as Task>::INFO;
    assert_eq!(info.name.as_str(), "add");
    assert_eq!(info.doc.as_str(), "Adds two numbers.");
    let args: Vec<_> = info
        .args
        .iter()
        .map(|a| (a.name.as_str(), a.ty.as_str()))
        .collect();
    assert_eq!(args, [("a", "i64"), ("b", "i64")]);
    assert_eq!(info.ret.as_str(), "i64");
    assert!(!info.takes_context);

    let info = <answer as Task>::INFO;
    assert_eq!(
        info.doc.as_str(),
        "The answer.\n\nSecond paragraph of the doc."
    );
    assert!(info.args.is_empty());

    assert_eq!(<noop as Task>::INFO.ret.as_str(), "()");
    assert_eq!(<boom as Task>::INFO.doc.as_str(), "");
    assert_eq!(<reverse as Task>::INFO.args[0].ty.as_str(), "Vec<u8>");
    assert_eq!(<reverse as Task>::INFO.ret.as_str(), "Vec<u8>");
    assert_eq!(
        <make_bytes as Task>::INFO.ret.as_str(),
        "Result<Vec<u8>, String>"
    );
    assert_eq!(
        <unencodable as Task>::INFO.ret.as_str(),
        "BTreeMap<(u8, u8), u8>"
    );

    let info = <tagged as Task>::INFO;
    assert!(info.takes_context);
    let args: Vec<_> = info.args.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(args, ["prefix", "n"], "the context is not an argument");
    assert_eq!(
        glue::signature(&info),
        "`tagged(prefix: String, n: u32)` (expects 2 arguments)"
    );
    assert_eq!(
        glue::signature(&<boom as Task>::INFO),
        "`boom(msg: String)` (expects 1 argument)"
    );
}

// ------------------------------------------------------------------- ok --

#[test]
fn ok_in_both_codecs() {
    assert_eq!(json::<add>("[2, 3]"), (Status::Ok, "5".into()));
    let args = codec::encode(Codec::Bincode, &(2i64, -3i64)).unwrap();
    let (status, out) = run::<add>(Codec::Bincode, &args);
    assert_eq!(status, Status::Ok);
    assert_eq!(codec::decode::<i64>(Codec::Bincode, &out).unwrap(), -1);

    assert_eq!(json::<fails>("[4]"), (Status::Ok, "8".into()));
    assert_eq!(json::<noop>("[]"), (Status::Ok, "null".into()));
    let (status, out) = run::<noop>(Codec::Bincode, &[]);
    assert_eq!(
        (status, out.len()),
        (Status::Ok, 0),
        "() encodes to nothing"
    );
}

#[test]
fn zero_arg_tasks_take_an_empty_array() {
    assert_eq!(json::<answer>("[]"), (Status::Ok, "42".into()));
    assert_eq!(json::<answer>(" [ ] "), (Status::Ok, "42".into()));
    let (status, out) = run::<answer>(Codec::Bincode, &[]);
    assert_eq!(status, Status::Ok);
    assert_eq!(codec::decode::<u64>(Codec::Bincode, &out).unwrap(), 42);

    let (status, msg) = json::<answer>("[1]");
    assert_eq!(status, Status::BadArgs, "{msg}");
    assert!(msg.contains("`answer()` (expects 0 arguments)"), "{msg}");
    assert!(msg.contains("expected no arguments, got 1"), "{msg}");

    let (status, msg) = json::<answer>("{}");
    assert_eq!(status, Status::BadArgs, "{msg}");
    assert!(msg.contains("answer()"), "{msg}");

    let (status, out) = run::<answer>(Codec::Bincode, &[0]);
    assert_eq!(status, Status::BadArgs);
    assert!(text(&out).contains("expected no arguments, got 1 bytes"));
}

#[test]
fn the_context_carries_job_id_and_attempt() {
    assert_eq!(
        json::<tagged>(r#"["job", 9]"#),
        (Status::Ok, r#""job7-1-9""#.into())
    );
    let args = codec::encode(Codec::Bincode, &("x".to_string(), 3u32)).unwrap();
    let (status, out) = run::<tagged>(Codec::Bincode, &args);
    assert_eq!(status, Status::Ok);
    assert_eq!(
        codec::decode::<String>(Codec::Bincode, &out).unwrap(),
        "x7-1-3"
    );
}

// ------------------------------------------------------------ byte strings --

#[test]
fn vec_u8_travels_as_a_byte_string() {
    let data: Vec<u8> = (0..=255).collect();
    let args = codec::encode(Codec::Bincode, &(serde_bytes::Bytes::new(&data),)).unwrap();
    let (status, out) = run::<reverse>(Codec::Bincode, &args);
    assert_eq!(status, Status::Ok);
    // A byte string: a varint length and the raw bytes, no per-byte cost.
    assert!(out.len() <= data.len() + 3, "{} bytes", out.len());
    let back: serde_bytes::ByteBuf = codec::decode(Codec::Bincode, &out).unwrap();
    let mut expected = data.clone();
    expected.reverse();
    assert_eq!(back.into_vec(), expected);

    // A plain Vec<u8> tuple has the same wire form.
    let (status, out2) = run::<reverse>(
        Codec::Bincode,
        &codec::encode(Codec::Bincode, &(data,)).unwrap(),
    );
    assert_eq!((status, out2), (Status::Ok, out));

    // JSON: an array of numbers in, an array of numbers out.
    assert_eq!(
        json::<reverse>("[[1, 2, 3]]"),
        (Status::Ok, "[3,2,1]".into())
    );
    assert_eq!(json::<reverse>("[[]]"), (Status::Ok, "[]".into()));
    let (status, msg) = json::<reverse>("[[1, 256]]");
    assert_eq!(status, Status::BadArgs, "{msg}");
    assert!(msg.contains("reverse(data: Vec<u8>)"), "{msg}");
}

#[test]
fn result_of_vec_u8_is_a_byte_string_too() {
    let args = codec::encode(Codec::Bincode, &(4u8, 9u8)).unwrap();
    let (status, out) = run::<make_bytes>(Codec::Bincode, &args);
    assert_eq!(status, Status::Ok);
    assert_eq!(out, [4, 9, 9, 9, 9], "length prefix and raw bytes");
    assert_eq!(json::<make_bytes>("[2, 7]"), (Status::Ok, "[7,7]".into()));
    assert_eq!(
        json::<make_bytes>("[0, 7]"),
        (Status::TaskError, "n must be positive".into())
    );
}

// ---------------------------------------------------------------- panic --

#[test]
fn a_panic_is_caught_with_message_and_location() {
    let (status, msg) = json::<boom>(r#"["kaboom"]"#);
    assert_eq!(status, Status::Panic, "{msg}");
    assert!(
        msg.starts_with("task `boom` panicked: boom: kaboom"),
        "{msg}"
    );
    let location = format!("glue.rs:{BOOM_PANIC_LINE}:");
    assert!(msg.contains(" (at ") && msg.contains(&location), "{msg}");

    // The panic state does not leak into the next call on this thread.
    assert_eq!(json::<add>("[1, 1]"), (Status::Ok, "2".into()));
    let (status, msg) = json::<boom>(r#"["again"]"#);
    assert_eq!(status, Status::Panic);
    assert!(msg.contains("boom: again"), "{msg}");
    assert!(!msg.contains("kaboom"), "{msg}");
}

#[test]
fn a_panic_with_a_non_string_payload_is_caught() {
    let (status, msg) = json::<boom_any>("[]");
    assert_eq!(status, Status::Panic, "{msg}");
    assert!(
        msg.starts_with("task `boom_any` panicked: Box<dyn Any>"),
        "{msg}"
    );
    assert!(msg.contains("glue.rs:"), "{msg}");
}

#[test]
fn panics_on_many_threads_keep_their_own_messages() {
    let handles: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let (status, msg) = json::<boom>(&format!(r#"["thread {i}"]"#));
                assert_eq!(status, Status::Panic);
                assert!(msg.contains(&format!("boom: thread {i} (at")), "{msg}");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

// ----------------------------------------------------------- task_error --

#[test]
fn err_becomes_task_error_with_its_display_text() {
    assert_eq!(
        json::<fails>("[11]"),
        (Status::TaskError, "11 is too big".into())
    );
    assert_eq!(
        json::<fails_custom>("[5]"),
        (Status::TaskError, "custom failure (code 5)".into())
    );
    let args = codec::encode(Codec::Bincode, &(12u32,)).unwrap();
    let (status, out) = run::<fails>(Codec::Bincode, &args);
    assert_eq!(
        (status, text(&out)),
        (Status::TaskError, "12 is too big".into())
    );
}

#[test]
fn a_result_that_cannot_be_encoded_is_a_task_error_without_partial_output() {
    let (status, msg) = json::<unencodable>("[]");
    assert_eq!(status, Status::TaskError, "{msg}");
    assert!(
        msg.starts_with("could not encode the result: JSON"),
        "{msg}"
    );
    assert!(!msg.starts_with('{'), "partial output was left: {msg}");
    // bincode can encode it.
    let (status, _) = run::<unencodable>(Codec::Bincode, &[]);
    assert_eq!(status, Status::Ok);
}

// ------------------------------------------------------------- bad_args --

#[test]
fn bad_args_name_the_task_and_the_expected_types() {
    let sig = "`add(a: i64, b: i64)` (expects 2 arguments)";
    let cases = [
        (r#"["x", 2]"#, "invalid type: string \"x\", expected i64"),
        ("[1.5, 2]", "invalid type: floating point"),
        ("[1, ", "EOF"),
        ("not json", "expected ident"),
        ("{\"a\": 1}", "invalid type: map"),
        ("", "EOF"),
    ];
    for (args, detail) in cases {
        let (status, msg) = json::<add>(args);
        assert_eq!(status, Status::BadArgs, "{args}: {msg}");
        assert!(
            msg.starts_with(&format!("bad arguments for task {sig}: JSON: ")),
            "{args}: {msg}"
        );
        assert!(msg.contains(detail), "{args}: {msg}");
    }
    // A wrong count, too many or too few, is said in words.
    for (args, words, detail) in [
        ("[1]", "expects 2 arguments, got 1", "invalid length 1"),
        (
            "[1, 2, 3]",
            "expects 2 arguments, got 3",
            "trailing characters",
        ),
        ("[]", "expects 2 arguments, got 0", "invalid length 0"),
    ] {
        let (status, msg) = json::<add>(args);
        assert_eq!(status, Status::BadArgs, "{args}: {msg}");
        let start = format!("bad arguments for task `add(a: i64, b: i64)`: {words} (JSON: ");
        assert!(msg.starts_with(&start), "{args}: {msg}");
        assert!(msg.contains(detail), "{args}: {msg}");
    }
}

#[test]
fn bincode_bad_args() {
    let sig = "bad arguments for task `add(a: i64, b: i64)` (expects 2 arguments): bincode";
    // Too many arguments: trailing bytes.
    let three = codec::encode(Codec::Bincode, &(1i64, 2i64, 3i64)).unwrap();
    let (status, out) = run::<add>(Codec::Bincode, &three);
    let msg = text(&out);
    assert_eq!(status, Status::BadArgs, "{msg}");
    assert!(msg.starts_with(sig), "{msg}");
    assert!(msg.contains("1 trailing bytes"), "{msg}");
    // Too few: the input ends early.
    let one = codec::encode(Codec::Bincode, &(1i64,)).unwrap();
    let (status, out) = run::<add>(Codec::Bincode, &one);
    assert_eq!(status, Status::BadArgs);
    assert!(text(&out).starts_with(sig), "{}", text(&out));
    // Wrong type: not valid UTF-8 for a String.
    let (status, out) = run::<boom>(Codec::Bincode, &[2, 0xff, 0xfe]);
    assert_eq!(status, Status::BadArgs);
    assert!(text(&out).contains("`boom(msg: String)`"), "{}", text(&out));
}

// ---------------------------------------------------------- unknown_task --

#[test]
fn call_dispatches_by_index_and_reports_unknown_tasks() {
    let stop = AtomicU32::new(0);
    let ctx = TaskContext::new(1, 0, &stop);
    let mut out = RVec::new();
    out.extend_from_slice(b"stale output");
    let status = glue::call(
        RUNS,
        INFOS,
        0,
        Codec::Json,
        RSlice::from_slice(b"[20, 22]"),
        &ctx,
        &mut out,
    );
    assert_eq!(
        (status, text(&out)),
        (Status::Ok, "42".into()),
        "out is cleared first"
    );

    let status = glue::call(
        RUNS,
        INFOS,
        1,
        Codec::Json,
        RSlice::from_slice(b"[]"),
        &ctx,
        &mut out,
    );
    assert_eq!((status, text(&out)), (Status::Ok, "42".into()));

    for task in [3, 99, u32::MAX] {
        let status = glue::call(
            RUNS,
            INFOS,
            task,
            Codec::Json,
            RSlice::from_slice(b"[]"),
            &ctx,
            &mut out,
        );
        assert_eq!(status, Status::UnknownTask);
        assert_eq!(
            text(&out),
            format!("no task with index {task} (the plugin has 3)")
        );
    }
}

// ---------------------------------------------- soft_time_limit / terminated --

#[test]
fn check_style_stops_with_the_reason_of_the_flag() {
    let soft = StopReason::SoftTimeLimit.as_flag();
    let cancel = StopReason::Cancelled.as_flag();

    assert_eq!(
        run_with_flag::<polite>(Codec::Json, b"[3]", 0),
        (Status::Ok, b"3".to_vec())
    );

    let (status, out) = run_with_flag::<polite>(Codec::Json, b"[3]", soft);
    assert_eq!(status, Status::SoftTimeLimit);
    assert_eq!(
        text(&out),
        "task `polite` stopped: soft time limit exceeded"
    );

    let (status, out) = run_with_flag::<polite>(Codec::Json, b"[3]", cancel);
    assert_eq!(status, Status::Terminated);
    assert_eq!(text(&out), "task `polite` stopped: job cancelled");

    let (status, out) = run_with_flag::<polite_boxed>(Codec::Json, b"[]", soft);
    assert_eq!(status, Status::SoftTimeLimit, "{}", text(&out));
    let (status, out) = run_with_flag::<polite_boxed>(Codec::Json, b"[]", cancel);
    assert_eq!(status, Status::Terminated, "{}", text(&out));
    assert_eq!(
        run_with_flag::<polite_boxed>(Codec::Json, b"[]", 0).0,
        Status::Ok
    );
}

#[test]
fn checkpoint_style_stops_from_any_depth() {
    let soft = StopReason::SoftTimeLimit.as_flag();
    let cancel = StopReason::Cancelled.as_flag();

    assert_eq!(
        run_with_flag::<checkpointed>(Codec::Json, b"[5]", 0),
        (Status::Ok, b"5".to_vec())
    );

    let (status, out) = run_with_flag::<checkpointed>(Codec::Json, b"[5]", soft);
    assert_eq!(status, Status::SoftTimeLimit);
    assert_eq!(
        text(&out),
        "task `checkpointed` stopped: soft time limit exceeded"
    );

    let (status, out) = run_with_flag::<checkpointed>(Codec::Json, b"[5]", cancel);
    assert_eq!(status, Status::Terminated);
    assert_eq!(text(&out), "task `checkpointed` stopped: job cancelled");

    // A stop is not a panic: the next panic still reports its own message.
    let (status, msg) = json::<boom>(r#"["after stop"]"#);
    assert_eq!(status, Status::Panic);
    assert!(msg.contains("boom: after stop"), "{msg}");
}

#[test]
fn a_task_that_ignores_the_flag_keeps_its_value() {
    let soft = StopReason::SoftTimeLimit.as_flag();
    assert_eq!(
        run_with_flag::<add>(Codec::Json, b"[1, 2]", soft),
        (Status::Ok, b"3".to_vec())
    );
    // A stray flag value means nothing.
    assert_eq!(
        run_with_flag::<polite>(Codec::Json, b"[1]", 77),
        (Status::Ok, b"1".to_vec())
    );
}

// ---------------------------------------------------------------- batch --

#[test]
fn batch_runs_every_record_in_order_with_mixed_outcomes() {
    let stop = AtomicU32::new(0);
    let args = records(&[b"[1, 2]", b"[3, 4]", br#"["x"]"#, b"[5, 6]", b""]);
    let (n, results) = batch(RUNS, INFOS, 0, Codec::Json, &args, 5, &stop);
    assert_eq!(n, 5);
    let statuses: Vec<_> = results.iter().map(|r| r.0).collect();
    assert_eq!(
        statuses,
        [
            Status::Ok,
            Status::Ok,
            Status::BadArgs,
            Status::Ok,
            Status::BadArgs
        ]
    );
    assert_eq!(results[0].1, "3");
    assert_eq!(results[1].1, "7");
    assert!(
        results[2].1.contains("add(a: i64, b: i64)"),
        "{}",
        results[2].1
    );
    assert_eq!(results[3].1, "11");
}

#[test]
fn batch_items_get_consecutive_job_ids() {
    let stop = AtomicU32::new(0);
    let args = records(&[br#"["a", 0]"#, br#"["b", 1]"#, br#"["c", 2]"#]);
    let (n, results) = batch(RUNS, INFOS, 2, Codec::Json, &args, 3, &stop);
    assert_eq!(n, 3);
    let values: Vec<_> = results.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(values, [r#""a100-0-0""#, r#""b101-0-1""#, r#""c102-0-2""#]);
}

#[test]
fn batch_with_panics_errors_and_bincode() {
    let infos = [<boom as Task>::INFO, <fails as Task>::INFO];
    let runs: [RunFn; 2] = [<boom as Task>::RUN, <fails as Task>::RUN];
    let stop = AtomicU32::new(0);

    let items: Vec<Vec<u8>> = [1u32, 20, 3]
        .iter()
        .map(|x| codec::encode(Codec::Bincode, &(*x,)).unwrap())
        .collect();
    let refs: Vec<&[u8]> = items.iter().map(Vec::as_slice).collect();
    let (n, results) = batch(&runs, &infos, 1, Codec::Bincode, &records(&refs), 3, &stop);
    assert_eq!(n, 3);
    assert_eq!(results[0].0, Status::Ok);
    assert_eq!(results[1], (Status::TaskError, "20 is too big".into()));
    assert_eq!(results[2].0, Status::Ok);

    let args = records(&[br#"["one"]"#, br#"["two"]"#]);
    let (n, results) = batch(&runs, &infos, 0, Codec::Json, &args, 2, &stop);
    assert_eq!(n, 2);
    assert_eq!(results[0].0, Status::Panic);
    assert!(results[0].1.contains("boom: one (at"), "{}", results[0].1);
    assert_eq!(results[1].0, Status::Panic);
    assert!(results[1].1.contains("boom: two (at"), "{}", results[1].1);
}

#[test]
fn batch_appends_to_the_output_buffer() {
    let stop = AtomicU32::new(0);
    let ctx = TaskContext::new(0, 0, &stop);
    let mut out = RVec::new();
    out.extend_from_slice(b"keep");
    let args = records(&[b"[1, 1]"]);
    let n = glue::call_batch(
        RUNS,
        INFOS,
        0,
        Codec::Json,
        RSlice::from_slice(&args),
        1,
        &ctx,
        &mut out,
    );
    assert_eq!(n, 1);
    assert_eq!(out.as_slice(), b"keep\x00\x01\x00\x00\x002");
}

#[test]
fn batch_with_an_unknown_task_reports_every_item() {
    let stop = AtomicU32::new(0);
    let args = records(&[b"[]", b"[]"]);
    let (n, results) = batch(RUNS, INFOS, 9, Codec::Json, &args, 2, &stop);
    assert_eq!(n, 2);
    for (status, msg) in results {
        assert_eq!(status, Status::UnknownTask);
        assert_eq!(msg, "no task with index 9 (the plugin has 3)");
    }
}

#[test]
fn batch_stops_before_the_remaining_items_once_the_flag_is_raised() {
    let infos = [<stops_batch as Task>::INFO];
    let runs: [RunFn; 1] = [<stops_batch as Task>::RUN];
    let args = records(&[b"[0]", b"[1]", b"[2]", b"[3]"]);
    let (n, results) = batch(&runs, &infos, 0, Codec::Json, &args, 4, &BATCH_STOP);
    assert_eq!(n, 4, "every item gets a record");
    assert_eq!(results[0], (Status::Ok, "0".into()));
    // The item that raised the flag finished anyway.
    assert_eq!(results[1], (Status::Ok, "1".into()));
    for r in &results[2..] {
        assert_eq!(
            *r,
            (
                Status::Terminated,
                "not started: the batch was stopped".into()
            )
        );
    }
}

#[test]
fn batch_with_the_flag_already_raised_starts_nothing() {
    let stop = AtomicU32::new(StopReason::SoftTimeLimit.as_flag());
    let args = records(&[b"[1, 2]", b"[3, 4]"]);
    let (n, results) = batch(RUNS, INFOS, 0, Codec::Json, &args, 2, &stop);
    assert_eq!(n, 2);
    for r in results {
        assert_eq!(
            r,
            (
                Status::SoftTimeLimit,
                "not started: the batch was stopped".into()
            )
        );
    }
}

#[test]
fn batch_with_truncated_or_short_input_reports_what_it_ran() {
    let stop = AtomicU32::new(0);
    let full = records(&[b"[1, 2]", b"[3, 4]", b"[5, 6]"]);

    // Cut inside the third record: two results, the host reports the rest.
    let cut = &full[..full.len() - 2];
    let (n, results) = batch(RUNS, INFOS, 0, Codec::Json, cut, 3, &stop);
    assert_eq!(n, 2);
    assert_eq!(results.len(), 2);
    assert_eq!(results[1], (Status::Ok, "7".into()));

    // Cut inside a length prefix.
    let (n, _) = batch(RUNS, INFOS, 0, Codec::Json, &full[..2], 3, &stop);
    assert_eq!(n, 0);

    // Fewer records than `count`.
    let (n, results) = batch(RUNS, INFOS, 0, Codec::Json, &full, 5, &stop);
    assert_eq!((n, results.len()), (3, 3));

    // More records than `count`: only `count` run.
    let (n, results) = batch(RUNS, INFOS, 0, Codec::Json, &full, 2, &stop);
    assert_eq!((n, results.len()), (2, 2));

    // Nothing at all.
    let (n, results) = batch(RUNS, INFOS, 0, Codec::Json, &[], 0, &stop);
    assert_eq!((n, results.len()), (0, 0));
}

// ------------------------------------------------------------ edge cases --

#[test]
fn a_one_argument_result_alias_is_a_result() {
    assert_eq!(
        <io_result as Task>::INFO.ret.as_str(),
        "std::io::Result<u32>"
    );
    assert_eq!(json::<io_result>("[false]"), (Status::Ok, "1".into()));
    assert_eq!(
        json::<io_result>("[true]"),
        (Status::TaskError, "disk on fire".into())
    );
}

#[test]
fn resume_unwind_reports_its_own_payload_not_a_stale_message() {
    let (status, msg) = json::<resumes>("[]");
    assert_eq!(status, Status::Panic, "{msg}");
    assert_eq!(msg, "task `resumes` panicked: resumed payload");
}

#[test]
fn a_panic_after_a_nested_task_call_is_still_recorded() {
    let (status, msg) = json::<nested_then_panics>("[]");
    assert_eq!(status, Status::Panic, "{msg}");
    assert!(
        msg.starts_with("task `nested_then_panics` panicked: outer panic after a nested call (at "),
        "{msg}"
    );
}
