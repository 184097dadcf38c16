//! What the pipeline hands a journal source: where to start and the reader's settings.
//! Shared by the journal source and its stand-in in builds without the `journal` feature.

use crate::config::{JournalConfig, StartAt};
use crate::source::ReaderContext;

/// How the reader positions itself at start.
#[derive(Debug, Clone)]
pub enum Start {
    /// Resume after this cursor (the last acknowledged entry).
    After(String),
    /// No checkpoint: the configured `start_at`.
    Fresh(StartAt),
}

/// How far (µs) the acknowledged position of a journal source is behind its newest entry:
/// from the last acknowledged entry, or, with none yet, from the oldest entry when starting
/// at the head (everything is backlog) and from the newest when starting at the tail.
pub fn lag_us(newest: u64, oldest: u64, acked: Option<u64>, start_at: StartAt) -> u64 {
    let base = match (acked, start_at) {
        (Some(t), _) => t,
        (None, StartAt::Head) => oldest,
        (None, StartAt::Tail) => newest,
    };
    newest.saturating_sub(base)
}

/// Settings for one journal reader thread.
pub struct JournalReader {
    /// Which source, its name, its batch bounds and its counters.
    pub cx: ReaderContext,
    /// The source's config.
    pub config: JournalConfig,
    /// Where to begin.
    pub start: Start,
}
