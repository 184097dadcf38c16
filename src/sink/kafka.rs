//! The Kafka sink: librdkafka (bundled) through `rdkafka`'s `ThreadedProducer`.
//!
//! Every message carries a [`Delivery`] as its delivery opaque: the pipeline's id and a
//! reference to the record's bytes, which librdkafka reads in place (no copy). The delivery
//! callback (on librdkafka's poll thread) turns the report into an [`Ack`] and releases the
//! reference. Messages go out through `rd_kafka_produceva` on cached topic handles. A
//! callback per message measured twice the throughput of one future per message against the
//! mock cluster.
//!
//! Failures are classified here and handled by the pipeline: transient ones are re-produced
//! (librdkafka's `MessageTimedOut` is final for that message inside librdkafka, not for us),
//! too-large and invalid ones go to the oversize policy, a rejected timestamp is re-sent with
//! the produce time, and a fatal idempotence error means a new producer.

use std::collections::HashMap;
use std::ffi::{c_void, CStr, CString};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::bindings as rd;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafka;
use rdkafka::ClientContext;
use tokio::sync::mpsc;

use super::{Ack, DeliveryError, Outgoing, SendError};
use crate::config::{KafkaConfig, KafkaHeader, TOPIC_IDLE};
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
    id: u64,
    _payload: Arc<Vec<u8>>,
}

impl ProducerContext for Context {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, delivery: Box<Delivery>) {
        let id = delivery.id;
        let result = match result {
            Ok(_) => Ok(()),
            Err((e, message)) => Err(classify(e, message.topic())),
        };
        // The pipeline owns the receiver for the producer's whole life.
        let _ = self.acks.send(Ack { id, result });
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

/// A producer and its topic handles.
struct Client {
    /// Declared before `producer`: topic handles are released before the producer they
    /// belong to is destroyed.
    topics: Topics,
    producer: ThreadedProducer<Context>,
}

impl Client {
    /// `alone`: one message per batch (`batch.num.messages = 1`), no topic bound (its
    /// entries already hold a place in the main client's).
    fn new(
        config: &KafkaConfig,
        acks: &mpsc::UnboundedSender<Ack>,
        alone: bool,
    ) -> Result<Client, String> {
        let producer = create(config, acks, alone)?;
        let max = if alone { usize::MAX } else { config.max_topics };
        Ok(Client {
            topics: Topics::new(max),
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
) -> Result<ThreadedProducer<Context>, String> {
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
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
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
        self.client.topics.handles.len()
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

/// Why [`Topics::get`] gave no handle.
enum Refused {
    /// `max_topics` topics are in use and none has been idle for [`TOPIC_IDLE`].
    Bound(usize),
    /// librdkafka refused to make one.
    Handle(String),
}

/// Topic handles by name, made once per topic instead of once per message (`rd_kafka_producev`
/// with a topic name allocates a C string and looks the topic up under a lock every time).
/// Templated topics (`logs.{_SYSTEMD_UNIT}`) make one handle per distinct name, and at most
/// `max` of them exist: every topic librdkafka knows costs memory and a place in each
/// metadata request, so a template over untrusted fields must not make endless ones.
struct Topics {
    handles: HashMap<String, Handle>,
    /// The last topic used and its handle: most messages go where the one before went, and
    /// comparing the name is cheaper than hashing it (its `used` is refreshed when another
    /// topic is used).
    last: Option<(String, NonNull<rd::rd_kafka_topic_t>)>,
    /// Handles that count towards `max`.
    counted: usize,
    max: usize,
}

struct Handle {
    topic: NonNull<rd::rd_kafka_topic_t>,
    used: Instant,
    /// Made for a topic rendered from the template (not the fallback or dead-letter topic).
    counted: bool,
}

// SAFETY: librdkafka topic handles are reference-counted and thread-safe; this map is only
// used from the pipeline thread anyway.
unsafe impl Send for Topics {}

impl Topics {
    fn new(max: usize) -> Topics {
        Topics {
            handles: HashMap::new(),
            last: None,
            counted: 0,
            max: max.max(1),
        }
    }

    /// The handle for `name` on producer `rk`, made on first use; a `counted` one only while
    /// fewer than `max` counted ones exist.
    fn get(
        &mut self,
        rk: *mut RDKafka,
        name: &str,
        counted: bool,
    ) -> Result<*mut rd::rd_kafka_topic_t, Refused> {
        if let Some((last, t)) = &self.last {
            if last == name {
                return Ok(t.as_ptr());
            }
        }
        let now = Instant::now();
        if let Some((last, _)) = &self.last {
            if let Some(h) = self.handles.get_mut(last.as_str()) {
                h.used = now;
            }
        }
        if let Some(h) = self.handles.get_mut(name) {
            h.used = now;
            let t = h.topic;
            self.remember(name, t);
            return Ok(t.as_ptr());
        }
        if counted && self.counted >= self.max && !self.evict_idle(now) {
            return Err(Refused::Bound(self.counted));
        }
        let cname = CString::new(name).map_err(|e| Refused::Handle(e.to_string()))?;
        // SAFETY: rk is a live producer handle; a NULL topic configuration means the default.
        let handle = unsafe { rd::rd_kafka_topic_new(rk, cname.as_ptr(), std::ptr::null_mut()) };
        let handle = NonNull::new(handle).ok_or_else(|| {
            // SAFETY: reads librdkafka's thread-local last error.
            let code = unsafe { rd::rd_kafka_last_error() };
            Refused::Handle(RDKafkaErrorCode::from(code).to_string())
        })?;
        self.handles.insert(
            name.to_string(),
            Handle {
                topic: handle,
                used: now,
                counted,
            },
        );
        self.counted += usize::from(counted);
        self.remember(name, handle);
        Ok(handle.as_ptr())
    }

    /// Releases the handle of `name`, if it has one that counts towards `max`.
    fn forget(&mut self, name: &str) {
        if self.handles.get(name).is_some_and(|h| h.counted) {
            self.release(name);
        }
    }

    /// Releases the least recently used counted handle if it has been idle for
    /// [`TOPIC_IDLE`] (messages in flight hold their own references, so releasing ours is
    /// safe).
    fn evict_idle(&mut self, now: Instant) -> bool {
        let oldest = self
            .handles
            .iter()
            .filter(|(_, h)| h.counted)
            .min_by_key(|(_, h)| h.used)
            .filter(|(_, h)| now.duration_since(h.used) >= TOPIC_IDLE)
            .map(|(name, _)| name.clone());
        let Some(name) = oldest else {
            return false;
        };
        self.release(&name);
        true
    }

    fn release(&mut self, name: &str) {
        if let Some(h) = self.handles.remove(name) {
            if self.last.as_ref().is_some_and(|(l, _)| l == name) {
                self.last = None;
            }
            self.counted -= usize::from(h.counted);
            // SAFETY: made by rd_kafka_topic_new, released once (it left the map).
            unsafe { rd::rd_kafka_topic_destroy(h.topic.as_ptr()) };
        }
    }

    fn remember(&mut self, name: &str, handle: NonNull<rd::rd_kafka_topic_t>) {
        match &mut self.last {
            Some((last, t)) => {
                last.clear();
                last.push_str(name);
                *t = handle;
            }
            None => self.last = Some((name.to_string(), handle)),
        }
    }

    /// Releases every handle (before their producer is destroyed).
    fn clear(&mut self) {
        self.last = None;
        self.counted = 0;
        for (_, h) in self.handles.drain() {
            // SAFETY: each handle was made by rd_kafka_topic_new and is released once.
            unsafe { rd::rd_kafka_topic_destroy(h.topic.as_ptr()) };
        }
    }
}

impl Drop for Topics {
    fn drop(&mut self) {
        self.clear();
    }
}

/// One message for [`produce`].
struct Message<'a> {
    topic: *mut rd::rd_kafka_topic_t,
    payload: Arc<Vec<u8>>,
    key: Option<&'a [u8]>,
    id: u64,
    timestamp_ms: i64,
    /// Which headers, and the values of the source and position headers.
    headers: &'a [KafkaHeader],
    source: &'a str,
    position: &'a str,
    /// `perapera-topic`: the topic a rerouted entry was meant for.
    meant_for: Option<&'a str>,
}

/// Enqueues a message with `rd_kafka_produceva`. Key and headers are copied by librdkafka;
/// the payload is not (no `RD_KAFKA_MSG_F_COPY`): the delivery opaque, a [`Delivery`] box,
/// holds a reference to it until [`Context::delivery`] has run for this message, and the
/// bytes behind an `Arc` of a record never change. One copy less of every message in flight.
fn produce(rk: *mut RDKafka, m: Message<'_>) -> Result<(), RDKafkaErrorCode> {
    use rd::rd_kafka_vtype_t as T;
    fn vu(vtype: T, u: rd::rd_kafka_vu_s__bindgen_ty_1) -> rd::rd_kafka_vu_t {
        rd::rd_kafka_vu_t { vtype, u }
    }
    type U = rd::rd_kafka_vu_s__bindgen_ty_1;
    let mem = |b: &[u8]| rd::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 {
        ptr: b.as_ptr() as *mut c_void,
        size: b.len(),
    };
    let header = |name: &CStr, value: &[u8]| {
        vu(
            T::RD_KAFKA_VTYPE_HEADER,
            U {
                header: rd::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_2 {
                    name: name.as_ptr(),
                    val: value.as_ptr() as *const c_void,
                    size: value.len() as isize,
                },
            },
        )
    };
    let delivery = Box::new(Delivery {
        id: m.id,
        _payload: m.payload.clone(),
    });
    // Turned back into the box by rdkafka's delivery report handling (Box<T>: IntoOpaque),
    // or below if librdkafka refuses the message.
    let opaque = Box::into_raw(delivery) as *mut c_void;
    let end = vu(T::RD_KAFKA_VTYPE_END, U { i: 0 });
    let mut vus = [
        vu(T::RD_KAFKA_VTYPE_RKT, U { rkt: m.topic }),
        vu(T::RD_KAFKA_VTYPE_MSGFLAGS, U { i: 0 }),
        vu(
            T::RD_KAFKA_VTYPE_VALUE,
            U {
                mem: mem(&m.payload),
            },
        ),
        vu(T::RD_KAFKA_VTYPE_OPAQUE, U { ptr: opaque }),
        vu(
            T::RD_KAFKA_VTYPE_TIMESTAMP,
            U {
                i64_: m.timestamp_ms,
            },
        ),
        end,
        end,
        end,
        end,
        end,
    ];
    // The five above, then up to three headers, perapera-topic and a key.
    let mut n = 5;
    for h in m.headers.iter().take(3) {
        let (name, value): (&CStr, &[u8]) = match h {
            KafkaHeader::Source => (c"perapera-source", m.source.as_bytes()),
            KafkaHeader::Position => (c"perapera-position", m.position.as_bytes()),
            KafkaHeader::ContentType => (c"content-type", b"application/msgpack"),
        };
        vus[n] = header(name, value);
        n += 1;
    }
    if let Some(meant) = m.meant_for {
        vus[n] = header(c"perapera-topic", meant.as_bytes());
        n += 1;
    }
    if let Some(key) = m.key {
        vus[n] = vu(T::RD_KAFKA_VTYPE_KEY, U { mem: mem(key) });
        n += 1;
    }
    // SAFETY: rk and the topic handle are live. Key and headers point into data that outlives
    // this call (librdkafka copies them). The payload stays alive until the delivery report:
    // `opaque` owns a reference to it.
    let error = unsafe { rd::rd_kafka_produceva(rk, vus.as_ptr(), n) };
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: refused, so librdkafka kept neither the message nor the opaque: the box is
    // ours again. A non-NULL error returned by produceva is ours to read and destroy.
    let (code, fatal) = unsafe {
        drop(Box::from_raw(opaque as *mut Delivery));
        let code = rd::rd_kafka_error_code(error);
        let fatal = rd::rd_kafka_error_is_fatal(error) != 0;
        rd::rd_kafka_error_destroy(error);
        (code, fatal)
    };
    // produceva reports the underlying cause of a fatal producer state (e.g.
    // OUT_OF_ORDER_SEQUENCE_NUMBER) where producev said __FATAL: keep it fatal, so that the
    // pipeline recreates the producer.
    Err(if fatal {
        RDKafkaErrorCode::Fatal
    } else {
        RDKafkaErrorCode::from(code)
    })
}
