//! `billiard-host worker PLUGIN.so [--plugin MORE.so] --broker URL ...`
//!
//! A long-running Celery worker on Redis whose tasks are the plugins'
//! tasks: a thin layer over [`billiard_host::celery::Worker`]. The pool
//! flags are `run`'s (same parsers, same per-worker limits); signals follow
//! Celery's and gunicorn's conventions (see `--help` and docs/celery.md).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use billiard_host::celery::control::{node_name, Ops, OpsOptions};
use billiard_host::celery::transport::sentinel;
use billiard_host::celery::{Control, Worker, WorkerError, WorkerOptions};
use billiard_host::metrics::Metrics;
use billiard_host::service::Notifier;
use billiard_host::Pool;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGTTIN, SIGTTOU};
use signal_hook::iterator::Signals;

use super::exit;
use super::pool_flags::PoolFlags;
use super::queue_flags::QueueFlags;
use super::values::{parse_duration, parse_positive_u64};

const AFTER_HELP: &str = "\
Examples:
  billiard-host worker libbilliard_math.so --broker redis://127.0.0.1:6379/0
  billiard-host worker libbilliard_math.so --plugin libbilliard_faults.so -Q rust,celery -c 8
  billiard-host worker libbilliard_math.so --broker redis+unix:///run/redis.sock --log-format json
  billiard-host worker libbilliard_math.so --broker amqp://guest:guest@127.0.0.1:5672// \
      --result-backend redis://127.0.0.1:6379/0
  billiard-host worker libbilliard_math.so -l debug   # Celery's -l/--loglevel, any case

  Then, from Python: Celery(broker=URL, backend=URL).send_task('math.square', args=[3]).get()

Task names: `plugin.task` (math.square), or the bare task name when only one plugin has it.
  Arguments: Celery's args, and kwargs mapped onto the task's argument names.

Broker URLs (kombu's forms): redis://[:PASSWORD@]HOST[:PORT][/DB], rediss://... (TLS),
  redis+unix:///PATH[?db=N], unix:///PATH, redis+socket:///PATH;
  sentinel://[:PASSWORD@]HOST:26379[/DB];sentinel://HOST2:26379 with --master-name NAME (or
  ?master_name=NAME), broker and backend; amqp://USER:PASSWORD@HOST[:PORT]/VHOST
  (RabbitMQ; `//` or no path is the vhost `/`), amqps://... (TLS), pyamqp://, librabbitmq://.
  An AMQP broker needs a --result-backend: a Redis (results, chords and revokes live there),
  or rpc:// (Celery's rpc backend: each result to its client's reply_to queue; no chords).
  A quorum-queue fleet (task_default_queue_type=\"quorum\", task_default_exchange_type=\"topic\"):
  --quorum-queues --exchange-type topic, and Celery 5.5+'s native delayed delivery is set up.

Broker: a broker that is down, times out or is loading is waited for (a warning, then retries
  with backoff); one that refuses this worker the same way every time (no or a wrong password,
  a user without the rights, a database index out of range, an unknown scheme) is a
  configuration error: exit 2 at once, with the broker's reason.

Signals: SIGTERM/SIGINT: warm shutdown (stop reserving, finish and ack running jobs, exit 0);
  a second SIGTERM/SIGINT, or SIGQUIT: cold shutdown (kill running jobs and return their
  messages to the queue at once, exit 0); SIGHUP: rolling restart with the plugin files re-read;
  SIGTTIN/SIGTTOU: one worker process more/fewer.

Operators: the worker answers `celery inspect` / `celery control` (ping, stats, active, revoke,
  terminate, pool_grow, add_consumer, shutdown, ...) as NAME (-n); -E sends Celery events (Flower);
  --metrics-addr serves /metrics (Prometheus) and /healthz. See docs/celery.md.";

/// `--consumer-timeout`: a duration, or `never` (Duration::MAX: no check).
fn parse_consumer_timeout(s: &str) -> Result<Duration, String> {
    if s.trim().eq_ignore_ascii_case("never") {
        return Ok(Duration::MAX);
    }
    parse_duration(s)
}

/// How log lines are written (on stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = AFTER_HELP,
    // `run`'s pool flags, with Celery's -c/--concurrency and the limits as
    // defaults a message overrides.
    mut_arg("workers", |a| a
        .short('c')
        .long("concurrency")
        .visible_alias("workers")
        .help("Worker processes (1 to 512; default: the number of CPUs).")),
    mut_arg("soft_time_limit", |a| a.help(
        "Default soft limit (a message's `timelimit` header overrides it)."
    )),
    mut_arg("time_limit", |a| a.help(
        "Default hard limit (a message's `timelimit` header overrides it)."
    )),
)]
pub struct Args {
    /// The plugin file (a .so built from a cdylib crate).
    plugin: PathBuf,
    /// Another plugin to load (repeatable).
    #[arg(long = "plugin", value_name = "MORE.so")]
    more_plugins: Vec<PathBuf>,
    /// The broker: redis://[:PASSWORD@]HOST[:PORT][/DB], rediss://..., redis+unix:///PATH,
    /// amqp://USER:PASSWORD@HOST[:PORT]/VHOST, amqps://... (see below).
    #[arg(
        short,
        long,
        value_name = "URL",
        default_value = "redis://127.0.0.1:6379/0"
    )]
    broker: String,
    /// Where results go: redis://... (default: the broker), sentinel://..., or rpc://
    /// (AMQP broker only: each result to its client's reply_to queue, as Celery's rpc
    /// backend; no chords, no death/requeue history). Required with an AMQP broker.
    #[arg(long, value_name = "URL")]
    result_backend: Option<String>,
    /// Queues to consume, comma-separated.
    #[arg(
        short = 'Q',
        long,
        value_name = "Q1,Q2",
        value_delimiter = ',',
        default_value = "celery"
    )]
    queues: Vec<String>,
    /// This host's lease on the messages it reserves: renewed every third of
    /// it while the host lives (no sweeper restores them meanwhile, whatever
    /// its own timeout); once the host stops renewing, they go back to their
    /// queue when it runs out.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    visibility_timeout: Duration,
    /// How long a message held by a consumer that does not renew (a Python
    /// Celery worker with acks_late) stays unacked before this host's
    /// sweeper returns it to its queue: the Python workers' visibility_timeout
    /// (kombu's default 1h).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    foreign_visibility_timeout: Duration,
    /// Messages reserved per worker process.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_positive_u64)]
    prefetch_multiplier: u64,
    /// Redis Sentinel: the master's name for sentinel:// broker and backend
    /// URLs that do not name it (kombu's transport option master_name).
    #[arg(long, value_name = "NAME")]
    master_name: Option<String>,
    /// AMQP: the server's consumer_timeout (RabbitMQ's default 30m): a job whose time
    /// limit is longer is refused at receipt (FAILURE) instead of having its channel
    /// closed under it; `never` when the server has none.
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = parse_consumer_timeout)]
    consumer_timeout: Duration,
    #[command(flatten)]
    queues_declared: QueueFlags,
    /// How long results are kept (Celery's result_expires).
    #[arg(long, value_name = "DURATION", default_value = "1day", value_parser = parse_duration)]
    result_expires: Duration,
    /// Store STARTED ({"pid", "hostname"}) in the result backend when a task is
    /// handed to the pool, as Celery's task_track_started (off by default, as there).
    #[arg(long)]
    track_started: bool,
    /// Log lines as text or as JSON objects (one per line, on stderr).
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// What to log, as Celery's -l: debug, info, warning, error, critical
    /// (any case). Overrides BILLIARD_LOG and RUST_LOG; default: their
    /// filter, else info.
    #[arg(short = 'l', long, value_name = "LEVEL", value_parser = super::logging::Level::parse)]
    loglevel: Option<super::logging::Level>,
    /// Send Celery events (task-*, worker-* on the celeryev exchange; Celery's -E).
    #[arg(short = 'E', long)]
    events: bool,
    /// This node's name for events and remote control: NAME@HOST (NAME alone
    /// gets @<hostname>; %h is the hostname). Default billiard-host@<hostname>.
    #[arg(short = 'n', long, value_name = "NAME")]
    hostname: Option<String>,
    /// Serve Prometheus metrics (/metrics) and a liveness probe (/healthz)
    /// on ADDR, e.g. 127.0.0.1:9808 (port 0: any free port, logged).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<String>,
    /// How the fleet's Python workers count chord header parts on the
    /// result backend: 5.7 (Celery 5.7's Lua scripts, dedup of re-runs) or
    /// 5.6 (Celery 5.5/5.6's pipeline). Every worker sharing the result
    /// backend must count the same way.
    #[arg(long, value_name = "VERSION", default_value = "5.7")]
    chord_protocol: billiard_host::celery::chord::ChordProtocol,
    /// Whether chord results are ordered (Celery's result_backend_transport_options
    /// result_chord_ordered, default true): false for a fleet that set it to False.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    chord_ordered: bool,
    /// How long a chord's bookkeeping keys live (Celery 5.7's
    /// result_chord_expires; default: --result-expires).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    result_chord_expires: Option<Duration>,
    /// Celery's rate_limit for TASK on this worker: N/s, N/m, N/h or N (per
    /// second); 0: none. A token bucket of capacity 1 (no bursts), over
    /// the task's own option; `celery control rate_limit` changes it at run
    /// time (repeatable).
    #[arg(long = "rate-limit", value_name = "TASK=RATE", value_parser = billiard_host::celery::rate::parse_task_rate)]
    rate_limits: Vec<billiard_host::celery::rate::TaskRate>,
    /// A limit for TASK shared by every host with the same flag on this
    /// broker (Redis key billiard-host:rate:TASK, Redis's clock): the
    /// fleet's starts are at least 1/RATE apart (repeatable).
    #[arg(long = "global-rate-limit", value_name = "TASK=RATE", value_parser = billiard_host::celery::rate::parse_task_rate)]
    global_rate_limits: Vec<billiard_host::celery::rate::TaskRate>,
    /// Answer to the Celery name CELERY with the plugin task PLUGIN.TASK
    /// (e.g. proj.tasks.add=math.add), before the plugins' own names;
    /// `inspect registered` shows it (repeatable).
    #[arg(long = "task-name", value_name = "CELERY=PLUGIN.TASK", value_parser = billiard_host::celery::names::parse_task_alias)]
    task_aliases: Vec<billiard_host::celery::names::TaskAlias>,
    /// A file of --task-name mappings: one CELERY=PLUGIN.TASK a line
    /// (blank lines and # comments skipped).
    #[arg(long = "task-names", value_name = "FILE")]
    task_names_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    retry: super::worker_retry::RetryFlags,
    #[command(flatten)]
    pool: PoolFlags,
}

/// The pool `worker` runs the tasks on: `run`'s pool flags, `Vec<u8>`
/// results as `{"$bytes": ...}`, which the worker writes as kombu's bytes
/// tag (issue 29 item 5: read back as `bytes`).
fn build_pool(
    flags: &PoolFlags,
    plugins: &[PathBuf],
    events: Option<crossbeam_channel::Sender<billiard_host::Event>>,
) -> Result<Pool, billiard_host::PoolError> {
    let mut b = flags.apply(Pool::builder()).bytes_base64(true);
    if let Some(tx) = events {
        b = b.events(tx);
    }
    for p in plugins {
        b = b.plugin(p);
    }
    b.build()
}

/// Logging to stderr, info by default, text or JSON (see `cli::logging`).
fn init_logging(level: Option<super::logging::Level>, format: LogFormat) {
    let format = match format {
        LogFormat::Text => super::logging::Format::Text,
        LogFormat::Json => super::logging::Format::Json,
    };
    super::logging::init_at(level, "info", format);
}

/// The same signal again within this long counts as one delivery (a
/// signal sent to both a process and its group arrives twice).
const REPEAT: Duration = Duration::from_millis(100);

pub fn run(args: Args) -> i32 {
    init_logging(args.loglevel, args.log_format);
    // Before any thread starts: it takes NOTIFY_SOCKET out of the
    // environment the pool's workers inherit.
    let notifier = std::sync::Arc::new(Notifier::from_env());
    let mut plugins = vec![args.plugin.clone()];
    plugins.extend(args.more_plugins.iter().cloned());
    // The pool starts before this process has other threads (the fork
    // start method needs it).
    let ops = ops_for(&args);
    let pool = match build_pool(&args.pool, &plugins, Some(ops.pool_events())) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let redelivery = match args.retry.options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    // The file's mappings first, the flags' after (a flag may not
    // contradict the file: check_aliases refuses a name mapped twice).
    let mut task_aliases = match &args.task_names_file {
        Some(f) => match billiard_host::celery::names::read_task_aliases(f) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("error: --task-names {e}");
                return exit::USAGE;
            }
        },
        None => Vec::new(),
    };
    task_aliases.extend(args.task_aliases.iter().cloned());
    let opts = WorkerOptions {
        redelivery,
        broker_url: sentinel::with_master_name(&args.broker, args.master_name.as_deref()),
        backend_url: args
            .result_backend
            .as_deref()
            .map(|b| sentinel::with_master_name(b, args.master_name.as_deref())),
        queues: args
            .queues
            .iter()
            .map(|q| q.trim().to_string())
            .filter(|q| !q.is_empty())
            .collect(),
        visibility_timeout: args.visibility_timeout,
        foreign_visibility_timeout: args.foreign_visibility_timeout,
        prefetch_multiplier: args.prefetch_multiplier.min(1 << 16) as usize,
        result_expires: args.result_expires,
        track_started: args.track_started,
        chord: billiard_host::celery::chord::ChordOptions {
            protocol: args.chord_protocol,
            ordered: args.chord_ordered,
            expires: args.result_chord_expires,
        },
        rate_limits: args.rate_limits.clone(),
        global_rate_limits: args.global_rate_limits.clone(),
        task_aliases,
        queue_max_priority: args.queues_declared.queue_max_priority,
        consumer_timeout: match billiard_host::celery::transport::kind(&args.broker) {
            Ok(billiard_host::celery::transport::Kind::Amqp) => {
                Some(args.consumer_timeout).filter(|d| *d != Duration::MAX)
            }
            _ => None,
        },
        quorum_queues: args.queues_declared.quorum_queues,
        exchange_type: args.queues_declared.exchange_type,
        delayed_queue_type: args.queues_declared.delayed_delivery_queue_type,
        ..WorkerOptions::default()
    };
    let worker = match Worker::new(pool, opts) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let worker = worker.with_ops(ops.clone());
    if let Some(addr) = &args.metrics_addr {
        if let Err(e) = serve_metrics(addr, &ops) {
            eprintln!("error: --metrics-addr {e}");
            return exit::USAGE;
        }
    }
    let ctl = worker.controller();
    let mut signals = match Signals::new([SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGTTIN, SIGTTOU]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return exit::USAGE;
        }
    };
    let handle = signals.handle();
    let said_stop = notifier.clone();
    let watcher = std::thread::Builder::new()
        .name("worker-signals".into())
        .spawn(move || {
            let mut first: Option<(i32, Instant)> = None;
            for sig in signals.forever() {
                match sig {
                    SIGHUP => ctl.send(Control::Restart),
                    SIGTTIN => ctl.send(Control::Grow),
                    SIGTTOU => ctl.send(Control::Shrink),
                    SIGQUIT => ctl.send(Control::Cold),
                    _ => {
                        if first.is_some_and(|(s, at)| s == sig && at.elapsed() < REPEAT) {
                            continue;
                        }
                        if first.is_none() {
                            first = Some((sig, Instant::now()));
                            said_stop.stopping("warm shutdown: finishing the tasks it holds");
                            ctl.send(Control::Warm);
                        } else {
                            said_stop.stopping("cold shutdown");
                            ctl.send(Control::Cold);
                        }
                    }
                }
            }
        });
    let json = args.log_format == LogFormat::Json;
    let (watchdog_stop, watchdog_stopped) = crossbeam_channel::bounded::<()>(0);
    let ready_notifier = notifier.clone();
    let health_ops = ops.clone();
    let result = worker.run(|info| {
        ready_notifier.ready(&format!(
            "consuming [{}] with {} worker process(es)",
            info.queues.join(", "),
            info.concurrency
        ));
        start_watchdog(ready_notifier, health_ops, watchdog_stopped);
        if json {
            let mut v = serde_json::to_value(info).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("level".into(), "INFO".into());
                o.insert("message".into(), "billiard-host worker ready".into());
            }
            eprintln!("{v}");
        } else {
            let plugins: Vec<String> = info
                .plugins
                .iter()
                .map(|p| format!("{} {} ({})", p.name, p.version, p.path))
                .collect();
            eprintln!(
                "billiard-host worker ready: broker {}, results {}, queues [{}], concurrency {} \
                 (prefetch x{}), visibility timeout {}s, plugins [{}], tasks [{}]",
                info.broker,
                info.backend,
                info.queues.join(", "),
                info.concurrency,
                info.prefetch_multiplier,
                info.visibility_timeout_s,
                plugins.join(", "),
                info.tasks.join(", ")
            );
        }
    });
    drop(watchdog_stop);
    handle.close();
    if let Ok(w) = watcher {
        let _ = w.join();
    }
    notifier.stopping(match &result {
        Ok(_) => "stopped",
        Err(_) => "stopped on an error",
    });
    match result {
        Ok(summary) => {
            tracing::info!(
                received = summary.received,
                succeeded = summary.succeeded,
                failed = summary.failed,
                unstored = summary.unstored,
                requeued = summary.requeued,
                retried = summary.retried,
                rejected = summary.rejected,
                ignored = summary.ignored,
                "{} shutdown complete",
                summary.shutdown
            );
            exit::OK
        }
        // A broker that refuses this worker the same way every time (a
        // bad password, NOAUTH, a user without the rights, a database index
        // out of range, a URL it cannot use) is a configuration error:
        // exit 2, as a usage error, so a service manager does not restart
        // it in a loop (issue 28).
        Err(WorkerError::Broker(e)) if !e.is_transient() => {
            eprintln!(
                "error: the broker {} cannot work: {e}\n  (a configuration error, not retried: \
                 check the URL's password, user and its rights, and database index)",
                billiard_host::celery::transport::redact(&args.broker)
            );
            exit::USAGE
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::JOBS_FAILED
        }
    }
}

/// Pings the service manager's watchdog every half timeout while the pool
/// has live worker processes (`$WATCHDOG_USEC`, systemd's `WatchdogSec=`):
/// a pool that is gone stops the pings, so the manager restarts the
/// service. Ends when `stop` closes.
fn start_watchdog(
    notifier: std::sync::Arc<Notifier>,
    ops: std::sync::Arc<Ops>,
    stop: crossbeam_channel::Receiver<()>,
) {
    let Some(period) = notifier.watchdog_period() else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            // The first snapshot of the pool lands within the ops ticker's
            // first second: the first ping waits a period.
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stop.recv_timeout(period)
            {
                let alive = ops.workers_alive.load(std::sync::atomic::Ordering::Acquire);
                notifier.ping(if alive > 0 {
                    Ok(())
                } else {
                    Err("the pool has no live worker process".into())
                });
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the watchdog thread ({e}); not pinging the service manager");
    }
}

/// The operators' side of the worker: node name, events, metrics.
fn ops_for(args: &Args) -> std::sync::Arc<Ops> {
    Ops::new(OpsOptions {
        hostname: node_name(args.hostname.as_deref()),
        events: args.events,
        metrics: args
            .metrics_addr
            .as_ref()
            .map(|_| std::sync::Arc::new(Metrics::new())),
    })
}

/// `/metrics` and `/healthz` (200 while the broker answers and the pool
/// has live workers, else 503 with the reason).
fn serve_metrics(addr: &str, ops: &std::sync::Arc<Ops>) -> Result<(), String> {
    let Some(m) = ops.metrics() else {
        return Ok(());
    };
    let o = ops.clone();
    let lost = m.clone();
    let sampler = ops.clone();
    let bound = m.serve(
        addr,
        std::sync::Arc::new(move || sampler.refresh_pool()),
        std::sync::Arc::new(move || {
            if let Some(why) = lost.pool_error() {
                return Err(format!("the pool stopped: {why}"));
            }
            if !o.broker_ok.load(std::sync::atomic::Ordering::Acquire) {
                return Err("broker unreachable".into());
            }
            if o.workers_alive.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return Err("no live worker process".into());
            }
            Ok(())
        }),
    )?;
    tracing::info!("metrics: serving http://{bound}/metrics and http://{bound}/healthz");
    Ok(())
}
