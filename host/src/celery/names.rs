//! Celery task names and argument binding (issue 29 items 1 and 4).
//!
//! A Celery app names its tasks by module path (`proj.tasks.add`). The
//! worker answers to such a name when the plugin registered it
//! (`#[task(name = "proj.tasks.add")]`, resolved by
//! [`crate::plugin::resolve_task`] before any `plugin.task` splitting) or
//! when the worker maps it (`--task-name proj.tasks.add=math.add`, or a
//! `--task-names FILE` of such lines): [`TaskAlias`].
//!
//! [`bind`] puts a message's `args` and `kwargs` into the task's positional
//! order as Python binds a call to a `def`: defaults (`#[task(defaults(z =
//! 3))]`, `None` for a trailing `Option<T>`), keywords, a variadic tail
//! (`#[task(varargs)]`), and CPython's `TypeError` wording when they do not
//! fit.

use serde_json::{Map, Value};

use crate::task_options::{check_name, TaskOptions};

/// `--task-name CELERY=PLUGIN.TASK`: a Celery name the worker answers to
/// with a plugin's task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskAlias {
    /// The name a Celery client sends (`proj.tasks.add`).
    pub celery: String,
    /// The task it runs (`math.add`, or a bare task name).
    pub target: String,
}

/// The longest `--task-names` file read (a map of names, not data).
const MAX_MAP_FILE: u64 = 1 << 20;

/// Parses `CELERY=PLUGIN.TASK` (the flag's value parser).
pub fn parse_task_alias(s: &str) -> Result<TaskAlias, String> {
    let Some((celery, target)) = s.split_once('=') else {
        return Err(format!(
            "{s:?} is not CELERY=PLUGIN.TASK (e.g. proj.tasks.add=math.add)"
        ));
    };
    let (celery, target) = (celery.trim(), target.trim());
    check_name(celery)?;
    check_name(target).map_err(|e| format!("{celery}: {e}"))?;
    Ok(TaskAlias {
        celery: celery.to_string(),
        target: target.to_string(),
    })
}

/// Reads a `--task-names` file: one `CELERY=PLUGIN.TASK` a line; blank
/// lines and `#` comments are skipped. Errors name the line.
pub fn read_task_aliases(path: &std::path::Path) -> Result<Vec<TaskAlias>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    f.take(MAX_MAP_FILE.saturating_add(1))
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() as u64 > MAX_MAP_FILE {
        return Err(format!(
            "{}: longer than {MAX_MAP_FILE} bytes",
            path.display()
        ));
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let a = parse_task_alias(line)
            .map_err(|e| format!("{}:{}: {e}", path.display(), i.saturating_add(1)))?;
        out.push(a);
    }
    Ok(out)
}

/// Checks a worker's aliases: no Celery name mapped twice to different
/// tasks (the first would silently lose).
pub fn check_aliases(aliases: &[TaskAlias]) -> Result<(), String> {
    for (i, a) in aliases.iter().enumerate() {
        if let Some(b) = aliases
            .iter()
            .skip(i.saturating_add(1))
            .find(|b| b.celery == a.celery && b.target != a.target)
        {
            return Err(format!(
                "--task-name: `{}` is mapped to both `{}` and `{}`",
                a.celery, a.target, b.target
            ));
        }
    }
    Ok(())
}

/// The task `name` names, through the aliases (an alias wins, as the
/// worker's own configuration); `name` itself otherwise.
pub fn through_aliases<'a>(aliases: &'a [TaskAlias], name: &'a str) -> &'a str {
    aliases
        .iter()
        .find(|a| a.celery == name)
        .map_or(name, |a| a.target.as_str())
}

/// How a task's parameters bind a call: names in order, the defaults, and
/// whether the last takes the extra positional arguments.
pub struct Params<'a> {
    /// The function's name, as Python's messages say it (`add`).
    pub func: &'a str,
    /// Every parameter, in order (the variadic tail last).
    pub names: &'a [String],
    /// Defaults and the variadic flag.
    pub options: &'a TaskOptions,
}

/// `'a'`, `'a' and 'b'`, `'a', 'b', and 'c'` (CPython's list of names).
fn name_list(names: &[&str]) -> String {
    let q: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    match q.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [a, b] => format!("{a} and {b}"),
        [init @ .., last] => format!("{}, and {last}", init.join(", ")),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Binds `args` and `kwargs` to the parameters as CPython binds a call,
/// or says why not in CPython's `TypeError` words.
pub fn bind(
    p: &Params<'_>,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
) -> Result<Vec<Value>, String> {
    let func = p.func;
    let varargs = p.options.varargs && !p.names.is_empty();
    let fixed: &[String] = if varargs {
        p.names.split_last().map_or(&[], |(_, f)| f)
    } else {
        p.names
    };
    let n = fixed.len();
    let defaulted = |name: &str| p.options.defaults.get(name);
    if !varargs && args.len() > n {
        // CPython: "takes 2 positional arguments but 3 were given", or
        // "takes from 1 to 2 positional arguments" with defaults.
        let required = fixed.iter().take_while(|a| defaulted(a).is_none()).count();
        let takes = if required < n {
            format!("from {required} to {n}")
        } else {
            n.to_string()
        };
        let given = args.len();
        return Err(format!(
            "{func}() takes {takes} positional argument{} but {given} {} given",
            plural(n),
            if given == 1 { "was" } else { "were" }
        ));
    }
    let mut args = args.into_iter();
    let mut slots: Vec<Option<Value>> = args.by_ref().take(n).map(Some).collect();
    let rest: Vec<Value> = args.collect();
    slots.resize(n, None);
    for (k, v) in kwargs {
        match fixed.iter().position(|a| *a == k) {
            Some(i) => match slots.get_mut(i) {
                Some(Some(_)) => {
                    return Err(format!("{func}() got multiple values for argument '{k}'"))
                }
                Some(slot) => *slot = Some(v),
                None => {}
            },
            // The variadic tail is not a keyword in Python either.
            None => return Err(format!("{func}() got an unexpected keyword argument '{k}'")),
        }
    }
    let missing: Vec<&str> = slots
        .iter()
        .zip(fixed)
        .filter(|(s, a)| s.is_none() && defaulted(a).is_none())
        .map(|(_, a)| a.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{func}() missing {} required positional argument{}: {}",
            missing.len(),
            plural(missing.len()),
            name_list(&missing)
        ));
    }
    let mut out: Vec<Value> = slots
        .into_iter()
        .zip(fixed)
        .map(|(s, a)| s.or_else(|| defaulted(a).cloned()).unwrap_or(Value::Null))
        .collect();
    if varargs {
        out.push(Value::Array(rest));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn kw(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn call(n: &[&str], o: &TaskOptions, args: Value, kwargs: Value) -> Result<Vec<Value>, String> {
        let n = names(n);
        let p = Params {
            func: "add",
            names: &n,
            options: o,
        };
        bind(&p, args.as_array().cloned().unwrap_or_default(), kw(kwargs))
    }

    #[test]
    fn binds_as_cpython_does() {
        let plain = TaskOptions::default();
        assert_eq!(
            call(&["a", "b"], &plain, json!([1]), json!({})).unwrap_err(),
            "add() missing 1 required positional argument: 'b'"
        );
        assert_eq!(
            call(&["a", "b", "c"], &plain, json!([]), json!({})).unwrap_err(),
            "add() missing 3 required positional arguments: 'a', 'b', and 'c'"
        );
        assert_eq!(
            call(&["a", "b"], &plain, json!([1, 2, 3]), json!({})).unwrap_err(),
            "add() takes 2 positional arguments but 3 were given"
        );
        assert_eq!(
            call(&[], &plain, json!([3]), json!({})).unwrap_err(),
            "add() takes 0 positional arguments but 1 was given"
        );
        assert_eq!(
            call(&["a", "b"], &plain, json!([1, 2]), json!({"c": 3})).unwrap_err(),
            "add() got an unexpected keyword argument 'c'"
        );
        assert_eq!(
            call(&["a", "b"], &plain, json!([1, 2]), json!({"a": 3})).unwrap_err(),
            "add() got multiple values for argument 'a'"
        );
        let d = TaskOptions {
            defaults: [("z".to_string(), json!(3)), ("w".to_string(), Value::Null)]
                .into_iter()
                .collect(),
            ..TaskOptions::default()
        };
        assert_eq!(
            call(&["x", "y", "z", "w"], &d, json!([1, 2]), json!({})).unwrap(),
            [json!(1), json!(2), json!(3), Value::Null]
        );
        assert_eq!(
            call(
                &["x", "y", "z", "w"],
                &d,
                json!([1]),
                json!({"y": 2, "w": 5})
            )
            .unwrap(),
            [json!(1), json!(2), json!(3), json!(5)]
        );
        assert_eq!(
            call(&["x", "y", "z", "w"], &d, json!([1, 2, 3, 4, 5]), json!({})).unwrap_err(),
            "add() takes from 2 to 4 positional arguments but 5 were given"
        );
        let v = TaskOptions {
            varargs: true,
            ..TaskOptions::default()
        };
        assert_eq!(
            call(&["a", "rest"], &v, json!([1, 2, 3]), json!({})).unwrap(),
            [json!(1), json!([2, 3])]
        );
        assert_eq!(
            call(&["a", "rest"], &v, json!([]), json!({"a": 1})).unwrap(),
            [json!(1), json!([])]
        );
        assert_eq!(
            call(&["a", "rest"], &v, json!([1]), json!({"rest": [2]})).unwrap_err(),
            "add() got an unexpected keyword argument 'rest'"
        );
    }

    #[test]
    fn aliases_parse_and_refuse_nonsense() {
        assert_eq!(
            parse_task_alias(" proj.tasks.add = math.add ").unwrap(),
            TaskAlias {
                celery: "proj.tasks.add".into(),
                target: "math.add".into()
            }
        );
        for bad in ["", "x", "=math.add", "a b=math.add", "proj.add=", "p=a b"] {
            assert!(parse_task_alias(bad).is_err(), "{bad}");
        }
        let long = format!("{}=math.add", "x".repeat(300));
        assert!(parse_task_alias(&long).is_err());
        let a = |c: &str, t: &str| TaskAlias {
            celery: c.into(),
            target: t.into(),
        };
        assert!(check_aliases(&[a("p.add", "math.add"), a("p.add", "math.sum")]).is_err());
        assert!(check_aliases(&[a("p.add", "math.add"), a("p.add", "math.add")]).is_ok());
        let list = [a("p.add", "math.add")];
        assert_eq!(through_aliases(&list, "p.add"), "math.add");
        assert_eq!(through_aliases(&list, "math.sum"), "math.sum");
    }
}
