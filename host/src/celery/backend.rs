//! Celery's Redis result backend: `celery-task-meta-<id>` written with
//! SETEX **and** PUBLISH on the channel of the same name (a Python
//! `AsyncResult.get()` waits on that channel), never over a stored
//! SUCCESS; and Celery's `rpc://` backend on an AMQP broker: the meta
//! published to the client's `reply_to` queue with the task's
//! `correlation_id` ([`Transport::reply`]), confirmed before the ack; a
//! task sent without a `reply_to` has its result go nowhere, as in Celery.
//!
//! When the backend is the broker (the default), result, follow-up
//! messages and ack go in one atomic script call per message
//! ([`super::transport::redis::finish`]); otherwise the result is stored on the
//! backend first and the broker's part (follow-ups + ack) follows, so a
//! crash in between re-runs the task rather than losing its result.

use std::time::Duration;

use super::protocol::{result_key, ResultMeta};
use super::transport::redis::{
    finish, ttl_secs, BrokerError, Finish, FinishReserved, Finished, Held, Link, RunMarks,
};
use super::transport::{Reply, Transport};

/// Celery's default `result_expires`: one day.
pub const DEFAULT_RESULT_EXPIRES: Duration = Duration::from_secs(24 * 3600);

/// One message's completion.
#[derive(Debug, Clone, Default)]
pub struct Completion {
    /// The delivery tag to ack.
    pub tag: String,
    /// The task id (the result key).
    pub task_id: String,
    /// The result to store (None: `ignore_result`).
    pub meta: Option<ResultMeta>,
    /// Follow-up messages (list, envelope JSON): chain, link, link_error.
    pub send: Vec<(String, String)>,
    /// Chords these follow-ups start (group id, header size): their sizes
    /// go to `.s` on the result backend before the messages are sent
    /// (`celery::chord`, issue 23 item 1).
    pub chord_sizes: Vec<(String, u64)>,
    /// Where an `rpc://` backend publishes the result: the message's
    /// (`reply_to`, `correlation_id` or task id); None: nowhere.
    pub reply: Option<(String, String)>,
}

/// Where results go.
enum Store {
    /// The broker's own Redis, with the ack in one script call.
    Broker,
    /// A Redis of its own.
    Redis(Box<Link>),
    /// Celery's `rpc://`: to the client's reply queue on the AMQP broker.
    Rpc,
}

/// Where results go.
pub struct ResultBackend {
    store: Store,
    /// The results' time to live as SETEX takes it ([`ttl_secs`]).
    ttl_s: u64,
}

/// True for Celery's `rpc://` result backend URL (any case, any rest).
pub fn is_rpc(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(s, _)| s.eq_ignore_ascii_case("rpc"))
}

impl ResultBackend {
    /// `url`: None (or the broker's URL) to store results in the broker.
    /// `expires` is the results' time to live; one beyond what the host
    /// accepts (10 years, [`ttl_secs`]) is refused, not passed to SETEX to
    /// fail every store.
    pub fn new(
        url: Option<&str>,
        broker_url: &str,
        expires: Duration,
    ) -> Result<ResultBackend, BrokerError> {
        let ttl_s = ttl_secs(expires).map_err(|e| BrokerError::Config(e.to_string()))?;
        let store = match url {
            Some(u) if is_rpc(u) => Store::Rpc,
            Some(u) if u != broker_url => Store::Redis(Box::new(Link::new(u, "result backend")?)),
            _ => Store::Broker,
        };
        Ok(ResultBackend { store, ttl_s })
    }

    /// The result backend's own link; None: results go to the broker's
    /// Redis (chord bookkeeping lives where the results do) or to reply
    /// queues (`rpc://`).
    pub fn link_mut(&mut self) -> Option<&mut Link> {
        match &mut self.store {
            Store::Redis(l) => Some(&mut **l),
            Store::Broker | Store::Rpc => None,
        }
    }

    /// The results' time to live in SETEX seconds (0: none).
    pub fn ttl_s(&self) -> u64 {
        self.ttl_s
    }

    /// True when results go to the broker's Redis, in the script call
    /// that acks ([`ResultBackend::complete_reserve`] can reserve in it).
    pub fn is_broker(&self) -> bool {
        matches!(self.store, Store::Broker)
    }

    /// [`ResultBackend::complete`], and, where results go to the broker
    /// ([`ResultBackend::is_broker`]), a reserve of up to `max` messages
    /// in the same script call ([`Transport::finish_reserve`]); anywhere
    /// else nothing is reserved.
    pub fn complete_reserve(
        &mut self,
        broker: &mut dyn Transport,
        batch: &[Completion],
        repeated: bool,
        max: usize,
        lease: Duration,
        mark: &RunMarks<'_>,
    ) -> Result<FinishReserved, BrokerError> {
        if !self.is_broker() || max == 0 {
            return Ok((self.complete(broker, batch, repeated)?, Ok(Vec::new())));
        }
        broker.finish_reserve(&finishes(batch), self.ttl_s, repeated, max, lease, mark)
    }

    /// Stores the results of `batch`, sends the follow-ups and acks, in one
    /// round trip per server. All or nothing per message; on an error the
    /// whole batch may be retried (storing twice is harmless, a second ack
    /// is a no-op); `repeated` says the call before lost its reply
    /// ([`BrokerError::may_have_applied`]), so a message found acked is one
    /// that call finished, not one to send follow-ups for again.
    pub fn complete(
        &mut self,
        broker: &mut dyn Transport,
        batch: &[Completion],
        repeated: bool,
    ) -> Result<Vec<Finished>, BrokerError> {
        let meta = |c: &Completion| {
            c.meta
                .as_ref()
                .map(|m| (result_key(&c.task_id), m.to_json()))
        };
        match &mut self.store {
            Store::Rpc => complete_rpc(broker, batch, self.ttl_s, repeated),
            Store::Broker => broker.finish(&finishes(batch), self.ttl_s, repeated),
            Store::Redis(backend) => {
                let store: Vec<Finish> = batch
                    .iter()
                    .filter(|c| c.meta.is_some())
                    .map(|c| Finish {
                        tag: String::new(),
                        result: meta(c),
                        send: Vec::new(),
                    })
                    .collect();
                let stored = finish(backend, &store, self.ttl_s, repeated)?;
                if batch.iter().all(|c| c.tag.is_empty() && c.send.is_empty()) {
                    // Results only (a chord part stored before it is
                    // counted): nothing for the broker, which need not
                    // even answer.
                    let mut s = stored.into_iter();
                    return Ok(batch
                        .iter()
                        .map(|c| {
                            let x = c.meta.as_ref().and_then(|_| s.next());
                            Finished {
                                stored: x
                                    .as_ref()
                                    .is_some_and(|x| x.stored || x.held == Held::AlreadyFinished),
                                held: Held::Held,
                                unsent: 0,
                            }
                        })
                        .collect());
                }
                let mut acked = broker.finish(&acks_of(batch), self.ttl_s, repeated)?;
                let mut s = stored.into_iter();
                for (c, f) in batch.iter().zip(acked.iter_mut()) {
                    f.stored = c.meta.is_some()
                        && s.next()
                            .is_some_and(|x| x.stored || x.held == Held::AlreadyFinished);
                }
                Ok(acked)
            }
        }
    }
}

/// `batch` as the broker's script finishes it: result, follow-ups, ack.
fn finishes(batch: &[Completion]) -> Vec<Finish> {
    batch
        .iter()
        .map(|c| Finish {
            tag: c.tag.clone(),
            result: c
                .meta
                .as_ref()
                .map(|m| (result_key(&c.task_id), m.to_json())),
            send: c.send.clone(),
        })
        .collect()
}

/// The broker's part of `batch`: follow-ups and acks, no results.
fn acks_of(batch: &[Completion]) -> Vec<Finish> {
    batch
        .iter()
        .map(|c| Finish {
            tag: c.tag.clone(),
            result: None,
            send: c.send.clone(),
        })
        .collect()
}

/// `rpc://`: the replies published and confirmed, then the follow-ups
/// sent and the messages acked. A call repeated after a lost confirm
/// publishes a reply twice: the client takes the first of a final state
/// (Celery's result consumer keeps the rest out of band).
fn complete_rpc(
    broker: &mut dyn Transport,
    batch: &[Completion],
    ttl_s: u64,
    repeated: bool,
) -> Result<Vec<Finished>, BrokerError> {
    let replies: Vec<Reply> = batch
        .iter()
        .filter_map(|c| {
            let m = c.meta.as_ref()?;
            let (to, correlation_id) = c.reply.as_ref()?;
            Some(Reply {
                to: to.clone(),
                correlation_id: correlation_id.clone(),
                body: m.to_json(),
            })
        })
        .collect();
    broker.reply(&replies)?;
    let mut done = if batch.iter().all(|c| c.tag.is_empty() && c.send.is_empty()) {
        vec![
            Finished {
                stored: false,
                held: Held::Held,
                unsent: 0,
            };
            batch.len()
        ]
    } else {
        broker.finish(&acks_of(batch), ttl_s, repeated)?
    };
    for (c, f) in batch.iter().zip(done.iter_mut()) {
        // Published, or nowhere to go (no reply_to): done either way.
        f.stored = c.meta.is_some();
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_urls_are_told_apart() {
        assert!(is_rpc("rpc://"));
        assert!(is_rpc("RPC://x"));
        assert!(!is_rpc("redis://h/0"));
        assert!(!is_rpc("rpc"));
    }
}
