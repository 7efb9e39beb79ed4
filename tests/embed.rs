//! Embedding the pool in a program (issue 18, part 5): with the one-line
//! hook in `main` no setting is needed, and a wrong zygote executable is a
//! configuration error that names the setting and the path.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use billiard_host::{Pool, PoolError};

/// A fresh directory of this test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("billiard-embed-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// `examples/embed.rs` copied alone into a directory of its own: no
/// `billiard-host` beside it, none on the `PATH` it gets.
fn lone_embedder(name: &str) -> (PathBuf, PathBuf) {
    let dir = scratch(name);
    let exe = dir.join("embed");
    std::fs::copy(common::example("embed"), &exe).expect("copy the example");
    (dir, exe)
}

fn run_lone(exe: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(exe);
    cmd.arg(common::plugin("math"))
        .env_remove("BILLIARD_HOST_EXE")
        .env_remove("RUST_LOG")
        .env("PATH", "/usr/bin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run the example")
}

#[test]
fn an_embedder_whose_main_has_the_hook_needs_no_setting() {
    for d in ["/usr/bin", "/bin"] {
        assert!(
            !Path::new(d).join("billiard-host").exists(),
            "precondition: no billiard-host in {d}"
        );
    }
    let (dir, exe) = lone_embedder("hook");
    let out = run_lone(&exe, &[]);
    let stdout = common::stdout(&out);
    assert!(
        out.status.success(),
        "the example failed: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        common::stderr(&out)
    );
    assert!(stdout.contains("square(3) = 9"), "{stdout}");
    assert!(stdout.contains("fib(90) = 2880067194370816120"), "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_hook_also_serves_the_spawn_start_method() {
    // Spawned workers are exec'd from the zygote's own executable: the
    // embedder again. The example has no flag for it, so this builds the
    // pool here with the example as the configured executable.
    let exe = common::example("embed");
    let pool = Pool::builder()
        .workers(1)
        .plugin(common::plugin("math"))
        .start_method(billiard_host::StartMethod::Spawn)
        .worker_exe(&exe)
        .build()
        .expect("the example is a zygote executable");
    let y: u64 = pool.apply("math", "square", (7u64,)).expect("square");
    assert_eq!(y, 49);
    pool.join().expect("join");
}

#[test]
fn a_missing_billiard_host_exe_names_the_variable_and_the_path() {
    let (dir, exe) = lone_embedder("env");
    let out = run_lone(&exe, &[("BILLIARD_HOST_EXE", "/nonexistent/billiard-host")]);
    let stderr = common::stderr(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/billiard-host")
            && stderr.contains("BILLIARD_HOST_EXE")
            && stderr.contains("does not exist"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Builds a pool with `exe` as its worker executable and returns the
/// configuration error (panics on anything else).
fn config_error(exe: &Path, load_timeout: Duration) -> String {
    let res = Pool::builder()
        .workers(1)
        .plugin(common::plugin("math"))
        .worker_exe(exe)
        .load_timeout(load_timeout)
        .build();
    match res {
        Err(PoolError::Config(msg)) => {
            assert!(
                msg.contains(&exe.display().to_string())
                    && msg.contains("Pool::builder().worker_exe"),
                "the message names neither the path nor the setting: {msg}"
            );
            msg
        }
        Err(e) => panic!("not a configuration error: {e:?}"),
        Ok(_) => panic!("{} was taken for a zygote", exe.display()),
    }
}

#[test]
fn bin_true_as_worker_exe_is_a_configuration_error() {
    let msg = config_error(Path::new("/bin/true"), Duration::from_secs(60));
    assert!(
        msg.contains("exited with code 0 before the zygote handshake")
            && msg.contains("billiard_host::run_if_helper()"),
        "{msg}"
    );
}

#[test]
fn a_shared_library_as_worker_exe_is_a_configuration_error() {
    // A plugin given in the wrong place: exec'd, it dies of SIGSEGV.
    let so = common::plugin("math");
    let msg = config_error(&so, Duration::from_secs(60));
    assert!(
        msg.contains("before the zygote handshake") && msg.contains("shared library"),
        "{msg}"
    );
}

#[test]
fn a_program_that_prints_and_exits_is_a_configuration_error() {
    let msg = config_error(Path::new("/bin/echo"), Duration::from_secs(60));
    assert!(
        msg.contains("before the zygote handshake") && msg.contains("__billiard_zygote"),
        "its output is shown: {msg}"
    );
}

#[test]
fn a_program_that_hangs_is_a_configuration_error() {
    let dir = scratch("hang");
    let script = dir.join("hangs.sh");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 600\n").expect("write the script");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the script");
    }
    let msg = config_error(&script, Duration::from_secs(1));
    assert!(
        msg.contains("did not send the zygote handshake within 1s"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_missing_or_non_executable_worker_exe_is_a_configuration_error() {
    let msg = config_error(Path::new("/nonexistent/zygote"), Duration::from_secs(60));
    assert!(msg.contains("does not exist"), "{msg}");
    let dir = scratch("noexec");
    let file = dir.join("plain");
    std::fs::write(&file, "not a program").expect("write");
    let msg = config_error(&file, Duration::from_secs(60));
    assert!(msg.contains("is not executable"), "{msg}");
    let _ = std::fs::remove_dir_all(dir);
}
