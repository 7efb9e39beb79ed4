//! Chords on the Redis result backend, counted as Celery counts them
//! (issue 23 items 1 and 6; `docs/celery.md`, "Canvas").
//!
//! A header part is a task message whose body carries `embed.chord` (the
//! body's signature) and whose headers carry `group` (and
//! `group_index`). After the part's own result is stored, the finisher
//! hands it here ([`Chords::part_return`]): Celery 5.7's
//! `CHORD_PART_RETURN_LUA` (dedup of re-runs in `.d`, one claimer through
//! `.c`, the `'done'` marker) on the **result backend**, or, for a fleet
//! of 5.5/5.6 Python workers (`--chord-protocol 5.6`), the older MULTI
//! pipeline as one script. The claimer joins `.j` in `group_index` order
//! and publishes the body with the results prepended, or, when a part
//! failed or was revoked, stores FAILURE `celery.exceptions.ChordError`
//! on the body's id, sends its errbacks and fails the rest of its chain
//! (`chord_error_from_stack`, `_fail_chain`), as Celery 5.7's
//! `RedisBackend.on_chord_part_return` does.
//!
//! [`apply`] sends a signature that is not a plain task (a chord, group
//! or chain as a chain step, a callback or a chord body) the way its
//! `apply_async` would: a chord's size goes to `.s` on the result backend
//! before its header is published ([`Applied::sizes`]).

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Map, Value};

use super::protocol::{self, Exception, ResultMeta, Signature, State};

mod canvas;
mod python;

use super::transport::redis::{self as broker, BrokerError, Finish, Link};
use super::transport::Transport;
pub use crate::pyrepr::py_float;
pub use canvas::{apply, is_canvas, Applied};
use python::py_str_repr_exc;
pub use python::{encode_part, exc_repr, py_json};

/// Celery's `celery-taskset-meta-` prefix: a group's (and a chord's) keys.
pub const GROUP_KEY_PREFIX: &str = "celery-taskset-meta-";

/// Deeper canvases than this (a chord in a chain in a chord ...) are
/// refused by name rather than walked: a hostile message cannot make the
/// finisher recurse without end.
pub(super) const MAX_DEPTH: u32 = 32;

/// How long the claimer holds `.c` while it joins (Celery 5.7:
/// `max(5, int(2 * result_chord_join_timeout))`, the timeout's default
/// being 3 s).
const CLAIM_EXPIRES_S: u64 = 6;

/// The claim while the body is published: Celery 5.7's
/// `_chord_publish_claim_expires` with its defaults (publish retry on, 3
/// retries, 0.2 s steps, a 4 s connection timeout): `ceil(4 * 4 + 0.4 +
/// 4)`.
const PUBLISH_CLAIM_EXPIRES_S: u64 = 21;

/// How long the `'done'` marker stops late duplicates
/// (`max(2 * claim, 300)`).
const DONE_EXPIRES_S: u64 = 300;

/// Which Python workers share the result backend: how a part is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChordProtocol {
    /// Celery 5.7: the Lua scripts with `.d` and `.c`.
    #[default]
    V57,
    /// Celery 5.5 and 5.6: the MULTI pipeline, no `.d`, no `.c`.
    V56,
}

impl std::str::FromStr for ChordProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "5.7" | "5.7.0" => Ok(ChordProtocol::V57),
            "5.5" | "5.6" => Ok(ChordProtocol::V56),
            other => Err(format!(
                "`{other}` is not a chord protocol: 5.7 (Celery 5.7's Lua scripts) or 5.6 \
                 (Celery 5.5/5.6's pipeline)"
            )),
        }
    }
}

impl std::fmt::Display for ChordProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChordProtocol::V57 => "5.7",
            ChordProtocol::V56 => "5.6",
        })
    }
}

/// How this worker takes part in chords (the fleet's settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChordOptions {
    /// `--chord-protocol`.
    pub protocol: ChordProtocol,
    /// `--chord-ordered`: `.j` is a ZSET (Celery's default,
    /// `result_chord_ordered=True`) or a LIST.
    pub ordered: bool,
    /// `--result-chord-expires` (Celery 5.7's `result_chord_expires`):
    /// the chord keys' time to live; None: the results' (`result_expires`).
    pub expires: Option<Duration>,
}

impl Default for ChordOptions {
    fn default() -> Self {
        ChordOptions {
            protocol: ChordProtocol::V57,
            ordered: true,
            expires: None,
        }
    }
}

/// One finished header part.
#[derive(Debug, Clone)]
pub struct Part {
    /// The chord's group id (the part's `group` header).
    pub group: String,
    /// The part's task id.
    pub task_id: String,
    /// The part's `group_index` (None: `+inf`, as Celery scores it).
    pub group_index: Option<i64>,
    /// SUCCESS, FAILURE or REVOKED (nothing else counts).
    pub state: State,
    /// The value stored: the return value, or the exception dict.
    pub result: Value,
    /// The body signature (`embed.chord`).
    pub body: Value,
    /// The part's `root_id`: the body's root unless its options name one.
    pub root_id: String,
}

/// The keys of chord `gid`: `celery-taskset-meta-<gid>` + suffix.
fn key(gid: &str, suffix: &str) -> String {
    format!("{GROUP_KEY_PREFIX}{gid}{suffix}")
}

fn script(cell: &'static OnceLock<redis::Script>, src: &'static str) -> &'static redis::Script {
    cell.get_or_init(|| redis::Script::new(src))
}

static PART_RETURN: OnceLock<redis::Script> = OnceLock::new();
static PART_RETURN_56: OnceLock<redis::Script> = OnceLock::new();
static CLAIM_EXTEND: OnceLock<redis::Script> = OnceLock::new();
static CLEANUP: OnceLock<redis::Script> = OnceLock::new();

fn part_return_lua() -> &'static redis::Script {
    script(&PART_RETURN, include_str!("lua/chord_part_return.lua"))
}
fn part_return_56_lua() -> &'static redis::Script {
    script(
        &PART_RETURN_56,
        include_str!("lua/chord_part_return_56.lua"),
    )
}
fn claim_extend_lua() -> &'static redis::Script {
    script(&CLAIM_EXTEND, include_str!("lua/chord_claim_extend.lua"))
}
fn cleanup_lua() -> &'static redis::Script {
    script(&CLEANUP, include_str!("lua/chord_cleanup.lua"))
}

/// What a part return learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// The chord was already done (5.7's `'done'` marker): nothing counted.
    Done,
    /// Counted; the chord waits for more parts (or another host claimed it).
    Waiting,
    /// Counted, and this host fired (or failed) the body.
    Fired,
}

/// The links a part return uses: the broker (body, errbacks) and the
/// result backend (`.j`, results), which may be the same Redis.
pub struct Io<'a> {
    /// The broker.
    pub broker: &'a mut dyn Transport,
    /// The result backend's link (the broker's when it is the backend).
    pub results: &'a mut Link,
    /// The results' time to live (SETEX seconds, 0: none).
    pub ttl_s: u64,
}

impl Io<'_> {
    fn results(&mut self) -> &mut Link {
        self.results
    }
}

/// This worker's chord bookkeeping (one per finisher).
pub struct Chords {
    opts: ChordOptions,
    /// Configuration errors already logged (each once per process).
    warned: Vec<&'static str>,
}

impl Chords {
    /// Chords counted with `opts`.
    pub fn new(opts: ChordOptions) -> Chords {
        Chords {
            opts,
            warned: Vec::new(),
        }
    }

    fn warn_once(&mut self, what: &'static str, line: impl FnOnce() -> String) {
        if !self.warned.contains(&what) {
            self.warned.push(what);
            tracing::error!("{}", line());
        }
    }

    /// `result_chord_expires` (else `result_expires`) in seconds, and the
    /// group key's `max(chord, result)` (0 when either is 0: no expiry).
    fn expiries(&self, ttl_s: u64) -> (u64, u64) {
        let chord = match self.opts.expires {
            Some(d) => broker::ttl_secs(d).unwrap_or(ttl_s),
            None => ttl_s,
        };
        let group = if chord == 0 || ttl_s == 0 {
            0
        } else {
            chord.max(ttl_s)
        };
        (chord, group)
    }

    /// Writes the size of each chord a follow-up is about to start
    /// (`set_chord_size`: `DEL .c`, then `SET .s size EX chord_expires`),
    /// before its header messages are sent.
    pub fn set_sizes(
        &mut self,
        io: &mut Io<'_>,
        sizes: &[(String, u64)],
    ) -> Result<(), BrokerError> {
        if sizes.is_empty() {
            return Ok(());
        }
        let (chord_ttl, _) = self.expiries(io.ttl_s);
        let v56 = self.opts.protocol == ChordProtocol::V56;
        let ttl = if v56 { io.ttl_s } else { chord_ttl };
        io.results().run(|c| {
            let mut pipe = redis::pipe();
            for (gid, size) in sizes {
                if !v56 {
                    pipe.cmd("DEL").arg(key(gid, ".c")).ignore();
                }
                let set = pipe.cmd("SET").arg(key(gid, ".s")).arg(*size);
                if ttl > 0 {
                    set.arg("EX").arg(ttl);
                }
                set.ignore();
            }
            pipe.query::<()>(c)
        })
    }

    /// Counts `part` (its result is stored already) and, when it is the
    /// last one and this host wins the claim, fires the body. Errors that
    /// may pass are returned before anything was claimed (a repeat is
    /// harmless: 5.7 dedups the part); once claimed, each step retries
    /// on its own while `give_up` says not to stop.
    pub fn part_return(
        &mut self,
        io: &mut Io<'_>,
        part: &Part,
        give_up: &dyn Fn() -> bool,
    ) -> Result<Counted, BrokerError> {
        if !matches!(part.state, State::Success | State::Failure | State::Revoked) {
            return Ok(Counted::Waiting);
        }
        let gid = part.group.as_str();
        let encoded = encode_part(&part.task_id, part.state, &part.result);
        let score = match part.group_index {
            Some(i) => i.to_string(),
            None => "+inf".into(),
        };
        let ordered = if self.opts.ordered { "1" } else { "0" };
        let (chord_ttl, group_ttl) = self.expiries(io.ttl_s);
        let token = uuid::Uuid::new_v4().simple().to_string();
        let v57 = self.opts.protocol == ChordProtocol::V57;
        let ttl_s = io.ttl_s;
        let reply: Result<Vec<redis::Value>, BrokerError> = io.results().run(|c| {
            if v57 {
                part_return_lua()
                    .key(key(gid, ".j"))
                    .key(key(gid, ".t"))
                    .key(key(gid, ".s"))
                    .key(key(gid, ".d"))
                    .key(key(gid, ""))
                    .key(key(gid, ".c"))
                    .arg(&part.task_id)
                    .arg(&encoded)
                    .arg(ordered)
                    .arg(&score)
                    .arg(chord_ttl)
                    .arg(group_ttl)
                    .arg(CLAIM_EXPIRES_S)
                    .arg(&token)
                    .invoke(c)
            } else {
                part_return_56_lua()
                    .key(key(gid, ".j"))
                    .key(key(gid, ".t"))
                    .key(key(gid, ".s"))
                    .arg(&encoded)
                    .arg(ordered)
                    .arg(&score)
                    .arg(ttl_s)
                    .invoke(c)
            }
        });
        let reply = match reply {
            Ok(r) => r,
            Err(e) if is_wrongtype(&e) => {
                self.wrong_type(io, gid);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let int = |i: usize| reply.get(i).and_then(int_of);
        let readycount = int(0).unwrap_or(0);
        if v57 && readycount == -1 {
            return Ok(Counted::Done);
        }
        let totaldiff = int(1).unwrap_or(0);
        let Some(size) = int(2) else {
            // No `.s`: the chord was never sized (a producer older than
            // 5.x, or `.s` expired: Celery's docs warn a chord longer
            // than result_expires loses its bookkeeping), or a failed
            // chord dropped it. Nothing to fire, as in Python.
            return Ok(Counted::Waiting);
        };
        let claimed = !v57 || int(3) == Some(1);
        let complete = readycount == size.saturating_add(totaldiff);
        if complete {
            // Once per chord (one more round trip), when its count is
            // complete: every entry is in .j by then.
            self.check_fleet(io, gid, readycount);
        }
        if !complete {
            return Ok(Counted::Waiting);
        }
        if !claimed {
            return Ok(self.await_claim(io, part, give_up));
        }
        self.fire(io, part, &token, give_up);
        Ok(Counted::Fired)
    }

    /// The count is complete but another worker holds the claim: normally
    /// it sends the body within milliseconds (`.c` becomes `'done'`). If
    /// it died first (a host killed between its claim and the cleanup),
    /// Celery 5.7 waits for a copy of a part that runs after the claim
    /// lapsed; this part *is* such a copy when it is a re-run, so it waits
    /// (at most the claim's 21 s) and claims once the claim lapses, so the
    /// chord does not hang on a dead claimer. Only the V57 scripts claim.
    fn await_claim(&mut self, io: &mut Io<'_>, part: &Part, give_up: &dyn Fn() -> bool) -> Counted {
        let gid = part.group.as_str();
        let deadline = crate::bounds::saturating_deadline(
            std::time::Instant::now(),
            Duration::from_secs(PUBLISH_CLAIM_EXPIRES_S.saturating_add(2)),
        );
        let mut wait = Duration::from_millis(10);
        while std::time::Instant::now() < deadline && !give_up() {
            let state: Result<(Option<String>, i64), BrokerError> = io.results().run(|c| {
                redis::pipe()
                    .cmd("GET")
                    .arg(key(gid, ".c"))
                    .cmd("EXISTS")
                    .arg(key(gid, ".s"))
                    .query(c)
            });
            match state {
                // Done, or failed (its .s dropped): nothing left to do.
                Ok((Some(c), _)) if c == "done" => return Counted::Waiting,
                Ok((_, 0)) => return Counted::Waiting,
                // The claim lapsed with the chord unsent: count again (a
                // no-op for the count: .d has this part) and claim.
                Ok((None, _)) => {
                    tracing::warn!(
                        "chord {gid}: the worker that claimed its body let the claim lapse \
                         without sending it (it died?); claiming it again"
                    );
                    return retrying(give_up, || self.part_return(io, part, give_up))
                        .unwrap_or(Counted::Waiting);
                }
                Ok(_) => {}
                Err(e) if !e.is_transient() => return Counted::Waiting,
                Err(_) => {}
            }
            std::thread::sleep(wait);
            wait = wait.saturating_mul(2).min(Duration::from_millis(500));
        }
        Counted::Waiting
    }

    /// [`Chords::part_return`], repeated while Redis may pass; a part
    /// Redis refuses for good (a key of the wrong type) is logged, never
    /// counted wrong.
    pub fn count(&mut self, io: &mut Io<'_>, part: &Part, give_up: &dyn Fn() -> bool) {
        if let Err(e) = retrying(give_up, || self.part_return(io, part, give_up)) {
            tracing::error!(
                "chord {}: the part {} could not be counted ({e}); the chord waits for it",
                part.group,
                part.task_id
            );
        }
    }

    /// A failed task's later chain steps (its `chain`, next step last):
    /// stored FAILURE with its exception, a chord header part among them
    /// returned as failed (Celery's `mark_as_failure` → `_fail_chain`).
    pub fn fail_chain_of(
        &mut self,
        io: &mut Io<'_>,
        chain: &[Signature],
        exc: &Value,
        root: &str,
        give_up: &dyn Fn() -> bool,
    ) {
        let exc = stored_exception(exc);
        let mut stores = Vec::new();
        self.fail_chain(io, chain.to_vec(), &exc, root, give_up, &mut stores, 0);
        self.store_all(io, &stores, give_up);
    }

    fn store_all(
        &mut self,
        io: &mut Io<'_>,
        stores: &[(String, ResultMeta)],
        give_up: &dyn Fn() -> bool,
    ) {
        if stores.is_empty() {
            return;
        }
        let ttl = io.ttl_s;
        let fin: Vec<Finish> = stores
            .iter()
            .map(|(id, m)| Finish {
                tag: String::new(),
                result: Some((protocol::result_key(id), m.to_json())),
                send: Vec::new(),
            })
            .collect();
        if let Err(e) = retrying(give_up, || broker::finish(io.results(), &fin, ttl, false)) {
            tracing::error!(
                "cannot store the failure of {} chained task(s) ({e})",
                stores.len()
            );
        }
    }

    /// A `.j` (or `.s`/`.t`/`.d`/`.c`) of the wrong type: a fleet whose
    /// `result_chord_ordered` differs from `--chord-ordered`, logged once
    /// with the flag to use; the part is not counted (never miscounted).
    fn wrong_type(&mut self, io: &mut Io<'_>, gid: &str) {
        let jt: String = io
            .results()
            .run(|c| redis::cmd("TYPE").arg(key(gid, ".j")).query(c))
            .unwrap_or_default();
        let ordered = self.opts.ordered;
        let proto = self.opts.protocol;
        let what = match (jt.as_str(), ordered) {
            ("list", true) => "chord-ordered-list",
            ("zset", false) => "chord-ordered-zset",
            _ => "chord-wrongtype",
        };
        self.warn_once(what, || match what {
            "chord-ordered-list" => format!(
                "chord {gid}: {GROUP_KEY_PREFIX}{gid}.j is a LIST: the fleet's Python workers run \
                 with result_backend_transport_options={{'result_chord_ordered': False}}; start \
                 this worker with --chord-ordered false (its chord parts are not counted until then)"
            ),
            "chord-ordered-zset" => format!(
                "chord {gid}: {GROUP_KEY_PREFIX}{gid}.j is a sorted set: the fleet's Python \
                 workers count chords ordered (Celery's default); drop --chord-ordered false \
                 (its chord parts are not counted until then)"
            ),
            _ => format!(
                "chord {gid}: a key of {GROUP_KEY_PREFIX}{gid}.* holds another type than Celery \
                 {} writes (.j is {jt}); check --chord-protocol and --chord-ordered against the \
                 fleet's Python workers (this chord's parts are not counted)",
                proto
            ),
        });
    }

    /// A 5.7 part return on a chord whose `.j` holds entries nobody
    /// recorded in `.d`: a pre-5.7 Python worker counts parts of the same
    /// chords (the older pipeline), logged once with the flag to use.
    fn check_fleet(&mut self, io: &mut Io<'_>, gid: &str, readycount: i64) {
        let dedup: Result<i64, BrokerError> = io
            .results()
            .run(|c| redis::cmd("SCARD").arg(key(gid, ".d")).query(c));
        if self.opts.protocol == ChordProtocol::V56 {
            // With 5.6 this host writes no .d: one there is a 5.7
            // worker's, which counts the same chord with the scripts.
            if dedup.is_ok_and(|n| n > 0) {
                self.warn_once("chord-fleet-57", || {
                    format!(
                        "chord {gid}: Celery 5.7 workers count parts of the same chords (its \
                         dedup set {GROUP_KEY_PREFIX}{gid}.d exists): start every billiard-host \
                         worker with --chord-protocol 5.7 (the default) once the fleet runs 5.7"
                    )
                });
            }
            return;
        }
        if let Ok(n) = dedup {
            if n < readycount {
                self.warn_once("chord-fleet-56", || {
                    format!(
                        "chord {gid}: {} of its {readycount} counted parts were recorded by a \
                         worker without Celery 5.7's dedup set (.d): Python workers of Celery \
                         5.5/5.6 share this result backend; start every billiard-host worker \
                         with --chord-protocol 5.6 until they run 5.7 (a mixed fleet may count \
                         a re-run part twice)",
                        readycount.saturating_sub(n)
                    )
                });
            }
        }
    }

    /// The claimer's part: join, then publish the body or fail it.
    fn fire(&mut self, io: &mut Io<'_>, part: &Part, token: &str, give_up: &dyn Fn() -> bool) {
        let gid = part.group.as_str();
        let v57 = self.opts.protocol == ChordProtocol::V57;
        let body: Signature = match serde_json::from_value(part.body.clone()) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(
                    "chord {gid}: its body is not a signature ({e}); the chord cannot complete"
                );
                return;
            }
        };
        let joined = retrying(give_up, || self.join(io, gid));
        let results = match joined {
            Ok(Ok(r)) => r,
            Ok(Err(failure)) => {
                tracing::error!("Chord {gid:?} raised: ChordError({:?})", failure.message);
                self.chord_error(io, &body, &failure, &part.root_id, give_up, 0);
                let _ = retrying(give_up, || {
                    io.results()
                        .run(|c| redis::cmd("DEL").arg(key(gid, ".s")).query::<()>(c))
                });
                if v57 {
                    self.cleanup(io, gid, token, give_up);
                }
                return;
            }
            Err(e) => {
                tracing::error!(
                    "chord {gid}: cannot read its header results ({e}); the body is not sent \
                     (a re-run header part claims it again once the claim lapses)"
                );
                return;
            }
        };
        if v57 {
            let extended = retrying(give_up, || {
                io.results().run(|c| {
                    claim_extend_lua()
                        .key(key(gid, ".c"))
                        .key(key(gid, ".s"))
                        .arg(token)
                        .arg(PUBLISH_CLAIM_EXPIRES_S)
                        .invoke::<i64>(c)
                })
            });
            if !matches!(extended, Ok(1)) {
                tracing::warn!(
                    "Chord callback for {gid:?} not published: dispatch claim is no longer owned \
                     by this worker"
                );
                return;
            }
        }
        let mut out = Applied::default();
        let root = opt_str(&body.options, "root_id").unwrap_or_else(|| part.root_id.clone());
        let sent = apply(
            &body,
            Some(Value::Array(results)),
            &root,
            &part.task_id,
            0,
            &mut out,
        )
        .and_then(|()| {
            retrying(give_up, || self.set_sizes(io, &out.sizes))
                .and_then(|()| retrying(give_up, || io.broker.send(&out.msgs)))
                .map_err(|e| e.to_string())
        });
        if let Err(e) = sent {
            tracing::error!("Chord callback for {gid:?} raised: {e}");
            let failure = Failure {
                message: format!("Callback error: {}", py_str_repr_exc("Exception", &e)),
                cause: None,
            };
            self.chord_error(io, &body, &failure, &part.root_id, give_up, 0);
        }
        if v57 {
            self.cleanup(io, gid, token, give_up);
        } else {
            let _ = retrying(give_up, || {
                io.results().run(|c| {
                    redis::cmd("DEL")
                        .arg(key(gid, ".j"))
                        .arg(key(gid, ".t"))
                        .arg(key(gid, ".s"))
                        .query::<()>(c)
                })
            });
        }
    }

    fn cleanup(&mut self, io: &mut Io<'_>, gid: &str, token: &str, give_up: &dyn Fn() -> bool) {
        let cleaned = retrying(give_up, || {
            io.results().run(|c| {
                cleanup_lua()
                    .key(key(gid, ".c"))
                    .key(key(gid, ".j"))
                    .key(key(gid, ".t"))
                    .key(key(gid, ".s"))
                    .key(key(gid, ".d"))
                    .arg(token)
                    .arg(DONE_EXPIRES_S)
                    .invoke::<i64>(c)
            })
        });
        if !matches!(cleaned, Ok(1)) {
            tracing::warn!(
                "Chord callback claim for {gid:?} was lost before cleanup; chord data was left \
                 for expiry"
            );
        }
    }

    /// The header results in order, or the first failed part as Celery's
    /// `ChordError` words it. A header saved as a `GroupResult` (Celery
    /// saves one for a header holding a group) is joined from its
    /// members' results, nested groups as nested lists.
    fn join(
        &mut self,
        io: &mut Io<'_>,
        gid: &str,
    ) -> Result<Result<Vec<Value>, Failure>, BrokerError> {
        let ordered = self.opts.ordered;
        let (saved, entries): (Option<String>, Vec<String>) = io.results().run(|c| {
            let mut pipe = redis::pipe();
            pipe.cmd("GET").arg(key(gid, ""));
            if ordered {
                pipe.cmd("ZRANGE").arg(key(gid, ".j")).arg(0).arg(-1);
            } else {
                pipe.cmd("LRANGE").arg(key(gid, ".j")).arg(0).arg(-1);
            }
            pipe.query(c)
        })?;
        if let Some(saved) = saved {
            return self.join_saved(io, &saved);
        }
        let mut out = Vec::with_capacity(entries.len());
        for raw in entries {
            let Ok(Value::Array(e)) = serde_json::from_str::<Value>(&raw) else {
                return Ok(Err(Failure::join(&format!(
                    "a header entry this worker cannot read (not JSON: is the fleet's \
                     result_serializer json?): {:.80}",
                    raw
                ))));
            };
            let tid = e.get(1).and_then(Value::as_str).unwrap_or_default();
            let state = e.get(2).and_then(Value::as_str).unwrap_or_default();
            let result = e.get(3).cloned().unwrap_or(Value::Null);
            if state == "FAILURE" || state == "REVOKED" {
                return Ok(Err(Failure {
                    message: format!("Dependency {tid} raised {}", exc_repr(&result)),
                    cause: Some(result),
                }));
            }
            out.push(result);
        }
        Ok(Ok(out))
    }

    fn join_saved(
        &mut self,
        io: &mut Io<'_>,
        saved: &str,
    ) -> Result<Result<Vec<Value>, Failure>, BrokerError> {
        let tree = serde_json::from_str::<Value>(saved)
            .ok()
            .and_then(|v| v.get("result").cloned());
        let Some(Value::Array(top)) = tree else {
            return Ok(Err(Failure::join(
                "the saved header GroupResult cannot be read",
            )));
        };
        let Some(Value::Array(nodes)) = top.get(1) else {
            return Ok(Err(Failure::join(
                "the saved header GroupResult has no members",
            )));
        };
        let mut ids = Vec::new();
        collect_ids(nodes, &mut ids, 0);
        let keys: Vec<String> = ids.iter().map(|i| protocol::result_key(i)).collect();
        let metas: Vec<Option<String>> = if keys.is_empty() {
            Vec::new()
        } else {
            io.results()
                .run(|c| redis::cmd("MGET").arg(&keys).query(c))?
        };
        let mut by_id = std::collections::HashMap::new();
        for (id, m) in ids.iter().zip(metas) {
            let meta = m.and_then(|m| serde_json::from_str::<Value>(&m).ok());
            by_id.insert(id.clone(), meta);
        }
        Ok(build_joined(nodes, &by_id, 0))
    }

    /// `chord_error_from_stack(body, ChordError(failure))`: FAILURE on
    /// the body's id (each member's for a group body, with the failed
    /// part's own exception), its errbacks sent with that id, the rest
    /// of its chain failed.
    fn chord_error(
        &mut self,
        io: &mut Io<'_>,
        body: &Signature,
        failure: &Failure,
        root: &str,
        give_up: &dyn Fn() -> bool,
        depth: u32,
    ) {
        if depth > MAX_DEPTH {
            tracing::error!("a chord body nested deeper than {MAX_DEPTH}: not failed further");
            return;
        }
        let chord_exc = Exception::chord_error(&failure.message);
        let mut stores: Vec<(String, ResultMeta)> = Vec::new();
        let mut msgs = Vec::new();
        if body.subtask_type.as_deref() == Some("group") {
            // `_handle_group_chord_error`: each member fails with the
            // part's own exception and calls its errbacks and the
            // group's; the group's id fails too.
            let cause = failure
                .cause
                .as_ref()
                .map(stored_exception)
                .unwrap_or_else(|| chord_exc.clone());
            let group_eb = sigs_of(body.options.get("link_error"));
            for t in members(body, "tasks") {
                let Some(id) = opt_str(&t.options, "task_id") else {
                    continue;
                };
                let mut ebs = sigs_of(t.options.get("link_error"));
                for eb in &group_eb {
                    if !ebs.contains(eb) {
                        ebs.push(eb.clone());
                    }
                }
                for eb in ebs {
                    msgs.push(errback(&eb, &id));
                }
                stores.push((id.clone(), ResultMeta::failure(&id, &cause)));
            }
            if let Some(id) = opt_str(&body.options, "task_id") {
                stores.push((id.clone(), ResultMeta::failure(&id, &cause)));
            }
        } else {
            let id = opt_str(&body.options, "task_id").unwrap_or_else(protocol::new_id);
            for eb in sigs_of(body.options.get("link_error")) {
                msgs.push(errback(&eb, &id));
            }
            stores.push((id.clone(), ResultMeta::failure(&id, &chord_exc)));
        }
        let chain = sigs_of(body.options.get("chain"));
        self.fail_chain(io, chain, &chord_exc, root, give_up, &mut stores, depth);
        self.store_all(io, &stores, give_up);
        if let Err(e) = retrying(give_up, || io.broker.send(&msgs)) {
            tracing::error!("cannot send the chord body's errbacks ({e})");
        }
    }

    /// `_fail_chain`: every later step of the body's chain with an id is
    /// stored FAILURE; one that is a header part of another chord returns
    /// its part (FAILURE), and a chord step's body is failed too.
    #[allow(clippy::too_many_arguments)]
    fn fail_chain(
        &mut self,
        io: &mut Io<'_>,
        chain: Vec<Signature>,
        exc: &Exception,
        root: &str,
        give_up: &dyn Fn() -> bool,
        stores: &mut Vec<(String, ResultMeta)>,
        depth: u32,
    ) {
        let mut todo: VecDeque<Signature> = chain.into();
        let mut n = 0u32;
        while let Some(el) = todo.pop_front() {
            n = n.saturating_add(1);
            if n > 4096 || depth > MAX_DEPTH {
                break;
            }
            let id = opt_str(&el.options, "task_id");
            let group = opt_str(&el.options, "group_id");
            if let Some(id) = &id {
                let mut m = ResultMeta::failure(id, exc);
                m.group_id = group.clone();
                m.parent_id = opt_str(&el.options, "parent_id");
                stores.push((id.clone(), m));
            }
            let chord = el.options.get("chord").filter(|c| !c.is_null());
            if let (Some(body), Some(id), Some(group)) = (chord, &id, &group) {
                let part = Part {
                    group: group.clone(),
                    task_id: id.clone(),
                    group_index: el.options.get("group_index").and_then(Value::as_i64),
                    state: State::Failure,
                    result: serde_json::to_value(&exc.info).unwrap_or(Value::Null),
                    body: body.clone(),
                    root_id: root.to_string(),
                };
                // Its own FAILURE first, as Python stores it before the
                // part return.
                let now: Vec<(String, ResultMeta)> = std::mem::take(stores);
                self.store_all(io, &now, give_up);
                self.count(io, &part, give_up);
            }
            if el.subtask_type.as_deref() == Some("chord") {
                if let Some(b) = el
                    .kwargs
                    .get("body")
                    .and_then(|b| serde_json::from_value(b.clone()).ok())
                {
                    todo.push_back(b);
                }
            }
        }
    }
}

/// Runs `f` again while it fails with an error that may pass and
/// `give_up` says not to stop (a stop's grace ran out, a cold stop).
pub(super) fn retrying<T>(
    give_up: &dyn Fn() -> bool,
    mut f: impl FnMut() -> Result<T, BrokerError>,
) -> Result<T, BrokerError> {
    let mut wait = Duration::from_millis(20);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && !give_up() => {
                std::thread::sleep(wait);
                wait = wait.saturating_mul(2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_wrongtype(e: &BrokerError) -> bool {
    e.to_string().contains("WRONGTYPE")
}

fn int_of(v: &redis::Value) -> Option<i64> {
    match v {
        redis::Value::Int(i) => Some(*i),
        redis::Value::BulkString(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
        redis::Value::SimpleString(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A chord's failure: `ChordError(message)`, caused by a part's stored
/// exception (a group body's members fail with that one).
#[derive(Debug, Clone)]
struct Failure {
    message: String,
    cause: Option<Value>,
}

impl Failure {
    fn join(why: &str) -> Failure {
        Failure {
            message: format!("Join error: {}", py_str_repr_exc("Exception", why)),
            cause: None,
        }
    }
}

/// A part's stored exception dict as an [`Exception`] (FAILURE).
fn stored_exception(v: &Value) -> Exception {
    let s = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut e = Exception::chord_error("");
    e.info.exc_type = s("exc_type");
    e.info.exc_module = s("exc_module");
    e.info.exc_message = match v.get("exc_message") {
        Some(Value::Array(a)) => a.clone(),
        Some(Value::Null) | None => Vec::new(),
        Some(other) => vec![other.clone()],
    };
    e.traceback = None;
    e
}

fn collect_ids(nodes: &[Value], ids: &mut Vec<String>, depth: u32) {
    if depth > MAX_DEPTH {
        return;
    }
    for n in nodes {
        let id = n.get(0).and_then(|h| h.get(0)).and_then(Value::as_str);
        match n.get(1) {
            Some(Value::Array(children)) => collect_ids(children, ids, depth + 1),
            _ => ids.extend(id.map(str::to_string)),
        }
    }
}

fn build_joined(
    nodes: &[Value],
    metas: &std::collections::HashMap<String, Option<Value>>,
    depth: u32,
) -> Result<Vec<Value>, Failure> {
    let mut out = Vec::with_capacity(nodes.len());
    for n in nodes {
        if let Some(Value::Array(children)) = n.get(1) {
            if depth < MAX_DEPTH {
                out.push(Value::Array(build_joined(children, metas, depth + 1)?));
            }
            continue;
        }
        let id = n
            .get(0)
            .and_then(|h| h.get(0))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(Some(meta)) = metas.get(id) else {
            return Err(Failure::join(&format!("no result for header task {id}")));
        };
        let status = meta
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let result = meta.get("result").cloned().unwrap_or(Value::Null);
        if status == "FAILURE" || status == "REVOKED" {
            // join_native(propagate=True) raises the part's own
            // exception, which Celery words as a join error.
            return Err(Failure {
                message: format!("Join error: {}", exc_repr(&result)),
                cause: Some(result),
            });
        }
        out.push(result);
    }
    Ok(out)
}

/// An errback of a failed chord body: sent with the body's id first, that
/// id as its parent and root (Celery's `_call_task_errbacks` through a
/// fake request).
fn errback(eb: &Signature, id: &str) -> (String, String) {
    super::worker::signature_message(eb, Some(Value::String(id.to_string())), id, id, None)
}

pub(super) fn opt_str(o: &Map<String, Value>, k: &str) -> Option<String> {
    o.get(k).and_then(Value::as_str).map(str::to_string)
}

/// A signature option holding one signature or a list of them.
pub(super) fn sigs_of(v: Option<&Value>) -> Vec<Signature> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|s| serde_json::from_value(s.clone()).ok())
            .collect(),
        Some(o @ Value::Object(_)) => serde_json::from_value(o.clone()).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// The member signatures of a composite signature's `kwargs[field]`.
pub(super) fn members(sig: &Signature, field: &str) -> Vec<Signature> {
    sigs_of(sig.kwargs.get(field))
}

// ----- celery.chord_unlock (issue 23 item 6) -----

/// The task Celery sends to poll a chord's header on result backends
/// that do not count parts (a database, S3, ...).
pub const CHORD_UNLOCK: &str = "celery.chord_unlock";

/// Why this worker does not run `celery.chord_unlock` (`task_id`, from
/// `queue`): logged, and stored as FAILURE `ImproperlyConfigured`. It is
/// only sent by an app whose result backend is not Redis (nor Memcached,
/// DynamoDB): the header results it polls are in that backend, which this
/// worker neither reads nor writes, so running it here could never see
/// them; a Python worker must consume that queue.
pub fn refuse_unlock(task_id: String, queue: &str) -> Option<Exception> {
    let why = format!(
        "celery.chord_unlock is sent only by a Celery app whose result backend is not Redis \
         (a database, S3, MongoDB, ...: it polls the chord's header results there); \
         billiard-host stores results only in Redis and counts chords there, so it cannot run \
         it. Consume queue '{queue}' (the chord body's queue) with a Python worker \
         (celery worker -Q {queue}) and route this host's tasks to another queue, or use a \
         Redis result backend"
    );
    tracing::error!("refusing task {CHORD_UNLOCK}[{task_id}]: {why}");
    Some(Exception::improperly_configured(&why))
}
