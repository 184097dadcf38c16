//! The forward source (aggregator mode): a Fluentd Forward protocol v1 listener.
//!
//! Every event of a request becomes a record whose position is the request's [`Pending`]
//! share. When the pipeline's watermark passes an entry, the entry is done; when every entry
//! of a request with a `chunk` option is done, `{"ack": chunk}` goes back on the request's
//! connection. The sender keeps the data until then, so this source needs no checkpoint, and
//! while the pipeline is full the listener stops reading: the senders' own buffers (and TCP)
//! hold the backlog.
//!
//! One thread runs the listener on its own single-threaded tokio runtime. Bad input (garbage,
//! a wrong type, a request over `max_request_bytes`, an unknown compression, a failed
//! handshake) closes that connection with a counted, rate-limited log line; other connections
//! are not affected. Connections silent for `idle_timeout` are closed, and at
//! `max_connections` the longest-idle connection with nothing awaiting an ack makes room for
//! a new one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::config::ForwardSourceConfig;
use crate::forward::handshake::{Helo, Ping, Pong};
use crate::forward::{self, frame, ReadError, Request, Stream};
use crate::ops::metrics::Stats;
use crate::ops::ratelimit::RateLimit;
use crate::record::{Position, Record, Value};
use crate::source::{Batch, SourceError};

/// The acknowledgement state of one request, shared by its records' positions.
#[derive(Debug)]
pub struct Pending {
    /// The sender's address (the records' position text).
    pub peer: String,
    remaining: AtomicUsize,
    /// Where the ack goes, and its bytes; `None` when the request asked for no ack.
    reply: Option<(mpsc::UnboundedSender<Vec<u8>>, Vec<u8>)>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for Pending {}

impl Pending {
    /// One entry of the request is done (acknowledged by the sink, or finally handled by the
    /// oversize policy). The last one sends the ack.
    pub fn entry_done(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some((tx, ack)) = &self.reply {
                let _ = tx.send(ack.clone());
            }
        }
    }
}

/// Starts a forward source.
pub struct ForwardReader {
    /// Index in the configuration.
    pub index: usize,
    /// The source's name.
    pub name: String,
    /// Settings.
    pub config: ForwardSourceConfig,
    /// At most this many entries per batch.
    pub batch_entries: usize,
    /// At most about this many bytes per batch.
    pub batch_bytes: usize,
    /// Counters.
    pub stats: Arc<Stats>,
}

/// How long a new connection may take for TLS and the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the stop flag is looked at.
const STOP_POLL: Duration = Duration::from_millis(100);

struct Conn {
    last_active: Instant,
    /// Requests with a chunk not yet acknowledged.
    awaiting: usize,
    kill: Arc<Notify>,
}

struct Shared {
    reader: ForwardReader,
    tls: Option<tokio_rustls::TlsAcceptor>,
    tx: mpsc::Sender<Batch>,
    stop: Arc<AtomicBool>,
    limit: Mutex<RateLimit>,
    conns: Mutex<HashMap<u64, Conn>>,
}

/// Why a connection was closed.
enum Close {
    /// The peer closed it.
    Done,
    /// An I/O error.
    Io(std::io::Error),
    /// Bytes that are not a request we accept.
    Bad(String),
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
            source_name: self.name.clone(),
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
        tracing::info!(source = %self.name, listen = %local, tls = tls.is_some(),
            handshake = self.config.shared_key.is_some(), "Forward source listening");
        let name = self.name.clone();
        let shared = Arc::new(Shared {
            reader: self,
            tls,
            tx,
            stop,
            limit: Mutex::new(RateLimit::new(Duration::from_secs(10))),
            conns: Mutex::new(HashMap::new()),
        });
        std::thread::Builder::new()
            .name(format!("forward:{name}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(source = %shared.reader.name, error = %e, "Cannot start the forward listener's runtime");
                        return;
                    }
                };
                rt.block_on(listen(shared, listener));
            })
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
            tracing::error!(source = %shared.reader.name, error = %e, "Forward listener failed");
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
                    let close = connection(&shared, stream, peer, id, kill).await;
                    shared.conns.lock().map(|mut c| c.remove(&id)).ok();
                    shared.closed(peer, close);
                });
            }
            _ = tick.tick() => {}
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    // Connections finish the acks they owe (or end when the pipeline is gone).
    while tasks.join_next().await.is_some() {}
}

impl Shared {
    fn name(&self) -> &str {
        &self.reader.name
    }

    /// Registers a new connection, making room at the limit; `None` refuses it.
    fn admit(&self, id: u64, peer: SocketAddr) -> Option<Arc<Notify>> {
        let mut conns = self.conns.lock().ok()?;
        if conns.len() >= self.reader.config.max_connections {
            let victim = conns
                .iter()
                .filter(|(_, c)| c.awaiting == 0)
                .min_by_key(|(_, c)| c.last_active)
                .map(|(id, c)| (*id, c.kill.clone()));
            match victim {
                Some((victim, kill)) => {
                    kill.notify_one();
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
        let kill = Arc::new(Notify::new());
        conns.insert(
            id,
            Conn {
                last_active: Instant::now(),
                awaiting: 0,
                kill: kill.clone(),
            },
        );
        Some(kill)
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut Conn)) {
        if let Ok(mut conns) = self.conns.lock() {
            if let Some(c) = conns.get_mut(&id) {
                f(c);
            }
        }
    }

    fn count(&self, what: &'static str) {
        self.reader.stats.note(self.name(), what, 1);
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

async fn connection(
    shared: &Arc<Shared>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    id: u64,
    kill: Arc<Notify>,
) -> Close {
    let mut stream: Box<dyn Stream> = match &shared.tls {
        None => Box::new(tcp),
        Some(acceptor) => {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => Box::new(s),
                // A connection closed before any byte (a port probe) is not an error.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Close::Done,
                Ok(Err(e)) => return Close::Tls(format!("TLS handshake failed: {e}")),
                Err(_) => return Close::Tls("TLS handshake timed out".into()),
            }
        }
    };
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    if let Some(key) = &shared.reader.config.shared_key {
        let fut = handshake(shared, &mut stream, &mut buf, key);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, fut).await {
            Ok(Ok(())) => {}
            Ok(Err(close)) => return close,
            Err(_) => return Close::Auth("no PING within 10 s of HELO".into()),
        }
    }
    serve(shared, stream, buf, peer, id, kill).await
}

async fn handshake(
    shared: &Shared,
    stream: &mut Box<dyn Stream>,
    buf: &mut Vec<u8>,
    key: &crate::config::SharedKey,
) -> Result<(), Close> {
    let users = &shared.reader.config.users;
    let helo = Helo {
        nonce: forward::random_bytes::<16>().to_vec(),
        auth: if users.is_empty() {
            Vec::new()
        } else {
            forward::random_bytes::<16>().to_vec()
        },
        keepalive: true,
    };
    stream.write_all(&helo.encode()).await.map_err(Close::Io)?;
    let frame = forward::read_frame(stream, buf, 64 << 10)
        .await
        .map_err(|e| match e {
            ReadError::Frame(e) => Close::Bad(e.to_string()),
            ReadError::Closed => Close::Done,
            ReadError::Io(e) => Close::Io(e),
        })?;
    let ping = match Ping::decode(&frame) {
        Ok(p) => p,
        Err(e) => {
            // fluentd's answer to data sent before the handshake.
            let refused = Pong {
                ok: false,
                reason: "invalid ping message".into(),
                hostname: Vec::new(),
                digest: Vec::new(),
            };
            let _ = stream.write_all(&refused.encode()).await;
            return Err(Close::Auth(format!(
                "{e} (the client must use the shared-key handshake)"
            )));
        }
    };
    let result = ping.verify(&helo, key.key.as_bytes(), users);
    let pong = Pong::new(
        &ping,
        &helo,
        result.clone(),
        &key.self_hostname,
        key.key.as_bytes(),
    );
    stream.write_all(&pong.encode()).await.map_err(Close::Io)?;
    result.map_err(|reason| {
        Close::Auth(format!(
            "handshake failed for {:?}: {reason}",
            String::from_utf8_lossy(&ping.hostname)
        ))
    })
}

async fn serve(
    shared: &Arc<Shared>,
    mut stream: Box<dyn Stream>,
    mut buf: Vec<u8>,
    peer: SocketAddr,
    id: u64,
    kill: Arc<Notify>,
) -> Close {
    let config = &shared.reader.config;
    let limit = config.max_request_bytes;
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let mut json: Option<bool> = None;
    let mut awaiting = 0usize;
    let mut eof = false;
    let mut idle_since = Instant::now();
    let peer_text = peer.to_string();
    loop {
        // Every complete request in the buffer.
        loop {
            if json.is_none() {
                // fluentd's rule: a first byte of `{` or `[` means JSON for the connection.
                match buf.iter().find(|b| !b" \t\r\n".contains(b)) {
                    Some(b'{' | b'[') => json = Some(true),
                    Some(_) => json = Some(false),
                    None => break,
                }
            }
            if buf.is_empty() {
                break;
            }
            let decoded = if json == Some(true) {
                let mut iter =
                    serde_json::Deserializer::from_slice(&buf).into_iter::<serde_json::Value>();
                match iter.next() {
                    Some(Ok(v)) => {
                        let used = iter.byte_offset();
                        buf.drain(..used);
                        forward::decode_json(v, limit)
                    }
                    Some(Err(e)) if e.is_eof() => {
                        if buf.len() > limit {
                            return Close::TooLarge(format!(
                                "JSON request over max_request_bytes ({limit} bytes)"
                            ));
                        }
                        break;
                    }
                    Some(Err(e)) => return Close::Bad(format!("invalid JSON: {e}")),
                    None => {
                        buf.clear();
                        break;
                    }
                }
            } else {
                match frame::scan(&buf, limit) {
                    Ok(frame::Scan::Complete(n)) => {
                        let r = forward::decode_request(&buf[..n], limit);
                        buf.drain(..n);
                        r
                    }
                    Ok(frame::Scan::Incomplete(_)) => break,
                    Err(e @ frame::FrameError::TooLarge { .. }) => {
                        return Close::TooLarge(e.to_string())
                    }
                    Err(e) => return Close::Bad(e.to_string()),
                }
            };
            let request = match decoded {
                Ok(Some(r)) => r,
                Ok(None) => continue, // heartbeat
                Err(forward::DecodeError::TooLarge(n)) => {
                    return Close::TooLarge(format!(
                        "decompressed entries exceed {n} bytes (max_request_bytes)"
                    ))
                }
                Err(e) => return Close::Bad(e.to_string()),
            };
            let asks_ack = request.options.chunk.is_some();
            if asks_ack {
                awaiting += 1;
                shared.update(id, |c| c.awaiting = awaiting);
            }
            if !submit(shared, request, &peer_text, json == Some(true), &ack_tx).await {
                return Close::Stopping;
            }
        }
        let stopping = shared.stop.load(Ordering::Relaxed);
        if (eof || stopping) && awaiting == 0 {
            return if eof { Close::Done } else { Close::Stopping };
        }
        let idle_at = idle_since + config.idle_timeout;
        let read = !eof && !stopping;
        tokio::select! {
            biased;
            ack = ack_rx.recv() => {
                let Some(ack) = ack else { return Close::Stopping };
                awaiting = awaiting.saturating_sub(1);
                shared.update(id, |c| c.awaiting = awaiting);
                if let Err(e) = stream.write_all(&ack).await {
                    return Close::Io(e);
                }
            }
            () = kill.notified() => return Close::Evicted,
            n = stream.read_buf(&mut buf), if read => match n {
                Ok(0) => eof = true,
                Ok(_) => {
                    // The limit is enforced per request by frame::scan (and for JSON above):
                    // the buffer may legitimately hold several requests.
                    idle_since = Instant::now();
                    shared.update(id, |c| c.last_active = idle_since);
                }
                Err(e) => return Close::Io(e),
            },
            () = tokio::time::sleep_until(idle_at), if awaiting == 0 && !eof => return Close::Idle,
            () = tokio::time::sleep(STOP_POLL), if !stopping => {}
        }
    }
}

/// Turns a request into records and hands them to the pipeline (waiting while it is full).
/// False when the pipeline is gone.
async fn submit(
    shared: &Shared,
    request: Request,
    peer: &str,
    json: bool,
    ack_tx: &mpsc::UnboundedSender<Vec<u8>>,
) -> bool {
    let reader = &shared.reader;
    let n = request.entries.len();
    let reply = request.options.chunk.as_ref().map(|c| {
        let ack = if json {
            forward::ack_json(c)
        } else {
            forward::ack(c)
        };
        (ack_tx.clone(), ack)
    });
    if n == 0 {
        if let Some((tx, ack)) = reply {
            let _ = tx.send(ack);
        }
        return true;
    }
    let pending = Arc::new(Pending {
        peer: peer.to_string(),
        remaining: AtomicUsize::new(n),
        reply,
    });
    let now = unix_now_ns();
    let mut records = Vec::with_capacity(n.min(reader.batch_entries));
    let mut bytes = 0usize;
    let tag = request.tag;
    for entry in request.entries {
        let mut fields = entry.record;
        if !fields.iter().any(|(k, _)| k == "tag") {
            fields.push(("tag".to_string(), Value::Str(tag.clone())));
        }
        let time_ns = match entry.time.nanos() {
            0 => now,
            t => t,
        };
        let record = Record::from_fields(&fields, time_ns, Position::Forward(pending.clone()));
        bytes += record.byte_size();
        records.push(record);
        if records.len() >= reader.batch_entries || bytes >= reader.batch_bytes {
            bytes = 0;
            if !send(shared, std::mem::take(&mut records)).await {
                return false;
            }
        }
    }
    records.is_empty() || send(shared, records).await
}

async fn send(shared: &Shared, records: Vec<Record>) -> bool {
    shared
        .reader
        .stats
        .read(&shared.reader.name, records.len() as u64);
    shared
        .tx
        .send(Batch {
            source: shared.reader.index,
            events: Vec::new(),
            records,
        })
        .await
        .is_ok()
}

fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
