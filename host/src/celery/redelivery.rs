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

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};

use super::protocol::{self, Envelope, ExcInfo, Exception, ResultMeta, State};
use super::transport::redis::{Link, DEATHS_PREFIX};
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
/// `--delivery-limit` by default: RabbitMQ 4's `x-delivery-limit` of quorum
/// queues (a message returned to its queue more often is dropped, or
/// dead-lettered when the queue has a dead-letter exchange).
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;
/// The largest `--max-worker-deaths` / `--max-requeues` accepted.
pub const MAX_CAP: u32 = 1000;
/// Prefix of the per-task requeue counters (`billiard-host:requeues:<id>`).
pub const REQUEUES_PREFIX: &str = "billiard-host:requeues:";

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
    /// The delivery limit of the quorum queues consumed (their
    /// `x-delivery-limit` or `delivery-limit` policy; 1 to [`MAX_CAP`]):
    /// read against each delivery's `x-delivery-count` ([`budget`]).
    pub delivery_limit: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            policy: RetryPolicy::default(),
            max_worker_deaths: DEFAULT_MAX_WORKER_DEATHS,
            max_requeues: DEFAULT_MAX_REQUEUES,
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
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
            ("--delivery-limit", self.delivery_limit),
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
    /// The client's reply queue and the message's correlation id (the
    /// `rpc://` result backend publishes there).
    pub reply_to: Option<String>,
    /// The `correlation_id` property.
    pub correlation_id: Option<String>,
    /// RabbitMQ's `x-delivery-count` header (quorum queues): how many
    /// times it was returned to its queue before this delivery.
    pub delivery_count: Option<u64>,
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
            reply_to: env.properties.reply_to.clone().filter(|r| !r.is_empty()),
            correlation_id: env.properties.correlation_id.clone(),
            delivery_count: h.extra.get("x-delivery-count").and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            }),
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

/// Where a delivery from a quorum queue stands against the queue's
/// delivery limit. RabbitMQ counts the returns of a message to its queue
/// (a channel or connection lost holding it, a reject with requeue) in
/// `x-delivery-count`, absent on the first delivery, and drops (or
/// dead-letters) a message returned once more than `limit` times: the
/// delivery whose count is `limit` is its last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// No count (a first delivery, a classic queue) or under half the limit.
    Plenty,
    /// Half the limit or more returns so far: it keeps coming back.
    PastHalf {
        /// `x-delivery-count`.
        count: u64,
    },
    /// Its last delivery: returned once more, RabbitMQ drops it.
    Last {
        /// `x-delivery-count`.
        count: u64,
    },
}

/// The [`Budget`] of a delivery with `x-delivery-count` `count` from a
/// quorum queue whose delivery limit is `limit`.
pub fn budget(count: Option<u64>, limit: u32) -> Budget {
    let Some(count) = count.filter(|c| *c > 0) else {
        return Budget::Plenty;
    };
    if count >= u64::from(limit) {
        Budget::Last { count }
    } else if count.saturating_mul(2) >= u64::from(limit) {
        Budget::PastHalf { count }
    } else {
        Budget::Plenty
    }
}

/// What a result and the log say of a delivery near its queue's limit;
/// None when it is not.
pub fn budget_note(d: &Delivery, limit: u32) -> Option<String> {
    let head = |count: u64| {
        format!(
            "delivery {} of at most {} from quorum queue {} (x-delivery-count {count}, delivery \
             limit {limit})",
            count.saturating_add(1),
            u64::from(limit).saturating_add(1),
            d.queue
        )
    };
    match budget(d.delivery_count, limit) {
        Budget::Plenty => None,
        Budget::PastHalf { count } => Some(format!(
            "{}: the message keeps coming back to its queue (hosts lost holding it, or \
             requeued)",
            head(count)
        )),
        Budget::Last { count } => Some(format!(
            "{}: its last; returned to its queue once more, RabbitMQ drops it (or dead-letters \
             it)",
            head(count)
        )),
    }
}

/// Logs a delivery near its quorum queue's delivery limit, at receipt
/// (issue 25: RabbitMQ must not drop a message silently).
pub fn note_receipt(rules: &Rules, d: &Delivery, task: &str, task_id: &str) {
    let limit = rules.opts.delivery_limit;
    let Some(note) = budget_note(d, limit) else {
        return;
    };
    match budget(d.delivery_count, limit) {
        Budget::Last { .. } => tracing::error!("task {task}[{task_id}]: {note}"),
        _ => tracing::warn!("task {task}[{task_id}]: {note}"),
    }
}

/// Decides what becomes of a message whose job failed with `err`. A
/// worker lost on a delivery near its quorum queue's limit says so in the
/// failure stored; a reject with requeue on the last delivery the limit
/// allows is stored FAILURE instead (requeued, RabbitMQ would drop it).
pub fn judge(rules: &Rules, d: &Delivery, task: &str, task_id: &str, err: &TaskError) -> Verdict {
    let limit = rules.opts.delivery_limit;
    let last = matches!(budget(d.delivery_count, limit), Budget::Last { .. });
    if last && matches!(err.directive(), Some(Directive::Reject { requeue: true })) {
        let note = budget_note(d, limit).unwrap_or_default();
        return Verdict::Reject(reject(&format!(
            "{}; rejected with requeue on {note}: not requeued",
            err.message
        )));
    }
    let v = judge_plain(rules, d, task, task_id, err);
    let Some(note) = budget_note(d, limit).filter(|_| err.kind == ErrorKind::WorkerLost) else {
        return v;
    };
    match v {
        Verdict::AsIs => {
            Verdict::Fail(TaskError::new(err.kind, format!("{}; {note}", err.message)))
        }
        Verdict::Fail(e) => Verdict::Fail(TaskError::new(e.kind, format!("{}; {note}", e.message))),
        other => other,
    }
}

fn judge_plain(rules: &Rules, d: &Delivery, task: &str, task_id: &str, err: &TaskError) -> Verdict {
    // A revoke (terminate) is final whatever a task's own options list:
    // retrying it would undo the operator's revoke.
    if err.kind == ErrorKind::Terminated {
        return Verdict::AsIs;
    }
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

mod book;
mod envelope;

pub use book::{requeue_rejected, Aftercare, Marker, Tidy};
use envelope::call_of;
pub use envelope::retry_envelope;

#[cfg(test)]
mod tests;
