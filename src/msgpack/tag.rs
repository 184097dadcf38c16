//! The one MessagePack tag table: what a value's first byte says about what follows. The map
//! reader, the forward frame scanner and the chunk-id reader all walk values with it.

/// What a value is, as far as walking it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// nil, a boolean, a float or an integer: `count` body bytes follow.
    Scalar,
    /// An unsigned integer (positive fixint, or `uint 8/16/32/64`: `count` body bytes).
    UInt,
    /// `str`: `count` bytes.
    Str,
    /// `bin`: `count` bytes.
    Bin,
    /// `ext`: a type byte, then `count` bytes.
    Ext,
    /// `array` of `count` values.
    Array,
    /// `map` of `count` key/value pairs.
    Map,
}

/// A value's header, from its tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// What the value is.
    pub kind: Kind,
    /// Big-endian length bytes after the tag that hold `count` (0: `count` is `fixed`).
    pub len_bytes: usize,
    /// `count` when `len_bytes` is 0: a fix type's size, or a scalar's body bytes.
    pub fixed: u64,
}

/// The header a tag announces; `None` for 0xc1, which MessagePack never uses.
pub fn head(tag: u8) -> Option<Head> {
    use Kind::{Array, Bin, Ext, Map, Scalar, Str, UInt};
    let fixed = |kind, n: u64| Head {
        kind,
        len_bytes: 0,
        fixed: n,
    };
    let sized = |kind, len_bytes| Head {
        kind,
        len_bytes,
        fixed: 0,
    };
    Some(match tag {
        0x00..=0x7f => fixed(UInt, 0),
        0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => fixed(Scalar, 0),
        0x80..=0x8f => fixed(Map, u64::from(tag & 0x0f)),
        0x90..=0x9f => fixed(Array, u64::from(tag & 0x0f)),
        0xa0..=0xbf => fixed(Str, u64::from(tag & 0x1f)),
        0xc1 => return None,
        0xc4 => sized(Bin, 1),
        0xc5 => sized(Bin, 2),
        0xc6 => sized(Bin, 4),
        0xc7 => sized(Ext, 1),
        0xc8 => sized(Ext, 2),
        0xc9 => sized(Ext, 4),
        0xca => fixed(Scalar, 4),
        0xcb => fixed(Scalar, 8),
        0xcc => fixed(UInt, 1),
        0xcd => fixed(UInt, 2),
        0xce => fixed(UInt, 4),
        0xcf => fixed(UInt, 8),
        0xd0 => fixed(Scalar, 1),
        0xd1 => fixed(Scalar, 2),
        0xd2 => fixed(Scalar, 4),
        0xd3 => fixed(Scalar, 8),
        0xd4 => fixed(Ext, 1),
        0xd5 => fixed(Ext, 2),
        0xd6 => fixed(Ext, 4),
        0xd7 => fixed(Ext, 8),
        0xd8 => fixed(Ext, 16),
        0xd9 => sized(Str, 1),
        0xda => sized(Str, 2),
        0xdb => sized(Str, 4),
        0xdc => sized(Array, 2),
        0xdd => sized(Array, 4),
        0xde => sized(Map, 2),
        0xdf => sized(Map, 4),
    })
}

impl Head {
    /// `count`, with the length bytes `after_tag` (at least `len_bytes` of them) when the
    /// tag does not hold it.
    pub fn count(&self, after_tag: &[u8]) -> Option<u64> {
        if self.len_bytes == 0 {
            return Some(self.fixed);
        }
        let bytes = after_tag.get(..self.len_bytes)?;
        Some(bytes.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tag's header, checked against what rmp's decoder reads from a value with it.
    #[test]
    fn every_tag_agrees_with_rmps_decoder_on_kind_and_size() {
        for tag in 0u8..=255 {
            let Some(h) = head(tag) else {
                assert_eq!(tag, 0xc1);
                continue;
            };
            let mut b = vec![tag];
            b.extend_from_slice(&[0, 0, 0, 3]);
            b.extend_from_slice(&[0xc0; 32]);
            let marker = rmp::Marker::from_u8(tag);
            let kind = match marker {
                rmp::Marker::FixPos(_)
                | rmp::Marker::U8
                | rmp::Marker::U16
                | rmp::Marker::U32
                | rmp::Marker::U64 => Kind::UInt,
                rmp::Marker::FixStr(_)
                | rmp::Marker::Str8
                | rmp::Marker::Str16
                | rmp::Marker::Str32 => Kind::Str,
                rmp::Marker::Bin8 | rmp::Marker::Bin16 | rmp::Marker::Bin32 => Kind::Bin,
                rmp::Marker::Ext8
                | rmp::Marker::Ext16
                | rmp::Marker::Ext32
                | rmp::Marker::FixExt1
                | rmp::Marker::FixExt2
                | rmp::Marker::FixExt4
                | rmp::Marker::FixExt8
                | rmp::Marker::FixExt16 => Kind::Ext,
                rmp::Marker::FixArray(_) | rmp::Marker::Array16 | rmp::Marker::Array32 => {
                    Kind::Array
                }
                rmp::Marker::FixMap(_) | rmp::Marker::Map16 | rmp::Marker::Map32 => Kind::Map,
                _ => Kind::Scalar,
            };
            assert_eq!(h.kind, kind, "tag {tag:#04x}");
            // The size and the bytes the whole value takes, by rmpv's decoder.
            let count = h.count(&b[1..]).unwrap();
            let mut rest = &b[..];
            if let Ok(v) = rmpv::decode::read_value(&mut rest) {
                let taken = (b.len() - rest.len()) as u64;
                let header = 1 + h.len_bytes as u64;
                match h.kind {
                    Kind::Scalar | Kind::UInt | Kind::Str | Kind::Bin => {
                        assert_eq!(taken, header + count, "{tag:#04x}")
                    }
                    Kind::Ext => assert_eq!(taken, header + 1 + count, "{tag:#04x}"),
                    Kind::Array | Kind::Map => {}
                }
                match v {
                    rmpv::Value::Array(a) => assert_eq!(a.len() as u64, count, "{tag:#04x}"),
                    rmpv::Value::Map(m) => assert_eq!(m.len() as u64, count, "{tag:#04x}"),
                    rmpv::Value::String(s) => assert_eq!(s.as_bytes().len() as u64, count),
                    rmpv::Value::Binary(x) => assert_eq!(x.len() as u64, count),
                    rmpv::Value::Ext(_, x) => assert_eq!(x.len() as u64, count),
                    _ => {}
                }
            }
        }
    }
}
