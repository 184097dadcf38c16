//! The acknowledgement a forward request is owed, shared by its entries' positions.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

/// Counts a request's entries down; when the last one is done, the request's reply (if it
/// asked for one) goes back on its connection.
#[derive(Debug)]
pub struct RequestAck {
    /// The sender's address (the records' position text).
    pub peer: String,
    remaining: AtomicUsize,
    /// Where the reply goes, and its bytes; `None` when the request asked for no ack.
    reply: Option<(mpsc::UnboundedSender<Vec<u8>>, Vec<u8>)>,
}

impl PartialEq for RequestAck {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for RequestAck {}

impl RequestAck {
    /// The acknowledgement of a request of `entries` entries (at least one) from `peer`.
    pub fn new(
        peer: String,
        entries: usize,
        reply: Option<(mpsc::UnboundedSender<Vec<u8>>, Vec<u8>)>,
    ) -> Arc<RequestAck> {
        Arc::new(RequestAck {
            peer,
            remaining: AtomicUsize::new(entries),
            reply,
        })
    }

    /// One entry of the request is done (acknowledged by the sink, or finally handled by the
    /// oversize policy). The last one sends the reply.
    pub fn entry_done(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some((tx, ack)) = &self.reply {
                let _ = tx.send(ack.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_goes_once_when_the_last_entry_is_done_and_not_before() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ack = RequestAck::new("peer".into(), 3, Some((tx, b"ack".to_vec())));
        ack.entry_done();
        ack.entry_done();
        assert!(
            rx.try_recv().is_err(),
            "two of three entries done: no reply yet"
        );
        ack.entry_done();
        assert_eq!(rx.try_recv().ok(), Some(b"ack".to_vec()));
        assert!(rx.try_recv().is_err(), "one reply only");
    }
}
