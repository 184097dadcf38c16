//! The `perapera` command: parse arguments, load the configuration, call into the library,
//! and map failures to exit codes (64 for a bad configuration, 65 for a bad checkpoint).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use perapera::checkpoint::{self, StateDir, StateError};
use perapera::config::Config;
use perapera::ops::check::CheckError;
use perapera::ops::logging::LogFormat;
use perapera::ops::signals::Signals;
use perapera::pipeline::RunError;
use perapera::source::SourceError;

/// A host-local log shipper: the systemd journal, log files or Fluentd Forward senders →
/// MessagePack → Kafka or a Forward aggregator, at least once.
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
/// cheaply (README, Performance).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Memory settings that must be in place before the allocator starts, run as an ELF
/// constructor of priority 101, ahead of mimalloc's own (unprioritised) one:
/// - No transparent huge pages for this process (Debian's default is THP "always"): with
///   them, mimalloc's arenas are backed by 2 MiB pages as soon as one byte is touched. Set
///   from `main`, some pages would already have faulted.
/// - mimalloc returns freed memory to the system after 100 ms instead of 1 s, unless
///   `MIMALLOC_PURGE_DELAY` says otherwise (shorter cost CPU; the figures are in the README,
///   Performance).
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
    perapera::ops::logging::init(cli.log_format);
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
        Command::Check { config } => load(config.as_deref()).and_then(|c| {
            perapera::ops::check::check(&c, &mut std::io::stdout().lock()).map_err(|e| match e {
                CheckError::Config(m) => (EX_CONFIG, m),
                CheckError::Checkpoint(e) => state_failure(&e),
                e @ CheckError::BadCursor(_) => (EX_DATAERR, e.to_string()),
            })
        }),
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
