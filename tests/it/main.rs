//! Integration tests: the perapera binary against real journal files (written by
//! systemd-journal-remote), librdkafka's mock cluster and Apache Kafka itself (KRaft).

mod bad_input;
mod chaos;
mod cli;
mod exactly_once;
mod faults;
mod files;
mod forward;
mod hostile;
mod idle;
mod journal;
mod kafka_mock;
mod kafka_real;
mod limits;
mod ops;
mod packaging;
mod security;
mod support;
mod topics;
