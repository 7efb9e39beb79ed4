//! Celery worker mode: consume Celery protocol v2 messages from Redis, run
//! them as plugin tasks on a [`crate::Pool`], store their results where a
//! Python `AsyncResult.get()` finds them. See `docs/celery.md`.
//!
//! - [`protocol`]: the wire types (serde only, no I/O);
//! - [`transport`]: the brokers: kombu's Redis transport, consumer side (Lua reserve,
//!   heartbeat, restore sweep, reconnect);
//! - [`backend`]: Celery's Redis result backend (SETEX + PUBLISH);
//! - [`chord`]: chords counted on the result backend as Celery 5.7 counts
//!   them, and canvases (chords, groups, chains) sent from a task's end;
//! - [`worker`]: the consumer loop over the `Pool`.
//! - [`builtins`]: Celery's built-in tasks (`celery.group`, `celery.map`,
//!   ...) run by the worker itself;
//! - [`client`]: the producer side: send tasks, wait for their results;
//! - [`control`]: remote control (pidbox) and the worker's task view;
//! - [`events`]: Celery events on the `celeryev` fanout;
//! - [`progress`]: a running task's `ctx.progress` as the `PROGRESS` state;
//! - [`redelivery`]: retry, Reject, Ignore and the poison-message cap;
//! - [`rate`]: task rate limits, per worker (Celery's) and fleet-wide;
//!
//! The supervisor learns nothing about brokers: this module is a client of
//! the public `Pool` API.

pub mod backend;
pub mod builtins;
pub mod chord;
pub mod client;
pub mod control;
pub mod events;
pub mod kombu;
pub mod names;
pub mod progress;
pub mod protocol;
pub mod rate;
pub mod redelivery;
pub mod transport;
pub mod worker;

pub use worker::{Control, Controller, StartupInfo, Summary, Worker, WorkerError, WorkerOptions};
