//! The consumer loop: Redis ⇄ [`Pool`], through the pool's public API only.
//!
//! Threads (all in the host process; workers are unchanged):
//! - the caller's thread runs [`Worker::run`]: reserves messages (only as
//!   many as idle slots × prefetch multiplier), decodes them, holds eta
//!   messages (reserved and heartbeated, without a worker), submits jobs;
//! - the *finisher* stores results, sends follow-ups (chain, link,
//!   link_error) and acks, in batches (with results on the broker, the
//!   same script call reserves the next messages for the slots of the
//!   batch's successes and hands them to the consumer: one call per task
//!   at prefetch x1, never more reserved than slots × prefetch), retrying
//!   with backoff what may pass
//!   (Redis away, out of memory: running jobs keep running meanwhile) and
//!   finishing with less, never retrying for ever, what Redis refuses for
//!   good (`store`);
//! - the *keeper* renews the lease of every message this host holds
//!   (its score: now + the visibility timeout) every third of the timeout
//!   and runs the restore sweep.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use billiard_plugin_api::Codec;
use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::Serialize;
use serde_json::{Map, Value};

use super::backend::{self, Completion, ResultBackend, DEFAULT_RESULT_EXPIRES};
use super::builtins;
use super::chord::{self, Chords};
use super::control::{Ops, OpsCmd, Outcome};
use super::kombu;
use super::names;
use super::progress::ProgressWriter;
use super::protocol::{
    self, Embed, Envelope, Exception, NewTask, ProtocolError, ResultMeta, Signature, TimeLimit,
};
use super::rate::{self, RateLimits};
use super::redelivery::{self, Delivery, Marker, Rules, Verdict};
use super::transport::redis::{self as broker, BrokerError, Finished, Link, Reserved};
use super::transport::{self, Transport};
use crate::bounds;
use crate::error::{ErrorKind, TaskError};
use crate::pool::{Limits, Pool, TaskRef};

/// How a `billiard-host worker` consumes.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// `redis://...`, `rediss://...`, `redis+unix:///path`,
    /// `amqp://...`, `amqps://...` (see [`transport`]).
    pub broker_url: String,
    /// Where results go; None: the broker.
    pub backend_url: Option<String>,
    /// Queues to consume, in order (default `celery`).
    pub queues: Vec<String>,
    /// This host's lease on a message it reserved: its score in
    /// `unacked_index` is set to now + this, renewed every third of it (at
    /// least every 30 s), so no sweeper, whatever its own timeout, restores
    /// it while this host lives; once the host stops renewing, sweepers
    /// return it to its queue when the lease has run out (kombu's: this
    /// plus their visibility timeout).
    pub visibility_timeout: Duration,
    /// How long a message reserved by a consumer that never renews its
    /// messages (a Python Celery worker with `acks_late`) may stay
    /// unacked before this host's sweeper returns it to its queue: kombu's
    /// rule with the Python workers' `visibility_timeout` (kombu's default,
    /// 1 h). A shorter value re-runs their longer jobs (warned at start).
    pub foreign_visibility_timeout: Duration,
    /// Messages reserved per worker process (Celery's
    /// `worker_prefetch_multiplier`, default 1 here).
    pub prefetch_multiplier: usize,
    /// Result time to live (Celery's `result_expires`, default 1 day).
    pub result_expires: Duration,
    /// Store STARTED when a task is handed to the pool (Celery's
    /// `task_track_started`; off by default, as there).
    pub track_started: bool,
    /// At most this many eta messages are held without counting against
    /// the reservation limit.
    pub max_eta_held: usize,
    /// Retry, Reject and the poison-message cap (`--autoretry-for`,
    /// `--max-retries`, `--max-worker-deaths`, ...; see [`redelivery`]).
    pub redelivery: redelivery::Options,
    /// How chord header parts are counted on the result backend
    /// (`--chord-protocol`, `--chord-ordered`, `--result-chord-expires`).
    pub chord: chord::ChordOptions,
    /// Per-worker rate limits (`--rate-limit TASK=RATE`), over the tasks'
    /// own `rate_limit` options (see [`rate`]).
    pub rate_limits: Vec<rate::TaskRate>,
    /// Fleet-wide rate limits through the broker Redis
    /// (`--global-rate-limit TASK=RATE`).
    pub global_rate_limits: Vec<rate::TaskRate>,
    /// Celery names this worker answers to with a plugin's task
    /// (`--task-name proj.tasks.add=math.add`, `--task-names FILE`; see
    /// [`names`]), resolved before the plugins' own names.
    pub task_aliases: Vec<names::TaskAlias>,
    /// AMQP: `x-max-priority` on the queues declared (Celery's
    /// `task_queue_max_priority`).
    pub queue_max_priority: Option<u8>,
    /// AMQP: quorum queues (Celery's `task_default_queue_type = "quorum"`);
    /// with them, Celery 5.5+'s native delayed delivery is set up as
    /// Celery's worker sets it up ([`transport::delayed`]).
    pub quorum_queues: bool,
    /// AMQP: the type of each queue's exchange (Celery's
    /// `task_default_exchange_type`): native delayed delivery needs
    /// `topic` or `fanout`.
    pub exchange_type: transport::ExchangeKind,
    /// AMQP: the type of the native delayed delivery queues (Celery's
    /// `broker_native_delayed_delivery_queue_type`).
    pub delayed_queue_type: transport::delayed::QueueType,
    /// AMQP: the server's `consumer_timeout` (RabbitMQ closes a channel
    /// holding a delivery unacked longer): a job whose time limit is
    /// longer is refused at receipt. None: not checked (Redis).
    pub consumer_timeout: Option<Duration>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            broker_url: "redis://127.0.0.1:6379/0".into(),
            backend_url: None,
            queues: vec![protocol::DEFAULT_QUEUE.into()],
            visibility_timeout: Duration::from_secs(60),
            foreign_visibility_timeout: broker::KOMBU_VISIBILITY_TIMEOUT,
            prefetch_multiplier: 1,
            result_expires: DEFAULT_RESULT_EXPIRES,
            track_started: false,
            max_eta_held: 10_000,
            redelivery: redelivery::Options::default(),
            chord: chord::ChordOptions::default(),
            rate_limits: Vec::new(),
            global_rate_limits: Vec::new(),
            task_aliases: Vec::new(),
            queue_max_priority: None,
            quorum_queues: false,
            exchange_type: transport::ExchangeKind::Direct,
            delayed_queue_type: transport::delayed::QueueType::Quorum,
            consumer_timeout: None,
        }
    }
}

/// A request to a running [`Worker`] (what the CLI's signals map to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop reserving; finish and ack what runs; return.
    Warm,
    /// Kill running jobs and return their messages to the queue at once.
    Cold,
    /// Rolling restart: re-read the plugin files, replace every worker.
    Restart,
    /// One more worker process.
    Grow,
    /// One fewer worker process (never below one).
    Shrink,
}

/// Sends [`Control`]s to a running worker; cheap to clone.
#[derive(Clone)]
pub struct Controller {
    tx: Sender<Control>,
}

impl Controller {
    /// Sends `c`; does nothing once the worker has returned.
    pub fn send(&self, c: Control) {
        let _ = self.tx.send(c);
    }
}

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The broker could not be used.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The options do not make a worker (no queue, prefetch multiplier 0,
    /// ...); the message says which.
    #[error("{0}")]
    Config(String),
    /// The pool stopped working under the worker (its supervisor thread
    /// ended): the worker stopped reserving, returned what it could not
    /// run to the queue and exits, so its service manager restarts it.
    #[error("the pool stopped: {0}")]
    PoolLost(String),
}

/// What a finished run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Task messages taken from the broker.
    pub received: u64,
    /// Tasks whose SUCCESS was stored (or acked, for `ignore_result`).
    pub succeeded: u64,
    /// Tasks whose failure (FAILURE or REVOKED) was stored.
    pub failed: u64,
    /// Tasks whose outcome could not be stored: Redis refused it for good
    /// (acked without a result, logged), or a stop gave up waiting for
    /// Redis (left unacked: sweepers return them once their lease lapses).
    pub unstored: u64,
    /// Messages returned to their queue unrun at shutdown.
    pub requeued: u64,
    /// Tasks sent again for a retry (their RETRY stored).
    pub retried: u64,
    /// Messages their task rejected (requeued, or with a FAILURE stored:
    /// those count in `failed` too).
    pub rejected: u64,
    /// Messages their task ignored (acked, nothing stored).
    pub ignored: u64,
    /// "warm" or "cold".
    pub shutdown: String,
}

/// What the startup line says.
#[derive(Debug, Clone, Serialize)]
pub struct StartupInfo {
    /// The broker URL, password redacted.
    pub broker: String,
    /// The result backend URL (the broker's when none was given), password
    /// redacted.
    pub backend: String,
    /// The queues consumed, in order.
    pub queues: Vec<String>,
    /// Worker processes in the pool.
    pub concurrency: usize,
    /// Messages reserved per worker process (`worker_prefetch_multiplier`).
    pub prefetch_multiplier: usize,
    /// The visibility timeout in seconds (see
    /// [`WorkerOptions::visibility_timeout`]).
    pub visibility_timeout_s: f64,
    /// The plugins loaded.
    pub plugins: Vec<PluginLine>,
    /// The task names the worker answers to ([`Worker::task_names`]).
    pub tasks: Vec<String>,
}

/// One loaded plugin, as the startup line shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PluginLine {
    /// The plugin's name.
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// The plugin file's path.
    pub path: String,
}

/// A task as the worker resolves a Celery task name.
#[derive(Debug, Clone)]
struct TaskEntry {
    target: TaskRef,
    /// `plugin.task`
    name: String,
    /// The function's own name (Python's TypeError words say `add()`).
    func: String,
    args: Vec<String>,
    /// Its defaults and variadic tail (issue 29 item 4).
    options: crate::TaskOptions,
}

/// What a finished job needs from its message.
#[derive(Debug, Clone)]
struct JobCtx {
    tag: String,
    task_id: String,
    task: String,
    root_id: String,
    group: Option<String>,
    /// The `group_index` header: a chord part's place in `.j`.
    group_index: Option<i64>,
    parent_id: Option<String>,
    ignore_result: bool,
    embed: Embed,
    /// What a retry, a reject or the poison cap needs (redelivery.rs).
    delivery: Delivery,
    /// What a Celery builtin that finished at once sent (builtins.rs):
    /// its messages go out with its result, which names them as children.
    sent: Option<Box<builtins::Sent>>,
    /// Marked "running here" by the reserve (`RedisBroker::reserve`): not
    /// marked again when it starts; unmarked when held instead.
    marked: bool,
}

/// A decoded message ready to run.
struct Prepared {
    ctx: JobCtx,
    target: TaskRef,
    args: Vec<u8>,
    limits: Limits,
    expires: Option<DateTime<Utc>>,
    /// The task's `plugin.task` name (its rate limits' key).
    name: String,
    /// `celery.map`/`celery.starmap` (builtins.rs): each item's encoded
    /// args, each run as its own job; the message's result is their list.
    items: Option<Vec<Vec<u8>>>,
}

/// A job's end, for the finisher.
enum Res {
    Ok(Value),
    Err(TaskError),
    Exc(Exception),
}

struct Fin {
    ctx: JobCtx,
    res: Res,
    /// It occupied a pool slot (the consumer counts it free once acked).
    slot: bool,
    /// The pool dropped the job without an outcome (it shut down, or its
    /// supervisor died): the message goes back to its queue for another
    /// host instead of being answered here.
    unrun: bool,
    /// Its slot was counted free when the job ended ([`Slots`]).
    early: bool,
    /// It succeeded and its slot is the finisher's to fill: the finish
    /// call reserves the next message for it ([`Slots::merge`]).
    credit: bool,
}

/// Slots the finisher gives back to the consumer (their messages
/// acked) and the messages it reserved for them in the same call.
type Freed = (usize, Vec<Reserved>);

/// Sends a job's outcome to the finisher exactly once: when the pool runs
/// the callback, or, if the pool drops it unrun (shutdown, a dead
/// supervisor, a refused submit), on drop, marked `unrun` so its message
/// is requeued, never acked as REVOKED (C1: a dead pool is no black hole).
/// A success frees its pool slot at once ([`Slots`]): the consumer
/// reserves the next message while the finisher stores this one. A
/// failure's slot is free once it is finished: a retry message or a
/// requeue it sends must not be taken before its death or requeue count
/// is written (redelivery.rs).
struct Pending {
    ctx: Option<JobCtx>,
    tx: Sender<Fin>,
    slots: Arc<Slots>,
}

/// Pool slots whose job ended and whose message is not yet acked: the
/// consumer counts them free (issue 26: the next reserve overlaps the
/// store and ack of the last result, so prefetch x1 does not wait a round
/// trip per task), the finisher gives them back once acked.
struct Slots {
    /// Jobs ended (their `Fin` sent) and not yet acked.
    done: std::sync::atomic::AtomicUsize,
    /// Jobs in the pool (submitted, not ended): while some run, the
    /// finisher waits a moment for their results to store several in one
    /// call ([`FINISH_LINGER`]).
    busy: std::sync::atomic::AtomicUsize,
    /// Wakes the consumer (coalesced: capacity 1).
    wake: Sender<()>,
    /// The finisher reserves for the slots of succeeded jobs in the script
    /// call that finishes them (results on the broker's Redis: one call
    /// per task at prefetch x1, issue 26): such a slot stays busy for the
    /// consumer until the finisher hands it back with what it reserved
    /// for it. Otherwise a success frees its slot when it ends.
    merge: bool,
}

impl Slots {
    /// A job left the pool; `early`: its slot is free now.
    fn ended(&self, early: bool) {
        let _ = self
            .busy
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some(b.saturating_sub(1))
            });
        if early {
            self.done.fetch_add(1, Ordering::AcqRel);
            let _ = self.wake.try_send(());
        }
    }
}

impl Pending {
    fn done(mut self, res: Res) {
        if let Some(ctx) = self.ctx.take() {
            let ok = matches!(res, Res::Ok(_));
            let early = ok && !self.slots.merge;
            self.slots.ended(early);
            let _ = self.tx.send(Fin {
                ctx,
                res,
                slot: true,
                unrun: false,
                early,
                credit: ok && self.slots.merge,
            });
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(ctx) = self.ctx.take() {
            self.slots.ended(false);
            let _ = self.tx.send(Fin {
                ctx,
                res: Res::Err(TaskError::new(
                    ErrorKind::Terminated,
                    "the pool dropped the job before it ended",
                )),
                slot: true,
                unrun: true,
                early: false,
                credit: false,
            });
        }
    }
}

/// State shared by the consumer, the finisher and the keeper.
struct Shared {
    /// `--track-started`: the node name STARTED names.
    track_started: Option<String>,
    /// Tags this host holds (reserved, not yet acked or requeued).
    live: Mutex<HashSet<String>>,
    /// A cold shutdown is under way: `terminated` outcomes are requeued.
    cold: AtomicBool,
    /// Give up on results not yet stored (cold shutdown, Redis away).
    abandon: AtomicBool,
    /// When a warm stop began: from then on the finisher retries results
    /// Redis does not take for [`WARM_STORE_GRACE`] at most.
    stop_at: Mutex<Option<Instant>>,
    counts: Mutex<Summary>,
    /// Operators' view (remote control, events, metrics); None: off.
    ops: Option<Arc<Ops>>,
    /// Retry, Reject, Ignore, the poison cap (redelivery.rs).
    rules: Rules,
    /// Marks messages whose task started here (a death's witness); None:
    /// its thread could not start.
    marker: Option<Marker>,
    /// Slots whose job ended, not yet acked (see [`Slots`]).
    slots: Arc<Slots>,
    /// The consumer's window is full and nothing waits in it (no ready
    /// job, no held one past `max_eta_held`), and it is not stopping:
    /// the finisher may reserve for the slots its successes free
    /// ([`Slots::merge`]) without reserving past slots × prefetch.
    lend: AtomicBool,
    /// Queues the consumer switched to (`control add_consumer` /
    /// `cancel_consumer`), for the finisher's reserves.
    queues: Mutex<Option<Vec<String>>>,
}

impl Shared {
    fn forget(&self, tags: &[String]) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        for t in tags {
            live.remove(t);
        }
    }
}

/// A Celery worker over a [`Pool`].
pub struct Worker {
    pool: Pool,
    opts: WorkerOptions,
    ctl_tx: Sender<Control>,
    ctl_rx: Receiver<Control>,
    ops: Option<Arc<Ops>>,
}

impl Worker {
    /// A worker for `pool`; nothing is consumed before [`Worker::run`].
    pub fn new(pool: Pool, opts: WorkerOptions) -> Result<Worker, WorkerError> {
        if opts.queues.is_empty() {
            return Err(WorkerError::Config("no queue to consume".into()));
        }
        if opts.prefetch_multiplier == 0 {
            return Err(WorkerError::Config(
                "the prefetch multiplier must be at least 1".into(),
            ));
        }
        for (what, d) in [
            ("--visibility-timeout", opts.visibility_timeout),
            (
                "--foreign-visibility-timeout",
                opts.foreign_visibility_timeout,
            ),
        ] {
            if d.is_zero() {
                return Err(WorkerError::Config(format!("{what} must be longer than 0")));
            }
            bounds::check_duration(what, d).map_err(|e| WorkerError::Config(e.to_string()))?;
        }
        RateLimits::for_pool(&pool, &opts.rate_limits, &opts.global_rate_limits)
            .map_err(WorkerError::Config)?;
        names::check_aliases(&opts.task_aliases).map_err(WorkerError::Config)?;
        for a in &opts.task_aliases {
            pool.find_task(&a.target).map_err(|e| {
                WorkerError::Config(format!("--task-name {}={}: {e}", a.celery, a.target))
            })?;
        }
        // A result expiry SETEX would refuse fails every store: refuse it
        // here (C8).
        broker::ttl_secs(opts.result_expires).map_err(|e| WorkerError::Config(e.to_string()))?;
        if let Some(d) = opts.chord.expires {
            broker::ttl_secs(d)
                .map_err(|e| WorkerError::Config(format!("--result-chord-expires: {e}")))?;
        }
        opts.redelivery.check().map_err(WorkerError::Config)?;
        // Fail early on a URL that cannot work.
        transport::check(&opts.broker_url)?;
        book_url(&opts)?;
        if let Some(b) = opts.backend_url.as_deref().filter(|b| !backend::is_rpc(b)) {
            transport::check(b)?;
        }
        let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
        Ok(Worker {
            pool,
            opts,
            ctl_tx,
            ctl_rx,
            ops: None,
        })
    }

    /// Answers remote control, sends events, feeds metrics (issue 14;
    /// `control.rs`). Its threads start in [`Worker::run`].
    pub fn with_ops(mut self, ops: Arc<Ops>) -> Worker {
        self.ops = Some(ops);
        self
    }

    /// A handle that sends [`Control`]s to this worker, from any thread.
    pub fn controller(&self) -> Controller {
        Controller {
            tx: self.ctl_tx.clone(),
        }
    }

    /// The pool that runs this worker's tasks.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The task names this worker answers to, sorted.
    pub fn task_names(&self) -> Vec<String> {
        task_names(&self.pool, &self.opts.task_aliases)
    }

    /// What the startup line says.
    pub fn startup_info(&self) -> StartupInfo {
        StartupInfo {
            broker: broker::redact(&self.opts.broker_url),
            backend: broker::redact(
                self.opts
                    .backend_url
                    .as_deref()
                    .unwrap_or(&self.opts.broker_url),
            ),
            queues: self.opts.queues.clone(),
            concurrency: self.pool.config().workers,
            prefetch_multiplier: self.opts.prefetch_multiplier,
            visibility_timeout_s: self.opts.visibility_timeout.as_secs_f64(),
            plugins: self
                .pool
                .plugins()
                .iter()
                .map(|p| PluginLine {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    path: p.path.display().to_string(),
                })
                .collect(),
            tasks: self.task_names(),
        }
    }

    /// Consumes until a [`Control::Warm`] or [`Control::Cold`] has been
    /// carried out. `ready` runs once the broker answered (the startup
    /// line). The pool is joined (warm) or terminated (cold) on the way out.
    pub fn run(self, ready: impl FnOnce(&StartupInfo)) -> Result<Summary, WorkerError> {
        let info = self.startup_info();
        let Worker {
            pool,
            opts,
            ctl_tx,
            ctl_rx,
            ops,
        } = self;
        drop(ctl_tx);
        let book = book_url(&opts)?.map(str::to_string);
        let mut broker = transport::open(
            &opts.broker_url,
            opts.queues.clone(),
            &queue_options(&opts, pool.config().workers),
        )?;
        let (wake_tx, wake_rx) = crossbeam_channel::bounded::<()>(1);
        let backend = ResultBackend::new(
            opts.backend_url.as_deref(),
            &opts.broker_url,
            opts.result_expires,
        )?;
        let merge = backend.is_broker() && broker.redis().is_some();
        let node = ops.as_ref().map_or_else(
            || super::control::node_name(None),
            |o| o.hostname().to_string(),
        );
        let shared = Arc::new(Shared {
            track_started: opts.track_started.then(|| node.clone()),
            slots: Arc::new(Slots {
                done: std::sync::atomic::AtomicUsize::new(0),
                busy: std::sync::atomic::AtomicUsize::new(0),
                wake: wake_tx,
                merge,
            }),
            lend: AtomicBool::new(false),
            queues: Mutex::new(None),
            live: Mutex::new(HashSet::new()),
            cold: AtomicBool::new(false),
            abandon: AtomicBool::new(false),
            stop_at: Mutex::new(None),
            counts: Mutex::new(Summary::default()),
            ops: ops.clone(),
            rules: Rules::new(
                opts.redelivery.clone(),
                broker::ttl_secs(opts.result_expires).unwrap_or(86_400),
                &node,
            ),
            marker: match book.as_deref().map(Marker::start) {
                Some(Ok(m)) => Some(m),
                Some(Err(e)) => {
                    tracing::warn!("deaths of hosts running a task will not be counted: {e}");
                    None
                }
                None => None,
            },
        });

        for w in lease_warnings(&opts) {
            tracing::warn!("{w}");
        }
        // Wait for the broker (Celery's broker_connection_retry_on_startup),
        // but only while waiting can help: a refusal that repeats the same
        // way every time (NOAUTH, WRONGPASS, NOPERM, a database index out of
        // range: `!is_transient()`) is the URL's fault and ends the start
        // (issue 28: it used to be retried for ever).
        let mut warned = false;
        loop {
            match broker.ping() {
                Ok(()) => break,
                Err(e) if !e.is_transient() => {
                    let _ = pool.terminate();
                    return Err(WorkerError::Broker(e));
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!("cannot reach the broker yet ({e}); retrying");
                        warned = true;
                    }
                    match ctl_rx.recv_timeout(broker.backoff_left().max(ms(50))) {
                        Ok(Control::Warm | Control::Cold) => {
                            let _ = pool.terminate();
                            return Ok(Summary {
                                shutdown: "warm".into(),
                                ..Summary::default()
                            });
                        }
                        _ => continue,
                    }
                }
            }
        }
        // Before the remote control answers: `control rate_limit` changes them.
        let rates = Arc::new(
            RateLimits::for_pool(&pool, &opts.rate_limits, &opts.global_rate_limits)
                .map_err(WorkerError::Config)?,
        );
        if let Some(o) = &ops {
            o.set_rate_limits(rates.clone());
        }
        for (task, s) in rates.all() {
            let show =
                |r: Option<&rate::Rate>| r.map(rate::Rate::text).unwrap_or("none").to_string();
            tracing::info!(
                "rate limit of {task}: {} per worker, {} fleet-wide",
                show(s.local.as_ref()),
                show(s.global.as_ref())
            );
        }
        // Remote control, events, pool view: subscribed before the startup line.
        let ops_rx = match &ops {
            Some(o) => {
                if broker.redis().is_none() {
                    o.set_broker_probe(broker.handle("health")?);
                }
                o.start(
                    &opts.broker_url,
                    opts.backend_url.as_deref().unwrap_or(&opts.broker_url),
                    &opts.queues,
                    pool.config().workers,
                    opts.prefetch_multiplier,
                    opts.result_expires,
                    opts.visibility_timeout,
                    &registered_view(&pool.plugins(), &opts.task_aliases),
                )?;
                o.commands()
            }
            None => crossbeam_channel::never(),
        };
        ready(&info);

        let (fin_tx, fin_rx) = crossbeam_channel::unbounded::<Fin>();
        let (freed_tx, freed_rx) = crossbeam_channel::unbounded::<Freed>();
        let finisher = {
            let shared = shared.clone();
            let tp = broker.handle("broker")?;
            let link = book
                .as_deref()
                .map(|b| Link::new(b, "broker"))
                .transpose()?;
            let chords = Chords::new(opts.chord.clone());
            let lease = lease_of(opts.visibility_timeout);
            std::thread::Builder::new()
                .name("celery-finisher".into())
                .spawn(move || finisher(fin_rx, freed_tx, tp, link, backend, shared, chords, lease))
                .map_err(|e| WorkerError::Config(format!("cannot start a thread: {e}")))?
        };
        let (keeper_stop, keeper_rx) = crossbeam_channel::bounded::<()>(0);
        let keeper = {
            let shared = shared.clone();
            let link = broker.handle("broker")?;
            let queues = opts.queues.clone();
            let lease = lease_of(opts.visibility_timeout);
            let foreign = opts.foreign_visibility_timeout;
            std::thread::Builder::new()
                .name("celery-keeper".into())
                .spawn(move || keeper(keeper_rx, link, queues, lease, foreign, shared))
                .map_err(|e| WorkerError::Config(format!("cannot start a thread: {e}")))?
        };

        let rate_link = match &book {
            Some(b) if opts.global_rate_limits.iter().any(|t| t.rate.is_some()) => {
                Some(Link::new(b, "rate limits")?)
            }
            _ => None,
        };
        let writer = match opts.backend_url.as_deref() {
            Some(b) if backend::is_rpc(b) => broker
                .handle("progress")
                .and_then(ProgressWriter::spawn_rpc),
            b => ProgressWriter::spawn(b.unwrap_or(&opts.broker_url), opts.result_expires),
        };
        let progress = match writer {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("task progress will not be stored: {e}");
                None
            }
        };
        let mut c = Consumer {
            limiter: rate::Limiter::new(rates, rate_link),
            pool: &pool,
            opts: &opts,
            broker,
            book: book
                .as_deref()
                .map(|b| Link::new(b, "broker"))
                .transpose()?,
            shared: shared.clone(),
            fin_tx,
            workers: pool.config().workers,
            running: 0,
            ready: VecDeque::new(),
            held: BinaryHeap::new(),
            held_jobs: HashMap::new(),
            seq: 0,
            stopping: false,
            cold_requested: false,
            lost: None,
            broker_warned: false,
            ops_rx,
            wake: wake_rx,
            progress,
        };
        let cold = c.consume(&ctl_rx, &freed_rx);
        let lost = c.lost.take();
        let requeue = c.drain_held();
        // Held messages go back to their queue now, not after a timeout.
        if !requeue.is_empty() {
            let mut tries = 0;
            loop {
                match c.broker.requeue(&requeue) {
                    Ok(n) => {
                        shared
                            .counts
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .requeued += n as u64;
                        break;
                    }
                    Err(e) if tries < 20 => {
                        tries += 1;
                        tracing::warn!("cannot requeue held messages yet: {e}");
                        std::thread::sleep(c.broker.backoff_left().max(ms(100)));
                    }
                    Err(e) => {
                        tracing::error!(
                            "giving up requeueing {} held messages ({e}); a sweeper \
                             returns them after the visibility timeout",
                            requeue.len()
                        );
                        break;
                    }
                }
            }
            shared.forget(&requeue);
        }
        drop(c);
        if cold {
            let _ = pool.terminate();
        } else {
            let _ = pool.join();
        }
        let _ = finisher.join();
        drop(keeper_stop);
        let _ = keeper.join();
        if let Some(o) = &shared.ops {
            o.stop();
        }
        let mut s = shared
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        s.shutdown = if cold { "cold" } else { "warm" }.into();
        match lost {
            Some(why) => Err(WorkerError::PoolLost(why)),
            None => Ok(s),
        }
    }
}

/// The Redis that keeps this host's bookkeeping (deaths, requeue counts,
/// chords, fleet-wide rate limits): the broker when it is Redis, else the
/// result backend when it is Redis; None with `rpc://` on AMQP, where
/// those are off (fleet-wide rate limits are then refused).
fn book_url(opts: &WorkerOptions) -> Result<Option<&str>, WorkerError> {
    let rpc = opts.backend_url.as_deref().is_some_and(backend::is_rpc);
    match transport::kind(&opts.broker_url)? {
        transport::Kind::Redis if rpc => Err(WorkerError::Config(
            "the rpc:// result backend needs an AMQP broker (amqp://...); on Redis, results go \
             to Redis: leave --result-backend out or give a redis:// URL"
                .into(),
        )),
        transport::Kind::Redis => Ok(Some(&opts.broker_url)),
        transport::Kind::Amqp if rpc => {
            if opts.global_rate_limits.iter().any(|t| t.rate.is_some()) {
                return Err(WorkerError::Config(
                    "fleet-wide rate limits are counted in Redis: with an AMQP broker they need \
                     --result-backend redis://..., not rpc://"
                        .into(),
                ));
            }
            Ok(None)
        }
        transport::Kind::Amqp => match opts.backend_url.as_deref() {
            Some(b) if transport::kind(b).ok() == Some(transport::Kind::Redis) => Ok(Some(b)),
            _ => Err(WorkerError::Config(
                "an AMQP broker needs a result backend: --result-backend redis://... (results, \
                 chords and the poison-message cap in Redis) or --result-backend rpc:// \
                 (results to the client's reply queue, as Celery's rpc backend)"
                    .into(),
            )),
        },
    }
}

/// How the broker declares and consumes this worker's queues.
fn queue_options(opts: &WorkerOptions, workers: usize) -> transport::QueueOptions {
    let prefetch = workers
        .max(1)
        .saturating_mul(opts.prefetch_multiplier.max(1));
    transport::QueueOptions {
        max_priority: opts.queue_max_priority,
        quorum: opts.quorum_queues,
        prefetch: u16::try_from(prefetch).unwrap_or(u16::MAX),
        consumer_timeout: None,
        exchange_type: opts.exchange_type,
        delayed_queue_type: opts.delayed_queue_type,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// What this host's lease settings cannot guarantee, one line each (logged
/// as WARN at start). With leases no sweeper restores a message while its
/// host renews it, whatever the sweeper's timeout (C7); what is left:
/// leases too short to survive a stall, and the sweep of Python workers'
/// messages, which are never renewed and which this host can only judge by
/// their age.
fn lease_warnings(opts: &WorkerOptions) -> Vec<String> {
    let mut out = Vec::new();
    let asked = opts.visibility_timeout;
    let lease = lease_of(asked);
    if asked < Duration::from_secs(1) {
        out.push(format!(
            "--visibility-timeout {}: this host's leases last under a second ({}, renewed every \
             {}); a stall of this host or of Redis longer than that (a paused VM, swapping, a \
             slow fsync) lets a sweeper restore its running jobs, which then run twice",
            humantime::format_duration(asked),
            humantime::format_duration(lease),
            humantime::format_duration(keeper_period(lease))
        ));
    }
    let foreign = opts.foreign_visibility_timeout;
    if foreign < broker::KOMBU_VISIBILITY_TIMEOUT {
        out.push(format!(
            "--foreign-visibility-timeout {}: a job of a Python worker (acks_late) on queues \
             [{}] that runs longer than that is restored by this host's sweeper and runs again \
             (Python workers do not renew their messages; kombu's own default is 1h): set it \
             to the Python workers' broker_transport_options visibility_timeout",
            humantime::format_duration(foreign),
            opts.queues.join(", ")
        ));
    }
    out
}

/// The lease this host takes for `--visibility-timeout` `asked`: at least
/// three renewal periods (300 ms), so a renewal always lands before the
/// lease ends (a shorter one would lapse between two renewals and be
/// restored from a live host).
fn lease_of(asked: Duration) -> Duration {
    asked.max(ms(300))
}

/// How often the keeper renews this host's leases and sweeps: a third of
/// the lease (so two renewals may fail before it lapses), at least every
/// 30 s (a dead host's messages are found soon after their lease ends),
/// at most every 100 ms.
fn keeper_period(lease: Duration) -> Duration {
    lease
        .checked_div(3)
        .unwrap_or_default()
        .clamp(ms(100), Duration::from_secs(30))
}

/// How long a warm stop keeps retrying results Redis will not take yet
/// (it is away, out of memory, ...): after that their messages are left
/// unacked and sweepers return them once their lease lapses (C8: a warm
/// stop ends).
const WARM_STORE_GRACE: Duration = Duration::from_secs(30);

/// How long the finisher waits for more results while jobs still run in
/// the pool, to store them in one call (an idle pool's result is stored at
/// once).
const FINISH_LINGER: Duration = Duration::from_micros(200);

/// How long an idle consumer blocks on the broker before it looks at every
/// list again (and at its controls).
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// Every task name the worker answers to: `plugin.task`, the bare
/// task name when only one plugin has it, the Celery names tasks
/// registered and the worker's `--task-name` aliases.
fn task_names(pool: &Pool, aliases: &[names::TaskAlias]) -> Vec<String> {
    let plugins = pool.plugins();
    let mut names: Vec<String> = aliases.iter().map(|a| a.celery.clone()).collect();
    let mut bare: HashMap<&str, usize> = HashMap::new();
    for p in plugins.iter() {
        for t in &p.tasks {
            names.extend(t.options.name.clone());
            names.push(format!("{}.{}", p.name, t.name));
            *bare.entry(t.name.as_str()).or_default() += 1;
        }
    }
    names.extend(
        bare.into_iter()
            .filter(|(_, n)| *n == 1)
            .map(|(t, _)| t.to_string()),
    );
    names.sort();
    names.dedup();
    names
}

/// Resolves a Celery task name against the worker's aliases, then the
/// pool's live plugins (their registered Celery names before any
/// `plugin.task` splitting: `plugin::resolve_task`).
fn resolve(pool: &Pool, aliases: &[names::TaskAlias], name: &str) -> Option<TaskEntry> {
    let target = pool.find_task(names::through_aliases(aliases, name)).ok()?;
    let plugins = pool.plugins();
    let p = plugins.get(target.plugin as usize)?;
    let t = p.tasks.get(target.task as usize)?;
    Some(TaskEntry {
        target,
        name: format!("{}.{}", p.name, t.name),
        func: t.name.clone(),
        args: t.args.iter().map(|a| a.name.clone()).collect(),
        options: t.options.clone(),
    })
}

/// The plugins as `inspect registered` shows them: a task under its
/// Celery name when it registered one, and once more under each
/// `--task-name` alias of it (the view only; nothing runs on it).
fn registered_view(
    plugins: &[crate::plugin::PluginInfo],
    aliases: &[names::TaskAlias],
) -> Vec<crate::plugin::PluginInfo> {
    let mut view = plugins.to_vec();
    for a in aliases {
        let Ok((pi, ti)) = crate::plugin::resolve_task(plugins, &a.target) else {
            continue;
        };
        let Some(p) = view.get_mut(pi) else { continue };
        let Some(mut t) = p.tasks.get(ti as usize).cloned() else {
            continue;
        };
        t.options.name = Some(a.celery.clone());
        p.tasks.push(t);
    }
    view
}

/// Puts `args` and `kwargs` into the task's positional order, defaults
/// and variadic tail included, or says why not in Python's `TypeError`
/// words (`names::bind`).
fn map_args(
    entry: &TaskEntry,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
) -> Result<Vec<Value>, String> {
    let p = names::Params {
        func: &entry.func,
        names: &entry.args,
        options: &entry.options,
    };
    names::bind(&p, args, kwargs)
}

/// The pool limits of a `timelimit` header. [`Envelope::read`] already
/// refused what is not a number of seconds in range; this checks again
/// where the value turns into a `Duration` so nothing longer than
/// `bounds::MAX_DURATION` can reach the pool (C1).
fn limits_of(t: TimeLimit) -> Result<Limits, String> {
    let d = |what: &str, s: Option<f64>| -> Result<Option<Duration>, String> {
        let Some(x) = s.filter(|x| *x != 0.0) else {
            return Ok(None);
        };
        let d = Duration::try_from_secs_f64(x)
            .map_err(|_| format!("{what} {x} is not a number of seconds"))?;
        bounds::check_duration(what, d)
            .map(Some)
            .map_err(|e| e.to_string())
    };
    Ok(Limits {
        hard: d("hard", t.hard)?,
        soft: d("soft", t.soft)?,
    })
}

/// The consumer loop's state.
struct Consumer<'a> {
    pool: &'a Pool,
    opts: &'a WorkerOptions,
    broker: Box<dyn Transport>,
    /// The Redis of this host's bookkeeping (deaths, requeue counts): the
    /// broker's, or the result backend's when the broker is not Redis;
    /// None with `rpc://` on AMQP (no death or requeue history kept).
    book: Option<Link>,
    shared: Arc<Shared>,
    fin_tx: Sender<Fin>,
    workers: usize,
    /// Jobs submitted to the pool whose completion is not yet acked.
    running: usize,
    /// Due jobs waiting for a slot.
    ready: VecDeque<Prepared>,
    /// Eta jobs by due time.
    held: BinaryHeap<Reverse<(Instant, u64)>>,
    held_jobs: HashMap<u64, Prepared>,
    seq: u64,
    stopping: bool,
    cold_requested: bool,
    /// Why the pool stopped under us, once it did.
    lost: Option<String>,
    broker_warned: bool,
    /// Remote-control commands (never() without ops).
    ops_rx: Receiver<OpsCmd>,
    /// A job ended: its slot may take the next message ([`Slots`]).
    wake: Receiver<()>,
    /// Stores the tasks' `ctx.progress` as their `PROGRESS` state.
    progress: Option<ProgressWriter>,
    /// Rate-limited messages waiting for their turn (held like eta ones).
    limiter: rate::Limiter<Prepared>,
}

/// What became of one reserved message.
enum Step {
    Run(Prepared),
    Hold(Instant, Prepared),
    Fail(JobCtx, Exception),
    /// A Celery builtin done at once (builtins.rs): its result to store.
    Done(JobCtx, Value),
    /// Not a task message (no id to answer to): acked, logged.
    Discard(String),
}

impl Consumer<'_> {
    fn capacity(&self) -> usize {
        self.workers.max(1) * self.opts.prefetch_multiplier
    }

    /// Jobs in the pool: submitted and not yet ended (an ended job's
    /// message may still wait for its ack: its slot is free already).
    fn busy(&self) -> usize {
        self.running
            .saturating_sub(self.shared.slots.done.load(Ordering::Acquire))
    }

    /// Runs until a warm stop completed (false) or a cold stop was asked
    /// (true).
    fn consume(&mut self, ctl: &Receiver<Control>, freed: &Receiver<Freed>) -> bool {
        loop {
            if let Err(e) = self.pool.check_alive() {
                return self.pool_lost(freed, e.to_string());
            }
            while let Ok(c) = self.ops_rx.try_recv() {
                self.ops_cmd(c);
            }
            while let Ok(c) = ctl.try_recv() {
                if self.control(c) {
                    self.cold_requested = true;
                }
            }
            if self.cold_requested {
                return self.cold_stop(freed);
            }
            while let Ok(f) = freed.try_recv() {
                self.freed(f);
            }
            self.release_due();
            self.submit_ready();
            self.broker
                .set_held(self.held_jobs.len().saturating_add(self.limiter.len()));
            if self.stopping {
                self.shared.lend.store(false, Ordering::Release);
                if self.running == 0 && self.ready.is_empty() {
                    return false;
                }
                self.wait_events(ctl, freed, ms(250));
                continue;
            }
            let room = self
                .capacity()
                .saturating_sub(self.busy() + self.ready.len() + self.overheld());
            // While every worker process still has a job queued, the
            // prefetched part of the window is refilled half at a time: one
            // reserve call for several messages, never a process idle.
            let low = self
                .capacity()
                .saturating_sub(self.workers)
                .div_ceil(2)
                .max(1);
            if room == 0 || (room < low && self.busy() + self.ready.len() >= self.workers) {
                // The window is full: the finisher reserves for the slots
                // its successes free, unless messages wait in the window.
                let lend = self.ready.is_empty() && self.overheld() == 0;
                self.shared.lend.store(lend, Ordering::Release);
                let t = self.next_due().unwrap_or(ms(250)).min(ms(250));
                self.wait_events(ctl, freed, t);
                continue;
            }
            self.shared.lend.store(false, Ordering::Release);
            if self.broker.is_down() && !self.broker.backoff_left().is_zero() {
                let t = self.broker.backoff_left().min(ms(250));
                self.wait_events(ctl, freed, t);
                continue;
            }
            let t0 = Instant::now();
            // Every message reserved goes to the pool at once (room never
            // exceeds what submit_ready takes), so the reserve marks them
            // all "running here" itself; one held instead is unmarked.
            let who = self
                .shared
                .marker
                .as_ref()
                .map(|_| Marker::who(&self.shared.rules))
                .unwrap_or_default();
            let marks = broker::RunMarks {
                count: if self.shared.marker.is_some() {
                    room
                } else {
                    0
                },
                ttl_s: self.shared.rules.ttl_s,
                who: &who,
            };
            let reserved =
                self.broker
                    .reserve(room, lease_of(self.opts.visibility_timeout), &marks);
            if let Some(o) = &self.shared.ops {
                o.reserve_latency(t0.elapsed());
            }
            match reserved {
                Ok(got) => {
                    if self.broker_warned {
                        tracing::warn!("the broker is back; consuming again");
                        self.broker_warned = false;
                    }
                    let n = got.len();
                    for r in got {
                        self.take(r);
                    }
                    self.submit_ready();
                    if n < room {
                        // BLMOVE watches the first queue's main list only:
                        // the other lists (priorities, more queues) are
                        // looked at again after at most IDLE_WAIT.
                        let t = self.next_due().unwrap_or(IDLE_WAIT).min(IDLE_WAIT);
                        if self.next_rated().is_some_and(|r| r < IDLE_WAIT) {
                            // A rate-limited message is due sooner than a
                            // BLMOVE timeout can say (Redis ends those on
                            // its 100 ms cron): wait here, to the ms.
                            self.wait_events(ctl, freed, t);
                            continue;
                        }
                        match self.broker.wait(t.max(ms(10))) {
                            Ok(()) => {}
                            // Redis refuses the wait (BLMOVE is a write: out
                            // of memory, a replica): wait without it; the
                            // reserve says what is wrong if it fails too.
                            Err(e) if !e.may_have_applied() => {
                                tracing::debug!("cannot block on the broker ({e})");
                                std::thread::sleep(t.max(ms(10)));
                            }
                            Err(e) => self.broker_down(e),
                        }
                    }
                }
                Err(e) => self.broker_down(e),
            }
        }
    }

    /// The finisher gave slots back (their messages acked), with the
    /// messages it reserved for them in the finish call ([`Slots::merge`]):
    /// taken as the consumer's own reserve's; returned to their queue at
    /// once when the worker is stopping.
    fn freed(&mut self, (n, got): Freed) {
        self.running = self.running.saturating_sub(n);
        if got.is_empty() {
            return;
        }
        if !self.stopping {
            for r in got {
                self.take(r);
            }
            return;
        }
        let tags: Vec<String> = got
            .into_iter()
            .map(|r| r.tag)
            .filter(|t| !t.is_empty())
            .collect();
        match self.broker.requeue(&tags) {
            Ok(k) => {
                self.shared
                    .counts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .requeued += k as u64;
            }
            Err(e) => tracing::error!(
                "cannot return {} message(s) reserved as the worker stopped ({e}); a sweeper \
                 returns them once their lease lapses",
                tags.len()
            ),
        }
    }

    fn broker_down(&mut self, e: BrokerError) {
        if let BrokerError::Interrupted { .. } = e {
            // A signal (SIGTERM, SIGSTOP/SIGCONT), not a lost broker (C15).
            tracing::debug!("{e}");
            return;
        }
        if !self.broker_warned {
            if e.may_have_applied() {
                tracing::warn!(
                    "lost the broker ({e}); reconnecting with backoff, running jobs carry on"
                );
            } else {
                // The connection is fine: Redis refuses (out of memory,
                // loading, a queue key of another type, ...).
                tracing::warn!(
                    "the broker refuses to hand out messages ({e}); retrying with backoff, \
                     running jobs carry on"
                );
            }
            self.broker_warned = true;
        }
    }

    /// Eta and rate-limited messages past `max_eta_held` count against
    /// the reservation.
    fn overheld(&self) -> usize {
        self.held_jobs
            .len()
            .saturating_add(self.limiter.len())
            .saturating_sub(self.opts.max_eta_held)
    }

    fn next_due(&self) -> Option<Duration> {
        let now = Instant::now();
        let eta = self
            .held
            .peek()
            .map(|Reverse((t, _))| t.saturating_duration_since(now));
        let rated = self.next_rated();
        match (eta, rated) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the limiter next releases a rate-limited message.
    fn next_rated(&self) -> Option<Duration> {
        self.limiter
            .next_wake()
            .map(|t| t.saturating_duration_since(Instant::now()))
    }

    fn wait_events(&mut self, ctl: &Receiver<Control>, freed: &Receiver<Freed>, t: Duration) {
        let ops_rx = self.ops_rx.clone();
        let wake = self.wake.clone();
        crossbeam_channel::select! {
            recv(ops_rx) -> c => if let Ok(c) = c { self.ops_cmd(c) },
            recv(freed) -> f => if let Ok(f) = f { self.freed(f) },
            recv(wake) -> _ => {},
            recv(ctl) -> c => if let Ok(c) = c {
                // A cold stop is carried out on the next turn of the loop.
                if self.control(c) {
                    self.cold_requested = true;
                }
            },
            default(t) => {}
        }
    }

    /// Carries out a control; true for a cold stop.
    fn control(&mut self, c: Control) -> bool {
        match c {
            Control::Warm => {
                if !self.stopping {
                    tracing::warn!(
                        "warm shutdown: no more messages are reserved; waiting for {} \
                         running job(s) (signal again to kill them)",
                        self.running
                    );
                    let mut at = self
                        .shared
                        .stop_at
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    at.get_or_insert_with(Instant::now);
                }
                self.stopping = true;
                self.shared.lend.store(false, Ordering::Release);
                false
            }
            Control::Cold => true,
            Control::Restart => {
                match self.pool.restart() {
                    Ok(()) => {
                        tracing::warn!("rolling restart: reloading the plugins");
                        // The reloaded plugins' task names and own rate
                        // limits (flags and `control rate_limit` still win).
                        self.limiter.rates().reload(self.pool);
                    }
                    Err(e) => tracing::error!("cannot restart the pool: {e}"),
                }
                false
            }
            Control::Grow => {
                match self.pool.grow(1) {
                    Ok(()) => {
                        self.workers += 1;
                        tracing::warn!("concurrency +1: {} workers", self.workers);
                    }
                    Err(e) => tracing::error!("cannot grow the pool: {e}"),
                }
                false
            }
            Control::Shrink => {
                if self.workers > 1 {
                    match self.pool.shrink(1) {
                        Ok(()) => {
                            self.workers -= 1;
                            tracing::warn!("concurrency -1: {} workers", self.workers);
                        }
                        Err(e) => tracing::error!("cannot shrink the pool: {e}"),
                    }
                }
                false
            }
        }
    }

    /// Kills the running jobs (their `terminated` outcomes are requeued by
    /// the finisher) and waits for them to be requeued.
    fn cold_stop(&mut self, freed: &Receiver<Freed>) -> bool {
        tracing::warn!(
            "cold shutdown: killing {} running job(s); their messages go back to the queue",
            self.running
        );
        self.shared.cold.store(true, Ordering::Release);
        self.stopping = true;
        self.shared.lend.store(false, Ordering::Release);
        self.pool.terminate_now();
        let deadline = crate::bounds::saturating_deadline(Instant::now(), Duration::from_secs(10));
        while self.running > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.shared.abandon.store(true, Ordering::Release);
                break;
            }
            if let Ok(f) = freed.recv_timeout(left) {
                self.freed(f);
            }
        }
        true
    }

    /// The pool's supervisor is gone (C1's defence in depth): stop
    /// reserving at once, say so (log, `/healthz`, `workers_alive`), and
    /// let the jobs it dropped come back as `unrun` (the finisher requeues
    /// their messages, held and ready ones are requeued on the way out).
    /// Returns true: the pool is terminated, not joined.
    fn pool_lost(&mut self, freed: &Receiver<Freed>, why: String) -> bool {
        tracing::error!(
            "the pool stopped ({why}); no more messages are reserved, the {} job(s) it \
             held go back to the queue, and this worker exits with an error so its \
             service manager restarts it",
            self.running + self.ready.len() + self.held_jobs.len() + self.limiter.len()
        );
        if let Some(o) = &self.shared.ops {
            o.workers_alive.store(0, Ordering::Release);
            if let Some(m) = o.metrics() {
                m.pool_lost(&why);
            }
        }
        self.stopping = true;
        self.shared.lend.store(false, Ordering::Release);
        self.lost = Some(why);
        let deadline = crate::bounds::saturating_deadline(Instant::now(), Duration::from_secs(10));
        while self.running > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::error!(
                    "{} job(s) of the stopped pool gave no sign; a sweeper returns their \
                     messages after the visibility timeout",
                    self.running
                );
                self.shared.abandon.store(true, Ordering::Release);
                break;
            }
            if let Ok(f) = freed.recv_timeout(left) {
                self.freed(f);
            }
        }
        true
    }

    /// Takes every job not sent to the pool (held and ready): their tags,
    /// to requeue.
    fn drain_held(&mut self) -> Vec<String> {
        let mut tags: Vec<String> = self.held_jobs.drain().map(|(_, p)| p.ctx.tag).collect();
        self.held.clear();
        tags.extend(self.ready.drain(..).map(|p| p.ctx.tag));
        tags.extend(self.limiter.drain().into_iter().map(|p| p.ctx.tag));
        tags
    }

    fn release_due(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((t, seq))) = self.held.peek().copied() {
            if t > now {
                break;
            }
            self.held.pop();
            if let Some(p) = self.held_jobs.remove(&seq) {
                self.admit(p);
            }
        }
        self.pump_rated();
    }

    /// A due message goes to the ready queue, or waits in the limiter
    /// while its task's rate limit says so (issue 23 item 4).
    fn admit(&mut self, mut p: Prepared) {
        let name = p.name.clone();
        // Held by its rate limit: the reserve's mark is taken back (it is
        // marked again when it starts).
        let marked = std::mem::take(&mut p.ctx.marked);
        let tag = marked.then(|| p.ctx.tag.clone());
        if let Some(mut p) = self.limiter.admit(&name, p) {
            p.ctx.marked = marked;
            self.ready.push_back(p);
        } else {
            if let (Some(m), Some(tag)) = (&self.shared.marker, tag) {
                m.unmark(&tag);
            }
            self.pump_rated();
        }
    }

    /// Moves the rate-limited messages whose turn came to the ready queue;
    /// revoked and expired ones at once (answered, never run).
    fn pump_rated(&mut self) {
        let ops = self.shared.ops.clone();
        let dead = move |p: &Prepared| {
            p.expires.is_some_and(|e| e <= Utc::now())
                || ops
                    .as_ref()
                    .is_some_and(|o| o.is_revoked_message(&p.ctx.task_id, &p.ctx.delivery.raw))
        };
        let mut out = Vec::new();
        self.limiter.pump(&dead, &mut out);
        self.ready.extend(out);
        if let Some(o) = &self.shared.ops {
            o.rate_waiting(self.limiter.waiting());
        }
    }

    fn submit_ready(&mut self) {
        if self.shared.cold.load(Ordering::Acquire) {
            return;
        }
        while self.busy() < self.capacity() {
            let Some(p) = self.ready.pop_front() else {
                break;
            };
            if p.expires.is_some_and(|e| e <= Utc::now()) {
                self.fail(p.ctx, Exception::revoked("expired"));
                continue;
            }
            if let Some(o) = &self.shared.ops {
                if o.is_revoked_message(&p.ctx.task_id, &p.ctx.delivery.raw) {
                    self.fail(p.ctx, Exception::revoked("revoked"));
                    continue;
                }
            }
            let task_id = p.ctx.task_id.clone();
            let on_progress = self.progress.as_ref().map(|w| {
                w.hook(
                    task_id.clone(),
                    p.ctx.group.clone(),
                    p.ctx.parent_id.clone(),
                    reply_of(&p.ctx),
                )
            });
            // Before the submit: a job may finish before apply returns.
            if let Some(o) = &self.shared.ops {
                o.started(&task_id);
            }
            if let (Some(w), Some(node)) = (&self.progress, &self.shared.track_started) {
                w.started(
                    task_id.clone(),
                    p.ctx.group.clone(),
                    p.ctx.parent_id.clone(),
                    reply_of(&p.ctx),
                    node.clone(),
                );
            }
            if let Some(m) = self.shared.marker.as_ref().filter(|_| !p.ctx.marked) {
                m.started(&self.shared.rules, &p.ctx.tag, &task_id);
            }
            self.running += 1;
            self.shared.slots.busy.fetch_add(1, Ordering::AcqRel);
            let pending = Pending {
                ctx: Some(p.ctx),
                tx: self.fin_tx.clone(),
                slots: self.shared.slots.clone(),
            };
            if let Some(items) = p.items {
                // celery.map/starmap (builtins.rs): one job per item, one
                // answer once all are in; a dropped job drops the answer
                // (`Pending`: the message goes back to its queue).
                let gathered = builtins::gather(items.len(), move |r| {
                    pending.done(match r {
                        Ok(v) => Res::Ok(Value::Array(v)),
                        Err(e) => Res::Err(e),
                    })
                });
                for (args, item) in items.into_iter().zip(gathered) {
                    let _ =
                        self.pool
                            .apply_raw_then(p.target, Codec::Json, args, p.limits, move |o| {
                                item.finish(match o {
                                    // Bytes as kombu's tag (issue 29 item 5).
                                    Ok(bytes) => Ok(kombu::result_value(bytes)),
                                    Err(e) => Err(e.clone()),
                                })
                            });
                }
                continue;
            }
            // On an error the callback (and with it `pending`) is dropped,
            // which reports the job `terminated`: one Fin either way.
            let submitted =
                self.pool
                    .apply_raw_then(p.target, Codec::Json, p.args, p.limits, move |o| {
                        pending.done(match o {
                            // A `Vec<u8>` result is read back as Python
                            // `bytes` (issue 29 item 5).
                            Ok(bytes) => Res::Ok(kombu::result_value(bytes)),
                            Err(e) => Res::Err(e.clone()),
                        })
                    });
            if let (Some(hook), Ok(r)) = (on_progress, &submitted) {
                r.on_progress(hook);
            }
            if let (Some(o), Ok(r)) = (&self.shared.ops, &submitted) {
                o.submitted(&task_id, r.id());
            }
        }
    }

    fn fail(&mut self, ctx: JobCtx, exc: Exception) {
        let _ = self.fin_tx.send(Fin {
            ctx,
            res: Res::Exc(exc),
            slot: false,
            unrun: false,
            early: false,
            credit: false,
        });
    }

    /// Handles one reserved message.
    fn take(&mut self, r: Reserved) {
        if r.tag.is_empty() {
            tracing::error!(
                "dropped a list element of queue {} that is not a message: {:?}",
                r.queue,
                String::from_utf8_lossy(&r.raw[..r.raw.len().min(200)])
            );
            return;
        }
        self.shared
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(r.tag.clone());
        self.shared
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .received += 1;
        let step = self.prepare(&r);
        let step = self.ops_receive(step, &r.queue);
        match step {
            Step::Run(p) => self.admit(p),
            Step::Hold(at, mut p) => {
                // Not running yet: the reserve's mark is taken back.
                if std::mem::take(&mut p.ctx.marked) {
                    if let Some(m) = &self.shared.marker {
                        m.unmark(&p.ctx.tag);
                    }
                }
                self.seq += 1;
                self.held.push(Reverse((at, self.seq)));
                self.held_jobs.insert(self.seq, p);
            }
            Step::Fail(ctx, exc) => self.fail(ctx, exc),
            Step::Done(ctx, v) => {
                let _ = self.fin_tx.send(Fin {
                    ctx,
                    res: Res::Ok(v),
                    slot: false,
                    unrun: false,
                    early: false,
                    credit: false,
                });
            }
            Step::Discard(why) => {
                tracing::error!("discarded message {} from queue {}: {why}", r.tag, r.queue);
                if let (true, Some(m)) = (r.marked, &self.shared.marker) {
                    m.unmark(&r.tag);
                }
                let tags = [r.tag.clone()];
                if let Err(e) = self.broker.ack(&tags) {
                    tracing::warn!("cannot ack the discarded message yet ({e})");
                }
                self.shared.forget(&tags);
            }
        }
    }

    /// Reads one message: the task id first, so that every message with
    /// an id gets exactly one answer (C4). A header this host cannot
    /// honour is a FAILURE `InvalidTaskError` naming it, never a silent
    /// drop and never a run without it; only a message without any
    /// readable id is discarded (logged).
    fn prepare(&mut self, r: &Reserved) -> Step {
        let msg = match Envelope::read(&r.raw) {
            Ok(m) => m,
            Err(e) => return Step::Discard(e.to_string()),
        };
        let Some(task_id) = msg.id.clone() else {
            return Step::Discard(
                "no task id (no `id` header, no `correlation_id` property, no protocol v1 body \
                 with an `id`)"
                    .into(),
            );
        };
        let env = &msg.envelope;
        let h = &env.headers;
        let mut ctx = JobCtx {
            tag: r.tag.clone(),
            task_id: task_id.clone(),
            task: h.task.clone().unwrap_or_default(),
            root_id: h.root_id.clone().unwrap_or_else(|| task_id.clone()),
            group: h.group.clone(),
            group_index: h.group_index,
            parent_id: h.parent_id.clone(),
            ignore_result: h.ignore_result == Some(true),
            embed: Embed::default(),
            delivery: Delivery::of(&r.queue, env, &r.raw, self.shared.rules.base.clone()),
            sent: None,
            marked: r.marked,
        };
        if let Some(e) = msg.refused {
            // A refused chord part still counts (issue 23 item 1): its
            // body, when readable, says which chord.
            ctx.embed = env.body().map(|b| b.embed).unwrap_or_default();
            return refuse(ctx, &e.to_string());
        }
        // A message delivered before whose task killed its worker or host
        // too often is a poison message: FAILURE, never run again.
        let (rules, d) = (&self.shared.rules, &mut ctx.delivery);
        redelivery::note_receipt(rules, d, &ctx.task, &task_id);
        let screened = self
            .book
            .as_mut()
            .and_then(|b| redelivery::screen(b, rules, &ctx.task, &task_id, d));
        if let Some(exc) = screened {
            // A poison-capped chord part still counts (issue 23 item 1).
            ctx.embed = env.body().map(|b| b.embed).unwrap_or_default();
            return Step::Fail(ctx, exc);
        }
        let name = match env.task_name() {
            Ok(n) => n.to_string(),
            Err(e) => return refuse(ctx, &e.to_string()),
        };
        if name == chord::CHORD_UNLOCK {
            return chord::refuse_unlock(ctx.task_id.clone(), &r.queue)
                .map_or_else(|| Step::Discard(String::new()), |exc| Step::Fail(ctx, exc));
        }
        // The body is read once, its parts kept as their JSON text: a plain
        // call (positional arguments only, as many as the task takes, no
        // kombu tags) hands the pool the `args` text as it arrived, with no
        // tree built and nothing encoded again (issue 26).
        let raw = match RawBody::read(env) {
            Ok(b) => b,
            Err(ProtocolError::ContentDisallowed(ct)) => {
                return Step::Fail(ctx, Exception::content_disallowed(&ct))
            }
            Err(e) => {
                return Step::Fail(ctx, Exception::for_kind(ErrorKind::BadArgs, &e.to_string()))
            }
        };
        // A part that does not read is said in the full reading's words.
        let bad_body = |e: ProtocolError| {
            let e = env.body().err().unwrap_or(e);
            Exception::for_kind(ErrorKind::BadArgs, &e.to_string())
        };
        ctx.embed = match raw.embed() {
            Ok(e) => e,
            Err(e) => return Step::Fail(ctx, bad_body(e)),
        };
        let entry = (!builtins::is_builtin(&name))
            .then(|| resolve(self.pool, &self.opts.task_aliases, &name))
            .flatten();
        let plain = entry.as_ref().and_then(|e| raw.plain_args(e));
        let (body_args, body_kwargs) = match plain {
            Some(_) => (Vec::new(), Map::new()),
            None => match raw.trees() {
                Ok(t) => t,
                Err(e) => return Step::Fail(ctx, bad_body(e)),
            },
        };
        if builtins::is_builtin(&name) {
            return self.builtin(ctx, &name, body_args, body_kwargs, &msg);
        }
        let Some(entry) = entry else {
            let known = task_names(self.pool, &self.opts.task_aliases);
            let closest = crate::closest_name(&name, known.iter().map(String::as_str));
            return Step::Fail(ctx, Exception::not_registered(&name, closest));
        };
        ctx.delivery.policy = redelivery::policy_for(self.pool, entry.target, &self.shared.rules);
        let args = match plain {
            Some(text) => text,
            None => {
                let mut args = match map_args(&entry, body_args, body_kwargs) {
                    Ok(a) => a,
                    Err(msg) => {
                        return Step::Fail(ctx, Exception::for_kind(ErrorKind::BadArgs, &msg))
                    }
                };
                // kombu's tagged values (bytes, datetime, uuid, ...) become
                // what the plugin's types take (issue 29 item 5).
                let byte_params = kombu::byte_params_of(self.pool, entry.target);
                if let Err(e) = kombu::decode_args(&mut args, &entry.args, &byte_params) {
                    return Step::Fail(
                        ctx,
                        Exception::for_kind(ErrorKind::BadArgs, &e.to_string()),
                    );
                }
                serde_json::to_vec(&args).unwrap_or_else(|_| b"[]".to_vec())
            }
        };
        let expires = msg.expires;
        if expires.is_some_and(|e| e <= Utc::now()) {
            return Step::Fail(ctx, Exception::revoked("expired"));
        }
        let limits = match limits_of(h.timelimit) {
            Ok(l) => l,
            Err(e) => return refuse(ctx, &format!("header \"timelimit\": {e}")),
        };
        if let Some(why) = self.outlives_the_channel(&limits) {
            return refuse(ctx, &why);
        }
        let p = Prepared {
            ctx,
            target: entry.target,
            args,
            limits,
            expires,
            name: entry.name,
            items: None,
        };
        schedule(p, msg.eta)
    }

    /// Why a job with `limits` cannot run on this AMQP channel: its time
    /// limit is longer than the server's `consumer_timeout`, which would
    /// close the channel under it and have the message run again.
    fn outlives_the_channel(&self, limits: &Limits) -> Option<String> {
        let held = self.opts.consumer_timeout?;
        let hard = limits.hard.or(self.pool.config().time_limit)?;
        (hard > held).then(|| {
            format!(
                "its time limit ({}) is longer than RabbitMQ's consumer_timeout ({}, \
                 --consumer-timeout): the broker would close the channel under it and the \
                 message would run again; raise consumer_timeout on the server and \
                 --consumer-timeout, or lower the limit",
                humantime::format_duration(hard),
                humantime::format_duration(held)
            )
        })
    }

    /// A Celery builtin message (issue 29 item 3): expanded into messages
    /// or answered at once ([`builtins::run`]); `celery.map`/`starmap`
    /// resolve their task and run each item on the pool.
    fn builtin(
        &mut self,
        ctx: JobCtx,
        name: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        msg: &protocol::Received,
    ) -> Step {
        if msg.expires.is_some_and(|e| e <= Utc::now()) {
            return Step::Fail(ctx, Exception::revoked("expired"));
        }
        // A revoked builtin sends nothing (a map's items are checked again
        // on their way to the pool).
        if let Some(o) = &self.shared.ops {
            if o.is_revoked_message(&ctx.task_id, &ctx.delivery.raw) {
                return Step::Fail(ctx, Exception::revoked("revoked"));
            }
        }
        let limits = match limits_of(msg.envelope.headers.timelimit) {
            Ok(l) => l,
            Err(e) => return refuse(ctx, &format!("header \"timelimit\": {e}")),
        };
        let mut ctx = ctx;
        let (task, items) = match builtins::run(name, args, kwargs, &ctx.root_id, &ctx.task_id) {
            builtins::Outcome::Fail(exc) => return Step::Fail(ctx, exc),
            builtins::Outcome::Done {
                result,
                children,
                applied,
            } => {
                ctx.sent = Some(Box::new(builtins::Sent { children, applied }));
                return Step::Done(ctx, result);
            }
            builtins::Outcome::Map { task, items } => (task, items),
        };
        // `signature(task).type`: a task this worker does not have is
        // NotRegistered, as app.tasks[name] raises it.
        let Some(entry) = resolve(self.pool, &self.opts.task_aliases, &task) else {
            let known = task_names(self.pool, &self.opts.task_aliases);
            let closest = crate::closest_name(&task, known.iter().map(String::as_str));
            return Step::Fail(ctx, Exception::not_registered(&task, closest));
        };
        let byte_params = kombu::byte_params_of(self.pool, entry.target);
        let mut encoded = Vec::with_capacity(items.len());
        for item in items {
            let mut a = match map_args(&entry, item, Map::new()) {
                Ok(a) => a,
                Err(m) => return Step::Fail(ctx, Exception::for_kind(ErrorKind::BadArgs, &m)),
            };
            if let Err(e) = kombu::decode_args(&mut a, &entry.args, &byte_params) {
                return Step::Fail(ctx, Exception::for_kind(ErrorKind::BadArgs, &e.to_string()));
            }
            encoded.push(serde_json::to_vec(&a).unwrap_or_else(|_| b"[]".to_vec()));
        }
        let p = Prepared {
            ctx,
            target: entry.target,
            args: b"[]".to_vec(),
            limits,
            expires: msg.expires,
            // The rate limits of the task it runs.
            name: entry.name,
            items: Some(encoded),
        };
        schedule(p, msg.eta)
    }
}

/// A message body `[args, kwargs, embed]` read once, each part kept as its
/// JSON text ([`Envelope::body`]'s checks and errors: JSON only, base64 or
/// plain text).
struct RawBody {
    bytes: Vec<u8>,
    /// (start, end) of args, kwargs and embed in `bytes` (embed: None
    /// when null).
    args: (usize, usize),
    kwargs: (usize, usize),
    embed: Option<(usize, usize)>,
}

impl RawBody {
    fn read(env: &Envelope) -> Result<RawBody, ProtocolError> {
        use base64::Engine as _;
        let ct = env.content_type.trim();
        if !ct.eq_ignore_ascii_case(protocol::CONTENT_TYPE_JSON) {
            return Err(ProtocolError::ContentDisallowed(ct.to_string()));
        }
        let bytes = if env.properties.body_encoding == "base64" {
            base64::engine::general_purpose::STANDARD
                .decode(env.body.as_bytes())
                .map_err(|e| ProtocolError::Body(format!("bad base64: {e}")))?
        } else {
            env.body.clone().into_bytes()
        };
        type Part<'a> = &'a serde_json::value::RawValue;
        let parts: Result<(Part<'_>, Part<'_>, Option<Part<'_>>), _> =
            serde_json::from_slice(&bytes);
        let Ok((a, k, e)) = parts else {
            // The full reading says what is wrong, in its own words.
            return Err(env.body().err().unwrap_or_else(|| {
                ProtocolError::Body("the body is not [args, kwargs, embed]".into())
            }));
        };
        let base = bytes.as_ptr() as usize;
        let span = |p: Part<'_>| {
            let start = (p.get().as_ptr() as usize).saturating_sub(base);
            (start, start.saturating_add(p.get().len()))
        };
        let (args, kwargs) = (span(a), span(k));
        let embed = e.filter(|e| e.get() != "null").map(span);
        Ok(RawBody {
            args,
            kwargs,
            embed,
            bytes,
        })
    }

    fn text(&self, (a, b): (usize, usize)) -> &str {
        self.bytes
            .get(a..b)
            .and_then(|t| std::str::from_utf8(t).ok())
            .unwrap_or("null")
    }

    /// The workflow parts (none when null).
    fn embed(&self) -> Result<Embed, ProtocolError> {
        match self.embed {
            None => Ok(Embed::default()),
            Some(e) => serde_json::from_str::<Option<Embed>>(self.text(e))
                .map(Option::unwrap_or_default)
                .map_err(|e| ProtocolError::Body(e.to_string())),
        }
    }

    /// `args` and `kwargs` as trees (the slow path: keywords, defaults,
    /// a variadic tail, kombu's tags; and the builtins).
    fn trees(&self) -> Result<(Vec<Value>, Map<String, Value>), ProtocolError> {
        let bad = |e: serde_json::Error| ProtocolError::Body(e.to_string());
        let args: Vec<Value> = serde_json::from_str(self.text(self.args)).map_err(bad)?;
        let kwargs: Option<Map<String, Value>> =
            serde_json::from_str(self.text(self.kwargs)).map_err(bad)?;
        Ok((args, kwargs.unwrap_or_default()))
    }

    /// The `args` text as the pool takes it, when binding it to `entry`'s
    /// parameters changes nothing: no keyword arguments, exactly one
    /// positional argument per parameter (no default filled in, no
    /// variadic tail), no kombu tag (`__type__`) anywhere in it.
    fn plain_args(&self, entry: &TaskEntry) -> Option<Vec<u8>> {
        if entry.options.varargs {
            return None;
        }
        let kwargs = self.text(self.kwargs).trim();
        if !(kwargs == "{}" || kwargs == "null") {
            return None;
        }
        let text = self.text(self.args);
        if text.contains("__type__") {
            return None;
        }
        let items: Vec<&serde_json::value::RawValue> = serde_json::from_str(text).ok()?;
        (items.len() == entry.args.len()).then(|| text.as_bytes().to_vec())
    }
}

/// Runs `p` now, or holds it until its `eta`.
fn schedule(p: Prepared, eta: Option<DateTime<Utc>>) -> Step {
    match eta {
        Some(eta) if eta > Utc::now() => {
            let wait = eta
                .signed_duration_since(Utc::now())
                .to_std()
                .unwrap_or_default();
            // The reader refused an eta beyond bounds::MAX_DURATION, so
            // the deadline exists; "never" would be a message held for
            // ever, which is refused rather than kept.
            match bounds::deadline(Instant::now(), wait) {
                Some(at) => Step::Hold(at, p),
                None => refuse(
                    p.ctx,
                    &format!("header \"eta\": {} is too far away", protocol::iso8601(eta)),
                ),
            }
        }
        _ => Step::Run(p),
    }
}

/// A message this host will not run because of what it says (a header it
/// cannot honour, no `task` header): FAILURE `InvalidTaskError` with the
/// reason, logged.
fn refuse(ctx: JobCtx, why: &str) -> Step {
    tracing::warn!(
        "refusing task {}[{}]: {why} (stored as FAILURE InvalidTaskError)",
        ctx.task,
        ctx.task_id
    );
    Step::Fail(ctx, Exception::invalid(why))
}

/// Builds a follow-up message (chain step, link, link_error) from `sig`;
/// `first` is prepended to its args unless the signature is immutable.
fn follow_up(
    sig: &Signature,
    first: Option<Value>,
    parent: &JobCtx,
    rest: Option<Vec<Signature>>,
) -> (String, String) {
    signature_message(sig, first, &parent.root_id, &parent.task_id, rest)
}

/// The message of a plain task signature sent by task `parent_id` of
/// workflow `root_id` (a follow-up, a chord's body or header part): its
/// options as Celery's `apply_async` reads them, with `chain` (`rest`, else
/// the signature's own `chain` option), and a chord header part's `chord`,
/// `group_id` and `group_index` (issue 23 item 1).
pub(super) fn signature_message(
    sig: &Signature,
    first: Option<Value>,
    root_id: &str,
    parent_id: &str,
    rest: Option<Vec<Signature>>,
) -> (String, String) {
    let mut args = Vec::with_capacity(sig.args.len() + 1);
    if !sig.immutable {
        if let Some(v) = first {
            args.push(v);
        }
    }
    args.extend(sig.args.iter().cloned());
    let o = &sig.options;
    let s = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
    let f = |k: &str| o.get(k).and_then(Value::as_f64);
    let sigs = |k: &str| -> Option<Vec<Signature>> {
        let v = o.get(k)?;
        match v {
            Value::Array(_) => serde_json::from_value(v.clone()).ok(),
            Value::Object(_) => serde_json::from_value(v.clone()).ok().map(|s| vec![s]),
            _ => None,
        }
    };
    // An eta, countdown or expiry this host cannot read goes on as written
    // in the step's header, so the step's worker refuses it by name (C4)
    // instead of the step running at once without it.
    let unreadable = |k: &str| -> Option<String> {
        match o.get(k).filter(|v| !v.is_null())? {
            Value::String(t) if t.is_empty() || protocol::parse_time(t).is_some() => None,
            Value::Number(_) if k != "eta" => None,
            Value::String(t) if k != "countdown" => Some(t.clone()),
            other => Some(format!("{k} {other}")),
        }
    };
    let bad_eta = unreadable("eta").or_else(|| unreadable("countdown"));
    let bad_expires = unreadable("expires");
    let now = Utc::now();
    let eta = s("eta")
        .and_then(|e| protocol::parse_time(&e))
        .or_else(|| f("countdown").map(|c| after_secs(now, c)));
    let expires = s("expires")
        .and_then(|e| protocol::parse_time(&e))
        .or_else(|| f("expires").map(|c| after_secs(now, c)));
    let mut t = NewTask {
        task: sig.task.clone(),
        id: s("task_id").unwrap_or_default(),
        args,
        kwargs: sig.kwargs.clone(),
        embed: Embed {
            callbacks: sigs("link"),
            errbacks: sigs("link_error"),
            chain: rest.or_else(|| sigs("chain")).filter(|r| !r.is_empty()),
            chord: o.get("chord").filter(|c| !c.is_null()).cloned(),
        },
        queue: s("queue").or_else(|| s("routing_key")).unwrap_or_default(),
        priority: o.get("priority").map(protocol::kombu_priority).unwrap_or(0),
        eta,
        expires,
        timelimit: TimeLimit {
            hard: f("time_limit"),
            soft: f("soft_time_limit"),
        },
        ignore_result: o
            .get("ignore_result")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        root_id: Some(root_id.to_string()),
        parent_id: Some(parent_id.to_string()),
        group: s("group_id"),
        retries: 0,
        origin: String::new(),
    };
    let (mut env, list) = t.envelope();
    env.headers.group_index = o.get("group_index").and_then(Value::as_i64);
    // The client's reply queue, which `freeze` put in the options: an
    // `rpc://` backend publishes the step's result there (a chain's last).
    if let Some(r) = s("reply_to").filter(|r| !r.is_empty()) {
        env.properties.reply_to = Some(r);
    }
    if bad_eta.is_some() {
        env.headers.eta = bad_eta;
    }
    if bad_expires.is_some() {
        env.headers.expires = bad_expires;
    }
    (list, env.to_json())
}

/// `now` + `x` seconds (a signature's `countdown` or relative `expires`),
/// never panicking: a negative value is now (Celery runs a past eta at
/// once), and one past `bounds::MAX_DURATION` stays just past it, so the
/// step's worker refuses it by name instead of running it at once.
fn after_secs(now: DateTime<Utc>, x: f64) -> DateTime<Utc> {
    let cap = bounds::MAX_DURATION.as_secs_f64() + 86_400.0;
    let ms = (x.clamp(0.0, cap) * 1000.0) as i64;
    now.checked_add_signed(chrono::Duration::milliseconds(ms))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The completion of one finished job: result meta and follow-ups.
fn completion(ctx: &JobCtx, res: &Res) -> (Completion, bool) {
    let mut chord_sizes = Vec::new();
    let (meta, ok, send) = match res {
        Res::Ok(v) => {
            let mut send = Vec::new();
            if let Some(chain) = &ctx.embed.chain {
                let mut rest = chain.clone();
                if let Some(mut next) = rest.pop() {
                    if chord::is_canvas(&next) {
                        // A chord, group or chain as the next step: sent as
                        // its apply_async would, the rest of the chain on it.
                        if !rest.is_empty() {
                            next.options.insert(
                                "chain".into(),
                                serde_json::to_value(&rest).unwrap_or(Value::Null),
                            );
                        }
                        canvas(&next, v, ctx, &mut send, &mut chord_sizes);
                    } else {
                        send.push(follow_up(&next, Some(v.clone()), ctx, Some(rest)));
                    }
                }
            }
            for cb in ctx.embed.callbacks.iter().flatten() {
                if chord::is_canvas(cb) {
                    canvas(cb, v, ctx, &mut send, &mut chord_sizes);
                } else {
                    send.push(follow_up(cb, Some(v.clone()), ctx, None));
                }
            }
            let mut meta = ResultMeta::success(&ctx.task_id, v.clone());
            if let Some(sent) = &ctx.sent {
                // A builtin's expansion goes out before its result, its
                // chord sizes before any header part (builtins.rs).
                send.splice(0..0, sent.applied.msgs.iter().cloned());
                chord_sizes.splice(0..0, sent.applied.sizes.iter().cloned());
                meta.children.clone_from(&sent.children);
            }
            (meta, true, send)
        }
        Res::Err(_) | Res::Exc(_) => {
            let exc = match res {
                Res::Err(e) => Exception::for_error(e),
                Res::Exc(x) => x.clone(),
                Res::Ok(_) => unreachable!("matched above"),
            };
            let send = ctx
                .embed
                .errbacks
                .iter()
                .flatten()
                .map(|eb| follow_up(eb, Some(Value::String(ctx.task_id.clone())), ctx, None))
                .collect();
            (ResultMeta::failure(&ctx.task_id, &exc), false, send)
        }
    };
    let mut meta = meta;
    meta.group_id = ctx.group.clone();
    meta.parent_id = ctx.parent_id.clone();
    (
        Completion {
            tag: ctx.tag.clone(),
            task_id: ctx.task_id.clone(),
            meta: (!ctx.ignore_result).then_some(meta),
            send,
            chord_sizes,
            reply: reply_of(ctx),
        },
        ok,
    )
}

/// Where an `rpc://` result backend publishes the results of `ctx`'s
/// task: its message's `reply_to` with its `correlation_id` (else the task
/// id), as Celery's `RPCBackend.destination_for`; None without a reply_to.
fn reply_of(ctx: &JobCtx) -> Option<(String, String)> {
    let to = ctx.delivery.reply_to.clone()?;
    let id = ctx
        .delivery
        .correlation_id
        .clone()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| ctx.task_id.clone());
    Some((to, id))
}

/// Adds the messages (and chord sizes) of a canvas follow-up `sig` sent
/// with `v` by the task of `ctx`; one that cannot be sent is logged and
/// left out, as a follow-up Redis refuses is.
fn canvas(
    sig: &Signature,
    v: &Value,
    ctx: &JobCtx,
    send: &mut Vec<(String, String)>,
    sizes: &mut Vec<(String, u64)>,
) {
    let mut out = chord::Applied::default();
    match chord::apply(
        sig,
        Some(v.clone()),
        &ctx.root_id,
        &ctx.task_id,
        0,
        &mut out,
    ) {
        Ok(()) => {
            send.extend(out.msgs);
            sizes.extend(out.sizes);
        }
        Err(e) => tracing::error!(
            "task {}[{}]: its follow-up {} cannot be sent: {e}",
            ctx.task,
            ctx.task_id,
            sig.task
        ),
    }
}

/// The finisher thread: stores, sends follow-ups, acks; in batches; with
/// retries while Redis is away. Ends when every sender is gone.
#[allow(clippy::too_many_arguments)]
fn finisher(
    rx: Receiver<Fin>,
    freed: Sender<Freed>,
    mut tp: Box<dyn Transport>,
    mut link: Option<Link>,
    mut backend: ResultBackend,
    shared: Arc<Shared>,
    mut chords: Chords,
    lease: Duration,
) {
    const BATCH: usize = 256;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        // Tiny tasks end microseconds apart: while others still run in the
        // pool, their results are waited for a moment, so one script call
        // stores several (issue 26). An idle pool's one result goes at once.
        // (One sleep, not a wait per result: the thread wakes once a batch.)
        // A batch whose slots wait for the finish call to reserve their next
        // messages ([`Slots::merge`]) goes at once: waiting for more results
        // (until the pool was idle) left the pool idle for the whole call,
        // and batching comes by itself from the results that end while a
        // call is out (bench-celery, 2026-12-06: x4 10.9k -> 16.4k tasks/s,
        // x1 +20 %, for ~5-10 % more Redis CPU per task; docs/benchmarks.md).
        let lends = batch.iter().any(|f| f.credit);
        if !lends && batch.len() < BATCH && shared.slots.busy.load(Ordering::Acquire) > 0 {
            std::thread::sleep(FINISH_LINGER);
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(f) => batch.push(f),
                    Err(_) => break,
                }
            }
        }
        let slots = batch.iter().filter(|f| f.slot).count();
        let early = batch.iter().filter(|f| f.early).count();
        let cold = shared.cold.load(Ordering::Acquire);
        let mut requeue = Vec::new();
        let mut comps = Vec::new();
        let mut successes = Vec::new();
        let mut parts: Vec<Option<ChordWork>> = Vec::new();
        // Retry, Reject, Ignore, the poison cap (redelivery.rs).
        let (mut ends, mut rejected) = (Vec::new(), Vec::new());
        let mut care = redelivery::Aftercare::default();
        for f in &batch {
            let killed = matches!(&f.res, Res::Err(e) if e.kind == ErrorKind::Terminated);
            if f.unrun || (cold && f.slot && killed) {
                requeue.push(f.ctx.tag.clone());
                continue;
            }
            let Some((c, end, part)) = finish_one(&f.ctx, &f.res, &shared) else {
                rejected.push(f.ctx.tag.clone());
                care.requeue(&f.ctx.task_id, &f.ctx.delivery);
                continue;
            };
            let success = end.0 == End::Success;
            tracing::debug!("task {}[{}] {}", f.ctx.task, f.ctx.task_id, end.0.as_str());
            successes.push(success);
            // A RETRY or an Ignore is no chord part; a failure in place of
            // the job's (exhausted, capped, rejected) is.
            parts.push(match &part {
                Part::Same => chord_part(&f.ctx, &f.res, &c),
                Part::As(r) => chord_part(&f.ctx, r, &c),
                Part::No => None,
            });
            ends.push(end);
            comps.push(c);
        }
        chord_steps(
            &mut chords,
            &mut *tp,
            &mut link,
            &mut backend,
            &shared,
            &mut comps,
            &parts,
        );
        // Counted once stored: a result Redis never took is no success (C8).
        let (mut ok, mut failed, mut unstored) = (0u64, 0u64, 0u64);
        // The slots of a batch of successes get their next messages from
        // the finish call itself (issue 26): only when nothing else in
        // the batch sends a message its death or requeue count must
        // precede (a retry, a requeue, a rejection), and while the
        // consumer's window is full with nothing waiting in it.
        let credits = batch.iter().filter(|f| f.credit).count();
        let lend = credits > 0
            && requeue.is_empty()
            && rejected.is_empty()
            && ends.iter().all(|(e, _)| *e == End::Success)
            && !cold
            && !shared.abandon.load(Ordering::Acquire)
            && shared.lend.load(Ordering::Acquire);
        let (done, got) = if lend {
            let queues = shared
                .queues
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(q) = queues {
                if let Err(e) = tp.set_queues(&q) {
                    tracing::warn!("the finisher cannot switch queues: {e}");
                }
            }
            store_reserve(&mut *tp, &mut backend, &shared, &comps, credits, lease)
        } else {
            (
                store(&mut *tp, &mut backend, &shared, &comps, false),
                Vec::new(),
            )
        };
        let mut tally = [0u64; 3];
        for ((success, d), (end, tidy)) in successes.into_iter().zip(done).zip(ends) {
            match d {
                Some(_) if success => ok += 1,
                Some(_) if matches!(end, End::Failure | End::Rejected) => failed += 1,
                Some(_) => {}
                None => unstored += 1,
            }
            if let Some(d) = d {
                care.add(tidy, d.unsent);
                if let Some(i) = end.tally() {
                    tally[i] += 1;
                }
            }
        }
        // Before the rejected messages are back on their queue: their
        // next delivery reads the requeue count.
        if let Some(link) = link.as_mut() {
            care.apply(link, shared.rules.ttl_s);
        }
        if !care.unsent.is_empty() {
            store(&mut *tp, &mut backend, &shared, &care.unsent, false);
        }
        tally[1] += redelivery::requeue_rejected(&mut *tp, &rejected, &shared.abandon);
        while !requeue.is_empty() {
            match tp.requeue(&requeue) {
                Ok(n) => {
                    shared
                        .counts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .requeued += n as u64;
                    break;
                }
                Err(e) => {
                    if shared.abandon.load(Ordering::Acquire) {
                        tracing::error!("cannot requeue killed jobs' messages: {e}");
                        break;
                    }
                    std::thread::sleep(tp.backoff_left().max(ms(20)));
                }
            }
        }
        {
            let mut c = shared.counts.lock().unwrap_or_else(|e| e.into_inner());
            c.succeeded += ok;
            c.failed += failed;
            c.unstored += unstored;
            c.retried += tally[0];
            c.rejected += tally[1];
            c.ignored += tally[2];
        }
        let tags: Vec<String> = batch.iter().map(|f| f.ctx.tag.clone()).collect();
        shared.forget(&tags);
        if slots > 0 {
            // Before `freed`: the consumer never counts a slot twice.
            let _ = shared
                .slots
                .done
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    Some(d.saturating_sub(early))
                });
            let _ = freed.send((slots, got));
        } else if !got.is_empty() {
            let _ = freed.send((0, got));
        }
    }
}

/// [`store`], with a reserve of up to `max` messages in the same script
/// call for the slots the batch's successes freed ([`Slots::merge`]):
/// the results and the messages reserved. A first call that fails goes
/// on as [`store`] (nothing reserved: what a call whose reply was lost
/// may have reserved comes back once its lease lapses, as for the
/// consumer's own reserve).
fn store_reserve(
    tp: &mut dyn Transport,
    backend: &mut ResultBackend,
    shared: &Shared,
    comps: &[Completion],
    max: usize,
    lease: Duration,
) -> (Vec<Option<Finished>>, Vec<Reserved>) {
    let who = shared
        .marker
        .as_ref()
        .map(|_| Marker::who(&shared.rules))
        .unwrap_or_default();
    let marks = broker::RunMarks {
        count: if shared.marker.is_some() { max } else { 0 },
        ttl_s: shared.rules.ttl_s,
        who: &who,
    };
    let t0 = Instant::now();
    match backend.complete_reserve(tp, comps, false, max, lease, &marks) {
        Ok((res, got)) => {
            if let Some(o) = &shared.ops {
                o.ack_latency(t0.elapsed());
            }
            for (c, r) in comps.iter().zip(&res) {
                report_finish(c, r);
            }
            let got = got.unwrap_or_else(|e| {
                tracing::warn!("cannot reserve with the finish call ({e}); the consumer reserves");
                Vec::new()
            });
            (res.into_iter().map(Some).collect(), got)
        }
        Err(e) => (
            store(tp, backend, shared, comps, e.may_have_applied()),
            Vec::new(),
        ),
    }
}

/// How a message ended, for the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Success,
    Failure,
    Retried,
    Rejected,
    Ignored,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::Success => "succeeded",
            End::Failure => "failed",
            End::Retried => "sent again for a retry",
            End::Rejected => "rejected",
            End::Ignored => "ignored",
        }
    }

    /// Its place in the finisher's (retried, rejected, ignored) tally.
    fn tally(self) -> Option<usize> {
        match self {
            End::Retried => Some(0),
            End::Rejected => Some(1),
            End::Ignored => Some(2),
            End::Success | End::Failure => None,
        }
    }
}

/// Which outcome counts as a chord part for a finished message.
enum Part {
    /// The job's own.
    Same,
    /// This failure, stored in its place.
    As(Res),
    /// None: a RETRY or an Ignore ends nothing.
    No,
}

/// One finished job's completion once redelivery.rs has judged it (retry,
/// reject, ignore, the poison cap), its operators' record made; None: it
/// rejected its message with requeue (the message goes back on its queue).
fn finish_one(
    ctx: &JobCtx,
    res: &Res,
    shared: &Shared,
) -> Option<(Completion, (End, redelivery::Tidy), Part)> {
    let verdict = match res {
        Res::Err(e) => redelivery::judge(&shared.rules, &ctx.delivery, &ctx.task, &ctx.task_id, e),
        Res::Ok(_) | Res::Exc(_) => Verdict::AsIs,
    };
    // A message that ends for good takes its death and requeue history
    // with it.
    let tidy = redelivery::Tidy::ended(&ctx.delivery, &ctx.task_id);
    let ops = shared.ops.as_deref();
    let plain = |res: Res| {
        let (c, ok) = completion(ctx, &res);
        ops_finished(shared, ctx, &res);
        let end = if ok { End::Success } else { End::Failure };
        Some((c, (end, tidy.clone()), Part::As(res)))
    };
    match verdict {
        Verdict::AsIs => {
            let (c, ok) = completion(ctx, res);
            ops_finished(shared, ctx, res);
            let end = if ok { End::Success } else { End::Failure };
            Some((c, (end, tidy), Part::Same))
        }
        Verdict::Fail(e) => plain(Res::Err(e)),
        Verdict::FailWith(x) => plain(Res::Exc(x)),
        Verdict::Reject(x) => {
            let res = Res::Exc(x);
            let (c, _) = completion(ctx, &res);
            if let (Some(o), Res::Exc(x)) = (ops, &res) {
                let outcome = Outcome::Rejected {
                    requeue: false,
                    exc: Some(x),
                };
                o.finished(&ctx.task_id, &ctx.task, outcome);
            }
            Some((c, (End::Rejected, tidy), Part::As(res)))
        }
        Verdict::Requeue => {
            if let Some(o) = ops {
                let outcome = Outcome::Rejected {
                    requeue: true,
                    exc: None,
                };
                o.finished(&ctx.task_id, &ctx.task, outcome);
            }
            None
        }
        Verdict::Ignore => {
            if let Some(o) = ops {
                o.finished(&ctx.task_id, &ctx.task, Outcome::Ignored);
            }
            let c = Completion {
                tag: ctx.tag.clone(),
                task_id: ctx.task_id.clone(),
                ..Completion::default()
            };
            Some((c, (End::Ignored, tidy), Part::No))
        }
        Verdict::Retry(r) => {
            if let Some(o) = ops {
                let outcome = Outcome::Retried {
                    exception: &r.event_exception(),
                    traceback: &r.traceback,
                };
                o.finished(&ctx.task_id, &ctx.task, outcome);
            }
            let (group, parent) = (ctx.group.as_deref(), ctx.parent_id.as_deref());
            let mut c = Completion {
                tag: ctx.tag.clone(),
                task_id: ctx.task_id.clone(),
                ..Completion::default()
            };
            // Celery stores no RETRY for an ignored result.
            c.meta = (!ctx.ignore_result).then(|| r.meta(&ctx.task_id, group, parent));
            c.reply = reply_of(ctx);
            c.send = vec![r.message.clone()];
            let tidy = redelivery::Tidy::retried(&r, &ctx.task_id, group, parent);
            Some((c, (End::Retried, tidy), Part::No))
        }
    }
}

/// What a finished message means for chords (issue 23 item 1): a header
/// part to count (its `embed.chord` and `group`), and the chain steps to
/// fail after a FAILURE (a chord header part among them is counted too).
struct ChordWork {
    part: Option<chord::Part>,
    /// (the rest of the chain, the stored exception, the root id).
    fail_chain: Option<(Vec<Signature>, Value, String)>,
}

/// The chord work of one finished message, from the result it stores (or
/// would store: an `ignore_result` part still counts, as in Celery). Only
/// terminal states count: SUCCESS, FAILURE, REVOKED.
fn chord_part(ctx: &JobCtx, res: &Res, c: &Completion) -> Option<ChordWork> {
    let meta = match &c.meta {
        Some(m) => m.clone(),
        None => {
            let mut all = ctx.clone();
            all.ignore_result = false;
            completion(&all, res).0.meta?
        }
    };
    let part = match (&ctx.embed.chord, &ctx.group) {
        (Some(body), Some(group)) if !body.is_null() => Some(chord::Part {
            group: group.clone(),
            task_id: ctx.task_id.clone(),
            group_index: ctx.group_index,
            state: meta.status,
            result: meta.result.clone(),
            body: body.clone(),
            root_id: ctx.root_id.clone(),
        }),
        _ => None,
    };
    let fail_chain = match &ctx.embed.chain {
        Some(chain) if !chain.is_empty() && meta.status == protocol::State::Failure => {
            Some((chain.clone(), meta.result.clone(), ctx.root_id.clone()))
        }
        _ => None,
    };
    (part.is_some() || fail_chain.is_some()).then_some(ChordWork { part, fail_chain })
}

/// Chords, before `comps` are stored and acked (issue 23 item 1): the
/// sizes of chords their follow-ups start go to `.s`; each header part's
/// result is stored first (a part whose store fails is not counted), then
/// the part is counted on the result backend (the claimer sends the body
/// or fails it), and only then is its message acked with the rest: a host
/// killed in between leaves the message to be run again, and Celery 5.7's
/// dedup counts that run once.
fn chord_steps(
    chords: &mut Chords,
    tp: &mut dyn Transport,
    link: &mut Option<Link>,
    backend: &mut ResultBackend,
    shared: &Shared,
    comps: &mut [Completion],
    work: &[Option<ChordWork>],
) {
    let give_up = || {
        let stop_at = *shared.stop_at.lock().unwrap_or_else(|e| e.into_inner());
        shared.abandon.load(Ordering::Acquire)
            || stop_at.is_some_and(|at| at.elapsed() >= WARM_STORE_GRACE)
    };
    let sizes: Vec<(String, u64)> = comps
        .iter()
        .flat_map(|c| c.chord_sizes.iter().cloned())
        .collect();
    if backend.link_mut().is_none() && link.is_none() {
        // rpc:// on AMQP: no Redis to count chords in (Celery's rpc
        // backend refuses them at the client: `E_NO_CHORD_SUPPORT`), nor
        // to store the failure of a chain's later steps in.
        let parts = work.iter().flatten().filter(|w| w.part.is_some()).count();
        if parts > 0 || !sizes.is_empty() {
            tracing::error!(
                "chords need a Redis result backend: {} chord step(s) of this batch are not \
                 counted (the rpc:// result backend has no chord support, as in Celery)",
                sizes.len().saturating_add(parts)
            );
        }
        return;
    }
    if !sizes.is_empty() {
        let ttl_s = backend.ttl_s();
        let Some(results) = backend.link_mut().or(link.as_mut()) else {
            return;
        };
        let mut io = chord::Io {
            broker: &mut *tp,
            results,
            ttl_s,
        };
        if let Err(e) = chord::retrying(&give_up, || chords.set_sizes(&mut io, &sizes)) {
            tracing::error!("cannot write the size of {} chord(s) ({e})", sizes.len());
        }
    }
    let idx: Vec<usize> = (0..comps.len())
        .filter(|i| work.get(*i).is_some_and(Option::is_some))
        .collect();
    if idx.is_empty() {
        return;
    }
    let pre: Vec<Completion> = idx
        .iter()
        .filter(|i| comps[**i].meta.is_some())
        .map(|i| Completion {
            tag: String::new(),
            task_id: comps[*i].task_id.clone(),
            meta: comps[*i].meta.clone(),
            send: Vec::new(),
            chord_sizes: Vec::new(),
            reply: comps[*i].reply.clone(),
        })
        .collect();
    let mut stored = store(tp, backend, shared, &pre, false).into_iter();
    for i in idx {
        if comps[i].meta.is_some() {
            if stored.next().flatten().is_none() {
                continue;
            }
            // Stored: the ack below need not store it again.
            comps[i].meta = None;
        }
        let Some(w) = work.get(i).and_then(Option::as_ref) else {
            continue;
        };
        let ttl_s = backend.ttl_s();
        let Some(results) = backend.link_mut().or(link.as_mut()) else {
            return;
        };
        let mut io = chord::Io {
            broker: &mut *tp,
            results,
            ttl_s,
        };
        if let Some((chain, exc, root)) = &w.fail_chain {
            chords.fail_chain_of(&mut io, chain, exc, root, &give_up);
        }
        if let Some(part) = &w.part {
            chords.count(&mut io, part, &give_up);
        }
    }
}

/// Stores `comps` (results, follow-ups, acks) and says per completion
/// what was done: None when its outcome was not stored.
///
/// Errors that may pass (Redis away, out of memory, loading, a signal) are
/// retried with backoff, for ever while the host runs, for
/// [`WARM_STORE_GRACE`] once a warm stop began, not at all once a cold one
/// gave up: then the messages stay unacked and sweepers return them when
/// their lease lapses. An error that repeats whatever the wait (Redis
/// refuses the command: a bad argument, a wrong type, an ACL) is never
/// retried for ever holding the slots (C8): each message is finished on
/// its own, and one Redis keeps refusing is finished with less (without
/// its result, then without its follow-ups), logged, and counted unstored.
fn store(
    link: &mut dyn Transport,
    backend: &mut ResultBackend,
    shared: &Shared,
    comps: &[Completion],
    repeated: bool,
) -> Vec<Option<Finished>> {
    // Set once a call may have been carried out although its reply was
    // lost: the next one must not send follow-ups twice.
    let mut repeated = repeated;
    let mut warned = false;
    let mut failing_since: Option<Instant> = None;
    while !comps.is_empty() {
        let t0 = Instant::now();
        let done = backend.complete(link, comps, repeated);
        if let Some(o) = &shared.ops {
            o.ack_latency(t0.elapsed());
        }
        let e = match done {
            Ok(res) => {
                if warned {
                    tracing::info!("stored {} result(s) that had waited for Redis", comps.len());
                }
                for (c, r) in comps.iter().zip(&res) {
                    report_finish(c, r);
                }
                return res.into_iter().map(Some).collect();
            }
            Err(e) => e,
        };
        if !e.is_transient() {
            return match comps {
                [one] => vec![store_less(link, backend, shared, one, &e, repeated)],
                _ => comps
                    .iter()
                    .map(|c| {
                        store(link, backend, shared, std::slice::from_ref(c), repeated)
                            .pop()
                            .flatten()
                    })
                    .collect(),
            };
        }
        repeated |= e.may_have_applied();
        let since = *failing_since.get_or_insert_with(Instant::now);
        let stop_at = *shared.stop_at.lock().unwrap_or_else(|e| e.into_inner());
        let warm_over = stop_at.is_some_and(|at| at.max(since).elapsed() >= WARM_STORE_GRACE);
        if shared.abandon.load(Ordering::Acquire) || warm_over {
            tracing::error!(
                "giving up storing {} result(s): {e}; their messages stay unacked and a \
                 sweeper returns them to their queue once their lease lapses \
                 (--visibility-timeout)",
                comps.len()
            );
            return vec![None; comps.len()];
        }
        if !warned {
            if let BrokerError::Interrupted { .. } = e {
                tracing::debug!("{e}");
            } else {
                tracing::warn!(
                    "cannot store {} result(s) yet ({e}); retrying with backoff",
                    comps.len()
                );
                warned = true;
            }
        }
        std::thread::sleep(link.backoff_left().max(ms(20)));
    }
    Vec::new()
}

/// One completion Redis refused for good (`e`): finished without its
/// result (the ack and follow-ups still go), or, refused again, acked
/// alone; never retried for ever. Returns None: the outcome is not stored.
fn store_less(
    link: &mut dyn Transport,
    backend: &mut ResultBackend,
    shared: &Shared,
    c: &Completion,
    e: &BrokerError,
    repeated: bool,
) -> Option<Finished> {
    let less = if c.meta.is_some() {
        tracing::error!(
            "cannot store the result of task {} ({e}); acking its message without a result",
            c.task_id
        );
        Completion {
            meta: None,
            ..c.clone()
        }
    } else if !c.send.is_empty() {
        tracing::error!(
            "cannot send the follow-up messages of task {} ({e}); acking its message without \
             them",
            c.task_id
        );
        Completion {
            send: Vec::new(),
            ..c.clone()
        }
    } else {
        tracing::error!(
            "cannot ack the message of task {} ({e}); it stays unacked and a sweeper returns \
             it to its queue once its lease lapses",
            c.task_id
        );
        return None;
    };
    store(link, backend, shared, std::slice::from_ref(&less), repeated);
    None
}

/// Logs what had become of a message's reservation when its task finished
/// (C15: "restored" only when a restore happened).
fn report_finish(c: &Completion, r: &Finished) {
    use super::transport::redis::Held;
    match r.held {
        Held::Held => {}
        Held::Restored => tracing::warn!(
            "task {} finished after a sweeper had put its message back on its queue (this \
             host's lease on it had lapsed: the host or Redis stalled for longer than \
             --visibility-timeout); it may run again; its result is kept, its follow-ups are \
             left to the run that holds the message",
            c.task_id
        ),
        Held::Vanished => tracing::warn!(
            "task {} finished, but its message was gone from Redis's unacked bookkeeping \
             without having been restored (flushed or deleted): it does not run again here; \
             its result is stored and its follow-ups are sent",
            c.task_id
        ),
        Held::Redelivered => tracing::info!(
            "task {} finished after the AMQP channel that delivered it was lost: its result is \
             stored; its redelivery is acked with its follow-ups, not run again, while this host \
             runs",
            c.task_id
        ),
        Held::AlreadyFinished => tracing::debug!(
            "task {}: a store whose reply was lost had already finished it",
            c.task_id
        ),
    }
    if r.unsent > 0 {
        tracing::error!(
            "task {}: Redis refused {} of its follow-up message(s) (a queue key that is not a \
             list?): not sent",
            c.task_id,
            r.unsent
        );
    }
}

/// The keeper thread: renews the leases of this host's messages every
/// [`keeper_period`] and sweeps back to their queues the messages of hosts
/// whose lease lapsed and those Python workers held past the foreign
/// timeout.
fn keeper(
    stop: Receiver<()>,
    mut link: Box<dyn Transport>,
    queues: Vec<String>,
    lease: Duration,
    foreign: Duration,
    shared: Arc<Shared>,
) {
    let every = keeper_period(lease);
    let mut warned = false;
    loop {
        let tags: Vec<String> = shared
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        let res = link.renew(&tags, lease, &queues, foreign);
        match res {
            Ok(_) => warned = false,
            // A signal, not Redis: the next round renews (C15).
            Err(e @ BrokerError::Interrupted { .. }) => tracing::debug!("{e}"),
            Err(e) => {
                if !warned {
                    tracing::warn!("cannot renew in-flight messages ({e}); retrying");
                    warned = true;
                }
            }
        }
        let wait = if link.is_down() {
            link.backoff_left().max(ms(50)).min(every)
        } else {
            every
        };
        match stop.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => continue,
            _ => break,
        }
    }
}

// ----- Operators' hooks (issue 14: remote control, events, metrics) -----

impl Consumer<'_> {
    /// A received message as operators see it: revoked ids are refused
    /// (REVOKED), the others are recorded (reserved/scheduled, task-received).
    fn ops_receive(&self, step: Step, queue: &str) -> Step {
        let Some(o) = &self.shared.ops else {
            return step;
        };
        let (p, eta) = match &step {
            Step::Run(p) => (p, None),
            Step::Hold(at, p) => {
                let left = at.saturating_duration_since(Instant::now());
                let eta = chrono::Duration::from_std(left)
                    .ok()
                    .and_then(|d| Utc::now().checked_add_signed(d));
                (p, eta)
            }
            _ => return step,
        };
        if o.is_revoked_message(&p.ctx.task_id, &p.ctx.delivery.raw) {
            return match step {
                Step::Run(p) | Step::Hold(_, p) => Step::Fail(p.ctx, Exception::revoked("revoked")),
                other => other,
            };
        }
        o.received(
            &p.ctx.task_id,
            &p.ctx.task,
            &p.args,
            eta,
            queue,
            &p.ctx.root_id,
            p.ctx.parent_id.as_deref(),
            p.expires,
            p.ctx.delivery.retries,
            p.ctx.delivery.priority,
            &p.ctx.delivery.raw,
        );
        step
    }

    /// Carries out a remote-control command that needs the pool or the broker.
    fn ops_cmd(&mut self, c: OpsCmd) {
        match c {
            OpsCmd::Terminate(job) => {
                if let Err(e) = self.pool.terminate_job(job) {
                    tracing::warn!("cannot terminate job {}: {e}", job.0);
                }
            }
            OpsCmd::Grow(n) => {
                for _ in 0..n.min(512) {
                    self.control(Control::Grow);
                }
            }
            OpsCmd::Shrink(n) => {
                for _ in 0..n.min(512) {
                    self.control(Control::Shrink);
                }
            }
            OpsCmd::Shutdown => {
                self.control(Control::Warm);
            }
            OpsCmd::Queues(qs) => {
                if qs.is_empty() {
                    tracing::warn!("remote control: not cancelling the last queue");
                    return;
                }
                // AMQP: consumers added and cancelled on the channel that
                // holds the running jobs' deliveries; Redis: a broker on
                // the new lists.
                match self.broker.set_queues(&qs) {
                    Ok(()) => {
                        tracing::warn!("remote control: consuming [{}]", qs.join(", "));
                        *self.shared.queues.lock().unwrap_or_else(|e| e.into_inner()) = Some(qs);
                    }
                    Err(e) => tracing::error!("remote control: cannot change queues: {e}"),
                }
            }
            OpsCmd::Stats(tx) => {
                let _ = tx.send((self.pool.stats().ok(), self.workers));
            }
        }
    }
}

/// Tells the operators' view how a job ended.
fn ops_finished(shared: &Shared, ctx: &JobCtx, res: &Res) {
    let Some(o) = &shared.ops else { return };
    match res {
        Res::Ok(v) => o.finished(&ctx.task_id, &ctx.task, Outcome::Success(v)),
        Res::Err(e) => {
            let exc = Exception::for_error(e);
            o.finished(
                &ctx.task_id,
                &ctx.task,
                Outcome::Failure {
                    exc: &exc,
                    kind: e.kind.as_str(),
                },
            )
        }
        Res::Exc(x) => o.finished(
            &ctx.task_id,
            &ctx.task,
            Outcome::Failure {
                exc: x,
                kind: &x.info.exc_type,
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::celery::protocol::Body;
    use serde_json::json;

    fn names(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    fn kw(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn kwargs_go_to_their_positions() {
        let e = TaskEntry {
            target: TaskRef {
                plugin: 0,
                task: 0,
                gen: 0,
            },
            name: "math.add".into(),
            func: "add".into(),
            args: names(&["a", "b"]),
            options: crate::TaskOptions::default(),
        };
        assert_eq!(
            map_args(&e, vec![], kw(serde_json::json!({"b": 2, "a": 1}))).unwrap(),
            vec![Value::from(1), Value::from(2)]
        );
        let err = map_args(&e, vec![Value::from(1)], Map::new()).unwrap_err();
        assert_eq!(err, "add() missing 1 required positional argument: 'b'");
    }

    fn ctx() -> JobCtx {
        JobCtx {
            tag: "tag".into(),
            task_id: "id-1".into(),
            task: "math.square".into(),
            root_id: "root".into(),
            group: None,
            group_index: None,
            parent_id: None,
            ignore_result: false,
            embed: Embed::default(),
            delivery: Delivery::default(),
            sent: None,
            marked: false,
        }
    }

    #[test]
    fn a_chain_sends_its_last_element_with_the_result_first() {
        let body: Body = serde_json::from_str(r#"[[2], {}, {"chain": [{"task": "math.square", "args": [7], "kwargs": {}, "options": {"task_id": "t3"}, "immutable": true}, {"task": "py.double", "args": [1], "kwargs": {}, "options": {"task_id": "t2", "queue": "py"}, "immutable": false}]}]"#).unwrap();
        let mut c = ctx();
        c.embed = body.embed;
        let (comp, ok) = completion(&c, &Res::Ok(Value::from(4)));
        assert!(ok);
        assert_eq!(comp.send.len(), 1);
        let (list, json) = &comp.send[0];
        assert_eq!(list, "py");
        let env = Envelope::parse(json.as_bytes()).unwrap();
        assert_eq!(env.task_id(), Some("t2"));
        assert_eq!(env.headers.parent_id.as_deref(), Some("id-1"));
        assert_eq!(env.headers.root_id.as_deref(), Some("root"));
        let b = env.body().unwrap();
        assert_eq!(b.args, vec![Value::from(4), Value::from(1)]);
        let rest = b.embed.chain.unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].task, "math.square");
        // Immutable: no result prepended.
        let mut c2 = ctx();
        c2.embed = Embed {
            callbacks: Some(rest),
            ..Embed::default()
        };
        let (comp, _) = completion(&c2, &Res::Ok(Value::from(4)));
        let env = Envelope::parse(comp.send[0].1.as_bytes()).unwrap();
        assert_eq!(env.body().unwrap().args, vec![Value::from(7)]);
        assert_eq!(comp.send[0].0, "celery");
    }

    #[test]
    fn c4_a_follow_up_keeps_an_unreadable_eta_for_its_worker_to_refuse() {
        let sig = |options: Value| Signature {
            task: "math.square".into(),
            options: options.as_object().cloned().unwrap_or_default(),
            ..Signature::default()
        };
        for (options, says) in [
            (json!({"eta": "tomorrow"}), r#"header "eta": "tomorrow""#),
            (
                json!({"countdown": "10"}),
                r#"header "eta": "countdown \"10\"""#,
            ),
            (json!({"eta": 12345}), r#"header "eta": "eta 12345""#),
            (json!({"expires": "never"}), r#"header "expires": "never""#),
            (
                json!({"expires": [1]}),
                r#"header "expires": "expires [1]""#,
            ),
            (
                json!({"countdown": 1e19}),
                "more than the longest accepted delay",
            ),
        ] {
            let (_, text) = follow_up(&sig(options.clone()), None, &ctx(), None);
            let r = Envelope::read(text.as_bytes()).unwrap();
            let refused = r.refused.map(|e| e.to_string()).unwrap_or_default();
            assert!(refused.contains(says), "{options}: {refused}");
        }
        // Readable ones pass: an eta, a relative expiry, a past countdown.
        for options in [
            json!({"eta": "2030-01-01T00:00:00+00:00", "expires": 60}),
            json!({"countdown": -5, "expires": ""}),
        ] {
            let (_, text) = follow_up(&sig(options.clone()), None, &ctx(), None);
            let r = Envelope::read(text.as_bytes()).unwrap();
            assert!(r.refused.is_none(), "{options}: {:?}", r.refused);
        }
    }

    fn envelope_with_body(body: &str) -> Envelope {
        use base64::Engine as _;
        let mut t = NewTask::new("math.add", vec![]);
        let (mut env, _) = t.envelope();
        env.body = base64::engine::general_purpose::STANDARD.encode(body);
        env
    }

    fn entry(args: &[&str], options: crate::TaskOptions) -> TaskEntry {
        TaskEntry {
            target: TaskRef {
                plugin: 0,
                task: 0,
                gen: 0,
            },
            name: "math.add".into(),
            func: "add".into(),
            args: names(args),
            options,
        }
    }

    #[test]
    fn k26_a_plain_call_hands_the_args_text_over_as_it_arrived() {
        let add = entry(&["a", "b"], crate::TaskOptions::default());
        let body = RawBody::read(&envelope_with_body(
            r#"[[1, {"x": [2.5, "y"]}], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#,
        ))
        .unwrap();
        assert_eq!(
            body.plain_args(&add).as_deref(),
            Some(&br#"[1, {"x": [2.5, "y"]}]"#[..])
        );
        assert_eq!(body.embed().unwrap(), Embed::default());
        // Anything binding would change goes the long way: keywords, a
        // default to fill in, a variadic tail, a kombu tag, too many.
        for (text, e) in [
            (r#"[[1], {"b": 2}, null]"#, &add),
            (r#"[[1], {}, null]"#, &add),
            (
                r#"[[1, {"__type__": "uuid", "__value__": {"hex": "00"}}], {}, null]"#,
                &add,
            ),
            (r#"[[1, 2, 3], {}, null]"#, &add),
        ] {
            let b = RawBody::read(&envelope_with_body(text)).unwrap();
            assert_eq!(b.plain_args(e), None, "{text}");
            assert!(b.trees().is_ok(), "{text}");
        }
        let varargs = entry(
            &["a", "rest"],
            crate::TaskOptions {
                varargs: true,
                ..Default::default()
            },
        );
        let b = RawBody::read(&envelope_with_body("[[1, 2], {}, null]")).unwrap();
        assert_eq!(b.plain_args(&varargs), None);
        // A body that is not [args, kwargs, embed] is refused in the full
        // reading's words.
        let env = envelope_with_body("[[1, 2], {}]");
        let e = RawBody::read(&env).err().map(|e| e.to_string());
        assert_eq!(e, env.body().err().map(|e| e.to_string()));
        let mut env = envelope_with_body("[[1, 2], {}, null]");
        env.content_type = "application/x-python-serialize".into();
        assert!(matches!(
            RawBody::read(&env),
            Err(ProtocolError::ContentDisallowed(_))
        ));
    }

    #[test]
    fn errbacks_get_the_task_id_and_failures_no_chain() {
        let body: Body = serde_json::from_str(r#"[[2], {}, {"errbacks": [{"task": "py.err", "args": [], "kwargs": {}, "options": {}, "immutable": false}], "chain": [{"task": "py.next", "args": [], "kwargs": {}, "options": {}, "immutable": false}]}]"#).unwrap();
        let mut c = ctx();
        c.embed = body.embed;
        let (comp, ok) = completion(
            &c,
            &Res::Err(TaskError::new(ErrorKind::TimeLimit, "hard limit 1s")),
        );
        assert!(!ok);
        assert_eq!(comp.send.len(), 1);
        let env = Envelope::parse(comp.send[0].1.as_bytes()).unwrap();
        assert_eq!(env.task_name().unwrap(), "py.err");
        assert_eq!(env.body().unwrap().args, vec![Value::from("id-1")]);
        let meta = comp.meta.unwrap();
        assert_eq!(meta.result["exc_type"], "TimeLimitExceeded");
        let mut c = ctx();
        c.ignore_result = true;
        assert!(completion(&c, &Res::Ok(Value::Null)).0.meta.is_none());
    }
}
