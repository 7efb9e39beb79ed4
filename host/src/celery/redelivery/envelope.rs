//! The retry message, rewritten from the received envelope.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::super::protocol::{self, Envelope};

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
        super::super::control::machine_hostname()
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
pub(super) fn call_of(raw: &[u8]) -> (String, String) {
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
