//! The plugin's tasks through the harness: in this process (fast, and the
//! task's own panics and errors are visible) and in a real pool of worker
//! processes (limits, crashes). `billiard_testing::plugin!()` builds this
//! crate's `.so` once per test process.

use std::time::Duration;

use billiard_testing::{plugin, ErrorKind};
// The crate is also an `rlib` (see Cargo.toml), so its tests use its own
// types instead of declaring them again.
use plugin_template::{Sample, Summary};
use serde_json::json;

fn sample(values: &[f64], trim: usize) -> Sample {
    Sample {
        values: values.to_vec(),
        trim,
    }
}

/// The plugin exports every `#[task]` of src/lib.rs and nothing else, each
/// with a doc comment (`billiard-host inspect` shows it). A task you add
/// keeps this passing; one left out of `export_plugin!`, or without a
/// `///` doc, fails it by name.
#[test]
fn lists_its_tasks() {
    let h = plugin!();
    assert_eq!(h.name(), "plugin-template");
    let mut exported: Vec<&str> = h.info().tasks.iter().map(|t| t.name.as_str()).collect();
    let mut written = task_functions(include_str!("../src/lib.rs"));
    exported.sort_unstable();
    written.sort_unstable();
    assert_eq!(
        exported, written,
        "the tasks the plugin exports (left) are not the `#[task]` functions of src/lib.rs \
         (right): list each one in `export_plugin!(..., tasks: [...])`"
    );
    for t in &h.info().tasks {
        assert!(
            !t.doc.trim().is_empty(),
            "task `{}` has no doc comment: write a `///` line above its `#[task]`",
            t.name
        );
    }
    // The example tasks the tests below call.
    for t in ["count_primes", "summarize"] {
        assert!(exported.contains(&t), "no task `{t}`: {exported:?}");
    }
}

/// The names of the functions marked `#[task]` (or `#[task(...)]`, or a
/// path ending in `task`) in `source`, as rustfmt lays them out: the
/// attribute on a line of its own, the `fn` after it and any other
/// attributes or comments.
fn task_functions(source: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut marked = false;
    for line in source.lines().map(str::trim) {
        if let Some(attr) = line.strip_prefix("#[").and_then(|l| l.strip_suffix(']')) {
            let path = attr.split('(').next().unwrap_or_default();
            marked |= path.rsplit("::").next() == Some("task");
            continue;
        }
        if !marked || line.is_empty() || line.starts_with("//") {
            continue;
        }
        marked = false;
        if let Some((_, rest)) = line.split_once("fn ") {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.push(&rest[..end]);
        }
    }
    names
}

#[test]
fn in_process() {
    let h = plugin!();
    // Arguments are a tuple, one element per task argument.
    assert_eq!(h.call("count_primes", (100u64,)).expect_ok::<u64>(), 25);
    h.call("summarize", (sample(&[6.0, 1.0, 2.0, 100.0], 1),))
        .expect_value(Summary {
            count: 2,
            mean: 4.0,
            min: 2.0,
            max: 6.0,
        });
    // JSON arguments and results, as on the command line.
    h.call_json("summarize", json!([{"values": [2, 4]}]))
        .expect_value(json!({"count": 2, "mean": 3.0, "min": 2.0, "max": 4.0}));
}

#[test]
fn errors_by_kind() {
    let h = plugin!();
    let e = h
        .call("summarize", (sample(&[1.0, 2.0, 3.0], 2),))
        .expect_panic();
    assert!(e.message.contains("slice index starts at 2"), "{e}");
    h.call("summarize", (sample(&[], 0),))
        .expect_err_containing(ErrorKind::TaskError, "empty list");
    h.call("count_primes", ("many",)).expect_bad_args();
    h.call_json("count_primes", json!([10, 20]))
        .expect_err_containing(ErrorKind::BadArgs, "expects 1 argument, got 2");
    h.call("farewell", ("x",)).expect_unknown_task();
    // count_primes polls its TaskContext: a soft time limit stops it.
    h.soft_time_limit(Duration::from_millis(50))
        .call("count_primes", (u64::MAX,))
        .expect_soft_time_limit();
}

#[test]
fn in_a_pool() {
    let h = plugin!();
    let pool = h.pool();
    pool.call("count_primes", (100u64,)).expect_value(25u64);
    pool.call("summarize", (sample(&[1.0, 2.0, 3.0], 2),))
        .expect_err_containing(ErrorKind::Panic, "slice index");
    pool.call("summarize", (sample(&[], 0),))
        .expect_task_error();
    // Limits: the soft one asks the task to stop; the hard one kills the
    // worker (which the pool replaces).
    pool.soft_time_limit(Duration::from_millis(50))
        .call("count_primes", (u64::MAX,))
        .expect_soft_time_limit();
    pool.time_limit(Duration::from_millis(100))
        .call("count_primes", (u64::MAX,))
        .expect_time_limit();
    pool.call("count_primes", (100u64,)).expect_value(25u64);
}
