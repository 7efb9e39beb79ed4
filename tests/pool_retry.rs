//! Retries for programs embedding `Pool` (issue 23 item 2): the same
//! policy as `run --retries`, through the library only, with real worker
//! processes and the real `faults` plugin.

use crate::common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use billiard_host::retry::RetryPolicy;
use billiard_host::{ErrorKind, JobOptions, Pool, PoolBuilder, TaskError};

/// Retries task errors and panics, twice at most, at once.
fn quick(max: u32) -> RetryPolicy {
    RetryPolicy {
        on: vec![ErrorKind::TaskError, ErrorKind::Panic],
        max_retries: Some(max),
        delay: Duration::ZERO,
        backoff: None,
    }
}

fn builder(workers: usize) -> PoolBuilder {
    common::pool_builder(workers, &["faults"])
}

fn runs(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Waits (bounded) until the pool holds `n` jobs waiting for a retry.
fn until_waiting(pool: &Pool, n: u64) {
    assert!(
        common::eventually(Duration::from_secs(20), || pool
            .stats()
            .is_ok_and(|s| s.waiting_retry == n)),
        "{:?}",
        pool.stats()
    );
}

#[test]
fn k23_a_retried_jobs_callback_fires_exactly_once_with_the_final_outcome() {
    let dir = common::scratch("callback_once");
    let pool = builder(2).retry_policy(quick(3)).build().unwrap();
    let oks = Arc::new(AtomicUsize::new(0));
    let errs = Arc::new(AtomicUsize::new(0));
    let (o, e) = (oks.clone(), errs.clone());
    let count = dir.join("runs");
    let h = pool
        .apply_async_with::<_, u32>(
            "faults",
            "autoretried",
            (path(&count), 2u32),
            JobOptions::default()
                .on_success(move |v| {
                    assert_eq!(v, 3);
                    o.fetch_add(1, Ordering::SeqCst);
                })
                .on_error(move |_| {
                    e.fetch_add(1, Ordering::SeqCst);
                }),
        )
        .unwrap();
    assert_eq!(h.get(), Ok(3));
    let a = h.attempts().expect("it was retried");
    assert_eq!(a.count, 3);
    assert_eq!(a.failures.len(), 2);
    assert!(a.failures.iter().all(|f| f.kind == ErrorKind::TaskError));
    // Past the cap the error callback fires once, with the last failure.
    let (o2, e2) = (oks.clone(), errs.clone());
    let count2 = dir.join("runs2");
    let h2 = pool
        .apply_async_with::<_, u32>(
            "faults",
            "autoretried",
            (path(&count2), 10u32),
            JobOptions::default()
                .retry_policy(quick(1))
                .on_success(move |_| {
                    o2.fetch_add(1, Ordering::SeqCst);
                })
                .on_error(move |e| {
                    assert_eq!(e.message, "run 2: failing until run 11");
                    e2.fetch_add(1, Ordering::SeqCst);
                }),
        )
        .unwrap();
    assert_eq!(h2.get().unwrap_err().kind, ErrorKind::TaskError);
    assert_eq!(h2.attempts().map(|a| a.count), Some(2));
    pool.join().unwrap();
    // join waited for the callback thread: every callback has run.
    assert_eq!(oks.load(Ordering::SeqCst), 1);
    assert_eq!(errs.load(Ordering::SeqCst), 1);
    assert_eq!((runs(&count), runs(&count2)), (3, 2));
    // The job that ran once has no attempts to show; one without retries
    // is not retried.
    let pool = builder(1).build().unwrap();
    let h = pool
        .apply_async::<_, u64>("faults", "fail", ("x".to_string(),))
        .unwrap();
    assert_eq!(h.get().unwrap_err().kind, ErrorKind::TaskError);
    assert_eq!(h.attempts(), None);
}

#[test]
fn k23_map_and_imap_retry_failed_items_in_order() {
    let dir = common::scratch("imap");
    let pool = builder(2).retry_policy(quick(2)).build().unwrap();
    let items: Vec<(String, u32)> = (0..20)
        .map(|i| (path(&dir.join(format!("r{i}"))), u32::from(i % 7 == 3)))
        .collect();
    // Chunks of 5: items 3, 10 and 17 fail once each inside a chunk.
    let got: Vec<u32> = pool.starmap("faults", "flaky", items.clone(), 5).unwrap();
    assert_eq!(
        got,
        (0..20)
            .map(|i| if i % 7 == 3 { 2 } else { 1 })
            .collect::<Vec<_>>()
    );
    // map_async collects items whose final outcome came after retries
    // (every one fails here: the first failure in input order is the
    // map's, after each item ran three times).
    let before = pool
        .stats()
        .unwrap()
        .failed
        .get(&ErrorKind::TaskError)
        .copied();
    let m = pool
        .map_async::<_, u64>(
            "faults",
            "fail",
            ["a", "b", "c", "d", "e"].map(String::from),
            2,
        )
        .unwrap();
    let e = m.get().unwrap_err();
    assert_eq!((e.kind, e.message.as_str()), (ErrorKind::TaskError, "a"));
    let after = pool
        .stats()
        .unwrap()
        .failed
        .get(&ErrorKind::TaskError)
        .copied();
    assert_eq!(
        after.unwrap_or(0) - before.unwrap_or(0),
        15,
        "5 items, 3 runs each"
    );
    // imap with the attempts of each item, under a policy of its own.
    let mut imap = pool
        .imap::<_, u32>("faults", "square", 0..4u64, 2)
        .unwrap()
        .retry_policy(Some(quick(1)));
    let mut n = 0;
    while let Some((r, a)) = imap.next_with_attempts() {
        assert_eq!(r, Ok((n * n) as u32));
        assert_eq!(a, None);
        n += 1;
    }
    assert_eq!(n, 4);
    drop(imap);
    // A stream that turns retries off gets the first failure.
    let mut imap = pool
        .imap::<_, u64>("faults", "panic", ["boom".to_string()], 1)
        .unwrap()
        .retry_policy(None);
    let (r, a) = imap.next_with_attempts().unwrap();
    assert_eq!(r.unwrap_err().kind, ErrorKind::Panic);
    assert_eq!(a, None);
    drop(imap);
    // The failed items ran twice, the rest once.
    for (i, (p, _)) in items.iter().enumerate() {
        let want = if i % 7 == 3 { 2 } else { 1 };
        assert_eq!(runs(Path::new(p)), want, "item {i}");
    }
}

#[test]
fn k23_terminate_job_ends_a_job_waiting_for_its_retry() {
    let pool = builder(1)
        .retry_policy(RetryPolicy {
            delay: Duration::from_secs(3600),
            ..quick(3)
        })
        .build()
        .unwrap();
    let h = pool
        .apply_async::<_, u64>("faults", "fail", ("no".to_string(),))
        .unwrap();
    until_waiting(&pool, 1);
    assert!(pool.terminate_job(h.id()).unwrap());
    let e: TaskError = h.get().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Terminated, "{e}");
    assert!(e.message.contains("waited for its retry"), "{e}");
    assert_eq!(h.attempts().map(|a| a.count), Some(2));
    assert!(!pool.terminate_job(h.id()).unwrap(), "already ended");
    assert_eq!(pool.stats().unwrap().waiting_retry, 0);
    pool.join().unwrap();
}

#[test]
fn k23_a_closed_pool_runs_its_waiting_retries_a_terminated_one_ends_them() {
    let dir = common::scratch("shutdown");
    // close + join: the retry still runs (join waits for every job).
    let pool = builder(1)
        .retry_policy(RetryPolicy {
            delay: Duration::from_millis(300),
            ..quick(3)
        })
        .build()
        .unwrap();
    let count = dir.join("runs");
    let h = pool
        .apply_async::<_, u32>("faults", "autoretried", (path(&count), 1u32))
        .unwrap();
    until_waiting(&pool, 1);
    pool.join().unwrap();
    assert_eq!(h.get(), Ok(2));
    assert_eq!(runs(&count), 2);

    // terminate: it is answered `terminated`, never lost.
    let pool = builder(1)
        .retry_policy(RetryPolicy {
            delay: Duration::from_secs(3600),
            ..quick(3)
        })
        .build()
        .unwrap();
    let h = pool
        .apply_async::<_, u64>("faults", "fail", ("no".to_string(),))
        .unwrap();
    until_waiting(&pool, 1);
    pool.terminate().unwrap();
    let e = h.get().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Terminated, "{e}");
    assert!(e.message.contains("waited for its retry"), "{e}");

    // Dropped: the same.
    let pool = builder(1)
        .retry_policy(RetryPolicy {
            delay: Duration::from_secs(3600),
            ..quick(3)
        })
        .build()
        .unwrap();
    let h = pool
        .apply_async::<_, u64>("faults", "fail", ("no".to_string(),))
        .unwrap();
    until_waiting(&pool, 1);
    drop(pool);
    assert_eq!(h.get().unwrap_err().kind, ErrorKind::Terminated);
}

#[test]
fn k23_a_policy_out_of_range_is_refused_at_build() {
    let err = builder(1)
        .retry_policy(RetryPolicy {
            delay: Duration::from_secs(u64::MAX / 4),
            ..quick(1)
        })
        .build()
        .err()
        .expect("refused");
    assert!(err.to_string().contains("retry_policy's delay"), "{err}");
}

#[test]
fn k23_a_tasks_registered_retry_options_override_the_pools_default() {
    // `autoretried` registers autoretry_for = "task_error,panic",
    // max_retries = 2 and a 100 ms backoff; the pool's default retries
    // nothing by itself.
    let dir = common::scratch("task_options");
    let pool = builder(2)
        .retry_policy(RetryPolicy {
            on: Vec::new(),
            max_retries: Some(0),
            delay: Duration::ZERO,
            backoff: None,
        })
        .build()
        .unwrap();
    let ok = dir.join("ok");
    let h = pool
        .apply_async::<_, u32>("faults", "autoretried", (path(&ok), 2u32))
        .unwrap();
    assert_eq!(h.get(), Ok(3));
    assert_eq!(h.attempts().map(|a| a.count), Some(3));
    // Its own cap: two retries.
    let capped = dir.join("capped");
    let h = pool
        .apply_async::<_, u32>("faults", "autoretried", (path(&capped), 9u32))
        .unwrap();
    assert_eq!(h.get().unwrap_err().kind, ErrorKind::TaskError);
    assert_eq!(runs(&capped), 3);
    // The same through a stream (chunks resolve their task's options).
    let items: Vec<(String, u32)> = (0..4)
        .map(|i| (path(&dir.join(format!("s{i}"))), u32::from(i == 1)))
        .collect();
    let got: Vec<u32> = pool.starmap("faults", "autoretried", items, 2).unwrap();
    assert_eq!(got, [1, 2, 1, 1]);
    // A job's own policy stands as it is: no retry here.
    let own = dir.join("own");
    let h = pool
        .apply_async_with::<_, u32>(
            "faults",
            "autoretried",
            (path(&own), 1u32),
            JobOptions::default().retry_policy(quick(0)),
        )
        .unwrap();
    assert_eq!(h.get().unwrap_err().kind, ErrorKind::TaskError);
    assert_eq!(runs(&own), 1);
    // A task without options: the pool's default (nothing retried).
    let h = pool
        .apply_async::<_, u64>("faults", "fail", ("x".to_string(),))
        .unwrap();
    assert_eq!(h.get().unwrap_err().kind, ErrorKind::TaskError);
    assert_eq!(h.attempts(), None);
}

#[test]
fn k23_hostile_retry_requests_are_bounded() {
    let dir = common::scratch("hostile");
    let pool = builder(1).retry_policy(quick(3)).build().unwrap();
    // A plugin asking for a retry in 10 years (the longest countdown a
    // plugin may give; a longer one is refused as malformed detail) with
    // a cap of u32::MAX: the job waits, nothing overflows, and
    // terminate_job still ends it.
    let ten_years_ms = billiard_host::bounds::MAX_DURATION.as_millis() as u64;
    let h = pool
        .apply_async::<_, u32>(
            "faults",
            "flaky_with",
            (path(&dir.join("f")), 5u32, ten_years_ms, Some(u32::MAX)),
        )
        .unwrap();
    until_waiting(&pool, 1);
    assert!(pool.terminate_job(h.id()).unwrap());
    assert_eq!(h.get().unwrap_err().kind, ErrorKind::Terminated);
    // A job whose own limit is refused at submission (bad_args) is not
    // retried past the check, even when the policy lists bad_args.
    let h = pool
        .apply_async_with::<_, u64>(
            "faults",
            "square",
            (3u64,),
            JobOptions::default()
                .time_limit(Duration::MAX)
                .retry_policy(RetryPolicy {
                    on: vec![ErrorKind::BadArgs],
                    ..quick(3)
                }),
        )
        .unwrap();
    assert_eq!(h.get().unwrap_err().kind, ErrorKind::BadArgs);
    assert_eq!(h.attempts(), None);
    assert_eq!(pool.stats().unwrap().waiting_retry, 0);
    // A job's own policy out of range ends that job (bad_args, naming it);
    // a stream's is bounded, and an unchecked backoff never panics.
    let h = pool
        .apply_async_with::<_, u64>(
            "faults",
            "square",
            (3u64,),
            JobOptions::default().retry_policy(RetryPolicy {
                delay: Duration::MAX,
                ..quick(1)
            }),
        )
        .unwrap();
    let e = h.get().unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadArgs);
    assert!(e.message.contains("retry_policy's delay"), "{e}");
    let wild = RetryPolicy {
        backoff: Some(billiard_host::retry::Backoff {
            factor: Duration::MAX,
            max: Duration::MAX,
            jitter: false,
        }),
        ..quick(1)
    };
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut imap = pool
                .imap::<_, u64>("faults", "panic", ["x".to_string()], 1)
                .unwrap()
                .retry_policy(Some(wild));
            imap.next_with_attempts().unwrap()
        });
        // The retry waits (10 years at most): end it through the pool.
        until_waiting(&pool, 1);
        pool.terminate_now();
        let (r, a) = reader.join().unwrap();
        assert_eq!(r.unwrap_err().kind, ErrorKind::Terminated);
        assert_eq!(a.map(|a| a.count), Some(2));
    });
    let _ = pool.join();
}

#[test]
fn k23_terminate_job_by_its_first_id_ends_a_running_retry() {
    // Every attempt passes its 300 ms hard limit and is retried at once:
    // once a retry runs, terminate_job with the id the caller holds ends
    // the job, whichever attempt it is at (running, queued or waiting).
    let pool = builder(1).build().unwrap();
    let h = pool
        .apply_async_with::<_, u64>(
            "faults",
            "sleep_ms",
            (60_000u64,),
            JobOptions::default()
                .time_limit(Duration::from_millis(300))
                .retry_policy(RetryPolicy {
                    on: vec![ErrorKind::TimeLimit],
                    ..quick(1000)
                }),
        )
        .unwrap();
    assert!(
        common::eventually(Duration::from_secs(20), || pool
            .stats()
            .is_ok_and(|s| s.retried >= 1 && s.running == 1)),
        "{:?}",
        pool.stats()
    );
    assert!(pool.terminate_job(h.id()).unwrap());
    let e = h.get().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Terminated, "{e}");
    let a = h.attempts().expect("retried");
    assert!(a.count >= 2, "{a:?}");
    assert!(a.failures.iter().all(|f| f.kind == ErrorKind::TimeLimit));
    assert_eq!(pool.stats().unwrap().waiting_retry, 0);
    pool.join().unwrap();
}

#[test]
fn k23_raw_jobs_take_a_policy_of_their_own() {
    use billiard_host::{Codec, Limits};
    let pool = builder(1).retry_policy(quick(2)).build().unwrap();
    let target = pool.find_task("fail").unwrap();
    let run = |policy: Option<RetryPolicy>| {
        let h = pool
            .apply_raw_retrying(
                target,
                Codec::Json,
                b"[\"raw\"]".to_vec(),
                Limits::default(),
                policy,
                None,
            )
            .unwrap();
        let e = h.get().unwrap_err();
        assert_eq!((e.kind, e.message.as_str()), (ErrorKind::TaskError, "raw"));
        h.attempts().map(|a| a.count)
    };
    // None: never retried, whatever the pool's default.
    assert_eq!(run(None), None);
    assert_eq!(run(Some(quick(1))), Some(2));
    // apply_raw follows the pool's default.
    let h = pool
        .apply_raw(
            target,
            Codec::Json,
            b"[\"raw\"]".to_vec(),
            Limits::default(),
        )
        .unwrap();
    assert!(h.get().is_err());
    assert_eq!(h.attempts().map(|a| a.count), Some(3));
}
