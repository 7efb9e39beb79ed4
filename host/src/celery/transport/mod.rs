//! The brokers the worker consumes from, behind one seam, chosen by URL
//! scheme as kombu's transport aliases choose them (issue 25).
//!
//! - [`redis`]: kombu's Redis transport, consumer side (Lua reserve,
//!   heartbeat, restore sweep, reconnect);
//! - [`amqp`]: AMQP 0-9-1 (RabbitMQ) on `lapin`, its runtime on the
//!   broker threads of the host process;
//! - [`sentinel`]: Redis Sentinel URLs, resolved to the master on each
//!   (re)connect.
//!
//! The consumer loop, the finisher and the keeper hold a
//! `Box<dyn Transport>`; what only Redis keeps (deaths, requeue counts,
//! chords, fleet-wide rate limits) stays on a Redis [`Link`]: the broker's
//! when the broker is Redis, the result backend's otherwise.

use std::time::Duration;

pub mod amqp;
pub mod delayed;
pub mod redis;
pub mod sentinel;

pub use self::redis::{BrokerError, Finish, Finished, Held, Link, Reserved};

/// Which transport a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `redis://`, `rediss://`, `redis+unix://`, `unix://`,
    /// `redis+socket://`, `socket://`.
    Redis,
    /// `amqp://`, `amqps://`, kombu's aliases `pyamqp://`, `librabbitmq://`.
    Amqp,
}

/// The transport of `url` by its scheme (kombu's `TRANSPORT_ALIASES`).
pub fn kind(url: &str) -> Result<Kind, BrokerError> {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    match scheme.to_ascii_lowercase().as_str() {
        "redis" | "rediss" | "redis+unix" | "unix" | "redis+socket" | "socket" | "valkey"
        | "valkeys" | "valkey+unix" | "sentinel" => Ok(Kind::Redis),
        "amqp" | "amqps" | "pyamqp" | "librabbitmq" => Ok(Kind::Amqp),
        _ => Err(BrokerError::Url {
            url: redact(url),
            why: format!(
                "the scheme `{scheme}://` is not one this host speaks: redis://, rediss://, \
                 redis+unix://, unix://, redis+socket://, amqp:// or amqps://"
            ),
        }),
    }
}

/// The URL with any password replaced by `***` (for logs), any scheme.
pub fn redact(url: &str) -> String {
    self::redis::redact(url)
}

/// Checks a broker URL without connecting.
pub fn check(url: &str) -> Result<Kind, BrokerError> {
    let k = kind(url)?;
    match k {
        Kind::Redis if sentinel::is_sentinel(url) => sentinel::parse(url).map(|_| k),
        Kind::Redis => self::redis::client(url).map(|_| k),
        Kind::Amqp => amqp::parse(url).map(|_| k),
    }
}

/// How queues are declared and consumed on AMQP (Celery's settings of the
/// same names); Redis ignores them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueOptions {
    /// `task_queue_max_priority`: `x-max-priority` on every queue.
    pub max_priority: Option<u8>,
    /// `task_default_queue_type = "quorum"`: `x-queue-type: quorum`.
    pub quorum: bool,
    /// Messages this host may hold unacked (`basic.qos`): worker
    /// processes x prefetch multiplier.
    pub prefetch: u16,
    /// The longest `--time-limit` a job may run for
    /// (`x-consumer-timeout`, ms, when set).
    pub consumer_timeout: Option<Duration>,
    /// The type of each task queue's exchange (Celery's
    /// `task_default_exchange_type`; direct by default).
    pub exchange_type: ExchangeKind,
    /// The type of the native delayed delivery queues (Celery's
    /// `broker_native_delayed_delivery_queue_type`), with `quorum`.
    pub delayed_queue_type: delayed::QueueType,
}

/// The verbs the consumer loop, the finisher and the keeper use.
///
/// Tags are the transport's: a Redis `unacked` tag, or an AMQP
/// delivery tag with its channel's generation.
pub trait Transport: Send {
    /// Checks the broker answers.
    fn ping(&mut self) -> Result<(), BrokerError>;
    /// Takes up to `max` messages (the idle slots); each held under a
    /// lease of `lease` where the transport has leases (Redis).
    /// `mark`: how many of them to mark "running here" in the same step
    /// where the transport can (Redis); one that cannot returns them
    /// unmarked (`Reserved::marked` false) and the worker marks each as it
    /// starts.
    fn reserve(
        &mut self,
        max: usize,
        lease: Duration,
        mark: &self::redis::RunMarks<'_>,
    ) -> Result<Vec<Reserved>, BrokerError>;
    /// Blocks up to `timeout` until a message may be there.
    fn wait(&mut self, timeout: Duration) -> Result<(), BrokerError>;
    /// The connection failed and is being re-made.
    fn is_down(&self) -> bool;
    /// How long until the next reconnect attempt.
    fn backoff_left(&self) -> Duration;
    /// Renews the leases of `tags` and returns lapsed ones of `queues`
    /// (Redis: heartbeat + sweep; AMQP: nothing, the channel holds them).
    fn renew(
        &mut self,
        tags: &[String],
        lease: Duration,
        queues: &[String],
        foreign: Duration,
    ) -> Result<(), BrokerError>;
    /// Completes messages: their follow-ups published, then acked; on
    /// Redis also their results stored, atomically (`lua/finish.lua`).
    /// A transport that stores no results refuses a `Finish` with one.
    fn finish(
        &mut self,
        batch: &[Finish],
        ttl_s: u64,
        repeated: bool,
    ) -> Result<Vec<Finished>, BrokerError>;
    /// [`Transport::finish`], and in the same round trip a reserve of up
    /// to `max` messages ([`Transport::reserve`]) for the pool slots the
    /// batch's successes freed (issue 26: one call per task at prefetch
    /// x1). The reserve's own failure comes as the inner error, the finish
    /// done. A transport that cannot do both in one step only finishes
    /// (nothing reserved: the consumer reserves for those slots).
    fn finish_reserve(
        &mut self,
        batch: &[Finish],
        ttl_s: u64,
        repeated: bool,
        _max: usize,
        _lease: Duration,
        _mark: &self::redis::RunMarks<'_>,
    ) -> Result<self::redis::FinishReserved, BrokerError> {
        Ok((self.finish(batch, ttl_s, repeated)?, Ok(Vec::new())))
    }
    /// Acks messages (no result, no follow-up).
    fn ack(&mut self, tags: &[String]) -> Result<(), BrokerError>;
    /// Puts messages back on their queue; returns how many went back.
    fn requeue(&mut self, tags: &[String]) -> Result<usize, BrokerError>;
    /// Publishes task messages: (queue, kombu envelope JSON).
    fn send(&mut self, msgs: &[(String, String)]) -> Result<(), BrokerError>;
    /// Consumes `queues` from now on (`celery control add_consumer` /
    /// `cancel_consumer`): new ones declared and consumed, dropped ones
    /// cancelled; the messages this host holds stay its to complete.
    fn set_queues(&mut self, queues: &[String]) -> Result<(), BrokerError>;
    /// Another handle on this broker for another thread (Redis: a
    /// connection of its own; AMQP: the same channel, so acks reach the
    /// channel that delivered).
    fn handle(&self, what: &'static str) -> Result<Box<dyn Transport>, BrokerError>;
    /// The Redis connection when the broker is Redis.
    fn redis(&mut self) -> Option<&mut Link>;
    /// `n` messages are held for later (eta, rate limits) besides the
    /// slots: a transport whose prefetch the held ones would use up
    /// (AMQP) raises it by as many, as Celery's consumer does.
    fn set_held(&mut self, _n: usize) {}
    /// Publishes result metas to their clients' reply queues (Celery's
    /// `rpc://` backend) and returns once the broker confirmed them all.
    /// Only AMQP carries them; others refuse.
    fn reply(&mut self, _replies: &[Reply]) -> Result<(), BrokerError> {
        Err(BrokerError::Config(
            "the rpc:// result backend needs an AMQP broker (amqp://)".into(),
        ))
    }
}

/// One result meta for Celery's `rpc://` result backend: published to the
/// default exchange with the client's `reply_to` queue as routing key and
/// the task's `correlation_id` (`celery/backends/rpc.py`,
/// `RPCBackend.store_result`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The client's reply queue (the task message's `reply_to`).
    pub to: String,
    /// The task message's `correlation_id`, else the task id.
    pub correlation_id: String,
    /// The meta, JSON (`{"status", "result", "traceback", "children",
    /// "date_done", "task_id", ...}`).
    pub body: String,
}

/// The type of an exchange (events, remote control, task queues).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Routed by exact routing key (`reply.celery.pidbox`).
    #[default]
    Direct,
    /// To every bound queue (`celery.pidbox`).
    Fanout,
    /// Routed by pattern (`celeryev`).
    Topic,
}

impl std::str::FromStr for ExchangeKind {
    type Err = String;

    /// Celery's names: `direct`, `topic`, `fanout`.
    fn from_str(s: &str) -> Result<ExchangeKind, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "direct" => Ok(ExchangeKind::Direct),
            "topic" => Ok(ExchangeKind::Topic),
            "fanout" => Ok(ExchangeKind::Fanout),
            other => Err(format!(
                "`{other}` is not an exchange type: direct, topic or fanout"
            )),
        }
    }
}

/// An exchange as kombu declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its type.
    pub kind: ExchangeKind,
    /// Declared durable (kombu's default; false for the pidbox ones).
    pub durable: bool,
}

/// Celery's events exchange (`celeryev`, topic, durable).
pub const EVENTS: Exchange<'static> = Exchange {
    name: "celeryev",
    kind: ExchangeKind::Topic,
    durable: true,
};

/// The publish side of events and remote-control replies.
pub trait Fanout: Send {
    /// Publishes a kombu envelope (JSON text) to `to` with `routing_key`:
    /// Redis PUBLISHes to kombu's fanout channel (`/{db}.{exchange}[/{rk}]`)
    /// or pushes to the queues bound to a direct exchange; AMQP declares
    /// the exchange as kombu does and publishes.
    fn publish(
        &mut self,
        to: &Exchange<'_>,
        routing_key: &str,
        envelope: &str,
    ) -> Result<(), BrokerError>;
    /// The connection failed and is being re-made.
    fn is_down(&self) -> bool;
    /// How long until the next reconnect attempt.
    fn backoff_left(&self) -> Duration;
}

/// A publisher of events and replies on the broker `url`.
pub fn fanout(url: &str, what: &'static str) -> Result<Box<dyn Fanout>, BrokerError> {
    match kind(url)? {
        Kind::Redis => Ok(Box::new(RedisFanout {
            db: crate::celery::events::db_of(url)?,
            link: Link::new(url, what)?,
        })),
        Kind::Amqp => Ok(Box::new(amqp::Amqp::open(
            url,
            Vec::new(),
            QueueOptions::default(),
        )?)),
    }
}

/// kombu's Redis fanout: PUBLISH, or LPUSH to a direct exchange's queues.
pub struct RedisFanout {
    link: Link,
    db: i64,
}

impl Fanout for RedisFanout {
    fn publish(
        &mut self,
        to: &Exchange<'_>,
        routing_key: &str,
        envelope: &str,
    ) -> Result<(), BrokerError> {
        let (ex, rk) = (to.name, routing_key);
        if to.kind != ExchangeKind::Direct {
            let channel = if rk.is_empty() {
                format!("/{}.{ex}", self.db)
            } else {
                format!("/{}.{ex}/{rk}", self.db)
            };
            return self.link.run(|c| {
                ::redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(envelope)
                    .query::<i64>(c)
                    .map(|_| ())
            });
        }
        let binding = format!("{}{ex}", self::redis::BINDING_PREFIX);
        self.link.run(|c| {
            let members: Vec<Vec<u8>> = ::redis::cmd("SMEMBERS").arg(&binding).query(c)?;
            let mut p = ::redis::pipe();
            for m in members {
                let parts: Vec<&[u8]> = m.split(|&b| b == 0x06).collect();
                // routing_key \x06\x16 pattern \x06\x16 queue
                let fields: Vec<Vec<u8>> = parts
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        if i == 0 {
                            f.to_vec()
                        } else {
                            f.get(1..).unwrap_or(&[]).to_vec()
                        }
                    })
                    .collect();
                if fields.len() == 3 && fields[0] == rk.as_bytes() {
                    p.cmd("LPUSH").arg(&fields[2]).arg(envelope).ignore();
                }
            }
            p.query::<()>(c)
        })
    }

    fn is_down(&self) -> bool {
        self.link.is_down()
    }

    fn backoff_left(&self) -> Duration {
        self.link.backoff_left()
    }
}

/// Opens the transport `url` names, consuming `queues`.
pub fn open(
    url: &str,
    queues: Vec<String>,
    opts: &QueueOptions,
) -> Result<Box<dyn Transport>, BrokerError> {
    match kind(url)? {
        Kind::Redis => Ok(Box::new(RedisTransport::new(url, queues)?)),
        Kind::Amqp => Ok(Box::new(amqp::Amqp::open(url, queues, opts.clone())?)),
    }
}

/// kombu's Redis transport behind the seam: each verb is the function of
/// [`redis`] of the same name.
pub struct RedisTransport {
    broker: self::redis::RedisBroker,
    url: String,
    queues: Vec<String>,
}

impl RedisTransport {
    /// A consumer of `queues` at `url` (connects on first use).
    pub fn new(url: &str, queues: Vec<String>) -> Result<RedisTransport, BrokerError> {
        Ok(RedisTransport {
            broker: self::redis::RedisBroker::new(url, queues.clone())?,
            url: url.to_string(),
            queues,
        })
    }
}

impl Transport for RedisTransport {
    fn ping(&mut self) -> Result<(), BrokerError> {
        self.broker.ping()
    }

    fn reserve(
        &mut self,
        max: usize,
        lease: Duration,
        mark: &self::redis::RunMarks<'_>,
    ) -> Result<Vec<Reserved>, BrokerError> {
        self.broker.reserve(max, lease, mark)
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), BrokerError> {
        self.broker.wait(timeout)
    }

    fn is_down(&self) -> bool {
        self.broker.link_ref().is_down()
    }

    fn backoff_left(&self) -> Duration {
        self.broker.link_ref().backoff_left()
    }

    fn renew(
        &mut self,
        tags: &[String],
        lease: Duration,
        queues: &[String],
        foreign: Duration,
    ) -> Result<(), BrokerError> {
        let link = self.broker.link();
        self::redis::heartbeat(link, tags, lease)
            .and_then(|_| self::redis::sweep(link, queues, foreign, 1000))
            .map(|_| ())
    }

    fn finish(
        &mut self,
        batch: &[Finish],
        ttl_s: u64,
        repeated: bool,
    ) -> Result<Vec<Finished>, BrokerError> {
        self::redis::finish(self.broker.link(), batch, ttl_s, repeated)
    }

    fn finish_reserve(
        &mut self,
        batch: &[Finish],
        ttl_s: u64,
        repeated: bool,
        max: usize,
        lease: Duration,
        mark: &self::redis::RunMarks<'_>,
    ) -> Result<self::redis::FinishReserved, BrokerError> {
        self.broker
            .finish_reserve(batch, ttl_s, repeated, max, lease, mark)
    }

    fn ack(&mut self, tags: &[String]) -> Result<(), BrokerError> {
        self::redis::ack(self.broker.link(), tags)
    }

    fn requeue(&mut self, tags: &[String]) -> Result<usize, BrokerError> {
        self::redis::requeue(self.broker.link(), tags)
    }

    fn send(&mut self, msgs: &[(String, String)]) -> Result<(), BrokerError> {
        self::redis::send(self.broker.link(), msgs)
    }

    fn handle(&self, _what: &'static str) -> Result<Box<dyn Transport>, BrokerError> {
        Ok(Box::new(RedisTransport::new(
            &self.url,
            self.queues.clone(),
        )?))
    }

    fn set_queues(&mut self, queues: &[String]) -> Result<(), BrokerError> {
        // Redis has no consumers to cancel: a broker on the new lists.
        *self = RedisTransport::new(&self.url, queues.to_vec())?;
        Ok(())
    }

    fn redis(&mut self) -> Option<&mut Link> {
        Some(self.broker.link())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_pick_the_transport_as_kombu_aliases_do() {
        for u in [
            "redis://h:6379/0",
            "rediss://h/0",
            "redis+unix:///tmp/r.sock",
            "unix:///tmp/r.sock",
            "redis+socket:///tmp/r.sock",
        ] {
            assert_eq!(kind(u).ok(), Some(Kind::Redis), "{u}");
        }
        for u in [
            "amqp://guest:guest@h:5672//",
            "amqps://h/v",
            "pyamqp://h",
            "librabbitmq://h",
            "AMQP://h",
        ] {
            assert_eq!(kind(u).ok(), Some(Kind::Amqp), "{u}");
        }
        let e = kind("sqs://x")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("the scheme `sqs://` is not one"), "{e}");
        assert!(kind("nothing").is_err());
    }

    #[test]
    fn exchange_types_are_celerys_names() {
        assert_eq!("topic".parse(), Ok(ExchangeKind::Topic));
        assert_eq!(" Fanout".parse(), Ok(ExchangeKind::Fanout));
        assert_eq!("direct".parse(), Ok(ExchangeKind::Direct));
        assert_eq!(ExchangeKind::default(), ExchangeKind::Direct);
        let e = "headers".parse::<ExchangeKind>().err().unwrap_or_default();
        assert!(e.contains("direct, topic or fanout"), "{e}");
    }
}
