//! Start-up wiring: the metrics endpoint, the state directory and its checkpoint, the sink,
//! one reader per source, and the window's shares.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc;

use super::inlets::{share, Inlets};
use super::persist::WriteSchedule;
use super::retry::{Backoff, RetryQueue};
use super::waits::TopicWaits;
use super::window::{Acked, SourceState};
use super::{Pipeline, RunError};
use crate::checkpoint::{Checkpoint, FileOffsets, SourceCheckpoint, StateDir, Watermark};
use crate::config::{Config, Oversize, SinkConfig, SourceConfig, SourceKind};
use crate::ops::http::Endpoint;
use crate::ops::metrics::Stats;
use crate::ops::ratelimit::RateLimit;
use crate::sink::{Ack, Sink};
use crate::source::files::FilesReader;
use crate::source::forward::ForwardReader;
use crate::source::journal::{self, JournalReader, Start};
use crate::source::{Batch, ReaderContext, SourceError};

/// Everything `run` needs once the agent is up.
pub(super) struct Started {
    pub(super) pipeline: Pipeline,
    pub(super) inlets: Inlets,
    pub(super) acks: mpsc::UnboundedReceiver<Ack>,
    pub(super) readers: Vec<JoinHandle<()>>,
    /// Tells the readers to stop.
    pub(super) stop: Arc<AtomicBool>,
    pub(super) limits: Limits,
    /// When the checkpoint is written.
    pub(super) persist: WriteSchedule,
}

/// The window's bounds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// At most this many entries per batch from a source.
    pub(super) batch_entries: usize,
    /// At most about this many bytes per batch.
    pub(super) batch_bytes: usize,
    /// What one source may hold of the window: (entries, bytes).
    pub(super) shares: (usize, usize),
}

/// The counters of a run (kept across the restarts of exactly-once rewinds).
pub(super) fn stats(config: &Config) -> Stats {
    let mut stats = Stats::new(config.sources.iter().map(|s| s.name.as_str()));
    stats.sink = match &config.sink {
        SinkConfig::Kafka(_) => "kafka",
        SinkConfig::Forward(_) => "forward",
        SinkConfig::Stdout => "stdout",
    }
    .to_string();
    if let SinkConfig::Kafka(k) = &config.sink {
        stats
            .txn
            .enabled
            .store(k.exactly_once.is_some(), Ordering::Relaxed);
    }
    stats
}

/// The metrics endpoint, first of all: /health says 503 "starting" until the sources are
/// open. Dropped when `run` returns, whichever way: that stops its thread.
pub(super) fn endpoint(config: &Config, stats: &Arc<Stats>) -> Option<Endpoint> {
    let address = config.metrics.address.as_ref()?;
    match crate::ops::http::spawn(
        address.clone(),
        stats.clone(),
        config.metrics.unhealthy_after,
    ) {
        Ok(endpoint) => Some(endpoint),
        Err(e) => {
            tracing::error!(error = %e, "Cannot start the metrics thread; shipping goes on without it");
            None
        }
    }
}

/// Opens everything, in the order that makes failures clear: the state directory's lock,
/// the sink, and the sources. With `delivery = "exactly-once"` this blocks (the sink
/// initialises transactions and reads the committed checkpoint back): call it off the async
/// runtime's threads.
pub(super) fn start(config: &Config, stats: Arc<Stats>) -> Result<Started, RunError> {
    let state = StateDir::lock(&config.state.directory)?;
    let exactly_once = matches!(&config.sink, SinkConfig::Kafka(k) if k.exactly_once.is_some());
    let local = match state.load() {
        Ok(c) => Some(c),
        // Exactly-once: the file is only a cross-check; Kafka holds the checkpoint.
        Err(e) if exactly_once => {
            tracing::warn!(error = %e, "The local checkpoint file is unreadable; the checkpoint committed in Kafka is used");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let (ack_tx, acks) = mpsc::unbounded_channel();
    let mut sink = Sink::new(&config.sink, ack_tx).map_err(RunError::Sink)?;
    let checkpoint = match sink.transactional() {
        Some(k) => {
            k.open_transactions().map_err(RunError::Unavailable)?;
            super::committed::checkpoint(k.take_committed().flatten(), local, config)?
        }
        None => local.unwrap_or_default(),
    };
    let (inlets, senders) = Inlets::new(config.sources.len());
    let stop = Arc::new(AtomicBool::new(false));
    // A batch is taken only when it fits the window, so the window is a strict bound (it is
    // also the duplicate bound after a crash): batches are at most a quarter of it.
    let batch_entries = (config.pipeline.max_in_flight / 4).clamp(1, 512);
    let batch_bytes = (config.pipeline.max_in_flight_bytes / 4).clamp(1, 1 << 20);
    // One FileOffsets per files source, in its state: the reader resumes from its entries
    // under the keys the pipeline's acknowledgements will use.
    let sources: Vec<SourceState> = config
        .sources
        .iter()
        .map(|s| source_state(s, &checkpoint))
        .collect();
    let mut readers = Vec::new();
    for (index, (source, state)) in config.sources.iter().zip(&sources).enumerate() {
        let cx = ReaderContext {
            index,
            name: source.name.clone(),
            batch_entries,
            batch_bytes,
            stats: stats.clone(),
        };
        match spawn_reader(
            source,
            state,
            &checkpoint,
            cx,
            senders[index].clone(),
            &stop,
        ) {
            Ok(h) => readers.push(h),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                return Err(e.into());
            }
        }
    }
    drop(senders);
    // Each source may hold its share of the window, so that a source whose entries wait (for
    // a topic, say) cannot stop the others; the checkpoint is written once half of what the
    // others may hold waits on it.
    let max_in_flight = config.pipeline.max_in_flight;
    let shares = (
        share(max_in_flight, config.sources.len(), batch_entries),
        share(
            config.pipeline.max_in_flight_bytes,
            config.sources.len(),
            batch_bytes,
        ),
    );
    let persist_at = match config.sources.len() {
        1 => max_in_flight / 2,
        _ => max_in_flight.saturating_sub(shares.0) / 2,
    }
    .max(1);
    tracing::info!(
        sink = sink.kind(),
        sources = config.sources.len(),
        max_in_flight = config.pipeline.max_in_flight,
        "perapera is running"
    );
    let pipeline = Pipeline {
        sources,
        sink,
        oversize: match &config.sink {
            SinkConfig::Kafka(k) => k.oversize.clone(),
            SinkConfig::Stdout | SinkConfig::Forward(_) => Oversize::Truncate,
        },
        in_flight: 0,
        unpersisted: 0,
        retry: RetryQueue::default(),
        topic_fallback: match &config.sink {
            SinkConfig::Kafka(k) => k.topic_fallback.clone(),
            _ => None,
        },
        topic_waits: TopicWaits::default(),
        backoff: Backoff::default(),
        fatal: false,
        closed: None,
        stats,
        limit: RateLimit::new(Duration::from_secs(10)),
        checkpoint,
        state,
        progressed: false,
        txn: exactly_once.then(Default::default),
    };
    Ok(Started {
        pipeline,
        inlets,
        acks,
        readers,
        stop,
        limits: Limits {
            batch_entries,
            batch_bytes,
            shares,
        },
        persist: WriteSchedule::new(
            match &config.sink {
                SinkConfig::Kafka(k) => k
                    .exactly_once
                    .as_ref()
                    .map_or(config.state.checkpoint_interval, |e| e.transaction_interval),
                _ => config.state.checkpoint_interval,
            },
            persist_at,
        ),
    })
}

/// Starts the reader of `source`, resuming from its checkpoint.
fn spawn_reader(
    source: &SourceConfig,
    state: &SourceState,
    checkpoint: &Checkpoint,
    cx: ReaderContext,
    tx: mpsc::Sender<Batch>,
    stop: &Arc<AtomicBool>,
) -> Result<JoinHandle<()>, SourceError> {
    match &source.kind {
        SourceKind::Journal(jc) => {
            let start = match checkpoint.journal_cursor(&source.name) {
                Some(c) => Start::After(c.to_string()),
                None => Start::Fresh(jc.start_at),
            };
            tracing::info!(source = %source.name, start = ?start, "Opening journal source");
            let (index, stats) = (cx.index, cx.stats.clone());
            let reader = JournalReader {
                cx,
                config: jc.clone(),
                start,
            }
            .spawn(tx, stop.clone());
            // Once the journal opened: a journal that cannot be opened is reported once.
            if reader.is_ok() {
                journal::spawn_prober(index, source.name.clone(), jc.clone(), stats, stop.clone());
            }
            reader
        }
        SourceKind::Files(fc) => {
            // `None`: this source never ran (no entry in the checkpoint).
            let saved = match (&state.acked, checkpoint.files(&source.name)) {
                (Acked::Files(offsets), Some(_)) => Some(offsets.saved()),
                _ => None,
            };
            tracing::info!(source = %source.name, include = ?fc.include,
                files_in_checkpoint = saved.as_ref().map_or(0, Vec::len), "Opening files source");
            FilesReader {
                cx,
                config: fc.clone(),
                saved,
            }
            .spawn(tx, stop.clone())
        }
        SourceKind::Forward(fc) => ForwardReader {
            cx,
            config: fc.clone(),
        }
        .spawn(tx, stop.clone()),
    }
}

/// A source's state in the pipeline, from its checkpoint.
fn source_state(s: &SourceConfig, checkpoint: &Checkpoint) -> SourceState {
    SourceState {
        name: s.name.clone(),
        window: Watermark::default(),
        bytes: 0,
        acked: match &s.kind {
            SourceKind::Journal(j) => Acked::Journal {
                acked: None,
                saved_entry_us: match checkpoint.sources.get(&s.name) {
                    Some(SourceCheckpoint::Journal { entry_time_us, .. }) => Some(*entry_time_us),
                    _ => None,
                },
                start_at: j.start_at,
            },
            SourceKind::Files(fc) => Acked::Files(FileOffsets::new(
                checkpoint.files(&s.name).unwrap_or_default(),
                fc.forget_after,
            )),
            SourceKind::Forward(_) => Acked::Forward,
        },
        dirty: false,
    }
}
