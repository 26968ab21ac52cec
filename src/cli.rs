//! The command line, as clap types only.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::domain::{ServerId, SnapshotId};

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
    /// The daemon: schedule every job and run until SIGTERM/SIGINT; SIGHUP reloads the config
    Run,
    RunOnce(RunOnceArgs),
    Prune(PruneArgs),
    History(HistoryArgs),
    Status(StatusArgs),
    Snapshots(SnapshotsArgs),
    /// Pin a snapshot: it is never rotated out (it still counts toward the limit of 5)
    Pin(PinArgs),
    /// Unpin a snapshot: its job's retention policy applies to it again
    Unpin(PinArgs),
    Restore(RestoreArgs),
    Demo(DemoArgs),
    Check(CheckArgs),
    Simulate(SimulateArgs),
    #[command(subcommand)]
    Db(DbCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        shell: clap_complete::Shell,
    },
    /// Print the bcrypt hash of a password read from standard input (not echoed on a
    /// terminal), for `[metrics] basic_auth_users`
    HashPassword {
        /// bcrypt's work factor: each verification takes 2^COST rounds
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=16))]
        cost: u32,
    },
    /// Print the man page agent(1) (roff); with --dir, write it and one page per
    /// subcommand (agent-run(1), …) into DIR
    Manpage {
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
}

/// Run jobs now (all of them unless named), wait for them, print a summary, record the
/// history and alert on failure. Exit 1 if any job failed, 78 if the API rejects the
/// token. Ctrl-C stops at a safe point (the next start finishes what is in flight); a
/// second Ctrl-C exits at once.
#[derive(Debug, Args)]
pub struct RunOnceArgs {
    /// A job to run (repeat for several)
    #[arg(long = "job", value_name = "NAME")]
    pub jobs: Vec<String>,
    /// Show what would be created and deleted, and why, and which hooks would run; change,
    /// run and record nothing
    #[arg(long)]
    pub dry_run: bool,
}

/// Apply the retention policy now, without taking a snapshot (after lowering `keep_*`):
/// delete what the policy drops, under the same rules as rotation (never the newest
/// completed managed snapshot, a pinned or an unmanaged one; at most
/// max_deletions_per_run; a fresh listing before each delete). Each job's prune is
/// recorded as a run of kind `prune`; a failed one is alerted. Exit 1 if any failed.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  agent prune --dry-run             # what every enabled job's policy would delete now\n  agent prune --job web --job db    # delete it, for two jobs"
)]
pub struct PruneArgs {
    /// A job to prune (repeat for several; default: every enabled job)
    #[arg(long = "job", value_name = "NAME")]
    pub jobs: Vec<String>,
    /// Show what would be deleted, and why; delete and record nothing
    #[arg(long)]
    pub dry_run: bool,
}

/// Past runs, newest first.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  agent history --since 2d --status failed     # what failed in the last two days\n  agent history --since 2026-12-01 --until 2026-12-02T06:00:00Z --job web"
)]
pub struct HistoryArgs {
    /// Only this job's runs
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// Only runs started since then: a time ago ("2d", "12h") or a time ("2026-12-01",
    /// "2026-12-01T08:00:00Z", in UTC)
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only runs started before then (as for --since)
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Only runs that ended so
    #[arg(long, value_enum)]
    pub status: Option<StatusFilter>,
    /// How many runs
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Print JSON (an array, newest first)
    #[arg(long)]
    pub json: bool,
}

/// A run's status, as `history --status` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFilter {
    Running,
    Succeeded,
    Failed,
    Interrupted,
    /// A restore the API accepted.
    Started,
}

/// Per job: last run, last success, next scheduled time; and alerts not yet delivered.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this job (repeat for several)
    #[arg(long = "job", value_name = "NAME")]
    pub jobs: Vec<String>,
    /// Print JSON
    #[arg(long, conflicts_with = "check")]
    pub json: bool,
    /// Monitoring mode: one line, exit 0 OK, 1 WARNING (alerts not delivered, a run left
    /// by a stopped agent), 2 CRITICAL (a job's last run failed, or it is stale)
    #[arg(long)]
    pub check: bool,
}

/// A server's snapshots from the API: managed or not, pinned or not, and the retention
/// policy's verdict for each managed one.
#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// The job whose server and policy to use
    #[arg(long, value_name = "NAME", conflicts_with = "server")]
    pub job: Option<String>,
    /// A server id (verdicts from the jobs configured for it)
    #[arg(long, value_name = "ID")]
    pub server: Option<ServerId>,
    /// Print JSON: per server, its jobs and each snapshot with owner, pin and verdict
    #[arg(long)]
    pub json: bool,
}

/// The history database itself
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Copy the SQLite history (runs, journal, pins, alert and ping outbox) into an empty
    /// PostgreSQL database, in one transaction, for several agents to share. Stop the
    /// agents first; the password comes from the URL, PGPASSWORD or the
    /// database-password credential.
    #[command(
        after_help = "Example:\n  PGPASSWORD=… agent db copy --to postgres://agent@db.internal/snapshots?sslmode=verify-full"
    )]
    Copy {
        /// The PostgreSQL database: postgres://USER@HOST[:PORT]/DB[?sslmode=…]
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// The snapshot's id (see `agent snapshots`)
    pub snapshot_id: SnapshotId,
}

/// Restore a server from one of its snapshots. This overwrites ALL current data on the
/// server with the snapshot's. First a safety snapshot of the server as it is is taken,
/// pinned and waited for, so that the restore can be undone (`agent restore <safety id>`).
/// On a terminal you are asked to type the server's id; off one, --yes is required. The
/// API only starts a restore (it takes 5-15 minutes), so history records it as `started`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  agent snapshots --server 12345     # find the snapshot's id\n  agent restore 802                  # asks you to type 12345 to go ahead\n  agent restore 802 --yes            # from a script"
)]
pub struct RestoreArgs {
    /// The id of the snapshot to restore (see `agent snapshots`); its server is restored
    pub snapshot_id: SnapshotId,
    /// Do not ask for confirmation (required when not on a terminal)
    #[arg(long)]
    pub yes: bool,
    /// Skip the safety snapshot: faster, but the restore cannot be undone
    #[arg(long)]
    pub no_safety_snapshot: bool,
    /// Show what would happen (safety snapshot, what making room would delete); touch nothing
    #[arg(long)]
    pub dry_run: bool,
}

/// The quick start: run sample jobs against the built-in simulator in a temp dir, several
/// rounds, showing snapshots being created and rotated, and the history. No account needed.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many rounds (one simulated day apart)
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
}

/// Validate the config (every error at once), check that every hook's program can be
/// started, check the API token and the SMTP server, and print each job's next fire times and what
/// watches the agent (metrics, pings, alert channels).
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also send a test alert on every channel ([email] to every address in email.to,
    /// each [[notify]]), then the alerts they still owe
    #[arg(long, alias = "send-test-email")]
    pub send_test_alert: bool,
    /// Only validate the file (and the hooks); do not contact the API or the SMTP server
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
