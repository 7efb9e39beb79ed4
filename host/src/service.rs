//! Speaking to a service manager (systemd's `Type=notify`): `READY=1` once
//! the service does its work, `STOPPING=1` when it begins to stop, and
//! `WATCHDOG=1` pings only while the caller's health check passes, so a
//! service whose pool is gone or stuck stops pinging and is restarted.
//!
//! [`Notifier::from_env`] reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and
//! `$WATCHDOG_PID` once and removes them from the environment, so the
//! worker processes (and the plugin code they run) never inherit a way
//! to speak for the service. Call it before the process starts threads.
//! Without a service manager every call is a no-op.

use std::sync::Mutex;
use std::time::Duration;

use crate::sys::notify::NotifySocket;

/// What the notifier has said, so pings stop for good after `STOPPING=1`
/// and a health change is reported once.
#[derive(Debug, Default)]
struct Said {
    stopping: bool,
    /// The last unhealthy reason reported (None: healthy).
    unhealthy: Option<String>,
}

/// The service manager's side channel.
#[derive(Debug)]
pub struct Notifier {
    sock: Option<NotifySocket>,
    watchdog: Option<Duration>,
    said: Mutex<Said>,
}

impl Notifier {
    /// The notifier the environment describes (see the module docs). A
    /// socket name that cannot be used is logged and ignored: the service
    /// still runs, as it would under a manager that does not listen.
    pub fn from_env() -> Notifier {
        let sock = match NotifySocket::from_env() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("NOTIFY_SOCKET is set but cannot be used ({e}); not notifying");
                None
            }
        };
        let watchdog = watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        for k in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            // Before any thread starts (the caller's contract), so no
            // other thread reads the environment meanwhile.
            std::env::remove_var(k);
        }
        Notifier {
            watchdog: watchdog.filter(|_| sock.is_some()),
            sock,
            said: Mutex::new(Said::default()),
        }
    }

    /// A notifier for the socket bound at `socket` with a watchdog ping
    /// period of `watchdog` (for embedders that read the manager's
    /// settings themselves, and for tests).
    pub fn at(socket: &std::path::Path, watchdog: Option<Duration>) -> std::io::Result<Notifier> {
        Ok(Notifier {
            sock: Some(NotifySocket::at(socket)?),
            watchdog,
            said: Mutex::new(Said::default()),
        })
    }

    /// A notifier that says nothing (no service manager).
    pub fn none() -> Notifier {
        Notifier {
            sock: None,
            watchdog: None,
            said: Mutex::new(Said::default()),
        }
    }

    /// True when a service manager listens.
    pub fn is_active(&self) -> bool {
        self.sock.is_some()
    }

    /// How often to call [`Notifier::ping`]: half the manager's watchdog
    /// timeout, as `sd_watchdog_enabled(3)` advises. None: no watchdog.
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.watchdog
    }

    /// `READY=1` with a status line and the main pid.
    pub fn ready(&self, status: &str) {
        self.send(&format!(
            "READY=1\nSTATUS={}\nMAINPID={}",
            one_line(status),
            std::process::id()
        ));
    }

    /// `STOPPING=1`; no watchdog ping follows.
    pub fn stopping(&self, status: &str) {
        let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        said.stopping = true;
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    /// One watchdog round: `WATCHDOG=1` when `health` is Ok; when it is not,
    /// no ping (the manager's timeout then restarts the service) and the
    /// reason as `STATUS=`, once per change. Nothing once stopping.
    /// Returns true when it pinged.
    pub fn ping(&self, health: Result<(), String>) -> bool {
        let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        if said.stopping || self.sock.is_none() {
            return false;
        }
        match health {
            Ok(()) => {
                if said.unhealthy.take().is_some() {
                    self.send("STATUS=healthy again");
                }
                self.send("WATCHDOG=1");
                true
            }
            Err(why) => {
                if said.unhealthy.as_deref() != Some(why.as_str()) {
                    self.send(&format!("STATUS=unhealthy: {}", one_line(&why)));
                    said.unhealthy = Some(why);
                }
                false
            }
        }
    }

    fn send(&self, state: &str) {
        if let Some(s) = &self.sock {
            if let Err(e) = s.send(state) {
                tracing::debug!("cannot notify the service manager ({e})");
            }
        }
    }
}

/// A status value on one line (the protocol is newline-separated).
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// Half of `$WATCHDOG_USEC`, when the watchdog is meant for `pid`
/// (`$WATCHDOG_PID` unset or equal). Values out of range mean no watchdog.
fn watchdog_interval(usec: Option<&str>, for_pid: Option<&str>, pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(p) = for_pid {
        if p.trim().parse::<u32>().ok() != Some(pid) {
            return None;
        }
    }
    let period = Duration::from_micros(usec / 2);
    (period >= Duration::from_millis(1) && period <= crate::bounds::MAX_DURATION).then_some(period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_period_is_half_the_timeout_and_only_for_this_pid() {
        assert_eq!(
            watchdog_interval(Some("2000000"), None, 7),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            watchdog_interval(Some("2000000"), Some("7"), 7),
            Some(Duration::from_secs(1))
        );
        assert_eq!(watchdog_interval(Some("2000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("x"), None, 7), None);
        assert_eq!(watchdog_interval(Some("1"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
        assert_eq!(
            watchdog_interval(Some(&u64::MAX.to_string()), None, 7),
            None
        );
    }

    #[test]
    fn status_lines_stay_one_line() {
        assert_eq!(one_line("a\nb\rc"), "a b c");
    }

    fn received(sock: &std::os::unix::net::UnixDatagram) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[test]
    fn an_unhealthy_pool_stops_the_pings_and_says_why_once() {
        let dir = std::env::temp_dir().join(format!("bh-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_nonblocking(true).unwrap();
        let n = Notifier::at(&path, Some(Duration::from_secs(1))).unwrap();
        assert!(n.is_active());
        n.ready("up");
        assert!(n.ping(Ok(())));
        assert!(!n.ping(Err("no live worker".into())));
        assert!(!n.ping(Err("no live worker".into())));
        assert!(n.ping(Ok(())));
        n.stopping("bye");
        assert!(!n.ping(Ok(())), "no ping once stopping");
        let got = received(&sock);
        let pid = std::process::id();
        assert_eq!(
            got,
            [
                format!("READY=1\nSTATUS=up\nMAINPID={pid}"),
                "WATCHDOG=1".to_string(),
                "STATUS=unhealthy: no live worker".to_string(),
                "STATUS=healthy again".to_string(),
                "WATCHDOG=1".to_string(),
                "STOPPING=1\nSTATUS=bye".to_string(),
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_a_manager_nothing_is_sent_and_nothing_pings() {
        let n = Notifier::none();
        assert!(!n.is_active());
        assert!(!n.ping(Ok(())));
        assert_eq!(n.watchdog_period(), None);
    }
}
