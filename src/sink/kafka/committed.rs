//! Reading back the last committed checkpoint record of a transactional id.
//!
//! The record sits on one partition of the checkpoint topic (the key's, by Kafka's default
//! partitioner). It is read with `isolation.level=read_committed` from the beginning until
//! the consumer has passed the partition's high watermark as it was when reading started:
//! the last *stable* offset can lag behind it while another producer's transaction on that
//! partition is open, and stopping there could miss our own last commit (then we would
//! resume from an older one, and send entries again). Our own transaction is no longer open:
//! `init_transactions` ran first.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use super::txn::partition_of;

/// The librdkafka properties a consumer shares with our producer: how to reach and
/// authenticate to the cluster.
fn consumer_props(props: &BTreeMap<String, String>) -> ClientConfig {
    const SHARED: &[&str] = &[
        "bootstrap.servers",
        "metadata.broker.list",
        "client.id",
        "security.protocol",
        "ssl.",
        "sasl.",
        "socket.",
        "broker.",
        "api.version.",
        "client.dns.lookup",
        "client.rack",
        "reconnect.backoff.",
        "enable.ssl.",
        "enable.sasl.",
        "https.",
    ];
    let mut cc = ClientConfig::new();
    for (k, v) in props {
        if SHARED
            .iter()
            .any(|s| k == s || (s.ends_with('.') && k.starts_with(s)))
        {
            cc.set(k, v);
        }
    }
    cc.set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("group.id", "perapera-checkpoint-reader");
    cc
}

fn consumer(props: &BTreeMap<String, String>, isolation: &str) -> Result<BaseConsumer, String> {
    consumer_props(props)
        .set("isolation.level", isolation)
        .create()
        .map_err(|e| format!("cannot create a Kafka consumer for the checkpoint topic: {e}"))
}

/// The partition of the checkpoint topic that holds `key`, and the value of the last
/// committed record keyed `key` on it (`None` when there is none yet). `timeout` bounds the whole read (it waits out other producers' open
/// transactions on the partition, which end within their transaction timeout).
pub fn read(
    props: &BTreeMap<String, String>,
    topic: &str,
    key: &str,
    timeout: Duration,
) -> Result<(i32, Option<Vec<u8>>), String> {
    let deadline = Instant::now() + timeout;
    let uncommitted = consumer(props, "read_uncommitted")?;
    let metadata = uncommitted
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("cannot read the metadata of checkpoint topic {topic:?}: {e}"))?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            format!(
                "checkpoint topic {topic:?} does not exist; create it (compacted) before \
                 starting with delivery = \"exactly-once\": kafka-topics.sh --create --topic \
                 {topic} --partitions 1 --config cleanup.policy=compact (see `perapera check`)"
            )
        })?;
    let partition = partition_of(key.as_bytes(), partitions as i32);
    let (_, end) = uncommitted
        .fetch_watermarks(topic, partition, timeout)
        .map_err(|e| format!("cannot read the end of checkpoint topic {topic:?}: {e}"))?;
    drop(uncommitted);
    if end <= 0 {
        return Ok((partition, None));
    }
    let committed = consumer(props, "read_committed")?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Beginning)
        .map_err(|e| e.to_string())?;
    committed
        .assign(&assignment)
        .map_err(|e| format!("cannot read checkpoint topic {topic:?}: {e}"))?;
    let mut last = None;
    // An EOF counts once the stable offset has reached `end`: up to there, every committed
    // record before `end` has been delivered.
    let mut stable = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "reading checkpoint topic {topic:?} partition {partition} to offset {end} did not \
                 finish in {timeout:?} (a transaction of another producer open on it?)"
            ));
        }
        match committed.poll(left.min(Duration::from_millis(500))) {
            Some(Ok(m)) => {
                if m.key() == Some(key.as_bytes()) {
                    last = m.payload().map(<[u8]>::to_vec);
                }
                if m.offset() + 1 >= end {
                    return Ok((partition, last));
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {
                if stable {
                    return Ok((partition, last));
                }
                let (_, lso) = committed
                    .fetch_watermarks(topic, partition, left)
                    .map_err(|e| format!("checkpoint topic {topic:?}: {e}"))?;
                stable = lso >= end;
                if stable {
                    // Read on to the next EOF: records up to `lso` may still be on their way.
                    continue;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Some(Err(e)) => {
                return Err(format!("reading checkpoint topic {topic:?}: {e}"));
            }
            // Nothing more within a fetch wait after the stable offset passed `end`: the
            // fetcher has handed over everything up to it (a commit marker, not a record,
            // may be the last thing before `end`, and raises no second EOF).
            None if stable => return Ok((partition, last)),
            None => {}
        }
    }
}
