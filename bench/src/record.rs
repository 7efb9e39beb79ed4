//! One result line, with the keys `bench/python/pyworkloads.py` prints (and `bench/limits/limits.c`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The `impl` of every Rust result.
pub const HOST_IMPL: &str = "billiard-host";

/// One JSON result line: `{"impl", "workload", "metric", "value", "unit",
/// "n", "min", "max", "runs", "samples", ...extras}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    #[serde(rename = "impl")]
    pub imp: String,
    pub workload: String,
    pub metric: String,
    /// Median over the runs; `None` when no run gave a number.
    pub value: Option<f64>,
    pub unit: Option<String>,
    pub n: Option<u64>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default)]
    pub runs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<Vec<Option<f64>>>,
    /// `variant`, `outcome`, `note`, `pool_usable_after`, ...
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Record {
    /// A result over `samples` (one per run; `None` = no number for that
    /// run): value = median, min/max over the numbers.
    pub fn new(
        workload: &str,
        metric: &str,
        samples: &[Option<f64>],
        unit: &str,
        n: u64,
    ) -> Record {
        let mut nums: Vec<f64> = samples.iter().flatten().copied().collect();
        nums.sort_by(f64::total_cmp);
        Record {
            imp: HOST_IMPL.into(),
            workload: workload.into(),
            metric: metric.into(),
            value: median(&nums).map(r6),
            unit: Some(unit.into()),
            n: Some(n),
            min: nums.first().copied().map(r6),
            max: nums.last().copied().map(r6),
            runs: Some(samples.len() as u64),
            samples: Some(samples.iter().map(|s| s.map(r6)).collect()),
            extra: Map::new(),
        }
    }

    /// `new` over samples that all have a number.
    pub fn of(workload: &str, metric: &str, samples: &[f64], unit: &str, n: u64) -> Record {
        let s: Vec<Option<f64>> = samples.iter().map(|&x| Some(x)).collect();
        Record::new(workload, metric, &s, unit, n)
    }

    /// A workload that failed to run: `metric = "error"`, `value = null`.
    pub fn error(workload: &str, message: &str) -> Record {
        let mut r = Record {
            imp: HOST_IMPL.into(),
            workload: workload.into(),
            metric: "error".into(),
            value: None,
            unit: None,
            n: None,
            min: None,
            max: None,
            runs: None,
            samples: None,
            extra: Map::new(),
        };
        r.extra
            .insert("error".into(), Value::String(message.into()));
        r
    }

    /// Adds an extra key (skipped when `v` is null).
    pub fn with(mut self, key: &str, v: impl Into<Value>) -> Record {
        let v = v.into();
        if !v.is_null() {
            self.extra.insert(key.into(), v);
        }
        self
    }

    pub fn extra_str(&self, key: &str) -> Option<&str> {
        self.extra.get(key).and_then(Value::as_str)
    }

    pub fn variant(&self) -> Option<&str> {
        self.extra_str("variant")
    }

    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("a record serializes")
    }

    /// Parses the JSON lines of `text` (other lines are skipped).
    pub fn parse_lines(text: &str) -> Vec<Record> {
        text.lines()
            .map(str::trim)
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// The median of sorted numbers (mean of the middle two for an even count,
/// like Python's `statistics.median`).
pub fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// Nearest-rank percentile of ascending values, exactly as pyworkloads.py's `pctl`
/// (Python's `round` rounds half to even).
pub fn pctl(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let k = ((q / 100.0 * n as f64 + 0.5).round_ties_even() as i64 - 1).clamp(0, n as i64 - 1);
    Some(sorted[k as usize])
}

/// Rounds to 6 decimals, like pyworkloads.py.
pub fn r6(v: f64) -> f64 {
    if v.abs() >= 1e12 {
        return v;
    }
    (v * 1e6).round() / 1e6
}

/// Problems with a record that should not happen (used by `--dry-run`).
pub fn check(r: &Record) -> Vec<String> {
    let mut errs = Vec::new();
    let who = format!("{} {} {}", r.imp, r.workload, r.metric);
    if r.imp.is_empty() || r.workload.is_empty() || r.metric.is_empty() {
        errs.push(format!("{who}: empty impl/workload/metric"));
    }
    if r.metric == "error" {
        errs.push(format!(
            "{who}: {}",
            r.extra_str("error").unwrap_or("unknown error")
        ));
        return errs;
    }
    if r.unit.is_none() || r.n.is_none() || r.runs.is_none() || r.samples.is_none() {
        errs.push(format!("{who}: missing unit/n/runs/samples"));
    }
    if let Some(v) = r.value {
        if !v.is_finite() {
            errs.push(format!("{who}: value {v} is not finite"));
        }
        match (r.min, r.max) {
            (Some(lo), Some(hi)) if lo <= v && v <= hi => {}
            _ => errs.push(format!("{who}: min/max do not bracket the value")),
        }
    } else if r.extra_str("outcome").is_none() {
        errs.push(format!("{who}: value null without an outcome"));
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles_match_python() {
        assert_eq!(median(&[1.0, 2.0, 3.0]), Some(2.0));
        assert_eq!(median(&[1.0, 2.0, 3.0, 10.0]), Some(2.5));
        let v: Vec<f64> = (1..=2000).map(f64::from).collect();
        // Python: int(round(0.5 * 2000 + 0.5)) - 1 = round(1000.5) - 1 = 999.
        assert_eq!(pctl(&v, 50.0), Some(1000.0));
        assert_eq!(pctl(&v, 99.0), Some(1980.0));
        assert_eq!(pctl(&[5.0], 99.0), Some(5.0));
    }

    #[test]
    fn records_round_trip_through_json() {
        let r = Record::new("W7", "segv_time_to_error", &[Some(0.5), None], "s", 1)
            .with("variant", "default")
            .with("next_job_s", serde_json::json!([0.001, null]));
        let back: Record = serde_json::from_str(&r.to_line()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.value, Some(0.5));
        assert_eq!(back.runs, Some(2));
        assert!(check(&back).is_empty());
        let py = r#"{"impl": "billiard", "workload": "W6", "metric": "throughput", "value": null, "unit": "tasks/s", "n": 2000, "min": null, "max": null, "runs": 1, "samples": [null], "outcome": "unsupported"}"#;
        let p: Record = serde_json::from_str(py).unwrap();
        assert_eq!(p.value, None);
        assert_eq!(p.extra_str("outcome"), Some("unsupported"));
        let c = r#"{"impl": "c-limit", "workload": "W3", "metric": "pingpong16_socketpair_p50", "value": 15.3, "unit": "us", "n": 200000, "min": 14, "max": 16, "runs": 3, "note": ""}"#;
        let c: Record = serde_json::from_str(c).unwrap();
        assert_eq!(c.samples, None);
        assert_eq!(c.min, Some(14.0));
    }
}
