//! Celery events (`-E`): the `celeryev` fanout exchange as kombu's Redis
//! transport lays it out: `PUBLISH /{db}.celeryev/{routing_key}` of a kombu
//! envelope whose base64 body is the event as JSON. The routing key is the
//! event type with `-` → `.` (`worker.heartbeat`, `task.succeeded`).
//!
//! Events are queued on a channel and published by one thread with its own
//! connection, so the consumer loop never waits for Redis on their account;
//! the same thread sends `worker-heartbeat` every [`HEARTBEAT`]. An event
//! that cannot be published (Redis away) is dropped, as Celery drops them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::{json, Map, Value};

use super::transport::redis::BrokerError;
use super::transport::{Fanout, EVENTS};

/// How often `worker-heartbeat` is sent (Celery's default `freq`).
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// `sw_ident` of our events.
pub const SW_IDENT: &str = "billiard-host";

/// Lamport clock shared by events and remote-control replies (Celery
/// keeps one per app: `app.clock`).
#[derive(Debug, Default)]
pub struct Clock(AtomicU64);

impl Clock {
    /// The next value.
    pub fn forward(&self) -> u64 {
        self.0.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Takes in a value seen from another node.
    pub fn adjust(&self, other: u64) {
        self.0.fetch_max(other, Ordering::AcqRel);
    }

    /// The current value, without advancing it.
    pub fn value(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// What a heartbeat says besides the fixed fields.
pub trait HeartbeatSource: Send + Sync {
    /// (active, processed).
    fn load(&self) -> (u64, u64);
}

/// The publishing side: cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    tx: Sender<Msg>,
    common: Arc<Common>,
}

struct Common {
    hostname: String,
    pid: u32,
    clock: Arc<Clock>,
    /// Task events on (Celery's `enable_events` / `disable_events`);
    /// worker events are always sent while the dispatcher runs.
    tasks_on: AtomicBool,
}

enum Msg {
    Event(String, Map<String, Value>),
    Stop(Sender<()>),
}

/// Hours west of UTC, as Celery's `utcoffset()`.
pub fn utcoffset() -> f64 {
    use chrono::Offset;
    let secs = chrono::Local::now().offset().fix().local_minus_utc();
    -(secs as f64) / 3600.0
}

/// Seconds since the Unix epoch, the form of the events' `timestamp`.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The system load averages (`/proc/loadavg`), rounded as Celery does.
pub fn loadavg() -> Vec<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let v: Vec<f64> = text
        .split_whitespace()
        .take(3)
        .filter_map(|s| s.parse::<f64>().ok())
        .map(|x| (x * 100.0).round() / 100.0)
        .collect();
    if v.len() == 3 {
        v
    } else {
        vec![0.0, 0.0, 0.0]
    }
}

/// The Redis database number of a broker URL (the `{db}` of kombu's
/// fanout channel names).
pub fn db_of(url: &str) -> Result<i64, BrokerError> {
    let c = super::transport::redis::client(url)?;
    Ok(c.get_connection_info().redis_settings().db())
}

/// The kombu envelope of a fanout/direct message with a JSON body.
pub fn envelope(
    body: &Value,
    headers: Value,
    exchange: &str,
    routing_key: &str,
    delivery_mode: u8,
) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(body.to_string());
    json!({
        "body": b64,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "delivery_mode": delivery_mode,
            "delivery_info": {"exchange": exchange, "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": uuid::Uuid::new_v4().to_string(),
        },
    })
    .to_string()
}

impl Dispatcher {
    /// Starts the publishing thread; `worker-online` is sent first.
    pub fn start(
        broker_url: &str,
        hostname: &str,
        clock: Arc<Clock>,
        load: Arc<dyn HeartbeatSource>,
    ) -> Result<Dispatcher, BrokerError> {
        let link = super::transport::fanout(broker_url, "events")?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let common = Arc::new(Common {
            hostname: hostname.to_string(),
            pid: std::process::id(),
            clock,
            tasks_on: AtomicBool::new(true),
        });
        let d = Dispatcher { tx, common };
        let me = d.clone();
        std::thread::Builder::new()
            .name("celery-events".into())
            .spawn(move || me.run(rx, link, load))
            .map_err(|e| BrokerError::Reply(format!("cannot start a thread: {e}")))?;
        Ok(d)
    }

    /// The `hostname` of the events this dispatcher sends (`NAME@host`).
    pub fn hostname(&self) -> &str {
        &self.common.hostname
    }

    /// Turns task events on or off; true if it changed.
    pub fn set_task_events(&self, on: bool) -> bool {
        self.common.tasks_on.swap(on, Ordering::AcqRel) != on
    }

    /// Queues a task event (`task-received`, ...) with its own fields.
    pub fn task(&self, ty: &str, fields: Map<String, Value>) {
        if self.common.tasks_on.load(Ordering::Acquire) {
            let _ = self.tx.send(Msg::Event(ty.to_string(), fields));
        }
    }

    /// Queues a worker event now (`worker-heartbeat` on request).
    pub fn worker(&self, ty: &str) {
        let _ = self.tx.send(Msg::Event(ty.to_string(), Map::new()));
    }

    /// Sends `worker-offline` and waits (up to `limit`) until it is out.
    pub fn stop(&self, limit: Duration) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.tx.send(Msg::Stop(tx)).is_ok() {
            let _ = rx.recv_timeout(limit);
        }
    }

    fn fill(&self, ty: &str, mut fields: Map<String, Value>, load: &dyn HeartbeatSource) -> Value {
        let c = &self.common;
        fields.insert("hostname".into(), c.hostname.clone().into());
        fields.insert("utcoffset".into(), utcoffset().into());
        fields.insert("pid".into(), c.pid.into());
        fields.insert("clock".into(), c.clock.forward().into());
        if ty.starts_with("worker-") {
            let (active, processed) = load.load();
            fields.insert("freq".into(), HEARTBEAT.as_secs_f64().into());
            fields.insert("active".into(), active.into());
            fields.insert("processed".into(), processed.into());
            fields.insert("loadavg".into(), json!(loadavg()));
            fields.insert("sw_ident".into(), SW_IDENT.into());
            fields.insert("sw_ver".into(), env!("CARGO_PKG_VERSION").into());
            fields.insert("sw_sys".into(), "Linux".into());
        }
        fields.insert("timestamp".into(), unix_now().into());
        fields.insert("type".into(), ty.into());
        Value::Object(fields)
    }

    fn publish(&self, link: &mut dyn Fanout, ty: &str, event: &Value) {
        let rk = ty.replace('-', ".");
        let env = envelope(
            event,
            json!({"hostname": self.common.hostname}),
            "celeryev",
            &rk,
            1,
        );
        let r = link.publish(&EVENTS, &rk, &env);
        if let Err(e) = r {
            tracing::debug!("event {ty} dropped: {e}");
        }
    }

    fn run(self, rx: Receiver<Msg>, mut link: Box<dyn Fanout>, load: Arc<dyn HeartbeatSource>) {
        let online = self.fill("worker-online", Map::new(), load.as_ref());
        self.publish(&mut *link, "worker-online", &online);
        let mut next = crate::bounds::saturating_deadline(Instant::now(), HEARTBEAT);
        loop {
            let wait = next.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Msg::Event(ty, fields)) => {
                    if link.is_down() && !link.backoff_left().is_zero() {
                        continue; // Redis away: drop rather than fall behind.
                    }
                    let ev = self.fill(&ty, fields, load.as_ref());
                    self.publish(&mut *link, &ty, &ev);
                }
                Ok(Msg::Stop(done)) => {
                    let ev = self.fill("worker-offline", Map::new(), load.as_ref());
                    self.publish(&mut *link, "worker-offline", &ev);
                    let _ = done.send(());
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    next = crate::bounds::saturating_deadline(Instant::now(), HEARTBEAT);
                    if link.is_down() && !link.backoff_left().is_zero() {
                        continue;
                    }
                    let ev = self.fill("worker-heartbeat", Map::new(), load.as_ref());
                    self.publish(&mut *link, "worker-heartbeat", &ev);
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_kombus() {
        let s = envelope(
            &json!({"type": "worker-online"}),
            json!({"hostname": "a@b"}),
            "celeryev",
            "worker.online",
            1,
        );
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["properties"]["delivery_info"]["exchange"], "celeryev");
        assert_eq!(v["properties"]["body_encoding"], "base64");
        let body = base64::engine::general_purpose::STANDARD
            .decode(v["body"].as_str().unwrap())
            .unwrap();
        let b: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(b["type"], "worker-online");
    }

    #[test]
    fn db_numbers() {
        assert_eq!(db_of("redis://127.0.0.1:6379/3").unwrap(), 3);
        assert_eq!(db_of("redis://127.0.0.1:6379").unwrap(), 0);
    }
}
