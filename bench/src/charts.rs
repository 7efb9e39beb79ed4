//! SVG charts of the benchmark results (plotters' SVG backend: text is
//! written as SVG `<text>` elements, so no font library or fontconfig is
//! needed to draw them).
//!
//! Three pictures: billiard-host's ratio against billiard and
//! multiprocessing per workload row (`ratios.svg`), the Celery fleet's
//! throughput (`celery.svg`), and the shared-memory threshold sweep
//! (`shm_threshold.svg`). Each takes plain data, so `bench`, `bench-celery`
//! and `shm_sweep` draw from what they measured, and `bench --charts-only`
//! redraws from recorded result files.

// Shared by several binaries of this crate; each uses part of it.
#![allow(dead_code)]

use std::path::Path;

use anyhow::{anyhow, ensure, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

/// One row of the ratio chart: > 1 means billiard-host is better.
#[derive(Debug, Clone)]
pub struct RatioBar {
    pub label: String,
    pub vs_billiard: Option<f64>,
    pub vs_multiprocessing: Option<f64>,
}

/// One worker configuration of the fleet chart, with every run's tasks/s.
#[derive(Debug, Clone)]
pub struct Throughput {
    pub label: String,
    pub runs: Vec<f64>,
}

/// One point of the shared-memory sweep (`path` is `socket` or `shm`).
#[derive(Debug, Clone)]
pub struct ShmPoint {
    pub size: u64,
    pub path: String,
    pub arg_mbps: f64,
    pub echo_mbps: f64,
    pub apply_p50_us: f64,
}

/// One fleet size of `bench-celery --hosts`: its throughput and the
/// Redis CPU each task cost.
#[derive(Debug, Clone)]
pub struct FleetPoint {
    pub hosts: u64,
    pub tasks_per_s: f64,
    pub redis_us_per_task: f64,
}

/// Series names, as they appear in the SVG legends (the chart test checks
/// them).
pub const VS_BILLIARD: &str = "billiard-host vs billiard";
pub const VS_MULTIPROCESSING: &str = "billiard-host vs multiprocessing";

const BLUE_: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const ORANGE_: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const GREEN_: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const RED_: RGBColor = RGBColor(0xd6, 0x27, 0x28);

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e:?}")
}

fn median(v: &[f64]) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(s[n / 2]),
        _ => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
    }
}

/// Log-axis bounds around positive values, padded to whole decades.
fn log_bounds(values: impl Iterator<Item = f64>, lo_cap: f64, hi_cap: f64) -> (f64, f64) {
    let (mut lo, mut hi) = (lo_cap, hi_cap);
    for v in values.filter(|v| v.is_finite() && *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    // Twelve decades either side of 1 at most: plotters walks every decade
    // of a log axis, and no benchmark ratio, rate or latency goes further.
    let (lo, hi) = (
        10f64.powf(lo.log10().floor().max(-12.0)),
        10f64.powf(hi.log10().ceil().min(12.0)),
    );
    // Nothing positive to draw (or a degenerate range): one decade around 1.
    if lo.is_finite() && hi.is_finite() && lo > 0.0 && lo < hi {
        (lo, hi)
    } else {
        (0.1, 10.0)
    }
}

/// Axis numbers without a pointless `.0`: 0.1, 1, 10, 1,000.
fn plain(v: f64) -> String {
    if v.abs() >= 1.0 && v.fract() == 0.0 {
        let digits = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 {
            format!("-{out}")
        } else {
            out
        }
    } else {
        format!("{v}")
    }
}

/// A row label short enough for the label column.
fn short(label: &str, max: usize) -> String {
    if label.chars().count() <= max {
        label.to_string()
    } else {
        let cut: String = label.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// Segments 0..n-1, the first row drawn at the top.
fn seg(n: usize, i: usize) -> usize {
    n.saturating_sub(1).saturating_sub(i)
}

fn finish(root: DrawingArea<SVGBackend, Shift>, path: &Path) -> Result<()> {
    root.present().map_err(err)?;
    ensure!(path.is_file(), "{} was not written", path.display());
    Ok(())
}

/// Horizontal bars on a log axis, two per row, with a line at 1 (parity).
pub fn ratios_svg(bars: &[RatioBar], title: &str, path: &Path) -> Result<()> {
    let bars: Vec<&RatioBar> = bars
        .iter()
        .filter(|b| b.vs_billiard.is_some() || b.vs_multiprocessing.is_some())
        .collect();
    ensure!(!bars.is_empty(), "no row has a ratio to draw");
    let n = bars.len();
    let (lo, hi) = log_bounds(
        bars.iter()
            .flat_map(|b| [b.vs_billiard, b.vs_multiprocessing])
            .flatten(),
        0.5,
        2.0,
    );
    let height = u32::try_from(n)
        .unwrap_or(200)
        .saturating_mul(26)
        .saturating_add(130);
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(330)
        .build_cartesian_2d(
            (lo..hi).log_scale(),
            (0..n.saturating_sub(1)).into_segmented(),
        )
        .map_err(err)?;
    let labels: Vec<String> = bars.iter().map(|b| short(&b.label, 48)).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("ratio, log scale (> 1: billiard-host better; times and sizes inverted)")
        .x_label_formatter(&|v| format!("{}×", plain(*v)))
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(seg(n, *i)).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(err)?;
    for (k, (name, color)) in [(VS_BILLIARD, BLUE_), (VS_MULTIPROCESSING, ORANGE_)]
        .into_iter()
        .enumerate()
    {
        let rects = bars.iter().enumerate().filter_map(|(row, b)| {
            let i = seg(n, row);
            let v = if k == 0 {
                b.vs_billiard
            } else {
                b.vs_multiprocessing
            }?;
            // billiard's bar above multiprocessing's within a row.
            let (top, bottom) = if k == 0 {
                (SegmentValue::CenterOf(i), SegmentValue::Exact(i + 1))
            } else {
                (SegmentValue::Exact(i), SegmentValue::CenterOf(i))
            };
            let mut r = Rectangle::new([(lo, top), (v.clamp(lo, hi), bottom)], color.filled());
            r.set_margin(2, 2, 0, 0);
            Some(r)
        });
        chart
            .draw_series(rects)
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .draw_series(LineSeries::new(
            [(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Exact(n))],
            BLACK.stroke_width(1),
        ))
        .map_err(err)?
        .label("parity (ratio 1)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], BLACK));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    finish(root, path)
}

/// A bar per worker configuration (median tasks/s) with each run as a dot.
pub fn fleet_svg(items: &[Throughput], title: &str, path: &Path) -> Result<()> {
    let items: Vec<(&Throughput, f64)> = items
        .iter()
        .filter_map(|t| median(&t.runs).map(|m| (t, m)))
        .collect();
    ensure!(!items.is_empty(), "no throughput to draw");
    let n = items.len();
    let top = items
        .iter()
        .flat_map(|(t, m)| t.runs.iter().copied().chain([*m]))
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max)
        .min(1e12)
        * 1.15;
    let height = u32::try_from(n)
        .unwrap_or(10)
        .saturating_mul(60)
        .saturating_add(130);
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(330)
        .build_cartesian_2d(0f64..top, (0..n.saturating_sub(1)).into_segmented())
        .map_err(err)?;
    let labels: Vec<String> = items.iter().map(|(t, _)| short(&t.label, 48)).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("tasks/s (bar: median of the runs; dots: each run)")
        .x_label_formatter(&|v| plain(v.round()))
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(seg(n, *i)).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(err)?;
    for (row, (t, m)) in items.iter().enumerate() {
        let i = seg(n, row);
        let color = if t.label.to_lowercase().contains("celery") {
            RED_
        } else {
            GREEN_
        };
        let mut r = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(i)),
                (m.clamp(0.0, top), SegmentValue::Exact(i + 1)),
            ],
            color.mix(0.8).filled(),
        );
        r.set_margin(8, 8, 0, 0);
        chart.draw_series([r]).map_err(err)?;
        // Positions stay on the axis: plotters' pixel arithmetic overflows
        // on values far outside it.
        let at = |v: f64| {
            if v.is_finite() {
                v.clamp(0.0, top)
            } else {
                top
            }
        };
        chart
            .draw_series([Text::new(
                format!("  {} tasks/s", plain(m.round())),
                (at(*m), SegmentValue::Exact(i + 1)),
                ("sans-serif", 14),
            )])
            .map_err(err)?;
        chart
            .draw_series(
                t.runs
                    .iter()
                    .map(|&v| Circle::new((at(v), SegmentValue::CenterOf(i)), 4, BLACK.filled())),
            )
            .map_err(err)?;
    }
    finish(root, path)
}

/// Throughput against payload size (log-log), socket and arena, with the
/// threshold marked; apply latency in a second panel.
pub fn shm_svg(points: &[ShmPoint], threshold: u64, path: &Path) -> Result<()> {
    ensure!(!points.is_empty(), "no sweep point to draw");
    // x is log2 of the size, so the ticks land on powers of two.
    let lg = |size: u64| (size.max(1) as f64).log2();
    let xs = points.iter().map(|p| lg(p.size));
    let (xlo, xhi) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (xlo, xhi) = ((xlo - 0.5).floor(), (xhi + 0.5).ceil());
    let (ylo, yhi) = log_bounds(
        points.iter().flat_map(|p| [p.arg_mbps, p.echo_mbps]),
        f64::MAX,
        1.0,
    );
    let (llo, lhi) = log_bounds(points.iter().map(|p| p.apply_p50_us), f64::MAX, 1.0);
    let root = SVGBackend::new(path, (900, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(
            "Shared-memory threshold: socket vs arena",
            ("sans-serif", 20),
        )
        .map_err(err)?;
    let (upper, lower) = root.split_vertically(440);
    let bytes = |v: f64| {
        if v >= 1048576.0 {
            format!("{:.0} MiB", v / 1048576.0)
        } else if v >= 1024.0 {
            format!("{:.0} KiB", v / 1024.0)
        } else {
            format!("{v:.0} B")
        }
    };
    let tick = |v: &f64| {
        if v.fract() == 0.0 {
            bytes(2f64.powf(*v))
        } else {
            String::new()
        }
    };
    type Panel<'a> = (&'a str, &'a str, fn(&ShmPoint) -> f64);
    type Area<'a, 'b> = &'a DrawingArea<SVGBackend<'b>, Shift>;
    let panels: [(Area, (f64, f64), Vec<Panel>); 2] = [
        (
            &upper,
            (ylo, yhi),
            vec![
                ("argument", "MB/s", |p| p.arg_mbps),
                ("echo", "MB/s", |p| p.echo_mbps),
            ],
        ),
        (
            &lower,
            (llo, lhi),
            vec![("apply p50", "us", |p| p.apply_p50_us)],
        ),
    ];
    for (area, (lo, hi), series) in panels {
        let desc = if series[0].1 == "us" {
            "apply p50 latency, us (lower is better)"
        } else {
            "MB/s per direction (higher is better)"
        };
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(xlo..xhi, (lo..hi).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("payload size (log scale)")
            .y_desc(desc)
            .x_labels(
                usize::try_from((xhi - xlo) as i64)
                    .unwrap_or(10)
                    .saturating_add(1),
            )
            .x_label_formatter(&tick)
            .y_label_formatter(&|v| plain(*v))
            .draw()
            .map_err(err)?;
        for (si, (what, _, get)) in series.iter().enumerate() {
            for (route, dashed_color) in [("socket", [BLUE_, ORANGE_]), ("shm", [GREEN_, RED_])] {
                let color = dashed_color[si % 2];
                let mut pts: Vec<(f64, f64)> = points
                    .iter()
                    .filter(|p| p.path == route)
                    .map(|p| (lg(p.size), get(p)))
                    .filter(|(_, v)| v.is_finite() && *v > 0.0)
                    .map(|(x, v)| (x, v.clamp(lo, hi)))
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                let name = format!(
                    "{what}, {}",
                    if route == "shm" { "arena" } else { "socket" }
                );
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(err)?
                    .label(name)
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 14, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(err)?;
            }
        }
        let t = lg(threshold);
        chart
            .draw_series(LineSeries::new([(t, lo), (t, hi)], BLACK.stroke_width(1)))
            .map_err(err)?
            .label(format!("default threshold {}", bytes(threshold as f64)))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], BLACK));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    finish(root, path)
}

/// The fleet curve: tasks/s (top) and Redis CPU µs per task (bottom)
/// against the number of hosts, the projection of one saturated Redis
/// core (10^6 / µs per task) as a dashed line in the top panel.
pub fn fleet_curve_svg(points: &[FleetPoint], path: &Path) -> Result<()> {
    let mut pts: Vec<&FleetPoint> = points
        .iter()
        .filter(|p| p.tasks_per_s.is_finite() && p.redis_us_per_task.is_finite())
        .collect();
    ensure!(!pts.is_empty(), "no fleet point to draw");
    pts.sort_by_key(|p| p.hosts);
    let xmax = pts.last().map_or(1, |p| p.hosts).clamp(1, 1 << 20) as f64 + 0.5;
    let sat: Vec<f64> = pts
        .iter()
        .map(|p| 1e6 / p.redis_us_per_task.max(0.01))
        .collect();
    let ytop = pts
        .iter()
        .map(|p| p.tasks_per_s)
        .chain(sat.iter().copied())
        .fold(1.0f64, f64::max)
        .min(1e9)
        * 1.15;
    let utop = pts
        .iter()
        .map(|p| p.redis_us_per_task)
        .fold(1.0f64, f64::max)
        .min(1e6)
        * 1.25;
    let root = SVGBackend::new(path, (900, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(360);
    let at = |v: f64, hi: f64| v.clamp(0.0, hi);
    let mut c = ChartBuilder::on(&top)
        .caption(
            "Celery mode: a fleet of billiard-host workers on one Redis",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(0.5f64..xmax, 0f64..ytop)
        .map_err(err)?;
    c.configure_mesh()
        .x_desc("hosts")
        .y_desc("tasks/s")
        .x_label_formatter(&|v| plain(v.round()))
        .y_label_formatter(&|v| plain(v.round()))
        .draw()
        .map_err(err)?;
    c.draw_series(LineSeries::new(
        pts.iter()
            .map(|p| (p.hosts as f64, at(p.tasks_per_s, ytop))),
        GREEN_.stroke_width(2),
    ))
    .map_err(err)?
    .label("measured tasks/s")
    .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], GREEN_.stroke_width(2)));
    c.draw_series(pts.iter().map(|p| {
        Circle::new(
            (p.hosts as f64, at(p.tasks_per_s, ytop)),
            4,
            GREEN_.filled(),
        )
    }))
    .map_err(err)?;
    c.draw_series(DashedLineSeries::new(
        pts.iter()
            .zip(&sat)
            .map(|(p, s)| (p.hosts as f64, at(*s, ytop))),
        6,
        4,
        RED_.stroke_width(2),
    ))
    .map_err(err)?
    .label("one Redis core saturated (10^6 / Redis µs per task)")
    .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], RED_.stroke_width(2)));
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    let mut c = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(0.5f64..xmax, 0f64..utop)
        .map_err(err)?;
    c.configure_mesh()
        .x_desc("hosts")
        .y_desc("Redis CPU µs per task")
        .x_label_formatter(&|v| plain(v.round()))
        .draw()
        .map_err(err)?;
    c.draw_series(LineSeries::new(
        pts.iter()
            .map(|p| (p.hosts as f64, at(p.redis_us_per_task, utop))),
        BLUE_.stroke_width(2),
    ))
    .map_err(err)?
    .label("Redis CPU per task")
    .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], BLUE_.stroke_width(2)));
    c.draw_series(pts.iter().map(|p| {
        Circle::new(
            (p.hosts as f64, at(p.redis_us_per_task, utop)),
            4,
            BLUE_.filled(),
        )
    }))
    .map_err(err)?;
    c.draw_series(pts.iter().map(|p| {
        Text::new(
            format!("  {:.1} µs", p.redis_us_per_task),
            (p.hosts as f64, at(p.redis_us_per_task, utop)),
            ("sans-serif", 13),
        )
    }))
    .map_err(err)?;
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    finish(root, path)
}

/// `bench-celery --hosts`'s JSON lines (`"measure": "fleet"`).
pub fn parse_fleet(text: &str) -> Vec<FleetPoint> {
    text.lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["measure"] == "fleet")
        .filter_map(|v| {
            Some(FleetPoint {
                hosts: v["hosts"].as_u64()?,
                tasks_per_s: v["tasks_per_s"].as_f64()?,
                redis_us_per_task: v["redis_us_per_task"].as_f64()?,
            })
        })
        .collect()
}

/// `bench-celery`'s JSON lines (`"measure": "throughput"`) grouped per
/// worker, in the order first seen.
pub fn parse_celery(text: &str) -> Vec<Throughput> {
    let mut out: Vec<Throughput> = Vec::new();
    for v in text
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        if v["measure"] != "throughput" {
            continue;
        }
        let (Some(name), Some(rate)) = (v["impl"].as_str(), v["tasks_per_s"].as_f64()) else {
            continue;
        };
        let label = celery_label(name, v["concurrency"].as_u64());
        match out.iter_mut().find(|t| t.label == label) {
            Some(t) => t.runs.push(rate),
            None => out.push(Throughput {
                label,
                runs: vec![rate],
            }),
        }
    }
    out
}

/// `billiard-host-x4` → `billiard-host worker (-c 2, prefetch x4)`.
fn celery_label(name: &str, concurrency: Option<u64>) -> String {
    let c = concurrency.map(|c| format!("-c {c}, ")).unwrap_or_default();
    match name.strip_prefix("billiard-host-x") {
        Some(m) => format!("billiard-host worker ({c}prefetch x{m})"),
        None if name == "celery" => format!("Celery 5.7 prefork worker ({c}prefetch x4)"),
        None => name.to_string(),
    }
}

/// `shm_sweep`'s JSON lines.
pub fn parse_shm(text: &str) -> Vec<ShmPoint> {
    text.lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            Some(ShmPoint {
                size: v["size_bytes"].as_u64()?,
                path: v["path"].as_str()?.to_string(),
                arg_mbps: v["arg_MBps"].as_f64()?,
                echo_mbps: v["echo_MBps"].as_f64()?,
                apply_p50_us: v["apply_p50_us"].as_f64()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("bench-charts-{}-{name}", std::process::id()))
    }

    #[test]
    fn odd_inputs_draw_or_are_refused_without_panicking() {
        let p = tmp("ratios.svg");
        let one = [RatioBar {
            label: "W1 throughput".into(),
            vs_billiard: Some(1.0),
            vs_multiprocessing: None,
        }];
        ratios_svg(&one, "t", &p).expect("one bar draws");
        let huge = [RatioBar {
            label: "x".repeat(500),
            vs_billiard: Some(1e300),
            vs_multiprocessing: Some(1e-300),
        }];
        ratios_svg(&huge, "t", &p).expect("extreme ratios draw");
        let none = [RatioBar {
            label: "W7".into(),
            vs_billiard: None,
            vs_multiprocessing: None,
        }];
        assert!(ratios_svg(&none, "t", &p).is_err());
        let f = tmp("fleet.svg");
        let odd = [Throughput {
            label: "a".into(),
            runs: vec![f64::NAN, -5.0, 0.0],
        }];
        fleet_svg(&odd, "t", &f).expect("odd runs draw");
        let inf = [Throughput {
            label: "b".into(),
            runs: vec![f64::MAX, f64::INFINITY],
        }];
        fleet_svg(&inf, "t", &f).expect("absurd rates draw, clipped");
        assert!(fleet_svg(&[], "t", &f).is_err());
        let s = tmp("shm.svg");
        let flat = [ShmPoint {
            size: 0,
            path: "shm".into(),
            arg_mbps: 0.0,
            echo_mbps: -1.0,
            apply_p50_us: f64::NAN,
        }];
        shm_svg(&flat, 64 << 10, &s).expect("a degenerate sweep draws");
        let wild = [ShmPoint {
            size: u64::MAX,
            path: "socket".into(),
            arg_mbps: f64::MAX,
            echo_mbps: 1e-300,
            apply_p50_us: 1.0,
        }];
        shm_svg(&wild, 64 << 10, &s).expect("a wild sweep draws, clipped");
        assert!(shm_svg(&[], 64 << 10, &s).is_err());
        for f in [p, f, s] {
            let _ = std::fs::remove_file(f);
        }
    }

    #[test]
    fn axis_numbers_and_labels_read_well() {
        assert_eq!(plain(1.0), "1");
        assert_eq!(plain(4851.0), "4,851");
        assert_eq!(plain(100000.0), "100,000");
        assert_eq!(plain(0.1), "0.1");
        assert_eq!(short("abcdef", 4), "abc…");
        assert_eq!(short("abc", 4), "abc");
        let t = parse_celery(
            "noise\n{\"impl\": \"billiard-host-x4\", \"measure\": \"throughput\", \"concurrency\": 2, \"tasks_per_s\": 10}\n\
             {\"impl\": \"celery\", \"measure\": \"latency\", \"p50_ms\": 1}\n",
        );
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].label, "billiard-host worker (-c 2, prefetch x4)");
    }
}
