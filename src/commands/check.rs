use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use chrono::Utc;

use crate::alert::Delivery;
use crate::api::Client;
use crate::cli::CheckArgs;
use crate::config::{ConfigError, ConfigErrors, JobSettings, Trigger};
use crate::hooks::{self, BeforeFailure, ThawAfter};
use crate::schedule;

pub async fn run(config: &Path, args: CheckArgs) -> anyhow::Result<ExitCode> {
    let settings = super::load_settings(config)?;
    settings.require_jobs()?;
    println!(
        "{}: valid, {} job{}",
        config.display(),
        settings.jobs.len(),
        if settings.jobs.len() == 1 { "" } else { "s" }
    );
    for w in &settings.warnings {
        println!("warning: {w}");
    }
    let now = Utc::now();
    let mut problems = Vec::new();
    for (i, job) in settings.jobs.iter().enumerate() {
        let what = match &job.trigger {
            Trigger::Schedule(c) => format!("schedule \"{c}\""),
            Trigger::Window { window, lead } => format!(
                "{} before maintenance window \"{window}\"",
                humantime::format_duration(*lead)
            ),
        };
        println!(
            "\njob {} (server {}): {what} in {}; {}",
            job.name,
            job.server_id,
            job.timezone,
            job.retention.describe()
        );
        for t in schedule::upcoming(job, now, 3) {
            println!(
                "  next: {}  ({})",
                t.with_timezone(&job.timezone)
                    .format("%Y-%m-%d %H:%M:%S %Z"),
                t.format("%Y-%m-%dT%H:%M:%SZ")
            );
        }
        check_hooks(config, i, job, &mut problems).await;
    }
    if !problems.is_empty() {
        return Err(ConfigErrors(problems).into());
    }
    if args.offline {
        return Ok(ExitCode::SUCCESS);
    }
    let db = super::context::open_db(&settings).await?;
    db.close().await;
    println!(
        "\ndatabase: {} opens and is up to date",
        settings.database.display()
    );
    let token = settings.api.token()?;
    let client = Client::new(&settings.api, token, crate::clock::system())?;
    client
        .check_token()
        .await
        .with_context(|| format!("checking the API at {}", settings.api.base_url))?;
    println!("\nAPI: token accepted by {}", settings.api.base_url);
    let Some(email) = &settings.email else {
        println!("email: not configured ([email] absent): failures are only logged and recorded");
        return Ok(ExitCode::SUCCESS);
    };
    let smtp = crate::alert::Smtp::new(email)?;
    smtp.test_connection().await?;
    println!(
        "email: {}:{} accepted the connection (greeting, TLS and login as configured)",
        email.smtp_host, email.smtp_port
    );
    if args.send_test_email {
        let reply = smtp.send_test().await?;
        let to: Vec<String> = email.to.iter().map(ToString::to_string).collect();
        println!(
            "email: test mail sent to {}; server replied {reply}",
            to.join(", ")
        );
        flush_outbox(&settings, email).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints job `i`'s hooks; a command this user cannot start is a problem of the
/// configuration (it would fail at the first run, possibly with something frozen).
async fn check_hooks(config: &Path, i: usize, job: &JobSettings, problems: &mut Vec<ConfigError>) {
    let h = &job.hooks;
    if h.is_empty() {
        return;
    }
    let thaw = match h.thaw_after {
        ThawAfter::Created => "created",
        ThawAfter::Completed => "completed",
    };
    let skip = match h.before_failure {
        BeforeFailure::Skip => "skip",
        BeforeFailure::SnapshotAnyway => "snapshot-anyway",
    };
    println!(
        "  hooks: thaw_after = {thaw}, before_failure = {skip}, hook_timeout = {}",
        humantime::format_duration(h.timeout)
    );
    let phases = [
        ("before", &h.before),
        ("after", &h.after),
        ("on_failure", &h.on_failure),
    ];
    for (phase, commands) in phases {
        for c in commands {
            match hooks::check(c).await {
                Ok(()) => println!("  {phase}: {c}"),
                Err(e) => problems.push(ConfigError {
                    origin: config.display().to_string(),
                    key: format!("jobs[{i}].{phase}"),
                    message: format!("`{c}`: {e}"),
                }),
            }
        }
    }
}

/// The mail server works now: alerts queued while it did not go out at once.
async fn flush_outbox(
    settings: &crate::config::Settings,
    email: &crate::config::EmailSettings,
) -> anyhow::Result<()> {
    let db = super::context::open_db(settings).await?;
    let mailer =
        crate::alert::Mailer::from_settings(Some(email), db.clone(), crate::clock::system())?;
    if let Some(m) = mailer {
        match m.deliver_all().await {
            Delivery::Sent(n) => println!("email: delivered {n} queued alert(s)"),
            Delivery::Failed(e) => println!("email: queued alerts could not be delivered: {e}"),
            Delivery::Nothing => {}
        }
    }
    db.close().await;
    Ok(())
}
