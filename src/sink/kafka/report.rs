//! What librdkafka reports, and what it means for the pipeline: delivery reports become
//! [`Ack`]s (failures classified), client errors and librdkafka's log lines become rate-limited
//! log lines that say what to check.

use std::sync::{Arc, Mutex};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;
use tokio::sync::mpsc;

use crate::ops::ratelimit::RateLimit;
use crate::sink::{Ack, DeliveryError};

/// The delivery-report context.
pub struct Context {
    pub acks: mpsc::UnboundedSender<Ack>,
    pub limit: Mutex<RateLimit>,
}

impl Context {
    /// Hands one outcome to the pipeline (which owns the receiver for the producer's life).
    pub fn ack(&self, id: u64, result: Result<(), DeliveryError>) {
        let _ = self.acks.send(Ack { id, result });
    }

    fn allow(&self, cause: &str) -> Option<u64> {
        self.limit.lock().ok().and_then(|mut l| l.allow(cause))
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "FAIL" {
            // A broker connection failed: the error callback reports the same, with advice.
            tracing::debug!(facility = fac, "librdkafka: {message}");
            return;
        }
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
        let code = error.rdkafka_error_code();
        let cause = format!("{code:?}");
        let Some(suppressed) = self.allow(&cause) else {
            return;
        };
        match misconfigured(code) {
            Some(hint) => tracing::error!(error = %error, suppressed,
                "{hint}; entries stay in flight and are retried, nothing is dropped: {reason}"),
            None => tracing::warn!(error = %error, suppressed,
                "Kafka client error (entries stay in flight and are retried): {reason}"),
        }
    }

    fn stats_raw(&self, _statistics: &[u8]) {}
}

/// What the operator must fix when the client cannot get through for a reason of the
/// configuration (credentials, TLS), rather than an unreachable broker.
fn misconfigured(code: Option<RDKafkaErrorCode>) -> Option<&'static str> {
    use RDKafkaErrorCode as C;
    match code? {
        C::Authentication | C::SaslAuthenticationFailed => Some(
            "The Kafka broker refused perapera's credentials: check \"sasl.mechanisms\", \
             \"sasl.username\" and \"sasl.password\" in [sink.librdkafka] against the user on \
             the broker",
        ),
        C::SSL => Some(
            "TLS with the broker failed: check \"ssl.ca.location\" in [sink.librdkafka] (the \
             CA that signed the broker's certificate) and that the certificate names the host \
             in `brokers`",
        ),
        _ => None,
    }
}

/// What travels with a message through librdkafka: the pipeline's id, and a reference to the
/// record's bytes, which librdkafka reads without copying them. Dropped (releasing the bytes)
/// once the delivery report was handled: librdkafka no longer reads the payload then.
pub struct Delivery {
    pub id: u64,
    pub _payload: Arc<Vec<u8>>,
}

impl ProducerContext for Context {
    type DeliveryOpaque = Box<Delivery>;

    /// Reports served by rdkafka's own poll (while a producer is flushed or dropped; the
    /// [`Poller`](super::poller::Poller) serves the others).
    fn delivery(&self, result: &DeliveryResult<'_>, delivery: Box<Delivery>) {
        let result = match result {
            Ok(_) => Ok(()),
            Err((e, message)) => Err(classify(e, message.topic())),
        };
        self.ack(delivery.id, result);
    }
}

/// Maps a librdkafka error for a message to `topic` to what the pipeline should do about it.
pub fn classify(e: &KafkaError, topic: &str) -> DeliveryError {
    use RDKafkaErrorCode as C;
    let text = e.to_string();
    match e.rdkafka_error_code() {
        Some(
            C::UnknownTopic
            | C::UnknownTopicOrPartition
            | C::TopicAuthorizationFailed
            | C::InvalidTopic,
        ) => DeliveryError::Topic {
            topic: topic.to_string(),
            reason: text,
            bound: false,
        },
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge) => {
            DeliveryError::TooLarge(text)
        }
        Some(C::InvalidRecord | C::InvalidMessage) => DeliveryError::Invalid(text),
        Some(C::InvalidTimestamp) => DeliveryError::BadTimestamp(text),
        Some(C::Fatal) => DeliveryError::Fatal(text),
        _ => DeliveryError::Retriable(text),
    }
}
