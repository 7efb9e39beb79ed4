//! Range checks for every duration that enters the host from outside
//! (flags, job lines, golden cases, Celery headers, `PoolBuilder`, wait
//! timeouts), and the saturating time arithmetic the host uses instead of
//! the panicking `Instant + Duration` / `Duration * n`.
//!
//! One rule, one place: a configured duration (a limit, a countdown, a
//! result expiry, a visibility timeout) is at most [`MAX_DURATION`]; a larger
//! one is refused where it enters with an error naming the setting and the
//! bound (exit 2 for a flag, `bad_args` for a job line, `PoolError::Config`
//! for a builder call, a FAILURE naming the header for a Celery message).
//! Wait timeouts given to the library (`wait_timeout(Duration::MAX)`, the
//! usual "no timeout" idiom) are not refused: a deadline beyond the clock's
//! range means "never" ([`deadline`]).

use std::time::{Duration, Instant};

/// The longest duration the host accepts for a setting: 10 years (365-day
/// years). Long enough for any real limit, countdown or expiry; short
/// enough that `now + d` fits every clock the host adds it to (`Instant`,
/// chrono's `DateTime`, Redis's millisecond TTLs) with room to spare.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// The text used in messages for [`MAX_DURATION`].
pub const MAX_DURATION_TEXT: &str = "10 years";

/// A duration from outside that is longer than [`MAX_DURATION`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {} is longer than the longest accepted duration ({MAX_DURATION_TEXT})", humantime::format_duration(*.value))]
pub struct TooLong {
    /// The setting, flag or field (`--time-limit`, `"time_limit"`, ...).
    pub what: String,
    /// The value given.
    pub value: Duration,
}

/// `d` when it is at most [`MAX_DURATION`], else [`TooLong`] naming `what`.
pub fn check_duration(what: &str, d: Duration) -> Result<Duration, TooLong> {
    if d > MAX_DURATION {
        Err(TooLong {
            what: what.to_string(),
            value: d,
        })
    } else {
        Ok(d)
    }
}

/// `now + d`, or `None` when that is past what `Instant` can represent:
/// a deadline that far away never comes, so `None` means "no deadline".
pub fn deadline(now: Instant, d: Duration) -> Option<Instant> {
    now.checked_add(d)
}

/// `now + d` for a wait or a timer that must have a deadline (a grace
/// period, a poll interval, a bounded wait): when `now + d` is past what
/// `Instant` can represent, the latest instant it can (halving `d` until
/// it fits), which is as good as never; no panic.
pub fn saturating_deadline(now: Instant, d: Duration) -> Instant {
    let mut d = d;
    loop {
        if let Some(t) = now.checked_add(d) {
            return t;
        }
        d = d.checked_div(2).unwrap_or_default();
    }
}

/// `d * n`, saturating at `Duration::MAX` (which [`deadline`] then turns
/// into "no deadline") instead of panicking.
pub fn scaled(d: Duration, n: u32) -> Duration {
    d.checked_mul(n).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_bound_and_names_the_setting() {
        assert_eq!(check_duration("x", MAX_DURATION), Ok(MAX_DURATION));
        let e = check_duration("--time-limit", MAX_DURATION + Duration::from_secs(1)).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("--time-limit"), "{text}");
        assert!(text.contains("10 years"), "{text}");
        assert!(check_duration("x", Duration::MAX).is_err());
    }

    #[test]
    fn deadline_and_scaled_never_panic() {
        let now = Instant::now();
        assert_eq!(deadline(now, Duration::MAX), None);
        assert!(deadline(now, Duration::from_secs(1)).is_some());
        assert_eq!(scaled(Duration::MAX, 2), Duration::MAX);
        assert_eq!(scaled(Duration::from_secs(2), 3), Duration::from_secs(6));
        // The longest limit times the most items a chunk count can say
        // still fits Linux's clock (i64 seconds); beyond, "never".
        assert!(deadline(now, scaled(MAX_DURATION, u32::MAX)).is_some());
        assert_eq!(
            deadline(now, scaled(Duration::from_secs(u64::MAX / 4), 8)),
            None
        );
        assert!(saturating_deadline(now, Duration::MAX) > now + MAX_DURATION);
        assert_eq!(
            saturating_deadline(now, Duration::from_secs(3)),
            now + Duration::from_secs(3)
        );
    }
}
