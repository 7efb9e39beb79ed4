//! `bytes`: tasks over byte buffers, used by the payload benchmarks.

use billiard_plugin_api::{codec::Bytes, export_plugin, task};

/// Length of the buffer.
#[task]
pub fn len(data: Vec<u8>) -> u64 {
    data.len() as u64
}

/// FNV-1a 64-bit checksum of the buffer (reads every byte).
#[task]
pub fn checksum(data: Vec<u8>) -> u64 {
    fnv1a(&data)
}

/// Returns the buffer unchanged.
#[task]
pub fn echo(data: Vec<u8>) -> Vec<u8> {
    data
}

/// A buffer of `n` bytes, each `fill`.
#[task]
pub fn make(n: u64, fill: u8) -> Result<Vec<u8>, String> {
    let n = usize::try_from(n).map_err(|_| format!("{n} bytes do not fit in memory"))?;
    Ok(vec![fill; n])
}

/// The parts joined into one buffer: byte strings nested in a list (a
/// Celery client's `[b'a', b'b']`, issue 29 item 5).
#[task]
pub fn join(parts: Vec<Vec<u8>>) -> Vec<u8> {
    parts.concat()
}

/// Its strings, unchanged: what a Celery client's datetime, date, time,
/// UUID and Decimal arguments reach a task as (their ISO 8601 or decimal
/// text, issue 29 item 5).
#[task]
pub fn texts(items: Vec<String>) -> Vec<String> {
    items
}

/// The buffer cut into pieces of `size` bytes (the last may be shorter):
/// byte strings nested in a result, as `codec::Bytes` so a Celery client
/// reads back a list of `bytes` (issue 29 item 5).
#[task]
pub fn split(data: Vec<u8>, size: u64) -> Result<Vec<Bytes>, String> {
    let size = usize::try_from(size)
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("size {size} is not a positive length"))?;
    Ok(data.chunks(size).map(|c| Bytes(c.to_vec())).collect())
}

/// FNV-1a, 64 bit.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

export_plugin!(name: "bytes", tasks: [len, checksum, echo, make, join, texts, split]);
