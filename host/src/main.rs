//! The `billiard-host` command line: a thin layer over the library.

mod cli;

fn main() {
    // When the pool starts this executable as its zygote or as a spawned
    // worker, this call never returns.
    billiard_host::run_if_helper();
    std::process::exit(cli::main());
}
