//! `perapera cursor show`: per source, the checkpoint, the time of the last acknowledged
//! entry and the lag behind the newest entry, as a table or as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::checkpoint::{Checkpoint, SourceCheckpoint};
use crate::config::{Config, SourceKind};
use crate::source::journal;

/// One source's line of the report.
#[derive(Debug, Serialize)]
pub struct SourceReport {
    /// The source name (the checkpoint key).
    pub name: String,
    /// `journal`, `files`, `forward`, or `unknown` for a checkpoint of a source no longer
    /// configured (kept in the file).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Configured in this config file.
    pub configured: bool,
    /// Journal: the cursor of the last acknowledged entry.
    pub cursor: Option<String>,
    /// Journal: the last acknowledged entry's time; files: the last acknowledgement.
    pub last_acked_entry: Option<String>,
    /// The same, microseconds since the epoch.
    pub last_acked_entry_us: Option<u64>,
    /// Journal: the newest entry now in the journal (matches applied).
    pub newest_entry: Option<String>,
    /// Seconds the checkpoint is behind the newest entry (files: the longest a file has had
    /// unshipped bytes without an acknowledgement). `None` when it cannot be told.
    pub lag_seconds: Option<f64>,
    /// Why the lag could not be told, or what the source does instead of a checkpoint.
    pub note: Option<String>,
    /// Files: one entry per file.
    pub files: Vec<FileReport>,
}

/// One file of a files source.
#[derive(Debug, Serialize)]
pub struct FileReport {
    /// The path it had when last read.
    pub path: String,
    /// `st_dev`, `st_ino`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// Where reading resumes.
    pub offset: u64,
    /// The file's size now, if the path still holds this file.
    pub size: Option<u64>,
    /// Bytes after `offset`.
    pub unshipped_bytes: u64,
    /// See [`SourceReport::lag_seconds`].
    pub lag_seconds: f64,
    /// When a line of it was last acknowledged.
    pub acked_at: Option<String>,
}

/// Builds the report for every configured source plus checkpoints of unconfigured ones.
pub fn report(config: &Config, cp: &Checkpoint, now_ms: u64) -> Vec<SourceReport> {
    let mut out = Vec::new();
    for s in &config.sources {
        let saved = cp.sources.get(&s.name);
        let mut r = SourceReport {
            name: s.name.clone(),
            kind: match s.kind {
                SourceKind::Journal(_) => "journal",
                SourceKind::Files(_) => "files",
                SourceKind::Forward(_) => "forward",
            },
            configured: true,
            cursor: None,
            last_acked_entry: None,
            last_acked_entry_us: None,
            newest_entry: None,
            lag_seconds: None,
            note: None,
            files: Vec::new(),
        };
        match (&s.kind, saved) {
            (SourceKind::Journal(jc), saved) => {
                let acked = match saved {
                    Some(SourceCheckpoint::Journal {
                        cursor,
                        entry_time_us,
                        ..
                    }) => {
                        r.cursor = Some(cursor.clone());
                        r.last_acked_entry = Some(format_time(*entry_time_us));
                        r.last_acked_entry_us = Some(*entry_time_us);
                        Some(*entry_time_us)
                    }
                    _ => None,
                };
                match journal::open_journal(&s.name, jc)
                    .map_err(|e| e.to_string())
                    .and_then(|mut j| journal::entry_span(&mut j).map_err(|e| e.to_string()))
                {
                    Ok(Some((newest, oldest))) => {
                        r.newest_entry = Some(format_time(newest));
                        let lag = journal::lag_us(newest, oldest, acked, jc.start_at);
                        r.lag_seconds = Some(lag as f64 / 1e6);
                    }
                    Ok(None) => r.lag_seconds = Some(0.0),
                    Err(e) => {
                        r.note = Some(format!("cannot read the journal to tell the lag: {e}"))
                    }
                }
                if acked.is_none() {
                    r.note
                        .get_or_insert_with(|| "no checkpoint: starts at start_at".into());
                }
            }
            (SourceKind::Files(_), Some(SourceCheckpoint::Files { files })) => {
                let mut lag = 0u64;
                let mut last = 0u64;
                for f in files {
                    let l = f.lag(now_ms);
                    lag = lag.max(l.lag_ms);
                    last = last.max(f.acked_at_ms);
                    r.files.push(FileReport {
                        path: f.path.clone(),
                        dev: f.dev,
                        ino: f.ino,
                        offset: f.offset,
                        size: l.size,
                        unshipped_bytes: l.unshipped,
                        lag_seconds: l.lag_ms as f64 / 1000.0,
                        acked_at: (f.acked_at_ms > 0).then(|| format_time(f.acked_at_ms * 1000)),
                    });
                }
                r.files.sort_by(|a, b| a.path.cmp(&b.path));
                if last > 0 {
                    r.last_acked_entry = Some(format_time(last * 1000));
                    r.last_acked_entry_us = Some(last * 1000);
                }
                r.lag_seconds = Some(lag as f64 / 1000.0);
            }
            (SourceKind::Files(_), _) => {
                r.note = Some("no checkpoint: files start at start_at".into());
            }
            (SourceKind::Forward(_), _) => {
                r.lag_seconds = Some(0.0);
                r.note = Some(
                    "no checkpoint: senders keep their data until perapera acknowledges it".into(),
                );
            }
        }
        out.push(r);
    }
    for (name, _) in cp
        .sources
        .iter()
        .filter(|(n, _)| !config.sources.iter().any(|s| &s.name == *n))
    {
        out.push(SourceReport {
            name: name.clone(),
            kind: "unknown",
            configured: false,
            cursor: None,
            last_acked_entry: None,
            last_acked_entry_us: None,
            newest_entry: None,
            lag_seconds: None,
            note: Some("not configured; its checkpoint is kept".into()),
            files: Vec::new(),
        });
    }
    out
}

/// The report as a table.
pub fn table(reports: &[SourceReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<8} {:<27} {:>10}  CHECKPOINT",
        "SOURCE", "TYPE", "LAST ACKED ENTRY (UTC)", "LAG"
    );
    for r in reports {
        let checkpoint = match (&r.cursor, r.kind) {
            (Some(c), _) => c.clone(),
            (None, "files") if !r.files.is_empty() => format!("{} files", r.files.len()),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:<27} {:>10}  {checkpoint}{}",
            r.name,
            r.kind,
            r.last_acked_entry.as_deref().unwrap_or("-"),
            r.lag_seconds
                .map_or("?".to_string(), |l| format!("{l:.1}s")),
            r.note.as_ref().map_or(String::new(), |n| format!(" ({n})"))
        );
        for f in &r.files {
            let _ = writeln!(
                out,
                "    {} offset {} of {} ({} bytes unshipped, lag {:.1}s)",
                f.path,
                f.offset,
                f.size
                    .map_or("? (rotated away or gone)".to_string(), |s| s.to_string()),
                f.unshipped_bytes,
                f.lag_seconds
            );
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` (UTC) from microseconds since the epoch.
pub fn format_time(us: u64) -> String {
    let secs = (us / 1_000_000) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        us % 1_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_times_are_formatted_in_utc_with_microseconds() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00.000000");
        assert_eq!(
            format_time(1_709_251_199_000_001),
            "2024-02-29 23:59:59.000001"
        );
        assert_eq!(
            format_time(951_782_400_000_000),
            "2000-02-29 00:00:00.000000"
        );
    }
}
