//! Source → sink wiring: the in-flight window, acknowledgements, retries, the oversize policy,
//! checkpoints and shutdown. One task owns all of this state, so the hot path takes no locks.
//!
//! Every entry read gets a slot in its source's [`Watermark`](crate::checkpoint::Watermark) and an id that travels through
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

//!
//! `run` reads as start (`start`) → loop → drain. The loop's state is `Pipeline`: the
//! window of each source (`window`), deliveries and their reports (`delivery`) with
//! retries (`retry`), the oversize policy (`oversize`), the checkpoint schedule
//! (`persist`), entries waiting for a topic (`waits`), the sources' channels
//! (`inlets`) and the gauges (`status`).

mod delivery;
mod inlets;
mod oversize;
mod persist;
mod retry;
mod start;
mod status;
mod waits;
mod window;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::checkpoint::{Checkpoint, StateDir, StateError};
use crate::config::{Config, Oversize};
use crate::ops::metrics::Stats;
use crate::ops::notify::Notifier;
use crate::ops::ratelimit::RateLimit;
use crate::sink::{Ack, Sink};
use crate::source::SourceError;
use inlets::Inlets;
use retry::{Backoff, RetryQueue};
use start::{Limits, Started};
use waits::TopicWaits;
use window::SourceState;

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

/// The loop's state: one task owns it, so the hot path takes no locks.
struct Pipeline {
    sources: Vec<SourceState>,
    sink: Sink,
    oversize: Oversize,
    /// Entries a restart would re-send: slots after the watermark (unacknowledged, or
    /// acknowledged behind one that is not) plus `unpersisted`.
    in_flight: usize,
    /// Entries the watermark passed that no written checkpoint covers yet.
    unpersisted: usize,
    retry: RetryQueue,
    /// `[sink] topic_fallback`.
    topic_fallback: Option<String>,
    topic_waits: TopicWaits,
    backoff: Backoff,
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

/// The loop's tick while nothing is in flight (see `idle_tick` in [`run`]).
const IDLE_TICK: Duration = Duration::from_secs(5);

/// How often the lag gauges and the systemd status line are refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Runs perapera until `shutdown` resolves, then drains and writes the final checkpoint.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<Summary, RunError> {
    let Started {
        pipeline: mut p,
        mut inlets,
        acks: mut ack_rx,
        readers,
        stop,
        limits,
        mut persist,
        endpoint: _endpoint,
    } = start::start(&config)?;
    let Limits {
        batch_entries,
        batch_bytes,
        shares,
    } = limits;
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

    // Part of shutdown_timeout is kept for the final checkpoint write, the producer's flush and
    // its drop, so that the process is gone within shutdown_timeout.
    let close_reserve = (config.pipeline.shutdown_timeout / 5).min(Duration::from_secs(1));
    let mut deadline: Option<Instant> = None;
    let mut sources_open = true;
    let mut result = Ok(());
    tokio::pin!(shutdown);
    loop {
        let room = deadline.is_none()
            && sources_open
            && p.in_flight + batch_entries <= config.pipeline.max_in_flight
            && p.in_flight_bytes() + batch_bytes <= config.pipeline.max_in_flight_bytes;
        let retry_at = p.retry.next();
        let next_checkpoint = persist.next();
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
                persist.fired();
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
        if p.sources.iter().any(|s| s.dirty) && persist.write_now(Instant::now(), p.unpersisted) {
            p.write_checkpoint();
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
    // Part of the reserve is left for dropping the client.
    let flush_until = deadline.map(|d| d.checked_sub(close_reserve / 2).unwrap_or(d));
    let unacked = drain(p, ack_rx, inlets, readers, flush_until).await;
    result.map(|()| Summary { unacked })
}

/// After the loop: applies what arrived last, writes the final checkpoint, releases the
/// client within what is left of `deadline`, and lets the readers go.
async fn drain(
    mut p: Pipeline,
    mut ack_rx: mpsc::UnboundedReceiver<Ack>,
    mut inlets: Inlets,
    readers: Vec<std::thread::JoinHandle<()>>,
    flush_until: Option<Instant>,
) -> usize {
    while let Ok(ack) = ack_rx.try_recv() {
        p.on_ack(ack);
    }
    p.advance();
    p.write_checkpoint();
    let flush_time = flush_until.map_or(Duration::ZERO, |d| {
        d.saturating_duration_since(Instant::now())
    });
    let unacked = p.unacked();
    let Pipeline {
        sink,
        state,
        sources,
        stats,
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
    unacked
}
