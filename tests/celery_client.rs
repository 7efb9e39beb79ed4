//! The producer side of the Celery mode (`billiard_host::celery::client`,
//! `billiard-host submit`, `billiard-host run --broker`) against a real
//! redis-server, and the test infrastructure of tests/common/celery.rs.
use crate::common;

use common::celery::{self, Reply};

/// The helpers' own contract: a private redis-server answers, dies on
/// `kill()` and comes back empty on the same port after `restart()`.
#[test]
fn redis_server_kill_and_restart_on_same_port() {
    let Some(mut redis) = celery::redis_or_skip("redis_server_kill_and_restart_on_same_port")
    else {
        return;
    };
    let port = redis.port();
    assert_eq!(redis.cmd(&["SET", "k", "v"]), Reply::Status("OK".into()));
    assert_eq!(redis.cmd(&["GET", "k"]).text(), "v");
    let pid = redis.pid().expect("running");
    redis.kill();
    assert!(!common::running(pid), "redis-server {pid} survived kill()");
    assert!(redis.conn_err().is_some(), "still answering after kill()");
    redis.restart();
    assert_eq!(redis.port(), port);
    assert!(
        redis.cmd(&["GET", "k"]).is_nil(),
        "no persistence: the key is gone"
    );
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}/0"));
    let pid = redis.pid().expect("running");
    drop(redis);
    assert!(!common::running(pid), "redis-server {pid} survived drop");
}

/// The venv's Celery reaches our redis-server: a Python `send_task` lands
/// in the `celery` list as a kombu envelope.
#[test]
fn python_celery_publishes_to_private_redis() {
    let Some((redis, _py)) = celery::celery_or_skip("python_celery_publishes_to_private_redis")
    else {
        return;
    };
    let script = format!(
        "{}\nr = app.send_task('math.square', args=[3])\nprint(json.dumps({{'id': r.id}}))",
        celery::py_app(&redis.url())
    );
    let v = celery::python_json(&script, &[]);
    let id = v["id"].as_str().expect("an id");
    let queue = redis.list_json("celery");
    assert_eq!(queue.len(), 1, "{queue:?}");
    assert_eq!(queue[0]["headers"]["id"], id);
    assert_eq!(queue[0]["headers"]["task"], "math.square");
    assert_eq!(
        redis
            .cmd(&["SMEMBERS", "_kombu.binding.celery"])
            .array()
            .len(),
        1
    );
}

// ----- the producer side ---------------------------------------------------

use std::time::Duration;

use billiard_host::celery::client::{Client, ClientError, SendOptions};
use billiard_host::ErrorKind;
use serde_json::{json, Map, Value};

/// A `billiard-host worker` with the math and faults plugins on `url`.
fn worker(url: &str, queue: &str) -> celery::Worker {
    celery::spawn_worker([
        "worker",
        common::plugin_str("math").as_str(),
        "--plugin",
        common::plugin_str("faults").as_str(),
        "--broker",
        url,
        "-Q",
        queue,
        "--concurrency",
        "2",
    ])
}

/// The library Client against a billiard-host worker: a value comes back
/// through `get_timeout`, kwargs reach the task, a failure comes back as
/// `ClientError::Task` with our error kind, and a result stored before
/// `get` is found (the GET after the SUBSCRIBE).
#[test]
fn client_send_task_and_get() {
    let Some(redis) = celery::redis_or_skip("client_send_task_and_get") else {
        return;
    };
    let _w = worker(&redis.url(), "celery");
    let client = Client::connect(&redis.url()).expect("connect");
    let opts = SendOptions::default();
    let limit = Duration::from_secs(60);

    let h = client
        .send_task("math.square", vec![json!(3)], Map::new(), &opts)
        .unwrap();
    assert_eq!(h.get_timeout(limit).unwrap(), json!(9));

    let mut kw = Map::new();
    kw.insert("b".into(), json!(2));
    let h = client
        .send_task("math.add", vec![json!(40)], kw, &opts)
        .unwrap();
    assert_eq!(h.get_timeout(limit).unwrap(), json!(42));

    for (task, args, kind) in [
        ("faults.panic", vec![json!("boom")], ErrorKind::Panic),
        ("faults.fail", vec![json!("nope")], ErrorKind::TaskError),
        ("math.square", vec![json!("x")], ErrorKind::BadArgs),
        ("math.no_such_task", vec![], ErrorKind::UnknownTask),
    ] {
        let h = client.send_task(task, args, Map::new(), &opts).unwrap();
        match h.get_timeout(limit) {
            Err(ClientError::Task { id, error }) => {
                assert_eq!(id, h.id());
                assert_eq!(error.kind, kind, "{task}: {error:?}");
            }
            other => panic!("{task}: expected a {kind} failure, got {other:?}"),
        }
    }
    let h = client
        .send_task("faults.panic", vec![json!("boom")], Map::new(), &opts)
        .unwrap();
    let err = h.get_timeout(limit).unwrap_err();
    assert!(err.to_string().contains("boom"), "{err}");

    // Stored before anyone waits: found by the GET, not the PUBLISH.
    let h = client
        .send_task("math.square", vec![json!(5)], Map::new(), &opts)
        .unwrap();
    assert!(
        common::eventually(limit, || redis.task_meta(h.id()).is_some()),
        "no result stored for {}",
        h.id()
    );
    assert_eq!(h.ready().unwrap().map(|m| m.result), Some(json!(25)));
    assert_eq!(h.get_timeout(Duration::from_secs(5)).unwrap(), json!(25));
    assert_eq!(client.result(h.id()).get().unwrap(), json!(25));
}

/// Nobody consumes queue `nobody`: `get_timeout` times out, and the
/// message waits in the queue list (kombu's layout) with its binding.
#[test]
fn client_get_timeout_and_the_queue_layout() {
    let Some(redis) = celery::redis_or_skip("client_get_timeout_and_the_queue_layout") else {
        return;
    };
    let client = Client::connect(&redis.url()).unwrap();
    let opts = SendOptions {
        queue: Some("nobody".into()),
        priority: 6,
        ..SendOptions::default()
    };
    let h = client
        .send_task("math.square", vec![json!(2)], Map::new(), &opts)
        .unwrap();
    match h.get_timeout(Duration::from_millis(300)) {
        Err(ClientError::Timeout { id, .. }) => assert_eq!(id, h.id()),
        other => panic!("expected a timeout, got {other:?}"),
    }
    let q = redis.list_json("nobody\x06\x166");
    assert_eq!(q.len(), 1, "the priority-6 list holds it");
    assert_eq!(q[0]["headers"]["id"], h.id());
    assert_eq!(q[0]["properties"]["delivery_info"]["routing_key"], "nobody");
    let members = redis.cmd(&["SMEMBERS", "_kombu.binding.nobody"]);
    assert_eq!(members.array().len(), 1);
    assert_eq!(members.array()[0].text(), "nobody\x06\x16\x06\x16nobody");
}

/// Job lines covering every error kind and a few values.
const MIXED: &[&str] = &[
    "[3]",
    r#"{"task": "math.add", "args": [1, 2]}"#,
    r#"{"task": "faults.panic", "args": ["boom"]}"#,
    r#"{"task": "faults.fail", "args": ["nope"]}"#,
    r#"["not a number"]"#,
    r#"{"task": "math.no_such_task", "args": []}"#,
    "this is not json",
    r#"{"args": 3}"#,
    r#"{"task": "faults.spin_ms", "args": [20000], "time_limit": "300ms"}"#,
    r#"{"task": "faults.cooperative_spin", "args": [20000], "soft_time_limit": "200ms"}"#,
    r#"{"task": "faults.abort", "args": []}"#,
    r#"{"task": "math.fib", "args": [50]}"#,
    "",
    r#"{"task": "math.transform", "args": [{"id": 7, "name": "box", "shape": {"rect": {"w": 2.0, "h": 3.0}}, "note": null, "tags": {}}, 2.0]}"#,
];

/// `submit --input --wait` and `run --broker --input` print what `run`
/// prints for the same input: one line per non-blank line, in input order,
/// the same values and error kinds, the same exit status.
#[test]
fn submit_wait_and_run_broker_match_local_run() {
    let Some(redis) = celery::redis_or_skip("submit_wait_and_run_broker_match_local_run") else {
        return;
    };
    let dir = common::scratch("submit_wait_and_run_broker_match_local_run");
    let input = common::lines_file(&dir, "jobs.jsonl", MIXED);
    let math = common::plugin_str("math");
    let faults = common::plugin_str("faults");
    let local = celery::host_timeout(&[
        "run",
        &math,
        "--plugin",
        &faults,
        "--task",
        "math.square",
        "--input",
        &input,
        "-q",
    ]);
    let local_lines = common::json_lines(&common::stdout(&local));
    assert_eq!(
        local_lines.len(),
        MIXED.len() - 1,
        "{}",
        common::stderr(&local)
    );
    let kinds: Vec<&str> = local_lines
        .iter()
        .filter_map(|l| l["error"]["kind"].as_str())
        .collect();
    for k in ErrorKind::ALL {
        if k != ErrorKind::Terminated && k != ErrorKind::PluginLoad {
            assert!(
                kinds.contains(&k.as_str()),
                "the input covers {k}: {kinds:?}"
            );
        }
    }

    let _w = worker(&redis.url(), "celery");
    let url = redis.url();
    let fleet = celery::host_timeout(&[
        "submit",
        "--broker",
        &url,
        "--task",
        "math.square",
        "--input",
        &input,
        "--wait",
        "-q",
    ]);
    assert_eq!(
        celery::gist(&common::json_lines(&common::stdout(&fleet))),
        celery::gist(&local_lines),
        "submit --wait\n{}",
        common::stderr(&fleet)
    );
    assert_eq!(common::exit_code(&fleet), common::exit_code(&local));
    assert_eq!(common::exit_code(&fleet), 1);
    // submit keeps the results (a Python client may read them too): one
    // per line sent (the two that are not jobs were not sent).
    assert_eq!(redis.keys("celery-task-meta-*").len(), 11);

    let out = dir.join("fleet.jsonl");
    let fleet = celery::host_timeout(&[
        "run",
        "--broker",
        &url,
        "--task",
        "math.square",
        "--input",
        &input,
        "-o",
        out.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        celery::gist(&common::json_lines(&text)),
        celery::gist(&local_lines),
        "run --broker\n{}",
        common::stderr(&fleet)
    );
    assert_eq!(common::exit_code(&fleet), 1);
    assert!(
        common::stderr(&fleet).contains("13 jobs: 4 ok, 9 failed (1 panic, 1 task_error, 3 bad_args, 1 unknown_task, 1 worker_lost, 1 soft_time_limit, 1 time_limit)"),
        "run's summary line: {}",
        common::stderr(&fleet)
    );
    // run --broker deletes what it read: only submit's 11 remain.
    assert_eq!(redis.keys("celery-task-meta-*").len(), 11);

    // --unordered: the same lines, any order.
    let fleet = celery::host_timeout(&[
        "run",
        "--broker",
        &url,
        "--task",
        "math.square",
        "--input",
        &input,
        "--unordered",
        "-q",
    ]);
    let mut got = celery::gist(&common::json_lines(&common::stdout(&fleet)));
    got.sort_by_key(|l| l["index"].as_u64());
    assert_eq!(got, celery::gist(&local_lines));

    // One job; success is exit 0.
    let one = celery::host_timeout(&[
        "run",
        "--broker",
        &url,
        "--task",
        "math.square",
        "--args",
        "[12]",
    ]);
    assert_eq!(common::stdout(&one), "{\"index\":0,\"ok\":144}\n");
    assert_eq!(common::exit_code(&one), 0);
}

/// Usage errors of the producer side exit 2 with a message: an
/// unreachable broker, a worker-only flag with `run --broker`, a plugin
/// with `run --broker`, bad `--kwargs`.
#[test]
fn producer_usage_errors() {
    let port = celery::free_port().to_string();
    let url = format!("redis://127.0.0.1:{port}/0");
    let out = celery::host_timeout(&[
        "submit",
        "--broker",
        &url,
        "--task",
        "math.square",
        "--args",
        "[1]",
    ]);
    assert_eq!(common::exit_code(&out), 2);
    assert!(
        common::stderr(&out).contains("cannot reach the broker"),
        "{}",
        common::stderr(&out)
    );
    let out = celery::host_timeout(&[
        "run",
        "--broker",
        &url,
        "--task",
        "square",
        "--args",
        "[1]",
        "--workers",
        "2",
    ]);
    assert_eq!(common::exit_code(&out), 2);
    assert!(
        common::stderr(&out).contains("--workers"),
        "{}",
        common::stderr(&out)
    );
    let math = common::plugin_str("math");
    let out = celery::host_timeout(&[
        "run", &math, "--broker", &url, "--task", "square", "--args", "[1]",
    ]);
    assert_eq!(common::exit_code(&out), 2);
    let out = celery::host_timeout(&[
        "submit", "--broker", &url, "--task", "math.add", "--args", "[1]", "--kwargs", "[2]",
    ]);
    assert_eq!(common::exit_code(&out), 2);
    assert!(
        common::stderr(&out).contains("--kwargs"),
        "{}",
        common::stderr(&out)
    );
}

/// A Python `AsyncResult(id).get()` sees the results of jobs our `submit`
/// sent (a billiard-host worker ran them): values, and failures raised as
/// the mapped exception types.
#[test]
fn python_asyncresult_gets_results_of_our_submit() {
    let Some((redis, _py)) =
        celery::celery_or_skip("python_asyncresult_gets_results_of_our_submit")
    else {
        return;
    };
    let dir = common::scratch("python_asyncresult_gets_results_of_our_submit");
    let input = common::lines_file(
        &dir,
        "jobs.jsonl",
        &[
            "[7]",
            r#"{"task": "faults.panic", "args": ["boom"]}"#,
            r#"{"task": "faults.abort", "args": []}"#,
            r#"{"task": "math.add", "args": [2, 3]}"#,
        ],
    );
    let url = redis.url();
    // Sent before any worker runs: Python subscribes while they wait.
    let sent = celery::host_timeout(&[
        "submit",
        "--broker",
        &url,
        "--task",
        "math.square",
        "--input",
        &input,
    ]);
    assert_eq!(common::exit_code(&sent), 0, "{}", common::stderr(&sent));
    let ids: Vec<String> = common::json_lines(&common::stdout(&sent))
        .iter()
        .enumerate()
        .map(|(i, l)| {
            assert_eq!(l["index"], i);
            l["id"].as_str().expect("an id").to_string()
        })
        .collect();
    assert_eq!(ids.len(), 4);
    let _w = worker(&url, "celery");
    let script = format!(
        r#"{}
from celery.result import AsyncResult
out = []
for i in json.loads(sys.argv[1]):
    try:
        out.append({{"ok": AsyncResult(i, app=app).get(timeout=60)}})
    except Exception as e:
        out.append({{"exc": type(e).__name__, "module": type(e).__module__, "text": str(e)}})
print(json.dumps(out))
"#,
        celery::py_app(&url)
    );
    let got = celery::python_json(&script, &[&serde_json::to_string(&ids).unwrap()]);
    assert_eq!(got[0], json!({"ok": 49}));
    assert_eq!(got[1]["exc"], "TaskPanic", "{got}");
    assert!(got[1]["text"].as_str().unwrap().contains("boom"), "{got}");
    assert_eq!(got[2]["exc"], "WorkerLostError", "{got}");
    assert_eq!(got[2]["module"], "billiard.exceptions", "{got}");
    assert_eq!(got[3], json!({"ok": 5}));
}

/// The envelope as a shape: every key kept, every leaf replaced by its
/// JSON type (ids, uuids, times and origins differ between any two
/// messages). `ignore_result` is null or false: both mean "store".
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        Value::String(_) => json!("string"),
        Value::Number(_) => json!("number"),
        Value::Bool(_) => json!("bool"),
        Value::Null => json!("null"),
    }
}

fn body_of(env: &Value) -> Value {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(env["body"].as_str().expect("a base64 body"))
        .expect("base64");
    serde_json::from_slice(&raw).expect("a JSON body")
}

/// A message from Python's `send_task` and one from our `submit` for the
/// same call are the same: the same keys and JSON types everywhere, the
/// same body, the same fixed fields, the same list and binding.
#[test]
fn python_send_task_and_our_submit_lay_out_the_same_message() {
    let Some((redis, _py)) =
        celery::celery_or_skip("python_send_task_and_our_submit_lay_out_the_same_message")
    else {
        return;
    };
    let url = redis.url();
    for (queue, extra_py, extra_ours) in [
        ("shape", "", vec![]),
        (
            "shape2",
            ", priority=6, time_limit=10, soft_time_limit=5, countdown=30, expires=600",
            vec![
                "--priority",
                "6",
                "--time-limit",
                "10s",
                "--soft-time-limit",
                "5s",
                "--countdown",
                "30s",
                "--expires",
                "600s",
            ],
        ),
    ] {
        let script = format!(
            "{}\nr = app.send_task('math.add', args=[1], kwargs={{'b': 2}}, queue={queue:?}{extra_py})\nprint(json.dumps(r.id))",
            celery::py_app(&url)
        );
        let py_id = celery::python_json(&script, &[]);
        let mut args = vec![
            "submit",
            "--broker",
            &url,
            "--task",
            "math.add",
            "--args",
            "[1]",
            "--kwargs",
            r#"{"b": 2}"#,
            "-Q",
            queue,
        ];
        args.extend(extra_ours.iter().copied());
        let ours = celery::host_timeout(&args);
        assert_eq!(common::exit_code(&ours), 0, "{}", common::stderr(&ours));
        let our_id = common::json_lines(&common::stdout(&ours))[0]["id"].clone();

        let key = if extra_py.is_empty() {
            queue.to_string()
        } else {
            format!("{queue}\x06\x166")
        };
        let envs = redis.list_json(&key);
        assert_eq!(envs.len(), 2, "both messages in {key:?}: {envs:?}");
        let find = |id: &Value| {
            envs.iter()
                .find(|e| &e["headers"]["id"] == id)
                .unwrap_or_else(|| panic!("no message {id} in {envs:?}"))
                .clone()
        };
        let (mut py, mut us) = (find(&py_id), find(&our_id));
        for e in [&mut py, &mut us] {
            if e["headers"]["ignore_result"] == json!(false) {
                e["headers"]["ignore_result"] = Value::Null;
            }
        }
        assert_eq!(shape(&us), shape(&py), "\nours:   {us}\npython: {py}");
        assert_eq!(body_of(&us), body_of(&py));
        for path in [
            "/content-type",
            "/content-encoding",
            "/headers/lang",
            "/headers/task",
            "/headers/retries",
            "/headers/group",
            "/headers/parent_id",
            "/headers/ignore_result",
            "/properties/delivery_mode",
            "/properties/delivery_info",
            "/properties/priority",
            "/properties/body_encoding",
        ] {
            assert_eq!(us.pointer(path), py.pointer(path), "{path}");
        }
        // Limits as numbers (Python keeps the int it was given, we send
        // seconds as floats; both workers read either).
        let secs = |e: &Value| -> Vec<Option<f64>> {
            e["headers"]["timelimit"]
                .as_array()
                .expect("timelimit is an array")
                .iter()
                .map(Value::as_f64)
                .collect()
        };
        assert_eq!(secs(&us), secs(&py));
        assert_eq!(us["headers"]["root_id"], us["headers"]["id"]);
        assert_eq!(us["properties"]["correlation_id"], us["headers"]["id"]);
        for binding in ["_kombu.binding.", "_kombu.binding_permanent."] {
            let members = redis.cmd(&["SMEMBERS", &format!("{binding}{queue}")]);
            assert_eq!(members.array().len(), 1, "one binding for both producers");
        }
    }
}

/// Starts `billiard-host submit --broker URL ARGS` with stdout and stderr in
/// `dir/<name>.out` and `.err` (files: the process is not stopped by a
/// full pipe while the test waits).
fn submit_child(
    dir: &std::path::Path,
    name: &str,
    url: &str,
    args: &[&str],
) -> std::process::Child {
    let out = std::fs::File::create(dir.join(format!("{name}.out"))).unwrap();
    let err = std::fs::File::create(dir.join(format!("{name}.err"))).unwrap();
    common::host_command()
        .args(["submit", "--broker", url])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap()
}

fn read_in(dir: &std::path::Path, name: &str, ext: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.{ext}"))).unwrap_or_default()
}

fn wait_exit(child: &mut std::process::Child) -> Option<i32> {
    let mut status = None;
    assert!(
        common::eventually(Duration::from_secs(60), || {
            status = child.try_wait().unwrap();
            status.is_some()
        }),
        "submit did not exit"
    );
    status.unwrap().code()
}

/// Issue 28, item 1: the FIRST SIGINT or SIGTERM stops `submit --wait` (it
/// used to keep waiting for a queue nobody consumes until a second one):
/// the results already received are written, every job still awaited ends
/// `terminated` naming its task id, exit 130. Variants: three jobs on a
/// queue nobody consumes (SIGTERM), and one answered job beside one still
/// running (SIGINT).
#[test]
fn u28_submit_wait_stops_on_the_first_signal() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let Some(redis) = celery::redis_or_skip("u28_submit_wait_stops_on_the_first_signal") else {
        return;
    };
    let dir = common::scratch("u28_submit_wait_stops_on_the_first_signal");
    let url = redis.url();
    let limit = Duration::from_secs(60);

    // Nobody consumes `never`: one SIGTERM, all three end terminated.
    let input = common::lines_file(&dir, "jobs.jsonl", &["[1]", "[2]", "[3]"]);
    let mut child = submit_child(
        &dir,
        "never",
        &url,
        &[
            "--task",
            "math.square",
            "--input",
            &input,
            "--wait",
            "-Q",
            "never",
        ],
    );
    assert!(common::eventually(limit, || redis
        .cmd(&["LLEN", "never"])
        .int()
        == 3));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(
        wait_exit(&mut child),
        Some(130),
        "{}",
        read_in(&dir, "never", "err")
    );
    let lines = common::json_lines(&read_in(&dir, "never", "out"));
    assert_eq!(lines.len(), 3);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["index"], i);
        assert_eq!(l["error"]["kind"], "terminated", "{l}");
        let msg = l["error"]["message"].as_str().unwrap();
        assert!(msg.contains("SIGTERM") && msg.contains("task "), "{msg}");
    }
    // The jobs stay queued for a worker to come.
    assert_eq!(redis.cmd(&["LLEN", "never"]).int(), 3);

    // A worker answers the first job and is busy with the second: one
    // SIGINT writes the first result and ends the second terminated.
    let _w = worker(&url, "some");
    let jobs = common::lines_file(
        &dir,
        "some.jsonl",
        &[
            r#"{"task": "math.square", "args": [7]}"#,
            r#"{"task": "faults.sleep_ms", "args": [600000]}"#,
        ],
    );
    let mut child = submit_child(
        &dir,
        "some",
        &url,
        &["--input", &jobs, "--wait", "-Q", "some"],
    );
    assert!(
        common::eventually(limit, || read_in(&dir, "some", "out").contains("\"ok\":49")),
        "{}",
        read_in(&dir, "some", "err")
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    assert_eq!(
        wait_exit(&mut child),
        Some(130),
        "{}",
        read_in(&dir, "some", "err")
    );
    let lines = common::json_lines(&read_in(&dir, "some", "out"));
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["ok"], 49);
    assert_eq!(lines[1]["error"]["kind"], "terminated", "{}", lines[1]);
    assert!(read_in(&dir, "some", "err").contains("SIGINT: stopping"));
}

/// Issue 28, item 1: `submit --wait --timeout` to a queue nobody consumes
/// gives up (exit 124, the lines `terminated` with their task ids) after a
/// note on stderr that the messages still wait in the queue; with a worker
/// the same command succeeds; `--timeout` is refused without --wait and
/// `never` is accepted.
#[test]
fn u28_submit_wait_timeout_and_the_no_consumer_note() {
    let Some(redis) = celery::redis_or_skip("u28_submit_wait_timeout_and_the_no_consumer_note")
    else {
        return;
    };
    let url = redis.url();
    let out = celery::host_timeout(&[
        "submit",
        "--broker",
        &url,
        "--task",
        "math.square",
        "--args",
        "[3]",
        "--wait",
        "--timeout",
        "1s",
        "-Q",
        "nobody",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "{stderr}");
    assert!(
        stderr.contains("1 message(s) still wait in queue `nobody`")
            && stderr.contains("Is a worker consuming it"),
        "{stderr}"
    );
    let lines = common::json_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["error"]["kind"], "terminated");
    let msg = lines[0]["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("--timeout 1s") && msg.contains("task "),
        "{msg}"
    );

    // A consumed queue: the result comes well within the timeout.
    let _w = worker(&url, "busy");
    let out = celery::host_timeout(&[
        "submit",
        "--broker",
        &url,
        "--task",
        "math.square",
        "--args",
        "[3]",
        "--wait",
        "--timeout",
        "10m",
        "-Q",
        "busy",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"index\":0,\"ok\":9}\n"
    );
    let out = celery::host_timeout(&[
        "submit",
        "--broker",
        &url,
        "--task",
        "math.square",
        "--args",
        "[4]",
        "--wait",
        "--timeout",
        "never",
        "-Q",
        "busy",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Usage: no --wait, a zero or unparsable duration.
    for bad in [
        vec!["--timeout", "1s"],
        vec!["--wait", "--timeout", "0s"],
        vec!["--wait", "--timeout", "soon"],
    ] {
        let mut args = vec![
            "submit",
            "--broker",
            &url,
            "--task",
            "math.square",
            "--args",
            "[1]",
        ];
        args.extend(bad.iter().copied());
        let out = celery::host_timeout(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{bad:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Over TLS (`rediss://` with a private CA): `submit --wait` and the
/// library's `get_timeout` wait for their results through a TLS
/// subscription (RESP3 push frames), a worker on the same TLS broker.
#[test]
fn producer_over_tls() {
    let Some((redis, url)) = celery::tls_redis_or_skip("producer_over_tls") else {
        return;
    };
    let _w = worker(&url, "celery");
    let out = celery::host_timeout(&[
        "submit",
        "--broker",
        &url,
        "--task",
        "math.square",
        "--args",
        "[6]",
        "--wait",
    ]);
    assert_eq!(
        common::stdout(&out),
        "{\"index\":0,\"ok\":36}\n",
        "{}",
        common::stderr(&out)
    );
    let client = Client::connect(&url).expect("connect over TLS");
    for i in 0..20u64 {
        let h = client
            .send_task(
                "math.square",
                vec![json!(i)],
                Map::new(),
                &SendOptions::default(),
            )
            .unwrap();
        assert_eq!(
            h.get_timeout(Duration::from_secs(60)).unwrap(),
            json!(i * i)
        );
    }
    // The plain listener sees what went over TLS.
    assert_eq!(redis.keys("celery-task-meta-*").len(), 21);
}

/// Issue 28 (item 8): Celery users' habits. `worker -l LEVEL` /
/// `--loglevel LEVEL` take Celery's level names in any case and override
/// BILLIARD_LOG/RUST_LOG (the command line is the most specific setting);
/// a name that is none of them is a usage error naming them. `submit
/// --kwargs` alone (no `--args`) sends a job whose arguments are all by
/// name.
#[test]
fn u28_worker_loglevel_as_celery_and_submit_kwargs_alone() {
    let math = common::plugin_str("math");
    for bad in ["verbose", "10", "information"] {
        let out = celery::host_timeout(&["worker", &math, "--loglevel", bad]);
        assert_eq!(common::exit_code(&out), 2, "{bad:?}");
        let e = common::stderr(&out);
        assert!(e.contains("debug, info, warning, error"), "{bad:?}: {e}");
    }
    let Some(redis) =
        celery::redis_or_skip("u28_worker_loglevel_as_celery_and_submit_kwargs_alone")
    else {
        return;
    };
    let url = redis.url();
    // (flag, BILLIARD_LOG, debug lines expected): the flag wins both ways.
    for (flag, level, env, debug) in [
        ("-l", "DEBUG", "error", true),
        ("--loglevel", "Info", "debug", false),
        ("--loglevel=info", "", "debug", false),
    ] {
        let queue = format!("u28-{}", level.to_lowercase());
        let mut cmd = common::host_command();
        cmd.args(["worker", &math, "--broker", &url, "-Q", &queue, "-c", "1"])
            .env("BILLIARD_LOG", env);
        if level.is_empty() {
            cmd.arg(flag);
        } else {
            cmd.args([flag, level]);
        }
        let mut w = celery::spawn_worker_cmd(cmd);
        let out = celery::host_timeout(&[
            "submit",
            "--broker",
            &url,
            "-Q",
            &queue,
            "--task",
            "math.add",
            "--kwargs",
            r#"{"b": 40, "a": 2}"#,
            "--wait",
        ]);
        assert_eq!(
            common::stdout(&out),
            "{\"index\":0,\"ok\":42}\n",
            "{}",
            common::stderr(&out)
        );
        assert_eq!(common::exit_code(&out), 0);
        w.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(
            w.wait_timeout(Duration::from_secs(60))
                .and_then(|s| s.code()),
            Some(0)
        );
        // The last line a worker logs at info; then its stderr is whole.
        assert!(
            common::eventually(Duration::from_secs(10), || w
                .stderr()
                .contains("shutdown complete")),
            "{}",
            w.stderr()
        );
        let log = w.stderr();
        assert_eq!(
            log.contains(" DEBUG "),
            debug,
            "{flag} {level}, BILLIARD_LOG={env}:\n{log}"
        );
    }
    // --kwargs needs the task; with --input it is refused (one job only).
    let out = celery::host_timeout(&["submit", "--broker", &url, "--kwargs", "{}"]);
    assert_eq!(common::exit_code(&out), 2);
    assert!(
        common::stderr(&out).contains("--task"),
        "{}",
        common::stderr(&out)
    );
    let out = celery::host_timeout(&[
        "submit", "--broker", &url, "--task", "math.add", "--kwargs", "{}", "--input", "-",
    ]);
    assert_eq!(common::exit_code(&out), 2);
    assert!(
        common::stderr(&out).contains("--input"),
        "{}",
        common::stderr(&out)
    );
}

/// Issue 28 (item 4): a task the workers do not have comes back as
/// `NotRegistered` whose first argument is still the name (as Celery's
/// worker stores it) and whose second says the closest registered name;
/// `submit --wait` shows it on the line's `unknown_task` result. (The
/// producer cannot know the workers' tasks before it sends.)
#[test]
fn u28_not_registered_says_the_closest_registered_name() {
    let Some((redis, _py)) =
        celery::celery_or_skip("u28_not_registered_says_the_closest_registered_name")
    else {
        return;
    };
    let url = redis.url();
    let _w = worker(&url, "celery");
    let out = celery::host_timeout(&[
        "submit",
        "--broker",
        &url,
        "--task",
        "math.sqare",
        "--args",
        "[3]",
        "--wait",
    ]);
    assert_eq!(common::exit_code(&out), 1, "{}", common::stderr(&out));
    let line = &common::json_lines(&common::stdout(&out))[0];
    assert_eq!(line["error"]["kind"], "unknown_task", "{line}");
    let text = line["error"]["message"].as_str().unwrap_or_default();
    assert!(text.contains("did you mean `math.square`?"), "{line}");
    let script = format!(
        r#"{}
from celery.exceptions import NotRegistered
out = []
for name in ["math.sqare", "fbi", "nothing_like_it"]:
    try:
        app.send_task(name, args=[3]).get(timeout=60)
        out.append(None)
    except NotRegistered as e:
        out.append({{"args": list(e.args), "text": str(e)}})
print(json.dumps(out))
"#,
        celery::py_app(&url)
    );
    let got = celery::python_json(&script, &[]);
    assert_eq!(
        got[0]["args"],
        json!(["math.sqare", "did you mean `math.square`?"]),
        "{got}"
    );
    assert_eq!(
        got[1]["args"],
        json!(["fbi", "did you mean `fib`?"]),
        "{got}"
    );
    // Nothing near: the name alone, as Celery.
    assert_eq!(got[2]["args"], json!(["nothing_like_it"]), "{got}");
}

/// Issue 28, item 7: a broker URL that can never work is a configuration
/// error at start, exit 2 with a message saying so, for `worker` (which
/// used to retry it for ever) and `submit`: a wrong password (WRONGPASS),
/// a user without the rights (NOPERM: the worker's script load, submit's
/// LPUSH), a database index out of range, a scheme this host does not speak
/// (said by name), no password where one is required (NOAUTH). A broker
/// that is only down keeps being retried: the worker waits for it and
/// consumes once it is back.
#[test]
fn u28_a_broker_url_that_can_never_work_is_a_configuration_error() {
    let Some(redis) = celery::redis_or_skip("u28_a_broker_url_that_can_never_work") else {
        return;
    };
    drop(redis);
    let mut redis = celery::RedisServer::start_with(&[
        "--user", "alice", "on", ">right", "~*", "&*", "+@all", "--user", "limited", "on", ">pw",
        "~*", "+ping",
    ]);
    let port = redis.port();
    let math = common::plugin_str("math");
    let mut bad = vec![
        (
            format!("redis://alice:wrong@127.0.0.1:{port}/0"),
            "password",
        ),
        (
            format!("redis://limited:pw@127.0.0.1:{port}/0"),
            "permissions",
        ),
        (redis.url_db(99), "DB index is out of range"),
        // amqp:// is a broker since issue 25; a scheme no transport
        // speaks is still said by name.
        (format!("sqs://127.0.0.1:{port}//"), "the scheme `sqs://`"),
    ];
    let check = |url: &str, what: &str| {
        let out = celery::host_timeout(&["worker", &math, "--broker", url]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "worker {url}: {stderr}");
        assert!(stderr.contains(what), "worker {url}: {stderr}");
        assert!(
            url.starts_with("sqs") || stderr.contains("configuration error"),
            "worker {url}: {stderr}"
        );
        assert!(
            !stderr.contains(":wrong@") && !stderr.contains(":pw@"),
            "{stderr}"
        );
        let out = celery::host_timeout(&[
            "submit",
            "--broker",
            url,
            "--task",
            "math.square",
            "--args",
            "[1]",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "submit {url}: {stderr}");
        assert!(
            stderr.contains(what) && stderr.contains("configuration error"),
            "submit {url}: {stderr}"
        );
    };
    for (url, what) in bad.drain(..) {
        check(&url, what);
    }

    // Down is not wrong: the worker retries until the broker is back.
    redis.kill();
    let url = format!("redis://alice:right@127.0.0.1:{port}/0");
    let mut w = celery::spawn_until(
        {
            let mut cmd = common::host_command();
            cmd.args(["worker", &math, "--broker", &url]);
            cmd
        },
        "cannot reach the broker yet",
        celery::WORKER_START,
    );
    redis.restart();
    celery::wait_until("the worker consumes", celery::DEADLINE, || {
        w.stderr().contains(celery::WORKER_READY)
    });
    w.signal(nix::sys::signal::Signal::SIGTERM);
    let status = w.wait_timeout(celery::DEADLINE).expect("the worker stops");
    assert_eq!(status.code(), Some(0), "{}", w.stderr());

    // Last (the test's own connections stop working): a password required
    // and none given.
    redis.cmd(&["CONFIG", "SET", "requirepass", "sekret"]);
    check(&redis.url(), "NOAUTH");
}
