//! Logs on stderr: human text on a terminal, syslog-priority prefixes for journald (so that
//! each line becomes an entry with its PRIORITY), or JSON lines. `PERAPERA_LOG` filters.

use std::io::IsTerminal;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
/// How log lines are written.
pub enum LogFormat {
    /// Timestamp, level, message, fields; colours on a terminal.
    Human,
    /// For journald: `<priority>` prefix, no timestamp, no colours.
    Journal,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber; `None` picks by where stderr goes (a terminal: human;
/// journald's `JOURNAL_STREAM`: journal; else human without colours).
pub fn init(format: Option<LogFormat>) {
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
