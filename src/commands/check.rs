use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::alert::Delivery;
use crate::api::Client;
use crate::cli::CheckArgs;
use crate::config::{ConfigError, ConfigErrors, JobSettings, Settings, Trigger};
use crate::hooks::{self, BeforeFailure, ThawAfter};
use crate::schedule;

pub async fn run(config: &Path, args: CheckArgs) -> anyhow::Result<ExitCode> {
    // Not `load_logged`: the warnings are printed below, once.
    let settings = Settings::load(config)?;
    settings.require_jobs()?;
    for f in &settings.included {
        println!("{}: jobs included from {}", config.display(), f.display());
    }
    for w in &settings.warnings {
        println!("warning: {w}");
    }
    let now = Utc::now();
    let mut problems = Vec::new();
    for (i, job) in settings.jobs.iter().enumerate() {
        print_job(job, now);
        check_hooks(config, i, job, &mut problems).await;
    }
    check_listener(config, &settings, &mut problems);
    // One verdict on the configuration, after everything about it was looked at.
    if !problems.is_empty() {
        return Err(ConfigErrors(problems).into());
    }
    let disabled = settings.jobs.iter().filter(|j| !j.enabled).count();
    println!(
        "\n{}: valid, {} job{}{}",
        config.display(),
        settings.jobs.len(),
        if settings.jobs.len() == 1 { "" } else { "s" },
        if disabled > 0 {
            format!(" ({disabled} disabled)")
        } else {
            String::new()
        }
    );
    if args.offline {
        return Ok(ExitCode::SUCCESS);
    }
    let db = super::setup::open_db(&settings).await?;
    db.close().await;
    println!("\ndatabase: {} opens and is up to date", settings.database);
    let token = settings.api.token()?;
    let client = Client::new(&settings.api, token, crate::clock::system())?;
    client
        .check_token()
        .await
        .with_context(|| format!("checking the API at {}", settings.api.base_url))?;
    println!("\nAPI: token accepted by {}", settings.api.base_url);
    check_channels(&settings, args.send_test_alert).await
}

/// The job's heading (what fires it, when, its retention) and its next three fire times,
/// in its zone and in UTC; a disabled job says it never fires and lists none.
fn print_job(job: &JobSettings, now: DateTime<Utc>) {
    let what = match &job.trigger {
        Trigger::Schedule(c) => format!("schedule \"{c}\""),
        Trigger::Window { window, lead } => format!(
            "{} before maintenance window \"{window}\"",
            crate::human::span(*lead)
        ),
    };
    println!(
        "\njob {} (server {}): {what} in {}; {}{}",
        job.name,
        job.server_id,
        job.timezone,
        job.retention.describe(),
        if job.enabled {
            ""
        } else {
            "; DISABLED (enabled = false): it never fires"
        }
    );
    let upcoming = if job.enabled {
        schedule::upcoming(job, now, 3)
    } else {
        Vec::new()
    };
    for t in upcoming {
        println!(
            "  next: {}  ({})",
            crate::human::local_time(t, job.timezone),
            crate::human::stamp(t)
        );
    }
}

/// Loads the listener's certificate, key and client CA, when it listens: readable by
/// this user, the certificate matching the key. A failure is a problem of the
/// configuration; what merely looks odd is printed as a warning.
fn check_listener(config: &Path, settings: &Settings, problems: &mut Vec<ConfigError>) {
    if let Some(m) = settings.metrics.as_ref().filter(|m| m.listen.is_some()) {
        match crate::serve::listener::Access::load(m) {
            Ok(a) => {
                for n in &a.notes {
                    println!("warning: {n}");
                }
            }
            Err(e) => problems.push(ConfigError {
                origin: config.display().to_string(),
                key: e.key.to_string(),
                message: e.message,
            }),
        }
    }
}

/// Connects to the SMTP server; with `send_test`, sends a test alert on every channel
/// and then the alerts they owe. Any channel failing fails the check, naming it.
async fn check_channels(settings: &Settings, send_test: bool) -> anyhow::Result<ExitCode> {
    if settings.email.is_none() && settings.notify.is_empty() {
        println!(
            "alerts: no channel ([email], [[notify]] absent): failures are only logged and recorded"
        );
    }
    let mut failed = Vec::new();
    if let Some(email) = &settings.email {
        let smtp = crate::alert::Smtp::new(email)?;
        smtp.test_connection().await?;
        println!(
            "email: {}:{} accepted the connection (greeting, TLS and login as configured)",
            email.smtp_host, email.smtp_port
        );
        if send_test {
            match smtp.send_test().await {
                Ok(reply) => {
                    let to: Vec<String> = email.to.iter().map(ToString::to_string).collect();
                    println!(
                        "email: test mail sent to {}; server replied {reply}",
                        to.join(", ")
                    );
                }
                Err(e) => failed.push(format!("email: {}", crate::errors::line(&e))),
            }
        }
    }
    let http = crate::alert::http::client()?;
    for n in &settings.notify {
        let host = crate::secrets::host_of(&n.url);
        if !send_test {
            println!(
                "notify {}: {} to {host} (--send-test-alert tries it)",
                n.name,
                n.kind.as_str()
            );
            continue;
        }
        let (subject, text) = crate::alert::text::test_alert();
        match crate::alert::http::post_alerts(
            &http,
            n,
            &[],
            &subject,
            &text,
            &crate::identity::host_name(),
        )
        .await
        {
            Ok(()) => println!("notify {}: test alert accepted by {host}", n.name),
            Err(e) => failed.push(format!("notify {}: {e}", n.name)),
        }
    }
    print_watchers(settings);
    if send_test && failed.is_empty() {
        flush_outbox(settings).await?;
    }
    if !failed.is_empty() {
        anyhow::bail!("test alert not delivered:\n  {}", failed.join("\n  "));
    }
    Ok(ExitCode::SUCCESS)
}

/// What watches the agent from outside, as configured (ping URLs show only their host:
/// their path is the secret).
fn print_watchers(settings: &Settings) {
    if let Some(m) = &settings.metrics {
        if let Some(a) = m.listen {
            let scheme = if m.tls.is_some() { "https" } else { "http" };
            let mut guards = Vec::new();
            if let Some(t) = &m.tls {
                guards.push(if t.client_ca.is_some() {
                    "TLS, client certificates required"
                } else {
                    "TLS"
                });
            }
            if !m.basic_auth_users.is_empty() {
                guards.push("basic auth");
            }
            println!(
                "listener: {scheme}://{a}/ (status page), /metrics and /healthz while `agent run` runs{}",
                if guards.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", guards.join(", "))
                }
            );
        }
        if let Some(p) = &m.textfile {
            println!("metrics: written to {} after each run", p.display());
        }
    }
    if let Some(h) = &settings.heartbeat {
        println!(
            "heartbeat: a ping to {} every {}",
            crate::secrets::host_of(&h.url),
            crate::human::span(h.every)
        );
    }
    for j in &settings.jobs {
        if let Some(u) = &j.ping_url {
            println!(
                "job {}: pings {} at each run's start and end",
                j.name,
                crate::secrets::host_of(u)
            );
        }
    }
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
        crate::human::span(h.timeout)
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

/// The channels work now: alerts queued while they did not go out at once.
async fn flush_outbox(settings: &Settings) -> anyhow::Result<()> {
    let db = super::setup::open_db(settings).await?;
    if let Some(o) =
        crate::alert::Outbox::from_settings(settings, db.clone(), crate::clock::system())?
    {
        o.register().await?;
        match o.deliver_all().await {
            Delivery::Sent(n) => println!("alerts: delivered {n} queued alert(s)"),
            Delivery::Failed(e) => println!("alerts: queued alerts could not be delivered: {e}"),
            Delivery::Nothing => {}
        }
    }
    db.close().await;
    Ok(())
}
