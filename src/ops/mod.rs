//! Operating perapera: counters and their Prometheus exposition with `/health`, systemd
//! notifications, `perapera check` and `perapera cursor`, logging (rate-limited per cause),
//! signals, and the open-file limit.

pub mod check;
pub mod cursor;
pub mod fds;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod ratelimit;
pub mod signals;
pub mod transactions;
