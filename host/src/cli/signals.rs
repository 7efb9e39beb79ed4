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

/// What the signals do to one batch (`run` on a pool, `run --isolated`).
pub struct Reactions<'env> {
    /// What the first SIGINT/SIGTERM lets finish, for its note ("the jobs
    /// already sent").
    pub finishing: &'static str,
    /// What the second one does, for its note ("terminating the workers").
    pub killing: &'static str,
    /// Raised by the second SIGINT/SIGTERM (once), for the final report.
    pub killed: &'env AtomicBool,
    /// Runs once, when `killed` is raised.
    pub kill: Box<dyn Fn() + Send + 'env>,
    /// SIGHUP; tells what it did through its argument (`say`).
    pub hangup: Hangup<'env>,
}

/// What SIGHUP does; its argument prints a note (`say`).
pub type Hangup<'env> = Box<dyn Fn(&dyn Fn(&str)) + Send + 'env>;

impl<'env> Reactions<'env> {
    /// `run` on a pool: the second signal terminates the pool's workers,
    /// SIGHUP reloads the plugin files (rolling restart).
    pub fn pool(pool: &'env Pool, killed: &'env AtomicBool) -> Reactions<'env> {
        Reactions {
            finishing: "the jobs already sent",
            killing: "terminating the workers now",
            killed,
            kill: Box::new(move || pool.terminate_now()),
            // Not waited for here: the new files load while the current
            // workers serve, and the pool logs whether the reload took
            // ("the plugins were reloaded") or failed.
            hangup: Box::new(move |say| match pool.restart_in_background() {
                Ok(()) => say(
                    "SIGHUP: reloading the plugins (rolling restart; the current \
                     workers serve until the new files are loaded)",
                ),
                Err(e) => say(&format!("SIGHUP: cannot restart the pool: {e}")),
            }),
        }
    }
}

/// Handles SIGINT, SIGTERM and SIGHUP on a thread of `scope` until
/// [`Handle::close`] is called:
/// - first SIGINT/SIGTERM: `stop.request(..)` (stop reading input; what
///   runs finishes);
/// - second: raises `r.killed` and runs `r.kill`;
/// - SIGHUP: `r.hangup`.
///
/// The same signal again within [`REPEAT`] of the first counts as the same
/// request: `timeout`, and anything that signals both a process and its
/// group, deliver it twice.
///
/// `say` prints a note for people (on stderr).
pub fn watch<'scope, 'env>(
    scope: &'scope Scope<'scope, 'env>,
    stop: &'env Stop,
    r: Reactions<'env>,
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
                    (r.hangup)(&say);
                } else if first.is_some_and(|(s, at)| s == sig && at.elapsed() < REPEAT) {
                    // A duplicate delivery of the first one.
                } else if stop.request(&format!("interrupted by {name}")) {
                    first = Some((sig, Instant::now()));
                    say(&format!(
                        "{name}: no more input is read; waiting for {} to finish (send it \
                         again to kill them)",
                        r.finishing
                    ));
                } else if !r.killed.swap(true, Ordering::AcqRel) {
                    say(&format!("{name}: {}", r.killing));
                    (r.kill)();
                }
            }
        })?;
    Ok((handle, thread))
}
