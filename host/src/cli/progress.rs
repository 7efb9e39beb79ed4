//! Progress of a `run` batch: a bar on a terminal (stderr), the tally of
//! outcomes, and the one-line summary printed at the end.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use billiard_host::ErrorKind;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Outcome counts.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: u64,
    pub failed: BTreeMap<ErrorKind, u64>,
}

impl Tally {
    pub fn jobs(&self) -> u64 {
        self.ok + self.failed_total()
    }

    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    fn failed_text(&self) -> String {
        let kinds: Vec<String> = self
            .failed
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        format!("{} failed ({})", self.failed_total(), kinds.join(", "))
    }
}

/// The bar (hidden unless stderr is a terminal and `--quiet` is off) and
/// the tally it shows.
pub struct Progress {
    bar: ProgressBar,
    pub tally: Tally,
    started: Instant,
}

const SPINNER: &str = "{spinner} {jobs} jobs  {rate}  {elapsed_precise}  {msg}";
const BAR: &str = "{bar:30} {jobs}/{len} jobs  {rate}  eta {eta}  {msg}";

/// The progress running jobs reported (`ctx.progress`), by job index: the
/// bar counts each as the fraction it has done. Shared by the threads that
/// read results; one `run` per process.
pub static PARTIAL: Partial = Partial {
    any: std::sync::atomic::AtomicBool::new(false),
    jobs: std::sync::Mutex::new(BTreeMap::new()),
};

pub struct Partial {
    any: std::sync::atomic::AtomicBool,
    jobs: std::sync::Mutex<BTreeMap<u64, f64>>,
}

impl Partial {
    /// Job `index` has done `done` of `total`.
    pub fn report(&self, index: u64, done: u64, total: u64) {
        if total == 0 {
            return;
        }
        let fraction = (done as f64 / total as f64).clamp(0.0, 1.0);
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.insert(index, fraction);
        self.any.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Job `index` has its result (cheap while no job reported progress).
    pub fn finished(&self, index: u64) {
        if !self.any.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.remove(&index);
        if jobs.is_empty() {
            self.any.store(false, std::sync::atomic::Ordering::Release);
        }
    }

    /// The sum of the running jobs' fractions.
    fn sum(&self) -> f64 {
        if !self.any.load(std::sync::atomic::Ordering::Acquire) {
            return 0.0;
        }
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum()
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("a valid template")
        .with_key(
            "rate",
            |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0} jobs/s", s.per_sec());
            },
        )
        .with_key(
            "jobs",
            |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                // Finished jobs, plus the parts of running ones.
                let partial = PARTIAL.sum();
                if partial > 0.0 {
                    let _ = write!(w, "{:.1}", s.pos() as f64 + partial);
                } else {
                    let _ = write!(w, "{}", s.pos());
                }
            },
        )
}

impl Progress {
    pub fn new(visible: bool) -> Progress {
        let bar = if visible {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(style(SPINNER));
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        } else {
            ProgressBar::hidden()
        };
        Progress {
            bar,
            tally: Tally::default(),
            started: Instant::now(),
        }
    }

    /// Counts the jobs of a regular input file in the background (the bar
    /// turns from a spinner into a bar once known). Pipes and terminals
    /// are left alone: reading them here would consume the input.
    pub fn count_total_in(&self, file: PathBuf) {
        if self.bar.is_hidden() || !std::fs::metadata(&file).is_ok_and(|m| m.is_file()) {
            return;
        }
        let bar = self.bar.clone();
        let _ = std::thread::Builder::new()
            .name("billiard-count".into())
            .spawn(move || {
                if let Ok(n) = count_jobs(file) {
                    bar.set_length(n);
                    bar.set_style(style(BAR));
                }
            });
    }

    pub fn record(&mut self, failed: Option<ErrorKind>) {
        match failed {
            None => self.tally.ok += 1,
            Some(kind) => {
                *self.tally.failed.entry(kind).or_default() += 1;
                self.bar.set_message(self.tally.failed_text());
            }
        }
        self.bar.inc(1);
    }

    /// [`Progress::record`] for a batch of results: `ok` successes and the
    /// failures (one bar update for all of them).
    pub fn record_batch(&mut self, ok: u64, failed: impl IntoIterator<Item = ErrorKind>) {
        let mut n = ok;
        self.tally.ok += ok;
        let mut any_failed = false;
        for kind in failed {
            *self.tally.failed.entry(kind).or_default() += 1;
            any_failed = true;
            n += 1;
        }
        if any_failed {
            self.bar.set_message(self.tally.failed_text());
        }
        self.bar.inc(n);
    }

    /// Takes back a [`Progress::record`] (a result that was not written).
    pub fn unrecord(&mut self, failed: Option<ErrorKind>) {
        match failed {
            None => self.tally.ok = self.tally.ok.saturating_sub(1),
            Some(kind) => {
                if let Some(n) = self.tally.failed.get_mut(&kind) {
                    *n -= 1;
                    if *n == 0 {
                        self.tally.failed.remove(&kind);
                    }
                }
            }
        }
    }

    pub fn bar(&self) -> &ProgressBar {
        &self.bar
    }

    /// Clears the bar and returns the summary line, e.g.
    /// `12 jobs: 10 ok, 2 failed (1 panic, 1 bad_args) in 0.41s (29.3 jobs/s)`.
    pub fn finish(&self) -> String {
        self.bar.finish_and_clear();
        let secs = self.started.elapsed().as_secs_f64();
        let jobs = self.tally.jobs();
        let mut s = format!(
            "{jobs} job{}: {} ok",
            if jobs == 1 { "" } else { "s" },
            self.tally.ok
        );
        if self.tally.failed_total() > 0 {
            s += &format!(", {}", self.tally.failed_text());
        }
        s += &format!(
            " in {secs:.2}s ({:.1} jobs/s)",
            if secs > 0.0 { jobs as f64 / secs } else { 0.0 }
        );
        s
    }
}

/// The number of non-blank lines of a file.
fn count_jobs(file: PathBuf) -> std::io::Result<u64> {
    let mut f = std::fs::File::open(file)?;
    let mut buf = vec![0u8; 256 * 1024];
    let (mut n, mut blank) = (0u64, true);
    loop {
        let got = f.read(&mut buf)?;
        if got == 0 {
            break;
        }
        for &b in &buf[..got] {
            if b == b'\n' {
                if !blank {
                    n += 1;
                }
                blank = true;
            } else if !b.is_ascii_whitespace() {
                blank = false;
            }
        }
    }
    Ok(n + u64::from(!blank))
}
