//! Jobs on a Celery fleet: the producer loop `submit` and `run --broker`
//! share, over [`billiard_host::celery::client`].
//!
//! Jobs are read and parsed exactly as `run` reads them ([`super::input`]),
//! sent as Celery task messages, and (with `wait`, always for `run
//! --broker`) their results are written as `run`'s result lines
//! ([`super::output`]), in input order unless `unordered`, with `run`'s
//! exit codes. A line that cannot be a job gets its error line here, without
//! being sent. The loop never blocks on the input while results are
//! awaited (it reads what the input has, then waits for results a tick).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use billiard_host::celery::client::{self, Client, SendOptions, Timeouts, Waiter};
use billiard_host::celery::protocol::NewTask;
use billiard_host::{ErrorKind, TaskError};
use serde_json::{Map, Value};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::exit;
use super::input::{self, Line};
use super::output::{self, Output};
use super::progress::Progress;
use super::signals::Stop;

/// After this long with no result (or half the timeout, if shorter), look
/// whether the messages still wait in their queue and say so.
const NOTICE_AFTER: Duration = Duration::from_secs(5);

/// Where the jobs come from.
pub enum Input {
    /// One job (`--args`).
    One(Vec<u8>),
    /// One job per line of a file (`-`: standard input).
    Path(PathBuf),
}

/// One batch for the fleet: what `submit` and `run --broker` hand over.
pub struct Request {
    pub broker: String,
    /// How the fleet declares its AMQP queues.
    pub queues: billiard_host::celery::transport::QueueOptions,
    pub result_backend: Option<String>,
    /// `--task`.
    pub default_task: Option<String>,
    pub input: Input,
    /// Keyword arguments of every job (`--kwargs`, with `--args` only).
    pub kwargs: Map<String, Value>,
    /// Queue, priority, countdown, expiry and the default limits.
    pub options: SendOptions,
    pub output: Option<PathBuf>,
    /// Wait for results (else print task ids).
    pub wait: bool,
    /// With `wait`: give up after this long without a result arriving or
    /// a job sent (None: never).
    pub timeout: Option<Duration>,
    pub unordered: bool,
    pub quiet: bool,
    /// Delete each result once read (nobody else knows these task ids).
    pub forget: bool,
}

/// Jobs sent but not yet written, at most (bounds memory and the queue
/// this producer builds on the broker).
const WINDOW: usize = 8192;

/// Lines taken from the reader per round (one SUBSCRIBE and one pipeline
/// of LPUSHes each).
const CHUNK: usize = 512;

/// How long one wait for results lasts before the loop looks at input and
/// signals again.
const TICK: Duration = Duration::from_millis(50);

/// Runs a batch on the fleet; returns the exit code.
pub fn execute(b: Request) -> i32 {
    // Open everything that can fail as a usage error first.
    let (reader, total_from): (Option<Box<dyn BufRead + Send>>, Option<PathBuf>) = match &b.input {
        Input::One(_) => (None, None),
        Input::Path(path) => match input::open_jobs(path) {
            Ok((f, file)) => (
                Some(Box::new(BufReader::with_capacity(256 * 1024, f))),
                file,
            ),
            Err(e) => return exit::usage(e),
        },
    };
    let out: Box<dyn Write + Send> = match &b.output {
        Some(p) if p.as_os_str() != "-" => match std::fs::File::create(p) {
            Ok(f) => Box::new(f),
            Err(e) => {
                return exit::usage(format_args!(
                    "cannot create the output file {}: {e}",
                    p.display()
                ))
            }
        },
        _ => Box::new(std::io::stdout()),
    };
    let amqp = billiard_host::celery::transport::kind(&b.broker).ok()
        == Some(billiard_host::celery::transport::Kind::Amqp);
    if amqp && b.result_backend.is_none() {
        return exit::usage(format_args!(
            "an AMQP broker stores no results here: give --result-backend redis://..."
        ));
    }
    if b.result_backend
        .as_deref()
        .is_some_and(billiard_host::celery::backend::is_rpc)
    {
        return exit::usage(format_args!(
            "--result-backend rpc:// is for workers (results to each client's reply queue); \
             this client reads results from Redis: give --result-backend redis://..."
        ));
    }
    let backend = b.result_backend.clone().unwrap_or_else(|| b.broker.clone());
    let client =
        match Client::with_queues(&b.broker, &backend, Timeouts::default(), b.queues.clone()) {
            Ok(c) => c,
            Err(e) if !e.is_transient() => {
                return exit::usage(format_args!(
                    "the broker cannot work: {e}\n  (a configuration error: check the URL's \
                 scheme, password, user and database index)"
                ))
            }
            Err(e) => return exit::usage(format_args!("cannot reach the broker: {e}")),
        };
    let waiter = if b.wait {
        match client.waiter() {
            Ok(w) => Some(w),
            Err(e) => return exit::usage(format_args!("cannot reach the result backend: {e}")),
        }
    } else {
        None
    };

    let single = matches!(b.input, Input::One(_));
    let stop = Arc::new(Stop::new());
    let lines = match (&b.input, reader) {
        (Input::One(bytes), _) => input::one_line(bytes.clone()),
        (_, Some(reader)) => input::spawn_reader(reader, stop.clone()),
        (_, None) => input::one_line(Vec::new()),
    };
    let visible = !single && !b.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut progress = Progress::new(visible);
    if let Some(path) = total_from {
        progress.count_total_in(path);
    }
    let abandon = AtomicBool::new(false);
    let output = Output::new(out);

    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot install signal handlers: {e}");
            None
        }
    };
    let handle = signals.as_ref().map(|s| s.handle());
    let mut fleet = Fleet {
        b: &b,
        client: &client,
        waiter,
        lines,
        stop: &stop,
        abandon: &abandon,
        output: &output,
        progress: &mut progress,
        next_index: 0,
        next_out: 0,
        slots: BTreeMap::new(),
        ids: HashMap::new(),
        forget: Vec::new(),
        input_done: false,
        read_error: None,
        stopped_early: false,
        write_error: None,
        lost: None,
        last_activity: Instant::now(),
        noticed: false,
        timed_out: false,
        refused: false,
    };
    std::thread::scope(|s| {
        if let Some(mut signals) = signals.take() {
            let stop = &stop;
            let abandon = &abandon;
            let quiet = b.quiet;
            s.spawn(move || {
                // The first signal stops (issue 28: a queue nobody consumes
                // kept a first SIGTERM waiting for ever): what arrived is
                // written, the rest ends `terminated`.
                for sig in signals.forever() {
                    let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                    if stop.request(&format!("interrupted by {name}")) {
                        abandon.store(true, Ordering::Release);
                        if !quiet {
                            eprintln!(
                                "{name}: stopping; no more input is read, the results not \
                                 yet received end `terminated` (their jobs stay queued or \
                                 running)"
                            );
                        }
                    }
                }
            });
        }
        // Closed however `run` ends: on a panic too, so the signal thread
        // leaves `forever()` and the scope can end (C9: a panic in the
        // producer loop used to leave the process hanging in the scope's
        // join, deaf to SIGTERM, which the signal thread took).
        let _close = CloseSignals(handle.as_ref());
        fleet.run();
    });

    let Fleet {
        read_error,
        stopped_early,
        write_error,
        lost,
        timed_out,
        refused,
        ..
    } = fleet;
    let interrupted = abandon.load(Ordering::Acquire);
    let mut code = output::finish_batch(
        &progress,
        output::Ending {
            summary_suffix: "",
            stopped_early,
            stop_reason: stop.reason(),
            write_error: write_error.as_ref(),
            quiet: b.quiet,
            single,
        },
    );
    if timed_out {
        code = exit::TIMED_OUT;
    }
    if interrupted {
        code = exit::INTERRUPTED;
    }
    if let Some(e) = lost {
        eprintln!("error: {e}");
        code = code.max(exit::JOBS_FAILED);
    }
    if let Some(e) = read_error {
        eprintln!("error: {e}");
        code = exit::USAGE;
    }
    if refused {
        eprintln!(
            "the broker refuses this for good: a configuration error (check the URL's user and \
             its rights)"
        );
        code = exit::USAGE;
    }
    code
}

/// In debug builds, makes the producer loop panic on its first line (the
/// test of C9's panic-then-hang); release builds never read it.
const TEST_PANIC_ENV: &str = "BILLIARD_HOST_TEST_PANIC_SUBMIT";

/// Closes the signal iterator when dropped (also while unwinding).
struct CloseSignals<'a>(Option<&'a signal_hook::iterator::Handle>);

impl Drop for CloseSignals<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.0 {
            h.close();
        }
    }
}

/// The state of one job between reading and writing its line.
enum Slot {
    /// Sent; waiting for its result.
    Sent,
    /// Its line, ready to be written (ordered mode keeps it until its turn).
    Done(Vec<u8>, Option<ErrorKind>),
}

/// The producer loop's state.
struct Fleet<'a> {
    b: &'a Request,
    client: &'a Client,
    waiter: Option<Waiter>,
    lines: crossbeam_channel::Receiver<Line>,
    stop: &'a Stop,
    abandon: &'a AtomicBool,
    output: &'a Output,
    progress: &'a mut Progress,
    /// The index the next job gets.
    next_index: u64,
    /// The index whose line is written next (ordered mode).
    next_out: u64,
    /// Jobs read and not yet written.
    slots: BTreeMap<u64, Slot>,
    /// Task id -> index, for jobs awaiting their result.
    ids: HashMap<String, u64>,
    /// Results read, to delete (`forget`).
    forget: Vec<String>,
    input_done: bool,
    read_error: Option<String>,
    stopped_early: bool,
    write_error: Option<std::io::Error>,
    /// The broker or backend was lost for good.
    lost: Option<String>,
    /// When a job was last sent or a result last arrived (`--timeout`
    /// and the no-consumer note count from it).
    last_activity: Instant,
    /// The no-consumer note was considered (it is said at most once).
    noticed: bool,
    /// `--timeout` passed with results still awaited.
    timed_out: bool,
    /// Redis refused a send or subscription for good (NOPERM, ...): a
    /// configuration error.
    refused: bool,
}

/// True when Redis refused a call the same way it will every time (an ACL
/// without the rights, NOAUTH, ...): the URL's fault, exit 2.
fn refusal(e: &client::ClientError) -> bool {
    matches!(e, client::ClientError::Redis { .. }) && !e.is_transient()
}

impl Fleet<'_> {
    fn run(&mut self) {
        loop {
            if self.write_error.is_some() {
                break;
            }
            if self.abandon.load(Ordering::Acquire) {
                // What already arrived is written as it is.
                self.collect_ready();
                self.give_up(&format!(
                    "{}: its result was not awaited",
                    self.stop.reason().unwrap_or("interrupted")
                ));
                break;
            }
            if !self.ids.is_empty() {
                self.notice();
                if let Some(limit) = self.b.timeout {
                    if self.last_activity.elapsed() >= limit {
                        self.collect_ready();
                        self.timed_out = !self.ids.is_empty();
                        self.give_up(&format!(
                            "no result within --timeout {} (nothing arrived for that long)",
                            humantime::format_duration(limit)
                        ));
                        break;
                    }
                }
            }
            if !self.input_done && self.stop.is_set() {
                self.drain_read_lines();
            }
            let room = WINDOW.saturating_sub(self.slots.len());
            if !self.input_done && room > 0 {
                // Block for input only when nothing is in flight.
                let block = self.ids.is_empty();
                let jobs = self.read_some(room.min(CHUNK), block);
                self.send(jobs);
            }
            if self.input_done && self.ids.is_empty() {
                break;
            }
            if !self.ids.is_empty() {
                // More input is waiting: only collect what is there.
                let busy = !self.input_done && !self.lines.is_empty() && room > 0;
                self.collect(if busy { Duration::ZERO } else { TICK });
            }
            self.output.flush_if_dirty();
        }
        output::settle(self.output, self.progress, &mut self.write_error);
        self.flush_forget(true);
    }

    /// Up to `max` jobs from the input (waiting for the first one if
    /// `block`), each with its index: to send, or already finished (a line
    /// that cannot be a job).
    fn read_some(&mut self, max: usize, block: bool) -> Vec<(u64, NewTask)> {
        let mut jobs = Vec::new();
        while jobs.len() < max && !self.input_done {
            let msg = if block && jobs.is_empty() {
                crossbeam_channel::select! {
                    recv(self.lines) -> m => m.ok(),
                    recv(self.stop.woken()) -> _ => {
                        self.drain_read_lines();
                        return jobs;
                    }
                    default(TICK) => return jobs,
                }
            } else {
                match self.lines.try_recv() {
                    Ok(m) => Some(m),
                    Err(crossbeam_channel::TryRecvError::Empty) => return jobs,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => None,
                }
            };
            match msg {
                Some(Line::Data(lineno, line)) => {
                    let index = self.next_index;
                    self.next_index += 1;
                    match self.message(lineno, &line) {
                        Ok(m) => jobs.push((index, m)),
                        Err(e) => self.finish(index, Err(e)),
                    }
                }
                Some(Line::TooLong(_, e)) => {
                    let index = self.next_index;
                    self.next_index += 1;
                    self.finish(index, Err(e));
                }
                Some(Line::Error(lineno, e)) => {
                    self.read_error = Some(format!("cannot read input line {lineno}: {e}"));
                    self.input_done = true;
                }
                Some(Line::End) | None => self.input_done = true,
            }
        }
        jobs
    }

    /// After a stop request: lines already read get `terminated`, nothing
    /// more is read.
    fn drain_read_lines(&mut self) {
        let why = self.stop.reason().unwrap_or("stopped").to_string();
        loop {
            match self.lines.try_recv() {
                Ok(Line::Data(lineno, _) | Line::TooLong(lineno, _)) => {
                    let index = self.next_index;
                    self.next_index += 1;
                    let e = TaskError::new(
                        ErrorKind::Terminated,
                        format!("{why} before the job on input line {lineno} was sent"),
                    );
                    self.finish(index, Err(e));
                }
                Ok(Line::End) => break,
                Ok(Line::Error(..)) | Err(_) => {
                    self.stopped_early = true;
                    break;
                }
            }
        }
        self.input_done = true;
    }

    /// The task message for one input line, or the line's error.
    fn message(&self, lineno: u64, line: &[u8]) -> Result<NewTask, TaskError> {
        // Debug builds only: the hook that proves a panic in the producer
        // loop ends the process instead of hanging it (C9).
        if cfg!(debug_assertions) && std::env::var_os(TEST_PANIC_ENV).is_some() {
            panic!("test hook: {TEST_PANIC_ENV}");
        }
        let parsed = input::parse_line(lineno, line)?;
        let Some(task) = parsed.task.or_else(|| self.b.default_task.clone()) else {
            return Err(TaskError::new(
                ErrorKind::UnknownTask,
                "no task given: pass --task NAME, or write the line as \
                 {\"task\": \"NAME\", \"args\": [...]}",
            ));
        };
        let args: Vec<Value> = serde_json::from_slice(&parsed.args).map_err(|e| {
            TaskError::new(
                ErrorKind::BadArgs,
                format!("line {lineno}: the arguments are not a JSON array: {e}"),
            )
        })?;
        let mut opts = self.b.options.clone();
        if parsed.limits.hard.is_some() {
            opts.time_limit = parsed.limits.hard;
        }
        if parsed.limits.soft.is_some() {
            opts.soft_time_limit = parsed.limits.soft;
        }
        // The flags were range-checked by their parser and a line's limits
        // by Limits::parse_field; what the client still refuses is this
        // line's error, never a panic or a silently dropped option (C9).
        opts.message(&task, args, self.b.kwargs.clone())
            .map_err(|e| TaskError::new(ErrorKind::BadArgs, format!("line {lineno}: {e}")))
    }

    /// Sends `jobs` (subscribing to their results first).
    fn send(&mut self, jobs: Vec<(u64, NewTask)>) {
        if jobs.is_empty() {
            return;
        }
        let (indexes, mut msgs): (Vec<u64>, Vec<NewTask>) = jobs.into_iter().unzip();
        for m in &mut msgs {
            if m.id.is_empty() {
                m.id = billiard_host::celery::protocol::new_id();
            }
        }
        if let Some(w) = self.waiter.as_mut() {
            if let Err(e) = w.watch(msgs.iter().map(|m| m.id.clone())) {
                self.refused |= refusal(&e);
                self.lose(&indexes, &format!("cannot subscribe to the results: {e}"));
                return;
            }
        }
        if let Err(e) = self.client.send_many(&mut msgs) {
            self.refused |= refusal(&e);
            self.lose(&indexes, &format!("cannot send the job: {e}"));
            return;
        }
        self.last_activity = Instant::now();
        for (index, m) in indexes.into_iter().zip(msgs) {
            if self.waiter.is_some() {
                self.ids.insert(m.id, index);
                self.slots.insert(index, Slot::Sent);
            } else {
                let line = format!("{{\"index\":{index},\"id\":{}}}\n", Value::from(m.id));
                self.put(index, line.into_bytes(), None);
            }
        }
    }

    /// The broker went away: these jobs, and every later one, end
    /// `terminated`; the input is not read further.
    fn lose(&mut self, indexes: &[u64], why: &str) {
        self.lost.get_or_insert_with(|| why.to_string());
        for &index in indexes {
            self.finish(
                index,
                Err(TaskError::new(ErrorKind::Terminated, why.to_string())),
            );
        }
        self.stop.request(why);
        self.drain_read_lines();
        self.stopped_early = true;
    }

    /// Waits up to `limit` for results and writes what arrived.
    fn collect(&mut self, limit: Duration) {
        let deadline = billiard_host::bounds::saturating_deadline(Instant::now(), limit);
        loop {
            let Some(w) = self.waiter.as_mut() else {
                return;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match w.next(left.max(Duration::from_micros(1))) {
                Ok(Some((id, meta))) => {
                    if let Some(index) = self.ids.remove(&id) {
                        self.last_activity = Instant::now();
                        if self.b.forget {
                            self.forget.push(id);
                        }
                        let outcome = client::outcome(&meta)
                            .map(|v| serde_json::to_vec(&v).unwrap_or_else(|_| b"null".to_vec()));
                        self.finish(index, outcome);
                    }
                    // Take everything already there without waiting.
                    if Instant::now() >= deadline {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let why = format!("lost the result backend: {e}");
                    self.give_up(&why);
                    self.lost.get_or_insert(why);
                    break;
                }
            }
        }
        self.flush_forget(false);
    }

    /// Writes every result already arrived, without waiting for more.
    fn collect_ready(&mut self) {
        loop {
            let before = self.ids.len();
            self.collect(Duration::ZERO);
            if self.ids.is_empty() || self.ids.len() == before || self.lost.is_some() {
                break;
            }
        }
    }

    /// Every job still awaiting its result ends `terminated` with `why`
    /// and its task id (to look its result up later).
    fn give_up(&mut self, why: &str) {
        let mut waiting: Vec<(u64, String)> = self.ids.drain().map(|(id, i)| (i, id)).collect();
        waiting.sort_unstable();
        for (index, id) in waiting {
            let msg = format!("{why} (task {id} may still be queued or running)");
            self.finish(index, Err(TaskError::new(ErrorKind::Terminated, msg)));
        }
        if !self.input_done {
            self.stop.request(why);
            self.drain_read_lines();
            self.stopped_early = true;
        }
    }

    /// Once no result came for [`NOTICE_AFTER`] (or half the timeout):
    /// when messages still wait in the queue's lists, nothing has taken
    /// them, so say so on stderr (once) instead of waiting in silence.
    fn notice(&mut self) {
        if self.noticed || self.b.quiet {
            return;
        }
        let after = match self.b.timeout {
            Some(t) => NOTICE_AFTER.min(t.checked_div(2).unwrap_or(t)),
            None => NOTICE_AFTER,
        };
        if self.last_activity.elapsed() < after {
            return;
        }
        self.noticed = true;
        let queue = self
            .b
            .options
            .queue
            .as_deref()
            .unwrap_or(billiard_host::celery::protocol::DEFAULT_QUEUE);
        match self.client.queued(queue) {
            Ok(0) => {}
            Ok(n) => eprintln!(
                "note: no result for {} and {n} message(s) still wait in queue `{queue}`: \
                 nothing has taken them. Is a worker consuming it (`billiard-host worker \
                 ... -Q {queue}`, `celery worker -Q {queue}`)? Still waiting{}.",
                humantime::format_duration(after),
                match self.b.timeout {
                    Some(t) => format!(" (--timeout {})", humantime::format_duration(t)),
                    None => " (Ctrl-C stops)".to_string(),
                }
            ),
            Err(e) => tracing::debug!("cannot look at queue {queue}: {e}"),
        }
    }

    fn flush_forget(&mut self, all: bool) {
        if self.forget.is_empty() || (!all && self.forget.len() < CHUNK) {
            return;
        }
        let ids = std::mem::take(&mut self.forget);
        if let Some(w) = self.waiter.as_mut() {
            if let Err(e) = w.forget(&ids) {
                tracing::warn!("cannot delete {} read results: {e}", ids.len());
            }
        }
    }

    /// Job `index` has its outcome: render its line.
    fn finish(&mut self, index: u64, outcome: billiard_host::Outcome) {
        let (line, failed) = output::render(index, &outcome);
        self.put(index, line, failed);
    }

    /// Writes job `index`'s line now (unordered) or when its turn comes.
    fn put(&mut self, index: u64, line: Vec<u8>, failed: Option<ErrorKind>) {
        if self.b.unordered {
            self.slots.remove(&index);
            self.write(&line, failed);
            return;
        }
        self.slots.insert(index, Slot::Done(line, failed));
        while let Some(entry) = self.slots.first_entry() {
            if *entry.key() != self.next_out || matches!(entry.get(), Slot::Sent) {
                break;
            }
            if let Slot::Done(line, failed) = entry.remove() {
                self.write(&line, failed);
            }
            self.next_out += 1;
        }
    }

    fn write(&mut self, line: &[u8], failed: Option<ErrorKind>) {
        if self.write_error.is_some() {
            return;
        }
        self.progress.record(failed);
        if let Err(e) = self.output.write_line(line, failed) {
            // Nobody reads the results any more: stop.
            self.stop.request("the output was closed");
            self.write_error = Some(e);
        }
    }
}
