//! Unit tests of the verdicts and of the retry message.

use super::*;
use crate::error::{ExceptionClass, FailureDetail};

/// `send_task('faults.flaky', args=['/tmp/x', 2], link=..., expires=60,
/// time_limit=10, priority=6)` as Celery 5.7 sends it, with a header of
/// the app's own and a redelivery mark.
const MSG: &str = r#"{"body": "W1siL3RtcC94IiwgMl0sIHt9LCB7ImNhbGxiYWNrcyI6IFt7InRhc2siOiAicHkuZG91YmxlIiwgImFyZ3MiOiBbXSwgImt3YXJncyI6IHt9LCAib3B0aW9ucyI6IHt9LCAic3VidGFza190eXBlIjogbnVsbCwgImltbXV0YWJsZSI6IGZhbHNlfV0sICJlcnJiYWNrcyI6IG51bGwsICJjaGFpbiI6IG51bGwsICJjaG9yZCI6IG51bGx9XQ==", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "faults.flaky", "id": "t-1", "shadow": null, "eta": null, "expires": "2030-01-01T00:00:00+00:00", "group": "g-1", "group_index": 2, "retries": 1, "timelimit": [10, null], "root_id": "r-1", "parent_id": null, "argsrepr": "['/tmp/x', 2]", "kwargsrepr": "{}", "origin": "gen1@vm", "ignore_result": null, "replaced_task_nesting": 0, "stamped_headers": ["mine"], "stamps": {"mine": [[["deep"]]]}, "mine": "kept", "x-death": [{"count": 1}], "redelivered": true}, "properties": {"correlation_id": "t-1", "reply_to": "rt", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "celery", "redelivered": true}, "priority": 6, "body_encoding": "base64", "delivery_tag": "old-tag"}}"#;

fn rules() -> Rules {
    Rules::new(Options::default(), 60, "node@h")
}

fn delivery(policy: RetryPolicy) -> Delivery {
    let env = Envelope::read(MSG.as_bytes()).unwrap().envelope;
    Delivery::of("celery", &env, MSG.as_bytes(), Arc::new(policy))
}

fn asking(d: Directive, class: Option<&str>) -> TaskError {
    TaskError::new(ErrorKind::TaskError, "run 1").with_detail(FailureDetail {
        exception: class.map(|c| ExceptionClass {
            module: "builtins".into(),
            name: c.into(),
        }),
        directive: Some(d),
    })
}

fn retry_asked(countdown_ms: u64) -> TaskError {
    asking(
        Directive::Retry {
            countdown: Some(Duration::from_millis(countdown_ms)),
            max_retries: None,
        },
        None,
    )
}

#[test]
fn a_retry_rewrites_only_what_celerys_retry_changes() {
    let d = delivery(RetryPolicy::default());
    assert_eq!((d.retries, d.priority, d.again), (1, 6, true));
    let Verdict::Retry(r) = judge(&rules(), &d, "faults.flaky", "t-1", &retry_asked(1500)) else {
        panic!("not a retry");
    };
    assert_eq!(r.countdown, Duration::from_millis(1500));
    assert_eq!(r.message.0, protocol::queue_key("celery", 6));
    let old: Value = serde_json::from_str(MSG).unwrap();
    let new: Value = serde_json::from_str(&r.message.1).unwrap();
    let (h, oh) = (&new["headers"], &old["headers"]);
    assert_eq!(h["retries"], 2);
    assert_eq!(
        h["parent_id"], "t-1",
        "Celery's retry is sent from inside the task"
    );
    let eta = protocol::parse_time(h["eta"].as_str().unwrap()).unwrap();
    let ahead = eta.signed_duration_since(Utc::now()).num_milliseconds();
    assert!((1000..=1500).contains(&ahead), "{ahead}");
    assert!(h.get("redelivered").is_none() && h.get("x-death").is_none());
    for k in [
        "id",
        "task",
        "group",
        "group_index",
        "expires",
        "timelimit",
        "root_id",
        "stamps",
        "stamped_headers",
        "mine",
        "argsrepr",
    ] {
        assert_eq!(h[k], oh[k], "{k}");
    }
    assert_eq!(
        new["body"], old["body"],
        "args, kwargs, link, chain, chord unchanged"
    );
    let p = &new["properties"];
    assert_ne!(p["delivery_tag"], "old-tag");
    assert_eq!(p["priority"], 6);
    assert_eq!(p["correlation_id"], "t-1");
    assert!(p["delivery_info"].get("redelivered").is_none());
    // Without an exception: RETRY with `result: null`, as Celery's
    // `self.retry()` without `exc`.
    let m = r.meta("t-1", Some("g-1"), None);
    assert_eq!(m.status, State::Retry);
    assert_eq!(m.result, Value::Null);
    assert_eq!(m.date_done, None);
    assert_eq!(m.children, vec![json!([["t-1", null], null])]);
    assert!(
        r.traceback.contains("Retry in 1s 500ms: run 1"),
        "{}",
        r.traceback
    );
}

#[test]
fn c4_a_retry_keeps_stamps_nested_deeper_than_a_json_tree_goes() {
    let deep = format!("{}\"x\"{}", "[".repeat(300), "]".repeat(300));
    let msg = MSG.replace("[[[\"deep\"]]]", &deep);
    let json = retry_envelope(msg.as_bytes(), "t-1", 2, Utc::now()).unwrap();
    assert!(json.contains(&deep), "the stamps went on as they came");
    let r = Envelope::read(json.as_bytes()).unwrap();
    assert_eq!(r.envelope.headers.retries, 2);
    assert!(r.refused.is_none(), "{:?}", r.refused);
}

#[test]
fn an_envelope_json_cannot_hold_is_rebuilt_from_the_tolerant_reading() {
    let nan = MSG.replace("\"mine\": \"kept\"", "\"mine\": NaN");
    let json = retry_envelope(nan.as_bytes(), "t-1", 2, Utc::now()).unwrap();
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["headers"]["retries"], 2);
    assert_eq!(v["headers"]["id"], "t-1");
    assert_eq!(
        v["body"],
        serde_json::from_str::<Value>(MSG).unwrap()["body"]
    );
    assert!(retry_envelope(b"[1]", "t-1", 2, Utc::now()).is_none());
}

#[test]
fn past_max_retries_the_original_error_or_max_retries_exceeded() {
    let mut d = delivery(RetryPolicy::default());
    d.retries = 3;
    match judge(&rules(), &d, "faults.flaky", "t-1", &retry_asked(0)) {
        Verdict::FailWith(x) => {
            assert_eq!(x.info.exc_type, "MaxRetriesExceededError");
            let text = x.info.exc_message[0].as_str().unwrap().to_string();
            assert!(
                text.starts_with("Can't retry faults.flaky[t-1] args:(\"/tmp/x\", 2) kwargs:{}"),
                "{text}"
            );
        }
        v => panic!("{v:?}"),
    }
    // With an exception: that exception.
    let e = asking(
        Directive::Retry {
            countdown: None,
            max_retries: Some(1),
        },
        Some("ValueError"),
    );
    match judge(&rules(), &d, "faults.flaky", "t-1", &e) {
        Verdict::Fail(e) => {
            assert_eq!(e.exception_class().unwrap().name, "ValueError");
            assert!(e.message.contains("max_retries 1"), "{}", e.message);
        }
        v => panic!("{v:?}"),
    }
    // Automatic retries of a kind: the kind's exception, with its
    // exception dict in the RETRY meta while retries are left.
    let p = RetryPolicy {
        on: vec![ErrorKind::Panic],
        delay: Duration::ZERO,
        ..RetryPolicy::default()
    };
    let panic = TaskError::new(ErrorKind::Panic, "boom");
    d.policy = Arc::new(p);
    d.retries = 0;
    let Verdict::Retry(r) = judge(&rules(), &d, "faults.panic", "t-1", &panic) else {
        panic!("not a retry");
    };
    assert_eq!(r.exc.unwrap().info.exc_type, "TaskPanic");
    d.retries = 3;
    assert!(
        matches!(judge(&rules(), &d, "faults.panic", "t-1", &panic), Verdict::Fail(e) if e.kind == ErrorKind::Panic)
    );
    // Not listed: as is.
    let other = TaskError::new(ErrorKind::TaskError, "no");
    assert!(matches!(
        judge(&rules(), &d, "faults.fail", "t-1", &other),
        Verdict::AsIs
    ));
}

#[test]
fn reject_ignore_and_the_requeue_cap() {
    let mut d = delivery(RetryPolicy::default());
    let r = rules();
    let ignore = asking(Directive::Ignore, None);
    assert!(matches!(
        judge(&r, &d, "t", "t-1", &ignore),
        Verdict::Ignore
    ));
    let no = asking(Directive::Reject { requeue: false }, None);
    match judge(&r, &d, "t", "t-1", &no) {
        Verdict::Reject(x) => {
            assert_eq!(
                (x.state, x.info.exc_type.as_str()),
                (State::Failure, "Reject")
            );
            assert_eq!(x.info.exc_message, vec![json!("run 1"), json!(false)]);
        }
        v => panic!("{v:?}"),
    }
    let yes = asking(Directive::Reject { requeue: true }, None);
    d.requeues = DEFAULT_MAX_REQUEUES - 1;
    assert!(matches!(judge(&r, &d, "t", "t-1", &yes), Verdict::Requeue));
    d.requeues = DEFAULT_MAX_REQUEUES;
    match judge(&r, &d, "t", "t-1", &yes) {
        Verdict::Reject(x) => {
            let text = x.info.exc_message[0].as_str().unwrap().to_string();
            assert!(text.contains("--max-requeues 20"), "{text}");
        }
        v => panic!("{v:?}"),
    }
}

#[test]
fn a_worker_lost_counts_toward_the_cap_and_names_every_death() {
    let lost = TaskError::new(
        ErrorKind::WorkerLost,
        "worker 2 (pid 9) killed by signal 11 (SIGSEGV) while running job 7; peak memory 1 KiB",
    );
    let policy = RetryPolicy {
        on: vec![ErrorKind::WorkerLost],
        max_retries: Some(10),
        delay: Duration::ZERO,
        backoff: None,
    };
    let mut d = delivery(policy);
    let Verdict::Retry(r) = judge(&rules(), &d, "faults.segfault", "t-1", &lost) else {
        panic!("not a retry");
    };
    let (list, death) = r.death.unwrap();
    assert_eq!(list, "billiard-host:deaths:t-1");
    assert!(death.starts_with("node@h (pid "), "{death}");
    assert!(
        death.ends_with("killed by signal 11 (SIGSEGV) while running job 7"),
        "{death}"
    );
    d.deaths = vec!["first death".into(), "second death".into()];
    match judge(&rules(), &d, "faults.segfault", "t-1", &lost) {
        Verdict::Fail(e) => {
            assert_eq!(e.kind, ErrorKind::WorkerLost);
            assert!(
                e.message
                    .contains("3 times, the cap (--max-worker-deaths 3)"),
                "{}",
                e.message
            );
            assert!(
                e.message
                    .contains("1) first death; 2) second death; 3) node@h"),
                "{}",
                e.message
            );
        }
        v => panic!("{v:?}"),
    }
    // Without retry-on-worker-lost the death is final at once, the
    // earlier ones named.
    d.policy = Arc::new(RetryPolicy::default());
    d.deaths.truncate(1);
    match judge(&rules(), &d, "faults.segfault", "t-1", &lost) {
        Verdict::Fail(e) => assert!(
            e.message
                .contains("earlier deaths running it: 1) first death"),
            "{}",
            e.message
        ),
        v => panic!("{v:?}"),
    }
}

#[test]
fn options_are_range_checked() {
    let mut o = Options::default();
    assert!(o.check().is_ok());
    o.max_worker_deaths = 0;
    assert!(o.check().is_err());
    o.max_worker_deaths = 3;
    o.policy.on = vec![ErrorKind::Terminated];
    assert!(o.check().is_err());
    o.policy.on = vec![];
    o.policy.delay = bounds::MAX_DURATION + Duration::from_secs(1);
    assert!(o.check().unwrap_err().contains("--default-retry-delay"));
}

#[test]
fn hostile_numbers_end_the_retries_by_name_never_overflow() {
    let p = RetryPolicy {
        on: vec![ErrorKind::TaskError],
        max_retries: None,
        delay: Duration::ZERO,
        backoff: None,
    };
    let mut d = delivery(p);
    let err = TaskError::new(ErrorKind::TaskError, "again");
    // A `retries` header at the top of the range: no retries + 1.
    d.retries = u32::MAX;
    match judge(&rules(), &d, "t", "t-1", &err) {
        Verdict::Fail(e) => assert!(
            e.message
                .contains("not retried: its retries header is 4294967295"),
            "{}",
            e.message
        ),
        v => panic!("{v:?}"),
    }
    // A countdown past the longest accepted duration: not sent.
    d.retries = 0;
    match judge(&rules(), &d, "t", "t-1", &retry_asked(u64::MAX)) {
        Verdict::Fail(e) => assert!(e.message.contains("the retry countdown"), "{}", e.message),
        v => panic!("{v:?}"),
    }
    // A negative header counts as none.
    let neg = MSG.replace("\"retries\": 1", "\"retries\": -7");
    let env = Envelope::read(neg.as_bytes()).unwrap().envelope;
    let d = Delivery::of(
        "celery",
        &env,
        neg.as_bytes(),
        Arc::new(RetryPolicy::default()),
    );
    assert_eq!(d.retries, 0);
}

#[test]
fn a_terminated_job_is_never_retried_whatever_the_policy_lists() {
    let p = RetryPolicy {
        on: vec![ErrorKind::Terminated],
        ..RetryPolicy::default()
    };
    let d = delivery(p);
    let revoked = TaskError::new(ErrorKind::Terminated, "terminated on request");
    assert!(matches!(
        judge(&rules(), &d, "t", "t-1", &revoked),
        Verdict::AsIs
    ));
}

#[test]
fn the_delivery_budget_reads_x_delivery_count_against_the_limit() {
    assert_eq!(budget(None, 20), Budget::Plenty);
    assert_eq!(budget(Some(0), 20), Budget::Plenty);
    assert_eq!(budget(Some(9), 20), Budget::Plenty);
    assert_eq!(budget(Some(10), 20), Budget::PastHalf { count: 10 });
    assert_eq!(budget(Some(19), 20), Budget::PastHalf { count: 19 });
    assert_eq!(budget(Some(20), 20), Budget::Last { count: 20 });
    assert_eq!(budget(Some(u64::MAX), 20), Budget::Last { count: u64::MAX });
    assert_eq!(budget(Some(1), 1), Budget::Last { count: 1 });
    assert_eq!(budget(Some(1), 2), Budget::PastHalf { count: 1 });
}

#[test]
fn a_requeue_on_the_last_delivery_allowed_is_stored_failure_not_dropped() {
    let mut d = delivery(RetryPolicy::default());
    let err = asking(Directive::Reject { requeue: true }, None);
    d.delivery_count = Some(19);
    assert!(matches!(
        judge(&rules(), &d, "faults.reject", "t-1", &err),
        Verdict::Requeue
    ));
    d.delivery_count = Some(20);
    match judge(&rules(), &d, "faults.reject", "t-1", &err) {
        Verdict::Reject(x) => {
            let m = x.info.exc_message[0].as_str().unwrap_or_default();
            assert!(
                m.contains("delivery 21 of at most 21 from quorum queue celery")
                    && m.contains("its last")
                    && m.contains("not requeued"),
                "{m}"
            );
        }
        v => panic!("{v:?}"),
    }
}

#[test]
fn a_worker_lost_near_the_delivery_limit_says_so_in_the_failure() {
    let mut d = delivery(RetryPolicy::default());
    d.deaths.clear();
    let err = TaskError::new(ErrorKind::WorkerLost, "the worker died (SIGKILL)");
    d.delivery_count = Some(3);
    assert!(matches!(
        judge(&rules(), &d, "faults.x", "t-1", &err),
        Verdict::AsIs
    ));
    d.delivery_count = Some(12);
    match judge(&rules(), &d, "faults.x", "t-1", &err) {
        Verdict::Fail(e) => assert!(
            e.message
                .starts_with("the worker died (SIGKILL); delivery 13 of at most 21")
                && e.message.contains("keeps coming back"),
            "{}",
            e.message
        ),
        v => panic!("{v:?}"),
    }
}
