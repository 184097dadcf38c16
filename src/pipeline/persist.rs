//! When to write the checkpoint: the first acknowledged advance after a start at once (a
//! process in a crash loop re-sends at most what was in flight at each kill), later ones at
//! most every `checkpoint_interval`, and at once when half the window waits on a write (the
//! window is the duplicate bound). Nothing is armed while no position moved: an idle agent
//! writes nothing.

use std::time::Duration;

use tokio::time::Instant;

/// The checkpoint write schedule.
#[derive(Debug)]
pub(super) struct WriteSchedule {
    interval: Duration,
    /// Entries waiting on a write that force one.
    persist_at: usize,
    /// The last write (attempt).
    last_write: Option<Instant>,
    /// Whether a write has covered an acknowledged advance yet: a write of file events alone
    /// (where reading starts) does not use up the first advance's.
    advance_written: bool,
    /// When a position waits to be written: the time it is due.
    next: Option<Instant>,
}

impl WriteSchedule {
    /// Writes at most every `interval`, or when `persist_at` entries wait.
    pub(super) fn new(interval: Duration, persist_at: usize) -> WriteSchedule {
        WriteSchedule {
            interval,
            persist_at,
            last_write: None,
            advance_written: false,
            next: None,
        }
    }

    /// When a waiting write is due (for the loop's timer); `None` when nothing waits.
    pub(super) fn next(&self) -> Option<Instant> {
        self.next
    }

    /// The timer fired: the next pass decides.
    pub(super) fn fired(&mut self) {
        self.next = None;
    }

    /// After a pass in which the checkpoint changed (`unpersisted` entries the watermark
    /// passed wait for it): true if it is to be written now (the write is then taken as
    /// done), else the timer is armed for when it is due.
    pub(super) fn write_now(&mut self, now: Instant, unpersisted: usize) -> bool {
        let due = self.last_write.map_or(now, |t| t + self.interval);
        let first_advance = !self.advance_written && unpersisted > 0;
        if now >= due || first_advance || unpersisted >= self.persist_at {
            self.advance_written |= unpersisted > 0;
            self.last_write = Some(now);
            self.next = None;
            true
        } else {
            if self.next.is_none() {
                self.next = Some(due);
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_advance_is_written_at_once_then_at_most_every_interval_or_at_half_a_window() {
        let t = Instant::now();
        let mut s = WriteSchedule::new(SECOND, 100);
        assert!(
            s.write_now(t, 0),
            "file events at start: nothing written yet"
        );
        let ms = |n| t + Duration::from_millis(n);
        assert!(s.write_now(ms(10), 1), "the first advance goes at once");
        assert!(!s.write_now(ms(20), 5), "then it waits for the interval");
        assert_eq!(s.next(), Some(ms(1010)));
        assert!(!s.write_now(ms(30), 6));
        assert_eq!(s.next(), Some(ms(1010)), "armed once");
        assert!(s.write_now(ms(40), 100), "half the window waits: at once");
        assert_eq!(s.next(), None);
        s.fired();
        assert!(!s.write_now(ms(500), 1));
        assert!(s.write_now(ms(1040), 1), "due");
    }

    #[test]
    fn a_write_of_start_events_alone_does_not_use_up_the_first_advance() {
        let t = Instant::now();
        let mut s = WriteSchedule::new(SECOND, 100);
        assert!(s.write_now(t, 0));
        assert!(s.write_now(t + Duration::from_millis(1), 1));
    }
}
