//! Reading cases files: one JSON object per line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use super::{args_text, Case, Expect};
use crate::error::ErrorKind;
use crate::pool::Limits;

/// A line of a cases file that is not a valid case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LineError {
    /// The 1-based line number in the cases file.
    pub line: usize,
    /// What is wrong with it, for people.
    pub message: String,
}

/// Why a cases file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Some lines are not valid cases (every one is listed).
    #[error("{} invalid case line(s) in {}", errors.len(), path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every invalid line, in file order.
        errors: Vec<LineError>,
    },
}

/// Reads and parses a cases file (see [`parse`]).
pub fn read_file(path: impl AsRef<Path>) -> Result<Vec<Case>, ReadError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|errors| ReadError::Invalid {
        path: path.to_path_buf(),
        errors,
    })
}

/// Parses the text of a cases file: one JSON object per line; blank lines
/// and lines starting with `//` are skipped. Every invalid line is
/// reported, with its line number, not only the first.
pub fn parse(text: &str) -> Result<Vec<Case>, Vec<LineError>> {
    let mut cases = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with("//") {
            continue;
        }
        match parse_case(t, i + 1) {
            Ok(c) => cases.push(c),
            Err(message) => errors.push(LineError {
                line: i + 1,
                message,
            }),
        }
    }
    if errors.is_empty() {
        Ok(cases)
    } else {
        Err(errors)
    }
}

const EXPECT_FORM: &str = "expect {\"ok\": VALUE} or {\"error\": KIND}";

const CASE_FIELDS: &str = "task, args, expect, name, time_limit, soft_time_limit, message_contains";

/// A limit of a case, as in `run`'s object lines ([`Limits::parse_field`]).
fn duration(s: Option<&str>, field: &str) -> Result<Option<Duration>, String> {
    s.map(|s| Limits::parse_field(s, field)).transpose()
}

pub(super) fn parse_case(line: &str, lineno: usize) -> Result<Case, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut obj) = v else {
        return Err("a case is a JSON object like {\"task\": \"square\", \"args\": [3], \"expect\": {\"ok\": 9}}".into());
    };
    let string = |obj: &mut Map<String, Value>, field: &str| -> Result<Option<String>, String> {
        match obj.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!("\"{field}\" must be a string, not {other}")),
        }
    };
    let task = string(&mut obj, "task")?.ok_or("missing \"task\" (the task to run)")?;
    let name = string(&mut obj, "name")?;
    let args = match obj.remove("args") {
        None | Some(Value::Null) => Value::Array(vec![]),
        Some(a @ Value::Array(_)) => a,
        Some(other) => return Err(format!("\"args\" must be a JSON array, not {other}")),
    };
    let limits = Limits {
        hard: duration(string(&mut obj, "time_limit")?.as_deref(), "time_limit")?,
        soft: duration(
            string(&mut obj, "soft_time_limit")?.as_deref(),
            "soft_time_limit",
        )?,
    };
    let top_contains = string(&mut obj, "message_contains")?;
    let expect = match obj.remove("expect") {
        Some(Value::Object(e)) => parse_expect(e, top_contains)?,
        Some(other) => {
            return Err(format!(
                "\"expect\" must be an object, not {other}; {EXPECT_FORM}"
            ))
        }
        None => return Err(format!("missing \"expect\"; {EXPECT_FORM}")),
    };
    if let Some(field) = obj.keys().next() {
        return Err(format!("unknown field \"{field}\" (known: {CASE_FIELDS})"));
    }
    let named = name.is_some();
    let name = name.unwrap_or_else(|| format!("{task}({})", args_text(&args)));
    Ok(Case {
        name,
        named,
        line: lineno,
        task,
        args,
        limits,
        expect,
    })
}

fn parse_expect(mut e: Map<String, Value>, top_contains: Option<String>) -> Result<Expect, String> {
    let ok = e.remove("ok");
    let error = e.remove("error");
    let contains = match e.remove("message_contains") {
        None | Some(Value::Null) => top_contains,
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            return Err(format!(
                "\"message_contains\" must be a string, not {other}"
            ))
        }
    };
    if let Some(field) = e.keys().next() {
        return Err(format!(
            "unknown field \"{field}\" in \"expect\" (known: ok, error, message_contains)"
        ));
    }
    match (ok, error) {
        (Some(v), None) => {
            if contains.is_some() {
                return Err(
                    "\"message_contains\" goes with {\"error\": KIND}, not with \"ok\"".into(),
                );
            }
            Ok(Expect::Ok(v))
        }
        (None, Some(Value::String(k))) => {
            let kind = ErrorKind::parse(&k).ok_or_else(|| {
                let kinds: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown error kind {k:?} (one of: {})", kinds.join(", "))
            })?;
            Ok(Expect::Error {
                kind,
                message_contains: contains,
            })
        }
        (None, Some(other)) => Err(format!(
            "\"error\" must be an error kind such as \"panic\", not {other}"
        )),
        (Some(_), Some(_)) => Err("\"expect\" has both \"ok\" and \"error\"; pick one".into()),
        (None, None) => Err("\"expect\" needs \"ok\" or \"error\"".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_cases() {
        let text = r#"
{"task": "square", "args": [3], "expect": {"ok": 9}}
// a comment
{"name": "boom", "task": "panic", "args": ["x"], "expect": {"error": "panic", "message_contains": "x"}}
{"task": "spin", "args": [1], "time_limit": "200ms", "soft_time_limit": "50ms", "expect": {"error": "time_limit"}, "message_contains": "killed"}
{"task": "version", "expect": {"ok": null}}
"#;
        let cases = parse(text).unwrap();
        assert_eq!(cases.len(), 4);
        assert_eq!(cases[0].name, "square(3)");
        assert!(!cases[0].named);
        assert_eq!(cases[0].line, 2);
        assert_eq!(cases[0].expect, Expect::Ok(json!(9)));
        assert_eq!(cases[1].name, "boom");
        assert!(cases[1].named);
        assert_eq!(
            cases[1].expect,
            Expect::Error {
                kind: ErrorKind::Panic,
                message_contains: Some("x".into())
            }
        );
        assert_eq!(cases[2].limits.hard, Some(Duration::from_millis(200)));
        assert_eq!(cases[2].limits.soft, Some(Duration::from_millis(50)));
        assert_eq!(
            cases[2].expect,
            Expect::Error {
                kind: ErrorKind::TimeLimit,
                message_contains: Some("killed".into())
            }
        );
        assert_eq!(cases[3].args, json!([]));
        assert_eq!(cases[3].expect, Expect::Ok(Value::Null));
    }

    #[test]
    fn reports_every_bad_line() {
        let text = r#"{"task": "a", "args": [1], "expect": {"ok": 1}}
not json
{"args": [1], "expect": {"ok": 1}}
{"task": "a", "expect": {"error": "nope"}}
{"task": "a", "expect": {"ok": 1, "error": "panic"}}
{"task": "a", "args": 3, "expect": {"ok": 1}}
{"task": "a", "expect": {"ok": 1}, "tiem_limit": "1s"}
{"task": "a", "time_limit": "soon", "expect": {"ok": 1}}
{"task": "a"}
"#;
        let errors: Vec<String> = parse(text)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(errors.len(), 8, "{errors:#?}");
        assert!(errors[0].starts_with("line 2: not JSON"), "{}", errors[0]);
        assert!(errors[1].contains("missing \"task\""));
        assert!(errors[2].contains("unknown error kind \"nope\""));
        assert!(errors[3].contains("both"));
        assert!(errors[4].contains("\"args\" must be a JSON array"));
        assert!(errors[5].contains("unknown field \"tiem_limit\""));
        assert!(errors[6].contains("\"time_limit\""));
        assert!(errors[7].contains("missing \"expect\""));
    }

    #[test]
    fn hostile_lines_are_refused_with_their_reason() {
        for (line, reason) in [
            ("[1, 2]", "a case is a JSON object"),
            ("\"square\"", "a case is a JSON object"),
            (
                r#"{"task": 3, "expect": {"ok": 1}}"#,
                "\"task\" must be a string",
            ),
            (
                r#"{"task": "a", "name": [], "expect": {"ok": 1}}"#,
                "\"name\" must be a string",
            ),
            (
                r#"{"task": "a", "expect": 9}"#,
                "\"expect\" must be an object",
            ),
            (
                r#"{"task": "a", "expect": {}}"#,
                "needs \"ok\" or \"error\"",
            ),
            (
                r#"{"task": "a", "expect": {"error": 1}}"#,
                "must be an error kind",
            ),
            (
                r#"{"task": "a", "expect": {"ok": 1, "message_contains": "x"}}"#,
                "goes with {\"error\": KIND}",
            ),
            (
                r#"{"task": "a", "expect": {"error": "panic", "message_contains": 5}}"#,
                "\"message_contains\" must be a string",
            ),
            (
                r#"{"task": "a", "expect": {"error": "panic", "why": 1}}"#,
                "unknown field \"why\" in \"expect\"",
            ),
            (
                r#"{"task": "a", "time_limit": "0s", "expect": {"ok": 1}}"#,
                "must be longer than 0",
            ),
            (
                r#"{"task": "a", "soft_time_limit": 5, "expect": {"ok": 1}}"#,
                "\"soft_time_limit\" must be a string",
            ),
            (r#"{"task": "a", "expect": {"ok": 1}"#, "not JSON"),
        ] {
            let errors = parse(line).unwrap_err();
            assert_eq!(errors.len(), 1, "{line}");
            assert_eq!(errors[0].line, 1);
            assert!(errors[0].message.contains(reason), "{line}: {}", errors[0]);
        }
    }

    #[test]
    fn an_unreadable_file_names_its_path() {
        let err = read_file("/nonexistent/cases.jsonl").unwrap_err();
        assert!(matches!(err, ReadError::Io { .. }));
        assert!(err
            .to_string()
            .starts_with("cannot read /nonexistent/cases.jsonl: "));
    }
}
