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

use std::collections::HashMap;

use base64::Engine as _;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::bounds;
use crate::error::{ErrorKind, TaskError};

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
    /// A header (or property, or envelope field) this host honours has a
    /// value it cannot honour: the message is answered with a FAILURE
    /// naming it ([`Exception::invalid`]), never run without it.
    #[error("{place} {name:?}: {value} {why}")]
    Header {
        /// `header`, `property` or `field` (of the envelope).
        place: &'static str,
        /// Its name (`timelimit`, `eta`, ...).
        name: String,
        /// The value as the message carries it (JSON text, shortened).
        value: String,
        /// What is wrong with it.
        why: String,
    },
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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope {
    /// The encoded body: base64 (per `properties.body_encoding`) of the
    /// serialized `[args, kwargs, embed]`.
    pub body: String,
    /// The body's character encoding (`content-encoding`); `utf-8` when absent.
    #[serde(rename = "content-encoding")]
    pub content_encoding: String,
    /// The MIME type of the serialized body (`content-type`); only
    /// [`CONTENT_TYPE_JSON`] is ever decoded.
    #[serde(rename = "content-type")]
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
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Headers {
    /// The producer's language (`py` for Celery's clients).
    pub lang: String,
    /// The task name; its presence marks protocol v2.
    pub task: Option<String>,
    /// The task id (also the result key).
    pub id: Option<String>,
    /// A name to show instead of `task` in logs (Celery's `shadow`); not
    /// used to find the task.
    pub shadow: Option<String>,
    /// Run no earlier than this (ISO 8601); countdowns arrive as an eta.
    pub eta: Option<String>,
    /// Revoke (REVOKED, "expired") if not started by then (ISO 8601).
    pub expires: Option<String>,
    /// The id of the group this task is part of, if any.
    pub group: Option<String>,
    /// The task's position in its group.
    pub group_index: Option<i64>,
    /// How many times the task was retried before this delivery (0 the
    /// first time).
    pub retries: i64,
    /// `[hard, soft]` in seconds, either may be null. (The protocol page
    /// says soft first; Celery's code and workers use hard first.)
    pub timelimit: TimeLimit,
    /// The id of the first task of the workflow (chain, group, ...) this
    /// task belongs to.
    pub root_id: Option<String>,
    /// The id of the task that sent this one, if any.
    pub parent_id: Option<String>,
    /// A printable form of the positional arguments, for logs and monitors.
    pub argsrepr: Option<String>,
    /// A printable form of the keyword arguments, for logs and monitors.
    pub kwargsrepr: Option<String>,
    /// Who sent the message (`pid@host`).
    pub origin: Option<String>,
    /// Store no result (null means the worker's default: store).
    pub ignore_result: Option<bool>,
    /// How many times the task was replaced (`Task.replace`) on the way here.
    pub replaced_task_nesting: i64,
    /// The names of the headers set through Celery's stamping API (passed
    /// through as they come).
    pub stamped_headers: Option<Value>,
    /// The stamps of Celery's stamping API (passed through as they come).
    pub stamps: Option<Value>,
    /// Set by a restore (kombu's `_do_restore_message`).
    #[serde(skip_serializing_if = "Option::is_none")]
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

/// kombu's message properties.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Properties {
    /// The task id again (Celery's producers set it to the id); read when
    /// the `id` header is missing.
    pub correlation_id: Option<String>,
    /// The name of the producer's reply queue (a uuid4 from Celery's clients);
    /// results go to the result backend, not there.
    pub reply_to: Option<String>,
    /// 2: persistent (kombu's default), 1: transient. Redis keeps both alike.
    pub delivery_mode: u8,
    /// The message's time to live in milliseconds (set with `expires`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    /// Where the producer sent the message.
    pub delivery_info: DeliveryInfo,
    /// 0-9; on Redis lower lists are popped first.
    pub priority: Option<i64>,
    /// How `body` is encoded: `base64` (Celery's default); any other value
    /// means the body is the serialized text itself.
    pub body_encoding: String,
    /// The message's tag in `unacked` / `unacked_index` (a uuid4 set by the
    /// producer's kombu).
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
    /// A chord header part's body signature: when set (and the `group`
    /// header names the chord), the part is counted on the result backend
    /// once its result is stored (`celery::chord`).
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

/// One list element as the worker reads it: the task id first, then
/// everything else, leniently where Celery and kombu are lenient and with
/// the first value this host cannot honour named in `refused`.
#[derive(Debug, Clone)]
pub struct Received {
    /// The task id: the `id` header, else `properties.correlation_id`,
    /// else the `id` of a protocol v1 body. `None`: nothing to answer to.
    pub id: Option<String>,
    /// What could be read; a refused value is left at its default.
    pub envelope: Envelope,
    /// The parsed `eta` header (valid and at most [`bounds::MAX_DURATION`]
    /// away), if any.
    pub eta: Option<DateTime<Utc>>,
    /// The parsed `expires` header, if any.
    pub expires: Option<DateTime<Utc>>,
    /// The first header this host cannot honour: the message must be
    /// answered with a FAILURE naming it, not run.
    pub refused: Option<ProtocolError>,
}

/// A JSON value kept as its text: reading it never builds a tree, so a
/// header nested thousands deep costs nothing and cannot hide the id.
type Raw = Box<RawValue>;
type RawMap = HashMap<String, Raw>;

/// Longest value text a refusal quotes.
const SHOW_MAX: usize = 120;

/// The JSON text of `v` for a message, shortened, with the non-finite
/// numbers Python's `json` writes shown as written.
fn show(v: &RawValue) -> String {
    let mut t = v.get().to_string();
    for (marker, token) in NON_FINITE {
        if t.contains(marker) {
            t = t.replace(&format!("\"{marker}\""), token);
        }
    }
    if t.len() > SHOW_MAX {
        let mut cut = SHOW_MAX;
        while !t.is_char_boundary(cut) {
            cut -= 1;
        }
        t.truncate(cut);
        t.push_str("...");
    }
    t
}

/// Python's `json.dumps` writes `NaN`, `Infinity` and `-Infinity` (e.g.
/// `send_task(..., time_limit=float("inf"))`), which JSON has not: they are
/// read as these marker strings so the id stays readable and the header
/// is refused by name.
const NON_FINITE: [(&str, &str); 3] = [
    ("\\u0000-Infinity", "-Infinity"),
    ("\\u0000Infinity", "Infinity"),
    ("\\u0000NaN", "NaN"),
];

/// `raw` with every `NaN`, `Infinity` and `-Infinity` outside strings
/// replaced by its marker string; `None` when there is none.
fn mark_non_finite(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len() + 16);
    let (mut in_str, mut esc, mut found) = (false, false, false);
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if in_str {
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'"' {
                in_str = false;
            }
        } else if b == b'"' {
            in_str = true;
        } else {
            let rest = &raw[i..];
            let hit = [
                (&b"-Infinity"[..], &br#""\u0000-Infinity""#[..]),
                (&b"Infinity"[..], &br#""\u0000Infinity""#[..]),
                (&b"NaN"[..], &br#""\u0000NaN""#[..]),
            ]
            .into_iter()
            .find(|(token, _)| rest.starts_with(token));
            if let Some((token, marker)) = hit {
                out.extend_from_slice(marker);
                i += token.len();
                found = true;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    found.then_some(out)
}

fn is_null(v: &RawValue) -> bool {
    v.get() == "null"
}

fn string_of(v: &RawValue) -> Option<String> {
    serde_json::from_str(v.get()).ok()
}

fn int_of(v: &RawValue) -> Option<i64> {
    serde_json::from_str(v.get()).ok()
}

fn map_of(v: &RawValue) -> Option<RawMap> {
    serde_json::from_str(v.get()).ok()
}

/// A JSON value as a tree, or `None` when it is nested deeper than
/// serde_json builds trees (128 levels).
fn value_of(v: &RawValue) -> Option<Value> {
    serde_json::from_str(v.get()).ok()
}

/// kombu's reading of a message's priority (`_get_message_priority`:
/// Python's `int()` of it, clamped to 0-9; what `int()` refuses is 0).
pub fn kombu_priority(v: &Value) -> u8 {
    let p = match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|x| x.is_finite())
                .map(|x| x.trunc() as i64)
        }),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        Value::Bool(b) => Some(i64::from(*b)),
        _ => None,
    };
    p.unwrap_or(0).clamp(0, 9) as u8
}

/// Reads the `timelimit` header as Celery's worker uses it: null or `[]`
/// (no limits), `[hard]` or `[hard, soft]`, each a number of seconds or
/// null; 0 means "not set" (Celery's `time_limit or default`). Anything
/// else, a negative number or one beyond [`bounds::MAX_DURATION`] is the
/// reason it is refused.
fn read_timelimit(v: &RawValue) -> Result<TimeLimit, String> {
    if is_null(v) {
        return Ok(TimeLimit::default());
    }
    let Ok(items) = serde_json::from_str::<Vec<Raw>>(v.get()) else {
        return Err("is not a list [hard, soft] of numbers of seconds or nulls".into());
    };
    if items.len() > 2 {
        return Err("has more than two elements (it is [hard, soft])".into());
    }
    let mut secs = [None, None];
    for (slot, item) in secs.iter_mut().zip(&items) {
        if is_null(item) {
            continue;
        }
        let Ok(x) = serde_json::from_str::<f64>(item.get()) else {
            return Err(format!(
                "holds {} which is not a number or null",
                show(item)
            ));
        };
        if x < 0.0 {
            return Err(format!("holds {} which is negative", show(item)));
        }
        if x > bounds::MAX_DURATION.as_secs_f64() {
            return Err(format!(
                "holds {} which is longer than the longest accepted duration ({})",
                show(item),
                bounds::MAX_DURATION_TEXT
            ));
        }
        *slot = (x > 0.0).then_some(x);
    }
    Ok(TimeLimit {
        hard: secs[0],
        soft: secs[1],
    })
}

/// Collects what a message holds and the first value it cannot honour.
struct Reading {
    refused: Option<ProtocolError>,
}

impl Reading {
    fn refuse(&mut self, place: &'static str, name: &str, v: &RawValue, why: impl Into<String>) {
        if self.refused.is_none() {
            self.refused = Some(ProtocolError::Header {
                place,
                name: name.to_string(),
                value: show(v),
                why: why.into(),
            });
        }
    }

    /// An optional string header: null is `None`, anything but a string
    /// is refused.
    fn opt_string(&mut self, m: &RawMap, name: &str) -> Option<String> {
        let v = m.get(name).filter(|v| !is_null(v))?;
        let s = string_of(v);
        if s.is_none() {
            self.refuse("header", name, v, "is not a string or null");
        }
        s
    }

    /// `eta` / `expires`: null or "" is none; a string Celery's
    /// `maybe_iso8601` reads is a time; anything else is refused (Celery
    /// raises `InvalidTaskError` for it).
    fn time(&mut self, m: &RawMap, name: &str) -> (Option<String>, Option<DateTime<Utc>>) {
        let Some(v) = m.get(name).filter(|v| !is_null(v)) else {
            return (None, None);
        };
        match string_of(v) {
            Some(s) if s.is_empty() => (None, None),
            Some(s) => match parse_time(&s) {
                Some(t) => (Some(s), Some(t)),
                None => {
                    self.refuse("header", name, v, "is not an ISO 8601 date and time");
                    (None, None)
                }
            },
            None => {
                self.refuse(
                    "header",
                    name,
                    v,
                    "is not an ISO 8601 date and time string or null",
                );
                (None, None)
            }
        }
    }
}

impl Envelope {
    /// Reads one list element: the task id first (it is all a refusal
    /// needs), then every field, tolerating what Celery's worker and kombu
    /// tolerate (`retries: null`, `priority: "5"`, `lang: null`, odd
    /// `stamps` at any depth, ...). `Err` only when no task id can be read
    /// at all: the element is not a JSON object, or carries no id.
    pub fn read(raw: &[u8]) -> Result<Received, ProtocolError> {
        let top: RawMap = match serde_json::from_slice(raw) {
            Ok(m) => m,
            Err(e) => match mark_non_finite(raw) {
                Some(marked) => serde_json::from_slice(&marked)
                    .map_err(|_| ProtocolError::Envelope(e.to_string()))?,
                None => return Err(ProtocolError::Envelope(e.to_string())),
            },
        };
        let mut r = Reading { refused: None };
        let part = |r: &mut Reading, name: &str| -> RawMap {
            match top.get(name).filter(|v| !is_null(v)) {
                None => RawMap::new(),
                Some(v) => map_of(v).unwrap_or_else(|| {
                    r.refuse("field", name, v, "is not an object");
                    RawMap::new()
                }),
            }
        };
        let h = part(&mut r, "headers");
        let p = part(&mut r, "properties");

        // The id, first.
        let header_id = h
            .get("id")
            .and_then(|v| string_of(v))
            .filter(|s| !s.is_empty());
        let correlation_id = p
            .get("correlation_id")
            .and_then(|v| string_of(v))
            .filter(|s| !s.is_empty());
        let id = header_id
            .clone()
            .or_else(|| correlation_id.clone())
            .or_else(|| v1_id(&top, &p));
        if header_id.is_none() {
            if let Some(v) = h.get("id").filter(|v| !is_null(v)) {
                r.refuse("header", "id", v, "is not a string");
            }
        }

        // Properties: kombu reads only the priority and the body encoding
        // here, and tolerates any priority.
        let body_encoding = match p.get("body_encoding").filter(|v| !is_null(v)) {
            None => base64_name(),
            Some(v) => string_of(v).unwrap_or_else(|| {
                r.refuse("property", "body_encoding", v, "is not a string");
                base64_name()
            }),
        };
        let known_props = [
            "correlation_id",
            "reply_to",
            "delivery_mode",
            "expiration",
            "delivery_info",
            "priority",
            "body_encoding",
            "delivery_tag",
        ];
        let properties = Properties {
            correlation_id,
            reply_to: p.get("reply_to").and_then(|v| string_of(v)),
            delivery_mode: p
                .get("delivery_mode")
                .and_then(|v| int_of(v))
                .and_then(|m| u8::try_from(m).ok())
                .unwrap_or_else(persistent),
            expiration: p.get("expiration").and_then(|v| string_of(v)),
            delivery_info: p
                .get("delivery_info")
                .and_then(|v| serde_json::from_str(v.get()).ok())
                .unwrap_or_default(),
            priority: p
                .get("priority")
                .map(|v| i64::from(kombu_priority(&value_of(v).unwrap_or(Value::Null)))),
            body_encoding,
            delivery_tag: p.get("delivery_tag").and_then(|v| string_of(v)),
            extra: extra_of(&p, &known_props),
        };

        // Headers. What this host honours is checked; what it only
        // carries (retries, lang, group_index, stamps, ...) is kept when it
        // has the expected shape and otherwise left out, as Celery's
        // worker carries any value through without looking at it.
        let task = h.get("task").filter(|v| !is_null(v)).map(|v| {
            // Celery looks any value up in its registry: a name that is
            // not a string is simply not registered.
            string_of(v).unwrap_or_else(|| v.get().to_string())
        });
        let (eta_text, eta) = r.time(&h, "eta");
        let eta = match (eta, h.get("eta")) {
            (Some(t), Some(v)) if beyond_bound(t) => {
                r.refuse(
                    "header",
                    "eta",
                    v,
                    format!(
                        "is more than the longest accepted delay ({}) from now",
                        bounds::MAX_DURATION_TEXT
                    ),
                );
                None
            }
            (t, _) => t,
        };
        let (expires_text, expires) = r.time(&h, "expires");
        let timelimit = match h.get("timelimit") {
            None => TimeLimit::default(),
            Some(v) => read_timelimit(v).unwrap_or_else(|why| {
                r.refuse("header", "timelimit", v, why);
                TimeLimit::default()
            }),
        };
        let ignore_result = match h.get("ignore_result").filter(|v| !is_null(v)) {
            None => None,
            Some(v) => match serde_json::from_str::<bool>(v.get()) {
                Ok(b) => Some(b),
                Err(_) => {
                    r.refuse("header", "ignore_result", v, "is not true, false or null");
                    None
                }
            },
        };
        let known_headers = [
            "lang",
            "task",
            "id",
            "shadow",
            "eta",
            "expires",
            "group",
            "group_index",
            "retries",
            "timelimit",
            "root_id",
            "parent_id",
            "argsrepr",
            "kwargsrepr",
            "origin",
            "ignore_result",
            "replaced_task_nesting",
            "stamped_headers",
            "stamps",
            "redelivered",
        ];
        let headers = Headers {
            lang: h.get("lang").and_then(|v| string_of(v)).unwrap_or_else(py),
            task,
            id: header_id,
            shadow: h.get("shadow").and_then(|v| string_of(v)),
            eta: eta.and(eta_text),
            expires: expires_text,
            group: r.opt_string(&h, "group"),
            group_index: h.get("group_index").and_then(|v| int_of(v)),
            retries: h.get("retries").and_then(|v| int_of(v)).unwrap_or(0),
            timelimit,
            root_id: r.opt_string(&h, "root_id"),
            parent_id: r.opt_string(&h, "parent_id"),
            argsrepr: h.get("argsrepr").and_then(|v| string_of(v)),
            kwargsrepr: h.get("kwargsrepr").and_then(|v| string_of(v)),
            origin: h.get("origin").and_then(|v| string_of(v)),
            ignore_result,
            replaced_task_nesting: h
                .get("replaced_task_nesting")
                .and_then(|v| int_of(v))
                .unwrap_or(0),
            stamped_headers: h
                .get("stamped_headers")
                .filter(|v| !is_null(v))
                .and_then(|v| value_of(v)),
            stamps: h
                .get("stamps")
                .filter(|v| !is_null(v))
                .and_then(|v| value_of(v)),
            redelivered: h
                .get("redelivered")
                .and_then(|v| serde_json::from_str(v.get()).ok()),
            extra: extra_of(&h, &known_headers),
        };

        // The envelope's own fields.
        let body = match top.get("body") {
            None => String::new(),
            Some(v) => string_of(v).unwrap_or_else(|| {
                r.refuse("field", "body", v, "is not a string");
                String::new()
            }),
        };
        let content_type = match top.get("content-type").filter(|v| !is_null(v)) {
            None => String::new(),
            // Not a string: never decoded (ContentDisallowed names it).
            Some(v) => string_of(v).unwrap_or_else(|| v.get().to_string()),
        };
        let content_encoding = top
            .get("content-encoding")
            .and_then(|v| string_of(v))
            .unwrap_or_else(utf8);
        Ok(Received {
            id,
            envelope: Envelope {
                body,
                content_encoding,
                content_type,
                headers,
                properties,
            },
            eta,
            expires,
            refused: r.refused,
        })
    }

    /// Parses one list element: [`Envelope::read`], with a refused value
    /// an error.
    pub fn parse(raw: &[u8]) -> Result<Envelope, ProtocolError> {
        let r = Envelope::read(raw)?;
        match r.refused {
            Some(e) => Err(e),
            None => Ok(r.envelope),
        }
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

/// The fields of `m` not in `known`, as trees (a value too deep to be one
/// is left out: this host never re-sends a received envelope, a restore
/// pushes the stored original).
fn extra_of(m: &RawMap, known: &[&str]) -> Map<String, Value> {
    let mut keys: Vec<&String> = m.keys().filter(|k| !known.contains(&k.as_str())).collect();
    keys.sort();
    keys.into_iter()
        .filter_map(|k| Some((k.clone(), value_of(&m[k])?)))
        .collect()
}

/// True when `t` is further away than [`bounds::MAX_DURATION`].
fn beyond_bound(t: DateTime<Utc>) -> bool {
    let Ok(max) = chrono::Duration::from_std(bounds::MAX_DURATION) else {
        return true;
    };
    Utc::now()
        .checked_add_signed(max)
        .is_none_or(|limit| t > limit)
}

/// The `id` of a protocol v1 message (the task's fields are in its JSON
/// body), so even a message this host does not run gets its answer.
fn v1_id(top: &RawMap, props: &RawMap) -> Option<String> {
    let ct = top.get("content-type").and_then(|v| string_of(v))?;
    if !ct.trim().eq_ignore_ascii_case(CONTENT_TYPE_JSON) {
        return None;
    }
    let body = top.get("body").and_then(|v| string_of(v))?;
    let encoding = props
        .get("body_encoding")
        .and_then(|v| string_of(v))
        .unwrap_or_else(base64_name);
    let bytes = if encoding == "base64" {
        base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .ok()?
    } else {
        body.into_bytes()
    };
    let fields: RawMap = serde_json::from_slice(&bytes).ok()?;
    fields
        .get("id")
        .and_then(|v| string_of(v))
        .filter(|s| !s.is_empty())
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
            let ms = e
                .signed_duration_since(Utc::now())
                .num_milliseconds()
                .max(0);
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

/// Parses Celery's `eta` / `expires` as its worker does (`maybe_iso8601`,
/// dateutil's `isoparse`): a date `YYYY`, `YYYY-MM`, `YYYY-MM-DD` or
/// `YYYYMMDD`; optionally any one separator character and a time `HH`,
/// `HH:MM`, `HHMM`, `HH:MM:SS` or `HHMMSS` with a fraction (`.` or `,`,
/// microseconds kept), `24:00` for the next midnight; optionally `Z` or an
/// offset `±HH`, `±HHMM`, `±HH:MM`. Without an offset the time is UTC
/// (Celery's default). Week dates and anything else: `None`.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    let digits = |at: usize, n: usize| -> Option<u32> {
        let d = b.get(at..at + n)?;
        if !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(d).ok()?.parse().ok()
    };
    // The date.
    let year = digits(0, 4)?;
    let mut pos = 4;
    let (month, day) = if b.get(pos) == Some(&b'-') {
        let m = digits(pos + 1, 2)?;
        pos += 3;
        if b.get(pos) == Some(&b'-') {
            let d = digits(pos + 1, 2)?;
            pos += 3;
            (m, d)
        } else {
            (m, 1)
        }
    } else if pos < b.len() && b[pos].is_ascii_digit() {
        let m = digits(pos, 2)?;
        let d = digits(pos + 2, 2)?;
        pos += 4;
        (m, d)
    } else {
        (1, 1)
    };
    if year == 0 {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    if pos == b.len() {
        return Some(date.and_time(NaiveTime::MIN).and_utc());
    }
    // One separator character (any, as dateutil), then the time.
    let sep = s.get(pos..)?.chars().next()?;
    pos += sep.len_utf8();
    let (mut hms, mut micros) = ([0u32; 3], 0u32);
    let mut colon = None;
    for (i, slot) in hms.iter_mut().enumerate() {
        if i > 0 {
            match b.get(pos) {
                Some(b':') if colon != Some(false) => {
                    colon = Some(true);
                    pos += 1;
                }
                Some(c) if c.is_ascii_digit() && colon != Some(true) => colon = Some(false),
                _ => break,
            }
        }
        *slot = digits(pos, 2)?;
        pos += 2;
        if i == 2 && matches!(b.get(pos), Some(b'.' | b',')) {
            let start = pos + 1;
            let mut end = start;
            while end < b.len() && b[end].is_ascii_digit() {
                end += 1;
            }
            if end == start {
                return None;
            }
            let kept = &s[start..end.min(start + 6)];
            micros = kept.parse::<u32>().ok()? * 10u32.pow(6 - kept.len() as u32);
            pos = end;
        }
    }
    // The offset.
    let offset = match b.get(pos) {
        None => 0,
        Some(b'Z' | b'z') if pos + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) => {
            let rest = &b[pos + 1..];
            let (oh, om) = match rest.len() {
                2 => (digits(pos + 1, 2)?, 0),
                4 => (digits(pos + 1, 2)?, digits(pos + 3, 2)?),
                5 if rest[2] == b':' => (digits(pos + 1, 2)?, digits(pos + 4, 2)?),
                _ => return None,
            };
            if oh > 23 || om > 59 {
                return None;
            }
            let secs = i32::try_from(oh * 3600 + om * 60).ok()?;
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };
    let [h, m, sec] = hms;
    let local = if h == 24 {
        if m != 0 || sec != 0 || micros != 0 {
            return None;
        }
        date.succ_opt()?.and_time(NaiveTime::MIN)
    } else {
        date.and_time(NaiveTime::from_hms_micro_opt(h, m, sec, micros)?)
    };
    let tz = FixedOffset::east_opt(offset)?;
    Some(local.and_local_timezone(tz).single()?.with_timezone(&Utc))
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
    /// the message (`NotRegistered`: the name, and a "did you mean" second).
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

    /// The exception for a task's error: the class the task raised it as
    /// ([`TaskError::exception_class`], e.g. a plugin's
    /// `Failure::new(..).raise_as("ValueError")`), stored as a Python
    /// worker stores it (`prepare_exception`: `exc_type` the class name,
    /// `exc_module` its module, `builtins` for built-ins, `exc_message`
    /// the args), so `except ValueError:` matches on the client; without
    /// one, the kind's class ([`Exception::for_kind`]).
    pub fn for_error(e: &TaskError) -> Exception {
        let Some(class) = e.exception_class() else {
            return Exception::for_kind(e.kind, &e.message);
        };
        let mut exc = Exception::new(
            State::Failure,
            &class.module,
            &class.name,
            e.message.as_str(),
        );
        // As Python's traceback names it: `ValueError: ...` for a built-in.
        exc.traceback = Some(format!("{class}: {}\n", e.message));
        exc
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

    /// FAILURE `celery.exceptions.ChordError(message)`: what Celery stores
    /// on a chord's body when a header part failed (`Dependency <id>
    /// raised ...`) or the body could not be sent (issue 23 item 1).
    pub fn chord_error(message: &str) -> Exception {
        Exception::new(State::Failure, "celery.exceptions", "ChordError", message)
    }

    /// FAILURE `celery.exceptions.ImproperlyConfigured(message)`: a
    /// message this host refuses because the fleet's configuration sent
    /// it here (`celery.chord_unlock`, issue 23 item 6).
    pub fn improperly_configured(message: &str) -> Exception {
        Exception::new(
            State::Failure,
            "celery.exceptions",
            "ImproperlyConfigured",
            message,
        )
    }

    /// FAILURE `celery.exceptions.InvalidTaskError` (Celery's own
    /// exception for a message it cannot run, e.g. an unreadable `eta`):
    /// a header this host cannot honour, named with its value
    /// (`header "timelimit": "10" is not a list ...`).
    pub fn invalid(message: &str) -> Exception {
        Exception::new(
            State::Failure,
            "celery.exceptions",
            "InvalidTaskError",
            message,
        )
    }

    /// FAILURE `celery.exceptions.NotRegistered` naming the task, as
    /// Celery's worker stores it (`exc.args[0]` is the name); with the
    /// closest registered name a second argument says `did you mean
    /// `math.square`?` (the traceback line too).
    pub fn not_registered(task: &str, closest: Option<&str>) -> Exception {
        let hint = closest.map(|c| format!("did you mean `{c}`?"));
        let text = match &hint {
            Some(h) => format!("{task}: {h}"),
            None => task.to_string(),
        };
        let mut e = Exception::new(State::Failure, "celery.exceptions", "NotRegistered", text);
        e.info.exc_message = std::iter::once(task.to_string())
            .chain(hint)
            .map(Value::String)
            .collect();
        e
    }
}

/// `(state, exc_module, exc_type)` for each error kind: the contract a
/// Python client catches by type. The classes only this host names live in
/// `billiard_host.exceptions` (the Python package in `python/`): a client
/// that imports it gets these very classes from `.get()`; one that does not
/// gets a class Celery synthesizes from the name, so no name here may be a
/// real Celery class's (`TaskError` was: `except celery.exceptions.TaskError`
/// looked right and never matched; issue 28).
pub fn exception_table(kind: ErrorKind) -> (State, &'static str, &'static str) {
    match kind {
        ErrorKind::Panic => (State::Failure, "billiard_host.exceptions", "TaskPanic"),
        ErrorKind::TaskError => (State::Failure, "billiard_host.exceptions", "PluginError"),
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

    /// KWARGS with `headers[k] = v` (or `properties[k]` / the envelope's
    /// own field for `place`), as raw JSON text.
    fn with(place: &str, k: &str, v: &str) -> String {
        let mut m: Value = serde_json::from_str(KWARGS).unwrap();
        let marker = "\u{1}MARK\u{1}";
        match place {
            "headers" | "properties" => m[place][k] = Value::from(marker),
            _ => m[k] = Value::from(marker),
        }
        m.to_string().replace(&Value::from(marker).to_string(), v)
    }

    const ID: &str = "0c174030-3728-40ab-93b9-f1c38fa4e8bf";

    #[test]
    fn c4_tolerates_what_celery_and_kombu_tolerate() {
        for (place, k, v) in [
            ("headers", "retries", "null"),
            ("headers", "retries", "\"0\""),
            ("headers", "retries", "3.5"),
            ("headers", "lang", "null"),
            ("headers", "lang", "5"),
            ("headers", "group_index", "\"1\""),
            ("headers", "shadow", "[]"),
            ("headers", "origin", "5"),
            ("headers", "argsrepr", "{}"),
            ("headers", "replaced_task_nesting", "\"x\""),
            ("headers", "stamped_headers", "5"),
            ("headers", "stamps", "5"),
            ("headers", "redelivered", "\"x\""),
            ("headers", "eta", "\"\""),
            ("headers", "timelimit", "[]"),
            ("headers", "timelimit", "null"),
            ("headers", "timelimit", "[0, 0]"),
            ("headers", "ignore_result", "null"),
            ("properties", "priority", "3.5"),
            ("properties", "priority", "\"5\""),
            ("properties", "priority", "200"),
            ("properties", "priority", "-5"),
            ("properties", "priority", "null"),
            ("properties", "priority", "\"x\""),
            ("properties", "delivery_mode", "300"),
            ("properties", "delivery_mode", "\"x\""),
            ("properties", "delivery_mode", "null"),
            ("properties", "delivery_info", "null"),
            ("properties", "reply_to", "5"),
            ("properties", "expiration", "60"),
            ("field", "content-encoding", "null"),
        ] {
            let raw = with(place, k, v);
            let r = Envelope::read(raw.as_bytes()).unwrap();
            assert_eq!(r.id.as_deref(), Some(ID), "{place}.{k}: {v}");
            assert!(r.refused.is_none(), "{place}.{k}: {v}: {:?}", r.refused);
            assert_eq!(r.envelope.body().unwrap().args, vec![Value::from(1)]);
        }
        // kombu's int() of the priority, clamped to 0-9.
        let pri = |v: &str| {
            Envelope::parse(with("properties", "priority", v).as_bytes())
                .unwrap()
                .properties
                .priority
        };
        assert_eq!(pri("3.5"), Some(3));
        assert_eq!(pri("\" 5 \""), Some(5));
        assert_eq!(pri("200"), Some(9));
        assert_eq!(pri("-5"), Some(0));
        assert_eq!(pri("\"x\""), Some(0));
        // `[hard]` alone, and 0 as "not set".
        let tl = |v: &str| {
            Envelope::parse(with("headers", "timelimit", v).as_bytes())
                .unwrap()
                .headers
                .timelimit
        };
        assert_eq!(tl("[10]").hard, Some(10.0));
        assert_eq!(
            tl("[0, 2.5]"),
            TimeLimit {
                hard: None,
                soft: Some(2.5)
            }
        );
    }

    #[test]
    fn c4_refused_headers_are_named_with_their_value() {
        for (place, k, v, says) in [
            (
                "headers",
                "timelimit",
                "\"10\"",
                r#"header "timelimit": "10" is not a list"#,
            ),
            (
                "headers",
                "timelimit",
                "10",
                r#"header "timelimit": 10 is not a list"#,
            ),
            (
                "headers",
                "timelimit",
                "{}",
                r#"header "timelimit": {} is not a list"#,
            ),
            (
                "headers",
                "timelimit",
                "[\"1\",\"0.5\"]",
                r#"holds "1" which is not a number"#,
            ),
            (
                "headers",
                "timelimit",
                "[true,null]",
                "holds true which is not a number",
            ),
            ("headers", "timelimit", "[1,2,3]", "more than two elements"),
            (
                "headers",
                "timelimit",
                "[-1,null]",
                "holds -1 which is negative",
            ),
            (
                "headers",
                "ignore_result",
                "\"yes\"",
                r#"header "ignore_result": "yes" is not true, false or null"#,
            ),
            (
                "headers",
                "ignore_result",
                "1",
                r#"header "ignore_result": 1 is not"#,
            ),
            (
                "headers",
                "eta",
                "12345",
                r#"header "eta": 12345 is not an ISO 8601"#,
            ),
            (
                "headers",
                "eta",
                "\"tomorrow\"",
                r#"header "eta": "tomorrow" is not an ISO 8601"#,
            ),
            (
                "headers",
                "eta",
                "\"+12027-02-19T00:00:00+00:00\"",
                r#"header "eta": "+12027"#,
            ),
            (
                "headers",
                "eta",
                "\"9999-12-31T23:59:59+00:00\"",
                "more than the longest accepted delay (10 years)",
            ),
            (
                "headers",
                "expires",
                "\"never\"",
                r#"header "expires": "never" is not an ISO 8601"#,
            ),
            (
                "headers",
                "expires",
                "60",
                r#"header "expires": 60 is not an ISO 8601"#,
            ),
            (
                "headers",
                "group",
                "5",
                r#"header "group": 5 is not a string"#,
            ),
            (
                "headers",
                "root_id",
                "[]",
                r#"header "root_id": [] is not a string"#,
            ),
            (
                "headers",
                "parent_id",
                "{}",
                r#"header "parent_id": {} is not a string"#,
            ),
            ("headers", "id", "5", r#"header "id": 5 is not a string"#),
            (
                "properties",
                "body_encoding",
                "5",
                r#"property "body_encoding": 5 is not a string"#,
            ),
            (
                "field",
                "body",
                "[1]",
                r#"field "body": [1] is not a string"#,
            ),
        ] {
            let raw = with(place, k, v);
            let r = Envelope::read(raw.as_bytes()).unwrap();
            assert_eq!(r.id.as_deref(), Some(ID), "{place}.{k}: {v}");
            let e = r
                .refused
                .unwrap_or_else(|| panic!("{place}.{k}: {v} was accepted"));
            let text = e.to_string();
            assert!(text.contains(says), "{place}.{k}: {v}: {text}");
            assert!(Envelope::parse(raw.as_bytes()).is_err());
        }
    }

    #[test]
    fn c1_timelimits_beyond_the_bound_are_refused() {
        for v in [
            "[1e19, null]",
            "[null, 1e19]",
            "[315360001, null]",
            "[1e308, 1e308]",
        ] {
            let r = Envelope::read(with("headers", "timelimit", v).as_bytes()).unwrap();
            let text = r.refused.map(|e| e.to_string()).unwrap_or_default();
            assert!(text.contains(r#"header "timelimit""#), "{v}: {text}");
            assert!(
                text.contains("longest accepted duration (10 years)"),
                "{v}: {text}"
            );
        }
        // The bound itself is accepted.
        let r = Envelope::read(with("headers", "timelimit", "[315360000, 1]").as_bytes()).unwrap();
        assert!(r.refused.is_none(), "{:?}", r.refused);
    }

    #[test]
    fn c4_python_non_finite_numbers_keep_the_id_and_are_named() {
        // json.dumps(float("inf")) and float("nan"), as Python writes them.
        for (v, shown) in [
            ("[Infinity, null]", "Infinity"),
            ("[null, NaN]", "NaN"),
            ("[-Infinity, null]", "-Infinity"),
        ] {
            let raw = with("headers", "timelimit", v);
            let r = Envelope::read(raw.as_bytes()).unwrap();
            assert_eq!(r.id.as_deref(), Some(ID));
            let text = r.refused.unwrap().to_string();
            assert!(
                text.contains(&format!("holds {shown} which")),
                "{v}: {text}"
            );
        }
        // Inside a string the same letters are text.
        let raw = with("headers", "x-note", "\"NaN and Infinity\"");
        let env = Envelope::parse(raw.as_bytes()).unwrap();
        assert_eq!(env.headers.extra["x-note"], "NaN and Infinity");
    }

    #[test]
    fn c4_a_deep_header_does_not_hide_the_id() {
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        for k in ["stamps", "x-custom", "stamped_headers", "retries"] {
            let raw = with("headers", k, &deep);
            let r = Envelope::read(raw.as_bytes()).unwrap();
            assert_eq!(r.id.as_deref(), Some(ID), "{k}");
            assert!(r.refused.is_none(), "{k}: {:?}", r.refused);
            assert_eq!(r.envelope.task_name().unwrap(), "math.add");
        }
        // A deep value in a header this host honours is refused by name.
        let r = Envelope::read(with("headers", "timelimit", &deep).as_bytes()).unwrap();
        assert!(r
            .refused
            .unwrap()
            .to_string()
            .contains(r#"header "timelimit": [[[["#));
    }

    #[test]
    fn c4_the_id_comes_from_the_header_the_correlation_id_or_a_v1_body() {
        let mut m: Value = serde_json::from_str(KWARGS).unwrap();
        m["headers"].as_object_mut().unwrap().remove("id");
        let r = Envelope::read(m.to_string().as_bytes()).unwrap();
        assert_eq!(r.id.as_deref(), Some(ID));
        m["properties"]
            .as_object_mut()
            .unwrap()
            .remove("correlation_id");
        assert_eq!(Envelope::read(m.to_string().as_bytes()).unwrap().id, None);
        // Protocol v1: the task's fields in the body, no headers.
        let body = base64::engine::general_purpose::STANDARD
            .encode(br#"{"task": "math.square", "id": "v1-id", "args": [3], "kwargs": {}}"#);
        let v1 = serde_json::json!({"body": body, "content-type": "application/json",
            "content-encoding": "utf-8", "headers": {}, "properties": {"body_encoding": "base64"}});
        let r = Envelope::read(v1.to_string().as_bytes()).unwrap();
        assert_eq!(r.id.as_deref(), Some("v1-id"));
        assert!(matches!(
            r.envelope.task_name(),
            Err(ProtocolError::NotV2(_))
        ));
        // No id anywhere, or not a JSON object: nothing to answer to.
        for raw in ["garbage", "[1, 2, 3]", "{}", r#"{"headers": 5}"#] {
            match Envelope::read(raw.as_bytes()) {
                Err(_) => {}
                Ok(r) => assert_eq!(r.id, None, "{raw}"),
            }
        }
    }

    #[test]
    fn c4_times_parse_as_celerys_isoparse() {
        let t = |s: &str| parse_time(s).map(iso8601);
        assert_eq!(
            t("2026-12-01T20:16:33.653870+00:00").as_deref(),
            Some("2026-12-01T20:16:33.653870+00:00")
        );
        assert_eq!(
            t("2026-12-01T20:16:33Z").as_deref(),
            Some("2026-12-01T20:16:33.000000+00:00")
        );
        assert_eq!(
            t("2026-12-01 20:16:33").as_deref(),
            Some("2026-12-01T20:16:33.000000+00:00")
        );
        assert_eq!(
            t("2026-12-01").as_deref(),
            Some("2026-12-01T00:00:00.000000+00:00")
        );
        assert_eq!(
            t("20261201T2016").as_deref(),
            Some("2026-12-01T20:16:00.000000+00:00")
        );
        assert_eq!(
            t("2026-12-01T20:16:33,5+02:00").as_deref(),
            Some("2026-12-01T18:16:33.500000+00:00")
        );
        assert_eq!(
            t("2026-12-01T20-0130").as_deref(),
            Some("2026-12-01T21:30:00.000000+00:00")
        );
        assert_eq!(
            t("2026-12-01T24:00").as_deref(),
            Some("2026-12-02T00:00:00.000000+00:00")
        );
        assert_eq!(
            t("2026-12-01T20:16:33.1234567").as_deref(),
            Some("2026-12-01T20:16:33.123456+00:00")
        );
        for bad in [
            "tomorrow",
            "",
            "12345",
            "+12027-02-19T00:00:00+00:00",
            "2026-13-01",
            "2026-12-01T25:00",
            "2026-12-01T20:1",
            "2026-12-01T2016:33",
            "2026-W48-1",
            "0000-01-01",
            "2026-12-01T20:16:33+24:00",
            "2026-12-01T24:01",
        ] {
            assert_eq!(t(bad), None, "{bad}");
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
        // A class the task named: as a Python worker stores that class.
        let e = TaskError::new(ErrorKind::TaskError, "bad input").with_detail(
            crate::error::FailureDetail {
                exception: Some(crate::error::ExceptionClass::parse("ValueError")),
                directive: None,
            },
        );
        let x = Exception::for_error(&e);
        assert_eq!(
            (x.info.exc_module.as_str(), x.info.exc_type.as_str()),
            ("builtins", "ValueError")
        );
        assert_eq!(x.info.exc_message, [Value::String("bad input".into())]);
        assert_eq!(x.traceback.as_deref(), Some("ValueError: bad input\n"));
        let e =
            TaskError::new(ErrorKind::TaskError, "no").with_detail(crate::error::FailureDetail {
                exception: Some(crate::error::ExceptionClass::parse("myapp.errors.Expected")),
                directive: None,
            });
        let x = Exception::for_error(&e);
        assert_eq!(
            (x.info.exc_module.as_str(), x.info.exc_type.as_str()),
            ("myapp.errors", "Expected")
        );
        let plain = Exception::for_error(&TaskError::new(ErrorKind::TaskError, "t"));
        assert_eq!(plain.info.exc_type, "PluginError");
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
