//! The read-only status page served at `/` on the metrics listener: jobs with their
//! timelines and next fires, each server's snapshots with the policy's verdict, queued
//! alerts, the agents alive. Rendered on the server by askama (compiled templates, HTML
//! escaped); no JavaScript, no external assets; it refreshes itself. The snapshots shown
//! are those the daemon's runs last listed ([`crate::api::last_listings`]; the page never
//! calls the API): a server not run since the daemon started says so.

use askama::Template;
use chrono::{DateTime, Utc};

use crate::config::{JobSettings, Settings};
use crate::db::{Database, RunStatus};
use crate::domain::ServerId;
use crate::snapshot::mark::Marker;

/// How often the page reloads itself.
const REFRESH_SECS: u32 = 30;

/// The stylesheet, served at `/status.css` (the page's policy allows no inline style).
pub const CSS: &str = include_str!("../../templates/status.css");

/// The policy every answer carries: nothing but the page's own stylesheet.
pub const CSP: &str = "default-src 'none'; style-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

struct Mark {
    class: &'static str,
    symbol: char,
}

struct JobView {
    name: String,
    server_id: ServerId,
    marks: Vec<Mark>,
    last_success: String,
    stale: bool,
    next_local: String,
    next_utc: String,
}

struct Row {
    id: String,
    name: String,
    status: String,
    created: String,
    managed: String,
    pinned: bool,
    verdict: String,
    delete_next: bool,
}

struct ServerView {
    id: ServerId,
    count: usize,
    jobs: String,
    seen: String,
    empty: &'static str,
    rows: Vec<Row>,
}

struct AlertView {
    subject: String,
    queued: String,
    channels: String,
    error: String,
}

#[derive(Template)]
#[template(path = "status.html")]
struct Page {
    host: String,
    version: &'static str,
    generated: String,
    refresh_secs: u32,
    jobs: Vec<JobView>,
    servers: Vec<ServerView>,
    alerts: Vec<AlertView>,
    agents: Vec<AgentView>,
}

struct AgentView {
    /// `alive`, `gone` or `stopped`.
    state: &'static str,
    text: String,
}

/// The agents on the database: daemons, and `run-once`s while they run.
async fn agents(db: &Database, now: DateTime<Utc>) -> anyhow::Result<Vec<AgentView>> {
    let me = crate::identity::AgentId::this().to_string();
    Ok(db
        .agents(now)
        .await?
        .into_iter()
        .filter(|a| a.listed_at(now))
        .map(|a| {
            let this = if a.id == me {
                ", serving this page"
            } else {
                ""
            };
            let (state, since) = match (a.alive, a.stopped_at) {
                (true, _) => ("alive", String::new()),
                (false, Some(t)) => ("stopped", format!(" {}", crate::human::fmt_time(t))),
                (false, None) => (
                    "gone",
                    format!(", last heartbeat {}", crate::human::fmt_time(a.seen_at)),
                ),
            };
            AgentView {
                state,
                text: format!(
                    "{} {} {} (version {}): {state}{since}{this}",
                    a.host, a.role, a.id, a.version
                ),
            }
        })
        .collect())
}

fn mark(s: RunStatus) -> Mark {
    match s {
        RunStatus::Succeeded | RunStatus::Started => Mark {
            class: "succeeded",
            symbol: '●',
        },
        RunStatus::Failed => Mark {
            class: "failed",
            symbol: '✗',
        },
        RunStatus::Interrupted => Mark {
            class: "interrupted",
            symbol: '○',
        },
        RunStatus::Running => Mark {
            class: "running",
            symbol: '▶',
        },
    }
}

async fn jobs(
    db: &Database,
    settings: &Settings,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<JobView>> {
    let jobs: Vec<&JobSettings> = settings.jobs.iter().collect();
    let states = Box::pin(crate::job_state::of_jobs(db, &jobs, now)).await?;
    Ok(states
        .into_iter()
        .map(|s| JobView {
            name: s.job.name.clone(),
            server_id: s.job.server_id,
            marks: s.timeline.into_iter().map(mark).collect(),
            stale: s.stale,
            last_success: s.last_success_at.map_or("never".into(), |t| {
                format!(
                    "{} ({} ago; stale after {})",
                    crate::human::fmt_time(t),
                    crate::human::fmt_age(now - t),
                    crate::human::span(s.stale_after)
                )
            }),
            next_local: s.next_fire.map_or_else(
                || {
                    if s.job.enabled {
                        "never".into()
                    } else {
                        "disabled".into()
                    }
                },
                |t| crate::human::local_minute(t, s.job.timezone),
            ),
            next_utc: s
                .next_fire
                .filter(|_| s.job.timezone != chrono_tz::UTC)
                .map_or(String::new(), crate::human::minute),
        })
        .collect())
}

async fn servers(
    db: &Database,
    settings: &Settings,
    marker: &Marker,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<ServerView>> {
    let mut ids: Vec<ServerId> = settings.jobs.iter().map(|j| j.server_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let seen = crate::api::last_listings();
    let pins = db.pins(now).await?;
    let mut out = Vec::new();
    for id in ids {
        let jobs: Vec<&JobSettings> = settings.jobs.iter().filter(|j| j.server_id == id).collect();
        let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        let Some((at, listing)) = seen.get(&id) else {
            out.push(ServerView {
                id,
                count: 0,
                jobs: names.join(", "),
                seen: "not listed yet".into(),
                empty: "Not listed since the agent started: shown after this server's next run.",
                rows: Vec::new(),
            });
            continue;
        };
        let owners = crate::snapshot::owners(Some(db), marker, id, listing).await?;
        let rows = crate::snapshot::verdicts::snapshot_rows(listing, &owners, &jobs, &pins)
            .into_iter()
            .map(|r| Row {
                id: r.id.to_string(),
                delete_next: r.verdict.starts_with("delete"),
                name: r.name,
                status: r.status,
                created: crate::human::fmt_time(r.created_at),
                managed: r.managed_text,
                pinned: r.pinned,
                verdict: r.verdict,
            })
            .collect();
        out.push(ServerView {
            id,
            count: listing.len(),
            jobs: names.join(", "),
            seen: format!("as listed {} ago", crate::human::fmt_age(now - *at)),
            empty: "No snapshots.",
            rows,
        });
    }
    Ok(out)
}

/// The page, as HTML.
pub async fn render(
    db: &Database,
    settings: &Settings,
    marker: &Marker,
    now: DateTime<Utc>,
) -> anyhow::Result<String> {
    let host = crate::identity::host_name();
    let alerts = db
        .pending_alerts()
        .await?
        .into_iter()
        .map(|a| AlertView {
            subject: a.subject,
            queued: crate::human::fmt_time(a.created_at),
            channels: if a.channels.is_empty() {
                "no channel yet".into()
            } else {
                a.channels.join(", ")
            },
            error: a.last_error.unwrap_or_default(),
        })
        .collect();
    let page = Page {
        agents: agents(db, now).await?,
        host,
        version: env!("CARGO_PKG_VERSION"),
        generated: crate::human::fmt_time(now),
        refresh_secs: REFRESH_SECS,
        jobs: jobs(db, settings, now).await?,
        servers: servers(db, settings, marker, now).await?,
        alerts,
    };
    Ok(page.render()?)
}
