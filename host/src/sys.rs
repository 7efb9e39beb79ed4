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
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str())
        .unwrap_or("unknown signal")
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
/// stderr go to `output`, the child is the leader of its own process group
/// (so signals sent to the host's group do not reach it) and is killed when
/// the thread that started it dies.
///
/// Safe to call from a multithreaded process: between fork and exec the
/// child makes only async-signal-safe calls (dup2, fcntl, prctl, setpgid).
pub fn spawn_helper(
    exe: &std::path::Path,
    args: &[&OsStr],
    fds: &[RawFd],
    output: &OwnedFd,
) -> io::Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null());
    cmd.stdout(Stdio::from(output.try_clone()?));
    cmd.stderr(Stdio::from(output.try_clone()?));
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
            for i in 0..n {
                let h = libc::fcntl(fds[i], libc::F_DUPFD_CLOEXEC, 100);
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
            if libc::setpgid(0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
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

/// Runs in a freshly forked worker (child of the single-threaded zygote):
/// moves `keep` to fds 3.., points stdout/stderr at `output`, stdin at
/// /dev/null, closes every other fd, and makes the worker the leader of its
/// own process group so a hard time limit can kill whatever it spawned.
pub fn setup_worker_process(keep: &[RawFd], output: RawFd) -> io::Result<()> {
    // SAFETY: plain fd and process syscalls in a single-threaded child.
    unsafe {
        let devnull = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        if devnull >= 0 {
            libc::dup2(devnull, 0);
        }
        cvt(libc::dup2(output, 1))?;
        cvt(libc::dup2(output, 2))?;
        let mut high = Vec::with_capacity(keep.len());
        for &fd in keep {
            high.push(cvt(libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100))?);
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
        cvt(libc::setpgid(0, 0))?;
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

/// Asks the kernel to SIGKILL this process when its parent (thread) dies.
pub fn die_with_parent() -> io::Result<()> {
    die_with_parent_by(libc::SIGKILL)
}

/// The signal a zygote gets when the thread that started it dies
/// (`PR_SET_PDEATHSIG`). Catchable, unlike SIGKILL: the zygote then kills
/// its workers' whole process groups, the processes their tasks started
/// included, before it exits (see `zygote_signal_fd`).
pub const ZYGOTE_DEATH_SIGNAL: i32 = libc::SIGTERM;

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

/// Workers ignore SIGINT, SIGTERM, SIGHUP and SIGPIPE (the supervisor
/// decides when they end) and restore default handling of everything else.
pub fn worker_signal_dispositions() -> io::Result<()> {
    use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
    // SAFETY: setting SIG_IGN / SIG_DFL installs no Rust handler.
    unsafe {
        for s in [
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGPIPE,
        ] {
            signal(s, SigHandler::SigIgn).map_err(io::Error::from)?;
        }
        // SIGSEGV/SIGBUS too: Rust's runtime handler (for stack-overflow
        // reports) would swallow a raised SIGSEGV instead of ending the
        // worker; a crash must end it, and the supervisor reports it.
        for s in [
            Signal::SIGCHLD,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
            Signal::SIGSEGV,
            Signal::SIGBUS,
        ] {
            signal(s, SigHandler::SigDfl).map_err(io::Error::from)?;
        }
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None).map_err(io::Error::from)?;
    Ok(())
}

/// Installs `handler` for SIGUSR1 (used to raise a running task's stop
/// flag). The handler must be async-signal-safe: atomics only.
pub fn on_stop_signal(handler: extern "C" fn(libc::c_int)) -> io::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(handler),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only touches atomics (documented requirement).
    unsafe { sigaction(Signal::SIGUSR1, &act) }.map_err(io::Error::from)?;
    Ok(())
}

pub const STOP_SIGNAL: i32 = libc::SIGUSR1;
pub const SIGKILL: i32 = libc::SIGKILL;

/// Blocks SIGCHLD and [`ZYGOTE_DEATH_SIGNAL`] and returns a signalfd that
/// becomes readable when a child exits or the zygote's parent died (the
/// zygote's way to notice both without a handler). Workers unblock every
/// signal at start (`worker_signal_dispositions`).
pub fn zygote_signal_fd() -> io::Result<nix::sys::signalfd::SignalFd> {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.add(Signal::try_from(ZYGOTE_DEATH_SIGNAL).map_err(io::Error::from)?);
    mask.thread_block().map_err(io::Error::from)?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(io::Error::from)
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

pub fn getpid() -> i32 {
    std::process::id() as i32
}

/// A shared-memory array of 64-byte slots (one per worker) that workers
/// write without system calls: the job they are running, so the supervisor
/// knows whether a lost job had started and targets stops precisely.
pub struct Scoreboard {
    fd: OwnedFd,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is only accessed through atomics.
unsafe impl Send for Scoreboard {}
// SAFETY: as above.
unsafe impl Sync for Scoreboard {}

pub const SLOT_BYTES: usize = 64;

/// One worker's slot.
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
}

impl Scoreboard {
    /// Creates a zeroed board with `slots` slots in a memfd.
    pub fn create(slots: usize) -> io::Result<Scoreboard> {
        let len = (slots.max(1) * SLOT_BYTES).next_multiple_of(page_size() as usize);
        // SAFETY: memfd_create with a valid C string.
        let fd =
            cvt(unsafe { libc::memfd_create(c"billiard-scoreboard".as_ptr(), libc::MFD_CLOEXEC) })?;
        // SAFETY: fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on our memfd.
        cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) })?;
        Scoreboard::map(fd)
    }

    /// Maps an existing board (inherited by a spawned worker).
    pub fn map(fd: OwnedFd) -> io::Result<Scoreboard> {
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes into a valid struct.
        cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
        let len = st.st_size as usize;
        if len == 0 {
            return Err(io::Error::other("empty scoreboard"));
        }
        // SAFETY: shared mapping of the whole memfd; checked for failure.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Scoreboard {
            fd,
            ptr: ptr.cast(),
            len,
        })
    }

    pub fn capacity(&self) -> usize {
        self.len / SLOT_BYTES
    }

    /// Slot `i`, if it exists.
    pub fn slot(&self, i: usize) -> Option<&Slot> {
        if i >= self.capacity() {
            return None;
        }
        // SAFETY: in bounds (checked), 64-byte aligned within a page-aligned
        // mapping, and Slot is made of atomics valid for any bit pattern.
        Some(unsafe { &*(self.ptr.add(i * SLOT_BYTES) as *const Slot) })
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

impl Drop for Scoreboard {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping we created.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// Open fds of this process (for leak tests and diagnostics).
pub fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
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
    on_stop_signal(stop_handler)
}
