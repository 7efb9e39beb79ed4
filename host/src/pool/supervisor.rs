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
use super::job::{ChunkBody, ChunkResult, Dispatch, JobId, Outcome, Reply, WorkerId};
use super::stats::Stats;
use crate::error::{ErrorKind, TaskError};
use crate::ipc::{self, Frame, FrameReader, WorkerParams, ZygoteCmd, ZygoteMsg};
use crate::plugin::PluginInfo;
use crate::sys::{self, ExitInfo, Scoreboard};
use crate::zygote;

pub const WAKER: Token = Token(0);
/// A job whose worker died before starting it is resent this many times
/// before it fails as `worker_lost`.
const MAX_UNSTARTED_RETRIES: u32 = 2;
/// Lines of worker output kept for `worker_lost` messages.
const TAIL_LINES: usize = 12;

/// Requests from the API to the supervisor thread.
pub enum Cmd {
    Submit(Vec<Dispatch>),
    TerminateJob(JobId, Sender<bool>),
    Grow(usize),
    Shrink(usize),
    Restart,
    /// Finish queued and running jobs, then stop.
    Close,
    /// Stop now: kill workers, every unfinished job gets `terminated`.
    Terminate,
    Stats(Sender<Stats>),
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
    /// Plugins as this zygote loaded them.
    plugins: Vec<PluginInfo>,
    alive: bool,
    retired: bool,
}

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
    sock: mio::net::UnixStream,
    sock_token: Token,
    output: Option<(mio::unix::pipe::Receiver, Token)>,
    out_partial: Vec<u8>,
    tail: VecDeque<String>,
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
    dispatches_done: u64,
}

struct OutItem {
    header: Vec<u8>,
    payload: Option<Arc<Vec<u8>>>,
    idx: usize,
    off: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Soft,
    Hard,
}

pub struct Supervisor {
    cfg: PoolConfig,
    poll: Poll,
    rx: Receiver<Cmd>,
    board: Arc<Scoreboard>,
    callbacks: Sender<CallbackJob>,
    events: EventSink,
    zygotes: Vec<Zygote>,
    gen: u64,
    workers: HashMap<WorkerId, Worker>,
    tokens: HashMap<Token, (WorkerId, bool)>,
    next_token: usize,
    next_worker: u64,
    free_slots: Vec<u32>,
    queue: VecDeque<Dispatch>,
    timers: BinaryHeap<Reverse<(Instant, TimerKind, WorkerId, JobId)>>,
    target: usize,
    /// Spawn requests not answered yet: worker id → (slot, zygote generation).
    pending_spawns: HashMap<u64, (u32, u64)>,
    start_failures: VecDeque<Instant>,
    /// Set when workers keep dying at start: why the pool stopped forking.
    broken: Option<String>,
    closing: bool,
    stats: Stats,
}

/// What `Pool::build` gets back from the supervisor thread once the zygote
/// has loaded the plugins.
pub type Ready = Result<Vec<PluginInfo>, TaskError>;

impl Supervisor {
    pub fn new(
        cfg: PoolConfig,
        rx: Receiver<Cmd>,
        board: Arc<Scoreboard>,
        callbacks: Sender<CallbackJob>,
        events: EventSink,
    ) -> std::io::Result<(Supervisor, Arc<Waker>)> {
        let poll = Poll::new()?;
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
                workers: HashMap::new(),
                tokens: HashMap::new(),
                next_token: 1,
                next_worker: 1,
                free_slots: (0..slots).rev().collect(),
                queue: VecDeque::new(),
                timers: BinaryHeap::new(),
                target,
                pending_spawns: HashMap::new(),
                start_failures: VecDeque::new(),
                broken: None,
                closing: false,
                stats: Stats::default(),
            },
            waker,
        ))
    }

    fn token(&mut self) -> Token {
        self.next_token += 1;
        Token(self.next_token)
    }

    /// Starts a zygote (forkserver/spawn: exec of the worker executable;
    /// fork: `forked` is the already-forked one) and waits for its hello.
    pub fn start_zygote(&mut self, forked: Option<(OwnedFd, i32)>) -> Ready {
        let load_err = |reason: String| TaskError::new(ErrorKind::PluginLoad, reason);
        let (fd, pid, child, output) = match forked {
            Some((fd, pid)) => (fd, pid, None, None),
            None => {
                let exe = super::config::find_worker_exe(self.cfg.worker_exe.as_ref())
                    .map_err(load_err)?;
                let (ours, theirs) =
                    sys::seqpacket_pair().map_err(|e| load_err(format!("socketpair: {e}")))?;
                let (out_r, out_w) = sys::pipe().map_err(|e| load_err(format!("pipe: {e}")))?;
                let mode = if self.cfg.start_method == StartMethod::Spawn {
                    "exec"
                } else {
                    "fork"
                };
                let mut args: Vec<&OsStr> = vec![OsStr::new(zygote::ZYGOTE_ARG), OsStr::new(mode)];
                args.extend(self.cfg.plugins.iter().map(|p| p.as_os_str()));
                let child = sys::spawn_helper(
                    &exe,
                    &args,
                    &[theirs.as_raw_fd(), self.board.fd().as_raw_fd()],
                    &out_w,
                )
                .map_err(|e| load_err(format!("cannot start the zygote {}: {e}", exe.display())))?;
                let pid = child.id() as i32;
                (ours, pid, Some(child), Some(out_r))
            }
        };
        // Wait (bounded) for the hello: the zygote loads every plugin first.
        let mut buf = vec![0u8; 4 << 20];
        let hello = wait_hello(&fd, &mut buf, Duration::from_secs(60));
        let plugins = match hello {
            Ok(ZygoteMsg::Hello { plugins: Ok(p), .. }) => p,
            Ok(ZygoteMsg::Hello {
                plugins: Err(e), ..
            }) => {
                reap_zygote(child, pid);
                return Err(e.into());
            }
            Ok(_) => {
                return Err(load_err(
                    "the zygote sent an unexpected first message".into(),
                ))
            }
            Err(e) => {
                let output = output.map(drain_text).unwrap_or_default();
                let status = reap_zygote(child, pid);
                return Err(load_err(format!(
                    "the zygote died while loading the plugins ({e}; {status}){}",
                    if output.trim().is_empty() {
                        String::new()
                    } else {
                        format!("; its output:\n{}", output.trim_end())
                    }
                )));
            }
        };
        if let Err(e) = sys::set_nonblocking(&fd, true) {
            return Err(load_err(format!("zygote socket: {e}")));
        }
        // Zygote output (rare: plugin constructors printing) goes to the log.
        if let Some(o) = output {
            std::thread::Builder::new()
                .name("billiard-zygote-log".into())
                .spawn(move || forward_lines(o, pid))
                .ok();
        }
        self.gen += 1;
        let token = self.token();
        if let Err(e) = self.poll.registry().register(
            &mut mio::unix::SourceFd(&fd.as_raw_fd()),
            token,
            Interest::READABLE,
        ) {
            return Err(load_err(format!("cannot watch the zygote: {e}")));
        }
        self.zygotes.push(Zygote {
            gen: self.gen,
            fd,
            pid,
            child,
            token,
            plugins: plugins.clone(),
            alive: true,
            retired: false,
        });
        Ok(plugins)
    }

    /// The event loop. Returns when the pool is closed and drained, or
    /// terminated.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            self.ensure_workers();
            self.schedule();
            if self.finished() {
                break;
            }
            let timeout = self
                .timers
                .peek()
                .map(|Reverse((t, ..))| t.saturating_duration_since(Instant::now()));
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
                } else if self.zygotes.iter().any(|z| z.token == token) {
                    self.zygote_readable(token);
                } else if let Some(&(wid, is_sock)) = self.tokens.get(&token) {
                    if is_sock {
                        if ev.is_writable() {
                            self.flush(wid);
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.worker_readable(wid);
                        }
                    } else {
                        self.output_readable(wid);
                    }
                }
            }
            self.fire_timers();
        }
        self.shutdown();
    }

    fn finished(&self) -> bool {
        self.closing
            && self.queue.is_empty()
            && self.workers.values().all(|w| w.inflight.is_empty())
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
                    let found = self.terminate_job(job);
                    let _ = reply.send(found);
                }
                Cmd::Grow(n) => self.target += n,
                Cmd::Shrink(n) => self.shrink(n),
                Cmd::Restart => self.restart(),
                Cmd::Close => self.closing = true,
                Cmd::Terminate => {
                    self.terminate_all("the pool was terminated");
                    return true;
                }
                Cmd::Stats(reply) => {
                    let _ = reply.send(self.snapshot());
                }
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
            .any(|z| z.gen == gen && z.alive && !z.retired)
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
        self.zygotes.iter().rev().find(|z| z.alive && !z.retired)
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
        };
        if let Some(s) = self.board.slot(slot as usize) {
            s.running.store(0, std::sync::atomic::Ordering::Release);
            s.stop_job.store(0, std::sync::atomic::Ordering::Release);
            s.finished.store(0, std::sync::atomic::Ordering::Release);
        }
        let msg = ipc::encode_ctl(&ZygoteCmd::Spawn(params));
        let gen = z.gen;
        let sent = sys::send_with_fds(&z.fd, &msg, &[]);
        self.next_worker += 1;
        if let Err(e) = sent {
            tracing::warn!("cannot ask the zygote for a worker: {e}");
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
            match res {
                Ok(Some((n, fds))) => match ipc::decode_ctl::<ZygoteMsg>(&buf[..n]) {
                    Ok(msg) => self.zygote_msg(msg, fds),
                    Err(e) => tracing::error!("garbled message from the zygote: {e}"),
                },
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
                    tracing::error!("the zygote sent a worker without its fds");
                    self.free_slots.push(slot);
                    return;
                };
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
            ZygoteMsg::Hello { .. } => {}
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
        // Its workers die with it (PR_SET_PDEATHSIG); nobody will report
        // their exit status, so finalize them now.
        let orphans: Vec<WorkerId> = self
            .workers
            .values()
            .filter(|w| w.gen == gen)
            .map(|w| w.id)
            .collect();
        for wid in orphans {
            if let Some(w) = self.workers.get(&wid) {
                let _ = sys::pidfd_send_signal(&w.pidfd, sys::SIGKILL);
            }
            self.worker_exited(wid, None);
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
            if let Err(e) = self.start_zygote(None) {
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
        {
            tracing::error!("worker {id}: cannot watch its sockets");
            let _ = sys::pidfd_send_signal(&pidfd, sys::SIGKILL);
            return;
        }
        self.tokens.insert(sock_token, (id, true));
        self.tokens.insert(out_token, (id, false));
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
                sock,
                sock_token,
                output: Some((output, out_token)),
                out_partial: Vec::new(),
                tail: VecDeque::new(),
                reader: FrameReader::new(self.cfg.max_frame),
                outq: VecDeque::new(),
                inflight: VecDeque::new(),
                head_since: None,
                leaving: false,
                exit_sent: false,
                broken: false,
                kill: None,
                dispatches_done: 0,
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
        for depth in 0..prefetch {
            let mut ids: Vec<WorkerId> = self
                .workers
                .values()
                .filter(|w| !w.leaving && !w.broken && w.inflight.len() == depth)
                .map(|w| w.id)
                .collect();
            ids.sort();
            for wid in ids {
                let Some(d) = self.queue.pop_front() else {
                    return;
                };
                self.send_dispatch(wid, d);
            }
        }
        self.retire_idle_leavers();
    }

    fn send_dispatch(&mut self, wid: WorkerId, d: Dispatch) {
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
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        w.outq.push_back(OutItem {
            header: header.to_vec(),
            payload: Some(d.payload.clone()),
            idx: 0,
            off: 0,
        });
        let first = w.inflight.is_empty();
        w.inflight.push_back(d);
        if first {
            self.head_started(wid);
        }
        self.flush(wid);
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
        // A chunk gets the limit once per item.
        let scale = d.count.max(1);
        if let Some(soft) = limits.soft {
            self.timers.push(Reverse((
                now + soft * scale,
                TimerKind::Soft,
                wid,
                d.first_job,
            )));
        }
        if let Some(hard) = limits.hard {
            self.timers.push(Reverse((
                now + hard * scale,
                TimerKind::Hard,
                wid,
                d.first_job,
            )));
        }
        self.events.emit(Event::JobStarted {
            job: d.first_job,
            worker: wid,
            count: d.count,
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
            match sys::writev_from(&w.sock, &bufs, item.idx, item.off) {
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
        let open = w.reader.fill(&mut ReadAdapter(&w.sock)).unwrap_or_default();
        loop {
            let Some(w) = self.workers.get_mut(&wid) else {
                return;
            };
            let frame = match w.reader.next_frame() {
                Ok(Some(Frame::Done(h, payload))) => Ok((h, payload.to_vec())),
                Ok(None) => break,
                Ok(Some(_)) => Err("a frame only the supervisor may send".to_string()),
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
                if w.kill.is_none() && !w.inflight.is_empty() {
                    let _ = sys::pidfd_send_signal(&w.pidfd, sys::SIGKILL);
                }
                let _ = self.poll.registry().deregister(&mut w.sock);
            }
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
        w.tail
            .push_back(format!("[billiard: protocol error from the worker: {why}]"));
        w.broken = true;
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

    fn output_readable(&mut self, wid: WorkerId) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        let Some((pipe, _)) = w.output.as_mut() else {
            return;
        };
        let mut buf = [0u8; 8192];
        let mut closed = false;
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => w.out_partial.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        while let Some(nl) = w.out_partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = w.out_partial.drain(..=nl).collect();
            push_line(&mut w.tail, &line[..line.len() - 1], w.pid);
        }
        if w.out_partial.len() > 8192 || (closed && !w.out_partial.is_empty()) {
            let line = std::mem::take(&mut w.out_partial);
            push_line(&mut w.tail, &line, w.pid);
        }
        if closed {
            if let Some((mut pipe, token)) = w.output.take() {
                let _ = self.poll.registry().deregister(&mut pipe);
                self.tokens.remove(&token);
            }
        }
    }

    // ----- deaths ---------------------------------------------------------

    fn worker_exited(&mut self, wid: WorkerId, info: Option<ExitInfo>) {
        // Results the worker wrote before it died still count: the exit
        // report can overtake them in the event loop.
        self.worker_readable(wid);
        // Collect the last words first: they explain the death.
        self.output_readable(wid);
        let Some(mut w) = self.workers.remove(&wid) else {
            return;
        };
        let reg = self.poll.registry();
        let _ = reg.deregister(&mut w.sock);
        self.tokens.remove(&w.sock_token);
        if let Some((mut pipe, token)) = w.output.take() {
            let _ = reg.deregister(&mut pipe);
            self.tokens.remove(&token);
        }
        // Grandchildren a task spawned die with the worker.
        let _ = sys::kill_group(w.pid, sys::SIGKILL);
        let slot = self.board.slot(w.slot as usize);
        let running = slot
            .map(|s| s.running.swap(0, std::sync::atomic::Ordering::AcqRel))
            .unwrap_or(0);
        if let Some(s) = slot {
            s.stop_job.store(0, std::sync::atomic::Ordering::Release);
            s.finished.store(0, std::sync::atomic::Ordering::Release);
        }
        self.free_slots.push(w.slot);
        let how = info
            .as_ref()
            .map(ExitInfo::describe)
            .unwrap_or_else(|| "its zygote died, taking it along".into());
        let clean_exit = info.as_ref().is_some_and(|i| i.code == Some(0)) && w.inflight.is_empty();
        self.events.emit(Event::WorkerDown {
            worker: wid,
            pid: w.pid,
            reason: how.clone(),
        });
        if !clean_exit {
            self.stats.worker_deaths += 1;
        }
        let head_started = w.inflight.front().is_some_and(|d| {
            running != 0 && d.first_job.0 <= running && running < d.first_job.0 + d.count as u64
        });
        let died_at_start = w.dispatches_done == 0
            && !head_started
            && w.kill.is_none()
            && !clean_exit
            && !w.leaving;
        let mut inflight = std::mem::take(&mut w.inflight);
        if let Some(mut head) = inflight.pop_front() {
            let elapsed = w.head_since.map(|s| s.elapsed()).unwrap_or_default();
            self.events.emit(Event::JobFinished {
                job: head.first_job,
                worker: wid,
                count: head.count,
                elapsed,
            });
            if !head_started
                && w.kill.is_none()
                && (died_at_start || head.attempt < MAX_UNSTARTED_RETRIES)
            {
                // The worker died before it began this job: the job is not
                // to blame and is safe to run elsewhere. Deaths at start are
                // bounded by the start-failure limit, not by the job.
                if !died_at_start {
                    head.attempt += 1;
                }
                inflight.push_front(head);
            } else {
                let err = self.death_error(&w, &head, info.as_ref(), &how, head_started);
                self.fail_dispatch(head, err);
            }
        }
        // Jobs queued behind (prefetch) never started: run them elsewhere.
        for d in inflight.into_iter().rev() {
            self.queue.push_front(d);
        }

        if died_at_start {
            let tail = w.tail.iter().cloned().collect::<Vec<_>>().join("\n");
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

    fn death_error(
        &self,
        w: &Worker,
        head: &Dispatch,
        info: Option<&ExitInfo>,
        how: &str,
        started: bool,
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
        msg.push_str(if started {
            "; the task had started"
        } else {
            "; the task had NOT started (safe to retry)"
        });
        if w.kill == Some(Kill::Protocol) {
            msg.push_str("; the worker sent malformed data on its socket and was killed");
        }
        if !w.tail.is_empty() {
            msg.push_str("; last output:\n");
            msg.push_str(&w.tail.iter().cloned().collect::<Vec<_>>().join("\n"));
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

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((t, kind, wid, job))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
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
                TimerKind::Soft => {
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
                TimerKind::Hard => {
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
        let current = pos == 0 && !finished.is_some_and(|f| head.contains(JobId(f)));
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
    fn restart(&mut self) {
        match self.start_zygote(None) {
            Ok(_) => {
                let newest = self.gen;
                for z in self.zygotes.iter_mut().filter(|z| z.gen != newest) {
                    z.retired = true;
                }
                for w in self.workers.values_mut().filter(|w| w.gen != newest) {
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
            Err(e) => tracing::error!("restart failed, keeping the current workers: {}", e.message),
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
        self.shutdown();
    }
}

struct ReadAdapter<'a>(&'a mio::net::UnixStream);

impl Read for ReadAdapter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut s = self.0;
        s.read(buf)
    }
}

fn push_line(tail: &mut VecDeque<String>, line: &[u8], pid: i32) {
    let text = String::from_utf8_lossy(line).into_owned();
    tracing::info!(target: "billiard::worker", pid, "{text}");
    if tail.len() == TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(text);
}

fn bytesize_text(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn wait_hello(fd: &OwnedFd, buf: &mut [u8], timeout: Duration) -> Result<ZygoteMsg, String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no answer within a minute".into());
        }
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        let ms =
            PollTimeout::try_from(left.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.to_string()),
        }
        return match sys::recv_with_fds(fd, buf) {
            Ok(Some((n, _))) => ipc::decode_ctl(&buf[..n]),
            Ok(None) => Err("it exited".into()),
            Err(e) => Err(e.to_string()),
        };
    }
}

/// Reaps a zygote we started (our child) and says how it ended. The
/// zygote exits promptly once its control socket closes (it kills and
/// reaps its workers first), so a blocking wait is bounded.
fn reap_zygote(child: Option<std::process::Child>, pid: i32) -> String {
    match child {
        Some(mut c) => c
            .wait()
            .map(describe_status)
            .unwrap_or_else(|e| e.to_string()),
        None => {
            sys::wait_child(pid);
            "exited".into()
        }
    }
}

fn describe_status(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (_, Some(sig)) => format!("killed by signal {sig} ({})", sys::signal_name(sig)),
        (Some(c), _) => format!("exited with code {c}"),
        _ => "ended".into(),
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
