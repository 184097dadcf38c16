//! Serialising a [`Record`] for the wire: MessagePack for Kafka, JSON lines for stdout.
//!
//! The Kafka value is exactly the record's field map (`rmp_serde` with named maps): text is
//! msgpack `str`, bytes are msgpack `bin` (through `serde_bytes`, never an array of
//! integers), integers stay integers and repeated fields are arrays. Consumers that already
//! read fluentd's msgpack records (`record.to_msgpack`) read these unchanged.

use base64::Engine as _;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::record::{Record, Value};

/// The field map of a record, serialised as a msgpack / JSON map.
struct Fields<'a>(&'a [(String, Value)]);

impl Serialize for Fields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, &MsgpackValue(value))?;
        }
        map.end()
    }
}

struct MsgpackValue<'a>(&'a Value);

impl Serialize for MsgpackValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Str(v) => s.serialize_str(v),
            Value::Bin(v) => s.serialize_bytes(v),
            Value::UInt(v) => s.serialize_u64(*v),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&MsgpackValue(item))?;
                }
                seq.end()
            }
        }
    }
}

/// Encodes the record's fields as a MessagePack map into `buf` (cleared first).
pub fn msgpack_into(record: &Record, buf: &mut Vec<u8>) {
    buf.clear();
    // Writing into a Vec cannot fail, and every value is representable in msgpack.
    let _ = rmp_serde::encode::write_named(buf, &Fields(&record.fields));
}

/// Encodes the record's fields as a MessagePack map.
pub fn msgpack(record: &Record) -> Vec<u8> {
    let mut buf = Vec::with_capacity(record.byte_size() + 64);
    msgpack_into(record, &mut buf);
    buf
}

/// A JSON object: binary values become `{"$base64": "..."}` so that they stay byte-exact and
/// are distinguishable from text.
struct JsonValue<'a>(&'a Value);

impl Serialize for JsonValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Str(v) => s.serialize_str(v),
            Value::Bin(v) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry(
                    "$base64",
                    &base64::engine::general_purpose::STANDARD.encode(v),
                )?;
                map.end()
            }
            Value::UInt(v) => s.serialize_u64(*v),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&JsonValue(item))?;
                }
                seq.end()
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
    let _ = serde_json::to_writer(&mut *buf, &JsonFields(&record.fields));
    buf.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msgpack_types_are_str_bin_int_array() {
        let r = Record {
            fields: vec![
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
            ..Record::default()
        };
        let bytes = msgpack(&r);
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
        let r = Record {
            fields: vec![
                ("M".into(), Value::Str("x\"y".into())),
                ("B".into(), Value::Bin(vec![0xff])),
            ],
            ..Record::default()
        };
        let mut buf = Vec::new();
        json_line_into(&r, &mut buf);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "{\"M\":\"x\\\"y\",\"B\":{\"$base64\":\"/w==\"}}\n"
        );
    }
}
