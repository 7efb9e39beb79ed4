//! A billiard-host task plugin. Each `#[task]` is an ordinary function;
//! `export_plugin!` at the bottom exports them.
//!
//! - `count_primes` takes and returns plain values and a `TaskContext`: it
//!   stops cleanly when the host asks (a soft time limit or cancellation);
//! - `summarize` takes and returns structs (serde types), returns a
//!   `Result` (an `Err` becomes a `task_error`) and panics on a bad `trim`
//!   (the host reports a `panic` error; the worker survives).
//!
//! The structs also derive `JsonSchema`: `billiard-host inspect` then shows
//! their fields, and `inspect --json` a JSON Schema of each task's
//! arguments and result that producers in any language can validate jobs
//! with. A `#[task]` missing from `export_plugin!` is a compile warning.

use billiard_plugin_api::{export_plugin, task, JsonSchema, Stopped, TaskContext};
use serde::{Deserialize, Serialize};

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
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// What to summarize: the numbers, and how many of the smallest and of the
/// largest to leave out (`trim`, 0 when absent). As JSON:
/// `{"values": [1, 2, 6], "trim": 1}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "billiard_plugin_api::schemars")]
pub struct Sample {
    pub values: Vec<f64>,
    #[serde(default)]
    pub trim: usize,
}

/// Summary statistics of the values that were kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "billiard_plugin_api::schemars")]
pub struct Summary {
    pub count: u64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

/// Count, mean, min and max of a sample's values after trimming; fails on
/// an empty list, panics when `trim` is more than half the values.
#[task]
pub fn summarize(sample: Sample) -> Result<Summary, String> {
    if sample.values.is_empty() {
        return Err("cannot summarize an empty list".into());
    }
    let mut sorted = sample.values;
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    // Panics ("slice index starts at 2 but ends at 1") when 2 * trim > n.
    let kept = &sorted[sample.trim..n.saturating_sub(sample.trim)];
    if kept.is_empty() {
        return Err(format!(
            "trim {} leaves none of the {n} values",
            sample.trim
        ));
    }
    Ok(Summary {
        count: kept.len() as u64,
        mean: kept.iter().sum::<f64>() / kept.len() as f64,
        min: kept[0],
        max: kept[kept.len() - 1],
    })
}

export_plugin!(name: "plugin-template", tasks: [count_primes, summarize]);

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
    fn summarize_is_a_function() {
        let s = summarize(Sample {
            values: vec![6.0, 1.0, 2.0, 100.0],
            trim: 1,
        });
        assert_eq!(
            s,
            Ok(Summary {
                count: 2,
                mean: 4.0,
                min: 2.0,
                max: 6.0
            })
        );
    }
}
