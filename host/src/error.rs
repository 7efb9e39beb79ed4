//! The outcome types every job ends with (the failure-semantics contract).

use std::time::Duration;

use billiard_plugin_api::{check_class_name, Status, FAILURE_DETAIL_PREFIX};
use serde::{Deserialize, Serialize};

/// The kind of a failed job. The names (`as_str`) are a contract: the CLI
/// prints them and outside tools match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The task panicked; the worker survived.
    Panic,
    /// The task returned `Err`.
    TaskError,
    /// The caller's types do not fit the task's: the arguments did not
    /// decode into the task's parameter types, or (typed `Pool` calls) the
    /// result did not decode into the type the caller asked for.
    BadArgs,
    /// No such task (or plugin).
    UnknownTask,
    /// The worker died mid-job; it was replaced.
    WorkerLost,
    /// The task passed its soft limit and stopped cooperatively.
    SoftTimeLimit,
    /// The hard limit passed; the worker was killed and replaced.
    TimeLimit,
    /// The job was cancelled or its worker terminated on request.
    Terminated,
    /// The plugin could not be loaded.
    PluginLoad,
}

impl ErrorKind {
    /// Every kind, each once (for iterating over them, e.g. in [`ErrorKind::parse`]).
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Panic,
        ErrorKind::TaskError,
        ErrorKind::BadArgs,
        ErrorKind::UnknownTask,
        ErrorKind::WorkerLost,
        ErrorKind::SoftTimeLimit,
        ErrorKind::TimeLimit,
        ErrorKind::Terminated,
        ErrorKind::PluginLoad,
    ];

    /// The kind's stable name (`task_error`, `time_limit`, ...), as result
    /// lines and Celery results show it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Panic => "panic",
            ErrorKind::TaskError => "task_error",
            ErrorKind::BadArgs => "bad_args",
            ErrorKind::UnknownTask => "unknown_task",
            ErrorKind::WorkerLost => "worker_lost",
            ErrorKind::SoftTimeLimit => "soft_time_limit",
            ErrorKind::TimeLimit => "time_limit",
            ErrorKind::Terminated => "terminated",
            ErrorKind::PluginLoad => "plugin_load",
        }
    }

    /// The kind named `s` ([`ErrorKind::as_str`]'s inverse); `None` for an
    /// unknown name.
    pub fn parse(s: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The kind of a non-`Ok` status reported by a plugin.
    pub fn from_status(status: Status) -> Option<ErrorKind> {
        Some(match status {
            Status::Ok => return None,
            Status::Panic => ErrorKind::Panic,
            Status::TaskError => ErrorKind::TaskError,
            Status::BadArgs => ErrorKind::BadArgs,
            Status::UnknownTask => ErrorKind::UnknownTask,
            Status::SoftTimeLimit => ErrorKind::SoftTimeLimit,
            Status::Terminated => ErrorKind::Terminated,
        })
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job that did not produce a value: its kind and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct TaskError {
    /// What went wrong, in the contract's terms.
    pub kind: ErrorKind,
    /// What went wrong, for people (the panic message, the task's error text,
    /// which limit passed, ...).
    pub message: String,
    /// What the task said about its own failure beyond its text: the
    /// exception class it is raised as for a Python caller, and what it asks
    /// the host to do with its message (retry, reject, ignore). None for
    /// every failure the host itself names, and for plugins that say nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Box<FailureDetail>>,
}

impl TaskError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        TaskError {
            kind,
            message: message.into(),
            detail: None,
        }
    }

    /// The same error carrying `detail`.
    pub fn with_detail(mut self, detail: FailureDetail) -> Self {
        self.detail = Some(Box::new(detail));
        self
    }

    /// What the task asked the host to do with its message, if anything.
    pub fn directive(&self) -> Option<&Directive> {
        self.detail.as_ref().and_then(|d| d.directive.as_ref())
    }

    /// The exception class the task named for its failure, if any.
    pub fn exception_class(&self) -> Option<&ExceptionClass> {
        self.detail.as_ref().and_then(|d| d.exception.as_ref())
    }

    /// The error a plugin reported with a failed status of `kind` and its
    /// output `out`: the output's text (lossily UTF-8, as always), or, for
    /// a `task_error` that starts with [`FAILURE_DETAIL_PREFIX`], the
    /// `Failure` it encodes: its message and its [`FailureDetail`]. An
    /// encoding that does not decode (a hostile or broken plugin) is a
    /// plain `task_error` saying so, never a directive.
    pub fn from_plugin_output(kind: ErrorKind, out: &[u8]) -> TaskError {
        match out.strip_prefix(FAILURE_DETAIL_PREFIX) {
            Some(json) if kind == ErrorKind::TaskError => match decode_failure(json) {
                Ok((message, detail)) => TaskError::new(kind, message).with_detail(detail),
                Err(why) => {
                    let text = String::from_utf8_lossy(json);
                    let shown: String = text.chars().take(MALFORMED_SHOWN).collect();
                    let more = if shown.len() < text.len() { "..." } else { "" };
                    TaskError::new(
                        kind,
                        format!("the plugin's failure detail is malformed ({why}): {shown}{more}"),
                    )
                }
            },
            _ => TaskError::new(kind, String::from_utf8_lossy(out).into_owned()),
        }
    }
}

/// How much of a malformed failure detail its error message quotes.
const MALFORMED_SHOWN: usize = 512;

/// Decodes the JSON of a `Failure` (after [`FAILURE_DETAIL_PREFIX`]),
/// checking what a plugin could get wrong: the class path (the rules of
/// `billiard_plugin_api::check_class_name`), the countdown's range.
fn decode_failure(json: &[u8]) -> Result<(String, FailureDetail), String> {
    #[derive(Deserialize)]
    struct Wire {
        message: String,
        #[serde(default)]
        exception: Option<String>,
        #[serde(default)]
        directive: Option<WireDirective>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum WireDirective {
        Retry {
            #[serde(default)]
            countdown_ms: Option<u64>,
            #[serde(default)]
            max_retries: Option<u32>,
        },
        Reject {
            requeue: bool,
        },
        Ignore,
    }
    let w: Wire = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let exception = match w.exception {
        None => None,
        Some(class) => {
            check_class_name(&class).map_err(|e| e.to_string())?;
            Some(ExceptionClass::parse(&class))
        }
    };
    let directive = match w.directive {
        None => None,
        Some(WireDirective::Retry {
            countdown_ms,
            max_retries,
        }) => {
            let countdown = countdown_ms
                .map(|ms| crate::bounds::check_duration("countdown", Duration::from_millis(ms)))
                .transpose()
                .map_err(|e| e.to_string())?;
            Some(Directive::Retry {
                countdown,
                max_retries,
            })
        }
        Some(WireDirective::Reject { requeue }) => Some(Directive::Reject { requeue }),
        Some(WireDirective::Ignore) => Some(Directive::Ignore),
    };
    Ok((
        w.message,
        FailureDetail {
            exception,
            directive,
        },
    ))
}

/// A task's own account of its failure (see [`TaskError::detail`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureDetail {
    /// The Python exception class a Celery caller sees (None: the kind's
    /// default mapping, `TaskError` for `task_error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception: Option<ExceptionClass>,
    /// What the task asks the host to do with its message (None: the
    /// failure is final, as any other).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directive: Option<Directive>,
}

/// A Python exception class: `module.name` (`builtins.ValueError`,
/// `myapp.errors.Expected`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionClass {
    /// The module (`builtins` for Python's built-in exceptions).
    pub module: String,
    /// The class name.
    pub name: String,
}

impl ExceptionClass {
    /// Splits a checked class path (`billiard_plugin_api::check_class_name`):
    /// a bare name is a built-in (`ValueError`: module `builtins`), a dotted
    /// one is the module up to its last dot and the class after it.
    pub fn parse(path: &str) -> ExceptionClass {
        match path.rsplit_once('.') {
            Some((module, name)) => ExceptionClass {
                module: module.to_string(),
                name: name.to_string(),
            },
            None => ExceptionClass {
                module: "builtins".to_string(),
                name: path.to_string(),
            },
        }
    }

    /// Whether it is one of Python's built-in exceptions (`builtins`).
    pub fn is_builtin(&self) -> bool {
        self.module == "builtins"
    }
}

impl std::fmt::Display for ExceptionClass {
    /// As Python's tracebacks name a class: `ValueError` for a built-in,
    /// `myapp.errors.Expected` for others.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_builtin() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}.{}", self.module, self.name)
        }
    }
}

/// What a failing task asks the host to do with its message, as Celery's
/// `self.retry()`, `raise Reject(...)` and `raise Ignore()` do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Directive {
    /// Run the task again, later: the same task id, `retries` + 1.
    Retry {
        /// How long to wait before the next attempt (None: the task's or
        /// worker's retry policy decides).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "opt_millis",
            rename = "countdown_ms"
        )]
        countdown: Option<std::time::Duration>,
        /// Overrides the policy's cap on attempts for this decision only
        /// (Celery's `retry(max_retries=...)`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_retries: Option<u32>,
    },
    /// End the message as rejected: back on its queue (`requeue`), or
    /// dropped with the failure stored.
    Reject {
        /// Put the message back on its queue.
        requeue: bool,
    },
    /// End the message as if it never ran: acked, nothing stored.
    Ignore,
}

/// Durations as whole milliseconds in serialized details.
mod opt_millis {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(json: &str) -> Vec<u8> {
        let mut v = FAILURE_DETAIL_PREFIX.to_vec();
        v.extend_from_slice(json.as_bytes());
        v
    }

    #[test]
    fn a_failure_detail_decodes_and_plain_text_stays_text() {
        let e = TaskError::from_plugin_output(
            ErrorKind::TaskError,
            &encoded(
                r#"{"message":"m","exception":"myapp.errors.Expected","directive":{"retry":{"countdown_ms":1500,"max_retries":2}}}"#,
            ),
        );
        assert_eq!(e.message, "m");
        assert_eq!(
            e.exception_class(),
            Some(&ExceptionClass {
                module: "myapp.errors".into(),
                name: "Expected".into()
            })
        );
        assert_eq!(
            e.directive(),
            Some(&Directive::Retry {
                countdown: Some(Duration::from_millis(1500)),
                max_retries: Some(2)
            })
        );
        let e = TaskError::from_plugin_output(
            ErrorKind::TaskError,
            &encoded(r#"{"message":"x","exception":"KeyError","directive":"ignore"}"#),
        );
        assert_eq!(
            e.exception_class().map(|c| c.to_string()).as_deref(),
            Some("KeyError")
        );
        assert_eq!(e.directive(), Some(&Directive::Ignore));
        // Text, even text that looks like the encoding, is text.
        for text in [
            &b"plain"[..],
            br#"billiard-failure/1 {"message":"x","directive":"ignore"}"#,
        ] {
            let e = TaskError::from_plugin_output(ErrorKind::TaskError, text);
            assert_eq!(e.detail, None);
            assert_eq!(e.message.as_bytes(), text);
        }
        // Only a task_error carries a detail.
        let e = TaskError::from_plugin_output(
            ErrorKind::Panic,
            &encoded(r#"{"message":"x","directive":"ignore"}"#),
        );
        assert_eq!(e.detail, None);
    }

    #[test]
    fn a_malformed_failure_detail_is_a_plain_task_error() {
        for bad in [
            "",
            "{",
            r#"{"exception":"ValueError"}"#,
            r#"{"message":"m","exception":"not a class"}"#,
            r#"{"message":"m","exception":"Expected"}"#,
            r#"{"message":"m","directive":"explode"}"#,
            r#"{"message":"m","directive":{"retry":{"countdown_ms":18446744073709551615}}}"#,
            r#"{"message":"m","directive":{"retry":{"max_retries":-1}}}"#,
            r#"{"message":"m","directive":{"reject":{}}}"#,
        ] {
            let e = TaskError::from_plugin_output(ErrorKind::TaskError, &encoded(bad));
            assert_eq!(e.kind, ErrorKind::TaskError, "{bad}");
            assert_eq!(e.detail, None, "{bad}");
            assert!(
                e.message
                    .starts_with("the plugin's failure detail is malformed ("),
                "{bad}: {}",
                e.message
            );
        }
        let huge = format!(r#"{{"message":"{}""#, "x".repeat(100_000));
        let e = TaskError::from_plugin_output(ErrorKind::TaskError, &encoded(&huge));
        assert!(e.message.len() < 2_000, "{}", e.message.len());
    }

    #[test]
    fn kind_names_are_the_contract() {
        let names: Vec<_> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "panic",
                "task_error",
                "bad_args",
                "unknown_task",
                "worker_lost",
                "soft_time_limit",
                "time_limit",
                "terminated",
                "plugin_load"
            ]
        );
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }
}
