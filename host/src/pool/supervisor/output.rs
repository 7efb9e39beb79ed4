//! Output capture: what a worker writes to stdout/stderr. The last lines
//! are kept for its crash report and logged (rate-limited); the work per
//! event-loop turn is bounded, so a task flooding its output cannot stall
//! the loop ([`Capture::read`] says when more is left; the loop keeps a
//! backlog of such workers in [`Backlog`]).

use std::collections::VecDeque;
use std::io::Read as _;
use std::time::{Duration, Instant};

use mio::Token;

use super::super::job::WorkerId;

/// Lines of worker output kept for `worker_lost` messages.
const TAIL_LINES: usize = 12;
/// Bytes of one worker's output read per event-loop turn.
const OUTPUT_BUDGET: usize = 1 << 20;

/// One worker's output pipe (while open) and what was kept of it.
pub(super) struct Capture {
    pub pipe: Option<(mio::unix::pipe::Receiver, Token)>,
    pub tail: OutputTail,
}

/// What reading a worker's output came to.
pub(super) enum Read {
    /// Read all there was for now.
    Drained,
    /// The budget ran out with more to read: serve it again next turn.
    More,
    /// The pipe closed (its token is free now).
    Closed(Token),
    /// No pipe (closed before).
    NoPipe,
}

impl Capture {
    pub fn new(pipe: mio::unix::pipe::Receiver, token: Token) -> Capture {
        Capture {
            pipe: Some((pipe, token)),
            tail: OutputTail::default(),
        }
    }

    /// Takes in what the worker wrote, at most [`OUTPUT_BUDGET`] bytes;
    /// work is linear in the bytes read.
    pub fn read(&mut self, pid: i32, registry: &mio::Registry) -> Read {
        let Some((pipe, _)) = self.pipe.as_mut() else {
            return Read::NoPipe;
        };
        let mut buf = [0u8; 64 * 1024];
        let mut closed = false;
        let mut taken = 0usize;
        let mut more = false;
        loop {
            if taken >= OUTPUT_BUDGET {
                more = true;
                break;
            }
            match pipe.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    taken = taken.saturating_add(n);
                    self.tail.take(&buf[..n], pid);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            self.tail.finish(pid);
            if let Some((mut pipe, token)) = self.pipe.take() {
                let _ = registry.deregister(&mut pipe);
                return Read::Closed(token);
            }
        }
        if more {
            Read::More
        } else {
            Read::Drained
        }
    }

    /// Stops watching the pipe (the worker is gone); its token is returned.
    pub fn close(&mut self, registry: &mio::Registry) -> Option<Token> {
        let (mut pipe, token) = self.pipe.take()?;
        let _ = registry.deregister(&mut pipe);
        Some(token)
    }
}

/// Workers with output left to read after their budget ran out.
#[derive(Default)]
pub(super) struct Backlog(Vec<WorkerId>);

impl Backlog {
    pub fn push(&mut self, wid: WorkerId) {
        if !self.0.contains(&wid) {
            self.0.push(wid);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn take(&mut self) -> Vec<WorkerId> {
        std::mem::take(&mut self.0)
    }
}

/// A worker's output as the supervisor keeps it: the last [`TAIL_LINES`]
/// lines (for its crash report) and the unfinished line, capped.
#[derive(Default)]
pub(super) struct OutputTail {
    pub tail: VecDeque<String>,
    /// The last line that says why a process is dying (a Rust panic or
    /// allocation failure message): a backtrace after it would push it out
    /// of `tail`, and it is the line a crash report needs most.
    cause: Option<String>,
    partial: Vec<u8>,
    /// Lines logged in the current second, and lines not logged.
    log_window: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

/// Longest line kept whole; a longer one is cut into pieces this long.
const MAX_LINE: usize = 8192;
/// Worker output lines logged per second per worker; the rest are counted.
const LOG_LINES_PER_SEC: u32 = 200;

impl OutputTail {
    /// Takes in a chunk of output: each byte is looked at once.
    fn take(&mut self, mut chunk: &[u8], pid: i32) {
        while let Some(nl) = chunk.iter().position(|&b| b == b'\n') {
            let (line, rest) = (&chunk[..nl], &chunk[nl + 1..]);
            if self.partial.is_empty() {
                self.line(line, pid);
            } else {
                let room = MAX_LINE.saturating_sub(self.partial.len());
                self.partial
                    .extend_from_slice(&line[..line.len().min(room)]);
                let whole = std::mem::take(&mut self.partial);
                self.line(&whole, pid);
                self.partial = whole;
                self.partial.clear();
            }
            chunk = rest;
        }
        while !chunk.is_empty() {
            let room = MAX_LINE - self.partial.len();
            let n = chunk.len().min(room);
            self.partial.extend_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
            if self.partial.len() >= MAX_LINE {
                let whole = std::mem::take(&mut self.partial);
                self.line(&whole, pid);
                self.partial = whole;
                self.partial.clear();
            }
        }
    }

    /// The pipe closed: an unfinished last line still counts.
    fn finish(&mut self, pid: i32) {
        if !self.partial.is_empty() {
            let whole = std::mem::take(&mut self.partial);
            self.line(&whole, pid);
        }
        if self.suppressed > 0 {
            tracing::info!(target: "billiard::worker", pid, "[{} more lines not logged]", self.suppressed);
            self.suppressed = 0;
        }
    }

    fn line(&mut self, line: &[u8], pid: i32) {
        let text = String::from_utf8_lossy(line).into_owned();
        let now = Instant::now();
        let window_over = match self.log_window {
            Some(t) => now.duration_since(t) >= Duration::from_secs(1),
            None => true,
        };
        if window_over {
            if self.suppressed > 0 {
                tracing::info!(target: "billiard::worker", pid, "[{} lines not logged: the worker writes faster than {LOG_LINES_PER_SEC} lines/s]", self.suppressed);
                self.suppressed = 0;
            }
            self.log_window = Some(now);
            self.logged = 0;
        }
        if self.logged < LOG_LINES_PER_SEC {
            self.logged += 1;
            tracing::info!(target: "billiard::worker", pid, "{text}");
        } else {
            self.suppressed += 1;
        }
        if text.contains("panicked at")
            || text.starts_with("memory allocation of")
            || text.contains("fatal runtime error")
        {
            self.cause = Some(text.clone());
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(text);
    }

    /// The kept lines for a crash report, with the cause first if the tail
    /// no longer holds it.
    pub fn report(&self) -> String {
        let mut lines: Vec<&str> = Vec::with_capacity(TAIL_LINES + 2);
        if let Some(cause) = &self.cause {
            if !self.tail.contains(cause) {
                lines.push(cause);
                lines.push("...");
            }
        }
        lines.extend(self.tail.iter().map(String::as_str));
        lines.join("\n")
    }
}
