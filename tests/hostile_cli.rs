//! Regression tests of the adversarial report (../shared/reports/
//! adversarial-2026-12-01.md) for the command line and the plugin loader:
//! one test per finding, named after its B-number (or after the finding for
//! the report's unnumbered UX list).

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{exit_code, host_command, json_lines, plugin_str, scratch, stderr, stdout};
use serde_json::{json, Value};

/// `billiard-host ARGS...` with no stdin, no backtraces, the bad-ctor
/// plugin's switches cleared; `env` adds variables.
fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = host_command();
    cmd.args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("BILLIARD_BACKTRACE")
        .env_remove("BILLIARD_BAD_CTOR")
        .env_remove("BILLIARD_BAD_CTOR_DUP")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    cmd
}

fn host(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(args, env)
        .output()
        .unwrap_or_else(|e| panic!("cannot run billiard-host: {e}"))
}

fn math() -> String {
    plugin_str("math")
}

fn bad_ctor() -> String {
    plugin_str("bad-ctor")
}

/// The numbers 1..=n as one-argument job lines.
fn numbers(n: u64) -> String {
    (1..=n).map(|i| format!("[{i}]\n")).collect()
}

fn assert_usage_error(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(exit_code(out), 2, "stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in: {err}");
    }
}

// ----- B6: an output file that is the input --------------------------------

/// `args` read standard input, redirected from `input`, which `-o` names
/// too: refused, `input` (holding `jobs`) unchanged.
fn refuse_stdin_from_the_output(args: &[&str], input: &str, jobs: &str) {
    let out = command(args, &[])
        .stdin(std::fs::File::open(input).unwrap())
        .output()
        .unwrap();
    assert_usage_error(&out, &["--output", "is the input file"]);
    assert_eq!(std::fs::read_to_string(input).unwrap(), jobs);
}

#[test]
fn b6_output_naming_the_input_is_refused() {
    let dir = scratch("b6_output");
    let jobs = numbers(50);
    let input = common::write_file(&dir, "jobs.jsonl", jobs.as_bytes());
    let link = dir.join("link.jsonl");
    std::os::unix::fs::symlink(&input, &link).unwrap();
    let hard = dir.join("hard.jsonl");
    std::fs::hard_link(&input, &hard).unwrap();
    let m = math();
    let base = ["run", m.as_str(), "--task", "square", "--input", &input];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--output", &input], "--output"),
        (vec!["-o", link.to_str().unwrap()], "--output"),
        (vec!["--output", hard.to_str().unwrap()], "--output"),
        (vec!["--stats-json", &input], "--stats-json"),
        (vec!["--stats-json", link.to_str().unwrap()], "--stats-json"),
    ];
    for (extra, flag) in cases {
        let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        let out = host(&args, &[]);
        assert_usage_error(&out, &[flag, "is the input file"]);
        assert_eq!(stdout(&out), "", "{extra:?}");
        assert_eq!(
            std::fs::read_to_string(&input).unwrap(),
            jobs,
            "{extra:?} changed the input"
        );
    }

    // The input as standard input, redirected from the output file.
    refuse_stdin_from_the_output(
        &["run", &m, "--task", "square", "--input", "-", "-o", &input],
        &input,
        &jobs,
    );

    // Nor may the results overwrite the plugin.
    let copy = dir.join("libmath.so");
    std::fs::copy(&m, &copy).unwrap();
    let copy = copy.to_str().unwrap();
    let before = std::fs::read(copy).unwrap();
    for flag in ["--output", "--stats-json"] {
        let out = host(
            &[
                "run", copy, "--task", "square", "--input", &input, flag, copy,
            ],
            &[],
        );
        assert_usage_error(&out, &[flag, "is the plugin file"]);
        assert_eq!(std::fs::read(copy).unwrap(), before);
    }

    // Another output file works as before.
    let results = dir.join("results.jsonl");
    let args: Vec<&str> = base
        .iter()
        .copied()
        .chain(["-o", results.to_str().unwrap(), "-q"])
        .collect();
    let out = host(&args, &[]);
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        json_lines(&std::fs::read_to_string(&results).unwrap()).len(),
        50
    );
}

#[test]
fn b6_output_and_stats_json_naming_one_file_is_refused() {
    let dir = scratch("b6_both");
    let input = common::write_file(&dir, "jobs.jsonl", numbers(20).as_bytes());
    let m = math();
    let same = dir.join("same.json");
    let same = same.to_str().unwrap();
    // Once when the file does not exist yet, once when it does.
    for _ in 0..2 {
        let out = host(
            &[
                "run",
                &m,
                "--task",
                "square",
                "--input",
                &input,
                "--output",
                same,
                "--stats-json",
                same,
            ],
            &[],
        );
        assert_usage_error(&out, &["--output", "--stats-json", "the same file"]);
        std::fs::write(same, "keep").unwrap();
    }
    assert_eq!(std::fs::read_to_string(same).unwrap(), "keep");
}

// ----- B15: non-finite float results ---------------------------------------

#[test]
fn b15_a_non_finite_float_result_is_an_error_not_null() {
    let m = math();
    let out = host(
        &["run", &m, "--task", "sum", "--args", "[[1e308, 1e308]]"],
        &[],
    );
    assert_eq!(exit_code(&out), 1, "{}", stderr(&out));
    let r = &json_lines(&stdout(&out))[0];
    assert_eq!(r["error"]["kind"], "task_error", "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("non-finite float (inf)") && msg.contains("JSON cannot represent"),
        "{msg}"
    );

    // Nested: a Vec<f64> holding NaN or -inf; finite values still pass.
    let dir = scratch("b15");
    let input = common::lines_file(
        &dir,
        "jobs.jsonl",
        &[r#"["nan"]"#, r#"["-inf"]"#, r#"["fine"]"#],
    );
    let h = plugin_str("hostile");
    // One job per call, and a chunk of three in one call (the batch path).
    for chunk in ["1", "3"] {
        let out = host(
            &[
                "run",
                &h,
                "--task",
                "floats_with",
                "--input",
                &input,
                "-q",
                "--chunksize",
                chunk,
            ],
            &[],
        );
        assert_eq!(exit_code(&out), 1, "{}", stderr(&out));
        let rs = json_lines(&stdout(&out));
        assert_eq!(rs.len(), 3);
        for (r, what) in rs.iter().zip(["(NaN)", "(-inf)"]) {
            assert_eq!(r["error"]["kind"], "task_error", "{r}");
            let msg = r["error"]["message"].as_str().unwrap();
            assert!(msg.contains(what), "{r}");
        }
        assert_eq!(rs[2], json!({"index": 2, "ok": [1.5, 2.5]}));
    }
}

// ----- B16: a plugin constructor that exits or blocks ----------------------

#[test]
fn b16_inspect_and_check_report_a_constructor_that_exits() {
    let p = bad_ctor();
    let dir = scratch("b16");
    let cases = common::lines_file(
        &dir,
        "cases.jsonl",
        &[r#"{"task": "ping", "args": [], "expect": {"ok": 1}}"#],
    );
    // The plugin is fine without the switch: the failures below are its
    // constructor's.
    let out = host(&["inspect", "--json", &p], &[]);
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    let info: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(info["name"], "bad-ctor");
    let out = host(&["check", &p, "--cases", &cases, "--color", "never"], &[]);
    assert_eq!(exit_code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    // A constructor that prints does not spoil the answer (nor --json).
    let out = host(
        &["inspect", "--json", &p],
        &[("BILLIARD_BAD_CTOR", "print")],
    );
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    let printed: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(printed, info);

    let headline = format!("error: cannot load plugin {p}: ");
    for (mode, how) in [
        ("exit", "exited with code 0"),
        ("exit3", "exited with code 3"),
        ("abort", "killed by signal 6 (SIGABRT)"),
    ] {
        let env = [("BILLIARD_BAD_CTOR", mode)];
        for args in [
            vec!["inspect", p.as_str()],
            vec!["inspect", "--json", p.as_str()],
            vec!["check", p.as_str(), "--cases", cases.as_str()],
        ] {
            let out = host(&args, &env);
            assert_usage_error(&out, &[&headline, how]);
            assert_eq!(stdout(&out), "", "{mode} {args:?}");
        }
    }
}

#[test]
fn b16_inspect_and_check_give_up_on_a_constructor_that_blocks() {
    let p = bad_ctor();
    let env = [("BILLIARD_BAD_CTOR", "sleep")];
    for cmd in ["inspect", "check"] {
        let mut child = command(&[cmd, &p, "--load-timeout", "500ms"], &env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Bounded: the constructor sleeps an hour.
        let finished = common::eventually(Duration::from_secs(60), || {
            child.try_wait().unwrap().is_some()
        });
        if !finished {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        assert!(finished, "{cmd} still loading after 60s");
        assert_usage_error(
            &out,
            &[
                &format!("error: cannot load plugin {p}: "),
                "did not finish within 500ms",
            ],
        );
    }
}

#[test]
fn b16_run_names_the_plugin_whose_constructor_exits() {
    let p = bad_ctor();
    for (mode, how) in [("exit", "code 0"), ("exit3", "code 3")] {
        let out = host(
            &["run", &p, "--task", "ping", "--args", "[]"],
            &[("BILLIARD_BAD_CTOR", mode)],
        );
        assert_usage_error(&out, &[&p, how]);
        assert_eq!(stdout(&out), "");
    }
    let out = host(&["run", &p, "--task", "ping", "--args", "[]"], &[]);
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "{\"index\":0,\"ok\":1}\n");
}

// ----- the report's UX list ------------------------------------------------

#[test]
fn duplicate_task_names_are_refused_at_load() {
    let p = bad_ctor();
    let env = [("BILLIARD_BAD_CTOR_DUP", "1")];
    let headline = format!("error: cannot load plugin {p}: ");
    let out = host(&["inspect", &p], &env);
    assert_usage_error(&out, &[&headline, "two tasks named `ping`"]);
    let out = host(&["check", &p], &env);
    assert_usage_error(&out, &[&headline, "two tasks named `ping`"]);
    let out = host(&["run", &p, "--task", "ping", "--args", "[]"], &env);
    assert_usage_error(&out, &[&p, "two tasks named `ping`"]);
    assert_eq!(stdout(&out), "");
}

#[test]
fn a_zero_time_limit_in_an_object_line_is_bad_args_for_that_line() {
    let dir = scratch("zero_limit");
    let input = common::lines_file(
        &dir,
        "jobs.jsonl",
        &[
            r#"{"args": [3], "time_limit": "0s"}"#,
            r#"{"args": [4], "soft_time_limit": "0ms"}"#,
            r#"{"args": [5], "time_limit": "2s", "soft_time_limit": "1s"}"#,
        ],
    );
    let m = math();
    let out = host(
        &["run", &m, "--task", "square", "--input", &input, "-q"],
        &[],
    );
    assert_eq!(exit_code(&out), 1, "{}", stderr(&out));
    let rs = json_lines(&stdout(&out));
    assert_eq!(rs.len(), 3);
    for (r, (line, field)) in rs
        .iter()
        .zip([(1, "\"time_limit\""), (2, "\"soft_time_limit\"")])
    {
        assert_eq!(r["error"]["kind"], "bad_args", "{r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(
            msg.starts_with(&format!("line {line}: {field}")) && msg.contains("longer than 0"),
            "{msg}"
        );
    }
    assert_eq!(rs[2], json!({"index": 2, "ok": 25}));
}

#[test]
fn a_full_disk_counts_only_the_results_written() {
    if !Path::new("/dev/full").exists() {
        eprintln!("skipped: no /dev/full");
        return;
    }
    let dir = scratch("enospc");
    let input = common::write_file(&dir, "jobs.jsonl", numbers(40).as_bytes());
    let m = math();
    let out = host(
        &[
            "run",
            &m,
            "--task",
            "square",
            "--input",
            &input,
            "-o",
            "/dev/full",
            "-w",
            "2",
        ],
        &[],
    );
    let err = stderr(&out);
    assert_eq!(exit_code(&out), 1, "{err}");
    assert!(err.contains("cannot write the results"), "{err}");
    // Nothing reached /dev/full: the summary must not claim 40 ok jobs.
    assert!(err.contains("0 jobs: 0 ok"), "{err}");
    assert!(
        err.contains("stopped early") && err.contains("the rest of the input was not read"),
        "{err}"
    );
}

// ----- B7: results flow while the input is quiet ---------------------------

/// A `run --input -` child with piped stdin and stdout, and a thread that
/// hands out its result lines.
struct Session {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: crossbeam_channel::Receiver<String>,
}

impl Session {
    fn start(args: &[&str]) -> Session {
        let mut child = command(args, &[])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Session {
            child,
            stdin,
            lines,
        }
    }

    /// Writes one job line.
    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits (bounded) for the next result line.
    fn next_result(&mut self) -> Value {
        match self.lines.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => serde_json::from_str(&l).unwrap(),
            Err(_) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("no result within 30s while the input is quiet");
            }
        }
    }

    /// Writes one job line and waits (bounded) for one result line.
    fn ask(&mut self, line: &str) -> Value {
        self.send(line);
        self.next_result()
    }

    fn finish(mut self) -> i32 {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(self.lines.recv().is_err(), "a result after EOF");
        status.code().unwrap_or(-1)
    }
}

#[test]
fn b7_results_flow_while_the_input_is_quiet() {
    let m = math();
    for unordered in [false, true] {
        for workers in ["1", "2"] {
            let mut args = vec![
                "run", &m, "--task", "square", "--input", "-", "-w", workers, "-q",
            ];
            if unordered {
                args.push("--unordered");
            }
            let mut s = Session::start(&args);
            for i in 0..5u64 {
                let r = s.ask(&format!("[{}]", i + 2));
                assert_eq!(r, json!({"index": i, "ok": (i + 2) * (i + 2)}), "{args:?}");
            }
            // An error line and an object line answer as well.
            let r = s.ask("[\"x\"]");
            assert_eq!(r["error"]["kind"], "bad_args", "{r}");
            let r = s.ask(r#"{"task": "add", "args": [2, 3]}"#);
            assert_eq!(r, json!({"index": 6, "ok": 5}));
            assert_eq!(s.finish(), 1, "{args:?}");
        }
    }
}

#[test]
fn b7_a_slow_job_does_not_hold_back_later_answers() {
    // Unordered, two workers: a long job first, then quick ones, each
    // written after the input went quiet. Each quick answer comes while
    // the long job still runs (it is the last result).
    let h = plugin_str("hostile");
    let args = [
        "run",
        h.as_str(),
        "--task",
        "nap",
        "--input",
        "-",
        "-w",
        "2",
        "--unordered",
        "-q",
    ];
    let mut s = Session::start(&args);
    s.send("[3000]");
    for i in 1..4u64 {
        let r = s.ask(&format!("[{i}]"));
        assert_eq!(r, json!({"index": i, "ok": i}), "the long job came first");
    }
    assert_eq!(s.next_result(), json!({"index": 0, "ok": 3000}));
    assert_eq!(s.finish(), 0);

    // Ordered: the same input, with quiet gaps, comes back in input order.
    let mut args = args.to_vec();
    args.retain(|a| *a != "--unordered");
    let mut s = Session::start(&args);
    s.send("[500]");
    for i in 1..4u64 {
        std::thread::sleep(Duration::from_millis(30)); // a quiet input, not a synchronization
        s.send(&format!("[{i}]"));
    }
    assert_eq!(s.next_result(), json!({"index": 0, "ok": 500}));
    for i in 1..4u64 {
        assert_eq!(s.next_result(), json!({"index": i, "ok": i}));
    }
    assert_eq!(s.finish(), 0);
}

#[test]
fn arguments_of_the_wrong_count_say_how_many() {
    let m = math();
    for (args, task, want) in [
        ("[1, 2, 3]", "square", "expects 1 argument, got 3"),
        ("[1]", "add", "expects 2 arguments, got 1"),
    ] {
        let out = host(&["run", &m, "--task", task, "--args", args], &[]);
        assert_eq!(exit_code(&out), 1, "{}", stderr(&out));
        let r = &json_lines(&stdout(&out))[0];
        assert_eq!(r["error"]["kind"], "bad_args", "{r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "{msg}");
        // A position in the one-line text is a column, not "line 1".
        assert!(!msg.contains("line 1 column"), "{msg}");
    }
}

#[test]
fn b6_a_junit_report_naming_the_cases_file_is_refused() {
    let dir = scratch("b6_junit");
    let line = r#"{"task": "square", "args": [3], "expect": {"ok": 9}}"#;
    let cases = common::lines_file(&dir, "cases.jsonl", &[line]);
    let link = dir.join("link.xml");
    std::os::unix::fs::symlink(&cases, &link).unwrap();
    let m = math();
    for junit in [cases.as_str(), link.to_str().unwrap()] {
        let out = host(&["check", &m, "--cases", &cases, "--junit", junit], &[]);
        assert_usage_error(&out, &["--junit", "is the cases file"]);
        assert_eq!(
            std::fs::read_to_string(&cases).unwrap(),
            format!("{line}\n")
        );
    }
}

#[test]
fn b7_an_ordered_run_behind_a_slow_job_keeps_every_result_in_order() {
    // The first job is slow, the next 2000 are quick: the ordered output
    // waits for the first, holds a bounded number of later results (the
    // rest of the input waits), and comes out complete and in order.
    let dir = scratch("b7_slow_head");
    let mut lines = vec!["[0]"; 2001];
    lines[0] = "[1500]";
    let input = common::lines_file(&dir, "jobs.jsonl", &lines);
    let h = plugin_str("hostile");
    for unordered in [false, true] {
        let mut args = vec![
            "run", &h, "--task", "nap", "--input", &input, "-w", "2", "-q",
        ];
        if unordered {
            args.push("--unordered");
        }
        let out = host(&args, &[]);
        assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
        let rs = json_lines(&stdout(&out));
        let mut got: Vec<u64> = rs.iter().map(|r| r["index"].as_u64().unwrap()).collect();
        if unordered {
            got.sort_unstable();
        }
        assert_eq!(
            got,
            (0..2001).collect::<Vec<u64>>(),
            "unordered: {unordered}"
        );
        let first = rs.iter().find(|r| r["index"] == 0).unwrap();
        assert_eq!(first["ok"], 1500);
    }
}

#[test]
fn a_plugins_bad_args_message_names_the_input_line() {
    let dir = scratch("bad_args_line");
    // Blank lines count as lines but get no index.
    let input = common::write_file(
        &dir,
        "jobs.jsonl",
        b"\n[1, 2]\n\n[\"x\"]\n{\"args\": [\"y\"]}\n[3]\n",
    );
    let m = math();
    for extra in [
        &["-w", "1"][..],
        &["-w", "2", "--unordered"],
        &["--chunksize", "3"],
    ] {
        let mut args = vec!["run", &m, "--task", "square", "--input", &input, "-q"];
        args.extend_from_slice(extra);
        let out = host(&args, &[]);
        assert_eq!(exit_code(&out), 1, "{}", stderr(&out));
        let mut rs = json_lines(&stdout(&out));
        rs.sort_by_key(|r| r["index"].as_u64());
        assert_eq!(rs.len(), 4, "{extra:?}");
        for (r, line) in rs.iter().zip([2, 4, 5]) {
            assert_eq!(r["error"]["kind"], "bad_args", "{r}");
            let msg = r["error"]["message"].as_str().unwrap();
            assert!(
                msg.starts_with(&format!("line {line}: bad arguments")),
                "{extra:?}: {msg}"
            );
        }
        assert_eq!(rs[3], json!({"index": 3, "ok": 9}));
    }
    // One --args job has no input line to name.
    let out = host(&["run", &m, "--task", "square", "--args", "[\"x\"]"], &[]);
    let msg = json_lines(&stdout(&out))[0]["error"]["message"].clone();
    assert!(msg.as_str().unwrap().starts_with("bad arguments"), "{msg}");
}

// ----- issue 24 item 4: one fleet module, one group of local flags ---------

/// A broker nothing listens on: the refusals below come before any
/// connection (and a flag that is accepted fails on the connection).
const NO_BROKER: &str = "redis://127.0.0.1:1/0";

/// `submit --input F --output F` is refused as `run`'s is (B6): before this,
/// `submit` created (truncated) the output before reading the input.
#[test]
fn issue24_submit_output_naming_the_input_is_refused() {
    let dir = scratch("issue24_submit_output");
    let jobs = numbers(20);
    let input = common::write_file(&dir, "jobs.jsonl", jobs.as_bytes());
    let link = dir.join("link.jsonl");
    std::os::unix::fs::symlink(&input, &link).unwrap();
    let base = ["submit", "--broker", NO_BROKER, "--task", "math.square"];
    for output in [input.as_str(), link.to_str().unwrap()] {
        for wait in [&["--wait"][..], &[]] {
            let args: Vec<&str> = base
                .iter()
                .copied()
                .chain(["--input", &input, "--output", output])
                .chain(wait.iter().copied())
                .collect();
            let out = host(&args, &[]);
            assert_usage_error(&out, &["--output", "is the input file"]);
            assert_eq!(stdout(&out), "");
            assert_eq!(
                std::fs::read_to_string(&input).unwrap(),
                jobs,
                "{args:?} changed the input"
            );
        }
    }
    // The input as standard input, redirected from the output file.
    refuse_stdin_from_the_output(
        &[&base[..], &["--input", "-", "-o", input.as_str()]].concat(),
        &input,
        &jobs,
    );
    // Another output file passes the check (and then fails on the broker).
    let results = dir.join("results.jsonl");
    let out = host(
        &[
            &base[..],
            &["--input", input.as_str(), "-o", results.to_str().unwrap()],
        ]
        .concat(),
        &[],
    );
    assert_usage_error(&out, &["broker"]);
    assert!(
        !stderr(&out).contains("is the input file"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&input).unwrap(), jobs);
}

/// `run --broker` refuses every flag that sets up local workers (the clap
/// group `pool`, which replaced a hand-kept list of 19 names): a usage
/// error (exit 2) naming the flag, before any connection. The per-job
/// limits are not among them: they travel with the messages.
#[test]
fn issue24_run_broker_refuses_the_local_pool_flags() {
    let dir = scratch("issue24_broker_flags");
    let m = math();
    let stats = dir.join("stats.json");
    let stats = stats.to_str().unwrap();
    let base = [
        "run", "--broker", NO_BROKER, "--task", "square", "--args", "[1]",
    ];
    let local: Vec<Vec<&str>> = vec![
        vec!["--workers", "2"],
        vec!["-w", "2"],
        vec![m.as_str()],
        vec!["--plugin", m.as_str()],
        vec!["--chunksize", "2"],
        vec!["--prefetch", "2"],
        vec!["--max-tasks-per-child", "2"],
        vec!["--max-memory-per-child", "100MiB"],
        vec!["--address-space-limit", "1GiB"],
        vec!["--start-method", "spawn"],
        vec!["--load-timeout", "5s"],
        vec!["--stats-json", stats],
        vec!["--sandbox", "standard"],
        vec!["--no-network"],
        vec!["--allow-write", "/tmp"],
        vec!["--user", "nobody"],
        vec!["--keep-env", "HOME"],
        vec!["--max-procs", "10"],
        vec!["--max-open-files", "10"],
        vec!["--max-file-size", "1MiB"],
    ];
    for flag in &local {
        let args: Vec<&str> = base.iter().copied().chain(flag.iter().copied()).collect();
        let out = host(&args, &[]);
        let err = stderr(&out);
        assert_eq!(exit_code(&out), 2, "{flag:?}: {err}");
        assert!(
            err.contains("'--broker <URL>' cannot be used with") && err.contains("Usage:"),
            "{flag:?}: {err}"
        );
        let named = if flag[0].starts_with("--") {
            flag[0]
        } else if flag[0] == "-w" {
            "--workers"
        } else {
            "[PLUGIN]"
        };
        assert!(err.contains(named), "{flag:?}: {err}");
        assert!(!err.contains("cannot reach the broker"), "{flag:?}: {err}");
    }
    assert!(!Path::new(stats).exists(), "--stats-json was created");
    // The limits a message carries are not local flags.
    for flag in [["--time-limit", "2s"], ["--soft-time-limit", "1s"]] {
        let args: Vec<&str> = base.iter().copied().chain(flag).collect();
        let out = host(&args, &[]);
        assert_usage_error(&out, &["cannot reach the broker"]);
    }
}
