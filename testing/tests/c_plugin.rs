//! The harness drives a C plugin (issue 27): `plugins/c-example`, built
//! with its Makefile, loaded with `Harness::from_path`. Typed calls go to
//! it as JSON (the only codec a C plugin speaks), in process and in a real
//! pool, and its golden cases pass.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use billiard_testing::Harness;

/// `make -C plugins/c-example OUT=<this crate's test tmp dir>`.
fn c_example() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/c-example");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c-example");
    std::fs::create_dir_all(&out).expect("a directory for the plugin");
    let done = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(&src)
        .arg(format!("OUT={}", out.display()))
        .output()
        .expect("make runs (the C plugin tests need make and cc)");
    assert!(
        done.status.success(),
        "make failed:\n{}",
        String::from_utf8_lossy(&done.stderr)
    );
    out.join("libc_example.so")
}

#[test]
fn the_harness_drives_a_c_plugin_in_process_and_in_a_pool() {
    let h = Harness::from_path(c_example());
    assert_eq!(h.name(), "c_example");
    // In process: typed arguments travel as JSON.
    h.call("square", (7i64,)).expect_value(49i64);
    h.call("add", (2i64, 3i64)).expect_value(5i64);
    let e = h.call("divide", (1i64, 0i64)).expect_task_error();
    assert_eq!(e.message, "division by zero");
    let e = h.call("square", ("seven",)).expect_bad_args();
    assert_eq!(e.message, "square takes one integer, as [x]");
    h.soft_time_limit(Duration::from_millis(20))
        .call("wait_for_stop", ())
        .expect_soft_time_limit();

    // In a pool: crashes and hard limits cost a worker, not the test.
    let pool = h.pool();
    pool.call("square", (12i64,)).expect_value(144i64);
    pool.call("crash", ()).expect_worker_lost();
    pool.time_limit(Duration::from_millis(200))
        .call("hang", ())
        .expect_time_limit();
    pool.soft_time_limit(Duration::from_millis(50))
        .call("wait_for_stop", ())
        .expect_soft_time_limit();
    let _: Vec<Result<i64, _>> = pool.assert_same("square", (0..50i64).map(|x| (x,)));

    // Its golden cases.
    let cases = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/c-example/cases.jsonl");
    h.assert_cases(cases);
}
