//! The exactly-once counters: transactions committed and aborted (by reason), how long
//! commits take, and when the last one succeeded, for `/metrics` and `/health`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the commit latency histogram, seconds.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Transaction counters (all zero, and not rendered, unless `delivery = "exactly-once"`).
#[derive(Debug, Default)]
pub struct TxnStats {
    /// `delivery = "exactly-once"` is on.
    pub enabled: AtomicBool,
    committed: AtomicU64,
    aborted: Mutex<BTreeMap<&'static str, u64>>,
    /// Per bucket of [`BUCKETS`], then the sum in µs.
    latency: Mutex<([u64; BUCKETS.len() + 1], u64)>,
    /// When the last commit succeeded (ms since the epoch; 0: none yet).
    last_commit_ms: AtomicU64,
    /// Since when positions wait for a commit (ms since the epoch; 0: none wait).
    pending_since_ms: AtomicU64,
}

impl TxnStats {
    /// A commit succeeded after `took`.
    pub fn committed(&self, took: Duration, now_ms: u64) {
        self.committed.fetch_add(1, Ordering::Relaxed);
        self.last_commit_ms.store(now_ms, Ordering::Relaxed);
        self.pending_since_ms.store(0, Ordering::Relaxed);
        let s = took.as_secs_f64();
        if let Ok(mut l) = self.latency.lock() {
            let i = BUCKETS
                .iter()
                .position(|b| s <= *b)
                .unwrap_or(BUCKETS.len());
            l.0[i] += 1;
            l.1 += took.as_micros() as u64;
        }
    }

    /// A transaction was aborted (or abandoned to the next producer's abort) for `reason`.
    pub fn aborted(&self, reason: &'static str) {
        if let Ok(mut m) = self.aborted.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    /// Positions moved and wait for a commit (from `now_ms`, unless they waited already).
    pub fn pending(&self, now_ms: u64) {
        let _ = self.pending_since_ms.compare_exchange(
            0,
            now_ms.max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Transactions committed so far.
    pub fn committed_total(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// Why `/health` should say 503: positions have waited for a commit longer than `limit`.
    pub fn unhealthy(&self, now_ms: u64, limit: Duration) -> Option<String> {
        let since = self.pending_since_ms.load(Ordering::Relaxed);
        let waited = now_ms.saturating_sub(since);
        if !self.enabled.load(Ordering::Relaxed) || since == 0 || waited <= limit.as_millis() as u64
        {
            return None;
        }
        let last = self.last_commit_ms.load(Ordering::Relaxed);
        Some(format!(
            "no Kafka transaction committed for {:.1}s while positions wait for one (last commit: {}); see the logs",
            waited as f64 / 1000.0,
            if last == 0 {
                "none since start".to_string()
            } else {
                format!("{:.1}s ago", now_ms.saturating_sub(last) as f64 / 1000.0)
            }
        ))
    }

    /// The Prometheus exposition of these counters (nothing unless enabled).
    pub fn render(&self, out: &mut String, now_ms: u64) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        let header = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        header(
            out,
            "perapera_transactions_committed_total",
            "counter",
            "Kafka transactions committed (delivery = \"exactly-once\").",
        );
        let _ = writeln!(
            out,
            "perapera_transactions_committed_total {}",
            self.committed_total()
        );
        header(out, "perapera_transactions_aborted_total", "counter",
            "Kafka transactions aborted, by reason (their entries are read again from the last committed position).");
        if let Ok(m) = self.aborted.lock() {
            if m.is_empty() {
                let _ = writeln!(
                    out,
                    "perapera_transactions_aborted_total{{reason=\"abortable\"}} 0"
                );
            }
            for (reason, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "perapera_transactions_aborted_total{{reason=\"{reason}\"}} {n}"
                );
            }
        }
        header(
            out,
            "perapera_transaction_commit_seconds",
            "histogram",
            "How long commit_transaction took (flush of the transaction and EndTxn).",
        );
        if let Ok(l) = self.latency.lock() {
            let mut cumulative = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                cumulative += l.0[i];
                let _ = writeln!(
                    out,
                    "perapera_transaction_commit_seconds_bucket{{le=\"{b}\"}} {cumulative}"
                );
            }
            cumulative += l.0[BUCKETS.len()];
            let _ = writeln!(
                out,
                "perapera_transaction_commit_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
            );
            let _ = writeln!(
                out,
                "perapera_transaction_commit_seconds_sum {:.6}",
                l.1 as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "perapera_transaction_commit_seconds_count {cumulative}"
            );
        }
        header(
            out,
            "perapera_transaction_last_commit_age_seconds",
            "gauge",
            "Seconds since the last committed transaction (-1: none since start).",
        );
        let last = self.last_commit_ms.load(Ordering::Relaxed);
        let age = if last == 0 {
            -1.0
        } else {
            now_ms.saturating_sub(last) as f64 / 1000.0
        };
        let _ = writeln!(out, "perapera_transaction_last_commit_age_seconds {age:.3}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_fill_the_histogram_and_a_long_wait_for_a_commit_is_unhealthy() {
        let t = TxnStats::default();
        let mut out = String::new();
        t.render(&mut out, 0);
        assert!(out.is_empty(), "not rendered unless enabled");
        t.enabled.store(true, Ordering::Relaxed);
        t.committed(Duration::from_millis(20), 1_000);
        t.committed(Duration::from_secs(20), 2_000);
        t.aborted("fenced");
        t.render(&mut out, 3_000);
        assert!(
            out.contains("perapera_transactions_committed_total 2\n"),
            "{out}"
        );
        assert!(
            out.contains("perapera_transaction_commit_seconds_bucket{le=\"0.025\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("perapera_transaction_commit_seconds_bucket{le=\"10\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("perapera_transaction_commit_seconds_bucket{le=\"+Inf\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("perapera_transactions_aborted_total{reason=\"fenced\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("perapera_transaction_last_commit_age_seconds 1.000\n"),
            "{out}"
        );
        let limit = Duration::from_secs(30);
        assert_eq!(t.unhealthy(100_000, limit), None, "nothing waits");
        t.pending(10_000);
        t.pending(20_000);
        assert_eq!(
            t.unhealthy(40_000, limit),
            None,
            "waited 30 s: not over the limit"
        );
        assert!(
            t.unhealthy(40_001, limit).is_some(),
            "waits since the first pending"
        );
        t.committed(Duration::from_millis(5), 41_000);
        assert_eq!(t.unhealthy(100_000, limit), None, "a commit clears it");
    }
}
