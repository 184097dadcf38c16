//! The configuration file: parse, then validate, then build.
//!
//! `Raw*` structs mirror the TOML exactly (`deny_unknown_fields`, so a typo is an error that
//! names the key and its line instead of a silently ignored setting). [`Config`] is what the
//! rest of perapera uses: templates compiled, sizes and durations parsed, the librdkafka
//! property map merged with our defaults, and every cross-key rule checked.

use std::path::{Path, PathBuf};
use std::time::Duration;

mod files;
mod forward;
mod journal;
mod kafka;
mod raw;
mod transactions;
mod value;

pub use files::{FileStart, FilesConfig, LineFormat};
pub use forward::{ClientTls, ForwardSinkConfig, ForwardSourceConfig, ServerTls, SharedKey};
pub use journal::{JournalConfig, JournalMatch, StartAt};
pub use kafka::{KafkaConfig, KafkaHeader, DEFAULT_MAX_TOPICS, TOPIC_IDLE};
pub use transactions::{ExactlyOnce, DEFAULT_CHECKPOINT_TOPIC, DEFAULT_TRANSACTION_INTERVAL};
pub use value::parse_duration;

use raw::{sink_keys, source_keys, RawConfig, RawMetrics, SinkType, SourceType};
use value::{bytes, count, Invalid};

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

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            directory: default_state_dir(),
            checkpoint_interval: Duration::from_secs(1),
        }
    }
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
            state: StateConfig::default(),
            pipeline: PipelineConfig::default(),
            metrics: MetricsConfig::default(),
            sources: vec![SourceConfig {
                name: "journal".into(),
                kind: SourceKind::Journal(JournalConfig::default()),
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
        let default_state = StateConfig::default();
        let state = StateConfig {
            directory: raw.state.directory.unwrap_or(default_state.directory),
            checkpoint_interval: raw
                .state
                .checkpoint_interval
                .map_or(default_state.checkpoint_interval, |d| d.0),
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
            source_keys(&s, &here, &invalid)?;
            let kind = match s.kind {
                SourceType::Journal => journal::source(s, &here, &invalid)?,
                SourceType::Files => files::source(s, &here, &invalid)?,
                SourceType::Forward => forward::source(s, &here, &invalid)?,
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
            SinkType::Kafka => {
                let mut k = kafka::sink(sink, &invalid)?;
                if let Some(eo) = &mut k.exactly_once {
                    if !eo.transactional_id_configured {
                        eo.transactional_id = transactions::default_id(&state.directory);
                    }
                    k.librdkafka
                        .insert("transactional.id".into(), eo.transactional_id.clone());
                }
                SinkConfig::Kafka(k)
            }
            SinkType::Forward => SinkConfig::Forward(forward::sink(sink, &invalid)?),
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
    fn a_full_config_parses_into_every_setting() {
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
    fn every_error_names_the_key_and_what_to_write() {
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
    fn kafka_headers_are_known_names_listed_once_and_only_for_kafka() {
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
    fn oversize_takes_a_word_or_a_dead_letter_table_and_a_dead_letter_needs_a_topic() {
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
    fn metrics_address_can_be_off_and_a_bad_address_or_tiny_unhealthy_after_is_an_error() {
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
        let text = include_str!("../../packaging/perapera.toml");
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
        let text = include_str!("../../packaging/perapera.toml");
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
    fn forward_keys_are_checked_for_the_source_and_the_sink() {
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
        let text = include_str!("../../packaging/perapera.toml");
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
    fn a_files_source_needs_absolute_valid_globs_and_takes_only_its_own_keys() {
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
}
