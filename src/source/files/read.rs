//! Reading: each followed file's turn (at most `TURN_BYTES`, for fairness), lines and partial
//! pieces to records, and the timers (partial lines, `rotate_wait`, forgetting).

use std::io::{self, Read};
use std::time::Instant;

use super::line::{make_record, Meta};
use super::{Piece, Reported, Tailer, Tracked, TURN_BYTES};
use crate::checkpoint::FileCheckpoint;
use crate::config::{FilesConfig, LineFormat};
use crate::ops::metrics::Stats;
use crate::position::FINGERPRINT_BYTES;
use crate::record::Record;
use crate::source::format;
use crate::source::lines::{Line, Part};

impl Tailer {
    /// Reads lines into `out` until it holds `max_entries` records or `max_bytes` bytes,
    /// giving every file a turn of at most `TURN_BYTES` (a busy file cannot starve the
    /// others; files rotated away go first, so their last lines precede their successors').
    /// True if anything was read.
    pub fn read(
        &mut self,
        out: &mut Vec<Record>,
        max_entries: usize,
        max_bytes: usize,
        now: Instant,
    ) -> bool {
        let mut bytes: usize = out.iter().map(Record::byte_size).sum();
        let mut progressed = !self.pending.is_empty();
        bytes += self.pending.iter().map(Record::byte_size).sum::<usize>();
        out.append(&mut self.pending);
        let mut keys: Vec<(u64, u64)> = self.files.keys().copied().collect();
        if keys.is_empty() {
            return progressed;
        }
        let first = self.turn % keys.len();
        keys.rotate_left(first);
        keys.sort_by_key(|k| self.files.get(k).is_some_and(|t| t.matched));
        for (i, key) in keys.iter().enumerate() {
            if out.len() >= max_entries || bytes >= max_bytes {
                self.turn = self.turn.wrapping_add(i);
                return true;
            }
            let Some(t) = self.files.get_mut(key) else {
                continue;
            };
            if t.waiting_for_rotated || t.file.is_none() {
                continue;
            }
            let before = out.len();
            let turn = read_turn(
                &self.config,
                &self.name,
                &self.stats,
                &mut self.reported,
                t,
                &mut self.buf,
                out,
                max_entries,
                now,
            );
            bytes += out[before..].iter().map(Record::byte_size).sum::<usize>();
            match turn {
                Turn::Idle => {}
                Turn::Read => progressed = true,
                Turn::Truncated => {
                    self.truncated(*key);
                    progressed = true;
                    bytes += self.pending.iter().map(Record::byte_size).sum::<usize>();
                    out.append(&mut self.pending);
                }
            }
        }
        self.turn = self.turn.wrapping_add(1);
        progressed
    }

    /// Ships lines held back longer than `partial_line_timeout` and releases rotated or
    /// deleted files finished `rotate_wait` ago.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Record>) {
        let mut released = Vec::new();
        for (key, t) in &mut self.files {
            if let Some(since) = t.held_since {
                if t.at_end() && now.duration_since(since) >= self.config.partial_line_timeout {
                    let before = out.len();
                    emit_partial(&self.config, &self.name, &self.stats, t, out);
                    flush_join(t, out);
                    if out.len() > before {
                        self.stats.note(&self.name, "partial_lines_shipped", 1);
                    }
                    t.held_since = None;
                }
            }
            if let Some(idle) = t.idle_since {
                if !t.matched
                    && t.holds_nothing()
                    && now.duration_since(idle) >= self.config.rotate_wait
                {
                    released.push(*key);
                }
            }
        }
        for key in released {
            if let Some(t) = self.files.remove(&key) {
                if t.file.is_some() {
                    self.open -= 1;
                }
                tracing::debug!(source = %self.name, path = %t.path.display(),
                    offset = t.lines.fed_offset(), "Released a rotated or deleted file");
                if !t.copy {
                    // If it comes back (a directory moved away and back), it resumes here.
                    let saved = FileCheckpoint {
                        path: t.path.display().to_string(),
                        dev: t.id.dev,
                        ino: t.id.ino,
                        fingerprint: t.id.fingerprint,
                        fingerprint_len: t.id.fingerprint_len,
                        offset: t.lines.fed_offset(),
                        acked_at_ms: 0,
                        seen_at_ms: 0,
                    };
                    self.saved
                        .entry(key)
                        .or_default()
                        .push((t.file_ref.key, saved));
                    self.saved_since.insert(key, now);
                }
            }
        }
        let forget = self.config.forget_after;
        let saved = &mut self.saved;
        self.saved_since.retain(|inode, since| {
            let keep = now.duration_since(*since) < forget;
            if !keep {
                saved.remove(inode);
            }
            keep
        });
    }

    /// When [`Tailer::tick`] has something to do next, if anything.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.files
            .values()
            .filter_map(|t| {
                let held = t.held_since.map(|s| s + self.config.partial_line_timeout);
                let release = t
                    .idle_since
                    .filter(|_| !t.matched)
                    .map(|s| s + self.config.rotate_wait);
                match (held, release) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            })
            .min()
    }
}

/// How a file's turn went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// Nothing new.
    Idle,
    /// Lines or bytes were read.
    Read,
    /// The file is not what we were reading any more (truncated, maybe rewritten).
    Truncated,
}

/// One file's turn: lines already buffered, then up to [`TURN_BYTES`] more. Every chunk read is
/// checked against the file's identity before it is used, so bytes of a file that was
/// truncated and rewritten under us are never taken for the old file's.
/// Emits the line held back unterminated in `t`, if any (the writer did not finish it in
/// time, or the file was truncated under it).
pub(super) fn emit_partial(
    config: &FilesConfig,
    name: &str,
    stats: &Stats,
    t: &mut Tracked,
    out: &mut Vec<Record>,
) {
    t.with_lines(|lines, t| {
        if let Some(line) = lines.flush_partial() {
            emit_line(config, name, stats, t, line, out);
        }
    });
}

#[allow(clippy::too_many_arguments)]
fn read_turn(
    config: &FilesConfig,
    name: &str,
    stats: &Stats,
    reported: &mut Reported,
    t: &mut Tracked,
    buf: &mut [u8],
    out: &mut Vec<Record>,
    max_entries: usize,
    now: Instant,
) -> Turn {
    let mut read = 0;
    let done = |read: usize| if read > 0 { Turn::Read } else { Turn::Idle };
    loop {
        let full = t.with_lines(|lines, t| {
            while let Some(line) = lines.next_line() {
                emit_line(config, name, stats, t, line, out);
                if out.len() >= max_entries {
                    return true;
                }
            }
            false
        });
        if full {
            return Turn::Read;
        }
        if read >= TURN_BYTES {
            return Turn::Read;
        }
        let Some(f) = t.file.as_mut() else {
            return done(read);
        };
        match f.read(buf) {
            Ok(0) => {
                // Shorter than what we read, or than the bytes we fingerprinted: truncated.
                let floor = t.lines.fed_offset().max(u64::from(t.id.fingerprint_len));
                let shrank = f.metadata().is_ok_and(|m| m.len() < floor);
                if shrank {
                    return Turn::Truncated;
                }
                t.idle_since.get_or_insert(now);
                if !t.holds_nothing() {
                    t.held_since.get_or_insert(now);
                }
                return done(read);
            }
            Ok(n) => {
                if !t.id.matches(f).unwrap_or(true) {
                    return Turn::Truncated;
                }
                t.lines.feed(&buf[..n]);
                read += n;
                t.idle_since = None;
                t.held_since = None;
                let fed = t.lines.fed_offset();
                if (t.id.fingerprint_len as usize) < FINGERPRINT_BYTES
                    && fed > u64::from(t.id.fingerprint_len)
                {
                    // Fingerprint the bytes we now know, so that a later rewrite is noticed.
                    if let Ok(id) = t.id.refreshed(f) {
                        t.id = id;
                        t.refresh_ref();
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let path = t.path.display().to_string();
                if reported.first(&path, "read") {
                    tracing::warn!(source = %name, %path, error = %e,
                        "Cannot read a file; retrying, its lines wait (nothing is skipped)");
                }
                return done(read);
            }
        }
    }
}

/// Turns one line of the file into records per the format.
fn emit_line(
    config: &FilesConfig,
    name: &str,
    stats: &Stats,
    t: &mut Tracked,
    line: Line<'_>,
    out: &mut Vec<Record>,
) {
    let start = t.join.prev_end;
    t.join.prev_end = line.end_offset;
    if line.part.is_some_and(|p| p.index == 0) {
        stats.note(name, "lines_split", 1);
    }
    if config.format == LineFormat::Raw {
        let meta = Meta {
            part: line.part,
            ..Meta::default()
        };
        out.push(make_record(t, line.bytes, meta, line.end_offset));
        return;
    }
    if line.part.is_some() {
        // A physical line longer than max_line_bytes cannot be parsed: ship its parts as
        // they are.
        flush_join(t, out);
        stats.note(name, "unparsed", 1);
        let meta = Meta {
            part: line.part,
            unparsed: Some("line longer than max_line_bytes"),
            ..Meta::default()
        };
        out.push(make_record(t, line.bytes, meta, line.end_offset));
        return;
    }
    let parsed = match config.format {
        LineFormat::Cri => format::parse_cri(line.bytes).map(|c| {
            let time = line
                .bytes
                .split(|b| *b == b' ')
                .next()
                .and_then(|t| std::str::from_utf8(t).ok());
            piece(
                config,
                t,
                Piece {
                    text: c.text,
                    partial: c.partial,
                    stream: Some(c.stream),
                    time,
                    time_ns: Some(c.time_ns),
                },
                start,
                line.end_offset,
                out,
            )
        }),
        _ => format::parse_docker(line.bytes).map(|d| {
            piece(
                config,
                t,
                Piece {
                    text: d.text.as_bytes(),
                    partial: d.partial,
                    stream: d.stream,
                    time: d.time.as_deref(),
                    time_ns: d.time_ns,
                },
                start,
                line.end_offset,
                out,
            )
        }),
    };
    if let Err(e) = parsed {
        flush_join(t, out);
        stats.note(name, "unparsed", 1);
        let reason = e.to_string();
        let meta = Meta {
            unparsed: Some(&reason),
            ..Meta::default()
        };
        out.push(make_record(t, line.bytes, meta, line.end_offset));
    }
}

/// Adds a piece of a container log line; emits the joined line when its last piece came (or
/// a part of it whenever it exceeds `max_line_bytes`).
fn piece(
    config: &FilesConfig,
    t: &mut Tracked,
    p: Piece<'_>,
    start: u64,
    end: u64,
    out: &mut Vec<Record>,
) {
    if !t.join.active {
        t.join.active = true;
        t.join.start = start;
        t.join.buf.clear();
        t.join.stream = p.stream;
        t.join.time = p.time.map(str::to_string);
        t.join.time_ns = p.time_ns;
        t.join.parts = 0;
    }
    t.join.buf.extend_from_slice(p.text);
    t.join.end = end;
    let max = config.max_line_bytes;
    while t.join.buf.len() > max {
        let rest = t.join.buf.split_off(max);
        let text = std::mem::replace(&mut t.join.buf, rest);
        // Resume at this physical line if part of it is still held: a restart re-reads it
        // (a few duplicate bytes, never a lost one).
        let offset = if t.join.buf.is_empty() { end } else { start };
        let part = Part {
            index: t.join.parts,
            last: false,
        };
        t.join.parts += 1;
        out.push(joined_record(t, text, Some(part), offset));
    }
    if !p.partial {
        let text = std::mem::take(&mut t.join.buf);
        let part = (t.join.parts > 0).then_some(Part {
            index: t.join.parts,
            last: true,
        });
        out.push(joined_record(t, text, part, end));
        t.join.active = false;
    }
}

/// Ships unfinished pieces as they are (the last piece did not come in time, or an unparsable
/// line follows).
pub(super) fn flush_join(t: &mut Tracked, out: &mut Vec<Record>) {
    if !t.join.active {
        return;
    }
    let text = std::mem::take(&mut t.join.buf);
    let part = (t.join.parts > 0).then_some(Part {
        index: t.join.parts,
        last: true,
    });
    let end = t.join.end;
    out.push(joined_record(t, text, part, end));
    t.join.active = false;
}

fn joined_record(t: &Tracked, text: Vec<u8>, part: Option<Part>, offset: u64) -> Record {
    let meta = Meta {
        stream: t.join.stream,
        time: t.join.time.as_deref(),
        time_ns: t.join.time_ns,
        part,
        unparsed: None,
    };
    make_record(t, &text, meta, offset)
}
