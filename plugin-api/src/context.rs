//! What a running task can know about its job and ask of the host.

use std::ffi::c_void;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use abi_stable::{prefix_type::PrefixTypeTrait, std_types::RSlice, StableAbi};
use serde::Serialize;

use crate::{codec, Codec, Status};

/// Why the host asks a task to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The job's soft time limit passed.
    SoftTimeLimit,
    /// The job was cancelled.
    Cancelled,
}

impl StopReason {
    /// The value the host stores in the stop flag for this reason.
    pub const fn as_flag(self) -> u32 {
        match self {
            StopReason::SoftTimeLimit => 1,
            StopReason::Cancelled => 2,
        }
    }

    /// The reason a stop-flag value stands for ([`StopReason::as_flag`]'s
    /// inverse); `None` for 0 (no stop requested) or an unknown value.
    pub fn from_flag(flag: u32) -> Option<StopReason> {
        match flag {
            1 => Some(StopReason::SoftTimeLimit),
            2 => Some(StopReason::Cancelled),
            _ => None,
        }
    }
}

/// Returned by [`TaskContext::check`] when the task should stop. Return it
/// (with `?`) from a task that returns `Result`: the job then ends with the
/// `soft_time_limit` (or `terminated`) outcome rather than `task_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped(pub StopReason);

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            StopReason::SoftTimeLimit => f.write_str("soft time limit exceeded"),
            StopReason::Cancelled => f.write_str("job cancelled"),
        }
    }
}

impl std::error::Error for Stopped {}

/// Payload of the unwind started by [`TaskContext::checkpoint`]; the glue
/// recognises it and reports a stop instead of a panic.
#[doc(hidden)]
pub struct StopUnwind(pub StopReason);

/// Bit of [`TaskContext`]'s host flags: the host wants the next
/// [`TaskContext::progress`] call (it raises the bit at the job's start and
/// then about every 50 ms; the host clears it when it takes the call).
pub const HOST_FLAG_PROGRESS_DUE: u32 = 1;

/// Bit of [`TaskContext`]'s host flags: JSON results of byte-typed tasks
/// (`Vec<u8>`, see [`codec::Bytes`](crate::codec::Bytes)) are wanted as
/// `{"$bytes": "<base64>"}` instead of arrays of numbers (`run --bytes
/// base64`). Set by the host for the whole life of a worker.
pub const HOST_FLAG_BYTES_BASE64: u32 = 1 << 1;

/// Bit of [`TaskContext`]'s host flags: the host reads a
/// [`Failure`](crate::Failure)'s exception class and directive (the
/// [`FAILURE_DETAIL_PREFIX`](crate::FAILURE_DETAIL_PREFIX) encoding) from
/// a `task_error`'s output. Without it (an older host) the glue writes only
/// the failure's message. Set by the host for the whole life of a worker.
pub const HOST_FLAG_FAILURE_DETAIL: u32 = 1 << 2;

/// Handed to a task that asks for it (`ctx: &TaskContext`).
///
/// Layout (ABI 2, frozen: new host services are appended to
/// [`HostServices`], never to this struct): the job id and attempt, the stop
/// flag the host raises, a flag word the task's fast paths read
/// ([`HOST_FLAG_PROGRESS_DUE`]), the host's services vtable and the opaque
/// pointer the host passes back to each service.
#[repr(C)]
#[derive(StableAbi)]
pub struct TaskContext<'a> {
    job_id: u64,
    attempt: u32,
    stop: &'a AtomicU32,
    host_flags: &'a AtomicU32,
    host: HostServicesRef,
    host_data: *const c_void,
}

// SAFETY: the host services contract (see `HostServices`) requires every
// service to be callable from any thread while the call lasts, and `'a`
// bounds the context to the call; the other fields are shared atomics and
// plain values.
unsafe impl Sync for TaskContext<'_> {}
// SAFETY: as above; moving the context to another thread within the call
// is as safe as sharing it.
unsafe impl Send for TaskContext<'_> {}

/// What the host offers a running task: the vtable behind
/// [`TaskContext::progress`] and [`Emitter::emit`]. An abi_stable prefix
/// type: later services are appended after `emit` (a plugin built against a
/// newer list sees them as missing on an older host), so adding one is not a
/// layout break.
///
/// Every function receives the `data` pointer of the context it came with
/// and may be called from any thread while the task call lasts.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = HostServicesRef)))]
#[sabi(missing_field(option))]
pub struct HostServices {
    /// Reports that the job has done `done` of `total` units (`total == 0`:
    /// unknown). Called when the context's progress-due bit is set, and for
    /// every call with `done >= total > 0`.
    pub progress: extern "C" fn(data: *const c_void, done: u64, total: u64),
    /// Hands one encoded stream item (the call's codec) to the host. May
    /// block (back-pressure). `Ok`: go on; `SoftTimeLimit` / `Terminated`:
    /// the task should stop; anything else: the item was refused and the
    /// task fails with a `task_error` (e.g. the host cannot stream).
    #[sabi(last_prefix_field)]
    pub emit: extern "C" fn(data: *const c_void, item: RSlice<'_, u8>) -> Status,
}

extern "C" fn noop_progress(_: *const c_void, _: u64, _: u64) {}

extern "C" fn noop_emit(_: *const c_void, _: RSlice<'_, u8>) -> Status {
    Status::Ok
}

/// Host services that do nothing: progress is dropped, stream items are
/// accepted and discarded. What [`TaskContext::new`] uses.
pub fn noop_host_services() -> HostServicesRef {
    static NOOP: OnceLock<HostServicesRef> = OnceLock::new();
    *NOOP.get_or_init(|| {
        HostServices {
            progress: noop_progress,
            emit: noop_emit,
        }
        .leak_into_prefix()
    })
}

static NOOP_FLAGS: AtomicU32 = AtomicU32::new(0);

impl<'a> TaskContext<'a> {
    /// A context with no host behind it (tests, harnesses, the host's own
    /// probes): progress goes nowhere and stream items are discarded. `stop`
    /// is the flag the host raises (from a signal handler, so it must stay a
    /// plain atomic).
    pub fn new(job_id: u64, attempt: u32, stop: &'a AtomicU32) -> Self {
        TaskContext {
            job_id,
            attempt,
            stop,
            host_flags: &NOOP_FLAGS,
            host: noop_host_services(),
            host_data: std::ptr::null(),
        }
    }

    /// A context backed by host services. `flags` holds the `HOST_FLAG_*`
    /// bits; `data` is passed back to every service and must stay valid (and
    /// the services callable) for `'a`.
    pub fn with_host(
        job_id: u64,
        attempt: u32,
        stop: &'a AtomicU32,
        flags: &'a AtomicU32,
        host: HostServicesRef,
        data: *const c_void,
    ) -> Self {
        TaskContext {
            job_id,
            attempt,
            stop,
            host_flags: flags,
            host,
            host_data: data,
        }
    }

    /// Reports how far the job has got: `done` of `total` units (`total ==
    /// 0` when unknown). Cheap enough for a hot loop: one relaxed atomic load
    /// unless the host asked for an update (about every 50 ms) or the job is
    /// complete (`done >= total > 0`, always passed on).
    #[inline]
    pub fn progress(&self, done: u64, total: u64) {
        if self.host_flags.load(Ordering::Relaxed) & HOST_FLAG_PROGRESS_DUE != 0
            || (total != 0 && done >= total)
        {
            (self.host.progress())(self.host_data, done, total);
        }
    }

    /// Whether the host raised flag `bit` (`HOST_FLAG_*`), for the glue.
    #[doc(hidden)]
    #[inline]
    pub fn host_flag(&self, bit: u32) -> bool {
        self.host_flags.load(Ordering::Relaxed) & bit != 0
    }

    /// The host services behind this context (for the glue).
    #[doc(hidden)]
    pub fn host(&self) -> (HostServicesRef, *const c_void) {
        (self.host, self.host_data)
    }

    /// The stop flag the host raises (for the host's C plugin backend,
    /// which hands its address to a C task).
    #[doc(hidden)]
    pub fn stop_flag(&self) -> &'a AtomicU32 {
        self.stop
    }

    /// The id of the job being run (unique within one pool).
    pub fn job_id(&self) -> u64 {
        self.job_id
    }

    /// 0 for the first run of a job, 1 for its first retry, ...
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// A context for item `offset` of a batch.
    #[doc(hidden)]
    pub fn for_batch_item(&self, offset: u64) -> TaskContext<'a> {
        TaskContext {
            job_id: self.job_id.wrapping_add(offset),
            attempt: self.attempt,
            stop: self.stop,
            host_flags: self.host_flags,
            host: self.host,
            host_data: self.host_data,
        }
    }

    /// Why the host wants the task to stop, if it does. Cheap: one atomic load.
    pub fn stop_requested(&self) -> Option<StopReason> {
        StopReason::from_flag(self.stop.load(Ordering::Relaxed))
    }

    /// `Err(Stopped)` once the task should stop; use with `?` in a task that
    /// returns `Result<T, E>` where `E: From<Stopped>` (e.g. `Box<dyn Error>`,
    /// `anyhow::Error`, or `Stopped` itself).
    pub fn check(&self) -> Result<(), Stopped> {
        match self.stop_requested() {
            Some(reason) => Err(Stopped(reason)),
            None => Ok(()),
        }
    }

    /// Ends the task at once if it should stop, from any depth of the call
    /// stack, for tasks that return a plain value. Unwinds to the glue (no
    /// panic message is recorded), which reports `soft_time_limit` or
    /// `terminated`.
    pub fn checkpoint(&self) {
        if let Some(reason) = self.stop_requested() {
            std::panic::resume_unwind(Box::new(StopUnwind(reason)));
        }
    }
}

/// Payload of the unwind started by [`Emitter::emit`] when an item cannot be
/// sent; the glue reports it as a `task_error` with this message.
#[doc(hidden)]
pub struct EmitUnwind(pub String);

/// Where a streaming task sends its items: take `out: &Emitter<T>` as an
/// argument of a `#[task]` function and call [`emit`](Emitter::emit) for
/// each value as it is produced. The task still returns its own final value.
///
/// ```ignore
/// #[task]
/// fn lines(path: String, out: &Emitter<String>) -> std::io::Result<u64> {
///     let mut n = 0;
///     for line in std::io::BufReader::new(std::fs::File::open(path)?).lines() {
///         out.emit(line?);
///         n += 1;
///     }
///     Ok(n)
/// }
/// ```
pub struct Emitter<T> {
    host: HostServicesRef,
    data: *const c_void,
    codec: Codec,
    scratch: std::cell::RefCell<Vec<u8>>,
    _item: PhantomData<fn(T)>,
}

impl<T: Serialize> Emitter<T> {
    /// Made by the glue for a streaming task's call.
    #[doc(hidden)]
    pub fn new(ctx: &TaskContext<'_>, codec: Codec) -> Self {
        Emitter {
            host: ctx.host,
            data: ctx.host_data,
            codec,
            scratch: std::cell::RefCell::new(Vec::with_capacity(64)),
            _item: PhantomData,
        }
    }

    /// Sends one item to the host. Items are batched by the host and may
    /// block here when the consumer is behind (back-pressure). If the job is
    /// stopped (soft time limit, cancellation) the task unwinds from here
    /// like [`TaskContext::checkpoint`]; an item that cannot be encoded (or
    /// a host that cannot stream) ends the task with a `task_error`.
    pub fn emit(&self, item: impl std::borrow::Borrow<T>) {
        let status = {
            let mut buf = self.scratch.borrow_mut();
            buf.clear();
            if let Err(e) = codec::encode_into(self.codec, item.borrow(), &mut *buf) {
                drop(buf);
                std::panic::resume_unwind(Box::new(EmitUnwind(format!(
                    "could not encode a stream item: {e}"
                ))));
            }
            (self.host.emit())(self.data, RSlice::from_slice(&buf))
        };
        match status {
            Status::Ok => {}
            Status::SoftTimeLimit => {
                std::panic::resume_unwind(Box::new(StopUnwind(StopReason::SoftTimeLimit)))
            }
            Status::Terminated => {
                std::panic::resume_unwind(Box::new(StopUnwind(StopReason::Cancelled)))
            }
            other => std::panic::resume_unwind(Box::new(EmitUnwind(format!(
                "the host refused a stream item ({})",
                other.kind()
            )))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Captured {
        items: Mutex<Vec<Vec<u8>>>,
        progress: Mutex<Vec<(u64, u64)>>,
        refuse: bool,
    }

    extern "C" fn cap_progress(data: *const c_void, done: u64, total: u64) {
        // SAFETY: the tests pass a `&Captured` that outlives the context.
        let c = unsafe { &*(data as *const Captured) };
        c.progress.lock().unwrap().push((done, total));
    }

    extern "C" fn cap_emit(data: *const c_void, item: RSlice<'_, u8>) -> Status {
        // SAFETY: as above.
        let c = unsafe { &*(data as *const Captured) };
        if c.refuse {
            return Status::UnknownTask;
        }
        c.items.lock().unwrap().push(item.to_vec());
        Status::Ok
    }

    fn services() -> HostServicesRef {
        HostServices {
            progress: cap_progress,
            emit: cap_emit,
        }
        .leak_into_prefix()
    }

    #[test]
    fn progress_reaches_the_host_only_when_due_or_complete() {
        let (stop, flags) = (AtomicU32::new(0), AtomicU32::new(0));
        let cap = Captured::default();
        let ctx = TaskContext::with_host(
            1,
            0,
            &stop,
            &flags,
            services(),
            &cap as *const Captured as *const c_void,
        );
        for i in 0..10 {
            ctx.progress(i, 100);
        }
        assert!(cap.progress.lock().unwrap().is_empty());
        flags.store(HOST_FLAG_PROGRESS_DUE, Ordering::Relaxed);
        ctx.progress(10, 100);
        ctx.progress(100, 100);
        ctx.progress(5, 0); // unknown total: only when due
        assert_eq!(
            *cap.progress.lock().unwrap(),
            vec![(10, 100), (100, 100), (5, 0)]
        );
    }

    #[test]
    fn emitter_encodes_items_in_the_calls_codec() {
        let stop = AtomicU32::new(0);
        let flags = AtomicU32::new(0);
        let cap = Captured::default();
        let ctx = TaskContext::with_host(
            1,
            0,
            &stop,
            &flags,
            services(),
            &cap as *const Captured as *const c_void,
        );
        let out = Emitter::<String>::new(&ctx, Codec::Json);
        out.emit("a".to_string());
        let b = "b".to_string();
        out.emit(&b); // by reference too
        assert_eq!(
            *cap.items.lock().unwrap(),
            vec![b"\"a\"".to_vec(), b"\"b\"".to_vec()]
        );
        // The no-op context discards items.
        let noop = TaskContext::new(1, 0, &stop);
        Emitter::<u64>::new(&noop, Codec::Bincode).emit(3u64);
    }

    #[test]
    fn a_refused_item_unwinds_with_its_reason() {
        let stop = AtomicU32::new(0);
        let flags = AtomicU32::new(0);
        let cap = Captured {
            refuse: true,
            ..Captured::default()
        };
        let ctx = TaskContext::with_host(
            1,
            0,
            &stop,
            &flags,
            services(),
            &cap as *const Captured as *const c_void,
        );
        let out = Emitter::<u64>::new(&ctx, Codec::Bincode);
        let err =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| out.emit(1u64))).unwrap_err();
        let EmitUnwind(msg) = err.downcast_ref::<EmitUnwind>().expect("an EmitUnwind");
        assert!(msg.contains("unknown_task"), "{msg}");
    }
}
