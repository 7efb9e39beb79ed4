//! End-to-end tests of the `Pool` library API with real plugins and real
//! worker processes.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use billiard_host::{
    Codec, ErrorKind, Event, JobOptions, Limits, Pool, PoolBuilder, StartMethod, TaskError,
};

fn builder(workers: usize) -> PoolBuilder {
    common::pool_builder(workers, &["math", "faults", "bytes"])
}

fn pool(workers: usize) -> Pool {
    builder(workers).build().expect("pool builds")
}

#[test]
fn apply_and_apply_async() {
    let pool = pool(2);
    let y: u64 = pool.apply("math", "square", (7u64,)).unwrap();
    assert_eq!(y, 49);
    let h = pool.apply_async::<_, u64>("math", "fib", (10u32,)).unwrap();
    h.wait();
    assert!(h.ready());
    assert_eq!(h.get().unwrap(), 55);
    assert_eq!(h.get_timeout(Duration::from_secs(5)).unwrap().unwrap(), 55);
    let slow = pool
        .apply_async::<_, u64>("faults", "sleep_ms", (300u64,))
        .unwrap();
    assert!(
        slow.get_timeout(Duration::from_millis(1)).is_none(),
        "not ready that fast"
    );
    assert!(!slow.wait_timeout(Duration::from_millis(1)));
    assert_eq!(slow.get().unwrap(), 300);
    assert_ne!(h.id(), slow.id());
    let err = pool
        .apply::<_, i64>("math", "add", (i64::MAX, 1i64))
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::TaskError);
    assert!(err.message.contains("overflows"), "{err}");
    let err = pool.apply::<_, u64>("math", "nope", (1u64,)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::UnknownTask);
    let err = pool
        .apply::<_, u64>("nosuch", "square", (1u64,))
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::UnknownTask);
    let err = pool
        .apply::<_, u64>("math", "square", ("x".to_string(),))
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadArgs, "{err}");
    pool.join().unwrap();
}

#[test]
fn callbacks_run_and_a_panicking_callback_does_not_hurt() {
    let pool = pool(2);
    let (tx, rx) = crossbeam_channel::unbounded();
    let tx2 = tx.clone();
    pool.apply_async_with(
        "math",
        "square",
        (5u64,),
        JobOptions::default().on_success(move |v: u64| tx.send(Ok(v)).unwrap()),
    )
    .unwrap();
    pool.apply_async_with(
        "faults",
        "fail",
        ("boom".to_string(),),
        JobOptions::default()
            .on_success(|_: u64| panic!("not called"))
            .on_error(move |e: TaskError| tx2.send(Err(e.kind)).unwrap()),
    )
    .unwrap();
    pool.apply_async_with(
        "math",
        "square",
        (1u64,),
        JobOptions::default().on_success(|_: u64| panic!("a user callback panics")),
    )
    .unwrap();
    let mut got: Vec<Result<u64, ErrorKind>> = vec![rx.recv().unwrap(), rx.recv().unwrap()];
    got.sort();
    assert_eq!(got, vec![Ok(25), Err(ErrorKind::TaskError)]);
    // The pool still works after the panicking callback.
    let y: u64 = pool.apply("math", "square", (12u64,)).unwrap();
    assert_eq!(y, 144);
    pool.join().unwrap();
}

#[test]
fn map_imap_starmap_in_every_chunk_size() {
    let pool = pool(2);
    let want: Vec<u64> = (0..500u64).map(|x| x * x).collect();
    for chunksize in [1, 7, 100, 1000] {
        let got: Vec<u64> = pool.map("math", "square", 0..500u64, chunksize).unwrap();
        assert_eq!(got, want, "map chunksize {chunksize}");
        let got: Vec<u64> = pool
            .imap("math", "square", 0..500u64, chunksize)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got, want, "imap chunksize {chunksize}");
        let mut got: Vec<u64> = pool
            .imap_unordered("math", "square", 0..500u64, chunksize)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        got.sort();
        assert_eq!(got, want, "imap_unordered chunksize {chunksize}");
    }
    let sums: Vec<i64> = pool
        .starmap("math", "add", (0..50i64).map(|i| (i, 1000i64)), 8)
        .unwrap();
    assert_eq!(sums, (0..50i64).map(|i| i + 1000).collect::<Vec<_>>());
    let m = pool
        .map_async::<_, u64>("math", "square", 0..100u64, 9)
        .unwrap();
    assert_eq!(
        m.get().unwrap(),
        (0..100u64).map(|x| x * x).collect::<Vec<_>>()
    );
    // The first failing item decides map's error.
    let err = pool
        .map::<_, u64>("math", "fib", [1u32, 2, 200, 3], 2)
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::TaskError);
    pool.join().unwrap();
}

#[test]
fn unordered_yields_in_completion_order() {
    let pool = pool(2);
    // Item 0 sleeps; the quick items finish first.
    let order: Vec<u64> = pool
        .imap_unordered("faults", "sleep_ms", [400u64, 1, 1, 1, 1], 1)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(order.last(), Some(&400), "{order:?}");
    let ordered: Vec<u64> = pool
        .imap("faults", "sleep_ms", [200u64, 1, 1], 1)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ordered, vec![200, 1, 1]);
    pool.join().unwrap();
}

#[test]
fn raw_json_jobs() {
    let pool = pool(1);
    let t = pool.task_ref("math", "add").unwrap();
    let r = pool
        .apply_raw(t, Codec::Json, b"[2, 3]".to_vec(), Limits::default())
        .unwrap();
    assert_eq!(r.get().unwrap(), b"5");
    let r = pool
        .apply_raw(t, Codec::Json, b"[2]".to_vec(), Limits::default())
        .unwrap();
    let e = r.get().unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadArgs);
    assert!(e.message.contains("add"), "{e}");
    assert!(
        pool.find_task("square").is_err(),
        "square is in math and faults: ambiguous"
    );
    assert!(pool.find_task("math.square").is_ok());
    assert!(pool.find_task("fib").is_ok());
    pool.join().unwrap();
}

#[test]
fn crashing_tasks_cost_one_worker_and_nothing_else() {
    let pool = pool(2);
    for (task, args, needle) in [
        ("segfault", "[]", "SIGSEGV"),
        ("abort", "[]", "SIGABRT"),
        ("exit", "[3]", "exited with code 3"),
    ] {
        let t = pool.task_ref("faults", task).unwrap();
        let e = pool
            .apply_raw(t, Codec::Json, args.as_bytes().to_vec(), Limits::default())
            .unwrap()
            .get()
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::WorkerLost, "{task}: {e}");
        assert!(e.message.contains(needle), "{task}: {e}");
        assert!(e.message.contains("had started"), "{task}: {e}");
        assert!(e.message.contains("peak memory"), "{task}: {e}");
        let next: Vec<u64> = pool.map("math", "square", 0..100u64, 1).unwrap();
        assert_eq!(next.len(), 100);
        assert_eq!(next[99], 99 * 99);
    }
    // A panic is caught in the worker, which survives.
    let before: u32 = pool.apply("faults", "pid", ()).unwrap();
    let e = pool
        .apply::<_, u64>("faults", "panic", ("oops".to_string(),))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Panic);
    assert!(
        e.message.contains("oops") && e.message.contains("lib.rs"),
        "{e}"
    );
    let pids: HashSet<u32> = (0..20)
        .map(|_| pool.apply::<_, u32>("faults", "pid", ()).unwrap())
        .collect();
    assert!(pids.contains(&before), "the panicking worker lives on");
    // The last lines a worker wrote are in its worker_lost message.
    let (t_log, t_exit) = (
        pool.task_ref("faults", "log").unwrap(),
        pool.task_ref("faults", "exit").unwrap(),
    );
    let pool1 = builder(1).build().unwrap();
    pool1
        .apply_raw(
            pool1.task_ref("faults", "log").unwrap(),
            Codec::Json,
            br#"["last words"]"#.to_vec(),
            Limits::default(),
        )
        .unwrap()
        .get()
        .unwrap();
    let e = pool1
        .apply_raw(
            pool1.task_ref("faults", "exit").unwrap(),
            Codec::Json,
            b"[9]".to_vec(),
            Limits::default(),
        )
        .unwrap()
        .get()
        .unwrap_err();
    assert!(e.message.contains("last words"), "{e}");
    let _ = (t_log, t_exit);
    pool1.join().unwrap();
    pool.join().unwrap();
}

#[test]
fn collateral_jobs_are_untouched_by_a_crash() {
    let pool = pool(2);
    let sleeper = pool
        .apply_async::<_, u64>("faults", "sleep_ms", (300u64,))
        .unwrap();
    let crash = pool
        .apply_async::<_, u64>("faults", "segfault", ())
        .unwrap();
    let others: Vec<_> = (0..4u64)
        .map(|i| pool.apply_async::<_, u64>("math", "square", (i,)).unwrap())
        .collect();
    assert_eq!(crash.get().unwrap_err().kind, ErrorKind::WorkerLost);
    assert_eq!(sleeper.get().unwrap(), 300);
    for (i, h) in others.iter().enumerate() {
        assert_eq!(h.get().unwrap(), (i * i) as u64);
    }
    pool.join().unwrap();
}

#[test]
fn garbage_on_the_ipc_socket_is_a_lost_worker_not_a_host_crash() {
    let pool = pool(2);
    let e = pool
        .apply::<_, u64>("faults", "garbage_fds", ())
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::WorkerLost, "{e}");
    let y: u64 = pool.apply("math", "square", (9u64,)).unwrap();
    assert_eq!(y, 81);
    pool.join().unwrap();
}

#[test]
fn works_inside_a_multithreaded_program_and_fork_is_refused_there() {
    // A runtime-like set of busy threads exists before the pool.
    let stop = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while stop.load(Ordering::Relaxed) == 0 {
                    std::thread::yield_now();
                }
            })
        })
        .collect();
    for method in [StartMethod::Forkserver, StartMethod::Spawn] {
        let pool = builder(2).start_method(method).build().unwrap();
        let got: Vec<u64> = pool.map("math", "square", 0..50u64, 5).unwrap();
        assert_eq!(got[49], 49 * 49, "{method}");
        // Jobs from several threads at once.
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let pool = &pool;
                s.spawn(move || {
                    for i in 0..25u64 {
                        let y: u64 = pool.apply("math", "square", (t * 100 + i,)).unwrap();
                        assert_eq!(y, (t * 100 + i) * (t * 100 + i));
                    }
                });
            }
        });
        pool.join().unwrap();
    }
    let err = builder(2)
        .start_method(StartMethod::Fork)
        .build()
        .err()
        .expect("fork refused");
    assert!(err.to_string().contains("threads"), "{err}");
    stop.store(1, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn no_worker_survives_terminate_or_drop() {
    for how in ["terminate", "drop", "join"] {
        let (tx, rx) = crossbeam_channel::unbounded();
        let pool = builder(2).events(tx).build().unwrap();
        let _: Vec<u64> = pool.map("math", "square", 0..10u64, 1).unwrap();
        let _busy = pool
            .apply_async::<_, u64>("faults", "sleep_ms", (60_000u64,))
            .unwrap();
        let _: u64 = pool.apply("math", "square", (1u64,)).unwrap();
        let pids: Vec<i32> = rx
            .try_iter()
            .filter_map(|e| match e {
                Event::WorkerUp { pid, .. } => Some(pid),
                _ => None,
            })
            .collect();
        assert_eq!(pids.len(), 2, "{how}");
        match how {
            "terminate" => pool.terminate().unwrap(),
            "drop" => drop(pool),
            _ => {
                // join waits for the sleeper: cancel it first.
                assert!(pool.terminate_job(_busy.id()).unwrap());
                assert_eq!(_busy.get().unwrap_err().kind, ErrorKind::Terminated);
                pool.join().unwrap();
            }
        }
        for pid in pids {
            // It exists until reaped: a zombie counts.
            assert!(!common::exists(pid), "{how}: worker {pid} still exists");
        }
    }
    // Only processes of other tests may remain; none of them is a zombie of ours.
    assert!(common::children_of(std::process::id() as i32)
        .into_iter()
        .all(|p| common::proc_stat(p).map(|(state, ..)| state) != Some('Z')));
}

#[test]
fn fds_stay_flat_over_jobs_and_worker_replacements() {
    let pool = builder(2).max_tasks_per_child(20).build().unwrap();
    let _: Vec<u64> = pool.map("math", "square", 0..100u64, 1).unwrap();
    let count = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let before = count();
    let _: Vec<u64> = pool.map("math", "square", 0..1000u64, 1).unwrap();
    for _ in 0..25 {
        let e = pool.apply::<_, u64>("faults", "segfault", ()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::WorkerLost);
    }
    let _: Vec<u64> = pool.map("math", "square", 0..100u64, 1).unwrap();
    let stats = pool.stats().unwrap();
    assert!(stats.workers_started >= 2 + 25 + 50, "{stats:?}");
    // Other tests in this binary open and close fds concurrently; allow
    // for them but not for a leak proportional to the replacements.
    let after = count();
    assert!(after <= before + 6, "fds grew from {before} to {after}");
    pool.join().unwrap();
}

#[test]
fn prefetch_serves_floods_of_tiny_jobs() {
    let pool = builder(2).prefetch(8).build().unwrap();
    let got: Vec<u64> = pool.map("math", "square", 0..5000u64, 1).unwrap();
    assert_eq!(got[4999], 4999 * 4999);
    // A crash with prefetched jobs behind it: those run elsewhere, not lost.
    let hs: Vec<_> = (0..20u64)
        .map(|i| {
            if i == 3 {
                pool.apply_async::<_, u64>("faults", "segfault", ())
                    .unwrap()
            } else {
                pool.apply_async::<_, u64>("math", "square", (i,)).unwrap()
            }
        })
        .collect();
    for (i, h) in hs.iter().enumerate() {
        match h.get() {
            Ok(v) => assert_eq!(v, (i * i) as u64),
            Err(e) => {
                assert_eq!(i, 3, "{e}");
                assert_eq!(e.kind, ErrorKind::WorkerLost);
            }
        }
    }
    pool.join().unwrap();
}

#[test]
fn imap_keeps_memory_flat_on_a_huge_lazy_input() {
    let pool = builder(2).imap_window(256).build().unwrap();
    let mut n = 0u64;
    let mut taken = 0u64;
    let counter = &mut taken;
    let input = (0..200_000u64).inspect(move |_| *counter += 1);
    for r in pool.imap::<_, u64>("math", "square", input, 100).unwrap() {
        r.unwrap();
        n += 1;
        if n == 1000 {
            break;
        }
    }
    assert_eq!(n, 1000);
    pool.join().unwrap();
}

#[test]
fn bad_builds_are_clear_errors() {
    let e = Pool::builder()
        .worker_exe(common::bin())
        .plugin("/no/such.so")
        .build()
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("/no/such.so") && e.to_string().contains("no such file"),
        "{e}"
    );
    let e = Pool::builder()
        .worker_exe(common::bin())
        .plugin(common::plugin("abi-version-mismatch"))
        .build()
        .err()
        .unwrap();
    assert!(e.to_string().contains("ABI version 999"), "{e}");
    let e = Pool::builder()
        .worker_exe(common::bin())
        .plugin(common::plugin("init-panic"))
        .build()
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("initializer failed") || e.to_string().contains("panicked"),
        "{e}"
    );
    let e = Pool::builder()
        .workers(0)
        .plugin(common::plugin("math"))
        .build()
        .err()
        .unwrap();
    assert!(e.to_string().contains("at least 1"), "{e}");
}

/// A message of a type mismatch names types, not the codec's internals.
fn no_codec_words(err: &TaskError) {
    for word in ["bincode", "trailing bytes", "UnexpectedEnd", "additional"] {
        assert!(!err.message.contains(word), "{word} in: {err}");
    }
}

#[test]
fn issue28_type_mismatches_name_the_types_and_are_the_callers_error() {
    let pool = pool(2);
    // Too many arguments: what the task takes and what it was given.
    let err = pool
        .apply::<_, u64>("math", "square", (3u64, 4u64))
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadArgs, "{err}");
    assert!(err.message.contains("math.square(x: u64) -> u64"), "{err}");
    assert!(err.message.contains("`(u64,)`"), "{err}");
    assert!(err.message.contains("`(u64, u64)`"), "{err}");
    no_codec_words(&err);
    // Too few.
    let err = pool.apply::<_, i64>("math", "add", (1i64,)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadArgs, "{err}");
    assert!(err.message.contains("`(i64, i64)`"), "{err}");
    assert!(err.message.contains("`(i64,)`"), "{err}");
    no_codec_words(&err);
    // The caller asks for another result type than the task returns: the
    // caller's error, not the task's, naming both types.
    let err = pool
        .apply::<_, String>("math", "square", (3u64,))
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadArgs, "{err}");
    assert!(err.message.contains("String"), "{err}");
    assert!(err.message.contains("returns `u64`"), "{err}");
    no_codec_words(&err);
    // The same through the handle, the callback and the map family.
    let h = pool
        .apply_async::<_, String>("math", "square", (3u64,))
        .unwrap();
    assert_eq!(h.get().unwrap_err().kind, ErrorKind::BadArgs);
    let (tx, rx) = std::sync::mpsc::channel();
    pool.apply_async_with(
        "math",
        "square",
        (3u64,),
        JobOptions::<String>::default().on_error(move |e: TaskError| {
            let _ = tx.send(e);
        }),
    )
    .unwrap();
    let err = rx.recv().unwrap();
    assert_eq!(err.kind, ErrorKind::BadArgs, "{err}");
    no_codec_words(&err);
    for chunksize in [1, 3] {
        let err = pool
            .map::<_, String>("math", "square", 1..=5u64, chunksize)
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadArgs, "{err}");
        assert!(err.message.contains("returns `u64`"), "{err}");
        no_codec_words(&err);
        let err = pool
            .map::<_, u64>("math", "square", [(1u64, 2u64)], chunksize)
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadArgs, "{err}");
        assert!(err.message.contains("`((u64, u64),)`"), "{err}");
        no_codec_words(&err);
        let err = pool
            .map_async::<_, String>("math", "square", 1..=5u64, chunksize)
            .unwrap()
            .get()
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadArgs, "{err}");
        no_codec_words(&err);
        let err = pool
            .starmap::<_, u64>("math", "add", [(1i64,)], chunksize)
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadArgs, "{err}");
        assert!(err.message.contains("math.add(a: i64, b: i64)"), "{err}");
        no_codec_words(&err);
    }
    // A task's own Err stays the task's.
    let err = pool
        .apply::<_, i64>("math", "add", (i64::MAX, 1i64))
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::TaskError);
    pool.join().unwrap();
}

// ----- issue 24 item 3: a stream fed by a quiet input ----------------------

/// A job source fed through a channel, as a pipe feeds `run`: `next_job`
/// waits for the next job (and says so on `waits` first); `poll_job` says
/// `Pending` when none is at hand.
struct PipeSource {
    jobs: crossbeam_channel::Receiver<i64>,
    waits: crossbeam_channel::Sender<()>,
    head: billiard_host::JobHead,
}

impl PipeSource {
    /// Job `n`; a negative `n` is bad input, failing in place.
    fn job(&self, n: i64, args: &mut Vec<u8>) -> Result<billiard_host::JobHead, TaskError> {
        if n < 0 {
            return Err(TaskError::new(ErrorKind::BadArgs, "a negative job"));
        }
        args.extend_from_slice(format!("[{n}]").as_bytes());
        Ok(self.head)
    }
}

impl billiard_host::JobSource for PipeSource {
    fn next_job(
        &mut self,
        args: &mut Vec<u8>,
    ) -> Option<Result<billiard_host::JobHead, TaskError>> {
        if let Ok(n) = self.jobs.try_recv() {
            return Some(self.job(n, args));
        }
        let _ = self.waits.send(());
        let n = self.jobs.recv().ok()?;
        Some(self.job(n, args))
    }

    fn poll_job(
        &mut self,
        args: &mut Vec<u8>,
    ) -> std::task::Poll<Option<Result<billiard_host::JobHead, TaskError>>> {
        match self.jobs.try_recv() {
            Ok(n) => std::task::Poll::Ready(Some(self.job(n, args))),
            Err(crossbeam_channel::TryRecvError::Empty) => std::task::Poll::Pending,
            Err(crossbeam_channel::TryRecvError::Disconnected) => std::task::Poll::Ready(None),
        }
    }
}

/// `Pool::imap_fed` never waits for the input while results wait: the
/// results of the jobs sent so far arrive while the source is stalled in
/// `next_job` (a `RawStream` would sit on them there), in chunks cut
/// short where the input went quiet; ordered or not, every item once.
#[test]
fn issue24_a_fed_stream_yields_results_while_its_input_stalls() {
    let pool = pool(2);
    let head = billiard_host::JobHead {
        target: pool.find_task("math.square").unwrap(),
        codec: Codec::Json,
        limits: Limits::default(),
    };
    // A bound on a hang, never a synchronization: each step below waits
    // on a channel for what the step before caused.
    let bound = Duration::from_secs(60);
    for (ordered, chunksize) in [(true, 1), (true, 3), (false, 1), (false, 4)] {
        let (job_tx, jobs) = crossbeam_channel::unbounded::<i64>();
        let (waits, waited) = crossbeam_channel::unbounded::<()>();
        let (out_tx, out) = crossbeam_channel::unbounded::<(u64, i64)>();
        std::thread::scope(|s| {
            let pool = &pool;
            let source = PipeSource { jobs, waits, head };
            s.spawn(move || {
                let mut stream = pool.imap_fed(s, source, ordered, chunksize);
                while let Some(r) = stream.next_with_attempts(|i, outcome, _| match outcome {
                    Ok(v) => (i, serde_json::from_slice::<i64>(v).unwrap()),
                    Err(e) => {
                        assert_eq!(e.kind, ErrorKind::BadArgs, "{e:?}");
                        (i, -1)
                    }
                }) {
                    out_tx.send(r).unwrap();
                }
            });
            let mut got = Vec::new();
            let mut sent = 0i64;
            // Three rounds: some jobs, then the source stalls until every
            // result of them came out.
            for round in [2i64, 5, 1] {
                for _ in 0..round {
                    sent += 1;
                    job_tx.send(sent).unwrap();
                }
                waited
                    .recv_timeout(bound)
                    .expect("the source waits for more input");
                while got.len() < sent as usize {
                    let r = out.recv_timeout(bound).unwrap_or_else(|_| {
                        panic!(
                            "ordered {ordered}, chunksize {chunksize}: {} of {sent} results \
                             while the input stalls: {got:?}",
                            got.len()
                        )
                    });
                    got.push(r);
                }
                assert!(out.is_empty(), "more results than jobs: {got:?}");
            }
            // A last item that fails in place, then the end of the input:
            // the item's error comes out (also when the pool's results
            // ended first), then the stream ends.
            job_tx.send(-1).unwrap();
            drop(job_tx);
            got.push(out.recv_timeout(bound).expect("the bad item's error"));
            assert!(out.recv_timeout(bound).is_err(), "{got:?}");
            if ordered {
                let indices: Vec<u64> = got.iter().map(|(i, _)| *i).collect();
                assert_eq!(indices, (0..9).collect::<Vec<u64>>());
            }
            got.sort_unstable();
            let mut want: Vec<(u64, i64)> = (1..=8i64).map(|n| (n as u64 - 1, n * n)).collect();
            want.push((8, -1));
            assert_eq!(got, want, "ordered {ordered}, chunksize {chunksize}");
        });
    }
    pool.join().unwrap();
}

/// A fed stream dropped early stops its feeder once the source returns,
/// and the scope ends.
#[test]
fn issue24_a_dropped_fed_stream_stops_its_feeder() {
    let pool = pool(1);
    let head = billiard_host::JobHead {
        target: pool.find_task("math.square").unwrap(),
        codec: Codec::Json,
        limits: Limits::default(),
    };
    let (job_tx, jobs) = crossbeam_channel::unbounded::<i64>();
    let (waits, waited) = crossbeam_channel::unbounded::<()>();
    std::thread::scope(|s| {
        let mut stream = pool.imap_fed(s, PipeSource { jobs, waits, head }, true, 1);
        job_tx.send(7).unwrap();
        let first = stream.next_with_attempts(|i, o, _| (i, o.map(<[u8]>::to_vec)));
        assert_eq!(first, Some((0, Ok(b"49".to_vec()))));
        waited.recv().unwrap();
        drop(stream);
        // The source returns (its input ends): the feeder sees the stream
        // gone and ends, so the scope does.
        drop(job_tx);
    });
    pool.join().unwrap();
}
