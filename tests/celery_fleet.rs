//! A fleet on one Redis: hosts with different visibility timeouts, Python
//! workers and kombu's own sweeper on the same queue, Redis refusing or
//! losing what the worker writes, signals while it waits (issue 22: C7,
//! C8, C15). A private redis-server per test, the real binary, the real
//! Python Celery client; every wait polls a condition with a deadline.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::celery::{self, RedisServer};
use common::celery::{hlen_unacked, lines, py, wait_until, DEADLINE};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

/// `billiard-host worker math --plugin hostile --broker URL <extra>`,
/// waited for until it consumes.
fn worker(url: &str, extra: &[&str]) -> celery::Worker {
    celery::worker_with(&["math", "hostile"], url, extra)
}

/// Sends `hostile.append_line(path, tag, ms)` (a line per execution) and
/// returns the task id.
fn send_append(url: &str, log: &Path, tag: &str, ms: u64) -> String {
    let id = py(
        url,
        &format!(
            "print(json.dumps(app.send_task('hostile.append_line', args=[{}, {}, {ms}]).id))",
            json!(log.display().to_string()),
            json!(tag)
        ),
    );
    id.as_str().expect("a task id").to_string()
}

/// Waits until no message is held or queued: a run that a wrong restore
/// caused has then ended too (its line is in the log).
fn settled(redis: &RedisServer) {
    wait_until("nothing left unacked or queued", DEADLINE, || {
        hlen_unacked(redis) == 0 && redis.cmd(&["LLEN", "celery"]).int() == 0
    });
}

/// The lines a worker logged that claim a restore or a lost broker.
fn false_claims(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| {
            l.contains("may run again")
                || l.contains("back on its queue")
                || l.contains("restored")
                || l.contains("lost the broker")
                || l.contains("Interrupted")
        })
        .map(str::to_string)
        .collect()
}

/// The process state letter of `pid` (`T`: stopped), from /proc.
fn proc_state(pid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
        .unwrap_or('?')
}

// ----- C7: hosts never re-run each other's live jobs -----------------------

#[test]
fn c7_a_short_timeout_host_never_restores_a_long_timeout_hosts_live_job() {
    let Some((redis, _py)) = celery::celery_or_skip(
        "c7_a_short_timeout_host_never_restores_a_long_timeout_hosts_live_job",
    ) else {
        return;
    };
    let url = redis.url();
    let dir = celery::unique_temp_dir("c7-fleet");
    let log_a = dir.join("a.log");
    let log_b = dir.join("b.log");
    // Host A renews its lease every 20 s; B sweeps every third of a second
    // for messages its own 1 s timeout calls stale (the report's 60 s / 6 s
    // fleet, tighter). Before leases, B restored A's job after 1 s.
    let a = worker(&url, &["-c", "1", "-n", "a", "--visibility-timeout", "60s"]);
    let id_a = send_append(&url, &log_a, "run", 5000);
    wait_until("the job to start on host A", DEADLINE, || {
        lines(&log_a).len() == 1
    });
    let b = worker(&url, &["-c", "1", "-n", "b", "--visibility-timeout", "1s"]);
    // And the other way round: a job of the short-lease host while the
    // long-timeout host sweeps too.
    let id_b = send_append(&url, &log_b, "run", 3000);
    wait_until("both jobs to succeed", DEADLINE, || {
        celery::succeeded(&redis, &id_a) && celery::succeeded(&redis, &id_b)
    });
    settled(&redis);
    assert_eq!(lines(&log_a), ["run"], "A's job ran more than once");
    assert_eq!(lines(&log_b), ["run"], "B's job ran more than once");
    for w in [&a, &b] {
        assert!(false_claims(&w.stderr()).is_empty(), "{}", w.stderr());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn c7_kombus_own_sweeper_never_restores_a_live_hosts_job() {
    let Some((redis, _py)) =
        celery::celery_or_skip("c7_kombus_own_sweeper_never_restores_a_live_hosts_job")
    else {
        return;
    };
    let url = redis.url();
    let dir = celery::unique_temp_dir("c7-kombu");
    let log = dir.join("runs.log");
    let _w = worker(&url, &["-c", "1", "--visibility-timeout", "2s"]);
    let id = send_append(&url, &log, "run", 4000);
    wait_until("the job to start", DEADLINE, || lines(&log).len() == 1);
    // kombu's restore_visible (what every Python worker's sweeper runs),
    // with the shortest timeouts a Python fleet could set, over and over
    // until the job is done: it must restore nothing.
    let v = py(
        &url,
        &format!(
            "import redis\n\
             r = redis.Redis.from_url({u})\n\
             restored = 0\n\
             with app.connection() as conn:\n\
             \x20   ch = conn.default_channel\n\
             \x20   while r.get('celery-task-meta-' + {id}) is None:\n\
             \x20       for vt in (0, 1, 3):\n\
             \x20           ch.visibility_timeout = vt\n\
             \x20           ch.qos.restore_visible(num=100, interval=1)\n\
             \x20       restored += r.llen('celery')\n\
             \x20       time.sleep(0.05)\n\
             print(json.dumps(restored))",
            u = json!(url),
            id = json!(id)
        ),
    );
    assert_eq!(v, 0, "kombu's sweeper restored a live host's message");
    wait_until("the job to succeed", DEADLINE, || {
        celery::succeeded(&redis, &id)
    });
    settled(&redis);
    assert_eq!(lines(&log), ["run"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn c7_kombus_sweeper_restores_a_dead_hosts_job_once_its_lease_ran_out() {
    let Some((redis, _py)) = celery::celery_or_skip(
        "c7_kombus_sweeper_restores_a_dead_hosts_job_once_its_lease_ran_out",
    ) else {
        return;
    };
    let url = redis.url();
    let mut a = worker(&url, &["-c", "1", "--visibility-timeout", "2s"]);
    let id = py(
        &url,
        "print(json.dumps(app.send_task('hostile.nap', args=[600000]).id))",
    );
    wait_until("the job to be reserved", DEADLINE, || {
        hlen_unacked(&redis) == 1
    });
    a.kill();
    // The lease is at most 3 s ahead (2 s rounded up to whole seconds): a
    // kombu sweeper with visibility timeout 0 restores it once it ran out.
    let v = py(
        &url,
        "import redis\n\
         with app.connection() as conn:\n\
         \x20   ch = conn.default_channel\n\
         \x20   ch.visibility_timeout = 0\n\
         \x20   while not conn.default_channel.client.llen('celery'):\n\
         \x20       ch.qos.restore_visible(num=100, interval=1)\n\
         \x20       time.sleep(0.05)\n\
         print(json.dumps(1))",
    );
    assert_eq!(v, 1);
    assert_eq!(hlen_unacked(&redis), 0);
    let back = redis.list_json("celery");
    assert_eq!(back.len(), 1);
    assert_eq!(back[0]["headers"]["id"], id);
    assert_eq!(back[0]["headers"]["redelivered"], true);
}

/// A Python `celery worker` (acks_late, solo pool) serving `py.slow(s, path)`
/// (appends a line, sleeps `s` seconds) on queue `celery`.
fn python_worker(python: &Path, url: &str, dir: &Path) -> celery::Worker {
    let tasks = "app.conf.task_acks_late = True\n\
                 @app.task(name='py.slow')\n\
                 def slow(s, path):\n\
                 \x20   with open(path, 'a') as f:\n\
                 \x20       f.write('run\\n')\n\
                 \x20   time.sleep(s)\n\
                 \x20   return s\n";
    let flags = ["--without-mingle", "-n", "py@%h"];
    celery::python_worker(python, url, dir, "pyslow", tasks, &flags)
}

#[test]
fn c7_our_sweeper_leaves_a_python_workers_long_job_alone() {
    let Some((redis, python)) =
        celery::celery_or_skip("c7_our_sweeper_leaves_a_python_workers_long_job_alone")
    else {
        return;
    };
    let url = redis.url();
    let dir = celery::unique_temp_dir("c7-python");
    let log = dir.join("slow.log");
    let _pyw = python_worker(&python, &url, &dir);
    let id = py(
        &url,
        &format!(
            "print(json.dumps(app.send_task('py.slow', args=[5, {}]).id))",
            json!(log.display().to_string())
        ),
    );
    let id = id.as_str().unwrap().to_string();
    wait_until("the Python job to start", DEADLINE, || {
        lines(&log).len() == 1
    });
    // Our host sweeps every third of a second with a 1 s lease; the Python
    // job (never renewed) is 5 s long. Before, it was restored and re-run
    // by our sweepers (the report's mixed2.py: started 4 times).
    let ours = worker(&url, &["-c", "1", "--visibility-timeout", "1s"]);
    wait_until("the Python job to succeed", DEADLINE, || {
        celery::succeeded(&redis, &id)
    });
    settled(&redis);
    assert_eq!(lines(&log), ["run"], "the Python job ran more than once");
    assert!(
        !ours.stderr().contains("restored message"),
        "{}",
        ours.stderr()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn c7_settings_that_cannot_guarantee_it_are_named_at_start() {
    let Some((redis, _py)) =
        celery::celery_or_skip("c7_settings_that_cannot_guarantee_it_are_named_at_start")
    else {
        return;
    };
    let url = redis.url();
    let w = worker(
        &url,
        &[
            "--visibility-timeout",
            "1ms",
            "--foreign-visibility-timeout",
            "2m",
        ],
    );
    let err = w.stderr();
    let warns: Vec<&str> = err.lines().filter(|l| l.contains("WARN")).collect();
    assert!(
        warns
            .iter()
            .any(|l| l.contains("--foreign-visibility-timeout 2m") && l.contains("Python")),
        "{err}"
    );
    assert!(
        warns.iter().any(|l| l.contains("--visibility-timeout 1ms")
            && l.contains("under a second")
            && l.contains("(300ms, renewed every 100ms)")),
        "{err}"
    );
    // The defaults guarantee it: no such warning.
    let quiet = worker(&url, &[]);
    assert!(
        !quiet.stderr().contains("visibility-timeout"),
        "{}",
        quiet.stderr()
    );
}

// ----- C8: a result Redis refuses never stalls the worker ------------------

#[test]
fn c8_a_result_expiry_redis_cannot_take_is_refused_at_start() {
    let Some((redis, _py)) =
        celery::celery_or_skip("c8_a_result_expiry_redis_cannot_take_is_refused_at_start")
    else {
        return;
    };
    let url = redis.url();
    let math = common::plugin_str("math");
    for bad in ["300000000y", "11y", "3651days"] {
        let mut cmd = common::host_command();
        cmd.args(["worker", &math, "--broker", &url, "--result-expires", bad]);
        let out = celery::run_with_timeout(cmd, Duration::from_secs(60));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(
            err.contains("--result-expires") && err.contains("10 years"),
            "{bad}: {err}"
        );
    }
    // The longest accepted expiry is one SETEX takes; a sub-second one is
    // a second, not "for ever".
    for (flag, lo, hi) in [("3650days", 315_359_000, 315_360_000), ("500ms", 1, 1)] {
        let w = worker(&url, &["-c", "1", "--result-expires", flag]);
        let v = py(
            &url,
            "r = app.send_task('math.square', args=[7])\nr.get(timeout=60)\nprint(json.dumps(r.id))",
        );
        let key = format!("celery-task-meta-{}", v.as_str().unwrap());
        let ttl = redis.cmd(&["TTL", &key]).int();
        // 500 ms: the key may already be gone (-2); never kept for ever (-1).
        if flag == "500ms" {
            assert!(ttl == 1 || ttl == 0 || ttl == -2, "{flag}: TTL {ttl}");
        } else {
            assert!((lo..=hi).contains(&ttl), "{flag}: TTL {ttl}");
        }
        drop(w);
    }
}

#[test]
fn c8_results_redis_refuses_for_good_are_not_retried_for_ever() {
    let Some((redis, _py)) =
        celery::celery_or_skip("c8_results_redis_refuses_for_good_are_not_retried_for_ever")
    else {
        return;
    };
    // A user that may do everything but SETEX: every result store fails
    // with NOPERM, the same way each time (as an expiry Redis refuses did).
    redis.cmd(&[
        "ACL", "SETUSER", "w", "on", ">pw", "~*", "&*", "+@all", "-setex",
    ]);
    let url = format!("redis://w:pw@127.0.0.1:{}/0", redis.port());
    let mut w = worker(&url, &["-c", "2"]);
    let ids = py(
        &redis.url(),
        "print(json.dumps([app.send_task('math.square', args=[i]).id for i in range(6)]))",
    );
    // All six are answered (acked) although no result could be stored: the
    // slots are not held for ever.
    wait_until("every message to be acked", DEADLINE, || {
        hlen_unacked(&redis) == 0 && redis.cmd(&["LLEN", "celery"]).int() == 0
    });
    for id in ids.as_array().unwrap() {
        assert!(redis.task_meta(id.as_str().unwrap()).is_none());
    }
    wait_until("the refusals to be logged", DEADLINE, || {
        w.stderr()
            .matches("cannot store the result of task")
            .count()
            == 6
    });
    assert!(
        // Redis 7's words for an ACL refusal inside a script (6's: NOPERM).
        w.stderr().contains("can't run this command")
            || w.stderr().contains("NOPERM")
            || w.stderr().contains("no permissions"),
        "{}",
        w.stderr()
    );
    // A warm stop ends, and the summary counts what was stored: nothing.
    w.signal(Signal::SIGTERM);
    let status = w.wait_timeout(DEADLINE).expect("a warm stop ends");
    assert!(status.success(), "{}", w.stderr());
    let err = w.stderr();
    let summary = err
        .lines()
        .find(|l| l.contains("shutdown complete"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(summary.contains("succeeded=0"), "{summary}");
    assert!(summary.contains("unstored=6"), "{summary}");
}

#[test]
fn c8_a_warm_stop_ends_while_redis_refuses_stores_for_now() {
    let Some((redis, _py)) =
        celery::celery_or_skip("c8_a_warm_stop_ends_while_redis_refuses_stores_for_now")
    else {
        return;
    };
    let url = redis.url();
    let dir = celery::unique_temp_dir("c8-oom");
    let log = dir.join("runs.log");
    let mut a = worker(&url, &["-c", "1", "--visibility-timeout", "2s"]);
    let id = send_append(&url, &log, "run", 4000);
    wait_until("the job to start", DEADLINE, || lines(&log).len() == 1);
    // Redis at maxmemory (while the job still has seconds to run): every
    // write is refused with OOM, which passes once memory is freed, so it
    // is retried (not given up at once)...
    redis.cmd(&["CONFIG", "SET", "maxmemory", "1"]);
    wait_until("the store to be retried", DEADLINE, || {
        a.stderr().contains("cannot store 1 result(s) yet") && a.stderr().contains("OOM")
    });
    // ... but a warm stop does not wait for ever: it gives up after its
    // grace, leaves the message unacked and ends.
    a.signal(Signal::SIGTERM);
    let status = a.wait_timeout(DEADLINE).expect("a warm stop ends");
    assert!(status.success(), "{}", a.stderr());
    let err = a.stderr();
    assert!(err.contains("giving up storing 1 result(s)"), "{err}");
    let summary = err
        .lines()
        .find(|l| l.contains("shutdown complete"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(summary.contains("succeeded=0"), "{summary}");
    assert!(summary.contains("unstored=1"), "{summary}");
    assert_eq!(hlen_unacked(&redis), 1, "the message stays unacked");
    // Memory back: another host restores it once the lease ran out and
    // runs it (at least once: the first run's result was never stored).
    redis.cmd(&["CONFIG", "SET", "maxmemory", "0"]);
    let _b = worker(&url, &["-c", "1", "--visibility-timeout", "2s"]);
    wait_until("the job to succeed on host B", DEADLINE, || {
        celery::succeeded(&redis, &id)
    });
    assert_eq!(lines(&log), ["run", "run"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn c8_a_follow_up_redis_refuses_costs_only_itself() {
    let Some((redis, _py)) =
        celery::celery_or_skip("c8_a_follow_up_redis_refuses_costs_only_itself")
    else {
        return;
    };
    let url = redis.url();
    // A chain whose next step goes to a "queue" whose key holds a string:
    // that LPUSH fails for good; the first step's result is stored, its
    // message acked, and the refusal logged.
    redis.cmd(&["SET", "blocked", "a string, not a list"]);
    let w = worker(&url, &["-c", "1"]);
    let v = py(
        &url,
        "from celery import chain\n\
         c = chain(app.signature('math.square', args=[3]), app.signature('math.square', queue='blocked'))\n\
         r = c.apply_async()\n\
         print(json.dumps([r.parent.get(timeout=60), r.id]))",
    );
    assert_eq!(v[0], 9);
    wait_until("the ack", DEADLINE, || hlen_unacked(&redis) == 0);
    wait_until("the refused follow-up to be logged", DEADLINE, || {
        w.stderr().contains("refused 1 of its follow-up message(s)")
    });
    // The worker carries on.
    let v = py(
        &url,
        "print(json.dumps(app.send_task('math.square', args=[5]).get(timeout=60)))",
    );
    assert_eq!(v, 25);
}

// ----- C15: log lines say what happened -----------------------------------

#[test]
fn c15_a_duplicated_envelope_is_two_reservations_and_no_false_restore() {
    let Some((redis, _py)) = celery::celery_or_skip(
        "c15_a_duplicated_envelope_is_two_reservations_and_no_false_restore",
    ) else {
        return;
    };
    let url = redis.url();
    let dir = celery::unique_temp_dir("c15-dup");
    let log = dir.join("runs.log");
    // The very same envelope (same delivery tag, same id) pushed twice.
    let id = send_append(&url, &log, "run", 1500);
    let raw = redis.cmd(&["LINDEX", "celery", "0"]).bytes().to_vec();
    redis.cmd(&[b"LPUSH".as_slice(), b"celery", &raw]);
    assert_eq!(redis.cmd(&["LLEN", "celery"]).int(), 2);
    let w = worker(&url, &["-c", "2"]);
    wait_until("both copies to run and be acked", DEADLINE, || {
        lines(&log).len() == 2 && hlen_unacked(&redis) == 0 && celery::succeeded(&redis, &id)
    });
    // Each copy is its own reservation: both were held (two entries while
    // they ran), both acked, and neither finish claims a restore.
    assert!(false_claims(&w.stderr()).is_empty(), "{}", w.stderr());
    assert_eq!(redis.cmd(&["ZCARD", "billiard-host:leases"]).int(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn c15_flushall_mid_task_still_sends_the_chain_step_and_says_so() {
    let Some((redis, _py)) =
        celery::celery_or_skip("c15_flushall_mid_task_still_sends_the_chain_step_and_says_so")
    else {
        return;
    };
    let url = redis.url();
    let dir = celery::unique_temp_dir("c15-flush");
    let log = dir.join("runs.log");
    let _keep = redis.cmd(&["CONFIG", "SET", "appendonly", "no"]);
    let w = worker(&url, &["-c", "1"]);
    let ids = py(
        &url,
        &format!(
            "from celery import chain\n\
             c = chain(app.signature('hostile.append_line', args=[{}, 'first', 4000]),\n\
             \x20         app.signature('math.square'))\n\
             r = c.apply_async()\n\
             print(json.dumps([r.parent.id, r.id]))",
            json!(log.display().to_string())
        ),
    );
    let (first, next) = (ids[0].as_str().unwrap(), ids[1].as_str().unwrap());
    wait_until("the first step to start", DEADLINE, || {
        lines(&log).len() == 1
    });
    redis.cmd(&["FLUSHALL"]);
    wait_until("the chain's next step to run", DEADLINE, || {
        celery::succeeded(&redis, next)
    });
    assert_eq!(redis.task_meta(next).unwrap()["result"], 4000 * 4000);
    assert!(
        celery::succeeded(&redis, first),
        "the first step's result is stored"
    );
    let err = w.stderr();
    assert!(
        err.contains("without having been restored (flushed or deleted)"),
        "{err}"
    );
    assert!(!err.contains("may run again"), "{err}");
    settled(&redis);
    assert_eq!(lines(&log).len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn c15_a_host_stopped_past_its_lease_says_its_job_may_run_again() {
    let Some((redis, _py)) =
        celery::celery_or_skip("c15_a_host_stopped_past_its_lease_says_its_job_may_run_again")
    else {
        return;
    };
    let url = redis.url();
    let dir = celery::unique_temp_dir("c15-lapsed");
    let (log, next) = (dir.join("runs.log"), dir.join("next.log"));
    let a = worker(&url, &["-c", "1", "-n", "a", "--visibility-timeout", "1s"]);
    let ids = py(
        &url,
        &format!(
            "from celery import chain\n\
             c = chain(app.signature('hostile.append_line', args=[{}, 'run', 4000]),\n\
             \x20         app.signature('hostile.append_line', args=[{}, 'next', 0], immutable=True))\n\
             r = c.apply_async()\n\
             print(json.dumps([r.parent.id, r.id]))",
            json!(log.display().to_string()),
            json!(next.display().to_string())
        ),
    );
    let (first, step) = (ids[0].as_str().unwrap(), ids[1].as_str().unwrap());
    wait_until("the job to start on A", DEADLINE, || lines(&log).len() == 1);
    // A stops (the host only: its worker process finishes the job), its
    // lease lapses, B restores the message and runs it again.
    a.signal(Signal::SIGSTOP);
    wait_until("A to stop", DEADLINE, || proc_state(a.pid()) == 'T');
    let b = worker(&url, &["-c", "1", "-n", "b", "--visibility-timeout", "1s"]);
    wait_until("B to run the restored message", DEADLINE, || {
        lines(&log).len() == 2
    });
    a.signal(Signal::SIGCONT);
    wait_until("the chain's step", DEADLINE, || {
        celery::succeeded(&redis, step)
    });
    settled(&redis);
    assert!(celery::succeeded(&redis, first));
    // The one true "may run again": A's finish found its message restored,
    // kept its result, and left the follow-up to B (sent once).
    wait_until("A to finish its late job", DEADLINE, || {
        a.stderr().contains(&format!(
            "task {first} finished after a sweeper had put its message back"
        ))
    });
    assert!(a.stderr().contains("it may run again"), "{}", a.stderr());
    assert!(
        b.stderr().contains("its lease ran out"),
        "B names why it restored: {}",
        b.stderr()
    );
    assert_eq!(lines(&next), ["next"], "the chain's step was sent once");
    assert_eq!(lines(&log).len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn c15_sigstop_sigcont_and_sigterm_while_waiting_are_no_lost_broker() {
    let Some((redis, _py)) =
        celery::celery_or_skip("c15_sigstop_sigcont_and_sigterm_while_waiting_are_no_lost_broker")
    else {
        return;
    };
    let url = redis.url();
    let mut w = worker(&url, &["-c", "1"]);
    // Idle: blocked in BLMOVE. Linux ends a socket read with a timeout by
    // EINTR after a stop and continue, and on any handled signal.
    for _ in 0..3 {
        w.signal(Signal::SIGSTOP);
        wait_until("the worker to stop", DEADLINE, || {
            proc_state(w.pid()) == 'T'
        });
        w.signal(Signal::SIGCONT);
        wait_until("the worker to continue", DEADLINE, || {
            proc_state(w.pid()) != 'T'
        });
    }
    let v = py(
        &url,
        "print(json.dumps(app.send_task('math.square', args=[4]).get(timeout=60)))",
    );
    assert_eq!(v, 16, "the worker still consumes");
    w.signal(Signal::SIGTERM);
    let status = w.wait_timeout(DEADLINE).expect("a warm stop ends");
    assert!(status.success(), "{}", w.stderr());
    assert!(false_claims(&w.stderr()).is_empty(), "{}", w.stderr());
}

#[test]
fn c15_a_reply_lost_to_a_stalled_redis_is_no_restore() {
    let Some((redis, _py)) =
        celery::celery_or_skip("c15_a_reply_lost_to_a_stalled_redis_is_no_restore")
    else {
        return;
    };
    let url = redis.url();
    let dir = celery::unique_temp_dir("c15-stall");
    let log = dir.join("runs.log");
    // Debug lines of the worker module: the repeat says what it found.
    let mut cmd = common::host_command();
    cmd.args([
        "worker",
        &common::plugin_str("math"),
        "--plugin",
        &common::plugin_str("hostile"),
        "--broker",
        &url,
        "-c",
        "1",
    ])
    .env("BILLIARD_LOG", "info,billiard_host::celery::worker=debug");
    let w = celery::spawn_worker_cmd(cmd);
    // One job first: the finisher's connection is open, so the stalled
    // call below is the finish itself (not the opening of a connection).
    let warm = py(
        &url,
        "print(json.dumps(app.send_task('math.square', args=[2]).get(timeout=60)))",
    );
    assert_eq!(warm, 4);
    let id = send_append(&url, &log, "run", 4000);
    wait_until("the job to start", DEADLINE, || lines(&log).len() == 1);
    // Redis stalls past the worker's 10 s read timeout while the job's
    // finish is in flight: the finish is carried out once Redis resumes,
    // but its reply is lost; the retry finds the message acked.
    let pid = Pid::from_raw(redis.pid().expect("redis pid"));
    kill(pid, Signal::SIGSTOP).unwrap();
    wait_until("the worker to notice", DEADLINE, || {
        w.stderr().contains("cannot store 1 result(s) yet")
    });
    kill(pid, Signal::SIGCONT).unwrap();
    wait_until("the result and the ack", DEADLINE, || {
        celery::succeeded(&redis, &id) && hlen_unacked(&redis) == 0
    });
    wait_until("the stored result to be logged", DEADLINE, || {
        w.stderr()
            .contains("stored 1 result(s) that had waited for Redis")
    });
    let err = w.stderr();
    assert!(!err.contains("may run again"), "{err}");
    assert!(!err.contains("back on its queue"), "{err}");
    assert!(!err.contains("without having been restored"), "{err}");
    assert!(
        err.contains(&format!(
            "task {id}: a store whose reply was lost had already finished it"
        )),
        "{err}"
    );
    settled(&redis);
    assert_eq!(lines(&log), ["run"]);
    let _ = std::fs::remove_dir_all(&dir);
}

// ----- issue 26: a fleet of eight, hosts killed and Redis restarted --------

/// A host whose pool runs in `dir` (relative task paths land there), so
/// each host's runs are counted in a file of its own.
fn host_in(url: &str, dir: &Path, name: &str) -> celery::Worker {
    let mut cmd = common::host_command();
    cmd.arg("worker")
        .arg(common::plugin_str("math"))
        .arg("--plugin")
        .arg(common::plugin_str("hostile"))
        .args(["--broker", url, "-c", "1", "-n", name])
        // Leases of 5 s, renewed every 1.7 s: a loaded machine does not
        // starve a live host's keeper that long; a killed host's messages
        // are back within seconds.
        .args(["--visibility-timeout", "5s"])
        .current_dir(dir);
    celery::spawn_worker_cmd(cmd)
}

#[test]
fn k26_a_fleet_of_eight_loses_nothing_and_runs_nothing_twice_while_its_host_lives() {
    let name = "k26_a_fleet_of_eight_loses_nothing_and_runs_nothing_twice_while_its_host_lives";
    if celery::python_or_skip(name).is_none() || celery::redis_or_skip(name).is_none() {
        return;
    }
    // Every acknowledged write survives a SIGKILL of Redis (as in
    // every_job_completes_when_redis_restarts_mid_batch).
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let url = redis.url();
    let dir = celery::unique_temp_dir("k26-fleet");
    let dirs: Vec<_> = (0..8).map(|i| dir.join(format!("h{i}"))).collect();
    let mut hosts: Vec<Option<celery::Worker>> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            std::fs::create_dir_all(d).unwrap();
            Some(host_in(&url, d, &format!("h{i}")))
        })
        .collect();
    // 400 tasks, each appending its number to runs.log in the directory
    // of the host that runs it, then napping 30 ms.
    let ids = py(
        &url,
        "ids = [app.send_task('hostile.append_line', args=['runs.log', str(i), 30]).id for i in range(400)]\n\
         print(json.dumps(ids))",
    );
    let ids: Vec<String> = ids
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let done = |redis: &RedisServer| ids.iter().filter(|id| celery::succeeded(redis, id)).count();
    // Two hosts are killed (SIGKILL of the host and its pool) while they
    // run tasks...
    wait_until("a quarter of the results", DEADLINE, || done(&redis) >= 100);
    for h in [0, 1] {
        if let Some(mut w) = hosts[h].take() {
            w.kill();
        }
    }
    // ... and Redis while the others run theirs.
    wait_until("half of the results", DEADLINE, || done(&redis) >= 200);
    redis.kill();
    redis.restart();
    wait_until("every result", DEADLINE, || done(&redis) == ids.len());
    settled(&redis);
    // Nothing lost: every task succeeded (above) and ran somewhere.
    let runs: Vec<Vec<String>> = dirs.iter().map(|d| lines(&d.join("runs.log"))).collect();
    let mut per_task = vec![(0usize, 0usize); ids.len()];
    for (h, log) in runs.iter().enumerate() {
        let killed = h < 2;
        let mut seen = std::collections::HashSet::new();
        for l in log {
            let i: usize = l
                .parse()
                .unwrap_or_else(|_| panic!("host {h} logged {l:?}"));
            assert!(seen.insert(i), "host h{h} ran task {i} twice: {log:?}");
            if killed {
                per_task[i].0 += 1;
            } else {
                per_task[i].1 += 1;
            }
        }
    }
    for (i, (on_killed, on_live)) in per_task.iter().enumerate() {
        assert!(on_killed + on_live >= 1, "task {i} never ran");
        // Twice only when the first run's host was killed: at most one run
        // on the hosts that lived.
        assert!(
            *on_live <= 1,
            "task {i} ran {on_live} times on hosts that lived ({on_killed} on killed ones)"
        );
    }
    for (h, w) in hosts.iter().enumerate() {
        if let Some(w) = w {
            let err = w.stderr();
            assert!(
                !err.contains("may run again") && !err.contains("poison message"),
                "host h{h}: {err}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
