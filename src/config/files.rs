//! The files source: globs, line formats, where to start and the tailer's timings.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::raw::{RawSource, RawStartAt};
use super::value::{bytes, count, Invalid};
use super::{ConfigError, SourceKind};

/// How the lines of a file are parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineFormat {
    /// Each line is the message.
    Raw,
    /// containerd / CRI-O: `<RFC3339Nano> <stream> <P|F> <text>`, partial lines joined.
    Cri,
    /// Docker json-file: `{"log","stream","time"}`, partial lines joined.
    Docker,
}

/// Where a file seen for the first time starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStart {
    /// Read the whole file.
    Beginning,
    /// Only lines written after the file was first seen (only for files present when the
    /// source first starts without any checkpoint; files created later are read whole).
    End,
}

/// `type = "files"`.
#[derive(Debug, Clone)]
pub struct FilesConfig {
    /// Glob patterns of files to read (absolute paths; `*`, `?`, `[...]`, `**`).
    pub include: Vec<String>,
    /// Glob patterns of files not to read, matched against the same paths.
    pub exclude: Vec<String>,
    /// Line format.
    pub format: LineFormat,
    /// Where files first seen start.
    pub start_at: FileStart,
    /// Lines longer than this are split into marked parts.
    pub max_line_bytes: usize,
    /// How often the globs are re-evaluated (inotify wakes the scan sooner).
    pub rescan_interval: Duration,
    /// How long a line without its final `\n` is held back before it is shipped as is.
    pub partial_line_timeout: Duration,
    /// How long a file that was rotated away or deleted is still watched for late writes
    /// after it reached its end.
    pub rotate_wait: Duration,
    /// At most this many files are open at once.
    pub max_open_files: usize,
    /// Checkpoints of files not seen for this long are forgotten.
    pub forget_after: Duration,
    /// Fields added to every record.
    pub fields: BTreeMap<String, String>,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            include: Vec::new(),
            exclude: Vec::new(),
            format: LineFormat::Raw,
            start_at: FileStart::Beginning,
            max_line_bytes: 256 << 10,
            rescan_interval: Duration::from_secs(5),
            partial_line_timeout: Duration::from_secs(1),
            rotate_wait: Duration::from_secs(5),
            max_open_files: 1024,
            forget_after: Duration::from_secs(3600),
            fields: BTreeMap::new(),
        }
    }
}

pub(super) fn source(
    s: RawSource,
    here: &str,
    invalid: Invalid,
) -> Result<SourceKind, ConfigError> {
    let d = FilesConfig::default();
    let include = s.include.unwrap_or_default();
    if include.is_empty() {
        return Err(invalid(
            &format!("{here} include"),
            "a files source needs at least one glob, e.g. include = [\"/var/log/app/*.log\"]"
                .into(),
        ));
    }
    let exclude = s.exclude.unwrap_or_default();
    for (key, pattern) in include
        .iter()
        .map(|p| ("include", p))
        .chain(exclude.iter().map(|p| ("exclude", p)))
    {
        if !pattern.starts_with('/') {
            return Err(invalid(
                &format!("{here} {key}"),
                format!("{pattern:?} is not an absolute path; write the whole path, e.g. \"/var/log/*.log\""),
            ));
        }
        if let Err(e) = glob::Pattern::new(pattern) {
            return Err(invalid(
                &format!("{here} {key}"),
                format!("{pattern:?} is not a valid glob: {e}"),
            ));
        }
    }
    let start_at = match s.start_at {
        None | Some(RawStartAt::Beginning) => FileStart::Beginning,
        Some(RawStartAt::End) => FileStart::End,
        Some(other) => {
            let word = if other == RawStartAt::Head {
                "head"
            } else {
                "tail"
            };
            return Err(invalid(
                &format!("{here} start_at"),
                format!(
                    "\"{word}\" is for journal sources; a files source takes \"beginning\" or \"end\""
                ),
            ));
        }
    };
    let max_line_bytes = bytes(
        s.max_line_bytes,
        &format!("{here} max_line_bytes"),
        (d.max_line_bytes, "256KiB"),
        true,
        invalid,
    )?;
    let max_open_files = count(
        s.max_open_files,
        &format!("{here} max_open_files"),
        d.max_open_files,
        invalid,
    )?;
    Ok(SourceKind::Files(FilesConfig {
        include,
        exclude,
        format: s.format.unwrap_or(d.format),
        start_at,
        max_line_bytes,
        rescan_interval: s
            .rescan_interval
            .map_or(d.rescan_interval, |x| x.0.max(Duration::from_millis(10))),
        partial_line_timeout: s
            .partial_line_timeout
            .map_or(d.partial_line_timeout, |x| x.0),
        rotate_wait: s.rotate_wait.map_or(d.rotate_wait, |x| x.0),
        max_open_files,
        forget_after: s.forget_after.map_or(d.forget_after, |x| x.0),
        fields: s.fields.unwrap_or_default(),
    }))
}
