//! tracing-subscriber set-up: text or JSON on stderr, `RUST_LOG`-style filters, `-v`/`-q`,
//! and no timestamps or colours under systemd (journald adds its own).

use std::io::IsTerminal;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::cli::LogFormat;

/// Sets up logging; `live` asks for live progress lines ([`crate::progress`]), drawn only
/// on a terminal, with text logs, without `-q`/`-v`.
pub fn init(format: LogFormat, verbose: u8, quiet: u8, live: bool) {
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let terminal =
        std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb");
    if live && format == LogFormat::Text && verbose == 0 && quiet == 0 && terminal && !journald {
        let filter = filter("debug");
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
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(|| crate::secrets::Scrubbing(std::io::stderr()))
        .with_target(false)
        // Whole seconds: nobody reads an operations log to the nanosecond.
        .with_timer(Seconds);
    let registry = tracing_subscriber::registry().with(filter(level));
    let _ = match format {
        LogFormat::Json => registry
            .with(layer.json().with_current_span(true))
            .try_init(),
        LogFormat::Text if journald => registry
            .with(layer.without_time().with_ansi(false))
            .try_init(),
        LogFormat::Text => registry
            .with(layer.with_ansi(colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            )))
            .try_init(),
    };
}

/// `RUST_LOG`'s `target=level` directives (`vps_snapshot_agent=debug`, `warn,sqlx=info`),
/// else warnings from the libraries and `level` from the agent. Targets, not EnvFilter:
/// the same directives an operator writes, without a regex engine in the binary (span
/// and field filters are not read).
fn filter(level: &str) -> Targets {
    let default = || {
        format!("warn,vps_snapshot_agent={level}")
            .parse::<Targets>()
            .unwrap_or_default()
    };
    match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => v.parse().unwrap_or_else(|e| {
            eprintln!("agent: RUST_LOG={v:?} is not a list of target=level directives ({e}); using the default");
            default()
        }),
        _ => default(),
    }
}

/// Log timestamps in UTC, to the second.
struct Seconds;

impl FormatTime for Seconds {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        write!(w, "{}", crate::human::stamp(chrono::Utc::now()))
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
