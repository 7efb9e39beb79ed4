//! Zygotes and generations: the zygote processes (several during a
//! rolling restart), each one's lifecycle ([`ZygoteState`]), the plugins of
//! every generation, and what a zygote's socket says, as [`ZygoteEvent`]s
//! for the loop to route.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Interest, Token};

use super::super::config::PoolConfig;
use super::super::job::Dispatch;
use super::launch::{forward_lines, load_failure, reap_zygote};
use super::ReloadReply;
use crate::error::{ErrorKind, TaskError};
use crate::ipc::{self, ZygoteCmd, ZygoteMsg};
use crate::plugin::PluginInfo;
use crate::sys::{self, ExitInfo};
use crate::zygote;

/// How often a plugin file found overwritten in place is reloaded again
/// (the first try may catch the copy half done).
const OVERWRITE_RELOAD_INTERVAL: Duration = Duration::from_millis(200);

/// Why a zygote was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Start {
    /// The pool's first: `Pool::build` waits for it.
    Initial,
    /// A rolling restart (`Pool::restart`, SIGHUP): until it is ready the
    /// current generation serves; if it fails, that generation stays.
    Restart,
    /// The previous zygote died.
    Replace,
}

/// Where a zygote is in its life.
pub(super) enum ZygoteState {
    /// Loading the plugins: it forks no worker until its hello.
    Loading {
        /// Why it was started (what a failed start means).
        purpose: Start,
        /// Who waits for it to be ready (`Pool::restart`).
        on_ready: Option<ReloadReply>,
        /// The pieces of its hello received so far (C11: a long plugin
        /// list comes in pieces).
        hello: zygote::HelloParts,
    },
    /// Loaded; its generation is the current one and it forks workers.
    Serving,
    /// A newer generation serves; it exits once its workers are gone.
    Retired,
    /// It died (after it had loaded the plugins); `retired`: it had been
    /// retired, or was retired since.
    Dead { retired: bool },
}

/// A zygote the supervisor talks to. Several exist during a `restart()`.
pub(super) struct Zygote {
    pub gen: u64,
    pub fd: OwnedFd,
    pub pid: i32,
    child: Option<std::process::Child>,
    pub token: Token,
    /// Plugins as this zygote loaded them (empty until it serves).
    pub plugins: Vec<PluginInfo>,
    pub state: ZygoteState,
    /// Its stdout/stderr while it loads (then handed to a log thread).
    output: Option<OwnedFd>,
    /// The plugin files as they were when it was started.
    stamps: Vec<Option<FileStamp>>,
    /// When a file was last found overwritten in place and a reload
    /// started for it (at most one per `OVERWRITE_RELOAD_INTERVAL`: the copy
    /// may still be going on).
    overwrite_reload: Option<Instant>,
}

impl Zygote {
    pub fn loading(&self) -> bool {
        matches!(self.state, ZygoteState::Loading { .. })
    }

    pub fn serving(&self) -> bool {
        matches!(self.state, ZygoteState::Serving)
    }

    pub fn retired(&self) -> bool {
        matches!(
            self.state,
            ZygoteState::Retired | ZygoteState::Dead { retired: true }
        )
    }

    pub fn alive(&self) -> bool {
        !matches!(self.state, ZygoteState::Dead { .. })
    }
}

/// A zygote process just started, before it is registered.
pub(super) struct Launched {
    pub fd: OwnedFd,
    pub pid: i32,
    pub child: Option<std::process::Child>,
    pub output: Option<OwnedFd>,
}

/// What a zygote's socket said, for the loop to route.
pub(super) enum ZygoteEvent {
    /// A loading zygote's whole hello.
    Hello(ZygoteMsg),
    /// A loading zygote failed (why): it is to be ended.
    StartFailed(String),
    /// A message of a serving zygote (a worker spawned, a spawn failed, a
    /// worker's exit report), with the fds passed along.
    Msg(ZygoteMsg, Vec<OwnedFd>),
    /// Its socket closed or failed: it died.
    Died,
}

/// A plugin file as it was when a zygote loaded it, to notice a file
/// overwritten in place under a running pool (`cp new.so loaded.so`):
/// the zygote's mapping then shows the new bytes and every worker forked
/// from it crashes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileStamp {
    fn of(path: &std::path::Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        })
    }

    /// Same file (inode), other contents: written over in place. A file
    /// replaced by rename has another inode, which is safe.
    fn overwritten_by(&self, now: &FileStamp) -> bool {
        self.dev == now.dev
            && self.ino == now.ino
            && (self.size != now.size || self.mtime_ns != now.mtime_ns)
    }
}

/// The plugins of one zygote generation, as the pool's API resolves task
/// names against them (`Pool::task_ref`, `find_task`, `plugins`).
#[derive(Debug, Clone, Default)]
pub struct Generation {
    /// The generation's number: 1 for the plugins loaded at start, one more
    /// after each successful reload or zygote replacement (0 only in a
    /// `Generation::default()`).
    pub gen: u64,
    /// The plugins of this generation, in the order the pool loads them
    /// (the index a [`TaskRef`](crate::TaskRef) holds).
    pub plugins: Arc<Vec<PluginInfo>>,
}

/// The live generation, shared with the `Pool` handle.
pub type LiveGeneration = Arc<std::sync::RwLock<Generation>>;

/// The zygotes, the current generation and every generation's plugins.
pub(super) struct Zygotes {
    pub list: Vec<Zygote>,
    /// The newest generation started.
    pub gen: u64,
    /// Every generation's plugins, to map a job's task (resolved against
    /// the generation of its `TaskRef`) onto the worker's generation.
    generations: HashMap<u64, Arc<Vec<PluginInfo>>>,
    live: LiveGeneration,
}

/// A zygote that loaded its plugins: what the loop routes on.
pub(super) struct Loaded {
    pub gen: u64,
    pub pid: i32,
    pub purpose: Start,
    pub on_ready: Option<ReloadReply>,
    pub plugins: Arc<Vec<PluginInfo>>,
}

/// What a loading zygote's hello came to.
pub(super) enum Hello {
    Loaded(Loaded),
    /// A plugin refused to load; the zygote is gone (reaped).
    Refused(TaskError, Start, Option<ReloadReply>),
    /// Something else than a hello: a failed start.
    Unexpected,
}

/// A zygote that died: what the loop routes on.
pub(super) struct Died {
    pub gen: u64,
    pub pid: i32,
    pub status: String,
    pub retired: bool,
}

impl Zygotes {
    pub fn new(live: LiveGeneration) -> Zygotes {
        Zygotes {
            list: Vec::new(),
            gen: 0,
            generations: HashMap::new(),
            live,
        }
    }

    pub fn index_of(&self, token: Token) -> Option<usize> {
        self.list.iter().position(|z| z.token == token)
    }

    pub fn index_of_gen(&self, gen: u64) -> Option<usize> {
        self.list.iter().position(|z| z.gen == gen)
    }

    /// The zygote workers are forked from now.
    pub fn current(&self) -> Option<&Zygote> {
        self.list.iter().rev().find(|z| z.serving())
    }

    /// Whether workers of zygote generation `gen` are wanted (its zygote
    /// serves: alive and not replaced by a restart).
    pub fn is_current(&self, gen: u64) -> bool {
        self.list.iter().any(|z| z.gen == gen && z.serving())
    }

    /// Generations of zygotes still loading.
    pub fn loading(&self) -> Vec<u64> {
        self.list
            .iter()
            .filter(|z| z.loading())
            .map(|z| z.gen)
            .collect()
    }

    pub fn any_loading(&self) -> bool {
        self.list.iter().any(Zygote::loading)
    }

    /// Registers a launched zygote under `token` (it loads until its
    /// hello) as generation `gen`.
    pub fn install(
        &mut self,
        registry: &mio::Registry,
        token: Token,
        z: Launched,
        gen: u64,
        purpose: Start,
        cfg: &PoolConfig,
    ) -> Result<(), TaskError> {
        let load_err = |reason: String| TaskError::new(ErrorKind::PluginLoad, reason);
        if let Err(e) = sys::set_nonblocking(&z.fd, true) {
            return Err(load_failure(cfg, z, &format!("zygote socket: {e}")));
        }
        if let Err(e) = registry.register(
            &mut mio::unix::SourceFd(&z.fd.as_raw_fd()),
            token,
            Interest::READABLE,
        ) {
            let msg = format!("cannot watch the zygote: {e}");
            let _ = load_failure(cfg, z, &msg);
            return Err(load_err(msg));
        }
        self.gen = gen;
        self.list.push(Zygote {
            gen,
            fd: z.fd,
            pid: z.pid,
            child: z.child,
            token,
            plugins: Vec::new(),
            state: ZygoteState::Loading {
                purpose,
                on_ready: None,
                hello: Default::default(),
            },
            output: z.output,
            stamps: cfg.plugins.iter().map(|p| FileStamp::of(p)).collect(),
            overwrite_reload: None,
        });
        Ok(())
    }

    /// Who waits for the newest zygote to serve.
    pub fn on_ready(&mut self, reply: ReloadReply) {
        if let Some(ZygoteState::Loading { on_ready, .. }) =
            self.list.last_mut().map(|z| &mut z.state)
        {
            *on_ready = Some(reply);
        }
    }

    /// The next event of the zygote with `token`; `None`: nothing more to
    /// read now (or the zygote is gone).
    pub fn next_event(
        &mut self,
        token: Token,
        buf: &mut [u8],
        cfg: &PoolConfig,
    ) -> Option<ZygoteEvent> {
        loop {
            let zi = self.index_of(token)?;
            let z = &mut self.list[zi];
            let res = sys::recv_with_fds(&z.fd, buf);
            let loading = z.loading();
            return Some(match res {
                // A restarted zygote's handshake (`pool::worker_exe`).
                Ok(Some((n, _))) if loading && ipc::is_handshake(&buf[..n]) => {
                    let checked = super::super::worker_exe::resolve(cfg.worker_exe.as_ref())
                        .and_then(|(exe, source)| {
                            super::super::worker_exe::check_handshake(&buf[..n], &exe, source)
                        });
                    match checked {
                        Ok(()) => continue,
                        Err(why) => ZygoteEvent::StartFailed(why),
                    }
                }
                Ok(Some((n, fds))) => match ipc::decode_ctl::<ZygoteMsg>(&buf[..n]) {
                    Ok(msg) => match &mut z.state {
                        ZygoteState::Loading { hello, .. } => match hello.feed(msg) {
                            Ok(Some(hello)) => ZygoteEvent::Hello(hello),
                            Ok(None) => continue,
                            Err(e) => ZygoteEvent::StartFailed(e),
                        },
                        _ => ZygoteEvent::Msg(msg, fds),
                    },
                    Err(e) if loading => ZygoteEvent::StartFailed(format!("garbled hello: {e}")),
                    Err(e) => {
                        tracing::error!("garbled message from the zygote: {e}");
                        continue;
                    }
                },
                Ok(None) if loading => {
                    ZygoteEvent::StartFailed("it ended before it had loaded them".into())
                }
                Ok(None) => ZygoteEvent::Died,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(e) => {
                    tracing::error!("zygote socket: {e}");
                    ZygoteEvent::Died
                }
            });
        }
    }

    /// The hello of loading zygote `zi`: it serves now (its generation is
    /// the live one), or it failed.
    pub fn hello(&mut self, zi: usize, msg: ZygoteMsg, registry: &mio::Registry) -> Hello {
        let plugins = match msg {
            ZygoteMsg::Hello { plugins: Ok(p), .. } => p,
            ZygoteMsg::Hello {
                plugins: Err(e), ..
            } => {
                // A plugin refused to load; the zygote exits by itself.
                let e: TaskError = e.into();
                let (z, purpose, waiter) = self.remove(zi, registry);
                drop(z.fd);
                drop(z.output);
                reap_zygote(z.child, z.pid);
                return Hello::Refused(e, purpose, waiter);
            }
            _ => return Hello::Unexpected,
        };
        let z = &mut self.list[zi];
        if !z.loading() {
            return Hello::Unexpected;
        }
        let ZygoteState::Loading {
            purpose, on_ready, ..
        } = std::mem::replace(&mut z.state, ZygoteState::Serving)
        else {
            return Hello::Unexpected;
        };
        z.plugins = plugins.clone();
        let (gen, pid) = (z.gen, z.pid);
        // Zygote output (rare: plugin constructors printing) goes to the log.
        if let Some(o) = z.output.take() {
            std::thread::Builder::new()
                .name("billiard-zygote-log".into())
                .spawn(move || forward_lines(o, pid))
                .ok();
        }
        tracing::debug!(
            "zygote pid {pid} loaded the plugins (generation {gen}): {}",
            plugins
                .iter()
                .map(|p| format!("{} ({} tasks)", p.name, p.tasks.len()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let plugins = Arc::new(plugins);
        self.generations.insert(gen, plugins.clone());
        if let Ok(mut live) = self.live.write() {
            *live = Generation {
                gen,
                plugins: plugins.clone(),
            };
        }
        if purpose == Start::Restart {
            // The new generation serves: the others retire.
            for z in self.list.iter_mut().filter(|z| z.gen != gen) {
                match z.state {
                    ZygoteState::Serving => z.state = ZygoteState::Retired,
                    ZygoteState::Dead { .. } => z.state = ZygoteState::Dead { retired: true },
                    // None is loading (a newer start supersedes it).
                    ZygoteState::Loading { .. } | ZygoteState::Retired => {}
                }
            }
        }
        Hello::Loaded(Loaded {
            gen,
            pid,
            purpose,
            on_ready,
            plugins,
        })
    }

    /// Takes a zygote out of the pool's books (and out of the poll set).
    /// Returns it with why it was started and who waits for it.
    pub fn remove(
        &mut self,
        zi: usize,
        registry: &mio::Registry,
    ) -> (Launched, Start, Option<ReloadReply>) {
        let mut z = self.list.remove(zi);
        let _ = registry.deregister(&mut mio::unix::SourceFd(&z.fd.as_raw_fd()));
        let (purpose, waiter) = match std::mem::replace(&mut z.state, ZygoteState::Retired) {
            ZygoteState::Loading {
                purpose, on_ready, ..
            } => (purpose, on_ready),
            // Only a loading zygote fails to start.
            _ => (Start::Replace, None),
        };
        (
            Launched {
                fd: z.fd,
                pid: z.pid,
                child: z.child.take(),
                output: z.output.take(),
            },
            purpose,
            waiter,
        )
    }

    /// Zygote `zi`'s socket closed: it is dead (reaped); `None` if it was
    /// already.
    pub fn died(&mut self, zi: usize, registry: &mio::Registry) -> Option<Died> {
        let z = &mut self.list[zi];
        let retired = match z.state {
            ZygoteState::Dead { .. } => return None,
            ZygoteState::Retired => true,
            _ => false,
        };
        z.state = ZygoteState::Dead { retired };
        let _ = registry.deregister(&mut mio::unix::SourceFd(&z.fd.as_raw_fd()));
        let status = reap_zygote(z.child.take(), z.pid);
        Some(Died {
            gen: z.gen,
            pid: z.pid,
            status,
            retired,
        })
    }

    /// A retired zygote of generation `gen` (with no workers left) is told
    /// to exit.
    pub fn finish(&mut self, gen: u64, registry: &mio::Registry) {
        if let Some(i) = self.list.iter().position(|z| z.gen == gen && z.retired()) {
            let mut z = self.list.remove(i);
            let _ = registry.deregister(&mut mio::unix::SourceFd(&z.fd.as_raw_fd()));
            let _ = sys::send_with_fds(&z.fd, &ipc::encode_ctl(&ZygoteCmd::Shutdown), &[]);
            drop(z.fd);
            reap_zygote(z.child.take(), z.pid);
        }
    }

    /// Every zygote is told to exit and reaped.
    pub fn shutdown(&mut self) {
        for mut z in self.list.drain(..) {
            let _ = sys::send_with_fds(&z.fd, &ipc::encode_ctl(&ZygoteCmd::Shutdown), &[]);
            drop(z.fd);
            reap_zygote(z.child.take(), z.pid);
        }
    }

    /// The zygote of generation `gen` if it is alive and stopped (it can
    /// neither report nor fork): killed, with a message.
    pub fn kill_if_stopped(&self, gen: u64) {
        let Some(z) = self.list.iter().find(|z| z.gen == gen && z.alive()) else {
            return;
        };
        if let Some(state @ ('T' | 't')) = sys::process_state(z.pid) {
            tracing::error!(
                "the zygote (pid {}) is stopped (state {state}) and cannot report or fork workers; killing it",
                z.pid
            );
            let _ = sys::kill_pid(z.pid, sys::SIGKILL);
        }
    }

    /// A task name for messages (`plugin.task`) in generation `gen`.
    pub fn task_name(&self, gen: u64, d: &Dispatch) -> String {
        self.generations
            .get(&gen)
            .and_then(|g| g.get(d.plugin as usize))
            .and_then(|p| Some((p, p.tasks.get(d.task as usize)?)))
            .map_or_else(
                || format!("plugin {} task {}", d.plugin, d.task),
                |(p, t)| format!("{}.{}", p.name, t.name),
            )
    }

    /// Maps a dispatch's task onto the plugin generation of the worker that
    /// will run it, by name: a reload may have reordered, added or removed
    /// tasks, so indices of another generation are never sent as they are.
    pub fn resolve_for(&self, d: &mut Dispatch, worker_gen: u64) -> Result<(), TaskError> {
        if d.gen == 0 || d.gen == worker_gen {
            return Ok(());
        }
        let unknown = |why: String| TaskError::new(ErrorKind::UnknownTask, why);
        let (Some(from), Some(to)) = (
            self.generations.get(&d.gen),
            self.generations.get(&worker_gen),
        ) else {
            return Err(unknown(format!(
                "the job names a task of plugin generation {}, which this pool does not know",
                d.gen
            )));
        };
        let Some(plugin) = from.get(d.plugin as usize) else {
            return Err(unknown(format!("no plugin #{} is loaded", d.plugin)));
        };
        let Some(task) = plugin.tasks.get(d.task as usize) else {
            return Err(unknown(format!(
                "plugin `{}` has no task #{}",
                plugin.name, d.task
            )));
        };
        let Some((pi, now)) = to.iter().enumerate().find(|(_, p)| p.name == plugin.name) else {
            return Err(unknown(format!(
                "plugin `{}` is gone since the plugins were reloaded",
                plugin.name
            )));
        };
        let Some(ti) = now.task_index(&task.name) else {
            return Err(unknown(format!(
                "task `{}.{}` is gone since the plugins were reloaded ({} {} now has: {})",
                plugin.name,
                task.name,
                now.name,
                now.version,
                now.tasks
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        d.plugin = pi as u16;
        d.task = ti;
        d.gen = worker_gen;
        Ok(())
    }

    /// Whether the dispatch's task (indices of generation `gen` once
    /// resolved) streams items.
    pub fn is_streaming(&self, d: &Dispatch, gen: u64) -> bool {
        let gen = if d.gen == 0 { gen } else { d.gen };
        self.generations
            .get(&gen)
            .and_then(|ps| ps.get(d.plugin as usize))
            .and_then(|p| p.tasks.get(d.task as usize))
            .is_some_and(|t| t.streaming)
    }

    /// After a crash: was a plugin file of the worker's generation written
    /// over in place? Then every worker forked from that zygote will crash
    /// too: say so (once), and reload the files (a rolling restart, `true`:
    /// due now), which is what the operator meant by replacing it.
    pub fn overwritten(
        &mut self,
        gen: u64,
        info: Option<&ExitInfo>,
        cfg: &PoolConfig,
    ) -> Option<(String, bool)> {
        let crash = info.and_then(|i| i.signal).is_some_and(|sig| {
            [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGABRT].contains(&sig)
        });
        if !crash {
            return None;
        }
        let zi = self.index_of_gen(gen)?;
        let changed = cfg.plugins.iter().enumerate().find_map(|(i, path)| {
            let then = self.list[zi].stamps.get(i)?.as_ref()?;
            let now = FileStamp::of(path)?;
            then.overwritten_by(&now)
                .then(|| path.display().to_string())
        })?;
        let note = format!(
            "; the plugin file {changed} was overwritten in place while the pool had it loaded, \
             which crashes the workers forked from it: replace plugin files by renaming \
             (`cp new.so x.so.tmp && mv x.so.tmp x.so`), then reload (SIGHUP)"
        );
        let due = match self.list[zi].overwrite_reload {
            Some(t) => t.elapsed() >= OVERWRITE_RELOAD_INTERVAL,
            None => true,
        };
        if due {
            self.list[zi].overwrite_reload = Some(Instant::now());
            tracing::error!(
                "the plugin file {changed} was overwritten in place while loaded; its workers crash. Reloading the plugin files now (replace them with mv next time)"
            );
        }
        // A zygote that had loaded and is not retired: its files are
        // reloaded (the loop starts the restart).
        let z = &self.list[zi];
        let reload = due && !z.loading() && !z.retired();
        Some((note, reload))
    }
}
