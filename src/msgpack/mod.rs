//! MessagePack, the format of every record: the [`Value`] of a field, [`write`](mod@write) for encoding
//! (what sources do while reading) and [`read`] for walking an encoded map without decoding
//! it (templates) or decoding it (the rare paths that edit a record).

pub mod read;
pub mod tag;
pub mod write;

pub use read::{entries, fields, find, render, skip, value};
pub use write::{
    fields_entries_into, fields_into, write_array_len, write_bin, write_map_len, write_name,
    write_str, write_text, write_uint,
};

/// A field value, as it will be encoded in MessagePack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// Valid UTF-8 text (msgpack `str`).
    Str(String),
    /// Bytes that are not valid UTF-8 (msgpack `bin`).
    Bin(Vec<u8>),
    /// An unsigned integer, e.g. `__REALTIME_TIMESTAMP` in microseconds.
    UInt(u64),
    /// A field that occurred more than once, values in source order.
    Array(Vec<Value>),
    /// Any other MessagePack value (a nested map, a negative integer, a float, a boolean,
    /// nil, an ext), kept as its encoded bytes: forward senders' records pass through
    /// unchanged.
    Msgpack(Vec<u8>),
}

impl Value {
    /// `Str` when the bytes are valid UTF-8, `Bin` otherwise. Does not copy.
    pub fn from_bytes(bytes: Vec<u8>) -> Value {
        match String::from_utf8(bytes) {
            Ok(s) => Value::Str(s),
            Err(e) => Value::Bin(e.into_bytes()),
        }
    }

    /// Payload size in bytes (used for the in-flight byte window and truncation).
    pub fn len(&self) -> usize {
        match self {
            Value::Str(s) => s.len(),
            Value::Bin(b) => b.len(),
            Value::UInt(_) => 8,
            Value::Array(items) => items.iter().map(Value::len).sum(),
            Value::Msgpack(b) => b.len(),
        }
    }

    /// True when the value carries no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_becomes_bin_and_valid_utf8_stays_str() {
        assert_eq!(Value::from_bytes(b"ok".to_vec()), Value::Str("ok".into()));
        assert_eq!(
            Value::from_bytes(vec![0, 0xff, 10]),
            Value::Bin(vec![0, 0xff, 10])
        );
    }
}
