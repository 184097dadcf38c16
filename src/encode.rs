//! Serialising a [`Record`] for the wire: MessagePack for Kafka, JSON lines for stdout.
//!
//! The Kafka value is exactly the record's field map. Sources write it with `rmp`'s encoders
//! while reading (the `write_*` functions here), and the sinks send those bytes as they are:
//! text is msgpack `str`, bytes are msgpack `bin` (never an array of integers), integers stay
//! integers in their smallest form, repeated fields are arrays, and values a forward sender
//! gave us (nested maps, floats, ...) are copied as they came.
//! Consumers that already read fluentd's msgpack records (`record.to_msgpack`) read these
//! unchanged.

use base64::Engine as _;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::record::{Record, Value};

/// Writes one value as MessagePack: text `str`, bytes `bin`, integers in their smallest
/// form, repeated fields as arrays, other values as they came.
fn write_value(buf: &mut Vec<u8>, value: &Value) {
    // Writing into a Vec cannot fail.
    match value {
        Value::Str(v) => write_str(buf, v),
        Value::Bin(v) => write_bin(buf, v),
        Value::UInt(v) => {
            let _ = rmp::encode::write_uint(buf, *v);
        }
        Value::Array(items) => {
            let _ = rmp::encode::write_array_len(buf, items.len() as u32);
            items.iter().for_each(|i| write_value(buf, i));
        }
        Value::Msgpack(raw) => buf.extend_from_slice(raw),
    }
}

/// Appends the fields as a MessagePack map to `buf`.
pub fn fields_into(fields: &[(String, Value)], buf: &mut Vec<u8>) {
    let _ = rmp::encode::write_map_len(buf, fields.len() as u32);
    fields_entries_into(fields, buf);
}

/// Appends the fields as map entries (no header) to `buf`.
pub fn fields_entries_into(fields: &[(String, Value)], buf: &mut Vec<u8>) {
    for (name, value) in fields {
        write_str(buf, name);
        write_value(buf, value);
    }
}

// The hot-path writers: sources encode a record's map with these while reading, without
// building fields first (see `Record::from_msgpack`).

/// A map header for `n` entries.
pub fn write_map_len(buf: &mut Vec<u8>, n: usize) {
    let _ = rmp::encode::write_map_len(buf, n as u32);
}

/// An array header for `n` items.
pub fn write_array_len(buf: &mut Vec<u8>, n: usize) {
    let _ = rmp::encode::write_array_len(buf, n as u32);
}

/// A text key or value (`str`).
pub fn write_str(buf: &mut Vec<u8>, s: &str) {
    write_str_bytes(buf, s.as_bytes());
}

/// `str` of bytes the caller checked to be UTF-8.
fn write_str_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    // The header by hand: rmp writes it through `io::Write` a byte at a time, which showed
    // in the journal reader's profile (two strings per field).
    let n = bytes.len();
    if n < 32 {
        buf.push(0xa0 | n as u8);
    } else {
        header(buf, [0xd9, 0xda, 0xdb], n);
    }
    buf.extend_from_slice(bytes);
}

/// A name (a map key) that must be `str`: as it is when UTF-8, else with U+FFFD for what
/// is not.
pub fn write_name(buf: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.is_ascii() || simdutf8::basic::from_utf8(bytes).is_ok() {
        write_str_bytes(buf, bytes);
    } else {
        write_str(buf, &String::from_utf8_lossy(bytes));
    }
}

/// Bytes (`bin`).
pub fn write_bin(buf: &mut Vec<u8>, b: &[u8]) {
    header(buf, [0xc4, 0xc5, 0xc6], b.len());
    buf.extend_from_slice(b);
}

/// A str/bin header with an 8, 16 or 32-bit length (`markers` in that order). Longer than
/// u32 cannot happen: records are far smaller than 4 GiB (a field is at most what fits a
/// Kafka message or a forward request).
fn header(buf: &mut Vec<u8>, markers: [u8; 3], n: usize) {
    if n <= u8::MAX as usize {
        buf.extend_from_slice(&[markers[0], n as u8]);
    } else if n <= u16::MAX as usize {
        buf.push(markers[1]);
        buf.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        buf.push(markers[2]);
        buf.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

/// Bytes as `str` when they are valid UTF-8, else as `bin`: nothing is lost or mangled.
pub fn write_text(buf: &mut Vec<u8>, bytes: &[u8]) {
    // Most journal fields and log lines are short and ASCII: checking that is a word at a
    // time, where a UTF-8 validator's setup dominates for short inputs (simdutf8 hands those
    // to core's, which showed in the small-entry journal profile).
    if bytes.is_ascii() || simdutf8::basic::from_utf8(bytes).is_ok() {
        write_str_bytes(buf, bytes);
    } else {
        write_bin(buf, bytes);
    }
}

/// An unsigned integer in its smallest form.
pub fn write_uint(buf: &mut Vec<u8>, n: u64) {
    let _ = rmp::encode::write_uint(buf, n);
}

/// A JSON object: binary values become `{"$base64": "..."}` so that they stay byte-exact and
/// are distinguishable from text.
struct JsonValue<'a>(&'a Value);

impl Serialize for JsonValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Str(v) => s.serialize_str(v),
            Value::Bin(v) => base64_object(s, v),
            Value::UInt(v) => s.serialize_u64(*v),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&JsonValue(item))?;
                }
                seq.end()
            }
            Value::Msgpack(raw) => match rmpv::decode::read_value(&mut raw.as_slice()) {
                Ok(v) => JsonAny(&v).serialize(s),
                Err(_) => base64_object(s, raw),
            },
        }
    }
}

/// Bytes as `{"$base64": "..."}`.
fn base64_object<S: Serializer>(s: S, bytes: &[u8]) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(1))?;
    map.serialize_entry(
        "$base64",
        &base64::engine::general_purpose::STANDARD.encode(bytes),
    )?;
    map.end()
}

/// Any MessagePack value as JSON: bytes (and text that is not UTF-8) as `{"$base64"}`, an
/// ext as `{"$ext": type, "$base64": data}`, map keys that are not text as their JSON.
struct JsonAny<'a>(&'a rmpv::Value);

impl Serialize for JsonAny<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use rmpv::Value as V;
        match self.0 {
            V::Nil => s.serialize_unit(),
            V::Boolean(b) => s.serialize_bool(*b),
            V::Integer(i) => match (i.as_u64(), i.as_i64()) {
                (Some(u), _) => s.serialize_u64(u),
                (None, Some(n)) => s.serialize_i64(n),
                _ => s.serialize_unit(),
            },
            V::F32(f) => s.serialize_f32(*f),
            V::F64(f) => s.serialize_f64(*f),
            V::String(t) => match t.as_str() {
                Some(t) => s.serialize_str(t),
                None => base64_object(s, t.as_bytes()),
            },
            V::Binary(b) => base64_object(s, b),
            V::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&JsonAny(item))?;
                }
                seq.end()
            }
            V::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    match k {
                        V::String(t) => {
                            map.serialize_key(&String::from_utf8_lossy(t.as_bytes()))?
                        }
                        other => map.serialize_key(&other.to_string())?,
                    }
                    map.serialize_value(&JsonAny(v))?;
                }
                map.end()
            }
            V::Ext(ty, data) => {
                let mut map = s.serialize_map(Some(2))?;
                map.serialize_entry("$ext", ty)?;
                map.serialize_entry(
                    "$base64",
                    &base64::engine::general_purpose::STANDARD.encode(data),
                )?;
                map.end()
            }
        }
    }
}

struct JsonFields<'a>(&'a [(String, Value)]);

impl Serialize for JsonFields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, &JsonValue(value))?;
        }
        map.end()
    }
}

/// Appends the record as one JSON line (with `\n`) to `buf`.
pub fn json_line_into(record: &Record, buf: &mut Vec<u8>) {
    // Serialising strings, integers and maps into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, &JsonFields(&record.fields()));
    buf.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn str_and_bin_headers_match_rmp_at_every_boundary() {
        for n in [0, 1, 31, 32, 255, 256, 65_535, 65_536, 70_000] {
            let text = "x".repeat(n);
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            write_str(&mut ours, &text);
            rmp::encode::write_str(&mut theirs, &text).unwrap();
            assert_eq!(ours, theirs, "str of {n} bytes");
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            write_bin(&mut ours, text.as_bytes());
            rmp::encode::write_bin(&mut theirs, text.as_bytes()).unwrap();
            assert_eq!(ours, theirs, "bin of {n} bytes");
        }
        let mut b = Vec::new();
        write_text(&mut b, b"caf\xc3\xa9");
        assert_eq!(b, b"\xa5caf\xc3\xa9", "valid UTF-8 is str");
        b.clear();
        write_text(&mut b, b"caf\xc3");
        assert_eq!(b, b"\xc4\x04caf\xc3", "invalid UTF-8 is bin");
    }

    #[test]
    fn msgpack_types_are_str_bin_int_array() {
        let r = Record::from_fields(
            &[
                ("MESSAGE".into(), Value::Str("héllo".into())),
                ("BLOB".into(), Value::Bin(vec![0, 0xff, 10])),
                (
                    "__REALTIME_TIMESTAMP".into(),
                    Value::UInt(1_700_000_000_000_000),
                ),
                (
                    "TAG".into(),
                    Value::Array(vec![Value::Str("a".into()), Value::Bin(vec![0xfe])]),
                ),
            ],
            0,
            crate::record::Position::default(),
        );
        let bytes = r.msgpack().to_vec();
        let v = rmpv::decode::read_value(&mut bytes.as_slice()).unwrap();
        let map = v.as_map().unwrap();
        assert_eq!(map.len(), 4);
        assert_eq!(map[0].0.as_str(), Some("MESSAGE"));
        assert_eq!(map[0].1.as_str(), Some("héllo"));
        assert_eq!(map[1].1, rmpv::Value::Binary(vec![0, 0xff, 10]));
        assert_eq!(map[2].1.as_u64(), Some(1_700_000_000_000_000));
        assert_eq!(
            map[3].1,
            rmpv::Value::Array(vec!["a".into(), rmpv::Value::Binary(vec![0xfe])])
        );
    }

    #[test]
    fn json_marks_binary_values() {
        let r = Record::from_fields(
            &[
                ("M".into(), Value::Str("x\"y".into())),
                ("B".into(), Value::Bin(vec![0xff])),
            ],
            0,
            crate::record::Position::default(),
        );
        let mut buf = Vec::new();
        json_line_into(&r, &mut buf);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "{\"M\":\"x\\\"y\",\"B\":{\"$base64\":\"/w==\"}}\n"
        );
    }
}
