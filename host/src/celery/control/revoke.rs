//! Revokes as Celery 5.7's worker keeps them (`celery/worker/control.py`
//! `revoke`, `_revoke`, `revoke_by_stamped_headers`; `celery/worker/
//! request.py` `Request.revoked`), and the Python `repr` its replies are
//! written in (issue 29 item 6).
//!
//! - A revoke marks every id that is not running REVOKED in the result
//!   backend at once, when its stored state is PENDING (no result),
//!   RECEIVED, RETRY or REJECTED, as `_revoke` does with
//!   `backend.mark_as_revoked(..., store_result=True)`: a result already
//!   there (SUCCESS, FAILURE, STARTED, ...) is never overwritten. The id is
//!   also kept (in memory and in Redis, see [`super::REVOKED_KEY`]) so the
//!   message, when it arrives, is stored REVOKED and never run.
//! - `revoke_by_stamped_headers` keeps `{header: [stamps]}` in memory, as
//!   Celery's `worker_state.revoked_stamps` (not persisted, not shared by
//!   mingle, in Celery either); a message whose `stamps[h]` (for `h` in
//!   its `stamped_headers`) is, or holds, a revoked stamp is revoked.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::pyrepr::{py_repr, py_str};

use crate::celery::protocol::{result_key, Exception, ResultMeta};
use crate::celery::transport::redis::{ttl_secs, Link};

/// Stores REVOKED over no result or a not-yet-final one (Celery's
/// `_revoke`: PENDING, RECEIVED, RETRY, REJECTED), with SETEX and the
/// PUBLISH a waiting `AsyncResult.get()` listens to. A stored value that
/// is not JSON is left alone. KEYS[1]: the result key; ARGV[1]: the meta;
/// ARGV[2]: its time to live in seconds (0: none). Returns 1 if stored.
const MARK_REVOKED: &str = r#"
local v = redis.call('GET', KEYS[1])
if v then
  local ok, m = pcall(cjson.decode, v)
  if not ok or type(m) ~= 'table' then return 0 end
  local s = m['status']
  if s ~= 'PENDING' and s ~= 'RECEIVED' and s ~= 'RETRY' and s ~= 'REJECTED' then
    return 0
  end
end
if ARGV[2] ~= '0' then
  redis.call('SETEX', KEYS[1], ARGV[2], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"#;

/// Marks `ids` REVOKED in the result backend at `backend_url` (see the
/// module doc); returns how many were stored. Errors are logged: the
/// revoke itself still holds (the message is refused when it arrives).
pub fn mark_revoked(backend_url: &str, ids: &[String], expires: std::time::Duration) -> usize {
    if ids.is_empty() {
        return 0;
    }
    let ttl = ttl_secs(expires).unwrap_or(0);
    let mut link = match Link::new(backend_url, "revoke") {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("revoke: cannot reach the result backend ({e}); REVOKED is stored when the message arrives");
            return 0;
        }
    };
    let script = redis::Script::new(MARK_REVOKED);
    let mut stored = 0usize;
    for id in ids {
        let meta = ResultMeta::failure(id, &Exception::revoked("revoked")).to_json();
        match link.run(|c| {
            script
                .key(result_key(id))
                .arg(&meta)
                .arg(ttl)
                .invoke::<i64>(c)
        }) {
            Ok(1) => stored = stored.saturating_add(1),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(
                    "revoke: cannot mark {id} REVOKED ({e}); it is when its message arrives"
                );
                break;
            }
        }
    }
    stored
}

/// The `headers` argument of `revoke_by_stamped_headers` as Celery reads
/// it: a mapping, or a list of `"key=value"` strings (split at the
/// first `=`, as `h.split('=')` does for one). None: neither.
pub fn stamped_headers_arg(v: Option<&Value>) -> Option<Map<String, Value>> {
    match v? {
        Value::Object(m) => Some(m.clone()),
        Value::Array(a) => {
            let mut m = Map::new();
            for h in a {
                let s = h.as_str()?;
                let mut parts = s.split('=');
                let k = parts.next().unwrap_or("");
                let v = parts.next()?;
                m.insert(k.to_string(), Value::String(v.to_string()));
            }
            Some(m)
        }
        _ => None,
    }
}

/// `maybe_list`: a list stays itself, null is empty, anything else is a
/// list of one.
fn maybe_list(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        Value::Null => Vec::new(),
        other => vec![other.clone()],
    }
}

/// At most this many stamps are kept per header (the oldest go first,
/// as Celery's revoked set drops its oldest ids), and at most
/// [`MAX_STAMPED_HEADERS`] headers: Celery keeps them without a bound, a
/// stream of broadcasts would grow this host without one.
pub const MAX_STAMPS_PER_HEADER: usize = 50_000;
/// See [`MAX_STAMPS_PER_HEADER`].
pub const MAX_STAMPED_HEADERS: usize = 1_000;

/// Adds `headers` to the revoked stamps (Celery appends to the list of
/// each header), within [`MAX_STAMPS_PER_HEADER`] and
/// [`MAX_STAMPED_HEADERS`].
pub fn add_stamps(revoked: &mut BTreeMap<String, Vec<Value>>, headers: &Map<String, Value>) {
    for (h, stamps) in headers {
        if !revoked.contains_key(h) && revoked.len() >= MAX_STAMPED_HEADERS {
            tracing::warn!("revoke_by_stamped_headers: {MAX_STAMPED_HEADERS} headers kept already; {h:?} is not");
            continue;
        }
        let l = revoked.entry(h.clone()).or_default();
        l.extend(maybe_list(stamps));
        if let Some(over) = l.len().checked_sub(MAX_STAMPS_PER_HEADER) {
            l.drain(..over);
        }
    }
}

/// The stamps of a message (`{h: stamps[h]}` for `h` in its
/// `stamped_headers`), read from its raw kombu envelope. Only messages
/// that name stamped headers are parsed (a byte search first), so the
/// common message costs nothing.
pub fn message_stamps(raw: &[u8]) -> Option<Map<String, Value>> {
    let key = b"\"stamped_headers\"";
    let at = raw.windows(key.len()).position(|w| w == key)?;
    let rest = raw.get(at.saturating_add(key.len())..)?;
    let first = rest
        .iter()
        .find(|b| !b.is_ascii_whitespace() && **b != b':')?;
    if *first != b'[' && *first != b'"' {
        return None; // null: no stamps
    }
    let env: Value = serde_json::from_slice(raw).ok()?;
    let h = env.get("headers")?;
    let names = maybe_list(h.get("stamped_headers")?);
    let stamps = h.get("stamps").and_then(Value::as_object);
    let mut out = Map::new();
    for n in names {
        let Some(n) = n.as_str() else { continue };
        let v = stamps
            .and_then(|s| s.get(n))
            .cloned()
            .unwrap_or(Value::Null);
        out.insert(n.to_string(), v);
    }
    Some(out)
}

/// The stamps of `stamps` that match `revoked` (Celery's
/// `Request.revoked`: a list stamp matches when any of its values is
/// revoked, a single one when it is), per header.
pub fn matching(
    stamps: &Map<String, Value>,
    revoked: &BTreeMap<String, Vec<Value>>,
) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (h, v) in stamps {
        let Some(bad) = revoked.get(h) else { continue };
        if v.is_null() {
            continue;
        }
        for s in maybe_list(v) {
            if bad.contains(&s) {
                let e = out.entry(h.clone()).or_default();
                if !e.contains(&s) {
                    e.push(s);
                }
            }
        }
    }
    out
}

/// The `terminated_scheme_to_stamps_mapping` of Celery's reply, a
/// `defaultdict(set)`, as Python prints it.
pub fn terminated_repr(m: &BTreeMap<String, Vec<Value>>) -> String {
    let items: Vec<String> = m
        .iter()
        .map(|(k, v)| {
            let s: Vec<String> = v.iter().map(py_repr).collect();
            format!("{}: {{{}}}", py_str(k), s.join(", "))
        })
        .collect();
    format!("defaultdict(<class 'set'>, {{{}}})", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stamps_of_a_message_and_their_match() {
        let raw = br#"{"headers": {"stamped_headers": ["mtask_id", "k"], "stamps": {"mtask_id": "s1", "k": ["a", "b"]}}}"#;
        let st = message_stamps(raw).unwrap_or_default();
        let mut rv = BTreeMap::new();
        add_stamps(
            &mut rv,
            &stamped_headers_arg(Some(&json!(["k=b"]))).unwrap_or_default(),
        );
        assert_eq!(matching(&st, &rv).get("k"), Some(&vec![json!("b")]));
        add_stamps(
            &mut rv,
            &stamped_headers_arg(Some(&json!({"mtask_id": ["s0", "s1"]}))).unwrap_or_default(),
        );
        assert_eq!(matching(&st, &rv).len(), 2);
        assert!(message_stamps(br#"{"headers": {"stamped_headers": null}}"#).is_none());
        let many: Vec<Value> = (0..MAX_STAMPS_PER_HEADER + 5).map(|i| json!(i)).collect();
        let mut big = BTreeMap::new();
        add_stamps(
            &mut big,
            &stamped_headers_arg(Some(&json!({"h": many}))).unwrap_or_default(),
        );
        assert_eq!(big["h"].len(), MAX_STAMPS_PER_HEADER);
        assert_eq!(big["h"][0], json!(5));
        assert!(message_stamps(b"not json \"stamped_headers\": [").is_none());
    }
}
