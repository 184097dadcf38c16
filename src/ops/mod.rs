//! Operating perapera: counters and rate-limited logging (Prometheus exposition and systemd
//! notifications build on these).

pub mod cursor;
pub mod fds;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod ratelimit;
