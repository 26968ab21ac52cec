use std::path::Path;
use std::process::ExitCode;

use chrono::{DateTime, NaiveDate, Utc};

use super::{UsageError, output, setup};
use crate::cli::{HistoryArgs, StatusFilter};
use crate::db::{HistoryQuery, RunStatus};

/// `--since`/`--until`: a time ago ("2d") or a time ("2026-12-01", RFC 3339), as of `now`.
fn when(flag: &str, text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, UsageError> {
    let text = text.trim();
    if let Ok(ago) = humantime::parse_duration(text) {
        let ago = chrono::Duration::from_std(ago).unwrap_or(chrono::Duration::MAX);
        return Ok(now
            .checked_sub_signed(ago)
            .unwrap_or(DateTime::<Utc>::MIN_UTC));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    Err(UsageError(format!(
        "{flag} {text:?}: give a time ago (\"2d\", \"12h\") or a time (\"2026-12-01\", \
         \"2026-12-01T08:00:00Z\")"
    )))
}

fn status(s: StatusFilter) -> RunStatus {
    match s {
        StatusFilter::Running => RunStatus::Running,
        StatusFilter::Succeeded => RunStatus::Succeeded,
        StatusFilter::Failed => RunStatus::Failed,
        StatusFilter::Interrupted => RunStatus::Interrupted,
        StatusFilter::Started => RunStatus::Started,
    }
}

pub async fn run(config: &Path, args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let now = Utc::now();
    let since = args
        .since
        .as_deref()
        .map(|t| when("--since", t, now))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|t| when("--until", t, now))
        .transpose()?;
    if let (Some(s), Some(u)) = (since, until)
        && s > u
    {
        return Err(UsageError(format!(
            "--since ({}) is after --until ({}): no run can match; --since is the older end",
            crate::human::stamp(s),
            crate::human::stamp(u)
        ))
        .into());
    }
    let settings = setup::config_settings(config)?;
    let (db, _empty) = setup::open_to_read(&settings).await?;
    let runs = db
        .history_where(&HistoryQuery {
            job: args.job.as_deref(),
            since,
            until,
            status: args.status.map(status),
            limit: args.limit,
        })
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
    } else if runs.is_empty() && (since.is_some() || until.is_some() || args.status.is_some()) {
        println!("no runs match in {}", db.path().display());
    } else if runs.is_empty() {
        println!("no runs recorded yet in {}", db.path().display());
    } else {
        output::history(&runs);
    }
    db.close().await;
    Ok(ExitCode::SUCCESS)
}
