//! The systemd journal source: the reader thread ([`JournalReader`]), one entry to one record,
//! the lag probe, and a stand-in that refuses to start in builds without the `journal`
//! feature. [`Start`] and [`lag_us`] are shared by both builds.

mod settings;

pub use settings::{lag_us, JournalReader, Start};

#[cfg(feature = "journal")]
mod entry;
#[cfg(feature = "journal")]
mod probe;
#[cfg(feature = "journal")]
mod reader;
#[cfg(feature = "journal")]
pub use probe::{entry_span, spawn_prober};
#[cfg(feature = "journal")]
pub use reader::{check_cursor, open_journal};

#[cfg(not(feature = "journal"))]
mod disabled;
#[cfg(not(feature = "journal"))]
pub use disabled::{check_cursor, entry_span, open_journal, spawn_prober, Journal};
