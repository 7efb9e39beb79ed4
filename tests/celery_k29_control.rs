//! Revoke and inspect as Celery 5.7's worker answers them (issue 29 items
//! 6 and 7), each from a plain Python Celery client, against a real
//! `billiard-host worker` and, in the same run, a real Python `celery
//! worker` on its own queue, so the expected behaviour is Celery's.
//!
//! - `AsyncResult.revoke()` (kombu sends it with `expires: 0`, no reply)
//!   takes effect: the id is REVOKED at once (Celery's `_revoke` marks it
//!   in the backend), its message is stored REVOKED and never run, also
//!   on a host started after the revoke.
//! - `revoke_by_stamped_headers` answers Celery's words and revokes the
//!   messages stamped so.
//! - `inspect registered` with task-info items, `conf`, `report`,
//!   `scheduled` (priority, `acknowledged`) have the Python worker's shape.

use crate::common;

use std::path::Path;

use common::celery;
use serde_json::Value;

fn node(tag: &str) -> String {
    celery::node(tag, "k29-control")
}

/// A Python Celery worker serving `math.add` and `math.square`
/// (`rate_limit="10/s"`) from queue `py`.
fn python_worker(python: &Path, url: &str, node: &str) -> celery::Worker {
    python_worker_with(python, url, node, &["--without-mingle"])
}

/// [`python_worker`] with other flags than `--without-mingle`.
fn python_worker_with(python: &Path, url: &str, node: &str, flags: &[&str]) -> celery::Worker {
    let dir = celery::unique_temp_dir("k29-control-python");
    let tasks = "@app.task(name='math.add')\ndef add(a, b):\n    return a + b\n\n\
                 @app.task(name='math.square', rate_limit='10/s')\ndef square(x):\n    return x * x\n";
    let mut all = vec!["-Q", "py", "-n", node];
    all.extend_from_slice(flags);
    celery::python_worker(python, url, &dir, "pyk29", tasks, &all)
}

/// Python helpers every script here shares: `merged(replies)` (a
/// broadcast's `[{node: reply}]` as one dict), `meta(id)` (the raw stored
/// result), `wait_changed(id, before)` (until the stored result is no
/// longer `before`).
const HELPERS: &str = r#"
import redis, uuid
R = redis.Redis.from_url(app.conf.broker_url)
def merged(rs):
    out = {}
    for item in rs or []:
        out.update(item)
    return out
def meta(i):
    return R.get('celery-task-meta-' + i)
def wait_changed(i, before, limit=30):
    end = time.time() + limit
    while meta(i) == before:
        assert time.time() < end, 'no new result for ' + i
        time.sleep(0.02)
    return json.loads(meta(i))
def wait_revoked_listed(nodes, ids, limit=30):
    end = time.time() + limit
    while True:
        rv = app.control.inspect(destination=nodes, timeout=2).revoked() or {}
        if all(set(ids) <= set(rv.get(n) or []) for n in nodes):
            return
        assert time.time() < end, rv
"#;

#[test]
fn k29_async_result_revoke_takes_effect_as_on_a_python_worker() {
    let Some((redis, python)) = celery::celery_or_skip("k29_async_result_revoke") else {
        return;
    };
    let url = redis.url();
    let (py_node, our_node) = (node("py"), node("ours"));
    let _py = python_worker(&python, &url, &py_node);
    let _ours = celery::worker_with(&["math"], &url, &["-Q", "ours", "-n", &our_node]);
    let script = format!(
        r#"{app}{helpers}
nodes = json.loads(sys.argv[1])
queues = {{"py": nodes[0], "ours": nodes[1]}}
ids = {{q: str(uuid.uuid4()) for q in ["py", "ours", "later"]}}
ps = R.pubsub()
ps.subscribe('/0.celery.pidbox')
ps.get_message(timeout=5)
for q in ["py", "ours", "later"]:
    app.AsyncResult(ids[q]).revoke()
arrived = []
end = time.time() + 10
while len(arrived) < 3 and time.time() < end:
    m = ps.get_message(timeout=1)
    if m and m['type'] == 'message':
        arrived.append(json.loads(m['data'])['headers'].get('expires'))
wait_revoked_listed(nodes, list(ids.values()))
at_once = {{q: app.AsyncResult(ids[q]).state for q in ids}}
before = {{q: meta(ids[q]) for q in ids}}
for q in queues:
    app.send_task('math.add', args=[1, 2], queue=q, task_id=ids[q])
after = {{}}
for q in queues:
    m = wait_changed(ids[q], before[q])
    after[q] = [m['status'], m['result']['exc_type'], m['result']['exc_message']]
ran = {{q: app.send_task('math.add', args=[2, 3], queue=q).get(timeout=30) for q in queues}}
print(json.dumps({{"expires": arrived, "at_once": at_once, "after": after, "ran": ran,
                   "later": ids["later"], "later_before": before["later"].decode()}}))
"#,
        app = celery::py_app(&url),
        helpers = HELPERS,
    );
    let nodes = serde_json::to_string(&[&py_node, &our_node]).unwrap_or_default();
    let out = celery::python_json(&script, &[&nodes]);
    // What kombu really sends for a revoke that waits for no reply.
    assert_eq!(out["expires"], serde_json::json!([0, 0, 0]), "{out}");
    for q in ["py", "ours", "later"] {
        assert_eq!(out["at_once"][q], "REVOKED", "{q}: {out}");
    }
    for q in ["py", "ours"] {
        assert_eq!(
            out["after"][q],
            serde_json::json!(["REVOKED", "TaskRevokedError", ["revoked"]]),
            "{q}: {out}"
        );
        assert_eq!(out["ran"][q], 5, "{q}: {out}");
    }
    // A host started after the revoke (a restart): the id is still
    // revoked (the Redis set; a Python worker without --statedb forgets).
    let later_node = node("later");
    let _later = celery::worker_with(&["math"], &url, &["-Q", "later", "-n", &later_node]);
    let script = format!(
        r#"{app}{helpers}
i, before = sys.argv[1], sys.argv[2].encode()
app.send_task('math.add', args=[1, 2], queue='later', task_id=i)
m = wait_changed(i, before)
print(json.dumps([m['status'], m['result']['exc_type']]))
"#,
        app = celery::py_app(&url),
        helpers = HELPERS,
    );
    let later = celery::python_json(
        &script,
        &[
            out["later"].as_str().unwrap_or_default(),
            out["later_before"].as_str().unwrap_or_default(),
        ],
    );
    assert_eq!(later, serde_json::json!(["REVOKED", "TaskRevokedError"]));
}

#[test]
fn k29_revoke_by_stamped_headers_as_a_python_worker() {
    let Some((redis, python)) = celery::celery_or_skip("k29_revoke_by_stamped_headers") else {
        return;
    };
    let url = redis.url();
    let (py_node, our_node) = (node("spy"), node("sours"));
    let _py = python_worker(&python, &url, &py_node);
    let _ours = celery::worker_with(&["math"], &url, &["-Q", "ours", "-n", &our_node]);
    let script = format!(
        r#"{app}{helpers}
nodes = json.loads(sys.argv[1])
queues = {{"py": nodes[0], "ours": nodes[1]}}
def rbsh(h, **kw):
    return merged(app.control.broadcast('revoke_by_stamped_headers', destination=nodes,
        arguments=dict(headers=h, terminate=kw.get('terminate', False), signal='SIGTERM'),
        reply=True, timeout=5))
replies = [rbsh({{'mtask_id': 'S1'}}), rbsh(['mtask_id=S2']),
           rbsh({{'mtask_id': ['S3', 'S4']}}, terminate=True), rbsh(None)]
client = app.control.revoke_by_stamped_headers({{'other': 'S9'}}, destination=nodes, reply=True, timeout=5)
out = {{}}
for q in queues:
    got = {{}}
    for stamp in ['S1', 'S2', 'S4', 'S9', 'S0']:
        h = 'other' if stamp == 'S9' else 'mtask_id'
        r = app.send_task('math.add', args=[1, 2], queue=q, stamped_headers=[h], **{{h: stamp}})
        end = time.time() + 30
        while r.state not in ('SUCCESS', 'REVOKED', 'FAILURE'):
            assert time.time() < end, (q, stamp, r.state)
            time.sleep(0.02)
        got[stamp] = r.state
    out[q] = got
print(json.dumps({{"replies": replies, "client": merged(client), "states": out}}))
"#,
        app = celery::py_app(&url),
        helpers = HELPERS,
    );
    let nodes = serde_json::to_string(&[&py_node, &our_node]).unwrap_or_default();
    let out = celery::python_json(&script, &[&nodes]);
    for (i, r) in out["replies"]
        .as_array()
        .expect("replies")
        .iter()
        .enumerate()
    {
        if i == 3 {
            // headers=None: both refuse it (the words differ: Python's
            // AttributeError on None.items()).
            assert!(r[&py_node]["error"].is_string(), "{r}");
            assert!(r[&our_node]["error"].is_string(), "{r}");
            continue;
        }
        assert_eq!(r[&py_node], r[&our_node], "reply {i}: {r}");
    }
    assert_eq!(out["client"][&py_node], out["client"][&our_node], "{out}");
    let want = serde_json::json!({"S1": "REVOKED", "S2": "REVOKED", "S4": "REVOKED",
                                  "S9": "REVOKED", "S0": "SUCCESS"});
    assert_eq!(out["states"]["py"], want, "{out}");
    assert_eq!(out["states"]["ours"], want, "{out}");
}

/// The keys of an object, sorted.
fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

#[test]
fn k29_inspect_registered_conf_report_scheduled_as_a_python_worker() {
    let Some((redis, python)) = celery::celery_or_skip("k29_inspect_shapes") else {
        return;
    };
    let url = redis.url();
    let (py_node, our_node) = (node("ipy"), node("iours"));
    let _py = python_worker(&python, &url, &py_node);
    let _ours = celery::worker_with(
        &["math"],
        &url,
        &[
            "-Q",
            "ours",
            "-n",
            &our_node,
            "--rate-limit",
            "math.square=10/s",
        ],
    );
    let script = format!(
        r#"{app}{helpers}
nodes = json.loads(sys.argv[1])
queues = {{"py": nodes[0], "ours": nodes[1]}}
i = app.control.inspect(destination=nodes, timeout=5)
sched = {{q: app.send_task('math.add', args=[1, 2], queue=q, countdown=300, priority=7).id
          for q in queues}}
end = time.time() + 30
while True:
    s = i.scheduled() or {{}}
    if all(len(s.get(n) or []) == 1 for n in nodes):
        break
    assert time.time() < end, s
out = {{
    "registered": i.registered('rate_limit', 'name', 'nothing_here', '_private'),
    "registered_default": i.registered(),
    "conf": i.conf(),
    "report": i.report(),
    "scheduled": s,
}}
for q in queues:
    app.AsyncResult(sched[q]).revoke()
print(json.dumps(out))
"#,
        app = celery::py_app(&url),
        helpers = HELPERS,
    );
    let nodes = serde_json::to_string(&[&py_node, &our_node]).unwrap_or_default();
    let out = celery::python_json(&script, &[&nodes]);
    let line = |n: &str, task: &str| -> Option<String> {
        out["registered"][n]
            .as_array()?
            .iter()
            .filter_map(Value::as_str)
            .find(|l| l.starts_with(&format!("{task} ")) || *l == task)
            .map(str::to_string)
    };
    // Exactly the items asked for, in their order; none the task lacks.
    for n in [&py_node, &our_node] {
        assert_eq!(
            line(n, "math.square").as_deref(),
            Some("math.square [rate_limit=10/s name=math.square]"),
            "{n}: {out}"
        );
        assert_eq!(
            line(n, "math.add").as_deref(),
            Some("math.add [name=math.add]"),
            "{n}: {out}"
        );
    }
    // The default: Python shows `rate_limit=` (exchange, routing_key are
    // None); we show the signature too.
    let default_sq = |n: &str| -> String {
        out["registered_default"][n]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find(|l| l.starts_with("math.square "))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(default_sq(&py_node), "math.square [rate_limit=10/s]");
    assert!(
        default_sq(&our_node).starts_with("math.square [signature=(")
            && default_sq(&our_node).ends_with(" rate_limit=10/s]"),
        "{out}"
    );
    // conf: a mapping of Celery setting names.
    for n in [&py_node, &our_node] {
        let c = &out["conf"][n];
        assert!(c.is_object(), "{n}: {out}");
        assert!(
            c.get("broker_url").is_some_and(Value::is_string),
            "{n}: {c}"
        );
        assert!(
            c.get("result_backend").is_some_and(Value::is_string),
            "{n}: {c}"
        );
    }
    // report: {"ok": text} opening with the software line.
    for n in [&py_node, &our_node] {
        let r = &out["report"][n];
        assert_eq!(keys(r), vec!["ok"], "{n}: {r}");
        let text = r["ok"].as_str().unwrap_or_default();
        assert!(text.starts_with("\nsoftware -> "), "{n}: {text}");
        assert!(
            text.contains("\nsettings -> transport:redis results:"),
            "{n}: {text}"
        );
    }
    // scheduled: {eta, priority, request} with Celery's request fields;
    // the message's priority in delivery_info, the timer's (6) outside.
    let py_s = &out["scheduled"][&py_node][0];
    let our_s = &out["scheduled"][&our_node][0];
    assert_eq!(keys(py_s), keys(our_s), "{out}");
    assert_eq!(keys(&py_s["request"]), keys(&our_s["request"]), "{out}");
    assert_eq!(
        keys(&py_s["request"]["delivery_info"]),
        keys(&our_s["request"]["delivery_info"]),
        "{out}"
    );
    for s in [py_s, our_s] {
        assert_eq!(s["priority"], 6, "{out}");
        assert_eq!(s["request"]["delivery_info"]["priority"], 7, "{out}");
        assert_eq!(s["request"]["acknowledged"], false, "{out}");
        assert_eq!(s["request"]["args"], serde_json::json!([1, 2]), "{out}");
    }
}

#[test]
fn k29_hostile_revoke_and_inspect_arguments_are_answered_and_survived() {
    let Some((redis, _python)) = celery::celery_or_skip("k29_hostile_control") else {
        return;
    };
    let url = redis.url();
    let our_node = node("hostile");
    let _ours = celery::worker_with(&["math"], &url, &["-Q", "ours", "-n", &our_node]);
    let script = format!(
        r#"{app}{helpers}
n = sys.argv[1]
def ask(method, **arguments):
    return merged(app.control.broadcast(method, destination=[n], arguments=arguments,
                                        reply=True, timeout=5)).get(n)
out = {{
  "num_id": ask('revoke', task_id=12345),
  "dup_ids": ask('revoke', task_id=['dup', 'dup']),
  "no_ids": ask('revoke'),
  "bad_headers": [ask('revoke_by_stamped_headers', headers=h) for h in
                  [5, ['novalue'], [{{'a': 1}}], 'x=y']],
  "deep_stamp": ask('revoke_by_stamped_headers', headers={{'h': [[[[1]]]] * 3, 'k': None}}),
  "items": ask('registered', taskinfoitems=[1, None, '_x', {{'a': 'b'}}, 'name']),
  "items_str": ask('registered', taskinfoitems='name'),
  "conf": sorted(ask('conf', with_defaults='yes') or {{}}),
  "ping": ask('ping'),
}}
# A message carrying stamps of odd shapes still runs (not revoked).
r = app.send_task('math.add', args=[1, 2], queue='ours', stamped_headers=['h', 'k'],
                  h={{'x': 1}}, k=None)
out["odd_stamps"] = r.get(timeout=30)
print(json.dumps(out))
"#,
        app = celery::py_app(&url),
        helpers = HELPERS,
    );
    let out = celery::python_json(&script, &[&our_node]);
    assert_eq!(
        out["num_id"],
        serde_json::json!({"ok": "tasks set() flagged as revoked"})
    );
    assert_eq!(
        out["dup_ids"],
        serde_json::json!({"ok": "tasks {'dup'} flagged as revoked"})
    );
    assert_eq!(
        out["no_ids"],
        serde_json::json!({"ok": "tasks set() flagged as revoked"})
    );
    for r in out["bad_headers"].as_array().expect("replies") {
        assert!(r["error"].is_string(), "{out}");
    }
    assert!(out["deep_stamp"]["ok"].is_string(), "{out}");
    // Only the string item not starting with `_` is taken: `name`.
    for l in out["items"].as_array().expect("registered lines") {
        let l = l.as_str().unwrap_or_default();
        let name = l.split(' ').next().unwrap_or_default();
        assert_eq!(l, format!("{name} [name={name}]"), "{out}");
    }
    assert!(
        out["items_str"]
            .as_array()
            .is_some_and(|a| a.iter().any(|l| l == "math.add [name=math.add]")),
        "{out}"
    );
    assert!(out["conf"]
        .as_array()
        .is_some_and(|a| a.iter().any(|k| k == "broker_url")));
    assert_eq!(out["ping"], serde_json::json!({"ok": "pong"}));
    assert_eq!(out["odd_stamps"], 3);
}

/// `revoke_by_stamped_headers(..., terminate=True)` kills a running job
/// stamped so (ours only: a Python solo worker busy with the job cannot
/// even read the broadcast) and answers with Celery's
/// `defaultdict(set)` repr.
#[test]
fn k29_revoke_by_stamped_headers_terminates_a_running_stamped_job() {
    let Some((redis, _python)) = celery::celery_or_skip("k29_stamped_terminate") else {
        return;
    };
    let url = redis.url();
    let our_node = node("sterm");
    let _ours = celery::worker_with(
        &["faults"],
        &url,
        &["-Q", "ours", "-n", &our_node, "-c", "2"],
    );
    let script = format!(
        r#"{app}{helpers}
n = sys.argv[1]
i = app.control.inspect(destination=[n], timeout=3)
r = app.send_task('faults.sleep_ms', args=[60000], queue='ours',
                  stamped_headers=['mtask_id'], mtask_id='T1')
other = app.send_task('faults.sleep_ms', args=[60000], queue='ours',
                      stamped_headers=['mtask_id'], mtask_id='T2')
end = time.time() + 30
while len((i.active() or {{}}).get(n) or []) < 2:
    assert time.time() < end, i.active()
miss = merged(app.control.revoke_by_stamped_headers({{'mtask_id': 'T9'}}, terminate=True,
              destination=[n], reply=True, timeout=5))
hit = merged(app.control.revoke_by_stamped_headers({{'mtask_id': ['T1', 'T8']}}, terminate=True,
             destination=[n], reply=True, timeout=5))
end = time.time() + 30
while r.state != 'REVOKED':
    assert time.time() < end, r.state
still = [a['id'] for a in (i.active() or {{}}).get(n) or []]
app.control.revoke(other.id, terminate=True)
print(json.dumps({{"miss": miss, "hit": hit, "still": still, "other": other.id}}))
"#,
        app = celery::py_app(&url),
        helpers = HELPERS,
    );
    let out = celery::python_json(&script, &[&our_node]);
    assert_eq!(
        out["miss"][&our_node],
        serde_json::json!({"ok": "headers {'mtask_id': 'T9'} were not terminated"})
    );
    assert_eq!(
        out["hit"][&our_node],
        serde_json::json!({"ok": "headers defaultdict(<class 'set'>, {'mtask_id': {'T1'}}) revoked"})
    );
    assert_eq!(out["still"], serde_json::json!([out["other"]]), "{out}");
}

/// A Python worker starting with mingle asks the running nodes `hello`:
/// ours answers its revoked ids as Celery 5.7 does, and the Python worker
/// then lists an id revoked before it started.
#[test]
fn k29_a_python_worker_starting_with_mingle_takes_our_revokes() {
    let Some((redis, python)) = celery::celery_or_skip("k29_mingle_revokes") else {
        return;
    };
    let url = redis.url();
    let our_node = node("mours");
    let _ours = celery::worker_with(&["math"], &url, &["-Q", "ours", "-n", &our_node]);
    let revoke = format!(
        r#"{app}{helpers}
i = str(uuid.uuid4())
app.AsyncResult(i).revoke()
wait_revoked_listed([sys.argv[1]], [i])
print(json.dumps(i))
"#,
        app = celery::py_app(&url),
        helpers = HELPERS,
    );
    let id = celery::python_json(&revoke, &[&our_node]);
    let id = id.as_str().unwrap_or_default().to_string();
    let py_node = node("mpy");
    let _py = python_worker_with(&python, &url, &py_node, &[]);
    let check = format!(
        r#"{app}{helpers}
n, i = sys.argv[1], sys.argv[2]
rv = (app.control.inspect(destination=[n], timeout=5).revoked() or {{}}).get(n) or []
print(json.dumps(i in rv))
"#,
        app = celery::py_app(&url),
        helpers = HELPERS,
    );
    assert_eq!(
        celery::python_json(&check, &[&py_node, &id]),
        Value::Bool(true)
    );
}
