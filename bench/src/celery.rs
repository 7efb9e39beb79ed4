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
//! `--broker amqp`: the same through a private RabbitMQ node this program
//! starts (`rabbitmq-server` on the PATH or in /usr/lib/rabbitmq/bin),
//! the results on the Redis, both workers on the same node in the same
//! run; the node's CPU per task is reported beside Redis's.
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
use std::os::unix::process::CommandExt;
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
    about = "Throughput and latency of billiard-host worker vs Celery's prefork worker on one local Redis or RabbitMQ (--broker amqp)"
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
    /// A fleet: for each N, N billiard-host workers (each in its own
    /// process group) on one queue of the one Redis; throughput, CPU per
    /// task and Redis commands per task for each N (`--hosts 1,2,4,8`).
    #[arg(long, value_delimiter = ',')]
    hosts: Vec<usize>,
    /// Worker processes of each fleet host (default: --concurrency).
    #[arg(long)]
    host_concurrency: Option<usize>,
    /// The fleet hosts' --prefetch-multiplier.
    #[arg(long, default_value_t = 1)]
    fleet_prefetch: usize,
    /// Where the fleet chart goes (default:
    /// <workspace>/target/bench/charts/celery-fleet.svg).
    #[arg(long)]
    fleet_chart: Option<PathBuf>,
    /// The broker both workers consume from: `redis` (the results go
    /// there too), or `amqp`: a private rabbitmq-server node this program
    /// starts (its own data dir, ports and epmd), results on the Redis.
    #[arg(long, value_enum, default_value_t = BrokerKind::Redis)]
    broker: BrokerKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BrokerKind {
    Redis,
    Amqp,
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
    let backend = format!("redis://127.0.0.1:{}/0", redis.port);
    eprintln!("redis-server pid {} on {backend}", redis.child.id());
    let rabbit = match args.broker {
        BrokerKind::Redis => None,
        BrokerKind::Amqp => Some(RabbitMq::start(&tmp)?),
    };
    let url = rabbit
        .as_ref()
        .map_or_else(|| backend.clone(), RabbitMq::url);
    let on = if rabbit.is_some() { " on RabbitMQ" } else { "" };
    // On AMQP the results go to the Redis (on Redis, the broker keeps them).
    let backend_args: Vec<&str> = if rabbit.is_some() {
        vec!["--result-backend", &backend]
    } else {
        Vec::new()
    };
    let urls = Urls {
        broker: &url,
        backend: &backend,
        rabbit: rabbit.as_ref(),
    };

    let mut table = Vec::new();
    if !args.skip_host {
        for &mult in &args.prefetch_multiplier {
            let queue = format!("bench-host-x{mult}");
            let mut cmd = Command::new(&host_exe);
            cmd.arg("worker")
                .arg(&plugin)
                .args(["--broker", &url, "-Q", &queue])
                .args(&backend_args)
                .args(["--concurrency", &args.concurrency.to_string()])
                .args(["--prefetch-multiplier", &mult.to_string()])
                .env_remove("RUST_LOG");
            let label = format!(
                "billiard-host worker{on} (-c {}, prefetch x{mult})",
                args.concurrency
            );
            let name = format!("billiard-host-x{mult}");
            table.push(measure(
                &args,
                &urls,
                &queue,
                &name,
                &label,
                vec![cmd],
                &redis,
            )?);
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
app = Celery("bench", broker={url:?}, backend={backend:?})
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
            "Celery 5.7 prefork worker{on} (-c {}, prefetch x4)",
            args.concurrency
        );
        table.push(measure(
            &args,
            &urls,
            queue,
            "celery",
            &label,
            vec![cmd],
            &redis,
        )?);
    }
    let mut fleet = Vec::new();
    for &n in &args.hosts {
        ensure!(
            (1..=64).contains(&n),
            "--hosts: {n} is not between 1 and 64"
        );
        let queue = format!("bench-fleet-{n}");
        let c = args.host_concurrency.unwrap_or(args.concurrency);
        let cmds = (0..n)
            .map(|i| {
                let mut cmd = Command::new(&host_exe);
                cmd.arg("worker")
                    .arg(&plugin)
                    .args(["--broker", &url, "-Q", &queue])
                    .args(&backend_args)
                    .args(["-n", &format!("fleet{i}")])
                    .args(["--concurrency", &c.to_string()])
                    .args(["--prefetch-multiplier", &args.fleet_prefetch.to_string()])
                    .env_remove("RUST_LOG");
                cmd
            })
            .collect();
        let label = format!(
            "fleet of {n} billiard-host worker(s) (-c {c}, prefetch x{})",
            args.fleet_prefetch
        );
        let name = format!("fleet-{n}");
        let row = measure(&args, &urls, &queue, &name, &label, cmds, &redis)?;
        println!(
            "{}",
            json!({"impl": "billiard-host", "measure": "fleet", "hosts": n,
                   "concurrency": c, "prefetch": args.fleet_prefetch,
                   "tasks_per_s": row.rate, "runs": row.rates,
                   "redis_us_per_task": row.cpu_redis, "worker_us_per_task": row.cpu_worker,
                   "producer_us_per_task": row.cpu_producer,
                   "redis_calls_per_task": row.calls_per_task,
                   "redis_cpu_share": row.redis_share})
        );
        fleet.push((n, row));
    }

    println!();
    let rabbit_col = if rabbit.is_some() { "rabbitmq / " } else { "" };
    println!("| worker | tasks/s (median of {}) | runs | p50 latency | p99 latency | CPU µs per task: {rabbit_col}redis / worker / producer | Redis commands per task |", args.runs);
    println!("|---|---|---|---|---|---|---|");
    for r in table.iter().chain(fleet.iter().map(|(_, r)| r)) {
        let rabbit_cpu = if rabbit.is_some() {
            format!("{:.1} / ", r.cpu_rabbit)
        } else {
            String::new()
        };
        println!(
            "| {} | {:.0} | {} | {} | {} | {rabbit_cpu}{:.1} / {:.1} / {:.1} | {:.2} |",
            r.label,
            r.rate,
            r.rates
                .iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            r.p50.map_or("-".into(), |v| format!("{:.2} ms", v * 1e3)),
            r.p99.map_or("-".into(), |v| format!("{:.2} ms", v * 1e3)),
            r.cpu_redis,
            r.cpu_worker,
            r.cpu_producer,
            r.calls_per_task
        );
    }
    for r in table.iter().chain(fleet.iter().map(|(_, r)| r)) {
        println!();
        println!("{}: Redis commands per task (calls, µs of Redis time per task; EVALSHA's time includes the commands its script runs)", r.label);
        for (cmd, calls, usec) in &r.commands {
            println!("  {cmd:<16} {calls:>6.2} calls {usec:>7.2} µs");
        }
    }
    if let Some((_, last)) = fleet.last() {
        println!();
        println!(
            "one Redis at 100% of a core: ~{:.0} tasks/s at {:.1} µs of Redis CPU per task ({:.2} commands per task, the last fleet's)",
            1e6 / last.cpu_redis.max(1e-9),
            last.cpu_redis,
            last.calls_per_task
        );
    }
    if let Some(celery) = table.iter().find(|r| r.label.starts_with("Celery")) {
        println!();
        for host in table.iter().filter(|r| r.label.starts_with("billiard")) {
            let lower = |c: Option<f64>, h: Option<f64>| match (c, h) {
                (Some(c), Some(h)) if h > 0.0 => format!("x{:.1}", c / h),
                _ => "-".into(),
            };
            println!(
                "{} / Celery: throughput x{:.1}, p50 latency {} lower, p99 latency {} lower",
                host.label,
                host.rate / celery.rate,
                lower(celery.p50, host.p50),
                lower(celery.p99, host.p99)
            );
        }
    }
    drop(rabbit);
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
    if !bars.is_empty() {
        let title = if args.broker == BrokerKind::Amqp {
            "Celery mode: tiny tasks through one RabbitMQ (results on Redis)"
        } else {
            "Celery mode: tiny tasks through one Redis"
        };
        charts::fleet_svg(&bars, title, &chart)?;
        eprintln!("wrote {}", chart.display());
    }
    if !fleet.is_empty() {
        let path = args
            .fleet_chart
            .clone()
            .unwrap_or_else(|| root.join("target/bench/charts/celery-fleet.svg"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let points: Vec<charts::FleetPoint> = fleet
            .iter()
            .map(|(n, r)| charts::FleetPoint {
                hosts: *n as u64,
                tasks_per_s: r.rate,
                redis_us_per_task: r.cpu_redis,
            })
            .collect();
        charts::fleet_curve_svg(&points, &path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

struct Row {
    label: String,
    rate: f64,
    rates: Vec<f64>,
    /// None for a fleet (no latency runs).
    p50: Option<f64>,
    p99: Option<f64>,
    /// CPU µs per task over the throughput runs, from /proc.
    cpu_redis: f64,
    /// The RabbitMQ node's (0 on Redis).
    cpu_rabbit: f64,
    cpu_worker: f64,
    cpu_producer: f64,
    /// Redis's busy share of one core over the throughput runs.
    redis_share: f64,
    /// Redis commands per task (`INFO commandstats` over the throughput
    /// runs), scripts' inner commands counted as well.
    calls_per_task: f64,
    /// (command, calls per task, µs of Redis time per task), most calls first.
    commands: Vec<(String, f64, f64)>,
}

/// Starts the workers (each in a process group of its own), measures,
/// stops them.
fn measure(
    args: &Args,
    urls: &Urls<'_>,
    queue: &str,
    name: &str,
    label: &str,
    cmds: Vec<Command>,
    redis: &Redis,
) -> Result<Row> {
    let mut workers = Vec::new();
    let mut logs = Vec::new();
    for mut cmd in cmds {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut worker = match cmd.spawn() {
            Ok(w) => w,
            Err(e) => {
                for w in &mut workers {
                    stop(w);
                }
                return Err(e).with_context(|| format!("starting {cmd:?}"));
            }
        };
        let stderr = worker.stderr.take();
        logs.push(std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(s) = stderr {
                for line in BufReader::new(s).lines().map_while(Result::ok) {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
            text
        }));
        workers.push(worker);
    }
    let res = measure_running(args, urls, queue, name, label, &workers, redis);
    for w in &mut workers {
        stop(w);
    }
    for log in logs {
        let log = log.join().unwrap_or_default();
        if res.is_err() {
            eprintln!("--- {name} worker stderr\n{log}");
        }
    }
    res
}

fn measure_running(
    args: &Args,
    urls: &Urls<'_>,
    queue: &str,
    name: &str,
    label: &str,
    workers: &[Child],
    redis: &Redis,
) -> Result<Row> {
    let timeouts = Timeouts {
        io: Duration::from_secs(30),
        retry_for: Duration::from_secs(10),
    };
    let client = Client::with_backend(urls.broker, urls.backend, timeouts)?;
    let opts = SendOptions {
        queue: Some(queue.into()),
        ..SendOptions::default()
    };
    // Warm-up and readiness: one result per worker within a minute (a
    // fleet's hosts start at their own pace; the tasks go to whoever is up).
    for _ in 0..workers.len() {
        let h = client.send_task("math.square", vec![json!(7)], Default::default(), &opts)?;
        let v = h
            .get_timeout(Duration::from_secs(60))
            .with_context(|| format!("{name}: the warm-up task"))?;
        ensure!(v == json!(49), "{name}: warm-up returned {v}");
    }
    let wpids: Vec<i32> = workers.iter().map(|w| w.id() as i32).collect();
    let tree = || wpids.iter().map(|p| cpu_tree(*p)).sum::<f64>();
    let mut rates = Vec::new();
    redis.cmd(&["CONFIG", "RESETSTAT"])?;
    let t0 = Instant::now();
    let rabbit_cpu = || urls.rabbit.map_or(0.0, |r| cpu_tree(r.child.id() as i32));
    let cpu0 = (cpu_seconds(&[redis.child.id() as i32]), tree(), self_cpu());
    let rabbit0 = rabbit_cpu();
    let mut done = Vec::new();
    for run in 0..args.runs {
        let (rate, ids, waiter) = throughput(&client, &opts, args.jobs)
            .with_context(|| format!("{name}: throughput run {run}"))?;
        done.push((ids, waiter));
        println!(
            "{}",
            json!({"impl": name, "measure": "throughput", "run": run, "jobs": args.jobs,
                   "concurrency": args.concurrency, "hosts": workers.len(), "tasks_per_s": rate})
        );
        rates.push(rate);
    }
    let cpu1 = (cpu_seconds(&[redis.child.id() as i32]), tree(), self_cpu());
    let rabbit1 = rabbit_cpu();
    let wall = t0.elapsed().as_secs_f64();
    let stats = redis.cmd(&["INFO", "commandstats"])?;
    // Drop the results (they would otherwise stay a day), outside the
    // measurement: a fleet's results expire, nobody deletes them.
    for (ids, mut waiter) in done {
        waiter.forget(&ids)?;
    }
    let tasks = (args.jobs * args.runs) as f64;
    let per_task = |a: f64, b: f64| (b - a) / tasks * 1e6;
    let mut commands = commandstats(&stats)
        .into_iter()
        .map(|(c, calls, usec)| (c, calls as f64 / tasks, usec as f64 / tasks))
        .collect::<Vec<_>>();
    commands.sort_by(|a, b| b.1.total_cmp(&a.1));
    let calls_per_task = commands
        .iter()
        .filter(|(c, _, _)| !matches!(c.as_str(), "evalsha" | "eval" | "info" | "config|resetstat"))
        .map(|(_, n, _)| n)
        .sum();
    println!(
        "{}",
        json!({"impl": name, "measure": "redis", "hosts": workers.len(),
               "redis_us_per_task": per_task(cpu0.0, cpu1.0),
               "rabbitmq_us_per_task": per_task(rabbit0, rabbit1),
               "worker_us_per_task": per_task(cpu0.1, cpu1.1),
               "producer_us_per_task": per_task(cpu0.2, cpu1.2),
               "redis_calls_per_task": calls_per_task,
               "commands": commands.iter().map(|(c, n, u)| json!({"cmd": c, "calls_per_task": n, "usec_per_task": u})).collect::<Vec<_>>()})
    );
    let (p50, p99) = if args.latency > 0 && workers.len() == 1 {
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
        (Some(p50), Some(p99))
    } else {
        (None, None)
    };
    let mut sorted = rates.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(Row {
        label: label.to_string(),
        rate: sorted[sorted.len() / 2],
        rates,
        p50,
        p99,
        cpu_redis: per_task(cpu0.0, cpu1.0),
        cpu_rabbit: per_task(rabbit0, rabbit1),
        cpu_worker: per_task(cpu0.1, cpu1.1),
        cpu_producer: per_task(cpu0.2, cpu1.2),
        redis_share: (cpu1.0 - cpu0.0) / wall.max(1e-9),
        calls_per_task,
        commands,
    })
}

/// `INFO commandstats` → (command, calls, usec), commands as Redis names
/// them (`evalsha`, `config|resetstat`).
fn commandstats(info: &str) -> Vec<(String, u64, u64)> {
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |k: &str| -> Option<u64> {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))?
                    .parse()
                    .ok()
            };
            Some((name.to_string(), field("calls")?, field("usec")?))
        })
        .collect()
}

/// `n` tasks through the fleet; tasks per second from the first send to
/// the last result. Every value is checked. Also the task ids and the
/// waiter, to drop the results (`forget`) once the measurement is over.
fn throughput(
    client: &Client,
    opts: &SendOptions,
    n: usize,
) -> Result<(f64, Vec<String>, client::Waiter)> {
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
    Ok((rate, ids, waiter))
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

/// Where the workers and the producer connect.
struct Urls<'a> {
    broker: &'a str,
    backend: &'a str,
    rabbit: Option<&'a RabbitMq>,
}

/// A private RabbitMQ node (`--broker amqp`): its own data dir, node name,
/// AMQP and distribution ports and `epmd`, no plugins; its process group
/// killed on drop.
struct RabbitMq {
    child: Child,
    epmd: Child,
    port: u16,
}

impl RabbitMq {
    fn start(dir: &Path) -> Result<RabbitMq> {
        let free = || -> Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let exe = [
            "/usr/lib/rabbitmq/bin/rabbitmq-server",
            "/usr/sbin/rabbitmq-server",
        ]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("rabbitmq-server is not installed (apt-get install rabbitmq-server)")?;
        let (port, dist, epmd_port) = (free()?, free()?, free()?);
        let epmd = Command::new("epmd")
            .args(["-port", &epmd_port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting epmd (it comes with rabbitmq-server)")?;
        let home = dir.join("rabbitmq");
        std::fs::create_dir_all(&home)?;
        std::fs::write(home.join("enabled_plugins"), "[].\n")?;
        let log = std::fs::File::create(home.join("out.log"))?;
        let child = Command::new(exe)
            .env("HOME", &home)
            .env("RABBITMQ_MNESIA_BASE", home.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", home.join("log"))
            .env("RABBITMQ_NODENAME", format!("bench{port}@localhost"))
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("ERL_EPMD_PORT", epmd_port.to_string())
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                home.join("enabled_plugins"),
            )
            .env("RABBITMQ_CONFIG_FILE", home.join("rabbitmq"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                home.join("advanced.config"),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting rabbitmq-server")?;
        let mut node = RabbitMq { child, epmd, port };
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if node.speaks_amqp() {
                eprintln!("rabbitmq-server pid {} on {}", node.child.id(), node.url());
                return Ok(node);
            }
            if node.child.try_wait()?.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "rabbitmq-server did not start (see {})",
            home.join("out.log").display()
        )
    }

    /// The port answers an AMQP 0-9-1 header with a frame.
    fn speaks_amqp(&mut self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut frame = [0u8; 7];
        s.write_all(b"AMQP\x00\x00\x09\x01").is_ok()
            && s.read_exact(&mut frame).is_ok()
            && frame[0] == 1
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}//", self.port)
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(-(self.child.id() as i32)), Signal::SIGKILL);
        let _ = self.child.wait();
        let _ = self.epmd.kill();
        let _ = self.epmd.wait();
    }
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

impl Redis {
    /// One command over plain RESP on a fresh connection; a status or bulk
    /// reply as text.
    fn cmd(&self, args: &[&str]) -> Result<String> {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes())?;
        let mut r = BufReader::new(s);
        let mut head = String::new();
        r.read_line(&mut head)?;
        let head = head.trim_end();
        match head.as_bytes().first() {
            Some(b'+') => Ok(head[1..].to_string()),
            Some(b'$') => {
                let n: usize = head[1..].parse().context("a bulk length")?;
                let mut buf = vec![0; n + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n);
                Ok(String::from_utf8_lossy(&buf).into_owned())
            }
            _ => bail!("redis answered {head:?} to {args:?}"),
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
