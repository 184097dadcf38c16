//! The Fluentd Forward source (listener) and sink (client): addresses, TLS, the shared-key
//! handshake and the bounds on what a peer can make us hold.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::{RawSink, RawSource};
use super::value::{bytes, count, Invalid};
use super::{ConfigError, SourceKind};
use crate::record::Template;

/// TLS for the forward listener: our certificate, optionally clients' CA (then clients must
/// present a certificate it signed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA that client certificates must chain to.
    pub client_ca: Option<PathBuf>,
}

/// TLS for the forward sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM CA bundle the server's certificate must chain to (e.g.
    /// /etc/ssl/certs/ca-certificates.crt).
    pub ca: PathBuf,
    /// PEM client certificate chain and key, for servers that require one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Name to verify in the server's certificate (default: the host of the server address).
    pub server_name: Option<String>,
}

/// The shared-key handshake settings (both sides).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedKey {
    /// The shared key.
    pub key: String,
    /// Our hostname in the handshake (must differ from the peer's for fluentd).
    pub self_hostname: String,
}

/// `type = "forward"` source.
#[derive(Debug, Clone)]
pub struct ForwardSourceConfig {
    /// Address to listen on.
    pub listen: String,
    /// TLS, if set.
    pub tls: Option<ServerTls>,
    /// Shared-key handshake, if set.
    pub shared_key: Option<SharedKey>,
    /// Users (name, password) allowed when set; requires `shared_key`.
    pub users: Vec<(String, String)>,
    /// Largest request accepted (as sent, and its decompressed entries).
    pub max_request_bytes: usize,
    /// At most this many connections; at the limit the longest-idle connection without
    /// unacknowledged requests is closed for a new one.
    pub max_connections: usize,
    /// A connection is closed when, with nothing awaiting an ack, no whole request arrived on
    /// it for this long (an idle connection, or a request trickling in byte by byte).
    pub idle_timeout: Duration,
    /// Bytes all connections together may hold before handing them to the pipeline (partial
    /// and complete requests in connection buffers); at the limit connections stop being read.
    pub max_buffer_bytes: usize,
}

impl Default for ForwardSourceConfig {
    fn default() -> Self {
        ForwardSourceConfig {
            listen: "127.0.0.1:24224".into(),
            tls: None,
            shared_key: None,
            users: Vec::new(),
            max_request_bytes: 16 << 20,
            max_connections: 1024,
            idle_timeout: Duration::from_secs(300),
            max_buffer_bytes: 64 << 20,
        }
    }
}

/// `type = "forward"` sink.
#[derive(Debug, Clone)]
pub struct ForwardSinkConfig {
    /// `host:port` of each aggregator, in failover order.
    pub servers: Vec<String>,
    /// Tag template.
    pub tag: Template,
    /// TLS, if set.
    pub tls: Option<ClientTls>,
    /// Shared-key handshake, if set.
    pub shared_key: Option<SharedKey>,
    /// User name and password for servers that require user authentication.
    pub user: Option<(String, String)>,
    /// gzip the entries (CompressedPackedForward).
    pub gzip: bool,
    /// A chunk not acknowledged within this time is sent again (on a new connection).
    pub ack_timeout: Duration,
    /// Connecting (TCP, TLS and handshake) gives up after this.
    pub connect_timeout: Duration,
    /// At most this many entries per chunk.
    pub max_chunk_entries: usize,
    /// At most about this many bytes per chunk (a larger single entry goes alone).
    pub max_chunk_bytes: usize,
    /// Chunks sent and not yet acknowledged on one connection.
    pub max_pending_chunks: usize,
}

impl Default for ForwardSinkConfig {
    /// No server (the one required key), tag `perapera`, no TLS or handshake, no gzip.
    fn default() -> Self {
        ForwardSinkConfig {
            servers: Vec::new(),
            tag: Template::literal("perapera"),
            tls: None,
            shared_key: None,
            user: None,
            gzip: false,
            ack_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_chunk_entries: 1000,
            max_chunk_bytes: 1 << 20,
            max_pending_chunks: 8,
        }
    }
}

pub(super) fn shared_key(
    key: Option<String>,
    self_hostname: Option<String>,
    here: &str,
    invalid: Invalid,
) -> Result<Option<SharedKey>, ConfigError> {
    match (key, self_hostname) {
        (Some(k), _) if k.is_empty() => Err(invalid(
            &format!("{here} shared_key"),
            "must not be empty (remove it to disable the handshake)".into(),
        )),
        (Some(key), host) => Ok(Some(SharedKey {
            key,
            self_hostname: host.unwrap_or_else(crate::host::hostname),
        })),
        (None, Some(_)) => Err(invalid(
            &format!("{here} self_hostname"),
            "only used by the shared-key handshake; set shared_key too".into(),
        )),
        (None, None) => Ok(None),
    }
}

pub(super) fn source(
    s: RawSource,
    here: &str,
    invalid: Invalid,
) -> Result<SourceKind, ConfigError> {
    let d = ForwardSourceConfig::default();
    let listen = s.listen.unwrap_or(d.listen);
    if listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(invalid(
            &format!("{here} listen"),
            format!(
                "{listen:?} is not an address to listen on: write IP:PORT, e.g. \"0.0.0.0:24224\""
            ),
        ));
    }
    let tls = match s.tls {
        None => None,
        Some(t) => {
            if t.ca.is_some() || t.server_name.is_some() {
                return Err(invalid(
                    &format!("{here} tls"),
                    "a listener takes cert, key and optionally client_ca (ca and server_name are sink keys)".into(),
                ));
            }
            match (t.cert, t.key) {
                (Some(cert), Some(key)) => Some(ServerTls {
                    cert,
                    key,
                    client_ca: t.client_ca,
                }),
                _ => {
                    return Err(invalid(
                        &format!("{here} tls"),
                        "needs cert and key, e.g. tls = { cert = \"/etc/perapera/tls.crt\", key = \"/etc/perapera/tls.key\" }".into(),
                    ))
                }
            }
        }
    };
    let shared_key = shared_key(s.shared_key, s.self_hostname, here, invalid)?;
    let users: Vec<(String, String)> = s
        .users
        .unwrap_or_default()
        .into_iter()
        .map(|u| (u.username, u.password))
        .collect();
    if !users.is_empty() && shared_key.is_none() {
        return Err(invalid(
            &format!("{here} users"),
            "user authentication is part of the shared-key handshake: set shared_key too".into(),
        ));
    }
    let max_request_bytes = bytes(
        s.max_request_bytes,
        &format!("{here} max_request_bytes"),
        (d.max_request_bytes, "16MiB"),
        true,
        invalid,
    )?;
    let max_connections = count(
        s.max_connections,
        &format!("{here} max_connections"),
        d.max_connections,
        invalid,
    )?;
    let max_buffer_bytes = bytes(
        s.max_buffer_bytes,
        &format!("{here} max_buffer_bytes"),
        (d.max_buffer_bytes.max(max_request_bytes), "64MiB"),
        true,
        invalid,
    )?;
    if max_buffer_bytes < max_request_bytes {
        return Err(invalid(
            &format!("{here} max_buffer_bytes"),
            format!(
                "{max_buffer_bytes} bytes cannot hold one request of max_request_bytes \
                 ({max_request_bytes} bytes): raise max_buffer_bytes or lower max_request_bytes"
            ),
        ));
    }
    Ok(SourceKind::Forward(ForwardSourceConfig {
        listen,
        tls,
        shared_key,
        users,
        max_request_bytes,
        max_connections,
        idle_timeout: s
            .idle_timeout
            .map_or(d.idle_timeout, |x| x.0.max(Duration::from_millis(100))),
        max_buffer_bytes,
    }))
}

pub(super) fn sink(sink: RawSink, invalid: Invalid) -> Result<ForwardSinkConfig, ConfigError> {
    let servers = sink.servers.unwrap_or_default();
    if servers.is_empty() {
        return Err(invalid(
            "[sink] servers",
            "required for type = \"forward\", e.g. servers = [\"aggregator1:24224\", \"aggregator2:24224\"]".into(),
        ));
    }
    for server in &servers {
        let ok = server.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            return Err(invalid(
                "[sink] servers",
                format!("{server:?} is not HOST:PORT, e.g. \"aggregator1:24224\""),
            ));
        }
    }
    let tls = match sink.tls {
        None => None,
        Some(t) => {
            if t.client_ca.is_some() {
                return Err(invalid(
                    "[sink] tls",
                    "client_ca is a listener key; the sink takes ca, cert, key and server_name"
                        .into(),
                ));
            }
            let Some(ca) = t.ca else {
                return Err(invalid(
                    "[sink] tls",
                    "needs ca (the CA bundle that signed the servers' certificates, e.g. \
                     /etc/ssl/certs/ca-certificates.crt)"
                        .into(),
                ));
            };
            let client_cert = match (t.cert, t.key) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => {
                    return Err(invalid(
                        "[sink] tls",
                        "a client certificate needs both cert and key".into(),
                    ))
                }
            };
            Some(ClientTls {
                ca,
                client_cert,
                server_name: t.server_name,
            })
        }
    };
    let shared_key = shared_key(sink.shared_key, sink.self_hostname, "[sink]", invalid)?;
    let user = match (sink.username, sink.password) {
        (Some(u), Some(p)) if shared_key.is_some() => Some((u, p)),
        (None, None) => None,
        _ => {
            return Err(invalid(
                "[sink] username",
                "username and password go together, with shared_key".into(),
            ))
        }
    };
    let gzip = match sink.compress.as_deref() {
        None | Some("none") => false,
        Some("gzip") => true,
        Some(other) => {
            return Err(invalid(
                "[sink] compress",
                format!("{other:?} is not supported: \"gzip\" or \"none\""),
            ))
        }
    };
    let d = ForwardSinkConfig::default();
    Ok(ForwardSinkConfig {
        servers,
        tag: sink.tag.unwrap_or(d.tag),
        tls,
        shared_key,
        user,
        gzip,
        ack_timeout: sink
            .ack_timeout
            .map_or(d.ack_timeout, |t| t.0.max(Duration::from_millis(100))),
        connect_timeout: sink
            .connect_timeout
            .map_or(d.connect_timeout, |t| t.0.max(Duration::from_millis(100))),
        max_chunk_entries: count(
            sink.max_chunk_entries,
            "[sink] max_chunk_entries",
            d.max_chunk_entries,
            invalid,
        )?,
        max_chunk_bytes: bytes(
            sink.max_chunk_bytes,
            "[sink] max_chunk_bytes",
            (d.max_chunk_bytes, "1MiB"),
            false,
            invalid,
        )?,
        max_pending_chunks: count(
            sink.max_pending_chunks,
            "[sink] max_pending_chunks",
            d.max_pending_chunks,
            invalid,
        )?,
    })
}
