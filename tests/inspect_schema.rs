//! Issue 28 item 9: `inspect` shows the fields of struct arguments, and
//! `inspect --json` gives each task a JSON Schema of its argument array and
//! of its result, derived at build time by `#[task]` (schemars), so that a
//! producer in any language can validate a job before sending it. Checked
//! here with a real JSON Schema validator against the real host: every job
//! the schema accepts runs, every one it refuses is refused by the task's
//! decoder too (`bad_args`). A `#[task]` left out of `export_plugin!` is a
//! compile-time warning naming it.

use crate::common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{exit_code, host, plugin, plugin_str, stderr, stdout};
use serde_json::{json, Value};

/// `inspect --json` of a plugin file, parsed.
fn inspect_json(file: &str) -> Value {
    let out = host(["inspect", "--json", file]);
    assert_eq!(exit_code(&out), 0, "stderr: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("inspect --json prints JSON")
}

fn task<'a>(info: &'a Value, name: &str) -> &'a Value {
    info["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no task {name} in {info:#}"))
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::validator_for(schema)
        .unwrap_or_else(|e| panic!("not a valid JSON Schema ({e}): {schema:#}"))
}

/// Runs one job line per `args` through `billiard-host run`; returns the
/// result lines in order.
fn run_jobs(plugin: &Path, task: &str, args: &[Value]) -> Vec<Value> {
    let mut child = common::host_command()
        .arg("run")
        .arg(plugin)
        .args(["--task", task, "--input", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run starts");
    let mut input = String::new();
    for a in args {
        input.push_str(&json!({ "args": a }).to_string());
        input.push('\n');
    }
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("jobs written");
    let out = child.wait_with_output().expect("run ends");
    let mut lines = common::json_lines(&stdout(&out));
    lines.sort_by_key(|l| l["index"].as_u64());
    assert_eq!(lines.len(), args.len(), "stderr: {}", stderr(&out));
    lines
}

/// The schema accepts every `good` argument array and refuses every `bad`
/// one, and the host agrees job by job: the good ones run (their results
/// valid under the result schema), the bad ones are `bad_args`.
fn schema_agrees_with_the_host(plugin_name: &str, task_name: &str, good: &[Value], bad: &[Value]) {
    let info = inspect_json(&plugin_str(plugin_name));
    let t = task(&info, task_name);
    let args = validator(&t["schema"]["args"]);
    let result = validator(&t["schema"]["result"]);
    for a in good {
        assert!(args.is_valid(a), "{task_name}: the schema refuses {a}");
    }
    for a in bad {
        assert!(!args.is_valid(a), "{task_name}: the schema accepts {a}");
    }
    let all: Vec<Value> = good.iter().chain(bad).cloned().collect();
    let results = run_jobs(&plugin(plugin_name), task_name, &all);
    for (a, r) in all.iter().zip(&results) {
        if good.contains(a) {
            let ok = r
                .get("ok")
                .unwrap_or_else(|| panic!("{a} did not run: {r}"));
            assert!(result.is_valid(ok), "{task_name}: result {ok} not valid");
        } else {
            assert_eq!(r["error"]["kind"], "bad_args", "{a}: {r}");
        }
    }
}

#[test]
fn u28_inspect_shows_the_fields_of_struct_arguments() {
    let out = host(["inspect", &plugin_str("math")]);
    assert_eq!(exit_code(&out), 0, "stderr: {}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| *l == "  transform(item: Item, factor: f64) -> Item")
        .unwrap_or_else(|| panic!("no transform in:\n{text}"));
    // Under the task (after its doc), before the next task.
    let block: Vec<&str> = lines[at..]
        .iter()
        .skip(1)
        .take_while(|l| l.starts_with("      "))
        .copied()
        .collect();
    for want in [
        "      Item = {id: u32, name: string, note?: string | null, shape: Shape, tags: {string: i32}}",
        "      Shape = {circle: {radius: f64}} | {rect: {h: f64, w: f64}}",
    ] {
        assert!(block.contains(&want), "missing {want:?} in:\n{text}");
    }
    // A task of plain types has nothing more than its doc.
    let square = lines
        .iter()
        .position(|l| *l == "  square(x: u64) -> u64")
        .expect("square");
    assert_eq!(lines[square + 2], "", "{text}");
    assert!(!text.contains("schema: unknown"), "{text}");
}

#[test]
fn u28_every_task_of_the_example_plugins_has_valid_schemas() {
    for name in ["math", "bytes"] {
        let info = inspect_json(&plugin_str(name));
        for t in info["tasks"].as_array().expect("tasks") {
            for part in ["args", "result"] {
                let s = &t["schema"][part];
                assert!(s.is_object(), "{name}.{}: {part} {s}", t["name"]);
                validator(s);
            }
        }
    }
    // A task without arguments takes exactly `[]`.
    let info = inspect_json(&plugin_str("math"));
    let none = validator(&task(&info, "version")["schema"]["args"]);
    assert!(none.is_valid(&json!([])));
    assert!(!none.is_valid(&json!([1])) && !none.is_valid(&json!({})));
}

#[test]
fn u28_the_schema_of_a_struct_argument_agrees_with_the_task() {
    let item =
        json!({"id": 1, "name": "a", "shape": {"circle": {"radius": 2.0}}, "tags": {"x": 1}});
    let mut noted = item.clone();
    noted["note"] = json!("optional");
    let mut no_name = item.clone();
    no_name.as_object_mut().expect("object").remove("name");
    let mut triangle = item.clone();
    triangle["shape"] = json!({"triangle": {"a": 1.0}});
    let mut negative_id = item.clone();
    negative_id["id"] = json!(-1);
    schema_agrees_with_the_host(
        "math",
        "transform",
        &[
            json!([item, 2.0]),
            json!([noted, 0.5]),
            json!([{"id": 7, "name": "r", "shape": {"rect": {"w": 1.0, "h": 2.0}}, "tags": {}}, 1]),
        ],
        &[
            json!([no_name, 2.0]),
            json!([triangle, 2.0]),
            json!([negative_id, 2.0]),
            json!([item, "2"]),
            json!([item]),
            json!([item, 2.0, 3.0]),
            json!({"item": item}),
        ],
    );
}

#[test]
fn u28_the_schema_of_a_byte_string_takes_each_json_form_the_codec_takes() {
    schema_agrees_with_the_host(
        "bytes",
        "echo",
        &[
            json!([[104, 105]]),
            json!(["hi"]),
            json!([{"$bytes": "aGk="}]),
            json!([[]]),
        ],
        &[
            json!([[300]]),
            json!([[-1]]),
            json!([{"$bytes": "aGk=", "x": 1}]),
            json!([{"bytes": "aGk="}]),
            json!([1, 2]),
        ],
    );
}

#[test]
fn u28_a_hand_made_module_without_schemas_shows_none() {
    // bad-failure writes its root module by hand and answers no schema: its
    // tasks' schemas are unknown (`null`), not an empty or a guessed one.
    let info = inspect_json(&plugin_str("bad-failure"));
    for t in info["tasks"].as_array().expect("tasks") {
        assert!(t["schema"].is_null(), "{t}");
    }
}

/// A plugin crate outside the workspace, built with cargo as an author
/// would: one task left out of `export_plugin!`, one whose argument type
/// has no `JsonSchema`, one in a module.
const UNLISTED: &str = r#"use billiard_plugin_api::serde::{Deserialize, Serialize};
use billiard_plugin_api::{export_plugin, task};

/// No `JsonSchema`: the task still builds; its argument schema is unknown.
#[derive(Serialize, Deserialize)]
#[serde(crate = "billiard_plugin_api::serde")]
pub struct Opaque {
    pub n: u64,
}

/// Listed.
#[task]
pub fn listed(o: Opaque) -> u64 {
    o.n
}

/// Forgotten in export_plugin!.
#[task]
pub fn forgotten(x: u64) -> u64 {
    x
}

mod inner {
    use billiard_plugin_api::task;

    /// Listed by its path.
    #[task]
    pub fn nested() -> Vec<u8> {
        Vec::new()
    }
}

export_plugin!(name: "unlisted", tasks: [listed, inner::nested]);
"#;

fn build_unlisted() -> (PathBuf, String) {
    let dir = common::scratch("u28_unlisted").join("unlisted");
    std::fs::create_dir_all(dir.join("src")).expect("src");
    let api = common::workspace_root()
        .join("plugin-api")
        .canonicalize()
        .expect("plugin-api");
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"u28-unlisted\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
             [lib]\ncrate-type = [\"cdylib\"]\n\n\
             [dependencies]\nbilliard-plugin-api = {{ path = {:?} }}\n\n[workspace]\n",
            api.display().to_string()
        ),
    )
    .expect("Cargo.toml");
    std::fs::write(dir.join("src/lib.rs"), UNLISTED).expect("lib.rs");
    // The workspace's versions: nothing to resolve, little to build.
    std::fs::copy(
        common::workspace_root().join("Cargo.lock"),
        dir.join("Cargo.lock"),
    )
    .expect("Cargo.lock");
    // tests/new.rs's target directory: plugin-api is built there already.
    let target = common::workspace_root().join("target/scaffold");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--lib"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("cargo runs");
    let log = stderr(&out);
    assert!(out.status.success(), "the plugin does not build:\n{log}");
    (target.join("debug/libu28_unlisted.so"), log)
}

#[test]
fn u28_a_task_left_out_of_export_plugin_warns_at_compile_time() {
    let (so, log) = build_unlisted();
    assert!(
        log.contains(
            "warning: function `forgotten_is_a_task_not_listed_in_export_plugin` is never used"
        ),
        "no warning naming the task:\n{log}"
    );
    // Pointing at the task's own line.
    assert!(log.contains("src/lib.rs:19:8"), "{log}");
    for listed in ["listed_is", "nested_is"] {
        assert!(!log.contains(listed), "{listed} warned:\n{log}");
    }
    // The type without JsonSchema: no schema for the arguments, never a
    // wrong one; the result's is known.
    let file = so.to_string_lossy().into_owned();
    let info = inspect_json(&file);
    let names: Vec<&str> = info["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["listed", "nested"]);
    let listed = task(&info, "listed");
    assert!(listed["schema"]["args"].is_null(), "{listed}");
    assert_eq!(listed["schema"]["result"]["format"], "uint64");
    let bytes = validator(&task(&info, "nested")["schema"]["result"]);
    assert!(bytes.is_valid(&json!([1, 2])) && bytes.is_valid(&json!({"$bytes": "AQI="})));
    let text = stdout(&host(["inspect", &file]));
    assert!(
        text.contains(
            "  listed(o: Opaque) -> u64\n      Listed.\n      argument schema: unknown (a type without #[derive(JsonSchema)])\n"
        ),
        "{text}"
    );
}

/// Issue 26: a plugin loaded to run (a pool's zygote, `Plugin::load`) is
/// not asked for its schemas (schemars built them at every pool start, the
/// first result's time); `inspect`'s loader asks for them.
#[test]
fn u26_schemas_are_built_only_when_asked_for() {
    use billiard_host::Plugin;
    let math = plugin("math");
    let run = Plugin::load(&math).expect("math loads");
    assert!(run.info().tasks.iter().all(|t| t.schema.is_none()));
    let shown = Plugin::load_with_schemas(&math).expect("math loads");
    let square = shown.info().tasks.iter().find(|t| t.name == "square");
    assert!(square.expect("math has square").schema.is_some());
    assert_eq!(
        task(&inspect_json(&plugin_str("math")), "square")["schema"]["args"]["type"],
        "array"
    );
}
