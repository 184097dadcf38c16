//! Where one MessagePack value ends in a byte stream, without decoding it.
//!
//! A forward connection delivers requests in arbitrary pieces: a partial frame is normal and
//! means "read more". [`scan`] walks the headers only (iteratively: no recursion a hostile
//! nesting could exhaust), so it knows a frame is too large from its declared lengths before
//! the bytes arrive, and every length it accepts is backed by bytes in the buffer before
//! anything is allocated for it.

/// Why a byte stream is not a sequence of acceptable MessagePack frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame declares (or already has) more bytes than the limit.
    #[error("request of at least {declared} bytes exceeds the limit of {limit} bytes (max_request_bytes)")]
    TooLarge {
        /// Bytes the frame needs at least.
        declared: u64,
        /// The configured limit.
        limit: usize,
    },
    /// Byte 0xc1 is never valid MessagePack.
    #[error("invalid MessagePack: byte 0xc1 at offset {0}")]
    Invalid(usize),
    /// Arrays and maps nested deeper than [`MAX_DEPTH`].
    #[error("MessagePack nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Nesting accepted in a request (a record of maps inside the event array inside the request
/// array is 4 levels; rmpv's own limit is 1024).
pub const MAX_DEPTH: usize = 100;

/// The state of the stream's first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The first `n` bytes are one complete value.
    Complete(usize),
    /// More bytes are needed: at least this many in total.
    Incomplete(usize),
}

/// Scans the value at the start of `buf`, failing as soon as it is known to exceed `limit`.
pub fn scan(buf: &[u8], limit: usize) -> Result<Scan, FrameError> {
    let mut pos = 0usize;
    // Values still to read at each open nesting level.
    let mut pending: Vec<u64> = vec![1];
    while let Some(top) = pending.last_mut() {
        if *top == 0 {
            pending.pop();
            continue;
        }
        *top -= 1;
        let Some(&b) = buf.get(pos) else {
            return need(pos as u64 + 1, limit);
        };
        // (header bytes after the marker, body bytes or child count, kind)
        let (header, kind): (usize, Kind) = match b {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, Kind::Body(0)),
            0x80..=0x8f => (0, Kind::Children(2 * u64::from(b & 0x0f))),
            0x90..=0x9f => (0, Kind::Children(u64::from(b & 0x0f))),
            0xa0..=0xbf => (0, Kind::Body(u64::from(b & 0x1f))),
            0xc1 => return Err(FrameError::Invalid(pos)),
            0xc4 | 0xd9 => (1, Kind::Len),
            0xc5 | 0xda => (2, Kind::Len),
            0xc6 | 0xdb => (4, Kind::Len),
            0xc7 => (1, Kind::ExtLen),
            0xc8 => (2, Kind::ExtLen),
            0xc9 => (4, Kind::ExtLen),
            0xca => (0, Kind::Body(4)),
            0xcb => (0, Kind::Body(8)),
            0xcc | 0xd0 => (0, Kind::Body(1)),
            0xcd | 0xd1 => (0, Kind::Body(2)),
            0xce | 0xd2 => (0, Kind::Body(4)),
            0xcf | 0xd3 => (0, Kind::Body(8)),
            0xd4 => (0, Kind::Body(2)),
            0xd5 => (0, Kind::Body(3)),
            0xd6 => (0, Kind::Body(5)),
            0xd7 => (0, Kind::Body(9)),
            0xd8 => (0, Kind::Body(17)),
            0xdc => (2, Kind::Array),
            0xdd => (4, Kind::Array),
            0xde => (2, Kind::Map),
            0xdf => (4, Kind::Map),
        };
        pos += 1;
        let end_of_header = pos + header;
        if buf.len() < end_of_header {
            return need(end_of_header as u64, limit);
        }
        let n = buf[pos..end_of_header]
            .iter()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x));
        pos = end_of_header;
        let kind = match kind {
            Kind::Len => Kind::Body(n),
            Kind::ExtLen => Kind::Body(n + 1),
            Kind::Array => Kind::Children(n),
            Kind::Map => Kind::Children(2 * n),
            k => k,
        };
        match kind {
            Kind::Body(len) => {
                let end = pos as u64 + len;
                if end > limit as u64 {
                    return Err(FrameError::TooLarge {
                        declared: end,
                        limit,
                    });
                }
                if (buf.len() as u64) < end {
                    return need(end, limit);
                }
                pos = end as usize;
            }
            Kind::Children(count) => {
                // Every child takes at least one byte.
                if pos as u64 + count > limit as u64 {
                    return Err(FrameError::TooLarge {
                        declared: pos as u64 + count,
                        limit,
                    });
                }
                if count > 0 {
                    if pending.len() >= MAX_DEPTH {
                        return Err(FrameError::TooDeep);
                    }
                    pending.push(count);
                }
            }
            _ => unreachable!("lengths were resolved above"),
        }
        if pos > limit {
            return Err(FrameError::TooLarge {
                declared: pos as u64,
                limit,
            });
        }
    }
    Ok(Scan::Complete(pos))
}

#[derive(Clone, Copy)]
enum Kind {
    Body(u64),
    Children(u64),
    Len,
    ExtLen,
    Array,
    Map,
}

fn need(total: u64, limit: usize) -> Result<Scan, FrameError> {
    if total > limit as u64 {
        return Err(FrameError::TooLarge {
            declared: total,
            limit,
        });
    }
    Ok(Scan::Incomplete(total as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(v: &rmpv::Value) -> Vec<u8> {
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, v).unwrap();
        b
    }

    #[test]
    fn every_prefix_is_incomplete_and_the_whole_is_complete() {
        use rmpv::Value as V;
        let v = V::Array(vec![
            V::from("tag"),
            V::Binary(vec![7; 300]),
            V::Map(vec![(V::from("k"), V::from(-5)), (V::from(1.5), V::Nil)]),
            V::Ext(0, vec![1; 8]),
            V::Ext(5, vec![2; 3]),
            V::from(u64::MAX),
            V::from("x".repeat(70_000)),
        ]);
        let bytes = encoded(&v);
        for cut in 0..bytes.len() {
            match scan(&bytes[..cut], 1 << 20).unwrap() {
                Scan::Incomplete(n) => assert!(n > cut && n <= bytes.len(), "cut {cut}: {n}"),
                Scan::Complete(n) => panic!("prefix {cut} complete at {n}"),
            }
        }
        let mut two = bytes.clone();
        two.extend_from_slice(&[0xc0]);
        assert_eq!(scan(&two, 1 << 20), Ok(Scan::Complete(bytes.len())));
    }

    #[test]
    fn declared_sizes_over_the_limit_fail_before_the_bytes_arrive() {
        // bin32 declaring 100 MB, and an array32 declaring 2^32-1 elements.
        assert!(matches!(
            scan(&[0x93, 0xa1, b't', 0xc6, 0x05, 0xf5, 0xe1, 0x00], 16 << 20),
            Err(FrameError::TooLarge { declared, .. }) if declared > 100_000_000
        ));
        assert!(matches!(
            scan(&[0xdd, 0xff, 0xff, 0xff, 0xff], 16 << 20),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(scan(&[0x92, 0xc1], 100), Err(FrameError::Invalid(1)));
        let deep = vec![0x91u8; 10_000];
        assert_eq!(scan(&deep, 1 << 20), Err(FrameError::TooDeep));
    }
}
