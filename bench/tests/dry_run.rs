//! The bench suite runs: `bench --dry-run --skip-python` against debug-built
//! plugins must produce a well-formed result line for every workload.
//! (No timing is asserted: the numbers of a dry run mean nothing.)

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The directory the bench binary (and so this profile's artifacts) is in.
fn artifact_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_bench"))
        .parent()
        .expect("the binary lives in a directory")
        .to_path_buf()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent directory")
        .to_path_buf()
}

/// Builds the plugins and `billiard-host` with this test's cargo, profile
/// and target directory (like tests/common/mod.rs of the host crate).
fn build_plugins() -> PathBuf {
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

#[test]
fn dry_run_produces_a_result_for_every_workload() {
    let dir = build_plugins();
    let out_dir = std::env::temp_dir().join(format!("billiard-bench-dry-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--dry-run", "--skip-python"])
        .arg("--plugin-dir")
        .arg(&dir)
        .arg("--host-exe")
        .arg(dir.join("billiard-host"))
        .arg("--out-dir")
        .arg(&out_dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("the bench binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench --dry-run failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let lines: Vec<Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
        .collect();
    for w in 1..=10 {
        let w = format!("W{w}");
        let mine: Vec<&Value> = lines
            .iter()
            .filter(|r| r["workload"] == w.as_str())
            .collect();
        assert!(
            !mine.is_empty(),
            "no result line for {w}\n{stdout}\n{stderr}"
        );
        for r in mine {
            assert_eq!(r["impl"], "billiard-host", "{r}");
            assert_ne!(r["metric"], "error", "{w} failed: {r}");
            for key in [
                "metric", "value", "unit", "n", "min", "max", "runs", "samples",
            ] {
                assert!(r.get(key).is_some(), "{w}: no `{key}` in {r}");
            }
            assert!(
                r["value"].is_number() || r["outcome"].is_string(),
                "{w}: a null value needs an outcome: {r}"
            );
        }
    }
    let md = std::fs::read_to_string(out_dir.join("bench.md")).expect("bench.md written");
    assert!(md.contains("| W1 | throughput |"), "{md}");
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("bench.json")).expect("bench.json written"),
    )
    .expect("bench.json parses");
    assert_eq!(doc["results"].as_array().map(Vec::len), Some(lines.len()));
    let _ = std::fs::remove_dir_all(&out_dir);
}
