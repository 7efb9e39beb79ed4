//! The loop's routes for births and deaths: zygotes starting, loading,
//! forking and dying; workers born, ending and replaced; the restart
//! limiter's verdicts. Each route asks the sub-owners and hands what they
//! return on; they never call each other.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use mio::{Interest, Token};

use super::super::events::Event;
use super::super::items::Gate;
use super::super::job::{Dispatch, WorkerId};
use super::launch;
use super::output::{Capture, Read};
use super::timers::TimerKind;
use super::workers::{Worker, WorkerState};
use super::zygotes::{Hello, Start, ZygoteEvent};
use super::{deaths, Ready, ReloadReply, Source, Supervisor, EXIT_REPORT_GRACE};
use crate::error::{ErrorKind, TaskError};
use crate::ipc::{FrameReader, ZygoteMsg};
use crate::sys::{self, ExitInfo};

impl Supervisor {
    // ----- zygotes --------------------------------------------------------

    /// Starts a zygote for a restart or to replace a dead one, without
    /// waiting: its hello arrives through the event loop (`zygote_hello`),
    /// and `load_timeout` later it is given up (`TimerKind::ZygoteStart`).
    pub(super) fn begin_zygote(&mut self, purpose: Start) -> Result<(), TaskError> {
        // A newer reload supersedes one still loading.
        for gen in self.zygotes.loading() {
            if let Some(zi) = self.zygotes.index_of_gen(gen) {
                self.zygote_start_failed(zi, "superseded by a newer restart".into());
            }
        }
        let z = launch::launch(&self.cfg, None)?;
        let gen = self.zygotes.gen + 1;
        tracing::debug!(
            "zygote pid {} started ({purpose:?}): loading the plugins as generation {gen}",
            z.pid
        );
        let token = self.token();
        self.zygotes
            .install(self.poll.registry(), token, z, gen, purpose, &self.cfg)?;
        // A load timeout past the clock's range (the builder refuses one
        // over bounds::MAX_DURATION) means no timer, never a panic.
        if let Some(t) = crate::bounds::deadline(Instant::now(), self.cfg.load_timeout) {
            self.arm(t, TimerKind::ZygoteStart(gen));
        }
        Ok(())
    }

    /// The hello of a zygote that was loading the plugins.
    pub(super) fn zygote_hello(&mut self, zi: usize, msg: ZygoteMsg) -> Ready {
        let loaded = match self.zygotes.hello(zi, msg, self.poll.registry()) {
            Hello::Loaded(l) => l,
            Hello::Refused(e, purpose, waiter) => {
                self.start_outcome(purpose, waiter, &e.message);
                return Err(e);
            }
            Hello::Unexpected => {
                let why = "the zygote sent an unexpected first message".to_string();
                self.zygote_start_failed(zi, why.clone());
                return Err(TaskError::new(ErrorKind::PluginLoad, why));
            }
        };
        let (gen, pid) = (loaded.gen, loaded.pid);
        match loaded.purpose {
            Start::Initial => {}
            Start::Replace => tracing::info!("a new zygote (pid {pid}) loaded the plugins"),
            Start::Restart => {
                tracing::info!(
                    "rolling restart: the plugins were reloaded (generation {gen}, zygote pid {pid}); the workers are replaced as they finish their jobs"
                );
                for w in self.workers.map.values_mut().filter(|w| w.gen != gen) {
                    w.leave();
                }
                self.delivery.stats.restarts += 1;
                self.retire_idle_leavers();
                let old: Vec<u64> = self
                    .zygotes
                    .list
                    .iter()
                    .filter(|z| z.retired())
                    .map(|z| z.gen)
                    .collect();
                for g in old {
                    self.maybe_finish_zygote(g);
                }
            }
        }
        if let Some(reply) = loaded.on_ready {
            let _ = reply.send(Ok(()));
        }
        Ok(loaded.plugins.as_ref().clone())
    }

    /// A zygote that was loading the plugins failed (or took too long):
    /// it is ended, and the pool goes on as it was (a failed reload keeps
    /// the current workers) or, if it was to replace a dead zygote, stops
    /// forking.
    fn zygote_start_failed(&mut self, zi: usize, why: String) {
        let (launched, purpose, waiter) = self.zygotes.remove(zi, self.poll.registry());
        let err = launch::load_failure(&self.cfg, launched, &why);
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

    pub(super) fn zygote_start_timeout(&mut self, gen: u64) {
        let loading = self
            .zygotes
            .index_of_gen(gen)
            .filter(|&zi| self.zygotes.list[zi].loading());
        if let Some(zi) = loading {
            let why = format!(
                "it did not finish loading them within {} (does a plugin's constructor block?)",
                humantime::format_duration(self.cfg.load_timeout)
            );
            self.zygote_start_failed(zi, why);
        }
    }

    pub(super) fn zygote_readable(&mut self, token: Token) {
        let mut buf = vec![0u8; 64 * 1024];
        // Looked up for each event: handling one may retire the zygote.
        while let Some(ev) = self.zygotes.next_event(token, &mut buf, &self.cfg) {
            let Some(zi) = self.zygotes.index_of(token) else {
                return;
            };
            match ev {
                ZygoteEvent::Hello(hello) => {
                    let _ = self.zygote_hello(zi, hello);
                }
                ZygoteEvent::StartFailed(why) => {
                    self.zygote_start_failed(zi, why);
                    return;
                }
                ZygoteEvent::Msg(msg, fds) => self.zygote_msg(msg, fds),
                ZygoteEvent::Died => {
                    self.zygote_died(zi);
                    return;
                }
            }
        }
    }

    fn zygote_msg(&mut self, msg: ZygoteMsg, fds: Vec<OwnedFd>) {
        match msg {
            ZygoteMsg::Spawned { worker, pid } => {
                let Some((slot, gen)) = self.workers.spawned(worker) else {
                    return;
                };
                let mut fds = fds.into_iter();
                let (Some(sock), Some(out), Some(pidfd)) = (fds.next(), fds.next(), fds.next())
                else {
                    // The kernel drops passed fds this process has no room
                    // for (MSG_CTRUNC): out of descriptors. Go on with the
                    // workers there are (no retry storm), or count a start
                    // failure when there are none.
                    self.workers.free_slots.push(slot);
                    let why = format!(
                        "a new worker's fds did not arrive: {}",
                        sys::fd_shortage_hint()
                    );
                    let live = self.workers.serving();
                    if live > 0 {
                        if self.workers.target > live {
                            tracing::error!(
                                "{why}; going on with {live} workers instead of {}",
                                self.workers.target
                            );
                            self.workers.target = live;
                        }
                    } else {
                        tracing::error!("{why}");
                        self.start_failed(why);
                    }
                    return;
                };
                tracing::debug!("{} started: pid {pid}, generation {gen}", WorkerId(worker));
                self.add_worker(WorkerId(worker), gen, slot, pid, sock, out, pidfd);
                if !self.zygotes.is_current(gen) {
                    // Requested before a restart: it leaves at once.
                    if let Some(w) = self.workers.get_mut(&WorkerId(worker)) {
                        w.leave();
                    }
                }
            }
            ZygoteMsg::SpawnFailed { worker, error } => {
                self.workers.spawn_failed(worker);
                self.start_failed(format!("fork failed: {error}"));
            }
            ZygoteMsg::Exited { pid, info } => {
                let wid = self.workers.values().find(|w| w.pid == pid).map(|w| w.id);
                if let Some(wid) = wid {
                    self.worker_exited(wid, Some(info), None);
                }
            }
            ZygoteMsg::Hello { .. } | ZygoteMsg::HelloPart { .. } => {}
        }
    }

    fn zygote_died(&mut self, zi: usize) {
        let Some(died) = self.zygotes.died(zi, self.poll.registry()) else {
            return;
        };
        let gen = died.gen;
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
            let unharmed = matches!(w.state, WorkerState::Serving | WorkerState::Leaving { .. });
            match w.inflight.front() {
                Some(d) if unharmed => {
                    let job = d.first_job.0;
                    w.leave();
                    // The culprit may have finished already (its kill()
                    // returned) and its worker moved on: name that job too.
                    let before = self
                        .board
                        .slot(w.slot as usize)
                        .map(|s| s.last_finished())
                        .filter(|&f| f != 0)
                        .map(|f| format!(", right after job {f}"))
                        .unwrap_or_default();
                    running.push(format!(
                        "job {job} on worker {} (pid {}){before}",
                        w.id, w.pid
                    ));
                }
                _ => {
                    let _ = sys::pidfd_send_signal(&w.pidfd, sys::SIGKILL);
                    self.worker_exited(wid, None, None);
                }
            }
        }
        if !running.is_empty() {
            // A zygote runs no task code: a death by a signal while jobs
            // ran is most likely one of their tasks' doing.
            tracing::error!(
                "the zygote (pid {}) died ({}) while these jobs were running: {}; one of their tasks may have killed it; they finish on their workers, which are then replaced",
                died.pid,
                died.status,
                running.join(", ")
            );
        }
        self.workers.forget_spawns_of(gen);
        if died.retired || self.closing {
            return;
        }
        let status = died.status;
        tracing::error!("the zygote died ({status}); starting a new one");
        self.start_failed(format!("the zygote died ({status})"));
        if self.limiter.stopped.is_none() {
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

    /// A retired zygote with no workers left is told to exit.
    fn maybe_finish_zygote(&mut self, gen: u64) {
        if !self.workers.any_of(gen) {
            self.zygotes.finish(gen, self.poll.registry());
        }
    }

    // ----- workers: birth -------------------------------------------------

    pub(super) fn ensure_workers(&mut self) {
        if self.limiter.stopped.is_some() || (self.closing && self.queue.is_empty()) {
            return;
        }
        loop {
            let zygotes = &self.zygotes;
            if self.workers.live(|gen| zygotes.is_current(gen)) >= self.workers.target {
                break;
            }
            let Some(z) = self.zygotes.current() else {
                break;
            };
            if !self.workers.request_spawn(z, &self.cfg, &mut self.board) {
                break;
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
            // Writable only while frames wait for room (`Supervisor::flush`).
            .register(&mut sock, sock_token, Interest::READABLE)
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
        self.delivery.stats.workers_started += 1;
        self.events.emit(Event::WorkerUp { worker: id, pid });
        self.workers.map.insert(
            id,
            Worker {
                id,
                gen,
                slot,
                pid,
                pidfd,
                pidfd_token: Some(pidfd_token),
                state: WorkerState::Serving,
                sock,
                sock_token,
                write_armed: false,
                output: Capture::new(output, out_token),
                reader: FrameReader::new(self.cfg.max_frame),
                outq: VecDeque::new(),
                inflight: VecDeque::new(),
                head_since: None,
                soft_sent: None,
                ready: false,
                refused: None,
                dispatches_done: 0,
                jobs_sent: 0,
                said_retiring: false,
                gate: Gate::new(self.waker.clone()),
                arena: None,
                want_out: 0,
                arena_failed: false,
            },
        );
    }

    /// Takes in what a worker wrote to stdout/stderr (`output.rs`).
    pub(super) fn output_readable(&mut self, wid: WorkerId) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        match w.output.read(w.pid, self.poll.registry()) {
            Read::Closed(token) => {
                self.tokens.remove(&token);
            }
            Read::More => self.backlog.push(wid),
            Read::Drained | Read::NoPipe => {}
        }
    }

    // ----- workers: death -------------------------------------------------

    /// The worker's pidfd turned readable: the process is gone. Its zygote
    /// normally reports how (signal, rusage) within microseconds; the
    /// death is made final after a grace period even without that report.
    pub(super) fn worker_pidfd_readable(&mut self, wid: WorkerId) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        let Some(token) = w.pidfd_token.take() else {
            return;
        };
        let _ = self
            .poll
            .registry()
            .deregister(&mut mio::unix::SourceFd(&w.pidfd.as_raw_fd()));
        self.tokens.remove(&token);
        let at = crate::bounds::saturating_deadline(Instant::now(), EXIT_REPORT_GRACE);
        self.arm(at, TimerKind::ExitReport(wid));
    }

    /// A worker died and its zygote did not say how within the grace
    /// period: the zygote is stopped or wedged. Finalize the worker without
    /// the report, and replace a zygote that is stopped.
    pub(super) fn exit_report_overdue(&mut self, wid: WorkerId) {
        let Some(gen) = self.workers.get(&wid).map(|w| w.gen) else {
            return; // the report came
        };
        let how = format!(
            "died (its zygote did not report how within {})",
            humantime::format_duration(EXIT_REPORT_GRACE)
        );
        self.worker_exited(wid, None, Some(how));
        self.zygotes.kill_if_stopped(gen);
    }

    /// A worker's socket closed mid-job (or before READY) a while ago and
    /// it is still alive: it lost its socket (its task or initializer
    /// closed it) and is killed.
    pub(super) fn kill_at_eof(&mut self, wid: WorkerId) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        let alive = w.pidfd_token.is_some();
        if let WorkerState::Broken {
            kill: None,
            killed_at_eof,
            ..
        } = &mut w.state
        {
            if alive && (!w.inflight.is_empty() || !w.ready) {
                *killed_at_eof = true;
                let _ = sys::pidfd_send_signal(&w.pidfd, sys::SIGKILL);
            }
        }
    }

    /// A worker ended: with its zygote's exit report (`info`), or without
    /// one (`lost_how` says why, if known).
    pub(super) fn worker_exited(
        &mut self,
        wid: WorkerId,
        info: Option<ExitInfo>,
        lost_how: Option<String>,
    ) {
        // Results the worker wrote before it died still count: the exit
        // report can overtake them in the event loop. A paused stream is
        // read to its end now (what is left is at most a socket buffer).
        if let Some(w) = self.workers.get(&wid) {
            self.streams.unpause(w);
        }
        self.worker_readable(wid);
        // Collect the last words first: they explain the death.
        self.output_readable(wid);
        let Some(mut w) = self.workers.map.remove(&wid) else {
            return;
        };
        let reg = self.poll.registry();
        let _ = reg.deregister(&mut w.sock);
        self.tokens.remove(&w.sock_token);
        if let Some(t) = w.pidfd_token.take() {
            let _ = reg.deregister(&mut mio::unix::SourceFd(&w.pidfd.as_raw_fd()));
            self.tokens.remove(&t);
        }
        if let Some(token) = w.output.close(reg) {
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
        let lost = deaths::on_exit(&self.cfg, &mut w, info.as_ref(), lost_how, slot);
        self.workers.free_slots.push(w.slot);
        self.events.emit(Event::WorkerDown {
            worker: wid,
            pid: w.pid,
            reason: lost.how.clone(),
        });
        if !lost.clean_exit {
            self.delivery.stats.worker_deaths += 1;
        }
        if let Some((job, count)) = lost.head {
            let elapsed = w.head_since.map(|s| s.elapsed()).unwrap_or_default();
            self.events.emit(Event::JobFinished {
                job,
                worker: wid,
                count,
                elapsed,
            });
        }
        if !lost.failed.is_empty() {
            let note = self.zygotes.overwritten(w.gen, info.as_ref(), &self.cfg);
            for (d, mut err) in lost.failed {
                if let Some((note, _)) = &note {
                    err.message.push_str(note);
                }
                self.delivery.fail_dispatch(d, err);
            }
            if note.is_some_and(|(_, reload)| reload) {
                self.restart(None);
            }
        }
        for d in lost.resend.into_iter().rev() {
            self.queue.push_front(d);
        }
        if let Some(why) = lost.died_at_start {
            self.start_failed(why);
        }
        self.maybe_finish_zygote(w.gen);
    }

    /// Counts a worker (or zygote) that died before doing any work; past
    /// the limit the pool stops forking and fails what is pending.
    pub(super) fn start_failed(&mut self, why: String) {
        self.delivery.stats.start_failures += 1;
        if let Some(stop) = self.limiter.start_failed(&why, &self.cfg) {
            self.stop_forking(stop);
        }
    }

    fn stop_forking(&mut self, why: String) {
        tracing::error!("{why}");
        self.limiter.stopped = Some(why.clone());
        let queued: Vec<Dispatch> = self.queue.drain(..).collect();
        for d in queued {
            self.delivery
                .fail_dispatch(d, TaskError::new(ErrorKind::WorkerLost, why.clone()));
        }
    }
}
