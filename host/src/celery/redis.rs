//! kombu's Redis transport, consumer side, with its gaps closed.
//!
//! Queues are lists (`Q`, `Q\x06\x163`, `Q\x06\x166`, `Q\x06\x169`);
//! delivered messages are recorded in kombu's ack emulation (`unacked`
//! hash: tag → `[envelope, exchange, routing_key]`, `unacked_index`
//! sorted set: tag → time) so a Python `celery worker` and this host read
//! each other's bookkeeping. What differs from kombu:
//!
//! - **reserve** is one Lua script (`lua/reserve.lua`): pop and record in
//!   one step, so a consumer that dies in between loses nothing;
//! - **heartbeat**: the scores of in-flight messages are refreshed
//!   (`ZADD XX`), so no sweeper restores a message whose host lives;
//! - **finish** is one Lua script (`lua/finish.lua`): result + PUBLISH +
//!   follow-up messages + ack at once when the backend is the broker;
//! - a lost connection is re-opened with backoff by every [`Link`].
//!
//! Waiting for work: Lua cannot block, so an idle consumer blocks on
//! `BLMOVE Q Q RIGHT RIGHT t` (an atomic no-op rotation that returns as
//! soon as `Q` is non-empty) and then reserves with the script.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{Connection, RedisError, RedisResult, Value as RValue};
use serde_json::Value;

use super::protocol;

/// kombu's hash of delivered, unacknowledged messages: delivery tag →
/// `[envelope, exchange, routing key]`. (These key names are kombu's,
/// `kombu/transport/redis.py`, `Channel`.)
pub const UNACKED: &str = "unacked";
/// kombu's sorted set of the delivery tags in [`UNACKED`], scored by the
/// time (Unix seconds) they were reserved; the sweep for stale ones reads it.
pub const UNACKED_INDEX: &str = "unacked_index";
/// The lock key (redis-py's `Lock`) that consumers take before returning
/// stale unacked messages to their queues.
pub const UNACKED_MUTEX: &str = "unacked_mutex";
/// kombu's `unacked_mutex_expire`.
pub const UNACKED_MUTEX_EXPIRE: Duration = Duration::from_secs(300);
/// kombu's exchange bindings: `_kombu.binding.<exchange>`, members
/// `routing_key\x06\x16pattern\x06\x16queue`.
pub const BINDING_PREFIX: &str = "_kombu.binding.";

const RESERVE_LUA: &str = include_str!("lua/reserve.lua");
const FINISH_LUA: &str = include_str!("lua/finish.lua");
const RESTORE_LUA: &str = include_str!("lua/restore.lua");
const UNLOCK_LUA: &str = include_str!("lua/unlock.lua");

/// A broker or backend failure.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The URL is not one this host can use.
    #[error("invalid Redis URL {url:?}: {why}")]
    Url {
        /// The URL as given, password redacted.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// A Redis command (or the connection) failed.
    #[error("Redis ({what}): {source}")]
    Redis {
        /// Which link failed ("broker", "result backend", "events", ...).
        what: &'static str,
        /// Redis's (or the connection's) error.
        #[source]
        source: RedisError,
    },
    /// Redis answered something this host cannot read.
    #[error("unexpected Redis reply: {0}")]
    Reply(String),
}

/// Opens a client for a Celery-style broker URL: `redis://[:password@]host
/// [:port][/db]`, `redis+unix:///path[?db=N]`, `unix:///path`, kombu's
/// `redis+socket:///path`, and `rediss://...` (TLS) with redis-py's query
/// options `ssl_cert_reqs=required|optional|none` (`CERT_*` too; none: no
/// verification), `ssl_ca_certs=PATH` (PEM roots instead of the system's),
/// `ssl_certfile=PATH` + `ssl_keyfile=PATH` (a client certificate).
pub fn client(url: &str) -> Result<redis::Client, BrokerError> {
    let bad = |why: String| BrokerError::Url {
        url: redact(url),
        why,
    };
    let fixed = if let Some(rest) = url.strip_prefix("redis+socket://") {
        format!("unix://{rest}")
    } else if let Some(rest) = url.strip_prefix("socket://") {
        format!("unix://{rest}")
    } else {
        url.to_string()
    };
    if !fixed.starts_with("rediss://") {
        return redis::Client::open(fixed.as_str()).map_err(|e| bad(e.to_string()));
    }
    // TLS: take redis-py's ssl_* options out of the query string.
    let (base, query) = match fixed.split_once('?') {
        Some((b, q)) => (b.to_string(), q.to_string()),
        None => (fixed.clone(), String::new()),
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q.to_string(), Some(f.to_string())),
        None => (query, None),
    };
    let mut keep = Vec::new();
    let (mut verify, mut ca, mut cert, mut key) = (true, None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = v.replace("%2F", "/").replace("%2f", "/");
        match k {
            "ssl_cert_reqs" => match v.to_ascii_lowercase().as_str() {
                "none" | "cert_none" => verify = false,
                "required" | "cert_required" | "optional" | "cert_optional" => verify = true,
                other => return Err(bad(format!("unknown ssl_cert_reqs={other}"))),
            },
            "ssl_ca_certs" => ca = Some(v),
            "ssl_certfile" => cert = Some(v),
            "ssl_keyfile" => key = Some(v),
            "ssl_check_hostname" => {}
            _ => keep.push(pair.to_string()),
        }
    }
    let mut url2 = base;
    if !keep.is_empty() {
        url2.push('?');
        url2.push_str(&keep.join("&"));
    }
    if !verify || fragment.as_deref() == Some("insecure") {
        url2.push_str("#insecure");
    }
    let read = |p: &str| std::fs::read(p).map_err(|e| bad(format!("cannot read {p}: {e}")));
    if ca.is_none() && cert.is_none() {
        return redis::Client::open(url2.as_str()).map_err(|e| bad(e.to_string()));
    }
    let client_tls = match (cert, key) {
        (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
            client_cert: read(&c)?,
            client_key: read(&k)?,
        }),
        (None, None) => None,
        _ => return Err(bad("ssl_certfile and ssl_keyfile go together".into())),
    };
    let root_cert = ca.map(|p| read(&p)).transpose()?;
    redis::Client::build_with_tls(
        url2.as_str(),
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(|e| bad(e.to_string()))
}

/// The URL with any password replaced by `***` (for logs).
pub fn redact(url: &str) -> String {
    // scheme://user:password@host → scheme://user:***@host
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((cred, host)) if !cred.contains('/') => {
            let user = cred.split_once(':').map(|(u, _)| u).unwrap_or("");
            if cred.contains(':') {
                format!("{scheme}://{user}:***@{host}")
            } else {
                format!("{scheme}://***@{host}")
            }
        }
        _ => url.to_string(),
    }
}

/// Seconds since the epoch, as kombu scores `unacked_index`.
pub fn now_score() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The score this host writes: whole seconds, rounded up. Redis keeps a
/// small sorted set as a listpack and compares scores by parsing them:
/// integers cost a fraction of what fractional scores cost (ZADD several
/// times faster under load). Rounding up makes a message look younger by
/// under a second, never older, so no sweeper restores it early.
pub fn score_now() -> i64 {
    now_score().ceil() as i64
}

/// One Redis connection that re-opens itself: after an error the next
/// call reconnects (and reloads the scripts), no sooner than its backoff
/// (50 ms doubling to 5 s) allows.
pub struct Link {
    client: redis::Client,
    what: &'static str,
    con: Option<Connection>,
    failures: u32,
    retry_at: Option<Instant>,
    read_timeout: Duration,
}

/// The scripts, as loaded on a connection.
struct Scripts;

impl Scripts {
    fn all() -> [&'static str; 4] {
        [RESERVE_LUA, FINISH_LUA, RESTORE_LUA, UNLOCK_LUA]
    }
}

/// The SHA-1 of one of [`Scripts::all`], computed once per process. (By
/// content: a `const` may live at several addresses.)
fn sha(src: &'static str) -> &'static str {
    static HASHES: std::sync::OnceLock<Vec<(&'static str, String)>> = std::sync::OnceLock::new();
    let hashes = HASHES.get_or_init(|| {
        Scripts::all()
            .iter()
            .map(|s| (*s, redis::Script::new(s).get_hash().to_string()))
            .collect()
    });
    match hashes
        .iter()
        .find(|(s, _)| s.len() == src.len() && *s == src)
    {
        Some((_, h)) => h.as_str(),
        // Not one of ours (cannot happen): hash it on the spot.
        None => Box::leak(
            redis::Script::new(src)
                .get_hash()
                .to_string()
                .into_boxed_str(),
        ),
    }
}

impl Link {
    /// A link to `url`; `what` names it in errors ("broker", "backend").
    pub fn new(url: &str, what: &'static str) -> Result<Link, BrokerError> {
        Ok(Link {
            client: client(url)?,
            what,
            con: None,
            failures: 0,
            retry_at: None,
            read_timeout: Duration::from_secs(10),
        })
    }

    /// True while the last call failed (and no call succeeded since).
    pub fn is_down(&self) -> bool {
        self.failures > 0
    }

    /// How long until the next reconnect attempt is allowed.
    pub fn backoff_left(&self) -> Duration {
        self.retry_at
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    }

    fn err(&self, source: RedisError) -> BrokerError {
        BrokerError::Redis {
            what: self.what,
            source,
        }
    }

    fn connect(&mut self) -> Result<&mut Connection, BrokerError> {
        if self.con.is_none() {
            if let Some(t) = self.retry_at {
                let now = Instant::now();
                if now < t {
                    std::thread::sleep(t.saturating_duration_since(now));
                }
            }
            let opened = self
                .client
                .get_connection_with_timeout(Duration::from_secs(5))
                .and_then(|mut c| {
                    c.set_read_timeout(Some(self.read_timeout))?;
                    c.set_write_timeout(Some(self.read_timeout))?;
                    for src in Scripts::all() {
                        redis::Script::new(src).load(&mut c)?;
                    }
                    Ok(c)
                });
            match opened {
                Ok(c) => self.con = Some(c),
                Err(e) => {
                    self.failed();
                    return Err(self.err(e));
                }
            }
        }
        match self.con.as_mut() {
            Some(c) => Ok(c),
            None => Err(BrokerError::Reply("no connection".into())),
        }
    }

    fn failed(&mut self) {
        self.con = None;
        self.backoff();
    }

    /// The next call waits a little longer (a server error repeated in a
    /// loop must not spin: e.g. a queue key holding a string).
    fn backoff(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let ms = 50u64.saturating_mul(1 << self.failures.min(7)).min(5000);
        self.retry_at = Some(crate::bounds::saturating_deadline(
            Instant::now(),
            Duration::from_millis(ms),
        ));
    }

    /// Runs `f` on the connection (opening it first if needed). A
    /// connection-level failure drops the connection so the next call
    /// re-opens it; a server error (a bad command) leaves it open.
    pub fn run<T>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, BrokerError> {
        let con = self.connect()?;
        match f(con) {
            Ok(v) => {
                if self.failures > 0 {
                    tracing::info!("Redis ({}) is reachable again", self.what);
                }
                self.failures = 0;
                self.retry_at = None;
                Ok(v)
            }
            Err(e) => {
                let noscript = e.code() == Some("NOSCRIPT");
                if noscript
                    || e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_unrecoverable_error()
                {
                    self.failed();
                } else {
                    self.backoff();
                }
                Err(self.err(e))
            }
        }
    }

    /// Like [`Link::run`] with a longer read timeout (for blocking calls).
    pub fn run_blocking<T>(
        &mut self,
        block: Duration,
        f: impl FnOnce(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, BrokerError> {
        let t = block + self.read_timeout;
        let normal = self.read_timeout;
        self.run(|c| {
            c.set_read_timeout(Some(t))?;
            let r = f(c);
            c.set_read_timeout(Some(normal))?;
            r
        })
    }
}

/// A message taken off a queue and recorded in `unacked`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reserved {
    /// Its tag in `unacked` / `unacked_index` (empty: not a JSON object,
    /// nothing was recorded).
    pub tag: String,
    /// The envelope as it was in the list.
    pub raw: Vec<u8>,
    /// The queue it came from.
    pub queue: String,
}

/// The consumer side of kombu's Redis transport for a set of queues.
pub struct RedisBroker {
    link: Link,
    queues: Vec<String>,
    rotate: usize,
}

impl RedisBroker {
    /// A consumer of `queues` (each with its priority lists) at `url`.
    /// Fails only for a bad URL: the connection is made by the first command
    /// (and re-made after an error).
    pub fn new(url: &str, queues: Vec<String>) -> Result<RedisBroker, BrokerError> {
        Ok(RedisBroker {
            link: Link::new(url, "broker")?,
            queues,
            rotate: 0,
        })
    }

    /// The broker's connection, for commands of its own.
    pub fn link(&mut self) -> &mut Link {
        &mut self.link
    }

    /// Checks the connection (PING).
    pub fn ping(&mut self) -> Result<(), BrokerError> {
        self.link
            .run(|c| redis::cmd("PING").query::<String>(c))
            .map(|_| ())
    }

    /// Reserves up to `max` messages in one atomic step, from the priority
    /// lists of every queue (all queues' priority-0 lists first, then the
    /// 3s, ...), rotating which queue goes first so none starves.
    pub fn reserve(&mut self, max: usize) -> Result<Vec<Reserved>, BrokerError> {
        if max == 0 || self.queues.is_empty() {
            return Ok(Vec::new());
        }
        let n = self.queues.len();
        let start = self.rotate % n;
        self.rotate = self.rotate.wrapping_add(1);
        let mut lists = Vec::with_capacity(n * 4);
        for step in protocol::PRIORITY_STEPS {
            for i in 0..n {
                let q = &self.queues[(start + i) % n];
                lists.push((protocol::queue_key(q, step), q.clone()));
            }
        }
        let spares: Vec<String> = (0..max).map(|_| protocol::new_id()).collect();
        let now = score_now();
        let reply: Vec<RValue> = self.link.run(|c| {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(sha(RESERVE_LUA))
                .arg(2 + lists.len())
                .arg(UNACKED)
                .arg(UNACKED_INDEX);
            for (l, _) in &lists {
                cmd.arg(l);
            }
            cmd.arg(max).arg(now);
            for (_, q) in &lists {
                cmd.arg(q);
            }
            for s in &spares {
                cmd.arg(s);
            }
            cmd.query(c)
        })?;
        let mut out = Vec::with_capacity(reply.len() / 3);
        for t in reply.chunks(3) {
            let [tag, raw, idx] = t else {
                return Err(BrokerError::Reply(
                    "reserve returned a partial triple".into(),
                ));
            };
            let tag = bytes(tag).map(|b| String::from_utf8_lossy(&b).into_owned());
            let raw = bytes(raw);
            let idx = match idx {
                RValue::Int(i) => *i as usize,
                _ => 0,
            };
            let (Some(tag), Some(raw)) = (tag, raw) else {
                return Err(BrokerError::Reply("reserve returned a non-string".into()));
            };
            let queue = lists
                .get(idx.wrapping_sub(1))
                .map(|(_, q)| q.clone())
                .unwrap_or_default();
            out.push(Reserved { tag, raw, queue });
        }
        Ok(out)
    }

    /// Blocks up to `timeout` until the first queue's main list has a
    /// message (without taking it). Returns at once when it already has.
    pub fn wait(&mut self, timeout: Duration) -> Result<(), BrokerError> {
        let Some(q) = self.queues.first().cloned() else {
            std::thread::sleep(timeout);
            return Ok(());
        };
        let secs = timeout.as_secs_f64().max(0.01);
        self.link
            .run_blocking(timeout, |c| {
                redis::cmd("BLMOVE")
                    .arg(&q)
                    .arg(&q)
                    .arg("RIGHT")
                    .arg("RIGHT")
                    .arg(format!("{secs:.3}"))
                    .query::<RValue>(c)
            })
            .map(|_| ())
    }
}

fn bytes(v: &RValue) -> Option<Vec<u8>> {
    match v {
        RValue::BulkString(b) => Some(b.clone()),
        RValue::SimpleString(s) => Some(s.clone().into_bytes()),
        RValue::Okay => Some(b"OK".to_vec()),
        _ => None,
    }
}

/// One message's completion, for [`finish`].
#[derive(Debug, Clone, Default)]
pub struct Finish {
    /// The delivery tag to ack (empty: nothing to ack on this server).
    pub tag: String,
    /// The result key and JSON to store (None: store nothing here).
    pub result: Option<(String, String)>,
    /// Follow-up messages: (list, envelope JSON).
    pub send: Vec<(String, String)>,
}

/// What [`finish`] did for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// The result was written (false: a SUCCESS was there already).
    pub stored: bool,
    /// The message was still ours to ack (false: it had been restored to
    /// its queue meanwhile, so it may run again; follow-ups not sent).
    pub held: bool,
}

/// Finishes a batch of messages in one round trip and one script call per
/// 256 messages: store + PUBLISH + follow-ups + ack, each message
/// atomically.
pub fn finish(
    link: &mut Link,
    batch: &[Finish],
    result_ttl: Duration,
) -> Result<Vec<Finished>, BrokerError> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let hash = sha(FINISH_LUA);
    let ttl = result_ttl.as_secs();
    let replies: Vec<Vec<i64>> = link.run(|c| {
        let mut pipe = redis::pipe();
        for chunk in batch.chunks(256) {
            let nkeys: usize = 2 + chunk.iter().map(|f| 1 + f.send.len()).sum::<usize>();
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(hash)
                .arg(nkeys)
                .arg(UNACKED)
                .arg(UNACKED_INDEX);
            for f in chunk {
                match &f.result {
                    Some((k, _)) => cmd.arg(k),
                    None => cmd.arg(protocol::RESULT_KEY_PREFIX),
                };
                for (l, _) in &f.send {
                    cmd.arg(l);
                }
            }
            cmd.arg(ttl);
            for f in chunk {
                cmd.arg(&f.tag);
                match &f.result {
                    Some((_, v)) => cmd.arg(v),
                    None => cmd.arg(""),
                };
                cmd.arg(f.send.len());
                for (_, m) in &f.send {
                    cmd.arg(m);
                }
            }
        }
        pipe.query(c)
    })?;
    let flat: Vec<i64> = replies.into_iter().flatten().collect();
    if flat.len() != batch.len() * 2 {
        return Err(BrokerError::Reply(format!(
            "finish answered {} values for {} messages",
            flat.len(),
            batch.len()
        )));
    }
    Ok(flat
        .chunks(2)
        .map(|r| Finished {
            stored: r[0] == 1,
            held: r[1] == 1,
        })
        .collect())
}

/// Sets `redelivered` in the headers and delivery_info, as kombu's restore
/// does. Returns None when `payload` is not an object.
fn mark_redelivered(mut payload: Value) -> Option<String> {
    let obj = payload.as_object_mut()?;
    if let Some(h) = obj.get_mut("headers").and_then(Value::as_object_mut) {
        h.insert("redelivered".into(), Value::Bool(true));
    }
    if let Some(di) = obj
        .get_mut("properties")
        .and_then(Value::as_object_mut)
        .and_then(|p| p.get_mut("delivery_info"))
        .and_then(Value::as_object_mut)
    {
        di.insert("redelivered".into(), Value::Bool(true));
    }
    serde_json::to_string(&payload).ok()
}

/// The priority of an envelope (0-9; kombu's `_get_message_priority`).
fn priority_of(payload: &Value) -> u8 {
    payload
        .get("properties")
        .and_then(|p| p.get("priority"))
        .and_then(Value::as_i64)
        .unwrap_or(0)
        .clamp(0, 9) as u8
}

/// The queues a message sent to `exchange` with `routing_key` goes to
/// (kombu's `_lookup`: the routing key itself on the default exchange,
/// else the exchange's bindings, direct match, or all for fanout-style
/// `#` / empty keys).
fn lookup(c: &mut Connection, exchange: &str, routing_key: &str) -> RedisResult<Vec<String>> {
    if exchange.is_empty() {
        return Ok(vec![routing_key.to_string()]);
    }
    let members: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
        .arg(format!("{BINDING_PREFIX}{exchange}"))
        .query(c)?;
    let mut out = Vec::new();
    for m in members {
        let m = String::from_utf8_lossy(&m).into_owned();
        let parts: Vec<&str> = m.split(protocol::PRIORITY_SEP).collect();
        if let [rk, _pattern, queue] = parts.as_slice() {
            if *rk == routing_key || rk.is_empty() || *rk == "#" {
                out.push(queue.to_string());
            }
        }
    }
    Ok(out)
}

/// An `unacked` entry, read back.
struct Entry {
    raw: Vec<u8>,
    payload: Value,
    exchange: String,
    routing_key: String,
}

fn read_entry(c: &mut Connection, tag: &str) -> RedisResult<Option<Entry>> {
    let raw: Option<Vec<u8>> = redis::cmd("HGET").arg(UNACKED).arg(tag).query(c)?;
    let Some(raw) = raw else { return Ok(None) };
    let Ok(Value::Array(mut parts)) = serde_json::from_slice::<Value>(&raw) else {
        return Ok(None);
    };
    if parts.len() < 3 {
        return Ok(None);
    }
    let routing_key = parts[2].as_str().unwrap_or_default().to_string();
    let exchange = parts[1].as_str().unwrap_or_default().to_string();
    let payload = parts.swap_remove(0);
    Ok(Some(Entry {
        raw,
        payload,
        exchange,
        routing_key,
    }))
}

/// Returns one unacked message to its queue(s). `only_queues`: restore
/// only a message bound for one of these (a sweep leaves other consumers'
/// queues to them). `stale_before`: restore only if its score is still at
/// most this. Returns true if it was restored.
fn restore_one(
    c: &mut Connection,
    tag: &str,
    only_queues: Option<&[String]>,
    stale_before: Option<f64>,
) -> RedisResult<bool> {
    let Some(e) = read_entry(c, tag)? else {
        return Ok(false);
    };
    let mut queues = lookup(c, &e.exchange, &e.routing_key)?;
    if queues.is_empty() {
        queues.push(e.routing_key.clone());
    }
    if let Some(only) = only_queues {
        if !queues.iter().any(|q| only.contains(q)) {
            return Ok(false);
        }
    }
    let pri = priority_of(&e.payload);
    let Some(msg) = mark_redelivered(e.payload) else {
        return Ok(false);
    };
    let ceil = stale_before.map(|s| format!("{s}")).unwrap_or_default();
    let mut restored = false;
    // One message bound to several queues (fanout) is restored to each,
    // as kombu does; the entry goes away with the first.
    for (i, q) in queues.iter().enumerate() {
        let list = protocol::queue_key(q, pri);
        if i == 0 {
            let r: i64 = redis::cmd("EVALSHA")
                .arg(sha(RESTORE_LUA))
                .arg(3)
                .arg(UNACKED)
                .arg(UNACKED_INDEX)
                .arg(&list)
                .arg(tag)
                .arg(&ceil)
                .arg(&e.raw)
                .arg(&msg)
                .arg("R")
                .query(c)?;
            restored = r == 1;
            if !restored {
                break;
            }
        } else {
            redis::cmd("RPUSH").arg(&list).arg(&msg).query::<()>(c)?;
        }
    }
    Ok(restored)
}

/// Returns these messages (ours, in flight) to their queues at once: a
/// cold shutdown's requeue, or an eta message still waiting at a warm one.
pub fn requeue(link: &mut Link, tags: &[String]) -> Result<usize, BrokerError> {
    link.run(|c| {
        let mut n = 0;
        for t in tags {
            if restore_one(c, t, None, None)? {
                n += 1;
            }
        }
        Ok(n)
    })
}

/// Acks these messages without a result (ZREM + HDEL).
pub fn ack(link: &mut Link, tags: &[String]) -> Result<(), BrokerError> {
    if tags.is_empty() {
        return Ok(());
    }
    link.run(|c| {
        let mut pipe = redis::pipe();
        for t in tags {
            pipe.cmd("ZREM").arg(UNACKED_INDEX).arg(t).ignore();
            pipe.cmd("HDEL").arg(UNACKED).arg(t).ignore();
        }
        pipe.query::<()>(c)
    })
}

/// Refreshes the scores of in-flight messages (`ZADD unacked_index XX`:
/// a tag acked or restored meanwhile is not re-added).
pub fn heartbeat(link: &mut Link, tags: &[String]) -> Result<(), BrokerError> {
    if tags.is_empty() {
        return Ok(());
    }
    let now = score_now();
    link.run(|c| {
        let mut pipe = redis::pipe();
        for chunk in tags.chunks(512) {
            let cmd = pipe.cmd("ZADD").arg(UNACKED_INDEX).arg("XX");
            for t in chunk {
                cmd.arg(now).arg(t);
            }
            cmd.ignore();
        }
        pipe.query::<()>(c)
    })
}

/// One restore sweep (kombu's `restore_visible`), under kombu's
/// `unacked_mutex`: messages of `queues` whose score is older than
/// `visibility` go back to their queue, marked redelivered. Returns how
/// many were restored (0 when another sweeper holds the mutex).
pub fn sweep(
    link: &mut Link,
    queues: &[String],
    visibility: Duration,
    limit: usize,
) -> Result<usize, BrokerError> {
    let token = protocol::new_id();
    link.run(|c| {
        let got: Option<String> = redis::cmd("SET")
            .arg(UNACKED_MUTEX)
            .arg(&token)
            .arg("NX")
            .arg("EX")
            .arg(UNACKED_MUTEX_EXPIRE.as_secs())
            .query(c)?;
        if got.is_none() {
            return Ok(0);
        }
        let ceil = now_score() - visibility.as_secs_f64();
        let res = (|| {
            let stale: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(UNACKED_INDEX)
                .arg("-inf")
                .arg(ceil)
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query(c)?;
            let mut n = 0;
            for tag in &stale {
                if restore_one(c, tag, Some(queues), Some(ceil))? {
                    tracing::warn!(
                        "restored message {tag} to its queue: its consumer stopped \
                         renewing it for over {}",
                        humantime::format_duration(visibility)
                    );
                    n += 1;
                }
            }
            Ok(n)
        })();
        let _: RedisResult<i64> = redis::cmd("EVALSHA")
            .arg(sha(UNLOCK_LUA))
            .arg(1)
            .arg(UNACKED_MUTEX)
            .arg(&token)
            .query(c);
        res
    })
}

/// Sends messages (LPUSH each onto its list), e.g. a chain's next step
/// when the backend is not the broker.
pub fn send(link: &mut Link, msgs: &[(String, String)]) -> Result<(), BrokerError> {
    if msgs.is_empty() {
        return Ok(());
    }
    link.run(|c| {
        let mut pipe = redis::pipe();
        for (list, m) in msgs {
            pipe.cmd("LPUSH").arg(list).arg(m).ignore();
        }
        pipe.query::<()>(c)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_hashes_are_computed_once_and_right() {
        for src in Scripts::all() {
            assert_eq!(sha(src), redis::Script::new(src).get_hash());
        }
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://:s3cret@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact("redis://u:s3cret@h/1"), "redis://u:***@h/1");
        assert_eq!(redact("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(
            redact("redis+unix:///tmp/r.sock"),
            "redis+unix:///tmp/r.sock"
        );
    }

    #[test]
    fn accepts_celery_urls() {
        for u in [
            "redis://127.0.0.1:6379/0",
            "redis://:pw@127.0.0.1:6379/2",
            "redis+unix:///tmp/x.sock",
            "unix:///tmp/x.sock?db=1",
            "redis+socket:///tmp/x.sock",
            "rediss://127.0.0.1:6380/0",
            "rediss://127.0.0.1:6380/0?ssl_cert_reqs=none",
            "rediss://:pw@127.0.0.1:6380/1?ssl_cert_reqs=CERT_NONE&db=1",
        ] {
            client(u).unwrap_or_else(|e| panic!("{u}: {e}"));
        }
        assert!(client("amqp://guest@localhost//").is_err());
        assert!(client("rediss://127.0.0.1/0?ssl_cert_reqs=maybe").is_err());
        assert!(client("rediss://127.0.0.1/0?ssl_ca_certs=/nonexistent/ca.pem").is_err());
    }

    #[test]
    fn redelivered_marks_both_places() {
        let v: Value = serde_json::from_str(
            r#"{"body":"","headers":{"id":"x"},"properties":{"delivery_info":{"exchange":"","routing_key":"celery"},"priority":6}}"#,
        )
        .unwrap();
        assert_eq!(priority_of(&v), 6);
        let m: Value = serde_json::from_str(&mark_redelivered(v).unwrap()).unwrap();
        assert_eq!(m["headers"]["redelivered"], true);
        assert_eq!(m["properties"]["delivery_info"]["redelivered"], true);
    }
}
