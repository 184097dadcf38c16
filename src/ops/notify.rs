//! systemd notifications (`sd_notify`): `READY=1` once sources are open and the sink is
//! configured, `WATCHDOG=1` from the pipeline loop (so a wedged loop gets the unit
//! restarted), `STATUS=` with entries shipped and lag, `STOPPING=1` on shutdown. Without
//! `NOTIFY_SOCKET` every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

/// Sends notifications to the service manager, if there is one.
#[derive(Debug)]
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
    failed: bool,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty()),
            watchdog: sd_notify::watchdog_enabled(),
            failed: false,
        }
    }

    /// The watchdog interval systemd expects pings within, if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// How often the pipeline loop should call [`Notifier::alive`]: half the watchdog
    /// interval, at most a second.
    pub fn tick(&self) -> Duration {
        self.watchdog
            .map_or(Duration::from_secs(1), |w| {
                (w / 2).min(Duration::from_secs(1))
            })
            .max(Duration::from_millis(10))
    }

    fn send(&mut self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            if !self.failed {
                self.failed = true;
                tracing::warn!(error = %e, "Cannot notify the service manager (NOTIFY_SOCKET)");
            }
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&mut self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `WATCHDOG=1` (only if the watchdog is enabled).
    pub fn alive(&mut self) {
        if self.watchdog.is_some() {
            self.send(&[NotifyState::Watchdog]);
        }
    }

    /// `STATUS=...`.
    pub fn status(&mut self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&mut self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }
}
