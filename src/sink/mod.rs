//! Sinks: where entries go. A sink takes an entry with an opaque id and later reports, on the
//! ack channel, exactly one outcome for that id. It never decides what is "done" and never
//! drops anything on its own: it classifies failures, and the pipeline applies the policy.

pub mod forward;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(not(feature = "kafka"))]
#[path = "kafka_disabled.rs"]
pub mod kafka;
pub mod stdout;

use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::SinkConfig;
use crate::record::{Position, Record};

/// The outcome of one send, keyed by the id the pipeline gave it.
#[derive(Debug)]
pub struct Ack {
    /// The id passed to [`Sink::send`].
    pub id: u64,
    /// Delivered, or why not.
    pub result: Result<(), DeliveryError>,
}

/// Why an entry was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryError {
    /// Transient (broker down, timeout, leader change): send it again.
    Retriable(String),
    /// The entry's topic cannot take it: unknown to the broker, not authorized, or beyond
    /// `max_topics`. It waits for the topic, or goes to the fallback topic.
    Topic {
        /// The topic it was sent to.
        topic: String,
        /// Why that topic refused it.
        reason: String,
        /// Refused here because `max_topics` topics are in use (else by the broker).
        bound: bool,
    },
    /// Larger than the sink accepts: never deliverable as is.
    TooLarge(String),
    /// Rejected as invalid (possibly because of another entry in the same batch).
    Invalid(String),
    /// The broker rejected the timestamp: send with the produce time instead.
    BadTimestamp(String),
    /// The sink client is unusable (idempotent producer fatal error): recreate it.
    Fatal(String),
    /// The output is gone for good (stdout's reader exited: EPIPE): stop, nothing to retry.
    Closed(String),
}

/// What a failed transactional call means (`delivery = "exactly-once"`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    /// Try the same call again.
    #[error("{0} (retriable)")]
    Retriable(String),
    /// Abort the transaction, rewind every source to the last committed position, go on.
    #[error("{0} (the transaction must be aborted)")]
    Abortable(String),
    /// Another producer with our transactional id took over (or the coordinator bumped our
    /// epoch after a transaction timed out): a new producer, from the committed checkpoint.
    #[error("{0} (fenced)")]
    Fenced(String),
    /// The producer is unusable: a new producer, from the committed checkpoint.
    #[error("{0} (fatal)")]
    Fatal(String),
}

impl TxnError {
    /// The metric label of an abort for this reason.
    pub fn label(&self) -> &'static str {
        match self {
            TxnError::Retriable(_) => "retriable",
            TxnError::Abortable(_) => "abortable",
            TxnError::Fenced(_) => "fenced",
            TxnError::Fatal(_) => "fatal",
        }
    }
}

/// A blocking transactional call, to run off the async runtime's threads.
pub type TxnJob = Box<dyn FnOnce() -> Result<(), TxnError> + Send>;

/// [`Sink::send`] could not enqueue.
#[derive(Debug)]
pub enum SendError {
    /// The client's queue is full: try again shortly (backpressure, not an error).
    Full,
    /// It failed; handle like an ack with this error.
    Failed(DeliveryError),
}

/// One entry to send.
pub struct Outgoing<'a> {
    /// Reported back in the [`Ack`].
    pub id: u64,
    /// Source name (Kafka header `perapera-source`).
    pub source: &'a str,
    /// Source position (Kafka header `perapera-position`).
    pub position: &'a Position,
    /// The entry.
    pub record: &'a Record,
    /// Send to this topic (dead-letter, fallback) instead of the topic template.
    pub topic: Option<&'a str>,
    /// The topic it was meant for, when it goes to the fallback topic instead (Kafka header
    /// `perapera-topic`).
    pub meant_for: Option<&'a str>,
    /// Use the current time as the Kafka timestamp (the broker rejected the entry's).
    pub timestamp_now: bool,
    /// Send it in a batch of its own (Kafka: the broker refused a batch holding it as too
    /// large, and only an entry refused alone is too large).
    pub alone: bool,
}

/// The configured sink.
pub enum Sink {
    /// JSON lines on stdout.
    Stdout(stdout::StdoutSink),
    /// Kafka.
    Kafka(Box<kafka::KafkaSink>),
    /// A Fluentd Forward aggregator.
    Forward(Box<forward::ForwardSink>),
}

impl Sink {
    /// Builds the sink; outcomes go to `acks`.
    pub fn new(config: &SinkConfig, acks: mpsc::UnboundedSender<Ack>) -> Result<Sink, String> {
        Ok(match config {
            SinkConfig::Stdout => Sink::Stdout(stdout::StdoutSink::new(acks)),
            SinkConfig::Kafka(k) => Sink::Kafka(Box::new(kafka::KafkaSink::new(k.clone(), acks)?)),
            SinkConfig::Forward(f) => {
                Sink::Forward(Box::new(forward::ForwardSink::new(f.clone(), acks)?))
            }
        })
    }

    /// Enqueues one entry.
    pub fn send(&mut self, out: Outgoing<'_>) -> Result<(), SendError> {
        match self {
            Sink::Stdout(s) => s.send(out),
            Sink::Kafka(s) => s.send(out),
            Sink::Forward(s) => s.send(out),
        }
    }

    /// Called after a burst of sends (stdout writes and acknowledges here).
    pub fn flush_burst(&mut self) {
        match self {
            Sink::Stdout(s) => s.flush_burst(),
            Sink::Forward(s) => s.flush_burst(),
            Sink::Kafka(_) => {}
        }
    }

    /// Gives up a topic the broker does not have (Kafka).
    pub fn forget_topic(&mut self, name: &str) {
        if let Sink::Kafka(s) = self {
            s.forget_topic(name);
        }
    }

    /// Distinct topics in use (Kafka; what `max_topics` bounds).
    pub fn topics_in_use(&self) -> usize {
        match self {
            Sink::Kafka(s) => s.topics_in_use(),
            Sink::Stdout(_) | Sink::Forward(_) => 0,
        }
    }

    /// Largest encoded entry this sink accepts, if it has a limit.
    pub fn payload_limit(&self) -> Option<usize> {
        match self {
            Sink::Stdout(_) | Sink::Forward(_) => None,
            Sink::Kafka(s) => Some(s.payload_limit()),
        }
    }

    /// Replaces an unusable client. Every entry not yet acknowledged must be sent again.
    pub fn recreate(&mut self) -> Result<(), String> {
        match self {
            Sink::Stdout(_) => Err("standard output is closed".into()),
            Sink::Kafka(s) => s.recreate(),
            // Never reports a fatal error: every failure is retriable on a new connection.
            Sink::Forward(_) => Ok(()),
        }
    }

    /// Waits up to `timeout` for queued entries to be delivered, then releases the client.
    pub fn close(self, timeout: Duration) {
        match self {
            Sink::Stdout(mut s) => s.flush_burst(),
            Sink::Kafka(s) => s.close(timeout),
            Sink::Forward(s) => s.close(timeout),
        }
    }

    /// The Kafka sink in exactly-once mode, if that is what this is.
    pub fn transactional(&mut self) -> Option<&mut kafka::KafkaSink> {
        match self {
            Sink::Kafka(s) if s.exactly_once() => Some(s),
            _ => None,
        }
    }

    /// Name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Sink::Stdout(_) => "stdout",
            Sink::Kafka(_) => "kafka",
            Sink::Forward(_) => "forward",
        }
    }
}
