//! Streaming tasks (`out: &Emitter<T>`) and progress reports
//! (`ctx.progress`): the library's `apply_stream`, back-pressure, deaths
//! and terminations mid-stream, coalesced progress, and the CLI's lines.

use crate::common;

use std::time::{Duration, Instant};

use billiard_host::{ErrorKind, Event, Pool, PoolBuilder, Streamed};

fn builder(workers: usize) -> PoolBuilder {
    common::pool_builder(workers, &["stream", "hostile", "math"])
}

/// This process's resident set size, from /proc.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a number of kB");
    kb * 1024
}

#[test]
fn a_million_items_arrive_in_order_then_the_result() {
    let pool = builder(1).build().unwrap();
    let n = 1_000_000u64;
    let mut next = 0u64;
    let mut done = None;
    for s in pool
        .apply_stream::<_, u64, u64>("stream", "count", (n,))
        .unwrap()
    {
        match s {
            Streamed::Item(v) => {
                assert!(done.is_none(), "an item after the outcome");
                assert_eq!(v, next, "items out of order");
                next += 1;
            }
            Streamed::Done(r) => {
                assert!(done.is_none(), "two outcomes");
                done = Some(r);
            }
        }
    }
    assert_eq!(next, n);
    assert_eq!(done, Some(Ok(n)));
    // The worker serves plain jobs afterwards.
    let y: u64 = pool.apply("math", "square", (7u64,)).unwrap();
    assert_eq!(y, 49);
    pool.join().unwrap();
}

#[test]
fn a_slow_consumer_holds_the_task_back_and_host_memory_stays_flat() {
    let pool = builder(1).build().unwrap();
    // 1M items of 100 bytes: 100 MB emitted, far more than the bound.
    let (n, size) = (1_000_000u64, 100u64);
    let base = rss_bytes();
    let mut peak = base;
    let mut stream = pool
        .apply_stream::<_, String, u64>("stream", "blobs", (n, size))
        .unwrap();
    let mut got = 0u64;
    let mut until_pause = 20_000u32;
    let started = Instant::now();
    let mut done = None;
    for s in &mut stream {
        match s {
            Streamed::Item(v) => {
                assert_eq!(v.len() as u64, size);
                let idx: u64 = v.trim_end_matches('.').parse().unwrap();
                assert_eq!(idx, got);
                got += 1;
                until_pause -= 1;
                if until_pause == 0 {
                    until_pause = 20_000;
                    // A slow consumer: the task is far quicker than this.
                    std::thread::sleep(Duration::from_millis(20));
                    peak = peak.max(rss_bytes());
                }
            }
            Streamed::Done(r) => done = Some(r),
        }
    }
    assert_eq!(got, n);
    assert_eq!(done, Some(Ok(n)));
    let grown = peak.saturating_sub(base);
    assert!(
        grown < 32 << 20,
        "host RSS grew by {} MB while a slow consumer read 100 MB of items ({:?})",
        grown >> 20,
        started.elapsed()
    );
    drop(stream);
    pool.join().unwrap();
}

fn stream_to_end(
    pool: &Pool,
    task: &str,
    n: u64,
) -> (Vec<u64>, Vec<Result<u64, billiard_host::TaskError>>) {
    let mut items = Vec::new();
    let mut outcomes = Vec::new();
    for s in pool
        .apply_stream::<_, u64, u64>("hostile", task, (n,))
        .unwrap()
    {
        match s {
            Streamed::Item(v) => {
                assert!(outcomes.is_empty(), "an item after the outcome");
                items.push(v);
            }
            Streamed::Done(r) => outcomes.push(r),
        }
    }
    (items, outcomes)
}

#[test]
fn a_task_that_crashes_mid_stream_yields_its_items_then_one_worker_lost() {
    let pool = builder(1).build().unwrap();
    for task in ["emit_then_segv", "emit_then_abort", "emit_then_exit"] {
        let (items, outcomes) = stream_to_end(&pool, task, 100);
        assert_eq!(items, (0..100).collect::<Vec<u64>>(), "{task}");
        assert_eq!(outcomes.len(), 1, "{task}: {outcomes:?}");
        let e = outcomes[0].clone().unwrap_err();
        assert_eq!(e.kind, ErrorKind::WorkerLost, "{task}: {e:?}");
    }
    let y: u64 = pool.apply("math", "square", (3u64,)).unwrap();
    assert_eq!(y, 9);
    pool.join().unwrap();
}

#[test]
fn terminate_job_mid_stream_ends_it_terminated() {
    let pool = builder(1).build().unwrap();
    let mut stream = pool
        .apply_stream::<_, u64, u64>("stream", "count_forever", ())
        .unwrap();
    let id = stream.id();
    for i in 0..10_000u64 {
        match stream.next() {
            Some(Streamed::Item(v)) => assert_eq!(v, i),
            other => panic!("expected item {i}, got {other:?}"),
        }
    }
    assert!(pool.terminate_job(id).unwrap());
    let mut next = 10_000u64;
    let mut outcomes = Vec::new();
    for s in &mut stream {
        match s {
            Streamed::Item(v) => {
                assert!(outcomes.is_empty(), "an item after the outcome");
                assert_eq!(v, next);
                next += 1;
            }
            Streamed::Done(r) => outcomes.push(r),
        }
    }
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    let e = outcomes[0].clone().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Terminated, "{e:?}");
    assert!(stream.next().is_none());
    drop(stream);
    let y: u64 = pool.apply("math", "square", (5u64,)).unwrap();
    assert_eq!(y, 25);
    pool.join().unwrap();
}

#[test]
fn dropping_a_stream_early_terminates_its_task() {
    let pool = builder(1).build().unwrap();
    let mut stream = pool
        .apply_stream::<_, u64, u64>("stream", "count_forever", ())
        .unwrap();
    assert_eq!(stream.next(), Some(Streamed::Item(0)));
    drop(stream);
    // The only worker is free again: the endless task was stopped.
    let y: u64 = pool.apply("math", "square", (6u64,)).unwrap();
    assert_eq!(y, 36);
    pool.join().unwrap();
}

#[test]
fn a_failing_stream_keeps_its_items_and_ends_with_the_task_error() {
    let pool = builder(1).build().unwrap();
    let all: Vec<Streamed<u64, u64>> = pool
        .apply_stream("stream", "count_then_fail", (3u64,))
        .unwrap()
        .collect();
    assert_eq!(
        &all[..3],
        &[Streamed::Item(0), Streamed::Item(1), Streamed::Item(2)]
    );
    match &all[3..] {
        [Streamed::Done(Err(e))] => {
            assert_eq!(e.kind, ErrorKind::TaskError);
            assert!(e.message.contains("failed after 3 items"), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    pool.join().unwrap();
}

#[test]
fn streaming_jobs_in_a_map_run_one_call_each() {
    // A chunked map over a streaming task: each job runs alone (its items
    // are dropped by `map`), with its own result.
    let pool = builder(2).build().unwrap();
    let ys: Vec<u64> = pool.map("stream", "count", 0..50u64, 10).unwrap();
    assert_eq!(ys, (0..50).collect::<Vec<u64>>());
    pool.join().unwrap();
}

#[test]
fn progress_is_coalesced_and_ends_at_total() {
    let (tx, rx) = crossbeam_channel::unbounded();
    let pool = builder(1).events(tx).build().unwrap();
    // Two million progress calls in a tight loop.
    let n = 2_000_000u64;
    let r = pool
        .apply_async::<_, u64>("stream", "progress_loop", (n, 20u64))
        .unwrap();
    let started = Instant::now();
    r.get().unwrap();
    let took = started.elapsed();
    assert_eq!(r.progress(), Some((n, n)));
    let reports: Vec<(u64, u64)> = rx
        .try_iter()
        .filter_map(|e| match e {
            Event::JobProgress { job, done, total } if job == r.id() => Some((done, total)),
            _ => None,
        })
        .collect();
    assert_eq!(reports.last(), Some(&(n, n)), "{reports:?}");
    assert!(reports.iter().all(|&(_, t)| t == n));
    assert!(
        reports.windows(2).all(|w| w[0].0 < w[1].0),
        "reports go forward: {reports:?}"
    );
    // At most one per ~50 ms, plus the first and the last.
    let bound = took.as_millis() as usize / 40 + 3;
    assert!(
        reports.len() <= bound,
        "{} reports in {took:?} (bound {bound})",
        reports.len()
    );
    pool.join().unwrap();
}

#[test]
fn progress_of_a_running_job_is_visible_before_it_ends() {
    let pool = builder(1).build().unwrap();
    let flag = std::env::temp_dir().join(format!("billiard-progress-{}", std::process::id()));
    let _ = std::fs::remove_file(&flag);
    let r = pool
        .apply_async::<_, u64>(
            "stream",
            "progress_until_file",
            (flag.to_string_lossy().into_owned(), 5u64),
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while r.progress().is_none() {
        assert!(Instant::now() < deadline, "no progress seen");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(r.progress(), Some((1, 2)));
    assert!(!r.ready());
    std::fs::write(&flag, b"go").unwrap();
    assert_eq!(r.get().unwrap(), 5);
    assert_eq!(r.progress(), Some((2, 2)));
    let _ = std::fs::remove_file(&flag);
    pool.join().unwrap();
}

#[test]
fn cli_run_writes_item_lines_before_each_streaming_jobs_result() {
    let dir = std::env::temp_dir().join(format!("billiard-stream-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("jobs.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"task\":\"lines\",\"args\":[\"a\\nb\\nc\"]}\n",
            "{\"task\":\"plain_loop\",\"args\":[3,0]}\n",
            "{\"task\":\"count\",\"args\":[2]}\n",
            "{\"task\":\"count\",\"args\":[0]}\n",
            "{\"task\":\"count_then_fail\",\"args\":[1]}\n",
            "{\"task\":\"lines\",\"args\":[\"\"]}\n",
            "{\"task\":\"blobs\",\"args\":[2,3]}\n",
        ),
    )
    .unwrap();
    let out = common::host_command()
        .args(["run", &common::plugin_str("stream"), "-w", "1", "--input"])
        .arg(&input)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        concat!(
            "{\"index\":0,\"item\":\"a\"}\n",
            "{\"index\":0,\"item\":\"b\"}\n",
            "{\"index\":0,\"item\":\"c\"}\n",
            "{\"index\":0,\"ok\":3}\n",
            "{\"index\":1,\"ok\":11400714819323198485}\n",
            "{\"index\":2,\"item\":0}\n",
            "{\"index\":2,\"item\":1}\n",
            "{\"index\":2,\"ok\":2}\n",
            "{\"index\":3,\"ok\":0}\n",
            "{\"index\":4,\"item\":0}\n",
            "{\"index\":4,\"error\":{\"kind\":\"task_error\",\"message\":\"failed after 1 items\"}}\n",
            "{\"index\":5,\"ok\":0}\n",
            "{\"index\":6,\"item\":\"0..\"}\n",
            "{\"index\":6,\"item\":\"1..\"}\n",
            "{\"index\":6,\"ok\":2}\n",
        ),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One failed job: exit 1, and the summary counts 7 jobs, not items.
    assert_eq!(out.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cli_run_output_of_plain_tasks_is_unchanged() {
    let out = common::host_command()
        .args([
            "run",
            &common::plugin_str("math"),
            "--task",
            "square",
            "--args",
            "[3]",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"index\":0,\"ok\":9}\n"
    );
}

#[test]
fn apply_stream_is_an_async_stream_too() {
    use futures_util::StreamExt;
    let pool = builder(1).build().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (items, done) = rt.block_on(async {
        let mut s = pool
            .apply_stream::<_, u64, u64>("stream", "count", (100_000u64,))
            .unwrap();
        let (mut items, mut done) = (Vec::new(), Vec::new());
        while let Some(x) = StreamExt::next(&mut s).await {
            match x {
                Streamed::Item(v) => {
                    assert!(done.is_empty(), "an item after the outcome");
                    items.push(v);
                }
                Streamed::Done(r) => done.push(r),
            }
        }
        (items, done)
    });
    assert_eq!(items, (0..100_000).collect::<Vec<u64>>());
    assert_eq!(done, vec![Ok(100_000)]);
    pool.join().unwrap();
}
