//! The forward sink: a Fluentd Forward protocol v1 client with acknowledgements.
//!
//! Entries of one burst are grouped per tag into PackedForward chunks (`bin` entries,
//! `size` and a random 128-bit `chunk` id; gzip when configured) and handed to one connection
//! task. The task keeps up to `max_pending_chunks` chunks unacknowledged on its connection;
//! `{"ack": id}` (compared byte for byte) acknowledges exactly that chunk's entries. A
//! timeout, a disconnect, a negative ack (`{}`) or an unexpected reply fails every chunk on
//! the connection as retriable: the pipeline sends those entries again (duplicates, never
//! loss) with its backoff, and the next chunk connects again, trying the servers in order
//! from the one that worked last (failover).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

use crate::config::ForwardSinkConfig;
use crate::forward::handshake::{Helo, Ping, Pong};
use crate::forward::{self, frame, Chunk, ReadError, Stream, Time};
use crate::sink::{Ack, DeliveryError, Outgoing, SendError};

/// Entries of one tag gathered in this burst.
#[derive(Default)]
struct Open {
    entries: Vec<u8>,
    ids: Vec<u64>,
}

/// A chunk on its way.
struct OutChunk {
    bytes: Vec<u8>,
    chunk: Chunk,
    ids: Vec<u64>,
}

/// The forward sink.
pub struct ForwardSink {
    config: Arc<ForwardSinkConfig>,
    open: HashMap<String, Open>,
    tag: String,
    tx: Option<mpsc::UnboundedSender<OutChunk>>,
    task: tokio::task::JoinHandle<()>,
}

impl ForwardSink {
    /// Builds the sink (TLS files are loaded here, so their errors stop the start); outcomes
    /// go to `acks`.
    pub fn new(
        config: ForwardSinkConfig,
        acks: mpsc::UnboundedSender<Ack>,
    ) -> Result<ForwardSink, String> {
        let tls = match &config.tls {
            Some(t) => Some(crate::tls::connector(t)?),
            None => None,
        };
        let config = Arc::new(config);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(Client::new(config.clone(), tls, acks).run(rx));
        Ok(ForwardSink {
            config,
            open: HashMap::new(),
            tag: String::new(),
            tx: Some(tx),
            task,
        })
    }

    /// Adds an entry to its tag's chunk.
    pub fn send(&mut self, out: Outgoing<'_>) -> Result<(), SendError> {
        self.config.tag.render_into(out.record, &mut self.tag);
        let open = match self.open.get_mut(self.tag.as_str()) {
            Some(o) => o,
            None => self.open.entry(self.tag.clone()).or_default(),
        };
        forward::write_entry_encoded(
            &mut open.entries,
            Time::from_nanos(out.record.time_ns),
            out.record.msgpack(),
        );
        open.ids.push(out.id);
        if open.ids.len() >= self.config.max_chunk_entries
            || open.entries.len() >= self.config.max_chunk_bytes
        {
            let tag = self.tag.clone();
            self.seal(&tag);
        }
        Ok(())
    }

    fn seal(&mut self, tag: &str) {
        let Some(open) = self.open.remove(tag) else {
            return;
        };
        if open.ids.is_empty() {
            return;
        }
        let chunk = Chunk::random();
        let mut bytes = Vec::with_capacity(open.entries.len() + tag.len() + 64);
        forward::write_packed_forward(
            &mut bytes,
            tag,
            &open.entries,
            open.ids.len() as u64,
            &chunk,
            self.config.gzip,
        );
        if let Some(tx) = &self.tx {
            let _ = tx.send(OutChunk {
                bytes,
                chunk,
                ids: open.ids,
            });
        }
    }

    /// Sends every chunk gathered in this burst.
    pub fn flush_burst(&mut self) {
        let tags: Vec<String> = self.open.keys().cloned().collect();
        for tag in tags {
            self.seal(&tag);
        }
    }

    /// Stops the connection task (the pipeline has already waited for the acks it could
    /// get; whatever is unacknowledged is sent again on the next start by the source).
    pub fn close(mut self, _timeout: Duration) {
        self.flush_burst();
        self.tx = None;
        self.task.abort();
    }
}

struct Connection {
    server: String,
    stream: Box<dyn Stream>,
    buf: Vec<u8>,
    keepalive: bool,
}

/// A chunk written and not yet acknowledged.
struct Waiting {
    id: Vec<u8>,
    ids: Vec<u64>,
    deadline: Instant,
}

struct Client {
    config: Arc<ForwardSinkConfig>,
    tls: Option<tokio_rustls::TlsConnector>,
    acks: mpsc::UnboundedSender<Ack>,
    /// The server that worked last: connecting starts there.
    current: usize,
    conn: Option<Connection>,
    waiting: VecDeque<Waiting>,
}

impl Client {
    fn new(
        config: Arc<ForwardSinkConfig>,
        tls: Option<tokio_rustls::TlsConnector>,
        acks: mpsc::UnboundedSender<Ack>,
    ) -> Client {
        Client {
            config,
            tls,
            acks,
            current: 0,
            conn: None,
            waiting: VecDeque::new(),
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<OutChunk>) {
        loop {
            let limit = match &self.conn {
                Some(c) if !c.keepalive => 1,
                _ => self.config.max_pending_chunks,
            };
            let deadline = self.waiting.front().map(|w| w.deadline);
            let reading = self.conn.is_some() && !self.waiting.is_empty();
            tokio::select! {
                chunk = rx.recv(), if self.waiting.len() < limit => match chunk {
                    Some(chunk) => self.write(chunk).await,
                    None => return,
                },
                read = read_some(&mut self.conn), if reading => match read {
                    Ok(()) => self.responses(),
                    Err(reason) => self.fail_all(&reason),
                },
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    let reason = format!(
                        "no acknowledgement from {} within ack_timeout ({:?})",
                        self.server(),
                        self.config.ack_timeout
                    );
                    self.fail_all(&reason);
                }
            }
        }
    }

    fn server(&self) -> &str {
        self.conn
            .as_ref()
            .map_or("the server", |c| c.server.as_str())
    }

    async fn write(&mut self, chunk: OutChunk) {
        if self.conn.is_none() {
            match self.connect_any().await {
                Ok(c) => self.conn = Some(c),
                Err(reason) => {
                    self.fail(chunk.ids, &reason);
                    return;
                }
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        match timeout(self.config.ack_timeout, conn.stream.write_all(&chunk.bytes)).await {
            Ok(Ok(())) => self.waiting.push_back(Waiting {
                id: chunk.chunk.content().to_vec(),
                ids: chunk.ids,
                deadline: Instant::now() + self.config.ack_timeout,
            }),
            Ok(Err(e)) => {
                let reason = format!("writing to {} failed: {e}", conn.server);
                self.fail(chunk.ids, &reason);
                self.fail_all(&reason);
            }
            Err(_) => {
                let reason = format!("writing to {} timed out", conn.server);
                self.fail(chunk.ids, &reason);
                self.fail_all(&reason);
            }
        }
    }

    /// Handles every complete response in the connection's buffer.
    fn responses(&mut self) {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            let n = match frame::scan(&conn.buf, 1 << 20) {
                Ok(frame::Scan::Complete(n)) => n,
                Ok(frame::Scan::Incomplete(_)) => return,
                Err(e) => {
                    let reason = format!("{} sent an invalid response: {e}", conn.server);
                    return self.fail_all(&reason);
                }
            };
            let response: Vec<u8> = conn.buf.drain(..n).collect();
            match forward::decode_ack(&response) {
                Ok(Some(id)) => {
                    let Some(at) = self.waiting.iter().position(|w| w.id == id) else {
                        let reason = format!(
                            "{} acknowledged a chunk id we are not waiting for ({:?})",
                            conn.server,
                            String::from_utf8_lossy(&id)
                        );
                        return self.fail_all(&reason);
                    };
                    if let Some(w) = self.waiting.remove(at) {
                        for id in w.ids {
                            let _ = self.acks.send(Ack { id, result: Ok(()) });
                        }
                    }
                    if !conn.keepalive && self.waiting.is_empty() {
                        self.conn = None;
                    }
                }
                Ok(None) => {
                    let reason = format!(
                        "{} answered without an ack (it could not accept the entries)",
                        conn.server
                    );
                    return self.fail_all(&reason);
                }
                Err(_) if Helo::decode(&response).is_ok() => {
                    let reason = format!(
                        "{} requires the shared-key handshake: set shared_key in [sink]",
                        conn.server
                    );
                    return self.fail_all(&reason);
                }
                Err(e) => {
                    let reason = format!("{} sent an unexpected response: {e}", conn.server);
                    return self.fail_all(&reason);
                }
            }
        }
    }

    fn fail(&self, ids: Vec<u64>, reason: &str) {
        for id in ids {
            let _ = self.acks.send(Ack {
                id,
                result: Err(DeliveryError::Retriable(reason.to_string())),
            });
        }
    }

    /// Fails every chunk on the connection and drops it.
    fn fail_all(&mut self, reason: &str) {
        self.conn = None;
        for w in std::mem::take(&mut self.waiting) {
            self.fail(w.ids, reason);
        }
    }

    async fn connect_any(&mut self) -> Result<Connection, String> {
        let servers = self.config.servers.len();
        let mut errors = Vec::new();
        for i in 0..servers {
            let index = (self.current + i) % servers;
            let server = &self.config.servers[index];
            match timeout(self.config.connect_timeout, self.connect(server)).await {
                Ok(Ok(conn)) => {
                    if index != self.current {
                        tracing::info!(server = %server, "Forward sink failed over to another server");
                    }
                    self.current = index;
                    return Ok(conn);
                }
                Ok(Err(e)) => errors.push(format!("{server}: {e}")),
                Err(_) => errors.push(format!(
                    "{server}: no connection within connect_timeout ({:?})",
                    self.config.connect_timeout
                )),
            }
        }
        Err(format!(
            "no forward server accepted a connection: {}",
            errors.join("; ")
        ))
    }

    async fn connect(&self, server: &str) -> Result<Connection, String> {
        let tcp = tokio::net::TcpStream::connect(server)
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match &self.tls {
            None => Box::new(tcp),
            Some(connector) => {
                let host = match &self.config.tls.as_ref().and_then(|t| t.server_name.clone()) {
                    Some(name) => name.clone(),
                    None => host_of(server).to_string(),
                };
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| format!("TLS server name {host:?}: {e}"))?;
                Box::new(
                    connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| format!("TLS handshake failed: {e}"))?,
                )
            }
        };
        let mut conn = Connection {
            server: server.to_string(),
            stream,
            buf: Vec::with_capacity(4096),
            keepalive: true,
        };
        if let Some(key) = &self.config.shared_key {
            let helo_frame = read_frame(&mut conn).await.map_err(|e| {
                format!("{e} while waiting for HELO (is shared_key set on the server too?)")
            })?;
            let helo = Helo::decode(&helo_frame).map_err(|e| e.to_string())?;
            let (user, password) = self
                .config
                .user
                .as_ref()
                .map_or(("", ""), |(u, p)| (u.as_str(), p.as_str()));
            let ping = Ping::new(
                &helo,
                &key.self_hostname,
                key.key.as_bytes(),
                user,
                password,
            );
            conn.stream
                .write_all(&ping.encode())
                .await
                .map_err(|e| e.to_string())?;
            let pong_frame = read_frame(&mut conn).await?;
            let pong = Pong::decode(&pong_frame).map_err(|e| e.to_string())?;
            pong.verify(&ping, &helo, key.key.as_bytes())
                .map_err(|e| e.to_string())?;
            conn.keepalive = helo.keepalive;
        }
        Ok(conn)
    }
}

fn host_of(server: &str) -> &str {
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Reads more bytes into the connection's buffer.
async fn read_some(conn: &mut Option<Connection>) -> Result<(), String> {
    let Some(conn) = conn.as_mut() else {
        return Err("not connected".into());
    };
    match conn.stream.read_buf(&mut conn.buf).await {
        Ok(0) => Err(format!("{} closed the connection", conn.server)),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("reading from {} failed: {e}", conn.server)),
    }
}

/// Reads one handshake message.
async fn read_frame(conn: &mut Connection) -> Result<Vec<u8>, String> {
    forward::read_frame(&mut conn.stream, &mut conn.buf, 1 << 20)
        .await
        .map_err(|e| match e {
            ReadError::Frame(e) => format!("invalid handshake message: {e}"),
            ReadError::Closed => "the server closed the connection".into(),
            ReadError::Io(e) => e.to_string(),
        })
}
