//! tracing-subscriber set-up: text or JSON on stderr, `RUST_LOG`-style filters, `-v`/`-q`,
//! and no timestamps or colours under systemd (journald adds its own).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

use crate::cli::LogFormat;

/// Sets up logging; `live` asks for live progress lines ([`crate::progress`]), drawn only
/// on a terminal, with text logs, without `-q`/`-v`.
pub fn init(format: LogFormat, verbose: u8, quiet: u8, live: bool) {
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let terminal =
        std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb");
    if live && format == LogFormat::Text && verbose == 0 && quiet == 0 && terminal && !journald {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let filter = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("warn,vps_snapshot_agent=debug"));
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(crate::progress::ProgressLayer::new())
            .try_init();
        return;
    }
    let level = match (verbose, quiet) {
        (0, 0) => "info",
        (1, _) => "debug",
        (v, _) if v >= 2 => "trace",
        (_, 1) => "warn",
        _ => "error",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,vps_snapshot_agent={level}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| crate::secrets::Scrubbing(std::io::stderr()))
        .with_target(false);
    // Whole seconds: nobody reads an operations log to the nanosecond.
    let builder = builder.with_timer(Seconds);
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
        LogFormat::Text if journald => builder.without_time().with_ansi(false).try_init(),
        LogFormat::Text => builder
            .with_ansi(colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .try_init(),
    };
}

/// Log timestamps in UTC, to the second.
struct Seconds;

impl FormatTime for Seconds {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        write!(w, "{}", chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"))
    }
}

/// Colour only on a terminal, and never when `NO_COLOR` (its value: `no_color`) is set
/// and not empty (no-color.org).
pub fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        use std::ffi::OsStr;
        assert!(!colour(false, None));
        assert!(
            !colour(true, Some(OsStr::new("1"))),
            "NO_COLOR=1 turns colour off"
        );
        assert!(
            colour(true, Some(OsStr::new(""))),
            "an empty NO_COLOR does not (no-color.org)"
        );
        assert!(colour(true, None));
    }
}
