//! Rate limits in Celery's syntax (`celery.utils.time.rate`: `N`, `N/s`,
//! `N/m`, `N/h`), range-checked: one parser for a task's declared
//! `rate_limit` option ([`crate::task_options`], always compiled) and the
//! Celery worker's flags and control commands (`celery::rate`, which
//! re-exports this module's items and applies the limits).

// Without the `celery` feature only the task options' check uses it.
#![cfg_attr(not(feature = "celery"), allow(dead_code))]

use crate::bounds;
use crate::pyrepr::py_str as py_repr;

/// The fastest rate accepted: a million starts a second (one per
/// microsecond, the resolution of the fleet-wide limit's clock).
pub const MAX_RATE: f64 = 1_000_000.0;

/// A rate limit: starts per second, with the text it was given as (shown
/// in `inspect registered` as Celery shows `str(task.rate_limit)`).
#[derive(Debug, Clone, PartialEq)]
pub struct Rate {
    per_sec: f64,
    text: String,
}

impl Rate {
    /// Starts per second.
    pub fn per_second(&self) -> f64 {
        self.per_sec
    }

    /// The limit as it was given (`100/m`).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The time between two starts, in whole microseconds rounded up (so
    /// the limit is never exceeded), at least 1.
    pub(crate) fn interval_us(&self) -> u64 {
        let us = (1e6 / self.per_sec).ceil();
        // parse() bounds the rate to [1/MAX_DURATION, MAX_RATE]: this is
        // 1 ..= 3.2e14, exact in an f64 and in Lua's numbers.
        if us.is_finite() && us >= 1.0 {
            us as u64
        } else {
            1
        }
    }
}

/// Why a rate limit was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RateError {
    /// The number is not one (Python's `float()` refuses it).
    #[error("could not convert string to float: {}", py_repr(.0))]
    NotANumber(String),
    /// The unit after `/` is not `s`, `m` or `h`.
    #[error("unknown rate unit {}: a rate is N, N/s, N/m or N/h", py_repr(.0))]
    Unit(String),
    /// A number out of the accepted range (negative, not finite, faster
    /// than [`MAX_RATE`], slower than one start per 10 years).
    #[error("rate limit {} {why}", py_repr(.text))]
    OutOfRange {
        /// The limit as given.
        text: String,
        /// What is wrong with it.
        why: String,
    },
    /// Not a string or a number (a list, an object, a boolean).
    #[error("a rate limit is a string such as '100/m' or a number of tasks per second, not {0}")]
    Type(&'static str),
}

impl RateError {
    /// The `error` of Celery's reply to `control rate_limit` with this
    /// rate: a `ValueError` as Celery's worker words it
    /// (`Invalid rate limit string: ValueError("could not convert string to
    /// float: 'abc'")`); an unknown unit is the `KeyError` kombu's pidbox
    /// replies with (Celery does not catch it). The range refusals are
    /// this host's (Celery takes `-5/s` and then never runs the task).
    pub fn celery_reply(&self) -> String {
        match self {
            RateError::Unit(u) => format!("KeyError({})", py_repr(u)),
            RateError::Type(_) => format!(
                "Invalid rate limit string: TypeError({})",
                py_repr(&self.to_string())
            ),
            _ => format!(
                "Invalid rate limit string: ValueError({})",
                py_repr(&self.to_string())
            ),
        }
    }
}

/// Python's `float()` of a string: surrounding white space is ignored,
/// `_` may separate digits; `inf`/`nan` parse (and are refused by the
/// range check).
fn py_float(s: &str) -> Option<f64> {
    let t = s.trim();
    let t = if t.contains('_') {
        let b = t.as_bytes();
        let ok = b.iter().enumerate().all(|(i, c)| {
            *c != b'_'
                || (i > 0
                    && b.get(i.wrapping_sub(1)).is_some_and(u8::is_ascii_digit)
                    && b.get(i.saturating_add(1)).is_some_and(u8::is_ascii_digit))
        });
        if !ok {
            return None;
        }
        t.replace('_', "")
    } else {
        t.to_string()
    };
    t.parse::<f64>().ok()
}

/// A rate in starts per second, range-checked: `None` for 0 (no limit).
pub(crate) fn checked(per_sec: f64, text: &str) -> Result<Option<Rate>, RateError> {
    let bad = |why: String| RateError::OutOfRange {
        text: text.to_string(),
        why,
    };
    if per_sec == 0.0 {
        return Ok(None);
    }
    if !per_sec.is_finite() {
        return Err(bad("is not a finite number".into()));
    }
    if per_sec < 0.0 {
        return Err(bad("is negative".into()));
    }
    if per_sec > MAX_RATE {
        return Err(bad(format!(
            "is faster than the fastest accepted ({MAX_RATE} per second)"
        )));
    }
    if per_sec < 1.0 / bounds::MAX_DURATION.as_secs_f64() {
        return Err(bad(format!(
            "is slower than the slowest accepted (one per {})",
            bounds::MAX_DURATION_TEXT
        )));
    }
    Ok(Some(Rate {
        per_sec,
        text: text.to_string(),
    }))
}

/// Celery's `rate()` (`celery/utils/time.py`) of a string: `N`, `N/s`,
/// `N/m`, `N/h`; empty or 0 is no limit (`None`). Range-checked (see
/// [`RateError::OutOfRange`]).
pub fn parse(text: &str) -> Result<Option<Rate>, RateError> {
    if text.is_empty() {
        return Ok(None);
    }
    checked(per_second(text)?, text)
}

/// Celery's `rate()` of a non-empty string, not range-checked: starts per
/// second (possibly negative, 0, or not finite).
pub(crate) fn per_second(text: &str) -> Result<f64, RateError> {
    // str.partition('/'): the unit is everything after the first '/'.
    let (ops, unit) = text.split_once('/').unwrap_or((text, ""));
    let n = py_float(ops).ok_or_else(|| RateError::NotANumber(ops.to_string()));
    Ok(match unit {
        "" | "s" => n?,
        "m" => n? / 60.0,
        "h" => n? / 60.0 / 60.0,
        other => return Err(RateError::Unit(other.to_string())),
    })
}
