use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use chrono::Utc;

use super::setup;
use crate::cli::PinArgs;

pub async fn run(config: &Path, args: PinArgs, pin: bool) -> anyhow::Result<ExitCode> {
    let settings = setup::config_settings(config)?;
    // Unpinning needs no database where none is: nothing there was pinned.
    let (db, _empty) = if pin {
        (setup::open_db(&settings).await?, None)
    } else {
        setup::open_to_read(&settings).await?
    };
    let id = args.snapshot_id;
    if pin {
        // Pinning a typo would protect nothing: make sure the snapshot exists.
        let client = setup::client(&settings, crate::clock::system())?;
        let Some(snap) = client.list(None).await?.get(id).cloned() else {
            bail!("no snapshot {id} exists (checked with the API)");
        };
        if db.pin(id, Utc::now()).await? {
            println!(
                "pinned snapshot {id} ({}, server {}): it will never be rotated out",
                snap.name, snap.server.id
            );
        } else {
            println!("snapshot {id} was already pinned");
        }
    } else if db.unpin(id).await? {
        println!("unpinned snapshot {id}: its job's retention policy applies to it again");
    } else {
        println!("snapshot {id} was not pinned");
    }
    db.close().await;
    Ok(ExitCode::SUCCESS)
}
