//! Logging to stderr for every subcommand: what to show, and colour.
//!
//! - The filter is `worker`'s `-l/--loglevel` if given (Celery's level
//!   names, any case: the command line is the most specific setting), else
//!   `BILLIARD_LOG` if set, else `RUST_LOG`, else the subcommand's default
//!   (`warn`; `info` for `worker`), in `tracing`'s env-filter syntax:
//!   `debug`, `billiard_host=debug`, `warn,billiard_host::pool=debug`. An
//!   invalid filter is said once on stderr and the default is used.
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
    init_at(None, default, format)
}

/// [`init`], with a level from the command line (`--loglevel`) that
/// overrides the variables.
pub fn init_at(level: Option<Level>, default: &str, format: Format) {
    let filter = match level {
        Some(l) => EnvFilter::new(l.filter()),
        None => filter(default),
    };
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(format == Format::Text && colour(std::io::stderr().is_terminal()))
        .with_writer(std::io::stderr);
    let _ = match format {
        Format::Text => b.try_init(),
        Format::Json => b.json().flatten_event(true).try_init(),
    };
}

/// A log level as Celery's `-l/--loglevel` names it (any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warning,
    Error,
}

impl Level {
    /// The names accepted, for the error message.
    pub const NAMES: &'static str = "debug, info, warning, error, critical, fatal";

    /// Parses Celery's level names, any case; `warn` as `tracing` spells
    /// it. `critical` and `fatal` are `error` (tracing has nothing above).
    pub fn parse(s: &str) -> Result<Level, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "debug" => Ok(Level::Debug),
            "info" => Ok(Level::Info),
            "warning" | "warn" => Ok(Level::Warning),
            "error" | "critical" | "fatal" => Ok(Level::Error),
            _ => Err(format!("not a log level (one of {})", Level::NAMES)),
        }
    }

    /// The env-filter directive of this level.
    fn filter(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warning => "warn",
            Level::Error => "error",
        }
    }
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

#[cfg(test)]
mod tests {
    use super::Level;

    #[test]
    fn celery_level_names_in_any_case() {
        for (name, level) in [
            ("info", Level::Info),
            ("INFO", Level::Info),
            ("Debug", Level::Debug),
            ("WARNING", Level::Warning),
            ("warn", Level::Warning),
            ("error", Level::Error),
            ("CRITICAL", Level::Error),
            ("fatal", Level::Error),
        ] {
            assert_eq!(Level::parse(name), Ok(level), "{name}");
        }
        for bad in ["", "verbose", "10", "info,debug"] {
            let e = Level::parse(bad).unwrap_err();
            assert!(e.contains("warning"), "{e}");
        }
    }
}
