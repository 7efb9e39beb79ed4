//! The plugin loader helper process `inspect`, `check` and `run
//! --isolated` share.
//!
//! Loading a plugin runs its code (ELF constructors, the root-module
//! initializer): a plugin may exit, crash or block right there. So these
//! commands never load an untrusted plugin in their own process: they
//! start this executable again as a loader ([`LOADER_ARG`]), which loads
//! the file and prints its [`PluginInfo`] as one JSON line, and report any
//! other end of the loader (exit, signal, no answer in time) as a load
//! failure naming the file. The same "re-execute as a helper" pattern as
//! the library's `run_if_helper` (the zygote).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use billiard_host::{Plugin, PluginInfo, PluginLoadError};
use serde::{Deserialize, Serialize};

/// The hidden first argument that makes this executable a plugin loader.
pub const LOADER_ARG: &str = "__billiard_load_plugin";
/// The loader's optional argument after the path: the tasks' JSON Schemas
/// are asked for too (only `inspect` shows them; building them is not
/// free, see `Plugin::load_with_schemas`).
pub const SCHEMAS_ARG: &str = "--schemas";

/// How long, after the loader ended, its forwarded stderr may take to reach
/// its end (a child the plugin started may hold the pipe open for ever).
const STDERR_DRAIN: Duration = Duration::from_secs(1);

/// What the loader prints: one JSON line.
#[derive(Serialize, Deserialize)]
enum LoaderAnswer {
    Loaded(PluginInfo),
    Refused(PluginLoadError),
}

/// `billiard-host __billiard_load_plugin PLUGIN [--schemas]`: loads the
/// plugin in this process and prints the answer; never returns.
pub fn loader_main(path: &Path, schemas: bool) -> ! {
    // The plugin's constructors run here: out of the operator's session
    // first, so they cannot reach its terminal (C2; its stderr is a pipe
    // that load_isolated forwards with control characters escaped).
    if let Err(e) = billiard_host::__private::leave_terminal() {
        let answer = LoaderAnswer::Refused(PluginLoadError {
            path: path.to_path_buf(),
            reason: format!("cannot detach the loading process from the terminal: {e}"),
        });
        let _ = serde_json::to_writer(std::io::stdout().lock(), &answer);
        println!();
        billiard_host::__private::exit_now(1)
    }
    let loaded = if schemas {
        Plugin::load_with_schemas(path)
    } else {
        Plugin::load(path)
    };
    let answer = match loaded {
        Ok(p) => LoaderAnswer::Loaded(p.info().clone()),
        Err(e) => LoaderAnswer::Refused(e),
    };
    let mut out = std::io::stdout().lock();
    let written = serde_json::to_writer(&mut out, &answer)
        .map_err(std::io::Error::from)
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush());
    // No atexit handler or destructor of the plugin runs: the answer is
    // out, nothing else of this process matters.
    billiard_host::__private::exit_now(if written.is_ok() { 0 } else { 1 })
}

/// Forwards what the loading process (the plugin's constructors) writes on
/// its stderr to ours, line by line, with control characters escaped: a
/// plugin never writes raw bytes (escape sequences) onto the operator's
/// terminal. Detached, like the answer's reader: a process the plugin
/// started may hold the pipe open; it ends at EOF, which the returned
/// channel reports (closed by the thread's end).
fn forward_stderr(err: std::process::ChildStderr) -> Option<crossbeam_channel::Receiver<()>> {
    let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
    let spawned = std::thread::Builder::new()
        .name("billiard-loader-stderr".into())
        .spawn(move || {
            let _done = done_tx;
            let mut lines = std::io::BufReader::new(err);
            let mut line = Vec::new();
            loop {
                line.clear();
                match std::io::BufRead::read_until(&mut lines, b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                let mut shown = String::with_capacity(text.len());
                for c in text.chars() {
                    if c.is_control() && c != '\t' {
                        shown.extend(c.escape_default());
                    } else {
                        shown.push(c);
                    }
                }
                let _ = writeln!(std::io::stderr().lock(), "{shown}");
            }
        });
    // Without the thread the pipe fills and the loader blocks: the load
    // timeout still ends it, so this is reported, not fatal.
    match spawned {
        Ok(_) => Some(done),
        Err(e) => {
            eprintln!("warning: cannot forward the plugin loader's output: {e}");
            None
        }
    }
}

/// Loads `path` in a child process (see the module docs) and returns what
/// the plugin is (with its tasks' schemas if `schemas`), or why it cannot
/// be loaded.
pub fn load_isolated(
    path: &Path,
    timeout: Duration,
    schemas: bool,
) -> Result<PluginInfo, PluginLoadError> {
    let fail = |reason: String| PluginLoadError {
        path: path.to_path_buf(),
        reason,
    };
    // /proc/self/exe still runs this program when its file was replaced.
    let proc_exe = Path::new("/proc/self/exe");
    let exe = if proc_exe.exists() {
        proc_exe.to_path_buf()
    } else {
        std::env::current_exe()
            .map_err(|e| fail(format!("cannot find this executable to load it with: {e}")))?
    };
    let mut cmd = Command::new(exe);
    cmd.arg(LOADER_ARG).arg(path);
    if schemas {
        cmd.arg(SCHEMAS_ARG);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start a process to load it in: {e}")))?;
    let forwarded = child.stderr.take().and_then(forward_stderr);
    let Some(mut stdout) = child.stdout.take() else {
        return Err(fail("cannot read the loader's answer".into()));
    };
    let (tx, rx) = crossbeam_channel::bounded(1);
    // Detached: a process the plugin started may hold the pipe open.
    let reader = std::thread::Builder::new()
        .name("billiard-loader".into())
        .spawn(move || {
            let mut bytes = Vec::new();
            let r = stdout.read_to_end(&mut bytes).map(|_| bytes);
            let _ = tx.send(r);
        });
    if let Err(e) = reader {
        let _ = child.kill();
        let _ = child.wait();
        return Err(fail(format!("cannot start a thread: {e}")));
    }
    let answer = match rx.recv_timeout(timeout) {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!("cannot read the loader's answer: {e}")));
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!(
                "loading it did not finish within {} (does its initialization code, \
                 such as an ELF constructor, block?); the loading process was killed",
                humantime::format_duration(timeout)
            )));
        }
    };
    let status = child.wait();
    // What the loader wrote before it ended comes out before our answer; a
    // process the plugin started may keep the pipe open, so the wait for
    // its end is bounded.
    if let Some(done) = forwarded {
        let _ = done.recv_timeout(STDERR_DRAIN);
    }
    // The answer is the last line: the plugin's own code may have printed
    // before it.
    let line = answer
        .split(|&b| b == b'\n')
        .rfind(|l| !l.is_empty())
        .unwrap_or_default();
    match serde_json::from_slice::<LoaderAnswer>(line) {
        Ok(LoaderAnswer::Loaded(info)) => Ok(info),
        Ok(LoaderAnswer::Refused(e)) => Err(e),
        Err(_) => {
            let how = match status {
                Ok(s) => describe(s),
                Err(e) => format!("ended (cannot tell how: {e})"),
            };
            Err(fail(format!(
                "the process loading it {how} before the plugin was loaded: its \
                 initialization code (an ELF constructor or the module initializer) \
                 ended the process"
            )))
        }
    }
}

/// "exited with code 0", "killed by signal 6 (SIGABRT)".
fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (_, Some(sig)) => format!(
            "was killed by signal {sig} ({})",
            billiard_host::__private::signal_name(sig)
        ),
        (Some(code), _) => format!("exited with code {code}"),
        _ => "ended".into(),
    }
}
