//! Prometheus metrics as served: what this process counted ([`crate::metrics`]) and what
//! the database knows (each job's last run and success, the outbox, the agents), read at
//! each [`render`], so a scrape after a restart still tells the whole story. Text format
//! 0.0.4 (prometheus-client's encoder): what Prometheus scrapes and node_exporter's
//! textfile collector reads ([`super::listener`] serves it), [`write_textfile`] writes
//! it to a file.

use std::path::Path;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::config::Settings;
use crate::db::{Database, DbResult, RunStatus};
use crate::metrics::{FloatGauge, Labels1, Labels2, global, l};

fn seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

fn float_family(r: &mut Registry, name: &str, help: &str) -> Family<Labels1, FloatGauge> {
    let f = Family::<Labels1, FloatGauge>::default();
    r.register_with_unit(name, help, Unit::Seconds, f.clone());
    f
}

/// 1 for `job`'s last status, 0 for the others.
fn one_hot(family: &Family<Labels2, Gauge>, job: &str, last: RunStatus) {
    let all = [
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Interrupted,
    ];
    for s in all {
        let labels = l([("job_name", job), ("status", s.as_str())]);
        family.get_or_create(&labels).set(i64::from(last == s));
    }
}

/// The per-job figures the database knows.
async fn jobs(
    r: &mut Registry,
    db: &Database,
    settings: &Settings,
    now: DateTime<Utc>,
) -> DbResult<()> {
    let jobs: Vec<&crate::config::JobSettings> = settings.jobs.iter().collect();
    let states = Box::pin(crate::job_state::of_jobs(db, &jobs, now)).await?;
    let start = float_family(
        r,
        "vps_snapshot_job_last_run_start_timestamp",
        "When the job's last run started (Unix time)",
    );
    let end = float_family(
        r,
        "vps_snapshot_job_last_run_end_timestamp",
        "When the job's last run ended (Unix time)",
    );
    let success = float_family(
        r,
        "vps_snapshot_job_last_success_timestamp",
        "When the job's last successful run ended (Unix time)",
    );
    let next = float_family(
        r,
        "vps_snapshot_job_next_fire_timestamp",
        "When the job fires next (Unix time)",
    );
    let stale = float_family(
        r,
        "vps_snapshot_job_stale_after",
        "How long the job may go without a success before it is stale",
    );
    let enabled = Family::<Labels1, Gauge>::default();
    r.register(
        "vps_snapshot_job_enabled",
        "1 for a job that fires, 0 for one switched off with enabled = false",
        enabled.clone(),
    );
    let status = Family::<Labels2, Gauge>::default();
    r.register(
        "vps_snapshot_job_last_status",
        "1 for the status of the job's last run (running, succeeded, failed, interrupted), 0 for the others",
        status.clone(),
    );
    for s in &states {
        let key = l([("job_name", s.job.name.as_str())]);
        enabled.get_or_create(&key).set(i64::from(s.job.enabled));
        if let Some(run) = &s.last_run {
            start.get_or_create(&key).set(seconds(run.started_at));
            if let Some(t) = run.finished_at {
                end.get_or_create(&key).set(seconds(t));
            }
            one_hot(&status, &s.job.name, run.status);
        }
        if let Some(t) = s.last_success_at {
            success.get_or_create(&key).set(seconds(t));
        }
        if let Some(t) = s.next_fire {
            next.get_or_create(&key).set(seconds(t));
        }
        stale.get_or_create(&key).set(s.stale_after.as_secs_f64());
    }
    Ok(())
}

/// What the outbox holds.
async fn outbox(r: &mut Registry, db: &Database) -> DbResult<()> {
    let counts = db.outbox_counts().await?;
    let queued = Counter::<u64>::default();
    queued.inc_by(u64::try_from(counts.queued).unwrap_or(0));
    r.register("vps_snapshot_alerts_queued", "Alerts queued, ever", queued);
    let delivered = Family::<Labels1, Counter>::default();
    let pending = Family::<Labels1, Gauge>::default();
    for (channel, sent, owed) in &counts.channels {
        let key = l([("channel", channel.as_str())]);
        delivered
            .get_or_create(&key)
            .inc_by(u64::try_from(*sent).unwrap_or(0));
        pending.get_or_create(&key).set(*owed);
    }
    r.register(
        "vps_snapshot_alerts_delivered",
        "Alerts delivered, by channel",
        delivered,
    );
    r.register(
        "vps_snapshot_alerts_pending",
        "Alerts queued and not yet delivered, by channel",
        pending,
    );
    Ok(())
}

/// The daemons on the database, alive and gone (stopped heartbeating without stopping).
async fn agents(r: &mut Registry, db: &Database, now: DateTime<Utc>) -> DbResult<()> {
    let daemons = Family::<Labels1, Gauge>::default();
    let (mut alive, mut gone) = (0, 0);
    for a in db.agents(now).await? {
        if a.role == crate::db::AgentRole::Daemon {
            alive += i64::from(a.alive);
            gone += i64::from(a.gone());
        }
    }
    daemons.get_or_create(&l([("state", "alive")])).set(alive);
    daemons.get_or_create(&l([("state", "gone")])).set(gone);
    r.register(
        "vps_snapshot_agents",
        "Agent daemons on the database: alive (heartbeating), gone (stopped heartbeating without stopping)",
        daemons,
    );
    Ok(())
}

/// Every metric, in the Prometheus text format.
pub async fn render(db: &Database, settings: &Settings, now: DateTime<Utc>) -> DbResult<String> {
    let mut r = Registry::default();
    let info = Family::<Labels1, Gauge>::default();
    info.get_or_create(&l([("version", env!("CARGO_PKG_VERSION"))]))
        .set(1);
    r.register(
        "vps_snapshot_agent_build_info",
        "The agent's version (always 1)",
        info,
    );
    global().init(settings);
    global().register(&mut r);
    jobs(&mut r, db, settings, now).await?;
    outbox(&mut r, db).await?;
    agents(&mut r, db, now).await?;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_text::encode(&mut out, &r);
    Ok(out)
}

/// Writes the metrics to `path` for node_exporter's textfile collector: a temporary file
/// beside it, then a rename, so the collector never reads half a file.
pub fn write_textfile(path: &Path, text: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".agent.prom.")
        .tempfile_in(dir)
        .with_context(|| format!("metrics.textfile: cannot write in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("metrics.textfile: cannot write {}", tmp.path().display()))?;
    // node_exporter runs as its own user: the file must be readable by others.
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .with_context(|| {
        format!(
            "metrics.textfile: cannot make {} readable",
            tmp.path().display()
        )
    })?;
    tmp.persist(path)
        .with_context(|| format!("metrics.textfile: cannot rename onto {}", path.display()))?;
    Ok(())
}

/// Renders and writes the textfile if one is configured; a failure is logged.
pub async fn update_textfile(db: &Database, settings: &Settings, now: DateTime<Utc>) {
    let Some(path) = settings.metrics.as_ref().and_then(|m| m.textfile.as_ref()) else {
        return;
    };
    let written = match render(db, settings, now).await {
        Ok(text) => write_textfile(path, &text),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = written {
        tracing::warn!("{}", crate::errors::line(&e));
    }
}
