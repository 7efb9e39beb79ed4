//! Helpers of the bench's integration tests.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory the bench binary (and so this profile's artifacts) is in.
pub fn artifact_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_bench"))
        .parent()
        .expect("the binary lives in a directory")
        .to_path_buf()
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent directory")
        .to_path_buf()
}

/// Builds the plugins and `billiard-host` with this test's cargo, profile
/// and target directory (like tests/common/mod.rs of the host crate).
pub fn build_plugins() -> PathBuf {
    let dir = artifact_dir();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(workspace_root()).arg("build");
    for p in [
        "billiard-plugin-math",
        "billiard-plugin-bytes",
        "billiard-plugin-faults",
        "billiard-host",
    ] {
        cmd.args(["-p", p]);
    }
    match dir.file_name().and_then(OsStr::to_str) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    let is_target_dir = |p: &Path| p.join("CACHEDIR.TAG").is_file();
    if let Some(parent) = dir.parent() {
        if is_target_dir(parent) {
            cmd.arg("--target-dir").arg(parent);
        } else if let (Some(gp), Some(triple)) = (parent.parent(), parent.file_name()) {
            if is_target_dir(gp) {
                cmd.arg("--target-dir").arg(gp).arg("--target").arg(triple);
            }
        }
    }
    let out = cmd.output().expect("cargo runs");
    assert!(
        out.status.success(),
        "building the plugins failed ({cmd:?}):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}
