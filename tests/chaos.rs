//! Chaos soak: many jobs, a few percent of them faulty on purpose, with
//! jobs cancelled and the pool grown, shrunk and restarted while it runs.
//! It proves the failure-semantics contract at volume:
//!
//! - every job gets exactly one outcome, of the kind its fault implies
//!   (normal jobs: the right value, or `terminated` when the test
//!   terminated them; a restart, grow or shrink never fails a job);
//! - no job is lost or duplicated (async handles and callbacks on one side,
//!   an unordered `imap_raw` stream with indices on the other, and the
//!   pool's own counters);
//! - nothing leaks: no zombie, orphaned worker or zygote afterwards, host
//!   file descriptors and resident memory flat.
//!
//! The short run (2,000 jobs) is part of the normal suite. The long soak:
//!
//! ```sh
//! CHAOS_JOBS=100000 cargo test --release -p billiard-host --test chaos -- --ignored --nocapture
//! ```
//!
//! `CHAOS_SEED=N` replays a run (every run prints its seed);
//! `CHAOS_REPORT=FILE` writes the figures as JSON (see docs/reliability.md).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use billiard_host::{
    AsyncResult, Codec, ErrorKind, Event, JobOptions, Limits, Outcome, Pool, RawJob, TaskError,
    TaskRef,
};

/// Pool settings of the soak.
const WORKERS: usize = 2;
const MAX_WORKERS: usize = 4;
const MEMORY_LIMIT: u64 = 48 << 20;
const LEAK_MB: u64 = 64;
const HARD_LIMIT: Duration = Duration::from_millis(100);
const SOFT_LIMIT: Duration = Duration::from_millis(30);
/// Jobs the main thread keeps in flight before it waits for the oldest.
const WINDOW: usize = 64;

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Square,
    Add,
    /// `faults.sleep_ms` for a few ms: a normal job that is often running
    /// when the test terminates it.
    Sleep,
    Segfault,
    Abort,
    Exit,
    Panic,
    TaskError,
    BadArgs,
    /// A task that spins past its per-job hard limit.
    Hang,
    /// A cooperative task stopped by its soft limit.
    Soft,
    /// Leaks past `max_memory_per_child`: the job succeeds, its worker is recycled.
    Leak,
    /// Writes garbage to every fd of its worker, its IPC socket included.
    Garbage,
    /// A task index the plugin does not have (stream jobs only).
    UnknownTask,
}

impl Kind {
    const FAULTS: [Kind; 11] = [
        Kind::Segfault,
        Kind::Abort,
        Kind::Exit,
        Kind::Panic,
        Kind::TaskError,
        Kind::BadArgs,
        Kind::Hang,
        Kind::Soft,
        Kind::Leak,
        Kind::Garbage,
        Kind::UnknownTask,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Square => "square",
            Kind::Add => "add",
            Kind::Sleep => "sleep",
            Kind::Segfault => "segfault",
            Kind::Abort => "abort",
            Kind::Exit => "exit",
            Kind::Panic => "panic",
            Kind::TaskError => "task_error",
            Kind::BadArgs => "bad_args",
            Kind::Hang => "hang",
            Kind::Soft => "soft_limit",
            Kind::Leak => "leak",
            Kind::Garbage => "garbage",
            Kind::UnknownTask => "unknown_task",
        }
    }

    fn is_fault(self) -> bool {
        !matches!(self, Kind::Square | Kind::Add | Kind::Sleep)
    }

    /// Picks a job: about 5 % faults, spread evenly over the fault kinds.
    fn pick(rng: &mut fastrand::Rng, stream: bool) -> Kind {
        let r = rng.u32(0..1000);
        if r < 50 {
            let faults = if stream {
                &Kind::FAULTS[..]
            } else {
                &Kind::FAULTS[..Kind::FAULTS.len() - 1]
            };
            faults[rng.usize(0..faults.len())]
        } else if r < 80 {
            Kind::Sleep
        } else if r < 400 {
            Kind::Add
        } else {
            Kind::Square
        }
    }
}

/// One job of the soak: what it is and what it must end with.
#[derive(Debug, Clone)]
struct Job {
    kind: Kind,
    a: u64,
    b: i64,
}

impl Job {
    fn new(kind: Kind, rng: &mut fastrand::Rng) -> Job {
        Job {
            kind,
            a: rng.u64(0..1 << 31),
            b: rng.i64(-(1 << 40)..1 << 40),
        }
    }

    /// (task, bincode arguments, JSON arguments, limits)
    fn spec(&self) -> (&'static str, &'static str, Vec<u8>, String, Limits) {
        let mut limits = Limits::default();
        let (plugin, task, args, json): (_, _, Vec<u8>, String) = match self.kind {
            Kind::Square => ("math", "square", bin(&(self.a,)), format!("[{}]", self.a)),
            Kind::Add => (
                "math",
                "add",
                bin(&(self.b, self.a as i64)),
                format!("[{}, {}]", self.b, self.a),
            ),
            Kind::Sleep => {
                let ms = 2 + self.a % 8;
                ("faults", "sleep_ms", bin(&(ms,)), format!("[{ms}]"))
            }
            Kind::Segfault => ("faults", "segfault", Vec::new(), "[]".into()),
            Kind::Abort => ("faults", "abort", Vec::new(), "[]".into()),
            Kind::Exit => ("faults", "exit", bin(&(3i32,)), "[3]".into()),
            Kind::Panic => (
                "faults",
                "panic",
                bin(&("chaos panic".to_string(),)),
                "[\"chaos panic\"]".into(),
            ),
            Kind::TaskError => (
                "faults",
                "fail",
                bin(&("chaos failure".to_string(),)),
                "[\"chaos failure\"]".into(),
            ),
            // A string where `square` wants a number.
            Kind::BadArgs => (
                "math",
                "square",
                bin(&("not a number".to_string(),)),
                "[\"not a number\"]".into(),
            ),
            Kind::Hang => {
                limits.hard = Some(HARD_LIMIT);
                ("faults", "spin_ms", bin(&(10_000u64,)), "[10000]".into())
            }
            Kind::Soft => {
                limits.soft = Some(SOFT_LIMIT);
                limits.hard = Some(Duration::from_secs(30));
                (
                    "faults",
                    "cooperative_spin",
                    bin(&(10_000u64,)),
                    "[10000]".into(),
                )
            }
            Kind::Leak => (
                "faults",
                "leak_mb",
                bin(&(LEAK_MB,)),
                format!("[{LEAK_MB}]"),
            ),
            Kind::Garbage => ("faults", "garbage_fds", Vec::new(), "[]".into()),
            Kind::UnknownTask => ("math", "", Vec::new(), "[]".into()),
        };
        (plugin, task, args, json, limits)
    }

    /// Checks an outcome against the job; `Err` says what is wrong.
    fn check(&self, outcome: &Outcome, codec: Codec, terminated: bool) -> Result<(), String> {
        let kind_of = |o: &Outcome| match o {
            Ok(_) => "ok".to_string(),
            Err(e) => e.kind.as_str().to_string(),
        };
        let value = |bytes: &[u8]| -> Result<serde_json::Value, String> {
            match codec {
                Codec::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
                Codec::Bincode => Err("bincode values are checked by type".into()),
            }
        };
        let want_kind = |k: ErrorKind, needle: &str| -> Result<(), String> {
            match outcome {
                Err(e) if e.kind == k && e.message.contains(needle) => Ok(()),
                other => Err(format!("want {k} ({needle}), got {other:?}")),
            }
        };
        if terminated {
            // terminate_job said yes: exactly one `terminated` outcome.
            return want_kind(ErrorKind::Terminated, "terminated");
        }
        match self.kind {
            Kind::Square | Kind::Add | Kind::Sleep | Kind::Leak => {
                let Ok(bytes) = outcome else {
                    return Err(format!("want ok, got {}: {outcome:?}", kind_of(outcome)));
                };
                let ok = match (self.kind, codec) {
                    (Kind::Square, Codec::Bincode) => {
                        decode::<u64>(bytes) == Some(self.a.wrapping_mul(self.a))
                    }
                    (Kind::Square, Codec::Json) => {
                        value(bytes)? == serde_json::json!(self.a.wrapping_mul(self.a))
                    }
                    (Kind::Add, Codec::Bincode) => {
                        decode::<i64>(bytes) == Some(self.b + self.a as i64)
                    }
                    (Kind::Add, Codec::Json) => {
                        value(bytes)? == serde_json::json!(self.b + self.a as i64)
                    }
                    (Kind::Sleep, Codec::Bincode) => decode::<u64>(bytes) == Some(2 + self.a % 8),
                    (Kind::Sleep, Codec::Json) => {
                        value(bytes)? == serde_json::json!(2 + self.a % 8)
                    }
                    // The worker's running total: a multiple of the leak
                    // (two leaks in one chunk share a worker).
                    (_, Codec::Bincode) => {
                        decode::<u64>(bytes).is_some_and(|v| v > 0 && v % LEAK_MB == 0)
                    }
                    (_, Codec::Json) => value(bytes)?
                        .as_u64()
                        .is_some_and(|v| v > 0 && v % LEAK_MB == 0),
                };
                if ok {
                    Ok(())
                } else {
                    Err(format!("wrong value {bytes:?}"))
                }
            }
            Kind::Segfault => want_kind(ErrorKind::WorkerLost, "SIGSEGV"),
            Kind::Abort => want_kind(ErrorKind::WorkerLost, "SIGABRT"),
            Kind::Exit => want_kind(ErrorKind::WorkerLost, "code 3"),
            Kind::Panic => want_kind(ErrorKind::Panic, "chaos panic"),
            Kind::TaskError => want_kind(ErrorKind::TaskError, "chaos failure"),
            Kind::BadArgs => want_kind(ErrorKind::BadArgs, ""),
            Kind::Hang => want_kind(ErrorKind::TimeLimit, "hard time limit"),
            Kind::Soft => want_kind(ErrorKind::SoftTimeLimit, ""),
            Kind::Garbage => want_kind(ErrorKind::WorkerLost, "malformed"),
            Kind::UnknownTask => want_kind(ErrorKind::UnknownTask, ""),
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    billiard_plugin_api::codec::decode(Codec::Bincode, bytes).ok()
}

/// An argument tuple in bincode.
fn bin<T: serde::Serialize>(args: &T) -> Vec<u8> {
    billiard_plugin_api::codec::encode(Codec::Bincode, args).expect("plain tuples encode")
}

/// The figures of one run.
#[derive(Debug, Default, serde::Serialize)]
struct Report {
    seed: u64,
    jobs: usize,
    async_jobs: usize,
    stream_jobs: usize,
    faults_injected: BTreeMap<&'static str, u64>,
    outcomes: BTreeMap<String, u64>,
    terminate_calls: u64,
    terminated_on_request: u64,
    grows: u64,
    shrinks: u64,
    restarts: u64,
    lost: u64,
    duplicated: u64,
    wrong: u64,
    workers_started: u64,
    worker_deaths: u64,
    recycled: u64,
    leaked_processes: u64,
    zombies: u64,
    fds_before: usize,
    fds_after: usize,
    rss_before_kib: u64,
    rss_mid_kib: u64,
    rss_after_kib: u64,
    seconds: f64,
    jobs_per_second: f64,
}

/// An outcome's kind as the report counts it.
fn outcome_name(o: &Outcome) -> String {
    match o {
        Ok(_) => "ok".into(),
        Err(e) => e.kind.as_str().into(),
    }
}

fn seed() -> u64 {
    match std::env::var("CHAOS_SEED") {
        Ok(s) => s.parse().expect("CHAOS_SEED is a number"),
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            t.as_nanos() as u64 ^ (std::process::id() as u64) << 32
        }
    }
}

fn jobs_from_env(default: usize) -> usize {
    std::env::var("CHAOS_JOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Short run: part of the normal suite.
#[test]
fn chaos_short() {
    soak(jobs_from_env(2_000));
}

/// The long soak (see the module docs).
#[test]
#[ignore = "long soak: CHAOS_JOBS=100000 cargo test --release -p billiard-host --test chaos -- --ignored"]
fn chaos_soak() {
    soak(jobs_from_env(100_000));
}

/// One async job in flight.
struct Pending {
    n: usize,
    job: Job,
    handle: AsyncResult<serde::de::IgnoredAny>,
    terminated: bool,
}

fn soak(total: usize) {
    let seed = seed();
    eprintln!("chaos: {total} jobs, seed {seed} (replay with CHAOS_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);
    let builder = || {
        Pool::builder()
            .workers(WORKERS)
            .worker_exe(common::bin())
            .plugin(common::plugin("math"))
            .plugin(common::plugin("faults"))
            .max_memory_per_child(MEMORY_LIMIT)
            .prefetch(2)
            .imap_window(256)
    };
    // Warm up (allocator, plugin builds, page cache) so that the figures
    // compare like with like.
    {
        let pool = builder().build().expect("the pool builds");
        let _: Vec<u64> = pool.map("math", "square", 0..500u64, 1).unwrap();
        pool.join().unwrap();
    }
    let mut report = Report {
        seed,
        jobs: total,
        fds_before: common::fd_count(),
        rss_before_kib: common::rss_kib(),
        ..Report::default()
    };
    let started = Instant::now();
    let (ev_tx, ev_rx) = crossbeam_channel::unbounded();
    let pool = builder().events(ev_tx).build().expect("the pool builds");
    let me = std::process::id() as i32;
    let zygotes = Mutex::new(HashSet::new());
    // Every helper process the pool started, noted as the run goes (the
    // events are drained as they come, or they would pile up in memory).
    let worker_pids = Mutex::new(Vec::new());
    let note_zygotes = || {
        zygotes.lock().unwrap().extend(common::children_of(me));
        worker_pids
            .lock()
            .unwrap()
            .extend(ev_rx.try_iter().filter_map(|e| match e {
                Event::WorkerUp { pid, .. } => Some(pid),
                _ => None,
            }));
    };
    note_zygotes();

    // A third of the jobs go through an unordered stream with indices (JSON
    // arguments, chunks of 1 to 4), the rest through apply_async (bincode).
    let stream_jobs = total / 3;
    let async_jobs = total - stream_jobs;
    report.stream_jobs = stream_jobs;
    report.async_jobs = async_jobs;
    let mut stream_rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
    let stream_plan: Vec<Job> = (0..stream_jobs)
        .map(|_| {
            let k = Kind::pick(&mut stream_rng, true);
            Job::new(k, &mut stream_rng)
        })
        .collect();
    for j in &stream_plan {
        if j.kind.is_fault() {
            *report.faults_injected.entry(j.kind.name()).or_default() += 1;
        }
    }
    let chunksize = 1 + stream_rng.usize(0..4);
    let pool_ref = &pool;
    let callbacks: Arc<Mutex<Vec<u32>>> = Arc::new(Mutex::new(vec![0; async_jobs]));
    let mut wrong: Vec<String> = Vec::new();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut target = WORKERS;
    let restart_every = (total / 4).clamp(500, 10_000);

    let stream_result = std::thread::scope(|s| {
        let plan = &stream_plan;
        let stream = s.spawn(move || {
            let targets: Vec<(Option<TaskRef>, Vec<u8>, Limits)> = plan
                .iter()
                .map(|j| {
                    let (plugin, task, _, json, limits) = j.spec();
                    let target = if j.kind == Kind::UnknownTask {
                        // A task index no plugin has, as a stale client might send.
                        Some(TaskRef::raw(0, 9_999))
                    } else {
                        pool_ref.task_ref(plugin, task).ok()
                    };
                    (target, json.into_bytes(), limits)
                })
                .collect();
            let jobs = targets.into_iter().map(|(t, args, limits)| {
                let mut job = RawJob::new(t.expect("known task"), Codec::Json, args);
                job.limits = limits;
                Ok::<_, TaskError>(job)
            });
            let mut seen = vec![0u32; plan.len()];
            let mut got: Vec<Option<Outcome>> = vec![None; plan.len()];
            for (i, o) in pool_ref.imap_raw(jobs, false, chunksize) {
                let i = i as usize;
                seen[i] += 1;
                got[i] = Some(o);
            }
            (seen, got)
        });

        // The async side, with control operations mixed in.
        let mut pending: std::collections::VecDeque<Pending> = Default::default();
        let mut mid_measured = false;
        for n in 0..async_jobs {
            let kind = Kind::pick(&mut rng, false);
            let job = Job::new(kind, &mut rng);
            if kind.is_fault() {
                *report.faults_injected.entry(kind.name()).or_default() += 1;
            }
            let (plugin, task, args, _, limits) = job.spec();
            let cbs = callbacks.clone();
            let cbs2 = callbacks.clone();
            let mut opts = JobOptions::<serde::de::IgnoredAny>::default()
                .on_success(move |_| cbs.lock().unwrap()[n] += 1)
                .on_error(move |_| cbs2.lock().unwrap()[n] += 1);
            opts.limits = limits;
            let handle = pool
                .apply_async_with(plugin, task, RawArgs(args), opts)
                .expect("submits");
            pending.push_back(Pending {
                n,
                job,
                handle,
                terminated: false,
            });

            // Cancel a normal job now and then (often one that is running).
            if rng.u32(0..100) < 2 {
                let candidates: Vec<usize> = pending
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| !p.job.kind.is_fault() && !p.terminated)
                    .map(|(i, _)| i)
                    .collect();
                if !candidates.is_empty() {
                    let i = candidates[rng.usize(0..candidates.len())];
                    report.terminate_calls += 1;
                    if pool
                        .terminate_job(pending[i].handle.id())
                        .expect("pool alive")
                    {
                        pending[i].terminated = true;
                        report.terminated_on_request += 1;
                    }
                }
            }
            if rng.u32(0..1000) < 8 {
                if rng.bool() && target < MAX_WORKERS {
                    pool.grow(1).unwrap();
                    target += 1;
                    report.grows += 1;
                } else if target > 1 {
                    pool.shrink(1).unwrap();
                    target -= 1;
                    report.shrinks += 1;
                }
            }
            if n > 0 && n % restart_every == 0 {
                pool.restart().unwrap();
                report.restarts += 1;
                note_zygotes();
            }
            // Keep a bounded window in flight: settle the oldest.
            while pending.len() > WINDOW {
                let p = pending.pop_front().unwrap();
                settle(p, &mut outcomes, &mut wrong);
            }
            if !mid_measured && n >= async_jobs / 5 {
                mid_measured = true;
                report.rss_mid_kib = common::rss_kib();
            }
            if n % 256 == 0 {
                note_zygotes();
            }
        }
        for p in pending.drain(..) {
            settle(p, &mut outcomes, &mut wrong);
        }
        stream.join().expect("the stream thread")
    });

    // The stream side: each index exactly once, with the right outcome.
    let (seen, got) = stream_result;
    for (i, (count, outcome)) in seen.iter().zip(&got).enumerate() {
        match count {
            0 => {
                report.lost += 1;
                wrong.push(format!(
                    "stream job {i} ({:?}) got no outcome",
                    stream_plan[i]
                ));
            }
            1 => {}
            c => {
                report.duplicated += (*c - 1) as u64;
                wrong.push(format!("stream job {i} got {c} outcomes"));
            }
        }
        if let Some(o) = outcome {
            *outcomes.entry(outcome_name(o)).or_default() += 1;
            if let Err(why) = stream_plan[i].check(o, Codec::Json, false) {
                wrong.push(format!("stream job {i} ({:?}): {why}", stream_plan[i]));
            }
        }
    }
    drop((seen, got));
    // Callbacks: each async job's exactly once (they run on the pool's
    // callback thread; join waits for it).
    let stats = pool.stats().expect("stats");
    note_zygotes();
    pool.join().expect("the pool joins");
    for (n, c) in callbacks.lock().unwrap().iter().enumerate() {
        match c {
            1 => {}
            0 => {
                report.lost += 1;
                wrong.push(format!("async job {n}: its callback never ran"));
            }
            c => {
                report.duplicated += (*c - 1) as u64;
                wrong.push(format!("async job {n}: callback ran {c} times"));
            }
        }
    }
    // The pool's own books agree: one outcome per submitted job.
    assert_eq!(stats.submitted, total as u64, "{stats:?}");
    if stats.completed() != stats.submitted {
        wrong.push(format!(
            "the pool counted {} outcomes for {} jobs: {stats:?}",
            stats.completed(),
            stats.submitted
        ));
    }
    report.workers_started = stats.workers_started;
    report.worker_deaths = stats.worker_deaths;
    report.recycled = stats.recycled;
    report.outcomes = outcomes;
    report.wrong = wrong.len() as u64;
    report.seconds = started.elapsed().as_secs_f64();
    report.jobs_per_second = total as f64 / report.seconds;

    // Nothing survives the pool: no worker, no zygote, no zombie.
    note_zygotes();
    let worker_pids = worker_pids.into_inner().unwrap();
    let zygotes: Vec<i32> = zygotes.into_inner().unwrap().into_iter().collect();
    let gone = common::eventually(Duration::from_secs(2), || {
        worker_pids
            .iter()
            .chain(&zygotes)
            .all(|&p| !common::running(p))
            && common::children_of(me).is_empty()
    });
    if !gone {
        let left: Vec<i32> = worker_pids
            .iter()
            .chain(&zygotes)
            .copied()
            .filter(|&p| common::running(p))
            .collect();
        report.leaked_processes = left.len() as u64;
        let children = common::children_of(me);
        report.zombies = children
            .iter()
            .filter(|&&p| common::proc_stat(p).is_some_and(|s| s.0 == 'Z'))
            .count() as u64;
        wrong.push(format!(
            "processes left after join: {left:?}; children of the host: {children:?}"
        ));
    }
    // File descriptors and memory: back where they started.
    common::eventually(Duration::from_secs(2), || {
        common::fd_count() <= report.fds_before
    });
    report.fds_after = common::fd_count();
    report.rss_after_kib = common::rss_kib();

    eprintln!(
        "chaos report:\n{}",
        serde_json::to_string_pretty(&report).unwrap()
    );
    if let Ok(path) = std::env::var("CHAOS_REPORT") {
        std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap())
            .unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
    }
    assert!(
        wrong.is_empty(),
        "seed {seed}: {} problems, the first ones:\n{}",
        wrong.len(),
        wrong
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(report.lost + report.duplicated, 0);
    assert!(
        report.fds_after <= report.fds_before + 2,
        "fds grew from {} to {}",
        report.fds_before,
        report.fds_after
    );
    // The host holds no per-job or per-worker memory after the run. The
    // allocator keeps some of what it had; a leak of a few hundred bytes
    // per job or a few KiB per worker would show.
    let grown = report.rss_after_kib.saturating_sub(report.rss_before_kib);
    let allowed = 24 * 1024 + total as u64 / 20;
    assert!(
        grown <= allowed,
        "resident memory grew by {grown} KiB (allowed {allowed} KiB): {report:?}"
    );
}

/// Waits for one async job and checks its outcome.
fn settle(p: Pending, outcomes: &mut BTreeMap<String, u64>, wrong: &mut Vec<String>) {
    let outcome = p.handle.raw().get();
    *outcomes.entry(outcome_name(&outcome)).or_default() += 1;
    if let Err(why) = p.job.check(&outcome, Codec::Bincode, p.terminated) {
        wrong.push(format!(
            "async job {} (id {}, {:?}, terminated {}): {why}",
            p.n,
            p.handle.id(),
            p.job,
            p.terminated
        ));
    }
}

/// Already-encoded bincode arguments passed through `apply_async_with`:
/// serializes as the bytes themselves (a tuple's encoding is the
/// concatenation of its fields').
struct RawArgs(Vec<u8>);

impl serde::Serialize for RawArgs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(self.0.len())?;
        for b in &self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}
