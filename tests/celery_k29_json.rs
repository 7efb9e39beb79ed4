//! kombu's typed JSON (issue 29 item 5): a plain Python Celery 5.7 client
//! sends `bytes`, `datetime`, `date`, `time`, `UUID` and `Decimal`
//! arguments (kombu writes them as `{"__type__": ..., "__value__": ...}`)
//! to the `bytes` plugin on our worker and to the same tasks written in
//! Python on a Python `celery worker`, in the same run: what the client
//! reads back must be the same (bytes results read back as `bytes`).
//! Malformed tags (which only a hand-made message carries) fail the task
//! with a `TypeError` naming the argument, and the worker goes on.

use crate::common;

use std::path::Path;

use common::celery;
use serde_json::Value;

/// The `bytes` plugin's tasks as a Python app would write them.
const PY_TASKS: &str = r#"
@app.task(name='bytes.echo')
def echo(data):
    assert isinstance(data, bytes), type(data)
    return data

@app.task(name='bytes.len')
def blen(data):
    return len(data)

@app.task(name='bytes.join')
def join(parts):
    return b''.join(parts)

@app.task(name='bytes.split')
def split(data, size):
    return [data[i:i + size] for i in range(0, len(data), size)]

@app.task(name='bytes.texts')
def texts(items):
    return [x.isoformat() if hasattr(x, 'isoformat') else str(x) for x in items]
"#;

fn python_worker(python: &Path, url: &str, node: &str) -> celery::Worker {
    let dir = celery::unique_temp_dir("k29-json-python");
    let flags = ["-Q", "py", "--without-mingle", "-n", node];
    celery::python_worker(python, url, &dir, "pytyped", PY_TASKS, &flags)
}

fn node(tag: &str) -> String {
    celery::node(tag, "k29-json")
}

/// Python helpers of the client scripts: `outcome(r)` is what `.get()`
/// gave (type and repr) or raised (class and text); `Raw(v)` is written by
/// kombu's encoder as `v` itself (its `__json__`), so a script can put a
/// malformed tag in a real message.
const PY_CLIENT: &str = r#"
import uuid, decimal, datetime as dt
from celery.result import AsyncResult

class Raw:
    def __init__(self, v):
        self.v = v
    def __json__(self):
        return self.v

def outcome(r):
    try:
        v = r.get(timeout=60)
        return {"type": type(v).__name__, "repr": repr(v)}
    except Exception as e:
        return {"exc": type(e).__name__, "msg": str(e)}
"#;

/// Runs `cases` (a Python dict literal of name -> (task, args, kwargs))
/// against the queues `py` and `ours` and returns `{queue: {name:
/// outcome}}`.
fn run_cases(url: &str, cases: &str) -> Value {
    let script = format!(
        r#"{app}{PY_CLIENT}
utc = dt.timezone.utc
cases = {cases}
out = {{}}
for q in ["py", "ours"]:
    rs = {{k: app.send_task(t, args=a, kwargs=kw, queue=q) for k, (t, a, kw) in cases.items()}}
    out[q] = {{k: outcome(r) for k, r in rs.items()}}
print(json.dumps(out))
"#,
        app = celery::py_app(url)
    );
    celery::python_json(&script, &[])
}

#[test]
fn k29_typed_arguments_and_byte_results_match_a_python_worker() {
    let Some((redis, python)) =
        celery::celery_or_skip("k29_typed_arguments_and_byte_results_match_a_python_worker")
    else {
        return;
    };
    let url = redis.url();
    let _py = python_worker(&python, &url, &node("py"));
    let _ours = celery::worker_with(&["bytes"], &url, &["-Q", "ours", "-n", &node("ours")]);
    let out = run_cases(
        &url,
        r#"{
    "echo_text": ("bytes.echo", [b"hello"], {}),
    "echo_binary": ("bytes.echo", [b"\xff\x00bin"], {}),
    "echo_empty": ("bytes.echo", [b""], {}),
    "echo_kwarg": ("bytes.echo", [], {"data": b"kw\x80"}),
    "len_large": ("bytes.len", [bytes(range(256)) * 1200], {}),
    "join_nested": ("bytes.join", [[b"a", b"\xfe", b"", "\u00e9".encode()]], {}),
    "split_nested_result": ("bytes.split", [b"ab\xffcd", 2], {}),
    "split_empty": ("bytes.split", [b"", 3], {}),
    "texts": ("bytes.texts", [[
        dt.datetime(2026, 12, 6, 7, 37, 6, 123456, tzinfo=utc),
        dt.datetime(2026, 1, 2, 3, 4, 5),
        dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=-5, minutes=-30))),
        dt.date(2026, 12, 6),
        dt.time(7, 37, 6, 5),
        uuid.UUID("0C174030-3728-40AB-93B9-F1C38FA4E8BF"),
        decimal.Decimal("3.14159265358979323846264338327950288"),
        decimal.Decimal("-1E+30"),
        decimal.Decimal("NaN"),
    ]], {}),
}"#,
    );
    let (py, ours) = (&out["py"], &out["ours"]);
    // The Python worker is the reference: every case reads back the same.
    for (case, want) in py.as_object().expect("cases") {
        assert_eq!(&ours[case], want, "case {case}: ours vs Python's worker");
    }
    // And what that is, so the reference itself is checked.
    let expect = [
        ("echo_text", "bytes", "b'hello'"),
        ("echo_binary", "bytes", r"b'\xff\x00bin'"),
        ("echo_empty", "bytes", "b''"),
        ("echo_kwarg", "bytes", r"b'kw\x80'"),
        ("len_large", "int", "307200"),
        ("join_nested", "bytes", r"b'a\xfe\xc3\xa9'"),
        ("split_nested_result", "list", r"[b'ab', b'\xffc', b'd']"),
        ("split_empty", "list", "[]"),
    ];
    for (case, ty, repr) in expect {
        assert_eq!(ours[case]["type"], ty, "{case}: {}", ours[case]);
        assert_eq!(ours[case]["repr"], repr, "{case}: {}", ours[case]);
    }
    assert_eq!(
        ours["texts"]["repr"],
        "['2026-12-06T07:37:06.123456+00:00', '2026-01-02T03:04:05', \
         '2026-01-02T03:04:05-05:30', '2026-12-06', '07:37:06.000005', \
         '0c174030-3728-40ab-93b9-f1c38fa4e8bf', \
         '3.14159265358979323846264338327950288', '-1E+30', 'NaN']",
        "{}",
        ours["texts"]
    );
}

#[test]
fn k29_malformed_tags_fail_the_task_and_the_worker_goes_on() {
    let Some((redis, python)) =
        celery::celery_or_skip("k29_malformed_tags_fail_the_task_and_the_worker_goes_on")
    else {
        return;
    };
    let url = redis.url();
    let _py = python_worker(&python, &url, &node("py"));
    let _ours = celery::worker_with(&["bytes"], &url, &["-Q", "ours", "-n", &node("ours")]);
    // Each malformed message, then a good one on the same single-slot
    // queue: once the good one is done, the bad one was handled. A Python
    // worker cannot decode the body (kombu's object_hook raises) and drops
    // the message (`Can't decode message body`): its result stays PENDING.
    // Ours stores FAILURE TypeError naming the argument.
    let script = format!(
        r#"{app}{PY_CLIENT}
bad = {{
    "bytes_not_text": ("bytes.echo", [Raw({{"__type__": "bytes", "__value__": 5}})]),
    "unknown_type": ("bytes.texts", [[Raw({{"__type__": "nope", "__value__": 1}})]]),
    "uuid_not_hex": ("bytes.texts", [[Raw({{"__type__": "uuid", "__value__": {{"hex": "zz"}}}})]]),
    "datetime_not_text": ("bytes.texts", [[Raw({{"__type__": "datetime", "__value__": 5}})]]),
    "nested_deep": ("bytes.join", [[[Raw({{"__type__": "bytes", "__value__": [1]}})]]]),
}}
out = {{}}
for q in ["py", "ours"]:
    got = {{}}
    for k, (t, a) in bad.items():
        r = app.send_task(t, args=a, queue=q)
        good = app.send_task("bytes.echo", args=[b"after " + k.encode()], queue=q)
        after = outcome(good)
        res = AsyncResult(r.id, app=app)
        got[k] = {{"state": res.state, "after": after,
                   "exc": type(res.result).__name__ if res.state == "FAILURE" else None,
                   "msg": str(res.result) if res.state == "FAILURE" else None}}
    out[q] = got
print(json.dumps(out))
"#,
        app = celery::py_app(&url)
    );
    let out = celery::python_json(&script, &[]);
    let wants = [
        (
            "bytes_not_text",
            "argument 'data': kombu's tagged bytes needs a string as its __value__, got 5",
        ),
        (
            "unknown_type",
            "argument 'items'[0]: unsupported kombu __type__ \"nope\"",
        ),
        ("uuid_not_hex", "argument 'items'[0]: kombu's tagged uuid"),
        (
            "datetime_not_text",
            "argument 'items'[0]: kombu's tagged datetime needs an ISO 8601 string",
        ),
        (
            "nested_deep",
            "argument 'parts'[0][0]: kombu's tagged bytes",
        ),
    ];
    for (case, msg) in wants {
        let (py, ours) = (&out["py"][case], &out["ours"][case]);
        let after = format!("b'after {case}'");
        assert_eq!(py["after"]["repr"], after.as_str(), "{case}: {py}");
        assert_eq!(ours["after"]["repr"], after.as_str(), "{case}: {ours}");
        assert_eq!(py["state"], "PENDING", "{case}: Python's worker: {py}");
        assert_eq!(ours["state"], "FAILURE", "{case}: {ours}");
        assert_eq!(ours["exc"], "TypeError", "{case}: {ours}");
        let text = ours["msg"].as_str().unwrap_or_default();
        assert!(text.starts_with(msg), "{case}: {text}\nwant: {msg}");
    }
}

#[test]
fn k29_byte_results_flow_through_chains_between_both_workers() {
    let Some((redis, python)) =
        celery::celery_or_skip("k29_byte_results_flow_through_chains_between_both_workers")
    else {
        return;
    };
    let url = redis.url();
    let _py = python_worker(&python, &url, &node("py"));
    let _ours = celery::worker_with(&["bytes"], &url, &["-Q", "ours", "-n", &node("ours")]);
    // A step's bytes result is the next step's first argument: written as
    // kombu's tag by the worker that ran the step, decoded by the next.
    let script = format!(
        r#"{app}{PY_CLIENT}
s = app.signature
out = {{}}
for a, b in [("ours", "ours"), ("py", "ours"), ("ours", "py"), ("py", "py")]:
    c1 = (s("bytes.echo", args=[b"\xffab"], queue=a) | s("bytes.len", queue=b)).apply_async()
    c2 = (s("bytes.echo", args=[b"hi"], queue=a) | s("bytes.echo", queue=b)).apply_async()
    c3 = (s("bytes.join", args=[[b"\x00", b"\xfe"]], queue=a) | s("bytes.echo", queue=b)).apply_async()
    out[a + ">" + b] = [outcome(c1), outcome(c2), outcome(c3)]
print(json.dumps(out))
"#,
        app = celery::py_app(&url)
    );
    let out = celery::python_json(&script, &[]);
    for pair in ["ours>ours", "py>ours", "ours>py", "py>py"] {
        let got = &out[pair];
        assert_eq!(got[0]["repr"], "3", "{pair}: {got}");
        assert_eq!(got[1]["repr"], "b'hi'", "{pair}: {got}");
        assert_eq!(got[2]["repr"], r"b'\x00\xfe'", "{pair}: {got}");
    }
}

#[test]
fn k29_nested_bytes_are_bounded_a_vec_u8_parameter_is_not() {
    let Some((redis, _python)) =
        celery::celery_or_skip("k29_nested_bytes_are_bounded_a_vec_u8_parameter_is_not")
    else {
        return;
    };
    let url = redis.url();
    let _ours = celery::worker_with(&["bytes"], &url, &["-Q", "ours", "-n", &node("ours")]);
    // Nested byte strings become arrays of numbers (a JSON value per byte):
    // at most 1 MiB of them per message. A parameter declared Vec<u8> takes
    // its bytes in the codec's compact form, any size (here 3 MiB, and
    // back as bytes). A Python worker has no such bound (not compared).
    let script = format!(
        r#"{app}{PY_CLIENT}
big = bytes(range(256)) * (3 * 4096)
out = {{
    "top": outcome(app.send_task("bytes.echo", args=[big], queue="ours")),
    "top_len": len(app.send_task("bytes.echo", args=[big], queue="ours").get(timeout=60)),
    "nested_ok": outcome(app.send_task("bytes.join", args=[[b"x" * 500000, b"y" * 500000]], queue="ours")),
    "nested_over": outcome(app.send_task("bytes.join", args=[[b"x" * 600000, b"y" * 600000]], queue="ours")),
    "kwarg_nested_bad": outcome(app.send_task("bytes.join", kwargs={{"parts": [b"ok", Raw({{"__type__": "base64", "__value__": "***"}})]}}, queue="ours")),
}}
out["top"]["repr"] = len(out["top"].get("repr", ""))
out["nested_ok"]["repr"] = len(out["nested_ok"].get("repr", ""))
print(json.dumps(out))
"#,
        app = celery::py_app(&url)
    );
    let out = celery::python_json(&script, &[]);
    assert_eq!(out["top"]["type"], "bytes", "{out}");
    assert_eq!(out["top_len"], 3 * 1024 * 1024, "{out}");
    assert_eq!(out["nested_ok"]["type"], "bytes", "{out}");
    assert_eq!(out["nested_over"]["exc"], "TypeError", "{out}");
    let over = out["nested_over"]["msg"].as_str().unwrap_or_default();
    assert!(
        over.starts_with("argument 'parts'[1]: the message's nested byte strings exceed 1048576"),
        "{over}"
    );
    assert_eq!(out["kwarg_nested_bad"]["exc"], "TypeError", "{out}");
    let bad = out["kwarg_nested_bad"]["msg"].as_str().unwrap_or_default();
    assert!(
        bad.starts_with("argument 'parts'[1]: kombu's tagged base64 needs a base64 string"),
        "{bad}"
    );
}

#[test]
fn k29_celery_map_and_starmap_of_byte_tasks_read_back_as_bytes() {
    let Some((redis, python)) =
        celery::celery_or_skip("k29_celery_map_and_starmap_of_byte_tasks_read_back_as_bytes")
    else {
        return;
    };
    let url = redis.url();
    let _py = python_worker(&python, &url, &node("py"));
    let _ours = celery::worker_with(&["bytes"], &url, &["-Q", "ours", "-n", &node("ours")]);
    // celery.map/starmap messages (issue 29 item 3) over tasks taking and
    // returning bytes: each item's tags decoded, each result tagged.
    let script = format!(
        r#"{app}{PY_CLIENT}
from celery.canvas import xmap, xstarmap
s = app.signature
out = {{}}
for q in ["py", "ours"]:
    m = xmap(s("bytes.echo"), [b"a", b"\xff", b""], app=app).apply_async(queue=q)
    sm = xstarmap(s("bytes.split"), [(b"abc", 2), (b"\xfe", 1)], app=app).apply_async(queue=q)
    out[q] = [outcome(m), outcome(sm)]
print(json.dumps(out))
"#,
        app = celery::py_app(&url)
    );
    let out = celery::python_json(&script, &[]);
    assert_eq!(out["ours"], out["py"], "ours vs Python's worker");
    assert_eq!(out["ours"][0]["repr"], r"[b'a', b'\xff', b'']", "{out}");
    assert_eq!(
        out["ours"][1]["repr"], r"[[b'ab', b'c'], [b'\xfe']]",
        "{out}"
    );
}
