//! The `billiard-host` command line: a thin layer over the library.

// No arithmetic that can panic on a value from outside: `Instant +
// Duration`, `Duration * n`, `Duration - Duration`, chrono's `DateTime +
// TimeDelta` are refused here (issue 22, C1: one huge time limit panicked
// the supervisor); use `bounds::deadline`, `bounds::saturating_deadline`,
// `bounds::scaled` or the checked/saturating std forms. clippy.toml allows
// same-type integer arithmetic, which the lint would flag everywhere.
#![cfg_attr(not(test), deny(clippy::arithmetic_side_effects))]

mod cli;

fn main() {
    // When the pool starts this executable as its zygote or as a spawned
    // worker, this call never returns.
    billiard_host::run_if_helper();
    std::process::exit(cli::main());
}
