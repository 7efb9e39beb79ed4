//! Command-line parsing and the subcommands. Each subcommand is a small
//! function over the library; exit codes are named in [`exit`].

// The modules in layers: a module imports (`super::x`) only from a lower
// layer, so the CLI has no import circle (ARCHITECTURE.md, "The CLI";
// pinned by `tests::imports_only_run_downward`).
mod check;
pub mod exit;
mod fleet;
mod input;
mod inspect;
mod isolated;
mod loader;
pub(crate) mod logging;
mod new;
mod output;
mod pool_flags;
mod progress;
mod queue_flags;
mod run;
mod sandbox;
mod signals;
mod submit;
mod values;
mod worker;
mod worker_retry;

use std::io::Write;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "billiard-host",
    version,
    about = "Run Rust task plugins in a pool of forked worker processes",
    long_about = None,
    after_help = "Examples:\n  billiard-host run target/release/libbilliard_math.so --task square --args '[3]'\n  billiard-host run target/release/libbilliard_math.so --task square --input examples/jobs.jsonl\n  billiard-host inspect target/release/libbilliard_math.so\n  billiard-host inspect --json target/release/libbilliard_math.so\n  billiard-host check target/release/libbilliard_math.so --cases cases.jsonl\n  billiard-host new my-plugin   # a plugin crate that builds and tests anywhere\n  billiard-host completions bash > ~/.local/share/bash-completion/completions/billiard-host"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run jobs: one (--args) or one per input line (--input), JSON results.
    Run(Box<run::Args>),
    /// Show a plugin's name, version, ABI version and tasks.
    Inspect(inspect::Args),
    /// Check a plugin: it loads, its ABI fits, its golden cases pass.
    Check(Box<check::Args>),
    /// Consume Celery tasks from Redis and run them on the plugins (a
    /// long-running Celery worker).
    Worker(Box<worker::Args>),
    /// Send jobs to Celery workers through a broker (and wait for their
    /// results with --wait).
    Submit(Box<submit::Args>),
    /// Create a plugin crate (tasks, golden cases, tests) that builds
    /// anywhere.
    New(new::Args),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  billiard-host completions bash > ~/.local/share/bash-completion/completions/billiard-host\n  billiard-host completions zsh > ~/.zfunc/_billiard-host\n  billiard-host completions fish > ~/.config/fish/completions/billiard-host.fish"
    )]
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Write man pages (billiard-host.1 and one per subcommand, e.g.
    /// billiard-host-worker.1) into a directory.
    #[command(
        after_help = "Examples:\n  sudo billiard-host manpages /usr/local/share/man/man1\n  billiard-host manpages ./man && man -l ./man/billiard-host-worker.1"
    )]
    Manpages {
        /// The directory to write into (created if missing).
        dir: std::path::PathBuf,
    },
}

/// Parses the command line, runs the subcommand and returns the exit code.
pub fn main() -> i32 {
    let mut argv = std::env::args_os().skip(1);
    if argv.next().is_some_and(|a| a == loader::LOADER_ARG) {
        match (argv.next(), argv.next(), argv.next()) {
            (Some(path), None, None) => loader::loader_main(std::path::Path::new(&path), false),
            (Some(path), Some(flag), None) if flag == loader::SCHEMAS_ARG => {
                loader::loader_main(std::path::Path::new(&path), true)
            }
            _ => {}
        }
    }
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
    if !matches!(cli.command, Command::Worker(_)) {
        // `worker` sets up its own (info level, text or JSON).
        init_logging();
    }
    match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Inspect(args) => inspect::run(args),
        Command::Check(args) => check::run(*args),
        Command::Worker(args) => worker::run(*args),
        Command::Submit(args) => submit::run(*args),
        Command::New(args) => new::run(args),
        Command::Completions { shell } => completions(shell),
        Command::Manpages { dir } => manpages(&dir),
    }
}

/// `billiard-host manpages DIR`: one page for the command and one per
/// subcommand, generated from the same clap definitions as `--help`, so
/// they never drift from it.
fn manpages(dir: &std::path::Path) -> i32 {
    let cmd = Cli::command();
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| clap_mangen::generate_to(cmd, dir))
        .map_err(|e| format!("cannot write man pages into {}: {e}", dir.display()));
    match written {
        Ok(()) => {
            eprintln!("wrote man pages into {}", dir.display());
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
    }
}

/// `billiard-host completions SHELL`
fn completions(shell: clap_complete::Shell) -> i32 {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "billiard-host", &mut script);
    let mut out = std::io::stdout().lock();
    match out.write_all(&script).and_then(|_| out.flush()) {
        Ok(()) => exit::OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            exit::USAGE
        }
    }
}

/// Logging to stderr, warnings by default: see [`logging`].
fn init_logging() {
    logging::init("warn", logging::Format::Text);
}

/// The layers of `cli/`, top first (see [`tests::imports_only_run_downward`]).
#[cfg(test)]
const LAYERS: [&[&str]; 4] = [
    // The subcommands.
    &["check", "inspect", "new", "run", "submit", "worker"],
    // How a batch runs: on a Celery fleet, or a process per job.
    &["fleet", "isolated"],
    // What the runners and commands share.
    &[
        "input",
        "loader",
        "logging",
        "output",
        "pool_flags",
        "sandbox",
        "worker_retry",
    ],
    // Leaves: they import nothing of `cli/`.
    &["exit", "progress", "signals", "values"],
];

#[cfg(test)]
mod tests {
    use super::LAYERS;

    /// Every `super::x` a module of `cli/` names is in a lower layer than
    /// the module itself (the review's "only downward edges").
    #[test]
    fn imports_only_run_downward() {
        let sources: [(&str, &str); 19] = [
            ("check", include_str!("check.rs")),
            ("exit", include_str!("exit.rs")),
            ("fleet", include_str!("fleet.rs")),
            ("input", include_str!("input.rs")),
            ("inspect", include_str!("inspect.rs")),
            ("isolated", include_str!("isolated.rs")),
            ("loader", include_str!("loader.rs")),
            ("logging", include_str!("logging.rs")),
            ("new", include_str!("new.rs")),
            ("output", include_str!("output.rs")),
            ("pool_flags", include_str!("pool_flags.rs")),
            ("progress", include_str!("progress.rs")),
            ("run", include_str!("run.rs")),
            ("sandbox", include_str!("sandbox.rs")),
            ("signals", include_str!("signals.rs")),
            ("submit", include_str!("submit.rs")),
            ("values", include_str!("values.rs")),
            ("worker", include_str!("worker.rs")),
            ("worker_retry", include_str!("worker_retry.rs")),
        ];
        let layer = |m: &str| LAYERS.iter().position(|l| l.contains(&m));
        for (module, text) in sources {
            let own = layer(module).unwrap_or_else(|| panic!("{module} is in no layer"));
            // A module's unit tests (`use super::*`) see their own module.
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
            for (at, _) in code.match_indices("super::") {
                let name: String = code[at + "super::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                let Some(theirs) = layer(&name) else { continue };
                assert!(
                    theirs > own,
                    "cli/{module}.rs imports super::{name}, which is not in a lower layer"
                );
            }
        }
    }
}
