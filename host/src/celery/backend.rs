//! Celery's Redis result backend: `celery-task-meta-<id>` written with
//! SETEX **and** PUBLISH on the channel of the same name (a Python
//! `AsyncResult.get()` waits on that channel), never over a stored
//! SUCCESS.
//!
//! When the backend is the broker (the default), result, follow-up
//! messages and ack go in one atomic script call per message
//! ([`super::transport::redis::finish`]); otherwise the result is stored on the
//! backend first and the broker's part (follow-ups + ack) follows, so a
//! crash in between re-runs the task rather than losing its result.

use std::time::Duration;

use super::protocol::{result_key, ResultMeta};
use super::transport::redis::{finish, ttl_secs, BrokerError, Finish, Finished, Held, Link};
use super::transport::Transport;

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
}

/// Where results go.
pub struct ResultBackend {
    /// None: the broker's own Redis.
    link: Option<Link>,
    /// The results' time to live as SETEX takes it ([`ttl_secs`]).
    ttl_s: u64,
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
        let link = match url {
            Some(u) if u != broker_url => Some(Link::new(u, "result backend")?),
            _ => None,
        };
        Ok(ResultBackend { link, ttl_s })
    }

    /// True when results are stored in the broker's Redis.
    pub fn is_broker(&self) -> bool {
        self.link.is_none()
    }

    /// The result backend's own link; None: results go to the broker's
    /// Redis (chord bookkeeping lives where the results do).
    pub fn link_mut(&mut self) -> Option<&mut Link> {
        self.link.as_mut()
    }

    /// The results' time to live in SETEX seconds (0: none).
    pub fn ttl_s(&self) -> u64 {
        self.ttl_s
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
        match &mut self.link {
            None => {
                let fin: Vec<Finish> = batch
                    .iter()
                    .map(|c| Finish {
                        tag: c.tag.clone(),
                        result: meta(c),
                        send: c.send.clone(),
                    })
                    .collect();
                broker.finish(&fin, self.ttl_s, repeated)
            }
            Some(backend) => {
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
                let acks: Vec<Finish> = batch
                    .iter()
                    .map(|c| Finish {
                        tag: c.tag.clone(),
                        result: None,
                        send: c.send.clone(),
                    })
                    .collect();
                let mut acked = broker.finish(&acks, self.ttl_s, repeated)?;
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
