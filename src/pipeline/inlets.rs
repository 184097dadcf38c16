//! One bounded channel per source into the pipeline, and the share of the window each source
//! may hold. With one channel for all, a source whose entries cannot be delivered (a topic
//! that does not exist, waiting by policy) filled the whole window, and every other source
//! stopped with it. Now a source takes a batch only while it holds less than its share, so
//! the others always find room.

use std::future::poll_fn;
use std::task::Poll;

use tokio::sync::mpsc;

use crate::source::Batch;

/// Batches a source may have read ahead of the pipeline.
const QUEUED: usize = 2;

/// The receiving ends, polled in turn so that no source starves another.
pub struct Inlets {
    receivers: Vec<Option<mpsc::Receiver<Batch>>>,
    next: usize,
}

impl Inlets {
    /// A channel per source; the senders go to the readers, in source order.
    pub fn new(sources: usize) -> (Inlets, Vec<mpsc::Sender<Batch>>) {
        let (senders, receivers) = (0..sources)
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUED);
                (tx, Some(rx))
            })
            .unzip();
        (Inlets { receivers, next: 0 }, senders)
    }

    /// The next batch of a source that `admits`, taking sources in turn; `None` once every
    /// source has ended (each reader dropped its sender). Sources not admitted are not
    /// polled: their batches wait in their channel and their readers stop reading.
    pub async fn recv(&mut self, admits: impl Fn(usize) -> bool) -> Option<Batch> {
        poll_fn(|cx| {
            let n = self.receivers.len();
            let mut open = 0;
            for k in 0..n {
                let i = (self.next + k) % n;
                let Some(rx) = &mut self.receivers[i] else {
                    continue;
                };
                if !admits(i) {
                    open += 1;
                    continue;
                }
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(batch)) => {
                        self.next = (i + 1) % n;
                        return Poll::Ready(Some(batch));
                    }
                    Poll::Ready(None) => self.receivers[i] = None,
                    Poll::Pending => open += 1,
                }
            }
            if open == 0 {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Stops taking batches: readers blocked on a full channel see it closed.
    pub fn close(&mut self) {
        self.receivers.clear();
    }
}

/// The part of the window one source may hold when `sources` share it: all of it alone, else
/// an equal share, and at least one batch.
pub fn share(window: usize, sources: usize, batch: usize) -> usize {
    if sources <= 1 {
        window
    } else {
        (window / sources).max(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(source: usize) -> Batch {
        Batch {
            source,
            records: Vec::new(),
            events: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_source_not_admitted_does_not_hold_back_the_others() {
        let (mut inlets, senders) = Inlets::new(3);
        for (i, tx) in senders.iter().enumerate() {
            tx.try_send(batch(i)).unwrap();
            tx.try_send(batch(i)).unwrap();
        }
        // Source 0 holds its share: only 1 and 2 are taken, in turn.
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(inlets.recv(|i| i != 0).await.unwrap().source);
        }
        assert_eq!(got, vec![1, 2, 1, 2]);
        assert_eq!(inlets.recv(|_| true).await.unwrap().source, 0);
        // Ended sources leave; the end is reported once all have ended.
        drop(senders);
        assert_eq!(inlets.recv(|_| true).await.unwrap().source, 0);
        assert!(inlets.recv(|_| true).await.is_none());
    }

    #[test]
    fn shares_leave_room_for_every_source() {
        assert_eq!(share(10_000, 1, 512), 10_000);
        assert_eq!(share(10_000, 2, 512), 5_000);
        assert_eq!(share(1_000, 4, 250), 250);
        assert_eq!(share(100, 8, 25), 25);
    }
}
