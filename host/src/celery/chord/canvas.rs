//! Sending a signature that is not a plain task from the worker, as its
//! `apply_async` would (issue 23 item 1): a chord, group or chain as a
//! chain step or callback, and a chord's body. A chord's size goes to
//! `.s` on the result backend before its header is published
//! ([`Applied::sizes`]).

use serde_json::{Map, Value};

use super::{members, opt_str, sigs_of, MAX_DEPTH};
use crate::celery::protocol::{self, Signature};

/// What applying a signature sends.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Applied {
    /// Messages: (list key, envelope JSON).
    pub msgs: Vec<(String, String)>,
    /// Chord sizes to write to `.s` before the messages are sent.
    pub sizes: Vec<(String, u64)>,
}

/// True when `sig` is not a plain task (a chain, group or chord; a
/// `task.map`/`starmap`/`chunks` signature).
pub fn is_canvas(sig: &Signature) -> bool {
    matches!(
        sig.subtask_type.as_deref(),
        Some("chain" | "group" | "chord" | "xmap" | "xstarmap" | "chunks")
    )
}

/// Sends `sig` as its `apply_async((first,))` would: a plain task as one
/// message; a group as one message per member (`group`/`group_index`); a
/// chain as its first task with the rest in `chain`; a chord as its
/// header parts, each carrying the body, after its size. `root_id` and
/// `parent_id` are the sending task's.
pub fn apply(
    sig: &Signature,
    first: Option<Value>,
    root_id: &str,
    parent_id: &str,
    depth: u32,
    out: &mut Applied,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("a canvas nested deeper than {MAX_DEPTH} levels"));
    }
    let first = if sig.immutable { None } else { first };
    match sig.subtask_type.as_deref() {
        None | Some("") => {
            out.msgs.push(crate::celery::worker::signature_message(
                sig, first, root_id, parent_id, None,
            ));
            Ok(())
        }
        Some("group") => {
            let gid = opt_str(&sig.options, "task_id").unwrap_or_else(protocol::new_id);
            for (i, mut t) in members(sig, "tasks").into_iter().enumerate() {
                t.options
                    .entry("group_id")
                    .or_insert_with(|| Value::String(gid.clone()));
                t.options
                    .entry("group_index")
                    .or_insert_with(|| Value::from(i));
                if let Some(c) = sig.options.get("chord").filter(|c| !c.is_null()) {
                    t.options.entry("chord").or_insert_with(|| c.clone());
                }
                apply(&t, first.clone(), root_id, parent_id, depth + 1, out)?;
            }
            Ok(())
        }
        Some("chain") => {
            let mut tasks = flatten_chain(members(sig, "tasks"), depth)?;
            if tasks.is_empty() {
                return Ok(());
            }
            // The chain's own options (a chord's group_id/chord/chain
            // given to the whole chain) belong to its last task.
            if let Some(last) = tasks.last_mut() {
                for k in ["group_id", "group_index", "chord"] {
                    if let Some(v) = sig.options.get(k).filter(|v| !v.is_null()) {
                        last.options.entry(k).or_insert_with(|| v.clone());
                    }
                }
            }
            let mut head = tasks.remove(0);
            let mut rest: Vec<Signature> = tasks.into_iter().rev().collect();
            rest.splice(0..0, sigs_of(sig.options.get("chain")));
            if rest.is_empty() {
                return apply(&head, first, root_id, parent_id, depth + 1, out);
            }
            match head.subtask_type.as_deref() {
                None | Some("") => {
                    out.msgs.push(crate::celery::worker::signature_message(
                        &head,
                        if head.immutable { None } else { first },
                        root_id,
                        parent_id,
                        Some(rest),
                    ));
                    Ok(())
                }
                Some("group") => {
                    // group | task is a chord (Celery's prepare_steps
                    // upgrades it): the next task is its body.
                    let mut body = rest.pop().unwrap_or_default();
                    if !rest.is_empty() {
                        body.options.insert(
                            "chain".into(),
                            serde_json::to_value(&rest).unwrap_or(Value::Null),
                        );
                    }
                    let mut kwargs = Map::new();
                    kwargs.insert(
                        "header".into(),
                        serde_json::to_value(&head).unwrap_or(Value::Null),
                    );
                    kwargs.insert(
                        "body".into(),
                        serde_json::to_value(&body).unwrap_or(Value::Null),
                    );
                    let chord = Signature {
                        task: "celery.chord".into(),
                        kwargs,
                        subtask_type: Some("chord".into()),
                        ..Signature::default()
                    };
                    apply(&chord, first, root_id, parent_id, depth + 1, out)
                }
                _ => {
                    head.options.insert(
                        "chain".into(),
                        serde_json::to_value(&rest).unwrap_or(Value::Null),
                    );
                    apply(&head, first, root_id, parent_id, depth + 1, out)
                }
            }
        }
        Some("chord") => apply_chord(sig, first, root_id, parent_id, depth, out),
        // `task.map(...)`/`starmap(...)` send their builtin as any task
        // (the value in front, as Signature.apply_async does); `chunks`
        // ignores it (its starmaps are immutable) and is sent as the
        // `celery.chunks` builtin, which expands where it lands
        // (builtins.rs) into what Python's `chunks.apply_async` sends.
        Some("xmap" | "xstarmap" | "chunks") => {
            let first = if sig.subtask_type.as_deref() == Some("chunks") {
                None
            } else {
                first
            };
            out.msgs.push(crate::celery::worker::signature_message(
                sig, first, root_id, parent_id, None,
            ));
            Ok(())
        }
        Some(other) => Err(format!(
            "a `{other}` signature cannot be sent by this worker"
        )),
    }
}

/// Nested chains spliced into one list of steps (`prepare_steps`).
fn flatten_chain(tasks: Vec<Signature>, depth: u32) -> Result<Vec<Signature>, String> {
    if depth > MAX_DEPTH {
        return Err(format!("a chain nested deeper than {MAX_DEPTH} levels"));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        if t.subtask_type.as_deref() == Some("chain") {
            let mut inner = flatten_chain(members(&t, "tasks"), depth + 1)?;
            if let Some(a) = inner.first_mut() {
                // A nested chain's partial args go to its first task.
                a.args.splice(0..0, t.args.iter().cloned());
            }
            out.extend(inner);
        } else {
            out.push(t);
        }
    }
    Ok(out)
}

/// `chord.run`: the body frozen with the header's group id (and the
/// chord's own options: `chain`, `link`, `link_error`), the size to `.s`,
/// the header parts each with `group`/`group_index` and the body.
fn apply_chord(
    sig: &Signature,
    first: Option<Value>,
    root_id: &str,
    parent_id: &str,
    depth: u32,
    out: &mut Applied,
) -> Result<(), String> {
    let header_v = sig.kwargs.get("header").cloned().unwrap_or(Value::Null);
    let header: Vec<Signature> = match &header_v {
        Value::Array(_) => sigs_of(Some(&header_v)),
        Value::Object(_) => {
            let h: Signature = serde_json::from_value(header_v.clone())
                .map_err(|e| format!("chord header: {e}"))?;
            if h.subtask_type.as_deref() == Some("group") {
                members(&h, "tasks")
            } else {
                vec![h]
            }
        }
        _ => Vec::new(),
    };
    let gid = header_v
        .get("options")
        .and_then(|o| o.get("task_id"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(protocol::new_id);
    let mut body: Signature = sig
        .kwargs
        .get("body")
        .and_then(|b| serde_json::from_value(b.clone()).ok())
        .ok_or_else(|| "a chord without a body".to_string())?;
    for (k, v) in &sig.options {
        if matches!(
            k.as_str(),
            "task_id" | "parent_id" | "chord" | "group_id" | "group_index"
        ) || v.is_null()
        {
            continue;
        }
        if k == "link" || k == "link_error" {
            let mut all = sigs_of(body.options.get(k));
            all.extend(sigs_of(Some(v)));
            body.options
                .insert(k.clone(), serde_json::to_value(&all).unwrap_or(Value::Null));
        } else {
            body.options.insert(k.clone(), v.clone());
        }
    }
    body.options
        .entry("task_id")
        .or_insert_with(|| Value::String(protocol::new_id()));
    body.options
        .entry("group_id")
        .or_insert_with(|| Value::String(gid.clone()));
    let body_v = serde_json::to_value(&body).map_err(|e| e.to_string())?;
    if header.is_empty() {
        // An empty header: Celery sends the body at once with [].
        return apply(
            &body,
            Some(Value::Array(Vec::new())),
            root_id,
            parent_id,
            depth + 1,
            out,
        );
    }
    let size: u64 = header.iter().map(|t| descend(t, 0)).sum();
    out.sizes.push((gid.clone(), size));
    for (i, t) in header.into_iter().enumerate() {
        let t = mark_part(t, &gid, i, &body_v, depth)?;
        apply(&t, first.clone(), root_id, parent_id, depth + 1, out)?;
    }
    Ok(())
}

/// A header member frozen as `_freeze_group_tasks` does: `group_id`,
/// `group_index` and the body on the task that completes it (a chain's
/// last step; every member of a nested group).
fn mark_part(
    mut t: Signature,
    gid: &str,
    i: usize,
    body: &Value,
    depth: u32,
) -> Result<Signature, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "a chord header nested deeper than {MAX_DEPTH} levels"
        ));
    }
    match t.subtask_type.as_deref() {
        Some("chain") => {
            let mut tasks = flatten_chain(members(&t, "tasks"), depth + 1)?;
            if let Some(last) = tasks.pop() {
                tasks.push(mark_part(last, gid, i, body, depth + 1)?);
            }
            t.kwargs.insert(
                "tasks".into(),
                serde_json::to_value(&tasks).unwrap_or(Value::Null),
            );
        }
        Some("group") => {
            return Err(
                "a chord header holding a group (Celery saves a GroupResult for it, which this \
                 worker does not write)"
                    .into(),
            )
        }
        _ => {
            t.options
                .insert("group_id".into(), Value::String(gid.into()));
            t.options.insert("group_index".into(), Value::from(i));
            t.options.insert("chord".into(), body.clone());
        }
    }
    Ok(t)
}

/// `chord._descend`: how many parts a header member counts for.
fn descend(t: &Signature, depth: u32) -> u64 {
    if depth > MAX_DEPTH {
        return 0;
    }
    match t.subtask_type.as_deref() {
        Some("group") => members(t, "tasks")
            .iter()
            .map(|m| descend(m, depth + 1))
            .sum(),
        Some("chain") => members(t, "tasks")
            .iter()
            .rev()
            .map(|m| descend(m, depth + 1))
            .find(|n| *n > 0)
            .unwrap_or(0),
        Some("chord") => t
            .kwargs
            .get("body")
            .and_then(|b| serde_json::from_value::<Signature>(b.clone()).ok())
            .map(|b| descend(&b, depth + 1))
            .unwrap_or(0),
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sig(v: Value) -> Signature {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_chord_step_sizes_its_header_and_marks_each_part() {
        let chord = sig(
            json!({"task": "celery.chord", "args": [], "kwargs": {"kwargs": {},
            "header": {"task": "celery.group", "args": [], "kwargs": {"tasks": [
                {"task": "celery.chain", "args": [], "kwargs": {"tasks": [
                    {"task": "math.square", "args": [], "kwargs": {}, "options": {"task_id": "c1"}, "subtask_type": null, "immutable": false},
                    {"task": "math.square", "args": [], "kwargs": {}, "options": {"task_id": "c2"}, "subtask_type": null, "immutable": false}]},
                 "options": {"task_id": "c2"}, "subtask_type": "chain", "immutable": false},
                {"task": "math.square", "args": [5], "kwargs": {}, "options": {"task_id": "p2"}, "subtask_type": null, "immutable": false}]},
              "options": {"task_id": "G"}, "subtask_type": "group", "immutable": false},
            "body": {"task": "math.sum", "args": [], "kwargs": {}, "options": {"task_id": "B"}, "subtask_type": null, "immutable": false}},
            "options": {"task_id": "G", "chain": [{"task": "py.double", "args": [], "kwargs": {}, "options": {"task_id": "D", "queue": "py"}, "subtask_type": null, "immutable": false}]},
            "subtask_type": "chord", "immutable": false}),
        );
        let mut out = Applied::default();
        apply(&chord, Some(json!(4)), "R", "P", 0, &mut out).unwrap();
        assert_eq!(out.sizes, vec![("G".to_string(), 2)]);
        assert_eq!(out.msgs.len(), 2);
        let env = crate::celery::protocol::Envelope::parse(out.msgs[0].1.as_bytes()).unwrap();
        assert_eq!(env.task_id(), Some("c1"));
        let b = env.body().unwrap();
        assert_eq!(b.args, vec![json!(4)]);
        let last = &b.embed.chain.unwrap()[0];
        assert_eq!(last.options["group_id"], "G");
        assert_eq!(last.options["group_index"], 0);
        assert_eq!(last.options["chord"]["options"]["task_id"], "B");
        assert_eq!(
            last.options["chord"]["options"]["chain"][0]["options"]["task_id"],
            "D"
        );
        let env = crate::celery::protocol::Envelope::parse(out.msgs[1].1.as_bytes()).unwrap();
        assert_eq!(env.headers.group.as_deref(), Some("G"));
        assert_eq!(env.headers.group_index, Some(1));
        let b = env.body().unwrap();
        assert_eq!(b.args, vec![json!(4), json!(5)]);
        assert_eq!(b.embed.chord.unwrap()["options"]["group_id"], "G");
    }
}
