//! A running task's `ctx.progress(done, total)` as Celery's custom state:
//! exactly what Python's `self.update_state(state="PROGRESS",
//! meta={"current": done, "total": total})` stores in the Redis result
//! backend (`celery-task-meta-<id>`, SETEX + PUBLISH), so a Python client
//! polling `AsyncResult(id).state` / `.info` sees `PROGRESS` and
//! `{"current": .., "total": ..}` while the task runs.
//!
//! Reports reach one writer thread (the pool already coalesces them to
//! about one per 50 ms per job); it keeps only the latest per task and never
//! writes over a finished result (`lua/progress.lua`).

use std::collections::HashMap;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;

use super::protocol::result_key;
use super::transport::redis::{BrokerError, Link};

const PROGRESS_LUA: &str = include_str!("lua/progress.lua");

/// One report.
struct Report {
    task_id: String,
    group: Option<String>,
    parent: Option<String>,
    done: u64,
    total: u64,
}

/// Celery's result meta of a custom state, fields in Python's order.
#[derive(Serialize)]
struct Meta<'a> {
    status: &'static str,
    result: Info,
    traceback: Option<()>,
    children: [(); 0],
    date_done: Option<()>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_id: Option<&'a str>,
    task_id: &'a str,
}

#[derive(Serialize)]
struct Info {
    current: u64,
    total: u64,
}

/// The JSON `update_state(state="PROGRESS", meta={"current", "total"})`
/// stores.
pub fn progress_meta(
    task_id: &str,
    group: Option<&str>,
    parent: Option<&str>,
    done: u64,
    total: u64,
) -> String {
    serde_json::to_string(&Meta {
        status: "PROGRESS",
        result: Info {
            current: done,
            total,
        },
        traceback: None,
        children: [],
        date_done: None,
        group_id: group,
        parent_id: parent,
        task_id,
    })
    .unwrap_or_default()
}

/// Sends reports to the writer thread.
#[derive(Clone)]
pub struct ProgressWriter {
    tx: Sender<Report>,
}

impl ProgressWriter {
    /// Starts the writer on the result backend at `url`.
    pub fn spawn(url: &str, expires: Duration) -> Result<ProgressWriter, BrokerError> {
        let link = Link::new(url, "result backend (progress)")?;
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("celery-progress".into())
            .spawn(move || write_reports(rx, link, expires))
            .map_err(|e| BrokerError::Reply(format!("cannot start a thread: {e}")))?;
        Ok(ProgressWriter { tx })
    }

    /// The hook for one job (see `RawResult::on_progress`).
    pub fn hook(
        &self,
        task_id: String,
        group: Option<String>,
        parent: Option<String>,
    ) -> impl Fn(u64, u64) + Send + Sync + 'static {
        let tx = self.tx.clone();
        move |done, total| {
            let _ = tx.send(Report {
                task_id: task_id.clone(),
                group: group.clone(),
                parent: parent.clone(),
                done,
                total,
            });
        }
    }
}

fn write_reports(rx: Receiver<Report>, mut link: Link, expires: Duration) {
    // Whole seconds rounded up, as the results (500 ms is 1 s, not forever).
    let ttl =
        super::transport::redis::ttl_secs(expires).unwrap_or(crate::bounds::MAX_DURATION.as_secs());
    while let Ok(first) = rx.recv() {
        // The latest report per task; the rest are stale already.
        let mut latest: HashMap<String, Report> = HashMap::new();
        latest.insert(first.task_id.clone(), first);
        while let Ok(r) = rx.try_recv() {
            latest.insert(r.task_id.clone(), r);
        }
        for r in latest.into_values() {
            let meta = progress_meta(
                &r.task_id,
                r.group.as_deref(),
                r.parent.as_deref(),
                r.done,
                r.total,
            );
            let key = result_key(&r.task_id);
            let stored = link.run(|c| {
                redis::cmd("EVAL")
                    .arg(PROGRESS_LUA)
                    .arg(1)
                    .arg(&key)
                    .arg(ttl)
                    .arg(&meta)
                    .query::<i64>(c)
            });
            if let Err(e) = stored {
                // Progress is advisory: the next report (or the result) follows.
                tracing::debug!("cannot store the progress of task {}: {e}", r.task_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_meta_is_what_update_state_writes() {
        assert_eq!(
            progress_meta("abc", None, None, 3, 10),
            r#"{"status":"PROGRESS","result":{"current":3,"total":10},"traceback":null,"children":[],"date_done":null,"task_id":"abc"}"#
        );
        assert_eq!(
            progress_meta("abc", Some("g"), Some("p"), 1, 2),
            r#"{"status":"PROGRESS","result":{"current":1,"total":2},"traceback":null,"children":[],"date_done":null,"group_id":"g","parent_id":"p","task_id":"abc"}"#
        );
    }
}
