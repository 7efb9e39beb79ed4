//! The producer side: send Celery protocol v2 task messages to a Redis
//! broker exactly as kombu's Redis transport does, and wait for their
//! results in Celery's Redis backend format. A Python Celery worker and a
//! `billiard-host worker` take these messages alike; a Python
//! `AsyncResult(id).get()` sees their results alike.
//!
//! ```no_run
//! use billiard_host::celery::client::{Client, SendOptions};
//! use serde_json::json;
//!
//! let client = Client::connect("redis://127.0.0.1:6379/0")?;
//! let h = client.send_task("math.square", vec![json!(3)], Default::default(), &SendOptions::default())?;
//! assert_eq!(h.get_timeout(std::time::Duration::from_secs(10))?, json!(9));
//! # Ok::<(), billiard_host::celery::client::ClientError>(())
//! ```
//!
//! What goes over the wire, per message (kombu 5.7's `Channel._put` and
//! `_queue_bind`): `SADD _kombu.binding.<queue>` and
//! `SADD _kombu.binding_permanent.<queue>` with `<queue>\x06\x16\x06\x16<queue>`
//! (once per queue and connection), then `LPUSH <queue list> <envelope>`.
//! Waiting for a result is Celery's `ResultConsumer`: `SUBSCRIBE
//! celery-task-meta-<id>` first, then `GET` the key (a result stored before
//! the subscription is found there; one stored after is published), then
//! wait for the `PUBLISH`. Many results are waited for on one subscribed
//! connection ([`Waiter`]).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::protocol::{self, ExcInfo, NewTask, ResultMeta, State, TimeLimit};
use crate::bounds;
use crate::error::{ErrorKind, TaskError};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not a Redis URL this client can use.
    #[error("bad Redis URL {url:?}: {reason}")]
    Url {
        /// The URL as given, password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Redis could not be reached (after retrying), or answered an error.
    #[error("redis at {url}: {source}")]
    Redis {
        /// The server's URL, password redacted.
        url: String,
        /// What Redis (or the connection) said.
        #[source]
        source: redis::RedisError,
    },
    /// The AMQP broker could not be reached (after retrying) or refused.
    #[error("broker {url}: {source}")]
    Broker {
        /// The broker's URL, password redacted.
        url: String,
        /// What the transport said.
        #[source]
        source: super::transport::BrokerError,
    },
    /// No result within the time given.
    #[error("no result for task {id} within {waited:?}")]
    Timeout {
        /// The task id.
        id: String,
        /// How long the call waited.
        waited: Duration,
    },
    /// A stored or published result is not Celery's result format.
    #[error("the result of task {id} is not a Celery result: {reason}")]
    BadResult {
        /// The task id.
        id: String,
        /// What is wrong with the stored value.
        reason: String,
    },
    /// A send option is out of range (a countdown, expiry or limit longer
    /// than `bounds::MAX_DURATION`): nothing was sent.
    #[error("{0}")]
    Option(String),
    /// The task ran and failed (or was revoked): its kind and message.
    #[error("task {id} failed: {error}")]
    Task {
        /// The task id.
        id: String,
        /// The error kind and message, as the result's exception gives them.
        error: TaskError,
    },
}

impl ClientError {
    /// True when the same call may succeed later (the connection failed or
    /// timed out, Redis is loading, ...), as the worker's
    /// [`BrokerError::is_transient`](super::transport::redis::BrokerError::is_transient)
    /// decides it (the one classification); false for what fails the same
    /// way every time: a bad URL, NOAUTH, WRONGPASS, NOPERM, a database
    /// index out of range, a refused option, a task's own failure.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Timeout { .. } => true,
            ClientError::Redis { source, .. } => super::transport::redis::BrokerError::Redis {
                what: "broker",
                source: source.clone(),
            }
            .is_transient(),
            ClientError::Broker { source, .. } => source.is_transient(),
            ClientError::Url { .. }
            | ClientError::BadResult { .. }
            | ClientError::Option(_)
            | ClientError::Task { .. } => false,
        }
    }
}

/// A `Result` whose error is a [`ClientError`] unless said otherwise.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// How a message is sent: where to, when, with which limits.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// The queue (default `celery`).
    pub queue: Option<String>,
    /// 0-9 (kombu's priority lists; on Redis 0 is the highest).
    pub priority: u8,
    /// Run no earlier than this long after sending (the `eta` header).
    pub countdown: Option<Duration>,
    /// Revoke (REVOKED, "expired") if not started this long after sending.
    pub expires: Option<Duration>,
    /// The hard limit (`timelimit[0]`): the job ends `time_limit`.
    pub time_limit: Option<Duration>,
    /// The soft limit (`timelimit[1]`): the job ends `soft_time_limit`.
    pub soft_time_limit: Option<Duration>,
    /// The task id (default: a fresh uuid4).
    pub task_id: Option<String>,
    /// Ask the worker not to store a result.
    pub ignore_result: bool,
}

impl SendOptions {
    /// The message for `task(*args, **kwargs)` with these options, or
    /// [`ClientError::Option`] naming a duration longer than
    /// `bounds::MAX_DURATION` (C9: such a countdown used to panic in
    /// `DateTime + TimeDelta`, or be dropped and run at once).
    pub fn message(
        &self,
        task: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> Result<NewTask> {
        let mut t = NewTask::new(task, args);
        t.kwargs = kwargs;
        if let Some(q) = &self.queue {
            t.queue = q.clone();
        }
        t.priority = self.priority.min(9);
        let now = Utc::now();
        let later = |what: &str, d: Option<Duration>| -> Result<Option<DateTime<Utc>>> {
            let Some(d) = d else { return Ok(None) };
            let d =
                bounds::check_duration(what, d).map_err(|e| ClientError::Option(e.to_string()))?;
            chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| now.checked_add_signed(d))
                .map(Some)
                .ok_or_else(|| ClientError::Option(format!("{what}: the time is out of range")))
        };
        t.eta = later("countdown", self.countdown)?;
        t.expires = later("expires", self.expires)?;
        let secs = |what: &str, d: Option<Duration>| -> Result<Option<f64>> {
            d.map(|d| bounds::check_duration(what, d).map(|d| d.as_secs_f64()))
                .transpose()
                .map_err(|e| ClientError::Option(e.to_string()))
        };
        t.timelimit = TimeLimit {
            hard: secs("time_limit", self.time_limit)?,
            soft: secs("soft_time_limit", self.soft_time_limit)?,
        };
        if let Some(id) = &self.task_id {
            t.id = id.clone();
        }
        t.ignore_result = self.ignore_result;
        Ok(t)
    }
}

/// Connection settings: how long to wait for Redis, how long to keep
/// retrying a lost connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connecting, and each command's read/write.
    pub io: Duration,
    /// How long a lost connection is retried (with backoff) before a call
    /// fails.
    pub retry_for: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            io: Duration::from_secs(10),
            retry_for: Duration::from_secs(30),
        }
    }
}

/// Opens `url` as a `redis::Client`, exactly as the worker does
/// ([`super::transport::redis::client`]): `redis://[:password@]host:port/db`,
/// `redis+unix:///path`, `unix:///path`, kombu's `redis+socket:///path`,
/// and `rediss://` with redis-py's `ssl_*` query options.
pub fn open(url: &str) -> Result<redis::Client> {
    super::transport::redis::client(url).map_err(|e| ClientError::Url {
        url: redact(url),
        reason: e.to_string(),
    })
}

pub use super::transport::redis::redact;

/// One Redis endpoint with a lazily (re)opened command connection.
struct Endpoint {
    client: redis::Client,
    url: String,
    timeouts: Timeouts,
    conn: Mutex<Option<redis::Connection>>,
}

impl Endpoint {
    fn new(url: &str, timeouts: Timeouts) -> Result<Endpoint> {
        Ok(Endpoint {
            client: open(url)?,
            url: redact(url),
            timeouts,
            conn: Mutex::new(None),
        })
    }

    fn err(&self, source: redis::RedisError) -> ClientError {
        ClientError::Redis {
            url: self.url.clone(),
            source,
        }
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let c = self.client.get_connection_with_timeout(self.timeouts.io)?;
        c.set_read_timeout(Some(self.timeouts.io))?;
        c.set_write_timeout(Some(self.timeouts.io))?;
        Ok(c)
    }

    /// Runs `f` on the connection, reconnecting with backoff while the
    /// failure is a lost connection, for at most `retry_for`. `fresh` is
    /// true when `f` runs on a new connection (redo per-connection state).
    fn with<T>(
        &self,
        mut f: impl FnMut(&mut redis::Connection, bool) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = bounds::deadline(Instant::now(), self.timeouts.retry_for);
        let mut backoff = Duration::from_millis(50);
        loop {
            let fresh = guard.is_none();
            let attempt = match guard.as_mut() {
                Some(c) => f(c, false),
                None => match self.connect() {
                    Ok(c) => f(guard.insert(c), fresh),
                    Err(e) => Err(e),
                },
            };
            match attempt {
                Ok(v) => return Ok(v),
                Err(e) if retryable(&e) && !time_left(deadline).is_zero() => {
                    *guard = None;
                    std::thread::sleep(backoff.min(time_left(deadline)));
                    backoff = backoff.saturating_mul(2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    if retryable(&e) {
                        *guard = None;
                    }
                    return Err(self.err(e));
                }
            }
        }
    }
}

/// The time left until `deadline`; `None` (a wait past the clock's range,
/// e.g. `Duration::MAX`: no deadline) gives hour-long slices for ever,
/// never the panicking `Instant + Duration::MAX` (C12).
fn time_left(deadline: Option<Instant>) -> Duration {
    match deadline {
        Some(d) => d.saturating_duration_since(Instant::now()),
        None => Duration::from_secs(3600),
    }
}

/// A failure that a new connection may cure.
fn retryable(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

/// A producer: sends task messages to a broker and hands out handles for
/// their results (by default stored on the broker, as Celery's
/// `result_backend = broker_url` does).
pub struct Client {
    broker: Broker,
    backend_url: String,
    timeouts: Timeouts,
    /// Queues whose bindings this connection declared.
    declared: Mutex<HashSet<String>>,
}

/// Where a client sends: kombu's Redis lists, or an AMQP broker.
enum Broker {
    Redis(Box<Endpoint>),
    Amqp {
        url: String,
        link: Mutex<super::transport::amqp::Amqp>,
        timeouts: Timeouts,
    },
}

impl Broker {
    fn url(&self) -> &str {
        match self {
            Broker::Redis(e) => &e.url,
            Broker::Amqp { url, .. } => url,
        }
    }

    fn redis(&self) -> Result<&Endpoint> {
        match self {
            Broker::Redis(e) => Ok(e),
            Broker::Amqp { url, .. } => Err(ClientError::Url {
                url: url.clone(),
                reason: "not a Redis URL".into(),
            }),
        }
    }

    /// Runs `f` on the AMQP transport, retrying with backoff while the
    /// broker is lost, for at most `retry_for`.
    fn amqp<T>(
        &self,
        mut f: impl FnMut(
            &mut super::transport::amqp::Amqp,
        ) -> std::result::Result<T, super::transport::BrokerError>,
    ) -> Result<T> {
        let Broker::Amqp {
            url,
            link,
            timeouts,
        } = self
        else {
            return Err(ClientError::Option("not an AMQP broker".into()));
        };
        let mut t = link.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = bounds::deadline(Instant::now(), timeouts.retry_for);
        loop {
            match f(&mut t) {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && !time_left(deadline).is_zero() => {
                    use super::transport::Transport as _;
                    let wait = t.backoff_left().max(Duration::from_millis(20));
                    std::thread::sleep(wait.min(time_left(deadline)));
                }
                Err(e) => {
                    return Err(ClientError::Broker {
                        url: url.clone(),
                        source: e,
                    })
                }
            }
        }
    }
}

impl Client {
    /// A client of `broker_url` that also reads results there.
    pub fn connect(broker_url: &str) -> Result<Client> {
        Client::with_backend(broker_url, broker_url, Timeouts::default())
    }

    /// A client with a separate result backend and explicit timeouts.
    /// Connects (and checks with PING) before returning.
    pub fn with_backend(broker_url: &str, backend_url: &str, timeouts: Timeouts) -> Result<Client> {
        Client::with_queues(
            broker_url,
            backend_url,
            timeouts,
            super::transport::QueueOptions::default(),
        )
    }

    /// [`Client::with_backend`] declaring AMQP queues as `queues` says
    /// (the fleet's `x-max-priority`, quorum queues, exchange type: as its
    /// workers declare them, or RabbitMQ refuses the declaration). Redis
    /// declares nothing: `queues` changes nothing there.
    pub fn with_queues(
        broker_url: &str,
        backend_url: &str,
        timeouts: Timeouts,
        queues: super::transport::QueueOptions,
    ) -> Result<Client> {
        use super::transport::{self, Kind, Transport as _};
        let amqp = transport::kind(broker_url).map_err(|e| ClientError::Url {
            url: redact(broker_url),
            reason: e.to_string(),
        })? == Kind::Amqp;
        let broker = if amqp {
            let t = transport::amqp::Amqp::open(broker_url, Vec::new(), queues).map_err(|e| {
                ClientError::Url {
                    url: redact(broker_url),
                    reason: e.to_string(),
                }
            })?;
            Broker::Amqp {
                url: redact(broker_url),
                link: Mutex::new(t),
                timeouts,
            }
        } else {
            Broker::Redis(Box::new(Endpoint::new(broker_url, timeouts)?))
        };
        let client = Client {
            broker,
            backend_url: backend_url.to_string(),
            timeouts,
            declared: Mutex::new(HashSet::new()),
        };
        open(backend_url)?;
        // One attempt: a broker that is not there at all is reported now
        // (a connection lost later is retried).
        match &client.broker {
            Broker::Redis(ep) => {
                let mut conn = ep.connect().map_err(|e| ep.err(e))?;
                redis::cmd("PING")
                    .query::<String>(&mut conn)
                    .map_err(|e| ep.err(e))?;
                *ep.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn);
            }
            Broker::Amqp { url, link, .. } => {
                link.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .ping()
                    .map_err(|e| ClientError::Broker {
                        url: url.clone(),
                        source: e,
                    })?;
            }
        }
        Ok(client)
    }

    /// The broker URL (password redacted).
    pub fn broker_url(&self) -> &str {
        self.broker.url()
    }

    /// Sends `task(*args, **kwargs)`; returns the handle of its result.
    pub fn send_task(
        &self,
        task: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        options: &SendOptions,
    ) -> Result<ResultHandle> {
        let mut msg = options.message(task, args, kwargs)?;
        self.send(&mut msg)?;
        Ok(self.result(&msg.id))
    }

    /// Sends one prepared message (its id is assigned if empty).
    pub fn send(&self, msg: &mut NewTask) -> Result<()> {
        self.send_many(std::slice::from_mut(msg))
    }

    /// Sends many messages in one round trip (ids assigned where empty),
    /// in order: a worker takes them first to last.
    pub fn send_many(&self, msgs: &mut [NewTask]) -> Result<()> {
        if msgs.is_empty() {
            return Ok(());
        }
        let mut pushes: Vec<(String, String)> = Vec::with_capacity(msgs.len());
        let mut queues: Vec<String> = Vec::new();
        for m in msgs.iter_mut() {
            let (mut env, key) = m.envelope();
            if env.headers.ignore_result == Some(false) {
                // As Celery's send_task writes it when not asked to ignore.
                env.headers.ignore_result = None;
            }
            let q = m.queue_name().to_string();
            if !queues.contains(&q) {
                queues.push(q);
            }
            pushes.push((key, env.to_json()));
        }
        if let Broker::Amqp { .. } = self.broker {
            // Queues declared as Celery declares them, published with
            // confirms (transport::amqp).
            use super::transport::Transport as _;
            return self.broker.amqp(|t| t.send(&pushes));
        }
        self.broker.redis()?.with(|c, fresh| {
            let mut declared = self.declared.lock().unwrap_or_else(|e| e.into_inner());
            if fresh {
                declared.clear();
            }
            let mut pipe = redis::pipe();
            let mut new_queues = Vec::new();
            for q in &queues {
                if !declared.contains(q) {
                    // kombu's _queue_bind: routing key, pattern, queue.
                    let member = format!("{q}{sep}{sep}{q}", sep = protocol::PRIORITY_SEP);
                    pipe.cmd("SADD")
                        .arg(format!("_kombu.binding.{q}"))
                        .arg(&member)
                        .ignore();
                    pipe.cmd("SADD")
                        .arg(format!("_kombu.binding_permanent.{q}"))
                        .arg(&member)
                        .ignore();
                    new_queues.push(q.clone());
                }
            }
            // Consecutive messages for one list go in one LPUSH (pushed
            // left to right, so the first is popped first by BRPOP).
            let mut i = 0;
            while i < pushes.len() {
                let key = &pushes[i].0;
                let mut cmd = redis::cmd("LPUSH");
                cmd.arg(key);
                while i < pushes.len() && &pushes[i].0 == key {
                    cmd.arg(&pushes[i].1);
                    i += 1;
                }
                pipe.add_command(cmd).ignore();
            }
            pipe.query::<()>(c)?;
            declared.extend(new_queues);
            Ok(())
        })
    }

    /// The handle of task `id`'s result (sent by anyone).
    pub fn result(&self, id: &str) -> ResultHandle {
        ResultHandle {
            id: id.to_string(),
            backend_url: self.backend_url.clone(),
            timeouts: self.timeouts,
        }
    }

    /// How many messages wait in `queue` (the sum of `LLEN` over its
    /// priority lists): nothing has taken them yet. `submit --wait` reads
    /// it to tell a queue nobody consumes from a slow task.
    pub fn queued(&self, queue: &str) -> Result<u64> {
        if let Broker::Amqp { .. } = self.broker {
            return self.broker.amqp(|t| t.queued(queue));
        }
        self.broker.redis()?.with(|c, _| {
            let mut pipe = redis::pipe();
            for key in protocol::queue_keys(queue) {
                pipe.cmd("LLEN").arg(key);
            }
            let lens: Vec<u64> = pipe.query(c)?;
            Ok(lens.into_iter().fold(0u64, u64::saturating_add))
        })
    }

    /// A [`Waiter`] on this client's result backend.
    pub fn waiter(&self) -> Result<Waiter> {
        Waiter::new(&self.backend_url, self.timeouts)
    }
}

/// The result of one task: wait for it with [`get`](Self::get).
#[derive(Debug, Clone)]
pub struct ResultHandle {
    id: String,
    backend_url: String,
    timeouts: Timeouts,
}

impl ResultHandle {
    /// The task id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits (without a limit) for the task to finish: its value, or
    /// [`ClientError::Task`] with the error kind of the failure.
    pub fn get(&self) -> Result<Value> {
        self.wait(None).and_then(|m| self.value(&m))
    }

    /// [`get`](Self::get) for at most `limit` ([`ClientError::Timeout`]).
    pub fn get_timeout(&self, limit: Duration) -> Result<Value> {
        self.wait(Some(limit)).and_then(|m| self.value(&m))
    }

    fn value(&self, meta: &ResultMeta) -> Result<Value> {
        outcome(meta).map_err(|error| ClientError::Task {
            id: self.id.clone(),
            error,
        })
    }

    /// The stored result now, if the task is done (SUCCESS, FAILURE or
    /// REVOKED); `None` while it is pending or running.
    pub fn ready(&self) -> Result<Option<ResultMeta>> {
        let ep = Endpoint::new(&self.backend_url, self.timeouts)?;
        let raw: Option<Vec<u8>> = ep.with(|c, _| {
            redis::cmd("GET")
                .arg(protocol::result_key(&self.id))
                .query(c)
        })?;
        match raw {
            None => Ok(None),
            Some(raw) => {
                let meta = parse_meta(&self.id, &raw)?;
                Ok(is_ready(meta.status).then_some(meta))
            }
        }
    }

    /// Waits for the finished result's meta (any final state), at most
    /// `limit` if given.
    pub fn wait(&self, limit: Option<Duration>) -> Result<ResultMeta> {
        let mut w = Waiter::new(&self.backend_url, self.timeouts)?;
        w.watch(std::iter::once(self.id.clone()))?;
        w.check_stored()?;
        // A limit past the clock's range (Duration::MAX) is no limit.
        let deadline = limit.and_then(|l| bounds::deadline(Instant::now(), l));
        loop {
            let slice = time_left(deadline);
            if slice.is_zero() {
                return Err(ClientError::Timeout {
                    id: self.id.clone(),
                    waited: limit.unwrap_or_default(),
                });
            }
            if let Some((_, meta)) = w.next(slice)? {
                return Ok(meta);
            }
        }
    }
}

/// Celery's READY_STATES: the task will not change any more.
pub fn is_ready(state: State) -> bool {
    matches!(state, State::Success | State::Failure | State::Revoked)
}

fn parse_meta(id: &str, raw: &[u8]) -> Result<ResultMeta> {
    serde_json::from_slice(raw).map_err(|e| ClientError::BadResult {
        id: id.to_string(),
        reason: e.to_string(),
    })
}

/// A finished result as our outcome: the value of a SUCCESS, or the error
/// kind and message of a FAILURE / REVOKED. The reverse of
/// [`protocol::exception_table`]; an exception of no kind of ours (a Python
/// task's `ValueError`) is a `task_error` named after it.
pub fn outcome(meta: &ResultMeta) -> std::result::Result<Value, TaskError> {
    match meta.status {
        State::Success => Ok(meta.result.clone()),
        State::Revoked => Err(TaskError::new(
            ErrorKind::Terminated,
            exc_of(&meta.result)
                .map(|e| message_of(&e))
                .unwrap_or_else(|| "revoked".into()),
        )),
        State::Failure => {
            let Some(exc) = exc_of(&meta.result) else {
                return Err(TaskError::new(
                    ErrorKind::TaskError,
                    format!("the task failed: {}", meta.result),
                ));
            };
            let msg = message_of(&exc);
            Err(match kind_of_exception(&exc.exc_module, &exc.exc_type) {
                Some(kind) => TaskError::new(kind, msg),
                None => TaskError::new(
                    ErrorKind::TaskError,
                    format!("{}.{}: {msg}", exc.exc_module, exc.exc_type),
                ),
            })
        }
        other => Err(TaskError::new(
            ErrorKind::TaskError,
            format!("the task is not finished (state {other:?})"),
        )),
    }
}

/// The error kind a Celery exception stands for: our table first (module
/// and type), then by type name alone (Celery re-exports billiard's time
/// limit exceptions from `celery.exceptions`).
pub fn kind_of_exception(module: &str, ty: &str) -> Option<ErrorKind> {
    ErrorKind::ALL
        .into_iter()
        .find(|k| {
            let (_, m, t) = protocol::exception_table(*k);
            m == module && t == ty
        })
        .or_else(|| {
            ErrorKind::ALL
                .into_iter()
                .find(|k| protocol::exception_table(*k).2 == ty)
        })
}

fn exc_of(v: &Value) -> Option<ExcInfo> {
    serde_json::from_value(v.clone()).ok()
}

fn message_of(e: &ExcInfo) -> String {
    match e.exc_message.as_slice() {
        [Value::String(s)] => s.clone(),
        [] => String::new(),
        many => many
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Channels subscribed or unsubscribed per command.
const SUBSCRIBE_BATCH: usize = 512;

/// Waits for the results of many tasks on one subscribed connection (plus
/// one command connection for `MGET`/`DEL`), as Celery's `ResultConsumer`.
///
/// [`watch`](Self::watch) a task *before* sending it (it returns once the
/// subscription is confirmed, so no PUBLISH can be missed); for a task sent
/// earlier, call [`check_stored`](Self::check_stored) after watching. A lost
/// connection is reopened (with backoff), every watched channel is
/// subscribed again and the stored results are checked again.
pub struct Waiter {
    info: redis::ConnectionInfo,
    url: String,
    timeouts: Timeouts,
    sub: Option<sub::SubConn>,
    cmd: Endpoint,
    watching: HashSet<String>,
    /// Results seen (stored or published) not yet handed out.
    ready: VecDeque<(String, ResultMeta)>,
    /// Channels of results handed out, to unsubscribe in a batch.
    unsubscribe: Vec<String>,
}

impl Waiter {
    /// A waiter on the result backend at `url`.
    pub fn new(url: &str, timeouts: Timeouts) -> Result<Waiter> {
        Ok(Waiter {
            info: open(url)?.get_connection_info().clone(),
            url: redact(url),
            timeouts,
            sub: None,
            cmd: Endpoint::new(url, timeouts)?,
            watching: HashSet::new(),
            ready: VecDeque::new(),
            unsubscribe: Vec::new(),
        })
    }

    fn err(&self, e: std::io::Error) -> ClientError {
        ClientError::Redis {
            url: self.url.clone(),
            source: redis::RedisError::from(e),
        }
    }

    /// How many watched tasks have not been handed out yet.
    pub fn pending(&self) -> usize {
        self.watching.len()
    }

    /// Subscribes to the results of `ids` and returns once Redis confirmed
    /// every subscription.
    pub fn watch(&mut self, ids: impl IntoIterator<Item = String>) -> Result<()> {
        let new: Vec<String> = ids
            .into_iter()
            .filter(|id| self.watching.insert(id.clone()))
            .collect();
        if self.sub.is_none() {
            // (Re)connecting subscribes to everything watched, new included.
            return self.reconnect();
        }
        for chunk in new.chunks(SUBSCRIBE_BATCH) {
            if let Err(e) = self.subscribe(chunk) {
                if !sub::retryable(&e) {
                    return Err(self.err(e));
                }
                return self.reconnect();
            }
        }
        Ok(())
    }

    /// `SUBSCRIBE` the result channels of `ids` on the current connection
    /// and read until each is confirmed (results arriving meanwhile are
    /// kept).
    fn subscribe(&mut self, ids: &[String]) -> std::io::Result<()> {
        // Taken out while in use; left out (None) on an error, so the
        // caller reconnects.
        let Some(mut conn) = self.sub.take() else {
            return Ok(());
        };
        let keys: Vec<String> = ids.iter().map(|id| protocol::result_key(id)).collect();
        let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
        args.extend(keys.iter().map(|k| k.as_bytes()));
        conn.send(&args)?;
        let want: HashSet<&str> = keys.iter().map(String::as_str).collect();
        let mut confirmed = 0;
        let deadline = bounds::deadline(Instant::now(), self.timeouts.io);
        while confirmed < want.len() {
            let left = time_left(deadline);
            match conn.read_push(left.max(Duration::from_millis(1)))? {
                Some(sub::Push::Subscribed(ch)) if want.contains(ch.as_str()) => confirmed += 1,
                Some(sub::Push::Message(ch, payload)) => self.on_message(&ch, &payload),
                Some(_) => {}
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "SUBSCRIBE was not confirmed in time",
                    ))
                }
            }
        }
        self.sub = Some(conn);
        Ok(())
    }

    fn on_message(&mut self, channel: &str, payload: &[u8]) {
        let Some(id) = channel.strip_prefix(protocol::RESULT_KEY_PREFIX) else {
            return;
        };
        if !self.watching.contains(id) {
            return;
        }
        if let Ok(meta) = serde_json::from_slice::<ResultMeta>(payload) {
            if is_ready(meta.status) {
                self.watching.remove(id);
                self.ready.push_back((id.to_string(), meta));
            }
        }
    }

    /// Opens the subscribed connection again (with backoff, at most
    /// `retry_for`), subscribes to every watched channel, then checks the
    /// stored results (results published while disconnected are there).
    fn reconnect(&mut self) -> Result<()> {
        let deadline = bounds::deadline(Instant::now(), self.timeouts.retry_for);
        let mut backoff = Duration::from_millis(50);
        loop {
            self.sub = None;
            match self.open_and_subscribe() {
                Ok(()) => return self.check_stored(),
                Err(e) if sub::retryable(&e) && !time_left(deadline).is_zero() => {
                    std::thread::sleep(backoff.min(time_left(deadline)));
                    backoff = backoff.saturating_mul(2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    self.sub = None;
                    return Err(self.err(e));
                }
            }
        }
    }

    fn open_and_subscribe(&mut self) -> std::io::Result<()> {
        self.sub = Some(sub::SubConn::connect(&self.info, self.timeouts.io)?);
        self.unsubscribe.clear();
        let all: Vec<String> = self.watching.iter().cloned().collect();
        for chunk in all.chunks(SUBSCRIBE_BATCH) {
            self.subscribe(chunk)?;
        }
        Ok(())
    }

    /// Reads the stored results of every watched task (`MGET`); finished
    /// ones are handed out by [`next`](Self::next).
    pub fn check_stored(&mut self) -> Result<()> {
        let ids: Vec<String> = self.watching.iter().cloned().collect();
        for chunk in ids.chunks(SUBSCRIBE_BATCH) {
            let keys: Vec<String> = chunk.iter().map(|id| protocol::result_key(id)).collect();
            let values: Vec<Option<Vec<u8>>> = self
                .cmd
                .with(|c, _| redis::cmd("MGET").arg(&keys).query(c))?;
            for (id, raw) in chunk.iter().zip(values) {
                if let Some(raw) = raw {
                    let meta = parse_meta(id, &raw)?;
                    if is_ready(meta.status) && self.watching.remove(id) {
                        self.ready.push_back((id.clone(), meta));
                    }
                }
            }
        }
        Ok(())
    }

    /// The next finished result among the watched tasks, waiting at most
    /// `limit`; `None` when none finished in time (or none is watched).
    pub fn next(&mut self, limit: Duration) -> Result<Option<(String, ResultMeta)>> {
        let deadline = bounds::deadline(Instant::now(), limit);
        loop {
            if let Some((id, meta)) = self.ready.pop_front() {
                self.unsubscribe.push(protocol::result_key(&id));
                if self.unsubscribe.len() >= SUBSCRIBE_BATCH || self.watching.is_empty() {
                    self.flush_unsubscribe();
                }
                return Ok(Some((id, meta)));
            }
            if self.watching.is_empty() {
                return Ok(None);
            }
            let Some(conn) = self.sub.as_mut() else {
                self.reconnect()?;
                continue;
            };
            match conn.read_push(time_left(deadline)) {
                Ok(Some(sub::Push::Message(ch, payload))) => self.on_message(&ch, &payload),
                Ok(Some(_)) => {}
                // No deadline (a limit past the clock's range): wait on.
                Ok(None) if deadline.is_none() => {}
                Ok(None) => return Ok(None),
                Err(e) if sub::retryable(&e) => self.reconnect()?,
                Err(e) => return Err(self.err(e)),
            }
        }
    }

    /// Unsubscribes the channels of results already handed out (without
    /// waiting for the confirmations, which `next` skips).
    fn flush_unsubscribe(&mut self) {
        if self.unsubscribe.is_empty() {
            return;
        }
        let chans = std::mem::take(&mut self.unsubscribe);
        if let Some(conn) = self.sub.as_mut() {
            let mut args: Vec<&[u8]> = vec![b"UNSUBSCRIBE"];
            args.extend(chans.iter().map(|c| c.as_bytes()));
            if conn.send(&args).is_err() {
                self.sub = None;
            }
        }
    }

    /// Deletes the stored results of `ids` (Celery's `forget()`), for
    /// results nobody else will read.
    pub fn forget(&mut self, ids: &[String]) -> Result<()> {
        for chunk in ids.chunks(SUBSCRIBE_BATCH) {
            let keys: Vec<String> = chunk.iter().map(|id| protocol::result_key(id)).collect();
            self.cmd
                .with(|c, _| redis::cmd("DEL").arg(&keys).query::<i64>(c))?;
        }
        Ok(())
    }
}

/// The subscribed connection: a minimal RESP2 reader of our own, because a
/// read timeout must lose nothing. (`redis::Connection` counts a timed-out
/// read as a reply still owed and silently drops the next non-push value it
/// reads, which on a RESP2 subscription is a result.) Bytes read before a
/// timeout stay in the buffer for the next read. Over TLS the redis crate's
/// connection is used with RESP3, where results are push frames.
mod sub {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    use redis::ConnectionAddr;

    /// What arrives on a subscribed connection.
    pub enum Push {
        Subscribed(String),
        Message(String, Vec<u8>),
        Other,
    }

    enum Stream {
        Tcp(TcpStream),
        Unix(UnixStream),
    }

    impl Stream {
        fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
            match self {
                Stream::Tcp(s) => s.set_read_timeout(d),
                Stream::Unix(s) => s.set_read_timeout(d),
            }
        }

        fn set_write_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
            match self {
                Stream::Tcp(s) => s.set_write_timeout(d),
                Stream::Unix(s) => s.set_write_timeout(d),
            }
        }

        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self {
                Stream::Tcp(s) => s.read(buf),
                Stream::Unix(s) => s.read(buf),
            }
        }

        fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
            match self {
                Stream::Tcp(s) => s.write_all(buf),
                Stream::Unix(s) => s.write_all(buf),
            }
        }
    }

    /// A parsed RESP2 value.
    enum Frame {
        Simple(Vec<u8>),
        Error(Vec<u8>),
        Int,
        Bulk(Option<Vec<u8>>),
        Array(Option<Vec<Frame>>),
    }

    /// A subscribed connection: our RESP2 reader over TCP or a unix
    /// socket, or, for TLS, the redis crate's connection speaking RESP3
    /// (there every result is a push frame, which a timed-out read never
    /// swallows: only replies are skipped after a timeout).
    pub enum SubConn {
        Raw(RawConn),
        Resp3(Box<redis::Connection>),
    }

    pub struct RawConn {
        stream: Stream,
        buf: Vec<u8>,
        /// Parsed up to here.
        pos: usize,
    }

    impl SubConn {
        /// Connects to the backend of `info` and authenticates (a
        /// subscription does not depend on the database).
        pub fn connect(info: &redis::ConnectionInfo, timeout: Duration) -> std::io::Result<Self> {
            match info.addr() {
                ConnectionAddr::Tcp(..) | ConnectionAddr::Unix(_) => {
                    RawConn::connect(info, timeout).map(SubConn::Raw)
                }
                _ => {
                    let settings = info
                        .redis_settings()
                        .clone()
                        .set_protocol(redis::ProtocolVersion::RESP3);
                    let info = info.clone().set_redis_settings(settings);
                    let conn = redis::Client::open(info)
                        .and_then(|c| c.get_connection_with_timeout(timeout))
                        .map_err(to_io)?;
                    conn.set_write_timeout(Some(timeout)).map_err(to_io)?;
                    Ok(SubConn::Resp3(Box::new(conn)))
                }
            }
        }

        /// Sends one command.
        pub fn send(&mut self, args: &[&[u8]]) -> std::io::Result<()> {
            match self {
                SubConn::Raw(c) => c.send(args),
                SubConn::Resp3(c) => {
                    let mut cmd = redis::cmd(
                        std::str::from_utf8(args.first().copied().unwrap_or(b"PING"))
                            .unwrap_or("PING"),
                    );
                    for a in args.iter().skip(1) {
                        cmd.arg(*a);
                    }
                    c.send_packed_command(&cmd.get_packed_command())
                        .map_err(to_io)
                }
            }
        }

        /// The next push, waiting at most `limit`; `None` on timeout.
        pub fn read_push(&mut self, limit: Duration) -> std::io::Result<Option<Push>> {
            match self {
                SubConn::Raw(c) => c.read_push(limit),
                SubConn::Resp3(c) => {
                    c.set_read_timeout(Some(limit.max(Duration::from_millis(1))))
                        .map_err(to_io)?;
                    match c.recv_response() {
                        Ok(redis::Value::Push { kind, data }) => {
                            let text = |v: &redis::Value| match v {
                                redis::Value::BulkString(b) => {
                                    Some(String::from_utf8_lossy(b).into_owned())
                                }
                                redis::Value::SimpleString(s) => Some(s.clone()),
                                _ => None,
                            };
                            Ok(Some(match (kind, data.as_slice()) {
                                (redis::PushKind::Message, [ch, redis::Value::BulkString(p)]) => {
                                    match text(ch) {
                                        Some(ch) => Push::Message(ch, p.clone()),
                                        None => Push::Other,
                                    }
                                }
                                (redis::PushKind::Subscribe, [ch, ..]) => match text(ch) {
                                    Some(ch) => Push::Subscribed(ch),
                                    None => Push::Other,
                                },
                                _ => Push::Other,
                            }))
                        }
                        Ok(_) => Ok(Some(Push::Other)),
                        Err(e) if e.is_timeout() => Ok(None),
                        Err(e) => Err(to_io(e)),
                    }
                }
            }
        }
    }

    fn to_io(e: redis::RedisError) -> std::io::Error {
        let kind = if e.is_timeout() {
            std::io::ErrorKind::TimedOut
        } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
            std::io::ErrorKind::ConnectionAborted
        } else {
            std::io::ErrorKind::InvalidData
        };
        std::io::Error::new(kind, e.to_string())
    }

    /// A failure a new connection may cure.
    pub fn retryable(e: &std::io::Error) -> bool {
        !matches!(
            e.kind(),
            std::io::ErrorKind::InvalidData
                | std::io::ErrorKind::PermissionDenied
                | std::io::ErrorKind::Unsupported
        )
    }

    fn bad(msg: impl Into<String>) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
    }

    impl RawConn {
        fn connect(info: &redis::ConnectionInfo, timeout: Duration) -> std::io::Result<Self> {
            let stream = match info.addr() {
                ConnectionAddr::Tcp(host, port) => {
                    use std::net::ToSocketAddrs;
                    let mut last = None;
                    let mut found = None;
                    for addr in (host.as_str(), *port).to_socket_addrs()? {
                        match TcpStream::connect_timeout(&addr, timeout) {
                            Ok(s) => {
                                found = Some(s);
                                break;
                            }
                            Err(e) => last = Some(e),
                        }
                    }
                    let s = match found {
                        Some(s) => s,
                        None => {
                            return Err(last.unwrap_or_else(|| {
                                std::io::Error::new(
                                    std::io::ErrorKind::NotFound,
                                    format!("no address for {host}"),
                                )
                            }))
                        }
                    };
                    s.set_nodelay(true)?;
                    Stream::Tcp(s)
                }
                ConnectionAddr::Unix(path) => Stream::Unix(UnixStream::connect(path)?),
                _ => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::Unsupported,
                        "TLS goes through SubConn::Resp3",
                    ))
                }
            };
            stream.set_write_timeout(Some(timeout))?;
            let mut conn = RawConn {
                stream,
                buf: Vec::with_capacity(64 * 1024),
                pos: 0,
            };
            let settings = info.redis_settings();
            if let Some(password) = settings.password() {
                let mut args: Vec<&[u8]> = vec![b"AUTH"];
                if let Some(user) = settings.username() {
                    args.push(user.as_bytes());
                }
                args.push(password.as_bytes());
                conn.send(&args)?;
                match conn.read_frame(timeout)? {
                    Some(Frame::Simple(_)) => {}
                    Some(Frame::Error(e)) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::PermissionDenied,
                            format!("AUTH failed: {}", String::from_utf8_lossy(&e)),
                        ))
                    }
                    _ => return Err(bad("unexpected reply to AUTH")),
                }
            }
            Ok(conn)
        }

        fn send(&mut self, args: &[&[u8]]) -> std::io::Result<()> {
            let mut out = format!("*{}\r\n", args.len()).into_bytes();
            for a in args {
                out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                out.extend_from_slice(a);
                out.extend_from_slice(b"\r\n");
            }
            self.stream.write_all(&out)
        }

        fn read_push(&mut self, limit: Duration) -> std::io::Result<Option<Push>> {
            let Some(frame) = self.read_frame(limit)? else {
                return Ok(None);
            };
            let Frame::Array(Some(items)) = frame else {
                return Ok(Some(Push::Other));
            };
            let text = |f: &Frame| match f {
                Frame::Bulk(Some(b)) | Frame::Simple(b) => {
                    Some(String::from_utf8_lossy(b).into_owned())
                }
                _ => None,
            };
            let push = match items.as_slice() {
                [kind, ch, Frame::Bulk(Some(payload))]
                    if text(kind).as_deref() == Some("message") =>
                {
                    match text(ch) {
                        Some(ch) => Push::Message(ch, payload.clone()),
                        None => Push::Other,
                    }
                }
                [kind, ch, _] if text(kind).as_deref() == Some("subscribe") => match text(ch) {
                    Some(ch) => Push::Subscribed(ch),
                    None => Push::Other,
                },
                _ => Push::Other,
            };
            Ok(Some(push))
        }

        /// The next whole frame, waiting at most `limit`; `None` on timeout
        /// (a partial frame stays buffered).
        fn read_frame(&mut self, limit: Duration) -> std::io::Result<Option<Frame>> {
            let deadline = crate::bounds::deadline(Instant::now(), limit);
            loop {
                if let Some((frame, end)) = parse(&self.buf[self.pos..])? {
                    self.pos += end;
                    if self.pos == self.buf.len() {
                        self.buf.clear();
                        self.pos = 0;
                    }
                    return Ok(Some(frame));
                }
                let left = super::time_left(deadline);
                if left.is_zero() {
                    return Ok(None);
                }
                if self.pos > 0 {
                    self.buf.drain(..self.pos);
                    self.pos = 0;
                }
                self.stream.set_read_timeout(Some(left))?;
                let mut chunk = [0u8; 16 * 1024];
                match self.stream.read(&mut chunk) {
                    Ok(0) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the result backend closed the connection",
                        ))
                    }
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        return Ok(None)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// One frame from the front of `buf` and its length; `None` while it
    /// is incomplete.
    fn parse(buf: &[u8]) -> std::io::Result<Option<(Frame, usize)>> {
        let Some(nl) = buf.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let Some((&kind, head)) = buf[..nl].split_first() else {
            return Err(bad("empty RESP line"));
        };
        let after = nl + 2;
        let num = || -> std::io::Result<i64> {
            std::str::from_utf8(head)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("bad RESP length"))
        };
        match kind {
            b'+' => Ok(Some((Frame::Simple(head.to_vec()), after))),
            b'-' => Ok(Some((Frame::Error(head.to_vec()), after))),
            b':' => num().map(|_| Some((Frame::Int, after))),
            b'$' => {
                let n = num()?;
                if n < 0 {
                    return Ok(Some((Frame::Bulk(None), after)));
                }
                let end = after + n as usize;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                Ok(Some((Frame::Bulk(Some(buf[after..end].to_vec())), end + 2)))
            }
            b'*' => {
                let n = num()?;
                if n < 0 {
                    return Ok(Some((Frame::Array(None), after)));
                }
                let mut items = Vec::with_capacity(n.min(16) as usize);
                let mut at = after;
                for _ in 0..n {
                    match parse(&buf[at..])? {
                        Some((f, len)) => {
                            items.push(f);
                            at += len;
                        }
                        None => return Ok(None),
                    }
                }
                Ok(Some((Frame::Array(Some(items)), at)))
            }
            other => Err(bad(format!("unknown RESP type byte {other:#x}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::celery::protocol::Exception;

    #[test]
    fn failures_map_back_to_our_kinds() {
        for kind in ErrorKind::ALL {
            let meta = ResultMeta::failure("id", &Exception::for_kind(kind, "why"));
            let err = outcome(&meta).unwrap_err();
            assert_eq!(err.kind, kind, "{meta:?}");
            assert_eq!(err.message, "why");
        }
        let expired = ResultMeta::failure("id", &Exception::revoked("expired"));
        assert_eq!(
            outcome(&expired).unwrap_err(),
            TaskError::new(ErrorKind::Terminated, "expired")
        );
        let nr = ResultMeta::failure("id", &Exception::not_registered("math.nope", None));
        assert_eq!(outcome(&nr).unwrap_err().kind, ErrorKind::UnknownTask);
        // A Python task's own exception.
        let mut py = ResultMeta::success("id", Value::Null);
        py.status = State::Failure;
        py.result = serde_json::json!({"exc_type": "ValueError", "exc_message": ["bad", 3], "exc_module": "builtins"});
        assert_eq!(
            outcome(&py).unwrap_err(),
            TaskError::new(ErrorKind::TaskError, "builtins.ValueError: bad, 3")
        );
        // Celery's own re-export of the soft limit.
        assert_eq!(
            kind_of_exception("celery.exceptions", "SoftTimeLimitExceeded"),
            Some(ErrorKind::SoftTimeLimit)
        );
        let ok = ResultMeta::success("id", serde_json::json!([1, 2]));
        assert_eq!(outcome(&ok), Ok(serde_json::json!([1, 2])));
    }

    #[test]
    fn options_become_headers() {
        let opts = SendOptions {
            queue: Some("q".into()),
            priority: 12,
            countdown: Some(Duration::from_secs(60)),
            expires: Some(Duration::from_secs(120)),
            time_limit: Some(Duration::from_secs(10)),
            soft_time_limit: Some(Duration::from_millis(2500)),
            task_id: Some("my-id".into()),
            ignore_result: false,
        };
        let mut m = opts
            .message("math.square", vec![Value::from(3)], Map::new())
            .unwrap();
        let (env, key) = m.envelope();
        assert_eq!(key, "q\x06\x169");
        assert_eq!(env.headers.id.as_deref(), Some("my-id"));
        assert_eq!(env.headers.timelimit.hard, Some(10.0));
        assert_eq!(env.headers.timelimit.soft, Some(2.5));
        let eta = protocol::parse_time(env.headers.eta.as_deref().unwrap()).unwrap();
        let exp = protocol::parse_time(env.headers.expires.as_deref().unwrap()).unwrap();
        assert!(exp > eta && eta > Utc::now());
        assert_eq!(env.properties.delivery_info.routing_key, "q");
    }

    #[test]
    fn c9_options_past_the_bound_are_refused_never_dropped_or_panicking() {
        let long = crate::bounds::MAX_DURATION + Duration::from_secs(1);
        for (what, opts) in [
            (
                "countdown",
                SendOptions {
                    countdown: Some(Duration::MAX),
                    ..SendOptions::default()
                },
            ),
            (
                "countdown",
                SendOptions {
                    countdown: Some(long),
                    ..SendOptions::default()
                },
            ),
            (
                "expires",
                SendOptions {
                    expires: Some(Duration::MAX),
                    ..SendOptions::default()
                },
            ),
            (
                "time_limit",
                SendOptions {
                    time_limit: Some(long),
                    ..SendOptions::default()
                },
            ),
            (
                "soft_time_limit",
                SendOptions {
                    soft_time_limit: Some(Duration::MAX),
                    ..SendOptions::default()
                },
            ),
        ] {
            match opts.message("math.square", vec![Value::from(3)], Map::new()) {
                Err(ClientError::Option(text)) => {
                    assert!(text.contains(what) && text.contains("10 years"), "{text}")
                }
                other => panic!("{what}: {other:?}"),
            }
        }
        // The bound itself is a real eta, ten years ahead.
        let opts = SendOptions {
            countdown: Some(crate::bounds::MAX_DURATION),
            ..SendOptions::default()
        };
        let m = opts.message("math.square", vec![], Map::new()).unwrap();
        let days = m
            .eta
            .map(|e| e.signed_duration_since(Utc::now()).num_days());
        assert_eq!(days, Some(3649));
    }

    #[test]
    fn urls_are_redacted_and_kombu_socket_urls_open() {
        assert!(!redact("redis://:secret@h:1/0").contains("secret"));
        assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
        assert!(open("redis+socket:///tmp/r.sock").is_ok());
        assert!(open("redis+unix:///tmp/r.sock").is_ok());
        assert!(matches!(open("http://x"), Err(ClientError::Url { .. })));
    }
}
