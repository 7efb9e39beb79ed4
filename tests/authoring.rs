//! What a plugin author meets first (issue 18, parts 6 and 7): messages
//! that say what is wrong in the author's terms, backtraces only on
//! request, useful debug logs without colour codes in files, a quiet stop
//! on a closed pipe, and an Examples section in every `--help`.

use crate::common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use common::{
    exit_code, host, host_command, json_lines, lines_file, plugin_str, scratch, stderr, stdout,
};

fn run_one(plugin: &str, task: &str, args: &str, env: &[(&str, &str)]) -> serde_json::Value {
    let mut cmd = host_command();
    cmd.args(["run", plugin, "--task", task, "--args", args])
        .env_remove("RUST_BACKTRACE")
        .env_remove("BILLIARD_BACKTRACE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let lines = json_lines(&stdout(&out));
    assert_eq!(lines.len(), 1, "{}", stderr(&out));
    lines[0].clone()
}

fn message(r: &serde_json::Value) -> String {
    r["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn only_billiard_backtrace_adds_a_backtrace_to_a_panic() {
    let faults = plugin_str("faults");
    let plain = run_one(&faults, "panic", r#"["boom"]"#, &[]);
    assert_eq!(plain["error"]["kind"], "panic", "{plain}");
    assert!(!message(&plain).contains("backtrace"), "{plain}");
    // RUST_BACKTRACE is for the host's own panics: a result line stays short.
    for v in ["1", "full"] {
        let r = run_one(&faults, "panic", r#"["boom"]"#, &[("RUST_BACKTRACE", v)]);
        assert!(message(&r).contains("boom"), "{r}");
        assert!(
            !message(&r).contains("backtrace"),
            "RUST_BACKTRACE={v}: {r}"
        );
        assert!(message(&r).len() < 300, "RUST_BACKTRACE={v}: {r}");
    }
    let r = run_one(
        &faults,
        "panic",
        r#"["boom"]"#,
        &[("BILLIARD_BACKTRACE", "1")],
    );
    assert!(message(&r).contains("\nbacktrace:\n"), "{r}");
}

#[test]
fn a_wrong_argument_count_says_expects_n_got_m() {
    let math = plugin_str("math");
    for (task, args, want) in [
        ("square", "[3, 4]", "expects 1 argument, got 2"),
        ("square", "[]", "expects 1 argument, got 0"),
        ("add", "[1]", "expects 2 arguments, got 1"),
        ("add", "[1, 2, 3]", "expects 2 arguments, got 3"),
    ] {
        let r = run_one(&math, task, args, &[]);
        assert_eq!(r["error"]["kind"], "bad_args", "{r}");
        let msg = message(&r);
        assert!(msg.contains(want), "{args}: {msg}");
        // Said once, and with the task's signature.
        assert_eq!(msg.matches("expects").count(), 1, "{msg}");
        assert!(msg.contains(&format!("`{task}(")), "{msg}");
        assert!(!msg.contains("line 1"), "{msg}");
    }
}

#[test]
fn bad_limits_name_their_field_and_positions_are_input_lines() {
    let dir = scratch("limits");
    let input = lines_file(
        &dir,
        "in.jsonl",
        &[
            "[1]",
            "",
            r#"{"args": [2], "time_limit": 5}"#,
            r#"{"args": [2], "soft_time_limit": -1}"#,
            r#"{"args": [2], "time_limit": "soon"}"#,
            r#"{"task": "square", "args": [1,}"#,
            r#"{"args": [2], "time_limit": null}"#,
        ],
    );
    let out = host([
        "run",
        &plugin_str("math"),
        "--task",
        "square",
        "--input",
        &input,
    ]);
    assert_eq!(exit_code(&out), 1, "{}", stderr(&out));
    let r = json_lines(&stdout(&out));
    assert_eq!(r.len(), 6, "{r:?}");
    assert_eq!(r[0]["ok"], 1);
    let m3 = message(&r[1]);
    assert!(
        m3.starts_with("line 3: \"time_limit\": expected a duration string"),
        "{m3}"
    );
    assert!(m3.contains("got 5"), "{m3}");
    let m4 = message(&r[2]);
    assert!(m4.starts_with("line 4: \"soft_time_limit\":"), "{m4}");
    let m5 = message(&r[3]);
    assert!(m5.starts_with("line 5: \"time_limit\":"), "{m5}");
    // A JSON syntax error: the input's line and the column in it, not
    // serde_json's "line 1 column 31".
    let m6 = message(&r[4]);
    assert!(m6.starts_with("line 6, column "), "{m6}");
    assert!(!m6.contains("line 1"), "{m6}");
    // null is "no limit".
    assert_eq!(r[5]["ok"], 4, "{}", r[5]);
}

#[test]
fn a_closed_stdout_stops_without_a_summary() {
    let dir = scratch("epipe");
    let lines: Vec<String> = (0..200_000).map(|i| format!("[{i}]")).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let input = lines_file(&dir, "in.jsonl", &refs);
    let mut cmd = host_command();
    cmd.args([
        "run",
        &plugin_str("math"),
        "--task",
        "square",
        "--input",
        &input,
        "-w",
        "2",
    ]);
    let (first, err, status) = head_one(&mut cmd);
    assert_eq!(first.trim(), r#"{"index":0,"ok":0}"#);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        !err.contains(" ok"),
        "a summary beside exit status 1: {err}"
    );
    assert!(!err.contains("jobs"), "{err}");
    assert!(err.trim().is_empty(), "no message: {err}");
}

#[test]
fn debug_logs_show_the_pool_and_carry_no_colour_codes_in_a_pipe() {
    let out = host_command()
        .args([
            "run",
            &plugin_str("math"),
            "--task",
            "square",
            "--args",
            "[3]",
        ])
        .env("RUST_LOG", "debug")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    let log = stderr(&out);
    assert!(!log.contains('\x1b'), "ANSI codes in a pipe: {log:?}");
    for what in [
        "zygote pid",
        "loaded the plugins",
        "started: pid",
        "to worker#",
        "math.square",
        "the pool shuts down: 1 worker(s) ended",
    ] {
        assert!(log.contains(what), "debug log lacks {what:?}:\n{log}");
    }
    // BILLIARD_LOG wins over RUST_LOG.
    let out = host_command()
        .args([
            "run",
            &plugin_str("math"),
            "--task",
            "square",
            "--args",
            "[3]",
        ])
        .env("RUST_LOG", "debug")
        .env("BILLIARD_LOG", "error")
        .output()
        .unwrap();
    assert!(!stderr(&out).contains("DEBUG"), "{}", stderr(&out));
    // A filter that does not parse is said, not ignored silently.
    let out = host_command()
        .args([
            "run",
            &plugin_str("math"),
            "--task",
            "square",
            "--args",
            "[3]",
        ])
        .env("BILLIARD_LOG", "=[")
        .output()
        .unwrap();
    assert!(stderr(&out).contains("BILLIARD_LOG"), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), r#"{"index":0,"ok":9}"#);
}

/// Runs `run --args [3]` with stderr on a pseudo-terminal and returns what
/// the terminal got.
fn stderr_on_a_terminal(no_color: Option<&str>) -> String {
    let pty = nix::pty::openpty(None, None).expect("a pseudo-terminal");
    let mut cmd = Command::new(common::bin());
    cmd.args([
        "run",
        &plugin_str("math"),
        "--task",
        "square",
        "--args",
        "[3]",
    ])
    .env("RUST_LOG", "debug")
    .env_remove("NO_COLOR")
    .stdout(Stdio::piped())
    .stderr(Stdio::from(pty.slave));
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let mut child = cmd.spawn().unwrap();
    drop(cmd); // our copy of the slave end: EOF once the child is gone
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // A pty's master reads EIO once every slave end is closed.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    });
    let status = child.wait().unwrap();
    assert!(status.success());
    reader.join().unwrap()
}

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    let coloured = stderr_on_a_terminal(None);
    assert!(coloured.contains("DEBUG"), "{coloured:?}");
    assert!(
        coloured.contains('\x1b'),
        "no colour on a terminal: {coloured:?}"
    );
    let plain = stderr_on_a_terminal(Some("1"));
    assert!(plain.contains("DEBUG"), "{plain:?}");
    assert!(
        !plain.contains('\x1b'),
        "colour despite NO_COLOR: {plain:?}"
    );
    // NO_COLOR="" does not count (no-color.org).
    let empty = stderr_on_a_terminal(Some(""));
    assert!(empty.contains('\x1b'), "{empty:?}");
}

#[test]
fn every_subcommand_help_has_examples() {
    let top = stdout(&host(["--help"]));
    let commands: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        // "  run   Run jobs..." (a wrapped description is indented further)
        .filter(|l| l.starts_with("  ") && !l[2..].starts_with(' '))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    for expected in [
        "run",
        "inspect",
        "check",
        "worker",
        "submit",
        "new",
        "completions",
    ] {
        assert!(
            commands.iter().any(|c| c == expected),
            "{expected} missing from:\n{top}"
        );
    }
    assert!(top.contains("Examples:"), "{top}");
    for command in &commands {
        let out = host([command.as_str(), "--help"]);
        assert_eq!(exit_code(&out), 0, "{command} --help");
        let help = stdout(&out);
        let examples = help
            .split_once("Examples:")
            .unwrap_or_else(|| panic!("`{command} --help` has no Examples section:\n{help}"))
            .1;
        assert!(
            examples.contains(&format!("billiard-host {command}")),
            "`{command} --help` examples do not show the command:\n{help}"
        );
    }
}

#[test]
fn a_closed_stdout_on_a_terminal_leaves_no_bar_and_no_summary() {
    let dir = scratch("epipe-tty");
    let lines: Vec<String> = (0..200_000).map(|i| format!("[{i}]")).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let input = lines_file(&dir, "in.jsonl", &refs);
    let pty = nix::pty::openpty(None, None).expect("a pseudo-terminal");
    let mut cmd = host_command();
    cmd.args([
        "run",
        &plugin_str("math"),
        "--task",
        "square",
        "--input",
        &input,
        "-w",
        "2",
    ])
    .env_remove("NO_COLOR")
    .stdout(Stdio::piped())
    .stderr(Stdio::from(pty.slave));
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    });
    let mut out = BufReader::new(child.stdout.take().unwrap());
    // Read until the bar has drawn (the input file's length is counted
    // in the background) and results flow, then close the pipe.
    let mut line = String::new();
    for _ in 0..2000 {
        line.clear();
        out.read_line(&mut line).unwrap();
    }
    drop(out);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let tty = reader.join().unwrap();
    assert!(!tty.contains("jobs:"), "a summary: {tty:?}");
    // Whatever the bar drew, the last thing on the terminal clears it.
    if tty.contains("jobs") {
        let tail = tty.rsplit("\x1b[2K").next().unwrap_or_default();
        assert!(tail.trim().is_empty(), "the bar is left: {tail:?}");
    }
}

#[test]
fn a_closed_stdout_of_run_broker_stops_without_a_summary() {
    let Some(redis) =
        common::celery::redis_or_skip("a_closed_stdout_of_run_broker_stops_without_a_summary")
    else {
        return;
    };
    let url = redis.url();
    let math = plugin_str("math");
    let _worker = common::celery::spawn_worker(["worker", &math, "--broker", &url, "-c", "2"]);
    let dir = scratch("epipe-broker");
    let lines: Vec<String> = (0..3_000).map(|i| format!("[{i}]")).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let input = lines_file(&dir, "in.jsonl", &refs);
    let mut cmd = host_command();
    cmd.args([
        "run", "--broker", &url, "--task", "square", "--input", &input,
    ]);
    let (first, err, status) = head_one(&mut cmd);
    assert_eq!(first.trim(), r#"{"index":0,"ok":0}"#);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        !err.contains("jobs:"),
        "a summary beside exit status 1: {err}"
    );
}

/// `cmd | head -1`: spawns it with piped stdout and stderr, reads one
/// stdout line, closes the pipe, then returns that line, all of stderr and
/// the exit status.
fn head_one(cmd: &mut Command) -> (String, String, std::process::ExitStatus) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    drop(out);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (first, err, child.wait().unwrap())
}
