//! The bookkeeping in Redis around a finish: death lists, requeue
//! counters, the "running here" marks, and the requeue of rejected
//! messages.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use chrono::Utc;
use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::super::backend::Completion;
use super::super::protocol::{self, ResultMeta};
use super::super::transport::redis::{BrokerError, Link, DEATHS_PREFIX, LEASES, RUNNING};
use super::{Delivery, Retry, Rules, REQUEUES_PREFIX};

const RUNNING_LUA: &str = include_str!("../lua/running.lua");

/// What one finished message leaves to do in Redis once its finish is
/// stored.
#[derive(Debug, Clone)]
pub enum Tidy {
    /// Nothing.
    Nothing,
    /// It ended for good: its task's death list and requeue counter go.
    Clear(String),
    /// It was sent again: the death of this run, if it was one, goes onto
    /// its task's list; if Redis refused the retry message, `if_unsent`
    /// is stored.
    Retried {
        /// (list, description) of this run's death.
        death: Option<(String, String)>,
        /// The FAILURE to store if the retry message was not sent.
        if_unsent: Box<Completion>,
    },
}

impl Tidy {
    /// For a message of task `task_id` that ended for good.
    pub fn ended(d: &Delivery, task_id: &str) -> Tidy {
        if d.history {
            Tidy::Clear(task_id.to_string())
        } else {
            Tidy::Nothing
        }
    }

    /// For a message of task `task_id` sent again by `r`.
    /// `parent` and `group` go into the FAILURE stored if its retry is
    /// refused.
    pub fn retried(r: &Retry, task_id: &str, group: Option<&str>, parent: Option<&str>) -> Tidy {
        let mut meta = ResultMeta::failure(task_id, &r.if_unsent);
        meta.group_id = group.map(str::to_string);
        meta.parent_id = parent.map(str::to_string);
        Tidy::Retried {
            death: r.death.clone(),
            // No tag: the message is acked already.
            if_unsent: Box::new(Completion {
                task_id: task_id.to_string(),
                meta: Some(meta),
                ..Completion::default()
            }),
        }
    }
}

/// What a finished batch leaves to do in Redis (not atomic with the
/// finish: a crash in between loses a death or a requeue of the count, and
/// leaves keys that expire with the results).
#[derive(Debug, Default)]
pub struct Aftercare {
    /// Tasks that ended for good: their death list and requeue counter go.
    pub clear: Vec<String>,
    /// Deaths to record: (list, description), kept as long as results.
    pub deaths: Vec<(String, String)>,
    /// Tasks rejected with requeue and their new requeue count, written
    /// before the message is back on its queue (its next delivery reads
    /// it). A SET of the count read at delivery plus one, not an INCR: a
    /// counter Redis cannot increment (a key of another type, a text)
    /// would otherwise let a task reject with requeue for ever.
    pub requeued: Vec<(String, u32)>,
    /// FAILUREs to store for retries whose message Redis refused.
    pub unsent: Vec<Completion>,
}

impl Aftercare {
    /// The message of task `task_id`, delivered as `d`, goes back on its
    /// queue rejected.
    pub fn requeue(&mut self, task_id: &str, d: &Delivery) {
        self.requeued
            .push((task_id.to_string(), d.requeues.saturating_add(1)));
    }

    /// Adds what one stored finish leaves; `unsent`: its follow-ups Redis
    /// refused.
    pub fn add(&mut self, t: Tidy, unsent: u32) {
        match t {
            Tidy::Nothing => {}
            Tidy::Clear(id) => self.clear.push(id),
            Tidy::Retried { death, if_unsent } => {
                if unsent > 0 {
                    tracing::error!(
                        "task {}: Redis refused its retry message; its failure is stored as final",
                        if_unsent.task_id
                    );
                    self.clear.push(if_unsent.task_id.clone());
                    self.unsent.push(*if_unsent);
                } else {
                    self.deaths.extend(death);
                }
            }
        }
    }

    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.clear.is_empty() && self.deaths.is_empty() && self.requeued.is_empty()
    }

    /// Does it, in one round trip; a failure is logged (counters and lists
    /// expire on their own).
    pub fn apply(&self, link: &mut Link, ttl_s: u64) {
        if self.is_empty() {
            return;
        }
        let r = link.run(|c| {
            let mut p = redis::pipe();
            for id in &self.clear {
                p.cmd("DEL")
                    .arg(format!("{DEATHS_PREFIX}{id}"))
                    .arg(format!("{REQUEUES_PREFIX}{id}"))
                    .ignore();
            }
            for (list, death) in &self.deaths {
                p.cmd("LPUSH").arg(list).arg(death).ignore();
                p.cmd("EXPIRE").arg(list).arg(ttl_s).ignore();
            }
            for (id, n) in &self.requeued {
                p.cmd("SET")
                    .arg(format!("{REQUEUES_PREFIX}{id}"))
                    .arg(n)
                    .arg("EX")
                    .arg(ttl_s)
                    .ignore();
            }
            p.query::<()>(c)
        });
        if let Err(e) = r {
            tracing::warn!("cannot update the retry/death bookkeeping of finished tasks ({e})");
        }
    }
}

/// Puts the messages their task rejected with requeue back on their
/// queues (the host's requeue, which counts no death), retrying while
/// Redis is away until the finisher gives up (`abandon`: a stop); returns
/// how many went back.
pub fn requeue_rejected(
    link: &mut dyn crate::celery::transport::Transport,
    tags: &[String],
    abandon: &AtomicBool,
) -> u64 {
    while !tags.is_empty() {
        match link.requeue(tags) {
            Ok(n) => return n as u64,
            Err(e) => {
                if abandon.load(Ordering::Acquire) {
                    tracing::error!("cannot requeue rejected messages: {e}");
                    return 0;
                }
                std::thread::sleep(link.backoff_left().max(Duration::from_millis(20)));
            }
        }
    }
    0
}

/// Marks the messages whose task started here as running
/// (`lua/running.lua`), from a thread of its own so the consumer never
/// waits for it: a host that dies with a marked message leaves a death of
/// its task for the sweeper that restores it.
#[derive(Clone)]
pub struct Marker {
    tx: Sender<(String, String)>,
}

/// Marks waiting at most (beyond, a mark is dropped: a death of that run
/// would go uncounted, nothing else).
const MARKS_QUEUED: usize = 65_536;

impl Marker {
    /// Starts the marking thread on its own connection to `broker_url`.
    pub fn start(broker_url: &str) -> Result<Marker, BrokerError> {
        let link = Link::new(broker_url, "broker")?;
        let (tx, rx) = crossbeam_channel::bounded(MARKS_QUEUED);
        std::thread::Builder::new()
            .name("celery-marks".into())
            .spawn(move || marks(rx, link))
            .map_err(|e| BrokerError::Reply(format!("cannot start a thread: {e}")))?;
        Ok(Marker { tx })
    }

    /// Takes back the mark of message `tag`, which the reserve marked
    /// (`RedisBroker::reserve`) but which waits here instead of running
    /// (an eta, a rate limit): it is marked again when it starts.
    pub fn unmark(&self, tag: &str) {
        let _ = self.tx.try_send((tag.to_string(), String::new()));
    }

    /// The mark's tail for a run starting now on this host: `"<node>,
    /// running it since <now>"` (the reserve writes marks with it).
    pub fn who(rules: &Rules) -> String {
        format!(
            "{}, running it since {}",
            rules.node,
            protocol::iso8601(Utc::now())
        )
    }

    /// The job of message `tag` (task `task_id`) is about to start here.
    pub fn started(&self, rules: &Rules, tag: &str, task_id: &str) {
        // The mark is line-separated: a task id with a line break in it
        // (no Celery client makes one) could charge its deaths to another
        // id, so it is not marked.
        if task_id.contains('\n') || task_id.is_empty() {
            return;
        }
        let mark = format!("{}\n{task_id}\n{}", rules.ttl_s, Marker::who(rules));
        match self.tx.try_send((tag.to_string(), mark)) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                tracing::debug!("running marks are behind; task {task_id} is not marked");
            }
        }
    }
}

fn script() -> &'static redis::Script {
    static S: OnceLock<redis::Script> = OnceLock::new();
    S.get_or_init(|| redis::Script::new(RUNNING_LUA))
}

/// The marking thread: one script call per batch; ends when every
/// [`Marker`] is gone. A batch Redis does not take is retried while Redis
/// is away for a short while, then dropped (a lost mark costs only the
/// count of a death that might come).
fn marks(rx: Receiver<(String, String)>, mut link: Link) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        for attempt in 0..5u32 {
            let r = link.run(|c| {
                let mut inv = script().key(LEASES);
                inv.key(RUNNING);
                for (tag, mark) in &batch {
                    inv.arg(tag).arg(mark);
                }
                inv.invoke::<i64>(c)
            });
            match r {
                Ok(_) => break,
                Err(e) if attempt == 4 || !e.is_transient() => {
                    tracing::debug!("{} running mark(s) dropped: {e}", batch.len());
                    break;
                }
                Err(_) => std::thread::sleep(link.backoff_left().max(Duration::from_millis(20))),
            }
        }
    }
}
