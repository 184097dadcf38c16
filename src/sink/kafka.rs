//! The Kafka sink: librdkafka (bundled) through `rdkafka`'s `ThreadedProducer`.
//!
//! Every message carries the pipeline's id as its delivery opaque; the delivery callback (on
//! librdkafka's poll thread) turns the report into an [`Ack`] and nothing else. A callback per
//! message measured twice the throughput of one future per message against the mock cluster.
//!
//! Failures are classified here and handled by the pipeline: transient ones are re-produced
//! (librdkafka's `MessageTimedOut` is final for that message inside librdkafka, not for us),
//! too-large and invalid ones go to the oversize policy, a rejected timestamp is re-sent with
//! the produce time, and a fatal idempotence error means a new producer.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tokio::sync::mpsc;

use super::{Ack, DeliveryError, Outgoing, SendError};
use crate::config::KafkaConfig;
use crate::ops::ratelimit::RateLimit;
use crate::record::sanitize_topic;

/// Bytes reserved in `message.max.bytes` for librdkafka's per-message overhead, the key and
/// the headers.
const OVERHEAD: usize = 512;

/// The delivery-report context.
struct Context {
    acks: mpsc::UnboundedSender<Ack>,
    limit: Mutex<RateLimit>,
}

impl Context {
    fn allow(&self, cause: &str) -> Option<u64> {
        self.limit.lock().ok().and_then(|mut l| l.allow(cause))
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let Some(suppressed) = self.allow(fac) else {
            return;
        };
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(facility = fac, suppressed, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(facility = fac, suppressed, "librdkafka: {message}")
            }
            _ => tracing::debug!(facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let cause = format!("{:?}", error.rdkafka_error_code());
        if let Some(suppressed) = self.allow(&cause) {
            tracing::warn!(error = %error, suppressed,
                "Kafka client error (entries stay in flight and are retried): {reason}");
        }
    }

    fn stats_raw(&self, _statistics: &[u8]) {}
}

impl ProducerContext for Context {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, id: usize) {
        let result = match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(classify(e)),
        };
        // The pipeline owns the receiver for the producer's whole life.
        let _ = self.acks.send(Ack {
            id: id as u64,
            result,
        });
    }
}

/// Maps a librdkafka error to what the pipeline should do about it.
pub fn classify(e: &KafkaError) -> DeliveryError {
    use RDKafkaErrorCode as C;
    let text = e.to_string();
    match e.rdkafka_error_code() {
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge) => {
            DeliveryError::TooLarge(text)
        }
        Some(C::InvalidRecord | C::InvalidMessage) => DeliveryError::Invalid(text),
        Some(C::InvalidTimestamp) => DeliveryError::BadTimestamp(text),
        Some(C::Fatal) => DeliveryError::Fatal(text),
        _ => DeliveryError::Retriable(text),
    }
}

/// Produces entries to Kafka.
pub struct KafkaSink {
    config: KafkaConfig,
    acks: mpsc::UnboundedSender<Ack>,
    producer: ThreadedProducer<Context>,
    topic: String,
    position: String,
    key: String,
}

fn create(
    config: &KafkaConfig,
    acks: &mpsc::UnboundedSender<Ack>,
) -> Result<ThreadedProducer<Context>, String> {
    let mut cc = ClientConfig::new();
    for (k, v) in &config.librdkafka {
        cc.set(k, v);
    }
    cc.set_log_level(RDKafkaLogLevel::Warning);
    let context = Context {
        acks: acks.clone(),
        limit: Mutex::new(RateLimit::new(Duration::from_secs(10))),
    };
    cc.create_with_context(context)
        .map_err(|e| format!("cannot create the Kafka producer: {e}"))
}

impl KafkaSink {
    /// Creates the producer (no network round trip: librdkafka connects in the background).
    pub fn new(config: KafkaConfig, acks: mpsc::UnboundedSender<Ack>) -> Result<KafkaSink, String> {
        let producer = create(&config, &acks)?;
        Ok(KafkaSink {
            config,
            acks,
            producer,
            topic: String::new(),
            position: String::new(),
            key: String::new(),
        })
    }

    /// Largest msgpack payload that fits `message.max.bytes` with room for key and headers.
    pub fn payload_limit(&self) -> usize {
        self.config
            .message_max_bytes
            .saturating_sub(OVERHEAD)
            .max(1024)
    }

    /// Enqueues one entry; never blocks.
    pub fn send(&mut self, out: Outgoing<'_>) -> Result<(), SendError> {
        let payload = out.record.msgpack();
        if payload.len() > self.payload_limit() {
            return Err(SendError::Failed(DeliveryError::TooLarge(format!(
                "{} bytes encoded, message.max.bytes is {}",
                payload.len(),
                self.config.message_max_bytes
            ))));
        }
        match out.dead_letter {
            Some(t) => {
                self.topic.clear();
                self.topic.push_str(t);
            }
            None => {
                self.config.topic.render_into(out.record, &mut self.topic);
                sanitize_topic(&mut self.topic);
            }
        }
        let timestamp_ms = if out.timestamp_now {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        } else {
            (out.record.time_ns / 1_000_000) as i64
        };
        out.position.render_into(&mut self.position);
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: "perapera-source",
                value: Some(out.source),
            })
            .insert(Header {
                key: "perapera-position",
                value: Some(&self.position),
            })
            .insert(Header {
                key: "content-type",
                value: Some("application/msgpack"),
            });
        let mut record = BaseRecord::with_opaque_to(&self.topic, out.id as usize)
            .payload(payload)
            .timestamp(timestamp_ms)
            .headers(headers);
        if let Some(k) = &self.config.key {
            k.render_into(out.record, &mut self.key);
            record = record.key(self.key.as_bytes());
        }
        match self.producer.send(record) {
            Ok(()) => Ok(()),
            Err((e, _)) => match e.rdkafka_error_code() {
                Some(RDKafkaErrorCode::QueueFull) => Err(SendError::Full),
                _ => Err(SendError::Failed(classify(&e))),
            },
        }
    }

    /// Replaces the producer after a fatal error. The old one is dropped, which purges what it
    /// still held; those entries are re-sent by the pipeline.
    pub fn recreate(&mut self) -> Result<(), String> {
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            tracing::error!(?code, reason, "Kafka producer hit a fatal error; recreating it and re-sending every unacknowledged entry");
        }
        let fresh = create(&self.config, &self.acks)?;
        let old = std::mem::replace(&mut self.producer, fresh);
        drop(old);
        Ok(())
    }

    /// Flushes (waits for delivery reports) before the producer is dropped: dropping purges.
    pub fn close(self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, in_flight = self.producer.in_flight_count(),
                "Kafka flush did not complete; unacknowledged entries will be re-sent on restart");
        }
    }
}
