//! The worker on RabbitMQ (issue 25): a private RabbitMQ node per test
//! (its own data dir, node name, ports and epmd, stopped by pid), Redis or
//! `rpc://` as the result backend, real Python Celery 5.7 clients and tools.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::celery::{self, AmqpRig};
use serde_json::{json, Value};

#[test]
fn amqp_python_client_gets_results_through_the_redis_backend() {
    let test = "amqp_python_client_gets_results_through_the_redis_backend";
    let Some(rig) = AmqpRig::start_or_skip(test) else {
        return;
    };
    let w = rig.worker("results", &["-c", "2"]);
    let script = format!(
        "{}\n\
rs = [app.send_task('math.square', args=[i]) for i in range(20)]\n\
got = [r.get(timeout=60) for r in rs]\n\
c = chain(app.signature('math.square', args=[2]), app.signature('math.square')).apply_async()\n\
failed = app.send_task('faults.fail', args=['no']).get(timeout=60, propagate=False)\n\
print(json.dumps({{'squares': got, 'chain': c.get(timeout=60), 'failed': str(failed)}}))",
        rig.app()
    );
    let v = celery::python_json(&script, &[]);
    let squares: Vec<i64> = (0..20).map(|i| i * i).collect();
    assert_eq!(v["squares"], json!(squares), "{}", w.stderr());
    assert_eq!(v["chain"], json!(16), "{}", w.stderr());
    assert_eq!(v["failed"], json!("no"), "{}", w.stderr());
    // Every message acked once its result was stored; the queue is
    // Celery's (the Python client declared it too, with no
    // PRECONDITION_FAILED on either side).
    assert!(
        rig.rabbit.queue_holds("celery", 0, 0),
        "queues: {:?}\n{}",
        rig.rabbit.queues(),
        w.stderr()
    );
    let log = w.stderr();
    assert!(!log.contains("PRECONDITION_FAILED"), "{log}");
    assert!(log.contains("amqp://guest:***@127.0.0.1"), "{log}");
}

#[test]
fn amqp_inspect_ping_and_revoke_terminate() {
    let test = "amqp_inspect_ping_and_revoke_terminate";
    let Some(rig) = AmqpRig::start_or_skip(test) else {
        return;
    };
    let name = AmqpRig::node("ping");
    let w = celery::amqp_worker(&rig.rabbit, &rig.redis.url(), &name, &["-c", "1", "-E"]);
    let dir = celery::unique_temp_dir("amqp-app");
    std::fs::write(dir.join("amqpapp.py"), rig.app()).expect("write amqpapp.py");
    let (ok, out, err) = celery::celery_cli_in(
        &rig.py,
        &dir,
        "amqpapp",
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
    let exchanges = rig.rabbit.ctl(&[
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
        rig.app()
    );
    let id = celery::python_json(&script, &[]);
    let id = id.as_str().unwrap_or_default().to_string();
    celery::wait_until(
        "inspect active to show the sleeping job",
        celery::DEADLINE,
        || {
            let (_, out, _) = celery::celery_cli_in(
                &rig.py,
                &dir,
                "amqpapp",
                &["inspect", "active", "-d", &name, "-j", "-t", "3"],
            );
            out.contains(&id) && out.contains("worker_pid")
        },
    );
    // Celery 5's CLI form of revoke(id, terminate=True, signal=...).
    let (ok, out, err) = celery::celery_cli_in(
        &rig.py,
        &dir,
        "amqpapp",
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
        rig.redis
            .task_meta(&id)
            .is_some_and(|m| m["status"] == "REVOKED")
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// `submit` and `run --broker` on AMQP give what a local `run` gives; an
/// AMQP broker without a result backend is a usage error.
#[test]
fn amqp_submit_wait_and_run_broker_match_local_run() {
    let test = "amqp_submit_wait_and_run_broker_match_local_run";
    let Some(rig) = AmqpRig::start_or_skip(test) else {
        return;
    };
    let dir = common::scratch(test);
    let jobs = ["[1]", "[2]", "[3]", "[\"x\"]", "[40]"];
    let input = common::lines_file(&dir, "jobs.jsonl", &jobs);
    let math = common::plugin_str("math");
    let local = celery::host_timeout(&[
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

    let w = rig.worker("submit", &["-c", "2"]);
    let (b, r) = (rig.rabbit.url(), rig.redis.url());
    let fleet = celery::host_timeout(&[
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
        celery::gist(&common::json_lines(&common::stdout(&fleet))),
        celery::gist(&local_lines),
        "submit --wait\n{}\n--- worker\n{}",
        common::stderr(&fleet),
        w.stderr()
    );
    assert_eq!(common::exit_code(&fleet), common::exit_code(&local));

    let out = dir.join("fleet.jsonl");
    let fleet = celery::host_timeout(&[
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
        celery::gist(&common::json_lines(&text)),
        celery::gist(&local_lines),
        "run --broker\n{}",
        common::stderr(&fleet)
    );
    assert_eq!(common::exit_code(&fleet), common::exit_code(&local));

    let no_backend = celery::host_timeout(&[
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
    let Some(rig) = AmqpRig::start_or_skip(test) else {
        return;
    };
    let app = format!("{}app.conf.task_queue_max_priority = 10\n", rig.app());
    let dir = celery::unique_temp_dir("amqp-pyworker");
    std::fs::write(
        dir.join("pyamqp_tasks.py"),
        format!("{app}\n@app.task(name='py.double')\ndef double(x):\n    return x * 2\n"),
    )
    .expect("write pyamqp_tasks.py");
    let pynode = format!("py-{}@amqp-test", std::process::id());
    let mut cmd = Command::new(&rig.py);
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
    let w = rig.worker("cross", &["-c", "2", "--queue-max-priority", "10"]);
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
    for name in ["celery", "py"] {
        assert!(
            rig.rabbit.queue_holds(name, 0, 0),
            "{name}: {:?}",
            rig.rabbit.queues()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends `n` × `faults.sleep_ms [ms]` with `submit` (no wait); their ids.
fn submit_sleeps(rig: &AmqpRig, n: usize, ms: u64) -> Vec<String> {
    let dir = celery::unique_temp_dir("amqp-batch");
    let line = format!("[{ms}]");
    let jobs: Vec<&str> = (0..n).map(|_| line.as_str()).collect();
    let input = common::lines_file(&dir, "jobs.jsonl", &jobs);
    let (b, r) = (rig.rabbit.url(), rig.redis.url());
    let out = celery::host_timeout(&[
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

/// kill -9 of our host mid-job: RabbitMQ requeues the delivery of the
/// dead connection, another host runs it, once.
#[test]
fn amqp_a_host_killed_mid_job_has_its_message_completed_once_elsewhere() {
    let test = "amqp_a_host_killed_mid_job_has_its_message_completed_once_elsewhere";
    let Some(rig) = AmqpRig::start_or_skip(test) else {
        return;
    };
    let mut a = rig.worker("killed", &["-c", "1"]);
    let ids = submit_sleeps(&rig, 1, 4000);
    let id = ids[0].clone();
    celery::wait_until("host A to hold the message", celery::DEADLINE, || {
        rig.rabbit.queue_holds("celery", 0, 1)
    });
    a.kill();
    let b = rig.worker("survivor", &["-c", "1"]);
    celery::wait_until("the task to succeed on host B", celery::DEADLINE, || {
        celery::succeeded(&rig.redis, &id)
    });
    assert_eq!(celery::runs(&b.stderr(), &id), 1, "{}", b.stderr());
    assert_eq!(celery::runs(&a.stderr(), &id), 0, "{}", a.stderr());
    rig.rabbit.wait_settled("celery");
}

/// RabbitMQ killed and restarted mid-batch: the worker reconnects with
/// backoff, running jobs carry on, and every job of the batch succeeds,
/// each run exactly once (the redeliveries of jobs that were running are
/// not run again).
#[test]
fn amqp_rabbitmq_restarted_mid_batch_every_job_completes_exactly_once() {
    let test = "amqp_rabbitmq_restarted_mid_batch_every_job_completes_exactly_once";
    let Some(mut rig) = AmqpRig::start_or_skip(test) else {
        return;
    };
    let w = rig.worker("restart", &["-c", "4"]);
    let ids = submit_sleeps(&rig, 40, 300);
    celery::wait_until("some results", celery::DEADLINE, || {
        ids.iter()
            .filter(|id| celery::succeeded(&rig.redis, id))
            .count()
            >= 8
    });
    rig.rabbit.restart();
    celery::wait_until("every result", Duration::from_secs(180), || {
        ids.iter().all(|id| celery::succeeded(&rig.redis, id))
    });
    let log = w.stderr();
    for id in &ids {
        assert_eq!(
            celery::runs(&log, id),
            1,
            "task {id} ran {} times:\n{log}",
            celery::runs(&log, id)
        );
    }
    rig.rabbit.wait_settled("celery");
}

/// Quorum queues: `--quorum-queues` declares `x-queue-type: quorum` as a
/// Celery 5.7 app with `task_default_queue_type = "quorum"` does (no
/// PRECONDITION_FAILED either way round), and consumes with a
/// per-consumer prefetch (quorum queues have no channel-wide one).
#[test]
fn amqp_quorum_queues_are_declared_as_celery_declares_them() {
    let test = "amqp_quorum_queues_are_declared_as_celery_declares_them";
    let Some(rig) = AmqpRig::start_or_skip(test) else {
        return;
    };
    let w = rig.worker("quorum", &["-c", "2", "--quorum-queues"]);
    let script = format!(
        "{}app.conf.task_default_queue_type = 'quorum'\n\
rs = [app.send_task('math.square', args=[i]) for i in range(5)]\n\
print(json.dumps([r.get(timeout=60) for r in rs]))",
        rig.app()
    );
    let v = celery::python_json(&script, &[]);
    assert_eq!(v, json!([0, 1, 4, 9, 16]), "{}", w.stderr());
    let types = rig
        .rabbit
        .ctl(&["list_queues", "-q", "--no-table-headers", "name", "type"]);
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
        let out = celery::host_timeout(&args);
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
    let Some(rig) = AmqpRig::start_or_skip(test) else {
        return;
    };
    let w = rig.worker("ctimeout", &["-c", "1", "--consumer-timeout", "10s"]);
    let script = format!(
        "{}\n\
long = app.send_task('math.square', args=[3], time_limit=60)\n\
short = app.send_task('math.square', args=[4], time_limit=5)\n\
long.get(timeout=60, propagate=False)\n\
print(json.dumps([long.state, str(long.result), short.get(timeout=60)]))",
        rig.app()
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
    let Some(rig) = AmqpRig::start_or_skip(test) else {
        return;
    };
    let w = rig.worker("eta", &["-c", "1"]);
    let script = format!(
        "{}\n\
later = [app.send_task('math.square', args=[i], countdown=60) for i in (2, 3)]\n\
now = app.send_task('math.square', args=[4])\n\
got = now.get(timeout=45)\n\
print(json.dumps([got, [r.state for r in later]]))",
        rig.app()
    );
    let v = celery::python_json(&script, &[]);
    assert_eq!(v, json!([16, ["PENDING", "PENDING"]]), "{}", w.stderr());
    // Both held ones are unacked in the channel, none waits in the queue.
    assert!(
        rig.rabbit.queue_holds("celery", 0, 2),
        "{:?}",
        rig.rabbit.queues()
    );
}

/// Celery's `rpc://` result backend: a Python 5.7 client with
/// `backend='rpc://'` on `amqp://` gets through `AsyncResult` what our
/// worker publishes to its `reply_to` queue (with `correlation_id` = task
/// id): a PROGRESS state while the task runs, values, a failure (its
/// exception type and message), a group's results and a chain's last
/// (its steps carry the client's `reply_to` in their options); every message is
/// acked once its reply was confirmed, and no Redis is involved.
#[test]
fn amqp_rpc_backend_python_client_gets_progress_values_failures_and_groups() {
    let test = "amqp_rpc_backend_python_client_gets_progress_values_failures_and_groups";
    let Some(rig) = AmqpRig::start_or_skip(test) else {
        return;
    };
    let w = celery::amqp_worker(
        &rig.rabbit,
        "rpc://",
        &AmqpRig::node("rpc"),
        &["-c", "2", "--track-started"],
    );
    let dir = celery::unique_temp_dir("amqp-rpc");
    let flag = dir.join("go");
    let started_flag = dir.join("started");
    let script = format!(
        r#"{app}
flag = sys.argv[1]
r = app.send_task('stream.progress_until_file', args=[flag, 7])
{see}
open(flag, 'w').write('go')
progressed = r.get(timeout=60)
rs = [app.send_task('math.square', args=[i]) for i in range(10)]
got = [r.get(timeout=60) for r in rs]
f = app.send_task('faults.raise_as', args=['ValueError', 'bad value'])
try:
    f.get(timeout=60)
    exc = None
except Exception as e:
    exc = [type(e).__name__, str(e), f.state]
g = group(app.signature('math.square', args=[i]) for i in range(6)).apply_async()
c = chain(app.signature('math.square', args=[2]), app.signature('math.square')).apply_async()
print(json.dumps({{'seen': seen, 'progressed': progressed, 'squares': got, 'exc': exc,
                  'group': g.get(timeout=60), 'chain': c.get(timeout=60)}}))
"#,
        app = celery::py_app_with(&rig.rabbit.url(), "rpc://"),
        see = celery::PY_SEE_PROGRESS
    );
    let v = celery::python_json(&script, &[flag.to_str().unwrap_or_default()]);
    // --track-started: STARTED ({"pid", "hostname"}) reaches the client's
    // reply queue before the result. A client of its own: one that called
    // get() before consumes its reply queue, and polling `state` (a
    // basic_get) no longer sees what arrives.
    let started = celery::python_json(
        &format!(
            r#"{app}
s = app.send_task('stream.wait_for_file', args=[sys.argv[1]])
started = []
deadline = time.time() + 60
while time.time() < deadline:
    if s.state != 'PENDING':
        started = [s.state, sorted(s.info)]
        break
    time.sleep(0.01)
open(sys.argv[1], 'w').write('go')
started.append(s.get(timeout=60))
print(json.dumps(started))
"#,
            app = celery::py_app_with(&rig.rabbit.url(), "rpc://"),
        ),
        &[started_flag.to_str().unwrap_or_default()],
    );
    let log = w.stderr();
    assert_eq!(
        started,
        json!(["STARTED", ["hostname", "pid"], 1]),
        "{started}\n{log}"
    );
    assert_eq!(
        v["seen"],
        json!(["PROGRESS", {"current": 1, "total": 2}]),
        "{v}\n{log}"
    );
    assert_eq!(v["progressed"], json!(7), "{v}\n{log}");
    let squares: Vec<i64> = (0..10).map(|i| i * i).collect();
    assert_eq!(v["squares"], json!(squares), "{v}\n{log}");
    assert_eq!(
        v["exc"],
        json!(["ValueError", "bad value", "FAILURE"]),
        "{v}\n{log}"
    );
    assert_eq!(v["group"], json!([0, 1, 4, 9, 16, 25]), "{v}\n{log}");
    assert_eq!(v["chain"], json!(16), "{v}\n{log}");
    rig.rabbit.wait_settled("celery");
    assert!(!log.contains("PRECONDITION_FAILED"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `rpc://` is refused where it cannot work, with exit 2 and a message
/// saying what to give instead: a worker on a Redis broker, and `submit`
/// (which reads results from Redis); no server needed.
#[test]
fn amqp_rpc_backend_where_it_cannot_work_is_a_usage_error() {
    let math = common::plugin_str("math");
    let redis_worker = celery::host_timeout(&[
        "worker",
        &math,
        "--broker",
        "redis://127.0.0.1:1/0",
        "--result-backend",
        "rpc://",
    ]);
    let err = common::stderr(&redis_worker);
    assert_eq!(common::exit_code(&redis_worker), 2, "{err}");
    assert!(
        err.contains("rpc:// result backend needs an AMQP broker"),
        "{err}"
    );
    let submit = celery::host_timeout(&[
        "submit",
        "--broker",
        "amqp://guest:guest@127.0.0.1:1//",
        "--result-backend",
        "rpc://",
        "--task",
        "math.square",
        "--args",
        "[1]",
    ]);
    let err = common::stderr(&submit);
    assert_eq!(common::exit_code(&submit), 2, "{err}");
    assert!(err.contains("--result-backend redis://"), "{err}");
}

/// Quorum queues' delivery limit (here a `delivery-limit` policy of 2 on
/// the node, `--delivery-limit 2`): a task that rejects its message with
/// requeue comes back with a growing `x-delivery-count`; the worker logs
/// it from half the limit on, and on the last delivery the limit allows it
/// stores FAILURE saying so instead of requeueing the message for RabbitMQ
/// to drop.
#[test]
fn amqp_quorum_delivery_limit_is_said_in_the_log_and_the_result() {
    let test = "amqp_quorum_delivery_limit_is_said_in_the_log_and_the_result";
    let Some(rig) = AmqpRig::start_or_skip(test) else {
        return;
    };
    rig.rabbit.ctl(&[
        "set_policy",
        "--apply-to",
        "queues",
        "limit",
        "^celery$",
        r#"{"delivery-limit": 2}"#,
    ]);
    let w = rig.worker(
        "dlimit",
        &["-c", "1", "--quorum-queues", "--delivery-limit", "2"],
    );
    let script = format!(
        "{}app.conf.task_default_queue_type = 'quorum'\n\
r = app.send_task('faults.reject', args=[True])\n\
r.get(timeout=60, propagate=False)\n\
print(json.dumps([r.id, r.state, str(r.result)]))",
        rig.app()
    );
    let out = celery::run_python(&script, &[], celery::PYTHON_TIMEOUT);
    let log = w.stderr();
    assert!(
        out.status.success(),
        "{}\n--- worker\n{log}\n--- policies\n{}",
        String::from_utf8_lossy(&out.stderr),
        rig.rabbit.ctl(&["list_policies"])
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or(Value::Null);
    let id = v[0].as_str().unwrap_or_default();
    assert_eq!(v[1], json!("FAILURE"), "{v}\n{log}");
    let why = v[2].as_str().unwrap_or_default();
    assert!(
        why.contains("rejected with requeue on delivery 3 of at most 3 from quorum queue celery")
            && why.contains("its last")
            && why.contains("not requeued"),
        "{why}\n{log}"
    );
    let said = |n: u32| format!("task faults.reject[{id}]: delivery {n} of at most 3");
    assert!(log.contains(&said(2)), "{log}");
    assert!(log.contains(&said(3)), "{log}");
    rig.rabbit.wait_settled("celery");
}
