use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;

use super::{UsageError, context, output};
use crate::cli::RestoreArgs;
use crate::db::RunStatus;
use crate::naming;
use crate::run::Runner;

pub async fn run(config: &Path, args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let settings = context::config_settings(config)?;
    let clock = crate::clock::system();
    let client = context::client(&settings, clock.clone())?;
    let id = args.snapshot_id;
    let Some(snap) = client.list(None).await?.into_iter().find(|s| s.id == id) else {
        bail!("no snapshot {id} exists (checked with the API)");
    };
    let server = snap
        .server
        .name
        .clone()
        .map_or(snap.server.id.to_string(), |n| {
            format!("{} ({n})", snap.server.id)
        });
    println!(
        "Restoring server {server} from snapshot {id} ({}, {}, taken {} UTC).\n\
         This overwrites ALL current data on the server, stops it first, and cannot be undone.",
        snap.name,
        snap.status,
        output::time(snap.created_at)
    );
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(UsageError(
                "refusing to restore without --yes when not on a terminal".into(),
            )
            .into());
        }
        print!("Type the server id ({}) to go ahead: ", snap.server.id);
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != snap.server.id.to_string() {
            println!("not restoring");
            return Ok(ExitCode::FAILURE);
        }
    }
    let db = context::open_db(&settings).await?;
    let job = naming::parse(&snap.name)
        .map(|p| p.job)
        .or_else(|| {
            settings
                .jobs
                .iter()
                .find(|j| j.server_id == snap.server.id)
                .map(|j| j.name.clone())
        })
        .unwrap_or_else(|| format!("server-{}", snap.server.id));
    let runner = Runner::from_settings(&settings, db.clone(), client, clock);
    let outcome = runner.restore(&job, &snap).await?;
    db.close().await;
    match outcome.status {
        RunStatus::Started => {
            println!(
                "restore started (run {}); it takes 5-15 minutes",
                outcome.run_id
            );
            Ok(ExitCode::SUCCESS)
        }
        _ => bail!(
            "restore failed (run {}): {}",
            outcome.run_id,
            outcome.error.unwrap_or_default()
        ),
    }
}
