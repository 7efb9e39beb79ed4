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

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::BufRead;
use std::rc::Rc;
use std::sync::Arc;
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

/// The jobs of the input, in order; see the module docs.
pub struct Jobs<'p> {
    pool: &'p Pool,
    lines: Receiver<Line>,
    stop: Arc<Stop>,
    default_task: Option<String>,
    tasks: HashMap<String, Result<TaskRef, TaskError>>,
    report: Rc<RefCell<InputReport>>,
    /// Stopping: lines already read end `terminated`, nothing more is read.
    draining: bool,
    done: bool,
}

impl<'p> Jobs<'p> {
    pub fn new(
        pool: &'p Pool,
        lines: Receiver<Line>,
        stop: Arc<Stop>,
        default_task: Option<String>,
    ) -> (Self, Rc<RefCell<InputReport>>) {
        let report = Rc::new(RefCell::new(InputReport::default()));
        let jobs = Jobs {
            pool,
            lines,
            stop,
            default_task,
            tasks: HashMap::new(),
            report: report.clone(),
            draining: false,
            done: false,
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
        let line = line.trim_ascii();
        let bad = |msg: String| TaskError::new(ErrorKind::BadArgs, format!("line {lineno}: {msg}"));
        if std::str::from_utf8(line).is_err() {
            return Err(bad("not valid UTF-8".into()));
        }
        match line.first() {
            // The plugin's glue decodes (and judges) the array itself.
            Some(b'[') => {
                let target = self.resolve(None)?;
                Ok(RawJob::new(target, Codec::Json, line.to_vec()))
            }
            Some(b'{') => {
                let obj: JobLine = serde_json::from_slice(line).map_err(|e| bad(e.to_string()))?;
                let args = match obj.args {
                    None => b"[]".to_vec(),
                    Some(v @ serde_json::Value::Array(_)) => {
                        serde_json::to_vec(&v).map_err(|e| bad(e.to_string()))?
                    }
                    Some(_) => return Err(bad("\"args\" must be a JSON array".into())),
                };
                let limits = Limits {
                    soft: duration(obj.soft_time_limit.as_deref(), "soft_time_limit")
                        .map_err(bad)?,
                    hard: duration(obj.time_limit.as_deref(), "time_limit").map_err(bad)?,
                };
                let target = self.resolve(obj.task.as_deref())?;
                let mut job = RawJob::new(target, Codec::Json, args);
                job.limits = limits;
                Ok(job)
            }
            _ => Err(bad(
                "expected a JSON array of arguments (like [3]) or an object \
                 {\"task\": \"NAME\", \"args\": [...]}"
                    .into(),
            )),
        }
    }
}

/// An object line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobLine {
    task: Option<String>,
    args: Option<serde_json::Value>,
    time_limit: Option<String>,
    soft_time_limit: Option<String>,
}

fn duration(s: Option<&str>, field: &str) -> Result<Option<Duration>, String> {
    s.map(|s| {
        humantime::parse_duration(s)
            .map_err(|e| format!("\"{field}\": {e} (e.g. \"500ms\", \"2s\")"))
    })
    .transpose()
}

impl Iterator for Jobs<'_> {
    type Item = Result<RawJob, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            if self.draining {
                // Lines already read end `terminated`; no more are read.
                match self.lines.try_recv() {
                    Ok(Line::Data(lineno, _)) => return Some(Err(self.terminated(lineno))),
                    Ok(Line::End) => {}
                    Ok(Line::Error(..)) | Err(_) => {
                        self.report.borrow_mut().stopped_early = true;
                    }
                }
                self.done = true;
                return None;
            }
            if self.stop.is_set() {
                self.draining = true;
                continue;
            }
            crossbeam_channel::select! {
                recv(self.lines) -> msg => match msg {
                    Ok(Line::Data(lineno, line)) => return Some(self.job(lineno, &line)),
                    Ok(Line::Error(lineno, e)) => {
                        self.report.borrow_mut().read_error =
                            Some(format!("cannot read input line {lineno}: {e}"));
                        self.done = true;
                    }
                    Ok(Line::End) | Err(_) => self.done = true,
                },
                recv(self.stop.woken()) -> _ => self.draining = true,
            }
        }
    }
}
