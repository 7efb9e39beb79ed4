//! The shared-memory threshold, measured: payload throughput (W5's shape:
//! `imap(bytes.len / bytes.echo, chunksize 1)`, 2 workers) and sequential
//! `apply` latency (W3's shape, 1 worker) for a range of payload sizes,
//! through the socket (`shm_threshold(None)`) and through the arena
//! (`shm_threshold(Some(0))`), interleaved run by run so machine noise hits
//! both alike.
//!
//! ```text
//! cargo run --release -p billiard-bench --bin shm_sweep -- [PLUGIN_DIR] [RUNS] [CHART]
//! ```
//! PLUGIN_DIR holds libbilliard_{math,bytes}.so and billiard-host
//! (default: target/release). Prints one line per (size, path), then the
//! same as JSON lines (what `bench --charts-only --chart-shm` reads), and
//! draws them to CHART (default: target/bench/charts/shm_threshold.svg).

#[path = "../charts.rs"]
mod charts;

use std::path::PathBuf;
use std::time::Instant;

use billiard_host::Pool;
use serde_bytes::{ByteBuf, Bytes};

fn pool(dir: &std::path::Path, workers: usize, threshold: Option<usize>) -> Pool {
    Pool::builder()
        .workers(workers)
        .worker_exe(dir.join("billiard-host"))
        .plugin(dir.join("libbilliard_math.so"))
        .plugin(dir.join("libbilliard_bytes.so"))
        .shm_threshold(threshold)
        .build()
        .expect("pool")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/release"));
    let runs: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let chart = args.next().map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench/charts/shm_threshold.svg")
    });
    let mut points = Vec::new();
    let sizes = [
        4 << 10,
        16 << 10,
        32 << 10,
        64 << 10,
        128 << 10,
        256 << 10,
        1 << 20,
        4 << 20,
    ];
    println!("size_bytes path arg_MBps echo_MBps apply_p50_us (median of {runs} runs)");
    for size in sizes {
        let payload: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
        let n = ((256usize << 20) / size).clamp(200, 20_000);
        let mut res: [(Vec<f64>, Vec<f64>, Vec<f64>); 2] = Default::default();
        for _ in 0..runs {
            for (k, threshold) in [None, Some(0)].into_iter().enumerate() {
                let p = pool(&dir, 2, threshold);
                let _: Vec<u64> = p.map("math", "square", 0..8u64, 1).expect("warm");
                let t = Instant::now();
                let mut got = 0u64;
                for r in p
                    .imap::<_, u64>(
                        "bytes",
                        "len",
                        std::iter::repeat_n(Bytes::new(&payload), n),
                        1,
                    )
                    .expect("imap")
                {
                    got += r.expect("len");
                }
                assert_eq!(got, (n * size) as u64);
                res[k]
                    .0
                    .push((n * size) as f64 / t.elapsed().as_secs_f64() / 1e6);
                let t = Instant::now();
                for r in p
                    .imap::<_, ByteBuf>(
                        "bytes",
                        "echo",
                        std::iter::repeat_n(Bytes::new(&payload), n),
                        1,
                    )
                    .expect("imap")
                {
                    assert_eq!(r.expect("echo").len(), size);
                }
                res[k]
                    .1
                    .push((n * size) as f64 / t.elapsed().as_secs_f64() / 1e6);
                drop(p);
                let p = pool(&dir, 1, threshold);
                let mut lat = Vec::new();
                for i in 0..300 {
                    let t = Instant::now();
                    let _: u64 = p
                        .apply("bytes", "len", (Bytes::new(&payload),))
                        .expect("apply");
                    if i >= 50 {
                        lat.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                }
                res[k].2.push(median(lat));
            }
        }
        for (k, name) in ["socket", "shm"].iter().enumerate() {
            let (a, e, l) = std::mem::take(&mut res[k]);
            let (a, e, l) = (median(a), median(e), median(l));
            println!("{size} {name} {a:.0} {e:.0} {l:.1}");
            points.push(charts::ShmPoint {
                size: size as u64,
                path: name.to_string(),
                arg_mbps: a,
                echo_mbps: e,
                apply_p50_us: l,
            });
        }
    }
    for p in &points {
        println!(
            "{}",
            serde_json::json!({"size_bytes": p.size, "path": p.path, "arg_MBps": p.arg_mbps,
                               "echo_MBps": p.echo_mbps, "apply_p50_us": p.apply_p50_us})
        );
    }
    if let Some(dir) = chart.parent() {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("shm_sweep: cannot create {}: {e}", dir.display());
        }
    }
    match charts::shm_svg(&points, 64 << 10, &chart) {
        Ok(()) => eprintln!("wrote {}", chart.display()),
        Err(e) => eprintln!("shm_sweep: the chart: {e:#}"),
    }
}
