//! The lag probe: a thread of its own that opens the journal every `PROBE_EVERY` to read
//! the oldest and newest entry times (the lag gauges), so that the reader's thread never
//! seeks away from where it reads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use systemd::journal::Journal;

use super::reader::{open_journal, WAIT};
use crate::config::JournalConfig;
use crate::ops::metrics::Stats;

/// How often the lag prober looks at the newest entry.
pub(super) const PROBE_EVERY: Duration = Duration::from_secs(5);

/// Starts a thread that keeps `stats.sources[index]`'s newest and oldest entry times
/// current (for `perapera_checkpoint_lag_seconds`), on its own journal handle so that it
/// works while the reader is blocked by backpressure. Ends when `stop` is set.
pub fn spawn_prober(
    index: usize,
    name: String,
    config: JournalConfig,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
) {
    let spawned = std::thread::Builder::new()
        .name(format!("journal-lag:{name}"))
        .spawn(move || {
            let Some(counters) = stats.sources.get(index) else {
                return;
            };
            let mut warned = false;
            while !stop.load(Ordering::Relaxed) {
                // A fresh handle per probe: between probes nothing of the journal stays
                // mapped in this process (an open handle keeps the pages it touched resident).
                match open_journal(&name, &config) {
                    Ok(mut j) => match entry_span(&mut j) {
                        Ok(Some((newest, oldest))) => {
                            counters.newest_us.store(newest, Ordering::Relaxed);
                            counters.oldest_us.store(oldest, Ordering::Relaxed);
                        }
                        Ok(None) => {}
                        Err(e) => tracing::debug!(source = %name, error = %e, "Lag probe failed"),
                    },
                    Err(e) if !warned => {
                        warned = true;
                        tracing::warn!(source = %name, error = %e,
                            "Cannot open the journal to measure the lag; perapera_checkpoint_lag_seconds stays 0 until it can");
                    }
                    Err(e) => tracing::debug!(source = %name, error = %e, "Lag probe failed"),
                }
                let mut slept = Duration::ZERO;
                // In steps of WAIT, so that a stop is noticed as soon as the reader notices it.
                while slept < PROBE_EVERY && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(WAIT);
                    slept += WAIT;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "Cannot start the journal lag prober thread");
    }
}

/// Realtime (µs) of the newest and of the oldest entry of an open journal (its matches
/// applied); `None` when it holds none. Moves the read position.
pub fn entry_span(j: &mut Journal) -> Result<Option<(u64, u64)>, systemd::Error> {
    j.seek_tail()?;
    if j.previous()? == 0 {
        return Ok(None);
    }
    let newest = j.timestamp_usec()?;
    j.seek_head()?;
    if j.next()? == 0 {
        return Ok(None);
    }
    Ok(Some((newest, j.timestamp_usec()?)))
}
