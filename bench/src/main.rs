//! `bench`: runs workloads W1–W10 (defined in `docs/benchmarks.md`) on
//! billiard-host, Python's billiard and multiprocessing
//! (`bench/python/pyworkloads.py`, in a venv the bench makes) and the
//! machine's limits (`bench/limits/limits.c`, compiled with `cc`), and
//! writes a comparison table and a chart. Everything it runs is in the
//! repository.
//!
//! ```sh
//! cargo run --release -p billiard-bench --bin bench -- --quick      # smoke test
//! cargo run --release -p billiard-bench --bin bench -- --runs 3     # the real thing
//! cargo run --release -p billiard-bench --bin bench -- --dry-run --skip-python
//! ```
//!
//! Every Rust workload runs in a fresh child process (this binary with the
//! hidden `--child W`), capped in time, like pyworkloads.py runs each workload in a
//! fresh interpreter. Results are printed as JSON lines with pyworkloads.py's keys
//! (`"impl": "billiard-host"`) and written to `--out-dir` (default
//! `target/bench`): `results-host.jsonl`, `results-python.jsonl`,
//! `results-limits.jsonl`, `bench.md`, `bench.json` and `charts/ratios.svg`.

// The flags' doc comments are clap's --help text (`<workspace>` is a
// placeholder there, not an HTML tag).
#![allow(rustdoc::invalid_html_tags)]

mod baseline;
mod charts;
mod external;
mod proc;
mod record;
mod report;
mod streaming;
mod venv;
mod workloads;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use billiard_host::StartMethod;
use clap::Parser;
use serde_json::{json, Value};

use record::Record;
use workloads::{Ctx, Mode, WORKLOADS};

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "Benchmark billiard-host on workloads W1-W10 against Python's billiard and multiprocessing and the machine's limits",
    after_help = "Examples:\n  cargo run --release -p billiard-bench --bin bench -- --quick\n  cargo run --release -p billiard-bench --bin bench -- --runs 3\n  cargo run --release -p billiard-bench --bin bench -- --workloads W1,W3 --skip-python"
)]
struct Args {
    /// N/10 everywhere (Python side and C limits too): a smoke test, numbers not comparable.
    #[arg(long)]
    quick: bool,
    /// Tiny N (N/1000, at least 2), one run, Rust side only (no build; the
    /// Python side and the C limits too with --external); checks that every
    /// result line is well-formed.
    #[arg(long)]
    dry_run: bool,
    /// Runs per workload (value = median). Default 3 (1 with --dry-run).
    #[arg(long)]
    runs: Option<usize>,
    /// Comma list of workloads (W1..W10) or `all`; S1 (streaming task vs
    /// map) and S2 (ctx.progress overhead on W4's shape) only when named.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    workloads: Vec<String>,
    /// Do not run the Python side (bench/python/pyworkloads.py).
    #[arg(long)]
    skip_python: bool,
    /// Do not compile and run the C limits (bench/limits/limits.c).
    #[arg(long)]
    skip_limits: bool,
    /// With --dry-run: also run the Python side and the C limits at the
    /// dry run's tiny N (a plumbing check of every piece; numbers mean nothing).
    #[arg(long)]
    external: bool,
    /// Run nothing: draw the charts from recorded result files
    /// (--chart-results, --chart-celery, --chart-shm) into --charts-dir.
    #[arg(long)]
    charts_only: bool,
    /// Result lines (results-*.jsonl, concatenated) or a bench.json to draw
    /// ratios.svg from.
    #[arg(long)]
    chart_results: Option<PathBuf>,
    /// bench-celery's JSON lines to draw celery.svg from.
    #[arg(long)]
    chart_celery: Option<PathBuf>,
    /// shm_sweep's JSON lines to draw shm_threshold.svg from.
    #[arg(long)]
    chart_shm: Option<PathBuf>,
    /// bench-celery --hosts's JSON lines to draw celery-fleet.svg from.
    #[arg(long)]
    chart_fleet: Option<PathBuf>,
    /// Where --charts-only writes (default: <out-dir>/charts).
    #[arg(long)]
    charts_dir: Option<PathBuf>,
    /// Where results go (default: <workspace>/target/bench).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Directory with libbilliard_{math,bytes,faults}.so (default: build
    /// them in release mode; with --dry-run: the ones already built).
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// The billiard-host executable (zygote, and the CLI variants).
    /// Default: billiard-host in the plugin directory.
    #[arg(long)]
    host_exe: Option<PathBuf>,
    /// The `billiard-host` whose `run` subcommand the CLI variants (W1/W2/W5
    /// `cli`, W8 `whole_process`) time. Default: --host-exe.
    #[arg(long)]
    cli_exe: Option<PathBuf>,
    /// Do not run `cargo build --release` first (use what is in target/release).
    #[arg(long)]
    no_build: bool,
    /// How the Rust pool starts workers (the Python side uses fork).
    #[arg(long, value_enum, default_value_t = StartMethod::Forkserver)]
    start_method: StartMethod,
    /// The sandbox profile of the Rust pools (docs/security.md); run the
    /// bench once per profile to compare (W1, W6).
    #[arg(long, value_enum, default_value_t = billiard_host::sandbox::Profile::None)]
    sandbox: billiard_host::sandbox::Profile,
    /// W6: a run stops after this many seconds (rate = completed / elapsed).
    #[arg(long, default_value_t = 30.0)]
    w6_budget: f64,
    /// A Rust workload process is killed after this many seconds
    /// (default 900; 120 with --dry-run).
    #[arg(long)]
    cap: Option<f64>,
    /// The Python used to create the venv.
    #[arg(long, default_value = "python3")]
    python: String,
    /// The venv of the Python side, made and pip-installed from
    /// bench/python/requirements.txt when missing or stale (default:
    /// <workspace>/target/bench-venv).
    #[arg(long)]
    venv: Option<PathBuf>,
    /// The directory holding python/pyworkloads.py, python/requirements.txt
    /// and limits/limits.c (default: <workspace>/bench).
    #[arg(long)]
    bench_dir: Option<PathBuf>,
    /// Reuse Python results from this JSONL file instead of running them.
    #[arg(long)]
    python_jsonl: Option<PathBuf>,
    /// Reuse the C limits' results from this JSONL file instead of running them.
    #[arg(long)]
    limits_jsonl: Option<PathBuf>,
    /// Also run the selected workloads against a release build of this git
    /// revision (exported and built under <target>/baseline/<sha>, with its
    /// own Cargo.lock and profile), interleaved run by run with this tree's;
    /// writes baseline.md and a "baseline" section of bench.json. E.g.
    /// `--baseline a4ac5d3 --workloads W6,W8 --skip-python --skip-limits`.
    #[arg(long, value_name = "REV")]
    baseline: Option<String>,
    /// Reuse billiard-host results from this JSONL file (e.g. an earlier
    /// results-host.jsonl) instead of running the Rust workloads; with
    /// --python-jsonl and --limits-jsonl it only rebuilds the report.
    #[arg(long)]
    host_jsonl: Option<PathBuf>,

    // Internal: run one workload in this (child) process.
    #[arg(long, hide = true)]
    child: Option<String>,
    #[arg(long, hide = true, value_enum)]
    mode: Option<Mode>,
    #[arg(long, hide = true)]
    cli_available: bool,
    #[arg(long, hide = true)]
    tmp_dir: Option<PathBuf>,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent directory")
        .to_path_buf()
}

const PLUGIN_PACKAGES: [&str; 4] = [
    "billiard-plugin-math",
    "billiard-plugin-bytes",
    "billiard-plugin-faults",
    "billiard-plugin-stream",
];

fn main() -> ExitCode {
    let args = Args::parse();
    let res = if args.child.is_some() {
        child_main(&args)
    } else {
        parent_main(&args)
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

// ------------------------------------------------------------------ child

/// How long one `billiard-host run` of a CLI variant may take.
fn cli_timeout(mode: Mode) -> Duration {
    Duration::from_secs(match mode {
        Mode::Full => 300,
        Mode::Quick => 120,
        Mode::Dry => 20,
    })
}

fn child_main(args: &Args) -> Result<ExitCode> {
    let w = args.child.clone().unwrap_or_default();
    let ctx = Ctx {
        plugin_dir: args.plugin_dir.clone().context("--plugin-dir")?,
        host_exe: args.host_exe.clone().context("--host-exe")?,
        cli_exe: args
            .cli_exe
            .clone()
            .or_else(|| args.host_exe.clone())
            .context("--host-exe")?,
        start_method: args.start_method,
        sandbox: args.sandbox,
        runs: args.runs.unwrap_or(1).max(1),
        mode: args.mode.unwrap_or(Mode::Full),
        w6_budget: args.w6_budget,
        cli_available: args.cli_available,
        tmp_dir: args.tmp_dir.clone().unwrap_or_else(std::env::temp_dir),
        cli_timeout: cli_timeout(args.mode.unwrap_or(Mode::Full)),
    };
    let res = std::panic::catch_unwind(|| workloads::run(&ctx, &w));
    let recs = match res {
        Ok(Ok(recs)) => recs,
        Ok(Err(e)) => vec![Record::error(&w, &format!("{e:#}"))],
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            vec![Record::error(&w, &format!("panicked: {msg}"))]
        }
    };
    let mut out = std::io::stdout().lock();
    for r in recs {
        writeln!(out, "{}", r.to_line())?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Runs one workload in a child process (its own process group, killed
/// with its group after `cap`); returns its result lines.
fn run_child(args: &Args, ctx: &Ctx, w: &str, cap: Duration) -> Result<Vec<Record>> {
    run_child_of(&std::env::current_exe()?, args, ctx, w, cap)
}

/// [`run_child`] with the `bench` executable `exe` (a baseline's).
fn run_child_of(exe: &Path, args: &Args, ctx: &Ctx, w: &str, cap: Duration) -> Result<Vec<Record>> {
    let mut cmd = Command::new(exe);
    cmd.args(["--child", w])
        .arg("--mode")
        .arg(match ctx.mode {
            Mode::Full => "full",
            Mode::Quick => "quick",
            Mode::Dry => "dry",
        })
        .arg("--plugin-dir")
        .arg(&ctx.plugin_dir)
        .arg("--host-exe")
        .arg(&ctx.host_exe)
        .arg("--cli-exe")
        .arg(&ctx.cli_exe)
        .args(["--runs", &ctx.runs.to_string()])
        .args(["--start-method", &ctx.start_method.to_string()])
        .args(["--sandbox", &ctx.sandbox.to_string()])
        .args(["--w6-budget", &args.w6_budget.to_string()])
        .arg("--tmp-dir")
        .arg(&ctx.tmp_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .env_remove("RUST_LOG");
    if ctx.cli_available {
        cmd.arg("--cli-available");
    }
    let f = proc::run_timed(&mut cmd, cap)?;
    let mut recs = Record::parse_lines(&String::from_utf8_lossy(&f.stdout));
    match f.status {
        None => recs.push(Record::error(
            w,
            &format!("cap of {:.0} s exceeded; killed", cap.as_secs_f64()),
        )),
        Some(st) if !st.success() => recs.push(Record::error(
            w,
            &format!("workload process exited with {st}"),
        )),
        Some(_) if recs.is_empty() => {
            recs.push(Record::error(w, "workload process printed no result"))
        }
        Some(_) => {}
    }
    Ok(recs)
}

// ----------------------------------------------------------------- parent

/// The target directory cargo uses for this binary (`target/` unless
/// overridden): the parent of the directory this executable is in, when it
/// carries cargo's CACHEDIR.TAG.
fn target_dir() -> PathBuf {
    if let Ok(me) = std::env::current_exe() {
        for dir in me.ancestors().skip(2).take(2) {
            if dir.join("CACHEDIR.TAG").is_file() {
                return dir.to_path_buf();
            }
        }
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn has_plugins(dir: &Path) -> bool {
    ["math", "bytes", "faults"]
        .iter()
        .all(|p| dir.join(format!("libbilliard_{p}.so")).is_file())
}

/// Finds (or builds) the plugin directory.
fn plugin_dir(args: &Args) -> Result<PathBuf> {
    if let Some(d) = &args.plugin_dir {
        return Ok(d.clone());
    }
    let target = target_dir();
    if args.dry_run {
        let mut candidates = Vec::new();
        if let Some(d) = std::env::current_exe()?.parent() {
            candidates.push(d.to_path_buf());
        }
        candidates.push(target.join("release"));
        candidates.push(target.join("debug"));
        return candidates
            .into_iter()
            .find(|d| has_plugins(d) && d.join("billiard-host").is_file())
            .context("no built plugins found; pass --plugin-dir and --host-exe (or build with `cargo build -p billiard-plugin-math -p billiard-plugin-bytes -p billiard-plugin-faults -p billiard-host`)");
    }
    if !args.no_build && args.host_jsonl.is_none() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root())
            .args(["build", "--release"])
            .arg("--target-dir")
            .arg(&target);
        for p in PLUGIN_PACKAGES.iter().chain(&["billiard-host"]) {
            cmd.args(["-p", p]);
        }
        eprintln!("[bench] {cmd:?}");
        let st = cmd.status().context("running cargo build")?;
        ensure!(st.success(), "cargo build --release failed");
    }
    Ok(target.join("release"))
}

fn selected_workloads(args: &Args) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for w in &args.workloads {
        let w = w.trim().to_uppercase();
        if w == "ALL" {
            out.extend(WORKLOADS.iter().map(|s| s.to_string()));
        } else if WORKLOADS.contains(&w.as_str())
            || streaming::EXTRA_WORKLOADS.contains(&w.as_str())
        {
            out.push(w);
        } else if !w.is_empty() {
            bail!("unknown workload {w} (W1..W10, S1, S2 or all)");
        }
    }
    out.dedup();
    ensure!(!out.is_empty(), "no workload selected");
    Ok(out)
}

/// The ratio chart's bars from the comparison rows.
fn ratio_bars(rows: &[report::Row]) -> Vec<charts::RatioBar> {
    rows.iter()
        .map(|r| {
            let vs_mp = match (r.host, r.multiprocessing, report::higher_is_better(&r.unit)) {
                (Some(h), Some(m), Some(hi)) if h > 0.0 && m > 0.0 => {
                    Some(if hi { h / m } else { m / h })
                }
                _ => None,
            };
            let label = match &r.variant {
                Some(v) => format!("{} {} ({v})", r.workload, r.metric),
                None => format!("{} {}", r.workload, r.metric),
            };
            charts::RatioBar {
                label,
                vs_billiard: r.ratio.filter(|x| x.is_finite() && *x > 0.0),
                vs_multiprocessing: vs_mp.filter(|x| x.is_finite()),
            }
        })
        .collect()
}

/// `--charts-only`: draws what the recorded files hold.
fn charts_only(args: &Args, out_dir: &Path) -> Result<ExitCode> {
    let dir = args
        .charts_dir
        .clone()
        .unwrap_or_else(|| out_dir.join("charts"));
    std::fs::create_dir_all(&dir)?;
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let mut drawn = 0;
    if let Some(f) = &args.chart_results {
        let text = read(f)?;
        // A bench.json holds the lines under "results"; a JSONL file is lines.
        let recs = match serde_json::from_str::<Value>(&text) {
            Ok(doc) if doc.get("results").is_some() => {
                serde_json::from_value::<Vec<Record>>(doc["results"].clone())
                    .context("bench.json results")?
            }
            _ => Record::parse_lines(&text),
        };
        let path = dir.join("ratios.svg");
        charts::ratios_svg(
            &ratio_bars(&report::rows(&recs)),
            "billiard-host against billiard and multiprocessing (W1-W10)",
            &path,
        )?;
        eprintln!("[bench] wrote {}", path.display());
        drawn += 1;
    }
    if let Some(f) = &args.chart_celery {
        let path = dir.join("celery.svg");
        charts::fleet_svg(
            &charts::parse_celery(&read(f)?),
            "Celery mode: tiny tasks through one Redis",
            &path,
        )?;
        eprintln!("[bench] wrote {}", path.display());
        drawn += 1;
    }
    if let Some(f) = &args.chart_fleet {
        let path = dir.join("celery-fleet.svg");
        charts::fleet_curve_svg(&charts::parse_fleet(&read(f)?), &path)?;
        eprintln!("[bench] wrote {}", path.display());
        drawn += 1;
    }
    if let Some(f) = &args.chart_shm {
        let path = dir.join("shm_threshold.svg");
        charts::shm_svg(&charts::parse_shm(&read(f)?), 64 << 10, &path)?;
        eprintln!("[bench] wrote {}", path.display());
        drawn += 1;
    }
    ensure!(
        drawn > 0,
        "--charts-only needs --chart-results, --chart-celery, --chart-fleet or --chart-shm"
    );
    Ok(ExitCode::SUCCESS)
}

fn parent_main(args: &Args) -> Result<ExitCode> {
    let root = workspace_root();
    let out_dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| root.join("target").join("bench"));
    std::fs::create_dir_all(&out_dir)?;
    let out_dir = out_dir.canonicalize()?;
    if args.charts_only {
        return charts_only(args, &out_dir);
    }
    let bench_dir = args.bench_dir.clone().unwrap_or_else(|| root.join("bench"));
    let wls = selected_workloads(args)?;
    let mode = if args.dry_run {
        Mode::Dry
    } else if args.quick {
        Mode::Quick
    } else {
        Mode::Full
    };
    let runs = args.runs.unwrap_or(if args.dry_run { 1 } else { 3 }).max(1);
    let plugin_dir = plugin_dir(args)?.canonicalize()?;
    ensure!(
        has_plugins(&plugin_dir),
        "{} lacks libbilliard_{{math,bytes,faults}}.so",
        plugin_dir.display()
    );
    let host_exe = args
        .host_exe
        .clone()
        .unwrap_or_else(|| plugin_dir.join("billiard-host"));
    ensure!(
        host_exe.is_file(),
        "no billiard-host at {}",
        host_exe.display()
    );
    let cli_exe = args.cli_exe.clone().unwrap_or_else(|| host_exe.clone());
    let cli_available = Command::new(&cli_exe)
        .args(["run", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    eprintln!(
        "[bench] mode {mode:?}, {runs} run(s), plugins {}, host {}, `billiard-host run` {}",
        plugin_dir.display(),
        host_exe.display(),
        if cli_available {
            "available"
        } else {
            "unavailable"
        }
    );
    let ctx = Ctx {
        plugin_dir: plugin_dir.clone(),
        host_exe: host_exe.clone(),
        cli_exe,
        start_method: args.start_method,
        sandbox: args.sandbox,
        runs,
        mode,
        w6_budget: args.w6_budget,
        cli_available,
        tmp_dir: out_dir.join("tmp"),
        cli_timeout: cli_timeout(mode),
    };
    let date = external::utc_now();
    let loadavg_before = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string();

    // 1. billiard-host.
    let cap = Duration::from_secs_f64(args.cap.unwrap_or(if args.dry_run { 120.0 } else { 900.0 }));
    let mut host = Vec::new();
    let host_jsonl = out_dir.join("results-host.jsonl");
    if let Some(f) = &args.host_jsonl {
        host = Record::parse_lines(&std::fs::read_to_string(f)?);
        host.retain(|r| wls.contains(&r.workload));
    }
    let mut hf = std::fs::File::create(&host_jsonl)?;
    for r in &host {
        writeln!(hf, "{}", r.to_line())?;
    }
    let base = match &args.baseline {
        Some(rev) => Some(baseline::prepare(
            &root,
            &target_dir(),
            rev,
            &PLUGIN_PACKAGES,
            args.no_build,
        )?),
        None => None,
    };
    let mut base_recs = Vec::new();
    for w in wls.iter().filter(|_| args.host_jsonl.is_none()) {
        let recs = match &base {
            None => {
                eprintln!("[bench] billiard-host {w}");
                run_child(args, &ctx, w, cap)?
            }
            Some(b) => {
                // One run per child, alternating which goes first.
                let one = |plugin_dir: &Path, host_exe: &Path| Ctx {
                    plugin_dir: plugin_dir.to_path_buf(),
                    host_exe: host_exe.to_path_buf(),
                    cli_exe: host_exe.to_path_buf(),
                    runs: 1,
                    ..ctx.clone()
                };
                let (ours_ctx, base_ctx) = (
                    Ctx {
                        cli_exe: ctx.cli_exe.clone(),
                        ..one(&ctx.plugin_dir, &ctx.host_exe)
                    },
                    one(&b.plugin_dir, &b.host_exe()),
                );
                let me = std::env::current_exe()?;
                let (mut ours, mut theirs) = (Vec::new(), Vec::new());
                for run in 0..runs {
                    eprintln!(
                        "[bench] {w} run {}/{runs}: this tree and {}",
                        run + 1,
                        b.rev
                    );
                    let order: [bool; 2] = if run % 2 == 0 {
                        [true, false]
                    } else {
                        [false, true]
                    };
                    for mine in order {
                        if mine {
                            ours.extend(run_child_of(&me, args, &ours_ctx, w, cap)?);
                        } else {
                            theirs.extend(run_child_of(&b.bench_exe, args, &base_ctx, w, cap)?);
                        }
                    }
                }
                base_recs.extend(baseline::merge(&theirs));
                baseline::merge(&ours)
            }
        };
        for r in recs {
            let line = r.to_line();
            println!("{line}");
            writeln!(hf, "{line}")?;
            host.push(r);
        }
    }
    if let Some(b) = &base {
        let t = baseline::table(&host, &base_recs, &b.rev);
        let md = format!(
            "# This tree ({}) against {} (`--baseline`)\n\nRuns interleaved, {runs} per side; value = median. Load average at start: {loadavg_before}; now: {}.\nCommand: `{}`\n\n{t}",
            git_state().unwrap_or_default(),
            b.rev,
            std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
            command_text(),
        );
        std::fs::write(out_dir.join("baseline.md"), &md)?;
        eprint!("{t}");
        eprintln!("[bench] wrote {}", out_dir.join("baseline.md").display());
    }
    let _ = std::fs::remove_dir(&ctx.tmp_dir);

    // 2. Python. It knows W1..W10 only (S1/S2 are billiard-host's own).
    let py_wls: Vec<String> = wls
        .iter()
        .filter(|w| !streaming::EXTRA_WORKLOADS.contains(&w.as_str()))
        .cloned()
        .collect();
    // Every N times this: the C limits and the Python side follow the mode.
    let scale = match mode {
        Mode::Full => 1.0,
        Mode::Quick => 0.1,
        Mode::Dry => 0.001,
    };
    let mut python = Vec::new();
    let mut py_versions = Value::Null;
    if let Some(f) = &args.python_jsonl {
        python = Record::parse_lines(&std::fs::read_to_string(f)?);
        python.retain(|r| wls.contains(&r.workload));
    } else if !args.skip_python && (!args.dry_run || args.external) && !py_wls.is_empty() {
        let venv = args
            .venv
            .clone()
            .unwrap_or_else(|| target_dir().join("bench-venv"));
        let py = venv::ensure(
            &args.python,
            &venv,
            &bench_dir.join("python").join("requirements.txt"),
        )?;
        py_versions = external::python_versions(&py);
        python = external::run_python(
            &py,
            &bench_dir.join("python").join("pyworkloads.py"),
            &py_wls,
            &external::PySettings {
                runs,
                scale,
                w6_budget: if mode == Mode::Dry {
                    args.w6_budget.min(5.0)
                } else {
                    args.w6_budget
                },
                cap: args.cap.unwrap_or(if args.dry_run { 120.0 } else { 900.0 }),
            },
            &out_dir.join("results-python.jsonl"),
        )?;
    }

    // 3. Machine limits.
    let mut limits = Vec::new();
    if let Some(f) = &args.limits_jsonl {
        limits = Record::parse_lines(&std::fs::read_to_string(f)?);
    } else if !args.skip_limits && (!args.dry_run || args.external) && !py_wls.is_empty() {
        limits = external::run_limits(
            &bench_dir.join("limits").join("limits.c"),
            &out_dir.join("limits-build"),
            runs,
            scale,
            &py_wls,
            &out_dir.join("results-limits.jsonl"),
        )?;
    }

    // 4. Report.
    let header = json!({
        "date": date,
        "machine": external::machine(),
        "loadavg_at_start": loadavg_before,
        "loadavg_at_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "versions": {
            "rustc": external::command_line("rustc", &["--version"]),
            "billiard_host": external::command_line(&host_exe.to_string_lossy(), &["--version"]),
            "python": py_versions.get("python").cloned().unwrap_or(Value::Null),
            "billiard": py_versions.get("billiard").cloned().unwrap_or(Value::Null),
            "git": git_state(),
            "cc": if limits.is_empty() || args.limits_jsonl.is_some() { None } else { external::command_line(&std::env::var("CC").unwrap_or_else(|_| "cc".into()), &["--version"]) },
        },
        "command": command_text(),
        "mode": format!("{mode:?}").to_lowercase(),
        "runs": runs,
        "workloads": wls,
        "start_method_rust": args.start_method.to_string(),
        "sandbox": args.sandbox.to_string(),
        "start_method_python": "fork",
        "cli_run_available": cli_available,
        "plugin_dir": plugin_dir,
        "python_results": args.python_jsonl.clone(),
        "limits_results": args.limits_jsonl.clone(),
        "host_results": args.host_jsonl.clone(),
    });
    let mut all = host.clone();
    all.extend(python.iter().cloned());
    all.extend(limits.iter().cloned());
    let rows = report::rows(&all);
    let md = render_markdown(&header, &rows, &host, &python, &limits);
    std::fs::write(out_dir.join("bench.md"), &md)?;
    let doc = json!({
        "header": header,
        "rows": rows,
        "results": all,
        "baseline": base.as_ref().map(|b| json!({ "rev": b.rev, "results": base_recs })),
    });
    std::fs::write(
        out_dir.join("bench.json"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    eprintln!(
        "[bench] wrote {} and {}",
        out_dir.join("bench.md").display(),
        out_dir.join("bench.json").display()
    );
    eprint!("{}", report::markdown_table(&rows));
    let bars = ratio_bars(&rows);
    if bars
        .iter()
        .any(|b| b.vs_billiard.is_some() || b.vs_multiprocessing.is_some())
    {
        let dir = out_dir.join("charts");
        std::fs::create_dir_all(&dir)?;
        charts::ratios_svg(
            &bars,
            &format!("billiard-host against billiard and multiprocessing ({date})"),
            &dir.join("ratios.svg"),
        )?;
        eprintln!("[bench] wrote {}", dir.join("ratios.svg").display());
    }

    // 5. Checks.
    let mut problems = Vec::new();
    for w in &wls {
        if !host.iter().any(|r| &r.workload == w && r.metric != "error") {
            problems.push(format!("{w}: no billiard-host result"));
        }
    }
    for r in &host {
        problems.extend(record::check(r));
    }
    if args.dry_run {
        // The written files must parse back.
        let back: Value =
            serde_json::from_str(&std::fs::read_to_string(out_dir.join("bench.json"))?)?;
        let n = back["results"].as_array().map(Vec::len).unwrap_or(0);
        let expected = host.len() + python.len() + limits.len();
        if n != expected {
            problems.push(format!("bench.json holds {n} results, expected {expected}"));
        }
        let reread = Record::parse_lines(&std::fs::read_to_string(&host_jsonl)?);
        if reread != host {
            problems.push("results-host.jsonl does not read back".into());
        }
        if rows.is_empty() || (wls.contains(&"W1".to_string()) && !md.contains("| W1 |")) {
            problems.push("the markdown table is empty".into());
        }
    }
    if problems.is_empty() {
        eprintln!("[bench] ok: {} billiard-host results", host.len());
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            eprintln!("[bench] problem: {p}");
        }
        Ok(ExitCode::from(1))
    }
}

/// The commit measured, and whether the sources differ from it
/// (`abc1234+dirty (host/src/pool/stream.rs, ...)`).
fn git_state() -> Option<String> {
    let root = workspace_root();
    let head = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    let dirty = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args([
            "status",
            "--porcelain",
            "--",
            "host",
            "plugin-api",
            "plugins",
            "bench",
        ])
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.get(3..).map(str::to_string))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    Some(if dirty.is_empty() {
        head
    } else {
        format!("{head}+dirty ({})", dirty.join(", "))
    })
}

/// The command line, as a `cargo run` line.
fn command_text() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!(
        "cargo run --release -p billiard-bench --bin bench -- {}",
        args.join(" ")
    )
    .trim_end()
    .to_string()
}

fn render_markdown(
    header: &Value,
    rows: &[report::Row],
    host: &[Record],
    python: &[Record],
    limits: &[Record],
) -> String {
    let s = |v: &Value| match v {
        Value::Null => "?".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let m = &header["machine"];
    let v = &header["versions"];
    let mut out = String::new();
    out += "# billiard-host benchmarks (W1–W10)\n\n";
    out += &format!(
        "Machine: {} cores, {} ({} MHz), {} GiB RAM, Linux {}. Load average at start: {}; at end: {}.\n",
        s(&m["nproc"]),
        s(&m["cpu_model"]),
        s(&m["cpu_mhz"]),
        s(&m["mem_gib"]),
        s(&m["kernel"]),
        s(&header["loadavg_at_start"]),
        s(&header["loadavg_at_end"]),
    );
    out += &format!(
        "Versions: {}; {} at {}; Python {}; billiard {}; cc: {}.\n",
        s(&v["rustc"]),
        s(&v["billiard_host"]),
        s(&v["git"]),
        s(&v["python"]),
        s(&v["billiard"]),
        s(&v["cc"]),
    );
    out += &format!(
        "Date: {}. Mode: {}, {} run(s) per workload (value = median). Start method: billiard-host {}, Python fork.\n",
        s(&header["date"]),
        s(&header["mode"]),
        s(&header["runs"]),
        s(&header["start_method_rust"]),
    );
    out += &format!("Command: `{}`\n\n", s(&header["command"]));
    out += "ratio = billiard-host vs billiard, oriented so that > 1 means billiard-host is better \
            (throughput: host / billiard; times, latencies, memory: billiard / host). \
            c-limit = the matching `bench/limits/limits.c` figure in the row's unit; fraction of limit = \
            host / limit for throughput, limit / host for times and sizes (1 = at the limit).\n\n";
    out += &report::markdown_table(rows);
    out += "\n## Raw results\n\n";
    out += &report::raw_table(host);
    if !python.is_empty() {
        out += &report::raw_table(python)
            .lines()
            .skip(2)
            .map(|l| format!("{l}\n"))
            .collect::<String>();
    }
    if !limits.is_empty() {
        out += "\n## Machine limits (bench/limits/limits.c)\n\n";
        out += &report::raw_table(limits);
    }
    out
}
