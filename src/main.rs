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
    /// Log format on stderr. Default: human on a terminal, "journal" when stderr is the
    /// journal (systemd's JOURNAL_STREAM; no timestamps, syslog priority prefixes), else
    /// human without colours.
    #[arg(long, global = true, value_enum, env = "PERAPERA_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Timestamp, level, message, fields; colours on a terminal.
    Human,
    /// For journald: `<priority>` prefix, no timestamp, no colours.
    Journal,
    /// One JSON object per line.
    Json,
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
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (perapera.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    Man {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum CursorAction {
    /// Print each source's checkpoint, the time of its last acknowledged entry and its lag
    /// behind the newest entry.
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
/// The output went away (stdout's reader exited).
const EX_IOERR: u8 = 74;

/// mimalloc for Rust's allocations (librdkafka and libsystemd keep glibc's malloc). Records
/// are allocated on a reader thread and freed on librdkafka's delivery thread; glibc's malloc
/// takes its slow path for every one of them, mimalloc frees them to their page's owner
/// cheaply. `make bench`: journal 6.9 -> 5.3 CPU-s, files 3.1 -> 2.7 CPU-s.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Memory settings that must be in place before the allocator starts, run as an ELF
/// constructor of priority 101, ahead of mimalloc's own (unprioritised) one:
/// - No transparent huge pages for this process (Debian's default is THP "always"): with
///   them, mimalloc's arenas are backed by 2 MiB pages as soon as one byte is touched (idle
///   anonymous RSS 2.9 -> 12 MiB). Set from `main`, some pages had already faulted (6.7 MiB).
/// - mimalloc returns freed memory to the system after 100 ms instead of 1 s, unless
///   `MIMALLOC_PURGE_DELAY` says otherwise (`make bench`, files -> Kafka: anonymous RSS
///   47 -> 41-43 MiB at the same CPU; 20 ms cost about 9 % more CPU).
extern "C" fn before_the_allocator() {
    // SAFETY: PR_SET_THP_DISABLE takes an integer flag and no pointers. setenv runs before
    // any other thread exists, with NUL-terminated strings; it keeps a value already set.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        libc::setenv(c"MIMALLOC_PURGE_DELAY".as_ptr(), c"100".as_ptr(), 0);
    }
}

#[used]
#[link_section = ".init_array.00101"]
static BEFORE_THE_ALLOCATOR: extern "C" fn() = before_the_allocator;

/// mimalloc's "purge what is free now", forced: its delayed purge runs only when it is called
/// again after the delay.
fn release_memory() {
    // SAFETY: mi_collect takes a flag and may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

fn main() -> ExitCode {
    perapera::memory::set_release(release_memory);
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "perapera", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => std::fs::create_dir_all(&dir)
            .and_then(|()| clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &dir))
            .map_err(|e| (1, format!("writing man pages to {}: {e}", dir.display()))),
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

fn init_tracing(format: Option<LogFormat>) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PERAPERA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let tty = std::io::stderr().is_terminal();
    let format = format.unwrap_or(if tty {
        LogFormat::Human
    } else if std::env::var_os("JOURNAL_STREAM").is_some() {
        LogFormat::Journal
    } else {
        LogFormat::Human
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.with_ansi(tty).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
        LogFormat::Journal => builder
            .with_ansi(false)
            .event_format(SyslogPrefix(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_ansi(false),
            ))
            .init(),
    }
}

/// Prefixes each line with its syslog priority (`<3>` error ... `<7>` debug), which journald
/// turns into the entry's PRIORITY (SyslogLevelPrefix=yes, the default).
struct SyslogPrefix<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for SyslogPrefix<F>
where
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
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

fn run(mut config: Config) -> Result<(), Failure> {
    let limit = perapera::ops::fds::raise_limit();
    for note in perapera::ops::fds::fit(&mut config, limit) {
        tracing::warn!("{note}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| (1, format!("cannot start the async runtime: {e}")))?;
    // The handlers are installed before anything starts: a signal that arrives early must not
    // take its default action (SIGHUP's is to terminate).
    let signals = runtime.block_on(async { Signals::install() });
    let outcome = runtime.block_on(perapera::run(config, signals.shutdown()));
    // `run` waited for the readers as long as shutdown_timeout allows: a reader thread still
    // blocked (in a journal call, say) must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
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
        Err(e @ RunError::OutputClosed(_)) => Err((EX_IOERR, e.to_string())),
        Err(e) => Err((1, e.to_string())),
    }
}

/// SIGTERM and SIGINT stop perapera; SIGHUP is logged and ignored (there is no configuration
/// reload: restart to apply a changed configuration).
struct Signals(Option<[tokio::signal::unix::Signal; 3]>);

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => Signals(Some([term, int, hup])),
            _ => {
                tracing::error!("Cannot install signal handlers; stop perapera with SIGKILL");
                Signals(None)
            }
        }
    }

    /// Resolves on SIGTERM or SIGINT.
    async fn shutdown(self) {
        let Some([mut term, mut int, mut hup]) = self.0 else {
            return std::future::pending::<()>().await;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv() => tracing::warn!(
                    "SIGHUP ignored: perapera does not reload its configuration; restart it \
                     (systemctl restart perapera) to apply a changed one"
                ),
            }
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
                    if let SourceKind::Journal(jc) = &s.kind {
                        match perapera::source::journal::check_cursor(&s.name, jc, cursor) {
                            Ok(()) => {}
                            Err(e @ SourceError::BadCursor { .. }) => {
                                return Err((EX_DATAERR, e.to_string()))
                            }
                            Err(e) => {
                                println!("  cannot open the journal to check the cursor: {e}")
                            }
                        }
                    }
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
            println!(
                "  at most {} distinct topics; entries whose topic is unknown, not authorized or beyond that {}",
                k.max_topics,
                k.topic_fallback.as_ref().map_or_else(
                    || "wait in the window (/health turns 503 naming the topic)".to_string(),
                    |t| format!("go to topic_fallback {t:?}")
                )
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
    use perapera::ops::cursor;
    let path = config.state.directory.join(checkpoint::CHECKPOINT_FILE);
    let cp = checkpoint::read_checkpoint(&path).map_err(|e| state_failure(&e))?;
    let reports = cursor::report(config, &cp, perapera::clock::unix_ms());
    if json {
        let doc = serde_json::json!({
            "checkpoint_file": path.display().to_string(),
            "sources": reports,
        });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| (1, e.to_string()))?;
        println!("{text}");
    } else {
        print!("{}", cursor::table(&reports));
    }
    Ok(())
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
