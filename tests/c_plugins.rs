//! C plugins (issue 27): `plugins/c-example` (C) and `plugins/cpp-example`
//! (C++), built with `make` by `common::c_plugin`, through `inspect`, `run`,
//! `check`, the `Pool` and `Process` APIs, the sandbox and the Celery
//! worker; a pool holding a Rust and a C plugin; the hostile variants of
//! `tests/fixtures/c-abi/hostile.c`, refused at load or contained at run
//! time. (The descriptor's evolution rules are tested in
//! tests/abi_evolution.rs.)

mod common;

use std::time::Duration;

use billiard_host::{Codec, ErrorKind, Plugin, PluginKind, Pool, Process, StartMethod};
use common::{c_plugin, c_plugin_str, exit_code, host, plugin, stderr, stdout};
use serde_json::{json, Value};

/// The JSON lines of `run`'s stdout.
fn lines(out: &std::process::Output) -> Vec<Value> {
    stdout(out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// `run PLUGIN -t TASK --args ARGS <extra>`: its one result line.
fn run_one(plugin: &str, task: &str, args: &str, extra: &[&str]) -> Value {
    let mut argv = vec!["run", plugin, "-t", task, "--args", args];
    argv.extend_from_slice(extra);
    let out = host(&argv);
    let got = lines(&out);
    assert_eq!(got.len(), 1, "{argv:?}: {got:?}\n{}", stderr(&out));
    got[0].clone()
}

fn error_kind(v: &Value) -> &str {
    v["error"]["kind"].as_str().unwrap_or("")
}

fn error_message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or("")
}

#[test]
fn each_example_inspects_as_a_c_plugin_with_its_tasks() {
    for (name, plugin_name, tasks) in [
        (
            "c-example",
            "c_example",
            &[
                "square",
                "add",
                "divide",
                "count",
                "wait_for_stop",
                "hang",
                "crash",
            ][..],
        ),
        (
            "cpp-example",
            "cpp_example",
            &[
                "square",
                "mean",
                "throw_error",
                "wait_for_stop",
                "hang",
                "crash",
            ][..],
        ),
    ] {
        let path = c_plugin_str(name);
        let out = host(["inspect", &path]);
        assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
        let text = stdout(&out);
        assert!(
            text.starts_with(&format!("plugin:  {plugin_name} 0.1.0\n")),
            "{text}"
        );
        assert!(
            text.contains("\nabi:     1 (C plugin, billiard_plugin.h 1)\n"),
            "{text}"
        );
        assert!(text.contains("\nkind:    c (billiard_plugin.h"), "{text}");
        assert!(
            text.contains(&format!("\ntasks:   {}\n", tasks.len())),
            "{text}"
        );
        let out = host(["inspect", "--json", &path]);
        assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
        let info: Value = serde_json::from_str(&stdout(&out)).expect("inspect --json is JSON");
        assert_eq!(info["kind"], "c", "{info}");
        assert_eq!(info["abi_version"], 1, "{info}");
        let names: Vec<&str> = info["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert_eq!(names, tasks, "{info}");
    }
    // The streaming flag and the argument names and types as written.
    let info: Value = serde_json::from_str(&stdout(&host([
        "inspect",
        "--json",
        &c_plugin_str("c-example"),
    ])))
    .expect("JSON");
    let count = &info["tasks"][3];
    assert_eq!(count["streaming"], true, "{count}");
    assert_eq!(count["item"], "int", "{count}");
    assert_eq!(
        info["tasks"][1]["args"],
        json!([{"name": "a", "type": "int"}, {"name": "b", "type": "int"}])
    );
    // A Rust plugin says its kind too.
    let text = stdout(&host(["inspect", &common::plugin_str("math")]));
    assert!(
        text.contains("\nkind:    rust (billiard-plugin-api)\n"),
        "{text}"
    );
}

#[test]
fn examples_run_values_errors_and_the_plugins_own_bad_args() {
    let c = c_plugin_str("c-example");
    assert_eq!(run_one(&c, "square", "[7]", &[])["ok"], 49);
    assert_eq!(run_one(&c, "add", "[2, -5]", &[])["ok"], -3);
    let v = run_one(&c, "divide", "[1, 0]", &[]);
    assert_eq!(
        (error_kind(&v), error_message(&v)),
        ("task_error", "division by zero"),
        "{v}"
    );
    let v = run_one(&c, "square", "[\"seven\"]", &[]);
    assert_eq!(
        (error_kind(&v), error_message(&v)),
        ("bad_args", "square takes one integer, as [x]"),
        "{v}"
    );
    let v = run_one(&c, "add", "[1]", &[]);
    assert_eq!(error_kind(&v), "bad_args", "{v}");
    // A name the plugin does not have is the host's unknown_task.
    let out = host(["run", &c, "-t", "squar", "--args", "[1]"]);
    assert_ne!(exit_code(&out), 0);
    assert!(
        stderr(&out).contains("did you mean `square`")
            || stdout(&out).contains("did you mean `square`"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );

    let cpp = c_plugin_str("cpp-example");
    assert_eq!(run_one(&cpp, "square", "[1.5]", &[])["ok"], 2.25);
    assert_eq!(run_one(&cpp, "mean", "[[1, 2, 6]]", &[])["ok"], 3.0);
    let v = run_one(&cpp, "mean", "[[]]", &[]);
    assert_eq!(
        (error_kind(&v), error_message(&v)),
        ("task_error", "mean of an empty list"),
        "{v}"
    );
    let v = run_one(&cpp, "mean", "[3]", &[]);
    assert_eq!(error_kind(&v), "bad_args", "{v}");
    // An exception thrown by a task is caught at the C++ boundary: panic,
    // with its what(), and the worker lives on (the next job runs in it).
    let input =
        "{\"task\": \"throw_error\", \"args\": []}\n{\"task\": \"square\", \"args\": [3]}\n";
    let dir = common::celery::unique_temp_dir("c-throw");
    let file = dir.join("in.jsonl");
    std::fs::write(&file, input).expect("write input");
    let out = host(["run", &cpp, "-w", "1", "-i", file.to_str().expect("utf-8")]);
    let got = lines(&out);
    assert_eq!(error_kind(&got[0]), "panic", "{got:?}");
    assert_eq!(
        error_message(&got[0]),
        "C++ exception: thrown from C++",
        "{got:?}"
    );
    assert_eq!(got[1]["ok"], 9.0, "{got:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_crash_is_worker_lost_and_the_other_jobs_finish() {
    for name in ["c-example", "cpp-example"] {
        let path = c_plugin_str(name);
        let mut input = String::new();
        for i in 0..12 {
            if i == 5 {
                input.push_str("{\"task\": \"crash\", \"args\": []}\n");
            } else {
                input.push_str(&format!("{{\"task\": \"square\", \"args\": [{i}]}}\n"));
            }
        }
        let dir = common::celery::unique_temp_dir("c-crash");
        let file = dir.join("in.jsonl");
        std::fs::write(&file, input).expect("write input");
        let out = host(["run", &path, "-w", "2", "-i", file.to_str().expect("utf-8")]);
        let got = lines(&out);
        assert_eq!(got.len(), 12, "{got:?}");
        for (i, v) in got.iter().enumerate() {
            if i == 5 {
                assert_eq!(error_kind(v), "worker_lost", "{v}");
                assert!(error_message(v).contains("SIGSEGV"), "{v}");
            } else {
                let want = (i * i) as f64;
                assert_eq!(v["ok"].as_f64(), Some(want), "{name}: {v}");
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn the_stop_flag_ends_a_task_at_the_soft_limit_and_hang_meets_the_hard_one() {
    for name in ["c-example", "cpp-example"] {
        let path = c_plugin_str(name);
        let v = run_one(
            &path,
            "wait_for_stop",
            "[]",
            &["--soft-time-limit", "100ms"],
        );
        assert_eq!(
            (error_kind(&v), error_message(&v)),
            ("soft_time_limit", "stopped as asked"),
            "{name}: {v}"
        );
        let v = run_one(&path, "hang", "[]", &["--time-limit", "300ms"]);
        assert_eq!(error_kind(&v), "time_limit", "{name}: {v}");
    }
}

#[test]
fn a_streaming_c_task_emits_items_then_its_result() {
    let c = c_plugin_str("c-example");
    let out = host(["run", &c, "-t", "count", "--args", "[4]"]);
    let got = lines(&out);
    assert_eq!(
        got,
        vec![
            json!({"index": 0, "item": 0}),
            json!({"index": 0, "item": 1}),
            json!({"index": 0, "item": 2}),
            json!({"index": 0, "item": 3}),
            json!({"index": 0, "ok": 4}),
        ],
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_runs_golden_cases_on_a_c_plugin() {
    check_example_cases("c-example", "c_example", 7);
}

/// `check` over `plugins/EXAMPLE/cases.jsonl`: exit 0, the load line of a
/// C plugin named `name`, and `passed` cases passed.
fn check_example_cases(example: &str, name: &str, passed: usize) {
    let so = c_plugin_str(example);
    let cases = common::workspace_root().join(format!("plugins/{example}/cases.jsonl"));
    let out = host(["check", &so, "--cases", cases.to_str().expect("utf-8")]);
    let text = stdout(&out);
    assert_eq!(exit_code(&out), 0, "{text}\n{}", stderr(&out));
    assert!(
        text.contains(&format!(
            "{name} 0.1.0 loads: ABI version 1, a C plugin, billiard_plugin.h 1"
        )),
        "{text}"
    );
    assert!(text.contains(&format!("{passed} passed")), "{text}");
}

#[test]
fn a_pool_holds_a_rust_and_a_c_plugin_and_refuses_typed_bincode_by_name() {
    let pool = Pool::builder()
        .plugin(plugin("math"))
        .plugin(c_plugin("c-example"))
        .workers(2)
        .build()
        .expect("pool");
    let infos = pool.plugins();
    let kinds: Vec<PluginKind> = infos.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, vec![PluginKind::Rust, PluginKind::C]);
    // JSON to both.
    let rust = pool.task_ref("math", "square").expect("math.square");
    let c = pool
        .task_ref("c_example", "square")
        .expect("c_example.square");
    let a = pool
        .apply_raw(rust, Codec::Json, b"[6]".to_vec(), Default::default())
        .expect("submit");
    let b = pool
        .apply_raw(c, Codec::Json, b"[6]".to_vec(), Default::default())
        .expect("submit");
    assert_eq!(a.get(), Ok(b"36".to_vec()));
    assert_eq!(b.get(), Ok(b"36".to_vec()));
    // Typed (bincode) to the Rust one works; to the C one it is refused by
    // name, never decoded as garbage.
    assert_eq!(pool.apply::<_, u64>("math", "square", (6u64,)), Ok(36));
    let e = pool
        .apply::<_, i64>("c_example", "square", (6i64,))
        .expect_err("bincode to a C plugin is refused");
    assert_eq!(e.kind, ErrorKind::BadArgs, "{e}");
    assert!(
        e.message
            .contains("`c_example.square` is a task of a C plugin, which takes JSON only"),
        "{e}"
    );
    // A crash in the C plugin costs its worker; the Rust plugin's jobs go on.
    let crash = pool.task_ref("c_example", "crash").expect("crash");
    let lost = pool
        .apply_raw(crash, Codec::Json, b"[]".to_vec(), Default::default())
        .expect("submit");
    assert_eq!(lost.get().map_err(|e| e.kind), Err(ErrorKind::WorkerLost));
    assert_eq!(pool.apply::<_, u64>("math", "square", (7u64,)), Ok(49));
    let b = pool
        .apply_raw(c, Codec::Json, b"[7]".to_vec(), Default::default())
        .expect("submit");
    assert_eq!(b.get(), Ok(b"49".to_vec()));
    pool.close();
    pool.join().expect("join");
}

#[test]
fn in_process_calls_and_process_treat_a_c_plugin_alike() {
    let p = Plugin::load(c_plugin("c-example")).expect("loads");
    assert_eq!(p.kind(), PluginKind::C);
    // The typed in-process call goes through JSON.
    assert_eq!(p.call::<_, i64>("square", (9i64,)), Ok(81));
    assert_eq!(p.call_json("add", "[1, 2]"), Ok(json!(3)));
    let e = p
        .call::<_, i64>("divide", (1i64, 0i64))
        .expect_err("division by zero");
    assert_eq!(
        (e.kind, e.message.as_str()),
        (ErrorKind::TaskError, "division by zero")
    );
    // A task's result asked for as the wrong type is the caller's bad_args.
    let e = p
        .call::<_, String>("square", (3i64,))
        .expect_err("wrong type");
    assert_eq!(e.kind, ErrorKind::BadArgs, "{e}");

    // Process: one call in a fresh process, JSON in, JSON out.
    let mut one = Process::raw(
        c_plugin("c-example"),
        "square",
        Codec::Json,
        b"[5]".to_vec(),
    );
    assert_eq!(one.join(), Ok(b"25".to_vec()));
    let mut crash = Process::raw(c_plugin("c-example"), "crash", Codec::Json, b"[]".to_vec());
    assert_eq!(crash.join().map_err(|e| e.kind), Err(ErrorKind::WorkerLost));
    let mut soft = Process::raw(
        c_plugin("c-example"),
        "wait_for_stop",
        Codec::Json,
        b"[]".to_vec(),
    )
    .soft_time_limit(Duration::from_millis(100));
    assert_eq!(
        soft.join().map_err(|e| e.kind),
        Err(ErrorKind::SoftTimeLimit)
    );
    // Process::new is typed (bincode): refused by name.
    let e = Process::new(c_plugin("c-example"), "square", (5i64,))
        .join()
        .expect_err("refused");
    assert!(e.message.contains("takes JSON only"), "{e}");
}

#[test]
fn a_c_plugin_runs_in_the_strict_sandbox() {
    let c = c_plugin_str("c-example");
    let v = run_one(&c, "square", "[12]", &["--sandbox", "strict"]);
    assert_eq!(v["ok"], 144, "{v}");
    let v = run_one(&c, "crash", "[]", &["--sandbox", "strict"]);
    assert_eq!(error_kind(&v), "worker_lost", "{v}");
    // A spawned worker loads the plugin under its seccomp filter, where
    // the descriptor's reads cannot go through process_vm_readv.
    let strict_spawn = ["--sandbox", "strict", "--start-method", "spawn"];
    let v = run_one(&c, "square", "[13]", &strict_spawn);
    assert_eq!(v["ok"], 169, "{v}");
}

#[test]
fn hostile_descriptors_are_refused_naming_what_is_wrong() {
    for (name, want) in [
        (
            "c-bad-name",
            "the plugin's `name` points at unreadable memory",
        ),
        (
            "c-bad-tasks",
            "the entry of task 1 in its task table points at unreadable memory",
        ),
        (
            "c-bad-arg-name",
            "the name of argument 1 of task `with_arg` points at unreadable memory",
        ),
        ("c-huge-count", "lists 2147483648 tasks, more than the 4096"),
        (
            "c-dup-names",
            "it exports two tasks named `echo` (tasks 1 and 2 of its list)",
        ),
        ("c-null-call", "its descriptor's `call` is NULL"),
        ("c-short-size", "shorter than the"),
    ] {
        let path = c_plugin_str(name);
        let out = host(["inspect", &path]);
        assert_eq!(exit_code(&out), 2, "{name}: {}", stdout(&out));
        let err = stderr(&out);
        assert!(err.contains(&path) && err.contains(want), "{name}: {err}");
        // The same refusal in this process, with no crash.
        let e = Plugin::load(&path).expect_err("refused");
        assert!(e.reason.contains(want), "{name}: {e}");
        // ...and as a pool's build error.
        match Pool::builder().plugin(&path).workers(1).build() {
            Ok(_) => panic!("{name}: a pool was built"),
            Err(e) => assert!(e.to_string().contains(want), "{name}: {e}"),
        }
    }
    // A file that is neither kind names both symbols.
    let lib = common::system_library().expect("a system library to load");
    let out = host(["inspect", lib.to_str().expect("utf-8")]);
    assert_eq!(exit_code(&out), 2);
    let err = stderr(&out);
    assert!(
        err.contains("no billiard root module") && err.contains("no `billiard_plugin` descriptor"),
        "{err}"
    );
}

#[test]
fn hostile_calls_are_contained() {
    let path = c_plugin_str("c-hostile");
    // A writer kept past its call is refused; the later call's output is
    // its own.
    let dir = common::celery::unique_temp_dir("c-hostile");
    let file = dir.join("in.jsonl");
    std::fs::write(
        &file,
        "{\"task\": \"stash\", \"args\": []}\n{\"task\": \"use_stash\", \"args\": []}\n{\"task\": \"echo\", \"args\": [1, \"a\"]}\n",
    )
    .expect("write input");
    let out = host(["run", &path, "-w", "1", "-i", file.to_str().expect("utf-8")]);
    let got = lines(&out);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0]["ok"], 1);
    assert_eq!(got[1]["ok"], "refused", "{got:?}");
    assert_eq!(got[2]["ok"], json!([1, "a"]), "{got:?}");
    let _ = std::fs::remove_dir_all(dir);
    // In process, the same.
    let p = Plugin::load(&path).expect("loads");
    assert_eq!(p.call_json("stash", "[]"), Ok(json!(1)));
    assert_eq!(p.call_json("use_stash", "[]"), Ok(json!("refused")));

    let v = run_one(&path, "not_json", "[]", &[]);
    assert_eq!(error_kind(&v), "task_error", "{v}");
    assert!(
        error_message(&v).contains("returned a result that is not JSON"),
        "{v}"
    );
    let v = run_one(&path, "bad_status", "[]", &[]);
    assert_eq!(error_kind(&v), "task_error", "{v}");
    assert!(
        error_message(&v)
            .contains("returned status 42, which billiard_plugin.h does not define: what now"),
        "{v}"
    );
    let out = host(["run", &path, "-t", "emit_not_json", "--args", "[]"]);
    let got = lines(&out);
    assert_eq!(got[0], json!({"index": 0, "item": 1}), "{got:?}");
    assert_eq!(error_kind(&got[1]), "task_error", "{got:?}");
    assert!(
        error_message(&got[1]).contains("emitted an item that is not JSON"),
        "{got:?}"
    );
    let v = run_one(&path, "null_write", "[]", &[]);
    assert_eq!(error_kind(&v), "task_error", "{v}");
    assert!(
        error_message(&v).contains("called write with a NULL pointer"),
        "{v}"
    );
}

#[test]
fn the_celery_worker_runs_c_tasks_for_a_python_client() {
    let Some((redis, _py)) =
        common::celery::celery_or_skip("the_celery_worker_runs_c_tasks_for_a_python_client")
    else {
        return;
    };
    let url = redis.url();
    let _w = common::celery::spawn_worker([
        "worker".to_string(),
        c_plugin_str("c-example"),
        "--plugin".to_string(),
        common::plugin_str("math"),
        "--broker".to_string(),
        url.clone(),
        "-c".to_string(),
        "2".to_string(),
    ]);
    let script = format!(
        r#"{app}
def call(name, args=()):
    r = app.send_task(name, args=list(args))
    try:
        return {{"ok": r.get(timeout=60)}}
    except Exception as e:
        return {{"type": type(e).__name__, "msg": str(e), "state": r.state}}
print(json.dumps([call("c_example.square", [7]), call("c_example.add", [2, 3]),
                  call("c_example.divide", [1, 0]), call("c_example.square", ["x"]),
                  call("math.square", [4])]))
"#,
        app = common::celery::py_app(&url)
    );
    let got = common::celery::python_json(&script, &[]);
    assert_eq!(got[0], json!({"ok": 49}), "{got}");
    assert_eq!(got[1], json!({"ok": 5}), "{got}");
    assert_eq!(got[2]["state"], "FAILURE", "{got}");
    assert!(
        got[2]["msg"]
            .as_str()
            .unwrap_or("")
            .contains("division by zero"),
        "{got}"
    );
    assert_eq!(got[3]["state"], "FAILURE", "{got}");
    assert!(
        got[3]["msg"]
            .as_str()
            .unwrap_or("")
            .contains("square takes one integer"),
        "{got}"
    );
    assert_eq!(got[4], json!({"ok": 16}), "{got}");
}

#[test]
fn a_plugin_that_starts_threads_when_loaded_runs_in_a_pool_and_fork_refuses_it_naming_why() {
    // As a Go c-shared library does: the zygote, which forks the workers,
    // must stay single-threaded, so it leaves the plugin to each worker.
    let path = c_plugin_str("c-thread-ctor");
    let out = host(["inspect", &path]);
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    for method in [StartMethod::Forkserver, StartMethod::Spawn] {
        let pool = Pool::builder()
            .plugin(&path)
            .plugin(plugin("math"))
            .start_method(method)
            .workers(2)
            .build()
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        let names: Vec<String> = pool.plugins().iter().map(|p| p.name.clone()).collect();
        assert_eq!(names, ["hostile_c", "math"], "{method}");
        let echo = pool.task_ref("hostile_c", "echo").expect("echo");
        let r = pool
            .apply_raw(echo, Codec::Json, b"[1]".to_vec(), Default::default())
            .expect("submit");
        assert_eq!(r.get(), Ok(b"[1]".to_vec()), "{method}");
        assert_eq!(pool.apply::<_, u64>("math", "square", (5u64,)), Ok(25));
        pool.close();
        pool.join().expect("join");
    }
    let v = run_one(&path, "echo", "[1]", &[]);
    assert_eq!(v["ok"], json!([1]), "{v}");
    // The fork start method makes the zygote from a copy of the host,
    // which cannot become a single-threaded program again: refused by
    // name.
    let out = host([
        "run",
        &path,
        "-t",
        "echo",
        "--args",
        "[1]",
        "--start-method",
        "fork",
    ]);
    assert_ne!(exit_code(&out), 0);
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        said.contains("started 1 thread(s) while loading")
            && said.contains("use the forkserver (default) or spawn start method"),
        "{said}"
    );
}

#[test]
fn chunks_of_c_jobs_give_each_job_its_own_outcome() {
    // One FFI loop per chunk: values, the plugin's errors and a refused
    // late writer each land on their own job.
    let c = c_plugin_str("c-example");
    let dir = common::celery::unique_temp_dir("c-chunks");
    let file = dir.join("in.jsonl");
    std::fs::write(
        &file,
        "{\"task\": \"square\", \"args\": [2]}\n{\"task\": \"square\", \"args\": [\"x\"]}\n{\"task\": \"square\", \"args\": [4]}\n{\"task\": \"square\", \"args\": [5]}\n",
    )
    .expect("write input");
    let out = host([
        "run",
        &c,
        "-w",
        "1",
        "--chunksize",
        "4",
        "-i",
        file.to_str().expect("utf-8"),
    ]);
    let got = lines(&out);
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[0]["ok"], 4);
    assert_eq!(error_kind(&got[1]), "bad_args", "{got:?}");
    assert_eq!(got[2]["ok"], 16);
    assert_eq!(got[3]["ok"], 25);
    let hostile = c_plugin_str("c-hostile");
    let pool = Pool::builder()
        .plugin(&hostile)
        .workers(1)
        .build()
        .expect("pool");
    let jobs = ["stash", "use_stash", "not_json", "echo"].map(|t| {
        Ok(billiard_host::RawJob::new(
            pool.task_ref("hostile_c", t).expect("task"),
            Codec::Json,
            b"[7]".to_vec(),
        ))
    });
    let outcomes: Vec<_> = pool
        .imap_raw(jobs.into_iter(), true, 4)
        .map(|(_, o)| o)
        .collect();
    assert_eq!(outcomes[0], Ok(b"1".to_vec()));
    // The stash job's chunk has ended: its writer is refused. (Within one
    // chunk of one task a kept writer can only add to the running job's
    // own record, which the plugin writes anyway; the framing is the host's.)
    assert_eq!(outcomes[1], Ok(b"\"refused\"".to_vec()), "{outcomes:?}");
    assert_eq!(
        outcomes[2].as_ref().map_err(|e| e.kind),
        Err(ErrorKind::TaskError)
    );
    assert_eq!(outcomes[3], Ok(b"[7]".to_vec()));
    pool.close();
    pool.join().expect("join");
    let _ = std::fs::remove_dir_all(dir);
}

// ----- Go: plugins/go-example (cgo, -buildmode=c-shared) -------------------
//
// The Go runtime starts threads when the library loads: the zygote leaves
// the plugin to each worker (loaded after its fork, before READY).

/// `run PLUGIN -w N -i FILE <extra>` over `input`: its result lines.
fn run_file(plugin: &str, input: &str, extra: &[&str]) -> Vec<Value> {
    let dir = common::celery::unique_temp_dir("go-run");
    let file = dir.join("in.jsonl");
    std::fs::write(&file, input).expect("write input");
    let mut argv = vec!["run", plugin, "-i", file.to_str().expect("utf-8")];
    argv.extend_from_slice(extra);
    let out = host(&argv);
    let _ = std::fs::remove_dir_all(dir);
    lines(&out)
}

#[test]
fn the_go_example_inspects_as_a_c_plugin_with_its_tasks() {
    let path = c_plugin_str("go-example");
    let out = host(["inspect", &path]);
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("plugin:  go_example 0.1.0\n"), "{text}");
    assert!(
        text.contains("\nabi:     1 (C plugin, billiard_plugin.h 1)\n"),
        "{text}"
    );
    assert!(text.contains("\nkind:    c (billiard_plugin.h"), "{text}");
    let out = host(["inspect", "--json", &path]);
    let info: Value = serde_json::from_str(&stdout(&out)).expect("inspect --json is JSON");
    assert_eq!(info["kind"], "c", "{info}");
    let names: Vec<&str> = info["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "square",
            "add",
            "divide",
            "count",
            "sum_squares",
            "wait_for_stop",
            "hang",
            "crash",
            "go_panic",
            "leak",
            "nap"
        ],
        "{info}"
    );
    assert_eq!(info["tasks"][3]["streaming"], true, "{info}");
}

#[test]
fn the_go_example_runs_values_errors_streams_and_limits() {
    let go = c_plugin_str("go-example");
    assert_eq!(run_one(&go, "square", "[7]", &[])["ok"], 49);
    assert_eq!(run_one(&go, "add", "[2, -5]", &[])["ok"], -3);
    // Four goroutines on the Go runtime's threads, in the worker.
    assert_eq!(
        run_one(&go, "sum_squares", "[1000]", &[])["ok"],
        332_833_500
    );
    let v = run_one(&go, "divide", "[1, 0]", &[]);
    assert_eq!(
        (error_kind(&v), error_message(&v)),
        ("task_error", "division by zero"),
        "{v}"
    );
    let v = run_one(&go, "square", "[\"seven\"]", &[]);
    assert_eq!(
        (error_kind(&v), error_message(&v)),
        ("bad_args", "square takes one integer, as [x]"),
        "{v}"
    );
    let out = host(["run", &go, "-t", "count", "--args", "[3]"]);
    assert_eq!(
        lines(&out),
        vec![
            json!({"index": 0, "item": 0}),
            json!({"index": 0, "item": 1}),
            json!({"index": 0, "item": 2}),
            json!({"index": 0, "ok": 3}),
        ],
        "{}",
        stderr(&out)
    );
    // The stop flag, polled from Go, ends it at the soft limit; `hang`
    // ignores it and meets the hard one.
    let v = run_one(&go, "wait_for_stop", "[]", &["--soft-time-limit", "100ms"]);
    assert_eq!(
        (error_kind(&v), error_message(&v)),
        ("soft_time_limit", "stopped as asked"),
        "{v}"
    );
    let v = run_one(&go, "hang", "[]", &["--time-limit", "300ms"]);
    assert_eq!(error_kind(&v), "time_limit", "{v}");
}

#[test]
fn a_go_nil_dereference_or_panic_is_worker_lost_and_the_other_jobs_finish() {
    let go = c_plugin_str("go-example");
    for (crash, said) in [
        ("crash", "invalid memory address or nil pointer dereference"),
        ("go_panic", "panic: go_panic was called"),
    ] {
        for method in ["forkserver", "spawn"] {
            let mut input = String::new();
            for i in 0..12 {
                if i == 5 {
                    input.push_str(&format!("{{\"task\": \"{crash}\", \"args\": []}}\n"));
                } else {
                    input.push_str(&format!("{{\"task\": \"square\", \"args\": [{i}]}}\n"));
                }
            }
            let got = run_file(&go, &input, &["-w", "2", "--start-method", method]);
            assert_eq!(got.len(), 12, "{got:?}");
            for (i, v) in got.iter().enumerate() {
                if i == 5 {
                    assert_eq!(error_kind(v), "worker_lost", "{method}: {v}");
                    // The Go runtime's own report is in the worker's last
                    // output lines.
                    assert!(error_message(v).contains(said), "{method}: {v}");
                } else {
                    assert_eq!(v["ok"], i * i, "{method} {crash}: {v}");
                }
            }
        }
    }
}

#[test]
fn check_runs_golden_cases_on_the_go_plugin() {
    check_example_cases("go-example", "go_example", 9);
}

#[test]
fn a_pool_holds_rust_c_and_go_plugins_and_a_crash_in_one_spares_the_others() {
    let pool = Pool::builder()
        .plugin(plugin("math"))
        .plugin(c_plugin("c-example"))
        .plugin(c_plugin("go-example"))
        .workers(2)
        .build()
        .expect("pool");
    let names: Vec<String> = pool.plugins().iter().map(|p| p.name.clone()).collect();
    assert_eq!(names, ["math", "c_example", "go_example"]);
    let json = |plugin: &str, task: &str, args: &[u8]| {
        let t = pool.task_ref(plugin, task).expect("task");
        pool.apply_raw(t, Codec::Json, args.to_vec(), Default::default())
            .expect("submit")
            .get()
    };
    assert_eq!(json("math", "square", b"[6]"), Ok(b"36".to_vec()));
    assert_eq!(json("c_example", "square", b"[6]"), Ok(b"36".to_vec()));
    assert_eq!(json("go_example", "square", b"[6]"), Ok(b"36".to_vec()));
    // A segfault in C code of a worker that runs the Go runtime too: the
    // Go runtime forwards it to the worker's crash handler, which ends the
    // worker by that signal.
    let e = json("c_example", "crash", b"[]").expect_err("crash");
    assert_eq!(e.kind, ErrorKind::WorkerLost, "{e}");
    assert!(e.message.contains("SIGSEGV"), "{e}");
    let e = json("go_example", "crash", b"[]").expect_err("crash");
    assert_eq!(e.kind, ErrorKind::WorkerLost, "{e}");
    for _ in 0..3 {
        assert_eq!(json("go_example", "add", b"[2, 3]"), Ok(b"5".to_vec()));
        assert_eq!(json("c_example", "add", b"[2, 3]"), Ok(b"5".to_vec()));
        assert_eq!(pool.apply::<_, u64>("math", "square", (7u64,)), Ok(49));
    }
    // A rolling restart loads the files in a new zygote, which leaves the
    // Go plugin to its workers again.
    pool.restart().expect("reload");
    assert_eq!(json("go_example", "square", b"[8]"), Ok(b"64".to_vec()));
    assert_eq!(json("c_example", "square", b"[8]"), Ok(b"64".to_vec()));
    pool.close();
    pool.join().expect("join");
}

#[test]
fn go_workers_are_recycled_by_task_count_and_by_memory() {
    let pool = Pool::builder()
        .plugin(c_plugin("go-example"))
        .workers(2)
        .max_tasks_per_child(1)
        .build()
        .expect("pool");
    let t = pool.task_ref("go_example", "square").expect("square");
    let results: Vec<_> = (0..20u64)
        .map(|i| {
            pool.apply_raw(
                t,
                Codec::Json,
                format!("[{i}]").into_bytes(),
                Default::default(),
            )
            .expect("submit")
        })
        .collect();
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.get(), Ok(format!("{}", i * i).into_bytes()));
    }
    let stats = pool.stats().expect("stats");
    assert!(stats.workers_started >= 20, "{stats:?}");
    assert_eq!(stats.worker_deaths, 0, "{stats:?}");
    pool.close();
    pool.join().expect("join");
    // --max-memory-per-child counts resident memory, not the address
    // space the Go runtime reserves: a worker that keeps 32 MiB is
    // replaced, one job each.
    let dir = common::celery::unique_temp_dir("go-leak");
    let stats_file = dir.join("stats.json");
    let got = run_file(
        &c_plugin_str("go-example"),
        "{\"task\": \"leak\", \"args\": [32]}\n{\"task\": \"leak\", \"args\": [32]}\n",
        &[
            "-w",
            "1",
            "--max-memory-per-child",
            "16MB",
            "--stats-json",
            stats_file.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|v| v["ok"] == 32), "{got:?}");
    let stats: Value =
        serde_json::from_slice(&std::fs::read(&stats_file).expect("stats")).expect("JSON");
    assert_eq!(stats["recycled"], 2, "{stats}");
    assert_eq!(stats["worker_deaths"], 0, "{stats}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn process_isolated_runs_and_the_strict_sandbox_run_go_tasks() {
    let go = c_plugin("go-example");
    let mut one = Process::raw(&go, "square", Codec::Json, b"[5]".to_vec());
    assert_eq!(one.join(), Ok(b"25".to_vec()));
    let mut crash = Process::raw(&go, "crash", Codec::Json, b"[]".to_vec());
    assert_eq!(crash.join().map_err(|e| e.kind), Err(ErrorKind::WorkerLost));
    let mut soft = Process::raw(&go, "wait_for_stop", Codec::Json, b"[]".to_vec())
        .soft_time_limit(Duration::from_millis(100));
    assert_eq!(
        soft.join().map_err(|e| e.kind),
        Err(ErrorKind::SoftTimeLimit)
    );
    let go = c_plugin_str("go-example");
    let got = run_file(
        &go,
        "{\"task\": \"square\", \"args\": [2]}\n{\"task\": \"go_panic\", \"args\": []}\n{\"task\": \"sum_squares\", \"args\": [10]}\n",
        &["--isolated", "-w", "2"],
    );
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0]["ok"], 4, "{got:?}");
    assert_eq!(error_kind(&got[1]), "worker_lost", "{got:?}");
    assert_eq!(got[2]["ok"], 285, "{got:?}");
    // The Go runtime's threads and memory under the strict sandbox's
    // seccomp filter, PID namespace and read-only filesystem: forkserver
    // and spawn alike.
    for method in ["forkserver", "spawn"] {
        let strict = ["--sandbox", "strict", "--start-method", method];
        let v = run_one(&go, "sum_squares", "[1000]", &strict);
        assert_eq!(v["ok"], 332_833_500, "{method}: {v}");
        let v = run_one(&go, "crash", "[]", &strict);
        assert_eq!(error_kind(&v), "worker_lost", "{method}: {v}");
    }
}

#[test]
fn the_celery_worker_runs_go_tasks_for_a_python_client() {
    let Some((redis, _py)) =
        common::celery::celery_or_skip("the_celery_worker_runs_go_tasks_for_a_python_client")
    else {
        return;
    };
    let url = redis.url();
    let _w = common::celery::spawn_worker([
        "worker".to_string(),
        c_plugin_str("go-example"),
        "--broker".to_string(),
        url.clone(),
        "-c".to_string(),
        "2".to_string(),
    ]);
    let script = format!(
        r#"{app}
def call(name, args=()):
    r = app.send_task(name, args=list(args))
    try:
        return {{"ok": r.get(timeout=60)}}
    except Exception as e:
        return {{"type": type(e).__name__, "msg": str(e), "state": r.state}}
print(json.dumps([call("go_example.square", [7]), call("go_example.divide", [1, 0]),
                  call("go_example.sum_squares", [10])]))
"#,
        app = common::celery::py_app(&url)
    );
    let got = common::celery::python_json(&script, &[]);
    assert_eq!(got[0], json!({"ok": 49}), "{got}");
    assert_eq!(got[1]["state"], "FAILURE", "{got}");
    assert!(
        got[1]["msg"]
            .as_str()
            .unwrap_or("")
            .contains("division by zero"),
        "{got}"
    );
    assert_eq!(got[2], json!({"ok": 285}), "{got}");
}

#[test]
fn a_per_worker_plugin_replaced_by_another_is_refused_by_the_next_worker_naming_both() {
    // Each worker loads a thread-starting plugin from its file: one
    // renamed over it since the pool loaded it, with other tasks, must not
    // be run under the old task list.
    let dir = common::celery::unique_temp_dir("go-replaced");
    let path = dir.join("libthreads.so");
    std::fs::copy(c_plugin("c-thread-ctor"), &path).expect("copy");
    let pool = Pool::builder()
        .plugin(&path)
        .workers(1)
        .max_tasks_per_child(2)
        .restart_limit(1, Duration::from_secs(60))
        .build()
        .expect("pool");
    let echo = pool.task_ref("hostile_c", "echo").expect("echo");
    let run = |args: &[u8]| {
        pool.apply_raw(echo, Codec::Json, args.to_vec(), Default::default())
            .expect("submit")
            .get()
    };
    assert_eq!(run(b"[1]"), Ok(b"[1]".to_vec()));
    let next = dir.join("libthreads.so.new");
    std::fs::copy(c_plugin("go-example"), &next).expect("copy");
    std::fs::rename(&next, &path).expect("rename");
    // The worker that loaded the old file serves its second job, then
    // retires; its replacement finds go_example where hostile_c was.
    assert_eq!(run(b"[2]"), Ok(b"[2]".to_vec()));
    let e = run(b"[3]").expect_err("no worker can start");
    assert!(
        e.message
            .contains("it is not the plugin the pool loaded at start")
            && e.message.contains("hostile_c 0.0.1")
            && e.message.contains("go_example 0.1.0"),
        "{e}"
    );
    let _ = pool.terminate();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn operator_signals_to_go_workers_change_nothing() {
    // SIGUSR1 (the stop signal, with no stop asked), SIGTERM, SIGHUP... sent
    // to the zygote and to workers running the Go runtime: the Go runtime's
    // threads keep them blocked, the worker's main thread rides them out.
    use common::run::{finish, helpers_of, start};
    use std::io::BufRead;
    let dir = common::celery::unique_temp_dir("go-signals");
    let file = dir.join("in.jsonl");
    std::fs::write(&file, "{\"task\": \"nap\", \"args\": [200]}\n".repeat(10)).expect("input");
    let go = c_plugin_str("go-example");
    let mut child = start(&[&go, "-i", file.to_str().expect("utf-8"), "-w", "2"]);
    let host = child.id() as i32;
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    out.read_line(&mut first).expect("first line");
    assert!(first.contains("\"ok\""), "{first}");
    let mut helpers = Vec::new();
    let found = common::eventually(Duration::from_secs(10), || {
        let (z, w) = helpers_of(host);
        helpers = z.iter().chain(&w).copied().collect();
        z.len() == 1 && w.len() == 2
    });
    assert!(found, "no zygote with two workers: {helpers:?}");
    common::run::signal_as_an_operator(&helpers);
    let (rs, err, code) = finish(child, out, first);
    assert_eq!(code, 0, "{rs:?}\n{err}");
    assert_eq!(rs.len(), 10, "{rs:?}");
    assert!(rs.iter().all(|r| r["ok"] == 200), "{rs:?}\n{err}");
    let _ = std::fs::remove_dir_all(dir);
}
