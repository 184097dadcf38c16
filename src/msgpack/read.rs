//! Reading the MessagePack maps records are stored as: walking a map without decoding it
//! (field lookup for templates), and decoding it into fields for the rare paths that edit a
//! record (truncation, dead-letter stubs) or write it as JSON.
//!
//! The maps read here were written by perapera ([`super::write`]), so they are well formed;
//! every read is still bounds-checked, and a malformed map reads as shorter, never panics.

use super::tag::{head, Head, Kind};
use super::Value;

/// The byte after the value that starts at `pos`, or `None` if it runs past the end.
pub fn skip(b: &[u8], pos: usize) -> Option<usize> {
    let (h, p, n) = header(b, pos)?;
    let end = match h.kind {
        Kind::Scalar | Kind::UInt | Kind::Str | Kind::Bin => p.checked_add(n)?,
        Kind::Ext => p.checked_add(n)?.checked_add(1)?,
        Kind::Array => return skip_n(b, p, n),
        Kind::Map => return skip_n(b, p, n.checked_mul(2)?),
    };
    (end <= b.len()).then_some(end)
}

fn skip_n(b: &[u8], mut pos: usize, n: usize) -> Option<usize> {
    for _ in 0..n {
        pos = skip(b, pos)?;
    }
    Some(pos)
}

/// The header of the value at `pos`: what it is, where its body (or first child) starts,
/// and its count (bytes, items or pairs; see [`Head`]).
fn header(b: &[u8], pos: usize) -> Option<(Head, usize, usize)> {
    let h = head(*b.get(pos)?)?;
    let n = usize::try_from(h.count(b.get(pos + 1..)?)?).ok()?;
    Some((h, pos + 1 + h.len_bytes, n))
}

/// A header of this `kind` (a map or an array) at `pos`: (entries or items, position of the
/// first key or item).
fn container(b: &[u8], pos: usize, kind: Kind) -> Option<(usize, usize)> {
    let (h, p, n) = header(b, pos)?;
    (h.kind == kind).then_some((n, p))
}

/// The payload of a `str` (`text`) or `bin` value at `pos`: (is text, bytes).
fn bytes_at(b: &[u8], pos: usize) -> Option<(bool, &[u8])> {
    let (h, start, len) = header(b, pos)?;
    let text = match h.kind {
        Kind::Str => true,
        Kind::Bin => false,
        _ => return None,
    };
    Some((text, b.get(start..start.checked_add(len)?)?))
}

/// An unsigned integer value at `pos`.
fn uint_at(b: &[u8], pos: usize) -> Option<u64> {
    let tag = *b.get(pos)?;
    match head(tag)? {
        Head {
            kind: Kind::UInt,
            fixed: 0,
            ..
        } => Some(u64::from(tag)),
        Head {
            kind: Kind::UInt,
            fixed: n,
            ..
        } => {
            let bytes = b.get(pos + 1..pos + 1 + n as usize)?;
            Some(bytes.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
        }
        _ => None,
    }
}

/// The entries of a map: (key bytes, raw value bytes), in order. Keys that are not text or
/// bytes are skipped (perapera writes only text keys).
pub fn entries(map: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let (n, mut pos) = container(map, 0, Kind::Map).unwrap_or((0, map.len()));
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
    if let Some((n, mut pos)) = container(raw, 0, Kind::Array) {
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
    } else if let Some((n, pos)) = container(raw, 0, Kind::Array) {
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
        fn skipping_or_decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = skip(&bytes, 0);
            let _ = fields(&bytes);
        }
    }
}
