//! async/await: job handles are futures, streams are `futures_core::Stream`s.
//!
//! Runtime-agnostic: nothing here knows about tokio or any executor. A
//! pending poll registers the task's [`Waker`](std::task::Waker) where the
//! supervisor delivers the outcome (the job's [`ResultSlot`], a stream's
//! [`ChunkSender`](super::job::ChunkSender)); the delivery wakes it. No
//! thread per job, no polling timer.
//!
//! Dropping a pending future (an async cancellation, e.g. a web client that
//! went away) only forgets its waker: the job runs on and ends with exactly
//! one outcome, as every job does, counted in [`Pool::stats`]. To stop the
//! job as well, wrap the handle with [`AsyncResult::cancel_on_drop`].

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use serde::de::DeserializeOwned;

use super::job::Outcome;
use super::stream::{Imap, RawStream};
use super::supervisor::Cmd;
use super::{AsyncResult, JobId, Pool, RawResult, Typed};
use crate::error::TaskError;

impl Future for RawResult {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.get_mut();
        this.slot.poll_outcome(cx, &mut this.waker_key)
    }
}

impl Drop for RawResult {
    fn drop(&mut self) {
        if let Some(key) = self.waker_key.take() {
            self.slot.forget_waker(key);
        }
    }
}

impl RawResult {
    /// Wakers of tasks awaiting this job that are still registered (0 once
    /// the outcome is delivered or every awaiting handle is dropped).
    #[doc(hidden)]
    pub fn registered_wakers(&self) -> usize {
        self.slot.pending_wakers()
    }
}

/// `.await` gives the job's result, like [`AsyncResult::get`] without
/// blocking the thread.
impl<R: DeserializeOwned> Future for AsyncResult<R> {
    type Output = Result<R, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let typed = this.typed.clone();
        Pin::new(&mut this.raw).poll(cx).map(|o| typed.decode(o))
    }
}

impl<R: DeserializeOwned> AsyncResult<R> {
    /// A future that also cancels the job ([`Pool::terminate_job`]) when it
    /// is dropped before the job is done: a queued job is dropped, a running
    /// one has its worker replaced. The job still ends with exactly one
    /// outcome (`terminated`). Dropping does not wait for the supervisor.
    pub fn cancel_on_drop(self, pool: &Pool) -> CancelOnDrop<'_, R> {
        CancelOnDrop {
            pool,
            inner: Some(self),
        }
    }
}

/// See [`AsyncResult::cancel_on_drop`].
pub struct CancelOnDrop<'p, R> {
    pool: &'p Pool,
    inner: Option<AsyncResult<R>>,
}

impl<R> CancelOnDrop<'_, R> {
    /// The job's id.
    pub fn id(&self) -> Option<JobId> {
        self.inner.as_ref().map(|r| r.raw.id)
    }
}

impl<R: DeserializeOwned> Future for CancelOnDrop<'_, R> {
    type Output = Result<R, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(super::gone()));
        };
        let out = Pin::new(inner).poll(cx);
        if out.is_ready() {
            // Done: nothing to cancel any more.
            this.inner = None;
        }
        out
    }
}

impl<R> Drop for CancelOnDrop<'_, R> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            if !inner.raw.slot.is_ready() {
                // The reply is not awaited (its receiver is dropped here).
                let (tx, _rx) = crossbeam_channel::bounded(1);
                let _ = self.pool.send(Cmd::TerminateJob(inner.raw.id, tx));
            }
        }
    }
}

/// [`RawStream`] as a [`Stream`] of `(index, outcome)`: see
/// [`RawStream::into_stream`].
pub struct RawAsyncStream<'p> {
    raw: RawStream<'p>,
}

impl<'p> RawStream<'p> {
    /// This stream as a [`futures_core::Stream`]: the same items, and a
    /// pending `poll_next` returns instead of blocking the thread (input is
    /// still pulled from the iterator, synchronously, as results come back).
    pub fn into_stream(self) -> RawAsyncStream<'p> {
        RawAsyncStream { raw: self }
    }
}

impl Stream for RawAsyncStream<'_> {
    type Item = (u64, Outcome);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .raw
            .poll_next_with(Some(cx), |i, item| (i, item.map(<[u8]>::to_vec)))
    }
}

/// [`Imap`] as a [`Stream`] of results: see [`Imap::into_stream`].
pub struct ImapStream<'p, R> {
    raw: RawStream<'p>,
    typed: Typed,
    _r: PhantomData<fn() -> R>,
}

impl<'p, R> Imap<'p, R> {
    /// This `imap` / `imap_unordered` as a [`futures_core::Stream`] (use it
    /// with `StreamExt::next().await` of the `futures` crates, or any
    /// executor's stream helpers).
    pub fn into_stream(self) -> ImapStream<'p, R> {
        let (raw, typed) = self.into_parts();
        ImapStream {
            raw,
            typed,
            _r: PhantomData,
        }
    }
}

impl<R: DeserializeOwned> Stream for ImapStream<'_, R> {
    type Item = Result<R, TaskError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let typed = &this.typed;
        this.raw.poll_next_with(Some(cx), |_, item| {
            item.map_err(|e| typed.explain(e))
                .and_then(|b| typed.decode_bytes(b))
        })
    }
}
