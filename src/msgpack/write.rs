//! Writing MessagePack: sources encode a record's map with these while reading, and the
//! sinks send those bytes as they are. Text is `str`, bytes are `bin` (never an array of
//! integers), integers stay integers in their smallest form, repeated fields are arrays, and
//! values a forward sender gave us (nested maps, floats, ...) are copied as they came.
//! Consumers that already read fluentd's msgpack records (`record.to_msgpack`) read these
//! unchanged.

use super::Value;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn str_and_bin_headers_match_rmp_at_every_length_boundary() {
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
    fn text_is_str_bytes_are_bin_integers_stay_integers_and_repeats_are_arrays() {
        let mut bytes = Vec::new();
        fields_into(
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
            &mut bytes,
        );
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
}
