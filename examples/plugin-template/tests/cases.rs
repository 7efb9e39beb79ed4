//! `cases.jsonl`, the golden cases of this plugin, pass under
//! `billiard-host check` (the same command CI or a release script runs).

use std::path::Path;
use std::process::Command;

use billiard_testing::plugin;

#[test]
fn golden_cases_pass() {
    let h = plugin!();
    let cases = Path::new(env!("CARGO_MANIFEST_DIR")).join("cases.jsonl");
    let out = Command::new(h.worker_exe())
        .arg("check")
        .arg(h.path())
        .arg("--cases")
        .arg(&cases)
        .args(["--workers", "2", "--time-limit", "10s"])
        .output()
        .expect("billiard-host runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "billiard-host check failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("0 failed"), "{stdout}");
}
