//! perapera: a host-local log shipper. It reads the systemd journal, log files (Kubernetes
//! pod logs too) or Fluentd Forward senders, encodes each entry as MessagePack, produces it to
//! Kafka or forwards it to an aggregator (or writes JSON lines to stdout), and moves its
//! saved position only over entries the sink acknowledged.
//!
//! # Layout, in the order data flows through it
//!
//! - [`config`]: the TOML file, parsed, validated and built, one file per source and sink kind.
//! - [`source`]: where entries come from (journal, files, forward), each on its own thread.
//! - [`msgpack`]: a field's `Value`, and MessagePack writing and reading.
//! - [`position`]: where an entry is in its source (cursor, file offset, forward request).
//! - [`record`]: an entry on its way (its encoded map and time) and templates over its fields.
//! - [`pipeline`]: source → sink: the in-flight window, acks, retries, oversize, shutdown,
//!   and exactly-once transactions (commit as the checkpoint write, rewind on abort).
//! - [`sink`]: Kafka (at-least-once, or exactly-once in transactions), forward and stdout.
//! - [`forward`]: the Fluentd Forward protocol codec, shared by the forward source and sink.
//! - [`tls`]: TLS for the forward listener and the forward sink.
//! - [`checkpoint`]: the acknowledgement watermark, file offsets, the state file and its lock.
//! - [`ops`]: metrics and /health, `check`, `cursor`, logging, signals, systemd notifications.
//! - [`clock`]: wall-clock time since the epoch.
//! - [`host`]: the host name stamped on what is read.
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
