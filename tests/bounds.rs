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
