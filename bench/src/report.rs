//! The comparison table: billiard, multiprocessing and billiard-host side by
//! side, the ratio billiard-host vs billiard, and the C limit.

use serde::Serialize;
use serde_json::Value;

use crate::record::{Record, HOST_IMPL};
use crate::workloads::WORKLOADS;

pub const PY_IMPLS: [&str; 2] = ["billiard", "multiprocessing"];

/// Is a bigger number better for this unit?
pub fn higher_is_better(unit: &str) -> Option<bool> {
    match unit {
        "tasks/s" | "MB/s" | "ratio" => Some(true),
        "us" | "ms" | "s" | "KiB" | "jobs" => Some(false),
        _ => None,
    }
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub workload: String,
    pub metric: String,
    pub variant: Option<String>,
    pub unit: String,
    pub billiard: Option<f64>,
    pub billiard_text: String,
    pub multiprocessing: Option<f64>,
    pub multiprocessing_text: String,
    pub host: Option<f64>,
    pub host_text: String,
    /// billiard-host vs billiard, > 1 when billiard-host is better.
    pub ratio: Option<f64>,
    /// The C limit in the row's unit, and which measurement it is.
    pub c_limit: Option<f64>,
    pub c_limit_source: Option<String>,
    /// billiard-host's share of the limit (1 = at the limit; throughput:
    /// host/limit, times and sizes: limit/host).
    pub fraction_of_limit: Option<f64>,
}

/// `%.4g`, but whole numbers from 1e5 up.
pub fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if !v.is_finite() {
        return v.to_string();
    }
    if v.abs() >= 1e5 {
        return format!("{v:.0}");
    }
    let decimals = (3 - v.abs().log10().floor() as i32).clamp(0, 12) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn cell_text(r: Option<&Record>, unsupported: bool) -> String {
    match r {
        None if unsupported => "n/a".into(),
        None => "".into(),
        Some(r) => match r.value {
            Some(v) => fmt_num(v),
            None => {
                let o = r.extra_str("outcome").unwrap_or("");
                if o.starts_with("hang") {
                    "hang".into()
                } else if o.starts_with("unsupported") {
                    "n/a".into()
                } else if o.contains("cli run unavailable") {
                    "n/a (no CLI)".into()
                } else if r.metric == "error" {
                    "error".into()
                } else {
                    "–".into()
                }
            }
        },
    }
}

fn find<'a>(recs: &'a [Record], metric: &str) -> Option<&'a Record> {
    recs.iter().find(|r| r.metric == metric)
}

/// The C limit for a row, converted to the row's unit.
pub fn c_limit(workload: &str, metric: &str, limits: &[Record]) -> Option<(f64, String)> {
    let get = |m: &str| find(limits, m).and_then(|r| r.value);
    let one = |m: &str, f: f64| get(m).map(|v| (v * f, m.to_string()));
    match (workload, metric) {
        ("W1", "throughput") => one("tiny_tasks_2workers_depth1", 1.0),
        ("W2", "throughput") => one("batch1000x16B_roundtrip_msgs", 1.0),
        // A pool's caller and worker are different processes the scheduler
        // spreads over the CPUs, so W3's floor is the round trip across
        // CPUs (tens of µs on a VM), not the one on a single CPU (a few µs;
        // limits.c prints both). A one-CPU machine has only the latter.
        ("W3", "p50") => one("pingpong16_socketpair_cross_cpu_p50", 1.0)
            .or_else(|| one("pingpong16_socketpair_same_cpu_p50", 1.0)),
        ("W3", "p99") => one("pingpong16_socketpair_cross_cpu_p99", 1.0)
            .or_else(|| one("pingpong16_socketpair_same_cpu_p99", 1.0)),
        ("W3", "mean") => ["cross_cpu", "same_cpu"].iter().find_map(|place| {
            let m = format!("pingpong16_socketpair_{place}_rate");
            get(&m)
                .filter(|&r| r > 0.0)
                .map(|r| (1e6 / r, format!("1e6 / {m}")))
        }),
        ("W4", "efficiency") => one("cpu_efficiency_2procs_40x50ms", 1.0),
        ("W5", "arg_throughput") => one("bulk1MiB_socketpair_default_buf", 1.0),
        ("W5", "roundtrip_throughput") => one("echo1MiB_socketpair_4MiB_buf", 1.0),
        ("W6", "throughput") => one("fresh_fork_per_task_2slots", 1.0),
        ("W7", "segv_time_to_error") => one("crash_segv_detect_p50", 1e-6),
        ("W7", "exit1_time_to_error") => one("crash_exit1_detect_p50", 1e-6),
        ("W8", "in_process") => one("pool2_start_apply_join_mean", 1e-3),
        ("W8", "whole_process") | ("W8", "host_startup_baseline") => {
            one("posix_spawn_true_wait_p50", 1e-3)
        }
        ("W9", "worker_rss") => one("idle_forked_child_rss", 1.0),
        ("W9", "worker_pss") => one("idle_forked_child_pss", 1.0),
        ("W9", "worker_uss") => one("idle_forked_child_uss", 1.0),
        ("W10", "time_to_hard_limit_error") => {
            let over = get("timer_200ms_overshoot_max")?;
            let kill = get("sigkill_to_reaped_p50")?;
            Some((
                0.2 + (over + kill) * 1e-6,
                "0.2 s + timer_200ms_overshoot_max + sigkill_to_reaped_p50".into(),
            ))
        }
        ("W10", "time_to_soft_limit_error") => get("timer_200ms_overshoot_max")
            .map(|o| (0.2 + o * 1e-6, "0.2 s + timer_200ms_overshoot_max".into())),
        _ => None,
    }
}

/// How `a` compares with `b` (> 1: `a` is better).
fn better_ratio(a: f64, b: f64, higher: bool) -> Option<f64> {
    if a == b {
        return Some(1.0);
    }
    let r = if higher { a / b } else { b / a };
    r.is_finite().then_some(r)
}

/// Builds the table from every record (host, Python, C).
pub fn rows(all: &[Record]) -> Vec<Row> {
    let of = |imp: &str| -> Vec<&Record> { all.iter().filter(|r| r.imp == imp).collect() };
    let host = of(HOST_IMPL);
    let py: Vec<Vec<&Record>> = PY_IMPLS.iter().map(|i| of(i)).collect();
    let limits: Vec<Record> = of("c-limit").into_iter().cloned().collect();
    // Workloads an impl does not support at all (value null, "unsupported").
    let unsupported = |recs: &[&Record], w: &str| {
        recs.iter().any(|r| {
            r.workload == w
                && r.value.is_none()
                && r.extra_str("outcome")
                    .is_some_and(|o| o.starts_with("unsupported"))
        })
    };
    let mut out = Vec::new();
    for w in WORKLOADS {
        let mut keys: Vec<(String, Option<String>, String)> = Vec::new();
        for r in host.iter().chain(py.iter().flatten()) {
            if r.workload != w {
                continue;
            }
            // An "unsupported" line only marks its impl's cells n/a.
            if r.value.is_none()
                && r.extra_str("outcome")
                    .is_some_and(|o| o.starts_with("unsupported"))
                && r.imp != HOST_IMPL
            {
                continue;
            }
            let k = (
                r.metric.clone(),
                r.variant().map(str::to_string),
                r.unit.clone().unwrap_or_default(),
            );
            if !keys.iter().any(|(m, v, _)| *m == k.0 && *v == k.1) {
                keys.push(k);
            }
        }
        for (metric, variant, unit) in keys {
            let pick = |recs: &[&Record]| -> Option<Record> {
                recs.iter()
                    .find(|r| {
                        r.workload == w && r.metric == metric && r.variant() == variant.as_deref()
                    })
                    .map(|r| (*r).clone())
            };
            let h = pick(&host);
            let b = pick(&py[0]);
            let m = pick(&py[1]);
            let higher = higher_is_better(&unit);
            let ratio = match (
                h.as_ref().and_then(|r| r.value),
                b.as_ref().and_then(|r| r.value),
                higher,
            ) {
                (Some(hv), Some(bv), Some(hi)) => better_ratio(hv, bv, hi),
                _ => None,
            };
            let lim = c_limit(w, &metric, &limits);
            let fraction = match (h.as_ref().and_then(|r| r.value), &lim, higher) {
                (Some(hv), Some((lv, _)), Some(hi)) => {
                    let f = if hi { hv / lv } else { lv / hv };
                    f.is_finite().then_some(f)
                }
                _ => None,
            };
            out.push(Row {
                workload: w.into(),
                metric: metric.clone(),
                variant: variant.clone(),
                unit,
                billiard: b.as_ref().and_then(|r| r.value),
                billiard_text: cell_text(b.as_ref(), unsupported(&py[0], w)),
                multiprocessing: m.as_ref().and_then(|r| r.value),
                multiprocessing_text: cell_text(m.as_ref(), unsupported(&py[1], w)),
                host: h.as_ref().and_then(|r| r.value),
                host_text: cell_text(h.as_ref(), false),
                ratio,
                c_limit: lim.as_ref().map(|l| l.0),
                c_limit_source: lim.map(|l| l.1),
                fraction_of_limit: fraction,
            });
        }
    }
    out
}

fn opt(v: Option<f64>) -> String {
    v.map(fmt_num).unwrap_or_default()
}

/// The table as markdown.
pub fn markdown_table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| workload | metric | unit | billiard | multiprocessing | billiard-host | ratio (host vs billiard; >1 = host better) | c-limit | fraction of limit |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let metric = match &r.variant {
            Some(v) => format!("{} ({v})", r.metric),
            None => r.metric.clone(),
        };
        let ratio = r
            .ratio
            .map(|x| format!("{}×", fmt_num(x)))
            .unwrap_or_default();
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.workload,
            metric,
            r.unit,
            r.billiard_text,
            r.multiprocessing_text,
            r.host_text,
            ratio,
            opt(r.c_limit),
            r.fraction_of_limit
                .map(|f| format!("{:.3}", f))
                .unwrap_or_default(),
        );
    }
    s
}

/// One line per record: impl, workload, metric, median [min–max], extras.
pub fn raw_table(recs: &[Record]) -> String {
    let mut s = String::from(
        "| impl | workload | metric | value (median) | min | max | unit | n | details |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in recs {
        let mut extras = Vec::new();
        for k in [
            "variant",
            "outcome",
            "pool_usable_after",
            "worker_replaced",
            "completed",
            "next_job_s",
            "replaced_after_s",
            "error",
        ] {
            if let Some(v) = r.extra.get(k) {
                let t = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                extras.push(format!("{k}={t}"));
            }
        }
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.imp,
            r.workload,
            r.metric,
            r.value.map(fmt_num).unwrap_or_else(|| "-".into()),
            r.min.map(fmt_num).unwrap_or_else(|| "-".into()),
            r.max.map(fmt_num).unwrap_or_else(|| "-".into()),
            r.unit.as_deref().unwrap_or(""),
            r.n.map(|n| n.to_string()).unwrap_or_default(),
            extras.join("; ").replace('|', "/"),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_like_percent_4g() {
        assert_eq!(fmt_num(0.99371), "0.9937");
        assert_eq!(fmt_num(137.66), "137.7");
        assert_eq!(fmt_num(1016.2), "1016");
        assert_eq!(fmt_num(0.0022521), "0.002252");
        assert_eq!(fmt_num(3318711.4), "3318711");
        assert_eq!(fmt_num(2.0), "2");
    }

    #[test]
    fn ratios_are_oriented_so_bigger_means_host_is_better() {
        let mk = |imp: &str, metric: &str, v: f64, unit: &str| {
            let mut r = Record::of("W3", metric, &[v], unit, 1);
            r.imp = imp.into();
            r
        };
        let all = vec![
            mk(HOST_IMPL, "p50", 50.0, "us"),
            mk("billiard", "p50", 150.0, "us"),
            mk("c-limit", "pingpong16_socketpair_same_cpu_p50", 15.0, "us"),
        ];
        let rows = rows(&all);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].ratio, Some(3.0));
        assert_eq!(rows[0].c_limit, Some(15.0));
        assert_eq!(rows[0].fraction_of_limit, Some(0.3));
        assert!(markdown_table(&rows).contains("| W3 | p50 | us | 150 |  | 50 | 3× | 15 | 0.300 |"));
    }
}
