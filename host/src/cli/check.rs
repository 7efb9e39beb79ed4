//! `billiard-host check PLUGIN.so [--cases cases.jsonl] [--junit FILE]`
//!
//! Verifies that a plugin loads (the file, its ABI layout and version), lists
//! its tasks, then runs golden cases under a real pool with limits and prints
//! a pass/fail table, with a diff of expected and got for each failure.
//! Optionally writes a JUnit XML report. Exit status: 0 when every case
//! passed, 1 when one failed, 2 for a usage error, an unreadable or invalid
//! cases file, or a plugin that cannot be loaded.
//!
//! A case is one JSON line:
//!
//! ```text
//! {"task": "square", "args": [3], "expect": {"ok": 9}}
//! {"name": "boom", "task": "panic", "args": ["x"], "expect": {"error": "panic", "message_contains": "x"}}
//! {"task": "spin_ms", "args": [60000], "time_limit": "200ms", "expect": {"error": "time_limit"}}
//! ```
//!
//! A thin layer over the library: the pool is built with
//! [`Pool::builder`], each case is one [`Pool::apply_raw`] job with JSON
//! arguments, and results are compared as JSON values.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anstyle::{AnsiColor, Style};
use billiard_host::{
    Codec, ErrorKind, Event, JobId, Limits, Outcome, PluginInfo, Pool, StartMethod, TaskError,
};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use serde_json::{Map, Value};

use super::exit;
use super::run::{parse_duration, parse_positive_u64, parse_size, parse_workers};

/// The hard time limit of a case when neither `--time-limit` nor the case
/// sets one: a hanging task fails its case instead of hanging the check.
const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(60);

const AFTER_HELP: &str = "\
Examples:
  billiard-host check libmy_plugin.so
  billiard-host check libmy_plugin.so --cases cases.jsonl
  billiard-host check libmy_plugin.so --cases cases.jsonl --junit check.xml --workers 4

Cases: one JSON object per line (blank lines and lines starting with // are skipped):
  {\"task\": \"square\", \"args\": [3], \"expect\": {\"ok\": 9}}
  {\"name\": \"boom\", \"task\": \"panic\", \"args\": [\"x\"], \"expect\": {\"error\": \"panic\", \"message_contains\": \"x\"}}
  {\"task\": \"spin_ms\", \"args\": [60000], \"time_limit\": \"200ms\", \"expect\": {\"error\": \"time_limit\"}}
  `expect` is {\"ok\": VALUE} (compared as JSON; 2 and 2.0 are equal) or {\"error\": KIND} with an
  optional \"message_contains\". KIND is one of panic, task_error, bad_args, unknown_task,
  worker_lost, soft_time_limit, time_limit, terminated. Optional: \"name\", \"args\" (default []),
  \"time_limit\", \"soft_time_limit\" (per case; default: the flags).

Exit status: 0 every case passed (or no cases and the plugin loads); 1 a case failed;
  2 usage error, unreadable or invalid cases file, or a plugin that cannot be loaded.";

/// When to colour the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorWhen {
    /// On a terminal, unless NO_COLOR is set.
    #[default]
    Auto,
    Always,
    Never,
}

#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The plugin file (a .so built from a cdylib crate).
    plugin: PathBuf,
    /// Golden cases to run, one JSON object per line.
    #[arg(long, value_name = "FILE")]
    cases: Option<PathBuf>,
    /// Write a JUnit XML report of the cases to FILE.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Worker processes (1 to 512; default: one per case, at most the
    /// number of CPUs).
    #[arg(short, long, value_name = "N", value_parser = parse_workers)]
    workers: Option<usize>,
    /// Kill a case's worker after this long; the case ends `time_limit`
    /// (default 60s; a case's own "time_limit" wins).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    time_limit: Option<Duration>,
    /// Ask a case's task to stop after this long (a case's own
    /// "soft_time_limit" wins).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    soft_time_limit: Option<Duration>,
    /// Replace a worker after it ran N jobs.
    #[arg(long, value_name = "N", value_parser = parse_positive_u64)]
    max_tasks_per_child: Option<u64>,
    /// Replace a worker once its memory grew by more than SIZE (e.g. 200MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_memory_per_child: Option<u64>,
    /// Cap each worker's address space (RLIMIT_AS) at SIZE (e.g. 2GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    address_space_limit: Option<u64>,
    /// How workers are created.
    #[arg(long, value_name = "METHOD", default_value_t = StartMethod::Forkserver)]
    start_method: StartMethod,
    /// Colour the table.
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = ColorWhen::Auto)]
    color: ColorWhen,
    /// Give up loading the plugin after this long (its initialization code
    /// may block).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    load_timeout: Duration,
}

/// What a case expects.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Ok(Value),
    Error {
        kind: ErrorKind,
        message_contains: Option<String>,
    },
}

impl Expect {
    /// The expectation as JSON, shaped like [`got_json`] for the diff.
    fn to_json(&self) -> Value {
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

    /// One line for the table.
    fn short(&self) -> String {
        match self {
            Expect::Ok(v) => format!("ok {}", compact(v)),
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
struct Case {
    name: String,
    /// Whether the name came from the file (else it is `task(args)`).
    named: bool,
    /// 1-based line in the cases file.
    line: usize,
    task: String,
    /// The JSON argument array.
    args: Value,
    limits: Limits,
    expect: Expect,
}

/// Parses a cases file; every problem is reported, with its line number.
fn parse_cases(text: &str) -> Result<Vec<Case>, Vec<String>> {
    let mut cases = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with("//") {
            continue;
        }
        match parse_case(t, i + 1) {
            Ok(c) => cases.push(c),
            Err(e) => errors.push(format!("line {}: {e}", i + 1)),
        }
    }
    if errors.is_empty() {
        Ok(cases)
    } else {
        Err(errors)
    }
}

const EXPECT_FORM: &str = "expect {\"ok\": VALUE} or {\"error\": KIND}";

const CASE_FIELDS: &str = "task, args, expect, name, time_limit, soft_time_limit, message_contains";

fn parse_case(line: &str, lineno: usize) -> Result<Case, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut obj) = v else {
        return Err("a case is a JSON object like {\"task\": \"square\", \"args\": [3], \"expect\": {\"ok\": 9}}".into());
    };
    let string = |obj: &mut Map<String, Value>, field: &str| -> Result<Option<String>, String> {
        match obj.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!("\"{field}\" must be a string, not {other}")),
        }
    };
    let task = string(&mut obj, "task")?.ok_or("missing \"task\" (the task to run)")?;
    let name = string(&mut obj, "name")?;
    let args = match obj.remove("args") {
        None | Some(Value::Null) => Value::Array(vec![]),
        Some(a @ Value::Array(_)) => a,
        Some(other) => return Err(format!("\"args\" must be a JSON array, not {other}")),
    };
    // As in `run`'s object lines: 0 is refused.
    let duration = |s: Option<String>, field: &str| super::input::duration(s.as_deref(), field);
    let limits = Limits {
        hard: duration(string(&mut obj, "time_limit")?, "time_limit")?,
        soft: duration(string(&mut obj, "soft_time_limit")?, "soft_time_limit")?,
    };
    let top_contains = string(&mut obj, "message_contains")?;
    let expect = match obj.remove("expect") {
        Some(Value::Object(e)) => parse_expect(e, top_contains)?,
        Some(other) => {
            return Err(format!(
                "\"expect\" must be an object, not {other}; {EXPECT_FORM}"
            ))
        }
        None => return Err(format!("missing \"expect\"; {EXPECT_FORM}")),
    };
    if let Some(field) = obj.keys().next() {
        return Err(format!("unknown field \"{field}\" (known: {CASE_FIELDS})"));
    }
    let named = name.is_some();
    let name = name.unwrap_or_else(|| format!("{task}({})", args_text(&args)));
    Ok(Case {
        name,
        named,
        line: lineno,
        task,
        args,
        limits,
        expect,
    })
}

fn parse_expect(mut e: Map<String, Value>, top_contains: Option<String>) -> Result<Expect, String> {
    let ok = e.remove("ok");
    let error = e.remove("error");
    let contains = match e.remove("message_contains") {
        None | Some(Value::Null) => top_contains,
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            return Err(format!(
                "\"message_contains\" must be a string, not {other}"
            ))
        }
    };
    if let Some(field) = e.keys().next() {
        return Err(format!(
            "unknown field \"{field}\" in \"expect\" (known: ok, error, message_contains)"
        ));
    }
    match (ok, error) {
        (Some(v), None) => {
            if contains.is_some() {
                return Err(
                    "\"message_contains\" goes with {\"error\": KIND}, not with \"ok\"".into(),
                );
            }
            Ok(Expect::Ok(v))
        }
        (None, Some(Value::String(k))) => {
            let kind = ErrorKind::parse(&k).ok_or_else(|| {
                let kinds: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown error kind {k:?} (one of: {})", kinds.join(", "))
            })?;
            Ok(Expect::Error {
                kind,
                message_contains: contains,
            })
        }
        (None, Some(other)) => Err(format!(
            "\"error\" must be an error kind such as \"panic\", not {other}"
        )),
        (Some(_), Some(_)) => Err("\"expect\" has both \"ok\" and \"error\"; pick one".into()),
        (None, None) => Err("\"expect\" needs \"ok\" or \"error\"".into()),
    }
}

/// `[3, "x"]` as `3, "x"`.
fn args_text(args: &Value) -> String {
    match args {
        Value::Array(items) => items.iter().map(compact).collect::<Vec<_>>().join(", "),
        other => compact(other),
    }
}

fn compact(v: &Value) -> String {
    v.to_string()
}

/// JSON equality where numbers compare by value: `2` equals `2.0`.
fn json_eq(a: &Value, b: &Value) -> bool {
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
fn got_json(outcome: &Result<Value, TaskError>) -> Value {
    match outcome {
        Ok(v) => serde_json::json!({ "ok": v }),
        Err(e) => serde_json::json!({ "error": e.kind.as_str(), "message": e.message }),
    }
}

/// A job's outcome with its result parsed as JSON (a result that is not
/// JSON is a `task_error`, as in `run`).
fn parse_outcome(outcome: Outcome) -> Result<Value, TaskError> {
    let bytes = outcome?;
    serde_json::from_slice(&bytes).map_err(|e| {
        TaskError::new(
            ErrorKind::TaskError,
            format!("the task's result is not valid JSON: {e}"),
        )
    })
}

fn passes(expect: &Expect, got: &Result<Value, TaskError>) -> bool {
    match (expect, got) {
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

/// A line diff (longest common subsequence) of `a` and `b`: each line with
/// ' ' (both), '-' (only in a) or '+' (only in b).
fn diff_lines<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<(char, &'a str)> {
    let (n, m) = (a.len(), b.len());
    if n.saturating_mul(m) > 4_000_000 {
        // Too big to align: show both whole.
        let mut out: Vec<(char, &str)> = a.iter().map(|l| ('-', *l)).collect();
        out.extend(b.iter().map(|l| ('+', *l)));
        return out;
    }
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(n + m);
    while i < n && j < m {
        if a[i] == b[j] {
            out.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if lcs[i + 1][j] >= lcs[i][j + 1] {
            out.push(('-', a[i]));
            i += 1;
        } else {
            out.push(('+', b[j]));
            j += 1;
        }
    }
    out.extend(a[i..].iter().map(|l| ('-', *l)));
    out.extend(b[j..].iter().map(|l| ('+', *l)));
    out
}

/// The diff of expected and got, pretty-printed JSON, one line each with a
/// `- `/`+ `/`  ` marker (at most `MAX_DIFF_LINES` lines).
fn diff_text(expected: &Value, got: &Value) -> Vec<(char, String)> {
    const MAX_DIFF_LINES: usize = 200;
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    let (e, g) = (pretty(expected), pretty(got));
    let e: Vec<&str> = e.lines().collect();
    let g: Vec<&str> = g.lines().collect();
    let mut out: Vec<(char, String)> = diff_lines(&e, &g)
        .into_iter()
        .map(|(c, l)| (c, l.to_string()))
        .collect();
    if out.len() > MAX_DIFF_LINES {
        let more = out.len() - MAX_DIFF_LINES;
        out.truncate(MAX_DIFF_LINES);
        out.push((' ', format!("... ({more} more lines)")));
    }
    out
}

/// Shortens `s` to one line of at most `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let s = s.lines().next().unwrap_or("");
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Colours for the table (all plain when colour is off).
struct Palette {
    pass: Style,
    fail: Style,
    dim: Style,
    bold: Style,
    minus: Style,
    plus: Style,
}

impl Palette {
    fn new(on: bool) -> Palette {
        if !on {
            let plain = Style::new();
            return Palette {
                pass: plain,
                fail: plain,
                dim: plain,
                bold: plain,
                minus: plain,
                plus: plain,
            };
        }
        let fg = |c: AnsiColor| Style::new().fg_color(Some(c.into()));
        Palette {
            pass: fg(AnsiColor::Green).bold(),
            fail: fg(AnsiColor::Red).bold(),
            dim: Style::new().dimmed(),
            bold: Style::new().bold(),
            minus: fg(AnsiColor::Red),
            plus: fg(AnsiColor::Green),
        }
    }
}

/// `text` in `style` (no escape codes at all for the plain style).
fn paint(style: Style, text: &str) -> String {
    if style == Style::new() {
        text.to_string()
    } else {
        format!("{style}{text}{style:#}")
    }
}

fn use_color(when: ColorWhen) -> bool {
    match when {
        ColorWhen::Always => true,
        ColorWhen::Never => false,
        ColorWhen::Auto => {
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            std::io::stdout().is_terminal() && !no_color
        }
    }
}

/// The result of one case.
struct Ran {
    case: Case,
    got: Result<Value, TaskError>,
    elapsed: Option<Duration>,
    passed: bool,
}

fn fail_usage(msg: impl std::fmt::Display) -> i32 {
    eprintln!("error: {msg}");
    exit::USAGE
}

pub fn run(args: Args) -> i32 {
    // In a child process: the plugin's own code may end or block the
    // loading process (see `inspect::load_isolated`).
    let info = match super::inspect::load_isolated(&args.plugin, args.load_timeout) {
        Ok(info) => info,
        Err(e) => return fail_usage(e),
    };
    let cases = match &args.cases {
        None => Vec::new(),
        Some(path) => match std::fs::read_to_string(path) {
            Err(e) => return fail_usage(format_args!("cannot read {}: {e}", path.display())),
            Ok(text) => match parse_cases(&text) {
                Ok(c) => c,
                Err(errors) => {
                    for e in &errors {
                        eprintln!("error: {}: {e}", path.display());
                    }
                    eprintln!(
                        "error: {} invalid case line(s) in {}; nothing was run",
                        errors.len(),
                        path.display()
                    );
                    return exit::USAGE;
                }
            },
        },
    };
    if let (Some(cases), Some(junit)) = (&args.cases, &args.junit) {
        if super::run::same_file(cases, junit) {
            return fail_usage(format_args!(
                "--junit {} is the cases file (--cases {}): writing the report would \
                 destroy the cases; write it to another file",
                junit.display(),
                cases.display()
            ));
        }
    }
    // Create the report file now: a typo in its path should not cost a run.
    let junit_file = match &args.junit {
        Some(p) => match std::fs::File::create(p) {
            Ok(f) => Some(f),
            Err(e) => {
                return fail_usage(format_args!(
                    "cannot create the JUnit file {}: {e}",
                    p.display()
                ))
            }
        },
        None => None,
    };
    let palette = Palette::new(use_color(args.color));
    let mut out = std::io::stdout().lock();
    let info = &info;
    let _ = write_header(&mut out, info, &palette);

    let started = Instant::now();
    let ran = if cases.is_empty() {
        let _ = writeln!(
            out,
            "\nno cases to run (pass --cases FILE to run golden cases)"
        );
        Vec::new()
    } else {
        match run_cases(&args, &cases, &mut out, &palette) {
            Ok(ran) => ran,
            Err(code) => return code,
        }
    };
    let total = started.elapsed();
    let failed = ran.iter().filter(|r| !r.passed).count();
    if !ran.is_empty() {
        let _ = write_failures(&mut out, &ran, args.cases.as_deref(), &palette);
        let summary = format!(
            "{} cases: {} passed, {failed} failed in {:.2}s",
            ran.len(),
            ran.len() - failed,
            total.as_secs_f64()
        );
        let style = if failed == 0 {
            palette.pass
        } else {
            palette.fail
        };
        let _ = writeln!(out, "\n{}", paint(style, &summary));
    }
    let _ = out.flush();
    drop(out);

    if let (Some(file), Some(path)) = (junit_file, &args.junit) {
        let report = junit_report(info, &ran, total);
        if let Err(e) = report.serialize(file) {
            return fail_usage(format_args!(
                "cannot write the JUnit file {}: {e}",
                path.display()
            ));
        }
    }
    if failed > 0 {
        exit::JOBS_FAILED
    } else {
        exit::OK
    }
}

fn write_header(out: &mut impl Write, info: &PluginInfo, p: &Palette) -> std::io::Result<()> {
    writeln!(
        out,
        "{} {} {} loads: ABI version {}, billiard-plugin-api {}",
        paint(p.pass, "ok"),
        paint(p.bold, &info.name),
        info.version,
        info.abi_version,
        info.api_version
    )?;
    writeln!(out, "   file: {}", info.path.display())?;
    writeln!(out, "   tasks: {}", info.tasks.len())?;
    for t in &info.tasks {
        writeln!(out, "     {}", t.signature())?;
    }
    Ok(())
}

/// Runs the cases in a pool, printing one table row per case as it
/// finishes (in file order).
fn run_cases(
    args: &Args,
    cases: &[Case],
    out: &mut impl Write,
    p: &Palette,
) -> Result<Vec<Ran>, i32> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let workers = args.workers.unwrap_or(cases.len().clamp(1, cpus));
    let (events_tx, events) = crossbeam_channel::unbounded::<Event>();
    let mut b = Pool::builder()
        .workers(workers)
        .plugin(&args.plugin)
        .start_method(args.start_method)
        .time_limit(args.time_limit.unwrap_or(DEFAULT_TIME_LIMIT))
        .events(events_tx);
    b = super::WorkerLimits {
        max_tasks_per_child: args.max_tasks_per_child,
        max_memory_per_child: args.max_memory_per_child,
        address_space_limit: args.address_space_limit,
        soft_time_limit: args.soft_time_limit,
        load_timeout: Some(args.load_timeout),
    }
    .apply(b);
    let pool = b.build().map_err(fail_usage)?;

    let limits_text = match (args.soft_time_limit, args.time_limit) {
        (Some(s), h) => format!(
            "soft time limit {}, time limit {}",
            humantime::format_duration(s),
            humantime::format_duration(h.unwrap_or(DEFAULT_TIME_LIMIT))
        ),
        (None, h) => format!(
            "time limit {}",
            humantime::format_duration(h.unwrap_or(DEFAULT_TIME_LIMIT))
        ),
    };
    let _ = writeln!(
        out,
        "\nrunning {} case(s) in a pool of {workers} worker(s), {limits_text}\n",
        cases.len()
    );

    // Submit every case, then take the outcomes in file order.
    let handles: Vec<Result<_, TaskError>> = cases
        .iter()
        .map(|c| {
            let target = pool.find_task(&c.task)?;
            let args = serde_json::to_vec(&c.args)
                .map_err(|e| TaskError::new(ErrorKind::BadArgs, e.to_string()))?;
            pool.apply_raw(target, Codec::Json, args, c.limits)
        })
        .collect();

    let name_width = cases
        .iter()
        .map(|c| one_line(&c.name, 40).chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let expect_width = cases
        .iter()
        .map(|c| one_line(&c.expect.short(), 30).chars().count())
        .max()
        .unwrap_or(8)
        .max(8);
    let _ = writeln!(
        out,
        "{}",
        paint(
            p.dim,
            &format!(
                "  {:<6}{:>8}  {:<name_width$}  {:<expect_width$}  got",
                "result", "time", "case", "expected"
            )
        )
    );

    let mut elapsed_of: HashMap<JobId, Duration> = HashMap::new();
    let mut ran = Vec::with_capacity(cases.len());
    for (case, handle) in cases.iter().zip(handles) {
        let (got, id) = match handle {
            Ok(h) => (parse_outcome(h.get()), Some(h.id())),
            Err(e) => (Err(e), None),
        };
        for e in events.try_iter() {
            if let Event::JobFinished { job, elapsed, .. } = e {
                elapsed_of.insert(job, elapsed);
            }
        }
        let elapsed = id.and_then(|id| elapsed_of.get(&id).copied());
        let passed = passes(&case.expect, &got);
        let got_short = match &got {
            Ok(v) => format!("ok {}", compact(v)),
            Err(e) => format!("{}: {}", e.kind, e.message),
        };
        let time = elapsed.map_or_else(|| "-".to_string(), format_elapsed);
        let (status, style) = if passed {
            ("PASS", p.pass)
        } else {
            ("FAIL", p.fail)
        };
        let _ = writeln!(
            out,
            "  {}{:>8}  {:<name_width$}  {:<expect_width$}  {}",
            paint(style, &format!("{status:<6}")),
            time,
            one_line(&case.name, 40),
            one_line(&case.expect.short(), 30),
            one_line(&got_short, 60),
        );
        ran.push(Ran {
            case: case.clone(),
            got,
            elapsed,
            passed,
        });
    }
    drop(events);
    let _ = pool.join();
    Ok(ran)
}

fn format_elapsed(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{}µs", d.as_micros())
    } else if d < Duration::from_secs(10) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// The failure explanation of a case, without colour: where it is, what
/// was expected and got, and the diff.
fn failure_text(r: &Ran, file: Option<&Path>) -> (String, Vec<(char, String)>) {
    let place = match file {
        Some(f) => format!("{}:{}", f.display(), r.case.line),
        None => format!("line {}", r.case.line),
    };
    let head = if r.case.named {
        format!(
            "{} ({place}): {}({})",
            r.case.name,
            r.case.task,
            one_line(&args_text(&r.case.args), 200)
        )
    } else {
        format!("{} ({place})", one_line(&r.case.name, 200))
    };
    (head, diff_text(&r.case.expect.to_json(), &got_json(&r.got)))
}

fn write_failures(
    out: &mut impl Write,
    ran: &[Ran],
    file: Option<&Path>,
    p: &Palette,
) -> std::io::Result<()> {
    let failed: Vec<&Ran> = ran.iter().filter(|r| !r.passed).collect();
    if failed.is_empty() {
        return Ok(());
    }
    writeln!(out, "\n{}", paint(p.bold, "failures:"))?;
    for r in failed {
        let (head, diff) = failure_text(r, file);
        writeln!(out, "\n  {} {head}", paint(p.fail, "FAIL"))?;
        writeln!(
            out,
            "    {} {}",
            paint(p.minus, "- expected"),
            paint(p.plus, "+ got")
        )?;
        for (mark, line) in diff {
            let text = format!("{mark} {line}");
            let styled = match mark {
                '-' => paint(p.minus, &text),
                '+' => paint(p.plus, &text),
                _ => text,
            };
            writeln!(out, "    {styled}")?;
        }
    }
    Ok(())
}

fn junit_report(info: &PluginInfo, ran: &[Ran], total: Duration) -> Report {
    let mut report = Report::new("billiard-host check");
    let mut suite = TestSuite::new(info.name.as_str());
    suite.set_time(total);
    suite.add_property(("plugin", info.path.display().to_string().as_str()));
    suite.add_property(("version", info.version.as_str()));
    for r in ran {
        let status = if r.passed {
            TestCaseStatus::success()
        } else {
            let (head, diff) = failure_text(r, None);
            let got = match &r.got {
                Ok(v) => format!("ok {}", compact(v)),
                Err(e) => format!("{}: {}", e.kind, e.message),
            };
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_message(format!(
                "expected {}, got {}",
                one_line(&r.case.expect.short(), 200),
                one_line(&got, 200)
            ));
            s.set_type("mismatch");
            let body: Vec<String> = diff.iter().map(|(m, l)| format!("{m} {l}")).collect();
            s.set_description(format!("{head}\n- expected + got\n{}", body.join("\n")));
            s
        };
        let mut tc = TestCase::new(r.case.name.as_str(), status);
        tc.set_classname(format!("{}.{}", info.name, r.case.task));
        if let Some(d) = r.elapsed {
            tc.set_time(d);
        }
        suite.add_test_case(tc);
    }
    report.add_test_suite(suite);
    report.set_time(total);
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_cases() {
        let text = r#"
{"task": "square", "args": [3], "expect": {"ok": 9}}
// a comment
{"name": "boom", "task": "panic", "args": ["x"], "expect": {"error": "panic", "message_contains": "x"}}
{"task": "spin", "args": [1], "time_limit": "200ms", "soft_time_limit": "50ms", "expect": {"error": "time_limit"}, "message_contains": "killed"}
{"task": "version", "expect": {"ok": null}}
"#;
        let cases = parse_cases(text).unwrap();
        assert_eq!(cases.len(), 4);
        assert_eq!(cases[0].name, "square(3)");
        assert_eq!(cases[0].line, 2);
        assert_eq!(cases[0].expect, Expect::Ok(json!(9)));
        assert_eq!(cases[1].name, "boom");
        assert_eq!(
            cases[1].expect,
            Expect::Error {
                kind: ErrorKind::Panic,
                message_contains: Some("x".into())
            }
        );
        assert_eq!(cases[2].limits.hard, Some(Duration::from_millis(200)));
        assert_eq!(cases[2].limits.soft, Some(Duration::from_millis(50)));
        assert_eq!(
            cases[2].expect,
            Expect::Error {
                kind: ErrorKind::TimeLimit,
                message_contains: Some("killed".into())
            }
        );
        assert_eq!(cases[3].args, json!([]));
        assert_eq!(cases[3].expect, Expect::Ok(Value::Null));
    }

    #[test]
    fn reports_every_bad_line() {
        let text = r#"{"task": "a", "args": [1], "expect": {"ok": 1}}
not json
{"args": [1], "expect": {"ok": 1}}
{"task": "a", "expect": {"error": "nope"}}
{"task": "a", "expect": {"ok": 1, "error": "panic"}}
{"task": "a", "args": 3, "expect": {"ok": 1}}
{"task": "a", "expect": {"ok": 1}, "tiem_limit": "1s"}
{"task": "a", "time_limit": "soon", "expect": {"ok": 1}}
{"task": "a"}
"#;
        let errors = parse_cases(text).unwrap_err();
        assert_eq!(errors.len(), 8, "{errors:#?}");
        assert!(errors[0].starts_with("line 2: not JSON"), "{}", errors[0]);
        assert!(errors[1].contains("missing \"task\""));
        assert!(errors[2].contains("unknown error kind \"nope\""));
        assert!(errors[3].contains("both"));
        assert!(errors[4].contains("\"args\" must be a JSON array"));
        assert!(errors[5].contains("unknown field \"tiem_limit\""));
        assert!(errors[6].contains("\"time_limit\""));
        assert!(errors[7].contains("missing \"expect\""));
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(json_eq(&json!(2), &json!(2.0)));
        assert!(json_eq(&json!({"a": [1, 2.5]}), &json!({"a": [1.0, 2.5]})));
        assert!(!json_eq(&json!(2), &json!(3)));
        assert!(!json_eq(&json!(-1), &json!(u64::MAX)));
        assert!(!json_eq(&json!([1]), &json!([1, 2])));
        assert!(!json_eq(&json!({"a": 1}), &json!({"b": 1})));
        assert!(!json_eq(&json!("2"), &json!(2)));
    }

    #[test]
    fn expectations() {
        let ok9 = Expect::Ok(json!(9));
        assert!(passes(&ok9, &Ok(json!(9))));
        assert!(!passes(&ok9, &Ok(json!(10))));
        assert!(!passes(&ok9, &Err(TaskError::new(ErrorKind::Panic, "x"))));
        let panic_x = Expect::Error {
            kind: ErrorKind::Panic,
            message_contains: Some("boom".into()),
        };
        assert!(passes(
            &panic_x,
            &Err(TaskError::new(ErrorKind::Panic, "a boom here"))
        ));
        assert!(!passes(
            &panic_x,
            &Err(TaskError::new(ErrorKind::Panic, "a bang"))
        ));
        assert!(!passes(
            &panic_x,
            &Err(TaskError::new(ErrorKind::TaskError, "boom"))
        ));
        assert!(!passes(&panic_x, &Ok(json!(1))));
    }

    #[test]
    fn diff_marks_changed_lines() {
        let d = diff_text(
            &json!({"ok": {"a": 1, "b": 2}}),
            &json!({"ok": {"a": 1, "b": 3}}),
        );
        let text: Vec<String> = d.iter().map(|(m, l)| format!("{m} {l}")).collect();
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
        let d = diff_lines(&["a", "b"], &[]);
        assert_eq!(d, [('-', "a"), ('-', "b")]);
    }

    #[test]
    fn plain_palette_has_no_escapes() {
        let p = Palette::new(false);
        assert_eq!(paint(p.fail, "FAIL"), "FAIL");
        let p = Palette::new(true);
        assert!(paint(p.fail, "FAIL").contains("\x1b["));
    }
}
