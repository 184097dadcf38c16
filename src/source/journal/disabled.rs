//! Stand-in for the journal source in builds without the `journal` cargo feature (the fuzz
//! targets are built so, without libsystemd): a journal source in the config is refused at
//! start with a message that says why.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use super::JournalReader;
use crate::config::JournalConfig;
use crate::ops::metrics::Stats;
use crate::source::{Batch, SourceError};

const MISSING: &str = "this perapera was built without journal support (cargo feature \"journal\")";

/// No journal can be opened in this build.
pub enum Journal {}

impl JournalReader {
    /// Refuses: there is no journal support in this build.
    pub fn spawn(
        self,
        _tx: mpsc::Sender<Batch>,
        _stop: Arc<AtomicBool>,
    ) -> Result<JoinHandle<()>, SourceError> {
        Err(SourceError::Open {
            source_name: self.cx.name,
            reason: MISSING.into(),
        })
    }
}

/// Refuses: there is no journal support in this build.
pub fn open_journal(name: &str, _config: &JournalConfig) -> Result<Journal, SourceError> {
    Err(SourceError::Open {
        source_name: name.to_string(),
        reason: MISSING.into(),
    })
}

/// Refuses: there is no journal support in this build.
pub fn check_cursor(name: &str, config: &JournalConfig, _cursor: &str) -> Result<(), SourceError> {
    open_journal(name, config).map(|_| ())
}

/// Nothing to measure without a journal.
pub fn spawn_prober(
    _index: usize,
    _name: String,
    _config: JournalConfig,
    _stats: Arc<Stats>,
    _stop: Arc<AtomicBool>,
) {
}

/// Unreachable: no [`Journal`] exists in this build.
pub fn entry_span(j: &mut Journal) -> Result<Option<(u64, u64)>, String> {
    match *j {}
}
