//! Workers: each one's lifecycle ([`WorkerState`]) and the table of them
//! with the scoreboard slots, the spawn requests in flight and the target
//! size. The kill of a worker (its process group, then its pidfd) exists
//! here only ([`Worker::kill`]).

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use mio::Token;

use super::super::config::PoolConfig;
use super::super::items::Gate;
use super::super::job::{Dispatch, WorkerId};
use super::conn::OutItem;
use super::output::Capture;
use super::zygotes::Zygote;
use crate::ipc::{self, FrameReader, WorkerParams, ZygoteCmd};
use crate::shm;
use crate::sys::{self, Scoreboard};

/// Why the pool killed a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kill {
    TimeLimit(crate::pool::JobId),
    Terminated(crate::pool::JobId),
    Protocol,
    Shutdown,
}

/// Where a worker is in its life. Whether it said READY is not part of it
/// ([`Worker::ready`]): that is a fact the worker wrote once, before any
/// task ran, and every state below can hold with or without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WorkerState {
    /// Takes jobs (once READY).
    Serving,
    /// Takes no new jobs: it exits after those it has (recycled, shrunk,
    /// restarted). `exit_sent`: its EXIT frame is queued, or it exits by
    /// itself (it said it retires).
    Leaving { exit_sent: bool },
    /// The pool killed it; what it wrote before that still counts, and its
    /// exit finalizes it.
    Killed(Kill),
    /// Its socket failed or closed, or it broke the protocol: nothing more
    /// is sent to it; its exit report finalizes it.
    Broken {
        /// Why the pool killed it, if it did.
        kill: Option<Kill>,
        /// It was leaving (or killed) when its socket broke.
        leaving: bool,
        /// Its socket closed mid-job and the pool killed it for that (so
        /// a "killed by SIGKILL" is the pool's doing, not an outside kill).
        killed_at_eof: bool,
    },
}

impl WorkerState {
    /// Gets new jobs (with READY), counts towards the target.
    pub fn serving(&self) -> bool {
        matches!(self, WorkerState::Serving)
    }

    pub fn broken(&self) -> bool {
        matches!(self, WorkerState::Broken { .. })
    }

    pub fn kill(&self) -> Option<Kill> {
        match *self {
            WorkerState::Killed(k) => Some(k),
            WorkerState::Broken { kill, .. } => kill,
            _ => None,
        }
    }

    /// It was to leave: asked to, killed, or broken while leaving.
    pub fn leaving(&self) -> bool {
        match *self {
            WorkerState::Serving => false,
            WorkerState::Leaving { .. } | WorkerState::Killed(_) => true,
            WorkerState::Broken { leaving, .. } => leaving,
        }
    }

    /// Killed by the pool (a broken worker keeps what it was).
    fn kill_for(&mut self, why: Kill) {
        match self {
            WorkerState::Broken { kill, .. } => *kill = Some(why),
            _ => *self = WorkerState::Killed(why),
        }
    }

    fn leave(&mut self) {
        match self {
            WorkerState::Serving => *self = WorkerState::Leaving { exit_sent: false },
            WorkerState::Broken { leaving, .. } => *leaving = true,
            WorkerState::Leaving { .. } | WorkerState::Killed(_) => {}
        }
    }

    fn retiring(&mut self) {
        match self {
            WorkerState::Serving | WorkerState::Leaving { .. } => {
                *self = WorkerState::Leaving { exit_sent: true }
            }
            WorkerState::Broken { leaving, .. } => *leaving = true,
            WorkerState::Killed(_) => {}
        }
    }

    fn broke(&mut self) {
        if !self.broken() {
            *self = WorkerState::Broken {
                kill: self.kill(),
                leaving: self.leaving(),
                killed_at_eof: false,
            };
        }
    }

    pub fn killed_at_eof(&self) -> bool {
        matches!(
            self,
            WorkerState::Broken {
                killed_at_eof: true,
                ..
            }
        )
    }
}

pub(super) struct Worker {
    pub id: WorkerId,
    pub gen: u64,
    pub slot: u32,
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// The pidfd's token while it is watched; `None` once it said the
    /// process is gone (the zygote's exit report may still be on its way).
    pub pidfd_token: Option<Token>,
    pub state: WorkerState,
    pub sock: mio::net::UnixStream,
    pub sock_token: Token,
    /// Its socket is watched for room to write: only while frames wait in
    /// `outq` (every read of the worker frees room; watched always, each
    /// woke the supervisor for nothing, once per job: issue 26).
    pub write_armed: bool,
    pub output: Capture,
    pub reader: FrameReader,
    pub outq: VecDeque<OutItem>,
    pub inflight: VecDeque<Dispatch>,
    /// When the job at the head of `inflight` started (its timers run from here).
    pub head_since: Option<Instant>,
    /// The item of its running chunk its soft limit was delivered to.
    pub soft_sent: Option<super::super::job::JobId>,
    /// It said READY (set up, taking jobs): written before any job's task
    /// ran, so a task cannot unsay it. A death without it is a death at
    /// start (counted by the restart limiter, no job charged); a death
    /// after it is charged to the job it was running (C3).
    pub ready: bool,
    /// Why the pool refused what it sent (a protocol error), for the job's
    /// message.
    pub refused: Option<String>,
    pub dispatches_done: u64,
    /// Jobs sent to it so far (a chunk counts its items): against
    /// `max_tasks_per_child`, so that it is never sent a job it would
    /// retire before running.
    pub jobs_sent: u64,
    /// It said it retires (RETIRING on a result: its quota or memory):
    /// what it still holds was sent before that was known and never ran.
    pub said_retiring: bool,
    /// Stream item bytes of this worker on their way to a consumer.
    pub gate: Arc<Gate>,
    /// Its shared-memory arena for large payloads (`crate::shm`), made the
    /// first time it needs one; freed with it.
    pub arena: Option<shm::HostArena>,
    /// The largest result it sent through its socket for want of room in
    /// an arena (its next arena's out region is made that big).
    pub want_out: usize,
    /// Creating an arena failed for it: its payloads use the socket.
    pub arena_failed: bool,
}

impl Worker {
    /// Whether its task quota (`max_tasks_per_child`) leaves room for
    /// another job: it retires after the dispatch that uses the quota up,
    /// so a job sent past it would come back unrun, charged an attempt.
    pub fn has_quota(&self, cfg: &PoolConfig) -> bool {
        cfg.max_tasks_per_child.is_none_or(|m| self.jobs_sent < m)
    }

    /// Its socket broke before it said READY, and nobody asked it to go:
    /// its exit, once reaped, is a start failure.
    fn dying_at_start(&self) -> bool {
        !self.ready && self.state.broken() && self.state.kill().is_none() && !self.state.leaving()
    }

    /// The pool kills it: its process group (grandchildren a task spawned)
    /// and the process itself, by pidfd (never a reused pid).
    pub fn kill(&mut self, why: Kill) {
        self.state.kill_for(why);
        self.signal_kill();
    }

    /// SIGKILL to its process group and to it (the kill pair).
    pub fn signal_kill(&self) {
        let _ = sys::kill_group(self.pid, sys::SIGKILL);
        let _ = sys::pidfd_send_signal(&self.pidfd, sys::SIGKILL);
    }

    /// Takes no new work from now on.
    pub fn leave(&mut self) {
        self.state.leave();
    }

    /// It said it retires (its task quota is used up): it exits by itself.
    pub fn retiring(&mut self) {
        self.said_retiring = true;
        self.state.retiring();
    }

    /// Its socket failed, closed or carried garbage: it gets nothing more.
    pub fn broke(&mut self) {
        self.state.broke();
    }

    /// Idle, leaving and not told yet: it gets its EXIT frame now.
    pub fn take_exit(&mut self) -> bool {
        if self.state == (WorkerState::Leaving { exit_sent: false }) && self.inflight.is_empty() {
            self.state = WorkerState::Leaving { exit_sent: true };
            self.outq
                .push_back(OutItem::frame(ipc::encode_exit().to_vec()));
            return true;
        }
        false
    }
}

/// The workers, their scoreboard slots and the spawns asked for.
pub(super) struct Workers {
    pub map: super::IntMap<WorkerId, Worker>,
    pub free_slots: Vec<u32>,
    next_worker: u64,
    /// Spawn requests not answered yet: worker id → (slot, zygote generation).
    pub pending: super::IntMap<u64, (u32, u64)>,
    pub target: usize,
}

impl Workers {
    pub fn new(slots: u32, target: usize) -> Workers {
        Workers {
            map: Default::default(),
            free_slots: (0..slots).rev().collect(),
            next_worker: 1,
            pending: Default::default(),
            target,
        }
    }

    pub fn get(&self, wid: &WorkerId) -> Option<&Worker> {
        self.map.get(wid)
    }

    pub fn get_mut(&mut self, wid: &WorkerId) -> Option<&mut Worker> {
        self.map.get_mut(wid)
    }

    pub fn values(&self) -> impl Iterator<Item = &Worker> {
        self.map.values()
    }

    /// Serving workers plus spawns asked of a zygote `is_current` says is
    /// current: what counts towards the target.
    ///
    /// A worker whose socket broke before it said READY still holds its
    /// place until its exit is reaped: that exit is what the restart
    /// limiter counts, so replacing it earlier would let forks run ahead
    /// of the limiter on a busy machine (a worker dying in its
    /// initializer would be replaced, and its replacement die, before the
    /// first death was ever counted).
    pub fn live(&self, is_current: impl Fn(u64) -> bool) -> usize {
        self.map
            .values()
            .filter(|w| w.state.serving() || w.dying_at_start())
            .count()
            + self
                .pending
                .values()
                .filter(|(_, gen)| is_current(*gen))
                .count()
    }

    pub fn serving(&self) -> usize {
        self.map.values().filter(|w| w.state.serving()).count()
    }

    /// Whether a worker or a spawn of generation `gen` is left.
    pub fn any_of(&self, gen: u64) -> bool {
        self.map.values().any(|w| w.gen == gen) || self.pending.values().any(|(_, g)| *g == gen)
    }

    /// The spawns asked of generation `gen` (its zygote died): their
    /// slots are free again.
    pub fn forget_spawns_of(&mut self, gen: u64) {
        let lost: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, (_, g))| *g == gen)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            if let Some((slot, _)) = self.pending.remove(&id) {
                self.free_slots.push(slot);
            }
        }
    }

    /// An answered spawn: its slot and generation.
    pub fn spawned(&mut self, worker: u64) -> Option<(u32, u64)> {
        self.pending.remove(&worker)
    }

    /// A failed spawn: its slot is free again.
    pub fn spawn_failed(&mut self, worker: u64) {
        if let Some((slot, _)) = self.pending.remove(&worker) {
            self.free_slots.push(slot);
        }
    }

    /// Asks zygote `z` for one more worker; false if it cannot now (no
    /// free slot, a full zygote socket, no page for its scoreboard slot).
    pub fn request_spawn(&mut self, z: &Zygote, cfg: &PoolConfig, board: &mut Scoreboard) -> bool {
        let Some(slot) = self.free_slots.pop() else {
            tracing::warn!("no free scoreboard slot; not starting more workers");
            return false;
        };
        let initializer = cfg.initializer.as_ref().and_then(|init| {
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
            max_tasks: cfg.max_tasks_per_child,
            max_memory: cfg.max_memory_per_child,
            address_space_limit: cfg.address_space_limit,
            initializer,
            max_frame: cfg.max_frame,
            host_flags: if cfg.bytes_base64 {
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
        let page = match board.renew(slot as usize) {
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
        self.pending.insert(id, (slot, gen));
        true
    }

    /// Idle leavers not told yet get their EXIT frame; returns them (to
    /// flush).
    pub fn exits_due(&mut self) -> Vec<WorkerId> {
        self.map
            .values_mut()
            .filter_map(|w| w.take_exit().then_some(w.id))
            .collect()
    }

    /// Marks `n` serving workers leaving, idle ones first.
    pub fn shrink_by(&mut self, n: usize) {
        let mut excess = n;
        let mut ids: Vec<(bool, WorkerId)> = self
            .map
            .values()
            .filter(|w| w.state.serving())
            .map(|w| (!w.inflight.is_empty(), w.id))
            .collect();
        ids.sort();
        for (_, wid) in ids {
            if excess == 0 {
                break;
            }
            if let Some(w) = self.map.get_mut(&wid) {
                w.leave();
                excess -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::JobId;

    #[test]
    fn a_worker_state_moves_one_way_and_keeps_what_matters() {
        let mut s = WorkerState::Serving;
        assert!(s.serving() && !s.leaving() && s.kill().is_none());
        s.leave();
        assert_eq!(s, WorkerState::Leaving { exit_sent: false });
        s.retiring();
        assert_eq!(s, WorkerState::Leaving { exit_sent: true });
        // Broken while leaving: still leaving (not a death at start).
        s.broke();
        assert!(s.broken() && s.leaving() && s.kill().is_none());
        s.kill_for(Kill::Shutdown);
        assert_eq!(s.kill(), Some(Kill::Shutdown));
        assert!(s.broken() && s.leaving());

        // Killed, then its socket closes: the kill is kept (not an outside kill).
        let mut k = WorkerState::Serving;
        k.kill_for(Kill::TimeLimit(JobId(7)));
        assert!(!k.serving() && k.leaving());
        k.broke();
        assert_eq!(
            k,
            WorkerState::Broken {
                kill: Some(Kill::TimeLimit(JobId(7))),
                leaving: true,
                killed_at_eof: false
            }
        );
        // A killed worker that said it retires stays killed.
        let mut r = WorkerState::Killed(Kill::Protocol);
        r.retiring();
        r.leave();
        assert_eq!(r, WorkerState::Killed(Kill::Protocol));

        // Broken while serving: not leaving (a death at start counts).
        let mut b = WorkerState::Serving;
        b.broke();
        assert!(b.broken() && !b.leaving() && !b.killed_at_eof());
    }
}
