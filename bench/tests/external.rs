//! The benchmark is reproducible from a clone (issue 28 item 11): the
//! Python side (bench/python, in a venv the bench makes) and the C limits
//! (bench/limits, compiled with cc) come from this repository and run end
//! to end, here at the dry run's tiny N (the numbers mean nothing; no
//! timing is asserted).

mod common;

use std::path::Path;
use std::process::Command;

use common::{build_plugins, workspace_root};
use serde_json::Value;

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Prints a SKIP line, or fails under CI, where every tool must be present.
fn skip(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why} (CI=true: the bench's external pieces must run)");
    }
    eprintln!("SKIP: {why}");
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l}: {e}")))
        .collect()
}

#[test]
fn u28_bench_runs_the_python_side_and_the_c_limits_from_the_repository() {
    if !have("python3", "--version") {
        return skip("no python3 to make the benchmark venv with");
    }
    if !have(
        &std::env::var("CC").unwrap_or_else(|_| "cc".into()),
        "--version",
    ) {
        return skip("no C compiler (cc) for bench/limits/limits.c");
    }
    let dir = build_plugins();
    let out_dir = std::env::temp_dir().join(format!("billiard-bench-ext-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let wls = ["W1", "W3", "W5"];
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--dry-run", "--external", "--workloads", &wls.join(",")])
        .arg("--plugin-dir")
        .arg(&dir)
        .arg("--host-exe")
        .arg(dir.join("billiard-host"))
        .arg("--out-dir")
        .arg(&out_dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("the bench binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench --dry-run --external failed ({:?}):\n{stderr}",
        out.status
    );
    // Nothing outside the repository was run.
    assert!(!stderr.contains("shared/bench"), "{stderr}");
    assert!(stderr.contains("bench/python/pyworkloads.py"), "{stderr}");

    let py = lines(&out_dir.join("results-python.jsonl"));
    for imp in ["billiard", "multiprocessing"] {
        for w in wls {
            let mine: Vec<&Value> = py
                .iter()
                .filter(|r| r["impl"] == imp && r["workload"] == w)
                .collect();
            assert!(!mine.is_empty(), "no {imp} {w} result:\n{py:?}\n{stderr}");
            for r in mine {
                assert_ne!(r["metric"], "error", "{imp} {w} failed: {r}");
                assert!(r["value"].as_f64().is_some_and(|v| v > 0.0), "{r}");
            }
        }
    }
    let limits = lines(&out_dir.join("results-limits.jsonl"));
    let metric = |m: &str| limits.iter().find(|r| r["metric"] == m).cloned();
    for m in [
        "tiny_tasks_2workers_depth1",
        "pingpong16_socketpair_same_cpu_p50",
        "pingpong16_socketpair_unpinned_p50",
        "bulk1MiB_socketpair_default_buf",
        "echo1MiB_socketpair_4MiB_buf",
        "memcpy_1MiB",
    ] {
        let r = metric(m).unwrap_or_else(|| panic!("no limit {m}: {limits:?}"));
        assert_eq!(r["impl"], "c-limit");
        assert!(r["value"].as_f64().is_some_and(|v| v > 0.0), "{r}");
    }
    // W3's floor is the round trip across CPUs where there are two.
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("bench.json")).expect("bench.json written"),
    )
    .expect("bench.json parses");
    let w3 = doc["rows"]
        .as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["workload"] == "W3" && r["metric"] == "p50")
        })
        .cloned()
        .expect("a W3 p50 row");
    if cpus >= 2 {
        assert!(
            metric("pingpong16_socketpair_cross_cpu_p50").is_some(),
            "{limits:?}"
        );
        assert_eq!(
            w3["c_limit_source"], "pingpong16_socketpair_cross_cpu_p50",
            "{w3}"
        );
    }
    assert!(
        w3["billiard"].is_number() && w3["multiprocessing"].is_number(),
        "{w3}"
    );
    assert!(w3["fraction_of_limit"].is_number(), "{w3}");
    let md = std::fs::read_to_string(out_dir.join("bench.md")).expect("bench.md");
    assert!(
        md.contains("## Machine limits (bench/limits/limits.c)"),
        "{md}"
    );
    assert!(
        out_dir.join("charts/ratios.svg").is_file(),
        "no ratios chart"
    );
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
fn u28_the_bench_sources_and_docs_name_nothing_outside_the_repository() {
    let root = workspace_root();
    let mut files = vec![
        root.join("docs/benchmarks.md"),
        root.join("bench/Cargo.toml"),
    ];
    let mut dirs = vec![
        root.join("bench/src"),
        root.join("bench/python"),
        root.join("bench/limits"),
    ];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d)
            .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
            .flatten()
        {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for bad in ["../shared", "shared/bench", "pybench.py"] {
            assert!(!text.contains(bad), "{} still names {bad}", f.display());
        }
    }
}
