//! A running task's `ctx.progress(done, total)` as Celery's custom state:
//! exactly what Python's `self.update_state(state="PROGRESS",
//! meta={"current": done, "total": total})` stores in the Redis result
//! backend (`celery-task-meta-<id>`, SETEX + PUBLISH), so a Python client
//! polling `AsyncResult(id).state` / `.info` sees `PROGRESS` and
//! `{"current": .., "total": ..}` while the task runs.
//!
//! Reports reach one writer thread (the pool already coalesces them to
//! about one per 50 ms per job); it keeps only the latest per task and never
//! writes over a finished result (`lua/progress.lua`). With the `rpc://`
//! backend the meta is published to the client's reply queue instead, as
//! Celery's `update_state` does there (a task sent without a `reply_to`
//! reports to no one).
//!
//! With `--track-started` the same writer stores STARTED (`{"pid",
//! "hostname"}`) when a task is handed to the pool, as Celery's worker
//! does with `task_track_started`.

use std::collections::HashMap;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;

use super::protocol::result_key;
use super::transport::redis::{BrokerError, Link};
use super::transport::{Reply, Transport};

const PROGRESS_LUA: &str = include_str!("lua/progress.lua");

/// One report.
struct Report {
    task_id: String,
    group: Option<String>,
    parent: Option<String>,
    /// `rpc://`: the reply queue and correlation id.
    reply: Option<(String, String)>,
    state: State,
}

/// What a report says.
#[derive(Clone)]
enum State {
    /// `ctx.progress(done, total)`: Celery's custom state PROGRESS.
    Progress { done: u64, total: u64 },
    /// The task was handed to the pool (`--track-started`, Celery's
    /// `task_track_started`): STARTED, `{"pid", "hostname"}`.
    Started { pid: u32, hostname: String },
}

/// Where the writer stores reports.
enum Sink {
    /// The Redis result backend, with the results' time to live.
    Redis(Box<Link>, Duration),
    /// `rpc://`: reply queues on the AMQP broker.
    Rpc(Box<dyn Transport>),
}

/// Celery's result meta of a custom state, fields in Python's order.
#[derive(Serialize)]
struct Meta<'a> {
    status: &'static str,
    result: Info<'a>,
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
#[serde(untagged)]
enum Info<'a> {
    Progress { current: u64, total: u64 },
    Started { pid: u32, hostname: &'a str },
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
    meta_json(task_id, group, parent, &State::Progress { done, total })
}

/// The JSON of a report's state, fields in Python's order.
fn meta_json(task_id: &str, group: Option<&str>, parent: Option<&str>, state: &State) -> String {
    let (status, result) = match state {
        State::Progress { done, total } => (
            "PROGRESS",
            Info::Progress {
                current: *done,
                total: *total,
            },
        ),
        State::Started { pid, hostname } => (
            "STARTED",
            Info::Started {
                pid: *pid,
                hostname,
            },
        ),
    };
    serde_json::to_string(&Meta {
        status,
        result,
        traceback: None,
        children: [],
        date_done: None,
        group_id: group,
        parent_id: parent,
        task_id,
    })
    .unwrap_or_default()
}

impl Report {
    fn meta(&self) -> String {
        meta_json(
            &self.task_id,
            self.group.as_deref(),
            self.parent.as_deref(),
            &self.state,
        )
    }
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
        ProgressWriter::start(Sink::Redis(Box::new(link), expires))
    }

    /// Starts the writer for the `rpc://` backend, publishing on `broker`
    /// (a handle on the AMQP broker).
    pub fn spawn_rpc(broker: Box<dyn Transport>) -> Result<ProgressWriter, BrokerError> {
        ProgressWriter::start(Sink::Rpc(broker))
    }

    fn start(sink: Sink) -> Result<ProgressWriter, BrokerError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("celery-progress".into())
            .spawn(move || write_reports(rx, sink))
            .map_err(|e| BrokerError::Reply(format!("cannot start a thread: {e}")))?;
        Ok(ProgressWriter { tx })
    }

    /// The hook for one job (see `RawResult::on_progress`).
    pub fn hook(
        &self,
        task_id: String,
        group: Option<String>,
        parent: Option<String>,
        reply: Option<(String, String)>,
    ) -> impl Fn(u64, u64) + Send + Sync + 'static {
        let tx = self.tx.clone();
        move |done, total| {
            let _ = tx.send(Report {
                task_id: task_id.clone(),
                group: group.clone(),
                parent: parent.clone(),
                reply: reply.clone(),
                state: State::Progress { done, total },
            });
        }
    }

    /// Stores (or publishes, on `rpc://`) STARTED for a task handed to the
    /// pool, as Celery's worker does with `task_track_started`; `pid` is
    /// the host's (the pool picks the worker process later), `hostname`
    /// the node name. Like PROGRESS, it never overwrites a finished result.
    pub fn started(
        &self,
        task_id: String,
        group: Option<String>,
        parent: Option<String>,
        reply: Option<(String, String)>,
        hostname: String,
    ) {
        let _ = self.tx.send(Report {
            task_id,
            group,
            parent,
            reply,
            state: State::Started {
                pid: std::process::id(),
                hostname,
            },
        });
    }
}

fn write_reports(rx: Receiver<Report>, mut sink: Sink) {
    while let Ok(first) = rx.recv() {
        // The latest report per task; the rest are stale already.
        let mut latest: HashMap<String, Report> = HashMap::new();
        latest.insert(first.task_id.clone(), first);
        while let Ok(r) = rx.try_recv() {
            latest.insert(r.task_id.clone(), r);
        }
        let (link, expires) = match &mut sink {
            Sink::Redis(link, expires) => (link, *expires),
            Sink::Rpc(broker) => {
                publish_reports(&mut **broker, latest.into_values());
                continue;
            }
        };
        // Whole seconds rounded up, as the results (500 ms is 1 s, not forever).
        let ttl = super::transport::redis::ttl_secs(expires)
            .unwrap_or(crate::bounds::MAX_DURATION.as_secs());
        for r in latest.into_values() {
            let meta = r.meta();
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

/// `rpc://`: each task's latest report to its client's reply queue (the
/// broker confirms them; the result, published later on the same channel,
/// arrives after them).
fn publish_reports(broker: &mut dyn Transport, reports: impl Iterator<Item = Report>) {
    let replies: Vec<Reply> = reports
        .filter_map(|r| {
            let body = r.meta();
            let (to, correlation_id) = r.reply?;
            Some(Reply {
                to,
                correlation_id,
                body,
            })
        })
        .collect();
    if let Err(e) = broker.reply(&replies) {
        // Progress is advisory: the next report (or the result) follows.
        tracing::debug!(
            "cannot publish the progress of {} task(s): {e}",
            replies.len()
        );
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

    #[test]
    fn started_is_what_task_track_started_stores() {
        let state = State::Started {
            pid: 42,
            hostname: "celery@h".into(),
        };
        assert_eq!(
            meta_json("abc", None, Some("p"), &state),
            r#"{"status":"STARTED","result":{"pid":42,"hostname":"celery@h"},"traceback":null,"children":[],"date_done":null,"parent_id":"p","task_id":"abc"}"#
        );
    }
}
