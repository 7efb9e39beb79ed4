//! Every OS call of the host lives here, behind safe functions: fork and
//! exec, sockets and fd passing, pipes, signals, pidfds, rlimits, wait4 and
//! shared memory. The rest of the crate calls these and contains no
//! `unsafe` of its own.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The service manager's notification socket (`sd_notify`).
pub mod notify;
/// The worker sandbox's OS calls (namespaces, mounts, seccomp, identity).
pub mod sandbox;
/// The shared-memory payload arenas' OS calls (sealed memfds, mappings).
pub mod shm;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_long(r: libc::c_long) -> io::Result<libc::c_long> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The system-wide coarse monotonic clock (CLOCK_MONOTONIC_COARSE) in
/// nanoseconds: the same clock in every process of the machine, so a
/// worker's start time can be compared with the supervisor's now. Coarse:
/// read without a system call or a clock source read (a chunk's worker
/// reads it once per item), at the kernel tick's resolution
/// ([`monotonic_coarse_res`]).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    timespec_ns(&ts)
}

/// The resolution of [`monotonic_ns`] (a kernel tick, 1 to 10 ms).
pub fn monotonic_coarse_res() -> Duration {
    static RES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let ns = *RES.get_or_init(|| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_getres writes one timespec into the valid pointer.
        let r = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        if r == 0 {
            timespec_ns(&ts)
        } else {
            10_000_000
        }
    });
    Duration::from_nanos(ns)
}

fn timespec_ns(ts: &libc::timespec) -> u64 {
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// Number of threads of this process (from /proc/self/status).
pub fn thread_count() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Threads: line in /proc/self/status"))
}

fn socketpair(kind: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two fds into the 2-element array on success.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            kind | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A connected pair of stream sockets (close-on-exec).
pub fn stream_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socketpair(libc::SOCK_STREAM)
}

/// A connected pair of message-boundary-preserving sockets (close-on-exec).
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socketpair(libc::SOCK_SEQPACKET)
}

/// A pipe (read end, write end), close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array on success.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds were just created.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub fn set_nonblocking(fd: &impl AsRawFd, on: bool) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on an fd we hold; F_GETFL/F_SETFL take no pointers.
    unsafe {
        let flags = cvt(libc::fcntl(fd, libc::F_GETFL))?;
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        cvt(libc::fcntl(fd, libc::F_SETFL, flags))?;
    }
    Ok(())
}

/// Sets the socket's send and receive buffer sizes (best effort).
pub fn set_socket_buffers(fd: &impl AsRawFd, bytes: usize) {
    let v = bytes as libc::c_int;
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: setsockopt reads an int from a valid pointer.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// Sends one message with file descriptors attached (SCM_RIGHTS).
pub fn send_with_fds(sock: &impl AsRawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [io::IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(n) => {
                return Err(io::Error::other(format!(
                    "short send: {n} of {} bytes",
                    bytes.len()
                )))
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message and the fds attached to it. `Ok(None)` at EOF.
pub fn recv_with_fds(
    sock: &impl AsRawFd,
    buf: &mut [u8],
) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut cmsg_space = nix::cmsg_space!([RawFd; 8]);
    loop {
        let mut iov = [io::IoSliceMut::new(buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            // SAFETY: the kernel just installed these fds in
                            // this process for us; nothing else owns them.
                            fds.extend(
                                raw.into_iter()
                                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                            );
                        }
                    }
                }
                if msg.bytes == 0 && fds.is_empty() {
                    return Ok(None);
                }
                if msg.flags.contains(MsgFlags::MSG_TRUNC) {
                    return Err(io::Error::other("control message truncated"));
                }
                return Ok(Some((msg.bytes, fds)));
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes all of several buffers with writev, retrying on partial writes
/// (blocking sockets only).
pub fn write_all_vectored(fd: &impl AsRawFd, bufs: &[&[u8]]) -> io::Result<()> {
    let mut idx = 0;
    let mut off = 0;
    while idx < bufs.len() {
        let n = writev_from(fd, bufs, idx, off)?;
        advance(bufs, &mut idx, &mut off, n);
    }
    Ok(())
}

/// One writev starting at `bufs[idx][off..]`. Returns bytes written.
pub fn writev_from(fd: &impl AsRawFd, bufs: &[&[u8]], idx: usize, off: usize) -> io::Result<usize> {
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(bufs.len() - idx);
    for (i, b) in bufs[idx..].iter().enumerate() {
        let b = if i == 0 { &b[off..] } else { b };
        if !b.is_empty() {
            iov.push(libc::iovec {
                iov_base: b.as_ptr() as *mut _,
                iov_len: b.len(),
            });
        }
        if iov.len() == 64 {
            break;
        }
    }
    if iov.is_empty() {
        return Ok(0);
    }
    loop {
        // SAFETY: every iovec points into a live slice of `bufs`.
        let r = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Moves the (index, offset) cursor over `bufs` forward by `n` bytes.
pub fn advance(bufs: &[&[u8]], idx: &mut usize, off: &mut usize, mut n: usize) {
    while *idx < bufs.len() {
        let left = bufs[*idx].len() - *off;
        if n < left {
            *off += n;
            return;
        }
        n -= left;
        *idx += 1;
        *off = 0;
        if n == 0 {
            // Skip empty buffers so the cursor lands on data.
            while *idx < bufs.len() && bufs[*idx].is_empty() {
                *idx += 1;
            }
            return;
        }
    }
}

/// Opens a pidfd for `pid`. Only race-free when `pid` is our own child that
/// has not been reaped yet.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: raw syscall with integer arguments; returns a new fd or -1.
    let fd = cvt_long(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the kernel returned a fresh fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `sig` to the process a pidfd refers to (never to a recycled pid).
pub fn pidfd_send_signal(pidfd: &impl AsRawFd, sig: i32) -> io::Result<()> {
    // SAFETY: raw syscall; the siginfo pointer is NULL as the API allows.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })?;
    Ok(())
}

/// Sends `sig` to every process of group `pgid`.
pub fn kill_group(pgid: i32, sig: i32) -> io::Result<()> {
    if pgid <= 1 {
        return Err(io::Error::other("refusing to signal process group <= 1"));
    }
    // SAFETY: kill with a negative pid signals a process group; no pointers.
    cvt(unsafe { libc::kill(-pgid, sig) })?;
    Ok(())
}

/// Sends `sig` to one process by pid.
pub fn kill_pid(pid: i32, sig: i32) -> io::Result<()> {
    if pid <= 1 {
        return Err(io::Error::other("refusing to signal pid <= 1"));
    }
    // SAFETY: kill takes plain integers.
    cvt(unsafe { libc::kill(pid, sig) })?;
    Ok(())
}

/// How a process ended, with its resource usage (from wait4).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub core_dumped: bool,
    /// Peak resident memory, KiB.
    pub max_rss_kib: u64,
    pub user_cpu_us: u64,
    pub sys_cpu_us: u64,
}

impl ExitInfo {
    /// "signal 11 (SIGSEGV), core dumped" or "exit code 3".
    pub fn describe(&self) -> String {
        match (self.signal, self.code) {
            (Some(sig), _) => {
                let core = if self.core_dumped {
                    ", core dumped"
                } else {
                    ""
                };
                format!("killed by signal {sig} ({}){core}", signal_name(sig))
            }
            (None, Some(code)) => format!("exited with code {code}"),
            (None, None) => "ended (status unknown)".into(),
        }
    }

    pub fn cpu_time(&self) -> Duration {
        Duration::from_micros(self.user_cpu_us + self.sys_cpu_us)
    }
}

/// The name of a signal number, e.g. "SIGSEGV".
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        ZYGOTE_DEATH_SIGNAL => "SIGRTMAX-2, the zygote's parent-death signal",
        WORKER_ORPHAN_SIGNAL => "SIGRTMAX-3, the workers' parent-death signal",
        _ => nix::sys::signal::Signal::try_from(sig)
            .map(|s| s.as_str())
            .unwrap_or("unknown signal"),
    }
}

/// Reaps one exited child without blocking. `Ok(None)`: none has exited.
pub fn reap_any() -> io::Result<Option<(i32, ExitInfo)>> {
    let mut status: libc::c_int = 0;
    // SAFETY: zeroed rusage is a valid value for the out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 writes into the two valid out-pointers.
    let pid = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut ru) };
    if pid == 0 {
        return Ok(None);
    }
    if pid < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ECHILD) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    let tv_us = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    let info = ExitInfo {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        core_dumped: libc::WIFSIGNALED(status) && libc::WCOREDUMP(status),
        max_rss_kib: ru.ru_maxrss as u64,
        user_cpu_us: tv_us(ru.ru_utime),
        sys_cpu_us: tv_us(ru.ru_stime),
    };
    Ok(Some((pid, info)))
}

/// Waits (blocking) for a specific child and discards its status.
pub fn wait_child(pid: i32) {
    let mut status = 0;
    // SAFETY: waitpid writes the status into a valid pointer.
    unsafe {
        libc::waitpid(pid, &mut status, 0);
    }
}

/// The result of [`fork_single_threaded`].
pub enum Forked {
    Parent { child: i32 },
    Child,
}

/// Forks. Refuses when the process has more than one thread: the child of
/// a multithreaded process may only make async-signal-safe calls, and the
/// callers of this function run ordinary Rust code in the child.
pub fn fork_single_threaded() -> io::Result<Forked> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "cannot fork: this process has {threads} threads, and a forked copy of a multithreaded process may deadlock; use the forkserver or spawn start method"
        )));
    }
    // SAFETY: the process is single-threaded (checked just above), so the
    // child inherits no lock held by another thread and may run any code.
    match cvt(unsafe { libc::fork() })? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent { child: pid }),
    }
}

/// Starts `exe args...` as a helper process (the zygote or a spawned worker):
/// `fds[i]` becomes fd `3 + i` in the child, stdin is /dev/null, stdout and
/// stderr go to `output`, every other fd is closed at exec, the child leads
/// a session of its own (so it has no controlling terminal, and signals sent
/// to the host's group or by the host's terminal do not reach it) and is
/// killed when the thread that started it dies.
///
/// Safe to call from a multithreaded process: between fork and exec the
/// child makes only async-signal-safe calls (dup2, fcntl, close_range,
/// prctl, setsid).
pub fn spawn_helper(
    exe: &std::path::Path,
    args: &[&OsStr],
    fds: &[RawFd],
    output: &OwnedFd,
    env: Option<&[(std::ffi::OsString, std::ffi::OsString)]>,
) -> io::Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null());
    if let Some(env) = env {
        // A sandboxed zygote starts with only these (its memory then holds
        // no copy of the host's environment for a task to read).
        cmd.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    }
    cmd.stdout(Stdio::from(output.try_clone().map_err(explain_fd_error)?));
    cmd.stderr(Stdio::from(output.try_clone().map_err(explain_fd_error)?));
    let fds: Vec<RawFd> = fds.to_vec();
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls async-signal-safe functions; it allocates nothing (`fds` was
    // built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            // Move each fd above the target range first so that dup2 onto
            // 3.. never clobbers a source that has not been moved yet.
            let mut high = [0 as RawFd; 16];
            let n = fds.len().min(16);
            // Copies land at 3+n or above: never in the target range, and
            // never above a small RLIMIT_NOFILE (a fixed floor such as 100
            // fails with EINVAL under `ulimit -n 100`).
            let floor = 3 + n as libc::c_int;
            for i in 0..n {
                let h = libc::fcntl(fds[i], libc::F_DUPFD_CLOEXEC, floor);
                if h < 0 {
                    return Err(io::Error::last_os_error());
                }
                high[i] = h;
            }
            for (i, &h) in high.iter().enumerate().take(n) {
                if libc::dup2(h, 3 + i as RawFd) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // No other fd of the host survives the exec: one it inherited
            // without O_CLOEXEC (its terminal opened by a shell, `5</dev/tty`)
            // would otherwise reach the plugins (C2). Marked close-on-exec,
            // not closed: Command's own exec-error pipe must stay open.
            let first_free = 3 + n as libc::c_uint;
            if libc::syscall(
                libc::SYS_close_range,
                first_free,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) < 0
            {
                // Before Linux 5.11: by hand, up to the open-files limit.
                let mut lim = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                let top = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                    lim.rlim_cur.min(1 << 20) as libc::c_int
                } else {
                    4096
                };
                for fd in first_free as libc::c_int..top {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            // The zygote: it cleans up its workers when this thread dies.
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                ZYGOTE_DEATH_SIGNAL as libc::c_ulong,
                0,
                0,
                0,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            // A session of its own: the host's terminal (if any) is not the
            // controlling terminal of the zygote or of any worker it forks,
            // so no task can open /dev/tty or be signalled by the terminal
            // (C2). It also makes the child lead its own process group.
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(explain_fd_error)
}

/// The open-files limit (RLIMIT_NOFILE) as (soft, hard).
pub fn nofile_limit() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return (0, 0);
    }
    (lim.rlim_cur, lim.rlim_max)
}

/// Says that this process ran out of file descriptors, which limit that
/// is and what to do about it.
pub fn fd_shortage_hint() -> String {
    let (soft, hard) = nofile_limit();
    format!(
        "this process ran out of file descriptors: its open-files limit (RLIMIT_NOFILE, `ulimit -n`) is {soft} (hard limit {hard}); the pool needs about 12 descriptors plus 3 per worker: raise the limit (e.g. `ulimit -n 1024`) or use fewer workers"
    )
}

/// Adds to an "out of file descriptors" error (EMFILE, ENFILE) which limit
/// was hit and what to do,
/// so it does not read like a problem of the plugin being loaded.
pub fn explain_fd_error(e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(libc::EMFILE) => io::Error::new(e.kind(), format!("{e}: {}", fd_shortage_hint())),
        Some(libc::ENFILE) => io::Error::new(
            e.kind(),
            format!("{e}: the system-wide file table is full (fs.file-max)"),
        ),
        _ => e,
    }
}

/// Takes ownership of an fd inherited at a known number (e.g. fd 3 handed
/// over by [`spawn_helper`]). Fails if that fd is not open.
pub fn inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only inspects the fd.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: the fd is open and, by the calling convention of
    // spawn_helper, owned by nobody else in this process.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A memfd holding `bytes`, left open across `exec` (no `FD_CLOEXEC`), read
/// from its start: how a zygote hands what it learnt to the program it
/// re-executes ([`read_exec_state`] reads it there).
pub fn exec_state_fd(bytes: &[u8]) -> io::Result<OwnedFd> {
    use std::io::{Seek, Write};
    // SAFETY: memfd_create with a valid C string and no flags (no
    // CLOEXEC: the fd is meant to survive exec).
    let fd = cvt(unsafe { libc::memfd_create(c"billiard-zygote-state".as_ptr(), 0) })?;
    // SAFETY: a fresh fd that nothing else owns.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(bytes)?;
    file.rewind()?;
    Ok(OwnedFd::from(file))
}

/// Reads (at most `max` bytes of) the state an [`exec_state_fd`] handed to
/// this program as fd `fd`, and closes it.
pub fn read_exec_state(fd: RawFd, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::from(inherited_fd(fd)?);
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::other(format!("it is over {max} bytes")));
    }
    Ok(bytes)
}

/// Which group a process made by [`setup_worker_process`] leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lead {
    /// A process group of its own, in its parent's session (a worker: it
    /// stays in the zygote's session, which has no controlling terminal,
    /// and as a non-leader of the session it cannot acquire one).
    Group,
    /// A session of its own (a zygote forked by the `fork` start method:
    /// it leaves the host's session and its terminal, C2).
    Session,
}

/// Runs in a freshly forked worker (child of the single-threaded zygote):
/// moves `keep` to fds 3.., points stdout/stderr at `output`, stdin at
/// /dev/null, closes every other fd, and makes the worker the leader of its
/// own process group (or session, see [`Lead`]) so a hard time limit can
/// kill whatever it spawned.
pub fn setup_worker_process(keep: &[RawFd], output: RawFd, lead: Lead) -> io::Result<()> {
    // SAFETY: plain fd and process syscalls in a single-threaded child.
    unsafe {
        // Never left as inherited: the host's stdin may be its terminal (C2).
        let devnull = cvt(libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY))?;
        cvt(libc::dup2(devnull, 0))?;
        cvt(libc::dup2(output, 1))?;
        cvt(libc::dup2(output, 2))?;
        // Copies at 3+n or above (see `spawn_helper`): clear of the target
        // range whatever the open-files limit.
        let floor = 3 + keep.len() as libc::c_int;
        let mut high = Vec::with_capacity(keep.len());
        for &fd in keep {
            high.push(cvt(libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor))?);
        }
        for (i, &h) in high.iter().enumerate() {
            cvt(libc::dup2(h, 3 + i as RawFd))?;
        }
        let first_free = 3 + keep.len() as libc::c_uint;
        if libc::syscall(libc::SYS_close_range, first_free, libc::c_uint::MAX, 0) < 0 {
            // Old kernel: close the usual range by hand.
            for fd in first_free..4096 {
                libc::close(fd as RawFd);
            }
        }
        match lead {
            Lead::Group => cvt(libc::setpgid(0, 0))?,
            Lead::Session => cvt(libc::setsid())?,
        };
    }
    Ok(())
}

/// Points `fd` at /dev/null, read-only, keeping its number taken: whatever
/// was behind it (the scoreboard's memfd, once mapped) can no longer be
/// written through it, not even by a stray `write(fd, ...)` in a task.
pub fn blind_fd(fd: RawFd) -> io::Result<()> {
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: dup2 between two open fds; `fd` stays open (now /dev/null),
    // so whoever owns that number still owns an open fd.
    cvt(unsafe { libc::dup2(null.as_raw_fd(), fd) })?;
    Ok(())
}

/// The signal a zygote gets when the thread that started it dies
/// (`PR_SET_PDEATHSIG`): a real-time signal (SIGRTMAX-2 on Linux) that
/// nobody sends by hand, so that signals meant for the host (SIGTERM from
/// `pkill` or a control-group stop, SIGHUP from `killall -HUP`) are never
/// taken for its death. The zygote blocks it and reads it from its
/// signalfd, then kills its workers' process groups before it exits (see
/// `zygote_signal_fd`). Its control socket's EOF says the same thing.
pub const ZYGOTE_DEATH_SIGNAL: i32 = 62;

/// The signal a worker gets when its zygote dies (`PR_SET_PDEATHSIG`,
/// SIGRTMAX-3): its handler ends the worker only if the supervisor is gone
/// too; otherwise the worker finishes its job (see [`watch_for_orphaning`]).
pub const WORKER_ORPHAN_SIGNAL: i32 = 61;

/// Signals an operator sends to "the service" (every `billiard-host`
/// process: `pkill`, `killall -HUP`, systemd's `KillMode=control-group`,
/// a terminal's Ctrl-\): only the host acts on them; the zygote ignores
/// them and workers catch them with a handler that does nothing.
const OPERATOR_SIGNALS: [i32; 5] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGPIPE,
];

/// Asks the kernel to send `sig` to this process when its parent (thread)
/// dies; exits at once if the parent is already gone.
pub fn die_with_parent_by(sig: i32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) })?;
    // The parent may have died before the prctl: then we are an orphan.
    // SAFETY: getppid takes no arguments.
    if unsafe { libc::getppid() } == 1 {
        exit_now(0);
    }
    Ok(())
}

/// Sets the disposition of `sig` (a handler address, `SIG_IGN` or
/// `SIG_DFL`) with `SA_RESTART`, `SA_ONSTACK` and an empty handler mask.
/// `SA_ONSTACK`: a handler runs on the thread's alternate signal stack
/// ([`install_signal_stack`] in a worker), never on the stack the thread
/// was on: a worker's main thread running Go code (a Go `c-shared`
/// plugin) is on a goroutine's small stack, which a signal frame of ours
/// would overflow (Go requires it of every non-Go handler). Without an
/// alternate stack the flag changes nothing.
fn set_disposition(sig: i32, handler: libc::sighandler_t) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; `handler` is SIG_IGN, SIG_DFL or
    // one of this module's async-signal-safe `extern "C"` handlers.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = handler;
        act.sa_flags = libc::SA_RESTART | libc::SA_ONSTACK;
        libc::sigemptyset(&mut act.sa_mask);
        cvt(libc::sigaction(sig, &act, std::ptr::null_mut()))?;
    }
    Ok(())
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// A handler's address as `sigaction` takes it.
fn handler_addr(f: extern "C" fn(libc::c_int)) -> libc::sighandler_t {
    f as *const () as libc::sighandler_t
}

/// Makes this process a child subreaper (`PR_SET_CHILD_SUBREAPER`): the
/// processes its descendants leave behind are reparented to it, not to
/// init, so it can still find and end them.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    cvt(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) })?;
    Ok(())
}

/// In the zygote, first thing: the operator's signals are ignored (only
/// the host acts on them), SIGCHLD has its default action (so exited
/// workers stay waitable), and the zygote becomes a child subreaper, so the
/// processes a dead worker's task left behind, in whatever process group
/// or session, are reparented to it and killed (see `Zygote::reap`).
pub fn zygote_signal_dispositions() -> io::Result<()> {
    for sig in OPERATOR_SIGNALS.into_iter().chain([libc::SIGUSR1]) {
        set_disposition(sig, libc::SIG_IGN)?;
    }
    set_disposition(libc::SIGCHLD, libc::SIG_DFL)?;
    become_subreaper()
}

/// Sets up a worker's signal state: a no-op handler for the operator's
/// signals (a handler, not SIG_IGN: exec resets handlers, so the processes
/// a task starts get default dispositions), the stop handler on SIGUSR1,
/// the orphan handler, default SIGCHLD/SIGSEGV/SIGBUS (Rust's runtime
/// SIGSEGV handler would swallow a crash), an empty signal mask; and makes
/// the worker the subreaper of whatever its tasks start.
pub fn reset_worker_signals() -> io::Result<()> {
    install_signal_stack()?;
    for sig in OPERATOR_SIGNALS {
        set_disposition(sig, handler_addr(ignore_signal))?;
    }
    for sig in [libc::SIGCHLD, libc::SIGSEGV, libc::SIGBUS] {
        set_disposition(sig, libc::SIG_DFL)?;
    }
    restore_worker_signals()?;
    become_subreaper()
}

/// The size of a worker's alternate signal stack: room for the signal
/// frames of every worker signal nested in each other (each a few KiB
/// with the CPU's extended state), where Rust's own (a few pages, made
/// for its stack-overflow report) overflowed once handlers ran on it.
const WORKER_SIGNAL_STACK: usize = 256 * 1024;

/// Gives the calling thread (a worker's main thread) an alternate signal
/// stack of [`WORKER_SIGNAL_STACK`] bytes above a guard page, for the
/// `SA_ONSTACK` handlers of [`set_disposition`] and the crash handler.
/// Mapped once per worker and never unmapped (the thread keeps using it).
fn install_signal_stack() -> io::Result<()> {
    let page = usize::try_from(page_size()).unwrap_or(4096);
    let len = WORKER_SIGNAL_STACK.saturating_add(page);
    // SAFETY: an anonymous private mapping of `len` bytes at an address
    // the kernel picks; the result is checked before use.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the first page of the mapping just made; the stack grows
    // down towards it, so an overflow faults instead of writing past it.
    cvt(unsafe { libc::mprotect(base, page, libc::PROT_NONE) })?;
    let ss = libc::stack_t {
        // SAFETY: `page` < `len`: the pointer stays inside the mapping.
        ss_sp: unsafe { base.cast::<u8>().add(page) }.cast(),
        ss_flags: 0,
        ss_size: WORKER_SIGNAL_STACK,
    };
    // SAFETY: `ss` describes memory that stays mapped for the process's
    // life; the old stack is not asked for.
    cvt(unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) })?;
    Ok(())
}

/// After every job: puts back the part of the worker's signal state that
/// the pool relies on, whatever the task did to it (SIG_IGN or its own
/// handler on SIGUSR1, `sigprocmask`): the stop handler (soft limits and
/// cancellation), the orphan handler, the no-op handlers for SIGTERM and
/// SIGHUP (a warm stop or reload signalled to every process) and an empty
/// signal mask. Five syscalls, about 1.5–2 µs.
pub fn restore_worker_signals() -> io::Result<()> {
    set_disposition(STOP_SIGNAL, handler_addr(stop_handler))?;
    set_disposition(WORKER_ORPHAN_SIGNAL, handler_addr(orphan_handler))?;
    set_disposition(libc::SIGTERM, handler_addr(ignore_signal))?;
    set_disposition(libc::SIGHUP, handler_addr(ignore_signal))?;
    // SAFETY: an empty set built by sigemptyset; the old mask is not asked for.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        let r = libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
    }
    Ok(())
}

/// Blocks every signal in the calling thread (a synchronous fault is
/// still delivered). A worker loads its per-worker plugins so: the threads
/// a plugin starts inherit the mask (a Go runtime keeps it on its own
/// threads, unblocking only the signals it needs itself: its faults and
/// its preemption signal), so the signals sent to the worker (the stop
/// signal, SIGTERM, SIGHUP, the orphan signal) always reach its main
/// thread, never a handler of ours on a goroutine's small stack.
/// [`restore_worker_signals`] unblocks them on the main thread again.
pub fn block_all_signals() -> io::Result<()> {
    // SAFETY: a full set built by sigfillset; the old mask is not asked for.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let r = libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
    }
    Ok(())
}

pub const STOP_SIGNAL: i32 = libc::SIGUSR1;
pub const SIGKILL: i32 = libc::SIGKILL;

/// Blocks SIGCHLD and [`ZYGOTE_DEATH_SIGNAL`] and returns a signalfd that
/// becomes readable when a child exits or the zygote's parent died (the
/// zygote's way to notice both without a handler). Workers unblock every
/// signal at start (`reset_worker_signals`).
pub fn zygote_signal_fd() -> io::Result<nix::sys::signalfd::SignalFd> {
    use nix::sys::signal::SigSet;
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    // SAFETY: sigemptyset/sigaddset fill a local set; both signal numbers
    // are valid (a real-time one is not representable in nix's `Signal`).
    let mask = unsafe {
        let mut raw: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut raw);
        cvt(libc::sigaddset(&mut raw, libc::SIGCHLD))?;
        cvt(libc::sigaddset(&mut raw, ZYGOTE_DEATH_SIGNAL))?;
        SigSet::from_sigset_t_unchecked(raw)
    };
    mask.thread_block().map_err(io::Error::from)?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(io::Error::from)
}

// ----- a worker whose zygote died ------------------------------------------

static ORPHAN_SOCK: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);
static ORPHAN_PARENT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
static ORPHANED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static ORPHAN_TIMER: std::sync::atomic::AtomicPtr<libc::c_void> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());
static ORPHAN_TIMER_SET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How often an orphaned worker checks that the supervisor is still there.
const ORPHAN_RECHECK_MS: i64 = 200;

/// Async-signal-safe: run from [`orphan_handler`] (and once at start).
/// If the parent is still the zygote, nothing happened (a stray signal).
/// If the supervisor's end of `sock` is closed too, the whole host is gone:
/// the worker kills its process group (itself and what its task started)
/// at once. Otherwise the zygote died alone (a task killed it): the worker
/// goes on with its job, reports it, and leaves when the supervisor says;
/// a one-shot timer repeats this check meanwhile, since no parent-death
/// signal will come from its new parent.
fn orphan_check() {
    use std::sync::atomic::Ordering;
    // SAFETY: getppid, poll on one pollfd, kill, _exit and timer_settime are
    // async-signal-safe; errno is saved and restored for the interrupted code.
    unsafe {
        let errno = *libc::__errno_location();
        let parent = ORPHAN_PARENT.load(Ordering::Relaxed);
        let fd = ORPHAN_SOCK.load(Ordering::Relaxed);
        if fd >= 0 && libc::getppid() != parent {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLRDHUP,
                revents: 0,
            };
            let r = libc::poll(&mut p, 1, 0);
            let gone = libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR | libc::POLLNVAL;
            if r > 0 && p.revents & gone != 0 {
                let me = libc::getpid();
                if libc::getpgrp() == me {
                    libc::kill(-me, libc::SIGKILL);
                }
                libc::_exit(0);
            }
            ORPHANED.store(true, Ordering::Relaxed);
            if ORPHAN_TIMER_SET.load(Ordering::Relaxed) {
                let spec = libc::itimerspec {
                    it_interval: libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 0,
                    },
                    it_value: libc::timespec {
                        tv_sec: 0,
                        tv_nsec: ORPHAN_RECHECK_MS * 1_000_000,
                    },
                };
                libc::timer_settime(
                    ORPHAN_TIMER.load(Ordering::Relaxed),
                    0,
                    &spec,
                    std::ptr::null_mut(),
                );
            }
        }
        *libc::__errno_location() = errno;
    }
}

extern "C" fn orphan_handler(_: libc::c_int) {
    orphan_check();
}

/// In a worker (after [`reset_worker_signals`]): watch for the death of
/// `parent` (the zygote). A worker outlives its zygote as long as the
/// supervisor (the other end of `sock`) lives, so a task that kills the
/// zygote costs no other worker's job; with the supervisor gone too it
/// ends at once, its process group with it.
pub fn watch_for_orphaning(sock: &impl AsRawFd, parent: i32) -> io::Result<()> {
    use std::sync::atomic::Ordering;
    // SAFETY: timer_create writes a timer id into a valid out-pointer; the
    // sigevent is zeroed and then filled for SIGEV_SIGNAL.
    unsafe {
        let mut ev: libc::sigevent = std::mem::zeroed();
        ev.sigev_notify = libc::SIGEV_SIGNAL;
        ev.sigev_signo = WORKER_ORPHAN_SIGNAL;
        let mut timer: libc::timer_t = std::mem::zeroed();
        cvt(libc::timer_create(
            libc::CLOCK_MONOTONIC,
            &mut ev,
            &mut timer,
        ))?;
        ORPHAN_TIMER.store(timer, Ordering::Relaxed);
    }
    ORPHAN_TIMER_SET.store(true, Ordering::Relaxed);
    ORPHAN_PARENT.store(parent, Ordering::Relaxed);
    ORPHAN_SOCK.store(sock.as_raw_fd(), Ordering::Release);
    // SAFETY: prctl with integer arguments.
    cvt(unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            WORKER_ORPHAN_SIGNAL as libc::c_ulong,
            0,
            0,
            0,
        )
    })?;
    // The zygote may have died before the prctl.
    orphan_check();
    Ok(())
}

/// True once this worker's zygote has died (it then cleans up after its
/// task itself when it leaves: [`kill_descendants`]).
pub fn orphaned() -> bool {
    ORPHANED.load(std::sync::atomic::Ordering::Relaxed)
}

// ----- descendants ---------------------------------------------------------

/// Direct children of process `pid` (of all its threads), zombies included.
/// Reads `/proc/PID/task/TID/children`; without it (a kernel built without
/// CONFIG_PROC_CHILDREN), scans every `/proc/*/stat`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        match std::fs::read_to_string(t.path().join("children")) {
            Ok(s) => out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok())),
            Err(e) if e.kind() == io::ErrorKind::NotFound && t.path().exists() => {
                return children_by_scan(pid);
            }
            Err(_) => {}
        }
    }
    out
}

fn children_by_scan(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let (_, rest) = s.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// SIGKILLs every process in the trees rooted at `roots` (roots included).
/// A process forked while this runs may be missed: callers that must get
/// everything repeat until the roots are gone.
pub fn kill_trees(roots: &[i32]) {
    let mut all: Vec<i32> = roots.to_vec();
    let mut i = 0;
    while i < all.len() && all.len() < 100_000 {
        let kids = children_of(all[i]);
        all.extend(kids);
        i += 1;
    }
    for pid in all {
        let _ = kill_pid(pid, libc::SIGKILL);
    }
}

/// SIGKILLs every descendant of this process (not itself): what an
/// orphaned worker's tasks left behind, since it is their subreaper.
pub fn kill_descendants() {
    kill_trees(&children_of(getpid()));
}

/// Caps the process's address space (RLIMIT_AS), so a runaway allocation
/// fails inside the process instead of waking the OOM killer.
pub fn limit_address_space(bytes: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit reads a valid rlimit struct.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) })?;
    Ok(())
}

/// Anonymous resident memory of this process, bytes (RssAnon from statm:
/// resident minus file-backed/shared pages). Cheap: one small read.
pub fn anon_rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut it = statm.split_whitespace().skip(1);
    let resident: u64 = it.next()?.parse().ok()?;
    let shared: u64 = it.next()?.parse().ok()?;
    Some(resident.saturating_sub(shared) * page_size())
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf takes an integer.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Ends the process at once, without running destructors or atexit
/// handlers (used by workers: nothing of theirs needs flushing).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is always safe to call.
    unsafe { libc::_exit(code) }
}

/// Makes this process the leader of a new session, which has no
/// controlling terminal: nothing it runs afterwards can open `/dev/tty` or
/// push keystrokes into the operator's terminal (C2). Fails only for a
/// process that already leads a process group.
pub fn leave_terminal() -> io::Result<()> {
    // SAFETY: setsid takes no arguments and touches only this process's
    // session and group ids.
    cvt(unsafe { libc::setsid() })?;
    Ok(())
}

pub fn getpid() -> i32 {
    std::process::id() as i32
}

/// Copies `buf.len()` bytes from address `addr` of this process's own
/// memory, without faulting on an address that is not mapped readable:
/// `Ok(false)` then. For reading what a foreign (C) plugin's descriptor
/// points at before trusting it. Where the kernel refuses the call
/// (a seccomp filter, no `process_vm_readv`) the bytes are read directly,
/// as the plugin's own code would.
pub fn read_own_memory(addr: usize, buf: &mut [u8]) -> bool {
    if buf.is_empty() {
        return true;
    }
    if addr == 0 {
        return false;
    }
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: one local iovec over `buf` (writable, its length), one
    // remote iovec the kernel checks: an unmapped address is EFAULT or a
    // short count, never a fault in this process.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n >= 0 {
        return usize::try_from(n).is_ok_and(|n| n == buf.len());
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EFAULT) | Some(libc::ESRCH) => false,
        _ => {
            // SAFETY: the kernel would not check for us; the plugin's own
            // code reads these bytes the same way, and a fault here is the
            // loading process's (a child or the zygote), as it would be
            // the plugin's.
            unsafe {
                std::ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len())
            };
            true
        }
    }
}

/// The scoreboard: one page per worker, where the worker stores the job it
/// is running and the one it finished last (so the supervisor knows whether
/// a lost job had started) and the supervisor the job a stop is meant for.
///
/// Each page is a sealed memfd of its own, made fresh for every worker
/// ([`Scoreboard::renew`]) and handed to it alone: a worker maps only its
/// own page, so no memory is writable by two workers (issue 22, C3), and a
/// process a dead worker's task left behind can write only that dead
/// worker's page, which no later worker uses. The supervisor maps every
/// live worker's page and reads it with atomics only; the seals keep a
/// worker from shrinking the file under that mapping (SIGBUS in the
/// supervisor). Workers write their page without system calls.
pub struct Scoreboard {
    pages: Vec<Option<BoardPage>>,
}

pub const SLOT_BYTES: usize = 64;

/// One worker's words.
#[repr(C)]
pub struct Slot {
    /// Id of the job (or first job of a batch) the worker is running; 0: none.
    pub running: AtomicU64,
    /// Job the supervisor wants stopped; compared with `running` by the
    /// worker's signal handler so a stop never hits the next job.
    pub stop_job: AtomicU64,
    /// Why (`StopReason::as_flag`).
    pub stop_reason: AtomicU64,
    /// Id of the job (or first job of a batch) the worker finished last,
    /// so a result still in transit is told apart from a job not started.
    pub finished: AtomicU64,
    /// When the job in `running` started ([`monotonic_ns`]), written just
    /// before `running`: a chunk's per-item time limits run from here.
    pub started: AtomicU64,
}

impl Slot {
    /// The supervisor's side after its worker ended: clears the slot for the
    /// next worker and returns what the dead one had written, `(running,
    /// finished)` (0: none).
    pub fn reset(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        let running = self.running.swap(0, Ordering::AcqRel);
        let finished = self.finished.load(Ordering::Acquire);
        self.stop_job.store(0, Ordering::Release);
        self.finished.store(0, Ordering::Release);
        self.started.store(0, Ordering::Release);
        (running, finished)
    }

    /// The job the worker runs now and for how long it has run at least
    /// by its own clock word (the coarse clock's tick taken off, so never
    /// more than it really ran; 0 when it names a time still to come):
    /// `(0, _)` between jobs. Both come from the worker's page, which its
    /// task can rewrite: the caller bounds what it does with them.
    pub fn running_for(&self) -> (u64, Duration) {
        use std::sync::atomic::Ordering;
        let running = self.running.load(Ordering::Acquire);
        let started = self.started.load(Ordering::Acquire);
        let ran = Duration::from_nanos(monotonic_ns().saturating_sub(started));
        (running, ran.saturating_sub(monotonic_coarse_res()))
    }

    /// Marks `job` as started now (the worker's side).
    pub fn start(&self, job: u64) {
        use std::sync::atomic::Ordering;
        self.started.store(monotonic_ns(), Ordering::Release);
        self.running.store(job, Ordering::Release);
    }

    /// Asks the worker to stop `job` for `reason` (a `StopReason` flag):
    /// the reason first, then the job its signal handler compares with
    /// `running`. The supervisor then sends the stop signal.
    pub fn post_stop(&self, reason: u64, job: u64) {
        use std::sync::atomic::Ordering;
        self.stop_reason.store(reason, Ordering::Release);
        self.stop_job.store(job, Ordering::Release);
    }

    /// The job (or first job of a batch) the worker finished last; 0: none.
    pub fn last_finished(&self) -> u64 {
        self.finished.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// A mapping of one worker's scoreboard page (the supervisor's or the
/// worker's own).
pub struct BoardPage {
    /// Keeps the page mapped for as long as `slot` is used.
    _map: shm::SharedMap,
    slot: *const Slot,
}

// SAFETY: `slot` points into the mapping this value owns, whose words are
// only accessed atomically (by either process).
unsafe impl Send for BoardPage {}
// SAFETY: as above.
unsafe impl Sync for BoardPage {}

impl BoardPage {
    /// A fresh, zeroed page in a new sealed memfd; returns the page and the
    /// fd to hand to the worker.
    pub fn create() -> io::Result<(BoardPage, OwnedFd)> {
        let len = page_size() as usize;
        let fd = shm::sealed_memfd(c"billiard-board", len)?;
        Ok((BoardPage::map(&fd)?, fd))
    }

    /// Maps the page behind `fd` (a worker: the one it was handed), which
    /// must be a sealed memfd of at least one slot. The caller keeps (or
    /// closes, or blinds) the fd; the mapping does not need it.
    pub fn map(fd: &impl AsRawFd) -> io::Result<BoardPage> {
        let (size, _) = shm::memfd_size_sealed(fd)?;
        let len = usize::try_from(size)
            .ok()
            .filter(|&l| (SLOT_BYTES..=1 << 20).contains(&l))
            .ok_or_else(|| io::Error::other(format!("a scoreboard page of {size} bytes")))?;
        // SharedMap refuses a file whose size is not sealed.
        let map = shm::SharedMap::new(fd, len, true)?;
        let slot = map
            .word(0)
            .map(|w| w as *const AtomicU64 as *const Slot)
            .ok_or_else(|| io::Error::other("a scoreboard page without a first word"))?;
        Ok(BoardPage { _map: map, slot })
    }

    pub fn slot(&self) -> &Slot {
        // SAFETY: the mapping is at least SLOT_BYTES long (checked in
        // `map`) and page-aligned; Slot is repr(C) of five AtomicU64, valid
        // for any bit pattern and only accessed atomically; the reference
        // lives no longer than `self`, which owns the mapping.
        unsafe { &*self.slot }
    }
}

impl Scoreboard {
    /// A board for `slots` workers; pages are made by [`Scoreboard::renew`].
    pub fn new(slots: usize) -> Scoreboard {
        Scoreboard {
            pages: (0..slots).map(|_| None).collect(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.pages.len()
    }

    /// Gives slot `i` a fresh page for a new worker (the previous worker's
    /// page is unmapped here); returns the fd to hand to that worker.
    pub fn renew(&mut self, i: usize) -> io::Result<OwnedFd> {
        let page = self
            .pages
            .get_mut(i)
            .ok_or_else(|| io::Error::other(format!("no scoreboard slot {i}")))?;
        *page = None;
        let (fresh, fd) = BoardPage::create()?;
        *page = Some(fresh);
        Ok(fd)
    }

    /// Slot `i`'s words, if it has a page.
    pub fn slot(&self, i: usize) -> Option<&Slot> {
        self.pages.get(i)?.as_ref().map(BoardPage::slot)
    }
}

struct StopTarget {
    slot: *const Slot,
    flag: *const std::sync::atomic::AtomicU32,
}

static STOP_TARGET: std::sync::atomic::AtomicPtr<StopTarget> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

extern "C" fn stop_handler(_: libc::c_int) {
    use std::sync::atomic::Ordering;
    let t = STOP_TARGET.load(Ordering::Acquire);
    if t.is_null() {
        return;
    }
    // SAFETY: STOP_TARGET only ever holds a leaked (never freed) StopTarget
    // whose pointers refer to 'static data; only atomics are touched, which
    // is async-signal-safe.
    unsafe {
        let slot = &*(*t).slot;
        let flag = &*(*t).flag;
        let target = slot.stop_job.load(Ordering::Acquire);
        if target != 0 && target == slot.running.load(Ordering::Acquire) {
            flag.store(
                slot.stop_reason.load(Ordering::Acquire) as u32,
                Ordering::Release,
            );
        }
    }
}

/// In a worker: on SIGUSR1, raise `flag` with the reason the supervisor put
/// in `slot` — but only if the stop targets the job running right now, so a
/// late signal never stops the next job.
pub fn install_stop_handler(
    slot: &'static Slot,
    flag: &'static std::sync::atomic::AtomicU32,
) -> io::Result<()> {
    let target = Box::leak(Box::new(StopTarget { slot, flag }));
    STOP_TARGET.store(target, std::sync::atomic::Ordering::Release);
    set_disposition(STOP_SIGNAL, handler_addr(stop_handler))
}

/// Waits up to `timeout` for `fd` to become readable (a pidfd: the process
/// exited). `Ok(false)` on timeout.
pub fn wait_readable(fd: &impl AsRawFd, timeout: Duration) -> io::Result<bool> {
    let deadline = crate::bounds::saturating_deadline(std::time::Instant::now(), timeout);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: poll on one valid pollfd struct for a bounded time.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return Ok(true);
        }
        if n == 0 {
            return Ok(false);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reaps our child `pid`, waiting at most `grace` for it to exit, then
/// killing it with SIGKILL (a stopped or wedged process ends too) and
/// reaping that. Returns the wait status and whether it had to be killed.
pub fn reap_child_bounded(pid: i32, grace: Duration) -> (Option<libc::c_int>, bool) {
    let try_wait = |flags: libc::c_int| -> Option<libc::c_int> {
        let mut status: libc::c_int = 0;
        loop {
            // SAFETY: waitpid writes the status into a valid pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, flags) };
            if r == pid {
                return Some(status);
            }
            if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return None;
        }
    };
    if let Some(st) = try_wait(libc::WNOHANG) {
        return (Some(st), false);
    }
    // A pidfd of an unreaped child of ours is race-free.
    if let Ok(pfd) = pidfd_open(pid) {
        let _ = wait_readable(&pfd, grace);
    }
    if let Some(st) = try_wait(libc::WNOHANG) {
        return (Some(st), false);
    }
    let _ = kill_pid(pid, libc::SIGKILL);
    (try_wait(0), true)
}

/// Describes a raw wait status: "exited with code 3", "killed by signal 9 (SIGKILL)".
pub fn describe_wait_status(status: libc::c_int) -> String {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        format!("killed by signal {sig} ({})", signal_name(sig))
    } else if libc::WIFEXITED(status) {
        format!("exited with code {}", libc::WEXITSTATUS(status))
    } else {
        "ended".into()
    }
}

/// The scheduler state letter of a process (`R`, `S`, `T` stopped, `t`
/// traced, `Z` zombie, ...), from `/proc/<pid>/stat`; `None` if it is gone.
pub fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain ") ".
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

/// Whether the kernel's OOM killer has struck in this process's memory
/// cgroup (the `oom_kill` counter of cgroup v1 `memory.oom_control` or v2
/// `memory.events`) since the first call.
/// The first call records the baseline (the pool calls it at start) and
/// answers false.
pub fn oom_kills_since_start() -> bool {
    static BASELINE: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    fn counter(file: &str) -> Option<u64> {
        std::fs::read_to_string(file)
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
    }
    fn read() -> Option<u64> {
        let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        // cgroup v1: a `memory` controller line, `memory.oom_control`
        // (its own mount, or the root's when the path is not visible).
        if let Some(path) = cg.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
            ctl.split(',').any(|c| c == "memory").then_some(path)
        }) {
            for dir in [
                format!("/sys/fs/cgroup/memory{}", path.trim()),
                "/sys/fs/cgroup/memory".into(),
            ] {
                if let Some(n) = counter(&format!("{dir}/memory.oom_control")) {
                    return Some(n);
                }
            }
        }
        // cgroup v2: `memory.events`.
        let path = cg.lines().find_map(|l| l.strip_prefix("0::"))?;
        counter(&format!("/sys/fs/cgroup{}/memory.events", path.trim()))
    }
    let base = *BASELINE.get_or_init(read);
    match (base, read()) {
        (Some(b), Some(now)) => now > b,
        _ => false,
    }
}

// ----- stream items of a crashing worker -----------------------------------

static CRASH_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);
static CRASH_PTR: std::sync::atomic::AtomicPtr<u8> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());
static CRASH_LEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Set while the worker itself writes to the socket: a crash then must not
/// interleave a frame with the one being written.
static CRASH_BUSY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The fatal signals whose handler first writes the pending bytes.
const CRASH_SIGNALS: [i32; 5] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGABRT,
];

extern "C" fn crash_flush_handler(sig: libc::c_int) {
    crash_flush_now();
    // SA_RESETHAND put the default action back; SA_NODEFER lets it act at
    // once: the process dies of `sig` as it would have without us. A Go
    // runtime loaded after us (a Go plugin) installs its own handler and
    // calls this one for a fault outside Go code: then the default action
    // is put back here, or the raise would come back to Go's handler, and
    // this one, for ever.
    // SAFETY: signal and raise are async-signal-safe.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// A task that calls `exit` mid-stream: its items still go out.
extern "C" fn crash_flush_at_exit() {
    crash_flush_now();
}

/// Writes the published bytes once (async-signal-safe).
fn crash_flush_now() {
    use std::sync::atomic::Ordering;
    let fd = CRASH_FD.load(Ordering::Acquire);
    let ptr = CRASH_PTR.load(Ordering::Acquire);
    let len = CRASH_LEN.load(Ordering::Acquire);
    if fd >= 0 && !ptr.is_null() && len > 0 && !CRASH_BUSY.swap(true, Ordering::AcqRel) {
        let mut off = 0usize;
        while off < len {
            // SAFETY: write(2) is async-signal-safe; `ptr..ptr+len` is the
            // published, complete frame (see `crash_flush_publish`).
            let n = unsafe { libc::write(fd, ptr.add(off) as *const libc::c_void, len - off) };
            if n <= 0 {
                if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            off += n as usize;
        }
    }
}

/// In a worker: on a fatal signal (SIGSEGV, SIGBUS, SIGILL, SIGFPE,
/// SIGABRT), write the bytes last published with [`crash_flush_publish`]
/// (the stream items a task emitted but the worker had not sent yet) to
/// `fd`, then die of that signal as before (core dump and exit report
/// unchanged); and likewise when a task calls `exit`.
pub fn install_crash_flush(fd: RawFd) -> io::Result<()> {
    CRASH_FD.store(fd, std::sync::atomic::Ordering::Release);
    // SAFETY: registers a plain `extern "C"` function that only writes.
    if unsafe { libc::atexit(crash_flush_at_exit) } != 0 {
        return Err(io::Error::other("atexit failed"));
    }
    for sig in CRASH_SIGNALS {
        // SAFETY: a zeroed sigaction is valid; the handler only makes
        // async-signal-safe calls.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = crash_flush_handler as *const () as libc::sighandler_t;
            act.sa_flags = libc::SA_RESETHAND | libc::SA_NODEFER | libc::SA_ONSTACK;
            libc::sigemptyset(&mut act.sa_mask);
            cvt(libc::sigaction(sig, &act, std::ptr::null_mut()))?;
        }
    }
    Ok(())
}

/// Publishes the bytes a crash should still write (`&[]`: nothing). The
/// caller keeps them alive and unchanged until the next publish.
pub fn crash_flush_publish(bytes: &[u8]) {
    use std::sync::atomic::Ordering;
    CRASH_LEN.store(0, Ordering::Release);
    CRASH_PTR.store(bytes.as_ptr() as *mut u8, Ordering::Release);
    CRASH_LEN.store(bytes.len(), Ordering::Release);
}

/// Marks the start (`true`) and end of a write of the worker's own to the
/// socket, during which a crash writes nothing.
pub fn crash_flush_busy(busy: bool) {
    CRASH_BUSY.store(busy, std::sync::atomic::Ordering::Release);
}

#[cfg(test)]
mod board_tests {
    use super::*;
    use std::sync::atomic::Ordering::SeqCst;

    /// A page is shared with the one worker it is handed to, is made fresh
    /// for the next worker of its slot (what the last one writes after
    /// that reaches no one), and cannot be shrunk by the worker (C3).
    #[test]
    fn c3_each_worker_gets_a_fresh_sealed_page_of_its_own() {
        let mut board = Scoreboard::new(2);
        assert!(board.slot(0).is_none());
        let fd = board.renew(0).expect("page");
        let theirs = BoardPage::map(&fd).expect("the worker's mapping");
        theirs.slot().running.store(7, SeqCst);
        assert_eq!(board.slot(0).map(|s| s.running.load(SeqCst)), Some(7));
        assert!(board.slot(1).is_none(), "another slot shares the page");
        assert!(
            std::fs::File::from(fd).set_len(0).is_err(),
            "the page can be shrunk"
        );
        let _next = board.renew(0).expect("page");
        theirs.slot().stop_job.store(9, SeqCst);
        let fresh = board.slot(0).expect("page");
        assert_eq!(fresh.running.load(SeqCst), 0);
        assert_eq!(fresh.stop_job.load(SeqCst), 0);
    }
}
