//! Reading the MessagePack maps records are stored as: walking a map without decoding it
//! (field lookup for templates), and decoding it into fields for the rare paths that edit a
//! record (truncation, dead-letter stubs) or write it as JSON.
//!
//! The maps read here were written by perapera ([`super::write`]), so they are well formed;
//! every read is still bounds-checked, and a malformed map reads as shorter, never panics.

use super::Value;

/// The byte after the value that starts at `pos`, or `None` if it runs past the end.
pub fn skip(b: &[u8], pos: usize) -> Option<usize> {
    let tag = *b.get(pos)?;
    let p = pos + 1;
    let end = match tag {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => p,
        0x80..=0x8f => return skip_n(b, p, 2 * usize::from(tag & 0x0f)),
        0x90..=0x9f => return skip_n(b, p, usize::from(tag & 0x0f)),
        0xa0..=0xbf => p + usize::from(tag & 0x1f),
        0xc4 | 0xd9 => p + 1 + usize::from(*b.get(p)?),
        0xc5 | 0xda => p + 2 + be(b, p, 2)?,
        0xc6 | 0xdb => p + 4 + be(b, p, 4)?,
        0xc7 => p + 2 + usize::from(*b.get(p)?),
        0xc8 => p + 3 + be(b, p, 2)?,
        0xc9 => p + 5 + be(b, p, 4)?,
        0xca => p + 4,
        0xcb => p + 8,
        0xcc | 0xd0 => p + 1,
        0xcd | 0xd1 => p + 2,
        0xce | 0xd2 => p + 4,
        0xcf | 0xd3 => p + 8,
        0xd4 => p + 2,
        0xd5 => p + 3,
        0xd6 => p + 5,
        0xd7 => p + 9,
        0xd8 => p + 17,
        0xdc => return skip_n(b, p + 2, be(b, p, 2)?),
        0xdd => return skip_n(b, p + 4, be(b, p, 4)?),
        0xde => return skip_n(b, p + 2, 2 * be(b, p, 2)?),
        0xdf => return skip_n(b, p + 4, 2 * be(b, p, 4)?),
        0xc1 => return None,
    };
    (end <= b.len()).then_some(end)
}

fn skip_n(b: &[u8], mut pos: usize, n: usize) -> Option<usize> {
    for _ in 0..n {
        pos = skip(b, pos)?;
    }
    Some(pos)
}

/// A big-endian unsigned integer of `n` bytes at `pos`.
fn be(b: &[u8], pos: usize, n: usize) -> Option<usize> {
    let bytes = b.get(pos..pos + n)?;
    Some(
        bytes
            .iter()
            .fold(0usize, |acc, x| (acc << 8) | usize::from(*x)),
    )
}

/// A map header at `pos`: (entries, position of the first key).
fn map_len(b: &[u8], pos: usize) -> Option<(usize, usize)> {
    match *b.get(pos)? {
        t @ 0x80..=0x8f => Some((usize::from(t & 0x0f), pos + 1)),
        0xde => Some((be(b, pos + 1, 2)?, pos + 3)),
        0xdf => Some((be(b, pos + 1, 4)?, pos + 5)),
        _ => None,
    }
}

/// An array header at `pos`: (items, position of the first item).
fn array_len(b: &[u8], pos: usize) -> Option<(usize, usize)> {
    match *b.get(pos)? {
        t @ 0x90..=0x9f => Some((usize::from(t & 0x0f), pos + 1)),
        0xdc => Some((be(b, pos + 1, 2)?, pos + 3)),
        0xdd => Some((be(b, pos + 1, 4)?, pos + 5)),
        _ => None,
    }
}

/// The payload of a `str` (`text`) or `bin` value at `pos`: (is text, bytes).
fn bytes_at(b: &[u8], pos: usize) -> Option<(bool, &[u8])> {
    let tag = *b.get(pos)?;
    let (text, start, len) = match tag {
        0xa0..=0xbf => (true, pos + 1, usize::from(tag & 0x1f)),
        0xd9 => (true, pos + 2, usize::from(*b.get(pos + 1)?)),
        0xda => (true, pos + 3, be(b, pos + 1, 2)?),
        0xdb => (true, pos + 5, be(b, pos + 1, 4)?),
        0xc4 => (false, pos + 2, usize::from(*b.get(pos + 1)?)),
        0xc5 => (false, pos + 3, be(b, pos + 1, 2)?),
        0xc6 => (false, pos + 5, be(b, pos + 1, 4)?),
        _ => return None,
    };
    Some((text, b.get(start..start + len)?))
}

/// An unsigned integer value at `pos`.
fn uint_at(b: &[u8], pos: usize) -> Option<u64> {
    let tag = *b.get(pos)?;
    let n = match tag {
        0x00..=0x7f => return Some(u64::from(tag)),
        0xcc => 1,
        0xcd => 2,
        0xce => 4,
        0xcf => 8,
        _ => return None,
    };
    let bytes = b.get(pos + 1..pos + 1 + n)?;
    Some(bytes.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
}

/// The entries of a map: (key bytes, raw value bytes), in order. Keys that are not text or
/// bytes are skipped (perapera writes only text keys).
pub fn entries(map: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let (n, mut pos) = map_len(map, 0).unwrap_or((0, map.len()));
    let mut left = n;
    std::iter::from_fn(move || loop {
        if left == 0 {
            return None;
        }
        left -= 1;
        let key_end = skip(map, pos)?;
        let value_end = skip(map, key_end)?;
        let key = bytes_at(map, pos).map(|(_, k)| k);
        let value = &map[key_end..value_end];
        pos = value_end;
        if let Some(key) = key {
            return Some((key, value));
        }
    })
}

/// The raw value of field `name`, if the map has it.
pub fn find<'a>(map: &'a [u8], name: &str) -> Option<&'a [u8]> {
    entries(map)
        .find(|(k, _)| *k == name.as_bytes())
        .map(|(_, v)| v)
}

/// Decodes one value as perapera models it: text that is UTF-8 → `Str`, bytes → `Bin`,
/// unsigned integers → `UInt`, arrays → `Array`, anything else kept as its bytes.
pub fn value(raw: &[u8]) -> Value {
    if let Some((text, bytes)) = bytes_at(raw, 0) {
        return match (text, std::str::from_utf8(bytes)) {
            (true, Ok(s)) => Value::Str(s.to_string()),
            (true, Err(_)) => Value::Msgpack(raw.to_vec()),
            (false, _) => Value::Bin(bytes.to_vec()),
        };
    }
    if let Some(n) = uint_at(raw, 0) {
        return Value::UInt(n);
    }
    if let Some((n, mut pos)) = array_len(raw, 0) {
        let mut items = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let Some(end) = skip(raw, pos) else { break };
            items.push(value(&raw[pos..end]));
            pos = end;
        }
        return Value::Array(items);
    }
    Value::Msgpack(raw.to_vec())
}

/// Decodes a map into fields (keys as text, lossily if they are not UTF-8).
pub fn fields(map: &[u8]) -> Vec<(String, Value)> {
    entries(map)
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), value(v)))
        .collect()
}

/// Appends the text of a raw value for templates: text as is, bytes lossily, integers in
/// decimal, the first element of an array, floats and booleans as text, nothing for others.
pub fn render(raw: &[u8], out: &mut String) {
    if let Some((_, bytes)) = bytes_at(raw, 0) {
        out.push_str(&String::from_utf8_lossy(bytes));
    } else if let Some(n) = uint_at(raw, 0) {
        use std::fmt::Write;
        let _ = write!(out, "{n}");
    } else if let Some((n, pos)) = array_len(raw, 0) {
        if n > 0 {
            if let Some(end) = skip(raw, pos) {
                render(&raw[pos..end], out);
            }
        }
    } else {
        match rmpv::decode::read_value(&mut &raw[..]) {
            Ok(rmpv::Value::Boolean(v)) => out.push_str(&v.to_string()),
            Ok(rmpv::Value::Integer(v)) => out.push_str(&v.to_string()),
            Ok(rmpv::Value::F32(v)) => out.push_str(&v.to_string()),
            Ok(rmpv::Value::F64(v)) => out.push_str(&v.to_string()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msgpack::write as encode;
    use proptest::prelude::*;

    fn sample() -> Vec<(String, Value)> {
        vec![
            ("MESSAGE".into(), Value::Str("héllo".into())),
            ("BLOB".into(), Value::Bin(vec![0, 0xff, 10])),
            ("N".into(), Value::UInt(1_700_000_000_000_000)),
            (
                "TAG".into(),
                Value::Array(vec![Value::Str("a".into()), Value::Bin(vec![0xfe])]),
            ),
            (
                "F".into(),
                Value::Msgpack(vec![0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]),
            ),
            (
                "NESTED".into(),
                Value::Msgpack(vec![0x81, 0xa1, b'k', 0xc3]),
            ),
        ]
    }

    #[test]
    fn decode_is_the_inverse_of_encode() {
        let mut buf = Vec::new();
        encode::fields_into(&sample(), &mut buf);
        assert_eq!(fields(&buf), sample());
        assert_eq!(skip(&buf, 0), Some(buf.len()));
        assert_eq!(
            value(find(&buf, "N").unwrap()),
            Value::UInt(1_700_000_000_000_000)
        );
        assert!(find(&buf, "MISSING").is_none());
    }

    #[test]
    fn render_gives_text_numbers_and_the_first_of_an_array_and_nothing_for_a_map() {
        let mut buf = Vec::new();
        encode::fields_into(&sample(), &mut buf);
        let r = |name: &str| {
            let mut s = String::new();
            render(find(&buf, name).unwrap(), &mut s);
            s
        };
        assert_eq!(r("MESSAGE"), "héllo");
        assert_eq!(r("N"), "1700000000000000");
        assert_eq!(r("TAG"), "a");
        assert_eq!(r("F"), "1.5");
        assert_eq!(r("NESTED"), "");
    }

    #[test]
    fn malformed_maps_read_short_and_never_panic() {
        let mut buf = Vec::new();
        encode::fields_into(&sample(), &mut buf);
        for cut in 0..buf.len() {
            let _ = fields(&buf[..cut]);
            let _ = find(&buf[..cut], "F");
        }
        assert!(fields(&[0xc1]).is_empty());
        assert_eq!(skip(&[0xdf, 0xff, 0xff, 0xff, 0xff], 0), None);
    }

    proptest! {
        #[test]
        fn skip_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = skip(&bytes, 0);
            let _ = fields(&bytes);
        }
    }
}
