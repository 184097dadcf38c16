//! Finding files: the scans of the globs, what each path found is (a new file, one already
//! followed, one to hold back until its predecessor is read), and bounding open descriptors.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::line::file_fields;
use super::{Continue, Joiner, Tailer, Tracked};
use crate::config::FileStart;
use crate::position::{FileId, FINGERPRINT_BYTES};
use crate::record::FileRef;
use crate::source::lines::LineReader;
use crate::source::walk;
use crate::source::FileEvent;

impl Tailer {
    /// Evaluates the globs: starts new files, notices rotated and deleted ones, reopens closed
    /// ones that grew, and detects truncation.
    pub fn scan(&mut self) {
        self.scans += 1;
        self.evictable = None;
        let first = self.scans == 1;
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let mut found: Vec<(PathBuf, std::fs::Metadata)> = Vec::new();
        // Directories the globs go through that could not be read this time (out of file
        // descriptors, permissions): what lies under them is unknown, never "gone".
        let mut unknown: Vec<PathBuf> = Vec::new();
        let mut deferred = 0usize;
        for pattern in self.config.include.clone() {
            let mut matched_any = false;
            let walked = match walk::walk(&pattern) {
                Ok(w) => w,
                Err(e) => {
                    if self.reported.first(&pattern, "pattern") {
                        tracing::error!(source = %self.name, %pattern, error = %e, "Invalid glob");
                    }
                    continue;
                }
            };
            for (dir, e) in &walked.unreadable {
                let shown = dir.display().to_string();
                if self.reported.first(&shown, "unreadable_dir") {
                    tracing::warn!(source = %self.name, path = %shown, error = %e,
                        "Cannot read a directory the glob {pattern:?} goes through; files under it keep their positions and are read once it can be read. Check its permissions (or the file descriptor limit)");
                }
            }
            unknown.extend(walked.unreadable.iter().map(|(d, _)| d.clone()));
            for path in walked.matches {
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
                        unknown.push(path.clone());
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
                self.rescan_tracked(key, path, &meta);
            } else if deferred > 0 || !self.start(path, first) {
                // No descriptor to spare: this file (and, cheaply, every other new one of
                // this scan) waits for the next scan.
                deferred += 1;
            }
        }
        if deferred == 0 {
            self.reported.clear("", "max_open_files");
        } else if self.reported.first("", "max_open_files") {
            tracing::warn!(source = %self.name, deferred, max_open_files = self.config.max_open_files,
                "Too many files open; files wait to be opened until others are read to their end. Raise max_open_files (and the file descriptor limit) if this persists");
        }
        for (key, t) in &mut self.files {
            let unsure = unknown.iter().any(|d| t.path.starts_with(d));
            t.matched = seen.contains(key) || (unsure && t.matched);
        }
        // A rotated file is not found by the globs any more, but it can still be truncated
        // under us (copytruncate, then renamed and written before we looked): check it here,
        // as rescan_tracked checks the files the globs find.
        let rewritten: Vec<(u64, u64)> = self
            .files
            .iter_mut()
            .filter(|(_, t)| !t.matched)
            .filter_map(|(key, t)| {
                // A size it cannot tell is not a shrink; the first bytes are still checked.
                let len = t.file.as_ref()?.metadata().map_or(u64::MAX, |m| m.len());
                t.rewritten(len).then_some(*key)
            })
            .collect();
        for key in rewritten {
            self.truncated(key);
        }
        let unreadable: HashSet<String> = unknown.iter().map(|d| d.display().to_string()).collect();
        self.reported
            .0
            .retain(|(p, kind)| *kind != "unreadable_dir" || unreadable.contains(p));
        if first {
            self.resume_rotated_while_down();
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
        self.events.push(FileEvent::Seen(
            self.files.values().map(|t| t.file_ref.key).collect(),
        ));
    }

    /// A known file found again by a scan: follow renames, reopen, check for truncation.
    pub(super) fn rescan_tracked(
        &mut self,
        key: (u64, u64),
        path: PathBuf,
        meta: &std::fs::Metadata,
    ) {
        let reopen = self
            .files
            .get(&key)
            .is_some_and(|t| t.file.is_none() && meta.len() != t.lines.fed_offset());
        if reopen && self.open_count() >= self.config.max_open_files {
            self.evict_idle();
        }
        let open = self.open_count();
        let max_open = self.config.max_open_files;
        let Some(t) = self.files.get_mut(&key) else {
            return;
        };
        if t.path != path {
            t.path = path;
            t.fields = file_fields(&t.path, &self.host, &self.config);
            t.refresh_ref();
        }
        if t.file.is_none() && meta.len() != t.lines.fed_offset() && open < max_open {
            if let Ok(mut f) = open_file(&t.path) {
                // Other bytes now: keep it anyway, the truncation check below restarts it.
                if !t.id.matches(&mut f).unwrap_or(false)
                    || f.seek(SeekFrom::Start(t.lines.fed_offset())).is_ok()
                {
                    t.file = Some(f);
                    t.idle_since = None;
                    self.open += 1;
                }
            }
        }
        if t.rewritten(meta.len()) {
            self.truncated(key);
        } else if let Some(t) = self.files.get_mut(&key) {
            // Fingerprint more bytes once there are more, so that inode reuse is caught.
            if let (Some(f), true) = (
                &mut t.file,
                (t.id.fingerprint_len as usize) < FINGERPRINT_BYTES
                    && meta.len() > u64::from(t.id.fingerprint_len),
            ) {
                if let Ok(id) = t.id.refreshed(f) {
                    t.id = id;
                    t.refresh_ref();
                }
            }
        }
    }

    /// Opens a file not tracked yet and decides where it starts; false if no file descriptor
    /// could be spared for it (`max_open_files`).
    pub(super) fn start(&mut self, path: PathBuf, first_scan: bool) -> bool {
        let shown = path.display().to_string();
        if self.open_count() >= self.config.max_open_files && !self.evict_idle() {
            return false;
        }
        let mut file = match open_file(&path) {
            Ok(f) => f,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                // Out of descriptors after all (something else holds them): not this file's
                // fault, try again at the next scan.
                return false;
            }
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
                return true;
            }
        };
        for kind in ["vanished", "permission", "open"] {
            self.reported.clear(&shown, kind);
        }
        let meta = match file.metadata() {
            Ok(m) if m.file_type().is_file() => m,
            Ok(_) => return true, // replaced by something else since the stat: the next scan says
            Err(_) => return true,
        };
        let id = match FileId::of(&mut file) {
            Ok(id) => id,
            Err(e) => {
                if self.reported.first(&shown, "read") {
                    tracing::warn!(source = %self.name, path = %shown, error = %e, "Cannot read a file; skipping it");
                }
                return true;
            }
        };
        let key = (id.dev, id.ino);
        if self.files.contains_key(&key) {
            return true;
        }
        let size = meta.len();
        // The saved entry whose bytes this file still starts with resumes; the others (older
        // contents of this inode) live on in a copy, if anywhere.
        let mut resume = None;
        for (skey, saved) in self.saved.remove(&key).unwrap_or_default() {
            let same = resume.is_none() && saved.id().matches(&mut file).unwrap_or(false);
            if same && size >= saved.offset {
                resume = Some((skey, saved.offset));
            } else {
                if same {
                    tracing::info!(source = %self.name, path = %shown, saved = saved.offset, size,
                        "File is shorter than its checkpoint (truncated while perapera was stopped); reading it from the start");
                }
                self.finish_copy_of(skey, &saved);
            }
        }
        let (offset, cont) = match resume {
            Some((skey, offset)) => (offset, Continue::Saved(skey)),
            None if first_scan
                && !self.had_checkpoint
                && self.config.start_at == FileStart::End =>
            {
                (size, Continue::New)
            }
            None => (0, Continue::New),
        };
        self.track(path, file, id, offset, true, cont);
        true
    }

    /// Starts following `file` at `offset`, moving the checkpoint entry `cont` says.
    pub(super) fn track(
        &mut self,
        path: PathBuf,
        mut file: File,
        id: FileId,
        offset: u64,
        matched: bool,
        cont: Continue,
    ) {
        if self.files.contains_key(&(id.dev, id.ino)) || file.seek(SeekFrom::Start(offset)).is_err()
        {
            return;
        }
        let shown = path.display().to_string();
        let (file_ref, state, copy) = match cont {
            Continue::Copy(original, state) => (original, state, true),
            Continue::New | Continue::Saved(_) => {
                let key = match cont {
                    Continue::Saved(key) => key,
                    _ => {
                        self.next_key += 1;
                        self.next_key - 1
                    }
                };
                let file_ref = Arc::new(FileRef {
                    id,
                    path: shown.clone(),
                    key,
                });
                self.events.push(FileEvent::Start {
                    file: file_ref.clone(),
                    offset,
                });
                (file_ref, None, false)
            }
        };
        tracing::debug!(source = %self.name, path = %shown, offset, copy, "Following file");
        let fields = file_fields(&path, &self.host, &self.config);
        let (lines, join) = state.unwrap_or_else(|| {
            let join = Joiner {
                prev_end: offset,
                ..Joiner::default()
            };
            (LineReader::new(offset, self.config.max_line_bytes), join)
        });
        self.open += 1;
        self.files.insert(
            (id.dev, id.ino),
            Tracked {
                path,
                file: Some(file),
                id,
                file_ref,
                lines,
                join,
                fields,
                matched,
                idle_since: None,
                held_since: None,
                waiting_for_rotated: false,
                copy,
                ref_changed: false,
            },
        );
    }

    /// Closes the longest-idle open file that can be reopened by path later.
    pub(super) fn evict_idle(&mut self) -> bool {
        let files = &self.files;
        let candidates = self.evictable.get_or_insert_with(|| {
            let mut c: Vec<_> = files
                .iter()
                .filter(|(_, t)| t.file.is_some() && t.matched && t.holds_nothing())
                .filter_map(|(k, t)| t.idle_since.map(|i| (i, *k)))
                .collect();
            c.sort_by(|a, b| b.cmp(a));
            c
        });
        while let Some((idle, key)) = candidates.pop() {
            let Some(t) = self.files.get_mut(&key) else {
                continue;
            };
            // Still as it was when the list was made?
            if t.file.is_some() && t.matched && t.holds_nothing() && t.idle_since == Some(idle) {
                t.file = None;
                self.open -= 1;
                return true;
            }
        }
        false
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
pub(super) fn open_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}
