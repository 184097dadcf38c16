//! One forward connection: TLS and the shared-key handshake, then requests read into a
//! buffer charged to the source's [`Budget`](super::budget::Budget), scanned where the last
//! read stopped (a request trickling in byte by byte is walked once, not once per byte),
//! decoded lazily and handed to the pipeline; acks written back as the sink acknowledges.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Close, Kill, Shared, STOP_POLL};
use crate::forward::handshake::{Helo, Ping, Pong};
use crate::forward::{self, frame, DecodeError, Head, Mode, ReadError, Stream};
use crate::position::RequestAck;
use crate::record::{Position, Record, Value};
use crate::source::Batch;

/// How long a new connection may take for TLS and the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection's buffer grows by at least this much (and starts at it).
const READ_STEP: usize = 16 << 10;
/// How long a connection waits for the budget before asking for room again.
const BUDGET_PATIENCE: Duration = Duration::from_millis(100);
/// The record field that keeps a Fluent Bit entry's non-empty metadata map.
pub const METADATA_FIELD: &str = "fluent_metadata";

pub(super) async fn connection(
    shared: &Arc<Shared>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    id: u64,
    kill: Arc<Kill>,
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
    let mut buf: Vec<u8> = Vec::new();
    if let Some(key) = &shared.reader.config.shared_key {
        buf.reserve_exact(1024);
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

/// Where the next request ends in a connection's buffer.
#[derive(Default)]
struct Framer {
    /// JSON (fluentd's rule: a first byte of `{` or `[` means JSON for the connection).
    json: Option<bool>,
    msgpack: frame::Scanner,
    text: frame::JsonScanner,
    /// Bytes the request being read needs at least.
    need: usize,
}

impl Framer {
    /// The length of the complete request at the front of `buf`, `None` until it is there.
    fn next(&mut self, buf: &[u8], limit: usize) -> Result<Option<usize>, Close> {
        if self.json.is_none() {
            match buf.iter().find(|b| !b" \t\r\n".contains(b)) {
                Some(b'{' | b'[') => self.json = Some(true),
                Some(_) => self.json = Some(false),
                None => return Ok(None),
            }
        }
        let scanned = if self.json == Some(true) {
            self.text.scan(buf, limit)
        } else {
            self.msgpack.scan(buf, limit)
        };
        match scanned {
            Ok(frame::Scan::Complete(n)) => Ok(Some(n)),
            Ok(frame::Scan::Incomplete(need)) => {
                self.need = need;
                Ok(None)
            }
            Err(e @ frame::FrameError::TooLarge { .. }) => Err(Close::TooLarge(e.to_string())),
            Err(e) => Err(Close::Bad(e.to_string())),
        }
    }
}

async fn serve(
    shared: &Arc<Shared>,
    mut stream: Box<dyn Stream>,
    mut buf: Vec<u8>,
    peer: SocketAddr,
    id: u64,
    kill: Arc<Kill>,
) -> Close {
    let config = &shared.reader.config;
    let limit = config.max_request_bytes;
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    // Dropped when perapera stops: the acks still owed come through the senders their
    // requests hold, and once the pipeline is gone (it drops them) `ack_rx` ends.
    let mut ack_tx = Some(ack_tx);
    let mut framer = Framer::default();
    let mut charge = shared.budget.charge();
    // What the connection table says this connection holds (updated when it changes).
    let mut reported = 0usize;
    let mut awaiting = 0usize;
    let mut eof = false;
    // When the request being read began (or the connection went idle): a whole request must
    // arrive within idle_timeout of it; the clock stops while the budget holds reading back.
    let mut since = Instant::now();
    let peer_text = peer.to_string();
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            ack_tx = None;
        }
        // Every complete request in the buffer (none once stopping).
        while let Some(ack_tx) = &ack_tx {
            let n = match framer.next(&buf, limit) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(close) => return close,
            };
            let json = framer.json == Some(true);
            // An ack is owed from before its records reach the pipeline: a connection waiting
            // there must not look evictable (max_connections, the memory budget).
            let owe_ack = || {
                awaiting += 1;
                shared.update(id, |c| c.awaiting = awaiting);
            };
            if let Err(close) = request(shared, &buf[..n], json, &peer_text, ack_tx, owe_ack).await
            {
                return close;
            }
            buf.drain(..n);
            if json {
                // The newline after a JSON request is not the start of the next one.
                let blank = buf.iter().take_while(|b| b" \t\r\n".contains(b)).count();
                buf.drain(..blank);
            }
            since = Instant::now();
        }
        // Give back what the buffer no longer needs.
        if buf.capacity() > 4 * READ_STEP && buf.len() * 4 < buf.capacity() {
            buf.shrink_to(buf.len().max(READ_STEP));
        }
        charge.release_to(buf.capacity());
        let stopping = shared.stop.load(Ordering::Relaxed);
        if (eof || stopping) && awaiting == 0 {
            return if eof { Close::Done } else { Close::Stopping };
        }
        // Room to read into, charged before anything is read.
        let read = !eof && !stopping;
        if read && buf.capacity() - buf.len() < READ_STEP / 4 {
            let len = buf.len();
            let grown = (len + READ_STEP)
                .max(framer.need.min(2 * len))
                .min(limit + READ_STEP);
            // Doubling towards what the request declared, else one step at least.
            if let Some(grown) = [grown, len + READ_STEP]
                .into_iter()
                .find(|&g| charge.try_hold(g))
            {
                buf.reserve_exact(grown - len);
                let _ = charge.try_hold(buf.capacity());
            }
        }
        if charge.bytes() != reported {
            reported = charge.bytes();
            shared.update(id, |c| c.charged = reported);
        }
        let room = buf.capacity() > buf.len();
        let idle_at = since + config.idle_timeout;
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
            () = kill.notify.notified() => {
                return if kill.for_memory.load(Ordering::Relaxed) {
                    Close::Memory
                } else {
                    Close::Evicted
                };
            }
            n = stream.read_buf(&mut buf), if read && room => match n {
                Ok(0) => eof = true,
                Ok(_) => {
                    let now = Instant::now();
                    shared.update(id, |c| c.last_active = now);
                }
                Err(e) => return Close::Io(e),
            },
            () = shared.budget.wait(BUDGET_PATIENCE), if read && !room => {
                // The budget is full: the request clock stands still, and a stalled
                // connection holding bytes may be closed for this one.
                since += BUDGET_PATIENCE;
                shared.count("buffer_full_waits");
                shared.make_room(id);
            }
            () = tokio::time::sleep_until(idle_at), if awaiting == 0 && !eof && room => {
                return if buf.is_empty() { Close::Idle } else { Close::Stalled };
            }
            () = tokio::time::sleep(STOP_POLL), if !stopping => {}
        }
    }
}

fn decode_failed(e: DecodeError) -> Close {
    match e {
        DecodeError::TooLarge(n) => Close::TooLarge(format!(
            "decompressed entries exceed {n} bytes (max_request_bytes)"
        )),
        DecodeError::Signal(_) => Close::Signal(e.to_string()),
        e => Close::Bad(e.to_string()),
    }
}

/// Decodes one complete request, checks every entry, then hands its records to the pipeline;
/// `owe_ack` runs first when the request asks for an ack.
async fn request(
    shared: &Shared,
    frame: &[u8],
    json: bool,
    peer: &str,
    ack_tx: &mpsc::UnboundedSender<Vec<u8>>,
    owe_ack: impl FnOnce(),
) -> Result<(), Close> {
    let limit = shared.reader.config.max_request_bytes;
    let mut heavy = None;
    let converted;
    let frame = if json {
        heavy = Some(shared.heavy.lock().await);
        converted = forward::json_frame(frame).map_err(decode_failed)?;
        &converted[..]
    } else {
        frame
    };
    let Some(head) = forward::decode_head(frame).map_err(decode_failed)? else {
        return Ok(()); // a heartbeat
    };
    if head.mode == Mode::CompressedPackedForward && heavy.is_none() {
        heavy = Some(shared.heavy.lock().await);
    }
    // A bad entry anywhere refuses the whole request before any of it is shipped (the sender
    // would otherwise re-send the shipped part with the rest, for ever).
    let (mut n, mut markers) = (0usize, 0u64);
    for entry in head.entries(limit) {
        if entry.map_err(decode_failed)?.is_group_marker() {
            markers += 1;
        } else {
            n += 1;
        }
    }
    if markers > 0 {
        shared
            .reader
            .cx
            .stats
            .note(&shared.reader.cx.name, "skipped_group_markers", markers);
    }
    if head.options.chunk.is_some() {
        owe_ack();
    }
    if !submit(shared, &head, n, peer, json, ack_tx).await {
        return Err(Close::Stopping);
    }
    drop(heavy);
    Ok(())
}

/// Turns a request's `n` entries into records and hands them to the pipeline (waiting while
/// it is full). False when the pipeline is gone.
async fn submit(
    shared: &Shared,
    head: &Head<'_>,
    n: usize,
    peer: &str,
    json: bool,
    ack_tx: &mpsc::UnboundedSender<Vec<u8>>,
) -> bool {
    let reader = &shared.reader;
    let reply = head.options.chunk.as_ref().map(|c| {
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
    let pending = RequestAck::new(peer.to_string(), n, reply);
    let now = crate::clock::unix_ns();
    let mut records = Vec::with_capacity(n.min(reader.cx.batch_entries));
    let mut bytes = 0usize;
    for entry in head.entries(reader.config.max_request_bytes) {
        // Every entry was checked by the caller.
        let Ok(entry) = entry else { return true };
        if entry.is_group_marker() {
            continue;
        }
        let mut fields = entry.record;
        if !fields.iter().any(|(k, _)| k == "tag") {
            fields.push(("tag".to_string(), Value::Str(head.tag.clone())));
        }
        let metadata = entry.metadata.or_else(|| head.options.metadata.clone());
        if let Some(meta) = metadata.filter(|m| m.as_slice() != [0x80]) {
            if !fields.iter().any(|(k, _)| k == METADATA_FIELD) {
                fields.push((METADATA_FIELD.to_string(), Value::Msgpack(meta)));
            }
        }
        let time_ns = match entry.time.nanos() {
            0 => now,
            t => t,
        };
        let record = Record::from_fields(&fields, time_ns, Position::Forward(pending.clone()));
        bytes += record.byte_size();
        records.push(record);
        if records.len() >= reader.cx.batch_entries || bytes >= reader.cx.batch_bytes {
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
        .cx
        .stats
        .read(&shared.reader.cx.name, records.len() as u64);
    shared
        .tx
        .send(Batch {
            source: shared.reader.cx.index,
            events: Vec::new(),
            records,
        })
        .await
        .is_ok()
}
