//! Transactions (`delivery = "exactly-once"`): the blocking librdkafka calls, what their
//! errors mean for the pipeline, and the checkpoint record that each transaction carries.
//!
//! Every call here but `begin` blocks (on the coordinator's round trips, on the flush of what
//! the transaction holds): the pipeline runs them on a blocking thread, never on the async
//! runtime's own.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::report::{Context, Delivery};
use crate::sink::TxnError;

/// The id of the checkpoint record's delivery report: no source's (the pipeline ignores it;
/// a failed checkpoint record fails the commit).
pub const CHECKPOINT_ID: u64 = u64::MAX;

/// Classifies a transactional call's error (librdkafka's rules: retriable, requires abort,
/// fatal; anything else is treated as fatal).
pub fn classify(e: &KafkaError) -> TxnError {
    let text = e.to_string();
    let fenced = is_fenced;
    match e {
        KafkaError::Transaction(err) if fenced(err.code()) => TxnError::Fenced(text),
        KafkaError::Transaction(err) if err.is_retriable() => TxnError::Retriable(text),
        KafkaError::Transaction(err) if err.txn_requires_abort() => TxnError::Abortable(text),
        other if other.rdkafka_error_code().is_some_and(fenced) => TxnError::Fenced(text),
        _ => TxnError::Fatal(text),
    }
}

/// A fatal producer error: fenced (another producer took our transactional id, or our epoch
/// was bumped) or otherwise fatal.
pub fn fenced_or_fatal(code: RDKafkaErrorCode, reason: String) -> TxnError {
    if is_fenced(code) {
        TxnError::Fenced(reason)
    } else {
        TxnError::Fatal(format!("{code:?}: {reason}"))
    }
}

fn is_fenced(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
    )
}

/// `init_transactions`: fences an older producer with our transactional id and aborts (or
/// completes) its open transaction. Retried while the coordinator is not reachable yet.
pub fn init(producer: &BaseProducer<Context>, timeout: Duration) -> Result<(), TxnError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match producer.init_transactions(left.max(Duration::from_millis(1))) {
            Ok(()) => return Ok(()),
            Err(e) => match classify(&e) {
                TxnError::Retriable(reason) if !left.is_zero() => {
                    tracing::warn!(%reason, "Kafka transactions not initialised yet; retrying");
                    std::thread::sleep(Duration::from_millis(500).min(left));
                }
                other => return Err(other),
            },
        }
    }
}

/// `begin_transaction` (a local call).
pub fn begin(producer: &BaseProducer<Context>) -> Result<(), TxnError> {
    producer.begin_transaction().map_err(|e| classify(&e))
}

/// Enqueues the checkpoint record (`key` = the transactional id) on `partition` of the
/// checkpoint topic, inside the open transaction.
pub fn produce_checkpoint(
    producer: &BaseProducer<Context>,
    topic: &str,
    partition: i32,
    key: &str,
    value: Vec<u8>,
) -> Result<(), TxnError> {
    let payload = Arc::new(value);
    let delivery = Box::new(Delivery {
        id: CHECKPOINT_ID,
        _payload: payload.clone(),
    });
    let record = BaseRecord::with_opaque_to(topic, delivery)
        .partition(partition)
        .key(key)
        .payload(payload.as_slice());
    producer
        .send(record)
        .map_err(|(e, _)| TxnError::Abortable(format!("checkpoint record to {topic}: {e}")))
}

/// `commit_transaction`: flushes what the transaction holds, then commits. Blocks.
///
/// Straight through librdkafka: rdkafka's `commit_transaction` first runs its own `flush`,
/// which polls in steps of 100 ms that always wait out the step, so every commit took at
/// least 100 ms. librdkafka's commit waits for the outstanding messages itself, and the
/// delivery reports are served meanwhile by the report thread (`poller`), as librdkafka
/// requires with the event API.
pub fn commit(producer: &BaseProducer<Context>, timeout: Duration) -> Result<(), TxnError> {
    use rdkafka::bindings as rd;
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: a live producer handle; a returned error is ours to read, then destroyed once.
    unsafe {
        let error = rd::rd_kafka_commit_transaction(producer.client().native_ptr(), ms);
        if error.is_null() {
            return Ok(());
        }
        let b = rd::rd_kafka_error_string(error);
        let text = if b.is_null() {
            String::from("commit failed")
        } else {
            std::ffi::CStr::from_ptr(b).to_string_lossy().into_owned()
        };
        let code = RDKafkaErrorCode::from(rd::rd_kafka_error_code(error));
        let result = if is_fenced(code) {
            TxnError::Fenced(text)
        } else if rd::rd_kafka_error_is_retriable(error) != 0 {
            TxnError::Retriable(text)
        } else if rd::rd_kafka_error_txn_requires_abort(error) != 0 {
            TxnError::Abortable(text)
        } else {
            TxnError::Fatal(format!("{code:?}: {text}"))
        };
        rd::rd_kafka_error_destroy(error);
        Err(result)
    }
}

/// `abort_transaction`: purges what the transaction holds and aborts it. Blocks.
pub fn abort(producer: &BaseProducer<Context>, timeout: Duration) -> Result<(), TxnError> {
    producer
        .abort_transaction(timeout)
        .map_err(|e| classify(&e))
}

/// The partition of the checkpoint topic that holds `key`: Kafka's default partitioner
/// (murmur2, as the Java client computes it), so that Kafka's own tools agree.
pub fn partition_of(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) as i32) % partitions.max(1)
}

/// Kafka's `Utils.murmur2`.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, &b) in rest.iter().enumerate().rev() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_java_partitioner() {
        // Values printed by org.apache.kafka.common.utils.Utils.murmur2 (kafka-clients 4.1.1).
        for (input, java) in [
            ("21", -973_932_308i32),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            ("abc", 479_470_107),
            ("", 275_646_681),
            ("x", 2_121_525_046),
        ] {
            assert_eq!(murmur2(input.as_bytes()) as i32, java, "{input}");
        }
        assert_eq!(partition_of(b"abc", 1), 0);
        assert!((0..50).contains(&partition_of(b"perapera-x", 50)));
    }
}
