//! `agent demo`: the quick start. A simulator on loopback, a sample config in a temp dir,
//! several rounds of the real job runs one simulated day apart (snapshots take 3-10
//! simulated minutes, so polling is real too), then the history.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};

use super::{output, setup};
use crate::api::{Client, SnapshotStatus};
use crate::cli::DemoArgs;
use crate::clock::{Clock, SystemClock, VirtualClock};
use crate::config::Settings;
use crate::db::Database;
use crate::db::RunTrigger;
use crate::domain::{ServerId, SnapshotId};
use crate::run::Runner;
use crate::schedule;
use crate::sim::{DEFAULT_TOKEN, Delay, SimOptions, Simulator};

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir()?;
    let start = start_time();
    let clock = VirtualClock::new(start);
    let shared: crate::clock::SharedClock = Arc::new(clock.clone());
    let server = Simulator::start(
        SimOptions {
            delay: Delay::Uniform(Duration::from_secs(180), Duration::from_secs(600)),
            ..SimOptions::default()
        },
        shared.clone(),
    )
    .await?;
    let manual = server.sim.put(
        ServerId::new(101),
        "before-php-upgrade",
        SnapshotStatus::Completed,
        start - chrono::Duration::days(10),
    );
    let config = write_config(dir.path(), &server.base_url())?;
    print_intro(&server.base_url(), dir.path(), manual);
    let settings = Settings::load(&config)?;
    let db = setup::open_db(&settings).await?;
    let client = setup::client(&settings, shared.clone())?;
    let runner = Runner::from_settings(&settings, db.clone(), client.clone(), shared);
    for round in 1..=args.rounds {
        println!(
            "=== day {round} of {}: {} ===",
            args.rounds,
            day_of_next_fire(&settings, &clock)
        );
        let outcomes = one_day(&settings, &runner, &clock).await?;
        output::summary(&outcomes);
        show_servers(&settings, &db, &client, clock.now()).await?;
    }
    println!(
        "TIME is each run from its scheduled start to its end: the simulated snapshots take \
         3-10 minutes, and the agent looks every 20 s (or, once it knows the job's usual \
         duration, first just before it is due).\n"
    );
    println!("=== history (agent history) ===");
    output::history(&db.history(None, 50).await?);
    print_metrics(&db, &settings, clock.now()).await?;
    let requests = server.sim.requests().total;
    println!(
        "\n{} runs, {requests} API requests. Next: `agent simulate` (`cargo run -- simulate` from the \
         source tree) serves this API for your own config; `agent check` validates a config.",
        db.history(None, 1000).await?.len()
    );
    db.close().await;
    Ok(ExitCode::SUCCESS)
}

/// The demo's simulated start: a minute before the nightly job's 02:30 today, on whole
/// seconds (or now, should that time not be found).
fn start_time() -> DateTime<Utc> {
    let now = SystemClock.now();
    now.with_hour(2)
        .and_then(|t| t.with_minute(29))
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(now)
}

/// What the demo is about to show: where the simulator and the files are, and the
/// snapshot made by hand (`manual`) that the agent must leave alone.
fn print_intro(url: &str, dir: &Path, manual: SnapshotId) {
    println!("vps-snapshot-agent demo: a simulated VPS.org API on {url}");
    println!(
        "config and history in {} (removed at the end)",
        dir.display()
    );
    println!(
        "server 101 already holds snapshot {manual} \"before-php-upgrade\", made by hand: the agent never touches it."
    );
    println!("Snapshots take 3-10 simulated minutes; each round is one simulated day later.\n");
}

/// The metrics as `GET /metrics` serves them at `now`, without comments and histogram
/// buckets, sorted: short enough to read.
async fn print_metrics(
    db: &Database,
    settings: &Settings,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    println!(
        "\n=== metrics (what GET /metrics serves with [metrics] listen; buckets left out) ==="
    );
    let metrics = crate::serve::metrics::render(db, settings, now).await?;
    let mut lines: Vec<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains("_bucket{"))
        .collect();
    lines.sort_unstable();
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// The day of the next fire, as the round's heading says it.
fn day_of_next_fire(settings: &Settings, clock: &VirtualClock) -> String {
    let now = clock.now();
    let first = settings
        .jobs
        .iter()
        .filter_map(|j| schedule::next_fire(j, now))
        .min()
        .unwrap_or(now);
    format!("{} (simulated)", crate::human::day(first))
}

/// Each job once, at its own next scheduled time, as the daemon would fire it.
async fn one_day(
    settings: &Settings,
    runner: &Runner,
    clock: &VirtualClock,
) -> anyhow::Result<Vec<crate::run::Outcome>> {
    let since = clock.now();
    let mut fires: Vec<_> = settings
        .jobs
        .iter()
        .filter_map(|j| schedule::next_fire(j, since).map(|at| (at, j)))
        .collect();
    fires.sort_by_key(|(at, _)| *at);
    let mut outcomes = Vec::new();
    for (at, job) in fires {
        if let Ok(wait) = (at - clock.now()).to_std() {
            clock.advance(wait);
        }
        outcomes.push(runner.run_job(job, RunTrigger::Schedule, Some(at)).await?);
    }
    Ok(outcomes)
}

/// The demo's configuration, in `dir`, for the simulator at `url`.
fn write_config(dir: &Path, url: &str) -> anyhow::Result<PathBuf> {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"database = "{db}"

[api]
base_url = "{url}"
token = "{DEFAULT_TOKEN}"

[defaults]
poll_interval = "20s"

[[jobs]]
name = "web-01-nightly"
server_id = 101
schedule = "0 30 2 * * *"
keep_last = 3

[[jobs]]
name = "db-01-pre-maintenance"
server_id = 102
maintenance_window = "0 0 4 * * *"
lead = "45m"
keep_last = 1
keep_weekly = 2
"#,
            db = dir.join("history.db").display(),
        ),
    )?;
    Ok(config)
}

/// Each job's server as `agent snapshots` shows it.
async fn show_servers(
    settings: &Settings,
    db: &Database,
    client: &Client,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    for job in &settings.jobs {
        let listing = client.list(Some(job.server_id)).await?.snapshots;
        let owners =
            crate::snapshot::owners(Some(db), client.marker(), job.server_id, &listing).await?;
        println!("\nserver {} now:", job.server_id);
        output::snapshots(&output::snapshot_rows(
            &listing,
            &owners,
            &[job],
            &db.pins(now).await?,
        ));
    }
    println!();
    Ok(())
}
