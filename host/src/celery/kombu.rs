//! kombu's typed JSON (issue 29 item 5).
//!
//! kombu's JSON serializer (`kombu/utils/json.py`, 5.x) writes the Python
//! values JSON has no form for as a tagged object `{"__type__": T,
//! "__value__": V}`: `bytes` as `"bytes"` (its UTF-8 text) or `"base64"`
//! (when it is not UTF-8), `datetime`/`date`/`time` as their `isoformat()`,
//! `Decimal` as `str(d)`, `UUID` as `{"hex": u.hex}`; its `object_hook`
//! turns them back into the Python values. A Celery message from a Python
//! client carries them in its args and kwargs, and a Python client reads
//! them back from a result.
//!
//! On the way in ([`decode_args`]) each tag becomes what a Rust task takes:
//! bytes become a byte string the plugin's `Vec<u8>` accepts (the codec's
//! compact `{"$bytes": "<base64>"}` for a parameter declared `Vec<u8>`, an
//! array of numbers anywhere else, which any `Vec<u8>` field accepts); the
//! others become strings: datetime/date/time as kombu wrote them (ISO 8601,
//! which chrono's serde forms of `DateTime<FixedOffset>`/`NaiveDateTime`/
//! `NaiveDate`/`NaiveTime` parse, so a plugin may take those types or a
//! `String`, and plugin-api gains no dependency), a UUID in its hyphenated
//! form (`str(uuid)`), a Decimal as its text (never a float: no digit is
//! lost). On the way out ([`encode_result`]) a byte string in a result
//! (the worker's pool asks for `{"$bytes": ...}`) becomes kombu's `bytes`
//! or `base64` tag, exactly as a Python worker's result would be written,
//! so the client's `.get()` returns `bytes`.

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::plugin::TaskSpec;
use crate::pool::{Pool, TaskRef};

/// How deep a tag may sit in an argument. serde_json's reader already
/// refuses a document nested deeper than 128, so no parsed body reaches
/// this; the walk checks anyway, so its recursion is bounded by itself.
pub const MAX_DEPTH: usize = 128;

/// The most bytes a message's tags may expand into arrays of numbers (tags
/// nested in lists or objects, or given to a parameter not declared
/// `Vec<u8>`): an array holds a JSON number per byte (about 30 times the
/// bytes in memory), so this bounds what a message can make the host
/// allocate. A parameter declared `Vec<u8>` takes any size (its compact
/// form costs 4/3 of the bytes).
pub const MAX_NESTED_BYTES: usize = 1 << 20;

/// A tagged value kombu's `object_hook` would not decode either (a Python
/// worker drops such a message with `DecodeError`; this host stores FAILURE
/// `TypeError` naming the argument, see `docs/celery.md`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    /// A known `__type__` whose `__value__` is not of its form.
    #[error("{at}: kombu's tagged {ty} needs {want} as its __value__, got {got}")]
    BadValue {
        /// Where: `argument 'data'[0]["k"]`.
        at: String,
        /// The `__type__`.
        ty: &'static str,
        /// What its `__value__` must be.
        want: &'static str,
        /// What it was (clipped).
        got: String,
    },
    /// A `__type__` kombu does not know (kombu: `ValueError: Unsupported
    /// type`).
    #[error("{at}: unsupported kombu __type__ {ty} (kombu decodes bytes, base64, datetime, date, time, decimal and uuid)")]
    Unsupported {
        /// Where.
        at: String,
        /// The `__type__` as JSON.
        ty: String,
    },
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("{at}: nested deeper than {MAX_DEPTH} levels")]
    TooDeep {
        /// Where.
        at: String,
    },
    /// More nested bytes than [`MAX_NESTED_BYTES`].
    #[error("{at}: the message's nested byte strings exceed {MAX_NESTED_BYTES} bytes in all (pass a large buffer as a parameter declared Vec<u8>)")]
    TooManyBytes {
        /// Where the budget ran out.
        at: String,
    },
}

impl TagError {
    /// The error, said from one level further out (`[2]` + `['k']`).
    fn within(mut self, outer: &str) -> TagError {
        let at = match &mut self {
            TagError::BadValue { at, .. }
            | TagError::Unsupported { at, .. }
            | TagError::TooDeep { at }
            | TagError::TooManyBytes { at } => at,
        };
        at.insert_str(0, outer);
        self
    }
}

/// Which of a task's parameters are declared `Vec<u8>` (the ones whose
/// byte strings travel in the codec's compact form).
pub fn byte_params(spec: &TaskSpec) -> Vec<bool> {
    spec.args.iter().map(|a| is_vec_u8(&a.ty)).collect()
}

/// [`byte_params`] of a resolved task of the pool's live plugins (none
/// when it went away with a reload: every byte string is then an array).
pub fn byte_params_of(pool: &Pool, target: TaskRef) -> Vec<bool> {
    let plugins = pool.plugins();
    plugins
        .get(target.plugin as usize)
        .and_then(|p| p.tasks.get(target.task as usize))
        .map(byte_params)
        .unwrap_or_default()
}

/// `Vec<u8>` as `#[task]` writes a type (`Vec<u8>`, `std::vec::Vec<u8>`):
/// what its glue decodes as `codec::Bytes`.
fn is_vec_u8(ty: &str) -> bool {
    let t: String = ty.chars().filter(|c| !c.is_whitespace()).collect();
    t.strip_suffix("Vec<u8>")
        .is_some_and(|head| head.is_empty() || head.ends_with("::"))
}

/// Decodes kombu's tags in a task's positional arguments (`names` and
/// `bytes_params` are the task's parameters, in order; an argument past
/// them, e.g. a variadic tail, counts as not `Vec<u8>`).
pub fn decode_args(
    args: &mut [Value],
    names: &[String],
    bytes_params: &[bool],
) -> Result<(), TagError> {
    let mut budget = MAX_NESTED_BYTES;
    for (i, v) in args.iter_mut().enumerate() {
        let compact = bytes_params.get(i).copied().unwrap_or(false);
        decode(v, compact, 0, &mut budget).map_err(|e| {
            let name = names
                .get(i)
                .map_or_else(|| format!("args[{i}]"), |n| n.clone());
            e.within(&format!("argument '{name}'"))
        })?;
    }
    Ok(())
}

/// Replaces every tag in `v` by its decoded form; `compact`: `v` itself is
/// a `Vec<u8>` parameter.
fn decode(v: &mut Value, compact: bool, depth: usize, budget: &mut usize) -> Result<(), TagError> {
    if depth > MAX_DEPTH {
        return Err(TagError::TooDeep { at: String::new() });
    }
    let next = depth.saturating_add(1);
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                decode(item, false, next, budget).map_err(|e| e.within(&format!("[{i}]")))?;
            }
            Ok(())
        }
        Value::Object(m) if is_tag(m) => {
            let decoded = untag(m, compact, budget)?;
            *v = decoded;
            Ok(())
        }
        Value::Object(m) => {
            for (k, item) in m.iter_mut() {
                decode(item, false, next, budget).map_err(|e| e.within(&format!("[{k:?}]")))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// kombu's test: the keys are exactly `__type__` and `__value__`.
fn is_tag(m: &Map<String, Value>) -> bool {
    m.len() == 2 && m.contains_key("__type__") && m.contains_key("__value__")
}

/// A short description of a JSON value for an error message: a scalar as
/// JSON (a long string by its length), a list or an object by its size
/// (never a large value written out just to be described).
fn kind_of(v: &Value) -> String {
    match v {
        Value::Array(a) => format!("an array of {} item{}", a.len(), plural(a.len())),
        Value::Object(m) => format!("an object of {} key{}", m.len(), plural(m.len())),
        Value::String(t) if t.len() > 40 => format!("a string of {} bytes", t.len()),
        _ => v.to_string(),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The decoded form of one tag.
fn untag(m: &Map<String, Value>, compact: bool, budget: &mut usize) -> Result<Value, TagError> {
    let value = &m["__value__"];
    let Some(ty) = m["__type__"].as_str() else {
        return Err(TagError::Unsupported {
            at: String::new(),
            ty: kind_of(&m["__type__"]),
        });
    };
    let bad = |ty: &'static str, want: &'static str| TagError::BadValue {
        at: String::new(),
        ty,
        want,
        got: kind_of(value),
    };
    match ty {
        "bytes" => {
            let s = value.as_str().ok_or_else(|| bad("bytes", "a string"))?;
            bytes_value(s.as_bytes(), compact, budget)
        }
        "base64" => {
            let s = value
                .as_str()
                .ok_or_else(|| bad("base64", "a base64 string"))?;
            let b = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| bad("base64", "a base64 string"))?;
            bytes_value(&b, compact, budget)
        }
        // Kept as kombu wrote them (`isoformat()`): the task parses them
        // (chrono's serde forms read these strings).
        "datetime" => text(value).ok_or_else(|| bad("datetime", "an ISO 8601 string")),
        "date" => text(value).ok_or_else(|| bad("date", "an ISO 8601 string")),
        "time" => text(value).ok_or_else(|| bad("time", "an ISO 8601 string")),
        // `Decimal(v)`: kombu writes `str(d)`; an integer is taken too
        // (Decimal(5) is exact), a float never (it would not be exact).
        "decimal" => match value {
            Value::String(s) if !s.is_empty() => Ok(Value::String(s.clone())),
            Value::Number(n) if !n.is_f64() => Ok(Value::String(n.to_string())),
            _ => Err(bad("decimal", "a decimal string")),
        },
        "uuid" => uuid_text(value)
            .map(Value::String)
            .ok_or_else(|| bad("uuid", "{\"hex\": \"<32 hex digits>\"}")),
        _ => Err(TagError::Unsupported {
            at: String::new(),
            ty: kind_of(&m["__type__"]),
        }),
    }
}

fn text(v: &Value) -> Option<Value> {
    v.as_str()
        .filter(|s| !s.is_empty())
        .map(|s| Value::String(s.to_string()))
}

/// A byte string for the codec: compact for a `Vec<u8>` parameter, an array
/// of numbers (within the budget) elsewhere.
fn bytes_value(b: &[u8], compact: bool, budget: &mut usize) -> Result<Value, TagError> {
    if compact {
        let mut m = Map::new();
        m.insert(
            billiard_plugin_api::codec::BYTES_KEY.to_string(),
            Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        );
        return Ok(Value::Object(m));
    }
    *budget = budget
        .checked_sub(b.len())
        .ok_or(TagError::TooManyBytes { at: String::new() })?;
    Ok(Value::Array(b.iter().map(|&x| Value::from(x)).collect()))
}

/// `str(uuid.UUID(hex=...))` of kombu's `{"hex": ...}`: Python's reading
/// of the hex (braces, `urn:uuid:` and hyphens dropped; 32 hex digits),
/// written lowercase with hyphens.
fn uuid_text(v: &Value) -> Option<String> {
    let m = v.as_object()?;
    if m.len() != 1 {
        return None;
    }
    let hex = m.get("hex")?.as_str()?;
    let hex = hex.strip_prefix("urn:").unwrap_or(hex);
    let hex = hex.strip_prefix("uuid:").unwrap_or(hex);
    let digits: String = hex
        .trim_matches(|c| c == '{' || c == '}')
        .chars()
        .filter(|&c| c != '-')
        .collect();
    if digits.len() != 32 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let d = digits.to_ascii_lowercase();
    Some(format!(
        "{}-{}-{}-{}-{}",
        d.get(0..8)?,
        d.get(8..12)?,
        d.get(12..16)?,
        d.get(16..20)?,
        d.get(20..32)?
    ))
}

/// A task's JSON result as the worker stores and forwards it: parsed (a
/// result that is not JSON, which the glue never writes, is kept as its
/// text), its byte strings written as kombu's tags ([`encode_result`]).
pub fn result_value(json: &[u8]) -> Value {
    let mut v = serde_json::from_slice(json)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(json).into_owned()));
    if may_hold_bytes(json) {
        encode_result(&mut v);
    }
    v
}

/// Whether a task's JSON result may hold a byte string (`{"$bytes": ...}`):
/// a cheap test before [`encode_result`]'s walk.
pub fn may_hold_bytes(json: &[u8]) -> bool {
    let key = br#""$bytes""#;
    json.windows(key.len()).any(|w| w == key)
}

/// Writes each byte string of a result (`{"$bytes": "<base64>"}`, what the
/// pool returns for `Vec<u8>`) as kombu's tag: `{"__type__": "bytes",
/// "__value__": <text>}` when the bytes are UTF-8, else `{"__type__":
/// "base64", ...}`, as kombu's `JSONEncoder` writes Python `bytes`. An
/// object of another shape, or whose `$bytes` is not base64, is left alone.
pub fn encode_result(v: &mut Value) {
    encode(v, 0);
}

fn encode(v: &mut Value, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    let next = depth.saturating_add(1);
    match v {
        Value::Array(items) => items.iter_mut().for_each(|i| encode(i, next)),
        Value::Object(m) => {
            if let Some(tag) = bytes_tag(m) {
                *v = tag;
            } else {
                m.values_mut().for_each(|i| encode(i, next));
            }
        }
        _ => {}
    }
}

fn bytes_tag(m: &Map<String, Value>) -> Option<Value> {
    if m.len() != 1 {
        return None;
    }
    let b64 = m.get(billiard_plugin_api::codec::BYTES_KEY)?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let (ty, value) = match String::from_utf8(bytes) {
        Ok(s) => ("bytes", s),
        Err(_) => ("base64", b64.to_string()),
    };
    let mut tag = Map::new();
    tag.insert("__type__".into(), Value::String(ty.into()));
    tag.insert("__value__".into(), Value::String(value));
    Some(Value::Object(tag))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(args: Value, bytes: &[bool]) -> Result<Value, TagError> {
        let mut a = match args {
            Value::Array(a) => a,
            _ => unreachable!(),
        };
        let names: Vec<String> = (0..a.len()).map(|i| format!("a{i}")).collect();
        decode_args(&mut a, &names, bytes)?;
        Ok(Value::Array(a))
    }

    #[test]
    fn tags_decode_into_what_a_task_takes() {
        let got = run(
            json!([
                {"__type__": "bytes", "__value__": "hi"},
                [{"__type__": "base64", "__value__": "/w=="}, {"k": {"__type__": "bytes", "__value__": "A"}}],
                {"__type__": "datetime", "__value__": "2026-12-06T07:37:06.123456+00:00"},
                {"__type__": "date", "__value__": "2026-12-06"},
                {"__type__": "time", "__value__": "07:37:06"},
                {"__type__": "uuid", "__value__": {"hex": "0C174030372840AB93B9F1C38FA4E8BF"}},
                {"__type__": "decimal", "__value__": "1.10"},
                {"__type__": "decimal", "__value__": 12345678901234567890u64},
                {"__type__": "bytes", "__value__": "x", "other": 1},
            ]),
            &[true],
        )
        .unwrap();
        assert_eq!(
            got,
            json!([
                {"$bytes": "aGk="},
                [[255], {"k": [65]}],
                "2026-12-06T07:37:06.123456+00:00",
                "2026-12-06",
                "07:37:06",
                "0c174030-3728-40ab-93b9-f1c38fa4e8bf",
                "1.10",
                "12345678901234567890",
                {"__type__": "bytes", "__value__": "x", "other": 1},
            ])
        );
    }

    #[test]
    fn malformed_tags_are_errors_naming_the_argument() {
        for (arg, want) in [
            (
                json!({"__type__": "bytes", "__value__": 5}),
                "argument 'a0': kombu's tagged bytes needs a string as its __value__, got 5",
            ),
            (
                json!([{"__type__": "base64", "__value__": "*"}]),
                "argument 'a0'[0]: kombu's tagged base64",
            ),
            (
                json!({"k": {"__type__": "nope", "__value__": 1}}),
                "argument 'a0'[\"k\"]: unsupported kombu __type__ \"nope\"",
            ),
            (
                json!({"__type__": ["x"], "__value__": 1}),
                "unsupported kombu __type__ an array of 1 item",
            ),
            (
                json!({"__type__": "bytes", "__value__": vec![0; 1000]}),
                "needs a string as its __value__, got an array of 1000 items",
            ),
            (
                json!({"__type__": "decimal", "__value__": 0.1}),
                "needs a decimal string",
            ),
            (
                json!({"__type__": "uuid", "__value__": {"hex": "xyz"}}),
                "tagged uuid needs",
            ),
            (
                json!({"__type__": "uuid", "__value__": "0c174030372840ab93b9f1c38fa4e8bf"}),
                "tagged uuid needs",
            ),
            (
                json!({"__type__": "datetime", "__value__": null}),
                "tagged datetime needs an ISO 8601 string",
            ),
        ] {
            let e = run(json!([arg]), &[false]).unwrap_err().to_string();
            assert!(e.starts_with(want) || e.contains(want), "{e}\nwant: {want}");
        }
    }

    #[test]
    fn nested_bytes_are_bounded_and_depth_is_checked() {
        let big = "a".repeat(MAX_NESTED_BYTES / 2 + 1);
        let tag = json!({"__type__": "bytes", "__value__": big});
        // One compact parameter takes any size; arrays share a budget.
        assert!(run(json!([tag.clone()]), &[true]).is_ok());
        assert!(run(json!([[tag.clone()]]), &[false]).is_ok());
        let e = run(json!([[tag.clone(), tag]]), &[false]).unwrap_err();
        assert!(matches!(e, TagError::TooManyBytes { .. }), "{e}");
        let mut deep = json!(1);
        for _ in 0..(MAX_DEPTH + 2) {
            deep = json!([deep]);
        }
        let e = run(json!([deep]), &[false]).unwrap_err();
        assert!(matches!(e, TagError::TooDeep { .. }), "{e}");
    }

    #[test]
    fn byte_results_become_kombus_tags() {
        let mut v = json!([{"$bytes": "aGk="}, {"k": {"$bytes": "/w=="}}, {"$bytes": "*"}, {"$bytes": "aGk=", "x": 1}]);
        assert!(may_hold_bytes(v.to_string().as_bytes()));
        encode_result(&mut v);
        assert_eq!(
            v,
            json!([
                {"__type__": "bytes", "__value__": "hi"},
                {"k": {"__type__": "base64", "__value__": "/w=="}},
                {"$bytes": "*"},
                {"$bytes": "aGk=", "x": 1},
            ])
        );
        assert!(!may_hold_bytes(b"[1,2]"));
    }

    #[test]
    fn vec_u8_is_recognised_as_written() {
        assert!(is_vec_u8("Vec<u8>"));
        assert!(is_vec_u8("std::vec::Vec<u8>"));
        assert!(is_vec_u8("Vec < u8 >"));
        assert!(!is_vec_u8("Option<Vec<u8>>"));
        assert!(!is_vec_u8("Vec<Vec<u8>>"));
        assert!(!is_vec_u8("MyVec<u8>"));
    }
}
