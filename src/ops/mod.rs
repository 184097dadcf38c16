//! Operating perapera: counters and rate-limited logging (Prometheus exposition and systemd
//! notifications build on these).

pub mod metrics;
pub mod ratelimit;
