//! The batch glue (`Task::RUN_BATCH`, one loop per chunk) gives exactly the
//! result records of the item-by-item glue (`Task::RUN` per record): same
//! statuses, same bytes, same messages, for values, bad arguments, task
//! errors, panics (the items after a panic still run), stops and both
//! codecs.

// The tasks are driven here directly, never listed in an `export_plugin!`:
// the "not listed in export_plugin" markers of its `#[task]`s are unused.
#![allow(dead_code)]

use std::sync::atomic::AtomicU32;

use abi_stable::std_types::{RSlice, RVec};
use billiard_plugin_api::glue::{self, BatchRunFn, RunFn, Task};
use billiard_plugin_api::{abi::TaskInfo, codec, task, Codec, StopReason, TaskContext};

#[task]
fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

#[task]
fn checked_div(a: i64, b: i64) -> Result<i64, String> {
    if b == 0 {
        panic!("divide by zero: {a} / {b}");
    }
    a.checked_div(b).ok_or_else(|| "overflow".to_string())
}

#[task]
fn echo(data: Vec<u8>) -> Vec<u8> {
    data
}

#[task]
fn job(ctx: &TaskContext) -> u64 {
    ctx.job_id()
}

#[task]
fn cooperative(n: u64, ctx: &TaskContext) -> u64 {
    ctx.checkpoint();
    n
}

fn tables() -> (Vec<RunFn>, Vec<Option<BatchRunFn>>, Vec<TaskInfo>) {
    (
        vec![
            square::RUN,
            checked_div::RUN,
            echo::RUN,
            job::RUN,
            cooperative::RUN,
        ],
        vec![
            square::RUN_BATCH,
            checked_div::RUN_BATCH,
            echo::RUN_BATCH,
            job::RUN_BATCH,
            cooperative::RUN_BATCH,
        ],
        vec![
            square::INFO,
            checked_div::INFO,
            echo::INFO,
            job::INFO,
            cooperative::INFO,
        ],
    )
}

fn records(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for i in items {
        codec::push_record(&mut out, i);
    }
    out
}

/// Both glues over the same chunk: (records appended, output bytes).
fn both(task: u32, codec: Codec, items: &[Vec<u8>], stop: u32) -> [(u32, Vec<u8>); 2] {
    let (runs, batch_runs, infos) = tables();
    let args = records(items);
    let flag = AtomicU32::new(stop);
    let ctx = TaskContext::new(1000, 0, &flag);
    let run = |batch: &[Option<BatchRunFn>]| {
        let mut out = RVec::new();
        out.extend_from_slice(b"prefix");
        let n = glue::call_batch_with(
            &runs,
            batch,
            &infos,
            task,
            codec,
            RSlice::from_slice(&args),
            items.len() as u32,
            &ctx,
            &mut out,
        );
        (n, out.as_slice().to_vec())
    };
    [run(&[]), run(&batch_runs)]
}

fn json(items: &[&str]) -> Vec<Vec<u8>> {
    items.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn bin<T: serde::Serialize>(items: &[T]) -> Vec<Vec<u8>> {
    items
        .iter()
        .map(|v| codec::encode(Codec::Bincode, v).unwrap())
        .collect()
}

#[test]
fn every_plain_task_has_a_batch_glue() {
    assert!(square::RUN_BATCH.is_some() && job::RUN_BATCH.is_some());
}

#[test]
fn batch_glue_gives_the_records_of_the_item_glue() {
    let cases: Vec<(u32, Codec, Vec<Vec<u8>>)> = vec![
        (
            0,
            Codec::Json,
            json(&[
                "[3]",
                "[\"x\"]",
                "[1, 2]",
                "[]",
                "nope",
                "[18446744073709551615]",
            ]),
        ),
        (0, Codec::Bincode, bin(&[(3u64,), (u64::MAX,), (0,)])),
        (0, Codec::Bincode, vec![vec![], vec![0xff; 3], vec![1, 2]]),
        (
            1,
            Codec::Json,
            json(&["[7, 2]", "[1, 0]", "[9, 3]", "[-9223372036854775808, -1]"]),
        ),
        (1, Codec::Bincode, bin(&[(7i64, 2i64), (1, 0), (9, 3)])),
        (
            2,
            Codec::Json,
            json(&[
                "[[1, 2, 3]]",
                r#"[{"$bytes": "aGk="}]"#,
                r#"[{"$bytes": "!"}]"#,
            ]),
        ),
        (
            2,
            Codec::Bincode,
            bin(&[(serde_bytes::ByteBuf::from(vec![5u8; 100]),)]),
        ),
        (3, Codec::Json, json(&["[]", "[]", "[1]"])),
        (4, Codec::Json, json(&["[1]", "[2]"])),
    ];
    for (task, codec, items) in &cases {
        let [one, batch] = both(*task, *codec, items, 0);
        assert_eq!(one.0, items.len() as u32);
        assert_eq!(
            one,
            batch,
            "task {task} {codec:?}: {}",
            String::from_utf8_lossy(&one.1)
        );
    }
    // A stopped chunk: every item "not started", both ways.
    for reason in [StopReason::SoftTimeLimit, StopReason::Cancelled] {
        let items = json(&["[1]", "[2]"]);
        let [one, batch] = both(4, Codec::Json, &items, reason.as_flag());
        assert_eq!(one, batch);
        assert!(String::from_utf8_lossy(&one.1).contains("not started"));
    }
}

#[test]
fn a_panic_costs_only_its_item_in_the_batch_glue() {
    let items = json(&["[8, 2]", "[1, 0]", "[9, 3]"]);
    let [_, (n, out)] = both(1, Codec::Json, &items, 0);
    assert_eq!(n, 3);
    let got: Vec<(u8, String)> = codec::result_records(&out[6..])
        .map(|r| {
            let (s, b) = r.unwrap();
            (s, String::from_utf8_lossy(b).into_owned())
        })
        .collect();
    assert_eq!(got[0], (0, "4".into()));
    assert_eq!(got[1].0, billiard_plugin_api::Status::Panic as u8);
    assert!(got[1].1.contains("divide by zero: 1 / 0"), "{}", got[1].1);
    assert_eq!(got[2], (0, "3".into()));
}
