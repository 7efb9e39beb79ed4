//! The worker sandbox (issue 15): what a plugin's code may do, chosen by
//! the operator. A [`Sandbox`] is one policy — a profile (`none`,
//! `standard`, `strict`) plus individual switches — that the pool hands to
//! its zygote and workers like any other worker setting.
//!
//! Where each layer is applied (the invariant `ARCHITECTURE.md` states):
//!
//! * **process-wide, in the zygote, before it loads any plugin**
//!   ([`enter_process_wide`]): `PR_SET_NO_NEW_PRIVS`, the scrubbed
//!   environment (the zygote is also exec'd with a clean one), the
//!   rlimits (`RLIMIT_NOFILE`, `RLIMIT_FSIZE`, `RLIMIT_CORE`), a fresh
//!   network namespace, and a private mount namespace in which every mount
//!   is read-only except the `allow_write` directories;
//! * **per worker, right after the fork and before any plugin code runs
//!   in it** ([`fork_worker`] + [`enter_worker`]): a PID namespace of its
//!   own (the worker is its process 1: it can see and signal only what
//!   it started) with a fresh `/proc` and a per-namespace `pid_max` (the
//!   fork-bomb cap that binds root too), `RLIMIT_NPROC`, `--user`,
//!   `PR_SET_DUMPABLE 0`, every capability dropped, and the seccomp filter
//!   (whose `kill` rule depends on the worker's own process group).
//!
//! A blocked system call returns `EPERM` to the task (`SECCOMP_RET_ERRNO`),
//! never kills the worker. A protection the kernel cannot give is an error
//! naming it ([`Sandbox::check`]), never a silent downgrade.
//!
//! [`enter_process_wide`], [`fork_worker`] and [`enter_worker`] are also
//! what a one-off isolated call (`billiard_host::Process`) uses.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::sys::{self, sandbox as os};

/// A named sandbox level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// No sandbox (the default): workers can do what the host can.
    #[default]
    None,
    /// Everything but the network and filesystem rules: PID namespace per
    /// worker, seccomp filter, no_new_privs, no capabilities, not dumpable,
    /// scrubbed environment, resource limits.
    Standard,
    /// `standard` plus no network (a fresh network namespace) and a
    /// read-only filesystem except the `--allow-write` directories.
    Strict,
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Profile::None => "none",
            Profile::Standard => "standard",
            Profile::Strict => "strict",
        })
    }
}

/// The resource limits of a sandboxed worker (`None`: left as inherited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResourceLimits {
    /// Processes a worker may have at once, itself and every descendant
    /// (its PID namespace's `pid_max`, and `RLIMIT_NPROC` for a non-root
    /// `--user`). At least 300 (the kernel's smallest `pid_max` is 301).
    pub max_procs: Option<u64>,
    /// `RLIMIT_NOFILE`.
    pub max_open_files: Option<u64>,
    /// `RLIMIT_FSIZE`, bytes: a larger write ends the worker (SIGXFSZ).
    pub max_file_size: Option<u64>,
    /// `RLIMIT_CORE`, bytes (0: no core dumps).
    pub max_core_size: Option<u64>,
}

impl ResourceLimits {
    /// The defaults of `standard` and `strict`.
    pub fn sandboxed() -> ResourceLimits {
        ResourceLimits {
            max_procs: Some(MIN_PROCS),
            max_open_files: Some(1024),
            max_file_size: Some(1 << 30),
            max_core_size: Some(0),
        }
    }
}

/// The smallest process cap: the kernel's floor for `pid_max` is 301
/// (RESERVED_PIDS + 1), which leaves 300 pids in a namespace.
pub const MIN_PROCS: u64 = 300;

/// What the sandbox enforces. `Sandbox::default()` is the `none` profile.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Sandbox {
    /// The profile this policy started from (for reports).
    pub profile: Profile,
    /// PID namespace per worker with a fresh /proc, seccomp filter,
    /// no_new_privs, capabilities dropped, not dumpable, environment
    /// scrubbed (`standard` and `strict`).
    pub isolate: bool,
    /// A fresh network namespace for the zygote and its workers.
    pub no_network: bool,
    /// Every mount read-only except `allow_write`.
    pub read_only: bool,
    /// Directories that stay writable under `read_only`.
    pub allow_write: Vec<PathBuf>,
    /// Run workers as this user (a name, or a numeric uid); needs root.
    pub user: Option<String>,
    /// Environment variables passed through the scrubbed environment.
    pub keep_env: Vec<String>,
    /// Resource limits of the workers (see [`ResourceLimits`]).
    pub limits: ResourceLimits,
}

/// A protection that cannot be had, or a sandbox step that failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A protection the policy asks for cannot be had on this kernel (or
    /// without the privileges the host has).
    #[error("sandbox: {protection} is not available here: {reason}")]
    Unavailable {
        /// The protection, e.g. "a PID namespace per worker".
        protection: &'static str,
        /// Why not: what the probe got, explained.
        reason: String,
    },
    /// `--user` names no user (neither a known name nor a numeric uid).
    #[error("sandbox: --user {0}: no such user")]
    NoSuchUser(String),
    /// The policy itself is wrong (an option out of range, options that
    /// contradict each other, ...); the message says which.
    #[error("sandbox: {0}")]
    Invalid(String),
    /// A step of entering the sandbox failed.
    #[error("sandbox: {step}: {source}")]
    Setup {
        /// The step (the system call or what it was for).
        step: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

fn setup(step: &'static str) -> impl FnOnce(io::Error) -> SandboxError {
    move |source| SandboxError::Setup { step, source }
}

/// The system calls the seccomp filter refuses with EPERM, by name.
pub const BLOCKED_SYSCALLS: &[&str] = &[
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "mount",
    "umount2",
    "unshare",
    "setns",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "init_module",
    "finit_module",
    "delete_module",
    "pivot_root",
    "chroot",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "open_by_handle_at",
    "name_to_handle_at",
    "userfaultfd",
    "pidfd_getfd",
    "kcmp",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "quotactl",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "syslog",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
];

fn syscall_number(name: &str) -> Option<i64> {
    let n = match name {
        "ptrace" => libc::SYS_ptrace,
        "process_vm_readv" => libc::SYS_process_vm_readv,
        "process_vm_writev" => libc::SYS_process_vm_writev,
        "kexec_load" => libc::SYS_kexec_load,
        "kexec_file_load" => libc::SYS_kexec_file_load,
        "bpf" => libc::SYS_bpf,
        "mount" => libc::SYS_mount,
        "umount2" => libc::SYS_umount2,
        "unshare" => libc::SYS_unshare,
        "setns" => libc::SYS_setns,
        "perf_event_open" => libc::SYS_perf_event_open,
        "keyctl" => libc::SYS_keyctl,
        "add_key" => libc::SYS_add_key,
        "request_key" => libc::SYS_request_key,
        "init_module" => libc::SYS_init_module,
        "finit_module" => libc::SYS_finit_module,
        "delete_module" => libc::SYS_delete_module,
        "pivot_root" => libc::SYS_pivot_root,
        "chroot" => libc::SYS_chroot,
        "swapon" => libc::SYS_swapon,
        "swapoff" => libc::SYS_swapoff,
        "reboot" => libc::SYS_reboot,
        "acct" => libc::SYS_acct,
        "open_by_handle_at" => libc::SYS_open_by_handle_at,
        "name_to_handle_at" => libc::SYS_name_to_handle_at,
        "userfaultfd" => libc::SYS_userfaultfd,
        "pidfd_getfd" => libc::SYS_pidfd_getfd,
        "kcmp" => libc::SYS_kcmp,
        "fsopen" => libc::SYS_fsopen,
        "fsconfig" => libc::SYS_fsconfig,
        "fsmount" => libc::SYS_fsmount,
        "fspick" => libc::SYS_fspick,
        "move_mount" => libc::SYS_move_mount,
        "open_tree" => libc::SYS_open_tree,
        "mount_setattr" => libc::SYS_mount_setattr,
        "quotactl" => libc::SYS_quotactl,
        "settimeofday" => libc::SYS_settimeofday,
        "clock_settime" => libc::SYS_clock_settime,
        "clock_adjtime" => libc::SYS_clock_adjtime,
        "adjtimex" => libc::SYS_adjtimex,
        "syslog" => libc::SYS_syslog,
        "io_uring_setup" => libc::SYS_io_uring_setup,
        "io_uring_enter" => libc::SYS_io_uring_enter,
        "io_uring_register" => libc::SYS_io_uring_register,
        _ => return None,
    };
    Some(n)
}

/// The terminal `ioctl`s the seccomp filter refuses with EPERM (C2), with
/// their names for the reports. A worker has no terminal (its own session,
/// no tty fd, none in its /dev), so these fail anyway; the rule is the
/// second wall should a terminal fd ever reach a task. The set is what can
/// act on a terminal someone else is using:
///
/// * `TIOCSTI` pushes bytes into a terminal's input (the keystroke
///   injection of C2); `TIOCLINUX` can paste a virtual console's selection
///   into its input (the same attack on a console);
/// * `TIOCSCTTY` makes a terminal the caller's controlling one (after
///   which `TIOCSTI` needs no privilege) and `TIOCSPGRP` takes over its
///   foreground process group; `TIOCNOTTY` is not refused (giving a
///   terminal up harms nobody);
/// * `TIOCSWINSZ` resizes it (and signals its foreground job), `TIOCSETD`
///   changes its line discipline (loads kernel modules: a kernel attack
///   surface), `TIOCCONS` redirects the console to it, `TIOCVHANGUP`
///   hangs it up.
///
/// Reading ioctls (`TCGETS` for `isatty`, `TIOCGWINSZ`) stay allowed.
// libc's request type is c_ulong on glibc and c_int on musl: the casts are
// not redundant everywhere.
#[allow(clippy::unnecessary_cast)]
pub const BLOCKED_IOCTLS: &[(&str, u64)] = &[
    ("TIOCSTI", libc::TIOCSTI as u64),
    ("TIOCLINUX", libc::TIOCLINUX as u64),
    ("TIOCSCTTY", libc::TIOCSCTTY as u64),
    ("TIOCSPGRP", libc::TIOCSPGRP as u64),
    ("TIOCSWINSZ", libc::TIOCSWINSZ as u64),
    ("TIOCSETD", libc::TIOCSETD as u64),
    ("TIOCCONS", libc::TIOCCONS as u64),
    ("TIOCVHANGUP", libc::TIOCVHANGUP as u64),
];

/// The namespace flags `clone` may not take inside the sandbox.
const CLONE_NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    0x80, // CLONE_NEWTIME
];

/// How "no network" is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMechanism {
    /// A fresh network namespace (only loopback, down), and a seccomp
    /// rule refusing `socket` for the families it does not confine.
    Namespace,
    /// No namespaces here: a seccomp rule refusing every `socket`.
    SeccompSocketRule,
}

impl Sandbox {
    /// The policy of a profile, with its defaults.
    pub fn profile(p: Profile) -> Sandbox {
        let mut s = Sandbox {
            profile: p,
            ..Sandbox::default()
        };
        if p != Profile::None {
            s.isolate = true;
            s.limits = ResourceLimits::sandboxed();
        }
        if p == Profile::Strict {
            s.no_network = true;
            s.read_only = true;
        }
        s
    }
    /// `none`.
    pub fn none() -> Sandbox {
        Sandbox::default()
    }
    /// `standard`.
    pub fn standard() -> Sandbox {
        Sandbox::profile(Profile::Standard)
    }
    /// `strict`.
    pub fn strict() -> Sandbox {
        Sandbox::profile(Profile::Strict)
    }
    /// No network (a fresh network namespace).
    pub fn no_network(mut self) -> Sandbox {
        self.no_network = true;
        self
    }
    /// Read-only filesystem but for `dir` (repeatable).
    pub fn allow_write(mut self, dir: impl Into<PathBuf>) -> Sandbox {
        self.read_only = true;
        self.allow_write.push(dir.into());
        self
    }
    /// Run workers as `user` (the host must be root).
    pub fn user(mut self, user: impl Into<String>) -> Sandbox {
        self.user = Some(user.into());
        self
    }
    /// Pass `var` through the scrubbed environment.
    pub fn keep_env(mut self, var: impl Into<String>) -> Sandbox {
        self.keep_env.push(var.into());
        self
    }
    /// Resource limits of each worker.
    pub fn limits(mut self, limits: ResourceLimits) -> Sandbox {
        self.limits = limits;
        self
    }

    /// True when nothing at all is enforced.
    pub fn is_none(&self) -> bool {
        !self.isolate
            && !self.no_network
            && !self.read_only
            && self.user.is_none()
            && self.limits == ResourceLimits::default()
    }

    /// Whether each worker gets a PID namespace of its own (its pid is 1
    /// there, its parent invisible: `getppid()` is 0).
    pub fn isolates_pids(&self) -> bool {
        self.isolate
    }

    /// The environment the zygote is started with: `None` to inherit the
    /// host's, else only the kept variables (and a fixed PATH unless kept).
    pub fn environment(&self) -> Option<Vec<(std::ffi::OsString, std::ffi::OsString)>> {
        if !self.isolate {
            return None;
        }
        let mut env: Vec<_> = self
            .keep_env
            .iter()
            .filter_map(|k| std::env::var_os(k).map(|v| (k.into(), v)))
            .collect();
        if !self.keep_env.iter().any(|k| k == "PATH") {
            env.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
        }
        Some(env)
    }

    /// Checks, in the host before anything starts, that this kernel and
    /// this process can give every protection asked for; returns what will
    /// be enforced. Every refusal names the protection.
    pub fn check(&self) -> Result<Enforcement, SandboxError> {
        let mut layers = Vec::new();
        if self.is_none() {
            layers.push(terminal_layer(false));
            return Ok(Enforcement { layers });
        }
        let root = os::uid() == 0;
        let mut probe_steps = Vec::new();
        if self.isolate {
            probe_steps.push(os::ProbeStep::MountNamespace);
            probe_steps.push(os::ProbeStep::PidNamespace);
            probe_steps.push(os::ProbeStep::IpcNamespace);
        }
        if self.read_only {
            if !probe_steps.contains(&os::ProbeStep::MountNamespace) {
                probe_steps.push(os::ProbeStep::MountNamespace);
            }
            probe_steps.push(os::ProbeStep::ReadOnlyRemount);
        }
        if self.isolate && !probe_steps.contains(&os::ProbeStep::ReadOnlyRemount) {
            // /sys and the workers' /proc are made read-only.
            probe_steps.push(os::ProbeStep::ReadOnlyRemount);
        }
        if let Err((step, e)) = os::probe(&probe_steps) {
            let protection = match step {
                os::ProbeStep::MountNamespace => "a mount namespace (filesystem rule, fresh /proc)",
                os::ProbeStep::PidNamespace => "a PID namespace per worker",
                os::ProbeStep::ReadOnlyRemount => {
                    "a recursive read-only remount (mount_setattr, Linux 5.12)"
                }
                os::ProbeStep::NetworkNamespace => "a network namespace",
                os::ProbeStep::IpcNamespace => "an IPC namespace per worker",
            };
            return Err(SandboxError::Unavailable {
                protection,
                reason: explain_probe(e),
            });
        }
        if self.no_network {
            match self.network_mechanism() {
                Some(NetworkMechanism::Namespace) => layers.push(Layer::new(
                    "network",
                    "fresh network namespace (only loopback, down); seccomp: socket() of any family but AF_INET, AF_INET6, AF_NETLINK (AF_UNIX, AF_VSOCK, ...) and datagram socketpair() fail EPERM (no Unix socket, no hypervisor host can be reached)",
                )),
                Some(NetworkMechanism::SeccompSocketRule) => layers.push(Layer::new(
                    "network",
                    "seccomp rule: socket() of every family and datagram socketpair() fail EPERM (no network namespace here)",
                )),
                None => {
                    return Err(SandboxError::Unavailable {
                        protection: "no network",
                        reason: "no seccomp filter can be had (a network namespace alone leaves Unix sockets and vsock reachable)".into(),
                    })
                }
            }
        }
        if self.read_only {
            for d in &self.allow_write {
                if !d.is_absolute() {
                    return Err(SandboxError::Invalid(format!(
                        "--allow-write {}: give an absolute path",
                        d.display()
                    )));
                }
                if !d.is_dir() {
                    return Err(SandboxError::Invalid(format!(
                        "--allow-write {}: not a directory",
                        d.display()
                    )));
                }
            }
            let dirs = if self.allow_write.is_empty() {
                "nothing".to_string()
            } else {
                self.allow_write
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            layers.push(Layer::new(
                "filesystem",
                &format!("mount namespace, every mount read-only; writable: {dirs}"),
            ));
            layers.push(Layer::new("landlock", &landlock_status()));
        }
        if self.isolate {
            if !os::seccomp_available() {
                return Err(SandboxError::Unavailable {
                    protection: "a seccomp filter",
                    reason: "PR_GET_SECCOMP failed (kernel built without CONFIG_SECCOMP_FILTER)"
                        .into(),
                });
            }
            layers.push(Layer::new(
                "pids",
                "PID namespace per worker (fresh /proc; the host, the zygote and other workers are invisible)",
            ));
            layers.push(Layer::new(
                "ipc",
                "IPC namespace per worker (and one for the zygote): the host's SysV shared memory, message queues, semaphores and POSIX message queues are invisible; a worker's die with it",
            ));
            layers.push(Layer::new(
                "seccomp",
                &format!(
                    "filter, EPERM: {}, ioctl {}, kill() of another process group, clone() with namespace flags, any call of another ABI (int 0x80, x32); clone3 ENOSYS",
                    BLOCKED_SYSCALLS.join(", "),
                    BLOCKED_IOCTLS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
            layers.push(Layer::new(
                "identity",
                "no_new_privs, every capability dropped (bounding set too), not dumpable",
            ));
            layers.push(Layer::new(
                "devices",
                "/dev is a private tmpfs with only null, zero, full, random, urandom (no tty); /sys and /proc read-only",
            ));
            let kept = if self.keep_env.is_empty() {
                "none".to_string()
            } else {
                self.keep_env.join(", ")
            };
            layers.push(Layer::new(
                "environment",
                &format!("scrubbed (kept: {kept}; PATH fixed unless kept)"),
            ));
        }
        let user = match &self.user {
            Some(name) => {
                if !root {
                    return Err(SandboxError::Invalid(format!(
                        "--user {name}: the host must run as root to switch workers to another user"
                    )));
                }
                let (uid, gid) = resolve_user(name)?;
                layers.push(Layer::new(
                    "user",
                    &format!(
                        "workers run as {name} (uid {uid}, gid {gid}, no supplementary groups)"
                    ),
                ));
                Some(uid)
            }
            None => None,
        };
        if let Some(n) = self.limits.max_procs {
            if n < MIN_PROCS {
                return Err(SandboxError::Invalid(format!(
                    "a process limit of {n} is below the smallest the kernel enforces ({MIN_PROCS})"
                )));
            }
            let worker_uid = user.unwrap_or(os::uid());
            let mechanism = if self.isolate && os::per_namespace_pid_max() {
                format!("{n} processes per worker (its PID namespace's pid_max)")
            } else if worker_uid != 0 {
                format!("RLIMIT_NPROC {n} (counts every process of uid {worker_uid})")
            } else {
                return Err(SandboxError::Unavailable {
                    protection: "a process limit (fork bombs) for root workers",
                    reason: "RLIMIT_NPROC does not bind root and a per-namespace pid_max needs Linux 6.14 and a PID namespace: use --user or a newer kernel".into(),
                });
            };
            layers.push(Layer::new("processes", &mechanism));
        }
        let lim = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or("inherited".into());
        if self.limits.max_open_files.is_some()
            || self.limits.max_file_size.is_some()
            || self.limits.max_core_size.is_some()
        {
            layers.push(Layer::new(
                "rlimits",
                &format!(
                    "RLIMIT_NOFILE {}, RLIMIT_FSIZE {}, RLIMIT_CORE {}",
                    lim(self.limits.max_open_files),
                    lim(self.limits.max_file_size),
                    lim(self.limits.max_core_size)
                ),
            ));
        }
        layers.push(terminal_layer(self.isolate));
        Ok(Enforcement { layers })
    }

    /// How "no network" can be enforced here, if at all.
    /// Both need a seccomp filter: a network namespace alone leaves
    /// filesystem Unix sockets and vsock reachable (C5).
    pub fn network_mechanism(&self) -> Option<NetworkMechanism> {
        if !os::seccomp_available() {
            None
        } else if os::probe(&[os::ProbeStep::NetworkNamespace]).is_ok() {
            Some(NetworkMechanism::Namespace)
        } else {
            Some(NetworkMechanism::SeccompSocketRule)
        }
    }

    /// One line for headers: "strict (network, filesystem, pids, ...)".
    pub fn summary(&self) -> String {
        if self.is_none() {
            return "none".into();
        }
        match self.check() {
            Ok(e) => format!(
                "{} ({})",
                self.profile,
                e.layers
                    .iter()
                    .filter(|l| l.name != "landlock")
                    .map(|l| l.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(e) => format!("{} (cannot be enforced: {e})", self.profile),
        }
    }
}

/// "No terminal" (C2), which every profile enforces: the zygote leads a
/// session of its own before it loads a plugin (`sys::spawn_helper`,
/// `sys::Lead::Session`), its workers stay in that session as group
/// leaders (so they cannot acquire a terminal), their stdin is /dev/null,
/// stdout and stderr a pipe, and no other fd of the host reaches them.
fn terminal_layer(sandboxed: bool) -> Layer {
    let mut m = String::from(
        "own session, no controlling terminal (/dev/tty: ENXIO); stdin /dev/null, stdout/stderr a pipe, no other fd of the host inherited",
    );
    if sandboxed {
        m.push_str("; terminal ioctls fail EPERM (seccomp)");
    }
    Layer {
        name: "terminal",
        mechanism: m,
    }
}

fn explain_probe(e: io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => format!("{e} (needs root, or CAP_SYS_ADMIN)"),
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            format!("{e} (the kernel lacks it or was built without it)")
        }
        _ => e.to_string(),
    }
}

fn landlock_status() -> String {
    match os::landlock_abi() {
        Ok(v) => format!("ABI v{v} available; not used (the mount namespace enforces the filesystem rule)"),
        Err(e) => match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) => {
                "not enabled at boot (EOPNOTSUPP); not needed: the mount namespace enforces the filesystem rule".into()
            }
            Some(libc::ENOSYS) => "not built into this kernel (ENOSYS); not needed: the mount namespace enforces the filesystem rule".into(),
            _ => format!("unavailable ({e}); not needed: the mount namespace enforces the filesystem rule"),
        },
    }
}

/// A user name or numeric uid → (uid, gid).
fn resolve_user(name: &str) -> Result<(u32, u32), SandboxError> {
    if let Ok(uid) = name.parse::<u32>() {
        return Ok((uid, uid));
    }
    match os::lookup_user(name) {
        Ok(Some(ids)) => Ok(ids),
        Ok(None) => Err(SandboxError::NoSuchUser(name.to_string())),
        Err(e) => Err(SandboxError::Setup {
            step: "look up --user",
            source: e,
        }),
    }
}

/// One protection and how it is enforced here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layer {
    /// The protection, e.g. `network` or `filesystem`.
    pub name: &'static str,
    /// How it is enforced here (or why it is not).
    pub mechanism: String,
}

impl Layer {
    fn new(name: &'static str, mechanism: &str) -> Layer {
        Layer {
            name,
            mechanism: mechanism.to_string(),
        }
    }
}

/// What a sandbox policy enforces on this kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Enforcement {
    /// One entry per protection the policy enforces here.
    pub layers: Vec<Layer>,
}

/// What this kernel offers the sandbox, and what each profile would
/// enforce here (`inspect --sandbox-report`).
#[derive(Debug, Clone, Serialize)]
pub struct KernelReport {
    /// The kernel release (`/proc/sys/kernel/osrelease`).
    pub kernel: String,
    /// Whether the host runs as root.
    pub root: bool,
    /// Whether a network namespace can be made (`Err`: why not).
    pub network_namespace: Result<(), String>,
    /// Whether a mount namespace can be made (`Err`: why not).
    pub mount_namespace: Result<(), String>,
    /// Whether a PID namespace can be made (`Err`: why not).
    pub pid_namespace: Result<(), String>,
    /// Whether an IPC namespace can be made (`Err`: why not).
    pub ipc_namespace: Result<(), String>,
    /// Whether a recursive read-only remount works in a mount namespace
    /// (`Err`: why not).
    pub read_only_remount: Result<(), String>,
    /// Whether seccomp filters can be installed.
    pub seccomp: bool,
    /// Whether `/proc/sys/kernel/pid_max` is per PID namespace (Linux 6.14+),
    /// which the `max_procs` limit uses.
    pub per_namespace_pid_max: bool,
    /// Landlock's status and why it is not needed (the mount namespace
    /// enforces the filesystem rule).
    pub landlock: String,
    /// The LSMs the kernel lists in /sys/kernel/security/lsm ("" if none).
    pub lsm: String,
    /// What each profile (`none`, `standard`, `strict`) would enforce here,
    /// or why it cannot be had.
    pub profiles: BTreeMap<String, Result<Enforcement, String>>,
}

/// Probes this kernel (`inspect --sandbox-report`).
pub fn kernel_report() -> KernelReport {
    let probe = |s| os::probe(&[s]).map_err(|(_, e)| explain_probe(e));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mut profiles = BTreeMap::new();
    for p in [Profile::None, Profile::Standard, Profile::Strict] {
        profiles.insert(
            p.to_string(),
            Sandbox::profile(p).check().map_err(|e| e.to_string()),
        );
    }
    KernelReport {
        kernel,
        root: os::uid() == 0,
        network_namespace: probe(os::ProbeStep::NetworkNamespace),
        mount_namespace: probe(os::ProbeStep::MountNamespace),
        pid_namespace: probe(os::ProbeStep::PidNamespace),
        ipc_namespace: probe(os::ProbeStep::IpcNamespace),
        read_only_remount: os::probe(&[
            os::ProbeStep::MountNamespace,
            os::ProbeStep::ReadOnlyRemount,
        ])
        .map_err(|(_, e)| explain_probe(e)),
        seccomp: os::seccomp_available(),
        per_namespace_pid_max: os::per_namespace_pid_max(),
        landlock: landlock_status(),
        lsm: std::fs::read_to_string("/sys/kernel/security/lsm")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        profiles,
    }
}

/// The uid/gid `--user` resolved to in this process (the zygote resolves
/// it before loading plugins; its workers switch to it).
static USER_IDS: OnceLock<(u32, u32)> = OnceLock::new();
/// The workers' seccomp programs, compiled once in the zygote: (process
/// group they were built for, programs).
static PROGRAMS: OnceLock<(i32, Vec<seccompiler::BpfProgram>)> = OnceLock::new();

/// In the zygote (or any helper process about to load plugins), before
/// it loads any: the process-wide layers. Call it single-threaded.
pub fn enter_process_wide(s: &Sandbox) -> Result<(), SandboxError> {
    if s.is_none() {
        return Ok(());
    }
    keep_in_process(s)?;
    if s.isolate {
        os::set_no_new_privs().map_err(setup("PR_SET_NO_NEW_PRIVS"))?;
        os::scrub_environment(&s.keep_env);
        if !s.keep_env.iter().any(|k| k == "PATH") {
            std::env::set_var("PATH", "/usr/local/bin:/usr/bin:/bin");
        }
    }
    if let Some(n) = s.limits.max_open_files {
        os::set_rlimit(os::Rlimit::Nofile, n).map_err(setup("RLIMIT_NOFILE"))?;
    }
    if let Some(n) = s.limits.max_file_size {
        os::set_rlimit(os::Rlimit::Fsize, n).map_err(setup("RLIMIT_FSIZE"))?;
    }
    if let Some(n) = s.limits.max_core_size {
        os::set_rlimit(os::Rlimit::Core, n).map_err(setup("RLIMIT_CORE"))?;
    }
    // Whether "no network" falls back to refusing every socket here.
    let mut no_net_namespace = false;
    if s.no_network {
        match os::unshare_network() {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => {
                // No network namespaces in this kernel: the seccomp rule
                // (installed below) refuses every socket instead.
                if !os::seccomp_available() {
                    return Err(setup("network namespace")(e));
                }
                no_net_namespace = true;
            }
            Err(e) => return Err(setup("network namespace")(e)),
        }
    }
    if s.isolate {
        // Before any plugin code: the plugins' constructors see none of
        // the host's SysV IPC objects or POSIX queues either (C6); each
        // worker then gets one of its own (`fork_worker`).
        os::unshare_ipc().map_err(setup("IPC namespace"))?;
    }
    if s.read_only || s.isolate {
        os::unshare_mounts().map_err(setup("mount namespace"))?;
    }
    if s.read_only {
        os::read_only_except(&s.allow_write).map_err(setup("read-only filesystem"))?;
    }
    if s.isolate {
        // Root without capabilities still owns every root-owned file by
        // its mode: no device node but the harmless ones, and no write to
        // sysfs (the workers' fresh /proc is read-only too).
        os::minimal_dev(s.read_only).map_err(setup("minimal /dev"))?;
        os::remount_read_only(std::path::Path::new("/sys")).map_err(setup("read-only /sys"))?;
    }
    if s.no_network {
        // Last, and before any plugin code: the zygote (the plugins'
        // constructors) and every worker it makes, whatever the profile,
        // make no socket the network namespace does not confine. The
        // zygote itself needs only stream socketpairs.
        os::install_seccomp(&network_program(no_net_namespace)?)
            .map_err(setup("seccomp filter (no network)"))?;
    }
    Ok(())
}

/// In a zygote that re-executed itself after [`enter_process_wide`] (to
/// leave a plugin that starts threads to its workers): the layers are in
/// place (namespaces, mounts, rlimits, no_new_privs, filters, the scrubbed
/// environment all survive exec); only what they keep in this process is
/// made again: the resolved `--user` and the workers' seccomp programs.
pub fn reenter_after_exec(s: &Sandbox) -> Result<(), SandboxError> {
    if s.is_none() {
        return Ok(());
    }
    keep_in_process(s)
}

/// What the sandbox keeps in this process's memory (gone with an exec,
/// unlike the layers): the uid/gid `--user` resolves to, and the workers'
/// seccomp programs (an isolated worker is process 1, and leads group 1,
/// of its own PID namespace: its filters can be compiled once, here).
fn keep_in_process(s: &Sandbox) -> Result<(), SandboxError> {
    if let Some(name) = &s.user {
        let ids = resolve_user(name)?;
        let _ = USER_IDS.set(ids);
    }
    if s.isolate {
        let _ = PROGRAMS.set((1, seccomp_programs(1)?));
    }
    Ok(())
}

/// Forks a worker: with pid isolation, into a PID namespace (and mount and
/// IPC namespaces) of its own. Call it single-threaded.
pub fn fork_worker(s: &Sandbox) -> io::Result<sys::Forked> {
    if s.isolates_pids() {
        os::fork_isolated()
    } else {
        sys::fork_single_threaded()
    }
}

/// In a worker right after [`fork_worker`], before any plugin code runs:
/// the per-worker layers. Its fds and process group must be set up
/// already (the `kill` rule uses the group).
pub fn enter_worker(s: &Sandbox) -> Result<(), SandboxError> {
    if s.is_none() {
        return Ok(());
    }
    if s.isolate {
        os::make_mounts_private().map_err(setup("private mounts"))?;
        os::mount_fresh_proc(false).map_err(setup("fresh /proc"))?;
        if let Some(n) = s.limits.max_procs {
            if os::per_namespace_pid_max() {
                os::set_namespace_pid_max(n.max(MIN_PROCS) + 1)
                    .map_err(setup("per-namespace pid_max"))?;
            }
        }
        // Read-only in every profile: a root task without capabilities
        // could otherwise write root-owned sysctls (core_pattern...).
        os::remount_read_only(std::path::Path::new("/proc")).map_err(setup("read-only /proc"))?;
        os::drop_bounding_capabilities().map_err(setup("drop capabilities"))?;
    }
    if let Some(n) = s.limits.max_procs {
        os::set_rlimit(os::Rlimit::Nproc, n).map_err(setup("RLIMIT_NPROC"))?;
    }
    if s.user.is_some() {
        let (uid, gid) = match USER_IDS.get() {
            Some(ids) => *ids,
            None => resolve_user(s.user.as_deref().unwrap_or_default())?,
        };
        os::switch_user(uid, gid).map_err(setup("switch to --user"))?;
    }
    if s.isolate {
        os::set_not_dumpable().map_err(setup("PR_SET_DUMPABLE"))?;
        os::clear_capabilities().map_err(setup("drop capabilities"))?;
        let pgid = os::getpgrp();
        let compiled;
        let progs = match PROGRAMS.get() {
            // Compiled once in the zygote for a worker that leads group 1
            // of its own PID namespace (every isolated worker).
            Some((g, p)) if *g == pgid => p,
            _ => {
                compiled = seccomp_programs(pgid)?;
                &compiled
            }
        };
        for prog in progs {
            os::install_seccomp(prog).map_err(setup("seccomp filter"))?;
        }
    }
    Ok(())
}

/// The filters a worker installs (on top of the zygote's
/// [`network_program`] under "no network"): everything in
/// [`BLOCKED_SYSCALLS`], `kill` aimed at a process group other than
/// `pgid` (or at every process), `clone` with namespace flags and the
/// [`BLOCKED_IOCTLS`] fail EPERM; `clone3`, whose flags a filter cannot
/// read, fails ENOSYS (libc falls back to `clone`). A call of another ABI
/// (i386's `int 0x80`, x32) fails EPERM like every refused call, never
/// kills ([`refuse_foreign_abis`], C16).
fn seccomp_programs(pgid: i32) -> Result<Vec<seccompiler::BpfProgram>, SandboxError> {
    use seccompiler::{
        SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond, SeccompRule,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for name in BLOCKED_SYSCALLS {
        if let Some(n) = syscall_number(name) {
            rules.insert(n, Vec::new());
        }
    }
    // kill(pid, sig) with pid < 0 (a process group, or -1: every process)
    // other than our own group. pid 0 is our group; a pid > 0 can only
    // name a process of the worker's own PID namespace.
    let own_group = (-(pgid as i64)) as u32 as u64;
    rules.insert(
        libc::SYS_kill,
        vec![SeccompRule::new(vec![
            Cond::new(0, Len::Dword, Op::Ge, 0x8000_0000).map_err(bad_filter)?,
            Cond::new(0, Len::Dword, Op::Ne, own_group).map_err(bad_filter)?,
        ])
        .map_err(bad_filter)?],
    );
    let mut clone_rules = Vec::new();
    for &flag in CLONE_NAMESPACE_FLAGS {
        clone_rules.push(
            SeccompRule::new(vec![
                Cond::new(0, Len::Qword, Op::MaskedEq(flag), flag).map_err(bad_filter)?
            ])
            .map_err(bad_filter)?,
        );
    }
    rules.insert(libc::SYS_clone, clone_rules);
    // The kernel reads ioctl's request as an unsigned int: comparing the
    // low 32 bits (Dword) also catches a request with junk in the high ones.
    let mut ioctl_rules = Vec::new();
    for &(_, request) in BLOCKED_IOCTLS {
        ioctl_rules.push(
            SeccompRule::new(vec![
                Cond::new(1, Len::Dword, Op::Eq, request).map_err(bad_filter)?
            ])
            .map_err(bad_filter)?,
        );
    }
    rules.insert(libc::SYS_ioctl, ioctl_rules);
    let mut clone3 = BTreeMap::new();
    clone3.insert(libc::SYS_clone3, Vec::new());
    Ok(vec![
        compile_filter(rules, libc::EPERM)?,
        compile_filter(clone3, libc::ENOSYS)?,
    ])
}

/// The filter of "no network" (C5), installed in the zygote before it
/// loads a plugin, so the plugins' load-time code and every worker have
/// it in every profile: a new socket of a family the network namespace
/// does not confine fails EPERM — AF_UNIX path sockets (a daemon's, the
/// broker's: connect() and sendto() are not writes the read-only mount
/// refuses), AF_VSOCK (the hypervisor's host in a VM), ... — and with
/// `no_namespace` (none can be had here) every new socket. socketpair()
/// stays for connected stream and seqpacket pairs (connect() and
/// sendto()'s address cannot redirect those), but a datagram pair
/// (SOCK_RAW is a datagram socket for AF_UNIX) could sendto() any path
/// socket. The pool's own sockets were made or inherited before it.
fn network_program(no_namespace: bool) -> Result<seccompiler::BpfProgram, SandboxError> {
    use seccompiler::{
        SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond, SeccompRule,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let socket_rules = if no_namespace {
        Vec::new()
    } else {
        let mut conds = Vec::new();
        for fam in NAMESPACED_FAMILIES {
            conds.push(Cond::new(0, Len::Dword, Op::Ne, fam as u64).map_err(bad_filter)?);
        }
        vec![SeccompRule::new(conds).map_err(bad_filter)?]
    };
    rules.insert(libc::SYS_socket, socket_rules);
    let mut pair_rules = Vec::new();
    for ty in [libc::SOCK_DGRAM, libc::SOCK_RAW] {
        pair_rules.push(
            SeccompRule::new(vec![Cond::new(
                1,
                Len::Dword,
                Op::MaskedEq(SOCK_TYPE_MASK),
                ty as u64,
            )
            .map_err(bad_filter)?])
            .map_err(bad_filter)?,
        );
    }
    rules.insert(libc::SYS_socketpair, pair_rules);
    compile_filter(rules, libc::EPERM)
}

fn bad_filter(e: seccompiler::BackendError) -> SandboxError {
    SandboxError::Setup {
        step: "seccomp filter",
        source: io::Error::other(e.to_string()),
    }
}

/// Compiles `rules` (each matching call fails with `errno`, everything
/// else is allowed) for this architecture, with [`refuse_foreign_abis`].
fn compile_filter(
    rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>>,
    errno: i32,
) -> Result<seccompiler::BpfProgram, SandboxError> {
    use seccompiler::{SeccompAction, SeccompFilter};
    let arch = seccompiler::TargetArch::try_from(std::env::consts::ARCH).map_err(|e| {
        SandboxError::Unavailable {
            protection: "a seccomp filter",
            reason: format!("{e}"),
        }
    })?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        arch,
    )
    .map_err(bad_filter)?;
    let mut prog: seccompiler::BpfProgram = filter.try_into().map_err(bad_filter)?;
    refuse_foreign_abis(&mut prog, arch)?;
    Ok(prog)
}

/// The socket families a network namespace confines (with "no network"
/// a new socket of any other family fails EPERM).
const NAMESPACED_FAMILIES: [libc::c_int; 3] = [libc::AF_INET, libc::AF_INET6, libc::AF_NETLINK];

/// The bits of `socket`/`socketpair`'s type that name it (the rest are
/// SOCK_NONBLOCK and SOCK_CLOEXEC).
const SOCK_TYPE_MASK: u64 = 0xf;

/// x86_64's x32 ABI: syscall numbers with this bit set.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Makes a compiled filter refuse, with EPERM, every call of another ABI
/// than the one it was built for (C16). seccompiler starts each program
/// with "if the architecture is not ours, kill the process"; a second,
/// stacked filter cannot soften that (the kernel applies the strictest
/// action), so that opening is replaced: a foreign architecture (i386's
/// `int 0x80` on x86_64, AArch32 on aarch64) gets EPERM, and on x86_64 so
/// does an x32 call, whose numbers none of the rules name (without this,
/// x32's `unshare` would pass on a kernel with x32 enabled).
fn refuse_foreign_abis(
    prog: &mut seccompiler::BpfProgram,
    arch: seccompiler::TargetArch,
) -> Result<(), SandboxError> {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    // struct seccomp_data: int nr; __u32 arch; ...
    const NR_OFFSET: u32 = 0;
    const ARCH_OFFSET: u32 = 4;
    let ins = |code: u16, jt: u8, jf: u8, k: u32| seccompiler::sock_filter { code, jt, jf, k };
    let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let audit_arch = match prog.get(1) {
        Some(i) if i.code == JEQ_K && i.jt == 1 && i.jf == 0 => i.k,
        _ => 0,
    };
    let opening = [
        ins(LD_W_ABS, 0, 0, ARCH_OFFSET),
        ins(JEQ_K, 1, 0, audit_arch),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
    ];
    if audit_arch == 0 || prog.len() < opening.len() || prog[..opening.len()] != opening {
        // A seccompiler that builds its programs differently: refuse to
        // guess rather than install a filter that kills.
        return Err(SandboxError::Setup {
            step: "seccomp filter",
            source: io::Error::other(
                "unexpected architecture check in the compiled filter (seccompiler changed?)",
            ),
        });
    }
    let mut head = vec![
        ins(LD_W_ABS, 0, 0, ARCH_OFFSET),
        ins(JEQ_K, 1, 0, audit_arch),
        ins(RET_K, 0, 0, eperm),
    ];
    if matches!(arch, seccompiler::TargetArch::x86_64) {
        head.extend([
            ins(LD_W_ABS, 0, 0, NR_OFFSET),
            ins(JGE_K, 0, 1, X32_SYSCALL_BIT),
            ins(RET_K, 0, 0, eperm),
        ]);
    }
    // Every jump of the rest is relative and stays inside the rest: the
    // rest starts by loading the syscall number itself.
    prog.splice(0..opening.len(), head);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

    /// Every program a worker installs, for every network setting.
    fn all_programs() -> Vec<seccompiler::BpfProgram> {
        let mut all = Vec::new();
        all.extend(seccomp_programs(1).expect("compiles"));
        for no_namespace in [false, true] {
            all.push(network_program(no_namespace).expect("compiles"));
        }
        all
    }

    #[test]
    fn c16_no_compiled_filter_ever_kills() {
        for prog in all_programs() {
            for i in &prog {
                if i.code == RET_K {
                    let action = i.k & libc::SECCOMP_RET_ACTION_FULL;
                    assert!(
                        action == libc::SECCOMP_RET_ALLOW || action == libc::SECCOMP_RET_ERRNO,
                        "a filter returns {:#x}",
                        i.k
                    );
                }
            }
        }
    }

    #[test]
    fn c16_a_foreign_architecture_and_x32_return_eperm_first() {
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        for prog in all_programs() {
            // arch check, then its EPERM return.
            assert_eq!(prog[0].k, 4, "loads the architecture");
            assert_eq!((prog[1].jt, prog[1].jf), (1, 0));
            assert_eq!((prog[2].code, prog[2].k), (RET_K, eperm));
            if cfg!(target_arch = "x86_64") {
                assert_eq!(prog[4].k, X32_SYSCALL_BIT);
                assert_eq!((prog[5].code, prog[5].k), (RET_K, eperm));
            }
        }
    }

    #[test]
    fn c16_an_unexpected_program_is_refused_not_installed() {
        let arch = seccompiler::TargetArch::try_from(std::env::consts::ARCH).expect("arch");
        let mut prog = network_program(false).expect("compiles");
        // Already rewritten: its opening is not seccompiler's any more.
        assert!(refuse_foreign_abis(&mut prog, arch).is_err());
    }

    #[test]
    fn c2_the_terminal_ioctls_are_listed_in_the_report() {
        let e = Sandbox::standard().check();
        if let Ok(e) = e {
            let seccomp = e
                .layers
                .iter()
                .find(|l| l.name == "seccomp")
                .expect("seccomp");
            for (name, _) in BLOCKED_IOCTLS {
                assert!(seccomp.mechanism.contains(name), "{name}");
            }
            assert!(e.layers.iter().any(|l| l.name == "terminal"));
            assert!(e.layers.iter().any(|l| l.name == "ipc"));
        }
        let none = Sandbox::none().check().expect("none");
        assert_eq!(none.layers.len(), 1);
        assert_eq!(none.layers[0].name, "terminal");
    }
}
