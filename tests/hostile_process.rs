//! Hostile tasks and operator actions against the pool's processes: the
//! regression tests of the adversarial report's lifecycle findings.
//!
//! - B9: signals meant for the host, sent to every pool process (systemd's
//!   `KillMode=control-group`, `pkill`, `killall -HUP`), are ridden out by
//!   the zygote and the workers: a warm stop lets running jobs finish, a
//!   reload loses nothing;
//! - B14: processes a task starts get default signal dispositions;
//! - B12: signal state a task leaves behind (SIG_IGN or its own handler
//!   for SIGUSR1, a blocked mask) does not disable later soft limits;
//! - B10: the pool starts under a small open-files limit, and a limit too
//!   small is named;
//! - B13: a task that kills its zygote costs no other worker's job, and the
//!   orphaned workers still die with the host;
//! - B8: no process a task started outlives its worker's end, whatever
//!   group or session it moved to.
//!
//! Waiting for another process to die or appear is done by polling /proc
//! with a deadline (`common::eventually`).

use crate::common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::run::{finish, helpers_of, signal, start};
use common::{host_command, json_lines, kind, lines_file, plugin_str, scratch};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// Runs `billiard-host run ARGS` to the end: (results, stderr, exit code).
fn run(args: &[&str]) -> (Vec<Value>, String, i32) {
    let out = host_command()
        .arg("run")
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .output()
        .expect("billiard-host runs");
    let err = common::stderr(&out);
    let code = out
        .status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {:?}; stderr: {err}", out.status));
    (json_lines(&common::stdout(&out)), err, code)
}

/// Starts a run of `jobs` (object lines) on the hostile plugin with `-w 2`,
/// waits for its first result; returns the child, its stdout reader, the
/// first line and the pids of its zygote and workers at that moment.
fn started_with_workers(
    test: &str,
    jobs: &[&str],
    extra: &[&str],
) -> (
    Child,
    BufReader<std::process::ChildStdout>,
    String,
    Vec<i32>,
) {
    let dir = scratch(test);
    let input = lines_file(&dir, "jobs.jsonl", jobs);
    let hostile = plugin_str("hostile");
    let mut args = vec![hostile.as_str(), "--input", &input, "-w", "2"];
    args.extend_from_slice(extra);
    let mut child = start(&args);
    let host = child.id() as i32;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.contains("\"ok\""), "{first}");
    let mut helpers = Vec::new();
    let found = common::eventually(Duration::from_secs(10), || {
        let (z, w) = helpers_of(host);
        helpers = z.iter().chain(&w).copied().collect();
        z.len() == 1 && w.len() == 2
    });
    assert!(found, "no zygote with two workers: {helpers:?}");
    (child, out, first, helpers)
}

/// Asserts that no job of a run was lost: each index once, in order, every
/// outcome `ok` (the value `value`) or `terminated`; returns how many are ok.
fn assert_nothing_lost(rs: &[Value], lines: usize, value: u64) -> usize {
    let idx: Vec<u64> = rs.iter().map(|r| r["index"].as_u64().unwrap()).collect();
    assert_eq!(idx, (0..lines as u64).collect::<Vec<_>>(), "{rs:?}");
    let ok = rs.iter().take_while(|r| kind(r) == "ok").count();
    assert!(rs[..ok].iter().all(|r| r["ok"] == value), "{rs:?}");
    for r in &rs[ok..] {
        assert_eq!(kind(r), "terminated", "a job was lost: {r}");
    }
    ok
}

// ----- B9 -----------------------------------------------------------------

#[test]
fn b9_sigterm_to_every_pool_process_lets_running_jobs_finish() {
    let jobs = vec![r#"{"task":"nap","args":[500]}"#; 12];
    let (child, out, first, helpers) = started_with_workers("b9_term", &jobs, &[]);
    let host = child.id() as i32;
    // What `pkill billiard-host` and a control-group stop do: every
    // process of the service gets SIGTERM, helpers first here (the worst
    // order: the host cannot tell them anything before).
    for &p in &helpers {
        signal(p, Signal::SIGTERM);
    }
    signal(host, Signal::SIGTERM);
    let (rs, err, code) = finish(child, out, first);
    let ok = assert_nothing_lost(&rs, jobs.len(), 500);
    // The first result plus the two jobs running at the signal.
    assert!(ok >= 3, "running jobs were cut short: {rs:?}\n{err}");
    assert!(err.contains("SIGTERM: no more input"), "{err}");
    assert!(!err.contains("zygote died"), "{err}");
    assert_eq!(code, if ok < jobs.len() { 1 } else { 0 }, "{err}");
}

#[test]
fn b9_sighup_to_every_pool_process_reloads_without_losing_jobs() {
    let jobs = vec![r#"{"task":"nap","args":[300]}"#; 10];
    let (child, out, first, helpers) = started_with_workers("b9_hup", &jobs, &[]);
    let host = child.id() as i32;
    // `killall -HUP billiard-host`: the reload signal, to every process.
    for &p in &helpers {
        signal(p, Signal::SIGHUP);
    }
    signal(host, Signal::SIGHUP);
    let (rs, err, code) = finish(child, out, first);
    assert_eq!(code, 0, "{rs:?}\n{err}");
    assert_eq!(
        assert_nothing_lost(&rs, jobs.len(), 300),
        jobs.len(),
        "{rs:?}"
    );
    // The host took it as the reload it is (its note starts "SIGHUP:").
    assert!(err.contains("SIGHUP:"), "{err}");
    assert!(!err.contains("zygote died"), "{err}");
}

#[test]
fn b9_operator_signals_to_the_zygote_and_workers_change_nothing() {
    let jobs = vec![r#"{"task":"nap","args":[200]}"#; 10];
    let (child, out, first, helpers) = started_with_workers("b9_others", &jobs, &[]);
    // Signals that reach the helpers but not the host (a mistyped pid, a
    // `pkill -f` pattern matching their command line): they are not theirs
    // to act on.
    common::run::signal_as_an_operator(&helpers);
    let (rs, err, code) = finish(child, out, first);
    assert_eq!(code, 0, "{rs:?}\n{err}");
    assert_eq!(
        assert_nothing_lost(&rs, jobs.len(), 200),
        jobs.len(),
        "{rs:?}"
    );
    assert!(!err.contains("zygote died"), "{err}");
}

// ----- B14 ----------------------------------------------------------------

#[test]
fn b14_processes_a_task_starts_get_default_signal_dispositions() {
    let hostile = plugin_str("hostile");
    let (rs, err, code) = run(&[&hostile, "--task", "child_signals", "--args", "[]"]);
    assert_eq!(code, 0, "{rs:?}\n{err}");
    let ignored = rs[0]["ok"][0].as_u64().unwrap();
    let died_of_sigterm = rs[0]["ok"][1].as_bool().unwrap();
    let bit = |sig: i32| 1u64 << (sig - 1);
    for (name, sig) in [
        ("SIGHUP", libc::SIGHUP),
        ("SIGINT", libc::SIGINT),
        ("SIGQUIT", libc::SIGQUIT),
        ("SIGPIPE", libc::SIGPIPE),
        ("SIGTERM", libc::SIGTERM),
    ] {
        assert_eq!(
            ignored & bit(sig),
            0,
            "the task's child ignores {name} (SigIgn {ignored:#x})"
        );
    }
    assert!(died_of_sigterm, "kill -TERM did not end the task's child");
}

// ----- B12 ----------------------------------------------------------------

#[test]
fn b12_signal_state_a_task_leaves_behind_does_not_disable_soft_limits() {
    let dir = scratch("b12");
    let coop = r#"{"task":"coop","args":[3000],"soft_time_limit":"200ms"}"#;
    let lines = [
        r#"{"task":"spoil_signals","args":[0]}"#, // SIGUSR1 → SIG_IGN
        coop,
        r#"{"task":"spoil_signals","args":[1]}"#, // its own SIGUSR1 handler
        coop,
        r#"{"task":"spoil_signals","args":[2]}"#, // every signal blocked
        coop,
    ];
    let input = lines_file(&dir, "jobs.jsonl", &lines);
    let hostile = plugin_str("hostile");
    // One worker: every job runs after the previous one on the same process.
    let (rs, err, _) = run(&[&hostile, "--input", &input, "-w", "1"]);
    assert_eq!(rs.len(), lines.len(), "{rs:?}\n{err}");
    for i in [0, 2, 4] {
        assert_eq!(kind(&rs[i]), "ok", "{}", rs[i]);
    }
    for i in [1, 3, 5] {
        assert_eq!(
            kind(&rs[i]),
            "soft_time_limit",
            "after `{}` the soft limit did not stop the next job: {}",
            lines[i - 1],
            rs[i]
        );
    }
    assert!(!err.contains("worker_lost"), "{err}");
}

// ----- B10 ----------------------------------------------------------------

/// `billiard-host run ARGS` with RLIMIT_NOFILE set to `limit` (soft and
/// hard, as `ulimit -n` does).
fn run_with_fd_limit(limit: u64, args: &[&str]) -> (String, String, Option<i32>) {
    let mut cmd = host_command();
    cmd.arg("run")
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe and the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("billiard-host runs");
    (
        common::stdout(&out),
        common::stderr(&out),
        out.status.code(),
    )
}

#[test]
fn b10_the_pool_starts_under_a_small_open_files_limit() {
    let dir = scratch("b10");
    let lines: Vec<String> = (0..50).map(|i| format!("[{i}]")).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let input = lines_file(&dir, "jobs.jsonl", &refs);
    let math = plugin_str("math");
    for (limit, workers) in [(32, "2"), (64, "8"), (100, "4"), (101, "4")] {
        let (out, err, code) = run_with_fd_limit(
            limit,
            &[&math, "--task", "square", "--input", &input, "-w", workers],
        );
        assert_eq!(code, Some(0), "ulimit -n {limit}, -w {workers}: {err}");
        let rs = json_lines(&out);
        assert_eq!(rs.len(), 50, "{err}");
        for (i, r) in rs.iter().enumerate() {
            assert_eq!(r["ok"], (i * i) as u64, "{r}");
        }
    }
}

#[test]
fn b10_an_open_files_limit_too_small_is_named() {
    let dir = scratch("b10_small");
    let input = lines_file(&dir, "jobs.jsonl", &["[1]", "[2]", "[3]"]);
    let math = plugin_str("math");
    let names_the_limit = |err: &str, limit: u64| {
        err.contains("RLIMIT_NOFILE")
            && err.contains("ulimit -n")
            && err.contains(&format!("is {limit} "))
    };
    // Room for a few workers, not 64: the pool runs with those it could
    // start, says why, and does not retry forever. The jobs are sent only
    // once the shortage was reported (else a quick batch may end before
    // the pool has tried to start them all).
    let mut cmd = host_command();
    cmd.args([
        "run", &math, "--task", "square", "--input", "-", "-w", "64", "-q",
    ])
    .env_remove("RUST_BACKTRACE")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe and the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: 32,
                rlim_max: 32,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("billiard-host runs");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let errs = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(errs).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut seen = false;
    while !seen {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen = names_the_limit(&line, 32),
            Err(_) => break,
        }
    }
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"[1]\n[2]\n[3]\n").expect("write the jobs");
    }
    let out = child.wait_with_output().expect("billiard-host ends");
    let err = reader.join().expect("stderr reader");
    assert!(seen, "no message names the limit: {err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(json_lines(&common::stdout(&out)).len(), 3, "{err}");
    assert!(err.lines().count() < 10, "a retry storm: {err}");
    // No room for the pool at all: a clear refusal, not a plugin's fault.
    let (_, err, code) = run_with_fd_limit(12, &[&math, "--task", "square", "--input", &input]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        names_the_limit(&err, 12),
        "the error does not name the limit: {err}"
    );
}

// ----- B13 ----------------------------------------------------------------

#[test]
fn b13_a_task_that_kills_its_zygote_costs_no_other_job() {
    let dir = scratch("b13");
    let mut lines = vec![
        r#"{"task":"nap","args":[1500]}"#,
        r#"{"task":"kill_parent","args":[9]}"#,
    ];
    lines.extend(vec![r#"{"task":"nap","args":[10]}"#; 10]);
    let input = lines_file(&dir, "jobs.jsonl", &lines);
    let hostile = plugin_str("hostile");
    let (rs, err, code) = run(&[&hostile, "--input", &input, "-w", "2"]);
    assert_eq!(rs.len(), lines.len(), "{rs:?}\n{err}");
    assert_eq!(
        rs[0]["ok"], 1500,
        "the nap on the other worker was lost: {}\n{err}",
        rs[0]
    );
    for r in &rs[2..] {
        assert_eq!(r["ok"], 10, "{r}\n{err}");
    }
    assert_eq!(code, 0, "{err}");
    // The log says what happened and which jobs were running then.
    assert!(
        err.contains("the zygote") && err.contains("while these jobs were running"),
        "{err}"
    );
    assert!(err.contains("job 1 on worker"), "{err}");
}

#[test]
fn b13_workers_that_outlive_their_zygote_still_die_with_the_host() {
    let dir = scratch("b13_host");
    let lines = [
        r#"{"task":"nap","args":[30000]}"#,
        r#"{"task":"nap","args":[200]}"#,
        r#"{"task":"kill_parent","args":[9]}"#,
    ];
    let input = lines_file(&dir, "jobs.jsonl", &lines);
    let hostile = plugin_str("hostile");
    let mut child = start(&[&hostile, "--input", &input, "-w", "2", "--unordered"]);
    let host = child.id() as i32;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut helpers = (Vec::new(), Vec::new());
    let up = common::eventually(Duration::from_secs(10), || {
        helpers = helpers_of(host);
        helpers.0.len() == 1 && helpers.1.len() == 2
    });
    assert!(up, "{helpers:?}");
    let (zygote, workers) = (helpers.0[0], helpers.1.clone());
    // The nap and the kill come back; the 30 s nap runs on.
    for _ in 0..2 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.contains("\"ok\""), "{line}");
    }
    let gone = common::eventually(Duration::from_secs(10), || !common::running(zygote));
    assert!(gone, "the zygote was not killed");
    let napping: Vec<i32> = workers
        .iter()
        .copied()
        .filter(|&w| common::running(w))
        .collect();
    assert_eq!(
        napping.len(),
        1,
        "the worker running the long nap died with its zygote: {workers:?}"
    );
    // Now the host goes, without a word: the orphaned worker must follow.
    signal(host, Signal::SIGKILL);
    let _ = child.wait();
    let ended = common::eventually(Duration::from_secs(5), || !common::running(napping[0]));
    if !ended {
        let _ = kill(Pid::from_raw(napping[0]), Signal::SIGKILL);
    }
    assert!(ended, "worker {} outlived the host", napping[0]);
}

// ----- B8 -----------------------------------------------------------------

/// Live processes whose name (`/proc/PID/comm`) is `name`.
fn named(name: &str) -> Vec<i32> {
    common::all_processes()
        .into_iter()
        .filter(|p| p.1 != 'Z')
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{}/comm", p.0))
                .is_ok_and(|c| c.trim_end() == name)
        })
        .map(|p| p.0)
        .collect()
}

/// Asserts that no process named `name` is left (polling briefly: a
/// SIGKILLed process takes a moment to go); kills any that are.
fn assert_none_left(name: &str, run: usize) {
    let gone = common::eventually(Duration::from_secs(2), || named(name).is_empty());
    if !gone {
        let left = named(name);
        for &p in &left {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        let info: Vec<_> = left.iter().map(|&p| (p, common::proc_stat(p))).collect();
        panic!("run {run}: a task's child outlived the host: {info:?} (pid, (state, ppid, pgrp))");
    }
}

#[test]
fn b8_a_tasks_child_in_the_workers_group_never_outlives_a_normal_exit() {
    let hostile = plugin_str("hostile");
    let name = "b8-grp-orphan";
    for run_no in 0..20 {
        let args = format!(r#"["{name}", 60, false]"#);
        let (rs, err, code) = run(&[&hostile, "--task", "fork_named", "--args", &args]);
        assert_eq!(code, 0, "{rs:?}\n{err}");
        assert_none_left(name, run_no);
    }
}

#[test]
fn b8_a_tasks_child_in_its_own_session_never_outlives_a_normal_exit() {
    let hostile = plugin_str("hostile");
    let name = "b8-sid-orphan";
    for run_no in 0..5 {
        let args = format!(r#"["{name}", 60, true]"#);
        let (rs, err, code) = run(&[&hostile, "--task", "fork_named", "--args", &args]);
        assert_eq!(code, 0, "{rs:?}\n{err}");
        assert_none_left(name, run_no);
    }
}

#[test]
fn b8_a_worker_that_joins_the_zygotes_group_cannot_hide_a_child_from_the_hard_limit() {
    let dir = scratch("b8_pgid");
    let name = "b8-pgid-escape";
    // The escape, then a nap that keeps the pool running while we look.
    let escape =
        format!(r#"{{"task":"escape_group","args":["{name}", 60, 5000],"time_limit":"500ms"}}"#);
    let lines = [escape.as_str(), r#"{"task":"nap","args":[3000]}"#];
    let input = lines_file(&dir, "jobs.jsonl", &lines);
    let hostile = plugin_str("hostile");
    let mut child = start(&[&hostile, "--input", &input, "-w", "1"]);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let r: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(kind(&r), "time_limit", "{r}");
    // The hard limit ended the worker: its task's child goes with it, now,
    // not at the host's exit.
    assert!(common::running(child.id() as i32));
    assert_none_left(name, 0);
    let (rs, err, code) = finish(child, out, first);
    assert_eq!(rs[1]["ok"], 3000, "{rs:?}\n{err}");
    assert_eq!(code, 1, "{err}");
    assert_none_left(name, 1);
}
