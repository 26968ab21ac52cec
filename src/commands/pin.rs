use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use chrono::Utc;

use super::setup;
use crate::cli::PinArgs;
use crate::db::State;

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
        let pinned = db.pin(id, Utc::now()).await?;
        // A run that chose it before the pin was committed may have recorded its delete:
        // that one the pin did not stop (any later one it does).
        if let Some((run, state)) = db.delete_recorded(id).await? {
            db.close().await;
            let delete = match state {
                State::Ok => "was carried out",
                State::Unknown => "may have been carried out",
                State::Pending | State::Error => "may be under way",
            };
            bail!(
                "snapshot {id} ({}, server {}) is pinned now, but run {run} had already set \
                 out to delete it (that delete {delete}): it may be gone; `agent snapshots \
                 --server {}` shows whether it is",
                snap.name,
                snap.server.id,
                snap.server.id
            );
        }
        if pinned {
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
