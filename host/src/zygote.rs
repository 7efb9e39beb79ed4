//! The zygote: a single-threaded process that loads the plugins once and
//! forks workers on request, so each worker starts copy-on-write with the
//! plugins already mapped. It reaps its workers and reports how they ended
//! (exit status and rusage), since only a parent can.
//!
//! It talks to the supervisor over a SOCK_SEQPACKET control socket (see
//! `ipc`). When that socket closes — the pool or the whole host went away —
//! or its parent-death signal (a real-time signal, never SIGTERM) arrives,
//! it kills every worker and exits. It ignores the signals an operator
//! sends to the whole service (SIGTERM, SIGHUP, SIGINT, SIGQUIT, SIGUSR1):
//! the host decides what they mean.
//!
//! It is a child subreaper: whatever a dead worker's task left behind, in
//! any process group or session, is reparented to it, and it kills those
//! processes when it reaps the worker (workers are subreapers of their own
//! tasks' descendants while they live, so everything the zygote inherits
//! belongs to a worker that has ended).

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::ipc::{self, WorkerParams, ZygoteCmd, ZygoteMsg};
use crate::plugin::{Plugin, PluginLoadError};
use crate::sandbox::{self, Sandbox};
use crate::sys::{self, BoardPage};
use crate::worker;

/// How the zygote makes a worker.
#[derive(Debug, Clone)]
pub enum Birth {
    /// Fork: the worker runs with the zygote's preloaded plugins.
    Fork,
    /// Fork + exec of this program in worker mode (the `spawn` start method).
    Exec { exe: PathBuf },
}

/// Loads every plugin, or says which one failed.
pub fn load_all(paths: &[PathBuf]) -> Result<Vec<Plugin>, PluginLoadError> {
    paths.iter().map(Plugin::load).collect()
}

/// Runs the zygote loop; never returns.
pub fn run(ctl: OwnedFd, paths: Vec<PathBuf>, birth: Birth, sandbox: Sandbox) -> ! {
    // Before the plugins' constructors run: a SIGTERM or SIGHUP meant for
    // the host must not end the zygote, not even while it loads.
    if let Err(e) = sys::zygote_signal_dispositions() {
        eprintln!("billiard zygote: cannot set up its signals: {e}");
        sys::exit_now(1);
    }
    let signals = match sys::zygote_signal_fd() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("billiard zygote: cannot watch for dead workers: {e}");
            sys::exit_now(1);
        }
    };
    // The sandbox's process-wide layers, before any plugin code runs.
    if let Err(e) = sandbox::enter_process_wide(&sandbox) {
        eprintln!("billiard zygote: {e}");
        sys::exit_now(1);
    }
    let loaded = load_all(&paths);
    let hello = ZygoteMsg::Hello {
        pid: sys::getpid(),
        plugins: loaded
            .as_ref()
            .map(|ps| ps.iter().map(|p| p.info().clone()).collect())
            .map_err(Clone::clone),
    };
    if sys::send_with_fds(&ctl, &ipc::encode_ctl(&hello), &[]).is_err() {
        sys::exit_now(0);
    }
    let Ok(plugins) = loaded else {
        // The supervisor reports the load error; nothing more to do.
        sys::exit_now(0);
    };
    let mut z = Zygote {
        ctl,
        plugins,
        paths,
        birth,
        sandbox,
        workers: HashMap::new(),
    };
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let (ctl_ready, chld_ready) = {
            let mut fds = [
                PollFd::new(z.ctl.as_fd(), PollFlags::POLLIN),
                PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => z.shutdown(),
            }
            (fds[0].any().unwrap_or(false), fds[1].any().unwrap_or(false))
        };
        if chld_ready {
            let mut orphaned = false;
            while let Ok(Some(info)) = signals.read_signal() {
                orphaned |= info.ssi_signo as i32 == sys::ZYGOTE_DEATH_SIGNAL;
            }
            z.reap();
            if orphaned {
                // The host died without a word (SIGKILL, a crash): end the
                // workers' process groups, their tasks' children included.
                z.shutdown();
            }
        }
        if ctl_ready {
            match sys::recv_with_fds(&z.ctl, &mut buf) {
                Ok(Some((n, fds))) => match ipc::decode_ctl::<ZygoteCmd>(&buf[..n]) {
                    Ok(ZygoteCmd::Spawn(params)) => z.spawn(params, fds),
                    Ok(ZygoteCmd::Shutdown) | Err(_) => z.shutdown(),
                },
                Ok(None) => z.shutdown(),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => z.shutdown(),
            }
        }
    }
}

struct Zygote {
    ctl: OwnedFd,
    plugins: Vec<Plugin>,
    paths: Vec<PathBuf>,
    birth: Birth,
    sandbox: Sandbox,
    /// pid → worker id
    workers: HashMap<i32, u64>,
}

impl Zygote {
    fn send(&self, msg: &ZygoteMsg, fds: &[i32]) {
        if sys::send_with_fds(&self.ctl, &ipc::encode_ctl(msg), fds).is_err() {
            self.shutdown();
        }
    }

    /// Forks worker `params.worker`; `fds` came with the request: the
    /// worker's own scoreboard page (a memfd the supervisor made for it).
    /// The zygote never maps a page; it closes its copy of the fd once the
    /// worker is forked, so no other worker can inherit it (C3).
    fn spawn(&mut self, params: WorkerParams, fds: Vec<OwnedFd>) {
        let worker = params.worker;
        let fail = |z: &Zygote, e: std::io::Error| {
            z.send(
                &ZygoteMsg::SpawnFailed {
                    worker,
                    error: e.to_string(),
                },
                &[],
            )
        };
        let Some(page_fd) = fds.into_iter().next() else {
            return fail(
                self,
                std::io::Error::other("the request came without its scoreboard page"),
            );
        };
        let (ours, theirs) = match sys::stream_pair() {
            Ok(p) => p,
            Err(e) => return fail(self, sys::explain_fd_error(e)),
        };
        let (out_r, out_w) = match sys::pipe() {
            Ok(p) => p,
            Err(e) => return fail(self, sys::explain_fd_error(e)),
        };
        let zygote = sys::getpid();
        match sandbox::fork_worker(&self.sandbox) {
            Err(e) => fail(self, e),
            Ok(sys::Forked::Child) => {
                // A forked worker maps its own scoreboard page now and
                // keeps no fd to it (a task writing to a stray fd number must
                // not reach it). An exec'd worker maps it from fd 4 (and
                // blinds that fd).
                let page: Option<&'static BoardPage> = match &self.birth {
                    Birth::Fork => match BoardPage::map(&page_fd) {
                        Ok(p) => Some(Box::leak(Box::new(p))),
                        Err(e) => {
                            eprintln!("billiard worker: cannot map its scoreboard page: {e}");
                            sys::exit_now(worker::exit_code::SETUP);
                        }
                    },
                    Birth::Exec { .. } => None,
                };
                let keep: &[i32] = match &self.birth {
                    Birth::Fork => &[theirs.as_raw_fd()],
                    Birth::Exec { .. } => &[theirs.as_raw_fd(), page_fd.as_raw_fd()],
                };
                // In the zygote's session (no controlling terminal, C2).
                if let Err(e) = sys::setup_worker_process(keep, out_w.as_raw_fd(), sys::Lead::Group)
                {
                    eprintln!("billiard worker: setup failed: {e}");
                    sys::exit_now(worker::exit_code::SETUP);
                }
                // fd 3 is the socket now (and 4 the scoreboard page, for exec);
                // the rest are closed.
                let sock = match sys::inherited_fd(3) {
                    Ok(fd) => fd,
                    Err(_) => sys::exit_now(worker::exit_code::SETUP),
                };
                // The originals were closed by setup; forget the handles.
                std::mem::forget((ours, theirs, out_r, out_w, page_fd));
                // The sandbox's per-worker layers, before any plugin code
                // runs here (or, for exec, in the program it becomes).
                if let Err(e) = sandbox::enter_worker(&self.sandbox) {
                    eprintln!("billiard worker: {e}");
                    sys::exit_now(worker::exit_code::SETUP);
                }
                // In its own PID namespace a worker cannot see its parent
                // (getppid() is 0): that is what it watches.
                let zygote = if self.sandbox.isolates_pids() {
                    0
                } else {
                    zygote
                };
                match (&self.birth, page) {
                    (Birth::Fork, Some(page)) => {
                        let plugins = std::mem::take(&mut self.plugins);
                        worker::run(plugins, params, sock, page, zygote)
                    }
                    (Birth::Fork, None) => sys::exit_now(worker::exit_code::SETUP),
                    (Birth::Exec { exe }, _) => {
                        exec_worker(exe, &params, &self.paths, self.sandbox.isolate)
                    }
                }
            }
            Ok(sys::Forked::Parent { child }) => {
                drop(theirs);
                drop(out_w);
                // Only that worker has its page (C3).
                drop(page_fd);
                let pidfd = match sys::pidfd_open(child) {
                    Ok(fd) => fd,
                    Err(e) => {
                        let _ = sys::kill_pid(child, sys::SIGKILL);
                        return fail(self, sys::explain_fd_error(e));
                    }
                };
                self.workers.insert(child, worker);
                self.send(
                    &ZygoteMsg::Spawned { worker, pid: child },
                    &[ours.as_raw_fd(), out_r.as_raw_fd(), pidfd.as_raw_fd()],
                );
            }
        }
    }

    fn reap(&mut self) {
        let mut ended = false;
        while let Ok(Some((pid, info))) = sys::reap_any() {
            if self.workers.remove(&pid).is_some() {
                // Whoever ended the worker, what its task started in its
                // group ends with it (its pgid stays reserved while the
                // group has members, so this cannot hit a recycled pid).
                let _ = sys::kill_group(pid, sys::SIGKILL);
                ended = true;
                self.send(&ZygoteMsg::Exited { pid, info }, &[]);
            }
            // Anything else is a process a dead worker's task left behind
            // (reparented to us, the subreaper) that has ended too.
        }
        if ended {
            self.kill_strays();
        }
    }

    /// Kills every child of the zygote that is not a worker, with its
    /// descendants: processes a dead worker's task left behind (a forked
    /// child, one that called setsid or setpgid to leave the worker's
    /// group), reparented to the zygote because it is their subreaper.
    fn kill_strays(&self) {
        let strays: Vec<i32> = sys::children_of(sys::getpid())
            .into_iter()
            .filter(|p| !self.workers.contains_key(p))
            .collect();
        if !strays.is_empty() {
            sys::kill_trees(&strays);
        }
    }

    fn shutdown(&self) -> ! {
        for &pid in self.workers.keys() {
            let _ = sys::kill_group(pid, sys::SIGKILL);
            let _ = sys::kill_pid(pid, sys::SIGKILL);
        }
        for &pid in self.workers.keys() {
            sys::wait_child(pid);
        }
        // The workers' leftovers are our children now: kill and reap them
        // (bounded: a process stuck in the kernel is left to init).
        let deadline = crate::bounds::saturating_deadline(
            std::time::Instant::now(),
            std::time::Duration::from_secs(2),
        );
        loop {
            while let Ok(Some(_)) = sys::reap_any() {}
            let left = sys::children_of(sys::getpid());
            if left.is_empty() || std::time::Instant::now() >= deadline {
                break;
            }
            sys::kill_trees(&left);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        sys::exit_now(0);
    }
}

/// In a freshly forked worker: exec this program in worker mode.
fn exec_worker(
    exe: &std::path::Path,
    params: &WorkerParams,
    paths: &[PathBuf],
    sandboxed: bool,
) -> ! {
    use std::os::unix::process::CommandExt;
    let params_json = serde_json::to_string(params).unwrap_or_default();
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(WORKER_ARG).arg(params_json);
    if sandboxed {
        // exec makes a process dumpable again: the worker undoes that.
        cmd.arg(NOT_DUMPABLE_ARG);
    }
    cmd.args(paths.iter().map(OsString::from));
    let err = cmd.exec();
    eprintln!("billiard worker: cannot exec {}: {err}", exe.display());
    sys::exit_now(worker::exit_code::SETUP);
}

/// The hidden first argument that starts this program as a zygote.
pub const ZYGOTE_ARG: &str = "__billiard_zygote";
/// The hidden first argument that starts this program as a worker.
pub const WORKER_ARG: &str = "__billiard_worker";
/// After the params of a sandboxed spawned worker: make itself not
/// dumpable again (exec reset it) before it loads the plugins.
const NOT_DUMPABLE_ARG: &str = "--not-dumpable";
/// The zygote's argument (after MODE) that carries its sandbox, as JSON.
const SANDBOX_ARG_PREFIX: &str = "--sandbox=";

/// The zygote argument that hands it `s` (`None` for no sandbox).
pub fn sandbox_arg(s: &Sandbox) -> Option<String> {
    if s.is_none() {
        return None;
    }
    serde_json::to_string(s)
        .ok()
        .map(|j| format!("{SANDBOX_ARG_PREFIX}{j}"))
}

/// Entry point for a program started by the pool as a helper process (the
/// zygote, or a spawned worker). Call it first thing in `main`; it returns
/// only when this process is not such a helper. `billiard-host` calls it;
/// a program that embeds `Pool` and wants to be its own worker executable
/// calls it too.
///
/// Calling it also makes this program the pool's default zygote executable
/// (no `BILLIARD_HOST_EXE`, no `billiard-host` needed): the pool sees that
/// the hook ran and execs this program, which answers with a handshake.
/// It must run before any thread starts (with `#[tokio::main]`, call it in
/// a plain `main` that then builds the runtime).
pub fn run_if_helper() {
    crate::pool::worker_exe::note_hook();
    let mut args = std::env::args_os().skip(1);
    let Some(first) = args.next() else { return };
    if first == ZYGOTE_ARG {
        let rest: Vec<OsString> = args.collect();
        helper_zygote(rest);
    } else if first == WORKER_ARG {
        let rest: Vec<OsString> = args.collect();
        helper_worker(rest);
    }
}

/// `__billiard_zygote MODE [EXE] PLUGIN...` with fd 3 = control socket.
/// MODE is `fork` or `exec`.
fn helper_zygote(args: Vec<OsString>) -> ! {
    let ctl = match sys::inherited_fd(3) {
        Ok(c) => c,
        _ => {
            eprintln!("billiard: {ZYGOTE_ARG} is internal; it is started by the pool");
            sys::exit_now(2);
        }
    };
    // The handshake first, before anything can fail or block: it tells the
    // pool this executable is a zygote of its version (`pool::worker_exe`).
    let threads = sys::thread_count().unwrap_or(0);
    let handshake = crate::pool::worker_exe::encode_handshake(threads);
    if sys::send_with_fds(&ctl, &handshake, &[]).is_err() || threads > 1 {
        // More than one thread: the pool refuses the handshake and says why.
        sys::exit_now(2);
    }
    let mut it = args.into_iter();
    let birth = match it.next().as_deref().and_then(|m| m.to_str()) {
        Some("exec") => match std::env::current_exe() {
            Ok(exe) => Birth::Exec { exe },
            Err(e) => {
                eprintln!("billiard zygote: cannot find its own executable: {e}");
                sys::exit_now(1);
            }
        },
        _ => Birth::Fork,
    };
    let mut it = it.peekable();
    let mut sandbox = Sandbox::default();
    if let Some(json) = it
        .peek()
        .and_then(|a| a.to_str())
        .and_then(|a| a.strip_prefix(SANDBOX_ARG_PREFIX))
    {
        sandbox = match serde_json::from_str(json) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("billiard zygote: bad sandbox argument: {e}");
                sys::exit_now(1);
            }
        };
        it.next();
    }
    let paths = it.map(PathBuf::from).collect();
    run(ctl, paths, birth, sandbox)
}

/// `__billiard_worker PARAMS_JSON PLUGIN...` with fd 3 = socket, fd 4 =
/// the worker's scoreboard page (the spawn start method).
fn helper_worker(args: Vec<OsString>) -> ! {
    let mut it = args.into_iter();
    let params: Option<WorkerParams> = it
        .next()
        .and_then(|p| serde_json::from_str(p.to_str()?).ok());
    let (Some(params), Ok(sock), Ok(board)) = (params, sys::inherited_fd(3), sys::inherited_fd(4))
    else {
        eprintln!("billiard: {WORKER_ARG} is internal; it is started by the pool");
        sys::exit_now(2);
    };
    let page: &'static BoardPage = match BoardPage::map(&board) {
        Ok(b) => Box::leak(Box::new(b)),
        Err(e) => {
            eprintln!("billiard worker: cannot map its scoreboard page: {e}");
            sys::exit_now(worker::exit_code::SETUP);
        }
    };
    // Mapped: the fd is not needed any more, and a task must not be able to
    // reach the page through it (see `Zygote::spawn`).
    if let Err(e) = sys::blind_fd(board.as_raw_fd()) {
        eprintln!("billiard worker: cannot close the scoreboard's fd: {e}");
        sys::exit_now(worker::exit_code::SETUP);
    }
    let mut it = it.peekable();
    if it.peek().is_some_and(|a| a == NOT_DUMPABLE_ARG) {
        it.next();
        if let Err(e) = sys::sandbox::set_not_dumpable() {
            eprintln!("billiard worker: sandbox: PR_SET_DUMPABLE: {e}");
            sys::exit_now(worker::exit_code::SETUP);
        }
    }
    let paths: Vec<PathBuf> = it.map(PathBuf::from).collect();
    let zygote = std::os::unix::process::parent_id() as i32;
    match load_all(&paths) {
        Ok(plugins) => worker::run(plugins, params, sock, page, zygote),
        Err(e) => {
            eprintln!("billiard worker: {e}");
            sys::exit_now(worker::exit_code::PLUGIN_LOAD);
        }
    }
}
