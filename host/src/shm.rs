//! Large payloads through shared memory.
//!
//! A job's argument bytes at or above the pool's `shm_threshold` do not go
//! through the worker's socket: the supervisor copies them into the
//! worker's *arena* and the RUN_SHM frame names `(offset, length)`; the
//! worker hands the plugin a slice of that mapping (no copy). A result at
//! or above the threshold goes back the same way (DONE_SHM): the worker
//! copies the plugin's output into its arena's out region and the
//! supervisor copies it out once.
//!
//! An arena is two sealed memfds per worker (`sys::shm::sealed_memfd`):
//!
//! - *in* (supervisor writes, worker maps read-only): an 64-byte header
//!   (word 0: how many results the supervisor has taken out of the out
//!   region) and a FIFO ring of argument buffers ([`Ring`]);
//! - *out* (worker writes, supervisor maps read-only): a FIFO ring of
//!   result buffers, which the worker reuses once the header says the
//!   supervisor took them.
//!
//! It is created lazily, the first time a worker is sent (or answers
//! with) a payload at or above the threshold, handed over once in an ARENA
//! frame (SCM_RIGHTS on the worker's socket: the same for every start
//! method) and reused for every later job. It is replaced (bigger) only
//! while the worker is idle, and freed with the worker.
//!
//! What a worker can do to it costs only that worker. Sizes are sealed, so
//! no mapping can end up past the end of its file (SIGBUS). The supervisor
//! never reads the in region and never trusts the out region: every
//! `(offset, length)` a worker sends is checked against the region before
//! the bytes are copied out ([`HostArena::take`]), and what is copied out is
//! decoded from the private copy. A worker that scribbles over its arena
//! (or its header) corrupts only its own jobs' bytes; one that names a
//! range outside it is a protocol error (`worker_lost`).

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;

use crate::ipc::{ArenaInfo, ShmRef};
use crate::sys::shm::{punch_hole, sealed_memfd, SharedMap};

/// Payloads of at least this many bytes go through the arena (the pool's
/// default `shm_threshold`). Measured, not guessed: see
/// `docs/benchmarks.md` ("Shared-memory threshold").
pub const DEFAULT_THRESHOLD: usize = 64 * 1024;

/// Bytes at the start of the in region before the ring: the header.
pub const HEADER: usize = 64;
/// Ring allocations are rounded up to this (cache-line aligned copies).
const ALIGN: usize = 64;
/// The smallest region created.
const MIN_CAP: usize = 4 << 20;
/// Above this, a region is sized for one payload (no doubling).
const DOUBLING_LIMIT: usize = 32 << 20;
/// Pages of a region kept between jobs; past this, an idle arena's pages
/// are given back (hole punched) so one huge payload does not pin its
/// memory for the rest of the worker's life.
pub const RETAIN: usize = 8 << 20;

/// The region size for payloads of `len` bytes: room for two at a time
/// (prefetch) up to `DOUBLING_LIMIT` (32 MiB), one above it.
pub fn cap_for(len: usize) -> usize {
    let len = len.saturating_add(HEADER);
    if len <= DOUBLING_LIMIT {
        (len.next_power_of_two() * 2).max(MIN_CAP)
    } else {
        len.div_ceil(2 << 20).saturating_mul(2 << 20)
    }
}

/// First-in first-out allocations in `[base, cap)`, freed in the order they
/// were made (a worker runs its jobs in order). Each allocation is one
/// contiguous range; when the space at the end runs out it wraps to `base`.
#[derive(Debug)]
pub struct Ring {
    base: usize,
    cap: usize,
    /// (tag, offset, rounded size), oldest first.
    live: VecDeque<(u64, usize, usize)>,
}

impl Ring {
    pub fn new(base: usize, cap: usize) -> Ring {
        Ring {
            base,
            cap,
            live: VecDeque::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The largest allocation an empty ring can make.
    pub fn room(&self) -> usize {
        self.cap.saturating_sub(self.base)
    }

    /// Reserves `len` bytes tagged `tag`; `None` if there is no contiguous
    /// room now.
    pub fn alloc(&mut self, tag: u64, len: usize) -> Option<usize> {
        let need = len.max(1).checked_next_multiple_of(ALIGN)?;
        let off = match (self.live.front(), self.live.back()) {
            (Some(&(_, first, _)), Some(&(_, last, size))) => {
                let end = last + size;
                if last >= first {
                    // Not wrapped: free space at the end, then before `first`.
                    if self.cap - end >= need {
                        end
                    } else if first - self.base >= need {
                        self.base
                    } else {
                        return None;
                    }
                } else if first - end >= need {
                    // Wrapped: the free space is between the newest and the oldest.
                    end
                } else {
                    return None;
                }
            }
            _ if self.room() >= need => self.base,
            _ => return None,
        };
        self.live.push_back((tag, off, need));
        Some(off)
    }

    /// Frees the oldest allocation if it is tagged `tag`.
    pub fn free(&mut self, tag: u64) -> bool {
        if self.live.front().is_some_and(|&(t, ..)| t == tag) {
            self.live.pop_front();
            true
        } else {
            false
        }
    }

    /// Frees the oldest allocations while `done(tag)` says so.
    pub fn free_while(&mut self, done: impl Fn(u64) -> bool) {
        while self.live.front().is_some_and(|&(t, ..)| done(t)) {
            self.live.pop_front();
        }
    }
}

/// The supervisor's side of one worker's arena.
pub struct HostArena {
    in_fd: OwnedFd,
    in_map: SharedMap,
    ring: Ring,
    out_fd: OwnedFd,
    out_map: SharedMap,
    /// Results taken out of the out region (published in the header).
    taken: u64,
    /// How far into each region pages may have been touched.
    in_high: usize,
    out_high: usize,
}

impl HostArena {
    /// Creates the two memfds (`in_cap` and `out_cap` bytes, sealed) and
    /// maps them: in read-write, out read-only.
    pub fn new(in_cap: usize, out_cap: usize) -> io::Result<HostArena> {
        let in_cap = in_cap.max(HEADER + ALIGN);
        let out_cap = out_cap.max(ALIGN);
        let in_fd = sealed_memfd(c"billiard-arena-in", in_cap)?;
        let out_fd = sealed_memfd(c"billiard-arena-out", out_cap)?;
        let in_map = SharedMap::new(&in_fd, in_cap, true)?;
        let out_map = SharedMap::new(&out_fd, out_cap, false)?;
        Ok(HostArena {
            in_fd,
            in_map,
            ring: Ring::new(HEADER, in_cap),
            out_fd,
            out_map,
            taken: 0,
            in_high: 0,
            out_high: 0,
        })
    }

    /// The ARENA frame's fields.
    pub fn info(&self, threshold: usize) -> ArenaInfo {
        ArenaInfo {
            in_cap: self.in_map.size() as u64,
            out_cap: self.out_map.size() as u64,
            threshold: threshold as u64,
        }
    }

    /// Copies of the two fds, to send with the ARENA frame (in, out).
    pub fn fds(&self) -> io::Result<Vec<OwnedFd>> {
        Ok(vec![self.in_fd.try_clone()?, self.out_fd.try_clone()?])
    }

    /// The largest argument buffer the in region can hold.
    pub fn in_room(&self) -> usize {
        self.ring.room()
    }

    /// The largest result the out region can hold.
    pub fn out_room(&self) -> usize {
        self.out_map.size()
    }

    /// Copies a job's argument bytes into the in region; `None` if there is
    /// no room now (the caller sends them through the socket instead).
    pub fn put(&mut self, job: u64, payload: &[u8]) -> Option<ShmRef> {
        let off = self.ring.alloc(job, payload.len())?;
        if !self.in_map.write_at(off, payload) {
            self.ring.free(job);
            return None;
        }
        self.in_high = self.in_high.max(off + payload.len());
        Some(ShmRef {
            off: off as u64,
            len: payload.len() as u64,
        })
    }

    /// The worker answered `job`: its argument buffer (if it had one here)
    /// is free again.
    pub fn finished(&mut self, job: u64) {
        self.ring.free(job);
    }

    /// Copies a result out of the out region after checking the range the
    /// worker named: inside the region and at most `max` bytes. The region
    /// it occupied is handed back to the worker (header word 0).
    pub fn take(&mut self, at: ShmRef, max: usize) -> Result<Vec<u8>, String> {
        let bad = || {
            format!(
                "a shared-memory result at offset {} of {} bytes, outside its {}-byte region",
                at.off,
                at.len,
                self.out_map.size()
            )
        };
        let (Ok(off), Ok(len)) = (usize::try_from(at.off), usize::try_from(at.len)) else {
            return Err(bad());
        };
        if len > max {
            return Err(format!(
                "a shared-memory result of {len} bytes, over the frame limit of {max}"
            ));
        }
        let mut out = Vec::new();
        if !self.out_map.read_into(off, len, &mut out) {
            return Err(bad());
        }
        self.out_high = self.out_high.max(off + len);
        self.taken += 1;
        if let Some(w) = self.in_map.word(0) {
            w.store(self.taken, Ordering::Release);
        }
        Ok(out)
    }

    /// The worker has nothing in flight: give back the pages past
    /// [`RETAIN`] of either region (a huge payload once must not pin its
    /// memory for the rest of the worker's life).
    pub fn trim_idle(&mut self) {
        if !self.ring.is_empty() {
            return;
        }
        if self.in_high > RETAIN {
            let _ = punch_hole(&self.in_fd, RETAIN, self.in_high - RETAIN);
            self.in_high = RETAIN;
        }
        if self.out_high > RETAIN {
            let _ = punch_hole(&self.out_fd, RETAIN, self.out_high - RETAIN);
            self.out_high = RETAIN;
        }
    }
}

/// The worker's side of its arena.
pub struct WorkerArena {
    in_map: SharedMap,
    out_map: SharedMap,
    ring: Ring,
    /// Results put in the out region so far.
    seq: u64,
    threshold: usize,
}

impl WorkerArena {
    /// Maps the arena an ARENA frame announced; `fds` are (in, out) and are
    /// closed once mapped (a task cannot reach the files through them).
    pub fn map(info: ArenaInfo, fds: Vec<OwnedFd>) -> io::Result<WorkerArena> {
        let mut fds = fds.into_iter();
        let (Some(in_fd), Some(out_fd), None) = (fds.next(), fds.next(), fds.next()) else {
            return Err(io::Error::other(
                "the arena's file descriptors did not arrive (is the worker out of fds?)",
            ));
        };
        let size = |v: u64| usize::try_from(v).map_err(|_| io::Error::other("arena too large"));
        let in_map = SharedMap::new(&in_fd, size(info.in_cap)?, false)?;
        let out_cap = size(info.out_cap)?;
        let out_map = SharedMap::new(&out_fd, out_cap, true)?;
        Ok(WorkerArena {
            in_map,
            out_map,
            ring: Ring::new(0, out_cap),
            seq: 0,
            threshold: size(info.threshold)?.max(1),
        })
    }

    /// The argument bytes a RUN_SHM frame names; `None` if the range is not
    /// inside the in region.
    pub fn args(&self, at: ShmRef) -> Option<&[u8]> {
        let off = usize::try_from(at.off).ok()?;
        let len = usize::try_from(at.len).ok()?;
        if off < HEADER {
            return None;
        }
        self.in_map.bytes(off, len)
    }

    /// Puts a result in the out region if it is large enough to go there
    /// and there is room; `None`: send it through the socket.
    pub fn put_result(&mut self, bytes: &[u8]) -> Option<ShmRef> {
        if bytes.len() < self.threshold {
            return None;
        }
        let taken = self
            .in_map
            .word(0)
            .map(|w| w.load(Ordering::Acquire))
            .unwrap_or(0);
        self.ring.free_while(|seq| seq < taken);
        let off = self.ring.alloc(self.seq, bytes.len())?;
        if !self.out_map.write_at(off, bytes) {
            self.ring.free(self.seq);
            return None;
        }
        self.seq += 1;
        Some(ShmRef {
            off: off as u64,
            len: bytes.len() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_fifo_and_wraps() {
        let mut r = Ring::new(64, 64 + 4 * 64);
        assert_eq!(r.alloc(1, 100), Some(64)); // 128 bytes
        assert_eq!(r.alloc(2, 64), Some(192));
        assert_eq!(r.alloc(3, 64), Some(256));
        assert_eq!(r.alloc(4, 1), None, "full");
        assert!(!r.free(2), "only the oldest is freed");
        assert!(r.free(1));
        // Wraps into the space the first one left.
        assert_eq!(r.alloc(4, 128), Some(64));
        assert_eq!(r.alloc(5, 1), None);
        assert!(r.free(2) && r.free(3));
        assert_eq!(r.alloc(5, 64), Some(192));
        r.free_while(|t| t < 10);
        assert!(r.is_empty());
        assert_eq!(r.alloc(6, 256), Some(64));
        assert_eq!(r.alloc(7, 257 + 64), None);
    }

    #[test]
    fn a_result_outside_the_region_is_refused() {
        let mut a = HostArena::new(1 << 16, 1 << 16).unwrap();
        assert!(a.take(ShmRef { off: 0, len: 16 }, 1 << 20).is_ok());
        for (off, len) in [
            (0, (1 << 16) + 1),
            (1 << 16, 1),
            (u64::MAX, 2),
            (8, u64::MAX),
            ((1 << 16) + 1, 0),
        ] {
            assert!(
                a.take(ShmRef { off, len }, usize::MAX).is_err(),
                "{off} {len}"
            );
        }
        assert!(a.take(ShmRef { off: 0, len: 100 }, 99).is_err());
    }

    #[test]
    fn payloads_cross_between_the_two_sides() {
        let mut host = HostArena::new(1 << 16, 1 << 16).unwrap();
        let mut worker = WorkerArena::map(host.info(10), host.fds().unwrap()).unwrap();
        let at = host.put(7, b"hello, worker").unwrap();
        assert_eq!(worker.args(at), Some(&b"hello, worker"[..]));
        assert_eq!(worker.put_result(b"short"), None, "under the threshold");
        let r1 = worker.put_result(b"a result of some size").unwrap();
        let r2 = worker.put_result(b"another result, later").unwrap();
        assert_ne!(r1.off, r2.off, "the first is not taken yet");
        assert_eq!(host.take(r1, 1 << 20).unwrap(), b"a result of some size");
        assert_eq!(host.take(r2, 1 << 20).unwrap(), b"another result, later");
        // Both taken: the ring starts over.
        let r3 = worker.put_result(b"and a third result").unwrap();
        assert_eq!(r3.off, 0);
        host.finished(7);
        assert!(host.ring.is_empty());
    }

    #[test]
    fn a_worker_cannot_resize_its_arena() {
        let host = HostArena::new(1 << 16, 1 << 16).unwrap();
        for fd in host.fds().unwrap() {
            let f = std::fs::File::from(fd);
            assert!(f.set_len(1).is_err(), "shrink");
            assert!(f.set_len(1 << 20).is_err(), "grow");
        }
    }
}
