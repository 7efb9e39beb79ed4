//! Timers: job time limits, worker exit deadlines and zygote load
//! deadlines, in one heap. Timers are never cancelled: each is checked when
//! it fires (the loop asks whether it still applies), and the heap is
//! compacted when it grows past twice its live size, so a long time limit
//! over millions of short jobs does not pile up millions of stale entries.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use super::super::job::{JobId, WorkerId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum TimerKind {
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

pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, TimerKind)>>,
    /// The heap size past which stale timers are dropped (`arm`).
    compact_at: usize,
}

impl Default for Timers {
    fn default() -> Timers {
        Timers {
            heap: BinaryHeap::new(),
            compact_at: 1024,
        }
    }
}

impl Timers {
    /// Arms a timer; `is_live` tells the timers that still apply when the
    /// heap is compacted.
    pub fn arm(&mut self, at: Instant, kind: TimerKind, is_live: impl Fn(&TimerKind) -> bool) {
        self.heap.push(Reverse((at, kind)));
        if self.heap.len() > self.compact_at {
            let live: Vec<Reverse<(Instant, TimerKind)>> = std::mem::take(&mut self.heap)
                .into_iter()
                .filter(|Reverse((_, kind))| is_live(kind))
                .collect();
            self.heap = BinaryHeap::from(live);
            self.compact_at = (self.heap.len() * 2).max(1024);
        }
    }

    /// When the next timer is due.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// The next timer due at `now`, taken off the heap.
    pub fn pop_due(&mut self, now: Instant) -> Option<TimerKind> {
        let Reverse((t, kind)) = self.heap.peek().copied()?;
        if t > now {
            return None;
        }
        self.heap.pop();
        Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stale_timers_are_compacted_and_due_ones_come_in_order() {
        let mut t = Timers::default();
        let now = Instant::now();
        for i in 0..3000u64 {
            // Only the even ones stay live.
            t.arm(
                now,
                TimerKind::ExitReport(WorkerId(i)),
                |k| matches!(k, TimerKind::ExitReport(WorkerId(n)) if n % 2 == 0),
            );
        }
        assert!(t.heap.len() < 3000, "compacted: {}", t.heap.len());
        let later = now + Duration::from_secs(1);
        t.arm(later, TimerKind::ZygoteStart(1), |_| true);
        assert_eq!(t.next(), Some(now));
        let mut n = 0;
        while let Some(k) = t.pop_due(now) {
            assert_ne!(k, TimerKind::ZygoteStart(1));
            n += 1;
        }
        assert!(n > 0);
        assert_eq!(t.pop_due(later), Some(TimerKind::ZygoteStart(1)));
        assert_eq!(t.pop_due(later), None);
    }
}
