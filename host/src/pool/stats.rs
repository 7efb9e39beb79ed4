//! `Pool::stats()`: counters the supervisor keeps.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::ErrorKind;

/// A snapshot of the pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Live worker processes.
    pub workers: usize,
    /// The number of workers the pool aims for.
    pub target_workers: usize,
    /// Workers running at least one job.
    pub busy: usize,
    /// Jobs waiting for a worker.
    pub queued: u64,
    /// Jobs sent to workers and not finished.
    pub running: u64,
    /// Jobs submitted over the pool's life.
    pub submitted: u64,
    /// Jobs that ended with a value.
    pub succeeded: u64,
    /// Failed jobs by error kind.
    pub failed: BTreeMap<ErrorKind, u64>,
    /// Worker processes started over the pool's life.
    pub workers_started: u64,
    /// Workers that ended other than by a clean exit.
    pub worker_deaths: u64,
    /// Workers recycled (max tasks / max memory).
    pub recycled: u64,
    /// Workers that died before running any job.
    pub start_failures: u64,
    /// `restart()` calls carried out.
    pub restarts: u64,
    /// Set when the pool stopped forking because workers kept dying at start.
    pub stopped_forking: Option<String>,
    /// Retries scheduled over the pool's life (`PoolBuilder::retry_policy`):
    /// the failure each follows is counted in `failed`, and the retry in
    /// `submitted` once its delay is over.
    pub retried: u64,
    /// Jobs waiting for their retry's delay.
    pub waiting_retry: u64,
}

impl Stats {
    /// Jobs finished either way: `succeeded` plus every `failed` count.
    pub fn completed(&self) -> u64 {
        self.succeeded + self.failed.values().sum::<u64>()
    }
}
