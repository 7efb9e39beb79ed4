//! `hostile`: tasks that fight their host on purpose — they signal their
//! parent, close the worker's socket, flood its output pipes, leave signal
//! state behind and fork children that try to escape. The regression tests
//! of the adversarial report (`B1`..`B16`) drive them. Never load this
//! plugin in production.

use std::time::{Duration, Instant};

use billiard_plugin_api::{export_plugin, task, TaskContext};

/// Sleeps `ms` milliseconds, returns `ms`.
#[task]
pub fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Busy-waits `ms` milliseconds, polling the context: stops with
/// `soft_time_limit` once a soft limit arrives.
#[task]
pub fn coop(ms: u64, ctx: &TaskContext) -> u64 {
    let end = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < end {
        ctx.checkpoint();
        std::hint::spin_loop();
    }
    ms
}

/// Returns its argument (a float), e.g. to produce a non-finite result.
#[task]
pub fn echo_f64(x: f64) -> f64 {
    x
}

/// The parent of the worker process (the zygote).
#[task]
pub fn ppid() -> i32 {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() }
}

/// Sends `sig` to the worker's parent (the zygote), returns the kill() result.
#[task]
pub fn kill_parent(sig: i32) -> i32 {
    // SAFETY: kill has no memory-safety preconditions; hurting the parent is
    // the point of the task.
    unsafe { libc::kill(libc::getppid(), sig) }
}

/// Sends `sig` to `pid`, returns the kill() result.
#[task]
pub fn kill_pid(pid: i32, sig: i32) -> i32 {
    // SAFETY: as above.
    unsafe { libc::kill(pid, sig) }
}

/// `[1.5, x]` where `x` is `"nan"`, `"inf"` or `"-inf"` (else 2.5): a
/// non-finite float inside a value (B15).
#[task]
pub fn floats_with(x: String) -> Vec<f64> {
    let x = match x.as_str() {
        "nan" => f64::NAN,
        "inf" => f64::INFINITY,
        "-inf" => f64::NEG_INFINITY,
        _ => 2.5,
    };
    vec![1.5, x]
}

/// Starts `sleep 30` (std::process::Command), reads which signals it
/// ignores (`SigIgn` of /proc/PID/status), sends it SIGTERM and waits up to
/// 5 s: returns (SigIgn mask, whether SIGTERM ended it). Kills it if not.
#[task]
pub fn child_signals() -> Result<(u64, bool), String> {
    use std::os::unix::process::ExitStatusExt;
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .map_err(|e| format!("could not start sleep: {e}"))?;
    let pid = child.id() as i32;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let ign = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(u64::MAX);
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    let died = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st.signal() == Some(libc::SIGTERM),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
        }
    };
    Ok((ign, died))
}

/// Leaves signal state behind: `how` = 0 sets SIGUSR1 (the stop signal)
/// to SIG_IGN, 1 installs a do-nothing SIGUSR1 handler, 2 blocks every
/// signal with sigprocmask. Returns `how`.
#[task]
pub fn spoil_signals(how: u32) -> u32 {
    extern "C" fn swallow(_: libc::c_int) {}
    // SAFETY: plain signal calls; the handler does nothing.
    unsafe {
        match how {
            0 => {
                libc::signal(libc::SIGUSR1, libc::SIG_IGN);
            }
            1 => {
                libc::signal(libc::SIGUSR1, swallow as *const () as libc::sighandler_t);
            }
            _ => {
                let mut all: libc::sigset_t = std::mem::zeroed();
                libc::sigfillset(&mut all);
                libc::sigprocmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
            }
        }
    }
    how
}

/// Forks a child named `name` (prctl PR_SET_NAME, at most 15 bytes) that
/// sleeps `secs` seconds; with `own_session` it calls setsid() first.
/// Returns the child's pid at once, leaving it behind.
#[task]
pub fn fork_named(name: String, secs: u32, own_session: bool) -> i32 {
    fork_named_child(&name, secs, own_session)
}

fn fork_named_child(name: &str, secs: u32, own_session: bool) -> i32 {
    let cname = std::ffi::CString::new(name).unwrap_or_default();
    // SAFETY: the worker is single-threaded; the child only makes raw
    // syscalls (setsid, prctl, sleep) and ends with _exit.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            if own_session {
                libc::setsid();
            }
            libc::prctl(libc::PR_SET_NAME, cname.as_ptr() as libc::c_ulong, 0, 0, 0);
            libc::sleep(secs);
            libc::_exit(0);
        }
        pid
    }
}

/// Moves the worker into its parent's (the zygote's) process group, forks
/// a child named `name` that sleeps `secs` seconds (it is in that group
/// too), then spins `spin_ms` without checking for stops, past any hard
/// limit. Returns the setpgid() result.
#[task]
pub fn escape_group(name: String, secs: u32, spin_ms: u64) -> i32 {
    // SAFETY: setpgid/getppid take integers; escaping is the point.
    let r = unsafe { libc::setpgid(0, libc::getppid()) };
    fork_named_child(&name, secs, false);
    let end = Instant::now() + Duration::from_millis(spin_ms);
    while Instant::now() < end {
        std::hint::spin_loop();
    }
    r
}

/// Writes `mb` MiB to fd `fd` (1: stdout, 2: stderr) in lines of
/// `line_len` bytes (0: no newlines), one write per line: an output flood
/// (B4). Returns the bytes written.
#[task]
pub fn spew(fd: i32, mb: u64, line_len: u64) -> u64 {
    let total = mb << 20;
    let chunk = if line_len == 0 {
        64 * 1024
    } else {
        line_len as usize
    };
    let mut line = vec![b'x'; chunk];
    if line_len > 0 {
        line[chunk - 1] = b'\n';
    }
    let mut written = 0u64;
    while written < total {
        let n = chunk.min((total - written) as usize);
        // SAFETY: writes n initialized bytes of `line` to a plain fd.
        let r = unsafe { libc::write(fd, line.as_ptr().cast(), n) };
        if r <= 0 {
            break;
        }
        written += r as u64;
    }
    written
}

/// Appends a line to `path` (to count how often it ran), then closes every
/// socket fd of the process (the worker's connection to the pool), so the
/// worker dies after the task returned (B2). With `keep`, each socket is
/// first `dup`ed (as a child holding it would), so the pool sees no EOF
/// until the worker exits.
#[task]
pub fn mark_close_socket(path: String, keep: bool) -> Result<u32, String> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("{path}: {e}"))?;
    writeln!(f, "ran").map_err(|e| e.to_string())?;
    let mut closed = 0;
    for fd in 0..1024 {
        // SAFETY: fstat on any fd number writes into a valid struct or fails.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK {
            if keep {
                // SAFETY: dup of an open fd; the copy is leaked on purpose.
                unsafe { libc::fcntl(fd, libc::F_DUPFD, 1024) };
            }
            // SAFETY: closing an fd of our own process; sabotage is the point.
            unsafe { libc::close(fd) };
            closed += 1;
        }
    }
    Ok(closed)
}

/// Raises SIGSEGV with the default action (the worker dies).
#[task]
pub fn segv() -> u64 {
    // SAFETY: raise has no preconditions; dying is the point.
    unsafe { libc::raise(libc::SIGSEGV) };
    0
}

/// Appends `line` and a newline to the file at `path` (one `O_APPEND`
/// write, so runs on several hosts never interleave), then sleeps `ms`
/// milliseconds; returns `ms`. The Celery tests count a job's runs with it.
#[task]
pub fn append_line(path: String, line: String, ms: u64) -> Result<u64, String> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("cannot open {path}: {e}"))?;
    f.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("cannot write {path}: {e}"))?;
    drop(f);
    std::thread::sleep(Duration::from_millis(ms));
    Ok(ms)
}

/// Prints a dying message and then `frames` lines of backtrace to stderr,
/// then aborts: the crash report must keep the message (UX list).
#[task]
pub fn die_noisily(frames: u32) -> u64 {
    eprintln!("memory allocation of 21474836480 bytes failed");
    for i in 0..frames {
        eprintln!("  {i}: some::deep::frame::of::the::backtrace");
    }
    std::process::abort()
}

// HOSTILE-TASKS: add new tasks above this line and list them in export_plugin!.

export_plugin!(
    name: "hostile",
    tasks: [nap, coop, echo_f64, ppid, kill_parent, kill_pid, child_signals, spoil_signals, fork_named, escape_group, floats_with, spew, mark_close_socket, segv, append_line, die_noisily],
);
