//! Extra workloads of streaming tasks and progress reports (opt-in:
//! `--workloads S1,S2`; Python's billiard has neither, so each reports a
//! ratio between two billiard-host runs of the same invocation).
//!
//! - S1: items/s of `stream.count(n)` (a task emitting the u64s `0..n`,
//!   read through `Pool::apply_stream`) against `map(square, 0..n,
//!   chunksize=1000)` over the same count, both on one worker; goal: the
//!   stream at least half the map's rate.
//! - S2: W4's shape (40 jobs of ~50 ms on 2 workers, map chunksize 1) with
//!   a fixed amount of work per job (`stream.plain_loop`) and the same loop
//!   calling `ctx.progress(i + 1, n)` on every iteration
//!   (`stream.progress_loop`); goal: under 5 % slower.

use std::time::Instant;

use anyhow::{ensure, Result};
use billiard_host::Streamed;

use crate::record::Record;
use crate::workloads::Ctx;

pub const EXTRA_WORKLOADS: [&str; 2] = ["S1", "S2"];

const S1_N: u64 = 10_000_000;
const S1_CHUNK: usize = 1000;
const S2_JOBS: u64 = 40;
const S2_SPIN: u64 = 16;

pub fn run(ctx: &Ctx, workload: &str) -> Option<Result<Vec<Record>>> {
    match workload {
        "S1" => Some(s1(ctx)),
        "S2" => Some(s2(ctx)),
        _ => None,
    }
}

fn s1(ctx: &Ctx) -> Result<Vec<Record>> {
    let n = ctx.scale(S1_N, 1000);
    let (mut stream_rates, mut map_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..ctx.runs {
        eprintln!("[bench] S1 run {}/{}", run + 1, ctx.runs);
        let pool = ctx.builder(1, &["math", "stream"]).build()?;
        let _: Vec<u64> = pool.map("math", "square", 0..8u64, 1)?;

        let t0 = Instant::now();
        let (mut count, mut sum, mut done) = (0u64, 0u64, None);
        for s in pool.apply_stream::<_, u64, u64>("stream", "count", (n,))? {
            match s {
                Streamed::Item(v) => {
                    count += 1;
                    sum = sum.wrapping_add(v);
                }
                Streamed::Done(r) => done = Some(r?),
            }
        }
        let stream_dt = t0.elapsed().as_secs_f64();
        ensure!(
            count == n && done == Some(n),
            "S1: {count} items, result {done:?}"
        );
        ensure!(sum == n * (n - 1) / 2, "S1: wrong sum of items");

        let t0 = Instant::now();
        let out: Vec<u64> = pool.map("math", "square", 0..n, S1_CHUNK)?;
        let map_dt = t0.elapsed().as_secs_f64();
        ensure!(out.len() as u64 == n, "S1: map returned {}", out.len());
        drop(out);
        pool.join()?;

        let (s, m) = (n as f64 / stream_dt, n as f64 / map_dt);
        stream_rates.push(s);
        map_rates.push(m);
        ratios.push(s / m);
    }
    let note =
        format!("1 worker: apply_stream(count, {n}) vs map(square, 0..{n}, chunksize={S1_CHUNK})");
    Ok(vec![
        Record::of("S1", "stream_items", &stream_rates, "items/s", n).with("note", note.clone()),
        Record::of("S1", "map_items", &map_rates, "tasks/s", n).with("note", note.clone()),
        Record::of("S1", "stream_over_map", &ratios, "ratio", n).with("note", note),
    ])
}

fn s2(ctx: &Ctx) -> Result<Vec<Record>> {
    let jobs = ctx.scale(S2_JOBS, 2);
    let (mut plain_walls, mut progress_walls, mut overheads) = (Vec::new(), Vec::new(), Vec::new());
    let mut iters_used = 0;
    for run in 0..ctx.runs {
        eprintln!("[bench] S2 run {}/{}", run + 1, ctx.runs);
        let pool = ctx.builder(2, &["math", "stream"]).build()?;
        let _: Vec<u64> = pool.map("math", "square", 0..8u64, 1)?;
        // Iterations for ~50 ms per job (W4's spin(0.05)).
        let probe = 1_000_000u64;
        let t0 = Instant::now();
        let _: u64 = pool.apply("stream", "plain_loop", (probe, S2_SPIN))?;
        let per = t0.elapsed().as_secs_f64() / probe as f64;
        let iters = ((0.05 / per) as u64).max(1000);
        iters_used = iters;
        let args = vec![(iters, S2_SPIN); jobs as usize];

        // Alternate the order per run so neither always runs first.
        let time = |task: &str| -> Result<(f64, Vec<u64>)> {
            let t0 = Instant::now();
            let out: Vec<u64> = pool.starmap("stream", task, args.clone(), 1)?;
            Ok((t0.elapsed().as_secs_f64(), out))
        };
        let ((pw, pout), (gw, gout)) = if run % 2 == 0 {
            let p = time("plain_loop")?;
            (p, time("progress_loop")?)
        } else {
            let g = time("progress_loop")?;
            (time("plain_loop")?, g)
        };
        ensure!(pout == gout, "S2: the two loops computed different values");
        pool.join()?;
        plain_walls.push(pw);
        progress_walls.push(gw);
        overheads.push(gw / pw - 1.0);
    }
    let note = format!(
        "{jobs} jobs x {iters_used} iterations (xorshift x{S2_SPIN}), 2 workers, chunksize 1; \
         progress_loop calls ctx.progress every iteration"
    );
    Ok(vec![
        Record::of("S2", "wall_plain", &plain_walls, "s", jobs).with("note", note.clone()),
        Record::of("S2", "wall_progress", &progress_walls, "s", jobs).with("note", note.clone()),
        Record::of("S2", "progress_overhead", &overheads, "ratio", jobs).with("note", note),
    ])
}
