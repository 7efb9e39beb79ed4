//! `billiard-host run PLUGIN.so [--plugin MORE.so ...] (--args JSON | --input FILE)`
//!
//! A thin layer over [`Pool::imap_raw`]: input lines become jobs (see
//! [`super::input`]), outcomes become JSON result lines (see
//! [`super::output`]), in input order or, with `--unordered`, as they
//! complete. The contract (result format, exit codes, signals) is in the
//! README's "billiard-host run" section and in `--help`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use billiard_host::{Pool, PoolConfig, StartMethod};
use clap::ArgGroup;

use super::exit;
use super::input::{self, Jobs};
use super::output::{self, Output};
use super::progress::Progress;
use super::signals::{self, Escalation, Stop};

/// The most workers a pool accepts.
const MAX_WORKERS: usize = 512;

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

Exit status: 0 every job succeeded; 1 some job failed or did not run (all results are still
  written); 2 usage error, unreadable input, or a plugin that cannot be loaded.

Signals: the first SIGINT/SIGTERM stops reading input; jobs already sent to the pool finish,
  lines already read but not sent end `terminated`. A second one kills the workers: every
  unfinished job ends `terminated`. SIGHUP reloads the plugins (rolling restart).";

#[derive(clap::Args, Debug)]
#[command(
    after_help = AFTER_HELP,
    group(ArgGroup::new("jobs").required(true).args(["args", "input"])),
)]
pub struct Args {
    /// The plugin file (a .so built from a cdylib crate).
    plugin: PathBuf,
    /// Another plugin to load (repeatable); a job names `plugin.task` when
    /// several plugins have the task.
    #[arg(long = "plugin", value_name = "MORE.so")]
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
    /// Worker processes (1 to 512; default: the number of CPUs, 1 for --args).
    #[arg(short, long, value_name = "N", value_parser = parse_workers)]
    workers: Option<usize>,
    /// Jobs sent to a worker per message (and run in one call).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_positive)]
    chunksize: usize,
    /// Messages in flight per worker (1: only idle workers get work).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_positive)]
    prefetch: usize,
    /// Replace a worker after it ran N jobs.
    #[arg(long, value_name = "N", value_parser = parse_positive_u64)]
    max_tasks_per_child: Option<u64>,
    /// Replace a worker once its memory grew by more than SIZE (e.g. 200MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_memory_per_child: Option<u64>,
    /// Cap each worker's address space (RLIMIT_AS) at SIZE (e.g. 2GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    address_space_limit: Option<u64>,
    /// Ask a task to stop after this long (e.g. 500ms); it ends `soft_time_limit`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    soft_time_limit: Option<Duration>,
    /// Kill a task's worker after this long (e.g. 2s); the job ends `time_limit`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    time_limit: Option<Duration>,
    /// How workers are created.
    #[arg(long, value_name = "METHOD", default_value_t = StartMethod::Forkserver)]
    start_method: StartMethod,
    /// Write the pool's final statistics to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    stats_json: Option<PathBuf>,
    /// No progress bar, no summary (errors are still printed).
    #[arg(short, long)]
    quiet: bool,
}

pub(super) fn parse_workers(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    match n {
        0 => Err("a pool needs at least 1 worker".into()),
        n if n > MAX_WORKERS => Err(format!("at most {MAX_WORKERS} workers")),
        n => Ok(n),
    }
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>().map_err(|e| e.to_string())? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

pub(super) fn parse_positive_u64(s: &str) -> Result<u64, String> {
    match s.parse::<u64>().map_err(|e| e.to_string())? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

pub(super) fn parse_size(s: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize = s
        .trim()
        .parse()
        .map_err(|e| format!("{e} (e.g. 200MiB, 1GB, 4096)"))?;
    match size.as_u64() {
        0 => Err("must be more than 0 bytes".into()),
        n => Ok(n),
    }
}

pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 500ms, 2s, 1m)"))?;
    if d.is_zero() {
        return Err("must be longer than 0".into());
    }
    Ok(d)
}

/// Where the jobs come from.
enum Source {
    /// `--args`: one job.
    One(Vec<u8>),
    /// `--input`: one job per line.
    Lines(Box<dyn BufRead + Send>, Option<PathBuf>),
}

fn usage(msg: impl std::fmt::Display) -> i32 {
    eprintln!("error: {msg}");
    exit::USAGE
}

fn create(path: &Path, what: &str) -> Result<std::fs::File, i32> {
    std::fs::File::create(path)
        .map_err(|e| usage(format_args!("cannot create {what} {}: {e}", path.display())))
}

pub fn run(args: Args) -> i32 {
    let source = if let Some(a) = &args.args {
        if args.task.is_none() && !a.trim_start().starts_with('{') {
            return usage(
                "--args needs --task NAME (or an object {\"task\": NAME, \"args\": [...]})",
            );
        }
        Source::One(a.clone().into_bytes())
    } else {
        let path = args.input.clone().unwrap_or_else(|| "-".into());
        if path.as_os_str() == "-" {
            Source::Lines(Box::new(BufReader::new(std::io::stdin())), None)
        } else {
            match std::fs::File::open(&path) {
                // Opening a directory works; reading it fails later, far
                // from the path. Say so now, before any worker starts.
                Ok(f) if f.metadata().is_ok_and(|m| m.is_dir()) => {
                    return usage(format_args!(
                        "cannot read {}: it is a directory, not a file of jobs",
                        path.display()
                    ))
                }
                Ok(f) => Source::Lines(
                    Box::new(BufReader::with_capacity(256 * 1024, f)),
                    Some(path),
                ),
                Err(e) => return usage(format_args!("cannot open {}: {e}", path.display())),
            }
        }
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

    // The pool starts before this process has any other thread: the fork
    // start method requires it.
    let pool = match build_pool(&args, single) {
        Ok(p) => p,
        Err(e) => return usage(e),
    };

    let visible = !single && !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut progress = Progress::new(visible);
    let stop = Arc::new(Stop::new());
    let lines = match source {
        Source::One(bytes) => input::one_line(bytes),
        Source::Lines(reader, file) => {
            if let Some(file) = file {
                progress.count_total_in(file);
            }
            input::spawn_reader(reader, stop.clone())
        }
    };
    let (jobs, report) = Jobs::new(&pool, lines, stop.clone(), args.task.clone());
    let escalation = Escalation::default();
    let output = Output::new(out);
    let mut write_error = None;

    std::thread::scope(|s| {
        let bar = progress.bar().clone();
        let quiet = args.quiet;
        let say = move |m: &str| {
            if !quiet {
                bar.suspend(|| eprintln!("{m}"));
            }
        };
        let watcher = match signals::watch(s, &pool, &stop, &escalation, say) {
            Ok((handle, _)) => Some(handle),
            Err(e) => {
                tracing::warn!("cannot install signal handlers: {e}");
                None
            }
        };
        let (flusher_done, done) = crossbeam_channel::bounded::<()>(0);
        let output = &output;
        s.spawn(move || {
            // Sleep until a line is waiting, give later lines FLUSH_EVERY
            // to join it, flush; end when the run is over.
            while output.wait_dirty() {
                let over = !matches!(
                    done.recv_timeout(output::FLUSH_EVERY),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout)
                );
                output.flush_if_dirty();
                if over {
                    break;
                }
            }
        });

        for (index, outcome) in pool.imap_raw(jobs, !args.unordered, args.chunksize) {
            let (line, failed) = output::render(index, &outcome);
            progress.record(failed);
            if let Err(e) = output.write_line(&line) {
                // Nobody reads the results any more: stop everything.
                stop.request("the output was closed");
                pool.terminate_now();
                write_error = Some(e);
                break;
            }
        }
        if write_error.is_none() {
            write_error = output.flush().err();
        }
        drop(flusher_done);
        output.close();
        if let Some(h) = watcher {
            h.close();
        }
    });

    let stats = pool.stats();
    let _ = pool.join();
    let summary = progress.finish();
    let report = report.borrow();
    let mut code = if progress.tally.failed_total() > 0 || report.stopped_early {
        exit::JOBS_FAILED
    } else {
        exit::OK
    };

    if let Some(e) = &write_error {
        // A closed pipe (`| head`) is an ordinary way to stop: no message.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("error: cannot write the results: {e}");
        }
        code = exit::JOBS_FAILED;
    }
    if !args.quiet && !single {
        eprintln!("{summary}");
        if report.stopped_early {
            eprintln!(
                "stopped early ({}): the rest of the input was not read",
                stop.reason().unwrap_or("stopped")
            );
        }
    }
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

fn build_pool(args: &Args, single: bool) -> Result<Pool, billiard_host::PoolError> {
    let workers = args.workers.unwrap_or(if single {
        1
    } else {
        PoolConfig::default().workers.min(MAX_WORKERS)
    });
    // Keep the pool's queue short: what the pool holds on a first SIGINT
    // still runs, lines read but not yet sent end `terminated` instead.
    let window = workers
        .saturating_mul(args.prefetch)
        .saturating_mul(args.chunksize)
        .saturating_mul(2);
    let mut b = Pool::builder()
        .workers(workers)
        .plugin(&args.plugin)
        .start_method(args.start_method)
        .prefetch(args.prefetch)
        .imap_window(window);
    for p in &args.more_plugins {
        b = b.plugin(p);
    }
    b = super::WorkerLimits {
        max_tasks_per_child: args.max_tasks_per_child,
        max_memory_per_child: args.max_memory_per_child,
        address_space_limit: args.address_space_limit,
        soft_time_limit: args.soft_time_limit,
    }
    .apply(b);
    if let Some(d) = args.time_limit {
        b = b.time_limit(d);
    }
    b.build()
}
