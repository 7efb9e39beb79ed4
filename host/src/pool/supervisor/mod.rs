//! The supervisor: one thread, one event loop (mio) over the worker
//! sockets, their output pipes and pidfds, the zygotes' control sockets,
//! the API's command channel and the timers. It never calls plugin code
//! and never blocks on a caller: outcomes go to slots or channels,
//! callbacks run on their own thread.
//!
//! # Module map
//!
//! The loop ([`Supervisor`], this file) owns the poll, the command channel,
//! the token map and the job queue, and routes every event to the
//! sub-owners. A sub-owner owns its state and never calls another: it
//! returns what happened (an event, an outcome), and the loop's routes
//! (`jobs.rs` for the job flow, `lifecycle.rs` for births and deaths) hand
//! that on.
//!
//! | module | owns |
//! |---|---|
//! | `mod.rs` | poll, waker, command channel ([`Cmd`]), token map, queue, `closing`; the run loop, the commands, timers' routing, shutdown |
//! | `jobs.rs` | routes of the job flow: scheduling, sending, results, stream items, progress, terminating a job |
//! | `lifecycle.rs` | routes of births and deaths: zygote events, a worker's birth and exit, the restart limiter's verdicts |
//! | `zygotes.rs` | the zygotes and their `ZygoteState`, generations and their plugins, the hello |
//! | `launch.rs` | zygote processes as processes: started, hand-shaken, ended after a failed load, reaped |
//! | `workers.rs` | the workers and their `WorkerState`, scoreboard slots, spawn requests, the target; the kill pair |
//! | `conn.rs` | a worker's frames in and out, its shared-memory arena |
//! | `dispatch.rs` | RUN frames; `Delivery`: outcomes to slots and streams, the stats |
//! | `deaths.rs` | what a worker's end means for its jobs (`Lost`); the restart limiter |
//! | `timers.rs` | the timer heap and its compaction |
//! | `output.rs` | workers' stdout/stderr: the kept tail, the read budget, the backlog |
//! | `streams.rs` | stream items on to their consumers; workers paused for a slow consumer |
//!
//! # Events
//!
//! - the waker: commands ([`Cmd`]) queued, a paused stream's consumer
//!   caught up;
//! - a zygote's socket: a handshake, its hello (in pieces), `Spawned`,
//!   `SpawnFailed`, a worker's `Exited` report, EOF (it died);
//! - a worker's socket: writable (flush), frames (`conn::Inbound`: DONE,
//!   ITEMS, PROGRESS, READY, or something refused), EOF;
//! - a worker's output pipe: readable, closed;
//! - a worker's pidfd: the process is gone;
//! - timers (`timers::TimerKind`): soft and hard limits, an exit report
//!   overdue, a zygote's load deadline, a kill after a mid-job EOF;
//! - retries whose delay is over (`pool/retry.rs`).

mod conn;
mod deaths;
mod dispatch;
mod jobs;
mod launch;
mod lifecycle;
mod output;
mod streams;
mod timers;
mod workers;
mod zygotes;

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use billiard_plugin_api::StopReason;
use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Poll, Token, Waker};

use super::config::PoolConfig;
use super::events::EventSink;
use super::job::{Dispatch, JobId, WorkerId};
use super::stats::Stats;
use crate::error::{ErrorKind, TaskError};
use crate::ipc;
use crate::plugin::PluginInfo;
use crate::sys::{self, Scoreboard};
use deaths::RestartLimiter;
use dispatch::Delivery;
use timers::{TimerKind, Timers};
use workers::{Kill, Workers};
use zygotes::{Start, Zygotes};

pub use zygotes::{Generation, LiveGeneration};

pub const WAKER: Token = Token(0);
/// How long a worker's death (seen on its pidfd) waits for the zygote's
/// exit report, which carries the signal and rusage, before it is final.
const EXIT_REPORT_GRACE: Duration = Duration::from_millis(500);
/// How long a worker whose socket closed mid-job may take to be gone by
/// itself before the pool kills it (see `worker_readable`).
const EOF_KILL_GRACE: Duration = Duration::from_millis(100);

/// Whether a wake-up of the supervisor for commands is pending: the API
/// writes the waker (a syscall) only when it raises the flag, so a burst of
/// submits while the supervisor is busy costs one write, not one per job.
/// The supervisor lowers it before it drains the channel.
#[derive(Clone, Default)]
pub struct WakeFlag(Arc<std::sync::atomic::AtomicBool>);

impl WakeFlag {
    /// Raises the flag; true when it was down, so the caller must wake
    /// the supervisor. A command sent before a raise that finds it up is
    /// drained by the wake-up pending (its lowering swap synchronizes
    /// with this one).
    pub fn raise(&self) -> bool {
        !self.0.swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// Lowers the flag (the supervisor, before it drains the commands).
    pub fn lower(&self) {
        self.0.swap(false, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A map keyed by the supervisor's own integers (poll tokens, worker
/// ids): hashed by a multiply ([`IntHasher`]), not SipHash, which took a
/// tenth of the loop's CPU (issue 26). The keys are the pool's counters,
/// never an outsider's choice: nothing to defend against.
pub(super) type IntMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IntHasher>>;

/// The hash of [`IntMap`]: FxHash's step (rotate, xor, multiply by an odd
/// constant) per word.
#[derive(Default, Clone, Copy)]
pub(super) struct IntHasher(u64);

impl IntHasher {
    const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::K);
    }
}

impl std::hash::Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.add(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }
}

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

use super::callbacks::CallbackSender;

/// Where `Pool::restart` waits for its reload to serve or fail.
pub type ReloadReply = Sender<Result<(), TaskError>>;

/// What `Pool::build` gets back from the supervisor thread once the zygote
/// has loaded the plugins.
pub type Ready = Result<Vec<PluginInfo>, TaskError>;

/// What a registered poll token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Sock,
    Output,
    /// The worker's pidfd: readable once the process has exited.
    Pidfd,
}

pub struct Supervisor {
    cfg: PoolConfig,
    poll: Poll,
    rx: Receiver<Cmd>,
    waker: Arc<Waker>,
    /// Raised by a command's sender that woke the waker; lowered here
    /// before the commands are drained (see [`WakeFlag`]).
    wake_flag: WakeFlag,
    tokens: IntMap<Token, (WorkerId, Source)>,
    next_token: usize,
    closing: bool,
    queue: VecDeque<Dispatch>,
    /// One page per worker slot, renewed for every worker (C3).
    board: Scoreboard,
    events: EventSink,
    zygotes: Zygotes,
    workers: Workers,
    delivery: Delivery,
    limiter: RestartLimiter,
    timers: Timers,
    /// Workers with output left to read after their budget ran out.
    backlog: output::Backlog,
    streams: streams::Streams,
    /// Jobs waiting for their retry (`pool/retry.rs`): due ones join the
    /// queue; a closing pool waits for them.
    retries: Arc<super::retry::Retries>,
}

impl Supervisor {
    /// `cmds`: the API's command channel and its pending-wake-up flag.
    pub fn new(
        cfg: PoolConfig,
        cmds: (Receiver<Cmd>, WakeFlag),
        board: Scoreboard,
        callbacks: CallbackSender,
        events: EventSink,
        live: LiveGeneration,
        retries: Arc<super::retry::Retries>,
    ) -> std::io::Result<(Supervisor, Arc<Waker>)> {
        let (rx, wake_flag) = cmds;
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
                waker: waker.clone(),
                wake_flag,
                tokens: IntMap::default(),
                next_token: 1,
                closing: false,
                queue: VecDeque::new(),
                board,
                events,
                zygotes: Zygotes::new(live),
                workers: Workers::new(slots, target),
                delivery: Delivery::new(callbacks),
                limiter: RestartLimiter::default(),
                timers: Timers::default(),
                backlog: Default::default(),
                streams: Default::default(),
                retries,
            },
            waker,
        ))
    }

    fn token(&mut self) -> Token {
        self.next_token += 1;
        Token(self.next_token)
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
        let z = launch::launch(&self.cfg, forked).map_err(PoolError::PluginLoad)?;
        tracing::debug!("zygote pid {} started: loading the plugins", z.pid);
        if z.child.is_some() {
            if let Err(why) = launch::handshake(&self.cfg, &z.fd) {
                return Err(PoolError::Config(launch::handshake_failure(
                    &self.cfg, z, why,
                )));
            }
        }
        let mut buf = vec![0u8; 4 << 20];
        let hello = launch::wait_hello(&z.fd, &mut buf, self.cfg.load_timeout);
        let hello = match hello {
            Ok(msg) => msg,
            Err(e) => {
                return Err(PoolError::PluginLoad(launch::load_failure(
                    &self.cfg, z, &e,
                )))
            }
        };
        let gen = self.zygotes.gen + 1;
        let token = self.token();
        self.zygotes
            .install(
                self.poll.registry(),
                token,
                z,
                gen,
                Start::Initial,
                &self.cfg,
            )
            .map_err(PoolError::PluginLoad)?;
        let zi = self.zygotes.list.len() - 1;
        self.zygote_hello(zi, hello).map_err(PoolError::PluginLoad)
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
            let timeout = if self.backlog.is_empty() {
                self.timers
                    .next()
                    .map(|t| t.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            let timeout = self.retries.poll_timeout(timeout);
            // This turn's callbacks go to the callback thread together
            // (one wake-up for many results) before the loop may sleep.
            self.delivery.flush_callbacks();
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
                    // Lowered before the drain: a command sent after it
                    // wakes the loop again.
                    self.wake_flag.lower();
                    if self.drain_commands() {
                        self.shutdown();
                        return;
                    }
                    self.resume_streams();
                } else if self.zygotes.index_of(token).is_some() {
                    self.zygote_readable(token);
                } else if let Some(&(wid, source)) = self.tokens.get(&token) {
                    match source {
                        Source::Sock => {
                            if ev.is_writable() {
                                self.flush(wid);
                            }
                            let closed = ev.is_read_closed() || ev.is_error();
                            if ev.is_readable() || closed {
                                self.read_worker(wid, closed);
                            }
                        }
                        Source::Output => self.output_readable(wid),
                        Source::Pidfd => self.worker_pidfd_readable(wid),
                    }
                }
            }
            for wid in self.backlog.take() {
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
        if self.limiter.stopped.is_some() {
            self.retries.stop();
        }
        for d in self.retries.take_due() {
            self.delivery.stats.submitted += 1;
            match self.limiter.stopped.clone() {
                Some(why) => self
                    .delivery
                    .fail_dispatch(d, TaskError::new(ErrorKind::WorkerLost, why)),
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
            && !self.zygotes.any_loading()
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
                        self.delivery.stats.submitted += d.count as u64;
                        if let Some(why) = &self.limiter.stopped {
                            let why = why.clone();
                            self.delivery
                                .fail_dispatch(d, TaskError::new(ErrorKind::WorkerLost, why));
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
                    self.workers.target = self
                        .workers
                        .target
                        .saturating_add(n)
                        .min(super::MAX_WORKERS);
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
        let mut s = self.delivery.stats.clone();
        s.workers = self.workers.values().filter(|w| !w.state.broken()).count();
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
        s.target_workers = self.workers.target;
        s.stopped_forking = self.limiter.stopped.clone();
        (s.waiting_retry, s.retried) = self.retries.counts();
        s
    }

    // ----- timers ---------------------------------------------------------

    /// Arms a timer (stale ones are dropped when the heap grows).
    fn arm(&mut self, at: Instant, kind: TimerKind) {
        let (workers, zygotes) = (&self.workers, &self.zygotes);
        self.timers.arm(at, kind, |kind| match *kind {
            TimerKind::Soft(wid, job) | TimerKind::Hard(wid, job) => workers
                .get(&wid)
                .is_some_and(|w| w.inflight.front().is_some_and(|d| d.first_job == job)),
            TimerKind::ExitReport(wid) | TimerKind::EofKill(wid) => workers.get(&wid).is_some(),
            TimerKind::ZygoteStart(gen) => zygotes.list.iter().any(|z| z.gen == gen && z.loading()),
        });
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(kind) = self.timers.pop_due(now) {
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
                    self.kill_at_eof(wid);
                    continue;
                }
            };
            // Take in whatever the worker already answered: if the job is
            // done, the timer is stale and must not touch the next job.
            self.worker_readable(wid);
            let Some(w) = self.workers.get_mut(&wid) else {
                continue;
            };
            if w.state.broken() || w.inflight.front().map(|d| d.first_job) != Some(job) {
                continue;
            }
            if w.inflight.front().is_some_and(|d| d.count > 1) {
                self.chunk_timer(wid, kind);
                continue;
            }
            if let TimerKind::Hard(..) = kind {
                w.kill(Kill::TimeLimit(job));
            } else {
                if let Some(s) = self.board.slot(w.slot as usize) {
                    s.post_stop(StopReason::SoftTimeLimit.as_flag() as u64, job.0);
                }
                let _ = sys::pidfd_send_signal(&w.pidfd, sys::STOP_SIGNAL);
            }
        }
    }

    /// A time limit of the chunk `wid` runs: found on its page, the item
    /// running now gets the limit when it ran that long; otherwise the
    /// timer comes back when it would. The page is the worker's own and
    /// may be forged (C3): the chunk as a whole still ends when it ran
    /// the limit once per item (the bound before items were timed).
    fn chunk_timer(&mut self, wid: WorkerId, kind: TimerKind) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        let Some(d) = w.inflight.front() else {
            return;
        };
        let limits = d.limits.or(&self.cfg);
        let hard = matches!(kind, TimerKind::Hard(..));
        let Some(limit) = (if hard { limits.hard } else { limits.soft }) else {
            return;
        };
        let now = Instant::now();
        let (running, ran) = self
            .board
            .slot(w.slot as usize)
            .map(|s| s.running_for())
            .unwrap_or_default();
        let first_open = d.first_job.0.saturating_add(u64::from(d.delivered));
        let item = (running >= first_open && d.contains(JobId(running))).then_some(JobId(running));
        let backstop = w
            .head_since
            .and_then(|s| crate::bounds::deadline(s, crate::bounds::scaled(limit, d.count.max(1))));
        let overdue = backstop.is_some_and(|b| now >= b);
        let over = item.is_some() && ran >= limit;
        if over || overdue {
            let target = item.unwrap_or(JobId(first_open));
            if hard {
                w.kill(Kill::TimeLimit(target));
                return;
            }
            if w.soft_sent != Some(target) {
                w.soft_sent = Some(target);
                if let Some(s) = self.board.slot(w.slot as usize) {
                    s.post_stop(StopReason::SoftTimeLimit.as_flag() as u64, target.0);
                }
                let _ = sys::pidfd_send_signal(&w.pidfd, sys::STOP_SIGNAL);
            }
        }
        // The next look: when the item running now reaches the limit, or
        // (between items, or it was stopped) a whole limit from now, which
        // is no later than the next item's deadline.
        let wait = match item {
            // Not before the worker's clock word can have moved on.
            Some(j) if !over && w.soft_sent != Some(j) => {
                limit.saturating_sub(ran).max(sys::monotonic_coarse_res())
            }
            _ => limit,
        };
        let mut at = crate::bounds::deadline(now, wait);
        if !overdue {
            if let (Some(a), Some(b)) = (at, backstop) {
                at = Some(a.min(b));
            }
        }
        if let Some(at) = at {
            self.arm(at, kind);
        }
    }

    // ----- resizing, restarts, termination --------------------------------

    fn shrink(&mut self, n: usize) {
        let n = n.min(self.workers.target.saturating_sub(1));
        self.workers.target -= n;
        let zygotes = &self.zygotes;
        let excess = self
            .workers
            .live(|gen| zygotes.is_current(gen))
            .saturating_sub(self.workers.target);
        // Idle ones first, then busy ones finish their job and leave.
        self.workers.shrink_by(excess);
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
                if let Some(reply) = reply {
                    self.zygotes.on_ready(reply);
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

    fn terminate_all(&mut self, why: &str) {
        self.retries.close(Some(why));
        let queued: Vec<Dispatch> = self.queue.drain(..).collect();
        for d in queued {
            self.delivery.fail_dispatch(
                d,
                TaskError::new(
                    ErrorKind::Terminated,
                    format!("{why} before the job started"),
                ),
            );
        }
        for w in self.workers.map.values_mut() {
            w.kill(Kill::Shutdown);
            for d in w.inflight.drain(..) {
                self.delivery
                    .fail_dispatch(d, TaskError::new(ErrorKind::Terminated, why.to_string()));
            }
        }
    }

    /// Ends every worker and zygote and reaps them.
    fn shutdown(&mut self) {
        if !self.workers.map.is_empty() || !self.zygotes.list.is_empty() {
            tracing::debug!(
                "the pool shuts down: {} worker(s) ended (idle ones asked to exit, busy ones killed), {} zygote(s)",
                self.workers.map.len(),
                self.zygotes.list.len()
            );
        }
        for w in self.workers.map.values() {
            if w.inflight.is_empty() && !w.state.broken() {
                let _ = sys::write_all_vectored(&w.sock, &[&ipc::encode_exit()]);
            } else {
                w.signal_kill();
            }
        }
        self.workers.map.clear();
        self.zygotes.shutdown();
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Jobs waiting for a retry end as queued ones do.
        self.retries.close(None);
        self.shutdown();
    }
}
