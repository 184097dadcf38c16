//! The forward source's memory budget: every byte a peer made us hold and that the pipeline
//! does not hold yet (connection buffers with partial or complete requests) is charged here,
//! shared by all connections, **before** it is buffered, and given back when the request has
//! been handed to the pipeline or the connection closes. At the budget, connections stop
//! being read (backpressure: TCP and the senders' own buffers hold the rest) until bytes are
//! given back; the pipeline's window (`max_in_flight_bytes`) bounds what was handed on.
//!
//! Each connection's first [`FREE_BYTES`] are not charged: a sender of ordinary requests is
//! never held back by others' large ones (so the bound is `max_buffer_bytes` plus
//! `max_connections` × [`FREE_BYTES`]).
//!
//! A budget full of requests that never complete (a peer sending all but the last byte) must
//! not starve a sender that makes progress: a connection waiting for the budget asks the
//! source to close the connection holding the most bytes that has been silent longest
//! ([`Budget::wait`] returns, and the caller picks the victim).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// What every connection may hold without charging the budget.
pub const FREE_BYTES: usize = 64 << 10;

/// Bytes shared by every connection of one forward source.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
    freed: Notify,
}

/// Bytes held under a [`Budget`]; given back when dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// Bytes charged now.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// An empty charge.
    pub fn charge(self: &Arc<Self>) -> Charge {
        Charge {
            budget: self.clone(),
            bytes: 0,
        }
    }

    fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::AcqRel);
            self.freed.notify_waiters();
        }
    }

    /// Waits until bytes are given back, or `patience` passed.
    pub async fn wait(&self, patience: Duration) {
        let freed = self.freed.notified();
        let _ = tokio::time::timeout(patience, freed).await;
    }
}

impl Charge {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Grows the charge to cover a buffer of `held` bytes (the first [`FREE_BYTES`] are free)
    /// if the budget has room; false if not (nothing changes).
    pub fn try_hold(&mut self, held: usize) -> bool {
        self.try_grow_to(held.saturating_sub(FREE_BYTES))
    }

    /// Shrinks the charge to cover a buffer of `held` bytes.
    pub fn release_to(&mut self, held: usize) {
        self.shrink_to(held.saturating_sub(FREE_BYTES));
    }

    /// Grows the charge to `bytes` if the budget has room; false if not (nothing changes).
    fn try_grow_to(&mut self, bytes: usize) -> bool {
        if bytes <= self.bytes {
            return true;
        }
        if self.budget.try_take(bytes - self.bytes) {
            self.bytes = bytes;
            true
        } else {
            false
        }
    }

    /// Shrinks the charge to `bytes`, giving the rest back.
    fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.give(self.bytes - bytes);
            self.bytes = bytes;
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_share_one_limit_and_give_back_on_drop() {
        let budget = Budget::new(100);
        let mut a = budget.charge();
        let mut b = budget.charge();
        assert!(a.try_grow_to(60));
        assert!(!b.try_grow_to(41), "over the shared limit");
        assert_eq!(b.bytes(), 0);
        assert!(b.try_grow_to(40));
        assert_eq!(budget.used(), 100);
        a.shrink_to(10);
        assert_eq!(budget.used(), 50);
        drop(b);
        assert_eq!(budget.used(), 10);
        drop(a);
        assert_eq!(budget.used(), 0);
        // Buffers up to FREE_BYTES cost nothing.
        let mut c = budget.charge();
        assert!(c.try_hold(FREE_BYTES));
        assert_eq!(budget.used(), 0);
        assert!(c.try_hold(FREE_BYTES + 100));
        assert_eq!(budget.used(), 100);
        assert!(!c.try_hold(FREE_BYTES + 101));
        c.release_to(10);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_bytes_are_given_back() {
        let budget = Budget::new(10);
        let mut full = budget.charge();
        assert!(full.try_grow_to(10));
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let start = tokio::time::Instant::now();
                budget.wait(Duration::from_secs(30)).await;
                start.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(full);
        let waited = waiter.await.unwrap();
        assert!(waited < Duration::from_secs(10), "woke after {waited:?}");
    }
}
