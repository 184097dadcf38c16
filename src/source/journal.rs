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

use super::{Batch, SourceError};
use crate::config::{JournalConfig, JournalMatch, StartAt};
use crate::msgpack::write as encode;
use crate::ops::metrics::Stats;
use crate::record::{Position, Record};

pub use super::journal_settings::{lag_us, JournalReader, Start};

/// How long one wait for journal changes lasts (changes wake it sooner): the reader notices a
/// stop within this, and an idle reader wakes this often.
const WAIT: Duration = Duration::from_secs(1);
/// After a failed read or wait, the first retry comes this soon (then later, up to 25 times
/// this).
const RETRY: Duration = Duration::from_millis(200);
/// Call `sd_journal_process` this often while catching up, so that rotated-away (deleted)
/// files are released instead of staying pinned on disk (journalctl does the same).
const PROCESS_EVERY: u32 = 1024;

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

/// How often the lag prober looks at the newest entry.
const PROBE_EVERY: Duration = Duration::from_secs(5);

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

/// Reused between entries, so that reading an entry allocates only its record.
#[derive(Default)]
struct Scratch {
    /// The entry's `NAME=value` data, copied out of sd-journal (its pointers are valid only
    /// until the next field is read).
    data: Vec<u8>,
    /// Per field: where its data starts, where the `=` is, where it ends, in `data`, and
    /// the first 16 bytes of its name (zero-padded, big-endian: orders like the name).
    fields: Vec<(usize, usize, usize, u128)>,
}

/// The first 16 bytes of a field name as a number that sorts like the name does.
fn name_prefix(name: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    let n = name.len().min(16);
    b[..n].copy_from_slice(&name[..n]);
    u128::from_be_bytes(b)
}

/// Reads the current entry straight into its MessagePack map: every field byte-exact (text
/// as `str`, anything else as `bin`), sorted by name, a repeated field as an array in journal
/// order, plus `__CURSOR`, `__REALTIME_TIMESTAMP` and `__MONOTONIC_TIMESTAMP`.
fn read_entry(j: &mut Journal, scratch: &mut Scratch) -> Result<Record, systemd::Error> {
    let cursor = cursor(j)?;
    // The cursor carries both timestamps (`m=`, `t=`): reading them there saves two calls
    // that each look the entry object up again.
    let (realtime, monotonic) = match cursor_times(&cursor) {
        Some(times) => times,
        None => (j.timestamp_usec()?, j.monotonic_timestamp()?.0),
    };
    let Scratch { data, fields } = scratch;
    data.clear();
    fields.clear();
    each_field(j, |bytes| {
        let Some(eq) = memchr::memchr(b'=', bytes) else {
            return;
        };
        let start = data.len();
        data.extend_from_slice(bytes);
        fields.push((start, start + eq, data.len(), name_prefix(&bytes[..eq])));
    })?;
    // Field order from sd-journal is undefined: sort by name (stable, so repeated values keep
    // their order) and fold repeats into arrays. Most names differ in their first 16 bytes,
    // so most comparisons are one integer comparison.
    let data = &data[..];
    let name = |f: &(usize, usize, usize, u128)| &data[f.0..f.1];
    let value = |f: &(usize, usize, usize, u128)| &data[f.1 + 1..f.2];
    fields.sort_by(|a, b| a.3.cmp(&b.3).then_with(|| name(a).cmp(name(b))));
    let distinct = fields
        .iter()
        .enumerate()
        .filter(|(i, f)| *i == 0 || name(&fields[i - 1]) != name(f))
        .count();
    let mut map = Vec::with_capacity(data.len() + 3 * fields.len() + cursor.len() + 96);
    encode::write_map_len(&mut map, distinct + 3);
    let mut source_time = None;
    let mut i = 0;
    while i < fields.len() {
        let field_name = name(&fields[i]);
        let same = fields[i..]
            .iter()
            .take_while(|f| name(f) == field_name)
            .count();
        encode::write_name(&mut map, field_name);
        if same == 1 {
            encode::write_text(&mut map, value(&fields[i]));
        } else {
            encode::write_array_len(&mut map, same);
            for f in &fields[i..i + same] {
                encode::write_text(&mut map, value(f));
            }
        }
        if field_name == b"_SOURCE_REALTIME_TIMESTAMP" {
            source_time = std::str::from_utf8(value(&fields[i]))
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
        }
        i += same;
    }
    encode::write_str(&mut map, "__CURSOR");
    encode::write_str(&mut map, &cursor);
    encode::write_str(&mut map, "__REALTIME_TIMESTAMP");
    encode::write_uint(&mut map, realtime);
    encode::write_str(&mut map, "__MONOTONIC_TIMESTAMP");
    encode::write_uint(&mut map, monotonic);
    Ok(Record::from_msgpack(
        map,
        source_time.unwrap_or(realtime).saturating_mul(1000),
        Position::Cursor(cursor),
    ))
}

/// Calls `f` with each `NAME=value` data of the current entry, in sd-journal's order.
/// Straight through `sd_journal_enumerate_data`: the crate's wrapper splits every field at
/// its `=` (a search we do anyway) and wraps every call in an error context.
fn each_field(j: &mut Journal, mut f: impl FnMut(&[u8])) -> Result<(), systemd::Error> {
    use foreign_types::ForeignTypeRef as _;
    use libsystemd_sys::journal as sys;
    let ptr = j.as_ptr();
    // SAFETY: a live journal handle, positioned on an entry.
    unsafe { sys::sd_journal_restart_data(ptr) };
    loop {
        let mut data: *const u8 = std::ptr::null();
        let mut len = 0usize;
        // SAFETY: as above; on success `data` points at `len` bytes that stay valid until
        // the next enumerate call, and `f` does not keep them.
        let r = unsafe { sys::sd_journal_enumerate_data(ptr, &mut data, &mut len) };
        if r < 0 {
            return Err(systemd::Error::from_raw_os_error(-r));
        }
        if r == 0 || data.is_null() {
            return Ok(());
        }
        // SAFETY: see above.
        f(unsafe { std::slice::from_raw_parts(data, len) });
    }
}

/// `(realtime, monotonic)` from a cursor's `t=` and `m=` (hexadecimal µs), as sd-journal
/// formats them (`s=…;i=…;b=…;m=…;t=…;x=…`); `None` when either is missing.
fn cursor_times(cursor: &str) -> Option<(u64, u64)> {
    let hex = |key| u64::from_str_radix(cursor_part(cursor, key)?, 16).ok();
    Some((hex("t=")?, hex("m=")?))
}

/// The value of the cursor part that starts with `key` (e.g. `"i="`).
fn cursor_part<'a>(cursor: &'a str, key: &str) -> Option<&'a str> {
    cursor.split(';').find_map(|part| part.strip_prefix(key))
}

/// The current entry's cursor. `Journal::cursor` checks sd-journal's string as lossy UTF-8 and
/// copies it: in the small-entry profile that was as much as the sort of the fields. A
/// cursor is ASCII (`s=…;i=…;b=…;m=…;t=…;x=…`); anything else is an error here.
fn cursor(j: &Journal) -> Result<String, systemd::Error> {
    use foreign_types::ForeignTypeRef as _;
    let mut c: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: a live journal handle positioned on an entry; on success `c` is a malloc'd
    // NUL-terminated string that we own and free below.
    let r = unsafe { libsystemd_sys::journal::sd_journal_get_cursor(j.as_ptr(), &mut c) };
    if r < 0 || c.is_null() {
        return Err(systemd::Error::from_raw_os_error(-r.min(-1)));
    }
    // SAFETY: as above; the bytes are copied before the string is freed.
    let text = unsafe { std::ffi::CStr::from_ptr(c) }
        .to_str()
        .map(str::to_owned);
    // SAFETY: allocated by sd_journal_get_cursor with malloc, freed once.
    unsafe { libc::free(c as *mut std::ffi::c_void) };
    text.map_err(|_| systemd::Error::from_raw_os_error(libc::EBADMSG))
}

/// Entries between a vanished saved cursor and the entry we resumed at, when both carry the
/// same sequence-number id (otherwise the journal cannot tell).
fn entries_lost(saved: &str, resumed: &str) -> Option<u64> {
    match (cursor_seqnum(saved), cursor_seqnum(resumed)) {
        (Some((sid, si)), Some((rid, ri))) if sid == rid && ri > si => Some(ri - si - 1),
        _ => None,
    }
}

/// `(seqnum_id, seqnum)` from a cursor `s=…;i=…;…`.
fn cursor_seqnum(cursor: &str) -> Option<(&str, u64)> {
    let num = u64::from_str_radix(cursor_part(cursor, "i=")?, 16).ok()?;
    Some((cursor_part(cursor, "s=")?, num))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqnum_from_cursor() {
        let c = "s=739ad463348b4ceca5a9e69c95a3c93f;i=4ece7;b=6c7c6013a8;m=419d2;t=5c3;x=d1";
        assert_eq!(
            cursor_seqnum(c),
            Some(("739ad463348b4ceca5a9e69c95a3c93f", 0x4ece7))
        );
        assert_eq!(cursor_seqnum("b=1;m=2"), None);
    }

    #[test]
    fn both_timestamps_are_read_from_the_cursor_and_a_malformed_one_yields_none() {
        let c = "s=739ad463348b4ceca5a9e69c95a3c93f;i=4ece7;b=6c7c6013a8;m=419d2;t=5c3f0A;x=d1";
        assert_eq!(cursor_times(c), Some((0x5c3f0a, 0x419d2)));
        assert_eq!(
            cursor_times("s=ab;i=1;m=ffffffffffffffff;t=0"),
            Some((0, u64::MAX))
        );
        assert_eq!(cursor_times("s=ab;i=1;m=12"), None, "no t=");
        assert_eq!(cursor_times("s=ab;m=12;t=1g"), None, "not hex");
        assert_eq!(cursor_times("m=;t=1"), None, "empty");
        assert_eq!(
            cursor_times("m=1;t=10000000000000000"),
            None,
            "over 64 bits"
        );
    }

    #[test]
    fn lost_entries_from_seqnums() {
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
