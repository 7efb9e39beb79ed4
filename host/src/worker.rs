//! The worker process: reads RUN frames from its socket, calls the plugin,
//! writes DONE frames back. Runs in a process forked from the zygote (or
//! exec'd, with the spawn start method). It never writes to the terminal:
//! its stdout and stderr are a pipe the supervisor reads.

use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::Duration;

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::{RSlice, RVec};
use billiard_plugin_api::{
    Codec, HostServices, HostServicesRef, Status, StopReason, TaskContext,
    HOST_FLAG_FAILURE_DETAIL, HOST_FLAG_PROGRESS_DUE,
};

use crate::ipc::{self, DoneHeader, Frame, WorkerParams, FLAG_RETIRING};
use crate::plugin::Plugin;
use crate::shm;
use crate::sys::{self, BoardPage, Slot};

/// Worker exit codes the supervisor recognises.
pub mod exit_code {
    /// The supervisor sent a malformed frame or went away mid-frame.
    pub const PROTOCOL: i32 = 70;
    /// The pool's initializer task failed.
    pub const INITIALIZER_FAILED: i32 = 71;
    /// A plugin could not be loaded (spawn start method, or a plugin each
    /// worker loads after its fork).
    pub const PLUGIN_LOAD: i32 = 72;
    /// The worker could not set itself up (fds, signals, rlimits).
    pub const SETUP: i32 = 73;
}

/// A result buffer that grew past this is dropped after its job.
const OUT_RETAIN: usize = 4 << 20;

/// The flag a task's `TaskContext` reads; raised by the stop signal.
static STOP: AtomicU32 = AtomicU32::new(0);

/// The `HOST_FLAG_*` word of the running job's context (progress due),
/// raised by the ticker thread.
static HOST_FLAGS: AtomicU32 = AtomicU32::new(0);
/// Raised by the ticker: stream items buffered for longer than a tick go
/// out at the next emit.
static FLUSH_DUE: AtomicU32 = AtomicU32::new(0);
/// The job the ticker works for (0: idle, the ticker sleeps).
static TICKING: AtomicU64 = AtomicU64::new(0);
/// Serializes the frames written while a task runs (stream items from the
/// task's thread, progress from any thread).
static WRITE_LOCK: Mutex<()> = Mutex::new(());

/// The call the host services serve now: its token (the `host_data` its
/// context carries, a number, never an address) and its `JobHost`. A
/// service called with another token — a context or `Emitter` kept past
/// its call, used by a thread of a finished task — is refused: its items
/// and progress never reach a later job (C13). `run_job` (`run_chunk`:
/// after the chunk's last item) clears it after the call, taking the
/// write lock, so a service that passed the check (holding the read lock)
/// is done with the `JobHost` before it goes.
static CURRENT: RwLock<Current> = RwLock::new(Current {
    token: 0,
    host: std::ptr::null(),
});

struct Current {
    token: usize,
    host: *const c_void,
}

// SAFETY: `host` is only dereferenced under the lock, while `run_job`
// keeps the `JobHost` it points to alive (see CURRENT).
unsafe impl Send for Current {}
// SAFETY: as above.
unsafe impl Sync for Current {}

/// An ITEMS frame is sent once its records reach this size.
const ITEMS_BATCH: usize = 64 * 1024;
/// How often buffered stream items are pushed out by the next emit.
const FLUSH_TICK: Duration = Duration::from_millis(10);
/// Progress reports are coalesced to one per this many ticks (50 ms).
const PROGRESS_TICKS: u32 = 5;

struct Worker {
    plugins: Vec<Plugin>,
    params: WorkerParams,
    sock: UnixStream,
    slot: &'static Slot,
    tasks_done: u64,
    base_memory: Option<u64>,
    last_status: Status,
    /// The token of the last call (see CURRENT); never 0.
    calls: usize,
}

/// The plugins a worker loads itself after its signal setup (they start
/// threads; see `zygote::PerWorker`), and the pool's plugin files.
pub(crate) struct Late {
    pub paths: Vec<std::path::PathBuf>,
    pub plugins: Vec<crate::zygote::PerWorker>,
}

/// Runs the worker loop; never returns. `zygote` is the pid of the
/// worker's parent, whose death it watches for. `plugins` are those it was
/// forked (or exec'd and loaded) with; `late`'s are loaded here, after
/// the signal setup (a Go runtime then finds the worker's crash handlers
/// and forwards the faults of non-Go code to them) and before READY.
pub(crate) fn run(
    mut plugins: Vec<Plugin>,
    late: Late,
    mut params: WorkerParams,
    sock: OwnedFd,
    page: &'static BoardPage,
    zygote: i32,
) -> ! {
    // This host reads a `Failure`'s class and directive (`plugin::outcome`).
    params.host_flags |= HOST_FLAG_FAILURE_DETAIL;
    // The worker's own scoreboard page, the only one it maps (C3).
    let slot = page.slot();
    if let Err(e) = setup(&params, slot, &sock, zygote) {
        eprintln!("billiard worker: setup failed: {e}");
        sys::exit_now(exit_code::SETUP);
    }
    if !late.plugins.is_empty() {
        // With every signal blocked: the plugin's threads keep them blocked
        // (see `sys::block_all_signals`); the main thread unblocks them.
        if let Err(e) = sys::block_all_signals() {
            eprintln!("billiard worker: setup failed: {e}");
            sys::exit_now(exit_code::SETUP);
        }
        if let Err(e) = crate::zygote::load_per_worker(&mut plugins, &late.paths, &late.plugins) {
            eprintln!("billiard worker: {e}");
            sys::exit_now(exit_code::PLUGIN_LOAD);
        }
        if let Err(e) = sys::restore_worker_signals() {
            eprintln!("billiard worker: setup failed: {e}");
            sys::exit_now(exit_code::SETUP);
        }
    }
    let mut w = Worker {
        plugins,
        params,
        sock: UnixStream::from(sock),
        slot,
        tasks_done: 0,
        base_memory: None,
        last_status: Status::Ok,
        calls: 0,
    };
    w.initialize();
    w.base_memory = w.params.max_memory.and_then(|_| sys::anon_rss_bytes());
    // Set up: said before any job's task runs, so no task can unsay it (a
    // death without it is a death at start, see `ipc`).
    if sys::write_all_vectored(&w.sock, &[&ipc::encode_ready()]).is_err() {
        leave(exit_code::PROTOCOL);
    }
    w.serve()
}

fn setup(
    params: &WorkerParams,
    slot: &'static Slot,
    sock: &OwnedFd,
    zygote: i32,
) -> std::io::Result<()> {
    sys::install_stop_handler(slot, &STOP)?;
    sys::reset_worker_signals()?;
    // Stream items a task emitted just before it crashed still reach the
    // supervisor (the handler writes them, then the worker dies as before).
    sys::install_crash_flush(sock.as_raw_fd())?;
    // Outlive the zygote while the supervisor lives (a task that kills the
    // zygote must not cost the other workers their jobs); die with the host.
    sys::watch_for_orphaning(sock, zygote)?;
    if let Some(limit) = params.address_space_limit {
        sys::limit_address_space(limit)?;
    }
    Ok(())
}

impl Worker {
    fn initialize(&mut self) {
        let Some((plugin, task, args)) = self.params.initializer.clone() else {
            return;
        };
        let Some(p) = self.plugins.get(plugin as usize) else {
            eprintln!("billiard worker: initializer names plugin #{plugin}, which is not loaded");
            sys::exit_now(exit_code::INITIALIZER_FAILED);
        };
        let ctx = TaskContext::new(0, 0, &STOP);
        let mut out = RVec::new();
        let status = p.call_raw(task, Codec::Json, &args, &ctx, &mut out);
        if status != Status::Ok {
            eprintln!(
                "billiard worker: initializer failed ({}): {}",
                status.kind(),
                String::from_utf8_lossy(out.as_slice())
            );
            sys::exit_now(exit_code::INITIALIZER_FAILED);
        }
    }

    fn serve(&mut self) -> ! {
        let mut out: RVec<u8> = RVec::with_capacity(64 * 1024);
        // The shared-memory arena for large payloads (`crate::shm`), once
        // the supervisor sends one; fds arrive with an ARENA frame's bytes.
        let mut arena: Option<shm::WorkerArena> = None;
        let mut inbox = Inbox::new();
        loop {
            let body = match inbox.next(&self.sock, self.params.max_frame) {
                Ok(body) => body,
                // EOF: the supervisor closed our socket; that is our cue.
                Err(InboxEnd::Eof) => leave(0),
                Err(InboxEnd::TooLarge(len)) => {
                    eprintln!("billiard worker: frame of {len} bytes exceeds the limit");
                    leave(exit_code::PROTOCOL);
                }
                Err(InboxEnd::Broken) => leave(exit_code::PROTOCOL),
            };
            let (h, args) = match ipc::decode_body(&inbox.buf[body]) {
                Ok(Frame::Run(h, args)) => (h, args),
                Ok(Frame::RunShm(h, at)) => match arena.as_ref().and_then(|a| a.args(at)) {
                    Some(args) => (h, args),
                    None => {
                        eprintln!(
                            "billiard worker: the arguments of job {} are not inside its shared-memory arena",
                            h.job
                        );
                        leave(exit_code::PROTOCOL);
                    }
                },
                Ok(Frame::Arena(info)) => {
                    // The old mapping goes first (all its jobs are answered).
                    drop(arena.take());
                    match shm::WorkerArena::map(info, std::mem::take(&mut inbox.fds)) {
                        Ok(a) => arena = Some(a),
                        Err(e) => {
                            eprintln!(
                                "billiard worker: cannot map its shared-memory arena ({} + {} bytes): {e}",
                                info.in_cap, info.out_cap
                            );
                            leave(exit_code::SETUP);
                        }
                    }
                    continue;
                }
                Ok(Frame::Exit) => leave(0),
                Ok(
                    Frame::Done(..)
                    | Frame::Ready
                    | Frame::Items(..)
                    | Frame::Progress(..)
                    | Frame::DoneShm(..),
                )
                | Err(_) => {
                    eprintln!("billiard worker: unexpected frame from the supervisor");
                    leave(exit_code::PROTOCOL);
                }
            };
            if h.count > 1 {
                // A chunk: item by item, results going out as they finish.
                let retiring = self.run_chunk(h, args, &mut out);
                // The last piece (a large one through the arena) ends it.
                let flags = if retiring { FLAG_RETIRING } else { 0 };
                if chunk_flush(arena.as_mut(), flags, true).is_err() {
                    leave(exit_code::PROTOCOL);
                }
                if retiring {
                    leave(0);
                }
                if let Err(e) = sys::restore_worker_signals() {
                    eprintln!("billiard worker: cannot restore its signal state: {e}");
                    leave(exit_code::SETUP);
                }
                continue;
            }
            let by_count = self.run_job(h, args, &mut out);
            // A result the supervisor would refuse (over the frame limit,
            // by socket or through the arena alike) is the job's error,
            // decided here so that the worker lives on (C14).
            if out.len() > self.params.max_frame.saturating_sub(ipc::DONE_HEADER - 4) {
                self.over_frame_limit(h.count, &mut out);
            }
            let mut done = DoneHeader {
                job: h.job,
                count: h.count,
                flags: 0,
                status: if h.count == 1 {
                    self.last_status as u8
                } else {
                    Status::Ok as u8
                },
            };
            let in_arena = arena.as_mut().and_then(|a| a.put_result(out.as_slice()));
            // A huge result's buffer is not kept (it would count as the
            // worker's own memory); one copied into the arena is dropped
            // before the memory is looked at.
            if in_arena.is_some() && out.capacity() > OUT_RETAIN {
                out = RVec::with_capacity(64 * 1024);
            }
            let retiring = by_count || self.over_memory();
            if retiring {
                done.flags = FLAG_RETIRING;
            }
            let sent = match in_arena {
                // A large result goes through the arena: the frame names it.
                Some(at) => {
                    sys::write_all_vectored(&self.sock, &[&ipc::encode_done_shm(&done, at)])
                }
                None => {
                    let header = match ipc::encode_done(&done, out.len()) {
                        Ok(h) => h,
                        Err(e) => {
                            eprintln!("billiard worker: result too large: {e}");
                            leave(exit_code::PROTOCOL);
                        }
                    };
                    sys::write_all_vectored(&self.sock, &[&header, out.as_slice()])
                }
            };
            if sent.is_err() {
                leave(exit_code::PROTOCOL);
            }
            if out.capacity() > OUT_RETAIN {
                out = RVec::with_capacity(64 * 1024);
            }
            if retiring {
                leave(0);
            }
            // Whatever the task did to the signal mask, SIGUSR1
            // or SIGTERM/SIGHUP ends with its job (B12).
            if let Err(e) = sys::restore_worker_signals() {
                eprintln!("billiard worker: cannot restore its signal state: {e}");
                leave(exit_code::SETUP);
            }
        }
    }
}

/// What the worker reads from its socket: whole frames, as many per
/// `recvmsg` as have arrived (the supervisor writes a worker's new frames
/// together: prefetched jobs come in one read, not two reads each, issue
/// 26), with the fds that came with them (an ARENA frame's memfds).
struct Inbox {
    buf: Vec<u8>,
    /// The unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Fds received and not yet taken by an ARENA frame.
    fds: Vec<OwnedFd>,
}

/// Why [`Inbox::next`] has no frame.
#[derive(Debug, PartialEq, Eq)]
enum InboxEnd {
    /// The supervisor closed the socket between frames: our cue to go.
    Eof,
    /// A frame announced over the frame limit (its length).
    TooLarge(usize),
    /// EOF mid-frame, or the socket failed.
    Broken,
}

const INBOX_BYTES: usize = 64 * 1024;

impl Inbox {
    fn new() -> Inbox {
        Inbox {
            buf: vec![0; INBOX_BYTES],
            start: 0,
            end: 0,
            fds: Vec::new(),
        }
    }

    /// The next frame's body (after its length prefix) as a range of
    /// `buf`, read from `sock` as needed; valid until the next call.
    fn next(
        &mut self,
        sock: &impl AsRawFd,
        max_frame: usize,
    ) -> Result<std::ops::Range<usize>, InboxEnd> {
        loop {
            let have = self.end - self.start;
            let need = match self.buf.get(self.start..self.start + 4) {
                Some(len) if have >= 4 => {
                    let mut b = [0u8; 4];
                    b.copy_from_slice(len);
                    let len = u32::from_le_bytes(b) as usize;
                    if len > max_frame {
                        return Err(InboxEnd::TooLarge(len));
                    }
                    let need = len.saturating_add(4);
                    if have >= need {
                        let body = self.start + 4..self.start + need;
                        self.start += need;
                        return Ok(body);
                    }
                    need
                }
                _ => 4,
            };
            self.make_room(need);
            self.read(sock)?;
        }
    }

    /// Room in `buf` for `need` bytes from the first unread one.
    fn make_room(&mut self, need: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            // Every frame received is read: fds still here came with none
            // that takes them (only an ARENA frame does).
            self.fds.clear();
            // A huge frame's buffer is not kept (it counts as the
            // worker's own memory).
            if self.buf.len() > OUT_RETAIN {
                self.buf = vec![0; INBOX_BYTES];
            }
        }
        if self.buf.len() - self.start < need {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() < need {
                self.buf.resize(need, 0);
            }
        }
    }

    fn read(&mut self, sock: &impl AsRawFd) -> Result<(), InboxEnd> {
        match sys::recv_with_fds(sock, &mut self.buf[self.end..]) {
            Ok(Some((n, fds))) => {
                self.end += n;
                self.fds.extend(fds);
                Ok(())
            }
            Ok(None) if self.start == self.end => Err(InboxEnd::Eof),
            Ok(None) | Err(_) => Err(InboxEnd::Broken),
        }
    }
}

/// Ends the call of the host services' `JobHost`: from here on they
/// refuse (a thread of the task may still hold its context); the write
/// lock waits for any service call still using it.
fn leave_call() {
    *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = Current {
        token: 0,
        host: std::ptr::null(),
    };
    TICKING.store(0, Ordering::Release);
}

/// Ends the worker. One whose zygote died kills what its tasks left
/// behind first (it is their subreaper; otherwise the zygote does this
/// when it reaps the worker).
fn leave(code: i32) -> ! {
    if sys::orphaned() {
        sys::kill_descendants();
    }
    sys::exit_now(code)
}

impl Worker {
    /// Runs one RUN frame into `out`; returns whether to retire afterwards
    /// by the task count (memory is looked at once the result is out of
    /// the way: [`Worker::over_memory`]).
    fn run_job(&mut self, h: ipc::RunHeader, args: &[u8], out: &mut RVec<u8>) -> bool {
        let host = JobHost::new(h.job, self.sock.as_raw_fd(), self.params.max_frame);
        let token = self.enter_call(&host);
        self.call(h, args, out, token);
        // From here on the call's services refuse (a thread of the task may
        // still hold its context).
        leave_call();
        HOST_FLAGS.store(self.params.host_flags, Ordering::Release);
        self.end_call(h, out, &host);
        drop(host);
        self.params.max_tasks.is_some_and(|m| self.tasks_done >= m)
    }

    /// Makes `host` the one the host services serve, under a fresh token
    /// (0 means none; wrapping needs 2^64 calls), which it returns.
    fn enter_call(&mut self, host: &JobHost) -> usize {
        self.calls = self.calls.wrapping_add(1).max(1);
        let token = self.calls;
        *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = Current {
            token,
            host: host as *const JobHost as *const c_void,
        };
        token
    }

    /// Calls job `h` (a single job, or one item of a chunk) with the
    /// services of `token`, into `out`.
    fn call(&mut self, h: ipc::RunHeader, args: &[u8], out: &mut RVec<u8>, token: usize) {
        out.clear();
        self.slot.start(h.job);
        STOP.store(0, Ordering::Release);
        // A stop for this job may have been posted before it started.
        if self.slot.stop_job.load(Ordering::Acquire) == h.job {
            STOP.store(
                self.slot.stop_reason.load(Ordering::Acquire) as u32,
                Ordering::Release,
            );
        }
        HOST_FLAGS.store(
            self.params.host_flags | HOST_FLAG_PROGRESS_DUE,
            Ordering::Release,
        );
        // The ticker starts with the job's first emit or progress report
        // (`JobHost::tick_from_now`), not here: waking a thread for every
        // job cost tiny tasks two context switches each.
        FLUSH_DUE.store(0, Ordering::Relaxed);
        let ctx = TaskContext::with_host(
            h.job,
            h.attempt,
            &STOP,
            &HOST_FLAGS,
            host_services(),
            token as *const c_void,
        );
        self.last_status = match self.plugins.get(h.plugin as usize) {
            None => {
                let msg = format!("no plugin #{} in this worker", h.plugin);
                out.extend_from_slice(msg.as_bytes());
                Status::UnknownTask
            }
            Some(p) => {
                let status = p.call_raw(h.task, h.codec, args, &ctx, out);
                p.plain_errors(status, 1, out, 0);
                status
            }
        };
    }

    /// After job `h`'s call: its buffered stream items go out, an item
    /// refused for its size becomes its error, the scoreboard says it
    /// finished.
    fn end_call(&mut self, h: ipc::RunHeader, out: &mut RVec<u8>, host: &JobHost) {
        // The items still buffered go out before the job's DONE.
        if host.flush().is_err() {
            leave(exit_code::PROTOCOL);
        }
        // An item refused for its size: the task's error says why (C14).
        if let Some(why) = host.take_refused() {
            if self.last_status == Status::TaskError {
                out.clear();
                out.extend_from_slice(why.as_bytes());
            }
        }
        self.slot.finished.store(h.job, Ordering::Release);
        self.slot.running.store(0, Ordering::Release);
        self.tasks_done += 1;
    }

    /// Runs a chunk (`h.count > 1`) item by item, each as a job of its own
    /// (its own id, stop flag, start on the scoreboard, so the supervisor
    /// times and stops each item), and sends the results as DONE pieces of
    /// consecutive items (see `ipc`): when a piece reaches
    /// [`PIECE_BYTES`], when the ticker finds results older than a tick,
    /// and with the last item. A crash writes the piece being filled
    /// (`sys::crash_flush_publish`): the items that finished keep their
    /// results. Returns whether to retire after it; the caller sends the
    /// last piece ([`chunk_flush`]).
    fn run_chunk(&mut self, h: ipc::RunHeader, args: &[u8], out: &mut RVec<u8>) -> bool {
        let records: Option<Vec<&[u8]>> = billiard_plugin_api::codec::records(args).collect();
        let records = records.filter(|r| r.len() == h.count as usize);
        chunk_begin(h.job, self.sock.as_raw_fd());
        // One set of host services for the chunk (as one batch call had):
        // each item's own id, one token.
        let host = JobHost::new(h.job, self.sock.as_raw_fd(), self.params.max_frame);
        let token = self.enter_call(&host);
        for i in 0..h.count {
            let job = h.job.saturating_add(u64::from(i));
            let item = ipc::RunHeader { job, count: 1, ..h };
            let status = match records.as_ref().and_then(|r| r.get(i as usize)) {
                Some(rec) => {
                    host.job.store(job, Ordering::Relaxed);
                    self.call(item, rec, out, token);
                    self.end_call(item, out, &host);
                    // Room for the record's header and the DONE frame's.
                    let room = self
                        .params
                        .max_frame
                        .saturating_sub(ipc::DONE_HEADER + 5 - 4);
                    if out.len() > room {
                        self.over_frame_limit(1, out);
                    }
                    self.last_status
                }
                None => {
                    out.clear();
                    out.extend_from_slice(b"the chunk's argument records are malformed");
                    Status::BadArgs
                }
            };
            let last = i + 1 == h.count;
            let full = chunk_push(status, out.as_slice(), last, self.params.max_frame);
            if full && !last && chunk_flush(None, 0, false).is_err() {
                leave(exit_code::PROTOCOL);
            }
            if out.capacity() > OUT_RETAIN {
                *out = RVec::with_capacity(64 * 1024);
            }
        }
        leave_call();
        HOST_FLAGS.store(self.params.host_flags, Ordering::Release);
        drop(host);
        let by_count = self.params.max_tasks.is_some_and(|m| self.tasks_done >= m);
        by_count || self.over_memory()
    }

    /// Replaces a result too large for one frame with the job's error (for
    /// a chunk, each job's); the big buffer is let go.
    fn over_frame_limit(&mut self, count: u32, out: &mut RVec<u8>) {
        let (n, limit) = (out.len(), self.params.max_frame);
        *out = RVec::with_capacity(64 * 1024);
        if count == 1 {
            let msg = format!(
                "the result of {n} bytes is over the pool's frame limit of {limit} bytes; \
                 return less, or stream it in items"
            );
            out.extend_from_slice(msg.as_bytes());
            self.last_status = Status::TaskError;
        } else {
            let msg = format!(
                "the results of this chunk of {count} jobs take {n} bytes, over the pool's \
                 frame limit of {limit} bytes; use a smaller chunksize"
            );
            for _ in 0..count {
                out.push(Status::TaskError as u8);
                out.extend_from_slice(&(msg.len() as u32).to_le_bytes());
                out.extend_from_slice(msg.as_bytes());
            }
        }
    }

    /// Whether the worker's own (anonymous) memory grew past
    /// `max_memory_per_child`. Its arena's pages are shared memory, which
    /// this does not count.
    fn over_memory(&self) -> bool {
        match (self.params.max_memory, self.base_memory) {
            (Some(limit), Some(base)) => {
                sys::anon_rss_bytes().is_some_and(|now| now.saturating_sub(base) > limit)
            }
            _ => false,
        }
    }
}

/// The host services behind a running job's context: stream items are
/// batched into ITEMS frames (sent when a batch is full, at the next emit
/// after a tick, and before DONE), progress becomes PROGRESS frames. A
/// blocked socket (the consumer is behind: the supervisor stops reading)
/// blocks the emitting task: that is the back-pressure.
struct JobHost {
    /// The job it serves (a chunk's item: set per item).
    job: AtomicU64,
    /// The worker's socket (open for the worker's life).
    sock: std::os::fd::RawFd,
    /// The ITEMS frame being filled (its header kept current, so a crash
    /// handler can write it as it is). Only the task's thread touches it:
    /// `Emitter` is neither `Send` nor `Sync`.
    items: UnsafeCell<Vec<u8>>,
    count: UnsafeCell<u32>,
    /// The last (done, total) sent, so repeats are not.
    last_progress: Mutex<Option<(u64, u64)>>,
    /// Whether the ticker was woken for this job.
    ticking: AtomicBool,
    /// The pool's frame limit (`max_frame`): no ITEMS frame is larger.
    max_frame: usize,
    /// Why an item was refused (over the frame limit), for the job's error.
    refused: Mutex<Option<String>>,
    /// `refused` was set.
    refused_any: AtomicBool,
}

impl JobHost {
    fn new(job: u64, sock: std::os::fd::RawFd, max_frame: usize) -> Self {
        JobHost {
            job: AtomicU64::new(job),
            sock,
            items: UnsafeCell::new(Vec::new()),
            count: UnsafeCell::new(0),
            last_progress: Mutex::new(None),
            ticking: AtomicBool::new(false),
            max_frame,
            refused: Mutex::new(None),
            refused_any: AtomicBool::new(false),
        }
    }

    fn take_refused(&self) -> Option<String> {
        // Nearly always none: one load, not a lock, per job.
        if !self.refused_any.load(Ordering::Relaxed) {
            return None;
        }
        self.refused_any.store(false, Ordering::Relaxed);
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Wakes the ticker for this job on its first emit or progress report
    /// (one relaxed load on every later one).
    fn tick_from_now(&self) {
        if !self.ticking.load(Ordering::Relaxed) {
            self.ticking.store(true, Ordering::Relaxed);
            start_ticking(self.job.load(Ordering::Relaxed));
        }
    }

    /// Adds one record to the pending ITEMS frame; sends it when full or
    /// when a tick passed since the last send. `Ok(false)`: the item alone
    /// is over the frame limit and was refused (C14).
    fn push(&self, item: &[u8]) -> std::io::Result<bool> {
        self.tick_from_now();
        // The frame body (kind, header, records) stays within max_frame.
        let alone = ipc::ITEMS_HEADER + item.len();
        if alone > self.max_frame {
            *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
                "a stream item of {} bytes is over the pool's frame limit of {} bytes",
                item.len(),
                self.max_frame
            ));
            self.refused_any.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        // SAFETY: only the task's thread calls `emit` (see `items`), and
        // no reference to these cells outlives this call.
        let pending = unsafe { (*self.items.get()).len() };
        if pending > 0 && pending + 4 + item.len() > self.max_frame {
            self.flush()?;
        }
        // SAFETY: as above (`flush` holds no reference past its return).
        let (buf, count) = unsafe { (&mut *self.items.get(), &mut *self.count.get()) };
        if buf.is_empty() {
            if buf.capacity() == 0 {
                buf.reserve(ITEMS_BATCH + 1024);
            }
            buf.extend_from_slice(&[0u8; ipc::ITEMS_HEADER]);
        }
        if buf.capacity() - buf.len() < item.len() + 4 {
            // The buffer may move: a crash meanwhile writes nothing.
            sys::crash_flush_publish(&[]);
        }
        buf.extend_from_slice(&(item.len() as u32).to_le_bytes());
        buf.extend_from_slice(item);
        *count += 1;
        let header = ipc::encode_items(
            self.job.load(Ordering::Relaxed),
            *count,
            buf.len() - ipc::ITEMS_HEADER,
        )
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        buf[..ipc::ITEMS_HEADER].copy_from_slice(&header);
        sys::crash_flush_publish(buf);
        if buf.len() >= ITEMS_BATCH || FLUSH_DUE.swap(0, Ordering::Relaxed) != 0 {
            self.flush()?;
        }
        Ok(true)
    }

    /// Sends the pending ITEMS frame, if any.
    fn flush(&self) -> std::io::Result<()> {
        // SAFETY: as in `push`; `flush` runs on the task's thread (from
        // `push`) or after the call returned.
        let (buf, count) = unsafe { (&mut *self.items.get(), &mut *self.count.get()) };
        if *count == 0 {
            return Ok(());
        }
        let _w = WRITE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        sys::crash_flush_busy(true);
        let r = sys::write_all_vectored(&self.sock, &[buf.as_slice()]);
        sys::crash_flush_publish(&[]);
        sys::crash_flush_busy(false);
        buf.clear();
        *count = 0;
        r
    }

    fn progress(&self, done: u64, total: u64) {
        self.tick_from_now();
        HOST_FLAGS.fetch_and(!HOST_FLAG_PROGRESS_DUE, Ordering::Relaxed);
        let mut last = self.last_progress.lock().unwrap_or_else(|e| e.into_inner());
        if *last == Some((done, total)) {
            return;
        }
        *last = Some((done, total));
        let frame = ipc::encode_progress(self.job.load(Ordering::Relaxed), done, total);
        let _w = WRITE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        sys::crash_flush_busy(true);
        // A failed write is the supervisor gone: the DONE write after the
        // call notices it and ends the worker.
        let _ = sys::write_all_vectored(&self.sock, &[&frame]);
        sys::crash_flush_busy(false);
    }
}

/// Runs `f` on the `JobHost` of the running call if `data` is its token;
/// `None` for a stale or unknown token (see CURRENT).
fn with_current<R>(data: *const c_void, f: impl FnOnce(&JobHost) -> R) -> Option<R> {
    let cur = CURRENT.read().unwrap_or_else(|e| e.into_inner());
    if data.is_null() || data as usize != cur.token || cur.host.is_null() {
        return None;
    }
    // SAFETY: CURRENT names the `JobHost` of the running call, which
    // `run_job` / `run_chunk` keeps alive until it has cleared CURRENT under the write
    // lock, i.e. until after this read guard is gone.
    let host = unsafe { &*(cur.host as *const JobHost) };
    Some(f(host))
}

extern "C" fn host_emit(data: *const c_void, item: RSlice<'_, u8>) -> Status {
    match with_current(data, |host| host.push(item.as_slice())) {
        // A call that has returned: its items go nowhere (C13).
        None => return Status::TaskError,
        Some(Ok(true)) => {}
        // Over the frame limit: the task fails, the worker lives on.
        Some(Ok(false)) => return Status::TaskError,
        // The supervisor is gone (or broke the socket): nothing to stream
        // to; end the worker as a lost connection does.
        Some(Err(_)) => leave(exit_code::PROTOCOL),
    }
    match StopReason::from_flag(STOP.load(Ordering::Relaxed)) {
        Some(StopReason::SoftTimeLimit) => Status::SoftTimeLimit,
        Some(StopReason::Cancelled) => Status::Terminated,
        None => Status::Ok,
    }
}

extern "C" fn host_progress(data: *const c_void, done: u64, total: u64) {
    // A stale call's progress is dropped (C13).
    let _ = with_current(data, |host| host.progress(done, total));
}

/// The worker's host services vtable (one per process).
fn host_services() -> HostServicesRef {
    static SERVICES: OnceLock<HostServicesRef> = OnceLock::new();
    *SERVICES.get_or_init(|| {
        HostServices {
            progress: host_progress,
            emit: host_emit,
        }
        .leak_into_prefix()
    })
}

/// Wakes the ticker for `job`: it raises FLUSH_DUE every tick and the
/// progress-due bit every PROGRESS_TICKS ticks while the job runs, and
/// sleeps while the worker is idle (or runs a job that neither emits nor
/// reports progress). Started on first use with a small
/// stack; a worker that cannot start it (address-space limit) goes without:
/// items then go out per full batch and at the end, progress at `total`.
fn start_ticking(job: u64) {
    TICKING.store(job, Ordering::Release);
    FLUSH_DUE.store(0, Ordering::Relaxed);
    wake_ticker();
}

/// Starts the ticker, or wakes it.
fn wake_ticker() {
    static TICKER: OnceLock<Option<std::thread::Thread>> = OnceLock::new();
    let ticker = TICKER.get_or_init(|| {
        std::thread::Builder::new()
            .name("billiard-ticker".into())
            .stack_size(64 * 1024)
            .spawn(tick)
            .ok()
            .map(|h| h.thread().clone())
    });
    if let Some(t) = ticker {
        t.unpark();
    }
}

fn tick() {
    let mut n = 0u32;
    loop {
        let chunk = CHUNK_TICKING.load(Ordering::Acquire);
        if TICKING.load(Ordering::Acquire) == 0 && !chunk {
            std::thread::park();
            n = 0;
            continue;
        }
        std::thread::sleep(FLUSH_TICK);
        if chunk {
            chunk_tick();
        }
        FLUSH_DUE.store(1, Ordering::Relaxed);
        n += 1;
        if n >= PROGRESS_TICKS {
            n = 0;
            HOST_FLAGS.fetch_or(HOST_FLAG_PROGRESS_DUE, Ordering::Relaxed);
        }
    }
}

/// A chunk's piece of results is sent once it reaches this size.
const PIECE_BYTES: usize = 64 * 1024;

/// The results of the running chunk not sent yet: one DONE frame whose
/// header is kept current (so a crash handler can write it as it is),
/// with the result records of items `first .. first + count`.
struct Piece {
    /// The DONE header, then the records.
    buf: Vec<u8>,
    first: u64,
    count: u32,
    /// The chunk's last record is in: only the worker's thread sends it
    /// (with the chunk's flags), never the ticker.
    last: bool,
    /// The worker's socket while a chunk runs (-1: none).
    fd: i32,
    /// A tick passed since the piece's first record: the ticker sends it.
    aged: bool,
}

static PIECE: Mutex<Piece> = Mutex::new(Piece {
    buf: Vec::new(),
    first: 0,
    count: 0,
    last: false,
    fd: -1,
    aged: false,
});
/// A chunk runs: the ticker sends its aged results.
static CHUNK_TICKING: AtomicBool = AtomicBool::new(false);

fn piece() -> std::sync::MutexGuard<'static, Piece> {
    PIECE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A chunk whose first item is `first` starts on socket `fd`.
fn chunk_begin(first: u64, fd: i32) {
    {
        let mut p = piece();
        p.buf.clear();
        p.first = first;
        p.count = 0;
        p.last = false;
        p.fd = fd;
        p.aged = false;
    }
    CHUNK_TICKING.store(true, Ordering::Release);
    wake_ticker();
}

/// Adds one item's result record to the piece; returns whether the piece
/// is full (send it before the next item).
fn chunk_push(status: Status, result: &[u8], last: bool, max_frame: usize) -> bool {
    let mut p = piece();
    let need = 5usize.saturating_add(result.len());
    // A piece stays within the frame limit: send what is there first.
    if p.count > 0 && p.buf.len().saturating_add(need) > max_frame {
        let _ = send_piece(&mut p, None, 0);
    }
    if p.buf.is_empty() {
        p.buf.extend_from_slice(&[0u8; ipc::DONE_HEADER]);
    }
    if p.buf.capacity() - p.buf.len() < need {
        // The buffer may move: a crash meanwhile writes nothing.
        sys::crash_flush_publish(&[]);
    }
    p.buf.push(status as u8);
    p.buf.extend_from_slice(
        &u32::try_from(result.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    p.buf.extend_from_slice(result);
    p.count = p.count.saturating_add(1);
    p.last = last;
    write_piece_header(&mut p, 0);
    sys::crash_flush_publish(&p.buf);
    p.buf.len() >= PIECE_BYTES
}

fn write_piece_header(p: &mut Piece, flags: u8) {
    let done = DoneHeader {
        job: p.first,
        count: p.count,
        flags,
        status: Status::Ok as u8,
    };
    let len = p.buf.len().saturating_sub(ipc::DONE_HEADER);
    if let Ok(header) = ipc::encode_done(&done, len) {
        p.buf[..ipc::DONE_HEADER].copy_from_slice(&header);
    }
}

/// Sends the piece (the worker's thread; `end`: the chunk's last, which
/// carries `flags`). A large one goes through the arena if it has room.
fn chunk_flush(arena: Option<&mut shm::WorkerArena>, flags: u8, end: bool) -> std::io::Result<()> {
    if end {
        CHUNK_TICKING.store(false, Ordering::Release);
    }
    let mut p = piece();
    let r = send_piece(&mut p, arena, flags);
    if end {
        p.fd = -1;
        // A buffer grown by a chunk of big results is not kept.
        if p.buf.capacity() > PIECE_BYTES * 2 {
            p.buf = Vec::new();
        }
    }
    r
}

fn send_piece(
    p: &mut Piece,
    arena: Option<&mut shm::WorkerArena>,
    flags: u8,
) -> std::io::Result<()> {
    if p.count == 0 || p.fd < 0 {
        return Ok(());
    }
    write_piece_header(p, flags);
    let _w = WRITE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    sys::crash_flush_busy(true);
    let in_arena = arena.and_then(|a| a.put_result(&p.buf[ipc::DONE_HEADER..]));
    let r = match in_arena {
        Some(at) => {
            let done = DoneHeader {
                job: p.first,
                count: p.count,
                flags,
                status: Status::Ok as u8,
            };
            sys::write_all_vectored(&p.fd, &[&ipc::encode_done_shm(&done, at)])
        }
        None => sys::write_all_vectored(&p.fd, &[p.buf.as_slice()]),
    };
    sys::crash_flush_publish(&[]);
    sys::crash_flush_busy(false);
    p.first = p.first.saturating_add(u64::from(p.count));
    p.count = 0;
    p.aged = false;
    p.buf.clear();
    if p.buf.capacity() > OUT_RETAIN {
        p.buf = Vec::new();
    }
    r
}

/// The ticker's turn for a chunk: a piece that waited a whole tick goes
/// out (an item that runs long must not sit on the results before it).
fn chunk_tick() {
    let mut p = piece();
    if p.count == 0 || p.last {
        return;
    }
    if !p.aged {
        p.aged = true;
        return;
    }
    // A failed write is the supervisor gone: the worker's own next write
    // ends it.
    let _ = send_piece(&mut p, None, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn frames_written_together_are_read_together_and_in_order() {
        let (mut tx, rx) = UnixStream::pair().expect("socketpair");
        let mut inbox = Inbox::new();
        let mut burst = frame(b"one");
        burst.extend(frame(b""));
        burst.extend(frame(&[7u8; 100_000])); // over the first buffer
                                              // The first frame and part of the next one's length.
        tx.write_all(&burst[..9]).expect("write");
        let body = inbox.next(&rx, 1 << 20).expect("a frame");
        assert_eq!(&inbox.buf[body], b"one");
        tx.write_all(&burst[9..]).expect("write");
        let body = inbox.next(&rx, 1 << 20).expect("a frame");
        assert!(body.is_empty());
        let body = inbox.next(&rx, 1 << 20).expect("a frame");
        assert_eq!(inbox.buf[body].len(), 100_000);
        // A frame over the limit is refused before its bytes are read.
        tx.write_all(&frame(&[1u8; 10])).expect("write");
        assert_eq!(inbox.next(&rx, 9), Err(InboxEnd::TooLarge(10)));
        let body = inbox.next(&rx, 10).expect("a frame");
        assert_eq!(&inbox.buf[body], &[1u8; 10]);
        // Between frames, EOF is the cue; mid-frame it is broken.
        tx.write_all(&frame(b"cut")[..5]).expect("write");
        drop(tx);
        assert_eq!(inbox.next(&rx, 1 << 20), Err(InboxEnd::Broken));
        let (tx, rx) = UnixStream::pair().expect("socketpair");
        drop(tx);
        assert_eq!(Inbox::new().next(&rx, 1 << 20), Err(InboxEnd::Eof));
    }
}
