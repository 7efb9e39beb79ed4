//! The outcome types every job ends with (the failure-semantics contract).

use billiard_plugin_api::Status;
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

/// What a failing task asks the host to do with its message, as Celery's
/// `self.retry()`, `raise Reject(...)` and `raise Ignore()` do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Directive {
    /// Run the task again, later: the same task id, `retries` + 1.
    Retry {
        /// How long to wait before the next attempt (None: the task's or
        /// worker's retry policy decides).
        #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_millis")]
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
