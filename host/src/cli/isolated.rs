//! `billiard-host run --isolated`: every job in a fresh process of its own
//! ([`Process`]: a zygote that loads the plugin files afresh and forks the
//! one worker that runs the job; both are gone when the job's result is
//! written). `-w N` runs N jobs at a time. The input, the result lines,
//! the exit codes and the signals are `run`'s (`run --help`); only where
//! the jobs run differs.
//!
//! What `--isolated` means with the pool's flags: it is the
//! `--max-tasks-per-child 1` case with nothing kept between jobs (no
//! zygote, no plugin state), so `--max-tasks-per-child` above 1,
//! `--chunksize` and `--prefetch` above 1 (they put several jobs in one
//! process), `--max-memory-per-child` (recycling after a job: every
//! process ends after its job anyway), `--start-method fork` (a fork of
//! this multithreaded program) and `--stats-json` (a pool's statistics)
//! are refused with exit 2. A SIGHUP reloads nothing: every job loads the
//! plugin files as they are when it starts.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use billiard_host::{Codec, ErrorKind, Outcome, PoolBuilder, Process, StartMethod, TaskError};
use crossbeam_channel::Receiver;

use super::exit;
use super::input::{self, Line, LineJob};
use super::loader::load_isolated;
use super::output::{self, Output};
use super::pool_flags::PoolFlags;
use super::progress::Progress;
use super::signals::{self, Reactions, Stop};

/// Refuses flags `--isolated` contradicts (see the module docs): the
/// pool flags as `run` flattened them, and `run`'s own `--chunksize`,
/// `--prefetch` and `--stats-json`.
pub fn refuse(
    f: &PoolFlags,
    chunksize: usize,
    prefetch: usize,
    stats_json: bool,
) -> Result<(), String> {
    let why = if chunksize > 1 {
        "--chunksize groups jobs into one message for one process; --isolated runs every job in \
         a process of its own (drop one of them)"
    } else if prefetch > 1 {
        "--prefetch queues several jobs at one process; --isolated runs every job in a process \
         of its own (drop one of them)"
    } else if f.max_tasks_per_child.is_some_and(|n| n > 1) {
        "--max-tasks-per-child above 1 runs several jobs in one process; --isolated is \
         --max-tasks-per-child 1 without a zygote kept (drop one of them)"
    } else if f.max_memory_per_child.is_some() {
        "--max-memory-per-child replaces a worker after a job; with --isolated every process \
         ends after its one job anyway (cap a job's memory with --address-space-limit)"
    } else if f.start_method == StartMethod::Fork {
        "--start-method fork forks this program, which runs several threads with --isolated; \
         use forkserver (the default) or spawn"
    } else if stats_json {
        "--stats-json writes a pool's statistics; --isolated keeps no pool"
    } else {
        return Ok(());
    };
    Err(why.to_string())
}

/// Everything a run needs besides its input and output.
pub struct Plan {
    /// The pool settings every job's process starts with (plugins, limits,
    /// start method, load timeout).
    pub builder: PoolBuilder,
    pub plugins: Vec<PathBuf>,
    pub load_timeout: Duration,
    pub default_task: Option<String>,
    pub workers: usize,
    pub ordered: bool,
    pub quiet: bool,
    /// `--args`: one job, no progress bar, no summary.
    pub single: bool,
}

/// Results written per job taken, at most, ahead of the oldest job still
/// running (an ordered run behind a slow job holds no more than this).
const HELD_PER_WORKER: usize = 64;

/// How often a running job looks for a kill request (a second SIGINT).
const KILL_POLL: Duration = Duration::from_millis(50);

/// Runs the jobs of `lines`, each in its own process; returns the exit code.
pub fn run(
    plan: Plan,
    lines: Receiver<Line>,
    count_in: Option<PathBuf>,
    stop: Arc<Stop>,
    out: Box<dyn Write + Send>,
) -> i32 {
    // A plugin that cannot be loaded is a usage error before any job, as
    // for `run` (loaded in a child: its constructor may misbehave).
    let mut infos = Vec::with_capacity(plan.plugins.len());
    for p in &plan.plugins {
        match load_isolated(p, plan.load_timeout, false) {
            Ok(info) => infos.push(info),
            Err(e) => return exit::usage(e),
        }
    }
    // As for `run`: a default task no plugin has is refused before any job.
    if let Some(task) = &plan.default_task {
        if let Err(e) = billiard_host::resolve_task(&infos, task) {
            return exit::usage(format_args!("--task {task}: {}", e.message));
        }
    }
    let visible =
        !plan.single && !plan.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut progress = Progress::new(visible);
    if let Some(file) = count_in {
        progress.count_total_in(file);
    }
    let output = Output::new(out);
    let kill = AtomicBool::new(false);
    let puller = Mutex::new(Puller {
        lines,
        stop: stop.clone(),
        next: 0,
        draining: false,
        done: false,
        stopped_early: false,
        read_error: None,
    });
    // A ticket per job between its start and its line being written.
    let held = plan.workers.saturating_mul(HELD_PER_WORKER).max(1);
    let (ticket_tx, ticket_rx) = crossbeam_channel::bounded::<()>(held);
    for _ in 0..held {
        let _ = ticket_tx.send(());
    }
    let (res_tx, res_rx) = crossbeam_channel::unbounded::<Done>();
    let mut write_error: Option<std::io::Error> = None;
    std::thread::scope(|s| {
        let bar = progress.bar().clone();
        let quiet = plan.quiet;
        let say = move |m: &str| {
            if !quiet {
                bar.suspend(|| eprintln!("{m}"));
            }
        };
        let reactions = Reactions {
            finishing: "the running jobs",
            killing: "killing the running jobs now",
            killed: &kill,
            // Raising `kill` is the whole of it: every runner watches it.
            kill: Box::new(|| {}),
            hangup: Box::new(|say| {
                say(
                    "SIGHUP: nothing to reload: with --isolated every job loads the \
                     plugin files as they are when it starts",
                )
            }),
        };
        let signal_handle = match signals::watch(s, &stop, reactions, say) {
            Ok((handle, _)) => Some(handle),
            Err(e) => {
                tracing::warn!("cannot install signal handlers: {e}");
                None
            }
        };
        let output = &output;
        let flusher_done = output::flush_in_background(s, output);
        for _ in 0..plan.workers.max(1) {
            let (puller, plan, kill) = (&puller, &plan, &kill);
            let (tickets, results) = (ticket_rx.clone(), res_tx.clone());
            s.spawn(move || loop {
                if tickets.recv().is_err() {
                    return;
                }
                let taken = puller.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some((index, lineno, job)) = taken else {
                    return;
                };
                let outcome = match job {
                    Ok(job) => run_one(plan, job, kill),
                    Err(e) => Err(e),
                };
                if results
                    .send(Done {
                        index,
                        lineno,
                        outcome,
                    })
                    .is_err()
                {
                    return;
                }
            });
        }
        drop(res_tx);
        // The writer: in input order unless --unordered.
        let mut waiting: BTreeMap<u64, Done> = BTreeMap::new();
        let mut next = 0u64;
        for d in res_rx.iter() {
            let ready: Vec<Done> = if plan.ordered {
                waiting.insert(d.index, d);
                let mut ready = Vec::new();
                while let Some(d) = waiting.remove(&next) {
                    ready.push(d);
                    next += 1;
                }
                ready
            } else {
                vec![d]
            };
            for d in ready {
                let _ = ticket_tx.try_send(());
                if write_error.is_some() {
                    continue;
                }
                let (line, failed) = output::render(d.index, &with_line_number(d));
                progress.record(failed);
                if let Err(e) = output.write_line(&line, failed) {
                    // Nobody reads the results any more: stop everything.
                    stop.request("the output was closed");
                    kill.store(true, Ordering::Release);
                    write_error = Some(e);
                }
            }
            if res_rx.is_empty() {
                output.flush_if_dirty();
            }
        }
        // The runners are gone: no ticket is waited for any more.
        drop(ticket_tx);
        output::settle(output, &mut progress, &mut write_error);
        drop(flusher_done);
        if let Some(h) = &signal_handle {
            h.close();
        }
    });

    let p = puller.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut code = output::finish_batch(
        &progress,
        output::Ending {
            summary_suffix: "",
            stopped_early: p.stopped_early,
            stop_reason: stop.reason(),
            write_error: write_error.as_ref(),
            quiet: plan.quiet,
            single: plan.single,
        },
    );
    if let Some(e) = &p.read_error {
        eprintln!("error: {e}");
        code = exit::USAGE;
    }
    code
}

/// One job's outcome on its way to the writer.
struct Done {
    index: u64,
    lineno: u64,
    outcome: Outcome,
}

/// The plugin's own `bad_args` messages get the "line N:" the host's have
/// (as in `run`).
fn with_line_number(d: Done) -> Outcome {
    match d.outcome {
        Err(e) if e.kind == ErrorKind::BadArgs && !e.message.starts_with("line ") => {
            Err(TaskError::new(
                ErrorKind::BadArgs,
                format!("line {}: {}", d.lineno, e.message),
            ))
        }
        o => o,
    }
}

/// Runs one job in a process of its own, killed if `kill` is raised.
fn run_one(plan: &Plan, job: LineJob, kill: &AtomicBool) -> Outcome {
    let Some(task) = job.task.or_else(|| plan.default_task.clone()) else {
        return Err(TaskError::new(
            ErrorKind::UnknownTask,
            "no task given: pass --task NAME, or write the line as \
             {\"task\": \"NAME\", \"args\": [...]}",
        ));
    };
    if kill.load(Ordering::Acquire) {
        return Err(TaskError::new(
            ErrorKind::Terminated,
            "the run was interrupted before the job started",
        ));
    }
    let mut p = Process::with_builder(plan.builder.clone(), &task, Codec::Json, job.args)
        .limits(job.limits);
    if p.start().is_err() {
        return p.join();
    }
    loop {
        if kill.load(Ordering::Acquire) {
            return p.kill();
        }
        if let Some(o) = p.join_timeout(KILL_POLL) {
            return o;
        }
    }
}

/// Hands out the input's jobs in order, as `run`'s `Jobs` does: after a
/// stop, the lines already read end `terminated` and no more are read.
struct Puller {
    lines: Receiver<Line>,
    stop: Arc<Stop>,
    next: u64,
    draining: bool,
    done: bool,
    stopped_early: bool,
    read_error: Option<String>,
}

impl Puller {
    /// The next job: its index, its input line, and the job or the error
    /// standing in its place.
    fn next(&mut self) -> Option<(u64, u64, Result<LineJob, TaskError>)> {
        loop {
            if self.done {
                return None;
            }
            if self.draining {
                match self.lines.try_recv() {
                    Ok(Line::Data(lineno, _) | Line::TooLong(lineno, _)) => {
                        let why = self.stop.reason().unwrap_or("stopped");
                        let e = TaskError::new(
                            ErrorKind::Terminated,
                            format!("{why} before the job on input line {lineno} started"),
                        );
                        return Some(self.job(lineno, Err(e)));
                    }
                    Ok(Line::End) => {}
                    Ok(Line::Error(..)) | Err(_) => self.stopped_early = true,
                }
                self.done = true;
                return None;
            }
            if self.stop.is_set() {
                self.draining = true;
                continue;
            }
            let got = crossbeam_channel::select! {
                recv(self.lines) -> msg => Some(msg),
                recv(self.stop.woken()) -> _ => None,
            };
            match got {
                None => self.draining = true,
                Some(Ok(Line::Data(lineno, line))) => {
                    let job = input::parse_line(lineno, &line);
                    return Some(self.job(lineno, job));
                }
                Some(Ok(Line::TooLong(lineno, e))) => return Some(self.job(lineno, Err(e))),
                Some(Ok(Line::Error(lineno, e))) => {
                    self.read_error = Some(format!("cannot read input line {lineno}: {e}"));
                    self.done = true;
                }
                Some(Ok(Line::End)) | Some(Err(_)) => self.done = true,
            }
        }
    }

    fn job(
        &mut self,
        lineno: u64,
        job: Result<LineJob, TaskError>,
    ) -> (u64, u64, Result<LineJob, TaskError>) {
        let index = self.next;
        self.next += 1;
        (index, lineno, job)
    }
}
