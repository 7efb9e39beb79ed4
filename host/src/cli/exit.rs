//! The exit codes of `billiard-host` (a contract: scripts depend on them).

/// Every job succeeded (or the command had no jobs and worked).
pub const OK: i32 = 0;
/// At least one job failed; all results were still written.
pub const JOBS_FAILED: i32 = 1;
/// Usage error, unreadable input, or a plugin that cannot be loaded.
pub const USAGE: i32 = 2;
/// `submit --wait` / `run --broker`: `--timeout` passed with results still
/// awaited (their lines end `terminated`; the jobs may still run). 124 as
/// `timeout(1)` reports it.
pub const TIMED_OUT: i32 = 124;
/// A SIGINT or SIGTERM stopped `submit` / `run --broker` before every
/// result arrived (the results received were written; the others end
/// `terminated`). 130 as a shell reports Ctrl-C.
pub const INTERRUPTED: i32 = 130;

/// The one usage-error path: prints `error: MSG` on stderr and returns
/// [`USAGE`].
pub fn usage(msg: impl std::fmt::Display) -> i32 {
    eprintln!("error: {msg}");
    USAGE
}
