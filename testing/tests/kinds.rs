//! The harness against `plugins/faults`, whose tasks misbehave on purpose:
//! every error kind asserted in process and in a real pool, readable
//! failure messages, the agreement check, and loading a built `.so` by path.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Duration;

use billiard_testing::{ErrorKind, Harness, Place};
use serde_json::json;

/// The faults plugin, built by the harness (once per test process).
fn faults() -> &'static Harness {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/faults");
    Harness::for_crate(dir, "billiard-plugin-faults")
}

/// The message of the panic `f` raises.
fn panic_message(f: impl FnOnce()) -> String {
    let payload = catch_unwind(AssertUnwindSafe(f)).expect_err("the assertion should fail");
    if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else {
        panic!("a panic without a message")
    }
}

const LONG_MS: u64 = 60_000;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn in_process_kinds() {
    let h = faults();
    assert_eq!(h.name(), "faults");
    assert_eq!(h.call("square", (7u64,)).expect_ok::<u64>(), 49);
    h.call("square", (7u64,)).expect_value(49u64);

    let e = h.call("panic", ("boom",)).expect_panic();
    assert!(e.message.contains("boom"), "{e}");
    h.call("panic", ("boom",))
        .expect_err_containing(ErrorKind::Panic, "boom");
    let e = h.call("fail", ("nope",)).expect_task_error();
    assert_eq!(e.message, "nope");
    h.call("square", ("seven",)).expect_bad_args();
    h.call("square", (1u64, 2u64)).expect_bad_args();
    let e = h.call("no_such_task", ()).expect_unknown_task();
    assert!(e.message.contains("no_such_task"), "{e}");
    // A cooperative task stops at an in-process soft time limit.
    h.soft_time_limit(ms(20))
        .call("cooperative_spin", (LONG_MS,))
        .expect_soft_time_limit();
    h.soft_time_limit(ms(20))
        .call("cooperative_sleep", (LONG_MS,))
        .expect_soft_time_limit();
    // ...and finishes normally when it is quicker than the limit.
    h.soft_time_limit(Duration::from_secs(30))
        .call("cooperative_spin", (1u64,))
        .expect_value(1u64);
    // A call with no arguments.
    let (job, attempt): (u64, u32) = h.call("context_info", ()).expect_ok();
    assert_eq!((job, attempt), (0, 0));
}

#[test]
fn in_process_json_calls() {
    let h = faults();
    let call = h.call_json("square", json!([5]));
    assert_eq!(call.place(), Place::InProcess);
    assert_eq!(call.expect_ok::<serde_json::Value>(), json!(25));
    h.call_json("square", json!(["five"])).expect_bad_args();
    h.call_json("square", json!({"x": 5})).expect_bad_args();
    h.call_json("fail", json!(["x"])).expect_task_error();
}

#[test]
fn pool_kinds() {
    let h = faults();
    let pool = h.pool();
    let call = pool.call("square", (7u64,));
    assert_eq!(call.place(), Place::Pool);
    call.expect_value(49u64);
    pool.call_json("square", json!([6])).expect_value(json!(36));

    pool.call("panic", ("boom",))
        .expect_err_containing(ErrorKind::Panic, "boom");
    pool.call("fail", ("nope",)).expect_task_error();
    pool.call("square", ("seven",)).expect_bad_args();
    pool.call("no_such_task", ()).expect_unknown_task();

    let e = pool.call("segfault", ()).expect_worker_lost();
    assert!(e.message.contains("SIGSEGV"), "{e}");
    pool.call("abort", ()).expect_worker_lost();
    pool.call("exit", (3i32,)).expect_worker_lost();

    pool.time_limit(ms(100))
        .call("spin_ms", (LONG_MS,))
        .expect_time_limit();
    pool.soft_time_limit(ms(50))
        .call("cooperative_spin", (LONG_MS,))
        .expect_soft_time_limit();
    pool.soft_time_limit(ms(50))
        .call("cooperative_spin_result", (LONG_MS,))
        .expect_soft_time_limit();
    // A soft limit the task ignores, then the hard one.
    pool.soft_time_limit(ms(20))
        .time_limit(ms(100))
        .call("spin_ms", (LONG_MS,))
        .expect_time_limit();

    // Terminated on request.
    let job = pool.submit("sleep_ms", (LONG_MS,));
    assert!(job.id().is_some());
    assert!(job.terminate());
    job.wait().expect_terminated();

    // The pool survived all of it.
    pool.call("square", (3u64,)).expect_value(9u64);
    pool.join();
}

#[test]
fn pool_level_limits() {
    let h = faults();
    let pool = h.pool_with(|b| b.workers(1).time_limit(ms(100)));
    pool.call("spin_ms", (LONG_MS,)).expect_time_limit();
    pool.call("spin_ms", (1u64,)).expect_value(1u64);
}

#[test]
fn failure_messages_show_expected_and_got() {
    let h = faults();
    let msg = panic_message(|| {
        h.call("square", (3u64,)).expect_panic();
    });
    assert!(msg.contains("faults.square(3) in process"), "{msg}");
    assert!(msg.contains("expected: panic"), "{msg}");
    assert!(msg.contains("got:      ok 9"), "{msg}");

    let msg = panic_message(|| {
        h.call("panic", ("kaboom",)).expect_ok::<u64>();
    });
    assert!(msg.contains("faults.panic(\"kaboom\")"), "{msg}");
    assert!(msg.contains("expected: ok"), "{msg}");
    assert!(
        msg.contains("got:      panic: task `panic` panicked: kaboom"),
        "{msg}"
    );

    let msg = panic_message(|| {
        h.call("square", (3u64,)).expect_value(10u64);
    });
    assert!(msg.contains("expected: ok 10"), "{msg}");
    assert!(msg.contains("got:      ok 9"), "{msg}");

    let msg = panic_message(|| {
        h.call("fail", ("a reason",))
            .expect_err_containing(ErrorKind::TaskError, "another");
    });
    assert!(
        msg.contains("expected: task_error with a message containing \"another\""),
        "{msg}"
    );
    assert!(msg.contains("got:      task_error: a reason"), "{msg}");

    let msg = panic_message(|| {
        h.call("square", (3u64,)).expect_ok::<String>();
    });
    assert!(msg.contains("does not decode"), "{msg}");
    assert!(msg.contains("the task returns `u64`"), "{msg}");

    let msg = panic_message(|| {
        h.shared_pool().call("segfault", ()).expect_time_limit();
    });
    assert!(msg.contains("faults.segfault() in the pool"), "{msg}");
    assert!(msg.contains("expected: time_limit"), "{msg}");
    assert!(msg.contains("got:      worker_lost"), "{msg}");
}

#[test]
fn agreement_in_process_and_in_pool() {
    let h = faults();
    let squares: Vec<Result<u64, _>> = h.assert_same_in_pool("square", (0..200u64).map(|x| (x,)));
    assert_eq!(squares.len(), 200);
    assert_eq!(squares[12], Ok(144));

    // Errors agree too (kind and message), and chunked runs agree.
    let pool = h.shared_pool();
    let out: Vec<Result<u64, _>> = pool.assert_same_chunked(
        "panic",
        ["a", "b", "c", "d", "e"].iter().map(|m| (m.to_string(),)),
        2,
    );
    assert!(out
        .iter()
        .all(|o| o.as_ref().unwrap_err().kind == ErrorKind::Panic));
    let out: Vec<Result<u64, _>> = pool.assert_same("square", [("x",), ("y",)]);
    assert!(out
        .iter()
        .all(|o| o.as_ref().unwrap_err().kind == ErrorKind::BadArgs));
    let out: Vec<Result<u64, _>> = pool.assert_same("no_such_task", [(1u64,)]);
    assert_eq!(out[0].as_ref().unwrap_err().kind, ErrorKind::UnknownTask);
}

#[test]
fn disagreement_is_reported() {
    let h = faults();
    // `pid` returns the pid of the process it runs in: never the same.
    let msg = panic_message(|| {
        let _: Vec<Result<u32, _>> = h.assert_same_in_pool("pid", [(), ()]);
    });
    assert!(
        msg.contains("faults.pid: 2 of 2 inputs gave different outcomes"),
        "{msg}"
    );
    let me = std::process::id();
    assert!(msg.contains(&format!("in process:  ok {me}")), "{msg}");
    assert!(msg.contains("in the pool: ok "), "{msg}");
}

#[test]
fn from_path_loads_a_built_plugin() {
    let built = faults();
    let h = Harness::from_path(built.path());
    assert_eq!(h.path(), built.path());
    assert!(h.info().tasks.iter().any(|t| t.name == "segfault"));
    h.call("square", (2u64,)).expect_value(4u64);
    // A pool over a plugin given by path finds billiard-host by itself.
    h.pool().call("square", (2u64,)).expect_value(4u64);

    let not_a_plugin = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let e = Harness::try_from_path(&not_a_plugin).unwrap_err();
    assert!(e.to_string().contains("not an ELF shared object"), "{e}");
    let msg = panic_message(|| {
        Harness::from_path(&not_a_plugin);
    });
    assert!(msg.contains("cannot load plugin"), "{msg}");
}

#[test]
fn golden_cases_run_through_the_harness() {
    let h = faults();
    let dir = std::env::temp_dir().join(format!("billiard-testing-cases-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.jsonl");
    std::fs::write(
        &good,
        concat!(
            r#"{"task": "square", "args": [3], "expect": {"ok": 9}}"#,
            "\n",
            r#"{"task": "segfault", "expect": {"error": "worker_lost", "message_contains": "SIGSEGV"}}"#,
            "\n",
            r#"{"task": "spin_ms", "args": [60000], "time_limit": "200ms", "expect": {"error": "time_limit"}}"#,
            "\n",
        ),
    )
    .unwrap();
    let report = h.assert_cases(&good);
    assert_eq!(report.passed(), 3);

    let bad = dir.join("bad.jsonl");
    std::fs::write(
        &bad,
        concat!(
            r#"{"task": "square", "args": [3], "expect": {"ok": 9}}"#,
            "\n",
            r#"{"name": "off by one", "task": "square", "args": [4], "expect": {"ok": 17}}"#,
            "\n",
        ),
    )
    .unwrap();
    let report = h.run_cases(&bad);
    assert_eq!((report.passed(), report.failed()), (1, 1));
    let msg = panic_message(|| {
        h.assert_cases(&bad);
    });
    assert!(msg.contains("2 cases: 1 passed, 1 failed"), "{msg}");
    assert!(
        msg.contains(&format!("FAIL off by one ({}:2): square(4)", bad.display())),
        "{msg}"
    );
    assert!(msg.contains("-   \"ok\": 17"), "{msg}");
    assert!(msg.contains("+   \"ok\": 16"), "{msg}");

    let invalid = dir.join("invalid.jsonl");
    std::fs::write(&invalid, "{\"task\": \"square\"}\nnot json\n").unwrap();
    let msg = panic_message(|| {
        h.run_cases(&invalid);
    });
    assert!(msg.contains("2 invalid case line(s)"), "{msg}");
    assert!(msg.contains("line 1: missing \"expect\""), "{msg}");
    assert!(msg.contains("line 2: not JSON"), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
}
