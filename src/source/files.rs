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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::format::{self, Stream};
use super::identity::{FileId, FINGERPRINT_BYTES};
use super::lines::{Line, LineReader, Part};
use super::{Batch, FileEvent, SourceError};
use crate::checkpoint::FileCheckpoint;
use crate::config::{FileStart, FilesConfig, LineFormat};
use crate::ops::metrics::Stats;
use crate::record::{FileRef, Position, Record, Value};

/// Bytes read from one file per turn before the next file gets its turn (fairness).
const TURN_BYTES: usize = 256 << 10;
/// Read buffer.
const READ_BYTES: usize = 64 << 10;

/// The host name (`host` field).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::from("localhost");
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

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
}

impl Tracked {
    fn at_end(&self) -> bool {
        self.idle_since.is_some()
    }

    fn holds_nothing(&self) -> bool {
        self.lines.pending() == 0 && !self.join.active
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
    /// Checkpointed files not opened yet.
    saved: HashMap<(u64, u64), FileCheckpoint>,
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
}

impl Tailer {
    /// A tailer resuming from `saved` (`None`: the source has no checkpoint at all).
    pub fn new(
        name: &str,
        config: FilesConfig,
        saved: Option<Vec<FileCheckpoint>>,
        stats: Arc<Stats>,
    ) -> Tailer {
        let exclude = config
            .exclude
            .iter()
            .filter_map(|p| glob::Pattern::new(p).ok())
            .collect();
        Tailer {
            name: name.to_string(),
            exclude,
            host: hostname(),
            files: BTreeMap::new(),
            had_checkpoint: saved.is_some(),
            saved: saved
                .unwrap_or_default()
                .into_iter()
                .map(|f| ((f.dev, f.ino), f))
                .collect(),
            config,
            scans: 0,
            events: Vec::new(),
            reported: Reported::default(),
            buf: vec![0; READ_BYTES],
            stats,
            pending: Vec::new(),
            turn: 0,
        }
    }

    /// News for the checkpoint gathered since the last call.
    pub fn take_events(&mut self) -> Vec<FileEvent> {
        std::mem::take(&mut self.events)
    }

    /// Files currently tracked (open or waiting to be reopened).
    pub fn tracked(&self) -> usize {
        self.files.len()
    }

    fn open_count(&self) -> usize {
        self.files.values().filter(|t| t.file.is_some()).count()
    }

    fn excluded(&self, path: &Path) -> bool {
        self.exclude.iter().any(|p| p.matches_path(path))
    }

    /// Evaluates the globs: starts new files, notices rotated and deleted ones, reopens closed
    /// ones that grew, and detects truncation.
    pub fn scan(&mut self, now: Instant) {
        self.scans += 1;
        let first = self.scans == 1;
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let mut found: Vec<(PathBuf, std::fs::Metadata)> = Vec::new();
        for pattern in self.config.include.clone() {
            let mut matched_any = false;
            let entries = match glob::glob(&pattern) {
                Ok(e) => e,
                Err(e) => {
                    if self.reported.first(&pattern, "pattern") {
                        tracing::error!(source = %self.name, %pattern, error = %e, "Invalid glob");
                    }
                    continue;
                }
            };
            for entry in entries {
                let path = match entry {
                    Ok(p) => p,
                    Err(e) => {
                        let dir = e.path().display().to_string();
                        if self.reported.first(&dir, "unreadable_dir") {
                            tracing::warn!(source = %self.name, path = %dir, error = %e.error(),
                                "Cannot list a directory the glob {pattern:?} goes through; files under it are not read. Check its permissions");
                        }
                        continue;
                    }
                };
                matched_any = true;
                if self.excluded(&path) {
                    continue;
                }
                let shown = path.display().to_string();
                match std::fs::metadata(&path) {
                    Ok(m) if m.file_type().is_file() => {
                        self.reported.clear(&shown, "not_regular");
                        found.push((path, m));
                    }
                    Ok(m) => {
                        if self.reported.first(&shown, "not_regular") {
                            let what = describe(&m.file_type());
                            tracing::warn!(source = %self.name, path = %shown, kind = what,
                                "Skipping a path the globs match: it is a {what}, not a regular file. Narrow `include` or add it to `exclude`");
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        if self.reported.first(&shown, "vanished") {
                            tracing::info!(source = %self.name, path = %shown,
                                "File vanished between the directory scan and opening it (rotated or deleted); skipping it");
                        }
                    }
                    Err(e) => {
                        if self.reported.first(&shown, "stat") {
                            tracing::warn!(source = %self.name, path = %shown, error = %e,
                                "Cannot stat a file the globs match; skipping it until it can be");
                        }
                    }
                }
            }
            if matched_any {
                if !self.reported.first(&pattern, "nothing_matched") {
                    tracing::info!(source = %self.name, %pattern, "The glob matches files now");
                }
                self.reported.clear(&pattern, "nothing_matched");
            } else if self.reported.first(&pattern, "nothing_matched") {
                tracing::warn!(source = %self.name, %pattern,
                    "The glob matches no file (yet); it is scanned again every rescan_interval");
            }
        }
        for (path, meta) in found {
            let key = (meta.dev(), meta.ino());
            if !seen.insert(key) {
                continue; // the same file through two globs or a symlink
            }
            if self.files.contains_key(&key) {
                self.rescan_tracked(key, path, &meta, now);
            } else {
                self.start(path, first, now);
            }
        }
        for (key, t) in &mut self.files {
            t.matched = seen.contains(key);
        }
        if first {
            self.resume_rotated_while_down(now);
        }
        // A file re-appearing at a rotated file's path waits for that one to be finished.
        let rotated: HashSet<PathBuf> = self
            .files
            .values()
            .filter(|t| !t.matched && !t.at_end())
            .map(|t| t.path.clone())
            .collect();
        for t in self.files.values_mut() {
            t.waiting_for_rotated = t.matched && rotated.contains(&t.path);
        }
        self.events
            .push(FileEvent::Seen(self.files.keys().copied().collect()));
    }

    /// A known file found again by a scan: follow renames, reopen, check for truncation.
    fn rescan_tracked(
        &mut self,
        key: (u64, u64),
        path: PathBuf,
        meta: &std::fs::Metadata,
        now: Instant,
    ) {
        let open = self.open_count();
        let max_open = self.config.max_open_files;
        let Some(t) = self.files.get_mut(&key) else {
            return;
        };
        if t.path != path {
            t.path = path;
            t.fields = file_fields(&t.path, &self.host, &self.config);
            t.file_ref = Arc::new(FileRef {
                id: t.id,
                path: t.path.display().to_string(),
            });
        }
        if t.file.is_none() && meta.len() != t.lines.fed_offset() && open < max_open {
            if let Ok(mut f) = open_file(&t.path) {
                // Other bytes now: keep it anyway, the truncation check below restarts it.
                if !t.id.matches(&mut f).unwrap_or(false)
                    || f.seek(SeekFrom::Start(t.lines.fed_offset())).is_ok()
                {
                    t.file = Some(f);
                    t.idle_since = None;
                }
            }
        }
        let changed = match &mut t.file {
            Some(f) => {
                let shrank = meta.len() < t.lines.fed_offset();
                shrank || !t.id.matches(f).unwrap_or(true)
            }
            None => false,
        };
        if changed {
            self.truncated(key, now);
        } else if let Some(t) = self.files.get_mut(&key) {
            // Fingerprint more bytes once there are more, so that inode reuse is caught.
            if let (Some(f), true) = (
                &mut t.file,
                (t.id.fingerprint_len as usize) < FINGERPRINT_BYTES
                    && meta.len() > u64::from(t.id.fingerprint_len),
            ) {
                if let Ok(id) = t.id.refreshed(f) {
                    t.id = id;
                    t.file_ref = Arc::new(FileRef {
                        id,
                        path: t.path.display().to_string(),
                    });
                }
            }
        }
    }

    /// Opens a file not tracked yet and decides where it starts.
    fn start(&mut self, path: PathBuf, first_scan: bool, now: Instant) {
        let shown = path.display().to_string();
        if self.open_count() >= self.config.max_open_files && !self.evict_idle() {
            if self.reported.first(&shown, "max_open_files") {
                tracing::warn!(source = %self.name, path = %shown, max_open_files = self.config.max_open_files,
                    "Too many files open; this one is opened once others are finished. Raise max_open_files if this persists");
            }
            return;
        }
        self.reported.clear(&shown, "max_open_files");
        let mut file = match open_file(&path) {
            Ok(f) => f,
            Err(e) => {
                let (kind, hint) = match e.kind() {
                    io::ErrorKind::NotFound => (
                        "vanished",
                        "it vanished between the scan and opening it (rotated or deleted)",
                    ),
                    io::ErrorKind::PermissionDenied => (
                        "permission",
                        "permission denied: give perapera's user read access (e.g. group adm)",
                    ),
                    _ => ("open", "cannot open it"),
                };
                if self.reported.first(&shown, kind) {
                    tracing::warn!(source = %self.name, path = %shown, error = %e, "Skipping a file: {hint}");
                }
                return;
            }
        };
        for kind in ["vanished", "permission", "open"] {
            self.reported.clear(&shown, kind);
        }
        let meta = match file.metadata() {
            Ok(m) if m.file_type().is_file() => m,
            Ok(_) => return, // replaced by something else since the stat: the next scan says
            Err(_) => return,
        };
        let id = match FileId::of(&mut file) {
            Ok(id) => id,
            Err(e) => {
                if self.reported.first(&shown, "read") {
                    tracing::warn!(source = %self.name, path = %shown, error = %e, "Cannot read a file; skipping it");
                }
                return;
            }
        };
        let key = (id.dev, id.ino);
        if self.files.contains_key(&key) {
            return;
        }
        let size = meta.len();
        let offset = match self.saved.remove(&key) {
            Some(saved) if saved.id().matches(&mut file).unwrap_or(false) => {
                if size < saved.offset {
                    tracing::info!(source = %self.name, path = %shown, saved = saved.offset, size,
                        "File is shorter than its checkpoint (truncated while perapera was stopped); reading it from the start");
                    self.finish_copy_of(&saved, &path, now);
                    0
                } else {
                    saved.offset
                }
            }
            Some(saved) => {
                // Same inode, other bytes: truncated and rewritten, or the inode was reused.
                self.finish_copy_of(&saved, &path, now);
                0
            }
            None if first_scan
                && !self.had_checkpoint
                && self.config.start_at == FileStart::End =>
            {
                size
            }
            None => 0,
        };
        self.track(path, file, id, offset, true, now);
    }

    /// Starts following `file` at `offset`.
    fn track(
        &mut self,
        path: PathBuf,
        mut file: File,
        id: FileId,
        offset: u64,
        matched: bool,
        _now: Instant,
    ) {
        if file.seek(SeekFrom::Start(offset)).is_err() {
            return;
        }
        let file_ref = Arc::new(FileRef {
            id,
            path: path.display().to_string(),
        });
        self.events.push(FileEvent::Start {
            file: file_ref.clone(),
            offset,
        });
        tracing::debug!(source = %self.name, path = %path.display(), offset, "Following file");
        let fields = file_fields(&path, &self.host, &self.config);
        let join = Joiner {
            prev_end: offset,
            ..Joiner::default()
        };
        self.files.insert(
            (id.dev, id.ino),
            Tracked {
                path,
                file: Some(file),
                id,
                file_ref,
                lines: LineReader::new(offset, self.config.max_line_bytes),
                join,
                fields,
                matched,
                idle_since: None,
                held_since: None,
                waiting_for_rotated: false,
            },
        );
    }

    /// Closes the longest-idle open file that can be reopened by path later.
    fn evict_idle(&mut self) -> bool {
        let victim = self
            .files
            .iter()
            .filter(|(_, t)| t.file.is_some() && t.matched && t.holds_nothing())
            .filter_map(|(k, t)| t.idle_since.map(|i| (i, *k)))
            .min();
        match victim.and_then(|(_, k)| self.files.get_mut(&k)) {
            Some(t) => {
                t.file = None;
                true
            }
            None => false,
        }
    }

    /// Checkpointed files the first scan did not find: renamed out of the globs while we were
    /// stopped (`app.log` → `app.log.1`). Finish them from their offset if they are still next
    /// to where they were.
    fn resume_rotated_while_down(&mut self, now: Instant) {
        let saved: Vec<FileCheckpoint> = self.saved.drain().map(|(_, f)| f).collect();
        for s in saved {
            let Some(dir) = Path::new(&s.path).parent() else {
                continue;
            };
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                if meta.dev() != s.dev || meta.ino() != s.ino || !meta.file_type().is_file() {
                    continue;
                }
                let path = entry.path();
                if let Ok(mut f) = open_file(&path) {
                    if s.id().matches(&mut f).unwrap_or(false) && meta.len() >= s.offset {
                        tracing::info!(source = %self.name, path = %path.display(), was = %s.path, offset = s.offset,
                            "Finishing a file rotated while perapera was stopped");
                        self.track(path, f, s.id(), s.offset, false, now);
                    }
                }
                break;
            }
        }
    }

    /// After `saved`'s file was truncated: finish its copy (a file next to it that starts with
    /// the same bytes, as logrotate's copytruncate leaves) from the saved offset.
    fn finish_copy_of(&mut self, saved: &FileCheckpoint, original: &Path, now: Instant) {
        if let Some((path, file, id)) = self.find_copy(&saved.id(), saved.offset, original) {
            tracing::info!(source = %self.name, path = %path.display(), offset = saved.offset,
                "Finishing the rotated copy of a truncated file from the checkpointed offset");
            self.track(path, file, id, saved.offset, false, now);
        }
    }

    fn find_copy(
        &self,
        id: &FileId,
        offset: u64,
        original: &Path,
    ) -> Option<(PathBuf, File, FileId)> {
        let dir = original.parent()?;
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let key = (meta.dev(), meta.ino());
            if !meta.file_type().is_file()
                || meta.len() < offset
                || key == (id.dev, id.ino)
                || self.files.contains_key(&key)
            {
                continue;
            }
            let path = entry.path();
            let Ok(mut f) = open_file(&path) else {
                continue;
            };
            if id.same_content(&mut f).unwrap_or(false) {
                let copy_id = FileId::of(&mut f).ok()?;
                return Some((path, f, copy_id));
            }
        }
        None
    }

    /// `key`'s file shrank below our offset or changed its first bytes: copytruncate. Finish
    /// the copy from where we were (handing it what we hold back), restart the file at 0.
    fn truncated(&mut self, key: (u64, u64), now: Instant) {
        let Some(t) = self.files.get_mut(&key) else {
            return;
        };
        tracing::info!(source = %self.name, path = %t.path.display(), offset = t.lines.fed_offset(),
            "File was truncated (copytruncate?); reading it again from the start");
        let fed = t.lines.fed_offset();
        let (id, path) = (t.id, t.path.clone());
        let copy = self.find_copy(&id, fed, &path);
        let Some(t) = self.files.get_mut(&key) else {
            return;
        };
        let Some(file) = t.file.as_mut() else {
            return;
        };
        let fresh = file
            .seek(SeekFrom::Start(0))
            .and_then(|_| FileId::of(file))
            .and_then(|id| file.seek(SeekFrom::Start(0)).map(|_| id));
        let Ok(new_id) = fresh else {
            return;
        };
        if copy.is_none() {
            // No copy: what we hold back was in the file before the truncation; ship it.
            if let Some(line) = t.lines.flush_partial() {
                emit_line(
                    &self.config,
                    &self.name,
                    &self.stats,
                    t,
                    line,
                    &mut self.pending,
                );
            }
            flush_join(&self.config, t, &mut self.pending);
        }
        let old_lines =
            std::mem::replace(&mut t.lines, LineReader::new(0, self.config.max_line_bytes));
        let old_join = std::mem::take(&mut t.join);
        t.id = new_id;
        t.file_ref = Arc::new(FileRef {
            id: new_id,
            path: t.path.display().to_string(),
        });
        t.idle_since = None;
        t.held_since = None;
        self.events.push(FileEvent::Start {
            file: t.file_ref.clone(),
            offset: 0,
        });
        if let Some((copy_path, f, copy_id)) = copy {
            tracing::info!(source = %self.name, path = %copy_path.display(), offset = fed,
                "Finishing the rotated copy of the truncated file");
            self.track(copy_path, f, copy_id, fed, false, now);
            if let Some(c) = self.files.get_mut(&(copy_id.dev, copy_id.ino)) {
                // The copy has the same bytes at the same offsets: continue exactly there.
                c.lines = old_lines;
                c.join = old_join;
            }
        }
    }

    /// Reads lines into `out` until it holds `max_entries` records or `max_bytes` bytes,
    /// giving every file a turn of at most [`TURN_BYTES`] (a busy file cannot starve the
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
            progressed |= read_turn(
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
                    if let Some(line) = t.lines.flush_partial() {
                        emit_line(&self.config, &self.name, &self.stats, t, line, out);
                    }
                    flush_join(&self.config, t, out);
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
                tracing::debug!(source = %self.name, path = %t.path.display(),
                    offset = t.lines.fed_offset(), "Released a rotated or deleted file");
            }
        }
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

/// One file's turn: lines already buffered, then up to [`TURN_BYTES`] more.
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
) -> bool {
    let mut read = 0;
    loop {
        while let Some(line) = t.lines.next_line() {
            emit_line(config, name, stats, t, line, out);
            if out.len() >= max_entries {
                return true;
            }
        }
        if read >= TURN_BYTES {
            return true;
        }
        let Some(f) = t.file.as_mut() else {
            return read > 0;
        };
        match f.read(buf) {
            Ok(0) => {
                t.idle_since.get_or_insert(now);
                if !t.holds_nothing() {
                    t.held_since.get_or_insert(now);
                }
                return read > 0;
            }
            Ok(n) => {
                t.lines.feed(&buf[..n]);
                read += n;
                t.idle_since = None;
                t.held_since = None;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let path = t.path.display().to_string();
                if reported.first(&path, "read") {
                    tracing::warn!(source = %name, %path, error = %e,
                        "Cannot read a file; retrying, its lines wait (nothing is skipped)");
                }
                return read > 0;
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
    line: Line,
    out: &mut Vec<Record>,
) {
    let start = t.join.prev_end;
    t.join.prev_end = line.end_offset;
    if line.part.is_some_and(|p| p.index == 0) {
        stats.note(name, "lines_split", 1);
    }
    if config.format == LineFormat::Raw {
        let rec = make_record(
            t,
            Value::from_bytes(line.bytes),
            None,
            None,
            None,
            line.part,
            line.end_offset,
        );
        out.push(rec);
        return;
    }
    if line.part.is_some() {
        // A physical line longer than max_line_bytes cannot be parsed: ship its parts as
        // they are.
        flush_join(config, t, out);
        stats.note(name, "unparsed", 1);
        let mut rec = make_record(
            t,
            Value::from_bytes(line.bytes),
            None,
            None,
            None,
            line.part,
            line.end_offset,
        );
        rec.fields.push((
            "_PERAPERA_UNPARSED".into(),
            Value::Str("line longer than max_line_bytes".into()),
        ));
        out.push(rec);
        return;
    }
    let parsed = match config.format {
        LineFormat::Cri => format::parse_cri(&line.bytes).map(|c| {
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
        _ => format::parse_docker(&line.bytes).map(|d| {
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
        flush_join(config, t, out);
        stats.note(name, "unparsed", 1);
        let mut rec = make_record(
            t,
            Value::from_bytes(line.bytes),
            None,
            None,
            None,
            None,
            line.end_offset,
        );
        rec.fields
            .push(("_PERAPERA_UNPARSED".into(), Value::Str(e.to_string())));
        out.push(rec);
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
fn flush_join(_config: &FilesConfig, t: &mut Tracked, out: &mut Vec<Record>) {
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
    make_record(
        t,
        Value::from_bytes(text),
        t.join.stream,
        t.join.time.as_deref(),
        t.join.time_ns,
        part,
        offset,
    )
}

fn make_record(
    t: &Tracked,
    message: Value,
    stream: Option<Stream>,
    time: Option<&str>,
    time_ns: Option<u64>,
    part: Option<Part>,
    offset: u64,
) -> Record {
    let mut fields = Vec::with_capacity(t.fields.len() + 5);
    fields.push(("message".to_string(), message));
    if let Some(s) = stream {
        fields.push(("stream".to_string(), Value::Str(s.as_str().to_string())));
    }
    if let Some(time) = time {
        fields.push(("time".to_string(), Value::Str(time.to_string())));
    }
    fields.extend(t.fields.iter().cloned());
    if let Some(p) = part {
        fields.push((
            "_PERAPERA_PART".to_string(),
            Value::UInt(u64::from(p.index)),
        ));
        if p.last {
            fields.push(("_PERAPERA_PART_LAST".to_string(), Value::UInt(1)));
        }
    }
    Record {
        fields,
        time_ns: time_ns.unwrap_or_else(unix_now_ns),
        position: Position::File {
            file: t.file_ref.clone(),
            offset,
        },
    }
}

/// What a file type is, for a log line.
fn describe(t: &std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() || t.is_char_device() {
        "device"
    } else {
        "special file"
    }
}

/// Opens for reading without blocking on a FIFO that replaced the file since the stat.
fn open_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// The fields every record of this file carries.
fn file_fields(path: &Path, host: &str, config: &FilesConfig) -> Vec<(String, Value)> {
    let mut fields = vec![
        (
            "path".to_string(),
            Value::from_bytes(path.as_os_str().as_encoded_bytes().to_vec()),
        ),
        ("host".to_string(), Value::Str(host.to_string())),
    ];
    if let Some(pod) = format::kubernetes_pod_log(path) {
        fields.push(("kubernetes.namespace".into(), Value::Str(pod.namespace)));
        fields.push(("kubernetes.pod".into(), Value::Str(pod.pod)));
        fields.push(("kubernetes.pod_uid".into(), Value::Str(pod.pod_uid)));
        fields.push(("kubernetes.container".into(), Value::Str(pod.container)));
    }
    for (k, v) in &config.fields {
        fields.push((k.clone(), Value::Str(v.clone())));
    }
    fields
}

/// Settings for one files reader thread.
pub struct FilesReader {
    /// Index of the source in the config (tags batches).
    pub index: usize,
    /// Source name.
    pub name: String,
    /// The source's config.
    pub config: FilesConfig,
    /// The source's checkpoint (`None`: it never ran).
    pub saved: Option<Vec<FileCheckpoint>>,
    /// Most entries in one batch.
    pub batch_entries: usize,
    /// A batch is handed over once it holds this many bytes.
    pub batch_bytes: usize,
    /// Counters.
    pub stats: Arc<Stats>,
}

/// Longest sleep between checks when inotify works (events wake us sooner) and when it does
/// not (then this is the latency).
const POLL_WATCHED: Duration = Duration::from_secs(1);
const POLL_UNWATCHED: Duration = Duration::from_millis(250);

impl FilesReader {
    /// Starts the reader thread.
    pub fn spawn(
        self,
        tx: mpsc::Sender<Batch>,
        stop: Arc<AtomicBool>,
    ) -> Result<JoinHandle<()>, SourceError> {
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(format!("files:{name}"))
            .spawn(move || self.run(&tx, &stop))
            .map_err(|e| SourceError::Open {
                source_name: name,
                reason: format!("cannot start reader thread: {e}"),
            })
    }

    fn run(self, tx: &mpsc::Sender<Batch>, stop: &AtomicBool) {
        let (wake_tx, wake_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let rescan = Arc::new(AtomicBool::new(false));
        let watcher = watch(&self.name, &self.config.include, wake_tx, rescan.clone());
        let poll = if watcher.is_some() {
            POLL_WATCHED
        } else {
            POLL_UNWATCHED
        };
        let mut tailer = Tailer::new(
            &self.name,
            self.config.clone(),
            self.saved.clone(),
            self.stats.clone(),
        );
        let mut next_scan = Instant::now();
        let mut batch = Vec::with_capacity(self.batch_entries);
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_scan || rescan.swap(false, Ordering::Relaxed) {
                tailer.scan(now);
                next_scan = now + self.config.rescan_interval;
            }
            let progressed = tailer.read(&mut batch, self.batch_entries, self.batch_bytes, now);
            tailer.tick(now, &mut batch);
            let events = tailer.take_events();
            if !batch.is_empty() || !events.is_empty() {
                let records = std::mem::replace(&mut batch, Vec::with_capacity(self.batch_entries));
                self.stats.read(&self.name, records.len() as u64);
                let sent = tx.blocking_send(Batch {
                    source: self.index,
                    events,
                    records,
                });
                if sent.is_err() {
                    return;
                }
            }
            if progressed {
                continue;
            }
            let now = Instant::now();
            let until = tailer
                .next_deadline()
                .map_or(next_scan, |d| d.min(next_scan))
                .min(now + poll);
            // A wake-up (or its absence) only shortens the sleep; the loop re-checks everything.
            let _ = wake_rx.recv_timeout(until.saturating_duration_since(now));
        }
        drop(watcher);
    }
}

/// Watches the directories the globs start from; events wake the reader (creations, renames
/// and removals also ask for a rescan). `None` if inotify is unavailable: polling then.
fn watch(
    name: &str,
    include: &[String],
    wake: std::sync::mpsc::SyncSender<()>,
    rescan: Arc<AtomicBool>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let handler = move |event: notify::Result<notify::Event>| {
        let structural = match &event {
            Ok(e) => matches!(
                e.kind,
                EventKind::Create(_)
                    | EventKind::Remove(_)
                    | EventKind::Modify(notify::event::ModifyKind::Name(_))
            ),
            Err(_) => true, // overflow: rescan to be safe
        };
        if structural {
            rescan.store(true, Ordering::Relaxed);
        }
        let _ = wake.try_send(());
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(source = %name, error = %e,
                "inotify is unavailable; polling files every 250 ms instead");
            return None;
        }
    };
    for pattern in include {
        let (dir, recursive) = watch_root(pattern);
        let mode = if recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        if let Err(e) = watcher.watch(&dir, mode) {
            tracing::info!(source = %name, %pattern, dir = %dir.display(), error = %e,
                "Cannot watch the directory of a glob; it is rescanned every rescan_interval instead");
        }
    }
    Some(watcher)
}

/// The directory a glob starts from (its components before the first wildcard, or the nearest
/// existing ancestor), and whether wildcards span more than the last component.
fn watch_root(pattern: &str) -> (PathBuf, bool) {
    let path = Path::new(pattern);
    let mut root = PathBuf::new();
    let mut components = path.components().peekable();
    let mut recursive = false;
    while let Some(c) = components.next() {
        let s = c.as_os_str().to_string_lossy();
        if s.contains(['*', '?', '[']) {
            recursive = components.peek().is_some();
            break;
        }
        if components.peek().is_none() {
            break; // the last component names the file itself
        }
        root.push(c);
    }
    while !root.as_os_str().is_empty() && !root.is_dir() {
        if !root.pop() {
            break;
        }
        recursive = false;
    }
    if root.as_os_str().is_empty() {
        root.push("/");
    }
    (root, recursive)
}
