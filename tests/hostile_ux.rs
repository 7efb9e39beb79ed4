//! Regression tests of the adversarial report's "Other UX problems"
//! (../shared/reports/adversarial-2026-12-01.md) that no B-number covers.

use crate::common;

use std::process::Stdio;

use common::{exit_code, host_command, json_lines, plugin_str, scratch, stderr, stdout};

/// Log lines on stderr carried ANSI colour codes even when stderr was a
/// file or a pipe (`\x1b[2m2026-...\x1b[31mERROR`). A task that kills its
/// zygote makes the supervisor log an ERROR; with stderr captured (not a
/// terminal) the line must be plain text.
#[test]
fn log_lines_have_no_colour_codes_when_stderr_is_not_a_terminal() {
    let dir = scratch("ux-ansi");
    let input = common::lines_file(
        &dir,
        "kill.jsonl",
        &[
            r#"{"task":"kill_parent","args":[9]}"#,
            r#"{"task":"nap","args":[10]}"#,
            r#"{"task":"nap","args":[10]}"#,
        ],
    );
    let out = host_command()
        .args(["run", &plugin_str("hostile"), "--input", &input, "-w", "1"])
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .output()
        .expect("run billiard-host");
    let err = stderr(&out);
    assert_eq!(exit_code(&out), 0, "{err}");
    assert_eq!(json_lines(&stdout(&out)).len(), 3, "{err}");
    assert!(
        err.contains("ERROR") && err.contains("zygote"),
        "the zygote's death is logged: {err}"
    );
    assert!(
        !err.contains('\u{1b}'),
        "no ANSI escape codes in a captured stderr: {err:?}"
    );
}

#[test]
fn a_byte_order_mark_at_the_start_of_the_input_is_not_part_of_the_first_job() {
    let dir = common::scratch("bom");
    let input = common::write_file(&dir, "bom.jsonl", b"\xEF\xBB\xBF[3]\n[4]\n");
    let out = common::host([
        "run",
        common::plugin_str("math").as_str(),
        "--task",
        "square",
        "--input",
        input.as_str(),
        "-q",
    ]);
    assert_eq!(common::exit_code(&out), 0, "{}", common::stderr(&out));
    let res = common::json_lines(&common::stdout(&out));
    assert_eq!(res[0]["ok"], 9);
    assert_eq!(res[1]["ok"], 16);
}

#[test]
fn a_crash_report_keeps_the_dying_message_ahead_of_a_long_backtrace() {
    let out = common::host([
        "run",
        common::plugin_str("hostile").as_str(),
        "--task",
        "die_noisily",
        "--args",
        "[40]",
    ]);
    let res = common::json_lines(&common::stdout(&out));
    let msg = res[0]["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(res[0]["error"]["kind"], "worker_lost", "{msg}");
    assert!(
        msg.contains("memory allocation of 21474836480 bytes failed"),
        "{msg}"
    );
    assert!(
        msg.contains("39: some::deep::frame"),
        "the tail is kept too: {msg}"
    );
}
