//! Retry, Reject, Ignore and the poison-message cap on the Celery wire
//! (issue 23 items 2, 3 and 5): a private redis-server per test, the real
//! binary with the `faults` plugin, a real Python Celery 5.7 client (and a
//! Python worker where Celery's own behaviour is the reference); every wait
//! polls a condition with a deadline.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::celery::{self, RedisServer};
use common::celery::{wait_until, DEADLINE};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// `billiard-host worker faults --broker URL <extra>`, consuming.
fn worker(url: &str, extra: &[&str]) -> celery::Worker {
    celery::worker_with(&["faults"], url, extra)
}

/// Runs a Python snippet after the app preamble (and [`EVENTS`]) and
/// returns its last stdout line as JSON.
fn py(url: &str, body: &str) -> Value {
    celery::python_json(&format!("{}\n{EVENTS}\n{body}", celery::py_app(url)), &[])
}

/// Python: `listen()` starts an event receiver (Celery's own
/// `app.events.Receiver`) and returns once a worker heartbeat came through
/// it (so no task event can be missed); `events(id, type)` lists what it
/// got; `until(cond, what)` polls with a deadline.
const EVENTS: &str = r#"
import threading
evs = []
def until(cond, what, limit=60):
    end = time.time() + limit
    while not cond():
        assert time.time() < end, 'timed out waiting for ' + what
        time.sleep(0.02)
def listen():
    def run():
        with app.connection() as conn:
            app.events.Receiver(conn, handlers={'*': evs.append}).capture(limit=None, timeout=120)
    threading.Thread(target=run, daemon=True).start()
    until(lambda: any(e['type'] == 'worker-heartbeat' for e in evs), 'a worker heartbeat')
def events(id, ty):
    return [e for e in evs if e.get('uuid') == id and e['type'] == ty]
def outcome(r, timeout=60):
    try:
        return {'value': r.get(timeout=timeout)}
    except Exception as e:
        return {'exc': type(e).__name__, 'module': type(e).__module__, 'text': str(e)}
"#;

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn path_json(p: &Path) -> String {
    json!(p.display().to_string()).to_string()
}

/// GET `path` from 127.0.0.1:`port`: the body.
fn http_get(port: u16, path: &str) -> String {
    common::http_get(&format!("127.0.0.1:{port}"), path, Duration::from_secs(20))
        .expect("the metrics port answers")
        .0
}

/// The stored meta of `id` once it is final (SUCCESS, FAILURE, REVOKED).
fn final_meta(redis: &RedisServer, id: &str) -> Value {
    let mut meta = Value::Null;
    wait_until(&format!("task {id} to end"), DEADLINE, || {
        meta = redis.task_meta(id).unwrap_or(Value::Null);
        ["SUCCESS", "FAILURE", "REVOKED"].contains(&meta["status"].as_str().unwrap_or(""))
    });
    meta
}

/// Waits until nothing is queued or unacked any more.
fn settled(redis: &RedisServer) {
    wait_until("every message acked", DEADLINE, || {
        redis.cmd(&["HLEN", "unacked"]).int() == 0 && redis.cmd(&["LLEN", "celery"]).int() == 0
    });
}

#[test]
fn k23_a_flaky_task_retries_until_it_succeeds_and_is_retry_meanwhile() {
    let Some((redis, _python)) =
        celery::celery_or_skip("k23_a_flaky_task_retries_until_it_succeeds_and_is_retry_meanwhile")
    else {
        return;
    };
    let url = redis.url();
    let dir = celery::unique_temp_dir("k23-flaky");
    let runs = dir.join("runs");
    let port = celery::free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let w = worker(&url, &["-c", "2", "-E", "--metrics-addr", &addr]);
    // Fails twice, asking each time for a retry in 1.5 s (Failure::retry()
    // without an exception class): RETRY is what the client sees meanwhile.
    let got = py(
        &url,
        &format!(
            "listen()\n\
             r = app.send_task('faults.flaky_with', args=[{}, 2, 1500, None])\n\
             until(lambda: r.state == 'RETRY', 'the RETRY state')\n\
             meta = json.loads(app.backend.client.get('celery-task-meta-' + r.id))\n\
             out = outcome(r)\n\
             until(lambda: len(events(r.id, 'task-retried')) == 2 and events(r.id, 'task-succeeded'), 'the events')\n\
             print(json.dumps({{'id': r.id, 'meta': meta, 'out': out, 'retried': events(r.id, 'task-retried'),\
              'received': [e['retries'] for e in events(r.id, 'task-received')]}}))",
            path_json(&runs)
        ),
    );
    let id = got["id"].as_str().unwrap();
    assert_eq!(got["out"]["value"], 3, "{got}");
    assert_eq!(lines(&runs), 3);
    assert_eq!(got["received"], json!([0, 1, 2]), "{got}");
    // The RETRY meta as Celery's mark_as_retry stores a retry without exc.
    let meta = &got["meta"];
    assert_eq!(meta["status"], "RETRY");
    assert_eq!(meta["result"], Value::Null);
    assert_eq!(meta["date_done"], Value::Null);
    assert_eq!(meta["children"], json!([[[id, null], null]]));
    assert!(
        meta["traceback"]
            .as_str()
            .unwrap()
            .contains("Retry in 1s 500ms: run "),
        "{meta}"
    );
    for e in got["retried"].as_array().unwrap() {
        assert!(
            e["exception"].as_str().unwrap().starts_with("Retry("),
            "{e}"
        );
        assert!(
            e["traceback"]
                .as_str()
                .unwrap()
                .contains("failing until run 3"),
            "{e}"
        );
    }
    // Counted as retried in the metrics.
    let metrics = http_get(port.parse().unwrap(), "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("billiard_celery_tasks_total")
                && l.contains("outcome=\"retried\"")
                && l.contains("faults.flaky_with")
                && l.ends_with(" 2")),
        "{metrics}"
    );
    assert!(w.stderr().contains("retry 2 in 1s 500ms"), "{}", w.stderr());
}

#[test]
fn k23_past_max_retries_the_client_gets_the_original_error() {
    let Some((redis, _python)) =
        celery::celery_or_skip("k23_past_max_retries_the_client_gets_the_original_error")
    else {
        return;
    };
    let url = redis.url();
    let dir = celery::unique_temp_dir("k23-max-retries");
    let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
    // The worker retries panics by itself, at most once, at once; the
    // `autoretried` task's own options (task_error and panic, at most 2,
    // backoff 100 ms) override that for it.
    let _w = worker(
        &url,
        &[
            "-c",
            "2",
            "--autoretry-for",
            "panic",
            "--max-retries",
            "1",
            "--default-retry-delay",
            "0",
        ],
    );
    let got = py(
        &url,
        &format!(
            "print(json.dumps([outcome(app.send_task(n, args=a)) for n, a in [\
             ('faults.panic', ['boom']),\
             ('faults.flaky_with', [{}, 10, 0, 2]),\
             ('faults.autoretried', [{}, 2]),\
             ('faults.autoretried', [{}, 9])]]))",
            path_json(&a),
            path_json(&b),
            path_json(&c)
        ),
    );
    // autoretry_for: the original exception (TaskPanic), once retried.
    assert_eq!(got[0]["exc"], "TaskPanic", "{got}");
    let text = got[0]["text"].as_str().unwrap();
    assert!(
        text.contains("boom") && text.contains("retried 1 times, the cap (max_retries 1)"),
        "{text}"
    );
    // A retry the task asked for without an exception: Celery's own
    // MaxRetriesExceededError (a real class), after 1 + 2 runs.
    assert_eq!(got[1]["exc"], "MaxRetriesExceededError", "{got}");
    assert_eq!(got[1]["module"], "celery.exceptions");
    assert!(
        got[1]["text"]
            .as_str()
            .unwrap()
            .starts_with("Can't retry faults.flaky_with["),
        "{got}"
    );
    assert_eq!(lines(&a), 3);
    // The task's registration options over the worker's flags.
    assert_eq!(got[2]["value"], 3, "{got}");
    assert_eq!(got[3]["exc"], "PluginError", "{got}");
    assert!(
        got[3]["text"].as_str().unwrap().contains("max_retries 2"),
        "{got}"
    );
    assert_eq!(lines(&c), 3);
    settled(&redis);
}

/// A Python `celery worker` on queue `py` serving `py.flaky(path,
/// countdown)`: `self.retry(countdown=countdown)` on every run.
fn python_worker(python: &Path, url: &str, dir: &Path) -> celery::Worker {
    let tasks = "@app.task(bind=True, name='py.flaky', max_retries=3)\n\
                 def flaky(self, path, countdown):\n\
                 \x20   raise self.retry(countdown=countdown)\n";
    let flags = ["-Q", "py", "--without-mingle", "-n", "py@%h"];
    celery::python_worker(python, url, dir, "pyretry", tasks, &flags)
}

/// The `unacked` entry of task `id` (a worker holds its eta message).
fn held(redis: &RedisServer, id: &str) -> Option<Value> {
    let all = redis.cmd(&["HVALS", "unacked"]);
    all.array()
        .iter()
        .filter_map(|e| serde_json::from_slice::<Value>(e.bytes()).ok())
        .map(|e| e[0].clone())
        .find(|m| m["headers"]["id"] == id && m["headers"]["retries"] == 1)
}

#[test]
fn k23_the_retry_message_and_meta_are_celerys() {
    let Some((redis, python)) =
        celery::celery_or_skip("k23_the_retry_message_and_meta_are_celerys")
    else {
        return;
    };
    let url = redis.url();
    let dir = celery::unique_temp_dir("k23-shape");
    let _py = python_worker(&python, &url, &dir);
    let _ours = worker(&url, &["-c", "1"]);
    // The same call shape to both: a link, an expiry, time limits, a
    // priority and a header of the app's own; each retries in 10 minutes,
    // so each worker holds its retry message (reserved, waiting for its eta).
    let opts = "link=app.signature('py.next'), expires=3600, time_limit=100, soft_time_limit=50, priority=3, headers={'mine': 'kept'}";
    let got = py(
        &url,
        &format!(
            "ours = app.send_task('faults.flaky_with', args=[{p}, 5, 600000, None], {opts})\n\
             theirs = app.send_task('py.flaky', args=[{p}, 600], queue='py', {opts})\n\
             until(lambda: ours.state == 'RETRY' and theirs.state == 'RETRY', 'both RETRY')\n\
             m = lambda r: json.loads(app.backend.client.get('celery-task-meta-' + r.id))\n\
             print(json.dumps({{'ours': ours.id, 'theirs': theirs.id, 'm_ours': m(ours), 'm_theirs': m(theirs)}}))",
            p = path_json(&dir.join("runs")),
        ),
    );
    let (ours, theirs) = (
        got["ours"].as_str().unwrap(),
        got["theirs"].as_str().unwrap(),
    );
    let mut msgs = (None, None);
    wait_until("both retry messages held", DEADLINE, || {
        msgs = (held(&redis, ours), held(&redis, theirs));
        msgs.0.is_some() && msgs.1.is_some()
    });
    let (mo, mt) = (msgs.0.unwrap(), msgs.1.unwrap());
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&mo["headers"]), keys(&mt["headers"]), "{mo}\n{mt}");
    assert_eq!(
        keys(&mo["properties"]),
        keys(&mt["properties"]),
        "{mo}\n{mt}"
    );
    for (m, id) in [(&mo, ours), (&mt, theirs)] {
        let h = &m["headers"];
        assert_eq!(h["retries"], 1);
        assert_eq!(h["parent_id"], id, "the retry is sent by the task itself");
        assert_eq!(h["root_id"], id);
        assert_eq!(h["mine"], "kept");
        assert_eq!(h["timelimit"], json!([100, 50]));
        assert!(h["expires"].is_string());
        let eta = h["eta"].as_str().unwrap();
        assert!(eta.ends_with("+00:00"), "{eta}");
        assert_eq!(m["properties"]["priority"], 3);
        assert_eq!(m["properties"]["correlation_id"], id);
    }
    // The body goes on as it came (args, kwargs, the link).
    let body = |m: &Value| -> Value {
        use base64::Engine as _;
        let b = base64::engine::general_purpose::STANDARD
            .decode(m["body"].as_str().unwrap())
            .unwrap();
        serde_json::from_slice(&b).unwrap()
    };
    assert_eq!(body(&mo)[2]["callbacks"], body(&mt)[2]["callbacks"]);
    // The RETRY metas: the same fields and values but the ids and the
    // traceback text.
    let (a, b) = (&got["m_ours"], &got["m_theirs"]);
    assert_eq!(keys(a), keys(b), "{a}\n{b}");
    for k in ["status", "result", "date_done"] {
        assert_eq!(a[k], b[k], "{k}: {a}\n{b}");
    }
    assert_eq!(a["children"], json!([[[ours, null], null]]));
    assert_eq!(b["children"], json!([[[theirs, null], null]]));
}

#[test]
fn k23_retry_on_worker_lost_is_capped_by_deaths_or_max_retries() {
    let Some((redis, _python)) =
        celery::celery_or_skip("k23_retry_on_worker_lost_is_capped_by_deaths_or_max_retries")
    else {
        return;
    };
    let url = redis.url();
    let lost = |extra: &[&str]| -> Value {
        let mut args = vec![
            "-c",
            "1",
            "--retry-on-worker-lost",
            "--default-retry-delay",
            "0",
        ];
        args.extend_from_slice(extra);
        let mut w = worker(&url, &args);
        let got = py(
            &url,
            "print(json.dumps(outcome(app.send_task('faults.segfault', args=[]))))",
        );
        settled(&redis);
        w.signal(Signal::SIGTERM);
        let _ = w.wait_timeout(DEADLINE);
        let summary = w.stderr();
        json!({"got": got, "log": summary})
    };
    // max_retries 10: the third death ends it (--max-worker-deaths 3).
    let r = lost(&["--max-retries", "10"]);
    let text = r["got"]["text"].as_str().unwrap();
    assert_eq!(r["got"]["exc"], "WorkerLostError", "{r}");
    assert!(
        text.contains("3 times, the cap (--max-worker-deaths 3)"),
        "{text}"
    );
    for n in ["1) ", "2) ", "3) "] {
        assert!(text.contains(&format!("{n}billiard-host@")), "{text}");
    }
    assert!(text.contains("killed by signal 11 (SIGSEGV)"), "{text}");
    assert!(r["log"].as_str().unwrap().contains("retried=2"), "{r}");
    // max_retries 1 comes first: one retry, then WorkerLostError saying so.
    let r = lost(&["--max-retries", "1"]);
    let text = r["got"]["text"].as_str().unwrap();
    assert_eq!(r["got"]["exc"], "WorkerLostError", "{r}");
    assert!(
        text.contains("retried 1 times, the cap (max_retries 1)"),
        "{text}"
    );
    assert!(r["log"].as_str().unwrap().contains("retried=1"), "{r}");
    // The death lists are gone with the tasks.
    assert!(redis.keys("billiard-host:deaths:*").is_empty());
    // Without --retry-on-worker-lost a death is final at once (Celery's
    // default): one run.
    let _w = worker(&url, &["-c", "1"]);
    let got = py(
        &url,
        "print(json.dumps(outcome(app.send_task('faults.segfault', args=[]))))",
    );
    assert_eq!(got["exc"], "WorkerLostError", "{got}");
    assert!(!got["text"].as_str().unwrap().contains("retried"), "{got}");
}

#[test]
fn k23_a_task_that_kills_its_host_again_and_again_is_capped() {
    let Some((redis, _python)) =
        celery::celery_or_skip("k23_a_task_that_kills_its_host_again_and_again_is_capped")
    else {
        return;
    };
    let url = redis.url();
    let id = py(
        &url,
        "print(json.dumps(app.send_task('faults.sleep_ms', args=[60000]).id))",
    );
    let id = id.as_str().unwrap().to_string();
    let deaths_key = format!("billiard-host:deaths:{id}");
    // A 3 s lease, renewed every second: with 1 s, a host starved of CPU
    // for a second (a loaded 2-core CI machine) let its own lease lapse,
    // and a sweep counted a death of a task still running, so the death
    // count this test steps through skipped a value.
    let host = || worker(&url, &["-c", "1", "--visibility-timeout", "3s"]);
    // Three hosts in turn take the message, start it, and are SIGKILLed
    // (an OOM kill of the whole host); each next host's sweeper returns the
    // message once the lease lapsed, counting the death.
    for round in 0..3 {
        let mut w = host();
        wait_until("the task to run on this host", DEADLINE, || {
            redis.cmd(&["LLEN", &deaths_key]).int() == round
                && redis.cmd(&["HLEN", "billiard-host:running"]).int() == 1
        });
        w.kill();
    }
    let w = host();
    let meta = final_meta(&redis, &id);
    assert_eq!(meta["status"], "FAILURE", "{meta}");
    assert_eq!(meta["result"]["exc_type"], "WorkerLostError");
    let text = meta["result"]["exc_message"][0].as_str().unwrap();
    assert!(
        text.contains("3 times, the cap (--max-worker-deaths 3); not run again"),
        "{text}"
    );
    assert_eq!(
        text.matches("stopped renewing its lease while running it")
            .count(),
        3,
        "{text}"
    );
    assert!(w.stderr().contains("poison message"), "{}", w.stderr());
    settled(&redis);
    // The finisher clears the death list right after it stored the
    // FAILURE and acked (never before: a host dying in between must still
    // see the deaths), so it is waited for, not raced.
    wait_until("the death list cleared", DEADLINE, || {
        redis.keys("billiard-host:deaths:*").is_empty()
    });
    assert_eq!(redis.cmd(&["HLEN", "billiard-host:running"]).int(), 0);
}

#[test]
fn k23_reject_with_and_without_requeue_and_ignore() {
    let Some((redis, _python)) =
        celery::celery_or_skip("k23_reject_with_and_without_requeue_and_ignore")
    else {
        return;
    };
    let url = redis.url();
    let dir = celery::unique_temp_dir("k23-reject");
    let once = dir.join("once");
    let mut w = worker(&url, &["-c", "2", "-E", "--max-requeues", "3"]);
    let got = py(
        &url,
        &format!(
            "listen()\n\
             no = app.send_task('faults.reject', args=[False])\n\
             once = app.send_task('faults.reject_once', args=[{}])\n\
             app.backend.client.rpush('billiard-host:requeues:k23-ever', 'not a counter')\n\
             ever = app.send_task('faults.reject', args=[True], task_id='k23-ever')\n\
             ign = app.send_task('faults.ignore', args=[])\n\
             out = {{k: outcome(r) for k, r in [('no', no), ('once', once), ('ever', ever)]}}\n\
             until(lambda: events(no.id, 'task-rejected') and len(events(ever.id, 'task-rejected')) == 4, 'the rejections')\n\
             until(lambda: events(ign.id, 'task-started'), 'the ignored task to start')\n\
             print(json.dumps({{'out': out, 'ign': ign.id,\
              'no': [e['type'] for e in evs if e.get('uuid') == no.id],\
              'no_rejected': events(no.id, 'task-rejected'),\
              'once': [e['requeue'] for e in events(once.id, 'task-rejected')],\
              'ever': [e['requeue'] for e in events(ever.id, 'task-rejected')]}}))",
            path_json(&once)
        ),
    );
    // Without requeue: FAILURE Reject (Celery 5.6+), task-failed then
    // task-rejected.
    assert_eq!(got["out"]["no"]["exc"], "Reject", "{got}");
    assert_eq!(got["out"]["no"]["module"], "celery.exceptions");
    assert_eq!(
        got["no"].as_array().unwrap()[2..],
        [json!("task-failed"), json!("task-rejected")],
        "{got}"
    );
    assert_eq!(got["no_rejected"][0]["requeue"], false);
    // With requeue: back on the queue, run again.
    assert_eq!(got["out"]["once"]["value"], 2, "{got}");
    assert_eq!(got["once"], json!([true]));
    assert_eq!(lines(&once), 2);
    // Rejecting with requeue for ever (its counter in Redis a list at
    // first): requeued 3 times, then FAILURE.
    assert_eq!(got["out"]["ever"]["exc"], "Reject", "{got}");
    assert!(
        got["out"]["ever"]["text"]
            .as_str()
            .unwrap()
            .contains("(--max-requeues 3)"),
        "{got}"
    );
    assert_eq!(got["ever"], json!([true, true, true, false]));
    // Ignore: acked, nothing stored, PENDING for the client.
    settled(&redis);
    let ign = got["ign"].as_str().unwrap();
    assert!(redis.task_meta(ign).is_none());
    let state = py(
        &url,
        &format!("print(json.dumps(app.AsyncResult({}).state))", json!(ign)),
    );
    assert_eq!(state, "PENDING");
    assert!(redis.keys("billiard-host:requeues:*").is_empty());
    // inspect stats counts them (ours, beside Celery's keys).
    let stats = py(
        &url,
        "s = app.control.inspect(timeout=5).stats()\n\
         print(json.dumps(list(s.values())[0]['redelivery']))",
    );
    assert_eq!(
        stats,
        json!({"retried": 0, "rejected": 6, "ignored": 1}),
        "{stats}"
    );
    w.signal(Signal::SIGTERM);
    let _ = w.wait_timeout(DEADLINE);
    let log = w.stderr();
    assert!(
        log.contains("rejected=6") && log.contains("ignored=1"),
        "{log}"
    );
}

#[test]
fn k23_a_retry_message_redis_refuses_stores_the_failure_as_final() {
    let Some((redis, _python)) =
        celery::celery_or_skip("k23_a_retry_message_redis_refuses_stores_the_failure_as_final")
    else {
        return;
    };
    let url = redis.url();
    let dir = celery::unique_temp_dir("k23-unsent");
    let runs = dir.join("runs");
    // A priority-9 message found on the priority-0 list of `celery`: its
    // retry goes to `celery`'s priority-9 list, which holds a string.
    let id = py(
        &url,
        &format!(
            "print(json.dumps(app.send_task('faults.flaky_with', args=[{}, 5, 0, None], \
             queue='staging', priority=9).id))",
            path_json(&runs)
        ),
    );
    let raw = redis.cmd(&["RPOP", "staging\x06\x169"]);
    assert!(!raw.is_nil(), "the message was sent at priority 9");
    redis.cmd(&["SET", "celery\x06\x169", "not a list"]);
    redis.cmd(&[b"LPUSH".as_slice(), b"celery", raw.bytes()]);
    let w = worker(&url, &["-c", "1"]);
    let meta = final_meta(&redis, id.as_str().unwrap());
    assert_eq!(meta["status"], "FAILURE", "{meta}");
    let text = meta["result"]["exc_message"][0].as_str().unwrap();
    assert!(
        text.contains("its retry could not be sent: Redis refused"),
        "{text}"
    );
    assert_eq!(lines(&runs), 1);
    assert!(
        w.stderr().contains("Redis refused its retry message"),
        "{}",
        w.stderr()
    );
}

#[test]
fn k23_bookkeeping_keys_of_another_type_never_cost_a_message() {
    let Some((redis, _python)) =
        celery::celery_or_skip("k23_bookkeeping_keys_of_another_type_never_cost_a_message")
    else {
        return;
    };
    let url = redis.url();
    let dir = celery::unique_temp_dir("k23-wrongtype");
    let log = dir.join("runs");
    // The running marks and the task's death list are strings: marking,
    // counting and clearing fail, and only they do.
    redis.cmd(&["SET", "billiard-host:running", "not a hash"]);
    let id = py(
        &url,
        &format!(
            "print(json.dumps(app.send_task('hostile.append_line', args=[{}, 'run', 2000]).id))",
            path_json(&log)
        ),
    );
    let id = id.as_str().unwrap();
    redis.cmd(&["SET", &format!("billiard-host:deaths:{id}"), "not a list"]);
    let host = || {
        celery::worker_with(
            &["faults", "hostile"],
            &url,
            &["-c", "1", "--visibility-timeout", "1s"],
        )
    };
    let mut a = host();
    wait_until("the task to start", DEADLINE, || lines(&log) == 1);
    a.kill();
    // The next host's sweeper restores it (the death cannot be recorded),
    // and it runs to the end there.
    let _b = host();
    let meta = final_meta(&redis, id);
    assert_eq!(meta["status"], "SUCCESS", "{meta}");
    assert_eq!(lines(&log), 2);
    settled(&redis);
}

#[test]
fn k23_a_chord_part_that_retries_counts_once() {
    let Some((redis, _python)) =
        celery::celery_or_skip("k23_a_chord_part_that_retries_counts_once")
    else {
        return;
    };
    let url = redis.url();
    let dir = celery::unique_temp_dir("k23-chord-retry");
    let runs = dir.join("runs");
    let _w = celery::worker_with(&["faults", "math"], &url, &["-c", "2"]);
    // The first part asks for a retry twice (RETRY stored twice, no part
    // counted), then returns 3: the body sums 3 + 9 + 16 once, after it.
    let got = py(
        &url,
        &format!(
            "from celery import chord\n\
             s = app.signature\n\
             r = chord([s('faults.flaky_with', args=[{}, 2, 200, None]), s('math.square', args=[3]),\
              s('math.square', args=[4])])(s('math.sum'))\n\
             print(json.dumps({{'v': r.get(timeout=60), 'gid': r.parent.id}}))",
            path_json(&runs)
        ),
    );
    assert_eq!(got["v"], json!(28.0), "{got}");
    assert_eq!(lines(&runs), 3);
    let gid = got["gid"].as_str().unwrap();
    assert_eq!(
        redis
            .cmd(&["GET", &format!("celery-taskset-meta-{gid}.c")])
            .text(),
        "done"
    );
}
