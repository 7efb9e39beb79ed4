//! Signals and deaths: what container managers, shells and the OOM killer
//! do to the host and its workers.
//!
//! - SIGTERM to the host's whole process group (as `docker stop` and
//!   systemd send it): workers live in groups of their own, so the stop is
//!   the host's gentle one and every job still gets a result;
//! - one signal delivered twice at once (pid and group) counts once; a
//!   second SIGTERM later is the cold stop;
//! - SIGKILL of the host: no zygote or worker outlives it by a second, with
//!   any start method;
//! - a task that leaves grandchildren behind and passes its hard limit;
//! - SIGKILL and SIGSTOP of a worker from outside, and `terminate_job`'s
//!   kill racing the job's own result;
//! - a closed stdout (SIGPIPE / EPIPE): a quiet, clean exit.
//!
//! Waiting for another process to die or appear is done by polling /proc
//! with a deadline (`common::eventually`), the only way to observe it.

use crate::common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use billiard_host::{ErrorKind, Event, JobOptions, Pool, PoolBuilder};
use common::run::{finish, helpers_of, signal, start};
use common::{kind, plugin_str, scratch};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// Live `sleep SECS` processes (the grandchildren `spawn_sleeper` starts;
/// each test uses its own SECS so that tests never see each other's).
fn sleepers(secs: u64) -> Vec<i32> {
    let want = format!("sleep\0{secs}\0");
    common::all_processes()
        .into_iter()
        .filter(|p| p.1 != 'Z')
        .filter(|p| {
            std::fs::read(format!("/proc/{}/cmdline", p.0)).is_ok_and(|c| c == want.as_bytes())
        })
        .map(|p| p.0)
        .collect()
}

/// Checks the results of a stopped batch: every index once and in order,
/// a prefix of `ok` results (what ran), then `terminated` ones (what was
/// read but never started), nothing else: no job died with its worker.
fn assert_stopped_cleanly(rs: &[Value], lines: usize, value: u64) -> usize {
    let idx: Vec<u64> = rs.iter().map(|r| r["index"].as_u64().unwrap()).collect();
    assert_eq!(idx, (0..lines as u64).collect::<Vec<_>>(), "{rs:?}");
    let ok = rs.iter().take_while(|r| kind(r) == "ok").count();
    assert!(rs[..ok].iter().all(|r| r["ok"] == value), "{rs:?}");
    for r in &rs[ok..] {
        assert_eq!(kind(r), "terminated", "{r}");
    }
    ok
}

#[test]
fn sigterm_to_the_whole_process_group_stops_gently_and_spares_the_workers() {
    let dir = scratch("group");
    let lines = vec!["[300]"; 16];
    let input = common::lines_file(&dir, "jobs.jsonl", &lines);
    let faults = plugin_str("faults");
    let mut child = start(&[&faults, "--task", "sleep_ms", "--input", &input, "-w", "2"]);
    let host = child.id() as i32;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first, "{\"index\":0,\"ok\":300}\n");
    let (zygotes, workers) = helpers_of(host);
    assert!(
        !zygotes.is_empty() && !workers.is_empty(),
        "{zygotes:?} {workers:?}"
    );
    for &p in zygotes.iter().chain(&workers) {
        let (_, _, pgrp) = common::proc_stat(p).unwrap();
        assert_ne!(pgrp, host, "helper {p} is in the host's process group");
    }
    // What a container manager does: the whole group, at once.
    signal(-host, Signal::SIGTERM);
    let (rs, err, code) = finish(child, out, first);
    let ok = assert_stopped_cleanly(&rs, lines.len(), 300);
    // The jobs running at the signal finished: more than the one seen.
    assert!(ok >= 3, "running jobs were cut short: {rs:?}");
    let terminated = lines.len() - ok;
    assert_eq!(code, if terminated > 0 { 1 } else { 0 }, "{err}");
    if terminated > 0 {
        let msg = rs[ok]["error"]["message"].as_str().unwrap();
        assert!(msg.contains("SIGTERM"), "{msg}");
    }
    assert!(err.contains("SIGTERM: no more input"), "{err}");
    assert!(
        !err.contains("terminating the workers"),
        "one stop, not two: {err}"
    );
    assert!(!err.contains("panicked at"), "{err}");
}

#[test]
fn one_signal_delivered_twice_at_once_counts_once() {
    let dir = scratch("double");
    let lines = vec!["[300]"; 12];
    let input = common::lines_file(&dir, "jobs.jsonl", &lines);
    let faults = plugin_str("faults");
    let mut child = start(&[&faults, "--task", "sleep_ms", "--input", &input, "-w", "2"]);
    let host = child.id() as i32;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    // As `timeout` and some supervisors do: to the process and its group.
    signal(host, Signal::SIGTERM);
    signal(-host, Signal::SIGTERM);
    let (rs, err, _) = finish(child, out, first);
    let ok = assert_stopped_cleanly(&rs, lines.len(), 300);
    assert!(
        ok >= 3,
        "the double delivery killed the running jobs: {rs:?}"
    );
    assert!(!err.contains("terminating the workers"), "{err}");
}

#[test]
fn a_second_sigterm_later_kills_the_running_jobs() {
    let dir = scratch("twice");
    let mut lines = vec!["[0]"];
    lines.extend(vec!["[20000]"; 6]);
    let input = common::lines_file(&dir, "jobs.jsonl", &lines);
    let faults = plugin_str("faults");
    let started = Instant::now();
    let mut child = start(&[&faults, "--task", "sleep_ms", "--input", &input, "-w", "2"]);
    let host = child.id() as i32;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut errs = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first, "{\"index\":0,\"ok\":0}\n");
    signal(host, Signal::SIGTERM);
    let mut note = String::new();
    errs.read_line(&mut note).unwrap();
    assert!(note.starts_with("SIGTERM: no more input"), "{note}");
    // Not synchronization: the same signal within 100 ms counts as the
    // first one (a double delivery); a second request comes later.
    std::thread::sleep(Duration::from_millis(150));
    signal(host, Signal::SIGTERM);
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    errs.read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.starts_with("SIGTERM: terminating the workers"), "{err}");
    let rs: Vec<Value> = (first + &rest)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rs.len(), lines.len());
    assert!(rs[1..].iter().all(|r| kind(r) == "terminated"), "{rs:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the 20 s jobs ran on"
    );
}

/// SIGKILL leaves the host no chance to clean up: its zygote and workers
/// must still be gone within a second (parent-death signals), whatever the
/// start method.
#[test]
fn no_zygote_or_worker_outlives_a_killed_host() {
    let dir = scratch("sigkill");
    let lines = vec!["[20000]"; 6];
    let input = common::lines_file(&dir, "jobs.jsonl", &lines);
    let faults = plugin_str("faults");
    for method in ["forkserver", "fork", "spawn"] {
        let mut child = start(&[
            &faults,
            "--task",
            "sleep_ms",
            "--input",
            &input,
            "-w",
            "2",
            "--start-method",
            method,
        ]);
        let host = child.id() as i32;
        let mut helpers = (Vec::new(), Vec::new());
        let up = common::eventually(Duration::from_secs(20), || {
            helpers = helpers_of(host);
            helpers.1.iter().filter(|&&w| common::running(w)).count() >= 2
        });
        assert!(up, "{method}: two workers never appeared: {helpers:?}");
        let (zygotes, workers) = helpers;
        signal(host, Signal::SIGKILL);
        let _ = child.wait();
        let gone = common::eventually(Duration::from_secs(1), || {
            zygotes.iter().chain(&workers).all(|&p| !common::running(p))
        });
        let left: Vec<i32> = zygotes
            .iter()
            .chain(&workers)
            .copied()
            .filter(|&p| common::running(p))
            .collect();
        assert!(
            gone,
            "{method}: still running 1 s after the host's SIGKILL: {left:?}"
        );
    }
}

/// A task's own children die with the host too, not only the worker.
#[test]
fn a_tasks_children_do_not_outlive_a_killed_host() {
    let faults = plugin_str("faults");
    for (method, secs) in [("forkserver", 4244u64), ("fork", 4247), ("spawn", 4248)] {
        let args = format!("[{secs}, 20000]");
        let mut child = start(&[
            &faults,
            "--task",
            "spawn_sleeper",
            "--args",
            &args,
            "--start-method",
            method,
        ]);
        let host = child.id() as i32;
        let up = common::eventually(Duration::from_secs(20), || !sleepers(secs).is_empty());
        assert!(up, "{method}: the task's child never appeared");
        signal(host, Signal::SIGKILL);
        let _ = child.wait();
        let gone = common::eventually(Duration::from_secs(1), || sleepers(secs).is_empty());
        let left = sleepers(secs);
        for &p in &left {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        assert!(
            gone,
            "{method}: the task's child survived the host's SIGKILL: {left:?}"
        );
    }
}

#[test]
fn a_task_that_leaves_grandchildren_and_passes_its_hard_limit_leaves_none() {
    let dir = scratch("grandchildren");
    let input = common::lines_file(&dir, "jobs.jsonl", &["[4242, 20000]", "[4242, 20000]"]);
    let faults = plugin_str("faults");
    let child = start(&[
        &faults,
        "--task",
        "spawn_sleeper",
        "--input",
        &input,
        "-w",
        "2",
        "--time-limit",
        "500ms",
        "-q",
    ]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let rs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rs.len(), 2);
    assert!(rs.iter().all(|r| kind(r) == "time_limit"), "{rs:?}");
    let gone = common::eventually(Duration::from_secs(1), || sleepers(4242).is_empty());
    assert!(gone, "grandchildren survived: {:?}", sleepers(4242));
}

// ----- a worker killed or stopped from outside ------------------------------

fn builder(workers: usize) -> PoolBuilder {
    common::pool_builder(workers, &["math", "faults"])
}

/// Submits a long job that starts a `sleep SECS` child, and returns it
/// with the pid of the worker running it, once the task is running (its
/// child exists: a job only handed to a worker could be retried elsewhere).
fn running_job(
    pool: &Pool,
    secs: u64,
    opts: JobOptions<u32>,
) -> (billiard_host::AsyncResult<u32>, i32) {
    let h = pool
        .apply_async_with::<_, u32>("faults", "spawn_sleeper", (secs, 20_000u64), opts)
        .unwrap();
    let mut worker = None;
    let started = common::eventually(Duration::from_secs(20), || {
        worker = sleepers(secs)
            .first()
            .and_then(|&p| common::proc_stat(p))
            .map(|s| s.1);
        worker.is_some()
    });
    assert!(started, "the task never started");
    (h, worker.unwrap())
}

#[test]
fn a_worker_killed_from_outside_is_worker_lost_naming_sigkill() {
    let pool = builder(2).build().unwrap();
    let (h, pid) = running_job(&pool, 4245, JobOptions::default());
    signal(pid, Signal::SIGKILL);
    let e = h.get().unwrap_err();
    assert_eq!(e.kind, ErrorKind::WorkerLost, "{e}");
    assert!(e.message.contains("SIGKILL"), "{e}");
    assert!(e.message.contains("had started"), "{e}");
    let got: Vec<u64> = pool.map("math", "square", 0..20u64, 1).unwrap();
    assert_eq!(got[19], 361);
    assert!(!common::running(pid));
    // The task's child went with its worker's process group.
    let gone = common::eventually(Duration::from_secs(1), || sleepers(4245).is_empty());
    assert!(gone, "{:?}", sleepers(4245));
    pool.join().unwrap();
}

#[test]
fn a_stopped_worker_is_ended_by_the_hard_time_limit() {
    let pool = builder(2).build().unwrap();
    let started = Instant::now();
    let (h, pid) = running_job(
        &pool,
        4246,
        JobOptions::default().time_limit(Duration::from_millis(800)),
    );
    signal(pid, Signal::SIGSTOP);
    let e = h.get().unwrap_err();
    assert_eq!(e.kind, ErrorKind::TimeLimit, "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let gone = common::eventually(Duration::from_secs(2), || {
        !common::running(pid) && sleepers(4246).is_empty()
    });
    assert!(gone, "the stopped worker {pid} or its child is still there");
    let y: u64 = pool.apply("math", "square", (8u64,)).unwrap();
    assert_eq!(y, 64);
    pool.join().unwrap();
}

/// `terminate_job` on a job whose result is already on its way back: the
/// answer and the outcome must agree (true → `terminated`, false → its
/// value), and the kill must not take the job queued behind it on the same
/// worker (prefetch) down as `worker_lost`. A restart keeps the supervisor
/// busy for a moment, so that the first job's result is in its socket,
/// unread, when the terminate request is handled. (The chaos soak hits the
/// same race at random.)
#[test]
fn terminating_a_job_that_just_finished_is_exact_and_spares_the_next_job() {
    let (tx, rx) = crossbeam_channel::unbounded();
    let pool = Pool::builder()
        .workers(1)
        .prefetch(2)
        .worker_exe(common::bin())
        .plugin(common::plugin("math"))
        .plugin(common::plugin("faults"))
        .events(tx)
        .build()
        .unwrap();
    let _: u64 = pool.apply("math", "square", (2u64,)).unwrap();
    let first = pool
        .apply_async::<_, u64>("faults", "sleep_ms", (1u64,))
        .unwrap();
    let next = pool
        .apply_async::<_, u64>("faults", "sleep_ms", (300u64,))
        .unwrap();
    // Both are on the worker once the first has started.
    loop {
        match rx.recv_timeout(Duration::from_secs(10)).expect("events") {
            Event::JobStarted { job, .. } if job == first.id() => break,
            _ => continue,
        }
    }
    pool.restart().unwrap();
    let found = pool.terminate_job(first.id()).unwrap();
    let first_outcome = first.get();
    let next_outcome = next.get();
    if found {
        assert_eq!(
            first_outcome.as_ref().map_err(|e| e.kind),
            Err(ErrorKind::Terminated),
            "terminate_job said true, yet: {first_outcome:?}"
        );
    } else {
        assert_eq!(first_outcome.as_ref().ok(), Some(&1));
    }
    assert_eq!(
        next_outcome.as_ref().ok(),
        Some(&300),
        "the job behind the terminated one was hit: {next_outcome:?}"
    );
    pool.join().unwrap();
}

/// A restart (what SIGHUP does) right after the pool starts, before its
/// first workers reported in: the jobs must still run. The retired zygote
/// used to be shut down with worker requests still pending, which were
/// then counted as live workers forever: no worker ever started again.
#[test]
fn a_restart_right_after_start_still_runs_the_jobs() {
    for round in 0..10 {
        let pool = builder(2).build().unwrap();
        pool.restart().unwrap();
        let hs: Vec<_> = (0..4u64)
            .map(|i| pool.apply_async::<_, u64>("math", "square", (i,)).unwrap())
            .collect();
        for (i, h) in hs.iter().enumerate() {
            let got = h.get_timeout(Duration::from_secs(20));
            let stats = pool.stats().unwrap();
            assert_eq!(
                got.map(|r| r.ok()),
                Some(Some((i * i) as u64)),
                "round {round}, job {i}: {stats:?}"
            );
        }
        pool.terminate().unwrap();
    }
}

// ----- a closed stdout --------------------------------------------------------

/// Runs `billiard-host ARGS` with a stdout nobody reads (the read end is
/// closed before it starts): every write fails with EPIPE.
fn with_closed_stdout(args: &[&str]) -> (Option<i32>, String) {
    let (r, w) = nix::unistd::pipe().unwrap();
    drop(r);
    let out = Command::new(common::bin())
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::from(w))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_is_a_quiet_exit_for_every_command() {
    let m = plugin_str("math");
    let dir = scratch("epipe");
    let lines: Vec<String> = (0..3000).map(|i| format!("[{i}]")).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let input = common::lines_file(&dir, "jobs.jsonl", &lines);
    for (args, want) in [
        (vec!["run", &m, "--task", "square", "--args", "[3]"], 1),
        (
            vec!["run", &m, "--task", "square", "--input", &input, "-q"],
            1,
        ),
        (vec!["inspect", &m], 0),
        (vec!["inspect", "--json", &m], 0),
        (vec!["run", "--help"], 0),
        (vec!["completions", "bash"], 0),
    ] {
        let (code, err) = with_closed_stdout(&args);
        assert_eq!(code, Some(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.contains("Broken pipe"), "{args:?}: {err}");
    }
}
