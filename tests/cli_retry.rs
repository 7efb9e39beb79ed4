//! `billiard-host run --retries` (issue 23 item 2): failed jobs of a local
//! batch run again under the retry policy, through the real binary and the
//! real `faults` plugin, and each result line says how many attempts its
//! job took and how the earlier ones failed.

use crate::common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{exit_code, host_command, plugin_str, scratch, stderr, stdout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

fn faults() -> String {
    plugin_str("faults")
}

fn base(args: &[&str]) -> Command {
    let mut cmd = host_command();
    cmd.arg("run")
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("BILLIARD_BACKTRACE")
        .stdin(Stdio::null());
    cmd
}

fn run(args: &[&str]) -> Output {
    base(args).output().expect("billiard-host runs")
}

/// The one result line of a `--args` run.
fn one(out: &Output) -> Value {
    let lines = common::json_lines(&stdout(out));
    assert_eq!(
        lines.len(),
        1,
        "stdout: {} stderr: {}",
        stdout(out),
        stderr(out)
    );
    lines[0].clone()
}

/// How many times a task that counts its runs in `path` ran.
fn runs(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

fn kinds(line: &Value) -> Vec<String> {
    line["retried"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["kind"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn k23_run_retries_a_failed_job_until_it_succeeds_and_shows_each_attempt() {
    let dir = scratch("until_success");
    let count = dir.join("runs");
    let args = json!([count, 2]).to_string();
    // A plain task_error, retried because --retries retries task_error.
    let out = run(&[
        &faults(),
        "--task",
        "autoretried",
        "--args",
        &args,
        "--retries",
        "3",
        "--retry-delay",
        "0s",
    ]);
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    let line = one(&out);
    assert_eq!(line["ok"], 3, "{line}");
    assert_eq!(line["attempts"], 3, "{line}");
    assert_eq!(kinds(&line), ["task_error", "task_error"], "{line}");
    assert_eq!(
        line["retried"][0]["message"], "run 1: failing until run 3",
        "{line}"
    );
    assert_eq!(line["retried"][1]["message"], "run 2: failing until run 3");
    assert_eq!(runs(&count), 3);

    // The task's own request for a retry (Failure::retry) is honoured
    // within --retries.
    let count = dir.join("asks");
    let args = json!([count, 2]).to_string();
    let out = run(&[
        &faults(),
        "--task",
        "flaky",
        "--args",
        &args,
        "--retries",
        "2",
    ]);
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    let line = one(&out);
    assert_eq!(
        (line["ok"].clone(), line["attempts"].clone()),
        (json!(3), json!(3)),
        "{line}"
    );
    assert_eq!(runs(&count), 3);

    // A job that succeeds at once has a line without the optional fields.
    let out = run(&[
        &faults(),
        "--task",
        "square",
        "--args",
        "[4]",
        "--retries",
        "2",
    ]);
    assert_eq!(one(&out), json!({"index": 0, "ok": 16}));
}

#[test]
fn k23_past_the_cap_the_final_error_comes_with_every_attempt() {
    let dir = scratch("past_cap");
    let count = dir.join("runs");
    let args = json!([count, 10]).to_string();
    let out = run(&[
        &faults(),
        "--task",
        "autoretried",
        "--args",
        &args,
        "--retries",
        "2",
        "--retry-backoff",
        "10ms",
        "--no-retry-jitter",
    ]);
    assert_eq!(exit_code(&out), 1, "{}", stderr(&out));
    let line = one(&out);
    assert_eq!(line["error"]["kind"], "task_error", "{line}");
    assert_eq!(line["error"]["message"], "run 3: failing until run 11");
    assert_eq!(line["attempts"], 3);
    let messages: Vec<&str> = line["retried"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        ["run 1: failing until run 11", "run 2: failing until run 11"]
    );
    assert_eq!(runs(&count), 3, "--retries 2 is three runs in all");

    // --retries is a cap on what the task asks for too.
    let count = dir.join("asks");
    let args = json!([count, 10]).to_string();
    let out = run(&[
        &faults(),
        "--task",
        "flaky",
        "--args",
        &args,
        "--retries",
        "1",
    ]);
    assert_eq!(exit_code(&out), 1);
    assert_eq!(one(&out)["attempts"], 2);
    assert_eq!(runs(&count), 2);

    // Without --retries nothing runs twice, not even a task asking for it.
    let count = dir.join("none");
    let args = json!([count, 10]).to_string();
    let out = run(&[&faults(), "--task", "flaky", "--args", &args]);
    let line = one(&out);
    assert_eq!(line["error"]["kind"], "task_error", "{line}");
    assert!(line.get("attempts").is_none(), "{line}");
    assert_eq!(runs(&count), 1);
}

#[test]
fn k23_a_worker_lost_is_retried_and_other_kinds_only_when_listed() {
    let out = run(&[
        &faults(),
        "--task",
        "segfault",
        "--args",
        "[]",
        "--retries",
        "2",
        "--retry-delay",
        "0s",
    ]);
    assert_eq!(exit_code(&out), 1);
    let line = one(&out);
    assert_eq!(line["error"]["kind"], "worker_lost", "{line}");
    assert!(
        line["error"]["message"]
            .as_str()
            .unwrap()
            .contains("SIGSEGV"),
        "{line}"
    );
    assert_eq!(line["attempts"], 3);
    assert_eq!(kinds(&line), ["worker_lost", "worker_lost"]);

    // --retry-on names what is retried: here not a worker's death.
    let out = run(&[
        &faults(),
        "--task",
        "segfault",
        "--args",
        "[]",
        "--retries",
        "2",
        "--retry-on",
        "task_error",
    ]);
    let line = one(&out);
    assert_eq!(line["error"]["kind"], "worker_lost");
    assert!(line.get("attempts").is_none(), "{line}");

    // Each attempt runs on its own time limit: both are killed at it.
    let out = run(&[
        &faults(),
        "--task",
        "sleep_ms",
        "--args",
        "[20000]",
        "--time-limit",
        "200ms",
        "--retries",
        "1",
        "--retry-on",
        "time_limit",
        "--retry-delay",
        "0s",
    ]);
    let line = one(&out);
    assert_eq!(line["error"]["kind"], "time_limit", "{line}");
    assert_eq!(line["attempts"], 2);
    assert_eq!(kinds(&line), ["time_limit"]);
}

#[test]
fn k23_a_failed_item_of_a_chunk_is_retried_alone_and_the_order_holds() {
    let dir = scratch("chunk");
    // Six jobs of one task in one chunk; the third fails once.
    let lines: Vec<String> = (0..6)
        .map(|i| {
            let fail = u32::from(i == 2);
            json!([dir.join(format!("runs{i}")), fail]).to_string()
        })
        .collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let input = common::lines_file(&dir, "jobs.jsonl", &refs);
    for extra in [&[][..], &["--unordered"][..]] {
        for i in 0..6 {
            let _ = std::fs::remove_file(dir.join(format!("runs{i}")));
        }
        let mut args = vec![
            faults(),
            "--task".into(),
            "flaky".into(),
            "--input".into(),
            input.clone(),
            "--chunksize".into(),
            "6".into(),
            "-w".into(),
            "1".into(),
            "--retries".into(),
            "2".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&argv);
        assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
        // The summary counts jobs, and says how many attempts ran again.
        assert!(
            stderr(&out).contains("6 jobs: 6 ok") && stderr(&out).contains("; 1 retry\n"),
            "{}",
            stderr(&out)
        );
        let rs = common::json_lines(&stdout(&out));
        let mut indices: Vec<u64> = rs.iter().map(|r| r["index"].as_u64().unwrap()).collect();
        if extra.is_empty() {
            assert_eq!(
                indices,
                (0..6).collect::<Vec<_>>(),
                "in input order: {rs:?}"
            );
        }
        indices.sort_unstable();
        assert_eq!(indices, (0..6).collect::<Vec<_>>(), "each once: {rs:?}");
        for r in &rs {
            let i = r["index"].as_u64().unwrap();
            if i == 2 {
                assert_eq!(
                    (r["ok"].clone(), r["attempts"].clone()),
                    (json!(2), json!(2)),
                    "{r}"
                );
                assert_eq!(kinds(r), ["task_error"]);
            } else {
                // The rest of the chunk kept its results: one run each.
                assert_eq!(r, &json!({"index": i, "ok": 1}), "{r}");
            }
        }
        for i in 0..6 {
            let want = if i == 2 { 2 } else { 1 };
            assert_eq!(
                runs(&dir.join(format!("runs{i}"))),
                want,
                "job {i} {extra:?}"
            );
        }
    }
}

#[test]
fn k23_a_retry_waiting_when_the_run_is_killed_is_answered() {
    // The retry waits an hour; the second signal ends it `terminated`,
    // with the attempt that failed on its line.
    let mut child = base(&[
        &faults(),
        "--task",
        "fail",
        "--input",
        "-",
        "--retries",
        "3",
        "--retry-delay",
        "1h",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .env("BILLIARD_LOG", "billiard_host::pool::retry=debug")
    .spawn()
    .expect("billiard-host starts");
    let mut input = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut input, b"[\"nope\"]\n").unwrap();
    let mut errs = BufReader::new(child.stderr.take().unwrap());
    // Waits for the log line that says the retry is scheduled.
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            errs.read_line(&mut line).unwrap() > 0,
            "no retry logged: {seen}"
        );
        seen.push_str(&line);
        if line.contains("retry 1 in") {
            break;
        }
    }
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGTERM).unwrap();
    loop {
        let mut line = String::new();
        assert!(errs.read_line(&mut line).unwrap() > 0, "no note: {seen}");
        seen.push_str(&line);
        if line.starts_with("SIGTERM") {
            break;
        }
    }
    kill(pid, Signal::SIGINT).unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = child.wait().unwrap();
    drop(input);
    let mut rest = String::new();
    errs.read_to_string(&mut rest).unwrap();
    assert_eq!(status.code(), Some(1), "{seen}{rest}");
    let rs = common::json_lines(&out);
    assert_eq!(rs.len(), 1, "{out}");
    let line = &rs[0];
    assert_eq!(line["error"]["kind"], "terminated", "{line}");
    assert!(
        line["error"]["message"]
            .as_str()
            .unwrap()
            .contains("waited for its retry"),
        "{line}"
    );
    assert_eq!(line["attempts"], 2, "{line}");
    assert_eq!(kinds(line), ["task_error"]);
}

#[test]
fn k23_retry_flags_are_checked_where_they_enter() {
    let refused = |args: &[&str], says: &str| {
        let mut argv = vec![faults()];
        argv.extend(["--task", "square", "--args", "[1]"].map(String::from));
        argv.extend(args.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = run(&argv);
        assert_eq!(exit_code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    };
    refused(&["--retries", "10001"], "from 0 to 10000");
    refused(&["--retries=-1"], "from 0 to 10000");
    refused(
        &["--retries", "2", "--retry-on", "terminated"],
        "never retried",
    );
    refused(&["--retries", "2", "--retry-on", "oops"], "worker_lost");
    refused(&["--retries", "2", "--retry-delay", "11y"], "10 years");
    refused(
        &["--retries", "2", "--retry-backoff", "0s"],
        "longer than 0",
    );
    refused(&["--retry-backoff", "1s"], "--retries");
    refused(
        &["--retries", "2", "--retry-backoff-max", "1s"],
        "--retry-backoff",
    );
    refused(
        &[
            "--retries",
            "2",
            "--retry-backoff",
            "1s",
            "--retry-delay",
            "1s",
        ],
        "cannot be used with",
    );
    refused(&["--retries", "2", "--isolated"], "cannot be used with");
    // A fleet's retries are its workers' policy, not the sender's.
    let out = run(&[
        "--broker",
        "redis://127.0.0.1:1/0",
        "--task",
        "square",
        "--args",
        "[1]",
        "--retries",
        "2",
    ]);
    assert_eq!(exit_code(&out), 2);
    assert!(
        stderr(&out).contains("--retries") && stderr(&out).contains("--broker"),
        "{}",
        stderr(&out)
    );
    // --retries 0 is the default: no retries, and accepted.
    let out = run(&[
        &faults(),
        "--task",
        "square",
        "--args",
        "[2]",
        "--retries",
        "0",
    ]);
    assert_eq!(one(&out), json!({"index": 0, "ok": 4}));
}

#[test]
fn k23_a_chunk_whose_worker_dies_is_retried_item_by_item() {
    // A chunk runs item by item: when its third job kills the worker, the
    // two before it keep their results, the one after it is resent and
    // runs once, and only the culprit is retried (alone) and dies again
    // (issue 24 item 2: before it, every job of the chunk ended
    // worker_lost and all four were retried).
    let hostile = plugin_str("hostile");
    let out = base(&[
        &hostile,
        "--task",
        "kill_pid",
        "--input",
        "-",
        "--chunksize",
        "4",
        "-w",
        "1",
        "--retries",
        "1",
        "--retry-delay",
        "0s",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .and_then(|mut c| {
        use std::io::Write;
        c.stdin
            .take()
            .unwrap()
            .write_all(b"[0, 0]\n[0, 0]\n[0, 11]\n[0, 0]\n")?;
        c.wait_with_output()
    })
    .unwrap();
    assert_eq!(exit_code(&out), 1, "{}", stderr(&out));
    let rs = common::json_lines(&stdout(&out));
    assert_eq!(rs.len(), 4, "{rs:?}");
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(r["index"], i as u64, "{r}");
        if i == 2 {
            assert_eq!(r["attempts"], 2, "{r}");
            assert_eq!(kinds(r), ["worker_lost"], "{r}");
            assert_eq!(r["error"]["kind"], "worker_lost", "{r}");
        } else {
            assert!(r.get("attempts").is_none(), "{r}");
            assert_eq!(r["ok"], 0, "{r}");
        }
    }

    // A streaming job whose items went out is not run again (its items
    // would be sent twice): its failure is final.
    let out = run(&[
        &hostile,
        "--task",
        "emit_then_segv",
        "--args",
        "[3]",
        "--retries",
        "2",
    ]);
    let rs = common::json_lines(&stdout(&out));
    let items: Vec<&Value> = rs.iter().filter(|r| r.get("item").is_some()).collect();
    assert_eq!(items.len(), 3, "{rs:?}");
    let last = rs.last().unwrap();
    assert_eq!(last["error"]["kind"], "worker_lost", "{last}");
    assert!(last.get("attempts").is_none(), "{last}");
}
