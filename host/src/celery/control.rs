//! Remote control (`celery inspect` / `celery control`) and the worker's
//! view of its tasks, for events, inspect replies and metrics.
//!
//! The pidbox, as kombu's Redis transport lays it out: requests are
//! `PUBLISH /{db}.celery.pidbox` of a kombu envelope whose body is
//! `{method, arguments, destination, pattern, matcher, ticket, reply_to:
//! {exchange, routing_key}}`; a node answers (when `reply_to` is set) with
//! `{hostname: reply}` pushed (`LPUSH`) to every queue bound to the reply
//! exchange with that routing key (`SMEMBERS _kombu.binding.<exchange>`,
//! members `routing_key\x06\x16pattern\x06\x16queue`), headers `{ticket,
//! clock}`. Replies are Celery's: `{"ok": ...}`, `{"error": ...}` or the
//! inspect value.
//!
//! Threads: *pidbox* (a blocking subscription, re-opened with backoff),
//! *ops-ticker* (every 2 s: broker health, persisted revokes, pool
//! snapshot for metrics), *pool-events* (worker pids, job starts). What
//! needs the pool is carried out by the consumer loop ([`OpsCmd`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, Sender};
use serde_json::{json, Map, Value};

use super::events::{self, Clock, Dispatcher, HeartbeatSource};
use super::protocol::{self, Exception, State};
use super::rate::RateLimits;
use super::transport::redis::{self as broker, BrokerError, Link};
use super::transport::{self, Fanout};
use crate::metrics::Metrics;
use crate::plugin::PluginInfo;
use crate::pool::{Event, JobId, Stats};

pub(super) mod revoke;

/// The Redis sorted set of revoked task ids (score: when the revoke
/// lapses, a Unix time): every host loads it, so a revoked id is not run
/// by a host that missed the broadcast or started later.
pub const REVOKED_KEY: &str = "billiard-host:revoked";

/// At most this many ids are taken from another node's `hello` (Celery's
/// `REVOKES_MAX`, the size of its revoked set).
pub const MAX_MERGED_REVOKES: usize = 50_000;

/// How a worker shows itself to operators.
#[derive(Clone, Default)]
pub struct OpsOptions {
    /// `NAME@host` (Celery's `-n`).
    pub hostname: String,
    /// Send events (`-E`).
    pub events: bool,
    /// Prometheus metrics, if served.
    pub metrics: Option<Arc<Metrics>>,
}

/// What only the consumer loop can do (it owns the pool and the broker).
pub enum OpsCmd {
    /// Kill the worker running this job; the job ends `terminated`
    /// (`revoke` with `terminate=True`).
    Terminate(JobId),
    /// Add this many worker processes (`pool_grow`).
    Grow(usize),
    /// Remove this many worker processes (`pool_shrink`; never below one).
    Shrink(usize),
    /// Consume exactly these queues from now on.
    Queues(Vec<String>),
    /// Warm shutdown.
    Shutdown,
    /// A pool snapshot: (stats, target worker count).
    Stats(Sender<(Option<Stats>, usize)>),
}

/// How a task ended, for events and metrics.
pub enum Outcome<'a> {
    /// The task returned this value.
    Success(&'a Value),
    /// `kind`: the error kind (`time_limit`, ...), or the exception type
    /// for failures that are not a pool outcome.
    Failure {
        /// The exception its result stores.
        exc: &'a Exception,
        /// The error kind, or the exception type (see the variant).
        kind: &'a str,
    },
    /// The task failed and was sent again for a retry, its RETRY stored
    /// (`task-retried`; `redelivery.rs`).
    Retried {
        /// The event's `exception` (a `repr`).
        exception: &'a str,
        /// The event's `traceback`.
        traceback: &'a str,
    },
    /// The task rejected its message: back on its queue (`requeue`), or
    /// with `exc` stored as FAILURE (`task-failed`, then `task-rejected`).
    Rejected {
        /// The message went back on its queue.
        requeue: bool,
        /// The FAILURE stored (`Reject`) when it did not.
        exc: Option<&'a Exception>,
    },
    /// The task ignored its message: acked, nothing stored, no event.
    Ignored,
}

/// A task this host holds.
struct Req {
    name: String,
    /// The arguments' JSON text as the pool got it (a tree is built only
    /// when `inspect` shows it).
    args: Vec<u8>,
    kwargs: Value,
    queue: String,
    priority: u8,
    redelivered: bool,
    eta: Option<DateTime<Utc>>,
    received: Instant,
    /// Unix time and instant of the start.
    started: Option<(f64, Instant)>,
    job: Option<JobId>,
    /// Its stamps (`{header: stamp}`), if it names stamped headers (for
    /// `revoke_by_stamped_headers` with terminate).
    stamps: Option<Map<String, Value>>,
}

#[derive(Default)]
struct Counters {
    active: AtomicU64,
    processed: AtomicU64,
}

impl HeartbeatSource for Counters {
    fn load(&self) -> (u64, u64) {
        (
            self.active.load(Ordering::Acquire),
            self.processed.load(Ordering::Acquire),
        )
    }
}

/// Static facts the replies need, set at [`Ops::start`].
#[derive(Default, Clone)]
struct Facts {
    broker_url: String,
    backend_url: String,
    concurrency: usize,
    prefetch_multiplier: usize,
    result_expires: Duration,
    registered: Vec<String>,
    visibility_timeout: Duration,
}

/// The operator-facing side of one worker: shared by the consumer loop,
/// the finisher and the ops threads.
pub struct Ops {
    opts: OpsOptions,
    clock: Arc<Clock>,
    started: Instant,
    counters: Arc<Counters>,
    tasks: Mutex<HashMap<String, Req>>,
    totals: Mutex<BTreeMap<String, u64>>,
    /// Revoked id → lapses at (Unix time).
    revoked: Mutex<HashMap<String, f64>>,
    /// Celery's `revoked_stamps`: stamped header → revoked stamps.
    revoked_stamps: Mutex<BTreeMap<String, Vec<Value>>>,
    queues: Mutex<Vec<String>>,
    facts: Mutex<Facts>,
    events: Mutex<Option<Dispatcher>>,
    cmd_tx: Sender<OpsCmd>,
    cmd_rx: Receiver<OpsCmd>,
    pool_tx: Sender<Event>,
    pool_rx: Receiver<Event>,
    /// Worker index → pid, from the pool's events.
    pids: Mutex<BTreeMap<u64, i32>>,
    job_pid: Mutex<HashMap<u64, i32>>,
    /// The broker answered the ticker's last PING.
    pub broker_ok: AtomicBool,
    /// What the ticker pings for `broker_ok` when the broker is not the
    /// Redis it keeps the revoked set on (AMQP): a handle on the
    /// consumer's own connection.
    probe: Mutex<Option<Box<dyn transport::Transport>>>,
    /// Live worker processes at the last snapshot.
    pub workers_alive: AtomicU64,
    started_threads: AtomicBool,
    /// Messages sent again for a retry, rejected, ignored (`inspect
    /// stats`' `redelivery`).
    redelivered: [AtomicU64; 3],
    /// The worker's rate limits (`control rate_limit` changes them).
    rates: std::sync::OnceLock<Arc<RateLimits>>,
    /// Rate-limited messages waiting, per task (the consumer's view).
    rate_waiting: Mutex<BTreeMap<String, usize>>,
}

fn set_repr(ids: &[String]) -> String {
    if ids.is_empty() {
        return "set()".into();
    }
    let inner: Vec<String> = ids.iter().map(|i| format!("'{i}'")).collect();
    format!("{{{}}}", inner.join(", "))
}

fn ok(v: impl Into<Value>) -> Value {
    json!({ "ok": v.into() })
}

fn nok(v: impl Into<Value>) -> Value {
    json!({ "error": v.into() })
}

/// The hostname of this machine (`/proc/sys/kernel/hostname`).
pub fn machine_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Celery's node name rules: `NAME` → `NAME@<hostname>`, `%h` → hostname;
/// none → `billiard-host@<hostname>`.
pub fn node_name(name: Option<&str>) -> String {
    let host = machine_hostname();
    match name {
        None | Some("") => format!("billiard-host@{host}"),
        Some(n) => {
            let n = n
                .replace("%h", &host)
                .replace("%n", host.split('.').next().unwrap_or(&host));
            if n.contains('@') {
                n
            } else {
                format!("{n}@{host}")
            }
        }
    }
}

/// `VmHWM` of a process in bytes (its peak resident set).
fn peak_rss(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The registered line of a task: Celery's `name [field=value]` with
/// the plugin task's signature.
fn registered_lines(plugins: &[PluginInfo]) -> Vec<String> {
    let mut out = Vec::new();
    for p in plugins {
        for t in &p.tasks {
            let args: Vec<String> = t
                .args
                .iter()
                .map(|a| format!("{}: {}", a.name, a.ty))
                .collect();
            // A task's Celery name when it has one (issue 29 item 1).
            let name = t
                .options
                .name
                .clone()
                .unwrap_or_else(|| format!("{}.{}", p.name, t.name));
            out.push(format!(
                "{name} [signature=({}) -> {}]",
                args.join(", "),
                t.ret
            ));
        }
    }
    out.sort();
    out
}

impl Ops {
    /// The operations state of a worker shown as `opts` says; nothing runs
    /// until the worker starts its threads.
    pub fn new(opts: OpsOptions) -> Arc<Ops> {
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let (pool_tx, pool_rx) = crossbeam_channel::unbounded();
        Arc::new(Ops {
            opts,
            clock: Arc::new(Clock::default()),
            started: Instant::now(),
            counters: Arc::new(Counters::default()),
            tasks: Mutex::new(HashMap::new()),
            totals: Mutex::new(BTreeMap::new()),
            revoked: Mutex::new(HashMap::new()),
            revoked_stamps: Mutex::new(BTreeMap::new()),
            queues: Mutex::new(Vec::new()),
            facts: Mutex::new(Facts::default()),
            events: Mutex::new(None),
            cmd_tx,
            cmd_rx,
            pool_tx,
            pool_rx,
            pids: Mutex::new(BTreeMap::new()),
            job_pid: Mutex::new(HashMap::new()),
            broker_ok: AtomicBool::new(false),
            probe: Mutex::new(None),
            workers_alive: AtomicU64::new(0),
            started_threads: AtomicBool::new(false),
            redelivered: Default::default(),
            rates: std::sync::OnceLock::new(),
            rate_waiting: Mutex::new(BTreeMap::new()),
        })
    }

    /// This worker's `NAME@host`.
    pub fn hostname(&self) -> &str {
        &self.opts.hostname
    }

    /// The metrics this worker feeds, if any.
    pub fn metrics(&self) -> Option<Arc<Metrics>> {
        self.opts.metrics.clone()
    }

    /// Give this to `PoolBuilder::events` (worker pids, job starts).
    pub fn pool_events(&self) -> Sender<Event> {
        self.pool_tx.clone()
    }

    /// The commands the consumer loop carries out.
    pub fn commands(&self) -> Receiver<OpsCmd> {
        self.cmd_rx.clone()
    }

    fn events(&self) -> Option<Dispatcher> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Starts the ops threads; returns once the pidbox subscription is
    /// confirmed (or after 5 s). Called by the worker before its startup line.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        self: &Arc<Ops>,
        broker_url: &str,
        backend_url: &str,
        queues: &[String],
        concurrency: usize,
        prefetch_multiplier: usize,
        result_expires: Duration,
        visibility_timeout: Duration,
        plugins: &[PluginInfo],
    ) -> Result<(), BrokerError> {
        if self.started_threads.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        *self.queues.lock().unwrap_or_else(|e| e.into_inner()) = queues.to_vec();
        *self.facts.lock().unwrap_or_else(|e| e.into_inner()) = Facts {
            broker_url: broker_url.to_string(),
            backend_url: backend_url.to_string(),
            concurrency,
            prefetch_multiplier,
            result_expires,
            registered: registered_lines(plugins),
            visibility_timeout,
        };
        // On AMQP, what Redis keeps (the revoked set) is on the result
        // backend, which is then Redis (the worker checks it).
        let amqp = transport::kind(broker_url)? == transport::Kind::Amqp;
        let db = if amqp { 0 } else { events::db_of(broker_url)? };
        // Revokes persisted by any host.
        // None: rpc:// on AMQP, no Redis (revokes live in each worker's
        // memory, as Celery's without a persistent state file).
        let mut link = book_of(broker_url, backend_url)
            .map(|b| Link::new(b, "ops"))
            .transpose()?;
        if let Some(link) = link.as_mut() {
            self.load_revoked(link);
        }
        if self.opts.events {
            let d = Dispatcher::start(
                broker_url,
                &self.opts.hostname,
                self.clock.clone(),
                self.counters.clone(),
            )?;
            *self.events.lock().unwrap_or_else(|e| e.into_inner()) = Some(d);
        }
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map(|_| ())
                .map_err(|e| BrokerError::Reply(format!("cannot start a thread: {e}")))
        };
        let me = self.clone();
        spawn("ops-ticker", Box::new(move || me.ticker(link)))?;
        let me = self.clone();
        spawn("pool-events", Box::new(move || me.pool_events_loop()))?;
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let me = self.clone();
        let url = broker_url.to_string();
        if amqp {
            spawn("pidbox", Box::new(move || me.pidbox_amqp(url, ready_tx)))?;
        } else {
            spawn("pidbox", Box::new(move || me.pidbox(url, db, ready_tx)))?;
        }
        let _ = ready_rx.recv_timeout(Duration::from_secs(5));
        let mailbox = if amqp {
            format!("{}.celery.pidbox", self.opts.hostname)
        } else {
            format!("/{db}.celery.pidbox")
        };
        tracing::info!(
            "remote control: answering as {} on {mailbox}; events {}",
            self.opts.hostname,
            if self.opts.events {
                "on (celeryev)"
            } else {
                "off (-E turns them on)"
            }
        );
        Ok(())
    }

    /// Sends `worker-offline` (events on) and waits for it to be out.
    pub fn stop(&self) {
        if let Some(d) = self.events() {
            d.stop(Duration::from_secs(2));
        }
    }

    /// The rate limits `control rate_limit` changes and `inspect
    /// registered` / `stats` show (set once, by the worker, before start).
    pub fn set_rate_limits(&self, rates: Arc<RateLimits>) {
        let _ = self.rates.set(rates);
    }

    // ----- hooks called by the consumer loop and the finisher -----

    /// Rate-limited messages now waiting, per task (`inspect stats`,
    /// metrics).
    pub fn rate_waiting(&self, waiting: BTreeMap<String, usize>) {
        if waiting.is_empty()
            && self
                .rate_waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
        {
            return;
        }
        if let Some(m) = &self.opts.metrics {
            let mut tasks: Vec<&String> = waiting.keys().collect();
            let last = self.rate_waiting.lock().unwrap_or_else(|e| e.into_inner());
            tasks.extend(last.keys().filter(|k| !waiting.contains_key(*k)));
            for t in tasks {
                m.rate_limited(t, waiting.get(t).copied().unwrap_or(0));
            }
        }
        *self.rate_waiting.lock().unwrap_or_else(|e| e.into_inner()) = waiting;
    }

    /// True if `task_id` is revoked (checked on receipt and before start).
    pub fn is_revoked(&self, task_id: &str) -> bool {
        let r = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        r.get(task_id)
            .is_some_and(|&until| until > events::unix_now())
    }

    /// True if the message `raw` of `task_id` is revoked: by its id, or by
    /// one of its stamps (`revoke_by_stamped_headers`, as Celery's
    /// `Request.revoked`).
    pub fn is_revoked_message(&self, task_id: &str, raw: &[u8]) -> bool {
        if self.is_revoked(task_id) {
            return true;
        }
        let rs = self
            .revoked_stamps
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if rs.is_empty() {
            return false;
        }
        revoke::message_stamps(raw).is_some_and(|st| !revoke::matching(&st, &rs).is_empty())
    }

    /// A message was reserved and decoded.
    #[allow(clippy::too_many_arguments)]
    pub fn received(
        &self,
        task_id: &str,
        name: &str,
        args: &[u8],
        eta: Option<DateTime<Utc>>,
        queue: &str,
        root_id: &str,
        parent_id: Option<&str>,
        expires: Option<DateTime<Utc>>,
        retries: u32,
        priority: u8,
        raw: &[u8],
    ) {
        if let Some(d) = self.events() {
            let args: Value = serde_json::from_slice(args).unwrap_or(Value::Array(vec![]));
            let mut f = Map::new();
            f.insert("uuid".into(), task_id.into());
            f.insert("name".into(), name.into());
            f.insert("args".into(), args.to_string().into());
            f.insert("kwargs".into(), "{}".into());
            f.insert("root_id".into(), root_id.into());
            f.insert("parent_id".into(), json!(parent_id));
            f.insert("retries".into(), retries.into());
            f.insert("eta".into(), json!(eta.map(protocol::iso8601)));
            f.insert("expires".into(), json!(expires.map(protocol::iso8601)));
            d.task("task-received", f);
        }
        if let Some(m) = &self.opts.metrics {
            m.received(name);
        }
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).insert(
            task_id.to_string(),
            Req {
                name: name.to_string(),
                args: args.to_vec(),
                kwargs: json!({}),
                queue: queue.to_string(),
                priority,
                redelivered: false,
                eta,
                received: Instant::now(),
                started: None,
                job: None,
                stamps: revoke::message_stamps(raw),
            },
        );
    }

    /// The job of `task_id` is about to go to the pool.
    pub fn started(&self, task_id: &str) {
        let (name, wait) = {
            let mut t = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
            let Some(r) = t.get_mut(task_id) else { return };
            r.started = Some((events::unix_now(), Instant::now()));
            let since = r
                .eta
                .and_then(|e| Utc::now().signed_duration_since(e).to_std().ok());
            (
                r.name.clone(),
                since.unwrap_or_else(|| r.received.elapsed()),
            )
        };
        self.counters.active.fetch_add(1, Ordering::AcqRel);
        if let Some(m) = &self.opts.metrics {
            m.started(&name, wait);
        }
        if let Some(d) = self.events() {
            let mut f = Map::new();
            f.insert("uuid".into(), task_id.into());
            d.task("task-started", f);
        }
    }

    /// The job of `task_id` is the pool's `job` (for terminate and
    /// `worker_pid`); nothing if it finished already.
    pub fn submitted(&self, task_id: &str, job: JobId) {
        let mut t = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = t.get_mut(task_id) {
            r.job = Some(job);
        }
    }

    /// A task's end (also for messages that never ran: revoked, refused).
    pub fn finished(&self, task_id: &str, header_name: &str, outcome: Outcome<'_>) {
        let req = self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(task_id);
        let name = req
            .as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_else(|| header_name.to_string());
        let runtime = req
            .as_ref()
            .and_then(|r| r.started)
            .map(|(_, at)| at.elapsed());
        if let Some(r) = &req {
            if let Some(job) = r.job {
                self.job_pid
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&job.0);
            }
        }
        if runtime.is_some() {
            let _ = self
                .counters
                .active
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    Some(n.saturating_sub(1))
                });
        }
        self.counters.processed.fetch_add(1, Ordering::AcqRel);
        let redelivered = match &outcome {
            Outcome::Retried { .. } => Some(0),
            Outcome::Rejected { .. } => Some(1),
            Outcome::Ignored => Some(2),
            Outcome::Success(_) | Outcome::Failure { .. } => None,
        };
        if let Some(c) = redelivered.and_then(|i| self.redelivered.get(i)) {
            c.fetch_add(1, Ordering::AcqRel);
        }
        *self
            .totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.clone())
            .or_default() += 1;
        let kind = match &outcome {
            Outcome::Success(_) => "success",
            Outcome::Failure { exc, .. } if exc.state == State::Revoked => "revoked",
            Outcome::Failure { kind, .. } => kind,
            Outcome::Retried { .. } => "retried",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Ignored => "ignored",
        };
        if let Some(m) = &self.opts.metrics {
            m.finished(&name, kind, runtime, runtime.is_some());
        }
        let Some(d) = self.events() else { return };
        let mut f = Map::new();
        f.insert("uuid".into(), task_id.into());
        match outcome {
            Outcome::Success(v) => {
                f.insert("result".into(), v.to_string().into());
                f.insert(
                    "runtime".into(),
                    runtime.map(|r| r.as_secs_f64()).unwrap_or(0.0).into(),
                );
                d.task("task-succeeded", f);
            }
            Outcome::Failure { exc, kind } if exc.state == State::Revoked => {
                let expired = exc.info.exc_message.first() == Some(&Value::from("expired"));
                f.insert("terminated".into(), (kind == "terminated").into());
                f.insert(
                    "signum".into(),
                    if kind == "terminated" {
                        json!(9)
                    } else {
                        Value::Null
                    },
                );
                f.insert("expired".into(), expired.into());
                d.task("task-revoked", f);
            }
            Outcome::Failure { exc, .. } => {
                failed_fields(&mut f, exc);
                d.task("task-failed", f);
            }
            Outcome::Retried {
                exception,
                traceback,
            } => {
                f.insert("exception".into(), exception.into());
                f.insert("traceback".into(), traceback.into());
                d.task("task-retried", f);
            }
            Outcome::Rejected { requeue, exc } => {
                // Celery 5.6+ stores a Reject without requeue as a failure
                // and says so before the rejection.
                if let Some(exc) = exc {
                    let mut failed = f.clone();
                    failed_fields(&mut failed, exc);
                    d.task("task-failed", failed);
                }
                f.insert("requeue".into(), requeue.into());
                d.task("task-rejected", f);
            }
            Outcome::Ignored => {}
        }
    }

    /// How long a reserve round trip took.
    pub fn reserve_latency(&self, d: Duration) {
        if let Some(m) = &self.opts.metrics {
            m.reserve_latency(d);
        }
    }

    /// How long storing results + acks took.
    pub fn ack_latency(&self, d: Duration) {
        if let Some(m) = &self.opts.metrics {
            m.ack_latency(d);
        }
    }

    // ----- threads -----

    fn load_revoked(&self, link: &mut Link) {
        let now = events::unix_now();
        let r = link.run(|c| {
            redis::pipe()
                .cmd("ZREMRANGEBYSCORE")
                .arg(REVOKED_KEY)
                .arg("-inf")
                .arg(now)
                .ignore()
                .cmd("ZRANGE")
                .arg(REVOKED_KEY)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query::<(Vec<(String, f64)>,)>(c)
        });
        if let Ok((ids,)) = r {
            let mut rv = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
            for (id, until) in ids {
                rv.insert(id, until);
            }
            rv.retain(|_, until| *until > now);
        }
    }

    /// `broker_ok` (`/healthz`) follows `probe`'s pings instead of the
    /// Redis PINGs: set it before [`Ops::start`] when the broker is not
    /// Redis (on AMQP the Redis is the result backend, and the broker's
    /// state is its AMQP connection's).
    pub fn set_broker_probe(&self, probe: Box<dyn transport::Transport>) {
        *self.probe.lock().unwrap_or_else(|e| e.into_inner()) = Some(probe);
    }

    fn ticker(self: Arc<Ops>, mut link: Option<Link>) {
        let every = Duration::from_secs(1);
        let mut n = 0u64;
        let mut was_ok = true;
        let mut probe = self.probe.lock().unwrap_or_else(|e| e.into_inner()).take();
        loop {
            // The broker's own connection when it is not Redis; without a
            // Redis and a probe (rpc:// on AMQP) the broker's health is the
            // consumer's to see: this one stays up.
            let ok = match probe.as_mut() {
                Some(p) => p.ping().is_ok(),
                None => link
                    .as_mut()
                    .is_none_or(|l| l.run(|c| redis::cmd("PING").query::<String>(c)).is_ok()),
            };
            self.broker_ok.store(ok, Ordering::Release);
            if ok && !was_ok {
                if let Some(m) = &self.opts.metrics {
                    m.broker_reconnect();
                }
            }
            was_ok = ok;
            if let Some(l) = link.as_mut().filter(|_| ok && n.is_multiple_of(2)) {
                self.load_revoked(l);
            }
            self.refresh_pool();
            n += 1;
            std::thread::sleep(if ok {
                every
            } else {
                link.as_ref().map_or(every, |l| l.backoff_left().max(every))
            });
        }
    }

    fn pool_events_loop(self: Arc<Ops>) {
        // Two events a job: the thread takes what has come every
        // millisecond rather than waking per event (issue 26).
        while let Ok(first) = self.pool_rx.recv() {
            let more: Vec<Event> = self.pool_rx.try_iter().collect();
            for e in std::iter::once(first).chain(more) {
                self.pool_event(e);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn pool_event(&self, e: Event) {
        {
            match e {
                Event::WorkerUp { worker, pid } => {
                    self.pids
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(worker.0, pid);
                }
                Event::WorkerDown { worker, .. } => {
                    self.pids
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&(worker.0));
                }
                Event::JobStarted { job, worker, .. } => {
                    let pid = self
                        .pids
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&(worker.0))
                        .copied();
                    if let Some(pid) = pid {
                        self.job_pid
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(job.0, pid);
                    }
                }
                // Its start may be read after the task's end removed it.
                Event::JobFinished { job, .. } => {
                    self.job_pid
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&job.0);
                }
                Event::JobProgress { .. } => {}
            }
        }
    }

    fn pidbox(self: Arc<Ops>, url: String, db: i64, ready: Sender<()>) {
        let channel = format!("/{db}.celery.pidbox");
        let mut reply = match transport::fanout(&url, "pidbox") {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("remote control is off: {e}");
                return;
            }
        };
        let mut backoff = Duration::from_millis(50);
        let mut warned = false;
        loop {
            let res: Result<(), BrokerError> = broker::client(&url).and_then(|client| {
                let mut con = client
                    .get_connection_with_timeout(Duration::from_secs(5))
                    .map_err(|e| BrokerError::Reply(e.to_string()))?;
                let _ = con.set_read_timeout(None);
                let mut ps = con.as_pubsub();
                ps.subscribe(&channel)
                    .map_err(|e| BrokerError::Reply(e.to_string()))?;
                let _ = ready.try_send(());
                if warned {
                    tracing::info!("remote control: subscribed to {channel} again");
                    warned = false;
                }
                backoff = Duration::from_millis(50);
                loop {
                    let msg = ps
                        .get_message()
                        .map_err(|e| BrokerError::Reply(e.to_string()))?;
                    let payload = msg.get_payload_bytes().to_vec();
                    self.on_pidbox(&payload, &mut *reply);
                }
            });
            if let Err(e) = res {
                if !warned {
                    tracing::warn!("remote control: lost {channel} ({e}); resubscribing");
                    warned = true;
                }
            }
            std::thread::sleep(backoff);
            backoff = backoff.saturating_mul(2).min(Duration::from_secs(5));
        }
    }

    /// The pidbox on AMQP: `{hostname}.celery.pidbox` bound to the
    /// `celery.pidbox` fanout; replies on `reply.celery.pidbox`.
    fn pidbox_amqp(self: Arc<Ops>, url: String, ready: Sender<()>) {
        let mut mb = match transport::amqp::Amqp::mailbox(&url, self.hostname()) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("remote control is off: {e}");
                return;
            }
        };
        let mut warned = false;
        loop {
            use transport::Transport as _;
            match mb.ping() {
                Ok(()) => {
                    let _ = ready.try_send(());
                    if warned {
                        tracing::info!("remote control: consuming the pidbox again");
                        warned = false;
                    }
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!("remote control: lost the pidbox ({e}); reconnecting");
                        warned = true;
                    }
                    std::thread::sleep(
                        transport::Transport::backoff_left(&mb).max(Duration::from_millis(50)),
                    );
                    continue;
                }
            }
            let _ = mb.wait(Duration::from_millis(500));
            if let Ok(got) = mb.reserve(64, Duration::ZERO, &Default::default()) {
                for r in got {
                    self.on_pidbox(&r.raw, &mut mb);
                }
            }
        }
    }

    fn on_pidbox(&self, payload: &[u8], reply: &mut dyn Fanout) {
        let Ok(env) = serde_json::from_slice::<Value>(payload) else {
            return;
        };
        // kombu's `expires` is `time() + timeout`, or 0 when the sender
        // waits for no reply (`AsyncResult.revoke()`): 0 never lapses
        // (kombu's own check is `if expires and time() > expires`).
        if let Some(exp) = env["headers"]["expires"].as_f64() {
            if exp != 0.0 && exp < events::unix_now() {
                return;
            }
        }
        if let Some(c) = env["headers"]["clock"].as_u64() {
            self.clock.adjust(c);
        }
        if env["content-type"].as_str() != Some("application/json") {
            return; // never deserialized: pickle and the like
        }
        let body = match env["body"].as_str() {
            Some(b) if env["properties"]["body_encoding"] == "base64" => {
                match base64::engine::general_purpose::STANDARD.decode(b) {
                    Ok(raw) => serde_json::from_slice::<Value>(&raw).ok(),
                    Err(_) => None,
                }
            }
            Some(b) => serde_json::from_str::<Value>(b).ok(),
            None => None,
        };
        let Some(req) = body else { return };
        if !self.addressed_to_me(&req) {
            return;
        }
        let method = req["method"].as_str().unwrap_or("");
        let args = req["arguments"].as_object().cloned().unwrap_or_default();
        let answer = self.dispatch(method, &args);
        let (Some(ex), Some(rk)) = (
            req["reply_to"]["exchange"].as_str(),
            req["reply_to"]["routing_key"].as_str(),
        ) else {
            return;
        };
        let Some(answer) = answer else { return };
        let ticket = req["ticket"].clone();
        let body = json!({ self.hostname(): answer });
        let env = events::envelope(
            &body,
            json!({"ticket": ticket, "clock": self.clock.forward()}),
            ex,
            rk,
            1,
        );
        let to = transport::Exchange {
            name: ex,
            kind: transport::ExchangeKind::Direct,
            durable: false,
        };
        let r = reply.publish(&to, rk, &env);
        if let Err(e) = r {
            tracing::warn!("remote control: cannot reply to {method}: {e}");
        }
    }

    fn addressed_to_me(&self, req: &Value) -> bool {
        let me = self.hostname();
        match &req["destination"] {
            Value::Array(d) if !d.is_empty() => d.iter().any(|x| x.as_str() == Some(me)),
            _ => match req["pattern"].as_str() {
                Some(p) if !p.is_empty() => glob(p, me),
                _ => true,
            },
        }
    }

    /// Samples the pool now: `workers_alive` and the pool's metrics. The
    /// ticker does it every second, and a scrape of `/metrics` or
    /// `/healthz` first, so neither answers from a sample taken before
    /// the workers started.
    pub fn refresh_pool(&self) {
        if let (Some(stats), _) = self.pool_snapshot() {
            self.workers_alive
                .store(stats.workers as u64, Ordering::Release);
            if let Some(m) = &self.opts.metrics {
                m.pool(&stats);
            }
        }
    }

    fn pool_snapshot(&self) -> (Option<Stats>, usize) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.cmd_tx.send(OpsCmd::Stats(tx)).is_err() {
            return (None, 0);
        }
        rx.recv_timeout(Duration::from_millis(800))
            .unwrap_or((None, 0))
    }

    fn request_info(&self, id: &str, r: &Req) -> Value {
        let pid = r.job.and_then(|j| {
            self.job_pid
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&j.0)
                .copied()
        });
        json!({
            "id": id,
            "name": r.name,
            "args": serde_json::from_slice::<Value>(&r.args).unwrap_or(Value::Array(vec![])),
            "kwargs": r.kwargs,
            "type": r.name,
            "hostname": self.hostname(),
            "time_start": r.started.map(|(t, _)| t),
            "acknowledged": false,
            "delivery_info": {
                "exchange": "",
                "routing_key": r.queue,
                "priority": r.priority,
                "redelivered": r.redelivered,
            },
            "worker_pid": pid,
        })
    }

    fn revoke(&self, args: &Map<String, Value>) -> Value {
        let mut ids: Vec<String> = match &args.get("task_id") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        // Celery takes them as a set; one request never revokes more than
        // Celery's whole revoked set holds (a hostile list would hold the
        // pidbox thread on a backend write per id).
        let mut seen = std::collections::HashSet::new();
        ids.retain(|i| seen.insert(i.clone()));
        if ids.len() > MAX_MERGED_REVOKES {
            tracing::warn!(
                "remote control: a revoke of {} ids; the first {MAX_MERGED_REVOKES} are taken",
                ids.len()
            );
            ids.truncate(MAX_MERGED_REVOKES);
        }
        let expires = self
            .facts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .result_expires;
        let until = events::unix_now() + expires.as_secs_f64();
        {
            let mut rv = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
            for id in &ids {
                rv.insert(id.clone(), until);
            }
        }
        // Persist for every host (and for hosts that start later).
        let book = {
            let f = self.facts.lock().unwrap_or_else(|e| e.into_inner());
            book_of(&f.broker_url, &f.backend_url).map(str::to_string)
        };
        if let Some(Ok(mut link)) = book.map(|b| Link::new(&b, "ops")) {
            let mut p = redis::pipe();
            for id in &ids {
                p.cmd("ZADD").arg(REVOKED_KEY).arg(until).arg(id).ignore();
            }
            if let Err(e) = link.run(|c| p.query::<()>(c)) {
                tracing::warn!("cannot persist revokes ({e}); this host still honours them");
            }
        }
        // Celery's `_revoke`: every id not running is stored REVOKED now
        // (over no result or a not-final one), so `AsyncResult.state`
        // says REVOKED before the message ever arrives.
        let idle: Vec<String> = {
            let t = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
            ids.iter()
                .filter(|id| t.get(*id).is_none_or(|r| r.started.is_none()))
                .cloned()
                .collect()
        };
        let backend = self
            .facts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .backend_url
            .clone();
        if !crate::celery::backend::is_rpc(&backend) {
            // (rpc://: REVOKED reaches a client when the message does.)
            revoke::mark_revoked(&backend, &idle, expires);
        }
        let terminate = args
            .get("terminate")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !terminate {
            return ok(format!("tasks {} flagged as revoked", set_repr(&ids)));
        }
        let mut killed = Vec::new();
        {
            let t = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
            for id in &ids {
                if let Some(job) = t.get(id).and_then(|r| r.job) {
                    if self.cmd_tx.send(OpsCmd::Terminate(job)).is_ok() {
                        killed.push(id.clone());
                    }
                }
            }
        }
        if killed.is_empty() {
            ok("terminate: tasks unknown")
        } else {
            tracing::warn!("remote control: terminating {}", killed.join(", "));
            ok(format!("terminate: {}", killed.join(", ")))
        }
    }

    /// Celery's `revoke_by_stamped_headers`: the stamps are kept (a
    /// message carrying one is revoked on receipt and before it starts);
    /// with `terminate`, running jobs carrying one are killed. Replies are
    /// Celery's f-strings, with Python's reprs.
    fn revoke_by_stamped_headers(&self, args: &Map<String, Value>) -> Value {
        let Some(headers) = revoke::stamped_headers_arg(args.get("headers")) else {
            return nok(match args.get("headers") {
                None => "TypeError(\"revoke_by_stamped_headers() missing 1 required positional argument: 'headers'\")".to_string(),
                Some(_) => "AttributeError(\"'headers' is neither a dict nor a list of key=value\")".to_string(),
            });
        };
        {
            let mut rs = self
                .revoked_stamps
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            revoke::add_stamps(&mut rs, &headers);
        }
        let shown = crate::pyrepr::py_repr(&Value::Object(headers.clone()));
        let terminate = args
            .get("terminate")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !terminate {
            return ok(format!(
                "headers {shown} flagged as revoked, but not terminated"
            ));
        }
        let asked: BTreeMap<String, Vec<Value>> = headers
            .iter()
            .map(|(k, v)| {
                let l = match v {
                    Value::Array(a) => a.clone(),
                    other => vec![other.clone()],
                };
                (k.clone(), l)
            })
            .collect();
        let mut hit: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        {
            let t = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
            for r in t.values().filter(|r| r.started.is_some()) {
                let Some(st) = &r.stamps else { continue };
                let m = revoke::matching(st, &asked);
                if m.is_empty() {
                    continue;
                }
                if let Some(job) = r.job {
                    let _ = self.cmd_tx.send(OpsCmd::Terminate(job));
                }
                for (k, v) in m {
                    let e = hit.entry(k).or_default();
                    for s in v {
                        if !e.contains(&s) {
                            e.push(s);
                        }
                    }
                }
            }
        }
        if hit.is_empty() {
            ok(format!("headers {shown} were not terminated"))
        } else {
            ok(format!("headers {} revoked", revoke::terminated_repr(&hit)))
        }
    }

    fn change_queues(&self, add: Option<&str>, cancel: Option<&str>) -> Vec<String> {
        let mut q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = add {
            if !q.iter().any(|x| x == a) {
                q.push(a.to_string());
            }
        }
        if let Some(c) = cancel {
            q.retain(|x| x != c);
        }
        q.clone()
    }

    /// The reply to one remote-control request; None: no reply.
    fn dispatch(&self, method: &str, args: &Map<String, Value>) -> Option<Value> {
        let tasks = || self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let now = Utc::now();
        let v = match method {
            "ping" => ok("pong"),
            "clock" => json!({"clock": self.clock.value()}),
            "hello" => {
                if args.get("from_node").and_then(Value::as_str) == Some(self.hostname()) {
                    return None;
                }
                // Celery 5.7 (`merge_revoked`): the other node's ids are
                // taken, and ours are answered as a list of ids.
                let until = events::unix_now()
                    + self
                        .facts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .result_expires
                        .as_secs_f64();
                let mut rv = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
                let theirs: Vec<String> = match args.get("revoked") {
                    Some(Value::Array(a)) => a
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect(),
                    Some(Value::Object(m)) => m.keys().cloned().collect(),
                    _ => Vec::new(),
                };
                for id in theirs
                    .into_iter()
                    .take(crate::celery::control::MAX_MERGED_REVOKES)
                {
                    rv.entry(id).or_insert(until);
                }
                let now = events::unix_now();
                let mut ids: Vec<(&String, &f64)> = rv.iter().filter(|(_, u)| **u > now).collect();
                ids.sort_by(|a, b| a.1.total_cmp(b.1).then(a.0.cmp(b.0)));
                let ids: Vec<&String> = ids.into_iter().map(|(k, _)| k).collect();
                json!({"revoked": ids, "clock": self.clock.forward()})
            }
            "registered" => {
                let lines = self
                    .facts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .registered
                    .clone();
                if let Some(items) = task_info_items(args) {
                    return Some(json!(lines
                        .iter()
                        .map(|l| self.registered_with(l, &items))
                        .collect::<Vec<_>>()));
                }
                json!(match self.rates.get() {
                    Some(r) => lines
                        .into_iter()
                        .map(|l| with_rate_fields(l, r))
                        .collect::<Vec<_>>(),
                    None => lines,
                })
            }
            "active" => {
                let t = tasks();
                let v: Vec<Value> = t
                    .iter()
                    .filter(|(_, r)| r.started.is_some())
                    .map(|(id, r)| self.request_info(id, r))
                    .collect();
                json!(v)
            }
            "reserved" => {
                let t = tasks();
                let v: Vec<Value> = t
                    .iter()
                    .filter(|(_, r)| r.started.is_none() && r.eta.is_none_or(|e| e <= now))
                    .map(|(id, r)| self.request_info(id, r))
                    .collect();
                json!(v)
            }
            "scheduled" => {
                let t = tasks();
                let v: Vec<Value> = t
                    .iter()
                    .filter(|(_, r)| r.started.is_none() && r.eta.is_some_and(|e| e > now))
                    .map(|(id, r)| {
                        // Celery's `priority` here is its timer entry's
                        // (always 6, `strategy.py`'s `call_at(...,
                        // priority=6)`); the message's is in the request's
                        // `delivery_info`.
                        json!({
                            "eta": r.eta.map(protocol::iso8601),
                            "priority": 6,
                            "request": self.request_info(id, r),
                        })
                    })
                    .collect();
                json!(v)
            }
            "revoked" => {
                let now = events::unix_now();
                let rv = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
                let mut v: Vec<&String> = rv
                    .iter()
                    .filter(|(_, u)| **u > now)
                    .map(|(k, _)| k)
                    .collect();
                v.sort();
                json!(v)
            }
            "query_task" => {
                let ids: Vec<String> = match args.get("ids") {
                    Some(Value::String(s)) => vec![s.clone()],
                    Some(Value::Array(a)) => a
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect(),
                    _ => Vec::new(),
                };
                let t = tasks();
                let mut m = Map::new();
                for id in ids {
                    if let Some(r) = t.get(&id) {
                        let state = if r.started.is_some() {
                            "active"
                        } else if r.eta.is_some_and(|e| e > now) {
                            "scheduled"
                        } else {
                            "reserved"
                        };
                        m.insert(id.clone(), json!([state, self.request_info(&id, r)]));
                    }
                }
                Value::Object(m)
            }
            "active_queues" => {
                let q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
                let v: Vec<Value> = q.iter().map(|name| queue_info(name)).collect();
                json!(v)
            }
            "stats" => self.stats(),
            "report" => ok(self.report()),
            "revoke_by_stamped_headers" => self.revoke_by_stamped_headers(args),
            "conf" => {
                let f = self.facts.lock().unwrap_or_else(|e| e.into_inner());
                json!({
                    "broker_url": broker::redact(&f.broker_url),
                    "result_backend": broker::redact(&f.backend_url),
                    "worker_concurrency": f.concurrency,
                    "worker_prefetch_multiplier": f.prefetch_multiplier,
                    "result_expires": f.result_expires.as_secs_f64(),
                    "broker_transport_options": {"visibility_timeout": f.visibility_timeout.as_secs_f64()},
                    "include": [],
                })
            }
            "revoke" => self.revoke(args),
            "terminate" => {
                let mut a = args.clone();
                a.insert("terminate".into(), true.into());
                self.revoke(&a)
            }
            "pool_grow" | "pool_shrink" => {
                let n = args.get("n").and_then(Value::as_u64).unwrap_or(1) as usize;
                let grow = method == "pool_grow";
                let cmd = if grow {
                    OpsCmd::Grow(n)
                } else {
                    OpsCmd::Shrink(n)
                };
                let _ = self.cmd_tx.send(cmd);
                ok(if grow {
                    "pool will grow"
                } else {
                    "pool will shrink"
                })
            }
            "add_consumer" => {
                let Some(q) = args.get("queue").and_then(Value::as_str) else {
                    return Some(nok("add_consumer needs a queue"));
                };
                let qs = self.change_queues(Some(q), None);
                let _ = self.cmd_tx.send(OpsCmd::Queues(qs));
                ok(format!("add consumer {q}"))
            }
            "cancel_consumer" => {
                let Some(q) = args.get("queue").and_then(Value::as_str) else {
                    return Some(nok("cancel_consumer needs a queue"));
                };
                let qs = self.change_queues(None, Some(q));
                let _ = self.cmd_tx.send(OpsCmd::Queues(qs));
                ok(format!("no longer consuming from {q}"))
            }
            "enable_events" | "disable_events" => match self.events() {
                None => nok("event dispatcher unavailable"),
                Some(d) => {
                    let on = method == "enable_events";
                    let changed = d.set_task_events(on);
                    ok(match (on, changed) {
                        (true, true) => "task events enabled",
                        (true, false) => "task events already enabled",
                        (false, true) => "task events disabled",
                        (false, false) => "task events already disabled",
                    })
                }
            },
            "heartbeat" => {
                if let Some(d) = self.events() {
                    d.worker("worker-heartbeat");
                }
                Value::Null
            }
            "shutdown" => {
                tracing::warn!("remote control: shutdown requested (warm)");
                let _ = self.cmd_tx.send(OpsCmd::Shutdown);
                return None;
            }
            "rate_limit" => match self.rates.get() {
                Some(r) => r.control(args),
                None => nok("rate limits are not available before the worker starts"),
            },
            "time_limit" | "autoscale" | "pool_restart" => {
                nok(format!("{method} is not supported by billiard-host"))
            }
            other => nok(format!("KeyError('{other}')")),
        };
        Some(v)
    }

    /// A `registered` line with exactly the task-info `items` asked for,
    /// in their order, those this host has a value for (Celery omits a
    /// task's `None` attributes the same way): `name`, `signature`,
    /// `rate_limit`, `global_rate_limit`. None of them: the bare name.
    fn registered_with(&self, line: &str, items: &[String]) -> String {
        let (name, rest) = line.split_once(" [").unwrap_or((line, ""));
        let rest = rest.strip_suffix(']').unwrap_or(rest);
        let sig = rest.strip_prefix("signature=").map(|s| {
            // the rate fields a line may carry come after the signature
            s.split(" rate_limit=")
                .next()
                .unwrap_or(s)
                .split(" global_rate_limit=")
                .next()
                .unwrap_or(s)
                .to_string()
        });
        let rate_fields = self
            .rates
            .get()
            .map(|r| r.registered_fields(name))
            .unwrap_or_default();
        let rates: BTreeMap<&str, &str> = rate_fields
            .split_whitespace()
            .filter_map(|f| f.split_once('='))
            .collect();
        let mut fields = Vec::new();
        for item in items {
            let v = match item.as_str() {
                "name" => Some(name.to_string()),
                "signature" => sig.clone(),
                other => rates.get(other).map(|v| v.to_string()),
            };
            if let Some(v) = v {
                fields.push(format!("{item}={v}"));
            }
        }
        if fields.is_empty() {
            name.to_string()
        } else {
            format!("{name} [{}]", fields.join(" "))
        }
    }

    /// `inspect report`: Celery answers `app.bugreport()`, its software,
    /// platform, loader and settings lines and then its configuration;
    /// this is the same text for this host.
    fn report(&self) -> String {
        let f = self.facts.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let results = if f.backend_url.is_empty() {
            "disabled".to_string()
        } else {
            broker::redact(&f.backend_url)
        };
        let mut out = format!(
            "\nsoftware -> billiard-host:{} (celery protocol 2)\n\
             platform -> system:{} arch:{}\n            kernel version:{kernel}\n\
             loader   -> billiard-host plugins\n\
             settings -> transport:redis results:{results}\n\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::env::consts::ARCH,
        );
        let conf = [
            (
                "broker_url",
                crate::pyrepr::py_str(&broker::redact(&f.broker_url)),
            ),
            ("result_backend", crate::pyrepr::py_str(&results)),
            ("worker_concurrency", f.concurrency.to_string()),
            (
                "worker_prefetch_multiplier",
                f.prefetch_multiplier.to_string(),
            ),
            ("result_expires", f.result_expires.as_secs_f64().to_string()),
            ("deprecated_settings", "None".to_string()),
        ];
        for (k, v) in conf {
            out.push_str(&format!("{k}: {v}\n"));
        }
        out
    }

    fn stats(&self) -> Value {
        let (stats, target) = self.pool_snapshot();
        let f = self.facts.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let pids: Vec<i32> = self
            .pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .copied()
            .collect();
        let peak: Map<String, Value> = pids
            .iter()
            .map(|p| (p.to_string(), json!(peak_rss(*p))))
            .collect();
        let totals = self
            .totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (host, port) = broker_host_port(&f.broker_url);
        let s = stats.unwrap_or_default();
        let rusage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
            .ok()
            .map(|r| {
                let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
                json!({
                    "utime": tv(r.user_time()),
                    "stime": tv(r.system_time()),
                    "maxrss": r.max_rss(),
                    "minflt": r.minor_page_faults(),
                    "majflt": r.major_page_faults(),
                    "nvcsw": r.voluntary_context_switches(),
                    "nivcsw": r.involuntary_context_switches(),
                })
            });
        json!({
            "total": totals,
            "pid": std::process::id(),
            "clock": self.clock.value().to_string(),
            "uptime": self.started.elapsed().as_secs(),
            "pool": {
                "implementation": "billiard-host",
                "max-concurrency": if target > 0 { target } else { f.concurrency },
                "processes": pids,
                "max-tasks-per-child": "N/A",
                "put-guarded-by-semaphore": false,
                "timeouts": [0, 0],
                "writes": {"total": s.submitted, "avg": "0.00", "all": "", "raw": "", "strategy": "fair",
                           "inqueues": {"total": s.workers, "active": s.busy}},
                "workers": s.workers,
                "busy": s.busy,
                "queued": s.queued,
                "running": s.running,
                "succeeded": s.succeeded,
                "failed": s.failed,
                "workers_started": s.workers_started,
                "worker_deaths": s.worker_deaths,
                "recycled": s.recycled,
                "restarts": s.restarts,
                "start_failures": s.start_failures,
                "peak_rss_bytes": peak,
            },
            "broker": {
                "hostname": host,
                "userid": null,
                "virtual_host": events::db_of(&f.broker_url).unwrap_or(0).to_string(),
                "port": port,
                "insist": false,
                "ssl": f.broker_url.starts_with("rediss://"),
                "transport": "redis",
                "connect_timeout": 5,
                "transport_options": {"visibility_timeout": f.visibility_timeout.as_secs_f64()},
                "login_method": null,
                "uri_prefix": null,
                "heartbeat": null,
                "failover_strategy": "round-robin",
                "alternates": [],
            },
            "prefetch_count": f.concurrency * f.prefetch_multiplier,
            "rusage": rusage,
            "sw_ident": events::SW_IDENT,
            "sw_ver": env!("CARGO_PKG_VERSION"),
            "rate_limits": self.rate_limits_stats(),
            // Ours (redelivery.rs): the task's ends that are not a result.
            "redelivery": {
                "retried": self.redelivered[0].load(Ordering::Acquire),
                "rejected": self.redelivered[1].load(Ordering::Acquire),
                "ignored": self.redelivered[2].load(Ordering::Acquire),
            },
        })
    }

    /// Ours in `stats` (Celery's worker shows rate limits only in
    /// `registered`): per limited task, its limits and the messages
    /// waiting for their turn.
    fn rate_limits_stats(&self) -> Value {
        let Some(r) = self.rates.get() else {
            return json!({});
        };
        let waiting = self
            .rate_waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut m = Map::new();
        for (task, s) in r.all() {
            m.insert(
                task.clone(),
                json!({
                    "rate_limit": s.local.as_ref().map(|x| x.text().to_string()),
                    "global_rate_limit": s.global.as_ref().map(|x| x.text().to_string()),
                    "waiting": waiting.get(&task).copied().unwrap_or(0),
                }),
            );
        }
        Value::Object(m)
    }
}

/// The task-info items of `inspect registered` (Celery's
/// `taskinfoitems`, strings not starting with `_`); None when none are
/// asked for (the default line).
fn task_info_items(args: &Map<String, Value>) -> Option<Vec<String>> {
    let items: Vec<String> = match args.get("taskinfoitems")? {
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| !s.starts_with('_'))
            .map(str::to_string)
            .collect(),
        Value::String(s) if !s.starts_with('_') => vec![s.clone()],
        _ => Vec::new(),
    };
    (!items.is_empty()).then_some(items)
}

/// The `exception` and `traceback` of a `task-failed` event.
fn failed_fields(f: &mut Map<String, Value>, exc: &Exception) {
    let msg = exc
        .info
        .exc_message
        .first()
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    f.insert(
        "exception".into(),
        format!("{}({:?})", exc.info.exc_type, msg).into(),
    );
    f.insert(
        "traceback".into(),
        exc.traceback.clone().unwrap_or_default().into(),
    );
}

/// A `registered` line with the task's rate limits added to its fields,
/// as Celery's worker adds `rate_limit=...` (`math.square [signature=...
/// rate_limit=10/s]`).
fn with_rate_fields(line: String, rates: &RateLimits) -> String {
    let name = line.split(" [").next().unwrap_or(&line);
    let extra = rates.registered_fields(name);
    if extra.is_empty() {
        return line;
    }
    match line.strip_suffix(']') {
        Some(head) => format!("{head}{extra}]"),
        None => format!("{line} [{}]", extra.trim_start()),
    }
}

/// The Redis that keeps the fleet's revoked set: the broker when it is
/// Redis, else the result backend; None when that is `rpc://`.
fn book_of<'a>(broker_url: &'a str, backend_url: &'a str) -> Option<&'a str> {
    match transport::kind(broker_url) {
        Ok(transport::Kind::Amqp) if crate::celery::backend::is_rpc(backend_url) => None,
        Ok(transport::Kind::Amqp) => Some(backend_url),
        _ => Some(broker_url),
    }
}

fn broker_host_port(url: &str) -> (Value, Value) {
    match broker::client(url) {
        Ok(c) => match c.get_connection_info().addr() {
            redis::ConnectionAddr::Tcp(h, p)
            | redis::ConnectionAddr::TcpTls {
                host: h, port: p, ..
            } => (json!(h), json!(p)),
            redis::ConnectionAddr::Unix(p) => (json!(p.display().to_string()), Value::Null),
            _ => (Value::Null, Value::Null),
        },
        Err(_) => (Value::Null, Value::Null),
    }
}

/// A queue as Celery's `active_queues` describes it.
fn queue_info(name: &str) -> Value {
    json!({
        "name": name,
        "exchange": {"name": name, "type": "direct", "arguments": null, "durable": true,
                     "passive": false, "auto_delete": false, "delivery_mode": null, "no_declare": false},
        "routing_key": name,
        "queue_arguments": null,
        "binding_arguments": null,
        "consumer_arguments": null,
        "durable": true,
        "exclusive": false,
        "auto_delete": false,
        "no_ack": false,
        "alias": null,
        "bindings": [],
        "no_declare": null,
        "expires": null,
        "message_ttl": null,
        "max_length": null,
        "max_length_bytes": null,
        "max_priority": null,
    })
}

/// `*` and `?` globbing (Celery's default `matcher` is glob).
fn glob(pattern: &str, s: &str) -> bool {
    fn m(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => m(&p[1..], s) || (!s.is_empty() && m(p, &s[1..])),
            (Some(b'?'), Some(_)) => m(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => m(&p[1..], &s[1..]),
            _ => false,
        }
    }
    m(pattern.as_bytes(), s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_follow_celery() {
        let h = machine_hostname();
        assert_eq!(node_name(None), format!("billiard-host@{h}"));
        assert_eq!(node_name(Some("w1")), format!("w1@{h}"));
        assert_eq!(node_name(Some("w1@x")), "w1@x");
        assert_eq!(node_name(Some("w1@%h")), format!("w1@{h}"));
    }

    #[test]
    fn globbing_and_set_repr() {
        assert!(glob("billiard-*", "billiard-host@x"));
        assert!(!glob("celery@*", "billiard-host@x"));
        assert_eq!(set_repr(&["a".into()]), "{'a'}");
    }
}
