//! The OS calls of the worker sandbox (see `crate::sandbox` for the
//! policy): namespaces, mounts, rlimits, prctl flags, identity changes,
//! capabilities, the seccomp filter's installation, and the probes that
//! tell what this kernel can enforce.
//!
//! Everything here runs in a single-threaded process (the zygote, or a
//! worker right after it was forked) except the probes, which fork a
//! child that makes only raw system calls before `_exit`.

use std::ffi::CString;
use std::io;
use std::path::Path;

use super::cvt;

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`: no exec can grant privileges again
/// (setuid bits, file capabilities); required for an unprivileged seccomp
/// filter and kept by every child.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    Ok(())
}

/// `prctl(PR_SET_DUMPABLE, 0)`: no core dump, `/proc/<pid>` owned by root
/// and closed to `ptrace`/`/proc/<pid>/mem` of processes without
/// CAP_SYS_PTRACE, even of the same uid.
pub fn set_not_dumpable() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    cvt(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) })?;
    Ok(())
}

/// The resource limits the sandbox sets.
#[derive(Debug, Clone, Copy)]
pub enum Rlimit {
    Nproc,
    Nofile,
    Fsize,
    Core,
}

impl Rlimit {
    fn resource(self) -> libc::__rlimit_resource_t {
        match self {
            Rlimit::Nproc => libc::RLIMIT_NPROC,
            Rlimit::Nofile => libc::RLIMIT_NOFILE,
            Rlimit::Fsize => libc::RLIMIT_FSIZE,
            Rlimit::Core => libc::RLIMIT_CORE,
        }
    }
}

/// Sets soft and hard limit of `which` to `value` (never above the
/// current hard limit: lowering needs no privilege).
pub fn set_rlimit(which: Rlimit, value: u64) -> io::Result<()> {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a valid struct.
    unsafe {
        cvt(libc::getrlimit(which.resource(), &mut cur))?;
        let v = value.min(cur.rlim_max);
        let lim = libc::rlimit {
            rlim_cur: v,
            rlim_max: v,
        };
        cvt(libc::setrlimit(which.resource(), &lim))?;
    }
    Ok(())
}

/// `unshare(CLONE_NEWNET)`: a fresh network namespace (only a loopback
/// interface, down): no socket can reach any other host or any listener
/// of the host's namespace, 127.0.0.1 included.
pub fn unshare_network() -> io::Result<()> {
    // SAFETY: unshare with flags only.
    cvt(unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
    Ok(())
}

/// `unshare(CLONE_NEWIPC)`: a fresh IPC namespace (SysV shared memory,
/// message queues and semaphores, POSIX message queues): the host's are
/// invisible, and whatever is made in it dies with its last process.
pub fn unshare_ipc() -> io::Result<()> {
    // SAFETY: unshare with flags only.
    cvt(unsafe { libc::unshare(libc::CLONE_NEWIPC) })?;
    Ok(())
}

/// `unshare(CLONE_NEWNS)` and every mount made private, so nothing done in
/// this mount namespace propagates back to the host's.
pub fn unshare_mounts() -> io::Result<()> {
    // SAFETY: unshare with flags only.
    cvt(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
    make_mounts_private()
}

/// Makes every mount of this mount namespace private (recursively): no
/// mount or unmount here propagates to a peer in another namespace.
pub fn make_mounts_private() -> io::Result<()> {
    // SAFETY: mount with a static C string and no data.
    cvt(unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })?;
    Ok(())
}

/// Makes the mount at `path` (and those below it) read-only.
pub fn remount_read_only(path: &Path) -> io::Result<()> {
    mount_setattr(path, MOUNT_ATTR_RDONLY, 0)
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const AT_RECURSIVE: libc::c_int = 0x8000;

fn mount_setattr(path: &Path, set: u64, clr: u64) -> io::Result<()> {
    let c = cpath(path)?;
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clr,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads a valid, correctly sized struct and a
    // NUL-terminated path.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    } as libc::c_int)?;
    Ok(())
}

fn cpath(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// In a private mount namespace: every mount read-only (recursively, with
/// `mount_setattr`), then each of `writable` bind-mounted onto itself and
/// made writable again. Device nodes (/dev/null) stay usable.
pub fn read_only_except(writable: &[std::path::PathBuf]) -> io::Result<()> {
    for dir in writable {
        let c = cpath(dir)?;
        // SAFETY: mount with a NUL-terminated path; a bind mount of a
        // directory onto itself.
        cvt(unsafe {
            libc::mount(
                c.as_ptr(),
                c.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )
        })
        .map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", dir.display())))?;
    }
    mount_setattr(Path::new("/"), MOUNT_ATTR_RDONLY, 0)
        .map_err(|e| io::Error::new(e.kind(), format!("mount_setattr(/, read-only): {e}")))?;
    for dir in writable {
        mount_setattr(dir, 0, MOUNT_ATTR_RDONLY).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("mount_setattr({}, writable): {e}", dir.display()),
            )
        })?;
    }
    Ok(())
}

/// Mounts a fresh procfs on /proc (in a worker that is the first process
/// of its own PID and mount namespaces): it shows only that namespace's
/// processes, so no other worker, the zygote or the host can be named
/// through it.
pub fn mount_fresh_proc(read_only: bool) -> io::Result<()> {
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    // SAFETY: mount with static NUL-terminated strings.
    cvt(unsafe {
        libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            flags,
            std::ptr::null(),
        )
    })
    .map_err(|e| io::Error::new(e.kind(), format!("mount proc on /proc: {e}")))?;
    Ok(())
}

/// Sets the `pid_max` of this process's PID namespace (Linux 6.14+: it is
/// per namespace), which caps how many processes the namespace can hold —
/// the fork-bomb limit that also binds root, whom RLIMIT_NPROC does not.
/// Only call this where [`per_namespace_pid_max`] said yes: on older
/// kernels the file is machine-wide.
pub fn set_namespace_pid_max(max: u64) -> io::Result<()> {
    std::fs::write("/proc/sys/kernel/pid_max", format!("{max}\n"))
        .map_err(|e| io::Error::new(e.kind(), format!("write /proc/sys/kernel/pid_max: {e}")))
}

/// The kernel release, e.g. (6, 18).
pub fn kernel_version() -> Option<(u32, u32)> {
    // SAFETY: uname writes into a valid, zeroed struct.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    // SAFETY: uname NUL-terminates release.
    let rel = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let mut it = rel.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether `/proc/sys/kernel/pid_max` is per PID namespace (Linux 6.14+).
pub fn per_namespace_pid_max() -> bool {
    kernel_version().is_some_and(|v| v >= (6, 14))
}

/// Switches to `uid`/`gid` for good (real, effective and saved ids, with
/// no supplementary groups). Capabilities are lost with uid 0.
pub fn switch_user(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: setgroups with an empty list, setresgid/setresuid with ids.
    unsafe {
        cvt(libc::setgroups(0, std::ptr::null()))?;
        cvt(libc::setresgid(gid, gid, gid))?;
        cvt(libc::setresuid(uid, uid, uid))?;
    }
    Ok(())
}

/// Looks up `name` in the user database: (uid, primary gid). `None` when
/// there is no such user.
pub fn lookup_user(name: &str) -> io::Result<Option<(u32, u32)>> {
    let c = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "user name contains NUL"))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: getpwnam_r fills `pwd` with pointers into `buf`, both valid
    // for the call; `result` says whether an entry was found.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            c.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Ok(None);
        }
        Ok(Some((pwd.pw_uid, pwd.pw_gid)))
    }
}

/// The real uid of this process.
pub fn uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

fn caps_err(what: &'static str) -> impl Fn(caps::errors::CapsError) -> io::Error {
    move |e| io::Error::other(format!("{what}: {e}"))
}

/// Empties the bounding and ambient capability sets (while CAP_SETPCAP
/// is still held), so that no exec can bring a capability back; the
/// permitted and effective sets stay for the steps that still need them
/// (switching the user). Then [`clear_capabilities`].
pub fn drop_bounding_capabilities() -> io::Result<()> {
    use caps::CapSet;
    if caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in caps::all() {
            // A capability the running kernel does not know fails: fine.
            let _ = caps::drop(None, CapSet::Bounding, cap);
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(caps_err("clear the ambient capabilities"))?;
    Ok(())
}

/// Empties the inheritable, permitted and effective capability sets.
pub fn clear_capabilities() -> io::Result<()> {
    use caps::CapSet;
    caps::clear(None, CapSet::Inheritable)
        .map_err(caps_err("clear the inheritable capabilities"))?;
    caps::clear(None, CapSet::Effective).map_err(caps_err("clear the effective capabilities"))?;
    caps::clear(None, CapSet::Permitted).map_err(caps_err("clear the permitted capabilities"))?;
    Ok(())
}

/// Installs a compiled seccomp filter on the calling thread (the worker
/// is single-threaded here). Sets no_new_privs first.
pub fn install_seccomp(prog: &seccompiler::BpfProgram) -> io::Result<()> {
    seccompiler::apply_filter(prog).map_err(|e| io::Error::other(format!("seccomp: {e}")))
}

/// The process group of the caller.
pub fn getpgrp() -> i32 {
    // SAFETY: getpgrp has no preconditions.
    unsafe { libc::getpgrp() }
}

/// Clears the environment of this (single-threaded) process but for `keep`.
pub fn scrub_environment(keep: &[String]) {
    let names: Vec<std::ffi::OsString> = std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| !keep.iter().any(|n| std::ffi::OsStr::new(n) == k))
        .collect();
    for k in names {
        std::env::remove_var(k);
    }
}

/// Forks into new PID, mount and IPC namespaces: the child is process 1 of
/// its own PID namespace (it sees no other process of the machine, and
/// everything it starts dies with it) with its own copy of the mount
/// table (for its own /proc) and its own SysV IPC objects and POSIX
/// message queues (none of the host's or another worker's; all of its own
/// freed when it and its descendants are gone). The caller must be
/// single-threaded, like [`super::fork_single_threaded`], whose checks
/// this shares.
///
/// This is `clone(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | SIGCHLD)` with the same
/// TID bookkeeping glibc's fork does (CLONE_CHILD_SETTID/CLEARTID on the
/// thread's TID word, found with PR_GET_TID_ADDRESS), so `raise` and
/// `pthread_self` stay right in the child.
pub fn fork_isolated() -> io::Result<super::Forked> {
    if super::thread_count()? > 1 {
        return Err(io::Error::other("refusing to fork a multithreaded process"));
    }
    let mut tid_addr: *mut libc::c_int = std::ptr::null_mut();
    // SAFETY: PR_GET_TID_ADDRESS writes one pointer into `tid_addr`.
    let have_tid =
        unsafe { libc::prctl(libc::PR_GET_TID_ADDRESS, &mut tid_addr as *mut _, 0, 0, 0) } == 0
            && !tid_addr.is_null();
    let mut flags = (libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::SIGCHLD)
        as libc::c_ulong;
    if have_tid {
        flags |= (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID) as libc::c_ulong;
    }
    // SAFETY: a clone without CLONE_VM and with a null stack behaves like
    // fork (the child continues here on a copy of our stack); the process
    // is single-threaded (checked above), so the child inherits no lock
    // held by another thread. The TID word, when known, is the calling
    // thread's own (the kernel writes the child's TID there in the child).
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            if have_tid {
                tid_addr
            } else {
                std::ptr::null_mut()
            },
            0usize,
        )
    };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(super::Forked::Child),
        pid => Ok(super::Forked::Parent { child: pid as i32 }),
    }
}

/// What a probe child found: which step failed, with its errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeStep {
    NetworkNamespace,
    MountNamespace,
    PidNamespace,
    ReadOnlyRemount,
    IpcNamespace,
}

/// Tries, in a throw-away child, to make the namespaces and the read-only
/// remount the sandbox uses: `Ok` when all of `steps` worked. Safe in a
/// multithreaded process: between fork and `_exit` the child makes raw
/// system calls only.
pub fn probe(steps: &[ProbeStep]) -> Result<(), (ProbeStep, io::Error)> {
    // The child's exit code carries the failed step's index in 2 bits.
    if let Some(&extra) = steps.get(4) {
        return Err((
            extra,
            io::Error::new(io::ErrorKind::InvalidInput, "at most 4 probe steps at once"),
        ));
    }
    let mut codes = [0u8; 4];
    for (i, s) in steps.iter().enumerate() {
        codes[i] = match s {
            ProbeStep::NetworkNamespace => 1,
            ProbeStep::MountNamespace => 2,
            ProbeStep::PidNamespace => 3,
            ProbeStep::ReadOnlyRemount => 4,
            ProbeStep::IpcNamespace => 5,
        };
    }
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: fork; the child calls only unshare, mount, syscall and
    // _exit (async-signal-safe, no allocation) on data prepared before.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = io::Error::last_os_error();
        return Err((steps.first().copied().unwrap_or(ProbeStep::PidNamespace), e));
    }
    if pid == 0 {
        // SAFETY: as above.
        unsafe {
            for (i, &c) in codes.iter().enumerate() {
                let rc = match c {
                    1 => libc::unshare(libc::CLONE_NEWNET),
                    2 => {
                        let r = libc::unshare(libc::CLONE_NEWNS);
                        if r == 0 {
                            libc::mount(
                                std::ptr::null(),
                                c"/".as_ptr(),
                                std::ptr::null(),
                                libc::MS_REC | libc::MS_PRIVATE,
                                std::ptr::null(),
                            )
                        } else {
                            r
                        }
                    }
                    3 => libc::unshare(libc::CLONE_NEWPID),
                    5 => libc::unshare(libc::CLONE_NEWIPC),
                    4 => libc::syscall(
                        libc::SYS_mount_setattr,
                        libc::AT_FDCWD,
                        c"/".as_ptr(),
                        AT_RECURSIVE as libc::c_uint,
                        &attr as *const MountAttr,
                        std::mem::size_of::<MountAttr>(),
                    ) as libc::c_int,
                    _ => 0,
                };
                if rc != 0 {
                    let errno = *libc::__errno_location();
                    libc::_exit(((i as i32) << 6 | (errno & 0x3f)) & 0xff);
                }
            }
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe {
        while libc::waitpid(pid, &mut status, 0) < 0 && *libc::__errno_location() == libc::EINTR {}
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        return Ok(());
    }
    let code = libc::WEXITSTATUS(status);
    let step = steps
        .get((code >> 6) as usize)
        .copied()
        .unwrap_or(ProbeStep::PidNamespace);
    Err((step, io::Error::from_raw_os_error(code & 0x3f)))
}

/// The Landlock ABI version this kernel offers (`landlock_create_ruleset`
/// with LANDLOCK_CREATE_RULESET_VERSION), or the reason there is none
/// (ENOSYS: not built in; EOPNOTSUPP: built in but not enabled at boot).
pub fn landlock_abi() -> Result<u32, io::Error> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: the version query takes no ruleset (null, size 0).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as u32)
    }
}

/// Whether this kernel has seccomp filters (`PR_GET_SECCOMP` answers).
pub fn seccomp_available() -> bool {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) >= 0 }
}

/// Replaces /dev, in this private mount namespace, with a small tmpfs
/// that holds only `null`, `zero`, `full`, `random` and `urandom` (bind
/// mounts of the real nodes), the `fd`/`stdin`/`stdout`/`stderr` links
/// and an empty `shm`: a root task without capabilities can no longer
/// open the machine's disks, loop devices or /dev/kmsg, which file modes
/// alone would allow it (and a read-only mount does not stop device
/// writes). No terminal either: no `tty`, `console`, `ptmx` or `pts` (C2:
/// `/dev/tty` was the operator's terminal).
pub fn minimal_dev(read_only: bool) -> io::Result<()> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    let mut nodes = Vec::new();
    for name in ["null", "zero", "full", "random", "urandom"] {
        let path = format!("/dev/{name}");
        if !Path::new(&path).exists() {
            continue;
        }
        let c = cpath(Path::new(&path))?;
        // SAFETY: open_tree with a NUL-terminated path returns a new fd
        // (a detached copy of the mount of that node) or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                c.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("open_tree({path}): {e}")));
        }
        // SAFETY: the fd was just returned to us and is owned by nobody else.
        let fd =
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
        nodes.push((name, fd));
    }
    // SAFETY: mount with NUL-terminated strings.
    cvt(unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            c"/dev".as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            c"mode=0755,size=65536".as_ptr().cast(),
        )
    })
    .map_err(|e| io::Error::new(e.kind(), format!("mount tmpfs on /dev: {e}")))?;
    for (name, fd) in &nodes {
        let path = format!("/dev/{name}");
        std::fs::File::create(&path)?;
        let c = cpath(Path::new(&path))?;
        use std::os::fd::AsRawFd;
        // SAFETY: move_mount of a detached mount fd onto a NUL-terminated
        // path; the empty source path means "the fd itself".
        cvt(unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                fd.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                c.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        } as libc::c_int)
        .map_err(|e| io::Error::new(e.kind(), format!("move_mount onto {path}: {e}")))?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, format!("/dev/{link}"))?;
    }
    std::fs::create_dir("/dev/shm")?;
    if read_only {
        mount_setattr(Path::new("/dev"), MOUNT_ATTR_RDONLY, 0)
            .map_err(|e| io::Error::new(e.kind(), format!("read-only /dev: {e}")))?;
    }
    Ok(())
}
