//! Bad input, for the CLI and the library: every case gets a clear
//! message and the right exit code (or error kind), and the other jobs of
//! the same batch keep their results. Complements the cases already in
//! `cli_run.rs` (missing files, usage errors, bad lines, invalid UTF-8),
//! `cli_inspect.rs` and `pool.rs` (refused plugins, wrong argument types).

use crate::common;

use std::io::Write;
use std::process::{Output, Stdio};

use billiard_host::{Codec, ErrorKind, Limits, Pool, PoolBuilder, TaskRef};
use common::{exit_code, host_command, kind, plugin_str, scratch, stderr, stdout};
use serde_json::Value;

fn run(args: &[&str]) -> Output {
    run_with(args, None)
}

fn run_with(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = host_command();
    cmd.arg("run")
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("billiard-host starts");
    if let Some(bytes) = stdin {
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn is_root() -> bool {
    // The effective uid is the second number of the `Uid:` line.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Runs `args` and checks a refusal: exit 2, nothing on stdout, one
/// `error: ` message on stderr holding every needle, and no panic.
fn assert_refused(args: &[&str], needles: &[&str]) {
    let out = run(args);
    let err = stderr(&out);
    assert_eq!(exit_code(&out), 2, "{args:?}: {err}");
    assert_eq!(stdout(&out), "", "{args:?}");
    assert!(err.starts_with("error: "), "{args:?}: {err}");
    assert!(!err.contains("panicked at"), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: want {n:?} in: {err}");
    }
}

// ----- the CLI --------------------------------------------------------------

#[test]
fn plugins_that_cannot_be_run_exit_2_naming_file_and_reason() {
    let dir = scratch("plugins");
    let text = common::write_file(&dir, "notes.so", b"not an ELF file\n");
    let empty = common::write_file(&dir, "empty.so", b"");
    let exe = common::bin().to_string_lossy().into_owned();
    let dirpath = dir.to_string_lossy().into_owned();
    let version = plugin_str("abi-version-mismatch");
    let init = plugin_str("init-panic");
    let m = plugin_str("math");
    let mut cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec![&dirpath], vec![&dirpath, "directory"]),
        (vec![&text], vec!["notes.so", "ELF"]),
        (vec![&empty], vec!["empty.so"]),
        (vec![&exe], vec!["billiard-host"]),
        (vec![&version], vec!["abi_version_mismatch", "ABI version"]),
        (vec![&init], vec!["init_panic"]),
        (vec![&m, "--plugin", &dirpath], vec![&dirpath]),
    ];
    let lib = common::system_library().map(|p| p.to_string_lossy().into_owned());
    if let Some(lib) = &lib {
        cases.push((vec![lib.as_str()], vec!["libm", "plugin"]));
    }
    for (plugins, needles) in cases {
        let mut args = plugins.clone();
        args.extend(["--task", "square", "--args", "[1]"]);
        assert_refused(&args, &needles);
        // The same with a batch: nothing runs, nothing is written.
        let mut args = plugins;
        args.extend(["--task", "square", "--input", "-", "-q"]);
        let out = run_with(&args, Some(b"[1]\n[2]\n"));
        assert_eq!(exit_code(&out), 2, "{args:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "");
    }
}

#[test]
fn an_unreadable_plugin_or_input_exits_2() {
    if is_root() {
        // Permission bits do not stop root (these tests run as root in CI):
        // a chmod 000 file stays readable, so there is nothing to refuse.
        eprintln!("skipped: running as root, chmod 000 does not make a file unreadable");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("unreadable");
    let plugin = dir.join("libmath.so");
    std::fs::copy(common::plugin("math"), &plugin).unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o000)).unwrap();
    let input = common::write_file(&dir, "jobs.jsonl", b"[1]\n");
    std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o000)).unwrap();
    let p = plugin.to_string_lossy().into_owned();
    assert_refused(&[&p, "--task", "square", "--args", "[1]"], &["libmath.so"]);
    let m = plugin_str("math");
    assert_refused(
        &[&m, "--task", "square", "--input", &input],
        &["jobs.jsonl", "ermission"],
    );
}

#[test]
fn unusable_input_and_output_paths_exit_2() {
    let dir = scratch("paths");
    let m = plugin_str("math");
    let input = common::write_file(&dir, "jobs.jsonl", b"[1]\n");
    let d = dir.to_string_lossy().into_owned();
    // A directory as input: nothing to run, a clear reason.
    assert_refused(
        &[&m, "--task", "square", "--input", &d, "-q"],
        &[&d, "directory"],
    );
    // Output and stats files that cannot be created.
    for (flag, path) in [
        ("--output", d.as_str()),
        ("--output", "/proc/nonexistent/x"),
        ("--stats-json", d.as_str()),
        ("--stats-json", "/proc/nonexistent/stats.json"),
    ] {
        assert_refused(
            &[&m, "--task", "square", "--input", &input, flag, path],
            &[path],
        );
    }
}

#[test]
fn bad_numbers_and_limits_exit_2_naming_the_flag() {
    let dir = scratch("flags");
    let input = common::write_file(&dir, "jobs.jsonl", b"[1]\n");
    let m = plugin_str("math");
    let cases: &[(&str, &str)] = &[
        ("--workers", "-1"),
        ("--workers", "abc"),
        ("--workers", ""),
        ("--workers", "513"),
        ("--workers", "99999999999999999999999"),
        ("--chunksize", "-3"),
        ("--prefetch", "0"),
        ("--max-tasks-per-child", "0"),
        ("--max-tasks-per-child", "ten"),
        ("--time-limit", "abc"),
        ("--time-limit", "0s"),
        ("--time-limit", "-1s"),
        ("--soft-time-limit", "abc"),
        ("--soft-time-limit", "5 parsecs"),
        ("--max-memory-per-child", "12zz"),
        ("--max-memory-per-child", "0"),
        ("--address-space-limit", "12zz"),
        ("--address-space-limit", "-5GiB"),
        ("--start-method", ""),
    ];
    for (flag, value) in cases {
        let out = run(&[&m, "--task", "square", "--input", &input, flag, value]);
        let err = stderr(&out);
        assert_eq!(exit_code(&out), 2, "{flag} {value:?}: {err}");
        assert_eq!(stdout(&out), "", "{flag} {value:?}");
        // clap names the flag, or (for a value that looks like a flag)
        // the value and how to pass it.
        let named = if value.starts_with('-') {
            "unexpected argument"
        } else {
            flag
        };
        assert!(err.contains(named), "{flag} {value:?}: {err}");
        assert!(!err.contains("panicked at"), "{flag} {value:?}: {err}");
    }
    // The largest pool the CLI allows is accepted.
    let out = run(&[
        &m,
        "--task",
        "square",
        "--args",
        "[3]",
        "--workers",
        "512",
        "-q",
    ]);
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "{\"index\":0,\"ok\":9}\n");
}

#[test]
fn empty_and_blank_input_is_zero_jobs_and_success() {
    let dir = scratch("empty");
    let m = plugin_str("math");
    for (name, bytes) in [("empty.jsonl", &b""[..]), ("blank.jsonl", b"\n\n   \n\t\n")] {
        let input = common::write_file(&dir, name, bytes);
        let out = run(&[&m, "--task", "square", "--input", &input]);
        assert_eq!(exit_code(&out), 0, "{name}: {}", stderr(&out));
        assert_eq!(stdout(&out), "", "{name}");
        assert!(
            stderr(&out).starts_with("0 jobs"),
            "{name}: {}",
            stderr(&out)
        );
    }
    let out = run_with(&[&m, "--task", "square", "--input", "-", "-q"], Some(b""));
    assert_eq!(exit_code(&out), 0);
    assert_eq!(stdout(&out), "");
}

#[test]
fn input_without_a_final_newline_and_with_crlf_runs_every_line() {
    let m = plugin_str("math");
    let out = run_with(
        &[&m, "--task", "square", "--input", "-", "-q"],
        Some(b"[2]\r\n[3]\r\n[4]"),
    );
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "{\"index\":0,\"ok\":4}\n{\"index\":1,\"ok\":9}\n{\"index\":2,\"ok\":16}\n"
    );
    // A last line cut in the middle of its JSON: that line is bad_args.
    let out = run_with(
        &[&m, "--task", "square", "--input", "-", "-q"],
        Some(b"[2]\n[3"),
    );
    assert_eq!(exit_code(&out), 1, "{}", stderr(&out));
    let rs = json_results(&out);
    assert_eq!(rs.len(), 2);
    assert_eq!(rs[0]["ok"], 4);
    assert_eq!(kind(&rs[1]), "bad_args");
}

#[test]
fn wrong_argument_types_and_counts_fail_only_their_own_line() {
    let m = plugin_str("math");
    let lines: &[(&str, &str)] = &[
        ("[5]", "ok"),
        ("[]", "bad_args"),
        ("[-1]", "bad_args"),
        ("[1.5]", "bad_args"),
        ("[null]", "bad_args"),
        ("[true]", "bad_args"),
        ("[18446744073709551616]", "bad_args"),
        ("[[1]]", "bad_args"),
        ("[{\"x\": 1}]", "bad_args"),
        ("[1, 2, 3]", "bad_args"),
        ("3", "bad_args"),
        ("\"x\"", "bad_args"),
        ("null", "bad_args"),
        ("[1] [2]", "bad_args"),
        ("[1]]", "bad_args"),
        ("\u{0}", "bad_args"),
        ("{\"task\": \"add\", \"args\": [1]}", "bad_args"),
        ("{\"task\": \"add\", \"args\": [1, \"2\"]}", "bad_args"),
        ("{\"task\": \"add\", \"args\": null}", "bad_args"),
        (
            "{\"task\": \"add\", \"args\": [1, 2], \"time_limit\": \"abc\"}",
            "bad_args",
        ),
        (
            "{\"task\": \"add\", \"args\": [1, 2], \"soft_time_limit\": 5}",
            "bad_args",
        ),
        ("{\"task\": 7}", "bad_args"),
        ("{\"task\": \"\"}", "unknown_task"),
        ("{\"task\": \"math.nope\"}", "unknown_task"),
        ("{\"task\": \"nope.square\", \"args\": [2]}", "unknown_task"),
        ("{\"task\": \"add\", \"args\": [1, 2]}", "ok"),
        ("[6]", "ok"),
    ];
    let input: String = lines.iter().map(|(l, _)| format!("{l}\n")).collect();
    let out = run_with(
        &[&m, "--task", "square", "--input", "-", "-q", "-w", "2"],
        Some(input.as_bytes()),
    );
    assert_eq!(exit_code(&out), 1, "{}", stderr(&out));
    let rs = json_results(&out);
    assert_eq!(rs.len(), lines.len(), "one result per line");
    for (i, ((line, want), r)) in lines.iter().zip(&rs).enumerate() {
        assert_eq!(r["index"], i, "{line}");
        assert_eq!(kind(r), *want, "{line}: {r}");
        if *want != "ok" {
            let msg = r["error"]["message"].as_str().unwrap();
            assert!(!msg.is_empty() && msg.len() < 2000, "{line}: {msg}");
        }
    }
    assert_eq!(rs[0]["ok"], 25);
    assert_eq!(rs[lines.len() - 2]["ok"], 3);
    assert_eq!(rs[lines.len() - 1]["ok"], 36);
}

/// A 50 MB line, a line with ten million arguments and lines nested a
/// hundred thousand deep: each fails alone with a short message, in flat
/// memory, and the lines around them run.
#[test]
fn huge_and_deeply_nested_lines_fail_alone_with_short_messages() {
    let dir = scratch("huge");
    let mut text = Vec::new();
    text.extend_from_slice(b"[1]\n[\"");
    text.extend(std::iter::repeat_n(b'x', 50 << 20));
    text.extend_from_slice(b"\"]\n[");
    for _ in 0..2_000_000 {
        text.extend_from_slice(b"1,");
    }
    text.extend_from_slice(b"1]\n{\"args\": ");
    text.extend(std::iter::repeat_n(b'[', 100_000));
    text.extend(std::iter::repeat_n(b']', 100_000));
    text.extend_from_slice(b"}\n");
    text.extend(std::iter::repeat_n(b'[', 100_000));
    text.extend(std::iter::repeat_n(b']', 100_000));
    text.extend_from_slice(b"\n[2]");
    let input = common::write_file(&dir, "huge.jsonl", &text);
    drop(text);
    let m = plugin_str("math");
    let out = run(&[&m, "--task", "square", "--input", &input, "-q", "-w", "2"]);
    assert_eq!(exit_code(&out), 1, "{}", stderr(&out));
    assert!(
        out.stdout.len() < 64 * 1024,
        "the results echo the input: {} bytes",
        out.stdout.len()
    );
    let rs = json_results(&out);
    let kinds: Vec<&str> = rs.iter().map(kind).collect();
    assert_eq!(
        kinds,
        ["ok", "bad_args", "bad_args", "bad_args", "bad_args", "ok"]
    );
    assert!(
        rs[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bytes omitted"),
        "{}",
        rs[1]
    );
    assert_eq!(rs[5]["ok"], 4);
}

#[test]
fn two_plugins_with_the_same_name_are_refused() {
    let m = plugin_str("math");
    assert_refused(
        &[&m, "--plugin", &m, "--task", "square", "--args", "[2]"],
        &["math", "twice"],
    );
}

// ----- the library ----------------------------------------------------------

fn builder(workers: usize) -> PoolBuilder {
    common::pool_builder(workers, &["math", "faults"])
}

#[test]
fn the_builder_refuses_bad_plugins_and_settings_clearly() {
    let dir = scratch("builder");
    let text = common::write_file(&dir, "notes.so", b"hello");
    let cases: Vec<(PoolBuilder, Vec<String>)> = vec![
        (
            Pool::builder().worker_exe(common::bin()).plugin(&dir),
            vec![dir.to_string_lossy().into_owned(), "directory".into()],
        ),
        (
            Pool::builder().worker_exe(common::bin()).plugin(&text),
            vec!["notes.so".into(), "ELF".into()],
        ),
        (
            Pool::builder()
                .worker_exe(common::bin())
                .plugin(common::plugin("abi-layout-mismatch")),
            vec!["abi_layout_mismatch".into()],
        ),
        (
            Pool::builder().worker_exe(common::bin()),
            vec!["no plugin".into()],
        ),
        (builder(100_000), vec!["at most".into()]),
        (
            builder(1).worker_exe(dir.join("no-such-exe")),
            vec!["no-such-exe".into()],
        ),
        (
            builder(1).plugin(common::plugin("math")),
            vec!["math".into(), "twice".into()],
        ),
    ];
    for (b, needles) in cases {
        let e = b.build().err().expect("refused").to_string();
        for n in &needles {
            assert!(e.contains(n.as_str()), "want {n:?} in: {e}");
        }
    }
}

#[test]
fn bad_jobs_fail_alone_in_a_working_pool() {
    let pool = builder(2).max_frame(64 * 1024).build().unwrap();
    let math = pool.task_ref("math", "square").unwrap();
    let add = pool.task_ref("math", "add").unwrap();
    let raw = |t: TaskRef, codec: Codec, bytes: &[u8]| {
        pool.apply_raw(t, codec, bytes.to_vec(), Limits::default())
            .unwrap()
    };
    let bad: Vec<(billiard_host::RawResult, ErrorKind, &str)> = vec![
        (raw(math, Codec::Json, b""), ErrorKind::BadArgs, "square"),
        (
            raw(math, Codec::Json, b"[\xff]"),
            ErrorKind::BadArgs,
            "square",
        ),
        (raw(math, Codec::Json, b"[1,"), ErrorKind::BadArgs, "square"),
        (raw(add, Codec::Json, b"[1]"), ErrorKind::BadArgs, "add"),
        (raw(math, Codec::Bincode, b""), ErrorKind::BadArgs, "square"),
        (
            raw(math, Codec::Bincode, &[253, 0xff]),
            ErrorKind::BadArgs,
            "square",
        ),
        (
            raw(math, Codec::Bincode, &[253, 0, 0, 0, 0, 0, 1, 0, 0, 9]),
            ErrorKind::BadArgs,
            "trailing",
        ),
        (
            raw(TaskRef::raw(0, 999), Codec::Json, b"[1]"),
            ErrorKind::UnknownTask,
            "",
        ),
        (
            raw(TaskRef::raw(77, 0), Codec::Json, b"[1]"),
            ErrorKind::UnknownTask,
            "77",
        ),
        (
            raw(math, Codec::Json, &vec![b' '; 100 * 1024]),
            ErrorKind::BadArgs,
            "frame limit",
        ),
    ];
    let good: Vec<_> = (0..50u64)
        .map(|i| pool.apply_async::<_, u64>("math", "square", (i,)).unwrap())
        .collect();
    // Typed calls with the wrong shape of arguments.
    let e = pool
        .apply::<_, u64>("math", "square", (1u64, 2u64))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadArgs, "{e}");
    let e = pool.apply::<_, i64>("math", "add", ()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadArgs, "{e}");
    let e = pool
        .apply::<_, f64>("math", "sum", (vec!["a".to_string()],))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadArgs, "{e}");
    for (r, want, needle) in bad {
        let e = r.get().unwrap_err();
        assert_eq!(e.kind, want, "{e}");
        assert!(e.message.contains(needle), "want {needle:?} in: {e}");
        assert!(e.message.len() < 2000, "{e}");
    }
    for (i, h) in good.iter().enumerate() {
        assert_eq!(h.get().unwrap(), (i * i) as u64);
    }
    let stats = pool.stats().unwrap();
    assert_eq!(
        stats.worker_deaths, 0,
        "bad input costs no worker: {stats:?}"
    );
    pool.join().unwrap();
}

/// The result lines on a finished run's stdout.
fn json_results(out: &Output) -> Vec<Value> {
    common::json_lines(&stdout(out))
}
