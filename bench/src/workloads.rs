//! W1–W10 on billiard-host, through the public library API, exactly as
//! `docs/benchmarks.md` defines them (same task, N, pool size, what
//! is timed, warm-up and checks). Each workload runs in its own fresh
//! process (see `main.rs`), like pyworkloads.py runs each in a fresh interpreter.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use billiard_host::{Event, JobOptions, Pool, PoolBuilder, StartMethod, TaskError};
use serde::Serialize;
use serde_bytes::{ByteBuf, Bytes};
use serde_json::{json, Value};

use crate::record::{pctl, Record};

pub const WORKLOADS: [&str; 10] = ["W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W9", "W10"];

/// How big the workloads are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The README's N.
    Full,
    /// N/10 (like `pyworkloads.py --quick`): a smoke test.
    Quick,
    /// N/1000, at least 2: checks the plumbing only.
    Dry,
}

const W1_N: u64 = 100_000;
const W2_N: u64 = 1_000_000;
const W2_CHUNK: usize = 1000;
/// W2's chunks under a time limit (issue 24 item 2): fewer jobs, since a
/// limited chunk is split into single jobs today.
const W2_LIMIT_N: u64 = 200_000;
const W2_LIMIT: Duration = Duration::from_secs(10);
const W3_N: u64 = 2_000;
const W3_WARMUP: u64 = 100;
const W4_N: u64 = 40;
const W4_SPIN: f64 = 0.05;
const W5_N: u64 = 500;
const W5_SIZE: usize = 1 << 20;
const W6_N: u64 = 2_000;
/// W7/W10: the caller waits this long before calling it a hang.
const CRASH_WAIT: Duration = Duration::from_secs(15);
const NEXT_JOB_WAIT: Duration = Duration::from_secs(10);
const W10_SLEEP_MS: u64 = 10_000;
const W10_LIMIT: Duration = Duration::from_millis(200);

/// What every workload needs to know.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub plugin_dir: PathBuf,
    pub host_exe: PathBuf,
    /// The `billiard-host` whose `run` subcommand the CLI variants time
    /// (normally `host_exe`).
    pub cli_exe: PathBuf,
    pub start_method: StartMethod,
    /// The sandbox profile of every pool (`--sandbox`).
    pub sandbox: billiard_host::sandbox::Profile,
    pub runs: usize,
    pub mode: Mode,
    pub w6_budget: f64,
    /// `billiard-host run` exists (its `--help` exits 0).
    pub cli_available: bool,
    /// Scratch space for the CLI variants' JSONL files.
    pub tmp_dir: PathBuf,
    /// A `billiard-host run` taking longer is killed (reported as a hang).
    pub cli_timeout: Duration,
}

impl Ctx {
    /// N for this mode (pyworkloads.py's `--scale`: quick = N/10, at least `lo`).
    pub fn scale(&self, n: u64, lo: u64) -> u64 {
        match self.mode {
            Mode::Full => n,
            Mode::Quick => (n / 10).max(lo),
            Mode::Dry => (n / 1000).max(lo).max(2),
        }
    }

    pub fn plugin(&self, name: &str) -> PathBuf {
        self.plugin_dir.join(format!("libbilliard_{name}.so"))
    }

    /// A pool of `workers` loading the named plugins (`math`, `bytes`, `faults`, `stream`).
    pub fn builder(&self, workers: usize, plugins: &[&str]) -> PoolBuilder {
        let mut b = Pool::builder()
            .workers(workers)
            .start_method(self.start_method)
            .worker_exe(&self.host_exe)
            .sandbox(billiard_host::sandbox::Sandbox::profile(self.sandbox));
        for p in plugins {
            b = b.plugin(self.plugin(p));
        }
        b
    }

    fn progress(&self, what: &str) {
        eprintln!("[bench] {what}");
    }
}

/// Runs one workload and returns its result lines.
pub fn run(ctx: &Ctx, workload: &str) -> Result<Vec<Record>> {
    let recs = match workload {
        "W1" => w1(ctx),
        "W2" => w2(ctx),
        "W3" => w3(ctx),
        "W4" => w4(ctx),
        "W5" => w5(ctx),
        "W6" => w6(ctx),
        "W7" => w7(ctx),
        "W8" => w8(ctx),
        "W9" => w9(ctx),
        "W10" => w10(ctx),
        other => match crate::streaming::run(ctx, other) {
            Some(r) => r,
            None => bail!("unknown workload {other}"),
        },
    }?;
    let sm = ctx.start_method.to_string();
    Ok(recs
        .into_iter()
        .map(|r| {
            if r.extra.contains_key("start_method") {
                r
            } else {
                r.with("start_method", sm.clone())
            }
        })
        .collect())
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// The README's warm-up: one `map(square, 0..8, chunksize=1)`, checked.
fn warm(pool: &Pool) -> Result<()> {
    let out: Vec<u64> = pool.map("math", "square", 0..8u64, 1)?;
    ensure!(
        out == (0..8u64).map(|i| i * i).collect::<Vec<_>>(),
        "warm-up returned {out:?}"
    );
    Ok(())
}

/// `kind: message`, whitespace collapsed, at most 300 characters.
fn describe(e: &TaskError) -> String {
    let s = format!("{}: {}", e.kind, e.message);
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > 300 {
        s.chars().take(297).collect::<String>() + "..."
    } else {
        s
    }
}

/// The distinct outcomes of several runs; messages that differ only in
/// numbers (pids, job ids, timings) count as one.
fn merge_outcomes(outcomes: &[String]) -> String {
    let norm = |s: &str| -> String {
        let mut out = String::new();
        let mut in_num = false;
        for c in s.chars() {
            if c.is_ascii_digit() || (in_num && c == '.') {
                if !in_num {
                    out.push('N');
                }
                in_num = true;
            } else {
                in_num = false;
                out.push(c);
            }
        }
        out
    };
    let mut seen = BTreeSet::new();
    let mut kept = Vec::new();
    for o in outcomes {
        if seen.insert(norm(o)) {
            kept.push(o.as_str());
        }
    }
    kept.join(" | ")
}

fn sum_squares(n: u64) -> u64 {
    // 0^2 + ... + (n-1)^2, wrapping like the task does (exact for n <= ~2.6e6).
    (0..n).fold(0u64, |s, i| s.wrapping_add(i.wrapping_mul(i)))
}

// ---------------------------------------------------------------------- W1

fn w1(ctx: &Ctx) -> Result<Vec<Record>> {
    let n = ctx.scale(W1_N, 1);
    let mut rates = Vec::new();
    for run in 0..ctx.runs {
        ctx.progress(&format!("W1 run {}/{}", run + 1, ctx.runs));
        let pool = ctx.builder(2, &["math"]).build()?;
        warm(&pool)?;
        let t0 = Instant::now();
        let mut count = 0u64;
        let mut last = 0u64;
        for (i, r) in pool
            .imap::<u64, u64>("math", "square", 0..n, 1)?
            .enumerate()
        {
            let r = r?;
            let i = i as u64;
            ensure!(r == i * i, "W1: item {i} gave {r}");
            count += 1;
            last = r;
        }
        let dt = secs(t0);
        ensure!(
            count == n && last == (n - 1) * (n - 1),
            "W1: {count} results, last {last}"
        );
        pool.join()?;
        rates.push(n as f64 / dt);
    }
    let mut out = vec![Record::of("W1", "throughput", &rates, "tasks/s", n).with(
        "note",
        "imap(square, 0..n, chunksize=1), 2 workers; every result checked in order",
    )];
    out.push(cli_stream(ctx, "W1", n));
    out.extend(rust_beside_c(ctx, "W1", n, 1));
    Ok(out)
}

// ---------------------------------------------------------------------- W2

fn w2(ctx: &Ctx) -> Result<Vec<Record>> {
    let n = ctx.scale(W2_N, 1);
    let rates = w2_runs(ctx, n, None)?;
    let mut out = vec![Record::of("W2", "throughput", &rates, "tasks/s", n)
        .with("note", "map(square, 0..n, chunksize=1000), 2 workers")];
    out.push(cli_stream(ctx, "W2", n));
    out.extend(rust_beside_c(ctx, "W2", n, W2_CHUNK));
    // Chunks under a time limit (issue 24 item 2).
    let n = ctx.scale(W2_LIMIT_N, 1);
    let rates = w2_runs(ctx, n, Some(W2_LIMIT))?;
    out.push(
        Record::of("W2", "throughput_time_limit", &rates, "tasks/s", n).with(
            "note",
            "map(square, 0..n, chunksize=1000), 2 workers, time_limit 10s on every job",
        ),
    );
    Ok(out)
}

/// W2's runs: `map(square, 0..n, 1000)` in a pool of 2 with the time
/// limit `limit`, every result checked; the rates in tasks/s.
fn w2_runs(ctx: &Ctx, n: u64, limit: Option<Duration>) -> Result<Vec<f64>> {
    let what = if limit.is_some() {
        "W2 (time limit)"
    } else {
        "W2"
    };
    let mut rates = Vec::new();
    for run in 0..ctx.runs {
        ctx.progress(&format!("{what} run {}/{}", run + 1, ctx.runs));
        let mut builder = ctx.builder(2, &["math"]);
        if let Some(limit) = limit {
            builder = builder.time_limit(limit);
        }
        let pool = builder.build()?;
        warm(&pool)?;
        let t0 = Instant::now();
        let out: Vec<u64> = pool.map("math", "square", 0..n, W2_CHUNK)?;
        let dt = secs(t0);
        ensure!(out.len() as u64 == n, "{what}: {} results", out.len());
        ensure!(
            out[n as usize - 1] == (n - 1) * (n - 1),
            "{what}: wrong last value"
        );
        let sum = out.iter().fold(0u64, |s, &x| s.wrapping_add(x));
        ensure!(sum == sum_squares(n), "{what}: wrong sum");
        drop(out);
        pool.join()?;
        rates.push(n as f64 / dt);
    }
    Ok(rates)
}

// ---------------------------------------------------------------------- W3

fn w3(ctx: &Ctx) -> Result<Vec<Record>> {
    let n = ctx.scale(W3_N, 1);
    let warmup = ctx.scale(W3_WARMUP, 1);
    let (mut p50s, mut p99s, mut means) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..ctx.runs {
        ctx.progress(&format!("W3 run {}/{}", run + 1, ctx.runs));
        let pool = ctx.builder(1, &["math"]).build()?;
        for i in 0..warmup {
            let r: u64 = pool.apply("math", "square", (i,))?;
            ensure!(r == i * i);
        }
        let mut lat = Vec::with_capacity(n as usize);
        for i in 0..n {
            let t0 = Instant::now();
            let r: u64 = pool.apply("math", "square", (i,))?;
            lat.push(secs(t0));
            ensure!(r == i * i, "W3: apply({i}) gave {r}");
        }
        pool.join()?;
        lat.sort_by(f64::total_cmp);
        p50s.push(pctl(&lat, 50.0).unwrap_or_default() * 1e6);
        p99s.push(pctl(&lat, 99.0).unwrap_or_default() * 1e6);
        means.push(lat.iter().sum::<f64>() / lat.len() as f64 * 1e6);
    }
    let note = format!("sequential apply(square, (i,)), 1 worker, {warmup} warm-up calls");
    Ok(vec![
        Record::of("W3", "p50", &p50s, "us", n).with("note", note.clone()),
        Record::of("W3", "p99", &p99s, "us", n).with("note", note.clone()),
        Record::of("W3", "mean", &means, "us", n).with("note", note),
    ])
}

// ---------------------------------------------------------------------- W4

fn w4(ctx: &Ctx) -> Result<Vec<Record>> {
    let n = ctx.scale(W4_N, 2);
    let (mut effs, mut walls) = (Vec::new(), Vec::new());
    for run in 0..ctx.runs {
        ctx.progress(&format!("W4 run {}/{}", run + 1, ctx.runs));
        let pool = ctx.builder(2, &["math", "faults"]).build()?;
        warm(&pool)?;
        let t0 = Instant::now();
        let out: Vec<f64> = pool.map("faults", "spin", vec![W4_SPIN; n as usize], 1)?;
        let dt = secs(t0);
        ensure!(
            out.len() as u64 == n && out.iter().all(|&s| s == W4_SPIN),
            "W4: bad results"
        );
        pool.join()?;
        walls.push(dt);
        effs.push((n as f64 * W4_SPIN / 2.0) / dt);
    }
    let note = format!("{n} x faults.spin(0.05 s), 2 workers, map chunksize=1");
    Ok(vec![
        Record::of("W4", "efficiency", &effs, "ratio", n).with("note", note.clone()),
        Record::of("W4", "wall", &walls, "s", n).with("note", note),
    ])
}

// ---------------------------------------------------------------------- W5

/// 1 MiB of pseudo-random bytes (xorshift64*, seeded from the clock).
fn random_payload(len: usize) -> Vec<u8> {
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9_7f4a_7c15)
        | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}

fn w5(ctx: &Ctx) -> Result<Vec<Record>> {
    let n = ctx.scale(W5_N, 1);
    let payload = random_payload(W5_SIZE);
    let mut out = Vec::new();
    for variant in ["arg_only", "round_trip"] {
        let mut rates = Vec::new();
        for run in 0..ctx.runs {
            ctx.progress(&format!("W5 {variant} run {}/{}", run + 1, ctx.runs));
            let pool = ctx.builder(2, &["math", "bytes"]).build()?;
            warm(&pool)?;
            // The same buffer is encoded again for every task (as bincode
            // bytes: length + raw bytes, the wire form of a Vec<u8>).
            let items = std::iter::repeat_n(Bytes::new(&payload), n as usize);
            let t0 = Instant::now();
            let mut got = 0u64;
            if variant == "arg_only" {
                for r in pool.imap::<_, u64>("bytes", "len", items, 1)? {
                    got += r?;
                }
            } else {
                for r in pool.imap::<_, ByteBuf>("bytes", "echo", items, 1)? {
                    let r = r?;
                    ensure!(r.as_slice() == payload.as_slice(), "W5: echo differs");
                    got += r.len() as u64;
                }
            }
            let dt = secs(t0);
            ensure!(got == n * W5_SIZE as u64, "W5 {variant}: got {got} bytes");
            pool.join()?;
            rates.push(n as f64 * W5_SIZE as f64 / dt / 1e6);
        }
        out.push(if variant == "arg_only" {
            Record::of("W5", "arg_throughput", &rates, "MB/s", n)
                .with("variant", variant)
                .with("note", "1 MiB random arg per task (bytes.len returns its length); MB = 1e6 bytes of argument payload")
        } else {
            Record::of("W5", "roundtrip_throughput", &rates, "MB/s", n)
                .with("variant", variant)
                .with("note", "1 MiB random arg, bytes.echo returns it (every echo compared with the payload); MB/s per direction")
        });
    }
    out.extend(cli_w5(ctx, n, &payload));
    Ok(out)
}

// ---------------------------------------------------------------------- W6

fn w6(ctx: &Ctx) -> Result<Vec<Record>> {
    let n = ctx.scale(W6_N, 1);
    let (mut rates, mut dones, mut capped) = (Vec::new(), Vec::new(), false);
    for run in 0..ctx.runs {
        ctx.progress(&format!("W6 run {}/{}", run + 1, ctx.runs));
        let t0 = Instant::now();
        let pool = ctx.builder(2, &["math"]).max_tasks_per_child(1).build()?;
        let mut done = 0u64;
        let mut sum = 0u64;
        {
            let it = pool.imap_unordered::<u64, u64>("math", "square", 0..n, 1)?;
            for r in it {
                sum = sum.wrapping_add(r?);
                done += 1;
                if secs(t0) > ctx.w6_budget && done < n {
                    capped = true;
                    break;
                }
            }
        }
        let dt = secs(t0);
        if done == n {
            ensure!(sum == sum_squares(n), "W6: wrong sum");
            pool.join()?;
        } else {
            pool.terminate()?;
        }
        rates.push(done as f64 / dt);
        dones.push(done);
    }
    let mut note =
        "max_tasks_per_child=1, imap_unordered(square, 0..n, 1), 2 workers, pool creation included"
            .to_string();
    if capped {
        note += &format!(
            "; run stopped after {:.0} s budget: rate = completed/elapsed",
            ctx.w6_budget
        );
    }
    Ok(vec![Record::of("W6", "throughput", &rates, "tasks/s", n)
        .with("completed", json!(dones))
        .with("note", note)])
}

// ---------------------------------------------------------------------- W7

/// One crash: (seconds to error or None, outcome, usable, next-job seconds).
fn crash_once<A: Serialize>(
    ctx: &Ctx,
    task: &str,
    args: A,
) -> Result<(Option<f64>, String, String, Option<f64>)> {
    let pool = ctx.builder(2, &["math", "faults"]).build()?;
    warm(&pool)?;
    let t0 = Instant::now();
    let h = pool.apply_async::<_, u64>("faults", task, args)?;
    let (dt, outcome) = match h.get_timeout(CRASH_WAIT) {
        None => (
            None,
            format!("hang (no outcome after {} s)", CRASH_WAIT.as_secs()),
        ),
        Some(Ok(v)) => (Some(secs(t0)), format!("returned normally (?): {v}")),
        Some(Err(e)) => (Some(secs(t0)), describe(&e)),
    };
    let (usable, next_s) = next_job(&pool);
    pool.terminate()?;
    Ok((dt, outcome, usable, next_s))
}

/// Submits `square(7)` and waits up to 10 s: ("yes" | "no: ...", latency).
fn next_job(pool: &Pool) -> (String, Option<f64>) {
    let t1 = Instant::now();
    match pool.apply_async::<_, u64>("math", "square", (7u64,)) {
        Err(e) => (format!("no: {}", describe(&e)), None),
        Ok(h) => match h.get_timeout(NEXT_JOB_WAIT) {
            Some(Ok(49)) => ("yes".into(), Some(secs(t1))),
            Some(Ok(v)) => (format!("wrong result {v}"), None),
            Some(Err(e)) => (format!("no: {}", describe(&e)), None),
            None => ("no: no result in 10 s".into(), None),
        },
    }
}

/// Blast radius: sleep 0.5 s running, segfault, 4 queued squares; how many
/// of the 5 others fail or have no result within 15 s.
fn collateral_once(ctx: &Ctx) -> Result<(u64, Vec<String>)> {
    let pool = ctx.builder(2, &["math", "faults"]).build()?;
    warm(&pool)?;
    let deadline = Instant::now() + CRASH_WAIT;
    let sleeper = pool.apply_async::<_, u64>("faults", "sleep_ms", (500u64,))?;
    let crash = pool.apply_async::<_, u64>("faults", "segfault", ())?;
    let squares = (0..4u64)
        .map(|i| pool.apply_async::<_, u64>("math", "square", (i,)))
        .collect::<Result<Vec<_>, _>>()?;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10))
    };
    let mut failed = Vec::new();
    match sleeper.get_timeout(left()) {
        Some(Ok(500)) => {}
        Some(Ok(v)) => failed.push(format!("sleep_ms returned {v}")),
        Some(Err(e)) => failed.push(describe(&e)),
        None => failed.push("hang".into()),
    }
    for (i, h) in squares.iter().enumerate() {
        match h.get_timeout(left()) {
            Some(Ok(v)) if v == (i * i) as u64 => {}
            Some(Ok(v)) => failed.push(format!("square({i}) returned {v}")),
            Some(Err(e)) => failed.push(describe(&e)),
            None => failed.push("hang".into()),
        }
    }
    let _ = crash.get_timeout(left());
    pool.terminate()?;
    Ok((failed.len() as u64, failed))
}

fn w7(ctx: &Ctx) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    let (mut counts, mut kinds) = (Vec::new(), Vec::new());
    for run in 0..ctx.runs {
        ctx.progress(&format!("W7 collateral run {}/{}", run + 1, ctx.runs));
        let (c, f) = collateral_once(ctx)?;
        counts.push(c as f64);
        kinds.extend(f);
    }
    out.push(
        Record::of("W7", "collateral_failed_jobs", &counts, "jobs", 5)
            .with("variant", "default")
            .with(
                "outcome",
                if kinds.is_empty() { "none failed".to_string() } else { merge_outcomes(&kinds) },
            )
            .with("note", "sleep_ms(500) running + segfault + 4 queued square(); jobs of the 5 non-crashing ones that failed or got no result in 15 s"),
    );
    for (cname, task) in [("segv", "segfault"), ("exit1", "exit")] {
        let (mut times, mut outcomes, mut usables, mut next_s) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for run in 0..ctx.runs {
            ctx.progress(&format!("W7 {cname} run {}/{}", run + 1, ctx.runs));
            let (dt, outcome, usable, ns) = if task == "exit" {
                crash_once(ctx, task, (1i32,))?
            } else {
                crash_once(ctx, task, ())?
            };
            times.push(dt);
            outcomes.push(outcome);
            usables.push(usable);
            next_s.push(ns.map(|x| (x * 1e4).round() / 1e4));
        }
        let usable: BTreeSet<String> = usables.into_iter().collect();
        out.push(
            Record::new("W7", &format!("{cname}_time_to_error"), &times, "s", 1)
                .with("variant", "default")
                .with("outcome", merge_outcomes(&outcomes))
                .with("pool_usable_after", usable.into_iter().collect::<Vec<_>>().join(" | "))
                .with("next_job_s", json!(next_s))
                .with("note", format!("faults.{task} via apply_async; caller waits 15 s; next_job_s = latency of the square(7) submitted after the crash")),
        );
    }
    Ok(out)
}

// ---------------------------------------------------------------------- W8

fn w8(ctx: &Ctx) -> Result<Vec<Record>> {
    let (mut ins, mut firsts, mut closes) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..ctx.runs {
        ctx.progress(&format!("W8 run {}/{}", run + 1, ctx.runs));
        let t0 = Instant::now();
        let pool = ctx.builder(2, &["math"]).build()?;
        let r: u64 = pool.apply("math", "square", (3u64,))?;
        let t1 = Instant::now();
        pool.join()?;
        let t2 = Instant::now();
        ensure!(r == 9, "W8: square(3) = {r}");
        ins.push((t2 - t0).as_secs_f64() * 1e3);
        firsts.push((t1 - t0).as_secs_f64() * 1e3);
        closes.push((t2 - t1).as_secs_f64() * 1e3);
    }
    let mut out = vec![
        Record::of("W8", "in_process", &ins, "ms", 1).with(
            "note",
            "Pool::builder().workers(2).build(); apply(square, (3,)); join() (close + wait)",
        ),
        Record::of("W8", "in_process_first_result", &firsts, "ms", 1)
            .with("note", "part of in_process: build + apply returned"),
        Record::of("W8", "in_process_close_join", &closes, "ms", 1).with(
            "note",
            "part of in_process: join() (close, workers exit, threads joined)",
        ),
    ];

    // Whole process: `billiard-host run libbilliard_math.so --task square --args '[3]'`.
    if ctx.cli_available {
        match w8_whole_process(ctx) {
            Ok(recs) => out.extend(recs),
            Err(e) => out.push(
                Record::new("W8", "whole_process", &[None], "ms", 1)
                    .with("outcome", format!("cli run failed: {e:#}")),
            ),
        }
    } else {
        out.push(
            Record::new("W8", "whole_process", &[None], "ms", 1)
                .with("outcome", "cli run unavailable"),
        );
    }
    Ok(out)
}

fn w8_whole_process(ctx: &Ctx) -> Result<Vec<Record>> {
    let mut whole = Vec::new();
    let mut base = Vec::new();
    for _ in 0..ctx.runs {
        let f = crate::proc::run_timed(
            Command::new(&ctx.cli_exe)
                .arg("run")
                .arg(ctx.plugin("math"))
                .args(["--task", "square", "--args", "[3]", "--workers", "2"])
                .args(["--start-method", &ctx.start_method.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
            ctx.cli_timeout,
        )?;
        let stdout = String::from_utf8_lossy(&f.stdout);
        // `9`, or the result line `{"index":0,"ok":9}`.
        let nine = stdout.trim() == "9"
            || cli_line(stdout.trim()).is_ok_and(|(_, v)| v.as_u64() == Some(9));
        ensure!(
            f.status.is_some_and(|s| s.success()) && nine,
            "billiard-host run --args '[3]' ended {} with stdout {stdout:?}, stderr {:?}",
            ended(&f),
            String::from_utf8_lossy(&f.stderr)
        );
        whole.push(f.wall * 1e3);
        let f = crate::proc::run_timed(
            Command::new(&ctx.cli_exe)
                .arg("--version")
                .stdin(Stdio::null())
                .stdout(Stdio::null()),
            ctx.cli_timeout,
        )?;
        ensure!(
            f.status.is_some_and(|s| s.success()),
            "billiard-host --version failed"
        );
        base.push(f.wall * 1e3);
    }
    Ok(vec![
        Record::of("W8", "whole_process", &whole, "ms", 1).with(
            "note",
            "wall time of `billiard-host run libbilliard_math.so --task square --args '[3]' --workers 2`",
        ),
        Record::of("W8", "host_startup_baseline", &base, "ms", 1).with(
            "note",
            "wall time of `billiard-host --version`, for reference",
        ),
    ])
}

/// How a timed process ended, for messages.
fn ended(f: &crate::proc::Finished) -> String {
    match f.status {
        Some(s) => s.to_string(),
        None => format!("hang: killed after {:.0} s", f.wall),
    }
}

// ---------------------------------------------------------------------- W9

/// The `kB` fields of /proc/PID/smaps_rollup.
fn smaps_rollup(pid: u32) -> Result<std::collections::HashMap<String, f64>> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let mut out = std::collections::HashMap::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() >= 3 && parts[parts.len() - 1] == "kB" {
            if let Ok(v) = parts[1].parse::<f64>() {
                out.insert(parts[0].trim_end_matches(':').to_string(), v);
            }
        }
    }
    Ok(out)
}

fn uss(m: &std::collections::HashMap<String, f64>) -> f64 {
    m.get("Private_Clean").copied().unwrap_or(0.0) + m.get("Private_Dirty").copied().unwrap_or(0.0)
}

fn ppid(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Live worker pids according to the events received so far.
fn live_pids(rx: &crossbeam_channel::Receiver<Event>, live: &mut BTreeSet<u32>) -> Vec<u32> {
    let mut up = Vec::new();
    while let Ok(e) = rx.try_recv() {
        match e {
            Event::WorkerUp { pid, .. } => {
                live.insert(pid as u32);
                up.push(pid as u32);
            }
            Event::WorkerDown { pid, .. } => {
                live.remove(&(pid as u32));
            }
            _ => {}
        }
    }
    up
}

fn w9(ctx: &Ctx) -> Result<Vec<Record>> {
    let settle = if ctx.mode == Mode::Dry { 0.1 } else { 1.0 };
    let (mut rss, mut pss, mut uss_v, mut prss) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut zrss, mut zpss, mut zuss) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..ctx.runs {
        ctx.progress(&format!("W9 run {}/{}", run + 1, ctx.runs));
        let (tx, rx) = crossbeam_channel::unbounded();
        let pool = ctx.builder(2, &["math"]).events(tx).build()?;
        warm(&pool)?;
        std::thread::sleep(Duration::from_secs_f64(settle));
        let mut live = BTreeSet::new();
        live_pids(&rx, &mut live);
        ensure!(
            live.len() == 2,
            "W9: {} live workers ({live:?})",
            live.len()
        );
        let maps: Vec<_> = live
            .iter()
            .map(|&p| smaps_rollup(p))
            .collect::<Result<_>>()?;
        let mean = |f: &dyn Fn(&std::collections::HashMap<String, f64>) -> f64| {
            maps.iter().map(f).sum::<f64>() / maps.len() as f64
        };
        rss.push(mean(&|m| m.get("Rss").copied().unwrap_or(0.0)));
        pss.push(mean(&|m| m.get("Pss").copied().unwrap_or(0.0)));
        uss_v.push(mean(&uss));
        let me = std::process::id();
        prss.push(smaps_rollup(me)?.get("Rss").copied().unwrap_or(0.0));
        // The zygote the workers were forked from (not a worker; context).
        if let Some(z) = live
            .iter()
            .next()
            .and_then(|&p| ppid(p))
            .filter(|&z| z != me)
        {
            if let Ok(m) = smaps_rollup(z) {
                zrss.push(m.get("Rss").copied().unwrap_or(0.0));
                zpss.push(m.get("Pss").copied().unwrap_or(0.0));
                zuss.push(uss(&m));
            }
        }
        pool.join()?;
    }
    let note = format!(
        "one idle worker of a 2-worker pool loading libbilliard_math.so, {} start method (mean of the 2 workers per run)",
        ctx.start_method
    );
    let mut out = vec![
        Record::of("W9", "worker_rss", &rss, "KiB", 2).with("note", note.clone()),
        Record::of("W9", "worker_pss", &pss, "KiB", 2).with("note", note.clone()),
        Record::of("W9", "worker_uss", &uss_v, "KiB", 2)
            .with("note", note + "; USS = Private_Clean + Private_Dirty"),
        Record::of("W9", "parent_rss", &prss, "KiB", 1).with(
            "note",
            "RSS of the benchmark (pool-owning) process, for context",
        ),
    ];
    if !zrss.is_empty() {
        let note = "the zygote the workers are forked from (the workers' parent), for context";
        out.push(Record::of("W9", "zygote_rss", &zrss, "KiB", 1).with("note", note));
        out.push(Record::of("W9", "zygote_pss", &zpss, "KiB", 1).with("note", note));
        out.push(Record::of("W9", "zygote_uss", &zuss, "KiB", 1).with("note", note));
    }
    Ok(out)
}

// ---------------------------------------------------------------------- W10

fn w10(ctx: &Ctx) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for variant in ["hard", "soft"] {
        let (mut times, mut outcomes, mut replaced, mut usable, mut repl_s) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for run in 0..ctx.runs {
            ctx.progress(&format!("W10 {variant} run {}/{}", run + 1, ctx.runs));
            let (tx, rx) = crossbeam_channel::unbounded();
            let pool = ctx.builder(2, &["math", "faults"]).events(tx).build()?;
            warm(&pool)?;
            let mut live = BTreeSet::new();
            live_pids(&rx, &mut live);
            let before = live.clone();
            let t0 = Instant::now();
            let h = if variant == "hard" {
                pool.apply_async_with::<_, u64>(
                    "faults",
                    "sleep_ms",
                    (W10_SLEEP_MS,),
                    JobOptions::default().time_limit(W10_LIMIT),
                )?
            } else {
                pool.apply_async_with::<_, u64>(
                    "faults",
                    "cooperative_sleep",
                    (W10_SLEEP_MS,),
                    JobOptions::default()
                        .soft_time_limit(W10_LIMIT)
                        .time_limit(Duration::from_secs(5)),
                )?
            };
            let (dt, outcome) = match h.get_timeout(CRASH_WAIT) {
                None => (
                    None,
                    format!("hang (no outcome after {} s)", CRASH_WAIT.as_secs()),
                ),
                Some(Ok(v)) => (Some(secs(t0)), format!("returned normally: {v}")),
                Some(Err(e)) => (Some(secs(t0)), describe(&e)),
            };
            // Replaced? Wait up to 5 s for 2 live workers != before.
            let t1 = Instant::now();
            let mut rep = None;
            while t1.elapsed() < Duration::from_secs(5) {
                live_pids(&rx, &mut live);
                if live.len() == 2 && live != before {
                    rep = Some(secs(t0));
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            replaced.push(
                if rep.is_some() {
                    "yes"
                } else {
                    "no (same pids)"
                }
                .to_string(),
            );
            repl_s.push(rep.map(|x| (x * 1e4).round() / 1e4));
            usable.push(next_job(&pool).0);
            pool.terminate()?;
            times.push(dt);
            outcomes.push(outcome);
        }
        let set = |v: Vec<String>| {
            v.into_iter()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let (metric, vname, note) = if variant == "hard" {
            (
                "time_to_hard_limit_error",
                "hard limit 0.2 s on sleep(10 s)",
                "apply_async_with(faults.sleep_ms(10000), JobOptions::time_limit(200 ms))",
            )
        } else {
            (
                "time_to_soft_limit_error",
                "soft limit 0.2 s on sleep(10 s) (hard 5 s)",
                "apply_async_with(faults.cooperative_sleep(10000), soft_time_limit(200 ms), time_limit(5 s)); the task polls ctx.check() every 1 ms",
            )
        };
        // The same variant text as pyworkloads.py, so the rows line up.
        out.push(
            Record::new("W10", metric, &times, "s", 1)
                .with("variant", vname)
                .with("outcome", merge_outcomes(&outcomes))
                .with("worker_replaced", set(replaced))
                .with("replaced_after_s", json!(repl_s))
                .with("pool_usable_after", set(usable))
                .with("note", note),
        );
    }
    Ok(out)
}

// ------------------------------------------------------- CLI variants (W1, W2, W5)

/// A record saying the CLI variant could not run.
fn cli_unavailable(workload: &str, metric: &str, unit: &str, n: u64, variant: &str) -> Record {
    Record::new(workload, metric, &[None], unit, n)
        .with("variant", variant)
        .with("outcome", "cli run unavailable")
}

/// Runs `billiard-host run PLUGIN --task T --input FILE --workers 2
/// --chunksize C` with stdout to `output`; returns the wall time.
fn cli_run(
    ctx: &Ctx,
    plugin: &str,
    task: &str,
    input: &Path,
    output: &Path,
    chunk: usize,
) -> Result<f64> {
    cli_run_with(ctx, plugin, task, input, output, chunk, &[])
}

/// [`cli_run`] with extra `run` flags.
fn cli_run_with(
    ctx: &Ctx,
    plugin: &str,
    task: &str,
    input: &Path,
    output: &Path,
    chunk: usize,
    extra: &[&str],
) -> Result<f64> {
    let out = File::create(output)?;
    let f = crate::proc::run_timed(
        Command::new(&ctx.cli_exe)
            .arg("run")
            .arg(ctx.plugin(plugin))
            .args(["--task", task, "--workers", "2"])
            .args(["--chunksize", &chunk.to_string()])
            .args(["--start-method", &ctx.start_method.to_string()])
            .args(extra)
            .args(["--sandbox", &ctx.sandbox.to_string()])
            .arg("--input")
            .arg(input)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::piped()),
        ctx.cli_timeout,
    )?;
    ensure!(
        f.status.is_some_and(|s| s.success()),
        "billiard-host run --input ended {}: {}",
        ended(&f),
        String::from_utf8_lossy(&f.stderr).trim()
    );
    Ok(f.wall)
}

/// A CLI variant that failed: value null, the reason as outcome.
fn cli_failed(workload: &str, metric: &str, unit: &str, n: u64, e: &anyhow::Error) -> Record {
    let mut msg = format!("{e:#}");
    if msg.len() > 400 {
        msg.truncate(msg.char_indices().nth(397).map_or(msg.len(), |(i, _)| i));
        msg.push_str("...");
    }
    Record::new(workload, metric, &[None], unit, n)
        .with("variant", "cli")
        .with("outcome", format!("cli run failed: {msg}"))
}

/// One result line of `run --input`: `{"index": N, "ok": VALUE}`.
fn cli_line(line: &str) -> Result<(u64, Value)> {
    let v: Value =
        serde_json::from_str(line).with_context(|| format!("bad output line {line:.200}"))?;
    let i = v.get("index").and_then(Value::as_u64).context("no index")?;
    match v.get("ok") {
        Some(ok) => Ok((i, ok.clone())),
        None => bail!(
            "item {i} failed: {}",
            v.get("error").cloned().unwrap_or_default()
        ),
    }
}

/// W1 (chunksize 1) / W2 (chunksize 1000) through the CLI on a JSONL file.
fn cli_stream(ctx: &Ctx, workload: &str, n: u64) -> Record {
    if !ctx.cli_available {
        return cli_unavailable(workload, "throughput", "tasks/s", n, "cli");
    }
    let input = ctx.tmp_dir.join(format!("{workload}-input.jsonl"));
    let output = ctx.tmp_dir.join(format!("{workload}-output.jsonl"));
    let r = cli_stream_runs(ctx, workload, n, &input, &output);
    let _ = std::fs::remove_file(&input);
    let _ = std::fs::remove_file(&output);
    r.unwrap_or_else(|e| cli_failed(workload, "throughput", "tasks/s", n, &e))
}

fn cli_stream_runs(
    ctx: &Ctx,
    workload: &str,
    n: u64,
    input: &Path,
    output: &Path,
) -> Result<Record> {
    let chunk = if workload == "W1" { 1 } else { W2_CHUNK };
    std::fs::create_dir_all(&ctx.tmp_dir)?;
    {
        let mut w = BufWriter::new(File::create(input)?);
        for i in 0..n {
            writeln!(w, "[{i}]")?;
        }
        w.flush()?;
    }
    let mut rates = Vec::new();
    for run in 0..ctx.runs {
        ctx.progress(&format!("{workload} cli run {}/{}", run + 1, ctx.runs));
        let dt = cli_run(ctx, "math", "square", input, output, chunk)?;
        let mut count = 0u64;
        for line in BufReader::new(File::open(output)?).lines() {
            let (i, v) = cli_line(&line?)?;
            ensure!(
                i == count && v.as_u64() == Some(i * i),
                "{workload} cli: line {count} is item {i} = {v}"
            );
            count += 1;
        }
        ensure!(
            count == n,
            "{workload} cli: {count} result lines for {n} inputs"
        );
        rates.push(n as f64 / dt);
    }
    Ok(Record::of(workload, "throughput", &rates, "tasks/s", n)
        .with("variant", "cli")
        .with("note", format!("`billiard-host run libbilliard_math.so --task square --input FILE --workers 2 --chunksize {chunk}` on a {n}-line JSONL file, stdout to a file; wall time of the whole process (startup included); every result line checked")))
}

/// W5 through the CLI: each input line is `[[b0, b1, ...]]` (1 MiB as a JSON
/// array of numbers, ~3.7 MB of text per line).
fn cli_w5(ctx: &Ctx, n: u64, payload: &[u8]) -> Vec<Record> {
    let tasks = [("arg_throughput", "len"), ("roundtrip_throughput", "echo")];
    if !ctx.cli_available {
        return tasks
            .iter()
            .map(|(m, _)| cli_unavailable("W5", m, "MB/s", n, "cli"))
            .collect();
    }
    let input = ctx.tmp_dir.join("W5-input.jsonl");
    let output = ctx.tmp_dir.join("W5-output.jsonl");
    let write_input = || -> Result<()> {
        std::fs::create_dir_all(&ctx.tmp_dir)?;
        let line = serde_json::to_string(&json!([payload]))?;
        let mut w = BufWriter::new(File::create(&input)?);
        for _ in 0..n {
            w.write_all(line.as_bytes())?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
        Ok(())
    };
    let out: Vec<Record> = match write_input() {
        Err(e) => tasks
            .iter()
            .map(|(m, _)| cli_failed("W5", m, "MB/s", n, &e))
            .collect(),
        Ok(()) => tasks
            .iter()
            .map(|&(metric, task)| {
                cli_w5_runs(ctx, n, payload, metric, task, &input, &output)
                    .unwrap_or_else(|e| cli_failed("W5", metric, "MB/s", n, &e))
            })
            .collect(),
    };
    let _ = std::fs::remove_file(&input);
    let mut out = out;
    out.extend(cli_w5_base64(ctx, n, payload, &input, &output));
    let _ = std::fs::remove_file(&input);
    let _ = std::fs::remove_file(&output);
    out
}

/// W5 through the CLI with the byte-string form: each input line is
/// `[{"$bytes": "<base64>"}]` (1 MiB as ~1.4 MB of text), results with
/// `--bytes base64`; every result checked (echo: the base64 text itself).
fn cli_w5_base64(ctx: &Ctx, n: u64, payload: &[u8], input: &Path, output: &Path) -> Vec<Record> {
    use base64::Engine;
    let tasks = [("arg_throughput", "len"), ("roundtrip_throughput", "echo")];
    let b64 = base64::engine::general_purpose::STANDARD.encode(payload);
    let write_input = || -> Result<()> {
        let line = format!("[{{\"$bytes\":\"{b64}\"}}]\n");
        let mut w = BufWriter::new(File::create(input)?);
        for _ in 0..n {
            w.write_all(line.as_bytes())?;
        }
        w.flush()?;
        Ok(())
    };
    if let Err(e) = write_input() {
        return tasks
            .iter()
            .map(|(m, _)| cli_failed("W5", m, "MB/s", n, &e).with("variant", "cli_base64"))
            .collect();
    }
    let echo_line = |i: u64| format!("{{\"index\":{i},\"ok\":{{\"$bytes\":\"{b64}\"}}}}");
    tasks
        .iter()
        .map(|&(metric, task)| {
            let runs = || -> Result<Record> {
                let extra = ["--bytes", "base64"];
                let rates = cli_w5_rates(ctx, n, "cli base64", task, input, output, &extra, |i, line| {
                    let ok = if task == "echo" {
                        line == echo_line(i)
                    } else {
                        line == format!("{{\"index\":{i},\"ok\":{W5_SIZE}}}")
                    };
                    ensure!(ok, "W5 cli base64 {task}: line {i} is wrong: {line:.200}");
                    Ok(())
                })?;
                Ok(Record::of("W5", metric, &rates, "MB/s", n)
                    .with("variant", "cli_base64")
                    .with("note", format!("`billiard-host run libbilliard_bytes.so --task {task} --input FILE --workers 2 --bytes base64`: {n} lines each holding 1 MiB as {{\"$bytes\": base64}}; wall time of the whole process; MB/s of payload per direction")))
            };
            runs().unwrap_or_else(|e| cli_failed("W5", metric, "MB/s", n, &e).with("variant", "cli_base64"))
        })
        .collect()
}

/// `ctx.runs` timed runs of `billiard-host run ... --task task` (the
/// bytes plugin, chunksize 1, `extra` flags) on `input`: every result line
/// goes through `check(index, line)` and there must be `n`; the payload
/// rates in MB/s per direction.
#[allow(clippy::too_many_arguments)]
fn cli_w5_rates(
    ctx: &Ctx,
    n: u64,
    label: &str,
    task: &str,
    input: &Path,
    output: &Path,
    extra: &[&str],
    mut check: impl FnMut(u64, &str) -> Result<()>,
) -> Result<Vec<f64>> {
    let mut rates = Vec::new();
    for run in 0..ctx.runs {
        ctx.progress(&format!("W5 {label} {task} run {}/{}", run + 1, ctx.runs));
        let dt = cli_run_with(ctx, "bytes", task, input, output, 1, extra)?;
        let mut count = 0u64;
        for line in BufReader::new(File::open(output)?).lines() {
            check(count, &line?)?;
            count += 1;
        }
        ensure!(
            count == n,
            "W5 {label}: {count} result lines for {n} inputs"
        );
        rates.push(n as f64 * W5_SIZE as f64 / dt / 1e6);
        let _ = std::fs::remove_file(output);
    }
    Ok(rates)
}

fn cli_w5_runs(
    ctx: &Ctx,
    n: u64,
    payload: &[u8],
    metric: &str,
    task: &str,
    input: &Path,
    output: &Path,
) -> Result<Record> {
    {
        let rates = cli_w5_rates(ctx, n, "cli", task, input, output, &[], |count, line| {
            if task == "echo" && count != 0 && count + 1 != n {
                // Middle echoes: the compact line `{"index":i,"ok":[b,...]}`
                // has one comma after the index and 2^20 - 1 in the
                // array (parsing 2^20 numbers per line is slow).
                let head = format!("{{\"index\":{count},\"ok\":[");
                if line.starts_with(&head) && line.ends_with("]}") {
                    let commas = line.bytes().filter(|&b| b == b',').count();
                    ensure!(
                        commas == W5_SIZE,
                        "W5 cli echo: item {count} has {commas} commas"
                    );
                    return Ok(());
                }
            }
            let (i, v) = cli_line(line)?;
            ensure!(i == count, "W5 cli: line {count} is item {i}");
            let ok = if task == "len" {
                v.as_u64() == Some(W5_SIZE as u64)
            } else {
                // Full comparison of the first and the last echo; the
                // others by length.
                let arr = v.as_array().context("echo is not an array")?;
                if i == 0 || i + 1 == n {
                    arr.len() == payload.len()
                        && arr
                            .iter()
                            .zip(payload)
                            .all(|(a, &b)| a.as_u64() == Some(b as u64))
                } else {
                    arr.len() == payload.len()
                }
            };
            ensure!(ok, "W5 cli {task}: item {i} is wrong");
            Ok(())
        })?;
        Ok(Record::of("W5", metric, &rates, "MB/s", n)
            .with("variant", "cli")
            .with("note", format!("`billiard-host run libbilliard_bytes.so --task {task} --input FILE --workers 2`: {n} lines each holding 1 MiB as a JSON array; wall time of the whole process; MB/s of payload per direction")))
    }
}

// ------------------------------------------------------ a C plugin (issue 27)

/// `plugins/c-example`, built with its Makefile beside the Rust plugins.
fn c_example(ctx: &Ctx) -> Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/c-example");
    let out = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(&src)
        .arg(format!("OUT={}", ctx.plugin_dir.display()))
        .output()
        .context("running make for plugins/c-example")?;
    ensure!(
        out.status.success(),
        "make -C {} failed: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(ctx.plugin_dir.join("libc_example.so"))
}

/// W1/W2's `square` as JSON jobs (a C plugin speaks only JSON) on the Rust
/// `math` plugin and on the C example, both loaded in one pool, taking
/// turns in each run (the first one alternates): what a call costs on the
/// C path beside the Rust one. Two records (`variant` `json-rust`,
/// `json-c`), the C one with `c_over_rust`, the ratio of the medians.
fn rust_beside_c(ctx: &Ctx, workload: &str, n: u64, chunk: usize) -> Vec<Record> {
    match rust_beside_c_runs(ctx, workload, n, chunk) {
        Ok(r) => r,
        Err(e) => {
            vec![Record::error(workload, &format!("rust vs c: {e:#}")).with("variant", "json-c")]
        }
    }
}

fn rust_beside_c_runs(ctx: &Ctx, workload: &str, n: u64, chunk: usize) -> Result<Vec<Record>> {
    use billiard_host::{Codec, RawJob};
    let c = c_example(ctx)?;
    let mut rates = [Vec::new(), Vec::new()];
    for run in 0..ctx.runs {
        ctx.progress(&format!(
            "{workload} rust vs c run {}/{}",
            run + 1,
            ctx.runs
        ));
        let pool = ctx.builder(2, &["math"]).plugin(&c).build()?;
        warm(&pool)?;
        let targets = [
            pool.task_ref("math", "square")?,
            pool.task_ref("c_example", "square")?,
        ];
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            let target = targets[k];
            let t0 = Instant::now();
            let jobs = (0..n).map(move |i| {
                Ok(RawJob::new(
                    target,
                    Codec::Json,
                    format!("[{i}]").into_bytes(),
                ))
            });
            let mut count = 0u64;
            for (i, out) in pool.imap_raw(jobs, true, chunk) {
                let v: u64 = serde_json::from_slice(&out?)?;
                ensure!(v == i * i, "{workload} json: item {i} gave {v}");
                count += 1;
            }
            let dt = secs(t0);
            ensure!(count == n, "{workload} json: {count} results for {n}");
            rates[k].push(n as f64 / dt);
        }
        pool.join()?;
    }
    let note = |kind: &str| {
        format!(
            "imap_raw(square, JSON [i] for i in 0..n, chunksize={chunk}), 2 workers, one pool \
             holding math and c_example, the {kind} plugin's square; every result checked"
        )
    };
    let rust = Record::of(workload, "throughput", &rates[0], "tasks/s", n)
        .with("variant", "json-rust")
        .with("note", note("Rust"));
    let mut c = Record::of(workload, "throughput", &rates[1], "tasks/s", n)
        .with("variant", "json-c")
        .with("note", note("C"));
    if let (Some(cv), Some(rv)) = (c.value, rust.value) {
        if rv > 0.0 {
            c = c.with("c_over_rust", (cv / rv * 1000.0).round() / 1000.0);
        }
    }
    Ok(vec![rust, c])
}
