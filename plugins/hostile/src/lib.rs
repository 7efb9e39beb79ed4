//! `hostile`: tasks that fight their host on purpose — they signal their
//! parent, close the worker's socket, flood its output pipes, leave signal
//! state behind and fork children that try to escape. The regression tests
//! of the adversarial report (`B1`..`B16`) drive them. Never load this
//! plugin in production.

use std::time::{Duration, Instant};

use billiard_plugin_api::{export_plugin, task, Emitter, TaskContext};

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

// ----- sandbox escapes (tests/sandbox.rs, issue 15) -------------------------
// Each tries one escape and says what happened: Ok when it got through,
// Err naming the call and the error when it was stopped.

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Connects to 127.0.0.1:`port` (a listener the test opened).
#[task]
pub fn sb_connect(port: u16) -> Result<String, String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map(|_| format!("connected to {addr}"))
        .map_err(|e| format!("connect {addr}: {e}"))
}

/// Writes a file at `path`.
#[task]
pub fn sb_write(path: String) -> Result<String, String> {
    std::fs::write(&path, b"escaped\n")
        .map(|_| format!("wrote {path}"))
        .map_err(|e| format!("write {path}: {e}"))
}

/// Forks `n` children that exit at once, reaping none until all are
/// forked (so they all count at once), then reaps them.
#[task]
pub fn sb_fork_bomb(n: u32) -> Result<String, String> {
    let mut pids = Vec::new();
    let mut failed = None;
    for i in 0..n {
        // SAFETY: the child calls only _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(0) };
        }
        if pid < 0 {
            failed = Some(os_err(&format!("fork #{} (after {i} children)", i + 1)));
            break;
        }
        pids.push(pid);
    }
    for pid in &pids {
        let mut st = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(*pid, &mut st, 0) };
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(format!("forked {n} children")),
    }
}

/// Sends `sig` to the worker's parent (the zygote).
#[task]
pub fn sb_kill_parent(sig: i32) -> Result<String, String> {
    // SAFETY: getppid has no preconditions.
    let ppid = unsafe { libc::getppid() };
    if ppid == 0 {
        return Err("getppid() is 0: the parent is outside this PID namespace".into());
    }
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(ppid, sig) } == 0 {
        Ok(format!("kill({ppid}, {sig}) succeeded"))
    } else {
        Err(os_err(&format!("kill({ppid}, {sig})")))
    }
}

/// Sends `sig` to `pid` (negative: a process group).
#[task]
pub fn sb_kill(pid: i32, sig: i32) -> Result<String, String> {
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(format!("kill({pid}, {sig}) succeeded"))
    } else {
        Err(os_err(&format!("kill({pid}, {sig})")))
    }
}

/// Attaches to `pid` with ptrace (PTRACE_SEIZE), stops it for a moment
/// (PTRACE_INTERRUPT) and detaches, leaving it running.
#[task]
pub fn sb_ptrace(pid: i32) -> Result<String, String> {
    // SAFETY: ptrace and waitpid with integer arguments and a valid
    // status pointer.
    unsafe {
        if libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) != 0 {
            return Err(os_err(&format!("ptrace(PTRACE_SEIZE, {pid})")));
        }
        if libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0) == 0 {
            let mut st = 0;
            libc::waitpid(pid, &mut st, libc::__WALL);
        }
        libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
    }
    Ok(format!("attached to {pid}"))
}

/// Reads 16 bytes of `pid`'s memory through /proc/PID/mem (at the start
/// of its first readable mapping).
#[task]
pub fn sb_read_mem(pid: i32) -> Result<String, String> {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| format!("read /proc/{pid}/maps: {e}"))?;
    let start = maps
        .lines()
        .find(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|p| p.starts_with('r'))
        })
        .and_then(|l| l.split('-').next())
        .and_then(|a| u64::from_str_radix(a, 16).ok())
        .ok_or_else(|| format!("no readable mapping in /proc/{pid}/maps"))?;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem"))
        .map_err(|e| format!("open /proc/{pid}/mem: {e}"))?;
    let mut buf = [0u8; 16];
    let n = mem
        .read_at(&mut buf, start)
        .map_err(|e| format!("read /proc/{pid}/mem: {e}"))?;
    Ok(format!("read {n} bytes of {pid}'s memory"))
}

/// Opens `path` for writing (appending, never truncating or creating) and
/// writes nothing: whether the task *could* change it.
#[task]
pub fn sb_open_write(path: String) -> Result<String, String> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map(|_| format!("{path} is open for writing"))
        .map_err(|e| format!("open {path} for writing: {e}"))
}

/// Looks for `name` in the environment and in /proc/self/environ.
#[task]
pub fn sb_env(name: String) -> Result<String, String> {
    if let Ok(v) = std::env::var(&name) {
        return Ok(v);
    }
    let raw = std::fs::read("/proc/self/environ").unwrap_or_default();
    let key = format!("{name}=");
    for entry in raw.split(|&b| b == 0) {
        if let Some(v) = entry.strip_prefix(key.as_bytes()) {
            return Ok(String::from_utf8_lossy(v).into_owned());
        }
    }
    Err(format!("{name} is not in the environment"))
}

/// Tries to load a kernel module (an empty image with init_module, then
/// /dev/null with finit_module): the kernel refuses the image itself
/// (ENOEXEC, EINVAL...) only after the permission check.
#[task]
pub fn sb_load_module() -> Result<String, String> {
    // SAFETY: init_module reads `len` (0) bytes of the image; the params
    // string is NUL-terminated.
    let r = unsafe {
        libc::syscall(
            libc::SYS_init_module,
            [0u8; 1].as_ptr(),
            0usize,
            c"".as_ptr(),
        )
    };
    let init = if r == 0 {
        "init_module: loaded".to_string()
    } else {
        os_err("init_module")
    };
    let f = std::fs::File::open("/dev/null").map_err(|e| format!("open /dev/null: {e}"))?;
    use std::os::fd::AsRawFd;
    // SAFETY: finit_module reads from an open fd; params NUL-terminated.
    let r = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), c"".as_ptr(), 0) };
    let finit = if r == 0 {
        "finit_module: loaded".to_string()
    } else {
        os_err("finit_module")
    };
    Err(format!("{init}; {finit}"))
}

/// Emits 0..n as stream items, then dies of a real SIGSEGV (a write
/// to an unmapped address), with the items perhaps still in the worker's
/// buffer.
#[task]
pub fn emit_then_segv(n: u64, out: &Emitter<u64>) -> u64 {
    for i in 0..n {
        out.emit(i);
    }
    // SAFETY: not safe at all: the crash is the point.
    unsafe { std::ptr::write_volatile(std::ptr::NonNull::<u64>::dangling().as_ptr(), n) };
    n
}

/// Emits 0..n as stream items, then calls `exit(3)`.
#[task]
pub fn emit_then_exit(n: u64, out: &Emitter<u64>) -> u64 {
    for i in 0..n {
        out.emit(i);
    }
    std::process::exit(3)
}

/// Emits 0..n as stream items, then aborts (SIGABRT).
#[task]
pub fn emit_then_abort(n: u64, out: &Emitter<u64>) -> u64 {
    for i in 0..n {
        out.emit(i);
    }
    std::process::abort()
}

/// The worker's mappings of its shared-memory arena (`/proc/self/maps`
/// lines naming `billiard-arena`), one per line. `pad` is ignored: a large
/// one makes the arguments (and so this call) go through the arena.
#[task]
pub fn arena_maps(pad: Vec<u8>) -> String {
    let _ = pad;
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("billiard-arena"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The worker's arena mappings as (start, end) addresses.
fn arena_ranges() -> Vec<(usize, usize)> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .filter(|l| l.contains("billiard-arena"))
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect()
}

/// Makes every arena mapping of the worker writable and fills it with
/// `fill` (its header, its argument and result buffers), then returns
/// `data`, which goes back through the arena it just trashed. An error if
/// the worker has no arena.
#[task]
pub fn arena_scribble(data: Vec<u8>, fill: u8) -> Result<Vec<u8>, String> {
    let ranges = arena_ranges();
    if ranges.is_empty() {
        return Err("no arena mapped".into());
    }
    for (start, end) in ranges {
        // SAFETY: sabotage is the point: the range is one of this process's
        // own shared mappings (from /proc/self/maps); `data` was decoded
        // into private memory, so nothing this task still reads lives there.
        unsafe {
            libc::mprotect(
                start as *mut libc::c_void,
                end - start,
                libc::PROT_READ | libc::PROT_WRITE,
            );
            std::ptr::write_bytes(start as *mut u8, fill, end - start);
        }
    }
    Ok(data)
}

/// Writes a forged DONE_SHM frame (kind 42) for its own job naming
/// `[off, off + len)` of the out region to every socket it has, then
/// sleeps: the supervisor must refuse the range, not read it. A large
/// `pad` makes sure the worker has an arena.
#[task]
pub fn forge_shm_done(off: u64, len: u64, pad: Vec<u8>, ctx: &TaskContext) -> u64 {
    let _ = pad;
    let job = ctx.job_id();
    let mut frame = Vec::with_capacity(35);
    frame.extend_from_slice(&31u32.to_le_bytes());
    frame.push(42);
    frame.extend_from_slice(&job.to_le_bytes());
    frame.extend_from_slice(&1u32.to_le_bytes());
    frame.push(0); // flags
    frame.push(0); // status Ok
    frame.extend_from_slice(&off.to_le_bytes());
    frame.extend_from_slice(&len.to_le_bytes());
    for fd in 3..64 {
        // SAFETY: fstat writes into a valid struct or fails.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK {
            // SAFETY: a write from a live buffer to an fd of our own.
            unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
        }
    }
    std::thread::sleep(Duration::from_secs(30));
    0
}

/// Ignores SIGTERM, SIGINT, SIGHUP, SIGQUIT and SIGUSR1 (the stop signal),
/// blocks every signal it can, then spins `ms` milliseconds without looking
/// at its context: no soft limit reaches it, only SIGKILL ends it early.
/// Returns `ms`.
#[task]
pub fn deaf_spin(ms: u64) -> u64 {
    // SAFETY: plain signal calls; being deaf is the point of the task.
    unsafe {
        for sig in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGUSR1,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
    let end = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < end {
        std::hint::spin_loop();
    }
    ms
}

// --- board_*: the scoreboard and the host services (issue 22: C3, C13, C14) ---

/// The scoreboard memory this worker can reach: its mappings of a memfd
/// whose name has `board` in it (`/proc/self/maps`), as (start, end).
fn board_ranges() -> Vec<(usize, usize)> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .filter(|l| l.contains("memfd:") && l.contains("board"))
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect()
}

/// Word `field` (0 running, 1 stop_job, 2 stop_reason, 3 finished) of the
/// 64-byte slot `i` of a board mapping starting at `start`, made writable.
fn board_word(start: usize, i: usize, field: usize) -> &'static std::sync::atomic::AtomicU64 {
    // SAFETY: sabotage is the point: `start` is one of this process's own
    // shared board mappings (from /proc/self/maps, made read-write by the
    // caller) and `i` is inside it; an AtomicU64 is valid for any bits.
    unsafe { &*((start + i * 64 + field * 8) as *const std::sync::atomic::AtomicU64) }
}

/// Makes the board mapping `[start, end)` writable (whatever it was).
fn board_writable(start: usize, end: usize) {
    // SAFETY: one of this process's own mappings, from /proc/self/maps.
    unsafe {
        libc::mprotect(
            start as *mut libc::c_void,
            end - start,
            libc::PROT_READ | libc::PROT_WRITE,
        );
    }
}

/// For `ms` milliseconds, posts a stop (`reason`: 1 soft time limit, 2
/// cancelled) for the next job of every slot of every board mapping it can
/// reach that runs another job than this one (the next job ids are
/// predictable). Returns how many other jobs it saw running: 0 when it can
/// reach no other worker's slot.
#[task]
pub fn board_stops(ms: u64, reason: u64, ctx: &TaskContext) -> u64 {
    use std::sync::atomic::Ordering::SeqCst;
    let me = ctx.job_id();
    let mut seen = std::collections::HashSet::new();
    let end = Instant::now() + Duration::from_millis(ms);
    let ranges = board_ranges();
    for &(s, e) in &ranges {
        board_writable(s, e);
    }
    while Instant::now() < end {
        for &(s, e) in &ranges {
            for i in 0..(e - s) / 64 {
                let r = board_word(s, i, 0).load(SeqCst);
                if r != 0 && r != me {
                    seen.insert(r);
                    if board_word(s, i, 1).load(SeqCst) != r.wrapping_add(1) {
                        board_word(s, i, 2).store(reason, SeqCst);
                        board_word(s, i, 1).store(r.wrapping_add(1), SeqCst);
                    }
                }
            }
        }
        std::hint::spin_loop();
    }
    seen.len() as u64
}

/// Writes `fill` over every byte of every board mapping it can reach;
/// returns how many bytes that was.
#[task]
pub fn board_scribble(fill: u8) -> u64 {
    let mut n = 0;
    for (s, e) in board_ranges() {
        board_writable(s, e);
        // SAFETY: as in `board_word`: our own mapping, made writable.
        unsafe { std::ptr::write_bytes(s as *mut u8, fill, e - s) };
        n += (e - s) as u64;
    }
    n
}

/// Appends a line to `path` (counting its runs), zeroes every board
/// mapping it can reach (its job then reads as "not started" there), and
/// ends the worker with exit code 70.
#[task]
pub fn board_forge(path: String) -> u64 {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let _ = f.write_all(b"run\n");
    }
    board_scribble(0);
    // SAFETY: _exit has no preconditions; dying is the point.
    unsafe { libc::_exit(70) }
}

/// Raised by the job after `board_late` (`board_after_late*`) once it runs.
static LATE_NEXT_STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Raised by `board_late`'s thread once it has made its late calls.
static LATE_DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// How many of the late emits the host accepted.
static LATE_ACCEPTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

struct SendAnyway<T>(T);
// SAFETY: not safe at all: handing the call's host services to a thread
// that outlives the call breaks their contract, which is the point.
unsafe impl<T> Send for SendAnyway<T> {}

/// Emits 1, then hands its emitter and its context's host services to a
/// thread and returns at once. The thread waits (at most 10 s) until the
/// next job on this worker (`board_after_late*`) runs, then emits `n`
/// items (777000..) and reports progress `n` times through this call's
/// services, counts the emits the host accepted and says it is done.
#[task]
pub fn board_late(n: u64, out: &Emitter<u64>, ctx: &TaskContext) -> u64 {
    use std::sync::atomic::Ordering::SeqCst;
    LATE_NEXT_STARTED.store(false, SeqCst);
    LATE_DONE.store(false, SeqCst);
    LATE_ACCEPTED.store(0, SeqCst);
    out.emit(1u64);
    let late = SendAnyway((
        Emitter::<u64>::new(ctx, billiard_plugin_api::Codec::Json),
        ctx.host(),
    ));
    std::thread::spawn(move || {
        let late = late;
        let (emitter, (host, data)) = &late.0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !LATE_NEXT_STARTED.load(SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut accepted = 0;
        for i in 0..n {
            let sent =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| emitter.emit(777000 + i)));
            accepted += sent.is_ok() as u64;
            (host.progress())(*data, i + 1, n);
        }
        LATE_ACCEPTED.store(accepted, SeqCst);
        LATE_DONE.store(true, SeqCst);
    });
    1
}

/// Waits (at most 10 s) for `board_late`'s thread to make its late calls
/// during this job.
fn board_wait_late() -> u64 {
    use std::sync::atomic::Ordering::SeqCst;
    LATE_NEXT_STARTED.store(true, SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !LATE_DONE.load(SeqCst) {
        if Instant::now() >= deadline {
            return u64::MAX;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    LATE_ACCEPTED.load(SeqCst)
}

/// The job after `board_late` (no stream): returns how many of the late
/// emits the host accepted while it ran (`u64::MAX`: they never came).
#[task]
pub fn board_after_late() -> u64 {
    board_wait_late()
}

/// The streaming job after `board_late`: emits 1 and 2, then as
/// `board_after_late`.
#[task]
pub fn board_after_late_stream(out: &Emitter<u64>) -> u64 {
    out.emit(1u64);
    out.emit(2u64);
    board_wait_late()
}

/// A string of `n` bytes (a result over a small frame limit).
#[task]
pub fn board_big(n: u64) -> String {
    "x".repeat(n as usize)
}

/// Emits one item of `n` bytes, then returns 0.
#[task]
pub fn board_big_item(n: u64, out: &Emitter<String>) -> u64 {
    out.emit("x".repeat(n as usize));
    0
}

/// Writes the start of a DONE frame (kind 10) that says it is `len` bytes
/// long to every socket it has, then sleeps 30 s: the supervisor must
/// refuse the frame by its length and say so in the job's error.
#[task]
pub fn board_huge_frame(len: u32) -> u64 {
    let mut head = len.to_le_bytes().to_vec();
    head.push(10);
    for fd in 3..64 {
        // SAFETY: fstat writes into a valid struct or fails.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK {
            // SAFETY: a write from a live buffer to an fd of our own.
            unsafe { libc::write(fd, head.as_ptr().cast(), head.len()) };
        }
    }
    std::thread::sleep(Duration::from_secs(30));
    0
}

// ----- sb2_*: the terminal, Unix sockets, SysV/POSIX IPC, foreign ABIs
// (issue 22, C2/C5/C6/C16). Each reports what got through without ever
// echoing the bytes it tried to put on a terminal, so a test can tell its
// own output from the task's.

/// What one terminal attempt on `fd` (named `what`) achieved: writes
/// `marker`, pushes `inject` with TIOCSTI, resizes with TIOCSWINSZ.
fn sb2_on_tty(fd: i32, what: &str, marker: &str, inject: &str, got: &mut Vec<String>) {
    // SAFETY: isatty/write/ioctl on an fd number; the buffers outlive the calls.
    unsafe {
        if libc::isatty(fd) != 1 {
            return;
        }
        let w = libc::write(fd, marker.as_ptr().cast(), marker.len());
        got.push(if w < 0 {
            os_err(&format!("{what} is a tty; write"))
        } else {
            format!("{what} is a tty; wrote {w} bytes")
        });
        let mut pushed = 0;
        for b in inject.bytes() {
            if libc::ioctl(fd, libc::TIOCSTI, &b as *const u8) == 0 {
                pushed += 1;
            }
        }
        got.push(if pushed > 0 {
            format!("{what}: TIOCSTI pushed {pushed} bytes")
        } else {
            os_err(&format!("{what}: TIOCSTI"))
        });
        let ws = libc::winsize {
            ws_row: 7,
            ws_col: 13,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        if libc::ioctl(fd, libc::TIOCSWINSZ, &ws) == 0 {
            got.push(format!("{what}: TIOCSWINSZ ok"));
        }
    }
}

fn sb2_open_tty(
    path: &str,
    marker: &str,
    inject: &str,
    got: &mut Vec<String>,
    failed: &mut Vec<String>,
) {
    let Ok(c) = std::ffi::CString::new(path) else {
        return;
    };
    // SAFETY: open with a NUL-terminated path; the fd is closed below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
    if fd < 0 {
        failed.push(os_err(&format!("open {path}")));
        return;
    }
    sb2_on_tty(fd, path, marker, inject, got);
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
}

/// Looks for a terminal everywhere a task could find one: /dev/tty, every
/// fd it has (0-2 and any inherited one), the zygote's fds through
/// `/proc/<ppid>/fd` (visible without a PID namespace), and with `scan_dev`
/// /dev/pts/*, /dev/console, /dev/ptmx and every `/proc/<pid>/fd/*`. On
/// each it writes `marker` and pushes `inject` with TIOCSTI. Ok lists what
/// got through; Err, when nothing did, lists the refusals.
#[task]
pub fn sb2_tty(marker: String, inject: String, scan_dev: bool) -> Result<String, String> {
    let mut got = Vec::new();
    let mut failed = Vec::new();
    sb2_open_tty("/dev/tty", &marker, &inject, &mut got, &mut failed);
    for fd in 0..1024 {
        sb2_on_tty(fd, &format!("fd {fd}"), &marker, &inject, &mut got);
    }
    // SAFETY: getppid has no preconditions.
    let ppid = unsafe { libc::getppid() };
    if ppid > 0 {
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{ppid}/fd")) {
            for e in rd.flatten() {
                let p = e.path().display().to_string();
                sb2_open_tty(&p, &marker, &inject, &mut got, &mut Vec::new());
            }
        }
    }
    // A controlling terminal of its own or of its parent (the zygote,
    // visible without a PID namespace): field 7 of /proc/PID/stat.
    for who in ["self".to_string(), ppid.to_string()] {
        let stat = std::fs::read_to_string(format!("/proc/{who}/stat")).unwrap_or_default();
        let tty_nr = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(4)?.parse::<i64>().ok());
        if tty_nr.is_some_and(|t| t != 0) {
            got.push(format!("/proc/{who}/stat: a controlling terminal"));
        }
    }
    if scan_dev {
        let mut paths = vec!["/dev/console".to_string(), "/dev/ptmx".to_string()];
        if let Ok(rd) = std::fs::read_dir("/dev/pts") {
            paths.extend(rd.flatten().map(|e| e.path().display().to_string()));
        }
        // Every fd of every process it can see (the host's stdin, say).
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                if let Ok(fds) = std::fs::read_dir(p.path().join("fd")) {
                    paths.extend(fds.flatten().map(|e| e.path().display().to_string()));
                }
            }
        }
        for p in paths {
            sb2_open_tty(&p, &marker, &inject, &mut got, &mut failed);
        }
    }
    if got.is_empty() {
        failed.push("no fd is a tty".into());
        Err(failed.join("; "))
    } else {
        Ok(got.join("; "))
    }
}

/// The terminal ioctls the sandbox refuses, each tried on `fd`, as
/// "NAME:errno" (0: it worked). With `junk_high`, the request carries
/// junk in its upper 32 bits (the kernel ignores them).
#[task]
pub fn sb2_ioctls(fd: i32, junk_high: bool) -> String {
    // c_ulong on glibc, c_int on musl: the casts are not redundant everywhere.
    #[allow(clippy::unnecessary_cast)]
    let reqs: [(&str, u64); 8] = [
        ("TIOCSTI", libc::TIOCSTI as u64),
        ("TIOCLINUX", libc::TIOCLINUX as u64),
        ("TIOCSCTTY", libc::TIOCSCTTY as u64),
        ("TIOCSPGRP", libc::TIOCSPGRP as u64),
        ("TIOCSWINSZ", libc::TIOCSWINSZ as u64),
        ("TIOCSETD", libc::TIOCSETD as u64),
        ("TIOCCONS", libc::TIOCCONS as u64),
        ("TIOCVHANGUP", libc::TIOCVHANGUP as u64),
    ];
    let arg = [0u8; 64];
    let mut out = Vec::new();
    for (name, req) in reqs {
        let req = if junk_high {
            req | 0x5a5a_0000_0000_0000
        } else {
            req
        };
        // SAFETY: a raw ioctl on an fd number with a zeroed 64-byte buffer
        // (larger than any of these requests reads); fd 0 is /dev/null.
        let r = unsafe { libc::syscall(libc::SYS_ioctl, fd, req, arg.as_ptr()) };
        let errno = if r < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        } else {
            0
        };
        out.push(format!("{name}:{errno}"));
    }
    out.join(" ")
}

/// Reaches a Unix socket at `path` ("@name": abstract) and sends `payload`:
/// `how` = "stream" (socket + connect), "dgram" (an unbound datagram
/// socket's sendto), "pair_dgram" (sendto on a socketpair's datagram end),
/// "pair_stream" (only makes a connected stream pair: no address).
#[task]
pub fn sb2_unix(path: String, how: String, payload: String) -> Result<String, String> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    }
    .map_err(|e| format!("address {path}: {e}"))?;
    let e = |what: &'static str| move |err: std::io::Error| format!("{what}: {err}");
    match how.as_str() {
        "stream" => {
            use std::io::Write;
            let mut s =
                UnixStream::connect_addr(&addr).map_err(|err| format!("connect {path}: {err}"))?;
            s.write_all(payload.as_bytes())
                .map_err(|err| format!("write {path}: {err}"))?;
            Ok(format!("connected to {path}"))
        }
        "dgram" => {
            let s = UnixDatagram::unbound().map_err(e("socket(AF_UNIX, SOCK_DGRAM)"))?;
            s.send_to_addr(payload.as_bytes(), &addr)
                .map_err(|err| format!("sendto {path}: {err}"))?;
            Ok(format!("sent to {path}"))
        }
        "pair_dgram" => {
            let (a, _b) = UnixDatagram::pair().map_err(e("socketpair(AF_UNIX, SOCK_DGRAM)"))?;
            a.send_to_addr(payload.as_bytes(), &addr)
                .map_err(|err| format!("sendto {path}: {err}"))?;
            Ok(format!("sent to {path} from a socketpair"))
        }
        "pair_stream" => {
            let (a, b) = UnixStream::pair().map_err(e("socketpair(AF_UNIX, SOCK_STREAM)"))?;
            drop((a, b));
            Ok("stream socketpair ok".into())
        }
        other => Err(format!("unknown mode {other}")),
    }
}

/// The SysV shared memory segments this task can see (/proc/sysvipc/shm:
/// "key shmid size" per line).
#[task]
pub fn sb2_shm_list() -> String {
    let text = std::fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(format!("{} {} {}", f.first()?, f.get(1)?, f.get(3)?))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Attaches SysV segment `id` and writes `text` at its start.
#[task]
pub fn sb2_shm_write(id: i32, text: String) -> Result<String, String> {
    // SAFETY: shmat maps the segment or fails; we write at most the text's
    // length (the test's segment is 4 KiB) and detach.
    unsafe {
        let p = libc::shmat(id, std::ptr::null(), 0);
        if p as isize == -1 {
            return Err(os_err(&format!("shmat({id})")));
        }
        std::ptr::copy_nonoverlapping(text.as_ptr(), p.cast::<u8>(), text.len().min(4096));
        libc::shmdt(p);
    }
    Ok(format!("wrote into segment {id}"))
}

/// Leaves IPC objects behind: a SysV segment of `mib` MiB (touched) under
/// `key`, a message queue under `key` holding one message, and the POSIX
/// queue `mq` holding one message. Returns "shmid msqid".
#[task]
pub fn sb2_ipc_leave(key: i32, mib: u64, mq: String) -> Result<String, String> {
    let size = (mib as usize).saturating_mul(1 << 20);
    // SAFETY: SysV and POSIX IPC calls with valid buffers; the segment is
    // written only within its size, then detached (it stays: no IPC_RMID).
    unsafe {
        let shm = libc::shmget(key, size, libc::IPC_CREAT | 0o600);
        if shm < 0 {
            return Err(os_err("shmget"));
        }
        let p = libc::shmat(shm, std::ptr::null(), 0);
        if p as isize == -1 {
            return Err(os_err("shmat"));
        }
        std::ptr::write_bytes(p.cast::<u8>(), 0x5a, size);
        libc::shmdt(p);
        let msq = libc::msgget(key, libc::IPC_CREAT | 0o600);
        if msq < 0 {
            return Err(os_err("msgget"));
        }
        #[repr(C)]
        struct Msg {
            mtype: libc::c_long,
            text: [u8; 100],
        }
        let m = Msg {
            mtype: 1,
            text: [b'q'; 100],
        };
        if libc::msgsnd(msq, (&m as *const Msg).cast(), 100, 0) < 0 {
            return Err(os_err("msgsnd"));
        }
        let name = std::ffi::CString::new(mq).map_err(|e| e.to_string())?;
        let q = libc::mq_open(
            name.as_ptr(),
            libc::O_CREAT | libc::O_RDWR,
            0o600 as libc::mode_t,
            std::ptr::null::<libc::mq_attr>(),
        );
        if q < 0 {
            return Err(os_err("mq_open"));
        }
        if libc::mq_send(q, c"hello".as_ptr(), 5, 0) < 0 {
            return Err(os_err("mq_send"));
        }
        libc::mq_close(q);
        Ok(format!("{shm} {msq}"))
    }
}

/// An i386 system call through `int 0x80` (nr 20 is getpid there):
/// returns the raw result (a negative errno on failure).
#[task]
pub fn sb2_int80(nr: u32) -> i64 {
    #[cfg(target_arch = "x86_64")]
    {
        let mut ret: u32 = nr;
        // SAFETY: the i386 entry of the kernel; it takes eax/ebx/ecx/edx,
        // returns in eax and may clobber r8-r11 when called from 64-bit
        // code. getpid touches no memory.
        unsafe {
            // rbx is LLVM's: saved, zeroed (arg 1) and restored by hand.
            std::arch::asm!(
                "push rbx",
                "xor ebx, ebx",
                "int 0x80",
                "pop rbx",
                inlateout("eax") ret,
                in("ecx") 0u32,
                in("edx") 0u32,
                lateout("r8") _, lateout("r9") _, lateout("r10") _, lateout("r11") _,
            );
        }
        ret as i32 as i64
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = nr;
        -(libc::ENOSYS as i64)
    }
}

/// An x32-ABI system call (`nr` | 0x40000000, e.g. 39: getpid) on x86_64:
/// the result, or the negative errno.
#[task]
pub fn sb2_x32(nr: i64) -> i64 {
    // SAFETY: a raw system call with no pointer arguments.
    let r = unsafe { libc::syscall(nr | 0x4000_0000, 0, 0, 0) };
    if r < 0 {
        -(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64)
    } else {
        r
    }
}

/// Opens every board mapping it can reach through `/proc/self/map_files`
/// and tries to shrink the file to 0 bytes (which would make the
/// supervisor's reads of that page fault). Returns one line per mapping:
/// `open: <error>`, `truncate: <error>` or `truncated`.
#[task]
pub fn board_truncate() -> String {
    let mut out = Vec::new();
    for (s, e) in board_ranges() {
        let path = format!("/proc/self/map_files/{s:x}-{e:x}");
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        {
            Err(err) => out.push(format!("open: {err}")),
            Ok(f) => match f.set_len(0) {
                Err(err) => out.push(format!("truncate: {err}")),
                Ok(()) => out.push("truncated".into()),
            },
        }
    }
    out.join("\n")
}

/// Marks its own job finished on its board page (so a `terminate_job`
/// takes its result for on the way), creates the file `done` to say so,
/// then spins `ms` milliseconds without looking at its context. Returns `ms`.
#[task]
pub fn board_dodge(done: String, ms: u64, ctx: &TaskContext) -> u64 {
    use std::sync::atomic::Ordering::SeqCst;
    let me = ctx.job_id();
    for (s, e) in board_ranges() {
        board_writable(s, e);
        for i in 0..(e - s) / 64 {
            if board_word(s, i, 0).load(SeqCst) == me {
                board_word(s, i, 3).store(me, SeqCst);
                board_word(s, i, 0).store(0, SeqCst);
            }
        }
    }
    let _ = std::fs::write(&done, b"forged\n");
    let end = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < end {
        std::hint::spin_loop();
    }
    ms
}

/// Makes a socket of `family` and `ty` (e.g. AF_VSOCK = 40, SOCK_STREAM
/// = 1) and closes it: whether the sandbox lets that family exist.
#[task]
pub fn sb2_socket(family: i32, ty: i32) -> Result<String, String> {
    // SAFETY: socket with integer arguments; the fd is closed at once.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_err(&format!("socket({family}, {ty})")));
    }
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    Ok(format!("socket({family}, {ty}) made"))
}

// HOSTILE-TASKS: add new tasks above this line and list them in export_plugin!.

/// Item `i` of a run that counts its items' runs: appends `i` and a
/// newline to the file at `path` (one `O_APPEND` write), then, when `i ==
/// at`, does `how`: `segv` kills its worker with SIGSEGV, `hang` sleeps
/// for a minute ignoring stops (a hard limit ends it), `coop` sleeps until
/// asked to stop (a soft limit ends it). Returns `i`.
#[task]
pub fn mark_item(
    path: String,
    i: u64,
    at: u64,
    how: String,
    ctx: &TaskContext,
) -> Result<u64, billiard_plugin_api::Stopped> {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let _ = f.write_all(format!("{i}\n").as_bytes());
    }
    if i != at {
        return Ok(i);
    }
    match how.as_str() {
        "segv" => {
            // SAFETY: raise() delivers SIGSEGV with the default action,
            // which ends the worker: the point of the task.
            unsafe {
                libc::raise(libc::SIGSEGV);
            }
        }
        "hang" => std::thread::sleep(Duration::from_secs(60)),
        "coop" => {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                ctx.check()?;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        _ => {}
    }
    Ok(i)
}

export_plugin!(
    name: "hostile",
    tasks: [nap, coop, echo_f64, ppid, kill_parent, kill_pid, child_signals, spoil_signals, fork_named, escape_group, floats_with, spew, mark_close_socket, segv, append_line, die_noisily, sb_connect, sb_write, sb_fork_bomb, sb_kill_parent, sb_kill, sb_ptrace, sb_read_mem, sb_env, sb_load_module, sb_open_write, emit_then_segv, emit_then_exit, emit_then_abort, arena_maps, arena_scribble, forge_shm_done, deaf_spin, board_stops, board_scribble, board_forge, board_late, board_after_late, board_after_late_stream, board_big, board_big_item, board_huge_frame, board_truncate, board_dodge, sb2_tty, sb2_ioctls, sb2_unix, sb2_shm_list, sb2_shm_write, sb2_ipc_leave, sb2_int80, sb2_x32, sb2_socket, mark_item],
);
