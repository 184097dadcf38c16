//! A record as one JSON line: text as JSON strings, integers as numbers, binary values as
//! `{"$base64": "..."}` so that they stay byte-exact and distinguishable from text.

use base64::Engine as _;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::record::{Record, Value};

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
    fn binary_values_become_base64_objects_and_text_is_escaped() {
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
