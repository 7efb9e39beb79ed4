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
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use billiard_host::{Codec, ErrorKind, JobHead, JobSource, Limits, Pool, TaskError, TaskRef};
use crossbeam_channel::{Receiver, Sender};
use serde::Deserialize;

use super::signals::Stop;

/// Lines in flight between the reader thread and the pool.
const READ_AHEAD: usize = 1024;

/// What the reader thread sends.
pub enum Line {
    /// A non-blank line and its 1-based line number.
    Data(u64, Vec<u8>),
    /// A line longer than the input's line limit, skipped without being
    /// read whole: the error that stands as its job's outcome
    /// ([`too_long`]).
    TooLong(u64, TaskError),
    /// Reading failed at this line.
    Error(u64, std::io::Error),
    /// The end of the input.
    End,
}

/// The one job of `--args JSON`: an array needs `--task`, an object may
/// name its task (`run`, `run --broker` and `submit`).
pub fn one_job(args: &str, task: Option<&str>) -> Result<Vec<u8>, String> {
    if task.is_none() && !args.trim_start().starts_with('{') {
        return Err(
            "--args needs --task NAME (or an object {\"task\": NAME, \"args\": [...]})".into(),
        );
    }
    Ok(args.as_bytes().to_vec())
}

/// Opens `--input PATH` (`-`: standard input) before any worker starts or
/// any job is sent: a file that cannot be opened, or a directory (opening
/// one works; reading it fails later, far from the path), is a usage error
/// now. Returns the reader and the file's path (to count its lines for the
/// progress bar), `None` for standard input.
#[allow(clippy::type_complexity)]
pub fn open_jobs(path: &Path) -> Result<(Box<dyn Read + Send>, Option<PathBuf>), String> {
    if path.as_os_str() == "-" {
        return Ok((Box::new(std::io::stdin()), None));
    }
    match std::fs::File::open(path) {
        Ok(f) if f.metadata().is_ok_and(|m| m.is_dir()) => Err(format!(
            "cannot read {}: it is a directory, not a file of jobs",
            path.display()
        )),
        Ok(f) => Ok((Box::new(f), Some(path.to_path_buf()))),
        Err(e) => Err(format!("cannot open {}: {e}", path.display())),
    }
}

/// The longest input line [`spawn_reader`] reads, in bytes: the pool's
/// default frame limit, since a longer line could never be sent as a job.
pub fn default_max_line() -> usize {
    billiard_host::PoolConfig::default().max_frame
}

/// The outcome of input line `lineno`, `bytes` long, which is longer than
/// `max` and was skipped (read and dropped up to its newline, never held
/// whole: memory stays flat whatever the input holds).
pub fn too_long(lineno: u64, bytes: u64, max: usize) -> TaskError {
    TaskError::new(
        ErrorKind::BadArgs,
        format!(
            "line {lineno}: the line takes {bytes} bytes, over the frame limit of {max} bytes; \
             it was skipped unread"
        ),
    )
}

/// Starts the reader thread, with lines of at most [`default_max_line`]
/// bytes (see [`spawn_reader_capped`]).
pub fn spawn_reader(src: Box<dyn BufRead + Send>, stop: Arc<Stop>) -> Receiver<Line> {
    spawn_reader_capped(src, stop, default_max_line())
}

/// Starts the reader thread. A line longer than `max_line` bytes is read
/// past (up to its newline, without keeping it) and sent as
/// [`Line::TooLong`]. Detached on purpose: it may be blocked in `read` on a
/// terminal or a pipe when the batch ends.
pub fn spawn_reader_capped(
    mut src: Box<dyn BufRead + Send>,
    stop: Arc<Stop>,
    max_line: usize,
) -> Receiver<Line> {
    let (tx, rx) = crossbeam_channel::bounded::<Line>(READ_AHEAD);
    let cap = u64::try_from(max_line).unwrap_or(u64::MAX);
    std::thread::Builder::new()
        .name("billiard-input".into())
        .spawn(move || {
            let mut lineno = 0u64;
            while !stop.is_set() {
                let mut buf = Vec::new();
                // At most one byte past the cap is kept: enough to know the
                // line is too long.
                let read = src
                    .by_ref()
                    .take(cap.saturating_add(1))
                    .read_until(b'\n', &mut buf);
                let msg = match read {
                    Ok(0) => Line::End,
                    Ok(_) if buf.len() > max_line && buf.last() != Some(&b'\n') => {
                        lineno += 1;
                        match skip_line(&mut *src, buf.len() as u64) {
                            Ok(bytes) => Line::TooLong(lineno, too_long(lineno, bytes, max_line)),
                            Err(e) => Line::Error(lineno, e),
                        }
                    }
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
                let last = matches!(msg, Line::End | Line::Error(..));
                if tx.send(msg).is_err() || last {
                    break;
                }
            }
        })
        .expect("cannot start the input thread");
    rx
}

/// Reads past the rest of a line (up to and including its newline, or the
/// end) without keeping it; returns the line's length in bytes, `seen`
/// already read included (the newline not counted).
fn skip_line(src: &mut dyn BufRead, mut seen: u64) -> std::io::Result<u64> {
    loop {
        let chunk = match src.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(seen);
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(at) => {
                src.consume(at + 1);
                return Ok(seen.saturating_add(at as u64));
            }
            None => {
                let n = chunk.len();
                src.consume(n);
                seen = seen.saturating_add(n as u64);
            }
        }
    }
}

/// The channel of a single job (`--args`).
pub fn one_line(line: Vec<u8>) -> Receiver<Line> {
    let (tx, rx) = crossbeam_channel::bounded(2);
    let _ = tx.send(Line::Data(1, line));
    let _ = tx.send(Line::End);
    rx
}

/// Lines the batch reader hands over per message, at most (and bytes of
/// lines, at most; a longer line travels alone): one channel hand-off (and
/// wake-up) per batch, not per line. [`BATCHES_AHEAD`] messages wait in the
/// channel, so at most 16,384 lines were read and not yet handed to the
/// pool (they end `terminated` on a first SIGINT).
const BATCH_LINES: usize = 4096;
const BATCH_BYTES: usize = 1 << 20;
const BATCHES_AHEAD: usize = 4;
/// What the batch reader asks the input for per `read`.
const READ_SIZE: usize = 1 << 20;
/// A `read` asks for at least this much (the buffer is compacted or grown).
const MIN_READ: usize = 64 * 1024;

/// Non-blank input lines read together: their bytes back to back (without
/// the newline), and each line's number and end offset.
#[derive(Default)]
pub struct LineBatch {
    buf: Vec<u8>,
    lines: Vec<(u64, usize)>,
    /// The lines (by index in `lines`, ascending) that were longer than
    /// `max_line` and skipped unread, with their length; they hold no bytes.
    too_long: Vec<(usize, u64)>,
    max_line: usize,
}

impl LineBatch {
    /// Line `lineno`, `bytes` long, was over the limit and skipped.
    fn push_too_long(&mut self, lineno: u64, bytes: u64, max_line: usize) {
        self.too_long.push((self.lines.len(), bytes));
        self.max_line = max_line;
        self.lines.push((lineno, self.buf.len()));
    }

    /// The error standing for line `i`, if it was too long.
    fn too_long_error(&self, i: usize) -> Option<TaskError> {
        let at = self.too_long.binary_search_by_key(&i, |(j, _)| *j).ok()?;
        Some(too_long(
            self.lines[i].0,
            self.too_long[at].1,
            self.max_line,
        ))
    }

    fn push(&mut self, lineno: u64, line: &[u8]) {
        if self.lines.capacity() == 0 {
            self.lines.reserve(BATCH_LINES);
            self.buf
                .reserve(line.len().saturating_mul(BATCH_LINES).min(BATCH_BYTES));
        }
        self.buf.extend_from_slice(line);
        self.lines.push((lineno, self.buf.len()));
    }

    fn is_full(&self) -> bool {
        self.lines.len() >= BATCH_LINES || self.buf.len() >= BATCH_BYTES
    }

    /// Line `i`: its number and bytes.
    fn line(&self, i: usize) -> (u64, &[u8]) {
        let start = if i == 0 { 0 } else { self.lines[i - 1].1 };
        let (lineno, end) = self.lines[i];
        (lineno, &self.buf[start..end])
    }
}

/// What the batch reader sends.
pub enum Batch {
    Lines(LineBatch),
    /// Reading failed at this line.
    Error(u64, std::io::Error),
    /// The end of the input.
    End,
}

/// Starts the reader thread of `run`: like [`spawn_reader_capped`], but it
/// reads big blocks and hands over up to [`BATCH_LINES`] lines per
/// message, and every line it has as soon as a `read` returns (a quiet
/// pipe's line is not held back). A line longer than `max_line` bytes is
/// read past without being kept and stands as a `bad_args` job
/// ([`too_long`]): the buffer never grows past `max_line` and a read, so
/// memory stays flat for any input. Detached on purpose, like
/// `spawn_reader`.
pub fn spawn_batch_reader(
    src: Box<dyn Read + Send>,
    stop: Arc<Stop>,
    max_line: usize,
) -> Receiver<Batch> {
    let (tx, rx) = crossbeam_channel::bounded::<Batch>(BATCHES_AHEAD);
    std::thread::Builder::new()
        .name("billiard-input".into())
        .spawn(move || read_batches(src, &tx, &stop, max_line))
        .expect("cannot start the input thread");
    rx
}

fn read_batches(mut src: Box<dyn Read + Send>, tx: &Sender<Batch>, stop: &Stop, max_line: usize) {
    let mut buf = vec![0u8; READ_SIZE.min(max_line.saturating_add(MIN_READ))];
    // The bytes not yet split into lines: buf[start..filled].
    let (mut start, mut filled) = (0usize, 0usize);
    let mut lineno = 0u64;
    let mut batch = LineBatch::default();
    // Skipping the rest of a line over `max_line`: its number and the
    // bytes seen so far.
    let mut skipping: Option<(u64, u64)> = None;
    // Hands a line over (BOM and blank lines handled as `spawn_reader`
    // does); false once nobody listens or a stop was requested.
    let line = |lineno: u64, mut bytes: &[u8], batch: &mut LineBatch| -> bool {
        // A UTF-8 byte-order mark some editors write at the start of a
        // file is not part of the first job.
        if lineno == 1 && bytes.starts_with(b"\xEF\xBB\xBF") {
            bytes = &bytes[3..];
        }
        if bytes.trim_ascii().is_empty() {
            return true;
        }
        batch.push(lineno, bytes);
        !batch.is_full() || send(tx, stop, batch)
    };
    loop {
        if stop.is_set() {
            return;
        }
        if buf.len() - filled < MIN_READ {
            if start > 0 {
                buf.copy_within(start..filled, 0);
                (filled, start) = (filled - start, 0);
            }
            if buf.len() - filled < MIN_READ {
                // A line longer than the buffer (and at most `max_line`:
                // a longer one is skipped below), so never past
                // `max_line` and one read.
                let len = buf.len().saturating_mul(2);
                let len = len.min(max_line.saturating_add(MIN_READ).saturating_add(1));
                buf.resize(len.max(filled.saturating_add(MIN_READ)), 0);
            }
        }
        let n = match src.read(&mut buf[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if send(tx, stop, &mut batch) {
                    let _ = tx.send(Batch::Error(lineno + 1, e));
                }
                return;
            }
        };
        if n == 0 {
            if let Some((at, bytes)) = skipping.take() {
                batch.push_too_long(at, bytes, max_line);
            }
            // The end; a last line without a newline is a line.
            if start < filled {
                lineno += 1;
                if filled - start > max_line {
                    batch.push_too_long(lineno, (filled - start) as u64, max_line);
                } else if !line(lineno, &buf[start..filled], &mut batch) {
                    return;
                }
            }
            if send(tx, stop, &mut batch) {
                let _ = tx.send(Batch::End);
            }
            return;
        }
        // Only the new bytes can hold a newline.
        let mut scan = filled;
        filled += n;
        if let Some((at, bytes)) = skipping {
            // The rest of a line over the limit: dropped up to its newline.
            match buf[scan..filled].iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    skipping = None;
                    batch.push_too_long(at, bytes.saturating_add(nl as u64), max_line);
                    if batch.is_full() && !send(tx, stop, &mut batch) {
                        return;
                    }
                    start = scan + nl + 1;
                    scan = start;
                }
                None => {
                    skipping = Some((at, bytes.saturating_add(n as u64)));
                    (start, filled) = (0, 0);
                    continue;
                }
            }
        }
        while let Some(at) = buf[scan..filled].iter().position(|&b| b == b'\n') {
            let end = scan + at;
            lineno += 1;
            if end - start > max_line {
                // Whole in the buffer, but over the limit all the same.
                batch.push_too_long(lineno, (end - start) as u64, max_line);
                if batch.is_full() && !send(tx, stop, &mut batch) {
                    return;
                }
            } else if !line(lineno, &buf[start..end], &mut batch) {
                return;
            }
            start = end + 1;
            scan = start;
        }
        if filled - start > max_line {
            // The line being read is already over the limit: it is
            // skipped from here, never held whole.
            lineno += 1;
            skipping = Some((lineno, (filled - start) as u64));
            (start, filled) = (0, 0);
        }
        if !send(tx, stop, &mut batch) {
            return;
        }
        if start == filled {
            (start, filled) = (0, 0);
        }
    }
}

/// Sends the batch (if it holds a line); false once nobody listens or a
/// stop was requested (the lines in hand are then not handed over).
fn send(tx: &Sender<Batch>, stop: &Stop, batch: &mut LineBatch) -> bool {
    if batch.lines.is_empty() {
        return true;
    }
    if stop.is_set() {
        return false;
    }
    tx.send(Batch::Lines(std::mem::take(batch))).is_ok()
}

/// The batch channel of a single job (`--args`).
pub fn one_batch(line: Vec<u8>) -> Receiver<Batch> {
    let (tx, rx) = crossbeam_channel::bounded(2);
    let mut batch = LineBatch::default();
    batch.push(1, &line);
    let _ = tx.send(Batch::Lines(batch));
    let _ = tx.send(Batch::End);
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

/// The jobs of the input, in order; see the module docs. A [`JobSource`]
/// that says when its input is quiet ([`JobSource::poll_job`]: no line
/// within [`QUIET`]), for [`Pool::imap_fed`].
pub struct Jobs<'p> {
    pool: &'p Pool,
    lines: Receiver<Batch>,
    /// The batch being handed out, and its next line.
    batch: LineBatch,
    next_line: usize,
    stop: Arc<Stop>,
    default_task: Option<String>,
    /// `--task`, looked up once.
    default_ref: Option<Result<TaskRef, TaskError>>,
    tasks: HashMap<String, Result<TaskRef, TaskError>>,
    report: Arc<Mutex<InputReport>>,
    /// Stopping: lines already read end `terminated`, nothing more is read.
    draining: bool,
    done: bool,
    /// Jobs handed out so far: the next job's index.
    produced: u64,
    /// The input line of each job in flight, when asked for.
    line_numbers: Option<LineNumbers>,
    /// Blank lines skipped before the last job (see [`LineNumbers`]).
    skipped: u64,
    /// Called before waiting for the input (see [`Jobs::on_wait`]).
    on_wait: Option<Box<dyn Fn() + Send + Sync + 'p>>,
    /// Raised while waiting for the input.
    waiting: Arc<AtomicBool>,
}

impl<'p> Jobs<'p> {
    pub fn new(
        pool: &'p Pool,
        lines: Receiver<Batch>,
        stop: Arc<Stop>,
        default_task: Option<String>,
    ) -> (Self, Arc<Mutex<InputReport>>) {
        let report = Arc::new(Mutex::new(InputReport::default()));
        let jobs = Jobs {
            pool,
            lines,
            batch: LineBatch::default(),
            next_line: 0,
            stop,
            default_task,
            default_ref: None,
            tasks: HashMap::new(),
            report: report.clone(),
            draining: false,
            done: false,
            produced: 0,
            line_numbers: None,
            skipped: 0,
            on_wait: None,
            waiting: Arc::default(),
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

    /// The default task (`--task`), looked up on first use only.
    fn resolve_default(&mut self) -> Result<TaskRef, TaskError> {
        if let Some(r) = &self.default_ref {
            return r.clone();
        }
        let r = self.resolve(None);
        self.default_ref = Some(r.clone());
        r
    }

    fn terminated(&self, lineno: u64) -> TaskError {
        let why = self.stop.reason().unwrap_or("stopped");
        TaskError::new(
            ErrorKind::Terminated,
            format!("{why} before the job on input line {lineno} started"),
        )
    }

    /// The job of line `i` of the current batch, its arguments appended to
    /// `args` (nothing appended on an error).
    fn job(&mut self, i: usize, args: &mut Vec<u8>) -> Result<JobHead, TaskError> {
        if let Some(e) = self.batch.too_long_error(i) {
            return Err(e);
        }
        let batch = std::mem::take(&mut self.batch);
        let (lineno, line) = batch.line(i);
        let start = args.len();
        let parsed = parse_into(lineno, line, args);
        self.batch = batch;
        let (task, limits) = parsed?;
        let target = match task {
            None => self.resolve_default(),
            Some(name) => self.resolve(Some(&name)),
        };
        match target {
            Ok(target) => Ok(JobHead {
                target,
                codec: Codec::Json,
                limits,
            }),
            Err(e) => {
                args.truncate(start);
                Err(e)
            }
        }
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
    let mut args = Vec::new();
    let (task, limits) = parse_into(lineno, line, &mut args)?;
    Ok(LineJob { task, args, limits })
}

/// [`parse_line`], appending the arguments (a JSON array) to `args` and
/// returning the task the line names and its limits. The line is parsed
/// once: an array line is appended as it is (the plugin's glue decodes and
/// judges it, in the worker), an object line is parsed into its fields.
/// Nothing is appended on an error.
pub fn parse_into(
    lineno: u64,
    line: &[u8],
    args: &mut Vec<u8>,
) -> Result<(Option<String>, Limits), TaskError> {
    let line = line.trim_ascii();
    let bad = |msg: String| TaskError::new(ErrorKind::BadArgs, format!("line {lineno}: {msg}"));
    if std::str::from_utf8(line).is_err() {
        return Err(bad("not valid UTF-8".into()));
    }
    match line.first() {
        // The plugin's glue decodes (and judges) the array itself.
        Some(b'[') => {
            args.extend_from_slice(line);
            Ok((None, Limits::default()))
        }
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
            let start = args.len();
            match obj.args {
                None => args.extend_from_slice(b"[]"),
                Some(v @ serde_json::Value::Array(_)) => {
                    if let Err(e) = serde_json::to_writer(&mut *args, &v) {
                        args.truncate(start);
                        return Err(bad(e.to_string()));
                    }
                }
                Some(_) => return Err(bad("\"args\" must be a JSON array".into())),
            }
            let limits = (|| {
                Ok(Limits {
                    soft: duration_field(obj.soft_time_limit.as_ref(), "soft_time_limit")?,
                    hard: duration_field(obj.time_limit.as_ref(), "time_limit")?,
                })
            })()
            .map_err(|e: String| {
                args.truncate(start);
                bad(e)
            })?;
            Ok((obj.task, limits))
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
        Some(serde_json::Value::String(s)) => Limits::parse_field(s, field).map(Some),
        Some(other) => Err(format!(
            "\"{field}\": expected a duration string (e.g. \"500ms\", \"2s\"), got {other}"
        )),
    }
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
    /// The next job (its arguments appended to the caller's buffer), or the
    /// error standing in its place.
    Job(Result<JobHead, TaskError>),
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

    /// The next job, its arguments appended to `args`; see
    /// [`Jobs::pull_line`].
    pub fn pull(&mut self, wait: bool, args: &mut Vec<u8>) -> Pull {
        let (pulled, lineno) = self.pull_line(wait, args);
        if let Pull::Job(job) = &pulled {
            if let (Ok(_), Some(map), Some(lineno)) = (job, &self.line_numbers, lineno) {
                map.record(self.produced, lineno, &mut self.skipped);
            }
            self.produced += 1;
        }
        pulled
    }

    /// The next job and its input line. With `wait`, blocks until a line
    /// (or the end, or a stop) arrives; without, gives up after [`QUIET`]
    /// so that the caller can deliver results meanwhile.
    fn pull_line(&mut self, wait: bool, args: &mut Vec<u8>) -> (Pull, Option<u64>) {
        loop {
            if self.done {
                return (Pull::End, None);
            }
            if !self.draining && self.stop.is_set() {
                self.draining = true;
            }
            if self.next_line < self.batch.lines.len() {
                let i = self.next_line;
                self.next_line += 1;
                let lineno = self.batch.lines[i].0;
                if self.draining {
                    // Lines already read end `terminated`.
                    return (Pull::Job(Err(self.terminated(lineno))), Some(lineno));
                }
                return (Pull::Job(self.job(i, args)), Some(lineno));
            }
            if self.draining {
                // No more lines are read; those already read end `terminated`.
                match self.lines.try_recv() {
                    Ok(Batch::Lines(batch)) => {
                        (self.batch, self.next_line) = (batch, 0);
                        continue;
                    }
                    Ok(Batch::End) => {}
                    Ok(Batch::Error(..)) | Err(_) => {
                        self.report_mut().stopped_early = true;
                    }
                }
                self.done = true;
                return (Pull::End, None);
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
                        self.waiting.store(true, Ordering::SeqCst);
                        if let Some(f) = &self.on_wait {
                            f();
                        }
                        crossbeam_channel::never()
                    } else {
                        crossbeam_channel::after(QUIET)
                    };
                    let got = crossbeam_channel::select! {
                        recv(self.lines) -> msg => Some(msg.map_err(drop)),
                        recv(self.stop.woken()) -> _ => None,
                        recv(timeout) -> _ => return (Pull::Quiet, None),
                    };
                    self.waiting.store(false, Ordering::SeqCst);
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
                Ok(Batch::Lines(batch)) => (self.batch, self.next_line) = (batch, 0),
                Ok(Batch::Error(lineno, e)) => {
                    self.report_mut().read_error =
                        Some(format!("cannot read input line {lineno}: {e}"));
                    self.done = true;
                }
                Ok(Batch::End) | Err(()) => self.done = true,
            }
        }
    }

    fn report_mut(&self) -> std::sync::MutexGuard<'_, InputReport> {
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<'p> Jobs<'p> {
    /// Calls `f` each time before the input is waited for (`run`: flush
    /// the results written, a client may wait for them before it sends
    /// the next line); returns the flag raised while it is waited for.
    pub fn on_wait(&mut self, f: impl Fn() + Send + Sync + 'p) -> Arc<AtomicBool> {
        self.on_wait = Some(Box::new(f));
        self.waiting.clone()
    }
}

impl JobSource for Jobs<'_> {
    fn next_job(&mut self, args: &mut Vec<u8>) -> Option<Result<JobHead, TaskError>> {
        match self.pull(true, args) {
            Pull::Job(job) => Some(job),
            Pull::Quiet | Pull::End => None,
        }
    }

    fn poll_job(&mut self, args: &mut Vec<u8>) -> Poll<Option<Result<JobHead, TaskError>>> {
        match self.pull(false, args) {
            Pull::Job(job) => Poll::Ready(Some(job)),
            Pull::Quiet => Poll::Pending,
            Pull::End => Poll::Ready(None),
        }
    }
}
