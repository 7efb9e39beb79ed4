//! Signals during `run`: SIGINT/SIGTERM stop the batch (the first gently,
//! the second at once), SIGHUP reloads the plugins.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use billiard_host::Pool;
use crossbeam_channel::{Receiver, Sender};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

/// A one-way "stop taking input" switch that blocked readers can wait on.
pub struct Stop {
    flag: AtomicBool,
    reason: OnceLock<String>,
    /// Dropped on `request`: `woken()` then reports disconnection.
    wake: Mutex<Option<Sender<()>>>,
    woken: Receiver<()>,
}

impl Stop {
    pub fn new() -> Stop {
        let (tx, rx) = crossbeam_channel::bounded(0);
        Stop {
            flag: AtomicBool::new(false),
            reason: OnceLock::new(),
            wake: Mutex::new(Some(tx)),
            woken: rx,
        }
    }

    /// Asks everyone to stop; true for the first request.
    pub fn request(&self, why: &str) -> bool {
        let _ = self.reason.set(why.to_string());
        let first = !self.flag.swap(true, Ordering::AcqRel);
        self.wake.lock().unwrap_or_else(|e| e.into_inner()).take();
        first
    }

    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Why the stop was requested (e.g. "interrupted by SIGTERM").
    pub fn reason(&self) -> Option<&str> {
        self.reason.get().map(String::as_str)
    }

    /// Becomes ready (disconnected) once a stop is requested: use it in a
    /// `select!` next to a blocking receive.
    pub fn woken(&self) -> &Receiver<()> {
        &self.woken
    }
}

/// See [`watch`].
pub const REPEAT: Duration = Duration::from_millis(100);

/// What the signal thread did, for the final report.
#[derive(Default)]
pub struct Escalation {
    /// A second SIGINT/SIGTERM terminated the pool.
    pub killed: AtomicBool,
}

/// Handles SIGINT, SIGTERM and SIGHUP on a thread of `scope` until
/// [`Handle::close`] is called:
/// - first SIGINT/SIGTERM: `stop.request(..)` (stop reading input; running
///   jobs finish);
/// - second: `pool.terminate_now()` (kill the workers; unfinished jobs end
///   `terminated`);
/// - SIGHUP: `pool.restart()` (reload the plugin files, rolling restart).
///
/// The same signal again within [`REPEAT`] of the first counts as the same
/// request: `timeout`, and anything that signals both a process and its
/// group, deliver it twice.
///
/// `say` prints a note for people (on stderr).
pub fn watch<'scope, 'env>(
    scope: &'scope Scope<'scope, 'env>,
    pool: &'env Pool,
    stop: &'env Stop,
    escalation: &'env Escalation,
    say: impl Fn(&str) + Send + 'scope,
) -> std::io::Result<(Handle, ScopedJoinHandle<'scope, ()>)> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let handle = signals.handle();
    let thread = std::thread::Builder::new()
        .name("billiard-signals".into())
        .spawn_scoped(scope, move || {
            let mut first: Option<(i32, Instant)> = None;
            for sig in signals.forever() {
                let name = match sig {
                    SIGINT => "SIGINT",
                    SIGTERM => "SIGTERM",
                    _ => "SIGHUP",
                };
                if sig == SIGHUP {
                    // Not waited for here: the new files load while the
                    // current workers serve, and the pool logs whether the
                    // reload took ("the plugins were reloaded") or failed.
                    match pool.restart_in_background() {
                        Ok(()) => say(
                            "SIGHUP: reloading the plugins (rolling restart; the current \
                             workers serve until the new files are loaded)",
                        ),
                        Err(e) => say(&format!("SIGHUP: cannot restart the pool: {e}")),
                    }
                } else if first.is_some_and(|(s, at)| s == sig && at.elapsed() < REPEAT) {
                    // A duplicate delivery of the first one.
                } else if stop.request(&format!("interrupted by {name}")) {
                    first = Some((sig, Instant::now()));
                    say(&format!(
                        "{name}: no more input is read; waiting for the jobs already sent \
                         to finish (send it again to kill them)"
                    ));
                } else if !escalation.killed.swap(true, Ordering::AcqRel) {
                    say(&format!("{name}: terminating the workers now"));
                    pool.terminate_now();
                }
            }
        })?;
    Ok((handle, thread))
}
