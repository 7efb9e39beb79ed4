//! The JSON byte-string form of `Vec<u8>` arguments and results through
//! `billiard-host run`: `{"$bytes": "<base64>"}` arguments decode to the
//! same bytes as arrays of numbers, `--bytes base64` writes byte results in
//! that form (and only then), and a bad byte string is `bad_args` for its
//! line only.

use crate::common;

use std::process::{Output, Stdio};

use base64::Engine;
use common::{exit_code, host_command, plugin_str, scratch, stderr, stdout};
use serde_json::{json, Value};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Bytes that are not text (every value, in a scrambled order).
fn payload(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i.wrapping_mul(151) ^ (i >> 8)) as u8)
        .collect()
}

fn run(args: &[&str]) -> Output {
    host_command()
        .arg("run")
        .arg(plugin_str("bytes"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn results(out: &Output) -> Vec<Value> {
    common::json_lines(&stdout(out))
}

#[test]
fn base64_arguments_decode_to_the_same_bytes_as_arrays() {
    let dir = scratch("args");
    let data = payload(100_000);
    let as_array = serde_json::to_string(&json!([data])).unwrap();
    let as_b64 = format!(r#"[{{"$bytes": "{}"}}]"#, b64(&data));
    let unpadded = format!(
        r#"[{{"$bytes":"{}"}}]"#,
        b64(&data[..10]).trim_end_matches('=')
    );
    let object = format!(r#"{{"args": [{{"$bytes": "{}"}}]}}"#, b64(&data[..7]));
    let small_array = serde_json::to_string(&json!([data[..7].to_vec()])).unwrap();
    let lines = [
        as_array.as_str(),
        as_b64.as_str(),
        unpadded.as_str(),
        r#"[{"$bytes": ""}]"#,
        object.as_str(),
        small_array.as_str(),
    ];
    let input = common::lines_file(&dir, "jobs.jsonl", &lines);
    for chunksize in ["1", "3"] {
        let run_task = |task: &str| {
            let out = run(&[
                "--task",
                task,
                "--input",
                &input,
                "--chunksize",
                chunksize,
                "-q",
            ]);
            assert_eq!(exit_code(&out), 0, "stderr: {}", stderr(&out));
            results(&out)
        };
        let lens: Vec<Value> = run_task("len").iter().map(|r| r["ok"].clone()).collect();
        assert_eq!(lens, [100_000, 100_000, 10, 0, 7, 7].map(|n| json!(n)));
        // The checksum of the array form is that of the base64 form.
        let sums = run_task("checksum");
        assert_eq!(sums[0]["ok"], sums[1]["ok"], "{sums:?}");
        assert_eq!(
            sums[4]["ok"], sums[5]["ok"],
            "an object line's args take the form too"
        );
        assert_ne!(sums[0]["ok"], sums[4]["ok"]);
    }
}

#[test]
fn byte_results_are_base64_only_with_the_flag() {
    let data = payload(3000);
    let line = format!(r#"[{{"$bytes": "{}"}}]"#, b64(&data));
    let out = run(&["--task", "echo", "--args", &line, "--bytes", "base64"]);
    assert_eq!(exit_code(&out), 0, "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("{{\"index\":0,\"ok\":{{\"$bytes\":\"{}\"}}}}\n", b64(&data))
    );
    // Result<Vec<u8>, String> too; and errors stay errors.
    let out = run(&["--task", "make", "--args", "[4, 255]", "--bytes", "base64"]);
    assert_eq!(
        stdout(&out),
        "{\"index\":0,\"ok\":{\"$bytes\":\"/////w==\"}}\n"
    );
    // Without the flag (or with --bytes array): arrays of numbers, as before.
    for extra in [&[][..], &["--bytes", "array"][..]] {
        let mut args = vec!["--task", "echo", "--args", r#"[{"$bytes": "aGk="}]"#];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert_eq!(stdout(&out), "{\"index\":0,\"ok\":[104,105]}\n");
    }
    // Only byte results change: a number result stays a number.
    let out = run(&["--task", "len", "--args", "[[1, 2]]", "--bytes", "base64"]);
    assert_eq!(stdout(&out), "{\"index\":0,\"ok\":2}\n");
    // A file of echoes, chunked, round-trips every line.
    let dir = scratch("results");
    let lines: Vec<String> = (0..20)
        .map(|i| format!(r#"[{{"$bytes": "{}"}}]"#, b64(&payload(i * 37))))
        .collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let input = common::lines_file(&dir, "jobs.jsonl", &refs);
    let out = run(&[
        "--task",
        "echo",
        "--input",
        &input,
        "--bytes",
        "base64",
        "--chunksize",
        "6",
        "-q",
    ]);
    assert_eq!(exit_code(&out), 0, "stderr: {}", stderr(&out));
    for (i, r) in results(&out).iter().enumerate() {
        assert_eq!(r["index"], i as u64);
        assert_eq!(r["ok"]["$bytes"], b64(&payload(i * 37)), "line {i}");
    }
    let out = run(&["--task", "echo", "--args", "[[1]]", "--bytes", "hex"]);
    assert_eq!(exit_code(&out), 2, "an unknown form is a usage error");
}

#[test]
fn a_bad_byte_string_is_bad_args_for_its_line_only() {
    let dir = scratch("bad");
    let input = common::lines_file(
        &dir,
        "jobs.jsonl",
        &[
            r#"[{"$bytes": "aGk="}]"#,
            r#"[{"$bytes": "not base64!"}]"#,
            r#"[{"bytes": "aGk="}]"#,
            r#"[{"$bytes": "aGk=", "more": 1}]"#,
            r#"[{"$bytes": 12}]"#,
            r#"[{"$bytes": "aGk="}, 2]"#,
            r#"[[1, 2, 3]]"#,
        ],
    );
    let out = run(&["--task", "len", "--input", &input, "-q"]);
    assert_eq!(exit_code(&out), 1);
    let rs = results(&out);
    assert_eq!(rs.len(), 7);
    assert_eq!(rs[0]["ok"], 2);
    assert_eq!(rs[6]["ok"], 3);
    for (i, want) in [
        (1, "\"$bytes\" is not base64"),
        (2, "expected a byte string {\"$bytes\": \"<base64>\"}"),
        (3, "has no other fields"),
        (4, "expected a base64 string"),
        (5, "expects 1 argument, got 2"),
    ] {
        assert_eq!(rs[i]["error"]["kind"], "bad_args", "{}", rs[i]);
        let msg = rs[i]["error"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "line {}: {msg}", i + 1);
        assert!(msg.starts_with(&format!("line {}: ", i + 1)), "{msg}");
    }
}
