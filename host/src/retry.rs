//! When a failed job runs again, and after how long: one policy for the
//! local pool (`run --retries`), for embedders, and for the Celery worker
//! (Celery's `autoretry_for` / `max_retries` / `retry_backoff` /
//! `retry_backoff_max` / `retry_jitter` / `default_retry_delay`, and 5.7's
//! `task_retry_on_worker_lost`).
//!
//! The delay follows Celery 5.7's `get_exponential_backoff_interval`
//! (`celery/utils/time.py`): `min(max, factor * 2^retries)`, then, with
//! jitter, a uniform draw in `0..=that` whole seconds ("full jitter").

use std::time::Duration;

use crate::error::{Directive, ErrorKind, TaskError};

pub use crate::pool::Attempts;

/// Celery's `Task.max_retries` default.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// Celery's `Task.default_retry_delay`: three minutes.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(180);
/// Celery's `Task.retry_backoff_max`: ten minutes.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(600);

/// Exponential backoff between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay (Celery's `retry_backoff` factor: `true` is 1 s).
    pub factor: Duration,
    /// No delay is longer (Celery's `retry_backoff_max`).
    pub max: Duration,
    /// Draw the delay uniformly from zero to the computed one (Celery's
    /// `retry_jitter`, on by default).
    pub jitter: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            factor: Duration::from_secs(1),
            max: DEFAULT_BACKOFF_MAX,
            jitter: true,
        }
    }
}

/// When a failed job is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The failure kinds retried without the task asking (Celery's
    /// `autoretry_for`; `worker_lost` here is `task_retry_on_worker_lost`).
    /// A task's own [`Directive::Retry`] is honoured whatever this says.
    pub on: Vec<ErrorKind>,
    /// Retries at most this many times (None: without a cap, Celery's
    /// `max_retries=None`).
    pub max_retries: Option<u32>,
    /// The delay without backoff (Celery's `default_retry_delay`).
    pub delay: Duration,
    /// Exponential backoff instead of the fixed `delay`.
    pub backoff: Option<Backoff>,
}

impl Default for RetryPolicy {
    /// Celery's defaults: no automatic retry, at most 3 retries asked for
    /// by the task, 180 s apart.
    fn default() -> Self {
        RetryPolicy {
            on: Vec::new(),
            max_retries: Some(DEFAULT_MAX_RETRIES),
            delay: DEFAULT_RETRY_DELAY,
            backoff: None,
        }
    }
}

/// What the policy decides for one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run it again after this delay.
    Retry(Duration),
    /// The failure is final: not retryable, or retried `max_retries`
    /// times already (`exhausted`).
    Final {
        /// True when a retry was wanted but the cap was reached.
        exhausted: bool,
    },
}

impl RetryPolicy {
    /// True when failures of `kind` are retried without the task asking.
    pub fn retries_on(&self, kind: ErrorKind) -> bool {
        self.on.contains(&kind)
    }

    /// The delay before attempt `retries + 1` (`retries`: how many retries
    /// already happened), without a task's own countdown.
    pub fn countdown(&self, retries: u32) -> Duration {
        let Some(b) = self.backoff else {
            return self.delay;
        };
        // factor * 2^retries, saturating: 2^64 s is far past any max.
        let doubled = 1u64.checked_shl(retries.min(63)).unwrap_or(u64::MAX);
        let secs = b.factor.as_secs_f64() * doubled as f64;
        let capped = secs.min(b.max.as_secs_f64()).max(0.0);
        if !b.jitter {
            // Never panics: a factor or max past what Duration holds (a
            // policy built in code, unchecked) saturates.
            return Duration::try_from_secs_f64(capped).unwrap_or(Duration::MAX);
        }
        // Celery draws whole seconds: random.randrange(countdown + 1).
        let whole = capped.floor() as u64;
        if whole == 0 {
            // A factor under a second (Celery's is whole seconds, ours may
            // be `100ms`): drawn in milliseconds, not always 0.
            let millis = (capped * 1000.0).floor() as u64;
            return Duration::from_millis(fastrand::u64(0..=millis));
        }
        Duration::from_secs(fastrand::u64(0..=whole))
    }

    /// What to do with `err`, the outcome of attempt `retries + 1`.
    pub fn decide(&self, err: &TaskError, retries: u32) -> Decision {
        let (wanted, countdown, cap) = match err.directive() {
            Some(Directive::Retry {
                countdown,
                max_retries,
            }) => (true, *countdown, max_retries.or(self.max_retries)),
            Some(Directive::Reject { .. } | Directive::Ignore) => (false, None, None),
            None => (self.retries_on(err.kind), None, self.max_retries),
        };
        if !wanted {
            return Decision::Final { exhausted: false };
        }
        if cap.is_some_and(|cap| retries >= cap) {
            return Decision::Final { exhausted: true };
        }
        Decision::Retry(countdown.unwrap_or_else(|| self.countdown(retries)))
    }
}

/// Parses a comma-separated list of failure kinds (`task_error,panic`),
/// naming the kinds that exist when one does not.
pub fn parse_kinds(s: &str) -> Result<Vec<ErrorKind>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some(k) = ErrorKind::parse(part) else {
            let known: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
            return Err(format!(
                "`{part}` is not a failure kind; the kinds are {}",
                known.join(", ")
            ));
        };
        if !out.contains(&k) {
            out.push(k);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FailureDetail;

    fn retry(countdown: Option<Duration>, max_retries: Option<u32>) -> TaskError {
        TaskError::new(ErrorKind::TaskError, "again").with_detail(FailureDetail {
            exception: None,
            directive: Some(Directive::Retry {
                countdown,
                max_retries,
            }),
        })
    }

    #[test]
    fn backoff_doubles_up_to_its_max_as_celery_computes_it() {
        let p = RetryPolicy {
            backoff: Some(Backoff {
                factor: Duration::from_secs(2),
                max: Duration::from_secs(10),
                jitter: false,
            }),
            ..RetryPolicy::default()
        };
        let got: Vec<u64> = (0..5).map(|r| p.countdown(r).as_secs()).collect();
        assert_eq!(got, [2, 4, 8, 10, 10]);
        assert_eq!(p.countdown(u32::MAX), Duration::from_secs(10));
        // Durations no setting would accept do not panic.
        for jitter in [false, true] {
            let p = RetryPolicy {
                backoff: Some(Backoff {
                    factor: Duration::MAX,
                    max: Duration::MAX,
                    jitter,
                }),
                ..RetryPolicy::default()
            };
            let _ = p.countdown(u32::MAX);
        }
    }

    #[test]
    fn jitter_stays_within_the_computed_delay() {
        let p = RetryPolicy {
            backoff: Some(Backoff {
                factor: Duration::from_secs(1),
                max: Duration::from_secs(600),
                jitter: true,
            }),
            ..RetryPolicy::default()
        };
        for _ in 0..200 {
            assert!(p.countdown(3) <= Duration::from_secs(8));
        }
        // Under a second the draw is in milliseconds, not always zero.
        let p = RetryPolicy {
            backoff: Some(Backoff {
                factor: Duration::from_millis(400),
                max: Duration::from_secs(600),
                jitter: true,
            }),
            ..RetryPolicy::default()
        };
        let draws: Vec<Duration> = (0..200).map(|_| p.countdown(0)).collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_millis(400)));
        assert!(draws.iter().any(|d| !d.is_zero()), "{draws:?}");
    }

    #[test]
    fn a_task_asking_for_a_retry_is_capped_by_max_retries() {
        let p = RetryPolicy::default();
        let e = retry(Some(Duration::from_millis(5)), None);
        assert_eq!(p.decide(&e, 0), Decision::Retry(Duration::from_millis(5)));
        assert_eq!(p.decide(&e, 3), Decision::Final { exhausted: true });
        // The task's own cap wins for that decision.
        let e = retry(None, Some(5));
        assert_eq!(p.decide(&e, 4), Decision::Retry(DEFAULT_RETRY_DELAY));
        assert_eq!(p.decide(&e, 5), Decision::Final { exhausted: true });
    }

    #[test]
    fn automatic_retry_only_for_the_listed_kinds() {
        let p = RetryPolicy {
            on: vec![ErrorKind::WorkerLost],
            max_retries: None,
            ..RetryPolicy::default()
        };
        let lost = TaskError::new(ErrorKind::WorkerLost, "signal 9");
        assert_eq!(p.decide(&lost, 1000), Decision::Retry(DEFAULT_RETRY_DELAY));
        let other = TaskError::new(ErrorKind::Panic, "boom");
        assert_eq!(p.decide(&other, 0), Decision::Final { exhausted: false });
    }

    #[test]
    fn kinds_parse_and_unknown_ones_are_named() {
        assert_eq!(
            parse_kinds("task_error, panic,task_error").unwrap(),
            [ErrorKind::TaskError, ErrorKind::Panic]
        );
        let e = parse_kinds("oops").unwrap_err();
        assert!(e.contains("`oops`") && e.contains("worker_lost"), "{e}");
    }
}
