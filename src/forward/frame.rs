//! Where one MessagePack value ends in a byte stream, without decoding it.
//!
//! A forward connection delivers requests in arbitrary pieces: a partial frame is normal and
//! means "read more". [`scan`] walks the headers only (iteratively: no recursion a hostile
//! nesting could exhaust), so it knows a frame is too large from its declared lengths before
//! the bytes arrive, and every length it accepts is backed by bytes in the buffer before
//! anything is allocated for it.

use crate::msgpack::tag::{head, Kind as TagKind};

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
    /// On a JSON connection, a byte outside any array or object that is not whitespace.
    #[error("invalid JSON request: byte {0:#04x} outside an array or object")]
    JsonOutside(u8),
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
    Scanner::default().scan(buf, limit)
}

/// [`scan`] that resumes where the previous call stopped, so a frame that arrives in many
/// small pieces is walked once in total, not once per piece. Call [`Scanner::scan`] with the
/// same buffer grown at its end; after `Complete` (or an error) the scanner starts afresh, and
/// [`Scanner::reset`] does so explicitly when the buffer's front was consumed.
#[derive(Debug, Clone)]
pub struct Scanner {
    /// Offset of the next value to read (every byte before it is checked).
    pos: usize,
    /// Values still to read at each open nesting level.
    pending: Vec<u64>,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            pos: 0,
            pending: vec![1],
        }
    }
}

impl Scanner {
    /// Forgets the progress (the buffer's first frame was taken out).
    pub fn reset(&mut self) {
        self.pos = 0;
        self.pending.clear();
        self.pending.push(1);
    }

    /// Scans on from where the last call stopped.
    pub fn scan(&mut self, buf: &[u8], limit: usize) -> Result<Scan, FrameError> {
        let result = self.walk(buf, limit);
        if !matches!(result, Ok(Scan::Incomplete(_))) {
            self.reset();
        }
        result
    }

    fn walk(&mut self, buf: &[u8], limit: usize) -> Result<Scan, FrameError> {
        while let Some(top) = self.pending.last_mut() {
            if *top == 0 {
                self.pending.pop();
                continue;
            }
            // The value starting at `start` is read whole or not at all: on "need more" the
            // scanner stays at its start (a header is a few bytes, re-reading it is free).
            let start = self.pos;
            let Some(&b) = buf.get(start) else {
                return need(start as u64 + 1, limit);
            };
            let Some(h) = head(b) else {
                return Err(FrameError::Invalid(start));
            };
            let mut pos = start + 1;
            let end_of_header = pos + h.len_bytes;
            if buf.len() < end_of_header {
                return need(end_of_header as u64, limit);
            }
            let n = h.count(&buf[pos..end_of_header]).unwrap_or(0);
            pos = end_of_header;
            let kind = match h.kind {
                TagKind::Scalar | TagKind::UInt | TagKind::Str | TagKind::Bin => Kind::Body(n),
                TagKind::Ext => Kind::Body(n + 1),
                TagKind::Array => Kind::Children(n),
                TagKind::Map => Kind::Children(2 * n),
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
                    if count > 0 && self.pending.len() >= MAX_DEPTH {
                        return Err(FrameError::TooDeep);
                    }
                }
            }
            if pos > limit {
                return Err(FrameError::TooLarge {
                    declared: pos as u64,
                    limit,
                });
            }
            // The value is accepted: commit it.
            if let Some(top) = self.pending.last_mut() {
                *top -= 1;
            }
            if let Kind::Children(count @ 1..) = kind {
                self.pending.push(count);
            }
            self.pos = pos;
        }
        Ok(Scan::Complete(self.pos))
    }
}

/// Where one JSON request (an array or object) ends, resumable like [`Scanner`]: fluentd's
/// `in_forward` accepts JSON on connections whose first byte is `[` or `{`. Only the brackets
/// and strings are followed; the complete frame is then parsed by `serde_json`.
#[derive(Debug, Clone, Default)]
pub struct JsonScanner {
    pos: usize,
    depth: usize,
    in_str: bool,
    escaped: bool,
}

impl JsonScanner {
    /// Scans on from where the last call stopped; starts afresh after `Complete` or an error.
    pub fn scan(&mut self, buf: &[u8], limit: usize) -> Result<Scan, FrameError> {
        let result = self.walk(buf, limit);
        if !matches!(result, Ok(Scan::Incomplete(_))) {
            *self = JsonScanner::default();
        }
        result
    }

    fn walk(&mut self, buf: &[u8], limit: usize) -> Result<Scan, FrameError> {
        while let Some(&b) = buf.get(self.pos) {
            self.pos += 1;
            if self.pos > limit {
                return Err(FrameError::TooLarge {
                    declared: self.pos as u64,
                    limit,
                });
            }
            if self.in_str {
                match b {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_str = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'[' | b'{' => {
                    self.depth += 1;
                    if self.depth > MAX_DEPTH {
                        return Err(FrameError::TooDeep);
                    }
                }
                b']' | b'}' if self.depth > 0 => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        return Ok(Scan::Complete(self.pos));
                    }
                }
                b' ' | b'\t' | b'\r' | b'\n' => {}
                b'"' if self.depth > 0 => self.in_str = true,
                _ if self.depth > 0 => {}
                other => return Err(FrameError::JsonOutside(other)),
            }
        }
        need(self.pos as u64 + 1, limit)
    }
}

#[derive(Clone, Copy)]
/// What follows a header: body bytes, or child values.
enum Kind {
    Body(u64),
    Children(u64),
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
    fn a_resumed_scan_agrees_with_a_fresh_one_and_reads_each_byte_once() {
        use rmpv::Value as V;
        let v = V::Array(vec![
            V::from("tag"),
            V::Array(
                (0..2000)
                    .map(|i| V::Array(vec![V::from(i), V::Map(vec![(V::from("k"), V::from("v"))])]))
                    .collect(),
            ),
            V::Map(vec![(V::from("chunk"), V::from("abc"))]),
        ]);
        let bytes = encoded(&v);
        let mut scanner = Scanner::default();
        for cut in 1..bytes.len() {
            let resumed = scanner.scan(&bytes[..cut], 1 << 20).unwrap();
            assert_eq!(resumed, scan(&bytes[..cut], 1 << 20).unwrap(), "cut {cut}");
            // Progress is kept: the scanner never stands before a value it already passed.
            assert!(
                scanner.pos <= cut && scanner.pos + 16 >= cut,
                "cut {cut}: at {}",
                scanner.pos
            );
        }
        assert_eq!(
            scanner.scan(&bytes, 1 << 20),
            Ok(Scan::Complete(bytes.len()))
        );
        assert_eq!(scanner.pos, 0, "starts afresh after a complete frame");
    }

    #[test]
    fn json_requests_end_at_their_closing_bracket_whatever_the_pieces() {
        let two = br#" ["a", 1, {"m": "x]}\"[{"}, {"chunk": "c"}]
{"k": [1, {"x": "}"}]}"#;
        let first = two.iter().position(|&b| b == b'\n').unwrap();
        let mut scanner = JsonScanner::default();
        for cut in 0..first {
            assert!(
                matches!(scanner.scan(&two[..cut], 1 << 20), Ok(Scan::Incomplete(_))),
                "cut {cut}"
            );
        }
        assert_eq!(scanner.scan(two, 1 << 20), Ok(Scan::Complete(first)));
        let rest = &two[first..];
        assert_eq!(
            JsonScanner::default().scan(rest, 1 << 20),
            Ok(Scan::Complete(rest.len()))
        );
        serde_json::from_slice::<serde_json::Value>(&two[..first]).unwrap();
        assert_eq!(
            JsonScanner::default().scan(b" 12", 100),
            Err(FrameError::JsonOutside(b'1'))
        );
        assert!(matches!(
            JsonScanner::default().scan(&[b'['; 50], 10),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(
            JsonScanner::default().scan(&[b'['; 500], 1000),
            Err(FrameError::TooDeep)
        );
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
