//! A `billiard-host run` child driven from a test: start it in its own
//! process group with its output piped, read its first result line, signal
//! it, then read the rest (tests/signals.rs, tests/hostile_process.rs,
//! tests/cli_run.rs).

use std::io::{BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// Starts `billiard-host run ARGS` in a process group of its own, stdin
/// closed, stdout and stderr piped, `RUST_BACKTRACE` unset.
pub fn start(args: &[&str]) -> Child {
    super::host_command()
        .arg("run")
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("billiard-host starts")
}

/// Sends `sig` to `pid`; panics if it cannot.
pub fn signal(pid: i32, sig: Signal) {
    kill(Pid::from_raw(pid), sig).unwrap_or_else(|e| panic!("kill({pid}, {sig}): {e}"));
}

/// Sends every signal an operator sends to "the service" (and the stop
/// signal, with no stop asked) to each of `pids`: what the pool's helper
/// processes must ride out without losing a job.
pub fn signal_as_an_operator(pids: &[i32]) {
    for sig in [
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGPIPE,
    ] {
        for &p in pids {
            signal(p, sig);
        }
    }
}

/// Reads the rest of a run whose `first` line was read from `out`: (result
/// lines, stderr, exit code). Stderr is read to its end before the wait;
/// panics if the child was killed by a signal.
pub fn finish(
    mut child: Child,
    mut out: BufReader<ChildStdout>,
    first: String,
) -> (Vec<Value>, String, i32) {
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    let rs = super::json_lines(&(first + &rest));
    let code = status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {status:?}; stderr: {err}"));
    (rs, err, code)
}

/// The zygotes of a `billiard-host` process and their workers:
/// (its children, their children).
pub fn helpers_of(host: i32) -> (Vec<i32>, Vec<i32>) {
    let zygotes = super::children_of(host);
    let workers = zygotes
        .iter()
        .flat_map(|&z| super::children_of(z))
        .collect();
    (zygotes, workers)
}
