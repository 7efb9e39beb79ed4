//! `billiard-host worker` end to end: a private redis-server per test, real
//! Python Celery 5.7 clients (and a real Python `celery worker`), the built
//! plugins. Every wait polls a condition with a deadline.
//!
//! Prerequisites (`./scripts/test` installs them): `redis-server` on PATH
//! and the venv with `celery[redis]`. Missing: a loud SKIP, or a failure
//! with `CI=true`.

use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::celery::{self, RedisServer};
use common::celery::{hlen_unacked, lines, llen, py, wait_until, DEADLINE};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// `billiard-host worker math --plugin faults --plugin hostile --broker URL
/// <extra>`, waited for until it consumes.
fn worker(url: &str, extra: &[&str]) -> celery::Worker {
    celery::worker_with(&["math", "faults", "hostile"], url, extra)
}

fn zcard_index(redis: &RedisServer) -> i64 {
    redis.cmd(&["ZCARD", "unacked_index"]).int()
}

/// The Python client's view of one call: `{"ok": value}` or the exception
/// it raised (module, type, message, whether it is the real class of that
/// module) and the task state.
const CALL: &str = r#"
def call(name, args=(), kwargs=None, **opts):
    r = app.send_task(name, args=list(args), kwargs=kwargs or {}, **opts)
    try:
        return {"ok": r.get(timeout=60)}
    except Exception as e:
        mod = sys.modules.get(type(e).__module__)
        return {"module": type(e).__module__, "type": type(e).__name__, "msg": str(e),
                "real_class": mod is not None and getattr(mod, type(e).__name__, None) is type(e),
                "state": r.state}
"#;

#[test]
fn python_gets_results_and_kwargs_map_to_positions() {
    let Some((redis, _py)) =
        celery::celery_or_skip("python_gets_results_and_kwargs_map_to_positions")
    else {
        return;
    };
    let url = redis.url();
    let _w = worker(&url, &["-c", "2"]);
    let v = py(
        &url,
        &format!(
            "{CALL}\nprint(json.dumps([call('math.square', [3]), call('fib', [10]), \
             call('math.add', [1], {{'b': 2}}), call('math.add', [], {{'b': 5, 'a': 10}}), \
             call('math.add', [1], {{'c': 2}})]))"
        ),
    );
    assert_eq!(v[0], json!({"ok": 9}), "{v}");
    assert_eq!(v[1], json!({"ok": 55}), "bare task name (math.fib): {v}");
    assert_eq!(v[2], json!({"ok": 3}), "kwargs: {v}");
    assert_eq!(v[3], json!({"ok": 15}), "kwargs only: {v}");
    assert_eq!(v[4]["type"], "TypeError", "unknown kwarg: {v}");
    assert!(
        v[4]["msg"]
            .as_str()
            .unwrap()
            .contains("unexpected keyword argument 'c'"),
        "{v}"
    );
    wait_until("the acks", DEADLINE, || {
        hlen_unacked(&redis) == 0 && zcard_index(&redis) == 0
    });
}

#[test]
fn every_error_kind_raises_its_exception_in_python() {
    let Some((redis, _py)) =
        celery::celery_or_skip("every_error_kind_raises_its_exception_in_python")
    else {
        return;
    };
    let url = redis.url();
    let _w = worker(&url, &["-c", "2"]);
    let v = py(
        &url,
        &format!(
            "{CALL}\nprint(json.dumps([\
             call('faults.panic', ['boom']),\
             call('faults.fail', ['it failed']),\
             call('faults.segfault'),\
             call('math.square', ['not a number']),\
             call('nope.missing', [1]),\
             call('faults.spin_ms', [60000], time_limit=1),\
             call('faults.cooperative_spin', [60000], soft_time_limit=0.3),\
             call('math.square', [2], expires=-5),\
             ]))"
        ),
    );
    let expect = [
        ("TaskPanic", None, "boom"),
        ("PluginError", None, "it failed"),
        ("WorkerLostError", Some("billiard.exceptions"), "SIGSEGV"),
        ("TypeError", Some("builtins"), "square"),
        ("NotRegistered", Some("celery.exceptions"), "nope.missing"),
        (
            "TimeLimitExceeded",
            Some("billiard.exceptions"),
            "hard time limit",
        ),
        (
            "SoftTimeLimitExceeded",
            Some("billiard.exceptions"),
            "soft time limit",
        ),
        ("TaskRevokedError", Some("celery.exceptions"), "expired"),
    ];
    for (i, (ty, module, text)) in expect.iter().enumerate() {
        let got = &v[i];
        assert_eq!(got["type"], *ty, "case {i}: {got}");
        if let Some(m) = module {
            assert_eq!(got["module"], *m, "case {i}: {got}");
            assert_eq!(got["real_class"], true, "case {i} is the real class: {got}");
        }
        assert!(
            got["msg"].as_str().unwrap_or_default().contains(text),
            "case {i} message should mention {text:?}: {got}"
        );
    }
    assert_eq!(v[0]["state"], "FAILURE");
    assert_eq!(v[7]["state"], "REVOKED", "expired → REVOKED: {}", v[7]);
    wait_until("the acks", DEADLINE, || hlen_unacked(&redis) == 0);
}

/// The `except` lines docs/celery.md shows, run as they are written (the
/// block under the `tested:` marker), with `python/` on `PYTHONPATH` as a
/// user who followed the docs has it: each failure lands in the `except`
/// its comment names, by type (issue 28, item 5).
#[test]
fn u28_the_documented_except_lines_catch_every_failure() {
    let Some((redis, python)) =
        celery::celery_or_skip("u28_the_documented_except_lines_catch_every_failure")
    else {
        return;
    };
    let docs = std::fs::read_to_string(common::workspace_root().join("docs/celery.md"))
        .expect("docs/celery.md");
    let marker =
        "<!-- tested: celery_redis::u28_the_documented_except_lines_catch_every_failure -->";
    let block = docs
        .split_once(marker)
        .and_then(|(_, rest)| rest.split_once("```python\n"))
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(code, _)| code.to_string())
        .expect("docs/celery.md has the marked python block");
    // What each printed line must start with: the class in the line's
    // trailing comment.
    let expected: Vec<String> = block
        .lines()
        .filter(|l| l.starts_with("print(outcome("))
        .map(|l| {
            l.rsplit_once('#')
                .map(|(_, c)| c.trim().to_string())
                .expect("each print names its class")
        })
        .collect();
    assert!(expected.len() >= 7, "{expected:?}");
    let url = redis.url();
    let _w = worker(&url, &["-c", "2"]);
    let mut cmd = std::process::Command::new(&python);
    cmd.arg("-c")
        .arg(&block)
        .env("BROKER", &url)
        .env("PYTHONPATH", common::workspace_root().join("python"))
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let out = celery::run_with_timeout(cmd, celery::PYTHON_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<&str> = stdout.lines().collect();
    assert_eq!(got.len(), expected.len(), "{stdout}");
    for (line, class) in got.iter().zip(&expected) {
        assert!(
            line.starts_with(&format!("{class}: ")),
            "{line} (want {class})"
        );
    }

    // Without the import, the name is still one no Celery class has:
    // `except celery.exceptions.TaskError` does not pretend to match.
    let v = py(
        &url,
        "import celery.exceptions\n\
         try:\n\
         \x20   app.send_task('faults.fail', args=['x']).get(timeout=60)\n\
         except celery.exceptions.TaskError:\n\
         \x20   print(json.dumps('matched TaskError'))\n\
         except Exception as e:\n\
         \x20   print(json.dumps([type(e).__name__, isinstance(e, celery.exceptions.CeleryError)]))",
    );
    assert_eq!(v, serde_json::json!(["PluginError", false]));
}

#[test]
fn eta_is_held_without_a_worker_and_expires_revokes() {
    let Some((redis, _py)) =
        celery::celery_or_skip("eta_is_held_without_a_worker_and_expires_revokes")
    else {
        return;
    };
    let url = redis.url();
    // One worker process: the eta job must not occupy it.
    let _w = worker(&url, &["-c", "1"]);
    let v = py(
        &url,
        &format!(
            "{CALL}
import datetime
t0 = time.time()
late = app.send_task('math.square', args=[4], countdown=6)
quick = call('hostile.nap', [10])
late_state = late.state
late_value = late.get(timeout=60)
done = late.date_done
if done.tzinfo is None:
    done = done.replace(tzinfo=datetime.timezone.utc)
waited = done.timestamp() - t0
gone = call('math.square', [5], countdown=2, expires=1)
print(json.dumps({{'quick': quick, 'late_state': late_state, 'late': late_value,
                   'waited': waited, 'gone': gone}}))"
        ),
    );
    assert_eq!(v["quick"], json!({"ok": 10}), "{v}");
    assert_eq!(
        v["late_state"], "PENDING",
        "a job sent after the eta job ran first: {v}"
    );
    assert_eq!(v["late"], 16, "{v}");
    assert!(
        v["waited"].as_f64().unwrap() >= 5.0,
        "the eta job ran before its eta: {v}"
    );
    assert_eq!(v["gone"]["type"], "TaskRevokedError", "{v}");
    assert_eq!(v["gone"]["state"], "REVOKED", "{v}");
    wait_until("the acks", DEADLINE, || hlen_unacked(&redis) == 0);
}

#[test]
fn three_hosts_run_a_thousand_jobs_exactly_once_each() {
    let Some((redis, _py)) =
        celery::celery_or_skip("three_hosts_run_a_thousand_jobs_exactly_once_each")
    else {
        return;
    };
    let url = redis.url();
    let hosts: Vec<celery::Worker> = (0..3)
        .map(|_| worker(&url, &["-c", "2", "--prefetch-multiplier", "4"]))
        .collect();
    let ids = py(
        &url,
        "ids = [app.send_task('math.square', args=[i]).id for i in range(1000)]\nprint(json.dumps(ids))",
    );
    let ids: Vec<String> = ids
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1000);
    wait_until("1000 results", DEADLINE, || {
        redis.keys("celery-task-meta-*").len() >= 1000
    });
    for (i, id) in ids.iter().enumerate() {
        let meta = redis.task_meta(id).expect("a result");
        assert_eq!(meta["status"], "SUCCESS", "{meta}");
        assert_eq!(meta["result"], json!((i * i) as u64), "{meta}");
        assert_eq!(meta["task_id"], json!(id));
    }
    assert_eq!(redis.keys("celery-task-meta-*").len(), 1000);
    wait_until("nothing left unacked", DEADLINE, || {
        hlen_unacked(&redis) == 0 && zcard_index(&redis) == 0
    });
    assert_eq!(llen(&redis, "celery"), 0);
    drop(hosts);
}

#[test]
fn a_job_of_a_killed_host_completes_on_another() {
    let Some((redis, _py)) = celery::celery_or_skip("a_job_of_a_killed_host_completes_on_another")
    else {
        return;
    };
    let url = redis.url();
    let dir = celery::unique_temp_dir("killed-host");
    let log = dir.join("runs.log");
    let mut a = worker(&url, &["-c", "1", "--visibility-timeout", "2s"]);
    let id = py(
        &url,
        &format!(
            "print(json.dumps(app.send_task('hostile.append_line', args=[{}, 'run', 8000]).id))",
            json!(log.display().to_string())
        ),
    );
    let id = id.as_str().unwrap().to_string();
    wait_until("the job to start on host A", DEADLINE, || {
        lines(&log).len() == 1
    });
    a.kill(); // kill -9 of the host and everything under it
    assert!(redis.task_meta(&id).is_none());
    assert_eq!(hlen_unacked(&redis), 1, "the message is still unacked");
    let _b = worker(&url, &["-c", "1", "--visibility-timeout", "2s"]);
    wait_until("the job to complete on host B", DEADLINE, || {
        redis
            .task_meta(&id)
            .is_some_and(|m| m["status"] == "SUCCESS")
    });
    assert_eq!(redis.task_meta(&id).unwrap()["result"], 8000);
    assert_eq!(lines(&log).len(), 2, "ran on A (killed), then on B");
    wait_until("nothing left unacked", DEADLINE, || {
        hlen_unacked(&redis) == 0
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_job_longer_than_three_visibility_timeouts_runs_once_on_a_live_host() {
    let Some((redis, _py)) = celery::celery_or_skip(
        "a_job_longer_than_three_visibility_timeouts_runs_once_on_a_live_host",
    ) else {
        return;
    };
    let url = redis.url();
    let dir = celery::unique_temp_dir("long-job");
    let log = dir.join("runs.log");
    // Two hosts, each sweeping for messages unrenewed for 1 s; the job takes 4 s.
    let _a = worker(&url, &["-c", "1", "--visibility-timeout", "1s"]);
    let _b = worker(&url, &["-c", "1", "--visibility-timeout", "1s"]);
    let v = py(
        &url,
        &format!(
            "r = app.send_task('hostile.append_line', args=[{}, 'run', 4000])\nprint(json.dumps(r.get(timeout=60)))",
            json!(log.display().to_string())
        ),
    );
    assert_eq!(v, 4000);
    assert_eq!(lines(&log), ["run"], "the job ran more than once");
    wait_until("nothing left unacked", DEADLINE, || {
        hlen_unacked(&redis) == 0
    });
    assert_eq!(llen(&redis, "celery"), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_job_completes_when_redis_restarts_mid_batch() {
    if celery::python_or_skip("every_job_completes_when_redis_restarts_mid_batch").is_none()
        || celery::redis_or_skip("every_job_completes_when_redis_restarts_mid_batch").is_none()
    {
        return;
    }
    // An append-only file fsynced on every write: a SIGKILL and a restart
    // on the same port keep every acknowledged write (what "Redis
    // restarted" means for a broker that must not lose jobs).
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let url = redis.url();
    let mut w = worker(&url, &["-c", "2", "--visibility-timeout", "10s"]);
    let ids = py(
        &url,
        "ids = [app.send_task('hostile.nap', args=[20]).id for i in range(300)]\nprint(json.dumps(ids))",
    );
    let ids: Vec<String> = ids
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let done = |redis: &RedisServer| {
        ids.iter()
            .filter(|id| {
                redis
                    .task_meta(id)
                    .is_some_and(|m| m["status"] == "SUCCESS")
            })
            .count()
    };
    wait_until("the first results", DEADLINE, || done(&redis) >= 20);
    redis.kill();
    assert!(
        w.wait_timeout(Duration::from_millis(300)).is_none(),
        "the worker must outlive its broker"
    );
    redis.restart();
    wait_until("every result after the restart", DEADLINE, || {
        done(&redis) == ids.len()
    });
    wait_until("nothing left unacked", DEADLINE, || {
        hlen_unacked(&redis) == 0
    });
    wait_until("the outage to be logged", DEADLINE, || {
        w.stderr().contains("lost the broker") || w.stderr().contains("yet")
    });
}

#[test]
fn a_chain_crosses_a_python_worker_and_a_rust_worker() {
    let Some((redis, python)) =
        celery::celery_or_skip("a_chain_crosses_a_python_worker_and_a_rust_worker")
    else {
        return;
    };
    let url = redis.url();
    let dir = celery::unique_temp_dir("py-worker");
    std::fs::write(
        dir.join("pytasks.py"),
        format!(
            "{}\n@app.task(name='py.double')\ndef double(x):\n    return x * 2\n",
            celery::py_app(&url)
        ),
    )
    .unwrap();
    let mut cmd = Command::new(&python);
    cmd.args([
        "-m", "celery", "-A", "pytasks", "worker", "-Q", "py", "-c", "1",
    ])
    .args(["--pool", "solo", "--without-gossip", "--without-mingle"])
    .args(["--without-heartbeat", "-l", "info", "-n", "py@%h"])
    .current_dir(&dir)
    .env("PYTHONDONTWRITEBYTECODE", "1")
    .stdout(Stdio::null());
    let _py_worker = celery::spawn_until(cmd, "ready.", Duration::from_secs(90));
    let _rust = worker(&url, &["-Q", "rust", "-c", "1"]);
    let v = py(
        &url,
        "from celery import chain\n\
         c = chain(app.signature('math.square', args=[3], queue='rust'),\n\
                   app.signature('py.double', queue='py'),\n\
                   app.signature('math.square', queue='rust'))\n\
         print(json.dumps(c.apply_async().get(timeout=60)))",
    );
    assert_eq!(v, json!(324), "(3² · 2)² through rust, python, rust");
    wait_until("nothing left unacked", DEADLINE, || {
        hlen_unacked(&redis) == 0
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn link_and_link_error_send_their_callbacks() {
    let Some((redis, _py)) = celery::celery_or_skip("link_and_link_error_send_their_callbacks")
    else {
        return;
    };
    let url = redis.url();
    let _w = worker(&url, &["-c", "2"]);
    let v = py(
        &url,
        "from celery.result import AsyncResult\n\
         ok = app.send_task('math.square', args=[3], link=app.signature('math.square', task_id='cb-1'))\n\
         first = ok.get(timeout=60)\n\
         cb = AsyncResult('cb-1', app=app).get(timeout=60)\n\
         bad = app.send_task('faults.fail', args=['nope'], link_error=app.signature('faults.fail', task_id='eb-1'))\n\
         try:\n    bad.get(timeout=60)\nexcept Exception:\n    pass\n\
         try:\n    AsyncResult('eb-1', app=app).get(timeout=60)\n    eb = None\n\
         except Exception as e:\n    eb = str(e)\n\
         print(json.dumps({'first': first, 'cb': cb, 'eb': eb, 'bad_id': bad.id}))",
    );
    assert_eq!(v["first"], 9);
    assert_eq!(v["cb"], 81, "the link got the result prepended: {v}");
    assert_eq!(
        v["eb"], v["bad_id"],
        "the errback got the failed task's id as its argument: {v}"
    );
    wait_until("nothing left unacked", DEADLINE, || {
        hlen_unacked(&redis) == 0
    });
}

#[test]
fn a_pickle_message_is_refused_without_being_decoded() {
    let Some((redis, _py)) =
        celery::celery_or_skip("a_pickle_message_is_refused_without_being_decoded")
    else {
        return;
    };
    let url = redis.url();
    let dir = celery::unique_temp_dir("pickle");
    let marker = dir.join("unpickled");
    let _w = worker(&url, &["-c", "1"]);
    let v = py(
        &url,
        &format!(
            "{CALL}
import os
class Evil:
    def __reduce__(self):
        return (os.system, ('touch ' + {},))
print(json.dumps(call('math.square', [Evil()], serializer='pickle')))",
            json!(marker.display().to_string())
        ),
    );
    assert_eq!(v["type"], "ContentDisallowed", "{v}");
    assert_eq!(v["module"], "kombu.exceptions", "{v}");
    assert_eq!(v["state"], "FAILURE");
    assert!(!marker.exists(), "the pickle was unpickled");
    wait_until("the ack", DEADLINE, || hlen_unacked(&redis) == 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends a task from Python without waiting; its id.
fn send(url: &str, task: &str, args: Value) -> String {
    py(
        url,
        &format!("print(json.dumps(app.send_task({task:?}, args={args}).id))"),
    )
    .as_str()
    .unwrap()
    .to_string()
}

#[test]
fn sigterm_is_a_warm_shutdown() {
    let Some((redis, _py)) = celery::celery_or_skip("sigterm_is_a_warm_shutdown") else {
        return;
    };
    let url = redis.url();
    let mut w = worker(&url, &["-c", "1"]);
    // Sent together: with one worker process the second stays queued while
    // the first runs.
    let ids = py(
        &url,
        "print(json.dumps([app.send_task('hostile.nap', args=[a]).id for a in (5000, 1)]))",
    );
    let (first, second) = (
        ids[0].as_str().unwrap().to_string(),
        ids[1].as_str().unwrap().to_string(),
    );
    wait_until(
        "the first job reserved, the second queued",
        DEADLINE,
        || hlen_unacked(&redis) == 1 && llen(&redis, "celery") == 1,
    );
    w.signal(Signal::SIGTERM);
    let status = w
        .wait_timeout(DEADLINE)
        .expect("the worker exits after its running job");
    assert_eq!(status.code(), Some(0), "{}", w.stderr());
    assert_eq!(redis.task_meta(&first).unwrap()["status"], "SUCCESS");
    assert!(
        redis.task_meta(&second).is_none(),
        "nothing new is reserved"
    );
    assert_eq!(
        llen(&redis, "celery"),
        1,
        "the second job waits in the queue"
    );
    assert_eq!(hlen_unacked(&redis), 0);
    assert_eq!(zcard_index(&redis), 0);
}

#[test]
fn sigquit_is_a_cold_shutdown_that_requeues_at_once() {
    let Some((redis, _py)) =
        celery::celery_or_skip("sigquit_is_a_cold_shutdown_that_requeues_at_once")
    else {
        return;
    };
    let url = redis.url();
    let mut w = worker(&url, &["-c", "1", "--visibility-timeout", "1h"]);
    let id = send(&url, "hostile.nap", json!([600000]));
    wait_until("the job to be reserved", DEADLINE, || {
        hlen_unacked(&redis) == 1 && llen(&redis, "celery") == 0
    });
    w.signal(Signal::SIGQUIT);
    let status = w.wait_timeout(DEADLINE).expect("the worker exits");
    assert_eq!(status.code(), Some(0), "{}", w.stderr());
    assert!(redis.task_meta(&id).is_none(), "no result for a killed job");
    assert_eq!(
        llen(&redis, "celery"),
        1,
        "the message is back in the queue"
    );
    assert_eq!(hlen_unacked(&redis), 0);
    let back = &redis.list_json("celery")[0];
    assert_eq!(back["headers"]["id"], json!(id));
    assert_eq!(back["headers"]["redelivered"], true);
}

#[test]
fn a_second_sigterm_is_cold() {
    let Some((redis, _py)) = celery::celery_or_skip("a_second_sigterm_is_cold") else {
        return;
    };
    let url = redis.url();
    let mut w = worker(&url, &["-c", "1"]);
    let id = send(&url, "hostile.nap", json!([600000]));
    wait_until("the job to be reserved", DEADLINE, || {
        hlen_unacked(&redis) == 1
    });
    w.signal(Signal::SIGTERM);
    wait_until("the warm shutdown to begin", DEADLINE, || {
        w.stderr().contains("warm shutdown")
    });
    // Not a synchronization: the same signal again within 100 ms counts as
    // one delivery (a signal sent to a process and to its group arrives
    // twice), so the second request must come later than that.
    std::thread::sleep(Duration::from_millis(300));
    w.signal(Signal::SIGTERM);
    let status = w
        .wait_timeout(DEADLINE)
        .unwrap_or_else(|| panic!("the worker did not exit:\n{}", w.stderr()));
    assert_eq!(status.code(), Some(0), "{}", w.stderr());
    assert!(redis.task_meta(&id).is_none());
    assert_eq!(llen(&redis, "celery"), 1, "requeued at once");
    assert_eq!(hlen_unacked(&redis), 0);
}

#[test]
fn reserves_only_idle_slots_times_the_prefetch_multiplier() {
    let Some((redis, _py)) =
        celery::celery_or_skip("reserves_only_idle_slots_times_the_prefetch_multiplier")
    else {
        return;
    };
    let url = redis.url();
    let mut w = worker(&url, &["-c", "2", "--prefetch-multiplier", "2"]);
    py(
        &url,
        "print(json.dumps([app.send_task('hostile.nap', args=[600000]).id for i in range(10)]))",
    );
    wait_until("four reserved, six queued", DEADLINE, || {
        hlen_unacked(&redis) == 4 && llen(&redis, "celery") == 6
    });
    // Growing the pool raises the limit by one worker's share.
    w.signal(Signal::SIGTTIN);
    wait_until("six reserved after SIGTTIN", DEADLINE, || {
        hlen_unacked(&redis) == 6 && llen(&redis, "celery") == 4
    });
    wait_until("the grow to be logged", DEADLINE, || {
        w.stderr().contains("concurrency +1: 3 workers")
    });
    w.signal(Signal::SIGTTOU);
    wait_until("the shrink to be logged", DEADLINE, || {
        w.stderr().contains("concurrency -1: 2 workers")
    });
    w.signal(Signal::SIGQUIT);
    w.wait_timeout(DEADLINE)
        .unwrap_or_else(|| panic!("the worker did not exit:\n{}", w.stderr()));
    assert_eq!(llen(&redis, "celery"), 10, "every message is back");
    assert_eq!(hlen_unacked(&redis), 0);
}

#[test]
fn sighup_reloads_the_plugin_files() {
    let Some((redis, _py)) = celery::celery_or_skip("sighup_reloads_the_plugin_files") else {
        return;
    };
    let url = redis.url();
    let dir = celery::unique_temp_dir("reload");
    let so = dir.join("libreload.so");
    std::fs::copy(common::plugin("reload-a"), &so).unwrap();
    let mut w = celery::spawn_worker(["worker", so.to_str().unwrap(), "--broker", &url, "-c", "1"]);
    assert_eq!(
        py(
            &url,
            "print(json.dumps(app.send_task('reload.version').get(timeout=60)))"
        ),
        "1.0.0"
    );
    // Replace the file the way a deploy does: a new file renamed over it.
    let next = dir.join("libreload.so.new");
    std::fs::copy(common::plugin("reload-b"), &next).unwrap();
    std::fs::rename(&next, &so).unwrap();
    w.signal(Signal::SIGHUP);
    let v = py(
        &url,
        &format!(
            "{CALL}
end = time.time() + 60
v = None
while time.time() < end:
    v = app.send_task('reload.version').get(timeout=60)
    if v == '2.0.0':
        break
print(json.dumps({{'version': v, 'gone': call('reload.square', [3]), 'double': call('reload.double', [4])}}))"
        ),
    );
    assert_eq!(v["version"], "2.0.0", "{v}\n{}", w.stderr());
    assert_eq!(
        v["gone"]["type"], "NotRegistered",
        "a task gone after the reload: {v}"
    );
    assert_eq!(v["double"], json!({"ok": 8}));
    w.signal(Signal::SIGTERM);
    assert_eq!(w.wait_timeout(DEADLINE).and_then(|s| s.code()), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn json_log_format_startup_line_names_broker_queues_plugins_tasks() {
    let Some(redis) =
        celery::redis_or_skip("json_log_format_startup_line_names_broker_queues_plugins_tasks")
    else {
        return;
    };
    // The password in the URL never reaches the log.
    let url = format!("redis://:s3cret@127.0.0.1:{}/0", redis.port());
    redis.cmd(&["CONFIG", "SET", "requirepass", "s3cret"]);
    let w = worker(&url, &["-Q", "a,b", "--log-format", "json"]);
    let line = w
        .stderr()
        .lines()
        .find(|l| l.contains("ready"))
        .unwrap()
        .to_string();
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(
        v["broker"],
        format!("redis://:***@127.0.0.1:{}/0", redis.port())
    );
    assert!(!line.contains("s3cret"), "{line}");
    assert_eq!(v["queues"], json!(["a", "b"]));
    let plugins: Vec<&str> = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(plugins, ["math", "faults", "hostile"]);
    let tasks = v["tasks"].as_array().unwrap();
    assert!(tasks.contains(&json!("math.square")) && tasks.contains(&json!("fib")));
    assert!(
        !tasks.contains(&json!("square")),
        "`square` is in two plugins: only `plugin.square` names it"
    );
}

#[test]
fn a_python_workers_sweeper_restores_a_dead_hosts_message() {
    let Some((redis, _py)) =
        celery::celery_or_skip("a_python_workers_sweeper_restores_a_dead_hosts_message")
    else {
        return;
    };
    let url = redis.url();
    let mut a = worker(&url, &["-c", "1", "--visibility-timeout", "2s"]);
    let id = send(&url, "hostile.nap", json!([600000]));
    wait_until("the job to be reserved", DEADLINE, || {
        hlen_unacked(&redis) == 1
    });
    a.kill();
    // kombu's own restore (what a Python worker's sweeper runs) reads our
    // unacked entry and puts the message back on its queue. Our score is
    // the end of the host's lease (now + 2 s, whole seconds rounded up: at
    // most 3 s ahead); a visibility timeout of -5 s makes it stale at once.
    let v = py(
        &url,
        "with app.connection() as conn:\n\
         \x20   ch = conn.default_channel\n\
         \x20   ch.visibility_timeout = -5\n\
         \x20   ch.qos.restore_visible(num=100, interval=1)\n\
         print(json.dumps(1))",
    );
    assert_eq!(v, 1);
    assert_eq!(hlen_unacked(&redis), 0);
    let back = redis.list_json("celery");
    assert_eq!(back.len(), 1);
    assert_eq!(back[0]["headers"]["id"], json!(id));
    assert_eq!(back[0]["headers"]["redelivered"], true);
}

#[test]
fn unix_socket_broker_and_a_separate_result_backend() {
    let Some((redis, _py)) =
        celery::celery_or_skip("unix_socket_broker_and_a_separate_result_backend")
    else {
        return;
    };
    let sock = redis.socket_path().display().to_string();
    let broker = format!("redis+unix://{sock}");
    let backend = redis.url_db(1);
    let _w = worker(&broker, &["--result-backend", &backend]);
    // kombu spells a unix socket broker redis+socket://.
    let v = celery::python_json(
        &format!(
            "import json\nfrom celery import Celery\n\
             app = Celery('t', broker={}, backend={})\n\
             print(json.dumps(app.send_task('math.square', args=[12]).get(timeout=60)))",
            json!(format!("redis+socket://{sock}")),
            json!(backend)
        ),
        &[],
    );
    assert_eq!(v, 144);
    assert_eq!(redis.keys("celery-task-meta-*").len(), 0, "not in db 0");
    let mut c = redis.conn();
    c.cmd(&["SELECT", "1"]);
    assert_eq!(c.cmd(&["KEYS", "celery-task-meta-*"]).array().len(), 1);
    wait_until("the ack", DEADLINE, || hlen_unacked(&redis) == 0);
}

#[test]
fn priority_lists_are_popped_in_kombus_order() {
    let Some((redis, _py)) = celery::celery_or_skip("priority_lists_are_popped_in_kombus_order")
    else {
        return;
    };
    let url = redis.url();
    let dir = celery::unique_temp_dir("priority");
    let log = dir.join("order.log");
    let path = json!(log.display().to_string());
    // Queued before any worker runs: 9 (lowest on Redis), 5, 0.
    py(
        &url,
        &format!(
            "for p in [9, 5, 0]:\n    app.send_task('hostile.append_line', args=[{path}, 'p%d' % p, 0], priority=p)\nprint(1)"
        ),
    );
    assert_eq!(llen(&redis, "celery\x06\x169"), 1);
    assert_eq!(llen(&redis, "celery\x06\x163"), 1);
    let _w = worker(&url, &["-c", "1"]);
    wait_until("three runs", DEADLINE, || lines(&log).len() == 3);
    assert_eq!(lines(&log), ["p0", "p5", "p9"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rediss_tls_broker_with_a_private_ca() {
    if celery::python_or_skip("rediss_tls_broker_with_a_private_ca").is_none() {
        return;
    }
    let Some((redis, url)) = celery::tls_redis_or_skip("rediss_tls_broker_with_a_private_ca")
    else {
        return;
    };
    let _w = worker(&url, &["-c", "1"]);
    let v = py(
        &url,
        "print(json.dumps(app.send_task('math.square', args=[7]).get(timeout=60)))",
    );
    assert_eq!(v, 49);
    // Through the plain port: the ack is there.
    wait_until("the ack", DEADLINE, || hlen_unacked(&redis) == 0);
    // Without the CA the certificate is refused: the worker never gets ready.
    let bad = url.split('?').next().unwrap().to_string();
    let mut cmd = common::host_command();
    cmd.args(["worker", &common::plugin_str("math"), "--broker", &bad]);
    let mut w = celery::spawn_until(cmd, "cannot reach the broker", Duration::from_secs(60));
    assert!(!w.stderr().contains("ready"), "{}", w.stderr());
    w.signal(Signal::SIGTERM);
    assert_eq!(w.wait_timeout(DEADLINE).and_then(|s| s.code()), Some(0));
}

#[test]
fn a_warm_shutdown_returns_held_eta_messages_at_once() {
    let Some((redis, _py)) =
        celery::celery_or_skip("a_warm_shutdown_returns_held_eta_messages_at_once")
    else {
        return;
    };
    let url = redis.url();
    let mut w = worker(&url, &["-c", "1", "--visibility-timeout", "1h"]);
    let id = py(
        &url,
        "print(json.dumps(app.send_task('math.square', args=[3], countdown=3600).id))",
    );
    wait_until("the eta message to be held", DEADLINE, || {
        hlen_unacked(&redis) == 1 && llen(&redis, "celery") == 0
    });
    w.signal(Signal::SIGTERM);
    let status = w
        .wait_timeout(DEADLINE)
        .unwrap_or_else(|| panic!("the worker did not exit:\n{}", w.stderr()));
    assert_eq!(status.code(), Some(0));
    assert_eq!(hlen_unacked(&redis), 0);
    let back = redis.list_json("celery");
    assert_eq!(back.len(), 1, "the held message is back in its queue");
    assert_eq!(back[0]["headers"]["id"], json!(id.as_str().unwrap()));
    assert!(back[0]["headers"]["eta"].is_string(), "with its eta");
    assert!(redis.task_meta(id.as_str().unwrap()).is_none());
}

#[test]
fn odd_list_elements_neither_stop_nor_confuse_the_worker() {
    let Some((redis, _py)) =
        celery::celery_or_skip("odd_list_elements_neither_stop_nor_confuse_the_worker")
    else {
        return;
    };
    let url = redis.url();
    // Not JSON at all, a JSON value that is no envelope, and a message
    // whose custom headers repeat kombu's key names (the reserve script
    // then decodes it in full instead of taking its shortcut).
    redis.cmd(&["LPUSH", "celery", "garbage"]);
    redis.cmd(&["LPUSH", "celery", "[1, 2, 3]"]);
    let w = worker(&url, &["-c", "1"]);
    let v = py(
        &url,
        "r = app.send_task('math.square', args=[6], headers={'routing_key': 'elsewhere', 'exchange': 'x', 'delivery_tag': 'bogus'})\nprint(json.dumps(r.get(timeout=60)))",
    );
    assert_eq!(v, 36);
    wait_until("nothing left unacked", DEADLINE, || {
        hlen_unacked(&redis) == 0 && llen(&redis, "celery") == 0
    });
    wait_until("the dropped element to be logged", DEADLINE, || {
        w.stderr().contains("not a message")
    });
}

#[test]
fn ignore_result_stores_nothing_but_acks() {
    let Some((redis, _py)) = celery::celery_or_skip("ignore_result_stores_nothing_but_acks") else {
        return;
    };
    let url = redis.url();
    let dir = celery::unique_temp_dir("ignore-result");
    let log = dir.join("runs.log");
    let _w = worker(&url, &["-c", "1"]);
    let id = py(
        &url,
        &format!(
            "print(json.dumps(app.send_task('hostile.append_line', args=[{}, 'ran', 0], ignore_result=True).id))",
            json!(log.display().to_string())
        ),
    );
    wait_until("the job to run and be acked", DEADLINE, || {
        lines(&log).len() == 1 && hlen_unacked(&redis) == 0 && llen(&redis, "celery") == 0
    });
    assert!(
        redis.task_meta(id.as_str().unwrap()).is_none(),
        "no result stored"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_result_key_of_another_type_is_overwritten_not_fatal() {
    let Some((redis, _py)) =
        celery::celery_or_skip("a_result_key_of_another_type_is_overwritten_not_fatal")
    else {
        return;
    };
    let url = redis.url();
    redis.cmd(&["RPUSH", "celery-task-meta-poisoned", "not a result"]);
    let _w = worker(&url, &["-c", "1"]);
    let v = py(
        &url,
        // One worker runs them in order: once b is stored, a's result has
        // replaced the poisoned key (reading it earlier would make the
        // *client* fail on the wrong type, which is not what is tested).
        "a = app.send_task('math.square', args=[3], task_id='poisoned')\n\
         b = app.send_task('math.square', args=[4])\n\
         rb = b.get(timeout=60)\n\
         print(json.dumps([a.get(timeout=60), rb]))",
    );
    assert_eq!(v, json!([9, 16]));
    wait_until("nothing left unacked", DEADLINE, || {
        hlen_unacked(&redis) == 0
    });
}

/// A kombu envelope (as Celery's `send_task` writes it) of task `id`.
fn kombu_envelope(id: &str) -> String {
    json!({
        "body": "W1sxLCAyXSwge30sIHt9XQ==",
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": "math.add", "id": id, "root_id": id},
        "properties": {
            "correlation_id": id,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "celery"},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": "t"
        }
    })
    .to_string()
}

#[test]
fn k26_finish_reserve_acks_stores_then_reserves_in_one_call() {
    use billiard_host::celery::transport::redis::{Finish, Finished, Held, RedisBroker, RunMarks};
    let Some(redis) =
        celery::redis_or_skip("k26_finish_reserve_acks_stores_then_reserves_in_one_call")
    else {
        return;
    };
    for id in ["a", "b", "c"] {
        redis.cmd(&["LPUSH", "celery", &kombu_envelope(id)]);
    }
    let lease = Duration::from_secs(60);
    let mut b = RedisBroker::new(&redis.url(), vec!["celery".into()]).unwrap();
    let first = b.reserve(1, lease, &RunMarks::default()).unwrap();
    assert_eq!(first.len(), 1);
    let meta = r#"{"status": "SUCCESS", "result": 3, "task_id": "a"}"#;
    let fin = |tag: &str, id: &str| Finish {
        tag: tag.to_string(),
        result: Some((format!("celery-task-meta-{id}"), meta.to_string())),
        send: Vec::new(),
    };
    let marks = RunMarks {
        count: 2,
        ttl_s: 100,
        who: "me, running it since now",
    };
    let (done, got) = b
        .finish_reserve(&[fin(&first[0].tag, "a")], 3600, false, 2, lease, &marks)
        .unwrap();
    let held = Finished {
        stored: true,
        held: Held::Held,
        unsent: 0,
    };
    assert_eq!(done, vec![held]);
    assert_eq!(redis.cmd(&["GET", "celery-task-meta-a"]).text(), meta);
    assert!(redis.cmd(&["TTL", "celery-task-meta-a"]).int() > 0);
    let got = got.unwrap();
    let ids: Vec<String> = got
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.raw).unwrap()["headers"]["id"].to_string())
        .collect();
    assert_eq!(ids, ["\"b\"", "\"c\""], "the oldest first");
    assert!(got.iter().all(|r| r.marked && r.queue == "celery"));
    // Acked: the first reservation's records are gone; the new ones are
    // kombu's `[envelope, exchange, routing_key]`, with a lease and a mark.
    assert_eq!(hlen_unacked(&redis), 2);
    assert_eq!(zcard_index(&redis), 2);
    assert_eq!(redis.cmd(&["ZCARD", "billiard-host:leases"]).int(), 2);
    for (r, id) in got.iter().zip(["b", "c"]) {
        let entry: Value =
            serde_json::from_str(&redis.cmd(&["HGET", "unacked", &r.tag]).text()).unwrap();
        let raw: Value = serde_json::from_slice(&r.raw).unwrap();
        assert_eq!(entry, json!([raw, "", "celery"]));
        assert_eq!(
            redis.cmd(&["HGET", "billiard-host:running", &r.tag]).text(),
            format!("100\n{id}\nme, running it since now")
        );
    }
    assert_eq!(llen(&redis, "celery"), 0);
    // Nothing left to reserve: the finish alone.
    let (done, more) = b
        .finish_reserve(&[fin(&got[0].tag, "b")], 3600, false, 1, lease, &marks)
        .unwrap();
    assert_eq!(done, vec![held]);
    assert_eq!(more.unwrap(), Vec::new());
    assert_eq!(
        redis
            .cmd(&["HEXISTS", "billiard-host:running", &got[0].tag])
            .int(),
        0
    );
    // A queue key Redis refuses to pop: the finish is done all the same,
    // the reserve's refusal comes apart.
    redis.cmd(&["SET", "celery", "not a list"]);
    let (done, refused) = b
        .finish_reserve(&[fin(&got[1].tag, "c")], 3600, false, 1, lease, &marks)
        .unwrap();
    assert_eq!(done, vec![held]);
    let e = refused.unwrap_err().to_string();
    assert!(e.contains("WRONGTYPE"), "{e}");
    assert_eq!(hlen_unacked(&redis), 0);
    assert_eq!(zcard_index(&redis), 0);
    assert_eq!(redis.cmd(&["ZCARD", "billiard-host:leases"]).int(), 0);
}

#[test]
fn k26_prefetch_x1_never_holds_more_messages_than_slots_while_a_long_task_runs() {
    let Some((redis, _py)) = celery::celery_or_skip(
        "k26_prefetch_x1_never_holds_more_messages_than_slots_while_a_long_task_runs",
    ) else {
        return;
    };
    let url = redis.url();
    let mut w = worker(&url, &["-c", "2"]);
    let long = send(&url, "hostile.nap", json!([600000]));
    wait_until("the long task to be reserved", DEADLINE, || {
        hlen_unacked(&redis) == 1
    });
    // 40 short tasks through the other slot (each finish call reserves
    // the next for it), then three long ones, which must wait in the list.
    let ids = py(
        &url,
        "ids = [app.send_task('math.add', args=[i, 1]).id for i in range(40)]\n\
         ids += [app.send_task('hostile.nap', args=[600000]).id for i in range(3)]\n\
         print(json.dumps(ids))",
    );
    let ids: Vec<String> = ids
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mut most = 0;
    wait_until("the short tasks' results", DEADLINE, || {
        most = most.max(hlen_unacked(&redis));
        ids[..40].iter().all(|id| redis.task_meta(id).is_some())
    });
    wait_until("two long tasks held, two queued", DEADLINE, || {
        most = most.max(hlen_unacked(&redis));
        hlen_unacked(&redis) == 2 && llen(&redis, "celery") == 2
    });
    assert!(most <= 2, "{most} messages reserved by two slots at x1");
    for (i, id) in ids[..40].iter().enumerate() {
        assert_eq!(redis.task_meta(id).unwrap()["result"], json!(i + 1));
    }
    assert!(redis.task_meta(&long).is_none());
    w.signal(Signal::SIGQUIT);
    w.wait_timeout(DEADLINE)
        .unwrap_or_else(|| panic!("the worker did not exit:\n{}", w.stderr()));
    assert_eq!(llen(&redis, "celery"), 4, "every long one is back");
    assert_eq!(hlen_unacked(&redis), 0);
}
