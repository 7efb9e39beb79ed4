//! A task's JSON Schemas (issue 28 item 9): the schema of the JSON argument
//! array a job line or a Celery message carries, and of the JSON result,
//! which `#[task]` derives at build time from the task's types (schemars)
//! and the plugin exports through `PluginMod::task_schema`. `inspect --json`
//! prints them so a producer in any language can validate a job before
//! sending it; `inspect` shows the fields of the structs they describe.
//!
//! A plugin may be hostile: its schema text is size-bounded and must parse
//! as JSON whose parts are schemas (objects or booleans); anything else is
//! no schema (a schema is a description, never needed to run a task).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// The longest schema text accepted from a plugin for one task.
pub const MAX_SCHEMA_TEXT: usize = 256 * 1024;

/// How deep [`type_text`] follows nested schemas before it writes `...`.
const MAX_DEPTH: usize = 12;

/// One JSON Schema (draft 2020-12, as schemars writes it).
///
/// Serialized for people (JSON: `inspect --json`) as the schema itself; for
/// programs (bincode: the zygote's plugin list) as its JSON text, since
/// bincode cannot read a value of a type it is not told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema(pub Value);

impl Serialize for Schema {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            self.0.serialize(s)
        } else {
            s.serialize_str(&self.0.to_string())
        }
    }
}

impl<'de> Deserialize<'de> for Schema {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Schema, D::Error> {
        if d.is_human_readable() {
            Value::deserialize(d).map(Schema)
        } else {
            let text = String::deserialize(d)?;
            serde_json::from_str(&text)
                .map(Schema)
                .map_err(serde::de::Error::custom)
        }
    }
}

/// A task's schemas; each `None` (`null`) when a type of it has no
/// `JsonSchema` (the task still runs: nothing is checked against them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSchema {
    /// The schema of the JSON array of the task's arguments (`[]` for none).
    pub args: Option<Schema>,
    /// The schema of the task's JSON result (the `T` of `Result<T, E>`).
    pub result: Option<Schema>,
}

impl TaskSchema {
    /// Parses what a plugin's `task_schema` wrote: `{"args": <schema or
    /// null>, "result": <schema or null>}`. `None` when it is not that (too
    /// long, not JSON, a part that is no schema).
    pub fn from_plugin(text: &[u8]) -> Option<TaskSchema> {
        if text.len() > MAX_SCHEMA_TEXT {
            return None;
        }
        let Value::Object(mut o) = serde_json::from_slice::<Value>(text).ok()? else {
            return None;
        };
        let mut part = |key: &str| -> Option<Option<Schema>> {
            match o.remove(key) {
                None | Some(Value::Null) => Some(None),
                Some(v @ (Value::Object(_) | Value::Bool(_))) => Some(Some(Schema(v))),
                Some(_) => None,
            }
        };
        Some(TaskSchema {
            args: part("args")?,
            result: part("result")?,
        })
    }

    /// Lines for `inspect`'s text: each named type the arguments and the
    /// result use, with its fields (`Item = {id: u32, note?: string | null}`),
    /// the result's own when it is a struct; then a line for each part that
    /// has no schema.
    pub fn describe(&self) -> Vec<String> {
        fn add<'a>(name: &str, v: &'a Value, named: &mut Vec<(String, &'a Value)>) {
            if !named.iter().any(|(n, _)| n == name) {
                named.push((name.to_string(), v));
            }
        }
        let mut named: Vec<(String, &Value)> = Vec::new();
        for part in [&self.args, &self.result].into_iter().flatten() {
            if let Some(defs) = part.0.get("$defs").and_then(Value::as_object) {
                for (name, v) in defs {
                    add(name, v, &mut named);
                }
            }
        }
        // A struct result is the root schema itself, named by its title.
        if let Some(r) = &self.result {
            if let (Some(title), true) = (
                r.0.get("title").and_then(Value::as_str),
                r.0.get("properties").is_some() || r.0.get("oneOf").is_some(),
            ) {
                add(title, &r.0, &mut named);
            }
        }
        let mut lines: Vec<String> = named
            .iter()
            .map(|(name, v)| format!("{name} = {}", type_text(v, 0)))
            .collect();
        for (what, part) in [("argument", &self.args), ("result", &self.result)] {
            if part.is_none() {
                lines.push(format!(
                    "{what} schema: unknown (a type without #[derive(JsonSchema)])"
                ));
            }
        }
        lines
    }
}

/// A schema as a short type: `u32`, `string | null`, `[f64]`, `{string:
/// i32}`, `{id: u32, note?: string}` (`?`: not required), `Shape` (a named
/// type, shown on a line of its own).
pub fn type_text(v: &Value, depth: usize) -> String {
    if depth > MAX_DEPTH {
        return "...".into();
    }
    let o = match v {
        Value::Bool(true) => return "any".into(),
        Value::Bool(false) => return "nothing".into(),
        Value::Object(o) => o,
        _ => return "?".into(),
    };
    let next = depth.saturating_add(1);
    if let Some(r) = o.get("$ref").and_then(Value::as_str) {
        return r.rsplit('/').next().unwrap_or(r).to_string();
    }
    if let Some(c) = o.get("const") {
        return c.to_string();
    }
    if let Some(Value::Array(e)) = o.get("enum") {
        return join(e.iter().map(Value::to_string));
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(Value::Array(alts)) = o.get(key) {
            return join(alts.iter().map(|a| type_text(a, next)));
        }
    }
    match o.get("type") {
        Some(Value::String(t)) => one_type(o, t, next),
        Some(Value::Array(ts)) => join(
            ts.iter()
                .filter_map(Value::as_str)
                .map(|t| one_type(o, t, next)),
        ),
        _ => "any".into(),
    }
}

fn join(parts: impl Iterator<Item = String>) -> String {
    parts.collect::<Vec<_>>().join(" | ")
}

/// One JSON type of a schema (`"type": "integer"` with its format ...).
fn one_type(o: &serde_json::Map<String, Value>, t: &str, depth: usize) -> String {
    let format = o.get("format").and_then(Value::as_str);
    match t {
        "integer" => match format {
            Some(f @ ("int8" | "int16" | "int32" | "int64" | "int128")) => format!("i{}", &f[3..]),
            Some(f @ ("uint8" | "uint16" | "uint32" | "uint64" | "uint128")) => {
                format!("u{}", &f[4..])
            }
            Some("uint") => "usize".into(),
            Some("int") => "isize".into(),
            _ => "integer".into(),
        },
        "number" => match format {
            Some("double") => "f64".into(),
            Some("float") => "f32".into(),
            _ => "number".into(),
        },
        "boolean" => "bool".into(),
        "array" => match (o.get("prefixItems"), o.get("items")) {
            (Some(Value::Array(items)), _) => format!(
                "[{}]",
                items
                    .iter()
                    .map(|i| type_text(i, depth))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (_, Some(items)) => format!("[{}]", type_text(items, depth)),
            _ => "array".into(),
        },
        "object" => match o.get("properties").and_then(Value::as_object) {
            Some(props) => {
                let required: Vec<&str> = o
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let fields: Vec<String> = props
                    .iter()
                    .map(|(k, v)| {
                        let opt = if required.contains(&k.as_str()) {
                            ""
                        } else {
                            "?"
                        };
                        format!("{k}{opt}: {}", type_text(v, depth))
                    })
                    .collect();
                format!("{{{}}}", fields.join(", "))
            }
            None => match o.get("additionalProperties") {
                Some(v @ Value::Object(_)) => format!("{{string: {}}}", type_text(v, depth)),
                _ => "object".into(),
            },
        },
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_schema_texts_are_no_schema() {
        for bad in [
            &b"["[..],
            b"3",
            br#"{"args": 3, "result": null}"#,
            br#"{"args": "x"}"#,
        ] {
            assert_eq!(TaskSchema::from_plugin(bad), None);
        }
        let long = format!(
            r#"{{"args": {{"description": "{}"}}}}"#,
            "x".repeat(MAX_SCHEMA_TEXT)
        );
        assert_eq!(TaskSchema::from_plugin(long.as_bytes()), None);
        let ok = TaskSchema::from_plugin(br#"{"args": true, "result": null}"#).unwrap();
        assert_eq!(ok.args, Some(Schema(Value::Bool(true))));
        // Through bincode (the zygote's plugin list) and back.
        let b = bincode::serde::encode_to_vec(&ok, bincode::config::standard()).unwrap();
        let (back, _): (TaskSchema, usize) =
            bincode::serde::decode_from_slice(&b, bincode::config::standard()).unwrap();
        assert_eq!(back, ok);
    }

    #[test]
    fn deep_schemas_are_cut() {
        let mut v = serde_json::json!({"type": "integer", "format": "uint8"});
        for _ in 0..100 {
            v = serde_json::json!({"type": "array", "items": v});
        }
        let t = type_text(&v, 0);
        assert!(t.contains("...") && t.len() < 100, "{t}");
    }
}
