//! The metrics and health endpoint: `/metrics` (Prometheus text format) and `/health`
//! (200 or 503 with a one-line reason), on its own thread (so that a wedged pipeline still
//! answers, with 503) running a single-threaded tokio runtime.
//!
//! It is built to survive floods rather than to be a web server: HTTP/1.1 `GET` and `HEAD`
//! only, one request per connection (`Connection: close`), at most [`MAX_CONNECTIONS`] at
//! once (at the limit the oldest connection that has not sent its request yet is closed for
//! the new one, so idle connections cannot lock a prober out), a request head of at most
//! [`MAX_HEAD`] bytes read within [`READ_TIMEOUT`], and an accept loop that never ends on an
//! error (out of file descriptors: back off and go on). It used `tiny_http`, whose accept thread died when
//! descriptors ran out and which buffered a 200 MB header whole.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use super::metrics::Stats;
use super::ratelimit::RateLimit;
use crate::clock::unix_ms;

/// How often a failed bind is retried.
const REBIND: Duration = Duration::from_secs(30);
/// Connections open at once.
pub const MAX_CONNECTIONS: usize = 32;
/// The longest request head (request line and headers) read.
pub const MAX_HEAD: usize = 8 << 10;
/// How long a client has to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The running endpoint: dropping it stops the thread (which is not joined: the exit must
/// not wait for it, shutdown_timeout is a promise). Nothing wakes the thread but a request,
/// a rebind attempt and this.
pub struct Endpoint {
    _stop: oneshot::Sender<()>,
}

/// Serves `/metrics` and `/health` on `address` until the [`Endpoint`] is dropped. A failure
/// to listen is logged and retried: shipping does not depend on the endpoint.
pub fn spawn(
    address: String,
    stats: Arc<Stats>,
    unhealthy_after: Duration,
) -> std::io::Result<Endpoint> {
    let (stop, stopped) = oneshot::channel();
    crate::runtime::spawn(
        "perapera-http".into(),
        "metrics endpoint (shipping goes on without /metrics and /health)".into(),
        run(address, stats, unhealthy_after, stopped),
    )?;
    Ok(Endpoint { _stop: stop })
}

async fn run(
    address: String,
    stats: Arc<Stats>,
    unhealthy_after: Duration,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut failures = 0u64;
    let listener = loop {
        match tokio::net::TcpListener::bind(address.as_str()).await {
            Ok(l) => break l,
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::error!(address = %address, error = %e, failures,
                        "Cannot serve metrics and health on [metrics] address (in use by \
                         another process?); shipping goes on, retrying every 30s. Set \
                         another address, or \"off\"");
                }
                tokio::select! {
                    _ = &mut stopped => return,
                    () = tokio::time::sleep(REBIND) => {}
                }
            }
        }
    };
    tracing::info!(address = %address, "Serving /metrics and /health");
    // Open connections in accept order, and whether each has sent its request head.
    let mut open: std::collections::VecDeque<(tokio::task::AbortHandle, Arc<AtomicBool>)> =
        std::collections::VecDeque::new();
    let mut limit = RateLimit::new(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    open.retain(|(task, _)| !task.is_finished());
                    if open.len() >= MAX_CONNECTIONS {
                        // Make room: the oldest connection still silent goes.
                        let silent = open.iter().position(|(_, sent)| !sent.load(Ordering::Relaxed));
                        match silent.and_then(|i| open.remove(i)) {
                            Some((task, _)) => task.abort(),
                            None => continue, // all are being answered: the newcomer waits for nothing
                        }
                        if let Some(suppressed) = limit.allow("busy") {
                            tracing::warn!(suppressed, max = MAX_CONNECTIONS,
                                "Metrics endpoint: too many open connections; closed the oldest silent one");
                        }
                    }
                    let stats = stats.clone();
                    let sent = Arc::new(AtomicBool::new(false));
                    let flag = sent.clone();
                    let task = tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            READ_TIMEOUT * 2,
                            answer(stream, &stats, unhealthy_after, &flag),
                        )
                        .await;
                    });
                    open.push_back((task.abort_handle(), sent));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    if let Some(suppressed) = limit.allow("accept") {
                        tracing::warn!(error = %e, suppressed,
                            "Metrics endpoint: accepting a connection failed; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Reads one request head and answers it.
async fn answer(
    mut stream: tokio::net::TcpStream,
    stats: &Stats,
    unhealthy_after: Duration,
    sent: &AtomicBool,
) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let complete = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
                return true;
            }
            if head.len() > MAX_HEAD {
                return false;
            }
        }
    })
    .await;
    sent.store(true, Ordering::Relaxed);
    let (status, body, content_type) = match complete {
        Ok(true) => route(&head, stats, unhealthy_after),
        Ok(false) if head.len() > MAX_HEAD => (
            431,
            format!("request head over {MAX_HEAD} bytes\n"),
            "text/plain; charset=utf-8",
        ),
        _ => return, // closed, or too slow: no answer
    };
    let head_only = head.starts_with(b"HEAD ");
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        response.extend_from_slice(body.as_bytes());
    }
    // A client that went away is its own problem.
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

/// Status, body and content type for a request head.
fn route(head: &[u8], stats: &Stats, unhealthy_after: Duration) -> (u16, String, &'static str) {
    let line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("").split('?').next().unwrap_or("");
    let text = "text/plain; charset=utf-8";
    match (matches!(method, "GET" | "HEAD"), path) {
        (false, _) => (405, "only GET and HEAD\n".to_string(), text),
        (true, "/metrics") => (
            200,
            stats.render(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        (true, "/health") => {
            let h = stats.health(unix_ms(), unhealthy_after);
            (if h.ok { 200 } else { 503 }, h.reason + "\n", text)
        }
        (true, "/") => (
            200,
            "perapera: /metrics (Prometheus), /health (200 or 503)\n".to_string(),
            text,
        ),
        (true, _) => (
            404,
            "not found: try /metrics or /health\n".to_string(),
            text,
        ),
    }
}
