//! The retries of a stream's jobs (`imap*`, `map*`, `run`): a chunk comes
//! back whole; its failed items that are retried are cut out of it (the
//! rest go on at once, as pieces of the chunk) and each runs again as a
//! job of its own; a retried item's final outcome goes out with its
//! attempts. See the parent module.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

use billiard_plugin_api::{codec, Status};

use super::{lock, Retried, Retries, Rule, Spec, Track};
use crate::error::{ErrorKind, TaskError};
use crate::pool::job::{ChunkBody, ChunkResult, ChunkSender, Dispatch, JobId, Reply};

/// The retry side of a stream's `ChunkSender` (`imap*`, `map*`, `run`):
/// consulted by `ChunkSender::send` for every chunk of outcomes.
pub(crate) struct StreamRetry {
    retries: Weak<Retries>,
    /// The stream's rule, before each task's options (see `Rule::for_task`).
    rule: Arc<Rule>,
    state: Mutex<StreamState>,
}

#[derive(Default)]
struct StreamState {
    /// Chunks sent and not wholly answered, by first index.
    chunks: BTreeMap<u64, Chunk>,
    /// Items being retried, by index.
    items: HashMap<u64, Item>,
    /// Items whose job emitted stream items (never retried).
    emitted: HashSet<u64>,
}

struct Chunk {
    count: u32,
    left: u32,
    first_job: JobId,
    spec: Spec,
    rule: Arc<Rule>,
}

struct Item {
    original: JobId,
    spec: Spec,
    rule: Arc<Rule>,
    track: Track,
}

impl StreamRetry {
    pub(crate) fn new(retries: &Arc<Retries>, rule: Arc<Rule>) -> Arc<StreamRetry> {
        Arc::new(StreamRetry {
            retries: Arc::downgrade(retries),
            rule,
            state: Mutex::default(),
        })
    }

    /// The stream's rule (before each task's options).
    pub(crate) fn rule(&self) -> &Arc<Rule> {
        &self.rule
    }

    /// Keeps what it takes to run again the items of `d`, a chunk whose
    /// items are numbered from `first_index` and retried by `rule`.
    pub(crate) fn register(&self, first_index: u64, d: &Dispatch, rule: Arc<Rule>) {
        lock(&self.state).chunks.insert(
            first_index,
            Chunk {
                count: d.count,
                left: d.count,
                first_job: d.first_job,
                spec: Spec::of(d),
                rule,
            },
        );
    }

    /// The pieces of `chunk` to deliver now: all of it, or what is left
    /// once the failed items that are retried are cut out; for an item that
    /// was retried, its final outcome with its attempts (or nothing while
    /// it is retried again).
    pub(crate) fn route(&self, chunk: ChunkResult, tx: &ChunkSender) -> Vec<ChunkResult> {
        let first = chunk.first_index;
        match &chunk.body {
            ChunkBody::Items(_) => {
                lock(&self.state).emitted.insert(first);
                return vec![chunk];
            }
            ChunkBody::Progress(..) | ChunkBody::Retried(_) => return vec![chunk],
            _ if chunk.count == 0 => return vec![chunk],
            _ => {}
        }
        let mut st = lock(&self.state);
        if chunk.count == 1 && st.items.contains_key(&first) {
            return self.next_attempt(&mut st, chunk, tx);
        }
        let Some((&key, entry)) = st.chunks.range_mut(..=first).next_back() else {
            return vec![chunk];
        };
        let offset = first.saturating_sub(key);
        if offset >= u64::from(entry.count) {
            return vec![chunk];
        }
        entry.left = entry.left.saturating_sub(chunk.count);
        let (first_job, spec, whole) = (entry.first_job, entry.spec.clone(), entry.count);
        let rule = entry.rule.clone();
        if entry.left == 0 {
            st.chunks.remove(&key);
        }
        if !st.emitted.is_empty() {
            for i in 0..u64::from(chunk.count) {
                if st.emitted.remove(&first.saturating_add(i)) {
                    // Its items went out: its failure is final.
                    return vec![chunk];
                }
            }
        }
        if let ChunkBody::Records(buf) = &chunk.body {
            // Cut only a well-formed batch (the supervisor sends no other).
            let mut n = 0u32;
            let mut whole = true;
            for rec in codec::result_records(buf) {
                whole &= rec.is_some();
                n = n.saturating_add(1);
            }
            if !whole || n != chunk.count {
                return vec![chunk];
            }
        }
        let failed = failed_items(&chunk.body, chunk.count);
        if failed.is_empty() || !spec.sendable() {
            return vec![chunk];
        }
        let Some(retries) = self.retries.upgrade() else {
            return vec![chunk];
        };
        let args: Vec<&[u8]> = if whole == 1 {
            vec![spec.payload.as_slice()]
        } else {
            codec::records(&spec.payload).map_while(|r| r).collect()
        };
        let mut cut = Vec::new();
        for (k, e) in failed {
            let Some(delay) = rule.decide(&e, 0) else {
                continue;
            };
            let index = first.saturating_add(u64::from(k));
            let at = index.saturating_sub(key);
            let Some(a) = usize::try_from(at).ok().and_then(|i| args.get(i)) else {
                continue;
            };
            let item_spec = Spec {
                payload: Arc::new(a.to_vec()),
                ..spec.clone()
            };
            let original = JobId(first_job.0.saturating_add(at));
            let id = retries.next_id();
            let d = item_spec.dispatch(id, reply(tx, index), 1);
            match retries.schedule(original, d, delay) {
                Ok(()) => {
                    tracing::debug!(
                        "stream item {index} (job {}) failed ({}); retry 1 in {delay:?} as job {}",
                        original.0,
                        e.kind,
                        id.0
                    );
                    let mut track = Track::default();
                    track.record(&e);
                    st.items.insert(
                        index,
                        Item {
                            original,
                            spec: item_spec,
                            rule: rule.clone(),
                            track,
                        },
                    );
                    cut.push(k);
                }
                Err(mut d) => d.delivered = d.count,
            }
        }
        drop(st);
        if cut.is_empty() {
            return vec![chunk];
        }
        split(chunk, &cut)
    }

    /// The outcome of a retry of the item at `chunk.first_index`.
    fn next_attempt(
        &self,
        st: &mut StreamState,
        chunk: ChunkResult,
        tx: &ChunkSender,
    ) -> Vec<ChunkResult> {
        let index = chunk.first_index;
        let outcome = match chunk.body {
            ChunkBody::One(o) => o,
            ChunkBody::Failed(e) => Err(e),
            ChunkBody::Records(buf) => match codec::result_records(&buf).next().flatten() {
                Some((status, bytes)) => match Status::from_u8(status) {
                    Some(s) => crate::plugin::outcome(s, bytes.to_vec()),
                    None => Err(TaskError::new(
                        ErrorKind::WorkerLost,
                        format!("unknown status {status}"),
                    )),
                },
                None => Err(TaskError::new(
                    ErrorKind::WorkerLost,
                    "the worker returned a truncated batch result",
                )),
            },
            other => {
                return vec![ChunkResult {
                    first_index: index,
                    count: chunk.count,
                    body: other,
                }]
            }
        };
        let emitted = st.emitted.remove(&index);
        let retries = self.retries.upgrade();
        if let (Err(e), Some(retries), false) = (&outcome, &retries, emitted) {
            if let Some(item) = st.items.get_mut(&index) {
                if let Some(delay) = item.rule.decide(e, item.track.retries) {
                    let n = item.track.retries.saturating_add(1);
                    let id = retries.next_id();
                    let d = item.spec.dispatch(id, reply(tx, index), n);
                    match retries.schedule(item.original, d, delay) {
                        Ok(()) => {
                            tracing::debug!(
                                "stream item {index} (job {}) failed ({}); retry {n} in {delay:?} as job {}",
                                item.original.0,
                                e.kind,
                                id.0
                            );
                            item.track.record(e);
                            return Vec::new();
                        }
                        Err(mut d) => d.delivered = d.count,
                    }
                }
            }
        }
        let Some(item) = st.items.remove(&index) else {
            return Vec::new();
        };
        if let Some(retries) = retries {
            retries.settle(item.original);
        }
        vec![ChunkResult {
            first_index: index,
            count: 1,
            body: ChunkBody::Retried(Box::new(Retried {
                outcome,
                attempts: item.track.attempts().unwrap_or_default(),
            })),
        }]
    }
}

/// The reply of a retry of item `index`: the stream of `tx`, through a
/// sender that routes its outcome here again.
fn reply(tx: &ChunkSender, index: u64) -> Reply {
    Reply::Stream {
        tx: tx.clone(),
        first_index: index,
    }
}

/// The items of a chunk's outcomes that failed: their offset in the chunk
/// and their error (a task's `Failure` detail decoded, so its directive
/// counts).
fn failed_items(body: &ChunkBody, count: u32) -> Vec<(u32, TaskError)> {
    match body {
        ChunkBody::One(Err(e)) => vec![(0, e.clone())],
        ChunkBody::Failed(e) => (0..count).map(|k| (k, e.clone())).collect(),
        ChunkBody::Records(buf) => {
            let mut out = Vec::new();
            for (k, rec) in (0..count).zip(codec::result_records(buf)) {
                let Some((status, bytes)) = rec else { break };
                match Status::from_u8(status) {
                    Some(Status::Ok) => {}
                    Some(s) => {
                        if let Err(e) = crate::plugin::outcome(s, bytes.to_vec()) {
                            out.push((k, e));
                        }
                    }
                    None => out.push((
                        k,
                        TaskError::new(ErrorKind::WorkerLost, format!("unknown status {status}")),
                    )),
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

/// `chunk` without the items at offsets `cut` (ascending): the runs
/// between them, each as a chunk of its own.
fn split(chunk: ChunkResult, cut: &[u32]) -> Vec<ChunkResult> {
    let count = chunk.count;
    // Byte ranges of each record, for cutting a batch result.
    let bounds: Vec<(usize, usize)> = match &chunk.body {
        ChunkBody::Records(buf) => {
            let mut at = 0usize;
            let mut v = Vec::new();
            for rec in codec::result_records(buf) {
                let Some((_, bytes)) = rec else { break };
                let end = at.saturating_add(5).saturating_add(bytes.len());
                v.push((at, end));
                at = end;
            }
            v
        }
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    let mut start = 0u32;
    let ends = cut.iter().copied().chain(std::iter::once(count));
    for stop in ends {
        if stop > start {
            let body = match &chunk.body {
                ChunkBody::Failed(e) => Some(ChunkBody::Failed(e.clone())),
                ChunkBody::Records(buf) => {
                    let a = bounds.get(start as usize).map(|b| b.0);
                    let last = (stop as usize).saturating_sub(1);
                    let b = bounds.get(last).map(|b| b.1);
                    match (a, b) {
                        (Some(a), Some(b)) => buf.get(a..b).map(|r| ChunkBody::Records(r.to_vec())),
                        _ => None,
                    }
                }
                _ => None,
            };
            if let Some(body) = body {
                out.push(ChunkResult {
                    first_index: chunk.first_index.saturating_add(u64::from(start)),
                    count: stop.saturating_sub(start),
                    body,
                });
            }
        }
        start = stop.saturating_add(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(items: &[(Status, &[u8])]) -> Vec<u8> {
        let mut buf = Vec::new();
        for (st, b) in items {
            buf.push(*st as u8);
            buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
            buf.extend_from_slice(b);
        }
        buf
    }

    #[test]
    fn k23_a_chunk_without_its_retried_items_keeps_the_rest_in_order() {
        let buf = records(&[
            (Status::Ok, b"1"),
            (Status::Panic, b"boom"),
            (Status::Ok, b"333"),
            (Status::Ok, b"4"),
            (Status::TaskError, b"bad"),
        ]);
        let chunk = ChunkResult {
            first_index: 10,
            count: 5,
            body: ChunkBody::Records(buf),
        };
        let failed: Vec<(u32, ErrorKind)> = failed_items(&chunk.body, 5)
            .into_iter()
            .map(|(k, e)| (k, e.kind))
            .collect();
        assert_eq!(failed, [(1, ErrorKind::Panic), (4, ErrorKind::TaskError)]);
        let pieces = split(chunk, &[1, 4]);
        let got: Vec<(u64, u32, Vec<u8>)> = pieces
            .into_iter()
            .map(|p| match p.body {
                ChunkBody::Records(b) => (p.first_index, p.count, b),
                _ => panic!("records expected"),
            })
            .collect();
        assert_eq!(
            got,
            [
                (10, 1, records(&[(Status::Ok, b"1")])),
                (12, 2, records(&[(Status::Ok, b"333"), (Status::Ok, b"4")])),
            ]
        );
        // A chunk that failed whole keeps its other items' failure.
        let whole = ChunkResult {
            first_index: 0,
            count: 4,
            body: ChunkBody::Failed(TaskError::new(ErrorKind::WorkerLost, "gone")),
        };
        let pieces = split(whole, &[0, 2]);
        let got: Vec<(u64, u32)> = pieces.iter().map(|p| (p.first_index, p.count)).collect();
        assert_eq!(got, [(1, 1), (3, 1)]);
    }
}
