//! `worker`'s retry, reject and poison-message flags, named after Celery's
//! task options (`autoretry_for`, `max_retries`, `default_retry_delay`,
//! `retry_backoff`, `retry_backoff_max`, `retry_jitter`) and 5.7's
//! `task_retry_on_worker_lost`: the worker's defaults, which a task's own
//! registration options override (issue 23 items 2, 3 and 5).

use std::time::Duration;

use billiard_host::celery::redelivery::{self, MAX_CAP};
use billiard_host::retry::{
    parse_kinds, Backoff, RetryPolicy, DEFAULT_BACKOFF_MAX, DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_DELAY,
};
use billiard_host::{bounds, ErrorKind};

/// Failure kinds, comma-separated.
#[derive(Debug, Clone)]
pub struct Kinds(Vec<ErrorKind>);

/// A cap on retries: a number, or none.
#[derive(Debug, Clone, Copy)]
pub struct Cap(Option<u32>);

#[derive(clap::Args, Debug)]
pub struct RetryFlags {
    /// Retry failures of these kinds without the task asking (Celery's
    /// autoretry_for), comma-separated: task_error, panic, worker_lost,
    /// time_limit, soft_time_limit, bad_args, unknown_task, plugin_load. A
    /// task's own retry request is honoured whatever this says.
    #[arg(long, value_name = "KINDS", value_parser = parse_autoretry)]
    autoretry_for: Option<Kinds>,
    /// Retry a task at most N times (Celery's max_retries, default 3);
    /// `none`: no cap.
    #[arg(long, value_name = "N|none", value_parser = parse_cap)]
    max_retries: Option<Cap>,
    /// The delay before a retry without backoff (Celery's
    /// default_retry_delay, default 3m; 0 is allowed).
    #[arg(long, value_name = "DURATION", value_parser = parse_delay)]
    default_retry_delay: Option<Duration>,
    /// Exponential backoff between retries whose countdown the task does not
    /// set, from this first delay (Celery's retry_backoff: D, 2D, 4D, ... up
    /// to --retry-backoff-max).
    #[arg(long, value_name = "DURATION", value_parser = parse_delay)]
    retry_backoff: Option<Duration>,
    /// The longest backoff delay (Celery's retry_backoff_max, default 10m).
    #[arg(long, value_name = "DURATION", value_parser = parse_delay, requires = "retry_backoff")]
    retry_backoff_max: Option<Duration>,
    /// Wait exactly the backoff delay instead of a random delay up to it
    /// (Celery's retry_jitter=False).
    #[arg(long, requires = "retry_backoff")]
    no_retry_jitter: bool,
    /// A task whose worker process died (worker_lost) is retried, capped by
    /// --max-retries (Celery 5.7's task_retry_on_worker_lost).
    #[arg(long)]
    retry_on_worker_lost: bool,
    /// A message whose task killed the worker or the host running it N
    /// times is stored FAILURE (WorkerLostError naming each death) and never
    /// run again (default 3, 1 to 1000).
    #[arg(long, value_name = "N", value_parser = parse_deaths)]
    max_worker_deaths: Option<u32>,
    /// A task that rejects its message with requeue (Reject(requeue=True))
    /// is requeued at most N times, then stored FAILURE (default 20, 1 to
    /// 1000).
    #[arg(long, value_name = "N", value_parser = parse_deaths)]
    max_requeues: Option<u32>,
    /// The delivery limit of the quorum queues consumed (their x-delivery-limit
    /// argument or delivery-limit policy; RabbitMQ 4's default 20, 1 to 1000): a
    /// delivery whose x-delivery-count nears it is logged, a worker lost on it says
    /// so in the FAILURE, and a reject with requeue on the last one allowed is stored
    /// FAILURE instead of being requeued for RabbitMQ to drop.
    #[arg(long, value_name = "N", value_parser = parse_deaths)]
    delivery_limit: Option<u32>,
}

impl RetryFlags {
    /// The worker's redelivery options.
    pub fn options(&self) -> Result<redelivery::Options, String> {
        let mut on = self.autoretry_for.clone().map(|k| k.0).unwrap_or_default();
        if self.retry_on_worker_lost && !on.contains(&ErrorKind::WorkerLost) {
            on.push(ErrorKind::WorkerLost);
        }
        let policy = RetryPolicy {
            on,
            max_retries: self.max_retries.map_or(Some(DEFAULT_MAX_RETRIES), |c| c.0),
            delay: self.default_retry_delay.unwrap_or(DEFAULT_RETRY_DELAY),
            backoff: self.retry_backoff.map(|factor| Backoff {
                factor,
                max: self.retry_backoff_max.unwrap_or(DEFAULT_BACKOFF_MAX),
                jitter: !self.no_retry_jitter,
            }),
        };
        let o = redelivery::Options {
            policy,
            max_worker_deaths: self
                .max_worker_deaths
                .unwrap_or(redelivery::DEFAULT_MAX_WORKER_DEATHS),
            max_requeues: self
                .max_requeues
                .unwrap_or(redelivery::DEFAULT_MAX_REQUEUES),
            delivery_limit: self
                .delivery_limit
                .unwrap_or(redelivery::DEFAULT_DELIVERY_LIMIT),
        };
        o.check()?;
        Ok(o)
    }
}

fn parse_autoretry(s: &str) -> Result<Kinds, String> {
    let kinds = parse_kinds(s)?;
    if kinds.contains(&ErrorKind::Terminated) {
        return Err("`terminated` is a revoke or a stop: it is never retried".into());
    }
    Ok(Kinds(kinds))
}

fn parse_cap(s: &str) -> Result<Cap, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(Cap(None));
    }
    s.trim()
        .parse::<u32>()
        .map(|n| Cap(Some(n)))
        .map_err(|e| format!("{e} (a number from 0 to {}, or none)", u32::MAX))
}

fn parse_deaths(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_CAP).contains(&n) => Ok(n),
        _ => Err(format!("must be a number from 1 to {MAX_CAP}")),
    }
}

/// A delay: 0 allowed (retry at once), at most 10 years.
fn parse_delay(s: &str) -> Result<Duration, String> {
    let d = match s.trim() {
        "0" => Duration::ZERO,
        t => humantime::parse_duration(t).map_err(|e| format!("{e} (e.g. 0, 500ms, 2s, 1m)"))?,
    };
    bounds::check_duration("the delay", d).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_refuse_out_of_range_values() {
        assert!(parse_autoretry("panic,worker_lost").is_ok());
        assert!(parse_autoretry("terminated").is_err());
        assert!(parse_autoretry("nope").is_err());
        assert_eq!(parse_cap("none").unwrap().0, None);
        assert_eq!(parse_cap("7").unwrap().0, Some(7));
        assert!(parse_cap("-1").is_err());
        assert!(parse_cap("99999999999").is_err());
        assert!(parse_deaths("0").is_err());
        assert!(parse_deaths("1001").is_err());
        assert_eq!(parse_deaths("3").unwrap(), 3);
        assert_eq!(parse_delay("0").unwrap(), Duration::ZERO);
        assert!(parse_delay("11years").is_err());
        assert!(parse_delay("soon").is_err());
    }
}
