//! The Kafka sink: topic and key templates, the oversize policy, headers, and the librdkafka
//! property map merged with our defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use super::raw::{RawOversize, RawSink};
use super::transactions::{self, ExactlyOnce};
use super::{ConfigError, Oversize};
use crate::record::Template;

/// `type = "kafka"`.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Topic template.
    pub topic: Template,
    /// Message key template.
    pub key: Option<Template>,
    /// Oversize/invalid entry policy.
    pub oversize: Oversize,
    /// The complete librdkafka property map (our defaults merged with `[sink.librdkafka]`).
    pub librdkafka: BTreeMap<String, String>,
    /// `message.max.bytes`: entries larger than this are handled by `oversize` before sending.
    pub message_max_bytes: usize,
    /// The Kafka headers put on every message, in this order (none by default).
    pub headers: Vec<KafkaHeader>,
    /// At most this many distinct topics rendered from `topic` are produced to at once
    /// (a topic unused for [`TOPIC_IDLE`] frees its place).
    pub max_topics: usize,
    /// Where entries go whose topic is beyond `max_topics`, unknown to the broker or not
    /// authorized; `None`: they wait in the window until the topic can take them.
    pub topic_fallback: Option<String>,
    /// `delivery = "exactly-once"`: transactions, and the checkpoint in Kafka.
    pub exactly_once: Option<ExactlyOnce>,
}

/// `[sink] max_topics` by default.
pub const DEFAULT_MAX_TOPICS: usize = 1000;

/// A rendered topic unused this long no longer counts towards `max_topics`.
pub const TOPIC_IDLE: Duration = Duration::from_secs(600);

/// A Kafka header perapera can put on every message (`[sink] headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaHeader {
    /// `perapera-source`: the source name.
    Source,
    /// `perapera-position`: the journal cursor, or `PATH:OFFSET` of a file line.
    Position,
    /// `content-type: application/msgpack`.
    ContentType,
}

impl KafkaHeader {
    /// Every header, with its name in the configuration.
    pub const ALL: [(&'static str, KafkaHeader); 3] = [
        ("source", KafkaHeader::Source),
        ("position", KafkaHeader::Position),
        ("content-type", KafkaHeader::ContentType),
    ];
}

/// Our librdkafka defaults: durable (`acks=all`, idempotent), compressed cheaply for the host
/// (lz4; what zstd costs more is in the README, Performance), low latency.
pub(super) const KAFKA_DEFAULTS: &[(&str, &str)] = &[
    ("acks", "all"),
    ("enable.idempotence", "true"),
    ("compression.type", "lz4"),
    ("linger.ms", "5"),
    ("message.max.bytes", "1000000"),
    ("client.id", "perapera"),
];

/// librdkafka property names that are aliases of each other.
pub(super) const ALIASES: &[(&str, &str)] = &[
    ("bootstrap.servers", "metadata.broker.list"),
    ("acks", "request.required.acks"),
    ("compression.type", "compression.codec"),
    ("linger.ms", "queue.buffering.max.ms"),
    ("message.timeout.ms", "delivery.timeout.ms"),
];

pub(super) fn canonical(key: &str) -> &str {
    ALIASES
        .iter()
        .find(|(_, alias)| *alias == key)
        .map_or(key, |(canon, _)| canon)
}

pub(super) fn sink(
    mut sink: RawSink,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<KafkaConfig, ConfigError> {
    let delivery = transactions::RawDelivery::take(&mut sink);
    let topic = sink.topic.ok_or_else(|| {
        invalid(
            "[sink] topic",
            "required for type = \"kafka\", e.g. topic = \"logs.{_SYSTEMD_UNIT:-unknown}\"".into(),
        )
    })?;
    let mut props: BTreeMap<String, String> = KAFKA_DEFAULTS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut user: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (key, value) in sink.librdkafka.unwrap_or_default() {
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(invalid(
                    &format!("[sink.librdkafka] {key:?}"),
                    format!(
                        "librdkafka properties are strings, numbers or booleans, not a {}",
                        other.type_str()
                    ),
                ))
            }
        };
        let canon = canonical(&key).to_string();
        if let Some((first, _)) = user.get(&canon) {
            return Err(invalid(
                &format!("[sink.librdkafka] {key:?}"),
                format!("is an alias of {first:?}, which is also set; set it once"),
            ));
        }
        user.insert(canon, (key, text));
    }
    let brokers = sink.brokers.unwrap_or_default();
    let mock = user.contains_key("test.mock.num.brokers");
    match (brokers.is_empty(), user.get("bootstrap.servers")) {
        (false, Some((k, _))) => {
            return Err(invalid(
                &format!("[sink.librdkafka] {k:?}"),
                "conflicts with [sink] brokers: give the broker list in one place".into(),
            ))
        }
        (true, None) if !mock => {
            return Err(invalid(
                "[sink] brokers",
                "required for type = \"kafka\", e.g. brokers = [\"kafka1:9092\", \"kafka2:9092\"]"
                    .into(),
            ))
        }
        (false, None) => {
            props.insert("bootstrap.servers".into(), brokers.join(","));
        }
        _ => {}
    }
    if let Some((k, v)) = user.get("delivery.report.only.error") {
        if v == "true" {
            return Err(invalid(
                &format!("[sink.librdkafka] {k:?}"),
                "perapera needs every delivery report: success is what moves the checkpoint".into(),
            ));
        }
    }
    for (canon, (key, value)) in user {
        props.remove(&canon);
        props.insert(key, value);
    }
    let exactly_once = transactions::settings(delivery, &props, invalid)?;
    let max_key = props
        .keys()
        .find(|k| k.as_str() == "message.max.bytes")
        .cloned()
        .unwrap_or_default();
    let message_max_bytes = props
        .get(&max_key)
        .and_then(|v| v.parse::<usize>().ok())
        .ok_or_else(|| {
            invalid(
                "[sink.librdkafka] \"message.max.bytes\"",
                "must be an integer number of bytes".into(),
            )
        })?;
    let oversize = match (sink.oversize, sink.dead_letter_topic) {
        (None | Some(RawOversize::Truncate), None) => Oversize::Truncate,
        (Some(RawOversize::Drop), None) => Oversize::Drop,
        (Some(RawOversize::DeadLetter(Some(t))), None)
        | (Some(RawOversize::DeadLetter(None)), Some(t)) => Oversize::DeadLetter(t),
        (Some(RawOversize::DeadLetter(None)), None) => {
            return Err(invalid(
                "[sink] oversize",
                "\"dead_letter\" needs dead_letter_topic = \"TOPIC\"".into(),
            ))
        }
        (_, Some(_)) => {
            return Err(invalid(
                "[sink] dead_letter_topic",
                "only applies with oversize = \"dead_letter\"".into(),
            ))
        }
    };
    let topic_name = |key: &str, t: &str| {
        let mut clean = t.to_string();
        crate::record::sanitize_topic(&mut clean);
        if clean == t {
            Ok(())
        } else {
            Err(invalid(
                key,
                format!("{t:?} is not a valid Kafka topic name (allowed: A-Z a-z 0-9 . _ -)"),
            ))
        }
    };
    if let Oversize::DeadLetter(t) = &oversize {
        topic_name("[sink] dead_letter_topic", t)?;
    }
    if let Some(t) = &sink.topic_fallback {
        topic_name("[sink] topic_fallback", t)?;
    }
    let max_topics = match sink.max_topics {
        Some(n @ 1..=100_000) => n as usize,
        Some(_) => {
            return Err(invalid(
                "[sink] max_topics",
                format!("must be between 1 and 100000 (default {DEFAULT_MAX_TOPICS})"),
            ))
        }
        None => DEFAULT_MAX_TOPICS,
    };
    let mut headers = Vec::new();
    for name in sink.headers.unwrap_or_default() {
        let Some((_, h)) = KafkaHeader::ALL.iter().find(|(n, _)| *n == name) else {
            return Err(invalid(
                "[sink] headers",
                format!(
                    "unknown header {name:?}: expected any of \"source\", \"position\", \"content-type\""
                ),
            ));
        };
        if headers.contains(h) {
            return Err(invalid(
                "[sink] headers",
                format!("{name:?} is listed twice"),
            ));
        }
        headers.push(*h);
    }
    Ok(KafkaConfig {
        topic,
        key: sink.key,
        oversize,
        librdkafka: props,
        message_max_bytes,
        headers,
        max_topics,
        topic_fallback: sink.topic_fallback,
        exactly_once,
    })
}
