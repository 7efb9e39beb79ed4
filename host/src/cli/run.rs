//! `billiard-host run PLUGIN.so [--plugin MORE.so ...] (--args JSON | --input FILE)`
//!
//! A thin layer over [`Pool::imap_fed`]: input lines become jobs (see
//! [`super::input`]), outcomes become JSON result lines (see
//! [`super::output`]), in input order or, with `--unordered`, as they
//! complete. The contract (result format, exit codes, signals) is in the
//! README's "billiard-host run" section and in `--help`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use billiard_host::{ErrorKind, Pool, PoolConfig, TaskError};
use clap::ArgGroup;

use super::exit::{self, usage};
use super::fleet;
use super::input::{self, Jobs, LineNumbers};
use super::output::{self, Output, Rendered};
use super::pool_flags::{PoolFlags, POOL_GROUP};
use super::progress::Progress;
use super::queue_flags::QueueFlags;
use super::signals::{self, Reactions, Stop};
use super::values::{check_distinct_files, parse_duration, parse_size, BatchFiles, MAX_WORKERS};

const AFTER_HELP: &str = "\
Examples:
  billiard-host run libbilliard_math.so --task square --args '[3]'
  billiard-host run libbilliard_math.so --task square --input jobs.jsonl --output results.jsonl
  seq 1 1000 | sed 's/.*/[&]/' | billiard-host run libbilliard_math.so --task square --input - --unordered
  billiard-host run libbilliard_math.so --plugin libbilliard_faults.so --input mixed.jsonl --time-limit 10s

Input: one job per line, either a JSON array of arguments for --task ([3]), or an object
  {\"task\": \"add\", \"args\": [1, 2], \"time_limit\": \"2s\", \"soft_time_limit\": \"500ms\"}
  (every field optional; --task is the default task; `plugin.task` picks a plugin when several
  have the task). Blank lines are skipped and get no index.

Output: one JSON line per job, in input order (--unordered: as they complete):
  {\"index\":0,\"ok\":9}
  {\"index\":1,\"error\":{\"kind\":\"bad_args\",\"message\":\"...\"}}
  The index counts the non-blank input lines from 0. --args prints one line, index 0.
  A streaming task (one taking `&Emitter<T>`) also writes its items, in order, as
  {\"index\":N,\"item\":VALUE} lines before job N's result line.
  With --retries N a failed job runs again (at most N times, after --retry-delay or a
  --retry-backoff); its line then also says \"attempts\":3,\"retried\":[{\"kind\":...}, ...]
  (how the earlier attempts failed, oldest first).

Exit status: 0 every job succeeded; 1 some job failed or did not run (all results are still
  written); 2 usage error (a --task no plugin has: \"did you mean `square`?\"), unreadable
  input, or a plugin that cannot be loaded.

Signals: the first SIGINT/SIGTERM stops reading input; jobs already sent to the pool finish,
  lines already read but not sent end `terminated`. A second one kills the workers: every
  unfinished job ends `terminated`. SIGHUP reloads the plugins (rolling restart).";

#[derive(clap::Args, Debug)]
#[command(
    after_help = AFTER_HELP,
    group(ArgGroup::new("jobs").required(true).args(["args", "input"])),
)]
pub struct Args {
    /// The plugin file (a .so built from a cdylib crate); not with --broker,
    /// where the fleet's workers load the plugins.
    #[arg(required_unless_present = "broker", group = POOL_GROUP)]
    plugin: Option<PathBuf>,
    /// Another plugin to load (repeatable); a job names `plugin.task` when
    /// several plugins have the task.
    #[arg(long = "plugin", value_name = "MORE.so", group = POOL_GROUP)]
    more_plugins: Vec<PathBuf>,
    /// The task to run (`NAME` or `PLUGIN.NAME`); the default for input lines
    /// that do not name one.
    #[arg(short, long, value_name = "NAME")]
    task: Option<String>,
    /// Run one job with these arguments (a JSON array such as '[3]', or an
    /// object line) and print its result.
    #[arg(long, value_name = "JSON")]
    args: Option<String>,
    /// Run one job per line of FILE (`-`: standard input).
    #[arg(short, long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Write the results to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Write results as jobs complete instead of in input order.
    #[arg(long)]
    unordered: bool,
    #[command(flatten)]
    pool: PoolFlags,
    /// Jobs sent to a worker per message (and run in one call; at most
    /// 1048576).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_chunksize, group = POOL_GROUP)]
    chunksize: usize,
    /// How results of tasks that return bytes (`Vec<u8>`) are written:
    /// `array` of numbers, or `base64` as {"$bytes": "<base64>"} (arguments
    /// may use either form).
    #[arg(long, value_name = "FORM", default_value = "array")]
    bytes: BytesForm,
    /// Messages in flight per worker (1: only idle workers get work; at
    /// most 65536).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_prefetch, group = POOL_GROUP)]
    prefetch: usize,
    /// The largest frame to or from a worker (default 1GiB): a job whose
    /// arguments, or an input line, are longer ends `bad_args`. For tests
    /// of the limit; hidden.
    #[arg(long, value_name = "SIZE", value_parser = parse_max_frame, hide = true)]
    max_frame: Option<usize>,
    /// Write the pool's final statistics to FILE as JSON.
    #[arg(long, value_name = "FILE", group = POOL_GROUP)]
    stats_json: Option<PathBuf>,
    /// No progress bar, no summary (errors are still printed).
    #[arg(short, long)]
    quiet: bool,
    /// Run the jobs on the Celery workers of this broker instead of here
    /// (redis://HOST:PORT/DB, amqp://USER:PW@HOST/VHOST with --result-backend;
    /// `billiard-host worker` or Python Celery):
    /// same input, same result lines, same exit codes; the first
    /// SIGINT/SIGTERM stops waiting at once, as `submit --wait` (exit 130).
    #[arg(long, value_name = "URL", conflicts_with = POOL_GROUP)]
    broker: Option<String>,
    /// With --broker: where the workers store results (default: the broker).
    #[arg(long, value_name = "URL", requires = "broker")]
    result_backend: Option<String>,
    /// With --broker: the queue to send the jobs to (default: celery).
    #[arg(short = 'Q', long, value_name = "QUEUE", requires = "broker")]
    queue: Option<String>,
    /// With --broker (AMQP): how the fleet declares its queues.
    #[command(flatten)]
    queues_declared: QueueFlags,
    /// Run every job in a fresh process of its own, which loads the plugin
    /// files afresh and is gone when the job ends (no pool, no zygote kept;
    /// -w N run at a time). Refused with --chunksize, --prefetch or
    /// --max-tasks-per-child above 1, --max-memory-per-child,
    /// --start-method fork and --stats-json.
    #[arg(long, conflicts_with = "broker")]
    isolated: bool,
    #[command(flatten)]
    retry: RetryFlags,
}

/// The most retries `--retries` accepts.
const MAX_RETRIES: u32 = 10_000;

/// `run`'s retry flags: the pool's [`RetryPolicy`] for a local batch.
#[derive(clap::Args, Debug)]
pub(super) struct RetryFlags {
    /// Run a failed job again, at most N times (0, the default: never;
    /// at most 10000). Each result line then says how many attempts its
    /// job took and how the earlier ones failed ("attempts", "retried").
    /// A task that asks for a retry is retried too, within N.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = parse_retries,
          conflicts_with_all = ["broker", "isolated"])]
    retries: u32,
    /// The failure kinds retried (comma-separated; default with --retries:
    /// task_error,panic,worker_lost; `none`: only what tasks ask for).
    /// `terminated` is never retried.
    #[arg(long, value_name = "KINDS", value_parser = parse_retry_kinds, requires = "retries")]
    retry_on: Option<RetryKinds>,
    /// The delay before each retry, without --retry-backoff (default 1s;
    /// 0s retries at once).
    #[arg(long, value_name = "DURATION", value_parser = parse_delay,
          requires = "retries", conflicts_with = "retry_backoff")]
    retry_delay: Option<Duration>,
    /// Exponential backoff instead of a fixed delay: D, 2D, 4D, ... (at
    /// most --retry-backoff-max), each drawn at random from 0 to that
    /// unless --no-retry-jitter (Celery's retry_backoff).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "retries")]
    retry_backoff: Option<Duration>,
    /// The longest backoff delay (default 10m, Celery's).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration,
          requires = "retry_backoff")]
    retry_backoff_max: Option<Duration>,
    /// Backoff delays exactly as computed, not drawn at random below them.
    #[arg(long, requires = "retry_backoff")]
    no_retry_jitter: bool,
}

/// The delay between attempts without `--retry-backoff`: a second, not
/// Celery's three minutes. A waiting retry holds no worker, so a longer
/// delay costs a local batch only latency; a second is enough for what a
/// retry is for (a resource busy for a moment, a worker killed under
/// memory pressure) without stretching a batch whose failures are for
/// good by minutes.
const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);

/// What `--retries` retries without `--retry-on`: what may go differently
/// the next time. `task_error` (the task's own `Err`: a timeout, a busy
/// resource) and `panic` (Celery's `autoretry_for=(Exception,)` retries
/// any exception); `worker_lost` too, as Celery 5.7's
/// `task_retry_on_worker_lost`, since in a local batch the usual reason is
/// the machine (the OOM killer), and --retries bounds what a job that
/// kills its worker every time costs. Not the time limits (the same limit
/// would pass again), nor the caller's mistakes (`bad_args`,
/// `unknown_task`) or a plugin that does not load, which never change.
const DEFAULT_RETRY_ON: [ErrorKind; 3] = [
    ErrorKind::TaskError,
    ErrorKind::Panic,
    ErrorKind::WorkerLost,
];

impl RetryFlags {
    /// The policy the flags ask for; `None` without `--retries` (or 0).
    pub(super) fn policy(&self) -> Option<billiard_host::retry::RetryPolicy> {
        use billiard_host::retry::{Backoff, RetryPolicy, DEFAULT_BACKOFF_MAX};
        if self.retries == 0 {
            return None;
        }
        Some(RetryPolicy {
            on: self
                .retry_on
                .clone()
                .map_or_else(|| DEFAULT_RETRY_ON.to_vec(), |k| k.0),
            max_retries: Some(self.retries),
            delay: self.retry_delay.unwrap_or(DEFAULT_RETRY_DELAY),
            backoff: self.retry_backoff.map(|factor| Backoff {
                factor,
                max: self.retry_backoff_max.unwrap_or(DEFAULT_BACKOFF_MAX),
                jitter: !self.no_retry_jitter,
            }),
        })
    }
}

/// `--retries`: 0 to [`MAX_RETRIES`].
fn parse_retries(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if n <= MAX_RETRIES => Ok(n),
        _ => Err(format!(
            "must be a number of retries from 0 to {MAX_RETRIES}"
        )),
    }
}

/// `--retry-on`: failure kinds, not `terminated` (a job ended on request);
/// `none`: only the retries tasks ask for.
fn parse_retry_kinds(s: &str) -> Result<RetryKinds, String> {
    if s.trim() == "none" {
        return Ok(RetryKinds(Vec::new()));
    }
    let kinds = billiard_host::retry::parse_kinds(s)?;
    if kinds.contains(&ErrorKind::Terminated) {
        return Err("`terminated` is never retried: it is how a job is stopped".into());
    }
    Ok(RetryKinds(kinds))
}

/// The kinds `--retry-on` names (one value, not one per kind).
#[derive(Debug, Clone)]
pub(super) struct RetryKinds(Vec<ErrorKind>);

/// `--retry-delay`: a duration, 0 allowed (retry at once).
fn parse_delay(s: &str) -> Result<Duration, String> {
    if humantime::parse_duration(s).is_ok_and(|d| d.is_zero()) {
        return Ok(Duration::ZERO);
    }
    parse_duration(s)
}

/// The JSON form of byte-string results (`--bytes`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum BytesForm {
    /// `[104, 105]`
    Array,
    /// `{"$bytes": "aGk="}`
    Base64,
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>().map_err(|e| e.to_string())? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

/// The most messages in flight per worker `--prefetch` accepts.
const MAX_PREFETCH: usize = 65_536;

/// `--chunksize`: 1 to [`PoolConfig::MAX_CHUNKSIZE`] (a chunk's count
/// travels as 32 bits, and it runs in one frame and one call).
fn parse_chunksize(s: &str) -> Result<usize, String> {
    match parse_positive(s)? {
        n if n > PoolConfig::MAX_CHUNKSIZE => Err(format!(
            "at most {} jobs per message",
            PoolConfig::MAX_CHUNKSIZE
        )),
        n => Ok(n),
    }
}

/// `--prefetch`: 1 to [`MAX_PREFETCH`].
fn parse_prefetch(s: &str) -> Result<usize, String> {
    match parse_positive(s)? {
        n if n > MAX_PREFETCH => Err(format!("at most {MAX_PREFETCH} messages per worker")),
        n => Ok(n),
    }
}

/// `--max-frame`: a size in the pool's accepted range.
fn parse_max_frame(s: &str) -> Result<usize, String> {
    let (min, max) = (PoolConfig::MIN_MAX_FRAME, PoolConfig::MAX_MAX_FRAME);
    match usize::try_from(parse_size(s)?) {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("must be {min} to {max} bytes")),
    }
}

/// Where the jobs come from.
enum Source {
    /// `--args`: one job.
    One(Vec<u8>),
    /// `--input`: one job per line (read in big blocks: no buffer here).
    Lines(Box<dyn Read + Send>, Option<PathBuf>),
}

fn create(path: &Path, what: &str) -> Result<std::fs::File, i32> {
    std::fs::File::create(path)
        .map_err(|e| usage(format_args!("cannot create {what} {}: {e}", path.display())))
}

pub fn run(args: Args) -> i32 {
    // Before anything is opened for writing: an output that is the input
    // (or the other output) would destroy it.
    let input_path = args.input.clone().unwrap_or_else(|| "-".into());
    let plugins: Vec<PathBuf> = args
        .plugin
        .iter()
        .chain(&args.more_plugins)
        .cloned()
        .collect();
    if let Err(msg) = check_distinct_files(&BatchFiles {
        input: args.args.is_none().then_some(input_path.as_path()),
        output: args.output.as_deref(),
        stats: args.stats_json.as_deref(),
        plugins: &plugins,
    }) {
        return usage(msg);
    }
    if let Some(broker) = args.broker.clone() {
        return on_the_fleet(args, broker, input_path);
    }
    if args.queues_declared.any_set() {
        return usage(
            "--queue-max-priority, --quorum-queues, --exchange-type and \
             --delayed-delivery-queue-type say how a fleet declares its queues: \
             they go with --broker",
        );
    }
    if args.isolated {
        if let Err(msg) = super::isolated::refuse(
            &args.pool,
            args.chunksize,
            args.prefetch,
            args.stats_json.is_some(),
        ) {
            return usage(format_args!("--isolated: {msg}"));
        }
    }
    let source = match &args.args {
        Some(a) => match input::one_job(a, args.task.as_deref()) {
            Ok(job) => Source::One(job),
            Err(e) => return usage(e),
        },
        None => match input::open_jobs(&input_path) {
            Ok((reader, file)) => Source::Lines(reader, file),
            Err(e) => return usage(e),
        },
    };
    let out: Box<dyn Write + Send> = match &args.output {
        Some(p) if p.as_os_str() != "-" => match create(p, "the output file") {
            Ok(f) => Box::new(f),
            Err(code) => return code,
        },
        _ => Box::new(std::io::stdout()),
    };
    let stats_file = match &args.stats_json {
        Some(p) => match create(p, "the stats file") {
            Ok(f) => Some(f),
            Err(code) => return code,
        },
        None => None,
    };
    let single = matches!(source, Source::One(_));
    if args.isolated {
        return isolated(&args, single, source, out);
    }

    // The pool starts before this process has any other thread: the fork
    // start method requires it.
    let pool = match build_pool(&args, single) {
        Ok(p) => p,
        Err(e) => return usage(name_the_plugins(&args, e)),
    };
    // A default task no plugin has would fail every line that uses it: a
    // usage error before any job runs (with the closest name).
    if let Some(task) = &args.task {
        if let Err(e) = pool.find_task(task) {
            return usage(format_args!("--task {task}: {}", e.message));
        }
    }

    let retry = args.retry.policy();
    let visible = !single && !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut progress = Progress::new(visible);
    let stop = Arc::new(Stop::new());
    let lines = match source {
        Source::One(bytes) => input::one_batch(bytes),
        Source::Lines(reader, file) => {
            if let Some(file) = file {
                progress.count_total_in(file);
            }
            input::spawn_batch_reader(reader, stop.clone(), pool.config().max_frame)
        }
    };
    let output = Output::new(out);
    let (mut jobs, report) = Jobs::new(&pool, lines, stop.clone(), args.task.clone());
    let line_numbers = (!single).then(|| jobs.track_line_numbers());
    // Whoever sent the last line may wait for its result before sending
    // the next: what was written goes out before the input is waited for.
    let input_waits = jobs.on_wait(|| output.flush_if_dirty());
    let killed = std::sync::atomic::AtomicBool::new(false);
    let mut write_error = None;

    std::thread::scope(|s| {
        let bar = progress.bar().clone();
        let quiet = args.quiet;
        let say = move |m: &str| {
            if !quiet {
                bar.suspend(|| eprintln!("{m}"));
            }
        };
        let watcher = match signals::watch(s, &stop, Reactions::pool(&pool, &killed), say) {
            Ok((handle, _)) => Some(handle),
            Err(e) => {
                tracing::warn!("cannot install signal handlers: {e}");
                None
            }
        };
        let output = &output;
        let flusher_done = output::flush_in_background(s, output);

        let stream = pool.imap_fed(s, jobs, !args.unordered, args.chunksize);
        // The command line's policy, exactly: --retries is a cap.
        let stream = match &retry {
            Some(p) => stream.retry_policy(Some(p.clone())),
            None => stream,
        };
        let written = write_results(stream, line_numbers.as_ref(), |batch| {
            let ok = batch.lines.iter().filter(|(_, f)| f.is_none()).count();
            progress.record_batch(ok as u64, batch.lines.iter().filter_map(|(_, f)| *f));
            output.write_rendered(batch)?;
            if input_waits.load(std::sync::atomic::Ordering::SeqCst) {
                output.flush_if_dirty();
            }
            Ok(())
        });
        if let Err(e) = written {
            // Nobody reads the results any more: stop everything.
            stop.request("the output was closed");
            pool.terminate_now();
            write_error = Some(e);
        }
        // The summary counts the results that were written.
        output::settle(output, &mut progress, &mut write_error);
        drop(flusher_done);
        if let Some(h) = watcher {
            h.close();
        }
    });

    let stats = pool.stats();
    let _ = pool.join();
    let report = report.lock().unwrap_or_else(|e| e.into_inner());
    // How many attempts failed and ran again (a line's "attempts" says
    // which jobs).
    let retried = match stats.as_ref().map(|s| s.retried) {
        Ok(n) if n > 0 => format!("; {n} retr{}", if n == 1 { "y" } else { "ies" }),
        _ => String::new(),
    };
    let mut code = output::finish_batch(
        &progress,
        output::Ending {
            summary_suffix: &retried,
            stopped_early: report.stopped_early,
            stop_reason: stop.reason(),
            write_error: write_error.as_ref(),
            quiet: args.quiet,
            single,
        },
    );
    if let Some(file) = stats_file {
        match stats {
            Ok(stats) => {
                let written = serde_json::to_writer_pretty(&file, &stats)
                    .map_err(std::io::Error::from)
                    .and_then(|_| (&file).write_all(b"\n"));
                if let Err(e) = written {
                    eprintln!("error: cannot write the stats file: {e}");
                    code = exit::USAGE;
                }
            }
            Err(e) => eprintln!("warning: no statistics to write: {e}"),
        }
    }
    if let Some(e) = &report.read_error {
        eprintln!("error: {e}");
        code = exit::USAGE;
    }
    code
}

/// Most results one batch hands to the output at once.
const RESULT_BATCH: usize = 4096;
/// Item lines of streaming jobs a batch collects before it goes out anyway.
const ITEM_BATCH_BYTES: usize = 256 * 1024;

/// The result line of job `index`. The plugin's decoding errors say which
/// input line, as the host's own do (looked up only then: it is rare).
fn render(
    out: &mut Rendered,
    index: u64,
    outcome: Result<&[u8], TaskError>,
    attempts: Option<&billiard_host::retry::Attempts>,
    line_numbers: Option<&LineNumbers>,
) {
    let outcome = match outcome {
        Err(e) if e.kind == ErrorKind::BadArgs && !e.message.starts_with("line ") => {
            match line_numbers.and_then(|m| m.line_of(index)) {
                Some(n) => Err(TaskError::new(
                    ErrorKind::BadArgs,
                    format!("line {n}: {}", e.message),
                )),
                None => Err(e),
            }
        }
        other => other,
    };
    out.push_attempted(index, outcome, attempts);
}

/// The batch being rendered and where it goes.
struct Sink<E> {
    batch: Rendered,
    emit: E,
    /// `emit`'s first error: nothing is emitted after it.
    error: Option<std::io::Error>,
}

impl<E: FnMut(&Rendered) -> std::io::Result<()>> Sink<E> {
    fn send(&mut self) {
        if self.error.is_none() && (!self.batch.lines.is_empty() || !self.batch.bytes.is_empty()) {
            self.error = (self.emit)(&self.batch).err();
        }
        self.batch = Rendered::default();
    }
}

/// Takes the stream's results and hands their lines to `emit` in batches
/// (a result line goes out no later than the end of its chunk, so the
/// stream never waits on the pool with lines unwritten); stops at `emit`'s
/// first error. The stream reads the input on a thread of its own
/// ([`Pool::imap_fed`]): results flow while a pipe is quiet. A streaming
/// job's items become item lines of the batch, in arrival order (so ahead
/// of its result line); its progress reports feed the bar.
fn write_results(
    stream: billiard_host::FedStream<'_, '_>,
    line_numbers: Option<&LineNumbers>,
    emit: impl FnMut(&Rendered) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let sink = std::cell::RefCell::new(Sink {
        batch: Rendered::default(),
        emit,
        error: None,
    });
    let mut stream = stream.on_news(|i, news| match news {
        billiard_host::News::Items(b) => {
            let mut sink = sink.borrow_mut();
            for item in b.items() {
                output::render_item_into(&mut sink.batch.bytes, i, item);
            }
            if sink.batch.bytes.len() >= ITEM_BATCH_BYTES {
                sink.send();
            }
        }
        billiard_host::News::Progress { done, total } => {
            super::progress::PARTIAL.report(i, done, total)
        }
    });
    while stream
        .next_with_attempts(|i, outcome, attempts| {
            super::progress::PARTIAL.finished(i);
            render(
                &mut sink.borrow_mut().batch,
                i,
                outcome,
                attempts,
                line_numbers,
            )
        })
        .is_some()
    {
        let mut sink = sink.borrow_mut();
        if stream.ready() == 0 || sink.batch.lines.len() >= RESULT_BATCH {
            sink.send();
        }
        if sink.error.is_some() {
            break;
        }
    }
    drop(stream);
    let mut sink = sink.into_inner();
    sink.send();
    match sink.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A pool start error that does not say which file it is about (the zygote
/// died while loading) gets the plugin files named.
fn name_the_plugins(args: &Args, e: billiard_host::PoolError) -> String {
    let msg = e.to_string();
    let paths: Vec<String> = args
        .plugin
        .iter()
        .chain(&args.more_plugins)
        .map(|p| p.display().to_string())
        .collect();
    if !matches!(e, billiard_host::PoolError::PluginLoad(_))
        || paths.iter().any(|p| msg.contains(p.as_str()))
    {
        return msg;
    }
    match paths.as_slice() {
        [one] => format!("cannot load plugin {one}: {msg}"),
        many => format!("cannot load the plugins {}: {msg}", many.join(", ")),
    }
}

/// `run --isolated`: hands the jobs to [`super::isolated`].
fn isolated(args: &Args, single: bool, source: Source, out: Box<dyn Write + Send>) -> i32 {
    let stop = Arc::new(Stop::new());
    let (lines, count_in) = match source {
        Source::One(bytes) => (input::one_line(bytes), None),
        Source::Lines(reader, file) => (
            input::spawn_reader_capped(
                Box::new(std::io::BufReader::with_capacity(256 * 1024, reader)),
                stop.clone(),
                args.max_frame.unwrap_or_else(input::default_max_line),
            ),
            file,
        ),
    };
    let plan = super::isolated::Plan {
        builder: pool_builder(args, single),
        plugins: args
            .plugin
            .iter()
            .chain(&args.more_plugins)
            .cloned()
            .collect(),
        load_timeout: args
            .pool
            .load_timeout
            .unwrap_or(PoolConfig::default().load_timeout),
        default_task: args.task.clone(),
        workers: workers(args, single),
        ordered: !args.unordered,
        quiet: args.quiet,
        single,
    };
    super::isolated::run(plan, lines, count_in, stop, out)
}

fn build_pool(args: &Args, single: bool) -> Result<Pool, billiard_host::PoolError> {
    pool_builder(args, single).build()
}

/// `-w N`, else one per CPU (one for `--args`).
fn workers(args: &Args, single: bool) -> usize {
    args.pool.workers.unwrap_or(if single {
        1
    } else {
        PoolConfig::default().workers.min(MAX_WORKERS)
    })
}

/// The pool `run` starts (and `--isolated` starts one of per job).
fn pool_builder(args: &Args, single: bool) -> billiard_host::PoolBuilder {
    let workers = workers(args, single);
    // Keep the pool's queue short: what the pool holds on a first SIGINT
    // still runs, lines read but not yet sent end `terminated` instead.
    let window = workers
        .saturating_mul(args.prefetch)
        .saturating_mul(args.chunksize)
        .saturating_mul(2);
    let mut b = args
        .pool
        .apply(Pool::builder())
        .workers(workers)
        .prefetch(args.prefetch)
        .imap_window(window)
        .bytes_base64(args.bytes == BytesForm::Base64);
    for p in args.plugin.iter().chain(&args.more_plugins) {
        b = b.plugin(p);
    }
    if let Some(n) = args.max_frame {
        b = b.max_frame(n);
    }
    b
}

/// `run --broker URL`: the same jobs, sent to the fleet (see
/// [`super::fleet`]); each result is deleted from the backend once read.
fn on_the_fleet(args: Args, broker: String, input_path: PathBuf) -> i32 {
    let input = match &args.args {
        Some(a) => match input::one_job(a, args.task.as_deref()) {
            Ok(job) => fleet::Input::One(job),
            Err(e) => return usage(e),
        },
        None => fleet::Input::Path(input_path),
    };
    fleet::execute(fleet::Request {
        queues: args.queues_declared.options(),
        broker,
        result_backend: args.result_backend,
        default_task: args.task,
        input,
        kwargs: Default::default(),
        options: billiard_host::celery::client::SendOptions {
            queue: args.queue,
            time_limit: args.pool.time_limit,
            soft_time_limit: args.pool.soft_time_limit,
            ..Default::default()
        },
        output: args.output,
        wait: true,
        timeout: None,
        unordered: args.unordered,
        quiet: args.quiet,
        forget: true,
    })
}
