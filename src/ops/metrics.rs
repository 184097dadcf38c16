//! Counters, per source: what was read, acknowledged, failed (by reason), and the gaps the
//! journal's own retention caused. Updated per batch (not per entry) on the hot path.
//!
//! [`Stats::render`] writes them in the Prometheus text exposition format (names and labels
//! per DESIGN.md, plus the standard `process_*` metrics read from /proc), and
//! [`Stats::health`] decides what `/health` answers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

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
    /// `perapera_in_flight_entries`: read, and not yet passed by the acknowledged watermark.
    pub in_flight: AtomicU64,
    /// `perapera_checkpoint_lag_seconds`, in milliseconds.
    pub lag_ms: AtomicU64,
    /// Realtime (µs) of the newest entry the source holds (journal sources; 0: unknown).
    pub newest_us: AtomicU64,
    /// Realtime (µs) of the oldest entry the source holds (journal sources; 0: unknown).
    pub oldest_us: AtomicU64,
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The standard `process_*` metrics of this process, from /proc/self.
fn process_metrics(out: &mut String) {
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
            libc::sysconf(libc::_SC_PAGESIZE).max(1) as u64,
        )
    };
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may contain spaces) start at field 3.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
        let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            header(
                out,
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time spent in seconds.",
            );
            let _ = writeln!(
                out,
                "process_cpu_seconds_total {:.2}",
                (utime + stime) as f64 / ticks
            );
        }
        if let Some(vsize) = field(23) {
            header(
                out,
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
            );
            let _ = writeln!(out, "process_virtual_memory_bytes {vsize}");
        }
        if let Some(rss) = field(24) {
            header(
                out,
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
            );
            let _ = writeln!(out, "process_resident_memory_bytes {}", rss * page);
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(kb) = status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            header(
                out,
                "process_resident_anonymous_memory_bytes",
                "gauge",
                "Anonymous resident memory (heap, stacks) in bytes.",
            );
            let _ = writeln!(out, "process_resident_anonymous_memory_bytes {}", kb * 1024);
        }
    }
    if let Some(start) = PROCESS_START.get() {
        header(
            out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
        );
        let _ = writeln!(out, "process_start_time_seconds {start:.3}");
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        header(
            out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
        );
        let _ = writeln!(out, "process_open_fds {}", dir.count());
    }
}

/// When the counters were created (≈ process start; recorded rather than derived from
/// /proc/stat's boot time, which a hardened unit may hide).
static PROCESS_START: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

/// All counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// One per configured source, in config order.
    pub sources: Vec<SourceStats>,
    /// The sink's type, the `sink` label.
    pub sink: String,
    /// `perapera_sink_retries_total` by reason.
    pub sink_failures: Mutex<BTreeMap<&'static str, u64>>,
    /// The last sink error, for `/health`.
    pub sink_last_error: Mutex<String>,
    /// `perapera_checkpoint_writes_total`.
    pub checkpoint_writes: AtomicU64,
    /// `perapera_checkpoint_write_errors_total`.
    pub checkpoint_errors: AtomicU64,
    /// When the pipeline loop last ran (ms since the epoch; 0: not started).
    pub loop_at_ms: AtomicU64,
    /// When the pipeline last made progress: an acknowledgement arrived, or nothing was
    /// waiting for one (ms since the epoch).
    pub progress_at_ms: AtomicU64,
    /// Entries read and not yet acknowledged, all sources.
    pub unacked: AtomicU64,
    /// Topics entries wait for (unknown to the broker, not authorized, beyond max_topics),
    /// the longest waiting first; published by the pipeline every second.
    pub topic_waits: Mutex<Vec<TopicWait>>,
    /// Distinct Kafka topics in use (what `max_topics` bounds).
    pub topics_in_use: AtomicU64,
    /// Kafka transactions (`delivery = "exactly-once"`).
    pub txn: super::transactions::TxnStats,
}

/// Entries waiting for one topic that cannot take them yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicWait {
    /// The topic.
    pub topic: String,
    /// When the first of them started waiting (ms since the epoch).
    pub since_ms: u64,
    /// How many wait.
    pub entries: u64,
    /// Why the topic refused them, as last reported.
    pub reason: String,
}

/// What `/health` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// 200 if true, else 503.
    pub ok: bool,
    /// One line for the body.
    pub reason: String,
}

impl Stats {
    /// Counters for these source names.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Stats {
        PROCESS_START.get_or_init(crate::clock::unix_secs_f64);
        Stats {
            sources: names
                .into_iter()
                .map(|n| SourceStats {
                    name: n.to_string(),
                    ..SourceStats::default()
                })
                .collect(),
            ..Stats::default()
        }
    }

    /// Counts a sink failure that leaves its entries in flight.
    pub fn sink_failure(&self, reason: &'static str, error: &str) {
        if let Ok(mut m) = self.sink_failures.lock() {
            *m.entry(reason).or_default() += 1;
        }
        if let Ok(mut e) = self.sink_last_error.lock() {
            e.clear();
            e.push_str(error);
        }
    }

    /// Entries read by all sources and acknowledged, all sources.
    pub fn totals(&self) -> (u64, u64) {
        self.sources.iter().fold((0, 0), |(r, a), s| {
            (
                r + s.read.load(Ordering::Relaxed),
                a + s.acked.load(Ordering::Relaxed),
            )
        })
    }

    /// The largest checkpoint lag over all sources.
    pub fn max_lag(&self) -> Duration {
        Duration::from_millis(
            self.sources
                .iter()
                .map(|s| s.lag_ms.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0),
        )
    }

    /// Healthy while the pipeline loop runs and, when entries wait for an acknowledgement,
    /// one arrived within `unhealthy_after`. A sink outage is unhealthy (the operator must
    /// look), but it is not a reason to stop: the entries stay in flight.
    pub fn health(&self, now_ms: u64, unhealthy_after: Duration) -> Health {
        let limit = unhealthy_after.as_millis() as u64;
        let loop_at = self.loop_at_ms.load(Ordering::Relaxed);
        if loop_at == 0 {
            return Health {
                ok: false,
                reason: "starting: sources and sink are not open yet".into(),
            };
        }
        let loop_age = now_ms.saturating_sub(loop_at);
        if loop_age > limit {
            return Health {
                ok: false,
                reason: format!(
                    "the pipeline loop has not run for {:.1}s (wedged); see the logs",
                    loop_age as f64 / 1000.0
                ),
            };
        }
        if let Some(reason) = self.txn.unhealthy(now_ms, unhealthy_after) {
            return Health { ok: false, reason };
        }
        let unacked = self.unacked.load(Ordering::Relaxed);
        let stalled = now_ms.saturating_sub(self.progress_at_ms.load(Ordering::Relaxed));
        if let Some(h) = self.topic_health(now_ms, limit, unacked > 0 && stalled > limit) {
            return h;
        }
        if unacked > 0 && stalled > limit {
            let last = self
                .sink_last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default();
            return Health {
                ok: false,
                reason: format!(
                    "the {} sink acknowledged nothing for {:.1}s with {unacked} entries waiting; \
                     last error: {}",
                    self.sink,
                    stalled as f64 / 1000.0,
                    if last.is_empty() {
                        "none reported"
                    } else {
                        &last
                    }
                ),
            };
        }
        let (read, acked) = self.totals();
        Health {
            ok: true,
            reason: format!("ok: read {read}, acknowledged {acked}, {unacked} waiting"),
        }
    }

    /// Unhealthy once entries have waited for a topic for longer than `limit` ms (other
    /// topics may flow, so the sink looks alive, but these entries go nowhere), or when the
    /// sink is `stalled` while entries wait for a topic (the topic is the likelier cause).
    fn topic_health(&self, now_ms: u64, limit: u64, stalled: bool) -> Option<Health> {
        let waits = self.topic_waits.lock().ok()?;
        let oldest = waits.first()?;
        let waited = now_ms.saturating_sub(oldest.since_ms);
        if waited <= limit && !stalled {
            return None;
        }
        let more = match waits.len() - 1 {
            0 => String::new(),
            n => format!(" ({n} more topics wait too: see the logs)"),
        };
        Some(Health {
            ok: false,
            reason: format!(
                "{} entries have waited {:.1}s for Kafka topic {:?}: {}; create the topic, or set \
                 [sink] topic_fallback to send such entries elsewhere{more}",
                oldest.entries,
                waited as f64 / 1000.0,
                oldest.topic,
                oldest.reason
            ),
        })
    }

    /// The Prometheus text exposition of every counter, plus the process' own.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let sink = escape(&self.sink);
        let per_source = |out: &mut String,
                          name: &str,
                          kind: &str,
                          help: &str,
                          f: &dyn Fn(&SourceStats) -> String| {
            header(out, name, kind, help);
            for s in &self.sources {
                let _ = writeln!(out, "{name}{{source=\"{}\"}} {}", escape(&s.name), f(s));
            }
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        per_source(
            &mut out,
            "perapera_entries_read_total",
            "counter",
            "Entries read from the source.",
            &|s| load(&s.read),
        );
        per_source(
            &mut out,
            "perapera_entries_acked_total",
            "counter",
            "Entries the sink acknowledged.",
            &|s| load(&s.acked),
        );
        let per_reason =
            |out: &mut String,
             name: &str,
             help: &str,
             label: &str,
             map: &dyn Fn(&SourceStats) -> &Mutex<BTreeMap<&'static str, u64>>| {
                header(out, name, "counter", help);
                for s in &self.sources {
                    if let Ok(m) = map(s).lock() {
                        for (what, n) in m.iter() {
                            let source = escape(&s.name);
                            let _ = writeln!(
                                out,
                                "{name}{{source=\"{source}\",{label}=\"{what}\"}} {n}"
                            );
                        }
                    }
                }
            };
        per_reason(
            &mut out,
            "perapera_entries_failed_total",
            "Entries not shipped as read, by reason (truncated, dead_lettered, dropped_*, unreadable).",
            "reason",
            &|s| &s.failed,
        );
        per_reason(
            &mut out,
            "perapera_source_events_total",
            "Counted events that are not failures (lines split, unparsed lines shipped raw, forward requests rejected, ...).",
            "event",
            &|s| &s.noted,
        );
        per_source(
            &mut out,
            "perapera_in_flight_entries",
            "gauge",
            "Entries read that the acknowledged watermark has not passed yet (the window is bounded by max_in_flight).",
            &|s| load(&s.in_flight),
        );
        per_source(
            &mut out,
            "perapera_checkpoint_lag_seconds",
            "gauge",
            "How far the acknowledged position is behind the newest entry of the source.",
            &|s| format!("{:.3}", s.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0),
        );
        per_source(
            &mut out,
            "perapera_source_gaps_total",
            "counter",
            "Times entries were deleted (journal retention) before they could be read.",
            &|s| load(&s.gaps),
        );
        header(
            &mut out,
            "perapera_sink_retries_total",
            "counter",
            "Sink failures after which entries stay in flight and are re-sent, by reason.",
        );
        if let Ok(m) = self.sink_failures.lock() {
            if m.is_empty() {
                let _ = writeln!(
                    out,
                    "perapera_sink_retries_total{{sink=\"{sink}\",reason=\"retriable\"}} 0"
                );
            }
            for (reason, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "perapera_sink_retries_total{{sink=\"{sink}\",reason=\"{reason}\"}} {n}"
                );
            }
        }
        let (topics, waiting) = self.topic_waits.lock().map_or((0, 0), |w| {
            (w.len(), w.iter().map(|t| t.entries).sum::<u64>())
        });
        for (name, help, value) in [
            (
                "perapera_kafka_topics",
                "Distinct Kafka topics produced to recently (bounded by [sink] max_topics).",
                load(&self.topics_in_use),
            ),
            (
                "perapera_topics_waited_for",
                "Kafka topics that entries wait for (unknown to the broker, not authorized, or beyond max_topics).",
                topics.to_string(),
            ),
            (
                "perapera_topic_waiting_entries",
                "Entries waiting for such a topic.",
                waiting.to_string(),
            ),
        ] {
            header(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
        header(
            &mut out,
            "perapera_checkpoint_writes_total",
            "counter",
            "Checkpoint files written.",
        );
        let _ = writeln!(
            out,
            "perapera_checkpoint_writes_total {}",
            load(&self.checkpoint_writes)
        );
        header(
            &mut out,
            "perapera_checkpoint_write_errors_total",
            "counter",
            "Checkpoint writes that failed (the previous checkpoint stays valid).",
        );
        let _ = writeln!(
            out,
            "perapera_checkpoint_write_errors_total {}",
            load(&self.checkpoint_errors)
        );
        self.txn.render(&mut out, crate::clock::unix_ms());
        header(
            &mut out,
            "perapera_build_info",
            "gauge",
            "The running version.",
        );
        let _ = writeln!(
            out,
            "perapera_build_info{{version=\"{}\",sink=\"{sink}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        process_metrics(&mut out);
        out
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
