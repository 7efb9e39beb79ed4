//! `billiard-host run` through the real binary: one job (`--args`), files
//! and standard input of jobs, result lines and their order, every error
//! kind a job can end with, exit codes, pool flags, `--stats-json`, and
//! what SIGTERM, SIGINT and a closed stdout do mid-batch.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use common::run::{finish, signal};
use common::{by_index, exit_code, host_command, kind, plugin_str, scratch, stderr, stdout};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// `billiard-host run ARGS...` with `stdin` piped in; no backtraces in panic
/// messages (faster, shorter).
fn run_with(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = base_command(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("billiard-host starts");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn run(args: &[&str]) -> Output {
    run_with(args, None)
}

fn base_command(args: &[&str]) -> Command {
    let mut cmd = host_command();
    cmd.arg("run")
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("BILLIARD_BACKTRACE");
    cmd
}

fn indices(results: &[Value]) -> Vec<u64> {
    results
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect()
}

fn message(r: &Value) -> &str {
    r["error"]["message"].as_str().unwrap()
}

fn math() -> String {
    plugin_str("math")
}

fn faults() -> String {
    plugin_str("faults")
}

#[test]
fn one_job_prints_its_result() {
    let out = run(&[&math(), "--task", "square", "--args", "[3]"]);
    assert_eq!(exit_code(&out), 0, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "{\"index\":0,\"ok\":9}\n");
    assert_eq!(stderr(&out), "", "one job prints no summary");

    // Structured values come back as JSON.
    let out = run(&[
        &math(),
        "--task",
        "transform",
        "--args",
        r#"[{"id": 2, "name": "a", "shape": {"rect": {"w": 1.0, "h": 2.0}}, "note": null, "tags": {}}, 3.0]"#,
    ]);
    assert_eq!(exit_code(&out), 0, "stderr: {}", stderr(&out));
    let r = &common::json_lines(&stdout(&out))[0];
    assert_eq!(r["ok"]["id"], 4);
    assert_eq!(r["ok"]["shape"], json!({"rect": {"w": 3.0, "h": 6.0}}));
    assert_eq!(r["ok"]["tags"]["area"], 18);
}

#[test]
fn one_failed_job_exits_1_with_its_error() {
    let out = run(&[
        &math(),
        "--task",
        "add",
        "--args",
        "[9223372036854775807, 1]",
    ]);
    assert_eq!(exit_code(&out), 1);
    let r = &common::json_lines(&stdout(&out))[0];
    assert_eq!(r["index"], 0);
    assert_eq!(kind(r), "task_error");
    assert!(message(r).contains("overflows"), "{r}");

    // An object line works as --args too, and names its own task.
    let out = run(&[&math(), "--args", r#"{"task": "fib", "args": [10]}"#]);
    assert_eq!(exit_code(&out), 0, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "{\"index\":0,\"ok\":55}\n");
}

#[test]
fn a_file_of_good_and_bad_lines_gets_one_result_per_line_in_order() {
    let dir = scratch("mixed");
    let input = common::lines_file(
        &dir,
        "jobs.jsonl",
        &[
            "[1]",
            "[2]",
            "",
            "not json",
            r#"{"task": "add", "args": [1, 2]}"#,
            "   ",
            r#"["three"]"#,
            "[1, 2]",
            r#"{"task": "nope", "args": []}"#,
            r#"{"task": "add", "args": 5}"#,
            r#"{"task": "add", "args": [1, 2], "colour": "red"}"#,
            "[12]",
        ],
    );
    let out = run(&[&math(), "--task", "square", "--input", &input, "-w", "2"]);
    assert_eq!(exit_code(&out), 1, "stderr: {}", stderr(&out));
    let rs = common::json_lines(&stdout(&out));
    // Blank lines get no index; the rest are numbered from 0 in order.
    assert_eq!(indices(&rs), (0..10).collect::<Vec<_>>());
    assert_eq!(rs[0]["ok"], 1);
    assert_eq!(rs[1]["ok"], 4);
    assert_eq!(kind(&rs[2]), "bad_args");
    assert!(message(&rs[2]).contains("line 4"), "{}", rs[2]);
    assert_eq!(rs[3]["ok"], 3);
    assert_eq!(kind(&rs[4]), "bad_args", "wrong type");
    assert!(message(&rs[4]).contains("square"), "{}", rs[4]);
    assert_eq!(kind(&rs[5]), "bad_args", "too many arguments");
    assert_eq!(kind(&rs[6]), "unknown_task");
    assert!(message(&rs[6]).contains("nope"), "{}", rs[6]);
    assert_eq!(kind(&rs[7]), "bad_args", "args not an array");
    assert_eq!(kind(&rs[8]), "bad_args", "unknown field");
    assert!(message(&rs[8]).contains("colour"), "{}", rs[8]);
    assert_eq!(rs[9]["ok"], 144);

    let summary = stderr(&out);
    assert!(
        summary.contains("10 jobs: 4 ok, 6 failed (5 bad_args, 1 unknown_task)"),
        "summary: {summary}"
    );
    // --quiet drops the summary.
    let out = run(&[&math(), "--task", "square", "--input", &input, "-q"]);
    assert_eq!(exit_code(&out), 1);
    assert_eq!(stderr(&out), "");
}

#[test]
fn invalid_utf8_is_bad_args_for_that_line_only() {
    let dir = scratch("utf8");
    let path = dir.join("jobs.jsonl");
    std::fs::write(&path, b"[2]\n[\xff\xfe]\n[3]\n").unwrap();
    let out = run(&[
        &math(),
        "--task",
        "square",
        "--input",
        path.to_str().unwrap(),
        "-q",
    ]);
    assert_eq!(exit_code(&out), 1);
    let rs = common::json_lines(&stdout(&out));
    assert_eq!(rs.len(), 3);
    assert_eq!(rs[0]["ok"], 4);
    assert_eq!(kind(&rs[1]), "bad_args");
    assert!(message(&rs[1]).contains("UTF-8"), "{}", rs[1]);
    assert_eq!(rs[2]["ok"], 9);
}

#[test]
fn all_good_exits_0_and_output_goes_to_a_file() {
    let dir = scratch("output");
    let lines: Vec<String> = (0..25).map(|i| format!("[{i}]")).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let input = common::lines_file(&dir, "jobs.jsonl", &lines);
    let output = dir.join("results.jsonl");
    let out = run(&[
        &math(),
        "--task",
        "square",
        "--input",
        &input,
        "--output",
        output.to_str().unwrap(),
        "--workers",
        "2",
        "--chunksize",
        "4",
        "--prefetch",
        "2",
    ]);
    assert_eq!(exit_code(&out), 0, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "", "results go to the file");
    assert!(stderr(&out).contains("25 jobs: 25 ok"), "{}", stderr(&out));
    let rs = common::json_lines(&std::fs::read_to_string(&output).unwrap());
    assert_eq!(indices(&rs), (0..25).collect::<Vec<_>>());
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(r["ok"], (i * i) as u64);
    }
}

#[test]
fn unordered_gives_every_result_once_in_completion_order() {
    let dir = scratch("unordered");
    // Job 0 sleeps; the others are instant, so they finish first.
    let mut lines = vec!["[300]".to_string()];
    lines.extend((0..12).map(|_| "[0]".to_string()));
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let input = common::lines_file(&dir, "jobs.jsonl", &lines);
    let out = run(&[
        &faults(),
        "--task",
        "sleep_ms",
        "--input",
        &input,
        "--unordered",
        "-w",
        "2",
        "-q",
    ]);
    assert_eq!(exit_code(&out), 0, "stderr: {}", stderr(&out));
    let rs = common::json_lines(&stdout(&out));
    let map = by_index(&rs);
    assert_eq!(
        map.keys().copied().collect::<Vec<_>>(),
        (0..13).collect::<Vec<_>>()
    );
    assert_eq!(map[&0]["ok"], 300);
    assert_ne!(
        rs[0]["index"], 0,
        "the slow job does not hold the others back"
    );
    assert_eq!(rs.last().unwrap()["index"], 0);
}

#[test]
fn jobs_from_standard_input() {
    let out = run_with(
        &[&math(), "--task", "fib", "--input", "-", "-w", "2", "-q"],
        Some("[0]\n[1]\n\n[10]\n[94]\n"),
    );
    assert_eq!(exit_code(&out), 1);
    let rs = common::json_lines(&stdout(&out));
    assert_eq!(indices(&rs), [0, 1, 2, 3]);
    assert_eq!(rs[0]["ok"], 0);
    assert_eq!(rs[1]["ok"], 1);
    assert_eq!(rs[2]["ok"], 55);
    assert_eq!(kind(&rs[3]), "task_error");

    let out = run_with(
        &[&math(), "--task", "square", "--input", "-", "-q"],
        Some("[5]\n"),
    );
    assert_eq!(exit_code(&out), 0);
    assert_eq!(stdout(&out), "{\"index\":0,\"ok\":25}\n");
}

#[test]
fn every_error_kind_a_job_can_end_with() {
    let dir = scratch("kinds");
    let input = common::lines_file(
        &dir,
        "jobs.jsonl",
        &[
            r#"{"task": "panic", "args": ["boom"]}"#,
            r#"{"task": "fail", "args": ["it failed"]}"#,
            r#"{"task": "sleep_ms", "args": "x"}"#,
            r#"{"task": "sleep_ms", "args": ["x"]}"#,
            r#"{"task": "no_such_task"}"#,
            r#"{"task": "segfault"}"#,
            r#"{"task": "spin_ms", "args": [10000]}"#,
            r#"{"task": "cooperative_spin", "args": [10000]}"#,
            r#"{"task": "sleep_ms", "args": [1]}"#,
        ],
    );
    let out = run(&[
        &faults(),
        "--input",
        &input,
        "-w",
        "2",
        "--soft-time-limit",
        "100ms",
        "--time-limit",
        "400ms",
    ]);
    assert_eq!(exit_code(&out), 1, "stderr: {}", stderr(&out));
    let rs = common::json_lines(&stdout(&out));
    assert_eq!(indices(&rs), (0..9).collect::<Vec<_>>());
    let kinds: Vec<&str> = rs[..8].iter().map(kind).collect();
    assert_eq!(
        kinds,
        [
            "panic",
            "task_error",
            "bad_args",
            "bad_args",
            "unknown_task",
            "worker_lost",
            "time_limit",
            "soft_time_limit"
        ]
    );
    assert!(message(&rs[0]).contains("boom"), "{}", rs[0]);
    assert_eq!(message(&rs[1]), "it failed");
    assert!(message(&rs[5]).contains("SIGSEGV"), "{}", rs[5]);
    assert_eq!(rs[8]["ok"], 1, "the pool carries on");
    assert!(
        stderr(&out).contains(
            "9 jobs: 1 ok, 8 failed (1 panic, 1 task_error, 2 bad_args, 1 unknown_task, \
             1 worker_lost, 1 soft_time_limit, 1 time_limit)"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn object_lines_mix_tasks_of_two_plugins_with_their_own_limits() {
    let dir = scratch("two_plugins");
    let input = common::lines_file(
        &dir,
        "jobs.jsonl",
        &[
            "[4]",
            r#"{"task": "math.square", "args": [5]}"#,
            r#"{"task": "faults.square", "args": [6]}"#,
            r#"{"task": "square", "args": [7]}"#,
            r#"{"task": "fib", "args": [20]}"#,
            r#"{"task": "sleep_ms", "args": [1]}"#,
            r#"{"task": "spin_ms", "args": [10000], "time_limit": "200ms"}"#,
            r#"{"task": "cooperative_spin", "args": [10000], "soft_time_limit": "50ms"}"#,
            r#"{"task": "sleep_ms", "args": [1], "time_limit": "soon"}"#,
            r#"{"task": "version"}"#,
        ],
    );
    let out = run(&[
        &math(),
        "--plugin",
        &faults(),
        "--task",
        "math.square",
        "--input",
        &input,
        "-w",
        "2",
        "-q",
    ]);
    assert_eq!(exit_code(&out), 1, "stderr: {}", stderr(&out));
    let rs = common::json_lines(&stdout(&out));
    assert_eq!(indices(&rs), (0..10).collect::<Vec<_>>());
    assert_eq!(rs[0]["ok"], 16, "--task is the default");
    assert_eq!(rs[1]["ok"], 25);
    assert_eq!(rs[2]["ok"], 36);
    assert_eq!(kind(&rs[3]), "unknown_task", "both plugins have `square`");
    assert!(message(&rs[3]).contains("ambiguous"), "{}", rs[3]);
    assert_eq!(rs[4]["ok"], 6765);
    assert_eq!(rs[5]["ok"], 1);
    assert_eq!(kind(&rs[6]), "time_limit");
    assert_eq!(kind(&rs[7]), "soft_time_limit");
    assert_eq!(kind(&rs[8]), "bad_args", "an unreadable duration");
    assert!(message(&rs[8]).contains("time_limit"), "{}", rs[8]);
    assert_eq!(rs[9]["ok"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn stats_json_holds_the_final_pool_stats() {
    let dir = scratch("stats");
    let input = common::lines_file(&dir, "jobs.jsonl", &["[1]", "[2]", "[x]", "[3]"]);
    let stats = dir.join("stats.json");
    let out = run(&[
        &math(),
        "--task",
        "square",
        "--input",
        &input,
        "--stats-json",
        stats.to_str().unwrap(),
        "-w",
        "2",
        "--max-tasks-per-child",
        "1",
        "-q",
    ]);
    assert_eq!(exit_code(&out), 1, "stderr: {}", stderr(&out));
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(s["submitted"], 4);
    assert_eq!(s["succeeded"], 3);
    assert_eq!(s["failed"], json!({"bad_args": 1}));
    assert_eq!(s["target_workers"], 2);
    assert!(
        s["recycled"].as_u64().unwrap() >= 2,
        "max-tasks-per-child 1 recycles: {s}"
    );
}

#[test]
fn pool_flags_are_accepted() {
    for method in ["forkserver", "fork", "spawn"] {
        let out = run(&[
            &math(),
            "--task",
            "square",
            "--args",
            "[11]",
            "--start-method",
            method,
            "--max-memory-per-child",
            "200MiB",
            "--address-space-limit",
            "4GiB",
            "--soft-time-limit",
            "1s",
            "--time-limit",
            "2s",
            "--max-tasks-per-child",
            "10",
        ]);
        assert_eq!(exit_code(&out), 0, "{method}: {}", stderr(&out));
        assert_eq!(stdout(&out), "{\"index\":0,\"ok\":121}\n");
    }
}

#[test]
fn usage_errors_exit_2() {
    let dir = scratch("usage");
    let input = common::lines_file(&dir, "jobs.jsonl", &["[1]"]);
    let m = math();
    let cases: &[(&[&str], &str)] = &[
        (&[&m, "--task", "square"], "--args"),
        (&[&m, "--args", "[1]"], "--task"),
        (
            &[&m, "--task", "square", "--args", "[1]", "--input", &input],
            "cannot be used",
        ),
        (
            &[&m, "--task", "square", "--input", &input, "--workers", "0"],
            "at least 1",
        ),
        (
            &[
                &m,
                "--task",
                "square",
                "--input",
                &input,
                "--workers",
                "100000",
            ],
            "at most 512",
        ),
        (
            &[
                &m,
                "--task",
                "square",
                "--input",
                &input,
                "--chunksize",
                "0",
            ],
            "at least 1",
        ),
        (
            &[
                &m,
                "--task",
                "square",
                "--input",
                &input,
                "--max-memory-per-child",
                "lots",
            ],
            "--max-memory-per-child",
        ),
        (
            &[
                &m,
                "--task",
                "square",
                "--input",
                &input,
                "--time-limit",
                "soon",
            ],
            "--time-limit",
        ),
        (
            &[
                &m,
                "--task",
                "square",
                "--input",
                &input,
                "--start-method",
                "teleport",
            ],
            "teleport",
        ),
        (
            &[&m, "--task", "square", "--input", "/nonexistent/jobs.jsonl"],
            "/nonexistent/jobs.jsonl",
        ),
        (
            &[
                &m,
                "--task",
                "square",
                "--input",
                &input,
                "--output",
                "/nonexistent/out.jsonl",
            ],
            "/nonexistent/out.jsonl",
        ),
    ];
    for (args, needle) in cases {
        let out = run(args);
        assert_eq!(exit_code(&out), 2, "{args:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "", "{args:?}");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn a_plugin_that_cannot_be_loaded_exits_2_naming_it() {
    let dir = scratch("plugin_load");
    let not_a_plugin = common::lines_file(&dir, "not-a-plugin.so", &["hello"]);
    let missing = dir.join("missing.so").to_string_lossy().into_owned();
    let layout = plugin_str("abi-layout-mismatch");
    let m = math();
    for args in [
        vec![missing.as_str(), "--task", "square", "--args", "[1]"],
        vec![not_a_plugin.as_str(), "--task", "square", "--args", "[1]"],
        vec![
            &m, "--plugin", &missing, "--task", "square", "--args", "[1]",
        ],
        vec![&m, "--plugin", &layout, "--task", "square", "--args", "[1]"],
    ] {
        let out = run(&args);
        assert_eq!(exit_code(&out), 2, "{args:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "");
        let err = stderr(&out);
        let file = if args[0] == m { args[2] } else { args[0] };
        let name = Path::new(file).file_name().unwrap().to_str().unwrap();
        assert!(
            err.starts_with("error: ") && err.contains(name),
            "{args:?}: {err}"
        );
    }
}

/// Starts a batch with stdout and stderr piped.
fn spawn_batch(args: &[&str]) -> Child {
    base_command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("billiard-host starts")
}

#[test]
fn sigterm_mid_batch_finishes_running_jobs_and_terminates_the_rest() {
    let dir = scratch("sigterm");
    let lines = vec!["[50]"; 40];
    let input = common::lines_file(&dir, "jobs.jsonl", &lines);
    let mut child = spawn_batch(&[
        &faults(),
        "--task",
        "sleep_ms",
        "--input",
        &input,
        "-w",
        "2",
    ]);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first, "{\"index\":0,\"ok\":50}\n");
    signal(child.id() as i32, Signal::SIGTERM);
    let (rs, err, code) = finish(child, out, first);
    assert_eq!(code, 1, "stderr: {err}");

    assert_eq!(
        indices(&rs),
        (0..40).collect::<Vec<_>>(),
        "each index once, in order"
    );
    let ok = rs.iter().filter(|r| r["ok"] == 50).count();
    let terminated = rs
        .iter()
        .filter(|r| r["error"]["kind"] == "terminated")
        .count();
    assert_eq!(ok + terminated, 40, "only ok and terminated: {rs:?}");
    assert!(
        ok >= 1 && terminated >= 1,
        "ok {ok}, terminated {terminated}"
    );
    // Jobs that ran form a prefix: nothing started after the signal.
    assert!(rs[..ok].iter().all(|r| r["ok"] == 50), "{rs:?}");
    assert!(message(&rs[ok]).contains("SIGTERM"), "{}", rs[ok]);
    assert!(err.contains("SIGTERM"), "{err}");
}

#[test]
fn a_second_signal_kills_the_running_jobs() {
    let dir = scratch("second_signal");
    let mut lines = vec!["[0]"];
    lines.extend(vec!["[20000]"; 6]);
    let input = common::lines_file(&dir, "jobs.jsonl", &lines);
    let started = std::time::Instant::now();
    let mut child = spawn_batch(&[
        &faults(),
        "--task",
        "sleep_ms",
        "--input",
        &input,
        "-w",
        "2",
    ]);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut errs = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first, "{\"index\":0,\"ok\":0}\n");

    signal(child.id() as i32, Signal::SIGTERM);
    let mut note = String::new();
    errs.read_line(&mut note).unwrap();
    assert!(note.starts_with("SIGTERM: no more input"), "{note}");
    signal(child.id() as i32, Signal::SIGINT);

    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    errs.read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(1), "stderr: {err}");
    assert!(err.starts_with("SIGINT: terminating"), "{err}");
    let rs = common::json_lines(&(first + &rest));
    assert_eq!(indices(&rs), (0..7).collect::<Vec<_>>());
    for r in &rs[1..] {
        assert_eq!(kind(r), "terminated", "{r}");
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "the 20 s jobs were killed"
    );
}

#[test]
fn a_closed_stdout_ends_the_batch_quietly() {
    let dir = scratch("epipe");
    let lines = vec!["[20]"; 200];
    let input = common::lines_file(&dir, "jobs.jsonl", &lines);
    let mut child = spawn_batch(&[
        &faults(),
        "--task",
        "sleep_ms",
        "--input",
        &input,
        "-w",
        "2",
    ]);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first, "{\"index\":0,\"ok\":20}\n");
    drop(out);
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("error"), "a closed pipe is no error: {err}");
}

#[test]
fn help_and_completions() {
    let out = common::host(["run", "--help"]);
    assert_eq!(exit_code(&out), 0);
    let help = stdout(&out);
    for needle in [
        "Examples:",
        "--unordered",
        "--stats-json",
        "Exit status",
        "SIGTERM",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let out = common::host(["completions", shell]);
        assert_eq!(exit_code(&out), 0, "{shell}: {}", stderr(&out));
        assert!(stdout(&out).contains("billiard-host"), "{shell}");
        assert!(stdout(&out).contains("unordered"), "{shell}");
    }
}

#[test]
fn sighup_reloads_the_plugins_and_the_batch_goes_on() {
    let dir = scratch("sighup");
    let lines = vec!["[20]"; 30];
    let input = common::lines_file(&dir, "jobs.jsonl", &lines);
    let stats = dir.join("stats.json");
    let mut child = spawn_batch(&[
        &faults(),
        "--task",
        "sleep_ms",
        "--input",
        &input,
        "-w",
        "2",
        "--stats-json",
        stats.to_str().unwrap(),
    ]);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut errs = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    signal(child.id() as i32, Signal::SIGHUP);
    let mut note = String::new();
    errs.read_line(&mut note).unwrap();
    assert!(note.starts_with("SIGHUP: reloading"), "{note}");
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    errs.read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    let rs = common::json_lines(&(first + &rest));
    assert_eq!(indices(&rs), (0..30).collect::<Vec<_>>());
    assert!(rs.iter().all(|r| r["ok"] == 20), "{rs:?}");
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(s["restarts"], 1, "{s}");
}

/// Issue 28 (item 4): a default task (`--task`, bare or `plugin.task`) no
/// loaded plugin has would fail every line that uses it: it is a usage
/// error before any job runs (exit 2, nothing on stdout), naming the
/// closest task, with `--input`, `--args` and `--isolated`. An ambiguous
/// default is refused too. A line naming an unknown task still gets its
/// own `unknown_task` result, with the closest name; a name near nothing
/// gets no guess.
#[test]
fn u28_a_default_task_no_plugin_has_is_refused_with_the_closest_name() {
    let dir = scratch("u28_default_task");
    let input = common::lines_file(&dir, "jobs.jsonl", &["[1]", "[2]", "[3]"]);
    let (m, f) = (math(), faults());
    for (task, closest) in [
        ("squar", Some("square")),
        ("Square", Some("square")),
        ("sqaure", Some("square")),
        ("math.sqare", Some("square")),
        ("mth.square", Some("math.square")),
        ("maht.add", Some("math.add")),
        ("cube", None),
        ("x", None),
    ] {
        for extra in [
            &["--input", &input][..],
            &["--args", "[3]"],
            &["--args", "[3]", "--isolated"],
        ] {
            let mut args = vec![m.as_str(), "--task", task];
            args.extend(extra);
            let out = run(&args);
            let e = stderr(&out);
            assert_eq!(exit_code(&out), 2, "{task} {extra:?}: {e}");
            assert_eq!(stdout(&out), "", "{task} {extra:?}: no job ran");
            assert!(e.contains(&format!("--task {task}")), "{e}");
            match closest {
                Some(c) => assert!(e.contains(&format!("did you mean `{c}`?")), "{task}: {e}"),
                None => assert!(!e.contains("did you mean"), "{task}: {e}"),
            }
            assert!(
                e.contains("square, add") || e.contains("math.square, math.add"),
                "{e}"
            );
        }
    }
    // Two plugins with a `square` each: the bare name is ambiguous.
    let out = run(&[&m, "--plugin", &f, "--task", "square", "--input", &input]);
    assert_eq!(exit_code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("ambiguous"), "{}", stderr(&out));
    // A typo of a name only one plugin has: the bare name; of one both
    // have: each qualified name (the bare one is ambiguous).
    let out = run(&[&m, "--plugin", &f, "--task", "fbi", "--input", &input]);
    assert!(
        stderr(&out).contains("did you mean `fib`?"),
        "{}",
        stderr(&out)
    );
    let out = run(&[&m, "--plugin", &f, "--task", "sqare", "--input", &input]);
    assert!(
        !stderr(&out).contains("did you mean `square`?"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("did you mean `math.square` or `faults.square`?"),
        "{}",
        stderr(&out)
    );

    // Lines naming their own task: each unknown one is that line's error,
    // with the closest name; the good default runs the rest.
    let lines = common::lines_file(
        &dir,
        "mixed.jsonl",
        &[
            "[2]",
            r#"{"task": "ad", "args": [1, 2]}"#,
            r#"{"task": "math.fibb", "args": [5]}"#,
            r#"{"task": "nothing_like_it", "args": []}"#,
        ],
    );
    let out = run(&[&m, "--task", "square", "--input", &lines, "-q"]);
    assert_eq!(exit_code(&out), 1, "{}", stderr(&out));
    let r = by_index(&common::json_lines(&stdout(&out)));
    assert_eq!(r[&0]["ok"], 4);
    assert_eq!(kind(&r[&1]), "unknown_task");
    assert!(message(&r[&1]).contains("did you mean `add`?"), "{}", r[&1]);
    assert!(message(&r[&2]).contains("did you mean `fib`?"), "{}", r[&2]);
    assert_eq!(kind(&r[&3]), "unknown_task");
    assert!(!message(&r[&3]).contains("did you mean"), "{}", r[&3]);
}
