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
//! - **leases**: a reservation's score is the end of its lease (now + the
//!   host's visibility timeout), renewed every third of it (`ZADD XX`), so
//!   no sweeper — ours or kombu's, whatever its visibility timeout — sees a
//!   live host's message as stale (kombu restores `score < now - timeout`);
//!   `billiard-host:leases` holds the same scores, so our sweeper tells a
//!   lapsed lease (restored at once) from an entry of a consumer that never
//!   renews (a Python worker: restored after `foreign` timeout, kombu's 1 h);
//! - **one tag per reservation**: every reservation gets a fresh delivery
//!   tag, so a duplicated envelope is two reservations and a late finish
//!   never acks someone else's reservation of the same message;
//! - **finish** is one Lua script (`lua/finish.lua`): result + PUBLISH +
//!   follow-up messages + ack at once when the backend is the broker; the
//!   worker's finisher runs it with the reserve for the slots it frees in
//!   one script call (`lua/finish_reserve.lua`,
//!   [`RedisBroker::finish_reserve`]);
//! - a lost connection is re-opened with backoff by every [`Link`].
//!
//! Waiting for work: Lua cannot block, so an idle consumer blocks on
//! `BLMOVE Q Q RIGHT RIGHT t` (an atomic no-op rotation that returns as
//! soon as `Q` is non-empty) and then reserves with the script.

use std::time::{Duration, Instant};

use redis::{Connection, RedisError, RedisResult, Value as RValue};
use serde_json::Value;

use crate::celery::protocol;

/// kombu's hash of delivered, unacknowledged messages: delivery tag →
/// `[envelope, exchange, routing key]`. (These key names are kombu's,
/// `kombu/transport/redis.py`, `Channel`.)
pub const UNACKED: &str = "unacked";
/// kombu's sorted set of the delivery tags in [`UNACKED`], scored by the
/// time (Unix seconds) they were reserved; the sweep for stale ones reads it.
/// This host scores its own reservations with the end of their lease
/// instead (see [`LEASES`]).
pub const UNACKED_INDEX: &str = "unacked_index";
/// This host's leases: delivery tag → the score it wrote in
/// [`UNACKED_INDEX`] (the lease's end). An entry of `unacked_index` with a
/// lease here is a billiard-host reservation (restored once its lease has
/// lapsed); one without is a consumer's that never renews (a Python worker).
pub const LEASES: &str = "billiard-host:leases";
/// Tombstones of restores: delivery tag → when it was put back on a queue
/// (kept a day). A late finish reads it to say "restored" only when a
/// restore really happened.
pub const RESTORED: &str = "billiard-host:restored";
/// Hash: delivery tag → "running here" mark of a message whose task started
/// on a billiard-host (`ttl\ntask id\nwho, since when`; written by
/// `redelivery::Marker`, cleared with the ack or the restore): a sweep that
/// restores a marked message counts a death of its task (the
/// poison-message cap, `redelivery.rs`).
pub const RUNNING: &str = "billiard-host:running";
/// Prefix of the per-task death lists (`billiard-host:deaths:<task id>`,
/// newest first, expiring): each death of a worker or a host while running
/// the task, named.
pub const DEATHS_PREFIX: &str = "billiard-host:deaths:";
/// kombu's default `visibility_timeout` (1 hour): how long a consumer that
/// never renews (a Python worker) may hold a message before a sweeper
/// restores it.
pub const KOMBU_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(3600);
/// The lock key (redis-py's `Lock`) that consumers take before returning
/// stale unacked messages to their queues.
pub const UNACKED_MUTEX: &str = "unacked_mutex";
/// kombu's `unacked_mutex_expire`.
pub const UNACKED_MUTEX_EXPIRE: Duration = Duration::from_secs(300);
/// kombu's exchange bindings: `_kombu.binding.<exchange>`, members
/// `routing_key\x06\x16pattern\x06\x16queue`.
pub const BINDING_PREFIX: &str = "_kombu.binding.";

const RESERVE_LUA: &str = include_str!("../lua/reserve.lua");
const FINISH_LUA: &str = include_str!("../lua/finish.lua");
const RESTORE_LUA: &str = include_str!("../lua/restore.lua");
const UNLOCK_LUA: &str = include_str!("../lua/unlock.lua");
const RENEW_LUA: &str = include_str!("../lua/renew.lua");
/// `lua/finish.lua` and `lua/reserve.lua` as functions of their own KEYS
/// and ARGV, called one after the other by `lua/finish_reserve.lua`.
const FINISH_RESERVE_LUA: &str = concat!(
    "pcall(redis.replicate_commands)\nlocal function finish(KEYS, ARGV)\n",
    include_str!("../lua/finish.lua"),
    "\nend\nlocal function reserve(KEYS, ARGV)\n",
    include_str!("../lua/reserve.lua"),
    "\nend\n",
    include_str!("../lua/finish_reserve.lua"),
);

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
    /// A setting Redis cannot carry out (a result expiry past its range).
    #[error("{0}")]
    Config(String),
    /// A signal interrupted a call (EINTR) whose reply can no longer be
    /// read; the connection was reopened at once, without backoff. (A
    /// blocking wait is retried instead and never ends so.)
    #[error("Redis ({what}): a signal interrupted the call; reconnected")]
    Interrupted {
        /// Which link.
        what: &'static str,
    },
    /// An AMQP broker (RabbitMQ) failed or refused (`transport::amqp`).
    #[error("AMQP ({what}): {why}")]
    Amqp {
        /// Which part ("broker", "publish", ...).
        what: &'static str,
        /// The client's or the server's words.
        why: String,
        /// The connection or channel was lost (worth retrying; a call
        /// may have been carried out), not a refusal.
        transient: bool,
    },
}

/// The error codes of a Redis that cannot serve *now* but will again
/// (loading, out of memory, a failover, a script running, ...): worth
/// retrying with backoff. Any other server error (a bad argument, a wrong
/// type, an ACL refusal) fails the same way every time.
const TRANSIENT_CODES: &[&str] = &[
    "OOM",
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "READONLY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOSCRIPT",
    "NOREPLICAS",
    "MISCONF",
    "UNBLOCKED",
];

impl BrokerError {
    /// True when the same call may succeed later: the connection failed
    /// (or timed out, or a signal interrupted it) or Redis answered one of
    /// the transient codes (`OOM`, `BUSY`, `LOADING`, ...: the private
    /// `TRANSIENT_CODES`). False for what fails the same way every time
    /// (`invalid expire time`, `WRONGTYPE`, `NOPERM`, a reply this host
    /// cannot read): retrying those would hold their slots for ever.
    pub fn is_transient(&self) -> bool {
        match self {
            BrokerError::Interrupted { .. } => true,
            BrokerError::Amqp { transient, .. } => *transient,
            BrokerError::Url { .. } | BrokerError::Reply(_) | BrokerError::Config(_) => false,
            BrokerError::Redis { source, .. } => {
                if source.is_io_error() || source.is_timeout() || source.is_connection_dropped() {
                    return true;
                }
                // The codes Redis answered: the error's own, or each of a
                // pipeline's (a script's refusal arrives as one).
                let mut codes: Vec<String> =
                    source.code().map(str::to_string).into_iter().collect();
                if let Some(errs) = source.clone().into_server_errors() {
                    codes.extend(errs.iter().map(|(_, e)| e.code().to_string()));
                }
                let text = source.to_string();
                TRANSIENT_CODES.iter().any(|c| {
                    codes.iter().any(|x| x == c)
                        || text.starts_with(c)
                        || text.contains(&format!(": {c} "))
                        || text.contains(&format!("\"{c}\""))
                })
            }
        }
    }

    /// True when the call may have been applied although no reply came (a
    /// timeout, a dropped connection, a signal): a repeat must not do twice
    /// what is not idempotent.
    pub fn may_have_applied(&self) -> bool {
        match self {
            BrokerError::Interrupted { .. } => true,
            BrokerError::Amqp { transient, .. } => *transient,
            BrokerError::Redis { source, .. } => {
                source.is_io_error() || source.is_timeout() || source.is_connection_dropped()
            }
            _ => false,
        }
    }
}

/// Opens a client for a Celery-style broker URL: `redis://[:password@]host
/// [:port][/db]`, `redis+unix:///path[?db=N]`, `unix:///path`, kombu's
/// `redis+socket:///path`, and `rediss://...` (TLS) with redis-py's query
/// options `ssl_cert_reqs=required|optional|none` (`CERT_*` too; none: no
/// verification), `ssl_ca_certs=PATH` (PEM roots instead of the system's),
/// `ssl_certfile=PATH` + `ssl_keyfile=PATH` (a client certificate).
pub fn client(url: &str) -> Result<redis::Client, BrokerError> {
    if super::sentinel::is_sentinel(url) {
        // The current master (asked again by each Link's reconnect).
        return client(&super::sentinel::master_url(url)?);
    }
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
        return redis::Client::open(fixed.as_str()).map_err(|e| {
            // A scheme this host does not speak (Celery's amqp://, sqs://,
            // a typo) is said by name, not as "did not parse" (issue 28).
            bad(match fixed.split_once("://") {
                Some((s, _))
                    if !matches!(
                        s,
                        "redis" | "unix" | "redis+unix" | "valkey" | "valkeys" | "valkey+unix"
                    ) =>
                {
                    format!(
                        "the scheme `{s}://` is not one this host speaks: redis://, rediss://, \
                         redis+unix://, unix:// or redis+socket:// (Redis only)"
                    )
                }
                None => "not a URL: redis://[:PASSWORD@]HOST:PORT/DB".to_string(),
                Some(_) => e.to_string(),
            })
        });
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

/// A lease as the scripts take it: seconds (they add it to Redis's clock,
/// `TIME`, and round the end up to whole seconds: Redis keeps a small
/// sorted set as a listpack and compares scores by parsing them, so
/// integers cost a fraction of what fractional scores cost; rounding up
/// lengthens a lease by under a second, never shortens it). On Redis's
/// clock, the hosts' own clocks never matter between billiard hosts.
/// (`lease` is at most 10 years, checked where it enters.)
fn lease_arg(lease: Duration) -> String {
    format!("{:.3}", lease.as_secs_f64())
}

/// Redis's clock (`TIME`), in Unix seconds: what leases are scored with.
fn redis_now(c: &mut Connection) -> RedisResult<f64> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(c)?;
    Ok(secs as f64 + micros as f64 / 1e6)
}

/// A result time to live as `SETEX` takes it: whole seconds, rounded up
/// (a 500 ms expiry is 1 s, not "forever"), at most
/// [`crate::bounds::MAX_DURATION`] (Redis refuses a TTL whose milliseconds
/// overflow; 10 years is far below that).
pub fn ttl_secs(ttl: Duration) -> Result<u64, crate::bounds::TooLong> {
    let ttl = crate::bounds::check_duration("--result-expires", ttl)?;
    let whole = ttl.as_secs();
    Ok(if ttl.subsec_nanos() > 0 {
        whole.saturating_add(1)
    } else {
        whole
    })
}

/// One Redis connection that re-opens itself: after an error the next
/// call reconnects (and reloads the scripts), no sooner than its backoff
/// (50 ms doubling to 5 s) allows.
pub struct Link {
    client: redis::Client,
    what: &'static str,
    con: Option<Connection>,
    failures: u32,
    /// The connection itself failed (not a command): "reachable again" is
    /// logged when a call succeeds after that, not after a refused command.
    lost: bool,
    retry_at: Option<Instant>,
    read_timeout: Duration,
    /// A `sentinel://` URL, resolved again to the master on each reconnect.
    sentinel: Option<String>,
}

/// The scripts, as loaded on a connection.
struct Scripts;

impl Scripts {
    fn all() -> [&'static str; 6] {
        [
            RESERVE_LUA,
            FINISH_LUA,
            RESTORE_LUA,
            UNLOCK_LUA,
            RENEW_LUA,
            FINISH_RESERVE_LUA,
        ]
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
            // A sentinel URL is resolved by each connect: sentinels that
            // are not up yet are waited for like a broker that is down.
            client: if super::sentinel::is_sentinel(url) {
                super::sentinel::parse(url)?;
                redis::Client::open("redis://127.0.0.1/").map_err(|e| BrokerError::Url {
                    url: redact(url),
                    why: e.to_string(),
                })?
            } else {
                client(url)?
            },
            sentinel: super::sentinel::is_sentinel(url).then(|| url.to_string()),
            what,
            con: None,
            failures: 0,
            lost: false,
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
            if let Some(url) = &self.sentinel {
                // After a failover: the new master.
                match client(url) {
                    Ok(c) => self.client = c,
                    Err(e) => {
                        self.failed();
                        return Err(e);
                    }
                }
            }
            // A signal interrupting the opening (EINTR: SIGSTOP/SIGCONT, a
            // handled signal) is no failure: open again at once.
            let mut tries = 0;
            let opened = loop {
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
                    Err(e) if interrupted(&e) && tries < 16 => tries += 1,
                    other => break other,
                }
            };
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
        self.lost = true;
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
        let res = f(con);
        self.settle(res)
    }

    /// What [`Link::run`] does with a call's outcome: a signal (EINTR) is
    /// not a lost broker (the connection is reopened at once, without
    /// backoff or a warning: the interrupted reply cannot be read back);
    /// a connection-level failure drops the connection with backoff.
    fn settle<T>(&mut self, res: RedisResult<T>) -> Result<T, BrokerError> {
        if let Err(e) = &res {
            if interrupted(e) {
                self.con = None;
                return Err(BrokerError::Interrupted { what: self.what });
            }
        }
        match res {
            Ok(v) => {
                if self.lost {
                    tracing::info!("Redis ({}) is reachable again", self.what);
                }
                self.failures = 0;
                self.lost = false;
                self.retry_at = None;
                Ok(v)
            }
            Err(e) => {
                let noscript = e.code() == Some("NOSCRIPT");
                // A demoted master (Sentinel): ask the sentinels again.
                let demoted = self.sentinel.is_some() && e.code() == Some("READONLY");
                if noscript
                    || demoted
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

    /// Like [`Link::run`] with a longer read timeout, for a blocking call
    /// that may be repeated (a wait that changes nothing). A signal
    /// interrupting it (SIGTERM, SIGSTOP/SIGCONT: Linux ends a socket read
    /// that has a timeout with EINTR, whatever SA_RESTART says) repeats it
    /// on the same connection (the redis client skips the late reply), up
    /// to 16 times in a row.
    pub fn run_blocking<T>(
        &mut self,
        block: Duration,
        mut f: impl FnMut(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, BrokerError> {
        let t = block.saturating_add(self.read_timeout);
        let normal = self.read_timeout;
        let mut tries = 0;
        loop {
            let con = self.connect()?;
            let res = (|| {
                con.set_read_timeout(Some(t))?;
                let r = f(con);
                con.set_read_timeout(Some(normal))?;
                r
            })();
            match res {
                Err(e) if interrupted(&e) && tries < 16 => {
                    tries += 1;
                    let _ = con.set_read_timeout(Some(normal));
                }
                other => return self.settle(other),
            }
        }
    }
}

/// True for a call a signal interrupted (EINTR).
fn interrupted(e: &RedisError) -> bool {
    if !e.is_io_error() {
        return false;
    }
    let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
    match io {
        Some(io) => io.kind() == std::io::ErrorKind::Interrupted,
        None => e.to_string().contains("(os error 4)"),
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
    /// Marked "running here" by the reserve itself (see
    /// [`RedisBroker::reserve`]): the host need not mark it again when it
    /// starts, and unmarks it if it holds it instead.
    pub marked: bool,
}

/// What [`RedisBroker::reserve`] marks "running here" (the death witness of
/// `lua/running.lua`): the first `count` messages reserved.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunMarks<'a> {
    /// How many (0: none).
    pub count: usize,
    /// The death lists' time to live (the results').
    pub ttl_s: u64,
    /// `"<node>, running it since <time>"`.
    pub who: &'a str,
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

    /// The broker's connection, to read its state.
    pub fn link_ref(&self) -> &Link {
        &self.link
    }

    /// Checks the connection (PING).
    pub fn ping(&mut self) -> Result<(), BrokerError> {
        self.link
            .run(|c| redis::cmd("PING").query::<String>(c))
            .map(|_| ())
    }

    /// Reserves up to `max` messages in one atomic step, from the priority
    /// lists of every queue (all queues' priority-0 lists first, then the
    /// 3s, ...), rotating which queue goes first so none starves. Each gets
    /// a fresh delivery tag and a lease of `lease` (see `lua/reserve.lua`).
    /// The first `mark.count` (that go to idle pool slots at once) are
    /// marked "running here" in the same step, with the mark
    /// `"{mark.ttl_s}\n{task id}\n{mark.who}"` (`lua/running.lua`).
    pub fn reserve(
        &mut self,
        max: usize,
        lease: Duration,
        mark: &RunMarks<'_>,
    ) -> Result<Vec<Reserved>, BrokerError> {
        let Some(call) = self.reserve_call(max, lease, mark) else {
            return Ok(Vec::new());
        };
        let reply: Vec<RValue> = self.link.run(|c| {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(sha(RESERVE_LUA)).arg(call.nkeys());
            call.keys(&mut cmd);
            call.argv(&mut cmd);
            cmd.query(c)
        })?;
        call.parse(&reply)
    }

    /// The lists, arguments and fresh tags of one `lua/reserve.lua` call;
    /// None when there is nothing to reserve.
    fn reserve_call(
        &mut self,
        max: usize,
        lease: Duration,
        mark: &RunMarks<'_>,
    ) -> Option<ReserveCall> {
        if max == 0 || self.queues.is_empty() {
            return None;
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
        Some(ReserveCall {
            lists,
            max,
            lease: lease_arg(lease),
            marks: mark.count.min(max),
            head: format!("{}\n", mark.ttl_s),
            tail: format!("\n{}", mark.who),
            spares: (0..max).map(|_| protocol::new_id()).collect(),
        })
    }

    /// Finishes `batch` (as [`finish`]) and, in the same script call and
    /// round trip, reserves up to `max` messages (as
    /// [`RedisBroker::reserve`]) for the pool slots its successes freed
    /// (`lua/finish_reserve.lua`). The finish's outcome is the call's: an
    /// error means nothing is known of either part (a lost reply: the
    /// messages it may have reserved come back once their lease lapses).
    /// The reserve's own refusal (a queue key of another type) comes as
    /// the inner error, the finish done. A batch of more than one script
    /// call's messages (256) is finished alone.
    pub fn finish_reserve(
        &mut self,
        batch: &[Finish],
        ttl_s: u64,
        repeated: bool,
        max: usize,
        lease: Duration,
        mark: &RunMarks<'_>,
    ) -> Result<FinishReserved, BrokerError> {
        if batch.is_empty() || batch.len() > FINISH_CHUNK {
            return Ok((
                finish(&mut self.link, batch, ttl_s, repeated)?,
                Ok(Vec::new()),
            ));
        }
        let Some(call) = self.reserve_call(max, lease, mark) else {
            return Ok((
                finish(&mut self.link, batch, ttl_s, repeated)?,
                Ok(Vec::new()),
            ));
        };
        let fkeys = finish_nkeys(batch);
        let fargs = finish_nargs(batch);
        let reply: RValue = self.link.run(|c| {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(sha(FINISH_RESERVE_LUA))
                .arg(fkeys.saturating_add(call.nkeys()));
            finish_keys(&mut cmd, batch);
            call.keys(&mut cmd);
            cmd.arg(fkeys).arg(fargs);
            finish_argv(&mut cmd, batch, ttl_s, repeated);
            call.argv(&mut cmd);
            cmd.query(c)
        })?;
        let RValue::Array(parts) = reply else {
            return Err(BrokerError::Reply(
                "finish and reserve answered no pair".into(),
            ));
        };
        let (done, got, refused) = match parts.as_slice() {
            [done, got] => (done, got, None),
            [done, got, why] => (done, got, bytes(why)),
            _ => {
                return Err(BrokerError::Reply(
                    "finish and reserve answered no pair".into(),
                ))
            }
        };
        let done: Vec<i64> = redis::from_redis_value_ref(done)
            .map_err(|e| BrokerError::Reply(format!("finish answered {e}")))?;
        let finished = finished_of(&done, batch.len())?;
        let reserved = match (got, refused) {
            (_, Some(why)) => Err(BrokerError::Reply(format!(
                "the reserve was refused: {}",
                String::from_utf8_lossy(&why)
            ))),
            (RValue::Array(els), None) => call.parse(els),
            (other, None) => Err(BrokerError::Reply(format!("reserve answered {other:?}"))),
        };
        Ok((finished, reserved))
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

/// What had become of a message's reservation when it was finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Still this reservation's: acked, follow-ups sent.
    Held,
    /// A sweeper had put it back on its queue (its lease had lapsed: the
    /// host or Redis stalled past it): it may run again; the run that holds
    /// it sends the follow-ups, none were sent here.
    Restored,
    /// Gone without a trace (a FLUSHALL, a DEL of `unacked`): nothing can
    /// run it again, so the follow-ups were sent.
    Vanished,
    /// This call repeated one whose reply was lost, and that one had
    /// finished it: nothing was done twice.
    AlreadyFinished,
    /// AMQP: the channel that delivered it was lost before the ack; the
    /// broker redelivers it, and its redelivery is acked (with these
    /// follow-ups) without running again while this host lives.
    Redelivered,
}

/// What [`finish`] did for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// The result was written (false: a SUCCESS was there already, or
    /// there was none to store).
    pub stored: bool,
    /// What had become of the reservation.
    pub held: Held,
    /// Follow-up messages Redis refused (their list key holds another
    /// type): not sent.
    pub unsent: u32,
}

/// Finishes a batch of messages in one round trip and one script call per
/// 256 messages: store + PUBLISH + follow-ups + ack, each message
/// atomically. `ttl_s`: [`ttl_secs`] of the result expiry (0: forever).
/// `repeated`: this repeats a call whose reply was lost
/// ([`BrokerError::may_have_applied`]).
pub fn finish(
    link: &mut Link,
    batch: &[Finish],
    ttl_s: u64,
    repeated: bool,
) -> Result<Vec<Finished>, BrokerError> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let hash = sha(FINISH_LUA);
    let replies: Vec<Vec<i64>> = link.run(|c| {
        let mut pipe = redis::pipe();
        for chunk in batch.chunks(FINISH_CHUNK) {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(hash).arg(finish_nkeys(chunk));
            finish_keys(&mut cmd, chunk);
            finish_argv(&mut cmd, chunk, ttl_s, repeated);
            pipe.add_command(cmd);
        }
        pipe.query(c)
    })?;
    let flat: Vec<i64> = replies.into_iter().flatten().collect();
    finished_of(&flat, batch.len())
}

/// Messages per `lua/finish.lua` call.
const FINISH_CHUNK: usize = 256;

/// What [`RedisBroker::finish_reserve`] did: the finish's outcome per
/// message, and the messages reserved (or why none could be).
pub type FinishReserved = (Vec<Finished>, Result<Vec<Reserved>, BrokerError>);

/// How many KEYS `lua/finish.lua` takes for `chunk`.
fn finish_nkeys(chunk: &[Finish]) -> usize {
    chunk
        .iter()
        .map(|f| f.send.len().saturating_add(1))
        .fold(5usize, usize::saturating_add)
}

/// How many ARGV `lua/finish.lua` takes for `chunk`.
fn finish_nargs(chunk: &[Finish]) -> usize {
    chunk
        .iter()
        .map(|f| f.send.len().saturating_add(3))
        .fold(2usize, usize::saturating_add)
}

/// `lua/finish.lua`'s KEYS for `chunk` (see the script).
fn finish_keys(cmd: &mut redis::Cmd, chunk: &[Finish]) {
    cmd.arg(UNACKED)
        .arg(UNACKED_INDEX)
        .arg(LEASES)
        .arg(RESTORED)
        .arg(RUNNING);
    for f in chunk {
        match &f.result {
            Some((k, _)) => cmd.arg(k),
            None => cmd.arg(protocol::RESULT_KEY_PREFIX),
        };
        for (l, _) in &f.send {
            cmd.arg(l);
        }
    }
}

/// `lua/finish.lua`'s ARGV for `chunk`.
fn finish_argv(cmd: &mut redis::Cmd, chunk: &[Finish], ttl_s: u64, repeated: bool) {
    cmd.arg(ttl_s).arg(if repeated { "1" } else { "0" });
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

/// `lua/finish.lua`'s flat {stored, held, unsent} triples, read.
fn finished_of(flat: &[i64], n: usize) -> Result<Vec<Finished>, BrokerError> {
    if flat.len() != n.saturating_mul(3) {
        return Err(BrokerError::Reply(format!(
            "finish answered {} values for {n} messages",
            flat.len(),
        )));
    }
    flat.chunks(3)
        .map(|r| {
            let held = match r[1] {
                1 => Held::Held,
                2 => Held::Restored,
                3 => Held::Vanished,
                4 => Held::AlreadyFinished,
                x => return Err(BrokerError::Reply(format!("finish answered held={x}"))),
            };
            Ok(Finished {
                stored: r[0] == 1,
                held,
                unsent: u32::try_from(r[2]).unwrap_or(0),
            })
        })
        .collect()
}

/// One `lua/reserve.lua` call's lists and arguments
/// ([`RedisBroker::reserve`]).
struct ReserveCall {
    /// (list key, its queue) in pop order.
    lists: Vec<(String, String)>,
    max: usize,
    lease: String,
    marks: usize,
    head: String,
    tail: String,
    /// A fresh delivery tag per message.
    spares: Vec<String>,
}

impl ReserveCall {
    fn nkeys(&self) -> usize {
        self.lists.len().saturating_add(4)
    }

    fn keys(&self, cmd: &mut redis::Cmd) {
        cmd.arg(UNACKED).arg(UNACKED_INDEX).arg(LEASES).arg(RUNNING);
        for (l, _) in &self.lists {
            cmd.arg(l);
        }
    }

    fn argv(&self, cmd: &mut redis::Cmd) {
        cmd.arg(self.max)
            .arg(&self.lease)
            .arg(self.marks)
            .arg(&self.head)
            .arg(&self.tail);
        for (_, q) in &self.lists {
            cmd.arg(q);
        }
        for s in &self.spares {
            cmd.arg(s);
        }
    }

    /// The script's flat (tag, message, list index, marked) quadruples.
    fn parse(&self, reply: &[RValue]) -> Result<Vec<Reserved>, BrokerError> {
        let mut out = Vec::with_capacity(reply.len() / 4);
        for t in reply.chunks(4) {
            let [tag, raw, idx, marked] = t else {
                return Err(BrokerError::Reply(
                    "reserve returned a partial quadruple".into(),
                ));
            };
            let tag = bytes(tag).map(|b| String::from_utf8_lossy(&b).into_owned());
            let raw = bytes(raw);
            let idx = match idx {
                RValue::Int(i) => usize::try_from(*i).unwrap_or(0),
                _ => 0,
            };
            let (Some(tag), Some(raw)) = (tag, raw) else {
                return Err(BrokerError::Reply("reserve returned a non-string".into()));
            };
            let queue = self
                .lists
                .get(idx.wrapping_sub(1))
                .map(|(_, q)| q.clone())
                .unwrap_or_default();
            out.push(Reserved {
                tag,
                raw,
                queue,
                marked: matches!(marked, RValue::Int(1)),
            });
        }
        Ok(out)
    }
}

/// Sets `redelivered` in the headers and delivery_info, as kombu's restore
/// does. Returns None when `payload` is not an object. An envelope nested
/// deeper than serde_json builds trees (a 300-deep `stamps`, which the
/// worker runs: C4) goes back as it is, unmarked, rather than never.
fn mark_redelivered(payload: &str) -> Option<String> {
    let Ok(mut payload) = serde_json::from_str::<Value>(payload) else {
        let object = serde_json::from_str::<
            std::collections::HashMap<String, Box<serde_json::value::RawValue>>,
        >(payload);
        return object.is_ok().then(|| payload.to_string());
    };
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

/// The priority of an envelope (0-9; kombu's `_get_message_priority`:
/// `int()` of any value, clamped; read as the worker reads it, at any depth).
fn priority_of(payload: &str) -> u8 {
    protocol::Envelope::read(payload.as_bytes())
        .ok()
        .and_then(|r| r.envelope.properties.priority)
        .map_or(0, |p| p.clamp(0, 9) as u8)
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
    /// The envelope's JSON text.
    payload: String,
    exchange: String,
    routing_key: String,
}

fn read_entry(c: &mut Connection, tag: &str) -> RedisResult<Option<Entry>> {
    let raw: Option<Vec<u8>> = redis::cmd("HGET").arg(UNACKED).arg(tag).query(c)?;
    let Some(raw) = raw else { return Ok(None) };
    // Raw elements: an envelope of any depth is read back (C4).
    let Ok(parts) = serde_json::from_slice::<Vec<Box<serde_json::value::RawValue>>>(&raw) else {
        return Ok(None);
    };
    let [payload, exchange, routing_key, ..] = &parts[..] else {
        return Ok(None);
    };
    let text = |v: &serde_json::value::RawValue| -> String {
        serde_json::from_str(v.get()).unwrap_or_default()
    };
    let routing_key = text(routing_key);
    let exchange = text(exchange);
    let payload = payload.get().to_string();
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
/// most this. `sweep`: a sweeper's restore, which counts a death of a task
/// that was running (`lua/restore.lua`), not its own host's requeue.
/// Returns true if it was restored.
fn restore_one(
    c: &mut Connection,
    tag: &str,
    only_queues: Option<&[String]>,
    stale_before: Option<f64>,
    sweep: bool,
) -> RedisResult<bool> {
    let sweep = if sweep { "1" } else { "0" };
    let ceil = stale_before.map(|s| format!("{s}")).unwrap_or_default();
    let Some(e) = read_entry(c, tag)? else {
        // No entry (or not one kombu could restore either): forget a
        // lapsed lease of ours whose entry someone else took, leaving the
        // tombstone a late finish reads.
        let _: i64 = restore_cmd(UNACKED, tag, &ceil, b"", "", sweep).query(c)?;
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
    let Some(msg) = mark_redelivered(&e.payload) else {
        return Ok(false);
    };
    let mut restored = false;
    // One message bound to several queues (fanout) is restored to each,
    // as kombu does; the entry goes away with the first.
    for (i, q) in queues.iter().enumerate() {
        let list = protocol::queue_key(q, pri);
        if i == 0 {
            let r: i64 = restore_cmd(&list, tag, &ceil, &e.raw, &msg, sweep).query(c)?;
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

/// `lua/restore.lua` for `tag`: push `msg` (the entry `raw` read,
/// marked redelivered) onto `list` if its score is still at most `ceil`
/// (empty: whatever it is); with an empty `raw`, only forget a lapsed
/// lease. `sweep` ("1"/"0"): a sweeper's restore, which counts a death.
fn restore_cmd(
    list: &str,
    tag: &str,
    ceil: &str,
    raw: &[u8],
    msg: &str,
    sweep: &str,
) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(sha(RESTORE_LUA))
        .arg(6)
        .arg(UNACKED)
        .arg(UNACKED_INDEX)
        .arg(LEASES)
        .arg(RESTORED)
        .arg(list)
        .arg(RUNNING)
        .arg(tag)
        .arg(ceil)
        .arg(raw)
        .arg(msg)
        .arg("R")
        .arg(sweep)
        .arg(DEATHS_PREFIX);
    cmd
}

/// Returns these messages (ours, in flight) to their queues at once: a
/// cold shutdown's requeue, or an eta message still waiting at a warm one.
pub fn requeue(link: &mut Link, tags: &[String]) -> Result<usize, BrokerError> {
    link.run(|c| {
        let mut n = 0;
        for t in tags {
            if restore_one(c, t, None, None, false)? {
                n += 1;
            }
        }
        Ok(n)
    })
}

/// Acks these messages without a result (ZREM + HDEL, and the lease).
pub fn ack(link: &mut Link, tags: &[String]) -> Result<(), BrokerError> {
    if tags.is_empty() {
        return Ok(());
    }
    link.run(|c| {
        let mut pipe = redis::pipe();
        for t in tags {
            pipe.cmd("ZREM").arg(UNACKED_INDEX).arg(t).ignore();
            pipe.cmd("HDEL").arg(UNACKED).arg(t).ignore();
            pipe.cmd("ZREM").arg(LEASES).arg(t).ignore();
        }
        pipe.query::<()>(c)
    })
}

/// Renews the leases of in-flight messages to `now + lease` on Redis's
/// clock (`lua/renew.lua`: `ZADD XX` on `unacked_index` and [`LEASES`], so
/// a tag acked or restored meanwhile is not re-added).
pub fn heartbeat(link: &mut Link, tags: &[String], lease: Duration) -> Result<(), BrokerError> {
    if tags.is_empty() {
        return Ok(());
    }
    let lease = lease_arg(lease);
    link.run(|c| {
        let mut pipe = redis::pipe();
        for chunk in tags.chunks(512) {
            pipe.cmd("EVALSHA")
                .arg(sha(RENEW_LUA))
                .arg(2)
                .arg(UNACKED_INDEX)
                .arg(LEASES)
                .arg(&lease)
                .arg(chunk)
                .ignore();
        }
        pipe.query::<()>(c)
    })
}

/// What one [`sweep`] restored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Billiard-host reservations whose lease had lapsed.
    pub lapsed: usize,
    /// Reservations of consumers that never renew (Python workers) older
    /// than the foreign timeout.
    pub foreign: usize,
}

/// One restore sweep (kombu's `restore_visible`), under kombu's
/// `unacked_mutex`, of messages bound for `queues`, marked redelivered as
/// kombu marks them:
/// - a billiard-host reservation (its tag in [`LEASES`]) goes back once its
///   lease has lapsed (`score <= now`): its host stopped renewing it;
/// - any other entry (a Python worker's: scored with its reservation time,
///   never renewed) goes back once older than `foreign` (kombu's own rule
///   with kombu's timeout, 1 h by default), never sooner.
///
/// At most `limit` of each kind per sweep; nothing when another sweeper
/// holds the mutex.
pub fn sweep(
    link: &mut Link,
    queues: &[String],
    foreign: Duration,
    limit: usize,
) -> Result<Swept, BrokerError> {
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
            return Ok(Swept::default());
        }
        let res = (|| {
            // Redis's clock, as the leases: our hosts' clocks never matter.
            // (A Python worker's score is its own clock, as in kombu.)
            let now = redis_now(c)?;
            let mut swept = Swept::default();
            let lapsed: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(LEASES)
                .arg("-inf")
                .arg(now)
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query(c)?;
            for tag in &lapsed {
                if restore_one(c, tag, Some(queues), Some(now), true)? {
                    tracing::warn!(
                        "restored message {tag} to its queue: its lease ran out (the \
                         billiard-host that reserved it stopped renewing it: it died, was \
                         stopped, or lost Redis for longer than its visibility timeout)"
                    );
                    swept.lapsed += 1;
                }
            }
            let ceil = now - foreign.as_secs_f64();
            let stale: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(UNACKED_INDEX)
                .arg("-inf")
                .arg(ceil)
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query(c)?;
            for tag in &stale {
                if restore_one(c, tag, Some(queues), Some(ceil), true)? {
                    tracing::warn!(
                        "restored message {tag} to its queue: a consumer that does not \
                         renew its messages (a Python worker) reserved it over {} ago \
                         (--foreign-visibility-timeout)",
                        humantime::format_duration(foreign)
                    );
                    swept.foreign += 1;
                }
            }
            Ok(swept)
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
    fn c8_result_ttls_round_up_and_stop_at_ten_years() {
        assert_eq!(ttl_secs(Duration::from_millis(500)), Ok(1));
        assert_eq!(ttl_secs(Duration::from_secs(86_400)), Ok(86_400));
        let max = crate::bounds::MAX_DURATION;
        assert_eq!(ttl_secs(max), Ok(max.as_secs()));
        let e = ttl_secs(max + Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("--result-expires"), "{e}");
        assert!(ttl_secs(Duration::MAX).is_err());
    }

    #[test]
    fn c8_errors_that_repeat_are_not_transient() {
        let oom = BrokerError::Redis {
            what: "broker",
            source: RedisError::from((
                redis::ErrorKind::Extension,
                "server",
                "Pipeline failure: [(Index 0, error: \"OOM\": command not allowed when used \
                 memory > 'maxmemory'. script: 45cf, on @user_script:60.)]"
                    .to_string(),
            )),
        };
        assert!(oom.is_transient() && !oom.may_have_applied());
        let io = BrokerError::Redis {
            what: "broker",
            source: RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        };
        assert!(io.is_transient() && io.may_have_applied());
        assert!(BrokerError::Interrupted { what: "broker" }.is_transient());
        assert!(!BrokerError::Reply("x".into()).is_transient());
        assert!(!BrokerError::Config("x".into()).is_transient());
        let e = BrokerError::Redis {
            what: "broker",
            source: RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
                "invalid expire time in 'setex' command",
            )),
        };
        assert!(!e.is_transient() && !e.may_have_applied());
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
        let v = r#"{"body":"","headers":{"id":"x"},"properties":{"delivery_info":{"exchange":"","routing_key":"celery"},"priority":6}}"#;
        assert_eq!(priority_of(v), 6);
        let m: Value = serde_json::from_str(&mark_redelivered(v).unwrap()).unwrap();
        assert_eq!(m["headers"]["redelivered"], true);
        assert_eq!(m["properties"]["delivery_info"]["redelivered"], true);
        // kombu's int() of odd priorities; a 300-deep envelope goes back as
        // it is (C4: it runs, so it must be restorable).
        assert_eq!(
            priority_of(&v.replace("\"priority\":6", "\"priority\":\"7\"")),
            7
        );
        assert_eq!(
            priority_of(&v.replace("\"priority\":6", "\"priority\":6.5")),
            6
        );
        let deep = v.replace(
            "\"id\":\"x\"",
            &format!(
                "\"id\":\"x\",\"stamps\":{}{}",
                "[".repeat(300),
                "]".repeat(300)
            ),
        );
        assert_eq!(priority_of(&deep), 6);
        assert_eq!(mark_redelivered(&deep).as_deref(), Some(deep.as_str()));
        assert_eq!(mark_redelivered("[1]"), None);
    }
}
