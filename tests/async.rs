//! async/await (issue 18, part 2): job handles are futures and streams are
//! `futures_core::Stream`s, under tokio here (a dev-dependency only: the
//! library knows no runtime).

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use billiard_host::{ErrorKind, Pool, Stats};
use futures_util::{FutureExt, StreamExt};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn pool(workers: usize) -> Pool {
    Pool::builder()
        .workers(workers)
        .plugin(common::plugin("math"))
        .plugin(common::plugin("faults"))
        .build()
        .expect("build the pool")
}

/// Polls the pool's stats until `done` holds (30 s at most).
fn stats_until(pool: &Pool, done: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = pool.stats().expect("stats");
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "stats never got there: {s:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_thousand_concurrent_awaits_on_one_runtime_thread() {
    let pool = Arc::new(pool(2));
    let rt = runtime();
    let results = rt.block_on(async {
        let tasks: Vec<_> = (0..1000u64)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let fut = pool.apply_async::<_, u64>("math", "square", (i,))?;
                    fut.await
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("the task ran"));
        }
        out
    });
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r, Ok((i * i) as u64));
    }
    let s = pool.stats().expect("stats");
    assert_eq!(
        (s.submitted, s.succeeded, s.completed()),
        (1000, 1000, 1000)
    );
}

#[test]
fn a_pending_future_does_not_block_the_thread() {
    // A job that runs for a minute: a future that waited inside `poll`
    // would hang here.
    let pool = pool(1);
    let mut fut = pool
        .apply_async::<_, u64>("faults", "sleep_ms", (60_000u64,))
        .expect("submit");
    assert!((&mut fut).now_or_never().is_none());
    assert!((&mut fut).now_or_never().is_none());
    // Polled twice by one task: one registration, not two.
    assert_eq!(fut.raw().registered_wakers(), 1);
    assert!(pool.terminate_job(fut.id()).expect("terminate"));
    let err = runtime().block_on(fut).expect_err("terminated");
    assert_eq!(err.kind, ErrorKind::Terminated);
}

#[test]
fn a_dropped_pending_future_leaves_its_job_exactly_one_outcome() {
    let pool = pool(1);
    let rt = runtime();
    let fut = pool
        .apply_async::<_, u64>("faults", "sleep_ms", (300u64,))
        .expect("submit");
    // A second handle on the same job, to look at its slot afterwards.
    let probe = fut.raw().clone();
    // Cancelled the async way: polled once (pending) inside the runtime,
    // handed back out un-awaited on purpose, then dropped.
    #[allow(clippy::async_yields_async)]
    let fut = rt.block_on(async move {
        let mut fut = fut;
        assert!(futures_util::poll!(&mut fut).is_pending());
        fut
    });
    assert_eq!(probe.registered_wakers(), 1);
    drop(fut);
    // The dropped future's waker went with it, not with the job's end.
    assert_eq!(probe.registered_wakers(), 0);
    assert!(!probe.ready(), "the job still runs");
    let s = stats_until(&pool, |s| s.completed() == 1);
    assert_eq!(
        (s.submitted, s.succeeded, s.queued, s.running),
        (1, 1, 0, 0)
    );
    assert_eq!(probe.get().map(|b| !b.is_empty()), Ok(true));
    // Nothing left behind: the pool takes the next job as usual.
    let y: u64 = rt
        .block_on(pool.apply_async("math", "square", (5u64,)).expect("submit"))
        .expect("square");
    assert_eq!(y, 25);
}

#[test]
fn cancel_on_drop_terminates_the_job_once() {
    let pool = pool(1);
    let rt = runtime();
    let handle = pool
        .apply_async::<_, u64>("faults", "sleep_ms", (60_000u64,))
        .expect("submit");
    let probe = handle.raw().clone();
    let mut fut = handle.cancel_on_drop(&pool);
    assert!(rt
        .block_on(async { futures_util::poll!(&mut fut) })
        .is_pending());
    drop(fut);
    let s = stats_until(&pool, |s| s.completed() == 1);
    assert_eq!(s.failed.get(&ErrorKind::Terminated), Some(&1), "{s:?}");
    assert_eq!((s.submitted, s.succeeded), (1, 0));
    let err = probe.get().expect_err("terminated");
    assert_eq!(err.kind, ErrorKind::Terminated);
    // A finished job is not cancelled by the drop that follows.
    let fut = pool
        .apply_async::<_, u64>("math", "square", (6u64,))
        .expect("submit")
        .cancel_on_drop(&pool);
    assert_eq!(rt.block_on(fut), Ok(36));
    let s = stats_until(&pool, |s| s.completed() == 2);
    assert_eq!(
        (s.succeeded, s.failed.get(&ErrorKind::Terminated)),
        (1, Some(&1))
    );
}

#[test]
fn imap_as_a_stream_consumed_with_stream_ext() {
    // A small window: the stream waits (pending) many times and is woken
    // by each chunk's arrival.
    let pool = Pool::builder()
        .workers(2)
        .plugin(common::plugin("math"))
        .imap_window(16)
        .build()
        .expect("build the pool");
    let rt = runtime();
    let (ordered, mut unordered) = rt.block_on(async {
        let mut s = pool
            .imap::<_, u64>("math", "square", 0..500u64, 3)
            .expect("imap")
            .into_stream();
        let mut ordered = Vec::new();
        while let Some(item) = s.next().await {
            ordered.push(item.expect("square"));
        }
        let unordered: Vec<u64> = pool
            .imap_unordered::<_, u64>("math", "square", 0..500u64, 1)
            .expect("imap_unordered")
            .into_stream()
            .map(|r| r.expect("square"))
            .collect()
            .await;
        (ordered, unordered)
    });
    let want: Vec<u64> = (0..500u64).map(|i| i * i).collect();
    assert_eq!(ordered, want);
    unordered.sort_unstable();
    assert_eq!(unordered, want);
}

#[test]
fn a_failed_item_of_a_stream_stands_in_its_place() {
    let pool = pool(1);
    let rt = runtime();
    let got: Vec<Result<u64, ErrorKind>> = rt.block_on(
        pool.imap::<_, u64>("math", "fib", [10u32, 200, 12], 1)
            .expect("imap")
            .into_stream()
            .map(|r| r.map_err(|e| e.kind))
            .collect(),
    );
    assert_eq!(got, vec![Ok(55), Err(ErrorKind::TaskError), Ok(144)]);
}

#[test]
fn a_raw_result_is_a_future_too() {
    let pool = pool(1);
    let target = pool.task_ref("math", "square").expect("task");
    let args = billiard_host::Codec::Json;
    let fut = pool
        .apply_raw(target, args, b"[9]".to_vec(), Default::default())
        .expect("submit");
    let bytes = runtime().block_on(fut).expect("square");
    assert_eq!(bytes, b"81");
}

/// One HTTP/1.1 GET over a fresh connection; the whole response.
fn http_get(addr: &str, path: &str) -> String {
    let (out, err) = common::http_get(addr, path, Duration::from_secs(60))
        .expect("connect to the example and send the request");
    if let Some(e) = err {
        panic!("read the response: {e}");
    }
    out
}

#[test]
fn the_axum_example_runs_a_plugin_task_per_request() {
    use std::io::BufRead;
    let exe = common::example("axum");
    let mut child = std::process::Command::new(&exe)
        .arg(common::plugin("math"))
        .arg("127.0.0.1:0")
        .env_remove("BILLIARD_HOST_EXE")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the example");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    let addr = first
        .strip_prefix("listening on http://")
        .map(str::to_owned);
    let result = std::panic::catch_unwind(|| {
        let addr = addr.unwrap_or_else(|| panic!("no address line: {first:?}"));
        let ok = http_get(&addr, "/square/12");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.ends_with("\r\n\r\n144\n"), "{ok}");
        // The task's own error is the client's problem: 422, with the kind.
        let bad = http_get(&addr, "/fib/100");
        assert!(bad.starts_with("HTTP/1.1 422"), "{bad}");
        assert!(bad.contains("task_error"), "{bad}");
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
