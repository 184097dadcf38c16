//! The Kafka sink: librdkafka (bundled) through `rdkafka`'s `BaseProducer`, served by
//! a `poller::Poller` thread of ours.
//!
//! Every message carries a `Delivery` as its delivery opaque: the pipeline's id and a
//! reference to the record's bytes, which librdkafka reads in place (no copy). The delivery
//! report (on the poller thread) turns the report into an [`Ack`] and releases the
//! reference. Messages go out through `rd_kafka_produceva` on cached topic handles. A
//! callback per message, not a future per message: the future cost more than the send.
//!
//! Failures are classified here and handled by the pipeline: transient ones are re-produced
//! (librdkafka's `MessageTimedOut` is final for that message inside librdkafka, not for us),
//! too-large and invalid ones go to the oversize policy, a rejected timestamp is re-sent with
//! the produce time, and a fatal idempotence error means a new producer.

mod poller;
mod produce;
mod report;
mod topics;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer};
use tokio::sync::mpsc;

use poller::Poller;
use produce::{produce, Message};
pub use report::classify;
use report::Context;
use topics::{Refused, Topics};

use super::{Ack, DeliveryError, Outgoing, SendError};
use crate::config::{KafkaConfig, KafkaHeader, TOPIC_IDLE};
use crate::ops::ratelimit::RateLimit;
use crate::record::sanitize_topic;

/// Bytes reserved in `message.max.bytes` for librdkafka's per-message overhead, the key and
/// the headers.
const OVERHEAD: usize = 512;

/// Produces entries to Kafka.
pub struct KafkaSink {
    config: KafkaConfig,
    acks: mpsc::UnboundedSender<Ack>,
    client: Client,
    /// Sends entries one per batch: those of a batch the broker refused as too large (its
    /// topic's `max.message.bytes` is below ours), so that only an entry that is too large
    /// alone meets the oversize policy. Made on first need.
    alone: Option<Client>,
    topic: String,
    position: String,
    key: String,
}

/// A producer, the thread that serves its reports, and its topic handles.
struct Client {
    /// Declared before `producer`: topic handles are released, and the poller stopped,
    /// before the producer they belong to is destroyed (which purges what it still holds and
    /// serves those reports itself).
    topics: Topics,
    _poller: Poller,
    producer: Arc<BaseProducer<Context>>,
}

impl Client {
    /// `alone`: one message per batch (`batch.num.messages = 1`), no topic bound (its
    /// entries already hold a place in the main client's).
    fn new(
        config: &KafkaConfig,
        acks: &mpsc::UnboundedSender<Ack>,
        alone: bool,
    ) -> Result<Client, String> {
        let producer = Arc::new(create(config, acks, alone)?);
        let poller = Poller::start(&producer)
            .map_err(|e| format!("cannot start the Kafka report thread: {e}"))?;
        let max = if alone { usize::MAX } else { config.max_topics };
        Ok(Client {
            topics: Topics::new(max),
            _poller: poller,
            producer,
        })
    }

    fn flush(&mut self, timeout: Duration) {
        self.topics.clear();
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, in_flight = self.producer.in_flight_count(),
                "Kafka flush did not complete; unacknowledged entries will be re-sent on restart");
        }
    }
}

fn create(
    config: &KafkaConfig,
    acks: &mpsc::UnboundedSender<Ack>,
    alone: bool,
) -> Result<BaseProducer<Context>, String> {
    let mut cc = ClientConfig::new();
    for (k, v) in &config.librdkafka {
        cc.set(k, v);
    }
    if alone {
        cc.set("batch.num.messages", "1");
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
        let client = Client::new(&config, &acks, false)?;
        Ok(KafkaSink {
            config,
            acks,
            client,
            alone: None,
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
        match out.topic {
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
            crate::clock::unix_ms() as i64
        } else {
            (out.record.time_ns / 1_000_000) as i64
        };
        if self.config.headers.contains(&KafkaHeader::Position) {
            out.position.render_into(&mut self.position);
        }
        let key = match &self.config.key {
            Some(k) => {
                k.render_into(out.record, &mut self.key);
                Some(self.key.as_bytes())
            }
            None => None,
        };
        let client = match (out.alone, &mut self.alone) {
            (false, _) => &mut self.client,
            (true, Some(c)) => c,
            (true, alone @ None) => {
                tracing::info!("Starting a second Kafka producer that sends one entry per batch, for the entries of batches the broker refused as too large");
                let c = Client::new(&self.config, &self.acks, true)
                    .map_err(|e| SendError::Failed(DeliveryError::Retriable(e)))?;
                alone.insert(c)
            }
        };
        let rk = client.producer.client().native_ptr();
        // The dead-letter and fallback topics are the operator's: they come on top of the bound.
        let counted = out.topic.is_none() && !out.alone;
        let topic = match client.topics.get(rk, &self.topic, counted) {
            Ok(t) => t,
            Err(Refused::Bound(n)) => {
                return Err(SendError::Failed(DeliveryError::Topic {
                    topic: self.topic.clone(),
                    reason: format!(
                        "beyond [sink] max_topics: {n} other topics are in use (a topic unused \
                         for {} minutes frees its place)",
                        TOPIC_IDLE.as_secs() / 60
                    ),
                    bound: true,
                }))
            }
            Err(Refused::Handle(e)) => {
                return Err(SendError::Failed(DeliveryError::Retriable(format!(
                    "cannot create topic handle {:?}: {e}",
                    self.topic
                ))))
            }
        };
        let message = Message {
            topic,
            payload: out.record.msgpack_shared(),
            key,
            id: out.id,
            timestamp_ms,
            headers: &self.config.headers,
            source: out.source,
            position: &self.position,
            meant_for: out.meant_for,
        };
        match produce(rk, message) {
            Ok(()) => Ok(()),
            Err(RDKafkaErrorCode::QueueFull) => Err(SendError::Full),
            Err(code) => Err(SendError::Failed(classify(
                &KafkaError::MessageProduction(code),
                &self.topic,
            ))),
        }
    }

    /// Gives up the place of a topic the broker does not have (its entries went elsewhere), so
    /// that topics named by junk cannot crowd real ones out of `max_topics`.
    pub fn forget_topic(&mut self, name: &str) {
        self.client.topics.forget(name);
        if let Some(alone) = &mut self.alone {
            alone.topics.forget(name);
        }
    }

    /// Distinct topics produced to recently (the ones `max_topics` counts, plus the
    /// operator's fallback and dead-letter topics once used).
    pub fn topics_in_use(&self) -> usize {
        self.client.topics.len()
    }

    /// Replaces the producer after a fatal error. The old one is dropped, which purges what it
    /// still held; those entries are re-sent by the pipeline.
    pub fn recreate(&mut self) -> Result<(), String> {
        for client in std::iter::once(&self.client).chain(&self.alone) {
            if let Some((code, reason)) = client.producer.client().fatal_error() {
                tracing::error!(?code, reason, "Kafka producer hit a fatal error; recreating it and re-sending every unacknowledged entry");
            }
        }
        let fresh = Client::new(&self.config, &self.acks, false)?;
        // The old clients are dropped (topic handles first), purging what they held.
        self.alone = None;
        self.client = fresh;
        Ok(())
    }

    /// Flushes (waits for delivery reports) before the producers are dropped: dropping purges.
    pub fn close(mut self, timeout: Duration) {
        self.client.flush(timeout);
        if let Some(alone) = &mut self.alone {
            alone.flush(timeout);
        }
    }
}
