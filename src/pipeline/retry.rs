//! When to send an entry again: the backoff after transient failures, and the queue of
//! entries due for a re-send. Pure types: the pipeline asks them, they never send.

use std::time::Duration;

use tokio::time::Instant;

/// The first delay after a transient failure.
pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest.
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A full client queue is backpressure: retry soon, without growing the backoff.
pub(super) const QUEUE_FULL_DELAY: Duration = Duration::from_millis(20);

/// How long to wait before re-sending after a transient failure: doubles per round of
/// failures, 100 ms, 200 ms, ... capped at 30 s; reset by any success.
#[derive(Debug)]
pub(super) struct Backoff {
    current: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            current: BACKOFF_MIN,
        }
    }
}

impl Backoff {
    /// The delay the next failure gets.
    pub(super) fn current(&self) -> Duration {
        self.current
    }

    /// A delivery succeeded.
    pub(super) fn reset(&mut self) {
        self.current = BACKOFF_MIN;
    }

    /// The delay for a failure. A burst of failures (every in-flight entry timing out at
    /// once) is one round: only a failure that starts a round (`new_round`: no retry is
    /// scheduled yet) doubles the delay of the next round.
    pub(super) fn failure(&mut self, new_round: bool) -> Duration {
        let delay = self.current;
        if new_round {
            self.current = (self.current * 2).min(BACKOFF_MAX);
        }
        delay
    }
}

/// Entries to send again: when, source, sequence.
#[derive(Debug, Default)]
pub(super) struct RetryQueue {
    entries: Vec<(Instant, usize, u64)>,
    next: Option<Instant>,
}

impl RetryQueue {
    /// Entry `seq` of source `src` is to be sent again at `at`.
    pub(super) fn push(&mut self, at: Instant, src: usize, seq: u64) {
        self.entries.push((at, src, seq));
        self.next = Some(self.next.map_or(at, |t| t.min(at)));
    }

    /// When the earliest entry is due; `None` when the queue is empty.
    pub(super) fn next(&self) -> Option<Instant> {
        self.next
    }

    /// The entries due at `now`, in read order, each once; the others stay queued.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<(usize, u64)> {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|(at, _, _)| *at <= now);
        self.entries = later;
        self.next = self.entries.iter().map(|(at, _, _)| *at).min();
        let mut due: Vec<(usize, u64)> = due.into_iter().map(|(_, src, seq)| (src, seq)).collect();
        due.sort_unstable();
        due.dedup();
        due
    }

    /// Forgets every entry (the sink was recreated and everything pending is sent again).
    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.next = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_per_round_not_per_failure_caps_at_30s_and_a_success_resets_it() {
        let mut b = Backoff::default();
        assert_eq!(b.failure(true), BACKOFF_MIN);
        assert_eq!(b.failure(false), BACKOFF_MIN * 2, "same round: no doubling");
        assert_eq!(b.failure(false), BACKOFF_MIN * 2);
        assert_eq!(b.failure(true), BACKOFF_MIN * 2);
        assert_eq!(b.current(), BACKOFF_MIN * 4);
        for _ in 0..20 {
            b.failure(true);
        }
        assert_eq!(b.current(), BACKOFF_MAX);
        b.reset();
        assert_eq!(b.current(), BACKOFF_MIN);
    }

    #[test]
    fn due_entries_come_out_in_read_order_once_and_later_ones_stay() {
        let t = Instant::now();
        let mut q = RetryQueue::default();
        assert_eq!(q.next(), None);
        q.push(t + Duration::from_secs(5), 0, 9);
        q.push(t, 1, 2);
        q.push(t, 0, 7);
        q.push(t, 1, 2);
        assert_eq!(q.next(), Some(t));
        assert_eq!(q.take_due(t), vec![(0, 7), (1, 2)]);
        assert_eq!(q.next(), Some(t + Duration::from_secs(5)));
        assert!(q.take_due(t).is_empty());
        q.clear();
        assert_eq!(q.next(), None);
        assert!(q.take_due(t + Duration::from_secs(60)).is_empty());
    }
}
