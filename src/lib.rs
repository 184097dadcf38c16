//! perapera: a host-local log shipper that reads the systemd journal, encodes each entry as
//! MessagePack, produces it to Kafka (or writes JSON lines to stdout), and persists the
//! journal cursor only over entries the sink acknowledged.
//!
//! # Layout
//!
//! - [`config`]: the TOML file, parsed then validated.
//! - [`record`]: the entry type, field values and templates.
//! - [`encode`]: MessagePack and JSON encoding.
//! - [`checkpoint`]: the acknowledgement watermark, the atomic checkpoint file and the lock.
//! - [`pipeline`]: source → sink wiring, the in-flight window, retries, shutdown.
//! - [`source`]: the journal reader (one OS thread per journal).
//! - [`sink`]: Kafka and stdout.
//! - [`ops`]: counters and rate-limited logging.
//! - [`memory`]: when to give freed memory back to the system.
//! - [`runtime`]: a thread with its own single-threaded tokio runtime.
//!
//! [`run`] is the whole agent: tests start it with a shutdown future they control.
#![deny(missing_docs)]

pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod forward;
pub mod host;
pub mod memory;
pub mod msgpack;
pub mod ops;
pub mod pipeline;
pub mod position;
pub mod record;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod tls;

pub use pipeline::{run, RunError, Summary};
