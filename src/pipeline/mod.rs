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

mod committed;
mod delivery;
mod inlets;
mod oversize;
mod persist;
mod retry;
mod start;
mod status;
mod transaction;
mod waits;
mod window;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::checkpoint::{Checkpoint, StateDir, StateError};
use crate::config::{Config, Oversize, SinkConfig};
use crate::ops::metrics::Stats;
use crate::ops::notify::Notifier;
use crate::ops::ratelimit::RateLimit;
use crate::sink::{Ack, Sink, TxnError, TxnJob};
use crate::source::SourceError;
use inlets::Inlets;
use retry::{Backoff, RetryQueue};
use start::{Limits, Started};
use transaction::{AfterCommit, Transactions};
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
    /// Exactly-once: the open transaction cannot commit; start over from the checkpoint
    /// committed in Kafka (handled inside `run`).
    #[error("Kafka transaction failed: {0}")]
    Rewind(TxnError),
    /// Exactly-once: fenced again and again: another instance uses our transactional id.
    #[error("{0}")]
    Fenced(String),
    /// Exactly-once: the cluster cannot be reached to start (handled inside `run`: retried).
    #[error("{0}")]
    Unavailable(String),
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
    /// `delivery = "exactly-once"`.
    txn: Option<Transactions>,
}

/// The loop's tick while nothing is in flight (see `idle_tick` in [`run`]).
const IDLE_TICK: Duration = Duration::from_secs(5);

/// How often the lag gauges and the systemd status line are refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// After this many fencings within [`FENCED_WINDOW`], another instance is using our
/// transactional id (each start fences the one before it): stop.
const FENCED_LIMIT: usize = 3;
const FENCED_WINDOW: Duration = Duration::from_secs(600);

/// The pause before starting over after an aborted transaction, doubling while no commit
/// succeeds in between.
const REWIND_PAUSE: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));

/// Runs perapera until `shutdown` resolves, then drains and writes the final checkpoint.
/// With `delivery = "exactly-once"`, an aborted transaction starts the sources and the
/// producer over from the checkpoint committed in Kafka, in this same call.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<Summary, RunError> {
    let stats = Arc::new(start::stats(&config));
    let _endpoint = start::endpoint(&config, &stats);
    tokio::pin!(shutdown);
    let mut stopping = false;
    let mut fenced: Vec<std::time::Instant> = Vec::new();
    let mut pause = REWIND_PAUSE.0;
    loop {
        let commits = stats.txn.committed_total();
        let e = match run_once(&config, &stats, shutdown.as_mut(), &mut stopping).await {
            Err(RunError::Rewind(e)) => {
                stats.txn.aborted(e.label());
                e
            }
            Err(RunError::Unavailable(_)) if stopping => return Ok(Summary::default()),
            // Exactly-once cannot start without the cluster (init_transactions, the committed
            // checkpoint): like a sink outage in at-least-once mode, that is waited out, with
            // the reason logged and /health saying "starting".
            Err(RunError::Unavailable(reason)) => {
                tracing::error!(%reason, pause = ?pause, "Cannot start exactly-once delivery; retrying");
                TxnError::Retriable(reason)
            }
            other => return other,
        };
        if stopping {
            // The next start resumes from the checkpoint committed in Kafka.
            return Ok(Summary::default());
        }
        if stats.txn.committed_total() > commits {
            pause = REWIND_PAUSE.0;
        }
        if let (TxnError::Fenced(_), SinkConfig::Kafka(k)) = (&e, &config.sink) {
            let now = std::time::Instant::now();
            fenced.retain(|t| now.duration_since(*t) < FENCED_WINDOW);
            fenced.push(now);
            if fenced.len() >= FENCED_LIMIT {
                let id = k
                    .exactly_once
                    .as_ref()
                    .map_or("", |x| x.transactional_id.as_str());
                return Err(RunError::Fenced(format!(
                    "fenced {} times in {} minutes: another perapera instance is using \
                     transactional id {id:?} (each one's start fences the other). Stop one of \
                     them, or give each its own [sink] transactional_id; nothing is lost or \
                     duplicated, the committed checkpoint in Kafka stays valid",
                    fenced.len(),
                    FENCED_WINDOW.as_secs() / 60
                )));
            }
        }
        tracing::warn!(reason = %e, pause = ?pause,
            "Kafka transaction aborted; starting over from the checkpoint committed in Kafka \
             (its entries are read and sent again; read_committed consumers see each once)");
        tokio::select! {
            () = shutdown.as_mut() => return Ok(Summary::default()),
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(REWIND_PAUSE.1);
    }
}

/// Waits for the running transactional call, if there is one (else forever).
async fn running(
    job: &mut Option<tokio::task::JoinHandle<Result<(), TxnError>>>,
) -> Result<(), TxnError> {
    match job {
        Some(handle) => handle.await.unwrap_or_else(|e| {
            Err(TxnError::Fatal(format!(
                "the transaction thread failed: {e}"
            )))
        }),
        None => std::future::pending().await,
    }
}

/// Runs a transactional call off the runtime's threads, waiting at most `limit`.
async fn blocking(job: TxnJob, limit: Duration) -> Result<(), TxnError> {
    match tokio::time::timeout(limit, tokio::task::spawn_blocking(job)).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(TxnError::Fatal(format!(
            "the transaction thread failed: {e}"
        ))),
        Err(_) => Err(TxnError::Retriable(format!("no answer within {limit:?}"))),
    }
}

/// One life of the sources and the sink: start → loop → drain.
async fn run_once<F: Future<Output = ()>>(
    config: &Config,
    stats: &Arc<Stats>,
    mut shutdown: std::pin::Pin<&mut F>,
    stopping: &mut bool,
) -> Result<Summary, RunError> {
    let exactly_once = matches!(&config.sink, SinkConfig::Kafka(k) if k.exactly_once.is_some());
    let started = if exactly_once {
        // init_transactions and the read of the committed checkpoint block.
        let (config, stats) = (config.clone(), stats.clone());
        let starting = tokio::task::spawn_blocking(move || start::start(&config, stats));
        tokio::select! {
            started = starting => started.map_err(|e| RunError::Sink(format!("start-up failed: {e}")))?,
            // A stop while the cluster is away: nothing was read yet, nothing to drain.
            () = &mut shutdown => {
                *stopping = true;
                return Ok(Summary::default());
            }
        }
    } else {
        start::start(config, stats.clone())
    };
    let Started {
        pipeline: mut p,
        mut inlets,
        acks: mut ack_rx,
        readers,
        stop,
        limits,
        mut persist,
    } = started?;
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
    // The running commit (exactly-once).
    let mut commit: Option<tokio::task::JoinHandle<Result<(), TxnError>>> = None;
    loop {
        let room = deadline.is_none()
            && sources_open
            && p.in_flight + batch_entries <= config.pipeline.max_in_flight
            && p.in_flight_bytes() + batch_bytes <= config.pipeline.max_in_flight_bytes
            && !p.txn.as_ref().is_some_and(|t| t.cut);
        let retry_at = p.retry.next();
        let next_checkpoint = persist.next();
        tokio::select! {
            biased;
            () = &mut shutdown, if deadline.is_none() => {
                tracing::info!(in_flight = p.in_flight, timeout = ?config.pipeline.shutdown_timeout,
                    "Shutting down: stopped reading, waiting for in-flight acknowledgements");
                notifier.stopping(&format!("Stopping: waiting for {} in-flight acknowledgements", p.unacked()));
                stop.store(true, Ordering::Relaxed);
                *stopping = true;
                deadline = Some(Instant::now() + config.pipeline.shutdown_timeout);
            }
            Some(ack) = ack_rx.recv() => {
                p.on_ack(ack);
                while let Ok(ack) = ack_rx.try_recv() {
                    p.on_ack(ack);
                }
            }
            outcome = running(&mut commit), if commit.is_some() => {
                commit = None;
                match p.on_commit(outcome) {
                    AfterCommit::Done => {}
                    AfterCommit::Retry(job) => commit = Some(tokio::task::spawn_blocking(job)),
                    AfterCommit::Rewind(e) => {
                        result = Err(RunError::Rewind(e));
                        break;
                    }
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
        if p.fatal && p.txn.is_some() {
            let fatal = p.sink.transactional().and_then(|s| s.fatal_reason());
            result = Err(RunError::Rewind(fatal.unwrap_or_else(|| {
                TxnError::Fatal("the Kafka producer failed".into())
            })));
            break;
        }
        if p.fatal {
            p.fatal = false;
            if let Err(e) = p.recreate_sink() {
                result = Err(RunError::Sink(e));
                break;
            }
        }
        if let Some(t) = &mut p.txn {
            // Exactly-once: "writing the checkpoint" is committing the transaction.
            if let Some(e) = t.rewind.take() {
                // A failed delivery says only that the transaction failed; the producer knows
                // whether it was fenced.
                let fatal = p.sink.transactional().and_then(|s| s.fatal_reason());
                result = Err(RunError::Rewind(fatal.unwrap_or(e)));
                break;
            }
            if !t.cut && p.commit_wanted() {
                p.stats.txn.pending(crate::clock::unix_ms());
                let due = persist.write_now(Instant::now(), p.unpersisted);
                if let Some(t) = &mut p.txn {
                    t.cut = due;
                }
            }
            if p.txn.as_ref().is_some_and(|t| t.cut) && commit.is_none() && p.unacked() == 0 {
                match p.start_commit() {
                    Ok(job) => commit = Some(tokio::task::spawn_blocking(job)),
                    Err(e) => {
                        result = Err(RunError::Rewind(e));
                        break;
                    }
                }
            }
        } else if p.sources.iter().any(|s| s.dirty)
            && persist.write_now(Instant::now(), p.unpersisted)
        {
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
        if deadline.is_some() && p.unacked() == 0 && commit.is_none() {
            break; // every slot is done; the final checkpoint is written below
        }
    }
    stop.store(true, Ordering::Relaxed);
    // Part of the reserve is left for dropping the client.
    let flush_until = deadline.map(|d| d.checked_sub(close_reserve / 2).unwrap_or(d));
    let rewinding = matches!(result, Err(RunError::Rewind(_)));
    let unacked = drain(p, ack_rx, inlets, readers, flush_until, (commit, rewinding)).await;
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
    (mut commit, rewinding): (Option<tokio::task::JoinHandle<Result<(), TxnError>>>, bool),
) -> usize {
    while let Ok(ack) = ack_rx.try_recv() {
        p.on_ack(ack);
    }
    p.advance();
    let left = || {
        flush_until.map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        })
    };
    if p.txn.is_some() {
        final_commit(&mut p, &mut commit, rewinding, left()).await;
    } else {
        p.write_checkpoint();
    }
    let flush_time = left();
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

/// Exactly-once, on the way out: the running commit is waited for; then what the open
/// transaction holds is committed if every entry of it was acknowledged (and nothing failed),
/// else aborted (the next start resumes from the last commit).
async fn final_commit(
    p: &mut Pipeline,
    commit: &mut Option<tokio::task::JoinHandle<Result<(), TxnError>>>,
    rewinding: bool,
    limit: Duration,
) {
    let limit = limit.max(Duration::from_secs(1));
    if commit.is_some() {
        let outcome = tokio::time::timeout(limit, running(commit))
            .await
            .unwrap_or_else(|_| {
                Err(TxnError::Retriable(
                    "the commit did not finish in time".into(),
                ))
            });
        if !matches!(p.on_commit(outcome), AfterCommit::Done) {
            return;
        }
    }
    let failed = rewinding || p.txn.as_ref().is_some_and(|t| t.rewind.is_some());
    if !failed && p.unacked() == 0 && p.commit_wanted() {
        match p.start_commit() {
            Ok(job) => {
                let outcome = blocking(job, limit).await;
                if matches!(p.on_commit(outcome), AfterCommit::Done) {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot commit the last Kafka transaction; the next start resumes from the one before")
            }
        }
    }
    if let Some(job) = p.abort_job() {
        if let Err(e) = blocking(job, limit).await {
            tracing::warn!(error = %e, "Aborting the open Kafka transaction failed; the next start aborts it");
        }
    }
}
