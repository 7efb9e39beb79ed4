//! One test binary for the end-to-end tests that need no process of their
//! own (ripgrep's `tests/tests.rs`, wasmtime's `tests/all/main.rs`): each
//! file of tests/ below is a module of it, sharing tests/common, built and
//! linked once. Run one file's tests with
//! `cargo test -p billiard-host --test integration -- cli_run::`.
//!
//! A test file that inspects the test process itself (its children, its
//! open files, its memory, its environment), forks it or loads plugins
//! into it stays a binary of its own (`[[test]]` in host/Cargo.toml, with the reason); the Celery
//! tests are the `celery` binary (tests/celery.rs).

mod common;

// async/await: futures, streams, cancellation (tokio as a dev-dependency).
mod r#async;
mod authoring;
mod bad_input;
mod bounds;
// Chunks item by item: a crash costs one item, limits reach the item
// running (issue 24 item 2).
mod chunks;
mod cli_bytes;
mod cli_check;
mod cli_golden;
mod cli_inspect;
// run --retries: the retry policy for local batches, each attempt on its
// result line (issue 23 item 2).
mod cli_retry;
mod cli_run;
mod hostile_cli;
mod hostile_pool;
mod hostile_process;
mod hostile_ux;
mod inspect_schema;
// Issue 22: the scoreboard (C3), late host-service calls (C13), results
// over the frame limit (C14).
mod isolation;
// `billiard-host new` (the scaffold builds and runs outside the repository)
// and the authoring friction and polish of issue 18.
mod new;
// Pool::builder().retry_policy for embedding programs: callbacks once,
// terminate_job, close/terminate with waiting retries (issue 23 item 2).
mod pool_retry;
// `worker` under a service manager: READY/WATCHDOG/STOPPING on a notify
// socket the test listens on (issue 28).
mod service;
// Large payloads through the shared-memory arenas (host/src/shm.rs).
mod shm;
mod signals;
// Streaming tasks (out: &Emitter<T>) and progress reports: apply_stream,
// back-pressure, deaths mid-stream, the CLI's item lines.
mod streaming;
mod supervision;
