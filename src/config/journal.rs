//! The journal source: which journal, which entries, where to start.

use std::path::PathBuf;

use serde::Deserialize;

use super::raw::{RawSource, RawStartAt};
use super::value::Invalid;
use super::{ConfigError, SourceKind};

/// Where a journal source starts when it has no checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    /// The oldest entry available.
    Head,
    /// Only entries written after perapera started.
    Tail,
}

/// A journalctl-style match term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalMatch {
    /// `FIELD=value`.
    Field {
        /// Field name.
        name: String,
        /// Exact value.
        value: String,
    },
    /// `+`: logical OR between the groups before and after.
    Or,
}

/// `type = "journal"`.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Read this directory (e.g. a host's /var/log/journal) instead of the local journal.
    pub directory: Option<PathBuf>,
    /// Read this journal namespace.
    pub namespace: Option<String>,
    /// Matches applied inside sd-journal.
    pub matches: Vec<JournalMatch>,
    /// Start without a checkpoint.
    pub start_at: StartAt,
}

impl Default for JournalConfig {
    /// The local journal, every entry, from its head.
    fn default() -> Self {
        JournalConfig {
            directory: None,
            namespace: None,
            matches: Vec::new(),
            start_at: StartAt::Head,
        }
    }
}

pub(super) fn source(
    s: RawSource,
    here: &str,
    invalid: Invalid,
) -> Result<SourceKind, ConfigError> {
    if s.directory.is_some() && s.namespace.is_some() {
        return Err(invalid(
            here,
            "set either `directory` or `namespace`, not both".into(),
        ));
    }
    let start_at = match s.start_at {
        None | Some(RawStartAt::Head) => StartAt::Head,
        Some(RawStartAt::Tail) => StartAt::Tail,
        Some(other) => {
            return Err(invalid(
                &format!("{here} start_at"),
                format!(
                    "{other:?} is for files sources; a journal source takes \"head\" or \"tail\""
                ),
            ))
        }
    };
    Ok(SourceKind::Journal(JournalConfig {
        directory: s.directory,
        namespace: s.namespace,
        matches: s
            .matches
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.0)
            .collect(),
        start_at,
    }))
}
