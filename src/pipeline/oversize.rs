//! The oversize policy: an entry the sink can never accept as it is (too large, or invalid
//! after retries) is truncated, dead-lettered or dropped, counted by [`Verdict`], and never
//! stalls the watermark.

use std::time::Duration;

use super::retry::BACKOFF_MIN;
use super::window::Done;
use super::Pipeline;
use crate::config::Oversize;
use crate::record::{Position, Record, Value};

/// An entry rejected as invalid is retried as is this many times (a batch-level rejection hits
/// innocent neighbours too) before the oversize policy applies.
const INVALID_RETRIES: u8 = 3;

/// Truncation attempts before a too-large entry is dropped.
const TRUNCATE_ATTEMPTS: u8 = 6;

/// Shrinks `record` until its encoding fits `target` bytes, marking `_PERAPERA_TRUNCATED`
/// with the original encoded size. False if it cannot be made to fit.
fn truncate_to(record: &mut Record, target: usize) -> bool {
    let original = record.msgpack().len();
    if record.get("_PERAPERA_TRUNCATED").is_none() {
        record.set("_PERAPERA_TRUNCATED", Value::UInt(original as u64));
    }
    for _ in 0..32 {
        let size = record.msgpack().len();
        if size <= target {
            return true;
        }
        if !record.cut_largest(size - target) {
            return false;
        }
    }
    false
}

/// What goes to the dead-letter topic instead of an entry the sink rejected: every field up
/// to 1 KiB (the metadata), larger ones replaced by their size, plus why and where.
fn dead_letter_stub(record: &Record, position: &Position, original: usize, reason: &str) -> Record {
    const KEEP: usize = 1024;
    let mut fields: Vec<(String, Value)> = record
        .fields()
        .into_iter()
        .map(|(n, v)| {
            if v.len() <= KEEP {
                (n, v)
            } else {
                let omitted = Value::Str(format!("<{} bytes omitted>", v.len()));
                (n, omitted)
            }
        })
        .collect();
    fields.push(("_PERAPERA_REJECTED".into(), Value::Str(reason.to_string())));
    fields.push((
        "_PERAPERA_ORIGINAL_BYTES".into(),
        Value::UInt(original as u64),
    ));
    fields.push((
        "_PERAPERA_POSITION".into(),
        Value::Str(position.to_string()),
    ));
    Record::from_fields(&fields, record.time_ns, Position::default())
}

/// What the oversize policy did with an entry the sink cannot accept as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Cut to fit; sent again.
    Truncated,
    /// Replaced by its stub for the dead-letter topic; sent again.
    DeadLettered,
    /// Too large even cut, or under `oversize = "drop"`.
    DroppedTooLarge,
    /// Rejected as invalid after its retries.
    DroppedInvalid,
    /// Its dead-letter stub was rejected too.
    DroppedDeadLetterRejected,
}

impl Verdict {
    /// The `reason` label of `perapera_entries_failed_total` (and the log's rate-limit key).
    fn label(self) -> &'static str {
        match self {
            Verdict::Truncated => "truncated",
            Verdict::DeadLettered => "dead_lettered",
            Verdict::DroppedTooLarge => "dropped_too_large",
            Verdict::DroppedInvalid => "dropped_invalid",
            Verdict::DroppedDeadLetterRejected => "dropped_dead_letter_rejected",
        }
    }

    /// Whether the entry is gone (its place in the window is done without an ack).
    fn drops(self) -> bool {
        !matches!(self, Verdict::Truncated | Verdict::DeadLettered)
    }
}

impl Pipeline {
    /// The oversize policy: an entry the sink can never accept must not stall the watermark.
    pub(super) fn reject(&mut self, src: usize, seq: u64, too_large: bool, reason: String) {
        let limit = self.sink.payload_limit();
        let oversize = self.oversize.clone();
        let source = &mut self.sources[src];
        let Some((slot, false)) = source.window.get_mut(seq) else {
            return;
        };
        slot.rejections = slot.rejections.saturating_add(1);
        if !too_large && slot.rejections < INVALID_RETRIES {
            if let Some(suppressed) = self.limit.allow("invalid_retry") {
                tracing::warn!(source = %source.name, position = %slot.position, %reason, suppressed,
                    "Sink rejected entries as invalid (whole batches are rejected); retrying them as is before the oversize policy applies");
            }
            self.schedule_retry(src, seq, BACKOFF_MIN);
            return;
        }
        let verdict = match (&oversize, slot.record.as_mut()) {
            (_, None) => return,
            (_, Some(_)) if slot.dead_letter => Verdict::DroppedDeadLetterRejected,
            (Oversize::Drop, _) if too_large => Verdict::DroppedTooLarge,
            (Oversize::Drop, _) => Verdict::DroppedInvalid,
            (Oversize::Truncate, Some(_)) if !too_large => Verdict::DroppedInvalid,
            (Oversize::Truncate, Some(_)) if slot.rejections > TRUNCATE_ATTEMPTS => {
                Verdict::DroppedTooLarge
            }
            (Oversize::Truncate, Some(record)) => {
                // First rejection: fit the client's limit. Later ones came from the broker
                // (its topic limit is lower than ours): halve until it fits.
                let target = match (slot.rejections, limit) {
                    (1, Some(l)) if !slot.alone => l,
                    _ => record.msgpack().len() / 2,
                };
                if truncate_to(record, target) {
                    Verdict::Truncated
                } else {
                    Verdict::DroppedTooLarge
                }
            }
            (Oversize::DeadLetter(_), Some(record)) => {
                let original = record.msgpack().len();
                *record = dead_letter_stub(record, &slot.position, original, &reason);
                slot.dead_letter = true;
                Verdict::DeadLettered
            }
        };
        let name = source.name.clone();
        let position = slot.position.clone();
        let action = verdict.label();
        self.stats.failed(&name, action);
        if verdict.drops() {
            if let Some(suppressed) = self.limit.allow(action) {
                tracing::error!(source = %name, %position, %reason, why = action, suppressed,
                    "Dropping an entry the sink can never accept (oversize policy); it is counted in perapera_entries_failed_total");
            }
            self.finish(src, seq, Done::Dropped);
        } else {
            if let Some(suppressed) = self.limit.allow(action) {
                tracing::warn!(source = %name, %position, %reason, action, suppressed,
                    "Sink cannot accept an entry as is; sending it {action} per the oversize policy");
            }
            self.schedule_retry(src, seq, Duration::ZERO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_fits_the_target_keeps_small_fields_and_marks_the_original_size() {
        let mut r = Record::from_fields(
            &[
                ("MESSAGE".into(), Value::Str("ü".repeat(300_000))),
                ("_HOSTNAME".into(), Value::Str("h".into())),
            ],
            0,
            Position::default(),
        );
        let original = r.msgpack().len();
        assert!(truncate_to(&mut r, 100_000));
        assert!(r.msgpack().len() <= 100_000);
        assert_eq!(
            r.get("_PERAPERA_TRUNCATED"),
            Some(Value::UInt(original as u64))
        );
        assert_eq!(r.get("_HOSTNAME"), Some(Value::Str("h".into())));
        let mut tiny = Record::from_fields(&[("N".into(), Value::UInt(1))], 0, Position::default());
        assert!(!truncate_to(&mut tiny, 3));
    }

    #[test]
    fn a_dead_letter_stub_keeps_the_metadata_and_says_what_was_omitted_and_where() {
        let r = Record::from_fields(
            &[
                ("MESSAGE".into(), Value::Str("x".repeat(5000))),
                ("_SYSTEMD_UNIT".into(), Value::Str("a.service".into())),
            ],
            5,
            Position::default(),
        );
        let s = dead_letter_stub(&r, &Position::Cursor("s=1;i=2".into()), 5050, "too large");
        assert_eq!(s.get("_SYSTEMD_UNIT"), r.get("_SYSTEMD_UNIT"));
        assert_eq!(
            s.get("MESSAGE"),
            Some(Value::Str("<5000 bytes omitted>".into()))
        );
        assert_eq!(
            s.get("_PERAPERA_POSITION"),
            Some(Value::Str("s=1;i=2".into()))
        );
        assert_eq!(s.get("_PERAPERA_ORIGINAL_BYTES"), Some(Value::UInt(5050)));
    }
}
