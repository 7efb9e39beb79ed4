//! Golden cases through the library (`billiard_host::cases`), without the
//! `check` subcommand: a Rust program reads a cases file, runs it in a
//! pool it configures, and gets the results, the diffs, the summary and
//! the JUnit report that `check` prints. (The pool's zygote is the
//! `billiard-host` executable, as in every pool test.)

mod common;

use std::time::Duration;

use billiard_host::cases::{self, Case, Change, Expect, ReadError};
use billiard_host::{ErrorKind, Event, Limits, PoolBuilder};
use common::{exit_code, host_command, plugin_str, scratch, stderr};
use serde_json::json;

fn builder(plugin: &str, workers: usize) -> PoolBuilder {
    common::pool_builder(workers, &[plugin]).time_limit(Duration::from_secs(20))
}

const CASES: &[&str] = &[
    r#"{"task": "square", "args": [3], "expect": {"ok": 9}}"#,
    r#"// a comment"#,
    r#"{"name": "wrong sum", "task": "add", "args": [1, 2], "expect": {"ok": 4}}"#,
    "",
    r#"{"task": "add", "args": [9223372036854775807, 1], "expect": {"error": "task_error", "message_contains": "overflows"}}"#,
    r#"{"task": "sum", "args": [[1, 2.5]], "expect": {"ok": 3.5}}"#,
    r#"{"task": "cube", "args": [3], "expect": {"error": "unknown_task"}}"#,
    r#"{"task": "square", "args": ["three"], "expect": {"ok": 9}}"#,
];

#[test]
fn a_cases_file_runs_through_the_library() {
    let dir = scratch("cases_api_file");
    let file = common::lines_file(&dir, "cases.jsonl", CASES);
    let cases = cases::read_file(&file).expect("a valid cases file");
    assert_eq!(cases.len(), 6);
    assert_eq!(
        cases.iter().map(|c| c.line).collect::<Vec<_>>(),
        [1, 3, 5, 6, 7, 8]
    );

    let report = cases::run(builder("math", 2), &cases).expect("the pool starts");
    let names: Vec<&str> = report
        .results
        .iter()
        .map(|r| r.case.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "square(3)",
            "wrong sum",
            "add(9223372036854775807, 1)",
            "sum([1,2.5])",
            "cube(3)",
            "square(\"three\")"
        ]
    );
    let passed: Vec<bool> = report.results.iter().map(|r| r.passed).collect();
    assert_eq!(passed, [true, false, true, true, true, false]);
    assert_eq!((report.passed(), report.failed()), (4, 2));
    assert!(!report.all_passed());
    assert!(
        report
            .summary()
            .starts_with("6 cases: 4 passed, 2 failed in "),
        "{}",
        report.summary()
    );
    // A job that ran has its time from the pool; one never submitted
    // (no such task) has none.
    assert!(report.results[0].elapsed.is_some());
    assert_eq!(report.results[4].elapsed, None);
    assert_eq!(
        report.results[4].got.as_ref().unwrap_err().kind,
        ErrorKind::UnknownTask
    );

    let failures: Vec<_> = report.failures().collect();
    assert_eq!(
        failures[0].heading(Some(std::path::Path::new(&file))),
        format!("wrong sum ({file}:3): add(1, 2)")
    );
    let diff: Vec<String> = failures[0].diff().iter().map(|l| l.to_string()).collect();
    assert_eq!(diff, ["  {", "-   \"ok\": 4", "+   \"ok\": 3", "  }"]);
    assert_eq!(
        failures[1].got.as_ref().unwrap_err().kind,
        ErrorKind::BadArgs
    );
    let diff = failures[1].diff();
    assert!(diff
        .iter()
        .any(|l| l.change == Change::Got && l.text == "  \"error\": \"bad_args\","));

    let info = &common_info("math");
    let xml = report.junit_xml(info);
    assert!(xml.contains("tests=\"6\""), "{xml}");
    assert!(xml.contains("failures=\"2\""), "{xml}");
    assert!(xml.contains("message=\"expected ok 4, got ok 3\""), "{xml}");
}

/// What the plugin says it is, loaded in this process.
fn common_info(plugin: &str) -> billiard_host::PluginInfo {
    billiard_host::Plugin::load(common::plugin(plugin))
        .expect("the plugin loads")
        .info()
        .clone()
}

/// The JUnit report without what differs between two runs (the times).
fn timeless(xml: &str) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(i) = rest.find(" time=\"") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " time=\"".len()..];
        rest = &after[after.find('"').map_or(after.len(), |j| j + 1)..];
    }
    out.push_str(rest);
    out
}

#[test]
fn the_check_subcommand_writes_the_library_report() {
    let dir = scratch("cases_api_same_as_check");
    let file = common::lines_file(&dir, "cases.jsonl", CASES);
    let junit = dir.join("check.xml");
    let out = host_command()
        .args(["check", &plugin_str("math"), "--cases", &file, "--junit"])
        .arg(&junit)
        .args(["--workers", "2", "--time-limit", "20s"])
        .env_remove("RUST_BACKTRACE")
        .env_remove("BILLIARD_BACKTRACE")
        .output()
        .expect("billiard-host starts");
    assert_eq!(exit_code(&out), 1, "{}", stderr(&out));
    let from_check = std::fs::read_to_string(&junit).unwrap();

    let cases = cases::read_file(&file).unwrap();
    let report = cases::run(builder("math", 2), &cases).unwrap();
    // The path as `check` loaded it: the same file.
    let from_library = report.junit_xml(&common_info("math"));
    assert_eq!(timeless(&from_check), timeless(&from_library));
    assert!(from_check.contains(" time=\""), "{from_check}");
}

#[test]
fn a_run_yields_results_in_case_order_and_passes_events_on() {
    // The first case is the slowest: the others finish first, and are
    // still handed out after it, in order.
    let cases = vec![
        Case::new("sleep_ms", json!([300]), Expect::Ok(json!(300))),
        Case::new("square", json!([4]), Expect::Ok(json!(16))),
        Case::new("square", json!([5]), Expect::Ok(json!(25))).named("five"),
        Case::new(
            "spin_ms",
            json!([60_000]),
            Expect::Error {
                kind: ErrorKind::TimeLimit,
                message_contains: None,
            },
        )
        .with_limits(Limits {
            soft: None,
            hard: Some(Duration::from_millis(200)),
        }),
        Case::new(
            "panic",
            json!(["boom"]),
            Expect::Error {
                kind: ErrorKind::Panic,
                message_contains: Some("boom".into()),
            },
        ),
    ];
    let (tx, events) = crossbeam_channel::unbounded();
    let mut run = cases::Run::start(builder("faults", 3).events(tx), &cases).unwrap();
    assert_eq!(run.pool().config().workers, 3);
    let first: Vec<String> = run.by_ref().take(2).map(|r| r.case.name).collect();
    assert_eq!(first, ["sleep_ms(300)", "square(4)"]);
    let report = run.finish();
    let names: Vec<&str> = report
        .results
        .iter()
        .map(|r| r.case.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "sleep_ms(300)",
            "square(4)",
            "five",
            "spin_ms(60000)",
            "panic(\"boom\")"
        ]
    );
    assert!(report.all_passed(), "{report:#?}");
    // Every job's end reached the caller's own channel too.
    let finished = events
        .try_iter()
        .filter(|e| matches!(e, Event::JobFinished { .. }))
        .count();
    assert!(finished >= 4, "{finished} JobFinished events");
}

#[test]
fn a_run_dropped_halfway_stops_its_pool() {
    let cases = vec![
        Case::new("square", json!([2]), Expect::Ok(json!(4))),
        Case::new("sleep_ms", json!([60_000]), Expect::Ok(json!(0))),
    ];
    let mut run = cases::Run::start(builder("faults", 2), &cases).unwrap();
    let r = run.next().unwrap();
    assert!(r.passed);
    // The second case sleeps a minute; dropping the run terminates the
    // pool instead of waiting for it.
    drop(run);
}

#[test]
fn an_invalid_cases_file_lists_every_bad_line() {
    let dir = scratch("cases_api_invalid");
    let file = common::lines_file(
        &dir,
        "cases.jsonl",
        &[
            r#"{"task": "square", "args": [3], "expect": {"ok": 9}}"#,
            r#"{"task": "square", "expect": {"error": "explode"}}"#,
            r#"{"task": "square", "args": 3, "expect": {"ok": 9}}"#,
        ],
    );
    match cases::read_file(&file) {
        Err(ReadError::Invalid { errors, path }) => {
            assert_eq!(path, std::path::PathBuf::from(&file));
            let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
            assert_eq!(lines, [2, 3]);
            assert!(errors[0].message.contains("unknown error kind \"explode\""));
        }
        other => panic!("{other:?}"),
    }
}
