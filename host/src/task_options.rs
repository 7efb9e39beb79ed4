//! A task's registration options (`#[task(rate_limit = "100/m",
//! max_retries = 5, autoretry_for = "task_error,panic", retry_backoff =
//! "1s", ...)]`), as Celery's `@app.task(...)` takes them: the plugin
//! exports them as one JSON object per task (`PluginMod::task_options`),
//! checked at compile time by the macro and again here, at load time, since
//! a plugin may be hostile. `inspect --json` shows the same object.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ErrorKind;
use crate::retry::{Backoff, RetryPolicy, DEFAULT_BACKOFF_MAX};

/// A task's registration options; every field unset (`{}`) by default, and
/// for plugins built before options existed. Task options override the
/// worker's defaults ([`TaskOptions::retry_policy`]).
///
/// Serialized for people (JSON: `inspect --json`, the plugin's own object)
/// with only the options that are set and durations as humantime text
/// (`"1s"`, `"10m"`); for programs (bincode: the zygote's plugin list)
/// every field, in order, since bincode cannot skip one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskOptions {
    /// Celery's task `name` (`#[task(name = "proj.tasks.add")]`): the name
    /// a Celery client sends, which the worker resolves before any
    /// `plugin.task` splitting (checked by [`check_name`]).
    pub name: Option<String>,
    /// Parameters' defaults by name (`#[task(defaults(z = 3))]`, and `null`
    /// for a trailing `Option<T>`): what a missing argument takes.
    pub defaults: BTreeMap<String, serde_json::Value>,
    /// `#[task(varargs)]`: the last parameter (a list) takes every extra
    /// positional argument, as Python's `*args`.
    pub varargs: bool,
    /// Celery's `rate_limit`: `N`, `N/s`, `N/m` or `N/h` tasks per worker
    /// instance (checked by [`check_rate`]).
    pub rate_limit: Option<String>,
    /// Celery's `max_retries`: the cap on retries of this task.
    pub max_retries: Option<u32>,
    /// Celery's `autoretry_for`, by failure kind: the kinds retried without
    /// the task asking (`worker_lost` is `task_retry_on_worker_lost`).
    /// `Some(vec![])` says "none" even when the worker's default lists some.
    pub autoretry_for: Option<Vec<ErrorKind>>,
    /// Celery's `retry_backoff`: exponential backoff from this first delay
    /// (`true` in the plugin's object: 1 s; `false`: none).
    pub retry_backoff: Option<Duration>,
    /// Celery's `retry_backoff_max`: no backoff delay is longer.
    pub retry_backoff_max: Option<Duration>,
    /// Celery's `retry_jitter`: backoff delays drawn from `0..=delay`.
    pub retry_jitter: Option<bool>,
    /// Celery's `default_retry_delay`: the delay without backoff.
    pub default_retry_delay: Option<Duration>,
}

/// [`TaskOptions`] for programs: every field.
#[derive(Serialize, Deserialize)]
struct Binary {
    name: Option<String>,
    /// Values as JSON text: bincode cannot carry a `serde_json::Value`.
    defaults: Vec<(String, String)>,
    varargs: bool,
    rate_limit: Option<String>,
    max_retries: Option<u32>,
    autoretry_for: Option<Vec<ErrorKind>>,
    retry_backoff: Option<Duration>,
    retry_backoff_max: Option<Duration>,
    retry_jitter: Option<bool>,
    default_retry_delay: Option<Duration>,
}

/// [`TaskOptions`] for people: the options that are set.
#[derive(Serialize, Deserialize)]
struct Text {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    defaults: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    varargs: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate_limit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    autoretry_for: Option<Vec<ErrorKind>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "backoff_text"
    )]
    retry_backoff: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "text")]
    retry_backoff_max: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_jitter: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "text")]
    default_retry_delay: Option<Duration>,
}

impl Serialize for TaskOptions {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let o = self.clone();
        if s.is_human_readable() {
            Text {
                name: o.name,
                defaults: o.defaults,
                varargs: o.varargs,
                rate_limit: o.rate_limit,
                max_retries: o.max_retries,
                autoretry_for: o.autoretry_for,
                retry_backoff: o.retry_backoff,
                retry_backoff_max: o.retry_backoff_max,
                retry_jitter: o.retry_jitter,
                default_retry_delay: o.default_retry_delay,
            }
            .serialize(s)
        } else {
            Binary {
                name: o.name,
                defaults: o
                    .defaults
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_string()))
                    .collect(),
                varargs: o.varargs,
                rate_limit: o.rate_limit,
                max_retries: o.max_retries,
                autoretry_for: o.autoretry_for,
                retry_backoff: o.retry_backoff,
                retry_backoff_max: o.retry_backoff_max,
                retry_jitter: o.retry_jitter,
                default_retry_delay: o.default_retry_delay,
            }
            .serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for TaskOptions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TaskOptions, D::Error> {
        Ok(if d.is_human_readable() {
            let t = Text::deserialize(d)?;
            TaskOptions {
                name: t.name,
                defaults: t.defaults,
                varargs: t.varargs,
                rate_limit: t.rate_limit,
                max_retries: t.max_retries,
                autoretry_for: t.autoretry_for,
                retry_backoff: t.retry_backoff,
                retry_backoff_max: t.retry_backoff_max,
                retry_jitter: t.retry_jitter,
                default_retry_delay: t.default_retry_delay,
            }
        } else {
            let b = Binary::deserialize(d)?;
            let mut defaults = BTreeMap::new();
            for (k, v) in b.defaults {
                let v = serde_json::from_str(&v).map_err(serde::de::Error::custom)?;
                defaults.insert(k, v);
            }
            TaskOptions {
                name: b.name,
                defaults,
                varargs: b.varargs,
                rate_limit: b.rate_limit,
                max_retries: b.max_retries,
                autoretry_for: b.autoretry_for,
                retry_backoff: b.retry_backoff,
                retry_backoff_max: b.retry_backoff_max,
                retry_jitter: b.retry_jitter,
                default_retry_delay: b.default_retry_delay,
            }
        })
    }
}

/// Why a plugin's options for a task do not parse (the plugin's load fails
/// naming the task).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadOptions(String);

impl TaskOptions {
    /// Parses the JSON object a plugin exports for one task (empty text:
    /// none), checking every value as the `#[task]` macro does. Keys this
    /// host does not know are ignored (a newer plugin-api's options).
    pub fn from_plugin(json: &str) -> Result<TaskOptions, BadOptions> {
        if json.trim().is_empty() {
            return Ok(TaskOptions::default());
        }
        if json.len() > MAX_OPTIONS_TEXT {
            return Err(BadOptions(format!(
                "its options are {} bytes of JSON, more than {MAX_OPTIONS_TEXT}",
                json.len()
            )));
        }
        let o: TaskOptions = serde_json::from_str(json)
            .map_err(|e| BadOptions(format!("its options ({json}) do not parse: {e}")))?;
        if let Some(r) = &o.rate_limit {
            check_rate(r).map_err(BadOptions)?;
        }
        if let Some(n) = &o.name {
            check_name(n).map_err(BadOptions)?;
        }
        for (name, d) in [
            ("retry_backoff", o.retry_backoff),
            ("retry_backoff_max", o.retry_backoff_max),
            ("default_retry_delay", o.default_retry_delay),
        ] {
            if let Some(d) = d {
                crate::bounds::check_duration(name, d).map_err(|e| BadOptions(e.to_string()))?;
            }
        }
        Ok(o)
    }

    /// True when no option is set.
    pub fn is_empty(&self) -> bool {
        *self == TaskOptions::default()
    }

    /// The retry policy of this task: `base` (the worker's or the pool's
    /// defaults) with every option the task sets in its place.
    pub fn retry_policy(&self, base: &RetryPolicy) -> RetryPolicy {
        let backoff = match (self.retry_backoff, base.backoff) {
            (Some(factor), b) => Some(Backoff {
                factor,
                max: b.map_or(DEFAULT_BACKOFF_MAX, |b| b.max),
                jitter: b.is_none_or(|b| b.jitter),
            }),
            (None, b) => b,
        }
        .map(|b| Backoff {
            max: self.retry_backoff_max.unwrap_or(b.max),
            jitter: self.retry_jitter.unwrap_or(b.jitter),
            ..b
        });
        RetryPolicy {
            on: self
                .autoretry_for
                .clone()
                .unwrap_or_else(|| base.on.clone()),
            max_retries: self.max_retries.or(base.max_retries),
            delay: self.default_retry_delay.unwrap_or(base.delay),
            backoff,
        }
    }

    /// The options that are set, as `key=value` (`rate_limit=100/m,
    /// max_retries=5`), for `inspect`'s text; empty when none is.
    pub fn summary(&self) -> String {
        let d = |d: &Duration| humantime::format_duration(*d).to_string();
        let mut parts: Vec<String> = Vec::new();
        if let Some(n) = &self.name {
            parts.push(format!("name={n}"));
        }
        // Defaults and the variadic tail show in the signature.
        if let Some(r) = &self.rate_limit {
            parts.push(format!("rate_limit={r}"));
        }
        if let Some(n) = self.max_retries {
            parts.push(format!("max_retries={n}"));
        }
        if let Some(k) = &self.autoretry_for {
            let names: Vec<&str> = k.iter().map(|k| k.as_str()).collect();
            parts.push(format!("autoretry_for={}", names.join(",")));
        }
        if let Some(b) = &self.retry_backoff {
            parts.push(format!("retry_backoff={}", d(b)));
        }
        if let Some(b) = &self.retry_backoff_max {
            parts.push(format!("retry_backoff_max={}", d(b)));
        }
        if let Some(j) = self.retry_jitter {
            parts.push(format!("retry_jitter={j}"));
        }
        if let Some(b) = &self.default_retry_delay {
            parts.push(format!("default_retry_delay={}", d(b)));
        }
        parts.join(", ")
    }
}

/// The longest Celery task name accepted (a plugin's `name`, a
/// `--task-name` mapping).
pub const MAX_TASK_NAME: usize = 255;

/// Checks a Celery task name: 1 to [`MAX_TASK_NAME`] bytes, no whitespace
/// or control characters (the `#[task]` macro checks the same).
pub fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > MAX_TASK_NAME
        || s.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "`{s}` is not a task name: 1 to {MAX_TASK_NAME} bytes without spaces, e.g. proj.tasks.add"
        ));
    }
    Ok(())
}

/// The longest options object accepted from a plugin for one task.
const MAX_OPTIONS_TEXT: usize = 16 * 1024;

/// Checks Celery's rate syntax (`celery.utils.time.rate`): a number of
/// tasks (`100`, `0.5`), optionally per `/s`, `/m` or `/h` (per second
/// without one). `0` is "no limit", as in Celery.
pub fn check_rate(s: &str) -> Result<(), String> {
    parse_rate(s).map(|_| ())
}

/// The rate as tasks per second (`"100/m"`: 1.666...); see [`check_rate`].
/// A declared option is held to a plain decimal count and a unit after
/// any `/` (Celery's own `rate()`, which converts it here too, also takes
/// `1e3`, `1_000` and `5/`).
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let bad = || {
        format!(
            "`{s}` is not a rate limit: write N, N/s, N/m or N/h (tasks per second, minute or hour), e.g. \"100/m\""
        )
    };
    let (n, unit) = s.split_once('/').unwrap_or((s, "s"));
    let plain = !n.is_empty()
        && n.chars().all(|c| c.is_ascii_digit() || c == '.')
        && n.chars().filter(|&c| c == '.').count() <= 1
        && n.chars().any(|c| c.is_ascii_digit());
    if !plain || unit.is_empty() {
        return Err(bad());
    }
    match crate::rate::per_second(s) {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(bad()),
    }
}

/// Durations as humantime text (`"1s"`, `"10m"`), as `#[task]` takes them.
mod text {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(t) => humantime::parse_duration(&t)
                .map(Some)
                .map_err(|e| serde::de::Error::custom(format!("`{t}` is not a duration: {e}"))),
        }
    }
}

/// [`text`], and `false` for "no backoff" (Celery's `retry_backoff=False`).
mod backoff_text {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        text::serialize(d, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Flag(bool),
            Text(String),
        }
        match Option::<Form>::deserialize(d)? {
            None | Some(Form::Flag(false)) => Ok(None),
            Some(Form::Flag(true)) => Ok(Some(Duration::from_secs(1))),
            Some(Form::Text(t)) => humantime::parse_duration(&t)
                .map(Some)
                .map_err(|e| serde::de::Error::custom(format!("`{t}` is not a duration: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_round_trip() {
        let o = TaskOptions::from_plugin(
            r#"{"rate_limit":"100/m","max_retries":5,"autoretry_for":["task_error","panic"],"retry_backoff":"1s","retry_backoff_max":"10m","retry_jitter":false,"default_retry_delay":"3m","future_key":1}"#,
        )
        .unwrap();
        assert_eq!(o.rate_limit.as_deref(), Some("100/m"));
        assert_eq!(
            o.autoretry_for,
            Some(vec![ErrorKind::TaskError, ErrorKind::Panic])
        );
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(v["retry_backoff_max"], "10m");
        assert_eq!(v["default_retry_delay"], "3m");
        let back: TaskOptions = serde_json::from_value(v).unwrap();
        assert_eq!(back, o);
        assert_eq!(
            serde_json::to_string(&TaskOptions::default()).unwrap(),
            "{}"
        );
        assert_eq!(
            TaskOptions::from_plugin("{}").unwrap(),
            TaskOptions::default()
        );
        // The zygote's plugin list travels as bincode: every field, in order.
        for o in [o.clone(), TaskOptions::default()] {
            let b = bincode::serde::encode_to_vec(&o, bincode::config::standard()).unwrap();
            let (back, _): (TaskOptions, usize) =
                bincode::serde::decode_from_slice(&b, bincode::config::standard()).unwrap();
            assert_eq!(back, o);
        }
        assert_eq!(
            TaskOptions::from_plugin(r#"{"retry_backoff":true}"#)
                .unwrap()
                .retry_backoff,
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn hostile_options_are_refused_by_name() {
        for bad in [
            r#"{"rate_limit":"fast"}"#,
            r#"{"rate_limit":"1/d"}"#,
            r#"{"max_retries":-1}"#,
            r#"{"max_retries":99999999999}"#,
            r#"{"autoretry_for":["nope"]}"#,
            r#"{"retry_backoff":"forever"}"#,
            r#"{"default_retry_delay":"100years"}"#,
            "[",
        ] {
            assert!(TaskOptions::from_plugin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_follow_celery() {
        assert_eq!(parse_rate("100/m").unwrap(), 100.0 / 60.0);
        assert_eq!(parse_rate("10").unwrap(), 10.0);
        assert_eq!(parse_rate("0.5/s").unwrap(), 0.5);
        assert_eq!(parse_rate("3600/h").unwrap(), 1.0);
        for bad in ["", "/m", "1/", "1/x", "-1", "1e3", "1..2", "inf"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn task_options_override_the_workers_policy() {
        let base = RetryPolicy {
            on: vec![ErrorKind::WorkerLost],
            ..RetryPolicy::default()
        };
        assert_eq!(TaskOptions::default().retry_policy(&base), base);
        let o = TaskOptions {
            max_retries: Some(7),
            autoretry_for: Some(vec![ErrorKind::TaskError]),
            retry_backoff: Some(Duration::from_secs(2)),
            retry_jitter: Some(false),
            ..TaskOptions::default()
        };
        let p = o.retry_policy(&base);
        assert_eq!(p.on, [ErrorKind::TaskError]);
        assert_eq!(p.max_retries, Some(7));
        assert_eq!(
            p.backoff,
            Some(Backoff {
                factor: Duration::from_secs(2),
                max: DEFAULT_BACKOFF_MAX,
                jitter: false
            })
        );
        assert_eq!(p.countdown(2), Duration::from_secs(8));
        // The worker's backoff keeps its factor when the task sets only a max.
        let base = RetryPolicy {
            backoff: Some(Backoff::default()),
            ..RetryPolicy::default()
        };
        let o = TaskOptions {
            retry_backoff_max: Some(Duration::from_secs(4)),
            ..TaskOptions::default()
        };
        assert_eq!(
            o.retry_policy(&base).backoff.map(|b| b.max),
            Some(Duration::from_secs(4))
        );
    }
}
