//! Deaths: what a worker's end means for the jobs it held, and the
//! restart limiter that stops the pool forking when workers keep dying at
//! start.

use std::collections::VecDeque;
use std::time::Instant;

use super::super::config::PoolConfig;
use super::super::job::{Dispatch, JobId};
use super::workers::{Kill, Worker};
use crate::error::{ErrorKind, TaskError};
use crate::sys::{self, ExitInfo, Slot};

/// A job whose worker died before starting it (by the worker's own page,
/// which its task can forge) is resent this many times before it fails as
/// `worker_lost`: after its second death (C3).
const MAX_UNSTARTED_RETRIES: u32 = 1;

/// What a worker's end comes to, for the loop to route.
pub(super) struct Lost {
    /// How it ended, in words.
    pub how: String,
    /// It exited by itself with nothing in flight.
    pub clean_exit: bool,
    /// The job (first id, count) it was running when it ended.
    pub head: Option<(JobId, u32)>,
    /// The job it was running, failed (with the error to deliver); of a
    /// chunk: the item running, and the items that finished but whose
    /// results were lost.
    pub failed: Vec<(Dispatch, TaskError)>,
    /// Jobs it held that never ran (or may run again): queued again, first.
    pub resend: Vec<Dispatch>,
    /// It died before it said READY: why, for the restart limiter.
    pub died_at_start: Option<String>,
}

/// The fate of what `w` held, from its exit report (`None`: none came;
/// `lost_how` says why) and its scoreboard slot (cleared here for the next
/// worker).
pub(super) fn on_exit(
    cfg: &PoolConfig,
    w: &mut Worker,
    info: Option<&ExitInfo>,
    lost_how: Option<String>,
    slot: Option<&Slot>,
) -> Lost {
    let (running, finished) = slot.map(Slot::reset).unwrap_or((0, 0));
    let how = info
        .map(ExitInfo::describe)
        .or(lost_how)
        .unwrap_or_else(|| "was lost when its zygote died".into());
    // A worker that said it retires (memory over its limit, or a quota
    // prefetch could not foresee) and then exited 0 ended as asked: the
    // jobs it still held were sent before that was known and never ran;
    // they go back uncharged. (A task that forges RETIRING and exits
    // gains nothing: the jobs behind it are other jobs, each resent once
    // per such end, and its own job is finished by its forged result.)
    let retired = w.said_retiring && info.is_some_and(|i| i.code == Some(0));
    let clean_exit = info.is_some_and(|i| i.code == Some(0)) && (w.inflight.is_empty() || retired);
    tracing::debug!(
        "{} (pid {}) ended: {how}; {} dispatch(es) in flight, {} done",
        w.id,
        w.pid,
        w.inflight.len(),
        w.dispatches_done
    );
    let head = w.inflight.front().map(|d| (d.first_job, d.count));
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
    let kill = w.state.kill();
    let died_at_start = !w.ready && kill.is_none() && !clean_exit && !w.state.leaving();
    let mut inflight = std::mem::take(&mut w.inflight);
    let mut failed = Vec::new();
    // Nothing it held ran: a death at start, or an announced retirement.
    let uncharged = died_at_start || retired;
    let chunk = inflight.front().is_some_and(|d| d.count > 1) && !uncharged;
    if chunk {
        if let Some(head) = inflight.pop_front() {
            let page = Page { running, finished };
            let (lost, resend) = chunk_death(cfg, w, head, page, info, &how);
            failed = lost;
            if let Some(d) = resend {
                inflight.push_front(d);
            }
        }
    } else if let Some(mut head) = inflight.pop_front() {
        // Whether the job had started comes from the worker's own page,
        // which its task can rewrite ("not started" forged to be run
        // again): so every death of a set-up worker is charged to the
        // job it was running, and a job is resent at most
        // MAX_UNSTARTED_RETRIES times (C3). Deaths at start are bounded
        // by the start-failure limit instead; no task can fake one.
        if uncharged
            || (!head_started
                && kill.is_none()
                && head.attempt < head.retries.saturating_add(MAX_UNSTARTED_RETRIES))
        {
            if !uncharged {
                head.attempt += 1;
            }
            inflight.push_front(head);
        } else {
            let err = death_error(cfg, w, &head, info, &how, head_started, head_finished);
            failed.push((head, err));
        }
    }
    let died_at_start = died_at_start.then(|| {
        let tail = w.output.tail.report();
        format!(
            "a worker died before running any job ({how}){}",
            if tail.is_empty() {
                String::new()
            } else {
                format!("; its last output:\n{tail}")
            }
        )
    });
    Lost {
        how,
        clean_exit,
        head,
        failed,
        // Jobs queued behind (prefetch) never started: run them elsewhere.
        resend: inflight.into(),
        died_at_start,
    }
}

/// What a dead worker's page said: the job it ran, the one it finished
/// last (0: none).
#[derive(Clone, Copy)]
struct Page {
    running: u64,
    finished: u64,
}

/// The fate of a chunk whose worker died while it ran it: the items whose
/// results came keep them (they went out), the item running gets the
/// death, the items that finished after the last result that came are
/// failed as finished (they ran; never resent), and the items not started
/// go back to the queue as a smaller chunk. Returns the failed pieces and
/// what to resend.
///
/// The page is the worker's own, which its task can forge (C3): with no
/// item running by it, the first item it says had not started is charged
/// as a single job is (resent with its attempt raised, at most
/// MAX_UNSTARTED_RETRIES times, then failed), so a forging task cannot run
/// its items forever: every death either fails an item or raises the
/// attempt of what is resent.
fn chunk_death(
    cfg: &PoolConfig,
    w: &Worker,
    mut head: Dispatch,
    page: Page,
    info: Option<&ExitInfo>,
    how: &str,
) -> (Vec<(Dispatch, TaskError)>, Option<Dispatch>) {
    let open = head.delivered;
    let index = |id: u64| -> Option<u32> {
        let i = id.checked_sub(head.first_job.0)?;
        let i = u32::try_from(i).ok()?;
        (id != 0 && i >= open && i < head.count).then_some(i)
    };
    let (running, finished) = (index(page.running), index(page.finished));
    let mut failed = Vec::new();
    // `head` keeps the items before `at`; what is split off goes on.
    let split = |head: &mut Dispatch, at: u32| -> Option<Dispatch> { head.split_off(at) };
    // Items `open..at` ran to their end, their results lost.
    let lost = |head: Dispatch, failed: &mut Vec<(Dispatch, TaskError)>| {
        let err = death_error(cfg, w, &head, info, how, true, true);
        failed.push((head, err));
    };
    match running {
        Some(k) => {
            let tail = split(&mut head, k.saturating_add(1));
            let item = if k > open { split(&mut head, k) } else { None };
            match item {
                Some(item) => {
                    lost(head, &mut failed);
                    let err = death_error(cfg, w, &item, info, how, true, false);
                    failed.push((item, err));
                }
                // The item is all that is left (or the chunk did not split:
                // it fails whole, as before items were told apart).
                None => {
                    let err = death_error(cfg, w, &head, info, how, true, false);
                    failed.push((head, err));
                }
            }
            (failed, tail)
        }
        None => {
            let next = finished.map_or(open, |f| f.saturating_add(1));
            let mut rest = if next > open {
                match split(&mut head, next) {
                    Some(rest) => {
                        lost(head, &mut failed);
                        rest
                    }
                    None => {
                        // Every item finished (or no split): it ran.
                        lost(head, &mut failed);
                        return (failed, None);
                    }
                }
            } else {
                head
            };
            if rest.attempt < rest.retries.saturating_add(MAX_UNSTARTED_RETRIES) {
                rest.attempt += 1;
                return (failed, Some(rest));
            }
            let second = rest.delivered.saturating_add(1);
            let tail = split(&mut rest, second);
            let err = death_error(cfg, w, &rest, info, how, false, false);
            failed.push((rest, err));
            (failed, tail)
        }
    }
}

/// Workers (or zygotes) that died before doing any work, in the restart
/// window; past the limit the pool stops forking (`stopped`).
#[derive(Default)]
pub(super) struct RestartLimiter {
    failures: VecDeque<Instant>,
    /// Why the pool stopped forking, once it did.
    pub stopped: Option<String>,
}

impl RestartLimiter {
    /// Counts a start failure; returns why the pool must stop forking when
    /// this one is past the limit.
    pub fn start_failed(&mut self, why: &str, cfg: &PoolConfig) -> Option<String> {
        let now = Instant::now();
        self.failures.push_back(now);
        while self
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > cfg.restart_window)
        {
            self.failures.pop_front();
        }
        (self.failures.len() as u32 >= cfg.max_start_failures).then(|| {
            format!(
                "the pool stopped starting workers: {} died at start within {}; last: {why}",
                self.failures.len(),
                humantime::format_duration(cfg.restart_window)
            )
        })
    }
}

fn death_error(
    cfg: &PoolConfig,
    w: &Worker,
    head: &Dispatch,
    info: Option<&ExitInfo>,
    how: &str,
    started: bool,
    finished: bool,
) -> TaskError {
    // The items whose outcomes did not go out: the ones this is about.
    let first = head.first_job.0.saturating_add(u64::from(head.delivered));
    let count = head.count.saturating_sub(head.delivered);
    match w.state.kill() {
        Some(Kill::TimeLimit(job)) if head.contains(job) => {
            let limit = head.limits.or(cfg).hard.unwrap_or_default();
            return TaskError::new(
                ErrorKind::TimeLimit,
                format!(
                    "job {} exceeded its hard time limit of {}; worker {} (pid {}) was killed and replaced",
                    first,
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
        "worker {} (pid {}) {how} while running job {first}",
        w.id, w.pid
    );
    if count > 1 {
        msg.push_str(&format!(
            " (and the {} jobs after it in its chunk)",
            count.saturating_sub(1)
        ));
    }
    if let Some(i) = info {
        msg.push_str(&format!(
            "; peak memory {} KiB, cpu {:.3}s",
            i.max_rss_kib,
            i.cpu_time().as_secs_f64()
        ));
        if let (Some(limit), Some(sig)) = (cfg.address_space_limit, i.signal) {
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
        .filter(|_| w.state.kill() == Some(Kill::Protocol));
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
        None if w.state.kill() == Some(Kill::Protocol) => {
            msg.push_str("; the worker sent malformed data on its socket and was killed")
        }
        _ => {}
    }
    if w.state.killed_at_eof() && info.is_some_and(|i| i.signal == Some(libc::SIGKILL)) {
        msg.push_str(
            "; the pool killed it because its socket to the pool closed mid-job \
             (the task closed or replaced fd 3)",
        );
    } else if info.is_some_and(|i| i.signal == Some(libc::SIGKILL)) && w.state.kill().is_none() {
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
    if !w.output.tail.tail.is_empty() {
        msg.push_str("; last output:\n");
        msg.push_str(&w.output.tail.report());
    }
    TaskError::new(ErrorKind::WorkerLost, msg)
}

fn bytesize_text(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
