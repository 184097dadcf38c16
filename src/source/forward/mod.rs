//! The forward source (aggregator mode): a Fluentd Forward protocol v1 listener.
//!
//! Every event of a request becomes a record whose position is the request's
//! [`RequestAck`](crate::position::RequestAck) share. When the pipeline's watermark passes an entry, the entry is done; when every entry
//! of a request with a `chunk` option is done, `{"ack": chunk}` goes back on the request's
//! connection. The sender keeps the data until then, so this source needs no checkpoint, and
//! while the pipeline is full the listener stops reading: the senders' own buffers (and TCP)
//! hold the backlog.
//!
//! One thread runs the listener on its own single-threaded tokio runtime; `conn` serves one
//! connection. Bad input (garbage, a wrong type, a request over `max_request_bytes`, an
//! unknown compression, a non-log `fluent_signal`, a failed handshake) closes that connection
//! with a counted, rate-limited log line; other connections are not affected. What peers make
//! us hold is bounded by one `budget` (`max_buffer_bytes`) shared by all connections. A
//! connection on which no whole request arrived for `idle_timeout` is closed, and at
//! `max_connections` the longest-idle connection with nothing awaiting an ack makes room for a
//! new one.

mod budget;
mod conn;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::config::ForwardSourceConfig;
use crate::ops::ratelimit::RateLimit;
use crate::source::ReaderContext;
use crate::source::{Batch, SourceError};
use budget::Budget;

/// Starts a forward source.
pub struct ForwardReader {
    /// Which source, its name, its batch bounds and its counters.
    pub cx: ReaderContext,
    /// Settings.
    pub config: ForwardSourceConfig,
}

/// How often the stop flag is looked at.
const STOP_POLL: Duration = Duration::from_millis(100);
/// A connection silent this long while the budget is full may be closed to make room.
const STALLED: Duration = Duration::from_secs(1);

struct Conn {
    last_active: Instant,
    /// Requests with a chunk not yet acknowledged.
    awaiting: usize,
    /// Bytes it holds under the budget.
    charged: usize,
    kill: Arc<Kill>,
}

/// Closes a connection from outside it.
#[derive(Debug, Default)]
struct Kill {
    notify: Notify,
    /// To free memory (else to make room for a new connection).
    for_memory: AtomicBool,
}

struct Shared {
    reader: ForwardReader,
    tls: Option<tokio_rustls::TlsAcceptor>,
    tx: mpsc::Sender<Batch>,
    stop: Arc<AtomicBool>,
    limit: Mutex<RateLimit>,
    conns: Mutex<HashMap<u64, Conn>>,
    budget: Arc<Budget>,
    /// One request at a time is inflated or converted from JSON (their decoded size is not
    /// known before they are read, so they are not charged to the budget: this bounds them to
    /// one request's `max_request_bytes`).
    heavy: tokio::sync::Mutex<()>,
    /// A connection that held a large request closed: return free memory at the next tick.
    release_memory: AtomicBool,
}

/// Why a connection was closed.
enum Close {
    /// The peer closed it.
    Done,
    /// An I/O error.
    Io(std::io::Error),
    /// Bytes that are not a request we accept.
    Bad(String),
    /// A request of a signal other than logs (Fluent Bit's metrics, traces, ...).
    Signal(String),
    /// A request did not arrive whole within `idle_timeout`.
    Stalled,
    /// Closed to give its buffered bytes to connections that make progress.
    Memory,
    /// Over `max_request_bytes`.
    TooLarge(String),
    /// The shared-key handshake failed.
    Auth(String),
    /// TLS failed.
    Tls(String),
    /// Silent for `idle_timeout`.
    Idle,
    /// Closed to make room for a new connection.
    Evicted,
    /// perapera is stopping.
    Stopping,
}

impl ForwardReader {
    /// Binds the listener (errors name the address) and starts the listener thread.
    pub fn spawn(
        self,
        tx: mpsc::Sender<Batch>,
        stop: Arc<AtomicBool>,
    ) -> Result<JoinHandle<()>, SourceError> {
        let err = |reason: String| SourceError::Open {
            source_name: self.cx.name.clone(),
            reason,
        };
        let tls = match &self.config.tls {
            Some(t) => Some(crate::tls::acceptor(t).map_err(err)?),
            None => None,
        };
        let listener = std::net::TcpListener::bind(&self.config.listen).map_err(|e| {
            err(format!(
                "cannot listen on {}: {e} (is another process using the port? change `listen`)",
                self.config.listen
            ))
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| err(format!("listener: {e}")))?;
        let local = listener.local_addr().map_err(|e| err(e.to_string()))?;
        tracing::info!(source = %self.cx.name, listen = %local, tls = tls.is_some(),
            handshake = self.config.shared_key.is_some(), "Forward source listening");
        let name = self.cx.name.clone();
        let budget = Budget::new(self.config.max_buffer_bytes);
        let shared = Arc::new(Shared {
            reader: self,
            tls,
            tx,
            stop,
            limit: Mutex::new(RateLimit::new(Duration::from_secs(10))),
            conns: Mutex::new(HashMap::new()),
            budget,
            heavy: tokio::sync::Mutex::new(()),
            release_memory: AtomicBool::new(false),
        });
        crate::runtime::spawn(
            format!("forward:{name}"),
            format!("forward listener of source {name:?}"),
            listen(shared, listener),
        )
        .map_err(|e| SourceError::Open {
            source_name: name,
            reason: format!("cannot start listener thread: {e}"),
        })
    }
}

async fn listen(shared: Arc<Shared>, listener: std::net::TcpListener) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(source = %shared.reader.cx.name, error = %e, "Forward listener failed");
            return;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut next_id = 0u64;
    let mut tick = tokio::time::interval(STOP_POLL);
    while !shared.stop.load(Ordering::Relaxed) {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        shared.log("accept", &format!("cannot accept a connection: {e}"), None);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let Some(kill) = shared.admit(next_id, peer) else {
                    continue;
                };
                let id = next_id;
                next_id += 1;
                let shared = shared.clone();
                tasks.spawn(async move {
                    let close = conn::connection(&shared, stream, peer, id, kill).await;
                    let held = shared.conns.lock().ok().and_then(|mut c| c.remove(&id)).map_or(0, |c| c.charged);
                    if held > 0 || matches!(close, Close::Memory) {
                        // It held a large request: the pages go back at the next tick (after
                        // a flood the listener may go quiet and the allocator keep them).
                        shared.release_memory.store(true, Ordering::Relaxed);
                    }
                    shared.closed(peer, close);
                });
            }
            _ = tick.tick() => {
                if shared.release_memory.swap(false, Ordering::Relaxed) {
                    crate::memory::release();
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    // Connections finish the acks they owe (or end when the pipeline is gone).
    while tasks.join_next().await.is_some() {}
}

impl Shared {
    fn name(&self) -> &str {
        &self.reader.cx.name
    }

    /// Registers a new connection, making room at the limit; `None` refuses it.
    fn admit(&self, id: u64, peer: SocketAddr) -> Option<Arc<Kill>> {
        let mut conns = self.conns.lock().ok()?;
        if conns.len() >= self.reader.config.max_connections {
            let victim = conns
                .iter()
                .filter(|(_, c)| c.awaiting == 0)
                .min_by_key(|(_, c)| c.last_active)
                .map(|(id, c)| (*id, c.kill.clone()));
            match victim {
                Some((victim, kill)) => {
                    kill.notify.notify_one();
                    conns.remove(&victim);
                }
                None => {
                    drop(conns);
                    self.count("refused_connection_limit");
                    self.log(
                        "connection_limit",
                        &format!(
                            "refused a connection from {peer}: {} connections are open and all \
                             await acknowledgements (raise max_connections)",
                            self.reader.config.max_connections
                        ),
                        None,
                    );
                    return None;
                }
            }
        }
        let kill = Arc::new(Kill::default());
        conns.insert(
            id,
            Conn {
                last_active: Instant::now(),
                awaiting: 0,
                charged: 0,
                kill: kill.clone(),
            },
        );
        Some(kill)
    }

    /// The budget is full and connection `id` waits for it: closes the connection holding the
    /// most bytes among those silent for [`STALLED`] with no ack owed (a request that does not
    /// complete), so that connections that make progress are not starved. False if none.
    fn make_room(&self, id: u64) -> bool {
        let Ok(mut conns) = self.conns.lock() else {
            return false;
        };
        let now = Instant::now();
        let victim = conns
            .iter()
            .filter(|(other, c)| {
                **other != id
                    && c.awaiting == 0
                    && c.charged > 0
                    && now.duration_since(c.last_active) >= STALLED
            })
            .max_by_key(|(_, c)| c.charged)
            .map(|(id, c)| (*id, c.kill.clone()));
        match victim {
            Some((victim, kill)) => {
                kill.for_memory.store(true, Ordering::Relaxed);
                kill.notify.notify_one();
                conns.remove(&victim);
                true
            }
            None => false,
        }
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut Conn)) {
        if let Ok(mut conns) = self.conns.lock() {
            if let Some(c) = conns.get_mut(&id) {
                f(c);
            }
        }
    }

    fn count(&self, what: &'static str) {
        self.reader.cx.stats.note(self.name(), what, 1);
    }

    fn log(&self, cause: &str, message: &str, peer: Option<SocketAddr>) {
        let allowed = self.limit.lock().ok().and_then(|mut l| l.allow(cause));
        if let Some(suppressed) = allowed {
            match peer {
                Some(peer) => tracing::warn!(source = %self.name(), %peer, suppressed, "{message}"),
                None => tracing::warn!(source = %self.name(), suppressed, "{message}"),
            }
        }
    }

    fn closed(&self, peer: SocketAddr, close: Close) {
        let (what, cause, message) = match close {
            Close::Done | Close::Stopping => return,
            Close::Io(e) => {
                tracing::debug!(source = %self.name(), %peer, error = %e, "Forward connection failed");
                return;
            }
            Close::Signal(reason) => (
                "rejected_signal",
                "signal",
                format!("closed the connection: {reason}"),
            ),
            Close::Stalled => (
                "closed_stalled_request",
                "stalled",
                format!(
                    "closed a connection whose request did not arrive whole within {:?} \
                     (idle_timeout)",
                    self.reader.config.idle_timeout
                ),
            ),
            Close::Memory => (
                "closed_for_memory",
                "memory",
                format!(
                    "closed a connection holding an incomplete request: the {} bytes of \
                     max_buffer_bytes are in use and other senders wait",
                    self.budget.limit()
                ),
            ),
            Close::Bad(reason) => (
                "rejected_bad_request",
                "bad_request",
                format!("closed the connection: not a valid forward request: {reason}"),
            ),
            Close::TooLarge(reason) => (
                "rejected_too_large",
                "too_large",
                format!("closed the connection: {reason}"),
            ),
            Close::Auth(reason) => (
                "rejected_authentication",
                "authentication",
                format!("closed the connection: {reason}"),
            ),
            Close::Tls(reason) => (
                "rejected_tls",
                "tls",
                format!("closed the connection: {reason}"),
            ),
            Close::Idle => (
                "closed_idle",
                "idle",
                format!(
                    "closed a connection silent for {:?} (idle_timeout)",
                    self.reader.config.idle_timeout
                ),
            ),
            Close::Evicted => (
                "closed_for_new_connection",
                "evicted",
                format!(
                    "closed the longest-idle connection: {} connections are open \
                     (max_connections)",
                    self.reader.config.max_connections
                ),
            ),
        };
        self.count(what);
        self.log(cause, &message, Some(peer));
    }
}
