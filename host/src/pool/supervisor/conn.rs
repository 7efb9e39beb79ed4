//! A worker's connection: the frames queued to it and written as its
//! socket takes them, the frames read from it, and its shared-memory arena
//! (large arguments go out through it, large results come back through
//! it).

use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use super::super::config::PoolConfig;
use super::super::job::Dispatch;
use super::workers::Worker;
use crate::ipc::{self, Frame, FrameError};
use crate::shm;
use crate::sys;

/// A frame queued to a worker, written as far as `idx`/`off`.
pub(super) struct OutItem {
    header: Vec<u8>,
    payload: Option<Arc<Vec<u8>>>,
    idx: usize,
    off: usize,
    /// Fds sent with the item's first byte (an ARENA frame's memfds).
    fds: Vec<OwnedFd>,
}

impl OutItem {
    /// A frame without a payload.
    pub fn frame(header: Vec<u8>) -> OutItem {
        OutItem {
            header,
            payload: None,
            idx: 0,
            off: 0,
            fds: Vec::new(),
        }
    }

    pub fn with_payload(header: Vec<u8>, payload: Arc<Vec<u8>>) -> OutItem {
        OutItem {
            payload: Some(payload),
            ..OutItem::frame(header)
        }
    }
}

/// What a worker sent, one frame at a time.
pub(super) enum Inbound {
    /// A job's (or chunk's) result.
    Done(ipc::DoneHeader, Vec<u8>),
    /// Stream items of the job it runs.
    Items(u64, u32, Vec<u8>),
    /// A progress report (job, done, total).
    Progress(u64, u64, u64),
    /// It is set up and takes jobs.
    Ready,
    /// Something the pool refuses (why): a protocol error.
    Refused(String),
}

/// Reads what the socket has into the frame reader; false at EOF (or
/// when the socket failed). Without `drain`, up to the first short read
/// (`FrameReader::fill_available`: for a readable event that did not say
/// the worker closed its end).
pub(super) fn fill(w: &mut Worker, drain: bool) -> bool {
    let r = &mut ReadAdapter(&w.sock);
    let read = if drain {
        w.reader.fill(r)
    } else {
        w.reader.fill_available(r)
    };
    read.unwrap_or_default()
}

/// The next whole frame read from the worker, if any.
pub(super) fn next(w: &mut Worker, cfg: &PoolConfig) -> Option<Inbound> {
    let done = match w.reader.next_frame() {
        Ok(Some(Frame::Done(h, payload))) => {
            // A large result that found no room in an arena: the next
            // arena is made big enough for it.
            if cfg.shm_threshold.is_some_and(|t| payload.len() >= t) {
                w.want_out = w.want_out.max(payload.len());
            }
            Ok((h, payload.to_vec()))
        }
        Ok(Some(Frame::DoneShm(h, at))) => match w.arena.as_mut() {
            // The range is checked, then the bytes copied out once.
            Some(a) => a.take(at, cfg.max_frame).map(|p| (h, p)),
            None => Err("a shared-memory result, but it has no arena".to_string()),
        },
        Ok(Some(Frame::Items(job, count, records))) => {
            return Some(Inbound::Items(job, count, records.to_vec()))
        }
        Ok(Some(Frame::Progress(job, done, total))) => {
            return Some(Inbound::Progress(job, done, total))
        }
        Ok(Some(Frame::Ready)) => return Some(Inbound::Ready),
        Ok(None) => return None,
        Ok(Some(_)) => Err("a frame only the supervisor may send".to_string()),
        Err(FrameError::TooLarge(n)) => Err(format!(
            "a frame of {n} bytes, over the pool's frame limit of {} bytes",
            cfg.max_frame
        )),
        Err(e) => Err(e.to_string()),
    };
    Some(match done {
        Ok((h, payload)) => Inbound::Done(h, payload),
        Err(why) => Inbound::Refused(why),
    })
}

/// The most frames one write takes (two iovecs each, within
/// `sys::writev_from`'s 64).
const FLUSH_FRAMES: usize = 32;

/// Writes what is queued to the worker as far as its socket takes it,
/// several frames per write (a worker handed several jobs at once gets
/// them in one syscall, and reads them in one). A write error means the
/// worker is gone (its exit report follows): it is marked broken and its
/// queue dropped.
pub(super) fn flush(w: &mut Worker) {
    if w.state.broken() {
        return;
    }
    while let Some(item) = w.outq.front_mut() {
        let written = if item.fds.is_empty() {
            let mut bufs: Vec<&[u8]> = Vec::with_capacity(2 * FLUSH_FRAMES);
            for it in w
                .outq
                .iter()
                .take(FLUSH_FRAMES)
                .take_while(|it| it.fds.is_empty())
            {
                bufs.push(&it.header);
                bufs.push(it.payload.as_deref().map_or(&[], |p| p.as_slice()));
            }
            let (idx, off) = w.outq.front().map_or((0, 0), |it| (it.idx, it.off));
            sys::writev_from(&w.sock, &bufs, idx, off)
        } else {
            // An ARENA frame, alone: its memfds go with its first byte.
            let payload: &[u8] = item.payload.as_deref().map_or(&[], |p| p.as_slice());
            let bufs: [&[u8]; 2] = [&item.header, payload];
            let raw: Vec<i32> = item.fds.iter().map(|f| f.as_raw_fd()).collect();
            let n = sys::shm::send_with_fds_partial(&w.sock, &bufs, &raw);
            if n.is_ok() {
                item.fds.clear();
            }
            n
        };
        match written {
            Ok(n) => written_out(&mut w.outq, n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => {
                // Broken pipe: the worker is gone; its exit report follows.
                w.broke();
                w.outq.clear();
                return;
            }
        }
    }
}

/// `n` more bytes of the queue's front frames were written: the frames
/// written whole leave the queue, the next one's cursor moves on.
fn written_out(q: &mut VecDeque<OutItem>, mut n: usize) {
    while let Some(item) = q.front_mut() {
        let payload: &[u8] = item.payload.as_deref().map_or(&[], |p| p.as_slice());
        let bufs: [&[u8]; 2] = [&item.header, payload];
        let done = bufs[..item.idx.min(2)]
            .iter()
            .map(|b| b.len())
            .sum::<usize>()
            + item.off;
        let left = (item.header.len() + payload.len()).saturating_sub(done);
        if n < left {
            sys::advance(&bufs, &mut item.idx, &mut item.off, n);
            return;
        }
        n -= left;
        q.pop_front();
        if n == 0 {
            return;
        }
    }
}

/// Puts a dispatch's arguments in the worker's shared-memory arena if
/// they are at least `shm_threshold` long; `None`: they go through the
/// socket. The arena is created (or replaced by a bigger one) only while
/// the worker has nothing in flight, its ARENA frame queued ahead of the
/// job's; a busy worker whose arena is full gets the socket.
pub(super) fn arena_put(w: &mut Worker, d: &Dispatch, cfg: &PoolConfig) -> Option<ipc::ShmRef> {
    let threshold = cfg.shm_threshold?;
    let wid = w.id;
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
    if !grow || w.arena_failed || w.state.broken() || !w.inflight.is_empty() || !w.outq.is_empty() {
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
        fds,
        ..OutItem::frame(ipc::encode_arena(&arena.info(threshold)).to_vec())
    });
    // The old arena has nothing in flight (the worker is idle).
    let arena = w.arena.insert(arena);
    if big {
        arena.put(d.first_job.0, &d.payload)
    } else {
        None
    }
}

/// The job `job` is done: its arena space is free (and the arena trimmed
/// once the worker is idle).
pub(super) fn arena_finished(w: &mut Worker, job: u64) {
    if let Some(a) = w.arena.as_mut() {
        a.finished(job);
        if w.inflight.is_empty() {
            a.trim_idle();
        }
    }
}

struct ReadAdapter<'a>(&'a mio::net::UnixStream);

impl Read for ReadAdapter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut s = self.0;
        s.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(q: &VecDeque<OutItem>) -> Vec<(usize, usize)> {
        q.iter().map(|it| (it.idx, it.off)).collect()
    }

    #[test]
    fn one_write_of_several_frames_moves_the_queue_on_frame_by_frame() {
        let mut q: VecDeque<OutItem> = VecDeque::new();
        q.push_back(OutItem::with_payload(vec![1; 3], Arc::new(vec![2; 4])));
        q.push_back(OutItem::frame(vec![3; 2]));
        q.push_back(OutItem::with_payload(vec![4; 5], Arc::new(vec![5; 1])));
        q.push_back(OutItem::with_payload(vec![6; 1], Arc::new(Vec::new())));
        // Part of the first frame's header.
        written_out(&mut q, 2);
        assert_eq!(cursor(&q), [(0, 2), (0, 0), (0, 0), (0, 0)]);
        // The rest of it and the whole second: two frames leave.
        written_out(&mut q, 1 + 4 + 2);
        assert_eq!(cursor(&q), [(0, 0), (0, 0)]);
        // Into the third's payload.
        written_out(&mut q, 5);
        assert_eq!(cursor(&q), [(1, 0), (0, 0)]);
        // Nothing written moves nothing.
        written_out(&mut q, 0);
        assert_eq!(cursor(&q), [(1, 0), (0, 0)]);
        // The third's last byte and the fourth (an empty payload).
        written_out(&mut q, 1 + 1);
        assert!(q.is_empty());
    }
}
