//! Celery task names and arguments (issue 29 items 1 and 4): a plain
//! Python Celery 5.7 client calls tasks by their dotted Celery names
//! (`#[task(name = "proj.tasks.add")]`, `--task-name`, `--task-names
//! FILE`) and with optional, defaulted, keyword and variadic arguments;
//! every call runs on our worker (queue `ours`, the `proj` plugin) and on
//! a Python `celery worker` with the same tasks in Python (queue `py`), and
//! the two answers must be the same: results, and for a call that does not
//! fit, the exception's class and Python's `TypeError` words.

use crate::common;

use std::path::Path;

use common::celery;
use serde_json::Value;

fn node(tag: &str) -> String {
    celery::node(tag, "k29-args")
}

/// `plugins/proj` in Python: the same names, parameters and results.
const PY_TASKS: &str = r#"
@app.task(name='proj.tasks.add')
def add(a, b):
    return a + b

@app.task(name='proj.tasks.add3')
def add3(x, y, z=3):
    return x + y + z

@app.task(name='proj.tasks.greet')
def greet(name, title=None):
    return f'Hello, {title} {name}' if title is not None else f'Hello, {name}'

@app.task(name='proj.tasks.total')
def total(first, *rest):
    return first + sum(rest)

@app.task(name='proj.tasks.ping')
def ping():
    return 'pong'

@app.task(name='proj.tasks.mul')
def mul(a, b):
    return a * b

@app.task(name='legacy.multiply')
def multiply(a, b):
    return a * b
"#;

/// A Python `celery worker` (solo pool) with [`PY_TASKS`], on queue `py`.
fn python_worker(python: &Path, url: &str, node: &str) -> celery::Worker {
    let dir = celery::unique_temp_dir("k29-args-python");
    let flags = ["-Q", "py", "--without-mingle", "-n", node];
    celery::python_worker(python, url, &dir, "pyproj", PY_TASKS, &flags)
}

/// Both workers on one Redis: (Python, ours, their node names).
fn workers(
    test: &str,
) -> Option<(
    celery::RedisServer,
    celery::Worker,
    celery::Worker,
    String,
    String,
)> {
    let (redis, python) = celery::celery_or_skip(test)?;
    let url = redis.url();
    let (py_node, our_node) = (node("py"), node("ours"));
    let py = python_worker(&python, &url, &py_node);
    let dir = celery::unique_temp_dir("k29-args-map");
    let map = dir.join("names.txt");
    std::fs::write(
        &map,
        "# Celery name = plugin task\n\nlegacy.multiply = proj.mul\n",
    )
    .expect("write the map file");
    let map = map.display().to_string();
    let ours = celery::worker_with(
        &["proj"],
        &url,
        &[
            "-Q",
            "ours",
            "-n",
            &our_node,
            "-c",
            "1",
            "--task-name",
            "proj.tasks.mul=proj.mul",
            "--task-names",
            &map,
            // A limit by the Celery name (issue 29 item 1): far above
            // what the test sends, so it never delays it.
            "--rate-limit",
            "proj.tasks.add=1000/s",
        ],
    );
    Some((redis, py, ours, py_node, our_node))
}

/// Runs `calls` (a Python list of `(name, args, kwargs)`) on both queues
/// and returns, per call, `[python's outcome, ours]`, each `["ok",
/// result]` or `[exception class, str(exception)]`.
fn both(url: &str, calls: &str) -> Vec<(Value, Value, Value)> {
    let script = format!(
        r#"{app}
calls = {calls}
def outcome(r):
    r.get(timeout=60, propagate=False)
    if r.successful():
        return ["ok", r.result]
    return [type(r.result).__name__, str(r.result)]
out = []
for name, args, kwargs in calls:
    got = [outcome(app.send_task(name, args=args, kwargs=kwargs, queue=q)) for q in ("py", "ours")]
    out.append([[name, args, kwargs]] + got)
print(json.dumps(out))
"#,
        app = celery::py_app(url)
    );
    let out = celery::python_json(&script, &[]);
    out.as_array()
        .expect("a list of outcomes")
        .iter()
        .map(|c| (c[0].clone(), c[1].clone(), c[2].clone()))
        .collect()
}

#[test]
fn k29_dotted_celery_names_are_served_and_registered_as_a_python_worker_does() {
    let Some((redis, _py, ours, py_node, our_node)) =
        workers("k29_dotted_celery_names_are_served_and_registered")
    else {
        return;
    };
    let url = redis.url();
    let out = both(
        &url,
        r#"[("proj.tasks.add", [2, 3], {}),
            ("proj.tasks.mul", [4, 5], {}),
            ("legacy.multiply", [6, 7], {}),
            ("proj.tasks.ping", [], {})]"#,
    );
    let want = [5, 20, 42];
    for ((call, py, mine), n) in out.iter().zip(want) {
        assert_eq!(py, &serde_json::json!(["ok", n]), "{call}");
        assert_eq!(mine, py, "{call}");
    }
    assert_eq!(out[3].2, serde_json::json!(["ok", "pong"]));
    // `inspect registered`: the Celery names, as the Python worker lists
    // them (ours adds the signature as a field).
    let script = format!(
        r#"{app}
nodes = json.loads(sys.argv[1])
r = app.control.inspect(destination=nodes, timeout=5).registered() or {{}}
print(json.dumps({{n: sorted(r.get(n, [])) for n in nodes}}))
"#,
        app = celery::py_app(&url)
    );
    let nodes = serde_json::to_string(&[&py_node, &our_node]).unwrap_or_default();
    let reg = celery::python_json(&script, &[&nodes]);
    let names = |n: &str| -> Vec<String> {
        reg[n]
            .as_array()
            .unwrap_or_else(|| panic!("no registered list from {n}: {reg}"))
            .iter()
            .filter_map(|v| v.as_str())
            .map(|l| l.split(" [").next().unwrap_or(l).to_string())
            .collect()
    };
    let add_line = reg[&our_node]
        .as_array()
        .and_then(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .find(|l| l.starts_with("proj.tasks.add ["))
        })
        .unwrap_or_else(|| panic!("no proj.tasks.add line: {reg}"));
    assert_eq!(
        add_line,
        "proj.tasks.add [signature=(a: i64, b: i64) -> i64 rate_limit=1000/s]"
    );
    let (py, mine) = (names(&py_node), names(&our_node));
    for name in &py {
        assert!(
            mine.contains(name),
            "{name} is not registered by ours: {mine:?}"
        );
    }
    // Our unnamed task keeps its `plugin.task` name.
    assert!(mine.contains(&"proj.mul".to_string()), "{mine:?}");
    assert!(!ours.stderr().contains("panicked"), "{}", ours.stderr());
}

#[test]
fn k29_optional_defaulted_keyword_and_variadic_arguments_bind_as_python_does() {
    let Some((redis, _py, ours, _, _)) =
        workers("k29_optional_defaulted_keyword_and_variadic_arguments")
    else {
        return;
    };
    let out = both(
        &redis.url(),
        r#"[("proj.tasks.add3", [1, 2], {}),
            ("proj.tasks.add3", [1, 2], {"z": 10}),
            ("proj.tasks.add3", [1], {"y": 2}),
            ("proj.tasks.add3", [], {"z": 1, "y": 2, "x": 3}),
            ("proj.tasks.greet", ["Ann"], {}),
            ("proj.tasks.greet", ["Ann"], {"title": "Dr"}),
            ("proj.tasks.greet", [], {"name": "Bob"}),
            ("proj.tasks.total", [1], {}),
            ("proj.tasks.total", [1, 2, 3, 4], {}),
            ("proj.tasks.total", [], {"first": 5}),
            ("proj.tasks.add", [1], {}),
            ("proj.tasks.add", [], {}),
            ("proj.tasks.add", [1, 2, 3], {}),
            ("proj.tasks.add", [1, 2], {"c": 3}),
            ("proj.tasks.add", [1], {"a": 2}),
            ("proj.tasks.add3", [], {}),
            ("proj.tasks.add3", [1, 2, 3, 4], {}),
            ("proj.tasks.add3", [1, 2], {"w": 0}),
            ("proj.tasks.greet", [], {}),
            ("proj.tasks.total", [1], {"rest": [2]}),
            ("proj.tasks.total", [], {}),
            ("proj.tasks.ping", [1], {}),
            ("proj.tasks.ping", [1, 2], {})]"#,
    );
    for (call, py, mine) in &out {
        assert_eq!(mine, py, "{call}: ours differs from Python's worker");
    }
    // The wordings the issue names, as both workers said them.
    let said: Vec<String> = out.iter().map(|(_, _, m)| m.to_string()).collect();
    for words in [
        "add() missing 1 required positional argument: 'b'",
        "add() takes 2 positional arguments but 3 were given",
        "add() got an unexpected keyword argument 'c'",
    ] {
        assert!(said.iter().any(|s| s.contains(words)), "{words}: {said:?}");
    }

    // A chain that prepends the result to a task taking none fails with
    // Python's words on both workers.
    let script = format!(
        r#"{app}
from celery import chain
out = []
for q in ("py", "ours"):
    c = chain(app.signature("proj.tasks.add", args=(1, 2), queue=q),
              app.signature("proj.tasks.ping", queue=q))
    r = c.apply_async()
    r.get(timeout=60, propagate=False)
    out.append([r.state, type(r.result).__name__, str(r.result)])
print(json.dumps(out))
"#,
        app = celery::py_app(&redis.url())
    );
    let chained = celery::python_json(&script, &[]);
    assert_eq!(chained[1], chained[0], "{chained}");
    assert_eq!(
        chained[1],
        serde_json::json!([
            "FAILURE",
            "TypeError",
            "ping() takes 0 positional arguments but 1 was given"
        ])
    );
    assert!(!ours.stderr().contains("panicked"), "{}", ours.stderr());
}

/// The local `run` path: a Celery name resolves before `plugin.task`
/// splitting, and a plain array that stops short takes the task's
/// defaults (a trailing `Option<T>`: null; a variadic tail: empty).
#[test]
fn k29_run_resolves_celery_names_and_fills_defaults() {
    let plugin = common::plugin_str("proj");
    let one = |task: &str, args: &str| -> Value {
        let out = common::host(["run", &plugin, "--task", task, "--args", args]);
        let line = common::stdout(&out);
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{task} {args}: {e}: {line}"))
    };
    assert_eq!(one("proj.tasks.add", "[2, 3]")["ok"], 5);
    assert_eq!(one("add3", "[1, 2]")["ok"], 6);
    assert_eq!(one("proj.tasks.add3", "[1, 2, 10]")["ok"], 13);
    assert_eq!(one("greet", r#"["Ann"]"#)["ok"], "Hello, Ann");
    assert_eq!(one("total", "[4]")["ok"], 4);
    assert_eq!(one("total", "[4, [1, 2]]")["ok"], 7);
    // `inspect` shows the defaults and the tail as Python writes them.
    let shown = common::stdout(&common::host(["inspect", &plugin]));
    for sig in [
        "add3(x: i64, y: i64, z: i64 = 3) -> i64  [name=proj.tasks.add3]",
        "greet(name: String, title: Option<String> = None) -> String",
        "total(first: i64, *rest: Vec<i64>) -> i64",
    ] {
        assert!(shown.contains(sig), "{sig}:\n{shown}");
    }
    // Too few without a default stays a bad_args error naming the count.
    let e = one("add3", "[1]");
    assert_eq!(e["error"]["kind"], "bad_args", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("expects 3 arguments, got 1")),
        "{e}"
    );
}

/// A mapping the worker cannot honour stops it at start (exit 2) naming
/// the flag, the file line or the task; nothing is consumed.
#[test]
fn k29_bad_task_name_mappings_stop_the_worker_naming_them() {
    let plugin = common::plugin_str("proj");
    let dir = celery::unique_temp_dir("k29-args-bad-map");
    let twice = common::write_file(&dir, "twice.txt", b"x=proj.mul\nx=proj.add\n");
    let garbled = common::write_file(&dir, "garbled.txt", b"ok=proj.mul\nbad line\n");
    let missing = dir.join("missing.txt").display().to_string();
    for (flag, value, says) in [
        (
            "--task-name",
            "proj.tasks.x=proj.nope",
            "plugin `proj` has no task `nope`",
        ),
        ("--task-name", "a b=proj.mul", "`a b` is not a task name"),
        (
            "--task-names",
            twice.as_str(),
            "`x` is mapped to both `proj.mul` and `proj.add`",
        ),
        (
            "--task-names",
            garbled.as_str(),
            "garbled.txt:2: \"bad line\" is not CELERY=PLUGIN.TASK",
        ),
        ("--task-names", missing.as_str(), "missing.txt"),
    ] {
        let out = common::host([
            "worker",
            &plugin,
            "--broker",
            "redis://127.0.0.1:1/0",
            flag,
            value,
        ]);
        let err = common::stderr(&out);
        assert_eq!(common::exit_code(&out), 2, "{flag} {value}: {err}");
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
}
