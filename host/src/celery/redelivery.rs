//! What becomes of a message whose task did not simply succeed or fail:
//! Celery's retry (`self.retry()`, `autoretry_for`, 5.7's
//! `task_retry_on_worker_lost`), `Reject`, `Ignore`, and the poison-message
//! cap (issue 23 items 2, 3 and 5).
//!
//! - **Retry** (Celery 5.7's `Task.retry` / `Request._retry_worker_lost`):
//!   a new message with the *same* task id, `retries` + 1 and an `eta`, to
//!   the queue the message came from, built by rewriting the received
//!   envelope (every other header, property and the body — chain, chord,
//!   link, link_error, group, stamps, expires, time limits, priority — go
//!   on as they came); the `RETRY` state with the exception (as
//!   `mark_as_retry` stores it) and the ack go in the same finish step
//!   (`lua/finish.lua`: the message is one of the completion's follow-ups).
//!   No errback runs and no chord part counts. Past `max_retries` the
//!   original error is stored as FAILURE (Celery raises the original
//!   exception, or `MaxRetriesExceededError` when the task gave none).
//! - **Reject** (Celery 5.6+): with requeue the message goes back on its
//!   queue (the host's requeue path), without it the `Reject` exception is
//!   stored as FAILURE (Celery's #10369). A task that rejects with requeue
//!   for ever is stopped after [`Options::max_requeues`] requeues (a count
//!   per task id in Redis), stored as FAILURE `Reject` saying so.
//! - **Ignore**: acked; nothing stored, nothing sent.
//! - **Poison messages**: every death of a worker running a task (a
//!   `worker_lost` outcome) and every restore of a message whose host died
//!   (or stopped renewing its lease) while its task ran (`lua/restore.lua`,
//!   from the "running here" marks [`Marker`] writes) is pushed onto the
//!   task's death list in Redis (`billiard-host:deaths:<id>`, expiring with
//!   the results). A message is screened before it runs when it was
//!   delivered before (`redelivered`, `retries` > 0): once its task killed
//!   [`Options::max_worker_deaths`] workers or hosts it is stored FAILURE
//!   `WorkerLostError` naming each death, and acked, never run again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::backend::Completion;
use super::protocol::{self, Envelope, ExcInfo, Exception, ResultMeta, State};
use super::redis::{BrokerError, Link, DEATHS_PREFIX, LEASES, RUNNING};
use crate::bounds;
use crate::error::{Directive, ErrorKind, TaskError};
use crate::pool::{Pool, TaskRef};
use crate::retry::{Decision, RetryPolicy};

/// `--max-worker-deaths` by default. One death can be bad luck (the OOM
/// killer picking a worker for a neighbour's memory, a node drained), two
/// in a row still infrastructure; a third death of the same task is the
/// task. Each death may take a whole host with it, so the cap is far below
/// RabbitMQ's quorum-queue delivery limit (20).
pub const DEFAULT_MAX_WORKER_DEATHS: u32 = 3;
/// `--max-requeues` by default: RabbitMQ 4's quorum-queue delivery limit,
/// the bound Celery users on RabbitMQ already live with.
pub const DEFAULT_MAX_REQUEUES: u32 = 20;
/// The largest `--max-worker-deaths` / `--max-requeues` accepted.
pub const MAX_CAP: u32 = 1000;
/// Prefix of the per-task requeue counters (`billiard-host:requeues:<id>`).
pub const REQUEUES_PREFIX: &str = "billiard-host:requeues:";

const RUNNING_LUA: &str = include_str!("lua/running.lua");

/// The worker's redelivery settings (flags; a task's registration options
/// override the retry policy per task).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The worker's retry policy: `--autoretry-for`, `--max-retries`,
    /// `--default-retry-delay`, `--retry-backoff*`, and
    /// `--retry-on-worker-lost` (`worker_lost` among the kinds).
    pub policy: RetryPolicy,
    /// A task whose runs killed this many workers or hosts is stored
    /// FAILURE and not run again (1 to [`MAX_CAP`]).
    pub max_worker_deaths: u32,
    /// A task rejecting its message with requeue is requeued at most this
    /// many times, then stored FAILURE (1 to [`MAX_CAP`]).
    pub max_requeues: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            policy: RetryPolicy::default(),
            max_worker_deaths: DEFAULT_MAX_WORKER_DEATHS,
            max_requeues: DEFAULT_MAX_REQUEUES,
        }
    }
}

impl Options {
    /// Checks the numbers and durations (flags are checked where they are
    /// parsed; a library caller may set anything).
    pub fn check(&self) -> Result<(), String> {
        for (what, n) in [
            ("--max-worker-deaths", self.max_worker_deaths),
            ("--max-requeues", self.max_requeues),
        ] {
            if !(1..=MAX_CAP).contains(&n) {
                return Err(format!("{what} {n} is not between 1 and {MAX_CAP}"));
            }
        }
        if self.policy.on.contains(&ErrorKind::Terminated) {
            return Err(
                "--autoretry-for terminated: a revoked or terminated task is never retried".into(),
            );
        }
        let mut ds = vec![("--default-retry-delay", self.policy.delay)];
        if let Some(b) = self.policy.backoff {
            ds.push(("--retry-backoff", b.factor));
            ds.push(("--retry-backoff-max", b.max));
        }
        for (what, d) in ds {
            bounds::check_duration(what, d).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// The settings in force while the worker runs.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The flags.
    pub opts: Options,
    /// How long death lists and requeue counters are kept (the results'
    /// time to live, whole seconds, at least 1).
    pub ttl_s: u64,
    /// Who this host is in a death's description (`node (pid N)`).
    pub node: String,
    /// The worker's retry policy, shared by the tasks that set none.
    pub base: Arc<RetryPolicy>,
}

impl Rules {
    /// The rules of a worker named `node` whose results live `ttl_s`.
    pub fn new(opts: Options, ttl_s: u64, node: &str) -> Rules {
        Rules {
            base: Arc::new(opts.policy.clone()),
            opts,
            ttl_s: ttl_s.max(1),
            node: format!("{node} (pid {})", std::process::id()),
        }
    }
}

/// The retry policy of `task`: the worker's, with every option the task
/// registered (`#[task(max_retries = 5, autoretry_for = ...)]`) in its
/// place.
pub fn policy_for(pool: &Pool, task: TaskRef, rules: &Rules) -> Arc<RetryPolicy> {
    let plugins = pool.plugins();
    let options = plugins
        .get(usize::from(task.plugin))
        .and_then(|p| p.tasks.get(task.task as usize))
        .map(|t| &t.options);
    match options {
        Some(o) if !o.is_empty() => Arc::new(o.retry_policy(&rules.opts.policy)),
        _ => rules.base.clone(),
    }
}

/// What a message brings for its redelivery (kept with its job).
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    /// The queue it was taken from: a retry goes back there.
    pub queue: String,
    /// Its `retries` header (a negative one counts as 0).
    pub retries: u32,
    /// Its priority (kombu's reading, 0-9): a retry keeps it.
    pub priority: u8,
    /// The envelope as taken: a retry rewrites its headers.
    pub raw: Arc<Vec<u8>>,
    /// The retry policy of its task.
    pub policy: Arc<RetryPolicy>,
    /// Earlier deaths of its task, oldest first (read when taken).
    pub deaths: Vec<String>,
    /// How many times its task already rejected it with requeue.
    pub requeues: u32,
    /// Redis holds a death list or a requeue counter for its task: cleared
    /// once it ends.
    pub history: bool,
    /// It was delivered before (restored, requeued, retried): screened.
    again: bool,
}

impl Delivery {
    /// A message taken from `queue`, read as `env`, raw `raw`.
    pub fn of(queue: &str, env: &Envelope, raw: &[u8], policy: Arc<RetryPolicy>) -> Delivery {
        let h = &env.headers;
        Delivery {
            queue: queue.to_string(),
            retries: u32::try_from(h.retries.max(0)).unwrap_or(u32::MAX),
            priority: env
                .properties
                .priority
                .map_or(0, |p| u8::try_from(p.clamp(0, 9)).unwrap_or(0)),
            raw: Arc::new(raw.to_vec()),
            policy,
            deaths: Vec::new(),
            requeues: 0,
            history: false,
            again: h.redelivered == Some(true)
                || env.properties.delivery_info.redelivered == Some(true)
                || h.retries > 0,
        }
    }
}

/// Reads what Redis remembers of a message delivered before (its task's
/// deaths and requeues) into `d`; returns the FAILURE to store instead of
/// running it once its task killed [`Options::max_worker_deaths`] workers
/// or hosts. A first delivery costs nothing; Redis unreachable here lets
/// the message run (the finish records the death if it dies again).
pub fn screen(
    link: &mut Link,
    rules: &Rules,
    task: &str,
    task_id: &str,
    d: &mut Delivery,
) -> Option<Exception> {
    if !d.again {
        return None;
    }
    let cap = rules.opts.max_worker_deaths;
    let read = link.run(|c| {
        redis::pipe()
            .cmd("LRANGE")
            .arg(format!("{DEATHS_PREFIX}{task_id}"))
            .arg(0)
            .arg(i64::from(cap))
            .cmd("GET")
            .arg(format!("{REQUEUES_PREFIX}{task_id}"))
            .query::<(Vec<Vec<u8>>, Option<String>)>(c)
    });
    let (deaths, requeues) = match read {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(
                "cannot read the death history of task {task}[{task_id}] ({e}); running it"
            );
            return None;
        }
    };
    // Newest first in Redis (LPUSH): oldest first here.
    d.deaths = deaths
        .into_iter()
        .rev()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .collect();
    d.requeues = requeues.and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    d.history = !d.deaths.is_empty() || d.requeues > 0;
    if d.deaths.len() < cap as usize {
        return None;
    }
    let text = format!(
        "task {task}[{task_id}] killed the worker or host running it {} times, the cap \
         (--max-worker-deaths {cap}); not run again: {}",
        d.deaths.len(),
        numbered(&d.deaths)
    );
    tracing::error!("poison message: {text}");
    Some(Exception::for_kind(ErrorKind::WorkerLost, &text))
}

/// What to do with a failed job's message.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Nothing of ours: finish it as any failure.
    AsIs,
    /// Finish it as a failure with this error in place of the job's
    /// (retries exhausted, the death cap: the same kind, more said).
    Fail(TaskError),
    /// Finish it as a failure with this exception
    /// (`MaxRetriesExceededError`).
    FailWith(Exception),
    /// Send it again: store RETRY, send the message, ack; no errbacks, no
    /// chord part.
    Retry(Box<Retry>),
    /// Rejected without requeue: the `Reject` exception stored as FAILURE
    /// (errbacks and the chord part as for any failure), `task-rejected`.
    Reject(Exception),
    /// Rejected with requeue: back on its queue, `task-rejected`.
    Requeue,
    /// Acked; nothing stored, nothing sent.
    Ignore,
}

/// A retry, ready to finish.
#[derive(Debug, Clone)]
pub struct Retry {
    /// The exception stored with `RETRY` (None: `result: null`, as Celery
    /// stores a `self.retry()` without `exc`).
    pub exc: Option<Exception>,
    /// The traceback text stored with it (`Retry in 5s: ...`).
    pub traceback: String,
    /// The retry message: (list, envelope JSON).
    pub message: (String, String),
    /// This death (a worker lost running it), pushed onto the task's
    /// death list once the retry is stored: (list, description).
    pub death: Option<(String, String)>,
    /// What is stored instead when Redis refuses the retry message (its
    /// queue key holds another type): the failure, final, saying so (as
    /// Celery's retry turns a failed publish into a FAILURE).
    pub if_unsent: Exception,
    /// How long until it runs again.
    pub countdown: Duration,
}

impl Retry {
    /// The `exception` field of the `task-retried` event (a `repr`).
    pub fn event_exception(&self) -> String {
        match &self.exc {
            Some(x) => repr(x),
            None => format!("Retry({:?})", self.traceback.trim_end()),
        }
    }

    /// The RETRY result, as Celery's `mark_as_retry` stores it: the
    /// exception (or null), no `date_done`, and the retry among the
    /// children (Celery records the retry's own `AsyncResult` there).
    pub fn meta(&self, task_id: &str, group: Option<&str>, parent: Option<&str>) -> ResultMeta {
        ResultMeta {
            status: State::Retry,
            result: self
                .exc
                .as_ref()
                .and_then(|x| serde_json::to_value(&x.info).ok())
                .unwrap_or(Value::Null),
            traceback: Some(self.traceback.clone()),
            children: vec![json!([[task_id, null], null])],
            date_done: None,
            task_id: task_id.to_string(),
            group_id: group.map(str::to_string),
            parent_id: parent.map(str::to_string),
        }
    }
}

/// Decides what becomes of a message whose job failed with `err`.
pub fn judge(rules: &Rules, d: &Delivery, task: &str, task_id: &str, err: &TaskError) -> Verdict {
    match err.directive() {
        Some(Directive::Ignore) => return Verdict::Ignore,
        Some(Directive::Reject { requeue: false }) => return Verdict::Reject(reject(&err.message)),
        Some(Directive::Reject { requeue: true }) => {
            let cap = rules.opts.max_requeues;
            if d.requeues < cap {
                return Verdict::Requeue;
            }
            return Verdict::Reject(reject(&format!(
                "{}; rejected with requeue {} times, the cap (--max-requeues {cap}): not requeued \
                 again",
                err.message, d.requeues
            )));
        }
        Some(Directive::Retry { .. }) | None => {}
    }
    let lost = err.kind == ErrorKind::WorkerLost;
    let death = lost.then(|| format!("{}: {}", rules.node, first_clause(&err.message)));
    if let Some(this) = &death {
        let cap = rules.opts.max_worker_deaths as usize;
        let mut all = d.deaths.clone();
        all.push(this.clone());
        if all.len() >= cap {
            return Verdict::Fail(TaskError::new(
                ErrorKind::WorkerLost,
                format!(
                    "{}; task {task}[{task_id}] killed the worker or host running it {} times, \
                     the cap (--max-worker-deaths {cap}): {}",
                    err.message,
                    all.len(),
                    numbered(&all)
                ),
            ));
        }
    }
    match d.policy.decide(err, d.retries) {
        Decision::Retry(countdown) => retry(d, task, task_id, err, countdown, death),
        Decision::Final { exhausted: true } => exhausted(d, task, task_id, err),
        Decision::Final { exhausted: false } if lost && !d.deaths.is_empty() => {
            Verdict::Fail(TaskError::new(
                err.kind,
                format!(
                    "{}; earlier deaths running it: {}",
                    err.message,
                    numbered(&d.deaths)
                ),
            ))
        }
        Decision::Final { .. } => Verdict::AsIs,
    }
}

/// The verdict past `max_retries`: Celery raises the exception the task
/// gave (`retry(exc=...)`, `autoretry_for`'s), or `MaxRetriesExceededError`
/// when it gave none (a plain `Failure::retry()`).
fn exhausted(d: &Delivery, task: &str, task_id: &str, err: &TaskError) -> Verdict {
    let cap = match err.directive() {
        Some(Directive::Retry {
            max_retries: Some(n),
            ..
        }) => *n,
        _ => d.policy.max_retries.unwrap_or(0),
    };
    let note = format!("retried {} times, the cap (max_retries {cap})", d.retries);
    let asked = matches!(err.directive(), Some(Directive::Retry { .. }));
    if asked && err.exception_class().is_none() {
        let (args, kwargs) = call_of(&d.raw);
        let text = format!(
            "Can't retry {task}[{task_id}] args:{args} kwargs:{kwargs} ({note}; the last attempt: \
             {})",
            err.message
        );
        return Verdict::FailWith(exception(
            State::Failure,
            "celery.exceptions",
            "MaxRetriesExceededError",
            &text,
        ));
    }
    let mut e = err.clone();
    e.message = format!("{} ({note})", err.message);
    Verdict::Fail(e)
}

/// Builds the retry.
fn retry(
    d: &Delivery,
    task: &str,
    task_id: &str,
    err: &TaskError,
    countdown: Duration,
    death: Option<String>,
) -> Verdict {
    let refuse = |why: String| {
        tracing::error!("cannot retry task {task}[{task_id}]: {why}; its failure is final");
        let mut e = err.clone();
        e.message = format!("{} (not retried: {why})", err.message);
        Verdict::Fail(e)
    };
    if let Err(e) = bounds::check_duration("the retry countdown", countdown) {
        return refuse(e.to_string());
    }
    let Some(eta) = chrono::Duration::from_std(countdown)
        .ok()
        .and_then(|c| Utc::now().checked_add_signed(c))
    else {
        return refuse("its eta is past the calendar".into());
    };
    let Some(retries) = d.retries.checked_add(1) else {
        return refuse(format!("its retries header is {}", d.retries));
    };
    let Some(json) = retry_envelope(&d.raw, task_id, retries, eta) else {
        return refuse("its message could not be read back".into());
    };
    let list = protocol::queue_key(&d.queue, d.priority);
    let asked = matches!(err.directive(), Some(Directive::Retry { .. }));
    // A task's own retry without an exception stores `result: null`, as
    // Celery's `self.retry()` without `exc`; every other retry stores the
    // failure's exception.
    let exc = (!asked || err.exception_class().is_some()).then(|| exception_of(err));
    let when = humantime::format_duration(Duration::from_millis(
        u64::try_from(countdown.as_millis()).unwrap_or(u64::MAX),
    ));
    let traceback = match &exc {
        Some(x) => format!(
            "{}celery.exceptions.Retry: Retry in {when}: {}\n",
            x.traceback.clone().unwrap_or_default(),
            repr(x)
        ),
        None => format!(
            "celery.exceptions.Retry: Retry in {when}: {}\n",
            err.message
        ),
    };
    tracing::info!(
        "task {task}[{task_id}] retry {retries} in {when}: {}",
        first_clause(&err.message)
    );
    let mut if_unsent = exception_of(err);
    if let Some(m) = if_unsent.info.exc_message.first_mut() {
        *m = Value::String(format!(
            "{} (its retry could not be sent: Redis refused the message on {list})",
            err.message
        ));
    }
    Verdict::Retry(Box::new(Retry {
        if_unsent,
        exc,
        traceback,
        message: (list, json),
        death: death.map(|t| (format!("{DEATHS_PREFIX}{task_id}"), truncate(t, 1000))),
        countdown,
    }))
}

/// The retry message: the received envelope with `retries`, `eta`, a
/// fresh delivery tag, this host as `origin`, `parent_id` set to the task
/// itself when it had none (as Celery's retry sends it from inside the
/// task), and the redelivery marks dropped. Every other field goes on as
/// it came, at any depth (the envelope is rewritten without building a
/// tree of it); an envelope that is not plain JSON (Python's `NaN`) is
/// rebuilt from the worker's tolerant reading instead.
pub fn retry_envelope(
    raw: &[u8],
    task_id: &str,
    retries: u32,
    eta: DateTime<Utc>,
) -> Option<String> {
    type Obj = BTreeMap<String, Box<RawValue>>;
    let origin = format!(
        "{}@{}",
        std::process::id(),
        super::control::machine_hostname()
    );
    let eta = protocol::iso8601(eta);
    let raw_of = |v: &Value| RawValue::from_string(v.to_string()).ok();
    let rewrite = || -> Option<String> {
        let mut top: Obj = serde_json::from_slice(raw).ok()?;
        let mut h: Obj = serde_json::from_str(top.get("headers")?.get()).ok()?;
        h.insert("retries".into(), raw_of(&json!(retries))?);
        h.insert("eta".into(), raw_of(&json!(eta))?);
        h.insert("origin".into(), raw_of(&json!(origin))?);
        if h.get("parent_id").is_none_or(|p| p.get() == "null") {
            h.insert("parent_id".into(), raw_of(&json!(task_id))?);
        }
        h.remove("redelivered");
        // Celery drops RabbitMQ's dead-lettering headers from a retry.
        h.retain(|k, _| {
            !(k.starts_with("x-death")
                || k.starts_with("x-first-death")
                || k.starts_with("x-last-death"))
        });
        top.insert(
            "headers".into(),
            RawValue::from_string(serde_json::to_string(&h).ok()?).ok()?,
        );
        if let Some(p) = top.get("properties") {
            let mut p: Obj = serde_json::from_str(p.get()).ok()?;
            p.insert("delivery_tag".into(), raw_of(&json!(protocol::new_id()))?);
            // Celery 5.7's worker sends its retries with an `origin`
            // property too.
            p.insert("origin".into(), raw_of(&json!(origin))?);
            if let Some(di) = p.get("delivery_info") {
                if let Ok(mut di) = serde_json::from_str::<Obj>(di.get()) {
                    di.remove("redelivered");
                    p.insert(
                        "delivery_info".into(),
                        RawValue::from_string(serde_json::to_string(&di).ok()?).ok()?,
                    );
                }
            }
            top.insert(
                "properties".into(),
                RawValue::from_string(serde_json::to_string(&p).ok()?).ok()?,
            );
        }
        serde_json::to_string(&top).ok()
    };
    rewrite().or_else(|| {
        let mut env = Envelope::read(raw).ok()?.envelope;
        let h = &mut env.headers;
        h.retries = i64::from(retries);
        h.eta = Some(eta.clone());
        h.origin = Some(origin.clone());
        if h.parent_id.is_none() {
            h.parent_id = Some(task_id.to_string());
        }
        h.redelivered = None;
        env.properties.delivery_tag = Some(protocol::new_id());
        env.properties.delivery_info.redelivered = None;
        Some(env.to_json())
    })
}

/// `(args, kwargs)` of a message as `MaxRetriesExceededError` names them.
fn call_of(raw: &[u8]) -> (String, String) {
    let body = Envelope::read(raw)
        .ok()
        .and_then(|r| r.envelope.body().ok());
    match body {
        Some(b) => {
            let items: Vec<String> = b.args.iter().map(Value::to_string).collect();
            let args = match items.len() {
                1 => format!("({},)", items[0]),
                _ => format!("({})", items.join(", ")),
            };
            (args, Value::Object(b.kwargs).to_string())
        }
        None => ("()".into(), "{}".into()),
    }
}

/// The exception Celery stores for `err` (its kind's, or the class the
/// task named).
pub fn exception_of(err: &TaskError) -> Exception {
    Exception::for_error(err)
}

/// FAILURE `celery.exceptions.Reject(reason, False)`, as Celery 5.6+
/// stores a `Reject` without requeue.
pub fn reject(reason: &str) -> Exception {
    let mut x = exception(State::Failure, "celery.exceptions", "Reject", reason);
    x.info.exc_message = vec![Value::String(reason.to_string()), Value::Bool(false)];
    x
}

fn exception(state: State, module: &str, ty: &str, message: &str) -> Exception {
    Exception {
        state,
        info: ExcInfo {
            exc_type: ty.into(),
            exc_message: vec![Value::String(message.into())],
            exc_module: module.into(),
        },
        traceback: Some(format!("{module}.{ty}: {message}\n")),
    }
}

/// `Type('message')`, as Celery's events show an exception.
pub fn repr(x: &Exception) -> String {
    let msg = x
        .info
        .exc_message
        .first()
        .and_then(Value::as_str)
        .unwrap_or("");
    format!("{}({:?})", x.info.exc_type, msg)
}

/// The first clause of a pool message (`worker 2 (pid 9) killed by signal
/// 11 (SIGSEGV) while running job 7; peak memory ...` → up to the `;`).
fn first_clause(message: &str) -> &str {
    message.split("; ").next().unwrap_or(message)
}

fn numbered(items: &[String]) -> String {
    items
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{}) {s}", i.saturating_add(1)))
        .collect::<Vec<_>>()
        .join("; ")
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at = at.saturating_sub(1);
        }
        s.truncate(at);
    }
    s
}

/// What one finished message leaves to do in Redis once its finish is
/// stored.
#[derive(Debug, Clone)]
pub enum Tidy {
    /// Nothing.
    Nothing,
    /// It ended for good: its task's death list and requeue counter go.
    Clear(String),
    /// It was sent again: the death of this run, if it was one, goes onto
    /// its task's list; if Redis refused the retry message, `if_unsent`
    /// is stored.
    Retried {
        /// (list, description) of this run's death.
        death: Option<(String, String)>,
        /// The FAILURE to store if the retry message was not sent.
        if_unsent: Box<Completion>,
    },
}

impl Tidy {
    /// For a message of task `task_id` that ended for good.
    pub fn ended(d: &Delivery, task_id: &str) -> Tidy {
        if d.history {
            Tidy::Clear(task_id.to_string())
        } else {
            Tidy::Nothing
        }
    }

    /// For a message of task `task_id` sent again by `r`.
    /// `parent` and `group` go into the FAILURE stored if its retry is
    /// refused.
    pub fn retried(r: &Retry, task_id: &str, group: Option<&str>, parent: Option<&str>) -> Tidy {
        let mut meta = ResultMeta::failure(task_id, &r.if_unsent);
        meta.group_id = group.map(str::to_string);
        meta.parent_id = parent.map(str::to_string);
        Tidy::Retried {
            death: r.death.clone(),
            // No tag: the message is acked already.
            if_unsent: Box::new(Completion {
                task_id: task_id.to_string(),
                meta: Some(meta),
                ..Completion::default()
            }),
        }
    }
}

/// What a finished batch leaves to do in Redis (not atomic with the
/// finish: a crash in between loses a death or a requeue of the count, and
/// leaves keys that expire with the results).
#[derive(Debug, Default)]
pub struct Aftercare {
    /// Tasks that ended for good: their death list and requeue counter go.
    pub clear: Vec<String>,
    /// Deaths to record: (list, description), kept as long as results.
    pub deaths: Vec<(String, String)>,
    /// Tasks rejected with requeue: their counter goes up (before the
    /// message is back on its queue, so its next delivery reads it).
    pub requeued: Vec<String>,
    /// FAILUREs to store for retries whose message Redis refused.
    pub unsent: Vec<Completion>,
}

impl Aftercare {
    /// Adds what one stored finish leaves; `unsent`: its follow-ups Redis
    /// refused.
    pub fn add(&mut self, t: Tidy, unsent: u32) {
        match t {
            Tidy::Nothing => {}
            Tidy::Clear(id) => self.clear.push(id),
            Tidy::Retried { death, if_unsent } => {
                if unsent > 0 {
                    tracing::error!(
                        "task {}: Redis refused its retry message; its failure is stored as final",
                        if_unsent.task_id
                    );
                    self.clear.push(if_unsent.task_id.clone());
                    self.unsent.push(*if_unsent);
                } else {
                    self.deaths.extend(death);
                }
            }
        }
    }

    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.clear.is_empty() && self.deaths.is_empty() && self.requeued.is_empty()
    }

    /// Does it, in one round trip; a failure is logged (counters and lists
    /// expire on their own).
    pub fn apply(&self, link: &mut Link, ttl_s: u64) {
        if self.is_empty() {
            return;
        }
        let r = link.run(|c| {
            let mut p = redis::pipe();
            for id in &self.clear {
                p.cmd("DEL")
                    .arg(format!("{DEATHS_PREFIX}{id}"))
                    .arg(format!("{REQUEUES_PREFIX}{id}"))
                    .ignore();
            }
            for (list, death) in &self.deaths {
                p.cmd("LPUSH").arg(list).arg(death).ignore();
                p.cmd("EXPIRE").arg(list).arg(ttl_s).ignore();
            }
            for id in &self.requeued {
                let k = format!("{REQUEUES_PREFIX}{id}");
                p.cmd("INCR").arg(&k).ignore();
                p.cmd("EXPIRE").arg(&k).arg(ttl_s).ignore();
            }
            p.query::<()>(c)
        });
        if let Err(e) = r {
            tracing::warn!("cannot update the retry/death bookkeeping of finished tasks ({e})");
        }
    }
}

/// Puts the messages their task rejected with requeue back on their
/// queues (the host's requeue, which counts no death), retrying while
/// Redis is away until the finisher gives up (`abandon`: a stop); returns
/// how many went back.
pub fn requeue_rejected(link: &mut Link, tags: &[String], abandon: &AtomicBool) -> u64 {
    while !tags.is_empty() {
        match super::redis::requeue(link, tags) {
            Ok(n) => return n as u64,
            Err(e) => {
                if abandon.load(Ordering::Acquire) {
                    tracing::error!("cannot requeue rejected messages: {e}");
                    return 0;
                }
                std::thread::sleep(link.backoff_left().max(Duration::from_millis(20)));
            }
        }
    }
    0
}

/// Marks the messages whose task started here as running
/// (`lua/running.lua`), from a thread of its own so the consumer never
/// waits for it: a host that dies with a marked message leaves a death of
/// its task for the sweeper that restores it.
#[derive(Clone)]
pub struct Marker {
    tx: Sender<(String, String)>,
}

/// Marks waiting at most (beyond, a mark is dropped: a death of that run
/// would go uncounted, nothing else).
const MARKS_QUEUED: usize = 65_536;

impl Marker {
    /// Starts the marking thread on its own connection to `broker_url`.
    pub fn start(broker_url: &str) -> Result<Marker, BrokerError> {
        let link = Link::new(broker_url, "broker")?;
        let (tx, rx) = crossbeam_channel::bounded(MARKS_QUEUED);
        std::thread::Builder::new()
            .name("celery-marks".into())
            .spawn(move || marks(rx, link))
            .map_err(|e| BrokerError::Reply(format!("cannot start a thread: {e}")))?;
        Ok(Marker { tx })
    }

    /// The job of message `tag` (task `task_id`) is about to start here.
    pub fn started(&self, rules: &Rules, tag: &str, task_id: &str) {
        // The mark is line-separated: a task id with a line break in it
        // (no Celery client makes one) could charge its deaths to another
        // id, so it is not marked.
        if task_id.contains('\n') || task_id.is_empty() {
            return;
        }
        let mark = format!(
            "{}\n{task_id}\n{}, running it since {}",
            rules.ttl_s,
            rules.node,
            protocol::iso8601(Utc::now())
        );
        match self.tx.try_send((tag.to_string(), mark)) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                tracing::debug!("running marks are behind; task {task_id} is not marked");
            }
        }
    }
}

fn script() -> &'static redis::Script {
    static S: OnceLock<redis::Script> = OnceLock::new();
    S.get_or_init(|| redis::Script::new(RUNNING_LUA))
}

/// The marking thread: one script call per batch; ends when every
/// [`Marker`] is gone. A batch Redis does not take is retried while Redis
/// is away for a short while, then dropped (a lost mark costs only the
/// count of a death that might come).
fn marks(rx: Receiver<(String, String)>, mut link: Link) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        for attempt in 0..5u32 {
            let r = link.run(|c| {
                let mut inv = script().key(LEASES);
                inv.key(RUNNING);
                for (tag, mark) in &batch {
                    inv.arg(tag).arg(mark);
                }
                inv.invoke::<i64>(c)
            });
            match r {
                Ok(_) => break,
                Err(e) if attempt == 4 || !e.is_transient() => {
                    tracing::debug!("{} running mark(s) dropped: {e}", batch.len());
                    break;
                }
                Err(_) => std::thread::sleep(link.backoff_left().max(Duration::from_millis(20))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ExceptionClass, FailureDetail};

    /// `send_task('faults.flaky', args=['/tmp/x', 2], link=..., expires=60,
    /// time_limit=10, priority=6)` as Celery 5.7 sends it, with a header of
    /// the app's own and a redelivery mark.
    const MSG: &str = r#"{"body": "W1siL3RtcC94IiwgMl0sIHt9LCB7ImNhbGxiYWNrcyI6IFt7InRhc2siOiAicHkuZG91YmxlIiwgImFyZ3MiOiBbXSwgImt3YXJncyI6IHt9LCAib3B0aW9ucyI6IHt9LCAic3VidGFza190eXBlIjogbnVsbCwgImltbXV0YWJsZSI6IGZhbHNlfV0sICJlcnJiYWNrcyI6IG51bGwsICJjaGFpbiI6IG51bGwsICJjaG9yZCI6IG51bGx9XQ==", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "faults.flaky", "id": "t-1", "shadow": null, "eta": null, "expires": "2030-01-01T00:00:00+00:00", "group": "g-1", "group_index": 2, "retries": 1, "timelimit": [10, null], "root_id": "r-1", "parent_id": null, "argsrepr": "['/tmp/x', 2]", "kwargsrepr": "{}", "origin": "gen1@vm", "ignore_result": null, "replaced_task_nesting": 0, "stamped_headers": ["mine"], "stamps": {"mine": [[["deep"]]]}, "mine": "kept", "x-death": [{"count": 1}], "redelivered": true}, "properties": {"correlation_id": "t-1", "reply_to": "rt", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "celery", "redelivered": true}, "priority": 6, "body_encoding": "base64", "delivery_tag": "old-tag"}}"#;

    fn rules() -> Rules {
        Rules::new(Options::default(), 60, "node@h")
    }

    fn delivery(policy: RetryPolicy) -> Delivery {
        let env = Envelope::read(MSG.as_bytes()).unwrap().envelope;
        Delivery::of("celery", &env, MSG.as_bytes(), Arc::new(policy))
    }

    fn asking(d: Directive, class: Option<&str>) -> TaskError {
        TaskError::new(ErrorKind::TaskError, "run 1").with_detail(FailureDetail {
            exception: class.map(|c| ExceptionClass {
                module: "builtins".into(),
                name: c.into(),
            }),
            directive: Some(d),
        })
    }

    fn retry_asked(countdown_ms: u64) -> TaskError {
        asking(
            Directive::Retry {
                countdown: Some(Duration::from_millis(countdown_ms)),
                max_retries: None,
            },
            None,
        )
    }

    #[test]
    fn a_retry_rewrites_only_what_celerys_retry_changes() {
        let d = delivery(RetryPolicy::default());
        assert_eq!((d.retries, d.priority, d.again), (1, 6, true));
        let Verdict::Retry(r) = judge(&rules(), &d, "faults.flaky", "t-1", &retry_asked(1500))
        else {
            panic!("not a retry");
        };
        assert_eq!(r.countdown, Duration::from_millis(1500));
        assert_eq!(r.message.0, protocol::queue_key("celery", 6));
        let old: Value = serde_json::from_str(MSG).unwrap();
        let new: Value = serde_json::from_str(&r.message.1).unwrap();
        let (h, oh) = (&new["headers"], &old["headers"]);
        assert_eq!(h["retries"], 2);
        assert_eq!(
            h["parent_id"], "t-1",
            "Celery's retry is sent from inside the task"
        );
        let eta = protocol::parse_time(h["eta"].as_str().unwrap()).unwrap();
        let ahead = eta.signed_duration_since(Utc::now()).num_milliseconds();
        assert!((1000..=1500).contains(&ahead), "{ahead}");
        assert!(h.get("redelivered").is_none() && h.get("x-death").is_none());
        for k in [
            "id",
            "task",
            "group",
            "group_index",
            "expires",
            "timelimit",
            "root_id",
            "stamps",
            "stamped_headers",
            "mine",
            "argsrepr",
        ] {
            assert_eq!(h[k], oh[k], "{k}");
        }
        assert_eq!(
            new["body"], old["body"],
            "args, kwargs, link, chain, chord unchanged"
        );
        let p = &new["properties"];
        assert_ne!(p["delivery_tag"], "old-tag");
        assert_eq!(p["priority"], 6);
        assert_eq!(p["correlation_id"], "t-1");
        assert!(p["delivery_info"].get("redelivered").is_none());
        // Without an exception: RETRY with `result: null`, as Celery's
        // `self.retry()` without `exc`.
        let m = r.meta("t-1", Some("g-1"), None);
        assert_eq!(m.status, State::Retry);
        assert_eq!(m.result, Value::Null);
        assert_eq!(m.date_done, None);
        assert_eq!(m.children, vec![json!([["t-1", null], null])]);
        assert!(
            r.traceback.contains("Retry in 1s 500ms: run 1"),
            "{}",
            r.traceback
        );
    }

    #[test]
    fn an_envelope_json_cannot_hold_is_rebuilt_from_the_tolerant_reading() {
        let nan = MSG.replace("\"mine\": \"kept\"", "\"mine\": NaN");
        let json = retry_envelope(nan.as_bytes(), "t-1", 2, Utc::now()).unwrap();
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["headers"]["retries"], 2);
        assert_eq!(v["headers"]["id"], "t-1");
        assert_eq!(
            v["body"],
            serde_json::from_str::<Value>(MSG).unwrap()["body"]
        );
        assert!(retry_envelope(b"[1]", "t-1", 2, Utc::now()).is_none());
    }

    #[test]
    fn past_max_retries_the_original_error_or_max_retries_exceeded() {
        let mut d = delivery(RetryPolicy::default());
        d.retries = 3;
        match judge(&rules(), &d, "faults.flaky", "t-1", &retry_asked(0)) {
            Verdict::FailWith(x) => {
                assert_eq!(x.info.exc_type, "MaxRetriesExceededError");
                let text = x.info.exc_message[0].as_str().unwrap().to_string();
                assert!(
                    text.starts_with(
                        "Can't retry faults.flaky[t-1] args:(\"/tmp/x\", 2) kwargs:{}"
                    ),
                    "{text}"
                );
            }
            v => panic!("{v:?}"),
        }
        // With an exception: that exception.
        let e = asking(
            Directive::Retry {
                countdown: None,
                max_retries: Some(1),
            },
            Some("ValueError"),
        );
        match judge(&rules(), &d, "faults.flaky", "t-1", &e) {
            Verdict::Fail(e) => {
                assert_eq!(e.exception_class().unwrap().name, "ValueError");
                assert!(e.message.contains("max_retries 1"), "{}", e.message);
            }
            v => panic!("{v:?}"),
        }
        // Automatic retries of a kind: the kind's exception, with its
        // exception dict in the RETRY meta while retries are left.
        let p = RetryPolicy {
            on: vec![ErrorKind::Panic],
            delay: Duration::ZERO,
            ..RetryPolicy::default()
        };
        let panic = TaskError::new(ErrorKind::Panic, "boom");
        d.policy = Arc::new(p);
        d.retries = 0;
        let Verdict::Retry(r) = judge(&rules(), &d, "faults.panic", "t-1", &panic) else {
            panic!("not a retry");
        };
        assert_eq!(r.exc.unwrap().info.exc_type, "TaskPanic");
        d.retries = 3;
        assert!(
            matches!(judge(&rules(), &d, "faults.panic", "t-1", &panic), Verdict::Fail(e) if e.kind == ErrorKind::Panic)
        );
        // Not listed: as is.
        let other = TaskError::new(ErrorKind::TaskError, "no");
        assert!(matches!(
            judge(&rules(), &d, "faults.fail", "t-1", &other),
            Verdict::AsIs
        ));
    }

    #[test]
    fn reject_ignore_and_the_requeue_cap() {
        let mut d = delivery(RetryPolicy::default());
        let r = rules();
        let ignore = asking(Directive::Ignore, None);
        assert!(matches!(
            judge(&r, &d, "t", "t-1", &ignore),
            Verdict::Ignore
        ));
        let no = asking(Directive::Reject { requeue: false }, None);
        match judge(&r, &d, "t", "t-1", &no) {
            Verdict::Reject(x) => {
                assert_eq!(
                    (x.state, x.info.exc_type.as_str()),
                    (State::Failure, "Reject")
                );
                assert_eq!(x.info.exc_message, vec![json!("run 1"), json!(false)]);
            }
            v => panic!("{v:?}"),
        }
        let yes = asking(Directive::Reject { requeue: true }, None);
        d.requeues = DEFAULT_MAX_REQUEUES - 1;
        assert!(matches!(judge(&r, &d, "t", "t-1", &yes), Verdict::Requeue));
        d.requeues = DEFAULT_MAX_REQUEUES;
        match judge(&r, &d, "t", "t-1", &yes) {
            Verdict::Reject(x) => {
                let text = x.info.exc_message[0].as_str().unwrap().to_string();
                assert!(text.contains("--max-requeues 20"), "{text}");
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_worker_lost_counts_toward_the_cap_and_names_every_death() {
        let lost = TaskError::new(
            ErrorKind::WorkerLost,
            "worker 2 (pid 9) killed by signal 11 (SIGSEGV) while running job 7; peak memory 1 KiB",
        );
        let policy = RetryPolicy {
            on: vec![ErrorKind::WorkerLost],
            max_retries: Some(10),
            delay: Duration::ZERO,
            backoff: None,
        };
        let mut d = delivery(policy);
        let Verdict::Retry(r) = judge(&rules(), &d, "faults.segfault", "t-1", &lost) else {
            panic!("not a retry");
        };
        let (list, death) = r.death.unwrap();
        assert_eq!(list, "billiard-host:deaths:t-1");
        assert!(death.starts_with("node@h (pid "), "{death}");
        assert!(
            death.ends_with("killed by signal 11 (SIGSEGV) while running job 7"),
            "{death}"
        );
        d.deaths = vec!["first death".into(), "second death".into()];
        match judge(&rules(), &d, "faults.segfault", "t-1", &lost) {
            Verdict::Fail(e) => {
                assert_eq!(e.kind, ErrorKind::WorkerLost);
                assert!(
                    e.message
                        .contains("3 times, the cap (--max-worker-deaths 3)"),
                    "{}",
                    e.message
                );
                assert!(
                    e.message
                        .contains("1) first death; 2) second death; 3) node@h"),
                    "{}",
                    e.message
                );
            }
            v => panic!("{v:?}"),
        }
        // Without retry-on-worker-lost the death is final at once, the
        // earlier ones named.
        d.policy = Arc::new(RetryPolicy::default());
        d.deaths.truncate(1);
        match judge(&rules(), &d, "faults.segfault", "t-1", &lost) {
            Verdict::Fail(e) => assert!(
                e.message
                    .contains("earlier deaths running it: 1) first death"),
                "{}",
                e.message
            ),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn options_are_range_checked() {
        let mut o = Options::default();
        assert!(o.check().is_ok());
        o.max_worker_deaths = 0;
        assert!(o.check().is_err());
        o.max_worker_deaths = 3;
        o.policy.on = vec![ErrorKind::Terminated];
        assert!(o.check().is_err());
        o.policy.on = vec![];
        o.policy.delay = bounds::MAX_DURATION + Duration::from_secs(1);
        assert!(o.check().unwrap_err().contains("--default-retry-delay"));
    }
}
