//! The files source: tails log files (and Kubernetes pod logs) by byte offset.
//!
//! A [`Tailer`] is the whole logic and is synchronous, so tests can drive it step by step; the
//! [`FilesReader`] runs one on its own thread, woken by inotify (`notify`) and by a periodic
//! rescan of the globs, and hands batches to the pipeline over the bounded channel (a full
//! channel stops the reading: backpressure).
//!
//! A file is known by its identity ([`FileId`]: device, inode and a fingerprint of its first
//! bytes), never by its path. Every line carries `(identity, offset after the line)`; the
//! pipeline checkpoints, per identity, the offset of the last acknowledged line. Rotation:
//!
//! - rename: the old identity is no longer matched by the globs; it is read to its end, kept
//!   open for `rotate_wait` for late writers, then released. A new file at the same path is
//!   held back until the old one reached its end, so lines keep their order.
//! - copytruncate: the size drops below our offset (or the first bytes change). The copy is
//!   looked for next to the file (a file starting with the same bytes) and finished from our
//!   offset; the original is read again from 0.
//! - delete while open: read to the end, then released.
//! - a path that comes back with a new inode, or an inode reused with other bytes: a new
//!   identity, read from its start.
//!
//! Nothing is dropped: a line longer than `max_line_bytes` is split into parts marked
//! `_PERAPERA_PART` (and `_PERAPERA_PART_LAST` on the last); invalid UTF-8 is shipped as msgpack
//! `bin`; a line that does not parse in the `cri`/`docker` format is shipped as it is, marked
//! `_PERAPERA_UNPARSED`. A problem with one file (permissions, a directory or FIFO matching a
//! glob, a file vanishing between scan and open) is logged once with the path and the reason,
//! and everything else keeps flowing.

mod discover;
mod line;
mod read;
mod reader;
mod rotation;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::format::Stream;
use super::lines::LineReader;
use super::FileEvent;
use crate::checkpoint::FileCheckpoint;
use crate::config::FilesConfig;
use crate::ops::metrics::Stats;
use crate::position::FileId;
use crate::record::{FileRef, Record, Value};

pub use reader::FilesReader;

/// Bytes read from one file per turn before the next file gets its turn (fairness).
const TURN_BYTES: usize = 256 << 10;

/// Read buffer.
const READ_BYTES: usize = 64 << 10;

/// Partial pieces (CRI `P`, docker `log` without `\n`) waiting for the piece that ends them.
#[derive(Debug, Default)]
struct Joiner {
    active: bool,
    buf: Vec<u8>,
    stream: Option<Stream>,
    time: Option<String>,
    time_ns: Option<u64>,
    /// Parts already emitted (the joined line exceeded `max_line_bytes`).
    parts: u32,
    /// Offset after the last piece taken.
    end: u64,
    /// Offset after the previous physical line: where the current one starts.
    prev_end: u64,
    /// Where the first piece held now starts.
    start: u64,
}

/// One piece of a container log line.
struct Piece<'a> {
    text: &'a [u8],
    partial: bool,
    stream: Option<Stream>,
    time: Option<&'a str>,
    time_ns: Option<u64>,
}

/// A file being read.
struct Tracked {
    path: PathBuf,
    /// `None` while closed to stay under `max_open_files` (reopened by path when it grows).
    file: Option<File>,
    id: FileId,
    file_ref: Arc<FileRef>,
    lines: LineReader,
    join: Joiner,
    /// Added to every record: path, host, kubernetes.*, the configured fields.
    fields: Vec<(String, Value)>,
    /// Matched by the globs in the last scan (false: rotated away or deleted).
    matched: bool,
    /// Read to the end, and since when nothing new came.
    idle_since: Option<Instant>,
    /// Something is held back (an unterminated line, unfinished pieces) since.
    held_since: Option<Instant>,
    /// Waits for the rotated file that had this path to be finished first.
    waiting_for_rotated: bool,
    /// The rotated copy of a truncated file: its lines continue that file's checkpoint entry
    /// (`file_ref` stays the original's).
    copy: bool,
    /// `file_ref` changed since the checkpoint was told.
    ref_changed: bool,
}

/// Which checkpoint entry a file's lines move.
enum Continue {
    /// A new one: the file is read from `offset` for the first time.
    New,
    /// A saved one (its key): resuming after a restart.
    Saved(u64),
    /// Another file's (the copy of a truncated file), maybe with its held-back line.
    Copy(Arc<FileRef>, Option<(LineReader, Joiner)>),
}

impl Tracked {
    /// The checkpoint identity after the id or path changed (a copy keeps the original's).
    fn refresh_ref(&mut self) {
        if !self.copy {
            self.file_ref = Arc::new(FileRef {
                id: self.id,
                path: self.path.display().to_string(),
                key: self.file_ref.key,
            });
            self.ref_changed = true;
        }
    }

    fn at_end(&self) -> bool {
        self.idle_since.is_some()
    }

    /// The open file is no longer what we read: `len` (its size) is below our offset, or its
    /// first bytes changed (copytruncate, maybe written again since). False when closed.
    fn rewritten(&mut self, len: u64) -> bool {
        let fed = self.lines.fed_offset();
        let id = self.id;
        self.file
            .as_mut()
            .is_some_and(|f| len < fed || !id.matches(f).unwrap_or(true))
    }

    fn holds_nothing(&self) -> bool {
        self.lines.pending() == 0 && !self.join.active
    }

    /// Runs `f` with this file's line reader lent out, so that the lines it lends (borrowed
    /// from its buffer) can be emitted with the rest of `self` (`f` sees an empty reader in
    /// `self.lines`; making one allocates nothing).
    fn with_lines<R>(&mut self, f: impl FnOnce(&mut LineReader, &mut Tracked) -> R) -> R {
        let mut lines = std::mem::replace(&mut self.lines, LineReader::new(0, 1));
        let r = f(&mut lines, self);
        self.lines = lines;
        r
    }
}

/// Problems logged once per path and kind, until they clear.
#[derive(Default)]
struct Reported(HashSet<(String, &'static str)>);

impl Reported {
    fn first(&mut self, path: &str, kind: &'static str) -> bool {
        self.0.insert((path.to_string(), kind))
    }

    fn clear(&mut self, path: &str, kind: &'static str) {
        self.0.remove(&(path.to_string(), kind));
    }
}

/// The synchronous core of the files source.
pub struct Tailer {
    name: String,
    config: FilesConfig,
    exclude: Vec<glob::Pattern>,
    host: String,
    files: BTreeMap<(u64, u64), Tracked>,
    /// Checkpointed files not opened yet, by (device, inode): several when a file was
    /// truncated (the old contents live on in a copy) or an inode was reused.
    saved: HashMap<(u64, u64), Vec<(u64, FileCheckpoint)>>,
    /// Entries put (back) in `saved` after the first scan, and since when: a file released
    /// after it left the globs, resumed at its offset if it comes back within `forget_after`.
    saved_since: HashMap<(u64, u64), Instant>,
    /// The next [`FileRef::key`] for a file read from its start.
    next_key: u64,
    had_checkpoint: bool,
    scans: u64,
    events: Vec<FileEvent>,
    reported: Reported,
    buf: Vec<u8>,
    stats: Arc<Stats>,
    /// Records produced outside a read (lines shipped on truncation), shipped first.
    pending: Vec<Record>,
    /// Rotates which file reads first.
    turn: usize,
    /// Files with an open descriptor (kept as a count: thousands of files are tracked).
    open: usize,
    /// Files that may be closed for others, longest idle last; rebuilt once per scan (no
    /// file becomes idle during a scan), so a scan opening many files does not search all
    /// files for each.
    evictable: Option<Vec<(Instant, (u64, u64))>>,
}

impl Tailer {
    /// A tailer resuming from `saved` (`None`: the source has no checkpoint at all).
    pub fn new(
        name: &str,
        config: FilesConfig,
        saved: Option<Vec<(u64, FileCheckpoint)>>,
        stats: Arc<Stats>,
    ) -> Tailer {
        let mut by_inode: HashMap<(u64, u64), Vec<(u64, FileCheckpoint)>> = HashMap::new();
        let had_checkpoint = saved.is_some();
        for (key, f) in saved.unwrap_or_default() {
            by_inode.entry((f.dev, f.ino)).or_default().push((key, f));
        }
        let exclude = config
            .exclude
            .iter()
            .filter_map(|p| glob::Pattern::new(p).ok())
            .collect();
        Tailer {
            name: name.to_string(),
            exclude,
            host: crate::host::hostname(),
            files: BTreeMap::new(),
            had_checkpoint,
            saved: by_inode,
            saved_since: HashMap::new(),
            next_key: 1,
            config,
            scans: 0,
            events: Vec::new(),
            reported: Reported::default(),
            buf: vec![0; READ_BYTES],
            stats,
            pending: Vec::new(),
            turn: 0,
            open: 0,
            evictable: None,
        }
    }

    /// News for the checkpoint gathered since the last call.
    pub fn take_events(&mut self) -> Vec<FileEvent> {
        for t in self.files.values_mut() {
            if std::mem::take(&mut t.ref_changed) {
                self.events.push(FileEvent::Identity(t.file_ref.clone()));
            }
        }
        std::mem::take(&mut self.events)
    }

    /// Files currently tracked (open or waiting to be reopened).
    pub fn tracked(&self) -> usize {
        self.files.len()
    }

    fn open_count(&self) -> usize {
        self.open
    }

    fn excluded(&self, path: &Path) -> bool {
        self.exclude.iter().any(|p| p.matches_path(path))
    }
}
