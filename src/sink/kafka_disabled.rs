//! Stand-in for the Kafka sink in builds without the `kafka` cargo feature (the fuzz targets
//! are built so, without librdkafka): a Kafka sink in the config is refused at start with a
//! message that says why.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{Ack, Outgoing, SendError, TxnError, TxnJob};
use crate::config::KafkaConfig;

/// No Kafka sink can be created in this build.
pub enum KafkaSink {}

impl KafkaSink {
    /// Refuses: there is no Kafka support in this build.
    pub fn new(
        _config: KafkaConfig,
        _acks: mpsc::UnboundedSender<Ack>,
    ) -> Result<KafkaSink, String> {
        Err("this perapera was built without Kafka support (cargo feature \"kafka\")".into())
    }

    /// Unreachable: no [`KafkaSink`] exists in this build.
    pub fn payload_limit(&self) -> usize {
        match *self {}
    }

    /// Unreachable.
    pub fn forget_topic(&mut self, _name: &str) {
        match *self {}
    }

    /// Unreachable.
    pub fn topics_in_use(&self) -> usize {
        match *self {}
    }

    /// Unreachable.
    pub fn send(&mut self, _out: Outgoing<'_>) -> Result<(), SendError> {
        match *self {}
    }

    /// Unreachable.
    pub fn recreate(&mut self) -> Result<(), String> {
        match *self {}
    }

    /// Unreachable.
    pub fn close(self, _timeout: Duration) {
        match self {}
    }

    /// Unreachable.
    pub fn exactly_once(&self) -> bool {
        match *self {}
    }

    /// Unreachable.
    pub fn take_committed(&mut self) -> Option<Option<Vec<u8>>> {
        match *self {}
    }

    /// Unreachable.
    pub fn commit_job(&mut self, _checkpoint: Vec<u8>) -> Result<TxnJob, TxnError> {
        match *self {}
    }

    /// Unreachable.
    pub fn retry_commit_job(&mut self) -> TxnJob {
        match *self {}
    }

    /// Unreachable.
    pub fn abort_job(&mut self) -> Option<TxnJob> {
        match *self {}
    }

    /// Unreachable.
    pub fn committed(&mut self) {
        match *self {}
    }

    /// Unreachable.
    pub fn fatal_reason(&self) -> Option<TxnError> {
        match *self {}
    }

    /// Unreachable.
    pub fn open_transactions(&mut self) -> Result<(), String> {
        match *self {}
    }
}
