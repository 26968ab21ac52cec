//! Delivers the outbox: every channel (email, each `[[notify]]`) on its own, and the
//! dead-man pings. A channel's due alerts go out together: one alone as itself, several
//! as one digest (a dead API fails many jobs in the same minute; that is one message).
//! A refused or failed delivery leaves them queued for that channel with a backoff;
//! the other channels are not held up by it.

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::mail::Smtp;
use super::{DeliveryError, http};
use crate::clock::SharedClock;
use crate::config::{EmailSettings, HeartbeatSettings, NotifySettings, Settings};
use crate::db::{Database, DbResult, PendingAlert, PendingPing, PingKind};

/// An alert older than this goes out marked as late.
const LATE_AFTER: chrono::Duration = chrono::Duration::hours(24);
/// Pings sent or dropped are forgotten after this.
const PING_KEEP: chrono::Duration = chrono::Duration::days(7);

/// Where alerts go.
pub enum Channel {
    Email(Smtp),
    Http(NotifySettings),
}

impl Channel {
    pub fn name(&self) -> &str {
        match self {
            Channel::Email(_) => "email",
            Channel::Http(n) => &n.name,
        }
    }
}

/// The result of one delivery attempt over every channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Nothing,
    /// Alerts delivered (an alert sent on two channels counts twice).
    Sent(usize),
    /// A channel failed (its error; the others' alerts may have gone out).
    Failed(DeliveryError),
}

/// One attempt over every channel, channel by channel.
#[derive(Debug, Default)]
pub struct Report {
    pub sent: Vec<(String, usize)>,
    pub failed: Vec<(String, DeliveryError)>,
}

impl Report {
    pub fn delivery(&self) -> Delivery {
        if let Some((_, e)) = self.failed.first() {
            return Delivery::Failed(e.clone());
        }
        match self.sent.iter().map(|(_, n)| n).sum() {
            0 => Delivery::Nothing,
            n => Delivery::Sent(n),
        }
    }
}

/// Where pings go: each job's `ping_url` and the heartbeat's.
#[derive(Debug, Clone, Default)]
struct PingTargets {
    jobs: std::collections::HashMap<String, url::Url>,
    heartbeat: Option<HeartbeatSettings>,
}

pub struct Outbox {
    channels: Vec<Channel>,
    pings: PingTargets,
    db: Database,
    clock: SharedClock,
    http: reqwest::Client,
    host: String,
    registered: tokio::sync::OnceCell<()>,
}

/// The wait after `attempts` failed attempts under `backoff`.
fn backoff(attempts: i64, backoff: crate::timing::Backoff) -> Duration {
    backoff.after(u32::try_from(attempts.max(0)).unwrap_or(u32::MAX))
}

/// The end of a claim taken at `now` for `hold`, a few random milliseconds apart from any
/// other process's (the claim's value is what a process finds its rows by).
fn claim_until(now: DateTime<Utc>, hold: Duration) -> DateTime<Utc> {
    let spread = (hold.as_millis() / 5).clamp(1, 60_000);
    later(
        now,
        hold + Duration::from_millis(fastrand::u64(0..u64::try_from(spread).unwrap_or(1))),
    )
}

fn later(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(d).unwrap_or_default()
}

impl Outbox {
    /// The outbox `settings` call for; `None` when they have no channel and no ping.
    pub fn from_settings(
        settings: &Settings,
        db: Database,
        clock: SharedClock,
    ) -> anyhow::Result<Option<Self>> {
        let mut channels = Vec::new();
        if let Some(e) = &settings.email {
            channels.push(Channel::Email(Smtp::new(e)?));
        }
        channels.extend(settings.notify.iter().cloned().map(Channel::Http));
        let pings = PingTargets {
            jobs: settings
                .jobs
                .iter()
                .filter_map(|j| Some((j.name.clone(), j.ping_url.clone()?)))
                .collect(),
            heartbeat: settings.heartbeat.clone(),
        };
        if channels.is_empty() && pings.jobs.is_empty() && pings.heartbeat.is_none() {
            return Ok(None);
        }
        Ok(Some(Self::new(channels, pings, db, clock)?))
    }

    /// An outbox with only the email channel (`agent check`, tests).
    pub fn email(e: &EmailSettings, db: Database, clock: SharedClock) -> anyhow::Result<Self> {
        Self::new(
            vec![Channel::Email(Smtp::new(e)?)],
            PingTargets::default(),
            db,
            clock,
        )
    }

    fn new(
        channels: Vec<Channel>,
        pings: PingTargets,
        db: Database,
        clock: SharedClock,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            channels,
            pings,
            db,
            clock,
            http: http::client()?,
            host: crate::identity::host_name(),
            registered: tokio::sync::OnceCell::new(),
        })
    }

    /// Records the channels in the database, so the alerts queued from now on are owed
    /// to each of them. Called before anything runs, and on reload.
    pub async fn register(&self) -> DbResult<()> {
        self.registered
            .get_or_try_init(|| async {
                let names: Vec<&str> = self.channels.iter().map(Channel::name).collect();
                self.db.set_channels(&names).await
            })
            .await
            .map(drop)
    }

    pub fn channels(&self) -> impl Iterator<Item = &Channel> {
        self.channels.iter()
    }

    /// One attempt on every channel whose alerts are due (the daemon's rhythm), and the
    /// pings. Never hangs longer than the channels' timeouts.
    pub async fn deliver_due(&self) -> Delivery {
        self.deliver_pings(false).await;
        self.deliver(false, &[]).await.delivery()
    }

    /// One attempt to deliver every queued alert now, backoff or not: an operator
    /// running a command by hand may just have fixed the mail server.
    pub async fn deliver_all(&self) -> Delivery {
        self.deliver_pings(true).await;
        self.deliver(true, &[]).await.delivery()
    }

    /// One attempt per channel (but those in `skip`): every alert it owes (`all`) or
    /// those due.
    pub async fn deliver(&self, all: bool, skip: &[String]) -> Report {
        let mut report = Report::default();
        // Registering adopts what was queued before any channel was known.
        if let Err(e) = self.register().await {
            tracing::error!("{e}");
            report
                .failed
                .push(("outbox".into(), DeliveryError::Outbox(e.to_string())));
            return report;
        }
        let now = self.clock.now();
        for c in &self.channels {
            let name = c.name().to_string();
            if skip.contains(&name) {
                continue;
            }
            match self.deliver_on(c, all, now).await {
                Ok(0) => {}
                Ok(n) => report.sent.push((name, n)),
                Err(e) => report.failed.push((name, e)),
            }
        }
        report
    }

    async fn deliver_on(
        &self,
        c: &Channel,
        all: bool,
        now: DateTime<Utc>,
    ) -> Result<usize, DeliveryError> {
        let due = self
            .db
            .claim_alerts(
                c.name(),
                now,
                all,
                claim_until(now, self.db.timing().outbox_claim),
            )
            .await
            .map_err(|e| {
                tracing::error!("{e}");
                DeliveryError::Outbox(e.to_string())
            })?;
        if due.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = due.iter().map(|a| a.id).collect();
        let (subject, body) = self.compose(c, &due, now);
        let sent = match c {
            Channel::Email(smtp) => smtp.send(&subject, body).await,
            Channel::Http(n) => {
                http::post_alerts(&self.http, n, &due, &subject, &body, &self.host).await
            }
        };
        let metrics = crate::metrics::global();
        match sent {
            Ok(()) => {
                metrics.delivery(c.name(), "sent");
                if let Err(e) = self
                    .db
                    .mark_alerts_sent(c.name(), &ids, self.clock.now())
                    .await
                {
                    tracing::error!("{e}");
                }
                tracing::info!(channel = c.name(), count = ids.len(), "alerts delivered");
                Ok(ids.len())
            }
            Err(e) => {
                metrics.delivery(c.name(), "failed");
                let attempts = due.iter().map(|a| a.attempts).max().unwrap_or(0);
                let retry = later(now, backoff(attempts, self.db.timing().alert_backoff));
                tracing::warn!(
                    channel = c.name(),
                    count = ids.len(),
                    "alert delivery failed, retrying at {}: {e}",
                    crate::human::fmt_time(retry)
                );
                let why = e.to_string();
                if let Err(db) = self
                    .db
                    .mark_alerts_failed(c.name(), &ids, &why, retry)
                    .await
                {
                    tracing::error!("{db}");
                }
                Err(e)
            }
        }
    }

    fn compose(&self, c: &Channel, due: &[PendingAlert], now: DateTime<Utc>) -> (String, String) {
        let who = match c {
            Channel::Email(_) => "the mail server".to_string(),
            Channel::Http(n) => format!("the {} channel", n.name),
        };
        compose(due, now, &who, &self.host)
    }

    /// Sends the pings that are due, each check's in the order queued (a check's next
    /// ping goes only once the one before it was sent or dropped); drops those that
    /// expired. A round takes each check's oldest ping; a check whose ping failed waits
    /// for its backoff (`all`: not in the first round), the others go on.
    pub async fn deliver_pings(&self, all: bool) {
        let now = self.clock.now();
        for round in 0..PING_ROUNDS {
            let now = self.clock.now();
            let heads = self
                .db
                .claim_ping_heads(
                    now,
                    claim_until(now, self.db.timing().outbox_claim),
                    all && round == 0,
                )
                .await;
            let due = match heads {
                Ok(d) => d,
                Err(e) => {
                    return tracing::error!("{e}");
                }
            };
            if due.is_empty() {
                break;
            }
            // A few at a time: a thousand jobs may ping in the same second.
            let mut sends = tokio::task::JoinSet::new();
            for p in due {
                if sends.len() >= PINGS_AT_ONCE {
                    reap(sends.join_next().await);
                }
                let target = self.ping_url(&p);
                let (http, db, clock) = (self.http.clone(), self.db.clone(), self.clock.clone());
                sends.spawn(async move { send_ping(&http, &db, &clock, p, target).await });
            }
            while let Some(done) = sends.join_next().await {
                reap(Some(done));
            }
        }
        if let Err(e) = self.db.prune_pings(now - PING_KEEP).await {
            tracing::warn!("{e}");
        }
    }

    fn ping_url(&self, p: &PendingPing) -> Option<(url::Url, Duration)> {
        let (base, timeout) = match (&p.job, p.kind) {
            (None, _) | (_, PingKind::Heartbeat) => {
                let h = self.pings.heartbeat.as_ref()?;
                (
                    h.url.clone(),
                    crate::config::DEFAULT_HTTP_TIMEOUT.min(h.every),
                )
            }
            (Some(job), _) => (
                self.pings.jobs.get(job)?.clone(),
                crate::config::DEFAULT_HTTP_TIMEOUT,
            ),
        };
        Some((http::ping_url(&base, p.kind), timeout))
    }

    /// Queues the daemon's heartbeat (it expires when the next one is due).
    pub async fn heartbeat_ping(&self) {
        let Some(h) = &self.pings.heartbeat else {
            return;
        };
        let now = self.clock.now();
        let ping = crate::db::NewPing {
            job: None,
            run_id: None,
            kind: PingKind::Heartbeat,
            body: String::new(),
            created_at: now,
            expires_at: later(now, h.every),
        };
        if let Err(e) = self.db.queue_ping(&ping).await {
            tracing::warn!("the heartbeat is not sent: {e}");
        }
    }

    pub fn heartbeat_ping_every(&self) -> Option<Duration> {
        self.pings.heartbeat.as_ref().map(|h| h.every)
    }
}

/// Pings in flight at once (each to a different check).
const PINGS_AT_ONCE: usize = 16;
/// Rounds of one delivery: how many pings one check can send in a row (a run queues two).
const PING_ROUNDS: usize = 64;

fn reap(done: Option<Result<(), tokio::task::JoinError>>) {
    if let Some(Err(e)) = done {
        tracing::error!("sending a ping failed: {e}");
    }
}

/// One ping: sent, retried with a backoff, or dropped (expired, or its URL is no longer
/// configured).
async fn send_ping(
    http: &reqwest::Client,
    db: &Database,
    clock: &SharedClock,
    p: PendingPing,
    target: Option<(url::Url, Duration)>,
) {
    let now = clock.now();
    let metrics = crate::metrics::global();
    let kind = p.kind.as_str();
    let Some((url, timeout)) = target.filter(|_| now < p.expires_at) else {
        let why = if now >= p.expires_at {
            format!(
                "expired unsent ({} old)",
                crate::human::fmt_age(now - p.created_at)
            )
        } else {
            "no ping URL configured for it any more".to_string()
        };
        tracing::warn!(
            job = p.job.as_deref().unwrap_or("-"),
            kind,
            "ping dropped: {why}"
        );
        metrics.ping(kind, "dropped");
        if let Err(e) = db.ping_attempted(p.id, now, Some(&why), None).await {
            tracing::error!("{e}");
        }
        return;
    };
    let recorded = match http::ping(http, &url, &p.body, timeout).await {
        Ok(()) => {
            tracing::debug!(job = p.job.as_deref().unwrap_or("-"), kind, "ping sent");
            metrics.ping(kind, "sent");
            db.ping_attempted(p.id, clock.now(), None, None).await
        }
        Err(e) => {
            metrics.ping(kind, "failed");
            let retry = later(clock.now(), backoff(p.attempts, db.timing().ping_backoff));
            tracing::warn!(
                job = p.job.as_deref().unwrap_or("-"),
                kind,
                "ping failed, retrying at {}: {e}",
                crate::human::fmt_time(retry)
            );
            db.ping_attempted(p.id, clock.now(), Some(&e.to_string()), Some(retry))
                .await
        }
    };
    if let Err(e) = recorded {
        tracing::error!("{e}");
    }
}

/// A subject and body for `due`: one alert as itself, several as a digest.
pub fn compose(
    due: &[PendingAlert],
    now: DateTime<Utc>,
    who: &str,
    host: &str,
) -> (String, String) {
    let late = |a: &PendingAlert| now - a.created_at > LATE_AFTER;
    let late_note = |a: &PendingAlert| {
        format!(
            "(Late: queued {} ago, at {}; {who} could not be reached until now.)\n\n",
            crate::human::fmt_age(now - a.created_at),
            crate::human::fmt_time(a.created_at)
        )
    };
    let footer = format!("\n-- \nvps-snapshot-agent on {host}\n");
    if let [one] = due {
        let subject = if late(one) {
            format!("[late] {}", one.subject)
        } else {
            one.subject.clone()
        };
        let mut body = String::new();
        if late(one) {
            body.push_str(&late_note(one));
        }
        body.push_str(&one.body);
        body.push_str(&footer);
        return (subject, body);
    }
    let heads: Vec<String> = due
        .iter()
        .map(|a| a.subject.trim_start_matches("[agent] ").to_string())
        .collect();
    let mut subject = format!("[agent] {} alerts: {}", due.len(), heads.join("; "));
    if subject.chars().count() > 150 {
        subject = format!("{}…", subject.chars().take(149).collect::<String>());
    }
    let mut body = format!("{} alerts from vps-snapshot-agent:\n\n", due.len());
    for h in &heads {
        let _ = writeln!(body, "  - {h}");
    }
    for a in due {
        let _ = write!(body, "\n==== {} ====\n", a.subject);
        if late(a) {
            body.push_str(&late_note(a));
        }
        body.push_str(&a.body);
    }
    body.push_str(&footer);
    (subject, body)
}
