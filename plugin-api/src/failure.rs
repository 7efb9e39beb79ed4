//! [`Failure`]: a task's error that says more than its text — the Python
//! exception class a Celery caller catches it as, and what the host should
//! do with the task's message (retry it, reject it, ignore it).
//!
//! A task returns it as `Result<T, Failure>` (or any `Result<T, E>` whose
//! `E: Into<Failure>`); a `Result<T, E>` with any other `E: Display` keeps
//! failing as a plain `task_error` with `E`'s text.
//!
//! On the wire (see [`FAILURE_DETAIL_PREFIX`]) a failure with a class or a
//! directive is written as a prefix that no UTF-8 text can start with,
//! followed by a JSON object; the glue writes it only when the host raised
//! [`HOST_FLAG_FAILURE_DETAIL`](crate::HOST_FLAG_FAILURE_DETAIL) in the
//! task's context, so an older host only ever sees the message.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// What a [`Failure`] asks the host to do with the task's message, as
/// Celery's `self.retry()`, `raise Reject(...)` and `raise Ignore()` do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Directive {
    /// Run the task again later: the same task id, one more retry.
    Retry {
        /// How long to wait first (`None`: the task's or the worker's
        /// retry policy decides, as Celery's `default_retry_delay`).
        countdown: Option<Duration>,
        /// The cap on retries for this decision (`None`: the task's or
        /// the worker's `max_retries`).
        max_retries: Option<u32>,
    },
    /// End the message as rejected: put back on its queue (`requeue`), or
    /// dropped with the failure stored.
    Reject {
        /// Put the message back on its queue.
        requeue: bool,
    },
    /// End the message as if it never ran: acknowledged, nothing stored.
    Ignore,
}

/// A task's failure, with an optional Python exception class and an
/// optional [`Directive`].
///
/// ```
/// use std::time::Duration;
/// use billiard_plugin_api::{task, Failure};
///
/// /// Parses a port number; a bad one is a `ValueError` for a Python caller.
/// #[task]
/// fn port(text: String) -> Result<u16, Failure> {
///     text.trim()
///         .parse()
///         .map_err(|e| Failure::new(format!("not a port: {e}")).raise_as("ValueError"))
/// }
///
/// /// Asks to be run again in 5 s, at most 10 times (Celery's
/// /// `self.retry(countdown=5, max_retries=10)`).
/// #[task]
/// fn fetch(url: String) -> Result<String, Failure> {
///     Err(Failure::retry()
///         .reason(format!("{url} is not reachable yet"))
///         .countdown(Duration::from_secs(5))
///         .max_retries(10))
/// }
///
/// /// A class of the app's own module: `except myapp.errors.Expected:`.
/// #[task]
/// fn check(n: u64) -> Result<u64, Failure> {
///     if n == 0 {
///         return Err(Failure::new("zero").raise_as("myapp.errors.Expected"));
///     }
///     Ok(n)
/// }
///
/// let f = Failure::new("bad").raise_as("myapp.errors.Expected");
/// assert_eq!(f.exception_class(), Some("myapp.errors.Expected"));
/// // A name that is not a Python class path is refused, never half-used:
/// let f = Failure::new("bad").raise_as("not a class!");
/// assert_eq!(f.exception_class(), None);
/// assert!(f.message().starts_with("bad (raise_as refused: "));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    message: String,
    exception: Option<String>,
    directive: Option<Directive>,
}

/// Why a name cannot be a Python exception class (see
/// [`Failure::try_raise_as`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidClassName(pub String);

impl fmt::Display for InvalidClassName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidClassName {}

/// The longest exception class path accepted (module and class).
pub const MAX_CLASS_NAME: usize = 256;

impl Failure {
    /// A plain failure with `message` (a `task_error`, Python's default
    /// class for it, until [`raise_as`](Failure::raise_as) names one).
    pub fn new(message: impl fmt::Display) -> Failure {
        Failure {
            message: message.to_string(),
            exception: None,
            directive: None,
        }
    }

    /// Asks for the task to run again later (Celery's `self.retry()`);
    /// tune it with [`countdown`](Failure::countdown) and
    /// [`max_retries`](Failure::max_retries), explain it with
    /// [`reason`](Failure::reason). Past the cap on retries the failure is
    /// stored as final.
    pub fn retry() -> Failure {
        Failure {
            message: "the task asked to be retried".into(),
            exception: None,
            directive: Some(Directive::Retry {
                countdown: None,
                max_retries: None,
            }),
        }
    }

    /// Ends the message as rejected (Celery's `raise Reject(requeue=...)`):
    /// back on its queue when `requeue`, else dropped and stored as a
    /// failure.
    pub fn reject(requeue: bool) -> Failure {
        Failure {
            message: "the task rejected its message".into(),
            exception: None,
            directive: Some(Directive::Reject { requeue }),
        }
    }

    /// Ends the message as if it never ran (Celery's `raise Ignore()`):
    /// acknowledged, no result stored.
    pub fn ignore() -> Failure {
        Failure {
            message: "the task ignored its message".into(),
            exception: None,
            directive: Some(Directive::Ignore),
        }
    }

    /// The same failure with `message` as its text.
    pub fn reason(mut self, message: impl fmt::Display) -> Failure {
        self.message = message.to_string();
        self
    }

    /// The same failure raised as Python class `class` for a Celery caller:
    /// a bare name is a built-in (`"ValueError"`, `"KeyError"`: only
    /// Python's own built-in exceptions), a dotted one a module and a class
    /// (`"myapp.errors.Expected"`). A name that is neither is refused: the
    /// class stays unset and the message says why (never a panic); use
    /// [`try_raise_as`](Failure::try_raise_as) to handle that yourself.
    pub fn raise_as(self, class: &str) -> Failure {
        match check_class_name(class) {
            Ok(()) => Failure {
                exception: Some(class.to_string()),
                ..self
            },
            Err(e) => {
                let message = format!("{} (raise_as refused: {e})", self.message);
                Failure { message, ..self }
            }
        }
    }

    /// [`raise_as`](Failure::raise_as) that returns the refusal instead of
    /// noting it in the message.
    pub fn try_raise_as(self, class: &str) -> Result<Failure, InvalidClassName> {
        check_class_name(class)?;
        Ok(Failure {
            exception: Some(class.to_string()),
            ..self
        })
    }

    /// For a [`Failure::retry`]: wait `countdown` before the next attempt
    /// (Celery's `countdown=`). No effect on other failures.
    pub fn countdown(mut self, countdown: Duration) -> Failure {
        if let Some(Directive::Retry { countdown: c, .. }) = &mut self.directive {
            *c = Some(countdown);
        }
        self
    }

    /// For a [`Failure::retry`]: retry at most `n` times (Celery's
    /// `max_retries=`), overriding the task's and the worker's cap. No
    /// effect on other failures.
    pub fn max_retries(mut self, n: u32) -> Failure {
        if let Some(Directive::Retry { max_retries, .. }) = &mut self.directive {
            *max_retries = Some(n);
        }
        self
    }

    /// The failure's text.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The Python class it is raised as (`"ValueError"`,
    /// `"myapp.errors.Expected"`), if one was named.
    pub fn exception_class(&self) -> Option<&str> {
        self.exception.as_deref()
    }

    /// What it asks the host to do, if anything.
    pub fn directive(&self) -> Option<&Directive> {
        self.directive.as_ref()
    }

    /// Whether it says more than its message (then the glue encodes it).
    pub(crate) fn has_detail(&self) -> bool {
        self.exception.is_some() || self.directive.is_some()
    }

    /// Writes the wire form: [`FAILURE_DETAIL_PREFIX`] and the JSON object.
    pub(crate) fn encode_into(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        #[derive(Serialize)]
        struct Wire<'a> {
            message: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            exception: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            directive: Option<WireDirective>,
        }
        #[derive(Serialize)]
        #[serde(rename_all = "snake_case")]
        enum WireDirective {
            Retry {
                #[serde(skip_serializing_if = "Option::is_none")]
                countdown_ms: Option<u64>,
                #[serde(skip_serializing_if = "Option::is_none")]
                max_retries: Option<u32>,
            },
            Reject {
                requeue: bool,
            },
            Ignore,
        }
        let directive = self.directive.map(|d| match d {
            Directive::Retry {
                countdown,
                max_retries,
            } => WireDirective::Retry {
                countdown_ms: countdown.map(|c| u64::try_from(c.as_millis()).unwrap_or(u64::MAX)),
                max_retries,
            },
            Directive::Reject { requeue } => WireDirective::Reject { requeue },
            Directive::Ignore => WireDirective::Ignore,
        });
        out.write_all(FAILURE_DETAIL_PREFIX)?;
        serde_json::to_writer(
            out,
            &Wire {
                message: &self.message,
                exception: self.exception.as_deref(),
                directive,
            },
        )
        .map_err(std::io::Error::other)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::new(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::new(message)
    }
}

impl From<crate::Stopped> for Failure {
    /// `ctx.check()?` in a task returning `Result<T, Failure>`: the glue
    /// reports the stop (soft time limit, cancellation), not this text.
    fn from(s: crate::Stopped) -> Failure {
        Failure::new(s)
    }
}

/// `result.raise_as("ValueError")?`: any `Result<T, E: Display>` as a
/// [`Failure`] of that class.
///
/// ```
/// use billiard_plugin_api::{task, Failure, RaiseAs};
///
/// #[task]
/// fn parse(text: String) -> Result<i64, Failure> {
///     Ok(text.trim().parse::<i64>().raise_as("ValueError")? * 2)
/// }
/// ```
pub trait RaiseAs<T> {
    /// The error as a [`Failure`] raised as `class` (see
    /// [`Failure::raise_as`]).
    fn raise_as(self, class: &str) -> Result<T, Failure>;
}

impl<T, E: fmt::Display> RaiseAs<T> for Result<T, E> {
    fn raise_as(self, class: &str) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(e).raise_as(class))
    }
}

/// The bytes a task's error output starts with when it carries a
/// [`Failure`]'s detail; a JSON object follows (`{"message": ...,
/// "exception": "ValueError", "directive": {"retry": {"countdown_ms": 5000,
/// "max_retries": 10}} | {"reject": {"requeue": true}} | "ignore"}`).
/// Its first byte, 0xFF, never occurs in UTF-8, so no plain-text error
/// (the only thing plugins of earlier layouts write) can start with it.
pub const FAILURE_DETAIL_PREFIX: &[u8] = b"\xFFbilliard-failure/1\n";

/// Python 3's built-in exception classes (`builtins`), the names a bare
/// [`Failure::raise_as`] accepts.
pub const PYTHON_BUILTIN_EXCEPTIONS: &[&str] = &[
    "ArithmeticError",
    "AssertionError",
    "AttributeError",
    "BaseException",
    "BaseExceptionGroup",
    "BlockingIOError",
    "BrokenPipeError",
    "BufferError",
    "BytesWarning",
    "ChildProcessError",
    "ConnectionAbortedError",
    "ConnectionError",
    "ConnectionRefusedError",
    "ConnectionResetError",
    "DeprecationWarning",
    "EOFError",
    "EncodingWarning",
    "EnvironmentError",
    "Exception",
    "ExceptionGroup",
    "FileExistsError",
    "FileNotFoundError",
    "FloatingPointError",
    "FutureWarning",
    "GeneratorExit",
    "IOError",
    "ImportError",
    "ImportWarning",
    "IndentationError",
    "IndexError",
    "InterruptedError",
    "IsADirectoryError",
    "KeyError",
    "KeyboardInterrupt",
    "LookupError",
    "MemoryError",
    "ModuleNotFoundError",
    "NameError",
    "NotADirectoryError",
    "NotImplementedError",
    "OSError",
    "OverflowError",
    "PendingDeprecationWarning",
    "PermissionError",
    "ProcessLookupError",
    "PythonFinalizationError",
    "RecursionError",
    "ReferenceError",
    "ResourceWarning",
    "RuntimeError",
    "RuntimeWarning",
    "StopAsyncIteration",
    "StopIteration",
    "SyntaxError",
    "SyntaxWarning",
    "SystemError",
    "SystemExit",
    "TabError",
    "TimeoutError",
    "TypeError",
    "UnboundLocalError",
    "UnicodeDecodeError",
    "UnicodeEncodeError",
    "UnicodeError",
    "UnicodeTranslateError",
    "UnicodeWarning",
    "UserWarning",
    "ValueError",
    "Warning",
    "ZeroDivisionError",
];

/// Checks that `class` names a Python exception class: a built-in by its
/// bare name ([`PYTHON_BUILTIN_EXCEPTIONS`]), or identifiers separated by
/// dots (a module path, then the class), at most `MAX_CLASS_NAME` (256) bytes.
pub fn check_class_name(class: &str) -> Result<(), InvalidClassName> {
    let bad = |why: String| Err(InvalidClassName(why));
    if class.is_empty() {
        return bad("the exception class name is empty".into());
    }
    if class.len() > MAX_CLASS_NAME {
        return bad(format!(
            "the exception class name is {} bytes long, more than {MAX_CLASS_NAME}",
            class.len()
        ));
    }
    for part in class.split('.') {
        if !is_identifier(part) {
            let shown: String = class.escape_debug().collect();
            return bad(format!(
                "`{shown}` is not a Python class path (identifiers separated by dots, \
                 e.g. `ValueError` or `myapp.errors.Expected`)"
            ));
        }
    }
    if !class.contains('.') && !PYTHON_BUILTIN_EXCEPTIONS.contains(&class) {
        return bad(format!(
            "`{class}` is not one of Python's built-in exceptions; name a class of your \
             own with its module (e.g. `myapp.errors.{class}`)"
        ));
    }
    Ok(())
}

/// A Python identifier: a letter or `_`, then letters, digits or `_`.
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c == '_' || c.is_alphabetic() => {}
        _ => return false,
    }
    chars.all(|c| c == '_' || c.is_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_are_checked() {
        for ok in [
            "ValueError",
            "myapp.errors.Expected",
            "_p.Q",
            "builtins.KeyError",
        ] {
            assert_eq!(check_class_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Value Error",
            "a..b",
            ".a",
            "a.",
            "1a.B",
            "a-b.C",
            "Expected",
            "x\n.Y",
        ] {
            assert!(check_class_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_class_name(&"a.".repeat(200)).is_err());
    }

    #[test]
    fn directives_take_their_options_and_others_ignore_them() {
        let f = Failure::retry()
            .countdown(Duration::from_secs(2))
            .max_retries(4);
        assert_eq!(
            f.directive(),
            Some(&Directive::Retry {
                countdown: Some(Duration::from_secs(2)),
                max_retries: Some(4)
            })
        );
        let f = Failure::reject(true).countdown(Duration::from_secs(2));
        assert_eq!(f.directive(), Some(&Directive::Reject { requeue: true }));
        let f = Failure::new("x").max_retries(3);
        assert_eq!(f.directive(), None);
    }

    #[test]
    fn the_wire_form_starts_with_the_prefix_and_is_json() {
        let mut out = Vec::new();
        Failure::retry()
            .reason("later")
            .countdown(Duration::from_millis(1500))
            .raise_as("KeyError")
            .encode_into(&mut out)
            .unwrap();
        assert!(out.starts_with(FAILURE_DETAIL_PREFIX));
        assert!(std::str::from_utf8(&out).is_err(), "never valid UTF-8");
        let v: serde_json::Value =
            serde_json::from_slice(&out[FAILURE_DETAIL_PREFIX.len()..]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"message": "later", "exception": "KeyError",
                "directive": {"retry": {"countdown_ms": 1500}}})
        );
        let mut out = Vec::new();
        Failure::ignore().encode_into(&mut out).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&out[FAILURE_DETAIL_PREFIX.len()..]).unwrap();
        assert_eq!(v["directive"], "ignore");
    }
}
