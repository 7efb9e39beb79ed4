//! Hostile Celery messages and a hostile pool against `billiard-host worker`
//! (issue 22): a private redis-server per test, hand-built kombu envelopes
//! pushed raw (each a copy of what Celery 5.7's `send_task` writes, with one
//! change), the real Python Celery client where the producer's view
//! matters. Every wait polls a condition with a deadline.
//!
//! - C4: every message whose task id can be read gets exactly one answer;
//!   what Celery tolerates is tolerated, the rest is a stored FAILURE
//!   `celery.exceptions.InvalidTaskError` naming the header and its value.
//! - C1: a `timelimit` beyond 10 years never reaches the pool, and a dead
//!   pool stops the worker (non-zero exit) with its messages back in the
//!   queue, never acked as REVOKED.
//! - C9: `submit`'s countdown and expiry bounds.

use crate::common;

use std::time::Duration;

use billiard_host::celery::protocol;
use common::celery;
use common::celery::{hlen_unacked, lines, llen, wait_until, DEADLINE};
use serde_json::{json, Value};

/// `billiard-host worker math --plugin hostile --broker URL <extra>`.
fn worker(url: &str, extra: &[&str]) -> celery::Worker {
    celery::worker_with(&["math", "hostile"], url, extra)
}

/// Where a change goes in an envelope.
#[derive(Clone, Copy)]
enum At {
    Header,
    Property,
    Field,
}

/// A protocol v2 envelope as Celery 5.7's `send_task(task, args)` writes
/// it, with `changes` applied: each sets a header, property or envelope
/// field to a raw JSON text (so `NaN` or 300-deep lists can be written
/// as Python writes them), or removes it (`None`). Returns (id, JSON).
fn envelope(task: &str, args: Value, changes: &[(At, &str, Option<&str>)]) -> (String, String) {
    let id = protocol::new_id();
    let body =
        json!([args, {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]);
    let body = base64_encode(body.to_string().as_bytes());
    let mut env = json!({
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py", "task": task, "id": id, "shadow": null, "eta": null,
            "expires": null, "group": null, "group_index": null, "retries": 0,
            "timelimit": [null, null], "root_id": id, "parent_id": null,
            "argsrepr": args.to_string(), "kwargsrepr": "{}", "origin": "1@hostile",
            "ignore_result": false, "replaced_task_nesting": 0,
            "stamped_headers": null, "stamps": {}
        },
        "properties": {
            "correlation_id": id, "reply_to": protocol::new_id(), "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0,
            "body_encoding": "base64", "delivery_tag": protocol::new_id()
        }
    });
    let mut raw = Vec::new();
    for (i, (at, k, v)) in changes.iter().enumerate() {
        let place = match at {
            At::Header => env["headers"].as_object_mut(),
            At::Property => env["properties"].as_object_mut(),
            At::Field => env.as_object_mut(),
        }
        .expect("an object");
        match v {
            None => {
                place.remove(*k);
            }
            Some(text) => {
                let marker = format!("@@RAW{i}@@");
                place.insert(k.to_string(), Value::from(marker.clone()));
                raw.push((format!("\"{marker}\""), text.to_string()));
            }
        }
    }
    let mut text = env.to_string();
    for (marker, value) in raw {
        text = text.replace(&marker, &value);
    }
    (id, text)
}

fn base64_encode(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The stored result's status and, for an exception, `exc_type: message`.
fn answer(meta: &Value) -> (String, String) {
    let status = meta["status"].as_str().unwrap_or_default().to_string();
    let r = &meta["result"];
    let detail = match r.get("exc_type") {
        Some(t) => format!(
            "{}: {}",
            t.as_str().unwrap_or_default(),
            r["exc_message"][0].as_str().unwrap_or_default()
        ),
        None => r.to_string(),
    };
    (status, detail)
}

/// What a case must end as.
enum Want {
    /// SUCCESS with this value.
    Ok(Value),
    /// FAILURE `InvalidTaskError` whose message holds all of these.
    Invalid(&'static [&'static str]),
    /// This status and `exc_type: message` containing the text.
    Other(&'static str, &'static str),
}

/// One message: its name, the changes to Celery's envelope, the answer.
type Case<'a> = (&'a str, Vec<(At, &'a str, Option<&'a str>)>, Want);

fn deep(n: usize) -> String {
    format!("{}{}", "[".repeat(n), "]".repeat(n))
}

#[test]
fn c4_every_message_with_a_readable_id_gets_exactly_one_answer() {
    let Some((redis, _py)) =
        celery::celery_or_skip("c4_every_message_with_a_readable_id_gets_exactly_one_answer")
    else {
        return;
    };
    let url = redis.url();
    use At::*;
    let stamps = deep(300);
    let custom = deep(5000);
    let nine = || Want::Ok(json!(9));
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("baseline", vec![], nine()),
        // What Celery's worker and kombu tolerate.
        ("retries null", vec![(Header, "retries", Some("null"))], nine()),
        ("retries \"0\"", vec![(Header, "retries", Some("\"0\""))], nine()),
        ("lang null", vec![(Header, "lang", Some("null"))], nine()),
        ("group_index \"1\"", vec![(Header, "group_index", Some("\"1\""))], nine()),
        ("priority 3.5", vec![(Property, "priority", Some("3.5"))], nine()),
        ("priority \"5\"", vec![(Property, "priority", Some("\"5\""))], nine()),
        ("priority 200", vec![(Property, "priority", Some("200"))], nine()),
        ("priority -5", vec![(Property, "priority", Some("-5"))], nine()),
        ("priority \"x\"", vec![(Property, "priority", Some("\"x\""))], nine()),
        ("delivery_mode 300", vec![(Property, "delivery_mode", Some("300"))], nine()),
        ("stamps 300 deep", vec![(Header, "stamps", Some(&stamps))], nine()),
        ("a custom header 5000 deep", vec![(Header, "x-custom", Some(&custom))], nine()),
        ("timelimit []", vec![(Header, "timelimit", Some("[]"))], nine()),
        ("timelimit null", vec![(Header, "timelimit", Some("null"))], nine()),
        ("eta \"\"", vec![(Header, "eta", Some("\"\""))], nine()),
        ("eta long past", vec![(Header, "eta", Some("\"1970-01-01T00:00:00+00:00\""))], nine()),
        ("eta a date only", vec![(Header, "eta", Some("\"2000-01-01\""))], nine()),
        ("no id header, a correlation_id", vec![(Header, "id", None)], nine()),
        // What this host honours and cannot: named with the value.
        ("timelimit \"10\"", vec![(Header, "timelimit", Some("\"10\""))],
            Want::Invalid(&[r#"header "timelimit": "10" is not a list"#])),
        ("timelimit strings", vec![(Header, "timelimit", Some("[\"1\", \"0.5\"]"))],
            Want::Invalid(&[r#"header "timelimit""#, r#"holds "1" which is not a number"#])),
        ("timelimit 10", vec![(Header, "timelimit", Some("10"))],
            Want::Invalid(&[r#"header "timelimit": 10 is not a list"#])),
        ("timelimit [-1, null]", vec![(Header, "timelimit", Some("[-1, null]"))],
            Want::Invalid(&[r#"header "timelimit""#, "-1 which is negative"])),
        ("timelimit Infinity", vec![(Header, "timelimit", Some("[Infinity, null]"))],
            Want::Invalid(&[r#"header "timelimit": [Infinity, null]"#, "not a number"])),
        ("timelimit NaN", vec![(Header, "timelimit", Some("[null, NaN]"))],
            Want::Invalid(&[r#"header "timelimit": [null, NaN]"#])),
        ("ignore_result \"yes\"", vec![(Header, "ignore_result", Some("\"yes\""))],
            Want::Invalid(&[r#"header "ignore_result": "yes" is not true, false or null"#])),
        ("eta a number", vec![(Header, "eta", Some("12345"))],
            Want::Invalid(&[r#"header "eta": 12345 is not an ISO 8601"#])),
        ("eta \"tomorrow\"", vec![(Header, "eta", Some("\"tomorrow\""))],
            Want::Invalid(&[r#"header "eta": "tomorrow" is not an ISO 8601"#])),
        ("eta a 5-digit year", vec![(Header, "eta", Some("\"+12027-02-19T00:00:00+00:00\""))],
            Want::Invalid(&[r#"header "eta": "+12027-02-19T00:00:00+00:00""#])),
        ("eta in 9999", vec![(Header, "eta", Some("\"9999-12-31T23:59:59+00:00\""))],
            Want::Invalid(&[r#"header "eta""#, "(10 years)"])),
        ("expires \"never\"", vec![(Header, "expires", Some("\"never\""))],
            Want::Invalid(&[r#"header "expires": "never" is not an ISO 8601"#])),
        ("expires a number", vec![(Header, "expires", Some("60"))],
            Want::Invalid(&[r#"header "expires": 60"#])),
        ("group a number", vec![(Header, "group", Some("5"))],
            Want::Invalid(&[r#"header "group": 5 is not a string"#])),
        ("no task header", vec![(Header, "task", None)],
            Want::Invalid(&["not a Celery protocol v2 message"])),
        ("body_encoding a number", vec![(Property, "body_encoding", Some("7"))],
            Want::Invalid(&[r#"property "body_encoding": 7 is not a string"#])),
        ("body not a string", vec![(Field, "body", Some("[1]"))],
            Want::Invalid(&[r#"field "body": [1] is not a string"#])),
        ("content-type a number", vec![(Field, "content-type", Some("5"))],
            Want::Other("FAILURE", "ContentDisallowed")),
        // Answers Celery gives too.
        ("task a number", vec![(Header, "task", Some("5"))], Want::Other("FAILURE", "NotRegistered: 5")),
        ("expires past", vec![(Header, "expires", Some("\"2000-01-01T00:00:00+00:00\""))],
            Want::Other("REVOKED", "TaskRevokedError: expired")),
    ];
    let mut sent = Vec::new();
    for (name, changes, want) in cases {
        let (id, env) = envelope("math.square", json!([3]), &changes);
        redis.cmd(&["LPUSH", "celery", &env]);
        sent.push((name, id, want));
    }
    // No id anywhere: nothing to answer to (discarded, logged).
    let (_, no_id) = envelope(
        "math.square",
        json!([3]),
        &[(Header, "id", None), (Property, "correlation_id", None)],
    );
    redis.cmd(&["LPUSH", "celery", &no_id]);

    let w = worker(&url, &["-c", "2"]);
    wait_until("an answer to every message", DEADLINE, || {
        sent.iter().all(|(_, id, _)| redis.task_meta(id).is_some())
    });
    wait_until("nothing left in the queue or unacked", DEADLINE, || {
        llen(&redis, "celery") == 0 && hlen_unacked(&redis) == 0
    });
    let mut wrong = Vec::new();
    for (name, id, want) in &sent {
        let meta = redis.task_meta(id).expect("waited for");
        let (status, detail) = answer(&meta);
        let ok = match want {
            Want::Ok(v) => status == "SUCCESS" && meta["result"] == *v,
            Want::Invalid(says) => {
                status == "FAILURE"
                    && meta["result"]["exc_module"] == "celery.exceptions"
                    && detail.starts_with("InvalidTaskError: ")
                    && says.iter().all(|s| detail.contains(s))
            }
            Want::Other(st, says) => status == *st && detail.contains(says),
        };
        if !ok {
            wrong.push(format!("{name}: {status} {detail}"));
        }
    }
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    wait_until("the message without an id to be logged", DEADLINE, || {
        w.stderr().contains("discarded message") && w.stderr().contains("no task id")
    });
    // Each refusal is logged with the task id and the reason.
    let log = w.stderr();
    assert!(
        log.contains("refusing task math.square[") && log.contains(r#"header "timelimit""#),
        "{log}"
    );
}

/// The producer's view: a plain Python `send_task` with an absurd limit
/// gets `InvalidTaskError` naming the header from `.get()`, and the worker
/// keeps serving (before issue 22 the supervisor panicked and every later
/// task came back REVOKED).
#[test]
fn c1_python_time_limits_beyond_ten_years_raise_invalid_task_error_and_the_worker_serves_on() {
    let Some((redis, _py)) = celery::celery_or_skip(
        "c1_python_time_limits_beyond_ten_years_raise_invalid_task_error_and_the_worker_serves_on",
    ) else {
        return;
    };
    let url = redis.url();
    let _w = worker(&url, &["-c", "2"]);
    let script = format!(
        "{}\n{}",
        celery::py_app(&url),
        r#"
out = {}
cases = [("huge", dict(time_limit=1e19)), ("soft_huge", dict(soft_time_limit=1e19)),
         ("inf", dict(time_limit=float("inf"))), ("nan", dict(soft_time_limit=float("nan"))),
         ("negative", dict(time_limit=-1)), ("eleven_years", dict(time_limit=11 * 365 * 86400)),
         ("ten_years", dict(time_limit=10 * 365 * 86400))]
for name, opts in cases:
    r = app.send_task("math.square", args=[3], **opts)
    try:
        out[name] = {"ok": r.get(timeout=60)}
    except Exception as e:
        mod = sys.modules.get(type(e).__module__)
        out[name] = {"type": type(e).__name__, "msg": str(e),
                     "real_class": mod is not None and getattr(mod, type(e).__name__, None) is type(e)}
out["after"] = [app.send_task("math.square", args=[i]).get(timeout=60) for i in range(20)]
print(json.dumps(out))
"#
    );
    let v = celery::python_json(&script, &[]);
    for (name, says) in [
        (
            "huge",
            "1e+19 which is longer than the longest accepted duration (10 years)",
        ),
        ("soft_huge", "1e+19 which is longer"),
        ("inf", "holds Infinity which is not a number"),
        ("nan", "holds NaN which is not a number"),
        ("negative", "holds -1 which is negative"),
        ("eleven_years", "346896000 which is longer"),
    ] {
        let got = &v[name];
        assert_eq!(got["type"], "InvalidTaskError", "{name}: {got}");
        assert_eq!(got["real_class"], true, "{name}: {got}");
        let msg = got["msg"].as_str().unwrap_or_default();
        assert!(msg.contains(r#"header "timelimit""#), "{name}: {msg}");
        assert!(msg.contains(says), "{name}: {msg}");
    }
    assert_eq!(
        v["ten_years"],
        json!({"ok": 9}),
        "the bound itself is accepted"
    );
    let after: Vec<i64> = (0..20).map(|i| i * i).collect();
    assert_eq!(v["after"], json!(after));
}

/// A chain step whose countdown is past what a clock can hold: the worker
/// that sends it (ours) must neither panic in `DateTime + TimeDelta` (its
/// finisher would die and no later result be stored) nor send it without
/// an eta: the step arrives with an eta just past the bound and is
/// refused by name.
#[test]
fn c1_a_chain_step_with_an_absurd_countdown_is_answered_not_run_and_not_fatal() {
    let Some((redis, _py)) = celery::celery_or_skip(
        "c1_a_chain_step_with_an_absurd_countdown_is_answered_not_run_and_not_fatal",
    ) else {
        return;
    };
    let url = redis.url();
    let _w = worker(&url, &["-c", "1"]);
    let script = format!(
        "{}\n{}",
        celery::py_app(&url),
        r#"
from celery import chain
out = {}
for name, cd in [("huge", 1e19), ("negative_huge", -1e19), ("eleven_years", 11 * 365 * 86400)]:
    c = chain(app.signature("math.square", args=[2]), app.signature("math.square").set(countdown=cd))
    r = c.apply_async()
    try:
        out[name] = {"ok": r.get(timeout=60)}
    except Exception as e:
        out[name] = {"type": type(e).__name__, "msg": str(e)}
out["after"] = app.send_task("math.square", args=[7]).get(timeout=60)
print(json.dumps(out))
"#
    );
    let v = celery::python_json(&script, &[]);
    for name in ["huge", "eleven_years"] {
        assert_eq!(v[name]["type"], "InvalidTaskError", "{name}: {}", v[name]);
        let msg = v[name]["msg"].as_str().unwrap_or_default();
        assert!(
            msg.contains(r#"header "eta""#) && msg.contains("10 years"),
            "{name}: {msg}"
        );
    }
    // A negative countdown is an eta in the past: it runs at once, as in Celery.
    assert_eq!(v["negative_huge"], json!({"ok": 16}));
    assert_eq!(v["after"], 49);
}

/// Defence in depth: the supervisor thread is panicked on purpose (the
/// debug-build hook `BILLIARD_HOST_TEST_PANIC_SUPERVISOR_AT_JOB`, at the
/// third job). The worker must stop reserving, return the job it could not
/// run to the queue (not store REVOKED), exit non-zero naming the cause;
/// another host then runs every message exactly once.
#[test]
fn c1_a_dead_pool_stops_the_worker_and_its_messages_go_to_another_host() {
    let Some((redis, _py)) = celery::celery_or_skip(
        "c1_a_dead_pool_stops_the_worker_and_its_messages_go_to_another_host",
    ) else {
        return;
    };
    if !cfg!(debug_assertions) {
        celery::skip(
            "c1_a_dead_pool_stops_the_worker_and_its_messages_go_to_another_host",
            "the supervisor panic hook exists in debug builds only",
        );
        return;
    }
    let url = redis.url();
    let dir = celery::unique_temp_dir("dead-pool");
    let log = dir.join("runs.log");
    let logs = log.display().to_string();
    let n = 8;
    let mut ids = Vec::new();
    for i in 0..n {
        let (id, env) = envelope(
            "hostile.append_line",
            json!([logs, format!("job{i}"), 0]),
            &[],
        );
        // LPUSH + RPOP: the first pushed runs first.
        redis.cmd(&["LPUSH", "celery", &env]);
        ids.push(id);
    }
    let math = common::plugin_str("math");
    let hostile = common::plugin_str("hostile");
    let mut cmd = common::host_command();
    cmd.args([
        "worker", &math, "--plugin", &hostile, "--broker", &url, "-c", "1",
    ])
    .env("BILLIARD_HOST_TEST_PANIC_SUPERVISOR_AT_JOB", "3");
    let mut w = celery::spawn_worker_cmd(cmd);
    let status = w
        .wait_timeout(DEADLINE)
        .unwrap_or_else(|| panic!("the worker kept running on a dead pool:\n{}", w.stderr()));
    let err = w.stderr();
    assert!(!status.success(), "exit status {status:?}\n{err}");
    assert!(err.contains("the pool stopped"), "{err}");
    assert!(err.contains("supervisor thread panicked"), "{err}");
    // Two jobs ran and were answered; the third was dropped by the dead
    // pool and went back to the queue with the five never reserved. No
    // REVOKED (or any other answer) for what did not run.
    let answered: Vec<&String> = ids
        .iter()
        .filter(|id| redis.task_meta(id).is_some())
        .collect();
    assert_eq!(answered.len(), 2, "answered: {answered:?}\n{err}");
    for id in &answered {
        assert_eq!(redis.task_meta(id).unwrap()["status"], "SUCCESS");
    }
    assert_eq!(llen(&redis, "celery"), n - 2, "{err}");
    assert_eq!(hlen_unacked(&redis), 0, "{err}");

    // Another host takes over: every message runs once in all.
    let _w2 = worker(&url, &["-c", "2"]);
    wait_until("every message answered", DEADLINE, || {
        ids.iter().all(|id| redis.task_meta(id).is_some())
    });
    for id in &ids {
        assert_eq!(redis.task_meta(id).unwrap()["status"], "SUCCESS", "{id}");
    }
    let mut runs = lines(&log);
    runs.sort();
    let want: Vec<String> = (0..n).map(|i| format!("job{i}")).collect();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(runs, want_sorted, "each job exactly once");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `submit --countdown/--expires/--time-limit` past 10 years: exit 2 with
/// the flag and the bound named, nothing sent (before: a panic then a hang
/// deaf to SIGTERM, or the task run at once).
#[test]
fn c9_submit_refuses_countdowns_and_expiries_past_the_bound() {
    let Some(redis) =
        celery::redis_or_skip("c9_submit_refuses_countdowns_and_expiries_past_the_bound")
    else {
        return;
    };
    let url = redis.url();
    for (flag, value) in [
        ("--countdown", "262000y"),
        ("--countdown", "300000y"),
        ("--countdown", "10000y"),
        ("--countdown", "584000000000y"),
        ("--countdown", "11y"),
        ("--expires", "584000000000y"),
        ("--expires", "11y"),
        ("--time-limit", "584000000000y"),
        ("--soft-time-limit", "11y"),
    ] {
        let mut cmd = common::host_command();
        cmd.args([
            "submit",
            "--broker",
            &url,
            "--task",
            "math.square",
            "--args",
            "[3]",
            flag,
            value,
        ]);
        let out = celery::run_with_timeout(cmd, Duration::from_secs(60));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.contains(flag), "{flag} {value}: {err}");
        assert!(err.contains("10 years"), "{flag} {value}: {err}");
        assert!(!err.contains("panicked"), "{flag} {value}: {err}");
    }
    assert_eq!(llen(&redis, "celery"), 0, "nothing was sent");

    // Within the bound: the message carries the eta and the expiry.
    let mut cmd = common::host_command();
    cmd.args([
        "submit",
        "--broker",
        &url,
        "--task",
        "math.square",
        "--args",
        "[3]",
        "--countdown",
        "9y",
        "--expires",
        "3650days",
    ]);
    let out = celery::run_with_timeout(cmd, Duration::from_secs(60));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let msgs = redis.list_json("celery");
    assert_eq!(msgs.len(), 1);
    let h = &msgs[0]["headers"];
    let eta = protocol::parse_time(h["eta"].as_str().expect("an eta")).expect("readable");
    let expires = protocol::parse_time(h["expires"].as_str().expect("expires")).expect("readable");
    let days = |t: chrono::DateTime<chrono::Utc>| (t - chrono::Utc::now()).num_days();
    // humantime: a year is 365.25 days.
    assert!((3286..=3287).contains(&days(eta)), "{eta}");
    assert!((3649..=3650).contains(&days(expires)), "{expires}");
}

/// A panic in submit's producer loop (here the debug-build hook
/// `BILLIARD_HOST_TEST_PANIC_SUBMIT`; in the report `DateTime + TimeDelta`)
/// ends the process with the panic's status. Before, the scope that runs
/// the loop waited for the signal thread, which nothing closed: the
/// process hung for ever, deaf to SIGTERM.
#[test]
fn c9_a_panic_in_submit_ends_the_process_instead_of_hanging_it() {
    let Some(redis) =
        celery::redis_or_skip("c9_a_panic_in_submit_ends_the_process_instead_of_hanging_it")
    else {
        return;
    };
    if !cfg!(debug_assertions) {
        celery::skip(
            "c9_a_panic_in_submit_ends_the_process_instead_of_hanging_it",
            "the submit panic hook exists in debug builds only",
        );
        return;
    }
    let url = redis.url();
    let dir = celery::unique_temp_dir("submit-panic");
    let input = dir.join("jobs.jsonl");
    std::fs::write(&input, "[3]\n[4]\n").expect("write the input");
    let input = input.display().to_string();
    for source in [&["--args", "[3]"][..], &["--input", &input][..]] {
        let mut cmd = common::host_command();
        cmd.args([
            "submit",
            "--broker",
            &url,
            "--task",
            "math.square",
            "--wait",
        ])
        .args(source)
        .env("BILLIARD_HOST_TEST_PANIC_SUBMIT", "1");
        // run_with_timeout fails the test if the process is still up.
        let out = celery::run_with_timeout(cmd, Duration::from_secs(60));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("test hook: BILLIARD_HOST_TEST_PANIC_SUBMIT"),
            "{err}"
        );
        assert!(!out.status.success(), "{:?}: {err}", out.status);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A message with a 300-deep `stamps` (which runs, C4) reserved by a host
/// that dies while it holds it (an eta a few seconds ahead) goes back to
/// its queue when the dead host's lease runs out and is answered by
/// another host: reading an `unacked` entry back builds no tree either.
#[test]
fn c4_a_deep_message_of_a_dead_host_is_restored_and_answered_once() {
    let Some((redis, _py)) =
        celery::celery_or_skip("c4_a_deep_message_of_a_dead_host_is_restored_and_answered_once")
    else {
        return;
    };
    let url = redis.url();
    let dir = celery::unique_temp_dir("deep-restore");
    let log = dir.join("runs.log");
    let stamps = deep(300);
    let eta = chrono::Utc::now()
        .checked_add_signed(chrono::Duration::seconds(5))
        .expect("in range");
    let eta = format!("\"{}\"", protocol::iso8601(eta));
    let (id, env) = envelope(
        "hostile.append_line",
        json!([log.display().to_string(), "deep", 0]),
        &[
            (At::Header, "stamps", Some(&stamps)),
            (At::Header, "eta", Some(&eta)),
        ],
    );
    let mut first = worker(&url, &["-c", "1", "--visibility-timeout", "1s"]);
    redis.cmd(&["LPUSH", "celery", &env]);
    wait_until("the first host to hold the message", DEADLINE, || {
        hlen_unacked(&redis) == 1
    });
    first.kill();
    assert!(lines(&log).is_empty(), "it was held, not run");
    // A host killed in the middle of a sweep leaves kombu's sweep lock
    // (`unacked_mutex`, EX 300) behind, as a killed Python worker does;
    // what is tested here is the restore, not that lock's five minutes.
    redis.cmd(&["DEL", "unacked_mutex"]);
    let _second = worker(&url, &["-c", "1", "--visibility-timeout", "1s"]);
    wait_until("the message to be answered", DEADLINE, || {
        redis.task_meta(&id).is_some()
    });
    assert_eq!(redis.task_meta(&id).unwrap()["status"], "SUCCESS");
    wait_until("nothing left unacked", DEADLINE, || {
        hlen_unacked(&redis) == 0
    });
    assert_eq!(lines(&log), ["deep"], "run once");
    let _ = std::fs::remove_dir_all(&dir);
}
