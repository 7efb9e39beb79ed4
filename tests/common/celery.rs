//! Helpers of the Celery tests (`tests/celery_*.rs`): a private
//! `redis-server` per test, the Python venv with Celery, a small Redis
//! client, and a `billiard-host worker` child.
//!
//! Every Celery test starts its own `redis-server` on a free port (and a unix
//! socket in its own temp dir) and stops it by pid; no test needs a server
//! started by hand. What the tests need from outside is `redis-server` on
//! `PATH` and a venv with `celery[redis]==5.7.0` (`./scripts/test`, the
//! README's test command, installs both). When one is missing a test prints
//! a loud `SKIP` line and passes, except with `CI=true`, where it fails.
//!
//! ```ignore
//! mod common;
//! use common::celery;
//!
//! #[test]
//! fn square_from_python() {
//!     let Some((redis, _py)) = celery::celery_or_skip("square_from_python") else {
//!         return;
//!     };
//!     let _worker = celery::spawn_worker([
//!         "worker", common::plugin_str("math").as_str(), "--broker", redis.url().as_str(),
//!     ]);
//!     let v = celery::python_json(
//!         &format!("{}\nprint(json.dumps(app.send_task('math.square', args=[3]).get(timeout=30)))",
//!                  celery::py_app(&redis.url())),
//!         &[],
//!     );
//!     assert_eq!(v, serde_json::json!(9));
//! }
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// True when running under CI (`CI=true` or `CI=1`): a missing
/// `redis-server` or venv is then a test failure, not a skip.
pub fn ci() -> bool {
    matches!(
        std::env::var("CI")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Ok("true") | Ok("1") | Ok("yes")
    )
}

/// Reports a missing prerequisite: panics under CI, else prints a loud SKIP
/// line straight to stderr (past libtest's capture, so it shows even when
/// the test passes).
pub fn skip(test: &str, why: &str) {
    if ci() {
        panic!("{test}: {why} (CI=true: a missing prerequisite is a failure; run ./scripts/test)");
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIP {test}: {why}; run ./scripts/test to install it (with CI=true this fails) ***"
    );
}

// ----- prerequisites ------------------------------------------------------

/// `redis-server` on `PATH` (or `$BILLIARD_REDIS_SERVER`), if any.
pub fn redis_server_exe() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BILLIARD_REDIS_SERVER") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    find_on_path("redis-server")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The venv's Python: `$BILLIARD_CELERY_PYTHON`, else
/// `<workspace>/.venv/bin/python`; `None` unless it exists and imports
/// `celery`, `kombu` and `redis` (checked once per test binary).
pub fn python() -> Option<PathBuf> {
    static PY: OnceLock<Option<PathBuf>> = OnceLock::new();
    PY.get_or_init(|| {
        let py = match std::env::var_os("BILLIARD_CELERY_PYTHON") {
            Some(p) => PathBuf::from(p),
            None => super::workspace_root().join(".venv/bin/python"),
        };
        let ok = Command::new(&py)
            .args(["-c", "import celery, kombu, redis"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(py)
    })
    .clone()
}

/// A fresh [`RedisServer`], or `None` after [`skip`] when `redis-server`
/// is missing (a panic under CI).
pub fn redis_or_skip(test: &str) -> Option<RedisServer> {
    if redis_server_exe().is_none() {
        skip(test, "redis-server is not on PATH");
        return None;
    }
    Some(RedisServer::start())
}

/// The venv's Python, or `None` after [`skip`] (a panic under CI).
pub fn python_or_skip(test: &str) -> Option<PathBuf> {
    let py = python();
    if py.is_none() {
        let want = std::env::var("BILLIARD_CELERY_PYTHON").unwrap_or_else(|_| {
            super::workspace_root()
                .join(".venv/bin/python")
                .display()
                .to_string()
        });
        skip(
            test,
            &format!("no Python with celery[redis] at {want} (set BILLIARD_CELERY_PYTHON to use another)"),
        );
    }
    py
}

/// Both prerequisites of a test that talks to Python Celery: a fresh
/// [`RedisServer`] and the venv's Python.
pub fn celery_or_skip(test: &str) -> Option<(RedisServer, PathBuf)> {
    let py = python_or_skip(test)?;
    let redis = redis_or_skip(test)?;
    Some((redis, py))
}

// ----- redis-server -------------------------------------------------------

/// A private `redis-server` child: no persistence, its own temp dir (which
/// holds its log and unix socket), killed by pid on drop.
pub struct RedisServer {
    exe: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// More server arguments (e.g. a TLS listener), kept for restarts.
    extra: Vec<String>,
}

/// How long a redis-server may take to answer PING after it was started.
const REDIS_START: Duration = Duration::from_secs(20);

impl RedisServer {
    /// Starts `redis-server --port <free port> --save '' --appendonly no
    /// --daemonize no` and waits until it answers PING. Panics when
    /// `redis-server` is missing (use [`redis_or_skip`]) or does not start.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// [`start`](Self::start) with more `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let exe =
            redis_server_exe().expect("redis-server is not on PATH (use celery::redis_or_skip)");
        let dir = unique_temp_dir("redis");
        // A free port can be taken by someone else between our probe and
        // redis' bind: then the server exits and we try another one.
        let mut last_err = String::new();
        for _ in 0..20 {
            let port = free_port();
            let mut server = RedisServer {
                exe: exe.clone(),
                port,
                dir: dir.clone(),
                child: None,
                extra: extra.iter().map(|s| s.to_string()).collect(),
            };
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(e) => last_err = e,
            }
        }
        panic!("redis-server did not start: {last_err}");
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let _ = std::fs::remove_file(self.socket_path());
        let log = self.dir.join("redis.log");
        let child = Command::new(&self.exe)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--unixsocket")
            .arg(self.socket_path())
            .args(["--unixsocketperm", "700"])
            .args(&self.extra)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.exe.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + REDIS_START;
        loop {
            if let Ok(mut c) = self.try_connect() {
                if c.try_cmd(&["PING"])
                    .is_ok_and(|r| r == Reply::Status("PONG".into()))
                {
                    return Ok(());
                }
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                return Err(format!(
                    "exited with {status} on port {}: {tail:?}",
                    self.port
                ));
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(format!(
                    "no PONG within {REDIS_START:?} on port {}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `redis://127.0.0.1:<port>/<db>`.
    pub fn url_db(&self, db: u32) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The unix socket the server also listens on.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// The server's temp dir (log file `redis.log`, socket `redis.sock`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Kills the server with SIGKILL (by pid) and reaps it; every
    /// connection drops, all data is gone (no persistence).
    pub fn kill(&mut self) {
        self.stop();
    }

    /// Starts the server again on the same port (after [`kill`](Self::kill),
    /// or kills it first) and waits until it answers PING. Retries while
    /// the port is briefly unavailable.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + REDIS_START;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("redis-server did not restart on port {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    fn try_connect(&self) -> std::io::Result<RedisConn> {
        RedisConn::connect(self.port)
    }

    /// The error of connecting now, `None` when a connection succeeds.
    pub fn conn_err(&self) -> Option<std::io::Error> {
        self.try_connect().err()
    }

    /// A new connection to the server (panics if it cannot connect).
    pub fn conn(&self) -> RedisConn {
        self.try_connect()
            .unwrap_or_else(|e| panic!("cannot connect to redis on port {}: {e}", self.port))
    }

    /// Runs one command on a new connection; panics on an I/O error (an
    /// error *reply* is returned as [`Reply::Error`]).
    ///
    /// ```ignore
    /// redis.cmd(&["LLEN", "celery"]).int()
    /// ```
    pub fn cmd<A: AsRef<[u8]>>(&self, args: &[A]) -> Reply {
        self.conn().cmd(args)
    }

    /// The keys matching `pattern` (`KEYS`), as text, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .cmd(&["KEYS", pattern])
            .array()
            .iter()
            .map(Reply::text)
            .collect();
        keys.sort();
        keys
    }

    /// The value of `celery-task-meta-<id>` parsed as JSON, if stored.
    pub fn task_meta(&self, id: &str) -> Option<serde_json::Value> {
        match self.cmd(&["GET", &format!("celery-task-meta-{id}")]) {
            Reply::Nil => None,
            r => Some(
                serde_json::from_slice(r.bytes())
                    .unwrap_or_else(|e| panic!("task meta of {id} is not JSON ({e}): {r:?}")),
            ),
        }
    }

    /// Every element of list `key` (`LRANGE key 0 -1`), each parsed as JSON
    /// (a kombu envelope in a queue list).
    pub fn list_json(&self, key: &str) -> Vec<serde_json::Value> {
        self.cmd(&["LRANGE", key, "0", "-1"])
            .array()
            .iter()
            .map(|r| {
                serde_json::from_slice(r.bytes())
                    .unwrap_or_else(|e| panic!("element of {key} is not JSON ({e}): {r:?}"))
            })
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nobody listens on right now (the OS picks it).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// A new empty directory under the system temp dir, unique per call.
pub fn unique_temp_dir(what: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("billiard-test-{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    dir
}

/// Makes a private CA (`ca.crt`) and a server certificate for 127.0.0.1
/// (`server.crt`, `server.key`) in `dir` with the `openssl` command; false
/// when there is no openssl or it fails.
pub fn make_test_certs(dir: &Path) -> bool {
    let run = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .is_err()
    {
        return false;
    }
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=billiard-test-ca",
    ]) && run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]) && run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ])
}

/// A [`RedisServer`] that also listens with TLS on another port, with a
/// private CA; returns the server and the `rediss://` URL (CA given as
/// redis-py's `ssl_ca_certs`). `None` (after [`skip`]) without openssl.
pub fn tls_redis_or_skip(test: &str) -> Option<(RedisServer, String)> {
    redis_server_exe().or_else(|| {
        skip(test, "redis-server is not on PATH");
        None
    })?;
    let certs = unique_temp_dir("tls-certs");
    if !make_test_certs(&certs) {
        skip(test, "no openssl command to make test certificates");
        return None;
    }
    let tls_port = free_port();
    let file = |n: &str| certs.join(n).display().to_string();
    let redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &file("server.crt"),
        "--tls-key-file",
        &file("server.key"),
        "--tls-ca-cert-file",
        &file("ca.crt"),
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!(
        "rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=required&ssl_ca_certs={}",
        file("ca.crt")
    );
    Some((redis, url))
}

// ----- a minimal Redis (RESP2) client -------------------------------------

/// One Redis reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Nil,
    Int(i64),
    Status(String),
    Error(String),
    Bulk(Vec<u8>),
    Array(Vec<Reply>),
}

impl Reply {
    /// The integer of an `Int` reply (panics otherwise).
    pub fn int(&self) -> i64 {
        match self {
            Reply::Int(i) => *i,
            other => panic!("expected an integer reply, got {other:?}"),
        }
    }

    /// The bytes of a bulk or status reply (panics otherwise).
    pub fn bytes(&self) -> &[u8] {
        match self {
            Reply::Bulk(b) => b,
            Reply::Status(s) => s.as_bytes(),
            other => panic!("expected a bulk reply, got {other:?}"),
        }
    }

    /// A bulk, status or integer reply as text (lossy UTF-8).
    pub fn text(&self) -> String {
        match self {
            Reply::Int(i) => i.to_string(),
            other => String::from_utf8_lossy(other.bytes()).into_owned(),
        }
    }

    /// The elements of an array reply (an empty vector for `Nil`; panics
    /// otherwise).
    pub fn array(&self) -> &[Reply] {
        match self {
            Reply::Array(a) => a,
            Reply::Nil => &[],
            other => panic!("expected an array reply, got {other:?}"),
        }
    }

    pub fn is_nil(&self) -> bool {
        matches!(self, Reply::Nil)
    }
}

/// A connection speaking RESP2; binary-safe (keys such as the priority
/// queue `celery\x06\x163` are plain byte strings).
pub struct RedisConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RedisConn {
    /// Connects to `127.0.0.1:port` with 30 s read/write timeouts.
    pub fn connect(port: u16) -> std::io::Result<RedisConn> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        Ok(RedisConn {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sets the read timeout (for waiting on pub/sub messages).
    pub fn set_read_timeout(&mut self, d: Duration) {
        let _ = self.reader.get_ref().set_read_timeout(Some(d));
    }

    /// Sends one command and reads its reply; panics on an I/O error.
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Reply {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("redis command failed ({e}): {:?}", show_args(args)))
    }

    /// Sends one command and reads its reply.
    pub fn try_cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> std::io::Result<Reply> {
        self.send(args)?;
        self.read_reply()
    }

    /// Sends one command without reading a reply (SUBSCRIBE, pipelining).
    pub fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) -> std::io::Result<()> {
        let mut buf = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            let a = a.as_ref();
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a);
            buf.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&buf)
    }

    /// Reads one reply (a pub/sub message after SUBSCRIBE).
    pub fn read_reply(&mut self) -> std::io::Result<Reply> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if line.len() < 3 || !line.ends_with(b"\r\n") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("bad RESP line {:?}", String::from_utf8_lossy(&line)),
            ));
        }
        let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
        let num = || {
            body.parse::<i64>().map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{body:?}: {e}"))
            })
        };
        Ok(match line[0] {
            b'+' => Reply::Status(body),
            b'-' => Reply::Error(body),
            b':' => Reply::Int(num()?),
            b'$' => {
                let n = num()?;
                if n < 0 {
                    Reply::Nil
                } else {
                    let mut data = vec![0; n as usize + 2];
                    self.reader.read_exact(&mut data)?;
                    data.truncate(n as usize);
                    Reply::Bulk(data)
                }
            }
            b'*' => {
                let n = num()?;
                if n < 0 {
                    Reply::Nil
                } else {
                    let mut items = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        items.push(self.read_reply()?);
                    }
                    Reply::Array(items)
                }
            }
            other => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unknown RESP type byte {other:#x}"),
                ))
            }
        })
    }
}

fn show_args<A: AsRef<[u8]>>(args: &[A]) -> Vec<String> {
    args.iter()
        .map(|a| String::from_utf8_lossy(a.as_ref()).into_owned())
        .collect()
}

// ----- Python -------------------------------------------------------------

/// A Python preamble that imports `json`, `sys`, `time` and `celery` and
/// makes `app`, a Celery app with `broker_url` as broker and result
/// backend, JSON only.
pub fn py_app(broker_url: &str) -> String {
    py_app_with(broker_url, broker_url)
}

/// [`py_app`] with a result backend of its own: a Redis beside an AMQP
/// broker, or `rpc://`. (`chain` and `group` are imported too.)
pub fn py_app_with(broker_url: &str, backend_url: &str) -> String {
    let url = serde_json::to_string(broker_url).expect("a string serializes");
    let backend = serde_json::to_string(backend_url).expect("a string serializes");
    format!(
        r#"import json, sys, time
import celery
from celery import Celery, chain, group
app = Celery("billiard_test", broker={url}, backend={backend})
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    broker_connection_retry_on_startup=True,
)
"#
    )
}

/// The venv's `celery` executable, next to its Python.
pub fn celery_exe(py: &Path) -> PathBuf {
    py.with_file_name("celery")
}

/// `celery -A MODULE ARGS` run in `dir` (which holds `MODULE.py`):
/// (success, stdout, stderr).
pub fn celery_cli_in(py: &Path, dir: &Path, module: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(celery_exe(py));
    cmd.current_dir(dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["-A", module])
        .args(args);
    let out = run_with_timeout(cmd, Duration::from_secs(90));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `billiard-host ARGS` to its end, within 120 s.
pub fn host_timeout(args: &[&str]) -> Output {
    let mut cmd = super::host_command();
    cmd.args(args);
    run_with_timeout(cmd, Duration::from_secs(120))
}

/// What a result line says, for comparing two runs: index and value, or
/// index and error kind (messages may be worded differently on each side).
pub fn gist(lines: &[serde_json::Value]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|l| match l.get("ok") {
            Some(v) => serde_json::json!({"index": l["index"], "ok": v}),
            None => serde_json::json!({"index": l["index"], "error": l["error"]["kind"]}),
        })
        .collect()
}

/// Python, after a task sent as `r`: polls `AsyncResult(r.id)` for up to
/// 60 s until its state is PROGRESS; `seen` is then `[state, info]`, else
/// `[]`.
pub const PY_SEE_PROGRESS: &str = r#"
from celery.result import AsyncResult
seen = []
deadline = time.time() + 60
while time.time() < deadline:
    a = AsyncResult(r.id, app=app)
    if a.state == "PROGRESS":
        seen = [a.state, a.info]
        break
    time.sleep(0.01)
"#;

/// How long a Python snippet may run before the test fails.
pub const PYTHON_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `script` (`python -c script args...`) with the venv's Python and
/// waits at most `timeout`, then kills it and panics. Panics when the venv
/// is missing (check with [`python_or_skip`] first).
pub fn run_python(script: &str, args: &[&str], timeout: Duration) -> Output {
    let py = python().expect("no Python venv with celery (use celery::python_or_skip)");
    let mut cmd = Command::new(&py);
    cmd.arg("-c").arg(script).args(args);
    cmd.env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    run_with_timeout(cmd, timeout)
}

/// Runs `script` with [`run_python`] (timeout [`PYTHON_TIMEOUT`]), asserts
/// that it exits 0 and returns its last stdout line parsed as JSON.
pub fn python_json(script: &str, args: &[&str]) -> serde_json::Value {
    let out = run_python(script, args, PYTHON_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed ({}):\n--- script\n{script}\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| {
            panic!(
                "python printed nothing:\n--- script\n{script}\n--- stderr\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "python's last line is not JSON ({e}): {last}\n--- stderr\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs `cmd` with stdout and stderr captured; kills it and panics (with
/// what it printed) if it has not exited after `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {timeout:?}\n--- stdout\n{}\n--- stderr\n{}",
                String::from_utf8_lossy(&out.join().unwrap_or_default()),
                String::from_utf8_lossy(&err.join().unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        buf
    })
}

// ----- billiard-host worker -----------------------------------------------

/// What [`spawn_worker`] waits for on the worker's stderr: the startup log
/// line (it names broker, queues, plugins and tasks) contains this text
/// once the worker consumes.
pub const WORKER_READY: &str = "ready";

/// How long a worker may take to print its startup line.
pub const WORKER_START: Duration = Duration::from_secs(60);

/// A running `billiard-host` child (a `worker`, or any long-running
/// command); killed by pid on drop, with everything it started.
pub struct Worker {
    child: Option<Child>,
    pid: i32,
    stderr: Arc<Mutex<String>>,
    /// The thread copying stderr: finished once the pipe closed.
    reader: Option<std::thread::JoinHandle<()>>,
}

/// How long a condition may take before a Celery test fails.
pub const DEADLINE: Duration = Duration::from_secs(90);

/// Polls `cond` until it holds; panics with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < end,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `billiard-host worker <first plugin> --plugin <each other> --broker URL
/// <extra>` (plugins by name, as [`super::plugin_str`] knows them), waited
/// for until it consumes.
pub fn worker_with(plugins: &[&str], url: &str, extra: &[&str]) -> Worker {
    let mut args: Vec<String> = vec!["worker".into()];
    for (i, p) in plugins.iter().enumerate() {
        if i > 0 {
            args.push("--plugin".into());
        }
        args.push(super::plugin_str(p));
    }
    args.extend(["--broker".to_string(), url.to_string()]);
    args.extend(extra.iter().map(|e| e.to_string()));
    spawn_worker(args)
}

/// Starts `billiard-host <args>` (e.g. `["worker", math, "--broker", url]`)
/// and waits for its startup line ([`WORKER_READY`]); panics with the
/// stderr so far if it exits or stays silent for [`WORKER_START`].
pub fn spawn_worker<I, S>(args: I) -> Worker
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = super::host_command();
    cmd.args(args);
    spawn_worker_cmd(cmd)
}

/// [`spawn_worker`] for a prepared command (extra environment, cwd...).
pub fn spawn_worker_cmd(cmd: Command) -> Worker {
    spawn_until(cmd, WORKER_READY, WORKER_START)
}

/// Starts `cmd` with stderr captured and waits until a stderr line contains
/// `marker`. Its stdout goes to the test's stdout.
pub fn spawn_until(mut cmd: Command, marker: &str, limit: Duration) -> Worker {
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id() as i32;
    let pipe = child.stderr.take().expect("stderr is piped");
    let stderr = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let reader;
    {
        let stderr = Arc::clone(&stderr);
        let marker = marker.to_string();
        reader = Some(std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            let mut seen = false;
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&line);
                if let Ok(mut s) = stderr.lock() {
                    s.push_str(&text);
                }
                if !seen && text.contains(&marker) {
                    seen = true;
                    let _ = tx.send(());
                }
            }
            // Dropping tx tells a waiting spawn_until that stderr closed.
        }));
    }
    let mut worker = Worker {
        child: Some(child),
        pid,
        stderr,
        reader,
    };
    match rx.recv_timeout(limit) {
        Ok(()) => worker,
        Err(e) => {
            let status = worker
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            worker.kill();
            panic!(
                "{cmd:?} printed no line containing {marker:?} ({}; exit status {status:?})\n--- stderr\n{}",
                match e {
                    std::sync::mpsc::RecvTimeoutError::Timeout => format!("waited {limit:?}"),
                    std::sync::mpsc::RecvTimeoutError::Disconnected => "stderr closed".into(),
                },
                worker.stderr()
            );
        }
    }
}

impl Worker {
    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Sends `sig` to the process (not its children).
    pub fn signal(&self, sig: Signal) {
        if self.child.is_some() {
            let _ = kill(Pid::from_raw(self.pid), sig);
        }
    }

    /// Polls until the process exits, at most `limit`; its exit status, or
    /// `None` if it still runs.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                // Its last lines (the shutdown summary) are read before
                // stderr() is asked: until the pipe closes, for 5 s at most
                // (a process it left behind may hold the pipe open).
                let read_by = deadline.min(Instant::now() + Duration::from_secs(5));
                if let Some(r) = &self.reader {
                    while !r.is_finished() && Instant::now() < read_by {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILLs the process and every process below it (pool workers, the
    /// zygote), by pid, and reaps it. `kill -9` of a host.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let tree = super::process_tree(self.pid);
            for pid in &tree {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            let _ = child.wait();
        }
    }

    /// SIGKILLs only the host process (its pool workers are left to notice),
    /// and reaps it.
    pub fn kill_host_only(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

// ----- rabbitmq-server ----------------------------------------------------

/// The `rabbitmq-server` start script (Debian's package puts it in
/// `/usr/lib/rabbitmq/bin`; the one in `/usr/sbin` switches users).
pub fn rabbitmq_server_exe() -> Option<PathBuf> {
    let debian = PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server");
    if debian.is_file() {
        return Some(debian);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("rabbitmq-server"))
            .find(|p| p.is_file())
    })
}

/// `epmd` (Erlang's port mapper), which each node gets on a port of its own.
fn epmd_exe() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("epmd"))
            .find(|p| p.is_file())
    })
}

/// What an AMQP test needs: a private RabbitMQ node, a Redis (the result
/// backend) and the venv's Python.
pub struct AmqpRig {
    /// The node.
    pub rabbit: RabbitMqServer,
    /// The result backend.
    pub redis: RedisServer,
    /// The venv's Python.
    pub py: PathBuf,
}

impl AmqpRig {
    /// Starts the servers, or a loud skip ([`rabbitmq_or_skip`]).
    pub fn start_or_skip(test: &str) -> Option<AmqpRig> {
        let (rabbit, redis, py) = rabbitmq_or_skip(test)?;
        Some(AmqpRig { rabbit, redis, py })
    }

    /// A worker's node name in these tests: `TAG-PID@amqp-test`.
    pub fn node(tag: &str) -> String {
        node(tag, "amqp-test")
    }

    /// [`py_app_with`] on the node, results on the Redis.
    pub fn app(&self) -> String {
        py_app_with(&self.rabbit.url(), &self.redis.url())
    }

    /// [`amqp_worker`] with results on the Redis, named [`AmqpRig::node`]`(tag)`.
    pub fn worker(&self, tag: &str, extra: &[&str]) -> Worker {
        amqp_worker(&self.rabbit, &self.redis.url(), &AmqpRig::node(tag), extra)
    }
}

/// A [`RabbitMqServer`] and a [`RedisServer`] (the result backend), or a
/// loud skip (a failure under CI) when rabbitmq-server, redis-server or
/// the venv is missing.
pub fn rabbitmq_or_skip(test: &str) -> Option<(RabbitMqServer, RedisServer, PathBuf)> {
    let py = python_or_skip(test)?;
    let redis = redis_or_skip(test)?;
    if rabbitmq_server_exe().is_none() || epmd_exe().is_none() {
        skip(
            test,
            "rabbitmq-server is not installed (apt-get install rabbitmq-server)",
        );
        return None;
    }
    Some((RabbitMqServer::start(), redis, py))
}

/// A private RabbitMQ node: its own data dir, node name, AMQP port,
/// distribution port and `epmd` (on a port of its own, so nothing of it
/// outlives the test), no plugins; stopped by pid on drop.
pub struct RabbitMqServer {
    exe: PathBuf,
    dir: PathBuf,
    port: u16,
    dist_port: u16,
    epmd_port: u16,
    epmd: Option<Child>,
    child: Option<Child>,
}

/// How long a RabbitMQ node may take to accept AMQP connections.
const RABBITMQ_START: Duration = Duration::from_secs(120);

impl RabbitMqServer {
    /// Starts a node and waits until it speaks AMQP on its port.
    pub fn start() -> RabbitMqServer {
        let exe = rabbitmq_server_exe().expect("rabbitmq-server is not installed");
        let dir = unique_temp_dir("rabbitmq");
        let mut last = String::new();
        for _ in 0..5 {
            let mut s = RabbitMqServer {
                exe: exe.clone(),
                dir: dir.clone(),
                port: free_port(),
                dist_port: free_port(),
                epmd_port: free_port(),
                epmd: None,
                child: None,
            };
            match s.spawn_and_wait() {
                Ok(()) => return s,
                Err(e) => last = e,
            }
        }
        panic!("rabbitmq-server did not start: {last}");
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        if self.epmd.is_none() {
            let epmd = Command::new(epmd_exe().ok_or("no epmd")?)
                .args(["-port", &self.epmd_port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot run epmd: {e}"))?;
            self.epmd = Some(epmd);
        }
        std::fs::write(self.dir.join("enabled_plugins"), "[].\n")
            .map_err(|e| format!("enabled_plugins: {e}"))?;
        let log = std::fs::File::create(self.dir.join("out.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.exe);
        let d = |x: &str| self.dir.join(x);
        cmd.env("HOME", &self.dir)
            .env("RABBITMQ_MNESIA_BASE", d("mnesia"))
            .env("RABBITMQ_LOG_BASE", d("log"))
            .env(
                "RABBITMQ_NODENAME",
                format!("billiard{}@localhost", self.port),
            )
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d("pid"))
            .env("RABBITMQ_CONFIG_FILE", d("rabbitmq"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d("advanced.config"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // Its own process group: the start script stays the parent of the
        // Erlang VM, and both go with the group.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let _ = std::fs::remove_file(d("pid"));
        self.child = Some(
            cmd.spawn()
                .map_err(|e| format!("cannot run rabbitmq-server: {e}"))?,
        );
        let deadline = Instant::now() + RABBITMQ_START;
        loop {
            if self.speaks_amqp() {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                let text = std::fs::read_to_string(d("out.log")).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(8).collect();
                return Err(format!("exited with {status}: {tail:?}"));
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(format!(
                    "no AMQP on port {} within {RABBITMQ_START:?}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// True when the port answers an AMQP 0-9-1 header with connection.start.
    fn speaks_amqp(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(b"AMQP\x00\x00\x09\x01").is_err() {
            return false;
        }
        let mut frame = [0u8; 7];
        s.read_exact(&mut frame).is_ok() && frame[0] == 1
    }

    /// `amqp://guest:guest@127.0.0.1:<port>//` (kombu's form, vhost `/`).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}//", self.port)
    }

    /// The AMQP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Erlang VM's pid (from RABBITMQ_PID_FILE).
    fn vm_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("pid"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    /// Kills the node with SIGKILL (its whole process group), as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(-(c.id() as i32)), Signal::SIGKILL);
            let _ = c.wait();
        }
    }

    /// Stops the node gracefully (SIGTERM to the VM), then its group.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(vm) = self.vm_pid() {
                let _ = kill(Pid::from_raw(vm), Signal::SIGTERM);
            }
            let end = Instant::now() + Duration::from_secs(30);
            while Instant::now() < end && c.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = kill(Pid::from_raw(-(c.id() as i32)), Signal::SIGKILL);
            let _ = c.wait();
        }
    }

    /// Kills the node and starts it again on the same ports and data
    /// (durable queues and persistent messages survive).
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn_and_wait() {
            panic!("rabbitmq-server did not restart: {e}");
        }
    }

    /// `name messages_ready messages_unacknowledged` of every queue.
    pub fn queues(&self) -> Vec<(String, u64, u64)> {
        self.ctl(&[
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [n, r, u] => Some((n.to_string(), r.parse().ok()?, u.parse().ok()?)),
                _ => None,
            }
        })
        .collect()
    }

    /// True when queue `name` holds `ready` messages waiting and `unacked`
    /// delivered and not yet acked.
    pub fn queue_holds(&self, name: &str, ready: u64, unacked: u64) -> bool {
        self.queues()
            .iter()
            .any(|(n, r, u)| n == name && *r == ready && *u == unacked)
    }

    /// Waits until queue `name` is empty with nothing unacked.
    pub fn wait_settled(&self, name: &str) {
        wait_until(&format!("queue {name} settled"), DEADLINE, || {
            self.queue_holds(name, 0, 0)
        });
    }

    /// Runs `rabbitmqctl ARGS` against this node; returns its stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let ctl = self.exe.with_file_name("rabbitmqctl");
        let mut cmd = Command::new(ctl);
        cmd.env("HOME", &self.dir)
            .env(
                "RABBITMQ_NODENAME",
                format!("billiard{}@localhost", self.port),
            )
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .args(["-n", &format!("billiard{}@localhost", self.port)])
            .args(args);
        let out = run_with_timeout(cmd, Duration::from_secs(60));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RabbitMqServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut e) = self.epmd.take() {
            let _ = kill(Pid::from_raw(e.id() as i32), Signal::SIGKILL);
            let _ = e.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// True once the result of task `id` in `redis` is SUCCESS.
pub fn succeeded(redis: &RedisServer, id: &str) -> bool {
    redis
        .task_meta(id)
        .is_some_and(|m| m["status"] == "SUCCESS")
}

/// `billiard-host worker` on the RabbitMQ node `rabbit` with the `math`,
/// `faults` and `stream` plugins, `--result-backend backend` (a Redis URL
/// or `rpc://`), node name `name`, then `extra`; its finisher logs each
/// task's end (`task NAME[ID] succeeded`, counted by [`runs`]). Waited for
/// until it consumes.
pub fn amqp_worker(rabbit: &RabbitMqServer, backend: &str, name: &str, extra: &[&str]) -> Worker {
    let mut cmd = super::host_command();
    cmd.args(["worker", &super::plugin_str("math")])
        .args(["--plugin", &super::plugin_str("faults")])
        .args(["--plugin", &super::plugin_str("stream")])
        .args(["--broker", &rabbit.url(), "--result-backend", backend])
        .args(["-n", name])
        .args(extra)
        .env("BILLIARD_LOG", "info,billiard_host::celery::worker=debug");
    spawn_worker_cmd(cmd)
}

/// How many times a worker's log (see [`amqp_worker`]) says task
/// `faults.sleep_ms[id]` succeeded.
pub fn runs(log: &str, id: &str) -> usize {
    log.matches(&format!("task faults.sleep_ms[{id}] succeeded"))
        .count()
}

/// `HLEN unacked`: messages reserved and not yet acked.
pub fn hlen_unacked(redis: &RedisServer) -> i64 {
    redis.cmd(&["HLEN", "unacked"]).int()
}

/// `LLEN key`.
pub fn llen(redis: &RedisServer, key: &str) -> i64 {
    redis.cmd(&["LLEN", key]).int()
}

/// The lines of a file (none if it does not exist yet).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Runs a Python snippet after the app preamble (broker and backend:
/// `url`) and returns its last stdout line as JSON.
pub fn py(url: &str, body: &str) -> serde_json::Value {
    python_json(&format!("{}\n{body}", py_app(url)), &[])
}

/// A worker's node name, unique to this test process:
/// `TAG-PID@SUFFIX`.
pub fn node(tag: &str, suffix: &str) -> String {
    format!("{tag}-{}@{suffix}", std::process::id())
}

/// A Python Celery worker of one process (`--pool solo`, no gossip, no
/// heartbeat, `-l info`) whose app is [`py_app`]`(url)` followed by
/// `tasks` (Python source), written to `dir/MODULE.py`; `flags` adds
/// `-Q`, `-n`, `--without-mingle`... Waited for until it is ready.
pub fn python_worker(
    python: &Path,
    url: &str,
    dir: &Path,
    module: &str,
    tasks: &str,
    flags: &[&str],
) -> Worker {
    std::fs::write(
        dir.join(format!("{module}.py")),
        format!("{}\n{tasks}", py_app(url)),
    )
    .unwrap_or_else(|e| panic!("write {module}.py: {e}"));
    let mut cmd = Command::new(python);
    cmd.args(["-m", "celery", "-A", module, "worker", "-c", "1"])
        .args(["--pool", "solo", "--without-gossip", "--without-heartbeat"])
        .args(["-l", "info"])
        .args(flags)
        .current_dir(dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(Stdio::null());
    spawn_until(cmd, "ready.", Duration::from_secs(90))
}

/// The port of a worker's `--metrics-addr` server, from its
/// `metrics: serving http://ADDR/` line (waited for up to `limit`).
pub fn metrics_port(w: &Worker, limit: Duration) -> u16 {
    let mut port = 0;
    wait_until("the metrics line", limit, || {
        let err = w.stderr();
        let Some(at) = err.find("metrics: serving http://") else {
            return false;
        };
        let rest = &err[at + "metrics: serving http://".len()..];
        let addr = rest.split('/').next().unwrap_or_default();
        port = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        port != 0
    });
    port
}
