//! Zygote processes as processes: starting one (exec'd, or already
//! forked), its handshake, waiting for its hello at build time, ending one
//! that failed and reaping one that exits. `zygotes.rs` owns them once
//! they are registered.

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::super::config::{PoolConfig, StartMethod};
use super::zygotes::Launched;
use crate::error::{ErrorKind, TaskError};
use crate::ipc::{self, ZygoteMsg};
use crate::sys;
use crate::zygote;

/// How long a zygote gets to exit after being asked, before it is killed.
const ZYGOTE_EXIT_GRACE: Duration = Duration::from_secs(3);

/// Starts a zygote process (forkserver/spawn: exec of the worker
/// executable; fork: `forked` is the already-forked one). It loads the
/// plugins and then says hello; nothing here waits for that.
pub(super) fn launch(
    cfg: &PoolConfig,
    forked: Option<(OwnedFd, i32)>,
) -> Result<Launched, TaskError> {
    let load_err = |reason: String| TaskError::new(ErrorKind::PluginLoad, reason);
    Ok(match forked {
        Some((fd, pid)) => Launched {
            fd,
            pid,
            child: None,
            output: None,
        },
        None => {
            let (exe, source) =
                super::super::worker_exe::resolve(cfg.worker_exe.as_ref()).map_err(load_err)?;
            super::super::worker_exe::precheck(&exe, source).map_err(load_err)?;
            let (ours, theirs) =
                sys::seqpacket_pair().map_err(|e| load_err(format!("socketpair: {e}")))?;
            let (out_r, out_w) = sys::pipe().map_err(|e| load_err(format!("pipe: {e}")))?;
            let mode = if cfg.start_method == StartMethod::Spawn {
                "exec"
            } else {
                "fork"
            };
            let mut args: Vec<&OsStr> = vec![OsStr::new(zygote::ZYGOTE_ARG), OsStr::new(mode)];
            let sandbox_arg = zygote::sandbox_arg(&cfg.sandbox);
            if let Some(a) = &sandbox_arg {
                args.push(OsStr::new(a));
            }
            args.extend(cfg.plugins.iter().map(|p| p.as_os_str()));
            let env = cfg.sandbox.environment();
            let child =
                sys::spawn_helper(&exe, &args, &[theirs.as_raw_fd()], &out_w, env.as_deref())
                    .map_err(|e| {
                        load_err(format!("cannot start the zygote {}: {e}", exe.display()))
                    })?;
            let pid = child.id() as i32;
            Launched {
                fd: ours,
                pid,
                child: Some(child),
                output: Some(out_r),
            }
        }
    })
}

/// Waits for the handshake of a zygote just exec'd (`pool::worker_exe`).
pub(super) fn handshake(
    cfg: &PoolConfig,
    fd: &OwnedFd,
) -> Result<(), super::super::worker_exe::NoHandshake> {
    use super::super::worker_exe::{self, NoHandshake};
    let (exe, source) =
        worker_exe::resolve(cfg.worker_exe.as_ref()).map_err(NoHandshake::Refused)?;
    let timeout = worker_exe::HANDSHAKE_TIMEOUT.min(cfg.load_timeout);
    worker_exe::await_handshake(fd, timeout, &exe, source)
}

/// Ends a zygote that did not hand-shake; the configuration error.
pub(super) fn handshake_failure(
    cfg: &PoolConfig,
    z: Launched,
    why: super::super::worker_exe::NoHandshake,
) -> String {
    use super::super::worker_exe::{self, NoHandshake};
    let ended = matches!(why, NoHandshake::Ended);
    drop(z.fd);
    // An exited program is reaped for its status; one still running
    // (it hangs, or said something else) is killed.
    let grace = if ended {
        Duration::from_secs(2)
    } else {
        Duration::ZERO
    };
    let status = match sys::reap_child_bounded(z.pid, grace) {
        (Some(st), false) => Some(sys::describe_wait_status(st)),
        _ => None,
    };
    drop(z.child);
    let output = z.output.map(drain_text).unwrap_or_default();
    match worker_exe::resolve(cfg.worker_exe.as_ref()) {
        Ok((exe, source)) => worker_exe::explain(why, &exe, source, status, &output),
        Err(e) => e,
    }
}

/// Ends a zygote that did not load the plugins and says why, with its
/// exit status and whatever it printed.
pub(super) fn load_failure(cfg: &PoolConfig, z: Launched, why: &str) -> TaskError {
    // SIGKILL first: a zygote still inside a plugin constructor would
    // not read its socket.
    let _ = sys::kill_pid(z.pid, sys::SIGKILL);
    drop(z.fd);
    let output = z.output.map(drain_text).unwrap_or_default();
    let status = match sys::reap_child_bounded(z.pid, Duration::ZERO) {
        (Some(st), _) if libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGKILL => {
            "the zygote was killed".to_string()
        }
        (Some(st), _) if libc::WIFSIGNALED(st) => {
            format!("the zygote was {}", sys::describe_wait_status(st))
        }
        (Some(st), _) => format!("the zygote {}", sys::describe_wait_status(st)),
        (None, _) => "the zygote is gone".to_string(),
    };
    drop(z.child);
    let files: Vec<String> = cfg
        .plugins
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    TaskError::new(
        ErrorKind::PluginLoad,
        format!(
            "cannot load the plugins ({}): {why}; {status}{}",
            files.join(", "),
            if output.trim().is_empty() {
                String::new()
            } else {
                format!("; its output:\n{}", output.trim_end())
            }
        ),
    )
}

pub(super) fn wait_hello(
    fd: &OwnedFd,
    buf: &mut [u8],
    timeout: Duration,
) -> Result<ZygoteMsg, String> {
    let deadline = crate::bounds::saturating_deadline(Instant::now(), timeout);
    let mut parts = zygote::HelloParts::default();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "it did not finish loading them within {} (does a plugin's constructor block?)",
                humantime::format_duration(timeout)
            ));
        }
        match sys::wait_readable(fd, left) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => return Err(e.to_string()),
        }
        let msg = match sys::recv_with_fds(fd, buf) {
            Ok(Some((n, _))) => ipc::decode_ctl(&buf[..n])?,
            Ok(None) => return Err("it exited".into()),
            Err(e) => return Err(e.to_string()),
        };
        // A long plugin list comes in pieces (C11).
        if let Some(hello) = parts.feed(msg)? {
            return Ok(hello);
        }
    }
}

/// Reaps a zygote we started (our child: exec'd, or forked for the `fork`
/// start method) and says how it ended. The zygote exits promptly once its
/// control socket closes, but a stopped (SIGSTOP) or wedged one would not:
/// the wait is bounded, then it is killed.
pub(super) fn reap_zygote(child: Option<std::process::Child>, pid: i32) -> String {
    // The std handle is only dropped (that does not wait): the pid is
    // reaped here, with a bound.
    drop(child);
    match sys::reap_child_bounded(pid, ZYGOTE_EXIT_GRACE) {
        (Some(st), false) => sys::describe_wait_status(st),
        (Some(_), true) => format!(
            "it did not exit within {} (stopped or wedged) and was killed",
            humantime::format_duration(ZYGOTE_EXIT_GRACE)
        ),
        (None, _) => "already reaped".into(),
    }
}

fn drain_text(r: OwnedFd) -> String {
    let _ = sys::set_nonblocking(&r, true);
    let mut bytes = Vec::new();
    let _ = std::fs::File::from(r).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

pub(super) fn forward_lines(r: OwnedFd, pid: i32) {
    use std::io::BufRead;
    let _ = sys::set_nonblocking(&r, false);
    let reader = std::io::BufReader::new(std::fs::File::from(r));
    for line in reader.split(b'\n').map_while(Result::ok) {
        tracing::info!(target: "billiard::zygote", pid, "{}", String::from_utf8_lossy(&line));
    }
}
