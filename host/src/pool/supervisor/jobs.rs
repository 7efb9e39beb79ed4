//! The loop's routes for the job flow: scheduling the queue onto workers,
//! sending, what workers answer (results, stream items, progress), and
//! terminating a job. Each route asks the sub-owners and hands what they
//! return on; they never call each other.

use std::time::Instant;

use billiard_plugin_api::StopReason;
use mio::Interest;

use super::super::events::Event;
use super::super::job::{Dispatch, JobId, WorkerId};
use super::conn::{self, Inbound};
use super::dispatch;
use super::streams::Items;
use super::timers::TimerKind;
use super::workers::Kill;
use super::{Supervisor, EOF_KILL_GRACE};
use crate::error::{ErrorKind, TaskError};
use crate::ipc;

impl Supervisor {
    pub(super) fn schedule(&mut self) {
        if !self.queue.is_empty() {
            // The frames go out once per worker, after the queue is
            // handed out: a worker given several jobs (prefetch, a burst
            // of submits) gets them in one write (`conn::flush`).
            let mut sent: Vec<WorkerId> = Vec::new();
            self.hand_out(&mut sent);
            for wid in sent {
                self.flush(wid);
            }
        }
        self.retire_idle_leavers();
    }

    /// Hands queued jobs to workers with room (their frames queued, not
    /// yet written); the workers given any are in `sent`.
    fn hand_out(&mut self, sent: &mut Vec<WorkerId>) {
        let prefetch = self.cfg.prefetch.max(1);
        // Least-loaded first: idle workers before ones with prefetched work.
        // A worker still starting (it has not said READY) takes only jobs
        // without a time limit, which wait in its socket until it reads
        // them: a job's time limits run from its dispatch, and a worker's
        // start-up (fork or exec, plugin load, initializer) is not the
        // job's time: a slow start must not end a job as `time_limit` that
        // never ran. Jobs without a limit gain the start-up's overlap.
        for depth in 0..prefetch {
            let mut ids: Vec<(WorkerId, bool)> = self
                .workers
                .values()
                .filter(|w| {
                    w.state.serving() && w.inflight.len() == depth && w.has_quota(&self.cfg)
                })
                .map(|w| (w.id, w.ready))
                .collect();
            ids.sort();
            for (wid, ready) in ids {
                // A dispatch can fail without reaching the worker (a task
                // gone after a reload, arguments over the frame limit):
                // then the worker is still free for the next one.
                loop {
                    let Some(front) = self.queue.front() else {
                        return;
                    };
                    if !ready && !dispatch::may_wait_for_ready(front, &self.cfg) {
                        break;
                    }
                    let Some(d) = self.queue.pop_front() else {
                        return;
                    };
                    if !sent.contains(&wid) {
                        sent.push(wid);
                    }
                    self.send_dispatch(wid, d);
                    let still_free = self.workers.get(&wid).is_some_and(|w| {
                        w.inflight.len() == depth && !w.state.broken() && w.has_quota(&self.cfg)
                    });
                    if !still_free {
                        break;
                    }
                }
            }
        }
    }

    fn send_dispatch(&mut self, wid: WorkerId, mut d: Dispatch) {
        let worker_gen = self.workers.get(&wid).map(|w| w.gen).unwrap_or(0);
        if let Err(e) = self.zygotes.resolve_for(&mut d, worker_gen) {
            self.delivery.fail_dispatch(d, e);
            return;
        }
        // A chunk runs in one RUN frame, item by item, its results coming
        // back in pieces (`ipc`), each item timed on its own (`chunk_timer`).
        // A streaming task's chunk still goes out job by job: its stream
        // items, their back-pressure and progress belong to the one job a
        // worker runs (`streams`), and its jobs are few and long anyway.
        let streaming = d.count > 1 && self.zygotes.is_streaming(&d, worker_gen);
        if streaming {
            if let Some(items) = d.split_items() {
                for item in items {
                    self.send_dispatch(wid, item);
                }
                return;
            }
        }
        let frame = match dispatch::run_frame(&d, &self.cfg) {
            Ok(f) => f,
            Err(e) => {
                self.delivery.fail_dispatch(d, e);
                return;
            }
        };
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!(
                "{} ({} item{}, attempt {}) to {wid} (pid {}): {}",
                d.first_job,
                d.count,
                if d.count == 1 { "" } else { "s" },
                d.attempt,
                self.workers.get(&wid).map_or(0, |w| w.pid),
                self.zygotes.task_name(worker_gen, &d),
            );
        }
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        let at = conn::arena_put(w, &d, &self.cfg);
        w.outq.push_back(frame.item(&d, at));
        let first = w.inflight.is_empty();
        w.jobs_sent = w.jobs_sent.saturating_add(u64::from(d.count));
        w.inflight.push_back(d);
        if first {
            self.head_started(wid);
        }
        // Written by `schedule`, with the worker's other new frames.
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
        w.soft_sent = None;
        let limits = d.limits.or(&self.cfg);
        // A chunk's first item starts now; `chunk_timer` follows the rest.
        // A deadline the clock cannot hold never comes (no timer), it
        // never panics here.
        let (job, count) = (d.first_job, d.count);
        let at = |limit: Option<std::time::Duration>| {
            limit.and_then(|l| crate::bounds::deadline(now, l))
        };
        let (soft, hard) = (at(limits.soft), at(limits.hard));
        if let Some(t) = soft {
            self.arm(t, TimerKind::Soft(wid, job));
        }
        if let Some(t) = hard {
            self.arm(t, TimerKind::Hard(wid, job));
        }
        self.events.emit(Event::JobStarted {
            job,
            worker: wid,
            count,
        });
    }

    /// Writes the worker's queued frames as far as its socket takes them;
    /// its socket is watched for room only while some wait.
    pub(super) fn flush(&mut self, wid: WorkerId) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        conn::flush(w);
        let want = !w.outq.is_empty() && !w.state.broken();
        if want == w.write_armed || w.state.broken() {
            return;
        }
        let interest = if want {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        // A modification looks at the socket as it is now: room made since
        // the write that blocked is not missed.
        match self
            .poll
            .registry()
            .reregister(&mut w.sock, w.sock_token, interest)
        {
            Ok(()) => w.write_armed = want,
            // Tried again at the next flush; the frames wait meanwhile.
            Err(e) => tracing::warn!("worker {wid}: cannot watch its socket for room: {e}"),
        }
    }

    /// Idle workers that must leave get their EXIT frame.
    pub(super) fn retire_idle_leavers(&mut self) {
        for wid in self.workers.exits_due() {
            self.flush(wid);
        }
    }

    // ----- what workers send ---------------------------------------------

    /// Takes in whatever the worker sent, to the end of what its socket
    /// holds (and its EOF).
    pub(super) fn worker_readable(&mut self, wid: WorkerId) {
        self.read_worker(wid, true);
    }

    /// Takes in what the worker sent; without `drain`, as far as the
    /// first short read (a readable event that did not say the worker
    /// closed its end: more, or the EOF, is a new event).
    pub(super) fn read_worker(&mut self, wid: WorkerId, drain: bool) {
        if self.streams.is_paused(wid) {
            // The consumer of its stream is behind: leave the socket full
            // (the worker's writes block); `resume_streams` reads on.
            return;
        }
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        let open = conn::fill(w, drain);
        loop {
            let Some(w) = self.workers.get_mut(&wid) else {
                return;
            };
            let Some(msg) = conn::next(w, &self.cfg) else {
                break;
            };
            match msg {
                Inbound::Done(h, payload) => self.done(wid, h, payload),
                Inbound::Items(job, count, records) => {
                    match self.streams.items(w, job, count, records) {
                        Items::Taken => {}
                        // Paused: the frames already read wait in the reader,
                        // and EOF is seen once it resumes.
                        Items::Pause => return,
                        Items::NotRunning => {
                            self.protocol_error(
                                wid,
                                &format!("stream items for job {job}, which it was not running"),
                            );
                        }
                    }
                }
                Inbound::Progress(job, done, total) => self.progress(wid, job, done, total),
                Inbound::Ready => w.ready = true,
                Inbound::Refused(why) => {
                    self.protocol_error(wid, &why);
                    return;
                }
            }
        }
        if !open {
            if let Some(w) = self.workers.get_mut(&wid) {
                // EOF: the worker exited or closed its socket. The zygote's
                // exit report finalizes it; make sure it really goes.
                w.broke();
                let kill_later = w.state.kill().is_none() && (!w.inflight.is_empty() || !w.ready);
                let _ = self.poll.registry().deregister(&mut w.sock);
                if kill_later {
                    // A worker that is exiting (killed from outside, or its
                    // task ended the process) closes its socket just before
                    // it is gone: give it a moment, so its own cause is the
                    // one reported. One still alive after that lost its
                    // socket mid-job (the task closed it) and is killed;
                    // so is one that lost it before READY (its initializer
                    // closed it): it can never serve, and it holds its
                    // place in the pool until its exit is reaped.
                    let at = crate::bounds::saturating_deadline(Instant::now(), EOF_KILL_GRACE);
                    self.arm(at, TimerKind::EofKill(wid));
                }
            }
        }
    }

    /// A progress report of the job `wid` runs.
    fn progress(&mut self, wid: WorkerId, job: u64, done: u64, total: u64) {
        let Some(d) = self.workers.get(&wid).and_then(|w| w.inflight.front()) else {
            return;
        };
        let i = job.wrapping_sub(d.first_job.0);
        if !d.contains(JobId(job)) || i < u64::from(d.delivered) || d.item_cancelled(i as u32) {
            // A report racing its job's end (or a chunk item's): stale.
            return;
        }
        self.events.emit(Event::JobProgress {
            job: JobId(job),
            done,
            total,
        });
        self.delivery.progress(d, i as u32, done, total);
    }

    /// Reads on from the workers whose stream consumers caught up.
    pub(super) fn resume_streams(&mut self) {
        let workers = &self.workers;
        let ready = self
            .streams
            .caught_up(|wid| workers.get(&wid).map(|w| w.gate.is_paused()));
        for wid in ready {
            self.worker_readable(wid);
        }
    }

    pub(super) fn protocol_error(&mut self, wid: WorkerId, why: &str) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        tracing::warn!(
            "worker {} (pid {}) broke the protocol: {why}; killing it",
            w.id,
            w.pid
        );
        w.output
            .tail
            .tail
            .push_back(format!("[billiard: protocol error from the worker: {why}]"));
        w.broke();
        w.refused.get_or_insert_with(|| why.to_string());
        let kill = w.state.kill().unwrap_or(Kill::Protocol);
        let _ = self.poll.registry().deregister(&mut w.sock);
        w.kill(kill);
    }

    fn done(&mut self, wid: WorkerId, h: ipc::DoneHeader, payload: Vec<u8>) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        // A single job's DONE, or the next piece of a chunk's (`ipc`).
        let piece = w.inflight.front().and_then(|d| {
            let at = d.first_job.0.saturating_add(u64::from(d.delivered));
            let fits = h.count >= 1
                && d.delivered
                    .checked_add(h.count)
                    .is_some_and(|e| e <= d.count);
            let ok = if d.count == 1 {
                h.job == d.first_job.0 && h.count == 1
            } else {
                h.job == at && fits
            };
            ok.then_some(d.delivered)
        });
        let Some(first) = piece else {
            self.protocol_error(
                wid,
                &format!("result for job {} which it was not running", h.job),
            );
            return;
        };
        let valid = w.inflight.front().is_some_and(|d| {
            d.count == 1 || dispatch::Delivery::valid_piece(d, first, h.count, &payload)
        });
        if !valid {
            self.protocol_error(
                wid,
                &format!("a malformed result for the jobs from {}", h.job),
            );
            return;
        }
        let ends = w
            .inflight
            .front()
            .is_some_and(|d| first.saturating_add(h.count) >= d.count);
        if !ends {
            // A piece of the chunk: more follow.
            if let Some(d) = w.inflight.front_mut() {
                self.delivery.done(d, first, h.count, h.status, payload);
            }
            return;
        }
        let Some(mut d) = w.inflight.pop_front() else {
            return;
        };
        conn::arena_finished(w, d.first_job.0);
        w.dispatches_done += 1;
        if h.flags & ipc::FLAG_RETIRING != 0 {
            w.retiring();
            self.delivery.stats.recycled += 1;
        } else if w.inflight.is_empty() && w.state.serving() && !w.has_quota(&self.cfg) {
            // Sent its whole quota and idle, yet it did not say it retires
            // (it counted fewer tasks: a chunk whose records did not
            // parse): it gets nothing more, so it must not sit idle in a
            // place of the pool; it is recycled as if it had said so.
            w.leave();
            self.delivery.stats.recycled += 1;
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
        self.delivery
            .done(&mut d, first, h.count, h.status, payload);
    }

    /// Ends job `job` on request: failed at once if queued; its worker
    /// killed if it runs it; marked cancelled if it waits behind another
    /// on its worker. False if the pool does not hold it.
    pub(super) fn terminate_job(&mut self, job: JobId) -> bool {
        if let Some(pos) = self.queue.iter().position(|d| d.contains(job)) {
            if let Some(d) = self.queue.remove(pos) {
                let err = TaskError::new(
                    ErrorKind::Terminated,
                    format!("job {} was terminated on request before it started", job.0),
                );
                self.delivery.fail_dispatch(d, err);
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
        let slot = self.board.slot(w.slot as usize);
        let finished = slot.map(|s| s.last_finished());
        let head = &w.inflight[pos];
        if head.count > 1 {
            // An item of a chunk: killed if its page says it runs now (the
            // items before it keep their results, the ones after it are
            // resent); else it ends as `terminated` whatever it returns,
            // told to stop if it starts.
            let i = job.0.saturating_sub(head.first_job.0);
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            if i < head.delivered {
                // Its outcome went out: the pool no longer holds it.
                return false;
            }
            let running = slot.map(|s| s.running_for().0);
            if pos == 0 && running == Some(job.0) && !w.state.broken() {
                w.kill(Kill::Terminated(job));
            } else {
                w.inflight[pos].cancel_item(i);
                if let Some(s) = slot {
                    s.post_stop(StopReason::Cancelled.as_flag() as u64, job.0);
                }
            }
            return true;
        }
        // The worker's current job, unless it already finished it and its
        // result is on the way (then killing would only hit the next job).
        // "Finished" is the worker's own page, which its task can forge to
        // dodge the kill: it is believed only when a job behind it on the
        // worker could be hit; with none, the kill costs no other job (C3).
        let claimed_done = finished.is_some_and(|f| head.contains(JobId(f)));
        let current = pos == 0 && (!claimed_done || w.inflight.len() == 1);
        if current && !w.state.broken() {
            // Kill exactly this (worker, job): it is running it, or about to.
            w.kill(Kill::Terminated(job));
        } else {
            // Prefetched behind the current job, or finished with its result
            // on the way: it ends as `terminated` whatever it returns, and a
            // cooperative task is told to stop as soon as it starts.
            w.inflight[pos].cancelled = true;
            if let Some(s) = slot {
                s.post_stop(StopReason::Cancelled.as_flag() as u64, job.0);
            }
        }
        true
    }
}
