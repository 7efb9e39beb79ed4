//! `billiard-host inspect` through the real binary: what it prints for each
//! plugin (text and `--json`) and how it refuses files that are not
//! loadable plugins (exit code 2, a message naming the file and the reason).

use crate::common;

use std::path::Path;

use common::{exit_code, host, plugin, plugin_str, stderr, stdout};
use serde_json::Value;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `inspect --json` of a plugin, parsed; asserts it succeeded quietly.
fn inspect_json(name: &str) -> Value {
    let out = host(["inspect", "--json", &plugin_str(name)]);
    assert_eq!(exit_code(&out), 0, "stderr: {}", stderr(&out));
    assert_eq!(stderr(&out), "");
    serde_json::from_slice(&out.stdout).expect("inspect --json prints JSON")
}

/// `inspect` of a plugin as text; asserts it succeeded quietly.
fn inspect_text(name: &str) -> String {
    let out = host(["inspect", &plugin_str(name)]);
    assert_eq!(exit_code(&out), 0, "stderr: {}", stderr(&out));
    assert_eq!(stderr(&out), "");
    stdout(&out)
}

fn task<'a>(info: &'a Value, name: &str) -> &'a Value {
    info["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no task {name} in {info:#}"))
}

fn task_names(info: &Value) -> Vec<&str> {
    info["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect()
}

/// `[[name, type], ...]` of a task's arguments.
fn arg_list(task: &Value) -> Vec<(&str, &str)> {
    task["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap(), a["type"].as_str().unwrap()))
        .collect()
}

#[test]
fn inspect_json_describes_math() {
    let info = inspect_json("math");
    assert_eq!(info["name"], "math");
    assert_eq!(info["version"], VERSION);
    assert_eq!(info["abi_version"], billiard_plugin_api::ABI_VERSION);
    assert_eq!(info["api_version"], billiard_plugin_api::abi::API_VERSION);
    assert_eq!(
        Path::new(info["path"].as_str().unwrap()),
        plugin("math"),
        "the absolute path of the file"
    );
    assert_eq!(
        task_names(&info),
        ["square", "add", "sum", "fib", "transform", "version"]
    );

    let square = task(&info, "square");
    assert_eq!(arg_list(square), [("x", "u64")]);
    assert_eq!(square["returns"], "u64");
    assert_eq!(square["doc"], "Returns x squared (wrapping on overflow).");
    assert_eq!(square["takes_context"], false);

    let add = task(&info, "add");
    assert_eq!(arg_list(add), [("a", "i64"), ("b", "i64")]);
    assert_eq!(add["returns"], "Result<i64, String>");

    assert_eq!(arg_list(task(&info, "sum")), [("xs", "Vec<f64>")]);
    assert_eq!(task(&info, "fib")["returns"], "Result<u64, String>");

    let transform = task(&info, "transform");
    assert_eq!(arg_list(transform), [("item", "Item"), ("factor", "f64")]);
    assert_eq!(transform["returns"], "Item");
    assert_eq!(
        transform["doc"],
        "Returns the item with its id doubled, its name upper-cased, the shape\n\
         scaled by `factor` and an `area` tag added: a struct/enum round trip."
    );

    // JSON Schemas of the argument array and the result (issue 28 item 9;
    // validated against jobs in tests/inspect_schema.rs).
    let schema = &transform["schema"];
    assert_eq!(schema["args"]["type"], "array");
    assert_eq!(
        (&schema["args"]["minItems"], &schema["args"]["maxItems"]),
        (&Value::from(2), &Value::from(2))
    );
    assert_eq!(schema["args"]["prefixItems"][0]["$ref"], "#/$defs/Item");
    assert_eq!(schema["args"]["prefixItems"][1]["type"], "number");
    assert_eq!(
        schema["args"]["$defs"]["Item"]["required"],
        serde_json::json!(["id", "name", "shape", "tags"])
    );
    assert_eq!(schema["result"]["title"], "Item");
    assert_eq!(square["schema"]["result"]["format"], "uint64");

    let version = task(&info, "version");
    assert_eq!(arg_list(version), []);
    assert_eq!(version["returns"], "String");
    assert_eq!(version["schema"]["args"]["maxItems"], 0);
    assert_eq!(version["schema"]["result"]["type"], "string");
}

#[test]
fn inspect_json_describes_bytes() {
    let info = inspect_json("bytes");
    assert_eq!(info["name"], "bytes");
    assert_eq!(info["version"], VERSION);
    assert_eq!(info["abi_version"], billiard_plugin_api::ABI_VERSION);
    assert_eq!(
        task_names(&info),
        ["len", "checksum", "echo", "make", "join", "texts", "split"]
    );
    for name in ["len", "checksum", "echo"] {
        assert_eq!(arg_list(task(&info, name)), [("data", "Vec<u8>")]);
    }
    assert_eq!(task(&info, "len")["returns"], "u64");
    assert_eq!(task(&info, "echo")["returns"], "Vec<u8>");
    let make = task(&info, "make");
    assert_eq!(arg_list(make), [("n", "u64"), ("fill", "u8")]);
    assert_eq!(make["returns"], "Result<Vec<u8>, String>");
    assert_eq!(make["doc"], "A buffer of `n` bytes, each `fill`.");
}

#[test]
fn inspect_json_describes_faults() {
    let info = inspect_json("faults");
    assert_eq!(info["name"], "faults");
    assert_eq!(info["version"], VERSION);
    assert_eq!(info["abi_version"], billiard_plugin_api::ABI_VERSION);
    assert_eq!(
        task_names(&info),
        [
            "panic",
            "fail",
            "segfault",
            "abort",
            "exit",
            "sleep_ms",
            "spin_ms",
            "spin",
            "cooperative_spin",
            "cooperative_spin_result",
            "cooperative_sleep",
            "leak_mb",
            "garbage_fds",
            "log",
            "spawn_sleeper",
            "context_info",
            "pid",
            "square",
            "flaky",
            "flaky_with",
            "reject",
            "reject_once",
            "ignore",
            "raise_as",
            "rate_limited",
            "autoretried",
        ]
    );
    let with_context: Vec<&str> = info["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["takes_context"] == true)
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        with_context,
        [
            "cooperative_spin",
            "cooperative_spin_result",
            "cooperative_sleep",
            "context_info"
        ]
    );
    // The context is supplied by the host, not an argument.
    assert_eq!(arg_list(task(&info, "cooperative_spin")), [("ms", "u64")]);
    assert_eq!(arg_list(task(&info, "context_info")), []);
    assert_eq!(task(&info, "context_info")["returns"], "(u64, u32)");
    assert_eq!(
        task(&info, "cooperative_spin_result")["returns"],
        "Result<u64, Box<dyn std::error::Error>>"
    );
    assert_eq!(arg_list(task(&info, "spin")), [("seconds", "f64")]);
    assert_eq!(arg_list(task(&info, "exit")), [("code", "i32")]);
    for t in info["tasks"].as_array().unwrap() {
        assert_ne!(t["doc"], "", "task {} has no doc", t["name"]);
    }
}

#[test]
fn inspect_text_shows_header_signatures_and_docs() {
    let text = inspect_text("math");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("plugin:  math {VERSION}"));
    assert_eq!(lines[1], format!("file:    {}", plugin("math").display()));
    assert_eq!(
        lines[2],
        format!(
            "abi:     {} (billiard-plugin-api {})",
            billiard_plugin_api::ABI_VERSION,
            billiard_plugin_api::abi::API_VERSION
        )
    );
    assert_eq!(lines[3], "tasks:   6");
    for expected in [
        "  square(x: u64) -> u64",
        "      Returns x squared (wrapping on overflow).",
        "  add(a: i64, b: i64) -> Result<i64, String>",
        "  sum(xs: Vec<f64>) -> f64",
        "  fib(n: u32) -> Result<u64, String>",
        "  transform(item: Item, factor: f64) -> Item",
        "      scaled by `factor` and an `area` tag added: a struct/enum round trip.",
        // The fields of the structs it takes and returns (issue 28 item 9).
        "      Item = {id: u32, name: string, note?: string | null, shape: Shape, tags: {string: i32}}",
        "      Shape = {circle: {radius: f64}} | {rect: {h: f64, w: f64}}",
        "  version() -> String",
    ] {
        assert!(
            lines.contains(&expected),
            "missing {expected:?} in:\n{text}"
        );
    }
}

#[test]
fn inspect_text_of_every_example_plugin_lists_every_task() {
    for name in ["math", "bytes", "faults"] {
        let text = inspect_text(name);
        let info = inspect_json(name);
        assert!(
            text.starts_with(&format!("plugin:  {name} {VERSION}\n")),
            "{text}"
        );
        let tasks = info["tasks"].as_array().unwrap();
        assert!(
            text.contains(&format!("\ntasks:   {}\n", tasks.len())),
            "{text}"
        );
        for t in tasks {
            // A default shows as Python writes it (issue 29 item 4).
            let defaults = &t["options"]["defaults"];
            let args: Vec<String> = arg_list(t)
                .iter()
                .map(|(n, ty)| match &defaults[*n] {
                    serde_json::Value::Null if defaults.get(*n).is_some() => {
                        format!("{n}: {ty} = None")
                    }
                    serde_json::Value::Null => format!("{n}: {ty}"),
                    d => format!("{n}: {ty} = {d}"),
                })
                .collect();
            let mut signature = format!(
                "  {}({}) -> {}",
                t["name"].as_str().unwrap(),
                args.join(", "),
                t["returns"].as_str().unwrap()
            );
            if t["takes_context"] == true {
                signature.push_str("  [uses TaskContext]");
            }
            // Registration options follow in brackets (tests/failures.rs).
            let has_options = t["options"].as_object().is_some_and(|o| !o.is_empty());
            assert!(
                text.lines().any(|l| l == signature
                    || (has_options && l.starts_with(&format!("{signature}  [")))),
                "missing {signature:?} in:\n{text}"
            );
            let doc_first_line = t["doc"].as_str().unwrap().lines().next().unwrap();
            assert!(
                text.contains(&format!("\n      {doc_first_line}\n")),
                "missing doc {doc_first_line:?} in:\n{text}"
            );
        }
    }
}

#[test]
fn inspect_opens_a_bare_file_name_in_the_current_directory() {
    // Without a slash, dlopen would search the library path instead.
    let path = plugin("math");
    let out = common::host_command()
        .current_dir(path.parent().unwrap())
        .args(["inspect", "--json"])
        .arg(path.file_name().unwrap())
        .output()
        .unwrap();
    assert_eq!(exit_code(&out), 0, "stderr: {}", stderr(&out));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["name"], "math");
    assert_eq!(Path::new(info["path"].as_str().unwrap()), path);
}

#[test]
fn inspect_usage_errors_exit_2() {
    let out = host(["inspect"]);
    assert_eq!(exit_code(&out), 2);
    assert!(stderr(&out).contains("PLUGIN"), "{}", stderr(&out));
    let out = host(["no-such-command"]);
    assert_eq!(exit_code(&out), 2);
    let out = host(["inspect", "--no-such-flag", &plugin_str("math")]);
    assert_eq!(exit_code(&out), 2);
    let out = host(["inspect", "--help"]);
    assert_eq!(exit_code(&out), 0);
    assert!(stdout(&out).contains("--json"), "{}", stdout(&out));
}

// ------------------------------------------------------ loading errors --

/// Runs `inspect FILE` and checks the refusal: exit 2, nothing on stdout,
/// an error naming the file and containing every one of `reasons`.
fn assert_refused(file: &Path, reasons: &[&str]) -> String {
    let out = host([Path::new("inspect"), file]);
    let err = stderr(&out);
    assert_eq!(exit_code(&out), 2, "{}: stderr: {err}", file.display());
    assert_eq!(stdout(&out), "", "{}", file.display());
    let headline = format!("error: cannot load plugin {}: ", file.display());
    assert!(err.contains(&headline), "expected {headline:?} in: {err}");
    for reason in reasons {
        assert!(err.contains(reason), "expected {reason:?} in: {err}");
    }
    err
}

#[test]
fn refuses_a_missing_file() {
    let missing = plugin("math").with_file_name("libno_such_plugin.so");
    assert_refused(&missing, &["no such file"]);
}

#[test]
fn refuses_a_directory() {
    assert_refused(&common::artifact_dir(), &["it is a directory"]);
}

#[test]
fn refuses_a_file_that_is_not_elf() {
    assert_refused(
        &common::workspace_root().join("Cargo.toml"),
        &["not an ELF shared object"],
    );
}

#[test]
fn refuses_a_shared_library_that_is_not_a_plugin() {
    let Some(libm) = common::system_library() else {
        eprintln!("skipped: no system libm.so.6 found through ldconfig -p or the usual paths");
        return;
    };
    assert_refused(
        &libm,
        &["not a billiard plugin", "exports no billiard root module"],
    );
}

#[test]
fn refuses_an_executable() {
    assert_refused(&common::bin(), &["the dynamic loader refused it"]);
}

#[test]
fn refuses_a_plugin_with_another_abi_layout() {
    let err = assert_refused(
        &plugin("abi-layout-mismatch"),
        &[
            "built against an incompatible billiard-plugin-api",
            "layout",
        ],
    );
    assert!(
        err.lines().count() < 30,
        "the layout dump is cut short:\n{err}"
    );
}

#[test]
fn refuses_a_plugin_with_another_abi_version() {
    assert_refused(
        &plugin("abi-version-mismatch"),
        &[&format!(
            "built for billiard plugin ABI version 999, this host speaks version {}",
            billiard_plugin_api::ABI_VERSION
        )],
    );
}

#[test]
fn refuses_a_plugin_whose_initializer_panics() {
    assert_refused(
        &plugin("init-panic"),
        &["the plugin's module initializer panicked"],
    );
}
