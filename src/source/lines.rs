//! Splitting a byte stream into lines with the file offset after each one.
//!
//! The files source checkpoints "the byte offset after the last acknowledged line", so every
//! line carries its end offset. Lines are bytes (invalid UTF-8 is shipped as msgpack `bin`,
//! never lost); `\r\n` endings lose the `\r`; a line longer than `max_line` is cut into
//! numbered parts rather than dropped; a final line without `\n` is held back until the caller
//! decides it waited long enough ([`LineReader::flush_partial`]). Pure: the caller reads the
//! file and feeds the bytes, so any chunking of the same bytes yields the same lines.

/// One line (or one part of a long line), borrowed from the reader's buffer until the next
/// call (the caller encodes it into its record: one copy per line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    /// The bytes, without the line terminator.
    pub bytes: &'a [u8],
    /// File offset just after this line (after its `\n`, if it had one): where to resume.
    pub end_offset: u64,
    /// For a line longer than `max_line`: which part this is.
    pub part: Option<Part>,
}

/// A piece of a line longer than `max_line`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// 0 for the first piece.
    pub index: u32,
    /// True for the piece that ends the line.
    pub last: bool,
}

/// Turns bytes fed in any chunks into [`Line`]s.
#[derive(Debug)]
pub struct LineReader {
    /// Bytes fed; `buf[start..]` is not consumed yet (consumed bytes are compacted away on
    /// feed, so that taking a line never moves the rest of the buffer).
    buf: Vec<u8>,
    start: usize,
    /// Offset in the file of `buf[start]`.
    buf_offset: u64,
    max_line: usize,
    /// Parts already emitted of the line being read.
    parts: u32,
}

impl LineReader {
    /// Starts at file offset `offset`; lines longer than `max_line` bytes are split.
    pub fn new(offset: u64, max_line: usize) -> LineReader {
        LineReader {
            buf: Vec::new(),
            start: 0,
            buf_offset: offset,
            max_line: max_line.max(1),
            parts: 0,
        }
    }

    /// Appends bytes read from the file.
    pub fn feed(&mut self, data: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// File offset after everything fed so far.
    pub fn fed_offset(&self) -> u64 {
        self.buf_offset + self.pending() as u64
    }

    /// Bytes held back (an unterminated line).
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete line (or forced part of a long line), if any.
    pub fn next_line(&mut self) -> Option<Line<'_>> {
        let begin = self.start;
        let data = &self.buf[begin..];
        let window = data.len().min(self.max_line + 1);
        match memchr::memchr(b'\n', &data[..window]) {
            // A newline within max_line + 1 bytes: the line (up to max_line bytes) is whole.
            Some(nl) => {
                let len = if nl > 0 && data[nl - 1] == b'\r' {
                    nl - 1
                } else {
                    nl
                };
                let (end_offset, part) = self.end_line(nl + 1);
                Some(Line {
                    bytes: &self.buf[begin..begin + len],
                    end_offset,
                    part,
                })
            }
            _ if data.len() > self.max_line => {
                // No newline within max_line bytes: cut a part, keep reading the line.
                self.start += self.max_line;
                self.buf_offset += self.max_line as u64;
                let part = Part {
                    index: self.parts,
                    last: false,
                };
                self.parts += 1;
                Some(Line {
                    bytes: &self.buf[begin..begin + self.max_line],
                    end_offset: self.buf_offset,
                    part: Some(part),
                })
            }
            _ => None,
        }
    }

    /// Emits the held-back unterminated line (the writer did not finish it in time).
    pub fn flush_partial(&mut self) -> Option<Line<'_>> {
        let begin = self.start;
        let consumed = self.pending();
        if consumed == 0 {
            return None;
        }
        let (end_offset, part) = self.end_line(consumed);
        Some(Line {
            bytes: &self.buf[begin..begin + consumed],
            end_offset,
            part,
        })
    }

    /// Consumes the `consumed` bytes (text and terminator) of the line that ends here:
    /// its end offset, and its part marker if the line was split (the last part).
    fn end_line(&mut self, consumed: usize) -> (u64, Option<Part>) {
        self.start += consumed;
        self.buf_offset += consumed as u64;
        let part = (self.parts > 0).then_some(Part {
            index: self.parts,
            last: true,
        });
        self.parts = 0;
        (self.buf_offset, part)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A line, owned (the reader lends its lines only until the next call).
    #[derive(Debug, PartialEq)]
    struct Owned {
        bytes: Vec<u8>,
        end_offset: u64,
        part: Option<Part>,
    }

    fn owned(l: Line<'_>) -> Owned {
        Owned {
            bytes: l.bytes.to_vec(),
            end_offset: l.end_offset,
            part: l.part,
        }
    }

    fn all(r: &mut LineReader) -> Vec<Owned> {
        std::iter::from_fn(|| r.next_line().map(owned)).collect()
    }

    #[test]
    fn lines_offsets_crlf_and_partial() {
        let mut r = LineReader::new(100, 1024);
        r.feed(b"one\r\ntwo\nthr");
        let got = all(&mut r);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].bytes.as_slice(), got[0].end_offset),
            (&b"one"[..], 105)
        );
        assert_eq!(
            (got[1].bytes.as_slice(), got[1].end_offset),
            (&b"two"[..], 109)
        );
        assert_eq!(r.pending(), 3);
        r.feed(b"ee\n\n");
        let got = all(&mut r);
        assert_eq!(got[0].bytes, b"three");
        assert_eq!(got[1].bytes, b"", "an empty line is a line");
        assert_eq!(got[1].end_offset, 116);
        r.feed(b"tail");
        assert!(r.next_line().is_none());
        let last = owned(r.flush_partial().unwrap());
        assert_eq!(
            (last.bytes.as_slice(), last.end_offset),
            (&b"tail"[..], 120)
        );
        assert_eq!(r.fed_offset(), 120);
    }

    #[test]
    fn long_lines_are_split_into_marked_parts() {
        let mut r = LineReader::new(0, 4);
        r.feed(b"abcdefghij\nxy\n");
        let got = all(&mut r);
        let texts: Vec<&[u8]> = got.iter().map(|l| l.bytes.as_slice()).collect();
        assert_eq!(texts, vec![&b"abcd"[..], b"efgh", b"ij", b"xy"]);
        assert_eq!(
            got[0].part,
            Some(Part {
                index: 0,
                last: false
            })
        );
        assert_eq!(
            got[1].part,
            Some(Part {
                index: 1,
                last: false
            })
        );
        assert_eq!(
            got[2].part,
            Some(Part {
                index: 2,
                last: true
            })
        );
        assert_eq!(got[3].part, None);
        assert_eq!(got[2].end_offset, 11);
        // Exactly max_line bytes then a newline: one whole line.
        let mut r = LineReader::new(0, 4);
        r.feed(b"abcd\n");
        assert_eq!(
            all(&mut r),
            vec![Owned {
                bytes: b"abcd".to_vec(),
                end_offset: 5,
                part: None
            }]
        );
    }

    proptest! {
        /// Any chunking of the same bytes gives the same lines; joining parts restores every
        /// line byte for byte; parts never exceed max_line; end offsets are exact.
        #[test]
        fn any_chunking_restores_every_line(
            lines in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..40), any::<bool>()),
                0..30,
            ),
            max_line in 1usize..16,
            cuts in proptest::collection::vec(1usize..20, 1..50),
        ) {
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for (line, crlf) in &lines {
                stream.extend_from_slice(line);
                if *crlf && line.last() != Some(&b'\r') {
                    stream.extend_from_slice(b"\r\n");
                } else {
                    stream.push(b'\n');
                }
                let mut l = line.clone();
                if l.last() == Some(&b'\r') { l.pop(); }
                expected.push((l, stream.len() as u64));
            }
            let mut r = LineReader::new(0, max_line);
            let mut got = Vec::new();
            let mut pos = 0;
            let mut cut = cuts.iter().cycle();
            while pos < stream.len() {
                let n = (*cut.next().unwrap()).min(stream.len() - pos);
                r.feed(&stream[pos..pos + n]);
                pos += n;
                got.extend(all(&mut r));
            }
            prop_assert!(r.flush_partial().is_none());
            // Reassemble parts into lines.
            let mut joined: Vec<(Vec<u8>, u64)> = Vec::new();
            let mut current: Vec<u8> = Vec::new();
            let mut last_end = 0;
            for l in got {
                prop_assert!(l.end_offset > last_end);
                last_end = l.end_offset;
                match l.part {
                    Some(Part { last: false, .. }) => {
                        prop_assert_eq!(l.bytes.len(), max_line);
                        current.extend_from_slice(&l.bytes);
                    }
                    _ => {
                        prop_assert!(l.bytes.len() <= max_line);
                        current.extend_from_slice(&l.bytes);
                        joined.push((std::mem::take(&mut current), l.end_offset));
                    }
                }
            }
            // A part cut between '\r' and '\n' keeps the '\r': strip it when comparing.
            let normalise = |v: &mut Vec<(Vec<u8>, u64)>| for (l, _) in v.iter_mut() {
                if l.last() == Some(&b'\r') { l.pop(); }
            };
            normalise(&mut joined);
            normalise(&mut expected);
            prop_assert_eq!(joined, expected);
        }
    }
}
