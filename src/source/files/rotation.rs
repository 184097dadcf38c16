//! Rotation seen across a restart or a truncation: a file renamed while perapera was down,
//! the copy that copytruncate left, and a file cut below the offset already read.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::discover::open_file;
use super::read::{emit_partial, flush_join};
use super::{Continue, Tailer};
use crate::checkpoint::FileCheckpoint;
use crate::position::FileId;
use crate::record::FileRef;
use crate::source::lines::LineReader;
use crate::source::FileEvent;

impl Tailer {
    /// Checkpointed files the first scan did not find: renamed out of the globs while we were
    /// stopped (`app.log` → `app.log.1`). Finish them from their offset if they are still next
    /// to where they were.
    pub(super) fn resume_rotated_while_down(&mut self) {
        let groups: Vec<_> = self.saved.drain().collect();
        let now = Instant::now();
        for (inode, entries) in groups {
            let dir = entries
                .first()
                .and_then(|(_, s)| Path::new(&s.path).parent().map(Path::to_path_buf));
            let listing = dir
                .filter(|_| !self.files.contains_key(&inode))
                .map(std::fs::read_dir);
            if let Some(Err(e)) = &listing {
                if e.kind() != io::ErrorKind::NotFound {
                    // Cannot tell where it is now (out of file descriptors, permissions):
                    // keep the positions for when the file shows up again.
                    self.saved_since.insert(inode, now);
                    self.saved.insert(inode, entries);
                    continue;
                }
            }
            // Where the inode is now, unless a file we follow already has it.
            let found = listing.and_then(Result::ok).and_then(|list| {
                list.flatten().find_map(|entry| {
                    let meta = entry.metadata().ok()?;
                    let here = (meta.dev(), meta.ino()) == inode && meta.file_type().is_file();
                    here.then(|| (entry.path(), meta.len()))
                })
            });
            let mut file = found.and_then(|(path, len)| {
                let f = open_file(&path).ok()?;
                Some((path, f, len))
            });
            let mut resumed = false;
            for (skey, s) in entries {
                let same = match &mut file {
                    Some((_, f, len)) if !resumed => {
                        *len >= s.offset && s.id().matches(f).unwrap_or(false)
                    }
                    _ => false,
                };
                match (same, file.take()) {
                    (true, Some((path, f, _))) => {
                        tracing::info!(source = %self.name, path = %path.display(), was = %s.path, offset = s.offset,
                            "Finishing a file rotated while perapera was stopped");
                        self.track(path, f, s.id(), s.offset, false, Continue::Saved(skey));
                        resumed = true;
                    }
                    (_, other) => {
                        file = other;
                        // Older contents of the inode: finish their copy, if one is left.
                        self.finish_copy_of(skey, &s);
                    }
                }
            }
            if let (false, Some((path, mut f, _))) = (resumed, file) {
                // Our inode with other bytes (truncated, and rotated away, while we were
                // stopped): read them whole.
                if let Ok(id) = FileId::of(&mut f) {
                    self.track(path, f, id, 0, false, Continue::New);
                }
            }
        }
    }

    /// After `saved`'s file was truncated: finish its copy (a file next to it that starts with
    /// the same bytes, as logrotate's copytruncate leaves) from the saved offset, as the
    /// continuation of the saved entry.
    pub(super) fn finish_copy_of(&mut self, key: u64, saved: &FileCheckpoint) {
        let original = Path::new(&saved.path);
        if let Some((path, file, id)) = self.find_copy(&saved.id(), saved.offset, original) {
            tracing::info!(source = %self.name, path = %path.display(), offset = saved.offset,
                "Finishing the rotated copy of a truncated file from the checkpointed offset");
            let original = Arc::new(FileRef {
                id: saved.id(),
                path: saved.path.clone(),
                key,
            });
            self.track(
                path,
                file,
                id,
                saved.offset,
                false,
                Continue::Copy(original, None),
            );
        }
    }

    /// The copy of the file `id` was taken from: a regular file next to `original`, not
    /// followed yet, at least `offset` long and starting with the fingerprinted bytes; the
    /// newest if several do. Nothing for an id without fingerprinted bytes (any file would
    /// match).
    pub(super) fn find_copy(
        &self,
        id: &FileId,
        offset: u64,
        original: &Path,
    ) -> Option<(PathBuf, File, FileId)> {
        if id.fingerprint_len == 0 {
            return None;
        }
        let dir = original.parent()?;
        let mut candidates: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .filter_map(|entry| {
                let meta = entry.metadata().ok()?;
                let key = (meta.dev(), meta.ino());
                let usable = meta.file_type().is_file()
                    && meta.len() >= offset
                    && key != (id.dev, id.ino)
                    && !self.files.contains_key(&key);
                usable.then(|| (meta.modified().unwrap_or(UNIX_EPOCH), entry.path()))
            })
            .collect();
        candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
        candidates.into_iter().find_map(|(_, path)| {
            let mut f = open_file(&path).ok()?;
            if !id.same_content(&mut f).ok()? {
                return None;
            }
            let copy_id = FileId::of(&mut f).ok()?;
            Some((path, f, copy_id))
        })
    }

    /// `key`'s file shrank below our offset or changed its first bytes: copytruncate. Finish
    /// the copy from where we were (handing it what we hold back), restart the file at 0.
    pub(super) fn truncated(&mut self, key: (u64, u64)) {
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
            emit_partial(&self.config, &self.name, &self.stats, t, &mut self.pending);
            flush_join(t, &mut self.pending);
        }
        let old_lines =
            std::mem::replace(&mut t.lines, LineReader::new(0, self.config.max_line_bytes));
        let old_join = std::mem::take(&mut t.join);
        t.id = new_id;
        let key = self.next_key;
        self.next_key += 1;
        let old_ref = std::mem::replace(
            &mut t.file_ref,
            Arc::new(FileRef {
                id: new_id,
                path: t.path.display().to_string(),
                key,
            }),
        );
        // The original is a file of its own now, even if it was the copy of another.
        t.copy = false;
        t.idle_since = None;
        t.held_since = None;
        self.events.push(FileEvent::Start {
            file: t.file_ref.clone(),
            offset: 0,
        });
        if let Some((copy_path, f, copy_id)) = copy {
            tracing::info!(source = %self.name, path = %copy_path.display(), offset = fed,
                "Finishing the rotated copy of the truncated file");
            self.track(
                copy_path,
                f,
                copy_id,
                fed,
                false,
                Continue::Copy(old_ref, Some((old_lines, old_join))),
            );
        }
    }
}
