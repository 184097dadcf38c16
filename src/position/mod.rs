//! Where an entry is in its source: what the pipeline's watermark tracks and a checkpoint
//! persists once the sink acknowledged it. A journal cursor, a file and an offset in it, or
//! a share in a forward request's acknowledgement.

pub mod identity;
mod request;

use std::fmt;
use std::sync::Arc;

pub use identity::{FileId, FINGERPRINT_BYTES};
pub use request::RequestAck;

/// A file as read: its identity and the path it had when the line was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRef {
    /// (device, inode, fingerprint).
    pub id: FileId,
    /// The path (informational: the identity is what counts).
    pub path: String,
    /// Which reading of which file this is, unique within a run: the key of its checkpoint
    /// entry. A truncated file's new contents are a new key; its rotated copy continues the
    /// old one.
    pub key: u64,
}

/// Where an entry is in its source; what a checkpoint persists once it is acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Position {
    /// A journal cursor.
    Cursor(String),
    /// An entry of a forward request: the request is acknowledged to its sender once every
    /// one of its entries is.
    Forward(Arc<RequestAck>),
    /// A byte offset just after a line of a file.
    File {
        /// The file (shared by all lines read from it under the same identity and path).
        file: Arc<FileRef>,
        /// Offset after the line: where to resume.
        offset: u64,
    },
}

impl Default for Position {
    fn default() -> Self {
        Position::Cursor(String::new())
    }
}

impl Position {
    /// Writes the position as text (the `perapera-position` header): the cursor, or
    /// `PATH:OFFSET`.
    pub fn render_into(&self, out: &mut String) {
        use std::fmt::Write;
        out.clear();
        match self {
            Position::Cursor(c) => out.push_str(c),
            Position::File { file, offset } => {
                let _ = write!(out, "{}:{offset}", file.path);
            }
            Position::Forward(p) => out.push_str(&p.peer),
        }
    }

    /// Approximate heap size.
    pub fn byte_size(&self) -> usize {
        match self {
            Position::Cursor(c) => c.len(),
            Position::File { .. } | Position::Forward(_) => 16,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        self.render_into(&mut s);
        f.write_str(&s)
    }
}
