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

mod committed;
mod poller;
mod produce;
mod report;
mod topics;
mod txn;

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

use super::{Ack, DeliveryError, Outgoing, SendError, TxnError, TxnJob};
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
    /// `delivery = "exactly-once"`.
    txn: Option<Txn>,
}

/// The exactly-once state: where the checkpoint record goes, and whether a transaction is
/// open.
struct Txn {
    checkpoint_topic: String,
    partition: i32,
    /// The transactional id: the checkpoint record's key.
    id: String,
    open: bool,
    /// `transaction.timeout.ms`: bounds every blocking call.
    timeout: Duration,
    /// The committed checkpoint read back at start, until taken.
    committed: Option<Vec<u8>>,
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
    /// With `delivery = "exactly-once"`, [`KafkaSink::open_transactions`] comes next.
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
            txn: None,
        })
    }

    /// Exactly-once: `init_transactions` (which fences an older instance with our
    /// transactional id and aborts its open transaction), then the read of the last committed
    /// checkpoint (see [`KafkaSink::take_committed`]). Blocks; fails while the cluster cannot
    /// be reached, or the checkpoint topic is missing.
    pub fn open_transactions(&mut self) -> Result<(), String> {
        let Some(eo) = &self.config.exactly_once else {
            return Ok(());
        };
        let timeout = self
            .config
            .librdkafka
            .get("transaction.timeout.ms")
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(Duration::from_secs(60), Duration::from_millis);
        txn::init(&self.client.producer, timeout + Duration::from_secs(30)).map_err(|e| {
            format!(
                "cannot initialise Kafka transactions for transactional id {:?}: {e}",
                eo.transactional_id
            )
        })?;
        let (partition, committed) = committed::read(
            &self.config.librdkafka,
            &eo.checkpoint_topic,
            &eo.transactional_id,
            timeout + Duration::from_secs(30),
        )?;
        tracing::info!(transactional_id = %eo.transactional_id, checkpoint_topic = %eo.checkpoint_topic,
            partition, committed = committed.is_some(),
            "Kafka transactions initialised; resuming from the checkpoint committed in Kafka");
        self.txn = Some(Txn {
            checkpoint_topic: eo.checkpoint_topic.clone(),
            partition,
            id: eo.transactional_id.clone(),
            open: false,
            timeout,
            committed,
        });
        Ok(())
    }

    /// Whether this sink delivers exactly once (in transactions).
    pub fn exactly_once(&self) -> bool {
        self.config.exactly_once.is_some()
    }

    /// The checkpoint committed in Kafka, read at start (`Some(None)`: none committed yet;
    /// `None`: not exactly-once, or taken already).
    pub fn take_committed(&mut self) -> Option<Option<Vec<u8>>> {
        self.txn.as_mut().map(|t| t.committed.take())
    }

    /// Puts the checkpoint record into the open transaction (opening one if none is: the
    /// positions may have moved without an entry sent, by a rotation or a dropped entry) and
    /// returns the commit, to run off the async runtime's threads.
    pub fn commit_job(&mut self, checkpoint: Vec<u8>) -> Result<TxnJob, TxnError> {
        let producer = self.client.producer.clone();
        let Some(t) = &mut self.txn else {
            return Err(TxnError::Fatal("not a transactional sink".into()));
        };
        if !t.open {
            txn::begin(&producer)?;
            t.open = true;
        }
        txn::produce_checkpoint(
            &producer,
            &t.checkpoint_topic,
            t.partition,
            &t.id,
            checkpoint,
        )?;
        let timeout = t.timeout;
        Ok(Box::new(move || txn::commit(&producer, timeout)))
    }

    /// A retry of the commit that failed retriably (the same call, as librdkafka asks).
    pub fn retry_commit_job(&mut self) -> TxnJob {
        let producer = self.client.producer.clone();
        let timeout = self
            .txn
            .as_ref()
            .map_or(Duration::from_secs(60), |t| t.timeout);
        Box::new(move || txn::commit(&producer, timeout))
    }

    /// The abort of the open transaction, if one is open.
    pub fn abort_job(&mut self) -> Option<TxnJob> {
        let producer = self.client.producer.clone();
        let t = self.txn.as_mut().filter(|t| t.open)?;
        t.open = false;
        let timeout = t.timeout;
        Some(Box::new(move || txn::abort(&producer, timeout)))
    }

    /// Why the producer is unusable, if it is (fenced, or another fatal error): what a rewind
    /// should report, since a failed delivery only says the transaction failed.
    pub fn fatal_reason(&self) -> Option<TxnError> {
        let (code, reason) = self.client.producer.client().fatal_error()?;
        Some(txn::fenced_or_fatal(code, reason))
    }

    /// The commit went through: the next send opens a new transaction.
    pub fn committed(&mut self) {
        if let Some(t) = &mut self.txn {
            t.open = false;
        }
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
        if let Some(t) = &mut self.txn {
            if !t.open {
                txn::begin(&self.client.producer).map_err(|e| {
                    SendError::Failed(DeliveryError::Fatal(format!("begin_transaction: {e}")))
                })?;
                t.open = true;
            }
        }
        // Exactly-once has no second producer: a refused batch aborts the transaction.
        let alone = out.alone && self.txn.is_none();
        let client = match (alone, &mut self.alone) {
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
        let counted = out.topic.is_none() && !alone;
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
