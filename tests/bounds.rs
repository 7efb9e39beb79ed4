//! Issue 22, item 1 and item 7: every duration, size and count from outside
//! is range-checked where it enters (C1), library waits take
//! `Duration::MAX` as "no timeout" (C12), and a pool whose supervisor
//! thread died says so on every call and for every pending job (the
//! defence in depth of C1).

mod common;

use std::time::Duration;

use billiard_host::{ErrorKind, Pool, PoolBuilder, PoolError};

fn builder(workers: usize) -> PoolBuilder {
    Pool::builder()
        .workers(workers)
        .worker_exe(common::bin())
        .plugin(common::plugin("math"))
        .plugin(common::plugin("hostile"))
}

/// The message every error and outcome of a pool killed by `msg` carries.
fn names_the_panic(text: &str, msg: &str) -> bool {
    text.contains("supervisor thread panicked") && text.contains(msg)
}

#[test]
fn c1_a_dead_supervisor_is_named_by_check_alive_every_call_and_every_pending_job() {
    let pool = builder(1).build().unwrap();
    assert!(pool.check_alive().is_ok());
    assert_eq!(pool.apply::<_, u64>("math", "square", (3u64,)).unwrap(), 9);
    // One job in flight (or about to be), one queued behind it, a map of
    // three: all pending when the supervisor dies.
    let running = pool
        .apply_async::<_, u64>("hostile", "nap", (60_000u64,))
        .unwrap();
    let queued = pool
        .apply_async::<_, u64>("math", "square", (4u64,))
        .unwrap();
    let map = pool
        .map_async::<_, u64>("hostile", "nap", [60_000u64, 1, 2], 1)
        .unwrap();
    pool.__test_panic_supervisor("c1 probe 7731").unwrap();

    for (what, outcome) in [("running", running.get()), ("queued", queued.get())] {
        let e = outcome.expect_err(what);
        assert_eq!(e.kind, ErrorKind::Terminated, "{what}: {e}");
        assert!(names_the_panic(&e.message, "c1 probe 7731"), "{what}: {e}");
        assert!(
            !e.message.contains("dropped when the pool shut down"),
            "{e}"
        );
    }
    let e = map.get().unwrap_err();
    assert!(names_the_panic(&e.message, "c1 probe 7731"), "map: {e}");

    // The pool is dead and says why, on every call, with the message.
    match pool.check_alive() {
        Err(PoolError::SupervisorPanicked(msg)) => assert_eq!(msg, "c1 probe 7731"),
        other => panic!("check_alive after the panic: {other:?}"),
    }
    let e = pool.apply::<_, u64>("math", "square", (5u64,)).unwrap_err();
    assert!(names_the_panic(&e.message, "c1 probe 7731"), "apply: {e}");
    let e = pool.stats().unwrap_err();
    assert!(names_the_panic(&e.message, "c1 probe 7731"), "stats: {e}");
    let e = pool.restart().unwrap_err();
    assert!(names_the_panic(&e.message, "c1 probe 7731"), "restart: {e}");
    let e = pool
        .map::<_, u64>("math", "square", [1u64, 2, 3], 2)
        .unwrap_err();
    assert!(names_the_panic(&e.message, "c1 probe 7731"), "map: {e}");
    match pool.join() {
        Err(e @ PoolError::SupervisorPanicked(_)) => {
            assert!(names_the_panic(&e.to_string(), "c1 probe 7731"), "{e}")
        }
        other => panic!("join after the panic: {other:?}"),
    }
}

#[test]
fn c1_check_alive_is_ok_while_running_and_draining_and_gone_after() {
    let pool = builder(1).build().unwrap();
    let slow = pool
        .apply_async::<_, u64>("hostile", "nap", (300u64,))
        .unwrap();
    pool.close();
    // Closed but draining: the supervisor still runs.
    assert!(pool.check_alive().is_ok() || slow.ready());
    assert_eq!(slow.get().unwrap(), 300);
    assert!(common::eventually(Duration::from_secs(30), || matches!(
        pool.check_alive(),
        Err(PoolError::Gone)
    )));
    pool.join().unwrap();
}

#[test]
fn c1_the_builder_refuses_out_of_range_settings_naming_them() {
    use billiard_host::bounds::MAX_DURATION;
    let over = MAX_DURATION + Duration::from_secs(1);
    let cases: Vec<(&str, PoolBuilder)> = vec![
        ("time_limit", builder(1).time_limit(Duration::MAX)),
        ("time_limit", builder(1).time_limit(over)),
        ("time_limit", builder(1).time_limit(Duration::ZERO)),
        ("soft_time_limit", builder(1).soft_time_limit(Duration::MAX)),
        ("load_timeout", builder(1).load_timeout(Duration::MAX)),
        ("load_timeout", builder(1).load_timeout(Duration::ZERO)),
        ("window", builder(1).restart_limit(3, Duration::MAX)),
        ("max_frame", builder(1).max_frame(0)),
        ("max_frame", builder(1).max_frame(usize::MAX)),
        ("max_tasks_per_child", builder(1).max_tasks_per_child(0)),
        ("max_memory_per_child", builder(1).max_memory_per_child(0)),
        ("address_space_limit", builder(1).address_space_limit(0)),
    ];
    for (setting, b) in cases {
        match b.build() {
            Err(PoolError::Config(msg)) => assert!(msg.contains(setting), "{setting}: {msg}"),
            Err(e) => panic!("{setting}: not a configuration error: {e}"),
            Ok(_) => panic!("{setting}: accepted"),
        }
    }
    // The bound itself is accepted, and works.
    let pool = builder(1)
        .time_limit(MAX_DURATION)
        .soft_time_limit(MAX_DURATION)
        .build()
        .unwrap();
    assert_eq!(pool.apply::<_, u64>("math", "square", (3u64,)).unwrap(), 9);
    pool.join().unwrap();
}

#[test]
fn c1_a_job_limit_out_of_range_ends_that_job_only() {
    use billiard_host::{JobOptions, RawJob};
    let pool = builder(2).build().unwrap();
    for (what, opts) in [
        (
            "time_limit",
            JobOptions::default().time_limit(Duration::MAX),
        ),
        (
            "soft_time_limit",
            JobOptions::default().soft_time_limit(Duration::MAX),
        ),
    ] {
        let e = pool
            .apply_async_with::<_, u64>("math", "square", (3u64,), opts)
            .unwrap()
            .get()
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadArgs, "{what}: {e}");
        assert!(
            e.message.contains(what) && e.message.contains("10 years"),
            "{e}"
        );
    }
    // In a stream, among good jobs, with chunks: only that job fails.
    let target = pool.task_ref("math", "square").unwrap();
    let job = |x: u64, limit: Option<Duration>| {
        let mut j = RawJob::new(
            target,
            billiard_host::Codec::Json,
            format!("[{x}]").into_bytes(),
        );
        j.limits.hard = limit;
        Ok(j)
    };
    let jobs = vec![
        job(1, None),
        job(2, Some(Duration::MAX)),
        job(3, Some(Duration::from_secs(5))),
        job(4, None),
    ];
    let mut got: Vec<(u64, Result<Vec<u8>, billiard_host::TaskError>)> =
        pool.imap_raw(jobs.into_iter(), true, 2).collect();
    got.sort_by_key(|(i, _)| *i);
    assert_eq!(got[0].1.as_deref().unwrap(), b"1");
    let e = got[1].1.as_ref().unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadArgs, "{e}");
    assert_eq!(got[2].1.as_deref().unwrap(), b"9");
    assert_eq!(got[3].1.as_deref().unwrap(), b"16");
    // The pool lives on.
    assert!(pool.check_alive().is_ok());
    assert_eq!(pool.apply::<_, u64>("math", "square", (5u64,)).unwrap(), 25);
    // A huge chunksize is taken as the most a chunk holds, not a panic.
    let ys: Vec<u64> = pool.map("math", "square", 0..10u64, usize::MAX).unwrap();
    assert_eq!(ys[9], 81);
    let ys: Vec<u64> = pool
        .map_async("math", "square", 0..10u64, usize::MAX)
        .unwrap()
        .get()
        .unwrap();
    assert_eq!(ys[3], 9);
    pool.join().unwrap();
}

#[test]
fn c12_duration_max_as_a_wait_timeout_means_no_timeout() {
    let pool = builder(1).build().unwrap();
    let r = pool
        .apply_async::<_, u64>("hostile", "nap", (50u64,))
        .unwrap();
    assert!(r.wait_timeout(Duration::MAX));
    assert_eq!(r.get_timeout(Duration::MAX).unwrap().unwrap(), 50);
    let r = pool
        .apply_async::<_, u64>("math", "square", (6u64,))
        .unwrap();
    assert_eq!(r.get_timeout(Duration::MAX).unwrap().unwrap(), 36);
    assert!(r.raw().wait_timeout(Duration::MAX));
    assert!(r.raw().get_timeout(Duration::MAX).is_some());
    pool.join().unwrap();

    let mut p = billiard_host::Process::new(common::plugin("math"), "square", (7u64,))
        .worker_exe(common::bin())
        .time_limit(Duration::from_secs(3600));
    let out = p.join_timeout(Duration::MAX).expect("the call ended");
    assert!(out.is_ok(), "{out:?}");
    // Process limits out of range end the call bad_args; a load timeout out
    // of range is refused at start.
    let mut p = billiard_host::Process::new(common::plugin("math"), "square", (7u64,))
        .worker_exe(common::bin())
        .time_limit(Duration::MAX);
    let e = p.join_timeout(Duration::MAX).unwrap().unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadArgs, "{e}");
    let mut p = billiard_host::Process::new(common::plugin("math"), "square", (7u64,))
        .worker_exe(common::bin())
        .load_timeout(Duration::MAX);
    let e = p.start().unwrap_err();
    assert!(e.message.contains("load_timeout"), "{e}");
}
