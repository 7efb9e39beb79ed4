//! `billiard-host worker` under a service manager (issue 28, item 13): the
//! test plays systemd, listening on the datagram socket `$NOTIFY_SOCKET`
//! names, with a real redis-server on a free port.
//!
//! - READY=1 (with MAINPID) once the worker consumes, WATCHDOG=1 every half
//!   `$WATCHDOG_USEC` while the pool is healthy, STOPPING=1 on SIGTERM and
//!   no ping after it;
//! - the worker processes (plugin code) do not inherit `$NOTIFY_SOCKET`;
//! - a dead pool: the worker says STOPPING with the error and pings no more.

use crate::common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::celery::{self, DEADLINE};
use nix::sys::signal::Signal;

/// The manager's end: a datagram socket bound in a fresh directory.
struct Manager {
    sock: UnixDatagram,
    path: PathBuf,
    dir: PathBuf,
    got: Vec<String>,
}

impl Manager {
    fn new(what: &str) -> Manager {
        let dir = celery::unique_temp_dir(what);
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        Manager {
            sock,
            path,
            dir,
            got: Vec::new(),
        }
    }

    /// Receives until a datagram contains `want`; panics after `limit`.
    fn until(&mut self, want: &str, limit: Duration) -> String {
        let end = Instant::now() + limit;
        let mut buf = vec![0u8; 4096];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no notification with {want:?} within {limit:?}; got {:?}",
                self.got
            );
            self.sock.set_read_timeout(Some(left)).expect("timeout");
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.got.push(msg.clone());
                if msg.contains(want) {
                    return msg;
                }
            }
        }
    }

    /// Everything still queued on the socket.
    fn drain(&mut self) {
        self.sock.set_nonblocking(true).expect("nonblocking");
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            self.got
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn worker_cmd(url: &str, socket: &Path, watchdog_usec: &str) -> std::process::Command {
    let mut cmd = common::host_command();
    cmd.args(["worker", &common::plugin_str("math"), "--plugin"])
        .arg(common::plugin_str("hostile"))
        .args(["--broker", url, "-c", "1"])
        .env("NOTIFY_SOCKET", socket)
        .env("WATCHDOG_USEC", watchdog_usec);
    cmd
}

#[test]
fn u28_worker_notifies_ready_watchdog_and_stopping() {
    let Some(redis) = celery::redis_or_skip("u28_worker_notifies_ready_watchdog_and_stopping")
    else {
        return;
    };
    let url = redis.url();
    let mut m = Manager::new("notify-ok");
    let mut w = celery::spawn_worker_cmd(worker_cmd(&url, &m.path, "400000"));
    let ready = m.until("READY=1", DEADLINE);
    assert!(ready.contains(&format!("MAINPID={}", w.pid())), "{ready}");
    assert!(ready.contains("STATUS=consuming [celery]"), "{ready}");
    // Pings every 200 ms while the pool is healthy.
    m.until("WATCHDOG=1", DEADLINE);
    m.until("WATCHDOG=1", DEADLINE);

    // Plugin code cannot speak for the service: the variable is gone from
    // the worker processes' environment.
    let out = common::host([
        "submit",
        "--broker",
        &url,
        "-t",
        "hostile.sb_env",
        "--args",
        r#"["NOTIFY_SOCKET"]"#,
        "--wait",
        "--timeout",
        "60s",
    ]);
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        line.contains("NOTIFY_SOCKET is not in the environment"),
        "{line}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    w.signal(Signal::SIGTERM);
    m.until("STOPPING=1", DEADLINE);
    let status = w
        .wait_timeout(DEADLINE)
        .unwrap_or_else(|| panic!("the worker did not stop:\n{}", w.stderr()));
    assert!(status.success(), "{status:?}\n{}", w.stderr());
    m.drain();
    let stop = m
        .got
        .iter()
        .position(|g| g.contains("STOPPING=1"))
        .expect("STOPPING seen");
    assert!(
        m.got[stop..].iter().all(|g| !g.contains("WATCHDOG=1")),
        "a ping after STOPPING: {:?}",
        m.got
    );
}

#[test]
fn u28_a_dead_pool_stops_the_pings() {
    let Some(redis) = celery::redis_or_skip("u28_a_dead_pool_stops_the_pings") else {
        return;
    };
    if !cfg!(debug_assertions) {
        celery::skip(
            "u28_a_dead_pool_stops_the_pings",
            "the supervisor panic hook exists in debug builds only",
        );
        return;
    }
    let url = redis.url();
    let mut m = Manager::new("notify-dead");
    let mut cmd = worker_cmd(&url, &m.path, "200000");
    cmd.env("BILLIARD_HOST_TEST_PANIC_SUPERVISOR_AT_JOB", "1");
    let mut w = celery::spawn_worker_cmd(cmd);
    m.until("READY=1", DEADLINE);
    m.until("WATCHDOG=1", DEADLINE);
    // The first job panics the supervisor thread: the pool is gone.
    let _ = common::host([
        "submit",
        "--broker",
        &url,
        "-t",
        "math.square",
        "--args",
        "[3]",
    ]);
    let stopping = m.until("STOPPING=1", DEADLINE);
    assert!(stopping.contains("error"), "{stopping}");
    let status = w
        .wait_timeout(DEADLINE)
        .unwrap_or_else(|| panic!("the worker kept running on a dead pool:\n{}", w.stderr()));
    assert!(!status.success(), "{status:?}");
    m.drain();
    let stop = m
        .got
        .iter()
        .position(|g| g.contains("STOPPING=1"))
        .unwrap_or(0);
    assert!(
        m.got[stop..].iter().all(|g| !g.contains("WATCHDOG=1")),
        "a ping after the pool died: {:?}",
        m.got
    );
}
