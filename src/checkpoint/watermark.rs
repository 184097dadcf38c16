//! [`Watermark`] tracks entries in read order and yields the position of the longest prefix
//! that the sink acknowledged. Acks arrive out of order (Kafka partitions, forward chunks);
//! the watermark never passes an entry that is still unacknowledged. This is the whole
//! at-least-once promise, so it is small and property-tested.

use std::collections::VecDeque;

/// Tracks in-flight entries in read order; `advance` pops the acknowledged prefix.
#[derive(Debug)]
pub struct Watermark<T> {
    /// Sequence number of `slots[0]`.
    head: u64,
    slots: VecDeque<(T, bool)>,
}

impl<T> Default for Watermark<T> {
    fn default() -> Self {
        Watermark {
            head: 0,
            slots: VecDeque::new(),
        }
    }
}

impl<T> Watermark<T> {
    /// Adds an entry at the end; returns its sequence number.
    pub fn push(&mut self, item: T) -> u64 {
        self.slots.push_back((item, false));
        self.head + self.slots.len() as u64 - 1
    }

    /// The entry with sequence number `seq`, if it is still tracked.
    pub fn get_mut(&mut self, seq: u64) -> Option<(&mut T, bool)> {
        let idx = seq.checked_sub(self.head)?;
        self.slots
            .get_mut(usize::try_from(idx).ok()?)
            .map(|(item, done)| (item, *done))
    }

    /// Marks `seq` as acknowledged (or finally handled). Returns true if it was pending.
    pub fn complete(&mut self, seq: u64) -> bool {
        let Some(idx) = seq
            .checked_sub(self.head)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return false;
        };
        match self.slots.get_mut(idx) {
            Some((_, done)) if !*done => {
                *done = true;
                true
            }
            _ => false,
        }
    }

    /// Pops the completed prefix and returns its last item: the new watermark.
    pub fn advance(&mut self) -> Option<T> {
        let mut last = None;
        self.advance_each(|item| last = Some(item));
        last
    }

    /// Pops the completed prefix, handing each item to `f` in order; returns how many.
    pub fn advance_each(&mut self, mut f: impl FnMut(T)) -> usize {
        let mut n = 0;
        while self.slots.front().is_some_and(|(_, done)| *done) {
            if let Some((item, _)) = self.slots.pop_front() {
                f(item);
            }
            self.head += 1;
            n += 1;
        }
        n
    }

    /// Entries tracked (pending, or done but behind a pending one).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Sequence numbers of entries not yet completed, in order.
    pub fn pending(&self) -> impl Iterator<Item = u64> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, (_, done))| !done)
            .map(|(i, _)| self.head + i as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    #[test]
    fn watermark_waits_for_the_gap() {
        let mut w = Watermark::default();
        for i in 0..5 {
            assert_eq!(w.push(i), i);
        }
        assert!(w.complete(1));
        assert!(w.complete(2));
        assert_eq!(w.advance(), None);
        assert!(w.complete(0));
        assert!(!w.complete(0), "double ack is ignored");
        assert_eq!(w.advance(), Some(2));
        assert_eq!(w.len(), 2);
        assert_eq!(w.pending().collect::<Vec<_>>(), vec![3, 4]);
        assert!(!w.complete(1), "ack below the watermark is ignored");
        assert!(!w.complete(99), "ack beyond the end is ignored");
        assert!(w.complete(4));
        assert!(w.complete(3));
        assert_eq!(w.advance(), Some(4));
        assert!(w.is_empty());
        assert_eq!(w.push(5), 5);
    }

    proptest! {
        /// Acks in any order, with duplicates: the watermark is always the largest n such
        /// that every entry <= n was acked, and never passes an unacked entry.
        #[test]
        fn watermark_is_the_contiguous_acked_prefix(
            n in 1usize..300,
            order in proptest::collection::vec(any::<proptest::sample::Index>(), 0..600),
        ) {
            let mut w = Watermark::default();
            for i in 0..n as u64 { w.push(i); }
            let mut acked = vec![false; n];
            let mut mark: Option<u64> = None;
            for idx in order {
                let seq = idx.index(n);
                w.complete(seq as u64);
                acked[seq] = true;
                if let Some(m) = w.advance() { mark = Some(m); }
                let expected = acked.iter().take_while(|a| **a).count();
                prop_assert_eq!(mark.map(|m| m + 1).unwrap_or(0), expected as u64);
                if let Some(m) = mark {
                    prop_assert!(acked[..=m as usize].iter().all(|a| *a));
                }
            }
        }
    }
}
