//! Where perapera remembers how far it got, and the rule for moving that mark.
//!
//! [`Watermark`] tracks entries in read order and yields the position of the longest prefix
//! that the sink acknowledged. Acks arrive out of order (Kafka partitions, forward chunks);
//! the watermark never passes an entry that is still unacknowledged. This is the whole
//! at-least-once promise, so it is small and property-tested.
//!
//! [`StateDir`] owns the state directory: an exclusive lock (two instances on one state
//! directory would interleave checkpoints) and the checkpoint file, written atomically
//! (temp file, fsync, rename, fsync of the directory) so that a crash at any instant leaves
//! either the old or the new checkpoint, never a torn one. A checkpoint that does not parse
//! is an error for the operator (`perapera cursor reset`), never a silent restart.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::position::FileId;
use crate::record::FileRef;
use crate::source::FileEvent;

/// Tracks in-flight entries in read order; `advance` pops the acknowledged prefix.
#[derive(Debug)]
pub struct Watermark<T> {
    /// Sequence number of `slots[0]`.
    head: u64,
    slots: VecDeque<(T, bool)>,
}

impl<T> Default for Watermark<T> {
    fn default() -> Self {
        Watermark {
            head: 0,
            slots: VecDeque::new(),
        }
    }
}

impl<T> Watermark<T> {
    /// Adds an entry at the end; returns its sequence number.
    pub fn push(&mut self, item: T) -> u64 {
        self.slots.push_back((item, false));
        self.head + self.slots.len() as u64 - 1
    }

    /// The entry with sequence number `seq`, if it is still tracked.
    pub fn get_mut(&mut self, seq: u64) -> Option<(&mut T, bool)> {
        let idx = seq.checked_sub(self.head)?;
        self.slots
            .get_mut(usize::try_from(idx).ok()?)
            .map(|(item, done)| (item, *done))
    }

    /// Marks `seq` as acknowledged (or finally handled). Returns true if it was pending.
    pub fn complete(&mut self, seq: u64) -> bool {
        let Some(idx) = seq
            .checked_sub(self.head)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return false;
        };
        match self.slots.get_mut(idx) {
            Some((_, done)) if !*done => {
                *done = true;
                true
            }
            _ => false,
        }
    }

    /// Pops the completed prefix and returns its last item: the new watermark.
    pub fn advance(&mut self) -> Option<T> {
        let mut last = None;
        self.advance_each(|item| last = Some(item));
        last
    }

    /// Pops the completed prefix, handing each item to `f` in order; returns how many.
    pub fn advance_each(&mut self, mut f: impl FnMut(T)) -> usize {
        let mut n = 0;
        while self.slots.front().is_some_and(|(_, done)| *done) {
            if let Some((item, _)) = self.slots.pop_front() {
                f(item);
            }
            self.head += 1;
            n += 1;
        }
        n
    }

    /// Entries tracked (pending, or done but behind a pending one).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Sequence numbers of entries not yet completed, in order.
    pub fn pending(&self) -> impl Iterator<Item = u64> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, (_, done))| !done)
            .map(|(i, _)| self.head + i as u64)
    }
}

/// The on-disk checkpoint: one entry per source name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Format version; this perapera reads and writes [`Checkpoint::VERSION`].
    pub version: u32,
    /// Position per source, by source name. Sources no longer configured are kept.
    pub sources: BTreeMap<String, SourceCheckpoint>,
}

/// The acknowledged position of one source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceCheckpoint {
    /// A journal source: the cursor of the last acknowledged entry.
    Journal {
        /// sd-journal cursor string.
        cursor: String,
        /// `__REALTIME_TIMESTAMP` of that entry, microseconds.
        entry_time_us: u64,
        /// When the entry was acknowledged, milliseconds since the epoch.
        acked_at_ms: u64,
    },
    /// A files source: one entry per file identity.
    Files {
        /// The files, in no particular order.
        files: Vec<FileCheckpoint>,
    },
}

/// The acknowledged offset of one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCheckpoint {
    /// The path the file had when last read (informational; the identity decides).
    pub path: String,
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// FNV-1a 64 of the first `fingerprint_len` bytes.
    pub fingerprint: u64,
    /// Bytes covered by the fingerprint.
    pub fingerprint_len: u32,
    /// Offset after the last acknowledged line: where reading resumes.
    pub offset: u64,
    /// When a line of it was last acknowledged (ms since the epoch; 0: never).
    pub acked_at_ms: u64,
    /// When the file was last seen by a scan (ms since the epoch); forgotten after
    /// `forget_after` unseen.
    pub seen_at_ms: u64,
}

/// What a file's checkpoint entry says about shipping it now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileLag {
    /// The file's size now; `None` when the path holds another file or none (rotated away).
    pub size: Option<u64>,
    /// Bytes after the acknowledged offset.
    pub unshipped: u64,
    /// 0 when everything is acknowledged; else how long the file has had unshipped bytes
    /// without an acknowledgement (since the last one, or since its last write if nothing of
    /// it was acknowledged yet).
    pub lag_ms: u64,
}

impl FileCheckpoint {
    /// Looks at the file behind this entry (a `stat` of its path).
    pub fn lag(&self, now_ms: u64) -> FileLag {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                let unshipped = m.len().saturating_sub(self.offset);
                let since = if self.acked_at_ms > 0 {
                    self.acked_at_ms
                } else {
                    (m.mtime().max(0) as u64) * 1000
                };
                FileLag {
                    size: Some(m.len()),
                    unshipped,
                    lag_ms: if unshipped == 0 {
                        0
                    } else {
                        now_ms.saturating_sub(since)
                    },
                }
            }
            _ => FileLag {
                size: None,
                unshipped: 0,
                lag_ms: 0,
            },
        }
    }

    /// The file's identity.
    pub fn id(&self) -> FileId {
        FileId {
            dev: self.dev,
            ino: self.ino,
            fingerprint: self.fingerprint,
            fingerprint_len: self.fingerprint_len,
        }
    }
}

impl Checkpoint {
    /// The checkpoint format version.
    pub const VERSION: u32 = 1;

    /// The journal cursor saved for `source`, if any.
    pub fn journal_cursor(&self, source: &str) -> Option<&str> {
        match self.sources.get(source) {
            Some(SourceCheckpoint::Journal { cursor, .. }) => Some(cursor),
            _ => None,
        }
    }

    /// The file offsets saved for `source`; `None` if it has no checkpoint yet.
    pub fn files(&self, source: &str) -> Option<&[FileCheckpoint]> {
        match self.sources.get(source) {
            Some(SourceCheckpoint::Files { files }) => Some(files),
            _ => None,
        }
    }
}

/// The offsets of a files source's files, as its checkpoint will say: the offset after the
/// last acknowledged line of each file identity, the start offset of files nothing was
/// acknowledged of yet, and when each was last seen (files unseen for `forget_after` are
/// forgotten).
#[derive(Debug, Default)]
pub struct FileOffsets {
    /// By [`FileRef::key`]; entries loaded from the checkpoint get keys with the top bit set.
    files: HashMap<u64, FileCheckpoint>,
    forget_after: Duration,
    /// A scan reported which files exist: only then can a file's absence age.
    scanned: bool,
}

impl FileOffsets {
    /// Starts from a checkpoint's entries.
    pub fn new(saved: &[FileCheckpoint], forget_after: Duration) -> FileOffsets {
        FileOffsets {
            files: saved
                .iter()
                .enumerate()
                .map(|(i, f)| (Self::LOADED | i as u64, f.clone()))
                .collect(),
            forget_after,
            scanned: false,
        }
    }

    /// Keys of entries loaded from the checkpoint have this bit; the tailer numbers the files
    /// it starts from 1.
    pub const LOADED: u64 = 1 << 63;

    /// The loaded entries with their keys: where the files source resumes.
    pub fn saved(&self) -> Vec<(u64, FileCheckpoint)> {
        let mut v: Vec<(u64, FileCheckpoint)> = self
            .files
            .iter()
            .filter(|(k, _)| *k & Self::LOADED != 0)
            .map(|(k, f)| (*k, f.clone()))
            .collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    fn entry(&mut self, file: &FileRef, now_ms: u64) -> &mut FileCheckpoint {
        let e = self
            .files
            .entry(file.key)
            .or_insert_with(|| FileCheckpoint {
                path: String::new(),
                dev: file.id.dev,
                ino: file.id.ino,
                fingerprint: 0,
                fingerprint_len: 0,
                offset: 0,
                acked_at_ms: 0,
                seen_at_ms: now_ms,
            });
        if e.path != file.path {
            e.path.clone_from(&file.path);
        }
        e.fingerprint = file.id.fingerprint;
        e.fingerprint_len = file.id.fingerprint_len;
        e
    }

    /// Applies `edit` to `file`'s entry (made if new); true if the entry changed.
    fn update(
        &mut self,
        file: &FileRef,
        now_ms: u64,
        edit: impl FnOnce(&mut FileCheckpoint),
    ) -> bool {
        let before = self.files.get(&file.key).cloned();
        let e = self.entry(file, now_ms);
        edit(e);
        before.as_ref() != Some(e)
    }

    /// The line of `file` ending at `offset` was acknowledged (lines arrive in read order).
    pub fn acked(&mut self, file: &FileRef, offset: u64, now_ms: u64) {
        let e = self.entry(file, now_ms);
        e.offset = offset;
        e.acked_at_ms = now_ms;
    }

    /// The entries as they are now (no forgetting).
    pub fn entries(&self) -> impl Iterator<Item = &FileCheckpoint> {
        self.files.values()
    }

    /// Applies news from the files source; true if the checkpoint it makes changed (a scan
    /// that found the same files changes nothing on disk: their `seen_at_ms` is refreshed in
    /// memory, and the first scan after a restart refreshes it again before anything is
    /// forgotten).
    pub fn on_event(&mut self, event: FileEvent, now_ms: u64) -> bool {
        match event {
            FileEvent::Start { file, offset } => self.update(&file, now_ms, |e| e.offset = offset),
            FileEvent::Identity(file) => self.update(&file, now_ms, |_| {}),
            FileEvent::Seen(keys) => {
                self.scanned = true;
                for key in keys {
                    if let Some(e) = self.files.get_mut(&key) {
                        e.seen_at_ms = now_ms;
                    }
                }
                false
            }
        }
    }

    /// The checkpoint's list, forgetting files unseen for `forget_after`.
    pub fn checkpoint(&mut self, now_ms: u64) -> Vec<FileCheckpoint> {
        if self.scanned {
            let keep = self.forget_after.as_millis() as u64;
            self.files
                .retain(|_, f| now_ms.saturating_sub(f.seen_at_ms) <= keep);
        }
        let mut list: Vec<FileCheckpoint> = self.files.values().cloned().collect();
        list.sort_by(|a, b| {
            (&a.path, a.dev, a.ino, a.fingerprint).cmp(&(&b.path, b.dev, b.ino, b.fingerprint))
        });
        list
    }
}

/// Errors of the state directory and checkpoint file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The directory cannot be created or used.
    #[error("state directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Another process holds the lock.
    #[error(
        "state directory {path} is in use by another perapera instance{holder}; \
         run one instance per state directory (set [state] directory to separate them)"
    )]
    Locked {
        /// The directory.
        path: PathBuf,
        /// " (pid N)" when known.
        holder: String,
    },
    /// The checkpoint file does not parse.
    #[error(
        "checkpoint file {path} is unreadable: {reason}. It was left untouched. \
         To start over, run `perapera cursor reset` (moves it aside; sources then begin \
         at their start_at position)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing the checkpoint failed.
    #[error("checkpoint file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// The checkpoint file name inside the state directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";
const LOCK_FILE: &str = "lock";

/// A locked state directory. The lock is released when this is dropped.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    _lock: File,
}

impl StateDir {
    /// Creates the directory if needed and takes its lock.
    pub fn lock(dir: &Path) -> Result<StateDir, StateError> {
        let dir_err = |source| StateError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(dir_err)?;
        let lock_path = dir.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(dir_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = lock.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(StateError::Locked {
                    path: dir.to_path_buf(),
                    holder: if pid.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {pid})")
                    },
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(dir_err(e)),
        }
        // Best effort: the pid only makes the "locked" message more helpful.
        let _ = lock.set_len(0);
        let _ = write!(lock, "{}", std::process::id());
        Ok(StateDir {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    /// Path of the checkpoint file.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.dir.join(CHECKPOINT_FILE)
    }

    /// Reads the checkpoint; a missing file is an empty checkpoint.
    pub fn load(&self) -> Result<Checkpoint, StateError> {
        read_checkpoint(&self.checkpoint_path())
    }

    /// Writes the checkpoint atomically and durably.
    pub fn store(&self, checkpoint: &Checkpoint) -> Result<(), StateError> {
        let path = self.checkpoint_path();
        let io_err = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let mut bytes = serde_json::to_vec_pretty(checkpoint).map_err(|e| io_err(e.into()))?;
        bytes.push(b'\n');
        let tmp = self.dir.join(format!("{CHECKPOINT_FILE}.tmp"));
        let write = || -> io::Result<()> {
            // A leftover temp file goes first (if it is a symlink, the link goes, never its
            // target), then the new one is created exclusively and without following links.
            match fs::remove_file(&tmp) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut f = {
                use std::os::unix::fs::OpenOptionsExt;
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .mode(0o644)
                    .open(&tmp)?
            };
            f.write_all(&bytes)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err(e)
        })
    }

    /// Moves a (possibly corrupt) checkpoint file aside; returns where it went.
    pub fn move_aside(&self) -> Result<Option<PathBuf>, StateError> {
        let path = self.checkpoint_path();
        if !path.exists() {
            return Ok(None);
        }
        let now = crate::clock::unix_secs();
        let aside = self.dir.join(format!("{CHECKPOINT_FILE}.reset-{now}"));
        fs::rename(&path, &aside).map_err(|source| StateError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Some(aside))
    }
}

/// Reads a checkpoint file without taking the lock (for `cursor show`).
pub fn read_checkpoint(path: &Path) -> Result<Checkpoint, StateError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Checkpoint {
                version: Checkpoint::VERSION,
                ..Checkpoint::default()
            })
        }
        Err(source) => {
            return Err(StateError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    parse_checkpoint(&bytes, path)
}

/// Parses checkpoint file contents; `path` names the file in errors. Empty, truncated or
/// non-JSON contents, another format version and unknown fields are `Corrupt`.
pub fn parse_checkpoint(bytes: &[u8], path: &Path) -> Result<Checkpoint, StateError> {
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(corrupt("the file is empty".into()));
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not valid JSON ({e})")))?;
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(Checkpoint::VERSION) => {}
        Some(v) => {
            return Err(corrupt(format!(
                "format version {v}, this perapera reads version {}",
                Checkpoint::VERSION
            )))
        }
        None => return Err(corrupt("no \"version\" number".into())),
    }
    serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_offsets_forget_files_unseen_for_the_grace_period() {
        use std::sync::Arc;
        let file = |ino, key| {
            Arc::new(FileRef {
                id: FileId {
                    dev: 1,
                    ino,
                    fingerprint: 7,
                    fingerprint_len: 10,
                },
                path: format!("/var/log/{ino}.log"),
                key,
            })
        };
        let saved = FileCheckpoint {
            path: "/var/log/old.log".into(),
            dev: 1,
            ino: 99,
            fingerprint: 5,
            fingerprint_len: 10,
            offset: 40,
            acked_at_ms: 0,
            seen_at_ms: 1_000,
        };
        let mut o = FileOffsets::new(&[saved], Duration::from_secs(60));
        let loaded = o.saved()[0].0;
        assert_ne!(loaded & FileOffsets::LOADED, 0);
        o.on_event(
            FileEvent::Start {
                file: file(2, 1),
                offset: 0,
            },
            1_000,
        );
        o.acked(&file(2, 1), 120, 2_000);
        // No scan reported yet: nothing ages, however old.
        assert_eq!(o.checkpoint(10_000_000).len(), 2);
        // A scan sees only the new file; the old one is kept for the grace period...
        o.on_event(FileEvent::Seen(vec![1]), 50_000);
        let list = o.checkpoint(50_000);
        assert_eq!(list.len(), 2);
        assert_eq!(
            list.iter().find(|f| f.ino == 2).map(|f| f.offset),
            Some(120)
        );
        // ...and forgotten after it.
        let list = o.checkpoint(61_001);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].ino, 2);
        // A file still being followed is never forgotten.
        o.on_event(FileEvent::Seen(vec![1]), 500_000);
        assert_eq!(o.checkpoint(500_000).len(), 1);
    }
    use proptest::prelude::*;

    #[test]
    fn watermark_waits_for_the_gap() {
        let mut w = Watermark::default();
        for i in 0..5 {
            assert_eq!(w.push(i), i);
        }
        assert!(w.complete(1));
        assert!(w.complete(2));
        assert_eq!(w.advance(), None);
        assert!(w.complete(0));
        assert!(!w.complete(0), "double ack is ignored");
        assert_eq!(w.advance(), Some(2));
        assert_eq!(w.len(), 2);
        assert_eq!(w.pending().collect::<Vec<_>>(), vec![3, 4]);
        assert!(!w.complete(1), "ack below the watermark is ignored");
        assert!(!w.complete(99), "ack beyond the end is ignored");
        assert!(w.complete(4));
        assert!(w.complete(3));
        assert_eq!(w.advance(), Some(4));
        assert!(w.is_empty());
        assert_eq!(w.push(5), 5);
    }

    proptest! {
        /// Acks in any order, with duplicates: the watermark is always the largest n such
        /// that every entry <= n was acked, and never passes an unacked entry.
        #[test]
        fn watermark_is_the_contiguous_acked_prefix(
            n in 1usize..300,
            order in proptest::collection::vec(any::<proptest::sample::Index>(), 0..600),
        ) {
            let mut w = Watermark::default();
            for i in 0..n as u64 { w.push(i); }
            let mut acked = vec![false; n];
            let mut mark: Option<u64> = None;
            for idx in order {
                let seq = idx.index(n);
                w.complete(seq as u64);
                acked[seq] = true;
                if let Some(m) = w.advance() { mark = Some(m); }
                let expected = acked.iter().take_while(|a| **a).count();
                prop_assert_eq!(mark.map(|m| m + 1).unwrap_or(0), expected as u64);
                if let Some(m) = mark {
                    prop_assert!(acked[..=m as usize].iter().all(|a| *a));
                }
            }
        }
    }

    #[test]
    fn store_load_and_lock() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::lock(dir.path()).unwrap();
        assert!(matches!(
            StateDir::lock(dir.path()),
            Err(StateError::Locked { .. })
        ));
        assert_eq!(state.load().unwrap().sources.len(), 0);
        let mut cp = Checkpoint {
            version: Checkpoint::VERSION,
            ..Checkpoint::default()
        };
        cp.sources.insert(
            "journal".into(),
            SourceCheckpoint::Journal {
                cursor: "s=1;i=2".into(),
                entry_time_us: 3,
                acked_at_ms: 4,
            },
        );
        state.store(&cp).unwrap();
        assert_eq!(state.load().unwrap(), cp);
        assert_eq!(
            state.load().unwrap().journal_cursor("journal"),
            Some("s=1;i=2")
        );
        drop(state);
        StateDir::lock(dir.path()).unwrap();
    }

    #[test]
    fn a_symlink_planted_as_the_temp_file_is_replaced_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let tmp = dir.path().join(format!("{CHECKPOINT_FILE}.tmp"));
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        let state = StateDir::lock(dir.path()).unwrap();
        let cp = Checkpoint {
            version: Checkpoint::VERSION,
            ..Checkpoint::default()
        };
        state.store(&cp).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(state.load().unwrap(), cp);
        assert!(!fs::symlink_metadata(dir.path().join(CHECKPOINT_FILE))
            .unwrap()
            .file_type()
            .is_symlink());
        // A dangling link too.
        fs::remove_file(&victim).unwrap();
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        state.store(&cp).unwrap();
        assert!(!victim.exists(), "the link's target was created");
    }

    #[test]
    fn corrupt_checkpoints_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHECKPOINT_FILE);
        for bad in [
            "",
            "{\"version\":1,\"sources\":{\"j\":{\"type\":\"journal\",\"cur",
            "{\"version\":2,\"sources\":{}}",
            "{\"sources\":{}}",
            "[1,2]",
        ] {
            fs::write(&path, bad).unwrap();
            let err = read_checkpoint(&path).unwrap_err();
            assert!(matches!(err, StateError::Corrupt { .. }), "{bad:?}: {err}");
            assert!(err.to_string().contains("perapera cursor reset"));
        }
    }
}
