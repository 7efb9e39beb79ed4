//! Running a child process with a time cap, without leaving anything behind.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// How a process ended.
pub struct Finished {
    /// `None`: it ran past the timeout and its process group was killed.
    pub status: Option<ExitStatus>,
    /// Captured output (empty unless the caller piped it).
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Spawn to exit, seconds.
    pub wall: f64,
}

/// Runs `cmd` (configure stdin/stdout/stderr first; piped streams are
/// captured) in its own process group, killed if this process dies. Past
/// `timeout` its process group is killed (`status: None`).
pub fn run_timed(cmd: &mut Command, timeout: Duration) -> Result<Finished> {
    cmd.process_group(0);
    // SAFETY: the closure runs in the forked child before exec and makes a
    // single async-signal-safe system call (prctl).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let t0 = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id() as i32;
    let drain = |s: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut s) = s {
                let _ = s.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let (tx, rx) = crossbeam_channel::bounded(1);
    let waiter = std::thread::spawn(move || {
        let st = child.wait();
        let wall = t0.elapsed().as_secs_f64();
        let _ = tx.send((st, wall));
    });
    let res = match rx.recv_timeout(timeout) {
        Ok((st, wall)) => (Some(st.context("waiting for the child")?), wall),
        Err(_) => {
            // process_group(0) made the child's pid its group id.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let wall = rx.recv().map(|(_, w)| w).unwrap_or_default();
            (None, wall)
        }
    };
    let _ = waiter.join();
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let (status, wall) = res;
    Ok(Finished {
        status,
        stdout,
        stderr,
        wall,
    })
}
