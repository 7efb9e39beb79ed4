//! Issue 22's isolation findings that cross from one job to another:
//! the scoreboard as a write channel between workers (C3), host-service
//! calls made after their task returned (C13), and a result over the
//! frame limit (C14). The `hostile` plugin's `board_*` tasks attack; the
//! innocent jobs around them must come out as if nothing happened.

use crate::common;

use std::time::Duration;

use billiard_host::{ErrorKind, Pool};
use serde_json::Value;

/// `run` over `lines` with extra flags; returns the result lines by index
/// (items of streaming jobs collected per index), the exit code and stderr.
struct Run {
    results: Vec<Value>,
    items: Vec<Vec<Value>>,
    code: i32,
    stderr: String,
}

fn run(test: &str, lines: &[String], flags: &[&str]) -> Run {
    let dir = common::scratch(test);
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let input = common::lines_file(&dir, "jobs.jsonl", &refs);
    let mut args = vec![
        "run".to_string(),
        common::plugin_str("hostile"),
        "--input".into(),
        input,
    ];
    args.extend(flags.iter().map(|f| f.to_string()));
    let out = common::host(&args);
    let mut results = vec![Value::Null; lines.len()];
    let mut items = vec![Vec::new(); lines.len()];
    for l in common::json_lines(&common::stdout(&out)) {
        let i = l["index"].as_u64().expect("index") as usize;
        if let Some(item) = l.get("item") {
            items[i].push(item.clone());
        } else {
            results[i] = l;
        }
    }
    Run {
        results,
        items,
        code: common::exit_code(&out),
        stderr: common::stderr(&out),
    }
}

fn line(task: &str, args: Value) -> String {
    serde_json::json!({"task": task, "args": args}).to_string()
}

/// A hostile task posts stops for the next job of every slot it can reach
/// while 40 cooperative jobs run on the other worker; then it writes every
/// byte of the board memory it can reach. No innocent job is cancelled or
/// soft-limited, and the attacker saw no other worker's job at all.
fn stops_reach_no_other_worker(test: &str, reason: u64, sandbox: &[&str]) {
    let mut lines = vec![
        line("board_stops", serde_json::json!([1500, reason])),
        line("board_scribble", serde_json::json!([255])),
    ];
    lines.extend((0..40).map(|_| line("coop", serde_json::json!([20]))));
    let mut flags = vec!["-w", "2"];
    flags.extend_from_slice(sandbox);
    let r = run(test, &lines, &flags);
    assert_eq!(
        r.results[0]["ok"], 0,
        "the attacker reached another worker's slot: {}\n{}",
        r.results[0], r.stderr
    );
    assert!(r.results[1]["ok"].is_u64(), "{}", r.results[1]);
    for (i, res) in r.results.iter().enumerate().skip(2) {
        assert_eq!(res["ok"], 20, "job {i}: {res}\n{}", r.stderr);
    }
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn c3_a_task_cannot_cancel_jobs_on_another_worker() {
    stops_reach_no_other_worker("c3_cancel", 2, &[]);
}

#[test]
fn c3_a_strict_task_cannot_soft_limit_jobs_on_another_worker() {
    stops_reach_no_other_worker("c3_soft_strict", 1, &["--sandbox", "strict"]);
}

#[test]
fn c3_no_start_method_shares_the_board() {
    // The spawn method execs each worker (its page comes as fd 4); the
    // fork method's zygote is a copy of the host.
    stops_reach_no_other_worker("c3_spawn", 2, &["--start-method", "spawn"]);
    stops_reach_no_other_worker("c3_fork", 2, &["--start-method", "fork"]);
    stops_reach_no_other_worker(
        "c3_spawn_strict",
        1,
        &["--start-method", "spawn", "--sandbox", "strict"],
    );
}

/// A task cannot shrink its own page under the supervisor's mapping (a
/// read past the end of a file would fault the supervisor): the page is a
/// sealed memfd, also when opened again through /proc/self/map_files.
#[test]
fn c3_a_task_cannot_shrink_its_board_page() {
    let pool = Pool::builder()
        .workers(1)
        .worker_exe(common::bin())
        .plugin(common::plugin("hostile"))
        .build()
        .expect("pool");
    let got: String = pool
        .apply("hostile", "board_truncate", ())
        .expect("the task's report");
    assert!(!got.is_empty(), "the worker maps no board page");
    assert!(!got.contains("truncated"), "{got}");
    for i in 0..4u64 {
        assert_eq!(
            pool.apply::<_, u64>("hostile", "nap", (i,)).expect("nap"),
            i
        );
    }
    assert_eq!(pool.stats().expect("stats").worker_deaths, 0);
}

/// A task that marks its own job finished on its page (so its result
/// looks on the way) and ignores its context is still killed by
/// `terminate_job` when no job is queued behind it on the worker.
#[test]
fn c3_a_task_marking_itself_finished_is_still_terminated() {
    let pool = Pool::builder()
        .workers(1)
        .worker_exe(common::bin())
        .plugin(common::plugin("hostile"))
        .build()
        .expect("pool");
    let done = common::scratch("c3_dodge").join("forged");
    let h = pool
        .apply_async::<_, u64>(
            "hostile",
            "board_dodge",
            (done.to_string_lossy().into_owned(), 60_000u64),
        )
        .expect("submit");
    // The page says "finished" before the terminate request comes.
    assert!(common::eventually(Duration::from_secs(30), || done.exists()));
    assert!(pool.terminate_job(h.id()).expect("terminate"));
    let e = h.get().expect_err("terminated");
    assert_eq!(e.kind, ErrorKind::Terminated, "{e:?}");
    // Killed, not left to spin its 60 s out.
    assert_eq!(pool.stats().expect("stats").worker_deaths, 1);
    assert_eq!(
        pool.apply::<_, u64>("hostile", "nap", (1u64,))
            .expect("next"),
        1
    );
}

/// A task that forges "not started" on the board memory it reaches and
/// exits is charged for its deaths: it runs exactly twice and ends
/// `worker_lost`; every other job of the batch succeeds (the restart
/// limiter does not stop the pool for it).
fn forger_runs_twice(test: &str, forgers: usize, flags: &[&str]) {
    let dir = common::scratch(test);
    let marks: Vec<String> = (0..forgers)
        .map(|i| {
            dir.join(format!("runs{i}.txt"))
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let mut lines: Vec<String> = marks
        .iter()
        .map(|m| line("board_forge", serde_json::json!([m])))
        .collect();
    lines.extend((0..20).map(|i| line("nap", serde_json::json!([i]))));
    let mut all = flags.to_vec();
    let allow = dir.to_string_lossy().into_owned();
    if flags.contains(&"strict") {
        all.extend_from_slice(&["--allow-write", &allow]);
    }
    let r = run(test, &lines, &all);
    for (i, m) in marks.iter().enumerate() {
        let runs = std::fs::read_to_string(m)
            .unwrap_or_default()
            .lines()
            .count();
        assert_eq!(runs, 2, "forger {i} ran {runs} times\n{}", r.stderr);
        let res = &r.results[i];
        assert_eq!(res["error"]["kind"], "worker_lost", "{res}");
    }
    for (i, res) in r.results.iter().enumerate().skip(forgers) {
        assert_eq!(
            res["ok"],
            (i - forgers) as u64,
            "job {i}: {res}\n{}",
            r.stderr
        );
    }
    assert!(
        !r.stderr.contains("stopped starting workers"),
        "the pool stopped: {}",
        r.stderr
    );
}

#[test]
fn c3_a_forged_not_started_runs_at_most_twice() {
    forger_runs_twice("c3_forge", 1, &["-w", "2"]);
}

#[test]
fn c3_a_forged_not_started_runs_at_most_twice_on_one_worker() {
    forger_runs_twice("c3_forge_w1", 3, &["-w", "1"]);
}

#[test]
fn c3_a_strict_forged_not_started_runs_at_most_twice() {
    forger_runs_twice("c3_forge_strict", 1, &["-w", "2", "--sandbox", "strict"]);
}

/// A streaming task hands its emitter and host services to a thread that
/// emits and reports progress while the next job on the worker runs: the
/// next jobs (plain and streaming) get none of it, and the late calls are
/// refused.
#[test]
fn c13_late_emits_reach_no_later_job() {
    let lines = [
        line("board_late", serde_json::json!([5])),
        line("board_after_late", serde_json::json!([])),
        line("board_late", serde_json::json!([5])),
        line("board_after_late_stream", serde_json::json!([])),
        line("nap", serde_json::json!([1])),
    ];
    let r = run("c13_late", &lines, &["-w", "1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let want: [(&[u64], u64); 5] = [(&[1], 1), (&[], 0), (&[1], 1), (&[1, 2], 0), (&[], 1)];
    for (i, (items, ok)) in want.iter().enumerate() {
        let got: Vec<u64> = r.items[i].iter().filter_map(Value::as_u64).collect();
        assert_eq!(&got, items, "job {i}'s items\n{}", r.stderr);
        // 0 for the jobs after a late one: the host accepted none of the
        // late items (u64::MAX would mean the late calls never came).
        assert_eq!(r.results[i]["ok"], *ok, "job {i}: {}", r.results[i]);
    }
}

#[test]
fn c13_late_progress_reaches_no_later_job() {
    let pool = Pool::builder()
        .workers(1)
        .worker_exe(common::bin())
        .plugin(common::plugin("hostile"))
        .build()
        .expect("pool");
    let late = pool
        .apply_async::<_, u64>("hostile", "board_late", (5u64,))
        .expect("submit");
    let next = pool
        .apply_async::<_, u64>("hostile", "board_after_late", ())
        .expect("submit");
    assert_eq!(late.get().expect("late"), 1);
    assert_eq!(next.get().expect("next"), 0, "late emits were accepted");
    assert_eq!(
        next.progress(),
        None,
        "the late progress reached the next job"
    );
}

fn small_frame_pool(shm: Option<usize>) -> Pool {
    Pool::builder()
        .workers(1)
        .worker_exe(common::bin())
        .plugin(common::plugin("hostile"))
        .max_frame(1 << 20)
        .shm_threshold(shm)
        .build()
        .expect("pool")
}

/// A result or a stream item over the pool's frame limit is the job's
/// `task_error` saying so; the worker survives and serves the next job.
fn over_the_limit_is_named(shm: Option<usize>) {
    let pool = small_frame_pool(shm);
    let big = 2u64 << 20;
    let e = pool
        .apply::<_, String>("hostile", "board_big", (big,))
        .expect_err("a result over the frame limit");
    assert_eq!(e.kind, ErrorKind::TaskError, "{e:?}");
    // The encoded result is a few bytes longer than the string.
    for want in [
        "the result of 20971",
        "over the pool's frame limit of 1048576 bytes",
    ] {
        assert!(e.message.contains(want), "{:?} lacks {want:?}", e.message);
    }
    let e = pool
        .apply::<_, u64>("hostile", "board_big_item", (big,))
        .expect_err("an item over the frame limit");
    assert_eq!(e.kind, ErrorKind::TaskError, "{e:?}");
    assert!(e.message.contains("frame limit of 1048576 bytes"), "{e:?}");
    // Just under the limit still fits.
    let fits = (1u64 << 20) - 4096;
    assert_eq!(
        pool.apply::<_, String>("hostile", "board_big", (fits,))
            .expect("a result under the limit")
            .len() as u64,
        fits
    );
    assert_eq!(
        pool.apply::<_, u64>("hostile", "nap", (1u64,))
            .expect("next"),
        1
    );
    assert_eq!(pool.stats().expect("stats").worker_deaths, 0);
}

#[test]
fn c14_a_result_over_the_frame_limit_says_so() {
    over_the_limit_is_named(None);
}

#[test]
fn c14_a_result_over_the_frame_limit_says_so_with_shared_memory() {
    over_the_limit_is_named(Some(64 * 1024));
}

/// A frame the supervisor refuses by its length (a task forging one) costs
/// the worker, and the job's message names the refusal, not a closed socket.
#[test]
fn c14_a_refused_frame_is_named_in_the_job_error() {
    let pool = small_frame_pool(None);
    let e = pool
        .apply::<_, u64>("hostile", "board_huge_frame", ((1u32 << 20) + 100,))
        .expect_err("refused");
    assert_eq!(e.kind, ErrorKind::WorkerLost, "{e:?}");
    assert!(
        e.message
            .contains("over the pool's frame limit of 1048576 bytes"),
        "{:?}",
        e.message
    );
    assert!(!e.message.contains("fd 3?"), "{:?}", e.message);
    assert!(common::eventually(Duration::from_secs(10), || pool
        .apply::<_, u64>("hostile", "nap", (1u64,))
        .is_ok()));
}

/// The same through `run` (its hidden `--max-frame`): each oversized
/// output is its own job's `task_error`, the worker is not lost, the jobs
/// after it run, and nothing is logged as a protocol error.
#[test]
fn c14_run_names_the_frame_limit_per_job() {
    let lines = [
        line("board_big", serde_json::json!([2 << 20])),
        line("board_big_item", serde_json::json!([2 << 20])),
        line("nap", serde_json::json!([1])),
    ];
    let r = run("c14_run", &lines, &["-w", "1", "--max-frame", "1048576"]);
    for res in &r.results[..2] {
        assert_eq!(res["error"]["kind"], "task_error", "{res}");
        let msg = res["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("over the pool's frame limit of 1048576 bytes"),
            "{msg}"
        );
    }
    assert_eq!(r.results[2]["ok"], 1, "{}", r.results[2]);
    assert!(!r.stderr.contains("protocol"), "{}", r.stderr);
    assert!(!r.stderr.contains("worker_lost"), "{}", r.stderr);
}
