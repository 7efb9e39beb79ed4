//! Celery's built-in tasks run by this worker itself (issue 29 item 3), as
//! `celery/app/builtins.py` (Celery 5.7) runs them on a Python worker:
//!
//! - `celery.group(tasks, result, group_id, partial_args, add_to_parent)`:
//!   each member cloned with `partial_args` in front and sent with the
//!   `group` header `group_id` (no `group_index`, a fresh id unless the
//!   member was frozen); the message's result is its `result` kwarg (a
//!   GroupResult tuple), also its `children` when `add_to_parent`;
//! - `celery.chord(header, body, partial_args, ...)`: `chord.run`: the
//!   chord size on the result backend, then the header parts, each
//!   carrying the body; the result is the body's AsyncResult tuple
//!   `((body_id, header_tuple), None)`, `children` the header's tuple;
//! - `celery.chunks(task, it, n)`: a group of immutable `celery.starmap`
//!   messages of `n` items each (with `group_index`); the result is that
//!   group's tuple;
//! - `celery.map(task, it)` / `celery.starmap(task, it)`: the named task
//!   called on each item in the worker: one task, a list result (the
//!   worker runs each call on the pool, see [`Outcome::Map`]);
//! - `celery.accumulate(*args, index=None)`: `args[index]`, or `args`;
//! - `celery.chain`: Celery's raises `NotImplementedError('chain is not a
//!   real task')`, and so does this one.
//!
//! Messages sent here have the builtin message as parent and its root as
//! root, as `apply_async` inside a Python task does.

use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use crate::TaskError;

use super::chord::{self, Applied};
use super::protocol::{self, ExcInfo, Exception, Signature, State};

/// The builtin task names this worker runs itself.
pub const NAMES: [&str; 7] = [
    "celery.group",
    "celery.chord",
    "celery.chain",
    "celery.starmap",
    "celery.chunks",
    "celery.map",
    "celery.accumulate",
];

/// Items one `celery.map`/`starmap`/`chunks` message may hold: each is a
/// pool job or a message, so a hostile list cannot queue millions at once.
pub const MAX_ITEMS: usize = 100_000;

/// True when this worker runs task `name` itself.
pub fn is_builtin(name: &str) -> bool {
    NAMES.contains(&name)
}

/// What running a builtin message does.
#[derive(Debug)]
pub enum Outcome {
    /// Done at once: the result to store (with its `children`) and the
    /// messages (and chord sizes) to send before it is stored.
    Done {
        /// The message's result (a GroupResult tuple, an AsyncResult
        /// tuple, the accumulated args).
        result: Value,
        /// Its result's `children`: the results it started.
        children: Vec<Value>,
        /// The messages it sends.
        applied: Applied,
    },
    /// Failed as the Python builtin raises.
    Fail(Exception),
    /// `celery.map` / `celery.starmap`: call task `task` with each item's
    /// positional args, in order; the result is the list of their results,
    /// the first failure (in item order) the message's failure.
    Map {
        /// The task's name, resolved by the worker.
        task: String,
        /// Each call's positional args.
        items: Vec<Vec<Value>>,
    },
}

/// Runs builtin `name` of message `task_id` (workflow `root_id`) on its
/// `args`/`kwargs`.
pub fn run(
    name: &str,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    root_id: &str,
    task_id: &str,
) -> Outcome {
    let r = match name {
        "celery.accumulate" => accumulate(args, kwargs),
        "celery.chain" => Err(python_exc(
            "NotImplementedError",
            "chain is not a real task",
        )),
        "celery.map" | "celery.starmap" => xmap(name == "celery.starmap", args, kwargs),
        "celery.chunks" => chunks(args, kwargs, root_id, task_id),
        "celery.group" => group(args, kwargs, root_id, task_id),
        "celery.chord" => chord_task(args, kwargs, root_id, task_id),
        other => Err(python_exc(
            "NotImplementedError",
            &format!("{other} is not a builtin of this worker"),
        )),
    };
    r.unwrap_or_else(Outcome::Fail)
}

/// A FAILURE with a Python builtin exception class, as a Python worker
/// stores it (`exc_module` "builtins").
pub fn python_exc(ty: &str, message: &str) -> Exception {
    Exception {
        state: State::Failure,
        info: ExcInfo {
            exc_type: ty.into(),
            exc_message: vec![Value::String(message.into())],
            exc_module: "builtins".into(),
        },
        traceback: Some(format!("{ty}: {message}\n")),
    }
}

fn type_error(message: String) -> Exception {
    python_exc("TypeError", &message)
}

/// Binds `args`/`kwargs` to the parameters of Python function `fname`
/// (`(name, default)`; extra keywords allowed when `varkw`), with
/// Python's TypeError wording on a mismatch.
fn bind(
    fname: &str,
    params: &[(&str, Option<Value>)],
    varkw: bool,
    args: Vec<Value>,
    mut kwargs: Map<String, Value>,
) -> Result<Vec<Value>, Exception> {
    let n = params.len();
    if args.len() > n {
        return Err(type_error(format!(
            "{fname}() takes {n} positional argument{} but {} were given",
            if n == 1 { "" } else { "s" },
            args.len()
        )));
    }
    let mut slots: Vec<Option<Value>> = args.into_iter().map(Some).collect();
    slots.resize(n, None);
    for (i, (p, _)) in params.iter().enumerate() {
        if let Some(v) = kwargs.remove(*p) {
            if slots[i].is_some() {
                return Err(type_error(format!(
                    "{fname}() got multiple values for argument '{p}'"
                )));
            }
            slots[i] = Some(v);
        }
    }
    if !varkw {
        if let Some(k) = kwargs.keys().next() {
            return Err(type_error(format!(
                "{fname}() got an unexpected keyword argument '{k}'"
            )));
        }
    }
    let mut missing = Vec::new();
    let mut out = Vec::with_capacity(n);
    for (s, (p, d)) in slots.into_iter().zip(params) {
        match s.or_else(|| d.clone()) {
            Some(v) => out.push(v),
            None => missing.push(format!("'{p}'")),
        }
    }
    if !missing.is_empty() {
        let count = missing.len();
        let list = match count {
            1 => missing.join(""),
            2 => missing.join(" and "),
            _ => {
                let last = missing.pop().unwrap_or_default();
                format!("{}, and {last}", missing.join(", "))
            }
        };
        return Err(type_error(format!(
            "{fname}() missing {count} required positional argument{}: {list}",
            if count == 1 { "" } else { "s" }
        )));
    }
    Ok(out)
}

/// Python's type name of a JSON value, for TypeError texts.
fn py_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// `for item in v`, as Python iterates a decoded JSON value.
fn iterate(v: Value) -> Result<Vec<Value>, Exception> {
    let items: Vec<Value> = match v {
        Value::Array(a) => a,
        Value::Object(m) => m.into_iter().map(|(k, _)| Value::String(k)).collect(),
        Value::String(s) => s.chars().map(|c| Value::String(c.into())).collect(),
        other => {
            return Err(type_error(format!(
                "'{}' object is not iterable",
                py_type(&other)
            )))
        }
    };
    if items.len() > MAX_ITEMS {
        return Err(python_exc(
            "ValueError",
            &format!(
                "{} items: this worker takes at most {MAX_ITEMS} in one builtin message",
                items.len()
            ),
        ));
    }
    Ok(items)
}

/// `signature(task).type.name`: a signature dict's `task`, or a name.
fn task_name_of(v: &Value) -> Result<String, Exception> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Object(m) => match m.get("task") {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(python_exc("KeyError", "task")),
        },
        other => Err(type_error(format!(
            "cannot make a signature of a '{}' object",
            py_type(other)
        ))),
    }
}

fn accumulate(args: Vec<Value>, kwargs: Map<String, Value>) -> Result<Outcome, Exception> {
    let result = match kwargs.get("index") {
        None | Some(Value::Null) => Value::Array(args),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {
            let len = i64::try_from(args.len()).unwrap_or(i64::MAX);
            let i = n.as_i64().unwrap_or(i64::MAX);
            // Python's negative index counts from the end.
            let at = if i < 0 { len.checked_add(i) } else { Some(i) };
            match at.filter(|a| (0..len).contains(a)) {
                Some(a) => args
                    .into_iter()
                    .nth(usize::try_from(a).unwrap_or(usize::MAX))
                    .unwrap_or(Value::Null),
                None => return Err(python_exc("IndexError", "tuple index out of range")),
            }
        }
        // An integer past i64/u64, which JSON decoding made a float.
        Some(Value::Number(n))
            if n.as_f64()
                .is_some_and(|f| f.fract() == 0.0 && f.abs() >= 9.2e18) =>
        {
            return Err(python_exc(
                "IndexError",
                "cannot fit 'int' into an index-sized integer",
            ))
        }
        Some(Value::Bool(b)) => {
            // bool is an int in Python.
            let i = usize::from(*b);
            match args.into_iter().nth(i) {
                Some(v) => v,
                None => return Err(python_exc("IndexError", "tuple index out of range")),
            }
        }
        Some(other) => {
            return Err(type_error(format!(
                "tuple indices must be integers or slices, not {}",
                py_type(other)
            )))
        }
    };
    Ok(Outcome::Done {
        result,
        children: Vec::new(),
        applied: Applied::default(),
    })
}

fn xmap(star: bool, args: Vec<Value>, kwargs: Map<String, Value>) -> Result<Outcome, Exception> {
    let fname = if star { "xstarmap" } else { "xmap" };
    let mut b = bind(fname, &[("task", None), ("it", None)], false, args, kwargs)?.into_iter();
    let (task, it) = (b.next().unwrap_or_default(), b.next().unwrap_or_default());
    let task = task_name_of(&task)?;
    let items = iterate(it)?
        .into_iter()
        .map(|item| {
            if star {
                // task(*item)
                iterate(item).map_err(|_| {
                    type_error(format!("{task}() argument after * must be an iterable"))
                })
            } else {
                Ok(vec![item])
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Outcome::Map { task, items })
}

/// A member's partial args in front of its own (`Signature.clone(args)`),
/// unless it is immutable.
fn with_partial(mut s: Signature, partial: &[Value]) -> Signature {
    if !s.immutable && !partial.is_empty() {
        s.args.splice(0..0, partial.iter().cloned());
    }
    s
}

fn sig_of(v: Value, what: &str) -> Result<Signature, Exception> {
    match v {
        Value::String(task) => Ok(Signature {
            task,
            ..Signature::default()
        }),
        Value::Object(_) => serde_json::from_value(v)
            .map_err(|e| type_error(format!("{what} is not a signature: {e}"))),
        other => Err(type_error(format!(
            "{what} is not a signature but a '{}'",
            py_type(&other)
        ))),
    }
}

fn seq_of(v: Value, what: &str) -> Result<Vec<Value>, Exception> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => Ok(a),
        other => Err(type_error(format!(
            "{what} must be a list, not {}",
            py_type(&other)
        ))),
    }
}

/// Gives `s` a task id (a frozen member keeps its own) and returns it.
fn freeze(s: &mut Signature) -> String {
    match s.options.get("task_id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => {
            let id = protocol::new_id();
            s.options
                .insert("task_id".into(), Value::String(id.clone()));
            id
        }
    }
}

/// An AsyncResult's tuple `((id, None), None)`.
fn leaf(id: &str) -> Value {
    serde_json::json!([[id, null], null])
}

fn group(
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    root_id: &str,
    task_id: &str,
) -> Result<Outcome, Exception> {
    let params = [
        ("tasks", None),
        ("result", None),
        ("group_id", None),
        ("partial_args", None),
        ("add_to_parent", Some(Value::Bool(true))),
    ];
    let mut b = bind("group", &params, false, args, kwargs)?.into_iter();
    let mut next = || b.next().unwrap_or_default();
    let (tasks, result, group_id, partial, add) = (next(), next(), next(), next(), next());
    if !matches!(&result, Value::Array(r) if r.len() == 2) {
        // result_from_tuple: `res, nodes = r`.
        return Err(type_error(format!(
            "cannot unpack non-iterable {} object",
            py_type(&result)
        )));
    }
    let partial = seq_of(partial, "partial_args")?;
    let mut applied = Applied::default();
    for t in iterate(tasks)? {
        let mut s = with_partial(sig_of(t, "a group member")?, &partial);
        if !group_id.is_null() {
            s.options.insert("group_id".into(), group_id.clone());
        }
        // apply_async(group_id=...): no group_index, a fresh id.
        s.options.remove("group_index");
        freeze(&mut s);
        chord::apply(&s, None, root_id, task_id, 0, &mut applied).map_err(type_error)?;
    }
    let truthy = !matches!(add, Value::Null | Value::Bool(false))
        && add.as_f64() != Some(0.0)
        && add != Value::String(String::new());
    Ok(Outcome::Done {
        children: if truthy {
            vec![result.clone()]
        } else {
            Vec::new()
        },
        result,
        applied,
    })
}

fn chunks(
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    root_id: &str,
    task_id: &str,
) -> Result<Outcome, Exception> {
    let params = [("task", None), ("it", None), ("n", None)];
    let mut b = bind("chunks", &params, false, args, kwargs)?.into_iter();
    let mut next = || b.next().unwrap_or_default();
    let (task, it, n) = (next(), next(), next());
    let n =
        match &n {
            Value::Number(x) if x.is_i64() || x.is_u64() => match x.as_u64() {
                Some(n) if n >= 1 => usize::try_from(n).unwrap_or(usize::MAX),
                _ => return Err(python_exc(
                    "ValueError",
                    "Stop argument for islice() must be None or an integer: 0 <= x <= sys.maxsize.",
                )),
            },
            other => {
                return Err(type_error(format!(
                    "'{}' object cannot be interpreted as an integer",
                    py_type(other)
                )))
            }
        };
    task_name_of(&task)?;
    let items = iterate(it)?;
    let gid = protocol::new_id();
    let mut applied = Applied::default();
    let mut parts = Vec::new();
    for (i, part) in items.chunks(n).enumerate() {
        let mut kw = Map::new();
        kw.insert("task".into(), task.clone());
        kw.insert("it".into(), Value::Array(part.to_vec()));
        let mut s = Signature {
            task: "celery.starmap".into(),
            kwargs: kw,
            immutable: true,
            ..Signature::default()
        };
        s.options
            .insert("group_id".into(), Value::String(gid.clone()));
        s.options.insert("group_index".into(), Value::from(i));
        parts.push(leaf(&freeze(&mut s)));
        chord::apply(&s, None, root_id, task_id, 0, &mut applied).map_err(type_error)?;
    }
    let result = serde_json::json!([[gid, null], parts]);
    Ok(Outcome::Done {
        children: vec![result.clone()],
        result,
        applied,
    })
}

fn chord_task(
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    root_id: &str,
    task_id: &str,
) -> Result<Outcome, Exception> {
    let params = [
        ("header", None),
        ("body", None),
        ("partial_args", Some(Value::Array(Vec::new()))),
        ("interval", Some(Value::Null)),
        ("countdown", Some(Value::from(1))),
        ("max_retries", Some(Value::Null)),
        ("eager", Some(Value::Bool(false))),
    ];
    let mut b = bind("chord", &params, true, args, kwargs)?.into_iter();
    let mut next = || b.next().unwrap_or_default();
    let (header, body, partial) = (next(), next(), next());
    let partial = seq_of(partial, "partial_args")?;
    // A serialized group's tasks, or a list of signatures.
    let (gid, members) = match header {
        Value::Object(ref m) if m.get("subtask_type").and_then(Value::as_str) == Some("group") => {
            let g = sig_of(header.clone(), "the chord header")?;
            let gid = g
                .options
                .get("task_id")
                .and_then(Value::as_str)
                .map(str::to_string);
            (
                gid,
                seq_of(g.kwargs.get("tasks").cloned().unwrap_or_default(), "header")?,
            )
        }
        other => (None, iterate(other)?),
    };
    let gid = gid.unwrap_or_else(protocol::new_id);
    let mut body = sig_of(body, "the chord body")?;
    let body_id = freeze(&mut body);
    let mut parts = Vec::new();
    let mut tasks = Vec::new();
    for m in members {
        let mut s = with_partial(sig_of(m, "a chord header part")?, &partial);
        // A chain part's result is its last task's.
        let id = if s.subtask_type.as_deref() == Some("chain") {
            let mut steps: Vec<Signature> =
                serde_json::from_value(s.kwargs.get("tasks").cloned().unwrap_or_default())
                    .unwrap_or_default();
            let id = steps
                .last_mut()
                .map(freeze)
                .unwrap_or_else(protocol::new_id);
            s.kwargs.insert(
                "tasks".into(),
                serde_json::to_value(&steps).unwrap_or(Value::Null),
            );
            id
        } else {
            freeze(&mut s)
        };
        parts.push(leaf(&id));
        tasks.push(serde_json::to_value(&s).unwrap_or(Value::Null));
    }
    let mut hopts = Map::new();
    hopts.insert("task_id".into(), Value::String(gid.clone()));
    let mut hkw = Map::new();
    hkw.insert("tasks".into(), Value::Array(tasks));
    let header = Signature {
        task: "celery.group".into(),
        kwargs: hkw,
        options: hopts,
        subtask_type: Some("group".into()),
        ..Signature::default()
    };
    let mut ckw = Map::new();
    ckw.insert(
        "header".into(),
        serde_json::to_value(&header).unwrap_or(Value::Null),
    );
    ckw.insert(
        "body".into(),
        serde_json::to_value(&body).unwrap_or(Value::Null),
    );
    let ch = Signature {
        task: "celery.chord".into(),
        kwargs: ckw,
        subtask_type: Some("chord".into()),
        ..Signature::default()
    };
    let mut applied = Applied::default();
    chord::apply(&ch, None, root_id, task_id, 0, &mut applied).map_err(type_error)?;
    let header_tuple = serde_json::json!([[gid, null], parts]);
    Ok(Outcome::Done {
        result: serde_json::json!([[body_id, header_tuple.clone()], null]),
        children: vec![header_tuple],
        applied,
    })
}

/// What a builtin that finished at once sent, kept with its message until
/// its result is stored: the messages go out (chord sizes first) before
/// the result, whose `children` these are.
#[derive(Debug, Default, Clone)]
pub struct Sent {
    /// The result's `children`.
    pub children: Vec<Value>,
    /// The messages and chord sizes.
    pub applied: Applied,
}

/// One `celery.map` item's share of the message's one answer.
struct Gathered<F> {
    done: Option<F>,
    slots: Vec<Option<Result<Value, TaskError>>>,
    left: usize,
}

/// One item of a `celery.map`/`starmap` run as its own pool job: finished
/// with its outcome; dropped unfinished (the pool dropped the job), the
/// whole message's answer is dropped too, so it goes back to its queue.
pub struct Item<F: FnOnce(Result<Vec<Value>, TaskError>)> {
    state: Arc<Mutex<Gathered<F>>>,
    i: usize,
    finished: bool,
}

/// `n` item handles whose outcomes, once all are in, call `done` once:
/// the results in item order, or the first failure in item order (the
/// one Python's `[task(item) for item in it]` raises).
pub fn gather<F>(n: usize, done: F) -> Vec<Item<F>>
where
    F: FnOnce(Result<Vec<Value>, TaskError>),
{
    if n == 0 {
        done(Ok(Vec::new()));
        return Vec::new();
    }
    let state = Arc::new(Mutex::new(Gathered {
        done: Some(done),
        slots: (0..n).map(|_| None).collect(),
        left: n,
    }));
    (0..n)
        .map(|i| Item {
            state: state.clone(),
            i,
            finished: false,
        })
        .collect()
}

impl<F: FnOnce(Result<Vec<Value>, TaskError>)> Item<F> {
    /// Records this item's outcome; the last one in answers the message.
    pub fn finish(mut self, r: Result<Value, TaskError>) {
        self.finished = true;
        let ready = {
            let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = g.slots.get_mut(self.i) {
                *s = Some(r);
            }
            g.left = g.left.saturating_sub(1);
            if g.left == 0 {
                g.done.take().map(|d| (d, std::mem::take(&mut g.slots)))
            } else {
                None
            }
        };
        if let Some((done, slots)) = ready {
            done(slots.into_iter().flatten().collect());
        }
    }
}

impl<F: FnOnce(Result<Vec<Value>, TaskError>)> Drop for Item<F> {
    fn drop(&mut self) {
        if !self.finished {
            // Dropping the answer unrun sends the message back (worker.rs
            // `Pending`); outside the lock, as that sends on a channel.
            let d = {
                let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
                g.done.take()
            };
            drop(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kw(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn accumulate_returns_its_args_or_the_index() {
        let r = run(
            "celery.accumulate",
            vec![json!(1), json!(2)],
            Map::new(),
            "r",
            "t",
        );
        assert!(matches!(r, Outcome::Done { result, .. } if result == json!([1, 2])));
        let r = run(
            "celery.accumulate",
            vec![json!(1), json!(2)],
            kw(json!({"index": -1})),
            "r",
            "t",
        );
        assert!(matches!(r, Outcome::Done { result, .. } if result == json!(2)));
        let r = run(
            "celery.accumulate",
            vec![json!(1)],
            kw(json!({"index": 9})),
            "r",
            "t",
        );
        assert!(matches!(r, Outcome::Fail(e) if e.info.exc_type == "IndexError"));
    }

    #[test]
    fn bind_speaks_pythons_type_error() {
        let r = run("celery.map", vec![json!("math.add")], Map::new(), "r", "t");
        match r {
            Outcome::Fail(e) => assert_eq!(
                e.info.exc_message[0],
                json!("xmap() missing 1 required positional argument: 'it'")
            ),
            other => panic!("{other:?}"),
        }
        let r = run("celery.chain", vec![], Map::new(), "r", "t");
        assert!(matches!(r, Outcome::Fail(e) if e.info.exc_type == "NotImplementedError"));
    }

    #[test]
    fn chunks_send_immutable_starmaps_in_one_group() {
        let r = run(
            "celery.chunks",
            vec![],
            kw(json!({"task": {"task": "math.add"}, "it": [[1, 1], [2, 2], [3, 3]], "n": 2})),
            "R",
            "T",
        );
        let Outcome::Done {
            result, applied, ..
        } = r
        else {
            panic!("not done")
        };
        assert_eq!(applied.msgs.len(), 2);
        assert_eq!(result[1].as_array().map(Vec::len), Some(2));
        let env = protocol::Envelope::parse(applied.msgs[1].1.as_bytes()).unwrap();
        assert_eq!(env.headers.group_index, Some(1));
        assert_eq!(env.headers.parent_id.as_deref(), Some("T"));
        assert_eq!(env.body().unwrap().kwargs["it"], json!([[3, 3]]));
    }
}
