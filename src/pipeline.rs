//! Source → sink wiring: the in-flight window, acknowledgements, retries, the oversize policy,
//! checkpoints and shutdown. One task owns all of this state, so the hot path takes no locks.
//!
//! Every entry read gets a slot in its source's [`Watermark`] and an id that travels through
//! the sink and comes back in an [`Ack`]. The id packs (source, attempt, sequence): re-sending
//! an entry bumps its attempt, so a stale failure report of an earlier attempt (for example
//! the purge reports of a producer we replaced) is ignored, while a success of any attempt
//! counts: the entry is in Kafka.
//!
//! The window (`max_in_flight` entries) counts every entry that a restart would send again:
//! from the position in the checkpoint file on disk onwards, acknowledged or not. An entry
//! gives its place back only once a checkpoint covering it is written, and the checkpoint is
//! written as soon as half the window waits on it (or every `checkpoint_interval`), so the
//! window is the duplicate bound after SIGKILL whatever the interval. `max_in_flight_bytes`
//! bounds the memory of entries not yet acknowledged. While either is full the pipeline takes
//! no batches, the sources' bounded channels fill and they stop reading: a sink outage of any
//! length costs no memory.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::checkpoint::{
    Checkpoint, FileOffsets, SourceCheckpoint, StateDir, StateError, Watermark,
};
use crate::clock::unix_ms;
use crate::config::{Config, Oversize, SinkConfig, SourceKind};
use crate::ops::metrics::Stats;
use crate::ops::notify::Notifier;
use crate::ops::ratelimit::RateLimit;
use crate::record::{Position, Record, Value};
use crate::sink::{Ack, DeliveryError, Outgoing, SendError, Sink};
use crate::source::files::FilesReader;
use crate::source::forward::ForwardReader;
use crate::source::journal::{self, JournalReader, Start};
use crate::source::{Batch, SourceError};

mod inlets;
mod waits;
use inlets::{share, Inlets};
use waits::TopicWaits;

/// Why `run` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// State directory, lock or checkpoint.
    #[error(transparent)]
    State(#[from] StateError),
    /// A source could not start.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The sink could not be created or recreated.
    #[error("sink: {0}")]
    Sink(String),
    /// A source's reader ended on its own.
    #[error("source reader stopped unexpectedly; see the errors above")]
    SourceEnded,
    /// The sink's output is gone for good (stdout closed).
    #[error("stopped: {0}; the checkpoint covers what was written, the rest is shipped on the next start")]
    OutputClosed(String),
}

/// What a finished run reports.
#[derive(Debug, Default)]
pub struct Summary {
    /// Entries still unacknowledged at exit (re-sent on the next start).
    pub unacked: usize,
}

const SEQ_BITS: u32 = 40;
const ATTEMPT_BITS: u32 = 16;

fn pack(source: usize, attempt: u16, seq: u64) -> u64 {
    ((source as u64) << (SEQ_BITS + ATTEMPT_BITS))
        | (u64::from(attempt) << SEQ_BITS)
        | (seq & ((1 << SEQ_BITS) - 1))
}

fn unpack(id: u64) -> (usize, u16, u64) {
    (
        (id >> (SEQ_BITS + ATTEMPT_BITS)) as usize,
        (id >> SEQ_BITS) as u16,
        id & ((1 << SEQ_BITS) - 1),
    )
}

/// An entry between read and acknowledgement.
struct Slot {
    position: Position,
    entry_time_us: u64,
    /// `None` once done (acknowledged or finally handled).
    record: Option<Record>,
    bytes: usize,
    attempt: u16,
    rejections: u8,
    dead_letter: bool,
    timestamp_now: bool,
    /// Sent in a batch of its own: the broker refused a batch holding it as too large.
    alone: bool,
    /// Sent to the fallback topic instead of this one (its topic was unknown or over the bound).
    meant_for: Option<Box<str>>,
    /// The topic it waits for (policy "wait").
    waits_for: Option<Arc<str>>,
}

struct SourceState {
    name: String,
    window: Watermark<Slot>,
    /// Bytes of this source's entries not yet acknowledged.
    bytes: usize,
    acked: Acked,
    /// `acked` changed since the checkpoint was last written.
    dirty: bool,
    /// Journal sources: the entry time in the checkpoint loaded at start.
    saved_entry_us: Option<u64>,
    /// Journal sources: where reading starts without a checkpoint (for the lag).
    start_at: crate::config::StartAt,
}

/// What a source's checkpoint will say.
enum Acked {
    /// Last acknowledged (cursor, entry time), if any.
    Journal(Option<(String, u64)>),
    /// Per file identity.
    Files(FileOffsets),
    /// Nothing to persist: a done entry counts towards its request's ack.
    Forward,
}

impl Acked {
    /// Folds the acknowledged slot in (slots arrive in read order).
    fn fold(&mut self, slot: Slot, now: u64) {
        match (self, slot.position) {
            (Acked::Journal(acked), Position::Cursor(cursor)) => {
                *acked = Some((cursor, slot.entry_time_us));
            }
            (Acked::Files(files), Position::File { file, offset }) => {
                files.acked(&file, offset, now);
            }
            // Forward entries count towards their request's ack when done (see `finish`): the
            // requests of one source are independent, and one waiting entry must not hold back
            // the acks of every request read after it.
            _ => {}
        }
    }

    /// The checkpoint entry.
    fn checkpoint(&mut self, now: u64) -> Option<SourceCheckpoint> {
        match self {
            Acked::Journal(None) => None,
            Acked::Journal(Some((cursor, time))) => Some(SourceCheckpoint::Journal {
                cursor: cursor.clone(),
                entry_time_us: *time,
                acked_at_ms: now,
            }),
            Acked::Files(files) => Some(SourceCheckpoint::Files {
                files: files.checkpoint(now),
            }),
            Acked::Forward => None,
        }
    }
}

/// How long to wait before re-sending after a transient failure: doubles per consecutive
/// failure, 100 ms, 200 ms, ... capped at 30 s; reset by any success.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A full client queue is backpressure: retry soon, without growing the backoff.
const QUEUE_FULL_DELAY: Duration = Duration::from_millis(20);
/// An entry rejected as invalid is retried as is this many times (a batch-level rejection hits
/// innocent neighbours too) before the oversize policy applies.
const INVALID_RETRIES: u8 = 3;
/// Truncation attempts before a too-large entry is dropped.
const TRUNCATE_ATTEMPTS: u8 = 6;

struct Pipeline {
    sources: Vec<SourceState>,
    sink: Sink,
    oversize: Oversize,
    /// Entries a restart would re-send: slots after the watermark (unacknowledged, or
    /// acknowledged behind one that is not) plus `unpersisted`.
    in_flight: usize,
    /// Entries the watermark passed that no written checkpoint covers yet.
    unpersisted: usize,
    /// Write the checkpoint once this many entries wait for it.
    persist_at: usize,
    /// Entries to send again: when, source, sequence.
    retry: Vec<(Instant, usize, u64)>,
    retry_at: Option<Instant>,
    /// `[sink] topic_fallback`.
    topic_fallback: Option<String>,
    topic_waits: TopicWaits,
    backoff: Duration,
    fatal: bool,
    /// The output is gone for good: stop.
    closed: Option<String>,
    stats: Arc<Stats>,
    limit: RateLimit,
    checkpoint: Checkpoint,
    state: StateDir,
    /// An acknowledgement arrived since the last tick.
    progressed: bool,
}

/// Runs perapera until `shutdown` resolves, then drains and writes the final checkpoint.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<Summary, RunError> {
    let mut stats = Stats::new(config.sources.iter().map(|s| s.name.as_str()));
    stats.sink = match &config.sink {
        SinkConfig::Kafka(_) => "kafka",
        SinkConfig::Forward(_) => "forward",
        SinkConfig::Stdout => "stdout",
    }
    .to_string();
    let stats = Arc::new(stats);
    // The endpoint comes up first: /health says 503 "starting" until the sources are open.
    // Dropped when `run` returns, whichever way: that stops the endpoint's thread.
    let _endpoint = match &config.metrics.address {
        Some(address) => {
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
        None => None,
    };
    let state = StateDir::lock(&config.state.directory)?;
    let checkpoint = state.load()?;
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    let sink = Sink::new(&config.sink, ack_tx).map_err(RunError::Sink)?;
    let (mut inlets, senders) = Inlets::new(config.sources.len());
    let stop = Arc::new(AtomicBool::new(false));
    // A batch is taken only when it fits the window, so the window is a strict bound (it is
    // also the duplicate bound after a crash): batches are at most a quarter of it.
    let batch_entries = (config.pipeline.max_in_flight / 4).clamp(1, 512);
    let batch_bytes = (config.pipeline.max_in_flight_bytes / 4).clamp(1, 1 << 20);
    let mut readers = Vec::new();
    for (index, source) in config.sources.iter().enumerate() {
        let spawned = match &source.kind {
            SourceKind::Journal(jc) => {
                let start = match checkpoint.journal_cursor(&source.name) {
                    Some(c) => Start::After(c.to_string()),
                    None => Start::Fresh(jc.start_at),
                };
                tracing::info!(source = %source.name, start = ?start, "Opening journal source");
                let reader = JournalReader {
                    index,
                    name: source.name.clone(),
                    config: jc.clone(),
                    start,
                    batch_entries,
                    batch_bytes,
                    stats: stats.clone(),
                }
                .spawn(senders[index].clone(), stop.clone());
                // Once the journal opened: a journal that cannot be opened is reported once.
                if reader.is_ok() {
                    journal::spawn_prober(
                        index,
                        source.name.clone(),
                        jc.clone(),
                        stats.clone(),
                        stop.clone(),
                    );
                }
                reader
            }
            SourceKind::Files(fc) => {
                let saved = checkpoint
                    .files(&source.name)
                    .map(|f| FileOffsets::new(f, fc.forget_after).saved());
                tracing::info!(source = %source.name, include = ?fc.include,
                    files_in_checkpoint = saved.as_ref().map_or(0, Vec::len), "Opening files source");
                FilesReader {
                    index,
                    name: source.name.clone(),
                    config: fc.clone(),
                    saved,
                    batch_entries,
                    batch_bytes,
                    stats: stats.clone(),
                }
                .spawn(senders[index].clone(), stop.clone())
            }
            SourceKind::Forward(fc) => ForwardReader {
                index,
                name: source.name.clone(),
                config: fc.clone(),
                batch_entries,
                batch_bytes,
                stats: stats.clone(),
            }
            .spawn(senders[index].clone(), stop.clone()),
        };
        match spawned {
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
    let oversize = match &config.sink {
        SinkConfig::Kafka(k) => k.oversize.clone(),
        SinkConfig::Stdout | SinkConfig::Forward(_) => Oversize::Truncate,
    };
    tracing::info!(
        sink = sink.kind(),
        sources = config.sources.len(),
        max_in_flight = config.pipeline.max_in_flight,
        "perapera is running"
    );
    let mut p = Pipeline {
        sources: config
            .sources
            .iter()
            .map(|s| SourceState {
                name: s.name.clone(),
                window: Watermark::default(),
                bytes: 0,
                acked: match &s.kind {
                    SourceKind::Journal(_) => Acked::Journal(None),
                    SourceKind::Files(fc) => Acked::Files(FileOffsets::new(
                        checkpoint.files(&s.name).unwrap_or_default(),
                        fc.forget_after,
                    )),
                    SourceKind::Forward(_) => Acked::Forward,
                },
                dirty: false,
                saved_entry_us: match checkpoint.sources.get(&s.name) {
                    Some(SourceCheckpoint::Journal { entry_time_us, .. }) => Some(*entry_time_us),
                    _ => None,
                },
                start_at: match &s.kind {
                    SourceKind::Journal(j) => j.start_at,
                    _ => crate::config::StartAt::Head,
                },
            })
            .collect(),
        sink,
        oversize,
        in_flight: 0,
        unpersisted: 0,
        persist_at,
        retry: Vec::new(),
        retry_at: None,
        topic_fallback: match &config.sink {
            SinkConfig::Kafka(k) => k.topic_fallback.clone(),
            _ => None,
        },
        topic_waits: TopicWaits::default(),
        backoff: BACKOFF_MIN,
        fatal: false,
        closed: None,
        stats: stats.clone(),
        limit: RateLimit::new(Duration::from_secs(10)),
        checkpoint,
        state,
        progressed: false,
    };
    let mut notifier = Notifier::from_env();
    let tick = notifier.tick();
    // With nothing in flight the loop wakes only this often for the gauges, /health's
    // liveness and the watchdog (each pass that happens anyway ticks when a tick is due).
    let idle_tick = notifier
        .watchdog()
        .map_or(IDLE_TICK, |w| w / 2)
        .min(config.metrics.unhealthy_after / 4)
        .max(tick);
    let mut next_tick = Instant::now();
    let mut next_status = Instant::now() + STATUS_EVERY;
    p.tick(true);
    notifier.ready(&p.status_line());
    if let Some(w) = notifier.watchdog() {
        tracing::info!(watchdog = ?w, "systemd watchdog enabled; pinging from the pipeline loop");
    }

    let interval = config.state.checkpoint_interval;
    // Part of shutdown_timeout is kept for the final checkpoint write, the producer's flush and
    // its drop, so that the process is gone within shutdown_timeout.
    let close_reserve = (config.pipeline.shutdown_timeout / 5).min(Duration::from_secs(1));
    // Armed only while a position waits to be written: idle, nothing wakes for it.
    let mut next_checkpoint: Option<Instant> = None;
    // The last write (attempt): after a start the first advance is written at once, then at
    // most every `interval`, so a process killed soon after it started re-sends at most what
    // was in flight, not everything since it started.
    let mut last_write: Option<Instant> = None;
    // Whether a write has covered an acknowledged advance yet: a write of file events alone
    // (where reading starts) does not use up the first advance's.
    let mut advance_written = false;
    let mut deadline: Option<Instant> = None;
    let mut sources_open = true;
    let mut result = Ok(());
    tokio::pin!(shutdown);
    loop {
        let room = deadline.is_none()
            && sources_open
            && p.in_flight + batch_entries <= config.pipeline.max_in_flight
            && p.in_flight_bytes() + batch_bytes <= config.pipeline.max_in_flight_bytes;
        let retry_at = p.retry_at;
        tokio::select! {
            biased;
            () = &mut shutdown, if deadline.is_none() => {
                tracing::info!(in_flight = p.in_flight, timeout = ?config.pipeline.shutdown_timeout,
                    "Shutting down: stopped reading, waiting for in-flight acknowledgements");
                notifier.stopping(&format!("Stopping: waiting for {} in-flight acknowledgements", p.unacked()));
                stop.store(true, Ordering::Relaxed);
                deadline = Some(Instant::now() + config.pipeline.shutdown_timeout);
            }
            Some(ack) = ack_rx.recv() => {
                p.on_ack(ack);
                while let Ok(ack) = ack_rx.try_recv() {
                    p.on_ack(ack);
                }
            }
            batch = inlets.recv(|i| p.admits(i, shares, (batch_entries, batch_bytes))), if room => match batch {
                Some(batch) => p.submit(batch),
                None => {
                    sources_open = false;
                    if deadline.is_none() {
                        result = Err(RunError::SourceEnded);
                        deadline = Some(Instant::now() + config.pipeline.shutdown_timeout);
                    }
                }
            },
            () = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                p.resend_due();
            }
            () = sleep_until(if p.unacked() == 0 && retry_at.is_none() && deadline.is_none() {
                next_tick + (idle_tick - tick)
            } else {
                next_tick
            }) => {}
            () = sleep_until(next_checkpoint.unwrap_or_else(Instant::now)), if next_checkpoint.is_some() => {
                next_checkpoint = None;
            }
            () = sleep_until(deadline.map_or_else(Instant::now, |d| d.checked_sub(close_reserve).unwrap_or(d))), if deadline.is_some() => {
                tracing::warn!(unacknowledged = p.unacked(),
                    "Shutdown timeout reached; unacknowledged entries will be re-sent on restart");
                break;
            }
        }
        // Every branch may finish slots (acks, or the oversize policy at send time).
        p.advance();
        if let Some(reason) = p.closed.take() {
            result = Err(RunError::OutputClosed(reason));
            break;
        }
        if p.fatal {
            p.fatal = false;
            if let Err(e) = p.recreate_sink() {
                result = Err(RunError::Sink(e));
                break;
            }
        }
        if p.sources.iter().any(|s| s.dirty) {
            let now = Instant::now();
            let due = last_write.map_or(now, |t| t + interval);
            let first_advance = !advance_written && p.unpersisted > 0;
            if now >= due || first_advance || p.unpersisted >= p.persist_at {
                advance_written |= p.unpersisted > 0;
                p.write_checkpoint();
                last_write = Some(now);
                next_checkpoint = None;
            } else if next_checkpoint.is_none() {
                next_checkpoint = Some(due);
            }
        }
        // Liveness: checked on every pass (a busy loop must not starve the watchdog), so a
        // WATCHDOG=1 means this loop really runs.
        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + tick;
            let status_due = now >= next_status;
            p.tick(status_due);
            notifier.alive();
            if status_due {
                next_status = now + STATUS_EVERY;
                if deadline.is_none() {
                    notifier.status(&p.status_line());
                }
            }
        }
        if deadline.is_some() && p.unacked() == 0 {
            break; // every slot is done; the final checkpoint is written below
        }
    }
    stop.store(true, Ordering::Relaxed);
    // Apply what arrived last, write the final checkpoint, then release the client.
    while let Ok(ack) = ack_rx.try_recv() {
        p.on_ack(ack);
    }
    p.advance();
    p.write_checkpoint();
    let flush_time = deadline.map_or(Duration::ZERO, |d| {
        d.saturating_duration_since(Instant::now())
            .saturating_sub(close_reserve / 2)
    });
    let unacked = p.unacked();
    let Pipeline {
        sink,
        state,
        sources,
        ..
    } = p;
    sink.close(flush_time);
    drop(state);
    // The entries still held go (forward connections waiting on acks of theirs end), and
    // readers blocked on a full channel see it closed.
    drop(sources);
    inlets.close();
    for line in stats.summary() {
        tracing::info!("Totals: {line}");
    }
    let join = tokio::task::spawn_blocking(move || {
        readers.into_iter().for_each(|h| {
            let _ = h.join();
        })
    });
    let _ = tokio::time::timeout(Duration::from_secs(2), join).await;
    result.map(|()| Summary { unacked })
}

/// The loop's tick while nothing is in flight (see `idle_tick` in [`run`]).
const IDLE_TICK: Duration = Duration::from_secs(5);

/// How often the lag gauges and the systemd status line are refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(5);

impl Pipeline {
    /// Publishes the liveness and in-flight gauges (and, with `lag`, the lag gauges, which
    /// `stat` files).
    fn tick(&mut self, lag: bool) {
        let now = unix_ms();
        let unacked = self.unacked() as u64;
        self.stats.loop_at_ms.store(now, Ordering::Relaxed);
        self.stats.unacked.store(unacked, Ordering::Relaxed);
        self.stats
            .topics_in_use
            .store(self.sink.topics_in_use() as u64, Ordering::Relaxed);
        if let Ok(mut published) = self.stats.topic_waits.lock() {
            if self.topic_waits.len() > 0 || !published.is_empty() {
                *published = self.topic_waits.published();
            }
        }
        if self.progressed || unacked == 0 {
            self.progressed = false;
            self.stats.progress_at_ms.store(now, Ordering::Relaxed);
        }
        for (source, counters) in self.sources.iter().zip(&self.stats.sources) {
            counters
                .in_flight
                .store(source.window.len() as u64, Ordering::Relaxed);
            if !lag {
                continue;
            }
            let lag_ms = match &source.acked {
                Acked::Journal(acked) => {
                    let acked = acked.as_ref().map(|(_, t)| *t).or(source.saved_entry_us);
                    journal::lag_us(
                        counters.newest_us.load(Ordering::Relaxed),
                        counters.oldest_us.load(Ordering::Relaxed),
                        acked,
                        source.start_at,
                    ) / 1000
                }
                Acked::Files(files) => files
                    .entries()
                    .map(|f| f.lag(now).lag_ms)
                    .max()
                    .unwrap_or(0),
                Acked::Forward => 0,
            };
            counters.lag_ms.store(lag_ms, Ordering::Relaxed);
        }
    }

    /// The systemd `STATUS=` line.
    fn status_line(&self) -> String {
        let (read, acked) = self.stats.totals();
        format!(
            "Shipping to {}: {acked} entries acknowledged of {read} read, {} in flight, lag {:.0}s",
            self.stats.sink,
            self.unacked(),
            self.stats.max_lag().as_secs_f64()
        )
    }

    /// Whether source `i` may add a batch of `batch` (entries, bytes) without holding more
    /// than its `share` of the window.
    fn admits(&self, i: usize, share: (usize, usize), batch: (usize, usize)) -> bool {
        self.sources
            .get(i)
            .is_some_and(|s| s.window.len() + batch.0 <= share.0 && s.bytes + batch.1 <= share.1)
    }

    /// Bytes of entries not yet acknowledged, all sources.
    fn in_flight_bytes(&self) -> usize {
        self.sources.iter().map(|s| s.bytes).sum()
    }

    /// Entries not yet acknowledged (or finally handled): the slots behind the watermark.
    fn unacked(&self) -> usize {
        self.in_flight - self.unpersisted
    }

    fn submit(&mut self, batch: Batch) {
        if !batch.events.is_empty() {
            let now = unix_ms();
            if let Some(source) = self.sources.get_mut(batch.source) {
                if let Acked::Files(files) = &mut source.acked {
                    for event in batch.events {
                        source.dirty |= files.on_event(event, now);
                    }
                }
            }
        }
        for mut record in batch.records {
            let bytes = record.byte_size();
            let position = std::mem::take(&mut record.position);
            let slot = Slot {
                entry_time_us: record.time_ns / 1000,
                position,
                record: Some(record),
                bytes,
                attempt: 0,
                rejections: 0,
                dead_letter: false,
                timestamp_now: false,
                alone: false,
                meant_for: None,
                waits_for: None,
            };
            let Some(source) = self.sources.get_mut(batch.source) else {
                continue;
            };
            let seq = source.window.push(slot);
            self.in_flight += 1;
            source.bytes += bytes;
            self.send(batch.source, seq);
        }
        self.sink.flush_burst();
    }

    /// Sends (or re-sends) the slot with a new attempt number.
    fn send(&mut self, src: usize, seq: u64) {
        let Some(source) = self.sources.get_mut(src) else {
            return;
        };
        let Some((slot, false)) = source.window.get_mut(seq) else {
            return;
        };
        let Some(record) = &slot.record else {
            return;
        };
        slot.attempt = slot.attempt.wrapping_add(1);
        let topic = match (&self.oversize, slot.dead_letter) {
            (Oversize::DeadLetter(t), true) => Some(t.as_str()),
            _ if slot.meant_for.is_some() => self.topic_fallback.as_deref(),
            _ => None,
        };
        let out = Outgoing {
            id: pack(src, slot.attempt, seq),
            source: &source.name,
            position: &slot.position,
            record,
            topic,
            meant_for: slot.meant_for.as_deref(),
            timestamp_now: slot.timestamp_now,
            alone: slot.alone,
        };
        match self.sink.send(out) {
            Ok(()) => {}
            Err(SendError::Full) => self.schedule_retry(src, seq, QUEUE_FULL_DELAY),
            Err(SendError::Failed(e)) => self.on_failure(src, seq, e),
        }
    }

    fn on_ack(&mut self, ack: Ack) {
        let (src, attempt, seq) = unpack(ack.id);
        let Some(source) = self.sources.get_mut(src) else {
            return;
        };
        let Some((slot, false)) = source.window.get_mut(seq) else {
            return; // already done: a late report of an earlier attempt
        };
        match ack.result {
            Ok(()) => {
                self.backoff = BACKOFF_MIN;
                self.progressed = true;
                self.finish(src, seq, None);
            }
            Err(_) if slot.attempt != attempt => {} // superseded by a re-send
            Err(DeliveryError::TooLarge(reason)) if !slot.alone => {
                // Reported after sending (only Kafka does): the broker refused the batch it was
                // in, and any entry of it may be the large one. Once alone, the policy applies.
                slot.alone = true;
                self.stats.sink_failure("batch_too_large", &reason);
                if let Some(suppressed) = self.limit.allow("batch_too_large") {
                    tracing::warn!(source = %source.name, position = %slot.position, %reason, suppressed,
                        "Broker refused a batch as too large (is the topic's max.message.bytes below [sink.librdkafka] message.max.bytes?); re-sending its entries one per batch, so that the oversize policy meets only an entry too large on its own");
                }
                self.schedule_retry(src, seq, Duration::ZERO);
            }
            Err(e) => self.on_failure(src, seq, e),
        }
    }

    fn on_failure(&mut self, src: usize, seq: u64, error: DeliveryError) {
        match error {
            DeliveryError::Retriable(reason) => {
                self.stats.sink_failure("retriable", &reason);
                if let Some(suppressed) = self.limit.allow("retriable") {
                    tracing::warn!(%reason, suppressed, retry_in = ?self.backoff,
                        "Sink did not acknowledge entries; they stay in flight and will be re-sent");
                }
                // A burst of failures (every in-flight entry timing out at once) is one retry
                // round: the backoff grows per round, not per entry.
                let delay = self.backoff;
                if self.retry_at.is_none() {
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                }
                self.schedule_retry(src, seq, delay);
            }
            DeliveryError::BadTimestamp(reason) => {
                self.stats.sink_failure("bad_timestamp", &reason);
                if let Some((slot, _)) = self.sources[src].window.get_mut(seq) {
                    slot.timestamp_now = true;
                }
                if let Some(suppressed) = self.limit.allow("timestamp") {
                    tracing::warn!(%reason, suppressed,
                        "Broker rejected an entry's timestamp (clock skew?); re-sending with the \
                         produce time, the original time stays in the payload");
                }
                self.schedule_retry(src, seq, Duration::ZERO);
            }
            DeliveryError::Fatal(reason) => {
                self.stats.sink_failure("fatal", &reason);
                tracing::error!(%reason, "Sink client failed fatally; it will be recreated");
                self.fatal = true;
            }
            DeliveryError::Closed(reason) => {
                // One message for the whole burst: the caller stops.
                if self.closed.is_none() {
                    self.stats.sink_failure("closed", &reason);
                    self.closed = Some(reason);
                }
            }
            DeliveryError::Topic {
                topic,
                reason,
                bound,
            } => self.on_topic(src, seq, &topic, reason, bound),
            DeliveryError::TooLarge(reason) => self.reject(src, seq, true, reason),
            DeliveryError::Invalid(reason) => self.reject(src, seq, false, reason),
        }
    }

    /// The oversize policy: an entry the sink can never accept must not stall the watermark.
    fn reject(&mut self, src: usize, seq: u64, too_large: bool, reason: String) {
        let limit = self.sink.payload_limit();
        let oversize = self.oversize.clone();
        let source = &mut self.sources[src];
        let Some((slot, false)) = source.window.get_mut(seq) else {
            return;
        };
        slot.rejections = slot.rejections.saturating_add(1);
        if !too_large && slot.rejections < INVALID_RETRIES {
            if let Some(suppressed) = self.limit.allow("invalid_retry") {
                tracing::warn!(source = %source.name, position = %slot.position, %reason, suppressed,
                    "Sink rejected entries as invalid (whole batches are rejected); retrying them as is before the oversize policy applies");
            }
            self.schedule_retry(src, seq, BACKOFF_MIN);
            return;
        }
        let verdict: Result<&'static str, &'static str> = match (&oversize, slot.record.as_mut()) {
            (_, None) => return,
            (_, Some(_)) if slot.dead_letter => Err("dead_letter_rejected"),
            (Oversize::Drop, _) => Err(if too_large { "too_large" } else { "invalid" }),
            (Oversize::Truncate, Some(_)) if !too_large => Err("invalid"),
            (Oversize::Truncate, Some(_)) if slot.rejections > TRUNCATE_ATTEMPTS => {
                Err("too_large")
            }
            (Oversize::Truncate, Some(record)) => {
                // First rejection: fit the client's limit. Later ones came from the broker
                // (its topic limit is lower than ours): halve until it fits.
                let target = match (slot.rejections, limit) {
                    (1, Some(l)) if !slot.alone => l,
                    _ => record.msgpack().len() / 2,
                };
                if truncate_to(record, target) {
                    Ok("truncated")
                } else {
                    Err("too_large")
                }
            }
            (Oversize::DeadLetter(_), Some(record)) => {
                let original = record.msgpack().len();
                *record = dead_letter_stub(record, &slot.position, original, &reason);
                slot.dead_letter = true;
                Ok("dead_lettered")
            }
        };
        let name = source.name.clone();
        let position = slot.position.clone();
        match verdict {
            Ok(action) => {
                self.stats.failed(&name, action);
                if let Some(suppressed) = self.limit.allow(action) {
                    tracing::warn!(source = %name, %position, %reason, action, suppressed,
                        "Sink cannot accept an entry as is; sending it {action} per the oversize policy");
                }
                self.schedule_retry(src, seq, Duration::ZERO);
            }
            Err(why) => {
                let cause = format!("dropped_{why}");
                if let Some(suppressed) = self.limit.allow(&cause) {
                    tracing::error!(source = %name, %position, %reason, why, suppressed,
                        "Dropping an entry the sink can never accept (oversize policy); it is counted in perapera_entries_failed_total");
                }
                self.stats.failed(
                    &name,
                    match why {
                        "invalid" => "dropped_invalid",
                        "dead_letter_rejected" => "dropped_dead_letter_rejected",
                        _ => "dropped_too_large",
                    },
                );
                self.finish(src, seq, Some(()));
            }
        }
    }

    /// Marks a slot done (acknowledged, or dropped by policy) and frees its window share.
    fn finish(&mut self, src: usize, seq: u64, dropped: Option<()>) {
        let source = &mut self.sources[src];
        let bytes = match source.window.get_mut(seq) {
            Some((slot, false)) => {
                slot.record = None;
                if let Some(w) = slot.waits_for.take() {
                    self.topic_waits.done(&w);
                }
                if let Position::Forward(pending) = &slot.position {
                    pending.entry_done();
                }
                slot.bytes
            }
            _ => return,
        };
        if source.window.complete(seq) {
            // The slot keeps its window place until a written checkpoint covers it: until then
            // a restart would send it again, and the window is the duplicate bound.
            source.bytes = source.bytes.saturating_sub(bytes);
            if dropped.is_none() {
                self.stats.acked(src, 1);
            }
        }
    }

    fn schedule_retry(&mut self, src: usize, seq: u64, delay: Duration) {
        let at = Instant::now() + delay;
        self.retry.push((at, src, seq));
        self.retry_at = Some(self.retry_at.map_or(at, |t| t.min(at)));
    }

    fn resend_due(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retry)
            .into_iter()
            .partition(|(at, _, _)| *at <= now);
        self.retry = later;
        self.retry_at = self.retry.iter().map(|(at, _, _)| *at).min();
        // Re-send in read order, each entry once.
        let mut due: Vec<(usize, u64)> = due.into_iter().map(|(_, src, seq)| (src, seq)).collect();
        due.sort_unstable();
        due.dedup();
        for (src, seq) in due {
            self.send(src, seq);
        }
        self.sink.flush_burst();
    }

    fn recreate_sink(&mut self) -> Result<(), String> {
        self.sink.recreate()?;
        self.retry.clear();
        self.retry_at = None;
        let pending: Vec<(usize, u64)> = self
            .sources
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.window.pending().map(move |seq| (i, seq)))
            .collect();
        tracing::warn!(
            entries = pending.len(),
            "Re-sending every unacknowledged entry on the new sink client"
        );
        for (src, seq) in pending {
            self.send(src, seq);
        }
        self.sink.flush_burst();
        Ok(())
    }

    fn advance(&mut self) {
        let mut now = None;
        for source in &mut self.sources {
            let acked = &mut source.acked;
            let now = *now.get_or_insert_with(unix_ms);
            let popped = source.window.advance_each(|slot| acked.fold(slot, now));
            if matches!(acked, Acked::Forward) {
                // Done once acknowledged: the sender holds the data, nothing to persist.
                self.in_flight -= popped;
            } else if popped > 0 {
                self.unpersisted += popped;
                source.dirty = true;
            }
        }
    }

    fn write_checkpoint(&mut self) {
        if !self.sources.iter().any(|s| s.dirty) {
            return;
        }
        let now = unix_ms();
        for source in &mut self.sources {
            if source.dirty {
                if let Some(entry) = source.acked.checkpoint(now) {
                    self.checkpoint.sources.insert(source.name.clone(), entry);
                }
            }
        }
        self.checkpoint.version = Checkpoint::VERSION;
        match self.state.store(&self.checkpoint) {
            Ok(()) => {
                self.stats.checkpoint_writes.fetch_add(1, Ordering::Relaxed);
                self.sources.iter_mut().for_each(|s| s.dirty = false);
                self.in_flight -= self.unpersisted;
                self.unpersisted = 0;
            }
            Err(e) => {
                self.stats.checkpoint_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.limit.allow("checkpoint") {
                    tracing::error!(error = %e, suppressed,
                        "Cannot write the checkpoint; the previous one stays valid and writing is \
                         retried. Reading pauses once the in-flight window is full; nothing is lost");
                }
            }
        }
    }
}

/// Shrinks `record` until its encoding fits `target` bytes, marking `_PERAPERA_TRUNCATED`
/// with the original encoded size. False if it cannot be made to fit.
fn truncate_to(record: &mut Record, target: usize) -> bool {
    let original = record.msgpack().len();
    if record.get("_PERAPERA_TRUNCATED").is_none() {
        record.set("_PERAPERA_TRUNCATED", Value::UInt(original as u64));
    }
    for _ in 0..32 {
        let size = record.msgpack().len();
        if size <= target {
            return true;
        }
        if !record.cut_largest(size - target) {
            return false;
        }
    }
    false
}

/// What goes to the dead-letter topic instead of an entry the sink rejected: every field up
/// to 1 KiB (the metadata), larger ones replaced by their size, plus why and where.
fn dead_letter_stub(record: &Record, position: &Position, original: usize, reason: &str) -> Record {
    const KEEP: usize = 1024;
    let mut fields: Vec<(String, Value)> = record
        .fields()
        .into_iter()
        .map(|(n, v)| {
            if v.len() <= KEEP {
                (n, v)
            } else {
                let omitted = Value::Str(format!("<{} bytes omitted>", v.len()));
                (n, omitted)
            }
        })
        .collect();
    fields.push(("_PERAPERA_REJECTED".into(), Value::Str(reason.to_string())));
    fields.push((
        "_PERAPERA_ORIGINAL_BYTES".into(),
        Value::UInt(original as u64),
    ));
    fields.push((
        "_PERAPERA_POSITION".into(),
        Value::Str(position.to_string()),
    ));
    Record::from_fields(&fields, record.time_ns, Position::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for (s, a, q) in [(0, 0, 0), (3, 65535, (1 << 40) - 1), (255, 7, 123_456)] {
            assert_eq!(unpack(pack(s, a, q)), (s, a, q));
        }
    }

    #[test]
    fn truncation_fits_and_marks() {
        let mut r = Record::from_fields(
            &[
                ("MESSAGE".into(), Value::Str("ü".repeat(300_000))),
                ("_HOSTNAME".into(), Value::Str("h".into())),
            ],
            0,
            Position::default(),
        );
        let original = r.msgpack().len();
        assert!(truncate_to(&mut r, 100_000));
        assert!(r.msgpack().len() <= 100_000);
        assert_eq!(
            r.get("_PERAPERA_TRUNCATED"),
            Some(Value::UInt(original as u64))
        );
        assert_eq!(r.get("_HOSTNAME"), Some(Value::Str("h".into())));
        let mut tiny = Record::from_fields(&[("N".into(), Value::UInt(1))], 0, Position::default());
        assert!(!truncate_to(&mut tiny, 3));
    }

    #[test]
    fn dead_letter_stub_keeps_metadata() {
        let r = Record::from_fields(
            &[
                ("MESSAGE".into(), Value::Str("x".repeat(5000))),
                ("_SYSTEMD_UNIT".into(), Value::Str("a.service".into())),
            ],
            5,
            Position::default(),
        );
        let s = dead_letter_stub(&r, &Position::Cursor("s=1;i=2".into()), 5050, "too large");
        assert_eq!(s.get("_SYSTEMD_UNIT"), r.get("_SYSTEMD_UNIT"));
        assert_eq!(
            s.get("MESSAGE"),
            Some(Value::Str("<5000 bytes omitted>".into()))
        );
        assert_eq!(
            s.get("_PERAPERA_POSITION"),
            Some(Value::Str("s=1;i=2".into()))
        );
        assert_eq!(s.get("_PERAPERA_ORIGINAL_BYTES"), Some(Value::UInt(5050)));
    }
}
