//! The wire codec of arguments and results.
//!
//! Arguments are positional: a task `f(a: A, b: B)` receives the tuple
//! `(A, B)`, encoded as bincode 2 (`config::standard()`) by programs or as a
//! JSON array `[a, b]` by people. Results are the task's return value in the
//! same codec. `Vec<u8>` arguments and results travel as byte strings
//! ([`Bytes`]), which costs one `memcpy` instead of a per-byte loop; in
//! JSON they may be written `{"$bytes": "<base64>"}`.

use serde::{de::DeserializeOwned, Serialize};

use crate::Codec;

/// The bincode configuration used on both sides of the ABI.
pub fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// An encoding or decoding failure, with a message meant for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError(pub String);

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CodecError {}

/// Encodes a value (an argument tuple or a result) into `out` (appending).
pub fn encode_into<T: Serialize + ?Sized>(
    codec: Codec,
    value: &T,
    out: &mut impl std::io::Write,
) -> Result<(), CodecError> {
    match codec {
        Codec::Bincode => bincode::serde::encode_into_std_write(value, out, bincode_config())
            .map(drop)
            .map_err(|e| CodecError(format!("bincode encoding failed: {e}"))),
        Codec::Json => {
            // serde_json writes NaN and the infinities as `null`: a silent
            // wrong value. The output is scanned for `null`, and only a value
            // that wrote one is walked again to tell a float from a real null.
            let mut w = NullScan {
                out,
                saw_null: false,
            };
            serde_json::to_writer(&mut w, value)
                .map_err(|e| CodecError(format!("JSON encoding failed: {e}")))?;
            if w.saw_null {
                value.serialize(FiniteCheck).map_err(|e| {
                    CodecError(format!(
                        "JSON encoding failed: {e}, which JSON cannot represent"
                    ))
                })?;
            }
            Ok(())
        }
    }
}

/// A writer that notes whether `null` was written (serde_json writes each
/// `null` in one piece).
struct NullScan<'a, W: std::io::Write> {
    out: &'a mut W,
    saw_null: bool,
}

impl<W: std::io::Write> std::io::Write for NullScan<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.saw_null |= buf[..n].windows(4).any(|w| w == b"null");
        Ok(n)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.out.write_all(buf)?;
        self.saw_null |= buf.windows(4).any(|w| w == b"null");
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Why a value has no JSON form.
#[derive(Debug)]
struct NonFinite(String);

impl std::fmt::Display for NonFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NonFinite {}

impl serde::ser::Error for NonFinite {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        NonFinite(msg.to_string())
    }
}

/// A serializer that writes nothing and fails on the first non-finite
/// float: the check behind [`encode_into`]'s JSON branch.
struct FiniteCheck;

impl FiniteCheck {
    fn float(v: f64) -> Result<(), NonFinite> {
        if v.is_finite() {
            return Ok(());
        }
        let what = if v.is_nan() {
            "NaN"
        } else if v > 0.0 {
            "inf"
        } else {
            "-inf"
        };
        Err(NonFinite(format!(
            "the value contains a non-finite float ({what})"
        )))
    }
}

macro_rules! finite_ok {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(fn $method(self, _: $ty) -> Result<(), NonFinite> { Ok(()) })*
    };
}

impl serde::Serializer for FiniteCheck {
    type Ok = ();
    type Error = NonFinite;
    type SerializeSeq = FiniteCheck;
    type SerializeTuple = FiniteCheck;
    type SerializeTupleStruct = FiniteCheck;
    type SerializeTupleVariant = FiniteCheck;
    type SerializeMap = FiniteCheck;
    type SerializeStruct = FiniteCheck;
    type SerializeStructVariant = FiniteCheck;

    finite_ok!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_i128(i128),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_u128(u128),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_unit_struct(&'static str),
    );

    fn serialize_f32(self, v: f32) -> Result<(), NonFinite> {
        Self::float(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), NonFinite> {
        Self::float(v)
    }
    fn serialize_none(self) -> Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), NonFinite> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), NonFinite> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        v: &T,
    ) -> Result<(), NonFinite> {
        v.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<FiniteCheck, NonFinite> {
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<FiniteCheck, NonFinite> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<FiniteCheck, NonFinite> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<FiniteCheck, NonFinite> {
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<FiniteCheck, NonFinite> {
        Ok(self)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<FiniteCheck, NonFinite> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<FiniteCheck, NonFinite> {
        Ok(self)
    }
}

macro_rules! finite_compound {
    ($($trait:ident { $($method:ident($($arg:ident: $ty:ty),*)),* }),* $(,)?) => {
        $(impl serde::ser::$trait for FiniteCheck {
            type Ok = ();
            type Error = NonFinite;
            $(fn $method<T: Serialize + ?Sized>(&mut self, $($arg: $ty,)* v: &T) -> Result<(), NonFinite> {
                $(let _ = $arg;)*
                v.serialize(FiniteCheck)
            })*
            fn end(self) -> Result<(), NonFinite> {
                Ok(())
            }
        })*
    };
}

finite_compound!(
    SerializeSeq { serialize_element() },
    SerializeTuple { serialize_element() },
    SerializeTupleStruct { serialize_field() },
    SerializeTupleVariant { serialize_field() },
    SerializeMap { serialize_key(), serialize_value() },
    SerializeStruct { serialize_field(key: &'static str) },
    SerializeStructVariant { serialize_field(key: &'static str) },
);

/// Encodes a value into a new buffer.
pub fn encode<T: Serialize + ?Sized>(codec: Codec, value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_into(codec, value, &mut out)?;
    Ok(out)
}

/// Decodes a whole buffer into `T`; trailing bytes are an error (they mean
/// the sender and the receiver disagree on the types).
pub fn decode<T: DeserializeOwned>(codec: Codec, bytes: &[u8]) -> Result<T, CodecError> {
    match codec {
        Codec::Bincode => {
            let (value, used) =
                bincode_decode(bytes).map_err(|e| CodecError(format!("bincode: {e}")))?;
            if used != bytes.len() {
                return Err(CodecError(format!(
                    "bincode: {} trailing bytes after the value (too many arguments, or wrong types)",
                    bytes.len() - used
                )));
            }
            Ok(value)
        }
        Codec::Json => serde_json::from_slice(bytes)
            .map_err(|e| CodecError(clip(json_message::<T>(bytes, &e)))),
    }
}

/// serde_json's message (after `JSON: `), said in terms of arguments where
/// it can: a wrong number of them is "expects 2 arguments, got 3" (no
/// `JSON: ` prefix: the count is not about the format), and a position in a
/// one-line text is "at column 4" (not "line 1", which reads like the line
/// of an input file).
fn json_message<T: DeserializeOwned>(bytes: &[u8], e: &serde_json::Error) -> String {
    let (msg, count_only) = json_detail::<T>(bytes, e);
    if count_only {
        msg
    } else {
        format!("JSON: {msg}")
    }
}

fn json_detail<T: DeserializeOwned>(bytes: &[u8], e: &serde_json::Error) -> (String, bool) {
    let mut msg = e.to_string();
    if !bytes.contains(&b'\n') {
        if let Some(at) = msg.rfind(" at line 1 column ") {
            msg = format!("{} at column {}", &msg[..at], &msg[at + 18..]);
        }
    }
    let wrong_count = msg.starts_with("invalid length") || msg.starts_with("trailing characters");
    if !wrong_count {
        return (msg, false);
    }
    let (Some(expected), Ok(got)) = (
        tuple_len::<T>(),
        serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(bytes),
    ) else {
        return (msg, false);
    };
    if got.len() == expected {
        return (msg, false);
    }
    let s = |n: usize| if n == 1 { "" } else { "s" };
    (
        format!(
            "expects {expected} argument{}, got {} (JSON: {msg})",
            s(expected),
            got.len()
        ),
        true,
    )
}

/// How many elements `T` is, when it is a tuple (an argument list).
fn tuple_len<T: DeserializeOwned>() -> Option<usize> {
    struct Probe(Option<usize>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("probe")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> serde::Deserializer<'de> for &mut Probe {
        type Error = Stop;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_tuple<V: serde::de::Visitor<'de>>(
            self,
            len: usize,
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = Some(len);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq
            tuple_struct map struct enum identifier ignored_any
        }
    }
    let mut probe = Probe(None);
    let _ = T::deserialize(&mut probe);
    probe.0
}

/// serde_json quotes the offending value in its messages (`invalid type:
/// string "..."`): a 50 MB string argument would make a 50 MB error
/// message. Keep the head and the tail (which says where), drop the middle.
fn clip(msg: String) -> String {
    const HEAD: usize = 600;
    const TAIL: usize = 200;
    if msg.len() <= HEAD + TAIL + 64 {
        return msg;
    }
    let mut head = HEAD;
    while !msg.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = msg.len() - TAIL;
    while !msg.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{}[... {} bytes omitted ...]{}",
        &msg[..head],
        tail - head,
        &msg[tail..]
    )
}

/// Decodes bincode with a memory budget proportional to the input.
///
/// bincode allocates a `String` or `Vec<u8>` at the length its prefix
/// announces before it reads the bytes: without a limit, nine bytes
/// announcing 2^40 bytes abort the process ("memory allocation failed"),
/// and a result decoded as the wrong type can do the same in the host. A
/// byte of input accounts for at most 16 bytes of what bincode counts
/// against its limit (a `u128` in one varint byte), so a limit of 16 times
/// the input never refuses a value that fits in it. The limit is a type
/// parameter, hence a few fixed steps (each at most 16 times the last).
fn bincode_decode<T: DeserializeOwned>(
    bytes: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    use bincode::serde::decode_from_slice as d;
    let c = bincode_config();
    let need = bytes.len().saturating_mul(16);
    if need <= 1 << 12 {
        d(bytes, c.with_limit::<{ 1 << 12 }>())
    } else if need <= 1 << 16 {
        d(bytes, c.with_limit::<{ 1 << 16 }>())
    } else if need <= 1 << 20 {
        d(bytes, c.with_limit::<{ 1 << 20 }>())
    } else if need <= 1 << 24 {
        d(bytes, c.with_limit::<{ 1 << 24 }>())
    } else if need <= 1 << 28 {
        d(bytes, c.with_limit::<{ 1 << 28 }>())
    } else {
        #[cfg(target_pointer_width = "64")]
        if need <= 1 << 34 {
            return d(bytes, c.with_limit::<{ 1 << 34 }>());
        }
        d(bytes, c.with_limit::<{ usize::MAX >> 1 }>())
    }
}

/// Decodes the arguments of a task that takes none: an empty bincode buffer
/// or the JSON array `[]`.
pub fn decode_no_args(codec: Codec, bytes: &[u8]) -> Result<(), CodecError> {
    match codec {
        Codec::Bincode if bytes.is_empty() => Ok(()),
        Codec::Bincode => Err(CodecError(format!(
            "expected no arguments, got {} bytes",
            bytes.len()
        ))),
        Codec::Json => {
            let v: Vec<serde::de::IgnoredAny> = serde_json::from_slice(bytes)
                .map_err(|e| CodecError(format!("JSON: {e}; expected an empty array []")))?;
            if v.is_empty() {
                Ok(())
            } else {
                Err(CodecError(format!(
                    "expected no arguments, got {} (an empty array [])",
                    v.len()
                )))
            }
        }
    }
}

/// The key of the JSON byte-string form `{"$bytes": "<base64>"}`.
pub const BYTES_KEY: &str = "$bytes";

/// Standard base64; decoding takes it with or without padding.
const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

thread_local! {
    /// Set by the glue while it encodes a result the host wants with its
    /// bytes in base64 (see [`Bytes`]).
    static BASE64_OUT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with [`Bytes`] values serialized to JSON as `{"$bytes":
/// "<base64>"}` (when `on`) instead of arrays of numbers.
pub fn with_base64_bytes<T>(on: bool, f: impl FnOnce() -> T) -> T {
    if !on {
        return f();
    }
    let was = BASE64_OUT.with(|b| b.replace(true));
    let r = f();
    BASE64_OUT.with(|b| b.set(was));
    r
}

/// A `Vec<u8>` argument or result of a task (what `#[task]` uses for
/// `Vec<u8>`). In bincode: a byte string (length + raw bytes, one `memcpy`).
/// In JSON, as an argument: an array of numbers `[104, 105]`, a string
/// `"hi"` (its UTF-8 bytes), or the byte-string form `{"$bytes": "aGk="}`
/// (standard base64, padding optional), which is ~1.33 bytes of text per
/// byte instead of ~3.6 and decodes at memory speed. As a JSON result: an
/// array of numbers, or `{"$bytes": "..."}` when the host asks for it
/// (`billiard-host run --bytes base64`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() && BASE64_OUT.with(std::cell::Cell::get) {
            use base64::Engine;
            use serde::ser::SerializeMap;
            let mut m = s.serialize_map(Some(1))?;
            m.serialize_entry(BYTES_KEY, &B64.encode(&self.0))?;
            m.end()
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> serde::Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            d.deserialize_any(BytesVisitor)
        } else {
            d.deserialize_byte_buf(BytesVisitor)
        }
    }
}

struct BytesVisitor;

impl<'de> serde::de::Visitor<'de> for BytesVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("byte array")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes(v.to_vec()))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Bytes, E> {
        Ok(Bytes(v.as_bytes().to_vec()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Bytes, E> {
        Ok(Bytes(v.into_bytes()))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        Ok(Bytes(v))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Bytes, A::Error> {
        use serde::de::Error;
        const FORM: &str = "a byte string {\"$bytes\": \"<base64>\"}";
        match map.next_key::<BytesKey>()? {
            Some(BytesKey(true)) => {}
            _ => return Err(A::Error::custom(format!("expected {FORM}"))),
        }
        let Base64Text(bytes) = map.next_value()?;
        if map.next_key::<serde::de::IgnoredAny>()?.is_some() {
            return Err(A::Error::custom(format!("{FORM} has no other fields")));
        }
        Ok(Bytes(bytes))
    }
}

/// A map key: whether it is `$bytes`.
struct BytesKey(bool);

impl<'de> serde::Deserialize<'de> for BytesKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = BytesKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("the key \"$bytes\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<BytesKey, E> {
                Ok(BytesKey(v == BYTES_KEY))
            }
        }
        d.deserialize_str(V)
    }
}

/// The base64 text of `{"$bytes": ...}`, decoded; read as raw bytes (no
/// UTF-8 pass: base64 is ASCII, and anything else fails to decode).
struct Base64Text(Vec<u8>);

impl<'de> serde::Deserialize<'de> for Base64Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Base64Text;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Base64Text, E> {
                use base64::Engine;
                B64.decode(v)
                    .map(Base64Text)
                    .map_err(|e| E::custom(format_args!("\"$bytes\" is not base64: {e}")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Base64Text, E> {
                self.visit_bytes(v.as_bytes())
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Appends one batch record `[u32 LE length][bytes]` to `out`.
pub fn push_record(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Iterates the records of a batch buffer written by [`push_record`]. Yields
/// `None` once and stops if the buffer is truncated.
pub fn records(mut buf: &[u8]) -> impl Iterator<Item = Option<&[u8]>> {
    let mut broken = false;
    std::iter::from_fn(move || {
        if broken || buf.is_empty() {
            return None;
        }
        if buf.len() < 4 {
            broken = true;
            return Some(None);
        }
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if buf.len() - 4 < len {
            broken = true;
            return Some(None);
        }
        let (rec, rest) = buf[4..].split_at(len);
        buf = rest;
        Some(Some(rec))
    })
}

/// Iterates the results of a batch output buffer: `(status byte, bytes)`.
pub fn result_records(mut buf: &[u8]) -> impl Iterator<Item = Option<(u8, &[u8])>> {
    let mut broken = false;
    std::iter::from_fn(move || {
        if broken || buf.is_empty() {
            return None;
        }
        if buf.len() < 5 {
            broken = true;
            return Some(None);
        }
        let status = buf[0];
        let len = u32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() - 5 < len {
            broken = true;
            return Some(None);
        }
        let (rec, rest) = buf[5..].split_at(len);
        buf = rest;
        Some(Some((status, rec)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Shape {
        Circle { r: f64 },
        Square(u32),
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Point {
        x: i64,
        label: Option<String>,
        tags: BTreeMap<String, u8>,
        shape: Shape,
    }

    fn sample() -> (Point, Vec<u32>, String) {
        let mut tags = BTreeMap::new();
        tags.insert("a".to_string(), 1);
        (
            Point {
                x: -5,
                label: Some("p".into()),
                tags,
                shape: Shape::Circle { r: 1.5 },
            },
            vec![1, 2, 3],
            "s".into(),
        )
    }

    #[test]
    fn round_trips_in_both_codecs() {
        for codec in [Codec::Bincode, Codec::Json] {
            let v = sample();
            let bytes = encode(codec, &v).unwrap();
            let back: (Point, Vec<u32>, String) = decode(codec, &bytes).unwrap();
            assert_eq!(back, v, "{codec:?}");
        }
    }

    #[test]
    fn json_args_are_a_positional_array() {
        let (a, b): (u64, String) = decode(Codec::Json, br#"[3, "x"]"#).unwrap();
        assert_eq!((a, b.as_str()), (3, "x"));
        let one: (u64,) = decode(Codec::Json, b"[7]").unwrap();
        assert_eq!(one.0, 7);
    }

    #[test]
    fn wrong_count_and_types_are_errors() {
        let e = decode::<(u64, u64)>(Codec::Json, b"[1]").unwrap_err();
        assert!(e.0.contains("invalid length"), "{e}");
        let e = decode::<(u64,)>(Codec::Json, br#"["x"]"#).unwrap_err();
        assert!(e.0.contains("invalid type"), "{e}");
        let bytes = encode(Codec::Bincode, &(1u64, 2u64)).unwrap();
        let e = decode::<(u64,)>(Codec::Bincode, &bytes).unwrap_err();
        assert!(e.0.contains("trailing"), "{e}");
        let e = decode::<(u64, u64)>(Codec::Bincode, &bytes[..1]).unwrap_err();
        assert!(e.0.starts_with("bincode"), "{e}");
    }

    #[test]
    fn a_wrong_number_of_json_arguments_says_so() {
        let e = decode::<(u64, u64)>(Codec::Json, b"[1]").unwrap_err();
        assert!(
            e.0.starts_with("expects 2 arguments, got 1 (JSON: invalid length 1"),
            "{e}"
        );
        let e = decode::<(u64,)>(Codec::Json, b"[1, 2, 3]").unwrap_err();
        assert!(
            e.0.starts_with("expects 1 argument, got 3 (JSON: trailing"),
            "{e}"
        );
        assert!(!e.0.contains("line 1"), "{e}");
        let e = decode::<(u64,)>(Codec::Json, b"[\"x\"]").unwrap_err();
        assert!(e.0.ends_with("expected u64 at column 4"), "{e}");
        // Not a tuple, or several lines: serde_json's words.
        let e = decode::<Vec<u64>>(Codec::Json, b"[1] 2").unwrap_err();
        assert_eq!(e.0, "JSON: trailing characters at column 5");
        let e = decode::<(u64,)>(Codec::Json, b"[\n\"x\"]").unwrap_err();
        assert!(e.0.contains("at line 2 column 3"), "{e}");
    }

    #[test]
    fn no_args() {
        assert!(decode_no_args(Codec::Json, b"[]").is_ok());
        assert!(decode_no_args(Codec::Json, b" [ ] ").is_ok());
        assert!(decode_no_args(Codec::Json, b"[1]").is_err());
        assert!(decode_no_args(Codec::Json, b"{}").is_err());
        assert!(decode_no_args(Codec::Bincode, b"").is_ok());
        assert!(decode_no_args(Codec::Bincode, b"\x01").is_err());
    }

    #[test]
    fn bytes_travel_compactly_and_interoperate_with_vec() {
        let data = vec![7u8; 1000];
        let as_bytes = encode(Codec::Bincode, &(serde_bytes::Bytes::new(&data),)).unwrap();
        let as_vec = encode(Codec::Bincode, &(data.clone(),)).unwrap();
        assert_eq!(as_bytes, as_vec, "same wire form either way");
        assert!(as_bytes.len() <= data.len() + 3);
        let (back,): (serde_bytes::ByteBuf,) = decode(Codec::Bincode, &as_vec).unwrap();
        assert_eq!(back.into_vec(), data);
        let (back,): (serde_bytes::ByteBuf,) = decode(Codec::Json, b"[[1,2,3]]").unwrap();
        assert_eq!(back.into_vec(), vec![1, 2, 3]);
    }

    #[test]
    fn bytes_take_the_base64_form_in_json() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
        let line = format!("[{{\"$bytes\": \"{b64}\"}}]");
        let (back,): (Bytes,) = decode(Codec::Json, line.as_bytes()).unwrap();
        assert_eq!(back.0, data);
        // Padding optional; an escaped slash is still base64.
        let (back,): (Bytes,) = decode(Codec::Json, br#"[{"$bytes":"aGk"}]"#).unwrap();
        assert_eq!(back.0, b"hi");
        let (back,): (Bytes,) = decode(Codec::Json, br#"[{"$bytes":"\/w=="}]"#).unwrap();
        assert_eq!(back.0, [0xff]);
        // The other JSON forms still work.
        let (back,): (Bytes,) = decode(Codec::Json, b"[[104, 105]]").unwrap();
        assert_eq!(back.0, b"hi");
        let (back,): (Bytes,) = decode(Codec::Json, br#"["hi"]"#).unwrap();
        assert_eq!(back.0, b"hi");
        let back: (Bytes, u64) = decode(Codec::Json, br#"[{"$bytes": ""}, 3]"#).unwrap();
        assert_eq!(back, (Bytes(vec![]), 3));
        // Bincode: the same wire form as serde_bytes.
        let wire = encode(Codec::Bincode, &(serde_bytes::Bytes::new(&data),)).unwrap();
        assert_eq!(
            encode(Codec::Bincode, &(Bytes(data.clone()),)).unwrap(),
            wire
        );
        let (back,): (Bytes,) = decode(Codec::Bincode, &wire).unwrap();
        assert_eq!(back.0, data);
    }

    #[test]
    fn bad_byte_strings_are_errors_that_say_why() {
        for (line, want) in [
            (&br#"[{"$bytes": "a*b="}]"#[..], "\"$bytes\" is not base64"),
            (
                br#"[{"bytes": "aGk="}]"#,
                "expected a byte string {\"$bytes\"",
            ),
            (br#"[{}]"#, "expected a byte string"),
            (br#"[{"$bytes": "aGk=", "x": 1}]"#, "has no other fields"),
            (br#"[{"$bytes": 5}]"#, "expected a base64 string"),
            (b"[5]", "expected byte array"),
            (b"[[256]]", "expected u8"),
            (b"[[-1]]", "expected u8"),
        ] {
            let e = decode::<(Bytes,)>(Codec::Json, line).unwrap_err();
            assert!(e.0.contains(want), "{}: {e}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn byte_results_are_base64_in_json_only_when_asked() {
        let v = Bytes(b"hi\xff".to_vec());
        assert_eq!(encode(Codec::Json, &v).unwrap(), b"[104,105,255]");
        let b64 = with_base64_bytes(true, || encode(Codec::Json, &v).unwrap());
        assert_eq!(b64, br#"{"$bytes":"aGn/"}"#);
        let (back,): (Bytes,) = decode(Codec::Json, &[b"[", &b64[..], b"]"].concat()).unwrap();
        assert_eq!(back, v);
        // Never in bincode; and the setting ends with the call.
        let wire = with_base64_bytes(true, || encode(Codec::Bincode, &v).unwrap());
        assert_eq!(wire, encode(Codec::Bincode, &v).unwrap());
        assert_eq!(encode(Codec::Json, &v).unwrap(), b"[104,105,255]");
    }

    #[test]
    fn non_finite_floats_are_refused_in_json_only() {
        for (v, what) in [
            (f64::INFINITY, "(inf)"),
            (f64::NEG_INFINITY, "(-inf)"),
            (f64::NAN, "(NaN)"),
        ] {
            let e = encode(Codec::Json, &v).unwrap_err();
            assert!(
                e.0.contains(what) && e.0.contains("JSON cannot represent"),
                "{e}"
            );
            let nested = (
                vec![1.0, v],
                Some(BTreeMap::from([("k".to_string(), v as f32)])),
            );
            assert!(encode(Codec::Json, &nested).is_err(), "{nested:?}");
            assert!(encode(Codec::Bincode, &nested).is_ok());
        }
        // A real null, a "null" string and finite floats still encode.
        let fine = (None::<u8>, "null", vec![1.5f64, -0.0], ());
        assert_eq!(
            encode(Codec::Json, &fine).unwrap(),
            br#"[null,"null",[1.5,-0.0],null]"#
        );
    }

    #[test]
    fn records_round_trip_and_detect_truncation() {
        let mut buf = Vec::new();
        push_record(&mut buf, b"abc");
        push_record(&mut buf, b"");
        let got: Vec<_> = records(&buf).collect();
        assert_eq!(got, vec![Some(&b"abc"[..]), Some(&b""[..])]);
        let got: Vec<_> = records(&buf[..5]).collect();
        assert_eq!(got, vec![None]);
    }
}
