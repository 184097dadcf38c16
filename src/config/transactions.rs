//! `[sink] delivery = "exactly-once"`: the Kafka sink's transactional mode, its transactional
//! id, the checkpoint topic and the transaction interval.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::raw::RawSink;
use super::value::HumanDuration;
use super::ConfigError;

/// The exactly-once settings (present only with `delivery = "exactly-once"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExactlyOnce {
    /// `transactional.id`: stable per host and perapera instance, so that a restart fences
    /// the instance before it and aborts its open transaction at once.
    pub transactional_id: String,
    /// Set by the operator (else derived from the machine id and the state directory).
    pub transactional_id_configured: bool,
    /// The compacted topic holding, per transactional id, the positions of every source as of
    /// the last committed transaction.
    pub checkpoint_topic: String,
    /// A transaction is committed this often (or sooner, when half the window waits on it).
    pub transaction_interval: Duration,
}

/// `[sink] checkpoint_topic` by default.
pub const DEFAULT_CHECKPOINT_TOPIC: &str = "perapera.checkpoints";

/// `[sink] transaction_interval` by default.
pub const DEFAULT_TRANSACTION_INTERVAL: Duration = Duration::from_secs(1);

/// The `[sink]` keys of delivery, taken out of the raw sink.
pub(super) struct RawDelivery {
    delivery: Option<String>,
    transactional_id: Option<String>,
    checkpoint_topic: Option<String>,
    transaction_interval: Option<HumanDuration>,
}

impl RawDelivery {
    pub(super) fn take(sink: &mut RawSink) -> RawDelivery {
        RawDelivery {
            delivery: sink.delivery.take(),
            transactional_id: sink.transactional_id.take(),
            checkpoint_topic: sink.checkpoint_topic.take(),
            transaction_interval: sink.transaction_interval.take(),
        }
    }
}

/// The exactly-once settings of a Kafka sink, or `None` for at-least-once. `props` is the
/// merged librdkafka map: the settings transactions need are checked (and `transactional.id`
/// is refused there: it is `[sink] transactional_id`).
pub(super) fn settings(
    sink: RawDelivery,
    props: &BTreeMap<String, String>,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Option<ExactlyOnce>, ConfigError> {
    if props.contains_key("transactional.id") {
        return Err(invalid(
            "[sink.librdkafka] \"transactional.id\"",
            "is set by perapera: use delivery = \"exactly-once\" and [sink] transactional_id"
                .into(),
        ));
    }
    let exactly_once = match sink.delivery.as_deref() {
        None | Some("at-least-once") => false,
        Some("exactly-once") => true,
        Some(other) => {
            return Err(invalid(
                "[sink] delivery",
                format!("{other:?}: expected \"at-least-once\" (the default) or \"exactly-once\""),
            ))
        }
    };
    if !exactly_once {
        let only = [
            ("transactional_id", sink.transactional_id.is_some()),
            ("checkpoint_topic", sink.checkpoint_topic.is_some()),
            ("transaction_interval", sink.transaction_interval.is_some()),
        ];
        if let Some((key, _)) = only.iter().find(|(_, set)| *set) {
            return Err(invalid(
                &format!("[sink] {key}"),
                "only applies with delivery = \"exactly-once\"".into(),
            ));
        }
        return Ok(None);
    }
    if props.contains_key("test.mock.num.brokers") {
        return Err(invalid(
            "[sink] delivery",
            "\"exactly-once\" needs a real Kafka broker: librdkafka's mock cluster writes no \
             transaction markers and cannot read back committed positions"
                .into(),
        ));
    }
    if props.get("enable.idempotence").map(String::as_str) == Some("false") {
        return Err(invalid(
            "[sink.librdkafka] \"enable.idempotence\"",
            "must stay true with delivery = \"exactly-once\" (transactions need the idempotent \
             producer)"
                .into(),
        ));
    }
    if let Some(acks) = props
        .get("acks")
        .filter(|a| !matches!(a.as_str(), "all" | "-1"))
    {
        return Err(invalid(
            "[sink.librdkafka] \"acks\"",
            format!("is {acks:?}; delivery = \"exactly-once\" needs \"all\""),
        ));
    }
    let checkpoint_topic = sink
        .checkpoint_topic
        .unwrap_or_else(|| DEFAULT_CHECKPOINT_TOPIC.to_string());
    let mut clean = checkpoint_topic.clone();
    crate::record::sanitize_topic(&mut clean);
    if clean != checkpoint_topic || checkpoint_topic.is_empty() {
        return Err(invalid(
            "[sink] checkpoint_topic",
            format!(
                "{checkpoint_topic:?} is not a valid Kafka topic name (allowed: A-Z a-z 0-9 . _ -)"
            ),
        ));
    }
    let transaction_interval = sink
        .transaction_interval
        .map_or(DEFAULT_TRANSACTION_INTERVAL, |d| d.0);
    if transaction_interval < Duration::from_millis(10)
        || transaction_interval > Duration::from_secs(60)
    {
        return Err(invalid(
            "[sink] transaction_interval",
            "must be between 10ms and 60s (default 1s): a transaction stays open at most this \
             long, and consumers reading read_committed see nothing of it until it commits"
                .into(),
        ));
    }
    let (transactional_id, configured) = match sink.transactional_id {
        Some(id) => {
            if id.is_empty() || id.len() > 200 || id.chars().any(char::is_control) {
                return Err(invalid(
                    "[sink] transactional_id",
                    format!("{id:?} is not usable: 1-200 printable characters"),
                ));
            }
            (id, true)
        }
        // Filled in by `default_id` once the state directory is known.
        None => (String::new(), false),
    };
    Ok(Some(ExactlyOnce {
        transactional_id,
        transactional_id_configured: configured,
        checkpoint_topic,
        transaction_interval,
    }))
}

/// The default transactional id: `perapera-<machine id>-<state directory hash>`. The machine
/// id (`/etc/machine-id`, else the host name) tells hosts apart; the state directory tells
/// apart two perapera instances on one host (each has its own).
pub fn default_id(state_dir: &Path) -> String {
    let machine = std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(crate::host::hostname);
    format!(
        "perapera-{machine}-{:08x}",
        fnv32(state_dir.as_os_str().as_encoded_bytes())
    )
}

/// FNV-1a, 32 bits: a short stable digest (not a security measure).
fn fnv32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, SinkConfig};

    fn parse(sink: &str) -> Result<Config, String> {
        let text = format!(
            "[state]\ndirectory = \"/var/lib/perapera\"\n[[source]]\ntype = \"journal\"\n\
             [sink]\ntype = \"kafka\"\nbrokers = [\"k:9092\"]\ntopic = \"logs\"\n{sink}"
        );
        Config::parse(&text, Path::new("/etc/perapera/perapera.toml")).map_err(|e| e.to_string())
    }

    fn exactly_once(sink: &str) -> ExactlyOnce {
        match parse(sink).map(|c| c.sink) {
            Ok(SinkConfig::Kafka(k)) => k.exactly_once.expect("exactly-once"),
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn exactly_once_is_opt_in_and_its_settings_are_checked_where_they_are_written() {
        let Ok(SinkConfig::Kafka(k)) = parse("").map(|c| c.sink) else {
            panic!("default")
        };
        assert_eq!(k.exactly_once, None, "at-least-once by default");
        assert!(!k.librdkafka.contains_key("transactional.id"));
        let eo = exactly_once("delivery = \"exactly-once\"\n");
        assert_eq!(eo.checkpoint_topic, DEFAULT_CHECKPOINT_TOPIC);
        assert_eq!(eo.transaction_interval, DEFAULT_TRANSACTION_INTERVAL);
        assert_eq!(
            eo.transactional_id,
            default_id(Path::new("/var/lib/perapera"))
        );
        let eo = exactly_once(
            "delivery = \"exactly-once\"\ntransactional_id = \"web-1\"\n\
             checkpoint_topic = \"cp\"\ntransaction_interval = \"250ms\"\n",
        );
        assert_eq!(
            (eo.transactional_id.as_str(), eo.transactional_id_configured),
            ("web-1", true)
        );
        assert_eq!(eo.transaction_interval, Duration::from_millis(250));
        let Ok(SinkConfig::Kafka(k)) =
            parse("delivery = \"exactly-once\"\ntransactional_id = \"web-1\"\n").map(|c| c.sink)
        else {
            panic!("parse")
        };
        assert_eq!(
            k.librdkafka["transactional.id"], "web-1",
            "the producer gets it"
        );
        for (sink, expect) in [
            ("delivery = \"exactly_once\"\n", "[sink] delivery"),
            (
                "transactional_id = \"x\"\n",
                "only applies with delivery = \"exactly-once\"",
            ),
            ("checkpoint_topic = \"x\"\n", "[sink] checkpoint_topic"),
            (
                "delivery = \"exactly-once\"\ncheckpoint_topic = \"a b\"\n",
                "not a valid Kafka topic name",
            ),
            (
                "delivery = \"exactly-once\"\ntransaction_interval = \"2m\"\n",
                "between 10ms and 60s",
            ),
            (
                "delivery = \"exactly-once\"\n[sink.librdkafka]\n\"enable.idempotence\" = false\n",
                "must stay true",
            ),
            (
                "delivery = \"exactly-once\"\n[sink.librdkafka]\nacks = \"1\"\n",
                "needs \"all\"",
            ),
            (
                "[sink.librdkafka]\n\"transactional.id\" = \"x\"\n",
                "use delivery = \"exactly-once\" and [sink] transactional_id",
            ),
        ] {
            let e = parse(sink)
                .err()
                .unwrap_or_else(|| panic!("accepted {sink:?}"));
            assert!(e.contains(expect), "{sink:?}: {e}");
        }
        let mock = "[state]\ndirectory = \"/x\"\n[[source]]\ntype = \"journal\"\n[sink]\n\
            type = \"kafka\"\ntopic = \"t\"\ndelivery = \"exactly-once\"\n\
            [sink.librdkafka]\n\"test.mock.num.brokers\" = \"1\"\n";
        let e = Config::parse(mock, Path::new("/p"))
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("needs a real Kafka broker")));
    }

    #[test]
    fn the_default_id_is_stable_and_tells_state_directories_apart() {
        let a = default_id(Path::new("/var/lib/perapera"));
        assert_eq!(a, default_id(Path::new("/var/lib/perapera")));
        assert_ne!(a, default_id(Path::new("/var/lib/perapera-2")));
        assert!(a.starts_with("perapera-"), "{a}");
        assert_eq!(fnv32(b""), 0x811c_9dc5);
        assert_eq!(fnv32(b"a"), 0xe40c_292c);
    }
}
