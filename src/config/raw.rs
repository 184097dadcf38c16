//! The raw TOML mirror: `deny_unknown_fields` everywhere, so a typo is an error that names
//! the key and its line, and the check that each key set applies to its source or sink type.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::value::{ByteSize, HumanDuration, Invalid};
use super::{ConfigError, JournalMatch, LineFormat};
use crate::record::Template;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) state: RawState,
    #[serde(default)]
    pub(super) pipeline: RawPipeline,
    #[serde(default)]
    pub(super) metrics: RawMetrics,
    #[serde(default)]
    pub(super) source: Vec<RawSource>,
    pub(super) sink: Option<RawSink>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) directory: Option<PathBuf>,
    pub(super) checkpoint_interval: Option<HumanDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPipeline {
    pub(super) max_in_flight: Option<u32>,
    pub(super) max_in_flight_bytes: Option<ByteSize>,
    pub(super) shutdown_timeout: Option<HumanDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) address: Option<String>,
    pub(super) unhealthy_after: Option<HumanDuration>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub(super) enum SourceType {
    Journal,
    Files,
    Forward,
}

/// `start_at`: `head`/`tail` for the journal, `beginning`/`end` for files.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawStartAt {
    Head,
    Tail,
    Beginning,
    End,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    #[serde(rename = "type")]
    pub(super) kind: SourceType,
    pub(super) name: Option<String>,
    pub(super) directory: Option<PathBuf>,
    pub(super) namespace: Option<String>,
    #[serde(default)]
    pub(super) matches: Option<Vec<RawMatch>>,
    pub(super) start_at: Option<RawStartAt>,
    pub(super) include: Option<Vec<String>>,
    pub(super) exclude: Option<Vec<String>>,
    pub(super) format: Option<LineFormat>,
    pub(super) max_line_bytes: Option<ByteSize>,
    pub(super) rescan_interval: Option<HumanDuration>,
    pub(super) partial_line_timeout: Option<HumanDuration>,
    pub(super) rotate_wait: Option<HumanDuration>,
    pub(super) max_open_files: Option<u32>,
    pub(super) forget_after: Option<HumanDuration>,
    pub(super) fields: Option<BTreeMap<String, String>>,
    pub(super) listen: Option<String>,
    pub(super) tls: Option<RawTls>,
    pub(super) shared_key: Option<String>,
    pub(super) self_hostname: Option<String>,
    pub(super) users: Option<Vec<RawUser>>,
    pub(super) max_request_bytes: Option<ByteSize>,
    pub(super) max_connections: Option<u32>,
    pub(super) idle_timeout: Option<HumanDuration>,
    pub(super) max_buffer_bytes: Option<ByteSize>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
    pub(super) client_ca: Option<PathBuf>,
    pub(super) ca: Option<PathBuf>,
    pub(super) server_name: Option<String>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub(super) username: String,
    pub(super) password: String,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub(super) enum SinkType {
    Kafka,
    Stdout,
    Forward,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSink {
    #[serde(rename = "type")]
    pub(super) kind: SinkType,
    pub(super) brokers: Option<Vec<String>>,
    pub(super) topic: Option<Template>,
    pub(super) key: Option<Template>,
    pub(super) oversize: Option<RawOversize>,
    pub(super) dead_letter_topic: Option<String>,
    pub(super) max_topics: Option<u32>,
    pub(super) topic_fallback: Option<String>,
    pub(super) headers: Option<Vec<String>>,
    pub(super) librdkafka: Option<BTreeMap<String, toml::Value>>,
    pub(super) delivery: Option<String>,
    pub(super) transactional_id: Option<String>,
    pub(super) checkpoint_topic: Option<String>,
    pub(super) transaction_interval: Option<HumanDuration>,
    pub(super) servers: Option<Vec<String>>,
    pub(super) tag: Option<Template>,
    pub(super) tls: Option<RawTls>,
    pub(super) shared_key: Option<String>,
    pub(super) self_hostname: Option<String>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) compress: Option<String>,
    pub(super) ack_timeout: Option<HumanDuration>,
    pub(super) connect_timeout: Option<HumanDuration>,
    pub(super) max_chunk_entries: Option<u32>,
    pub(super) max_chunk_bytes: Option<ByteSize>,
    pub(super) max_pending_chunks: Option<u32>,
}

pub(super) struct RawMatch(pub(super) JournalMatch);

impl<'de> Deserialize<'de> for RawMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "+" {
            return Ok(RawMatch(JournalMatch::Or));
        }
        let bad = || {
            de::Error::custom(format!(
                "invalid match {s:?}: expected FIELD=value (FIELD in A-Z, 0-9, _) or \"+\""
            ))
        };
        let (name, value) = s.split_once('=').ok_or_else(bad)?;
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid_name {
            return Err(bad());
        }
        Ok(RawMatch(JournalMatch::Field {
            name: name.to_string(),
            value: value.to_string(),
        }))
    }
}

pub(super) enum RawOversize {
    Truncate,
    Drop,
    DeadLetter(Option<String>),
}

impl<'de> Deserialize<'de> for RawOversize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const HELP: &str =
            "\"truncate\", \"drop\", \"dead_letter\" (with dead_letter_topic) or { dead_letter = \"TOPIC\" }";
        impl<'de> Visitor<'de> for V {
            type Value = RawOversize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(HELP)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawOversize, E> {
                match v {
                    "truncate" => Ok(RawOversize::Truncate),
                    "drop" => Ok(RawOversize::Drop),
                    "dead_letter" => Ok(RawOversize::DeadLetter(None)),
                    _ => Err(E::custom(format!(
                        "invalid oversize policy {v:?}: expected {HELP}"
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawOversize, A::Error> {
                let mut topic = None;
                while let Some(k) = map.next_key::<String>()? {
                    if k != "dead_letter" {
                        return Err(de::Error::custom(format!(
                            "unknown key {k:?} in oversize: expected {HELP}"
                        )));
                    }
                    topic = Some(map.next_value::<String>()?);
                }
                match topic {
                    Some(t) => Ok(RawOversize::DeadLetter(Some(t))),
                    None => Err(de::Error::custom(format!(
                        "empty oversize table: expected {HELP}"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Rejects a key set for a source type it does not apply to, naming it.
pub(super) fn source_keys(s: &RawSource, here: &str, invalid: Invalid) -> Result<(), ConfigError> {
    use SourceType::{Files, Forward, Journal};
    let keys: &[(&str, bool, &[SourceType])] = &[
        ("directory", s.directory.is_some(), &[Journal]),
        ("namespace", s.namespace.is_some(), &[Journal]),
        ("matches", s.matches.is_some(), &[Journal]),
        ("start_at", s.start_at.is_some(), &[Journal, Files]),
        ("include", s.include.is_some(), &[Files]),
        ("exclude", s.exclude.is_some(), &[Files]),
        ("format", s.format.is_some(), &[Files]),
        ("max_line_bytes", s.max_line_bytes.is_some(), &[Files]),
        ("rescan_interval", s.rescan_interval.is_some(), &[Files]),
        (
            "partial_line_timeout",
            s.partial_line_timeout.is_some(),
            &[Files],
        ),
        ("rotate_wait", s.rotate_wait.is_some(), &[Files]),
        ("max_open_files", s.max_open_files.is_some(), &[Files]),
        ("forget_after", s.forget_after.is_some(), &[Files]),
        ("fields", s.fields.is_some(), &[Files]),
        ("listen", s.listen.is_some(), &[Forward]),
        ("tls", s.tls.is_some(), &[Forward]),
        ("shared_key", s.shared_key.is_some(), &[Forward]),
        ("self_hostname", s.self_hostname.is_some(), &[Forward]),
        ("users", s.users.is_some(), &[Forward]),
        (
            "max_request_bytes",
            s.max_request_bytes.is_some(),
            &[Forward],
        ),
        ("max_connections", s.max_connections.is_some(), &[Forward]),
        ("idle_timeout", s.idle_timeout.is_some(), &[Forward]),
        ("max_buffer_bytes", s.max_buffer_bytes.is_some(), &[Forward]),
    ];
    match keys
        .iter()
        .find(|(_, set, owners)| *set && !owners.contains(&s.kind))
    {
        Some((k, _, owners)) => Err(invalid(
            &format!("{here} {k}"),
            format!(
                "does not apply to type = \"{}\" (it is a key of type = {})",
                format!("{:?}", s.kind).to_lowercase(),
                owners
                    .iter()
                    .map(|o| format!("\"{}\"", format!("{o:?}").to_lowercase()))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        )),
        None => Ok(()),
    }
}

/// Rejects a sink key set for a sink type it does not apply to, naming it.
pub(super) fn sink_keys(s: &RawSink, invalid: Invalid) -> Result<(), ConfigError> {
    use SinkType::{Forward, Kafka};
    let keys: &[(&str, bool, &[SinkType])] = &[
        ("brokers", s.brokers.is_some(), &[Kafka]),
        ("topic", s.topic.is_some(), &[Kafka]),
        ("key", s.key.is_some(), &[Kafka]),
        ("oversize", s.oversize.is_some(), &[Kafka]),
        ("dead_letter_topic", s.dead_letter_topic.is_some(), &[Kafka]),
        ("max_topics", s.max_topics.is_some(), &[Kafka]),
        ("topic_fallback", s.topic_fallback.is_some(), &[Kafka]),
        ("headers", s.headers.is_some(), &[Kafka]),
        ("librdkafka", s.librdkafka.is_some(), &[Kafka]),
        ("delivery", s.delivery.is_some(), &[Kafka]),
        ("transactional_id", s.transactional_id.is_some(), &[Kafka]),
        ("checkpoint_topic", s.checkpoint_topic.is_some(), &[Kafka]),
        (
            "transaction_interval",
            s.transaction_interval.is_some(),
            &[Kafka],
        ),
        ("servers", s.servers.is_some(), &[Forward]),
        ("tag", s.tag.is_some(), &[Forward]),
        ("tls", s.tls.is_some(), &[Forward]),
        ("shared_key", s.shared_key.is_some(), &[Forward]),
        ("self_hostname", s.self_hostname.is_some(), &[Forward]),
        ("username", s.username.is_some(), &[Forward]),
        ("password", s.password.is_some(), &[Forward]),
        ("compress", s.compress.is_some(), &[Forward]),
        ("ack_timeout", s.ack_timeout.is_some(), &[Forward]),
        ("connect_timeout", s.connect_timeout.is_some(), &[Forward]),
        (
            "max_chunk_entries",
            s.max_chunk_entries.is_some(),
            &[Forward],
        ),
        ("max_chunk_bytes", s.max_chunk_bytes.is_some(), &[Forward]),
        (
            "max_pending_chunks",
            s.max_pending_chunks.is_some(),
            &[Forward],
        ),
    ];
    match keys
        .iter()
        .find(|(_, set, owners)| *set && !owners.contains(&s.kind))
    {
        Some((k, _, owners)) => Err(invalid(
            &format!("[sink] {k}"),
            match s.kind {
                SinkType::Stdout => "the stdout sink takes no options".to_string(),
                _ => format!(
                    "only applies to type = \"{}\"",
                    format!("{:?}", owners[0]).to_lowercase()
                ),
            },
        )),
        None => Ok(()),
    }
}
