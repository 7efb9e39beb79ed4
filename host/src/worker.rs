//! The worker process: reads RUN frames from its socket, calls the plugin,
//! writes DONE frames back. Runs in a process forked from the zygote (or
//! exec'd, with the spawn start method). It never writes to the terminal:
//! its stdout and stderr are a pipe the supervisor reads.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};

use abi_stable::std_types::RVec;
use billiard_plugin_api::{Codec, Status, TaskContext};

use crate::ipc::{self, DoneHeader, Frame, WorkerParams, FLAG_RETIRING};
use crate::plugin::Plugin;
use crate::sys::{self, Scoreboard, Slot};

/// Worker exit codes the supervisor recognises.
pub mod exit_code {
    /// The supervisor sent a malformed frame or went away mid-frame.
    pub const PROTOCOL: i32 = 70;
    /// The pool's initializer task failed.
    pub const INITIALIZER_FAILED: i32 = 71;
    /// A plugin could not be loaded (spawn start method).
    pub const PLUGIN_LOAD: i32 = 72;
    /// The worker could not set itself up (fds, signals, rlimits).
    pub const SETUP: i32 = 73;
}

/// The flag a task's `TaskContext` reads; raised by the stop signal.
static STOP: AtomicU32 = AtomicU32::new(0);

struct Worker {
    plugins: Vec<Plugin>,
    params: WorkerParams,
    sock: UnixStream,
    slot: &'static Slot,
    tasks_done: u64,
    base_memory: Option<u64>,
    last_status: Status,
}

/// Runs the worker loop; never returns. `zygote` is the pid of the
/// worker's parent, whose death it watches for.
pub fn run(
    plugins: Vec<Plugin>,
    params: WorkerParams,
    sock: OwnedFd,
    board: &'static Scoreboard,
    zygote: i32,
) -> ! {
    let Some(slot) = board.slot(params.slot as usize) else {
        eprintln!("billiard worker: no scoreboard slot {}", params.slot);
        sys::exit_now(exit_code::SETUP);
    };
    if let Err(e) = setup(&params, slot, &sock, zygote) {
        eprintln!("billiard worker: setup failed: {e}");
        sys::exit_now(exit_code::SETUP);
    }
    let mut w = Worker {
        plugins,
        params,
        sock: UnixStream::from(sock),
        slot,
        tasks_done: 0,
        base_memory: None,
        last_status: Status::Ok,
    };
    w.initialize();
    w.base_memory = w.params.max_memory.and_then(|_| sys::anon_rss_bytes());
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
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut out: RVec<u8> = RVec::with_capacity(64 * 1024);
        loop {
            let mut len = [0u8; 4];
            if let Err(e) = self.sock.read_exact(&mut len) {
                // EOF: the supervisor closed our socket; that is our cue.
                let code = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    0
                } else {
                    exit_code::PROTOCOL
                };
                leave(code);
            }
            let len = u32::from_le_bytes(len) as usize;
            if len > self.params.max_frame {
                eprintln!("billiard worker: frame of {len} bytes exceeds the limit");
                leave(exit_code::PROTOCOL);
            }
            buf.clear();
            buf.resize(len, 0);
            if self.sock.read_exact(&mut buf).is_err() {
                leave(exit_code::PROTOCOL);
            }
            match ipc::decode_body(&buf) {
                Ok(Frame::Run(h, args)) => {
                    let retiring = self.run_job(h, args, &mut out);
                    let done = DoneHeader {
                        job: h.job,
                        count: h.count,
                        flags: if retiring { FLAG_RETIRING } else { 0 },
                        status: if h.count == 1 {
                            self.last_status as u8
                        } else {
                            Status::Ok as u8
                        },
                    };
                    let header = match ipc::encode_done(&done, out.len()) {
                        Ok(h) => h,
                        Err(e) => {
                            eprintln!("billiard worker: result too large: {e}");
                            leave(exit_code::PROTOCOL);
                        }
                    };
                    if sys::write_all_vectored(&self.sock, &[&header, out.as_slice()]).is_err() {
                        leave(exit_code::PROTOCOL);
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
                Ok(Frame::Exit) => leave(0),
                Ok(Frame::Done(..)) | Err(_) => {
                    eprintln!("billiard worker: unexpected frame from the supervisor");
                    leave(exit_code::PROTOCOL);
                }
            }
        }
    }
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
    /// Runs one RUN frame into `out`; returns whether to retire afterwards.
    fn run_job(&mut self, h: ipc::RunHeader, args: &[u8], out: &mut RVec<u8>) -> bool {
        out.clear();
        self.slot.running.store(h.job, Ordering::Release);
        STOP.store(0, Ordering::Release);
        // A stop for this job may have been posted before it started.
        if self.slot.stop_job.load(Ordering::Acquire) == h.job {
            STOP.store(
                self.slot.stop_reason.load(Ordering::Acquire) as u32,
                Ordering::Release,
            );
        }
        let ctx = TaskContext::new(h.job, h.attempt, &STOP);
        self.last_status = match self.plugins.get(h.plugin as usize) {
            None => {
                let msg = format!("no plugin #{} in this worker", h.plugin);
                if h.count == 1 {
                    out.extend_from_slice(msg.as_bytes());
                } else {
                    for _ in 0..h.count {
                        out.push(Status::UnknownTask as u8);
                        out.extend_from_slice(&(msg.len() as u32).to_le_bytes());
                        out.extend_from_slice(msg.as_bytes());
                    }
                }
                Status::UnknownTask
            }
            Some(p) if h.count == 1 => p.call_raw(h.task, h.codec, args, &ctx, out),
            Some(p) => {
                p.call_batch_raw(h.task, h.codec, args, h.count, &ctx, out);
                Status::Ok
            }
        };
        self.slot.finished.store(h.job, Ordering::Release);
        self.slot.running.store(0, Ordering::Release);
        self.tasks_done += h.count as u64;
        let by_count = self.params.max_tasks.is_some_and(|m| self.tasks_done >= m);
        let by_memory = match (self.params.max_memory, self.base_memory) {
            (Some(limit), Some(base)) => {
                sys::anon_rss_bytes().is_some_and(|now| now.saturating_sub(base) > limit)
            }
            _ => false,
        };
        by_count || by_memory
    }
}
