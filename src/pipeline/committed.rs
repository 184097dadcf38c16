//! Exactly-once start: the checkpoint committed in Kafka is the one to resume from; the local
//! file is compared with it.
//!
//! Kafka wins because the file is written *after* each commit: a crash between the two leaves
//! the file one transaction behind (resuming from it would send that transaction's entries
//! again), and a file restored from a backup or copied from another host says nothing about
//! what Kafka holds. The committed record is what read_committed consumers have seen.

use std::path::Path;

use super::RunError;
use crate::checkpoint::{parse_checkpoint, Checkpoint, SourceCheckpoint};
use crate::config::{Config, SinkConfig};

/// The checkpoint to resume from: `committed` (the record read back from the checkpoint
/// topic; `None`: nothing committed yet, start fresh), cross-checked against `local`.
pub(super) fn checkpoint(
    committed: Option<Vec<u8>>,
    local: Option<Checkpoint>,
    config: &Config,
) -> Result<Checkpoint, RunError> {
    let (topic, id) = match &config.sink {
        SinkConfig::Kafka(k) => k
            .exactly_once
            .as_ref()
            .map_or((String::new(), String::new()), |e| {
                (e.checkpoint_topic.clone(), e.transactional_id.clone())
            }),
        _ => (String::new(), String::new()),
    };
    let from_kafka = match committed {
        Some(bytes) => {
            let name = format!("kafka:{topic}/{id}");
            parse_checkpoint(&bytes, Path::new(&name)).map_err(|e| {
                RunError::Sink(format!(
                    "{e}; the checkpoint committed in Kafka cannot be read, so perapera cannot \
                     tell what was delivered. Delete the record (produce a tombstone for key \
                     {id:?} to {topic:?}) to start over as configured by start_at"
                ))
            })?
        }
        None => Checkpoint {
            version: Checkpoint::VERSION,
            ..Checkpoint::default()
        },
    };
    if let Some(local) = &local {
        for name in config.sources.iter().map(|s| s.name.as_str()) {
            let (k, l) = (
                position(from_kafka.sources.get(name)),
                position(local.sources.get(name)),
            );
            if k != l {
                tracing::warn!(source = name, kafka = %k, local_file = %l,
                    "The local checkpoint file differs from the checkpoint committed in Kafka; \
                     resuming from Kafka's (the file is written after each commit, so a crash \
                     between the two leaves it behind)");
            }
        }
    }
    Ok(from_kafka)
}

/// A source's position, for comparison and logs (times left out: they differ harmlessly).
fn position(c: Option<&SourceCheckpoint>) -> String {
    match c {
        None => "none".into(),
        Some(SourceCheckpoint::Journal { cursor, .. }) => cursor.clone(),
        Some(SourceCheckpoint::Files { files }) => {
            let mut f: Vec<String> = files
                .iter()
                .map(|f| format!("{}@{}", f.path, f.offset))
                .collect();
            f.sort();
            f.join(",")
        }
    }
}
