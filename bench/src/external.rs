//! Everything outside the Rust pool: the machine description, the Python
//! side (`bench/python/pyworkloads.py` in the venv of `venv.rs`) and the C
//! limits (`bench/limits/limits.c`).

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use crate::record::Record;

/// First line of a command's stdout (or stderr), trimmed.
pub fn command_line(cmd: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !o.status.success() {
        return None;
    }
    let text = if o.stdout.is_empty() {
        o.stderr
    } else {
        o.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

/// `YYYY-MM-DDTHH:MM:SSZ` of now (UTC).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// nproc, CPU model, memory, kernel.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    let mhz = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    let mem_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string());
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "cpu_model": model,
        "cpu_mhz": mhz,
        "mem_gib": mem_kib.map(|k| (k as f64 / 1048576.0 * 10.0).round() / 10.0),
        "kernel": kernel,
    })
}

/// Python and billiard versions of a venv interpreter.
pub fn python_versions(py: &Path) -> Value {
    let py = py.to_string_lossy();
    json!({
        "python": command_line(&py, &["-c", "import platform; print(platform.python_version())"]),
        "billiard": command_line(&py, &["-c", "import billiard; print(billiard.__version__)"]),
    })
}

/// How the Python side runs.
#[derive(Debug, Clone, Copy)]
pub struct PySettings {
    pub runs: usize,
    /// Multiplies every N (1 = the real workloads).
    pub scale: f64,
    pub w6_budget: f64,
    /// Seconds one (impl, workload) may take before it is killed.
    pub cap: f64,
}

/// Runs `bench/python/pyworkloads.py` (billiard and multiprocessing);
/// returns its result lines (also written to `jsonl`).
pub fn run_python(
    py: &Path,
    script: &Path,
    workloads: &[String],
    set: &PySettings,
    jsonl: &Path,
) -> Result<Vec<Record>> {
    let PySettings {
        runs,
        scale,
        w6_budget,
        cap,
    } = *set;
    let _ = std::fs::remove_file(jsonl);
    let mut cmd = Command::new(py);
    cmd.arg(script)
        .args(["--impl", "billiard,multiprocessing"])
        .args(["--workload", &workloads.join(",")])
        .args(["--runs", &runs.to_string()])
        .args(["--scale", &scale.to_string()])
        .args(["--w6-budget", &w6_budget.to_string()])
        .args(["--cap", &cap.to_string()])
        .arg("--jsonl")
        .arg(jsonl)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    eprintln!("[bench] {cmd:?}");
    let st = cmd
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    let text = std::fs::read_to_string(jsonl).unwrap_or_default();
    let recs = Record::parse_lines(&text);
    ensure!(
        st.success() || !recs.is_empty(),
        "{} exited with {st} and printed no results",
        script.display()
    );
    Ok(recs)
}

/// Compiles `bench/limits/limits.c` with `$CC` (default `cc`) and runs it;
/// returns its result lines (also written to `jsonl`).
pub fn run_limits(
    limits_c: &Path,
    tmp: &Path,
    runs: usize,
    scale: f64,
    workloads: &[String],
    jsonl: &Path,
) -> Result<Vec<Record>> {
    std::fs::create_dir_all(tmp)?;
    let exe = tmp.join("limits");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let st = Command::new(&cc)
        .args(["-O2", "-o"])
        .arg(&exe)
        .arg(limits_c)
        .status()
        .with_context(|| {
            format!("running `{cc}` (a C compiler is needed for the limits; or pass --skip-limits)")
        })?;
    ensure!(
        st.success(),
        "{cc} -O2 {} failed ({st})",
        limits_c.display()
    );
    let mut cmd = Command::new(&exe);
    cmd.args(["--runs", &runs.to_string()])
        .args(["--scale", &scale.to_string()])
        .args(["--only", &workloads.join(",")])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    eprintln!("[bench] {cmd:?} (about 30 s per run at full size)");
    let o = cmd.output().context("running limits")?;
    ensure!(o.status.success(), "limits exited with {}", o.status);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    std::fs::write(jsonl, &text)?;
    Ok(Record::parse_lines(&text))
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_date_has_the_iso_shape() {
        let d = super::utc_now();
        assert_eq!(d.len(), 20, "{d}");
        assert!(d.ends_with('Z') && d.as_bytes()[10] == b'T', "{d}");
        assert!(d.as_str() > "2024-01-01", "{d}");
    }
}
