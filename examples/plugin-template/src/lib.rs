//! A billiard-host plugin to copy. Each `#[task]` is an ordinary function;
//! `export_plugin!` at the bottom exports them.
//!
//! - `greet` takes and returns plain values;
//! - `divide` panics on a zero divisor (the host reports a `panic` error;
//!   the worker survives);
//! - `mean` returns a `Result`: an `Err` becomes a `task_error`;
//! - `count_primes` takes a `TaskContext` and stops cleanly when the host
//!   asks (soft time limit or cancellation).

use billiard_plugin_api::serde::{Deserialize, Serialize};
use billiard_plugin_api::{export_plugin, task, Stopped, TaskContext};

/// Returns a greeting for `name`.
#[task]
pub fn greet(name: String) -> String {
    format!("Hello, {name}!")
}

/// Integer division; panics when `b` is 0.
#[task]
pub fn divide(a: i64, b: i64) -> i64 {
    a / b
}

/// Summary statistics of a list of numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(crate = "billiard_plugin_api::serde")]
pub struct Summary {
    pub count: u64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

/// Count, mean, min and max of `xs`; fails on an empty list.
#[task]
pub fn summarize(xs: Vec<f64>) -> Result<Summary, String> {
    if xs.is_empty() {
        return Err("cannot summarize an empty list".into());
    }
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Ok(Summary {
        count: xs.len() as u64,
        mean: xs.iter().sum::<f64>() / xs.len() as f64,
        min,
        max,
    })
}

/// The number of primes below `limit`, by trial division. Long for a big
/// `limit`: polls its context and stops at a soft time limit.
#[task]
pub fn count_primes(limit: u64, ctx: &TaskContext) -> Result<u64, Stopped> {
    let mut count = 0;
    for n in 2..limit {
        if n % 1024 == 0 {
            ctx.check()?;
        }
        if is_prime(n) {
            count += 1;
        }
    }
    Ok(count)
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

export_plugin!(name: "template", tasks: [greet, divide, summarize, count_primes]);

#[cfg(test)]
mod tests {
    // Plain unit tests of the functions still work: `#[task]` leaves them
    // callable from Rust.
    use super::*;

    #[test]
    fn primes_below_30() {
        assert_eq!((0..30).filter(|&n| is_prime(n)).count(), 10);
    }

    #[test]
    fn greet_is_a_function() {
        assert_eq!(greet("you".into()), "Hello, you!");
    }
}
