//! The zygote: a single-threaded process that loads the plugins once and
//! forks workers on request, so each worker starts copy-on-write with the
//! plugins already mapped. It reaps its workers and reports how they ended
//! (exit status and rusage), since only a parent can.
//!
//! It stays single-threaded: a plugin that leaves threads running after
//! it loads (a Go `c-shared` library) makes an exec'd zygote re-execute
//! itself ([`reexec`]: exec ends the threads) and leave that plugin to each
//! worker, which loads it after its fork ([`PerWorker`]); a zygote forked
//! from the host (the `fork` start method) refuses it.
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
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::ipc::{self, WorkerParams, ZygoteCmd, ZygoteMsg};
use crate::plugin::{Plugin, PluginInfo, PluginLoadError};
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

/// A plugin each worker loads itself, right after its fork (or exec) and
/// its signal setup, before READY: one whose loading starts threads (a Go
/// `c-shared` library starts the Go runtime's), which the zygote must not
/// hold, since it forks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PerWorker {
    /// Its place in the pool's plugin list.
    pub index: usize,
    /// What the zygote's own load of it found: each worker's load must
    /// find the same (a file replaced since would give the pool's
    /// jobs another plugin than the one their names were resolved in).
    /// `None` in a spawned worker (it has no copy; it loads every file
    /// afresh, as for every plugin).
    pub expect: Option<PluginInfo>,
}

/// What the zygote's loading of the plugins came to.
enum Loaded {
    /// Every plugin: those it holds, in order, and those each worker loads.
    All(Vec<Plugin>, Vec<PerWorker>),
    /// Plugin `index` left threads running after it loaded (`info` is what
    /// it is): the zygote cannot fork any more.
    StartedThreads {
        index: usize,
        info: Box<PluginInfo>,
        threads: usize,
    },
}

/// Loads the plugins the zygote holds, in order, skipping those of
/// `per_worker` (loaded by each worker); stops at the first that leaves
/// threads running after it loaded.
fn load_in_zygote(
    paths: &[PathBuf],
    per_worker: Vec<PerWorker>,
) -> Result<Loaded, PluginLoadError> {
    let mut held = Vec::with_capacity(paths.len());
    for (index, path) in paths.iter().enumerate() {
        if per_worker.iter().any(|p| p.index == index) {
            continue;
        }
        let before = sys::thread_count().ok();
        let plugin = Plugin::load(path)?;
        let after = sys::thread_count().ok();
        if let (Some(before), Some(after)) = (before, after) {
            if after > before {
                return Ok(Loaded::StartedThreads {
                    index,
                    info: Box::new(plugin.info().clone()),
                    threads: after.saturating_sub(before),
                });
            }
        }
        held.push(plugin);
    }
    Ok(Loaded::All(held, per_worker))
}

/// The refusal of a plugin that starts threads by a zygote that cannot
/// re-execute itself: a `fork` start method's, a copy of the host.
fn threads_refusal(path: &Path, threads: usize) -> PluginLoadError {
    PluginLoadError {
        path: path.to_path_buf(),
        reason: format!(
            "it started {threads} thread(s) while loading (a Go c-shared library starts the Go runtime's); \
             the `fork` start method makes the workers from a copy of this program that loads the plugins, \
             and a multithreaded process cannot fork safely: use the forkserver (default) or spawn start \
             method, which load such a plugin in each worker"
        ),
    }
}

/// Loads every plugin in this process, in order (a spawned worker: it
/// never forks), except those of `late`; says which one failed.
fn load_but(paths: &[PathBuf], late: &[PerWorker]) -> Result<Vec<Plugin>, PluginLoadError> {
    paths
        .iter()
        .enumerate()
        .filter(|(i, _)| !late.iter().any(|p| p.index == *i))
        .map(|(_, p)| Plugin::load(p))
        .collect()
}

/// In a worker, after its signal setup and before READY: loads the
/// plugins of `late` and puts each at its place among `plugins` (the ones
/// it was forked or exec'd with). A plugin that is not what the zygote
/// found (its file was replaced since) is refused, naming both.
pub(crate) fn load_per_worker(
    plugins: &mut Vec<Plugin>,
    paths: &[PathBuf],
    late: &[PerWorker],
) -> Result<(), String> {
    let mut late: Vec<&PerWorker> = late.iter().collect();
    late.sort_by_key(|p| p.index);
    for p in late {
        let path = paths
            .get(p.index)
            .ok_or_else(|| format!("no plugin #{} to load", p.index))?;
        let plugin = Plugin::load(path).map_err(|e| e.to_string())?;
        if let Some(want) = &p.expect {
            if plugin.info() != want {
                return Err(format!(
                    "cannot load plugin {}: it is not the plugin the pool loaded at start \
                     ({} {} with {} task(s)) but {} {} with {} task(s): was the file replaced? \
                     Reload the pool (SIGHUP) to load the new one",
                    path.display(),
                    want.name,
                    want.version,
                    want.tasks.len(),
                    plugin.info().name,
                    plugin.info().version,
                    plugin.info().tasks.len()
                ));
            }
        }
        if p.index > plugins.len() {
            return Err(format!("plugin #{} is out of order", p.index));
        }
        plugins.insert(p.index, plugin);
    }
    Ok(())
}

/// The largest piece of the hello sent as one datagram: far below the
/// socket's send buffer (`net.core.wmem_default`, 208 KiB) and the
/// supervisor's receive buffers (64 KiB). Small enough that an ordinary
/// list already comes in pieces (the hostile test plugin's, 10 KB), so the
/// suite exercises putting them together at every start and reload; a few
/// more datagrams cost nothing measurable.
const HELLO_PIECE: usize = 8 * 1024;

/// The largest plugin list the supervisor puts together from pieces.
const MAX_HELLO: usize = 256 << 20;

/// Sends the hello (the plugin list, whose size grows with the plugins'
/// tasks and docs): as one datagram when it fits in [`HELLO_PIECE`], else
/// as `HelloPart`s that [`HelloParts`] puts back together, so no number of
/// plugins or tasks outgrows the socket.
fn send_hello(ctl: &OwnedFd, hello: &ZygoteMsg) -> std::io::Result<()> {
    let bytes = ipc::encode_ctl(hello);
    if bytes.len() <= HELLO_PIECE {
        return sys::send_with_fds(ctl, &bytes, &[]);
    }
    let mut pieces = bytes.chunks(HELLO_PIECE).peekable();
    while let Some(piece) = pieces.next() {
        let part = ZygoteMsg::HelloPart {
            bytes: piece.to_vec(),
            last: pieces.peek().is_none(),
        };
        sys::send_with_fds(ctl, &ipc::encode_ctl(&part), &[])?;
    }
    Ok(())
}

/// The supervisor's side of [`send_hello`]: the pieces of a zygote's hello
/// received so far.
#[derive(Debug, Default)]
pub(crate) struct HelloParts {
    bytes: Vec<u8>,
}

impl HelloParts {
    /// Takes a message a zygote sent before its hello was complete: the
    /// hello once it is (a whole `Hello` as is, or the last piece's), `None`
    /// while pieces are missing, an error for pieces that are too many or
    /// do not make a hello.
    pub(crate) fn feed(&mut self, msg: ZygoteMsg) -> Result<Option<ZygoteMsg>, String> {
        let ZygoteMsg::HelloPart { bytes, last } = msg else {
            return Ok(Some(msg));
        };
        if self.bytes.len().saturating_add(bytes.len()) > MAX_HELLO {
            return Err(format!("its plugin list is over {} MiB", MAX_HELLO >> 20));
        }
        self.bytes.extend_from_slice(&bytes);
        if !last {
            return Ok(None);
        }
        match ipc::decode_ctl::<ZygoteMsg>(&std::mem::take(&mut self.bytes)) {
            Ok(hello @ ZygoteMsg::Hello { .. }) => Ok(Some(hello)),
            Ok(_) => Err("the pieces of its plugin list are not a hello".into()),
            Err(e) => Err(format!("garbled plugin list: {e}")),
        }
    }
}

/// How a zygote came to be, for what it may do about a plugin that starts
/// threads.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A fork of the host (the `fork` start method): it cannot become
    /// another program, so it refuses such a plugin.
    Forked,
    /// Exec'd by the pool (forkserver, spawn): it re-executes itself,
    /// leaving such plugins to each worker (`per_worker`: those found so
    /// far, by earlier executions of this zygote; their sandbox layers are
    /// in place already).
    Execd { per_worker: Vec<PerWorker> },
}

/// Runs the zygote loop; never returns.
pub fn run(ctl: OwnedFd, paths: Vec<PathBuf>, birth: Birth, sandbox: Sandbox) -> ! {
    run_as(ctl, paths, birth, sandbox, Origin::Forked)
}

/// [`run`] for a zygote of `origin`.
fn run_as(ctl: OwnedFd, paths: Vec<PathBuf>, birth: Birth, sandbox: Sandbox, origin: Origin) -> ! {
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
    // The sandbox's process-wide layers, before any plugin code runs (a
    // re-executed zygote is in them already: only the state they keep in
    // this process is made again).
    let (per_worker, can_reexec) = match origin {
        Origin::Forked => (Vec::new(), false),
        Origin::Execd { per_worker } => (per_worker, true),
    };
    let entered = if per_worker.is_empty() {
        sandbox::enter_process_wide(&sandbox)
    } else {
        sandbox::reenter_after_exec(&sandbox)
    };
    if let Err(e) = entered {
        eprintln!("billiard zygote: {e}");
        sys::exit_now(1);
    }
    let loaded = match load_in_zygote(&paths, per_worker.clone()) {
        Ok(Loaded::All(held, late)) => Ok((held, late)),
        Ok(Loaded::StartedThreads {
            index,
            info,
            threads,
        }) => {
            let path = info.path.clone();
            if can_reexec {
                let mut per_worker = per_worker;
                per_worker.push(PerWorker {
                    index,
                    expect: Some(*info),
                });
                reexec(&ctl, &paths, &birth, &sandbox, &per_worker);
                // Still here: the exec failed (its output says why).
                Err(PluginLoadError {
                    path,
                    reason: format!(
                        "it started {threads} thread(s) while loading, and the zygote could not \
                         re-execute itself to leave it to each worker (see its output)"
                    ),
                })
            } else {
                Err(threads_refusal(&path, threads))
            }
        }
        Err(e) => Err(e),
    };
    let hello = ZygoteMsg::Hello {
        pid: sys::getpid(),
        plugins: loaded
            .as_ref()
            .map(|(held, late)| plugin_list(held.iter().map(Plugin::info), late))
            .map_err(Clone::clone),
    };
    if let Err(e) = send_hello(&ctl, &hello) {
        // Said as what it is: the plugins loaded, the list did not go.
        eprintln!("billiard zygote: cannot send the plugin list to the host: {e}");
        sys::exit_now(1);
    }
    let Ok((plugins, late)) = loaded else {
        // The supervisor reports the load error; nothing more to do.
        sys::exit_now(0);
    };
    let mut z = Zygote {
        ctl,
        plugins,
        late,
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

/// The plugin list of the hello: the zygote's plugins with the
/// per-worker ones at their places.
fn plugin_list<'a>(
    held: impl IntoIterator<Item = &'a PluginInfo>,
    late: &[PerWorker],
) -> Vec<PluginInfo> {
    let mut list: Vec<PluginInfo> = held.into_iter().cloned().collect();
    let mut late: Vec<&PerWorker> = late.iter().collect();
    late.sort_by_key(|p| p.index);
    for p in late {
        if let Some(info) = &p.expect {
            let at = p.index.min(list.len());
            list.insert(at, info.clone());
        }
    }
    list
}

/// The largest per-worker state a re-executed zygote reads.
const MAX_EXEC_STATE: u64 = MAX_HELLO as u64;

/// The zygote's argument (first, before MODE) that makes it a zygote
/// re-executed by itself: its handshake is made, its sandbox entered, and
/// fd N holds the plugins each worker loads (JSON).
const PER_WORKER_ARG_PREFIX: &str = "--per-worker-fd=";

/// Re-executes this zygote (same pid, same control socket, same output)
/// so that it leaves the plugins of `per_worker` to each worker: exec
/// ends every thread a plugin started, which is what makes the zygote
/// single-threaded again. Returns only if the exec failed (said on
/// stderr).
fn reexec(
    ctl: &OwnedFd,
    paths: &[PathBuf],
    birth: &Birth,
    sandbox: &Sandbox,
    per_worker: &[PerWorker],
) {
    use std::os::unix::process::CommandExt;
    let state = match serde_json::to_vec(per_worker) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("billiard zygote: cannot write its state for its re-execution: {e}");
            return;
        }
    };
    let fd = match sys::exec_state_fd(&state) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("billiard zygote: cannot hand its state to its re-execution: {e}");
            return;
        }
    };
    // /proc/self/exe runs this program even when its file was replaced.
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg(ZYGOTE_ARG)
        .arg(format!("{PER_WORKER_ARG_PREFIX}{}", fd.as_raw_fd()))
        .arg(match birth {
            Birth::Fork => "fork",
            Birth::Exec { .. } => "exec",
        });
    if let Some(a) = sandbox_arg(sandbox) {
        cmd.arg(a);
    }
    cmd.args(paths.iter().map(OsString::from));
    debug_assert_eq!(ctl.as_raw_fd(), 3);
    let err = cmd.exec();
    eprintln!("billiard zygote: cannot re-execute itself to leave a plugin that starts threads to the workers: {err}");
}

struct Zygote {
    ctl: OwnedFd,
    /// The plugins it holds (every worker is forked with them).
    plugins: Vec<Plugin>,
    /// The plugins each worker loads after its fork.
    late: Vec<PerWorker>,
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
                        let late = worker::Late {
                            paths: std::mem::take(&mut self.paths),
                            plugins: std::mem::take(&mut self.late),
                        };
                        worker::run(plugins, late, params, sock, page, zygote)
                    }
                    (Birth::Fork, None) => sys::exit_now(worker::exit_code::SETUP),
                    (Birth::Exec { exe }, _) => {
                        exec_worker(exe, &params, &self.paths, &self.late, self.sandbox.isolate)
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
    late: &[PerWorker],
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
    if !late.is_empty() {
        let list: Vec<String> = late.iter().map(|p| p.index.to_string()).collect();
        cmd.arg(format!("{LATE_ARG_PREFIX}{}", list.join(",")));
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
/// After the params (and `--not-dumpable`) of a spawned worker: the
/// indexes of the plugins it loads after its signal setup (they start
/// threads).
const LATE_ARG_PREFIX: &str = "--late=";
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

static HOOK_RAN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Called by [`run_if_helper`]: this program is a zygote executable.
fn note_hook() {
    HOOK_RAN.store(true, std::sync::atomic::Ordering::Release);
}

/// True when this process's `main` called [`run_if_helper`] (the pool then
/// execs this program as its zygote: `pool::worker_exe`).
pub(crate) fn hook_ran() -> bool {
    HOOK_RAN.load(std::sync::atomic::Ordering::Acquire)
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
    note_hook();
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
    let mut it = args.into_iter().peekable();
    // Re-executed by itself (`reexec`): the handshake is made.
    let state_fd = it
        .peek()
        .and_then(|a| a.to_str())
        .and_then(|a| a.strip_prefix(PER_WORKER_ARG_PREFIX))
        .map(|n| n.parse::<i32>());
    let per_worker = match state_fd {
        None => {
            // The handshake first, before anything can fail or block: it
            // tells the pool this executable is a zygote of its version
            // (`ipc::check_handshake`).
            let threads = sys::thread_count().unwrap_or(0);
            let handshake = ipc::encode_handshake(threads);
            if sys::send_with_fds(&ctl, &handshake, &[]).is_err() || threads > 1 {
                // More than one thread: the pool refuses the handshake and
                // says why.
                sys::exit_now(2);
            }
            Vec::new()
        }
        Some(fd) => {
            it.next();
            let state = fd
                .map_err(|e| e.to_string())
                .and_then(|fd| sys::read_exec_state(fd, MAX_EXEC_STATE).map_err(|e| e.to_string()))
                .and_then(|b| {
                    serde_json::from_slice::<Vec<PerWorker>>(&b).map_err(|e| e.to_string())
                });
            match state {
                Ok(p) if !p.is_empty() => p,
                Ok(_) => {
                    eprintln!("billiard zygote: re-executed without a per-worker plugin");
                    sys::exit_now(1);
                }
                Err(e) => {
                    eprintln!("billiard zygote: cannot read the state of its re-execution: {e}");
                    sys::exit_now(1);
                }
            }
        }
    };
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
    run_as(ctl, paths, birth, sandbox, Origin::Execd { per_worker })
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
    let mut late = Vec::new();
    if let Some(list) = it
        .peek()
        .and_then(|a| a.to_str())
        .and_then(|a| a.strip_prefix(LATE_ARG_PREFIX))
    {
        late = list
            .split(',')
            .filter_map(|n| n.parse().ok())
            .map(|index| PerWorker {
                index,
                expect: None,
            })
            .collect();
        it.next();
    }
    let paths: Vec<PathBuf> = it.map(PathBuf::from).collect();
    let zygote = std::os::unix::process::parent_id() as i32;
    match load_but(&paths, &late) {
        Ok(plugins) => {
            let late = worker::Late {
                paths,
                plugins: late,
            };
            worker::run(plugins, late, params, sock, page, zygote)
        }
        Err(e) => {
            eprintln!("billiard worker: {e}");
            sys::exit_now(worker::exit_code::PLUGIN_LOAD);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::{PluginInfo, TaskSpec};

    /// A plugin list of `plugins` plugins of `tasks` tasks with `doc`-long
    /// docs.
    fn hello(plugins: usize, tasks: usize, doc: usize) -> ZygoteMsg {
        let task = |i: usize| TaskSpec {
            name: format!("task_{i}"),
            doc: "d".repeat(doc),
            args: Vec::new(),
            ret: "u64".into(),
            takes_context: false,
            streaming: false,
            item: None,
            options: Default::default(),
            schema: None,
        };
        let plugin = |p: usize| PluginInfo {
            path: format!("/plugins/p{p}.so").into(),
            name: format!("p{p}"),
            version: "1.0.0".into(),
            kind: Default::default(),
            abi_version: 2,
            api_version: "0.1.0".into(),
            tasks: (0..tasks).map(task).collect(),
            metadata: None,
        };
        ZygoteMsg::Hello {
            pid: 42,
            plugins: Ok((0..plugins).map(plugin).collect()),
        }
    }

    /// Sends `msg` with [`send_hello`] through a real socket pair and puts it
    /// back together as the supervisor does (64 KiB receive buffer).
    fn round_trip(msg: ZygoteMsg) -> ZygoteMsg {
        let (ours, theirs) = sys::seqpacket_pair().unwrap();
        let sender = std::thread::spawn(move || send_hello(&theirs, &msg).map(|_| msg));
        let mut buf = vec![0u8; 64 * 1024];
        let mut parts = HelloParts::default();
        let got = loop {
            let (n, _) = sys::recv_with_fds(&ours, &mut buf).unwrap().unwrap();
            let msg = ipc::decode_ctl::<ZygoteMsg>(&buf[..n]).unwrap();
            if let Some(hello) = parts.feed(msg).unwrap() {
                break hello;
            }
        };
        let sent = sender.join().unwrap().unwrap();
        assert_eq!(format!("{sent:?}"), format!("{got:?}"));
        got
    }

    #[test]
    fn per_worker_plugins_take_their_places_in_the_hello() {
        let info = |name: &str| PluginInfo {
            path: format!("/plugins/{name}.so").into(),
            name: name.into(),
            version: "1".into(),
            kind: Default::default(),
            abi_version: 1,
            api_version: "1".into(),
            tasks: Vec::new(),
            metadata: None,
        };
        let held = [info("a"), info("c")];
        // Found in any order (one per re-execution), put back by index.
        let late = [
            PerWorker {
                index: 3,
                expect: Some(info("d")),
            },
            PerWorker {
                index: 1,
                expect: Some(info("b")),
            },
        ];
        let names: Vec<String> = plugin_list(&held, &late)
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        let late = [PerWorker {
            index: 0,
            expect: Some(info("first")),
        }];
        let names: Vec<String> = plugin_list(&held, &late)
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["first", "a", "c"]);
    }

    #[test]
    fn c11_any_number_of_plugins_and_tasks_fits_in_the_hello() {
        // Small: one datagram, as before.
        round_trip(hello(1, 3, 10));
        // 1,000 plugins of 40 tasks (the report's 56 plugins stopped at the
        // socket's 208 KiB), and one plugin whose docs alone are 4 MiB.
        let ZygoteMsg::Hello {
            plugins: Ok(ps), ..
        } = round_trip(hello(1000, 40, 20))
        else {
            panic!("not a hello")
        };
        assert_eq!(ps.len(), 1000);
        round_trip(hello(1, 2, 2 << 20));
    }

    #[test]
    fn c11_pieces_that_are_not_a_hello_are_refused() {
        let mut parts = HelloParts::default();
        let not_hello = ipc::encode_ctl(&ZygoteMsg::Spawned { worker: 1, pid: 2 });
        let last = ZygoteMsg::HelloPart {
            bytes: not_hello,
            last: true,
        };
        assert!(parts.feed(last).is_err());
        let garbage = ZygoteMsg::HelloPart {
            bytes: vec![0xff; 10],
            last: true,
        };
        assert!(parts.feed(garbage).unwrap_err().contains("garbled"));
    }
}
