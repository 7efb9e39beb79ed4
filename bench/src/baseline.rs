//! `--baseline REV`: the same workloads against a build of another git
//! revision, in the same run, interleaved run by run (this tree, REV, then
//! REV, this tree, ...), so that both see the same machine and the same
//! load; a table of the two medians and their ratio.
//!
//! REV's sources are exported with `git archive` (no worktree, nothing in
//! the repository changes) into `<target>/baseline/<sha>/src` and built
//! there with its own `Cargo.lock` and its own `[profile.release]` into
//! `<target>/baseline/<sha>/target` (one extra release build; kept for the
//! next run). Its own `bench` binary runs its workloads (`--child`), so the
//! library side (W6's and W8's pool in the bench process) is REV's too.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context, Result};

use crate::record::Record;
use crate::report;

/// A built revision.
pub struct Baseline {
    /// The short commit id.
    pub rev: String,
    /// Its `bench` executable (runs `--child W`).
    pub bench_exe: PathBuf,
    /// Its plugin directory (`target/release`), holding its `billiard-host`.
    pub plugin_dir: PathBuf,
}

impl Baseline {
    /// Its `billiard-host`.
    pub fn host_exe(&self) -> PathBuf {
        self.plugin_dir.join("billiard-host")
    }
}

fn git(root: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .context("running git")?;
    ensure!(out.status.success(), "git {} failed", args.join(" "));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Exports REV (unless already there) and builds it (unless `no_build`).
pub fn prepare(
    root: &Path,
    target: &Path,
    rev: &str,
    packages: &[&str],
    no_build: bool,
) -> Result<Baseline> {
    let sha = git(
        root,
        &["rev-parse", "--verify", &format!("{rev}^{{commit}}")],
    )
    .with_context(|| format!("--baseline {rev}: not a commit"))?;
    let short = git(root, &["rev-parse", "--short=7", &sha])?;
    let dir = target.join("baseline").join(&short);
    let src = dir.join("src");
    if !src.join("Cargo.toml").is_file() {
        let _ = std::fs::remove_dir_all(&src);
        std::fs::create_dir_all(&src)?;
        eprintln!("[bench] exporting {short} into {}", src.display());
        let mut archive = Command::new("git")
            .arg("-C")
            .arg(root)
            .args(["archive", "--format=tar", &sha])
            .stdout(Stdio::piped())
            .spawn()
            .context("running git archive")?;
        let tar = Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(&src)
            .stdin(archive.stdout.take().context("git archive's stdout")?)
            .status()
            .context("running tar")?;
        let git_ok = archive.wait()?.success();
        if !(git_ok && tar.success()) {
            let _ = std::fs::remove_dir_all(&src);
            bail!("exporting {short} failed");
        }
    }
    let built = dir.join("target").join("release");
    if !no_build {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&src)
            .args(["build", "--release", "--locked"])
            .arg("--target-dir")
            .arg(dir.join("target"))
            // Its own profile, not ours (a CARGO_PROFILE_* of the caller
            // would change REV's build).
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS");
        for p in packages.iter().chain(&["billiard-host", "billiard-bench"]) {
            cmd.args(["-p", p]);
        }
        eprintln!("[bench] {cmd:?}");
        ensure!(
            cmd.status().context("running cargo build")?.success(),
            "cargo build --release of {short} failed"
        );
    }
    let b = Baseline {
        rev: short,
        bench_exe: built.join("bench"),
        plugin_dir: built.clone(),
    };
    ensure!(
        b.bench_exe.is_file() && b.host_exe().is_file(),
        "{} lacks bench or billiard-host (build it, or drop --no-build)",
        built.display()
    );
    Ok(b)
}

/// Records of several one-run children merged into one record per
/// (workload, metric, variant): the samples of every run, value = median.
pub fn merge(recs: &[Record]) -> Vec<Record> {
    let mut keys: Vec<(String, String, Option<String>)> = Vec::new();
    for r in recs {
        let k = key(r);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|k| {
            let same: Vec<&Record> = recs.iter().filter(|r| key(r) == k).collect();
            let first = same[0];
            if first.metric == "error" {
                return first.clone();
            }
            let samples: Vec<Option<f64>> = same
                .iter()
                .flat_map(|r| r.samples.clone().unwrap_or_else(|| vec![r.value]))
                .collect();
            let mut m = Record::new(
                &first.workload,
                &first.metric,
                &samples,
                first.unit.as_deref().unwrap_or(""),
                first.n.unwrap_or(0),
            );
            m.imp = first.imp.clone();
            m.extra = first.extra.clone();
            m
        })
        .collect()
}

fn key(r: &Record) -> (String, String, Option<String>) {
    (
        r.workload.clone(),
        r.metric.clone(),
        r.extra
            .get("variant")
            .and_then(|v| v.as_str())
            .map(str::to_string),
    )
}

/// The comparison table: this tree against REV, ratio oriented so that
/// above 1 means this tree is better.
pub fn table(ours: &[Record], base: &[Record], rev: &str) -> String {
    let mut s = format!(
        "| workload | metric | unit | this tree | {rev} | ratio (>1 = this tree better) | samples (this tree / {rev}) |\n|---|---|---|---|---|---|---|\n"
    );
    let f = |x: Option<f64>| x.map(report::fmt_num).unwrap_or_else(|| "-".into());
    let samples = |r: Option<&Record>| {
        r.and_then(|r| r.samples.clone())
            .unwrap_or_default()
            .iter()
            .map(|x| f(*x))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for r in ours {
        let (w, m, v) = key(r);
        let b = base
            .iter()
            .find(|b| key(b) == (w.clone(), m.clone(), v.clone()));
        let unit = r.unit.clone().unwrap_or_default();
        let ratio = match (
            r.value,
            b.and_then(|b| b.value),
            report::higher_is_better(&unit),
        ) {
            (Some(a), Some(b), Some(hi)) if a > 0.0 && b > 0.0 => {
                Some(if hi { a / b } else { b / a })
            }
            _ => None,
        };
        let metric = match v {
            Some(v) => format!("{m} ({v})"),
            None => m,
        };
        s += &format!(
            "| {w} | {metric} | {unit} | {} | {} | {} | {} / {} |\n",
            f(r.value),
            f(b.and_then(|b| b.value)),
            ratio
                .map(|x| format!("{}×", report::fmt_num(x)))
                .unwrap_or_default(),
            samples(Some(r)),
            samples(b),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_pools_the_samples_of_one_run_children() {
        let recs = vec![
            Record::of("W6", "throughput", &[100.0], "tasks/s", 10),
            Record::of("W8", "whole_process", &[9.0], "ms", 1),
            Record::of("W6", "throughput", &[300.0], "tasks/s", 10),
            Record::of("W6", "throughput", &[200.0], "tasks/s", 10),
        ];
        let m = merge(&recs);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].value, Some(200.0));
        assert_eq!(m[0].runs, Some(3));
        assert_eq!(m[1].value, Some(9.0));
    }

    #[test]
    fn the_ratio_is_oriented_so_that_above_one_is_better() {
        let ours = vec![
            Record::of("W6", "throughput", &[200.0], "tasks/s", 10),
            Record::of("W8", "whole_process", &[5.0], "ms", 1),
        ];
        let base = vec![
            Record::of("W6", "throughput", &[100.0], "tasks/s", 10),
            Record::of("W8", "whole_process", &[10.0], "ms", 1),
        ];
        let t = table(&ours, &base, "abc1234");
        assert!(
            t.contains("| W6 | throughput | tasks/s | 200 | 100 | 2×"),
            "{t}"
        );
        assert!(t.contains("| W8 | whole_process | ms | 5 | 10 | 2×"), "{t}");
    }
}
