//! Regression tests of the adversarial report (../shared/reports/
//! adversarial-2026-12-01.md) for the supervisor: reloads, deaths after a
//! task returned, stopped zygotes, output floods, blocking constructors and
//! chunks under time limits. One test per finding, named after its B-number.

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use billiard_host::{Codec, ErrorKind, Limits, Pool};
use common::{exit_code, json_lines, kind, plugin_str, scratch, stderr, stdout};
use serde_json::Value;

fn hostile() -> String {
    plugin_str("hostile")
}

/// `billiard-host ARGS...` without backtraces (they would fill the tails).
fn command(args: &[&str]) -> Command {
    let mut cmd = common::host_command();
    cmd.args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("BILLIARD_BACKTRACE")
        .env_remove("BILLIARD_BAD_CTOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Waits for `child` to exit within `limit`; kills its whole tree and
/// panics with `what` if it does not (the hang the test is about).
fn wait_or_kill(mut child: Child, limit: Duration, what: &str) -> std::process::Output {
    let pid = child.id() as i32;
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() >= deadline {
            let tree = common::process_tree(pid);
            for p in tree.iter().rev() {
                // SAFETY-free: plain kill(2) through nix on pids we found.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*p),
                    nix::sys::signal::Signal::SIGCONT,
                );
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "{what}: still running after {limit:?}; stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Results by index, checking every index 0..n appears exactly once.
fn by_index(out: &str, n: usize) -> Vec<Value> {
    let got = common::by_index(&json_lines(out));
    if let Some(i) = got.keys().find(|&&i| i >= n as u64) {
        panic!("index {i} out of range: {out}");
    }
    (0..n as u64)
        .map(|i| {
            got.get(&i)
                .cloned()
                .unwrap_or_else(|| panic!("no result for index {i}: {out}"))
        })
        .collect()
}

/// Installs plugin `from` at `path` the way a build should: copy beside it,
/// then rename over it.
fn install(from: &str, path: &Path) {
    let tmp = path.with_extension("incoming");
    std::fs::copy(common::plugin(from), &tmp).expect("copy plugin");
    std::fs::rename(&tmp, path).expect("rename plugin");
}

// ----- B1: a reload that reorders or removes tasks ---------------------------

#[test]
fn b1_reload_that_reorders_or_removes_tasks_never_runs_another_task() {
    let dir = scratch("b1");
    let path: PathBuf = dir.join("libreload.so");
    install("reload-a", &path); // tasks [version, square, double]
    let pool = Pool::builder()
        .workers(2)
        .worker_exe(common::bin())
        .plugin(&path)
        .build()
        .expect("pool");
    // Resolved (and cached, as the CLI does) before the reload.
    let square = pool.task_ref("reload", "square").expect("square");
    let double = pool.find_task("double").expect("double");
    let run = |t| {
        pool.apply_raw(t, Codec::Json, b"[7]".to_vec(), Limits::default())
            .expect("submit")
            .get()
    };
    assert_eq!(run(square).expect("square"), b"49");
    assert_eq!(run(double).expect("double"), b"14");

    install("reload-b", &path); // tasks [double, version]: square is gone
    pool.restart().expect("reload");
    assert_eq!(pool.generation().gen, 2);
    let live = pool.plugins();
    assert_eq!(live[0].version, "2.0.0");
    let names: Vec<&str> = live[0].tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["double", "version"]);

    for _ in 0..20 {
        // The cached ref of `double` (index 2 before, 0 now) still doubles.
        assert_eq!(run(double).expect("double after reload"), b"14");
        // `square` is gone: unknown_task, never some other task's result.
        let e = run(square).expect_err("square is gone");
        assert_eq!(e.kind, ErrorKind::UnknownTask, "{e}");
        assert!(e.message.contains("reload.square"), "{e}");
    }
    let e = pool
        .find_task("square")
        .expect_err("gone from the live table");
    assert_eq!(e.kind, ErrorKind::UnknownTask);
    // A fresh lookup gives the new index.
    let fresh = pool.task_ref("reload", "double").expect("double");
    assert_eq!((fresh.task, fresh.gen), (0, 2));
    pool.join().expect("join");
}

#[test]
fn b1_cli_reload_that_reorders_tasks_keeps_running_the_named_task() {
    let dir = scratch("b1-cli");
    let path = dir.join("libreload.so");
    install("reload-a", &path);
    let mut child = command(&[
        "run",
        path.to_str().expect("utf-8 path"),
        "--task",
        "double",
        "--input",
        "-",
        "-w",
        "2",
        "-q",
    ])
    .stdin(Stdio::piped())
    .spawn()
    .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut ask = |x: u64| -> Value {
        writeln!(stdin, "[{x}]").expect("write a job");
        stdin.flush().expect("flush");
        let line = lines.next().expect("a result line").expect("read");
        serde_json::from_str(&line).expect("json")
    };
    assert_eq!(ask(3)["ok"], 6);
    install("reload-b", &path);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    // Until the reload is in, jobs run on 1.0.0 workers; afterwards on
    // 2.0.0 ones. Either way `double` doubles.
    for x in 4..200u64 {
        let v = ask(x);
        assert_eq!(v["ok"], 2 * x, "job {x}: {v}");
    }
    drop(stdin);
    let out = wait_or_kill(child, Duration::from_secs(60), "run after reload");
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
}

// ----- B2: a worker that dies after its task returned -------------------------

#[test]
fn b2_worker_dying_after_its_task_returned_is_never_rerun() {
    let dir = scratch("b2");
    let marks = dir.join("marks.txt");
    // keep=true: the worker's socket stays open (dup'd) until it exits, so
    // its death comes after the task returned and recorded it finished;
    // keep=false: the pool sees the socket close mid-task and kills it.
    for keep in [true, false] {
        let mut lines = vec![format!(
            r#"{{"task":"mark_close_socket","args":["{}", {keep}]}}"#,
            marks.display()
        )];
        for _ in 0..20 {
            lines.push(r#"{"task":"nap","args":[1]}"#.to_string());
        }
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let input = common::lines_file(&dir, "in.jsonl", &refs);
        for workers in ["1", "2"] {
            let _ = std::fs::remove_file(&marks);
            let child = command(&["run", &hostile(), "--input", &input, "-w", workers, "-q"])
                .spawn()
                .expect("spawn");
            let out = wait_or_kill(child, Duration::from_secs(120), "b2 run");
            let ran = std::fs::read_to_string(&marks).unwrap_or_default();
            assert_eq!(
                ran.lines().count(),
                1,
                "keep={keep} -w {workers}: the task ran {} times",
                ran.lines().count()
            );
            let res = by_index(&stdout(&out), 21);
            assert_eq!(kind(&res[0]), "worker_lost", "{}", res[0]);
            let msg = res[0]["error"]["message"].as_str().unwrap_or_default();
            if keep {
                assert!(msg.contains("had finished"), "{msg}");
            } else {
                assert!(
                    msg.contains("had finished") || msg.contains("had started"),
                    "{msg}"
                );
            }
            assert!(!msg.contains("NOT started"), "{msg}");
            for r in &res[1..] {
                assert_eq!(kind(r), "ok", "keep={keep} -w {workers}: {r}");
            }
            assert_eq!(exit_code(&out), 1);
        }
    }
}

// ----- B3: a task that stops its zygote ---------------------------------------

#[test]
fn b3_stopped_zygote_does_not_keep_the_host_from_exiting() {
    let dir = scratch("b3");
    let mut lines = vec![r#"{"task":"kill_parent","args":[19]}"#];
    lines.extend(std::iter::repeat_n(r#"{"task":"nap","args":[10]}"#, 10));
    let input = common::lines_file(&dir, "in.jsonl", &lines);
    let child = command(&["run", &hostile(), "--input", &input, "-w", "2", "-q"])
        .spawn()
        .expect("spawn");
    let out = wait_or_kill(child, Duration::from_secs(60), "host with a stopped zygote");
    let res = by_index(&stdout(&out), 11);
    assert!(res.iter().all(|r| kind(r) == "ok"), "{}", stdout(&out));
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
}

#[test]
fn b3_worker_death_under_a_stopped_zygote_is_final_and_the_pool_goes_on() {
    let dir = scratch("b3-mid");
    let mut lines = vec![
        r#"{"task":"kill_parent","args":[19]}"#,
        r#"{"task":"nap","args":[300]}"#,
        r#"{"task":"segv","args":[]}"#,
    ];
    lines.extend(std::iter::repeat_n(r#"{"task":"nap","args":[10]}"#, 10));
    let input = common::lines_file(&dir, "in.jsonl", &lines);
    let child = command(&[
        "run",
        &hostile(),
        "--input",
        &input,
        "-w",
        "1",
        "--time-limit",
        "5s",
        "--unordered",
        "-q",
    ])
    .spawn()
    .expect("spawn");
    let out = wait_or_kill(child, Duration::from_secs(90), "pool with a stopped zygote");
    let res = by_index(&stdout(&out), 13);
    assert_eq!(kind(&res[2]), "worker_lost", "{}", res[2]);
    for (i, r) in res.iter().enumerate() {
        if i != 2 {
            assert_eq!(kind(r), "ok", "job {i}: {r}");
        }
    }
    assert!(
        stderr(&out).contains("is stopped"),
        "the stopped zygote is named: {}",
        stderr(&out)
    );
}

// ----- B4: a flood of short output lines --------------------------------------

#[test]
fn b4_output_flood_in_short_lines_does_not_stall_the_pool() {
    let dir = scratch("b4");
    // 48 MiB of 80-byte lines on stderr (quadratic before the fix: about
    // 6 minutes of supervisor CPU), and a short job on the other worker
    // that must not wait for the flood to end.
    let input = common::lines_file(
        &dir,
        "in.jsonl",
        &[
            r#"{"task":"spew","args":[2,48,80]}"#,
            r#"{"task":"nap","args":[1]}"#,
        ],
    );
    let child = command(&[
        "run",
        &hostile(),
        "--input",
        &input,
        "-w",
        "2",
        "--unordered",
        "-q",
    ])
    .spawn()
    .expect("spawn");
    let out = wait_or_kill(child, Duration::from_secs(120), "output flood");
    let text = stdout(&out);
    let order: Vec<u64> = json_lines(&text)
        .iter()
        .map(|v| v["index"].as_u64().expect("index"))
        .collect();
    assert_eq!(order, [1, 0], "the short job finished first: {text}");
    let res = by_index(&text, 2);
    assert_eq!(res[0]["ok"], 48u64 << 20);
    assert_eq!(exit_code(&out), 0);
}

// ----- B5: a plugin constructor that blocks ------------------------------------

#[test]
fn b5_blocking_constructor_at_start_is_given_up_after_the_load_timeout() {
    let child = command(&[
        "run",
        &plugin_str("bad-ctor"),
        "--task",
        "ping",
        "--args",
        "[]",
        "--load-timeout",
        "2s",
    ])
    .env("BILLIARD_BAD_CTOR", "sleep")
    .spawn()
    .expect("spawn");
    let out = wait_or_kill(
        child,
        Duration::from_secs(60),
        "run on a blocking constructor",
    );
    let err = stderr(&out);
    assert_eq!(exit_code(&out), 2, "{err}");
    assert!(err.contains("within 2s"), "{err}");
    assert!(err.contains("bad_ctor"), "the plugin file is named: {err}");
}

#[test]
fn b5_reload_onto_a_blocking_constructor_keeps_the_pool_serving() {
    let dir = scratch("b5-reload");
    let path = dir.join("libplugin.so");
    install("hostile", &path);
    let mut child = command(&[
        "run",
        path.to_str().expect("utf-8 path"),
        "--task",
        "nap",
        "--input",
        "-",
        "-w",
        "2",
        "-q",
        "--load-timeout",
        "2s",
    ])
    // Only bad-ctor reads it: the first plugin loads normally.
    .env("BILLIARD_BAD_CTOR", "sleep")
    .env("RUST_LOG", "info")
    .stdin(Stdio::piped())
    .spawn()
    .expect("spawn");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let errs = child.stderr.take().expect("stderr");
    let err_thread = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(errs).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut ask = |ms: u64| -> Value {
        writeln!(stdin, "[{ms}]").expect("write a job");
        stdin.flush().expect("flush");
        let line = lines.next().expect("a result line").expect("read");
        serde_json::from_str(&line).expect("json")
    };
    assert_eq!(ask(1)["ok"], 1);
    install("bad-ctor", &path);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    // Jobs keep being answered while the new zygote hangs in its
    // constructor, and after the reload is given up.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut failed = false;
    let mut answered = 0;
    while !failed {
        assert!(Instant::now() < deadline, "the reload was never given up");
        assert_eq!(ask(20)["ok"], 20);
        answered += 1;
        failed = rx.try_iter().any(|l| l.contains("reload failed"));
    }
    for _ in 0..5 {
        assert_eq!(ask(1)["ok"], 1);
    }
    drop(stdin);
    let out = wait_or_kill(child, Duration::from_secs(60), "run after a failed reload");
    let err = err_thread.join().expect("stderr thread");
    assert_eq!(exit_code(&out), 0, "{err}");
    assert!(answered > 0);
    assert!(err.contains("constructor block"), "{err}");
}

// ----- B11: chunks under a time limit -----------------------------------------

#[test]
fn b11_each_job_of_a_chunk_gets_its_own_time_limit() {
    let dir = scratch("b11");
    // One chunk of six: two quick jobs, one that hangs, three quick ones.
    let input = common::lines_file(
        &dir,
        "in.jsonl",
        &["[10]", "[10]", "[60000]", "[10]", "[10]", "[10]"],
    );
    let child = command(&[
        "run",
        &hostile(),
        "--task",
        "nap",
        "--input",
        &input,
        "--chunksize",
        "6",
        "--time-limit",
        "1s",
        "-w",
        "1",
        "-q",
    ])
    .spawn()
    .expect("spawn");
    // Before the fix the chunk ran for up to 6 x 1s and every job ended
    // time_limit; a generous bound catches that without timing the run.
    let out = wait_or_kill(child, Duration::from_secs(50), "chunk with a hung job");
    let res = by_index(&stdout(&out), 6);
    for i in [0, 1, 3, 4, 5] {
        assert_eq!(res[i]["ok"], 10, "job {i} keeps its result: {}", res[i]);
    }
    assert_eq!(kind(&res[2]), "time_limit", "{}", res[2]);
    let msg = res[2]["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("job 3 ") && msg.contains("1s"), "{msg}");
    assert_eq!(exit_code(&out), 1);
}

#[test]
fn b11_soft_limit_applies_to_each_job_of_a_chunk() {
    let pool = Pool::builder()
        .workers(1)
        .worker_exe(common::bin())
        .plugin(hostile())
        .soft_time_limit(Duration::from_millis(300))
        .build()
        .expect("pool");
    let coop = pool.task_ref("hostile", "coop").expect("coop");
    // Each job takes 200 ms: under the per-job soft limit, though the chunk
    // as a whole takes 800 ms; the third runs 5 s and is stopped.
    let jobs = ["[200]", "[200]", "[5000]", "[200]"].map(|a| {
        Ok::<_, billiard_host::TaskError>(billiard_host::RawJob::new(
            coop,
            Codec::Json,
            a.as_bytes().to_vec(),
        ))
    });
    let got: Vec<(u64, _)> = pool.imap_raw(jobs.into_iter(), true, 4).collect();
    assert_eq!(got.len(), 4);
    for (i, o) in &got {
        match i {
            2 => assert_eq!(
                o.as_ref().expect_err("stopped").kind,
                ErrorKind::SoftTimeLimit
            ),
            _ => assert_eq!(o.as_ref().expect("ok"), b"200", "job {i}"),
        }
    }
    pool.join().expect("join");
}

// ----- UX: a plugin file overwritten in place ----------------------------------

#[test]
fn plugin_overwritten_in_place_is_noticed_and_reloaded() {
    let dir = scratch("overwrite");
    let path = dir.join("libreload.so");
    install("reload-a", &path);
    let n = 100_000usize;
    let input = dir.join("in.jsonl");
    std::fs::write(&input, "[]\n".repeat(n)).expect("input");
    let mut child = command(&[
        "run",
        path.to_str().expect("utf-8 path"),
        "--task",
        "version",
        "--input",
        input.to_str().expect("utf-8 path"),
        "-w",
        "2",
        "-q",
    ])
    .spawn()
    .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a first result").expect("read");
    assert!(first.contains("1.0.0"), "{first}");
    // The footgun: `cp` over the loaded file (same inode, new bytes).
    std::fs::copy(common::plugin("reload-b"), &path).expect("copy in place");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = wait_or_kill(
        child,
        Duration::from_secs(120),
        "run over an overwritten plugin",
    );
    assert_eq!(rest.len(), n - 1);
    let errors: Vec<&String> = rest.iter().filter(|l| l.contains("\"error\"")).collect();
    for e in &errors {
        assert!(e.contains("overwritten in place"), "{e}");
    }
    // The pool reloaded the file by itself: the batch ends on 2.0.0.
    let tail = &rest[rest.len() - n / 10..];
    assert!(
        tail.iter().all(|l| l.contains("2.0.0")),
        "the last tenth ran on the reloaded file; errors: {}",
        errors.len()
    );
    assert!(
        stderr(&out).contains("overwritten in place"),
        "{}",
        stderr(&out)
    );
}

// ----- UX: hundreds of workers at once -------------------------------------------

#[test]
fn many_workers_start_without_spurious_warnings() {
    let dir = scratch("w512");
    let lines: Vec<&str> = std::iter::repeat_n(r#"{"task":"nap","args":[50]}"#, 1500).collect();
    let input = common::lines_file(&dir, "in.jsonl", &lines);
    let child = command(&["run", &hostile(), "--input", &input, "-w", "512", "-q"])
        .spawn()
        .expect("spawn");
    let out = wait_or_kill(child, Duration::from_secs(180), "512 workers");
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("cannot ask the zygote"),
        "{}",
        stderr(&out)
    );
    assert_eq!(by_index(&stdout(&out), 1500).len(), 1500);
}

#[test]
fn b1_jobs_of_a_task_gone_after_a_reload_fail_alone_and_the_rest_run() {
    // One worker: every job of the removed task fails without reaching it,
    // and must not leave the jobs queued behind it stranded.
    let dir = scratch("b1-gone");
    let path = dir.join("libreload.so");
    install("reload-a", &path);
    let mut child = command(&[
        "run",
        path.to_str().expect("utf-8 path"),
        "--input",
        "-",
        "-w",
        "1",
        "-q",
    ])
    .stdin(Stdio::piped())
    .spawn()
    .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    writeln!(stdin, r#"{{"task":"square","args":[3]}}"#).expect("write");
    stdin.flush().expect("flush");
    let first: Value =
        serde_json::from_str(&lines.next().expect("line").expect("read")).expect("json");
    assert_eq!(first["ok"], 9);
    install("reload-b", &path);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    // Wait until the reload is in: `version` answers 2.0.0.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        writeln!(stdin, r#"{{"task":"version","args":[]}}"#).expect("write");
        stdin.flush().expect("flush");
        let v: Value =
            serde_json::from_str(&lines.next().expect("line").expect("read")).expect("json");
        if v["ok"] == "2.0.0" {
            break;
        }
        assert!(Instant::now() < deadline, "the reload never took: {v}");
    }
    // Ten lines at once, alternating a gone task and a live one.
    let mut batch = String::new();
    for x in 0..10u64 {
        if x % 2 == 0 {
            batch.push_str(&format!("{{\"task\":\"square\",\"args\":[{x}]}}\n"));
        } else {
            batch.push_str(&format!("{{\"task\":\"double\",\"args\":[{x}]}}\n"));
        }
    }
    stdin.write_all(batch.as_bytes()).expect("write");
    drop(stdin);
    let rest: Vec<Value> = lines
        .map_while(Result::ok)
        .map(|l| serde_json::from_str(&l).expect("json"))
        .collect();
    let out = wait_or_kill(
        child,
        Duration::from_secs(60),
        "run after a reload that removed a task",
    );
    let tail = &rest[rest.len() - 10..];
    for (x, v) in tail.iter().enumerate() {
        if x % 2 == 0 {
            assert_eq!(kind(v), "unknown_task", "{v}");
        } else {
            assert_eq!(v["ok"], 2 * x as u64, "{v}");
        }
    }
    assert_eq!(exit_code(&out), 1);
}

#[test]
fn a_worker_killed_from_outside_is_not_blamed_on_the_pool() {
    let dir = scratch("outside-kill");
    let marker = dir.join("started");
    let line = serde_json::json!({"task": "append_line", "args": [marker, "started", 60000]});
    let input = common::lines_file(&dir, "in.jsonl", &[&line.to_string()]);
    let child = command(&["run", &hostile(), "--input", &input, "-w", "1", "-q"])
        .spawn()
        .expect("spawn");
    let host = child.id() as i32;
    // Kill the worker once its task runs: a worker killed before it said
    // READY died at start, and its job is resent (not this test's case).
    assert!(
        common::eventually(Duration::from_secs(30), || marker.exists()),
        "the task never started"
    );
    // The worker: a grandchild of the host (host → zygote → worker).
    let mut worker = None;
    assert!(
        common::eventually(Duration::from_secs(30), || {
            worker = common::children_of(host)
                .into_iter()
                .flat_map(common::children_of)
                .next();
            worker.is_some()
        }),
        "no worker appeared"
    );
    let worker = worker.expect("worker pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the worker");
    let out = wait_or_kill(child, Duration::from_secs(60), "run after an outside kill");
    let res = by_index(&stdout(&out), 1);
    let msg = res[0]["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(kind(&res[0]), "worker_lost", "{msg}");
    assert!(msg.contains("from outside the pool"), "{msg}");
    assert!(!msg.contains("the pool killed it"), "{msg}");
}

#[test]
fn b1_library_batch_mixing_a_gone_task_and_a_live_one_completes() {
    let dir = scratch("b1-gone-lib");
    let path = dir.join("libreload.so");
    install("reload-a", &path);
    let pool = Pool::builder()
        .workers(1)
        .worker_exe(common::bin())
        .plugin(&path)
        .build()
        .expect("pool");
    let square = pool.task_ref("reload", "square").expect("square");
    let double = pool.task_ref("reload", "double").expect("double");
    install("reload-b", &path);
    pool.restart().expect("reload");
    // One submission of ten jobs, alternating a gone task and a live one.
    let jobs: Vec<_> = (0..10u64)
        .map(|x| {
            let t = if x % 2 == 0 { square } else { double };
            Ok::<_, billiard_host::TaskError>(billiard_host::RawJob::new(
                t,
                Codec::Json,
                format!("[{x}]").into_bytes(),
            ))
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let got: Vec<(u64, _)> = pool.imap_raw(jobs.into_iter(), true, 1).collect();
            let _ = tx.send(got);
        });
        let got = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(got) => got,
            Err(_) => {
                pool.terminate_now();
                panic!("jobs queued behind a job of a gone task were stranded");
            }
        };
        assert_eq!(got.len(), 10);
        for (x, o) in got {
            if x % 2 == 0 {
                assert_eq!(o.expect_err("gone").kind, ErrorKind::UnknownTask);
            } else {
                assert_eq!(o.expect("double"), format!("{}", 2 * x).into_bytes());
            }
        }
    });
    pool.join().expect("join");
}
