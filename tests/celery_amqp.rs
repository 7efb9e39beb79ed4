//! The worker on RabbitMQ (issue 25): a private RabbitMQ node per test
//! (its own data dir, node name, ports and epmd, stopped by pid), Redis as
//! the result backend, real Python Celery 5.7 clients and tools.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::celery::{self, RabbitMqServer, RedisServer};
use serde_json::{json, Value};

/// A Python preamble: `app`, a Celery app on `broker` with `backend` as
/// result backend, JSON only.
fn py_app(broker: &str, backend: &str) -> String {
    let b = serde_json::to_string(broker).expect("a string serializes");
    let r = serde_json::to_string(backend).expect("a string serializes");
    format!(
        r#"import json, sys, time
from celery import Celery, chain
app = Celery("billiard_amqp", broker={b}, backend={r})
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    broker_connection_retry_on_startup=True,
)
"#
    )
}

fn node(tag: &str) -> String {
    format!("{tag}-{}@amqp-test", std::process::id())
}

fn worker(
    rabbit: &RabbitMqServer,
    redis: &RedisServer,
    name: &str,
    extra: &[&str],
) -> celery::Worker {
    let math = common::plugin_str("math");
    let faults = common::plugin_str("faults");
    let (b, r) = (rabbit.url(), redis.url());
    let mut args = vec![
        "worker",
        &math,
        "--plugin",
        &faults,
        "--broker",
        &b,
        "--result-backend",
        &r,
        "-n",
        name,
    ];
    args.extend_from_slice(extra);
    celery::spawn_worker(args)
}

/// `name messages_ready messages_unacknowledged` of every queue.
fn queues(rabbit: &RabbitMqServer) -> Vec<(String, u64, u64)> {
    rabbit
        .ctl(&[
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [n, r, u] => Some((n.to_string(), r.parse().ok()?, u.parse().ok()?)),
                _ => None,
            }
        })
        .collect()
}

#[test]
fn amqp_python_client_gets_results_through_the_redis_backend() {
    let test = "amqp_python_client_gets_results_through_the_redis_backend";
    let Some((rabbit, redis, _py)) = celery::rabbitmq_or_skip(test) else {
        return;
    };
    let w = worker(&rabbit, &redis, &node("results"), &["-c", "2"]);
    let script = format!(
        "{}\n\
rs = [app.send_task('math.square', args=[i]) for i in range(20)]\n\
got = [r.get(timeout=60) for r in rs]\n\
c = chain(app.signature('math.square', args=[2]), app.signature('math.square')).apply_async()\n\
failed = app.send_task('faults.fail', args=['no']).get(timeout=60, propagate=False)\n\
print(json.dumps({{'squares': got, 'chain': c.get(timeout=60), 'failed': str(failed)}}))",
        py_app(&rabbit.url(), &redis.url())
    );
    let v = celery::python_json(&script, &[]);
    let squares: Vec<i64> = (0..20).map(|i| i * i).collect();
    assert_eq!(v["squares"], json!(squares), "{}", w.stderr());
    assert_eq!(v["chain"], json!(16), "{}", w.stderr());
    assert_eq!(v["failed"], json!("no"), "{}", w.stderr());
    // Every message acked once its result was stored; the queue is
    // Celery's (the Python client declared it too, with no
    // PRECONDITION_FAILED on either side).
    let q = queues(&rabbit);
    assert!(
        q.iter()
            .any(|(n, r, u)| n == "celery" && *r == 0 && *u == 0),
        "queues: {q:?}\n{}",
        w.stderr()
    );
    let log = w.stderr();
    assert!(!log.contains("PRECONDITION_FAILED"), "{log}");
    assert!(log.contains("amqp://guest:***@127.0.0.1"), "{log}");
}

fn celery_exe(py: &Path) -> PathBuf {
    py.with_file_name("celery")
}

/// `celery -A amqpapp ARGS -j -t 3` (an app dir with `amqpapp.py`).
fn celery_cli(py: &Path, dir: &Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(celery_exe(py));
    cmd.current_dir(dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["-A", "amqpapp"])
        .args(args);
    let out = celery::run_with_timeout(cmd, Duration::from_secs(90));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn amqp_inspect_ping_and_revoke_terminate() {
    let test = "amqp_inspect_ping_and_revoke_terminate";
    let Some((rabbit, redis, py)) = celery::rabbitmq_or_skip(test) else {
        return;
    };
    let name = node("ping");
    let w = worker(&rabbit, &redis, &name, &["-c", "1", "-E"]);
    let dir = celery::unique_temp_dir("amqp-app");
    std::fs::write(dir.join("amqpapp.py"), py_app(&rabbit.url(), &redis.url()))
        .expect("write amqpapp.py");
    let (ok, out, err) = celery_cli(
        &py,
        &dir,
        &["inspect", "ping", "-d", &name, "-j", "-t", "5"],
    );
    assert!(
        ok,
        "inspect ping failed:\n{out}\n{err}\n--- worker\n{}",
        w.stderr()
    );
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_default();
    let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
    assert_eq!(v[&name], json!({"ok": "pong"}), "{out}\n{err}");
    // -E: events on Celery's `celeryev` topic exchange, declared durable
    // as kombu declares it (a Python event receiver's declare matches).
    let exchanges = rabbit.ctl(&[
        "list_exchanges",
        "-q",
        "--no-table-headers",
        "name",
        "type",
        "durable",
    ]);
    assert!(
        exchanges
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["celeryev", "topic", "true"]),
        "{exchanges}\n{}",
        w.stderr()
    );

    // A long task, revoked with terminate: REVOKED in the backend.
    let script = format!(
        "{}\n\
r = app.send_task('faults.sleep_ms', args=[600000])\n\
print(json.dumps(r.id))",
        py_app(&rabbit.url(), &redis.url())
    );
    let id = celery::python_json(&script, &[]);
    let id = id.as_str().unwrap_or_default().to_string();
    celery::wait_until(
        "inspect active to show the sleeping job",
        celery::DEADLINE,
        || {
            let (_, out, _) = celery_cli(
                &py,
                &dir,
                &["inspect", "active", "-d", &name, "-j", "-t", "3"],
            );
            out.contains(&id) && out.contains("worker_pid")
        },
    );
    // Celery 5's CLI form of revoke(id, terminate=True, signal=...).
    let (ok, out, err) = celery_cli(
        &py,
        &dir,
        &[
            "control",
            "terminate",
            "SIGKILL",
            &id,
            "-d",
            &name,
            "-j",
            "-t",
            "5",
        ],
    );
    assert!(ok, "control terminate failed:\n{out}\n{err}");
    assert!(out.contains(&format!("terminate: {id}")), "{out}\n{err}");
    celery::wait_until("REVOKED stored", celery::DEADLINE, || {
        redis
            .task_meta(&id)
            .is_some_and(|m| m["status"] == "REVOKED")
    });
    let _ = std::fs::remove_dir_all(&dir);
}

fn host_timeout(args: &[&str]) -> std::process::Output {
    let mut cmd = common::host_command();
    cmd.args(args);
    celery::run_with_timeout(cmd, Duration::from_secs(120))
}

/// `submit` and `run --broker` on AMQP give what a local `run` gives; an
/// AMQP broker without a result backend is a usage error.
#[test]
fn amqp_submit_wait_and_run_broker_match_local_run() {
    let test = "amqp_submit_wait_and_run_broker_match_local_run";
    let Some((rabbit, redis, _py)) = celery::rabbitmq_or_skip(test) else {
        return;
    };
    let dir = common::scratch(test);
    let jobs = ["[1]", "[2]", "[3]", "[\"x\"]", "[40]"];
    let input = common::lines_file(&dir, "jobs.jsonl", &jobs);
    let math = common::plugin_str("math");
    let local = host_timeout(&[
        "run",
        &math,
        "--task",
        "math.square",
        "--input",
        &input,
        "-q",
    ]);
    let local_lines = common::json_lines(&common::stdout(&local));
    assert_eq!(local_lines.len(), jobs.len(), "{}", common::stderr(&local));

    let w = worker(&rabbit, &redis, &node("submit"), &["-c", "2"]);
    let (b, r) = (rabbit.url(), redis.url());
    let gist = |lines: &[Value]| -> Vec<Value> {
        lines
            .iter()
            .map(|l| match l.get("ok") {
                Some(v) => json!({"index": l["index"], "ok": v}),
                None => json!({"index": l["index"], "error": l["error"]["kind"]}),
            })
            .collect()
    };
    let fleet = host_timeout(&[
        "submit",
        "--broker",
        &b,
        "--result-backend",
        &r,
        "--task",
        "math.square",
        "--input",
        &input,
        "--wait",
        "-q",
    ]);
    assert_eq!(
        gist(&common::json_lines(&common::stdout(&fleet))),
        gist(&local_lines),
        "submit --wait\n{}\n--- worker\n{}",
        common::stderr(&fleet),
        w.stderr()
    );
    assert_eq!(common::exit_code(&fleet), common::exit_code(&local));

    let out = dir.join("fleet.jsonl");
    let fleet = host_timeout(&[
        "run",
        "--broker",
        &b,
        "--result-backend",
        &r,
        "--task",
        "math.square",
        "--input",
        &input,
        "-o",
        out.to_str().unwrap_or_default(),
    ]);
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(
        gist(&common::json_lines(&text)),
        gist(&local_lines),
        "run --broker\n{}",
        common::stderr(&fleet)
    );
    assert_eq!(common::exit_code(&fleet), common::exit_code(&local));

    let no_backend = host_timeout(&[
        "submit",
        "--broker",
        &b,
        "--task",
        "math.square",
        "--args",
        "[1]",
    ]);
    assert_eq!(common::exit_code(&no_backend), 2);
    assert!(
        common::stderr(&no_backend).contains("--result-backend"),
        "{}",
        common::stderr(&no_backend)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Python Celery 5.7 worker on the same vhost (queue `py`, task
/// `py.double`), both sides declaring their queues with
/// `x-max-priority` 10: a chain crosses from ours to it and back, and no
/// declaration is refused (PRECONDITION_FAILED) on either side.
#[test]
fn amqp_a_python_worker_shares_the_vhost_and_a_chain_crosses_them() {
    let test = "amqp_a_python_worker_shares_the_vhost_and_a_chain_crosses_them";
    let Some((rabbit, redis, py)) = celery::rabbitmq_or_skip(test) else {
        return;
    };
    let app = format!(
        "{}app.conf.task_queue_max_priority = 10\n",
        py_app(&rabbit.url(), &redis.url())
    );
    let dir = celery::unique_temp_dir("amqp-pyworker");
    std::fs::write(
        dir.join("pyamqp_tasks.py"),
        format!("{app}\n@app.task(name='py.double')\ndef double(x):\n    return x * 2\n"),
    )
    .expect("write pyamqp_tasks.py");
    let pynode = format!("py-{}@amqp-test", std::process::id());
    let mut cmd = Command::new(&py);
    cmd.args([
        "-m",
        "celery",
        "-A",
        "pyamqp_tasks",
        "worker",
        "-c",
        "1",
        "-Q",
        "py",
    ])
    .args(["--pool", "solo", "--without-gossip", "--without-mingle"])
    .args(["--without-heartbeat", "-l", "info", "-n", &pynode])
    .current_dir(&dir)
    .env("PYTHONDONTWRITEBYTECODE", "1")
    .stdout(std::process::Stdio::null());
    let pyw = celery::spawn_until(cmd, "ready.", Duration::from_secs(90));
    let w = worker(
        &rabbit,
        &redis,
        &node("cross"),
        &["-c", "2", "--queue-max-priority", "10"],
    );
    let script = format!(
        "{app}\n\
sq = lambda *a: app.signature('math.square', args=list(a))\n\
dbl = app.signature('py.double').set(queue='py')\n\
c = chain(sq(3), dbl, app.signature('math.square')).apply_async()\n\
p = app.send_task('math.square', args=[5], priority=7)\n\
print(json.dumps([c.get(timeout=60), p.get(timeout=60)]))"
    );
    let v = celery::python_json(&script, &[]);
    assert_eq!(
        v,
        json!([324, 25]),
        "--- ours\n{}\n--- python\n{}",
        w.stderr(),
        pyw.stderr()
    );
    for log in [w.stderr(), pyw.stderr()] {
        assert!(!log.contains("PRECONDITION_FAILED"), "{log}");
    }
    let q = queues(&rabbit);
    for name in ["celery", "py"] {
        assert!(
            q.iter().any(|(n, r, u)| n == name && *r == 0 && *u == 0),
            "{name}: {q:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A worker whose finisher logs each task's end (`task NAME[ID]
/// succeeded`), to count the runs of each task.
fn counting_worker(
    rabbit: &RabbitMqServer,
    redis: &RedisServer,
    name: &str,
    extra: &[&str],
) -> celery::Worker {
    let faults = common::plugin_str("faults");
    let (b, r) = (rabbit.url(), redis.url());
    let mut cmd = common::host_command();
    cmd.args([
        "worker",
        &faults,
        "--broker",
        &b,
        "--result-backend",
        &r,
        "-n",
        name,
    ])
    .args(extra)
    .env("BILLIARD_LOG", "info,billiard_host::celery::worker=debug");
    celery::spawn_worker_cmd(cmd)
}

/// Sends `n` × `faults.sleep_ms [ms]` with `submit` (no wait); their ids.
fn submit_sleeps(rabbit: &RabbitMqServer, redis: &RedisServer, n: usize, ms: u64) -> Vec<String> {
    let dir = celery::unique_temp_dir("amqp-batch");
    let line = format!("[{ms}]");
    let jobs: Vec<&str> = (0..n).map(|_| line.as_str()).collect();
    let input = common::lines_file(&dir, "jobs.jsonl", &jobs);
    let (b, r) = (rabbit.url(), redis.url());
    let out = host_timeout(&[
        "submit",
        "--broker",
        &b,
        "--result-backend",
        &r,
        "--task",
        "faults.sleep_ms",
        "--input",
        &input,
        "-q",
    ]);
    assert_eq!(common::exit_code(&out), 0, "{}", common::stderr(&out));
    let _ = std::fs::remove_dir_all(&dir);
    common::json_lines(&common::stdout(&out))
        .iter()
        .filter_map(|l| l["id"].as_str().map(str::to_string))
        .collect()
}

fn succeeded(redis: &RedisServer, id: &str) -> bool {
    redis
        .task_meta(id)
        .is_some_and(|m| m["status"] == "SUCCESS")
}

fn runs(log: &str, id: &str) -> usize {
    log.matches(&format!("task faults.sleep_ms[{id}] succeeded"))
        .count()
}

/// kill -9 of our host mid-job: RabbitMQ requeues the delivery of the
/// dead connection, another host runs it, once.
#[test]
fn amqp_a_host_killed_mid_job_has_its_message_completed_once_elsewhere() {
    let test = "amqp_a_host_killed_mid_job_has_its_message_completed_once_elsewhere";
    let Some((rabbit, redis, _py)) = celery::rabbitmq_or_skip(test) else {
        return;
    };
    let mut a = counting_worker(&rabbit, &redis, &node("killed"), &["-c", "1"]);
    let ids = submit_sleeps(&rabbit, &redis, 1, 4000);
    let id = ids[0].clone();
    celery::wait_until("host A to hold the message", celery::DEADLINE, || {
        queues(&rabbit)
            .iter()
            .any(|(n, r, u)| n == "celery" && *r == 0 && *u == 1)
    });
    a.kill();
    let b = counting_worker(&rabbit, &redis, &node("survivor"), &["-c", "1"]);
    celery::wait_until("the task to succeed on host B", celery::DEADLINE, || {
        succeeded(&redis, &id)
    });
    assert_eq!(runs(&b.stderr(), &id), 1, "{}", b.stderr());
    assert_eq!(runs(&a.stderr(), &id), 0, "{}", a.stderr());
    celery::wait_until("the message acked", celery::DEADLINE, || {
        queues(&rabbit)
            .iter()
            .any(|(n, r, u)| n == "celery" && *r == 0 && *u == 0)
    });
}

/// RabbitMQ killed and restarted mid-batch: the worker reconnects with
/// backoff, running jobs carry on, and every job of the batch succeeds,
/// each run exactly once (the redeliveries of jobs that were running are
/// not run again).
#[test]
fn amqp_rabbitmq_restarted_mid_batch_every_job_completes_exactly_once() {
    let test = "amqp_rabbitmq_restarted_mid_batch_every_job_completes_exactly_once";
    let Some((mut rabbit, redis, _py)) = celery::rabbitmq_or_skip(test) else {
        return;
    };
    let w = counting_worker(&rabbit, &redis, &node("restart"), &["-c", "4"]);
    let ids = submit_sleeps(&rabbit, &redis, 40, 300);
    celery::wait_until("some results", celery::DEADLINE, || {
        ids.iter().filter(|id| succeeded(&redis, id)).count() >= 8
    });
    rabbit.restart();
    celery::wait_until("every result", Duration::from_secs(180), || {
        ids.iter().all(|id| succeeded(&redis, id))
    });
    let log = w.stderr();
    for id in &ids {
        assert_eq!(
            runs(&log, id),
            1,
            "task {id} ran {} times:\n{log}",
            runs(&log, id)
        );
    }
    celery::wait_until("every message acked", celery::DEADLINE, || {
        queues(&rabbit)
            .iter()
            .any(|(n, r, u)| n == "celery" && *r == 0 && *u == 0)
    });
}

/// Quorum queues: `--quorum-queues` declares `x-queue-type: quorum` as a
/// Celery 5.7 app with `task_default_queue_type = "quorum"` does (no
/// PRECONDITION_FAILED either way round), and consumes with a
/// per-consumer prefetch (quorum queues have no channel-wide one).
#[test]
fn amqp_quorum_queues_are_declared_as_celery_declares_them() {
    let test = "amqp_quorum_queues_are_declared_as_celery_declares_them";
    let Some((rabbit, redis, _py)) = celery::rabbitmq_or_skip(test) else {
        return;
    };
    let w = worker(
        &rabbit,
        &redis,
        &node("quorum"),
        &["-c", "2", "--quorum-queues"],
    );
    let script = format!(
        "{}app.conf.task_default_queue_type = 'quorum'\n\
rs = [app.send_task('math.square', args=[i]) for i in range(5)]\n\
print(json.dumps([r.get(timeout=60) for r in rs]))",
        py_app(&rabbit.url(), &redis.url())
    );
    let v = celery::python_json(&script, &[]);
    assert_eq!(v, json!([0, 1, 4, 9, 16]), "{}", w.stderr());
    let types = rabbit.ctl(&["list_queues", "-q", "--no-table-headers", "name", "type"]);
    assert!(
        types
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["celery", "quorum"]),
        "{types}"
    );
    assert!(
        !w.stderr().contains("PRECONDITION_FAILED"),
        "{}",
        w.stderr()
    );
}

/// An AMQP broker without a Redis result backend cannot work: exit 2 at
/// start, saying what to add (no server needed).
#[test]
fn amqp_without_a_redis_result_backend_is_a_configuration_error() {
    let math = common::plugin_str("math");
    for extra in [&[][..], &["--result-backend", "amqp://127.0.0.1:1//"][..]] {
        let mut args = vec![
            "worker",
            &math,
            "--broker",
            "amqp://guest:guest@127.0.0.1:1//",
        ];
        args.extend_from_slice(extra);
        let out = host_timeout(&args);
        let stderr = common::stderr(&out);
        assert_eq!(common::exit_code(&out), 2, "{args:?}: {stderr}");
        assert!(
            stderr.contains("--result-backend redis://"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("guest:guest"), "{stderr}");
    }
}

/// RabbitMQ's consumer_timeout: a job whose time limit is longer than
/// `--consumer-timeout` is refused at receipt with a FAILURE saying so
/// (not a channel closed under it and a second run); a shorter one runs.
#[test]
fn amqp_a_time_limit_past_the_consumer_timeout_is_refused_at_receipt() {
    let test = "amqp_a_time_limit_past_the_consumer_timeout_is_refused_at_receipt";
    let Some((rabbit, redis, _py)) = celery::rabbitmq_or_skip(test) else {
        return;
    };
    let w = worker(
        &rabbit,
        &redis,
        &node("ctimeout"),
        &["-c", "1", "--consumer-timeout", "10s"],
    );
    let script = format!(
        "{}\n\
long = app.send_task('math.square', args=[3], time_limit=60)\n\
short = app.send_task('math.square', args=[4], time_limit=5)\n\
long.get(timeout=60, propagate=False)\n\
print(json.dumps([long.state, str(long.result), short.get(timeout=60)]))",
        py_app(&rabbit.url(), &redis.url())
    );
    let v = celery::python_json(&script, &[]);
    assert_eq!(v[0], json!("FAILURE"), "{v}\n{}", w.stderr());
    let why = v[1].as_str().unwrap_or_default();
    assert!(
        why.contains("consumer_timeout") && why.contains("1m") && why.contains("10s"),
        "{why}"
    );
    assert_eq!(v[2], json!(16), "{v}");
}

/// Countdown messages are held by the worker, as on Redis, and do not use
/// up the channel's prefetch: with one slot and two messages held for 60s,
/// a message sent after them runs at once.
#[test]
fn amqp_held_countdown_messages_do_not_use_up_the_prefetch() {
    let test = "amqp_held_countdown_messages_do_not_use_up_the_prefetch";
    let Some((rabbit, redis, _py)) = celery::rabbitmq_or_skip(test) else {
        return;
    };
    let w = worker(&rabbit, &redis, &node("eta"), &["-c", "1"]);
    let script = format!(
        "{}\n\
later = [app.send_task('math.square', args=[i], countdown=60) for i in (2, 3)]\n\
now = app.send_task('math.square', args=[4])\n\
got = now.get(timeout=45)\n\
print(json.dumps([got, [r.state for r in later]]))",
        py_app(&rabbit.url(), &redis.url())
    );
    let v = celery::python_json(&script, &[]);
    assert_eq!(v, json!([16, ["PENDING", "PENDING"]]), "{}", w.stderr());
    // Both held ones are unacked in the channel, none waits in the queue.
    let q = queues(&rabbit);
    assert!(
        q.iter()
            .any(|(n, r, u)| n == "celery" && *r == 0 && *u == 2),
        "{q:?}"
    );
}
