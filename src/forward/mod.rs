//! The Fluentd Forward protocol v1, shared by the forward source (server side) and the forward
//! sink (client side). Byte-level shapes and test vectors: `research/protocols.md` §A.
//!
//! - [`frame`] finds where one request ends in a byte stream (partial frames are normal).
//! - [`decode_request`] turns one complete frame into a [`Request`]: Message, Forward,
//!   PackedForward (`bin` or `str` entries), CompressedPackedForward (gzip, several members
//!   allowed), integer or EventTime (ext type 0) times, the `size`/`chunk`/`compressed`
//!   options, and `nil` heartbeats; [`decode_json`] does the same for JSON single events.
//! - [`Request::encode`] writes any mode; the sink's hot path uses [`write_entry`] and
//!   [`write_packed_forward`] directly.
//! - [`ack`] / [`decode_ack`]: `{"ack": chunk}`, the chunk echoed byte for byte.
//! - [`handshake`]: HELO / PING / PONG with the shared-key and password digests.

pub mod decode;
pub mod frame;
pub mod handshake;

use decode::shape;
pub use decode::{decode_head, decode_json, decode_request, json_frame, DecodeError, Head};

use std::io::Write;

use crate::msgpack::tag::{head, Kind as TagKind};
use crate::msgpack::write as encode;
use crate::record::Value;

/// An event time: integer seconds, or EventTime (msgpack ext type 0: u32 seconds, u32
/// nanoseconds, big-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Time {
    /// Integer seconds since the epoch.
    Seconds(u64),
    /// EventTime.
    Event {
        /// Seconds since the epoch.
        sec: u32,
        /// Nanoseconds within the second.
        nsec: u32,
    },
}

impl Time {
    /// EventTime for a time in nanoseconds since the epoch.
    pub fn from_nanos(ns: u64) -> Time {
        Time::Event {
            sec: (ns / 1_000_000_000).min(u64::from(u32::MAX)) as u32,
            nsec: (ns % 1_000_000_000) as u32,
        }
    }

    /// Nanoseconds since the epoch.
    pub fn nanos(self) -> u64 {
        match self {
            Time::Seconds(s) => s.saturating_mul(1_000_000_000),
            Time::Event { sec, nsec } => u64::from(sec) * 1_000_000_000 + u64::from(nsec),
        }
    }

    fn write(self, buf: &mut Vec<u8>) {
        match self {
            Time::Seconds(s) => {
                let _ = rmp::encode::write_uint(buf, s);
            }
            Time::Event { sec, nsec } => {
                buf.extend_from_slice(&[0xd7, 0x00]);
                buf.extend_from_slice(&sec.to_be_bytes());
                buf.extend_from_slice(&nsec.to_be_bytes());
            }
        }
    }
}

/// One event: `[time, record]`, or Fluent Bit's `[[time, metadata], record]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// When it happened.
    pub time: Time,
    /// Fluent Bit's per-event metadata map as the sender encoded it (`{}` by default), when
    /// the entry came in the `[[time, metadata], record]` form.
    pub metadata: Option<Vec<u8>>,
    /// The record's fields in the sender's order.
    pub record: Vec<(String, Value)>,
}

/// How a request carries its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `[tag, time, record, option?]`.
    Message,
    /// `[tag, [[time, record], ...], option?]`.
    Forward,
    /// `[tag, bin|str(concatenated entries), option?]`.
    PackedForward,
    /// `[tag, bin(gzip(concatenated entries)), {"compressed": "gzip", ...}]`.
    CompressedPackedForward,
}

/// The option map (other keys are ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Number of events.
    pub size: Option<u64>,
    /// The chunk id (asks for an ack), as the sender encoded it.
    pub chunk: Option<Chunk>,
    /// `compressed` as sent (`gzip`, `text`).
    pub compressed: Option<String>,
    /// Fluent Bit's `fluent_signal` (0 logs, 1 metrics, 2 traces, ...).
    pub fluent_signal: Option<i64>,
    /// Fluent Bit's `metadata` option (Message mode: the record's metadata map, encoded).
    pub metadata: Option<Vec<u8>>,
}

/// A chunk id as the MessagePack value the sender encoded (`str` or `bin`), so the ack
/// echoes it byte for byte (fluentd's ids end in `\n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk(pub Vec<u8>);

impl Chunk {
    /// A chunk id sent as msgpack `str`.
    pub fn text(id: &str) -> Chunk {
        let mut b = Vec::with_capacity(id.len() + 5);
        let _ = rmp::encode::write_str(&mut b, id);
        Chunk(b)
    }

    /// A new id: base64 of 16 random bytes (the spec's 128-bit unique id).
    pub fn random() -> Chunk {
        use base64::Engine as _;
        Chunk::text(&base64::engine::general_purpose::STANDARD.encode(random_bytes::<16>()))
    }

    /// The id's bytes (the content of the `str` or `bin`).
    pub fn content(&self) -> &[u8] {
        // Header length: what precedes the content.
        let header = match self.0.first().and_then(|t| head(*t)) {
            Some(h) if matches!(h.kind, TagKind::Str | TagKind::Bin) => 1 + h.len_bytes,
            _ => return &[],
        };
        self.0.get(header..).unwrap_or(&[])
    }
}

/// Random bytes from the OS; a fallback from the clock and address space if it fails (ids
/// and nonces must differ, they need not be secret beyond the handshake's nonce).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if getrandom::fill(&mut b).is_err() {
        use std::hash::{BuildHasher, Hasher};
        for (i, chunk) in b.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            h.write_u64(crate::clock::unix_ns());
            let v = h.finish().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    b
}

/// One request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The tag.
    pub tag: String,
    /// How the events were carried.
    pub mode: Mode,
    /// The events.
    pub entries: Vec<Entry>,
    /// The options.
    pub options: Options,
}

/// Appends one `[time, record]` entry.
pub fn write_entry(buf: &mut Vec<u8>, time: Time, record: &[(String, Value)]) {
    buf.push(0x92);
    time.write(buf);
    encode::fields_into(record, buf);
}

impl Entry {
    /// A Fluent Bit OTLP group start or end marker (EventTime seconds `0xFFFFFFFF` or
    /// `0xFFFFFFFE` with metadata, `src/flb_log_event_decoder.c`): grouping metadata, not a log.
    pub fn is_group_marker(&self) -> bool {
        self.metadata.is_some()
            && matches!(
                self.time,
                Time::Event {
                    sec: 0xFFFF_FFFE..=0xFFFF_FFFF,
                    ..
                }
            )
    }
}

/// [`write_entry`] with Fluent Bit's `[time, metadata]` header when `metadata` is set.
fn write_entry_with(buf: &mut Vec<u8>, e: &Entry) {
    buf.push(0x92);
    if let Some(meta) = &e.metadata {
        buf.push(0x92);
        e.time.write(buf);
        buf.extend_from_slice(meta);
    } else {
        e.time.write(buf);
    }
    encode::fields_into(&e.record, buf);
}

/// [`write_entry`] for a record already encoded as a MessagePack map.
pub fn write_entry_encoded(buf: &mut Vec<u8>, time: Time, map: &[u8]) {
    buf.push(0x92);
    time.write(buf);
    buf.extend_from_slice(map);
}

fn write_options(buf: &mut Vec<u8>, size: Option<u64>, chunk: Option<&Chunk>, gzip: bool) {
    let n = u32::from(size.is_some()) + u32::from(chunk.is_some()) + u32::from(gzip);
    let _ = rmp::encode::write_map_len(buf, n);
    if let Some(size) = size {
        let _ = rmp::encode::write_str(buf, "size");
        let _ = rmp::encode::write_uint(buf, size);
    }
    if let Some(chunk) = chunk {
        let _ = rmp::encode::write_str(buf, "chunk");
        buf.extend_from_slice(&chunk.0);
    }
    if gzip {
        let _ = rmp::encode::write_str(buf, "compressed");
        let _ = rmp::encode::write_str(buf, "gzip");
    }
}

/// Appends a PackedForward request (`bin` entries; gzip-compressed when `gzip`) with
/// `size` and `chunk` options.
pub fn write_packed_forward(
    buf: &mut Vec<u8>,
    tag: &str,
    entries: &[u8],
    count: u64,
    chunk: &Chunk,
    gzip: bool,
) {
    buf.push(0x93);
    let _ = rmp::encode::write_str(buf, tag);
    if gzip {
        let compressed = gzip_bytes(entries);
        let _ = rmp::encode::write_bin(buf, &compressed);
    } else {
        let _ = rmp::encode::write_bin(buf, entries);
    }
    write_options(buf, Some(count), Some(chunk), gzip);
}

fn gzip_bytes(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

impl Request {
    /// Encodes the request in its mode. The option element is written when any option is
    /// set (always for CompressedPackedForward, which needs `compressed`).
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let gzip = self.mode == Mode::CompressedPackedForward;
        let o = &self.options;
        let has_options = o.size.is_some() || o.chunk.is_some() || gzip;
        let base = if self.mode == Mode::Message { 3 } else { 2 };
        let _ = rmp::encode::write_array_len(&mut buf, base + u32::from(has_options));
        let _ = rmp::encode::write_str(&mut buf, &self.tag);
        match self.mode {
            Mode::Message => {
                if let Some(e) = self.entries.first() {
                    e.time.write(&mut buf);
                    encode::fields_into(&e.record, &mut buf);
                }
            }
            Mode::Forward => {
                let _ = rmp::encode::write_array_len(&mut buf, self.entries.len() as u32);
                for e in &self.entries {
                    write_entry_with(&mut buf, e);
                }
            }
            Mode::PackedForward | Mode::CompressedPackedForward => {
                let mut stream = Vec::new();
                for e in &self.entries {
                    write_entry_with(&mut stream, e);
                }
                let stream = if gzip { gzip_bytes(&stream) } else { stream };
                let _ = rmp::encode::write_bin(&mut buf, &stream);
            }
        }
        if has_options {
            write_options(&mut buf, o.size, o.chunk.as_ref(), gzip);
        }
        buf
    }
}

/// The ack for a chunk: `{"ack": chunk}` in MessagePack, the chunk echoed as received.
pub fn ack(chunk: &Chunk) -> Vec<u8> {
    let mut b = Vec::with_capacity(chunk.0.len() + 5);
    b.extend_from_slice(&[0x81, 0xa3, b'a', b'c', b'k']);
    b.extend_from_slice(&chunk.0);
    b
}

/// The ack for a chunk on a JSON connection: `{"ack":"..."}`.
pub fn ack_json(chunk: &Chunk) -> Vec<u8> {
    let id = String::from_utf8_lossy(chunk.content()).into_owned();
    serde_json::json!({ "ack": id }).to_string().into_bytes()
}

/// A server's response to a request with a chunk: `Ok(Some(id bytes))` for `{"ack": id}`,
/// `Ok(None)` for a map without `ack` (Vector's negative ack `{}`).
pub fn decode_ack(frame: &[u8]) -> Result<Option<Vec<u8>>, DecodeError> {
    use rmpv::Value as V;
    let value = rmpv::decode::read_value(&mut &frame[..])
        .map_err(|e| DecodeError::Syntax(e.to_string()))?;
    let V::Map(map) = value else {
        return Err(shape("a response", "a map", &value));
    };
    for (k, v) in map {
        if k.as_str() == Some("ack") {
            return match v {
                V::String(s) => Ok(Some(s.into_bytes())),
                V::Binary(b) => Ok(Some(b)),
                other => Err(shape("ack", "a string", &other)),
            };
        }
    }
    Ok(None)
}

/// A connection, plain TCP or TLS, on either side.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync> Stream for T {}

/// Why [`read_frame`] returned no frame.
#[derive(Debug)]
pub enum ReadError {
    /// The bytes are not acceptable MessagePack.
    Frame(frame::FrameError),
    /// The peer closed the connection.
    Closed,
    /// Reading failed.
    Io(std::io::Error),
}

/// Reads until `buf` holds one complete frame of at most `limit` bytes, and takes it out.
pub async fn read_frame(
    stream: &mut Box<dyn Stream>,
    buf: &mut Vec<u8>,
    limit: usize,
) -> Result<Vec<u8>, ReadError> {
    use tokio::io::AsyncReadExt;
    loop {
        match frame::scan(buf, limit) {
            Ok(frame::Scan::Complete(n)) => return Ok(buf.drain(..n).collect()),
            Ok(frame::Scan::Incomplete(_)) => {}
            Err(e) => return Err(ReadError::Frame(e)),
        }
        match stream.read_buf(buf).await {
            Ok(0) => return Err(ReadError::Closed),
            Ok(_) => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bytes from hex text (whitespace ignored).
    pub(crate) fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn vector_entries() -> Vec<Entry> {
        vec![
            Entry {
                metadata: None,
                time: Time::Event {
                    sec: 1_700_000_000,
                    nsec: 123_456_789,
                },
                record: vec![("message".into(), Value::Str("hello".into()))],
            },
            Entry {
                metadata: None,
                time: Time::Event {
                    sec: 1_700_000_001,
                    nsec: 0,
                },
                record: vec![("message".into(), Value::Str("world".into()))],
            },
        ]
    }

    const PACKED: &str = "93a76170702e6c6f67c43492d7006553f100075bcd1581a76d657373616765a568656c6c6f92d7006553f1010000000081a76d657373616765a5776f726c6482a473697a6502a56368756e6bb841414543417751464267634943516f4c4441304f44773d3d";
    const CHUNK: &str = "AAECAwQFBgcICQoLDA0ODw==";

    #[test]
    fn packed_forward_vector_encodes_and_decodes_exactly() {
        let bytes = hex(PACKED);
        assert_eq!(bytes.len(), 101);
        let req = Request {
            tag: "app.log".into(),
            mode: Mode::PackedForward,
            entries: vector_entries(),
            options: Options {
                size: Some(2),
                chunk: Some(Chunk::text(CHUNK)),
                compressed: None,
                fluent_signal: None,
                metadata: None,
            },
        };
        assert_eq!(req.encode(), bytes);
        assert_eq!(decode_request(&bytes, 1 << 20), Ok(Some(req.clone())));
        // The sink's path writes the same bytes.
        let mut stream = Vec::new();
        for e in &req.entries {
            write_entry(&mut stream, e.time, &e.record);
        }
        assert_eq!(stream.len(), 52);
        let mut buf = Vec::new();
        write_packed_forward(&mut buf, "app.log", &stream, 2, &Chunk::text(CHUNK), false);
        assert_eq!(buf, bytes);
        assert_eq!(
            ack(&Chunk::text(CHUNK)),
            hex("81a361636bb841414543417751464267634943516f4c4441304f44773d3d")
        );
        assert_eq!(
            decode_ack(&ack(&Chunk::text(CHUNK))),
            Ok(Some(CHUNK.as_bytes().to_vec()))
        );
        assert_eq!(decode_ack(&[0x80]), Ok(None));
    }

    #[test]
    fn message_and_forward_vectors() {
        let chunk = hex("b841414543417751464267634943516f4c4441304f44773d3d");
        let entry1 = "92d7006553f100075bcd1581a76d657373616765a568656c6c6f";
        let entry2 = "92d7006553f1010000000081a76d657373616765a5776f726c64";
        let message = [
            hex("94a76170702e6c6f67d7006553f100075bcd1581a76d657373616765a568656c6c6f81a56368756e6b"),
            chunk.clone(),
        ]
        .concat();
        let req = decode_request(&message, 1 << 20).unwrap().unwrap();
        assert_eq!(req.mode, Mode::Message);
        assert_eq!(req.entries, vector_entries()[..1]);
        assert_eq!(req.options.chunk, Some(Chunk(chunk.clone())));
        assert_eq!(req.encode(), message);
        let forward = [
            hex("93a76170702e6c6f6792"),
            hex(entry1),
            hex(entry2),
            hex("82a473697a6502a56368756e6b"),
            chunk,
        ]
        .concat();
        let req = decode_request(&forward, 1 << 20).unwrap().unwrap();
        assert_eq!(req.mode, Mode::Forward);
        assert_eq!(req.entries, vector_entries());
        assert_eq!(req.encode(), forward);
    }

    #[test]
    fn fluentd_style_and_compressed_vectors_decode() {
        let fluentd = hex(concat!(
            "93a76170702e6c6f67db00000034",
            "92d7006553f100075bcd1581a76d657373616765a568656c6c6f",
            "92d7006553f1010000000081a76d657373616765a5776f726c64",
            "83a473697a6502aa636f6d70726573736564a474657874",
            "a56368756e6bb941414543417751464267634943516f4c4441304f44773d3d0a"
        ));
        let req = decode_request(&fluentd, 1 << 20).unwrap().unwrap();
        assert_eq!(req.mode, Mode::PackedForward);
        assert_eq!(req.entries, vector_entries());
        let chunk = req.options.chunk.unwrap();
        assert_eq!(chunk.content(), b"AAECAwQFBgcICQoLDA0ODw==\n");
        // The ack echoes the trailing newline.
        assert_eq!(
            ack(&chunk)[5..],
            hex("b941414543417751464267634943516f4c4441304f44773d3d0a")[..]
        );
        let compressed = hex(concat!(
            "93 a7 61 70 70 2e 6c 6f 67 c4 3c 1f 8b 08 00 00 00 00 00 00 03 9b 74 9d 21 35 f8 23",
            "03 7b f4 59 d1 c6 e5 b9 a9 c5 c5 89 e9 a9 4b 33 52 73 72 f2 27 81 65 18 19 80 00 21",
            "53 9e 5f 94 93 02 00 44 88 65 b9 34 00 00 00 82 a4 73 69 7a 65 02 aa 63 6f 6d 70 72",
            "65 73 73 65 64 a4 67 7a 69 70"
        ));
        let req = decode_request(&compressed, 1 << 20).unwrap().unwrap();
        assert_eq!(req.mode, Mode::CompressedPackedForward);
        assert_eq!(req.entries, vector_entries());
        assert_eq!(req.options.size, Some(2));
    }

    #[test]
    fn every_mode_round_trips_and_gzip_may_have_several_members() {
        let req = Request {
            tag: "a".into(),
            mode: Mode::CompressedPackedForward,
            entries: vector_entries(),
            options: Options {
                size: Some(2),
                chunk: None,
                compressed: Some("gzip".into()),
                fluent_signal: None,
                metadata: None,
            },
        };
        let bytes = req.encode();
        assert_eq!(decode_request(&bytes, 1 << 20), Ok(Some(req.clone())));
        // Two gzip members, one entry each.
        let mut e1 = Vec::new();
        write_entry(&mut e1, req.entries[0].time, &req.entries[0].record);
        let mut e2 = Vec::new();
        write_entry(&mut e2, req.entries[1].time, &req.entries[1].record);
        let members = [gzip_bytes(&e1), gzip_bytes(&e2)].concat();
        let mut buf = vec![0x93];
        rmp::encode::write_str(&mut buf, "a").unwrap();
        rmp::encode::write_bin(&mut buf, &members).unwrap();
        write_options(&mut buf, Some(2), None, true);
        assert_eq!(decode_request(&buf, 1 << 20), Ok(Some(req)));
        // A bomb: decompressed beyond the limit.
        let big = gzip_bytes(&vec![0xc0; 1 << 20]);
        let mut buf = vec![0x93];
        rmp::encode::write_str(&mut buf, "a").unwrap();
        rmp::encode::write_bin(&mut buf, &big).unwrap();
        write_options(&mut buf, None, None, true);
        assert_eq!(decode_request(&buf, 1000), Err(DecodeError::TooLarge(1000)));
    }

    #[test]
    fn wrong_shapes_are_named() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                vec![0x01],
                "a request must be an array (or nil), got an integer",
            ),
            (vec![0x91, 0xa1, b't'], "array of 2 to 4 elements, got 1"),
            (
                vec![0x92, 0x01, 0x90],
                "element 1 (tag) must be a string, got an integer",
            ),
            (
                vec![0x93, 0xa1, b't', 0x01, 0x90],
                "element 3 (record) must be a map, got an array",
            ),
            (vec![0x92, 0xa1, b't', 0xc3], "element 2 must be"),
            (
                vec![0x92, 0xa1, b't', 0x91, 0x01],
                "entry 0 must be an array [time, record]",
            ),
            (
                vec![0x92, 0xa1, b't', 0x91, 0x92, 0xa1, b'x', 0x80],
                "entry 0 time must be",
            ),
            (
                vec![0x93, 0xa1, b't', 0x90, 0x01],
                "the option element must be a map",
            ),
            (
                vec![
                    0x93, 0xa1, b't', 0x90, 0x81, 0xa4, b's', b'i', b'z', b'e', 0xa1, b'x',
                ],
                "option size must be an integer",
            ),
            (
                vec![0x93, 0xa1, b't', 0xff, 0x80],
                "element 2 (time) must not be negative",
            ),
        ];
        for (bytes, expected) in cases {
            let err = decode_request(&bytes, 1 << 20).unwrap_err().to_string();
            assert!(err.contains(expected), "{bytes:02x?}: {err}");
        }
        let mut unknown = vec![0x93];
        rmp::encode::write_str(&mut unknown, "t").unwrap();
        rmp::encode::write_bin(&mut unknown, &[1, 2, 3]).unwrap();
        rmp::encode::write_map_len(&mut unknown, 1).unwrap();
        rmp::encode::write_str(&mut unknown, "compressed").unwrap();
        rmp::encode::write_str(&mut unknown, "lz4").unwrap();
        assert_eq!(
            decode_request(&unknown, 1 << 20),
            Err(DecodeError::Compression("lz4".into()))
        );
        assert_eq!(decode_request(&[0xc0], 10), Ok(None));
    }

    #[test]
    fn json_single_events_decode_with_their_time_and_record() {
        let json = br#"["app", 1700000000.5, {"a": "b", "n": -1}, {"chunk": "xyz"}]"#;
        let req = decode_json(json, 1 << 20).unwrap().unwrap();
        assert_eq!(req.tag, "app");
        assert_eq!(
            req.entries[0].time,
            Time::Event {
                sec: 1_700_000_000,
                nsec: 500_000_000
            }
        );
        assert_eq!(
            req.entries[0].record[0],
            ("a".into(), Value::Str("b".into()))
        );
        assert_eq!(
            req.entries[0].record[1],
            ("n".into(), Value::Msgpack(vec![0xff]))
        );
        assert_eq!(
            ack_json(req.options.chunk.as_ref().unwrap()),
            br#"{"ack":"xyz"}"#
        );
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            ".{0,20}".prop_map(Value::Str),
            proptest::collection::vec(any::<u8>(), 0..20)
                .prop_filter("not UTF-8", |b| std::str::from_utf8(b).is_err())
                .prop_map(Value::Bin),
            any::<u64>().prop_map(Value::UInt),
            (i64::MIN..0).prop_map(|n| {
                let mut b = Vec::new();
                rmp::encode::write_sint(&mut b, n).unwrap();
                Value::Msgpack(b)
            }),
            any::<bool>().prop_map(|x| Value::Msgpack(vec![if x { 0xc3 } else { 0xc2 }])),
            Just(Value::Msgpack(vec![0xc0])),
            (".{0,5}", ".{0,5}").prop_map(|(k, v)| {
                let mut b = Vec::new();
                rmp::encode::write_map_len(&mut b, 1).unwrap();
                rmp::encode::write_str(&mut b, &k).unwrap();
                rmp::encode::write_str(&mut b, &v).unwrap();
                Value::Msgpack(b)
            }),
        ]
    }

    fn entry_strategy() -> impl Strategy<Value = Entry> {
        (
            prop_oneof![
                any::<u64>().prop_map(Time::Seconds),
                (any::<u32>(), 0u32..1_000_000_000)
                    .prop_map(|(sec, nsec)| Time::Event { sec, nsec }),
            ],
            proptest::collection::vec(("[a-z_.]{1,8}", value()), 0..6),
        )
            .prop_map(|(time, mut record)| {
                record.sort_by(|a, b| a.0.cmp(&b.0));
                record.dedup_by(|a, b| a.0 == b.0);
                Entry {
                    time,
                    metadata: None,
                    record,
                }
            })
    }

    proptest! {
        #[test]
        fn round_trip_every_mode(
            tag in ".{0,12}",
            mode in prop_oneof![Just(Mode::Message), Just(Mode::Forward), Just(Mode::PackedForward), Just(Mode::CompressedPackedForward)],
            entries in proptest::collection::vec(entry_strategy(), 1..8),
            size in proptest::option::of(any::<u64>()),
            chunk in proptest::option::of("[A-Za-z0-9+/=\n]{1,30}"),
        ) {
            let entries = if mode == Mode::Message { entries[..1].to_vec() } else { entries };
            let req = Request {
                tag,
                mode,
                entries,
                options: Options {
                    size,
                    chunk: chunk.as_deref().map(Chunk::text),
                    compressed: (mode == Mode::CompressedPackedForward).then(|| "gzip".to_string()),
                    fluent_signal: None,
                    metadata: None,
                },
            };
            let bytes = req.encode();
            prop_assert_eq!(frame::scan(&bytes, 1 << 20), Ok(frame::Scan::Complete(bytes.len())));
            prop_assert_eq!(decode_request(&bytes, 1 << 20), Ok(Some(req)));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(frame::Scan::Complete(n)) = frame::scan(&bytes, 1 << 16) {
                let _ = decode_request(&bytes[..n], 1 << 16);
            }
        }
    }
}
