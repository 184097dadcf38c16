//! The metrics and health endpoint: `/metrics` (Prometheus text format) and `/health`
//! (200 or 503 with a one-line reason), served by `tiny_http` on its own thread so that a
//! wedged pipeline still answers (with 503).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::metrics::Stats;
use crate::pipeline::now_ms;

/// How often a failed bind is retried.
const REBIND: Duration = Duration::from_secs(30);

/// Serves `/metrics` and `/health` on `address` until `stop` is set. A failure to listen is
/// logged and retried: shipping does not depend on the endpoint.
pub fn spawn(
    address: String,
    stats: Arc<Stats>,
    unhealthy_after: Duration,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("perapera-http".into())
        .spawn(move || {
            let mut failures = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match tiny_http::Server::http(address.as_str()) {
                    Ok(server) => {
                        tracing::info!(address = %address, "Serving /metrics and /health");
                        serve(&server, &stats, unhealthy_after, &stop);
                        return;
                    }
                    Err(e) => {
                        failures += 1;
                        if failures == 1 || failures.is_power_of_two() {
                            tracing::error!(address = %address, error = %e, failures,
                                "Cannot serve metrics and health on [metrics] address (in use by \
                                 another process?); shipping goes on, retrying every 30s. Set \
                                 another address, or \"off\"");
                        }
                        let until = Instant::now() + REBIND;
                        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    }
                }
            }
        })
}

fn serve(server: &tiny_http::Server, stats: &Stats, unhealthy_after: Duration, stop: &AtomicBool) {
    let text = |s: &str| tiny_http::Header::from_bytes(&b"Content-Type"[..], s.as_bytes());
    while !stop.load(Ordering::Relaxed) {
        let request = match server.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "Metrics endpoint: accepting a request failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let get = matches!(
            request.method(),
            tiny_http::Method::Get | tiny_http::Method::Head
        );
        let path = request.url().split('?').next().unwrap_or("").to_string();
        let (status, body, content_type) = match (get, path.as_str()) {
            (false, _) => (
                405,
                "only GET and HEAD\n".to_string(),
                "text/plain; charset=utf-8",
            ),
            (true, "/metrics") => (
                200,
                stats.render(),
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            (true, "/health") => {
                let h = stats.health(now_ms(), unhealthy_after);
                (
                    if h.ok { 200 } else { 503 },
                    h.reason + "\n",
                    "text/plain; charset=utf-8",
                )
            }
            (true, "/") => (
                200,
                "perapera: /metrics (Prometheus), /health (200 or 503)\n".to_string(),
                "text/plain; charset=utf-8",
            ),
            (true, _) => (
                404,
                "not found: try /metrics or /health\n".to_string(),
                "text/plain; charset=utf-8",
            ),
        };
        let mut response = tiny_http::Response::from_string(body).with_status_code(status);
        if let Ok(h) = text(content_type) {
            response = response.with_header(h);
        }
        // A client that went away is its own problem.
        let _ = request.respond(response);
    }
}
