//! The bench suite runs: `bench --dry-run --skip-python` against debug-built
//! plugins must produce a well-formed result line for every workload.
//! (No timing is asserted: the numbers of a dry run mean nothing.)

mod common;

use std::process::Command;

use common::build_plugins;
use serde_json::Value;

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
