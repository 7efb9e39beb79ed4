//! The executable exec'd as the zygote (forkserver) or as each worker
//! (spawn): which one, and proof that it is one.
//!
//! The default needs no setting: a program whose `main` starts with
//! [`crate::run_if_helper`] (the hook) is its own zygote executable. The
//! hook records that it ran, so the choice is *detected*, never guessed: a
//! program without the hook is never exec'd with the zygote's arguments
//! (its `main` would run with them). Failing that, a `billiard-host` beside
//! the program or on `PATH` is used.
//!
//! Whatever is exec'd must answer with a handshake (a fixed packet on the
//! control socket, before anything else, see [`ipc::encode_handshake`]) within
//! [`HANDSHAKE_TIMEOUT`]. A program that exits (`/bin/true`), crashes (a
//! `.so`: SIGSEGV at its entry point), hangs or says something else is a
//! configuration error naming the setting and the path tried, not a plugin
//! load failure.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::ipc;
use crate::sys;
use crate::zygote::hook_ran;

/// How long an exec'd zygote may take to send its handshake (it does so
/// before loading any plugin, so this covers only exec and the start of
/// `main`; capped by the pool's load timeout).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the worker executable came from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExeSource {
    /// `Pool::builder().worker_exe(..)` / `PoolConfig::worker_exe`.
    Configured,
    /// The `BILLIARD_HOST_EXE` environment variable.
    Env,
    /// This program: its `main` calls `billiard_host::run_if_helper()`.
    Hook,
    /// A `billiard-host` found beside this program or on `PATH`.
    Found,
}

impl std::fmt::Display for ExeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExeSource::Configured => "set by Pool::builder().worker_exe(..)",
            ExeSource::Env => "set by BILLIARD_HOST_EXE",
            ExeSource::Hook => "this program, whose main calls billiard_host::run_if_helper()",
            ExeSource::Found => "a billiard-host found beside this program or on PATH",
        })
    }
}

/// What to do when no executable is found.
const HOW_TO: &str = "start main with `billiard_host::run_if_helper();` (this program then is its own zygote), set Pool::builder().worker_exe(..) or BILLIARD_HOST_EXE to a billiard-host executable, or use the fork start method";

/// Finds the executable to start as zygote / spawned worker, and says
/// where it came from.
pub fn resolve(configured: Option<&PathBuf>) -> Result<(PathBuf, ExeSource), String> {
    if let Some(p) = configured {
        return Ok((p.clone(), ExeSource::Configured));
    }
    if let Some(p) = std::env::var_os("BILLIARD_HOST_EXE") {
        return Ok((PathBuf::from(p), ExeSource::Env));
    }
    let me = std::env::current_exe();
    if hook_ran() {
        return me
            .map(|p| (p, ExeSource::Hook))
            .map_err(|e| format!("cannot find this program's own executable: {e}; {HOW_TO}"));
    }
    let name = "billiard-host";
    let mut candidates = Vec::new();
    if let Ok(me) = me {
        // Beside us, or one level up (cargo puts test and example binaries
        // in target/<profile>/deps and .../examples).
        for dir in me.ancestors().skip(1).take(2) {
            candidates.push(dir.join(name));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(name)));
    }
    candidates
        .into_iter()
        .find(|c| c.is_file())
        .map(|p| (p, ExeSource::Found))
        .ok_or_else(|| {
            format!(
                "no zygote executable: this program's main does not call billiard_host::run_if_helper() and no billiard-host is beside it or on PATH; {HOW_TO}"
            )
        })
}

/// The checks that need no exec: the file exists, is a regular file and is
/// executable.
pub fn precheck(exe: &Path, source: ExeSource) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let bad = |why: &str| {
        Err(format!(
            "the zygote executable {} ({source}) {why}",
            exe.display()
        ))
    };
    match std::fs::metadata(exe) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bad("does not exist"),
        Err(e) => bad(&format!("cannot be read: {e}")),
        Ok(m) if !m.is_file() => bad("is not a regular file"),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => bad("is not executable"),
        Ok(_) => Ok(()),
    }
}

/// Checks a handshake packet ([`ipc::check_handshake`]); the error names
/// the executable and where it came from.
pub(crate) fn check_handshake(packet: &[u8], exe: &Path, source: ExeSource) -> Result<(), String> {
    ipc::check_handshake(packet)
        .map_err(|why| format!("the zygote executable {} ({source}) {why}", exe.display()))
}

/// How waiting for a handshake ended, when it did not arrive.
pub(crate) enum NoHandshake {
    /// The socket closed: the program exited or crashed.
    Ended,
    /// Nothing within the timeout.
    Timeout(Duration),
    /// Something else than a handshake, or a bad one (the message).
    Refused(String),
    Io(std::io::Error),
}

/// Waits for the first packet of a freshly exec'd zygote and checks it.
pub(crate) fn await_handshake(
    fd: &OwnedFd,
    timeout: Duration,
    exe: &Path,
    source: ExeSource,
) -> Result<(), NoHandshake> {
    let deadline = crate::bounds::saturating_deadline(Instant::now(), timeout);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(NoHandshake::Timeout(timeout));
        }
        match sys::wait_readable(fd, left) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => return Err(NoHandshake::Io(e)),
        }
        // A handshake is small; a longer packet is refused below anyway.
        let mut buf = [0u8; 256];
        return match sys::recv_with_fds(fd, &mut buf) {
            Ok(Some((n, _))) => {
                check_handshake(&buf[..n], exe, source).map_err(NoHandshake::Refused)
            }
            Ok(None) => Err(NoHandshake::Ended),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => Err(NoHandshake::Io(e)),
        };
    }
}

/// The configuration error for a zygote that did not hand-shake: `status`
/// says how it ended (`None`: it was still running and was killed).
pub(crate) fn explain(
    failure: NoHandshake,
    exe: &Path,
    source: ExeSource,
    status: Option<String>,
    output: &str,
) -> String {
    let what = match failure {
        NoHandshake::Refused(msg) => return with_output(msg, output),
        NoHandshake::Ended => {
            let status = status.unwrap_or_else(|| "ended".into());
            let was = if status.starts_with("killed") {
                "was "
            } else {
                ""
            };
            format!("{was}{status} before the zygote handshake")
        }
        NoHandshake::Timeout(t) => format!(
            "did not send the zygote handshake within {}",
            humantime::format_duration(t)
        ),
        NoHandshake::Io(e) => format!("could not be read from: {e}"),
    };
    let kind = if is_shared_library(exe) {
        "it is a shared library (a plugin?), not a program; "
    } else {
        ""
    };
    with_output(
        format!(
            "the zygote executable {} ({source}) {what}: {kind}it must be a program whose main starts with billiard_host::run_if_helper(), such as billiard-host",
            exe.display()
        ),
        output,
    )
}

fn with_output(msg: String, output: &str) -> String {
    let output = output.trim();
    if output.is_empty() {
        msg
    } else {
        // Bounded: a wrong program may print a lot.
        let cut: String = output.chars().take(2000).collect();
        format!("{msg}; its output:\n{cut}")
    }
}

/// An ELF shared object with no program interpreter: a library, which
/// crashes at its entry point when exec'd (PIE programs have one).
fn is_shared_library(path: &Path) -> bool {
    use std::io::Read;
    let mut bytes = Vec::new();
    match std::fs::File::open(path) {
        Ok(f) => f.take(1 << 16).read_to_end(&mut bytes).is_ok() && elf_is_library(&bytes),
        Err(_) => false,
    }
}

/// `bytes`: the start of a file. 64-bit little-endian ELF only (the
/// platforms this host runs on); anything else is "not known to be one".
fn elf_is_library(bytes: &[u8]) -> bool {
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    // ELFCLASS64, ELFDATA2LSB, ET_DYN.
    if !bytes.starts_with(b"\x7fELF\x02\x01") || u16_at(16) != Some(3) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    !(0..phnum as usize).any(|i| {
        let off = phoff as usize + i * phentsize as usize;
        u32_at(off) == Some(PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_round_trip() {
        let p = Path::new("/x");
        let ok = ipc::encode_handshake(1);
        assert!(ipc::is_handshake(&ok));
        assert!(check_handshake(&ok, p, ExeSource::Configured).is_ok());
        let threaded = check_handshake(&ipc::encode_handshake(3), p, ExeSource::Hook).unwrap_err();
        assert!(threaded.contains("3 threads"), "{threaded}");
        let mut other = ipc::encode_handshake(1);
        other.truncate(other.len() - env!("CARGO_PKG_VERSION").len());
        other.extend_from_slice(b"0.0.1");
        let e = check_handshake(&other, p, ExeSource::Env).unwrap_err();
        assert!(
            e.contains("0.0.1") && e.contains("BILLIARD_HOST_EXE"),
            "{e}"
        );
        assert!(check_handshake(b"hello", p, ExeSource::Env).is_err());
    }

    #[test]
    fn a_library_is_told_from_a_program() {
        let exe = std::env::current_exe().unwrap_or_default();
        assert!(!is_shared_library(&exe), "{} is a program", exe.display());
        assert!(!elf_is_library(b"#!/bin/sh\n"));
    }
}
