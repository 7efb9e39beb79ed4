//! Building things with cargo from inside a test: the plugin's `cdylib`
//! and, when needed, the `billiard-host` executable the pool starts as its
//! zygote. Every build runs at most once per test process (per crate): the
//! results are cached in a process-wide map of `OnceLock`s, so tests that
//! run in parallel wait for one build instead of starting their own.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use serde::Deserialize;

/// The executable name of the host.
const HOST_EXE: &str = "billiard-host";
/// The cargo package that builds it.
const HOST_PACKAGE: &str = "billiard-host";

/// Runs `f` once per `key` in this process; later callers (and callers
/// racing the first one) get the first result.
pub(crate) fn once<T: Clone + Send + Sync + 'static>(key: String, f: impl FnOnce() -> T) -> T {
    type Cells = Mutex<HashMap<String, Arc<dyn std::any::Any + Send + Sync>>>;
    static CELLS: OnceLock<Cells> = OnceLock::new();
    let cell = {
        let mut cells = CELLS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        cells
            .entry(key)
            .or_insert_with(|| Arc::new(OnceLock::<T>::new()))
            .clone()
    };
    let cell = cell
        .downcast_ref::<OnceLock<T>>()
        .expect("one value type per cache key");
    cell.get_or_init(f).clone()
}

/// The cargo that runs this test (`$CARGO`, set by `cargo test`), else
/// `cargo` on `PATH`.
fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// What `cargo metadata --no-deps` says about a workspace.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Metadata {
    pub packages: Vec<Package>,
    pub workspace_root: PathBuf,
    pub target_directory: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Package {
    pub name: String,
    pub manifest_path: PathBuf,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Target {
    pub name: String,
    pub kind: Vec<String>,
}

/// `cargo metadata --format-version 1 --no-deps` for the crate (or
/// workspace) whose manifest is `manifest`, once per process.
pub(crate) fn metadata(manifest: &Path) -> Result<Metadata, String> {
    once(format!("metadata:{}", manifest.display()), || {
        let mut cmd = Command::new(cargo());
        cmd.args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(manifest);
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run cargo ({cmd:?}): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`cargo metadata` failed for {}:\n{}",
                manifest.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("cannot read the output of `cargo metadata`: {e}"))
    })
}

/// The target directory builds go to: `$CARGO_TARGET_DIR` when set, else
/// what `cargo metadata` says (which also honours `build.target-dir` in a
/// cargo config).
fn target_dir(meta: &Metadata) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            std::path::absolute(&dir).unwrap_or_else(|_| PathBuf::from(dir))
        }
        _ => meta.target_directory.clone(),
    }
}

/// Where this test binary was built: its profile and target triple, read
/// from its path (`<target-dir>/[<triple>/]<profile>/deps/<test>-<hash>`),
/// so that what the harness builds matches the test (`cargo test
/// --release` builds a release plugin).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Layout {
    /// The profile directory's name (`debug`, `release`, a custom profile).
    pub profile_dir: Option<String>,
    pub triple: Option<String>,
}

impl Layout {
    pub fn of_current_exe() -> Layout {
        std::env::current_exe()
            .map(|exe| Layout::of_exe(&exe))
            .unwrap_or_default()
    }

    pub fn of_exe(exe: &Path) -> Layout {
        let is_target_dir = |p: &Path| p.join("CACHEDIR.TAG").is_file();
        let Some(mut dir) = exe.parent() else {
            return Layout::default();
        };
        if dir
            .file_name()
            .is_some_and(|n| n == "deps" || n == "examples")
        {
            match dir.parent() {
                Some(d) => dir = d,
                None => return Layout::default(),
            }
        }
        let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
        let Some(parent) = dir.parent() else {
            return Layout::default();
        };
        if is_target_dir(parent) {
            return Layout {
                profile_dir: name(dir),
                triple: None,
            };
        }
        match parent.parent() {
            Some(grandparent) if is_target_dir(grandparent) => Layout {
                profile_dir: name(dir),
                triple: name(parent),
            },
            // Not a cargo build directory: cargo's defaults.
            _ => Layout::default(),
        }
    }

    /// The cargo flags that select this profile and target.
    pub fn cargo_args(&self) -> Vec<String> {
        let mut args = match self.profile_dir.as_deref() {
            None | Some("debug") => vec![],
            Some("release") => vec!["--release".into()],
            Some(other) => vec!["--profile".into(), other.into()],
        };
        if let Some(t) = &self.triple {
            args.push("--target".into());
            args.push(t.clone());
        }
        args
    }

    /// `<target-dir>/[<triple>/]<profile>`
    pub fn artifact_dir(&self, target_dir: &Path) -> PathBuf {
        let mut dir = target_dir.to_path_buf();
        if let Some(t) = &self.triple {
            dir.push(t);
        }
        dir.push(self.profile_dir.as_deref().unwrap_or("debug"));
        dir
    }
}

/// One `compiler-artifact` message of `cargo build --message-format=json`.
#[derive(Deserialize)]
struct Artifact {
    reason: String,
    #[serde(default)]
    manifest_path: Option<PathBuf>,
    #[serde(default)]
    target: Option<Target>,
    #[serde(default)]
    filenames: Vec<PathBuf>,
    #[serde(default)]
    executable: Option<PathBuf>,
}

/// Runs `cargo build` with `args` and returns its artifact messages.
fn cargo_build(args: &[OsString]) -> Result<Vec<Artifact>, String> {
    let mut cmd = Command::new(cargo());
    cmd.arg("build")
        .arg("--message-format=json-render-diagnostics")
        .args(args);
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run cargo ({cmd:?}): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the build failed ({cmd:?}):\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Artifact>(l).ok())
        .filter(|a| a.reason == "compiler-artifact")
        .collect())
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// Builds the `cdylib` of package `package` whose directory is
/// `manifest_dir`, with this test's profile, into the target directory;
/// returns the path of the `.so`. Once per process and crate.
pub(crate) fn build_plugin(manifest_dir: &Path, package: &str) -> Result<PathBuf, String> {
    let manifest = manifest_dir.join("Cargo.toml");
    once(format!("plugin:{}:{package}", manifest.display()), || {
        let meta = metadata(&manifest)?;
        let pkg = meta
            .packages
            .iter()
            .find(|p| p.name == package && same_file(&p.manifest_path, &manifest))
            .or_else(|| meta.packages.iter().find(|p| p.name == package))
            .ok_or_else(|| format!("no package `{package}` in {}", manifest.display()))?;
        let lib = pkg
            .targets
            .iter()
            .find(|t| t.kind.iter().any(|k| k == "cdylib"))
            .ok_or_else(|| {
                format!(
                    "package `{package}` builds no cdylib: a plugin needs `[lib] crate-type = [\"cdylib\"]` in {}",
                    manifest.display()
                )
            })?;
        let layout = Layout::of_current_exe();
        let target = target_dir(&meta);
        let mut args: Vec<OsString> = vec![
            "--manifest-path".into(),
            manifest.clone().into(),
            "-p".into(),
            package.into(),
            "--lib".into(),
            "--target-dir".into(),
            target.clone().into(),
        ];
        args.extend(layout.cargo_args().into_iter().map(OsString::from));
        let artifacts =
            cargo_build(&args).map_err(|e| format!("cannot build plugin `{package}`: {e}"))?;
        let suffix = std::env::consts::DLL_SUFFIX;
        let built = artifacts
            .iter()
            .filter(|a| {
                a.manifest_path
                    .as_deref()
                    .is_some_and(|m| same_file(m, &manifest))
            })
            .filter(|a| {
                a.target
                    .as_ref()
                    .is_some_and(|t| t.kind.iter().any(|k| k == "cdylib"))
            })
            .flat_map(|a| a.filenames.iter())
            .find(|f| f.to_string_lossy().ends_with(suffix))
            .cloned();
        let path = built.unwrap_or_else(|| {
            let file = format!(
                "{}{}{suffix}",
                std::env::consts::DLL_PREFIX,
                lib.name.replace('-', "_")
            );
            layout.artifact_dir(&target).join(file)
        });
        if !path.is_file() {
            return Err(format!(
                "cargo built plugin `{package}`, but {} is not there",
                path.display()
            ));
        }
        Ok(path)
    })
}

/// Builds `billiard-host` in the workspace of `manifest` if that workspace
/// has the `billiard-host` package; `Ok(None)` if it has not.
fn build_host_in(manifest: &Path) -> Result<Option<PathBuf>, String> {
    let meta = metadata(manifest)?;
    let Some(host) = meta.packages.iter().find(|p| p.name == HOST_PACKAGE) else {
        return Ok(None);
    };
    let host_manifest = host.manifest_path.clone();
    once(format!("host:{}", meta.workspace_root.display()), || {
        let layout = Layout::of_current_exe();
        let target = target_dir(&meta);
        let mut args: Vec<OsString> = vec![
            "--manifest-path".into(),
            host_manifest.clone().into(),
            "-p".into(),
            HOST_PACKAGE.into(),
            "--bin".into(),
            HOST_EXE.into(),
            "--target-dir".into(),
            target.clone().into(),
        ];
        args.extend(layout.cargo_args().into_iter().map(OsString::from));
        // Straight to stderr, past the test harness's output capture: a
        // first build takes a minute or more, which must not look like a
        // hung test. Once per `cargo test` (its first test process builds;
        // the others find the build done), not once per test binary.
        let announce = first_in_this_cargo_run(&target);
        if announce {
            say(&format!(
                "billiard-testing: building {HOST_EXE} (the pool's zygote) with cargo in {}, \
                 once per `cargo test`; a first build takes a minute or two \
                 (BILLIARD_HOST_EXE=PATH uses a built one)",
                meta.workspace_root.display()
            ));
        }
        let started = std::time::Instant::now();
        let artifacts = cargo_build(&args).map_err(|e| format!("cannot build {HOST_EXE}: {e}"))?;
        let exe = artifacts
            .iter()
            .filter_map(|a| a.executable.clone())
            .find(|e| e.file_name().is_some_and(|n| n == HOST_EXE))
            .unwrap_or_else(|| layout.artifact_dir(&target).join(HOST_EXE));
        if exe.is_file() {
            if announce {
                say(&format!(
                    "billiard-testing: {HOST_EXE} ready in {:.1}s: {}",
                    started.elapsed().as_secs_f64(),
                    exe.display()
                ));
            }
            Ok(Some(exe))
        } else {
            Err(format!(
                "cargo built {HOST_EXE}, but {} is not there",
                exe.display()
            ))
        }
    })
}

/// Whether this test process is the first of its `cargo test` run to
/// build the host, so the only one to say so. The test binaries of one
/// run are children of one cargo process: the first to create the marker
/// `<target>/billiard-testing/announced-<cargo pid>-<its start time>`
/// (the start time tells a reused pid apart) is the first; markers of
/// runs that are over are removed. Run by hand (no `$CARGO`), or with a
/// target directory that cannot be written, every process says it.
fn first_in_this_cargo_run(target: &Path) -> bool {
    if std::env::var_os("CARGO").is_none() {
        return true;
    }
    let parent = std::os::unix::process::parent_id();
    let Some(started) = process_start_time(parent) else {
        return true;
    };
    let dir = target.join("billiard-testing");
    if std::fs::create_dir_all(&dir).is_err() {
        return true;
    }
    let marker = format!("announced-{parent}-{started}");
    // Markers of cargo runs that have ended (their process is gone, or is
    // another one now).
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("announced-")) else {
                continue;
            };
            let live = rest.split_once('-').is_some_and(|(pid, start)| {
                pid.parse()
                    .ok()
                    .and_then(process_start_time)
                    .is_some_and(|s| s.to_string() == start)
            });
            if !live {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(marker))
    {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::AlreadyExists,
    }
}

/// A process's start time (field 22 of `/proc/PID/stat`, clock ticks
/// since boot), `None` if it is gone.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let (_, after) = stat.rsplit_once(')')?;
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Writes a line to the process's stderr directly: `eprintln!` in a test
/// is captured (shown only if the test fails), `std::io::stderr()` is not.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Finds (or builds) the `billiard-host` executable a pool starts as its
/// zygote. In order:
///
/// 1. `$BILLIARD_HOST_EXE`;
/// 2. built with `cargo build -p billiard-host` in the plugin's workspace,
///    when that workspace has the `billiard-host` package (a plugin inside
///    this repository), or else in the workspace this harness crate comes
///    from (a plugin elsewhere that depends on `billiard-testing` by path);
/// 3. `billiard-host` on `PATH` (e.g. after `cargo install --path host`).
pub(crate) fn worker_exe(plugin_manifest_dir: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("BILLIARD_HOST_EXE").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "BILLIARD_HOST_EXE is {}, which is not a file",
                p.display()
            ))
        };
    }
    let mut workspaces = Vec::new();
    if let Some(dir) = plugin_manifest_dir {
        workspaces.push(dir.join("Cargo.toml"));
    }
    // This crate's own workspace, when it is a source checkout of
    // billiard-host (not a registry copy).
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(root) = here.parent() {
        if root.join("host").join("Cargo.toml").is_file() {
            workspaces.push(here.join("Cargo.toml"));
        }
    }
    let mut tried = Vec::new();
    for manifest in workspaces {
        match build_host_in(&manifest) {
            Ok(Some(exe)) => return Ok(exe),
            Ok(None) => tried.push(format!(
                "the workspace of {} has no billiard-host package",
                manifest.display()
            )),
            Err(e) => return Err(e),
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(exe) = std::env::split_paths(&path)
            .map(|d| d.join(HOST_EXE))
            .find(|p| p.is_file())
        {
            return Ok(exe);
        }
    }
    tried.push("there is no billiard-host on PATH".into());
    Err(format!(
        "cannot find the billiard-host executable a pool starts as its zygote ({}). \
         Set BILLIARD_HOST_EXE=/path/to/billiard-host, or install it on PATH \
         (`cargo install --path host` in the billiard-host repository).",
        tried.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_reads_profile_and_triple() {
        let tmp =
            std::env::temp_dir().join(format!("billiard-testing-layout-{}", std::process::id()));
        let target = tmp.join("target");
        std::fs::create_dir_all(target.join("release/deps")).unwrap();
        std::fs::create_dir_all(target.join("x86_64-unknown-linux-gnu/debug/deps")).unwrap();
        std::fs::write(
            target.join("CACHEDIR.TAG"),
            "Signature: 8a477f597d28d172789f06886806bc55",
        )
        .unwrap();

        let l = Layout::of_exe(&target.join("release/deps/t-123"));
        assert_eq!(l.profile_dir.as_deref(), Some("release"));
        assert_eq!(l.triple, None);
        assert_eq!(l.cargo_args(), ["--release"]);
        assert_eq!(l.artifact_dir(&target), target.join("release"));

        let l = Layout::of_exe(&target.join("x86_64-unknown-linux-gnu/debug/deps/t-123"));
        assert_eq!(l.profile_dir.as_deref(), Some("debug"));
        assert_eq!(l.triple.as_deref(), Some("x86_64-unknown-linux-gnu"));
        assert_eq!(l.cargo_args(), ["--target", "x86_64-unknown-linux-gnu"]);

        let l = Layout::of_exe(Path::new("/usr/bin/some-test"));
        assert_eq!(l, Layout::default());
        assert!(l.cargo_args().is_empty());

        let custom = Layout {
            profile_dir: Some("ci".into()),
            triple: None,
        };
        assert_eq!(custom.cargo_args(), ["--profile", "ci"]);
        let _ = std::fs::remove_dir_all(&tmp);
    }

    /// Issue 28: the "building billiard-host" line once per `cargo test`:
    /// the first test process of a cargo run says it, the next ones of the
    /// same run do not; a marker of a run that is over is removed.
    #[test]
    fn the_first_process_of_a_cargo_run_announces_the_build() {
        if std::env::var_os("CARGO").is_none() {
            return; // run by hand: every process says it
        }
        let target = std::env::temp_dir().join(format!("billiard-announce-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&target);
        let stale = target.join("billiard-testing/announced-999999999-1");
        std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
        std::fs::write(&stale, "").unwrap();
        assert!(first_in_this_cargo_run(&target));
        assert!(!first_in_this_cargo_run(&target));
        assert!(!first_in_this_cargo_run(&target));
        assert!(!stale.exists(), "the marker of a finished run is removed");
        let _ = std::fs::remove_dir_all(&target);
    }

    #[test]
    fn once_runs_once_per_key() {
        use std::sync::atomic::{AtomicU32, Ordering};
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let key = format!("test-key-{}", std::process::id());
        let results: Vec<u32> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let key = key.clone();
                    s.spawn(move || once(key, || RUNS.fetch_add(1, Ordering::SeqCst) + 41))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(results.iter().all(|&r| r == 41));
        assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    }
}
