//! Supervision: time limits, recycling, terminating jobs, resizing,
//! rolling restarts, the restart rate limit, stats and events.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use billiard_host::{ErrorKind, Event, JobOptions, Pool, PoolBuilder, StartMethod};

fn builder(workers: usize) -> PoolBuilder {
    common::pool_builder(workers, &["math", "faults"])
}

fn pid(pool: &Pool) -> u32 {
    pool.apply("faults", "pid", ()).unwrap()
}

#[test]
fn max_tasks_per_child_recycles_workers() {
    let pool = builder(1).max_tasks_per_child(3).build().unwrap();
    let pids: Vec<u32> = (0..9).map(|_| pid(&pool)).collect();
    assert_eq!(pids.iter().collect::<HashSet<_>>().len(), 3, "{pids:?}");
    for w in pids.chunks(3) {
        assert!(w.iter().all(|p| *p == w[0]), "{pids:?}");
    }
    let stats = pool.stats().unwrap();
    assert!(stats.recycled >= 2, "{stats:?}");
    assert_eq!(stats.worker_deaths, 0, "{stats:?}");
    pool.join().unwrap();
}

/// With prefetch, a worker is never sent more jobs than its task quota
/// leaves: a job queued behind the one that uses up the quota would be
/// sent back when the worker retires, charged an attempt, and a job so
/// sent back twice would end `worker_lost` without ever running.
#[test]
fn prefetch_never_sends_a_worker_jobs_past_its_task_quota() {
    let pool = builder(2)
        .max_tasks_per_child(1)
        .prefetch(4)
        .build()
        .unwrap();
    let hs: Vec<_> = (0..40u64)
        .map(|i| pool.apply_async::<_, u64>("math", "square", (i,)).unwrap())
        .collect();
    for (i, h) in hs.iter().enumerate() {
        let i = i as u64;
        assert_eq!(h.get().unwrap(), i * i);
        assert!(
            h.attempts().is_none(),
            "job {i} was sent back: {:?}",
            h.attempts()
        );
    }
    let stats = pool.stats().unwrap();
    assert_eq!(stats.retried, 0, "{stats:?}");
    assert_eq!(stats.worker_deaths, 0, "{stats:?}");
    assert!(stats.recycled >= 39, "{stats:?}");
    pool.join().unwrap();
}

/// A worker recycled for its memory cannot be foreseen: the jobs
/// prefetched behind the job that crossed the limit never ran and go back
/// to the queue uncharged (no attempt counted against them), however often
/// that happens to the same job.
#[test]
fn jobs_prefetched_to_a_worker_recycled_for_memory_go_back_uncharged() {
    let pool = builder(1)
        .max_memory_per_child(40 << 20)
        .prefetch(4)
        .build()
        .unwrap();
    let leaks: Vec<_> = (0..3)
        .map(|_| {
            pool.apply_async::<_, u64>("faults", "leak_mb", (64u64,))
                .unwrap()
        })
        .collect();
    let sq = pool
        .apply_async::<_, u64>("math", "square", (7u64,))
        .unwrap();
    for h in &leaks {
        assert_eq!(h.get().unwrap(), 64);
    }
    assert_eq!(sq.get().unwrap(), 49);
    let stats = pool.stats().unwrap();
    assert!(stats.recycled >= 3, "{stats:?}");
    assert_eq!(stats.failed.len(), 0, "{stats:?}");
    // A recycling is no death: before, each such exit with jobs held
    // counted one and charged the first job held an attempt.
    assert_eq!(stats.worker_deaths, 0, "{stats:?}");
    pool.join().unwrap();
}

#[test]
fn memory_over_the_limit_recycles_after_the_job() {
    let pool = builder(1).max_memory_per_child(40 << 20).build().unwrap();
    let first = pid(&pool);
    // Below the limit: the worker stays.
    let leaked: u64 = pool.apply("faults", "leak_mb", (8u64,)).unwrap();
    assert_eq!(leaked, 8);
    assert_eq!(pid(&pool), first);
    // Over it: the job's result still counts, then the worker is replaced.
    let leaked: u64 = pool.apply("faults", "leak_mb", (64u64,)).unwrap();
    assert_eq!(leaked, 72);
    let second = pid(&pool);
    assert_ne!(second, first);
    let y: u64 = pool.apply("math", "square", (4u64,)).unwrap();
    assert_eq!(y, 16);
    assert_eq!(pool.stats().unwrap().recycled, 1);
    pool.join().unwrap();
}

#[test]
fn address_space_cap_ends_a_runaway_allocation_as_worker_lost() {
    let pool = builder(1).address_space_limit(1 << 30).build().unwrap();
    let e = pool
        .apply::<_, u64>("faults", "leak_mb", (4096u64,))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::WorkerLost, "{e}");
    assert!(e.message.contains("address-space cap"), "{e}");
    let y: u64 = pool.apply("math", "square", (5u64,)).unwrap();
    assert_eq!(y, 25);
    pool.join().unwrap();
}

#[test]
fn hard_time_limit_kills_the_worker_and_its_grandchildren() {
    let (tx, rx) = crossbeam_channel::unbounded();
    let pool = builder(2)
        .time_limit(Duration::from_millis(300))
        .events(tx)
        .build()
        .unwrap();
    let e = pool
        .apply::<_, u64>("faults", "spin_ms", (20_000u64,))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::TimeLimit, "{e}");
    assert!(e.message.contains("300ms"), "{e}");
    // A task that started a grandchild: the whole process group dies.
    let e = pool
        .apply::<_, u32>("faults", "spawn_sleeper", (60u64, 20_000u64))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::TimeLimit, "{e}");
    let killed: Vec<i32> = rx
        .try_iter()
        .filter_map(|ev| match ev {
            Event::WorkerDown { pid, .. } => Some(pid),
            _ => None,
        })
        .collect();
    assert_eq!(killed.len(), 2, "{killed:?}");
    // What the outcome promises is that the group was *killed* before it
    // was reported: the supervisor SIGKILLs the group when the limit
    // passes, and the zygote again when it reaps the worker, before its
    // exit report, which is what ends the job. Dying is the kernel's part
    // and finishes a moment later: a killed `sleep` still waiting for a
    // CPU to run its exit (state R, PF_EXITING, SIGKILL in ShdPnd) is
    // listed with its group until then, so checking the group for
    // emptiness right here failed about 1 run in 10 on a busy machine.
    // So: every member left must already be dying now (a member the kills
    // missed would not be), and the group must then empty; the bound only
    // covers scheduling delay, as no kill is still due to the group.
    for pgid in killed {
        let left = common::group_members(pgid);
        let missed: Vec<i32> = left.iter().copied().filter(|&p| !dying(p)).collect();
        assert_eq!(
            missed,
            Vec::<i32>::new(),
            "process group {pgid}: not killed before the job's outcome"
        );
        let gone = common::eventually(Duration::from_secs(10), || {
            common::group_members(pgid).is_empty()
        });
        assert!(
            gone,
            "process group {pgid} survived: {:?}",
            common::group_members(pgid)
        );
    }
    // Jobs under the limit are untouched and the pool is intact.
    let got: Vec<u64> = pool.map("math", "square", 0..20u64, 1).unwrap();
    assert_eq!(got[19], 361);
    pool.join().unwrap();
}

/// True if `pid` is gone, a zombie, or on its way out: SIGKILL pending
/// (a kill(2) or killpg(2) queues it on the process's shared queue,
/// `ShdPnd`, where it stays while the process exits) or the process
/// already exiting (`PF_EXITING` in /proc/PID/stat's flags). Read in that
/// order, a killed process shows one or the other until it is a zombie.
fn dying(pid: i32) -> bool {
    const SIGKILL_BIT: u64 = 1 << (9 - 1);
    const PF_EXITING: u64 = 0x4;
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let pending = status
        .lines()
        .filter_map(|l| {
            let v = l
                .strip_prefix("SigPnd:")
                .or_else(|| l.strip_prefix("ShdPnd:"))?;
            u64::from_str_radix(v.trim(), 16).ok()
        })
        .any(|mask| mask & SIGKILL_BIT != 0);
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // After the command name: state ppid pgrp session tty tpgid flags.
    let (_, rest) = stat.rsplit_once(')').unwrap_or_default();
    let mut f = rest.split_whitespace();
    let state = f.next().and_then(|s| s.chars().next());
    let flags: u64 = f.nth(5).and_then(|v| v.parse().ok()).unwrap_or(0);
    pending || flags & PF_EXITING != 0 || matches!(state, Some('Z' | 'X'))
}

/// A job's time limits count from its dispatch to a worker that is up: a
/// worker's start-up (a slow initializer, exec and plugin load under
/// `spawn`, a busy machine) is not the job's. Was: jobs were sent to a
/// worker before its READY, so its start-up ran on the first job's clock
/// and a job whose task never ran ended `time_limit`; under load that
/// happened to the `map` of the test above, whose jobs went to a
/// replacement worker still starting.
#[test]
fn a_workers_slow_start_never_counts_against_a_jobs_time_limits() {
    for method in [StartMethod::Forkserver, StartMethod::Spawn] {
        let pool = builder(1)
            .start_method(method)
            .initializer("faults", "sleep_ms", "[1000]")
            .soft_time_limit(Duration::from_millis(200))
            .time_limit(Duration::from_millis(300))
            .prefetch(2)
            .build()
            .unwrap();
        let got: Vec<u64> = pool.map("math", "square", 0..6u64, 1).unwrap();
        assert_eq!(got, vec![0, 1, 4, 9, 16, 25], "{method:?}");
        // The limits still end a job that runs too long...
        let e = pool
            .apply::<_, u64>("faults", "spin_ms", (20_000u64,))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::TimeLimit, "{method:?}: {e}");
        // ...and the next jobs wait for the replacement, which starts as
        // slowly, without their clocks running.
        let got: Vec<u64> = pool.map("math", "square", 0..4u64, 1).unwrap();
        assert_eq!(got, vec![0, 1, 4, 9], "{method:?}");
        let stats = pool.stats().unwrap();
        assert_eq!(stats.worker_deaths, 1, "{method:?}: {stats:?}");
        pool.join().unwrap();
    }
}

#[test]
fn soft_time_limit_stops_cooperative_tasks_and_keeps_the_worker() {
    let pool = builder(1)
        .soft_time_limit(Duration::from_millis(200))
        .build()
        .unwrap();
    let before = pid(&pool);
    for task in [
        "cooperative_spin",
        "cooperative_spin_result",
        "cooperative_sleep",
    ] {
        let e = pool
            .apply::<_, u64>("faults", task, (20_000u64,))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::SoftTimeLimit, "{task}: {e}");
    }
    assert_eq!(pid(&pool), before, "the worker survives a soft limit");
    // The stop flag does not leak into the next job.
    let ms: u64 = pool.apply("faults", "cooperative_spin", (50u64,)).unwrap();
    assert_eq!(ms, 50);
    pool.join().unwrap();
}

#[test]
fn per_job_limits_override_the_pool() {
    let pool = builder(1).build().unwrap();
    let h = pool
        .apply_async_with::<_, u64>(
            "faults",
            "spin_ms",
            (20_000u64,),
            JobOptions::default().time_limit(Duration::from_millis(150)),
        )
        .unwrap();
    assert_eq!(h.get().unwrap_err().kind, ErrorKind::TimeLimit);
    let h = pool
        .apply_async_with::<_, u64>(
            "faults",
            "cooperative_spin",
            (20_000u64,),
            JobOptions::default()
                .soft_time_limit(Duration::from_millis(100))
                .time_limit(Duration::from_secs(10)),
        )
        .unwrap();
    assert_eq!(h.get().unwrap_err().kind, ErrorKind::SoftTimeLimit);
    // Without a limit the same task runs to completion.
    let ms: u64 = pool.apply("faults", "spin_ms", (30u64,)).unwrap();
    assert_eq!(ms, 30);
    pool.join().unwrap();
}

#[test]
fn terminate_a_queued_and_a_running_job() {
    let pool = builder(1).build().unwrap();
    let running = pool
        .apply_async::<_, u64>("faults", "sleep_ms", (30_000u64,))
        .unwrap();
    let queued = pool
        .apply_async::<_, u64>("math", "square", (3u64,))
        .unwrap();
    let after = pool
        .apply_async::<_, u64>("math", "square", (4u64,))
        .unwrap();
    assert!(pool.terminate_job(queued.id()).unwrap());
    let e = queued.get().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Terminated);
    assert!(e.message.contains("before it started"), "{e}");
    assert!(!after.ready());
    assert!(pool.terminate_job(running.id()).unwrap());
    assert_eq!(running.get().unwrap_err().kind, ErrorKind::Terminated);
    // Exactly one outcome each; the pool carries on with a new worker.
    assert_eq!(after.get().unwrap(), 16);
    assert!(
        !pool.terminate_job(after.id()).unwrap(),
        "a finished job is not terminated"
    );
    let stats = pool.stats().unwrap();
    assert_eq!(
        stats.failed.get(&ErrorKind::Terminated),
        Some(&2),
        "{stats:?}"
    );
    pool.join().unwrap();
}

#[test]
fn grow_and_shrink_while_busy_never_kill_a_busy_worker() {
    let (tx, rx) = crossbeam_channel::unbounded();
    let pool = builder(1).events(tx).build().unwrap();
    let ups = |n: usize| {
        for _ in 0..n {
            loop {
                match rx.recv_timeout(Duration::from_secs(10)).expect("event") {
                    Event::WorkerUp { .. } => break,
                    _ => continue,
                }
            }
        }
    };
    ups(1);
    let busy: Vec<_> = (0..3)
        .map(|_| {
            pool.apply_async::<_, u64>("faults", "sleep_ms", (400u64,))
                .unwrap()
        })
        .collect();
    pool.grow(2).unwrap();
    ups(2);
    assert_eq!(pool.stats().unwrap().target_workers, 3);
    pool.shrink(2).unwrap();
    for h in &busy {
        assert_eq!(h.get().unwrap(), 400, "a busy worker was killed");
    }
    let mut downs = 0;
    while downs < 2 {
        if let Event::WorkerDown { reason, .. } =
            rx.recv_timeout(Duration::from_secs(10)).expect("event")
        {
            assert!(reason.contains("code 0"), "{reason}");
            downs += 1;
        }
    }
    let stats = pool.stats().unwrap();
    assert_eq!(
        (stats.workers, stats.target_workers, stats.worker_deaths),
        (1, 1, 0),
        "{stats:?}"
    );
    let y: u64 = pool.apply("math", "square", (6u64,)).unwrap();
    assert_eq!(y, 36);
    pool.join().unwrap();
}

#[test]
fn restart_picks_up_a_rebuilt_plugin() {
    let dir = std::env::temp_dir().join(format!("billiard-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("libreload.so");
    // Replace the file the way a build does: write elsewhere, rename over.
    let install = |from: &str| {
        let tmp = dir.join("incoming.so");
        std::fs::copy(common::plugin(from), &tmp).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    install("reload-a");
    let pool = Pool::builder()
        .workers(2)
        .worker_exe(common::bin())
        .plugin(&path)
        .build()
        .unwrap();
    let v: String = pool.apply("reload", "version", ()).unwrap();
    assert_eq!(v, "1.0.0");
    assert_eq!(pool.plugins()[0].version, "1.0.0");
    // A job in flight during the restart finishes on its old worker.
    install("reload-b");
    pool.restart().unwrap();
    let later: Vec<String> = (0..10)
        .map(|_| pool.apply::<_, String>("reload", "version", ()).unwrap())
        .collect();
    assert!(later.iter().all(|v| v == "2.0.0"), "{later:?}");
    assert_eq!(pool.stats().unwrap().restarts, 1);
    pool.join().unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn restart_keeps_jobs_in_flight() {
    let pool = builder(2).build().unwrap();
    let hs: Vec<_> = (0..6u64)
        .map(|i| {
            pool.apply_async::<_, u64>("faults", "sleep_ms", (100 + i,))
                .unwrap()
        })
        .collect();
    pool.restart().unwrap();
    for (i, h) in hs.iter().enumerate() {
        assert_eq!(h.get().unwrap(), 100 + i as u64);
    }
    pool.join().unwrap();
}

#[test]
fn workers_dying_at_start_trip_the_rate_limit_instead_of_a_fork_storm() {
    let pool = builder(2)
        .initializer("faults", "exit", "[7]")
        .restart_limit(5, Duration::from_secs(60))
        .build()
        .unwrap();
    let e = pool.apply::<_, u64>("math", "square", (2u64,)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::WorkerLost, "{e}");
    assert!(e.message.contains("stopped starting workers"), "{e}");
    assert!(e.message.contains("code 7"), "{e}");
    let stats = pool.stats().unwrap();
    assert!(stats.stopped_forking.is_some());
    // At most: the limit, plus the workers alive or being forked when it
    // tripped (the target, and one replacement already requested).
    assert!(stats.workers_started <= 5 + 2 + 1, "fork storm: {stats:?}");
    // Later jobs fail at once with the same clear reason.
    let e = pool.apply::<_, u64>("math", "square", (3u64,)).unwrap_err();
    assert!(e.message.contains("stopped starting workers"), "{e}");
    let again = pool.stats().unwrap();
    assert!(
        again.workers_started <= 5 + 2 + 1,
        "forking went on after the limit: {again:?}"
    );
    pool.terminate().unwrap();
}

#[test]
fn a_working_initializer_runs_in_every_worker() {
    let pool = builder(2)
        .initializer("faults", "sleep_ms", "[1]")
        .build()
        .unwrap();
    let got: Vec<u64> = pool.map("math", "square", 0..10u64, 1).unwrap();
    assert_eq!(got[9], 81);
    pool.join().unwrap();
}

#[test]
fn stats_and_events_describe_the_pool() {
    let (tx, rx) = crossbeam_channel::unbounded();
    let pool = builder(2).events(tx).build().unwrap();
    let _: Vec<u64> = pool.map("math", "square", 0..10u64, 5).unwrap();
    let _ = pool.apply::<_, u64>("faults", "fail", ("no".to_string(),));
    let _ = pool.apply::<_, u64>("faults", "segfault", ());
    let stats = pool.stats().unwrap();
    assert_eq!(stats.succeeded, 10, "{stats:?}");
    assert_eq!(stats.failed.get(&ErrorKind::TaskError), Some(&1));
    assert_eq!(stats.failed.get(&ErrorKind::WorkerLost), Some(&1));
    assert_eq!(stats.worker_deaths, 1);
    assert_eq!(stats.completed(), 12);
    assert_eq!(stats.queued + stats.running, 0);
    // The replacement for the crashed worker comes up asynchronously: wait
    // for its event (bounded), then take in everything up to the join.
    let mut events: Vec<Event> = Vec::new();
    while events
        .iter()
        .filter(|e| matches!(e, Event::WorkerUp { .. }))
        .count()
        < 3
    {
        events.push(
            rx.recv_timeout(Duration::from_secs(10))
                .expect("the replacement worker comes up"),
        );
    }
    pool.join().unwrap();
    events.extend(rx.try_iter());
    let count = |f: fn(&Event) -> bool| events.iter().filter(|e| f(e)).count();
    assert!(count(|e| matches!(e, Event::WorkerUp { .. })) >= 3);
    assert_eq!(
        count(|e| matches!(e, Event::WorkerDown { reason, .. } if reason.contains("SIGSEGV"))),
        1
    );
    assert_eq!(
        count(|e| matches!(e, Event::JobStarted { count: 5, .. })),
        2
    );
    assert_eq!(count(|e| matches!(e, Event::JobFinished { .. })), 4);
}
