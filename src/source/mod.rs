//! Sources: where entries come from. Each source reads in order, tags every entry with its
//! position, and hands owned batches to the pipeline over a bounded channel; it never decides
//! what is "done" (the pipeline's watermark does).
//!
//! [`journal`] is the journal source; [`files`] the files source, built from [`format`](mod@format)
//! (line formats) and [`lines`] (offset-tracking line splitting).

pub mod files;
pub mod format;
pub mod forward;
pub mod journal;
pub mod lines;
pub mod walk;

use std::sync::Arc;

pub use crate::checkpoint::FileEvent;
use crate::ops::metrics::Stats;
use crate::record::Record;

/// What every source's reader is given, whatever its kind.
#[derive(Debug, Clone)]
pub struct ReaderContext {
    /// Index of the source in the configuration (tags its batches).
    pub index: usize,
    /// The source's name.
    pub name: String,
    /// At most this many entries per batch.
    pub batch_entries: usize,
    /// A batch is handed over once it holds about this many bytes.
    pub batch_bytes: usize,
    /// Counters.
    pub stats: Arc<Stats>,
}

/// A batch of entries from one source, in read order.
#[derive(Debug, Default)]
pub struct Batch {
    /// Index of the source in the configuration.
    pub source: usize,
    /// What a files source learned about its files since the last batch (applied before
    /// `records`).
    pub events: Vec<FileEvent>,
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
