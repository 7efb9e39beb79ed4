//! Regression tests of the adversarial report's "Other UX problems"
//! (../shared/reports/adversarial-2026-12-01.md) that no B-number covers.

mod common;

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
