//! Logging to stderr for every subcommand: what to show, and colour.
//!
//! - The filter is `BILLIARD_LOG` if set, else `RUST_LOG`, else the
//!   subcommand's default (`warn`; `info` for `worker`), in `tracing`'s
//!   env-filter syntax: `debug`, `billiard_host=debug`,
//!   `warn,billiard_host::pool=debug`. An invalid filter is said once on
//!   stderr and the default is used.
//! - `debug` shows the pool at work: the zygote and each worker starting
//!   and ending (pid, how), every job handed to a worker, reloads and their
//!   outcome, how `run` cuts its input into segments.
//! - Colour (ANSI escapes) only when stderr is a terminal and `NO_COLOR` is
//!   unset or empty: a log file (`2>err.txt`) or a pipe gets plain text.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The filter variables, first wins.
const FILTER_VARS: [&str; 2] = ["BILLIARD_LOG", "RUST_LOG"];

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    /// One JSON object per line (never coloured).
    Json,
}

/// Installs the stderr logger; `default` is the filter when no variable is
/// set (e.g. `"warn"`).
pub fn init(default: &str, format: Format) {
    let filter = filter(default);
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(format == Format::Text && colour(std::io::stderr().is_terminal()))
        .with_writer(std::io::stderr);
    let _ = match format {
        Format::Text => b.try_init(),
        Format::Json => b.json().flatten_event(true).try_init(),
    };
}

fn filter(default: &str) -> EnvFilter {
    for var in FILTER_VARS {
        let Some(value) = std::env::var_os(var) else {
            continue;
        };
        let value = value.to_string_lossy();
        if value.trim().is_empty() {
            continue;
        }
        match EnvFilter::try_new(value.as_ref()) {
            Ok(f) => return f,
            Err(e) => {
                eprintln!("warning: {var}={value:?} is not a log filter ({e}); using {default:?}");
                break;
            }
        }
    }
    EnvFilter::new(default)
}

/// Colour on a terminal, unless `NO_COLOR` is set to anything but "".
pub fn colour(terminal: bool) -> bool {
    let no_color = match std::env::var_os("NO_COLOR") {
        Some(v) => !v.is_empty(),
        None => false,
    };
    terminal && !no_color
}
