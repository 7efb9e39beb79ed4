//! The Python venv of the benchmarks (`target/bench-venv` by default): made
//! by the bench itself from `bench/python/requirements.txt`, so a fresh
//! clone needs only a `python3` with the `venv` module and access to the
//! package index. Shared by `bench` (billiard, multiprocessing) and
//! `bench-celery` (Celery's worker).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The requirements file inside the repository (`bench` takes it from
/// `--bench-dir`; `bench-celery` from here).
#[allow(dead_code)]
pub fn requirements(workspace: &Path) -> PathBuf {
    workspace
        .join("bench")
        .join("python")
        .join("requirements.txt")
}

/// Where the venv remembers which requirements it was made from: a copy of
/// the file, so an edited pin reinstalls and an unchanged one costs nothing.
const STAMP: &str = ".bench-requirements.txt";

/// The venv's interpreter, creating the venv and installing `requirements`
/// when the venv is missing or was made from other requirements.
pub fn ensure(python: &str, venv: &Path, requirements: &Path) -> Result<PathBuf> {
    let wanted = std::fs::read_to_string(requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let py = venv.join("bin").join("python");
    if !py.is_file() {
        let found = Command::new(python)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !found {
            bail!(
                "no `{python}` to create the benchmark venv with: install Python 3 \
                 (with its venv module, e.g. `apt-get install python3 python3-venv`), \
                 pass --python PATH, or skip the Python side with --skip-python"
            );
        }
        eprintln!("[bench] creating the venv {}", venv.display());
        let st = Command::new(python)
            .args(["-m", "venv"])
            .arg(venv)
            .status()
            .with_context(|| format!("running {python} -m venv"))?;
        if !st.success() {
            bail!(
                "`{python} -m venv {}` failed ({st}): the venv module is missing \
                 (Debian/Ubuntu: `apt-get install python3-venv`)",
                venv.display()
            );
        }
    }
    let stamp = venv.join(STAMP);
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(py);
    }
    let pip = Command::new(&py)
        .args(["-m", "pip", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !pip {
        bail!(
            "the venv {} has no pip (Debian/Ubuntu: `apt-get install python3-venv python3-pip`, \
             then delete the venv and run again)",
            venv.display()
        );
    }
    eprintln!(
        "[bench] pip install -r {} into {}",
        requirements.display(),
        venv.display()
    );
    let st = Command::new(&py)
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(requirements)
        .status()
        .context("running pip")?;
    if !st.success() {
        bail!(
            "pip install -r {} failed ({st}): is the package index reachable?",
            requirements.display()
        );
    }
    std::fs::write(&stamp, &wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(py)
}
