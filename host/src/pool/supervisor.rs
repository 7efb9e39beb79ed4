//! The supervisor: one thread, one event loop (mio) over the worker
//! sockets, their output pipes, the zygote's control socket, the API's
//! command channel and the time-limit timers. It owns the job queue, the
//! in-flight map and the workers. It never calls plugin code and never
//! blocks on a caller: outcomes go to slots or channels, callbacks run on
//! their own thread.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use billiard_plugin_api::{codec, Status, StopReason};
use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Interest, Poll, Token, Waker};

use super::config::{PoolConfig, StartMethod};
use super::events::{Event, EventSink};
use super::items::{Gate, ItemBatch};
use super::job::{ChunkBody, ChunkResult, Dispatch, JobId, Outcome, Reply, WorkerId};
use super::stats::Stats;
use crate::error::{ErrorKind, TaskError};
use crate::ipc::{self, Frame, FrameError, FrameReader, WorkerParams, ZygoteCmd, ZygoteMsg};
use crate::plugin::PluginInfo;
use crate::shm;
use crate::sys::{self, ExitInfo, Scoreboard};
use crate::zygote;

pub const WAKER: Token = Token(0);
/// A job whose worker died before starting it (by the worker's own page,
/// which its task can forge) is resent this many times before it fails as
/// `worker_lost`: after its second death (C3).
const MAX_UNSTARTED_RETRIES: u32 = 1;
/// Lines of worker output kept for `worker_lost` messages.
const TAIL_LINES: usize = 12;
/// Bytes of one worker's output read per event-loop turn (see
/// `output_readable`).
const OUTPUT_BUDGET: usize = 1 << 20;

/// Requests from the API to the supervisor thread.
pub enum Cmd {
    Submit(Vec<Dispatch>),
    TerminateJob(JobId, Sender<bool>),
    Grow(usize),
    Shrink(usize),
    /// A rolling restart; the reply (if any) says when the new generation
    /// serves, or why the reload failed.
    Restart(Option<ReloadReply>),
    /// Finish queued and running jobs, then stop.
    Close,
    /// Stop now: kill workers, every unfinished job gets `terminated`.
    Terminate,
    Stats(Sender<Stats>),
    /// Panics the supervisor thread with this message: the test hook of the
    /// pool's defence against its own death (`Pool::check_alive`).
    TestPanic(String),
}

/// Callbacks to run off the supervisor thread.
pub type CallbackJob = Box<dyn FnOnce() + Send>;

/// A zygote the supervisor talks to. Several exist during a `restart()`.
struct Zygote {
    gen: u64,
    fd: OwnedFd,
    pid: i32,
    child: Option<std::process::Child>,
    token: Token,
    /// Plugins as this zygote loaded them (empty until `ready`).
    plugins: Vec<PluginInfo>,
    alive: bool,
    retired: bool,
    /// It said hello: the plugins are loaded and it forks workers.
    ready: bool,
    /// Why it was started (what a failed start means).
    purpose: Start,
    /// Its stdout/stderr while it loads (then handed to a log thread).
    output: Option<OwnedFd>,
    /// Who waits for it to be ready (`Pool::restart`).
    on_ready: Option<ReloadReply>,
    /// The plugin files as they were when it was started.
    stamps: Vec<Option<FileStamp>>,
    /// When a file was last found overwritten in place and a reload
    /// started for it (at most one per `OVERWRITE_RELOAD_INTERVAL`: the copy
    /// may still be going on).
    overwrite_reload: Option<Instant>,
    /// The pieces of its hello received so far (C11: a long plugin list
    /// comes in pieces).
    hello: zygote::HelloParts,
}

/// Where `Pool::restart` waits for its reload to serve or fail.
pub type ReloadReply = Sender<Result<(), TaskError>>;

/// Why a zygote was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// The pool's first: `Pool::build` waits for it.
    Initial,
    /// A rolling restart (`Pool::restart`, SIGHUP): until it is ready the
    /// current generation serves; if it fails, that generation stays.
    Restart,
    /// The previous zygote died.
    Replace,
}

/// A zygote process just started, before it is registered.
struct Launched {
    fd: OwnedFd,
    pid: i32,
    child: Option<std::process::Child>,
    output: Option<OwnedFd>,
}

/// A plugin file as it was when a zygote loaded it, to notice a file
/// overwritten in place under a running pool (`cp new.so loaded.so`):
/// the zygote's mapping then shows the new bytes and every worker forked
/// from it crashes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileStamp {
    fn of(path: &std::path::Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        })
    }

    /// Same file (inode), other contents: written over in place. A file
    /// replaced by rename has another inode, which is safe.
    fn overwritten_by(&self, now: &FileStamp) -> bool {
        self.dev == now.dev
            && self.ino == now.ino
            && (self.size != now.size || self.mtime_ns != now.mtime_ns)
    }
}

/// The plugins of one zygote generation, as the pool's API resolves task
/// names against them (`Pool::task_ref`, `find_task`, `plugins`).
#[derive(Debug, Clone, Default)]
pub struct Generation {
    /// The generation's number: 1 for the plugins loaded at start, one more
    /// after each successful reload or zygote replacement (0 only in a
    /// `Generation::default()`).
    pub gen: u64,
    /// The plugins of this generation, in the order the pool loads them
    /// (the index a [`TaskRef`](crate::TaskRef) holds).
    pub plugins: Arc<Vec<PluginInfo>>,
}

/// The live generation, shared with the `Pool` handle.
pub type LiveGeneration = Arc<std::sync::RwLock<Generation>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    TimeLimit(JobId),
    Terminated(JobId),
    Protocol,
    Shutdown,
}

struct Worker {
    id: WorkerId,
    gen: u64,
    slot: u32,
    pid: i32,
    pidfd: OwnedFd,
    pidfd_token: Token,
    /// Set once the pidfd said the process is gone (the zygote's exit
    /// report may still be on its way).
    dead: bool,
    sock: mio::net::UnixStream,
    sock_token: Token,
    output: Option<(mio::unix::pipe::Receiver, Token)>,
    out: OutputTail,
    reader: FrameReader,
    outq: VecDeque<OutItem>,
    inflight: VecDeque<Dispatch>,
    /// When the job at the head of `inflight` started (its timers run from here).
    head_since: Option<Instant>,
    /// No new work: it exits after what it has (recycled, shrunk, restarted).
    leaving: bool,
    exit_sent: bool,
    /// Its socket failed or closed; waiting for the zygote's exit report.
    broken: bool,
    kill: Option<Kill>,
    /// How it ended when no exit report tells (see `exit_report_overdue`).
    lost_how: Option<String>,
    /// Its socket closed mid-job and the pool killed it for that (so a
    /// "killed by SIGKILL" is the pool's doing, not an outside kill).
    killed_at_eof: bool,
    /// It said READY (set up, taking jobs): written before any job's task
    /// ran, so a task cannot unsay it. A death without it is a death at
    /// start (counted by the restart limiter, no job charged); a death
    /// after it is charged to the job it was running (C3).
    ready: bool,
    /// Why the pool refused what it sent (a protocol error), for the job's
    /// message.
    refused: Option<String>,
    dispatches_done: u64,
    /// Stream item bytes of this worker on their way to a consumer.
    gate: Arc<Gate>,
    /// Its socket is not read until the consumer catches up (see `items`).
    stream_paused: bool,
    /// Its shared-memory arena for large payloads (`crate::shm`), made the
    /// first time it needs one; freed with it.
    arena: Option<shm::HostArena>,
    /// The largest result it sent through its socket for want of room in
    /// an arena (its next arena's out region is made that big).
    want_out: usize,
    /// Creating an arena failed for it: its payloads use the socket.
    arena_failed: bool,
}

struct OutItem {
    header: Vec<u8>,
    payload: Option<Arc<Vec<u8>>>,
    idx: usize,
    off: usize,
    /// Fds sent with the item's first byte (an ARENA frame's memfds).
    fds: Vec<OwnedFd>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    /// The soft limit of (worker, job).
    Soft(WorkerId, JobId),
    /// The hard limit of (worker, job).
    Hard(WorkerId, JobId),
    /// A worker's pidfd said it died, but its zygote has not reported how:
    /// past this deadline the death is final without the report (a
    /// stopped or wedged zygote must not stall the pool).
    ExitReport(WorkerId),
    /// A zygote of this generation must have loaded the plugins by now.
    ZygoteStart(u64),
    /// A worker's socket closed mid-job; kill it if it is still alive.
    EofKill(WorkerId),
}

/// What a registered poll token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Sock,
    Output,
    /// The worker's pidfd: readable once the process has exited.
    Pidfd,
}

/// How long a worker's death (seen on its pidfd) waits for the zygote's
/// exit report, which carries the signal and rusage, before it is final.
const EXIT_REPORT_GRACE: Duration = Duration::from_millis(500);
/// How long a worker whose socket closed mid-job may take to be gone by
/// itself before the pool kills it (see `worker_readable`).
const EOF_KILL_GRACE: Duration = Duration::from_millis(100);
/// How often a plugin file found overwritten in place is reloaded again
/// (the first try may catch the copy half done).
const OVERWRITE_RELOAD_INTERVAL: Duration = Duration::from_millis(200);
/// How long a zygote gets to exit after being asked, before it is killed.
const ZYGOTE_EXIT_GRACE: Duration = Duration::from_secs(3);

pub struct Supervisor {
    cfg: PoolConfig,
    poll: Poll,
    rx: Receiver<Cmd>,
    /// One page per worker slot, renewed for every worker (C3).
    board: Scoreboard,
    callbacks: Sender<CallbackJob>,
    events: EventSink,
    zygotes: Vec<Zygote>,
    gen: u64,
    /// Every generation's plugins, to map a job's task (resolved against
    /// the generation of its `TaskRef`) onto the worker's generation.
    generations: HashMap<u64, Arc<Vec<PluginInfo>>>,
    live: LiveGeneration,
    workers: HashMap<WorkerId, Worker>,
    tokens: HashMap<Token, (WorkerId, Source)>,
    next_token: usize,
    next_worker: u64,
    free_slots: Vec<u32>,
    queue: VecDeque<Dispatch>,
    /// Workers with output left to read after their budget ran out.
    output_backlog: Vec<WorkerId>,
    timers: BinaryHeap<Reverse<(Instant, TimerKind)>>,
    /// The heap size past which stale timers are dropped (`add_timer`).
    timers_compact_at: usize,
    target: usize,
    /// Spawn requests not answered yet: worker id → (slot, zygote generation).
    pending_spawns: HashMap<u64, (u32, u64)>,
    start_failures: VecDeque<Instant>,
    /// Set when workers keep dying at start: why the pool stopped forking.
    broken: Option<String>,
    closing: bool,
    stats: Stats,
    waker: Arc<Waker>,
    /// Workers not read while their stream's consumer catches up.
    paused_streams: Vec<WorkerId>,
    /// Jobs waiting for their retry (`pool/retry.rs`): due ones join the
    /// queue; a closing pool waits for them.
    retries: Arc<super::retry::Retries>,
}

/// What `Pool::build` gets back from the supervisor thread once the zygote
/// has loaded the plugins.
pub type Ready = Result<Vec<PluginInfo>, TaskError>;

impl Supervisor {
    pub fn new(
        cfg: PoolConfig,
        rx: Receiver<Cmd>,
        board: Scoreboard,
        callbacks: Sender<CallbackJob>,
        events: EventSink,
        live: LiveGeneration,
        retries: Arc<super::retry::Retries>,
    ) -> std::io::Result<(Supervisor, Arc<Waker>)> {
        let poll = Poll::new()?;
        // The OOM-kill counter's baseline: later deaths by an outside
        // SIGKILL are named as OOM kills when it has moved.
        let _ = sys::oom_kills_since_start();
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let slots = board.capacity() as u32;
        let target = cfg.workers;
        Ok((
            Supervisor {
                cfg,
                poll,
                rx,
                board,
                callbacks,
                events,
                zygotes: Vec::new(),
                gen: 0,
                generations: HashMap::new(),
                live,
                workers: HashMap::new(),
                tokens: HashMap::new(),
                next_token: 1,
                next_worker: 1,
                free_slots: (0..slots).rev().collect(),
                queue: VecDeque::new(),
                output_backlog: Vec::new(),
                timers: BinaryHeap::new(),
                timers_compact_at: 1024,
                target,
                pending_spawns: HashMap::new(),
                start_failures: VecDeque::new(),
                broken: None,
                closing: false,
                stats: Stats::default(),
                waker: waker.clone(),
                paused_streams: Vec::new(),
                retries,
            },
            waker,
        ))
    }

    fn token(&mut self) -> Token {
        self.next_token += 1;
        Token(self.next_token)
    }

    /// Starts a zygote process (forkserver/spawn: exec of the worker
    /// executable; fork: `forked` is the already-forked one). It loads the
    /// plugins and then says hello; nothing here waits for that.
    fn launch_zygote(&mut self, forked: Option<(OwnedFd, i32)>) -> Result<Launched, TaskError> {
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
                    super::worker_exe::resolve(self.cfg.worker_exe.as_ref()).map_err(load_err)?;
                super::worker_exe::precheck(&exe, source).map_err(load_err)?;
                let (ours, theirs) =
                    sys::seqpacket_pair().map_err(|e| load_err(format!("socketpair: {e}")))?;
                let (out_r, out_w) = sys::pipe().map_err(|e| load_err(format!("pipe: {e}")))?;
                let mode = if self.cfg.start_method == StartMethod::Spawn {
                    "exec"
                } else {
                    "fork"
                };
                let mut args: Vec<&OsStr> = vec![OsStr::new(zygote::ZYGOTE_ARG), OsStr::new(mode)];
                let sandbox_arg = zygote::sandbox_arg(&self.cfg.sandbox);
                if let Some(a) = &sandbox_arg {
                    args.push(OsStr::new(a));
                }
                args.extend(self.cfg.plugins.iter().map(|p| p.as_os_str()));
                let env = self.cfg.sandbox.environment();
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

    /// Starts the first zygote and waits (at most `load_timeout`) for it to
    /// load the plugins: `Pool::build` returns only once they are loaded.
    /// An exec'd zygote that does not hand-shake is a configuration error
    /// (`PoolError::Config`), not a plugin load failure.
    pub fn start_zygote(
        &mut self,
        forked: Option<(OwnedFd, i32)>,
    ) -> Result<Vec<PluginInfo>, super::PoolError> {
        use super::PoolError;
        let z = self.launch_zygote(forked).map_err(PoolError::PluginLoad)?;
        tracing::debug!("zygote pid {} started: loading the plugins", z.pid);
        if z.child.is_some() {
            if let Err(why) = self.zygote_handshake(&z.fd) {
                return Err(PoolError::Config(self.handshake_failure(z, why)));
            }
        }
        let mut buf = vec![0u8; 4 << 20];
        let hello = wait_hello(&z.fd, &mut buf, self.cfg.load_timeout);
        let hello = match hello {
            Ok(msg) => msg,
            Err(e) => return Err(PoolError::PluginLoad(self.load_failure(z, &e))),
        };
        let gen = self.gen + 1;
        self.install_zygote(z, gen, Start::Initial)
            .map_err(PoolError::PluginLoad)?;
        let zi = self.zygotes.len() - 1;
        self.zygote_hello(zi, hello).map_err(PoolError::PluginLoad)
    }

    /// Waits for the handshake of a zygote just exec'd (`pool::worker_exe`).
    fn zygote_handshake(&self, fd: &OwnedFd) -> Result<(), super::worker_exe::NoHandshake> {
        use super::worker_exe::{self, NoHandshake};
        let (exe, source) =
            worker_exe::resolve(self.cfg.worker_exe.as_ref()).map_err(NoHandshake::Refused)?;
        let timeout = worker_exe::HANDSHAKE_TIMEOUT.min(self.cfg.load_timeout);
        worker_exe::await_handshake(fd, timeout, &exe, source)
    }

    /// Ends a zygote that did not hand-shake; the configuration error.
    fn handshake_failure(&self, z: Launched, why: super::worker_exe::NoHandshake) -> String {
        use super::worker_exe::{self, NoHandshake};
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
        match worker_exe::resolve(self.cfg.worker_exe.as_ref()) {
            Ok((exe, source)) => worker_exe::explain(why, &exe, source, status, &output),
            Err(e) => e,
        }
    }

    /// Starts a zygote for a restart or to replace a dead one, without
    /// waiting: its hello arrives through the event loop (`zygote_hello`),
    /// and `load_timeout` later it is given up (`TimerKind::ZygoteStart`).
    fn begin_zygote(&mut self, purpose: Start) -> Result<(), TaskError> {
        // A newer reload supersedes one still loading.
        let stale: Vec<u64> = self
            .zygotes
            .iter()
            .filter(|z| !z.ready && z.alive)
            .map(|z| z.gen)
            .collect();
        for gen in stale {
            if let Some(zi) = self.zygotes.iter().position(|z| z.gen == gen) {
                self.zygote_start_failed(zi, "superseded by a newer restart".into());
            }
        }
        let z = self.launch_zygote(None)?;
        let gen = self.gen + 1;
        tracing::debug!(
            "zygote pid {} started ({purpose:?}): loading the plugins as generation {gen}",
            z.pid
        );
        self.install_zygote(z, gen, purpose)?;
        // A load timeout past the clock's range (the builder refuses one
        // over bounds::MAX_DURATION) means no timer, never a panic.
        if let Some(t) = crate::bounds::deadline(Instant::now(), self.cfg.load_timeout) {
            self.add_timer((t, TimerKind::ZygoteStart(gen)));
        }
        Ok(())
    }

    /// Registers a launched zygote (not ready until its hello).
    fn install_zygote(&mut self, z: Launched, gen: u64, purpose: Start) -> Result<(), TaskError> {
        let load_err = |reason: String| TaskError::new(ErrorKind::PluginLoad, reason);
        if let Err(e) = sys::set_nonblocking(&z.fd, true) {
            return Err(self.load_failure(z, &format!("zygote socket: {e}")));
        }
        let token = self.token();
        if let Err(e) = self.poll.registry().register(
            &mut mio::unix::SourceFd(&z.fd.as_raw_fd()),
            token,
            Interest::READABLE,
        ) {
            let msg = format!("cannot watch the zygote: {e}");
            let _ = self.load_failure(z, &msg);
            return Err(load_err(msg));
        }
        self.gen = gen;
        self.zygotes.push(Zygote {
            gen,
            fd: z.fd,
            pid: z.pid,
            child: z.child,
            token,
            plugins: Vec::new(),
            alive: true,
            retired: false,
            ready: false,
            purpose,
            output: z.output,
            on_ready: None,
            stamps: self.cfg.plugins.iter().map(|p| FileStamp::of(p)).collect(),
            overwrite_reload: None,
            hello: Default::default(),
        });
        Ok(())
    }

    /// The first message of a zygote that is loading the plugins.
    fn zygote_hello(&mut self, zi: usize, msg: ZygoteMsg) -> Ready {
        let plugins = match msg {
            ZygoteMsg::Hello { plugins: Ok(p), .. } => p,
            ZygoteMsg::Hello {
                plugins: Err(e), ..
            } => {
                // A plugin refused to load; the zygote exits by itself.
                let e: TaskError = e.into();
                let (z, purpose, waiter) = self.remove_zygote(zi);
                drop(z.fd);
                drop(z.output);
                reap_zygote(z.child, z.pid);
                self.start_outcome(purpose, waiter, &e.message);
                return Err(e);
            }
            _ => {
                let why = "the zygote sent an unexpected first message".to_string();
                self.zygote_start_failed(zi, why.clone());
                return Err(TaskError::new(ErrorKind::PluginLoad, why));
            }
        };
        let z = &mut self.zygotes[zi];
        z.ready = true;
        z.plugins = plugins.clone();
        let on_ready = z.on_ready.take();
        let (gen, pid, purpose) = (z.gen, z.pid, z.purpose);
        // Zygote output (rare: plugin constructors printing) goes to the log.
        if let Some(o) = z.output.take() {
            std::thread::Builder::new()
                .name("billiard-zygote-log".into())
                .spawn(move || forward_lines(o, pid))
                .ok();
        }
        tracing::debug!(
            "zygote pid {pid} loaded the plugins (generation {gen}): {}",
            plugins
                .iter()
                .map(|p| format!("{} ({} tasks)", p.name, p.tasks.len()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let plugins = Arc::new(plugins);
        self.generations.insert(gen, plugins.clone());
        if let Ok(mut live) = self.live.write() {
            *live = Generation { gen, plugins };
        }
        match purpose {
            Start::Initial => {}
            Start::Replace => tracing::info!("a new zygote (pid {pid}) loaded the plugins"),
            Start::Restart => {
                tracing::info!(
                    "rolling restart: the plugins were reloaded (generation {gen}, zygote pid {pid}); the workers are replaced as they finish their jobs"
                );
                for z in self.zygotes.iter_mut().filter(|z| z.gen != gen) {
                    z.retired = true;
                }
                for w in self.workers.values_mut().filter(|w| w.gen != gen) {
                    w.leaving = true;
                }
                self.stats.restarts += 1;
                self.retire_idle_leavers();
                let old: Vec<u64> = self
                    .zygotes
                    .iter()
                    .filter(|z| z.retired)
                    .map(|z| z.gen)
                    .collect();
                for g in old {
                    self.maybe_finish_zygote(g);
                }
            }
        }
        if let Some(reply) = on_ready {
            let _ = reply.send(Ok(()));
        }
        Ok(self.generations[&gen].as_ref().clone())
    }

    /// A zygote that was loading the plugins failed (or took too long):
    /// it is ended, and the pool goes on as it was (a failed reload keeps
    /// the current workers) or, if it was to replace a dead zygote, stops
    /// forking.
    fn zygote_start_failed(&mut self, zi: usize, why: String) {
        let (launched, purpose, waiter) = self.remove_zygote(zi);
        let err = self.load_failure(launched, &why);
        self.start_outcome(purpose, waiter, &err.message);
    }

    /// What a failed zygote start means for the pool.
    fn start_outcome(&mut self, purpose: Start, waiter: Option<ReloadReply>, why: &str) {
        if let Some(reply) = waiter {
            let _ = reply.send(Err(TaskError::new(ErrorKind::PluginLoad, why)));
        }
        match purpose {
            Start::Initial => {}
            Start::Restart => {
                tracing::error!("the reload failed, the current workers keep serving: {why}")
            }
            Start::Replace => {
                self.stop_forking(format!("the zygote died and could not be replaced: {why}"))
            }
        }
    }

    /// Takes a zygote out of the pool's books (and out of the poll set).
    /// Returns it with why it was started and who waits for it.
    fn remove_zygote(&mut self, zi: usize) -> (Launched, Start, Option<ReloadReply>) {
        let mut z = self.zygotes.remove(zi);
        let waiter = z.on_ready.take();
        let _ = self
            .poll
            .registry()
            .deregister(&mut mio::unix::SourceFd(&z.fd.as_raw_fd()));
        let purpose = z.purpose;
        (
            Launched {
                fd: z.fd,
                pid: z.pid,
                child: z.child.take(),
                output: z.output.take(),
            },
            purpose,
            waiter,
        )
    }

    /// Ends a zygote that did not load the plugins and says why, with its
    /// exit status and whatever it printed.
    fn load_failure(&mut self, z: Launched, why: &str) -> TaskError {
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
        let files: Vec<String> = self
            .cfg
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

    fn zygote_start_timeout(&mut self, gen: u64) {
        if let Some(zi) = self.zygotes.iter().position(|z| z.gen == gen && !z.ready) {
            let why = format!(
                "it did not finish loading them within {} (does a plugin's constructor block?)",
                humantime::format_duration(self.cfg.load_timeout)
            );
            self.zygote_start_failed(zi, why);
        }
    }

    /// The event loop. Returns when the pool is closed and drained, or
    /// terminated. Borrows the supervisor so that, if it panics, the
    /// caller still holds it and can name the panic in every pending job's
    /// outcome before dropping it (`Pool::start`).
    pub fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            self.ensure_workers();
            self.schedule();
            if self.finished() {
                break;
            }
            let timeout = if self.output_backlog.is_empty() {
                self.timers
                    .peek()
                    .map(|Reverse((t, ..))| t.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            let timeout = self.retries.poll_timeout(timeout);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!("supervisor poll failed: {e}");
                    self.terminate_all("the supervisor's event loop failed");
                    break;
                }
            }
            for ev in events.iter() {
                let token = ev.token();
                if token == WAKER {
                    if self.drain_commands() {
                        self.shutdown();
                        return;
                    }
                    self.resume_streams();
                } else if self.zygotes.iter().any(|z| z.token == token) {
                    self.zygote_readable(token);
                } else if let Some(&(wid, source)) = self.tokens.get(&token) {
                    match source {
                        Source::Sock => {
                            if ev.is_writable() {
                                self.flush(wid);
                            }
                            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                                self.worker_readable(wid);
                            }
                        }
                        Source::Output => self.output_readable(wid),
                        Source::Pidfd => self.worker_pidfd_readable(wid),
                    }
                }
            }
            for wid in std::mem::take(&mut self.output_backlog) {
                self.output_readable(wid);
            }
            self.fire_timers();
            self.queue_due_retries();
        }
        self.shutdown();
    }

    /// Retries whose delay is over join the queue (`pool/retry.rs`); in a
    /// pool that stopped forking they fail as queued jobs do.
    fn queue_due_retries(&mut self) {
        if self.broken.is_some() {
            self.retries.stop();
        }
        for d in self.retries.take_due() {
            self.stats.submitted += 1;
            match self.broken.clone() {
                Some(why) => self.fail_dispatch(d, TaskError::new(ErrorKind::WorkerLost, why)),
                None => self.queue.push_back(d),
            }
        }
    }

    fn finished(&self) -> bool {
        self.closing
            && self.queue.is_empty()
            && self.workers.values().all(|w| w.inflight.is_empty())
            && self.retries.is_idle()
            // A reload asked for completes (or fails, within the load
            // timeout) before the pool closes, so it is never lost.
            && self.zygotes.iter().all(|z| z.ready || !z.alive)
    }

    /// Handles every queued command; true when the pool must stop now.
    fn drain_commands(&mut self) -> bool {
        loop {
            let cmd = match self.rx.try_recv() {
                Ok(cmd) => cmd,
                Err(crossbeam_channel::TryRecvError::Empty) => return false,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    // Every API handle is gone: nobody can submit or wait.
                    self.terminate_all("the pool was dropped");
                    return true;
                }
            };
            match cmd {
                Cmd::Submit(ds) => {
                    for d in ds {
                        self.stats.submitted += d.count as u64;
                        if let Some(why) = &self.broken {
                            let why = why.clone();
                            self.fail_dispatch(d, TaskError::new(ErrorKind::WorkerLost, why));
                        } else {
                            self.queue.push_back(d);
                        }
                    }
                }
                Cmd::TerminateJob(job, reply) => {
                    // A retried job is found by its first id in whichever
                    // attempt it is; one waiting for its retry ends at once.
                    let found = self.retries.cancel(job)
                        || self.terminate_job(self.retries.current(job))
                        || self.retries.cancel(job);
                    let _ = reply.send(found);
                }
                // Bounded (Pool::grow refuses more than the maximum): a
                // target past the scoreboard's slots would break the pool.
                Cmd::Grow(n) => {
                    self.target = self.target.saturating_add(n).min(super::MAX_WORKERS);
                }
                Cmd::Shrink(n) => self.shrink(n),
                Cmd::Restart(reply) => self.restart(reply),
                Cmd::Close => self.closing = true,
                Cmd::Terminate => {
                    self.terminate_all("the pool was terminated");
                    return true;
                }
                Cmd::Stats(reply) => {
                    let _ = reply.send(self.snapshot());
                }
                Cmd::TestPanic(msg) => panic!("{msg}"),
            }
        }
    }

    fn snapshot(&self) -> Stats {
        let mut s = self.stats.clone();
        s.workers = self.workers.values().filter(|w| !w.broken).count();
        s.busy = self
            .workers
            .values()
            .filter(|w| !w.inflight.is_empty())
            .count();
        s.queued = self.queue.iter().map(|d| d.count as u64).sum();
        s.running = self
            .workers
            .values()
            .flat_map(|w| w.inflight.iter())
            .map(|d| d.count as u64)
            .sum();
        s.target_workers = self.target;
        s.stopped_forking = self.broken.clone();
        (s.waiting_retry, s.retried) = self.retries.counts();
        s
    }

    // ----- workers: birth -------------------------------------------------

    fn live_workers(&self) -> usize {
        self.workers
            .values()
            .filter(|w| !w.leaving && !w.broken)
            .count()
            + self
                .pending_spawns
                .values()
                .filter(|(_, gen)| self.zygote_is_current(*gen))
                .count()
    }

    /// Whether workers of zygote generation `gen` are wanted (it is alive
    /// and not being replaced by a restart).
    fn zygote_is_current(&self, gen: u64) -> bool {
        self.zygotes
            .iter()
            .any(|z| z.gen == gen && z.alive && z.ready && !z.retired)
    }

    fn ensure_workers(&mut self) {
        if self.broken.is_some() || (self.closing && self.queue.is_empty()) {
            return;
        }
        while self.live_workers() < self.target {
            if !self.spawn_worker() {
                break;
            }
        }
    }

    fn current_zygote(&self) -> Option<&Zygote> {
        self.zygotes
            .iter()
            .rev()
            .find(|z| z.alive && z.ready && !z.retired)
    }

    fn spawn_worker(&mut self) -> bool {
        let Some(slot) = self.free_slots.pop() else {
            tracing::warn!("no free scoreboard slot; not starting more workers");
            return false;
        };
        let Some(z) = self.current_zygote() else {
            self.free_slots.push(slot);
            return false;
        };
        let initializer = self.cfg.initializer.as_ref().and_then(|init| {
            let (pi, p) = z
                .plugins
                .iter()
                .enumerate()
                .find(|(_, p)| p.name == init.plugin)?;
            Some((
                pi as u16,
                p.task_index(&init.task)?,
                init.args_json.clone().into_bytes(),
            ))
        });
        let id = self.next_worker;
        let params = WorkerParams {
            worker: id,
            slot,
            max_tasks: self.cfg.max_tasks_per_child,
            max_memory: self.cfg.max_memory_per_child,
            address_space_limit: self.cfg.address_space_limit,
            initializer,
            max_frame: self.cfg.max_frame,
            host_flags: if self.cfg.bytes_base64 {
                billiard_plugin_api::HOST_FLAG_BYTES_BASE64
            } else {
                0
            },
        };
        let msg = ipc::encode_ctl(&ZygoteCmd::Spawn(params));
        let (gen, zfd) = (z.gen, z.fd.as_raw_fd());
        // A fresh scoreboard page for this worker alone (C3): the zygote
        // hands it to the worker and closes its copy; no other worker, and
        // nothing a dead worker's task left behind, can write it.
        let page = match self.board.renew(slot as usize) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!("cannot make a scoreboard page for a worker: {e}");
                self.free_slots.push(slot);
                return false;
            }
        };
        let sent = sys::send_with_fds(&zfd, &msg, &[page.as_raw_fd()]);
        self.next_worker += 1;
        if let Err(e) = sent {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                // The zygote's socket is full of earlier requests (hundreds
                // of workers at once): not an error. Its answers wake the
                // loop, which asks again.
                tracing::debug!("the zygote is busy; asking for more workers later");
            } else {
                tracing::warn!("cannot ask the zygote for a worker: {e}");
            }
            self.free_slots.push(slot);
            return false;
        }
        self.pending_spawns.insert(id, (slot, gen));
        true
    }

    fn zygote_readable(&mut self, token: Token) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // Looked up each time: handling a message may retire a zygote.
            let Some(zi) = self.zygotes.iter().position(|z| z.token == token) else {
                return;
            };
            let res = sys::recv_with_fds(&self.zygotes[zi].fd, &mut buf);
            let ready = self.zygotes[zi].ready;
            match res {
                // A restarted zygote's handshake (`pool::worker_exe`).
                Ok(Some((n, _))) if !ready && super::worker_exe::is_handshake(&buf[..n]) => {
                    let checked = super::worker_exe::resolve(self.cfg.worker_exe.as_ref())
                        .and_then(|(exe, source)| {
                            super::worker_exe::check_handshake(&buf[..n], &exe, source)
                        });
                    if let Err(why) = checked {
                        self.zygote_start_failed(zi, why);
                        return;
                    }
                }
                Ok(Some((n, fds))) => match ipc::decode_ctl::<ZygoteMsg>(&buf[..n]) {
                    Ok(msg) if !ready => match self.zygotes[zi].hello.feed(msg) {
                        Ok(Some(hello)) => {
                            let _ = self.zygote_hello(zi, hello);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            self.zygote_start_failed(zi, e);
                            return;
                        }
                    },
                    Ok(msg) => self.zygote_msg(msg, fds),
                    Err(e) if !ready => {
                        self.zygote_start_failed(zi, format!("garbled hello: {e}"));
                        return;
                    }
                    Err(e) => tracing::error!("garbled message from the zygote: {e}"),
                },
                Ok(None) if !ready => {
                    self.zygote_start_failed(zi, "it ended before it had loaded them".into());
                    return;
                }
                Ok(None) => {
                    self.zygote_died(zi);
                    return;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::error!("zygote socket: {e}");
                    self.zygote_died(zi);
                    return;
                }
            }
        }
    }

    fn zygote_msg(&mut self, msg: ZygoteMsg, fds: Vec<OwnedFd>) {
        match msg {
            ZygoteMsg::Spawned { worker, pid } => {
                let Some((slot, gen)) = self.pending_spawns.remove(&worker) else {
                    return;
                };
                let mut fds = fds.into_iter();
                let (Some(sock), Some(out), Some(pidfd)) = (fds.next(), fds.next(), fds.next())
                else {
                    // The kernel drops passed fds this process has no room
                    // for (MSG_CTRUNC): out of descriptors. Go on with the
                    // workers there are (no retry storm), or count a start
                    // failure when there are none.
                    self.free_slots.push(slot);
                    let why = format!(
                        "a new worker's fds did not arrive: {}",
                        sys::fd_shortage_hint()
                    );
                    let live = self
                        .workers
                        .values()
                        .filter(|w| !w.leaving && !w.broken)
                        .count();
                    if live > 0 {
                        if self.target > live {
                            tracing::error!(
                                "{why}; going on with {live} workers instead of {}",
                                self.target
                            );
                            self.target = live;
                        }
                    } else {
                        tracing::error!("{why}");
                        self.start_failed(why);
                    }
                    return;
                };
                tracing::debug!("{} started: pid {pid}, generation {gen}", WorkerId(worker));
                self.add_worker(WorkerId(worker), gen, slot, pid, sock, out, pidfd);
                if !self.zygote_is_current(gen) {
                    // Requested before a restart: it leaves at once.
                    if let Some(w) = self.workers.get_mut(&WorkerId(worker)) {
                        w.leaving = true;
                    }
                }
            }
            ZygoteMsg::SpawnFailed { worker, error } => {
                if let Some((slot, _)) = self.pending_spawns.remove(&worker) {
                    self.free_slots.push(slot);
                }
                self.start_failed(format!("fork failed: {error}"));
            }
            ZygoteMsg::Exited { pid, info } => {
                let wid = self.workers.values().find(|w| w.pid == pid).map(|w| w.id);
                if let Some(wid) = wid {
                    self.worker_exited(wid, Some(info));
                }
            }
            ZygoteMsg::Hello { .. } | ZygoteMsg::HelloPart { .. } => {}
        }
    }

    fn zygote_died(&mut self, zi: usize) {
        let z = &mut self.zygotes[zi];
        if !z.alive {
            return;
        }
        z.alive = false;
        let gen = z.gen;
        let _ = self
            .poll
            .registry()
            .deregister(&mut mio::unix::SourceFd(&z.fd.as_raw_fd()));
        let status = reap_zygote(z.child.take(), z.pid);
        let retired = z.retired;
        // Its workers outlive it while this supervisor lives (they watch
        // for that: `sys::watch_for_orphaning`), so a task that kills its
        // zygote costs no other job. Idle ones are ended now; busy ones
        // finish and report their job, then leave; nobody reports their
        // exit status, so their pidfds finalize them.
        let orphans: Vec<WorkerId> = self
            .workers
            .values()
            .filter(|w| w.gen == gen)
            .map(|w| w.id)
            .collect();
        let mut running = Vec::new();
        for wid in orphans {
            let Some(w) = self.workers.get_mut(&wid) else {
                continue;
            };
            match w.inflight.front() {
                Some(d) if !w.broken && w.kill.is_none() => {
                    w.leaving = true;
                    // The culprit may have finished already (its kill()
                    // returned) and its worker moved on: name that job too.
                    let before = self
                        .board
                        .slot(w.slot as usize)
                        .map(|s| s.finished.load(std::sync::atomic::Ordering::Acquire))
                        .filter(|&f| f != 0)
                        .map(|f| format!(", right after job {f}"))
                        .unwrap_or_default();
                    running.push(format!(
                        "job {} on worker {} (pid {}){before}",
                        d.first_job.0, w.id, w.pid
                    ));
                }
                _ => {
                    let _ = sys::pidfd_send_signal(&w.pidfd, sys::SIGKILL);
                    self.worker_exited(wid, None);
                }
            }
        }
        if !running.is_empty() {
            // A zygote runs no task code: a death by a signal while jobs
            // ran is most likely one of their tasks' doing.
            tracing::error!(
                "the zygote (pid {}) died ({status}) while these jobs were running: {}; one of their tasks may have killed it; they finish on their workers, which are then replaced",
                self.zygotes[zi].pid,
                running.join(", ")
            );
        }
        let lost: Vec<u64> = self
            .pending_spawns
            .iter()
            .filter(|(_, (_, g))| *g == gen)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            if let Some((slot, _)) = self.pending_spawns.remove(&id) {
                self.free_slots.push(slot);
            }
        }
        if retired || self.closing {
            return;
        }
        tracing::error!("the zygote died ({status}); starting a new one");
        self.start_failed(format!("the zygote died ({status})"));
        if self.broken.is_none() {
            // Started without waiting: running jobs keep being served while
            // it loads the plugins.
            if let Err(e) = self.begin_zygote(Start::Replace) {
                self.stop_forking(format!(
                    "the zygote died ({status}) and could not be restarted: {}",
                    e.message
                ));
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add_worker(
        &mut self,
        id: WorkerId,
        gen: u64,
        slot: u32,
        pid: i32,
        sock: OwnedFd,
        out: OwnedFd,
        pidfd: OwnedFd,
    ) {
        if let Err(e) =
            sys::set_nonblocking(&sock, true).and_then(|_| sys::set_nonblocking(&out, true))
        {
            tracing::error!("worker {id}: {e}");
            let _ = sys::pidfd_send_signal(&pidfd, sys::SIGKILL);
            return;
        }
        sys::set_socket_buffers(&sock, 1 << 20);
        let mut sock = mio::net::UnixStream::from(sock);
        let mut output = mio::unix::pipe::Receiver::from(out);
        let sock_token = self.token();
        let out_token = self.token();
        let pidfd_token = self.token();
        let reg = self.poll.registry();
        if reg
            .register(
                &mut sock,
                sock_token,
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
            || reg
                .register(&mut output, out_token, Interest::READABLE)
                .is_err()
            || reg
                .register(
                    &mut mio::unix::SourceFd(&pidfd.as_raw_fd()),
                    pidfd_token,
                    Interest::READABLE,
                )
                .is_err()
        {
            tracing::error!("worker {id}: cannot watch its sockets");
            let _ = sys::pidfd_send_signal(&pidfd, sys::SIGKILL);
            return;
        }
        self.tokens.insert(sock_token, (id, Source::Sock));
        self.tokens.insert(out_token, (id, Source::Output));
        self.tokens.insert(pidfd_token, (id, Source::Pidfd));
        self.stats.workers_started += 1;
        self.events.emit(Event::WorkerUp { worker: id, pid });
        self.workers.insert(
            id,
            Worker {
                id,
                gen,
                slot,
                pid,
                pidfd,
                pidfd_token,
                dead: false,
                sock,
                sock_token,
                output: Some((output, out_token)),
                out: OutputTail::default(),
                reader: FrameReader::new(self.cfg.max_frame),
                outq: VecDeque::new(),
                inflight: VecDeque::new(),
                head_since: None,
                leaving: false,
                exit_sent: false,
                broken: false,
                kill: None,
                lost_how: None,
                killed_at_eof: false,
                ready: false,
                refused: None,
                dispatches_done: 0,
                gate: Gate::new(self.waker.clone()),
                stream_paused: false,
                arena: None,
                want_out: 0,
                arena_failed: false,
            },
        );
    }

    // ----- scheduling -----------------------------------------------------

    fn schedule(&mut self) {
        if self.queue.is_empty() {
            self.retire_idle_leavers();
            return;
        }
        let prefetch = self.cfg.prefetch.max(1);
        // Least-loaded first: idle workers before ones with prefetched work.
        // Only workers that said READY: a job's time limits run from its
        // dispatch, and a worker's start-up (fork or exec, plugin load,
        // initializer) is not the job's time: a slow start must not end a
        // job as `time_limit` that never ran.
        for depth in 0..prefetch {
            let mut ids: Vec<WorkerId> = self
                .workers
                .values()
                .filter(|w| w.ready && !w.leaving && !w.broken && w.inflight.len() == depth)
                .map(|w| w.id)
                .collect();
            ids.sort();
            for wid in ids {
                // A dispatch can fail without reaching the worker (a task
                // gone after a reload, arguments over the frame limit):
                // then the worker is still free for the next one.
                loop {
                    let Some(d) = self.queue.pop_front() else {
                        return;
                    };
                    self.send_dispatch(wid, d);
                    let still_free = self
                        .workers
                        .get(&wid)
                        .is_some_and(|w| w.inflight.len() == depth && !w.broken);
                    if !still_free {
                        break;
                    }
                }
            }
        }
        self.retire_idle_leavers();
    }

    /// Maps a dispatch's task onto the plugin generation of the worker that
    /// will run it, by name: a reload may have reordered, added or removed
    /// tasks, so indices of another generation are never sent as they are.
    fn resolve_for(&self, d: &mut Dispatch, worker_gen: u64) -> Result<(), TaskError> {
        if d.gen == 0 || d.gen == worker_gen {
            return Ok(());
        }
        let unknown = |why: String| TaskError::new(ErrorKind::UnknownTask, why);
        let (Some(from), Some(to)) = (
            self.generations.get(&d.gen),
            self.generations.get(&worker_gen),
        ) else {
            return Err(unknown(format!(
                "the job names a task of plugin generation {}, which this pool does not know",
                d.gen
            )));
        };
        let Some(plugin) = from.get(d.plugin as usize) else {
            return Err(unknown(format!("no plugin #{} is loaded", d.plugin)));
        };
        let Some(task) = plugin.tasks.get(d.task as usize) else {
            return Err(unknown(format!(
                "plugin `{}` has no task #{}",
                plugin.name, d.task
            )));
        };
        let Some((pi, now)) = to.iter().enumerate().find(|(_, p)| p.name == plugin.name) else {
            return Err(unknown(format!(
                "plugin `{}` is gone since the plugins were reloaded",
                plugin.name
            )));
        };
        let Some(ti) = now.task_index(&task.name) else {
            return Err(unknown(format!(
                "task `{}.{}` is gone since the plugins were reloaded ({} {} now has: {})",
                plugin.name,
                task.name,
                now.name,
                now.version,
                now.tasks
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        d.plugin = pi as u16;
        d.task = ti;
        d.gen = worker_gen;
        Ok(())
    }

    fn send_dispatch(&mut self, wid: WorkerId, mut d: Dispatch) {
        let worker_gen = self.workers.get(&wid).map(|w| w.gen).unwrap_or(0);
        if let Err(e) = self.resolve_for(&mut d, worker_gen) {
            self.fail_dispatch(d, e);
            return;
        }
        // A chunk under a time limit goes out item by item (pipelined to
        // the same worker): each job gets its own deadline, the jobs that
        // finished before a kill keep their results and the ones behind it
        // are resent, exactly as for single jobs. The price is one result
        // frame per job instead of one per chunk.
        let limits = d.limits.or(&self.cfg);
        // A streaming task runs one call per job (its items are the job's).
        let streaming = d.count > 1 && self.is_streaming(&d, worker_gen);
        if d.count > 1 && (streaming || limits.soft.is_some() || limits.hard.is_some()) {
            if let Some(items) = split_chunk(&mut d) {
                for item in items {
                    self.send_dispatch(wid, item);
                }
                return;
            }
        }
        let h = ipc::RunHeader {
            job: d.first_job.0,
            plugin: d.plugin,
            task: d.task,
            codec: d.codec,
            attempt: d.attempt,
            count: d.count,
        };
        if d.payload.len() + ipc::RUN_HEADER > self.cfg.max_frame {
            let msg = format!(
                "the arguments take {} bytes, over the pool's frame limit of {} bytes",
                d.payload.len(),
                self.cfg.max_frame
            );
            self.fail_dispatch(d, TaskError::new(ErrorKind::BadArgs, msg));
            return;
        }
        let header = match ipc::encode_run(&h, d.payload.len()) {
            Ok(h) => h,
            Err(e) => {
                self.fail_dispatch(
                    d,
                    TaskError::new(
                        ErrorKind::BadArgs,
                        format!("arguments too large to send: {e}"),
                    ),
                );
                return;
            }
        };
        if tracing::enabled!(tracing::Level::DEBUG) {
            let task = self
                .generations
                .get(&worker_gen)
                .and_then(|g| g.get(d.plugin as usize))
                .and_then(|p| Some((p, p.tasks.get(d.task as usize)?)))
                .map_or_else(
                    || format!("plugin {} task {}", d.plugin, d.task),
                    |(p, t)| format!("{}.{}", p.name, t.name),
                );
            tracing::debug!(
                "{} ({} item{}, attempt {}) to {wid} (pid {}): {task}",
                d.first_job,
                d.count,
                if d.count == 1 { "" } else { "s" },
                d.attempt,
                self.workers.get(&wid).map_or(0, |w| w.pid),
            );
        }
        let item = match self.arena_put(wid, &d) {
            // Large arguments: in the worker's arena, named by the frame.
            Some(at) => OutItem {
                header: ipc::encode_run_shm(&h, at).to_vec(),
                payload: None,
                idx: 0,
                off: 0,
                fds: Vec::new(),
            },
            None => OutItem {
                header: header.to_vec(),
                payload: Some(d.payload.clone()),
                idx: 0,
                off: 0,
                fds: Vec::new(),
            },
        };
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        w.outq.push_back(item);
        let first = w.inflight.is_empty();
        w.inflight.push_back(d);
        if first {
            self.head_started(wid);
        }
        self.flush(wid);
    }

    /// Puts a dispatch's arguments in the worker's shared-memory arena if
    /// they are at least `shm_threshold` long; `None`: they go through the
    /// socket. The arena is created (or replaced by a bigger one) only
    /// while the worker has nothing in flight, its ARENA frame queued ahead
    /// of the job's; a busy worker whose arena is full gets the socket.
    fn arena_put(&mut self, wid: WorkerId, d: &Dispatch) -> Option<ipc::ShmRef> {
        let threshold = self.cfg.shm_threshold?;
        let w = self.workers.get_mut(&wid)?;
        let len = d.payload.len();
        let big = len >= threshold;
        if big {
            if let Some(at) = w
                .arena
                .as_mut()
                .and_then(|a| a.put(d.first_job.0, &d.payload))
            {
                return Some(at);
            }
        }
        let (in_room, out_room) = w
            .arena
            .as_ref()
            .map_or((0, 0), |a| (a.in_room(), a.out_room()));
        let need_in = if big { len } else { 0 };
        let grow = (big && in_room < len) || w.want_out > out_room;
        if !grow || w.arena_failed || w.broken || !w.inflight.is_empty() || !w.outq.is_empty() {
            return None;
        }
        let in_cap = shm::cap_for(need_in).max(in_room + shm::HEADER);
        let out_cap = shm::cap_for(w.want_out.max(need_in)).max(out_room);
        let made = shm::HostArena::new(in_cap, out_cap).and_then(|a| {
            let fds = a.fds()?;
            Ok((a, fds))
        });
        let (arena, fds) = match made {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(
                    "worker {wid}: cannot create a shared-memory arena ({in_cap} + {out_cap} bytes): {e}; its large payloads go through its socket"
                );
                w.arena_failed = true;
                return None;
            }
        };
        w.outq.push_back(OutItem {
            header: ipc::encode_arena(&arena.info(threshold)).to_vec(),
            payload: None,
            idx: 0,
            off: 0,
            fds,
        });
        // The old arena has nothing in flight (the worker is idle).
        let arena = w.arena.insert(arena);
        if big {
            arena.put(d.first_job.0, &d.payload)
        } else {
            None
        }
    }

    /// Whether the dispatch's task (indices of generation `gen` once
    /// resolved) streams items.
    fn is_streaming(&self, d: &Dispatch, gen: u64) -> bool {
        let gen = if d.gen == 0 { gen } else { d.gen };
        self.generations
            .get(&gen)
            .and_then(|ps| ps.get(d.plugin as usize))
            .and_then(|p| p.tasks.get(d.task as usize))
            .is_some_and(|t| t.streaming)
    }

    /// The job at the head of a worker's queue starts now: arm its timers.
    fn head_started(&mut self, wid: WorkerId) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        let Some(d) = w.inflight.front() else {
            w.head_since = None;
            return;
        };
        let now = Instant::now();
        w.head_since = Some(now);
        let limits = d.limits.or(&self.cfg);
        // A chunk gets the limit once per item, saturating; a deadline the
        // clock cannot hold never comes (no timer), it never panics here.
        let scale = d.count.max(1);
        let (job, count) = (d.first_job, d.count);
        let at = |limit: Option<Duration>| {
            limit.and_then(|l| crate::bounds::deadline(now, crate::bounds::scaled(l, scale)))
        };
        if let Some(t) = at(limits.soft) {
            self.add_timer((t, TimerKind::Soft(wid, job)));
        }
        if let Some(t) = at(limits.hard) {
            self.add_timer((t, TimerKind::Hard(wid, job)));
        }
        self.events.emit(Event::JobStarted {
            job,
            worker: wid,
            count,
        });
    }

    fn flush(&mut self, wid: WorkerId) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        if w.broken {
            return;
        }
        while let Some(item) = w.outq.front_mut() {
            let payload: &[u8] = item.payload.as_deref().map(|p| p.as_slice()).unwrap_or(&[]);
            let bufs: [&[u8]; 2] = [&item.header, payload];
            let written = if item.fds.is_empty() {
                sys::writev_from(&w.sock, &bufs, item.idx, item.off)
            } else {
                // An ARENA frame: its memfds go with its first byte.
                let raw: Vec<i32> = item.fds.iter().map(|f| f.as_raw_fd()).collect();
                let n = sys::shm::send_with_fds_partial(&w.sock, &bufs, &raw);
                if n.is_ok() {
                    item.fds.clear();
                }
                n
            };
            match written {
                Ok(n) => {
                    sys::advance(&bufs, &mut item.idx, &mut item.off, n);
                    if item.idx >= bufs.len() {
                        w.outq.pop_front();
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    // Broken pipe: the worker is gone; its exit report follows.
                    w.broken = true;
                    w.outq.clear();
                    return;
                }
            }
        }
    }

    /// Idle workers that must leave get their EXIT frame.
    fn retire_idle_leavers(&mut self) {
        let ids: Vec<WorkerId> = self
            .workers
            .values()
            .filter(|w| w.leaving && !w.exit_sent && !w.broken && w.inflight.is_empty())
            .map(|w| w.id)
            .collect();
        for wid in ids {
            if let Some(w) = self.workers.get_mut(&wid) {
                w.exit_sent = true;
                w.outq.push_back(OutItem {
                    header: ipc::encode_exit().to_vec(),
                    payload: None,
                    idx: 0,
                    off: 0,
                    fds: Vec::new(),
                });
            }
            self.flush(wid);
        }
    }

    // ----- results --------------------------------------------------------

    fn worker_readable(&mut self, wid: WorkerId) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        if w.stream_paused {
            // The consumer of its stream is behind: leave the socket full
            // (the worker's writes block); `resume_streams` reads on.
            return;
        }
        let open = w.reader.fill(&mut ReadAdapter(&w.sock)).unwrap_or_default();
        loop {
            let Some(w) = self.workers.get_mut(&wid) else {
                return;
            };
            let frame = match w.reader.next_frame() {
                Ok(Some(Frame::Done(h, payload))) => {
                    // A large result that found no room in an arena: the
                    // next arena is made big enough for it.
                    if self.cfg.shm_threshold.is_some_and(|t| payload.len() >= t) {
                        w.want_out = w.want_out.max(payload.len());
                    }
                    Ok((h, payload.to_vec()))
                }
                Ok(Some(Frame::DoneShm(h, at))) => match w.arena.as_mut() {
                    // The range is checked, then the bytes copied out once.
                    Some(a) => a.take(at, self.cfg.max_frame).map(|p| (h, p)),
                    None => Err("a shared-memory result, but it has no arena".to_string()),
                },
                Ok(Some(Frame::Items(job, count, records))) => {
                    let records = records.to_vec();
                    if self.items(wid, job, count, records) {
                        // Paused: the frames already read wait in the
                        // reader, and EOF is seen once it resumes.
                        return;
                    }
                    continue;
                }
                Ok(Some(Frame::Progress(job, done, total))) => {
                    self.progress(wid, job, done, total);
                    continue;
                }
                Ok(Some(Frame::Ready)) => {
                    w.ready = true;
                    continue;
                }
                Ok(None) => break,
                Ok(Some(_)) => Err("a frame only the supervisor may send".to_string()),
                Err(FrameError::TooLarge(n)) => Err(format!(
                    "a frame of {n} bytes, over the pool's frame limit of {} bytes",
                    self.cfg.max_frame
                )),
                Err(e) => Err(e.to_string()),
            };
            match frame {
                Ok((h, payload)) => self.done(wid, h, payload),
                Err(why) => {
                    self.protocol_error(wid, &why);
                    return;
                }
            }
        }
        if !open {
            if let Some(w) = self.workers.get_mut(&wid) {
                // EOF: the worker exited or closed its socket. The zygote's
                // exit report finalizes it; make sure it really goes.
                w.broken = true;
                let kill_later = w.kill.is_none() && !w.inflight.is_empty();
                let _ = self.poll.registry().deregister(&mut w.sock);
                if kill_later {
                    // A worker that is exiting (killed from outside, or its
                    // task ended the process) closes its socket just before
                    // it is gone: give it a moment, so its own cause is the
                    // one reported. One still alive after that lost its
                    // socket mid-job (the task closed it) and is killed.
                    let at = crate::bounds::saturating_deadline(Instant::now(), EOF_KILL_GRACE);
                    self.add_timer((at, TimerKind::EofKill(wid)));
                }
            }
        }
    }

    /// Stream items of the job `wid` runs: on to the job's consumer as one
    /// batch. Returns true if the worker is now paused (its consumer holds
    /// more than the high-water mark of its items).
    fn items(&mut self, wid: WorkerId, job: u64, count: u32, records: Vec<u8>) -> bool {
        let running = self
            .workers
            .get(&wid)
            .and_then(|w| w.inflight.front())
            .is_some_and(|d| d.first_job.0 == job && d.count == 1);
        if !running {
            self.protocol_error(
                wid,
                &format!("stream items for job {job}, which it was not running"),
            );
            return false;
        }
        let Some(w) = self.workers.get_mut(&wid) else {
            return false;
        };
        let Some(d) = w.inflight.front() else {
            return false;
        };
        if d.cancelled {
            // Terminated on request: nothing more of it is delivered.
            return false;
        }
        match &d.reply {
            Reply::Stream { tx, first_index } => {
                let credit = w.gate.take(records.len());
                let _ = tx.send(ChunkResult {
                    first_index: *first_index,
                    count: 0,
                    body: ChunkBody::Items(ItemBatch::new(count, d.codec, records, Some(credit))),
                });
            }
            // A single job's handle has nowhere to put items: they are
            // dropped (`apply_stream` runs as a stream).
            Reply::Slot(_) => return false,
        }
        if w.gate.should_pause() {
            w.stream_paused = true;
            self.paused_streams.push(wid);
            return true;
        }
        false
    }

    /// A progress report of the job `wid` runs.
    fn progress(&mut self, wid: WorkerId, job: u64, done: u64, total: u64) {
        let Some(d) = self.workers.get(&wid).and_then(|w| w.inflight.front()) else {
            return;
        };
        if d.first_job.0 != job || d.cancelled {
            // A report racing its job's end (or a batch item's): stale.
            return;
        }
        self.events.emit(Event::JobProgress {
            job: JobId(job),
            done,
            total,
        });
        match &d.reply {
            Reply::Slot(slot) => {
                if let Some(hook) = slot.progress.set(done, total) {
                    let _ = self.callbacks.send(Box::new(move || hook(done, total)));
                }
            }
            Reply::Stream { tx, first_index } => {
                let _ = tx.send(ChunkResult {
                    first_index: *first_index,
                    count: 0,
                    body: ChunkBody::Progress(done, total),
                });
            }
        }
    }

    /// Reads on from the workers whose stream consumers caught up.
    fn resume_streams(&mut self) {
        if self.paused_streams.is_empty() {
            return;
        }
        let mut ready = Vec::new();
        self.paused_streams
            .retain(|wid| match self.workers.get_mut(wid) {
                Some(w) if w.gate.is_paused() => true,
                Some(w) => {
                    w.stream_paused = false;
                    ready.push(*wid);
                    false
                }
                None => false,
            });
        for wid in ready {
            self.worker_readable(wid);
        }
    }

    fn protocol_error(&mut self, wid: WorkerId, why: &str) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        tracing::warn!(
            "worker {} (pid {}) broke the protocol: {why}; killing it",
            w.id,
            w.pid
        );
        w.out
            .tail
            .push_back(format!("[billiard: protocol error from the worker: {why}]"));
        w.broken = true;
        w.refused.get_or_insert_with(|| why.to_string());
        w.kill.get_or_insert(Kill::Protocol);
        let _ = self.poll.registry().deregister(&mut w.sock);
        let _ = sys::kill_group(w.pid, sys::SIGKILL);
        let _ = sys::pidfd_send_signal(&w.pidfd, sys::SIGKILL);
    }

    fn done(&mut self, wid: WorkerId, h: ipc::DoneHeader, payload: Vec<u8>) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        let matches = w
            .inflight
            .front()
            .is_some_and(|d| d.first_job.0 == h.job && d.count == h.count);
        if !matches {
            self.protocol_error(
                wid,
                &format!("result for job {} which it was not running", h.job),
            );
            return;
        }
        let Some(mut d) = w.inflight.pop_front() else {
            return;
        };
        if let Some(a) = w.arena.as_mut() {
            a.finished(d.first_job.0);
            if w.inflight.is_empty() {
                a.trim_idle();
            }
        }
        w.dispatches_done += 1;
        if h.flags & ipc::FLAG_RETIRING != 0 {
            w.leaving = true;
            w.exit_sent = true; // it exits by itself
            self.stats.recycled += 1;
        }
        let started = w.head_since;
        self.head_started(wid);
        let elapsed = started.map(|s| s.elapsed()).unwrap_or_default();
        self.events.emit(Event::JobFinished {
            job: d.first_job,
            worker: wid,
            count: d.count,
            elapsed,
        });
        if d.count == 1 {
            let outcome = match Status::from_u8(h.status) {
                Some(status) => crate::plugin::outcome(status, payload),
                None => Err(TaskError::new(
                    ErrorKind::WorkerLost,
                    format!("the worker reported an unknown status {}", h.status),
                )),
            };
            self.deliver(&mut d, 0, outcome);
        } else {
            self.deliver_records(d, payload);
        }
    }

    /// Delivers a batch result in one piece (streams) or item by item.
    fn deliver_records(&mut self, mut d: Dispatch, payload: Vec<u8>) {
        let mut ok = 0u32;
        let mut n = 0u32;
        let mut malformed = false;
        let mut failed: Vec<ErrorKind> = Vec::new();
        for rec in codec::result_records(&payload) {
            match rec.and_then(|(status, _)| Status::from_u8(status)) {
                Some(Status::Ok) => ok += 1,
                Some(status) => failed.extend(ErrorKind::from_status(status)),
                None => malformed = true,
            }
            n += 1;
        }
        if malformed || n != d.count {
            // Undo the per-kind counts: every item fails the same way.
            let err = TaskError::new(
                ErrorKind::WorkerLost,
                "the worker returned a malformed batch result",
            );
            self.fail_dispatch(d, err);
            return;
        }
        if d.cancelled {
            let err = TaskError::new(
                ErrorKind::Terminated,
                format!("job {} was terminated on request", d.first_job.0),
            );
            self.fail_dispatch(d, err);
            return;
        }
        self.stats.succeeded += ok as u64;
        for kind in failed {
            *self.stats.failed.entry(kind).or_default() += 1;
        }
        match &d.reply {
            Reply::Stream { tx, first_index } => {
                let _ = tx.send(ChunkResult {
                    first_index: *first_index,
                    count: d.count,
                    body: ChunkBody::Records(payload),
                });
                d.delivered = d.count;
            }
            Reply::Slot(_) => {
                // Not produced by the API (slots are single jobs); handle anyway.
                let outcomes: Vec<Outcome> = codec::result_records(&payload)
                    .map(
                        |r| match r.and_then(|(st, b)| Some((Status::from_u8(st)?, b))) {
                            Some((st, b)) => crate::plugin::outcome(st, b.to_vec()),
                            None => Err(TaskError::new(
                                ErrorKind::WorkerLost,
                                "malformed batch result",
                            )),
                        },
                    )
                    .collect();
                for (i, o) in outcomes.into_iter().enumerate() {
                    self.send_outcome(&mut d, i as u32, o);
                }
            }
        }
    }

    /// Sends item `i` of a dispatch its outcome (or `terminated` if it was
    /// cancelled meanwhile) and counts it.
    fn deliver(&mut self, d: &mut Dispatch, i: u32, outcome: Outcome) {
        let outcome = if d.cancelled {
            Err(TaskError::new(
                ErrorKind::Terminated,
                format!("job {} was terminated on request", d.first_job.0 + i as u64),
            ))
        } else {
            outcome
        };
        match &outcome {
            Ok(_) => self.stats.succeeded += 1,
            Err(e) => *self.stats.failed.entry(e.kind).or_default() += 1,
        }
        self.send_outcome(d, i, outcome);
    }

    fn send_outcome(&mut self, d: &mut Dispatch, i: u32, outcome: Outcome) {
        d.delivered = d.delivered.max(i + 1);
        match &d.reply {
            Reply::Slot(slot) => {
                if let Some((cb, outcome)) = slot.fill(outcome) {
                    let _ = self.callbacks.send(Box::new(move || cb(&outcome)));
                }
            }
            Reply::Stream { tx, first_index } => {
                let _ = tx.send(ChunkResult {
                    first_index: first_index + i as u64,
                    count: 1,
                    body: ChunkBody::One(outcome),
                });
            }
        }
    }

    /// Every item of `d` fails with `err`: one message for a stream chunk.
    fn fail_dispatch(&mut self, mut d: Dispatch, err: TaskError) {
        let remaining = d.count - d.delivered;
        *self.stats.failed.entry(err.kind).or_default() += remaining as u64;
        match &d.reply {
            Reply::Stream { tx, first_index } => {
                let first_index = first_index + d.delivered as u64;
                let _ = tx.send(ChunkResult {
                    first_index,
                    count: remaining,
                    body: ChunkBody::Failed(err),
                });
                d.delivered = d.count;
            }
            Reply::Slot(_) => {
                for i in d.delivered..d.count {
                    self.send_outcome(&mut d, i, Err(err.clone()));
                }
            }
        }
    }

    /// Takes in what a worker wrote to stdout/stderr: the last lines are
    /// kept for its crash report and logged (rate-limited). Work per call
    /// is bounded ([`OUTPUT_BUDGET`]) and linear in the bytes read, so a
    /// task flooding its output cannot stall the event loop; a worker with
    /// more to read goes on the backlog and is served again next turn.
    fn output_readable(&mut self, wid: WorkerId) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        let Some((pipe, _)) = w.output.as_mut() else {
            return;
        };
        let mut buf = [0u8; 64 * 1024];
        let mut closed = false;
        let mut taken = 0usize;
        let mut more = false;
        loop {
            if taken >= OUTPUT_BUDGET {
                more = true;
                break;
            }
            match pipe.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    taken += n;
                    w.out.take(&buf[..n], w.pid);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            w.out.finish(w.pid);
            if let Some((mut pipe, token)) = w.output.take() {
                let _ = self.poll.registry().deregister(&mut pipe);
                self.tokens.remove(&token);
            }
        } else if more && !self.output_backlog.contains(&wid) {
            self.output_backlog.push(wid);
        }
    }

    // ----- deaths ---------------------------------------------------------

    /// The worker's pidfd turned readable: the process is gone. Its zygote
    /// normally reports how (signal, rusage) within microseconds; the
    /// death is made final after a grace period even without that report.
    fn worker_pidfd_readable(&mut self, wid: WorkerId) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        if w.dead {
            return;
        }
        w.dead = true;
        let _ = self
            .poll
            .registry()
            .deregister(&mut mio::unix::SourceFd(&w.pidfd.as_raw_fd()));
        self.add_timer((
            crate::bounds::saturating_deadline(Instant::now(), EXIT_REPORT_GRACE),
            TimerKind::ExitReport(wid),
        ));
    }

    /// A worker died and its zygote did not say how within the grace
    /// period: the zygote is stopped or wedged. Finalize the worker without
    /// the report, and replace a zygote that is stopped.
    fn exit_report_overdue(&mut self, wid: WorkerId) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return; // the report came
        };
        let gen = w.gen;
        w.lost_how = Some(format!(
            "died (its zygote did not report how within {})",
            humantime::format_duration(EXIT_REPORT_GRACE)
        ));
        self.worker_exited(wid, None);
        let Some(z) = self.zygotes.iter().find(|z| z.gen == gen && z.alive) else {
            return;
        };
        if let Some(state @ ('T' | 't')) = sys::process_state(z.pid) {
            tracing::error!(
                "the zygote (pid {}) is stopped (state {state}) and cannot report or fork workers; killing it",
                z.pid
            );
            let _ = sys::kill_pid(z.pid, sys::SIGKILL);
        }
    }

    fn worker_exited(&mut self, wid: WorkerId, info: Option<ExitInfo>) {
        // Results the worker wrote before it died still count: the exit
        // report can overtake them in the event loop. A paused stream is
        // read to its end now (what is left is at most a socket buffer).
        if let Some(w) = self.workers.get_mut(&wid) {
            w.stream_paused = false;
            w.gate.unpause();
        }
        self.worker_readable(wid);
        // Collect the last words first: they explain the death.
        self.output_readable(wid);
        let Some(mut w) = self.workers.remove(&wid) else {
            return;
        };
        let reg = self.poll.registry();
        let _ = reg.deregister(&mut w.sock);
        self.tokens.remove(&w.sock_token);
        let _ = reg.deregister(&mut mio::unix::SourceFd(&w.pidfd.as_raw_fd()));
        self.tokens.remove(&w.pidfd_token);
        if let Some((mut pipe, token)) = w.output.take() {
            let _ = reg.deregister(&mut pipe);
            self.tokens.remove(&token);
        }
        // Grandchildren a task spawned die with the worker. With an exit
        // report the zygote has done it already, before reaping the worker
        // (after that the pid may be reused: killing its group here could
        // hit a stranger). Without one the worker is still an unreaped
        // zombie of its zygote (stopped, or gone with its subreaper duty
        // passed on), so its pid cannot have been reused yet.
        if info.is_none() {
            let _ = sys::kill_group(w.pid, sys::SIGKILL);
        }
        let slot = self.board.slot(w.slot as usize);
        let running = slot
            .map(|s| s.running.swap(0, std::sync::atomic::Ordering::AcqRel))
            .unwrap_or(0);
        let finished = slot
            .map(|s| s.finished.load(std::sync::atomic::Ordering::Acquire))
            .unwrap_or(0);
        if let Some(s) = slot {
            s.stop_job.store(0, std::sync::atomic::Ordering::Release);
            s.finished.store(0, std::sync::atomic::Ordering::Release);
        }
        self.free_slots.push(w.slot);
        let how = info
            .as_ref()
            .map(ExitInfo::describe)
            .or_else(|| w.lost_how.take())
            .unwrap_or_else(|| "was lost when its zygote died".into());
        let clean_exit = info.as_ref().is_some_and(|i| i.code == Some(0)) && w.inflight.is_empty();
        tracing::debug!(
            "{wid} (pid {}) ended: {how}; {} dispatch(es) in flight, {} done",
            w.pid,
            w.inflight.len(),
            w.dispatches_done
        );
        self.events.emit(Event::WorkerDown {
            worker: wid,
            pid: w.pid,
            reason: how.clone(),
        });
        if !clean_exit {
            self.stats.worker_deaths += 1;
        }
        // Whether the head job ran: the worker marks it running when the
        // task starts and finished when it returns. A worker that dies after
        // its task returned (the task closed the worker's socket, a child
        // holds it) has cleared `running` but recorded `finished`: that job
        // ran, its side effects happened, and it must never be resent.
        let head_finished = w
            .inflight
            .front()
            .is_some_and(|d| finished != 0 && d.contains(JobId(finished)));
        let head_started = head_finished
            || w.inflight
                .front()
                .is_some_and(|d| running != 0 && d.contains(JobId(running)));
        // A death at start is one before the worker said READY: no job's
        // task had run in it (the board cannot say otherwise: a task can
        // rewrite its own page, never unsend READY).
        let died_at_start = !w.ready && w.kill.is_none() && !clean_exit && !w.leaving;
        let mut inflight = std::mem::take(&mut w.inflight);
        if let Some(mut head) = inflight.pop_front() {
            let elapsed = w.head_since.map(|s| s.elapsed()).unwrap_or_default();
            self.events.emit(Event::JobFinished {
                job: head.first_job,
                worker: wid,
                count: head.count,
                elapsed,
            });
            // Whether the job had started comes from the worker's own page,
            // which its task can rewrite ("not started" forged to be run
            // again): so every death of a set-up worker is charged to the
            // job it was running, and a job is resent at most
            // MAX_UNSTARTED_RETRIES times (C3). Deaths at start are bounded
            // by the start-failure limit instead; no task can fake one.
            if died_at_start
                || (!head_started
                    && w.kill.is_none()
                    && head.attempt < head.retries.saturating_add(MAX_UNSTARTED_RETRIES))
            {
                if !died_at_start {
                    head.attempt += 1;
                }
                inflight.push_front(head);
            } else {
                let mut err =
                    self.death_error(&w, &head, info.as_ref(), &how, head_started, head_finished);
                if let Some(note) = self.plugin_file_overwritten(w.gen, info.as_ref()) {
                    err.message.push_str(&note);
                }
                self.fail_dispatch(head, err);
            }
        }
        // Jobs queued behind (prefetch) never started: run them elsewhere.
        for d in inflight.into_iter().rev() {
            self.queue.push_front(d);
        }

        if died_at_start {
            let tail = w.out.report();
            self.start_failed(format!(
                "a worker died before running any job ({how}){}",
                if tail.is_empty() {
                    String::new()
                } else {
                    format!("; its last output:\n{tail}")
                }
            ));
        }
        self.maybe_finish_zygote(w.gen);
    }

    /// After a crash: was a plugin file of the worker's generation written
    /// over in place? Then every worker forked from that zygote will crash
    /// too: say so (once), and reload the files (a rolling restart), which
    /// is what the operator meant by replacing it.
    fn plugin_file_overwritten(&mut self, gen: u64, info: Option<&ExitInfo>) -> Option<String> {
        let crash = info.and_then(|i| i.signal).is_some_and(|sig| {
            [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGABRT].contains(&sig)
        });
        if !crash {
            return None;
        }
        let zi = self.zygotes.iter().position(|z| z.gen == gen)?;
        let changed = self.cfg.plugins.iter().enumerate().find_map(|(i, path)| {
            let then = self.zygotes[zi].stamps.get(i)?.as_ref()?;
            let now = FileStamp::of(path)?;
            then.overwritten_by(&now)
                .then(|| path.display().to_string())
        })?;
        let note = format!(
            "; the plugin file {changed} was overwritten in place while the pool had it loaded, \
             which crashes the workers forked from it: replace plugin files by renaming \
             (`cp new.so x.so.tmp && mv x.so.tmp x.so`), then reload (SIGHUP)"
        );
        let due = match self.zygotes[zi].overwrite_reload {
            Some(t) => t.elapsed() >= OVERWRITE_RELOAD_INTERVAL,
            None => true,
        };
        if due {
            self.zygotes[zi].overwrite_reload = Some(Instant::now());
            tracing::error!(
                "the plugin file {changed} was overwritten in place while loaded; its workers crash. Reloading the plugin files now (replace them with mv next time)"
            );
            if self.zygotes[zi].ready && !self.zygotes[zi].retired {
                self.restart(None);
            }
        }
        Some(note)
    }

    fn death_error(
        &self,
        w: &Worker,
        head: &Dispatch,
        info: Option<&ExitInfo>,
        how: &str,
        started: bool,
        finished: bool,
    ) -> TaskError {
        match w.kill {
            Some(Kill::TimeLimit(job)) if head.contains(job) => {
                let limit = head.limits.or(&self.cfg).hard.unwrap_or_default();
                return TaskError::new(
                    ErrorKind::TimeLimit,
                    format!(
                        "job {} exceeded its hard time limit of {}; worker {} (pid {}) was killed and replaced",
                        head.first_job.0,
                        humantime::format_duration(limit),
                        w.id,
                        w.pid
                    ),
                );
            }
            Some(Kill::Terminated(job)) if head.contains(job) => {
                return TaskError::new(
                    ErrorKind::Terminated,
                    format!(
                        "job {} was terminated on request; its worker was killed and replaced",
                        job.0
                    ),
                );
            }
            Some(Kill::Shutdown) => {
                return TaskError::new(ErrorKind::Terminated, "the pool was terminated")
            }
            _ => {}
        }
        let mut msg = format!(
            "worker {} (pid {}) {how} while running job {}",
            w.id, w.pid, head.first_job.0
        );
        if head.count > 1 {
            msg.push_str(&format!(" (a chunk of {} jobs)", head.count));
        }
        if let Some(i) = info {
            msg.push_str(&format!(
                "; peak memory {} KiB, cpu {:.3}s",
                i.max_rss_kib,
                i.cpu_time().as_secs_f64()
            ));
            if let (Some(limit), Some(sig)) = (self.cfg.address_space_limit, i.signal) {
                if sig == libc::SIGABRT || sig == libc::SIGSEGV {
                    msg.push_str(&format!(
                        "; the worker's address-space cap of {} may have been reached",
                        bytesize_text(limit)
                    ));
                }
            }
        }
        // What the pool refused (a frame over the limit, a forged range):
        // the cause, not a guess about the socket (C14).
        let refused = w
            .refused
            .as_deref()
            .filter(|_| w.kill == Some(Kill::Protocol));
        match (refused, finished) {
            (Some(why), true) => msg.push_str(&format!(
                "; the task had finished, but the worker sent malformed data on its socket \
                 ({why}) and was killed; it is not run again"
            )),
            (None, true) => msg.push_str(
                "; the task had finished, but its result was lost (the worker died before sending it; \
                 did the task close or hand out the worker's socket, fd 3?); it is not run again",
            ),
            (_, false) if started => msg.push_str("; the task had started"),
            (_, false) => msg.push_str("; the task had NOT started (safe to retry)"),
        }
        match refused {
            Some(why) if !finished => msg.push_str(&format!(
                "; the worker sent malformed data on its socket ({why}) and was killed"
            )),
            None if w.kill == Some(Kill::Protocol) => {
                msg.push_str("; the worker sent malformed data on its socket and was killed")
            }
            _ => {}
        }
        if w.killed_at_eof && info.is_some_and(|i| i.signal == Some(libc::SIGKILL)) {
            msg.push_str(
                "; the pool killed it because its socket to the pool closed mid-job \
                 (the task closed or replaced fd 3)",
            );
        } else if info.is_some_and(|i| i.signal == Some(libc::SIGKILL)) && w.kill.is_none() {
            msg.push_str(&format!(
                "; the SIGKILL came from outside the pool{}",
                if sys::oom_kills_since_start() {
                    " (the kernel's OOM killer has killed processes of this cgroup: \
                     the worker most likely ran out of memory)"
                } else {
                    ""
                }
            ));
        }
        if !w.out.tail.is_empty() {
            msg.push_str("; last output:\n");
            msg.push_str(&w.out.report());
        }
        TaskError::new(ErrorKind::WorkerLost, msg)
    }

    /// Counts a worker (or zygote) that died before doing any work; past
    /// the limit the pool stops forking and fails what is pending.
    fn start_failed(&mut self, why: String) {
        let now = Instant::now();
        self.start_failures.push_back(now);
        while self
            .start_failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.cfg.restart_window)
        {
            self.start_failures.pop_front();
        }
        self.stats.start_failures += 1;
        if self.start_failures.len() as u32 >= self.cfg.max_start_failures {
            self.stop_forking(format!(
                "the pool stopped starting workers: {} died at start within {}; last: {why}",
                self.start_failures.len(),
                humantime::format_duration(self.cfg.restart_window)
            ));
        }
    }

    fn stop_forking(&mut self, why: String) {
        tracing::error!("{why}");
        self.broken = Some(why.clone());
        let queued: Vec<Dispatch> = self.queue.drain(..).collect();
        for d in queued {
            self.fail_dispatch(d, TaskError::new(ErrorKind::WorkerLost, why.clone()));
        }
    }

    // ----- timers, termination, resizing ----------------------------------

    /// Arms a timer. Timers are not cancelled when their job ends (they
    /// are checked when they fire), so the heap is compacted when it grows
    /// past twice its live size: a long time limit over millions of short
    /// jobs must not pile up millions of stale entries.
    fn add_timer(&mut self, t: (Instant, TimerKind)) {
        self.timers.push(Reverse(t));
        if self.timers.len() > self.timers_compact_at {
            let live: Vec<Reverse<(Instant, TimerKind)>> = std::mem::take(&mut self.timers)
                .into_iter()
                .filter(|Reverse((_, kind))| self.timer_is_live(kind))
                .collect();
            self.timers = BinaryHeap::from(live);
            self.timers_compact_at = (self.timers.len() * 2).max(1024);
        }
    }

    fn timer_is_live(&self, kind: &TimerKind) -> bool {
        match *kind {
            TimerKind::Soft(wid, job) | TimerKind::Hard(wid, job) => self
                .workers
                .get(&wid)
                .is_some_and(|w| w.inflight.front().is_some_and(|d| d.first_job == job)),
            TimerKind::ExitReport(wid) | TimerKind::EofKill(wid) => self.workers.contains_key(&wid),
            TimerKind::ZygoteStart(gen) => self.zygotes.iter().any(|z| z.gen == gen && !z.ready),
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((t, kind))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let (wid, job) = match kind {
                TimerKind::Soft(wid, job) | TimerKind::Hard(wid, job) => (wid, job),
                TimerKind::ExitReport(wid) => {
                    self.exit_report_overdue(wid);
                    continue;
                }
                TimerKind::ZygoteStart(gen) => {
                    self.zygote_start_timeout(gen);
                    continue;
                }
                TimerKind::EofKill(wid) => {
                    if let Some(w) = self.workers.get_mut(&wid) {
                        if !w.dead && w.kill.is_none() && !w.inflight.is_empty() {
                            w.killed_at_eof = true;
                            let _ = sys::pidfd_send_signal(&w.pidfd, sys::SIGKILL);
                        }
                    }
                    continue;
                }
            };
            // Take in whatever the worker already answered: if the job is
            // done, the timer is stale and must not touch the next job.
            self.worker_readable(wid);
            let Some(w) = self.workers.get_mut(&wid) else {
                continue;
            };
            if w.broken || w.inflight.front().map(|d| d.first_job) != Some(job) {
                continue;
            }
            match kind {
                TimerKind::ExitReport(_) | TimerKind::ZygoteStart(_) | TimerKind::EofKill(_) => {}
                TimerKind::Soft(..) => {
                    if let Some(s) = self.board.slot(w.slot as usize) {
                        s.stop_reason.store(
                            StopReason::SoftTimeLimit.as_flag() as u64,
                            std::sync::atomic::Ordering::Release,
                        );
                        s.stop_job
                            .store(job.0, std::sync::atomic::Ordering::Release);
                    }
                    let _ = sys::pidfd_send_signal(&w.pidfd, sys::STOP_SIGNAL);
                }
                TimerKind::Hard(..) => {
                    w.kill = Some(Kill::TimeLimit(job));
                    w.leaving = true;
                    let _ = sys::kill_group(w.pid, sys::SIGKILL);
                    let _ = sys::pidfd_send_signal(&w.pidfd, sys::SIGKILL);
                }
            }
        }
    }

    fn terminate_job(&mut self, job: JobId) -> bool {
        if let Some(pos) = self.queue.iter().position(|d| d.contains(job)) {
            if let Some(d) = self.queue.remove(pos) {
                let err = TaskError::new(
                    ErrorKind::Terminated,
                    format!("job {} was terminated on request before it started", job.0),
                );
                self.fail_dispatch(d, err);
            }
            return true;
        }
        let holder = self
            .workers
            .values()
            .find(|w| w.inflight.iter().any(|d| d.contains(job)))
            .map(|w| w.id);
        let Some(wid) = holder else { return false };
        // Take in what the worker already answered: a job whose result is
        // waiting in the socket is finished, not terminated.
        self.worker_readable(wid);
        let Some(w) = self.workers.get_mut(&wid) else {
            return false;
        };
        let Some(pos) = w.inflight.iter().position(|d| d.contains(job)) else {
            return false;
        };
        let finished = self
            .board
            .slot(w.slot as usize)
            .map(|s| s.finished.load(std::sync::atomic::Ordering::Acquire));
        let head = &w.inflight[pos];
        // The worker's current job, unless it already finished it and its
        // result is on the way (then killing would only hit the next job).
        // "Finished" is the worker's own page, which its task can forge to
        // dodge the kill: it is believed only when a job behind it on the
        // worker could be hit; with none, the kill costs no other job (C3).
        let claimed_done = finished.is_some_and(|f| head.contains(JobId(f)));
        let current = pos == 0 && (!claimed_done || w.inflight.len() == 1);
        if current && !w.broken {
            // Kill exactly this (worker, job): it is running it, or about to.
            w.kill = Some(Kill::Terminated(job));
            w.leaving = true;
            let _ = sys::kill_group(w.pid, sys::SIGKILL);
            let _ = sys::pidfd_send_signal(&w.pidfd, sys::SIGKILL);
        } else {
            // Prefetched behind the current job, or finished with its result
            // on the way: it ends as `terminated` whatever it returns, and a
            // cooperative task is told to stop as soon as it starts.
            w.inflight[pos].cancelled = true;
            if let Some(s) = self.board.slot(w.slot as usize) {
                s.stop_reason.store(
                    StopReason::Cancelled.as_flag() as u64,
                    std::sync::atomic::Ordering::Release,
                );
                s.stop_job
                    .store(job.0, std::sync::atomic::Ordering::Release);
            }
        }
        true
    }

    fn shrink(&mut self, n: usize) {
        let n = n.min(self.target.saturating_sub(1));
        self.target -= n;
        let mut excess = self.live_workers().saturating_sub(self.target);
        // Idle ones first, then busy ones finish their job and leave.
        let mut ids: Vec<(bool, WorkerId)> = self
            .workers
            .values()
            .filter(|w| !w.leaving && !w.broken)
            .map(|w| (!w.inflight.is_empty(), w.id))
            .collect();
        ids.sort();
        for (_, wid) in ids {
            if excess == 0 {
                break;
            }
            if let Some(w) = self.workers.get_mut(&wid) {
                w.leaving = true;
                excess -= 1;
            }
        }
        self.retire_idle_leavers();
    }

    /// Rolling restart: a new zygote loads the plugin files afresh; every
    /// current worker leaves after its current job and is replaced.
    fn restart(&mut self, reply: Option<ReloadReply>) {
        // The new zygote loads the plugins while the current generation
        // serves; `zygote_hello` switches over once it is ready.
        tracing::debug!("reload: starting a zygote with the plugin files as they are now");
        match self.begin_zygote(Start::Restart) {
            Ok(()) => {
                if let (Some(z), Some(reply)) = (self.zygotes.last_mut(), reply) {
                    z.on_ready = Some(reply);
                }
            }
            Err(e) => {
                tracing::error!(
                    "the reload failed, the current workers keep serving: {}",
                    e.message
                );
                if let Some(reply) = reply {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }

    /// A retired zygote with no workers left is told to exit.
    fn maybe_finish_zygote(&mut self, gen: u64) {
        if self.workers.values().any(|w| w.gen == gen)
            || self.pending_spawns.values().any(|(_, g)| *g == gen)
        {
            return;
        }
        if let Some(i) = self.zygotes.iter().position(|z| z.gen == gen && z.retired) {
            let mut z = self.zygotes.remove(i);
            let _ = self
                .poll
                .registry()
                .deregister(&mut mio::unix::SourceFd(&z.fd.as_raw_fd()));
            let _ = sys::send_with_fds(&z.fd, &ipc::encode_ctl(&ZygoteCmd::Shutdown), &[]);
            drop(z.fd);
            reap_zygote(z.child.take(), z.pid);
        }
    }

    fn terminate_all(&mut self, why: &str) {
        self.retries.close(Some(why));
        let queued: Vec<Dispatch> = self.queue.drain(..).collect();
        for d in queued {
            self.fail_dispatch(
                d,
                TaskError::new(
                    ErrorKind::Terminated,
                    format!("{why} before the job started"),
                ),
            );
        }
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for wid in ids {
            let Some(w) = self.workers.get_mut(&wid) else {
                continue;
            };
            w.kill = Some(Kill::Shutdown);
            let _ = sys::kill_group(w.pid, sys::SIGKILL);
            let _ = sys::pidfd_send_signal(&w.pidfd, sys::SIGKILL);
            let inflight: Vec<Dispatch> = w.inflight.drain(..).collect();
            for d in inflight {
                self.fail_dispatch(d, TaskError::new(ErrorKind::Terminated, why.to_string()));
            }
        }
    }

    /// Ends every worker and zygote and reaps them.
    fn shutdown(&mut self) {
        if !self.workers.is_empty() || !self.zygotes.is_empty() {
            tracing::debug!(
                "the pool shuts down: {} worker(s) ended (idle ones asked to exit, busy ones killed), {} zygote(s)",
                self.workers.len(),
                self.zygotes.len()
            );
        }
        for w in self.workers.values_mut() {
            if w.inflight.is_empty() && !w.broken {
                let _ = sys::write_all_vectored(&w.sock, &[&ipc::encode_exit()]);
            } else {
                let _ = sys::kill_group(w.pid, sys::SIGKILL);
                let _ = sys::pidfd_send_signal(&w.pidfd, sys::SIGKILL);
            }
        }
        self.workers.clear();
        for mut z in self.zygotes.drain(..) {
            let _ = sys::send_with_fds(&z.fd, &ipc::encode_ctl(&ZygoteCmd::Shutdown), &[]);
            drop(z.fd);
            reap_zygote(z.child.take(), z.pid);
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Jobs waiting for a retry end as queued ones do.
        self.retries.close(None);
        self.shutdown();
    }
}

/// The jobs of a stream chunk as single-job dispatches (items numbered as
/// in the chunk); `None` if the chunk cannot be split (a slot reply, or
/// records that do not parse: then it goes out whole and fails whole).
fn split_chunk(d: &mut Dispatch) -> Option<Vec<Dispatch>> {
    let Reply::Stream { tx, first_index } = &d.reply else {
        return None;
    };
    let records: Option<Vec<&[u8]>> = codec::records(&d.payload).collect();
    let records = records?;
    if records.len() != d.count as usize {
        return None;
    }
    let items = records
        .into_iter()
        .enumerate()
        .map(|(i, args)| Dispatch {
            first_job: JobId(d.first_job.0 + i as u64),
            count: 1,
            plugin: d.plugin,
            task: d.task,
            gen: d.gen,
            codec: d.codec,
            payload: Arc::new(args.to_vec()),
            limits: d.limits,
            reply: Reply::Stream {
                tx: tx.clone(),
                first_index: first_index + i as u64,
            },
            attempt: d.attempt,
            retries: d.retries,
            cancelled: d.cancelled,
            delivered: 0,
        })
        .collect();
    // The items carry every outcome now.
    d.delivered = d.count;
    Some(items)
}

struct ReadAdapter<'a>(&'a mio::net::UnixStream);

impl Read for ReadAdapter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut s = self.0;
        s.read(buf)
    }
}

/// A worker's output as the supervisor keeps it: the last [`TAIL_LINES`]
/// lines (for its crash report) and the unfinished line, capped.
#[derive(Default)]
struct OutputTail {
    tail: VecDeque<String>,
    /// The last line that says why a process is dying (a Rust panic or
    /// allocation failure message): a backtrace after it would push it out
    /// of `tail`, and it is the line a crash report needs most.
    cause: Option<String>,
    partial: Vec<u8>,
    /// Lines logged in the current second, and lines not logged.
    log_window: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

/// Longest line kept whole; a longer one is cut into pieces this long.
const MAX_LINE: usize = 8192;
/// Worker output lines logged per second per worker; the rest are counted.
const LOG_LINES_PER_SEC: u32 = 200;

impl OutputTail {
    /// Takes in a chunk of output: each byte is looked at once.
    fn take(&mut self, mut chunk: &[u8], pid: i32) {
        while let Some(nl) = chunk.iter().position(|&b| b == b'\n') {
            let (line, rest) = (&chunk[..nl], &chunk[nl + 1..]);
            if self.partial.is_empty() {
                self.line(line, pid);
            } else {
                let room = MAX_LINE.saturating_sub(self.partial.len());
                self.partial
                    .extend_from_slice(&line[..line.len().min(room)]);
                let whole = std::mem::take(&mut self.partial);
                self.line(&whole, pid);
                self.partial = whole;
                self.partial.clear();
            }
            chunk = rest;
        }
        while !chunk.is_empty() {
            let room = MAX_LINE - self.partial.len();
            let n = chunk.len().min(room);
            self.partial.extend_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
            if self.partial.len() >= MAX_LINE {
                let whole = std::mem::take(&mut self.partial);
                self.line(&whole, pid);
                self.partial = whole;
                self.partial.clear();
            }
        }
    }

    /// The pipe closed: an unfinished last line still counts.
    fn finish(&mut self, pid: i32) {
        if !self.partial.is_empty() {
            let whole = std::mem::take(&mut self.partial);
            self.line(&whole, pid);
        }
        if self.suppressed > 0 {
            tracing::info!(target: "billiard::worker", pid, "[{} more lines not logged]", self.suppressed);
            self.suppressed = 0;
        }
    }

    fn line(&mut self, line: &[u8], pid: i32) {
        let text = String::from_utf8_lossy(line).into_owned();
        let now = Instant::now();
        let window_over = match self.log_window {
            Some(t) => now.duration_since(t) >= Duration::from_secs(1),
            None => true,
        };
        if window_over {
            if self.suppressed > 0 {
                tracing::info!(target: "billiard::worker", pid, "[{} lines not logged: the worker writes faster than {LOG_LINES_PER_SEC} lines/s]", self.suppressed);
                self.suppressed = 0;
            }
            self.log_window = Some(now);
            self.logged = 0;
        }
        if self.logged < LOG_LINES_PER_SEC {
            self.logged += 1;
            tracing::info!(target: "billiard::worker", pid, "{text}");
        } else {
            self.suppressed += 1;
        }
        if text.contains("panicked at")
            || text.starts_with("memory allocation of")
            || text.contains("fatal runtime error")
        {
            self.cause = Some(text.clone());
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(text);
    }

    /// The kept lines for a crash report, with the cause first if the tail
    /// no longer holds it.
    fn report(&self) -> String {
        let mut lines: Vec<&str> = Vec::with_capacity(TAIL_LINES + 2);
        if let Some(cause) = &self.cause {
            if !self.tail.contains(cause) {
                lines.push(cause);
                lines.push("...");
            }
        }
        lines.extend(self.tail.iter().map(String::as_str));
        lines.join("\n")
    }
}

fn bytesize_text(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn wait_hello(fd: &OwnedFd, buf: &mut [u8], timeout: Duration) -> Result<ZygoteMsg, String> {
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
fn reap_zygote(child: Option<std::process::Child>, pid: i32) -> String {
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

fn forward_lines(r: OwnedFd, pid: i32) {
    use std::io::BufRead;
    let _ = sys::set_nonblocking(&r, false);
    let reader = std::io::BufReader::new(std::fs::File::from(r));
    for line in reader.split(b'\n').map_while(Result::ok) {
        tracing::info!(target: "billiard::zygote", pid, "{}", String::from_utf8_lossy(&line));
    }
}
