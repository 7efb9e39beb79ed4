//! The charts (issue 28 item 12): `bench --charts-only` draws the three SVG
//! pictures from recorded result files; they must be well-formed XML with
//! the series the reader looks for, and the copies in `docs/bench/` must be
//! exactly what the documented command draws from `docs/bench/data/`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::workspace_root;
use quick_xml::events::Event;
use quick_xml::Reader;

/// Every text node of an SVG document, after checking it parses as XML
/// with an `<svg>` root of a positive size.
fn svg_texts(path: &Path) -> Vec<String> {
    let xml = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{} not readable: {e}", path.display()));
    let mut reader = Reader::from_str(&xml);
    reader.config_mut().check_end_names = true;
    let (mut texts, mut depth, mut root) = (Vec::new(), 0usize, None::<String>);
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                if depth == 0 {
                    let mut size = (0f64, 0f64);
                    for a in e.attributes().flatten() {
                        let v = String::from_utf8_lossy(&a.value).parse().unwrap_or(0.0);
                        match a.key.as_ref() {
                            b"width" => size.0 = v,
                            b"height" => size.1 = v,
                            _ => {}
                        }
                    }
                    assert!(
                        size.0 > 0.0 && size.1 > 0.0,
                        "{}: svg size {size:?}",
                        path.display()
                    );
                    root = Some(String::from_utf8_lossy(e.name().as_ref()).into_owned());
                }
                depth += 1;
            }
            Ok(Event::End(_)) => depth -= 1,
            Ok(Event::Text(t)) => {
                let t = String::from_utf8_lossy(&t).trim().to_string();
                if !t.is_empty() {
                    texts.push(t);
                }
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!(
                "{} is not well-formed XML at {}: {e}",
                path.display(),
                reader.buffer_position()
            ),
        }
    }
    assert_eq!(root.as_deref(), Some("svg"), "{}", path.display());
    assert_eq!(depth, 0, "{}: unclosed elements", path.display());
    texts
}

fn draw(out: &Path) -> std::process::Output {
    let data = workspace_root().join("docs/bench/data");
    Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("--charts-only")
        .arg("--chart-results")
        .arg(data.join("results-2026-12-02.jsonl"))
        .arg("--chart-celery")
        .arg(data.join("celery-2026-12-01.jsonl"))
        .arg("--chart-shm")
        .arg(data.join("shm-2026-12-02.jsonl"))
        .arg("--chart-fleet")
        .arg(data.join("fleet-2026-12-06.jsonl"))
        .arg("--charts-dir")
        .arg(out)
        .output()
        .expect("the bench binary runs")
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("billiard-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn u28_charts_are_drawn_from_recorded_results_and_are_well_formed_svg() {
    let out = temp_dir("charts");
    let o = draw(&out);
    assert!(
        o.status.success(),
        "bench --charts-only failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let has = |texts: &[String], want: &str, file: &str| {
        assert!(
            texts.iter().any(|t| t.contains(want)),
            "{file} lacks the series {want:?}; its texts: {texts:?}"
        );
    };
    let ratios = svg_texts(&out.join("ratios.svg"));
    for want in [
        "billiard-host vs billiard",
        "billiard-host vs multiprocessing",
        "parity (ratio 1)",
        "W1 throughput",
        "W3 p50",
        "W5 arg_throughput (arg_only)",
        "W9 worker_uss",
    ] {
        has(&ratios, want, "ratios.svg");
    }
    let celery = svg_texts(&out.join("celery.svg"));
    for want in [
        "billiard-host worker (-c 2, prefetch x1)",
        "billiard-host worker (-c 2, prefetch x4)",
        "Celery 5.7 prefork worker (-c 2, prefetch x4)",
        "4,851 tasks/s",
        "245 tasks/s",
    ] {
        has(&celery, want, "celery.svg");
    }
    let shm = svg_texts(&out.join("shm_threshold.svg"));
    for want in [
        "argument, socket",
        "argument, arena",
        "echo, socket",
        "echo, arena",
        "apply p50, socket",
        "apply p50, arena",
        "default threshold 64 KiB",
    ] {
        has(&shm, want, "shm_threshold.svg");
    }
    let fleet = svg_texts(&out.join("celery-fleet.svg"));
    for want in [
        "measured tasks/s",
        "one Redis core saturated (10^6 / Redis µs per task)",
        "Redis CPU per task",
        "hosts",
    ] {
        has(&fleet, want, "celery-fleet.svg");
    }
    // The pictures in the docs are the ones this command draws.
    for f in [
        "ratios.svg",
        "celery.svg",
        "shm_threshold.svg",
        "celery-fleet.svg",
    ] {
        let drawn = std::fs::read(out.join(f)).expect("drawn");
        let committed = std::fs::read(workspace_root().join("docs/bench").join(f))
            .unwrap_or_else(|e| panic!("docs/bench/{f}: {e}"));
        assert!(
            drawn == committed,
            "docs/bench/{f} differs from what `bench --charts-only` draws from docs/bench/data; \
             redraw it with the command in docs/benchmarks.md"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn u28_charts_only_without_data_is_refused_and_bad_data_is_an_error() {
    let out = temp_dir("charts-none");
    let o = Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("--charts-only")
        .arg("--charts-dir")
        .arg(&out)
        .output()
        .expect("the bench binary runs");
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("--chart-results"));
    let junk = out.join("junk.jsonl");
    std::fs::create_dir_all(&out).expect("temp dir");
    std::fs::write(&junk, "not json\n{\"measure\": \"throughput\"}\n").expect("write");
    let o = Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("--charts-only")
        .arg("--chart-celery")
        .arg(&junk)
        .arg("--charts-dir")
        .arg(&out)
        .output()
        .expect("the bench binary runs");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no throughput to draw"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let _ = std::fs::remove_dir_all(&out);
}
