//! The exit codes of `billiard-host` (a contract: scripts depend on them).

/// Every job succeeded (or the command had no jobs and worked).
pub const OK: i32 = 0;
/// At least one job failed; all results were still written.
pub const JOBS_FAILED: i32 = 1;
/// Usage error, unreadable input, or a plugin that cannot be loaded.
pub const USAGE: i32 = 2;
