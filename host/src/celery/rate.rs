//! Task rate limits (issue 23 item 4).
//!
//! - **Per worker, as Celery**: a task's `rate_limit` (`"100/m"`, `"10/s"`,
//!   `"5/h"`, a bare number per second; `0`/empty: none) is a token bucket
//!   of capacity 1 per task and per worker instance, as Celery's consumer
//!   builds it (`bucket_for_task`: kombu's `TokenBucket(rate, capacity=1)`,
//!   so no bursts). Sources, later wins: the task's registration option,
//!   `--rate-limit TASK=RATE`, the remote-control `rate_limit` command.
//! - **Fleet-wide, beyond Celery**: `--global-rate-limit TASK=RATE`, one
//!   GCRA state per task on the broker Redis (`lua/rate.lua`, on Redis's
//!   clock), which hands each start a slot at least one interval after the
//!   previous one, whichever host takes it.
//!
//! The consumer holds a rate-limited message in a [`Limiter`] (reserved,
//! its lease renewed by the keeper like an eta message's) and moves it to
//! its ready queue when its turn comes: other tasks' messages never wait
//! behind it, and it takes no pool slot while it waits.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde_json::{json, Map, Value};

use crate::pool::Pool;

mod limiter;
pub use limiter::Limiter;

/// The Redis key prefix of the fleet-wide limits: `billiard-host:rate:<task>`.
pub const RATE_KEY_PREFIX: &str = "billiard-host:rate:";

use crate::rate::checked;
pub use crate::rate::{parse, Rate, RateError, MAX_RATE};

/// A rate as a remote-control request carries it: a string as [`parse`],
/// a number of starts per second, or null / `false` (no limit).
pub fn from_json(v: &Value) -> Result<Option<Rate>, RateError> {
    match v {
        Value::Null | Value::Bool(false) => Ok(None),
        Value::String(s) => parse(s),
        Value::Number(n) => match n.as_f64() {
            Some(x) => checked(x, &n.to_string()),
            None => Err(RateError::NotANumber(n.to_string())),
        },
        Value::Bool(true) => Err(RateError::Type("a boolean")),
        Value::Array(_) => Err(RateError::Type("a list")),
        Value::Object(_) => Err(RateError::Type("an object")),
    }
}

/// At most 200 characters of `s` for a log line (a request may carry a
/// name or a rate of any length).
fn clip(s: &str) -> String {
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}... ({} bytes)", &s[..i], s.len()),
        None => s.to_string(),
    }
}

/// Python's truth value of a JSON value (Celery's `if not rate_limit`).
fn py_falsy(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// `TASK=RATE` of a `--rate-limit` / `--global-rate-limit` flag.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRate {
    /// The task as Celery names it (`math.square`; a bare name when only
    /// one plugin has it).
    pub task: String,
    /// The rate; `None`: no limit (`TASK=0`).
    pub rate: Option<Rate>,
}

/// Parses `TASK=RATE` (the flag's value parser): a clear error for a
/// malformed one, never a panic.
pub fn parse_task_rate(s: &str) -> Result<TaskRate, String> {
    let Some((task, rate)) = s.split_once('=') else {
        return Err(format!(
            "{s:?} is not TASK=RATE (e.g. math.square=10/s; a rate is N, N/s, N/m or N/h)"
        ));
    };
    let task = task.trim();
    if task.is_empty() {
        return Err(format!(
            "{s:?} names no task (TASK=RATE, e.g. math.square=10/s)"
        ));
    }
    let rate = parse(rate.trim()).map_err(|e| format!("{task}: {e}"))?;
    Ok(TaskRate {
        task: task.to_string(),
        rate,
    })
}

/// The limits of one task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Setting {
    /// Per worker instance (Celery's `rate_limit`).
    pub local: Option<Rate>,
    /// Fleet-wide (`--global-rate-limit`).
    pub global: Option<Rate>,
}

impl Setting {
    fn limited(&self) -> bool {
        self.local.is_some() || self.global.is_some()
    }
}

/// The worker's rate limits: shared by the consumer ([`Limiter`]) and the
/// remote control (which changes them).
pub struct RateLimits {
    state: Mutex<State>,
    generation: AtomicU64,
}

/// The sources of the limits, kept apart so that a reload of the plugins
/// (SIGHUP) replaces only the tasks' own options: the effective per-worker
/// limit is the control's, else the flag's, else the option's.
#[derive(Default)]
struct State {
    /// Every name a task answers to → its `plugin.task` name.
    names: HashMap<String, String>,
    /// The tasks' own `#[task(rate_limit = ...)]`.
    option: BTreeMap<String, Rate>,
    /// `--rate-limit` (`None`: no limit, over the option).
    flag: BTreeMap<String, Option<Rate>>,
    /// `--global-rate-limit`.
    global: BTreeMap<String, Option<Rate>>,
    /// `control rate_limit` (`None`: disabled, over flag and option).
    control: BTreeMap<String, Option<Rate>>,
}

impl State {
    fn get(&self, task: &str) -> Setting {
        // Limits are kept under `plugin.task`; any name it answers to finds them.
        let task = self.names.get(task).map_or(task, String::as_str);
        let local = match (self.control.get(task), self.flag.get(task)) {
            (Some(r), _) | (None, Some(r)) => r.clone(),
            (None, None) => self.option.get(task).cloned(),
        };
        Setting {
            local,
            global: self.global.get(task).cloned().flatten(),
        }
    }
}

/// The names the tasks of `pool` answer to (`plugin.task`, and the bare
/// name when one plugin has it) and their own rate-limit options; a
/// task's option out of range is an error naming it.
fn tasks_of(pool: &Pool) -> (HashMap<String, String>, BTreeMap<String, Rate>, Vec<String>) {
    let mut names = HashMap::new();
    let mut bare: HashMap<String, Vec<String>> = HashMap::new();
    let mut option = BTreeMap::new();
    let mut refused = Vec::new();
    for p in pool.plugins().iter() {
        for t in &p.tasks {
            let full = format!("{}.{}", p.name, t.name);
            // The task's own `#[task(rate_limit = "...")]`: the plugin
            // checked its syntax; the range is checked here, as for a flag
            // (a plugin may be hostile).
            if let Some(text) = &t.options.rate_limit {
                match parse(text) {
                    Ok(Some(r)) => {
                        option.insert(full.clone(), r);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        refused.push(format!("task {full}: its rate_limit option {text:?}: {e}"))
                    }
                }
            }
            names.insert(full.clone(), full.clone());
            // Its Celery name (`#[task(name = "proj.tasks.add")]`, issue
            // 29 item 1): a flag, a control command and `inspect
            // registered` name the task so.
            if let Some(n) = &t.options.name {
                names.insert(n.clone(), full.clone());
            }
            bare.entry(t.name.clone()).or_default().push(full);
        }
    }
    for (b, fulls) in bare {
        if let [one] = fulls.as_slice() {
            names.entry(b).or_insert_with(|| one.clone());
        }
    }
    (names, option, refused)
}

impl RateLimits {
    /// The limits of the tasks `pool` serves: `local` then `global` flags
    /// over the tasks' own options (later wins). An unknown task name is
    /// an error naming it (and the closest served name), as is a task's
    /// option out of range.
    pub fn for_pool(
        pool: &Pool,
        local: &[TaskRate],
        global: &[TaskRate],
    ) -> Result<RateLimits, String> {
        let (names, option, refused) = tasks_of(pool);
        if let Some(first) = refused.into_iter().next() {
            return Err(first);
        }
        let mut st = State {
            names,
            option,
            ..State::default()
        };
        for (flag, list) in [("--rate-limit", local), ("--global-rate-limit", global)] {
            for tr in list {
                let Some(task) = st.names.get(&tr.task).cloned() else {
                    let near = crate::closest_name(&tr.task, st.names.keys().map(String::as_str));
                    return Err(format!(
                        "{flag} {}: no loaded plugin has this task{}",
                        tr.task,
                        near.map(|n| format!(" (did you mean `{n}`?)"))
                            .unwrap_or_default()
                    ));
                };
                if flag == "--rate-limit" {
                    st.flag.insert(task, tr.rate.clone());
                } else {
                    st.global.insert(task, tr.rate.clone());
                }
            }
        }
        Ok(RateLimits {
            state: Mutex::new(st),
            generation: AtomicU64::new(0),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After a reload of the plugins (SIGHUP): the names the tasks answer
    /// to and their own options are read again (flags and `control
    /// rate_limit` still win); an option now out of range is logged and
    /// not applied.
    pub fn reload(&self, pool: &Pool) {
        let (names, option, refused) = tasks_of(pool);
        for r in refused {
            tracing::error!("after the reload, {r}: not applied");
        }
        {
            let mut st = self.state();
            st.names = names;
            st.option = option;
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The `plugin.task` name `name` stands for, if it is served.
    pub fn canonical(&self, name: &str) -> Option<String> {
        self.state().names.get(name).cloned()
    }

    /// The limits of `task` (a `plugin.task` name).
    pub fn get(&self, task: &str) -> Setting {
        self.state().get(task)
    }

    /// Every task with a limit.
    pub fn all(&self) -> BTreeMap<String, Setting> {
        let st = self.state();
        let tasks: std::collections::BTreeSet<&String> = st
            .option
            .keys()
            .chain(st.flag.keys())
            .chain(st.global.keys())
            .chain(st.control.keys())
            .collect();
        tasks
            .into_iter()
            .map(|t| (t.clone(), st.get(t)))
            .filter(|(_, s)| s.limited())
            .collect()
    }

    /// Bumped on every change (the [`Limiter`] rebuilds its buckets).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Sets the per-worker limit of `task` (any name it answers to), over
    /// its flag and its option; false when no loaded plugin has it.
    pub fn set_local(&self, task: &str, rate: Option<Rate>) -> bool {
        {
            let mut st = self.state();
            let Some(task) = st.names.get(task).cloned() else {
                return false;
            };
            st.control.insert(task, rate);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// `inspect registered`'s fields for `task`, as Celery's worker shows
    /// a task's `rate_limit` (`rate_limit=10/s`), plus this host's
    /// `global_rate_limit=...`; empty without limits.
    pub fn registered_fields(&self, task: &str) -> String {
        let s = self.get(task);
        let mut out = String::new();
        if let Some(r) = &s.local {
            out.push_str(&format!(" rate_limit={}", r.text()));
        }
        if let Some(r) = &s.global {
            out.push_str(&format!(" global_rate_limit={}", r.text()));
        }
        out
    }

    /// The reply to Celery's `rate_limit` control command
    /// (`{task_name, rate_limit}`), as Celery 5.7's worker replies
    /// (`celery/worker/control.py`): the rate is checked first, then the
    /// task; `{"ok": "new rate limit set successfully"}`, `{"ok": "rate
    /// limit disabled successfully"}` (a falsy rate: null, ""; `"0"` is
    /// truthy to Python and says "set", disabling all the same),
    /// `{"error": "unknown task"}`, `{"error": "Invalid rate limit string:
    /// ValueError(...)"}`.
    pub fn control(&self, args: &Map<String, Value>) -> Value {
        let missing = |arg: &str| {
            json!({"error": format!(
                "TypeError(\"rate_limit() missing 1 required positional argument: '{arg}'\")"
            )})
        };
        let Some(task) = args.get("task_name") else {
            return missing("task_name");
        };
        let Some(raw) = args.get("rate_limit") else {
            return missing("rate_limit");
        };
        let rate = match from_json(raw) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(
                    "remote control: rate_limit refused: {}",
                    clip(&e.to_string())
                );
                return json!({"error": e.celery_reply()});
            }
        };
        let task = match task {
            Value::String(s) => s.as_str(),
            _ => "",
        };
        if !self.set_local(task, rate.clone()) {
            tracing::error!("Rate limit attempt for unknown task {}", clip(task));
            return json!({"error": "unknown task"});
        }
        if py_falsy(raw) {
            tracing::info!("Rate limits disabled for tasks of type {task}");
            return json!({"ok": "rate limit disabled successfully"});
        }
        tracing::info!(
            "New rate limit for tasks of type {task}: {}.",
            clip(rate.as_ref().map(Rate::text).unwrap_or("none"))
        );
        json!({"ok": "new rate limit set successfully"})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pyrepr::py_str as py_repr;
    use std::sync::Arc;

    fn per(s: &str) -> Option<f64> {
        parse(s).unwrap().map(|r| r.per_second())
    }

    #[test]
    fn parses_as_celerys_rate() {
        assert_eq!(per("10/s"), Some(10.0));
        assert_eq!(per("10"), Some(10.0));
        assert_eq!(per("100/m"), Some(100.0 / 60.0));
        assert_eq!(per("5/h"), Some(5.0 / 60.0 / 60.0));
        assert_eq!(per(" 2.5 /s"), Some(2.5));
        assert_eq!(per("1_000/m"), Some(1000.0 / 60.0));
        assert_eq!(per("1e2"), Some(100.0));
        assert_eq!(per("0"), None);
        assert_eq!(per("0/m"), None);
        assert_eq!(per(""), None);
        assert_eq!(parse("10/m").unwrap().unwrap().text(), "10/m");
    }

    #[test]
    fn refuses_what_celery_refuses_and_what_is_absurd() {
        let e = parse("abc").unwrap_err();
        assert_eq!(e.to_string(), "could not convert string to float: 'abc'");
        assert_eq!(
            e.celery_reply(),
            "Invalid rate limit string: ValueError(\"could not convert string to float: 'abc'\")"
        );
        assert_eq!(parse("5/x").unwrap_err().celery_reply(), "KeyError('x')");
        assert_eq!(parse("10/m/s").unwrap_err(), RateError::Unit("m/s".into()));
        assert!(parse("/m").is_err());
        assert!(parse("1__0").is_err());
        assert!(parse("_10").is_err());
        for bad in ["-5/s", "inf", "nan/m", "1e7/s", "1e-12/h", "1e400"] {
            let e = parse(bad).unwrap_err();
            assert!(matches!(e, RateError::OutOfRange { .. }), "{bad}: {e}");
            assert!(e
                .celery_reply()
                .starts_with("Invalid rate limit string: ValueError("));
        }
        assert!(from_json(&json!(true)).is_err());
        assert!(from_json(&json!([1])).is_err());
        assert_eq!(from_json(&json!(null)).unwrap(), None);
        assert_eq!(from_json(&json!(4)).unwrap().unwrap().text(), "4");
        assert!(from_json(&json!(-4)).is_err());
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_repr("a\nb'\""), "'a\\nb\\'\"'");
    }

    #[test]
    fn flags_are_task_equals_rate() {
        let t = parse_task_rate("math.square=10/s").unwrap();
        assert_eq!(t.task, "math.square");
        assert_eq!(t.rate.unwrap().per_second(), 10.0);
        assert_eq!(parse_task_rate("math.square=0").unwrap().rate, None);
        for bad in ["math.square", "=10/s", "math.square=ten", "x=5/d", "x=-1"] {
            assert!(parse_task_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn interval_rounds_up() {
        let r = parse("3/s").unwrap().unwrap();
        assert_eq!(r.interval_us(), 333_334);
        assert_eq!(parse("1e6").unwrap().unwrap().interval_us(), 1);
    }

    pub(super) fn limits(local: &[(&str, &str)]) -> Arc<RateLimits> {
        let names: HashMap<String, String> = ["math.square", "math.add"]
            .iter()
            .map(|n| (n.to_string(), n.to_string()))
            .collect();
        let me = RateLimits {
            state: Mutex::new(State {
                names,
                ..State::default()
            }),
            generation: AtomicU64::new(0),
        };
        for (t, r) in local {
            assert!(me.set_local(t, parse(r).unwrap()));
        }
        Arc::new(me)
    }

    #[test]
    fn the_control_wins_over_the_flag_which_wins_over_the_option() {
        let mut st = State::default();
        st.names.insert("math.square".into(), "math.square".into());
        st.names.insert("square".into(), "math.square".into());
        st.option
            .insert("math.square".into(), parse("10/s").unwrap().unwrap());
        let me = RateLimits {
            state: Mutex::new(st),
            generation: AtomicU64::new(0),
        };
        let local = |me: &RateLimits| me.get("math.square").local.map(|r| r.text().to_string());
        assert_eq!(local(&me).as_deref(), Some("10/s"));
        me.state().flag.insert("math.square".into(), None);
        assert_eq!(local(&me), None);
        assert!(me.all().is_empty());
        assert!(me.set_local("square", parse("3/m").unwrap()));
        assert_eq!(local(&me).as_deref(), Some("3/m"));
        assert_eq!(me.generation(), 1);
        assert!(!me.set_local("nope", None));
        assert_eq!(me.canonical("square").as_deref(), Some("math.square"));
    }

    #[test]
    fn control_replies_as_celery() {
        let rates = limits(&[]);
        let call = |v: Value| rates.control(v.as_object().unwrap());
        assert_eq!(
            call(json!({"task_name": "math.square", "rate_limit": "10/s"})),
            json!({"ok": "new rate limit set successfully"})
        );
        assert_eq!(rates.registered_fields("math.square"), " rate_limit=10/s");
        assert_eq!(
            call(json!({"task_name": "math.square", "rate_limit": "0"})),
            json!({"ok": "new rate limit set successfully"})
        );
        assert_eq!(rates.get("math.square").local, None);
        assert_eq!(
            call(json!({"task_name": "nope.nope", "rate_limit": "10/s"})),
            json!({"error": "unknown task"})
        );
        assert_eq!(
            call(json!({"task_name": "nope.nope", "rate_limit": "x"})),
            json!({"error": "Invalid rate limit string: ValueError(\"could not convert string to float: 'x'\")"})
        );
        assert_eq!(
            call(json!({"task_name": "math.square"})),
            json!({"error": "TypeError(\"rate_limit() missing 1 required positional argument: 'rate_limit'\")"})
        );
    }
}
