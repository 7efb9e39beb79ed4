//! Chunks run item by item in one RUN frame (issue 24 item 2): a crash
//! inside a chunk costs the item that ran, the items that finished keep
//! their results and the ones not started are resent once; time limits
//! reach the item running. Each item counts its runs in a file
//! (`hostile.mark_item`).

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use billiard_host::{Codec, ErrorKind, Event, Outcome, Pool, PoolBuilder, RawJob};

fn builder() -> PoolBuilder {
    common::pool_builder(1, &["hostile"])
}

/// Runs `n` items of `mark_item` (`how` at item `at`) in chunks of
/// `chunksize`; returns the outcomes by index.
fn run_items(
    pool: &Pool,
    marks: &Path,
    n: u64,
    at: u64,
    how: &str,
    chunksize: usize,
) -> Vec<Outcome> {
    let task = pool.task_ref("hostile", "mark_item").expect("mark_item");
    let path = marks.to_str().expect("utf-8 path").to_string();
    let jobs = (0..n).map(move |i| {
        let args = serde_json::to_vec(&(path.as_str(), i, at, how)).expect("json");
        Ok::<_, billiard_host::TaskError>(RawJob::new(task, Codec::Json, args))
    });
    let got: Vec<(u64, Outcome)> = pool.imap_raw(jobs, true, chunksize).collect();
    assert_eq!(got.len() as u64, n);
    for (k, (i, _)) in got.iter().enumerate() {
        assert_eq!(*i, k as u64);
    }
    got.into_iter().map(|(_, o)| o).collect()
}

/// How many times each item ran, from the marks file.
fn runs(marks: &Path) -> BTreeMap<u64, usize> {
    let text = std::fs::read_to_string(marks).unwrap_or_default();
    let mut runs = BTreeMap::new();
    for line in text.lines() {
        *runs
            .entry(line.parse::<u64>().expect("a mark"))
            .or_default() += 1;
    }
    runs
}

fn assert_each_ran_once(marks: &Path, n: u64) {
    let runs = runs(marks);
    assert_eq!(runs.len() as u64, n, "items that ran: {runs:?}");
    for (i, r) in &runs {
        assert_eq!(*r, 1, "item {i} ran {r} times");
    }
}

#[test]
fn a_segfault_at_item_500_of_a_chunk_of_1000_costs_that_item_alone() {
    let dir = common::scratch("chunks_segv");
    let marks = dir.join("runs");
    let (tx, rx) = crossbeam_channel::unbounded();
    let pool = builder().events(tx).build().expect("pool");
    let got = run_items(&pool, &marks, 1000, 499, "segv", 1000);
    for (i, o) in got.iter().enumerate() {
        if i == 499 {
            let e = o.as_ref().expect_err("the crashing item");
            assert_eq!(e.kind, ErrorKind::WorkerLost, "{e:?}");
            assert!(e.message.contains("job 500;"), "{}", e.message);
        } else {
            let v: u64 = serde_json::from_slice(o.as_ref().expect("ok")).expect("a number");
            assert_eq!(v, i as u64);
        }
    }
    assert_each_ran_once(&marks, 1000);
    let stats = pool.stats().expect("stats");
    assert_eq!(stats.succeeded, 999, "{stats:?}");
    assert_eq!(stats.worker_deaths, 1, "{stats:?}");
    pool.join().expect("join");
    // The chunk went out whole, and the 500 items after the crash went out
    // again as one smaller chunk.
    let chunks: Vec<u32> = rx
        .try_iter()
        .filter_map(|e| match e {
            Event::JobStarted { count, .. } => Some(count),
            _ => None,
        })
        .collect();
    assert_eq!(chunks, [1000, 500]);
}

#[test]
fn a_hung_item_of_a_chunk_gets_the_hard_time_limit_alone() {
    let dir = common::scratch("chunks_hard");
    let marks = dir.join("runs");
    let pool = builder()
        .time_limit(Duration::from_secs(1))
        .build()
        .expect("pool");
    let got = run_items(&pool, &marks, 40, 17, "hang", 40);
    for (i, o) in got.iter().enumerate() {
        if i == 17 {
            let e = o.as_ref().expect_err("the hung item");
            assert_eq!(e.kind, ErrorKind::TimeLimit, "{e:?}");
            assert!(e.message.contains("job 18 "), "{}", e.message);
        } else {
            let v: u64 = serde_json::from_slice(o.as_ref().expect("ok")).expect("a number");
            assert_eq!(v, i as u64);
        }
    }
    assert_each_ran_once(&marks, 40);
    pool.join().expect("join");
}

#[test]
fn the_soft_time_limit_reaches_the_item_running_in_a_chunk() {
    let dir = common::scratch("chunks_soft");
    let marks = dir.join("runs");
    let pool = builder()
        .soft_time_limit(Duration::from_millis(300))
        .build()
        .expect("pool");
    let got = run_items(&pool, &marks, 30, 11, "coop", 30);
    for (i, o) in got.iter().enumerate() {
        if i == 11 {
            let e = o.as_ref().expect_err("the stopped item");
            assert_eq!(e.kind, ErrorKind::SoftTimeLimit, "{e:?}");
        } else {
            let v: u64 = serde_json::from_slice(o.as_ref().expect("ok")).expect("a number");
            assert_eq!(v, i as u64);
        }
    }
    assert_each_ran_once(&marks, 30);
    // The worker lived on: no death.
    assert_eq!(pool.stats().expect("stats").worker_deaths, 0);
    pool.join().expect("join");
}
