//! Lazy, bounded streams of jobs: the engine under `imap`,
//! `imap_unordered`, `map`, `starmap` and the CLI's `run --input`.
//!
//! Items are grouped into chunks of `chunksize` consecutive jobs of the same
//! task; a chunk travels as one message, runs item by item in one worker
//! and comes back as one [`ChunkResult`] per piece of finished items
//! (usually one), which this stream then hands out item by item, decoding
//! straight from the worker's result buffer.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use billiard_plugin_api::{codec, Codec, Status};
use crossbeam_channel::Receiver;
use serde::de::DeserializeOwned;

mod fed;

pub use fed::FedStream;

use super::config::Limits;
use super::items::News;
use super::job::{ChunkBody, ChunkResult, ChunkSender, Outcome};
use super::retry::{Attempts, Choice};
use super::{Pool, TaskRef, Typed};
use crate::error::{ErrorKind, TaskError};

/// One job of a stream: a task, encoded arguments and optional limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawJob {
    /// The task to run.
    pub target: TaskRef,
    /// How `args` is encoded (and so how the result will be).
    pub codec: Codec,
    /// The encoded argument tuple.
    pub args: Vec<u8>,
    /// Time limits for this job; unset ones fall back to the pool's.
    pub limits: Limits,
}

impl RawJob {
    /// A job of `target` with `args` encoded in `codec` and the pool's
    /// limits.
    pub fn new(target: TaskRef, codec: Codec, args: Vec<u8>) -> RawJob {
        RawJob {
            target,
            codec,
            args,
            limits: Limits::default(),
        }
    }

    fn head(&self) -> JobHead {
        JobHead {
            target: self.target,
            codec: self.codec,
            limits: self.limits,
        }
    }
}

/// What a job is apart from its arguments: consecutive jobs with the same
/// head share a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobHead {
    /// The task to run.
    pub target: TaskRef,
    /// How the arguments (and the results) are encoded.
    pub codec: Codec,
    /// Time limits of these jobs.
    pub limits: Limits,
}

/// A source of raw jobs that writes each job's encoded arguments straight
/// into the chunk being built (no buffer per job): the input of
/// [`Pool::imap_source`](super::Pool::imap_source), e.g. the CLI's input
/// lines.
pub trait JobSource {
    /// The next job: appends its encoded arguments to `args` and returns its
    /// head. `Some(Err(e))` is an item that fails in place with `e` (it must
    /// append nothing); `None` ends the input.
    fn next_job(&mut self, args: &mut Vec<u8>) -> Option<Result<JobHead, TaskError>>;

    /// The next job if one is at hand without waiting for the input
    /// (`Ready`, as [`JobSource::next_job`]), else `Pending`, having
    /// appended nothing. The default never waits: it is `next_job`. A
    /// source fed by a pipe or a socket says `Pending` when its input is
    /// quiet; [`Pool::imap_fed`](super::Pool::imap_fed) then sends the jobs
    /// it has (a chunk cut short) instead of holding them while it waits.
    fn poll_job(
        &mut self,
        args: &mut Vec<u8>,
    ) -> std::task::Poll<Option<Result<JobHead, TaskError>>> {
        std::task::Poll::Ready(self.next_job(args))
    }
}

/// [`RawJob`]s as a [`JobSource`].
struct RawJobs<I>(I);

impl<I: Iterator<Item = Result<RawJob, TaskError>>> JobSource for RawJobs<I> {
    fn next_job(&mut self, args: &mut Vec<u8>) -> Option<Result<JobHead, TaskError>> {
        Some(self.0.next()?.map(|job| {
            let head = job.head();
            if args.is_empty() {
                *args = job.args;
            } else {
                args.extend_from_slice(&job.args);
            }
            head
        }))
    }
}

/// Encodes the next input item by appending it to the buffer; `None` once
/// the input is exhausted.
pub(crate) type EncodeNext<'p> = Box<dyn FnMut(&mut Vec<u8>) -> Option<Result<(), TaskError>> + 'p>;

enum Source<'p> {
    Raw(RawInput<dyn JobSource + 'p>),
    Typed {
        target: TaskRef,
        next: EncodeNext<'p>,
        /// An item encoded but not put in the chunk being built (it would
        /// have taken it past the frame limit): it starts the next.
        carried: Option<Vec<u8>>,
    },
}

/// A chunk built from the input: its task, codec, limits, payload and
/// item count.
pub(super) type Chunk = (TaskRef, Codec, Limits, Vec<u8>, u32);

/// What a stream took from its input so far (the window's accounting),
/// and the items that failed in place (bad input) for the stream to hold.
pub(super) struct Intake {
    pub(super) chunksize: usize,
    pub(super) window: usize,
    /// Items taken from the input so far (the next item's index).
    pub(super) taken: u64,
    /// Argument bytes of the items submitted so far (for the byte window).
    pub(super) bytes_taken: u64,
    pub(super) exhausted: bool,
    /// Items that failed in place: their index and error.
    pub(super) failed: Vec<(u64, TaskError)>,
}

impl Intake {
    pub(super) fn new(chunksize: usize, window: usize) -> Intake {
        // A chunk's job count travels as 32 bits: a larger chunksize is a
        // hint taken as the most a chunk holds.
        let chunksize = chunksize.clamp(1, super::config::MAX_CHUNKSIZE);
        Intake {
            chunksize,
            window: window.max(chunksize),
            taken: 0,
            bytes_taken: 0,
            exhausted: false,
            failed: Vec::new(),
        }
    }

    /// The window in items, narrowed for large items so that about
    /// [`BYTES_WINDOW`] of arguments are in flight: 4096 items of 1 MiB
    /// would be encoded (and held) far ahead of the workers, in fresh
    /// memory each, where 32 buffers reused keep them just as busy.
    pub(super) fn item_window(&self) -> usize {
        let avg = self.bytes_taken / self.taken.max(1);
        if avg == 0 {
            return self.window;
        }
        let by_bytes = (BYTES_WINDOW / avg).max(MIN_WINDOW) as usize;
        self.window.min(by_bytes.max(self.chunksize))
    }
}

/// A [`JobSource`] and the job read ahead of the chunk being built.
pub(super) struct RawInput<J: ?Sized> {
    input: Box<J>,
    /// A job read but not of the chunk being built: it starts the next.
    peeked: Option<Result<(JobHead, Vec<u8>), TaskError>>,
}

impl<J: JobSource + ?Sized> RawInput<J> {
    pub(super) fn new(input: Box<J>) -> Self {
        RawInput {
            input,
            peeked: None,
        }
    }

    /// Makes the next job (or the input's end) known, reading it ahead;
    /// waits for the input only when `wait`. False when it would have had
    /// to wait.
    pub(super) fn prime(&mut self, intake: &mut Intake, wait: bool) -> bool {
        if self.peeked.is_some() || intake.exhausted {
            return true;
        }
        let mut args = Vec::new();
        let got = if wait {
            std::task::Poll::Ready(self.input.next_job(&mut args))
        } else {
            self.input.poll_job(&mut args)
        };
        match got {
            std::task::Poll::Pending => false,
            std::task::Poll::Ready(None) => {
                intake.exhausted = true;
                true
            }
            std::task::Poll::Ready(Some(job)) => {
                self.peeked = Some(job.map(|h| (h, args)));
                true
            }
        }
    }

    /// Next chunk of raw jobs: consecutive jobs of one head, their records
    /// written by the source straight into the payload, at most `room`
    /// bytes. With `cut_when_quiet`, the chunk ends where the source would
    /// have to wait ([`JobSource::poll_job`]). An item that fails in place
    /// goes to `intake.failed`.
    pub(super) fn next_chunk(
        &mut self,
        intake: &mut Intake,
        room: usize,
        cut_when_quiet: bool,
    ) -> Option<Chunk> {
        let single = intake.chunksize == 1;
        let mut payload = Vec::new();
        if !single {
            payload.extend_from_slice(&[0; 4]);
        }
        let first = match self.peeked.take() {
            Some(Ok((head, args))) => {
                if single {
                    payload = args;
                } else {
                    payload.extend_from_slice(&args);
                }
                Ok(head)
            }
            Some(Err(e)) => Err(e),
            None if intake.exhausted => return None,
            None => match self.input.next_job(&mut payload) {
                None => {
                    intake.exhausted = true;
                    return None;
                }
                Some(first) => first,
            },
        };
        let index = intake.taken;
        intake.taken += 1;
        let head = match first {
            Ok(head) => head,
            Err(e) => {
                intake.failed.push((index, e));
                return None;
            }
        };
        let mut count = 1u32;
        if !single {
            let len = (payload.len() - 4) as u32;
            payload[..4].copy_from_slice(&len.to_le_bytes());
            payload.reserve(
                payload
                    .len()
                    .saturating_mul(intake.chunksize - 1)
                    .min(1 << 20),
            );
        }
        // A chunk stays within the frame limit: a job that would push it
        // over starts the next chunk, so a big job fails (if it must) alone,
        // never its neighbours.
        while (count as usize) < intake.chunksize {
            let start = payload.len();
            payload.extend_from_slice(&[0; 4]);
            let next = if cut_when_quiet {
                self.input.poll_job(&mut payload)
            } else {
                std::task::Poll::Ready(self.input.next_job(&mut payload))
            };
            match next {
                std::task::Poll::Ready(Some(Ok(h))) if h == head && payload.len() <= room => {
                    let len = (payload.len() - start - 4) as u32;
                    payload[start..start + 4].copy_from_slice(&len.to_le_bytes());
                    intake.taken += 1;
                    count += 1;
                }
                std::task::Poll::Ready(Some(other)) => {
                    // Another kind of job (or an error): it starts the next chunk.
                    self.peeked = Some(other.map(|h| (h, payload[start + 4..].to_vec())));
                    payload.truncate(start);
                    break;
                }
                std::task::Poll::Ready(None) => {
                    payload.truncate(start);
                    intake.exhausted = true;
                    break;
                }
                std::task::Poll::Pending => {
                    // The input is quiet: what the chunk has goes now.
                    payload.truncate(start);
                    break;
                }
            }
        }
        if count == 1 && !single {
            // A lone item travels as plain arguments, not as a record.
            payload.drain(..4);
        }
        Some((head.target, head.codec, head.limits, payload, count))
    }
}

/// Walks the items of one chunk.
pub(crate) struct Cursor {
    chunk: ChunkResult,
    i: u32,
    pos: usize,
}

impl Cursor {
    pub(crate) fn new(chunk: ChunkResult) -> Cursor {
        Cursor {
            chunk,
            i: 0,
            pos: 0,
        }
    }

    /// The next item: its index, its encoded value or error, and its
    /// attempts if it was retried.
    #[allow(clippy::type_complexity)]
    pub(crate) fn next_item(
        &mut self,
    ) -> Option<(u64, Result<&[u8], TaskError>, Option<&Attempts>)> {
        if self.i >= self.chunk.count {
            return None;
        }
        let attempts = match &self.chunk.body {
            ChunkBody::Retried(r) => Some(&r.attempts),
            _ => None,
        };
        let index = self.chunk.first_index + self.i as u64;
        self.i += 1;
        let item = match &self.chunk.body {
            ChunkBody::One(Ok(bytes)) => Ok(bytes.as_slice()),
            ChunkBody::One(Err(e)) | ChunkBody::Failed(e) => Err(e.clone()),
            ChunkBody::Retried(r) => match &r.outcome {
                Ok(bytes) => Ok(bytes.as_slice()),
                Err(e) => Err(e.clone()),
            },
            // Never walked: they have no items (`count` 0).
            ChunkBody::Items(_) | ChunkBody::Progress(..) => return None,
            ChunkBody::Records(buf) => {
                let rest = &buf[self.pos.min(buf.len())..];
                match codec::result_records(rest).next().flatten() {
                    Some((status, bytes)) => {
                        self.pos += 5 + bytes.len();
                        match Status::from_u8(status).map(|s| (s, ErrorKind::from_status(s))) {
                            Some((_, None)) => Ok(bytes),
                            Some((_, Some(kind))) => {
                                Err(TaskError::from_plugin_output(kind, bytes))
                            }
                            None => Err(TaskError::new(
                                ErrorKind::WorkerLost,
                                format!("unknown status {status}"),
                            )),
                        }
                    }
                    None => Err(TaskError::new(
                        ErrorKind::WorkerLost,
                        "the worker returned a truncated batch result",
                    )),
                }
            }
        };
        Some((index, item, attempts))
    }
}

/// The stream's retry choice for `RawStream::retry_policy` and
/// `FedStream::retry_policy`.
fn retry_choice(policy: Option<crate::retry::RetryPolicy>) -> Choice {
    match policy {
        Some(p) => Choice::Exactly(p),
        None => Choice::Off,
    }
}

/// The results side of a stream (`RawStream`, `FedStream`): the chunks
/// that arrived, held until their turn, the one being read, and where the
/// news of running jobs goes.
pub(super) struct Outlet<'a> {
    ordered: bool,
    next_out: u64,
    held: BTreeMap<u64, ChunkResult>,
    cur: Option<Cursor>,
    /// Where the stream items and progress reports of running jobs go.
    news: Option<NewsFn<'a>>,
}

impl<'a> Outlet<'a> {
    pub(super) fn new(ordered: bool) -> Self {
        Outlet {
            ordered,
            next_out: 0,
            held: BTreeMap::new(),
            cur: None,
            news: None,
        }
    }

    pub(super) fn on_news(&mut self, f: impl FnMut(u64, News<'_>) + 'a) {
        self.news = Some(Box::new(f));
    }

    /// The rest of the chunk being read.
    pub(super) fn ready(&self) -> usize {
        self.cur
            .as_ref()
            .map_or(0, |c| c.chunk.count.saturating_sub(c.i) as usize)
    }

    /// The next item of the chunk being read, handed to `f`; `None` when
    /// there is none (that chunk is done with).
    pub(super) fn next_item<T>(
        &mut self,
        f: impl FnOnce(u64, Result<&[u8], TaskError>, Option<&Attempts>) -> T,
    ) -> Option<T> {
        let cur = self.cur.as_mut()?;
        match cur.next_item() {
            Some((index, item, attempts)) => {
                self.next_out = index + 1;
                Some(f(index, item, attempts))
            }
            None => {
                self.cur = None;
                None
            }
        }
    }

    /// Starts reading the chunk held that is handed out next (the next
    /// index when ordered, else the lowest); its item count, or `None`
    /// when none is ready.
    pub(super) fn next_chunk(&mut self) -> Option<u32> {
        let chunk = if self.ordered {
            self.held.remove(&self.next_out)
        } else {
            self.held.pop_first().map(|(_, c)| c)
        }?;
        let n = chunk.count;
        self.cur = Some(Cursor::new(chunk));
        Some(n)
    }

    /// A chunk from the pool: a running job's stream items or progress
    /// report go to the news callback at once (the batch's credit returns
    /// when `chunk` drops); outcomes are held, and their count returned.
    pub(super) fn take(&mut self, chunk: ChunkResult) -> Option<u32> {
        let news = match &chunk.body {
            ChunkBody::Items(batch) => Some(News::Items(batch)),
            &ChunkBody::Progress(done, total) => Some(News::Progress { done, total }),
            _ => None,
        };
        if let Some(news) = news {
            if let Some(f) = &mut self.news {
                f(chunk.first_index, news);
            }
            return None;
        }
        let n = chunk.count;
        self.held.insert(chunk.first_index, chunk);
        Some(n)
    }

    /// An item's own error (bad input), standing in its place.
    pub(super) fn hold_error(&mut self, index: u64, e: TaskError) {
        self.held.insert(
            index,
            ChunkResult {
                first_index: index,
                count: 1,
                body: ChunkBody::One(Err(e)),
            },
        );
    }
}

/// The most bytes of items one chunk's payload holds: the frame limit
/// less the RUN frame's header.
pub(super) fn frame_room(pool: &Pool) -> usize {
    pool.config()
        .max_frame
        .saturating_sub(crate::ipc::RUN_HEADER)
}

/// Arguments in flight per stream, about (see `Intake::item_window`).
const BYTES_WINDOW: u64 = 32 << 20;
/// The byte window never narrows a stream below this many items.
const MIN_WINDOW: u64 = 8;

/// Yields `(index, outcome)` for every input item. Pulls input only as
/// results come back: at most `window` jobs are in flight.
pub struct RawStream<'p> {
    pool: &'p Pool,
    source: Source<'p>,
    tx: ChunkSender,
    rx: Receiver<ChunkResult>,
    intake: Intake,
    in_flight: usize,
    out: Outlet<'p>,
}

/// The callback of [`RawStream::on_news`].
type NewsFn<'p> = Box<dyn FnMut(u64, News<'_>) + 'p>;

impl<'p> RawStream<'p> {
    pub(crate) fn new(
        pool: &'p Pool,
        input: Box<dyn Iterator<Item = Result<RawJob, TaskError>> + 'p>,
        ordered: bool,
        chunksize: usize,
        window: usize,
    ) -> Self {
        Self::from_source(pool, Box::new(RawJobs(input)), ordered, chunksize, window)
    }

    pub(crate) fn from_source(
        pool: &'p Pool,
        input: Box<dyn JobSource + 'p>,
        ordered: bool,
        chunksize: usize,
        window: usize,
    ) -> Self {
        Self::with_source(
            pool,
            Source::Raw(RawInput::new(input)),
            ordered,
            chunksize,
            window,
        )
    }

    pub(crate) fn typed(
        pool: &'p Pool,
        target: TaskRef,
        next: EncodeNext<'p>,
        ordered: bool,
        chunksize: usize,
        window: usize,
    ) -> Self {
        Self::with_source(
            pool,
            Source::Typed {
                target,
                next,
                carried: None,
            },
            ordered,
            chunksize,
            window,
        )
    }

    fn with_source(
        pool: &'p Pool,
        source: Source<'p>,
        ordered: bool,
        chunksize: usize,
        window: usize,
    ) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        let tx = ChunkSender::new(tx).with_retry(pool.stream_retry(&Choice::Pool));
        RawStream {
            pool,
            source,
            tx,
            rx,
            intake: Intake::new(chunksize, window),
            in_flight: 0,
            out: Outlet::new(ordered),
        }
    }

    /// Hands the stream items and progress reports of running jobs to `f`
    /// (with the job's index) as they arrive, before the job's outcome is
    /// yielded; without it they are dropped. `f` runs inside `next`: a slow
    /// `f` holds the streaming task back (back-pressure), never memory.
    pub fn on_news(mut self, f: impl FnMut(u64, News<'_>) + 'p) -> Self {
        self.out.on_news(f);
        self
    }

    /// Retries this stream's failed jobs as `policy` says (`None`: never)
    /// instead of by the pool's default ([`crate::PoolBuilder::retry_policy`]);
    /// here `max_retries` is a hard cap, also on the retries a task asks
    /// for. A failed item of a chunk is retried alone (the rest of the
    /// chunk keeps its results); an ordered stream waits for it. Call it
    /// before the first item is read (jobs already sent keep their policy).
    /// A delay past [`crate::bounds::MAX_DURATION`] waits that long.
    pub fn retry_policy(mut self, policy: Option<crate::retry::RetryPolicy>) -> Self {
        let choice = retry_choice(policy);
        self.tx = self.tx.clone().with_retry(self.pool.stream_retry(&choice));
        self
    }

    /// Submits input until `window` jobs are in flight (hysteresis: only
    /// once half the window has drained, so submissions go in batches).
    fn top_up(&mut self) {
        let window = self.intake.item_window();
        if self.intake.exhausted || self.in_flight > window / 2 {
            return;
        }
        let mut dispatches = Vec::new();
        let room = frame_room(self.pool);
        // Re-read each time: the first items tell how large they are.
        while self.in_flight < self.intake.item_window() && !self.intake.exhausted {
            let index = self.intake.taken;
            let chunk = match &mut self.source {
                Source::Raw(raw) => raw.next_chunk(&mut self.intake, room, false),
                Source::Typed { .. } => self.next_typed_chunk(),
            };
            for (index, e) in std::mem::take(&mut self.intake.failed) {
                self.out.hold_error(index, e);
            }
            if let Some((target, codec, limits, payload, count)) = chunk {
                self.in_flight += count as usize;
                self.intake.bytes_taken += payload.len() as u64;
                dispatches.push(
                    self.pool
                        .chunk_dispatch(target, codec, limits, payload, count, &self.tx, index),
                );
            }
        }
        if !dispatches.is_empty() {
            // If the pool is closed or gone, every submitted item fails:
            // `submit` sends its outcome through `tx` like any other, so it
            // is counted once, when it arrives (not here too).
            let _ = self.pool.submit(dispatches);
        }
    }

    /// Next chunk of typed items, encoded straight into the payload.
    fn next_typed_chunk(&mut self) -> Option<Chunk> {
        let single = self.intake.chunksize == 1;
        let chunksize = self.intake.chunksize;
        // As in `RawInput::next_chunk`: an item that would take the chunk
        // past the frame limit starts the next one (a big item fails alone).
        let room = frame_room(self.pool);
        let Source::Typed {
            target,
            next,
            carried,
        } = &mut self.source
        else {
            return None;
        };
        let target = *target;
        let mut payload = Vec::with_capacity(if single {
            16
        } else {
            chunksize.saturating_mul(12).min(1 << 20)
        });
        let mut count = 0u32;
        let mut bad = None;
        if let Some(item) = carried.take() {
            if !single {
                payload.extend_from_slice(&(item.len() as u32).to_le_bytes());
            }
            payload.extend_from_slice(&item);
            count = 1;
        }
        while (count as usize) < chunksize {
            let start = payload.len();
            if !single {
                payload.extend_from_slice(&[0; 4]);
            }
            match next(&mut payload) {
                None => {
                    payload.truncate(start);
                    self.intake.exhausted = true;
                    break;
                }
                Some(Err(e)) => {
                    payload.truncate(start);
                    bad = Some(e);
                    break;
                }
                Some(Ok(())) if count > 0 && payload.len() > room => {
                    *carried = Some(payload[start + 4..].to_vec());
                    payload.truncate(start);
                    break;
                }
                Some(Ok(())) => {
                    if !single {
                        let len = (payload.len() - start - 4) as u32;
                        payload[start..start + 4].copy_from_slice(&len.to_le_bytes());
                    }
                    count += 1;
                }
            }
        }
        self.intake.taken += count as u64;
        if count == 1 && !single {
            // A lone item travels as plain arguments, not as a record.
            payload.drain(..4);
        }
        if let Some(e) = bad {
            let index = self.intake.taken;
            self.intake.taken += 1;
            self.out.hold_error(index, e);
        }
        (count > 0).then_some((target, Codec::Bincode, Limits::default(), payload, count))
    }

    /// How many results the next calls of `next` return without waiting:
    /// the rest of the chunk being read (a consumer that forwards results
    /// elsewhere can batch them, one hand-off per chunk instead of per item).
    pub fn ready(&self) -> usize {
        self.out.ready()
    }

    /// The next item, handed to `f` as its index and encoded outcome (a
    /// value borrowed from the worker's result buffer: no copy per item).
    pub fn next_with<T>(
        &mut self,
        mut f: impl FnMut(u64, Result<&[u8], TaskError>) -> T,
    ) -> Option<T> {
        self.next_with_attempts(|i, item, _| f(i, item))
    }

    /// [`RawStream::next_with`], with the item's [`Attempts`] when it was
    /// retried (`None` when it ran once).
    pub fn next_with_attempts<T>(
        &mut self,
        f: impl FnMut(u64, Result<&[u8], TaskError>, Option<&Attempts>) -> T,
    ) -> Option<T> {
        match self.poll_next_attempts(None, f) {
            std::task::Poll::Ready(item) => item,
            // Without a context it waits instead.
            std::task::Poll::Pending => None,
        }
    }

    /// [`RawStream::next_with`] that waits when `cx` is `None`, and else
    /// returns `Pending` (the waker woken by the next chunk's arrival)
    /// instead of waiting: the engine of [`RawStream::into_stream`].
    pub(crate) fn poll_next_with<T>(
        &mut self,
        cx: Option<&mut std::task::Context<'_>>,
        mut f: impl FnMut(u64, Result<&[u8], TaskError>) -> T,
    ) -> std::task::Poll<Option<T>> {
        self.poll_next_attempts(cx, |i, item, _| f(i, item))
    }

    /// [`RawStream::poll_next_with`] with each item's attempts.
    pub(crate) fn poll_next_attempts<T>(
        &mut self,
        mut cx: Option<&mut std::task::Context<'_>>,
        mut f: impl FnMut(u64, Result<&[u8], TaskError>, Option<&Attempts>) -> T,
    ) -> std::task::Poll<Option<T>> {
        use std::task::Poll;
        loop {
            if let Some(item) = self.out.next_item(&mut f) {
                return Poll::Ready(Some(item));
            }
            self.top_up();
            if self.out.next_chunk().is_some() {
                continue;
            }
            if self.in_flight == 0 {
                if !self.intake.exhausted {
                    continue;
                }
                // Nothing in flight and nothing more to read: done (an
                // ordered gap cannot happen; refuse to hang if it did).
                return Poll::Ready(None);
            }
            let got = match cx.as_deref_mut() {
                None => self.rx.recv().ok(),
                Some(cx) => match self.rx.try_recv() {
                    Ok(chunk) => Some(chunk),
                    Err(_) => {
                        // Armed before the second look: a chunk sent in
                        // between is either seen now or wakes the task.
                        self.tx.wake_cell().register(cx.waker());
                        match self.rx.try_recv() {
                            Ok(chunk) => Some(chunk),
                            Err(_) => return Poll::Pending,
                        }
                    }
                },
            };
            match got {
                Some(chunk) => {
                    if let Some(n) = self.out.take(chunk) {
                        self.in_flight -= n as usize;
                    }
                }
                None => return Poll::Ready(None),
            }
        }
    }
}

impl Iterator for RawStream<'_> {
    type Item = (u64, Outcome);

    fn next(&mut self) -> Option<(u64, Outcome)> {
        self.next_with(|i, item| (i, item.map(<[u8]>::to_vec)))
    }
}

/// A typed stream of results (`imap`, `imap_unordered`).
pub struct Imap<'p, R> {
    raw: RawStream<'p>,
    typed: Typed,
    _r: PhantomData<fn() -> R>,
}

impl<'p, R> Imap<'p, R> {
    pub(crate) fn new(raw: RawStream<'p>, typed: Typed) -> Self {
        Imap {
            raw,
            typed,
            _r: PhantomData,
        }
    }

    /// Retries this map's failed items as `policy` says (`None`: never)
    /// instead of by the pool's default (see [`RawStream::retry_policy`]);
    /// call it before the first result is read.
    pub fn retry_policy(mut self, policy: Option<crate::retry::RetryPolicy>) -> Self {
        self.raw = self.raw.retry_policy(policy);
        self
    }

    /// The next result with its [`Attempts`] when the item was retried.
    pub fn next_with_attempts(&mut self) -> Option<(Result<R, TaskError>, Option<Attempts>)>
    where
        R: DeserializeOwned,
    {
        let typed = &self.typed;
        self.raw.next_with_attempts(|_, item, attempts| {
            let r = item
                .map_err(|e| typed.explain(e))
                .and_then(|b| typed.decode_bytes(b));
            (r, attempts.cloned())
        })
    }

    /// The untyped stream under it and the types (for [`Imap::into_stream`]).
    pub(crate) fn into_parts(self) -> (RawStream<'p>, Typed) {
        (self.raw, self.typed)
    }
}

impl<R: DeserializeOwned> Iterator for Imap<'_, R> {
    type Item = Result<R, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        let typed = &self.typed;
        self.raw.next_with(|_, item| {
            item.map_err(|e| typed.explain(e))
                .and_then(|b| typed.decode_bytes(b))
        })
    }
}

/// Collects a whole map's chunks and decodes them in input order.
pub(crate) fn collect_chunks<R: DeserializeOwned>(
    rx: &Receiver<ChunkResult>,
    n: u64,
    gone: impl Fn() -> TaskError,
    typed: &Typed,
) -> Result<Vec<R>, TaskError> {
    let mut chunks = BTreeMap::new();
    let mut got = 0u64;
    while got < n {
        let c = rx.recv().map_err(|_| gone())?;
        if c.count == 0 {
            // Stream items or progress of a job: not part of a map's result.
            continue;
        }
        got += c.count as u64;
        chunks.insert(c.first_index, c);
    }
    let mut out = Vec::with_capacity(n as usize);
    for (_, c) in chunks {
        let mut cur = Cursor::new(c);
        while let Some((_, item, _)) = cur.next_item() {
            out.push(
                item.map_err(|e| typed.explain(e))
                    .and_then(|b| typed.decode_bytes(b))?,
            );
        }
    }
    Ok(out)
}
