//! `billiard-host check` through the real binary: golden cases that all
//! pass, a failing case (exit 1, a readable diff, a valid JUnit report),
//! every error kind a case can expect, invalid cases files and plugins
//! that cannot be loaded (exit 2).

use crate::common;

use std::collections::BTreeMap;
use std::process::Output;

use common::{exit_code, host_command, plugin_str, scratch, stderr, stdout};
use quick_xml::events::Event;
use quick_xml::Reader;

/// `billiard-host check ARGS...`, without backtraces in panic messages.
fn check(args: &[&str]) -> Output {
    host_command()
        .arg("check")
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("BILLIARD_BACKTRACE")
        .env_remove("NO_COLOR")
        .output()
        .expect("billiard-host starts")
}

/// One XML element of a JUnit report: its name and attributes.
#[derive(Debug)]
struct Element {
    name: String,
    attrs: BTreeMap<String, String>,
}

/// Every element of an XML document, in document order; panics if the
/// document is not well-formed.
fn xml_elements(xml: &str) -> Vec<Element> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let mut out = Vec::new();
    let mut depth = 0i32;
    loop {
        let event = reader
            .read_event()
            .unwrap_or_else(|e| panic!("the JUnit report is not valid XML: {e}\n{xml}"));
        let start = match &event {
            Event::Start(e) => {
                depth += 1;
                e
            }
            Event::Empty(e) => e,
            Event::End(_) => {
                depth -= 1;
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let attrs = start
            .attributes()
            .map(|a| {
                let a = a.expect("a well-formed attribute");
                (
                    String::from_utf8_lossy(a.key.as_ref()).into_owned(),
                    a.unescape_value().expect("a valid value").into_owned(),
                )
            })
            .collect();
        out.push(Element {
            name: String::from_utf8_lossy(start.name().as_ref()).into_owned(),
            attrs,
        });
    }
    assert_eq!(depth, 0, "unbalanced elements in\n{xml}");
    out
}

fn count(elements: &[Element], name: &str) -> usize {
    elements.iter().filter(|e| e.name == name).count()
}

fn root_attr<'a>(elements: &'a [Element], attr: &str) -> &'a str {
    let root = elements.first().expect("a root element");
    assert_eq!(root.name, "testsuites");
    root.attrs
        .get(attr)
        .unwrap_or_else(|| panic!("no {attr} on {root:?}"))
}

const MATH_CASES: &[&str] = &[
    r#"{"task": "square", "args": [3], "expect": {"ok": 9}}"#,
    r#"{"name": "add overflows", "task": "add", "args": [9223372036854775807, 1], "expect": {"error": "task_error", "message_contains": "overflows"}}"#,
    r#"{"task": "sum", "args": [[1, 2.5]], "expect": {"ok": 3.5}}"#,
    r#"{"task": "sum", "args": [[1, 2]], "expect": {"ok": 3}}"#,
    r#"{"task": "fib", "args": [10], "expect": {"ok": 55}}"#,
    "",
    r#"// comments and blank lines are skipped"#,
    r#"{"task": "square", "args": ["three"], "expect": {"error": "bad_args"}}"#,
    r#"{"task": "cube", "args": [3], "expect": {"error": "unknown_task"}}"#,
    r#"{"task": "version", "expect": {"ok": "0.1.0"}}"#,
];

#[test]
fn all_cases_pass() {
    let dir = scratch("all_cases_pass");
    let cases = common::lines_file(&dir, "cases.jsonl", MATH_CASES);
    let junit = dir.join("report.xml");
    let out = check(&[
        &plugin_str("math"),
        "--cases",
        &cases,
        "--junit",
        junit.to_str().unwrap(),
        "--workers",
        "2",
        "--time-limit",
        "10s",
    ]);
    let text = stdout(&out);
    assert_eq!(exit_code(&out), 0, "{text}\n{}", stderr(&out));
    assert!(text.contains("math 0.1.0 loads: ABI version"), "{text}");
    assert!(
        text.contains("square(x: u64) -> u64"),
        "lists the tasks: {text}"
    );
    assert!(
        text.contains("a pool of 2 worker(s), time limit 10s"),
        "{text}"
    );
    assert_eq!(text.matches("  PASS ").count(), 8, "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    assert!(text.contains("8 cases: 8 passed, 0 failed"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "no colour when stdout is not a terminal: {text:?}"
    );

    let xml = std::fs::read_to_string(&junit).unwrap();
    let elements = xml_elements(&xml);
    assert_eq!(root_attr(&elements, "tests"), "8");
    assert_eq!(root_attr(&elements, "failures"), "0");
    assert_eq!(count(&elements, "testsuite"), 1);
    assert_eq!(count(&elements, "testcase"), 8);
    assert_eq!(count(&elements, "failure"), 0);
    let names: Vec<&str> = elements
        .iter()
        .filter(|e| e.name == "testcase")
        .map(|e| e.attrs["name"].as_str())
        .collect();
    assert_eq!(names[..2], ["square(3)", "add overflows"]);
}

#[test]
fn a_failing_case_shows_a_diff_and_fails_the_check() {
    let dir = scratch("failing_case");
    let cases = common::lines_file(
        &dir,
        "cases.jsonl",
        &[
            r#"{"task": "square", "args": [3], "expect": {"ok": 9}}"#,
            r#"{"name": "wrong sum", "task": "add", "args": [1, 2], "expect": {"ok": 4}}"#,
            r#"{"task": "add", "args": [1, 2], "expect": {"error": "task_error"}}"#,
        ],
    );
    let junit = dir.join("report.xml");
    let out = check(&[
        &plugin_str("math"),
        "--cases",
        &cases,
        "--junit",
        junit.to_str().unwrap(),
    ]);
    let text = stdout(&out);
    assert_eq!(exit_code(&out), 1, "{text}\n{}", stderr(&out));
    assert_eq!(text.matches("  PASS ").count(), 1, "{text}");
    // Two rows in the table, then two explanations.
    assert_eq!(text.matches("  FAIL ").count(), 4, "{text}");
    assert_eq!(text.matches("- expected + got").count(), 2, "{text}");
    assert!(text.contains("3 cases: 1 passed, 2 failed"), "{text}");
    // The diff: pretty JSON of both, expected lines with -, got lines with +.
    assert!(
        text.contains(&format!("FAIL wrong sum ({cases}:2): add(1, 2)")),
        "{text}"
    );
    assert!(text.contains("- expected + got"), "{text}");
    assert!(text.contains("-   \"ok\": 4\n"), "{text}");
    assert!(text.contains("+   \"ok\": 3\n"), "{text}");
    assert!(text.contains("-   \"error\": \"task_error\"\n"), "{text}");

    let xml = std::fs::read_to_string(&junit).unwrap();
    let elements = xml_elements(&xml);
    assert_eq!(root_attr(&elements, "tests"), "3");
    assert_eq!(root_attr(&elements, "failures"), "2");
    assert_eq!(count(&elements, "testcase"), 3);
    let failures: Vec<&Element> = elements.iter().filter(|e| e.name == "failure").collect();
    assert_eq!(failures.len(), 2);
    assert_eq!(failures[0].attrs["message"], "expected ok 4, got ok 3");
    assert!(xml.contains("+   &quot;ok&quot;: 3"), "{xml}");
}

#[test]
fn every_error_kind_can_be_expected() {
    let dir = scratch("error_kinds");
    let cases = common::lines_file(
        &dir,
        "cases.jsonl",
        &[
            r#"{"task": "panic", "args": ["boom"], "expect": {"error": "panic", "message_contains": "boom"}}"#,
            r#"{"task": "fail", "args": ["no"], "expect": {"error": "task_error"}, "message_contains": "no"}"#,
            r#"{"task": "square", "args": [1, 2], "expect": {"error": "bad_args"}}"#,
            r#"{"task": "nope", "expect": {"error": "unknown_task"}}"#,
            r#"{"task": "segfault", "expect": {"error": "worker_lost", "message_contains": "SIGSEGV"}}"#,
            r#"{"task": "spin_ms", "args": [60000], "time_limit": "200ms", "expect": {"error": "time_limit"}}"#,
            r#"{"task": "cooperative_spin", "args": [60000], "soft_time_limit": "50ms", "expect": {"error": "soft_time_limit"}}"#,
            r#"{"task": "square", "args": [5], "expect": {"ok": 25}}"#,
        ],
    );
    let out = check(&[&plugin_str("faults"), "--cases", &cases]);
    let text = stdout(&out);
    assert_eq!(exit_code(&out), 0, "{text}\n{}", stderr(&out));
    assert!(text.contains("8 cases: 8 passed, 0 failed"), "{text}");
}

#[test]
fn pool_flags_apply_to_every_case() {
    let dir = scratch("pool_flags");
    let cases = common::lines_file(
        &dir,
        "cases.jsonl",
        &[r#"{"task": "spin_ms", "args": [60000], "expect": {"error": "time_limit"}}"#],
    );
    let out = check(&[
        &plugin_str("faults"),
        "--cases",
        &cases,
        "--time-limit",
        "100ms",
        "--workers",
        "1",
        "--color",
        "always",
    ]);
    let text = stdout(&out);
    assert_eq!(exit_code(&out), 0, "{text}\n{}", stderr(&out));
    assert!(text.contains("time limit 100ms"), "{text}");
    assert!(text.contains('\x1b'), "--color always colours: {text:?}");
}

#[test]
fn without_cases_it_checks_loading_only() {
    let out = check(&[&plugin_str("math")]);
    let text = stdout(&out);
    assert_eq!(exit_code(&out), 0, "{text}\n{}", stderr(&out));
    assert!(text.contains("math 0.1.0 loads"), "{text}");
    assert!(text.contains("no cases to run"), "{text}");
}

#[test]
fn a_plugin_that_cannot_load_exits_2() {
    let dir = scratch("cannot_load");
    let not_a_plugin = dir.join("notes.so");
    std::fs::write(&not_a_plugin, "not a shared object").unwrap();
    let cases = common::lines_file(
        &dir,
        "cases.jsonl",
        &[r#"{"task": "square", "args": [3], "expect": {"ok": 9}}"#],
    );
    for (file, reason) in [
        (not_a_plugin.to_string_lossy().into_owned(), "not an ELF"),
        (
            dir.join("missing.so").to_string_lossy().into_owned(),
            "no such file",
        ),
        (plugin_str("abi-version-mismatch"), "ABI version"),
        (plugin_str("abi-layout-mismatch"), "incompatible"),
        (plugin_str("init-panic"), "initializer panicked"),
    ] {
        let out = check(&[&file, "--cases", &cases]);
        let err = stderr(&out);
        assert_eq!(exit_code(&out), 2, "{file}: {err}");
        assert!(err.contains("cannot load plugin"), "{file}: {err}");
        assert!(err.contains(reason), "{file}: {err}");
        assert!(!stdout(&out).contains("PASS"), "{file}: nothing runs");
    }
}

#[test]
fn an_invalid_cases_file_exits_2_and_runs_nothing() {
    let dir = scratch("invalid_cases");
    let cases = common::lines_file(
        &dir,
        "cases.jsonl",
        &[
            r#"{"task": "square", "args": [3], "expect": {"ok": 9}}"#,
            r#"{"task": "square", "args": [3], "expect": {"error": "explode"}}"#,
            r#"not json"#,
        ],
    );
    let out = check(&[&plugin_str("math"), "--cases", &cases]);
    let err = stderr(&out);
    assert_eq!(exit_code(&out), 2, "{err}");
    assert!(
        err.contains("line 2: unknown error kind \"explode\""),
        "{err}"
    );
    assert!(err.contains("line 3: not JSON"), "{err}");
    assert!(!stdout(&out).contains("PASS"), "nothing runs");

    let out = check(&[&plugin_str("math"), "--cases", "/nonexistent/cases.jsonl"]);
    assert_eq!(exit_code(&out), 2);
    assert!(stderr(&out).contains("cannot read /nonexistent/cases.jsonl"));

    let out = check(&[
        &plugin_str("math"),
        "--junit",
        "/nonexistent/dir/report.xml",
    ]);
    assert_eq!(exit_code(&out), 2);
    assert!(stderr(&out).contains("cannot create the JUnit file"));

    let out = check(&[&plugin_str("math"), "--workers", "0"]);
    assert_eq!(exit_code(&out), 2);
}
