//! The plugin's tasks through the harness: in this process (fast, and the
//! task's own panics and errors are visible) and in a real pool of worker
//! processes (limits, crashes). `billiard_testing::plugin!()` builds this
//! crate's `.so` once per test process.

use std::time::Duration;

use billiard_plugin_api::serde::Deserialize;
use billiard_testing::{plugin, ErrorKind};
use serde_json::json;

/// The shape of `summarize`'s result, as a caller decodes it (this test
/// does not link the plugin crate: it talks to the built `.so`).
#[derive(Debug, PartialEq, Deserialize)]
#[serde(crate = "billiard_plugin_api::serde")]
struct Summary {
    count: u64,
    mean: f64,
    min: f64,
    max: f64,
}

#[test]
fn lists_its_tasks() {
    let h = plugin!();
    assert_eq!(h.name(), "template");
    let names: Vec<&str> = h.info().tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["greet", "divide", "summarize", "count_primes"]);
}

#[test]
fn in_process() {
    let h = plugin!();
    // Arguments are a tuple, one element per task argument.
    h.call("greet", ("world",))
        .expect_value("Hello, world!".to_string());
    assert_eq!(h.call("divide", (7i64, 2i64)).expect_ok::<i64>(), 3);
    let s: Summary = h.call("summarize", (vec![1.0, 2.0, 6.0],)).expect_ok();
    assert_eq!(
        s,
        Summary {
            count: 3,
            mean: 3.0,
            min: 1.0,
            max: 6.0
        }
    );
    assert_eq!(h.call("count_primes", (100u64,)).expect_ok::<u64>(), 25);
    // JSON arguments and results, as on the command line.
    h.call_json("summarize", json!([[2, 4]]))
        .expect_value(json!({
            "count": 2, "mean": 3.0, "min": 2.0, "max": 4.0
        }));
}

#[test]
fn errors_by_kind() {
    let h = plugin!();
    let e = h.call("divide", (1i64, 0i64)).expect_panic();
    assert!(e.message.contains("divide by zero"), "{e}");
    h.call("summarize", (Vec::<f64>::new(),))
        .expect_err_containing(ErrorKind::TaskError, "empty list");
    h.call("greet", (42u64,)).expect_bad_args();
    h.call("greet", ()).expect_bad_args();
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
    pool.call("greet", ("pool",))
        .expect_value("Hello, pool!".to_string());
    pool.call("divide", (1i64, 0i64))
        .expect_err_containing(ErrorKind::Panic, "divide by zero");
    pool.call("summarize", (Vec::<f64>::new(),))
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
