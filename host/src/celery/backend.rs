//! Celery's Redis result backend: `celery-task-meta-<id>` written with
//! SETEX **and** PUBLISH on the channel of the same name (a Python
//! `AsyncResult.get()` waits on that channel), never over a stored
//! SUCCESS.
//!
//! When the backend is the broker (the default), result, follow-up
//! messages and ack go in one atomic script call per message
//! ([`super::redis::finish`]); otherwise the result is stored on the
//! backend first and the broker's part (follow-ups + ack) follows, so a
//! crash in between re-runs the task rather than losing its result.

use std::time::Duration;

use super::protocol::{result_key, ResultMeta};
use super::redis::{finish, BrokerError, Finish, Finished, Link};

/// Celery's default `result_expires`: one day.
pub const DEFAULT_RESULT_EXPIRES: Duration = Duration::from_secs(24 * 3600);

/// One message's completion.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The delivery tag to ack.
    pub tag: String,
    /// The task id (the result key).
    pub task_id: String,
    /// The result to store (None: `ignore_result`).
    pub meta: Option<ResultMeta>,
    /// Follow-up messages (list, envelope JSON): chain, link, link_error.
    pub send: Vec<(String, String)>,
}

/// Where results go.
pub struct ResultBackend {
    /// None: the broker's own Redis.
    link: Option<Link>,
    expires: Duration,
}

impl ResultBackend {
    /// `url`: None (or the broker's URL) to store results in the broker.
    pub fn new(
        url: Option<&str>,
        broker_url: &str,
        expires: Duration,
    ) -> Result<ResultBackend, BrokerError> {
        let link = match url {
            Some(u) if u != broker_url => Some(Link::new(u, "result backend")?),
            _ => None,
        };
        Ok(ResultBackend { link, expires })
    }

    /// True when results are stored in the broker's Redis.
    pub fn is_broker(&self) -> bool {
        self.link.is_none()
    }

    /// Stores the results of `batch`, sends the follow-ups and acks, in one
    /// round trip per server. All or nothing per message; on an error the
    /// whole batch may be retried (storing twice is harmless, a second ack
    /// is a no-op).
    pub fn complete(
        &mut self,
        broker: &mut Link,
        batch: &[Completion],
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
                finish(broker, &fin, self.expires)
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
                let stored = finish(backend, &store, self.expires)?;
                let acks: Vec<Finish> = batch
                    .iter()
                    .map(|c| Finish {
                        tag: c.tag.clone(),
                        result: None,
                        send: c.send.clone(),
                    })
                    .collect();
                let mut acked = finish(broker, &acks, self.expires)?;
                let mut s = stored.into_iter();
                for (c, f) in batch.iter().zip(acked.iter_mut()) {
                    f.stored = c.meta.is_some() && s.next().is_some_and(|x| x.stored);
                }
                Ok(acked)
            }
        }
    }
}
