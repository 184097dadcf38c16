//! A files source's offsets per file identity: folded from acknowledged lines and from the
//! source's [`FileEvent`]s, aged out `forget_after` once a file is no longer followed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::FileCheckpoint;
use crate::record::FileRef;

/// News from a files source that the checkpoint must reflect though no entry carries it.
#[derive(Debug, Clone)]
pub enum FileEvent {
    /// Reading of this file identity starts (or resumes) at `offset`: a file first seen at
    /// its end is checkpointed there before any of its lines is acknowledged.
    Start {
        /// The file.
        file: Arc<FileRef>,
        /// Where reading starts.
        offset: u64,
    },
    /// The file's identity (fingerprint over more bytes) or path changed; its offset did not.
    Identity(Arc<FileRef>),
    /// A scan finished: the files with these keys ([`FileRef::key`]) are followed. The
    /// checkpoints of the others age towards `forget_after`.
    Seen(Vec<u64>),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::FileId;

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
}
