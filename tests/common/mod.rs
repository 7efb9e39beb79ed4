//! Shared helpers of the end-to-end tests in `tests/`.
//!
//! Most test files are modules of one of two test binaries,
//! tests/integration.rs and tests/celery.rs, and start with
//! `use crate::common;`; a file that must be alone in its process is a
//! `[[test]]` of its own in `host/Cargo.toml` and starts with `mod common;`.
//! The helpers give the paths of the built `billiard-host` binary and of
//! the plugin `.so` files; the plugins are built on first use, once per test
//! binary, with the same cargo, profile and target directory as the test
//! itself, so `cargo test --workspace` needs no separate build step.
//!
//! ```ignore
//! mod common;
//!
//! #[test]
//! fn squares() {
//!     let out = common::host(&["inspect", common::plugin_str("math").as_str()]);
//!     assert_eq!(out.status.code(), Some(0));
//! }
//! ```

// Each test binary uses its own subset of the helpers.
#![allow(dead_code)]

/// The Celery tests' helpers: a private redis-server, the Python venv,
/// a Redis client, a `billiard-host worker` child.
pub mod celery;

/// A `billiard-host run` child: start, signal, finish.
pub mod run;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The packages [`plugin`] can hand out: short name, cargo package, library
/// file name.
pub const PLUGINS: &[(&str, &str, &str)] = &[
    ("math", "billiard-plugin-math", "libbilliard_math.so"),
    ("bytes", "billiard-plugin-bytes", "libbilliard_bytes.so"),
    ("faults", "billiard-plugin-faults", "libbilliard_faults.so"),
    (
        "hostile",
        "billiard-plugin-hostile",
        "libbilliard_hostile.so",
    ),
    (
        "abi-layout-mismatch",
        "billiard-plugin-abi-layout-mismatch",
        "libbilliard_abi_layout_mismatch.so",
    ),
    (
        "abi-version-mismatch",
        "billiard-plugin-abi-version-mismatch",
        "libbilliard_abi_version_mismatch.so",
    ),
    (
        "init-panic",
        "billiard-plugin-init-panic",
        "libbilliard_init_panic.so",
    ),
    (
        "bad-ctor",
        "billiard-plugin-bad-ctor",
        "libbilliard_bad_ctor.so",
    ),
    (
        "reload-a",
        "billiard-plugin-reload-a",
        "libbilliard_reload_a.so",
    ),
    (
        "reload-b",
        "billiard-plugin-reload-b",
        "libbilliard_reload_b.so",
    ),
    ("stream", "billiard-plugin-stream", "libbilliard_stream.so"),
    ("proj", "billiard-plugin-proj", "libbilliard_proj.so"),
    (
        "bad-failure",
        "billiard-plugin-bad-failure",
        "libbilliard_bad_failure.so",
    ),
];

/// The example C plugins [`c_plugin`] can hand out (issue 27): short name,
/// the directory whose `Makefile` builds it (from the workspace root), and
/// the library file. Each directory is built once per test binary with
/// `make OUT=<artifact dir>/c-plugins` (the system `cc` / `c++`).
pub const C_PLUGINS: &[(&str, &str, &str)] = &[
    ("c-example", "plugins/c-example", "libc_example.so"),
    ("cpp-example", "plugins/cpp-example", "libcpp_example.so"),
    // Go (cgo, -buildmode=c-shared): its build cache and module path are
    // kept in the c-plugins directory (a machine without a home cache
    // builds it too, offline: the standard library only).
    ("go-example", "plugins/go-example", "libgo_example.so"),
];

/// The variants of `tests/fixtures/c-abi/hostile.c` (see its head): `c-X`
/// is `libc_X.so` (with `_` for `-`), e.g. `c-bad-name`.
pub const C_FIXTURES: &[&str] = &[
    "hostile",
    "future-version",
    "short-size",
    "prefix-only",
    "appended",
    "bad-name",
    "bad-tasks",
    "bad-arg-name",
    "huge-count",
    "dup-names",
    "null-call",
    "thread-ctor",
];

/// The path of C plugin `name` (a short name from [`C_PLUGINS`], or `c-`
/// and one of [`C_FIXTURES`]), built with `make` if needed. Panics with
/// make's output if the build fails.
pub fn c_plugin(name: &str) -> PathBuf {
    let (dir, file) = match C_PLUGINS.iter().find(|(short, _, _)| *short == name) {
        Some((_, dir, file)) => (*dir, file.to_string()),
        None => match name.strip_prefix("c-").filter(|v| C_FIXTURES.contains(v)) {
            Some(v) => (
                "tests/fixtures/c-abi",
                format!("libc_{}.so", v.replace('-', "_")),
            ),
            None => panic!("unknown C test plugin `{name}`; see common::C_PLUGINS and C_FIXTURES"),
        },
    };
    let out = artifact_dir().join("c-plugins");
    static BUILT: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.contains(&dir) {
        std::fs::create_dir_all(&out).expect("the c-plugins directory can be made");
        let mut cmd = Command::new("make");
        cmd.arg("-s")
            .arg("-C")
            .arg(workspace_root().join(dir))
            .arg(format!("OUT={}", out.display()))
            .env("GOCACHE", out.join("go-cache"))
            .env("GOPATH", out.join("go-path"));
        let done = cmd.output().unwrap_or_else(|e| {
            panic!("cannot run make ({cmd:?}): {e}; the C plugin tests need make and cc (and go for the Go example)")
        });
        assert!(
            done.status.success(),
            "building the C plugins in {dir} failed ({cmd:?}):\n{}{}",
            String::from_utf8_lossy(&done.stdout),
            String::from_utf8_lossy(&done.stderr)
        );
        built.push(dir);
    }
    let path = out.join(file);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// [`c_plugin`] as a `String`, for command lines.
pub fn c_plugin_str(name: &str) -> String {
    c_plugin(name).to_string_lossy().into_owned()
}

/// The `billiard-host` binary cargo built for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_billiard-host"))
}

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent directory")
        .to_path_buf()
}

/// The directory the artifacts of this run's profile land in
/// (`target/debug` by default). It is the directory of the binary under
/// test, which already accounts for `CARGO_TARGET_DIR`, `--target-dir`,
/// `--profile` and `--target`.
pub fn artifact_dir() -> PathBuf {
    bin()
        .parent()
        .expect("the binary lives in a directory")
        .to_path_buf()
}

/// The path of plugin `name` (a short name from [`PLUGINS`], e.g. `"math"`
/// for `target/debug/libbilliard_math.so`), built if needed.
///
/// Panics on an unknown name or if the build fails (with cargo's output).
pub fn plugin(name: &str) -> PathBuf {
    let (_, _, file) = PLUGINS
        .iter()
        .find(|(short, _, _)| *short == name)
        .unwrap_or_else(|| panic!("unknown test plugin `{name}`; see common::PLUGINS"));
    let dir = built_plugins();
    let path = dir.join(file);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// [`plugin`] as a `String`, for command lines.
pub fn plugin_str(name: &str) -> String {
    plugin(name).to_string_lossy().into_owned()
}

/// Builds every plugin of [`PLUGINS`] once per test binary; returns the
/// directory they are in.
fn built_plugins() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = artifact_dir();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(workspace_root()).arg("build");
        for (_, package, _) in PLUGINS {
            cmd.args(["-p", package]);
        }
        cmd.args(profile_args(&dir));
        // Build where the binary under test was built (this honours
        // CARGO_TARGET_DIR and --target-dir alike).
        cmd.args(target_args(&dir));
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run cargo ({cmd:?}): {e}"));
        assert!(
            out.status.success(),
            "building the test plugins failed ({cmd:?}):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// Cargo's profile flag for an artifact directory named after its profile.
fn profile_args(dir: &Path) -> Vec<String> {
    match dir.file_name().and_then(OsStr::to_str) {
        Some("debug") | None => vec![],
        Some("release") => vec!["--release".into()],
        Some(other) => vec!["--profile".into(), other.into()],
    }
}

/// `--target-dir` (and `--target`) flags that make cargo put its artifacts
/// in `dir`: `<target-dir>/<profile>` or `<target-dir>/<triple>/<profile>`.
/// A target directory is recognised by the `CACHEDIR.TAG` cargo writes in
/// it; without one, cargo's defaults apply.
fn target_args(dir: &Path) -> Vec<String> {
    let is_target_dir = |p: &Path| p.join("CACHEDIR.TAG").is_file();
    let Some(parent) = dir.parent() else {
        return vec![];
    };
    if is_target_dir(parent) {
        return vec!["--target-dir".into(), parent.to_string_lossy().into_owned()];
    }
    match (parent.parent(), parent.file_name()) {
        (Some(grandparent), Some(triple)) if is_target_dir(grandparent) => vec![
            "--target-dir".into(),
            grandparent.to_string_lossy().into_owned(),
            "--target".into(),
            triple.to_string_lossy().into_owned(),
        ],
        _ => vec![],
    }
}

/// The path of example `name` of the `billiard-host` package (in
/// `<artifact dir>/examples/`), built with this run's profile and target
/// directory (incremental: cheap when it is up to date).
pub fn example(name: &str) -> PathBuf {
    let dir = artifact_dir();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(workspace_root())
        .args(["build", "-p", "billiard-host", "--example", name]);
    cmd.args(profile_args(&dir));
    cmd.args(target_args(&dir));
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo ({cmd:?}): {e}"));
    assert!(
        out.status.success(),
        "building example {name} failed ({cmd:?}):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join("examples").join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// A command that runs `billiard-host` (add arguments, environment, stdin
/// as needed). `RUST_LOG` is removed so that a developer's setting does not
/// add log lines to the stderr the tests look at.
pub fn host_command() -> Command {
    let mut cmd = Command::new(bin());
    cmd.env_remove("RUST_LOG");
    cmd
}

/// Runs `billiard-host` with `args` and returns its output (never panics on
/// a non-zero exit; check `status` yourself).
pub fn host<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    host_command()
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin().display()))
}

/// The exit code of a finished command, or a panic naming the signal that
/// killed it.
pub fn exit_code(out: &Output) -> i32 {
    match out.status.code() {
        Some(code) => code,
        None => panic!(
            "the command was killed by a signal: {:?}\nstderr:\n{}",
            out.status,
            stderr(out)
        ),
    }
}

/// Standard output as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A shared library of the system that is not a billiard plugin (libm), found
/// through `ldconfig -p`, then at the usual paths; `None` when there is none.
pub fn system_library() -> Option<PathBuf> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => Some("x86-64"),
        "aarch64" => Some("AArch64"),
        _ => None,
    };
    for ldconfig in ["ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"] {
        let Ok(out) = Command::new(ldconfig).arg("-p").output() else {
            continue;
        };
        // Lines look like: `libm.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libm.so.6`
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let line = line.trim();
            if !line.starts_with("libm.so.6 ") {
                continue;
            }
            if arch.is_some_and(|a| !line.contains(a)) {
                continue;
            }
            if let Some((_, path)) = line.rsplit_once(" => ") {
                let path = PathBuf::from(path.trim());
                if path.is_file() {
                    return Some(path);
                }
            }
        }
    }
    [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib/aarch64-linux-gnu/libm.so.6",
        "/usr/lib/aarch64-linux-gnu/libm.so.6",
        "/usr/lib64/libm.so.6",
        "/lib64/libm.so.6",
        "/usr/lib/libm.so.6",
        "/lib/libm.so.6",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

// ----- processes, fds and memory (the reliability suite) ------------------

/// What `/proc/PID/stat` says about a process: its state letter (`R`, `S`,
/// `Z`...), parent and process group; `None` once it is gone.
pub fn proc_stat(pid: i32) -> Option<(char, i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may contain spaces and parens.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// Every process on the machine as `(pid, state, ppid, pgrp)`.
pub fn all_processes() -> Vec<(i32, char, i32, i32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| proc_stat(pid).map(|(s, pp, pg)| (pid, s, pp, pg)))
        .collect()
}

/// Pids of the processes (zombies included) whose parent is `ppid`.
pub fn children_of(ppid: i32) -> Vec<i32> {
    all_processes()
        .into_iter()
        .filter(|p| p.2 == ppid)
        .map(|p| p.0)
        .collect()
}

/// `pid` and every process below it (children, grandchildren...).
pub fn process_tree(pid: i32) -> Vec<i32> {
    let procs = all_processes();
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(procs.iter().filter(|p| p.2 == parent).map(|p| p.0));
        i += 1;
    }
    out
}

/// Live (non-zombie) members of process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    all_processes()
        .into_iter()
        .filter(|p| p.3 == pgid && p.1 != 'Z')
        .map(|p| p.0)
        .collect()
}

/// True while `pid` exists and is not a zombie.
pub fn running(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|(state, ..)| state != 'Z')
}

/// Polls `cond` until it holds or `limit` passes; true if it held. For
/// waiting on an effect in another process (a death, a reparenting), which
/// no channel of ours reports.
pub fn eventually(limit: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Open file descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident memory of this process, KiB (`VmRSS`).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The executable a process runs (`/proc/PID/exe`), if readable.
pub fn exe_of(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// A fresh, empty scratch directory for one test:
/// `$CARGO_TARGET_TMPDIR/<test binary>/<test file>/<test>` (the file of the
/// caller, so that two files of one binary never share a directory).
#[track_caller]
pub fn scratch(test: &str) -> PathBuf {
    let file = Path::new(std::panic::Location::caller().file())
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(env!("CARGO_CRATE_NAME"))
        .join(file)
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `bytes` to `dir/name`; returns the path as a string for a
/// command line.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_string_lossy().into_owned()
}

/// Writes `lines` (one job or case each, newline-terminated) to `dir/name`.
pub fn lines_file(dir: &Path, name: &str, lines: &[&str]) -> String {
    write_file(dir, name, (lines.join("\n") + "\n").as_bytes())
}

/// Result lines of `run`, parsed; every line must be JSON.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:.200}")))
        .collect()
}

/// A pool builder of `workers` workers over the named plugins (as
/// [`plugin`] knows them), with the built `billiard-host` as its worker
/// executable.
pub fn pool_builder(workers: usize, plugins: &[&str]) -> billiard_host::PoolBuilder {
    plugins.iter().fold(
        billiard_host::Pool::builder()
            .workers(workers)
            .worker_exe(bin()),
        |b, p| b.plugin(plugin(p)),
    )
}

/// The error kind of a result line (`"ok"` for a success).
pub fn kind(r: &serde_json::Value) -> &str {
    r["error"]["kind"].as_str().unwrap_or("ok")
}

/// FNV-1a, 64 bits: the checksum the `bytes` and `hostile` plugins return
/// for a payload.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `GET path` over HTTP/1.1 to `addr` (`host:port`) with `Connection:
/// close`: Err if the connection or the request fails, else the response
/// as text (status line, headers, body) as far as it arrived, and the
/// error that ended the read early, if one did.
pub fn http_get(
    addr: &str,
    path: &str,
    read_timeout: std::time::Duration,
) -> std::io::Result<(String, Option<std::io::Error>)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(read_timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    let err = s.read_to_end(&mut buf).err();
    Ok((String::from_utf8_lossy(&buf).into_owned(), err))
}

/// Result lines keyed by their `index`; asserts each line has one and no
/// index appears twice.
pub fn by_index(
    results: &[serde_json::Value],
) -> std::collections::BTreeMap<u64, serde_json::Value> {
    let mut map = std::collections::BTreeMap::new();
    for r in results {
        let i = r["index"]
            .as_u64()
            .unwrap_or_else(|| panic!("no index: {r}"));
        assert!(map.insert(i, r.clone()).is_none(), "index {i} twice");
    }
    map
}

/// True while `pid` exists, zombie or not.
pub fn exists(pid: i32) -> bool {
    proc_stat(pid).is_some()
}
