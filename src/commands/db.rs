//! `agent db copy --to postgres://…`: moves the SQLite history into PostgreSQL.

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::DbCommand;
use crate::db::Location;

pub async fn run(config: &std::path::Path, command: DbCommand) -> anyhow::Result<ExitCode> {
    let DbCommand::Copy { to } = command;
    let settings = crate::config::Settings::load_logged(config)?;
    let Location::File(path) = &settings.database else {
        anyhow::bail!(
            "database {}: is not a SQLite file; `db copy` copies a SQLite history into PostgreSQL",
            settings.database
        );
    };
    if !path.exists() {
        anyhow::bail!(
            "database {}: does not exist: nothing to copy",
            path.display()
        );
    }
    let (url, password) =
        crate::db::split_password(&to).map_err(|e| super::UsageError(format!("--to: {e}")))?;
    if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
        return Err(super::UsageError(format!("--to {url}: give a postgres:// URL")).into());
    }
    let from = super::setup::open_db(&settings).await?;
    let alive: Vec<String> = from
        .agents(chrono::Utc::now())
        .await?
        .into_iter()
        .filter(|a| a.alive)
        .map(|a| format!("{} ({})", a.host, a.role))
        .collect();
    if !alive.is_empty() {
        anyhow::bail!(
            "database {}: agents are still using it: {}; stop them first, so that the copy is whole",
            path.display(),
            alive.join(", ")
        );
    }
    // A target that cannot be reached or logged into is a setup problem: exit 78.
    let to = super::setup::open_at(&Location::Postgres { url, password })
        .await
        .context("the copy's target")?;
    let copied = from.copy_to(&to).await?;
    let total: u64 = copied.0.iter().map(|(_, n)| n).sum();
    println!(
        "copied {total} rows from {} to {}:",
        path.display(),
        to.path().display()
    );
    for (table, n) in &copied.0 {
        println!("  {table:<11} {n}");
    }
    println!(
        "now set database = \"{}\" in the config (password from PGPASSWORD or the \
         database-password credential) and start the agents",
        to.path().display()
    );
    from.close().await;
    to.close().await;
    Ok(ExitCode::SUCCESS)
}
