//! Celery's task message protocol v2 as kombu's Redis transport lays it out,
//! and Celery's Redis result format. Serde types only: no I/O.
//!
//! Measured against Celery 5.7 / kombu 5.7 (see `docs/celery.md` and the
//! captured messages in this file's tests):
//!
//! - a queue is a Redis list; a message is one JSON string in it, the
//!   [`Envelope`];
//! - the envelope's `body` is base64 of the JSON array
//!   `[args, kwargs, embed]` ([`Body`]), its `headers` are [`Headers`];
//! - a result is the JSON [`ResultMeta`] under `celery-task-meta-<id>`.
//!
//! Bodies of any content type other than JSON (pickle, yaml, msgpack) are
//! never decoded: [`Envelope::body`] refuses them before touching the
//! payload.

use base64::Engine as _;
use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ErrorKind;

/// The only content type this host decodes.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// kombu's Redis priority steps: a message of priority `p` lives in the list
/// for the largest step `<= p`; consumers pop the lists in this order (on
/// Redis, 0 is the highest priority).
pub const PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];

/// kombu's separator between a queue name and its priority step.
pub const PRIORITY_SEP: &str = "\x06\x16";

/// The prefix of a task's result key (and of the channel its result is
/// published on).
pub const RESULT_KEY_PREFIX: &str = "celery-task-meta-";

/// The queue Celery routes to when a task names none.
pub const DEFAULT_QUEUE: &str = "celery";

/// Why a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The list element is not a JSON envelope (no task id can be known).
    #[error("not a kombu message envelope: {0}")]
    Envelope(String),
    /// A protocol v1 message or one without a `task` header.
    #[error("not a Celery protocol v2 message: {0}")]
    NotV2(String),
    /// The body's content type is not JSON; it was not decoded.
    #[error("refusing to deserialize content of type {0:?} (only application/json is accepted)")]
    ContentDisallowed(String),
    /// The body is not `[args, kwargs, embed]` in JSON.
    #[error("malformed message body: {0}")]
    Body(String),
}

/// The Redis list that holds `queue`'s messages of `priority` (kombu's
/// `_q_for_pri`): `queue` itself for 0-2, `queue\x06\x16{3,6,9}` above.
pub fn queue_key(queue: &str, priority: u8) -> String {
    let step = PRIORITY_STEPS
        .iter()
        .rev()
        .find(|s| **s <= priority.min(9))
        .copied()
        .unwrap_or(0);
    if step == 0 {
        queue.to_string()
    } else {
        format!("{queue}{PRIORITY_SEP}{step}")
    }
}

/// Every list of `queue`, in the order consumers pop them.
pub fn queue_keys(queue: &str) -> Vec<String> {
    PRIORITY_STEPS
        .iter()
        .map(|p| queue_key(queue, *p))
        .collect()
}

/// The result key of task `id`: `celery-task-meta-<id>`.
pub fn result_key(id: &str) -> String {
    format!("{RESULT_KEY_PREFIX}{id}")
}

/// The message as kombu stores it in a Redis list (one JSON string).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The encoded body: base64 (per `properties.body_encoding`) of the
    /// serialized `[args, kwargs, embed]`.
    pub body: String,
    /// The body's character encoding (`content-encoding`); `utf-8` when absent.
    #[serde(rename = "content-encoding", default = "utf8")]
    pub content_encoding: String,
    /// The MIME type of the serialized body (`content-type`); only
    /// [`CONTENT_TYPE_JSON`] is ever decoded.
    #[serde(rename = "content-type", default)]
    pub content_type: String,
    /// The Celery protocol v2 headers.
    pub headers: Headers,
    /// kombu's message properties (delivery tag, priority, body encoding, ...).
    pub properties: Properties,
}

fn utf8() -> String {
    "utf-8".into()
}

/// Celery protocol v2 headers (`celery/app/amqp.py`, `as_task_v2`). Fields
/// this host does not read are kept in `extra` so a message passes through
/// unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Headers {
    /// The producer's language (`py` for Celery's clients).
    #[serde(default = "py")]
    pub lang: String,
    /// The task name; its presence marks protocol v2.
    #[serde(default)]
    pub task: Option<String>,
    /// The task id (also the result key).
    #[serde(default)]
    pub id: Option<String>,
    /// A name to show instead of `task` in logs (Celery's `shadow`); not
    /// used to find the task.
    #[serde(default)]
    pub shadow: Option<String>,
    /// Run no earlier than this (ISO 8601); countdowns arrive as an eta.
    #[serde(default)]
    pub eta: Option<String>,
    /// Revoke (REVOKED, "expired") if not started by then (ISO 8601).
    #[serde(default)]
    pub expires: Option<String>,
    /// The id of the group this task is part of, if any.
    #[serde(default)]
    pub group: Option<String>,
    /// The task's position in its group.
    #[serde(default)]
    pub group_index: Option<i64>,
    /// How many times the task was retried before this delivery (0 the
    /// first time).
    #[serde(default)]
    pub retries: i64,
    /// `[hard, soft]` in seconds, either may be null. (The protocol page
    /// says soft first; Celery's code and workers use hard first.)
    #[serde(default)]
    pub timelimit: TimeLimit,
    /// The id of the first task of the workflow (chain, group, ...) this
    /// task belongs to.
    #[serde(default)]
    pub root_id: Option<String>,
    /// The id of the task that sent this one, if any.
    #[serde(default)]
    pub parent_id: Option<String>,
    /// A printable form of the positional arguments, for logs and monitors.
    #[serde(default)]
    pub argsrepr: Option<String>,
    /// A printable form of the keyword arguments, for logs and monitors.
    #[serde(default)]
    pub kwargsrepr: Option<String>,
    /// Who sent the message (`pid@host`).
    #[serde(default)]
    pub origin: Option<String>,
    /// Store no result (null means the worker's default: store).
    #[serde(default)]
    pub ignore_result: Option<bool>,
    /// How many times the task was replaced (`Task.replace`) on the way here.
    #[serde(default)]
    pub replaced_task_nesting: i64,
    /// The names of the headers set through Celery's stamping API (passed
    /// through as they come).
    #[serde(default)]
    pub stamped_headers: Option<Value>,
    /// The stamps of Celery's stamping API (passed through as they come).
    #[serde(default)]
    pub stamps: Option<Value>,
    /// Set by a restore (kombu's `_do_restore_message`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redelivered: Option<bool>,
    /// Headers this host does not interpret.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn py() -> String {
    "py".into()
}

/// The `timelimit` header: `[hard, soft]` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TimeLimit {
    /// Seconds after which the worker kills the task; `None`: no hard limit.
    pub hard: Option<f64>,
    /// Seconds after which the task is asked to stop; `None`: no soft limit.
    pub soft: Option<f64>,
}

impl Serialize for TimeLimit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.hard, self.soft).serialize(s)
    }
}

impl<'de> Deserialize<'de> for TimeLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `[hard, soft]`, `[hard]`, `[]` or null; anything that is not a
        // positive number counts as unset.
        let v = Option::<Vec<Value>>::deserialize(d)?.unwrap_or_default();
        let at = |i: usize| {
            v.get(i)
                .and_then(Value::as_f64)
                .filter(|x| x.is_finite() && *x > 0.0)
        };
        Ok(TimeLimit {
            hard: at(0),
            soft: at(1),
        })
    }
}

/// kombu's message properties.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Properties {
    /// The task id again (Celery's producers set it to the id); read when
    /// the `id` header is missing.
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// The name of the producer's reply queue (a uuid4 from Celery's clients);
    /// results go to the result backend, not there.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// 2: persistent (kombu's default), 1: transient. Redis keeps both alike.
    #[serde(default = "persistent")]
    pub delivery_mode: u8,
    /// The message's time to live in milliseconds (set with `expires`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    /// Where the producer sent the message.
    #[serde(default)]
    pub delivery_info: DeliveryInfo,
    /// 0-9; on Redis lower lists are popped first.
    #[serde(default)]
    pub priority: Option<i64>,
    /// How `body` is encoded: `base64` (Celery's default); any other value
    /// means the body is the serialized text itself.
    #[serde(default = "base64_name")]
    pub body_encoding: String,
    /// The message's tag in `unacked` / `unacked_index` (a uuid4 set by the
    /// producer's kombu).
    #[serde(default)]
    pub delivery_tag: Option<String>,
    /// Properties this host does not interpret.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn persistent() -> u8 {
    2
}

fn base64_name() -> String {
    "base64".into()
}

/// Where the producer sent the message: with the default (empty) exchange
/// the routing key is the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DeliveryInfo {
    /// The exchange name; empty for the default exchange.
    #[serde(default)]
    pub exchange: String,
    /// The routing key: with the default exchange, the queue's name.
    #[serde(default)]
    pub routing_key: String,
    /// Set by kombu when the message went back to its queue after a
    /// delivery (a restore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redelivered: Option<bool>,
    /// Fields this host does not interpret.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The decoded body `[args, kwargs, embed]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Body {
    /// The positional arguments.
    pub args: Vec<Value>,
    /// The keyword arguments.
    pub kwargs: Map<String, Value>,
    /// The workflow parts: callbacks, errbacks, chain, chord.
    pub embed: Embed,
}

impl Serialize for Body {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.args, &self.kwargs, &self.embed).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (args, kwargs, embed) =
            <(Vec<Value>, Option<Map<String, Value>>, Option<Embed>)>::deserialize(d)?;
        Ok(Body {
            args,
            kwargs: kwargs.unwrap_or_default(),
            embed: embed.unwrap_or_default(),
        })
    }
}

/// The body's third element: what runs after the task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Embed {
    /// `link`: sent with the result prepended to their args on success.
    #[serde(default)]
    pub callbacks: Option<Vec<Signature>>,
    /// `link_error`: sent with the failed task's id prepended on failure.
    #[serde(default)]
    pub errbacks: Option<Vec<Signature>>,
    /// The rest of a chain, last element next.
    #[serde(default)]
    pub chain: Option<Vec<Signature>>,
    /// Chords are not supported (kept so a message round-trips).
    #[serde(default)]
    pub chord: Option<Value>,
}

/// A task signature as Celery serializes it (`celery.canvas.Signature`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Signature {
    /// The task name.
    pub task: String,
    /// Its positional arguments (the parent's result is prepended to them
    /// unless the signature is `immutable`).
    #[serde(default)]
    pub args: Vec<Value>,
    /// Its keyword arguments.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
    /// `task_id`, `queue`, `routing_key`, `priority`, `countdown`, ...
    #[serde(default)]
    pub options: Map<String, Value>,
    /// Celery's type of a composite signature (`chain`, `group`, `chord`,
    /// ...); `None` for a plain task.
    #[serde(default)]
    pub subtask_type: Option<String>,
    /// An immutable signature does not get the parent's result prepended.
    #[serde(default)]
    pub immutable: bool,
    /// Fields this host does not interpret.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Envelope {
    /// Parses one list element. Only a JSON object with `headers` and
    /// `properties` passes; the body is not looked at.
    pub fn parse(raw: &[u8]) -> Result<Envelope, ProtocolError> {
        serde_json::from_slice(raw).map_err(|e| ProtocolError::Envelope(e.to_string()))
    }

    /// The task id, if the headers carry one.
    pub fn task_id(&self) -> Option<&str> {
        self.headers
            .id
            .as_deref()
            .or(self.properties.correlation_id.as_deref())
    }

    /// The task name of a protocol v2 message.
    pub fn task_name(&self) -> Result<&str, ProtocolError> {
        self.headers
            .task
            .as_deref()
            .ok_or_else(|| ProtocolError::NotV2("no `task` header".into()))
    }

    /// Decodes the body. Refuses, without decoding a byte of it, any content
    /// type but JSON.
    pub fn body(&self) -> Result<Body, ProtocolError> {
        let ct = self.content_type.trim();
        if !ct.eq_ignore_ascii_case(CONTENT_TYPE_JSON) {
            return Err(ProtocolError::ContentDisallowed(ct.to_string()));
        }
        let bytes = if self.properties.body_encoding == "base64" {
            base64::engine::general_purpose::STANDARD
                .decode(self.body.as_bytes())
                .map_err(|e| ProtocolError::Body(format!("bad base64: {e}")))?
        } else {
            self.body.clone().into_bytes()
        };
        serde_json::from_slice(&bytes).map_err(|e| ProtocolError::Body(e.to_string()))
    }

    /// The message as one JSON string for a Redis list.
    pub fn to_json(&self) -> String {
        // Serializing plain data into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A new task message, as `app.send_task` builds it (protocol v2, JSON,
/// base64 body). Fill the fields, then [`NewTask::envelope`].
#[derive(Debug, Clone, Default)]
pub struct NewTask {
    /// The task name (`math.square`).
    pub task: String,
    /// The task id; a fresh uuid4 when empty.
    pub id: String,
    /// The positional arguments.
    pub args: Vec<Value>,
    /// The keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Callbacks, errbacks and the rest of a chain.
    pub embed: Embed,
    /// The queue (routing key on the default exchange); `celery` when empty.
    pub queue: String,
    /// 0-9 (larger values count as 9); picks the Redis list
    /// ([`queue_key`]), where 0 is popped first.
    pub priority: u8,
    /// Run no earlier than this (the `eta` header).
    pub eta: Option<DateTime<Utc>>,
    /// Revoke if not started by then (the `expires` header; also the
    /// message's `expiration`, in milliseconds from now).
    pub expires: Option<DateTime<Utc>>,
    /// The `timelimit` header: hard and soft limits in seconds.
    pub timelimit: TimeLimit,
    /// Ask the worker to store no result.
    pub ignore_result: bool,
    /// The `root_id` header; this task's own id when `None`.
    pub root_id: Option<String>,
    /// The `parent_id` header: the task that sends this one.
    pub parent_id: Option<String>,
    /// The `group` header: the id of the group this task is part of.
    pub group: Option<String>,
    /// The `retries` header: how many times this task already ran and was
    /// retried.
    pub retries: i64,
    /// The `origin` header (`pid@host`); this process when empty.
    pub origin: String,
}

impl NewTask {
    /// A task message for `task` with positional `args`.
    pub fn new(task: impl Into<String>, args: Vec<Value>) -> NewTask {
        NewTask {
            task: task.into(),
            args,
            ..NewTask::default()
        }
    }

    /// The queue this message goes to.
    pub fn queue_name(&self) -> &str {
        if self.queue.is_empty() {
            DEFAULT_QUEUE
        } else {
            &self.queue
        }
    }

    /// Builds the envelope (assigning the id first if it is empty) and
    /// returns it with the Redis list to `LPUSH` it onto.
    pub fn envelope(&mut self) -> (Envelope, String) {
        if self.id.is_empty() {
            self.id = new_id();
        }
        let queue = self.queue_name().to_string();
        let body = Body {
            args: self.args.clone(),
            kwargs: self.kwargs.clone(),
            embed: self.embed.clone(),
        };
        let body_json = serde_json::to_vec(&body).unwrap_or_default();
        let origin = if self.origin.is_empty() {
            format!("{}@{}", std::process::id(), hostname())
        } else {
            self.origin.clone()
        };
        let headers = Headers {
            lang: "py".into(),
            task: Some(self.task.clone()),
            id: Some(self.id.clone()),
            shadow: None,
            eta: self.eta.map(iso8601),
            expires: self.expires.map(iso8601),
            group: self.group.clone(),
            group_index: None,
            retries: self.retries,
            timelimit: self.timelimit,
            root_id: Some(self.root_id.clone().unwrap_or_else(|| self.id.clone())),
            parent_id: self.parent_id.clone(),
            argsrepr: Some(serde_json::to_string(&self.args).unwrap_or_default()),
            kwargsrepr: Some(serde_json::to_string(&self.kwargs).unwrap_or_default()),
            origin: Some(origin),
            ignore_result: Some(self.ignore_result),
            replaced_task_nesting: 0,
            stamped_headers: None,
            stamps: Some(Value::Object(Map::new())),
            redelivered: None,
            extra: Map::new(),
        };
        let expiration = self.expires.map(|e| {
            let ms = (e - Utc::now()).num_milliseconds().max(0);
            ms.to_string()
        });
        let properties = Properties {
            correlation_id: Some(self.id.clone()),
            reply_to: Some(new_id()),
            delivery_mode: 2,
            expiration,
            delivery_info: DeliveryInfo {
                exchange: String::new(),
                routing_key: queue.clone(),
                redelivered: None,
                extra: Map::new(),
            },
            priority: Some(self.priority.min(9) as i64),
            body_encoding: "base64".into(),
            delivery_tag: Some(new_id()),
            extra: Map::new(),
        };
        let env = Envelope {
            body: base64::engine::general_purpose::STANDARD.encode(body_json),
            content_encoding: "utf-8".into(),
            content_type: CONTENT_TYPE_JSON.into(),
            headers,
            properties,
        };
        let key = queue_key(&queue, self.priority);
        (env, key)
    }
}

/// A fresh task id / delivery tag (uuid4, hyphenated, as Celery makes them).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Formats a time as Celery does (`datetime.isoformat()` of an aware UTC
/// datetime): `2026-12-01T20:16:03.651012+00:00`.
pub fn iso8601(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// Parses Celery's `eta` / `expires`: ISO 8601 with an offset, or naive
/// (taken as UTC, Celery's default timezone).
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    None
}

/// A task state as stored in a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    /// No such task is known (Celery's answer for an id without a result).
    Pending,
    /// A worker has taken the message and not started it yet.
    Received,
    /// A worker is running the task.
    Started,
    /// The task returned; the result holds its value.
    Success,
    /// The task failed; the result holds an [`ExcInfo`].
    Failure,
    /// The task was revoked (cancelled, expired or terminated); the result
    /// holds an [`ExcInfo`].
    Revoked,
    /// The task failed and will be retried.
    Retry,
}

/// Celery's Redis result value (`celery-task-meta-<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMeta {
    /// The task's state.
    pub status: State,
    /// The return value (SUCCESS) or an [`ExcInfo`] (FAILURE, REVOKED).
    pub result: Value,
    /// The traceback text of a failure (`None` on success).
    #[serde(default)]
    pub traceback: Option<String>,
    /// Celery's results of the tasks this one started; always empty from
    /// this host.
    #[serde(default)]
    pub children: Vec<Value>,
    /// When the task finished (ISO 8601, see [`iso8601`]).
    #[serde(default)]
    pub date_done: Option<String>,
    /// The task id.
    pub task_id: String,
    /// The id of the group the task belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// The id of the task that sent this one, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
}

impl ResultMeta {
    /// A SUCCESS with `value`, done now.
    pub fn success(task_id: &str, value: Value) -> ResultMeta {
        ResultMeta {
            status: State::Success,
            result: value,
            traceback: None,
            children: Vec::new(),
            date_done: Some(iso8601(Utc::now())),
            task_id: task_id.to_string(),
            group_id: None,
            parent_id: None,
        }
    }

    /// A failure (FAILURE or REVOKED, per the exception), done now.
    pub fn failure(task_id: &str, exc: &Exception) -> ResultMeta {
        ResultMeta {
            status: exc.state,
            result: serde_json::to_value(&exc.info).unwrap_or(Value::Null),
            traceback: exc.traceback.clone(),
            children: Vec::new(),
            date_done: Some(iso8601(Utc::now())),
            task_id: task_id.to_string(),
            group_id: None,
            parent_id: None,
        }
    }

    /// The result as the JSON string stored under [`result_key`].
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A serialized exception as Celery's JSON backends store it; the client
/// rebuilds it from `exc_module` / `exc_type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExcInfo {
    /// The exception's class name, e.g. `TimeLimitExceeded`.
    pub exc_type: String,
    /// The exception's arguments (`exc.args`); this host sends one string,
    /// the message.
    pub exc_message: Vec<Value>,
    /// The module the class lives in; with `exc_type` the client rebuilds
    /// the exception.
    pub exc_module: String,
}

/// A failed task as Celery sees it: the state and the exception.
#[derive(Debug, Clone, PartialEq)]
pub struct Exception {
    /// `FAILURE` or `REVOKED`.
    pub state: State,
    /// The exception as the result stores it.
    pub info: ExcInfo,
    /// The result's `traceback` text (`module.Type: message`).
    pub traceback: Option<String>,
}

impl Exception {
    fn new(state: State, module: &str, ty: &str, message: impl Into<String>) -> Exception {
        let message = message.into();
        Exception {
            state,
            info: ExcInfo {
                exc_type: ty.into(),
                exc_message: vec![Value::String(message.clone())],
                exc_module: module.into(),
            },
            traceback: Some(format!("{module}.{ty}: {message}\n")),
        }
    }

    /// The exception for an error kind (the table in `docs/celery.md`).
    pub fn for_kind(kind: ErrorKind, message: &str) -> Exception {
        let (state, module, ty) = exception_table(kind);
        Exception::new(state, module, ty, message)
    }

    /// REVOKED with `TaskRevokedError(reason)`, e.g. `"expired"`.
    pub fn revoked(reason: &str) -> Exception {
        Exception::new(
            State::Revoked,
            "celery.exceptions",
            "TaskRevokedError",
            reason,
        )
    }

    /// FAILURE `kombu.exceptions.ContentDisallowed` for a body of a content
    /// type that is never decoded.
    pub fn content_disallowed(content_type: &str) -> Exception {
        Exception::new(
            State::Failure,
            "kombu.exceptions",
            "ContentDisallowed",
            format!("Refusing to deserialize untrusted content of type {content_type}"),
        )
    }

    /// FAILURE `celery.exceptions.NotRegistered` naming the task.
    pub fn not_registered(task: &str) -> Exception {
        let mut e = Exception::new(State::Failure, "celery.exceptions", "NotRegistered", task);
        e.info.exc_message = vec![Value::String(task.to_string())];
        e
    }
}

/// `(state, exc_module, exc_type)` for each error kind: the contract a
/// Python client catches by type.
pub fn exception_table(kind: ErrorKind) -> (State, &'static str, &'static str) {
    match kind {
        ErrorKind::Panic => (State::Failure, "billiard_host.exceptions", "TaskPanic"),
        ErrorKind::TaskError => (State::Failure, "billiard_host.exceptions", "TaskError"),
        ErrorKind::BadArgs => (State::Failure, "builtins", "TypeError"),
        ErrorKind::UnknownTask => (State::Failure, "celery.exceptions", "NotRegistered"),
        ErrorKind::WorkerLost => (State::Failure, "billiard.exceptions", "WorkerLostError"),
        ErrorKind::SoftTimeLimit => (
            State::Failure,
            "billiard.exceptions",
            "SoftTimeLimitExceeded",
        ),
        ErrorKind::TimeLimit => (State::Failure, "billiard.exceptions", "TimeLimitExceeded"),
        ErrorKind::Terminated => (State::Revoked, "celery.exceptions", "TaskRevokedError"),
        ErrorKind::PluginLoad => (
            State::Failure,
            "billiard_host.exceptions",
            "PluginLoadError",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from Celery 5.7.0 / kombu 5.7.0 (`app.send_task('math.add',
    /// args=[1], kwargs={'b': 2})`, then `RPOP celery`).
    const KWARGS: &str = r#"{"body": "W1sxXSwgeyJiIjogMn0sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjogbnVsbCwgImNob3JkIjogbnVsbH1d", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "math.add", "id": "0c174030-3728-40ab-93b9-f1c38fa4e8bf", "shadow": null, "eta": null, "expires": null, "group": null, "group_index": null, "retries": 0, "timelimit": [null, null], "root_id": "0c174030-3728-40ab-93b9-f1c38fa4e8bf", "parent_id": null, "argsrepr": "[1]", "kwargsrepr": "{'b': 2}", "origin": "gen9482@vm", "ignore_result": null, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}}, "properties": {"correlation_id": "0c174030-3728-40ab-93b9-f1c38fa4e8bf", "reply_to": "1f97ffd4-1aa5-3c67-8870-6adfe81f00f2", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "90e92b2a-714d-4a52-b3ac-46497b92c397"}}"#;

    /// `send_task('math.square', args=[5], expires=60, time_limit=10,
    /// soft_time_limit=5)`.
    const LIMITS: &str = r#"{"body": "W1s1XSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjogbnVsbCwgImNob3JkIjogbnVsbH1d", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "math.square", "id": "52794569-ffc6-42a8-8cf5-37f1bd09672d", "shadow": null, "eta": null, "expires": "2026-12-01T20:16:33.653870+00:00", "group": null, "group_index": null, "retries": 0, "timelimit": [10, 5], "root_id": "52794569-ffc6-42a8-8cf5-37f1bd09672d", "parent_id": null, "argsrepr": "[5]", "kwargsrepr": "{}", "origin": "gen9482@vm", "ignore_result": null, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}}, "properties": {"correlation_id": "52794569-ffc6-42a8-8cf5-37f1bd09672d", "reply_to": "0d6ae99e-8474-3696-b339-829d2732d71a", "delivery_mode": 2, "expiration": "60000", "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "246bb5e4-2a65-4e4f-9e1e-b501caab47ff"}}"#;

    /// A three-step chain `square.s(2) | py.double.s() | square.si(7)` as
    /// its first message: the rest of the chain in reverse order.
    const CHAIN_BODY: &str = r#"[[2], {}, {"callbacks": null, "errbacks": null, "chain": [{"task": "math.square", "args": [7], "kwargs": {}, "options": {"task_id": "a9135476-994c-495f-b3d2-372e136149c9", "reply_to": "0d6ae99e-8474-3696-b339-829d2732d71a"}, "subtask_type": null, "immutable": true}, {"task": "py.double", "args": [], "kwargs": {}, "options": {"task_id": "dff0fcfe-21b4-44ca-bcd2-bbb565197610", "reply_to": "0d6ae99e-8474-3696-b339-829d2732d71a"}, "subtask_type": null, "immutable": false}], "chord": null}]"#;

    /// `link=py.double.s(), link_error=py.err.si()`.
    const LINK_BODY: &str = r#"[[2], {}, {"callbacks": [{"task": "py.double", "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false}], "errbacks": [{"task": "py.err", "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": true}], "chain": null, "chord": null}]"#;

    /// `send_task(..., serializer='pickle')`: the body is a pickle.
    const PICKLE: &str = r#"{"body": "gASVOQAAAAAAAABdlEsCYX2UfZQojAljYWxsYmFja3OUTowIZXJyYmFja3OUTowFY2hhaW6UTowFY2hvcmSUTnWHlC4=", "content-encoding": "binary", "content-type": "application/x-python-serialize", "headers": {"lang": "py", "task": "math.square", "id": "a5a8ca70-a4ec-4c40-9432-0d7cba11554c", "shadow": null, "eta": null, "expires": null, "group": null, "group_index": null, "retries": 0, "timelimit": [null, null], "root_id": "a5a8ca70-a4ec-4c40-9432-0d7cba11554c", "parent_id": null, "argsrepr": "[2]", "kwargsrepr": "{}", "origin": "gen9482@vm", "ignore_result": null, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}}, "properties": {"correlation_id": "a5a8ca70-a4ec-4c40-9432-0d7cba11554c", "reply_to": "0d6ae99e-8474-3696-b339-829d2732d71a", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "abf48b3e-2bfc-47c3-8a4a-bef5293762e9"}}"#;

    #[test]
    fn reads_a_captured_message_with_kwargs() {
        let env = Envelope::parse(KWARGS.as_bytes()).unwrap();
        assert_eq!(env.task_name().unwrap(), "math.add");
        assert_eq!(env.task_id(), Some("0c174030-3728-40ab-93b9-f1c38fa4e8bf"));
        assert_eq!(
            env.properties.delivery_tag.as_deref(),
            Some("90e92b2a-714d-4a52-b3ac-46497b92c397")
        );
        assert_eq!(env.properties.delivery_info.routing_key, "celery");
        assert_eq!(env.headers.timelimit, TimeLimit::default());
        assert_eq!(env.headers.ignore_result, None);
        let body = env.body().unwrap();
        assert_eq!(body.args, vec![Value::from(1)]);
        assert_eq!(body.kwargs.get("b"), Some(&Value::from(2)));
        assert_eq!(body.embed, Embed::default());
    }

    #[test]
    fn timelimit_is_hard_then_soft_and_expires_parses() {
        let env = Envelope::parse(LIMITS.as_bytes()).unwrap();
        assert_eq!(env.headers.timelimit.hard, Some(10.0));
        assert_eq!(env.headers.timelimit.soft, Some(5.0));
        assert_eq!(env.properties.expiration.as_deref(), Some("60000"));
        let exp = parse_time(env.headers.expires.as_deref().unwrap()).unwrap();
        assert_eq!(iso8601(exp), "2026-12-01T20:16:33.653870+00:00");
        assert!(parse_time("2026-12-01T20:16:33.653870").is_some());
        assert!(parse_time("tomorrow").is_none());
    }

    #[test]
    fn chain_and_link_signatures() {
        let body: Body = serde_json::from_str(CHAIN_BODY).unwrap();
        let chain = body.embed.chain.unwrap();
        assert_eq!(chain.len(), 2);
        // The next step is the last element.
        assert_eq!(chain[1].task, "py.double");
        assert!(!chain[1].immutable);
        assert_eq!(
            chain[1].options.get("task_id"),
            Some(&Value::from("dff0fcfe-21b4-44ca-bcd2-bbb565197610"))
        );
        assert!(chain[0].immutable);
        let body: Body = serde_json::from_str(LINK_BODY).unwrap();
        assert_eq!(body.embed.callbacks.unwrap()[0].task, "py.double");
        assert!(body.embed.errbacks.unwrap()[0].immutable);
    }

    #[test]
    fn pickle_is_refused_before_decoding() {
        let env = Envelope::parse(PICKLE.as_bytes()).unwrap();
        assert_eq!(
            env.body(),
            Err(ProtocolError::ContentDisallowed(
                "application/x-python-serialize".into()
            ))
        );
        // Even a body that is not valid base64 gets the same answer: it is
        // never looked at.
        let mut env = env;
        env.body = "!!! not base64 !!!".into();
        env.content_type = "application/x-yaml".into();
        assert!(matches!(
            env.body(),
            Err(ProtocolError::ContentDisallowed(_))
        ));
    }

    #[test]
    fn priority_lists_follow_kombu() {
        assert_eq!(queue_key("celery", 0), "celery");
        assert_eq!(queue_key("celery", 2), "celery");
        assert_eq!(queue_key("celery", 5), "celery\x06\x163");
        assert_eq!(queue_key("celery", 9), "celery\x06\x169");
        assert_eq!(queue_key("celery", 200), "celery\x06\x169");
        assert_eq!(
            queue_keys("q"),
            ["q", "q\x06\x163", "q\x06\x166", "q\x06\x169"]
        );
    }

    #[test]
    fn a_new_task_round_trips_like_a_python_one() {
        let mut t = NewTask::new("math.square", vec![Value::from(3)]);
        t.timelimit = TimeLimit {
            hard: Some(10.0),
            soft: None,
        };
        t.priority = 6;
        let (env, key) = t.envelope();
        assert_eq!(key, "celery\x06\x166");
        let raw = env.to_json();
        let back = Envelope::parse(raw.as_bytes()).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.task_id(), Some(t.id.as_str()));
        assert_eq!(back.body().unwrap().args, vec![Value::from(3)]);
        let v: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(v["headers"]["timelimit"], serde_json::json!([10.0, null]));
        assert_eq!(v["properties"]["delivery_info"]["routing_key"], "celery");
        assert!(v["properties"].get("expiration").is_none());
        // Python's kombu reads the same fields.
        for k in [
            "lang",
            "task",
            "id",
            "eta",
            "expires",
            "retries",
            "root_id",
            "parent_id",
        ] {
            assert!(v["headers"].get(k).is_some(), "header {k}");
        }
    }

    #[test]
    fn unknown_headers_pass_through() {
        let mut v: Value = serde_json::from_str(KWARGS).unwrap();
        v["headers"]["x-custom"] = Value::from("kept");
        let env = Envelope::parse(v.to_string().as_bytes()).unwrap();
        let again: Value = serde_json::from_str(&env.to_json()).unwrap();
        assert_eq!(again["headers"]["x-custom"], "kept");
    }

    #[test]
    fn failure_meta_has_celerys_shape() {
        let meta = ResultMeta::failure(
            "id-1",
            &Exception::for_kind(ErrorKind::WorkerLost, "worker exited with signal 9"),
        );
        let v: Value = serde_json::from_str(&meta.to_json()).unwrap();
        assert_eq!(v["status"], "FAILURE");
        assert_eq!(v["result"]["exc_type"], "WorkerLostError");
        assert_eq!(v["result"]["exc_module"], "billiard.exceptions");
        assert_eq!(
            v["result"]["exc_message"],
            serde_json::json!(["worker exited with signal 9"])
        );
        assert_eq!(v["task_id"], "id-1");
        assert_eq!(v["children"], serde_json::json!([]));
        assert!(v["date_done"].as_str().unwrap().ends_with("+00:00"));
        let revoked = ResultMeta::failure("id-2", &Exception::revoked("expired"));
        assert_eq!(revoked.status, State::Revoked);
        assert_eq!(revoked.result["exc_type"], "TaskRevokedError");
        let ok = ResultMeta::success("id-3", Value::from(9));
        assert_eq!(
            serde_json::from_str::<Value>(&ok.to_json()).unwrap()["status"],
            "SUCCESS"
        );
    }

    #[test]
    fn every_kind_has_an_exception() {
        for k in ErrorKind::ALL {
            let (state, module, ty) = exception_table(k);
            assert!(!module.is_empty() && !ty.is_empty());
            assert_eq!(state == State::Revoked, k == ErrorKind::Terminated);
        }
    }
}
