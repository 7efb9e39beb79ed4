//! Large payloads through the workers' shared-memory arenas
//! (`host/src/shm.rs`): they arrive intact in every start method, alone
//! and inside chunks, across worker recycling; the arena is freed with its
//! worker (no memfd leak), stays out of `max_memory_per_child`, gives big
//! pages back when idle; a worker that trashes its arena or names a range
//! outside it costs only itself. Plus property tests of the host's checks.
//!
//! The tests of this file run one at a time (`serial`): they count the
//! arena memfds this process holds.

use crate::common;

use common::fnv1a;

use std::sync::Mutex;
use std::time::Duration;

use billiard_host::ipc::ShmRef;
use billiard_host::shm::{self, HostArena, Ring};
use billiard_host::{ErrorKind, Event, Pool, PoolBuilder, StartMethod};
use proptest::prelude::*;
use serde_bytes::ByteBuf;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn builder(workers: usize) -> PoolBuilder {
    common::pool_builder(workers, &["bytes", "hostile", "faults"])
}

/// `n` bytes that differ from one position to the next.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// The fds of this process that are arena memfds.
fn arena_fds() -> usize {
    fds_of("self")
}

fn fds_of(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|l| l.to_string_lossy().contains("billiard-arena"))
                .count()
        })
        .unwrap_or(0)
}

/// Blocks (512-byte units) allocated to the arena memfds this process holds.
fn arena_blocks() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().contains("billiard-arena"))
                })
                .filter_map(|e| std::fs::metadata(e.path()).ok())
                .map(|m| m.blocks())
                .sum()
        })
        .unwrap_or(0)
}

fn echo(pool: &Pool, data: &[u8]) -> Vec<u8> {
    pool.apply::<_, ByteBuf>("bytes", "echo", (ByteBuf::from(data.to_vec()),))
        .unwrap()
        .into_vec()
}

/// What `hostile.arena_maps` sees in its worker, called with `pad` bytes.
fn maps_seen(pool: &Pool, pad: usize) -> String {
    pool.apply::<_, String>("hostile", "arena_maps", (ByteBuf::from(vec![0u8; pad]),))
        .unwrap()
}

#[test]
fn payloads_of_every_size_cross_intact_in_every_start_method() {
    let _s = serial();
    let t = shm::DEFAULT_THRESHOLD;
    for method in [StartMethod::Forkserver, StartMethod::Spawn] {
        let pool = builder(1).start_method(method).build().unwrap();
        // Small jobs first: no arena yet.
        assert_eq!(echo(&pool, b"tiny"), b"tiny");
        assert_eq!(
            maps_seen(&pool, 16),
            "",
            "{method}: an arena for small jobs"
        );
        for (i, n) in [t - 64, t - 1, t, t + 1, 1 << 20, 3 << 20, 9 << 20, 0, 100]
            .into_iter()
            .enumerate()
        {
            let data = pattern(n, i as u8);
            assert!(echo(&pool, &data) == data, "{method}: {n} bytes");
            let sum: u64 = pool
                .apply("bytes", "checksum", (ByteBuf::from(data.clone()),))
                .unwrap();
            assert_eq!(sum, fnv1a(&data), "{method}: {n} bytes");
        }
        // The worker reads its arguments in place (in, read-only) and
        // writes its results into the out region (read-write), both shared.
        let maps = maps_seen(&pool, 1 << 20);
        assert!(
            maps.lines()
                .any(|l| l.contains("billiard-arena-in") && l.contains(" r--s ")),
            "{method}: {maps}"
        );
        assert!(
            maps.lines()
                .any(|l| l.contains("billiard-arena-out") && l.contains(" rw-s ")),
            "{method}: {maps}"
        );
        // Results from small arguments take the arena too once one exists.
        let made: ByteBuf = pool.apply("bytes", "make", (5u64 << 20, 7u8)).unwrap();
        assert!(made.len() == 5 << 20 && made.iter().all(|&b| b == 7));
        let stats = pool.stats().unwrap();
        assert_eq!(stats.worker_deaths, 0, "{method}: {stats:?}");
        assert_eq!(stats.workers_started, 1, "{method}: {stats:?}");
        pool.join().unwrap();
    }
}

#[test]
fn without_a_threshold_nothing_takes_an_arena() {
    let _s = serial();
    let pool = builder(1).shm_threshold(None).build().unwrap();
    let data = pattern(2 << 20, 3);
    assert!(echo(&pool, &data) == data);
    assert_eq!(maps_seen(&pool, 1 << 20), "");
    assert_eq!(arena_fds(), 0);
    pool.join().unwrap();
}

#[test]
fn a_result_too_big_for_the_arena_grows_the_next_one() {
    let _s = serial();
    let pool = builder(1).build().unwrap();
    // Arguments of 100 KiB: a 4 MiB arena. The results outgrow it: the
    // first goes through the socket, then the arena is replaced.
    let pad = pattern(100 << 10, 1);
    for round in 0..3u8 {
        let made: ByteBuf = pool.apply("bytes", "make", (12u64 << 20, round)).unwrap();
        assert!(made.len() == 12 << 20 && made.iter().all(|&b| b == round));
        let sum: u64 = pool
            .apply("bytes", "checksum", (ByteBuf::from(pad.clone()),))
            .unwrap();
        assert_eq!(sum, fnv1a(&pad));
    }
    assert_eq!(arena_fds(), 2, "one arena (in + out) for the one worker");
    pool.join().unwrap();
}

#[test]
fn chunks_of_large_items_go_through_the_arena() {
    let _s = serial();
    let pool = builder(2).build().unwrap();
    let items: Vec<Vec<u8>> = (0..24)
        .map(|i| pattern(40_000 + i * 977, i as u8))
        .collect();
    let bufs = || items.iter().map(|v| ByteBuf::from(v.clone()));
    let sums: Vec<u64> = pool.map("bytes", "checksum", bufs(), 4).unwrap();
    let want: Vec<u64> = items.iter().map(|v| fnv1a(v)).collect();
    assert_eq!(sums, want);
    let back: Vec<ByteBuf> = pool.map("bytes", "echo", bufs(), 5).unwrap();
    assert!(back
        .iter()
        .zip(&items)
        .all(|(a, b)| a.as_slice() == b.as_slice()));
    assert!(
        arena_fds() >= 2,
        "the chunks (160 KB and more) took an arena"
    );
    // Under a time limit a chunk goes out item by item: the same.
    let pool = builder(2)
        .time_limit(Duration::from_secs(60))
        .build()
        .unwrap();
    let back: Vec<ByteBuf> = pool.map("bytes", "echo", bufs(), 6).unwrap();
    assert!(back
        .iter()
        .zip(&items)
        .all(|(a, b)| a.as_slice() == b.as_slice()));
    pool.join().unwrap();
}

#[test]
fn arenas_are_freed_with_their_workers_and_the_pool() {
    let _s = serial();
    assert_eq!(arena_fds(), 0, "no arena before any pool");
    let (tx, rx) = crossbeam_channel::unbounded();
    let pool = builder(2)
        .max_tasks_per_child(1)
        .events(tx)
        .build()
        .unwrap();
    let data = pattern(1 << 20, 9);
    for i in 0..30 {
        assert!(echo(&pool, &data) == data, "job {i}");
    }
    let stats = pool.stats().unwrap();
    assert!(stats.recycled >= 30, "{stats:?}");
    // 30 workers had an arena; what is left is at most one (two fds) per
    // worker still alive.
    assert!(
        common::eventually(Duration::from_secs(5), || arena_fds() <= 2 * 2),
        "{} arena fds after 30 recycled workers",
        arena_fds()
    );
    // Workers hold no fd of their arena (mapped, then closed).
    let pids: Vec<i32> = rx
        .try_iter()
        .filter_map(|e| match e {
            Event::WorkerUp { pid, .. } => Some(pid),
            _ => None,
        })
        .collect();
    let _ = echo(&pool, &data);
    for pid in &pids {
        assert_eq!(
            fds_of(&pid.to_string()),
            0,
            "worker {pid} keeps an arena fd"
        );
    }
    pool.join().unwrap();
    assert_eq!(arena_fds(), 0, "arena fds left after the pool");
    // Dropping a pool with busy workers frees theirs too.
    let pool = builder(2).build().unwrap();
    let _ = echo(&pool, &data);
    let _busy = pool
        .apply_async::<_, u64>("faults", "sleep_ms", (60_000u64,))
        .unwrap();
    assert!(arena_fds() >= 2);
    drop(pool);
    assert!(common::eventually(Duration::from_secs(5), || arena_fds() == 0));
}

#[test]
fn the_arena_is_not_the_workers_memory_and_gives_big_pages_back() {
    let _s = serial();
    // Shared pages are excluded from `max_memory_per_child`: moving 40 MiB
    // payloads through a worker whose budget is 16 MiB does not recycle it
    // (through the socket the worker's read buffer would keep 40 MiB).
    let pool = builder(1).max_memory_per_child(16 << 20).build().unwrap();
    let data = pattern(40 << 20, 5);
    for i in 0..4 {
        assert!(echo(&pool, &data) == data, "round {i}");
        let n: u64 = pool
            .apply("bytes", "len", (ByteBuf::from(data.clone()),))
            .unwrap();
        assert_eq!(n, 40 << 20);
        // Idle again: what lies past the retained 8 MiB of each region
        // was given back.
        let kib = arena_blocks() / 2;
        assert!(
            kib <= 2 * (shm::RETAIN as u64 / 1024) + 64,
            "round {i}: the arena holds {kib} KiB while idle"
        );
    }
    let stats = pool.stats().unwrap();
    assert_eq!(stats.recycled, 0, "{stats:?}");
    assert_eq!(stats.workers_started, 1, "{stats:?}");
    // The worker's own memory still counts: a leak recycles it.
    let _: u64 = pool.apply("faults", "leak_mb", (32u64,)).unwrap();
    assert!(echo(&pool, &data) == data);
    let stats = pool.stats().unwrap();
    assert_eq!(stats.recycled, 1, "{stats:?}");
    pool.join().unwrap();
}

#[test]
fn a_worker_that_trashes_its_arena_costs_only_its_own_bytes() {
    let _s = serial();
    let pool = builder(2).prefetch(1).build().unwrap();
    let data = pattern(1 << 20, 2);
    for fill in [0u8, 0xff, 0xaa] {
        // Every byte of its arena (header, buffers) overwritten while its
        // task runs; the result goes back through the trashed arena.
        let got: ByteBuf = pool
            .apply(
                "hostile",
                "arena_scribble",
                (ByteBuf::from(data.clone()), fill),
            )
            .unwrap();
        assert!(got.as_slice() == data.as_slice(), "fill {fill:#x}");
        for i in 0..4 {
            assert!(echo(&pool, &data) == data, "fill {fill:#x}, job {i}");
        }
    }
    let stats = pool.stats().unwrap();
    assert_eq!(stats.worker_deaths, 0, "{stats:?}");
    pool.join().unwrap();
}

#[test]
fn a_forged_range_costs_the_worker_and_its_job_only() {
    let _s = serial();
    let pool = builder(2).build().unwrap();
    let data = pattern(1 << 20, 4);
    let cap = shm::cap_for(1 << 20) as u64;
    let cases: [(u64, u64); 5] = [
        (cap - 8, 16),
        (cap, 1),
        (u64::MAX, 1),
        (8, u64::MAX),
        (0, (1 << 30) + 1),
    ];
    for (off, len) in cases {
        let bystanders: Vec<_> = (0..3)
            .map(|i| {
                pool.apply_async::<_, ByteBuf>(
                    "bytes",
                    "echo",
                    (ByteBuf::from(pattern(1 << 20, i)),),
                )
                .unwrap()
            })
            .collect();
        let e = pool
            .apply::<_, u64>(
                "hostile",
                "forge_shm_done",
                (off, len, ByteBuf::from(vec![1u8; 1 << 20])),
            )
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::WorkerLost, "({off}, {len}): {e}");
        assert!(e.message.contains("malformed data"), "({off}, {len}): {e}");
        assert!(
            e.message.contains("shared-memory result"),
            "({off}, {len}): {e}"
        );
        for (i, b) in bystanders.into_iter().enumerate() {
            assert!(b.get().unwrap().as_slice() == pattern(1 << 20, i as u8).as_slice());
        }
        assert!(echo(&pool, &data) == data);
    }
    pool.join().unwrap();
    // A worker that was never given an arena.
    let pool = builder(1).build().unwrap();
    let e = pool
        .apply::<_, u64>(
            "hostile",
            "forge_shm_done",
            (0u64, 16u64, ByteBuf::from(vec![1u8; 8])),
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::WorkerLost, "{e}");
    assert!(e.message.contains("it has no arena"), "{e}");
    assert_eq!(echo(&pool, b"after"), b"after");
    pool.join().unwrap();
}

/// The fork start method needs a single-threaded host: the CLI is one.
#[test]
fn the_cli_moves_large_payloads_through_arenas_in_every_start_method() {
    let _s = serial();
    let dir = common::scratch("shm-cli");
    let pad: Vec<String> = (0..70_000).map(|i| (i % 251).to_string()).collect();
    let line = format!("[[{}]]", pad.join(","));
    let input = common::write_file(&dir, "in.jsonl", format!("{line}\n").as_bytes());
    for method in ["forkserver", "fork", "spawn"] {
        let out = common::host([
            "run",
            common::plugin_str("hostile").as_str(),
            "--task",
            "arena_maps",
            "--input",
            input.as_str(),
            "--workers",
            "1",
            "--start-method",
            method,
        ]);
        assert_eq!(
            common::exit_code(&out),
            0,
            "{method}: {}",
            common::stderr(&out)
        );
        let v = common::json_lines(&common::stdout(&out));
        let maps = v[0]["ok"].as_str().unwrap_or_default().to_string();
        assert!(maps.contains("billiard-arena-in"), "{method}: {v:?}");
        assert!(maps.contains("billiard-arena-out"), "{method}: {v:?}");
    }
}

// ----- the host's checks, as properties ------------------------------------

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..(1 << 17),
        Just(1u64 << 16),
        (1u64 << 16) - 64..(1 << 16) + 64,
        any::<u64>(),
        u64::MAX - 64..=u64::MAX,
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Whatever (offset, length) a worker names, the host copies a result
    /// out only if it lies inside the out region and under the limit, and
    /// never panics.
    #[test]
    fn take_accepts_exactly_the_ranges_inside_the_region(
        ranges in proptest::collection::vec((offset(), offset()), 1..16),
        max in prop_oneof![Just(usize::MAX), 0usize..(1 << 17)],
    ) {
        let _s = serial();
        let cap = 1u64 << 16;
        let mut a = HostArena::new(1 << 16, cap as usize).unwrap();
        for (off, len) in ranges {
            let fits = off.checked_add(len).is_some_and(|end| end <= cap) && len <= max as u64;
            match a.take(ShmRef { off, len }, max) {
                Ok(bytes) => {
                    prop_assert!(fits, "({off}, {len}) accepted");
                    prop_assert_eq!(bytes.len() as u64, len);
                }
                Err(_) => prop_assert!(!fits, "({off}, {len}) refused"),
            }
        }
    }

    /// The FIFO ring never hands out overlapping or out-of-bounds ranges,
    /// whatever the order of allocations and frees.
    #[test]
    fn the_ring_never_overlaps(
        ops in proptest::collection::vec((any::<bool>(), 0usize..5000), 1..200),
    ) {
        let (base, cap) = (64usize, 64 + 16 * 1024);
        let mut ring = Ring::new(base, cap);
        let mut live: std::collections::VecDeque<(u64, usize, usize)> = Default::default();
        let mut tag = 0u64;
        for (free, len) in ops {
            if free {
                if let Some((t, ..)) = live.front().copied() {
                    prop_assert!(ring.free(t));
                    live.pop_front();
                }
                continue;
            }
            tag += 1;
            if let Some(off) = ring.alloc(tag, len) {
                prop_assert!(off >= base && off + len <= cap, "{off} + {len}");
                for &(_, o, l) in &live {
                    prop_assert!(off + len.max(1) <= o || o + l.max(1) <= off, "overlap");
                }
                live.push_back((tag, off, len));
            } else if live.is_empty() {
                prop_assert!(len > cap - base, "an empty ring refused {len}");
            }
        }
    }
}
