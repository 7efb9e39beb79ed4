//! [`FedStream`]: a stream whose input is read on a thread of its own, so
//! that it never waits for the input while results wait (B7, issue 24
//! item 3).
//!
//! A [`RawStream`](super::RawStream) pulls its input on the caller's
//! thread, inside `next`: fed by a quiet pipe it blocks there, sitting on
//! the results it already has until the next line comes. Here a feeder
//! thread (of the caller's [`std::thread::Scope`]) owns the
//! [`JobSource`]: it builds chunks and submits them while the window has
//! room, cuts a chunk short where the source says its input is quiet
//! ([`JobSource::poll_job`]), and waits for the input only after it
//! submitted what it built. The caller's thread only takes results.
//!
//! The window: at most `window` items are in the pool (taken and not yet
//! come back), as for a `RawStream`; and at most [`HELD_WINDOWS`] windows
//! of items are taken and not yet handed to the caller, so an ordered
//! stream behind a job that takes hours holds a bounded number of
//! results.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::Scope;

use crossbeam_channel::{Receiver, Sender};

use super::{frame_room, retry_choice, Intake, JobSource, Outlet, RawInput};
use crate::error::TaskError;
use crate::pool::items::News;
use crate::pool::job::{ChunkResult, ChunkSender, Dispatch};
use crate::pool::retry::{Attempts, Choice};
use crate::pool::Pool;

/// Windows of items a stream may hold taken and not yet handed out.
const HELD_WINDOWS: u64 = 16;

/// Dispatches the feeder collects before one submission (one command to
/// the supervisor), when the input has more at hand.
const SUBMIT_BATCH: usize = 64;

/// What [`FedStream::wait`] got.
enum Got {
    /// A result chunk from the pool; `None`: no more can come.
    Result(Option<ChunkResult>),
    /// A message of the feeder; `None`: it is gone.
    Fed(Option<Fed>),
}

/// What the feeder tells the stream besides the pool's results.
enum Fed {
    /// An item that failed in place (bad input), never sent.
    Failed(u64, TaskError),
    /// The input is over: this many items were taken in all.
    End(u64),
}

/// The window shared by the feeder and the stream.
#[derive(Default)]
struct Gauge {
    counts: Mutex<Counts>,
    room: Condvar,
}

#[derive(Default, Clone, Copy)]
struct Counts {
    /// Items whose results came back from the pool.
    arrived: u64,
    /// Items handed to the caller (or about to be: their chunk is read).
    yielded: u64,
    /// The stream is gone: the feeder stops.
    closed: bool,
    /// The feeder waits for room (the stream wakes it).
    waiting: bool,
    /// Items the feeder submitted to the pool, and took in all.
    sent: u64,
    taken: u64,
}

impl Counts {
    /// Room for more input: fewer than `window` items in the pool and
    /// fewer than [`HELD_WINDOWS`] windows held. `resume`: the lower
    /// marks a waiting feeder waits for (half a window in the pool), so
    /// submissions go in batches.
    fn room(&self, window: u64, resume: bool) -> bool {
        let in_pool = self.sent.saturating_sub(self.arrived);
        let held = self.taken.saturating_sub(self.yielded);
        let pool_mark = if resume {
            window / 2
        } else {
            window.saturating_sub(1)
        };
        in_pool <= pool_mark && held < window.saturating_mul(HELD_WINDOWS)
    }
}

impl Gauge {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stream's side: `f` changed the counts; wakes a waiting feeder
    /// that now has room.
    fn update(&self, window: u64, f: impl FnOnce(&mut Counts)) {
        let mut c = self.lock();
        f(&mut c);
        if c.waiting && (c.closed || c.room(window, true)) {
            c.waiting = false;
            self.room.notify_one();
        }
    }
}

/// The feeder's state: the input, the window's accounting and the
/// dispatches built and not yet submitted.
struct Feeder<'env> {
    pool: &'env Pool,
    input: RawInput<dyn JobSource + Send + 'env>,
    intake: Intake,
    tx: ChunkSender,
    gauge: Arc<Gauge>,
    events: Sender<Fed>,
    batch: Vec<Dispatch>,
    batch_items: u64,
}

impl Feeder<'_> {
    fn run(&mut self) {
        let room = frame_room(self.pool);
        loop {
            if !self.wait_room() {
                return;
            }
            // The next item at hand, or else: send what was built, then
            // wait for the input.
            if !self.input.prime(&mut self.intake, false) {
                self.submit();
                self.input.prime(&mut self.intake, true);
            }
            let index = self.intake.taken;
            let chunk = self.input.next_chunk(&mut self.intake, room, true);
            for (index, e) in std::mem::take(&mut self.intake.failed) {
                let _ = self.events.send(Fed::Failed(index, e));
            }
            if let Some((target, codec, limits, payload, count)) = chunk {
                self.intake.bytes_taken += payload.len() as u64;
                self.batch_items += u64::from(count);
                self.batch.push(
                    self.pool
                        .chunk_dispatch(target, codec, limits, payload, count, &self.tx, index),
                );
                if self.batch.len() >= SUBMIT_BATCH {
                    self.submit();
                }
            }
            let taken = self.intake.taken;
            self.gauge.lock().taken = taken;
            if self.intake.exhausted {
                return;
            }
        }
    }

    /// Waits for room in the window (after submitting what was built, so
    /// that the results it waits for can come); false once the stream is
    /// gone.
    fn wait_room(&mut self) -> bool {
        let window = self.intake.item_window() as u64;
        {
            let c = self.gauge.lock();
            if c.closed {
                return false;
            }
            // `sent` does not count the batch yet: it holds items too.
            let in_pool = c.sent.saturating_add(self.batch_items);
            let with_batch = Counts {
                sent: in_pool,
                ..*c
            };
            if with_batch.room(window, false) {
                return true;
            }
        }
        self.submit();
        let mut c = self.gauge.lock();
        while !c.closed && !c.room(window, true) {
            c.waiting = true;
            c = self.gauge.room.wait(c).unwrap_or_else(|e| e.into_inner());
        }
        !c.closed
    }

    fn submit(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        self.gauge.lock().sent += std::mem::take(&mut self.batch_items);
        // If the pool is closed or gone, every submitted item fails and
        // its outcome comes through `tx` like any other.
        let _ = self.pool.submit(std::mem::take(&mut self.batch));
    }
}

impl Drop for Feeder<'_> {
    fn drop(&mut self) {
        // Also when the source panicked: the stream learns how many items
        // there are, and the items built go to the pool.
        self.submit();
        let _ = self.events.send(Fed::End(self.intake.taken));
    }
}

/// Yields `(index, outcome)` for every input item, as
/// [`RawStream`](super::RawStream) does, with the input read on a thread of
/// the scope given to [`Pool::imap_fed`] (see the module docs). The
/// feeder starts with the first call of `next`; dropping the stream stops
/// it once the source returns.
pub struct FedStream<'s, 'env> {
    /// The feeder and what starts it on its thread, until it starts.
    start: Option<(Feeder<'env>, Spawn<'s, 'env>)>,
    gauge: Arc<Gauge>,
    window: u64,
    rx: Receiver<ChunkResult>,
    /// The feeder's messages; `None` once it ended.
    events: Option<Receiver<Fed>>,
    /// False once no result can come from the pool any more.
    rx_open: bool,
    /// How many items there are, once the feeder ended.
    total: Option<u64>,
    out: Outlet<'s>,
}

/// Starts the feeder on a thread of the caller's scope.
type Spawn<'s, 'env> = Box<dyn FnOnce(Feeder<'env>) + 's>;

impl<'s, 'env> FedStream<'s, 'env> {
    pub(crate) fn new<'scope: 's>(
        pool: &'env Pool,
        scope: &'scope Scope<'scope, 'env>,
        input: Box<dyn JobSource + Send + 'env>,
        ordered: bool,
        chunksize: usize,
        window: usize,
    ) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (events_tx, events) = crossbeam_channel::unbounded();
        let gauge = Arc::new(Gauge::default());
        let intake = Intake::new(chunksize, window);
        let window = intake.window as u64;
        let spawn: Spawn<'s, 'env> = Box::new(move |mut feeder: Feeder<'env>| {
            scope.spawn(move || feeder.run());
        });
        FedStream {
            start: Some((
                Feeder {
                    pool,
                    input: RawInput::new(input),
                    intake,
                    tx: ChunkSender::new(tx).with_retry(pool.stream_retry(&Choice::Pool)),
                    gauge: gauge.clone(),
                    events: events_tx,
                    batch: Vec::new(),
                    batch_items: 0,
                },
                spawn,
            )),
            gauge,
            window,
            rx,
            events: Some(events),
            rx_open: true,
            total: None,
            out: Outlet::new(ordered),
        }
    }

    /// As [`RawStream::on_news`](super::RawStream::on_news): stream items
    /// and progress reports of running jobs go to `f` (on the caller's
    /// thread, inside `next`).
    pub fn on_news(mut self, f: impl FnMut(u64, News<'_>) + 's) -> Self {
        self.out.on_news(f);
        self
    }

    /// As [`RawStream::retry_policy`](super::RawStream::retry_policy);
    /// call it before the first `next` (the feeder starts there).
    pub fn retry_policy(mut self, policy: Option<crate::retry::RetryPolicy>) -> Self {
        let choice = retry_choice(policy);
        if let Some((f, _)) = &mut self.start {
            f.tx = f.tx.clone().with_retry(f.pool.stream_retry(&choice));
        }
        self
    }

    /// How many results the next calls of `next` return without waiting
    /// (the rest of the chunk being read).
    pub fn ready(&self) -> usize {
        self.out.ready()
    }

    /// The next item, handed to `f` with its index, its encoded outcome
    /// (borrowed from the worker's result buffer) and its [`Attempts`]
    /// when it was retried; `None` after the last. Waits for results
    /// only, never for the input.
    pub fn next_with_attempts<T>(
        &mut self,
        mut f: impl FnMut(u64, Result<&[u8], TaskError>, Option<&Attempts>) -> T,
    ) -> Option<T> {
        if let Some((feeder, spawn)) = self.start.take() {
            spawn(feeder);
        }
        loop {
            if let Some(item) = self.out.next_item(&mut f) {
                return Some(item);
            }
            if let Some(n) = self.out.next_chunk() {
                self.gauge
                    .update(self.window, |c| c.yielded += u64::from(n));
                continue;
            }
            if self.total.is_some_and(|t| self.gauge.lock().yielded >= t) {
                return None;
            }
            if !self.wait() {
                return None;
            }
        }
    }

    /// Waits for the next result or feeder message and takes it in; false
    /// when no more can come. The two channels end on their own: the
    /// pool's results once the feeder and every job it sent are gone
    /// (items the feeder failed may still be on their way), the feeder's
    /// after its `End`.
    fn wait(&mut self) -> bool {
        let got = match (&self.events, self.rx_open) {
            (Some(events), true) => crossbeam_channel::select! {
                recv(self.rx) -> chunk => Got::Result(chunk.ok()),
                recv(events) -> ev => Got::Fed(ev.ok()),
            },
            (Some(events), false) => Got::Fed(events.recv().ok()),
            (None, true) => Got::Result(self.rx.recv().ok()),
            (None, false) => return false,
        };
        match got {
            Got::Result(Some(chunk)) => self.take(chunk),
            Got::Result(None) => self.rx_open = false,
            Got::Fed(Some(Fed::Failed(index, e))) => self.out.hold_error(index, e),
            Got::Fed(Some(Fed::End(total))) => self.total = Some(total),
            // The feeder is gone: it said `End` first (its `Drop`).
            Got::Fed(None) => {
                self.events = None;
                self.total.get_or_insert(0);
            }
        }
        true
    }

    /// A chunk from the pool: news goes to the callback, outcomes are held.
    fn take(&mut self, chunk: ChunkResult) {
        if let Some(n) = self.out.take(chunk) {
            self.gauge
                .update(self.window, |c| c.arrived += u64::from(n));
        }
    }
}

impl Drop for FedStream<'_, '_> {
    fn drop(&mut self) {
        self.gauge.update(self.window, |c| c.closed = true);
    }
}
