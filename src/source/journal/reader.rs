//! The systemd journal source.
//!
//! sd-journal is a blocking API whose handle must stay on the thread that opened it for its
//! whole life (sd_journal_open(3); the `systemd` crate's `Journal` is `!Send`), so this source
//! owns one OS thread: it opens the journal there, reads batches of owned [`Record`]s and hands
//! them over a bounded channel. When the pipeline's in-flight window is full it stops taking
//! batches, the channel fills, and this thread blocks: that is the backpressure, and the
//! journal itself stays the buffer.
//!
//! Fields are read with `enumerate_data` after `set_data_threshold(0)`: the crate's
//! `next_entry()` is lossy (it mangles binary values and collapses repeated fields).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use systemd::journal::{self, Journal};
use tokio::sync::mpsc;

use super::entry::{cursor_seqnum, read_entry, Scratch};
use crate::config::{JournalConfig, JournalMatch, StartAt};
use crate::record::Record;
use crate::source::{Batch, SourceError};

use super::{JournalReader, Start};

/// How long one wait for journal changes lasts (changes wake it sooner): the reader notices a
/// stop within this, and an idle reader wakes this often.
pub(super) const WAIT: Duration = Duration::from_secs(1);

/// After a failed read or wait, the first retry comes this soon (then later, up to 25 times
/// this).
pub(super) const RETRY: Duration = Duration::from_millis(200);

/// Call `sd_journal_process` this often while catching up, so that rotated-away (deleted)
/// files are released instead of staying pinned on disk (journalctl does the same).
pub(super) const PROCESS_EVERY: u32 = 1024;

impl JournalReader {
    /// Opens the journal on a new thread and starts reading; returns once the journal is open
    /// and positioned (or failed to be).
    pub fn spawn(
        self,
        tx: mpsc::Sender<Batch>,
        stop: Arc<AtomicBool>,
    ) -> Result<JoinHandle<()>, SourceError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let name = self.cx.name.clone();
        let handle = std::thread::Builder::new()
            .name(format!("journal:{}", self.cx.name))
            .spawn(move || {
                let mut journal = match self.open() {
                    Ok(j) => {
                        let _ = ready_tx.send(Ok(()));
                        j
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                self.read_loop(&mut journal, &tx, &stop);
            })
            .map_err(|e| SourceError::Open {
                source_name: name.clone(),
                reason: format!("cannot start reader thread: {e}"),
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e)
            }
            Err(_) => Err(SourceError::Open {
                source_name: name,
                reason: "reader thread ended during start-up".into(),
            }),
        }
    }

    fn open(&self) -> Result<Journal, SourceError> {
        let mut j = open_journal(&self.cx.name, &self.config)?;
        self.position(&mut j)?;
        Ok(j)
    }

    fn open_err(&self, reason: String) -> SourceError {
        SourceError::Open {
            source_name: self.cx.name.clone(),
            reason,
        }
    }

    /// Positions the journal so that the next `next()` returns the first entry to ship.
    fn position(&self, j: &mut Journal) -> Result<(), SourceError> {
        let err = |what: &str, e: systemd::Error| self.open_err(format!("{what}: {e}"));
        match &self.start {
            Start::Fresh(StartAt::Head) => j.seek_head().map_err(|e| err("seek_head", e)),
            Start::Fresh(StartAt::Tail) => {
                j.seek_tail().map_err(|e| err("seek_tail", e))?;
                // Stand on the last existing entry; only entries after it are shipped.
                j.previous().map_err(|e| err("previous", e))?;
                Ok(())
            }
            Start::After(cursor) => {
                j.seek_cursor(cursor.as_str())
                    .map_err(|e| SourceError::BadCursor {
                        source_name: self.cx.name.clone(),
                        cursor: cursor.clone(),
                        reason: e.to_string(),
                    })?;
                // seek_cursor only stores a location; next() lands on the saved entry if it
                // still exists (already shipped: skip it) or on the closest later one (a gap:
                // ship it). Skipping unconditionally would lose an entry.
                if j.next().map_err(|e| err("next", e))? == 0 {
                    return Ok(());
                }
                if j.test_cursor(cursor.as_str())
                    .map_err(|e| err("test_cursor", e))?
                {
                    return Ok(());
                }
                self.report_gap(j, cursor);
                // Seek to this entry's own cursor, so that the read loop's next() returns it.
                // (Stepping back with previous() loses it when it is the journal's first
                // entry: there is nothing to step back to, and next() moves past it.)
                let landed = j.cursor().map_err(|e| err("cursor", e))?;
                j.seek_cursor(landed.as_str())
                    .map_err(|e| err("seek_cursor", e))?;
                Ok(())
            }
        }
    }

    fn report_gap(&self, j: &Journal, saved: &str) {
        self.cx.stats.gap(&self.cx.name);
        let current = j.cursor().unwrap_or_default();
        let lost = entries_lost(saved, &current);
        match lost {
            Some(n) if self.config.matches.is_empty() => tracing::warn!(
                source = %self.cx.name, lost_entries = n, saved_cursor = saved, resumed_at = %current,
                "Journal cursor no longer exists (journal vacuumed or rotated away while \
                 perapera was not reading); resuming at the oldest entry after it; \
                 {n} entries were lost"
            ),
            _ => tracing::warn!(
                source = %self.cx.name, saved_cursor = saved, resumed_at = %current,
                "Journal cursor no longer exists (journal vacuumed or rotated away while \
                 perapera was not reading); resuming at the oldest entry after it; entries \
                 between the two may be lost"
            ),
        }
    }

    fn read_loop(&self, j: &mut Journal, tx: &mpsc::Sender<Batch>, stop: &AtomicBool) {
        let mut batch = Vec::with_capacity(self.cx.batch_entries);
        let mut batch_bytes = 0usize;
        let mut since_process = 0u32;
        let mut failures = 0u32;
        let mut scratch = Scratch::default();
        while !stop.load(Ordering::Relaxed) {
            match j.next() {
                Ok(0) => {
                    if !batch.is_empty() {
                        batch_bytes = 0;
                        if !self.send(tx, &mut batch) {
                            return;
                        }
                    }
                    if let Err(e) = j.wait(Some(WAIT)) {
                        tracing::warn!(source = %self.cx.name, error = %e, "Waiting for journal changes failed; retrying");
                        std::thread::sleep(RETRY);
                    }
                    continue;
                }
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::error!(source = %self.cx.name, error = %e, failures,
                            "Reading the next journal entry failed; retrying");
                    }
                    std::thread::sleep(RETRY * failures.min(25));
                    continue;
                }
            }
            match read_entry(j, &mut scratch) {
                Ok(record) => {
                    batch_bytes += record.byte_size();
                    batch.push(record);
                }
                Err(e) => {
                    // A corrupt entry (-EBADMSG) or a field we cannot decode: skip the one
                    // entry, count it, keep reading. Its successor's cursor covers it.
                    self.cx.stats.failed(&self.cx.name, "unreadable");
                    tracing::error!(source = %self.cx.name, error = %e,
                        cursor = %j.cursor().unwrap_or_default(),
                        "Skipping a journal entry that cannot be read (corrupt journal file?)");
                }
            }
            since_process += 1;
            if since_process >= PROCESS_EVERY {
                since_process = 0;
                let _ = j.process();
            }
            if batch.len() >= self.cx.batch_entries || batch_bytes >= self.cx.batch_bytes {
                batch_bytes = 0;
                if !self.send(tx, &mut batch) {
                    return;
                }
            }
        }
    }

    /// Hands the batch to the pipeline, blocking while it is full. False when it is gone.
    fn send(&self, tx: &mpsc::Sender<Batch>, batch: &mut Vec<Record>) -> bool {
        let records = std::mem::replace(batch, Vec::with_capacity(self.cx.batch_entries));
        self.cx.stats.read(&self.cx.name, records.len() as u64);
        tx.blocking_send(Batch {
            source: self.cx.index,
            records,
            events: Vec::new(),
        })
        .is_ok()
    }
}

/// Opens the journal a source reads (directory, namespace or the system journal) with its
/// matches applied and the data threshold lifted; not positioned.
pub fn open_journal(name: &str, config: &JournalConfig) -> Result<Journal, SourceError> {
    let open_err = |reason: String| SourceError::Open {
        source_name: name.to_string(),
        reason,
    };
    let mut j = if let Some(dir) = &config.directory {
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(open_err(format!(
                    "directory {} is not a directory; point `directory` at a journal \
                     directory such as /var/log/journal",
                    dir.display()
                )))
            }
            Err(e) => {
                return Err(open_err(format!(
                    "directory {}: {e}; check `directory` (mount the host's \
                     /var/log/journal there when running in a container)",
                    dir.display()
                )))
            }
        }
        let path = dir.to_string_lossy().into_owned();
        journal::OpenDirectoryOptions::default()
            .open_directory(path.as_str())
            .map_err(|e| open_err(format!("cannot open {}: {e}", dir.display())))?
    } else if let Some(ns) = &config.namespace {
        journal::OpenOptions::default()
            .local_only(true)
            .open_namespace(ns.as_str())
            .map_err(|e| open_err(format!("cannot open namespace {ns:?}: {e}")))?
    } else {
        journal::OpenOptions::default()
            .local_only(true)
            .open()
            .map_err(|e| open_err(format!("cannot open the system journal: {e}")))?
    };
    j.set_data_threshold(0)
        .map_err(|e| open_err(format!("set_data_threshold: {e}")))?;
    // Only meaningful for the system journal: the flags describe /var/log and /run files.
    let system = config.directory.is_none();
    if system
        && !(j.has_persistent_files().unwrap_or(true) || j.has_runtime_files().unwrap_or(true))
    {
        tracing::warn!(source = %name,
            "No journal files are visible yet; waiting for some. Is systemd-journald \
             running, and may this user read the journal (root, or group systemd-journal/adm)?");
    }
    for m in &config.matches {
        let r = match m {
            JournalMatch::Field { name, value } => {
                j.match_add(name, value.as_bytes().to_vec()).map(|_| ())
            }
            JournalMatch::Or => j.match_or().map(|_| ()),
        };
        r.map_err(|e| open_err(format!("invalid match {m:?}: {e}")))?;
    }
    Ok(j)
}

/// Checks that the journal accepts `cursor` (what `run` would seek to), for `perapera check`.
/// `BadCursor` if it rejects it; `Open` if the journal cannot be opened.
pub fn check_cursor(name: &str, config: &JournalConfig, cursor: &str) -> Result<(), SourceError> {
    let mut j = open_journal(name, config)?;
    j.seek_cursor(cursor)
        .map(|_| ())
        .map_err(|e| SourceError::BadCursor {
            source_name: name.to_string(),
            cursor: cursor.to_string(),
            reason: e.to_string(),
        })
}

/// Entries between a vanished saved cursor and the entry we resumed at, when both carry the
/// same sequence-number id (otherwise the journal cannot tell).
pub(super) fn entries_lost(saved: &str, resumed: &str) -> Option<u64> {
    match (cursor_seqnum(saved), cursor_seqnum(resumed)) {
        (Some((sid, si)), Some((rid, ri))) if sid == rid && ri > si => Some(ri - si - 1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_lost_between_cursors_count_seqnums_within_one_seqnum_id_only() {
        assert_eq!(entries_lost("s=ab;i=a;b=1", "s=ab;i=14;b=1"), Some(9));
        assert_eq!(entries_lost("s=ab;i=a", "s=ab;i=b"), Some(0));
        assert_eq!(
            entries_lost("s=ab;i=a", "s=cd;i=14"),
            None,
            "another seqnum id"
        );
        assert_eq!(entries_lost("s=ab;i=a", "s=ab;i=a"), None);
        assert_eq!(entries_lost("garbage", "s=ab;i=1"), None);
    }
}
