//! Fuzzing the decoders with property tests, and workers that write
//! garbage on their IPC socket.
//!
//! The decoders that take bytes from another process or from users must
//! never panic (nor abort) on any input, and what the encoders write must
//! decode to what was encoded:
//!
//! - the worker frame format: `ipc::decode_body` and `FrameReader` (fed in
//!   arbitrary pieces, including frames larger than its read chunk);
//! - the argument and result codec: `codec::decode` (JSON and bincode) into
//!   a range of types, `decode_no_args`, and the batch `records` /
//!   `result_records`.
//!
//! Each property runs `PROPTEST_CASES` cases (default 256), so CI time is
//! fixed; a failure prints the minimal input. Then, end to end, workers
//! that write garbage into their socket, many in a row: each costs its
//! worker and its job (`worker_lost`), never the host or another job.

mod common;

use std::collections::BTreeMap;
use std::io::Read;

use billiard_host::ipc::{
    self, decode_body, encode_arena, encode_done, encode_done_shm, encode_exit, encode_run,
    encode_run_shm, ArenaInfo, DoneHeader, Frame, FrameError, FrameReader, RunHeader, ShmRef,
};
use billiard_host::{Codec, ErrorKind, PoolBuilder};
use billiard_plugin_api::codec;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        // Minimal failing inputs are printed; no regression files in tests/.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ----- the frame format ----------------------------------------------------

/// A frame to encode.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Spec {
    Run(RunHeader, Vec<u8>),
    Done(DoneHeader, Vec<u8>),
    Exit,
    Arena(ArenaInfo),
    RunShm(RunHeader, ShmRef),
    DoneShm(DoneHeader, ShmRef),
}

impl Spec {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Spec::Run(h, p) => {
                out.extend_from_slice(&encode_run(h, p.len()).unwrap());
                out.extend_from_slice(p);
            }
            Spec::Done(h, p) => {
                out.extend_from_slice(&encode_done(h, p.len()).unwrap());
                out.extend_from_slice(p);
            }
            Spec::Exit => out.extend_from_slice(&encode_exit()),
            Spec::Arena(a) => out.extend_from_slice(&encode_arena(a)),
            Spec::RunShm(h, at) => out.extend_from_slice(&encode_run_shm(h, *at)),
            Spec::DoneShm(h, at) => out.extend_from_slice(&encode_done_shm(h, *at)),
        }
    }

    fn matches(&self, f: &Frame<'_>) -> bool {
        match (self, f) {
            (Spec::Run(h, p), Frame::Run(fh, fp)) => h == fh && p.as_slice() == *fp,
            (Spec::Done(h, p), Frame::Done(fh, fp)) => h == fh && p.as_slice() == *fp,
            (Spec::Exit, Frame::Exit) => true,
            (Spec::Arena(a), Frame::Arena(fa)) => a == fa,
            (Spec::RunShm(h, at), Frame::RunShm(fh, fat)) => h == fh && at == fat,
            (Spec::DoneShm(h, at), Frame::DoneShm(fh, fat)) => h == fh && at == fat,
            _ => false,
        }
    }
}

/// Payloads: mostly small, sometimes larger than the reader's 64 KiB read
/// chunk (the buffer must grow and compact correctly).
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        40 => proptest::collection::vec(any::<u8>(), 0..48),
        1 => (60_000usize..140_000, any::<u8>()).prop_map(|(n, b)| {
            (0..n).map(|i| b.wrapping_add(i as u8)).collect()
        }),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    let codec = prop_oneof![Just(Codec::Bincode), Just(Codec::Json)];
    let run = (
        any::<u64>(),
        any::<u16>(),
        any::<u32>(),
        codec,
        any::<u32>(),
        any::<u32>(),
        payload(),
    )
        .prop_map(|(job, plugin, task, codec, attempt, count, p)| {
            Spec::Run(
                RunHeader {
                    job,
                    plugin,
                    task,
                    codec,
                    attempt,
                    count,
                },
                p,
            )
        });
    let done = (
        any::<u64>(),
        any::<u32>(),
        any::<u8>(),
        any::<u8>(),
        payload(),
    )
        .prop_map(|(job, count, flags, status, p)| {
            Spec::Done(
                DoneHeader {
                    job,
                    count,
                    flags,
                    status,
                },
                p,
            )
        });
    let shm_ref = (any::<u64>(), any::<u64>()).prop_map(|(off, len)| ShmRef { off, len });
    let arena = (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(i, o, t)| {
        Spec::Arena(ArenaInfo {
            in_cap: i,
            out_cap: o,
            threshold: t,
        })
    });
    let run_shm = (run_header(), shm_ref.clone()).prop_map(|(h, at)| Spec::RunShm(h, at));
    let done_shm = (done_header(), shm_ref).prop_map(|(h, at)| Spec::DoneShm(h, at));
    prop_oneof![
        4 => run,
        4 => done,
        1 => Just(Spec::Exit),
        1 => arena,
        2 => run_shm,
        2 => done_shm,
    ]
}

fn run_header() -> impl Strategy<Value = RunHeader> {
    let codec = prop_oneof![Just(Codec::Bincode), Just(Codec::Json)];
    (
        any::<u64>(),
        any::<u16>(),
        any::<u32>(),
        codec,
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(job, plugin, task, codec, attempt, count)| RunHeader {
            job,
            plugin,
            task,
            codec,
            attempt,
            count,
        })
}

fn done_header() -> impl Strategy<Value = DoneHeader> {
    (any::<u64>(), any::<u32>(), any::<u8>(), any::<u8>()).prop_map(
        |(job, count, flags, status)| DoneHeader {
            job,
            count,
            flags,
            status,
        },
    )
}

/// A non-blocking stream that hands out `data` in pieces: each `read`
/// returns at most the next piece, and `WouldBlock` between pieces; after
/// the last one, EOF.
struct Pieces {
    data: Vec<u8>,
    pos: usize,
    cuts: Vec<usize>,
    blocked: bool,
}

impl Pieces {
    fn new(data: Vec<u8>, cuts: &[usize]) -> Pieces {
        let mut cuts: Vec<usize> = cuts
            .iter()
            .map(|c| c % (data.len() + 1))
            .chain([data.len()])
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        Pieces {
            data,
            pos: 0,
            cuts,
            blocked: false,
        }
    }

    fn at_end(&self) -> bool {
        self.pos == self.data.len()
    }
}

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at_end() {
            return Ok(0);
        }
        if self.blocked {
            self.blocked = false;
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let cut = self
            .cuts
            .iter()
            .copied()
            .find(|&c| c > self.pos)
            .unwrap_or(self.data.len());
        let n = (cut - self.pos).min(buf.len());
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        if self.pos == cut {
            self.blocked = true;
        }
        Ok(n)
    }
}

/// What a correct reader yields for a complete byte stream: the frames in
/// order, up to and including the first error; `None` marks an incomplete
/// tail.
fn reference(bytes: &[u8], max_frame: usize) -> Vec<Result<Vec<u8>, FrameError>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 4 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > max_frame {
            out.push(Err(FrameError::TooLarge(len)));
            return out;
        }
        if rest.len() < 4 + len {
            break;
        }
        let body = &rest[4..4 + len];
        match decode_body(body) {
            // As `drain` sees it: the frame decoded (an EXIT ignores
            // trailing bytes, so the raw body may be longer).
            Ok(f) => out.push(Ok(body_of(&f))),
            Err(e) => {
                out.push(Err(e));
                return out;
            }
        }
        rest = &rest[4 + len..];
    }
    out
}

/// Feeds `bytes` in pieces to a reader and collects what it yields, like
/// the supervisor: fill, then take every whole frame, stop at an error.
/// Frames are returned as their bodies re-encoded (`Frame` borrows).
fn drain(bytes: Vec<u8>, cuts: &[usize], max_frame: usize) -> Vec<Result<Vec<u8>, FrameError>> {
    let mut reader = FrameReader::new(max_frame);
    let mut src = Pieces::new(bytes, cuts);
    let mut got = Vec::new();
    loop {
        let open = reader.fill(&mut src).expect("reading from memory");
        loop {
            match reader.next_frame() {
                Ok(Some(f)) => got.push(Ok(body_of(&f))),
                Ok(None) => break,
                Err(e) => {
                    got.push(Err(e));
                    return got;
                }
            }
        }
        if !open {
            assert!(src.at_end(), "EOF reported before the end of the input");
            return got;
        }
    }
}

/// The body bytes (kind + header + payload) a frame was decoded from.
fn body_of(f: &Frame<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    match f {
        Frame::Run(h, p) => {
            v.extend_from_slice(&encode_run(h, p.len()).unwrap()[4..]);
            v.extend_from_slice(p);
        }
        Frame::Done(h, p) => {
            v.extend_from_slice(&encode_done(h, p.len()).unwrap()[4..]);
            v.extend_from_slice(p);
        }
        Frame::Exit => v.push(ipc::KIND_EXIT),
        Frame::Ready => v.push(ipc::KIND_READY),
        Frame::Items(job, count, p) => {
            v.extend_from_slice(&ipc::encode_items(*job, *count, p.len()).unwrap()[4..]);
            v.extend_from_slice(p);
        }
        Frame::Progress(job, done, total) => {
            v.extend_from_slice(&ipc::encode_progress(*job, *done, *total)[4..])
        }
        Frame::Arena(a) => v.extend_from_slice(&encode_arena(a)[4..]),
        Frame::RunShm(h, at) => v.extend_from_slice(&encode_run_shm(h, *at)[4..]),
        Frame::DoneShm(h, at) => v.extend_from_slice(&encode_done_shm(h, *at)[4..]),
    }
    v
}

proptest! {
    #![proptest_config(config())]

    /// Any body decodes or is refused, never panics; what decodes
    /// re-encodes to the same bytes (EXIT ignores trailing bytes).
    #[test]
    fn decode_body_never_panics_and_round_trips(
        kind in prop_oneof![
            Just(ipc::KIND_RUN),
            Just(ipc::KIND_DONE),
            Just(ipc::KIND_EXIT),
            Just(ipc::KIND_READY),
            Just(ipc::KIND_ARENA),
            Just(ipc::KIND_RUN_SHM),
            Just(ipc::KIND_DONE_SHM),
            any::<u8>(),
        ],
        // Up to 64 random bytes, or exactly the length of a shared-memory
        // frame (which is all such a frame may be).
        rest in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::collection::vec(any::<u8>(), ipc::ARENA_FRAME - 5),
            proptest::collection::vec(any::<u8>(), ipc::RUN_SHM_FRAME - 5),
            proptest::collection::vec(any::<u8>(), ipc::DONE_SHM_FRAME - 5),
        ],
    ) {
        let mut body = vec![kind];
        body.extend_from_slice(&rest);
        match decode_body(&body) {
            Ok(Frame::Exit) => prop_assert_eq!(kind, ipc::KIND_EXIT),
            // PROGRESS, like EXIT, ignores trailing bytes.
            Ok(f @ Frame::Progress(..)) => prop_assert_eq!(&body_of(&f)[..], &body[..ipc::PROGRESS_FRAME - 4]),
            Ok(f) => prop_assert_eq!(body_of(&f), body),
            Err(FrameError::Short { kind: k, len }) => {
                prop_assert_eq!(k, kind);
                prop_assert_eq!(len, body.len());
            }
            Err(FrameError::BadCodec(_)) => {
                prop_assert!([ipc::KIND_RUN, ipc::KIND_RUN_SHM].contains(&kind))
            }
            Err(FrameError::Long { kind: k, len }) => {
                prop_assert_eq!(k, kind);
                prop_assert_eq!(len, body.len());
                prop_assert!([ipc::KIND_ARENA, ipc::KIND_RUN_SHM, ipc::KIND_DONE_SHM, ipc::KIND_READY].contains(&k));
            }
            Err(FrameError::UnknownKind(k)) => {
                prop_assert_eq!(k, kind);
                prop_assert!(![
                    ipc::KIND_RUN,
                    ipc::KIND_DONE,
                    ipc::KIND_EXIT,
                    ipc::KIND_READY,
                    ipc::KIND_ARENA,
                    ipc::KIND_RUN_SHM,
                    ipc::KIND_DONE_SHM,
                ]
                .contains(&k));
            }
            Err(e) => prop_assert!(false, "unexpected error {e:?}"),
        }
    }

    /// Frames written back to back come out of the reader unchanged and in
    /// order, however the stream is cut into reads.
    #[test]
    fn frames_survive_any_split(
        specs in proptest::collection::vec(spec(), 0..12),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let mut bytes = Vec::new();
        for s in &specs {
            s.encode(&mut bytes);
        }
        let total = bytes.len();
        let mut reader = FrameReader::new(ipc::DEFAULT_MAX_FRAME);
        let mut src = Pieces::new(bytes, &cuts);
        let mut next = 0;
        loop {
            let open = reader.fill(&mut src).unwrap();
            while let Some(f) = reader.next_frame().unwrap() {
                prop_assert!(next < specs.len(), "an extra frame: {f:?}");
                prop_assert!(specs[next].matches(&f), "frame {next}: {f:?}, want {:?}", specs[next]);
                next += 1;
            }
            if !open {
                break;
            }
        }
        prop_assert_eq!(next, specs.len(), "frames missing from {} bytes", total);
        prop_assert_eq!(reader.buffered(), 0);
    }

    /// Arbitrary bytes in arbitrary pieces: the reader yields exactly what
    /// a straightforward parser of the whole stream yields, stops at the
    /// first error, and never panics or over-allocates past its limit.
    #[test]
    fn frame_reader_agrees_with_a_reference_parser_on_garbage(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            // Plausible frames: small lengths and known kinds, then noise.
            proptest::collection::vec(
                prop_oneof![Just(0u8), Just(1), Just(2), Just(10), Just(19), Just(40), Just(41), Just(42), any::<u8>()],
                0..256,
            ),
        ],
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
        // Small limits: a garbage length under the limit is buffered for
        // (see `a_lying_length_prefix_does_not_reserve_the_announced_size`).
        max_frame in prop_oneof![Just(0usize), 1usize..64, Just(1usize << 16)],
    ) {
        let want = reference(&bytes, max_frame);
        let got = drain(bytes, &cuts, max_frame);
        prop_assert_eq!(got, want);
    }

    /// A frame cut short by EOF is never reported as a frame.
    #[test]
    fn a_truncated_frame_is_not_a_frame(spec in spec(), keep in any::<usize>()) {
        let mut bytes = Vec::new();
        spec.encode(&mut bytes);
        let keep = keep % bytes.len();
        bytes.truncate(keep);
        let got = drain(bytes, &[], ipc::DEFAULT_MAX_FRAME);
        prop_assert!(got.is_empty(), "{got:?}");
    }
}

/// Four bytes announcing a frame just under the limit must not make the
/// reader allocate (and zero) the announced size before the bytes arrive:
/// every worker could make the supervisor hold `max_frame` (1 GiB by
/// default) by writing a length and nothing else.
#[test]
fn a_lying_length_prefix_does_not_reserve_the_announced_size() {
    let announced = (ipc::DEFAULT_MAX_FRAME - 1) as u32;
    let before = common::rss_kib();
    let mut reader = FrameReader::new(ipc::DEFAULT_MAX_FRAME);
    let mut src = Pieces::new(announced.to_le_bytes().to_vec(), &[]);
    src.blocked = false;
    assert!(reader.fill(&mut src).unwrap() || src.at_end());
    assert_eq!(reader.next_frame().unwrap(), None, "incomplete frame");
    let grown_mib = common::rss_kib().saturating_sub(before) / 1024;
    drop(reader);
    assert!(
        grown_mib < 128,
        "4 bytes of input grew the reader by {grown_mib} MiB (it reserved the announced {announced} bytes)"
    );
}

// ----- the argument and result codec --------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Shape {
    Circle { radius: f64 },
    Rect { w: f64, h: f64 },
    Dot,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    id: u32,
    name: String,
    shape: Shape,
    note: Option<String>,
    tags: BTreeMap<String, i32>,
    #[serde(with = "serde_bytes")]
    blob: Vec<u8>,
}

/// Decodes `bytes` in `codec` into a range of argument types; must not
/// panic or abort whatever the bytes are.
fn decode_all(c: Codec, bytes: &[u8]) {
    let _ = codec::decode::<(u64,)>(c, bytes);
    let _ = codec::decode::<(i64, i64)>(c, bytes);
    let _ = codec::decode::<(f64,)>(c, bytes);
    let _ = codec::decode::<(String,)>(c, bytes);
    let _ = codec::decode::<String>(c, bytes);
    let _ = codec::decode::<(Vec<u8>,)>(c, bytes);
    let _ = codec::decode::<(serde_bytes::ByteBuf,)>(c, bytes);
    let _ = codec::decode::<(Vec<String>, Option<f64>)>(c, bytes);
    let _ = codec::decode::<(Vec<u64>,)>(c, bytes);
    let _ = codec::decode::<(BTreeMap<String, i32>,)>(c, bytes);
    let _ = codec::decode::<(Item, f64)>(c, bytes);
    let _ = codec::decode::<(Shape,)>(c, bytes);
    let _ = codec::decode::<(char, bool, u8, i128)>(c, bytes);
    let _ = codec::decode::<Vec<(u32, String)>>(c, bytes);
    let _ = codec::decode_no_args(c, bytes);
}

/// Bytes that look like bincode: varint markers (250-254 announce 2-16 byte
/// integers, i.e. huge lengths) mixed with noise.
fn bincode_like() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            3 => any::<u8>(),
            1 => 250u8..=254,
            1 => Just(0xffu8),
            1 => 0u8..8,
        ],
        0..48,
    )
}

fn json_like() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        "[\\[\\]{}\":,0-9a-z.eE+\\- \\\\]{0,48}".prop_map(String::into_bytes),
    ]
}

fn item() -> impl Strategy<Value = Item> {
    let shape = prop_oneof![
        (-1e9f64..1e9).prop_map(|radius| Shape::Circle { radius }),
        (-1e9f64..1e9, -1e9f64..1e9).prop_map(|(w, h)| Shape::Rect { w, h }),
        Just(Shape::Dot),
    ];
    (
        any::<u32>(),
        ".*",
        shape,
        proptest::option::of(".*"),
        proptest::collection::btree_map(".{0,8}", any::<i32>(), 0..4),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(id, name, shape, note, tags, blob)| Item {
            id,
            name,
            shape,
            note,
            tags,
            blob,
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn codec_decode_never_panics_on_bincode_garbage(bytes in bincode_like()) {
        decode_all(Codec::Bincode, &bytes);
    }

    #[test]
    fn codec_decode_never_panics_on_json_garbage(bytes in json_like()) {
        decode_all(Codec::Json, &bytes);
    }

    /// Arguments and results survive a round trip in both codecs, and a
    /// value never decodes with bytes left over or missing.
    #[test]
    fn codec_round_trips(
        a in any::<u64>(),
        b in any::<i64>(),
        s in ".*",
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        f in proptest::option::of(-1e300f64..1e300),
        items in proptest::collection::vec(item(), 0..3),
    ) {
        let value = (a, b, s, serde_bytes::ByteBuf::from(bytes), f, items);
        for c in [Codec::Bincode, Codec::Json] {
            let enc = codec::encode(c, &value).unwrap();
            let back: (u64, i64, String, serde_bytes::ByteBuf, Option<f64>, Vec<Item>) =
                codec::decode(c, &enc).unwrap();
            prop_assert_eq!(&back, &value);
            if c == Codec::Bincode && !enc.is_empty() {
                // Any proper prefix is an error, never a panic or a value.
                let cut = enc.len() - 1;
                prop_assert!(codec::decode::<(u64, i64, String, serde_bytes::ByteBuf, Option<f64>, Vec<Item>)>(c, &enc[..cut]).is_err());
                let mut longer = enc.clone();
                longer.push(0);
                prop_assert!(codec::decode::<(u64, i64, String, serde_bytes::ByteBuf, Option<f64>, Vec<Item>)>(c, &longer).is_err());
            }
        }
    }

    /// Batch records: arbitrary bytes never panic; the records yielded fit
    /// in the buffer and a truncated buffer ends with exactly one `None`.
    #[test]
    fn records_never_panic_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let mut used = 0;
        let mut broken = 0;
        for r in codec::records(&bytes) {
            match r {
                Some(rec) => used += 4 + rec.len(),
                None => broken += 1,
            }
        }
        prop_assert!(used <= bytes.len() && broken <= 1);
        prop_assert_eq!(broken == 1, used < bytes.len());
        let mut used = 0;
        let mut broken = 0;
        for r in codec::result_records(&bytes) {
            match r {
                Some((_, rec)) => used += 5 + rec.len(),
                None => broken += 1,
            }
        }
        prop_assert!(used <= bytes.len() && broken <= 1);
        prop_assert_eq!(broken == 1, used < bytes.len());
    }

    #[test]
    fn records_round_trip_and_truncate_cleanly(
        recs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..10),
        status in proptest::collection::vec(0u8..7, 10),
        cut in any::<usize>(),
    ) {
        let mut buf = Vec::new();
        let mut results = Vec::new();
        for (i, r) in recs.iter().enumerate() {
            codec::push_record(&mut buf, r);
            results.push(status[i]);
            results.extend_from_slice(&(r.len() as u32).to_le_bytes());
            results.extend_from_slice(r);
        }
        let got: Vec<Vec<u8>> = codec::records(&buf).map(|r| r.unwrap().to_vec()).collect();
        prop_assert_eq!(&got, &recs);
        let got: Vec<(u8, Vec<u8>)> = codec::result_records(&results)
            .map(|r| r.map(|(s, b)| (s, b.to_vec())).unwrap())
            .collect();
        let want: Vec<(u8, Vec<u8>)> = recs.iter().enumerate().map(|(i, r)| (status[i], r.clone())).collect();
        prop_assert_eq!(got, want);
        // Cut anywhere: whole records, then one None if the cut split one.
        let cut = cut % (buf.len() + 1);
        let items: Vec<Option<&[u8]>> = codec::records(&buf[..cut]).collect();
        let whole = items.iter().take_while(|r| r.is_some()).count();
        prop_assert!(items.len() == whole || items.len() == whole + 1);
        prop_assert!(items[..whole].iter().zip(&recs).all(|(a, b)| a.unwrap() == b.as_slice()));
    }
}

/// A length prefix far beyond the input must be refused, not allocated:
/// a bincode varint `253` announces a u64 length. (Found by the property
/// above: `decode::<(String,)>` of these 9 bytes used to abort the process
/// with "memory allocation of 1099511627776 bytes failed".)
#[test]
fn huge_length_prefixes_are_errors_not_allocations() {
    for len in [1u64 << 33, 1 << 40, 1 << 46, 1 << 62, u64::MAX] {
        let mut b = vec![253u8];
        b.extend_from_slice(&len.to_le_bytes());
        assert!(codec::decode::<(String,)>(Codec::Bincode, &b).is_err());
        assert!(codec::decode::<(Vec<u8>,)>(Codec::Bincode, &b).is_err());
        assert!(codec::decode::<(serde_bytes::ByteBuf,)>(Codec::Bincode, &b).is_err());
        assert!(codec::decode::<(Vec<u64>,)>(Codec::Bincode, &b).is_err());
        assert!(codec::decode::<(BTreeMap<String, u8>,)>(Codec::Bincode, &b).is_err());
    }
    // A large, legitimate value still decodes.
    let big = "x".repeat(3 << 20);
    let enc = codec::encode(Codec::Bincode, &(big.clone(), vec![7u64; 100_000])).unwrap();
    let (s, v): (String, Vec<u64>) = codec::decode(Codec::Bincode, &enc).unwrap();
    assert_eq!((s.len(), v.len()), (big.len(), 100_000));
}

// ----- workers that write garbage on their socket --------------------------

fn builder(workers: usize) -> PoolBuilder {
    common::pool_builder(workers, &["math", "faults"])
}

/// The caller asks for the wrong result type: the host refuses the bytes
/// (the caller's error, `bad_args`, naming both types: issue 28 item 6),
/// it does not trust a length inside them. `square` of 2^20 is 2^40, whose
/// bincode form reads as a string of 2^40 bytes.
#[test]
fn a_result_of_the_wrong_type_is_an_error_not_a_host_crash() {
    let pool = builder(1).build().unwrap();
    let e = pool
        .apply::<_, String>("math", "square", (1u64 << 20,))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadArgs, "{e}");
    assert!(e.message.contains("the result was asked for as"), "{e}");
    assert!(e.message.contains("returns `u64`"), "{e}");
    let y: u64 = pool.apply("math", "square", (1u64 << 20,)).unwrap();
    assert_eq!(y, 1 << 40);
    pool.join().unwrap();
}

#[test]
fn many_workers_writing_garbage_in_a_row_cost_only_themselves() {
    let (tx, rx) = crossbeam_channel::unbounded();
    let pool = builder(2).events(tx).build().unwrap();
    for round in 0..25u64 {
        let garbage = pool
            .apply_async::<_, u64>("faults", "garbage_fds", ())
            .unwrap();
        let bystanders: Vec<_> = (0..4u64)
            .map(|i| {
                pool.apply_async::<_, u64>("math", "square", (round * 10 + i,))
                    .unwrap()
            })
            .collect();
        let e = garbage.get().unwrap_err();
        assert_eq!(e.kind, ErrorKind::WorkerLost, "round {round}: {e}");
        assert!(e.message.contains("malformed data"), "round {round}: {e}");
        for (i, h) in bystanders.iter().enumerate() {
            let x = round * 10 + i as u64;
            assert_eq!(h.get().unwrap(), x * x, "round {round}");
        }
    }
    // Chunks of garbage (one FFI call, one lost worker per chunk).
    let t = pool.task_ref("faults", "garbage_fds").unwrap();
    let jobs = (0..9).map(|_| Ok(billiard_host::RawJob::new(t, Codec::Json, b"[]".to_vec())));
    let outs: Vec<_> = pool.imap_raw(jobs, true, 3).collect();
    assert_eq!(outs.len(), 9);
    for (i, o) in &outs {
        let e = o.as_ref().unwrap_err();
        assert_eq!(e.kind, ErrorKind::WorkerLost, "item {i}: {e}");
    }
    let got: Vec<u64> = pool.map("math", "square", 0..200u64, 7).unwrap();
    assert_eq!(got[199], 199 * 199);
    let stats = pool.stats().unwrap();
    assert_eq!(
        stats.failed.get(&ErrorKind::WorkerLost),
        Some(&34),
        "{stats:?}"
    );
    assert!(stats.workers_started >= 2 + 25 + 3, "{stats:?}");
    pool.join().unwrap();
    let deaths = rx
        .try_iter()
        .filter(|e| matches!(e, billiard_host::Event::WorkerDown { .. }))
        .count();
    assert!(deaths >= 28, "{deaths}");
}

/// A task that writes garbage to every fd it has must not reach the
/// shared scoreboard through which the supervisor stops other workers'
/// tasks: here a cooperative task on another worker must still stop at its
/// soft limit.
#[test]
fn garbage_from_one_worker_does_not_disturb_another() {
    let pool = builder(2).build().unwrap();
    let spin = pool
        .apply_async_with::<_, u64>(
            "faults",
            "cooperative_spin",
            (5_000u64,),
            billiard_host::JobOptions::default()
                .soft_time_limit(std::time::Duration::from_millis(500)),
        )
        .unwrap();
    // The spinning worker is busy; these go to the other one (and its
    // replacements). Two rounds reach the first two scoreboard slots.
    for _ in 0..2 {
        let e = pool
            .apply::<_, u64>("faults", "garbage_fds", ())
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::WorkerLost, "{e}");
    }
    let started = std::time::Instant::now();
    let e = spin.get().unwrap_err();
    assert_eq!(e.kind, ErrorKind::SoftTimeLimit, "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    pool.join().unwrap();
}
