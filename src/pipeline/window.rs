//! The window: one slot per entry between read and acknowledgement, per source, and what
//! the watermark's advance folds into the checkpoint. An id packs (source, attempt,
//! sequence) so that a report finds its slot and a stale one is recognised.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Pipeline;
use crate::checkpoint::{Checkpoint, FileOffsets, SourceCheckpoint, Watermark};
use crate::clock::unix_ms;
use crate::config::StartAt;
use crate::record::{Position, Record};
use crate::source::Batch;

pub(super) const SEQ_BITS: u32 = 40;

pub(super) const ATTEMPT_BITS: u32 = 16;

pub(super) fn pack(source: usize, attempt: u16, seq: u64) -> u64 {
    ((source as u64) << (SEQ_BITS + ATTEMPT_BITS))
        | (u64::from(attempt) << SEQ_BITS)
        | (seq & ((1 << SEQ_BITS) - 1))
}

pub(super) fn unpack(id: u64) -> (usize, u16, u64) {
    (
        (id >> (SEQ_BITS + ATTEMPT_BITS)) as usize,
        (id >> SEQ_BITS) as u16,
        id & ((1 << SEQ_BITS) - 1),
    )
}

/// An entry between read and acknowledgement.
pub(super) struct Slot {
    pub(super) position: Position,
    pub(super) entry_time_us: u64,
    /// `None` once done (acknowledged or finally handled).
    pub(super) record: Option<Record>,
    pub(super) bytes: usize,
    pub(super) attempt: u16,
    pub(super) rejections: u8,
    pub(super) dead_letter: bool,
    pub(super) timestamp_now: bool,
    /// Sent in a batch of its own: the broker refused a batch holding it as too large.
    pub(super) alone: bool,
    /// Sent to the fallback topic instead of this one (its topic was unknown or over the bound).
    pub(super) meant_for: Option<Box<str>>,
    /// The topic it waits for (policy "wait").
    pub(super) waits_for: Option<Arc<str>>,
}

pub(super) struct SourceState {
    pub(super) name: String,
    pub(super) window: Watermark<Slot>,
    /// Bytes of this source's entries not yet acknowledged.
    pub(super) bytes: usize,
    pub(super) acked: Acked,
    /// `acked` changed since the checkpoint was last written.
    pub(super) dirty: bool,
}

/// What a source's checkpoint will say.
pub(super) enum Acked {
    /// A journal source.
    Journal {
        /// Last acknowledged (cursor, entry time), if any.
        acked: Option<(String, u64)>,
        /// The entry time in the checkpoint loaded at start (for the lag until an ack).
        saved_entry_us: Option<u64>,
        /// Where reading starts without a checkpoint (for the lag).
        start_at: StartAt,
    },
    /// Per file identity.
    Files(FileOffsets),
    /// Nothing to persist: a done entry counts towards its request's ack.
    Forward,
}

impl Acked {
    /// Folds the acknowledged slot in (slots arrive in read order).
    pub(super) fn fold(&mut self, slot: Slot, now: u64) {
        match (self, slot.position) {
            (Acked::Journal { acked, .. }, Position::Cursor(cursor)) => {
                *acked = Some((cursor, slot.entry_time_us));
            }
            (Acked::Files(files), Position::File { file, offset }) => {
                files.acked(&file, offset, now);
            }
            // Forward entries count towards their request's ack when done (see `finish`): the
            // requests of one source are independent, and one waiting entry must not hold back
            // the acks of every request read after it.
            _ => {}
        }
    }

    /// The checkpoint entry.
    pub(super) fn checkpoint(&mut self, now: u64) -> Option<SourceCheckpoint> {
        match self {
            Acked::Journal { acked: None, .. } => None,
            Acked::Journal {
                acked: Some((cursor, time)),
                ..
            } => Some(SourceCheckpoint::Journal {
                cursor: cursor.clone(),
                entry_time_us: *time,
                acked_at_ms: now,
            }),
            Acked::Files(files) => Some(SourceCheckpoint::Files {
                files: files.checkpoint(now),
            }),
            Acked::Forward => None,
        }
    }
}

/// How a slot's entry was done with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Done {
    /// The sink acknowledged it.
    Acked,
    /// The oversize policy dropped it (counted apart).
    Dropped,
}

impl Pipeline {
    /// Whether source `i` may add a batch of `batch` (entries, bytes) without holding more
    /// than its `share` of the window.
    pub(super) fn admits(&self, i: usize, share: (usize, usize), batch: (usize, usize)) -> bool {
        self.sources
            .get(i)
            .is_some_and(|s| s.window.len() + batch.0 <= share.0 && s.bytes + batch.1 <= share.1)
    }

    /// Bytes of entries not yet acknowledged, all sources.
    pub(super) fn in_flight_bytes(&self) -> usize {
        self.sources.iter().map(|s| s.bytes).sum()
    }

    /// Entries not yet acknowledged (or finally handled): the slots behind the watermark.
    pub(super) fn unacked(&self) -> usize {
        self.in_flight - self.unpersisted
    }

    pub(super) fn submit(&mut self, batch: Batch) {
        if !batch.events.is_empty() {
            let now = unix_ms();
            if let Some(source) = self.sources.get_mut(batch.source) {
                if let Acked::Files(files) = &mut source.acked {
                    for event in batch.events {
                        source.dirty |= files.on_event(event, now);
                    }
                }
            }
        }
        for mut record in batch.records {
            let bytes = record.byte_size();
            let position = std::mem::take(&mut record.position);
            let slot = Slot {
                entry_time_us: record.time_ns / 1000,
                position,
                record: Some(record),
                bytes,
                attempt: 0,
                rejections: 0,
                dead_letter: false,
                timestamp_now: false,
                alone: false,
                meant_for: None,
                waits_for: None,
            };
            let Some(source) = self.sources.get_mut(batch.source) else {
                continue;
            };
            let seq = source.window.push(slot);
            self.in_flight += 1;
            source.bytes += bytes;
            self.send(batch.source, seq);
        }
        self.sink.flush_burst();
    }

    /// Marks a slot done (acknowledged, or dropped by policy) and frees its window share.
    pub(super) fn finish(&mut self, src: usize, seq: u64, how: Done) {
        let source = &mut self.sources[src];
        let bytes = match source.window.get_mut(seq) {
            Some((slot, false)) => {
                slot.record = None;
                if let Some(w) = slot.waits_for.take() {
                    self.topic_waits.done(&w);
                }
                if let Position::Forward(pending) = &slot.position {
                    match &mut self.txn {
                        // Exactly-once: the sender hears of it once the transaction committed.
                        Some(t) => t.owe(pending.clone()),
                        None => pending.entry_done(),
                    }
                }
                slot.bytes
            }
            _ => return,
        };
        if source.window.complete(seq) {
            // The slot keeps its window place until a written checkpoint covers it: until then
            // a restart would send it again, and the window is the duplicate bound.
            source.bytes = source.bytes.saturating_sub(bytes);
            if how == Done::Acked {
                self.stats.acked(src, 1);
            }
        }
    }

    pub(super) fn advance(&mut self) {
        let mut now = None;
        for source in &mut self.sources {
            let acked = &mut source.acked;
            let now = *now.get_or_insert_with(unix_ms);
            let popped = source.window.advance_each(|slot| acked.fold(slot, now));
            if matches!(acked, Acked::Forward) {
                // Done once acknowledged: the sender holds the data, nothing to persist.
                self.in_flight -= popped;
            } else if popped > 0 {
                self.unpersisted += popped;
                source.dirty = true;
            }
        }
    }

    /// Folds the positions of the sources that moved into the checkpoint; false when none
    /// moved.
    pub(super) fn update_checkpoint(&mut self) -> bool {
        if !self.sources.iter().any(|s| s.dirty) {
            return false;
        }
        let now = unix_ms();
        for source in &mut self.sources {
            if source.dirty {
                if let Some(entry) = source.acked.checkpoint(now) {
                    self.checkpoint.sources.insert(source.name.clone(), entry);
                }
            }
        }
        self.checkpoint.version = Checkpoint::VERSION;
        true
    }

    /// The checkpoint now covers every entry the watermark passed: their window places free.
    pub(super) fn persisted(&mut self) {
        self.sources.iter_mut().for_each(|s| s.dirty = false);
        self.in_flight -= self.unpersisted;
        self.unpersisted = 0;
    }

    pub(super) fn write_checkpoint(&mut self) {
        if !self.update_checkpoint() {
            return;
        }
        match self.state.store(&self.checkpoint) {
            Ok(()) => {
                self.stats.checkpoint_writes.fetch_add(1, Ordering::Relaxed);
                self.persisted();
            }
            Err(e) => {
                self.stats.checkpoint_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.limit.allow("checkpoint") {
                    tracing::error!(error = %e, suppressed,
                        "Cannot write the checkpoint; the previous one stays valid and writing is \
                         retried. Reading pauses once the in-flight window is full; nothing is lost");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_source_attempt_and_sequence() {
        for (s, a, q) in [(0, 0, 0), (3, 65535, (1 << 40) - 1), (255, 7, 123_456)] {
            assert_eq!(unpack(pack(s, a, q)), (s, a, q));
        }
    }
}
