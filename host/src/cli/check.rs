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
//! A thin layer over the library: flags to a [`Pool::builder`], the cases
//! file to [`cases::read_file`], the run to [`cases::Run`] (parsing,
//! matching, diffs, the summary and the JUnit report all live in
//! [`billiard_host::cases`]); this file only renders the table, in colour
//! through `anstream` (only on a terminal; `NO_COLOR` honoured).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anstream::{AutoStream, ColorChoice};
use anstyle::{AnsiColor, Style};
use billiard_host::cases::{self, one_line, Case, CaseResult, Change, ReadError, Report};
use billiard_host::{PluginInfo, Pool};

use super::exit::{self, usage};
use super::loader::load_isolated;
use super::pool_flags::PoolFlags;
use super::values::same_file;

/// The hard time limit of a case when neither `--time-limit` nor the case
/// sets one: a hanging task fails its case instead of hanging the check.
const DEFAULT_TIME_LIMIT: Duration = cases::DEFAULT_TIME_LIMIT;

/// `check --load-timeout`'s default (shorter than the pool's 60s: a check
/// loads one plugin).
const DEFAULT_LOAD_TIMEOUT: &str = "30s";

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
#[command(
    after_help = AFTER_HELP,
    // `run`'s pool flags, with help (and a load timeout) for cases.
    mut_arg("workers", |a| a.help(
        "Worker processes (1 to 512; default: one per case, at most the number of CPUs)."
    )),
    mut_arg("time_limit", |a| a.help(
        "Kill a case's worker after this long; the case ends `time_limit` (default 60s; a \
         case's own \"time_limit\" wins)."
    )),
    mut_arg("soft_time_limit", |a| a.help(
        "Ask a case's task to stop after this long (a case's own \"soft_time_limit\" wins)."
    )),
    mut_arg("load_timeout", |a| a.default_value(DEFAULT_LOAD_TIMEOUT).help(
        "Give up loading the plugin after this long (its initialization code may block)."
    )),
)]
pub struct Args {
    /// The plugin file (a .so built from a cdylib crate).
    plugin: PathBuf,
    /// Golden cases to run, one JSON object per line.
    #[arg(long, value_name = "FILE")]
    cases: Option<PathBuf>,
    /// Write a JUnit XML report of the cases to FILE.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    #[command(flatten)]
    pool: PoolFlags,
    /// Colour the table.
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = ColorWhen::Auto)]
    color: ColorWhen,
}

/// Colours for the table; `anstream` drops them where colour is off.
struct Palette {
    pass: Style,
    fail: Style,
    dim: Style,
    bold: Style,
    minus: Style,
    plus: Style,
}

const PALETTE: Palette = Palette {
    pass: Style::new()
        .fg_color(Some(anstyle::Color::Ansi(AnsiColor::Green)))
        .bold(),
    fail: Style::new()
        .fg_color(Some(anstyle::Color::Ansi(AnsiColor::Red)))
        .bold(),
    dim: Style::new().dimmed(),
    bold: Style::new().bold(),
    minus: Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Red))),
    plus: Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Green))),
};

/// `text` in `style`.
fn paint(style: Style, text: &str) -> String {
    format!("{style}{text}{style:#}")
}

fn color_choice(when: ColorWhen) -> ColorChoice {
    match when {
        ColorWhen::Always => ColorChoice::Always,
        ColorWhen::Never => ColorChoice::Never,
        // On a terminal, unless NO_COLOR (or CLICOLOR=0) says otherwise.
        ColorWhen::Auto => ColorChoice::Auto,
    }
}

pub fn run(args: Args) -> i32 {
    // In a child process: the plugin's own code may end or block the
    // loading process (see `inspect::load_isolated`).
    let info = match load_isolated(&args.plugin, load_timeout(&args), false) {
        Ok(info) => info,
        Err(e) => return usage(e),
    };
    let cases = match &args.cases {
        None => Vec::new(),
        Some(path) => match cases::read_file(path) {
            Ok(c) => c,
            Err(e @ ReadError::Io { .. }) => return usage(e),
            Err(e @ ReadError::Invalid { .. }) => {
                if let ReadError::Invalid { errors, .. } = &e {
                    for line in errors {
                        eprintln!("error: {}: {line}", path.display());
                    }
                }
                eprintln!("error: {e}; nothing was run");
                return exit::USAGE;
            }
        },
    };
    if let (Some(cases), Some(junit)) = (&args.cases, &args.junit) {
        if same_file(cases, junit) {
            return usage(format_args!(
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
                return usage(format_args!(
                    "cannot create the JUnit file {}: {e}",
                    p.display()
                ))
            }
        },
        None => None,
    };
    let p = &PALETTE;
    let mut out = AutoStream::new(std::io::stdout().lock(), color_choice(args.color));
    let _ = write_header(&mut out, &info, p);
    let sandbox = args.pool.sandbox.policy();
    if !sandbox.is_none() {
        let _ = writeln!(out, "   sandbox: {}", sandbox.summary());
    }

    let started = Instant::now();
    let report = if cases.is_empty() {
        let _ = writeln!(
            out,
            "\nno cases to run (pass --cases FILE to run golden cases)"
        );
        Report {
            results: Vec::new(),
            elapsed: started.elapsed(),
        }
    } else {
        match run_cases(&args, &cases, &mut out, p) {
            Ok(report) => report,
            Err(code) => return code,
        }
    };
    if !report.results.is_empty() {
        let _ = write_failures(&mut out, &report, args.cases.as_deref(), p);
        let style = if report.all_passed() { p.pass } else { p.fail };
        let _ = writeln!(out, "\n{}", paint(style, &report.summary()));
    }
    let _ = out.flush();
    drop(out);

    if let (Some(file), Some(path)) = (junit_file, &args.junit) {
        if let Err(e) = report.write_junit(&info, file) {
            return usage(format_args!(
                "cannot write the JUnit file {}: {e}",
                path.display()
            ));
        }
    }
    if report.all_passed() {
        exit::OK
    } else {
        exit::JOBS_FAILED
    }
}

fn write_header(out: &mut impl Write, info: &PluginInfo, p: &Palette) -> std::io::Result<()> {
    let api = match info.kind {
        billiard_host::PluginKind::Rust => format!("billiard-plugin-api {}", info.api_version),
        billiard_host::PluginKind::C => format!("a C plugin, {}", info.api_version),
    };
    writeln!(
        out,
        "{} {} {} loads: ABI version {}, {api}",
        paint(p.pass, "ok"),
        paint(p.bold, &info.name),
        info.version,
        info.abi_version,
    )?;
    writeln!(out, "   file: {}", info.path.display())?;
    writeln!(out, "   tasks: {}", info.tasks.len())?;
    for t in &info.tasks {
        writeln!(out, "     {}", t.signature())?;
    }
    Ok(())
}

/// `--load-timeout` (it has a default: never unset).
fn load_timeout(args: &Args) -> Duration {
    args.pool.load_timeout.unwrap_or(Duration::from_secs(30))
}

/// Runs the cases in a pool, printing one table row per case as it
/// finishes (in file order).
fn run_cases(
    args: &Args,
    cases: &[Case],
    out: &mut impl Write,
    p: &Palette,
) -> Result<Report, i32> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let workers = args.pool.workers.unwrap_or(cases.len().clamp(1, cpus));
    let b = args
        .pool
        .apply(Pool::builder())
        .workers(workers)
        .plugin(&args.plugin)
        .time_limit(args.pool.time_limit.unwrap_or(DEFAULT_TIME_LIMIT))
        .load_timeout(load_timeout(args));
    let mut run = cases::Run::start(b, cases).map_err(usage)?;

    let limits_text = match (args.pool.soft_time_limit, args.pool.time_limit) {
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

    let name_width = cases
        .iter()
        .map(|c| one_line(&c.name, 40).chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let expect_width = cases
        .iter()
        .map(|c| one_line(&c.expect.summary(), 30).chars().count())
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
    for r in run.by_ref() {
        let _ = write_row(out, &r, name_width, expect_width, p);
    }
    Ok(run.finish())
}

fn write_row(
    out: &mut impl Write,
    r: &CaseResult,
    name_width: usize,
    expect_width: usize,
    p: &Palette,
) -> std::io::Result<()> {
    let time = r.elapsed.map_or_else(|| "-".to_string(), format_elapsed);
    let (status, style) = if r.passed {
        ("PASS", p.pass)
    } else {
        ("FAIL", p.fail)
    };
    writeln!(
        out,
        "  {}{:>8}  {:<name_width$}  {:<expect_width$}  {}",
        paint(style, &format!("{status:<6}")),
        time,
        one_line(&r.case.name, 40),
        one_line(&r.case.expect.summary(), 30),
        one_line(&r.got_summary(), 60),
    )
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

fn write_failures(
    out: &mut impl Write,
    report: &Report,
    file: Option<&Path>,
    p: &Palette,
) -> std::io::Result<()> {
    if report.all_passed() {
        return Ok(());
    }
    writeln!(out, "\n{}", paint(p.bold, "failures:"))?;
    for r in report.failures() {
        writeln!(out, "\n  {} {}", paint(p.fail, "FAIL"), r.heading(file))?;
        writeln!(
            out,
            "    {} {}",
            paint(p.minus, "- expected"),
            paint(p.plus, "+ got")
        )?;
        for line in r.diff() {
            let text = line.to_string();
            let styled = match line.change {
                Change::Expected => paint(p.minus, &text),
                Change::Got => paint(p.plus, &text),
                Change::Same => text,
            };
            writeln!(out, "    {styled}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use billiard_host::cases::Expect;
    use serde_json::json;

    fn rendered(choice: ColorChoice, f: impl FnOnce(&mut AutoStream<Vec<u8>>)) -> String {
        let mut out = AutoStream::new(Vec::new(), choice);
        f(&mut out);
        String::from_utf8(out.into_inner()).unwrap()
    }

    #[test]
    fn colour_only_when_chosen() {
        let row = |out: &mut AutoStream<Vec<u8>>| {
            let r = CaseResult::new(
                Case::new("square", json!([3]), Expect::Ok(json!(9))),
                Ok(json!(10)),
                Some(Duration::from_millis(2)),
            );
            write_row(out, &r, 9, 8, &PALETTE).unwrap();
        };
        let plain = rendered(ColorChoice::Never, row);
        assert_eq!(plain, "  FAIL       2ms  square(3)  ok 9      ok 10\n");
        let coloured = rendered(ColorChoice::Always, row);
        assert!(coloured.contains("\x1b["), "{coloured:?}");
        assert_ne!(coloured, plain);
    }

    #[test]
    fn failures_show_the_diff_after_the_heading() {
        let report = Report {
            results: vec![
                CaseResult::new(
                    Case::new("square", json!([3]), Expect::Ok(json!(9))),
                    Ok(json!(9)),
                    None,
                ),
                CaseResult::new(
                    Case::new("add", json!([1, 2]), Expect::Ok(json!(4))).named("wrong sum"),
                    Ok(json!(3)),
                    None,
                ),
            ],
            elapsed: Duration::ZERO,
        };
        let text = rendered(ColorChoice::Never, |out| {
            write_failures(out, &report, Some(Path::new("c.jsonl")), &PALETTE).unwrap()
        });
        assert_eq!(
            text,
            "\nfailures:\n\n  FAIL wrong sum (c.jsonl:0): add(1, 2)\n    - expected + got\n\
             \x20     {\n    -   \"ok\": 4\n    +   \"ok\": 3\n      }\n"
        );
    }

    #[test]
    fn elapsed_times_are_short() {
        assert_eq!(format_elapsed(Duration::from_micros(15)), "15µs");
        assert_eq!(format_elapsed(Duration::from_millis(250)), "250ms");
        assert_eq!(format_elapsed(Duration::from_secs(12)), "12.0s");
    }
}
