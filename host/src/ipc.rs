//! The wire protocols between the supervisor, the zygote and the workers.
//!
//! Worker sockets carry length-prefixed binary frames with a fixed header,
//! so that a job's argument bytes and a result's bytes are written straight
//! from (and read straight into) their own buffers with no re-encoding:
//!
//! ```text
//! frame  := len:u32le  kind:u8  body           (len counts kind + body)
//! RUN    (kind 1, S→W): job:u64 plugin:u16 task:u32 codec:u8 attempt:u32 count:u32  args
//! EXIT   (kind 2, S→W): (empty)
//! DONE   (kind 10, W→S): job:u64 count:u32 flags:u8 status:u8  payload
//! READY  (kind 11, W→S): (empty) once, before the worker reads its first frame
//! ITEMS  (kind 20, W→S): job:u64 count:u32  records
//! PROGRESS (kind 21, W→S): job:u64 done:u64 total:u64
//! ARENA    (kind 40, S→W): in_cap:u64 out_cap:u64 threshold:u64, two fds attached
//! RUN_SHM  (kind 41, S→W): the RUN header, then off:u64 len:u64 (no body)
//! DONE_SHM (kind 42, W→S): the DONE header, then off:u64 len:u64 (no body)
//! ```
//!
//! The `_SHM` kinds carry a large payload by reference: its bytes are at
//! `[off, off + len)` of the worker's shared-memory arena (`crate::shm`),
//! the arguments in its *in* region, the result in its *out* region. ARENA
//! hands the worker that arena (two memfds by SCM_RIGHTS, attached to the
//! frame's bytes); a later ARENA replaces it. These three have an exact
//! length.
//!
//! ITEMS carries `count` stream items of the running (single, `count == 1`)
//! job, as `[u32 LE length][bytes]` records in the job's codec, in the order
//! the task emitted them; any number of ITEMS frames precede the job's DONE.
//! READY says the worker got through its setup (plugins, initializer): it
//! is written before any job's task runs, so no task can take it back, and
//! a worker that dies without it died at start, not of a job (the restart
//! limiter counts only those).
//!
//! PROGRESS is the task's latest `ctx.progress(done, total)` (coalesced by
//! the worker: at most one per ~50 ms, plus each `done >= total` call).
//!
//! With `count == 1`, `args` / `payload` are the raw encoded arguments /
//! result; with `count > 1` they are batch records (see
//! `billiard_plugin_api::codec::records`).
//!
//! A chunk (RUN with `count > 1`) runs item by item, item `i` as job
//! `job + i` (its start and end on the scoreboard), and is answered in
//! pieces: DONE (or DONE_SHM) frames of result records for consecutive
//! items, `job` the first item of the piece and `count` how many, in order,
//! until every item is answered; only the last piece carries `flags`. A
//! piece's payload is always records, even of one item. A frame longer than the limit, an
//! unknown kind or a short body is a protocol error: the supervisor treats
//! the worker as lost.
//!
//! The zygote's control socket (SOCK_SEQPACKET) carries bincode-encoded
//! [`ZygoteCmd`] / [`ZygoteMsg`] values, one per packet, with fds attached.
//! An exec'd zygote's first packet on it is the handshake
//! ([`encode_handshake`]): `MAGIC protocol:u32le threads:u32le version`,
//! before it loads anything, so the pool knows it exec'd a zygote of its
//! own version (`pool::worker_exe` names the executable when it is not).

use billiard_plugin_api::Codec;
use serde::{Deserialize, Serialize};

use crate::plugin::{PluginInfo, PluginLoadError};
use crate::sys::ExitInfo;

pub const KIND_RUN: u8 = 1;
pub const KIND_EXIT: u8 = 2;
pub const KIND_DONE: u8 = 10;
pub const KIND_READY: u8 = 11;
pub const KIND_ITEMS: u8 = 20;
pub const KIND_PROGRESS: u8 = 21;
/// Large payloads through shared memory (`crate::shm`); 40.. so that other
/// frame kinds can be added below without renumbering.
pub const KIND_ARENA: u8 = 40;
pub const KIND_RUN_SHM: u8 = 41;
pub const KIND_DONE_SHM: u8 = 42;

pub const RUN_HEADER: usize = 4 + 1 + 8 + 2 + 4 + 1 + 4 + 4;
pub const DONE_HEADER: usize = 4 + 1 + 8 + 4 + 1 + 1;
pub const ITEMS_HEADER: usize = 4 + 1 + 8 + 4;
pub const PROGRESS_FRAME: usize = 4 + 1 + 8 + 8 + 8;
pub const ARENA_FRAME: usize = 4 + 1 + 8 + 8 + 8;
pub const RUN_SHM_FRAME: usize = RUN_HEADER + 16;
pub const DONE_SHM_FRAME: usize = DONE_HEADER + 16;

/// `flags` bit of DONE: the worker exits after this frame (recycling).
pub const FLAG_RETIRING: u8 = 1;

/// Default largest frame accepted (either direction).
pub const DEFAULT_MAX_FRAME: usize = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunHeader {
    pub job: u64,
    pub plugin: u16,
    pub task: u32,
    pub codec: Codec,
    pub attempt: u32,
    pub count: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DoneHeader {
    pub job: u64,
    pub count: u32,
    pub flags: u8,
    pub status: u8,
}

/// What an ARENA frame announces: the sizes of the two memfds attached to
/// it (in: supervisor → worker, out: worker → supervisor) and the size from
/// which the worker puts a result in the out region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArenaInfo {
    pub in_cap: u64,
    pub out_cap: u64,
    pub threshold: u64,
}

/// Where a payload lies in an arena region: `[off, off + len)`. Read from
/// another process: validated before use (`crate::shm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmRef {
    pub off: u64,
    pub len: u64,
}

fn frame_len(header: usize, payload: usize) -> Result<u32, FrameError> {
    u32::try_from(header - 4 + payload).map_err(|_| FrameError::TooLarge(header + payload))
}

pub fn encode_run(h: &RunHeader, payload_len: usize) -> Result<[u8; RUN_HEADER], FrameError> {
    let mut b = [0u8; RUN_HEADER];
    b[0..4].copy_from_slice(&frame_len(RUN_HEADER, payload_len)?.to_le_bytes());
    b[4] = KIND_RUN;
    b[5..13].copy_from_slice(&h.job.to_le_bytes());
    b[13..15].copy_from_slice(&h.plugin.to_le_bytes());
    b[15..19].copy_from_slice(&h.task.to_le_bytes());
    b[19] = h.codec as u8;
    b[20..24].copy_from_slice(&h.attempt.to_le_bytes());
    b[24..28].copy_from_slice(&h.count.to_le_bytes());
    Ok(b)
}

pub fn encode_exit() -> [u8; 5] {
    let mut b = [0u8; 5];
    b[0..4].copy_from_slice(&1u32.to_le_bytes());
    b[4] = KIND_EXIT;
    b
}

/// The READY frame (see the module docs).
pub fn encode_ready() -> [u8; 5] {
    let mut b = [0u8; 5];
    b[0..4].copy_from_slice(&1u32.to_le_bytes());
    b[4] = KIND_READY;
    b
}

pub fn encode_done(h: &DoneHeader, payload_len: usize) -> Result<[u8; DONE_HEADER], FrameError> {
    let mut b = [0u8; DONE_HEADER];
    b[0..4].copy_from_slice(&frame_len(DONE_HEADER, payload_len)?.to_le_bytes());
    b[4] = KIND_DONE;
    b[5..13].copy_from_slice(&h.job.to_le_bytes());
    b[13..17].copy_from_slice(&h.count.to_le_bytes());
    b[17] = h.flags;
    b[18] = h.status;
    Ok(b)
}

/// The header of an ITEMS frame carrying `count` records of `payload_len`
/// bytes for `job`.
pub fn encode_items(
    job: u64,
    count: u32,
    payload_len: usize,
) -> Result<[u8; ITEMS_HEADER], FrameError> {
    let mut b = [0u8; ITEMS_HEADER];
    b[0..4].copy_from_slice(&frame_len(ITEMS_HEADER, payload_len)?.to_le_bytes());
    b[4] = KIND_ITEMS;
    b[5..13].copy_from_slice(&job.to_le_bytes());
    b[13..17].copy_from_slice(&count.to_le_bytes());
    Ok(b)
}

pub fn encode_progress(job: u64, done: u64, total: u64) -> [u8; PROGRESS_FRAME] {
    let mut b = [0u8; PROGRESS_FRAME];
    b[0..4].copy_from_slice(&((PROGRESS_FRAME - 4) as u32).to_le_bytes());
    b[4] = KIND_PROGRESS;
    b[5..13].copy_from_slice(&job.to_le_bytes());
    b[13..21].copy_from_slice(&done.to_le_bytes());
    b[21..29].copy_from_slice(&total.to_le_bytes());
    b
}

pub fn encode_arena(a: &ArenaInfo) -> [u8; ARENA_FRAME] {
    let mut b = [0u8; ARENA_FRAME];
    b[0..4].copy_from_slice(&((ARENA_FRAME - 4) as u32).to_le_bytes());
    b[4] = KIND_ARENA;
    b[5..13].copy_from_slice(&a.in_cap.to_le_bytes());
    b[13..21].copy_from_slice(&a.out_cap.to_le_bytes());
    b[21..29].copy_from_slice(&a.threshold.to_le_bytes());
    b
}

pub fn encode_run_shm(h: &RunHeader, at: ShmRef) -> [u8; RUN_SHM_FRAME] {
    let mut b = [0u8; RUN_SHM_FRAME];
    // A RUN header whose length field counts a 16-byte body: (off, len).
    let head = encode_run(h, 16).unwrap_or([0; RUN_HEADER]);
    b[..RUN_HEADER].copy_from_slice(&head);
    b[4] = KIND_RUN_SHM;
    b[RUN_HEADER..RUN_HEADER + 8].copy_from_slice(&at.off.to_le_bytes());
    b[RUN_HEADER + 8..].copy_from_slice(&at.len.to_le_bytes());
    b
}

pub fn encode_done_shm(h: &DoneHeader, at: ShmRef) -> [u8; DONE_SHM_FRAME] {
    let mut b = [0u8; DONE_SHM_FRAME];
    let head = encode_done(h, 16).unwrap_or([0; DONE_HEADER]);
    b[..DONE_HEADER].copy_from_slice(&head);
    b[4] = KIND_DONE_SHM;
    b[DONE_HEADER..DONE_HEADER + 8].copy_from_slice(&at.off.to_le_bytes());
    b[DONE_HEADER + 8..].copy_from_slice(&at.len.to_le_bytes());
    b
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("frame too short for its kind ({kind}, {len} bytes)")]
    Short { kind: u8, len: usize },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("bad codec byte {0}")]
    BadCodec(u8),
    #[error("empty frame")]
    Empty,
    #[error("frame longer than its kind allows ({kind}, {len} bytes)")]
    Long { kind: u8, len: usize },
}

/// A decoded frame; payloads borrow from the reader's buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Run(RunHeader, &'a [u8]),
    Exit,
    Done(DoneHeader, &'a [u8]),
    /// The worker is set up and takes jobs.
    Ready,
    /// `(job, count, records)`: stream items of the running job.
    Items(u64, u32, &'a [u8]),
    /// `(job, done, total)` (trailing bytes are ignored).
    Progress(u64, u64, u64),
    /// A new shared-memory arena for the worker (its fds came with it).
    Arena(ArenaInfo),
    /// A RUN whose arguments are in the worker's arena.
    RunShm(RunHeader, ShmRef),
    /// A DONE whose payload is in the worker's arena.
    DoneShm(DoneHeader, ShmRef),
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Decodes the body of one frame (everything after the length prefix).
pub fn decode_body(body: &[u8]) -> Result<Frame<'_>, FrameError> {
    let Some(&kind) = body.first() else {
        return Err(FrameError::Empty);
    };
    let short = || FrameError::Short {
        kind,
        len: body.len(),
    };
    // The shared-memory kinds have an exact length.
    let exact = |n: usize| {
        if body.len() < n {
            Err(short())
        } else if body.len() > n {
            Err(FrameError::Long {
                kind,
                len: body.len(),
            })
        } else {
            Ok(())
        }
    };
    match kind {
        KIND_RUN => {
            if body.len() < RUN_HEADER - 4 {
                return Err(short());
            }
            Ok(Frame::Run(run_header(body)?, &body[RUN_HEADER - 4..]))
        }
        KIND_EXIT => Ok(Frame::Exit),
        KIND_READY => {
            exact(1)?;
            Ok(Frame::Ready)
        }
        KIND_DONE => {
            if body.len() < DONE_HEADER - 4 {
                return Err(short());
            }
            Ok(Frame::Done(done_header(body), &body[DONE_HEADER - 4..]))
        }
        KIND_ITEMS => {
            if body.len() < ITEMS_HEADER - 4 {
                return Err(short());
            }
            Ok(Frame::Items(
                u64_at(body, 1),
                u32_at(body, 9),
                &body[ITEMS_HEADER - 4..],
            ))
        }
        KIND_PROGRESS => {
            if body.len() < PROGRESS_FRAME - 4 {
                return Err(short());
            }
            Ok(Frame::Progress(
                u64_at(body, 1),
                u64_at(body, 9),
                u64_at(body, 17),
            ))
        }
        KIND_ARENA => {
            exact(ARENA_FRAME - 4)?;
            Ok(Frame::Arena(ArenaInfo {
                in_cap: u64_at(body, 1),
                out_cap: u64_at(body, 9),
                threshold: u64_at(body, 17),
            }))
        }
        KIND_RUN_SHM => {
            exact(RUN_SHM_FRAME - 4)?;
            let at = RUN_HEADER - 4;
            Ok(Frame::RunShm(
                run_header(body)?,
                ShmRef {
                    off: u64_at(body, at),
                    len: u64_at(body, at + 8),
                },
            ))
        }
        KIND_DONE_SHM => {
            exact(DONE_SHM_FRAME - 4)?;
            let at = DONE_HEADER - 4;
            Ok(Frame::DoneShm(
                done_header(body),
                ShmRef {
                    off: u64_at(body, at),
                    len: u64_at(body, at + 8),
                },
            ))
        }
        k => Err(FrameError::UnknownKind(k)),
    }
}

/// The RUN header fields of a RUN or RUN_SHM body (at least
/// `RUN_HEADER - 4` bytes, checked by the caller).
fn run_header(body: &[u8]) -> Result<RunHeader, FrameError> {
    let codec = match body[15] {
        0 => Codec::Bincode,
        1 => Codec::Json,
        b => return Err(FrameError::BadCodec(b)),
    };
    Ok(RunHeader {
        job: u64_at(body, 1),
        plugin: u16::from_le_bytes([body[9], body[10]]),
        task: u32_at(body, 11),
        codec,
        attempt: u32_at(body, 16),
        count: u32_at(body, 20),
    })
}

/// The DONE header fields of a DONE or DONE_SHM body (at least
/// `DONE_HEADER - 4` bytes, checked by the caller).
fn done_header(body: &[u8]) -> DoneHeader {
    DoneHeader {
        job: u64_at(body, 1),
        count: u32_at(body, 9),
        flags: body[13],
        status: body[14],
    }
}

/// Accumulates bytes from a non-blocking stream and yields whole frames.
///
/// `buf[start..end]` holds unread bytes; the buffer is zero-filled only
/// when it grows, never per read.
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_frame: usize,
}

const READ_CHUNK: usize = 64 * 1024;

impl FrameReader {
    pub fn new(max_frame: usize) -> Self {
        FrameReader {
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            max_frame,
        }
    }

    /// Makes room for at least `want` more bytes after `end`.
    fn reserve(&mut self, want: usize) {
        if self.buf.len() - self.end >= want {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < want {
            self.buf.resize(self.end + want, 0);
        }
    }

    /// Reads what is available from `r` (until WouldBlock). Returns false
    /// at EOF.
    pub fn fill(&mut self, r: &mut impl std::io::Read) -> std::io::Result<bool> {
        self.fill_from(r, true)
    }

    /// [`FrameReader::fill`] that stops after a read that did not fill
    /// the room it was given: the stream had no more just then, and what
    /// comes later is a new edge of an edge-triggered poll. Saves the
    /// read that would say WouldBlock (a syscall per wake-up of the
    /// supervisor, issue 26). An EOF behind the data is seen only by a
    /// draining `fill`: use that when the poll said the peer closed.
    pub fn fill_available(&mut self, r: &mut impl std::io::Read) -> std::io::Result<bool> {
        self.fill_from(r, false)
    }

    fn fill_from(&mut self, r: &mut impl std::io::Read, drain: bool) -> std::io::Result<bool> {
        loop {
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
                // Give back the memory of an unusually large frame.
                if self.buf.len() > 64 * READ_CHUNK {
                    self.buf = vec![0; READ_CHUNK];
                }
            }
            // Room for more of the current frame, growing with what has
            // actually arrived (doubling): a length prefix alone must not
            // make us allocate the size it announces.
            let buffered = self.end - self.start;
            let grow = self
                .pending_need()
                .min(buffered.max(READ_CHUNK) * 2)
                .max(READ_CHUNK);
            self.reserve(grow);
            let room = self.buf.len() - self.end;
            match r.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.end += n;
                    if !drain && n < room {
                        return Ok(true);
                    }
                }
                Err(e) => match e.kind() {
                    std::io::ErrorKind::WouldBlock => return Ok(true),
                    std::io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                },
            }
        }
    }

    /// Bytes still missing for the frame at the front (0 if unknown/none).
    fn pending_need(&self) -> usize {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < 4 {
            return 0;
        }
        let len = u32_at(avail, 0) as usize;
        if len > self.max_frame {
            return 0;
        }
        (4 + len).saturating_sub(avail.len())
    }

    /// The next complete frame, if any.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < 4 {
            return Ok(None);
        }
        let len = u32_at(avail, 0) as usize;
        if len > self.max_frame {
            return Err(FrameError::TooLarge(len));
        }
        if avail.len() < 4 + len {
            return Ok(None);
        }
        let begin = self.start + 4;
        self.start += 4 + len;
        decode_body(&self.buf[begin..begin + len]).map(Some)
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }
}

/// What a worker process needs to know at birth.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerParams {
    pub worker: u64,
    pub slot: u32,
    pub max_tasks: Option<u64>,
    /// Recycle after a job once anonymous memory grew past this (bytes).
    pub max_memory: Option<u64>,
    /// RLIMIT_AS for the worker (bytes).
    pub address_space_limit: Option<u64>,
    /// A task run once when the worker starts: (plugin index, task index, JSON args).
    pub initializer: Option<(u16, u32, Vec<u8>)>,
    pub max_frame: usize,
    /// `HOST_FLAG_*` bits raised in every task's context for the worker's
    /// life (e.g. `HOST_FLAG_BYTES_BASE64`).
    pub host_flags: u32,
}

/// Supervisor → zygote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ZygoteCmd {
    Spawn(WorkerParams),
    /// Kill every worker and exit.
    Shutdown,
}

/// Zygote → supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ZygoteMsg {
    Hello {
        pid: i32,
        plugins: Result<Vec<PluginInfo>, PluginLoadError>,
    },
    /// Carries three fds: the worker's socket, its output pipe (read end)
    /// and a pidfd.
    Spawned {
        worker: u64,
        pid: i32,
    },
    SpawnFailed {
        worker: u64,
        error: String,
    },
    Exited {
        pid: i32,
        info: ExitInfo,
    },
    /// A piece of an encoded `Hello` too big for one datagram, in order;
    /// `last` on the final one (`zygote::send_hello`: any number of plugins
    /// and tasks fits).
    HelloPart {
        bytes: Vec<u8>,
        last: bool,
    },
}

/// The start of the zygote's handshake packet.
const HANDSHAKE_MAGIC: &[u8] = b"\0billiard-zygote-handshake\0";

/// Bumped whenever the supervisor–zygote protocol changes incompatibly.
pub const ZYGOTE_PROTOCOL: u32 = 1;

/// The handshake an exec'd zygote sends first (see [`crate::run_if_helper`]):
/// magic, protocol, thread count, crate version.
pub fn encode_handshake(threads: usize) -> Vec<u8> {
    let mut b = HANDSHAKE_MAGIC.to_vec();
    b.extend_from_slice(&ZYGOTE_PROTOCOL.to_le_bytes());
    b.extend_from_slice(&(threads.min(u32::MAX as usize) as u32).to_le_bytes());
    b.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
    b
}

/// True when `packet` is a handshake (of any protocol).
pub fn is_handshake(packet: &[u8]) -> bool {
    packet.starts_with(HANDSHAKE_MAGIC)
}

/// Checks a handshake packet: same protocol and version, and a zygote that
/// is single-threaded (it forks workers). The error says what the
/// executable did wrong, to follow its name.
pub fn check_handshake(packet: &[u8]) -> Result<(), String> {
    let Some(rest) = packet.strip_prefix(HANDSHAKE_MAGIC) else {
        return Err("answered with something other than the zygote handshake (a billiard-host of another version?)".into());
    };
    let (Some(protocol), Some(threads)) = (
        rest.get(0..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes),
        rest.get(4..8)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes),
    ) else {
        return Err("sent a truncated handshake".into());
    };
    let version = String::from_utf8_lossy(rest.get(8..).unwrap_or_default());
    let ours = env!("CARGO_PKG_VERSION");
    if protocol != ZYGOTE_PROTOCOL || version != ours {
        return Err(format!(
            "is billiard-host {version} (zygote protocol {protocol}); this program is {ours} (protocol {ZYGOTE_PROTOCOL}): use an executable of the same version"
        ));
    }
    if threads > 1 {
        return Err(format!(
            "had {threads} threads when billiard_host::run_if_helper() ran; it must be the first call in main, before any thread starts (with #[tokio::main], call it in a plain main that then builds the runtime)"
        ));
    }
    Ok(())
}

pub fn encode_ctl<T: Serialize>(v: &T) -> Vec<u8> {
    // Encoding plain data into a Vec cannot fail.
    bincode::serde::encode_to_vec(v, bincode::config::standard()).unwrap_or_default()
}

pub fn decode_ctl<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    bincode::serde::decode_from_slice(b, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_round_trip() {
        let ok = encode_handshake(1);
        assert!(is_handshake(&ok));
        assert!(check_handshake(&ok).is_ok());
        let threaded = check_handshake(&encode_handshake(3)).unwrap_err();
        assert!(threaded.contains("3 threads"), "{threaded}");
        let mut other = encode_handshake(1);
        other.truncate(HANDSHAKE_MAGIC.len() + 8);
        other.extend_from_slice(b"0.0.1");
        let e = check_handshake(&other).unwrap_err();
        assert!(e.contains("0.0.1"), "{e}");
        let mut short = encode_handshake(1);
        short.truncate(HANDSHAKE_MAGIC.len() + 5);
        assert!(check_handshake(&short).unwrap_err().contains("truncated"));
        assert!(check_handshake(b"hello").is_err());
    }

    #[test]
    fn run_and_done_round_trip() {
        let h = RunHeader {
            job: 7,
            plugin: 2,
            task: 9,
            codec: Codec::Json,
            attempt: 1,
            count: 3,
        };
        let mut bytes = encode_run(&h, 5).unwrap().to_vec();
        bytes.extend_from_slice(b"hello");
        let d = DoneHeader {
            job: 7,
            count: 3,
            flags: FLAG_RETIRING,
            status: 2,
        };
        bytes.extend_from_slice(&encode_done(&d, 2).unwrap());
        bytes.extend_from_slice(b"ok");
        bytes.extend_from_slice(&encode_exit());
        let mut r = FrameReader::new(1 << 20);
        let mut cursor = std::io::Cursor::new(bytes);
        assert!(!r.fill(&mut cursor).unwrap());
        assert_eq!(r.next_frame().unwrap(), Some(Frame::Run(h, b"hello")));
        assert_eq!(r.next_frame().unwrap(), Some(Frame::Done(d, b"ok")));
        assert_eq!(r.next_frame().unwrap(), Some(Frame::Exit));
        assert_eq!(r.next_frame().unwrap(), None);
    }

    /// Reads as a socket does: what has arrived per call, then WouldBlock.
    struct Arrivals(std::collections::VecDeque<Vec<u8>>, usize);

    impl std::io::Read for Arrivals {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.1 += 1;
            match self.0.pop_front() {
                Some(b) => {
                    buf[..b.len()].copy_from_slice(&b);
                    Ok(b.len())
                }
                None => Err(std::io::ErrorKind::WouldBlock.into()),
            }
        }
    }

    #[test]
    fn a_short_read_ends_fill_available_without_the_read_that_would_block() {
        let exit = encode_exit().to_vec();
        let mut r = FrameReader::new(1 << 20);
        let mut s = Arrivals(vec![exit.clone(), exit.clone()].into(), 0);
        assert!(r.fill_available(&mut s).unwrap());
        assert_eq!(s.1, 1, "one read: it was short");
        assert_eq!(r.next_frame().unwrap(), Some(Frame::Exit));
        assert_eq!(r.next_frame().unwrap(), None);
        // A draining fill reads on to WouldBlock.
        assert!(r.fill(&mut s).unwrap());
        assert_eq!(s.1, 3);
        assert_eq!(r.next_frame().unwrap(), Some(Frame::Exit));
        // A read that filled the room it was given is not the end.
        let big = vec![0u8; READ_CHUNK];
        let mut s = Arrivals(vec![big, exit].into(), 0);
        let mut r = FrameReader::new(1 << 20);
        assert!(r.fill_available(&mut s).unwrap());
        assert_eq!(s.1, 2);
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors() {
        let mut r = FrameReader::new(16);
        let mut c = std::io::Cursor::new(vec![0xff; 64]);
        r.fill(&mut c).unwrap();
        assert!(matches!(r.next_frame(), Err(FrameError::TooLarge(_))));
        let mut r = FrameReader::new(1 << 20);
        let mut c = std::io::Cursor::new(vec![2, 0, 0, 0, 99, 0]);
        r.fill(&mut c).unwrap();
        assert_eq!(r.next_frame(), Err(FrameError::UnknownKind(99)));
        assert!(matches!(
            decode_body(&[KIND_DONE, 1, 2]),
            Err(FrameError::Short { .. })
        ));
        assert_eq!(decode_body(&[]), Err(FrameError::Empty));
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let d = DoneHeader {
            job: 1,
            count: 1,
            flags: 0,
            status: 0,
        };
        let mut bytes = encode_done(&d, 3).unwrap().to_vec();
        bytes.extend_from_slice(b"abc");
        let mut r = FrameReader::new(1 << 20);
        for (i, b) in bytes.iter().enumerate() {
            let mut c = std::io::Cursor::new(vec![*b]);
            r.fill(&mut c).unwrap();
            if i + 1 < bytes.len() {
                assert_eq!(r.next_frame().unwrap(), None);
            }
        }
        assert_eq!(r.next_frame().unwrap(), Some(Frame::Done(d, b"abc")));
    }
}
