//! Operating a fleet of `billiard-host worker`s with Celery's own tools:
//! `celery inspect` / `celery control` (the venv's real `celery`
//! executable), Celery events as kombu publishes them, Flower 2.2's HTTP
//! API, Prometheus `/metrics` and `/healthz`. A private redis-server per
//! test; every wait polls a condition with a deadline.
//!
//! Prerequisites (`./scripts/test` installs them): `redis-server`, the venv
//! with `celery[redis]==5.7.0` and `flower==2.2.0`. Missing: a loud SKIP,
//! or a failure with `CI=true`.

use crate::common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use billiard_host::celery::client::{Client, SendOptions};
use common::celery::{self, RedisServer};
use nix::sys::signal::Signal;
use serde_json::{json, Map, Value};

const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `cond` until it returns Some; panics with `what` after `limit`.
fn poll<T>(what: &str, limit: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A directory with `opsapp.py`: a Celery app on `url` (broker and backend).
fn app_dir(url: &str) -> PathBuf {
    let dir = celery::unique_temp_dir("celery-ops-app");
    std::fs::write(dir.join("opsapp.py"), format!("{}\n", celery::py_app(url)))
        .expect("write opsapp.py");
    dir
}

/// `celery -A opsapp <args> -j` → its JSON output (`{node: reply}`);
/// Null when no node replied.
fn celery_json(py: &Path, dir: &Path, args: &[&str]) -> Value {
    let mut cmd = Command::new(celery::celery_exe(py));
    cmd.current_dir(dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg("-A")
        .arg("opsapp")
        .args(args)
        .args(["-j", "-t", "3"]);
    let out = celery::run_with_timeout(cmd, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No nodes replied") {
        return Value::Null;
    }
    assert!(
        out.status.success(),
        "celery {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with(['{', '[']))
        .unwrap_or_else(|| panic!("celery {args:?} printed no JSON:\n{stdout}\n{stderr}"));
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    // `inspect` prints {node: reply}; `control` a list of them.
    match v {
        Value::Array(items) => {
            let mut all = Map::new();
            for i in items {
                if let Value::Object(o) = i {
                    all.extend(o);
                }
            }
            Value::Object(all)
        }
        other => other,
    }
}

/// The reply of node `node` to `celery inspect/control ...`.
fn ask(py: &Path, dir: &Path, node: &str, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend_from_slice(&["-d", node]);
    let v = celery_json(py, dir, &a);
    v.get(node)
        .cloned()
        .unwrap_or_else(|| panic!("{node} did not answer {args:?}: {v}"))
}

fn node(tag: &str) -> String {
    celery::node(tag, "ops-test")
}

/// `billiard-host worker math --plugin faults --plugin hostile ...`.
fn worker(url: &str, name: &str, extra: &[&str]) -> celery::Worker {
    let math = common::plugin_str("math");
    let faults = common::plugin_str("faults");
    let hostile = common::plugin_str("hostile");
    let mut args = vec![
        "worker", &math, "--plugin", &faults, "--plugin", &hostile, "--broker", url, "-n", name,
    ];
    args.extend_from_slice(extra);
    celery::spawn_worker(args)
}

fn client(url: &str) -> Client {
    Client::connect(url).expect("connect the client")
}

fn send(c: &Client, task: &str, args: Value, opts: &SendOptions) -> String {
    let args = args.as_array().cloned().unwrap_or_default();
    let h = c
        .send_task(task, args, Map::new(), opts)
        .expect("send_task");
    h.id().to_string()
}

fn status(redis: &RedisServer, id: &str) -> Option<String> {
    redis
        .task_meta(id)
        .and_then(|m| m["status"].as_str().map(str::to_string))
}

fn processes(stats: &Value) -> usize {
    stats["pool"]["processes"]
        .as_array()
        .map(|a| a.len())
        .unwrap_or(0)
}

#[test]
fn inspect_ping_registered_stats_and_active_queues() {
    let Some((redis, py)) =
        celery::celery_or_skip("inspect_ping_registered_stats_and_active_queues")
    else {
        return;
    };
    let url = redis.url();
    let dir = app_dir(&url);
    let name = node("ping");
    let _w = worker(&url, &name, &["-c", "2"]);

    assert_eq!(
        ask(&py, &dir, &name, &["inspect", "ping"]),
        json!({"ok": "pong"})
    );

    let reg = ask(&py, &dir, &name, &["inspect", "registered"]);
    let reg: Vec<&str> = reg
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        reg.contains(&"math.square [signature=(x: u64) -> u64]"),
        "{reg:?}"
    );
    assert!(
        reg.iter().any(|t| t.starts_with("faults.sleep_ms [")),
        "{reg:?}"
    );

    // One job, then stats count it and show the pool.
    let c = client(&url);
    let h = c
        .send_task(
            "math.square",
            vec![json!(7)],
            Map::new(),
            &SendOptions::default(),
        )
        .unwrap();
    assert_eq!(h.get_timeout(DEADLINE).unwrap(), json!(49));
    let stats = poll("stats to count the job", DEADLINE, || {
        let s = ask(&py, &dir, &name, &["inspect", "stats"]);
        (s["total"]["math.square"] == json!(1) && processes(&s) == 2).then_some(s)
    });
    assert_eq!(stats["pool"]["max-concurrency"], json!(2), "{stats}");
    assert_eq!(stats["broker"]["transport"], "redis");
    assert_eq!(stats["broker"]["port"], json!(redis.port()));
    assert_eq!(stats["sw_ident"], "billiard-host");
    for k in ["restarts", "recycled", "worker_deaths", "peak_rss_bytes"] {
        assert!(stats["pool"].get(k).is_some(), "no pool.{k}: {stats}");
    }
    let peaks = stats["pool"]["peak_rss_bytes"].as_object().unwrap();
    assert_eq!(peaks.len(), 2, "{stats}");
    assert!(
        peaks.values().all(|v| v.as_u64().is_some_and(|b| b > 0)),
        "{stats}"
    );

    let q = ask(&py, &dir, &name, &["inspect", "active_queues"]);
    assert_eq!(q[0]["name"], "celery", "{q}");
    assert_eq!(q[0]["exchange"]["type"], "direct");

    // A request for another node is not answered by ours.
    assert_eq!(
        celery_json(&py, &dir, &["inspect", "ping", "-d", "nobody@nowhere"]),
        Value::Null
    );
}

#[test]
fn inspect_active_and_revoke_terminate_kill_a_running_job() {
    let Some((redis, py)) =
        celery::celery_or_skip("inspect_active_and_revoke_terminate_kill_a_running_job")
    else {
        return;
    };
    let url = redis.url();
    let dir = app_dir(&url);
    let name = node("active");
    let _w = worker(&url, &name, &["-c", "2"]);
    let c = client(&url);
    let id = send(
        &c,
        "faults.sleep_ms",
        json!([600_000]),
        &SendOptions::default(),
    );
    let job = poll("inspect active to show the sleeping job", DEADLINE, || {
        let a = ask(&py, &dir, &name, &["inspect", "active"]);
        a.as_array()?
            .iter()
            .find(|r| r["id"] == json!(id) && r["worker_pid"].as_i64().is_some())
            .cloned()
    });
    assert_eq!(job["name"], "faults.sleep_ms", "{job}");
    assert_eq!(job["args"], json!([600_000]), "{job}");
    assert_eq!(job["hostname"], json!(name));
    assert_eq!(job["delivery_info"]["routing_key"], "celery");
    assert!(job["time_start"].as_f64().is_some(), "{job}");
    let before = ask(&py, &dir, &name, &["inspect", "stats"]);

    // Celery 5's CLI form of revoke(id, terminate=True, signal=...).
    let r = ask(&py, &dir, &name, &["control", "terminate", "SIGKILL", &id]);
    assert_eq!(r, json!({"ok": format!("terminate: {id}")}));
    poll("REVOKED in the backend", DEADLINE, || {
        (status(&redis, &id).as_deref() == Some("REVOKED")).then_some(())
    });
    let meta = redis.task_meta(&id).unwrap();
    assert_eq!(meta["result"]["exc_type"], "TaskRevokedError", "{meta}");

    // The pool is intact: both workers serve, the job is gone from active.
    let h = c
        .send_task(
            "math.square",
            vec![json!(12)],
            Map::new(),
            &SendOptions::default(),
        )
        .unwrap();
    assert_eq!(h.get_timeout(DEADLINE).unwrap(), json!(144));
    let after = poll("a full pool after the kill", DEADLINE, || {
        let s = ask(&py, &dir, &name, &["inspect", "stats"]);
        (processes(&s) == 2).then_some(s)
    });
    assert!(processes(&before) == 2, "{before}");
    let a = ask(&py, &dir, &name, &["inspect", "active"]);
    assert_eq!(a, json!([]), "{a}");
    let revoked = ask(&py, &dir, &name, &["inspect", "revoked"]);
    assert_eq!(revoked, json!([id]));
    let _ = after;
}

#[test]
fn a_revoked_id_never_runs_even_on_a_host_started_later() {
    let Some((redis, py)) =
        celery::celery_or_skip("a_revoked_id_never_runs_even_on_a_host_started_later")
    else {
        return;
    };
    let url = redis.url();
    let dir = app_dir(&url);
    let marks = celery::unique_temp_dir("celery-ops-revoke").join("ran.txt");
    let marks_s = marks.display().to_string();
    let first = node("rev-a");
    let mut a = worker(&url, &first, &["-c", "1"]);
    let c = client(&url);

    // Revoked while queued behind a running job: never runs.
    let blocker = send(
        &c,
        "faults.sleep_ms",
        json!([600_000]),
        &SendOptions::default(),
    );
    let queued = SendOptions {
        task_id: Some(format!("queued-{}", std::process::id())),
        ..SendOptions::default()
    };
    poll("the blocker to run", DEADLINE, || {
        let act = ask(&py, &dir, &first, &["inspect", "active"]);
        act.as_array()?
            .iter()
            .any(|r| r["id"] == json!(blocker))
            .then_some(())
    });
    let qid = queued.task_id.clone().unwrap();
    let r = ask(&py, &dir, &first, &["control", "revoke", &qid]);
    assert_eq!(
        r,
        json!({"ok": format!("tasks {{'{qid}'}} flagged as revoked")})
    );
    send(
        &c,
        "hostile.append_line",
        json!([marks_s, "queued", 0]),
        &queued,
    );
    // The queued message waits in Redis behind the blocker (-c 1,
    // prefetch 1); the blocker is killed, then the queued one is taken.
    assert_eq!(redis.cmd(&["LLEN", "celery"]).int(), 1);
    ask(
        &py,
        &dir,
        &first,
        &["control", "terminate", "SIGKILL", &blocker],
    );
    poll("REVOKED for the queued id", DEADLINE, || {
        (status(&redis, &qid).as_deref() == Some("REVOKED")).then_some(())
    });
    assert_eq!(status(&redis, &blocker).as_deref(), Some("REVOKED"));

    // A revoke of an id not sent yet, then a remote (warm) shutdown.
    let later = format!("later-{}", std::process::id());
    ask(&py, &dir, &first, &["control", "revoke", &later]);
    let score = redis.cmd(&["ZSCORE", "billiard-host:revoked", &later]);
    assert!(!score.is_nil(), "the revoke is kept in Redis");
    let _ = celery_json(&py, &dir, &["control", "shutdown", "-d", &first]);
    let st = poll(
        "the worker to exit after control shutdown",
        DEADLINE,
        || a.wait_timeout(Duration::from_millis(100)),
    );
    assert!(st.success(), "{st:?}: {}", a.stderr());

    // A host started afterwards honours it.
    let second = node("rev-b");
    let _b = worker(&url, &second, &["-c", "1"]);
    let opts = SendOptions {
        task_id: Some(later.clone()),
        ..SendOptions::default()
    };
    send(
        &c,
        "hostile.append_line",
        json!([marks_s, "later", 0]),
        &opts,
    );
    poll("REVOKED for the later id", DEADLINE, || {
        (status(&redis, &later).as_deref() == Some("REVOKED")).then_some(())
    });
    // Not revoked: runs (so the marks file would have shown the others).
    let fine = send(
        &c,
        "hostile.append_line",
        json!([marks_s, "fine", 0]),
        &SendOptions::default(),
    );
    poll("the unrevoked job", DEADLINE, || {
        (status(&redis, &fine).as_deref() == Some("SUCCESS")).then_some(())
    });
    let ran = std::fs::read_to_string(&marks).unwrap_or_default();
    assert_eq!(ran, "fine\n", "revoked jobs ran");
}

#[test]
fn pool_grow_shrink_and_consumers_change_the_live_worker() {
    let Some((redis, py)) =
        celery::celery_or_skip("pool_grow_shrink_and_consumers_change_the_live_worker")
    else {
        return;
    };
    let url = redis.url();
    let dir = app_dir(&url);
    let name = node("grow");
    let _w = worker(&url, &name, &["-c", "1"]);

    let r = ask(&py, &dir, &name, &["control", "pool_grow", "2"]);
    assert_eq!(r, json!({"ok": "pool will grow"}));
    poll("3 live workers", DEADLINE, || {
        let s = ask(&py, &dir, &name, &["inspect", "stats"]);
        (processes(&s) == 3 && s["pool"]["max-concurrency"] == json!(3)).then_some(())
    });
    let r = ask(&py, &dir, &name, &["control", "pool_shrink", "1"]);
    assert_eq!(r, json!({"ok": "pool will shrink"}));
    poll("2 live workers", DEADLINE, || {
        let s = ask(&py, &dir, &name, &["inspect", "stats"]);
        (processes(&s) == 2).then_some(())
    });

    // add_consumer: a queue it did not consume.
    let r = ask(&py, &dir, &name, &["control", "add_consumer", "extra"]);
    assert_eq!(r, json!({"ok": "add consumer extra"}));
    let q = ask(&py, &dir, &name, &["inspect", "active_queues"]);
    let names: Vec<&str> = q
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["name"].as_str())
        .collect();
    assert_eq!(names, ["celery", "extra"]);
    let c = client(&url);
    let on_extra = SendOptions {
        queue: Some("extra".into()),
        ..SendOptions::default()
    };
    let h = c
        .send_task("math.square", vec![json!(5)], Map::new(), &on_extra)
        .unwrap();
    assert_eq!(h.get_timeout(DEADLINE).unwrap(), json!(25));

    let r = ask(&py, &dir, &name, &["control", "cancel_consumer", "extra"]);
    assert_eq!(r, json!({"ok": "no longer consuming from extra"}));
    let q = ask(&py, &dir, &name, &["inspect", "active_queues"]);
    let names: Vec<&str> = q
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["name"].as_str())
        .collect();
    assert_eq!(names, ["celery"]);
    // Sent after the cancel: stays in its list (the reply is out once the
    // consumer switched: poll until the message sits there).
    let id = send(&c, "math.square", json!([6]), &on_extra);
    poll("the message to stay on extra", DEADLINE, || {
        (redis.cmd(&["LLEN", "extra"]).int() == 1).then_some(())
    });
    assert!(redis.task_meta(&id).is_none());
}

/// Reads published events (`PSUBSCRIBE /0.celeryev/*`) until `done` says so.
fn collect_events(
    redis: &RedisServer,
    started: impl FnOnce(),
    mut done: impl FnMut(&[Value]) -> bool,
) -> Vec<Value> {
    use base64::Engine as _;
    let mut conn = redis.conn();
    conn.send(&["PSUBSCRIBE", "/0.celeryev/*"]).unwrap();
    let _ = conn.read_reply().unwrap();
    conn.set_read_timeout(Duration::from_millis(200));
    started();
    let mut got: Vec<Value> = Vec::new();
    let end = Instant::now() + DEADLINE;
    while !done(&got) {
        assert!(Instant::now() < end, "events so far: {got:#?}");
        let Ok(r) = conn.read_reply() else { continue };
        let parts = r.array();
        if parts.len() != 4 {
            continue;
        }
        let channel = parts[2].text();
        let env: Value = serde_json::from_slice(parts[3].bytes()).expect("an envelope");
        assert_eq!(env["properties"]["delivery_info"]["exchange"], "celeryev");
        let rk = env["properties"]["delivery_info"]["routing_key"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(channel, format!("/0.celeryev/{rk}"));
        let body = base64::engine::general_purpose::STANDARD
            .decode(env["body"].as_str().unwrap())
            .unwrap();
        let ev: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(ev["type"].as_str().unwrap().replace('-', "."), rk, "{ev}");
        got.push(ev);
    }
    got
}

#[test]
fn events_carry_celerys_standard_fields() {
    let Some((redis, _py)) = celery::celery_or_skip("events_carry_celerys_standard_fields") else {
        return;
    };
    let url = redis.url();
    let name = node("events");
    let mut w: Option<celery::Worker> = None;
    let mut ids = (String::new(), String::new());
    let of = |evs: &[Value], ty: &str| -> Vec<Value> {
        evs.iter().filter(|e| e["type"] == ty).cloned().collect()
    };
    let evs = collect_events(
        &redis,
        || {
            w = Some(worker(&url, &name, &["-c", "1", "-E"]));
            let c = client(&url);
            ids.0 = send(&c, "math.square", json!([9]), &SendOptions::default());
            ids.1 = send(&c, "faults.fail", json!(["nope"]), &SendOptions::default());
        },
        |evs| {
            of(evs, "worker-heartbeat").len() >= 2
                && of(evs, "task-succeeded").len() == 1
                && of(evs, "task-failed").len() == 1
        },
    );
    let online = &of(&evs, "worker-online")[0];
    for e in &evs {
        assert_eq!(e["hostname"], json!(name), "{e}");
        assert!(
            e["pid"].as_u64().is_some() && e["clock"].as_u64().is_some(),
            "{e}"
        );
        assert!(
            e["utcoffset"].is_number() && e["timestamp"].is_number(),
            "{e}"
        );
    }
    let hb = &of(&evs, "worker-heartbeat")[0];
    for e in [online, hb] {
        assert_eq!(e["sw_ident"], "billiard-host", "{e}");
        assert_eq!(e["sw_ver"], env!("CARGO_PKG_VERSION"));
        assert_eq!(e["freq"], json!(2.0));
        assert!(e["active"].is_u64() && e["processed"].is_u64(), "{e}");
        assert_eq!(e["loadavg"].as_array().map(|a| a.len()), Some(3), "{e}");
    }
    let received = of(&evs, "task-received");
    let r = received
        .iter()
        .find(|e| e["uuid"] == json!(ids.0))
        .expect("task-received");
    assert_eq!(r["name"], "math.square");
    assert_eq!(r["args"], "[9]");
    assert!(of(&evs, "task-started")
        .iter()
        .any(|e| e["uuid"] == json!(ids.0)));
    let ok = &of(&evs, "task-succeeded")[0];
    assert_eq!(ok["uuid"], json!(ids.0));
    assert_eq!(ok["result"], "81");
    assert!(ok["runtime"].as_f64().is_some_and(|r| r >= 0.0), "{ok}");
    let failed = &of(&evs, "task-failed")[0];
    assert_eq!(failed["uuid"], json!(ids.1));
    assert!(
        failed["exception"].as_str().unwrap().contains("nope"),
        "{failed}"
    );
    // Clocks only go forward.
    let clocks: Vec<u64> = evs.iter().filter_map(|e| e["clock"].as_u64()).collect();
    assert!(clocks.windows(2).all(|w| w[0] < w[1]), "{clocks:?}");

    // worker-offline on a warm shutdown.
    let mut w = w.unwrap();
    let evs = collect_events(
        &redis,
        || w.signal(Signal::SIGTERM),
        |evs| evs.iter().any(|e| e["type"] == "worker-offline"),
    );
    assert_eq!(evs.last().unwrap()["hostname"], json!(name));
    let _ = w.wait_timeout(DEADLINE);
}

/// GET `path` from 127.0.0.1:`port`: (status, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let (text, err) =
        common::http_get(&format!("127.0.0.1:{port}"), path, Duration::from_secs(20)).ok()?;
    if err.is_some() {
        return None;
    }
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((code, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// True if the venv also has flower (and with it prometheus_client).
fn flower_or_skip(py: &Path, test: &str) -> bool {
    let ok = Command::new(py)
        .args(["-c", "import flower, prometheus_client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        celery::skip(test, "the venv has no flower==2.2.0");
    }
    ok
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn flower_lists_the_worker_online_and_a_succeeded_task() {
    let test = "flower_lists_the_worker_online_and_a_succeeded_task";
    let Some((redis, py)) = celery::celery_or_skip(test) else {
        return;
    };
    if !flower_or_skip(&py, test) {
        return;
    }
    let url = redis.url();
    let dir = app_dir(&url);
    let name = node("flower");
    let _w = worker(&url, &name, &["-c", "1", "-E"]);
    let (flower, port) = start_flower(&py, &dir);
    let workers = poll("flower to list our worker", DEADLINE, || {
        let (code, body) = http_get(port, "/api/workers?refresh=1")?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (code == 200 && v.get(&name).is_some_and(|w| w.get("stats").is_some())).then_some(v)
    });
    let me = &workers[&name];
    assert_eq!(me["stats"]["sw_ident"], "billiard-host", "{me}");
    assert!(
        me["registered"].as_array().is_some_and(|r| !r.is_empty()),
        "{me}"
    );
    assert_eq!(me["active_queues"][0]["name"], "celery", "{me}");
    poll("flower to show our worker online", DEADLINE, || {
        let (_, body) = http_get(port, "/api/workers?status=true")?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (v[&name] == json!(true)).then_some(())
    });

    let c = client(&url);
    let id = send(&c, "math.square", json!([11]), &SendOptions::default());
    let task = poll("flower to show the succeeded task", DEADLINE, || {
        let (_, body) = http_get(port, "/api/tasks")?;
        let v: Value = serde_json::from_str(&body).ok()?;
        let t = v.get(&id)?.clone();
        (t["state"] == "SUCCESS").then_some(t)
    });
    assert_eq!(task["name"], "math.square", "{task}");
    assert_eq!(task["worker"], json!(name), "{task}");
    assert_eq!(task["result"], "121", "{task}");
    drop(flower);
}

/// `celery -A opsapp flower` on a free port (API without authentication).
fn start_flower(py: &Path, dir: &Path) -> (Killed, u16) {
    let port = celery::free_port();
    let log = std::fs::File::create(dir.join("flower.log")).unwrap();
    let flower = Killed(
        Command::new(celery::celery_exe(py))
            .current_dir(dir)
            .env("FLOWER_UNAUTHENTICATED_API", "1")
            .args(["-A", "opsapp", "flower", "--address=127.0.0.1"])
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start flower"),
    );
    (flower, port)
}

/// A headless Chromium on PATH, if any (never installed by CI).
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "headless_shell",
    ]
    .iter()
    .flat_map(|n| std::env::split_paths(&path).map(move |d| d.join(n)))
    .find(|p| p.is_file())
}

/// Runs headless Chromium on `url` with `args` (e.g. `--dump-dom`).
fn chromium_run(exe: &Path, url: &str, args: &[String]) -> std::process::Output {
    let profile = celery::unique_temp_dir("chromium-profile");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1400,600",
        "--virtual-time-budget=8000",
        // Nothing but the local page: no update checks, no sync, no QUIC
        // (a closed network refuses them, slowly).
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url);
    celery::run_with_timeout(cmd, Duration::from_secs(120))
}

#[test]
fn flower_dashboard_screenshot_shows_our_worker() {
    let test = "flower_dashboard_screenshot_shows_our_worker";
    let Some(exe) = chromium() else {
        // .ci/run installs Debian's chromium; elsewhere this test skips
        // (a screenshot is not worth failing a run without a browser).
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIP {test}: no chromium on PATH (apt-get install chromium to run it) ***"
        );
        return;
    };
    let Some((redis, py)) = celery::celery_or_skip(test) else {
        return;
    };
    if !flower_or_skip(&py, test) {
        return;
    }
    let url = redis.url();
    let dir = app_dir(&url);
    let name = node("dashboard");
    let _w = worker(&url, &name, &["-c", "2", "-E"]);
    let (flower, port) = start_flower(&py, &dir);
    poll("flower to show our worker online", DEADLINE, || {
        let (_, body) = http_get(port, "/api/workers?status=true")?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (v[&name] == json!(true)).then_some(())
    });
    let c = client(&url);
    for i in 0..3u64 {
        let h = c
            .send_task(
                "math.square",
                vec![json!(i)],
                Map::new(),
                &SendOptions::default(),
            )
            .unwrap();
        h.get_timeout(DEADLINE).unwrap();
    }
    let page = format!("http://127.0.0.1:{port}/");
    // The dashboard as rendered (its table is filled by script).
    poll("the dashboard to list our worker", DEADLINE, || {
        let out = chromium_run(&exe, &page, &["--dump-dom".to_string()]);
        String::from_utf8_lossy(&out.stdout)
            .contains(&name)
            .then_some(())
    });
    let png = dir.join("flower-dashboard.png");
    let out = chromium_run(&exe, &page, &[format!("--screenshot={}", png.display())]);
    let bytes = std::fs::read(&png).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(bytes.len() > 10_000, "a blank page? {} bytes", bytes.len());
    // BILLIARD_UPDATE_DOCS=1 refreshes the picture in docs/.
    if std::env::var_os("BILLIARD_UPDATE_DOCS").is_some() {
        let docs = common::workspace_root().join("docs/flower-dashboard.png");
        std::fs::write(&docs, &bytes).expect("write docs/flower-dashboard.png");
    }
    drop(flower);
}

/// The port of `metrics: serving http://ADDR/metrics` in the worker's log.
fn metrics_port(w: &celery::Worker) -> u16 {
    celery::metrics_port(w, DEADLINE)
}

#[test]
fn metrics_count_the_jobs_and_healthz_follows_redis() {
    let test = "metrics_count_the_jobs_and_healthz_follows_redis";
    let Some((mut redis, py)) = celery::celery_or_skip(test) else {
        return;
    };
    if !flower_or_skip(&py, test) {
        return;
    }
    let url = redis.url();
    let name = node("metrics");
    let w = worker(&url, &name, &["-c", "2", "--metrics-addr", "127.0.0.1:0"]);
    let port = metrics_port(&w);
    let c = client(&url);
    let mut handles = Vec::new();
    for i in 0..5u64 {
        handles.push(
            c.send_task(
                "math.square",
                vec![json!(i)],
                Map::new(),
                &SendOptions::default(),
            )
            .unwrap(),
        );
    }
    for _ in 0..2 {
        handles.push(
            c.send_task(
                "faults.fail",
                vec![json!("x")],
                Map::new(),
                &SendOptions::default(),
            )
            .unwrap(),
        );
    }
    for h in &handles {
        let _ = h.wait(Some(DEADLINE)).expect("a result");
    }
    // Parsed by the Prometheus client library's OpenMetrics parser.
    let parse = r#"
import json, sys, urllib.request
from prometheus_client.openmetrics.parser import text_string_to_metric_families
text = urllib.request.urlopen(sys.argv[1]).read().decode()
out = {}
for fam in text_string_to_metric_families(text):
    for s in fam.samples:
        key = s.name + json.dumps(dict(sorted(s.labels.items())), sort_keys=True)
        out[key] = s.value
print(json.dumps(out))
"#;
    let murl = format!("http://127.0.0.1:{port}/metrics");
    let m = poll("counters to match the jobs", DEADLINE, || {
        let m = celery::python_json(parse, &[&murl]);
        let sq = m
            ["billiard_celery_tasks_total{\"outcome\": \"success\", \"task\": \"math.square\"}"]
            .as_f64();
        let fl = m
            ["billiard_celery_tasks_total{\"outcome\": \"task_error\", \"task\": \"faults.fail\"}"]
            .as_f64();
        (sq == Some(5.0) && fl == Some(2.0)).then_some(m)
    });
    let f = |k: &str| m[k].as_f64();
    assert_eq!(
        f("billiard_celery_tasks_received_total{\"task\": \"math.square\"}"),
        Some(5.0),
        "{m}"
    );
    assert_eq!(
        f("billiard_celery_task_runtime_seconds_count{\"task\": \"math.square\"}"),
        Some(5.0),
        "{m}"
    );
    assert_eq!(
        f("billiard_celery_queue_wait_seconds_count{\"task\": \"faults.fail\"}"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(f("billiard_celery_tasks_in_flight{}"), Some(0.0), "{m}");
    assert_eq!(f("billiard_pool_workers_alive{}"), Some(2.0), "{m}");
    assert!(
        m["billiard_celery_reserve_latency_seconds_count{}"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0,
        "{m}"
    );
    assert!(
        m["billiard_celery_ack_latency_seconds_count{}"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0,
        "{m}"
    );

    poll("healthz 200", DEADLINE, || {
        (http_get(port, "/healthz")?.0 == 200).then_some(())
    });
    redis.kill();
    let (_, why) = poll("healthz 503 with Redis stopped", DEADLINE, || {
        let r = http_get(port, "/healthz")?;
        (r.0 == 503).then_some(r)
    });
    assert!(why.contains("broker"), "{why}");
    redis.restart();
    poll("healthz 200 after the restart", DEADLINE, || {
        (http_get(port, "/healthz")?.0 == 200).then_some(())
    });
    // Remote control came back with the broker (the pidbox resubscribed).
    let dir = app_dir(&url);
    poll("ping after the Redis restart", DEADLINE, || {
        let v = celery_json(&py, &dir, &["inspect", "ping", "-d", &name]);
        (v[&name] == json!({"ok": "pong"})).then_some(())
    });
    let (_, text) = http_get(port, "/metrics").unwrap();
    let reconnects = text
        .lines()
        .find(|l| l.starts_with("billiard_celery_broker_reconnects_total"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(reconnects, Some(1.0), "{text}");
}
