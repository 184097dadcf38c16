//! The gauges the loop publishes on its tick (liveness, in flight, lag) and systemd's
//! `STATUS=` line.

use std::sync::atomic::Ordering;

use super::window::Acked;
use super::Pipeline;
use crate::clock::unix_ms;
use crate::source::journal;

impl Pipeline {
    /// Publishes the liveness and in-flight gauges (and, with `lag`, the lag gauges, which
    /// `stat` files).
    pub(super) fn tick(&mut self, lag: bool) {
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
                Acked::Journal {
                    acked,
                    saved_entry_us,
                    start_at,
                } => {
                    let acked = acked.as_ref().map(|(_, t)| *t).or(*saved_entry_us);
                    journal::lag_us(
                        counters.newest_us.load(Ordering::Relaxed),
                        counters.oldest_us.load(Ordering::Relaxed),
                        acked,
                        *start_at,
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
    pub(super) fn status_line(&self) -> String {
        let (read, acked) = self.stats.totals();
        format!(
            "Shipping to {}: {acked} entries acknowledged of {read} read, {} in flight, lag {:.0}s",
            self.stats.sink,
            self.unacked(),
            self.stats.max_lag().as_secs_f64()
        )
    }
}
