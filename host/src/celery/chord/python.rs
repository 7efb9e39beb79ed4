//! Python's encodings, byte for byte: `json.dumps` as kombu writes a
//! chord's `.j` entries, and `repr()` of the exceptions Celery words a
//! `ChordError` with (issue 23 item 1).

use serde_json::Value;

use crate::celery::protocol::State;
use crate::pyrepr::{py_float, py_repr, py_str};

/// A `.j` entry as Python's backend encodes it: `json.dumps([1, tid,
/// state, result])` (kombu's json: `", "` and `": "`, `ensure_ascii`,
/// floats as `repr`), byte for byte for the same value (object keys in
/// the order this host holds them: sorted).
pub fn encode_part(task_id: &str, state: State, result: &Value) -> String {
    let state = match state {
        State::Success => "SUCCESS",
        State::Failure => "FAILURE",
        State::Revoked => "REVOKED",
        State::Retry => "RETRY",
        State::Started => "STARTED",
        State::Received => "RECEIVED",
        State::Pending => "PENDING",
    };
    let head = Value::Array(vec![
        Value::from(1),
        Value::String(task_id.into()),
        Value::String(state.into()),
    ]);
    let mut s = py_json(&head);
    s.pop();
    s.push_str(", ");
    match result {
        // Python's prepare_exception builds the dict in this order; this
        // host's maps are sorted.
        Value::Object(o) if state != "SUCCESS" && o.contains_key("exc_type") => {
            let first = ["exc_type", "exc_message", "exc_module"];
            let keys = first
                .iter()
                .filter(|k| o.contains_key(**k))
                .map(|k| k.to_string())
                .chain(o.keys().filter(|k| !first.contains(&k.as_str())).cloned());
            s.push('{');
            for (i, k) in keys.enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                write_json(&Value::String(k.clone()), &mut s);
                s.push_str(": ");
                write_json(&o[&k], &mut s);
            }
            s.push('}');
        }
        other => write_json(other, &mut s),
    }
    s.push(']');
    s
}

/// `json.dumps(v)` as Python writes it.
pub fn py_json(v: &Value) -> String {
    let mut s = String::new();
    write_json(v, &mut s);
    s
}

fn write_json(v: &Value, s: &mut String) {
    match v {
        Value::Null => s.push_str("null"),
        Value::Bool(b) => s.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => s.push_str(&i.to_string()),
            (_, Some(u), _) => s.push_str(&u.to_string()),
            (_, _, Some(f)) => s.push_str(&py_float(f)),
            _ => s.push_str(&n.to_string()),
        },
        Value::String(t) => {
            s.push('"');
            for c in t.chars() {
                match c {
                    '"' => s.push_str("\\\""),
                    '\\' => s.push_str("\\\\"),
                    '\n' => s.push_str("\\n"),
                    '\r' => s.push_str("\\r"),
                    '\t' => s.push_str("\\t"),
                    '\u{8}' => s.push_str("\\b"),
                    '\u{c}' => s.push_str("\\f"),
                    ' '..='~' => s.push(c),
                    _ => {
                        let mut buf = [0u16; 2];
                        for u in c.encode_utf16(&mut buf) {
                            s.push_str(&format!("\\u{:04x}", u));
                        }
                    }
                }
            }
            s.push('"');
        }
        Value::Array(a) => {
            s.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                write_json(x, s);
            }
            s.push(']');
        }
        Value::Object(o) => {
            s.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                write_json(&Value::String(k.clone()), s);
                s.push_str(": ");
                write_json(x, s);
            }
            s.push('}');
        }
    }
}

/// `repr(ExcType('message'))` of a one-argument exception.
pub(super) fn py_str_repr_exc(ty: &str, message: &str) -> String {
    format!("{ty}({})", py_str(message))
}

/// `repr()` of the exception Python rebuilds from a stored exception dict
/// (`exception_to_python`): `TaskError('boom')`, `NotRegistered`'s own
/// wording.
pub fn exc_repr(exc: &Value) -> String {
    let ty = exc
        .get("exc_type")
        .and_then(Value::as_str)
        .unwrap_or("Exception");
    let name = ty.rsplit('.').next().unwrap_or(ty);
    let args: Vec<Value> = match exc.get("exc_message") {
        Some(Value::Array(a)) => a.clone(),
        Some(other) => vec![other.clone()],
        None => vec![Value::String(String::new())],
    };
    let module = exc
        .get("exc_module")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name == "NotRegistered" && module == "celery.exceptions" {
        // KeyError's str(): the repr of a lone argument, else the tuple.
        let inner = match args.as_slice() {
            [one] => py_repr(one),
            many => format!(
                "({})",
                many.iter().map(py_repr).collect::<Vec<_>>().join(", ")
            ),
        };
        return format!("Task of kind {inner} never registered, please make sure it's imported.");
    }
    format!(
        "{name}({})",
        args.iter().map(py_repr).collect::<Vec<_>>().join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_exception_entry_keeps_pythons_key_order() {
        let e = json!({"exc_type": "TaskError", "exc_message": ["é"], "exc_module": "m"});
        assert_eq!(
            encode_part("t", State::Failure, &e),
            r#"[1, "t", "FAILURE", {"exc_type": "TaskError", "exc_message": ["\u00e9"], "exc_module": "m"}]"#
        );
    }

    #[test]
    fn entries_are_encoded_as_python_writes_them() {
        assert_eq!(
            encode_part(
                "t1",
                State::Success,
                &json!([1, 2.5, "é", {"b": null, "a": true}])
            ),
            r#"[1, "t1", "SUCCESS", [1, 2.5, "\u00e9", {"a": true, "b": null}]]"#
        );
        assert_eq!(
            encode_part("t", State::Success, &json!("😀\n\u{7f}")),
            "[1, \"t\", \"SUCCESS\", \"\\ud83d\\ude00\\n\\u007f\"]"
        );
    }

    #[test]
    fn exceptions_are_worded_as_python_reprs_them() {
        let e = json!({"exc_type": "TaskError", "exc_message": ["it's \"bad\""], "exc_module": "billiard_host.exceptions"});
        assert_eq!(exc_repr(&e), r#"TaskError('it\'s "bad"')"#);
        let e = json!({"exc_type": "TaskRevokedError", "exc_message": ["revoked"], "exc_module": "celery.exceptions"});
        assert_eq!(exc_repr(&e), "TaskRevokedError('revoked')");
        let e = json!({"exc_type": "NotRegistered", "exc_message": ["x.y"], "exc_module": "celery.exceptions"});
        assert_eq!(
            exc_repr(&e),
            "Task of kind 'x.y' never registered, please make sure it's imported."
        );
    }
}
