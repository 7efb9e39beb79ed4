//! Issue 22, item 1 and item 7: every duration, size and count from outside
//! is range-checked where it enters (C1), library waits take
//! `Duration::MAX` as "no timeout" (C12), and a pool whose supervisor
//! thread died says so on every call and for every pending job (the
//! defence in depth of C1).

use crate::common;

use std::time::Duration;

use billiard_host::{ErrorKind, Pool, PoolBuilder, PoolError};

fn builder(workers: usize) -> PoolBuilder {
    common::pool_builder(workers, &["math", "hostile"])
}

/// The message every error and outcome of a pool killed by `msg` carries.
fn names_the_panic(text: &str, msg: &str) -> bool {
    text.contains("supervisor thread panicked") && text.contains(msg)
}

#[test]
fn c1_a_dead_supervisor_is_named_by_check_alive_every_call_and_every_pending_job() {
    let pool = builder(1).build().unwrap();
    assert!(pool.check_alive().is_ok());
    assert_eq!(pool.apply::<_, u64>("math", "square", (3u64,)).unwrap(), 9);
    // One job in flight (or about to be), one queued behind it, a map of
    // three: all pending when the supervisor dies.
    let running = pool
        .apply_async::<_, u64>("hostile", "nap", (60_000u64,))
        .unwrap();
    let queued = pool
        .apply_async::<_, u64>("math", "square", (4u64,))
        .unwrap();
    let map = pool
        .map_async::<_, u64>("hostile", "nap", [60_000u64, 1, 2], 1)
        .unwrap();
    pool.__test_panic_supervisor("c1 probe 7731").unwrap();

    for (what, outcome) in [("running", running.get()), ("queued", queued.get())] {
        let e = outcome.expect_err(what);
        assert_eq!(e.kind, ErrorKind::Terminated, "{what}: {e}");
        assert!(names_the_panic(&e.message, "c1 probe 7731"), "{what}: {e}");
        assert!(
            !e.message.contains("dropped when the pool shut down"),
            "{e}"
        );
    }
    let e = map.get().unwrap_err();
    assert!(names_the_panic(&e.message, "c1 probe 7731"), "map: {e}");

    // The pool is dead and says why, on every call, with the message.
    match pool.check_alive() {
        Err(PoolError::SupervisorPanicked(msg)) => assert_eq!(msg, "c1 probe 7731"),
        other => panic!("check_alive after the panic: {other:?}"),
    }
    let e = pool.apply::<_, u64>("math", "square", (5u64,)).unwrap_err();
    assert!(names_the_panic(&e.message, "c1 probe 7731"), "apply: {e}");
    let e = pool.stats().unwrap_err();
    assert!(names_the_panic(&e.message, "c1 probe 7731"), "stats: {e}");
    let e = pool.restart().unwrap_err();
    assert!(names_the_panic(&e.message, "c1 probe 7731"), "restart: {e}");
    let e = pool
        .map::<_, u64>("math", "square", [1u64, 2, 3], 2)
        .unwrap_err();
    assert!(names_the_panic(&e.message, "c1 probe 7731"), "map: {e}");
    match pool.join() {
        Err(e @ PoolError::SupervisorPanicked(_)) => {
            assert!(names_the_panic(&e.to_string(), "c1 probe 7731"), "{e}")
        }
        other => panic!("join after the panic: {other:?}"),
    }
}

#[test]
fn c1_check_alive_is_ok_while_running_and_draining_and_gone_after() {
    let pool = builder(1).build().unwrap();
    let slow = pool
        .apply_async::<_, u64>("hostile", "nap", (300u64,))
        .unwrap();
    pool.close();
    // Closed but draining: the supervisor still runs.
    assert!(pool.check_alive().is_ok() || slow.ready());
    assert_eq!(slow.get().unwrap(), 300);
    assert!(common::eventually(Duration::from_secs(30), || matches!(
        pool.check_alive(),
        Err(PoolError::Gone)
    )));
    pool.join().unwrap();
}

#[test]
fn c1_the_builder_refuses_out_of_range_settings_naming_them() {
    use billiard_host::bounds::MAX_DURATION;
    let over = MAX_DURATION + Duration::from_secs(1);
    let cases: Vec<(&str, PoolBuilder)> = vec![
        ("time_limit", builder(1).time_limit(Duration::MAX)),
        ("time_limit", builder(1).time_limit(over)),
        ("time_limit", builder(1).time_limit(Duration::ZERO)),
        ("soft_time_limit", builder(1).soft_time_limit(Duration::MAX)),
        ("load_timeout", builder(1).load_timeout(Duration::MAX)),
        ("load_timeout", builder(1).load_timeout(Duration::ZERO)),
        ("window", builder(1).restart_limit(3, Duration::MAX)),
        ("max_frame", builder(1).max_frame(0)),
        ("max_frame", builder(1).max_frame(usize::MAX)),
        ("max_tasks_per_child", builder(1).max_tasks_per_child(0)),
        ("max_memory_per_child", builder(1).max_memory_per_child(0)),
        ("address_space_limit", builder(1).address_space_limit(0)),
    ];
    for (setting, b) in cases {
        match b.build() {
            Err(PoolError::Config(msg)) => assert!(msg.contains(setting), "{setting}: {msg}"),
            Err(e) => panic!("{setting}: not a configuration error: {e}"),
            Ok(_) => panic!("{setting}: accepted"),
        }
    }
    // The bound itself is accepted, and works.
    let pool = builder(1)
        .time_limit(MAX_DURATION)
        .soft_time_limit(MAX_DURATION)
        .build()
        .unwrap();
    assert_eq!(pool.apply::<_, u64>("math", "square", (3u64,)).unwrap(), 9);
    pool.join().unwrap();
}

#[test]
fn c1_a_job_limit_out_of_range_ends_that_job_only() {
    use billiard_host::{JobOptions, RawJob};
    let pool = builder(2).build().unwrap();
    for (what, opts) in [
        (
            "time_limit",
            JobOptions::default().time_limit(Duration::MAX),
        ),
        (
            "soft_time_limit",
            JobOptions::default().soft_time_limit(Duration::MAX),
        ),
    ] {
        let e = pool
            .apply_async_with::<_, u64>("math", "square", (3u64,), opts)
            .unwrap()
            .get()
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadArgs, "{what}: {e}");
        assert!(
            e.message.contains(what) && e.message.contains("10 years"),
            "{e}"
        );
    }
    // In a stream, among good jobs, with chunks: only that job fails.
    let target = pool.task_ref("math", "square").unwrap();
    let job = |x: u64, limit: Option<Duration>| {
        let mut j = RawJob::new(
            target,
            billiard_host::Codec::Json,
            format!("[{x}]").into_bytes(),
        );
        j.limits.hard = limit;
        Ok(j)
    };
    let jobs = vec![
        job(1, None),
        job(2, Some(Duration::MAX)),
        job(3, Some(Duration::from_secs(5))),
        job(4, None),
    ];
    let mut got: Vec<(u64, Result<Vec<u8>, billiard_host::TaskError>)> =
        pool.imap_raw(jobs.into_iter(), true, 2).collect();
    got.sort_by_key(|(i, _)| *i);
    assert_eq!(got[0].1.as_deref().unwrap(), b"1");
    let e = got[1].1.as_ref().unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadArgs, "{e}");
    assert_eq!(got[2].1.as_deref().unwrap(), b"9");
    assert_eq!(got[3].1.as_deref().unwrap(), b"16");
    // The pool lives on.
    assert!(pool.check_alive().is_ok());
    assert_eq!(pool.apply::<_, u64>("math", "square", (5u64,)).unwrap(), 25);
    // A huge chunksize is taken as the most a chunk holds, not a panic.
    let ys: Vec<u64> = pool.map("math", "square", 0..10u64, usize::MAX).unwrap();
    assert_eq!(ys[9], 81);
    let ys: Vec<u64> = pool
        .map_async("math", "square", 0..10u64, usize::MAX)
        .unwrap()
        .get()
        .unwrap();
    assert_eq!(ys[3], 9);
    pool.join().unwrap();
}

#[test]
fn c12_duration_max_as_a_wait_timeout_means_no_timeout() {
    let pool = builder(1).build().unwrap();
    let r = pool
        .apply_async::<_, u64>("hostile", "nap", (50u64,))
        .unwrap();
    assert!(r.wait_timeout(Duration::MAX));
    assert_eq!(r.get_timeout(Duration::MAX).unwrap().unwrap(), 50);
    let r = pool
        .apply_async::<_, u64>("math", "square", (6u64,))
        .unwrap();
    assert_eq!(r.get_timeout(Duration::MAX).unwrap().unwrap(), 36);
    assert!(r.raw().wait_timeout(Duration::MAX));
    assert!(r.raw().get_timeout(Duration::MAX).is_some());
    pool.join().unwrap();

    let mut p = billiard_host::Process::new(common::plugin("math"), "square", (7u64,))
        .worker_exe(common::bin())
        .time_limit(Duration::from_secs(3600));
    let out = p.join_timeout(Duration::MAX).expect("the call ended");
    assert!(out.is_ok(), "{out:?}");
    // Process limits out of range end the call bad_args; a load timeout out
    // of range is refused at start.
    let mut p = billiard_host::Process::new(common::plugin("math"), "square", (7u64,))
        .worker_exe(common::bin())
        .time_limit(Duration::MAX);
    let e = p.join_timeout(Duration::MAX).unwrap().unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadArgs, "{e}");
    let mut p = billiard_host::Process::new(common::plugin("math"), "square", (7u64,))
        .worker_exe(common::bin())
        .load_timeout(Duration::MAX);
    let e = p.start().unwrap_err();
    assert!(e.message.contains("load_timeout"), "{e}");
}

/// `billiard-host ARGS` with `stdin` as its input; its output.
fn host_with_input(args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = common::host_command()
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let bytes = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&bytes);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

#[test]
fn c1_cli_values_past_their_bound_are_refused_with_exit_2() {
    let math = common::plugin_str("math");
    let dir = common::scratch("c1_cli_values");
    let cases = common::lines_file(
        &dir,
        "cases.jsonl",
        &[r#"{"task":"square","args":[3],"expect":{"ok":9}}"#],
    );
    let runs: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "run",
                &math,
                "--task",
                "square",
                "--args",
                "[3]",
                "--time-limit",
                "500000000000y",
            ],
            "--time-limit",
        ),
        (
            vec![
                "run",
                &math,
                "--task",
                "square",
                "--args",
                "[3]",
                "--soft-time-limit",
                "584000000000y",
            ],
            "--soft-time-limit",
        ),
        (
            vec![
                "run",
                &math,
                "--task",
                "square",
                "--args",
                "[3]",
                "--time-limit",
                "11years",
            ],
            "10 years",
        ),
        (
            vec![
                "run",
                &math,
                "--task",
                "square",
                "--args",
                "[3]",
                "--load-timeout",
                "584000000000y",
            ],
            "--load-timeout",
        ),
        (
            vec![
                "run",
                &math,
                "--task",
                "square",
                "--args",
                "[3]",
                "--chunksize",
                "2000000",
            ],
            "--chunksize",
        ),
        (
            vec![
                "run",
                &math,
                "--task",
                "square",
                "--args",
                "[3]",
                "--prefetch",
                "100000",
            ],
            "--prefetch",
        ),
        (
            vec![
                "run",
                &math,
                "--task",
                "square",
                "--args",
                "[3]",
                "--max-frame",
                "1",
            ],
            "--max-frame",
        ),
        (
            vec![
                "run",
                &math,
                "--task",
                "square",
                "--args",
                "[3]",
                "--max-frame",
                "5GiB",
            ],
            "--max-frame",
        ),
        (
            vec![
                "check",
                &math,
                "--cases",
                &cases,
                "--time-limit",
                "584000000000y",
            ],
            "--time-limit",
        ),
        (
            vec![
                "check",
                &math,
                "--cases",
                &cases,
                "--load-timeout",
                "584000000000y",
            ],
            "--load-timeout",
        ),
        (
            vec!["inspect", &math, "--timeout", "584000000000y"],
            "--timeout",
        ),
    ];
    for (args, names) in runs {
        let out = common::host(&args);
        let err = common::stderr(&out);
        assert_eq!(common::exit_code(&out), 2, "{args:?}: {err}");
        assert!(err.contains(names), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn c1_a_job_line_limit_past_the_bound_is_bad_args_for_that_line_only() {
    let math = common::plugin_str("math");
    let mut input = String::new();
    for _ in 0..5 {
        input.push_str("[2]\n");
    }
    input.push_str("{\"args\":[3],\"time_limit\":\"500000000000y\"}\n");
    input.push_str("{\"args\":[3],\"soft_time_limit\":\"584000000000y\"}\n");
    input.push_str("{\"args\":[3],\"time_limit\":\"11y\"}\n");
    for _ in 0..20 {
        input.push_str("[4]\n");
    }
    for chunksize in ["1", "3"] {
        let args = [
            "run",
            &math,
            "--task",
            "square",
            "-w",
            "2",
            "--chunksize",
            chunksize,
            "-i",
            "-",
        ];
        let out = host_with_input(&args, input.as_bytes());
        let lines = common::json_lines(&common::stdout(&out));
        assert_eq!(lines.len(), 28, "{}", common::stderr(&out));
        for (i, l) in lines.iter().enumerate() {
            if (5..8).contains(&i) {
                assert_eq!(l["error"]["kind"], "bad_args", "{l}");
                let msg = l["error"]["message"].as_str().unwrap();
                assert!(
                    msg.contains(&format!("line {}", i + 1)) && msg.contains("10 years"),
                    "{msg}"
                );
            } else {
                assert!(l["ok"].is_u64(), "{l}");
            }
        }
        assert_eq!(common::exit_code(&out), 1, "{}", common::stderr(&out));
    }
}

#[test]
fn c1_a_case_limit_past_the_bound_is_refused_naming_its_line() {
    let math = common::plugin_str("math");
    let dir = common::scratch("c1_case_limit");
    let cases = common::lines_file(
        &dir,
        "cases.jsonl",
        &[
            r#"{"task":"square","args":[3],"expect":{"ok":9}}"#,
            r#"{"task":"square","args":[3],"expect":{"ok":9},"time_limit":"584000000000y"}"#,
        ],
    );
    let out = common::host(["check", &math, "--cases", &cases]);
    let err = common::stderr(&out);
    assert_eq!(common::exit_code(&out), 2, "{err}");
    assert!(
        err.contains("2") && err.contains("time_limit") && err.contains("10 years"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("dropped"),
        "{err}"
    );
}

#[test]
fn c1_a_dead_supervisor_is_named_in_run_s_results_not_called_a_shutdown() {
    let math = common::plugin_str("math");
    let input = "[1]\n[2]\n[3]\n[4]\n[5]\n[6]\n";
    let mut cmd = common::host_command();
    cmd.args(["run", &math, "--task", "square", "-w", "1", "-i", "-"])
        .env("BILLIARD_HOST_TEST_PANIC_SUPERVISOR_AT_JOB", "3")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let lines = common::json_lines(&common::stdout(&out));
    assert_eq!(lines.len(), 6, "{}", common::stderr(&out));
    let failed: Vec<&serde_json::Value> = lines.iter().filter(|l| l["error"].is_object()).collect();
    assert!(!failed.is_empty(), "{lines:?}");
    for l in failed {
        let msg = l["error"]["message"].as_str().unwrap();
        assert!(msg.contains("supervisor thread panicked"), "{msg}");
        assert!(msg.contains("test hook"), "{msg}");
    }
    assert_ne!(common::exit_code(&out), 0);
}

/// A line of `n` bytes (a JSON array of one long number string).
fn long_line(n: usize) -> Vec<u8> {
    let mut l = Vec::with_capacity(n + 1);
    l.extend_from_slice(b"[\"");
    l.resize(n - 2, b'x');
    l.extend_from_slice(b"\"]");
    l
}

#[test]
fn c10_a_line_over_the_frame_limit_is_skipped_and_the_batch_goes_on() {
    let math = common::plugin_str("math");
    let limit = 64 * 1024;
    let mut input = b"[1]\n".to_vec();
    input.extend(long_line(3 << 20));
    input.extend(b"\n[2]\n\n");
    input.extend(long_line(limit + 1)); // one byte over
    input.extend(b"\n");
    input.extend(b"[3]\n");
    input.extend(long_line(limit)); // exactly at the limit: read, then judged by the task
    input.extend(b"\n[4]\n");
    input.extend(long_line(5 << 20)); // the last line, no newline
    for extra in [&[][..], &["--isolated"][..], &["--chunksize", "3"][..]] {
        let mut args = vec![
            "run",
            &math,
            "--task",
            "square",
            "-w",
            "1",
            "--max-frame",
            "64KiB",
            "-i",
            "-",
        ];
        args.extend_from_slice(extra);
        let out = host_with_input(&args, &input);
        let lines = common::json_lines(&common::stdout(&out));
        assert_eq!(lines.len(), 8, "{extra:?}: {}", common::stderr(&out));
        let oks: Vec<_> = [0, 2, 4, 6]
            .iter()
            .map(|&i| lines[i]["ok"].as_u64())
            .collect();
        assert_eq!(
            oks,
            [Some(1), Some(4), Some(9), Some(16)],
            "{extra:?}: {lines:?}"
        );
        for (i, lineno, bytes) in [(1, 2, 3 << 20), (3, 5, limit + 1), (7, 9, 5 << 20)] {
            let e = &lines[i]["error"];
            assert_eq!(e["kind"], "bad_args", "{extra:?}: {e}");
            let msg = e["message"].as_str().unwrap();
            assert!(
                msg.starts_with(&format!("line {lineno}: the line takes {bytes} bytes, over the frame limit of {limit} bytes")),
                "{extra:?}: {msg}"
            );
        }
        // The line at the limit was read and handed on (the task refuses a
        // string for a number).
        assert_eq!(lines[5]["error"]["kind"], "bad_args", "{}", lines[5]);
        assert!(!lines[5]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("skipped unread"));
    }
}

#[test]
fn c10_memory_stays_flat_while_a_huge_line_is_skipped() {
    use std::io::{BufRead, Write};
    let math = common::plugin_str("math");
    let mut child = common::host_command()
        .args([
            "run",
            &math,
            "--task",
            "square",
            "-w",
            "1",
            "--max-frame",
            "64KiB",
            "-i",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    // 256 MiB of one line, streamed: never in memory here either.
    stdin.write_all(b"[\"").unwrap();
    let block = vec![b'7'; 1 << 20];
    for _ in 0..256 {
        stdin.write_all(&block).unwrap();
    }
    stdin.write_all(b"\"]\n[5]\n").unwrap();
    stdin.flush().unwrap();
    // Both results out: the huge line was read past.
    let mut got = Vec::new();
    for _ in 0..2 {
        let mut l = String::new();
        stdout.read_line(&mut l).unwrap();
        got.push(l);
    }
    assert!(got[0].contains("skipped unread"), "{got:?}");
    assert!(got[1].contains("\"ok\":25"), "{got:?}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().code().is_some());
    assert!(
        hwm_kib < 64 * 1024,
        "peak RSS {hwm_kib} KiB while skipping a 256 MiB line"
    );
}

#[test]
fn c11_a_plugin_list_larger_than_a_datagram_reaches_the_supervisor() {
    // The hostile plugin given 48 times: a hello of ~500 KiB (one datagram
    // stops at the socket's 208 KiB). The zygote loads the file 48 times and
    // its list arrives whole: the pool then refuses the duplicate name, a
    // configuration error, not "cannot load the plugins ... it exited".
    let hostile = common::plugin("hostile");
    let mut b = Pool::builder().workers(1).worker_exe(common::bin());
    for _ in 0..48 {
        b = b.plugin(&hostile);
    }
    match b.build() {
        Err(PoolError::Config(msg)) => assert!(msg.contains("loaded twice"), "{msg}"),
        Err(e) => panic!("the plugin list did not arrive: {e}"),
        Ok(_) => panic!("duplicates accepted"),
    }
    let h = common::plugin_str("hostile");
    let mut args = vec!["run", h.as_str(), "--task", "nap", "--args", "[1]"];
    for _ in 0..47 {
        args.extend(["--plugin", h.as_str()]);
    }
    let out = common::host(&args);
    let err = common::stderr(&out);
    assert_eq!(common::exit_code(&out), 2, "{err}");
    assert!(err.contains("loaded twice"), "{err}");
    assert!(
        !err.contains("cannot load the plugins") && !err.contains("cannot send"),
        "{err}"
    );
}

#[test]
fn c1_a_grow_past_the_most_workers_is_refused_and_the_pool_serves_on() {
    let pool = builder(1).build().unwrap();
    for n in [usize::MAX, 513] {
        let e = pool.grow(n).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadArgs, "{e}");
        assert!(e.message.contains("at most 512"), "{e}");
    }
    pool.shrink(usize::MAX).unwrap();
    assert_eq!(pool.stats().unwrap().target_workers, 1);
    assert!(pool.check_alive().is_ok());
    assert_eq!(pool.apply::<_, u64>("math", "square", (4u64,)).unwrap(), 16);
    pool.join().unwrap();
}

#[test]
fn c10_a_big_item_fails_alone_in_its_chunk_in_the_library_too() {
    use serde_bytes::ByteBuf;
    let pool = Pool::builder()
        .workers(1)
        .worker_exe(common::bin())
        .plugin(common::plugin("bytes"))
        .max_frame(64 * 1024)
        .shm_threshold(None)
        .build()
        .unwrap();
    let items = || {
        [10usize, 20, 200_000, 30, 40, 50_000, 60]
            .map(|n| ByteBuf::from(vec![7u8; n]))
            .into_iter()
    };
    for chunksize in [1, 3, 7] {
        let got: Vec<Result<u64, _>> = pool
            .imap("bytes", "len", items(), chunksize)
            .unwrap()
            .collect();
        let lens: Vec<Option<u64>> = got.iter().map(|r| r.as_ref().ok().copied()).collect();
        assert_eq!(
            lens,
            [
                Some(10),
                Some(20),
                None,
                Some(30),
                Some(40),
                Some(50_000),
                Some(60)
            ],
            "chunksize {chunksize}: {got:?}"
        );
        let e = got[2].as_ref().unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadArgs, "{e}");
        let got = pool
            .map_async::<_, u64>("bytes", "len", items(), chunksize)
            .unwrap()
            .get()
            .unwrap_err();
        assert_eq!(got.kind, ErrorKind::BadArgs, "{got}");
    }
    pool.join().unwrap();
}

#[test]
fn c11_a_reload_puts_a_plugin_list_in_pieces_together_too() {
    // The hostile plugin's list (about 10 KB) comes in pieces, at start and
    // through the event loop on a reload.
    let pool = builder(1).build().unwrap();
    assert_eq!(pool.generation().gen, 1);
    pool.restart().unwrap();
    assert_eq!(pool.generation().gen, 2);
    assert!(pool
        .plugins()
        .iter()
        .any(|p| p.name == "hostile" && p.tasks.len() > 20));
    assert_eq!(pool.apply::<_, u64>("hostile", "nap", (1u64,)).unwrap(), 1);
    pool.join().unwrap();
}
