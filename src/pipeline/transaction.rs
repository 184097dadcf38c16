//! Exactly-once (`delivery = "exactly-once"`): the window's entries go out inside a Kafka
//! transaction, and "the checkpoint is written" means "the transaction committed".
//!
//! When a checkpoint is due (the same schedule as the file's: the first advance at once, then
//! every `transaction_interval`, or when half the window waits), the pipeline makes a *cut*:
//! it takes no batch and sends nothing new until every entry sent is acknowledged. Then the
//! positions cover exactly what the transaction holds: they go into the checkpoint record,
//! in the same transaction, and the commit runs on a blocking thread. Once it committed, the
//! local checkpoint file is written (for `cursor show` and as a cross-check), the window
//! places free and forward senders get their acks.
//!
//! A failed delivery, an abortable or fatal commit, or being fenced cannot be repaired inside
//! the transaction: the pipeline *rewinds*. It stops, aborts the open transaction, and `run`
//! starts over with a new producer from the checkpoint committed in Kafka. The journal and
//! the files are the buffer: nothing is kept beyond the window.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::Pipeline;
use crate::clock::unix_ms;
use crate::position::RequestAck;
use crate::sink::{TxnError, TxnJob};

/// The exactly-once state of a pipeline.
#[derive(Default)]
pub(super) struct Transactions {
    /// A commit is due: no batch is taken and nothing new is sent until it is done.
    pub(super) cut: bool,
    /// Forward requests owed an acknowledgement once the transaction holding their entries
    /// committed (one per entry, as `entry_done` counts them).
    owed: Vec<Arc<RequestAck>>,
    /// Why the open transaction cannot commit.
    pub(super) rewind: Option<TxnError>,
    /// When the running commit started.
    commit_started: Option<Instant>,
    /// Entries sent since the last commit (the transaction is open).
    pub(super) sent: bool,
}

impl Transactions {
    /// Owes `request` the acknowledgement of one entry, after the commit.
    pub(super) fn owe(&mut self, request: Arc<RequestAck>) {
        self.owed.push(request);
    }

    /// The first reason to rewind wins (later ones follow from it).
    pub(super) fn fail(&mut self, e: TxnError) {
        self.rewind.get_or_insert(e);
    }
}

/// What to do after a commit returned.
pub(super) enum AfterCommit {
    /// Committed: go on.
    Done,
    /// Retriable: run this (the same commit) again.
    Retry(TxnJob),
    /// Stop and start over from the committed checkpoint.
    Rewind(TxnError),
}

impl Pipeline {
    /// A commit is wanted: positions moved, or entries went into the open transaction.
    pub(super) fn commit_wanted(&self) -> bool {
        self.txn
            .as_ref()
            .is_some_and(|t| t.sent || !t.owed.is_empty())
            || self.sources.iter().any(|s| s.dirty)
    }

    /// Puts the checkpoint record into the transaction and returns the commit to run.
    /// Called at a cut, once every entry sent is acknowledged.
    pub(super) fn start_commit(&mut self) -> Result<TxnJob, TxnError> {
        self.update_checkpoint();
        let record = serde_json::to_vec(&self.checkpoint)
            .map_err(|e| TxnError::Fatal(format!("cannot encode the checkpoint: {e}")))?;
        let Some(sink) = self.sink.transactional() else {
            return Err(TxnError::Fatal("the sink is not transactional".into()));
        };
        let job = sink.commit_job(record)?;
        if let Some(t) = &mut self.txn {
            t.commit_started = Some(Instant::now());
        }
        Ok(job)
    }

    /// Applies a commit's outcome.
    pub(super) fn on_commit(&mut self, result: Result<(), TxnError>) -> AfterCommit {
        match result {
            Ok(()) => {
                if let Some(sink) = self.sink.transactional() {
                    sink.committed();
                }
                let took = self
                    .txn
                    .as_mut()
                    .and_then(|t| t.commit_started.take())
                    .map(|t| t.elapsed())
                    .unwrap_or_default();
                self.stats.txn.committed(took, unix_ms());
                // The file follows the commit: it is only a cross-check and `cursor show`'s
                // source, so a failure to write it is reported and shipping goes on.
                match self.state.store(&self.checkpoint) {
                    Ok(()) => {
                        self.stats.checkpoint_writes.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.stats.checkpoint_errors.fetch_add(1, Ordering::Relaxed);
                        if let Some(suppressed) = self.limit.allow("checkpoint") {
                            tracing::error!(error = %e, suppressed,
                                "Cannot write the local checkpoint file after a commit; the \
                                 checkpoint in Kafka is the one that counts, shipping goes on");
                        }
                    }
                }
                self.persisted();
                if let Some(t) = &mut self.txn {
                    t.cut = false;
                    t.sent = false;
                    for request in t.owed.drain(..) {
                        request.entry_done();
                    }
                }
                AfterCommit::Done
            }
            Err(TxnError::Retriable(reason)) => {
                tracing::warn!(%reason, "Committing the Kafka transaction failed; retrying the commit");
                match self.sink.transactional() {
                    Some(sink) => AfterCommit::Retry(sink.retry_commit_job()),
                    None => AfterCommit::Rewind(TxnError::Fatal(reason)),
                }
            }
            Err(e) => AfterCommit::Rewind(e),
        }
    }

    /// The abort of the open transaction, if one is open (before a rewind).
    pub(super) fn abort_job(&mut self) -> Option<TxnJob> {
        self.sink.transactional().and_then(|s| s.abort_job())
    }
}
