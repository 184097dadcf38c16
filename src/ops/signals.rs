//! Signals: SIGTERM and SIGINT stop perapera (it drains and writes its checkpoint); SIGHUP
//! is logged and ignored.

/// SIGTERM and SIGINT stop perapera; SIGHUP is logged and ignored (there is no configuration
/// reload: restart to apply a changed configuration).
pub struct Signals(Option<[tokio::signal::unix::Signal; 3]>);

impl Signals {
    /// Installs the handlers (before anything starts: a signal that arrives early must not
    /// take its default action, and SIGHUP's is to terminate).
    pub fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => Signals(Some([term, int, hup])),
            _ => {
                tracing::error!("Cannot install signal handlers; stop perapera with SIGKILL");
                Signals(None)
            }
        }
    }

    /// Resolves on SIGTERM or SIGINT.
    pub async fn shutdown(self) {
        let Some([mut term, mut int, mut hup]) = self.0 else {
            return std::future::pending::<()>().await;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv() => tracing::warn!(
                    "SIGHUP ignored: perapera does not reload its configuration; restart it \
                     (systemctl restart perapera) to apply a changed one"
                ),
            }
        }
    }
}
