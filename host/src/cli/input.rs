//! Job input for `run`: one job per line, read lazily on a thread of its
//! own (so a stop request is seen even while the input blocks), parsed into
//! [`RawJob`]s for [`Pool::imap_raw`].
//!
//! A line is either a JSON array of arguments for the default task (`[3]`)
//! or an object `{"task": "add", "args": [1, 2], "time_limit": "2s",
//! "soft_time_limit": "500ms"}` (every field optional). Blank lines are
//! skipped and get no index; every other line is one job and gets exactly
//! one result, a line that cannot be a job included (`bad_args`,
//! `unknown_task`).

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use billiard_host::{Codec, ErrorKind, Limits, Pool, RawJob, TaskError, TaskRef};
use crossbeam_channel::Receiver;
use serde::Deserialize;

use super::signals::Stop;

/// Lines in flight between the reader thread and the pool.
const READ_AHEAD: usize = 1024;

/// What the reader thread sends.
pub enum Line {
    /// A non-blank line and its 1-based line number.
    Data(u64, Vec<u8>),
    /// Reading failed at this line.
    Error(u64, std::io::Error),
    /// The end of the input.
    End,
}

/// Starts the reader thread. It is detached on purpose: it may be blocked
/// in `read` on a terminal or a pipe when the batch ends.
pub fn spawn_reader(mut src: Box<dyn BufRead + Send>, stop: Arc<Stop>) -> Receiver<Line> {
    let (tx, rx) = crossbeam_channel::bounded::<Line>(READ_AHEAD);
    std::thread::Builder::new()
        .name("billiard-input".into())
        .spawn(move || {
            let mut lineno = 0u64;
            while !stop.is_set() {
                let mut buf = Vec::new();
                let msg = match src.read_until(b'\n', &mut buf) {
                    Ok(0) => Line::End,
                    Ok(_) => {
                        lineno += 1;
                        // A UTF-8 byte-order mark some editors write at the
                        // start of a file is not part of the first job.
                        if lineno == 1 && buf.starts_with(b"\xEF\xBB\xBF") {
                            buf.drain(..3);
                        }
                        if buf.trim_ascii().is_empty() {
                            continue;
                        }
                        Line::Data(lineno, buf)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => Line::Error(lineno + 1, e),
                };
                let last = !matches!(msg, Line::Data(..));
                if tx.send(msg).is_err() || last {
                    break;
                }
            }
        })
        .expect("cannot start the input thread");
    rx
}

/// The channel of a single job (`--args`).
pub fn one_line(line: Vec<u8>) -> Receiver<Line> {
    let (tx, rx) = crossbeam_channel::bounded(2);
    let _ = tx.send(Line::Data(1, line));
    let _ = tx.send(Line::End);
    rx
}

/// How reading the input ended.
#[derive(Debug, Default)]
pub struct InputReport {
    /// A stop request ended the input before its end.
    pub stopped_early: bool,
    /// Reading failed (the message says where and why).
    pub read_error: Option<String>,
}

/// The jobs of the input, in order; see the module docs. [`Jobs::pull`]
/// hands them out, waiting for the input or not (`run`'s segments, see
/// `stream_results` in `run.rs`).
pub struct Jobs<'p> {
    pool: &'p Pool,
    lines: Receiver<Line>,
    stop: Arc<Stop>,
    default_task: Option<String>,
    tasks: HashMap<String, Result<TaskRef, TaskError>>,
    report: Arc<Mutex<InputReport>>,
    /// Stopping: lines already read end `terminated`, nothing more is read.
    draining: bool,
    done: bool,
    /// Jobs handed out so far: the next job's index.
    produced: u64,
    /// The input line of the job `pull_line` just returned.
    lineno: Option<u64>,
    /// The input line of each job in flight, when asked for.
    line_numbers: Option<LineNumbers>,
    /// Blank lines skipped before the last job (see [`LineNumbers`]).
    skipped: u64,
}

impl<'p> Jobs<'p> {
    pub fn new(
        pool: &'p Pool,
        lines: Receiver<Line>,
        stop: Arc<Stop>,
        default_task: Option<String>,
    ) -> (Self, Arc<Mutex<InputReport>>) {
        let report = Arc::new(Mutex::new(InputReport::default()));
        let jobs = Jobs {
            pool,
            lines,
            stop,
            default_task,
            tasks: HashMap::new(),
            report: report.clone(),
            draining: false,
            done: false,
            produced: 0,
            lineno: None,
            line_numbers: None,
            skipped: 0,
        };
        (jobs, report)
    }

    fn resolve(&mut self, name: Option<&str>) -> Result<TaskRef, TaskError> {
        let Some(name) = name.or(self.default_task.as_deref()) else {
            return Err(TaskError::new(
                ErrorKind::UnknownTask,
                "no task given: pass --task NAME, or write the line as \
                 {\"task\": \"NAME\", \"args\": [...]}",
            ));
        };
        if let Some(r) = self.tasks.get(name) {
            return r.clone();
        }
        let r = self.pool.find_task(name);
        self.tasks.insert(name.to_string(), r.clone());
        r
    }

    fn terminated(&self, lineno: u64) -> TaskError {
        let why = self.stop.reason().unwrap_or("stopped");
        TaskError::new(
            ErrorKind::Terminated,
            format!("{why} before the job on input line {lineno} started"),
        )
    }

    fn job(&mut self, lineno: u64, line: &[u8]) -> Result<RawJob, TaskError> {
        let parsed = parse_line(lineno, line)?;
        let target = self.resolve(parsed.task.as_deref())?;
        let mut job = RawJob::new(target, Codec::Json, parsed.args);
        job.limits = parsed.limits;
        Ok(job)
    }
}

/// One input line's job before its task is looked up (`run` looks it up in
/// the pool, `run --broker` sends it by name).
pub struct LineJob {
    /// The task the line names; `None`: the default (`--task`).
    pub task: Option<String>,
    /// The arguments, a JSON array (an array line as is: the plugin's glue
    /// judges it).
    pub args: Vec<u8>,
    pub limits: Limits,
}

/// Parses input line `lineno` (see the module docs); a line that cannot be
/// a job is a `bad_args` error naming the line.
pub fn parse_line(lineno: u64, line: &[u8]) -> Result<LineJob, TaskError> {
    let line = line.trim_ascii();
    let bad = |msg: String| TaskError::new(ErrorKind::BadArgs, format!("line {lineno}: {msg}"));
    if std::str::from_utf8(line).is_err() {
        return Err(bad("not valid UTF-8".into()));
    }
    match line.first() {
        // The plugin's glue decodes (and judges) the array itself.
        Some(b'[') => Ok(LineJob {
            task: None,
            args: line.to_vec(),
            limits: Limits::default(),
        }),
        Some(b'{') => {
            let obj: JobLine = serde_json::from_slice(line).map_err(|e| {
                // The position is in this input line: "line 3, column 31:",
                // not serde_json's "at line 1 column 31".
                let msg = e.to_string();
                let at = format!(" at line {} column {}", e.line(), e.column());
                match msg.strip_suffix(&at) {
                    Some(msg) if e.line() == 1 => TaskError::new(
                        ErrorKind::BadArgs,
                        format!("line {lineno}, column {}: {msg}", e.column()),
                    ),
                    _ => bad(msg),
                }
            })?;
            let args = match obj.args {
                None => b"[]".to_vec(),
                Some(v @ serde_json::Value::Array(_)) => {
                    serde_json::to_vec(&v).map_err(|e| bad(e.to_string()))?
                }
                Some(_) => return Err(bad("\"args\" must be a JSON array".into())),
            };
            let limits = Limits {
                soft: duration_field(obj.soft_time_limit.as_ref(), "soft_time_limit")
                    .map_err(bad)?,
                hard: duration_field(obj.time_limit.as_ref(), "time_limit").map_err(bad)?,
            };
            Ok(LineJob {
                task: obj.task,
                args,
                limits,
            })
        }
        _ => Err(bad(
            "expected a JSON array of arguments (like [3]) or an object \
             {\"task\": \"NAME\", \"args\": [...]}"
                .into(),
        )),
    }
}

/// An object line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobLine {
    task: Option<String>,
    args: Option<serde_json::Value>,
    // Values, not strings: a limit of the wrong type is reported by name.
    time_limit: Option<serde_json::Value>,
    soft_time_limit: Option<serde_json::Value>,
}

/// A limit field of an object line: a duration string.
fn duration_field(v: Option<&serde_json::Value>, field: &str) -> Result<Option<Duration>, String> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => duration(Some(s), field),
        Some(other) => Err(format!(
            "\"{field}\": expected a duration string (e.g. \"500ms\", \"2s\"), got {other}"
        )),
    }
}

/// A limit of an object line; like the `--time-limit` flags, 0 is refused
/// (a job that may not run at all is a mistake, not a limit).
pub(super) fn duration(s: Option<&str>, field: &str) -> Result<Option<Duration>, String> {
    s.map(|s| {
        let d = humantime::parse_duration(s)
            .map_err(|e| format!("\"{field}\": {e} (e.g. \"500ms\", \"2s\")"))?;
        if d.is_zero() {
            return Err(format!(
                "\"{field}\": must be longer than 0 (e.g. \"500ms\", \"2s\")"
            ));
        }
        Ok(d)
    })
    .transpose()
}

/// The input line number of each job, by index, stored compactly: a job's
/// line is `index + 1 + skipped`, where `skipped` (blank lines before it)
/// changes only after a blank line. Only those changes are recorded, so a
/// file without blank lines costs nothing per line.
#[derive(Clone, Default)]
pub struct LineNumbers(Arc<Mutex<std::collections::BTreeMap<u64, u64>>>);

/// Most changes recorded; past that, later jobs' messages go without "line N:"
/// (a pathological input must not grow memory without bound).
const MAX_LINE_NUMBER_RUNS: usize = 1 << 20;

impl LineNumbers {
    /// The input line of job `index`, if known.
    pub fn line_of(&self, index: u64) -> Option<u64> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_LINE_NUMBER_RUNS && map.range(index..).next().is_none() {
            return None;
        }
        let skipped = map.range(..=index).next_back().map_or(0, |(_, s)| *s);
        Some(index + 1 + skipped)
    }

    fn record(&self, index: u64, lineno: u64, last_skipped: &mut u64) {
        let skipped = lineno.saturating_sub(index + 1);
        if skipped != *last_skipped {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if map.len() < MAX_LINE_NUMBER_RUNS {
                map.insert(index, skipped);
            }
            *last_skipped = skipped;
        }
    }
}

/// What [`Jobs::pull`] found.
pub enum Pull {
    /// The next job (or the error standing in its place).
    Job(Result<RawJob, TaskError>),
    /// No line arrived within [`QUIET`] (only when not asked to wait).
    Quiet,
    /// The input is over (its end, a read error or a stop).
    End,
}

/// How long [`Jobs::pull`] waits for a line before it calls the input quiet.
pub const QUIET: Duration = Duration::from_millis(1);

impl Jobs<'_> {
    /// True once the input is over: every later `pull` is [`Pull::End`].
    /// From now on, records the input line of every job sent to the pool
    /// (by index) until the writer takes it back: the plugin's own
    /// `bad_args` messages then get the "line N:" the host's have.
    pub fn track_line_numbers(&mut self) -> LineNumbers {
        let map = LineNumbers::default();
        self.line_numbers = Some(map.clone());
        map
    }

    /// The next job, see [`Jobs::pull_line`].
    pub fn pull(&mut self, wait: bool) -> Pull {
        let pulled = self.pull_line(wait);
        if let Pull::Job(job) = &pulled {
            if let (Ok(_), Some(map), Some(lineno)) = (job, &self.line_numbers, self.lineno) {
                map.record(self.produced, lineno, &mut self.skipped);
            }
            self.produced += 1;
        }
        pulled
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The next job. With `wait`, blocks until a line (or the end, or a
    /// stop) arrives; without, gives up after [`QUIET`] so that the caller
    /// can deliver results meanwhile.
    fn pull_line(&mut self, wait: bool) -> Pull {
        self.lineno = None;
        loop {
            if self.done {
                return Pull::End;
            }
            if self.draining {
                // Lines already read end `terminated`; no more are read.
                match self.lines.try_recv() {
                    Ok(Line::Data(lineno, _)) => return Pull::Job(Err(self.terminated(lineno))),
                    Ok(Line::End) => {}
                    Ok(Line::Error(..)) | Err(_) => {
                        self.report_mut().stopped_early = true;
                    }
                }
                self.done = true;
                return Pull::End;
            }
            if self.stop.is_set() {
                self.draining = true;
                continue;
            }
            let msg = match self.lines.try_recv() {
                Ok(msg) => Ok(msg),
                Err(crossbeam_channel::TryRecvError::Disconnected) => Err(()),
                Err(crossbeam_channel::TryRecvError::Empty) => {
                    let timeout = if wait {
                        crossbeam_channel::never()
                    } else {
                        crossbeam_channel::after(QUIET)
                    };
                    let got = crossbeam_channel::select! {
                        recv(self.lines) -> msg => Some(msg.map_err(drop)),
                        recv(self.stop.woken()) -> _ => None,
                        recv(timeout) -> _ => return Pull::Quiet,
                    };
                    match got {
                        Some(msg) => msg,
                        None => {
                            self.draining = true;
                            continue;
                        }
                    }
                }
            };
            match msg {
                Ok(Line::Data(lineno, line)) => {
                    self.lineno = Some(lineno);
                    return Pull::Job(self.job(lineno, &line));
                }
                Ok(Line::Error(lineno, e)) => {
                    self.report_mut().read_error =
                        Some(format!("cannot read input line {lineno}: {e}"));
                    self.done = true;
                }
                Ok(Line::End) | Err(()) => self.done = true,
            }
        }
    }

    fn report_mut(&self) -> std::sync::MutexGuard<'_, InputReport> {
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }
}
