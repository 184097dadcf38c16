//! Sources: where entries come from. Each source reads in order, tags every entry with its
//! position, and hands owned batches to the pipeline over a bounded channel; it never decides
//! what is "done" (the pipeline's watermark does).
//!
//! [`journal`] is the journal source. [`format`], [`lines`] and [`identity`] are the parts of
//! the files source that are already built (line formats, offset-tracking line splitting, file
//! identity); the tailer that uses them is not wired in yet.

pub mod format;
pub mod identity;
pub mod journal;
pub mod lines;

use crate::record::Record;

/// A batch of entries from one source, in read order.
#[derive(Debug)]
pub struct Batch {
    /// Index of the source in the configuration.
    pub source: usize,
    /// The entries.
    pub records: Vec<Record>,
}

/// A source that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Opening or positioning failed.
    #[error("source {source_name:?}: {reason}")]
    Open {
        /// The source's name.
        source_name: String,
        /// Why, and what to do.
        reason: String,
    },
    /// The checkpoint holds a cursor the journal rejects.
    #[error(
        "source {source_name:?}: the journal rejects the checkpointed cursor {cursor:?} \
         ({reason}); the checkpoint was left untouched. Run `perapera cursor reset \
         {source_name}` to start this source over at its start_at position"
    )]
    BadCursor {
        /// The source's name.
        source_name: String,
        /// The cursor.
        cursor: String,
        /// sd-journal's error.
        reason: String,
    },
}
