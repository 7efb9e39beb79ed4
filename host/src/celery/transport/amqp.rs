//! AMQP 0-9-1 (RabbitMQ) behind the [`Transport`] seam, on `lapin`.
//!
//! `lapin` is async: it runs on a small tokio runtime owned by this
//! transport, in the host process only (the pool's workers are forked from
//! the exec'd zygote, never from this process, so no runtime ever forks).
//! The worker's threads call in with `block_on`; deliveries arrive on a
//! channel fed by one task per consumer.
//!
//! Queues are declared as Celery 5.7 declares them, so a Python worker and
//! this one share them without `PRECONDITION_FAILED`: a durable direct
//! exchange named after the queue, a durable queue bound to it with the
//! queue's name as routing key, `x-max-priority` when set and
//! `x-queue-type: quorum` for quorum queues (`celery/app/amqp.py`,
//! `Queues.new_missing` and the default queue). `basic.qos` holds the
//! worker's slots x prefetch multiplier (per channel on classic queues,
//! per consumer on quorum queues, which have no channel-wide prefetch).
//!
//! A delivery is handed to the consumer loop as kombu's envelope (the
//! body as its JSON text, `body_encoding` not base64), so the protocol
//! reader is the one Redis uses. Its tag is `<generation>.<delivery tag>`:
//! a delivery of a channel that has since died cannot be acked (RabbitMQ
//! redelivers it); its completion says so ([`Held::Redelivered`]) and sends
//! no follow-ups, as Redis does for a message a sweeper restored.
//!
//! What is published (chains, callbacks, retries, chord bodies) goes
//! through a second channel in confirm mode and counts as sent once
//! RabbitMQ confirmed it; the message it follows from is acked only then.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeBindOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{Acker, BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{json, Map, Value};

use super::{
    BrokerError, Exchange, ExchangeKind as Kind, Fanout, Finish, Finished, Held, Link,
    QueueOptions, Reserved, Transport,
};
use crate::celery::protocol;

/// How long one connection attempt (connect, declare, consume) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a publish waits for RabbitMQ's confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Parses a kombu AMQP URL into the form `lapin` takes: kombu's aliases
/// (`pyamqp://`, `librabbitmq://`) are `amqp://`; the path is the virtual
/// host, `/` when empty or `//` (kombu's `amqp://guest@host//`), percent
/// encoded for `lapin`; query options are dropped but `heartbeat`.
pub fn parse(url: &str) -> Result<String, BrokerError> {
    let bad = |why: &str| BrokerError::Url {
        url: super::redact(url),
        why: why.to_string(),
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme://"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "amqp" | "pyamqp" | "librabbitmq" => "amqp",
        "amqps" => "amqps",
        _ => return Err(bad("not an AMQP URL")),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, p),
        None => (rest, ""),
    };
    if authority.rsplit('@').next().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    let vhost = if path.is_empty() || path == "/" {
        "/".to_string()
    } else {
        path.to_string()
    };
    let vhost_enc: String = vhost
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'%' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let heartbeat = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find(|kv| kv.starts_with("heartbeat="));
    let mut out = format!("{scheme}://{authority}/{vhost_enc}");
    if let Some(h) = heartbeat {
        out.push('?');
        out.push_str(h);
    }
    out.parse::<lapin::uri::AMQPUri>()
        .map_err(|e| bad(&format!("cannot read it: {e}")))?;
    Ok(out)
}

/// One delivery waiting to be reserved.
struct Incoming {
    generation: u64,
    queue: String,
    delivery: Delivery,
    /// Consumed without acks (the pidbox): nothing to hold.
    no_ack: bool,
}

/// A queue to declare and consume, and the exchange it is bound to.
#[derive(Debug, Clone)]
struct QueueDecl {
    name: String,
    exchange: String,
    kind: Kind,
    exchange_durable: bool,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    args: FieldTable,
    routing_key: String,
    no_ack: bool,
}

impl QueueDecl {
    /// A task queue as Celery 5.7 declares it.
    fn task(q: &str, opts: &QueueOptions) -> QueueDecl {
        QueueDecl {
            name: q.to_string(),
            exchange: q.to_string(),
            kind: opts.exchange_type,
            exchange_durable: true,
            durable: true,
            exclusive: false,
            auto_delete: false,
            args: queue_args(opts),
            routing_key: q.to_string(),
            no_ack: false,
        }
    }

    /// `{hostname}.celery.pidbox` as kombu's `Mailbox.get_queue` declares
    /// it with Celery 5.7's control defaults: exclusive, auto-delete,
    /// `x-expires` 10 s, `x-message-ttl` 300 s, bound to the
    /// `celery.pidbox` fanout; consumed without acks.
    fn pidbox(hostname: &str) -> QueueDecl {
        let mut args = FieldTable::default();
        args.insert("x-expires".into(), AMQPValue::LongInt(10_000));
        args.insert("x-message-ttl".into(), AMQPValue::LongInt(300_000));
        QueueDecl {
            name: format!("{hostname}.celery.pidbox"),
            exchange: "celery.pidbox".into(),
            kind: Kind::Fanout,
            exchange_durable: false,
            durable: false,
            exclusive: true,
            auto_delete: true,
            args,
            routing_key: String::new(),
            no_ack: true,
        }
    }
}

fn lapin_kind(k: Kind) -> ExchangeKind {
    match k {
        Kind::Direct => ExchangeKind::Direct,
        Kind::Fanout => ExchangeKind::Fanout,
        Kind::Topic => ExchangeKind::Topic,
    }
}

/// A live connection and its two channels.
struct Live {
    conn: Connection,
    consume: Channel,
    publish: Channel,
    /// The consumer tag of each queue consumed.
    consumers: HashMap<String, ShortString>,
}

impl Live {
    fn up(&self) -> bool {
        self.conn.status().connected()
            && self.consume.status().connected()
            && self.publish.status().connected()
    }
}

struct State {
    live: Option<Live>,
    generation: u64,
    failures: u32,
    retry_at: Option<Instant>,
    /// Queues (and their exchanges) declared for publishing on this
    /// connection.
    declared: HashSet<String>,
}

struct Shared {
    rt: tokio::runtime::Runtime,
    uri: String,
    shown: String,
    /// The queues consumed (`set_queues` changes them).
    queues: Mutex<Vec<QueueDecl>>,
    opts: QueueOptions,
    state: Mutex<State>,
    tx: Sender<Incoming>,
    rx: Receiver<Incoming>,
    pending: Mutex<VecDeque<Incoming>>,
    /// The deliveries this host holds, and those of lost channels.
    held: Mutex<Book>,
    /// Messages held for later (eta, rate limits) on top of the slots'
    /// prefetch, and the prefetch last set.
    extra: Mutex<(usize, u16)>,
}

/// At most this many jobs finished on a lost channel are remembered for
/// their redelivery.
const FINISHED_KEPT: usize = 100_000;

/// The deliveries this host holds, and what became of those of a lost
/// channel (recovery, issue 25 step 5): their redelivery is neither lost
/// nor run twice while this host lives.
#[derive(Default)]
struct Book {
    /// Held on the live channel: tag → (acker, task id).
    live: HashMap<String, (Acker, String)>,
    /// Of a lost channel, their jobs still running here: tag → task id.
    orphans: HashMap<String, String>,
    /// The same, by task id.
    orphan_of: HashMap<String, String>,
    /// A lost delivery's tag → the tag of its redelivery, held for the
    /// job still running.
    alias: HashMap<String, String>,
    /// Jobs that finished on a lost delivery (result stored, not acked):
    /// task id → their follow-ups, sent when the redelivery comes, which
    /// is then acked without running again.
    finished: HashMap<String, Vec<(String, String)>>,
    finished_order: VecDeque<String>,
    /// Jobs acked here lately: a redelivery of one (its ack was lost with
    /// the connection) is acked again, not run again.
    acked: HashSet<String>,
    acked_order: VecDeque<String>,
}

impl Book {
    /// The channel is gone: what it held becomes orphans.
    fn lose_channel(&mut self) {
        for (tag, (_, id)) in self.live.drain() {
            if !id.is_empty() {
                self.orphan_of.insert(id.clone(), tag.clone());
                self.orphans.insert(tag, id);
            }
        }
    }

    /// The live delivery a completion of `tag` settles, taken; `acked`:
    /// it is being acked (remembered, so a redelivery whose ack was lost
    /// is not run again), not requeued (whose redelivery must run).
    fn take(&mut self, tag: &str, acked: bool) -> Option<Acker> {
        let t = self.alias.remove(tag).unwrap_or_else(|| tag.to_string());
        let (a, key) = self.live.remove(&t)?;
        if acked && !key.is_empty() && self.acked.insert(key.clone()) {
            self.acked_order.push_back(key);
            while self.acked_order.len() > FINISHED_KEPT {
                if let Some(old) = self.acked_order.pop_front() {
                    self.acked.remove(&old);
                }
            }
        }
        Some(a)
    }

    fn is_live(&self, tag: &str) -> bool {
        let t = self.alias.get(tag).map_or(tag, String::as_str);
        self.live.contains_key(t)
    }

    /// `tag` finished while its delivery was lost: remembered for the
    /// redelivery.
    fn finished_lost(&mut self, tag: &str, send: &[(String, String)]) {
        let t = self.alias.remove(tag).unwrap_or_else(|| tag.to_string());
        let Some(id) = self.orphans.remove(&t) else {
            return;
        };
        self.orphan_of.remove(&id);
        self.finished.insert(id.clone(), send.to_vec());
        self.finished_order.push_back(id);
        while self.finished_order.len() > FINISHED_KEPT {
            if let Some(old) = self.finished_order.pop_front() {
                self.finished.remove(&old);
            }
        }
    }
}

/// A task message to publish: (queue, kombu envelope JSON).
type Msg = (String, String);

/// What identifies one delivery of a task across redeliveries: its task id
/// and its `retries` header (a retry is a new message with the same id).
fn dedup_key(d: &Delivery) -> String {
    let id = task_id_of(d);
    if id.is_empty() {
        return id;
    }
    let retries = d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("retries").map(|v| json_value(v).to_string()))
        .unwrap_or_default();
    format!("{id}/{retries}")
}

/// The task id of a delivery: its `id` header, else its `correlation_id`.
fn task_id_of(d: &Delivery) -> String {
    let from_header = d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| match h.inner().get("id") {
            Some(AMQPValue::LongString(s)) => {
                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_string()),
            _ => None,
        });
    from_header
        .or_else(|| {
            d.properties
                .correlation_id()
                .as_ref()
                .map(|c| c.as_str().to_string())
        })
        .unwrap_or_default()
}

impl Drop for Shared {
    fn drop(&mut self) {
        let live = lock(&self.state).live.take();
        if let Some(l) = live {
            // Unacked deliveries go back to their queues with the channel.
            let _ = self.rt.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(5),
                    l.conn.close(200, "billiard-host worker stopping".into()),
                )
                .await
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn lost(what: &'static str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Amqp {
        what,
        why: e.to_string(),
        transient: true,
    }
}

/// One handle on an AMQP broker; every handle of one [`Amqp::open`] shares
/// its connection and channels.
pub struct Amqp {
    sh: Arc<Shared>,
    what: &'static str,
}

impl Amqp {
    /// A consumer of `queues` at `url`; connects on first use (and again,
    /// with backoff, after a loss).
    pub fn open(url: &str, queues: Vec<String>, opts: QueueOptions) -> Result<Amqp, BrokerError> {
        let decls = queues.iter().map(|q| QueueDecl::task(q, &opts)).collect();
        Amqp::with_queues(url, decls, opts)
    }

    /// This host's remote-control mailbox (`{hostname}.celery.pidbox`):
    /// [`Transport::wait`] and [`Transport::reserve`] hand out the
    /// requests as envelopes; [`Fanout::publish`] sends the replies.
    pub fn mailbox(url: &str, hostname: &str) -> Result<Amqp, BrokerError> {
        Amqp::with_queues(
            url,
            vec![QueueDecl::pidbox(hostname)],
            QueueOptions::default(),
        )
    }

    fn with_queues(
        url: &str,
        queues: Vec<QueueDecl>,
        opts: QueueOptions,
    ) -> Result<Amqp, BrokerError> {
        let uri = parse(url)?;
        let prefetch = opts.prefetch.max(1);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("celery-amqp")
            .enable_all()
            .build()
            .map_err(|e| BrokerError::Config(format!("cannot start the AMQP runtime: {e}")))?;
        let (tx, rx) = crossbeam_channel::unbounded();
        Ok(Amqp {
            sh: Arc::new(Shared {
                rt,
                uri,
                shown: super::redact(url),
                queues: Mutex::new(queues),
                opts,
                state: Mutex::new(State {
                    live: None,
                    generation: 0,
                    failures: 0,
                    retry_at: None,
                    declared: HashSet::new(),
                }),
                tx,
                rx,
                pending: Mutex::new(VecDeque::new()),
                held: Mutex::new(Book::default()),
                extra: Mutex::new((0, prefetch)),
            }),
            what: "broker",
        })
    }

    /// The live channels (connecting first if needed, not before the
    /// backoff allows) and their generation.
    fn live(&self) -> Result<(Channel, Channel, u64), BrokerError> {
        let mut st = lock(&self.sh.state);
        if let Some(l) = &st.live {
            if l.up() {
                return Ok((l.consume.clone(), l.publish.clone(), st.generation));
            }
            tracing::warn!(
                "lost the AMQP broker {}; reconnecting with backoff, running jobs carry on",
                self.sh.shown
            );
            st.live = None;
            st.declared.clear();
            // Their channel is gone: RabbitMQ redelivers them; the jobs
            // still running here answer for their redeliveries.
            lock(&self.sh.held).lose_channel();
            backoff(&mut st);
        }
        if let Some(t) = st.retry_at {
            if Instant::now() < t {
                return Err(lost(self.what, "reconnecting (backoff)"));
            }
        }
        let generation = st.generation.wrapping_add(1);
        let sh = &self.sh;
        let got = sh.rt.block_on(async {
            tokio::time::timeout(CONNECT_TIMEOUT, connect(sh, generation)).await
        });
        match got {
            Ok(Ok(live)) => {
                if st.failures > 0 {
                    tracing::info!("the AMQP broker {} is reachable again", sh.shown);
                }
                let out = (live.consume.clone(), live.publish.clone(), generation);
                st.live = Some(live);
                st.generation = generation;
                st.failures = 0;
                st.retry_at = None;
                Ok(out)
            }
            Ok(Err(e)) => {
                backoff(&mut st);
                Err(classify(self.what, e))
            }
            Err(_) => {
                backoff(&mut st);
                Err(lost(self.what, "connecting timed out"))
            }
        }
    }

    /// Publishes `msgs` with confirms; declares each target queue first.
    fn publish_tasks(&self, msgs: &[(String, String)]) -> Result<(), BrokerError> {
        if msgs.is_empty() {
            return Ok(());
        }
        let (_, ch, _) = self.live()?;
        let mut out = Vec::with_capacity(msgs.len());
        for (list, env) in msgs {
            out.push(outgoing(list, env)?);
        }
        let to_declare: Vec<String> = {
            let st = lock(&self.sh.state);
            let mut v: Vec<String> = out
                .iter()
                .filter(|o| !st.declared.contains(&format!("q:{}", o.queue)))
                .map(|o| o.queue.clone())
                .collect();
            v.sort();
            v.dedup();
            v
        };
        let opts = self.sh.opts.clone();
        let res: Result<(), BrokerError> = self.sh.rt.block_on(async {
            let e = |e: lapin::Error| classify("publish", e);
            for q in &to_declare {
                declare(&ch, &QueueDecl::task(q, &opts)).await.map_err(e)?;
            }
            let mut confirms = Vec::with_capacity(out.len());
            for o in &out {
                confirms.push(
                    ch.basic_publish(
                        o.queue.as_str().into(),
                        o.queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &o.body,
                        o.props.clone(),
                    )
                    .await
                    .map_err(e)?,
                );
            }
            confirmed("publish", confirms).await
        });
        res?;
        lock(&self.sh.state)
            .declared
            .extend(to_declare.into_iter().map(|q| format!("q:{q}")));
        Ok(())
    }

    /// How many messages wait in `queue` (a passive declare); 0 when
    /// it does not exist yet.
    pub fn queued(&self, queue: &str) -> Result<u64, BrokerError> {
        let (_, ch, _) = self.live()?;
        let q = self.sh.rt.block_on(async {
            ch.queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
        });
        match q {
            Ok(q) => Ok(u64::from(q.message_count())),
            // NOT_FOUND closes the channel: the next call reconnects.
            Err(e) if e.to_string().contains("NOT_FOUND") => Ok(0),
            Err(e) => Err(classify("queue.declare", e)),
        }
    }

    fn pop(&self, gen: u64) -> Option<Incoming> {
        loop {
            let next = lock(&self.sh.pending)
                .pop_front()
                .or_else(|| self.sh.rx.try_recv().ok())?;
            if next.generation == gen {
                return Some(next);
            }
            // A delivery of a dead channel: RabbitMQ redelivers it.
        }
    }
}

/// A message to publish, from a follow-up's (list, envelope).
struct Outgoing {
    queue: String,
    body: Vec<u8>,
    props: BasicProperties,
}

/// The queue a Redis list key names (`queue` or `queue\x06\x16<priority>`).
fn queue_of(list: &str) -> &str {
    list.split(protocol::PRIORITY_SEP).next().unwrap_or(list)
}

fn outgoing(list: &str, env: &str) -> Result<Outgoing, BrokerError> {
    let bad = |why: String| BrokerError::Reply(format!("cannot publish a message: {why}"));
    let v: Value = serde_json::from_str(env).map_err(|e| bad(e.to_string()))?;
    let props = v.get("properties").cloned().unwrap_or(Value::Null);
    let text = |o: &Value, k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
    let body_text = text(&v, "body").unwrap_or_default();
    let body = if text(&props, "body_encoding").as_deref() == Some("base64") {
        base64::engine::general_purpose::STANDARD
            .decode(body_text.as_bytes())
            .map_err(|e| bad(format!("bad base64 body: {e}")))?
    } else {
        body_text.into_bytes()
    };
    let mut p = BasicProperties::default()
        .with_content_type(
            text(&v, "content-type")
                .unwrap_or_else(|| protocol::CONTENT_TYPE_JSON.into())
                .into(),
        )
        .with_content_encoding(
            text(&v, "content-encoding")
                .unwrap_or_else(|| "utf-8".into())
                .into(),
        )
        .with_delivery_mode(
            props
                .get("delivery_mode")
                .and_then(Value::as_u64)
                .and_then(|m| u8::try_from(m).ok())
                .unwrap_or(2),
        );
    if let Some(Value::Object(h)) = v.get("headers") {
        p = p.with_headers(table(h));
    }
    if let Some(c) = text(&props, "correlation_id") {
        p = p.with_correlation_id(c.into());
    }
    if let Some(r) = text(&props, "reply_to") {
        p = p.with_reply_to(r.into());
    }
    if let Some(x) = text(&props, "expiration") {
        p = p.with_expiration(x.into());
    }
    if let Some(pr) = props.get("priority").and_then(Value::as_u64) {
        p = p.with_priority(u8::try_from(pr.min(255)).unwrap_or(255));
    }
    Ok(Outgoing {
        queue: queue_of(list).to_string(),
        body,
        props: p,
    })
}

/// A JSON object as an AMQP field table (py-amqp's types: ints as
/// signed 64-bit, floats as doubles, strings as long strings).
fn table(m: &Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in m {
        t.insert(k.as_str().into(), amqp_value(v));
    }
    t
}

fn amqp_value(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => AMQPValue::LongLongInt(i),
            (None, Some(f)) => AMQPValue::Double(f),
            (None, None) => AMQPValue::LongString(n.to_string().into()),
        },
        Value::String(s) => AMQPValue::LongString(s.as_str().into()),
        Value::Array(a) => {
            let mut fa = FieldArray::default();
            for x in a {
                fa.push(amqp_value(x));
            }
            AMQPValue::FieldArray(fa)
        }
        Value::Object(o) => AMQPValue::FieldTable(table(o)),
    }
}

/// An AMQP value as JSON, as py-amqp decodes it for Celery.
fn json_value(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(i) => json!(i),
        AMQPValue::ShortShortUInt(i) => json!(i),
        AMQPValue::ShortInt(i) => json!(i),
        AMQPValue::ShortUInt(i) => json!(i),
        AMQPValue::LongInt(i) => json!(i),
        AMQPValue::LongUInt(i) => json!(i),
        AMQPValue::LongLongInt(i) => json!(i),
        AMQPValue::Float(f) => json!(f),
        AMQPValue::Double(f) => json!(f),
        AMQPValue::DecimalValue(d) => {
            let scale = i32::from(d.scale);
            json!(f64::from(d.value) / 10f64.powi(scale))
        }
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(json_value).collect()),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), json_value(v)))
                .collect(),
        ),
        AMQPValue::ByteArray(b) => json!(String::from_utf8_lossy(b.as_slice())),
        AMQPValue::Void => Value::Null,
    }
}

/// kombu's envelope of a delivery: the body as its JSON text (base64 when
/// it is not UTF-8), the AMQP headers and properties.
fn envelope(d: &Delivery, tag: &str) -> Vec<u8> {
    let p = &d.properties;
    let s = |x: &Option<ShortString>| x.as_ref().map(|v| v.as_str().to_string());
    let (body, encoding) = match std::str::from_utf8(&d.data) {
        Ok(t) => (t.to_string(), "utf-8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&d.data),
            "base64",
        ),
    };
    let headers = p
        .headers()
        .as_ref()
        .map(|t| json_value(&AMQPValue::FieldTable(t.clone())))
        .unwrap_or_else(|| json!({}));
    let mut info = json!({
        "exchange": d.exchange.as_str(),
        "routing_key": d.routing_key.as_str(),
    });
    if d.redelivered {
        info["redelivered"] = json!(true);
    }
    let mut props = json!({
        "correlation_id": s(p.correlation_id()),
        "reply_to": s(p.reply_to()),
        "delivery_mode": p.delivery_mode().unwrap_or(2),
        "delivery_info": info,
        "priority": p.priority().unwrap_or(0),
        "body_encoding": encoding,
        "delivery_tag": tag,
    });
    if let Some(x) = s(p.expiration()) {
        props["expiration"] = json!(x);
    }
    let env = json!({
        "body": body,
        "content-encoding": s(p.content_encoding()).unwrap_or_else(|| "utf-8".into()),
        "content-type": s(p.content_type()).unwrap_or_default(),
        "headers": headers,
        "properties": props,
    });
    serde_json::to_vec(&env).unwrap_or_default()
}

fn backoff(st: &mut State) {
    st.failures = st.failures.saturating_add(1);
    let ms = 100u64.saturating_mul(1 << st.failures.min(6)).min(5000);
    st.retry_at = Some(crate::bounds::saturating_deadline(
        Instant::now(),
        Duration::from_millis(ms),
    ));
}

/// A lapin error as a broker error: a refusal by the server (a channel or
/// connection closed with a reply code, an access refusal, a bad
/// declaration) is not retried for ever; a lost connection is.
fn classify(what: &'static str, e: lapin::Error) -> BrokerError {
    let text = e.to_string();
    let refused = matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(_) | lapin::ErrorKind::InvalidConnectionState(_)
    ) && !text.contains("CONNECTION_FORCED");
    let access = text.contains("ACCESS_REFUSED")
        || text.contains("NOT_ALLOWED")
        || text.contains("PRECONDITION_FAILED");
    BrokerError::Amqp {
        what,
        why: text,
        transient: !(refused && access),
    }
}

/// The arguments Celery 5.7 declares a queue with.
fn queue_args(opts: &QueueOptions) -> FieldTable {
    let mut args = FieldTable::default();
    if let Some(p) = opts.max_priority {
        // py-amqp writes a Python int that fits as a signed 32-bit 'I'.
        args.insert("x-max-priority".into(), AMQPValue::LongInt(i32::from(p)));
    }
    if opts.quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
    }
    args
}

/// Declares an exchange as kombu does (never auto-delete, never internal).
async fn declare_exchange(ch: &Channel, x: &Exchange<'_>) -> Result<(), lapin::Error> {
    ch.exchange_declare(
        x.name.into(),
        lapin_kind(x.kind),
        ExchangeDeclareOptions {
            durable: x.durable,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
}

/// Declares `q`, its exchange and its binding as kombu does.
async fn declare(ch: &Channel, q: &QueueDecl) -> Result<(), lapin::Error> {
    declare_exchange(
        ch,
        &Exchange {
            name: &q.exchange,
            kind: q.kind,
            durable: q.exchange_durable,
        },
    )
    .await?;
    ch.queue_declare(
        q.name.as_str().into(),
        QueueDeclareOptions {
            durable: q.durable,
            exclusive: q.exclusive,
            auto_delete: q.auto_delete,
            ..QueueDeclareOptions::default()
        },
        q.args.clone(),
    )
    .await?;
    ch.queue_bind(
        q.name.as_str().into(),
        q.exchange.as_str().into(),
        q.routing_key.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

async fn connect(sh: &Shared, generation: u64) -> Result<Live, lapin::Error> {
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from("billiard-host worker"));
    let conn = Connection::connect(&sh.uri, props).await?;
    let consume = conn.create_channel().await?;
    let queues = lock(&sh.queues).clone();
    for q in &queues {
        declare(&consume, q).await?;
    }
    if delayed_delivery(&sh.opts, &queues) {
        let qt = sh.opts.delayed_queue_type;
        declare_delayed(&consume, &queues, qt, generation == 1).await?;
    }
    let prefetch = {
        let mut extra = lock(&sh.extra);
        let p = u16::try_from(usize::from(sh.opts.prefetch.max(1)).saturating_add(extra.0))
            .unwrap_or(u16::MAX);
        extra.1 = p;
        p
    };
    consume
        .basic_qos(
            prefetch,
            BasicQosOptions {
                global: !sh.opts.quorum,
            },
        )
        .await?;
    let mut consumers = HashMap::new();
    for q in &queues {
        let tag = consume_queue(sh, &consume, q, generation).await?;
        consumers.insert(q.name.clone(), tag);
    }
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(Live {
        conn,
        consume,
        publish,
        consumers,
    })
}

/// Consumes `q` on `ch`, its deliveries forwarded to the consumer loop;
/// returns the consumer tag.
async fn consume_queue(
    sh: &Shared,
    ch: &Channel,
    q: &QueueDecl,
    generation: u64,
) -> Result<ShortString, lapin::Error> {
    let mut c = ch
        .basic_consume(
            q.name.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: q.no_ack,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let tag = c.tag();
    let tx = sh.tx.clone();
    let queue = q.name.clone();
    let no_ack = q.no_ack;
    sh.rt.spawn(async move {
        while let Some(Ok(delivery)) = c.next().await {
            let inc = Incoming {
                generation,
                queue: queue.clone(),
                delivery,
                no_ack,
            };
            if tx.send(inc).is_err() {
                break;
            }
        }
    });
    Ok(tag)
}

/// Whether this consumer sets up native delayed delivery: Celery's
/// `DelayedDelivery` bootstep runs when any of the worker's queues is a
/// quorum queue.
fn delayed_delivery(opts: &QueueOptions, queues: &[QueueDecl]) -> bool {
    opts.quorum && queues.iter().any(|q| !q.no_ack)
}

/// Declares the `celery_delayed_*` exchanges and queues and binds each
/// task queue to `celery_delayed_delivery`, as Celery 5.7's worker does
/// ([`delayed`](super::delayed)); `say` logs what it did (once per run).
async fn declare_delayed(
    ch: &Channel,
    queues: &[QueueDecl],
    queue_type: super::delayed::QueueType,
    say: bool,
) -> Result<(), lapin::Error> {
    use super::delayed::Step;
    for step in super::delayed::topology(queue_type.as_str()) {
        match step {
            Step::Exchange(name) => {
                declare_exchange(
                    ch,
                    &Exchange {
                        name: &name,
                        kind: Kind::Topic,
                        durable: true,
                    },
                )
                .await?
            }
            Step::Queue {
                name,
                args,
                routing_key,
            } => {
                ch.queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    args,
                )
                .await?;
                ch.queue_bind(
                    name.as_str().into(),
                    name.as_str().into(),
                    routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            }
            Step::Bind {
                destination,
                source,
                routing_key,
            } => {
                ch.exchange_bind(
                    destination.as_str().into(),
                    source.as_str().into(),
                    routing_key.as_str().into(),
                    ExchangeBindOptions::default(),
                    FieldTable::default(),
                )
                .await?
            }
        }
    }
    for q in queues.iter().filter(|q| !q.no_ack) {
        bind_delayed(ch, q, say).await?;
    }
    if say {
        tracing::info!(
            "native delayed delivery: celery_delayed_0..27 declared ({}), countdown/ETA \
             tasks from Celery 5.5+ producers come through {}",
            queue_type.as_str(),
            super::delayed::DELIVERY_EXCHANGE
        );
    }
    Ok(())
}

/// Binds task queue `q` to `celery_delayed_delivery` through its exchange
/// (kombu's `bind_queue_to_native_delayed_delivery_exchange`); a direct
/// exchange cannot be (kombu warns and skips it).
async fn bind_delayed(ch: &Channel, q: &QueueDecl, say: bool) -> Result<(), lapin::Error> {
    if q.kind == Kind::Direct {
        if say {
            tracing::warn!(
                "queue {}: its exchange {} is a direct exchange, which native delayed delivery \
                 does not support (--exchange-type topic, as the fleet's \
                 task_default_exchange_type); countdown/ETA tasks sent to it are held by the \
                 worker until their ETA",
                q.name,
                q.exchange
            );
        }
        return Ok(());
    }
    let key = super::delayed::binding_key(&q.routing_key);
    ch.exchange_bind(
        q.exchange.as_str().into(),
        super::delayed::DELIVERY_EXCHANGE.into(),
        key.as_str().into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        q.name.as_str().into(),
        q.exchange.as_str().into(),
        key.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

impl Transport for Amqp {
    fn ping(&mut self) -> Result<(), BrokerError> {
        self.live().map(|_| ())
    }

    fn reserve(
        &mut self,
        max: usize,
        _lease: Duration,
        _mark: &super::redis::RunMarks<'_>,
    ) -> Result<Vec<Reserved>, BrokerError> {
        let (_, _, gen) = self.live()?;
        let mut out = Vec::new();
        // Redeliveries settled here: (acker, follow-ups to send, task).
        let mut settled: Vec<(Acker, Vec<Msg>, String)> = Vec::new();
        while out.len() < max {
            let Some(inc) = self.pop(gen) else { break };
            let tag = format!("{}.{}", inc.generation, inc.delivery.delivery_tag);
            if !inc.no_ack {
                let id = dedup_key(&inc.delivery);
                let acker = inc.delivery.acker.clone();
                let mut book = lock(&self.sh.held);
                if let Some(old) = (!id.is_empty())
                    .then(|| book.orphan_of.remove(&id))
                    .flatten()
                {
                    // Its job still runs here: the redelivery waits for it.
                    book.orphans.remove(&old);
                    book.alias.insert(old, tag.clone());
                    book.live.insert(tag, (acker, id.clone()));
                    tracing::info!(
                        "task {id} came back redelivered while it still runs here: not run \
                         twice; its end acks the redelivery"
                    );
                    continue;
                }
                if let Some(send) = book.finished.remove(&id) {
                    settled.push((acker, send, id));
                    continue;
                }
                if inc.delivery.redelivered && book.acked.contains(&id) {
                    // Acked here, the ack lost with the connection.
                    settled.push((acker, Vec::new(), id));
                    continue;
                }
                book.live.insert(tag.clone(), (acker, id));
            }
            let raw = envelope(&inc.delivery, &tag);
            // The running marks live on Redis: the worker marks this one
            // as it starts.
            out.push(Reserved {
                tag,
                raw,
                queue: inc.queue,
                marked: false,
            });
        }
        for (acker, send, id) in settled {
            // Finished here on the lost channel (its result is stored):
            // its follow-ups go now, then the redelivery is acked.
            self.publish_tasks(&send)?;
            let _ = self
                .sh
                .rt
                .block_on(async { acker.ack(BasicAckOptions::default()).await });
            tracing::info!(
                "task {id} came back redelivered after it finished here: acked, not run again"
            );
        }
        Ok(out)
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), BrokerError> {
        if !lock(&self.sh.pending).is_empty() {
            return Ok(());
        }
        match self.sh.rx.recv_timeout(timeout) {
            Ok(inc) => lock(&self.sh.pending).push_back(inc),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(timeout),
        }
        Ok(())
    }

    fn is_down(&self) -> bool {
        lock(&self.sh.state).failures > 0
    }

    fn backoff_left(&self) -> Duration {
        lock(&self.sh.state)
            .retry_at
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    }

    fn renew(
        &mut self,
        _tags: &[String],
        _lease: Duration,
        _queues: &[String],
        _foreign: Duration,
    ) -> Result<(), BrokerError> {
        // The channel holds the deliveries; nothing to renew.
        Ok(())
    }

    fn finish(
        &mut self,
        batch: &[Finish],
        _ttl_s: u64,
        _repeated: bool,
    ) -> Result<Vec<Finished>, BrokerError> {
        if batch.iter().any(|f| f.result.is_some()) {
            return Err(BrokerError::Config(
                "an AMQP broker stores no results: use a Redis or rpc:// result backend".into(),
            ));
        }
        // A delivery whose channel died is RabbitMQ's to redeliver: its
        // run there sends the follow-ups.
        let held: Vec<bool> = {
            let mut h = lock(&self.sh.held);
            batch
                .iter()
                .map(|f| {
                    let live = f.tag.is_empty() || h.is_live(&f.tag);
                    if !live {
                        h.finished_lost(&f.tag, &f.send);
                    }
                    live
                })
                .collect()
        };
        let sends: Vec<(String, String)> = batch
            .iter()
            .zip(&held)
            .filter(|(_, h)| **h)
            .flat_map(|(f, _)| f.send.iter().cloned())
            .collect();
        self.publish_tasks(&sends)?;
        let tags: Vec<String> = batch.iter().map(|f| f.tag.clone()).collect();
        self.ack(&tags)?;
        Ok(held
            .into_iter()
            .map(|h| Finished {
                stored: false,
                held: if h { Held::Held } else { Held::Redelivered },
                unsent: 0,
            })
            .collect())
    }

    fn ack(&mut self, tags: &[String]) -> Result<(), BrokerError> {
        let ackers: Vec<Acker> = {
            let mut h = lock(&self.sh.held);
            tags.iter().filter_map(|t| h.take(t, true)).collect()
        };
        if ackers.is_empty() {
            return Ok(());
        }
        self.sh.rt.block_on(async {
            for a in &ackers {
                // A dead channel's delivery comes back redelivered.
                let _ = a.ack(BasicAckOptions::default()).await;
            }
        });
        Ok(())
    }

    fn requeue(&mut self, tags: &[String]) -> Result<usize, BrokerError> {
        let ackers: Vec<Acker> = {
            let mut h = lock(&self.sh.held);
            // Requeued: its redelivery runs (not taken for a lost ack).
            tags.iter().filter_map(|t| h.take(t, false)).collect()
        };
        let n = self.sh.rt.block_on(async {
            let mut n = 0usize;
            for a in &ackers {
                if let Ok(true) = a.reject(BasicRejectOptions { requeue: true }).await {
                    n = n.saturating_add(1);
                }
            }
            n
        });
        Ok(n)
    }

    fn send(&mut self, msgs: &[(String, String)]) -> Result<(), BrokerError> {
        self.publish_tasks(msgs)
    }

    fn set_queues(&mut self, queues: &[String]) -> Result<(), BrokerError> {
        let opts = &self.sh.opts;
        // The list first: a connection made from now on consumes it.
        let (add, gone): (Vec<QueueDecl>, Vec<String>) = {
            let mut cur = lock(&self.sh.queues);
            let add: Vec<QueueDecl> = queues
                .iter()
                .filter(|q| !cur.iter().any(|c| !c.no_ack && &c.name == *q))
                .map(|q| QueueDecl::task(q, opts))
                .collect();
            let gone: Vec<String> = cur
                .iter()
                .filter(|c| !c.no_ack && !queues.contains(&c.name))
                .map(|c| c.name.clone())
                .collect();
            cur.retain(|c| c.no_ack || !gone.contains(&c.name));
            cur.extend(add.iter().cloned());
            (add, gone)
        };
        let (ch, _, generation) = self.live()?;
        // What the live connection does not consume yet (a reconnect in
        // `live` may have consumed the new list already).
        let add: Vec<QueueDecl> = {
            let st = lock(&self.sh.state);
            let have = st.live.as_ref().map(|l| &l.consumers);
            add.into_iter()
                .filter(|q| !have.is_some_and(|h| h.contains_key(&q.name)))
                .collect()
        };
        let delayed = delayed_delivery(opts, &add);
        let sh = &self.sh;
        let res: Result<Vec<(String, ShortString)>, lapin::Error> = sh.rt.block_on(async {
            let mut tags = Vec::new();
            for q in &add {
                declare(&ch, q).await?;
                if delayed {
                    bind_delayed(&ch, q, true).await?;
                }
                tags.push((q.name.clone(), consume_queue(sh, &ch, q, generation).await?));
            }
            Ok(tags)
        });
        let tags = res.map_err(|e| classify("basic.consume", e))?;
        let cancel: Vec<ShortString> = {
            let mut st = lock(&sh.state);
            let Some(live) = st.live.as_mut() else {
                // Gone meanwhile: the next connection consumes the list.
                return Ok(());
            };
            live.consumers.extend(tags);
            gone.iter()
                .filter_map(|q| live.consumers.remove(q))
                .collect()
        };
        // Deliveries already prefetched from a cancelled queue stay held
        // here and run; nothing more comes from it.
        let res: Result<(), lapin::Error> = sh.rt.block_on(async {
            for tag in cancel {
                ch.basic_cancel(tag, BasicCancelOptions::default()).await?;
            }
            Ok(())
        });
        res.map_err(|e| classify("basic.cancel", e))
    }

    fn handle(&self, what: &'static str) -> Result<Box<dyn Transport>, BrokerError> {
        Ok(Box::new(Amqp {
            sh: self.sh.clone(),
            what,
        }))
    }

    fn redis(&mut self) -> Option<&mut Link> {
        None
    }

    fn reply(&mut self, replies: &[super::Reply]) -> Result<(), BrokerError> {
        self.publish_replies(replies)
    }

    fn set_held(&mut self, n: usize) {
        let want = u16::try_from(usize::from(self.sh.opts.prefetch.max(1)).saturating_add(n))
            .unwrap_or(u16::MAX);
        {
            let mut extra = lock(&self.sh.extra);
            extra.0 = n;
            if extra.1 == want || self.sh.opts.quorum {
                // Quorum queues take a per-consumer prefetch at consume
                // only (Celery turns eta off for them).
                return;
            }
        }
        // (Not under `extra`: `live` locks the state, then `extra`.)
        let live = lock(&self.sh.state)
            .live
            .as_ref()
            .map(|l| l.consume.clone());
        let Some(ch) = live else { return };
        let set = self
            .sh
            .rt
            .block_on(async { ch.basic_qos(want, BasicQosOptions { global: true }).await });
        if set.is_ok() {
            lock(&self.sh.extra).1 = want;
        }
    }
}

impl Amqp {
    /// Publishes `replies` on the confirm channel to the default exchange,
    /// each with its reply queue as routing key, as Celery's `rpc://`
    /// backend does: `correlation_id`, JSON, transient (`delivery_mode` 1,
    /// `result_persistent` off). A reply queue that is gone drops it (the
    /// default exchange routes nowhere; RabbitMQ still confirms it).
    fn publish_replies(&self, replies: &[super::Reply]) -> Result<(), BrokerError> {
        if replies.is_empty() {
            return Ok(());
        }
        let (_, ch, _) = self.live()?;
        self.sh.rt.block_on(async {
            let e = |e: lapin::Error| classify("result reply", e);
            let mut confirms = Vec::with_capacity(replies.len());
            for r in replies {
                let props = BasicProperties::default()
                    .with_content_type(protocol::CONTENT_TYPE_JSON.into())
                    .with_content_encoding("utf-8".into())
                    .with_delivery_mode(1)
                    .with_correlation_id(r.correlation_id.as_str().into());
                confirms.push(
                    ch.basic_publish(
                        "".into(),
                        r.to.as_str().into(),
                        BasicPublishOptions::default(),
                        r.body.as_bytes(),
                        props,
                    )
                    .await
                    .map_err(e)?,
                );
            }
            confirmed("result reply", confirms).await
        })
    }
}

/// Waits for the broker's confirm of each of `confirms`; a nack or none
/// within [`CONFIRM_TIMEOUT`] fails them all (a retry publishes again).
async fn confirmed(
    what: &'static str,
    confirms: Vec<lapin::PublisherConfirm>,
) -> Result<(), BrokerError> {
    for c in confirms {
        let conf = tokio::time::timeout(CONFIRM_TIMEOUT, c)
            .await
            .map_err(|_| lost(what, "no confirm from the broker"))?
            .map_err(|e| classify(what, e))?;
        if conf.is_nack() {
            return Err(lost(what, "the broker refused a message (nack)"));
        }
    }
    Ok(())
}

impl Fanout for Amqp {
    fn publish(
        &mut self,
        to: &Exchange<'_>,
        routing_key: &str,
        envelope: &str,
    ) -> Result<(), BrokerError> {
        let (_, ch, _) = self.live()?;
        let o = outgoing(routing_key, envelope)?;
        let key = format!("x:{}", to.name);
        let fresh = !lock(&self.sh.state).declared.contains(&key);
        let res: Result<(), BrokerError> = self.sh.rt.block_on(async {
            let e = |e: lapin::Error| classify("publish", e);
            if fresh {
                declare_exchange(&ch, to).await.map_err(e)?;
            }
            let c = ch
                .basic_publish(
                    to.name.into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    &o.body,
                    o.props.clone(),
                )
                .await
                .map_err(e)?;
            tokio::time::timeout(CONFIRM_TIMEOUT, c)
                .await
                .map_err(|_| lost("publish", "no confirm from the broker"))?
                .map_err(e)?;
            Ok(())
        });
        res?;
        if fresh {
            lock(&self.sh.state).declared.insert(key);
        }
        Ok(())
    }

    fn is_down(&self) -> bool {
        Transport::is_down(self)
    }

    fn backoff_left(&self) -> Duration {
        Transport::backoff_left(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kombu_urls_become_lapin_uris() {
        let p = |u: &str| parse(u).unwrap_or_else(|e| format!("ERR {e}"));
        assert_eq!(
            p("amqp://guest:guest@localhost:5672//"),
            "amqp://guest:guest@localhost:5672/%2F"
        );
        assert_eq!(p("amqp://localhost"), "amqp://localhost/%2F");
        assert_eq!(p("pyamqp://u:p@h:5673/"), "amqp://u:p@h:5673/%2F");
        assert_eq!(p("amqp://h/prod"), "amqp://h/prod");
        assert_eq!(
            p("amqps://h/prod?heartbeat=30&ssl=1"),
            "amqps://h/prod?heartbeat=30"
        );
        assert!(p("amqp://").starts_with("ERR"));
        assert!(p("redis://h").starts_with("ERR"));
    }

    #[test]
    fn headers_round_trip_through_a_field_table() {
        let h = json!({"id": "x", "retries": 3, "eta": null, "timelimit": [null, 2.5],
                       "stamps": {"a": ["b"]}, "ignore_result": false});
        let Value::Object(m) = &h else { return };
        let back = json_value(&AMQPValue::FieldTable(table(m)));
        assert_eq!(back, h);
    }

    #[test]
    fn queue_arguments_are_celerys() {
        assert!(queue_args(&QueueOptions::default()).inner().is_empty());
        let a = queue_args(&QueueOptions {
            max_priority: Some(10),
            quorum: true,
            ..QueueOptions::default()
        });
        assert_eq!(
            a.inner().get("x-max-priority"),
            Some(&AMQPValue::LongInt(10))
        );
        assert_eq!(
            a.inner().get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(queue_of("celery\x06\x163"), "celery");
        assert_eq!(queue_of("celery"), "celery");
    }
}
