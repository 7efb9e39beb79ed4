//! `billiard-host run`'s output, byte for byte, against golden files made
//! by an earlier binary (before the CLI's fast path): a mixed input of ok
//! lines, every error kind a file can produce, lines that are not jobs and
//! per-line options (`tests/fixtures/cli_golden/mixed.jsonl`), run ordered,
//! chunked with prefetch, from standard input, unordered into a file, and
//! as single `--args` jobs.
//!
//! Compared exactly: every stdout byte, the exit status and the summary
//! line (its timing masked). Masked in the messages only: the digits of
//! `worker_lost` and `time_limit` messages (pids, job and worker ids, peak
//! memory, CPU time) and a panic's source location, which no CLI change
//! can affect.
//!
//! To regenerate the golden files (only when the contract changes on
//! purpose): `BILLIARD_GOLDEN_BLESS=/path/to/billiard-host
//! BILLIARD_GOLDEN_PLUGINS=/dir/with/the/plugins cargo test -p billiard-host
//! --test integration -- cli_golden::`.

use crate::common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{host_command, plugin};

fn fixtures() -> PathBuf {
    common::workspace_root().join("tests/fixtures/cli_golden")
}

/// The binary under test and the plugins it loads, or (blessing) the
/// binary and plugins the golden files come from.
fn setup() -> (Command, PathBuf, bool) {
    match std::env::var_os("BILLIARD_GOLDEN_BLESS") {
        Some(exe) => {
            let dir = std::env::var_os("BILLIARD_GOLDEN_PLUGINS")
                .map(PathBuf::from)
                .expect("BILLIARD_GOLDEN_PLUGINS names the plugins' directory");
            let mut cmd = Command::new(exe);
            cmd.env_remove("RUST_LOG");
            (cmd, dir, true)
        }
        None => {
            let dir = plugin("math").parent().unwrap().to_path_buf();
            (host_command(), dir, false)
        }
    }
}

fn so(dir: &Path, name: &str) -> String {
    dir.join(format!("libbilliard_{name}.so"))
        .to_string_lossy()
        .into_owned()
}

/// Masks what differs from run to run in a result line (see the module
/// docs); every other byte stays.
fn mask_line(line: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return line.to_string();
    };
    let kind = v["error"]["kind"].as_str().unwrap_or("");
    let message = v["error"]["message"].as_str().unwrap_or("");
    let masked = match kind {
        // Each run of digits becomes one `#`.
        "worker_lost" | "time_limit" => {
            let mut out = String::new();
            for c in message.chars() {
                if !c.is_ascii_digit() {
                    out.push(c);
                } else if !out.ends_with('#') {
                    out.push('#');
                }
            }
            out
        }
        "panic" => match message.rfind(" (at ") {
            Some(at) => format!("{} (at …)", &message[..at]),
            None => message.to_string(),
        },
        _ => return line.to_string(),
    };
    if masked == message {
        return line.to_string();
    }
    let mut v = v;
    v["error"]["message"] = serde_json::Value::String(masked);
    format!("{v} [masked]")
}

fn mask(stdout: &[u8]) -> String {
    let text = String::from_utf8(stdout.to_vec()).expect("the output is UTF-8");
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        out.push_str(&mask_line(body));
        out.push_str(nl);
    }
    out
}

/// The summary line with its timing masked: `N jobs: ... in Xs (Y jobs/s)`.
fn summary(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let line = text
        .lines()
        .find(|l| l.contains(" jobs: ") || l.contains(" job: "))
        .unwrap_or("");
    match line.rfind(" in ") {
        Some(at) => format!("{} in …", &line[..at]),
        None => line.to_string(),
    }
}

struct Case {
    name: &'static str,
    args: Vec<String>,
    stdin: Option<PathBuf>,
    /// `--output FILE` (unordered: compared with its lines sorted).
    output: bool,
    sort: bool,
}

fn cases(dir: &Path) -> Vec<Case> {
    let input = fixtures().join("mixed.jsonl");
    let input_s = input.to_string_lossy().into_owned();
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec![
            so(dir, "math"),
            "--plugin".into(),
            so(dir, "faults"),
            "--plugin".into(),
            so(dir, "bytes"),
            "--task".into(),
            "math.square".into(),
            "-w".into(),
            "2".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let one = |job: &str| -> Vec<String> {
        vec![
            so(dir, "math"),
            "--plugin".into(),
            so(dir, "bytes"),
            "--task".into(),
            "square".into(),
            "--args".into(),
            job.into(),
        ]
    };
    vec![
        Case {
            name: "ordered",
            args: base(&["--input", &input_s]),
            stdin: None,
            output: false,
            sort: false,
        },
        Case {
            name: "chunked",
            args: base(&["--input", &input_s, "--chunksize", "7", "--prefetch", "2"]),
            stdin: None,
            output: false,
            sort: false,
        },
        Case {
            name: "stdin",
            args: base(&["--input", "-", "--chunksize", "1000"]),
            stdin: Some(input.clone()),
            output: false,
            sort: false,
        },
        Case {
            name: "unordered",
            args: base(&["--input", &input_s, "--unordered", "--chunksize", "3"]),
            stdin: None,
            output: true,
            sort: true,
        },
        Case {
            name: "one_ok",
            args: one("[3]"),
            stdin: None,
            output: false,
            sort: false,
        },
        Case {
            name: "one_object",
            args: one(r#"{"task": "echo", "args": [[1, 2, 3]], "time_limit": "2s"}"#),
            stdin: None,
            output: false,
            sort: false,
        },
        Case {
            name: "one_bad_args",
            args: one(r#"["x"]"#),
            stdin: None,
            output: false,
            sort: false,
        },
        Case {
            name: "one_not_json",
            args: one("not json"),
            stdin: None,
            output: false,
            sort: false,
        },
    ]
}

/// What one case produced, in the golden file's form.
fn produce(cmd: &mut Command, case: &Case, scratch: &Path) -> String {
    cmd.arg("run")
        .args(&case.args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("BILLIARD_BACKTRACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out_file = scratch.join(format!("{}.out", case.name));
    if case.output {
        cmd.arg("--output").arg(&out_file);
    }
    cmd.stdin(if case.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().expect("billiard-host starts");
    if let Some(path) = &case.stdin {
        let bytes = std::fs::read(path).unwrap();
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(&bytes).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = if case.output {
        std::fs::read(&out_file).unwrap()
    } else {
        out.stdout.clone()
    };
    let mut text = mask(&stdout);
    if case.sort {
        let index = |l: &str| -> u64 {
            serde_json::from_str::<serde_json::Value>(l.trim_end_matches(" [masked]"))
                .ok()
                .and_then(|v| v["index"].as_u64())
                .unwrap_or(u64::MAX)
        };
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_by_key(|l| index(l));
        text = lines.join("\n") + "\n";
    }
    format!(
        "exit status: {:?}\nsummary: {}\n--- stdout\n{text}",
        out.status.code(),
        summary(&out.stderr)
    )
}

#[test]
fn run_output_is_byte_for_byte_the_golden_output() {
    let (_, dir, bless) = setup();
    let scratch = common::scratch("golden");
    let mut failures = Vec::new();
    for case in cases(&dir) {
        let (mut cmd, _, _) = setup();
        let got = produce(&mut cmd, &case, &scratch);
        // Kept for a look with `diff` when the comparison fails.
        std::fs::write(scratch.join(format!("{}.got", case.name)), &got).unwrap();
        let golden = fixtures().join(format!("{}.golden", case.name));
        if bless {
            std::fs::write(&golden, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&golden)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", golden.display()));
        if got != want {
            let diff: Vec<String> = want
                .lines()
                .zip(got.lines())
                .enumerate()
                .filter(|(_, (a, b))| a != b)
                .take(5)
                .map(|(i, (a, b))| format!("line {}:\n  want {a:.300}\n  got  {b:.300}", i + 1))
                .collect();
            failures.push(format!(
                "{}: output differs ({} vs {} lines)\n{}",
                case.name,
                want.lines().count(),
                got.lines().count(),
                diff.join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
