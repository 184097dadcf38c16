//! Where perapera remembers how far it got, and the rule for moving that mark: the
//! checkpoint's format and versions (here), the acknowledgement [`Watermark`], a files
//! source's [`FileOffsets`] and the [`FileEvent`]s they fold, and the [`StateDir`] with its
//! lock and atomic write.

mod offsets;
mod state;
mod watermark;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::position::FileId;

pub use offsets::{FileEvent, FileOffsets};
pub use state::{parse_checkpoint, read_checkpoint, StateDir, StateError, CHECKPOINT_FILE};
pub use watermark::Watermark;

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
