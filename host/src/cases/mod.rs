//! Golden cases: a plugin's expected outcomes, one JSON line each, run in
//! a real pool and compared as JSON. This is the runner behind
//! `billiard-host check`, usable without the binary.
//!
//! A cases file holds one JSON object per line (blank lines and lines
//! starting with `//` are skipped):
//!
//! ```text
//! {"task": "square", "args": [3], "expect": {"ok": 9}}
//! {"name": "boom", "task": "panic", "args": ["x"], "expect": {"error": "panic", "message_contains": "x"}}
//! {"task": "spin_ms", "args": [60000], "time_limit": "200ms", "expect": {"error": "time_limit"}}
//! ```
//!
//! `expect` is `{"ok": VALUE}` (compared as JSON, numbers by value: `2`
//! equals `2.0`) or `{"error": KIND}` with an optional `message_contains`
//! (KIND is an [`ErrorKind`] name). Optional fields: `name` (default
//! `task(args)`), `args` (default `[]`), `time_limit` and
//! `soft_time_limit` (humantime durations, for that case only).
//!
//! Running a file in a program that embeds the pool:
//!
//! ```no_run
//! use billiard_host::{cases, Pool};
//!
//! let cases = cases::read_file("cases.jsonl")?;
//! let builder = Pool::builder()
//!     .workers(2)
//!     .plugin("target/release/libbilliard_math.so");
//! let report = cases::run(builder, &cases)?;
//! for r in report.failures() {
//!     eprintln!("FAIL {}", r.heading(None));
//!     for line in r.diff() {
//!         eprintln!("  {line}");
//!     }
//! }
//! println!("{}", report.summary());
//! assert!(report.all_passed());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`Run`] gives the results one by one as they finish (in file order),
//! for a table that grows while the cases run; [`Report::junit_xml`]
//! writes a JUnit XML report.

mod diff;
mod junit;
mod parse;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde_json::{Map, Value};

use crate::error::{ErrorKind, TaskError};
use crate::pool::{Event, JobId, Limits, Outcome, Pool, PoolBuilder, PoolError, RawResult};
use billiard_plugin_api::Codec;

pub use diff::{diff, Change, DiffLine, MAX_DIFF_LINES};
pub use parse::{parse, read_file, LineError, ReadError};

/// The hard time limit of a case when neither the case nor the pool sets
/// one: a hanging task fails its case instead of hanging the run.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(60);

/// What a case's job gave: its result as JSON, or why there is none.
pub type Got = Result<Value, TaskError>;

/// What a case expects.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// A result equal (as JSON, numbers by value) to this one.
    Ok(Value),
    /// A failure of this kind.
    Error {
        /// The kind the job must fail with.
        kind: ErrorKind,
        /// Text the error message must contain, if any.
        message_contains: Option<String>,
    },
}

impl Expect {
    /// Whether `got` is what this expects.
    pub fn matches(&self, got: &Got) -> bool {
        match (self, got) {
            (Expect::Ok(want), Ok(v)) => json_eq(want, v),
            (
                Expect::Error {
                    kind,
                    message_contains,
                },
                Err(e),
            ) => {
                e.kind == *kind
                    && match message_contains {
                        None => true,
                        Some(s) => e.message.contains(s.as_str()),
                    }
            }
            _ => false,
        }
    }

    /// The expectation as JSON, shaped like [`got_json`] for the diff:
    /// `{"ok": VALUE}` or `{"error": KIND, "message_contains": "..."}`.
    pub fn to_json(&self) -> Value {
        match self {
            Expect::Ok(v) => serde_json::json!({ "ok": v }),
            Expect::Error {
                kind,
                message_contains,
            } => {
                let mut m = Map::new();
                m.insert("error".into(), kind.as_str().into());
                if let Some(s) = message_contains {
                    m.insert("message_contains".into(), s.clone().into());
                }
                Value::Object(m)
            }
        }
    }

    /// A short form for a table: `ok 9`, `panic`, `panic ~ "boom"`.
    pub fn summary(&self) -> String {
        match self {
            Expect::Ok(v) => format!("ok {v}"),
            Expect::Error {
                kind,
                message_contains: None,
            } => kind.to_string(),
            Expect::Error {
                kind,
                message_contains: Some(s),
            } => format!("{kind} ~ {}", Value::from(s.as_str())),
        }
    }
}

/// One golden case.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// The case's name: its `name`, else `task(args)`.
    pub name: String,
    /// Whether the name came from the file (else it was made up from
    /// the task and its arguments).
    pub named: bool,
    /// The 1-based line in the cases file (0 for a case made with
    /// [`Case::new`]).
    pub line: usize,
    /// The task to run: its name, or `plugin.task`.
    pub task: String,
    /// The arguments, a JSON array.
    pub args: Value,
    /// The case's own time limits (the pool's apply where unset).
    pub limits: Limits,
    /// What the case expects.
    pub expect: Expect,
}

impl Case {
    /// A case of `task` with JSON `args` (an array, one element per
    /// argument), named `task(args)`, with the pool's limits.
    pub fn new(task: impl Into<String>, args: Value, expect: Expect) -> Case {
        let task = task.into();
        Case {
            name: format!("{task}({})", args_text(&args)),
            named: false,
            line: 0,
            task,
            args,
            limits: Limits::default(),
            expect,
        }
    }

    /// The same case with a name.
    pub fn named(mut self, name: impl Into<String>) -> Case {
        self.name = name.into();
        self.named = true;
        self
    }

    /// The same case with its own limits.
    pub fn with_limits(mut self, limits: Limits) -> Case {
        self.limits = limits;
        self
    }
}

/// `[3, "x"]` as `3, "x"`.
pub(crate) fn args_text(args: &Value) -> String {
    match args {
        Value::Array(items) => items
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// JSON equality where numbers compare by value: `2` equals `2.0`, and
/// `-1` does not equal `u64::MAX`.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                x == y
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                x == y
            } else {
                matches!((x.as_f64(), y.as_f64()), (Some(x), Some(y)) if x == y)
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// What a case's job gave, as JSON for the diff: `{"ok": VALUE}` or
/// `{"error": KIND, "message": "..."}`.
pub fn got_json(got: &Got) -> Value {
    match got {
        Ok(v) => serde_json::json!({ "ok": v }),
        Err(e) => serde_json::json!({ "error": e.kind.as_str(), "message": e.message }),
    }
}

/// A job's outcome with its result parsed as JSON (a result that is not
/// JSON is a `task_error`, as in `billiard-host run`).
fn parse_outcome(outcome: Outcome) -> Got {
    let bytes = outcome?;
    serde_json::from_slice(&bytes).map_err(|e| {
        TaskError::new(
            ErrorKind::TaskError,
            format!("the task's result is not valid JSON: {e}"),
        )
    })
}

/// The result of one case.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseResult {
    /// The case.
    pub case: Case,
    /// What its job gave.
    pub got: Got,
    /// How long its job ran in a worker, when the pool reported it.
    pub elapsed: Option<Duration>,
    /// Whether `got` is what the case expects.
    pub passed: bool,
}

impl CaseResult {
    /// The result of `case` given `got`.
    pub fn new(case: Case, got: Got, elapsed: Option<Duration>) -> CaseResult {
        let passed = case.expect.matches(&got);
        CaseResult {
            case,
            got,
            elapsed,
            passed,
        }
    }

    /// A short form of what the job gave: `ok 9`, `panic: boom`.
    pub fn got_summary(&self) -> String {
        match &self.got {
            Ok(v) => format!("ok {v}"),
            Err(e) => format!("{}: {}", e.kind, e.message),
        }
    }

    /// Where the case is and what it ran, for a failure's heading:
    /// `wrong sum (cases.jsonl:2): add(1, 2)` for a named case,
    /// `add(1, 2) (line 2)` for one named after its task. `file` is the
    /// cases file, if there is one.
    pub fn heading(&self, file: Option<&Path>) -> String {
        let place = match file {
            Some(f) => format!("{}:{}", f.display(), self.case.line),
            None => format!("line {}", self.case.line),
        };
        if self.case.named {
            format!(
                "{} ({place}): {}({})",
                self.case.name,
                self.case.task,
                one_line(&args_text(&self.case.args), 200)
            )
        } else {
            format!("{} ({place})", one_line(&self.case.name, 200))
        }
    }

    /// The diff of what the case expected (`-`) and what it got (`+`).
    pub fn diff(&self) -> Vec<DiffLine> {
        diff(&self.case.expect.to_json(), &got_json(&self.got))
    }
}

/// Shortens `s` to its first line, at most `max` characters (a longer one
/// ends with `…`).
pub fn one_line(s: &str, max: usize) -> String {
    let s = s.lines().next().unwrap_or("");
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The results of a run of cases.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// One result per case, in the order of the cases.
    pub results: Vec<CaseResult>,
    /// How long the run took, from building the pool to its shutdown.
    pub elapsed: Duration,
}

impl Report {
    /// How many cases passed.
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed).count()
    }

    /// How many cases failed.
    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// Whether every case passed.
    pub fn all_passed(&self) -> bool {
        self.results.iter().all(|r| r.passed)
    }

    /// The failed cases, in order.
    pub fn failures(&self) -> impl Iterator<Item = &CaseResult> {
        self.results.iter().filter(|r| !r.passed)
    }

    /// One line: `8 cases: 7 passed, 1 failed in 0.31s`.
    pub fn summary(&self) -> String {
        format!(
            "{} cases: {} passed, {} failed in {:.2}s",
            self.results.len(),
            self.passed(),
            self.failed(),
            self.elapsed.as_secs_f64()
        )
    }
}

/// Runs `cases` in a pool built from `builder` and returns every result.
/// See [`Run::start`] for how the pool is set up.
pub fn run(builder: PoolBuilder, cases: &[Case]) -> Result<Report, PoolError> {
    Ok(Run::start(builder, cases)?.finish())
}

/// A run of cases under way: an iterator over their results in the order
/// of the cases, each as soon as it (and every case before it) is done.
///
/// ```no_run
/// use billiard_host::{cases, Pool};
///
/// let cases = cases::read_file("cases.jsonl")?;
/// let mut run = cases::Run::start(Pool::builder().plugin("libmy_plugin.so"), &cases)?;
/// for r in run.by_ref() {
///     println!("{} {}", if r.passed { "PASS" } else { "FAIL" }, r.case.name);
/// }
/// let report = run.finish();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Run<'c> {
    pool: Option<Pool>,
    started: Instant,
    pending: std::iter::Zip<std::slice::Iter<'c, Case>, std::vec::IntoIter<Submitted>>,
    events: Receiver<Event>,
    /// The caller's own event channel, if the builder had one: every event
    /// is passed on.
    forward: Option<Sender<Event>>,
    elapsed_of: HashMap<JobId, Duration>,
    results: Vec<CaseResult>,
}

type Submitted = Result<RawResult, TaskError>;

impl<'c> Run<'c> {
    /// Builds the pool and submits every case (one job each, JSON
    /// arguments; a case's own limits win over the pool's).
    ///
    /// A case without a hard time limit, in a pool without one, gets
    /// [`DEFAULT_TIME_LIMIT`]. The run watches the pool's events for the
    /// jobs' times; an event channel set with [`PoolBuilder::events`] still
    /// receives every event.
    pub fn start(builder: PoolBuilder, cases: &'c [Case]) -> Result<Run<'c>, PoolError> {
        let started = Instant::now();
        let mut builder = builder;
        let forward = builder.take_events();
        let (events_tx, events) = crossbeam_channel::unbounded::<Event>();
        let pool = builder.events(events_tx).build()?;
        let default_hard = pool
            .config()
            .time_limit
            .is_none()
            .then_some(DEFAULT_TIME_LIMIT);
        let handles: Vec<Submitted> = cases
            .iter()
            .map(|c| {
                let target = pool.find_task(&c.task)?;
                let args = serde_json::to_vec(&c.args)
                    .map_err(|e| TaskError::new(ErrorKind::BadArgs, e.to_string()))?;
                let limits = Limits {
                    soft: c.limits.soft,
                    hard: c.limits.hard.or(default_hard),
                };
                pool.apply_raw(target, Codec::Json, args, limits)
            })
            .collect();
        Ok(Run {
            pool: Some(pool),
            started,
            pending: cases.iter().zip(handles),
            events,
            forward,
            elapsed_of: HashMap::new(),
            results: Vec::with_capacity(cases.len()),
        })
    }

    /// The pool the cases run in.
    pub fn pool(&self) -> &Pool {
        self.pool
            .as_ref()
            .expect("the pool lives until the run is finished")
    }

    /// Waits for the remaining cases, shuts the pool down and returns
    /// every result (those already taken from the iterator included).
    pub fn finish(mut self) -> Report {
        while self.next().is_some() {}
        if let Some(pool) = self.pool.take() {
            let _ = pool.join();
        }
        self.drain_events();
        Report {
            results: std::mem::take(&mut self.results),
            elapsed: self.started.elapsed(),
        }
    }

    fn drain_events(&mut self) {
        for e in self.events.try_iter() {
            if let Event::JobFinished { job, elapsed, .. } = &e {
                self.elapsed_of.insert(*job, *elapsed);
            }
            if let Some(tx) = &self.forward {
                let _ = tx.send(e);
            }
        }
    }
}

impl Iterator for Run<'_> {
    type Item = CaseResult;

    fn next(&mut self) -> Option<CaseResult> {
        let (case, handle) = self.pending.next()?;
        let (got, id) = match handle {
            Ok(h) => (parse_outcome(h.get()), Some(h.id())),
            Err(e) => (Err(e), None),
        };
        self.drain_events();
        let elapsed = id.and_then(|id| self.elapsed_of.remove(&id));
        let r = CaseResult::new(case.clone(), got, elapsed);
        self.results.push(r.clone());
        Some(r)
    }
}

impl std::fmt::Debug for Run<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("done", &self.results.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_compare_by_value() {
        assert!(json_eq(&json!(2), &json!(2.0)));
        assert!(json_eq(&json!({"a": [1, 2.5]}), &json!({"a": [1.0, 2.5]})));
        assert!(!json_eq(&json!(2), &json!(3)));
        assert!(!json_eq(&json!(-1), &json!(u64::MAX)));
        assert!(!json_eq(&json!([1]), &json!([1, 2])));
        assert!(!json_eq(&json!({"a": 1}), &json!({"b": 1})));
        assert!(!json_eq(&json!({"a": 1}), &json!({"a": 1, "b": 1})));
        assert!(!json_eq(&json!("2"), &json!(2)));
        assert!(!json_eq(&json!(null), &json!(0)));
    }

    #[test]
    fn expectations() {
        let ok9 = Expect::Ok(json!(9));
        assert!(ok9.matches(&Ok(json!(9))));
        assert!(ok9.matches(&Ok(json!(9.0))));
        assert!(!ok9.matches(&Ok(json!(10))));
        assert!(!ok9.matches(&Err(TaskError::new(ErrorKind::Panic, "x"))));
        let panic_x = Expect::Error {
            kind: ErrorKind::Panic,
            message_contains: Some("boom".into()),
        };
        assert!(panic_x.matches(&Err(TaskError::new(ErrorKind::Panic, "a boom here"))));
        assert!(!panic_x.matches(&Err(TaskError::new(ErrorKind::Panic, "a bang"))));
        assert!(!panic_x.matches(&Err(TaskError::new(ErrorKind::TaskError, "boom"))));
        assert!(!panic_x.matches(&Ok(json!(1))));
        let any_panic = Expect::Error {
            kind: ErrorKind::Panic,
            message_contains: None,
        };
        assert!(any_panic.matches(&Err(TaskError::new(ErrorKind::Panic, ""))));
        assert_eq!(ok9.summary(), "ok 9");
        assert_eq!(any_panic.summary(), "panic");
        assert_eq!(panic_x.summary(), "panic ~ \"boom\"");
        assert_eq!(
            panic_x.to_json(),
            json!({"error": "panic", "message_contains": "boom"})
        );
    }

    #[test]
    fn a_failed_case_explains_itself() {
        let case = Case::new("add", json!([1, 2]), Expect::Ok(json!(4)));
        assert_eq!(case.name, "add(1, 2)");
        let r = CaseResult::new(case.clone(), Ok(json!(3)), None);
        assert!(!r.passed);
        assert_eq!(r.got_summary(), "ok 3");
        assert_eq!(r.heading(None), "add(1, 2) (line 0)");
        let named = CaseResult::new(case.named("wrong sum"), Ok(json!(3)), None);
        assert_eq!(
            named.heading(Some(Path::new("c.jsonl"))),
            "wrong sum (c.jsonl:0): add(1, 2)"
        );
        let text: Vec<String> = r.diff().iter().map(|l| l.to_string()).collect();
        assert_eq!(text, ["  {", "-   \"ok\": 4", "+   \"ok\": 3", "  }"]);
        let failed = CaseResult::new(
            Case::new("add", json!([1, 2]), Expect::Ok(json!(3))),
            Err(TaskError::new(ErrorKind::TaskError, "overflows\nat line 2")),
            Some(Duration::from_millis(3)),
        );
        assert_eq!(failed.got_summary(), "task_error: overflows\nat line 2");
        let report = Report {
            results: vec![r, failed, named],
            elapsed: Duration::from_millis(1234),
        };
        assert_eq!(report.summary(), "3 cases: 0 passed, 3 failed in 1.23s");
        assert!(!report.all_passed());
        assert_eq!(report.failures().count(), 3);
    }

    #[test]
    fn one_line_cuts_at_the_first_line_and_the_width() {
        assert_eq!(one_line("abc\ndef", 10), "abc");
        assert_eq!(one_line("abcdef", 4), "abc…");
        assert_eq!(one_line("héllo", 5), "héllo");
        assert_eq!(one_line("", 5), "");
    }

    #[test]
    fn diff_marks_changed_lines() {
        let d = diff(
            &json!({"ok": {"a": 1, "b": 2}}),
            &json!({"ok": {"a": 1, "b": 3}}),
        );
        let text: Vec<String> = d.iter().map(|l| l.to_string()).collect();
        assert_eq!(
            text,
            [
                "  {",
                "    \"ok\": {",
                "      \"a\": 1,",
                "-     \"b\": 2",
                "+     \"b\": 3",
                "    }",
                "  }"
            ]
        );
    }

    #[test]
    fn a_long_diff_is_cut_with_a_count() {
        let a: Vec<u32> = (0..500).collect();
        let b: Vec<u32> = (0..500).map(|x| x + 1).collect();
        let d = diff(&json!({"ok": a}), &json!({"ok": b}));
        assert_eq!(d.len(), MAX_DIFF_LINES + 1);
        let last = d.last().unwrap();
        assert_eq!(last.change, Change::Same);
        assert!(last.text.starts_with("... (") && last.text.ends_with(" more lines)"));
        // Only the two ends differ: 0 left, 500 came; the rest is shared.
        assert_eq!(
            d[2],
            DiffLine {
                change: Change::Expected,
                text: "    0,".into()
            }
        );
        assert!(d[3..MAX_DIFF_LINES]
            .iter()
            .all(|l| l.change == Change::Same));
    }

    #[test]
    fn a_diff_of_one_side_only_marks_every_line() {
        let d = diff(&json!(1), &json!([]));
        let text: Vec<String> = d.iter().map(|l| l.to_string()).collect();
        assert_eq!(text, ["- 1", "+ []"]);
    }
}
