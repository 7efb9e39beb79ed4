//! A task's own account of its failure (issue 23 item 2, issue 29 item 2):
//! `billiard_plugin_api::Failure` with a Python exception class and a
//! directive (retry, reject, ignore) crosses the plugin boundary on every
//! path (an in-process call, a pool's single job, a chunked `map`, a
//! `Process`, the CLI's result line, a Celery result a Python client
//! catches by class); a plugin built before it keeps reading as it did; a
//! plugin that forges or garbles the encoding gets a plain `task_error`;
//! `#[task(...)]` registration options reach `inspect --json`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use billiard_host::retry::RetryPolicy;
use billiard_host::{Directive, ErrorKind, ExceptionClass, Plugin, Pool, Process, TaskError};
use common::{host, host_command, json_lines, plugin, plugin_str, scratch, stdout, workspace_root};
use serde_json::json;

fn class(module: &str, name: &str) -> ExceptionClass {
    ExceptionClass {
        module: module.into(),
        name: name.into(),
    }
}

fn raise_as(cls: &str, msg: &str) -> (String, String) {
    (cls.to_string(), msg.to_string())
}

/// The malformed-detail message's start (see `TaskError::from_plugin_output`).
const MALFORMED: &str = "the plugin's failure detail is malformed (";

#[test]
fn k23_a_failure_crosses_every_path() {
    let faults = plugin("faults");
    // In this process.
    let p = Plugin::load(&faults).expect("faults loads");
    assert!(p.writes_failure_detail());
    let e = p
        .call::<_, u64>("raise_as", raise_as("ValueError", "bad input"))
        .expect_err("fails");
    assert_eq!(
        (e.kind, e.message.as_str()),
        (ErrorKind::TaskError, "bad input")
    );
    assert_eq!(e.exception_class(), Some(&class("builtins", "ValueError")));
    assert_eq!(e.directive(), None);

    // A pool's single jobs.
    let pool = Pool::builder()
        .workers(2)
        .plugin(&faults)
        .build()
        .expect("pool");
    let e = pool
        .apply::<_, u64>(
            "faults",
            "raise_as",
            raise_as("myapp.errors.Expected", "no"),
        )
        .expect_err("fails");
    assert_eq!(
        e.exception_class(),
        Some(&class("myapp.errors", "Expected"))
    );
    assert_eq!(e.message, "no");
    let dir = scratch("k23_a_failure_crosses_every_path");
    let runs = dir.join("flaky.runs");
    let e = pool
        .apply::<_, u32>(
            "faults",
            "flaky",
            (runs.to_string_lossy().into_owned(), 1u32),
        )
        .expect_err("the first run asks for a retry");
    assert_eq!(
        e.directive(),
        Some(&Directive::Retry {
            countdown: Some(Duration::from_millis(100)),
            max_retries: None
        }),
        "{e:?}"
    );
    assert_eq!(e.message, "run 1: failing until run 2");
    let ok: u32 = pool
        .apply(
            "faults",
            "flaky",
            (runs.to_string_lossy().into_owned(), 1u32),
        )
        .expect("the second run succeeds");
    assert_eq!(ok, 2);
    let e = pool
        .apply::<_, u32>(
            "faults",
            "flaky_with",
            (
                dir.join("fw.runs").to_string_lossy().into_owned(),
                5u32,
                2500u64,
                Some(7u32),
            ),
        )
        .expect_err("asks for a retry");
    assert_eq!(
        e.directive(),
        Some(&Directive::Retry {
            countdown: Some(Duration::from_millis(2500)),
            max_retries: Some(7)
        })
    );
    let e = pool
        .apply::<_, u64>("faults", "ignore", ())
        .expect_err("ignored");
    assert_eq!(e.directive(), Some(&Directive::Ignore));
    let e = pool
        .apply::<_, u64>("faults", "reject", (false,))
        .expect_err("rejected");
    assert_eq!(e.directive(), Some(&Directive::Reject { requeue: false }));
    // A plain error stays plain.
    let e = pool
        .apply::<_, u64>("faults", "fail", ("plain".to_string(),))
        .expect_err("fails");
    assert_eq!((e.message.as_str(), e.detail.as_ref()), ("plain", None));

    // Chunked: the whole chunk in one FFI call, one record per item.
    let requeue = [true, false, true, false, true, false, true];
    let got: Vec<Result<u64, TaskError>> = pool
        .imap("faults", "reject", requeue, 3)
        .expect("imap")
        .collect();
    assert_eq!(got.len(), requeue.len());
    for (r, want) in got.iter().zip(requeue) {
        let e = r.as_ref().expect_err("every item is rejected");
        assert_eq!(
            e.directive(),
            Some(&Directive::Reject { requeue: want }),
            "{e:?}"
        );
    }
    let e = pool
        .starmap::<_, u64>(
            "faults",
            "raise_as",
            vec![raise_as("KeyError", "k"), raise_as("KeyError", "k")],
            2,
        )
        .expect_err("a chunk of failures");
    assert_eq!(e.exception_class(), Some(&class("builtins", "KeyError")));
    pool.join().expect("join");

    // A `Process`.
    let mut proc = Process::new(&faults, "raise_as", raise_as("TypeError", "in a process"));
    let e = proc.join().expect_err("fails");
    assert_eq!(e.exception_class(), Some(&class("builtins", "TypeError")));
    assert_eq!(e.message, "in a process");
}

#[test]
fn k23_a_bad_class_name_is_refused_by_name_never_half_used() {
    let p = Plugin::load(plugin("faults")).expect("faults loads");
    for bad in ["Expected", "my app.Err", "a..b", ""] {
        let e = p
            .call::<_, u64>("raise_as", raise_as(bad, "m"))
            .expect_err("fails");
        assert_eq!(e.kind, ErrorKind::TaskError);
        assert_eq!(e.exception_class(), None, "{bad:?}: {e:?}");
        assert!(
            e.message.starts_with("m (raise_as refused: "),
            "{bad:?}: {}",
            e.message
        );
    }
}

/// `billiard-host run PLUGIN --task TASK` with `args` (`--args`) or the
/// lines of `input` (`--input`, chunked), plus `env`: the result lines.
fn run_lines(
    plugin: &str,
    task: &str,
    jobs: &[&str],
    chunksize: &str,
    env: &[(&str, &str)],
) -> Vec<serde_json::Value> {
    let dir = scratch(&format!("run_lines_{task}_{chunksize}_{}", env.len()));
    let input = common::lines_file(&dir, "jobs.jsonl", jobs);
    let mut cmd = host_command();
    cmd.args([
        "run",
        plugin,
        "--task",
        task,
        "--input",
        &input,
        "--chunksize",
        chunksize,
    ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run");
    let lines = json_lines(&stdout(&out));
    assert_eq!(lines.len(), jobs.len(), "{}", common::stderr(&out));
    lines
}

#[test]
fn k23_the_run_result_line_carries_the_detail_as_an_optional_field() {
    let faults = plugin_str("faults");
    for chunksize in ["1", "3"] {
        let lines = run_lines(
            &faults,
            "raise_as",
            &[
                r#"["ValueError", "bad input"]"#,
                r#"["myapp.errors.Expected", "expected"]"#,
                r#"["not a class", "x"]"#,
            ],
            chunksize,
            &[],
        );
        assert_eq!(
            lines[0],
            json!({"index": 0, "error": {"kind": "task_error", "message": "bad input",
                "detail": {"exception": {"module": "builtins", "name": "ValueError"}}}}),
            "chunksize {chunksize}"
        );
        assert_eq!(
            lines[1]["error"]["detail"],
            json!({"exception": {"module": "myapp.errors", "name": "Expected"}})
        );
        // No detail: the line is exactly the contract's.
        assert_eq!(
            lines[2]["error"].as_object().map(|o| o.len()),
            Some(2),
            "{}",
            lines[2]
        );
        let lines = run_lines(&faults, "reject", &["[true]", "[false]"], chunksize, &[]);
        assert_eq!(
            lines[0]["error"]["detail"],
            json!({"directive": {"reject": {"requeue": true}}})
        );
        let lines = run_lines(
            &faults,
            "flaky_with",
            &[r#"["/dev/null", 99, 1500, 4]"#],
            chunksize,
            &[],
        );
        assert_eq!(
            lines[0]["error"]["detail"],
            json!({"directive": {"retry": {"countdown_ms": 1500, "max_retries": 4}}})
        );
    }
}

#[test]
fn k23_a_hostile_failure_detail_is_a_plain_task_error() {
    let bad = plugin("bad-failure");
    let p = Plugin::load(&bad).expect("loads");
    for task in ["garbage", "bad_class", "huge_countdown", "prefix_only"] {
        let e = p.call::<_, u64>(task, ()).expect_err("fails");
        assert_eq!(e.kind, ErrorKind::TaskError, "{task}");
        assert_eq!(e.detail, None, "{task}: never a directive");
        assert!(e.message.starts_with(MALFORMED), "{task}: {}", e.message);
    }
    // A well-formed detail from a plugin that declares the encoding is one.
    let e = p.call::<_, u64>("well_formed", ()).expect_err("fails");
    assert_eq!(e.directive(), Some(&Directive::Ignore));
    assert_eq!(e.exception_class(), Some(&class("builtins", "KeyError")));

    // Through the pool, one by one and in chunks (the batch records).
    let bad = bad.to_string_lossy().into_owned();
    for chunksize in ["1", "4"] {
        for task in ["garbage", "bad_class", "huge_countdown"] {
            for line in run_lines(&bad, task, &["[]", "[]", "[]", "[]", "[]"], chunksize, &[]) {
                assert_eq!(line["error"]["kind"], "task_error", "{line}");
                assert!(line["error"].get("detail").is_none(), "{line}");
                let msg = line["error"]["message"].as_str().unwrap_or_default();
                assert!(msg.starts_with(MALFORMED), "{task}/{chunksize}: {msg}");
            }
        }
        // The same bytes from a plugin that does not declare the encoding
        // are its text, as a host before the encoding read them.
        for line in run_lines(
            &bad,
            "well_formed",
            &["[]", "[]", "[]"],
            chunksize,
            &[("BILLIARD_BAD_FAILURE_UNDECLARED", "1")],
        ) {
            assert!(line["error"].get("detail").is_none(), "{line}");
            let msg = line["error"]["message"].as_str().unwrap_or_default();
            assert!(
                msg.starts_with("\u{FFFD}billiard-failure/1\n{\"message\":\"forged\""),
                "{msg:?}"
            );
        }
    }
}

/// The plugin built against the previous plugin-api (the frozen copy
/// tests/abi_evolution.rs builds too; same target directory, so cargo
/// builds it once).
fn old_plugin() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target = common::artifact_dir()
            .parent()
            .expect("the profile directory has a parent")
            .join("fixtures")
            .join("old");
        let manifest = workspace_root().join("tests/fixtures/old-plugin-api/Cargo.toml");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.arg("build")
            .arg("--manifest-path")
            .arg(&manifest)
            .args(["-p", "billiard-plugin-old-abi", "--locked", "--target-dir"])
            .arg(&target)
            .env_remove("CARGO_TARGET_DIR");
        let out = cmd.output().expect("cargo");
        assert!(
            out.status.success(),
            "building the old fixture failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("debug/libbilliard_plugin_old_abi.so")
    })
}

#[test]
fn k23_a_plugin_of_the_previous_layout_reads_as_before() {
    let old = old_plugin();
    let p = Plugin::load(old).expect("the old plugin loads");
    assert!(!p.writes_failure_detail(), "the appended field is absent");
    assert!(p.info().tasks.iter().all(|t| t.options.is_empty()));
    let e = p
        .call::<_, u64>("fail", ("no".to_string(),))
        .expect_err("fails");
    assert_eq!(
        (e.kind, e.message.as_str(), e.detail.as_ref()),
        (ErrorKind::TaskError, "no", None)
    );
    let old = old.to_string_lossy().into_owned();
    let lines = run_lines(
        &old,
        "fail",
        &[r#"["a"]"#, r#"["b"]"#, r#"["c"]"#],
        "2",
        &[],
    );
    assert_eq!(
        lines[1],
        json!({"index": 1, "error": {"kind": "task_error", "message": "b"}})
    );
    let info: serde_json::Value =
        serde_json::from_slice(&host(["inspect", "--json", &old]).stdout).expect("JSON");
    for t in info["tasks"].as_array().expect("tasks") {
        assert_eq!(t["options"], json!({}), "{t}");
    }
}

#[test]
fn k23_registration_options_round_trip_into_inspect() {
    let faults = plugin_str("faults");
    let out = host(["inspect", "--json", &faults]);
    assert!(out.status.success(), "{out:?}");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let options = |name: &str| {
        info["tasks"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["name"] == name))
            .map(|t| t["options"].clone())
            .unwrap_or_else(|| panic!("no task {name}"))
    };
    assert_eq!(
        options("autoretried"),
        json!({"rate_limit": "600/m", "max_retries": 2, "autoretry_for": ["task_error", "panic"],
            "retry_backoff": "100ms", "retry_backoff_max": "1s", "retry_jitter": false,
            "default_retry_delay": "100ms"})
    );
    assert_eq!(options("rate_limited"), json!({"rate_limit": "10/s"}));
    assert_eq!(options("square"), json!({}));
    let text = stdout(&host(["inspect", &faults]));
    assert!(
        text.contains("\n  rate_limited(x: u64) -> u64  [rate_limit=10/s]\n"),
        "{text}"
    );
    assert!(!text.contains("square(x: u64) -> u64  ["), "{text}");

    // The worker's defaults, overridden by the task's options.
    let p = Plugin::load(plugin("faults")).expect("loads");
    let spec = p
        .info()
        .tasks
        .iter()
        .find(|t| t.name == "autoretried")
        .expect("task");
    // A pool's plugin list (from its zygote, in bincode) carries them too.
    let pool = Pool::builder()
        .workers(1)
        .plugin(plugin("faults"))
        .build()
        .expect("pool");
    let infos = pool.plugins();
    let from_pool = infos[0]
        .tasks
        .iter()
        .find(|t| t.name == "autoretried")
        .expect("task");
    assert_eq!(from_pool.options, spec.options);
    assert!(!from_pool.options.is_empty());
    pool.join().expect("join");
    let policy = spec.options.retry_policy(&RetryPolicy::default());
    assert_eq!(policy.on, [ErrorKind::TaskError, ErrorKind::Panic]);
    assert_eq!(policy.max_retries, Some(2));
    assert_eq!(policy.delay, Duration::from_millis(100));
    let delays: Vec<Duration> = (0..5).map(|r| policy.countdown(r)).collect();
    assert_eq!(
        delays,
        [100, 200, 400, 800, 1000].map(Duration::from_millis),
        "backoff 100ms doubling to 1s, no jitter"
    );
}

#[test]
fn k29_python_catches_our_failures_by_their_class() {
    let Some((redis, _py)) =
        common::celery::celery_or_skip("k29_python_catches_our_failures_by_their_class")
    else {
        return;
    };
    let url = redis.url();
    let _w = common::celery::worker_with(&["faults"], &url, &["-c", "2"]);
    // The app's own exception module, importable by the client.
    let dir = scratch("k29_python_catches_our_failures_by_their_class");
    let pkg = dir.join("k29app");
    std::fs::create_dir_all(&pkg).expect("package dir");
    std::fs::write(pkg.join("__init__.py"), "").expect("__init__.py");
    std::fs::write(
        pkg.join("errors.py"),
        "class Expected(Exception):\n    \"\"\"What the app expects to fail.\"\"\"\n",
    )
    .expect("errors.py");
    let path = serde_json::to_string(&dir.to_string_lossy()).expect("a string");
    let script = format!(
        r#"{app}
sys.path.insert(0, {path})
import k29app.errors
out = {{}}
def raised(args):
    r = app.send_task("faults.raise_as", args=args)
    try:
        r.get(timeout=60)
        return None
    except Exception as e:
        return e
e = raised(["ValueError", "bad input"])
try:
    raise e
except ValueError as v:
    out["builtin"] = [type(v).__module__, type(v).__name__, list(v.args)]
e = raised(["k29app.errors.Expected", "expected failure"])
try:
    raise e
except k29app.errors.Expected as x:
    out["custom"] = [type(x).__module__, type(x).__name__, list(x.args), type(x) is k29app.errors.Expected]
e = raised(["KeyError", "missing"])
out["keyerror"] = isinstance(e, KeyError) and isinstance(e, LookupError)
r = app.send_task("faults.fail", args=["plain"])
try:
    r.get(timeout=60)
except Exception as x:
    out["default"] = [type(x).__name__, str(x)]
print(json.dumps(out))
"#,
        app = common::celery::py_app(&url),
    );
    let v = common::celery::python_json(&script, &[]);
    assert_eq!(
        v["builtin"],
        json!(["builtins", "ValueError", ["bad input"]]),
        "{v}"
    );
    assert_eq!(
        v["custom"],
        json!(["k29app.errors", "Expected", ["expected failure"], true]),
        "{v}"
    );
    assert_eq!(v["keyerror"], true, "{v}");
    assert_eq!(v["default"], json!(["PluginError", "plain"]), "{v}");
}
