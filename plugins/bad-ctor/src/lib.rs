//! `bad-ctor`: a plugin that misbehaves while it is being loaded, before
//! the host ever sees its root module. The regression tests of the
//! adversarial report (B16, duplicate task names) drive it.
//!
//! - `BILLIARD_BAD_CTOR` picks what its ELF constructor (`.init_array`,
//!   run by `dlopen`) does: `exit` calls `exit(0)`, `exit3` calls
//!   `_exit(3)`, `sleep` blocks for an hour, `abort` aborts, `print`
//!   prints a line on stdout (and loads), `tty` reaches for the terminal
//!   (see `tty_attack`); unset or `none` does nothing.
//! - `BILLIARD_BAD_CTOR_DUP=1` makes it export two tasks named `ping`.
//!
//! Never load this plugin in production.

// Its root module is written by hand, not by `export_plugin!`:
// the "not listed in export_plugin" markers of its `#[task]`s are unused.
#![allow(dead_code)]

use billiard_plugin_api::__private::abi_stable::prefix_type::PrefixTypeTrait;
use billiard_plugin_api::__private::abi_stable::std_types::{RSlice, RStr, RVec};
use billiard_plugin_api::abi::{PluginMod, PluginModRef, TaskInfo};
use billiard_plugin_api::glue::{RunFn, Task};
use billiard_plugin_api::task;

/// Returns 1.
#[task]
pub fn ping() -> u64 {
    1
}

mod second {
    use billiard_plugin_api::task;

    /// Returns 2 (a second task named `ping`).
    #[task]
    pub fn ping() -> u64 {
        2
    }
}

extern "C" fn constructor() {
    match std::env::var("BILLIARD_BAD_CTOR").as_deref() {
        Ok("exit") => std::process::exit(0),
        // SAFETY: _exit has no preconditions; it ends the process at once.
        Ok("exit3") => unsafe { libc::_exit(3) },
        Ok("sleep") => std::thread::sleep(std::time::Duration::from_secs(3600)),
        Ok("abort") => std::process::abort(),
        Ok("print") => println!("bad-ctor: a constructor that talks on stdout"),
        Ok("tty") => tty_attack(),
        _ => {}
    }
}

/// `BILLIARD_BAD_CTOR=tty`: reaches for the operator's terminal while the
/// plugin loads (C2): writes `CTOR-ON-TTY` on `/dev/tty`, pushes
/// `touch /tmp/billiard-c2-ctor\n` into its input with TIOCSTI, and
/// prints an escape sequence (`ESC[31m`) and `CTOR-STDERR` on stderr.
fn tty_attack() {
    use std::io::Write;
    eprintln!("\x1b[31mCTOR-STDERR");
    if let Ok(mut tty) = std::fs::OpenOptions::new().write(true).open("/dev/tty") {
        let _ = tty.write_all(b"CTOR-ON-TTY\n");
        for b in b"touch /tmp/billiard-c2-ctor\n" {
            // SAFETY: TIOCSTI reads one byte through a valid pointer; the
            // fd is open for as long as `tty` lives.
            unsafe {
                libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&tty), libc::TIOCSTI, b);
            }
        }
    }
}

/// Run by the dynamic loader when the library is mapped, like a C
/// `__attribute__((constructor))`.
#[used]
#[link_section = ".init_array"]
static CONSTRUCTOR: extern "C" fn() = constructor;

static INFOS: &[TaskInfo] = &[<ping as Task>::INFO, <second::ping as Task>::INFO];
static RUNS: &[RunFn] = &[<ping as Task>::RUN, <second::ping as Task>::RUN];

fn exported() -> usize {
    if std::env::var_os("BILLIARD_BAD_CTOR_DUP").is_some_and(|v| v == "1") {
        2
    } else {
        1
    }
}

extern "C" fn call(
    task: u32,
    codec: billiard_plugin_api::Codec,
    args: RSlice<'_, u8>,
    ctx: &billiard_plugin_api::TaskContext<'_>,
    out: &mut RVec<u8>,
) -> billiard_plugin_api::Status {
    let n = exported();
    billiard_plugin_api::glue::call(&RUNS[..n], &INFOS[..n], task, codec, args, ctx, out)
}

extern "C" fn call_batch(
    task: u32,
    codec: billiard_plugin_api::Codec,
    args: RSlice<'_, u8>,
    count: u32,
    ctx: &billiard_plugin_api::TaskContext<'_>,
    out: &mut RVec<u8>,
) -> u32 {
    let n = exported();
    billiard_plugin_api::glue::call_batch(
        &RUNS[..n],
        &INFOS[..n],
        task,
        codec,
        args,
        count,
        ctx,
        out,
    )
}

/// Says nothing about its tasks' types: their schemas are unknown.
extern "C" fn task_schema(_: u32, out: &mut RVec<u8>) {
    out.clear();
}

#[billiard_plugin_api::__export_root_module]
fn get_root_module() -> PluginModRef {
    PluginMod {
        abi_version: billiard_plugin_api::ABI_VERSION,
        name: RStr::from_str("bad-ctor"),
        version: RStr::from_str(env!("CARGO_PKG_VERSION")),
        api_version: RStr::from_str(billiard_plugin_api::abi::API_VERSION),
        tasks: RSlice::from_slice(&INFOS[..exported()]),
        call,
        call_batch,
        metadata: billiard_plugin_api::abi::PluginMetadata::EMPTY,
        failure_detail: billiard_plugin_api::abi::FAILURE_DETAIL_VERSION,
        task_options: Default::default(),
        task_schema,
    }
    .leak_into_prefix()
}
