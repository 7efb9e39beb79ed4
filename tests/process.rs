//! `billiard_host::Process` (one call in a fresh process of its own) and
//! `billiard-host run --isolated` (every job in a fresh process).

mod common;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use billiard_host::{Codec, ErrorKind, Process, TaskError};
use common::{plugin, plugin_str};
use serde_json::Value;

/// The tests look at this binary's child processes: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn faults(task: &str, args: impl serde::Serialize) -> Process {
    Process::new(plugin("faults"), task, args).worker_exe(common::bin())
}

fn hostile(task: &str, args: impl serde::Serialize) -> Process {
    Process::new(plugin("hostile"), task, args).worker_exe(common::bin())
}

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

/// Processes of ours (children of this test binary, zombies included)
/// other than the ones that were there before.
fn our_children() -> Vec<i32> {
    common::children_of(std::process::id() as i32)
}

/// The error of an outcome, or a panic saying what came instead.
fn error_of(o: billiard_host::Outcome) -> TaskError {
    match o {
        Ok(v) => panic!("expected an error, got the value {v:?}"),
        Err(e) => e,
    }
}

/// Runs a call to its end and checks the process is gone with it.
fn join_and_check_gone(mut p: Process) -> billiard_host::Outcome {
    p.start().ok();
    let pid = p.pid();
    let o = p.join();
    if let Some(pid) = pid {
        assert!(!common::running(pid), "the process {pid} outlived join");
    }
    assert!(p.outcome().is_some());
    assert!(!p.is_running());
    o
}

#[test]
fn join_returns_the_value_in_a_fresh_process_each_call() {
    let _serial = serial();
    fn send_and_sync<T: Send + Sync>() {}
    // A handle can be moved to (and shared with) another thread.
    send_and_sync::<Process>();
    let mut pids = Vec::new();
    for _ in 0..3 {
        let mut p = faults("pid", ());
        p.start().expect("started");
        let pid = p.pid().expect("the pid is known once started");
        let got: u32 = p.join_value().expect("ok");
        assert_eq!(got as i32, pid, "the task ran in the process pid() names");
        assert!(!common::running(pid), "the process {pid} outlived join");
        pids.push(pid);
    }
    pids.dedup();
    assert_eq!(pids.len(), 3, "each call ran in its own process: {pids:?}");
    let mut p = faults("square", (7u64,));
    assert_eq!(p.join_value::<u64>().expect("ok"), 49);
    // join without start starts it; the outcome stays readable.
    assert!(matches!(p.outcome(), Some(Ok(_))));
}

#[test]
fn json_arguments_give_json_results() {
    let _serial = serial();
    let mut p = Process::raw(plugin("faults"), "square", Codec::Json, b"[12]".to_vec())
        .worker_exe(common::bin());
    assert_eq!(p.join().expect("ok"), b"144");
}

#[test]
fn a_crash_is_worker_lost_with_the_signal_and_the_dying_lines() {
    let _serial = serial();
    let e = error_of(join_and_check_gone(faults("segfault", ())));
    assert_eq!(e.kind, ErrorKind::WorkerLost, "{e}");
    assert!(e.message.contains("signal 11 (SIGSEGV)"), "{e}");
    assert!(e.message.contains("the task had started"), "{e}");

    let e = error_of(join_and_check_gone(hostile("die_noisily", (40u32,))));
    assert_eq!(e.kind, ErrorKind::WorkerLost, "{e}");
    assert!(e.message.contains("SIGABRT"), "{e}");
    assert!(
        e.message
            .contains("memory allocation of 21474836480 bytes failed"),
        "the dying message is kept: {e}"
    );
    assert!(e.message.contains("last output:"), "{e}");
}

#[test]
fn panics_task_errors_and_bad_args_are_the_pools() {
    let _serial = serial();
    let e = error_of(join_and_check_gone(faults("panic", ("boom-g",))));
    assert_eq!(e.kind, ErrorKind::Panic, "{e}");
    assert!(e.message.contains("boom-g"), "{e}");

    let e = error_of(join_and_check_gone(faults("fail", ("nope-g",))));
    assert_eq!(e.kind, ErrorKind::TaskError, "{e}");
    assert!(e.message.contains("nope-g"), "{e}");

    let e = error_of(join_and_check_gone(faults("square", ("not a number",))));
    assert_eq!(e.kind, ErrorKind::BadArgs, "{e}");
    let e = error_of(join_and_check_gone(
        Process::raw(
            plugin("faults"),
            "square",
            Codec::Json,
            b"[1, 2, 3]".to_vec(),
        )
        .worker_exe(common::bin()),
    ));
    assert_eq!(e.kind, ErrorKind::BadArgs, "{e}");
}

#[test]
fn unknown_tasks_and_unloadable_plugins_fail_at_start() {
    let _serial = serial();
    let before = our_children();
    let mut p = faults("no_such_task", ());
    let e = p.start().expect_err("no such task");
    assert_eq!(e.kind, ErrorKind::UnknownTask, "{e}");
    assert!(e.message.contains("no_such_task"), "{e}");
    assert_eq!(error_of(p.join()), e, "join gives the same outcome");
    assert!(p.pid().is_none());

    let mut p =
        Process::new(plugin("abi-version-mismatch"), "square", (1u64,)).worker_exe(common::bin());
    let e = p.start().expect_err("refused");
    assert_eq!(e.kind, ErrorKind::PluginLoad, "{e}");
    let e = error_of(
        Process::new("/nonexistent/libnothing.so", "square", (1u64,))
            .worker_exe(common::bin())
            .join(),
    );
    assert_eq!(e.kind, ErrorKind::PluginLoad, "{e}");
    assert!(e.message.contains("/nonexistent/libnothing.so"), "{e}");
    assert_eq!(our_children(), before, "no process is left behind");
}

#[test]
fn limits_time_limit_and_soft_time_limit() {
    let _serial = serial();
    let e = error_of(join_and_check_gone(
        faults("spin_ms", (60_000u64,)).time_limit(Duration::from_millis(300)),
    ));
    assert_eq!(e.kind, ErrorKind::TimeLimit, "{e}");
    assert!(e.message.contains("hard time limit of 300ms"), "{e}");

    let e = error_of(join_and_check_gone(
        faults("cooperative_sleep", (60_000u64,)).soft_time_limit(Duration::from_millis(200)),
    ));
    assert_eq!(e.kind, ErrorKind::SoftTimeLimit, "{e}");
}

#[test]
fn the_hard_limit_holds_against_a_task_that_blocks_every_signal() {
    let _serial = serial();
    // spoil_signals(2) blocks every signal; SIGKILL still lands.
    let mut p = hostile("spoil_signals", (2u32,));
    assert_eq!(p.join().expect("ok"), vec![2]);
    // A task that escapes its worker's group and spins past the limit:
    // the limit ends it and its child.
    let name = "g-proc-pgid";
    let e = error_of(join_and_check_gone(
        hostile("escape_group", (name, 60u32, 60_000u64)).time_limit(Duration::from_millis(300)),
    ));
    assert_eq!(e.kind, ErrorKind::TimeLimit, "{e}");
    assert!(
        named(name).is_empty(),
        "the task's child outlived the limit"
    );
}

#[test]
fn limits_hold_against_a_task_deaf_to_every_signal_but_sigkill() {
    let _serial = serial();
    // The soft limit's SIGUSR1 is ignored and blocked: the hard limit,
    // enforced from this process, still ends it.
    let e = error_of(join_and_check_gone(
        hostile("deaf_spin", (600_000u64,))
            .soft_time_limit(Duration::from_millis(100))
            .time_limit(Duration::from_millis(500)),
    ));
    assert_eq!(e.kind, ErrorKind::TimeLimit, "{e}");
    // So does kill, with no limit at all.
    let mut p = hostile("deaf_spin", (600_000u64,));
    p.start().expect("started");
    let pid = p.pid().expect("pid");
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGUSR1,
    ] {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).expect("signal");
    }
    assert!(p.join_timeout(Duration::from_millis(300)).is_none());
    assert!(common::running(pid));
    assert_eq!(error_of(p.kill()).kind, ErrorKind::Terminated);
    assert!(!common::running(pid));
}

#[test]
fn the_address_space_limit_ends_a_runaway_allocation() {
    let _serial = serial();
    let e = error_of(join_and_check_gone(
        faults("leak_mb", (4096u64,)).address_space_limit(512 << 20),
    ));
    assert_eq!(e.kind, ErrorKind::WorkerLost, "{e}");
    assert!(e.message.contains("address-space cap of 512.0 MiB"), "{e}");
    // Under the cap, the same task works.
    let mut p = faults("leak_mb", (8u64,)).address_space_limit(512 << 20);
    assert_eq!(p.join_value::<u64>().expect("ok"), 8);
}

#[test]
fn a_sandboxed_process_writes_only_where_it_is_allowed() {
    let _serial = serial();
    let dir = common::artifact_dir().join("process-test").join("sandbox");
    let allowed = dir.join("allowed");
    std::fs::create_dir_all(&allowed).expect("scratch dir");
    let (outside, inside) = (dir.join("outside.txt"), allowed.join("inside.txt"));
    let _ = std::fs::remove_file(&outside);
    let _ = std::fs::remove_file(&inside);
    let sandbox = || billiard_host::sandbox::Sandbox::strict().allow_write(&allowed);
    let path = |p: &std::path::Path| p.display().to_string();
    let e = error_of(join_and_check_gone(
        hostile("sb_write", (path(&outside),)).sandbox(sandbox()),
    ));
    assert_eq!(e.kind, ErrorKind::TaskError, "{e}");
    assert!(e.message.contains("Read-only file system"), "{e}");
    assert!(!outside.exists(), "the file was written");
    let mut p = hostile("sb_write", (path(&inside),)).sandbox(sandbox());
    p.join_value::<String>()
        .expect("written in the allowed dir");
    assert_eq!(std::fs::read(&inside).expect("written"), b"escaped\n");
    // Unsandboxed, the same write goes through.
    let mut p = hostile("sb_write", (path(&outside),));
    p.join_value::<String>().expect("written");
    assert!(outside.exists());
    // run --isolated takes the same flags.
    let _ = std::fs::remove_file(&outside);
    let args = format!(r#"["{}"]"#, path(&outside));
    let out = common::host([
        "run",
        &plugin_str("hostile"),
        "--task",
        "sb_write",
        "--args",
        &args,
        "--isolated",
        "--sandbox",
        "strict",
        "--allow-write",
        &path(&allowed),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("Read-only file system"), "{stdout}");
    assert!(!outside.exists(), "the file was written");
}

#[test]
fn join_timeout_on_a_hanging_task_then_kill() {
    let _serial = serial();
    let mut p = faults("sleep_ms", (600_000u64,));
    p.start().expect("started");
    let pid = p.pid().expect("pid");
    assert!(p.join_timeout(Duration::from_millis(200)).is_none());
    assert!(p.is_running());
    assert!(p.outcome().is_none());
    assert!(common::running(pid));
    let e = error_of(p.kill());
    assert_eq!(e.kind, ErrorKind::Terminated, "{e}");
    assert!(e.message.contains(&format!("pid {pid}")), "{e}");
    assert!(
        !common::running(pid),
        "kill returns once the process is gone"
    );
    assert_eq!(error_of(p.join()), e, "join after kill gives the outcome");
    // kill of a finished call keeps its outcome.
    let mut p = faults("square", (3u64,));
    assert!(p.join().is_ok());
    assert!(p.kill().is_ok());
}

#[test]
fn kill_ends_a_task_that_ignores_sigterm() {
    let _serial = serial();
    let mut p = faults("sleep_ms", (600_000u64,));
    p.start().expect("started");
    let pid = p.pid().expect("pid");
    // The worker catches SIGTERM with a handler that does nothing.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal");
    assert!(p.join_timeout(Duration::from_millis(300)).is_none());
    assert!(common::running(pid), "SIGTERM did not end it");
    assert_eq!(error_of(p.kill()).kind, ErrorKind::Terminated);
    assert!(!common::running(pid));
}

#[test]
fn an_escapee_in_its_own_session_is_gone_after_join() {
    let _serial = serial();
    for (i, own_session) in [false, true].into_iter().enumerate() {
        let name = format!("g-proc-esc{i}");
        let mut p = hostile("fork_named", (name.as_str(), 60u32, own_session));
        let child: i32 = p.join_value().expect("ok");
        assert!(child > 0);
        assert!(
            named(&name).is_empty() && !common::running(child),
            "the task's child {child} outlived join"
        );
    }
}

#[test]
fn drop_kills_the_process() {
    let _serial = serial();
    let before = our_children();
    let mut p = faults("sleep_ms", (600_000u64,));
    p.start().expect("started");
    let pid = p.pid().expect("pid");
    assert!(common::running(pid));
    assert_ne!(
        our_children(),
        before,
        "the zygote is our child while it runs"
    );
    drop(p);
    assert!(
        !common::running(pid),
        "drop returns once the process is gone"
    );
    assert_eq!(our_children(), before, "nothing is left behind");
    // Dropping a process never started starts nothing.
    drop(faults("sleep_ms", (600_000u64,)));
    assert_eq!(our_children(), before);
}

// ----- run --isolated -------------------------------------------------------

fn lines_file(name: &str, lines: &[&str]) -> std::path::PathBuf {
    let dir = common::artifact_dir().join("process-test").join(name);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join("jobs.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").expect("write jobs");
    path
}

#[test]
fn run_isolated_runs_every_job_in_a_fresh_process() {
    let _serial = serial();
    let name = "g-iso-escapee";
    let escape = format!(r#"{{"task":"fork_named","args":["{name}",60,true]}}"#);
    let lines = [
        r#"{"task":"pid"}"#,
        r#"{"task":"faults.square","args":[7]}"#,
        r#"{"task":"segfault"}"#,
        r#"{"task":"panic","args":["boom-iso"]}"#,
        r#"{"task":"sleep_ms","args":[600000],"time_limit":"300ms"}"#,
        r#"{"task":"pid"}"#,
        escape.as_str(),
        r#"{"task":"no_such_task"}"#,
        r#"{"task":"pid"}"#,
        "[1, 2]",
    ];
    let input = lines_file("mixed", &lines);
    let out = common::host([
        "run",
        &plugin_str("faults"),
        "--plugin",
        &plugin_str("hostile"),
        "--isolated",
        "-w",
        "3",
        "--task",
        "faults.square",
        "--input",
        input.to_str().expect("utf-8 path"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let rs: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(rs.len(), lines.len(), "{stdout}");
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(r["index"], i as u64, "in input order: {stdout}");
    }
    let kind = |i: usize| rs[i]["error"]["kind"].as_str().unwrap_or("ok").to_string();
    let kinds: Vec<String> = (0..rs.len()).map(kind).collect();
    assert_eq!(
        kinds,
        [
            "ok",
            "ok",
            "worker_lost",
            "panic",
            "time_limit",
            "ok",
            "ok",
            "unknown_task",
            "ok",
            "bad_args"
        ],
        "{stdout}"
    );
    assert_eq!(stdout.lines().nth(1), Some(r#"{"index":1,"ok":49}"#));
    let msg = |i: usize| rs[i]["error"]["message"].as_str().unwrap_or("").to_string();
    assert!(msg(2).contains("SIGSEGV"), "{}", msg(2));
    assert!(msg(3).contains("boom-iso"), "{}", msg(3));
    assert!(msg(4).contains("hard time limit of 300ms"), "{}", msg(4));
    assert!(msg(9).starts_with("line 10: "), "{}", msg(9));
    let pids: Vec<u64> = [0, 5, 8]
        .iter()
        .map(|&i| rs[i]["ok"].as_u64().expect("a pid"))
        .collect();
    let mut distinct = pids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "each job in its own process: {pids:?}");
    for pid in pids {
        assert!(
            !common::running(pid as i32),
            "the process {pid} outlived the run"
        );
    }
    assert!(named(name).is_empty(), "the escapee outlived the run");
    let child = rs[6]["ok"].as_i64().expect("the escapee's pid") as i32;
    assert!(!common::running(child));
}

#[test]
fn run_isolated_output_matches_run_for_plain_jobs() {
    let _serial = serial();
    let lines = [
        "[3]",
        r#"{"task":"fail","args":["x"]}"#,
        "[4]",
        r#"{"args":["y"]}"#,
    ];
    let input = lines_file("same", &lines);
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run".to_string(),
            plugin_str("faults"),
            "--task".into(),
            "square".into(),
            "--input".into(),
            input.to_string_lossy().into_owned(),
            "-w".into(),
            "2".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = common::host(&args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let pooled = run(&[]);
    let isolated = run(&["--isolated"]);
    assert_eq!(pooled.0, Some(1));
    assert_eq!(isolated, pooled, "same lines, same exit code");
    let unordered = run(&["--isolated", "--unordered"]);
    let sorted = |s: &str| {
        let mut v: Vec<String> = s.lines().map(String::from).collect();
        v.sort();
        v
    };
    assert_eq!(unordered.0, pooled.0);
    assert_eq!(
        sorted(&unordered.1),
        sorted(&pooled.1),
        "the same lines, in any order"
    );
    // --args too.
    let out = common::host([
        "run",
        &plugin_str("faults"),
        "--task",
        "square",
        "--args",
        "[5]",
        "--isolated",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"index\":0,\"ok\":25}\n"
    );
}

#[test]
fn run_isolated_refuses_contradictory_flags() {
    let _serial = serial();
    let faults = plugin_str("faults");
    for (flags, says) in [
        (&["--chunksize", "8"][..], "--chunksize"),
        (&["--prefetch", "2"][..], "--prefetch"),
        (&["--max-tasks-per-child", "5"][..], "--max-tasks-per-child"),
        (
            &["--max-memory-per-child", "100MiB"][..],
            "--max-memory-per-child",
        ),
        (&["--start-method", "fork"][..], "fork"),
    ] {
        let mut args = vec![
            "run",
            &faults,
            "--task",
            "square",
            "--args",
            "[1]",
            "--isolated",
        ];
        args.extend_from_slice(flags);
        let out = common::host(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(
            err.contains(says) && err.contains("--isolated"),
            "{flags:?}: {err}"
        );
        assert!(out.stdout.is_empty());
    }
    // --max-tasks-per-child 1 is what --isolated means: accepted.
    let out = common::host([
        "run",
        &faults,
        "--task",
        "square",
        "--args",
        "[2]",
        "--isolated",
        "--max-tasks-per-child",
        "1",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A plugin that cannot be loaded is a usage error, as for run.
    let out = common::host([
        "run",
        "/nonexistent/libnothing.so",
        "--task",
        "square",
        "--args",
        "[2]",
        "--isolated",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}

/// The cost of one call: `Process` (a fresh zygote and worker per call)
/// against `Pool::apply` on a warm pool. Run with
/// `cargo test --release -p billiard-host --test process -- --ignored --nocapture per_call_cost`.
#[test]
#[ignore]
fn per_call_cost() {
    let _serial = serial();
    let n = 200u32;
    let pool = billiard_host::Pool::builder()
        .workers(1)
        .plugin(plugin("faults"))
        .worker_exe(common::bin())
        .build()
        .expect("pool");
    let t = std::time::Instant::now();
    for i in 0..n {
        let y: u64 = pool.apply("faults", "square", (i as u64,)).expect("ok");
        assert_eq!(y, (i as u64) * (i as u64));
    }
    let pooled = t.elapsed() / n;
    drop(pool);
    let t = std::time::Instant::now();
    for i in 0..n {
        let y: u64 = faults("square", (i as u64,)).join_value().expect("ok");
        assert_eq!(y, (i as u64) * (i as u64));
    }
    let isolated = t.elapsed() / n;
    println!(
        "per call over {n} calls: Pool::apply {pooled:?}, Process {isolated:?} ({:.0}x)",
        isolated.as_secs_f64() / pooled.as_secs_f64()
    );
    // What a design with one process per call could save at most. Any
    // such process is an exec (this process is multithreaded) that loads
    // the binary and the plugin: `inspect PLUGIN` does that and no more
    // (no zygote, no fork, no pool), so it is a floor for one process per
    // call. The other figures: a fresh worker per call forked from a warm
    // zygote (what the zygote's fork costs with a job), and a Process with
    // the spawn start method (the zygote execs the worker, which loads the
    // plugin a second time).
    let floor = per_call(n / 4, || {
        let out = common::host_command()
            .args(["inspect", &plugin_str("faults")])
            .output()
            .expect("inspect");
        assert!(out.status.success());
    });
    let version = per_call(n / 4, || {
        let out = common::host_command()
            .arg("--version")
            .output()
            .expect("--version");
        assert!(out.status.success());
    });
    let pool = billiard_host::Pool::builder()
        .workers(1)
        .max_tasks_per_child(1)
        .plugin(plugin("faults"))
        .worker_exe(common::bin())
        .build()
        .expect("pool");
    let refork = per_call(n, || {
        let y: u64 = pool.apply("faults", "square", (3u64,)).expect("ok");
        assert_eq!(y, 9);
    });
    drop(pool);
    let spawn = per_call(n / 4, || {
        let y: u64 = faults("square", (3u64,))
            .start_method(billiard_host::StartMethod::Spawn)
            .join_value()
            .expect("ok");
        assert_eq!(y, 9);
    });
    println!(
        "one process per call, floor: exec + load (`inspect PLUGIN`) {floor:?} (exec alone, `--version`: {version:?}); \
         a fresh worker forked per call from a warm zygote {refork:?}; Process with --start-method spawn {spawn:?}"
    );
}

/// The mean time of `n` runs of `f`.
fn per_call(n: u32, mut f: impl FnMut()) -> Duration {
    let t = std::time::Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed() / n
}

/// Live processes whose environment holds `marker` (a variable set on the
/// command under test is inherited by every process it starts).
fn marked(marker: &str) -> Vec<i32> {
    let needle = format!("G_PROCESS_MARK={marker}");
    common::all_processes()
        .into_iter()
        .filter(|p| p.1 != 'Z')
        .filter(|p| {
            std::fs::read(format!("/proc/{}/environ", p.0))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == needle.as_bytes()))
        })
        .map(|p| p.0)
        .collect()
}

#[test]
fn run_isolated_stops_on_sigint_and_kills_on_the_second_signal() {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let _serial = serial();
    let dir = common::artifact_dir().join("process-test").join("signals");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let marker_file = dir.join("started");
    let _ = std::fs::remove_file(&marker_file);
    let m = marker_file.to_string_lossy().into_owned();
    let hang = |tag: &str| format!(r#"{{"task":"append_line","args":["{m}","{tag}",600000]}}"#);
    let (a, b) = (hang("a"), hang("b"));
    let lines = [a.as_str(), b.as_str(), "[3]", "[4]", "[5]"];
    let input = lines_file("signals", &lines);
    let mark = format!("sig-{}", std::process::id());
    let mut child = common::host_command()
        .args([
            "run",
            &plugin_str("hostile"),
            "--plugin",
            &plugin_str("faults"),
        ])
        .args([
            "--task",
            "faults.square",
            "--isolated",
            "-w",
            "2",
            "--input",
        ])
        .arg(&input)
        .env("G_PROCESS_MARK", &mark)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("billiard-host starts");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let both_running = common::eventually(Duration::from_secs(60), || {
        std::fs::read_to_string(&marker_file).is_ok_and(|s| s.lines().count() == 2)
    });
    assert!(both_running, "the two hanging jobs did not start");
    // A process per running job (zygote and worker each), all marked.
    assert!(marked(&mark).len() >= 5, "{:?}", marked(&mark));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    // The first signal only stops the input: the jobs still run.
    let mut err = child.stderr.take().expect("stderr");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("no more input is read") {
        let n = err.read(&mut buf).expect("stderr");
        assert!(n > 0, "stderr ended: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("stdout");
    let status = child.wait().expect("wait");
    let _ = err.read_to_end(&mut seen);
    let stderr = String::from_utf8_lossy(&seen);
    assert_eq!(status.code(), Some(1), "{out}\n{stderr}");
    let rs: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(rs.len(), 5, "{out}");
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(r["index"], i as u64, "{out}");
        assert_eq!(r["error"]["kind"], "terminated", "{out}");
    }
    let msg = |i: usize| rs[i]["error"]["message"].as_str().unwrap_or("").to_string();
    assert!(msg(0).contains("was killed on request"), "{out}");
    assert!(msg(1).contains("was killed on request"), "{out}");
    assert!(
        msg(2).contains("interrupted by SIGINT before the job on input line 3 started"),
        "{out}"
    );
    assert!(stderr.contains("killing the running jobs now"), "{stderr}");
    assert!(marked(&mark).is_empty(), "left behind: {:?}", marked(&mark));
}
