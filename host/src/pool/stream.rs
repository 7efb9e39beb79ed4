//! Lazy, bounded streams of jobs: the engine under `imap`,
//! `imap_unordered`, `map`, `starmap` and the CLI's `run --input`.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use billiard_plugin_api::Codec;
use crossbeam_channel::{Receiver, Sender};
use serde::de::DeserializeOwned;

use super::config::Limits;
use super::job::Outcome;
use super::{decode_outcome, Pool, TaskRef};
use crate::error::TaskError;

/// One job of a stream: a task, encoded arguments and optional limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawJob {
    pub target: TaskRef,
    pub codec: Codec,
    pub args: Vec<u8>,
    pub limits: Limits,
}

impl RawJob {
    pub fn new(target: TaskRef, codec: Codec, args: Vec<u8>) -> RawJob {
        RawJob {
            target,
            codec,
            args,
            limits: Limits::default(),
        }
    }

    fn same_kind(&self, other: &RawJob) -> bool {
        self.target == other.target && self.codec == other.codec && self.limits == other.limits
    }
}

/// Yields `(index, outcome)` for every input item. Pulls input only as
/// results come back: at most `window` jobs are in flight.
pub struct RawStream<'p> {
    pool: &'p Pool,
    input: Box<dyn Iterator<Item = Result<RawJob, TaskError>> + 'p>,
    tx: Sender<(u64, Outcome)>,
    rx: Receiver<(u64, Outcome)>,
    ordered: bool,
    chunksize: usize,
    window: usize,
    /// Items taken from the input so far (the next item's index).
    taken: u64,
    in_flight: usize,
    next_out: u64,
    held: BTreeMap<u64, Outcome>,
    /// An item read ahead that did not fit in the last chunk.
    peeked: Option<Result<RawJob, TaskError>>,
    exhausted: bool,
}

impl<'p> RawStream<'p> {
    pub(crate) fn new(
        pool: &'p Pool,
        input: Box<dyn Iterator<Item = Result<RawJob, TaskError>> + 'p>,
        ordered: bool,
        chunksize: usize,
        window: usize,
    ) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        RawStream {
            pool,
            input,
            tx,
            rx,
            ordered,
            chunksize,
            window: window.max(chunksize),
            taken: 0,
            in_flight: 0,
            next_out: 0,
            held: BTreeMap::new(),
            peeked: None,
            exhausted: false,
        }
    }

    fn next_input(&mut self) -> Option<Result<RawJob, TaskError>> {
        self.peeked.take().or_else(|| self.input.next())
    }

    /// Submits input until `window` jobs are in flight (hysteresis: only
    /// once half the window has drained, so submissions go in batches).
    fn top_up(&mut self) {
        if self.exhausted || self.in_flight > self.window / 2 {
            return;
        }
        let mut dispatches = Vec::new();
        while self.in_flight < self.window && !self.exhausted {
            let Some(first) = self.next_input() else {
                self.exhausted = true;
                break;
            };
            let index = self.taken;
            self.taken += 1;
            let first = match first {
                Ok(job) => job,
                Err(e) => {
                    // Stands as the item's outcome, in its place.
                    self.held.insert(index, Err(e));
                    continue;
                }
            };
            let mut chunk = vec![first];
            while chunk.len() < self.chunksize {
                match self.next_input() {
                    Some(Ok(job)) if job.same_kind(&chunk[0]) => {
                        self.taken += 1;
                        chunk.push(job);
                    }
                    Some(other) => {
                        self.peeked = Some(other);
                        break;
                    }
                    None => {
                        self.exhausted = true;
                        break;
                    }
                }
            }
            self.in_flight += chunk.len();
            let head = &chunk[0];
            let (target, codec, limits) = (head.target, head.codec, head.limits);
            let args = chunk.into_iter().map(|j| j.args).collect();
            dispatches.push(
                self.pool
                    .chunk_dispatch(target, codec, limits, args, &self.tx, index),
            );
        }
        if !dispatches.is_empty() {
            if let Err(e) = self.pool.submit(dispatches) {
                // The pool is closed or gone: every submitted item fails.
                let first = self.taken - self.in_flight as u64;
                for i in first..self.taken {
                    self.held.insert(i, Err(e.clone()));
                }
                self.in_flight = 0;
            }
        }
    }
}

impl Iterator for RawStream<'_> {
    type Item = (u64, Outcome);

    fn next(&mut self) -> Option<(u64, Outcome)> {
        loop {
            self.top_up();
            if self.ordered {
                if let Some(o) = self.held.remove(&self.next_out) {
                    self.next_out += 1;
                    return Some((self.next_out - 1, o));
                }
            } else if let Some((i, o)) = self.held.pop_first() {
                return Some((i, o));
            }
            if self.in_flight == 0 {
                if self.exhausted && self.held.is_empty() && self.peeked.is_none() {
                    return None;
                }
                continue;
            }
            match self.rx.recv() {
                Ok((i, o)) => {
                    self.in_flight -= 1;
                    if !self.ordered {
                        return Some((i, o));
                    }
                    self.held.insert(i, o);
                }
                Err(_) => return None,
            }
        }
    }
}

/// A typed stream of results (`imap`, `imap_unordered`).
pub struct Imap<'p, R> {
    raw: RawStream<'p>,
    _r: PhantomData<fn() -> R>,
}

impl<'p, R> Imap<'p, R> {
    pub(crate) fn new(raw: RawStream<'p>) -> Self {
        Imap {
            raw,
            _r: PhantomData,
        }
    }
}

impl<R: DeserializeOwned> Iterator for Imap<'_, R> {
    type Item = Result<R, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.raw.next().map(|(_, o)| decode_outcome(o))
    }
}
