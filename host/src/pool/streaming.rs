//! `Pool::apply_stream`: one job of a streaming task, its items as they come
//! and then its outcome.

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use billiard_plugin_api::{codec, Codec};
use crossbeam_channel::{Receiver, TryRecvError};
use serde::{de::DeserializeOwned, Serialize};

use super::config::Limits;
use super::items::ItemBatch;
use super::job::{ChunkBody, ChunkResult, ChunkSender};
use super::{decode_outcome_bytes, JobId, Pool, TaskRef};
use crate::error::{ErrorKind, TaskError};

/// What [`ItemStream`] yields: the task's items in the order it emitted
/// them, then exactly one `Done` with the task's own result (or why there is
/// none: a task that died mid-stream ends `Done(Err(worker_lost))` after the
/// items it had emitted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Streamed<T, R> {
    /// One item, in emission order.
    Item(T),
    /// The task's outcome; always the last element, exactly once.
    Done(Result<R, TaskError>),
}

/// The items, then the outcome, of one streaming job
/// ([`Pool::apply_stream`]). Items cross from the worker in batches through
/// a bounded buffer: while this iterator is not read the task blocks in
/// `emit` once about a megabyte of its items is waiting, so memory stays
/// flat however many it emits. Dropping the stream before its end
/// terminates the job. It is also a `futures_core::Stream` (a pending poll
/// registers the task's waker, woken when the next batch arrives).
pub struct ItemStream<'p, T, R> {
    pool: &'p Pool,
    id: JobId,
    rx: Receiver<ChunkResult>,
    tx: ChunkSender,
    batch: Option<ItemBatch>,
    pos: usize,
    left: u32,
    progress: Option<(u64, u64)>,
    done: bool,
    _t: PhantomData<fn() -> (T, R)>,
}

impl Pool {
    /// Runs one job of a streaming task (one that takes `out: &Emitter<T>`)
    /// and streams its items as the task emits them, then its result. `args`
    /// is the argument tuple, as for [`Pool::apply`]. Works for any task: a
    /// task that emits nothing yields only its `Done`.
    pub fn apply_stream<A: Serialize, T: DeserializeOwned, R: DeserializeOwned>(
        &self,
        plugin: &str,
        task: &str,
        args: A,
    ) -> Result<ItemStream<'_, T, R>, TaskError> {
        let target = self.task_ref(plugin, task)?;
        let bytes = codec::encode(Codec::Bincode, &args).map_err(|e| {
            TaskError::new(
                ErrorKind::BadArgs,
                format!("cannot encode the arguments: {e}"),
            )
        })?;
        self.apply_stream_raw(target, bytes, Limits::default())
    }

    /// [`Pool::apply_stream`] with bincode-encoded arguments and limits.
    pub fn apply_stream_raw<T: DeserializeOwned, R: DeserializeOwned>(
        &self,
        target: TaskRef,
        args: Vec<u8>,
        limits: Limits,
    ) -> Result<ItemStream<'_, T, R>, TaskError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let tx = ChunkSender::new(tx);
        let d = self.chunk_dispatch(target, Codec::Bincode, limits, args, 1, &tx, 0);
        let id = d.first_job;
        self.submit(vec![d])?;
        Ok(ItemStream {
            pool: self,
            id,
            rx,
            tx,
            batch: None,
            pos: 0,
            left: 0,
            progress: None,
            done: false,
            _t: PhantomData,
        })
    }
}

impl<T: DeserializeOwned, R: DeserializeOwned> ItemStream<'_, T, R> {
    /// The job's id (for [`Pool::terminate_job`]).
    pub fn id(&self) -> JobId {
        self.id
    }

    /// The latest `(done, total)` the task reported with `ctx.progress`, as
    /// far as this stream has read.
    pub fn progress(&self) -> Option<(u64, u64)> {
        self.progress
    }

    /// The next chunk: `Ready(None)` once a batch of items is loaded (or a
    /// progress report read), `Ready(Some(outcome))` at the end. Waits when
    /// `cx` is `None`; else `Pending` (the waker registered) when none is
    /// there yet.
    fn recv_chunk(&mut self, cx: Option<&mut Context<'_>>) -> Poll<Option<super::Outcome>> {
        self.batch = None;
        let gone = || {
            Poll::Ready(Some(Err(TaskError::new(
                ErrorKind::Terminated,
                "the pool has shut down",
            ))))
        };
        let chunk = match cx {
            None => match self.rx.recv() {
                Ok(c) => c,
                Err(_) => return gone(),
            },
            Some(cx) => match self.rx.try_recv() {
                Ok(c) => c,
                Err(TryRecvError::Disconnected) => return gone(),
                Err(TryRecvError::Empty) => {
                    // Armed before the second look: a chunk sent in between
                    // is either seen now or wakes the task.
                    self.tx.wake_cell().register(cx.waker());
                    match self.rx.try_recv() {
                        Ok(c) => c,
                        Err(TryRecvError::Empty) => return Poll::Pending,
                        Err(TryRecvError::Disconnected) => return gone(),
                    }
                }
            },
        };
        Poll::Ready(match chunk.body {
            ChunkBody::Items(b) => {
                self.left = b.count;
                self.pos = 0;
                self.batch = Some(b);
                None
            }
            ChunkBody::Progress(done, total) => {
                self.progress = Some((done, total));
                None
            }
            ChunkBody::One(o) => Some(o),
            // A streaming job is never retried (its sender has no retries).
            ChunkBody::Retried(r) => Some(r.outcome),
            ChunkBody::Failed(e) => Some(Err(e)),
            ChunkBody::Records(_) => Some(Err(TaskError::new(
                ErrorKind::WorkerLost,
                "a batch result for a single streaming job",
            ))),
        })
    }

    /// The next item of the loaded batch, encoded.
    fn next_encoded(&mut self) -> Option<(Codec, &[u8])> {
        if self.left == 0 {
            return None;
        }
        let b = self.batch.as_ref()?;
        let rest = &b.records[self.pos.min(b.records.len())..];
        match codec::records(rest).next() {
            Some(Some(item)) => {
                self.pos += 4 + item.len();
                self.left -= 1;
                Some((b.codec, item))
            }
            _ => {
                self.left = 0;
                None
            }
        }
    }
}

impl<T: DeserializeOwned, R: DeserializeOwned> ItemStream<'_, T, R> {
    /// The next item or the outcome (see `recv_chunk` for `cx`).
    fn poll_item(&mut self, mut cx: Option<&mut Context<'_>>) -> Poll<Option<Streamed<T, R>>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            if let Some((c, item)) = self.next_encoded() {
                // Decoded straight from the worker's batch.
                return Poll::Ready(Some(match codec::decode::<T>(c, item) {
                    Ok(v) => Streamed::Item(v),
                    Err(e) => {
                        self.done = true;
                        let _ = self.pool.terminate_job(self.id);
                        Streamed::Done(Err(TaskError::new(
                            ErrorKind::TaskError,
                            format!("cannot decode a stream item as the requested type: {e}"),
                        )))
                    }
                }));
            }
            match self.recv_chunk(cx.as_deref_mut()) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => continue,
                Poll::Ready(Some(outcome)) => {
                    self.done = true;
                    return Poll::Ready(Some(Streamed::Done(
                        outcome.and_then(|b| decode_outcome_bytes(&b)),
                    )));
                }
            }
        }
    }
}

impl<T: DeserializeOwned, R: DeserializeOwned> Iterator for ItemStream<'_, T, R> {
    type Item = Streamed<T, R>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.poll_item(None) {
            Poll::Ready(x) => x,
            // Without a context it waits instead.
            Poll::Pending => None,
        }
    }
}

impl<T: DeserializeOwned, R: DeserializeOwned> futures_core::Stream for ItemStream<'_, T, R> {
    type Item = Streamed<T, R>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_item(Some(cx))
    }
}

impl<T, R> Drop for ItemStream<'_, T, R> {
    fn drop(&mut self) {
        if !self.done {
            // Nobody reads on: stop the task rather than let it run into a
            // closed channel.
            let _ = self.pool.terminate_job(self.id);
        }
    }
}
