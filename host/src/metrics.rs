//! Prometheus metrics (`/metrics`, OpenMetrics text from the
//! `prometheus-client` crate) and a liveness probe (`/healthz`) on a small
//! blocking HTTP server (`tiny_http`, one thread; no async runtime in a
//! process that forks).
//!
//! Names (all prefixed `billiard_`), see docs/celery.md "Operating the fleet".

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::error::ErrorKind;
use crate::pool::Stats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskOutcome {
    task: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabel {
    task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cause {
    cause: String,
}

fn seconds_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

/// Whether the process is healthy, and why not.
pub type HealthCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The worker's metrics; cheap to share (`Arc`).
pub struct Metrics {
    registry: Registry,
    tasks: Family<TaskOutcome, Counter>,
    received: Family<TaskLabel, Counter>,
    runtime: Family<TaskLabel, Histogram, fn() -> Histogram>,
    queue_wait: Family<TaskLabel, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    workers_alive: Gauge,
    replacements: Family<Cause, Counter>,
    broker_reconnects: Counter,
    reserve_latency: Histogram,
    ack_latency: Histogram,
    rate_limited: Family<TaskLabel, Gauge>,
    /// Last pool counters seen, to turn snapshots into increments.
    last: Mutex<BTreeMap<&'static str, u64>>,
    /// Why the pool stopped under the worker, once it did (`/healthz`
    /// answers 503 with it).
    lost: Mutex<Option<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Empty metrics (every counter at zero), registered under the
    /// `billiard_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("billiard");
        let tasks = Family::<TaskOutcome, Counter>::default();
        registry.register(
            "celery_tasks",
            "Tasks finished, by task and outcome (success, revoked, or the error kind)",
            tasks.clone(),
        );
        let received = Family::<TaskLabel, Counter>::default();
        registry.register(
            "celery_tasks_received",
            "Task messages received, by task",
            received.clone(),
        );
        let runtime: Family<TaskLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(seconds_histogram);
        registry.register(
            "celery_task_runtime_seconds",
            "Task run time (from the job's start to its outcome), by task",
            runtime.clone(),
        );
        let queue_wait: Family<TaskLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(seconds_histogram);
        registry.register(
            "celery_queue_wait_seconds",
            "Time from receipt (or from the eta) to the job's start on this host, by task",
            queue_wait.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "celery_tasks_in_flight",
            "Jobs running in the pool now",
            in_flight.clone(),
        );
        let workers_alive = Gauge::default();
        registry.register(
            "pool_workers_alive",
            "Live worker processes",
            workers_alive.clone(),
        );
        let replacements = Family::<Cause, Counter>::default();
        registry.register(
            "pool_worker_replacements",
            "Worker processes replaced, by cause (signal: died other than by a clean exit; \
             recycle: max tasks / max memory; limits: killed at a hard time limit)",
            replacements.clone(),
        );
        let broker_reconnects = Counter::default();
        registry.register(
            "celery_broker_reconnects",
            "Times the broker became reachable again after an outage",
            broker_reconnects.clone(),
        );
        let reserve_latency = latency_histogram();
        registry.register(
            "celery_reserve_latency_seconds",
            "Round trip of one reserve call (Lua pop + unacked record)",
            reserve_latency.clone(),
        );
        let ack_latency = latency_histogram();
        registry.register(
            "celery_ack_latency_seconds",
            "Round trip of one store-results-and-ack call (a batch)",
            ack_latency.clone(),
        );
        let rate_limited = Family::<TaskLabel, Gauge>::default();
        registry.register(
            "celery_rate_limited_waiting",
            "Messages reserved and waiting for their task's rate limit, by task",
            rate_limited.clone(),
        );
        Metrics {
            rate_limited,
            registry,
            tasks,
            received,
            runtime,
            queue_wait,
            in_flight,
            workers_alive,
            replacements,
            broker_reconnects,
            reserve_latency,
            ack_latency,
            last: Mutex::new(BTreeMap::new()),
            lost: Mutex::new(None),
        }
    }

    /// A task message for `task` was received (`celery_tasks_received`).
    pub fn received(&self, task: &str) {
        self.received
            .get_or_create(&TaskLabel { task: task.into() })
            .inc();
    }

    /// A job of `task` started after waiting `waited` since its receipt (or
    /// its eta): `celery_tasks_in_flight` goes up, `waited` goes into
    /// `celery_queue_wait_seconds`.
    pub fn started(&self, task: &str, waited: Duration) {
        self.in_flight.inc();
        self.queue_wait
            .get_or_create(&TaskLabel { task: task.into() })
            .observe(waited.as_secs_f64());
    }

    /// `ran`: the job had started (it was counted in flight).
    pub fn finished(&self, task: &str, outcome: &str, runtime: Option<Duration>, ran: bool) {
        if ran {
            self.in_flight.dec();
        }
        self.tasks
            .get_or_create(&TaskOutcome {
                task: task.into(),
                outcome: outcome.into(),
            })
            .inc();
        if let Some(r) = runtime {
            self.runtime
                .get_or_create(&TaskLabel { task: task.into() })
                .observe(r.as_secs_f64());
        }
    }

    /// `n` messages of `task` wait for its rate limit
    /// (`celery_rate_limited_waiting`).
    pub fn rate_limited(&self, task: &str, n: usize) {
        self.rate_limited
            .get_or_create(&TaskLabel { task: task.into() })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The broker became reachable again after an outage
    /// (`celery_broker_reconnects`).
    pub fn broker_reconnect(&self) {
        self.broker_reconnects.inc();
    }

    /// One reserve call took `d` (`celery_reserve_latency_seconds`).
    pub fn reserve_latency(&self, d: Duration) {
        self.reserve_latency.observe(d.as_secs_f64());
    }

    /// One store-results-and-ack call took `d`
    /// (`celery_ack_latency_seconds`).
    pub fn ack_latency(&self, d: Duration) {
        self.ack_latency.observe(d.as_secs_f64());
    }

    /// The pool stopped (its supervisor thread ended): no live workers
    /// from now on, whatever the last snapshot said, and `why` for
    /// `/healthz`.
    pub fn pool_lost(&self, why: &str) {
        *self.lost.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_string());
        self.workers_alive.set(0);
    }

    /// Why the pool stopped, if it did ([`Metrics::pool_lost`]).
    pub fn pool_error(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes in a pool snapshot.
    pub fn pool(&self, s: &Stats) {
        if self.pool_error().is_some() {
            return;
        }
        self.workers_alive.set(s.workers as i64);
        let limits = s.failed.get(&ErrorKind::TimeLimit).copied().unwrap_or(0);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        for (cause, now) in [
            ("signal", s.worker_deaths),
            ("recycle", s.recycled),
            ("limits", limits),
        ] {
            let before = last.insert(cause, now).unwrap_or(0);
            if now > before {
                self.replacements
                    .get_or_create(&Cause {
                        cause: cause.into(),
                    })
                    .inc_by(now - before);
            }
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Serves `/metrics` and `/healthz` on `addr` from a thread of its own;
    /// `refresh` runs before each answer (samples what is sampled, such as
    /// the pool's worker count). Returns the bound address (`addr` may name
    /// port 0).
    pub fn serve(
        self: &Arc<Metrics>,
        addr: &str,
        refresh: Arc<dyn Fn() + Send + Sync>,
        health: HealthCheck,
    ) -> Result<std::net::SocketAddr, String> {
        let server = tiny_http::Server::http(addr).map_err(|e| format!("{addr}: {e}"))?;
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| format!("{addr}: not an IP address"))?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || {
                for req in server.incoming_requests() {
                    let path = req.url().split('?').next().unwrap_or("").to_string();
                    if path == "/metrics" || path == "/healthz" {
                        refresh();
                    }
                    let (code, ctype, body) = match path.as_str() {
                        "/metrics" => (
                            200,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            me.encode(),
                        ),
                        "/healthz" => match health() {
                            Ok(()) => (200, "text/plain; charset=utf-8", "ok\n".to_string()),
                            Err(why) => (503, "text/plain; charset=utf-8", format!("{why}\n")),
                        },
                        _ => (404, "text/plain; charset=utf-8", "not found\n".to_string()),
                    };
                    let mut resp = tiny_http::Response::from_string(body).with_status_code(code);
                    if let Ok(h) =
                        tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes())
                    {
                        resp = resp.with_header(h);
                    }
                    let _ = req.respond(resp);
                }
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        Ok(bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_in_the_exposition() {
        let m = Metrics::new();
        m.received("math.square");
        m.started("math.square", Duration::from_millis(3));
        m.finished(
            "math.square",
            "success",
            Some(Duration::from_millis(5)),
            true,
        );
        let text = m.encode();
        assert!(
            text.contains(
                "billiard_celery_tasks_total{task=\"math.square\",outcome=\"success\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("billiard_celery_tasks_in_flight 0"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    #[test]
    fn c1_a_lost_pool_claims_no_live_workers_and_says_why() {
        let m = Metrics::new();
        let stats = Stats {
            workers: 4,
            ..Stats::default()
        };
        m.pool(&stats);
        assert!(m.encode().contains("billiard_pool_workers_alive 4"));
        assert_eq!(m.pool_error(), None);
        m.pool_lost("the supervisor thread panicked (boom)");
        // A late snapshot (taken before the loss) does not bring them back.
        m.pool(&stats);
        let text = m.encode();
        assert!(text.contains("billiard_pool_workers_alive 0"), "{text}");
        assert_eq!(
            m.pool_error().as_deref(),
            Some("the supervisor thread panicked (boom)")
        );
    }
}
