//! Decoding one request (server side), lazily: [`decode_head`] reads the tag, the mode and the
//! options of a complete frame, and [`Head::entries`] then yields its events one at a time,
//! so a 16 MiB PackedForward of three-byte events (or a small gzip bomb) never becomes millions
//! of decoded values at once. Every entry form Fluent Bit 5.x and Fluentd 1.x send is accepted:
//!
//! - `[time, record]`, time as an integer, an EventTime (ext type 0) or a float;
//! - `[[time, metadata], record]`, Fluent Bit's form since 2.x (`retain_metadata_in_forward_mode`
//!   on by default, and always inside PackedForward), with the `fluent_signal` option;
//! - options `size`, `chunk`, `compressed` (`text`, `gzip`, and fluentd's experimental `zstd`;
//!   several concatenated members or frames), `fluent_signal` (0 = logs; other signals are
//!   refused), `metadata` (Fluent Bit's Message mode: the record's metadata) and any other key
//!   (ignored);
//! - non-minimal headers (Fluent Bit writes map32 and array32 for tiny maps), entries in
//!   `str` (fluentd's str32, even over gzip bytes) or `bin`.
//!
//! Fluent Bit's OTLP group markers (EventTime seconds `0xFFFFFFFF` / `0xFFFFFFFE`) are decoded
//! as entries; [`Entry::is_group_marker`] tells the source to skip them.

use std::io::Read;

use super::frame::{self, Scan};
use super::{Chunk, Entry, Mode, Options, Request, Time};
use crate::record::Value;

/// Why a frame is not a request we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not MessagePack (or not JSON on a JSON connection).
    #[error("not a valid request: {0}")]
    Syntax(String),
    /// Valid MessagePack in the wrong shape.
    #[error("{0}")]
    Shape(String),
    /// `compressed` names something other than text, gzip or zstd.
    #[error("unsupported compression {0:?} (\"text\", \"gzip\" and \"zstd\" are supported)")]
    Compression(String),
    /// The compressed data is corrupt.
    #[error("corrupt compressed entries: {0}")]
    Corrupt(String),
    /// The decompressed entries exceed the limit.
    #[error("decompressed entries exceed the limit of {0} bytes (max_request_bytes)")]
    TooLarge(usize),
    /// A `fluent_signal` other than logs (0): Fluent Bit's metrics (1), traces (2), blobs (3)
    /// or profiles (4).
    #[error(
        "fluent_signal {0} ({name}) is not a log stream: perapera ships logs only \
         (route Fluent Bit's metrics and traces to another output)",
        name = signal_name(*.0)
    )]
    Signal(i64),
}

fn signal_name(signal: i64) -> &'static str {
    // include/fluent-bit/flb_input_chunk.h: FLB_INPUT_CHUNK_TYPE_*.
    match signal {
        1 => "metrics",
        2 => "traces",
        3 => "blobs",
        4 => "profiles",
        _ => "unknown",
    }
}

pub(super) fn shape(what: &str, expected: &str, got: &rmpv::Value) -> DecodeError {
    DecodeError::Shape(format!("{what} must be {expected}, got {}", kind(got)))
}

fn kind(v: &rmpv::Value) -> &'static str {
    use rmpv::Value as V;
    match v {
        V::Nil => "nil",
        V::Boolean(_) => "a boolean",
        V::Integer(_) => "an integer",
        V::F32(_) | V::F64(_) => "a float",
        V::String(_) => "a string",
        V::Binary(_) => "binary",
        V::Array(_) => "an array",
        V::Map(_) => "a map",
        V::Ext(..) => "an ext value",
    }
}

/// A request whose entries are still encoded.
#[derive(Debug)]
pub struct Head<'a> {
    /// The tag.
    pub tag: String,
    /// How the events are carried.
    pub mode: Mode,
    /// The options.
    pub options: Options,
    body: Body<'a>,
}

#[derive(Debug)]
enum Body<'a> {
    /// Message mode: the one entry, decoded.
    One(Entry),
    /// Forward mode: the array's elements; PackedForward: the stream.
    Stream { bytes: &'a [u8], count: Option<u64> },
    /// CompressedPackedForward: the gzip members (or zstd frames).
    Compressed { bytes: &'a [u8], zstd: bool },
}

/// Splits the first value off `rd` (whose lengths [`frame::scan`] has checked).
fn take_value<'a>(rd: &mut &'a [u8], limit: usize, what: &str) -> Result<&'a [u8], DecodeError> {
    match frame::scan(rd, limit) {
        Ok(Scan::Complete(n)) => {
            let (value, rest) = rd.split_at(n);
            *rd = rest;
            Ok(value)
        }
        Ok(Scan::Incomplete(_)) => Err(DecodeError::Syntax(format!("{what} is truncated"))),
        Err(e) => Err(DecodeError::Syntax(format!("{what}: {e}"))),
    }
}

fn value(bytes: &[u8]) -> Result<rmpv::Value, DecodeError> {
    rmpv::decode::read_value_with_max_depth(&mut &bytes[..], frame::MAX_DEPTH)
        .map_err(|e| DecodeError::Syntax(e.to_string()))
}

/// `v` as MessagePack bytes (kept as the sender's value: chunk ids, metadata, odd fields).
fn encoded(v: &rmpv::Value) -> Vec<u8> {
    let mut raw = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut raw, v);
    raw
}

/// Reads the tag, mode and options of one complete frame (as delimited by [`frame::scan`]).
/// `Ok(None)` is a `nil` heartbeat.
pub fn decode_head(frame: &[u8]) -> Result<Option<Head<'_>>, DecodeError> {
    let mut rd = frame;
    let marker = *frame
        .first()
        .ok_or_else(|| DecodeError::Syntax("empty frame".into()))?;
    if marker == 0xc0 {
        return Ok(None);
    }
    let Ok(len) = rmp::decode::read_array_len(&mut rd) else {
        let got = value(frame)?;
        return Err(shape("a request", "an array (or nil)", &got));
    };
    if !(2..=4).contains(&len) {
        return Err(DecodeError::Shape(format!(
            "a request must be an array of 2 to 4 elements, got {len}"
        )));
    }
    let tag = match value(take_value(&mut rd, usize::MAX, "the tag")?)? {
        rmpv::Value::String(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => return Err(shape("element 1 (tag)", "a string", &other)),
    };
    let second = take_value(&mut rd, usize::MAX, "element 2")?;
    let rest = (2..len)
        .map(|i| take_value(&mut rd, usize::MAX, &format!("element {}", i + 1)))
        .collect::<Result<Vec<_>, _>>()?;
    let second_marker = second[0];
    // Message mode: a time (or nil, which fluentd takes as "now") in the second place.
    let message = matches!(second_marker,
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xca | 0xcb | 0xcc..=0xd3 | 0xd4..=0xd8 | 0xc7..=0xc9);
    let (option_bytes, record_bytes) = if message {
        let mut rest = rest.into_iter();
        let record = rest
            .next()
            .ok_or_else(|| DecodeError::Shape("a Message-mode request needs a record".into()))?;
        (rest.next(), Some(record))
    } else {
        if rest.len() > 1 {
            return Err(DecodeError::Shape(format!(
                "a Forward or PackedForward request has 2 or 3 elements, got {}",
                rest.len() + 2
            )));
        }
        (rest.into_iter().next(), None)
    };
    let options = match option_bytes.map(value).transpose()? {
        None | Some(rmpv::Value::Nil) => Options::default(),
        Some(rmpv::Value::Map(m)) => options(m)?,
        Some(other) => return Err(shape("the option element", "a map", &other)),
    };
    if let Some(signal) = options.fluent_signal.filter(|&s| s != 0) {
        return Err(DecodeError::Signal(signal));
    }
    let (mode, body) = if let Some(record) = record_bytes {
        let entry = Entry {
            time: time(value(second)?, "element 2 (time)")?,
            metadata: None,
            record: fields(value(record)?, "element 3 (record)")?,
        };
        (Mode::Message, Body::One(entry))
    } else {
        let mut content = second;
        if let Ok(count) = rmp::decode::read_array_len(&mut content) {
            let count = Some(u64::from(count));
            (
                Mode::Forward,
                Body::Stream {
                    bytes: content,
                    count,
                },
            )
        } else {
            let mut content = second;
            let len = match second_marker {
                0xc4..=0xc6 => rmp::decode::read_bin_len(&mut content).ok(),
                0xa0..=0xbf | 0xd9..=0xdb => rmp::decode::read_str_len(&mut content).ok(),
                _ => None,
            };
            if len.is_none() {
                return Err(shape(
                    "element 2",
                    "a time (Message), an array (Forward) or bin/str (PackedForward)",
                    &value(second)?,
                ));
            }
            match options.compressed.as_deref() {
                None | Some("text") => (
                    Mode::PackedForward,
                    Body::Stream {
                        bytes: content,
                        count: None,
                    },
                ),
                Some(c @ ("gzip" | "zstd")) => (
                    Mode::CompressedPackedForward,
                    Body::Compressed {
                        bytes: content,
                        zstd: c == "zstd",
                    },
                ),
                Some(other) => return Err(DecodeError::Compression(other.to_string())),
            }
        }
    };
    Ok(Some(Head {
        tag,
        mode,
        options,
        body,
    }))
}

impl<'a> Head<'a> {
    /// The entries, one at a time; `max_bytes` bounds each packed entry and the decompressed
    /// total.
    pub fn entries(&self, max_bytes: usize) -> Entries<'a> {
        let src = match &self.body {
            Body::One(e) => Src::One(Some(e.clone())),
            Body::Stream { bytes, count } => Src::Stream {
                bytes,
                count: *count,
            },
            Body::Compressed { bytes, zstd } => Src::Inflate(Inflater {
                decoder: if *zstd {
                    match zstd::stream::read::Decoder::with_buffer(*bytes) {
                        Ok(d) => Box::new(d),
                        Err(e) => Box::new(Failing(Some(e))),
                    }
                } else {
                    Box::new(flate2::read::MultiGzDecoder::new(*bytes))
                },
                buf: Vec::new(),
                scanner: frame::Scanner::default(),
                total: 0,
                eof: false,
            }),
        };
        Entries {
            index: 0,
            max_bytes,
            src,
        }
    }
}

/// A request's entries (see [`Head::entries`]).
pub struct Entries<'a> {
    index: usize,
    max_bytes: usize,
    src: Src<'a>,
}

enum Src<'a> {
    One(Option<Entry>),
    Stream { bytes: &'a [u8], count: Option<u64> },
    Inflate(Inflater<'a>),
}

/// A decoder that could not start: reading reports why.
struct Failing(Option<std::io::Error>);

impl Read for Failing {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(self
            .0
            .take()
            .unwrap_or_else(|| std::io::Error::other("decoder failed")))
    }
}

/// Inflates a compressed stream a piece at a time, keeping only the entry being read.
struct Inflater<'a> {
    decoder: Box<dyn Read + Send + 'a>,
    buf: Vec<u8>,
    scanner: frame::Scanner,
    total: usize,
    eof: bool,
}

/// How much is inflated at a time.
const INFLATE_STEP: usize = 64 << 10;

impl Inflater<'_> {
    /// The next entry's bytes (moved to the front of `buf`), or `None` at the end.
    fn next_value(&mut self, max_bytes: usize, index: usize) -> Result<Option<usize>, DecodeError> {
        loop {
            if !self.buf.is_empty() {
                match self.scanner.scan(&self.buf, max_bytes) {
                    Ok(Scan::Complete(n)) => return Ok(Some(n)),
                    Ok(Scan::Incomplete(_)) if self.eof => {
                        return Err(DecodeError::Syntax(format!(
                            "packed entry {index} is truncated"
                        )))
                    }
                    Ok(Scan::Incomplete(_)) => {}
                    Err(frame::FrameError::TooLarge { .. }) => {
                        return Err(DecodeError::TooLarge(max_bytes))
                    }
                    Err(e) => {
                        return Err(DecodeError::Syntax(format!("packed entry {index}: {e}")))
                    }
                }
            } else if self.eof {
                return Ok(None);
            }
            let old = self.buf.len();
            self.buf.resize(old + INFLATE_STEP, 0);
            let n = self
                .decoder
                .read(&mut self.buf[old..])
                .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
            self.buf.truncate(old + n);
            self.total += n;
            if self.total > max_bytes {
                return Err(DecodeError::TooLarge(max_bytes));
            }
            self.eof = n == 0;
        }
    }
}

impl Iterator for Entries<'_> {
    type Item = Result<Entry, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let index = self.index;
        let bytes = match &mut self.src {
            Src::One(e) => return e.take().map(Ok),
            Src::Stream { bytes, count } => {
                if *count == Some(0) || (count.is_none() && bytes.is_empty()) {
                    return None;
                }
                if let Some(c) = count {
                    *c -= 1;
                }
                let what = format!("packed entry {index}");
                match take_value(bytes, self.max_bytes, &what) {
                    Ok(b) => value(b),
                    Err(e) => Err(e),
                }
            }
            Src::Inflate(inflater) => match inflater.next_value(self.max_bytes, index) {
                Ok(None) => return None,
                Ok(Some(n)) => {
                    let v = value(&inflater.buf[..n]);
                    inflater.buf.drain(..n);
                    v
                }
                Err(e) => Err(e),
            },
        };
        self.index += 1;
        let result = bytes.and_then(|v| entry(v, index));
        if result.is_err() {
            // Nothing after a bad entry is read.
            self.src = Src::One(None);
        }
        Some(result)
    }
}

/// Decodes one complete frame with all its entries. `Ok(None)` is a `nil` heartbeat.
/// `max_bytes` bounds decompressed entries.
pub fn decode_request(frame: &[u8], max_bytes: usize) -> Result<Option<Request>, DecodeError> {
    let Some(head) = decode_head(frame)? else {
        return Ok(None);
    };
    let entries = head.entries(max_bytes).collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Request {
        tag: head.tag,
        mode: head.mode,
        entries,
        options: head.options,
    }))
}

/// One JSON request as MessagePack, to be read by [`decode_head`]: fluentd's `in_forward`
/// accepts `[tag, time, record, option?]` and the Forward-mode array as JSON on connections
/// whose first byte is `[` or `{`.
pub fn json_frame(json: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let v: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| DecodeError::Syntax(format!("invalid JSON: {e}")))?;
    Ok(encoded(&json_to_msgpack(v)))
}

/// [`decode_request`] for a JSON request.
pub fn decode_json(json: &[u8], max_bytes: usize) -> Result<Option<Request>, DecodeError> {
    decode_request(&json_frame(json)?, max_bytes)
}

fn json_to_msgpack(v: serde_json::Value) -> rmpv::Value {
    use rmpv::Value as V;
    use serde_json::Value as J;
    match v {
        J::Null => V::Nil,
        J::Bool(b) => V::Boolean(b),
        J::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => V::from(u),
            (None, Some(i), _) => V::from(i),
            (_, _, Some(f)) => V::F64(f),
            _ => V::Nil,
        },
        J::String(s) => V::from(s),
        J::Array(items) => V::Array(items.into_iter().map(json_to_msgpack).collect()),
        J::Object(map) => V::Map(
            map.into_iter()
                .map(|(k, v)| (V::from(k), json_to_msgpack(v)))
                .collect(),
        ),
    }
}

fn options(map: Vec<(rmpv::Value, rmpv::Value)>) -> Result<Options, DecodeError> {
    use rmpv::Value as V;
    let mut o = Options::default();
    for (k, v) in map {
        match (k.as_str(), v) {
            (Some("size"), V::Integer(n)) => o.size = n.as_u64(),
            (Some("size"), other) => return Err(shape("option size", "an integer", &other)),
            (Some("chunk"), v @ (V::String(_) | V::Binary(_))) => {
                o.chunk = Some(Chunk(encoded(&v)))
            }
            (Some("chunk"), other) => return Err(shape("option chunk", "a string", &other)),
            (Some("compressed"), V::String(s)) => {
                o.compressed = Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            (Some("compressed"), other) => {
                return Err(shape("option compressed", "a string", &other))
            }
            (Some("fluent_signal"), V::Integer(n)) => {
                o.fluent_signal = Some(n.as_i64().unwrap_or(i64::MAX))
            }
            (Some("fluent_signal"), other) => {
                return Err(shape("option fluent_signal", "an integer", &other))
            }
            (Some("metadata"), m @ V::Map(_)) => o.metadata = Some(encoded(&m)),
            _ => {}
        }
    }
    Ok(o)
}

fn entry(value: rmpv::Value, index: usize) -> Result<Entry, DecodeError> {
    use rmpv::Value as V;
    let what = format!("entry {index}");
    let V::Array(pair) = value else {
        return Err(shape(&what, "an array [time, record]", &value));
    };
    let Ok([t, r]) = <[V; 2]>::try_from(pair) else {
        return Err(DecodeError::Shape(format!(
            "{what} must be an array [time, record] of 2 elements"
        )));
    };
    let (time, metadata) = match t {
        // Fluent Bit: [[time, metadata], record].
        V::Array(inner) => {
            let Ok([t, m]) = <[V; 2]>::try_from(inner) else {
                return Err(DecodeError::Shape(format!(
                    "{what} header must be [time, metadata] of 2 elements"
                )));
            };
            let meta = match m {
                m @ V::Map(_) => encoded(&m),
                V::Nil => vec![0x80],
                other => return Err(shape(&format!("{what} metadata"), "a map", &other)),
            };
            (time(t, &format!("{what} time"))?, Some(meta))
        }
        t => (time(t, &format!("{what} time"))?, None),
    };
    Ok(Entry {
        time,
        metadata,
        record: fields(r, &format!("{what} record"))?,
    })
}

fn time(value: rmpv::Value, what: &str) -> Result<Time, DecodeError> {
    use rmpv::Value as V;
    match value {
        V::Integer(n) => n
            .as_u64()
            .map(Time::Seconds)
            .ok_or_else(|| DecodeError::Shape(format!("{what} must not be negative"))),
        V::Ext(0, data) if data.len() == 8 => Ok(Time::Event {
            sec: u32::from_be_bytes([data[0], data[1], data[2], data[3]]),
            nsec: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
        }),
        V::F64(f) if (0.0..4_294_967_296.0).contains(&f) => Ok(float_time(f)),
        V::F32(f) if f >= 0.0 => Ok(float_time(f64::from(f))),
        // fluentd's in_forward: a nil time is "now" (as is 0).
        V::Nil => Ok(Time::Seconds(0)),
        other => Err(shape(
            what,
            "an integer or an EventTime (ext type 0, 8 bytes)",
            &other,
        )),
    }
}

fn float_time(f: f64) -> Time {
    let sec = f.trunc();
    Time::Event {
        sec: sec as u32,
        nsec: (((f - sec) * 1e9) as u32).min(999_999_999),
    }
}

/// A record map as fields: text that is UTF-8 → `Str`, other text and bytes → `Bin`,
/// non-negative integers → `UInt`, anything else kept as encoded MessagePack.
fn fields(value: rmpv::Value, what: &str) -> Result<Vec<(String, Value)>, DecodeError> {
    use rmpv::Value as V;
    let map = match value {
        V::Map(m) => m,
        other => return Err(shape(what, "a map", &other)),
    };
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let name = match k {
                V::String(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                other => other.to_string(),
            };
            let value = match v {
                V::String(s) => Value::from_bytes(s.into_bytes()),
                V::Binary(b) => Value::Bin(b),
                V::Integer(n) if n.as_u64().is_some() => Value::UInt(n.as_u64().unwrap_or(0)),
                other => Value::Msgpack(encoded(&other)),
            };
            (name, value)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    //! What Fluent Bit 5.1.1 and Fluentd 1.19 really send. The Fluent Bit vectors were captured
    //! from a fluent-bit built from d55459d4 (v5.1.1-4) forwarding to a TCP receiver; the
    //! Fluentd ones produced by fluentd's own `event.rb`, `time.rb`, `msgpack_factory.rb` and
    //! `out_forward.rb` `send_data_actual` under msgpack-ruby 1.4.2. Records: `{"log":"hello"}`
    //! at 1700000000.123456789 and `{"log":"world"}` at 1700000001.
    use super::super::tests::hex;
    use super::*;

    fn logs(metadata: bool, event_time: bool) -> Vec<Entry> {
        [
            ("hello", 1_700_000_000, 123_456_789),
            ("world", 1_700_000_001, 0),
        ]
        .into_iter()
        .map(|(text, sec, nsec)| Entry {
            time: if event_time {
                Time::Event { sec, nsec }
            } else {
                Time::Seconds(u64::from(sec))
            },
            metadata: metadata.then(|| vec![0x80]),
            record: vec![("log".into(), Value::Str(text.into()))],
        })
        .collect()
    }

    fn decoded(bytes: &str) -> Request {
        decode_request(&hex(bytes), 1 << 20).unwrap().unwrap()
    }

    const FB_TOKEN: &[u8] = b"rlu+sHXCk0nB19CkD6sw7Q==";

    #[test]
    fn fluent_bit_default_forward_mode_with_metadata_and_ack() {
        // plugins/out_forward/forward.c flush_forward_mode + forward_format.c append_options:
        // Forward mode, [[EventTime, {}], record] entries, options in a map32 (chunk, size,
        // fluent_signal), the chunk base64 of SHA-512 of the payload.
        let r = decoded(concat!(
            "93a76170702e6c6f67929292d7006553f100075bcd158081a36c6f67a568656c6c6f9292d7006553f1",
            "01000000008081a36c6f67a5776f726c64df00000003a56368756e6bb8726c752b734858436b306e42",
            "3139436b4436737737513d3da473697a6502ad666c75656e745f7369676e616c00"
        ));
        assert_eq!(r.mode, Mode::Forward);
        assert_eq!(r.tag, "app.log");
        assert_eq!(r.entries, logs(true, true));
        assert_eq!(r.options.chunk.as_ref().map(Chunk::content), Some(FB_TOKEN));
        assert_eq!(
            (r.options.size, r.options.fluent_signal),
            (Some(2), Some(0))
        );
        // The same without ack and options (forward.c, send_options false), and with
        // send_options but no ack.
        let bare = decoded(concat!(
            "92a76170702e6c6f67929292d7006553f100075bcd158081a36c6f67a568656c6c6f9292d7006553f1",
            "01000000008081a36c6f67a5776f726c64"
        ));
        assert_eq!(
            (bare.entries, bare.options),
            (logs(true, true), Options::default())
        );
        let options = decoded(concat!(
            "93a76170702e6c6f67929292d7006553f100075bcd158081a36c6f67a568656c6c6f9292d7006553f1",
            "01000000008081a36c6f67a5776f726c64df00000002a473697a6502ad666c75656e745f7369676e61",
            "6c00"
        ));
        assert_eq!(options.entries, logs(true, true));
        assert_eq!(options.options.chunk, None);
    }

    #[test]
    fn fluent_bit_tail_writes_map32_headers_for_metadata_and_record() {
        // in_tail through flb_log_event_encoder_dynamic_field.c scope_enter: df00000000
        // metadata, df00000001 record (flb_mp_map_header_init).
        let r = decoded(concat!(
            "93a76170702e6c6f67929292d7006553f100075bcd15df00000000df00000001a36c6f67a568656c6c",
            "6f9292d7006553f10100000000df00000000df00000001a36c6f67a5776f726c64df00000003a56368",
            "756e6bb8576c6b4c2f3559557a556154733366393445426479413d3da473697a6502ad666c75656e74",
            "5f7369676e616c00"
        ));
        assert_eq!(r.entries, logs(true, true));
        assert_eq!(
            r.options.chunk.as_ref().map(Chunk::content),
            Some(&b"WlkL/5YUzUaTs3f94EBdyA=="[..])
        );
    }

    #[test]
    fn fluent_bit_gzip_compat_and_transcoded_forms() {
        // forward.c flush_forward_mode -> flb_gzip_compress: one gzip member over the chunk
        // as bin, "compressed":"gzip" (bytes as captured: miniz wrote a stored block).
        let gzip = decoded(concat!(
            "93a76170702e6c6f67c4471f8b08000000000000ff013000cfff9292d7006553f100075bcd158081a3",
            "6c6f67a568656c6c6f9292d7006553f101000000008081a36c6f67a5776f726c64fac000dc30000000",
            "df00000004a56368756e6bb8726c752b734858436b306e423139436b4436737737513d3da473697a65",
            "02aa636f6d70726573736564a4677a6970ad666c75656e745f7369676e616c00"
        ));
        assert_eq!(gzip.mode, Mode::CompressedPackedForward);
        assert_eq!(gzip.entries, logs(true, true));
        assert_eq!(
            gzip.options.chunk.as_ref().map(Chunk::content),
            Some(FB_TOKEN)
        );
        // forward_format.c flb_forward_format_forward_compat_mode (Time_as_Integer true):
        // Forward mode with integer times.
        let compat = decoded(concat!(
            "93a76170702e6c6f679292ce6553f10081a36c6f67a568656c6c6f92ce6553f10181a36c6f67a5776f",
            "726c64df00000003a56368756e6bb8726c752b734858436b306e423139436b4436737737513d3da473",
            "697a6502ad666c75656e745f7369676e616c00"
        ));
        assert_eq!(compat.mode, Mode::Forward);
        assert_eq!(compat.entries, logs(false, false));
        // forward_format.c flb_forward_format_transcode (retain_metadata_in_forward_mode
        // false): [EventTime, record] in array32 headers.
        let transcoded = decoded(concat!(
            "93a76170702e6c6f6792dd00000002d7006553f100075bcd1581a36c6f67a568656c6c6fdd00000002",
            "d7006553f1010000000081a36c6f67a5776f726c64df00000003a56368756e6bb842735738675a4233",
            "566d685a71353259314e4f6b38413d3da473697a6502ad666c75656e745f7369676e616c00"
        ));
        assert_eq!(transcoded.entries, logs(false, true));
    }

    #[test]
    fn fluent_bit_message_mode_for_dynamic_tags() {
        // forward_format.c flb_forward_format_message_mode (Tag x.$log): one record per
        // frame, options always present.
        let frames = hex(concat!(
            "94a7782e68656c6c6fd7006553f100075bcd1581a36c6f67a568656c6c6fdf00000001ad666c75656e",
            "745f7369676e616c00",
            "94a7782e776f726c64d7006553f1010000000081a36c6f67a5776f726c64df00000001ad666c75656e",
            "745f7369676e616c00"
        ));
        let frame::Scan::Complete(n) = frame::scan(&frames, 1 << 20).unwrap() else {
            panic!("incomplete")
        };
        let first = decode_request(&frames[..n], 1 << 20).unwrap().unwrap();
        let second = decode_request(&frames[n..], 1 << 20).unwrap().unwrap();
        assert_eq!((first.mode, first.tag.as_str()), (Mode::Message, "x.hello"));
        assert_eq!(second.tag, "x.world");
        let expected = logs(false, true);
        assert_eq!([first.entries, second.entries].concat(), expected);
        // The metadata option (non-empty record metadata) is kept for the source.
        let mut with_meta = hex("94a17801");
        rmp::encode::write_map_len(&mut with_meta, 0).unwrap();
        with_meta.extend_from_slice(&hex("81a86d6574616461746181a16b01"));
        let head = decode_head(&with_meta).unwrap().unwrap();
        assert_eq!(head.options.metadata, Some(hex("81a16b01")));
    }

    #[test]
    fn fluentd_packed_forward_in_str32() {
        // lib/fluent/plugin/out_forward.rb Node#send_data_actual: str32 (db) entries,
        // options {size, compressed: "text", chunk: base64 with "\n"}.
        let r = decoded(concat!(
            "93a76170702e6c6f67db0000002c92d7006553f100075bcd1581a36c6f67a568656c6c6f92d7006553",
            "f1010000000081a36c6f67a5776f726c6483a473697a6502aa636f6d70726573736564a474657874a5",
            "6368756e6bb941414543417751464267634943516f4c4441304f44773d3d0a"
        ));
        assert_eq!(r.mode, Mode::PackedForward);
        assert_eq!(r.entries, logs(false, true));
        let chunk = r.options.chunk.unwrap();
        assert_eq!(chunk.content(), b"AAECAwQFBgcICQoLDA0ODw==\n");
        assert_eq!(
            super::super::ack(&chunk),
            hex("81a361636bb941414543417751464267634943516f4c4441304f44773d3d0a")
        );
        // time_as_integer true: event.rb to_msgpack_stream_forced_integer.
        let ints = decoded(concat!(
            "93a76170702e6c6f67db0000002292ce6553f10081a36c6f67a568656c6c6f92ce6553f10181a36c6f",
            "67a5776f726c6483a473697a6502aa636f6d70726573736564a474657874a56368756e6bb941414543",
            "417751464267634943516f4c4441304f44773d3d0a"
        ));
        assert_eq!(ints.entries, logs(false, false));
        // compress gzip: compressable.rb (Zlib::GzipWriter, mtime zeroed here), still str32.
        let gzip = decoded(concat!(
            "93a76170702e6c6f67db000000381f8b08000000000000039b749d2135f823037bf459d1c6c539f9e9",
            "4b33527372f227814519198000225a9e5f94930200eff343292c00000083a473697a6502aa636f6d70",
            "726573736564a4677a6970a56368756e6bb941414543417751464267634943516f4c4441304f44773d",
            "3d0a"
        ));
        assert_eq!(gzip.mode, Mode::CompressedPackedForward);
        assert_eq!(gzip.entries, logs(false, true));
    }

    #[test]
    fn fluentd_zstd_frames_decode() {
        // compress zstd (fluentd >= 1.19, experimental): one zstd frame per buffer write.
        let mut stream = Vec::new();
        for e in logs(false, true) {
            super::super::write_entry(&mut stream, e.time, &e.record);
        }
        let (a, b) = stream.split_at(22);
        let frames = [
            zstd::bulk::compress(a, 3).unwrap(),
            zstd::bulk::compress(b, 3).unwrap(),
        ]
        .concat();
        let mut req = hex("93a76170702e6c6f67");
        rmp::encode::write_str_len(&mut req, frames.len() as u32).unwrap();
        req.extend_from_slice(&frames);
        req.extend_from_slice(&hex("81aa636f6d70726573736564a47a737464"));
        let r = decode_request(&req, 1 << 20).unwrap().unwrap();
        assert_eq!(r.entries, logs(false, true));
        let corrupt = [&req[..12], &[0u8; 8][..], &req[20..]].concat();
        assert!(matches!(
            decode_request(&corrupt, 1 << 20),
            Err(DecodeError::Corrupt(_) | DecodeError::Syntax(_))
        ));
    }

    #[test]
    fn other_signals_are_refused_and_group_markers_recognised() {
        // forward.c flush_forward_mode for a non-log chunk: bin payload, no size,
        // fluent_signal 1 (metrics).
        let metrics = hex(concat!(
            "93a76170702e6c6f67c403010203df00000002a56368756e6bb8726c752b734858436b306e42313943",
            "6b4436737737513d3dad666c75656e745f7369676e616c01"
        ));
        let err = decode_request(&metrics, 1 << 20).unwrap_err();
        assert_eq!(err, DecodeError::Signal(1));
        assert!(
            err.to_string().contains("(metrics) is not a log stream"),
            "{err}"
        );
        // src/flb_log_event_decoder.c: group start (0xFFFFFFFF) and end (0xFFFFFFFE).
        let marker = hex("92a174929292d700ffffffff0000000081a17801809292d700fffffffe000000008080");
        let r = decode_request(&marker, 1 << 20).unwrap().unwrap();
        assert!(r.entries.iter().all(Entry::is_group_marker));
        assert!(!logs(true, true)[0].is_group_marker());
    }
}
