//! `perapera check`: the configuration explained (what each source reads and where it
//! resumes, where entries go), with the errors `run` would stop on.

use std::io::Write;

use crate::checkpoint::{self, SourceCheckpoint, StateError};
use crate::config::{Config, SinkConfig, SourceKind};
use crate::source::SourceError;

/// Why the configuration would not run.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A setting that cannot work on this machine.
    #[error("{0}")]
    Config(String),
    /// The checkpoint cannot be read.
    #[error(transparent)]
    Checkpoint(StateError),
    /// The journal rejects a checkpointed cursor.
    #[error(transparent)]
    BadCursor(SourceError),
}

/// A report line; a closed output is not worth an error here.
macro_rules! wln {
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
    }};
}

/// One line on what a source reads.
fn describe_source(kind: &SourceKind) -> String {
    match kind {
        SourceKind::Journal(j) => {
            let what = match (&j.directory, &j.namespace) {
                (Some(d), _) => format!("journal directory {}", d.display()),
                (None, Some(ns)) => format!("journal namespace {ns:?}"),
                (None, None) => "the local system journal".to_string(),
            };
            let matches = if j.matches.is_empty() {
                "all entries".to_string()
            } else {
                format!("matches {:?}", j.matches)
            };
            format!(
                "{what}, {matches}, start_at {:?} when there is no checkpoint",
                j.start_at
            )
        }
        SourceKind::Files(f) => format!(
            "files {:?}{}, format {:?}, start_at {:?} for files first seen",
            f.include,
            if f.exclude.is_empty() {
                String::new()
            } else {
                format!(" excluding {:?}", f.exclude)
            },
            f.format,
            f.start_at
        ),
        SourceKind::Forward(f) => format!(
            "forward listener on {}{}{}; acks each request with a chunk once every entry of it is \
             acknowledged by the sink (no checkpoint: the senders keep the data until then)",
            f.listen,
            if f.tls.is_some() { ", TLS" } else { "" },
            if f.shared_key.is_some() {
                ", shared-key handshake"
            } else {
                ""
            },
        ),
    }
}

/// Prints what `config` would read and where it would go to `out`; an error for what would
/// stop `run`.
pub fn check(config: &Config, out: &mut impl Write) -> Result<(), CheckError> {
    let origin = config
        .path
        .as_ref()
        .map_or("the embedded default".to_string(), |p| {
            p.display().to_string()
        });
    wln!(out, "Configuration {origin} is valid.");
    wln!(out, "State directory: {}", config.state.directory.display());
    let mut saved =
        checkpoint::read_checkpoint(&config.state.directory.join(checkpoint::CHECKPOINT_FILE))
            .map_err(Some);
    for s in &config.sources {
        wln!(out, "Source {:?}: {}", s.name, describe_source(&s.kind));
        if let SourceKind::Files(f) = &s.kind {
            let matching: usize = f
                .include
                .iter()
                .filter_map(|p| glob::glob(p).ok())
                .map(|paths| paths.filter_map(Result::ok).filter(|p| p.is_file()).count())
                .sum();
            wln!(out, "  {matching} files match now");
        }
        if let SourceKind::Journal(crate::config::JournalConfig {
            directory: Some(d), ..
        }) = &s.kind
        {
            if !d.is_dir() {
                return Err(CheckError::Config(format!(
                    "source {:?}: directory {} does not exist or is not a directory",
                    s.name,
                    d.display()
                )));
            }
        }
        match &mut saved {
            Ok(cp) => match cp.sources.get(&s.name) {
                Some(SourceCheckpoint::Journal { cursor, .. }) => {
                    if let SourceKind::Journal(jc) = &s.kind {
                        match crate::source::journal::check_cursor(&s.name, jc, cursor) {
                            Ok(()) => {}
                            Err(e @ SourceError::BadCursor { .. }) => {
                                return Err(CheckError::BadCursor(e))
                            }
                            Err(e) => {
                                wln!(out, "  cannot open the journal to check the cursor: {e}")
                            }
                        }
                    }
                    wln!(out, "  resumes after cursor {cursor}")
                }
                Some(SourceCheckpoint::Files { files }) => {
                    wln!(
                        out,
                        "  resumes {} files at their checkpointed offsets",
                        files.len()
                    )
                }
                None if matches!(s.kind, SourceKind::Forward(_)) => {}
                None => wln!(out, "  no checkpoint yet"),
            },
            Err(e) => {
                if let Some(e) = e.take() {
                    return Err(CheckError::Checkpoint(e));
                }
            }
        }
    }
    match &config.sink {
        SinkConfig::Stdout => wln!(out, "Sink: stdout (one JSON object per line)"),
        SinkConfig::Kafka(k) => {
            wln!(
                out,
                "Sink: kafka, brokers {}, topic {}, key {}, oversize policy {:?}",
                k.librdkafka
                    .get("bootstrap.servers")
                    .map_or("(mock)", String::as_str),
                k.topic,
                k.key
                    .as_ref()
                    .map_or("none".to_string(), ToString::to_string),
                k.oversize
            );
            wln!(out,
                "  at most {} distinct topics; entries whose topic is unknown, not authorized or beyond that {}",
                k.max_topics,
                k.topic_fallback.as_ref().map_or_else(
                    || "wait in the window (/health turns 503 naming the topic)".to_string(),
                    |t| format!("go to topic_fallback {t:?}")
                )
            );
            match &k.exactly_once {
                None => wln!(
                    out,
                    "  delivery at-least-once: after a crash, entries in flight may arrive twice \
                     (consumers deduplicate by __CURSOR or the position header)"
                ),
                Some(eo) => exactly_once(out, eo),
            }
            for (key, v) in &k.librdkafka {
                wln!(out, "  librdkafka {key} = {v}");
            }
        }
        SinkConfig::Forward(f) => wln!(
            out,
            "Sink: forward to {} (failover in this order), tag {}, ack_timeout {:?}{}{}{}",
            f.servers.join(", "),
            f.tag,
            f.ack_timeout,
            if f.tls.is_some() { ", TLS" } else { "" },
            if f.shared_key.is_some() {
                ", shared-key handshake"
            } else {
                ""
            },
            if f.gzip { ", gzip" } else { "" },
        ),
    }
    Ok(())
}

/// What `delivery = "exactly-once"` needs, and where it keeps its checkpoint.
fn exactly_once(out: &mut impl Write, eo: &crate::config::ExactlyOnce) {
    wln!(
        out,
        "  delivery exactly-once: entries and the positions that cover them are committed in \
         one Kafka transaction every {:?} (or when half the window waits)",
        eo.transaction_interval
    );
    wln!(
        out,
        "  transactional id {:?} ({}); two running instances must never share it",
        eo.transactional_id,
        if eo.transactional_id_configured {
            "configured"
        } else {
            "from the machine id and the state directory"
        }
    );
    wln!(
        out,
        "  checkpoint topic {:?}: it must exist, compacted, before the first start: \
         kafka-topics.sh --bootstrap-server BROKER --create --topic {} --partitions 1 \
         --replication-factor 3 --config cleanup.policy=compact",
        eo.checkpoint_topic,
        eo.checkpoint_topic
    );
    wln!(
        out,
        "  resumes from the checkpoint committed in Kafka (the local file is written after each \
         commit, for `cursor show` and as a cross-check)"
    );
    wln!(
        out,
        "  requires: brokers with transactions (Kafka 0.11+, transaction.state.log.* settings \
         met), message.max.bytes no larger than the topics' max.message.bytes (a batch the \
         broker refuses aborts the transaction), and consumers with \
         isolation.level=read_committed (librdkafka's default; the Java client's is \
         read_uncommitted, which also shows entries of aborted transactions)"
    );
}
