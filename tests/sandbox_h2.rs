//! The sandbox findings of the 2026-12-06 adversarial report (issue 22):
//! C2 (workers had the operator's terminal), C5 (filesystem Unix sockets
//! under "no network"), C6 (SysV IPC and POSIX queues shared with the host)
//! and C16 (a foreign-ABI system call killed the worker). The `hostile`
//! plugin's `sb2_*` tasks attack; every refusal is paired with a run that
//! shows the same attack getting through where it is not refused, or with
//! a control that shows the test can see it when it does.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::time::Duration;

use billiard_host::sandbox::Sandbox;
use billiard_host::{ErrorKind, Event, Pool, StartMethod, TaskError};

const LONG: Duration = Duration::from_secs(30);

// ----- shared ----------------------------------------------------------------

fn pool_with(sandbox: Sandbox, workers: usize, method: StartMethod) -> (Pool, Vec<i32>) {
    let (tx, events) = crossbeam_channel::unbounded();
    let pool = Pool::builder()
        .workers(workers)
        .worker_exe(common::bin())
        .start_method(method)
        .plugin(common::plugin("hostile"))
        .sandbox(sandbox)
        .events(tx)
        .build()
        .expect("pool");
    let mut pids = Vec::new();
    let deadline = std::time::Instant::now() + LONG;
    while pids.len() < workers {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::WorkerUp { pid, .. }) => pids.push(pid),
            Ok(_) => {}
            Err(_) => panic!("only {} of {workers} workers came up", pids.len()),
        }
    }
    (pool, pids)
}

fn pool(sandbox: Sandbox) -> Pool {
    pool_with(sandbox, 1, StartMethod::Forkserver).0
}

fn call<R: serde::de::DeserializeOwned + Send + 'static>(
    pool: &Pool,
    task: &str,
    args: impl serde::Serialize,
) -> Result<R, TaskError> {
    pool.apply::<_, R>("hostile", task, args)
}

/// The pool lost no worker and still serves.
fn intact(pool: &Pool) {
    assert_eq!(call::<u64>(pool, "nap", (1u64,)).expect("still serves"), 1);
    let stats = pool.stats().expect("stats");
    assert_eq!(stats.worker_deaths, 0, "a worker was lost: {stats:?}");
}

fn refused(got: Result<String, TaskError>, wants: &[&str]) -> String {
    let e = got.expect_err("the attack got through");
    assert_eq!(e.kind, ErrorKind::TaskError, "{e:?}");
    for w in wants {
        assert!(e.message.contains(w), "{:?} lacks {w:?}", e.message);
    }
    e.message
}

/// Fields of /proc/PID/stat after the command name: (session, tty_nr).
fn session_and_tty(pid: i32) -> (i32, i64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let (_, rest) = stat.rsplit_once(')').expect("stat format");
    let f: Vec<&str> = rest.split_whitespace().collect();
    (
        f[3].parse().expect("session"),
        f[4].parse().expect("tty_nr"),
    )
}

// ----- C2: no terminal -------------------------------------------------------

/// A fresh pseudo-terminal in raw mode (no echo, no line editing: what is
/// written on it arrives on the master as is, what is pushed into its
/// input can be read from the slave as is).
fn raw_pty() -> (OwnedFd, OwnedFd) {
    use nix::sys::termios;
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let mut t = termios::tcgetattr(&pty.slave).expect("tcgetattr");
    termios::cfmakeraw(&mut t);
    termios::tcsetattr(&pty.slave, termios::SetArg::TCSANOW, &t).expect("tcsetattr");
    (pty.master, pty.slave)
}

/// Reads `fd` until `sentinel` has arrived (the test writes it after the
/// program under test has ended: whatever that program put on the terminal
/// comes before it), or panics after a long while.
fn read_until(fd: &OwnedFd, sentinel: &[u8]) -> Vec<u8> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + LONG;
    while !got.windows(sentinel.len()).any(|w| w == sentinel) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(
            !left.is_zero(),
            "no sentinel; got {:?}",
            String::from_utf8_lossy(&got)
        );
        let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(fd), PollFlags::POLLIN)];
        let ms =
            PollTimeout::try_from(left.as_millis().min(10_000) as i32).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => panic!("poll: {e}"),
        }
        let mut buf = [0u8; 4096];
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(0) => panic!(
                "EOF before the sentinel: {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    got
}

/// Runs `cmd` as an operator's interactive command would run: in a session
/// of its own whose controlling terminal is `slave`, with stdin, stdout and
/// stderr on it, and the terminal once more at fd 5 without O_CLOEXEC (a
/// shell's `5<>/dev/tty`). Returns the exit status, what appeared on the
/// terminal, and what was pushed into its input.
fn on_terminal(mut cmd: std::process::Command) -> (std::process::ExitStatus, String, String) {
    let (master, slave) = raw_pty();
    let s = slave.as_raw_fd();
    let dup = |fd: &OwnedFd| std::process::Stdio::from(fd.try_clone().expect("dup"));
    cmd.stdin(dup(&slave))
        .stdout(dup(&slave))
        .stderr(dup(&slave));
    // SAFETY: between fork and exec the child calls only setsid, ioctl and
    // dup2 (async-signal-safe) on fds opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 || libc::dup2(s, 5) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let master_r = master.try_clone().expect("dup master");
    let reader = std::thread::spawn(move || read_until(&master_r, b"@@OUTPUT-END@@"));
    let status = cmd.status().expect("start the program on the terminal");
    // After the program: a sentinel on each side, behind anything it wrote
    // on the terminal or pushed into its input.
    let mut sf = std::fs::File::from(slave.try_clone().expect("dup"));
    sf.write_all(b"@@OUTPUT-END@@")
        .expect("write on the terminal");
    let shown = reader.join().expect("reader");
    let mut mf = std::fs::File::from(master);
    mf.write_all(b"@@INPUT-END@@")
        .expect("type on the terminal");
    let typed = read_until(&slave, b"@@INPUT-END@@");
    (
        status,
        String::from_utf8_lossy(&shown).into_owned(),
        String::from_utf8_lossy(&typed).into_owned(),
    )
}

const MARK: &str = "INJECTED-BY-A-TASK";
const KEYS: &str = "touch /tmp/billiard-c2-pwned\n";

/// `run` of `sb2_tty` on a terminal with `extra` flags; asserts that the
/// task found no terminal and that nothing reached it.
fn c2_attack(extra: &[&str], scan_dev: bool) -> String {
    let hostile = common::plugin_str("hostile");
    let args = serde_json::json!([MARK, KEYS, scan_dev]).to_string();
    let mut cmd = common::host_command();
    cmd.args(["run", &hostile, "--task", "sb2_tty", "--args", &args]);
    cmd.args(extra);
    let (status, shown, typed) = on_terminal(cmd);
    assert!(
        !shown.contains(MARK),
        "a task wrote on the terminal: {shown:?}"
    );
    assert!(
        !typed.contains("touch"),
        "a task typed on the terminal: {typed:?}"
    );
    // The host's own result line did reach the terminal: the test sees
    // what is written on it.
    let line = shown
        .lines()
        .find(|l| l.contains("\"index\":0"))
        .unwrap_or_else(|| panic!("no result line on the terminal ({status}): {shown:?}"));
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("result JSON");
    let msg = v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("the task found a terminal: {line}"))
        .to_string();
    assert_eq!(v["error"]["kind"], "task_error", "{line}");
    assert!(msg.contains("no fd is a tty"), "{msg}");
    msg
}

#[test]
fn c2_the_test_sees_what_a_process_of_the_session_does_to_the_terminal() {
    // The control: a process that stays in the terminal's session reaches
    // it through /dev/tty (a write, and keystrokes with TIOCSTI), and the
    // harness sees both — so the attacks below would be seen too.
    let mut cmd = std::process::Command::new("python3");
    cmd.args([
        "-c",
        "import fcntl,os,termios\n\
         fd=os.open('/dev/tty',os.O_RDWR)\n\
         os.write(fd,b'INJECTED-BY-A-TASK')\n\
         [fcntl.ioctl(fd,termios.TIOCSTI,bytes([b])) for b in b'touch x\\n']\n\
         print('{\"index\":0,\"error\":{\"kind\":\"task_error\",\"message\":\"no fd is a tty\"}}')",
    ]);
    let (status, shown, typed) = on_terminal(cmd);
    assert!(status.success(), "{status}: {shown}");
    assert!(shown.contains(MARK), "{shown:?}");
    assert!(typed.contains("touch x"), "{typed:?}");
}

#[test]
fn c2_a_plugin_constructor_run_by_inspect_and_check_finds_no_terminal() {
    // `inspect` and `check` load the plugin in a throw-away process before
    // any pool exists: its constructors run there. That process leaves the
    // operator's session first, and its stderr reaches the terminal only
    // through the host, control characters escaped.
    let bad = common::plugin_str("bad-ctor");
    for sub in ["inspect", "check"] {
        let mut cmd = common::host_command();
        cmd.args([sub, &bad]).env("BILLIARD_BAD_CTOR", "tty");
        let (_status, shown, typed) = on_terminal(cmd);
        assert!(
            !shown.contains("CTOR-ON-TTY"),
            "{sub}: a constructor wrote on the terminal: {shown:?}"
        );
        assert!(
            !typed.contains("billiard-c2-ctor"),
            "{sub}: a constructor typed on the terminal: {typed:?}"
        );
        assert!(
            shown.contains("\\u{1b}[31mCTOR-STDERR"),
            "{sub}: the constructor's stderr is not shown escaped: {shown:?}"
        );
        assert!(
            !shown.contains("\u{1b}[31m"),
            "{sub}: a raw escape sequence reached the terminal: {shown:?}"
        );
    }
}

#[test]
fn c2_none_forkserver_task_finds_no_terminal() {
    let msg = c2_attack(&["--sandbox", "none"], false);
    // No controlling terminal: /dev/tty exists on the host but has no
    // terminal behind it.
    assert!(
        msg.contains("open /dev/tty: No such device or address"),
        "{msg}"
    );
}

#[test]
fn c2_none_spawn_task_finds_no_terminal() {
    let msg = c2_attack(&["--sandbox", "none", "--start-method", "spawn"], false);
    assert!(
        msg.contains("open /dev/tty: No such device or address"),
        "{msg}"
    );
}

#[test]
fn c2_none_fork_task_finds_no_terminal() {
    let msg = c2_attack(&["--sandbox", "none", "--start-method", "fork"], false);
    assert!(
        msg.contains("open /dev/tty: No such device or address"),
        "{msg}"
    );
}

#[test]
fn c2_standard_task_finds_no_terminal_even_in_dev() {
    let msg = c2_attack(&["--sandbox", "standard"], true);
    // Not in the private /dev at all, nor any pts, console or ptmx.
    assert!(msg.contains("open /dev/tty: No such file"), "{msg}");
    assert!(msg.contains("open /dev/ptmx: No such file"), "{msg}");
}

#[test]
fn c2_strict_as_nobody_task_finds_no_terminal() {
    let msg = c2_attack(&["--sandbox", "strict", "--user", "nobody"], true);
    assert!(msg.contains("open /dev/tty: No such file"), "{msg}");
}

#[test]
fn c2_strict_spawn_task_finds_no_terminal() {
    c2_attack(&["--sandbox", "strict", "--start-method", "spawn"], true);
}

/// Checks a zygote or worker from outside: fds 0-2 are /dev/null or
/// pipes, no fd is a terminal, it has no controlling terminal and is in
/// the zygote's session, not the test's.
fn no_terminal(pid: i32, zygote: i32, what: &str) {
    let (sid, tty) = session_and_tty(pid);
    assert_eq!(tty, 0, "{what} {pid} has a controlling terminal");
    assert_eq!(sid, zygote, "{what} {pid} is not in the zygote's session");
    let ours = nix::unistd::getsid(None).expect("getsid").as_raw();
    assert_ne!(sid, ours, "{what} {pid} is in the test's session");
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .flatten()
    {
        let n: i32 = e.file_name().to_string_lossy().parse().expect("fd number");
        let target = std::fs::read_link(e.path())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        assert!(
            !target.starts_with("/dev/pts") && !target.starts_with("/dev/tty"),
            "{what} {pid}: fd {n} is a terminal: {target}"
        );
        if n <= 2 {
            let ok = if n == 0 {
                target == "/dev/null"
            } else {
                target.starts_with("pipe:")
            };
            assert!(ok, "{what} {pid}: fd {n} is {target}");
        }
    }
}

fn c2_pool_from_outside(sandbox: Sandbox, method: StartMethod) {
    // A terminal this process holds without O_CLOEXEC: nothing it starts
    // may keep it.
    let (_master, slave) = raw_pty();
    let leaky = nix::unistd::dup(slave.as_raw_fd()).expect("dup");
    // SAFETY: dup returned a new fd nobody else owns.
    let leaky = unsafe { OwnedFd::from_raw_fd(leaky) };
    let (pool, pids) = pool_with(sandbox, 2, method);
    let zygote = common::proc_stat(pids[0]).expect("worker").1;
    no_terminal(zygote, zygote, "the zygote");
    for &w in &pids {
        no_terminal(w, zygote, "worker");
    }
    intact(&pool);
    drop(leaky);
}

#[test]
fn c2_none_zygote_and_workers_hold_no_terminal() {
    c2_pool_from_outside(Sandbox::none(), StartMethod::Forkserver);
}

#[test]
fn c2_none_spawned_workers_hold_no_terminal() {
    c2_pool_from_outside(Sandbox::none(), StartMethod::Spawn);
}

#[test]
fn c2_strict_zygote_and_workers_hold_no_terminal() {
    c2_pool_from_outside(Sandbox::strict(), StartMethod::Forkserver);
    c2_pool_from_outside(Sandbox::strict(), StartMethod::Spawn);
}

/// The terminal ioctls on fd 0 (/dev/null): EPERM (1) from the filter, or
/// ENOTTY (25) from the kernel when nothing filters them.
fn ioctl_errnos(pool: &Pool, junk_high: bool) -> Vec<(String, i32)> {
    let got: String = call(pool, "sb2_ioctls", (0, junk_high)).expect("ioctls");
    got.split(' ')
        .map(|p| {
            let (n, e) = p.split_once(':').expect("NAME:errno");
            (n.to_string(), e.parse().expect("errno"))
        })
        .collect()
}

#[test]
fn c2_strict_refuses_the_terminal_ioctls_with_eperm() {
    for sandbox in [Sandbox::strict(), Sandbox::standard()] {
        let p = pool(sandbox);
        for junk in [false, true] {
            let got = ioctl_errnos(&p, junk);
            assert_eq!(got.len(), 8, "{got:?}");
            for (name, errno) in got {
                assert_eq!(errno, libc::EPERM, "{name} (junk in the high bits: {junk})");
            }
        }
        intact(&p);
    }
}

#[test]
fn c2_none_leaves_the_ioctls_to_the_kernel() {
    let p = pool(Sandbox::none());
    for (name, errno) in ioctl_errnos(&p, false) {
        assert_eq!(errno, libc::ENOTTY, "{name}");
    }
}

// ----- C5: no new Unix socket under "no network" --------------------------

struct Listeners {
    _dir: std::path::PathBuf,
    stream_path: String,
    stream: std::os::unix::net::UnixListener,
    abstract_name: String,
    abstract_: std::os::unix::net::UnixListener,
    dgram_path: String,
    dgram: std::os::unix::net::UnixDatagram,
}

fn listeners(test: &str) -> Listeners {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};
    let dir = common::scratch(test);
    let stream_path = dir.join("l.sock").display().to_string();
    let stream = UnixListener::bind(&stream_path).expect("bind");
    let name = format!("billiard-{test}-{}", std::process::id());
    let abstract_ = UnixListener::bind_addr(
        &SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name"),
    )
    .expect("bind abstract");
    let dgram_path = dir.join("d.sock").display().to_string();
    let dgram = UnixDatagram::bind(&dgram_path).expect("bind dgram");
    for l in [&stream, &abstract_] {
        l.set_nonblocking(true).expect("nonblocking");
    }
    dgram.set_nonblocking(true).expect("nonblocking");
    Listeners {
        _dir: dir,
        stream_path,
        stream,
        abstract_name: format!("@{name}"),
        abstract_,
        dgram_path,
        dgram,
    }
}

impl Listeners {
    /// Nothing reached any of the listeners.
    fn untouched(&self) {
        for l in [&self.stream, &self.abstract_] {
            let e = l.accept().expect_err("a task connected");
            assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
        }
        let mut buf = [0u8; 64];
        let e = self
            .dgram
            .recv(&mut buf)
            .expect_err("a task sent a datagram");
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
    }
}

fn unix(pool: &Pool, path: &str, how: &str) -> Result<String, TaskError> {
    call(pool, "sb2_unix", (path, how, "SET pwned 1\r\n"))
}

fn c5_refused(sandbox: Sandbox, test: &str) {
    let l = listeners(test);
    let p = pool(sandbox);
    let eperm = "Operation not permitted";
    refused(unix(&p, &l.stream_path, "stream"), &["connect", eperm]);
    refused(unix(&p, &l.abstract_name, "stream"), &["connect", eperm]);
    refused(unix(&p, &l.dgram_path, "dgram"), &["socket(AF_UNIX", eperm]);
    refused(
        unix(&p, &l.dgram_path, "pair_dgram"),
        &["socketpair(AF_UNIX, SOCK_DGRAM)", eperm],
    );
    refused(unix(&p, &l.abstract_name, "pair_dgram"), &[eperm]);
    // A connected stream pair reaches nobody: it stays.
    unix(&p, "", "pair_stream").expect("a stream socketpair");
    l.untouched();
    intact(&p);
}

#[test]
fn c5_strict_refuses_unix_path_and_abstract_sockets() {
    c5_refused(Sandbox::strict(), "c5_strict");
}

#[test]
fn c5_no_network_alone_refuses_them_too() {
    c5_refused(Sandbox::standard().no_network(), "c5_no_network");
}

#[test]
fn c5_the_no_network_switch_without_a_profile_refuses_them_too() {
    // `--no-network` on its own (no seccomp profile otherwise): the
    // zygote installs the network filter for itself and every worker.
    c5_refused(Sandbox::none().no_network(), "c5_switch_alone");
    let p = pool(Sandbox::none().no_network());
    for (family, ty, name) in UNCONFINED {
        let msg = refused(
            call(&p, "sb2_socket", (family, ty)),
            &[&format!("socket({family}, {ty})")],
        );
        assert!(msg.contains("Operation not permitted"), "{name}: {msg}");
    }
}

#[test]
fn c5_none_reaches_the_same_sockets() {
    let l = listeners("c5_none");
    let p = pool(Sandbox::none());
    unix(&p, &l.stream_path, "stream").expect("path socket");
    unix(&p, &l.abstract_name, "stream").expect("abstract socket");
    unix(&p, &l.dgram_path, "dgram").expect("datagram");
    unix(&p, &l.dgram_path, "pair_dgram").expect("datagram from a pair");
    let (mut conn, _) = l.stream.accept().expect("the task's connection");
    conn.set_nonblocking(false).expect("blocking");
    let mut got = String::new();
    conn.read_to_string(&mut got).expect("payload");
    assert_eq!(got, "SET pwned 1\r\n");
    l.abstract_.accept().expect("the abstract connection");
    let mut buf = [0u8; 64];
    assert_eq!(l.dgram.recv(&mut buf).expect("a datagram"), 13);
    assert_eq!(l.dgram.recv(&mut buf).expect("a second datagram"), 13);
}

#[test]
fn c5_standard_keeps_unix_sockets() {
    // `standard` promises no network rule: its tasks still reach a path
    // socket (docs/security.md says so).
    let l = listeners("c5_standard");
    let p = pool(Sandbox::standard());
    unix(&p, &l.stream_path, "stream").expect("path socket under standard");
}

/// (family, type, name) of sockets a network namespace does not confine:
/// a Unix socket, a vsock to the hypervisor's host (this CI machine is a
/// VM), a kernel crypto socket.
const UNCONFINED: [(i32, i32, &str); 3] = [
    (libc::AF_UNIX, libc::SOCK_STREAM, "AF_UNIX"),
    (libc::AF_VSOCK, libc::SOCK_STREAM, "AF_VSOCK"),
    (libc::AF_ALG, libc::SOCK_SEQPACKET, "AF_ALG"),
];

#[test]
fn c5_strict_refuses_every_family_the_namespace_does_not_confine() {
    let p = pool(Sandbox::strict());
    for (family, ty, name) in UNCONFINED {
        let msg = refused(
            call(&p, "sb2_socket", (family, ty)),
            &[&format!("socket({family}, {ty})")],
        );
        assert!(msg.contains("Operation not permitted"), "{name}: {msg}");
    }
    // The namespace confines these: they stay (and reach only its loopback).
    for (family, ty) in [
        (libc::AF_INET, libc::SOCK_STREAM),
        (libc::AF_INET6, libc::SOCK_DGRAM),
        (libc::AF_NETLINK, libc::SOCK_RAW),
    ] {
        call::<String>(&p, "sb2_socket", (family, ty)).expect("a confined family");
    }
    intact(&p);
}

#[test]
fn c5_none_makes_the_same_sockets() {
    let p = pool(Sandbox::none());
    for (family, ty, name) in UNCONFINED {
        match call::<String>(&p, "sb2_socket", (family, ty)) {
            Ok(_) => {}
            // A kernel without that family says so; not the sandbox.
            Err(e) => assert!(
                e.message.contains("Address family not supported"),
                "{name}: {e:?}"
            ),
        }
    }
    call::<String>(&p, "sb2_socket", (libc::AF_UNIX, libc::SOCK_STREAM)).expect("AF_UNIX");
}

// ----- C6: an IPC namespace of its own --------------------------------------

struct HostSegment(i32);

impl HostSegment {
    fn new() -> HostSegment {
        // SAFETY: shmget with plain arguments.
        let id = unsafe { libc::shmget(libc::IPC_PRIVATE, 4096, libc::IPC_CREAT | 0o600) };
        assert!(id >= 0, "shmget: {}", std::io::Error::last_os_error());
        HostSegment(id)
    }
    fn read(&self) -> Vec<u8> {
        // SAFETY: attach read-only, copy 64 bytes of the 4 KiB, detach.
        unsafe {
            let p = libc::shmat(self.0, std::ptr::null(), libc::SHM_RDONLY);
            assert!(p as isize != -1, "shmat");
            let v = std::slice::from_raw_parts(p.cast::<u8>(), 64).to_vec();
            libc::shmdt(p);
            v
        }
    }
}

impl Drop for HostSegment {
    fn drop(&mut self) {
        // SAFETY: removes our own segment.
        unsafe { libc::shmctl(self.0, libc::IPC_RMID, std::ptr::null_mut()) };
    }
}

#[test]
fn c6_strict_cannot_see_or_attach_the_hosts_segment() {
    let seg = HostSegment::new();
    for sandbox in [Sandbox::strict(), Sandbox::standard()] {
        let p = pool(sandbox);
        let listed: String = call(&p, "sb2_shm_list", ()).expect("list");
        assert!(
            !listed
                .lines()
                .any(|l| l.split(' ').nth(1) == Some(&seg.0.to_string())),
            "the host's segment {} is visible: {listed}",
            seg.0
        );
        refused(
            call(&p, "sb2_shm_write", (seg.0, "written by a task")),
            &[&format!("shmat({})", seg.0), "Invalid argument"],
        );
        intact(&p);
    }
    assert!(
        seg.read().iter().all(|&b| b == 0),
        "the segment was written"
    );
}

#[test]
fn c6_none_sees_and_writes_it() {
    let seg = HostSegment::new();
    let p = pool(Sandbox::none());
    let listed: String = call(&p, "sb2_shm_list", ()).expect("list");
    assert!(
        listed
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(&seg.0.to_string())),
        "{listed}"
    );
    call::<String>(&p, "sb2_shm_write", (seg.0, "written by a task")).expect("attached");
    assert!(seg.read().starts_with(b"written by a task"));
}

fn ipc_key(salt: i32) -> i32 {
    0x0b11_0000 | ((std::process::id() as i32 & 0xfff) << 4) | salt
}

/// Whether the host (this process's IPC namespace) has a SysV segment or
/// queue under `key`, and the POSIX queue `mq`.
fn host_has(key: i32, mq: &str) -> (bool, bool, bool) {
    let name = std::ffi::CString::new(mq).expect("name");
    // SAFETY: lookups with plain arguments; the mq descriptor is closed.
    unsafe {
        let shm = libc::shmget(key, 0, 0) >= 0;
        let msg = libc::msgget(key, 0) >= 0;
        let q = libc::mq_open(name.as_ptr(), libc::O_RDONLY);
        if q >= 0 {
            libc::mq_close(q);
        }
        (shm, msg, q >= 0)
    }
}

fn remove_host_ipc(key: i32, mq: &str) {
    let name = std::ffi::CString::new(mq).expect("name");
    // SAFETY: removals by key/name; failures (nothing there) are fine.
    unsafe {
        let shm = libc::shmget(key, 0, 0);
        if shm >= 0 {
            libc::shmctl(shm, libc::IPC_RMID, std::ptr::null_mut());
        }
        let msg = libc::msgget(key, 0);
        if msg >= 0 {
            libc::msgctl(msg, libc::IPC_RMID, std::ptr::null_mut());
        }
        libc::mq_unlink(name.as_ptr());
    }
}

fn ipc_ns(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/ipc"))
        .map(|p| p.display().to_string())
        .expect("ns link")
}

fn ns_in_use(ns: &str) -> bool {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten().any(|e| {
                std::fs::read_link(e.path().join("ns/ipc"))
                    .is_ok_and(|p| p.display().to_string() == ns)
            })
        })
        .unwrap_or(false)
}

#[test]
fn c6_a_strict_tasks_ipc_objects_die_with_its_worker() {
    let key = ipc_key(1);
    let mq = format!("/billiard-c6-{}", std::process::id());
    remove_host_ipc(key, &mq);
    let (p, pids) = pool_with(Sandbox::strict(), 2, StartMethod::Forkserver);
    let zygote = common::proc_stat(pids[0]).expect("worker").1;
    let ours = ipc_ns(std::process::id() as i32);
    let mut spaces = vec![ipc_ns(zygote)];
    spaces.extend(pids.iter().map(|&w| ipc_ns(w)));
    let mut distinct = spaces.clone();
    distinct.push(ours.clone());
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        4,
        "not one namespace each: {spaces:?} (ours {ours})"
    );
    // 64 MiB, touched, a message, a POSIX queue: made in the worker's own
    // namespace, invisible here.
    for _ in 0..2 {
        call::<String>(&p, "sb2_ipc_leave", (key, 64u64, &mq)).expect("made in its namespace");
    }
    assert_eq!(host_has(key, &mq), (false, false, false));
    intact(&p);
    drop(p);
    // With the pool, every namespace it made is gone, and with them the
    // segments and queues (nobody holds them: no process, no mount, no fd).
    for ns in &spaces {
        assert!(
            common::eventually(LONG, || !ns_in_use(ns)),
            "{ns} outlived the pool"
        );
    }
    assert_eq!(host_has(key, &mq), (false, false, false));
}

#[test]
fn c6_none_leaves_them_behind() {
    let key = ipc_key(2);
    let mq = format!("/billiard-c6-none-{}", std::process::id());
    remove_host_ipc(key, &mq);
    let p = pool(Sandbox::none());
    call::<String>(&p, "sb2_ipc_leave", (key, 1u64, &mq)).expect("made");
    drop(p);
    let left = host_has(key, &mq);
    remove_host_ipc(key, &mq);
    assert_eq!(
        left,
        (true, true, true),
        "without a namespace they outlive the pool"
    );
}

// ----- C16: a foreign ABI gets EPERM, not SIGSYS -----------------------------

#[test]
fn c16_strict_int80_and_x32_get_eperm_not_sigsys() {
    for sandbox in [Sandbox::strict(), Sandbox::standard()] {
        let p = pool(sandbox);
        // i386 getpid (20) through int 0x80, then twice more on the same
        // worker: a refused call, never a dead worker.
        for _ in 0..3 {
            assert_eq!(
                call::<i64>(&p, "sb2_int80", (20u32,)).expect("answered"),
                -1
            );
        }
        // x32 getpid (39 | 0x40000000), which no rule of the filter names.
        assert_eq!(call::<i64>(&p, "sb2_x32", (39i64,)).expect("answered"), -1);
        // x32 unshare (272): EPERM whether or not the kernel has x32.
        assert_eq!(call::<i64>(&p, "sb2_x32", (272i64,)).expect("answered"), -1);
        intact(&p);
    }
}

#[test]
fn c16_none_int80_reaches_the_kernel() {
    // Without a filter the i386 getpid answers (this machine has the i386
    // ABI): so the -1 above is the filter's.
    let (p, pids) = pool_with(Sandbox::none(), 1, StartMethod::Forkserver);
    assert_eq!(
        call::<i64>(&p, "sb2_int80", (20u32,)).expect("answered"),
        pids[0] as i64
    );
    let x32 = call::<i64>(&p, "sb2_x32", (39i64,)).expect("answered");
    assert!(
        x32 == -(libc::ENOSYS as i64) || x32 == pids[0] as i64,
        "{x32}"
    );
}

// ----- the report ------------------------------------------------------------

#[test]
fn c2_c5_c6_c16_the_sandbox_report_names_what_is_enforced() {
    let out = common::host(["inspect", "--sandbox-report", "--json"]);
    assert_eq!(common::exit_code(&out), 0, "{}", common::stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&common::stdout(&out)).expect("json");
    assert_eq!(v["ipc_namespace"]["Ok"], serde_json::Value::Null, "{v}");
    let layer = |profile: &str, name: &str| -> String {
        v["profiles"][profile]["Ok"]["layers"]
            .as_array()
            .unwrap_or_else(|| panic!("{profile} is not enforceable here: {v}"))
            .iter()
            .find(|l| l["name"] == name)
            .and_then(|l| l["mechanism"].as_str())
            .unwrap_or_else(|| panic!("{profile} has no {name} layer"))
            .to_string()
    };
    // No terminal in every profile, `none` included.
    for p in ["none", "standard", "strict"] {
        assert!(layer(p, "terminal").contains("no controlling terminal"));
    }
    assert!(layer("strict", "ipc").contains("IPC namespace per worker"));
    assert!(layer("strict", "network").contains("(AF_UNIX, AF_VSOCK, ...)"));
    let seccomp = layer("strict", "seccomp");
    for want in ["TIOCSTI", "TIOCLINUX", "int 0x80", "x32"] {
        assert!(seccomp.contains(want), "{want}: {seccomp}");
    }
    assert!(!layer("strict", "devices").contains("urandom, tty"));
    let text = common::stdout(&common::host(["inspect", "--sandbox-report"]));
    assert!(text.contains("ipc namespace:      yes"), "{text}");
    assert!(text.contains("--sandbox none: enforces"), "{text}");
}
