use std::path::Path;
use std::process::ExitCode;

use super::{UsageError, output, setup};
use crate::cli::SnapshotsArgs;
use crate::config::{JobSettings, Settings};
use crate::domain::ServerId;

pub async fn run(config: &Path, args: SnapshotsArgs) -> anyhow::Result<ExitCode> {
    let settings = setup::config_settings(config)?;
    let servers = servers_to_list(&settings, &args)?;
    let client = setup::client(&settings, crate::clock::system())?;
    // Pins and the journal if the database exists; never create it just to look.
    let db = if settings.database.exists() {
        Some(setup::open_db(&settings).await?)
    } else {
        None
    };
    let pins = match &db {
        Some(db) => db.pins(chrono::Utc::now()).await?,
        None => Default::default(),
    };
    let mut json = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let listing = client.list(Some(*server)).await?;
        let jobs: Vec<&JobSettings> = settings
            .jobs
            .iter()
            .filter(|j| j.server_id == *server && args.job.as_ref().is_none_or(|n| *n == j.name))
            .collect();
        let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        let owners =
            crate::snapshot::owners(db.as_ref(), client.marker(), *server, &listing.snapshots)
                .await?;
        let rows = output::snapshot_rows(&listing.snapshots, &owners, &jobs, &pins);
        if args.json {
            json.push(serde_json::json!({
                "server_id": server,
                "limit": crate::domain::LIMIT,
                "jobs": names,
                "snapshots": rows,
                "anomalies": listing.anomalies,
            }));
            continue;
        }
        if i > 0 {
            println!();
        }
        println!(
            "server {server}: {} snapshot{} (limit 5); jobs: {}",
            listing.held(),
            if listing.held() == 1 { "" } else { "s" },
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        );
        output::snapshots(&rows);
        if !listing.consistent() {
            println!(
                "the API's listing was inconsistent: {}; a run deletes nothing on such a listing",
                listing.odd()
            );
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    if let Some(db) = db {
        db.close().await;
    }
    Ok(ExitCode::SUCCESS)
}

/// The servers to list: the named job's, the `--server` given, or else every configured
/// job's server once each, by id; with no jobs a server must be named.
fn servers_to_list(settings: &Settings, args: &SnapshotsArgs) -> anyhow::Result<Vec<ServerId>> {
    Ok(match (&args.job, args.server) {
        (Some(name), _) => {
            vec![setup::select_jobs(settings, std::slice::from_ref(name))?[0].server_id]
        }
        (None, Some(id)) => vec![id],
        (None, None) => {
            let mut s: Vec<ServerId> = settings.jobs.iter().map(|j| j.server_id).collect();
            s.sort_unstable();
            s.dedup();
            if s.is_empty() {
                return Err(UsageError(
                    "no jobs configured: name a server with --server ID".into(),
                )
                .into());
            }
            s
        }
    })
}
