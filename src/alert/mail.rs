//! Delivers the alert outbox with lettre. Due alerts go out together: one alone as itself,
//! several as one digest (a dead API fails many jobs in the same minute; that is one
//! mail). A refused or failed delivery leaves them queued with a backoff.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use crate::clock::SharedClock;
use crate::config::{EmailSettings, Security};
use crate::db::{Database, PendingAlert};

/// An alert older than this goes out marked as late.
const LATE_AFTER: chrono::Duration = chrono::Duration::hours(24);
const BACKOFF_BASE: Duration = Duration::from_secs(30);
const BACKOFF_CAP: Duration = Duration::from_secs(30 * 60);

/// The SMTP side: a transport and the envelope, no outbox.
pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    host: String,
    server: String,
}

/// Delivers the outbox through [`Smtp`].
pub struct Mailer {
    smtp: Smtp,
    db: Database,
    clock: SharedClock,
}

/// The result of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Nothing,
    Sent(usize),
    Failed(String),
}

/// Builds the SMTP transport from `[email]`.
pub fn transport(e: &EmailSettings) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    let builder = match e.security {
        Security::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&e.smtp_host)
            .with_context(|| format!("email.smtp_host {:?}", e.smtp_host))?,
        Security::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&e.smtp_host)
            .with_context(|| format!("email.smtp_host {:?}", e.smtp_host))?,
        Security::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&e.smtp_host),
    };
    let mut builder = builder.port(e.smtp_port).timeout(Some(e.timeout));
    if let (Some(user), Some(pass)) = (&e.username, &e.password) {
        builder = builder.credentials(Credentials::new(
            user.clone(),
            pass.expose_secret().to_string(),
        ));
    }
    Ok(builder.build())
}

fn backoff(attempts: i64) -> Duration {
    let exp = u32::try_from(attempts.clamp(0, 10)).unwrap_or(10);
    BACKOFF_BASE.saturating_mul(2u32.pow(exp)).min(BACKOFF_CAP)
}

impl Smtp {
    pub fn new(e: &EmailSettings) -> anyhow::Result<Self> {
        Ok(Self {
            transport: transport(e)?,
            from: e.from.clone(),
            to: e.to.clone(),
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            server: format!("{}:{}", e.smtp_host, e.smtp_port),
        })
    }

    fn message(&self, subject: &str, body: String) -> anyhow::Result<Message> {
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .date_now()
            .message_id(None)
            .user_agent(format!(
                "vps-snapshot-agent {} on {}",
                env!("CARGO_PKG_VERSION"),
                self.host
            ));
        for to in &self.to {
            b = b.to(to.clone());
        }
        Ok(b.header(ContentType::TEXT_PLAIN).body(body)?)
    }

    /// Connects and greets (EHLO, STARTTLS, AUTH) without sending.
    pub async fn test_connection(&self) -> anyhow::Result<()> {
        let ok = self
            .transport
            .test_connection()
            .await
            .with_context(|| format!("SMTP server {}", self.server))?;
        anyhow::ensure!(
            ok,
            "SMTP server {} did not accept the connection",
            self.server
        );
        Ok(())
    }

    pub async fn send_test(&self) -> anyhow::Result<String> {
        let msg = self.message(
            "[agent] test email",
            format!(
                "This is a test email from vps-snapshot-agent on {}.\nIf you can read it, alerts will reach you.\n",
                self.host
            ),
        )?;
        let resp = self
            .transport
            .send(msg)
            .await
            .with_context(|| format!("sending a test email through {}", self.server))?;
        Ok(format!(
            "{} {}",
            resp.code(),
            resp.message().collect::<Vec<_>>().join(" ")
        ))
    }
}

impl Mailer {
    /// `None` when email is not configured.
    pub fn from_settings(
        email: Option<&EmailSettings>,
        db: Database,
        clock: SharedClock,
    ) -> anyhow::Result<Option<Self>> {
        let Some(e) = email else { return Ok(None) };
        Ok(Some(Self {
            smtp: Smtp::new(e)?,
            db,
            clock,
        }))
    }

    fn compose(&self, due: &[PendingAlert]) -> (String, String) {
        let now = self.clock.now();
        let late = |a: &PendingAlert| now - a.created_at > LATE_AFTER;
        let late_note = |a: &PendingAlert| {
            format!(
                "(Late: queued {} ago, at {}; the mail server could not be reached until now.)\n\n",
                super::text::fmt_age(now - a.created_at),
                super::text::fmt_time(a.created_at)
            )
        };
        let footer = format!("\n-- \nvps-snapshot-agent on {}\n", self.smtp.host);
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

    /// One attempt to deliver every alert whose retry time has come (the daemon's
    /// rhythm). Never hangs longer than the SMTP timeout.
    pub async fn deliver_due(&self) -> Delivery {
        self.deliver(false).await
    }

    /// One attempt to deliver every queued alert now, backoff or not: an operator running
    /// a command by hand may just have fixed the mail server.
    pub async fn deliver_all(&self) -> Delivery {
        self.deliver(true).await
    }

    async fn deliver(&self, all: bool) -> Delivery {
        let now = self.clock.now();
        let queued = if all {
            self.db.pending_alerts().await
        } else {
            self.db.due_alerts(now).await
        };
        let due = match queued {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("{e}");
                return Delivery::Failed(e.to_string());
            }
        };
        if due.is_empty() {
            return Delivery::Nothing;
        }
        let ids: Vec<i64> = due.iter().map(|a| a.id).collect();
        let (subject, body) = self.compose(&due);
        let sent = match self.smtp.message(&subject, body) {
            Ok(msg) => self
                .smtp
                .transport
                .send(msg)
                .await
                .map_err(|e| format!("SMTP {}: {:#}", self.smtp.server, anyhow::Error::new(e))),
            Err(e) => Err(format!("cannot build the alert mail: {e}")),
        };
        match sent {
            Ok(_) => {
                if let Err(e) = self.db.mark_alerts_sent(&ids, self.clock.now()).await {
                    tracing::error!("{e}");
                }
                tracing::info!(count = ids.len(), "alert mail sent");
                Delivery::Sent(ids.len())
            }
            Err(e) => {
                let attempts = due.iter().map(|a| a.attempts).max().unwrap_or(0);
                let retry = now + chrono::Duration::from_std(backoff(attempts)).unwrap_or_default();
                tracing::warn!(
                    count = ids.len(),
                    "alert delivery failed, retrying at {retry}: {e}"
                );
                if let Err(db) = self.db.mark_alerts_failed(&ids, &e, retry).await {
                    tracing::error!("{db}");
                }
                Delivery::Failed(e)
            }
        }
    }
}
