use std::path::Path;
use std::process::ExitCode;

use super::{context, output};
use crate::cli::HistoryArgs;

pub async fn run(config: &Path, args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let settings = context::config_settings(config)?;
    let db = context::open_db(&settings).await?;
    let runs = db.history(args.job.as_deref(), args.limit).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
    } else if runs.is_empty() {
        println!("no runs recorded yet in {}", db.path().display());
    } else {
        output::history(&runs);
    }
    db.close().await;
    Ok(ExitCode::SUCCESS)
}
