//! [`Call`]: the outcome of one task call under test, and the assertions
//! on it (`expect_ok`, `expect_panic`, ...).

use std::fmt::{self, Debug};

use billiard_host::{Codec, ErrorKind, TaskError};
use billiard_plugin_api::codec;
use serde::de::DeserializeOwned;

/// Where a call ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// In the test process, through `billiard_host::Plugin`.
    InProcess,
    /// In a worker of a real `billiard_host::Pool`.
    Pool,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Place::InProcess => "in process",
            Place::Pool => "in the pool",
        })
    }
}

/// The outcome of one call of a task, with what is needed to explain it:
/// which task, which arguments, where it ran. The `expect_*` methods assert
/// the outcome and panic with a message that shows what was expected and
/// what happened (the error's kind and message, or the value).
#[derive(Clone)]
pub struct Call {
    pub(crate) plugin: String,
    pub(crate) task: String,
    /// The arguments as people read them (`3, "x"`).
    pub(crate) args: String,
    pub(crate) place: Place,
    pub(crate) codec: Codec,
    /// The task's declared return type, when the plugin has the task.
    pub(crate) returns: Option<String>,
    pub(crate) outcome: Result<Vec<u8>, TaskError>,
}

impl Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.label(), self.place, self.got())
    }
}

/// Renders an argument tuple as people write it: `(3, "x")` becomes `3, "x"`.
pub(crate) fn show_args<A: serde::Serialize>(args: &A) -> String {
    match serde_json::to_value(args) {
        Ok(serde_json::Value::Array(items)) => items
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        Ok(serde_json::Value::Null) => String::new(),
        Ok(other) => other.to_string(),
        Err(_) => "..".into(),
    }
}

/// Shortens `s` to at most `max` characters (on a char boundary).
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The success type of a declared return type: `Result<u64, String>` -> `u64`.
fn ok_type(returns: &str) -> &str {
    let r = returns.trim();
    match r.strip_prefix("Result<").and_then(|s| s.strip_suffix('>')) {
        Some(inner) => split_top_level_comma(inner).0.trim(),
        None => r,
    }
}

/// Splits `A, B` at the first comma outside angle brackets / parentheses.
fn split_top_level_comma(s: &str) -> (&str, &str) {
    let mut depth = 0i32;
    for (i, c) in s.char_indices() {
        match c {
            '<' | '(' | '[' => depth += 1,
            '>' | ')' | ']' => depth -= 1,
            ',' if depth == 0 => return (&s[..i], &s[i + 1..]),
            _ => {}
        }
    }
    (s, "")
}

/// A bincode result as people read it, when its declared type is a simple
/// one; otherwise its type and size.
fn describe_bincode(returns: Option<&str>, bytes: &[u8]) -> String {
    fn show<T: DeserializeOwned + Debug>(bytes: &[u8]) -> Option<String> {
        codec::decode::<T>(Codec::Bincode, bytes)
            .ok()
            .map(|v| format!("{v:?}"))
    }
    let ty = returns.map(ok_type);
    let shown = match ty {
        Some("u8") => show::<u8>(bytes),
        Some("u16") => show::<u16>(bytes),
        Some("u32") => show::<u32>(bytes),
        Some("u64") => show::<u64>(bytes),
        Some("u128") => show::<u128>(bytes),
        Some("usize") => show::<usize>(bytes),
        Some("i8") => show::<i8>(bytes),
        Some("i16") => show::<i16>(bytes),
        Some("i32") => show::<i32>(bytes),
        Some("i64") => show::<i64>(bytes),
        Some("i128") => show::<i128>(bytes),
        Some("isize") => show::<isize>(bytes),
        Some("f32") => show::<f32>(bytes),
        Some("f64") => show::<f64>(bytes),
        Some("bool") => show::<bool>(bytes),
        Some("String") => show::<String>(bytes),
        Some("()") => show::<()>(bytes),
        _ => None,
    };
    shown.unwrap_or_else(|| {
        format!(
            "a `{}` ({} bytes of bincode)",
            ty.unwrap_or("?"),
            bytes.len()
        )
    })
}

impl Call {
    /// `plugin.task(args)`
    pub fn label(&self) -> String {
        format!(
            "{}.{}({})",
            self.plugin,
            self.task,
            truncate(&self.args, 200)
        )
    }

    /// Where the call ran: in this process or in a pool worker.
    pub fn place(&self) -> Place {
        self.place
    }

    /// The raw outcome: the encoded result (bincode for typed calls, JSON
    /// for `call_json`) or the error.
    pub fn outcome(&self) -> &Result<Vec<u8>, TaskError> {
        &self.outcome
    }

    /// True if the call produced a value.
    pub fn is_ok(&self) -> bool {
        self.outcome.is_ok()
    }

    /// The error, if the call failed.
    pub fn error(&self) -> Option<&TaskError> {
        self.outcome.as_ref().err()
    }

    /// The error's kind, if the call failed.
    pub fn kind(&self) -> Option<ErrorKind> {
        self.error().map(|e| e.kind)
    }

    /// Decodes the result as `R` (no assertion).
    pub fn result<R: DeserializeOwned>(&self) -> Result<R, TaskError> {
        let bytes = self.outcome.as_ref().map_err(Clone::clone)?;
        codec::decode(self.codec, bytes).map_err(|e| {
            TaskError::new(
                ErrorKind::TaskError,
                format!(
                    "the result does not decode as `{}`: {e}",
                    std::any::type_name::<R>()
                ),
            )
        })
    }

    /// The outcome as people read it: `ok 9` or `panic: boom (at ...)`.
    pub fn got(&self) -> String {
        match &self.outcome {
            Ok(bytes) => {
                let value = match self.codec {
                    Codec::Json => String::from_utf8_lossy(bytes).into_owned(),
                    Codec::Bincode => describe_bincode(self.returns.as_deref(), bytes),
                };
                format!("ok {}", truncate(&value, 500))
            }
            Err(e) => format!("{}: {}", e.kind, e.message),
        }
    }

    #[track_caller]
    fn fail(&self, expected: &str, got: &str) -> ! {
        panic!(
            "billiard-testing: {} {}\n  expected: {expected}\n  got:      {got}",
            self.label(),
            self.place
        )
    }

    /// Asserts the call succeeded and returns its result decoded as `R`.
    #[track_caller]
    pub fn expect_ok<R: DeserializeOwned>(&self) -> R {
        match &self.outcome {
            Err(_) => self.fail("ok", &self.got()),
            Ok(bytes) => match codec::decode::<R>(self.codec, bytes) {
                Ok(v) => v,
                Err(e) => self.fail(
                    &format!("ok, a `{}`", std::any::type_name::<R>()),
                    &format!(
                        "{} that does not decode as that type ({e}); the task returns `{}`",
                        self.got(),
                        self.returns.as_deref().unwrap_or("?")
                    ),
                ),
            },
        }
    }

    /// Asserts the call succeeded with a result equal to `expected`.
    #[track_caller]
    pub fn expect_value<R: DeserializeOwned + PartialEq + Debug>(&self, expected: R) -> R {
        let got: R = match &self.outcome {
            Err(_) => self.fail(&format!("ok {expected:?}"), &self.got()),
            Ok(_) => self.expect_ok(),
        };
        if got != expected {
            self.fail(&format!("ok {expected:?}"), &format!("ok {got:?}"));
        }
        got
    }

    /// Asserts the call failed with an error of `kind`; returns the error.
    #[track_caller]
    pub fn expect_err(&self, kind: ErrorKind) -> TaskError {
        match &self.outcome {
            Err(e) if e.kind == kind => e.clone(),
            _ => self.fail(kind.as_str(), &self.got()),
        }
    }

    /// Asserts the call failed with an error of `kind` whose message
    /// contains `needle`; returns the error.
    #[track_caller]
    pub fn expect_err_containing(&self, kind: ErrorKind, needle: &str) -> TaskError {
        match &self.outcome {
            Err(e) if e.kind == kind && e.message.contains(needle) => e.clone(),
            _ => self.fail(
                &format!("{kind} with a message containing {needle:?}"),
                &self.got(),
            ),
        }
    }

    /// The task panicked (the worker survived).
    #[track_caller]
    pub fn expect_panic(&self) -> TaskError {
        self.expect_err(ErrorKind::Panic)
    }

    /// The task returned `Err`.
    #[track_caller]
    pub fn expect_task_error(&self) -> TaskError {
        self.expect_err(ErrorKind::TaskError)
    }

    /// The arguments did not decode into the task's types.
    #[track_caller]
    pub fn expect_bad_args(&self) -> TaskError {
        self.expect_err(ErrorKind::BadArgs)
    }

    /// The plugin has no such task.
    #[track_caller]
    pub fn expect_unknown_task(&self) -> TaskError {
        self.expect_err(ErrorKind::UnknownTask)
    }

    /// The worker died mid-job (pool only: in process, the test would die).
    #[track_caller]
    pub fn expect_worker_lost(&self) -> TaskError {
        self.expect_err(ErrorKind::WorkerLost)
    }

    /// The hard time limit passed and the worker was killed (pool only).
    #[track_caller]
    pub fn expect_time_limit(&self) -> TaskError {
        self.expect_err(ErrorKind::TimeLimit)
    }

    /// The soft time limit passed and the task stopped cooperatively.
    #[track_caller]
    pub fn expect_soft_time_limit(&self) -> TaskError {
        self.expect_err(ErrorKind::SoftTimeLimit)
    }

    /// The job was cancelled or its worker terminated on request.
    #[track_caller]
    pub fn expect_terminated(&self) -> TaskError {
        self.expect_err(ErrorKind::Terminated)
    }

    /// The plugin could not be loaded (in a pool's worker).
    #[track_caller]
    pub fn expect_plugin_load(&self) -> TaskError {
        self.expect_err(ErrorKind::PluginLoad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_type_strips_result() {
        assert_eq!(ok_type("u64"), "u64");
        assert_eq!(ok_type("Result<i64, String>"), "i64");
        assert_eq!(
            ok_type("Result<Vec<(u8, u16)>, Box<dyn Error>>"),
            "Vec<(u8, u16)>"
        );
    }

    #[test]
    fn bincode_values_are_shown_for_simple_types() {
        let nine = codec::encode(Codec::Bincode, &9u64).unwrap();
        assert_eq!(describe_bincode(Some("u64"), &nine), "9");
        assert_eq!(describe_bincode(Some("Result<u64, String>"), &nine), "9");
        let s = codec::encode(Codec::Bincode, &"hi".to_string()).unwrap();
        assert_eq!(describe_bincode(Some("String"), &s), "\"hi\"");
        assert_eq!(
            describe_bincode(Some("Item"), &s),
            "a `Item` (3 bytes of bincode)"
        );
    }

    #[test]
    fn args_are_shown_without_brackets() {
        assert_eq!(show_args(&(3u64, "x")), "3, \"x\"");
        assert_eq!(show_args(&()), "");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}
