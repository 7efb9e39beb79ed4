//! A Rust task's `ctx.progress(done, total)` in `billiard-host worker`
//! becomes Celery's custom state: a real Python client polling
//! `AsyncResult(id).state` / `.info` sees `PROGRESS` and
//! `{"current": .., "total": ..}` while the task runs, stored exactly as
//! Python's own `update_state(state="PROGRESS", meta=...)` stores it.
//!
//! Prerequisites as for tests/celery_redis.rs (`./scripts/test`): a
//! `redis-server` and the venv with `celery[redis]`; missing: a loud SKIP
//! (a failure with `CI=true`).

use crate::common;

use common::celery;
use serde_json::{json, Value};

/// The end of both scripts: Python's own meta of the state (`ref`, stored
/// under "ref-<id>" by the script just before), then the task let go and
/// its result.
const PY_FINISH: &str = r#"ref = app.backend.client.get(app.backend.get_key_for_task("ref-" + r.id))
open(flag, "w").write("go")
value = r.get(timeout=60)
print(json.dumps({"seen": seen, "raw": json.loads(raw), "ref": json.loads(ref),
                  "value": value, "final": AsyncResult(r.id, app=app).state}))
"#;

/// The meta our worker stored (`raw`) is Python's (`ref`), field for field
/// but the task id.
fn assert_stored_as_python_stores_it(v: &Value) {
    let mut raw = v["raw"].clone();
    let mut reference = v["ref"].clone();
    let id = raw["task_id"].as_str().unwrap().to_string();
    assert_eq!(reference["task_id"], json!(format!("ref-{id}")));
    raw.as_object_mut().unwrap().remove("task_id");
    reference.as_object_mut().unwrap().remove("task_id");
    assert_eq!(raw, reference, "{v}");
}

#[test]
fn python_sees_the_progress_of_a_running_rust_task() {
    let Some((redis, _py)) =
        celery::celery_or_skip("python_sees_the_progress_of_a_running_rust_task")
    else {
        return;
    };
    let url = redis.url();
    let stream = common::plugin_str("stream");
    let _w = celery::spawn_worker(["worker", &stream, "--broker", &url, "-c", "1"]);
    let dir = celery::unique_temp_dir("progress");
    let flag = dir.join("go");
    let script = format!(
        r#"{app}
from celery.result import AsyncResult
flag = sys.argv[1]
r = app.send_task("stream.progress_until_file", args=[flag, 7])
{see}raw = app.backend.client.get(app.backend.get_key_for_task(r.id))
# What Python's update_state stores for the same report (from inside a
# task: with its request), under another id.
from celery.app.task import Context
req = Context(id="ref-" + r.id, children=[])
app.backend.store_result("ref-" + r.id, {{"current": 1, "total": 2}}, "PROGRESS", request=req)
{finish}"#,
        app = celery::py_app(&url),
        see = celery::PY_SEE_PROGRESS,
        finish = PY_FINISH,
    );
    let v: Value = celery::python_json(&script, &[flag.to_str().unwrap()]);
    assert_eq!(
        v["seen"],
        json!(["PROGRESS", {"current": 1, "total": 2}]),
        "{v}"
    );
    // The stored meta is Python's, field for field (but the task id).
    assert_stored_as_python_stores_it(&v);
    assert_eq!(v["value"], json!(7), "{v}");
    assert_eq!(v["final"], json!("SUCCESS"), "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--track-started` (Celery's `task_track_started`): a Python client sees
/// STARTED, with the `{"pid", "hostname"}` Celery's worker stores, while
/// the task runs, stored as Python's own backend stores that state; the
/// result follows as usual.
#[test]
fn track_started_stores_started_as_celerys_worker_does() {
    let Some((redis, _py)) =
        celery::celery_or_skip("track_started_stores_started_as_celerys_worker_does")
    else {
        return;
    };
    let url = redis.url();
    let stream = common::plugin_str("stream");
    let w = celery::spawn_worker([
        "worker",
        &stream,
        "--broker",
        &url,
        "-c",
        "1",
        "-n",
        "started@%h",
        "--track-started",
    ]);
    let dir = celery::unique_temp_dir("track-started");
    let flag = dir.join("go");
    let script = format!(
        r#"{app}
from celery.result import AsyncResult
from celery.app.task import Context
flag = sys.argv[1]
r = app.send_task("stream.wait_for_file", args=[flag])
seen = []
deadline = time.time() + 60
while time.time() < deadline:
    a = AsyncResult(r.id, app=app)
    if a.state != "PENDING":
        seen = [a.state, a.info]
        break
    time.sleep(0.01)
raw = app.backend.client.get(app.backend.get_key_for_task(r.id))
info = seen[1] if len(seen) == 2 and isinstance(seen[1], dict) else {{}}
req = Context(id="ref-" + r.id, children=[])
app.backend.store_result("ref-" + r.id, {{"pid": info.get("pid"), "hostname": info.get("hostname")}},
                         "STARTED", request=req)
{finish}"#,
        app = celery::py_app(&url),
        finish = PY_FINISH,
    );
    let v: Value = celery::python_json(&script, &[flag.to_str().unwrap()]);
    assert_eq!(v["seen"][0], json!("STARTED"), "{v}");
    let host = v["seen"][1]["hostname"].as_str().unwrap_or_default();
    assert!(host.starts_with("started@"), "{v}");
    assert_eq!(v["seen"][1]["pid"], json!(w.pid()), "{v}");
    assert_stored_as_python_stores_it(&v);
    assert_eq!(v["value"], json!(1), "{v}");
    assert_eq!(v["final"], json!("SUCCESS"), "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}
