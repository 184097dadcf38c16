//! The `perapera` command: parse arguments, load the configuration, call into the library,
//! and map failures to exit codes (64 for a bad configuration, 65 for a bad checkpoint).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use perapera::checkpoint::{self, SourceCheckpoint, StateDir, StateError};
use perapera::config::{Config, SinkConfig, SourceKind};
use perapera::pipeline::RunError;
use perapera::source::SourceError;

/// A host-local log shipper: systemd journal → MessagePack → Kafka, at least once.
#[derive(Parser)]
#[command(name = "perapera", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ship entries until SIGTERM/SIGINT. Without -c: the local journal to stdout.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long, env = "PERAPERA_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and say what would be read and where it would go.
    Check {
        /// Configuration file (TOML).
        #[arg(short, long, env = "PERAPERA_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Show or reset the saved positions.
    Cursor {
        #[command(subcommand)]
        action: CursorAction,
    },
}

#[derive(Subcommand)]
enum CursorAction {
    /// Print each source's saved position.
    Show {
        /// Configuration file (TOML).
        #[arg(short, long, env = "PERAPERA_CONFIG")]
        config: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Forget a source's position (all sources without SOURCE); it restarts at start_at.
    Reset {
        /// Configuration file (TOML).
        #[arg(short, long, env = "PERAPERA_CONFIG")]
        config: Option<PathBuf>,
        /// The source to reset.
        source: Option<String>,
    },
}

const EX_CONFIG: u8 = 64;
const EX_DATAERR: u8 = 65;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Run { config } => load(config.as_deref()).and_then(run),
        Command::Check { config } => load(config.as_deref()).and_then(|c| check(&c)),
        Command::Cursor { action } => match action {
            CursorAction::Show { config, json } => {
                load(config.as_deref()).and_then(|c| cursor_show(&c, json))
            }
            CursorAction::Reset { config, source } => {
                load(config.as_deref()).and_then(|c| cursor_reset(&c, source.as_deref()))
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("perapera: error: {message}");
            ExitCode::from(code)
        }
    }
}

type Failure = (u8, String);

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PERAPERA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn load(path: Option<&Path>) -> Result<Config, Failure> {
    match path {
        Some(p) => Config::load(p).map_err(|e| (EX_CONFIG, e.to_string())),
        None => Ok(Config::embedded_default()),
    }
}

fn state_failure(e: &StateError) -> Failure {
    let code = match e {
        StateError::Corrupt { .. } => EX_DATAERR,
        _ => 1,
    };
    (code, e.to_string())
}

fn run(config: Config) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| (1, format!("cannot start the async runtime: {e}")))?;
    let outcome = runtime.block_on(perapera::run(config, shutdown_signal()));
    match outcome {
        Ok(summary) => {
            if summary.unacked > 0 {
                tracing::warn!(
                    unacked = summary.unacked,
                    "Stopped with unacknowledged entries; they will be re-sent on the next start"
                );
            }
            Ok(())
        }
        Err(RunError::State(e)) => Err(state_failure(&e)),
        Err(e @ RunError::Source(SourceError::BadCursor { .. })) => {
            Err((EX_DATAERR, e.to_string()))
        }
        Err(e @ RunError::Source(SourceError::Open { .. })) => Err((EX_CONFIG, e.to_string())),
        Err(e) => Err((1, e.to_string())),
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("Cannot install signal handlers; stop perapera with SIGKILL");
            std::future::pending::<()>().await
        }
    }
}

fn describe_source(kind: &SourceKind) -> String {
    match kind {
        SourceKind::Journal(j) => {
            let what = match (&j.directory, &j.namespace) {
                (Some(d), _) => format!("journal directory {}", d.display()),
                (None, Some(ns)) => format!("journal namespace {ns:?}"),
                (None, None) => "the local system journal".to_string(),
            };
            let matches = if j.matches.is_empty() {
                "all entries".to_string()
            } else {
                format!("matches {:?}", j.matches)
            };
            format!(
                "{what}, {matches}, start_at {:?} when there is no checkpoint",
                j.start_at
            )
        }
        SourceKind::Files(f) => format!(
            "files {:?}{}, format {:?}, start_at {:?} for files first seen",
            f.include,
            if f.exclude.is_empty() {
                String::new()
            } else {
                format!(" excluding {:?}", f.exclude)
            },
            f.format,
            f.start_at
        ),
        SourceKind::Forward(f) => format!(
            "forward listener on {}{}{}; acks each request with a chunk once every entry of it is \
             acknowledged by the sink (no checkpoint: the senders keep the data until then)",
            f.listen,
            if f.tls.is_some() { ", TLS" } else { "" },
            if f.shared_key.is_some() {
                ", shared-key handshake"
            } else {
                ""
            },
        ),
    }
}

fn check(config: &Config) -> Result<(), Failure> {
    let origin = config
        .path
        .as_ref()
        .map_or("the embedded default".to_string(), |p| {
            p.display().to_string()
        });
    println!("Configuration {origin} is valid.");
    println!("State directory: {}", config.state.directory.display());
    let saved =
        checkpoint::read_checkpoint(&config.state.directory.join(checkpoint::CHECKPOINT_FILE));
    for s in &config.sources {
        println!("Source {:?}: {}", s.name, describe_source(&s.kind));
        if let SourceKind::Files(f) = &s.kind {
            let matching: usize = f
                .include
                .iter()
                .filter_map(|p| glob::glob(p).ok())
                .map(|paths| paths.filter_map(Result::ok).filter(|p| p.is_file()).count())
                .sum();
            println!("  {matching} files match now");
        }
        if let SourceKind::Journal(perapera::config::JournalConfig {
            directory: Some(d), ..
        }) = &s.kind
        {
            if !d.is_dir() {
                return Err((
                    EX_CONFIG,
                    format!(
                        "source {:?}: directory {} does not exist or is not a directory",
                        s.name,
                        d.display()
                    ),
                ));
            }
        }
        match &saved {
            Ok(cp) => match cp.sources.get(&s.name) {
                Some(SourceCheckpoint::Journal { cursor, .. }) => {
                    println!("  resumes after cursor {cursor}")
                }
                Some(SourceCheckpoint::Files { files }) => {
                    println!(
                        "  resumes {} files at their checkpointed offsets",
                        files.len()
                    )
                }
                None if matches!(s.kind, SourceKind::Forward(_)) => {}
                None => println!("  no checkpoint yet"),
            },
            Err(e) => return Err(state_failure(e)),
        }
    }
    match &config.sink {
        SinkConfig::Stdout => println!("Sink: stdout (one JSON object per line)"),
        SinkConfig::Kafka(k) => {
            println!(
                "Sink: kafka, brokers {}, topic {}, key {}, oversize policy {:?}",
                k.librdkafka
                    .get("bootstrap.servers")
                    .map_or("(mock)", String::as_str),
                k.topic,
                k.key
                    .as_ref()
                    .map_or("none".to_string(), ToString::to_string),
                k.oversize
            );
            for (key, v) in &k.librdkafka {
                println!("  librdkafka {key} = {v}");
            }
        }
        SinkConfig::Forward(f) => println!(
            "Sink: forward to {} (failover in this order), tag {}, ack_timeout {:?}{}{}{}",
            f.servers.join(", "),
            f.tag,
            f.ack_timeout,
            if f.tls.is_some() { ", TLS" } else { "" },
            if f.shared_key.is_some() {
                ", shared-key handshake"
            } else {
                ""
            },
            if f.gzip { ", gzip" } else { "" },
        ),
    }
    Ok(())
}

fn cursor_show(config: &Config, json: bool) -> Result<(), Failure> {
    let path = config.state.directory.join(checkpoint::CHECKPOINT_FILE);
    let cp = checkpoint::read_checkpoint(&path).map_err(|e| state_failure(&e))?;
    if json {
        let text = serde_json::to_string_pretty(&cp).map_err(|e| (1, e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    println!("{:<20} {:<28} POSITION", "SOURCE", "LAST ACKED ENTRY (UTC)");
    for s in &config.sources {
        match cp.sources.get(&s.name) {
            Some(SourceCheckpoint::Journal {
                cursor,
                entry_time_us,
                ..
            }) => {
                println!(
                    "{:<20} {:<28} {cursor}",
                    s.name,
                    format_time(*entry_time_us)
                );
            }
            Some(SourceCheckpoint::Files { files }) => {
                let last = files.iter().map(|f| f.acked_at_ms).max().unwrap_or(0);
                println!(
                    "{:<20} {:<28} {} files",
                    s.name,
                    if last == 0 {
                        "-".to_string()
                    } else {
                        format_time(last * 1000)
                    },
                    files.len()
                );
                for f in files {
                    println!(
                        "    {} offset {} (dev {} inode {})",
                        f.path, f.offset, f.dev, f.ino
                    );
                }
            }
            None => println!("{:<20} {:<28} (none: starts at start_at)", s.name, "-"),
        }
    }
    for (name, _) in cp
        .sources
        .iter()
        .filter(|(n, _)| !config.sources.iter().any(|s| &s.name == *n))
    {
        println!("{name:<20} (not configured; kept)");
    }
    Ok(())
}

fn format_time(us: u64) -> String {
    let secs = (us / 1_000_000) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        us % 1_000_000
    )
}

fn cursor_reset(config: &Config, source: Option<&str>) -> Result<(), Failure> {
    let state = StateDir::lock(&config.state.directory).map_err(|e| state_failure(&e))?;
    match source {
        None => match state.move_aside().map_err(|e| state_failure(&e))? {
            Some(aside) => println!(
                "Reset all sources; the old checkpoint was moved to {}",
                aside.display()
            ),
            None => println!("No checkpoint to reset."),
        },
        Some(name) => {
            let mut cp = state.load().map_err(|e| match e {
                StateError::Corrupt { .. } => (
                    EX_DATAERR,
                    format!("{e}\nA corrupt checkpoint can only be reset whole: run `perapera cursor reset` without a source"),
                ),
                e => state_failure(&e),
            })?;
            if cp.sources.remove(name).is_none() {
                println!("Source {name:?} has no checkpoint; nothing to reset.");
                return Ok(());
            }
            state.store(&cp).map_err(|e| state_failure(&e))?;
            println!("Reset source {name:?}; it starts at its start_at position on the next run.");
        }
    }
    Ok(())
}
