//! More of the worker on RabbitMQ (issue 25): Celery 5.5+'s native
//! delayed delivery on a quorum-queue fleet, `celery control
//! add_consumer/cancel_consumer` and `/healthz` on an AMQP worker. A
//! private RabbitMQ node per test (tests/common/celery.rs), Redis as the
//! result backend, the real Python Celery 5.7 client and CLI.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::celery::{self, RabbitMqServer, RedisServer};
use serde_json::json;

/// A Python app of a fleet on quorum queues with topic exchanges (Celery's
/// documented setup for native delayed delivery), missing queues made the
/// same way; broker `broker`, results on `backend`. Records what each
/// publish went to in `published` (`before_task_publish`).
fn quorum_fleet_app(broker: &str, backend: &str) -> String {
    format!(
        r#"{app}from datetime import datetime, timedelta, timezone
from celery.signals import before_task_publish
app.conf.update(
    task_default_queue_type="quorum",
    task_default_exchange_type="topic",
    task_create_missing_queue_type="quorum",
    task_create_missing_queue_exchange_type="topic",
    broker_transport_options={{"confirm_publish": True}},
)
published = {{}}
@before_task_publish.connect
def _where(headers=None, exchange=None, routing_key=None, **kw):
    published[headers["id"]] = [getattr(exchange, "name", exchange), routing_key]
"#,
        app = celery::py_app_with(broker, backend)
    )
}

/// Our worker on the fleet's queues: quorum, topic exchanges.
fn quorum_worker(
    rabbit: &RabbitMqServer,
    redis: &RedisServer,
    name: &str,
    extra: &[&str],
) -> celery::Worker {
    let math = common::plugin_str("math");
    let (b, r) = (rabbit.url(), redis.url());
    let mut args = vec![
        "worker",
        &math,
        "--broker",
        &b,
        "--result-backend",
        &r,
        "-n",
        name,
        "--quorum-queues",
        "--exchange-type",
        "topic",
    ];
    args.extend_from_slice(extra);
    celery::spawn_worker(args)
}

/// `source destination routing_key` of every binding of the vhost.
fn bindings(rabbit: &RabbitMqServer) -> Vec<[String; 3]> {
    rabbit
        .ctl(&[
            "list_bindings",
            "-q",
            "--no-table-headers",
            "source_name",
            "destination_name",
            "routing_key",
        ])
        .lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [s, d, k] => Some([s.to_string(), d.to_string(), k.to_string()]),
            _ => None,
        })
        .collect()
}

#[test]
fn amqp_native_delayed_delivery_runs_countdown_tasks_of_a_quorum_fleet() {
    let test = "amqp_native_delayed_delivery_runs_countdown_tasks_of_a_quorum_fleet";
    let Some((rabbit, redis, _py)) = celery::rabbitmq_or_skip(test) else {
        return;
    };
    let name = celery::node("delayed", "amqp-test");
    let w = quorum_worker(&rabbit, &redis, &name, &["-c", "2"]);
    assert!(
        w.stderr().contains("native delayed delivery"),
        "{}",
        w.stderr()
    );
    // What our worker declared is what kombu declares (the same call a
    // Celery worker makes at start: any other type or argument would be
    // PRECONDITION_FAILED here), then countdown and ETA tasks go through
    // celery_delayed_27 and come back to our worker after their delay.
    let script = format!(
        "{}{}",
        quorum_fleet_app(&rabbit.url(), &redis.url()),
        r#"
from kombu.transport.native_delayed_delivery import (
    declare_native_delayed_delivery_exchanges_and_queues,
    bind_queue_to_native_delayed_delivery_exchange)
with app.connection_for_write() as conn:
    declare_native_delayed_delivery_exchanges_and_queues(conn, 'quorum')
    bind_queue_to_native_delayed_delivery_exchange(conn, app.amqp.queues['celery'])
sent = time.time()
rs = [app.send_task('math.square', args=[3], countdown=2),
      app.send_task('math.square', args=[4], countdown=5),
      app.send_task('math.add', args=[1, 2],
                    eta=datetime.now(timezone.utc) + timedelta(seconds=3))]
got = [r.get(timeout=90) for r in rs]
done = []
for r in rs:
    d = r.date_done
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    done.append(d.timestamp() - sent)
print(json.dumps({'got': got, 'after': done, 'to': [published[r.id] for r in rs]}))
"#
    );
    let v = celery::python_json(&script, &[]);
    assert_eq!(v["got"], json!([9, 16, 3]), "{v}\n{}", w.stderr());
    // Celery's producer used native delayed delivery: the delay's 28
    // bits, then the queue's routing key.
    for (i, secs) in [2u32, 5, 3].into_iter().enumerate() {
        let to = &v["to"][i];
        assert_eq!(to[0], json!("celery_delayed_27"), "{v}");
        let key = to[1].as_str().unwrap_or_default();
        let bits: String = format!("{secs:028b}")
            .chars()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(".");
        // An ETA's countdown is computed at send, a hair under 3 s.
        if i != 2 {
            assert_eq!(key, format!("{bits}.celery"), "{v}");
        }
        assert!(key.ends_with(".celery") && key.len() == 28 * 2 + 6, "{v}");
        // Each ran no earlier than its delay (less the producer's
        // rounding down to whole seconds).
        let after = v["after"][i].as_f64().unwrap_or(-1.0);
        assert!(after >= f64::from(secs) - 1.0, "{v}\n{}", w.stderr());
    }
    // The task queue takes delayed messages as Celery's worker binds it:
    // its exchange from celery_delayed_delivery, the queue from its
    // exchange, both with `#.celery`.
    let b = bindings(&rabbit);
    for want in [
        ["celery_delayed_delivery", "celery", "#.celery"],
        ["celery", "celery", "#.celery"],
        ["celery", "celery", "celery"],
    ] {
        assert!(
            b.iter().any(|x| x == &want.map(str::to_string)),
            "{want:?} not in {b:?}"
        );
    }
    let log = w.stderr();
    assert!(!log.contains("PRECONDITION_FAILED"), "{log}");
}

fn celery_exe(py: &Path) -> PathBuf {
    py.with_file_name("celery")
}

/// `celery -A fleetapp ARGS` in `dir`: (success, stdout + stderr).
fn celery_tool(py: &Path, dir: &Path, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(celery_exe(py));
    cmd.current_dir(dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["-A", "fleetapp"])
        .args(args);
    let out = celery::run_with_timeout(cmd, Duration::from_secs(90));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The queues RabbitMQ sees consumed, with how many consumers each.
fn consumers(rabbit: &RabbitMqServer) -> Vec<(String, u64)> {
    rabbit
        .ctl(&[
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "consumers",
        ])
        .lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [n, c] => Some((n.to_string(), c.parse().ok()?)),
            _ => None,
        })
        .collect()
}

fn consumed(rabbit: &RabbitMqServer, queue: &str) -> u64 {
    consumers(rabbit)
        .into_iter()
        .find(|(n, _)| n == queue)
        .map_or(0, |(_, c)| c)
}

#[test]
fn amqp_add_consumer_and_cancel_consumer_from_the_celery_cli() {
    let test = "amqp_add_consumer_and_cancel_consumer_from_the_celery_cli";
    let Some((rabbit, redis, py)) = celery::rabbitmq_or_skip(test) else {
        return;
    };
    let name = celery::node("queues", "amqp-test");
    let w = quorum_worker(&rabbit, &redis, &name, &["-c", "1"]);
    let dir = celery::unique_temp_dir("amqp-queues");
    std::fs::write(
        dir.join("fleetapp.py"),
        quorum_fleet_app(&rabbit.url(), &redis.url()),
    )
    .expect("write fleetapp.py");
    let (ok, out) = celery_tool(
        &py,
        &dir,
        &["control", "add_consumer", "extra", "-d", &name, "-t", "5"],
    );
    assert!(
        ok && out.contains("add consumer extra"),
        "{out}\n{}",
        w.stderr()
    );
    celery::wait_until("a consumer on `extra`", celery::DEADLINE, || {
        consumed(&rabbit, "extra") == 1
    });
    // A task on the new queue runs here (declared alike on both sides:
    // quorum, topic exchange; a countdown one through delayed delivery,
    // bound as the worker's start-up queues are).
    let script = format!(
        "{}\n\
a = app.send_task('math.square', args=[5], queue='extra')\n\
b = app.send_task('math.square', args=[6], queue='extra', countdown=1)\n\
print(json.dumps([a.get(timeout=60), b.get(timeout=60), published[b.id][0]]))",
        quorum_fleet_app(&rabbit.url(), &redis.url())
    );
    let v = celery::python_json(&script, &[]);
    assert_eq!(v, json!([25, 36, "celery_delayed_27"]), "{}", w.stderr());

    let (ok, out) = celery_tool(
        &py,
        &dir,
        &[
            "control",
            "cancel_consumer",
            "extra",
            "-d",
            &name,
            "-t",
            "5",
        ],
    );
    assert!(ok && out.contains("no longer consuming from"), "{out}");
    celery::wait_until("no consumer on `extra`", celery::DEADLINE, || {
        consumed(&rabbit, "extra") == 0
    });
    assert_eq!(consumed(&rabbit, "celery"), 1, "{:?}", consumers(&rabbit));
    // What is sent to `extra` now waits there; `celery` is still served.
    let script = format!(
        "{}\n\
app.send_task('math.square', args=[7], queue='extra')\n\
print(json.dumps(app.send_task('math.square', args=[8]).get(timeout=60)))",
        quorum_fleet_app(&rabbit.url(), &redis.url())
    );
    assert_eq!(celery::python_json(&script, &[]), json!(64));
    // (A quorum queue's count reaches list_queues with a lag.)
    celery::wait_until("the task waiting in `extra`", celery::DEADLINE, || {
        rabbit
            .ctl(&[
                "list_queues",
                "-q",
                "--no-table-headers",
                "name",
                "messages",
            ])
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["extra", "1"])
    });
    assert_eq!(consumed(&rabbit, "extra"), 0, "{:?}", consumers(&rabbit));
    assert!(
        w.stderr().contains("remote control: consuming [celery]"),
        "{}",
        w.stderr()
    );
}

/// `GET /healthz` on 127.0.0.1:`port`: (status, body), None when the
/// request failed.
fn healthz(port: u16) -> Option<(u16, String)> {
    let (text, err) = common::http_get(
        &format!("127.0.0.1:{port}"),
        "/healthz",
        Duration::from_secs(20),
    )
    .ok()?;
    if err.is_some() {
        return None;
    }
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, text))
}

#[test]
fn amqp_healthz_follows_the_amqp_connection_not_the_redis_backend() {
    let test = "amqp_healthz_follows_the_amqp_connection_not_the_redis_backend";
    let Some((mut rabbit, redis, _py)) = celery::rabbitmq_or_skip(test) else {
        return;
    };
    let name = celery::node("health", "amqp-test");
    let w = quorum_worker(
        &rabbit,
        &redis,
        &name,
        &["-c", "1", "--metrics-addr", "127.0.0.1:0"],
    );
    let port = celery::metrics_port(&w, celery::DEADLINE);
    let status = |want: u16| {
        let mut last = None;
        celery::wait_until(&format!("/healthz {want}"), celery::DEADLINE, || {
            last = healthz(port);
            last.as_ref().is_some_and(|(c, _)| *c == want)
        });
        last.map(|(_, t)| t).unwrap_or_default()
    };
    status(200);
    // RabbitMQ down, the Redis result backend up: unhealthy.
    rabbit.kill();
    let why = status(503);
    assert!(why.contains("broker unreachable"), "{why}");
    assert_eq!(redis.cmd(&["PING"]).text(), "PONG");
    rabbit.restart();
    status(200);
    // And it consumes again.
    let script = format!(
        "{}\n\
print(json.dumps(app.send_task('math.square', args=[9]).get(timeout=60)))",
        quorum_fleet_app(&rabbit.url(), &redis.url())
    );
    assert_eq!(
        celery::python_json(&script, &[]),
        json!(81),
        "{}",
        w.stderr()
    );
}

/// A vhost whose delayed-delivery queues were declared classic (a fleet
/// with `broker_native_delayed_delivery_queue_type = "classic"`) refuses
/// our quorum ones: the worker stops at start with RabbitMQ's reason
/// (exit 2), not a retry for ever; with `--delayed-delivery-queue-type
/// classic`, as the fleet, it starts and runs their countdown tasks.
#[test]
fn amqp_delayed_queues_declared_otherwise_stop_the_start_with_the_reason() {
    let test = "amqp_delayed_queues_declared_otherwise_stop_the_start_with_the_reason";
    let Some((rabbit, redis, _py)) = celery::rabbitmq_or_skip(test) else {
        return;
    };
    let script = format!(
        "{}{}",
        quorum_fleet_app(&rabbit.url(), &redis.url()),
        r#"
from kombu.transport.native_delayed_delivery import (
    declare_native_delayed_delivery_exchanges_and_queues)
with app.connection_for_write() as conn:
    declare_native_delayed_delivery_exchanges_and_queues(conn, 'classic')
print(json.dumps('declared'))
"#
    );
    assert_eq!(celery::python_json(&script, &[]), json!("declared"));
    let math = common::plugin_str("math");
    let (b, r) = (rabbit.url(), redis.url());
    let mut cmd = common::host_command();
    cmd.args(["worker", &math, "--broker", &b, "--result-backend", &r])
        .args(["--quorum-queues", "--exchange-type", "topic"]);
    let out = celery::run_with_timeout(cmd, Duration::from_secs(120));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("PRECONDITION_FAILED"), "{err}");

    let name = celery::node("classic", "amqp-test");
    let w = quorum_worker(
        &rabbit,
        &redis,
        &name,
        &["-c", "1", "--delayed-delivery-queue-type", "classic"],
    );
    let script = format!(
        "{}{}",
        quorum_fleet_app(&rabbit.url(), &redis.url()),
        r#"
r = app.send_task('math.square', args=[6], countdown=1)
print(json.dumps([r.get(timeout=60), published[r.id][0]]))
"#
    );
    assert_eq!(
        celery::python_json(&script, &[]),
        json!([36, "celery_delayed_27"]),
        "{}",
        w.stderr()
    );
    assert!(w.stderr().contains("declared (classic)"), "{}", w.stderr());
}

/// `submit` and `run --broker` declare the queue they publish to as the
/// fleet does (`--quorum-queues --exchange-type topic`, as its workers):
/// with the flags the jobs run on a quorum-queue fleet's worker; without
/// them RabbitMQ refuses the classic declaration (`PRECONDITION_FAILED`)
/// and the command says so; `run` without `--broker` refuses the flags.
#[test]
fn amqp_submit_and_run_broker_declare_queues_as_the_fleet_does() {
    let test = "amqp_submit_and_run_broker_declare_queues_as_the_fleet_does";
    let Some((rabbit, redis, _py)) = celery::rabbitmq_or_skip(test) else {
        return;
    };
    let name = celery::node("declare", "amqp-test");
    let w = quorum_worker(&rabbit, &redis, &name, &["-c", "2"]);
    let (b, r) = (rabbit.url(), redis.url());
    let fleet = ["--quorum-queues", "--exchange-type", "topic"];
    let submit = |extra: &[&str]| {
        let mut args = vec![
            "submit",
            "--broker",
            &b,
            "--result-backend",
            &r,
            "--task",
            "math.square",
            "--args",
            "[6]",
            "--wait",
        ];
        args.extend_from_slice(extra);
        celery::host_timeout(&args)
    };
    let ok = submit(&fleet);
    let lines = common::json_lines(&common::stdout(&ok));
    assert_eq!(
        lines.first().map(|l| l["ok"].clone()),
        Some(json!(36)),
        "{}{}\n--- worker\n{}",
        common::stdout(&ok),
        common::stderr(&ok),
        w.stderr()
    );
    assert_eq!(common::exit_code(&ok), 0);
    let classic = submit(&[]);
    assert_ne!(common::exit_code(&classic), 0);
    assert!(
        common::stderr(&classic).contains("PRECONDITION_FAILED"),
        "{}",
        common::stderr(&classic)
    );
    let run = celery::host_timeout(&[
        "run",
        "--broker",
        &b,
        "--result-backend",
        &r,
        "--task",
        "math.square",
        "--args",
        "[7]",
        "--quorum-queues",
        "--exchange-type",
        "topic",
    ]);
    let lines = common::json_lines(&common::stdout(&run));
    assert_eq!(
        lines.first().map(|l| l["ok"].clone()),
        Some(json!(49)),
        "{}",
        common::stderr(&run)
    );
    let math = common::plugin_str("math");
    let local = celery::host_timeout(&[
        "run",
        &math,
        "--task",
        "square",
        "--args",
        "[2]",
        "--quorum-queues",
    ]);
    assert_eq!(common::exit_code(&local), 2, "{}", common::stderr(&local));
    assert!(
        common::stderr(&local).contains("go with --broker"),
        "{}",
        common::stderr(&local)
    );
}
