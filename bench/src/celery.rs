//! `bench-celery`: tiny-task throughput and submit→result latency through
//! one local Redis, `billiard-host worker` against Celery's own prefork
//! worker, in the same run: same redis-server, same producer (this
//! program, through `billiard_host::celery::client`), same concurrency,
//! the same task (`math.square`: the math plugin's, and a Python
//! `@app.task(name="math.square")` returning `x * x`).
//!
//! ```sh
//! cargo build --release -p billiard-host -p billiard-plugin-math -p billiard-bench
//! ./target/release/bench-celery --jobs 20000 --latency 2000 --runs 3
//! ```
//!
//! Per worker: a warm-up task (also the readiness check), then `--runs`
//! throughput runs (N tasks sent in pipelined batches of 512 with up to
//! 8,192 outstanding, rate = N / (first send .. last result)), then
//! `--latency` sequential round trips (send one, wait for its PUBLISH).
//! CPU seconds of redis-server, the worker's processes and this producer
//! are read from /proc around the throughput runs, to name the bottleneck.
//! Prints one JSON line per measurement and a Markdown table at the end,
//! and draws the throughput as an SVG chart (`--chart`).
//!
//! Celery's worker runs from the benchmarks' venv (`target/bench-venv`,
//! made and pip-installed from `bench/python/requirements.txt` on first
//! use), so a fresh clone needs only `python3` and `redis-server`.

// The flags' doc comments are clap's --help text (`<workspace>` and
// `celery[redis]` are not HTML or links there).
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use billiard_host::celery::client::{self, Client, SendOptions, Timeouts};
use billiard_host::celery::protocol::{NewTask, State};
use clap::Parser;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

mod charts;
mod venv;

#[derive(Parser, Debug)]
#[command(
    name = "bench-celery",
    about = "Throughput and latency of billiard-host worker vs Celery's prefork worker on one local Redis"
)]
struct Args {
    /// Tasks per throughput run.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Sequential round trips for the latency figures.
    #[arg(long, default_value_t = 2_000)]
    latency: usize,
    /// Throughput runs per worker (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Worker processes of each worker.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// billiard-host's --prefetch-multiplier, one measurement each
    /// (its default is 1; Celery keeps its default, 4).
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    prefetch_multiplier: Vec<usize>,
    /// The billiard-host executable (default: target/release/billiard-host).
    #[arg(long)]
    host_exe: Option<PathBuf>,
    /// The math plugin (default: target/release/libbilliard_math.so).
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// Python with celery[redis] (default: $BILLIARD_CELERY_PYTHON, else
    /// the venv <workspace>/target/bench-venv, created from
    /// bench/python/requirements.txt when missing).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Where the throughput chart goes (default:
    /// <workspace>/target/bench/charts/celery.svg).
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Only the billiard-host worker.
    #[arg(long)]
    skip_celery: bool,
    /// Only Celery's worker.
    #[arg(long)]
    skip_host: bool,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent directory")
        .to_path_buf()
}

/// Jobs outstanding at most, and per round trip (as `submit` does).
const WINDOW: usize = 8192;
const CHUNK: usize = 512;

fn main() -> Result<()> {
    let args = Args::parse();
    let root = workspace_root();
    let host_exe = args
        .host_exe
        .clone()
        .unwrap_or_else(|| root.join("target/release/billiard-host"));
    let plugin = args
        .plugin
        .clone()
        .unwrap_or_else(|| root.join("target/release/libbilliard_math.so"));
    let python = args
        .python
        .clone()
        .or_else(|| std::env::var_os("BILLIARD_CELERY_PYTHON").map(PathBuf::from));
    ensure!(
        host_exe.is_file(),
        "{} not found: build it with cargo build --release -p billiard-host",
        host_exe.display()
    );
    ensure!(
        plugin.is_file(),
        "{} not found: build it with cargo build --release -p billiard-plugin-math",
        plugin.display()
    );

    let tmp = std::env::temp_dir().join(format!("bench-celery-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let redis = Redis::start(&tmp)?;
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    eprintln!("redis-server pid {} on {url}", redis.child.id());

    let mut table = Vec::new();
    if !args.skip_host {
        for &mult in &args.prefetch_multiplier {
            let queue = format!("bench-host-x{mult}");
            let mut cmd = Command::new(&host_exe);
            cmd.arg("worker")
                .arg(&plugin)
                .args(["--broker", &url, "-Q", &queue])
                .args(["--concurrency", &args.concurrency.to_string()])
                .args(["--prefetch-multiplier", &mult.to_string()])
                .env_remove("RUST_LOG");
            let label = format!(
                "billiard-host worker (-c {}, prefetch x{mult})",
                args.concurrency
            );
            let name = format!("billiard-host-x{mult}");
            table.push(measure(&args, &url, &queue, &name, &label, cmd, &redis)?);
        }
    }
    if !args.skip_celery {
        let python = match python {
            Some(p) => p,
            None => venv::ensure(
                "python3",
                &root.join("target").join("bench-venv"),
                &venv::requirements(&root),
            )?,
        };
        ensure!(
            python.is_file(),
            "no Python at {} (pass --python, or unset BILLIARD_CELERY_PYTHON to use the bench venv)",
            python.display()
        );
        let queue = "bench-celery";
        let tasks = tmp.join("celery_bench_tasks.py");
        std::fs::write(
            &tasks,
            format!(
                r#"from celery import Celery
app = Celery("bench", broker={url:?}, backend={url:?})
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                result_accept_content=["json"], worker_hijack_root_logger=False)

@app.task(name="math.square")
def square(x):
    return x * x
"#
            ),
        )?;
        let mut cmd = Command::new(&python);
        cmd.current_dir(&tmp)
            .args([
                "-m",
                "celery",
                "-A",
                "celery_bench_tasks",
                "worker",
                "-P",
                "prefork",
            ])
            .args([
                "-c",
                &args.concurrency.to_string(),
                "-Q",
                queue,
                "-l",
                "warning",
            ])
            .args([
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]);
        let label = format!(
            "Celery 5.7 prefork worker (-c {}, prefetch x4)",
            args.concurrency
        );
        table.push(measure(&args, &url, queue, "celery", &label, cmd, &redis)?);
    }

    println!();
    println!("| worker | tasks/s (median of {}) | runs | p50 latency | p99 latency | CPU s per 1,000 tasks: redis / worker / producer |", args.runs);
    println!("|---|---|---|---|---|---|");
    for r in &table {
        println!(
            "| {} | {:.0} | {} | {:.2} ms | {:.2} ms | {:.3} / {:.3} / {:.3} |",
            r.label,
            r.rate,
            r.rates
                .iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            r.p50 * 1e3,
            r.p99 * 1e3,
            r.cpu_redis,
            r.cpu_worker,
            r.cpu_producer
        );
    }
    if let Some(celery) = table.iter().find(|r| r.label.starts_with("Celery")) {
        println!();
        for host in table.iter().filter(|r| r.label.starts_with("billiard")) {
            println!(
                "{} / Celery: throughput x{:.1}, p50 latency x{:.1} lower, p99 latency x{:.1} lower",
                host.label,
                host.rate / celery.rate,
                celery.p50 / host.p50,
                celery.p99 / host.p99
            );
        }
    }
    drop(redis);
    let _ = std::fs::remove_dir_all(&tmp);
    let chart = args
        .chart
        .clone()
        .unwrap_or_else(|| root.join("target/bench/charts/celery.svg"));
    if let Some(dir) = chart.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let bars: Vec<charts::Throughput> = table
        .iter()
        .map(|r| charts::Throughput {
            label: r.label.clone(),
            runs: r.rates.clone(),
        })
        .collect();
    charts::fleet_svg(&bars, "Celery mode: tiny tasks through one Redis", &chart)?;
    eprintln!("wrote {}", chart.display());
    Ok(())
}

struct Row {
    label: String,
    rate: f64,
    rates: Vec<f64>,
    p50: f64,
    p99: f64,
    cpu_redis: f64,
    cpu_worker: f64,
    cpu_producer: f64,
}

/// Starts the worker, measures, stops it.
fn measure(
    args: &Args,
    url: &str,
    queue: &str,
    name: &str,
    label: &str,
    mut cmd: Command,
    redis: &Redis,
) -> Result<Row> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut worker = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let stderr = worker.stderr.take();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(s) = stderr {
            for line in BufReader::new(s).lines().map_while(Result::ok) {
                text.push_str(&line);
                text.push('\n');
            }
        }
        text
    });
    let res = measure_running(args, url, queue, name, label, &worker, redis);
    stop(&mut worker);
    let log = log.join().unwrap_or_default();
    if res.is_err() {
        eprintln!("--- {name} worker stderr\n{log}");
    }
    res
}

fn measure_running(
    args: &Args,
    url: &str,
    queue: &str,
    name: &str,
    label: &str,
    worker: &Child,
    redis: &Redis,
) -> Result<Row> {
    let timeouts = Timeouts {
        io: Duration::from_secs(30),
        retry_for: Duration::from_secs(10),
    };
    let client = Client::with_backend(url, url, timeouts)?;
    let opts = SendOptions {
        queue: Some(queue.into()),
        ..SendOptions::default()
    };
    // Warm-up and readiness: the first result within a minute.
    let h = client.send_task("math.square", vec![json!(7)], Default::default(), &opts)?;
    let v = h
        .get_timeout(Duration::from_secs(60))
        .with_context(|| format!("{name}: the warm-up task"))?;
    ensure!(v == json!(49), "{name}: warm-up returned {v}");

    let wpid = worker.id() as i32;
    let mut rates = Vec::new();
    let cpu0 = (
        cpu_seconds(&[redis.child.id() as i32]),
        cpu_tree(wpid),
        self_cpu(),
    );
    for run in 0..args.runs {
        let rate = throughput(&client, &opts, args.jobs)
            .with_context(|| format!("{name}: throughput run {run}"))?;
        println!(
            "{}",
            json!({"impl": name, "measure": "throughput", "run": run, "jobs": args.jobs,
                   "concurrency": args.concurrency, "tasks_per_s": rate})
        );
        rates.push(rate);
    }
    let cpu1 = (
        cpu_seconds(&[redis.child.id() as i32]),
        cpu_tree(wpid),
        self_cpu(),
    );
    let per_k = |a: f64, b: f64| (b - a) / (args.jobs * args.runs) as f64 * 1000.0;
    let mut lat =
        latency(&client, &opts, args.latency).with_context(|| format!("{name}: latency"))?;
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let (p50, p99) = (pct(0.50), pct(0.99));
    println!(
        "{}",
        json!({"impl": name, "measure": "latency", "jobs": args.latency,
               "p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3, "max_ms": lat[lat.len() - 1] * 1e3})
    );
    let mut sorted = rates.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(Row {
        label: label.to_string(),
        rate: sorted[sorted.len() / 2],
        rates,
        p50,
        p99,
        cpu_redis: per_k(cpu0.0, cpu1.0),
        cpu_worker: per_k(cpu0.1, cpu1.1),
        cpu_producer: per_k(cpu0.2, cpu1.2),
    })
}

/// `n` tasks through the fleet; tasks per second from the first send to
/// the last result. Every value is checked.
fn throughput(client: &Client, opts: &SendOptions, n: usize) -> Result<f64> {
    let mut waiter = client.waiter()?;
    let mut expect: HashMap<String, u64> = HashMap::with_capacity(WINDOW);
    let mut ids: Vec<String> = Vec::with_capacity(n);
    let t0 = Instant::now();
    let (mut sent, mut done) = (0usize, 0usize);
    while done < n {
        while sent < n && expect.len() + CHUNK <= WINDOW {
            let k = CHUNK.min(n - sent);
            let mut msgs: Vec<NewTask> = (sent..sent + k)
                .map(|i| {
                    let mut m =
                        opts.message("math.square", vec![json!(i as u64)], Default::default())?;
                    m.id = billiard_host::celery::protocol::new_id();
                    Ok(m)
                })
                .collect::<Result<_>>()?;
            waiter.watch(msgs.iter().map(|m| m.id.clone()))?;
            client.send_many(&mut msgs)?;
            for (j, m) in msgs.iter().enumerate() {
                expect.insert(m.id.clone(), (sent + j) as u64);
            }
            sent += k;
        }
        match waiter.next(Duration::from_secs(60))? {
            Some((id, meta)) => {
                let x = expect
                    .remove(&id)
                    .with_context(|| format!("a result for unknown task {id}"))?;
                ensure!(meta.status == State::Success, "task {id}: {meta:?}");
                ensure!(
                    meta.result == json!(x * x),
                    "task {id}: {} != {}",
                    meta.result,
                    x * x
                );
                ids.push(id);
                done += 1;
            }
            None => bail!("no result within 60 s ({done} of {n} done)"),
        }
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    // Drop the results (they would otherwise stay a day).
    waiter.forget(&ids)?;
    Ok(rate)
}

/// `n` sequential round trips: send one task, wait for its result.
fn latency(client: &Client, opts: &SendOptions, n: usize) -> Result<Vec<f64>> {
    let mut waiter = client.waiter()?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut m = opts.message("math.square", vec![json!(i as u64)], Default::default())?;
        m.id = billiard_host::celery::protocol::new_id();
        // Subscribing first is part of what a client does per task.
        let t0 = Instant::now();
        waiter.watch(std::iter::once(m.id.clone()))?;
        client.send(&mut m)?;
        let (id, meta) = waiter
            .next(Duration::from_secs(60))?
            .context("no result within 60 s")?;
        out.push(t0.elapsed().as_secs_f64());
        ensure!(id == m.id && client::outcome(&meta) == Ok(json!((i as u64) * (i as u64))));
    }
    Ok(out)
}

/// SIGTERM (warm shutdown), then SIGKILL of its whole tree after 10 s.
fn stop(child: &mut Child) {
    let pid = child.id() as i32;
    let tree = tree_of(pid);
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in tree {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
    let _ = child.wait();
}

/// `pid` and its descendants.
fn tree_of(pid: i32) -> Vec<i32> {
    let procs: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter_map(|p| stat(p).map(|s| (p, s.0)))
                .collect()
        })
        .unwrap_or_default();
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(procs.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    out
}

/// (ppid, utime+stime seconds) of a live process.
fn stat(pid: i32) -> Option<(i32, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // /proc counts in USER_HZ, which Linux fixes at 100 for user space.
    Some((ppid, ticks / 100.0))
}

fn cpu_seconds(pids: &[i32]) -> f64 {
    pids.iter().filter_map(|p| stat(*p)).map(|s| s.1).sum()
}

/// CPU of a process and its live descendants (pool workers, zygote).
fn cpu_tree(pid: i32) -> f64 {
    cpu_seconds(&tree_of(pid))
}

fn self_cpu() -> f64 {
    cpu_seconds(&[std::process::id() as i32])
}

/// A private redis-server (no persistence), killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(dir: &Path) -> Result<Redis> {
        for _ in 0..10 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(dir)
                .args(["--logfile", "redis.log"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting redis-server (apt-get install redis-server)")?;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(Redis { child, port });
                }
                if child.try_wait()?.is_some() || Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        bail!("redis-server did not start")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
