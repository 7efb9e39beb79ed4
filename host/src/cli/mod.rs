//! Command-line parsing and the subcommands. Each subcommand is a small
//! function over the library; exit codes are named in [`exit`].

pub mod exit;
mod inspect;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "billiard-host",
    version,
    about = "Run Rust task plugins in a pool of forked worker processes",
    long_about = None,
    after_help = "Examples:\n  billiard-host inspect target/release/libbilliard_math.so\n  billiard-host inspect --json target/release/libbilliard_math.so"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show a plugin's name, version, ABI version and tasks.
    Inspect(inspect::Args),
}

/// Parses the command line, runs the subcommand and returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return code;
        }
    };
    init_logging();
    match cli.command {
        Command::Inspect(args) => inspect::run(args),
    }
}

/// `RUST_LOG`-style logging to stderr (warnings by default).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Prints an error (with its causes) to stderr.
pub fn report(err: &anyhow::Error) {
    eprintln!("error: {err:#}");
}
