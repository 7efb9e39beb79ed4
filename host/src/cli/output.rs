//! Result lines of `run`: `{"index":N,"ok":VALUE}` or
//! `{"index":N,"error":{"kind":KIND,"message":"..."}}`, buffered, and
//! flushed by a background thread whenever results are waiting, so a
//! reader sees each result within a fraction of a second even when the
//! next one takes minutes.

use std::collections::VecDeque;
use std::io::{BufWriter, Write};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use billiard_host::retry::Attempts;
use billiard_host::{ErrorKind, Outcome, TaskError};
use serde::Serialize;

use super::exit;
use super::progress::Progress;

/// How long a waiting result may sit in the buffer before it is flushed.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// A shared, buffered result sink.
pub struct Output {
    state: Mutex<State>,
    /// Signalled when the first unflushed line arrives, and at close.
    wake: Condvar,
}

struct State {
    w: BufWriter<Counting>,
    /// Bytes handed to `w` so far.
    accepted: u64,
    /// Lines not yet known to be written through to the file: the offset
    /// their last byte ends at, and how their job failed.
    unconfirmed: VecDeque<(u64, Option<ErrorKind>)>,
    dirty: bool,
    /// No more lines: the flusher ends.
    closed: bool,
    /// The first write error; every later write fails with its kind.
    failed: Option<std::io::ErrorKind>,
}

/// The destination, counting the bytes it took.
struct Counting {
    inner: Box<dyn Write + Send>,
    written: u64,
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl State {
    /// Forgets the lines that are through.
    fn confirm(&mut self) {
        let written = self.w.get_ref().written;
        while self
            .unconfirmed
            .front()
            .is_some_and(|&(end, _)| end <= written)
        {
            self.unconfirmed.pop_front();
        }
    }
}

impl Output {
    pub fn new(w: Box<dyn Write + Send>) -> Output {
        Output {
            state: Mutex::new(State {
                w: BufWriter::with_capacity(
                    64 * 1024,
                    Counting {
                        inner: w,
                        written: 0,
                    },
                ),
                accepted: 0,
                unconfirmed: VecDeque::new(),
                dirty: false,
                closed: false,
                failed: None,
            }),
            wake: Condvar::new(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> std::io::Result<T>) -> std::io::Result<T> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(kind) = st.failed {
            return Err(kind.into());
        }
        let r = f(&mut st);
        if let Err(e) = &r {
            st.failed = Some(e.kind());
        }
        r
    }

    /// Writes one result line; `failed` is its job's failure, kept until
    /// the line is through (see [`Output::unwritten`]).
    pub fn write_line(&self, line: &[u8], failed: Option<ErrorKind>) -> std::io::Result<()> {
        {
            // After a failed (background) flush the line is refused; it
            // still counts as not written (`unwritten`), like a line the
            // failed write cut short.
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(kind) = st.failed {
                st.unconfirmed.push_back((u64::MAX, failed));
                return Err(kind.into());
            }
        }
        let mut woke = false;
        let r = self.with(|st| {
            woke = !st.dirty;
            st.dirty = true;
            st.accepted += line.len() as u64;
            let end = st.accepted;
            st.unconfirmed.push_back((end, failed));
            let r = st.w.write_all(line);
            st.confirm();
            r
        });
        if woke {
            self.wake.notify_one();
        }
        r
    }

    /// Writes a batch of result lines at once (one lock, one write): see
    /// [`Output::write_line`].
    pub fn write_rendered(&self, batch: &Rendered) -> std::io::Result<()> {
        {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(kind) = st.failed {
                for &(_, failed) in &batch.lines {
                    st.unconfirmed.push_back((u64::MAX, failed));
                }
                return Err(kind.into());
            }
        }
        let mut woke = false;
        let r = self.with(|st| {
            woke = !st.dirty;
            st.dirty = true;
            let base = st.accepted;
            st.accepted += batch.bytes.len() as u64;
            for &(end, failed) in &batch.lines {
                st.unconfirmed.push_back((base + end as u64, failed));
            }
            let r = st.w.write_all(&batch.bytes);
            st.confirm();
            r
        });
        if woke {
            self.wake.notify_one();
        }
        r
    }

    /// Blocks while nothing waits to be flushed (so an idle `run` costs no
    /// wake-ups); false once the output is closed.
    pub fn wait_dirty(&self) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while !st.dirty && !st.closed {
            st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        !st.closed
    }

    /// Ends `wait_dirty` for good.
    pub fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.wake.notify_all();
    }

    pub fn flush(&self) -> std::io::Result<()> {
        self.with(|st| {
            st.dirty = false;
            let r = st.w.flush();
            st.confirm();
            r
        })
    }

    /// After a write error: the failures (`None` for a success) of the
    /// lines that did not get through whole.
    pub fn unwritten(&self) -> Vec<Option<ErrorKind>> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.confirm();
        st.unconfirmed.iter().map(|&(_, kind)| kind).collect()
    }

    /// Flushes if anything was written since the last flush. Errors are
    /// kept for the next `write_line` to report.
    pub fn flush_if_dirty(&self) {
        let _ = self.with(|st| {
            if st.dirty {
                st.dirty = false;
                let r = st.w.flush();
                st.confirm();
                r?;
            }
            Ok(())
        });
    }
}

#[derive(Serialize)]
struct ErrorLine<'a> {
    index: u64,
    error: &'a TaskError,
}

/// Result lines rendered back to back, and where each ends (an offset in
/// `bytes`) with how its job failed.
#[derive(Default)]
pub struct Rendered {
    pub bytes: Vec<u8>,
    pub lines: Vec<(usize, Option<ErrorKind>)>,
}

impl Rendered {
    /// Appends the result line of job `index` (see [`render_into`]); a job
    /// that was retried also says how many attempts it took and how the
    /// earlier ones failed (see [`append_attempts`]).
    pub fn push_attempted(
        &mut self,
        index: u64,
        outcome: Result<&[u8], TaskError>,
        attempts: Option<&Attempts>,
    ) {
        let failed = render_into(&mut self.bytes, index, outcome);
        if let Some(a) = attempts {
            append_attempts(&mut self.bytes, a);
        }
        self.lines.push((self.bytes.len(), failed));
    }
}

/// The optional fields of a retried job's result line, put into the line
/// just written at the end of `out`: `"attempts"` (how many ran, the last
/// one included) and `"retried"` (how the earlier ones failed, oldest
/// first, each as an `"error"` is written; at most the latest 16). A job
/// that ran once has neither.
pub fn append_attempts(out: &mut Vec<u8>, a: &Attempts) {
    if !out.ends_with(b"}\n") {
        return;
    }
    out.truncate(out.len().saturating_sub(2));
    out.extend_from_slice(b",\"attempts\":");
    out.extend_from_slice(itoa(u64::from(a.count), &mut [0; 20]));
    out.extend_from_slice(b",\"retried\":");
    serde_json::to_writer(&mut *out, &a.failures).expect("errors always serialize");
    out.extend_from_slice(b"}\n");
}

/// Appends the line of one stream item of job `index`:
/// `{"index":N,"item":VALUE}` (an item that is not JSON, from a misbehaving
/// plugin, becomes `{"index":N,"item_error":"..."}`). Item lines come before
/// their job's result line and count as no result.
pub fn render_item_into(out: &mut Vec<u8>, index: u64, item: &[u8]) {
    match compact_json(item) {
        Ok(value) => {
            out.reserve(value.len() + 24);
            out.extend_from_slice(b"{\"index\":");
            out.extend_from_slice(itoa(index, &mut [0; 20]));
            out.extend_from_slice(b",\"item\":");
            out.extend_from_slice(&value);
            out.extend_from_slice(b"}\n");
        }
        Err(e) => {
            let line = serde_json::json!({
                "index": index,
                "item_error": format!("the stream item is not valid JSON: {e}"),
            });
            out.extend_from_slice(line.to_string().as_bytes());
            out.push(b'\n');
        }
    }
}

/// Renders one result line (with its newline) and tells whether the job
/// failed, and how. A result that is not JSON (a misbehaving plugin) is
/// reported as a `task_error`.
pub fn render(index: u64, outcome: &Outcome) -> (Vec<u8>, Option<ErrorKind>) {
    let mut line = Vec::new();
    let failed = render_into(
        &mut line,
        index,
        outcome.as_ref().map(Vec::as_slice).map_err(Clone::clone),
    );
    (line, failed)
}

/// [`render`], appending to `out` from a result borrowed from the worker's
/// buffer: the value's bytes go into the line as they are (validated, not
/// decoded and re-encoded; only a value spread over several lines is
/// re-encoded onto one).
pub fn render_into(
    out: &mut Vec<u8>,
    index: u64,
    outcome: Result<&[u8], TaskError>,
) -> Option<ErrorKind> {
    let err = match outcome {
        Ok(value) => match compact_json(value) {
            Ok(value) => {
                out.reserve(value.len() + 32);
                out.extend_from_slice(b"{\"index\":");
                out.extend_from_slice(itoa(index, &mut [0; 20]));
                out.extend_from_slice(b",\"ok\":");
                out.extend_from_slice(&value);
                out.extend_from_slice(b"}\n");
                return None;
            }
            Err(e) => TaskError::new(
                ErrorKind::TaskError,
                format!("the task's result is not valid JSON: {e}"),
            ),
        },
        Err(e) => e,
    };
    serde_json::to_writer(&mut *out, &ErrorLine { index, error: &err })
        .expect("an error line always serializes");
    out.push(b'\n');
    Some(err.kind)
}

/// The decimal digits of `n`.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// True for an integer in JSON's own form (`0`, `-12`, `81`): valid and
/// compact as it is, no parse needed (the common result of small tasks).
fn is_plain_integer(bytes: &[u8]) -> bool {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    !digits.is_empty()
        && digits.len() <= 20
        && digits.iter().all(u8::is_ascii_digit)
        && (digits.len() == 1 || digits[0] != b'0')
}

/// The JSON value in `bytes` on one line (as is when it already is).
fn compact_json(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, serde_json::Error> {
    if is_plain_integer(bytes) {
        return Ok(bytes.into());
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes)?;
    let bytes = bytes.trim_ascii();
    if !bytes.contains(&b'\n') && !bytes.contains(&b'\r') {
        return Ok(bytes.into());
    }
    let v: serde_json::Value = serde_json::from_slice(bytes)?;
    Ok(serde_json::to_vec(&v)?.into())
}

/// Flushes `output` on a thread of `scope`: sleeps until a line is waiting
/// (an idle run costs no wake-ups), gives later lines [`FLUSH_EVERY`] to
/// join it, flushes. It ends when the output is closed or the returned
/// sender is dropped (the run is over), after one last flush.
pub fn flush_in_background<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    output: &'env Output,
) -> crossbeam_channel::Sender<()> {
    let (over_tx, over) = crossbeam_channel::bounded::<()>(0);
    scope.spawn(move || {
        while output.wait_dirty() {
            let ended = !matches!(
                over.recv_timeout(FLUSH_EVERY),
                Err(crossbeam_channel::RecvTimeoutError::Timeout)
            );
            output.flush_if_dirty();
            if ended {
                break;
            }
        }
    });
    over_tx
}

/// The end of a batch's output, on the writer's side: flushes what is
/// still buffered (a failure becomes the write error if there was none)
/// and, after a write error, takes the lines that were not written back
/// out of the summary's counts; then closes the output.
pub fn settle(output: &Output, progress: &mut Progress, write_error: &mut Option<std::io::Error>) {
    if write_error.is_none() {
        *write_error = output.flush().err();
    }
    if write_error.is_some() {
        for failed in output.unwritten() {
            progress.unrecord(failed);
        }
    }
    output.close();
}

/// How a batch (`run`, `run --isolated`, `submit`, `run --broker`) ended,
/// for [`finish_batch`].
pub struct Ending<'a> {
    /// Appended to the summary line (`run`: "; 3 retries").
    pub summary_suffix: &'a str,
    /// A stop request ended the input before its end.
    pub stopped_early: bool,
    /// Why (the stop's reason).
    pub stop_reason: Option<&'a str>,
    /// Writing the results failed.
    pub write_error: Option<&'a std::io::Error>,
    pub quiet: bool,
    /// `--args`: one job, no summary.
    pub single: bool,
}

/// The one batch epilogue: the exit code from the tally and the stop, the
/// write error (a closed pipe, `| head`, is an ordinary way to stop: no
/// message, and no summary, which beside exit status 1 would contradict
/// it), the summary line and why the batch stopped early.
pub fn finish_batch(progress: &Progress, end: Ending<'_>) -> i32 {
    let summary = progress.finish();
    let mut code = if progress.tally.failed_total() > 0 || end.stopped_early {
        exit::JOBS_FAILED
    } else {
        exit::OK
    };
    let write_failed = end
        .write_error
        .is_some_and(|e| e.kind() != std::io::ErrorKind::BrokenPipe);
    if let Some(e) = end.write_error {
        if write_failed {
            eprintln!("error: cannot write the results: {e}");
        }
        code = exit::JOBS_FAILED;
    }
    let output_closed = end.write_error.is_some() && !write_failed;
    if !end.quiet && !end.single && !output_closed {
        eprintln!("{summary}{}", end.summary_suffix);
        if write_failed {
            eprintln!(
                "stopped early (the results could not be written): the rest of the input \
                 was not read"
            );
        } else if end.stopped_early {
            eprintln!(
                "stopped early ({}): the rest of the input was not read",
                end.stop_reason.unwrap_or("stopped")
            );
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k23_a_retried_jobs_line_says_its_attempts() {
        let mut r = Rendered::default();
        r.push_attempted(0, Ok(b"1"), None);
        let a = Attempts {
            count: 3,
            failures: vec![
                TaskError::new(ErrorKind::Panic, "first"),
                TaskError::new(ErrorKind::WorkerLost, "second"),
            ],
        };
        r.push_attempted(1, Ok(b"9"), Some(&a));
        r.push_attempted(
            2,
            Err(TaskError::new(ErrorKind::TaskError, "last")),
            Some(&a),
        );
        let text = String::from_utf8(r.bytes).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0], serde_json::json!({"index": 0, "ok": 1}));
        assert_eq!(
            lines[1],
            serde_json::json!({"index": 1, "ok": 9, "attempts": 3, "retried": [
                {"kind": "panic", "message": "first"},
                {"kind": "worker_lost", "message": "second"}]})
        );
        assert_eq!(lines[2]["error"]["kind"], "task_error");
        assert_eq!(lines[2]["attempts"], 3);
        assert_eq!(r.lines.len(), 3);
        assert_eq!(r.lines[2].1, Some(ErrorKind::TaskError));
    }

    fn text(index: u64, o: Outcome) -> (String, Option<ErrorKind>) {
        let (line, kind) = render(index, &o);
        (String::from_utf8(line).unwrap(), kind)
    }

    #[test]
    fn renders_values_and_errors() {
        assert_eq!(
            text(0, Ok(b"9".to_vec())),
            ("{\"index\":0,\"ok\":9}\n".into(), None)
        );
        assert_eq!(
            text(3, Ok(b"{\n \"a\": [1, 2]\n}".to_vec())).0,
            "{\"index\":3,\"ok\":{\"a\":[1,2]}}\n"
        );
        let (line, kind) = text(
            1,
            Err(TaskError::new(ErrorKind::Panic, "boom \"quoted\"\nline")),
        );
        assert_eq!(kind, Some(ErrorKind::Panic));
        assert_eq!(
            line,
            "{\"index\":1,\"error\":{\"kind\":\"panic\",\"message\":\"boom \\\"quoted\\\"\\nline\"}}\n"
        );
        let (line, kind) = text(2, Ok(b"not json".to_vec()));
        assert_eq!(kind, Some(ErrorKind::TaskError));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["error"]["kind"], "task_error");
    }
}
