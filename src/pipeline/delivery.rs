//! Deliveries: sending a slot (with a new attempt number), the sink's reports, failures by
//! kind, re-sends when due, and a new sink client after a fatal error.

use std::time::Duration;

use tokio::time::Instant;

use super::retry::QUEUE_FULL_DELAY;
use super::window::{pack, unpack, Done};
use super::Pipeline;
use crate::config::Oversize;
use crate::sink::{Ack, DeliveryError, Outgoing, SendError};

impl Pipeline {
    /// Sends (or re-sends) the slot with a new attempt number.
    pub(super) fn send(&mut self, src: usize, seq: u64) {
        let Some(source) = self.sources.get_mut(src) else {
            return;
        };
        let Some((slot, false)) = source.window.get_mut(seq) else {
            return;
        };
        let Some(record) = &slot.record else {
            return;
        };
        slot.attempt = slot.attempt.wrapping_add(1);
        let topic = match (&self.oversize, slot.dead_letter) {
            (Oversize::DeadLetter(t), true) => Some(t.as_str()),
            _ if slot.meant_for.is_some() => self.topic_fallback.as_deref(),
            _ => None,
        };
        let out = Outgoing {
            id: pack(src, slot.attempt, seq),
            source: &source.name,
            position: &slot.position,
            record,
            topic,
            meant_for: slot.meant_for.as_deref(),
            timestamp_now: slot.timestamp_now,
            alone: slot.alone,
        };
        match self.sink.send(out) {
            Ok(()) => {
                if let Some(t) = &mut self.txn {
                    t.sent = true;
                }
            }
            Err(SendError::Full) => self.schedule_retry(src, seq, QUEUE_FULL_DELAY),
            Err(SendError::Failed(e)) => self.on_failure(src, seq, e),
        }
    }

    pub(super) fn on_ack(&mut self, ack: Ack) {
        let (src, attempt, seq) = unpack(ack.id);
        let Some(source) = self.sources.get_mut(src) else {
            return;
        };
        let Some((slot, false)) = source.window.get_mut(seq) else {
            return; // already done: a late report of an earlier attempt
        };
        match ack.result {
            Ok(()) => {
                self.backoff.reset();
                self.progressed = true;
                self.finish(src, seq, Done::Acked);
            }
            Err(_) if slot.attempt != attempt => {} // superseded by a re-send
            // Exactly-once: a failed delivery fails the transaction it was in.
            Err(e) if self.txn.is_some() => {
                let reason = format!(
                    "an entry of source {:?} was not delivered: {e:?}",
                    source.name
                );
                self.stats.sink_failure("transaction", &reason);
                if let Some(t) = &mut self.txn {
                    t.fail(crate::sink::TxnError::Abortable(reason));
                }
            }
            Err(DeliveryError::TooLarge(reason)) if !slot.alone => {
                // Reported after sending (only Kafka does): the broker refused the batch it was
                // in, and any entry of it may be the large one. Once alone, the policy applies.
                slot.alone = true;
                self.stats.sink_failure("batch_too_large", &reason);
                if let Some(suppressed) = self.limit.allow("batch_too_large") {
                    tracing::warn!(source = %source.name, position = %slot.position, %reason, suppressed,
                        "Broker refused a batch as too large (is the topic's max.message.bytes below [sink.librdkafka] message.max.bytes?); re-sending its entries one per batch, so that the oversize policy meets only an entry too large on its own");
                }
                self.schedule_retry(src, seq, Duration::ZERO);
            }
            Err(e) => self.on_failure(src, seq, e),
        }
    }

    pub(super) fn on_failure(&mut self, src: usize, seq: u64, error: DeliveryError) {
        match error {
            DeliveryError::Retriable(reason) => {
                self.stats.sink_failure("retriable", &reason);
                if let Some(suppressed) = self.limit.allow("retriable") {
                    tracing::warn!(%reason, suppressed, retry_in = ?self.backoff.current(),
                        "Sink did not acknowledge entries; they stay in flight and will be re-sent");
                }
                let delay = self.backoff.failure(self.retry.next().is_none());
                self.schedule_retry(src, seq, delay);
            }
            DeliveryError::BadTimestamp(reason) => {
                self.stats.sink_failure("bad_timestamp", &reason);
                if let Some((slot, _)) = self.sources[src].window.get_mut(seq) {
                    slot.timestamp_now = true;
                }
                if let Some(suppressed) = self.limit.allow("timestamp") {
                    tracing::warn!(%reason, suppressed,
                        "Broker rejected an entry's timestamp (clock skew?); re-sending with the \
                         produce time, the original time stays in the payload");
                }
                self.schedule_retry(src, seq, Duration::ZERO);
            }
            DeliveryError::Fatal(reason) => {
                self.stats.sink_failure("fatal", &reason);
                tracing::error!(%reason, "Sink client failed fatally; it will be recreated");
                self.fatal = true;
            }
            DeliveryError::Closed(reason) => {
                // One message for the whole burst: the caller stops.
                if self.closed.is_none() {
                    self.stats.sink_failure("closed", &reason);
                    self.closed = Some(reason);
                }
            }
            DeliveryError::Topic {
                topic,
                reason,
                bound,
            } => self.on_topic(src, seq, &topic, reason, bound),
            DeliveryError::TooLarge(reason) => self.reject(src, seq, true, reason),
            DeliveryError::Invalid(reason) => self.reject(src, seq, false, reason),
        }
    }

    pub(super) fn schedule_retry(&mut self, src: usize, seq: u64, delay: Duration) {
        self.retry.push(Instant::now() + delay, src, seq);
    }

    /// Sends the entries whose retry is due, in read order, each once.
    pub(super) fn resend_due(&mut self) {
        for (src, seq) in self.retry.take_due(Instant::now()) {
            self.send(src, seq);
        }
        self.sink.flush_burst();
    }

    pub(super) fn recreate_sink(&mut self) -> Result<(), String> {
        self.sink.recreate()?;
        self.retry.clear();
        let pending: Vec<(usize, u64)> = self
            .sources
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.window.pending().map(move |seq| (i, seq)))
            .collect();
        tracing::warn!(
            entries = pending.len(),
            "Re-sending every unacknowledged entry on the new sink client"
        );
        for (src, seq) in pending {
            self.send(src, seq);
        }
        self.sink.flush_burst();
        Ok(())
    }
}
