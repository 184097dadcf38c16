//! The configuration file: parse, then validate, then build.
//!
//! `Raw*` structs mirror the TOML exactly (`deny_unknown_fields`, so a typo is an error that
//! names the key and its line instead of a silently ignored setting). [`Config`] is what the
//! rest of perapera uses: templates compiled, sizes and durations parsed, the librdkafka
//! property map merged with our defaults, and every cross-key rule checked.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::record::Template;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from; `None` for the embedded default.
    pub path: Option<PathBuf>,
    /// `[state]`.
    pub state: StateConfig,
    /// `[pipeline]`.
    pub pipeline: PipelineConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// `[[source]]`, at least one, names unique.
    pub sources: Vec<SourceConfig>,
    /// `[sink]`.
    pub sink: SinkConfig,
}

/// `[state]`.
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// Checkpoint and lock file live here.
    pub directory: PathBuf,
    /// How often the checkpoint file is rewritten while the watermark moves (0 = every move).
    pub checkpoint_interval: Duration,
}

/// `[pipeline]`.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// At most this many entries are in flight (read, not yet acknowledged).
    pub max_in_flight: usize,
    /// At most this many bytes of entries are in flight.
    pub max_in_flight_bytes: usize,
    /// On SIGTERM, how long to wait for in-flight acknowledgements.
    pub shutdown_timeout: Duration,
}

/// `[metrics]`: the Prometheus endpoint and the health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Where `/metrics` and `/health` are served; `None` when `address = "off"`.
    pub address: Option<String>,
    /// `/health` answers 503 once entries have been in flight this long without any
    /// acknowledgement (the sink is failing or blocked), or the pipeline loop has not run
    /// for this long.
    pub unhealthy_after: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            address: Some(DEFAULT_METRICS_ADDRESS.to_string()),
            unhealthy_after: Duration::from_secs(300),
        }
    }
}

/// `[metrics] address` by default: loopback only.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:9810";

/// One `[[source]]`.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Unique name; the checkpoint key and the `perapera-source` Kafka header.
    pub name: String,
    /// The source type and its settings.
    pub kind: SourceKind,
}

/// Source types.
#[derive(Debug, Clone)]
pub enum SourceKind {
    /// The systemd journal.
    Journal(JournalConfig),
    /// Log files (including Kubernetes pod logs).
    Files(FilesConfig),
    /// A Fluentd Forward protocol listener (aggregator mode).
    Forward(ForwardSourceConfig),
}

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

/// How the lines of a file are parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineFormat {
    /// Each line is the message.
    Raw,
    /// containerd / CRI-O: `<RFC3339Nano> <stream> <P|F> <text>`, partial lines joined.
    Cri,
    /// Docker json-file: `{"log","stream","time"}`, partial lines joined.
    Docker,
}

/// Where a file seen for the first time starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStart {
    /// Read the whole file.
    Beginning,
    /// Only lines written after the file was first seen (only for files present when the
    /// source first starts without any checkpoint; files created later are read whole).
    End,
}

/// `type = "files"`.
#[derive(Debug, Clone)]
pub struct FilesConfig {
    /// Glob patterns of files to read (absolute paths; `*`, `?`, `[...]`, `**`).
    pub include: Vec<String>,
    /// Glob patterns of files not to read, matched against the same paths.
    pub exclude: Vec<String>,
    /// Line format.
    pub format: LineFormat,
    /// Where files first seen start.
    pub start_at: FileStart,
    /// Lines longer than this are split into marked parts.
    pub max_line_bytes: usize,
    /// How often the globs are re-evaluated (inotify wakes the scan sooner).
    pub rescan_interval: Duration,
    /// How long a line without its final `\n` is held back before it is shipped as is.
    pub partial_line_timeout: Duration,
    /// How long a file that was rotated away or deleted is still watched for late writes
    /// after it reached its end.
    pub rotate_wait: Duration,
    /// At most this many files are open at once.
    pub max_open_files: usize,
    /// Checkpoints of files not seen for this long are forgotten.
    pub forget_after: Duration,
    /// Fields added to every record.
    pub fields: BTreeMap<String, String>,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            include: Vec::new(),
            exclude: Vec::new(),
            format: LineFormat::Raw,
            start_at: FileStart::Beginning,
            max_line_bytes: 256 << 10,
            rescan_interval: Duration::from_secs(5),
            partial_line_timeout: Duration::from_secs(1),
            rotate_wait: Duration::from_secs(5),
            max_open_files: 1024,
            forget_after: Duration::from_secs(3600),
            fields: BTreeMap::new(),
        }
    }
}

/// Where a journal source starts when it has no checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    /// The oldest entry available.
    Head,
    /// Only entries written after perapera started.
    Tail,
}

/// A journalctl-style match term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalMatch {
    /// `FIELD=value`.
    Field {
        /// Field name.
        name: String,
        /// Exact value.
        value: String,
    },
    /// `+`: logical OR between the groups before and after.
    Or,
}

/// `type = "journal"`.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Read this directory (e.g. a host's /var/log/journal) instead of the local journal.
    pub directory: Option<PathBuf>,
    /// Read this journal namespace.
    pub namespace: Option<String>,
    /// Matches applied inside sd-journal.
    pub matches: Vec<JournalMatch>,
    /// Start without a checkpoint.
    pub start_at: StartAt,
}

/// `[sink]`.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    /// JSON lines on standard output.
    Stdout,
    /// Apache Kafka.
    Kafka(KafkaConfig),
    /// A Fluentd Forward protocol aggregator.
    Forward(ForwardSinkConfig),
}

/// What to do with an entry Kafka can never accept (too large, invalid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Oversize {
    /// Cut the largest field until it fits; mark `_PERAPERA_TRUNCATED`.
    Truncate,
    /// Skip it (counted and logged).
    Drop,
    /// Send a stub with the entry's metadata to this topic.
    DeadLetter(String),
}

/// `type = "kafka"`.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Topic template.
    pub topic: Template,
    /// Message key template.
    pub key: Option<Template>,
    /// Oversize/invalid entry policy.
    pub oversize: Oversize,
    /// The complete librdkafka property map (our defaults merged with `[sink.librdkafka]`).
    pub librdkafka: BTreeMap<String, String>,
    /// `message.max.bytes`: entries larger than this are handled by `oversize` before sending.
    pub message_max_bytes: usize,
    /// The Kafka headers put on every message, in this order (none by default).
    pub headers: Vec<KafkaHeader>,
    /// At most this many distinct topics rendered from `topic` are produced to at once
    /// (a topic unused for [`TOPIC_IDLE`] frees its place).
    pub max_topics: usize,
    /// Where entries go whose topic is beyond `max_topics`, unknown to the broker or not
    /// authorized; `None`: they wait in the window until the topic can take them.
    pub topic_fallback: Option<String>,
}

/// `[sink] max_topics` by default.
pub const DEFAULT_MAX_TOPICS: usize = 1000;

/// A rendered topic unused this long no longer counts towards `max_topics`.
pub const TOPIC_IDLE: Duration = Duration::from_secs(600);

/// A Kafka header perapera can put on every message (`[sink] headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaHeader {
    /// `perapera-source`: the source name.
    Source,
    /// `perapera-position`: the journal cursor, or `PATH:OFFSET` of a file line.
    Position,
    /// `content-type: application/msgpack`.
    ContentType,
}

impl KafkaHeader {
    /// Every header, with its name in the configuration.
    pub const ALL: [(&'static str, KafkaHeader); 3] = [
        ("source", KafkaHeader::Source),
        ("position", KafkaHeader::Position),
        ("content-type", KafkaHeader::ContentType),
    ];
}

/// A configuration problem, with enough context to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a wrong type (the message names key and line).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with line and column.
        message: String,
    },
    /// A rule across keys.
    #[error("config file {path}: {key}: {message}")]
    Invalid {
        /// The file, or `<embedded default>`.
        path: String,
        /// The key, e.g. `[sink] brokers`.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    pipeline: RawPipeline,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    source: Vec<RawSource>,
    sink: Option<RawSink>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawState {
    directory: Option<PathBuf>,
    checkpoint_interval: Option<HumanDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    max_in_flight: Option<u32>,
    max_in_flight_bytes: Option<ByteSize>,
    shutdown_timeout: Option<HumanDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    address: Option<String>,
    unhealthy_after: Option<HumanDuration>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
enum SourceType {
    Journal,
    Files,
    Forward,
}

/// `start_at`: `head`/`tail` for the journal, `beginning`/`end` for files.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
enum RawStartAt {
    Head,
    Tail,
    Beginning,
    End,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    #[serde(rename = "type")]
    kind: SourceType,
    name: Option<String>,
    directory: Option<PathBuf>,
    namespace: Option<String>,
    #[serde(default)]
    matches: Option<Vec<RawMatch>>,
    start_at: Option<RawStartAt>,
    include: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    format: Option<LineFormat>,
    max_line_bytes: Option<ByteSize>,
    rescan_interval: Option<HumanDuration>,
    partial_line_timeout: Option<HumanDuration>,
    rotate_wait: Option<HumanDuration>,
    max_open_files: Option<u32>,
    forget_after: Option<HumanDuration>,
    fields: Option<BTreeMap<String, String>>,
    listen: Option<String>,
    tls: Option<RawTls>,
    shared_key: Option<String>,
    self_hostname: Option<String>,
    users: Option<Vec<RawUser>>,
    max_request_bytes: Option<ByteSize>,
    max_connections: Option<u32>,
    idle_timeout: Option<HumanDuration>,
    max_buffer_bytes: Option<ByteSize>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    ca: Option<PathBuf>,
    server_name: Option<String>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawUser {
    username: String,
    password: String,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
enum SinkType {
    Kafka,
    Stdout,
    Forward,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    #[serde(rename = "type")]
    kind: SinkType,
    brokers: Option<Vec<String>>,
    topic: Option<Template>,
    key: Option<Template>,
    oversize: Option<RawOversize>,
    dead_letter_topic: Option<String>,
    max_topics: Option<u32>,
    topic_fallback: Option<String>,
    headers: Option<Vec<String>>,
    librdkafka: Option<BTreeMap<String, toml::Value>>,
    servers: Option<Vec<String>>,
    tag: Option<Template>,
    tls: Option<RawTls>,
    shared_key: Option<String>,
    self_hostname: Option<String>,
    username: Option<String>,
    password: Option<String>,
    compress: Option<String>,
    ack_timeout: Option<HumanDuration>,
    connect_timeout: Option<HumanDuration>,
    max_chunk_entries: Option<u32>,
    max_chunk_bytes: Option<ByteSize>,
    max_pending_chunks: Option<u32>,
}

/// A duration written as `"1s"`, `"250ms"`, `"2m"`, `"1h"`.
#[derive(Debug, Clone, Copy)]
struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(de::Error::custom)
    }
}

/// Parses `"250ms"`, `"1s"`, `"1.5s"`, `"2m"`, `"1h"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        format!("invalid duration {s:?}: expected e.g. \"500ms\", \"1s\", \"2m\", \"1h\"")
    })?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unit must be one of ms, s, m, h (e.g. \"25s\")"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// A byte size written as an integer or `"64MiB"`, `"512KiB"`, `"1GiB"`, `"10MB"`.
#[derive(Debug, Clone, Copy)]
struct ByteSize(u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte size such as 67108864 or \"64MiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a byte size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_bytes(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid byte size {s:?}: expected e.g. \"64MiB\""))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => {
            return Err(format!(
                "invalid byte size {s:?}: unit must be one of B, KiB, MiB, GiB, KB, MB, GB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("byte size {s:?} is too large"))
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Template::parse(&s).map_err(de::Error::custom)
    }
}

struct RawMatch(JournalMatch);

impl<'de> Deserialize<'de> for RawMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "+" {
            return Ok(RawMatch(JournalMatch::Or));
        }
        let bad = || {
            de::Error::custom(format!(
                "invalid match {s:?}: expected FIELD=value (FIELD in A-Z, 0-9, _) or \"+\""
            ))
        };
        let (name, value) = s.split_once('=').ok_or_else(bad)?;
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid_name {
            return Err(bad());
        }
        Ok(RawMatch(JournalMatch::Field {
            name: name.to_string(),
            value: value.to_string(),
        }))
    }
}

enum RawOversize {
    Truncate,
    Drop,
    DeadLetter(Option<String>),
}

impl<'de> Deserialize<'de> for RawOversize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const HELP: &str =
            "\"truncate\", \"drop\", \"dead_letter\" (with dead_letter_topic) or { dead_letter = \"TOPIC\" }";
        impl<'de> Visitor<'de> for V {
            type Value = RawOversize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(HELP)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawOversize, E> {
                match v {
                    "truncate" => Ok(RawOversize::Truncate),
                    "drop" => Ok(RawOversize::Drop),
                    "dead_letter" => Ok(RawOversize::DeadLetter(None)),
                    _ => Err(E::custom(format!(
                        "invalid oversize policy {v:?}: expected {HELP}"
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawOversize, A::Error> {
                let mut topic = None;
                while let Some(k) = map.next_key::<String>()? {
                    if k != "dead_letter" {
                        return Err(de::Error::custom(format!(
                            "unknown key {k:?} in oversize: expected {HELP}"
                        )));
                    }
                    topic = Some(map.next_value::<String>()?);
                }
                match topic {
                    Some(t) => Ok(RawOversize::DeadLetter(Some(t))),
                    None => Err(de::Error::custom(format!(
                        "empty oversize table: expected {HELP}"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The default state directory: `$STATE_DIRECTORY` (systemd), `/var/lib/perapera` as root,
/// else `$XDG_STATE_HOME/perapera` (or `~/.local/state/perapera`).
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
        // systemd may pass several, colon-separated; the first is ours.
        let dir = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        if !dir.is_empty() {
            return PathBuf::from(dir);
        }
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/perapera");
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(x).join("perapera");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/state/perapera")
}

impl Config {
    /// The embedded default: the local journal, from its head, to stdout.
    pub fn embedded_default() -> Config {
        Config {
            path: None,
            state: StateConfig {
                directory: default_state_dir(),
                checkpoint_interval: Duration::from_secs(1),
            },
            pipeline: PipelineConfig::default(),
            metrics: MetricsConfig::default(),
            sources: vec![SourceConfig {
                name: "journal".into(),
                kind: SourceKind::Journal(JournalConfig {
                    directory: None,
                    namespace: None,
                    matches: Vec::new(),
                    start_at: StartAt::Head,
                }),
            }],
            sink: SinkConfig::Stdout,
        }
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            let bytes = e.as_bytes();
            let line = 1 + bytes[..at].iter().filter(|b| **b == b'\n').count();
            ConfigError::Parse {
                path: path.to_path_buf(),
                message: format!(
                    "not UTF-8 text: invalid byte 0x{:02x} at line {line} (byte offset {at}); \
                     a config file is UTF-8 TOML",
                    bytes.get(at).copied().unwrap_or(0)
                ),
            }
        })?;
        Config::parse(&text, path)
    }

    /// Validates config text; `path` is used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.display().to_string(),
            key: key.to_string(),
            message,
        };
        let defaults = PipelineConfig::default();
        let pipeline = PipelineConfig {
            max_in_flight: count(
                raw.pipeline.max_in_flight,
                "[pipeline] max_in_flight",
                defaults.max_in_flight,
                &invalid,
            )?,
            max_in_flight_bytes: bytes(
                raw.pipeline.max_in_flight_bytes,
                "[pipeline] max_in_flight_bytes",
                (defaults.max_in_flight_bytes, "64MiB"),
                false,
                &invalid,
            )?,
            shutdown_timeout: raw
                .pipeline
                .shutdown_timeout
                .map_or(defaults.shutdown_timeout, |d| d.0),
        };
        let metrics = metrics_config(raw.metrics, &invalid)?;
        let state = StateConfig {
            directory: raw.state.directory.unwrap_or_else(default_state_dir),
            checkpoint_interval: raw
                .state
                .checkpoint_interval
                .map_or(Duration::from_secs(1), |d| d.0),
        };
        if raw.source.is_empty() {
            return Err(invalid(
                "[[source]]",
                "no source configured: add at least one [[source]] with type = \"journal\", \
                 \"files\" or \"forward\""
                    .into(),
            ));
        }
        let mut sources: Vec<SourceConfig> = Vec::new();
        for (i, s) in raw.source.into_iter().enumerate() {
            let default_name = match s.kind {
                SourceType::Journal => "journal",
                SourceType::Files => "files",
                SourceType::Forward => "forward",
            };
            let name = s.name.clone().unwrap_or_else(|| default_name.to_string());
            let key = format!("[[source]] #{} name", i + 1);
            if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
                return Err(invalid(
                    &key,
                    format!("{name:?} is not a usable name: 1-200 printable characters"),
                ));
            }
            if sources.iter().any(|o| o.name == name) {
                return Err(invalid(
                    &key,
                    format!(
                        "the name {name:?} is used by two sources; names must be unique (they \
                         key the checkpoint), so set `name` on each"
                    ),
                ));
            }
            let here = format!("[[source]] {name:?}");
            let kind = match s.kind {
                SourceType::Journal => journal_source(s, &here, &invalid)?,
                SourceType::Files => files_source(s, &here, &invalid)?,
                SourceType::Forward => forward_source(s, &here, &invalid)?,
            };
            sources.push(SourceConfig { name, kind });
        }
        let Some(sink) = raw.sink else {
            return Err(invalid(
                "[sink]",
                "no sink configured: add [sink] with type = \"kafka\", \"forward\" or \"stdout\""
                    .into(),
            ));
        };
        sink_keys(&sink, &invalid)?;
        let sink = match sink.kind {
            SinkType::Stdout => SinkConfig::Stdout,
            SinkType::Kafka => SinkConfig::Kafka(kafka_config(sink, &invalid)?),
            SinkType::Forward => SinkConfig::Forward(forward_sink(sink, &invalid)?),
        };
        Ok(Config {
            path: Some(path.to_path_buf()),
            state,
            pipeline,
            metrics,
            sources,
            sink,
        })
    }
}

fn metrics_config(raw: RawMetrics, invalid: Invalid) -> Result<MetricsConfig, ConfigError> {
    let defaults = MetricsConfig::default();
    let address = match raw.address {
        None => defaults.address,
        Some(a) if a == "off" => None,
        Some(a) => {
            if a.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid(
                    "[metrics] address",
                    format!(
                        "{a:?} is not an IP address and port such as \"127.0.0.1:9810\" or \
                         \"0.0.0.0:9810\" (or \"off\" to serve no metrics)"
                    ),
                ));
            }
            Some(a)
        }
    };
    let unhealthy_after = raw
        .unhealthy_after
        .map_or(defaults.unhealthy_after, |d| d.0);
    if unhealthy_after < Duration::from_secs(1) {
        return Err(invalid(
            "[metrics] unhealthy_after",
            "must be at least 1s (default \"5m\")".into(),
        ));
    }
    Ok(MetricsConfig {
        address,
        unhealthy_after,
    })
}

type Invalid<'a> = &'a dyn Fn(&str, String) -> ConfigError;

/// A count that must be at least 1.
fn count(
    value: Option<u32>,
    key: &str,
    default: usize,
    invalid: Invalid,
) -> Result<usize, ConfigError> {
    match value {
        Some(0) => Err(invalid(
            key,
            format!("must be at least 1 (default {default})"),
        )),
        Some(n) => Ok(n as usize),
        None => Ok(default),
    }
}

/// A size of at least 1 KiB (and at most 1 GiB when `bounded`); `default` is the value and
/// how the documentation writes it.
fn bytes(
    value: Option<ByteSize>,
    key: &str,
    default: (usize, &str),
    bounded: bool,
    invalid: Invalid,
) -> Result<usize, ConfigError> {
    let max = if bounded { 1 << 30 } else { u64::MAX };
    match value {
        Some(ByteSize(n)) if !(1024..=max).contains(&n) => Err(invalid(
            key,
            if bounded {
                format!("must be between 1KiB and 1GiB (default \"{}\")", default.1)
            } else {
                format!("must be at least 1KiB (default \"{}\")", default.1)
            },
        )),
        Some(ByteSize(n)) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        None => Ok(default.0),
    }
}

/// Rejects a key set for a source type it does not apply to, naming it.
fn source_keys(s: &RawSource, here: &str, invalid: Invalid) -> Result<(), ConfigError> {
    use SourceType::{Files, Forward, Journal};
    let keys: &[(&str, bool, &[SourceType])] = &[
        ("directory", s.directory.is_some(), &[Journal]),
        ("namespace", s.namespace.is_some(), &[Journal]),
        ("matches", s.matches.is_some(), &[Journal]),
        ("start_at", s.start_at.is_some(), &[Journal, Files]),
        ("include", s.include.is_some(), &[Files]),
        ("exclude", s.exclude.is_some(), &[Files]),
        ("format", s.format.is_some(), &[Files]),
        ("max_line_bytes", s.max_line_bytes.is_some(), &[Files]),
        ("rescan_interval", s.rescan_interval.is_some(), &[Files]),
        (
            "partial_line_timeout",
            s.partial_line_timeout.is_some(),
            &[Files],
        ),
        ("rotate_wait", s.rotate_wait.is_some(), &[Files]),
        ("max_open_files", s.max_open_files.is_some(), &[Files]),
        ("forget_after", s.forget_after.is_some(), &[Files]),
        ("fields", s.fields.is_some(), &[Files]),
        ("listen", s.listen.is_some(), &[Forward]),
        ("tls", s.tls.is_some(), &[Forward]),
        ("shared_key", s.shared_key.is_some(), &[Forward]),
        ("self_hostname", s.self_hostname.is_some(), &[Forward]),
        ("users", s.users.is_some(), &[Forward]),
        (
            "max_request_bytes",
            s.max_request_bytes.is_some(),
            &[Forward],
        ),
        ("max_connections", s.max_connections.is_some(), &[Forward]),
        ("idle_timeout", s.idle_timeout.is_some(), &[Forward]),
        ("max_buffer_bytes", s.max_buffer_bytes.is_some(), &[Forward]),
    ];
    match keys
        .iter()
        .find(|(_, set, owners)| *set && !owners.contains(&s.kind))
    {
        Some((k, _, owners)) => Err(invalid(
            &format!("{here} {k}"),
            format!(
                "does not apply to type = \"{}\" (it is a key of type = {})",
                format!("{:?}", s.kind).to_lowercase(),
                owners
                    .iter()
                    .map(|o| format!("\"{}\"", format!("{o:?}").to_lowercase()))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        )),
        None => Ok(()),
    }
}

/// Rejects a sink key set for a sink type it does not apply to, naming it.
fn sink_keys(s: &RawSink, invalid: Invalid) -> Result<(), ConfigError> {
    use SinkType::{Forward, Kafka};
    let keys: &[(&str, bool, &[SinkType])] = &[
        ("brokers", s.brokers.is_some(), &[Kafka]),
        ("topic", s.topic.is_some(), &[Kafka]),
        ("key", s.key.is_some(), &[Kafka]),
        ("oversize", s.oversize.is_some(), &[Kafka]),
        ("dead_letter_topic", s.dead_letter_topic.is_some(), &[Kafka]),
        ("max_topics", s.max_topics.is_some(), &[Kafka]),
        ("topic_fallback", s.topic_fallback.is_some(), &[Kafka]),
        ("headers", s.headers.is_some(), &[Kafka]),
        ("librdkafka", s.librdkafka.is_some(), &[Kafka]),
        ("servers", s.servers.is_some(), &[Forward]),
        ("tag", s.tag.is_some(), &[Forward]),
        ("tls", s.tls.is_some(), &[Forward]),
        ("shared_key", s.shared_key.is_some(), &[Forward]),
        ("self_hostname", s.self_hostname.is_some(), &[Forward]),
        ("username", s.username.is_some(), &[Forward]),
        ("password", s.password.is_some(), &[Forward]),
        ("compress", s.compress.is_some(), &[Forward]),
        ("ack_timeout", s.ack_timeout.is_some(), &[Forward]),
        ("connect_timeout", s.connect_timeout.is_some(), &[Forward]),
        (
            "max_chunk_entries",
            s.max_chunk_entries.is_some(),
            &[Forward],
        ),
        ("max_chunk_bytes", s.max_chunk_bytes.is_some(), &[Forward]),
        (
            "max_pending_chunks",
            s.max_pending_chunks.is_some(),
            &[Forward],
        ),
    ];
    match keys
        .iter()
        .find(|(_, set, owners)| *set && !owners.contains(&s.kind))
    {
        Some((k, _, owners)) => Err(invalid(
            &format!("[sink] {k}"),
            match s.kind {
                SinkType::Stdout => "the stdout sink takes no options".to_string(),
                _ => format!(
                    "only applies to type = \"{}\"",
                    format!("{:?}", owners[0]).to_lowercase()
                ),
            },
        )),
        None => Ok(()),
    }
}

fn shared_key(
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

fn forward_source(s: RawSource, here: &str, invalid: Invalid) -> Result<SourceKind, ConfigError> {
    source_keys(&s, here, invalid)?;
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

fn forward_sink(sink: RawSink, invalid: Invalid) -> Result<ForwardSinkConfig, ConfigError> {
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
    let tag = match sink.tag {
        Some(t) => t,
        None => Template::parse("perapera").map_err(|e| invalid("[sink] tag", e.to_string()))?,
    };
    Ok(ForwardSinkConfig {
        servers,
        tag,
        tls,
        shared_key,
        user,
        gzip,
        ack_timeout: sink.ack_timeout.map_or(Duration::from_secs(30), |d| {
            d.0.max(Duration::from_millis(100))
        }),
        connect_timeout: sink.connect_timeout.map_or(Duration::from_secs(10), |d| {
            d.0.max(Duration::from_millis(100))
        }),
        max_chunk_entries: count(
            sink.max_chunk_entries,
            "[sink] max_chunk_entries",
            1000,
            invalid,
        )?,
        max_chunk_bytes: bytes(
            sink.max_chunk_bytes,
            "[sink] max_chunk_bytes",
            (1 << 20, "1MiB"),
            false,
            invalid,
        )?,
        max_pending_chunks: count(
            sink.max_pending_chunks,
            "[sink] max_pending_chunks",
            8,
            invalid,
        )?,
    })
}

fn journal_source(s: RawSource, here: &str, invalid: Invalid) -> Result<SourceKind, ConfigError> {
    source_keys(&s, here, invalid)?;
    if s.directory.is_some() && s.namespace.is_some() {
        return Err(invalid(
            here,
            "set either `directory` or `namespace`, not both".into(),
        ));
    }
    let start_at = match s.start_at {
        None | Some(RawStartAt::Head) => StartAt::Head,
        Some(RawStartAt::Tail) => StartAt::Tail,
        Some(other) => {
            return Err(invalid(
                &format!("{here} start_at"),
                format!(
                    "{other:?} is for files sources; a journal source takes \"head\" or \"tail\""
                ),
            ))
        }
    };
    Ok(SourceKind::Journal(JournalConfig {
        directory: s.directory,
        namespace: s.namespace,
        matches: s
            .matches
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.0)
            .collect(),
        start_at,
    }))
}

fn files_source(s: RawSource, here: &str, invalid: Invalid) -> Result<SourceKind, ConfigError> {
    source_keys(&s, here, invalid)?;
    let d = FilesConfig::default();
    let include = s.include.unwrap_or_default();
    if include.is_empty() {
        return Err(invalid(
            &format!("{here} include"),
            "a files source needs at least one glob, e.g. include = [\"/var/log/app/*.log\"]"
                .into(),
        ));
    }
    let exclude = s.exclude.unwrap_or_default();
    for (key, pattern) in include
        .iter()
        .map(|p| ("include", p))
        .chain(exclude.iter().map(|p| ("exclude", p)))
    {
        if !pattern.starts_with('/') {
            return Err(invalid(
                &format!("{here} {key}"),
                format!("{pattern:?} is not an absolute path; write the whole path, e.g. \"/var/log/*.log\""),
            ));
        }
        if let Err(e) = glob::Pattern::new(pattern) {
            return Err(invalid(
                &format!("{here} {key}"),
                format!("{pattern:?} is not a valid glob: {e}"),
            ));
        }
    }
    let start_at = match s.start_at {
        None | Some(RawStartAt::Beginning) => FileStart::Beginning,
        Some(RawStartAt::End) => FileStart::End,
        Some(other) => {
            let word = if other == RawStartAt::Head {
                "head"
            } else {
                "tail"
            };
            return Err(invalid(
                &format!("{here} start_at"),
                format!(
                    "\"{word}\" is for journal sources; a files source takes \"beginning\" or \"end\""
                ),
            ));
        }
    };
    let max_line_bytes = bytes(
        s.max_line_bytes,
        &format!("{here} max_line_bytes"),
        (d.max_line_bytes, "256KiB"),
        true,
        invalid,
    )?;
    let max_open_files = count(
        s.max_open_files,
        &format!("{here} max_open_files"),
        d.max_open_files,
        invalid,
    )?;
    Ok(SourceKind::Files(FilesConfig {
        include,
        exclude,
        format: s.format.unwrap_or(d.format),
        start_at,
        max_line_bytes,
        rescan_interval: s
            .rescan_interval
            .map_or(d.rescan_interval, |x| x.0.max(Duration::from_millis(10))),
        partial_line_timeout: s
            .partial_line_timeout
            .map_or(d.partial_line_timeout, |x| x.0),
        rotate_wait: s.rotate_wait.map_or(d.rotate_wait, |x| x.0),
        max_open_files,
        forget_after: s.forget_after.map_or(d.forget_after, |x| x.0),
        fields: s.fields.unwrap_or_default(),
    }))
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            max_in_flight: 10_000,
            max_in_flight_bytes: 64 << 20,
            shutdown_timeout: Duration::from_secs(25),
        }
    }
}

/// Our librdkafka defaults: durable (`acks=all`, idempotent), compressed cheaply for the host
/// (lz4: zstd measured 1.3-2 CPU-s more per 500 000 journal entries, benches/), low latency.
const KAFKA_DEFAULTS: &[(&str, &str)] = &[
    ("acks", "all"),
    ("enable.idempotence", "true"),
    ("compression.type", "lz4"),
    ("linger.ms", "5"),
    ("message.max.bytes", "1000000"),
    ("client.id", "perapera"),
];

/// librdkafka property names that are aliases of each other.
const ALIASES: &[(&str, &str)] = &[
    ("bootstrap.servers", "metadata.broker.list"),
    ("acks", "request.required.acks"),
    ("compression.type", "compression.codec"),
    ("linger.ms", "queue.buffering.max.ms"),
    ("message.timeout.ms", "delivery.timeout.ms"),
];

fn canonical(key: &str) -> &str {
    ALIASES
        .iter()
        .find(|(_, alias)| *alias == key)
        .map_or(key, |(canon, _)| canon)
}

fn kafka_config(
    sink: RawSink,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<KafkaConfig, ConfigError> {
    let topic = sink.topic.ok_or_else(|| {
        invalid(
            "[sink] topic",
            "required for type = \"kafka\", e.g. topic = \"logs.{_SYSTEMD_UNIT:-unknown}\"".into(),
        )
    })?;
    let mut props: BTreeMap<String, String> = KAFKA_DEFAULTS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut user: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (key, value) in sink.librdkafka.unwrap_or_default() {
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(invalid(
                    &format!("[sink.librdkafka] {key:?}"),
                    format!(
                        "librdkafka properties are strings, numbers or booleans, not a {}",
                        other.type_str()
                    ),
                ))
            }
        };
        let canon = canonical(&key).to_string();
        if let Some((first, _)) = user.get(&canon) {
            return Err(invalid(
                &format!("[sink.librdkafka] {key:?}"),
                format!("is an alias of {first:?}, which is also set; set it once"),
            ));
        }
        user.insert(canon, (key, text));
    }
    let brokers = sink.brokers.unwrap_or_default();
    let mock = user.contains_key("test.mock.num.brokers");
    match (brokers.is_empty(), user.get("bootstrap.servers")) {
        (false, Some((k, _))) => {
            return Err(invalid(
                &format!("[sink.librdkafka] {k:?}"),
                "conflicts with [sink] brokers: give the broker list in one place".into(),
            ))
        }
        (true, None) if !mock => {
            return Err(invalid(
                "[sink] brokers",
                "required for type = \"kafka\", e.g. brokers = [\"kafka1:9092\", \"kafka2:9092\"]"
                    .into(),
            ))
        }
        (false, None) => {
            props.insert("bootstrap.servers".into(), brokers.join(","));
        }
        _ => {}
    }
    if let Some((k, v)) = user.get("delivery.report.only.error") {
        if v == "true" {
            return Err(invalid(
                &format!("[sink.librdkafka] {k:?}"),
                "perapera needs every delivery report: success is what moves the checkpoint".into(),
            ));
        }
    }
    for (canon, (key, value)) in user {
        props.remove(&canon);
        props.insert(key, value);
    }
    let max_key = props
        .keys()
        .find(|k| k.as_str() == "message.max.bytes")
        .cloned()
        .unwrap_or_default();
    let message_max_bytes = props
        .get(&max_key)
        .and_then(|v| v.parse::<usize>().ok())
        .ok_or_else(|| {
            invalid(
                "[sink.librdkafka] \"message.max.bytes\"",
                "must be an integer number of bytes".into(),
            )
        })?;
    let oversize = match (sink.oversize, sink.dead_letter_topic) {
        (None | Some(RawOversize::Truncate), None) => Oversize::Truncate,
        (Some(RawOversize::Drop), None) => Oversize::Drop,
        (Some(RawOversize::DeadLetter(Some(t))), None)
        | (Some(RawOversize::DeadLetter(None)), Some(t)) => Oversize::DeadLetter(t),
        (Some(RawOversize::DeadLetter(None)), None) => {
            return Err(invalid(
                "[sink] oversize",
                "\"dead_letter\" needs dead_letter_topic = \"TOPIC\"".into(),
            ))
        }
        (_, Some(_)) => {
            return Err(invalid(
                "[sink] dead_letter_topic",
                "only applies with oversize = \"dead_letter\"".into(),
            ))
        }
    };
    let topic_name = |key: &str, t: &str| {
        let mut clean = t.to_string();
        crate::record::sanitize_topic(&mut clean);
        if clean == t {
            Ok(())
        } else {
            Err(invalid(
                key,
                format!("{t:?} is not a valid Kafka topic name (allowed: A-Z a-z 0-9 . _ -)"),
            ))
        }
    };
    if let Oversize::DeadLetter(t) = &oversize {
        topic_name("[sink] dead_letter_topic", t)?;
    }
    if let Some(t) = &sink.topic_fallback {
        topic_name("[sink] topic_fallback", t)?;
    }
    let max_topics = match sink.max_topics {
        Some(n @ 1..=100_000) => n as usize,
        Some(_) => {
            return Err(invalid(
                "[sink] max_topics",
                format!("must be between 1 and 100000 (default {DEFAULT_MAX_TOPICS})"),
            ))
        }
        None => DEFAULT_MAX_TOPICS,
    };
    let mut headers = Vec::new();
    for name in sink.headers.unwrap_or_default() {
        let Some((_, h)) = KafkaHeader::ALL.iter().find(|(n, _)| *n == name) else {
            return Err(invalid(
                "[sink] headers",
                format!(
                    "unknown header {name:?}: expected any of \"source\", \"position\", \"content-type\""
                ),
            ));
        };
        if headers.contains(h) {
            return Err(invalid(
                "[sink] headers",
                format!("{name:?} is listed twice"),
            ));
        }
        headers.push(*h);
    }
    Ok(KafkaConfig {
        topic,
        key: sink.key,
        oversize,
        librdkafka: props,
        message_max_bytes,
        headers,
        max_topics,
        topic_fallback: sink.topic_fallback,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/perapera/perapera.toml"))
    }

    const GOOD: &str = r#"
[state]
directory = "/tmp/x"
checkpoint_interval = "250ms"
[pipeline]
max_in_flight = 500
max_in_flight_bytes = "8MiB"
shutdown_timeout = "5s"
[[source]]
type = "journal"
directory = "/var/log/journal"
matches = ["_SYSTEMD_UNIT=nginx.service", "+", "PRIORITY=3"]
start_at = "tail"
[sink]
type = "kafka"
brokers = ["127.0.0.1:9092", "b:9092"]
topic = "logs.{_SYSTEMD_UNIT:-unknown}"
key = "{_HOSTNAME}"
[sink.librdkafka]
"compression.type" = "lz4"
"linger.ms" = 20
"#;

    #[test]
    fn full_config() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.state.checkpoint_interval, Duration::from_millis(250));
        assert_eq!(c.pipeline.max_in_flight, 500);
        assert_eq!(c.pipeline.max_in_flight_bytes, 8 << 20);
        assert_eq!(c.sources[0].name, "journal");
        let SourceKind::Journal(j) = &c.sources[0].kind else {
            panic!("journal source expected")
        };
        assert_eq!(j.matches.len(), 3);
        assert_eq!(j.matches[1], JournalMatch::Or);
        assert_eq!(j.start_at, StartAt::Tail);
        let SinkConfig::Kafka(k) = &c.sink else {
            panic!()
        };
        assert_eq!(k.librdkafka["bootstrap.servers"], "127.0.0.1:9092,b:9092");
        assert_eq!(k.librdkafka["compression.type"], "lz4");
        assert_eq!(k.librdkafka["linger.ms"], "20");
        assert_eq!(k.librdkafka["enable.idempotence"], "true");
        assert_eq!(k.message_max_bytes, 1_000_000);
        assert_eq!(k.oversize, Oversize::Truncate);
        assert!(k.headers.is_empty(), "no headers unless asked for");
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_key() {
        let e = err("[state]\ndirectry = \"/x\"\n");
        assert!(e.contains("directry") && e.contains("line 2"), "{e}");
        assert!(e.contains("/etc/perapera/perapera.toml"), "{e}");
        let e = err("[pipeline]\nmax_in_flight = \"many\"\n");
        assert!(e.contains("max_in_flight") || e.contains("line 2"), "{e}");
        let e = err("[state]\ncheckpoint_interval = \"1 fortnight\"\n");
        assert!(e.contains("unit must be one of"), "{e}");
        let e = err("[[source]]\ntype = \"journald\"\n");
        assert!(e.contains("journal"), "{e}");
        let e =
            err("[[source]]\ntype = \"journal\"\nmatches = [\"nope\"]\n[sink]\ntype=\"stdout\"\n");
        assert!(e.contains("FIELD=value"), "{e}");
        let e = err("[[source]]\ntype = \"journal\"\n[sink]\ntype=\"kafka\"\ntopic=\"t\"\n");
        assert!(e.contains("[sink] brokers"), "{e}");
        let e = err("[[source]]\ntype = \"journal\"\n[sink]\ntype=\"kafka\"\nbrokers=[\"a:1\"]\ntopic=\"t.{x\"\n");
        assert!(e.contains("unclosed"), "{e}");
        let e = err("[[source]]\ntype = \"journal\"\n[[source]]\ntype = \"journal\"\n[sink]\ntype=\"stdout\"\n");
        assert!(e.contains("unique"), "{e}");
        let e = err("[[source]]\ntype = \"journal\"\n[sink]\ntype=\"stdout\"\ntopic=\"x\"\n");
        assert!(e.contains("[sink] topic"), "{e}");
        let e = err("[[source]]\ntype = \"journal\"\n[sink]\ntype=\"kafka\"\nbrokers=[\"a:1\"]\ntopic=\"t\"\n[sink.librdkafka]\n\"bootstrap.servers\"=\"b:1\"\n");
        assert!(e.contains("conflicts with [sink] brokers"), "{e}");
        let e = err("[[source]]\ntype = \"journal\"\n[sink]\ntype=\"kafka\"\nbrokers=[\"a:1\"]\ntopic=\"t\"\n[sink.librdkafka]\n\"linger.ms\"=1\n\"queue.buffering.max.ms\"=2\n");
        assert!(e.contains("alias"), "{e}");
        let e = err("this is = not toml [");
        assert!(e.contains("line 1"), "{e}");
        let e = err("[sink]\ntype=\"stdout\"\n");
        assert!(e.contains("no source"), "{e}");
    }

    /// The Kafka sink configuration of a minimal config plus `extra` lines in `[sink]`.
    fn kafka_with(extra: &str) -> Result<KafkaConfig, String> {
        let base = "[[source]]\ntype = \"journal\"\n[sink]\ntype=\"kafka\"\nbrokers=[\"a:1\"]\ntopic=\"t\"\n";
        match parse(&format!("{base}{extra}")).map(|c| c.sink) {
            Ok(SinkConfig::Kafka(k)) => Ok(k),
            Ok(_) => panic!("a kafka sink was configured"),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn topic_bound_and_fallback_are_checked() {
        let k = |extra: &str| kafka_with(extra).map(|k| (k.max_topics, k.topic_fallback));
        assert_eq!(k(""), Ok((DEFAULT_MAX_TOPICS, None)));
        assert_eq!(
            k("max_topics = 20\ntopic_fallback = \"logs.unrouted\"\n"),
            Ok((20, Some("logs.unrouted".into())))
        );
        for bad in ["max_topics = 0\n", "max_topics = 100001\n"] {
            let e = k(bad).unwrap_err();
            assert!(
                e.contains("[sink] max_topics") && e.contains("100000"),
                "{e}"
            );
        }
        let e = k("topic_fallback = \"logs/other\"\n").unwrap_err();
        assert!(
            e.contains("[sink] topic_fallback") && e.contains("not a valid Kafka topic"),
            "{e}"
        );
        let e =
            err("[[source]]\ntype = \"journal\"\n[sink]\ntype=\"stdout\"\ntopic_fallback=\"x\"\n");
        assert!(
            e.contains("[sink] topic_fallback: the stdout sink takes no options"),
            "{e}"
        );
    }

    #[test]
    fn header_lists() {
        let h = |extra: &str| kafka_with(extra).map(|k| k.headers);
        assert_eq!(h(""), Ok(vec![]));
        assert_eq!(
            h("headers = [\"position\", \"source\", \"content-type\"]\n"),
            Ok(vec![
                KafkaHeader::Position,
                KafkaHeader::Source,
                KafkaHeader::ContentType
            ])
        );
        let e = h("headers = [\"cursor\"]\n").unwrap_err();
        assert!(
            e.contains("[sink] headers") && e.contains("\"cursor\""),
            "{e}"
        );
        assert!(h("headers = [\"source\", \"source\"]\n")
            .unwrap_err()
            .contains("twice"));
        let e = err("[[source]]\ntype = \"journal\"\n[sink]\ntype=\"stdout\"\nheaders=[]\n");
        assert!(e.contains("[sink] headers"), "{e}");
    }

    #[test]
    fn oversize_forms() {
        let k = |extra: &str| kafka_with(extra).map(|k| k.oversize);
        assert_eq!(k("oversize = \"drop\"\n"), Ok(Oversize::Drop));
        assert_eq!(
            k("oversize = { dead_letter = \"dlq\" }\n"),
            Ok(Oversize::DeadLetter("dlq".into()))
        );
        assert_eq!(
            k("oversize = \"dead_letter\"\ndead_letter_topic = \"dlq\"\n"),
            Ok(Oversize::DeadLetter("dlq".into()))
        );
        assert!(k("oversize = \"dead_letter\"\n")
            .unwrap_err()
            .contains("dead_letter_topic"));
        assert!(k("oversize = \"shred\"\n")
            .unwrap_err()
            .contains("truncate"));
    }

    #[test]
    fn metrics_section() {
        let base = "[[source]]\ntype = \"journal\"\n[sink]\ntype = \"stdout\"\n";
        let m = |t: &str| parse(&format!("[metrics]\n{t}{base}")).map(|c| c.metrics);
        assert_eq!(
            parse(base).unwrap().metrics.address.as_deref(),
            Some("127.0.0.1:9810")
        );
        assert_eq!(m("address = \"off\"\n").unwrap().address, None);
        let c = m("address = \"0.0.0.0:1234\"\nunhealthy_after = \"30s\"\n").unwrap();
        assert_eq!(c.address.as_deref(), Some("0.0.0.0:1234"));
        assert_eq!(c.unhealthy_after, Duration::from_secs(30));
        let e = m("address = \"localhost\"\n").unwrap_err().to_string();
        assert!(e.contains("[metrics] address") && e.contains("off"), "{e}");
        let e = m("unhealthy_after = \"10ms\"\n").unwrap_err().to_string();
        assert!(e.contains("[metrics] unhealthy_after"), "{e}");
        let e = m("adress = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("adress"), "{e}");
    }

    #[test]
    fn packaged_config_is_valid_and_documents_every_key() {
        let text = include_str!("../packaging/perapera.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.pipeline.max_in_flight, 10_000);
        assert_eq!(c.metrics, MetricsConfig::default());
        for key in [
            "address",
            "unhealthy_after",
            "directory",
            "checkpoint_interval",
            "max_in_flight",
            "max_in_flight_bytes",
            "shutdown_timeout",
            "name",
            "namespace",
            "matches",
            "start_at",
            "brokers",
            "topic",
            "key",
            "oversize",
            "dead_letter_topic",
            "max_topics",
            "topic_fallback",
            "include",
            "exclude",
            "format",
            "max_line_bytes",
            "rescan_interval",
            "partial_line_timeout",
            "rotate_wait",
            "max_open_files",
            "forget_after",
            "fields",
            "listen",
            "tls",
            "shared_key",
            "self_hostname",
            "users",
            "max_request_bytes",
            "max_connections",
            "idle_timeout",
            "max_buffer_bytes",
            "servers",
            "tag",
            "username",
            "password",
            "compress",
            "ack_timeout",
            "connect_timeout",
            "max_chunk_entries",
            "max_chunk_bytes",
            "max_pending_chunks",
        ] {
            assert!(text.contains(key), "{key} is documented");
        }
    }

    #[test]
    fn packaged_forward_examples_are_valid() {
        let text = include_str!("../packaging/perapera.toml");
        let block = |prefix: &str| -> String {
            text.lines()
                .filter_map(|l| l.strip_prefix(prefix))
                .map(|l| format!("{l}\n"))
                .collect()
        };
        let c = parse(&format!("{}[sink]\ntype = \"stdout\"\n", block("#f>"))).unwrap();
        let SourceKind::Forward(f) = &c.sources[0].kind else {
            panic!("forward source expected")
        };
        assert_eq!(f.listen, "0.0.0.0:24224");
        assert_eq!(f.users.len(), 1);
        assert_eq!(
            f.shared_key.as_ref().unwrap().self_hostname,
            "aggregator.example"
        );
        let c = parse(&format!("[[source]]\ntype = \"journal\"\n{}", block("#s>"))).unwrap();
        let SinkConfig::Forward(s) = &c.sink else {
            panic!("forward sink expected")
        };
        assert_eq!(s.servers.len(), 2);
        assert!(s.gzip);
        assert_eq!(s.user, Some(("shipper".into(), "change-me-too".into())));
    }

    #[test]
    fn forward_keys_are_checked() {
        for (extra, needle) in [
            ("[[source]]\ntype = \"forward\"\nlisten = \"nope\"\n[sink]\ntype = \"stdout\"\n", "listen"),
            ("[[source]]\ntype = \"forward\"\ninclude = [\"/x\"]\n[sink]\ntype = \"stdout\"\n", "is a key of type = \"files\""),
            ("[[source]]\ntype = \"forward\"\nusers = [{ username = \"a\", password = \"b\" }]\n[sink]\ntype = \"stdout\"\n", "set shared_key too"),
            ("[[source]]\ntype = \"forward\"\ntls = { cert = \"/c\" }\n[sink]\ntype = \"stdout\"\n", "needs cert and key"),
            ("[[source]]\ntype = \"journal\"\n[sink]\ntype = \"forward\"\n", "[sink] servers: required"),
            ("[[source]]\ntype = \"journal\"\n[sink]\ntype = \"forward\"\nservers = [\"host\"]\n", "is not HOST:PORT"),
            ("[[source]]\ntype = \"journal\"\n[sink]\ntype = \"forward\"\nservers = [\"h:1\"]\ncompress = \"zstd\"\n", "\"gzip\" or \"none\""),
            ("[[source]]\ntype = \"journal\"\n[sink]\ntype = \"forward\"\nservers = [\"h:1\"]\ntopic = \"t\"\n", "[sink] topic: only applies to type = \"kafka\""),
            ("[[source]]\ntype = \"journal\"\n[sink]\ntype = \"kafka\"\nbrokers = [\"h:1\"]\ntopic = \"t\"\nservers = [\"h:1\"]\n", "[sink] servers: only applies to type = \"forward\""),
            ("[[source]]\ntype = \"journal\"\n[sink]\ntype = \"forward\"\nservers = [\"h:1\"]\ntls = {}\n", "needs ca"),
        ] {
            let e = err(extra);
            assert!(e.contains(needle), "{extra}: {e}");
        }
    }

    #[test]
    fn packaged_files_example_is_valid() {
        let text = include_str!("../packaging/perapera.toml");
        let example: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("#>"))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = parse(&format!("{example}[sink]\ntype = \"stdout\"\n")).unwrap();
        let SourceKind::Files(f) = &c.sources[0].kind else {
            panic!("files source expected")
        };
        assert_eq!(f.include, ["/var/log/pods/*/*/*.log"]);
        assert_eq!(f.fields["cluster"], "prod");
        assert_eq!(f.forget_after, Duration::from_secs(3600));
    }

    #[test]
    fn files_source() {
        let c = parse(
            "[[source]]\ntype = \"files\"\ninclude = [\"/var/log/pods/*/*/*.log\"]\n\
             exclude = [\"/var/log/pods/kube-system_*/**\"]\nformat = \"cri\"\n\
             start_at = \"end\"\nmax_line_bytes = \"64KiB\"\nrescan_interval = \"2s\"\n\
             [source.fields]\ncluster = \"prod\"\n[sink]\ntype = \"stdout\"\n",
        )
        .unwrap();
        assert_eq!(c.sources[0].name, "files");
        let SourceKind::Files(f) = &c.sources[0].kind else {
            panic!("files source expected")
        };
        assert_eq!(f.format, LineFormat::Cri);
        assert_eq!(f.start_at, FileStart::End);
        assert_eq!(f.max_line_bytes, 64 << 10);
        assert_eq!(f.rescan_interval, Duration::from_secs(2));
        assert_eq!(f.fields["cluster"], "prod");
        assert_eq!(f.max_open_files, 1024);
        let files = |extra: &str| {
            err(&format!(
                "[[source]]\ntype = \"files\"\n{extra}\n[sink]\ntype = \"stdout\"\n"
            ))
        };
        assert!(files("").contains("include"), "include is required");
        let e = files("include = [\"var/log/*.log\"]");
        assert!(e.contains("absolute"), "{e}");
        let e = files("include = [\"/var/log/[.log\"]");
        assert!(e.contains("not a valid glob"), "{e}");
        let e = files("include = [\"/a\"]\nstart_at = \"tail\"");
        assert!(e.contains("\"beginning\" or \"end\""), "{e}");
        let e = files("include = [\"/a\"]\nmatches = [\"A=b\"]");
        assert!(e.contains("matches") && e.contains("does not apply"), "{e}");
        let e = files("include = [\"/a\"]\nformat = \"syslog\"");
        assert!(e.contains("raw") && e.contains("cri"), "{e}");
        let e = files("include = [\"/a\"]\nmax_line_bytes = 10");
        assert!(e.contains("max_line_bytes"), "{e}");
        let e =
            err("[[source]]\ntype = \"journal\"\ninclude = [\"/a\"]\n[sink]\ntype = \"stdout\"\n");
        assert!(e.contains("include") && e.contains("does not apply"), "{e}");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("10MB"), Ok(10_000_000));
        assert!(parse_bytes("10 parsecs").is_err());
    }
}
