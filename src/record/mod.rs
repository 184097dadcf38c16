//! The unit that flows through perapera: a [`Record`] read from a source, plus the
//! templates that turn a record into a Kafka topic, key or forward tag.
//!
//! A record is an ordered list of fields whose values keep the bytes the source gave us:
//! valid UTF-8 becomes [`Value::Str`], anything else [`Value::Bin`], so nothing is lost or
//! mangled on the way to MessagePack. A field that occurs more than once in a journal entry
//! becomes a [`Value::Array`].

mod template;

use std::sync::Arc;

pub use crate::msgpack::Value;
pub use crate::position::{FileRef, Position};
pub use template::{sanitize_topic, Template, TemplateError};

/// One log entry on its way to the sink.
///
/// The fields are kept as the MessagePack map that is the Kafka value (and the forward
/// record): sources encode straight into it while reading, sinks send its bytes as they
/// are, and templates look fields up in it without decoding. Editing a record (truncation,
/// dead-letter stubs) decodes and re-encodes it; that is the rare path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// A MessagePack map with text keys, names unique. Never changed in place (an edit makes a
    /// new one): the Kafka sink lends librdkafka a reference instead of a copy.
    map: Arc<Vec<u8>>,
    /// The entry's time in nanoseconds since the Unix epoch (the Kafka timestamp source).
    pub time_ns: u64,
    /// Where this entry is in its source; persisted once acknowledged.
    pub position: Position,
}

impl Default for Record {
    fn default() -> Self {
        Record {
            map: Arc::new(vec![0x80]),
            time_ns: 0,
            position: Position::default(),
        }
    }
}

impl Record {
    /// A record of these fields (names unique, in encoding order).
    pub fn from_fields(fields: &[(String, Value)], time_ns: u64, position: Position) -> Record {
        let mut map = Vec::with_capacity(
            fields
                .iter()
                .map(|(n, v)| n.len() + v.len() + 10)
                .sum::<usize>()
                + 5,
        );
        crate::msgpack::fields_into(fields, &mut map);
        Record {
            map: Arc::new(map),
            time_ns,
            position,
        }
    }

    /// A record whose fields a source already encoded as a MessagePack map with unique text
    /// keys (written with [`crate::msgpack::write_map_len`] and friends).
    pub fn from_msgpack(map: Vec<u8>, time_ns: u64, position: Position) -> Record {
        Record {
            map: Arc::new(map),
            time_ns,
            position,
        }
    }

    /// The fields as one MessagePack map: the Kafka value.
    pub fn msgpack(&self) -> &[u8] {
        &self.map
    }

    /// The map, shared: its bytes never change while a reference is held.
    pub fn msgpack_shared(&self) -> Arc<Vec<u8>> {
        self.map.clone()
    }

    /// The fields, decoded.
    pub fn fields(&self) -> Vec<(String, Value)> {
        crate::msgpack::fields(&self.map)
    }

    /// The value of a field, if present (decoded).
    pub fn get(&self, name: &str) -> Option<Value> {
        crate::msgpack::find(&self.map, name).map(crate::msgpack::value)
    }

    /// Appends a field's text (see [`crate::msgpack::render`]); false if it is missing.
    pub fn render_field(&self, name: &str, out: &mut String) -> bool {
        match crate::msgpack::find(&self.map, name) {
            Some(raw) => {
                crate::msgpack::render(raw, out);
                true
            }
            None => false,
        }
    }

    /// Sets a field, replacing an existing one of the same name.
    pub fn set(&mut self, name: &str, value: Value) {
        let mut fields = self.fields();
        match fields.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => fields.push((name.to_string(), value)),
        }
        self.replace_fields(&fields);
    }

    fn replace_fields(&mut self, fields: &[(String, Value)]) {
        let mut map = Vec::with_capacity(self.map.len());
        crate::msgpack::fields_into(fields, &mut map);
        self.map = Arc::new(map);
    }

    /// Approximate size in bytes: the encoded fields plus the position.
    pub fn byte_size(&self) -> usize {
        self.map.len() + self.position.byte_size()
    }

    /// Cuts the largest field value (UTF-8-safe for text) so that the record shrinks by at
    /// least `excess` bytes. Returns false when there is nothing left to cut.
    pub fn cut_largest(&mut self, excess: usize) -> bool {
        let mut fields = self.fields();
        let Some(largest) = largest_value(&mut fields) else {
            return false;
        };
        let len = largest.len();
        if len == 0 {
            return false;
        }
        let keep = len.saturating_sub(excess);
        match largest {
            Value::Str(s) => {
                let mut cut = keep.min(s.len());
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.truncate(cut);
            }
            Value::Bin(b) => b.truncate(keep),
            Value::UInt(_) | Value::Array(_) | Value::Msgpack(_) => return false,
        }
        self.replace_fields(&fields);
        true
    }
}

/// The largest string or binary value, looking inside arrays.
fn largest_value(fields: &mut [(String, Value)]) -> Option<&mut Value> {
    fn walk<'a>(v: &'a mut Value, best: &mut Option<&'a mut Value>) {
        match v {
            Value::Array(items) => items.iter_mut().for_each(|i| walk(i, best)),
            Value::UInt(_) | Value::Msgpack(_) => {}
            other => {
                if best.as_ref().is_none_or(|b| b.len() < other.len()) {
                    *best = Some(other);
                }
            }
        }
    }
    let mut best = None;
    for (_, v) in fields.iter_mut() {
        walk(v, &mut best);
    }
    best
}

/// Test records from `(name, value)` pairs.
#[cfg(test)]
pub(crate) fn rec(fields: &[(&str, Value)]) -> Record {
    let fields: Vec<(String, Value)> = fields
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect();
    Record::from_fields(&fields, 0, Position::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutting_the_largest_value_keeps_utf8_whole_and_bytes_exact() {
        let mut r = rec(&[
            ("MESSAGE", Value::Str("é".repeat(100))),
            ("SMALL", Value::Str("x".into())),
        ]);
        assert!(r.cut_largest(51));
        let Some(Value::Str(s)) = r.get("MESSAGE") else {
            panic!()
        };
        assert!(s.len() <= 149 && s.len() >= 147, "{}", s.len());
        assert!(s.chars().all(|c| c == 'é'));
        let mut r = rec(&[("B", Value::Bin(vec![0xff; 10]))]);
        assert!(r.cut_largest(4));
        assert_eq!(r.get("B"), Some(Value::Bin(vec![0xff; 6])));
        let mut r = rec(&[("N", Value::UInt(1))]);
        assert!(!r.cut_largest(4));
    }

    #[test]
    fn edits_never_change_bytes_lent_to_the_sink() {
        // The Kafka sink hands librdkafka a reference to the map instead of a copy; an edit
        // (truncation, a marker field) must make new bytes, not rewrite the lent ones.
        let mut r = rec(&[("MESSAGE", Value::Str("x".repeat(100)))]);
        let lent = r.msgpack_shared();
        let before = lent.to_vec();
        r.set("_PERAPERA_TRUNCATED", Value::UInt(1));
        assert!(r.cut_largest(10));
        assert_eq!(*lent, before);
        assert_ne!(r.msgpack(), &before[..]);
        assert_eq!(r.get("_PERAPERA_TRUNCATED"), Some(Value::UInt(1)));
    }
}
