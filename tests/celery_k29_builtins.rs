//! Celery's built-in tasks run by `billiard-host worker` itself (issue 29
//! item 3): `celery.group`, `celery.chord`, `celery.chain`,
//! `celery.starmap`, `celery.chunks`, `celery.map` and `celery.accumulate`
//! messages from a plain Python Celery 5.7 client, and the very same
//! script against a Python `celery worker` in the same run (on a Redis of
//! its own, so both consume the default `celery` queue, where the
//! builtins' expansions go): what the client reads back must be the same.

use crate::common;

use std::path::Path;

use common::celery;
use serde_json::json;

/// The Python worker's tasks: math.add/square/sum as the math plugin has
/// them.
fn python_worker(python: &Path, url: &str) -> celery::Worker {
    let dir = celery::unique_temp_dir("k29-builtins-python");
    let tasks = "@app.task(name='math.add')\ndef add(a, b):\n    return a + b\n\
                 @app.task(name='math.square')\ndef square(x):\n    return x * x\n\
                 @app.task(name='math.sum')\ndef xsum(xs):\n    return float(sum(xs))\n";
    let node = format!("py-{}@k29-builtins", std::process::id());
    let flags = ["--without-mingle", "-n", &node];
    celery::python_worker(python, url, &dir, "pybuiltins", tasks, &flags)
}

/// Every builtin as a Celery 5.7 client sends it; prints what it reads
/// back (ids replaced by the shape of what they name).
fn script(url: &str) -> String {
    format!(
        r#"{app}
import redis as _r
from celery import group, chain, signature
from celery.result import result_from_tuple, GroupResult
r = _r.Redis.from_url({url:?})
# The client's view of the tasks (never run here).
@app.task(name='math.add')
def add(a, b): return a + b
@app.task(name='math.square')
def square(x): return x * x
@app.task(name='math.sum')
def xsum(xs): return float(sum(xs))
@app.task(name='no.such')
def nosuch(x): return x
T = 60
out = {{}}
def outcome(res):
    try:
        return ['SUCCESS', res.get(timeout=T)]
    except Exception as e:
        return [type(e).__name__, str(e)]
def metas_of_group(gid, n):
    end = time.time() + T
    while time.time() < end:
        found = []
        for k in r.scan_iter('celery-task-meta-*'):
            m = json.loads(r.get(k))
            if m.get('group_id') == gid:
                found.append(m)
        if len(found) >= n:
            return sorted(m['result'] for m in found)
        time.sleep(0.05)
    return None

# celery.map / celery.starmap: one task, a list result.
out['map'] = outcome(square.map([1, 2, 3]).delay())
out['map_empty'] = outcome(square.map([]).delay())
out['starmap'] = outcome(add.starmap([(1, 2), (3, 4)]).delay())
out['map_unknown'] = outcome(nosuch.map([1]).delay())[0]
# celery.accumulate: its args, or args[index].
out['accumulate'] = outcome(app.send_task('celery.accumulate', args=[1, 2, 3]))
out['accumulate_index'] = outcome(app.send_task('celery.accumulate', args=[1, 2, 3], kwargs={{'index': -1}}))
out['accumulate_bad_index'] = outcome(app.send_task('celery.accumulate', args=[1], kwargs={{'index': 5}}))
# celery.chain: not a real task.
out['chain'] = outcome(app.send_task('celery.chain', args=[]))
# celery.group: members sent with partial args and the group id; the
# message's result is the GroupResult tuple it was given.
g = group(add.s(1), add.s(2)).freeze()
gm = app.send_task('celery.group', kwargs={{'tasks': [add.s(1), add.s(2)],
    'result': g.as_tuple(), 'group_id': g.id, 'partial_args': [10]}})
got = gm.get(timeout=T)
out['group_result_is_the_tuple'] = json.loads(json.dumps(g.as_tuple())) == got
out['group_members'] = metas_of_group(g.id, 2)
out['group_children'] = len(gm.children or [])
# celery.chunks: a group of celery.starmap messages.
km = app.send_task('celery.chunks', kwargs={{'task': add.s(), 'it': [[i, i] for i in range(5)], 'n': 2}})
kt = km.get(timeout=T)
kg = result_from_tuple(kt, app)
out['chunks'] = [type(kg).__name__, len(kg.results), kg.get(timeout=T)]
# add.chunks(...) from the client: celery.starmap messages.
out['client_chunks'] = add.chunks([(1, 1), (2, 2), (3, 3)], 2).apply_async().get(timeout=T)
# celery.chord: the header parts with the body; the result is the body's.
cm = app.send_task('celery.chord', kwargs={{'header': [add.s(1, 1), add.s(2, 2), square.s(3)],
    'body': xsum.s(), 'partial_args': []}})
ct = cm.get(timeout=T)
body = result_from_tuple(ct, app)
out['chord'] = [type(body.parent).__name__, len(body.parent.results), body.get(timeout=T)]
out['chord_header'] = sorted(body.parent.get(timeout=T))
# A group as a chain's second step: the worker of the first sends it.
out['chain_then_group'] = chain(add.s(1, 2), group(add.s(1), add.s(2))).apply_async().get(timeout=T)
print(json.dumps(out))
"#,
        app = celery::py_app(url),
        url = url,
    )
}

#[test]
fn k29_builtins_from_a_python_client_match_a_python_worker() {
    let Some((redis, python)) =
        celery::celery_or_skip("k29_builtins_from_a_python_client_match_a_python_worker")
    else {
        return;
    };
    let py_redis = celery::RedisServer::start();
    let (url, py_url) = (redis.url(), py_redis.url());
    let _ours = celery::worker_with(&["math"], &url, &["-c", "2"]);
    let _py = python_worker(&python, &py_url);
    // Both at once: the two workers are independent.
    let py_thread = {
        let s = script(&py_url);
        std::thread::spawn(move || celery::python_json(&s, &[]))
    };
    let ours = celery::python_json(&script(&url), &[]);
    let theirs = py_thread.join().expect("the Python worker's run");
    let want = json!({
        "map": ["SUCCESS", [1, 4, 9]],
        "map_empty": ["SUCCESS", []],
        "starmap": ["SUCCESS", [3, 7]],
        "map_unknown": "NotRegistered",
        "accumulate": ["SUCCESS", [1, 2, 3]],
        "accumulate_index": ["SUCCESS", 3],
        "accumulate_bad_index": ["IndexError", "tuple index out of range"],
        "chain": ["NotImplementedError", "chain is not a real task"],
        "group_result_is_the_tuple": true,
        "group_members": [11, 12],
        "group_children": 1,
        "chunks": ["GroupResult", 3, [[0, 2], [4, 6], [8]]],
        "client_chunks": [[2, 4], [6]],
        "chord": ["GroupResult", 3, 15.0],
        "chord_header": [2, 4, 9],
        "chain_then_group": [4, 5],
    });
    assert_eq!(theirs, want, "the Python worker");
    assert_eq!(ours, want, "our worker (the Python worker's: {theirs})");
}

/// A `celery.map` over a plugin task whose item fails: FAILURE with the
/// item's error, as Python's `[task(item) for item in it]` raises the
/// first failing item's; a bad item's arguments are Python's TypeError.
/// And `task.chunks(...)` as a link of a task run here.
#[test]
fn k29_map_failures_and_a_chunks_link() {
    let Some((redis, _python)) = celery::celery_or_skip("k29_map_failures_and_a_chunks_link")
    else {
        return;
    };
    let url = redis.url();
    let _ours = celery::worker_with(&["math"], &url, &["-c", "2"]);
    let out = celery::python_json(
        &format!(
            r#"{app}
@app.task(name='math.fib')
def fib(n): return n
@app.task(name='math.add')
def add(a, b): return a + b
def outcome(res):
    try:
        return ['SUCCESS', res.get(timeout=60)]
    except Exception as e:
        return [type(e).__name__, str(e)]
# task.chunks as a link: sent as celery.chunks, expanded where it lands.
from celery.result import result_from_tuple
add.apply_async((1, 1), link=add.chunks([(1, 1), (2, 2)], 1).set(task_id='k29-link-chunks'))
linked = result_from_tuple(app.AsyncResult('k29-link-chunks').get(timeout=60), app).get(timeout=60)
print(json.dumps([
    outcome(fib.map([3, 1000, 4]).delay()),
    outcome(add.starmap([(1, 2), (1, 2, 3)]).delay()),
    outcome(app.send_task('celery.map', args=['math.square'])),
    linked,
]))
"#,
            app = celery::py_app(&url)
        ),
        &[],
    );
    let a = out.as_array().expect("a list");
    // The plugin's error, stored as any plugin task's failure is.
    assert_eq!(
        a[0],
        json!(["PluginError", "fib(1000) does not fit in u64"]),
        "{out}"
    );
    assert_eq!(a[1][0], "TypeError", "{out}");
    assert_eq!(
        a[2],
        json!([
            "TypeError",
            "xmap() missing 1 required positional argument: 'it'"
        ]),
        "{out}"
    );
    assert_eq!(a[3], json!([[2], [4]]), "{out}");
}

/// Builtin messages with hostile arguments (not lists, malformed result
/// tuples, a chunk size of 0, a huge index, a chord without a body, a
/// nesting deeper than any canvas): each gets exactly one FAILURE naming
/// Python's exception, nothing is sent, and the worker carries on.
#[test]
fn k29_hostile_builtin_messages_each_get_one_failure() {
    let Some((redis, _python)) =
        celery::celery_or_skip("k29_hostile_builtin_messages_each_get_one_failure")
    else {
        return;
    };
    let url = redis.url();
    let _ours = celery::worker_with(&["math"], &url, &["-c", "1"]);
    let out = celery::python_json(
        &format!(
            r#"{app}
def outcome(res):
    try:
        return ['SUCCESS', res.get(timeout=60)]
    except Exception as e:
        return [type(e).__name__, str(e)]
deep = {{'task': 'math.square', 'args': [1]}}
for _ in range(100):
    deep = {{'task': 'celery.chain', 'subtask_type': 'chain', 'kwargs': {{'tasks': [deep]}}, 'options': {{}}, 'args': []}}
cases = [
    ('celery.group', {{'tasks': 5, 'result': [['g', None], []], 'group_id': 'g', 'partial_args': []}}),
    ('celery.group', {{'tasks': [], 'result': None, 'group_id': 'g', 'partial_args': []}}),
    ('celery.group', {{'tasks': [7], 'result': [['g', None], []], 'group_id': 'g', 'partial_args': []}}),
    ('celery.chunks', {{'task': 'math.add', 'it': [[1, 1]], 'n': 0}}),
    ('celery.chunks', {{'task': 'math.add', 'it': [[1, 1]], 'n': 'x'}}),
    ('celery.accumulate', {{'index': 2 ** 70}}),
    ('celery.accumulate', {{'index': 'x'}}),
    ('celery.chord', {{'header': [{{'task': 'math.square', 'args': [1]}}]}}),
    ('celery.chord', {{'header': [deep], 'body': {{'task': 'math.sum'}}}}),
    ('celery.map', {{'task': 5, 'it': [1]}}),
    ('celery.starmap', {{'task': 'math.add', 'it': [5]}}),
    ('celery.map', {{'task': 'math.square', 'it': 5}}),
]
got = [outcome(app.send_task(n, kwargs=k)) for n, k in cases]
got.append(outcome(app.send_task('math.square', args=[7])))
print(json.dumps(got))
"#,
            app = celery::py_app(&url)
        ),
        &[],
    );
    let got = out.as_array().expect("a list");
    let kinds: Vec<&str> = got.iter().map(|g| g[0].as_str().unwrap_or("?")).collect();
    assert_eq!(
        kinds,
        [
            "TypeError",
            "TypeError",
            "TypeError",
            "ValueError",
            "TypeError",
            "IndexError",
            "TypeError",
            "TypeError",
            "TypeError",
            "TypeError",
            "TypeError",
            "TypeError",
            "SUCCESS",
        ],
        "{out}"
    );
    assert_eq!(got[12][1], 49, "{out}");
    // Nothing but the last task ran: no other result was stored.
    let metas = redis.keys("celery-task-meta-*").len();
    assert_eq!(metas, got.len(), "{out}");
}
