//! The command line, as clap types only.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Scheduled, rotation-safe snapshots of VPS.org servers.
///
/// Reads one TOML config (see config.example.toml), fires each job on its cron schedule or
/// shortly before its maintenance window, waits for the snapshot, rotates out old ones to
/// stay under the limit of 5 per server, records every run in SQLite and emails alerts.
#[derive(Debug, Parser)]
#[command(name = "agent", version, propagate_version = true)]
pub struct Cli {
    /// Configuration file [default: $AGENT_CONFIG, else /etc/vps-snapshot-agent/config.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Log format on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// More log output (-v debug, -vv trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Less log output (-q warnings only, -qq errors only)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Check(CheckArgs),
    Simulate(SimulateArgs),
}

/// Validate the config (every error at once), check the API token and the SMTP server, and
/// print each job's next fire times.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also send one test email to every address in email.to
    #[arg(long)]
    pub send_test_email: bool,
    /// Only validate the file; do not contact the API or the SMTP server
    #[arg(long)]
    pub offline: bool,
}

/// Serve the Snapshot API simulator, to try a real config against it.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Address to listen on (loopback unless you mean otherwise)
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub listen: SocketAddr,
    /// Bearer token the simulator accepts
    #[arg(long, default_value = crate::sim::DEFAULT_TOKEN)]
    pub token: String,
    /// How long a snapshot takes to complete
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub completion: std::time::Duration,
    /// Snapshots per page in list responses
    #[arg(long, default_value_t = 100)]
    pub page_size: usize,
}
