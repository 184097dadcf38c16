//! Counters, per source: what was read, acknowledged, failed (by reason), and the gaps the
//! journal's own retention caused. Updated per batch (not per entry) on the hot path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Counters of one source.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// The source's name.
    pub name: String,
    /// `perapera_entries_read_total`.
    pub read: AtomicU64,
    /// `perapera_entries_acked_total`.
    pub acked: AtomicU64,
    /// `perapera_source_gaps_total`.
    pub gaps: AtomicU64,
    /// `perapera_entries_failed_total` by reason (rare: a lock is fine).
    pub failed: Mutex<BTreeMap<&'static str, u64>>,
    /// Things worth counting that are not failures (a long line split into parts, a line
    /// that did not parse and was shipped as is), by what.
    pub noted: Mutex<BTreeMap<&'static str, u64>>,
}

/// All counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// One per configured source, in config order.
    pub sources: Vec<SourceStats>,
    /// `perapera_sink_retries_total`.
    pub sink_retries: AtomicU64,
}

impl Stats {
    /// Counters for these source names.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Stats {
        Stats {
            sources: names
                .into_iter()
                .map(|n| SourceStats {
                    name: n.to_string(),
                    ..SourceStats::default()
                })
                .collect(),
            sink_retries: AtomicU64::new(0),
        }
    }

    fn source(&self, name: &str) -> Option<&SourceStats> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// Entries read by `source`.
    pub fn read(&self, source: &str, n: u64) {
        if let Some(s) = self.source(source) {
            s.read.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Entries of source index `idx` acknowledged (or finally handled).
    pub fn acked(&self, idx: usize, n: u64) {
        if let Some(s) = self.sources.get(idx) {
            s.acked.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// One entry of `source` failed for `reason` (truncated, dropped, ...).
    pub fn failed(&self, source: &str, reason: &'static str) {
        if let Some(s) = self.source(source) {
            if let Ok(mut m) = s.failed.lock() {
                *m.entry(reason).or_default() += 1;
            }
        }
    }

    /// `n` times `what` happened in `source` (lines split, unparsed lines shipped raw, ...).
    pub fn note(&self, source: &str, what: &'static str, n: u64) {
        if let Some(s) = self.source(source) {
            if let Ok(mut m) = s.noted.lock() {
                *m.entry(what).or_default() += n;
            }
        }
    }

    /// A gap in `source` (entries deleted by retention before we read them).
    pub fn gap(&self, source: &str) {
        if let Some(s) = self.source(source) {
            s.gaps.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One line per source, for the shutdown log.
    pub fn summary(&self) -> Vec<String> {
        self.sources
            .iter()
            .map(|s| {
                let list = |m: &Mutex<BTreeMap<&'static str, u64>>| {
                    m.lock()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| format!(" {k}={v}"))
                                .collect::<String>()
                        })
                        .unwrap_or_default()
                };
                let failed = list(&s.failed) + &list(&s.noted);
                format!(
                    "source={} read={} acked={} gaps={}{}",
                    s.name,
                    s.read.load(Ordering::Relaxed),
                    s.acked.load(Ordering::Relaxed),
                    s.gaps.load(Ordering::Relaxed),
                    failed
                )
            })
            .collect()
    }
}
